//! Telemetry of a real `SendMessage`: one trace spans gateway → conversation
//! → knowledge (the context crosses each hop in gRPC metadata, not in
//! memory: each server starts its span from the incoming `traceparent`),
//! calls are measured to the end of their stream, the RPC metrics
//! (`rpc.server.call.duration`, as the OTLP exporter sends them as well as
//! scraped) carry the final status, and message content never reaches a span.

use std::time::Duration;

use opentelemetry::Value;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_sdk::trace::SpanData;
use tonic::Code;
use tp_e2e::{TestApp, new_conversation, send};

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.to_string(),
            other => other.to_string(),
        })
}

fn find<'a>(spans: &'a [SpanData], component: &str, rpc: &str, code: &str) -> Option<&'a SpanData> {
    spans.iter().find(|s| {
        attribute(s, "tp.component").as_deref() == Some(component)
            && s.name.ends_with(rpc)
            && attribute(s, "rpc.status_code").as_deref() == Some(code)
    })
}

/// Calls measured for one method and final status code at one component.
fn requests(
    telemetry: &tp_telemetry::TestTelemetry,
    component: &str,
    method: &str,
    code: &str,
) -> u64 {
    let mut total = 0;
    for metric in telemetry
        .metrics()
        .into_iter()
        .filter(|m| m.name == "rpc.server.call.duration")
    {
        let Some(metric::Data::Histogram(histogram)) = metric.data else {
            continue;
        };
        for point in histogram.data_points {
            let has = |key: &str, value: &str| {
                point.attributes.iter().any(|kv| {
                    kv.key == key
                        && matches!(
                            kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(any_value::Value::StringValue(s)) if s == value
                        )
                })
            };
            if has("tp.component", component)
                && has("rpc.method", method)
                && has("rpc.status_code", code)
            {
                total = total.max(point.count);
            }
        }
    }
    total
}

#[tokio::test]
async fn send_message_is_one_trace_measured_to_the_end_of_its_stream() -> anyhow::Result<()> {
    let telemetry = tp_telemetry::init_for_tests();
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let secret = "Our incident count doubled since the reorg";
    send(&mut client, &id, secret, "").await?;
    let missing = send(
        &mut client,
        "00000000-0000-4000-8000-000000000000",
        "hello",
        "",
    )
    .await
    .expect_err("unknown conversation");
    assert_eq!(missing.code(), Code::NotFound);

    // Spans end as their streams finish; give the reply task a moment.
    let mut spans = Vec::new();
    for _ in 0..50 {
        spans = telemetry.finished_spans();
        if find(&spans, "knowledge", "/Retrieve", "OK").is_some()
            && find(&spans, "conversation", "/SendMessage", "OK").is_some()
            && find(&spans, "gateway", "/SendMessage", "OK").is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gateway = find(&spans, "gateway", "/SendMessage", "OK").expect("gateway span");
    let conversation =
        find(&spans, "conversation", "/SendMessage", "OK").expect("conversation span");
    let knowledge = find(&spans, "knowledge", "/Retrieve", "OK").expect("knowledge span");

    let trace = gateway.span_context.trace_id();
    assert_eq!(conversation.span_context.trace_id(), trace);
    assert_eq!(knowledge.span_context.trace_id(), trace);
    assert_eq!(conversation.parent_span_id, gateway.span_context.span_id());
    assert_eq!(
        knowledge.parent_span_id,
        conversation.span_context.span_id()
    );
    // The conversation span lasts until its stream ends, which is after the
    // knowledge lookup that happens while the reply is produced.
    assert!(conversation.end_time >= knowledge.end_time);
    // Each span carries its canonical event's fields, so that an exported
    // span can stand for the log line (`TP_CANONICAL_LOG=auto`).
    assert_eq!(
        attribute(conversation, "tp.conversation.id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        attribute(conversation, "tp.responder").as_deref(),
        Some("offline")
    );
    assert_eq!(
        attribute(conversation, "tp.reply.grounded").as_deref(),
        Some("true")
    );
    assert_eq!(
        attribute(conversation, "tp.reply.policy_violations").as_deref(),
        Some("0")
    );
    // The offline coach counts no tokens (a model's usage is added up
    // into the same record).
    assert_eq!(attribute(conversation, "gen_ai.usage.output_tokens"), None);
    for span in [gateway, conversation] {
        assert_eq!(attribute(span, "tp.member.id").as_deref(), Some("alice"));
        assert!(attribute(span, "tp.call.first_message_ms").is_some());
    }

    // The failed call is its own trace, with its status on the span.
    let failed = find(&spans, "gateway", "/SendMessage", "NOT_FOUND").expect("NOT_FOUND span");
    assert_ne!(failed.span_context.trace_id(), trace);

    // RED metrics: rate and errors by final status, at every hop, with
    // fully-qualified method names.
    let send = "thoughtpartner.v1.ConversationService/SendMessage";
    let retrieve = "thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve";
    assert!(requests(&telemetry, "gateway", send, "OK") >= 1);
    assert!(requests(&telemetry, "gateway", send, "NOT_FOUND") >= 1);
    assert!(requests(&telemetry, "conversation", send, "OK") >= 1);
    assert!(requests(&telemetry, "knowledge", retrieve, "OK") >= 1);

    // Nor into the logs, at any level our crates write (debug included),
    // though the call was logged: its canonical events are there.
    let logs = telemetry.logs();
    assert!(
        logs.contains(&id),
        "the captured logs hold the call's canonical events"
    );
    assert!(!logs.contains(secret), "message content reached the logs");
    assert!(
        !logs.contains(tp_e2e::JWT_SECRET) && !logs.contains(&token),
        "a secret reached the logs"
    );

    // Every attribute an exported span carries is a name schema.toml
    // declares, and a failed call's span says so in its status only when
    // the failure is the server's (NOT_FOUND is the caller's).
    let schema: toml::Table = toml::from_str(include_str!("../../crates/telemetry/schema.toml"))?;
    let declared: Vec<&str> = schema
        .get("attribute")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("name").and_then(|n| n.as_str()))
        .collect();
    for span in &spans {
        for kv in &span.attributes {
            assert!(
                declared.contains(&kv.key.as_str()),
                "{}: `{}` is not in schema.toml",
                span.name,
                kv.key
            );
        }
    }
    assert_eq!(failed.status, opentelemetry::trace::Status::Unset);
    assert_eq!(gateway.span_kind, opentelemetry::trace::SpanKind::Server);

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
