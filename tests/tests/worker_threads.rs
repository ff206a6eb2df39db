//! `TP_WORKER_THREADS` sizes a service's runtime, and the stack runs the
//! gateway and knowledge on one worker thread each, as deployed
//! (deploy/k8s, deploy/local): they need a fraction of a core, and a
//! second thread only costs wake-ups (BENCHMARKS.md, session 13).

use tp_e2e::processes::ProcessStack;

const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_tp-e2e-service");

/// Tokio's worker threads of process `pid`, by their thread name.
fn runtime_workers(pid: u32) -> anyhow::Result<usize> {
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let comm = std::fs::read_to_string(task?.path().join("comm"))?;
        if comm.trim_end() == "tokio-rt-worker" {
            workers += 1;
        }
    }
    Ok(workers)
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
    for (name, pid) in app.stack.processes() {
        seen.push((name.clone(), runtime_workers(pid)?));
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
