//! The walking skeleton's promise: a client creates a conversation, sends a
//! message, receives a streamed reply and reads the transcript back, over
//! the public API with a bearer JWT, through all three services.

use tp_e2e::TestDatabase;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, new_conversation, send};

#[tokio::test]
async fn create_send_stream_and_read_back() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;

    let conversation = new_conversation(&mut client, "Hiring plan").await?;
    assert_eq!(conversation.title, "Hiring plan");

    let content = "We need to hire more engineers. We're 40 engineers at series B.";
    let exchange = send(&mut client, &conversation.conversation_id, content, "k1").await?;

    // The deltas are the reply, and the reply is the persisted message.
    assert!(
        exchange.deltas.len() > 1,
        "the reply should stream in pieces"
    );
    let assistant = exchange.assistant();
    assert_eq!(exchange.deltas.concat(), assistant.content);
    assert_eq!(assistant.role, pb::MessageRole::Assistant as i32);
    assert_eq!(exchange.user().content, content);

    // The persona: challenges the premise, grounds in a framework the
    // knowledge service found, asks at most two questions, does not echo.
    assert!(
        assistant
            .content
            .contains("What problem would the new engineers solve")
    );
    assert!(
        assistant.content.contains("Systems Dynamics"),
        "grounded via knowledge: {}",
        assistant.content
    );
    assert!(assistant.content.matches('?').count() <= 2);
    assert!(!assistant.content.contains(content));

    // Stored with what it drew on and how it measured up to the persona.
    let row = stored_reply(&app, &assistant.message_id).await?;
    assert_eq!(row.responder, "offline");
    assert!(
        row.cited_frameworks
            .contains(&"systems-dynamics".to_owned()),
        "{:?}",
        row.cited_frameworks
    );
    assert!(
        row.policy_violations.is_empty(),
        "{:?}",
        row.policy_violations
    );
    assert_eq!(row.grounded, Some(true));

    let transcript = client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: conversation.conversation_id.clone(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let ids: Vec<&str> = transcript
        .messages
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            exchange.user().message_id.as_str(),
            assistant.message_id.as_str()
        ]
    );
    assert_eq!(transcript.messages[1].content, assistant.content);
    assert!(transcript.next_page_token.is_empty());

    let fetched = client
        .get_conversation(pb::GetConversationRequest {
            conversation_id: conversation.conversation_id.clone(),
        })
        .await?
        .into_inner()
        .conversation
        .expect("a conversation");
    let seconds = |c: &pb::Conversation| c.update_time.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(
        seconds(&fetched) > seconds(&conversation),
        "a turn moves update_time forward"
    );
    Ok(())
}

#[tokio::test]
async fn retrying_with_the_same_key_replays_instead_of_duplicating() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let first = send(&mut client, &id, "Velocity is too slow.", "same-key").await?;
    let retry = send(&mut client, &id, "Velocity is too slow.", "same-key").await?;
    assert_eq!(retry.user().message_id, first.user().message_id);
    assert_eq!(retry.assistant().message_id, first.assistant().message_id);
    assert_eq!(retry.deltas.concat(), first.assistant().content);
    assert_eq!(app.count_rows("conversation.messages").await?, 2);

    // A new key is a new turn, and the coach now sees the earlier one.
    let second = send(
        &mut client,
        &id,
        "We're 25 engineers and I'm the CTO.",
        "other-key",
    )
    .await?;
    assert_ne!(second.user().message_id, first.user().message_id);
    assert_eq!(app.count_rows("conversation.messages").await?, 4);
    Ok(())
}

#[tokio::test]
async fn list_pages_and_delete() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let mut created = Vec::new();
    for title in ["one", "two", "three"] {
        let c = client
            .create_conversation(pb::CreateConversationRequest {
                title: title.into(),
            })
            .await?
            .into_inner()
            .conversation
            .expect("a conversation");
        created.push(c.conversation_id);
    }

    let first = client
        .list_conversations(pb::ListConversationsRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let titles: Vec<&str> = first
        .conversations
        .iter()
        .map(|c| c.title.as_str())
        .collect();
    assert_eq!(titles, vec!["three", "two"], "newest first");
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_conversations(pb::ListConversationsRequest {
            page_size: 2,
            page_token: first.next_page_token,
        })
        .await?
        .into_inner();
    assert_eq!(second.conversations.len(), 1);
    assert_eq!(second.conversations[0].title, "one");
    assert!(second.next_page_token.is_empty());

    send(
        &mut client,
        &created[0],
        "Our on-call keeps paging us at night.",
        "",
    )
    .await?;
    client
        .delete_conversation(pb::DeleteConversationRequest {
            conversation_id: created[0].clone(),
        })
        .await?;
    let gone = client
        .get_conversation(pb::GetConversationRequest {
            conversation_id: created[0].clone(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // The transcript went with it, in the same transaction.
    assert_eq!(app.count_rows("conversation.messages").await?, 0);
    assert_eq!(app.count_rows("conversation.conversations").await?, 2);
    Ok(())
}

#[derive(sqlx::FromRow)]
struct StoredReply {
    responder: String,
    cited_frameworks: Vec<String>,
    policy_violations: Vec<String>,
    grounded: Option<bool>,
}

async fn stored_reply(app: &TestApp, message_id: &str) -> anyhow::Result<StoredReply> {
    let pool = TestDatabase::pool(&app.db.admin_url).await?;
    let row = sqlx::query_as(
        "SELECT responder, cited_frameworks, policy_violations, grounded
           FROM conversation.messages WHERE message_id = $1::uuid",
    )
    .bind(message_id)
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(row)
}

#[tokio::test]
async fn a_reply_is_still_produced_and_stored_when_knowledge_is_down() -> anyhow::Result<()> {
    let app = TestApp::spawn_without_knowledge().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let exchange = send(&mut client, &id, "We need to hire more engineers.", "k").await?;
    assert!(
        exchange
            .assistant()
            .content
            .contains("What problem would the new engineers solve")
    );
    let row = stored_reply(&app, &exchange.assistant().message_id).await?;
    assert_eq!(row.grounded, Some(false), "marked as ungrounded");
    assert!(row.cited_frameworks.is_empty());
    assert_eq!(app.count_rows("conversation.messages").await?, 2);
    Ok(())
}

#[tokio::test]
async fn the_durable_context_follows_the_member_until_cleared() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;

    let empty = client
        .get_context_profile(pb::GetContextProfileRequest {})
        .await?
        .into_inner()
        .profile
        .expect("a profile");
    assert_eq!(empty, pb::ContextProfile::default());

    let first = new_conversation(&mut client, "first")
        .await?
        .conversation_id;
    send(
        &mut client,
        &first,
        "I just became VP of engineering; we're 60 engineers at series B.",
        "",
    )
    .await?;
    let kept = client
        .get_context_profile(pb::GetContextProfileRequest {})
        .await?
        .into_inner()
        .profile
        .expect("a profile");
    assert_eq!(
        (kept.role.as_str(), kept.team_size, kept.stage.as_str()),
        ("VP of Engineering", 60, "series B")
    );
    assert!(kept.update_time.is_some());

    // A new conversation starts from what was kept.
    let second = new_conversation(&mut client, "second")
        .await?
        .conversation_id;
    let reply = send(&mut client, &second, "Our roadmap keeps changing.", "").await?;
    let text = &reply.assistant().content;
    assert!(
        text.contains("about 60 engineers") && text.contains("series B"),
        "{text}"
    );
    assert!(!text.contains("How many engineers"), "{text}");

    // Another member of the same tenant sees nothing of it.
    let bob = app.token("bob", Some(tenant), tp_context::Role::Member);
    let mut admin = app
        .members(&app.token("alice-admin", Some(tenant), tp_context::Role::Admin))
        .await?;
    admin
        .add_member(pb::AddMemberRequest {
            user_id: "bob".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await?;
    let bobs = app
        .conversations(&bob)
        .await?
        .get_context_profile(pb::GetContextProfileRequest {})
        .await?
        .into_inner()
        .profile
        .expect("a profile");
    assert_eq!(bobs, pb::ContextProfile::default());

    // Cleared, the next conversation asks again.
    client
        .clear_context_profile(pb::ClearContextProfileRequest {})
        .await?;
    assert_eq!(
        client
            .get_context_profile(pb::GetContextProfileRequest {})
            .await?
            .into_inner()
            .profile,
        Some(pb::ContextProfile::default())
    );
    let third = new_conversation(&mut client, "third")
        .await?
        .conversation_id;
    let reply = send(&mut client, &third, "Our roadmap keeps changing.", "").await?;
    assert!(
        reply.assistant().content.contains("How many engineers"),
        "{}",
        reply.assistant().content
    );
    Ok(())
}

/// A transcript cannot grow without bound: past its limit a new turn is
/// `FailedPrecondition`, saying what to do, and nothing is stored; a retry
/// of a turn already stored still replays.
#[tokio::test]
async fn a_full_transcript_refuses_new_turns_and_stores_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "long").await?.conversation_id;
    send(&mut client, &id, "We are 12 engineers.", "first").await?;
    // Fill the count to two below the limit, as 9,999 exchanges would.
    let limit = i32::try_from(tp_conversation::MAX_TRANSCRIPT_MESSAGES)?;
    let pool = TestDatabase::pool(&app.db.admin_url).await?;
    sqlx::query("UPDATE conversation.conversations SET message_count = $1")
        .bind(limit - 2)
        .execute(&pool)
        .await?;

    send(&mut client, &id, "The last exchange that fits.", "last").await?;
    let refused = send(&mut client, &id, "One more?", "over")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a turn past the limit is refused"))?;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains(&format!("limit of {limit} messages"))
            && refused.message().contains("start a new conversation"),
        "{}",
        refused.message()
    );
    assert_eq!(app.count_rows("conversation.messages").await?, 4);
    let count: i32 = sqlx::query_scalar("SELECT message_count FROM conversation.conversations")
        .fetch_one(&pool)
        .await?;
    assert_eq!(count, limit, "the refused turn is not counted");
    pool.close().await;
    // A retry of a stored turn is a replay, not a new turn.
    let replayed = send(&mut client, &id, "The last exchange that fits.", "last").await?;
    assert!(!replayed.assistant().content.is_empty());
    Ok(())
}
