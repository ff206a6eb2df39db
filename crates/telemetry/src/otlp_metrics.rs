//! Metrics over OTLP, from the same per-thread series the ops port writes
//! (see `series`): every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s) and
//! once more at shutdown, a thread of its own merges every live
//! [`Metrics`]' series and sends them, cumulative since the service
//! started, to the collector's `MetricsService/Export`.
//!
//! Not the OpenTelemetry SDK's meter provider: its instruments kept a
//! second copy of every series, updated on every call under a lock both
//! worker threads took (`tp-telemetry`'s `record_contention` benchmark).
//! Read once a minute, the series here cost a call nothing more.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use crate::metrics::{Def, Metrics, Points, live};
use crate::otlp_spans::SendBatch;
use crate::series::LabelText;

/// The collector's method metrics are exported to.
pub(crate) const EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// The instrumentation scope of every metric (the SDK's meter was named so).
const SCOPE: &str = "thoughtpartner";

/// How often to export: `OTEL_METRIC_EXPORT_INTERVAL` in milliseconds, as
/// the SDK reads it; 60 s when unset or unreadable.
pub(crate) fn interval_from_env(var: impl Fn(&str) -> Option<String>) -> Duration {
    let millis = var("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(60_000);
    Duration::from_millis(millis)
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attributes(labels: &LabelText) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(key, value)| KeyValue {
            key: key.0.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.clone())),
            }),
            ..Default::default()
        })
        .collect()
}

/// The metrics of `all` at `now`: one [`Metric`] per name, one data point
/// per label set. Two [`Metrics`] of one component (only the tests make
/// them) count into the same points, as the SDK's meter provider counted
/// them, from the earlier one's start.
pub(crate) fn collect(all: &[Metrics], now: SystemTime) -> Vec<Metric> {
    let time = nanos(now);
    let start = all.iter().map(Metrics::started).min().map_or(time, nanos);
    let mut merged: Vec<(&'static Def, Points)> = Vec::new();
    for metrics in all {
        for (def, points) in metrics.snapshot() {
            match merged.iter_mut().find(|(d, _)| d.name == def.name) {
                Some((_, into)) => into.merge(points),
                None => merged.push((def, points)),
            }
        }
    }
    merged
        .into_iter()
        .map(|(def, points)| {
            let mut metric = empty(def, &points);
            append(&mut metric, def, points, start, time);
            metric
        })
        .collect()
}

fn empty(def: &'static Def, points: &Points) -> Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match points {
        Points::Histogram(_) => metric::Data::Histogram(Histogram {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
        }),
        Points::Counter(_) => metric::Data::Sum(Sum {
            data_points: Vec::new(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        Points::Gauge(_) => metric::Data::Gauge(Gauge {
            data_points: Vec::new(),
        }),
    };
    Metric {
        name: def.name.to_owned(),
        description: def.help.to_owned(),
        unit: def.unit.to_owned(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

fn append(metric: &mut Metric, def: &'static Def, points: Points, start: u64, time: u64) {
    let number = |labels: &LabelText, value| NumberDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: start,
        time_unix_nano: time,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(value),
    };
    match (&mut metric.data, points) {
        (Some(metric::Data::Histogram(histogram)), Points::Histogram(series)) => {
            for (labels, data) in &series {
                histogram.data_points.push(HistogramDataPoint {
                    attributes: attributes(labels),
                    start_time_unix_nano: start,
                    time_unix_nano: time,
                    count: data.count,
                    sum: Some(data.sum),
                    bucket_counts: data.counts.clone(),
                    explicit_bounds: def.buckets.to_vec(),
                    exemplars: Vec::new(),
                    flags: 0,
                    min: (data.count > 0).then_some(data.min),
                    max: (data.count > 0).then_some(data.max),
                });
            }
        }
        (Some(metric::Data::Sum(sum)), Points::Counter(series)) => {
            for (labels, value) in &series {
                let value = i64::try_from(*value).unwrap_or(i64::MAX);
                sum.data_points
                    .push(number(labels, number_data_point::Value::AsInt(value)));
            }
        }
        (Some(metric::Data::Gauge(gauge)), Points::Gauge(series)) => {
            for (labels, value) in &series {
                gauge
                    .data_points
                    .push(number(labels, number_data_point::Value::AsInt(*value)));
            }
        }
        // A name is one kind of metric (schema.toml); nothing else arrives.
        _ => {}
    }
}

/// The export request for `metrics`.
pub(crate) fn request(resource: &Resource, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE.to_owned(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

struct Shared {
    stopping: Mutex<bool>,
    wake: Condvar,
}

/// The export thread; stopping it (or dropping it) exports once more.
pub(crate) struct OtlpMetricsExporter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpMetricsExporter {
    /// Starts the thread, which exports every `interval` through `sender`.
    pub(crate) fn start(
        resource: &opentelemetry_sdk::Resource,
        interval: Duration,
        mut sender: impl SendBatch,
    ) -> std::io::Result<Self> {
        // The same resource the spans carry.
        let resource = Resource::decode(crate::otlp_spans::encode_resource(resource).as_slice())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-metrics".into())
            .spawn(move || {
                loop {
                    let stopping = {
                        let stopping = thread_shared
                            .stopping
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        let (stopping, _) = thread_shared
                            .wake
                            .wait_timeout_while(stopping, interval, |stopping| !*stopping)
                            .unwrap_or_else(|e| e.into_inner());
                        *stopping
                    };
                    export(&resource, &mut sender);
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Exports once more and stops the thread.
    pub(crate) fn shutdown(&mut self) {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("the OTLP metrics exporter panicked");
        }
    }
}

impl Drop for OtlpMetricsExporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn export(resource: &Resource, sender: &mut impl SendBatch) {
    let metrics = collect(&live::all(), SystemTime::now());
    if metrics.is_empty() {
        return;
    }
    let request = request(resource, metrics);
    if let Err(error) = sender.send(Bytes::from(request.encode_to_vec())) {
        tracing::warn!(%error, "could not export metrics");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceId;
    use std::sync::mpsc;

    fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn every_service_s_series_are_one_metric_per_name() {
        let conversation = Metrics::new("conversation");
        let knowledge = Metrics::new("knowledge");
        for (metrics, millis) in [(&conversation, 30), (&conversation, 70), (&knowledge, 4)] {
            metrics.db_operation("complete_exchange", Duration::from_millis(millis), None);
        }
        conversation.coach_reply("offline", true);
        conversation.db_pool(
            "app",
            crate::metrics::PoolSample {
                used: 1,
                idle: 2,
                max: 4,
            },
        );
        let now = SystemTime::now();
        let metrics = collect(&[conversation, knowledge], now);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "db.client.operation.duration",
                "tp.coach.replies",
                "db.client.connection.count",
                "db.client.connection.max"
            ]
        );
        let Some(metric::Data::Histogram(histogram)) = &metrics[0].data else {
            panic!("a histogram: {:?}", metrics[0]);
        };
        assert_eq!(metrics[0].unit, "s");
        assert_eq!(
            histogram.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(histogram.data_points.len(), 2);
        let point = histogram
            .data_points
            .iter()
            .find(|p| attribute(&p.attributes, "tp.component") == Some("conversation"))
            .expect("conversation's series");
        assert_eq!(point.count, 2);
        assert!((point.sum.unwrap_or_default() - 0.1).abs() < 1e-9);
        assert_eq!((point.min, point.max), (Some(0.03), Some(0.07)));
        assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), 2);
        assert_eq!(
            attribute(&point.attributes, "db.operation.name"),
            Some("complete_exchange")
        );
        assert_eq!(point.start_time_unix_nano, nanos(conversation.started()));
        assert_eq!(point.time_unix_nano, nanos(now));
        let Some(metric::Data::Sum(sum)) = &metrics[1].data else {
            panic!("a sum: {:?}", metrics[1]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let Some(metric::Data::Gauge(gauge)) = &metrics[3].data else {
            panic!("a gauge: {:?}", metrics[3]);
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsInt(4))
        );
    }

    #[test]
    fn two_metrics_of_one_component_count_into_one_point() {
        let first = Metrics::new("knowledge");
        let second = Metrics::new("knowledge");
        for metrics in [first, second, second] {
            metrics.coach_policy_violation("offline", "advice_before_question");
        }
        let metrics = collect(&[first, second], SystemTime::now());
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("a sum: {metrics:?}");
        };
        assert_eq!(sum.data_points.len(), 1);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(3))
        );
        assert_eq!(
            sum.data_points[0].start_time_unix_nano,
            nanos(first.started())
        );
    }

    struct Channel(mpsc::Sender<Bytes>);

    impl SendBatch for Channel {
        fn send(&mut self, request: Bytes) -> Result<(), String> {
            self.0.send(request).map_err(|e| e.to_string())
        }
    }

    #[test]
    fn the_thread_exports_on_its_interval_and_once_more_at_shutdown() {
        let metrics = Metrics::new("gateway");
        metrics.rpc_server_call(
            "thoughtpartner.v1.ConversationService/SendMessage",
            0,
            None,
            Duration::from_millis(12),
            TraceId::INVALID,
        );
        let (mut exporter, rx) = gateway_exporter(Duration::from_millis(50));
        let first = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("an export within the interval");
        let request = ExportMetricsServiceRequest::decode(first).expect("a valid request");
        let resource = request.resource_metrics[0]
            .resource
            .as_ref()
            .expect("a resource");
        assert_eq!(
            attribute(&resource.attributes, "service.name"),
            Some("gateway")
        );
        let scope = &request.resource_metrics[0].scope_metrics[0];
        assert_eq!(scope.scope.as_ref().map(|s| s.name.as_str()), Some(SCOPE));
        assert!(
            scope
                .metrics
                .iter()
                .any(|m| m.name == "rpc.server.call.duration"),
            "{scope:?}"
        );
        exporter.shutdown();

        // With an interval that never comes, shutdown alone exports.
        let (mut exporter, rx) = gateway_exporter(Duration::from_secs(3600));
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        exporter.shutdown();
        assert_eq!(rx.try_iter().count(), 1, "one export at shutdown");
    }

    /// An exporter for a `gateway` and what it sends.
    fn gateway_exporter(interval: Duration) -> (OtlpMetricsExporter, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("gateway")
            .build();
        let exporter = OtlpMetricsExporter::start(&resource, interval, Channel(tx));
        (exporter.expect("a thread"), rx)
    }

    #[test]
    fn the_interval_follows_the_sdk_variable() {
        let env = |value: Option<&'static str>| {
            move |key: &str| {
                (key == "OTEL_METRIC_EXPORT_INTERVAL")
                    .then_some(value)
                    .flatten()
                    .map(str::to_owned)
            }
        };
        assert_eq!(interval_from_env(env(None)), Duration::from_secs(60));
        assert_eq!(
            interval_from_env(env(Some("1500"))),
            Duration::from_millis(1500)
        );
        assert_eq!(interval_from_env(env(Some("0"))), Duration::from_secs(60));
        assert_eq!(
            interval_from_env(env(Some("soon"))),
            Duration::from_secs(60)
        );
    }
}
