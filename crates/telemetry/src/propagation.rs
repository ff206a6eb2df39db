//! Tower layers that carry W3C trace context across gRPC hops and record
//! RED metrics (rate, errors, duration) for every served call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::{TraceContextExt, TraceId};
use opentelemetry::{KeyValue, global};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace id of the current span, as 32 hex digits.
pub fn current_trace_id() -> TraceId {
    Span::current().context().span().span_context().trace_id()
}

struct RpcMetrics {
    requests: Counter<u64>,
    duration: Histogram<f64>,
}

/// gRPC status codes the layer itself assigns.
const CODE_OK: i64 = 0;
const CODE_CANCELLED: i64 = 1;
const CODE_UNKNOWN: i64 = 2;

/// Server side: continues the caller's trace from the `traceparent` metadata,
/// wraps the call in a `grpc.server` span and records RED metrics labelled
/// with `component` (the service name). A call is measured until its
/// response body ends, so a streaming call's duration and status are those
/// of the whole stream, read from its trailers; a client that hangs up early
/// is counted as `CANCELLED`.
#[derive(Clone)]
pub struct ServerTelemetryLayer {
    component: &'static str,
    metrics: Arc<RpcMetrics>,
}

impl ServerTelemetryLayer {
    pub fn new(component: &'static str) -> Self {
        let meter = global::meter("thoughtpartner");
        let metrics = RpcMetrics {
            requests: meter
                .u64_counter("rpc.server.requests")
                .with_description("Served gRPC calls, by method and final gRPC status code")
                .build(),
            duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description(
                    "Duration of served gRPC calls, to the end of the response stream",
                )
                .build(),
        };
        Self {
            component,
            metrics: Arc::new(metrics),
        }
    }
}

impl<S> Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry {
            inner,
            component: self.component,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ServerTelemetry<S> {
    inner: S,
    component: &'static str,
    metrics: Arc<RpcMetrics>,
}

/// Splits `/package.Service/Method`.
fn rpc_names(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i64> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
}

/// One call in flight: recorded exactly once, when it finishes.
struct Observation {
    span: Span,
    metrics: Arc<RpcMetrics>,
    attributes: [KeyValue; 3],
    started: Instant,
}

impl Observation {
    fn finish(self, code: i64) {
        self.span.record("rpc.grpc.status_code", code);
        let [component, service, method] = self.attributes;
        let attributes = [
            component,
            service,
            method,
            KeyValue::new("rpc.grpc.status_code", code),
        ];
        self.metrics.requests.add(1, &attributes);
        self.metrics
            .duration
            .record(self.started.elapsed().as_secs_f64(), &attributes);
    }
}

pin_project! {
    /// A response body that finishes its [`Observation`] when the stream
    /// ends (status from the trailers) or is dropped early (`CANCELLED`).
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        observation: Option<Observation>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(observation) = this.project().observation.take() {
                observation.finish(CODE_CANCELLED);
            }
        }
    }
}

impl<B> http_body::Body for ObservedBody<B>
where
    B: http_body::Body,
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
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or(CODE_OK)),
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
        let parent =
            global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        let (service, method) = rpc_names(request.uri().path());
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            tp.component = self.component,
            trace_id = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Fails only when no OpenTelemetry layer is installed; the span then
        // simply starts a new trace.
        let _ = span.set_parent(parent);
        span.record(
            "trace_id",
            tracing::field::display(span.context().span().span_context().trace_id()),
        );

        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let observation = Observation {
            span: span.clone(),
            metrics: self.metrics.clone(),
            attributes: [
                KeyValue::new("tp.component", self.component),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ],
            started: Instant::now(),
        };
        Box::pin(async move {
            let response = match tracing::Instrument::instrument(future, span).await {
                Ok(response) => response,
                Err(error) => {
                    observation.finish(CODE_UNKNOWN);
                    return Err(error);
                }
            };
            // A rejected call or a unary error carries its status in the
            // headers and has no body to wait for.
            let header_status = grpc_status(response.headers());
            let observation = match header_status {
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
            Ok(response.map(|inner| tonic::body::Body::new(ObservedBody { inner, observation })))
        })
    }
}

/// Client side: writes the current span's context into the outgoing
/// `traceparent` metadata, so the next service continues the same trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = TraceClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceClient { inner }
    }
}

#[derive(Clone, Debug)]
pub struct TraceClient<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceClient<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let context = Span::current().context();
        global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
        });
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::rpc_names;

    #[test]
    fn rpc_path_splits_into_service_and_method() {
        assert_eq!(
            rpc_names("/thoughtpartner.v1.ConversationService/SendMessage"),
            (
                "thoughtpartner.v1.ConversationService".into(),
                "SendMessage".into()
            )
        );
        assert_eq!(rpc_names("/"), (String::new(), String::new()));
    }
}
