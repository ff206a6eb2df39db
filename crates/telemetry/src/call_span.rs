//! The served call's span, made with the OpenTelemetry SDK directly, and
//! the call's trace context, kept in a task-local for the call's work.
//!
//! Each service exports one span per served call and no other. Through
//! tracing-opentelemetry the call's span cost, on every call: a second
//! attribute list built from the tracing fields, a lookup of the layer's
//! data on every `record`, the trace context rebuilt on every read
//! (propagation, each metric's exemplar), and the finished span converted
//! again when it closed. Made directly, the span is built once at the
//! call's start and given its outcome at the end.
//!
//! Its context (for propagation, exemplars and the trace id of log lines)
//! lives in a Tokio task-local scoped around the call's future, not in a
//! tracing span: a tracing span per call cost a registry slot, an enter
//! and an exit through every layer on every poll, and a registry lookup
//! and scope walk on every read. Work a call spawns keeps the context with
//! [`in_current_call`]. (Measured with the load generator, session 14:
//! without the span, and so without what read it, SendMessage gained ~5 %;
//! this change alone was within the comparison's resolution, and most of
//! that gain was propagation's, see `trace_context`.)

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_sdk::trace::{SdkTracer, Span as SdkSpan};

use crate::call::CallFields;

/// The tracer of this process's calls, set once by [`crate::init`] (or the
/// test set-up). Unset, calls get no span and start no trace.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

pub(crate) fn install_tracer(tracer: SdkTracer) {
    // A second install (tests racing to set telemetry up) keeps the first,
    // as the global subscriber does.
    let _ = TRACER.set(tracer);
}

/// Every attribute a call's span can carry (`schema.toml` declares each;
/// a unit test holds them to it).
#[cfg(test)]
pub(crate) const SPAN_ATTRIBUTES: [&str; 14] = [
    RPC_SYSTEM_NAME,
    RPC_METHOD,
    COMPONENT,
    RPC_STATUS_CODE,
    ERROR_TYPE,
    TENANT_ID,
    MEMBER_ID,
    CONVERSATION_ID,
    RESPONDER,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    GROUNDED,
    POLICY_VIOLATIONS,
    FIRST_MESSAGE_MS,
];
/// How many of them `start` sets, and how many `end` may add.
const START_ATTRIBUTES: usize = 3;
const END_ATTRIBUTES: usize = 11;
const RPC_SYSTEM_NAME: &str = "rpc.system.name";
const RPC_METHOD: &str = "rpc.method";
const COMPONENT: &str = "tp.component";
const RPC_STATUS_CODE: &str = "rpc.status_code";
const ERROR_TYPE: &str = "error.type";
const TENANT_ID: &str = "tp.tenant.id";
const MEMBER_ID: &str = "tp.member.id";
const CONVERSATION_ID: &str = "tp.conversation.id";
const RESPONDER: &str = "tp.responder";
const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
const GROUNDED: &str = "tp.reply.grounded";
const POLICY_VIOLATIONS: &str = "tp.reply.policy_violations";
const FIRST_MESSAGE_MS: &str = "tp.call.first_message_ms";

/// Whether exported spans stand for the calls' canonical events (set once,
/// at start-up, by [`crate::init`]): spans go to an OTLP endpoint and
/// `TP_CANONICAL_LOG` is `auto`.
static SPANS_ARE_CANONICAL: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_spans_are_canonical(yes: bool) {
    SPANS_ARE_CANONICAL.store(yes, Ordering::Relaxed);
}

/// Whether a call's span stands for its canonical event, so that no log
/// line is written for it: exported spans stand for the events, and this
/// one is recorded and sampled. A call whose trace is not sampled (a client
/// sent `traceparent` with the sampled flag off, or a ratio sampler left it
/// out) still gets its log line: every call has its canonical event.
pub(crate) fn span_is_canonical(spans_are_canonical: bool, recorded: bool, sampled: bool) -> bool {
    spans_are_canonical && recorded && sampled
}

tokio::task_local! {
    /// The trace context of the served call whose work is being polled.
    static CALL: SpanContext;
}

/// One served call's exported span.
pub(crate) struct CallSpan {
    span: Option<SdkSpan>,
    context: SpanContext,
}

impl CallSpan {
    /// Starts the call's span as a child of `parent` (the caller's context,
    /// from its `traceparent`; empty for a new trace), named by its
    /// `rpc.method`.
    pub(crate) fn start(parent: &Context, method: &'static str, component: &'static str) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self {
                span: None,
                context: parent.span().span_context().clone(),
            };
        };
        // Room for the attributes `end` adds, so the SDK's vector is
        // allocated once.
        let mut attributes = Vec::with_capacity(START_ATTRIBUTES + END_ATTRIBUTES);
        attributes.extend([
            KeyValue::new(RPC_SYSTEM_NAME, "grpc"),
            KeyValue::new(RPC_METHOD, method),
            KeyValue::new(COMPONENT, component),
        ]);
        let mut builder = tracer.span_builder(method).with_kind(SpanKind::Server);
        builder.attributes = Some(attributes);
        let span = builder.start_with_context(tracer, parent);
        let context = opentelemetry::trace::Span::span_context(&span).clone();
        Self {
            span: Some(span),
            context,
        }
    }

    /// The call's trace context.
    pub(crate) fn context(&self) -> &SpanContext {
        &self.context
    }

    /// Whether this span, once ended, is the call's canonical event (see
    /// [`span_is_canonical`]).
    pub(crate) fn is_canonical(&self) -> bool {
        span_is_canonical(
            SPANS_ARE_CANONICAL.load(Ordering::Relaxed),
            self.span.is_some(),
            self.context.is_sampled(),
        )
    }

    /// Runs `call` (the inner service's `call`, which may do work before
    /// returning its future) with this call's context current.
    pub(crate) fn in_scope<R>(&self, call: impl FnOnce() -> R) -> R {
        CALL.sync_scope(self.context.clone(), call)
    }

    /// `future` polled with this call's context current.
    pub(crate) fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        CALL.scope(self.context.clone(), future)
    }

    /// Ends the span with the call's outcome and everything its record
    /// holds: the fields of the canonical log line, so that an exported
    /// span can stand for it. Never content.
    pub(crate) fn end(
        self,
        status_code: &'static str,
        error_type: Option<&'static str>,
        fields: CallFields,
        first_message_ms: Option<u64>,
    ) {
        let Some(mut span) = self.span else { return };
        use opentelemetry::trace::Span as _;
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        span.set_attribute(KeyValue::new(RPC_STATUS_CODE, status_code));
        if let Some(error_type) = error_type {
            span.set_attribute(KeyValue::new(ERROR_TYPE, error_type));
            span.set_status(Status::error(error_type));
        }
        if let Some(tenant) = fields.tenant_id {
            span.set_attribute(KeyValue::new(TENANT_ID, StringValue::from(tenant)));
        }
        if let Some(member) = fields.member_id {
            span.set_attribute(KeyValue::new(MEMBER_ID, StringValue::from(member)));
        }
        if let Some(conversation) = fields.conversation_id {
            span.set_attribute(KeyValue::new(CONVERSATION_ID, conversation));
        }
        if let Some(responder) = fields.responder {
            span.set_attribute(KeyValue::new(RESPONDER, responder));
        }
        if let Some(tokens) = fields.input_tokens {
            span.set_attribute(KeyValue::new(INPUT_TOKENS, count(tokens)));
        }
        if let Some(tokens) = fields.output_tokens {
            span.set_attribute(KeyValue::new(OUTPUT_TOKENS, count(tokens)));
        }
        if let Some(grounded) = fields.grounded {
            span.set_attribute(KeyValue::new(GROUNDED, grounded));
        }
        if let Some(violations) = fields.policy_violations {
            span.set_attribute(KeyValue::new(POLICY_VIOLATIONS, count(violations)));
        }
        if let Some(millis) = first_message_ms {
            span.set_attribute(KeyValue::new(FIRST_MESSAGE_MS, count(millis)));
        }
        span.end();
    }
}

/// The trace context of the served call being polled, if any: inside a
/// call's future (and the work it spawned with [`in_current_call`]).
pub(crate) fn current_context() -> Option<SpanContext> {
    CALL.try_with(SpanContext::clone).ok()
}

/// The trace id of the served call being polled, if it has a valid one.
pub(crate) fn current_trace_id() -> Option<TraceId> {
    CALL.try_with(SpanContext::trace_id)
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

/// `future`, polled with the current call's trace context (if there is
/// one): for work a call spawns as a task of its own, so its outgoing
/// calls continue the call's trace and its log lines carry its trace id.
pub fn in_current_call<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let context = current_context();
    async move {
        match context {
            Some(context) => CALL.scope(context, future).await,
            None => future.await,
        }
    }
}

/// Runs `f` as if inside a call with `context` (tests of what reads it).
#[cfg(test)]
pub(crate) fn with_context<R>(context: SpanContext, f: impl FnOnce() -> R) -> R {
    CALL.sync_scope(context, f)
}

/// The context's trace id if its trace is sampled (exported), else
/// `INVALID` (no exemplar): an exemplar is a link to a trace, and with head
/// sampling (`OTEL_TRACES_SAMPLER`) most trace ids lead nowhere. Logs keep
/// every trace id; they correlate a call's lines across services.
pub(crate) fn sampled_trace_id(context: &SpanContext) -> TraceId {
    if context.is_sampled() {
        context.trace_id()
    } else {
        TraceId::INVALID
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceState};

    use super::*;

    #[test]
    fn only_a_sampled_trace_is_an_exemplar() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let context = |flags| {
            SpanContext::new(
                trace_id,
                SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
                flags,
                true,
                TraceState::default(),
            )
        };
        assert_eq!(sampled_trace_id(&context(TraceFlags::SAMPLED)), trace_id);
        assert_eq!(
            sampled_trace_id(&context(TraceFlags::default())),
            TraceId::INVALID
        );
    }
}
