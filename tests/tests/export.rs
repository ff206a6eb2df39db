//! Exports through the gateway: a member's conversation as Markdown or JSON
//! (the same turns ListMessages returns), the whole organisation as JSON
//! Lines for its admins (audited, every member's conversations, nothing of
//! another tenant's), resumable from any chunk's token, and bad requests
//! refused with statuses that say what to do.

use tonic::Code;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{ConversationClient, TestApp, new_conversation, send};

/// Every chunk of an export stream.
async fn chunks<T>(
    stream: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<Vec<T>, tonic::Status> {
    let mut stream = stream?.into_inner();
    let mut all = Vec::new();
    while let Some(chunk) = stream.message().await? {
        all.push(chunk);
    }
    Ok(all)
}

/// The data of each chunk, in order, as one string.
fn text<'a>(data: impl IntoIterator<Item = &'a Vec<u8>>) -> anyhow::Result<String> {
    Ok(String::from_utf8(
        data.into_iter().flatten().copied().collect(),
    )?)
}

async fn export_conversation(
    client: &mut ConversationClient,
    id: &str,
    format: pb::ExportFormat,
) -> Result<Vec<pb::ExportConversationResponse>, tonic::Status> {
    chunks(
        client
            .export_conversation(pb::ExportConversationRequest {
                conversation_id: id.into(),
                format: format.into(),
            })
            .await,
    )
    .await
}

async fn export_tenant(
    client: &mut ConversationClient,
    resume_token: &str,
) -> Result<Vec<pb::ExportTenantResponse>, tonic::Status> {
    chunks(
        client
            .export_tenant(pb::ExportTenantRequest {
                resume_token: resume_token.into(),
            })
            .await,
    )
    .await
}

#[tokio::test]
async fn a_member_exports_a_conversation_as_markdown_or_json() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, alice) = app.tenant_with_member("Export tenant", "alice").await?;
    let (_other, bob) = app.tenant_with_member("Other tenant", "bob").await?;
    let mut a = app.conversations(&alice).await?;
    let id = new_conversation(&mut a, "Reorg plan")
        .await?
        .conversation_id;
    send(
        &mut a,
        &id,
        "We are splitting the platform team in two.",
        "",
    )
    .await?;
    send(&mut a, &id, "Line one\nline two, with \"quotes\".", "").await?;
    let listed = tp_e2e::transcript(&mut a, &id).await?;
    assert_eq!(listed.len(), 4);

    let markdown = export_conversation(&mut a, &id, pb::ExportFormat::Markdown).await?;
    assert_eq!(markdown[0].content_type, "text/markdown; charset=utf-8");
    assert_eq!(markdown[0].filename, format!("conversation-{id}.md"));
    let document = text(markdown.iter().map(|c| &c.data))?;
    assert!(document.starts_with("# Reorg plan\n"), "{document}");
    assert_eq!(document.matches("\n## You\n").count(), 2);
    assert_eq!(document.matches("\n## Thought partner\n").count(), 2);
    for message in &listed {
        assert!(document.contains(message.content.trim_end()), "{document}");
    }

    let json = export_conversation(&mut a, &id, pb::ExportFormat::Json).await?;
    assert_eq!(json[0].content_type, "application/json");
    let value: serde_json::Value = serde_json::from_str(&text(json.iter().map(|c| &c.data))?)?;
    assert_eq!(value["conversation"]["conversation_id"], id.as_str());
    assert_eq!(value["conversation"]["title"], "Reorg plan");
    let exported: Vec<(&str, &str)> = value["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    (
                        m["message_id"].as_str().unwrap_or_default(),
                        m["content"].as_str().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<(&str, &str)> = listed
        .iter()
        .map(|m| (m.message_id.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(exported, expected);

    // Someone else's conversation, a missing format, an unknown one.
    let theirs = export_conversation(
        &mut app.conversations(&bob).await?,
        &id,
        pb::ExportFormat::Json,
    )
    .await
    .expect_err("another tenant's conversation");
    assert_eq!(theirs.code(), Code::NotFound);
    let unspecified = export_conversation(&mut a, &id, pb::ExportFormat::Unspecified)
        .await
        .expect_err("no format");
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    assert!(unspecified.message().contains("EXPORT_FORMAT_MARKDOWN"));
    let unknown = chunks(
        a.export_conversation(pb::ExportConversationRequest {
            conversation_id: id.clone(),
            format: 7,
        })
        .await,
    )
    .await
    .expect_err("an unknown format");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn an_admin_exports_the_organisation_as_json_lines_and_resumes() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Org export", "alice").await?;
    let admin = app.token("alice-admin", Some(tenant), Role::Admin);
    let bob = app.add_member(tenant, "alice-admin", "bob").await?;
    let (outsider_tenant, outsider) = app.tenant_with_member("Outsider", "olga").await?;
    let mut a = app.conversations(&alice).await?;
    let mut b = app.conversations(&bob).await?;
    let alices = new_conversation(&mut a, "Alice's").await?.conversation_id;
    send(&mut a, &alices, "How do I grow staff engineers?", "").await?;
    // Large enough for many chunks.
    let turns: Vec<String> = (0..3_000)
        .map(|n| {
            format!("Turn {n}: the platform team's roadmap keeps slipping behind feature work.")
        })
        .collect();
    app.db.insert_user_turns(tenant, &alices, &turns).await?;
    let bobs = new_conversation(&mut b, "Bob's").await?.conversation_id;
    send(&mut b, &bobs, "Our on-call is on fire.", "").await?;
    let mut o = app.conversations(&outsider).await?;
    let theirs = new_conversation(&mut o, "Olga's").await?.conversation_id;
    send(&mut o, &theirs, "Someone else's secret: kumquat.", "").await?;

    // Members may not.
    let refused = export_tenant(&mut b, "").await.expect_err("a member");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let mut admin_client = app.conversations(&admin).await?;
    let whole = export_tenant(&mut admin_client, "").await?;
    assert!(whole.len() >= 5, "{} chunks", whole.len());
    assert_eq!(whole[0].content_type, "application/x-ndjson");
    assert!(whole[0].filename.ends_with(".jsonl"));
    assert!(whole.iter().all(|c| !c.resume_token.is_empty()));
    let all = text(whole.iter().map(|c| &c.data))?;
    assert!(
        whole
            .iter()
            .all(|c| c.data.is_empty() || c.data.ends_with(b"\n")),
        "chunks end on a line"
    );
    let lines: Vec<serde_json::Value> = all
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let conversations: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "conversation")
        .filter_map(|l| l["conversation_id"].as_str())
        .collect();
    assert_eq!(conversations, [alices.as_str(), bobs.as_str()]);
    let messages = lines.iter().filter(|l| l["type"] == "message").count();
    assert_eq!(messages as i64, 2 + 3_000 + 2, "every turn of both members");
    assert!(
        !all.contains("kumquat") && !all.contains(&theirs),
        "nothing of another tenant's"
    );

    // Resume after the third chunk: the rest is exactly what followed it.
    let rest = export_tenant(&mut admin_client, &whole[2].resume_token).await?;
    let head = text(whole[..3].iter().map(|c| &c.data))?;
    assert_eq!(
        format!("{head}{}", text(rest.iter().map(|c| &c.data))?),
        all
    );
    // From the last token: nothing more.
    let done = export_tenant(&mut admin_client, &whole[whole.len() - 1].resume_token).await?;
    assert_eq!(text(done.iter().map(|c| &c.data))?, "");

    // Another tenant's token, a forged one.
    let outsider_admin = app.token("olga-admin", Some(outsider_tenant), Role::Admin);
    let foreign = export_tenant(
        &mut app.conversations(&outsider_admin).await?,
        &whole[1].resume_token,
    )
    .await
    .expect_err("another tenant's token");
    assert_eq!(foreign.code(), Code::InvalidArgument);
    assert!(foreign.message().contains("resume_token"));
    let forged = export_tenant(
        &mut admin_client,
        &whole[1].resume_token.replacen("s1.", "s1.ff", 1),
    )
    .await
    .expect_err("a forged token");
    assert_eq!(forged.code(), Code::InvalidArgument);

    // Each export (and resumption) is in the audit log.
    let events = app
        .audit(&admin)
        .await?
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    let exports = events
        .iter()
        .filter(|e| e.action == "tenant.exported" && e.actor == "alice-admin")
        .count();
    assert!(exports >= 3, "{events:?}");
    Ok(())
}
