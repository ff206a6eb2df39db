//! Replies written by a model: the conversation service streams the
//! provider's deltas, stores the reply with its token usage, checks it
//! against the persona's rules, and keeps the user's turn when the provider
//! fails mid-reply.

use tonic::Code;
use tp_e2e::fake_provider::{self, FakeReply, Wire};
use tp_e2e::{TestApp, TestDatabase, http_get, new_conversation, send};

/// The conversation service's exposition lines of `series` whose labels
/// start with `labels` (written as the exposition writes them).
async fn metric_lines(app: &TestApp, series: &str, labels: &str) -> anyhow::Result<Vec<String>> {
    let body = http_get(app.conversation_http_addr, "/metrics").await?.body;
    let prefix = format!("{series}{{{labels}");
    Ok(body
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect())
}

/// The generation metrics' labels for the fake OpenAI-compatible provider.
const OPENAI: &str = r#"gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_request_model="test-model""#;

#[tokio::test]
async fn a_model_reply_is_streamed_stored_and_metered() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Text(
            vec![
                "Here's what I understand so far: you want more engineers. ".into(),
                "What problem would they solve that the team can't today?".into(),
            ],
            812,
            23,
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let exchange = send(&mut client, &id, "We need to hire more engineers.", "k1").await?;
    assert_eq!(
        exchange.deltas.len(),
        2,
        "the provider's deltas, as they came"
    );
    assert_eq!(exchange.deltas.concat(), exchange.assistant().content);

    // The prompt: the persona as system prompt, the user's turn last.
    let requests = fake.requests.lock().expect("lock").clone();
    let messages = requests[0]["messages"].as_array().expect("messages");
    let system = messages[0]["content"].as_str().expect("system prompt");
    assert!(system.starts_with("# Engineering Leader Thought Partner"));
    assert!(
        system.contains("## Grounding for this turn"),
        "knowledge grounding is in the prompt"
    );
    assert_eq!(
        messages.last().expect("a message")["content"],
        "We need to hire more engineers."
    );

    let admin = TestDatabase::pool(&app.db.admin_url).await?;
    let (responder, input, output, violations): (String, Option<i32>, Option<i32>, Vec<String>) =
        sqlx::query_as(
            "SELECT responder, input_tokens, output_tokens, policy_violations
           FROM conversation.messages WHERE message_id = $1::uuid",
        )
        .bind(&exchange.assistant().message_id)
        .fetch_one(&admin)
        .await?;
    assert_eq!(
        (responder.as_str(), input, output),
        ("openai", Some(812), Some(23))
    );
    assert!(violations.is_empty(), "{violations:?}");
    let (tenant_input, tenant_output): (i64, i64) = sqlx::query_as(
        "SELECT sum(input_tokens)::bigint, sum(output_tokens)::bigint
           FROM conversation.tenant_token_usage WHERE tenant_id = $1",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&admin)
    .await?;
    assert_eq!((tenant_input, tenant_output), (812, 23));

    // The generation's metrics: the provider's reported tokens, its
    // duration without an error, and the time to its first chunk.
    for (token_type, tokens) in [("input", 812.0), ("output", 23.0)] {
        let sums = metric_lines(
            &app,
            "gen_ai_client_token_usage_sum",
            &format!(r#"{OPENAI},gen_ai_token_type="{token_type}"}}"#),
        )
        .await?;
        let value: f64 = sums
            .first()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .parse()?;
        assert_eq!(value, tokens, "{token_type}: {sums:?}");
    }
    let durations = metric_lines(
        &app,
        "gen_ai_client_operation_duration_seconds_count",
        &format!("{OPENAI}}}"),
    )
    .await?;
    assert_eq!(durations.len(), 1, "{durations:?}");
    assert!(
        !metric_lines(
            &app,
            "gen_ai_client_operation_time_to_first_chunk_seconds_count",
            OPENAI
        )
        .await?
        .is_empty()
    );
    Ok(())
}

/// A model sees the conversation so far, both sides in order (the offline
/// coach reads only the user's turns; a model's prompt must not lose the
/// replies it is continuing).
#[tokio::test]
async fn a_models_prompt_holds_both_sides_of_the_earlier_turns() -> anyhow::Result<()> {
    let first_reply = "What would more engineers change for your customers?";
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Text(vec![first_reply.into()], 100, 10),
            FakeReply::Text(vec!["Which team feels it first?".into()], 120, 6),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    send(&mut client, &id, "We need to hire more engineers.", "k1").await?;
    send(&mut client, &id, "Releases slip every quarter.", "k2").await?;

    let requests = fake.requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 2, "one request per turn");
    let turns: Vec<(String, String)> = requests[1]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .skip(1) // the system prompt
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("user", "We need to hire more engineers."),
        ("assistant", first_reply),
        ("user", "Releases slip every quarter."),
    ]
    .map(|(role, content)| (role.to_owned(), content.to_owned()));
    assert_eq!(turns, expected);
    Ok(())
}

#[tokio::test]
async fn a_provider_failing_mid_reply_keeps_the_user_turn_for_a_retry() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::CutAfter(vec!["Half an ".into()]),
            FakeReply::Text(
                vec!["What outcome do you want to see change?".into()],
                100,
                9,
            ),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let failed = send(&mut client, &id, "Velocity is too slow.", "same")
        .await
        .expect_err("cut");
    assert_eq!(failed.code(), Code::Unavailable);
    assert!(
        failed
            .message()
            .contains("retry with the same idempotency_key"),
        "{}",
        failed.message()
    );
    // The acknowledged turn is stored; no partial reply is.
    assert_eq!(app.count_rows("conversation.messages").await?, 1);
    // The failed generation is counted by its kind of failure.
    assert_eq!(
        metric_lines(
            &app,
            "gen_ai_client_operation_duration_seconds_count",
            &format!(r#"{OPENAI},error_type="stream_cut"}}"#)
        )
        .await?
        .len(),
        1
    );

    let retried = send(&mut client, &id, "Velocity is too slow.", "same").await?;
    assert_eq!(
        retried.assistant().content,
        "What outcome do you want to see change?"
    );
    assert_eq!(app.count_rows("conversation.messages").await?, 2);
    Ok(())
}

/// The response's headers leave with the reply's first event (one write
/// on each hop, not two), so a reply that fails before its first word
/// fails the call itself, with its status, and a slow first token holds
/// the headers back until it comes.
#[tokio::test]
async fn the_call_answers_with_the_replys_first_event_or_its_failure() -> anyhow::Result<()> {
    let late = std::time::Duration::from_millis(400);
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![
            FakeReply::Status(503),
            FakeReply::Status(503),
            FakeReply::Status(503),
            FakeReply::Late(late, vec!["Which team feels it first?".into()]),
        ],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let request = |key: &str| tp_e2e::tp_proto::v1::SendMessageRequest {
        conversation_id: id.clone(),
        content: "Velocity is too slow.".into(),
        idempotency_key: key.into(),
        ..Default::default()
    };

    // The provider is down: the call fails, not a stream it returned.
    let failed = client
        .send_message(request("same"))
        .await
        .err()
        .ok_or_else(|| {
            anyhow::anyhow!("a reply that failed before its first event fails the call")
        })?;
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("your message is saved"),
        "{}",
        failed.message()
    );
    assert_eq!(app.count_rows("conversation.messages").await?, 1);

    // A slow first token: the call answers when it comes, with it.
    let started = std::time::Instant::now();
    let mut stream = client.send_message(request("same")).await?.into_inner();
    let answered = started.elapsed();
    assert!(
        answered >= late,
        "the headers waited for the first event: {answered:?}"
    );
    let first = stream.message().await?.expect("a first delta");
    assert!(matches!(
        first.event,
        Some(tp_e2e::tp_proto::v1::send_message_response::Event::TextDelta(_))
    ));
    while stream.message().await?.is_some() {}
    assert_eq!(app.count_rows("conversation.messages").await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_misconfigured_provider_stops_start_up_with_a_clear_message() {
    let config = tp_conversation::ConversationConfig {
        listen_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        knowledge_url: "http://127.0.0.1:1".into(),
        database_url: "postgres://nobody@127.0.0.1:1/none".into(),
        database_max_connections: 1,
        llm_provider: tp_conversation::LlmProvider::Anthropic,
        llm_base_url: None,
        llm_api_key: Some("sk-present".into()),
        llm_model: None,
        llm_first_byte_timeout_ms: 1_000,
        llm_max_tokens: 100,
        llm_context_tokens: 1_000,
        llm_breaker_failures: 5,
        llm_breaker_open_ms: 30_000,
        page_token_key: None,
        coach_word_cap: 180,
    };
    let error = tp_conversation::Application::build(&config)
        .await
        .err()
        .expect("refused");
    assert!(
        error
            .to_string()
            .contains("TP_LLM_PROVIDER=anthropic needs TP_LLM_MODEL"),
        "{error}"
    );
    assert!(!format!("{error:?}").contains("sk-present"));
}

#[tokio::test]
async fn a_conversation_deleted_mid_stream_ends_the_stream_with_not_found() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Slow(
            "Before I suggest anything, ".into(),
            std::time::Duration::from_millis(500),
            vec!["how many engineers do you have?".into()],
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let mut other = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let mut stream = client
        .send_message(tp_e2e::tp_proto::v1::SendMessageRequest {
            conversation_id: id.clone(),
            content: "We need more process.".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a first delta");
    assert!(matches!(
        first.event,
        Some(tp_e2e::tp_proto::v1::send_message_response::Event::TextDelta(_))
    ));
    other
        .delete_conversation(tp_e2e::tp_proto::v1::DeleteConversationRequest {
            conversation_id: id,
        })
        .await?;
    let mut ended = None;
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    let status = ended.expect("the stream ends with an error, not a completed event");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count_rows("conversation.messages").await?, 0);
    Ok(())
}

#[tokio::test]
async fn anthropic_replies_stream_end_to_end_too() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::Anthropic,
        vec![FakeReply::Text(
            vec![
                "Which failure is ".into(),
                "the new process meant to prevent?".into(),
            ],
            640,
            12,
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::Anthropic, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let exchange = send(&mut client, &id, "We need more process.", "").await?;
    assert_eq!(
        exchange.assistant().content,
        "Which failure is the new process meant to prevent?"
    );
    let requests = fake.requests.lock().expect("lock").clone();
    assert!(
        requests[0]["system"]
            .as_str()
            .expect("system")
            .starts_with("# Engineering Leader Thought Partner")
    );
    let admin = TestDatabase::pool(&app.db.admin_url).await?;
    let (responder, output): (String, Option<i32>) = sqlx::query_as(
        "SELECT responder, output_tokens FROM conversation.messages WHERE message_id = $1::uuid",
    )
    .bind(&exchange.assistant().message_id)
    .fetch_one(&admin)
    .await?;
    assert_eq!((responder.as_str(), output), ("anthropic", Some(12)));
    Ok(())
}

#[tokio::test]
async fn a_client_hanging_up_cancels_the_model_request_and_stores_no_reply() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Slow(
            "Let me ".into(),
            std::time::Duration::from_secs(5),
            vec!["think.".into()],
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let mut stream = client
        .send_message(tp_e2e::tp_proto::v1::SendMessageRequest {
            conversation_id: id,
            content: "Velocity is too slow.".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    stream.message().await?.expect("a first delta");
    drop(stream);
    drop(client);
    assert!(
        fake.hangs_up_within(std::time::Duration::from_secs(4))
            .await,
        "the provider should see its request cancelled"
    );
    // The acknowledged user turn stays; no partial reply is stored.
    assert_eq!(app.count_rows("conversation.messages").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_model_is_grounded_in_the_tenants_own_documents() -> anyhow::Result<()> {
    let fake = fake_provider::start(
        Wire::OpenAi,
        vec![FakeReply::Text(
            vec!["What does Kestrel cost you today?".into()],
            10,
            5,
        )],
    )
    .await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    app.knowledge(&app.token("alice-admin", Some(tenant), tp_context::Role::Admin))
        .await?
        .create_document(tp_e2e::tp_proto::v1::CreateDocumentRequest {
            title: "Platform strategy".into(),
            content: b"# Deployments\n\nEvery service ships through the Kestrel pipeline, owned by the platform team.".to_vec(),
            content_type: tp_e2e::tp_proto::v1::ContentType::Markdown.into(),
        })
        .await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    send(
        &mut client,
        &id,
        "Should the Kestrel pipeline stay with one team?",
        "",
    )
    .await?;

    let requests = fake.requests.lock().expect("lock").clone();
    let system = requests[0]["messages"][0]["content"]
        .as_str()
        .expect("system prompt");
    assert!(
        system.contains("## From the organisation's own documents"),
        "{system}"
    );
    assert!(
        system.contains("[Platform strategy — Deployments]"),
        "{system}"
    );
    assert!(system.contains("Kestrel"));
    Ok(())
}
