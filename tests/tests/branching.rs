//! Branching transcripts through the gateway: EditMessage and
//! RegenerateReply add siblings and never overwrite, ListMessages follows
//! the active branch or the one named, and the coach's context follows the
//! branch it answers on.

use std::time::Duration;

use tonic::Code;
use tp_context::TenantId;
use tp_e2e::fake_provider::{self, FakeProvider, FakeReply, Wire};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{ConversationClient, TestApp, TestDatabase, edit, new_conversation, regenerate, send};

/// Every page of a branch, following `next_page_token`: the messages, and
/// the branch id each page reported.
async fn list_all(
    client: &mut ConversationClient,
    conversation_id: &str,
    branch_id: &str,
    page_size: i32,
) -> Result<(Vec<pb::Message>, Vec<String>), tonic::Status> {
    let (mut messages, mut branches, mut page_token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                conversation_id: conversation_id.to_owned(),
                page_size,
                page_token,
                branch_id: branch_id.to_owned(),
            })
            .await?
            .into_inner();
        messages.extend(page.messages);
        branches.push(page.branch_id);
        if page.next_page_token.is_empty() {
            return Ok((messages, branches));
        }
        page_token = page.next_page_token;
    }
}

fn ids(messages: &[pb::Message]) -> Vec<&str> {
    messages.iter().map(|m| m.message_id.as_str()).collect()
}

async fn messages_of(
    app: &TestApp,
    conversation_id: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let admin = TestDatabase::pool(&app.db.admin_url).await?;
    Ok(sqlx::query_as(
        "SELECT message_id::text, content FROM conversation.messages
          WHERE conversation_id = $1::uuid ORDER BY seq",
    )
    .bind(conversation_id)
    .fetch_all(&admin)
    .await?)
}

/// A model's reply in one chunk.
fn text(s: &str) -> FakeReply {
    FakeReply::Text(vec![s.to_owned()], 10, 5)
}

/// A stack whose model answers with `script`, and alice of Acme in a new
/// conversation.
struct WithModel {
    fake: FakeProvider,
    app: TestApp,
    tenant: TenantId,
    client: ConversationClient,
    id: String,
}

async fn with_model(script: Vec<FakeReply>) -> anyhow::Result<WithModel> {
    let fake = fake_provider::start(Wire::OpenAi, script).await?;
    let app = TestApp::spawn_with_model(Wire::OpenAi, &fake.base_url).await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    Ok(WithModel {
        fake,
        app,
        tenant,
        client,
        id,
    })
}

#[tokio::test]
async fn an_edit_starts_a_branch_and_the_old_one_stays_whole() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let first = send(&mut client, &id, "I'm a director of 40 engineers.", "").await?;
    let second = send(&mut client, &id, "Our releases keep slipping.", "").await?;
    let third = send(&mut client, &id, "Should I add a release manager?", "").await?;
    let before = messages_of(&app, &id).await?;
    assert_eq!(before.len(), 6);

    let edited = edit(
        &mut client,
        &second.user().message_id,
        "Two of my teams keep blocking each other's releases.",
        "",
    )
    .await?;
    // A new turn beside the old one, answered by the coach.
    let new_turn = edited.user();
    assert_ne!(new_turn.message_id, second.user().message_id);
    assert_eq!(
        new_turn.content,
        "Two of my teams keep blocking each other's releases."
    );
    assert_eq!(new_turn.parent_message_id, first.assistant().message_id);
    assert_eq!(edited.assistant().parent_message_id, new_turn.message_id);
    assert_eq!(edited.deltas.concat(), edited.assistant().content);

    // Nothing was overwritten: the six messages are as they were, and two
    // were added.
    let after = messages_of(&app, &id).await?;
    assert_eq!(after.len(), 8);
    assert_eq!(after[..6], before[..]);

    // The active branch is the edited one…
    let (active, branches) = list_all(&mut client, &id, "", 0).await?;
    assert_eq!(
        ids(&active),
        [
            first.user().message_id.as_str(),
            &first.assistant().message_id,
            &new_turn.message_id,
            &edited.assistant().message_id,
        ]
    );
    assert_eq!(branches, [edited.assistant().message_id.clone()]);
    assert_eq!(
        active[2].sibling_message_ids,
        [second.user().message_id.clone()],
        "the edit names the turn it replaced as its other version"
    );
    assert!(active[0].sibling_message_ids.is_empty());
    assert!(active[3].sibling_message_ids.is_empty());

    // …and the old branch is listed whole by any message on it: through
    // the old turn, then on to its end.
    let (old, branches) = list_all(&mut client, &id, &second.user().message_id, 0).await?;
    assert_eq!(
        ids(&old),
        [
            first.user().message_id.as_str(),
            &first.assistant().message_id,
            &second.user().message_id,
            &second.assistant().message_id,
            &third.user().message_id,
            &third.assistant().message_id,
        ]
    );
    assert_eq!(branches, [third.assistant().message_id.clone()]);
    assert_eq!(
        old[2].sibling_message_ids,
        std::slice::from_ref(&new_turn.message_id)
    );

    // Exports hold every version: Markdown says which turn is an edit,
    // JSON gives each message's parent.
    let export = |format: pb::ExportFormat| {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let mut stream = client
                .export_conversation(pb::ExportConversationRequest {
                    conversation_id: id,
                    format: format.into(),
                })
                .await?
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                bytes.extend(chunk.data);
            }
            anyhow::Ok(String::from_utf8(bytes)?)
        }
    };
    let markdown = export(pb::ExportFormat::Markdown).await?;
    assert_eq!(markdown.matches("## You (edited)").count(), 1, "{markdown}");
    assert!(markdown.contains("Our releases keep slipping."));
    let json: serde_json::Value = serde_json::from_str(&export(pb::ExportFormat::Json).await?)?;
    let exported = json["messages"].as_array().expect("messages");
    assert_eq!(exported.len(), 8);
    let edited_row = exported
        .iter()
        .find(|m| m["message_id"] == new_turn.message_id.as_str())
        .expect("the edit is exported");
    assert_eq!(
        edited_row["parent_message_id"],
        first.assistant().message_id.as_str()
    );

    // A new turn follows the active branch…
    let next = send(&mut client, &id, "What would you ask them first?", "").await?;
    assert_eq!(next.user().parent_message_id, edited.assistant().message_id);
    // …unless it names the message to follow, which makes that branch the
    // active one.
    let resumed = tp_e2e::send_request(
        &mut client,
        tonic::Request::new(pb::SendMessageRequest {
            conversation_id: id.clone(),
            content: "Back to the release manager idea.".into(),
            parent_message_id: third.assistant().message_id.clone(),
            ..Default::default()
        }),
    )
    .await?;
    assert_eq!(
        resumed.user().parent_message_id,
        third.assistant().message_id
    );
    let (active, _) = list_all(&mut client, &id, "", 0).await?;
    assert_eq!(active.len(), 8);
    assert_eq!(active[7].message_id, resumed.assistant().message_id);
    Ok(())
}

#[tokio::test]
async fn pages_of_a_branch_stay_on_it_while_the_conversation_branches() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let mut exchanges = Vec::new();
    for n in 0..6 {
        exchanges.push(
            send(
                &mut client,
                &id,
                &format!("Turn number {n} about hiring."),
                "",
            )
            .await?,
        );
    }
    // An edit at turn 2 and a regenerated reply at turn 4 of the new branch
    // make three segments; paging by 3 crosses each boundary.
    let edit_2 = edit(
        &mut client,
        &exchanges[2].user().message_id,
        "Turn two, edited.",
        "",
    )
    .await?;
    let later = send(&mut client, &id, "A later turn on the edit.", "").await?;
    let regenerated = regenerate(&mut client, &later.assistant().message_id, "").await?;
    let expected: Vec<&str> = [&exchanges[0], &exchanges[1]]
        .iter()
        .flat_map(|e| [e.user().message_id.as_str(), &e.assistant().message_id])
        .chain([
            edit_2.user().message_id.as_str(),
            &edit_2.assistant().message_id,
            &later.user().message_id,
            &regenerated.assistant().message_id,
        ])
        .collect();
    let (active, branches) = list_all(&mut client, &id, "", 3).await?;
    assert_eq!(ids(&active), expected);
    assert!(
        branches
            .iter()
            .all(|b| *b == regenerated.assistant().message_id)
    );

    // A page token keeps to its branch, even when the member moves to
    // another one between pages.
    let first_page = client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id.clone(),
            page_size: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ids(&first_page.messages), expected[..5]);
    send(&mut client, &id, "Another turn meanwhile.", "").await?;
    edit(
        &mut client,
        &exchanges[0].user().message_id,
        "Start over.",
        "",
    )
    .await?;
    let second_page = client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id.clone(),
            page_size: 5,
            page_token: first_page.next_page_token.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ids(&second_page.messages), expected[5..]);
    assert!(second_page.next_page_token.is_empty());

    // Forged, edited or foreign page tokens, and a branch id that
    // contradicts the token, are refused.
    let other = new_conversation(&mut client, "").await?.conversation_id;
    let mut tampered = first_page.next_page_token.clone();
    tampered.replace_range(0..1, if tampered.starts_with('A') { "B" } else { "A" });
    for (conversation_id, page_token, branch_id) in [
        (
            other.clone(),
            first_page.next_page_token.clone(),
            String::new(),
        ),
        (id.clone(), tampered, String::new()),
        (id.clone(), "p1.10".to_owned(), String::new()),
        (
            id.clone(),
            first_page.next_page_token.clone(),
            exchanges[5].user().message_id.clone(),
        ),
    ] {
        let refused = client
            .list_messages(pb::ListMessagesRequest {
                conversation_id,
                page_token,
                branch_id,
                ..Default::default()
            })
            .await
            .expect_err("a page token for another listing is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("page_token") || refused.message().contains("token"));
    }
    // A branch id from another conversation is not in this one.
    let elsewhere = send(&mut client, &other, "Something else entirely.", "").await?;
    let missing = client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id.clone(),
            branch_id: elsewhere.user().message_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a message of another conversation names no branch here");
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn regenerating_adds_a_sibling_reply_and_a_retry_replays_it() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let sent = send(&mut client, &id, "We need to hire more engineers.", "").await?;

    let again = regenerate(&mut client, &sent.assistant().message_id, "again-1").await?;
    assert_eq!(again.user(), sent.user(), "the same turn, answered again");
    assert_ne!(again.assistant().message_id, sent.assistant().message_id);
    assert_eq!(again.assistant().parent_message_id, sent.user().message_id);
    assert_eq!(again.deltas.concat(), again.assistant().content);
    // The offline coach, asked again, says so and takes another angle.
    assert!(
        again.assistant().content.starts_with("You asked again"),
        "{}",
        again.assistant().content
    );
    assert_ne!(again.assistant().content, sent.assistant().content);
    let rows = messages_of(&app, &id).await?.len();
    assert_eq!(rows, 3);

    // A retry with the same key streams the same stored reply.
    let retry = regenerate(&mut client, &sent.assistant().message_id, "again-1").await?;
    assert_eq!(retry.assistant(), again.assistant());
    assert_eq!(retry.deltas.concat(), again.assistant().content);
    assert_eq!(messages_of(&app, &id).await?.len(), rows);

    // Naming the turn itself asks for another reply too.
    let third = regenerate(&mut client, &sent.user().message_id, "").await?;
    let (active, _) = list_all(&mut client, &id, "", 0).await?;
    assert_eq!(
        ids(&active),
        [
            sent.user().message_id.as_str(),
            &third.assistant().message_id
        ]
    );
    assert_eq!(
        active[1].sibling_message_ids,
        [
            sent.assistant().message_id.clone(),
            again.assistant().message_id.clone()
        ],
        "the earlier replies, oldest first"
    );
    // A SendMessage key used again for a regeneration is another request.
    let keyed = send(&mut client, &id, "And what about managers?", "turn-key").await?;
    let reused = regenerate(&mut client, &keyed.assistant().message_id, "turn-key")
        .await
        .expect_err("a SendMessage key is not a RegenerateReply key");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert!(reused.message().contains("idempotency_key"));
    Ok(())
}

#[tokio::test]
async fn bad_edits_and_regenerations_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Acme", "alice").await?;
    let bob = app.add_member(tenant, "alice-admin", "bob").await?;
    let mut client = app.conversations(&alice).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    let sent = send(&mut client, &id, "How do I grow staff engineers?", "").await?;
    let rows = app.count_rows("conversation.messages").await?;

    let reply_edit = edit(&mut client, &sent.assistant().message_id, "Nope.", "")
        .await
        .expect_err("a reply is not the member's to edit");
    assert_eq!(reply_edit.code(), Code::InvalidArgument);
    assert!(reply_edit.message().contains("RegenerateReply"));

    let mut bobs = app.conversations(&bob).await?;
    let not_bobs = edit(&mut bobs, &sent.user().message_id, "Mine now.", "")
        .await
        .expect_err("another member's turn is not found");
    assert_eq!(not_bobs.code(), Code::NotFound);
    let not_bobs = regenerate(&mut bobs, &sent.assistant().message_id, "")
        .await
        .expect_err("another member's reply is not found");
    assert_eq!(not_bobs.code(), Code::NotFound);
    // Nor can he read her transcript, by its active branch or through one
    // of its messages.
    for branch_id in ["", sent.user().message_id.as_str()] {
        let not_bobs = bobs
            .list_messages(pb::ListMessagesRequest {
                conversation_id: id.clone(),
                branch_id: branch_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect_err("another member's transcript is not found");
        assert_eq!(not_bobs.code(), Code::NotFound, "branch_id {branch_id:?}");
    }

    for (message_id, content, field) in [
        ("", "New words.", "message_id"),
        ("not-a-uuid", "New words.", "message_id"),
        (sent.user().message_id.as_str(), " ", "content"),
    ] {
        let refused = edit(&mut client, message_id, content, "")
            .await
            .expect_err("bad input is refused");
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains(field), "{refused:?}");
    }
    let unknown = regenerate(&mut client, &uuid::Uuid::new_v4().to_string(), "")
        .await
        .expect_err("an unknown message is not found");
    assert_eq!(unknown.code(), Code::NotFound);

    let other = new_conversation(&mut client, "").await?.conversation_id;
    let foreign_parent = tp_e2e::send_request(
        &mut client,
        tonic::Request::new(pb::SendMessageRequest {
            conversation_id: other,
            content: "Continue from there.".into(),
            parent_message_id: sent.assistant().message_id.clone(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("a parent from another conversation is not found");
    assert_eq!(foreign_parent.code(), Code::NotFound);

    assert_eq!(app.count_rows("conversation.messages").await?, rows);
    Ok(())
}

#[tokio::test]
async fn the_models_context_follows_the_branch_and_one_reply_is_written_at_a_time()
-> anyhow::Result<()> {
    let WithModel {
        fake,
        app: _app,
        mut client,
        id,
        ..
    } = with_model(vec![
        text("What is slipping, and since when?"),
        text("Who decides what ships?"),
        text("What does each team wait on?"),
        FakeReply::Slow(
            "Let me ask it another way: ".into(),
            Duration::from_millis(1500),
            vec!["what would on time look like?".into()],
        ),
    ])
    .await?;
    send(&mut client, &id, "Our releases keep slipping.", "").await?;
    let second = send(
        &mut client,
        &id,
        "The platform team says it's not them.",
        "",
    )
    .await?;
    edit(
        &mut client,
        &second.user().message_id,
        "Two teams keep blocking each other.",
        "",
    )
    .await?;
    let prompt_contents = |n: usize| -> Vec<String> {
        let requests = fake.requests.lock().expect("lock").clone();
        requests[n]["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .skip(1) // the system prompt
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // The edit's prompt holds the branch up to the edited turn, not the
    // turn it replaced.
    assert_eq!(
        prompt_contents(2),
        [
            "Our releases keep slipping.",
            "What is slipping, and since when?",
            "Two teams keep blocking each other.",
        ]
    );

    // A regeneration being written holds its turn: another is refused, a
    // retry with its key waits for it and streams the same reply.
    let mut slow_client = client.clone();
    let reply_id = second.assistant().message_id.clone();
    let slow = tokio::spawn(async move { regenerate(&mut slow_client, &reply_id, "slow").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = regenerate(&mut client, &second.assistant().message_id, "other")
        .await
        .expect_err("one reply to a turn is written at a time");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    let waited = regenerate(&mut client, &second.assistant().message_id, "slow").await?;
    let slow = slow.await??;
    assert_eq!(waited.assistant(), slow.assistant());
    assert_eq!(
        slow.assistant().content,
        "Let me ask it another way: what would on time look like?"
    );
    // The regeneration answered the old branch's turn, with the old
    // branch's context.
    assert_eq!(
        prompt_contents(3),
        [
            "Our releases keep slipping.",
            "What is slipping, and since when?",
            "The platform team says it's not them.",
        ]
    );
    assert_eq!(
        fake.requests.lock().expect("lock").len(),
        4,
        "one model call per reply"
    );
    Ok(())
}

#[tokio::test]
async fn the_context_is_the_last_forty_messages_of_the_branch_across_a_fork() -> anyhow::Result<()>
{
    let WithModel {
        fake,
        app,
        tenant,
        mut client,
        id,
    } = with_model(vec![text("Which of them matters most?"), text("And then?")]).await?;
    let turns: Vec<String> = (0..60).map(|n| format!("turn {n}")).collect();
    app.db.insert_user_turns(tenant, &id, &turns).await?;
    let (listed, _) = list_all(&mut client, &id, "", 100).await?;
    assert_eq!(listed.len(), 60, "one branch of 60 turns");

    // Edit turn 50: the model sees the 40 messages before it, then the edit.
    edit(&mut client, &listed[50].message_id, "turn 50 edited", "").await?;
    // The next turn follows the edit: the 40 before it cross the fork.
    send(&mut client, &id, "after the edit", "").await?;
    let prompts: Vec<Vec<String>> = fake
        .requests
        .lock()
        .expect("lock")
        .iter()
        .map(|request| {
            request["messages"]
                .as_array()
                .map(|messages| {
                    messages
                        .iter()
                        .skip(1) // the system prompt
                        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let expected_edit: Vec<String> = (10..50)
        .map(|n| format!("turn {n}"))
        .chain(["turn 50 edited".to_owned()])
        .collect();
    assert_eq!(prompts[0], expected_edit);
    let expected_next: Vec<String> = (12..50)
        .map(|n| format!("turn {n}"))
        .chain([
            "turn 50 edited".to_owned(),
            "Which of them matters most?".to_owned(),
            "after the edit".to_owned(),
        ])
        .collect();
    assert_eq!(prompts[1], expected_next);
    Ok(())
}

#[tokio::test]
async fn a_reply_that_lands_after_the_member_moved_on_leaves_the_active_branch_where_they_are()
-> anyhow::Result<()> {
    let WithModel {
        app: _app,
        mut client,
        id,
        ..
    } = with_model(vec![
        text("What is slipping, and since when?"),
        FakeReply::Slow(
            "Who decides ".into(),
            Duration::from_millis(1500),
            vec!["what ships?".into()],
        ),
        text("Which two teams, and what do they wait on?"),
    ])
    .await?;
    let first = send(&mut client, &id, "Our releases keep slipping.", "").await?;

    // The second turn's reply is slow; meanwhile the member rewrites their
    // first turn, which moves the active branch to the rewrite.
    let mut slow_client = client.clone();
    let slow_id = id.clone();
    let slow = tokio::spawn(async move {
        send(
            &mut slow_client,
            &slow_id,
            "The platform team says it's not them.",
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let edited = edit(
        &mut client,
        &first.user().message_id,
        "Two teams keep blocking each other.",
        "",
    )
    .await?;
    let slow = slow.await??;
    assert_eq!(slow.assistant().content, "Who decides what ships?");

    // The slow reply is stored on the branch it answered, and the active
    // branch is still the rewrite the member moved to.
    let (active, _) = list_all(&mut client, &id, "", 50).await?;
    assert_eq!(
        ids(&active),
        [
            edited.user().message_id.as_str(),
            edited.assistant().message_id.as_str()
        ]
    );
    let (old, _) = list_all(&mut client, &id, &slow.assistant().message_id, 50).await?;
    assert_eq!(
        ids(&old),
        [
            first.user().message_id.as_str(),
            first.assistant().message_id.as_str(),
            slow.user().message_id.as_str(),
            slow.assistant().message_id.as_str()
        ]
    );
    Ok(())
}
