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
        .err()
        .expect("B cannot post to A's conversation");
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
