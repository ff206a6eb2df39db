//! Faults injected into real service processes under load: a service
//! killed (SIGKILL, as in a crash or an out-of-memory kill) and started
//! again, and services told to stop (SIGTERM) with a reply streaming.
//! Each test runs its own three processes of `tp-e2e-service` against a
//! fresh database, and counts what was acknowledged against what is stored.

use std::time::{Duration, Instant};

use tonic::Code;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::load::{Senders, assert_exactly_acknowledged_stored};
use tp_e2e::processes::ProcessStack;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{new_conversation, send};

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

const WORKERS: usize = 4;
/// Each call's `grpc-timeout`.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn replies_keep_coming_ungrounded_while_knowledge_is_dead_and_grounded_after()
-> anyhow::Result<()> {
    let mut app = ProcessStack::start(SERVICE_BINARY, Vec::new()).await?;
    let senders = Senders::create(&app, WORKERS, 2).await?;
    let load = senders.run(&app, Duration::from_secs(9), CALL_DEADLINE);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    app.stack.kill("knowledge").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let restarting = Instant::now();
    app.stack.restart("knowledge").await?;
    let restarted = Instant::now();
    let outcomes = load.finish().await?;

    assert!(
        outcomes.failed.is_empty(),
        "no call fails for want of knowledge: {:?} ({:?})",
        outcomes.codes(),
        outcomes.failed.first().map(|f| &f.message)
    );
    assert!(
        outcomes.slowest_call < CALL_DEADLINE,
        "no call waited on the dead service: slowest {:?}",
        outcomes.slowest_call
    );
    let replies = assert_exactly_acknowledged_stored(&app.db, &outcomes).await?;
    let grounded = |exchange: &tp_e2e::load::Acknowledged| {
        replies
            .get(&exchange.assistant_message_id)
            .and_then(|reply| reply.grounded)
    };
    let before: Vec<_> = outcomes
        .acknowledged
        .values()
        .filter(|e| e.finished < killed)
        .collect();
    let while_dead: Vec<_> = outcomes
        .acknowledged
        .values()
        .filter(|e| e.started > killed && e.finished < restarting)
        .collect();
    let after: Vec<_> = outcomes
        .acknowledged
        .values()
        .filter(|e| e.started > restarted)
        .collect();
    assert!(
        !before.is_empty() && !while_dead.is_empty() && !after.is_empty(),
        "replies in each phase: {} before, {} while dead, {} after",
        before.len(),
        while_dead.len(),
        after.len()
    );
    assert!(
        before.iter().all(|e| grounded(e) == Some(true)),
        "replies before the kill are grounded"
    );
    assert!(
        while_dead.iter().all(|e| grounded(e) == Some(false)),
        "every reply while knowledge is dead is stored marked ungrounded"
    );
    // The conversation service's channel reconnects by itself.
    let first_grounded_after = after
        .iter()
        .filter(|e| grounded(e) == Some(true))
        .map(|e| e.finished.duration_since(restarted))
        .min();
    assert!(
        first_grounded_after.is_some_and(|t| t < Duration::from_secs(3)),
        "grounding resumes within 3 s of knowledge's return: {first_grounded_after:?}"
    );
    eprintln!(
        "{} replies: {} before the kill, {} ungrounded while knowledge was dead, grounded again {:?} after it was back (restart took {:?})",
        outcomes.acknowledged.len(),
        before.len(),
        while_dead.len(),
        first_grounded_after,
        restarted.duration_since(restarting),
    );
    Ok(())
}

#[tokio::test]
async fn a_dead_conversation_service_fails_calls_fast_and_the_gateway_recovers()
-> anyhow::Result<()> {
    let mut app = ProcessStack::start(SERVICE_BINARY, Vec::new()).await?;
    let senders = Senders::create(&app, WORKERS, 2).await?;
    let load = senders.run(&app, Duration::from_secs(9), CALL_DEADLINE);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    app.stack.kill("conversation").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.stack.restart("conversation").await?;
    let restarted = Instant::now();
    let mut outcomes = load.finish().await?;

    let codes = outcomes.codes();
    assert!(
        !outcomes.failed.is_empty(),
        "calls failed while conversation was dead (else nothing was tested)"
    );
    assert!(
        outcomes.failed.iter().all(|f| f.code == Code::Unavailable),
        "every failure is Unavailable: {codes:?}, e.g. {:?}",
        outcomes
            .failed
            .iter()
            .find(|f| f.code != Code::Unavailable)
            .map(|f| &f.message)
    );
    let slowest_failure = outcomes.slowest_failure();
    assert!(
        slowest_failure < Duration::from_secs(1),
        "calls fail fast while conversation is dead: slowest failure {slowest_failure:?}"
    );
    assert!(
        outcomes.slowest_call < CALL_DEADLINE + Duration::from_millis(500),
        "no call outlives its deadline: slowest {:?}",
        outcomes.slowest_call
    );
    let first_success_after = outcomes
        .acknowledged
        .values()
        .filter(|e| e.started >= restarted)
        .map(|e| e.finished.duration_since(restarted))
        .min();
    assert!(
        first_success_after.is_some_and(|t| t < Duration::from_secs(2)),
        "the gateway serves again within 2 s of conversation's return: {first_success_after:?}"
    );
    let failures_after = outcomes
        .failed
        .iter()
        .filter(|f| f.started >= restarted + Duration::from_secs(1))
        .count();
    assert_eq!(failures_after, 0, "no call fails a second after the return");

    // A turn cut off by the kill may be stored without its reply; its
    // retry waits at most one reply lease (the dead process stopped
    // renewing it), then writes the reply.
    let retried = outcomes.failed.len();
    let recovered_in = senders
        .retry_failed(
            &app,
            &mut outcomes,
            tp_conversation::REPLY_LEASE + Duration::from_secs(10),
        )
        .await?;
    assert_exactly_acknowledged_stored(&app.db, &outcomes).await?;
    eprintln!(
        "{} exchanges; {retried} calls failed after the kill at {:?} ({codes:?}), slowest failure {slowest_failure:?}; first success {first_success_after:?} after the restart; the failed turns completed on retry within {recovered_in:?}",
        outcomes.acknowledged.len(),
        killed.elapsed(),
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_a_streaming_reply_refuses_new_calls_and_exits_zero() -> anyhow::Result<()> {
    let pause = Duration::from_secs(2);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Slow(
            "Before I suggest anything, ".into(),
            pause,
            vec!["how many engineers report to you?".into()],
        )],
    )
    .await?;
    let model = |key: &str, value: &str| ("conversation", key.to_owned(), value.to_owned());
    let mut app = ProcessStack::start(
        SERVICE_BINARY,
        vec![
            model("TP_LLM_PROVIDER", "openai"),
            model("TP_LLM_BASE_URL", &fake.base_url),
            model("TP_LLM_API_KEY", "sk-test-key"),
            model("TP_LLM_MODEL", "test-model"),
            ("gateway", "TP_SHUTDOWN_GRACE_SECS".into(), "10".into()),
            model("TP_SHUTDOWN_GRACE_SECS", "10"),
        ],
    )
    .await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "member-1").await?;
    let mut client = app.conversations(&token).await?;
    let conversation = new_conversation(&mut client, "drain").await?;
    let mut stream = client
        .send_message(pb::SendMessageRequest {
            conversation_id: conversation.conversation_id.clone(),
            content: "How should I split my platform team?".into(),
            idempotency_key: "drain-1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // The reply has begun: its first words are on the wire.
    let first = stream.message().await?;
    assert!(
        matches!(
            first.and_then(|e| e.event),
            Some(pb::send_message_response::Event::TextDelta(_))
        ),
        "the first event is the reply's first words"
    );
    let rest = tokio::spawn(async move {
        let mut completed = None;
        while let Some(event) = stream.message().await? {
            if let Some(pb::send_message_response::Event::Completed(done)) = event.event {
                completed = Some(done);
            }
        }
        Ok::<_, tonic::Status>(completed)
    });

    // A rolling deploy stops the public edge and the service behind it.
    let signalled = Instant::now();
    app.stack.signal_terminate("gateway")?;
    app.stack.signal_terminate("conversation")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New calls are refused while the reply drains.
    let refused = tp_e2e::conversations_via(app.addr, &token)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let refused_on_open_connection = client
        .create_conversation(pb::CreateConversationRequest {
            title: "after the signal".into(),
        })
        .await;
    assert!(
        refused.is_err(),
        "a new connection to the stopping gateway is refused"
    );
    assert!(
        refused_on_open_connection.is_err(),
        "a new call on the open connection is refused, not served"
    );
    let still_streaming = !rest.is_finished();

    let completed = rest
        .await??
        .ok_or_else(|| anyhow::anyhow!("the drained stream ended without its completed event"))?;
    let assistant = completed
        .assistant_message
        .ok_or_else(|| anyhow::anyhow!("completed carries the reply"))?;
    assert!(
        assistant
            .content
            .contains("how many engineers report to you?"),
        "the whole reply arrived: {:?}",
        assistant.content
    );
    for service in ["gateway", "conversation"] {
        let status = app
            .stack
            .wait_exit(service, Duration::from_secs(12))
            .await?;
        assert!(
            status.success(),
            "{service} exits 0 after draining: {status}"
        );
    }
    let stopped_in = signalled.elapsed();
    assert!(
        still_streaming,
        "the reply was still streaming when the new calls were refused"
    );
    assert_eq!(
        app.db.count_rows("conversation.messages").await?,
        2,
        "the drained exchange is stored, both turns"
    );
    eprintln!(
        "SIGTERM mid-reply: new calls refused ({refused:?}; {:?}), the reply completed, both services exited 0 within {stopped_in:?}",
        refused_on_open_connection.err().map(|s| s.code())
    );
    Ok(())
}

/// The fault tests' own processes serve a plain exchange, so a failure
/// above is the fault's and not the set-up's.
#[tokio::test]
async fn the_process_stack_serves_an_exchange() -> anyhow::Result<()> {
    let app = ProcessStack::start(SERVICE_BINARY, Vec::new()).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "member-1").await?;
    let mut client = app.conversations(&token).await?;
    let conversation = new_conversation(&mut client, "plain").await?;
    let exchange = send(
        &mut client,
        &conversation.conversation_id,
        "We are 40 engineers and I just became director. Where do I start?",
        "plain-1",
    )
    .await?;
    assert!(!exchange.assistant().content.is_empty());
    assert_eq!(app.db.count_rows("conversation.messages").await?, 2);
    Ok(())
}

/// The model provider goes silent, then answers 5xx: each caller gets a
/// clear `Unavailable` saying the message is saved, soon; the circuit
/// breaker then stops calling the provider at all, failing at once; when
/// it is back, a probe closes the breaker and the retried turn is answered.
#[tokio::test]
async fn a_provider_that_is_down_gets_clear_statuses_then_an_open_breaker_then_a_probe()
-> anyhow::Result<()> {
    let first_byte_timeout = Duration::from_millis(500);
    let open_for = Duration::from_millis(1500);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Silent(Duration::from_secs(3)),
            FakeReply::Status(503),
            FakeReply::Status(503),
            FakeReply::Status(503),
            FakeReply::Text(
                vec!["What outcome do you want to see change?".into()],
                10,
                7,
            ),
        ],
    )
    .await?;
    let conversation = |key: &str, value: String| ("conversation", key.to_owned(), value);
    let app = ProcessStack::start(
        SERVICE_BINARY,
        vec![
            conversation("TP_LLM_PROVIDER", "openai".into()),
            conversation("TP_LLM_BASE_URL", fake.base_url.clone()),
            conversation("TP_LLM_API_KEY", "sk-test-key".into()),
            conversation("TP_LLM_MODEL", "test-model".into()),
            conversation(
                "TP_LLM_FIRST_BYTE_TIMEOUT_MS",
                first_byte_timeout.as_millis().to_string(),
            ),
            conversation("TP_LLM_BREAKER_FAILURES", "2".into()),
            conversation("TP_LLM_BREAKER_OPEN_MS", open_for.as_millis().to_string()),
        ],
    )
    .await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "member-1").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "provider down")
        .await?
        .conversation_id;
    let requests = || fake.requests.lock().map(|r| r.len()).unwrap_or(usize::MAX);
    let mut call = async |key: &str| {
        let started = Instant::now();
        let result = send(&mut client, &id, "Our velocity is too slow.", key).await;
        (result, started.elapsed())
    };

    // Silent: the first-byte timeout ends the wait, not the caller's patience.
    let (silent, took) = call("k1").await;
    let silent = silent
        .err()
        .ok_or_else(|| anyhow::anyhow!("a silent provider fails the call"))?;
    assert_eq!(silent.code(), Code::Unavailable, "{silent:?}");
    assert!(
        silent.message().contains("your message is saved"),
        "{}",
        silent.message()
    );
    assert!(
        took < first_byte_timeout + Duration::from_millis(700),
        "took {took:?}"
    );
    // A 5xx storm: three attempts, then a clear status. The breaker opens.
    let (storm, _) = call("k2").await;
    let storm = storm
        .err()
        .ok_or_else(|| anyhow::anyhow!("a 5xx storm fails the call"))?;
    assert_eq!(storm.code(), Code::Unavailable, "{storm:?}");
    assert!(storm.message().contains("HTTP 503"), "{}", storm.message());
    assert_eq!(
        requests(),
        4,
        "one silent request, three attempts at the storm"
    );

    // Open: calls fail at once and the provider hears nothing.
    for key in ["k3", "k4", "k5"] {
        let (refused, took) = call(key).await;
        let refused = refused
            .err()
            .ok_or_else(|| anyhow::anyhow!("the breaker is open"))?;
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(
            refused.message().contains("paused")
                && refused.message().contains("your message is saved"),
            "{}",
            refused.message()
        );
        assert!(
            took < Duration::from_millis(300),
            "an open breaker answers at once: {took:?}"
        );
    }
    assert_eq!(
        requests(),
        4,
        "no request reaches the provider while the breaker is open"
    );

    // Back: after open_for, the retry of the first turn is the probe.
    tokio::time::sleep(open_for).await;
    let (answered, _) = call("k1").await;
    let answered = answered.map_err(|s| anyhow::anyhow!("the probe is answered: {s:?}"))?;
    assert_eq!(
        answered.assistant().content,
        "What outcome do you want to see change?"
    );
    assert_eq!(requests(), 5);

    // Every turn the API acknowledged is stored (five user turns), and the
    // one reply; no half reply anywhere.
    let pool = tp_e2e::TestDatabase::pool(&app.db.admin_url).await?;
    let roles: Vec<(String, i64)> = sqlx::query_as(
        "SELECT role, count(*) FROM conversation.messages GROUP BY role ORDER BY role",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    assert_eq!(
        roles,
        vec![("assistant".to_owned(), 1), ("user".to_owned(), 5)]
    );
    Ok(())
}
