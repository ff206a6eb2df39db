//! SearchMessages through the gateway: a member finds words in their own
//! conversations only, ranked, with highlighted snippets and sealed page
//! tokens; an admin searches the whole organisation only when its settings
//! allow it (and turning that on is audited); other tenants' messages are
//! never found; a deleted conversation is gone from search.

use tonic::Code;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{ConversationClient, TestApp, new_conversation, send};

async fn search(
    client: &mut ConversationClient,
    query: &str,
    scope: pb::SearchScope,
    page_size: i32,
    page_token: &str,
) -> Result<pb::SearchMessagesResponse, tonic::Status> {
    client
        .search_messages(pb::SearchMessagesRequest {
            query: query.into(),
            page_size,
            page_token: page_token.into(),
            scope: scope.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// User turns among the hits (the coach's replies may quote the words too).
fn user_hits(response: &pb::SearchMessagesResponse) -> Vec<&pb::MessageSearchHit> {
    response
        .hits
        .iter()
        .filter(|h| h.role == pb::MessageRole::User as i32)
        .collect()
}

#[tokio::test]
async fn a_member_finds_their_own_messages_ranked_with_highlights() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Search tenant", "alice").await?;
    let bob = app.add_member(tenant, "alice-admin", "bob").await?;
    let mut a = app.conversations(&alice).await?;
    let mut b = app.conversations(&bob).await?;

    let on_call = new_conversation(&mut a, "On-call load")
        .await?
        .conversation_id;
    send(
        &mut a,
        &on_call,
        "Our zeppelin rotation burns out the senior engineers.",
        "",
    )
    .await?;
    send(
        &mut a,
        &on_call,
        "The zeppelin pager fires at night, every night, zeppelin alerts everywhere.",
        "",
    )
    .await?;
    let other = new_conversation(&mut a, "Hiring").await?.conversation_id;
    send(
        &mut a,
        &other,
        "We are hiring two staff engineers this quarter.",
        "",
    )
    .await?;
    let bobs = new_conversation(&mut b, "Bob's").await?.conversation_id;
    send(
        &mut b,
        &bobs,
        "Bob also worries about the zeppelin rotation.",
        "",
    )
    .await?;

    let found = search(&mut a, "zeppelin", pb::SearchScope::Unspecified, 0, "").await?;
    let hits = user_hits(&found);
    assert_eq!(hits.len(), 2, "alice's two turns, not bob's: {found:?}");
    assert!(
        found
            .hits
            .iter()
            .all(|h| h.user_id == "alice" && h.conversation_id == on_call)
    );
    // The turn that says it three times ranks first.
    assert!(
        hits[0].snippet.contains("pager fires"),
        "{:?}",
        hits[0].snippet
    );
    assert_eq!(hits[0].conversation_title, "On-call load");
    for hit in &hits {
        assert!(!hit.highlights.is_empty(), "{hit:?}");
        let chars: Vec<char> = hit.snippet.chars().collect();
        for range in &hit.highlights {
            let word: String = chars[range.start as usize..range.end as usize]
                .iter()
                .collect();
            assert_eq!(word.to_lowercase(), "zeppelin", "{hit:?}");
        }
        assert!(!hit.snippet.contains('\u{E000}') && !hit.snippet.contains('\u{E001}'));
    }

    // Stemming: "hire" finds "hiring"; a phrase; an excluded word.
    let hire = search(&mut a, "hire", pb::SearchScope::Own, 0, "").await?;
    assert!(user_hits(&hire).iter().any(|h| h.conversation_id == other));
    let phrase = search(&mut a, "\"pager fires\"", pb::SearchScope::Own, 0, "").await?;
    assert_eq!(user_hits(&phrase).len(), 1);
    let excluded = search(&mut a, "zeppelin -pager", pb::SearchScope::Own, 0, "").await?;
    assert_eq!(user_hits(&excluded).len(), 1);

    // Bob finds only his own.
    let bob_found = search(&mut b, "zeppelin", pb::SearchScope::Own, 0, "").await?;
    assert!(!bob_found.hits.is_empty());
    assert!(
        bob_found
            .hits
            .iter()
            .all(|h| h.user_id == "bob" && h.conversation_id == bobs)
    );

    // A deleted conversation is gone from search at once.
    a.delete_conversation(pb::DeleteConversationRequest {
        conversation_id: on_call,
    })
    .await?;
    let after = search(&mut a, "zeppelin", pb::SearchScope::Own, 0, "").await?;
    assert!(after.hits.is_empty(), "{after:?}");
    Ok(())
}

#[tokio::test]
async fn pages_follow_their_sealed_tokens_and_refuse_anyone_elses() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Paging tenant", "alice").await?;
    let (_other_tenant, mallory) = app.tenant_with_member("Other tenant", "alice").await?;
    let mut a = app.conversations(&alice).await?;
    let id = new_conversation(&mut a, "Many").await?.conversation_id;
    for n in 0..5 {
        let words = "quokka ".repeat(n + 1);
        send(&mut a, &id, &format!("Round {n}: {words}"), "").await?;
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = search(&mut a, "quokka", pb::SearchScope::Own, 2, &token).await?;
        pages += 1;
        assert!(page.hits.len() <= 2);
        seen.extend(page.hits.iter().map(|h| h.message_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        // The token is refused for another query, scope, caller or tenant,
        // and when edited by hand.
        let refused = [
            search(
                &mut a,
                "quokkas and more",
                pb::SearchScope::Own,
                2,
                &page.next_page_token,
            )
            .await,
            search(
                &mut a,
                "quokka",
                pb::SearchScope::Organisation,
                2,
                &page.next_page_token,
            )
            .await,
            search(
                &mut app.conversations(&mallory).await?,
                "quokka",
                pb::SearchScope::Own,
                2,
                &page.next_page_token,
            )
            .await,
            search(
                &mut a,
                "quokka",
                pb::SearchScope::Own,
                2,
                &page.next_page_token.replacen("s1.", "s1.00", 1),
            )
            .await,
        ];
        for result in refused {
            let status = result.expect_err("a foreign or forged token");
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument | Code::PermissionDenied
                ),
                "{status:?}"
            );
            if status.code() == Code::InvalidArgument {
                assert!(status.message().contains("page_token"), "{status:?}");
            }
        }
        token = page.next_page_token;
    }
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no hit twice across pages");
    assert!(
        seen.len() >= 5 && pages >= 3,
        "{pages} pages, {} hits",
        seen.len()
    );
    let everything = search(&mut a, "quokka", pb::SearchScope::Own, 50, "").await?;
    let all: Vec<_> = everything
        .hits
        .iter()
        .map(|h| h.message_id.clone())
        .collect();
    assert_eq!(all, seen, "pages concatenate to the one-page order");

    // The other tenant's member, with the same user id, finds nothing of A's.
    let theirs = search(
        &mut app.conversations(&mallory).await?,
        "quokka",
        pb::SearchScope::Own,
        0,
        "",
    )
    .await?;
    assert!(theirs.hits.is_empty(), "{theirs:?}");
    let _ = tenant;
    Ok(())
}

#[tokio::test]
async fn bad_searches_get_actionable_statuses() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, alice) = app.tenant_with_member("Bad input tenant", "alice").await?;
    let mut a = app.conversations(&alice).await?;
    for (query, page_size, token, needle) in [
        ("", 0, "", "query is required"),
        ("the and of", 0, "", "no words to search for"),
        (&*"x".repeat(201), 0, "", "limit is 200"),
        ("hiring", 51, "", "page_size"),
        ("hiring", 0, "p1.20", "page_token"),
        ("hiring", 0, "s1.00.00", "page_token"),
    ] {
        let status = search(&mut a, query, pb::SearchScope::Own, page_size, token)
            .await
            .expect_err(needle);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
    Ok(())
}

#[tokio::test]
async fn admins_search_the_organisation_only_when_it_allows_it() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Org tenant", "alice").await?;
    let admin = app.token("alice-admin", Some(tenant), Role::Admin);
    let (_b, outsider) = app.tenant_with_member("Outside tenant", "olga").await?;
    let mut a = app.conversations(&alice).await?;
    let id = new_conversation(&mut a, "Private").await?.conversation_id;
    send(&mut a, &id, "The narwhal reorg worries me.", "").await?;
    let mut o = app.conversations(&outsider).await?;
    let oid = new_conversation(&mut o, "Elsewhere").await?.conversation_id;
    send(&mut o, &oid, "A narwhal in another company.", "").await?;

    let mut admin_client = app.conversations(&admin).await?;
    // Off by default.
    let closed = search(
        &mut admin_client,
        "narwhal",
        pb::SearchScope::Organisation,
        0,
        "",
    )
    .await
    .expect_err("not allowed yet");
    assert_eq!(closed.code(), Code::PermissionDenied);
    assert!(closed.message().contains("UpdateSettings"), "{closed:?}");
    // A member never may.
    let member = search(&mut a, "narwhal", pb::SearchScope::Organisation, 0, "")
        .await
        .expect_err("a member");
    assert_eq!(member.code(), Code::PermissionDenied);

    let mut settings = app.settings(&admin).await?;
    let before = settings
        .get_settings(pb::GetSettingsRequest {})
        .await?
        .into_inner()
        .settings
        .ok_or_else(|| anyhow::anyhow!("no settings"))?;
    assert!(!before.admins_can_search_all_transcripts && before.update_time.is_none());
    // Members cannot change it.
    let refused = app
        .settings(&alice)
        .await?
        .update_settings(pb::UpdateSettingsRequest {
            admins_can_search_all_transcripts: Some(true),
            retention_days: None,
        })
        .await
        .expect_err("a member");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let after = settings
        .update_settings(pb::UpdateSettingsRequest {
            admins_can_search_all_transcripts: Some(true),
            retention_days: None,
        })
        .await?
        .into_inner()
        .settings
        .ok_or_else(|| anyhow::anyhow!("no settings"))?;
    assert!(after.admins_can_search_all_transcripts && after.update_time.is_some());

    // The change reaches the gateway's cached standing through the
    // tenant's notification; allow it a moment.
    let mut open = None;
    for _ in 0..50 {
        match search(
            &mut admin_client,
            "narwhal",
            pb::SearchScope::Organisation,
            0,
            "",
        )
        .await
        {
            Ok(found) => {
                open = Some(found);
                break;
            }
            Err(status) if status.code() == Code::PermissionDenied => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
    let open = open.ok_or_else(|| anyhow::anyhow!("the setting never took effect"))?;
    let users: std::collections::BTreeSet<_> =
        open.hits.iter().map(|h| h.user_id.as_str()).collect();
    assert_eq!(
        users,
        ["alice"].into(),
        "alice's turn, nothing of the other tenant's"
    );

    // Audited, with before and after.
    let events = app
        .audit(&admin)
        .await?
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    let event = events
        .iter()
        .find(|e| e.action == "settings.updated")
        .ok_or_else(|| anyhow::anyhow!("no audit event: {events:?}"))?;
    assert_eq!(event.actor, "alice-admin");
    let flag = |state: &Option<prost_types::Struct>| {
        state
            .as_ref()
            .and_then(|s| s.fields.get("admins_can_search_all_transcripts"))
            .and_then(|v| match v.kind {
                Some(prost_types::value::Kind::BoolValue(b)) => Some(b),
                _ => None,
            })
    };
    assert_eq!(
        (flag(&event.before), flag(&event.after)),
        (Some(false), Some(true))
    );
    Ok(())
}
