//! One trace spans gateway → conversation → knowledge for a SendMessage:
//! the trace context crosses each hop in gRPC metadata, not in memory
//! (each server starts its span from the incoming `traceparent`).

use std::time::Duration;

use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;
use tp_e2e::{TestApp, new_conversation, send};

fn component(span: &SpanData) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "tp.component")
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}

fn find<'a>(spans: &'a [SpanData], component_name: &str, rpc: &str) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| component(s).as_deref() == Some(component_name) && s.name.ends_with(rpc))
}

#[tokio::test]
async fn send_message_is_one_trace_across_three_services() -> anyhow::Result<()> {
    let exporter = tp_telemetry::init_for_tests();
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let secret = "Our incident count doubled since the reorg";
    send(&mut client, &id, secret, "").await?;

    // Spans end as their tasks finish; give the reply task a moment.
    let mut spans = Vec::new();
    for _ in 0..50 {
        spans = exporter.get_finished_spans()?;
        if find(&spans, "knowledge", "/LookupFrameworks").is_some()
            && find(&spans, "conversation", "/SendMessage").is_some()
            && find(&spans, "gateway", "/SendMessage").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = find(&spans, "gateway", "/SendMessage").expect("gateway span");
    let conversation = find(&spans, "conversation", "/SendMessage").expect("conversation span");
    let knowledge = find(&spans, "knowledge", "/LookupFrameworks").expect("knowledge span");

    let trace = gateway.span_context.trace_id();
    assert_eq!(conversation.span_context.trace_id(), trace);
    assert_eq!(knowledge.span_context.trace_id(), trace);
    assert_eq!(conversation.parent_span_id, gateway.span_context.span_id());
    assert_eq!(
        knowledge.parent_span_id,
        conversation.span_context.span_id()
    );

    // Message content never goes into spans.
    for span in spans.iter().filter(|s| s.span_context.trace_id() == trace) {
        for kv in &span.attributes {
            assert!(
                !kv.value.to_string().contains(secret),
                "content leaked into {}",
                span.name
            );
        }
        for event in span.events.iter() {
            assert!(!event.name.contains(secret));
            for kv in &event.attributes {
                assert!(
                    !kv.value.to_string().contains(secret),
                    "content leaked into an event of {}",
                    span.name
                );
            }
        }
    }
    Ok(())
}
