//! What a JSON log line says about the span it was written in: only the
//! trace id, so a log line leads to its trace.
//!
//! tracing-subscriber's JSON formatter keeps each span's fields as a JSON
//! string: it re-parses and re-writes that string on every `Span::record`
//! and parses it again for every event written inside the span. Profiled
//! under load (`tp-loadgen`), that was the largest single cost of
//! telemetry. The span's other fields are on the span itself (exported by
//! OpenTelemetry) and on the canonical event, so the log line loses
//! nothing by not repeating them.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// The field holding a call's trace id: on its span, for these log lines,
/// and on its canonical event.
pub(crate) const TRACE_ID: &str = "trace_id";

/// Formats a span's fields as `{"trace_id":"…"}`, or `{}` before the
/// trace id is recorded; every other field is ignored.
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceIdOnly;

#[derive(Default)]
struct TraceIdVisitor(Option<String>);

impl Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACE_ID {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == TRACE_ID {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

fn write_json(mut writer: Writer<'_>, trace_id: Option<&str>) -> fmt::Result {
    match trace_id {
        // A trace id is 32 hex digits: nothing to escape, but keep only
        // what is safe inside a JSON string in case a caller records
        // something else under the name.
        Some(id) if id.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            write!(writer, "{{\"{TRACE_ID}\":\"{id}\"}}")
        }
        _ => write!(writer, "{{}}"),
    }
}

impl<'writer> FormatFields<'writer> for TraceIdOnly {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = TraceIdVisitor::default();
        fields.record(&mut visitor);
        write_json(writer, visitor.0.as_deref())
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut visitor = TraceIdVisitor::default();
        fields.record(&mut visitor);
        // Only a newly recorded trace id changes anything.
        if let Some(id) = visitor.0 {
            current.fields.clear();
            write_json(current.as_writer(), Some(&id))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_carry_the_spans_trace_id_and_nothing_else_of_it() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .fmt_fields(TraceIdOnly)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "grpc.server",
                tp.tenant.id = tracing::field::Empty,
                trace_id = tracing::field::Empty
            );
            let _entered = span.enter();
            tracing::info!("before");
            span.record("tp.tenant.id", "tenant-secret-ish");
            span.record(
                "trace_id",
                tracing::field::display("0af7651916cd43dd8448eb211c80319c"),
            );
            tracing::info!(answer = 42, "after");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["span"]["name"], "grpc.server");
        assert!(lines[0]["span"].get("trace_id").is_none());
        assert_eq!(
            lines[1]["span"]["trace_id"],
            "0af7651916cd43dd8448eb211c80319c"
        );
        // The event's own fields are all there; the span's others are not.
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert!(!text.contains("tenant-secret-ish"), "{text}");
    }
}
