//! PostgreSQL stops under load and comes back: while it is down, calls fail
//! fast with `Unavailable`; afterwards the services recover by themselves
//! (no restart); and every turn acknowledged to a client is in the
//! database, counted exactly. The services are real processes; the load
//! is eight streams sending through the gateway.
//!
//! It stops the test cluster itself (`TP_TEST_PG_CTL`, set by
//! `deploy/local/test`), so it lives alone in this test binary: cargo runs
//! test binaries one at a time, and no other test is using the cluster.

use std::time::{Duration, Instant};

use tonic::Code;
use tp_e2e::load::{Senders, assert_exactly_acknowledged_stored};
use tp_e2e::processes::ProcessStack;

/// The three services run as their own processes, as in production.
const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

const WORKERS: usize = 8;
const LOAD: Duration = Duration::from_secs(10);
const DOWN_AFTER: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(4);
/// How long the failed turns may take to complete once the database is back.
const RECOVERY: Duration = Duration::from_secs(10);
/// Each call's `grpc-timeout`: far above how long a call may take to fail.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Runs `pg_ctl` on the test cluster with `args`.
async fn pg_ctl(args: &str) -> anyhow::Result<()> {
    let ctl = std::env::var("TP_TEST_PG_CTL").map_err(|_| {
        anyhow::anyhow!("TP_TEST_PG_CTL is not set: run the suite with deploy/local/test")
    })?;
    // Not `output()`: the server `restart` starts inherits pg_ctl's stdout
    // and stderr, so captured pipes would stay open as long as it runs.
    // Its log goes nowhere after the restart; the status says if it failed.
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {args}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(90), status)
        .await
        .map_err(|_| anyhow::anyhow!("`{ctl} {args}` did not finish in 90 s"))??;
    anyhow::ensure!(
        status.success(),
        "`{ctl} {args}` failed ({status}); see the cluster's server.log"
    );
    Ok(())
}

#[tokio::test]
async fn acknowledged_turns_survive_a_database_restart_under_load() -> anyhow::Result<()> {
    let app = ProcessStack::start(SERVICE_BINARY, Vec::new()).await?;
    let senders = Senders::create(&app, WORKERS, WORKERS / 2).await?;
    let load = senders.run(&app, LOAD, CALL_DEADLINE);

    tokio::time::sleep(DOWN_AFTER).await;
    let stopped = Instant::now();
    pg_ctl("stop -m fast -w").await?;
    tokio::time::sleep(OUTAGE).await;
    // `restart` on a stopped cluster starts it with the options it last ran with.
    pg_ctl("restart -w").await?;
    let outage = stopped.elapsed();
    let mut outcomes = load.finish().await?;

    assert!(
        !outcomes.failed.is_empty(),
        "calls failed during the outage (else nothing was tested)"
    );
    let codes = outcomes.codes();
    assert!(
        outcomes.failed.iter().all(|f| f.code == Code::Unavailable),
        "every failure is Unavailable: {codes:?}"
    );
    let slowest = outcomes.slowest_failure();
    // No call waited for the database to come back. A call reaches the
    // database at most twice in a row before it can fail (knowledge's
    // retrieval, which the reply then goes without, and conversation's
    // store), each waiting at most the pool's acquire timeout.
    let bound = 2 * tp_store::ACQUIRE_TIMEOUT + Duration::from_millis(500);
    assert!(
        outcomes.slowest_call < bound && bound < OUTAGE,
        "calls fail fast while the database is down: slowest call {:?}, slowest failure {slowest:?}, outage {outage:?}",
        outcomes.slowest_call
    );

    // The same services, never restarted, serve again: every failed turn is
    // retried with its key until it completes, all within seconds (a turn
    // whose reply lease was left held would wait out the lease instead).
    let recovered_in = senders.retry_failed(&app, &mut outcomes, RECOVERY).await?;

    // Exactly one user turn and one reply per key, and every acknowledged
    // message is stored.
    assert_exactly_acknowledged_stored(&app.db, &outcomes).await?;
    eprintln!(
        "{} exchanges acknowledged, {} calls failed during a {outage:?} outage ({codes:?}), slowest failure {slowest:?}, slowest call {:?}; every failed turn completed {recovered_in:?} after the restart",
        outcomes.acknowledged.len(),
        outcomes.failed.len(),
        outcomes.slowest_call,
    );
    Ok(())
}
