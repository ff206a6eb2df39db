//! The OpenTelemetry layer as installed: tracing-opentelemetry's layer,
//! told less.
//!
//! Profiled under the load generator, a tenth of every service's CPU went
//! to tracing's span registry: every poll of an instrumented future (the
//! call's handler, and each of sqlx's query streams, which instrument
//! themselves with the current span) enters and exits the call's span,
//! and each layer with a filter of its own then looks the span up again
//! to ask whether it is enabled for it. So no layer has its own filter:
//! one global filter decides what exists, and this wrapper keeps from the
//! OpenTelemetry layer the two things it must not see or need not see:
//!
//! - the canonical event: as a span event its fields (the span's own
//!   attributes again) were converted and exported a second time;
//! - the span's `trace_id` field (recorded for the log lines): the
//!   exported span has its trace id already;
//! - span enters and exits: with context activation and busy/idle timing
//!   off, entering does nothing, and exiting only stamps the span's end
//!   time (a lookup, a lock and a clock read per poll); unstamped, the
//!   span ends when it closes, which for a call's span is when its
//!   response ends.

use std::any::TypeId;

use tracing::span;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::CANONICAL_TARGET;
use crate::log_fields::TRACE_ID;

pub struct SpansOnly<L>(pub L);

impl<S, L> Layer<S> for SpansOnly<L>
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

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, ctx)
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        // The span's trace id is recorded as a field for the log lines
        // written inside it; the exported span has it as its identity.
        if values.len() == 1
            && let Some(metadata) = ctx.metadata(span)
            && let Some(trace_id) = metadata.fields().field(TRACE_ID)
            && values.contains(&trace_id)
        {
            return;
        }
        self.0.on_record(span, values, ctx)
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.0.on_follows_from(span, follows, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != CANONICAL_TARGET {
            self.0.on_event(event, ctx)
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.0.on_close(id, ctx)
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.0.on_id_change(old, new, ctx)
    }

    // `OpenTelemetrySpanExt::context` finds the layer's context accessor
    // this way.
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded unchanged to the wrapped layer, which answers
        // for its own types.
        unsafe { self.0.downcast_raw(id) }
    }
}
