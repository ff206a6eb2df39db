//! Per-user and per-tenant request rates through the gateway: a caller over
//! their limit gets RESOURCE_EXHAUSTED with a RetryInfo saying when to come
//! back, and another tenant is not slowed by it.

use tonic::Code;
use tonic_types::StatusExt;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, conversations_via};

/// Replies started with `keys`, each read past its first delta, so each
/// holds whatever the gateway counts for a call in flight.
async fn streaming_replies(
    client: &mut tp_e2e::ConversationClient,
    conversation: &str,
    keys: &[&str],
) -> anyhow::Result<Vec<tonic::Streaming<pb::SendMessageResponse>>> {
    let mut open = Vec::new();
    for key in keys {
        let mut stream = client
            .send_message(pb::SendMessageRequest {
                conversation_id: conversation.to_owned(),
                content: "Our roadmap keeps slipping.".into(),
                idempotency_key: (*key).to_owned(),
                ..Default::default()
            })
            .await?
            .into_inner();
        stream.message().await?.expect("a first delta");
        open.push(stream);
    }
    Ok(open)
}

#[tokio::test]
async fn a_user_over_their_rate_is_told_when_to_retry() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_a, noisy) = app.tenant_with_member("Noisy", "nina").await?;
    let (_b, quiet) = app.tenant_with_member("Quiet", "quinn").await?;
    // A gateway with the production defaults' shape: a user may burst 20
    // calls and make 10 a second after that.
    let gateway = app
        .spawn_gateway_with(|config| {
            config.rate_user_per_second = 10.0;
            config.rate_user_burst = 20;
            config.rate_tenant_per_second = 50.0;
            config.rate_tenant_burst = 100;
            // Answer rejections at once: a held rejection lets the bucket
            // refill meanwhile, which this count does not model.
            config.rate_hold_ms = 0;
        })
        .await?;
    let mut noisy = conversations_via(gateway, &noisy).await?;
    let mut quiet = conversations_via(gateway, &quiet).await?;

    // 40 calls in quick succession cannot all pass.
    let mut refused = Vec::new();
    for _ in 0..40 {
        if let Err(status) = noisy
            .list_conversations(pb::ListConversationsRequest::default())
            .await
        {
            refused.push(status);
        }
    }
    assert!(refused.len() >= 10, "only {} calls refused", refused.len());
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("per-user"),
            "{}",
            status.message()
        );
        let retry = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .expect("a RetryInfo with a delay");
        assert!(retry > std::time::Duration::ZERO && retry <= std::time::Duration::from_secs(1));
    }

    // Another tenant's user is not affected.
    quiet
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rejection_is_held_before_it_is_answered() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_a, token) = app.tenant_with_member("Loop", "lou").await?;
    let gateway = app
        .spawn_gateway_with(|config| {
            config.rate_user_per_second = 0.5;
            config.rate_user_burst = 1;
            config.rate_hold_ms = 300;
        })
        .await?;
    let mut client = conversations_via(gateway, &token).await?;
    client
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    let started = std::time::Instant::now();
    let refused = client
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("over the rate");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn a_tenant_may_hold_only_so_many_streaming_replies() -> anyhow::Result<()> {
    use tp_e2e::fake_provider::{self, FakeReply, Wire};
    let hold = std::time::Duration::from_secs(2);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Slow("What ".into(), hold, vec!["matters most?".into()]),
            FakeReply::Slow("What ".into(), hold, vec!["matters most?".into()]),
            FakeReply::Text(vec!["What have you tried?".into()], 10, 5),
            FakeReply::Text(vec!["What changed?".into()], 10, 5),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_a, busy) = app.tenant_with_member("Busy", "bea").await?;
    let (_b, other) = app.tenant_with_member("Other", "otto").await?;
    let gateway = app
        .spawn_gateway_with(|config| {
            config.max_streams_per_tenant = 2;
            config.stream_lanes_per_tenant = Some(2);
        })
        .await?;
    let mut busy = conversations_via(gateway, &busy).await?;
    let mut other = conversations_via(gateway, &other).await?;
    let conversation = tp_e2e::new_conversation(&mut busy, "")
        .await?
        .conversation_id;

    // Two replies streaming, each past its first delta: both slots held.
    let open = streaming_replies(&mut busy, &conversation, &["s1", "s2"]).await?;
    let third = busy
        .send_message(pb::SendMessageRequest {
            conversation_id: conversation.clone(),
            content: "And another thing.".into(),
            idempotency_key: "s3".into(),
            ..Default::default()
        })
        .await
        .expect_err("a third concurrent stream");
    assert_eq!(third.code(), Code::ResourceExhausted);
    assert!(third.message().contains("at most 2"), "{}", third.message());
    assert!(third.get_details_retry_info().is_some());

    // Another tenant is not affected.
    let other_conversation = tp_e2e::new_conversation(&mut other, "")
        .await?
        .conversation_id;
    tp_e2e::send(&mut other, &other_conversation, "Hello.", "o1").await?;

    // When the streams end, their slots are free again.
    for mut stream in open {
        while stream.message().await?.is_some() {}
    }
    tp_e2e::send(&mut busy, &conversation, "And another thing.", "s3").await?;
    Ok(())
}

#[tokio::test]
async fn a_tenants_reply_beyond_its_lanes_waits_while_another_tenant_is_served()
-> anyhow::Result<()> {
    use tp_e2e::fake_provider::{self, FakeReply, Wire};
    // Far longer than the other tenant's whole reply takes on any machine
    // (the test never waits it out: it hangs up on the slow reply instead),
    // so it only compares orders of events, never durations.
    let hold = std::time::Duration::from_secs(60);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Slow("What ".into(), hold, vec!["matters most?".into()]),
            FakeReply::Text(vec!["What changed?".into()], 10, 5),
            FakeReply::Text(vec!["What have you tried?".into()], 10, 5),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_a, busy_token) = app.tenant_with_member("Busy", "bea").await?;
    let (_b, other_token) = app.tenant_with_member("Other", "otto").await?;
    let gateway = app
        .spawn_gateway_with(|config| {
            config.max_streams_per_tenant = 3;
            config.stream_lanes_per_tenant = Some(1);
        })
        .await?;
    let mut busy = conversations_via(gateway, &busy_token).await?;
    let mut other = conversations_via(gateway, &other_token).await?;
    let conversation = tp_e2e::new_conversation(&mut busy, "")
        .await?
        .conversation_id;
    let other_conversation = tp_e2e::new_conversation(&mut other, "")
        .await?
        .conversation_id;

    // Busy's first reply is streaming: it holds the tenant's only lane.
    let mut first = busy
        .send_message(pb::SendMessageRequest {
            conversation_id: conversation.clone(),
            content: "Our roadmap keeps slipping.".into(),
            idempotency_key: "b1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    first.message().await?.expect("a first delta");

    // Its second is admitted (under the cap of 3), not refused: it waits.
    // (In a conversation of its own, so nothing per conversation is what
    // holds it back.)
    let mut second_client = conversations_via(gateway, &busy_token).await?;
    let second_conversation = tp_e2e::new_conversation(&mut second_client, "")
        .await?
        .conversation_id;
    let second = tokio::spawn(async move {
        tp_e2e::send(
            &mut second_client,
            &second_conversation,
            "And another thing.",
            "b2",
        )
        .await
    });

    // The other tenant is served from its own lane meanwhile.
    tp_e2e::send(&mut other, &other_conversation, "Hello.", "o1").await?;
    if second.is_finished() {
        let outcome = second.await?.map(|_| ());
        panic!("busy's second reply did not wait for busy's lane: {outcome:?}");
    }
    // Without lanes busy's second request would reach the provider within
    // moments; with them it never does while the first reply streams. (A
    // slow machine can only make this pass without lanes, never fail with.)
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let provider_calls = fake.requests.lock().map(|r| r.len()).unwrap_or(0);
    assert_eq!(
        provider_calls, 2,
        "only busy's first reply and the other tenant's reached the provider"
    );

    // Busy's first reply ends (its client hangs up); the waiting one runs
    // and succeeds.
    drop(first);
    second.await??;
    assert_eq!(fake.requests.lock().map(|r| r.len()).unwrap_or(0), 3);
    Ok(())
}

/// The gateway's cap on calls in flight, from all tenants together: past
/// it, any call (another tenant's too) is refused at once with
/// RESOURCE_EXHAUSTED and a retry delay, and counted; when a streaming
/// reply ends, its place is free again.
#[tokio::test]
async fn past_the_gateways_in_flight_cap_calls_are_shed_at_once() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};
    use tp_e2e::fake_provider::{self, FakeReply, Wire};

    let hold = Duration::from_millis(1500);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Slow("What ".into(), hold, vec!["matters most?".into()]),
            FakeReply::Slow("What ".into(), hold, vec!["matters most?".into()]),
            FakeReply::Text(vec!["What changed?".into()], 10, 5),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_a, busy) = app.tenant_with_member("Busy", "bea").await?;
    let (_b, other) = app.tenant_with_member("Other", "otto").await?;
    let (gateway, http) = app
        .spawn_gateway_with_http(|config| config.max_in_flight = 2)
        .await?;
    let mut busy = conversations_via(gateway, &busy).await?;
    let mut other = conversations_via(gateway, &other).await?;
    let conversation = tp_e2e::new_conversation(&mut busy, "")
        .await?
        .conversation_id;

    let open = streaming_replies(&mut busy, &conversation, &["s1", "s2"]).await?;
    let asked = Instant::now();
    let shed = other
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("a third call while two stream");
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("at capacity"), "{}", shed.message());
    assert_eq!(
        shed.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_millis(100))
    );

    for mut stream in open {
        while stream.message().await?.is_some() {}
    }
    other
        .list_conversations(pb::ListConversationsRequest::default())
        .await?;
    let metrics = tp_e2e::http_get(http, "/metrics").await?;
    assert!(
        metrics
            .body
            .lines()
            .any(|line| line.starts_with("tp_rate_limit_rejections_total{")
                && line.contains(r#"tp_limit_scope="capacity""#)
                && line.ends_with(" 1")),
        "the shed call is counted"
    );
    Ok(())
}
