//! One telemetry set-up for every service: `tracing` with JSON logs that
//! carry trace ids, OpenTelemetry spans and metrics exported over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and W3C trace-context propagation
//! through gRPC metadata as tower layers.
//!
//! Message content never goes into spans or logs: the layers here record
//! only the RPC name, the outcome and the timing.
//!
//! Metrics (every name in `schema.toml`) live in a per-service [`Metrics`],
//! scraped as OpenMetrics text with trace-id exemplars and, with an OTLP
//! endpoint, exported from the same series over OTLP.

use opentelemetry::global;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

mod call;
mod call_span;
mod canonical_log;
mod intern;
mod log_fields;
pub mod metrics;
mod otlp_metrics;
mod otlp_spans;
mod propagation;
#[cfg(test)]
mod schema_check;
mod series;
mod trace_context;

pub use call::{CallFields, CallRecord};
pub use call_span::in_current_call;
pub use metrics::{
    AuthMode, AuthOutcome, GenAiProvider, LimitScope, Metrics, MetricsError,
    OPENMETRICS_CONTENT_TYPE, PoolSample, TokenType,
};
pub use propagation::{
    ClientTraceLayer, Observe, ObservedBody, RpcMethods, ServerTelemetry, ServerTelemetryLayer,
    TraceClient, exemplar_trace_id,
};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
    #[error("could not set up span export: {0}")]
    SpanExport(String),
    #[error("could not set up metric export: {0}")]
    MetricExport(String),
    #[error("could not start the log writer's thread: {0}")]
    LogWriter(#[from] std::io::Error),
    #[error("TP_CANONICAL_LOG is {0:?}: use `auto` (the default) or `always`")]
    CanonicalLog(String),
}

/// Where a served call's canonical event goes (`TP_CANONICAL_LOG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CanonicalLog {
    /// A JSON log line, unless the call's span is exported (an OTLP
    /// endpoint is configured and the trace is sampled): the span carries
    /// the same fields, and one event per call is enough.
    Auto,
    /// A log line for every call, whether or not its span is exported too.
    Always,
}

impl CanonicalLog {
    /// The setting's value, unset or empty meaning `auto`.
    pub fn parse(value: Option<&str>) -> Result<Self, TelemetryError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::Auto),
            Some(v) if v.eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Some(v) if v.eq_ignore_ascii_case("always") => Ok(Self::Always),
            Some(other) => Err(TelemetryError::CanonicalLog(other.to_owned())),
        }
    }

    /// Whether exported spans stand for the canonical events.
    fn spans_are_canonical(self, spans_exported: bool) -> bool {
        spans_exported && self == Self::Auto
    }
}

/// Flushes and shuts down the exporters when dropped.
pub struct TelemetryGuard {
    tracer_provider: SdkTracerProvider,
    metrics_exporter: Option<otlp_metrics::OtlpMetricsExporter>,
    logs: Option<canonical_log::BatchedWriter>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.tracer_provider.shutdown() {
            eprintln!("tracer shutdown: {e}");
        }
        // Exports once more, so the last interval's counts are not lost.
        if let Some(mut metrics) = self.metrics_exporter.take() {
            metrics.shutdown();
        }
        // Last, so the exporters' own shutdown messages are written too.
        if let Some(logs) = &self.logs {
            logs.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var(key).is_ok_and(|v| !v.is_empty()))
}

fn resource(service_name: &'static str) -> Resource {
    // OTEL_SERVICE_NAME, when set, wins over the built-in name (the SDK's
    // environment detector reads it).
    let builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.is_empty()) {
        builder.build()
    } else {
        builder.with_service_name(service_name).build()
    }
}

/// The target of the canonical event (one per served call).
pub(crate) const CANONICAL_TARGET: &str = "canonical";

/// Whether this process records telemetry: true unless `TP_TELEMETRY=off`.
///
/// Off exists for one reason: the load generator's same-run baseline of
/// what telemetry costs. A process started with it has no spans, records no
/// metric (its handlers' GenAI, coaching and authentication metrics
/// included), writes no canonical events and logs only warnings and errors;
/// its SLOs see nothing. Read once per process.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED
        .get_or_init(|| !std::env::var("TP_TELEMETRY").is_ok_and(|v| v.eq_ignore_ascii_case("off")))
}

/// Installs logging, tracing and metrics for one service. Call it once, from
/// inside the Tokio runtime (the OTLP exporter needs one). `RUST_LOG` filters
/// the logs (default `info`). With telemetry off ([`enabled`]), only
/// warnings and errors are logged and nothing else is installed.
pub fn init(service_name: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    if !enabled() {
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
            )
            .try_init()?;
        return Ok(TelemetryGuard {
            tracer_provider: SdkTracerProvider::builder().build(),
            metrics_exporter: None,
            logs: None,
        });
    }
    let canonical_log = CanonicalLog::parse(std::env::var("TP_CANONICAL_LOG").ok().as_deref())?;
    let resource = resource(service_name);
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut metrics_exporter = None;
    let mut span_queue = None;
    // Call spans always exist, even without an exporter, so every request
    // gets a real trace id for its logs and for propagation.
    if otlp_configured() {
        // Not the SDK's batch processor with opentelemetry-otlp's exporter:
        // see `otlp_spans` for why, and for the settings it reads.
        let settings = otlp_spans::ExportSettings::from_env(|key| std::env::var(key).ok());
        let sender = otlp_spans::GrpcSender::new(&settings).map_err(TelemetryError::SpanExport)?;
        let spans = otlp_spans::OtlpSpanProcessor::start(settings, &resource, sender)
            .map_err(|e| TelemetryError::SpanExport(e.to_string()))?;
        span_queue = Some(spans.queue());
        // The provider owns the processor for its flush and shutdown; the
        // call spans reach it through the queue, not the SDK.
        tracer_builder = tracer_builder.with_span_processor(spans);
        // Metrics: the same series the ops port writes, not the SDK's
        // meter provider (see `otlp_metrics`).
        let var = |key: &str| std::env::var(key).ok();
        let settings = otlp_spans::ExportSettings::for_signal("METRICS", var);
        let sender = otlp_spans::GrpcSender::to(&settings, otlp_metrics::EXPORT_PATH)
            .map_err(TelemetryError::MetricExport)?;
        let interval = otlp_metrics::interval_from_env(var);
        metrics_exporter = Some(
            otlp_metrics::OtlpMetricsExporter::start(&resource, interval, sender)
                .map_err(|e| TelemetryError::MetricExport(e.to_string()))?,
        );
    }
    call_span::set_spans_are_canonical(canonical_log.spans_are_canonical(otlp_configured()));
    let tracer_provider = tracer_builder.build();
    let logs = canonical_log::BatchedWriter::stdout()?;
    let sink = call_span::SpanSink::Direct {
        // The SDK's configuration read from the environment
        // (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), as its tracer
        // would read it.
        sampler: opentelemetry_sdk::trace::Config::default().sampler,
        ids: opentelemetry_sdk::trace::RandomIdGenerator::default(),
        scope: opentelemetry::InstrumentationScope::builder(service_name).build(),
        queue: span_queue,
    };
    install(
        sink,
        tracer_provider.clone(),
        json_lines(logs.clone()),
        global_filter(None),
    )?;
    Ok(TelemetryGuard {
        tracer_provider,
        metrics_exporter,
        logs: Some(logs),
    })
}

/// What tests read back: finished spans, metrics on demand, and the
/// canonical events.
#[cfg(feature = "testing")]
#[derive(Clone)]
pub struct TestTelemetry {
    spans: opentelemetry_sdk::trace::InMemorySpanExporter,
    canonical: testing::CanonicalEvents,
    logs: testing::CapturedLogs,
}

#[cfg(feature = "testing")]
impl TestTelemetry {
    pub fn finished_spans(&self) -> Vec<opentelemetry_sdk::trace::SpanData> {
        self.spans.get_finished_spans().unwrap_or_default()
    }

    /// The metrics recorded so far (cumulative) by every [`Metrics`] of
    /// this process, as the OTLP exporter would send them now.
    pub fn metrics(&self) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
        otlp_metrics::collect(&metrics::live::all(), std::time::SystemTime::now())
    }

    /// Every canonical event (target `canonical`) so far, as field name to
    /// value (strings as they are, numbers in decimal).
    pub fn canonical_events(&self) -> Vec<std::collections::BTreeMap<String, String>> {
        self.canonical.events()
    }

    /// Every JSON log line written so far, at `debug` and above for our own
    /// crates (more than the console shows), so tests can check that no
    /// message content or secret reaches the logs at any level.
    pub fn logs(&self) -> String {
        self.logs.text()
    }
}

/// Installs telemetry that records spans and metrics in memory, for tests
/// that assert on them. Safe to call many times: only the first installs.
#[cfg(feature = "testing")]
pub fn init_for_tests() -> TestTelemetry {
    use std::sync::OnceLock;
    static TELEMETRY: OnceLock<TestTelemetry> = OnceLock::new();
    TELEMETRY
        .get_or_init(|| {
            let spans = opentelemetry_sdk::trace::InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(spans.clone())
                .build();
            let canonical = testing::CanonicalEvents::default();
            let logs = testing::CapturedLogs::default();
            // The same JSON lines production writes, into memory, at the
            // capture filter's levels; stdout still at `RUST_LOG`'s.
            let captured = json_lines(logs.clone());
            let stdout = json_lines(std::io::stdout).with_filter(rust_log());
            // Several test binaries may race for the global subscriber; the
            // loser keeps its exporters empty, which the tests notice.
            let tracer =
                opentelemetry::trace::TracerProvider::tracer(&provider, "thoughtpartner-tests");
            let _ = install(
                call_span::SpanSink::Sdk(tracer),
                provider,
                canonical.clone().and_then(captured).and_then(stdout),
                global_filter(Some(testing::CAPTURE_FILTER)),
            );
            TestTelemetry {
                spans,
                canonical,
                logs,
            }
        })
        .clone()
}

/// `RUST_LOG`, or `info` when it is unset or unreadable (the tests' stdout
/// filter).
#[cfg(feature = "testing")]
fn rust_log() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// What exists at all: `RUST_LOG` (default `info`). Trace propagation and
/// exemplars do not depend on it: a call's trace context is not a tracing
/// span (see `call_span`). It is the only filter for the services'
/// layers: a layer with a filter of its own looks every span up again on
/// every enter and exit to ask whether it is enabled for it.
///
/// For the same reason it is a [`Targets`] filter whenever the directives
/// only name targets and levels (`info`, `warn,tp_gateway=debug`): an
/// [`EnvFilter`] takes a lock and looks the span up on every enter and exit,
/// in case a span-field directive (`[span{field=value}]`) cares about it.
/// Only directives like that get an `EnvFilter`.
fn global_filter(directives: Option<&str>) -> GlobalFilter {
    let directives = match directives {
        Some(directives) => directives.to_owned(),
        None => std::env::var(EnvFilter::DEFAULT_ENV)
            .ok()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| "info".to_owned()),
    };
    if let Ok(targets) = directives.parse::<Targets>() {
        return GlobalFilter {
            targets: Some(targets),
            env: None,
        };
    }
    GlobalFilter {
        targets: None,
        env: Some(EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// One of the two: a layer that is `None` does nothing.
struct GlobalFilter {
    targets: Option<Targets>,
    env: Option<EnvFilter>,
}

/// The JSON log lines: the canonical event encoded by
/// [`canonical_log::WithCanonical`], every other event by
/// tracing-subscriber's JSON formatter; of the spans, a line carries only
/// the trace id of the call it was written in (see `log_fields`).
fn json_lines<S, W>(writer: W) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    log_fields::EventsOnly(
        tracing_subscriber::fmt::layer()
            .event_format(canonical_log::WithCanonical(
                tracing_subscriber::fmt::format()
                    .json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(true),
            ))
            .with_writer(writer),
    )
}

fn install<L>(
    spans: call_span::SpanSink,
    tracer_provider: SdkTracerProvider,
    logs: L,
    filter: GlobalFilter,
) -> Result<(), TelemetryError>
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    call_span::install(spans);
    global::set_tracer_provider(tracer_provider);
    tracing_subscriber::registry()
        .with(logs)
        .with(filter.targets)
        .with(filter.env)
        .try_init()?;
    Ok(())
}

#[cfg(feature = "testing")]
mod testing {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::Context;

    /// Our crates at `debug`, everything else at `info`.
    pub const CAPTURE_FILTER: &str = "info,tp_gateway=debug,tp_conversation=debug,\
        tp_knowledge=debug,tp_telemetry=debug,tp_server=debug,tp_auth=debug,tp_store=debug,\
        tp_limits=debug,tp_llm=debug,tp_coach=debug,tp_billing=debug,tp_stripe=debug";

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

    impl CapturedLogs {
        pub fn text(&self) -> String {
            self.0
                .lock()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        }
    }

    impl std::io::Write for CapturedLogs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut bytes) = self.0.lock() {
                bytes.extend_from_slice(buf);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
        type Writer = CapturedLogs;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// Keeps the fields of every `canonical` event, for tests.
    #[derive(Clone, Default)]
    pub struct CanonicalEvents(Arc<Mutex<Vec<BTreeMap<String, String>>>>);

    impl CanonicalEvents {
        pub fn events(&self) -> Vec<BTreeMap<String, String>> {
            self.0.lock().map(|e| e.clone()).unwrap_or_default()
        }
    }

    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for CanonicalEvents {
        fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            if event.metadata().target() != crate::CANONICAL_TARGET {
                return;
            }
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            if let Ok(mut events) = self.0.lock() {
                events.push(fields.0);
            }
        }
    }
}

#[cfg(test)]
mod canonical_log_tests {
    use super::*;
    use crate::call_span::span_is_canonical;

    #[test]
    fn the_setting_is_auto_or_always() {
        assert_eq!(CanonicalLog::parse(None).ok(), Some(CanonicalLog::Auto));
        assert_eq!(CanonicalLog::parse(Some("")).ok(), Some(CanonicalLog::Auto));
        assert_eq!(
            CanonicalLog::parse(Some("auto")).ok(),
            Some(CanonicalLog::Auto)
        );
        assert_eq!(
            CanonicalLog::parse(Some(" Always ")).ok(),
            Some(CanonicalLog::Always)
        );
        let refused = CanonicalLog::parse(Some("off")).map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("`auto`"), "{refused}");
    }

    #[test]
    fn a_span_stands_for_the_event_only_when_it_is_exported_and_sampled() {
        let auto = CanonicalLog::Auto.spans_are_canonical(true);
        assert!(span_is_canonical(auto, true, true));
        // Not sampled (the caller's traceparent said so, or a ratio
        // sampler): the log line is the event.
        assert!(!span_is_canonical(auto, true, false));
        // No span at all (no tracer installed).
        assert!(!span_is_canonical(auto, false, true));
        // No OTLP endpoint: spans go nowhere.
        let no_export = CanonicalLog::Auto.spans_are_canonical(false);
        assert!(!span_is_canonical(no_export, true, true));
        // Asked for log lines for every call.
        let always = CanonicalLog::Always.spans_are_canonical(true);
        assert!(!span_is_canonical(always, true, true));
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn targets_and_levels_get_a_targets_filter() {
        let filter = global_filter(Some("warn,tp_gateway=debug"));
        assert!(filter.env.is_none());
        let targets = filter.targets.expect("a Targets filter");
        assert!(targets.would_enable("tp_gateway::access", &Level::DEBUG));
        assert!(!targets.would_enable("tp_gateway::access", &Level::TRACE));
        assert!(!targets.would_enable("h2::proto", &Level::INFO));
        assert!(targets.would_enable("h2::proto", &Level::WARN));
    }

    #[test]
    fn span_field_directives_get_an_env_filter() {
        let filter = global_filter(Some("info,[grpc.server{rpc.method=x}]=debug"));
        assert!(filter.targets.is_none());
        assert!(filter.env.is_some());
    }

    #[test]
    fn the_test_capture_directives_are_plain_targets() {
        let filter = global_filter(Some(testing_directives()));
        assert!(filter.targets.is_some());
    }

    #[cfg(feature = "testing")]
    fn testing_directives() -> &'static str {
        testing::CAPTURE_FILTER
    }

    #[cfg(not(feature = "testing"))]
    fn testing_directives() -> &'static str {
        "info,tp_gateway=debug,tp_conversation=debug"
    }
}
