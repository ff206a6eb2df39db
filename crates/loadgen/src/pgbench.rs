//! The database's own limit: `pgbench` running the statements one
//! SendMessage issues (`pgbench/send_message.sql`), as the application
//! role, at the same concurrency, against the same database.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::process::Command;

use crate::workers::Sender;

/// The statements of one SendMessage with the offline coach, both
/// transactions, in order (see the comments in the file).
pub const SEND_MESSAGE_SCRIPT: &str = include_str!("../pgbench/send_message.sql");

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PgbenchResult {
    pub clients: usize,
    pub seconds: f64,
    /// Scripts (whole SendMessages) per second.
    pub rate_per_sec: f64,
    pub latency_avg_ms: f64,
    pub failed: u64,
}

impl PgbenchResult {
    /// Several runs as one: their rates and latencies weighted by their
    /// seconds; `None` for no runs.
    pub fn combined(runs: &[PgbenchResult]) -> Option<PgbenchResult> {
        let first = runs.first()?;
        let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
        if seconds <= 0.0 {
            return None;
        }
        let weighted = |value: fn(&PgbenchResult) -> f64| -> f64 {
            runs.iter().map(|r| value(r) * r.seconds).sum::<f64>() / seconds
        };
        Some(PgbenchResult {
            clients: first.clients,
            seconds,
            rate_per_sec: weighted(|r| r.rate_per_sec),
            latency_avg_ms: weighted(|r| r.latency_avg_ms),
            failed: runs.iter().map(|r| r.failed).sum(),
        })
    }
}

/// Finds `pgbench`: on the PATH, or beside Debian's PostgreSQL server.
pub fn find() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin/pgbench"))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .context("pgbench not found on the PATH or under /usr/lib/postgresql/*/bin (Debian's postgresql package has it)")
}

/// Gives each pgbench client (`:client_id`, 0-based) its own member and
/// conversation, as each load worker has: a table the script reads in the
/// same statement that sets the tenant.
pub async fn prepare_targets(owner: &PgPool, senders: &[Sender]) -> anyhow::Result<()> {
    sqlx::query("CREATE SCHEMA IF NOT EXISTS loadgen")
        .execute(owner)
        .await?;
    sqlx::query("DROP TABLE IF EXISTS loadgen.pgbench_targets")
        .execute(owner)
        .await?;
    sqlx::query(
        "CREATE TABLE loadgen.pgbench_targets (
            client_id int PRIMARY KEY, tenant_id uuid NOT NULL,
            conversation_id uuid NOT NULL, user_id text NOT NULL)",
    )
    .execute(owner)
    .await?;
    sqlx::query("GRANT USAGE ON SCHEMA loadgen TO tp_app")
        .execute(owner)
        .await?;
    sqlx::query("GRANT SELECT ON loadgen.pgbench_targets TO tp_app")
        .execute(owner)
        .await?;
    for (client_id, sender) in senders.iter().enumerate() {
        sqlx::query("INSERT INTO loadgen.pgbench_targets VALUES ($1, $2, $3::uuid, $4)")
            .bind(i32::try_from(client_id)?)
            .bind(sender.member.tenant_id.as_uuid())
            .bind(&sender.conversation_id)
            .bind(&sender.member.user_id)
            .execute(owner)
            .await?;
    }
    Ok(())
}

/// Runs the script with `clients` connections for `seconds`, prepared
/// statements (as sqlx uses them), two threads (the machine's cores).
pub async fn run(
    pgbench: &Path,
    script: &Path,
    host: &str,
    port: u16,
    database: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<PgbenchResult> {
    let output = Command::new(pgbench)
        .args(["--no-vacuum", "--protocol=prepared", "--jobs=2"])
        .arg(format!("--client={clients}"))
        .arg(format!("--time={}", seconds.max(1)))
        .arg(format!("--file={}", script.display()))
        .args([
            "--host",
            host,
            "--port",
            &port.to_string(),
            "--username",
            "tp_app",
            database,
        ])
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
    }
    parse(&stdout, clients, seconds as f64)
}

/// Reads pgbench's summary.
pub fn parse(stdout: &str, clients: usize, seconds: f64) -> anyhow::Result<PgbenchResult> {
    let number_after = |prefix: &str| -> Option<f64> {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let rate_per_sec = number_after("tps = ").context("pgbench printed no tps")?;
    let transactions = number_after("number of transactions actually processed:").unwrap_or(0.0);
    if transactions < 1.0 {
        bail!("pgbench processed no transactions:\n{stdout}");
    }
    Ok(PgbenchResult {
        clients,
        seconds,
        rate_per_sec,
        latency_avg_ms: number_after("latency average = ").unwrap_or(f64::NAN),
        failed: number_after("number of failed transactions:").unwrap_or(0.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "pgbench (15.8 (Debian 15.8-0+deb12u1))
transaction type: send_message.sql
scaling factor: 1
query mode: prepared
number of clients: 32
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 12345
number of failed transactions: 0 (0.000%)
latency average = 25.918 ms
initial connection time = 41.017 ms
tps = 1234.567890 (without initial connection time)
";

    #[test]
    fn reads_the_summary() {
        let r = parse(PGBENCH_15, 32, 10.0).expect("parses");
        assert!((r.rate_per_sec - 1234.56789).abs() < 1e-6);
        assert!((r.latency_avg_ms - 25.918).abs() < 1e-9);
        assert_eq!(r.failed, 0);
    }

    #[test]
    fn runs_combine_weighted_by_their_seconds() {
        let run = |seconds, rate_per_sec, failed| PgbenchResult {
            clients: 32,
            seconds,
            rate_per_sec,
            latency_avg_ms: 32.0 * 1000.0 / rate_per_sec,
            failed,
        };
        let all = PgbenchResult::combined(&[run(10.0, 1000.0, 1), run(30.0, 1400.0, 2)])
            .expect("two runs");
        assert_eq!(all.seconds, 40.0);
        assert!((all.rate_per_sec - 1300.0).abs() < 1e-9, "{all:?}");
        assert_eq!(all.failed, 3);
        assert_eq!(all.clients, 32);
        assert!(PgbenchResult::combined(&[]).is_none());
    }

    #[test]
    fn no_transactions_is_an_error() {
        let empty = PGBENCH_15.replace("processed: 12345", "processed: 0");
        assert!(parse(&empty, 32, 10.0).is_err());
    }

    #[test]
    fn the_script_sets_the_tenant_in_both_transactions() {
        let sets = SEND_MESSAGE_SCRIPT
            .matches("set_config('app.tenant_id'")
            .count();
        assert_eq!(sets, 2, "begin_exchange and complete_exchange each set it");
        assert!(
            SEND_MESSAGE_SCRIPT.contains("knowledge.entries"),
            "the retrieval search is part of a SendMessage"
        );
        assert_eq!(SEND_MESSAGE_SCRIPT.matches("COMMIT").count(), 2);
    }
}
