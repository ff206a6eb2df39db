//! An OTLP/gRPC receiver that counts and discards what it gets, so the
//! stacks under load export their spans and metrics as they would to a
//! collector: "telemetry on" includes the export. It keeps the timings of
//! one method's served spans ([`HOP_METHOD`]), from which the report takes
//! the gateway hop apart ([`hop_breakdown`]).

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
use opentelemetry_proto::tonic::common::v1::any_value;
use tonic::{Request, Response, Status};

/// The method whose served spans are kept: only the gateway-hop phase
/// calls it, through the gateway and directly.
pub const HOP_METHOD: &str = "thoughtpartner.v1.ConversationService/GetConversation";

/// At most this many spans are kept (a 10 s hop phase makes ~3,000).
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

/// What the receiver has been sent so far.
#[derive(Clone, Default)]
pub struct Received {
    spans: Arc<AtomicU64>,
    metric_exports: Arc<AtomicU64>,
    hop_spans: Arc<Mutex<Vec<ServedSpan>>>,
}

impl Received {
    /// The served spans of [`HOP_METHOD`] received so far.
    pub fn hop_spans(&self) -> Vec<ServedSpan> {
        self.hop_spans
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
        let mut kept = self
            .hop_spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for resource in &request.get_ref().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(name)) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let served = resource
                .scope_spans
                .iter()
                .flat_map(|s| s.spans.iter())
                .filter(|span| span.kind == SERVER && span.name == HOP_METHOD);
            for span in served {
                if kept.len() >= KEPT_SPANS {
                    break;
                }
                kept.push(ServedSpan {
                    trace_id: span.trace_id.clone(),
                    service: service.clone(),
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                });
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
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metric_exports.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
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

/// The hop breakdown of `spans`, or `None` without a trace that crossed
/// the gateway.
pub fn hop_breakdown(spans: &[ServedSpan]) -> Option<HopBreakdown> {
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
    let (mut gateway, mut before, mut conversation, mut after, mut alone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for pair in traces.values() {
        match pair {
            (Some(g), Some(c)) => {
                gateway.push(micros(g.end_ns.saturating_sub(g.start_ns)));
                before.push(micros(c.start_ns.saturating_sub(g.start_ns)));
                conversation.push(micros(c.end_ns.saturating_sub(c.start_ns)));
                after.push(micros(g.end_ns.saturating_sub(c.end_ns)));
            }
            (None, Some(c)) => alone.push(micros(c.end_ns.saturating_sub(c.start_ns))),
            _ => {}
        }
    }
    Some(HopBreakdown {
        traces: gateway.len(),
        gateway_us: median(&mut gateway)?,
        before_conversation_us: median(&mut before)?,
        conversation_us: median(&mut conversation)?,
        after_conversation_us: median(&mut after)?,
        conversation_alone_us: median(&mut alone),
    })
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
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
    }
}
