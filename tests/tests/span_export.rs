//! The three services as real processes exporting their spans and metrics
//! over OTLP/gRPC to a receiver (the load generator's): what an operator's
//! collector gets. One call through the gateway is one trace, each
//! service's served span named by its method under its own `service.name`,
//! sent within the configured batch delay and again on shutdown; each
//! service's served calls are counted in its `rpc.server.call.duration`,
//! exported on its interval and once more on shutdown.

use std::time::Duration;

use tp_e2e::processes::ProcessStack;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{new_conversation, send};
use tp_loadgen::otlp::{self, HOP_METHOD};

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

#[tokio::test]
async fn each_service_exports_its_served_span_of_one_trace() -> anyhow::Result<()> {
    let (endpoint, received) = otlp::start().await?;
    let mut env = Vec::new();
    for service in ["gateway", "conversation", "knowledge"] {
        env.push((
            service,
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            endpoint.clone(),
        ));
        // Batches leave within 200 ms, not the default 5 s, and metrics
        // every 200 ms, not every minute.
        env.push((
            service,
            "OTEL_BSP_SCHEDULED_DELAY".to_owned(),
            "200".to_owned(),
        ));
        env.push((
            service,
            "OTEL_METRIC_EXPORT_INTERVAL".to_owned(),
            "200".to_owned(),
        ));
    }
    let mut app = ProcessStack::start(SERVICE_BINARY, env).await?;
    let (_tenant, token) = app.tenant_with_member("Spans", "sam").await?;
    let mut conversations = app.conversations(&token).await?;
    let id = new_conversation(&mut conversations, "span export")
        .await?
        .conversation_id;
    send(
        &mut conversations,
        &id,
        "We are 12 engineers and on-call hurts.",
        "s1",
    )
    .await?;
    conversations
        .get_conversation(pb::GetConversationRequest {
            conversation_id: id.clone(),
        })
        .await?;

    // Within the batch delay, without a shutdown: both served spans of the
    // GetConversation call, from the gateway and from conversation, in one
    // trace. Generous, so a slow machine still passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pair = loop {
        let spans = received.hop_spans();
        let gateway = spans.iter().find(|s| s.service == "gateway");
        let behind = gateway.and_then(|g| {
            spans
                .iter()
                .find(|s| s.service == "conversation" && s.trace_id == g.trace_id)
        });
        if let (Some(gateway), Some(behind)) = (gateway, behind) {
            break (gateway.clone(), behind.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no {HOP_METHOD} spans of one trace from both services: {spans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (gateway, behind) = pair;
    assert_eq!(gateway.trace_id.len(), 16, "a W3C trace id");
    assert!(gateway.start_ns > 0 && gateway.start_ns <= gateway.end_ns);
    assert!(
        gateway.start_ns <= behind.start_ns && behind.end_ns <= gateway.end_ns,
        "conversation's span lies within the gateway's: {gateway:?} {behind:?}"
    );
    // SendMessage (3 services), GetConversation (2), and the set-up calls.
    let before_shutdown = received.spans();
    assert!(before_shutdown >= 5, "{before_shutdown} spans exported");

    // The served calls, counted by both services on the way, within the
    // export interval.
    let send_method = "thoughtpartner.v1.ConversationService/SendMessage";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received.served_calls("gateway", send_method) < 1
        || received.served_calls("conversation", send_method) < 1
        || received.served_calls("conversation", HOP_METHOD) < 1
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no exported rpc.server.call.duration of SendMessage from gateway and conversation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received.served_calls("knowledge", send_method), 0);

    // A call just before shutdown is exported on the way out.
    conversations
        .get_conversation(pb::GetConversationRequest {
            conversation_id: id.clone(),
        })
        .await?;
    app.terminate_all().await?;
    let traces: std::collections::HashSet<Vec<u8>> = received
        .hop_spans()
        .into_iter()
        .filter(|s| s.service == "gateway")
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(
        traces.len(),
        2,
        "both GetConversation calls' gateway spans arrived"
    );
    assert_eq!(
        received.served_calls("gateway", HOP_METHOD),
        2,
        "the last call counted in the export at shutdown"
    );
    Ok(())
}
