//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, a served call's span leaves the
//! process over OTLP/gRPC: a real OTLP trace receiver, in this test, must
//! get it, named by its method and with the call's outcome.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tower::{Layer, Service, ServiceExt};
use tp_telemetry::{Metrics, RpcMethods, ServerTelemetryLayer};

struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[test]
fn spans_are_exported_over_otlp_when_the_endpoint_is_set() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (sender, mut received) = mpsc::unbounded_channel();
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // SAFETY: set before any thread of this test reads the environment; this
    // test binary has no other tests.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"));
        std::env::remove_var("OTEL_SERVICE_NAME");
    }

    runtime.block_on(async {
        let guard = tp_telemetry::init("otlp-test").expect("telemetry");
        // Two calls served behind the layer every service uses: one the
        // caller's fault (NOT_FOUND), one the server's (INTERNAL).
        let methods = RpcMethods::new([
            ("x.v1.Export/Check".to_owned(), false),
            ("x.v1.Export/Fail".to_owned(), false),
        ]);
        let mut server = ServerTelemetryLayer::new(Metrics::new("otlp-test"), methods).layer(
            tower::service_fn(|request: http::Request<tonic::body::Body>| async move {
                let status = if request.uri().path().ends_with("/Fail") {
                    "13"
                } else {
                    "5"
                };
                let mut response = http::Response::new(tonic::body::Body::empty());
                response
                    .headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static(status));
                Ok::<_, std::convert::Infallible>(response)
            }),
        );
        for path in ["/x.v1.Export/Check", "/x.v1.Export/Fail"] {
            let request = http::Request::builder()
                .uri(path)
                .body(tonic::body::Body::empty())
                .expect("request");
            server
                .ready()
                .await
                .expect("ready")
                .call(request)
                .await
                .expect("served");
        }
        // Dropping the guard flushes the batch exporter.
        tokio::task::spawn_blocking(move || drop(guard))
            .await
            .expect("shutdown");

        let batch = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("the receiver got an export within 10 s")
            .expect("an export request");
        let resource_spans = &batch.resource_spans[0];
        let service_name = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.clone());
        assert_eq!(service_name, Some(Value::StringValue("otlp-test".into())));
        let spans: Vec<_> = resource_spans
            .scope_spans
            .iter()
            .flat_map(|s| s.spans.iter())
            .collect();
        let span = |name: &str| {
            *spans
                .iter()
                .find(|span| span.name == name)
                .unwrap_or_else(|| panic!("{name}'s span was exported: {spans:?}"))
        };
        let attribute = |span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| v.value.clone())
        };
        let string = |s: &str| Some(Value::StringValue(s.into()));
        let check = span("x.v1.Export/Check");
        assert_eq!(attribute(check, "rpc.method"), string("x.v1.Export/Check"));
        assert_eq!(attribute(check, "rpc.status_code"), string("NOT_FOUND"));
        // A client's error is not the server's: no error type, status unset.
        assert_eq!(attribute(check, "error.type"), None);
        assert_eq!(check.status.as_ref().map(|s| s.code), Some(0));
        // A server error is one: its type, and the span's status is Error
        // (2 in OTLP).
        let fail = span("x.v1.Export/Fail");
        assert_eq!(attribute(fail, "rpc.status_code"), string("INTERNAL"));
        assert_eq!(attribute(fail, "error.type"), string("INTERNAL"));
        assert_eq!(fail.status.as_ref().map(|s| s.code), Some(2));
    });
}
