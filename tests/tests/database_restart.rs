//! PostgreSQL stops under load and comes back: while it is down, calls fail
//! fast with `Unavailable`; afterwards the services recover by themselves
//! (no restart); and every turn acknowledged to a client is in the
//! database, counted exactly.
//!
//! It stops the test cluster itself (`TP_TEST_PG_CTL`, set by
//! `deploy/local/test`), so it lives alone in this test binary: cargo runs
//! test binaries one at a time, and no other test is using the cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use tp_e2e::TestDatabase;
use tp_e2e::{TestApp, new_conversation, send};

const WORKERS: usize = 8;
const LOAD: Duration = Duration::from_secs(10);
const DOWN_AFTER: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(4);
/// How long the failed turns may take to complete once the database is back.
const RECOVERY: Duration = Duration::from_secs(10);

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

#[derive(Default)]
struct Outcomes {
    /// Idempotency key → (user message id, assistant message id), for
    /// every exchange a client saw completed.
    acknowledged: BTreeMap<String, (String, String)>,
    /// Keys whose call failed, to be retried once the database is back.
    failed: Vec<(String, String, usize)>,
    /// Each failure's status code and how long the call took to fail.
    failures: Vec<(Code, Duration)>,
    /// The longest any call took, failed or not.
    slowest_call: Duration,
}

#[tokio::test]
async fn acknowledged_turns_survive_a_database_restart_under_load() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (tenant, first_token) = app.tenant_with_member("Acme", "member-0").await?;
    let mut senders = vec![first_token];
    let admin = app.token("member-0-admin", Some(tenant), tp_context::Role::Admin);
    let mut members = app.members(&admin).await?;
    for i in 1..WORKERS / 2 {
        let member = format!("member-{i}");
        members
            .add_member(tp_e2e::tp_proto::v1::AddMemberRequest {
                user_id: member.clone(),
                role: tp_e2e::tp_proto::v1::MemberRole::Member.into(),
            })
            .await?;
        senders.push(app.token(&member, Some(tenant), tp_context::Role::Member));
    }
    let mut conversations = Vec::new();
    for worker in 0..WORKERS {
        let token = senders[worker % senders.len()].clone();
        let mut client = app.conversations(&token).await?;
        let id = new_conversation(&mut client, &format!("worker {worker}"))
            .await?
            .conversation_id;
        conversations.push((token, id));
    }

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let started = Instant::now();
    let workers: Vec<_> = conversations
        .iter()
        .cloned()
        .enumerate()
        .map(|(worker, (token, id))| {
            let outcomes = outcomes.clone();
            let gateway = app.gateway_addr;
            tokio::spawn(async move {
                let mut client = tp_e2e::conversations_via(gateway, &token).await?;
                let mut turn = 0;
                while started.elapsed() < LOAD {
                    let key = format!("w{worker}-t{turn}");
                    let content = format!(
                        "Turn {turn}: how do I grow my staff engineers? We're 80 engineers."
                    );
                    let call = Instant::now();
                    let result = send(&mut client, &id, &content, &key).await;
                    let took = call.elapsed();
                    {
                        let mut outcomes = outcomes.lock().expect("lock");
                        outcomes.slowest_call = outcomes.slowest_call.max(took);
                        match result {
                            Ok(exchange) => {
                                outcomes.acknowledged.insert(
                                    key,
                                    (
                                        exchange.user().message_id.clone(),
                                        exchange.assistant().message_id.clone(),
                                    ),
                                );
                            }
                            Err(status) => {
                                outcomes.failures.push((status.code(), took));
                                outcomes.failed.push((key, content, worker));
                            }
                        }
                    }
                    turn += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(())
            })
        })
        .collect();

    tokio::time::sleep(DOWN_AFTER).await;
    let stopped = Instant::now();
    pg_ctl("stop -m fast -w").await?;
    tokio::time::sleep(OUTAGE).await;
    // `restart` on a stopped cluster starts it with the options it last ran with.
    pg_ctl("restart -w").await?;
    let outage = stopped.elapsed();
    for worker in workers {
        worker.await??;
    }

    let mut outcomes = std::mem::take(&mut *outcomes.lock().expect("lock"));
    assert!(
        !outcomes.failures.is_empty(),
        "calls failed during the outage (else nothing was tested)"
    );
    let mut codes = BTreeMap::new();
    for (code, _) in &outcomes.failures {
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    assert!(
        outcomes
            .failures
            .iter()
            .all(|(code, _)| *code == Code::Unavailable),
        "every failure is Unavailable: {codes:?}"
    );
    let slowest = outcomes
        .failures
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
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
    let recovery = Instant::now();
    let deadline = recovery + RECOVERY;
    let failed = std::mem::take(&mut outcomes.failed);
    let retried = tokio::time::timeout(RECOVERY, async {
        let mut retried = Vec::new();
        for (key, content, worker) in failed {
            let (token, id) = &conversations[worker];
            let mut client = app.conversations(token).await?;
            let exchange = loop {
                match send(&mut client, id, &content, &key).await {
                    Ok(exchange) => break exchange,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => anyhow::bail!("no recovery within {RECOVERY:?}: {status:?}"),
                }
            };
            retried.push((key, exchange));
        }
        anyhow::Ok(retried)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the failed turns did not all complete within {RECOVERY:?}"))??;
    let recovered_in = recovery.elapsed();
    for (key, exchange) in retried {
        outcomes.acknowledged.insert(
            key,
            (
                exchange.user().message_id.clone(),
                exchange.assistant().message_id.clone(),
            ),
        );
    }

    // Exactly one user turn and one reply per key, and every acknowledged
    // message is stored.
    let pool = TestDatabase::pool(&app.db.admin_url).await?;
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT message_id::text, role, idempotency_key FROM conversation.messages")
            .fetch_all(&pool)
            .await?;
    pool.close().await;
    let users = rows.iter().filter(|(_, role, _)| role == "user").count();
    let replies = rows
        .iter()
        .filter(|(_, role, _)| role == "assistant")
        .count();
    assert_eq!(users, outcomes.acknowledged.len(), "one user turn per key");
    assert_eq!(replies, outcomes.acknowledged.len(), "one reply per key");
    let stored: std::collections::HashSet<&str> =
        rows.iter().map(|(id, _, _)| id.as_str()).collect();
    for (key, (user, assistant)) in &outcomes.acknowledged {
        assert!(stored.contains(user.as_str()), "{key}: user turn lost");
        assert!(stored.contains(assistant.as_str()), "{key}: reply lost");
    }
    eprintln!(
        "{} exchanges acknowledged, {} calls failed during a {outage:?} outage ({codes:?}), slowest failure {slowest:?}, slowest call {:?}; every failed turn completed {recovered_in:?} after the restart",
        outcomes.acknowledged.len(),
        outcomes.failures.len(),
        outcomes.slowest_call,
    );
    Ok(())
}
