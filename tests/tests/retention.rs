//! Retention: an organisation that keeps conversations for N days has the
//! older ones deleted for good by the background job (rows, messages and
//! search entries), with an audit entry and metrics; recent conversations
//! and other organisations are untouched; a retention below the minimum is
//! refused with nothing changed. And the one cross-tenant read the job
//! needs opens nothing else.

use std::time::{Duration, Instant};

use tonic::Code;
use tp_context::{Role, TenantId};
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, TestDatabase, new_conversation, send};

/// Makes a conversation's last turn `days` old, as the schema owner.
async fn age(app: &TestApp, tenant: TenantId, conversation: &str, days: i32) -> anyhow::Result<()> {
    let owner = TestDatabase::pool(&app.db.owner_url).await?;
    let mut tx = owner.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE conversation.conversations SET update_time = now() - make_interval(days => $2)
          WHERE conversation_id = $1::uuid",
    )
    .bind(conversation)
    .bind(days)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    owner.close().await;
    Ok(())
}

async fn conversations_of(app: &TestApp, tenant: TenantId) -> anyhow::Result<Vec<String>> {
    let admin = TestDatabase::pool(&app.db.admin_url).await?;
    let ids = sqlx::query_scalar(
        "SELECT conversation_id::text FROM conversation.conversations WHERE tenant_id = $1
          ORDER BY conversation_id",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&admin)
    .await?;
    admin.close().await;
    Ok(ids)
}

#[tokio::test]
async fn expired_conversations_are_deleted_for_good_and_audited() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, alice) = app.tenant_with_member("Keeps a week", "alice").await?;
    let admin = app.token("alice-admin", Some(tenant), Role::Admin);
    let (other, olga) = app.tenant_with_member("Keeps everything", "olga").await?;
    let mut a = app.conversations(&alice).await?;
    let mut o = app.conversations(&olga).await?;

    let mut old = Vec::new();
    for n in 0..3 {
        let id = new_conversation(&mut a, &format!("Old {n}"))
            .await?
            .conversation_id;
        send(&mut a, &id, "The wombat migration slipped again.", "").await?;
        age(&app, tenant, &id, 10).await?;
        old.push(id);
    }
    let recent = new_conversation(&mut a, "Recent").await?.conversation_id;
    send(
        &mut a,
        &recent,
        "The wombat migration is back on track.",
        "",
    )
    .await?;
    let theirs = new_conversation(&mut o, "Ancient").await?.conversation_id;
    send(&mut o, &theirs, "A wombat from long ago.", "").await?;
    age(&app, other, &theirs, 400).await?;

    let mut settings = app.settings(&admin).await?;
    // Below the minimum: refused, nothing changed.
    let refused = settings
        .update_settings(pb::UpdateSettingsRequest {
            admins_can_search_all_transcripts: None,
            retention_days: Some(3),
        })
        .await
        .expect_err("3 days is below the minimum");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("between 7 and 3650"),
        "{refused:?}"
    );
    let unchanged = settings
        .get_settings(pb::GetSettingsRequest {})
        .await?
        .into_inner()
        .settings
        .map(|s| s.retention_days);
    assert_eq!(unchanged, Some(0), "still kept forever");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        conversations_of(&app, tenant).await?.len(),
        4,
        "nothing deleted without a retention"
    );

    let set = settings
        .update_settings(pb::UpdateSettingsRequest {
            admins_can_search_all_transcripts: None,
            retention_days: Some(7),
        })
        .await?
        .into_inner()
        .settings
        .map(|s| s.retention_days);
    assert_eq!(set, Some(7));

    // The job runs every second in the test stack; wait for its pass.
    let started = Instant::now();
    let remaining = loop {
        let remaining = conversations_of(&app, tenant).await?;
        if remaining.len() < 4 || started.elapsed() > Duration::from_secs(15) {
            break remaining;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        remaining,
        std::slice::from_ref(&recent),
        "only the recent conversation is kept"
    );
    assert_eq!(
        conversations_of(&app, other).await?,
        [theirs],
        "another organisation keeps its own"
    );

    // Deletion is real: no message row, no search entry.
    let admin_pool = TestDatabase::pool(&app.db.admin_url).await?;
    for id in &old {
        let messages: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM conversation.messages WHERE conversation_id = $1::uuid",
        )
        .bind(id)
        .fetch_one(&admin_pool)
        .await?;
        assert_eq!(messages, 0, "messages of {id}");
    }
    let found = a
        .search_messages(pb::SearchMessagesRequest {
            query: "wombat".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .hits;
    assert!(!found.is_empty() && found.iter().all(|h| h.conversation_id == recent));

    // Audited, with how many went.
    let events = app
        .audit(&admin)
        .await?
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await?
        .into_inner()
        .events;
    let purged: f64 = events
        .iter()
        .filter(|e| e.action == "retention.purged" && e.actor == "system:retention")
        .filter_map(|e| e.after.as_ref()?.fields.get("conversations_deleted"))
        .filter_map(|v| match v.kind {
            Some(prost_types::value::Kind::NumberValue(n)) => Some(n),
            _ => None,
        })
        .sum();
    assert_eq!(purged, 3.0, "{events:?}");
    assert!(events.iter().any(|e| e.action == "settings.updated"));

    // Counted.
    let metrics = reqwest_get(&format!("http://{}/metrics", app.gateway_http_addr)).await?;
    assert!(
        metrics.contains("tp_retention_deleted_total{tp_retention_kind=\"conversation\"} 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("retention"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("tp_retention_run_duration_seconds_count{tp_retention_outcome=\"ok\"}")
    );
    Ok(())
}

async fn reqwest_get(url: &str) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::get(url).await?.text().await?)
}

#[tokio::test]
async fn the_sweeps_cross_tenant_read_opens_nothing_else() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (keeping, alice) = app.tenant_with_member("Keeps a year", "alice").await?;
    let (_forever, _bob) = app.tenant_with_member("Keeps everything", "bob").await?;
    let mut a = app.conversations(&alice).await?;
    let id = new_conversation(&mut a, "Kept").await?.conversation_id;
    send(&mut a, &id, "Hello.", "").await?;
    app.settings(&app.token("alice-admin", Some(keeping), Role::Admin))
        .await?
        .update_settings(pb::UpdateSettingsRequest {
            admins_can_search_all_transcripts: None,
            retention_days: Some(365),
        })
        .await?;

    let app_pool = TestDatabase::pool(&app.db.app_url).await?;
    let mut tx = app_pool.begin().await?;
    sqlx::query("SELECT set_config('app.sweep', 'retention', true)")
        .execute(&mut *tx)
        .await?;
    let listed: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT tenant_id FROM gateway.tenants")
        .fetch_all(&mut *tx)
        .await?;
    assert_eq!(
        listed,
        [keeping.as_uuid()],
        "only organisations with a retention"
    );
    for table in [
        "gateway.members",
        "gateway.audit_events",
        "conversation.conversations",
        "conversation.messages",
        "knowledge.documents",
    ] {
        let seen: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await?;
        assert_eq!(seen, 0, "the sweep's setting opens {table}");
    }
    // And it cannot write the rows it sees.
    let updated = sqlx::query("UPDATE gateway.tenants SET seats = 99")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    assert_eq!(updated, 0);
    tx.rollback().await?;

    // Without it, as before: nothing.
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM gateway.tenants")
        .fetch_one(&app_pool)
        .await?;
    assert_eq!(none, 0);
    Ok(())
}
