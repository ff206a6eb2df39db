//! An OTLP/gRPC receiver that counts and discards what it gets, so the
//! stacks under load export their spans and metrics as they would to a
//! collector: "telemetry on" includes the export. Of the metrics it keeps
//! the served calls each service counted (`rpc.server.call.duration`'s
//! cumulative counts, [`Received::served_calls`]). It keeps the timings of
//! two methods' served spans: [`HOP_METHOD`]'s, from which the report takes
//! the gateway hop apart ([`hop_breakdown`]), and [`LIST_METHOD`]'s from a
//! given moment on, from which it takes ListMessages' tail apart
//! ([`tail_breakdown`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::{Request, Response, Status};

/// The method whose served spans are kept: only the gateway-hop phase
/// calls it, through the gateway and directly.
pub const HOP_METHOD: &str = "thoughtpartner.v1.ConversationService/GetConversation";

/// The method whose served spans are kept while the window set with
/// [`Received::open_list_window`] and [`Received::close_list_window`] is
/// open (the one-stream ListMessages phase's measured window).
pub const LIST_METHOD: &str = "thoughtpartner.v1.ConversationService/ListMessages";

/// At most this many spans are kept of each method (a 10 s hop phase makes
/// ~3,000; a one-stream ListMessages phase ~20,000).
const KEPT_SPANS: usize = 50_000;

/// OTLP's `SPAN_KIND_SERVER`.
const SERVER: i32 = 2;

/// One served call's span, as a service exported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedSpan {
    pub trace_id: Vec<u8>,
    /// The exporting service's `service.name`.
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// A service, a method and a status code (`rpc.status_code`).
type ServedKey = (String, String, String);

/// What the receiver has been sent so far.
#[derive(Clone)]
pub struct Received {
    spans: Arc<AtomicU64>,
    metric_exports: Arc<AtomicU64>,
    /// Per service, method and status code, the latest cumulative count of
    /// served calls.
    served_calls: Arc<Mutex<std::collections::BTreeMap<ServedKey, u64>>>,
    hop_spans: Arc<Mutex<Vec<ServedSpan>>>,
    /// [`LIST_METHOD`]'s spans that started at or after the first and
    /// before the second (Unix ns); the default keeps none.
    list_from_ns: Arc<AtomicU64>,
    list_until_ns: Arc<AtomicU64>,
    list_spans: Arc<Mutex<Vec<ServedSpan>>>,
}

impl Default for Received {
    fn default() -> Self {
        Self {
            spans: Arc::default(),
            metric_exports: Arc::default(),
            served_calls: Arc::default(),
            hop_spans: Arc::default(),
            list_from_ns: Arc::new(AtomicU64::new(u64::MAX)),
            list_until_ns: Arc::new(AtomicU64::new(u64::MAX)),
            list_spans: Arc::default(),
        }
    }
}

impl Received {
    /// The served spans of [`HOP_METHOD`] received so far.
    pub fn hop_spans(&self) -> Vec<ServedSpan> {
        self.hop_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps [`LIST_METHOD`]'s served spans that start at `from` or later,
    /// until the window closes (spans arrive in batches, seconds after
    /// their calls, so moments, not a switch, say which phase a span
    /// belongs to).
    pub fn open_list_window(&self, from: std::time::SystemTime) {
        self.list_until_ns.store(u64::MAX, Ordering::Relaxed);
        self.list_from_ns.store(unix_ns(from), Ordering::Relaxed);
    }

    /// Keeps no [`LIST_METHOD`] span that starts at `until` or later (a
    /// later phase's).
    pub fn close_list_window(&self, until: std::time::SystemTime) {
        self.list_until_ns.store(unix_ns(until), Ordering::Relaxed);
    }

    /// The [`LIST_METHOD`] spans kept so far.
    pub fn list_spans(&self) -> Vec<ServedSpan> {
        self.list_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    pub fn metric_exports(&self) -> u64 {
        self.metric_exports.load(Ordering::Relaxed)
    }

    /// The calls of `method` (`pkg.Service/Method`) that `service` last
    /// reported serving, whatever their status.
    pub fn served_calls(&self, service: &str, method: &str) -> u64 {
        self.served_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((s, m, _), _)| s == service && m == method)
            .map(|(_, count)| count)
            .sum()
    }
}

/// The exporting service's `service.name`, empty if it has none.
fn service_name(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| string_attribute(&r.attributes, "service.name"))
        .unwrap_or_default()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| r.scope_spans.iter())
            .map(|s| s.spans.len())
            .sum();
        self.spans
            .fetch_add(u64::try_from(spans).unwrap_or(u64::MAX), Ordering::Relaxed);
        let list_window =
            self.list_from_ns.load(Ordering::Relaxed)..self.list_until_ns.load(Ordering::Relaxed);
        let mut kept = self
            .hop_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut kept_list = self
            .list_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for resource in &request.get_ref().resource_spans {
            let service = service_name(resource.resource.as_ref());
            let served = resource
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.iter())
                .filter(|span| span.kind == SERVER);
            for span in served {
                let into = if span.name == HOP_METHOD {
                    &mut kept
                } else if span.name == LIST_METHOD
                    && list_window.contains(&span.start_time_unix_nano)
                {
                    &mut kept_list
                } else {
                    continue;
                };
                if into.len() < KEPT_SPANS {
                    into.push(ServedSpan {
                        trace_id: span.trace_id.clone(),
                        service: service.clone(),
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        let mut served = self
            .served_calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for resource in &request.get_ref().resource_metrics {
            let service = service_name(resource.resource.as_ref());
            let calls = resource
                .scope_metrics
                .iter()
                .flat_map(|s| s.metrics.iter())
                .filter(|m| m.name == "rpc.server.call.duration");
            for metric in calls {
                let Some(metric::Data::Histogram(histogram)) = &metric.data else {
                    continue;
                };
                for point in &histogram.data_points {
                    let label = |key| string_attribute(&point.attributes, key).unwrap_or_default();
                    let key = (
                        service.clone(),
                        label("rpc.method"),
                        label("rpc.status_code"),
                    );
                    served.insert(key, point.count);
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The spans that started within `window` (all of them without one).
pub fn started_within(
    spans: Vec<ServedSpan>,
    window: Option<std::ops::Range<std::time::SystemTime>>,
) -> Vec<ServedSpan> {
    match window {
        Some(window) => {
            let ns = unix_ns(window.start)..unix_ns(window.end);
            spans
                .into_iter()
                .filter(|s| ns.contains(&s.start_ns))
                .collect()
        }
        None => spans,
    }
}

fn unix_ns(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Starts the receiver on a free loopback port; returns its endpoint URL.
pub async fn start() -> anyhow::Result<(String, Received)> {
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let received = Received::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok((format!("http://{addr}"), received))
}

/// Where the gateway hop's time goes, read from the spans of the same
/// traces (medians, microseconds): the gateway's served span contains the
/// conversation service's, so it splits into the time before
/// conversation's span starts (the gateway's layers, its call going out,
/// and conversation's server up to its first layer), conversation's own
/// span, and the time after (the reply's way back through the gateway).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HopBreakdown {
    /// Traces with both services' spans.
    pub traces: usize,
    pub gateway_us: f64,
    pub before_conversation_us: f64,
    pub conversation_us: f64,
    pub after_conversation_us: f64,
    /// Conversation's span in traces without a gateway span (called
    /// directly or through the bare proxy).
    pub conversation_alone_us: Option<f64>,
}

/// The parts of each trace that crossed the gateway (microseconds, one
/// entry per trace), and conversation's span in traces that did not.
#[derive(Default)]
struct Parts {
    gateway: Vec<f64>,
    before: Vec<f64>,
    conversation: Vec<f64>,
    after: Vec<f64>,
    alone: Vec<f64>,
}

fn parts(spans: &[ServedSpan]) -> Parts {
    use std::collections::HashMap;
    let mut traces: HashMap<&[u8], (Option<&ServedSpan>, Option<&ServedSpan>)> = HashMap::new();
    for span in spans {
        let entry = traces.entry(&span.trace_id).or_default();
        match span.service.as_str() {
            "gateway" => entry.0 = Some(span),
            "conversation" => entry.1 = Some(span),
            _ => {}
        }
    }
    let micros = |ns: u64| ns as f64 / 1_000.0;
    let mut parts = Parts::default();
    for pair in traces.values() {
        match pair {
            (Some(g), Some(c)) => {
                parts
                    .gateway
                    .push(micros(g.end_ns.saturating_sub(g.start_ns)));
                parts
                    .before
                    .push(micros(c.start_ns.saturating_sub(g.start_ns)));
                parts
                    .conversation
                    .push(micros(c.end_ns.saturating_sub(c.start_ns)));
                parts.after.push(micros(g.end_ns.saturating_sub(c.end_ns)));
            }
            (None, Some(c)) => parts
                .alone
                .push(micros(c.end_ns.saturating_sub(c.start_ns))),
            _ => {}
        }
    }
    parts
}

/// The hop breakdown of `spans`, or `None` without a trace that crossed
/// the gateway.
pub fn hop_breakdown(spans: &[ServedSpan]) -> Option<HopBreakdown> {
    let mut parts = parts(spans);
    Some(HopBreakdown {
        traces: parts.gateway.len(),
        gateway_us: median(&mut parts.gateway)?,
        before_conversation_us: median(&mut parts.before)?,
        conversation_us: median(&mut parts.conversation)?,
        after_conversation_us: median(&mut parts.after)?,
        conversation_alone_us: median(&mut parts.alone),
    })
}

/// A part's median and 99th percentile, microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Where a method's slow calls spend their time, from the spans of calls
/// through the gateway: each part's median and 99th percentile, taken
/// separately (the p99s do not add up: a slow call is rarely slow
/// everywhere). Against the client's own p99, it says whether the tail is
/// in conversation (its handler and PostgreSQL), in the gateway and the
/// hop, or outside both services' spans (the client, the network, the
/// scheduler before the gateway's span starts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailBreakdown {
    /// Traces with both services' spans.
    pub traces: usize,
    pub gateway: Spread,
    pub before_conversation: Spread,
    pub conversation: Spread,
    pub after_conversation: Spread,
}

/// The tail breakdown of `spans`, or `None` without a trace that crossed
/// the gateway.
pub fn tail_breakdown(spans: &[ServedSpan]) -> Option<TailBreakdown> {
    let mut parts = parts(spans);
    Some(TailBreakdown {
        traces: parts.gateway.len(),
        gateway: spread(&mut parts.gateway)?,
        before_conversation: spread(&mut parts.before)?,
        conversation: spread(&mut parts.conversation)?,
        after_conversation: spread(&mut parts.after)?,
    })
}

fn spread(values: &mut [f64]) -> Option<Spread> {
    Some(Spread {
        p50_us: quantile(values, 0.5)?,
        p99_us: quantile(values, 0.99)?,
    })
}

fn median(values: &mut [f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The value at quantile `q` (nearest rank), sorting `values`.
fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (q * values.len() as f64) as usize;
    Some(values[rank.min(values.len() - 1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: u8, service: &str, start_ns: u64, end_ns: u64) -> ServedSpan {
        ServedSpan {
            trace_id: vec![trace; 16],
            service: service.to_owned(),
            start_ns,
            end_ns,
        }
    }

    #[test]
    fn the_hop_splits_around_conversations_span() {
        let spans = vec![
            // Through the gateway: 1,000 µs = 300 before + 500 + 200 after.
            span(1, "gateway", 0, 1_000_000),
            span(1, "conversation", 300_000, 800_000),
            span(2, "gateway", 0, 2_000_000),
            span(2, "conversation", 400_000, 1_400_000),
            span(3, "conversation", 50_000, 800_000),
            span(3, "gateway", 0, 1_000_000),
            // Direct: conversation alone.
            span(4, "conversation", 0, 250_000),
            // A gateway span whose child was not exported counts nowhere.
            span(5, "gateway", 0, 9_000_000),
        ];
        let hop = hop_breakdown(&spans).expect("traces through the gateway");
        assert_eq!(hop.traces, 3);
        assert_eq!(hop.gateway_us, 1_000.0);
        assert_eq!(hop.before_conversation_us, 300.0);
        assert_eq!(hop.conversation_us, 750.0);
        assert_eq!(hop.after_conversation_us, 200.0);
        assert_eq!(hop.conversation_alone_us, Some(250.0));
    }

    #[test]
    fn without_a_trace_through_the_gateway_there_is_no_breakdown() {
        assert_eq!(hop_breakdown(&[span(1, "conversation", 0, 10)]), None);
        assert_eq!(hop_breakdown(&[]), None);
        assert_eq!(tail_breakdown(&[span(1, "conversation", 0, 10)]), None);
    }

    #[test]
    fn the_tail_is_found_in_the_part_where_slow_calls_spend_it() {
        // 100 traces: 1 ms through the gateway, conversation's span 600 µs;
        // in two of them conversation's span takes 5 ms more.
        let mut spans = Vec::new();
        for trace in 0..100u8 {
            let slow = if trace % 50 == 7 { 5_000_000 } else { 0 };
            spans.push(span(trace, "gateway", 0, 1_000_000 + slow));
            spans.push(span(trace, "conversation", 250_000, 850_000 + slow));
        }
        let tail = tail_breakdown(&spans).expect("traces through the gateway");
        assert_eq!(tail.traces, 100);
        assert_eq!(tail.gateway.p50_us, 1_000.0);
        assert_eq!(tail.gateway.p99_us, 6_000.0);
        assert_eq!(tail.conversation.p50_us, 600.0);
        assert_eq!(tail.conversation.p99_us, 5_600.0);
        assert_eq!(tail.before_conversation.p99_us, 250.0);
        assert_eq!(tail.after_conversation.p99_us, 150.0);
    }

    #[test]
    fn list_spans_are_kept_only_within_the_window_set() {
        let received = Received::default();
        let call = |start_ns: u64| opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![1; 16],
            name: LIST_METHOD.to_owned(),
            kind: SERVER,
            start_time_unix_nano: start_ns,
            end_time_unix_nano: start_ns + 1_000,
            ..Default::default()
        };
        let request = |spans| ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // Before any moment is set, none is kept.
        rt.block_on(TraceService::export(
            &received,
            Request::new(request(vec![call(5)])),
        ))
        .expect("export");
        assert!(received.list_spans().is_empty());
        let at = |ns| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
        received.open_list_window(at(100));
        rt.block_on(TraceService::export(
            &received,
            Request::new(request(vec![call(99), call(100), call(150)])),
        ))
        .expect("export");
        // Closed: a later phase's spans are not kept, a late batch of the
        // window's own still is.
        received.close_list_window(at(200));
        rt.block_on(TraceService::export(
            &received,
            Request::new(request(vec![call(250), call(199)])),
        ))
        .expect("export");
        let kept: Vec<u64> = received.list_spans().iter().map(|s| s.start_ns).collect();
        assert_eq!(kept, vec![100, 150, 199]);
        assert_eq!(received.spans(), 6, "every span is counted");
    }
}
