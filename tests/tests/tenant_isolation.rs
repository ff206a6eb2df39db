//! Tenant B must never reach tenant A's data: not through the API, and not
//! through SQL run as the application role with B's `app.tenant_id`.

use sqlx::Row;
use tonic::Code;
use tp_context::TenantId;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, new_conversation, send};

#[tokio::test]
async fn tenant_b_cannot_touch_tenant_a_through_the_api() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_a, alice) = app.tenant_with_member("Tenant A", "alice").await?;
    let (_b, bob) = app.tenant_with_member("Tenant B", "bob").await?;
    let mut a = app.conversations(&alice).await?;
    let mut b = app.conversations(&bob).await?;

    let id = new_conversation(&mut a, "A's secret")
        .await?
        .conversation_id;
    send(&mut a, &id, "We are 12 engineers.", "").await?;

    let get = b
        .get_conversation(pb::GetConversationRequest {
            conversation_id: id.clone(),
        })
        .await
        .expect_err("B cannot get A's conversation");
    assert_eq!(get.code(), Code::NotFound);
    let list = b
        .list_conversations(pb::ListConversationsRequest::default())
        .await?
        .into_inner();
    assert!(list.conversations.is_empty());
    let messages = b
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("B cannot read A's transcript");
    assert_eq!(messages.code(), Code::NotFound);
    let post = send(&mut b, &id, "injected", "")
        .await
        .expect_err("B cannot post to A's conversation");
    assert_eq!(post.code(), Code::NotFound);
    let delete = b
        .delete_conversation(pb::DeleteConversationRequest {
            conversation_id: id.clone(),
        })
        .await
        .expect_err("B cannot delete A's conversation");
    assert_eq!(delete.code(), Code::NotFound);

    // A's data is untouched.
    let transcript = a
        .list_messages(pb::ListMessagesRequest {
            conversation_id: id,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(transcript.messages.len(), 2);
    assert_eq!(app.count_rows("conversation.messages").await?, 2);
    Ok(())
}

/// The gateway passes most calls on with their messages undecoded; the
/// metadata it passes on is its own. A client that sends the internal
/// context headers itself (another tenant's id, another user, a higher role)
/// is still only itself.
#[tokio::test]
async fn a_client_cannot_claim_another_tenant_in_the_internal_headers() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (a, alice) = app.tenant_with_member("Tenant A", "alice").await?;
    let (_b, bob) = app.tenant_with_member("Tenant B", "bob").await?;
    let mut a_client = app.conversations(&alice).await?;
    let id = new_conversation(&mut a_client, "A's secret")
        .await?
        .conversation_id;
    send(&mut a_client, &id, "We are 12 engineers.", "").await?;

    let mut b_client = app.conversations(&bob).await?;
    let get = b_client
        .get_conversation(claiming(
            a,
            pb::GetConversationRequest {
                conversation_id: id.clone(),
            },
        ))
        .await
        .expect_err("B's token is B, whatever the headers say");
    assert_eq!(get.code(), Code::NotFound);
    let messages = b_client
        .list_messages(claiming(
            a,
            pb::ListMessagesRequest {
                conversation_id: id.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("B cannot read A's transcript");
    assert_eq!(messages.code(), Code::NotFound);
    let listed = b_client
        .list_conversations(claiming(a, pb::ListConversationsRequest::default()))
        .await?
        .into_inner();
    assert!(listed.conversations.is_empty(), "B lists only B's");
    // A member claiming to be an admin still cannot add a document.
    let mut b_knowledge = app.knowledge(&bob).await?;
    let create = b_knowledge
        .create_document(claiming(
            a,
            pb::CreateDocumentRequest {
                title: "planted".into(),
                content: b"A document in A's corpus.".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a member's role is the stored one");
    assert_eq!(create.code(), Code::PermissionDenied);
    Ok(())
}

/// `message` as a request carrying the internal context headers, claiming
/// `tenant`, its user `alice` and the operator role.
fn claiming<T>(tenant: TenantId, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    for (key, value) in [
        (tp_context::TENANT_ID_KEY, tenant.to_string()),
        (tp_context::USER_ID_KEY, "alice".to_owned()),
        (tp_context::ROLE_KEY, "operator".to_owned()),
    ] {
        metadata.insert(key, value.parse().expect("ASCII metadata"));
    }
    request
}

#[tokio::test]
async fn row_level_security_hides_other_tenants_and_fails_closed() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (a, alice) = app.tenant_with_member("Tenant A", "alice").await?;
    let (b, _bob) = app.tenant_with_member("Tenant B", "bob").await?;
    let mut client = app.conversations(&alice).await?;
    let id = new_conversation(&mut client, "").await?.conversation_id;
    send(&mut client, &id, "We are 12 engineers.", "").await?;

    // Connected as the services connect: tp_app, no WHERE clause on tenant.
    let pool = TestDatabase::pool(&app.db.app_url).await?;
    let mut a_admin = app
        .knowledge(&app.token("alice-admin", Some(a), tp_context::Role::Admin))
        .await?;
    a_admin
        .create_document(pb::CreateDocumentRequest {
            title: "A's ladder".into(),
            content: b"# Levels\n\nSenior, staff, principal.".to_vec(),
            content_type: pb::ContentType::Markdown.into(),
        })
        .await?;
    let tables = [
        "gateway.tenants",
        "gateway.members",
        "conversation.conversations",
        "conversation.messages",
        "conversation.member_profiles",
        "knowledge.documents",
        "knowledge.passages",
    ];
    let count_as = |tenant: Option<TenantId>, table: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            if let Some(tenant) = tenant {
                sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
                    .bind(tenant.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            let n: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            anyhow::Ok(n)
        }
    };
    for table in tables {
        assert!(
            count_as(Some(a), table).await? > 0,
            "A sees its own {table}"
        );
        // B sees only its own rows: none of A's conversations or messages.
        let seen_by_b = count_as(Some(b), table).await?;
        let total = app.count_rows(table).await?;
        assert!(
            seen_by_b < total,
            "B must not see A's {table} ({seen_by_b} of {total})"
        );
        assert_eq!(
            count_as(None, table).await?,
            0,
            "no tenant set: {table} must be empty"
        );
    }

    // Under B's tenant, A's conversation id matches nothing, and writes into
    // A's tenant are refused by the policy's WITH CHECK.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(b.to_string())
        .execute(&mut *tx)
        .await?;
    let updated = sqlx::query("UPDATE conversation.conversations SET title = 'pwned'")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    assert_eq!(updated, 0);
    let forged = sqlx::query(
        "INSERT INTO conversation.conversations (conversation_id, tenant_id, user_id) VALUES (gen_random_uuid(), $1, 'bob')",
    )
    .bind(a.as_uuid())
    .execute(&mut *tx)
    .await
    .expect_err("WITH CHECK must refuse a row for another tenant");
    assert!(
        forged.to_string().contains("row-level security"),
        "{forged}"
    );
    tx.rollback().await?;

    // The application role is not superuser, not BYPASSRLS, owns nothing.
    let row =
        sqlx::query("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&pool)
            .await?;
    assert!(!row.get::<bool, _>(0) && !row.get::<bool, _>(1));
    Ok(())
}

#[tokio::test]
async fn services_refuse_roles_that_bypass_row_level_security() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    db.migrate().await?;
    let settings = |url: &str| tp_store::DatabaseSettings {
        url: url.to_owned(),
        max_connections: 1,
    };

    let superuser = tp_store::connect_app(&settings(&db.admin_url), "conversation").await;
    assert!(
        matches!(superuser, Err(tp_store::StoreError::UnsafeRole { ref reason, .. }) if reason.contains("superuser")),
        "{superuser:?}"
    );
    let owner = tp_store::connect_app(&settings(&db.owner_url), "conversation").await;
    assert!(
        matches!(owner, Err(tp_store::StoreError::UnsafeRole { ref reason, .. }) if reason.contains("owns")),
        "{owner:?}"
    );
    assert!(
        tp_store::connect_app(&settings(&db.app_url), "conversation")
            .await
            .is_ok()
    );

    // And before migrations, a service will not start at all.
    let empty = TestDatabase::create().await?;
    let unmigrated = tp_store::connect_app(&settings(&empty.app_url), "conversation").await;
    assert!(
        matches!(unmigrated, Err(tp_store::StoreError::NotMigrated(_))),
        "{unmigrated:?}"
    );
    Ok(())
}

/// What a cross-tenant call must come to.
enum Expect {
    /// It names one of A's resources: `NotFound`, as if it did not exist.
    NotFound,
    /// An operator's RPC: refused to a tenant's admin.
    PermissionDenied,
    /// It acts on the caller's own tenant: it may succeed, and its answer
    /// holds nothing of A's.
    OwnTenantOnly,
}

/// Every public RPC the descriptors list, called by tenant B's admin with
/// tenant A's ids wherever a request takes one. Each either fails the way
/// its row says or answers with nothing of A's (no id, user, title or text
/// of A's anywhere in the response bytes); A's data is unchanged after. An
/// RPC added without a row here fails the test.
#[tokio::test]
async fn every_public_rpc_walked_with_another_tenants_ids_reaches_nothing_of_theirs()
-> anyhow::Result<()> {
    use prost::Message;
    use tp_context::Role;

    let app = TestApp::spawn().await?;
    // Tenant A: a conversation with an exchange, a kept profile, a document.
    let (a, alice) = app.tenant_with_member("Tenant A", "alice").await?;
    let a_admin = app.token("alice-admin", Some(a), Role::Admin);
    let secret = "zanzibarquartz";
    let mut a_conversations = app.conversations(&alice).await?;
    let a_conversation = new_conversation(&mut a_conversations, "A-title-hyacinth")
        .await?
        .conversation_id;
    let a_exchange = send(
        &mut a_conversations,
        &a_conversation,
        &format!("I'm a director of 40 engineers; our {secret} migration is stuck."),
        "",
    )
    .await?;
    let a_turn = a_exchange.user().message_id.clone();
    let a_reply = a_exchange.assistant().message_id.clone();
    let a_document = app
        .knowledge(&a_admin)
        .await?
        .create_document(pb::CreateDocumentRequest {
            title: "A-doc-marigold".into(),
            content: format!("# Plan\n\nThe {secret} platform is retired next quarter.")
                .into_bytes(),
            content_type: pb::ContentType::Markdown.into(),
        })
        .await?
        .into_inner()
        .document
        .ok_or_else(|| anyhow::anyhow!("CreateDocument returned no document"))?
        .document_id;
    // A's own search finds A's document, so B's search, below, could.
    let a_found = app
        .knowledge(&a_admin)
        .await?
        .search(pb::SearchRequest {
            query: format!("{secret} platform retired"),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(a_found.results.iter().any(|r| r.entry_id == a_document));
    // And A's transcript search finds A's turn, so B's could.
    let a_hits = a_conversations
        .search_messages(pb::SearchMessagesRequest {
            query: secret.to_owned(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .hits;
    assert!(a_hits.iter().any(|h| h.conversation_id == a_conversation));
    let a_profile_before = a_conversations
        .get_context_profile(pb::GetContextProfileRequest {})
        .await?
        .into_inner();
    let a_rows_before = app.count_rows("conversation.messages").await?;

    // Tenant B's admin walks every RPC.
    let (b, _bob) = app.tenant_with_member("Tenant B", "bob").await?;
    let b_admin = app.token("bob-admin", Some(b), Role::Admin);
    let markers = [
        a.to_string(),
        a_conversation.clone(),
        a_document.clone(),
        "alice".to_owned(),
        secret.to_owned(),
        "A-title-hyacinth".to_owned(),
        "A-doc-marigold".to_owned(),
    ];
    let conversation = || a_conversation.clone();
    let rows: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "/thoughtpartner.v1.ConversationService/CreateConversation",
            pb::CreateConversationRequest {
                title: "B's own".into(),
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.ConversationService/GetConversation",
            pb::GetConversationRequest {
                conversation_id: conversation(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.ConversationService/ListConversations",
            pb::ListConversationsRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.ConversationService/SendMessage",
            pb::SendMessageRequest {
                conversation_id: conversation(),
                content: "injected".into(),
                idempotency_key: String::new(),
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.ConversationService/ListMessages",
            pb::ListMessagesRequest {
                conversation_id: conversation(),
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            // A's turn and A's reply, by id: B's admin finds neither.
            "/thoughtpartner.v1.ConversationService/EditMessage",
            pb::EditMessageRequest {
                message_id: a_turn,
                content: "rewritten".into(),
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.ConversationService/RegenerateReply",
            pb::RegenerateReplyRequest {
                message_id: a_reply,
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.ConversationService/DeleteConversation",
            pb::DeleteConversationRequest {
                conversation_id: conversation(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.ConversationService/GetContextProfile",
            pb::GetContextProfileRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.ConversationService/ClearContextProfile",
            pb::ClearContextProfileRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            // The words of A's transcript, searched by B's admin.
            "/thoughtpartner.v1.ConversationService/SearchMessages",
            pb::SearchMessagesRequest {
                query: secret.to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.ConversationService/ExportConversation",
            pb::ExportConversationRequest {
                conversation_id: conversation(),
                format: pb::ExportFormat::Json.into(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            // B's whole organisation: none of A's conversations in it.
            "/thoughtpartner.v1.ConversationService/ExportTenant",
            pb::ExportTenantRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.SettingsService/GetSettings",
            pb::GetSettingsRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.SettingsService/UpdateSettings",
            pb::UpdateSettingsRequest {
                admins_can_search_all_transcripts: Some(true),
                retention_days: None,
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/Search",
            pb::SearchRequest {
                query: format!("{secret} platform retired"),
                ..Default::default()
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/ListFrameworks",
            pb::ListFrameworksRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/GetFramework",
            pb::GetFrameworkRequest {
                framework_id: "staff-archetypes".into(),
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/CreateDocument",
            pb::CreateDocumentRequest {
                title: "B's doc".into(),
                content: b"# B\n\nB's own plan.".to_vec(),
                content_type: pb::ContentType::Markdown.into(),
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/ListDocuments",
            pb::ListDocumentsRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/GetDocument",
            pb::GetDocumentRequest {
                document_id: a_document.clone(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.KnowledgeService/DeleteDocument",
            pb::DeleteDocumentRequest {
                document_id: a_document.clone(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.MemberService/AddMember",
            pb::AddMemberRequest {
                user_id: "carol".into(),
                role: pb::MemberRole::Member.into(),
            }
            .encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.MemberService/RemoveMember",
            pb::RemoveMemberRequest {
                user_id: "alice".into(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.MemberService/ListMembers",
            pb::ListMembersRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.MemberService/UpdateMemberRole",
            pb::UpdateMemberRoleRequest {
                user_id: "alice".into(),
                role: pb::MemberRole::Admin.into(),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.AuditService/ListAuditEvents",
            pb::ListAuditEventsRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.QuotaService/GetMyQuota",
            pb::GetMyQuotaRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.QuotaService/SetQuota",
            pb::SetQuotaRequest {
                user_id: "alice".into(),
                limits: Some(pb::QuotaLimits {
                    monthly_messages: 1,
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
            Expect::NotFound,
        ),
        (
            "/thoughtpartner.v1.SubscriptionService/GetSubscription",
            pb::GetSubscriptionRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.SubscriptionService/UpdateSeats",
            pb::UpdateSeatsRequest { seats: 7 }.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.SubscriptionService/PreviewInvoice",
            pb::PreviewInvoiceRequest {}.encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.SubscriptionService/GetUsage",
            pb::GetUsageRequest::default().encode_to_vec(),
            Expect::OwnTenantOnly,
        ),
        (
            "/thoughtpartner.v1.TenantAdminService/CreateTenant",
            pb::CreateTenantRequest {
                display_name: "Mine".into(),
                seats: 1,
                admin_user_id: "bob".into(),
            }
            .encode_to_vec(),
            Expect::PermissionDenied,
        ),
        (
            "/thoughtpartner.v1.TenantAdminService/GetTenant",
            pb::GetTenantRequest {
                tenant_id: a.to_string(),
            }
            .encode_to_vec(),
            Expect::PermissionDenied,
        ),
        (
            "/thoughtpartner.v1.TenantAdminService/SuspendTenant",
            pb::SuspendTenantRequest {
                tenant_id: a.to_string(),
                reason: "hostile".into(),
            }
            .encode_to_vec(),
            Expect::PermissionDenied,
        ),
        (
            "/thoughtpartner.v1.TenantAdminService/ReactivateTenant",
            pb::ReactivateTenantRequest {
                tenant_id: a.to_string(),
            }
            .encode_to_vec(),
            Expect::PermissionDenied,
        ),
        (
            "/thoughtpartner.v1.OperationsService/GetSloStatus",
            pb::GetSloStatusRequest {
                tenant_id: a.to_string(),
            }
            .encode_to_vec(),
            Expect::PermissionDenied,
        ),
    ];

    let methods = tp_e2e::raw::public_methods();
    let listed: std::collections::BTreeSet<&str> =
        methods.iter().map(|(m, _)| m.as_str()).collect();
    let walked: std::collections::BTreeSet<&str> = rows.iter().map(|(m, _, _)| *m).collect();
    assert_eq!(
        walked, listed,
        "every public RPC has exactly one row in this walk"
    );

    for (method, body, expect) in rows {
        let streaming = methods.iter().any(|(m, s)| m == method && *s);
        let answer =
            tp_e2e::raw::call_raw(app.channel().await?, method, &b_admin, body, streaming).await?;
        match (expect, answer) {
            (Expect::NotFound, Err(status)) => {
                assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}")
            }
            (Expect::PermissionDenied, Err(status)) => {
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{method}: {status:?}"
                )
            }
            (Expect::OwnTenantOnly, Ok(bytes)) => {
                let text = String::from_utf8_lossy(&bytes);
                for marker in &markers {
                    assert!(
                        !text.contains(marker.as_str()),
                        "{method} answered with A's `{marker}`"
                    );
                }
            }
            (_, Ok(_)) => panic!("{method} succeeded across tenants"),
            (Expect::OwnTenantOnly, Err(status)) => {
                panic!("{method} on B's own tenant failed: {status:?}")
            }
        }
    }

    // A's data is as it was.
    assert_eq!(
        app.count_rows("conversation.messages").await?,
        a_rows_before
    );
    let a_profile_after = a_conversations
        .get_context_profile(pb::GetContextProfileRequest {})
        .await?
        .into_inner();
    assert_eq!(
        a_profile_after, a_profile_before,
        "B's ClearContextProfile left A's alone"
    );
    let mut a_knowledge = app.knowledge(&a_admin).await?;
    a_knowledge
        .get_document(pb::GetDocumentRequest {
            document_id: a_document,
        })
        .await?;
    let a_members = app
        .members(&a_admin)
        .await?
        .list_members(pb::ListMembersRequest::default())
        .await?
        .into_inner();
    let alice_row = a_members
        .members
        .iter()
        .find(|m| m.user_id == "alice")
        .ok_or_else(|| anyhow::anyhow!("alice is still A's member"))?;
    assert_eq!(
        alice_row.role,
        i32::from(pb::MemberRole::Member),
        "alice's role unchanged"
    );
    let a_seats = app
        .subscriptions(&a_admin)
        .await?
        .get_subscription(pb::GetSubscriptionRequest {})
        .await?
        .into_inner()
        .subscription
        .map(|s| s.seats);
    assert_eq!(a_seats, Some(5), "A's seats unchanged by B's UpdateSeats");
    let a_settings = app
        .settings(&a_admin)
        .await?
        .get_settings(pb::GetSettingsRequest {})
        .await?
        .into_inner()
        .settings
        .map(|s| s.admins_can_search_all_transcripts);
    assert_eq!(
        a_settings,
        Some(false),
        "A's settings unchanged by B's UpdateSettings"
    );
    let mut a_client = app.conversations(&alice).await?;
    a_client
        .get_conversation(pb::GetConversationRequest {
            conversation_id: a_conversation,
        })
        .await?;

    // In the database, after all that: every table of the three schemas
    // holds tenant rows under forced row-level security, or is one of the
    // few global ones; and a session under B's tenant sees none of A's rows
    // in any of them, while A's are there.
    let admin = TestDatabase::pool(&app.db.admin_url).await?;
    let tables: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity,
                EXISTS (SELECT 1 FROM information_schema.columns col
                         WHERE col.table_schema = n.nspname AND col.table_name = c.relname
                           AND col.column_name = 'tenant_id')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('gateway', 'conversation', 'knowledge')
          ORDER BY 1",
    )
    .fetch_all(&admin)
    .await?;
    // Migrations bookkeeping and the built-in corpus, the same for everyone.
    const GLOBAL: [&str; 4] = [
        "conversation._sqlx_migrations",
        "gateway._sqlx_migrations",
        "knowledge._sqlx_migrations",
        "knowledge.entries",
    ];
    let app_pool = TestDatabase::pool(&app.db.app_url).await?;
    let mut holding_a_rows = Vec::new();
    for (table, rls, forced, has_tenant) in &tables {
        if GLOBAL.contains(&table.as_str()) {
            assert!(!has_tenant, "{table} is global, yet has a tenant_id");
            continue;
        }
        assert!(
            *has_tenant && *rls && *forced,
            "{table}: a tenant_id column under forced row-level security"
        );
        let count_of = |tenant: String| {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table} WHERE tenant_id::text = $1"
            )))
            .bind(tenant)
        };
        if count_of(a.to_string()).fetch_one(&admin).await? > 0 {
            holding_a_rows.push(table.clone());
        }
        let mut tx = app_pool.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(b.to_string())
            .execute(&mut *tx)
            .await?;
        let seen = count_of(a.to_string()).fetch_one(&mut *tx).await?;
        tx.rollback().await?;
        assert_eq!(seen, 0, "under B's tenant, {table} shows A's rows");
    }
    assert!(
        holding_a_rows.len() >= 10,
        "A's rows are in most tables, so the check saw them hidden: {holding_a_rows:?}"
    );
    Ok(())
}
