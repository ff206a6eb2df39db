//! The gateway caches memberships; a removal must still reach every
//! gateway at once. Each test runs a second gateway (a replica) on the same
//! database, whose cache would otherwise keep a membership for minutes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tonic::Code;
use tp_context::Role;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, conversations_via};

/// Calls as `token` through `gateway`; the status code of the answer.
async fn list_status(gateway: SocketAddr, token: &str) -> anyhow::Result<Code> {
    let answer = conversations_via(gateway, token)
        .await?
        .list_conversations(pb::ListConversationsRequest::default())
        .await;
    Ok(match answer {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    })
}

/// Polls until `gateway` refuses `token`; how long that took.
async fn refused_within(
    gateway: SocketAddr,
    token: &str,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let code = list_status(gateway, token).await?;
        if code == Code::PermissionDenied {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(code == Code::Ok, "unexpected status {code:?}");
        anyhow::ensure!(
            started.elapsed() < limit,
            "the gateway still admits the removed member after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_member_removed_through_one_gateway_is_refused_by_the_others() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let replica = app.spawn_gateway(300).await?;
    assert_eq!(list_status(replica, &token).await?, Code::Ok);

    app.members(&app.token("alice-admin", Some(tenant), Role::Admin))
        .await?
        .remove_member(pb::RemoveMemberRequest {
            user_id: "alice".into(),
        })
        .await?;

    // The gateway that removed her forgets at once; the replica as soon as
    // the notification arrives, long before its five-minute time to live.
    assert_eq!(
        list_status(app.gateway_addr, &token).await?,
        Code::PermissionDenied
    );
    refused_within(replica, &token, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test]
async fn a_membership_deleted_in_sql_is_forgotten_too() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let replica = app.spawn_gateway(300).await?;
    assert_eq!(list_status(replica, &token).await?, Code::Ok);

    // As an operator would, by hand; row-level security applies to the
    // owner too, so under the tenant's setting.
    let mut conn = tp_e2e::TestDatabase::tenant_session(&app.db.owner_url, tenant).await?;
    let deleted = sqlx::query("DELETE FROM gateway.members WHERE user_id = 'alice'")
        .execute(&mut *conn)
        .await?
        .rows_affected();
    drop(conn);
    assert_eq!(deleted, 1);

    refused_within(replica, &token, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test]
async fn a_missed_notification_is_bounded_by_the_time_to_live() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, token) = app.tenant_with_member("Acme", "alice").await?;
    let replica = app.spawn_gateway(2).await?;
    assert_eq!(list_status(replica, &token).await?, Code::Ok);

    // Delete without firing triggers, so no notification is sent.
    let admin = tp_e2e::TestDatabase::pool(&app.db.admin_url).await?;
    let mut conn = admin.acquire().await?;
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM gateway.members WHERE user_id = 'alice'")
        .execute(&mut *conn)
        .await?;
    drop(conn);

    // Served from the cache: proof that the replica caches at all...
    assert_eq!(list_status(replica, &token).await?, Code::Ok);
    // ...until the two-second time to live runs out.
    refused_within(replica, &token, Duration::from_secs(20)).await?;
    Ok(())
}
