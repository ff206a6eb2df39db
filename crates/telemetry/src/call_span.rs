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

use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, Tracer as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, SdkTracer, ShouldSample, Span as SdkSpan,
};

use crate::call::{CallFields, CallRecord};
use crate::otlp_spans::{AttributeValue, SpanParts, SpanQueue};

/// Where this process's call spans go, set once by [`crate::init`] (or the
/// test set-up). Unset, calls get no span and start no trace.
static SPANS: OnceLock<SpanSink> = OnceLock::new();

/// How call spans are made.
pub(crate) enum SpanSink {
    /// Through the SDK's tracer: the tests' in-memory exporter reads
    /// `SpanData`.
    // Only the tests' set-up (`init_for_tests`, behind the `testing`
    // feature) and this module's tests make SDK spans.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Sdk(SdkTracer),
    /// Without the SDK's span: the services. The SDK's sampler (as
    /// `OTEL_TRACES_SAMPLER` configures it) and id generator decide as the
    /// SDK's tracer would, and a sampled span is encoded straight from the
    /// call's fields into the OTLP processor's batch when it ends. Made with
    /// the SDK, every call built an attribute vector, a `SpanData` with a
    /// copy of the instrumentation scope, and the processor then read them
    /// all again to encode them (profiled under the load generator,
    /// session 20: ~8 % of telemetry's cost, in a dozen SDK functions).
    Direct {
        sampler: Box<dyn ShouldSample>,
        ids: RandomIdGenerator,
        scope: InstrumentationScope,
        /// `None` without an OTLP endpoint: spans give calls their trace
        /// context and are not exported.
        queue: Option<SpanQueue>,
    },
}

pub(crate) fn install(sink: SpanSink) {
    // A second install (tests racing to set telemetry up) keeps the first,
    // as the global subscriber does.
    let _ = SPANS.set(sink);
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
    /// The served call whose work is being polled: its trace context and
    /// record. Behind an `Arc` ([`CallRecord`]): a task-local value is
    /// swapped in and out on every poll, and a `SpanContext` is 64 bytes
    /// (callgrind: ~1.3k instructions per SendMessage in those swaps).
    static CALL: CallRecord;
}

/// One served call's exported span.
pub(crate) struct CallSpan {
    recording: Recording,
    call: CallRecord,
}

enum Recording {
    /// Not recorded: no sink, or the sampler dropped it.
    No,
    /// Boxed: the SDK's span is several times the size of the direct
    /// path's fields, and only the tests make it.
    Sdk(Box<SdkSpan>),
    Direct {
        parent_span_id: SpanId,
        parent_is_remote: bool,
        name: &'static str,
        component: &'static str,
        start: SystemTime,
    },
}

impl CallSpan {
    /// Starts the call's span as a child of `parent` (the caller's context,
    /// from its `traceparent`; empty for a new trace), named by its
    /// `rpc.method`.
    pub(crate) fn start(parent: &Context, method: &'static str, component: &'static str) -> Self {
        match SPANS.get() {
            None => Self {
                recording: Recording::No,
                call: CallRecord::for_call(parent.span().span_context().clone()),
            },
            Some(SpanSink::Sdk(tracer)) => Self::start_sdk(tracer, parent, method, component),
            Some(SpanSink::Direct { sampler, ids, .. }) => {
                Self::start_direct(&**sampler, ids, parent, method, component)
            }
        }
    }

    fn start_sdk(
        tracer: &SdkTracer,
        parent: &Context,
        method: &'static str,
        component: &'static str,
    ) -> Self {
        // Room for the attributes `end` adds, so the SDK's vector is
        // allocated once.
        let mut attributes = Vec::with_capacity(START_ATTRIBUTES + END_ATTRIBUTES);
        attributes.extend(start_key_values(method, component));
        let mut builder = tracer.span_builder(method).with_kind(SpanKind::Server);
        builder.attributes = Some(attributes);
        let span = builder.start_with_context(tracer, parent);
        let call = CallRecord::for_call(opentelemetry::trace::Span::span_context(&span).clone());
        Self {
            recording: Recording::Sdk(Box::new(span)),
            call,
        }
    }

    /// As the SDK's tracer starts a span (`SdkTracer::build_with_context`):
    /// the parent's trace id if it has a valid one, else a new one; a new
    /// span id; the sampler's decision and trace state.
    fn start_direct(
        sampler: &dyn ShouldSample,
        ids: &RandomIdGenerator,
        parent: &Context,
        method: &'static str,
        component: &'static str,
    ) -> Self {
        let parent_span = parent.span();
        let parent_context = parent_span.span_context();
        let parent_valid = parent_context.is_valid();
        let span_id = ids.new_span_id();
        let trace_id = if parent_valid {
            parent_context.trace_id()
        } else {
            ids.new_trace_id()
        };
        // No attributes: the sampler is one `OTEL_TRACES_SAMPLER` names,
        // and none of those reads them (the SDK's tracer would pass the
        // three start attributes; building and dropping them cost ~170
        // instructions a served call).
        let sampling =
            sampler.should_sample(Some(parent), trace_id, method, &SpanKind::Server, &[], &[]);
        let parent_flags = if parent_valid {
            parent_context.trace_flags()
        } else {
            TraceFlags::default()
        };
        let (flags, recorded) = match sampling.decision {
            SamplingDecision::RecordAndSample => (parent_flags.with_sampled(true), true),
            SamplingDecision::RecordOnly => (parent_flags.with_sampled(false), true),
            SamplingDecision::Drop => (TraceFlags::default(), false),
        };
        let context = SpanContext::new(trace_id, span_id, flags, false, sampling.trace_state);
        let recording = if recorded {
            Recording::Direct {
                parent_span_id: if parent_valid {
                    parent_context.span_id()
                } else {
                    SpanId::INVALID
                },
                parent_is_remote: parent_valid && parent_context.is_remote(),
                name: method,
                component,
                start: SystemTime::now(),
            }
        } else {
            Recording::No
        };
        Self {
            recording,
            call: CallRecord::for_call(context),
        }
    }

    /// The call's trace context.
    pub(crate) fn context(&self) -> &SpanContext {
        self.call.context()
    }

    /// The call's record: read for the tenant label at its first message, and taken at its end.
    pub(crate) fn record(&self) -> &CallRecord {
        &self.call
    }

    /// Whether this span, once ended, is the call's canonical event (see
    /// [`span_is_canonical`]).
    pub(crate) fn is_canonical(&self) -> bool {
        span_is_canonical(
            SPANS_ARE_CANONICAL.load(Ordering::Relaxed),
            !matches!(self.recording, Recording::No),
            self.context().is_sampled(),
        )
    }

    /// Runs `call` (the inner service's `call`, which may do work before
    /// returning its future) with this call's context current.
    pub(crate) fn in_scope<R>(&self, call: impl FnOnce() -> R) -> R {
        CALL.sync_scope(self.call.clone(), call)
    }

    /// `future` polled with this call's context current.
    pub(crate) fn scope<F: Future>(&self, future: F) -> impl Future<Output = F::Output> + use<F> {
        CALL.scope(self.call.clone(), future)
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
        match self.recording {
            Recording::No => {}
            Recording::Sdk(span) => {
                end_sdk(*span, status_code, error_type, &fields, first_message_ms)
            }
            Recording::Direct {
                parent_span_id,
                parent_is_remote,
                name,
                component,
                start,
            } => {
                let Some(SpanSink::Direct {
                    scope,
                    queue: Some(queue),
                    ..
                }) = SPANS.get()
                else {
                    return;
                };
                if !self.context().is_sampled() {
                    return;
                }
                queue.defer(EndedSpan {
                    scope,
                    call: self.call,
                    parent_span_id,
                    parent_is_remote,
                    name,
                    component,
                    start,
                    end: SystemTime::now(),
                    status_code,
                    error_type,
                    fields,
                    first_message_ms,
                });
            }
        }
    }
}

/// A served call's span, ended and not yet encoded: the OTLP queue encodes
/// spans in batches (see [`SpanQueue::defer`]).
pub(crate) struct EndedSpan {
    pub(crate) scope: &'static InstrumentationScope,
    /// Its trace context (the record's fields were taken at its end).
    call: CallRecord,
    parent_span_id: SpanId,
    parent_is_remote: bool,
    name: &'static str,
    component: &'static str,
    start: SystemTime,
    end: SystemTime,
    status_code: &'static str,
    error_type: Option<&'static str>,
    fields: CallFields,
    first_message_ms: Option<u64>,
}

impl EndedSpan {
    /// The OTLP `Span` message, appended to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let status = match self.error_type {
            Some(error_type) => Status::error(error_type),
            None => Status::Unset,
        };
        START_ATTRIBUTES_ENCODED.with_borrow_mut(|encoded| {
            crate::otlp_spans::put_span(
                SpanParts {
                    context: self.call.context(),
                    parent_span_id: self.parent_span_id,
                    parent_is_remote: self.parent_is_remote,
                    name: self.name,
                    kind: SpanKind::Server,
                    start: self.start,
                    end: self.end,
                    encoded_attributes: encoded.of(self.name, self.component),
                    attributes: end_attributes(
                        self.status_code,
                        self.error_type,
                        &self.fields,
                        self.first_message_ms,
                    ),
                    status: &status,
                },
                out,
            )
        });
    }
}

thread_local! {
    /// Each thread's encoded start attributes, by method and component.
    static START_ATTRIBUTES_ENCODED: std::cell::RefCell<StartAttributes> =
        const { std::cell::RefCell::new(StartAttributes(Vec::new())) };
}

/// A span's [`start_attributes`] encoded once per method and component
/// and copied into each span: they are the same for every call of a
/// method, and encoding them field by field was ~40 % of a span's
/// encoding (callgrind: nine length-prefixed fields of ~21).
struct StartAttributes(Vec<(&'static str, &'static str, Box<[u8]>)>);

impl StartAttributes {
    /// By address: a method's name is interned, a component's is a
    /// constant, and a service serves a few dozen methods at most, so a
    /// scan beats hashing the names.
    fn of(&mut self, method: &'static str, component: &'static str) -> &[u8] {
        let found = self
            .0
            .iter()
            .position(|(m, c, _)| std::ptr::eq(*m, method) && std::ptr::eq(*c, component));
        let index = found.unwrap_or_else(|| {
            let encoded = crate::otlp_spans::encode_attributes(
                start_attributes(method, component)
                    .into_iter()
                    .map(|(key, value)| (key, AttributeValue::Str(value))),
            );
            self.0.push((method, component, encoded));
            self.0.len() - 1
        });
        &self.0[index].2
    }
}

#[cfg(test)]
impl EndedSpan {
    /// A finished SendMessage span of `scope`, as the conversation service
    /// ends one.
    pub(crate) fn example(scope: &'static InstrumentationScope) -> Self {
        let start = SystemTime::now();
        Self {
            scope,
            call: CallRecord::for_call(SpanContext::new(
                TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([3; 8]),
                TraceFlags::SAMPLED,
                false,
                opentelemetry::trace::TraceState::default(),
            )),
            parent_span_id: SpanId::from_bytes([2; 8]),
            parent_is_remote: true,
            name: "thoughtpartner.v1.ConversationService/SendMessage",
            component: "conversation",
            start,
            end: start + std::time::Duration::from_millis(3),
            status_code: "OK",
            error_type: None,
            fields: CallFields {
                tenant_id: Some(std::sync::Arc::from("3f6c2a")),
                ..CallFields::default()
            },
            first_message_ms: Some(1),
        }
    }
}

/// The attributes a call's span starts with (static strings all).
fn start_attributes(
    method: &'static str,
    component: &'static str,
) -> [(&'static str, &'static str); START_ATTRIBUTES] {
    [
        (RPC_SYSTEM_NAME, "grpc"),
        (RPC_METHOD, method),
        (COMPONENT, component),
    ]
}

/// [`start_attributes`] as the SDK's (for the SDK path's span); no
/// allocation, the strings are static.
fn start_key_values(method: &'static str, component: &'static str) -> [KeyValue; START_ATTRIBUTES] {
    start_attributes(method, component).map(|(key, value)| KeyValue::new(key, value))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The attributes a call's span gets when it ends: the fields of the
/// canonical log line, so that an exported span can stand for it. Never
/// content.
fn end_attributes<'a>(
    status_code: &'static str,
    error_type: Option<&'static str>,
    fields: &'a CallFields,
    first_message_ms: Option<u64>,
) -> impl Iterator<Item = (&'static str, AttributeValue<'a>)> {
    use AttributeValue::{Bool, I64, Str};
    let known = [
        error_type.map(|e| (ERROR_TYPE, Str(e))),
        fields.tenant_id.as_deref().map(|t| (TENANT_ID, Str(t))),
        fields.member_id.as_deref().map(|m| (MEMBER_ID, Str(m))),
        fields
            .conversation_id
            .as_deref()
            .map(|c| (CONVERSATION_ID, Str(c))),
        fields.responder.as_deref().map(|r| (RESPONDER, Str(r))),
        fields.input_tokens.map(|n| (INPUT_TOKENS, I64(count(n)))),
        fields.output_tokens.map(|n| (OUTPUT_TOKENS, I64(count(n)))),
        fields.grounded.map(|g| (GROUNDED, Bool(g))),
        fields
            .policy_violations
            .map(|n| (POLICY_VIOLATIONS, I64(count(n)))),
        first_message_ms.map(|ms| (FIRST_MESSAGE_MS, I64(count(ms)))),
    ];
    std::iter::once((RPC_STATUS_CODE, Str(status_code))).chain(known.into_iter().flatten())
}

/// Ends an SDK-made span with the call's outcome and its record's fields.
fn end_sdk(
    mut span: SdkSpan,
    status_code: &'static str,
    error_type: Option<&'static str>,
    fields: &CallFields,
    first_message_ms: Option<u64>,
) {
    use opentelemetry::trace::Span as _;
    for (key, value) in end_attributes(status_code, error_type, fields, first_message_ms) {
        span.set_attribute(KeyValue::new(key, value.to_value()));
    }
    if let Some(error_type) = error_type {
        span.set_status(Status::error(error_type));
    }
    span.end();
}

/// The trace context of the served call being polled, if any: inside a
/// call's future (and the work it spawned with [`in_current_call`]).
pub(crate) fn current_context() -> Option<SpanContext> {
    CALL.try_with(|call| call.context().clone()).ok()
}

/// The trace id of the served call being polled, if it has a valid one.
pub(crate) fn current_trace_id() -> Option<TraceId> {
    CALL.try_with(|call| call.context().trace_id())
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

/// `future`, polled with the current call's trace context (if there is
/// one): for work a call spawns as a task of its own, so its outgoing
/// calls continue the call's trace and its log lines carry its trace id.
pub fn in_current_call<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let call = current_record();
    async move {
        match call {
            Some(call) => CALL.scope(call, future).await,
            None => future.await,
        }
    }
}

/// Runs `f` as if inside a call with `context` (tests of what reads it).
#[cfg(test)]
pub(crate) fn with_context<R>(context: SpanContext, f: impl FnOnce() -> R) -> R {
    with_record(CallRecord::for_call(context), f)
}

/// Runs `f` as if inside the call `call` (tests of what reads it).
#[cfg(test)]
pub(crate) fn with_record<R>(call: CallRecord, f: impl FnOnce() -> R) -> R {
    CALL.sync_scope(call, f)
}

/// The served call being polled, if any (see [`CallRecord::current`]).
pub(crate) fn current_record() -> Option<CallRecord> {
    CALL.try_with(CallRecord::clone).ok()
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
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{Span as _, TraceState, TracerProvider as _};
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanProcessor};
    use prost::Message as _;

    use super::*;

    const METHOD: &str = "thoughtpartner.v1.ConversationService/SendMessage";

    /// Keeps the SDK's finished spans.
    #[derive(Clone, Debug, Default)]
    struct Capture(Arc<Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Capture {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().expect("capture").push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _timeout: std::time::Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    fn sdk_tracer(sampler: Sampler) -> (SdkTracer, Capture) {
        let capture = Capture::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_span_processor(capture.clone())
            .build();
        (provider.tracer("conversation"), capture)
    }

    fn caller(flags: TraceFlags) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            flags,
            true,
            TraceState::default(),
        ))
    }

    fn fields(full: bool) -> CallFields {
        if !full {
            return CallFields {
                tenant_id: Some(Arc::from("3f6c2a")),
                ..CallFields::default()
            };
        }
        CallFields {
            tenant_id: Some(Arc::from("3f6c2a")),
            member_id: Some(Arc::from("alice")),
            conversation_id: Some("c-17".to_owned()),
            responder: Some("offline".to_owned()),
            input_tokens: Some(120),
            output_tokens: Some(340),
            grounded: Some(true),
            policy_violations: Some(0),
        }
    }

    #[test]
    fn a_call_span_encoded_directly_is_the_span_the_sdk_would_export() {
        // Each method's start attributes are encoded once per thread and
        // then copied: the second span of a method takes the copy.
        let methods = [
            (METHOD, "conversation"),
            ("thoughtpartner.v1.KnowledgeService/Search", "knowledge"),
        ];
        for ((method, component), (error_type, full, first_message_ms)) in methods
            .into_iter()
            .cycle()
            .zip([(None, true, Some(12)), (Some("UNAVAILABLE"), false, None)].repeat(2))
        {
            let (tracer, capture) = sdk_tracer(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let call =
                CallSpan::start_sdk(&tracer, &caller(TraceFlags::SAMPLED), method, component);
            let Recording::Sdk(span) = call.recording else {
                panic!("the SDK path records");
            };
            let status_code = if error_type.is_some() {
                "UNAVAILABLE"
            } else {
                "OK"
            };
            end_sdk(
                *span,
                status_code,
                error_type,
                &fields(full),
                first_message_ms,
            );
            let made = capture.0.lock().expect("capture").pop().expect("a span");

            // The direct path's span, as the queue encodes it.
            let scope: &'static InstrumentationScope = Box::leak(Box::new(
                InstrumentationScope::builder("conversation").build(),
            ));
            let ended = EndedSpan {
                scope,
                call: CallRecord::for_call(made.span_context.clone()),
                parent_span_id: made.parent_span_id,
                parent_is_remote: made.parent_span_is_remote,
                name: method,
                component,
                start: made.start_time,
                end: made.end_time,
                status_code,
                error_type,
                fields: fields(full),
                first_message_ms,
            };
            let mut ours = Vec::new();
            ended.encode(&mut ours);
            let official: ProtoSpan = made.into();
            assert_eq!(
                ProtoSpan::decode(ours.as_slice()).expect("our bytes decode"),
                official
            );
        }
    }

    #[test]
    fn a_direct_span_is_sampled_as_the_sdk_tracer_samples_it() {
        let samplers = || {
            [
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0))),
                Sampler::TraceIdRatioBased(1.0),
                Sampler::AlwaysOff,
            ]
        };
        let parents = || {
            [
                Context::new(),
                caller(TraceFlags::SAMPLED),
                caller(TraceFlags::default()),
            ]
        };
        for (sampler, direct_sampler) in samplers().into_iter().zip(samplers()) {
            for parent in parents() {
                let (tracer, _capture) = sdk_tracer(sampler.clone());
                let sdk = CallSpan::start_sdk(&tracer, &parent, METHOD, "conversation");
                let ids = RandomIdGenerator::default();
                let direct =
                    CallSpan::start_direct(&direct_sampler, &ids, &parent, METHOD, "conversation");
                let case = format!("{sampler:?}, parent {:?}", parent.span().span_context());
                let sdk_recorded = match &sdk.recording {
                    Recording::Sdk(span) => span.is_recording(),
                    _ => false,
                };
                assert_eq!(
                    !matches!(direct.recording, Recording::No),
                    sdk_recorded,
                    "{case}"
                );
                assert_eq!(
                    direct.context().trace_flags(),
                    sdk.context().trace_flags(),
                    "{case}"
                );
                assert!(!direct.context().is_remote(), "{case}");
                let parent_context = parent.span().span_context().clone();
                if parent_context.is_valid() {
                    assert_eq!(
                        direct.context().trace_id(),
                        parent_context.trace_id(),
                        "{case}"
                    );
                    if let Recording::Direct {
                        parent_span_id,
                        parent_is_remote,
                        ..
                    } = direct.recording
                    {
                        assert_eq!(parent_span_id, parent_context.span_id(), "{case}");
                        assert!(parent_is_remote, "{case}");
                    }
                } else {
                    assert!(direct.context().trace_id() != TraceId::INVALID, "{case}");
                }
                assert!(direct.context().span_id() != SpanId::INVALID, "{case}");
            }
        }
    }

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
