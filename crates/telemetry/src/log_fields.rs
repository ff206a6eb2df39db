//! What a JSON log line says about the span it was written in: only the
//! trace id of the call it belongs to, so a log line leads to its trace.
//!
//! tracing-subscriber's JSON formatter keeps each span's fields as a JSON
//! string, made when the span is created and re-made on every
//! `Span::record`. A call's span exists on every call but a log line
//! inside it is rare (the canonical event carries its own trace id), so
//! the formatter sees no spans at all ([`EventsOnly`]) and a line written
//! inside a call gets the call's trace id when it is written
//! ([`add_trace_id`]), from the context `call_span` keeps for the call.

use std::any::TypeId;

use opentelemetry::trace::TraceId;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The field holding a call's trace id on its canonical event, and the
/// key under `span` in every log line written inside a call.
pub(crate) const TRACE_ID: &str = "trace_id";

/// A layer (the JSON log lines) told only of events: it is not asked to
/// format or store the fields of spans it never prints.
pub(crate) struct EventsOnly<L>(pub L);

impl<S, L> Layer<S> for EventsOnly<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.0.on_register_dispatch(subscriber)
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber)
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.0.enabled(metadata, ctx)
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.0.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        self.0.on_event(event, ctx)
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded unchanged to the wrapped layer, which answers
        // for its own types.
        unsafe { self.0.downcast_raw(id) }
    }
}

/// Adds `"span":{"trace_id":"…"}` to a JSON object written on one line
/// (`{…}` and a newline), as the last key.
pub(crate) fn add_trace_id(line: &mut String, trace_id: TraceId) {
    if let Some(end) = line.rfind('}') {
        line.insert_str(end, &format!(",\"span\":{{\"{TRACE_ID}\":\"{trace_id}\"}}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_subscriber::layer::SubscriberExt;

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
    fn log_lines_in_a_call_carry_its_trace_id_and_nothing_else_of_the_span() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber =
            tracing_subscriber::registry().with(crate::json_lines(move || writer.clone()));
        let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("hex");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let context = SpanContext::new(
                trace_id,
                SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            );
            crate::call_span::with_context(context, || {
                // A span of the code's own does not hide the call's.
                let inner = tracing::info_span!("inner", tp.tenant.id = "tenant-secret-ish");
                let _inner = inner.enter();
                tracing::info!(answer = 42, "inside");
            });
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("span").is_none(), "{text}");
        assert_eq!(
            lines[1]["span"]["trace_id"],
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(lines[1]["span"].as_object().map(|o| o.len()), Some(1));
        // The event's own fields are all there; the span's are not.
        assert_eq!(lines[1]["fields"]["answer"], 42);
        assert!(!text.contains("tenant-secret-ish"), "{text}");
    }
}
