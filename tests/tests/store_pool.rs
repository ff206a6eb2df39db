//! The services' connection pool (`tp_store::Pool`) against a real
//! PostgreSQL: a connection released clean goes straight back; anything
//! else is rolled back and checked before it is handed out again, and an
//! abandoned transaction's locks do not wait for the next checkout.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tp_context::TenantId;
use tp_e2e::TestDatabase;
use tp_store::{ACQUIRE_TIMEOUT, Pool, TxTimer};

async fn backend_pid(connection: &mut sqlx::PgConnection) -> anyhow::Result<i32> {
    Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(connection)
        .await?)
}

/// Polls `check` on the superuser's own connection (never the pool's) for
/// up to 3 s.
async fn eventually(
    admin: &mut sqlx::PgConnection,
    statement: &'static str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let done: bool = sqlx::query_scalar(statement).fetch_one(&mut *admin).await?;
        if done {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3),
            "still not true after 3 s: {statement}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_clean_release_goes_straight_back_and_is_reused() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let pool = Pool::new(&db.app_url, 1, ACQUIRE_TIMEOUT)?;
    let mut connection = pool.acquire().await?;
    let first = backend_pid(&mut connection).await?;
    connection.release();
    // Back at once: no clean-up round trip between the release and here.
    assert_eq!(pool.status().idle, 1);
    let mut again = pool.acquire().await?;
    assert_eq!(backend_pid(&mut again).await?, first);
    again.release();

    // A committed transaction goes back at once too.
    let timer = TxTimer::disabled();
    let mut tx = timer.begin(&pool, TenantId::new_random(), "test").await?;
    assert_eq!(backend_pid(&mut tx).await?, first);
    tx.commit().await?;
    assert_eq!(pool.status().idle, 1);
    Ok(())
}

#[tokio::test]
async fn an_abandoned_transaction_is_rolled_back_without_waiting_for_the_next_checkout()
-> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let mut admin = sqlx::PgConnection::connect(&db.admin_url).await?;
    let pool = Pool::new(&db.app_url, 1, ACQUIRE_TIMEOUT)?;
    let tenant = TenantId::new_random();

    let mut tx = tp_store::begin_tenant_tx(&pool, tenant).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(4242)")
        .execute(&mut *tx)
        .await?;
    // Held while the transaction is open.
    let held: bool = sqlx::query_scalar("SELECT NOT pg_try_advisory_xact_lock(4242)")
        .fetch_one(&mut admin)
        .await?;
    assert!(held);
    // Dropped without a commit (an early return, a cancelled call): the
    // lock goes with the rollback, and nobody has to use the pool again
    // for that to happen.
    drop(tx);
    eventually(&mut admin, "SELECT pg_try_advisory_xact_lock(4242)").await?;

    // The connection is back outside any transaction, and the next user
    // does not see the abandoned one's tenant.
    eventually(
        &mut admin,
        "SELECT count(*) = 1 FROM pg_stat_activity WHERE usename = 'tp_app' AND state = 'idle'",
    )
    .await?;
    let mut next = pool.acquire().await?;
    let tenant_setting: Option<String> =
        sqlx::query_scalar("SELECT nullif(current_setting('app.tenant_id', true), '')")
            .fetch_one(&mut *next)
            .await?;
    assert_eq!(tenant_setting, None);
    next.release();

    // A transaction's writes survive only its commit.
    let timer = TxTimer::disabled();
    let mut kept = timer.begin(&pool, tenant, "test").await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7)")
        .execute(&mut *kept)
        .await?;
    kept.commit().await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(7)")
        .fetch_one(&mut admin)
        .await?;
    assert!(free, "a committed transaction releases its locks");
    Ok(())
}

#[tokio::test]
async fn a_connection_whose_backend_died_is_replaced() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let mut admin = sqlx::PgConnection::connect(&db.admin_url).await?;
    let pool = Pool::new(&db.app_url, 1, ACQUIRE_TIMEOUT)?;
    let timer = TxTimer::disabled();

    // Killed while in use: the call fails, and the connection is discarded
    // on its way back rather than handed to the next call.
    let mut tx = timer.begin(&pool, TenantId::new_random(), "test").await?;
    let doomed = backend_pid(&mut tx).await?;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(doomed)
        .execute(&mut admin)
        .await?;
    eventually(
        &mut admin,
        "SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = 'tp_app'",
    )
    .await?;
    assert!(backend_pid(&mut tx).await.is_err());
    drop(tx);
    let mut next = timer.begin(&pool, TenantId::new_random(), "test").await?;
    let replacement = backend_pid(&mut next).await?;
    assert_ne!(replacement, doomed);
    next.commit().await?;

    // Killed while idle in the pool: a connection idle for over a second
    // is checked on its way out, and replaced.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(replacement)
        .execute(&mut admin)
        .await?;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut fresh = pool.acquire().await?;
    let third = backend_pid(&mut fresh).await?;
    assert_ne!(third, replacement);
    fresh.release();
    Ok(())
}
