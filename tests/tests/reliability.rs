//! Nothing acknowledged is lost, nothing is stored twice: retries with the
//! same idempotency key, one after another and racing each other, through
//! the real gateway, conversation service and PostgreSQL.

use std::collections::HashSet;
use std::time::Duration;

use tp_e2e::TestDatabase;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::{TestApp, conversations_via, new_conversation, send};

/// Rows of one conversation, counted as the superuser (no RLS in the way).
async fn stored_turns(app: &TestApp, conversation_id: &str) -> anyhow::Result<(i64, i64)> {
    let pool = TestDatabase::pool(&app.db.admin_url).await?;
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE role = 'user'),
                count(*) FILTER (WHERE role = 'assistant')
           FROM conversation.messages WHERE conversation_id = $1::uuid",
    )
    .bind(conversation_id)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(counts)
}

#[tokio::test]
async fn a_retried_send_stores_one_exchange_and_replays_it() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let conversation = new_conversation(&mut client, "Retries").await?;
    let id = &conversation.conversation_id;
    let content = "My staff engineers keep getting pulled into incidents. We're 60 engineers.";

    let first = send(&mut client, id, content, "retry-1").await?;
    let again = send(&mut client, id, content, "retry-1").await?;
    assert_eq!(again.user().message_id, first.user().message_id);
    assert_eq!(again.assistant().message_id, first.assistant().message_id);
    // The replay streams the stored reply, not a new one.
    assert_eq!(again.deltas.concat(), first.assistant().content);
    assert_eq!(stored_turns(&app, id).await?, (1, 1));

    // A new key is a new turn.
    let next = send(&mut client, id, content, "retry-2").await?;
    assert_ne!(next.user().message_id, first.user().message_id);
    assert_eq!(stored_turns(&app, id).await?, (2, 2));
    Ok(())
}

#[tokio::test]
async fn twenty_racing_retries_get_one_reply_and_store_one_exchange() -> anyhow::Result<()> {
    const RETRIES: usize = 20;
    let app = TestApp::spawn().await?;
    // Room for all twenty streams at once: the cap on a tenant's streams
    // is tested in `limits.rs`; here every retry must get through.
    let gateway = app
        .spawn_gateway_with(|config| config.max_streams_per_tenant = 2 * RETRIES)
        .await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = conversations_via(gateway, &token).await?;
    let conversation = new_conversation(&mut client, "Racing retries").await?;
    let id = conversation.conversation_id.clone();
    let content = "Should I promote my strongest engineer to manager? We're 25 engineers.";

    let calls = (0..RETRIES).map(|_| {
        let token = token.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let mut client = conversations_via(gateway, &token).await?;
            anyhow::Ok(send(&mut client, &id, content, "same-key").await?)
        })
    });
    let mut exchanges = Vec::new();
    for call in futures_util::future::join_all(calls).await {
        exchanges.push(call??);
    }

    let users: HashSet<_> = exchanges
        .iter()
        .map(|e| e.user().message_id.clone())
        .collect();
    let replies: HashSet<_> = exchanges
        .iter()
        .map(|e| e.assistant().message_id.clone())
        .collect();
    assert_eq!(users.len(), 1, "one user turn for every caller");
    assert_eq!(replies.len(), 1, "one reply for every caller");
    let stored = &exchanges[0].assistant().content;
    for exchange in &exchanges {
        assert_eq!(&exchange.assistant().content, stored);
        assert_eq!(
            &exchange.deltas.concat(),
            stored,
            "every caller streamed the reply that was stored"
        );
    }
    assert_eq!(stored_turns(&app, &id).await?, (1, 1));
    Ok(())
}

/// Twenty racing retries through a model that would answer each request
/// differently: only the original asks the model, the others wait for its
/// reply, and every caller streams that one reply.
#[tokio::test]
async fn racing_retries_wait_for_the_originals_model_reply() -> anyhow::Result<()> {
    const RETRIES: usize = 20;
    let original = [
        "Here's what I understand so far: ",
        "you want one answer. What matters most to you?",
    ];
    let mut script = vec![FakeReply::Slow(
        original[0].to_owned(),
        Duration::from_millis(400),
        vec![original[1].to_owned()],
    )];
    // Had a retry asked too, it would have got one of these.
    script.extend(
        (1..RETRIES)
            .map(|i| FakeReply::Text(vec![format!("A different reply, number {i}?")], 10, 5)),
    );
    let fake = fake_provider::start(Wire::OpenAi, script).await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let gateway = app
        .spawn_gateway_with(|config| config.max_streams_per_tenant = 2 * RETRIES)
        .await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = conversations_via(gateway, &token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let calls = (0..RETRIES).map(|i| {
        let (token, id) = (token.clone(), id.clone());
        tokio::spawn(async move {
            // The original first; the retries while its reply is streaming.
            tokio::time::sleep(Duration::from_millis(if i == 0 { 0 } else { 100 })).await;
            let mut client = conversations_via(gateway, &token).await?;
            anyhow::Ok(
                send(
                    &mut client,
                    &id,
                    "Should I split the platform team?",
                    "one-key",
                )
                .await?,
            )
        })
    });
    let mut exchanges = Vec::new();
    for call in futures_util::future::join_all(calls).await {
        exchanges.push(call??);
    }
    assert_eq!(
        fake.requests.lock().expect("lock").len(),
        1,
        "only the original asked the model"
    );
    for exchange in &exchanges {
        assert_eq!(exchange.assistant().content, original.concat());
        assert_eq!(exchange.deltas.concat(), original.concat());
    }
    assert_eq!(stored_turns(&app, &id).await?, (1, 1));
    Ok(())
}

/// When the model fails the original, its retry does not wait for a reply
/// that will never come: the lease is released and the retry writes it.
#[tokio::test]
async fn a_retry_after_a_failed_reply_writes_it_at_once() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::CutAfter(vec!["Here's what I under".into()]),
            FakeReply::Text(vec!["What would a good outcome look like?".into()], 10, 5),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let failed = send(&mut client, &id, "Our on-call is burning people out.", "k").await;
    let status = failed.expect_err("the cut reply fails the call");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        stored_turns(&app, &id).await?,
        (1, 0),
        "the user's turn is kept"
    );

    let retried = tokio::time::timeout(
        Duration::from_secs(5),
        send(&mut client, &id, "Our on-call is burning people out.", "k"),
    )
    .await
    .expect("the retry does not wait out the lease")?;
    assert_eq!(
        retried.assistant().content,
        "What would a good outcome look like?"
    );
    assert_eq!(stored_turns(&app, &id).await?, (1, 1));
    Ok(())
}

/// A reply still streaming when the caller's deadline passes ends with
/// `DeadlineExceeded` at the deadline, at every hop: the model request is
/// cancelled and no partial reply is stored.
#[tokio::test]
async fn a_stream_ends_at_the_callers_deadline_and_stops_the_work_behind_it() -> anyhow::Result<()>
{
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Slow(
            "Let me ".into(),
            Duration::from_secs(10),
            vec!["think.".into()],
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let deadline = Duration::from_millis(800);
    let mut request = tonic::Request::new(tp_e2e::tp_proto::v1::SendMessageRequest {
        conversation_id: id,
        content: "Velocity is too slow.".into(),
        idempotency_key: String::new(),
        ..Default::default()
    });
    request.set_timeout(deadline);
    let started = std::time::Instant::now();
    let mut stream = client.send_message(request).await?.into_inner();
    stream.message().await?.expect("a first delta");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        }
    })
    .await
    .expect("the stream does not outlive its deadline by seconds");
    let took = started.elapsed();
    let status = ended.expect("the stream ends with an error, not a reply");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(took >= deadline, "not before the deadline: {took:?}");
    assert!(
        took < deadline + Duration::from_millis(700),
        "at the deadline: {took:?}"
    );

    // The work behind it stops: the model request is cancelled, nothing
    // partial is stored.
    assert!(
        fake.hangs_up_within(Duration::from_secs(2)).await,
        "the model request is cancelled"
    );
    assert_eq!(app.count_rows("conversation.messages").await?, 1);
    Ok(())
}

/// Transactions open in the test's database, other than this query's own.
async fn open_transactions(db: &TestDatabase) -> anyhow::Result<i64> {
    let pool = TestDatabase::pool(&db.admin_url).await?;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()
            AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')",
    )
    .bind(&db.name)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(open)
}

/// A client that cancels a streaming reply stops the work behind it: the
/// model request is cancelled, and no task of the call and no database
/// transaction is left running. The services run in this test's runtime,
/// so its count of live tasks counts theirs.
#[tokio::test]
async fn a_cancelled_stream_leaves_no_task_or_transaction_behind() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Text(vec!["What outcome do you want?".into()], 10, 5),
            FakeReply::Slow(
                "Let me ".into(),
                Duration::from_secs(10),
                vec!["think.".into()],
            ),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    // A whole exchange first, so every connection the call path keeps
    // (gateway → conversation → knowledge, the pools) is open already.
    send(&mut client, &id, "Velocity is too slow.", "warm").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let baseline = tasks();

    let mut stream = client
        .send_message(tp_e2e::tp_proto::v1::SendMessageRequest {
            conversation_id: id,
            content: "Still too slow.".into(),
            idempotency_key: "cancelled".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    stream.message().await?.expect("a first delta");
    let during = tasks();
    drop(stream);

    assert!(
        fake.hangs_up_within(Duration::from_secs(2)).await,
        "the model request is cancelled"
    );
    let settled = tokio::time::Instant::now() + Duration::from_secs(3);
    let (mut alive, mut open) = (tasks(), open_transactions(&app.db).await?);
    while (alive > baseline || open > 0) && tokio::time::Instant::now() < settled {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (alive, open) = (tasks(), open_transactions(&app.db).await?);
    }
    assert!(
        during > baseline,
        "the call ran tasks of its own while streaming ({during} vs {baseline}), else nothing was tested"
    );
    assert!(
        alive <= baseline,
        "no task of the cancelled call is left: {alive} alive, {baseline} before it"
    );
    assert_eq!(open, 0, "no transaction is left open");
    // The user's turn stays (acknowledged when the stream began); no reply.
    assert_eq!(app.count_rows("conversation.messages").await?, 3);
    Ok(())
}
