//! `TP_WORKER_THREADS` sizes a service's runtime, and the stack runs the
//! gateway and knowledge on one worker thread each, as deployed
//! (deploy/k8s, deploy/local): they need a fraction of a core, and a
//! second thread only costs wake-ups (BENCHMARKS.md, session 13).

use tp_e2e::processes::ProcessStack;

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

/// The worker count `service` logged as its runtime started (Tokio names
/// its blocking threads as its workers, so counting threads cannot tell).
async fn logged_workers(app: &ProcessStack, service: &str) -> anyhow::Result<u64> {
    let path = app.log_dir().join(format!("{service}.log"));
    let started = std::time::Instant::now();
    loop {
        // Log lines are written in batches, up to 50 ms late.
        let log = std::fs::read_to_string(&path)?;
        let logged = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["fields"]["message"] == "runtime started")
            .and_then(|line| line["fields"]["worker_threads"].as_u64());
        if let Some(workers) = logged {
            return Ok(workers);
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{service} logged no \"runtime started\" line"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_service_runs_the_worker_threads_it_is_configured_with() -> anyhow::Result<()> {
    // Three for conversation: not this machine's CPU count by chance.
    let app = ProcessStack::start(
        SERVICE_BINARY,
        vec![("conversation", "TP_WORKER_THREADS".into(), "3".into())],
    )
    .await?;
    let mut seen = Vec::new();
    for (name, _pid) in app.stack.processes() {
        let workers = logged_workers(&app, &name).await?;
        seen.push((name, workers));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("conversation".to_owned(), 3),
            ("gateway".to_owned(), 1),
            ("knowledge".to_owned(), 1),
        ]
    );
    Ok(())
}
