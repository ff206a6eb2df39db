//! Bad credentials and bad input: each gets the right status and a message a
//! client developer can act on, and none writes a row.

use tonic::Code;
use tp_auth::{Claims, mint_hs256};
use tp_context::{Role, TenantId};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{JWT_SECRET, TestApp, new_conversation, send};

async fn create_with(app: &TestApp, authorization: Option<&str>) -> tonic::Status {
    app.conversations_with_auth(authorization)
        .await
        .expect("client")
        .create_conversation(pb::CreateConversationRequest::default())
        .await
        .expect_err("must be rejected")
}

#[tokio::test]
async fn broken_tokens_are_unauthenticated_and_write_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, _) = app.tenant_with_member("Acme", "alice").await?;

    let mut expired = Claims::expiring_in("alice", Some(tenant), Role::Member, 0);
    expired.exp -= 3600;
    let expired = mint_hs256(JWT_SECRET.as_bytes(), &expired)?;
    let wrong_key = mint_hs256(
        b"some-other-secret-of-16+-bytes",
        &Claims::expiring_in("alice", Some(tenant), Role::Member, 60),
    )?;
    let no_tenant = app.token("alice", None, Role::Member);
    // {"alg":"none"} with a valid-looking payload and no signature.
    let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsInJvbGUiOiJvcGVyYXRvciIsImV4cCI6OTk5OTk5OTk5OX0.";

    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing `authorization`"),
        (Some("Basic YWxpY2U6cHc=".into()), "must be `Bearer <jwt>`"),
        (Some("Bearer not-a-jwt".into()), "malformed"),
        (Some(format!("Bearer {alg_none}")), "malformed"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {wrong_key}")), "signature"),
        (Some(format!("Bearer {no_tenant}")), "tenant_id"),
    ];
    for (authorization, expected) in cases {
        let status = create_with(&app, authorization.as_deref()).await;
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{authorization:?}: {status:?}"
        );
        assert!(
            status.message().contains(expected),
            "{authorization:?}: {}",
            status.message()
        );
    }
    assert_eq!(app.count_rows("conversation.conversations").await?, 0);
    Ok(())
}

#[tokio::test]
async fn roles_and_membership_are_enforced() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, member) = app.tenant_with_member("Acme", "alice").await?;

    // A valid token for someone who is not a member.
    let stranger = app.token("mallory", Some(tenant), Role::Member);
    let status = app
        .conversations(&stranger)
        .await?
        .create_conversation(pb::CreateConversationRequest::default())
        .await
        .expect_err("not a member");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("not a member"),
        "{}",
        status.message()
    );

    // A token for a tenant that does not exist.
    let ghost = app.token("alice", Some(TenantId::new_random()), Role::Member);
    let status = app
        .conversations(&ghost)
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("no such tenant");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Operators run the product; they do not converse.
    let operator = app.token("ops", None, Role::Operator);
    let status = app
        .conversations(&operator)
        .await?
        .create_conversation(pb::CreateConversationRequest::default())
        .await
        .expect_err("operators do not converse");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Members cannot create tenants or manage members.
    let status = app
        .tenants(&member)
        .await?
        .create_tenant(pb::CreateTenantRequest {
            display_name: "Evil".into(),
            seats: 1,
            admin_user_id: "alice".into(),
        })
        .await
        .expect_err("members are not operators");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .members(&member)
        .await?
        .add_member(pb::AddMemberRequest {
            user_id: "bob".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await
        .expect_err("members are not admins");
    assert_eq!(status.code(), Code::PermissionDenied);

    // An admin claim in the token is not enough: the stored membership decides.
    let forged_admin = app.token("alice", Some(tenant), Role::Admin);
    let status = app
        .members(&forged_admin)
        .await?
        .list_members(pb::ListMembersRequest::default())
        .await
        .expect_err("alice is a member, not an admin");
    assert_eq!(status.code(), Code::PermissionDenied);

    assert_eq!(app.count_rows("gateway.tenants").await?, 1);
    assert_eq!(app.count_rows("gateway.members").await?, 2);
    assert_eq!(app.count_rows("conversation.conversations").await?, 0);
    Ok(())
}

#[tokio::test]
async fn bad_messages_are_invalid_arguments_and_write_nothing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let mut client = app.conversations(&token).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;

    let too_long = "a".repeat(16 * 1024 + 1);
    let cases: Vec<(&str, &str, &str, Code, &str)> = vec![
        (&id, "", "", Code::InvalidArgument, "must not be empty"),
        (&id, "  \n ", "", Code::InvalidArgument, "must not be empty"),
        (&id, &too_long, "", Code::InvalidArgument, "16 KiB"),
        ("not-a-uuid", "hello", "", Code::InvalidArgument, "UUID"),
        ("", "hello", "", Code::InvalidArgument, "required"),
        (
            "00000000-0000-4000-8000-000000000000",
            "hello",
            "",
            Code::NotFound,
            "not found",
        ),
    ];
    for (conversation_id, content, key, code, message) in cases {
        let status = send(&mut client, conversation_id, content, key)
            .await
            .err()
            .unwrap_or_else(|| panic!("{conversation_id:?}/{} must fail", content.len()));
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(message), "{}", status.message());
    }
    let status = send(&mut client, &id, "hello", &"k".repeat(200))
        .await
        .expect_err("long key");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = client
        .create_conversation(pb::CreateConversationRequest {
            title: "t".repeat(201),
        })
        .await
        .expect_err("long title");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .list_conversations(pb::ListConversationsRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect_err("page too large");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .list_conversations(pb::ListConversationsRequest {
            page_size: 10,
            page_token: "forged".into(),
        })
        .await
        .expect_err("forged token");
    assert_eq!(status.code(), Code::InvalidArgument);

    assert_eq!(app.count_rows("conversation.messages").await?, 0);
    assert_eq!(app.count_rows("conversation.conversations").await?, 1);
    Ok(())
}

#[tokio::test]
async fn members_never_outnumber_seats() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let tenant = app.create_tenant("Small Co", 2, "root-admin").await?;
    let mut admin = app
        .members(&app.token("root-admin", Some(tenant), Role::Admin))
        .await?;

    admin
        .add_member(pb::AddMemberRequest {
            user_id: "bob".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await?;
    let full = admin
        .add_member(pb::AddMemberRequest {
            user_id: "carol".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await
        .expect_err("no seat left");
    assert_eq!(full.code(), Code::FailedPrecondition);
    assert!(full.message().contains("all 2 seats"), "{}", full.message());

    let again = admin
        .add_member(pb::AddMemberRequest {
            user_id: "bob".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await
        .expect_err("already a member");
    assert_eq!(again.code(), Code::AlreadyExists);
    let no_role = admin
        .add_member(pb::AddMemberRequest {
            user_id: "dave".into(),
            role: 0,
        })
        .await
        .expect_err("role is required");
    assert_eq!(no_role.code(), Code::InvalidArgument);

    let listed = admin
        .list_members(pb::ListMembersRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.seats, 2);
    let users: Vec<&str> = listed.members.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(users, vec!["root-admin", "bob"]);

    // The last admin stays; removing bob frees a seat for carol.
    let last_admin = admin
        .remove_member(pb::RemoveMemberRequest {
            user_id: "root-admin".into(),
        })
        .await
        .expect_err("last admin");
    assert_eq!(last_admin.code(), Code::FailedPrecondition);
    admin
        .remove_member(pb::RemoveMemberRequest {
            user_id: "bob".into(),
        })
        .await?;
    let missing = admin
        .remove_member(pb::RemoveMemberRequest {
            user_id: "bob".into(),
        })
        .await
        .expect_err("already removed");
    assert_eq!(missing.code(), Code::NotFound);
    admin
        .add_member(pb::AddMemberRequest {
            user_id: "carol".into(),
            role: pb::MemberRole::Member.into(),
        })
        .await?;

    // A removed member loses access at once.
    let bob = app
        .conversations(&app.token("bob", Some(tenant), Role::Member))
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .expect_err("bob was removed");
    assert_eq!(bob.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn bad_tenant_requests_are_invalid_arguments() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let mut tenants = app.tenants(&app.token("ops", None, Role::Operator)).await?;
    let cases = [
        pb::CreateTenantRequest {
            display_name: " ".into(),
            seats: 3,
            admin_user_id: "a".into(),
        },
        pb::CreateTenantRequest {
            display_name: "Acme".into(),
            seats: 0,
            admin_user_id: "a".into(),
        },
        pb::CreateTenantRequest {
            display_name: "Acme".into(),
            seats: 3,
            admin_user_id: String::new(),
        },
        pb::CreateTenantRequest {
            display_name: "Acme".into(),
            seats: 3,
            admin_user_id: "has space".into(),
        },
    ];
    for request in cases {
        let status = tenants
            .create_tenant(request.clone())
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
    }
    assert_eq!(app.count_rows("gateway.tenants").await?, 0);
    Ok(())
}
