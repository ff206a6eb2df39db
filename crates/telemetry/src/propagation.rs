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

/// Server side: continues the caller's trace from the `traceparent` metadata,
/// wraps the handler in a `grpc.server` span and records RED metrics
/// labelled with `component` (the service name).
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
                .with_description("Served gRPC calls, by method and gRPC status code")
                .build(),
            duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Time to the response headers of served gRPC calls")
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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerTelemetry<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

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
        let metrics = self.metrics.clone();
        let component = self.component;
        let started = Instant::now();
        Box::pin(async move {
            let result = tracing::Instrument::instrument(future, span.clone()).await;
            // A unary error or a rejected call carries its status in the
            // headers; otherwise the call started successfully (a streaming
            // call's final status travels in trailers, after this point).
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => 2, // UNKNOWN: the transport failed.
            };
            span.record("rpc.grpc.status_code", code);
            let attributes = [
                KeyValue::new("tp.component", component),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
                KeyValue::new("rpc.grpc.status_code", code),
            ];
            metrics.requests.add(1, &attributes);
            metrics
                .duration
                .record(started.elapsed().as_secs_f64(), &attributes);
            result
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
