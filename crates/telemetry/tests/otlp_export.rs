//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans leave the process over
//! OTLP/gRPC: a real OTLP trace receiver, in this test, must get them.

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
        tracing::info_span!("export-check").in_scope(|| {
            tracing::info!("inside the span");
        });
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
        let names: Vec<&str> = resource_spans
            .scope_spans
            .iter()
            .flat_map(|s| s.spans.iter().map(|span| span.name.as_str()))
            .collect();
        assert!(names.contains(&"export-check"), "{names:?}");
    });
}
