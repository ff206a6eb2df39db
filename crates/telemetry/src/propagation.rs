//! Tower layers that carry W3C trace context across gRPC hops, measure every
//! served and every internal outgoing call by the OpenTelemetry RPC
//! conventions, and emit one canonical event per served call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Buf as _;
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceId};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::call_span::{CallSpan, current_context, sampled_trace_id};
use crate::intern::interned;
use crate::metrics::{Metrics, OTHER_METHOD, server_error_type, status_code_name};
use crate::trace_context;

/// The trace id a metric's exemplar carries: the current call's, if its
/// trace is sampled.
pub fn exemplar_trace_id() -> TraceId {
    current_context()
        .map(|context| sampled_trace_id(&context))
        .unwrap_or(TraceId::INVALID)
}

/// gRPC status codes the layers themselves assign.
const CODE_OK: i64 = 0;
const CODE_CANCELLED: i64 = 1;
const CODE_UNKNOWN: i64 = 2;
const CODE_UNAVAILABLE: i64 = 14;

/// The methods a server serves, so `rpc.method` stays bounded: any other
/// path is labelled `_OTHER`. Keys are `package.Service/Method`, hashed
/// with foldhash: looked up on every call, and the map is fixed when the
/// server starts, so a caller's path is only ever looked up, never
/// inserted (no flooding attack on the hash).
#[derive(Clone, Debug, Default)]
pub struct RpcMethods(Arc<HashMap<Box<str>, MethodEntry, foldhash::fast::RandomState>>);

/// A served method's `rpc.method` label and whether it streams its response.
type MethodEntry = (&'static str, bool);

impl RpcMethods {
    /// `methods`: each fully-qualified method (`package.Service/Method`)
    /// and whether it streams its response.
    pub fn new(methods: impl IntoIterator<Item = (String, bool)>) -> Self {
        Self(Arc::new(
            methods
                .into_iter()
                .map(|(name, streaming)| {
                    let label = interned(&name);
                    (name.into_boxed_str(), (label, streaming))
                })
                .collect(),
        ))
    }

    /// The `rpc.method` of a request path, and whether it is a
    /// server-streaming method.
    pub fn lookup(&self, path: &str) -> (&'static str, bool) {
        match self.0.get(path.trim_start_matches('/')) {
            Some(entry) => *entry,
            None => (OTHER_METHOD, false),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Server side: continues the caller's trace from the `traceparent` metadata,
/// runs the call in its context and exports its span, measures it
/// (`rpc.server.call.duration`, and `tp.rpc.server.time_to_first_message`
/// for server-streaming methods), and emits its canonical event. A call is
/// measured until its response body ends, so a streaming call's duration
/// and status are those of the whole stream, read from its trailers; a
/// client that hangs up early is counted as `CANCELLED`.
///
/// Makes the call's [`CallRecord`], current while its work is polled, for
/// inner layers and handlers to fill ([`CallRecord::current`]).
#[derive(Clone)]
pub struct ServerTelemetryLayer {
    metrics: Metrics,
    methods: RpcMethods,
    tenant_label: bool,
    /// False with `TP_TELEMETRY=off` ([`crate::enabled`]): calls pass
    /// straight through.
    enabled: bool,
}

impl ServerTelemetryLayer {
    pub fn new(metrics: Metrics, methods: RpcMethods) -> Self {
        Self {
            metrics,
            methods,
            tenant_label: false,
            enabled: crate::enabled(),
        }
    }

    /// Labels the RPC metrics with `tp.tenant.id` (bounded by the tenant
    /// cap). Only the gateway's SLI metrics carry it (see `schema.toml`).
    pub fn with_tenant_label(mut self) -> Self {
        self.tenant_label = true;
        self
    }
}

impl<S> Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ServerTelemetry<S> {
    inner: S,
    layer: ServerTelemetryLayer,
}

/// A `HeaderName` made once: looked up by `&str`, the name was parsed and
/// validated again on every response (callgrind: ~300 instructions a call).
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a measured call does at its first response message and at its end.
pub trait Observe {
    /// A DATA frame carrying a message went out (or came in).
    fn message(&mut self);
    /// The call ended with `code`; called exactly once.
    fn finish(self, code: i64);
}

/// One served call in flight.
pub struct ServerObservation {
    call_span: CallSpan,
    metrics: Metrics,
    method: &'static str,
    streaming: bool,
    tenant_label: bool,
    started: Instant,
    first_message: Option<Duration>,
}

impl ServerObservation {
    fn tenant(&self, tenant_id: Option<&str>) -> Option<&'static str> {
        if !self.tenant_label {
            return None;
        }
        tenant_id.map(|t| self.metrics.tenant_label(t))
    }

    fn trace_id(&self) -> TraceId {
        sampled_trace_id(self.call_span.context())
    }
}

impl Observe for ServerObservation {
    fn message(&mut self) {
        if self.first_message.is_some() || !self.streaming {
            return;
        }
        let elapsed = self.started.elapsed();
        self.first_message = Some(elapsed);
        let tenant_id = self.call_span.record().tenant_id();
        self.metrics.rpc_first_message(
            self.method,
            self.tenant(tenant_id.as_deref()),
            elapsed,
            self.trace_id(),
        );
    }

    fn finish(self, code: i64) {
        let duration = self.started.elapsed();
        let trace_id = self.trace_id();
        // The call is over: its record is read for the last time.
        let fields = self.call_span.record().take();
        let status = status_code_name(code);
        let error_type = server_error_type(code);
        self.metrics.rpc_server_call(
            self.method,
            code,
            self.tenant(fields.tenant_id.as_deref()),
            duration,
            trace_id,
        );
        let first_message_ms = self.first_message.map(millis);
        // The canonical event: one per call, with the trace id the log line
        // is found by (logs keep every trace id, sampled or not). Names as
        // in schema.toml; never content. Written before the span ends, so
        // the span can take the fields rather than copy them.
        if !self.call_span.is_canonical() {
            let trace_id_hex =
                crate::trace_context::trace_id_hex(self.call_span.context().trace_id());
            tracing::event!(
                target: crate::CANONICAL_TARGET,
                tracing::Level::INFO,
                tp.component = self.metrics.component(),
                rpc.method = self.method,
                rpc.status_code = status,
                "error.type" = error_type,
                tp.tenant.id = fields.tenant_id.as_deref(),
                tp.member.id = fields.member_id.as_deref(),
                tp.conversation.id = fields.conversation_id.as_deref(),
                tp.responder = fields.responder.as_deref(),
                gen_ai.usage.input_tokens = fields.input_tokens,
                gen_ai.usage.output_tokens = fields.output_tokens,
                tp.reply.grounded = fields.grounded,
                tp.reply.policy_violations = fields.policy_violations,
                tp.call.duration_ms = millis(duration),
                tp.call.first_message_ms = first_message_ms,
                trace_id = std::str::from_utf8(&trace_id_hex).unwrap_or_default(),
                "call"
            );
        }
        // The span carries the same fields (and, exported, is the event).
        self.call_span
            .end(status, error_type, fields, first_message_ms);
    }
}

pin_project! {
    /// A response body that reports its first message and finishes its
    /// observation when the stream ends (status from the trailers) or is
    /// dropped early (`CANCELLED`).
    pub struct ObservedBody<B, O: Observe> {
        #[pin]
        inner: B,
        observation: Option<O>,
    }

    impl<B, O: Observe> PinnedDrop for ObservedBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(observation) = this.project().observation.take() {
                observation.finish(CODE_CANCELLED);
            }
        }
    }
}

impl<B, O> http_body::Body for ObservedBody<B, O>
where
    B: http_body::Body<Data = bytes::Bytes>,
    O: Observe,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|data| data.has_remaining())
                    && let Some(observation) = this.observation.as_mut()
                {
                    observation.message();
                }
                frame
                    .trailers_ref()
                    .map(|t| grpc_status(t).unwrap_or(CODE_OK))
            }
            Poll::Ready(Some(Err(_))) => Some(CODE_UNKNOWN),
            Poll::Ready(None) => Some(CODE_OK),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(observation) = this.observation.take()
        {
            observation.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Finishes a call whose response has arrived: at once when its status is
/// in the headers (a rejection, a unary error) or it has no body, else when
/// the body ends.
fn observe_response<B, O>(
    response: http::Response<B>,
    observation: O,
) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    O: Observe + Send + 'static,
{
    let observation = match grpc_status(response.headers()) {
        Some(code) => {
            observation.finish(code);
            None
        }
        None if response.body().is_end_stream() => {
            observation.finish(CODE_OK);
            None
        }
        None => Some(observation),
    };
    response.map(|inner| tonic::body::Body::new(ObservedBody { inner, observation }))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerTelemetry<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !self.layer.enabled {
            let future = self.inner.call(request);
            return Box::pin(async move { Ok(future.await?.map(tonic::body::Body::new)) });
        }
        let started = Instant::now();
        let parent = match trace_context::extract(request.headers()) {
            Some(caller) => opentelemetry::Context::new().with_remote_span_context(caller),
            None => opentelemetry::Context::new(),
        };
        let (method, streaming) = self.layer.methods.lookup(request.uri().path());
        let call_span = CallSpan::start(&parent, method, self.layer.metrics.component());

        // The call's work runs with its trace context current, for
        // propagation, the exemplars and the trace id of log lines (see
        // `call_span`).
        let future = call_span.scope(call_span.in_scope(|| self.inner.call(request)));
        let observation = ServerObservation {
            call_span,
            metrics: self.layer.metrics,
            method,
            streaming,
            tenant_label: self.layer.tenant_label,
            started,
            first_message: None,
        };
        Box::pin(async move {
            match future.await {
                Ok(response) => Ok(observe_response(response, observation)),
                Err(error) => {
                    observation.finish(CODE_UNKNOWN);
                    Err(error)
                }
            }
        })
    }
}

/// Client side: writes the current span's context into the outgoing
/// `traceparent` metadata, so the next service continues the same trace,
/// and, given the service's [`Metrics`], measures the call
/// (`rpc.client.call.duration`) to the end of its response stream.
#[derive(Clone, Debug, Default)]
pub struct ClientTraceLayer {
    metrics: Option<Metrics>,
}

impl ClientTraceLayer {
    /// Measures calls with `metrics`, unless telemetry is off
    /// ([`crate::enabled`]).
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics: crate::enabled().then_some(metrics),
        }
    }
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = TraceClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceClient {
            inner,
            metrics: self.metrics,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TraceClient<S> {
    inner: S,
    metrics: Option<Metrics>,
}

/// One outgoing call in flight.
pub struct ClientObservation {
    metrics: Option<Metrics>,
    method: &'static str,
    trace_id: TraceId,
    started: Instant,
}

impl Observe for ClientObservation {
    fn message(&mut self) {}

    fn finish(self, code: i64) {
        if let Some(metrics) = &self.metrics {
            metrics.rpc_client_call(self.method, code, self.started.elapsed(), self.trace_id);
        }
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for TraceClient<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let context = current_context().unwrap_or_else(SpanContext::empty_context);
        trace_context::inject(&context, request.headers_mut());
        // Only our own services are called through this layer, so the
        // method names are the few the code calls: bounded.
        let observation = ClientObservation {
            metrics: self.metrics,
            method: interned(request.uri().path().trim_start_matches('/')),
            trace_id: sampled_trace_id(&context),
            started: Instant::now(),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Ok(response) => Ok(observe_response(
                    response.map(|body| body.map_err(|e| connection_lost(e.into()))),
                    observation,
                )),
                Err(error) => {
                    // The channel failed before any answer: the other
                    // service could not be reached.
                    observation.finish(CODE_UNAVAILABLE);
                    Err(Box::new(connection_lost(error.into())) as BoxError)
                }
            }
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status a caller gets when the connection to the service it called
/// failed (refused, reset, or closed mid-reply because the service died or
/// restarted): `Unavailable`, which says "retry", where tonic would say
/// `Unknown` ("transport error") for a connection lost mid-call and
/// `Cancelled` ("operation was canceled") for a request whose connection
/// closed before it was answered. Any other status the transport names (a
/// refused connection's `Unavailable`, say) is kept.
pub fn connection_lost(error: BoxError) -> tonic::Status {
    // Errors here are the transport's, never the called service's answer
    // (its grpc-status arrives in trailers, not as an error); tonic's
    // channel already hands some over as a `Status`, which `from_error`
    // keeps as it is.
    let status = tonic::Status::from_error(error);
    // Unknown: the transport failed mid-call ("transport error"). Cancelled:
    // hyper cancels a request whose connection closed before it was sent
    // or answered ("operation was canceled"). Either way the service went
    // away, not our caller (a caller that hangs up drops the call, which
    // produces no error here), and a retry is what helps.
    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) {
        tonic::Status::unavailable(format!(
            "the connection to the service behind this one failed mid-call ({}); retry the call",
            status.message()
        ))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_lost_mid_call_is_unavailable_and_named_statuses_are_kept() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let status = connection_lost(Box::new(reset));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("retry"), "{}", status.message());

        // tonic's channel reports a body cut off, or a request whose
        // connection closed first, as these statuses.
        for lost in [
            tonic::Status::unknown("h2 protocol error: error reading a body from connection"),
            tonic::Status::cancelled("operation was canceled"),
        ] {
            let status = connection_lost(Box::new(lost));
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }

        let named = connection_lost(Box::new(tonic::Status::unavailable("connection refused")));
        assert_eq!(named.code(), tonic::Code::Unavailable);
        assert_eq!(named.message(), "connection refused");
        let named = connection_lost(Box::new(tonic::Status::deadline_exceeded("timeout")));
        assert_eq!(named.code(), tonic::Code::DeadlineExceeded);
    }

    #[test]
    fn unserved_paths_are_other() {
        let methods = RpcMethods::new([
            (
                "thoughtpartner.v1.ConversationService/SendMessage".to_owned(),
                true,
            ),
            (
                "thoughtpartner.v1.ConversationService/ListMessages".to_owned(),
                false,
            ),
        ]);
        let (name, streaming) =
            methods.lookup("/thoughtpartner.v1.ConversationService/SendMessage");
        assert_eq!(name, "thoughtpartner.v1.ConversationService/SendMessage");
        assert!(streaming);
        let (name, streaming) =
            methods.lookup("/thoughtpartner.v1.ConversationService/ListMessages");
        assert_eq!(name, "thoughtpartner.v1.ConversationService/ListMessages");
        assert!(!streaming);
        // One copy per name, however often a server is set up or a path
        // is seen.
        let again = RpcMethods::new([(
            "thoughtpartner.v1.ConversationService/SendMessage".to_owned(),
            true,
        )]);
        let first = methods
            .lookup("/thoughtpartner.v1.ConversationService/SendMessage")
            .0;
        let second = again
            .lookup("/thoughtpartner.v1.ConversationService/SendMessage")
            .0;
        assert!(std::ptr::eq(first, second));
        let path = String::from("thoughtpartner.v1.ConversationService/SendMessage");
        assert!(std::ptr::eq(interned(&path), first));
        // Another thread, with its own cache, finds the same copy.
        let elsewhere = std::thread::scope(|s| s.spawn(|| interned(&path)).join());
        assert!(elsewhere.is_ok_and(|name| std::ptr::eq(name, first)));
        for path in [
            "/thoughtpartner.v1.ConversationService/Nope",
            "/x.Y/SendMessage",
            "/",
            "",
        ] {
            assert_eq!(methods.lookup(path).0, OTHER_METHOD, "{path}");
        }
    }
}
