//! The three services as real processes, for tests that kill or signal
//! one: a fresh database, and the load generator's [`Stack`] running the
//! `tp-e2e-service` binary once per service, on free loopback ports.

use std::path::{Path, PathBuf};

use tp_loadgen::stack::{Launcher, SIGNING_SECRET, Stack, StackConfig};

use crate::{GatewayApi, TestDatabase};

pub struct ProcessStack {
    pub db: TestDatabase,
    pub stack: Stack,
    api: GatewayApi,
    log_dir: PathBuf,
}

impl ProcessStack {
    /// `binary` is `env!("CARGO_BIN_EXE_tp-e2e-service")`, which only an
    /// integration test can name. `extra_env` is (service, variable, value).
    pub async fn start(
        binary: &str,
        extra_env: Vec<(&'static str, String, String)>,
    ) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        db.migrate().await?;
        let log_dir = std::env::temp_dir().join(format!("tp-e2e-logs-{}", db.name));
        let stack = Stack::start(&StackConfig {
            launcher: Launcher::OneBinary(PathBuf::from(binary)),
            app_url: db.app_url.clone(),
            log_dir: log_dir.clone(),
            telemetry: true,
            otlp_endpoint: None,
            extra_env,
            callgrind: None,
        })
        .await?;
        let api = GatewayApi::new(stack.gateway, SIGNING_SECRET);
        Ok(Self {
            db,
            stack,
            api,
            log_dir,
        })
    }

    /// Stops the three services as an orchestrator would (SIGTERM) and
    /// waits for each to exit, so what they flush on the way out (logs,
    /// spans) has been written.
    pub async fn terminate_all(&mut self) -> anyhow::Result<()> {
        const SERVICES: [&str; 3] = ["gateway", "conversation", "knowledge"];
        for service in SERVICES {
            self.stack.signal_terminate(service)?;
        }
        for service in SERVICES {
            self.stack
                .wait_exit(service, std::time::Duration::from_secs(15))
                .await?;
        }
        Ok(())
    }

    /// Where each service's log is (`<service>.log`), kept when a test fails.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }
}

impl std::ops::Deref for ProcessStack {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
}

impl Drop for ProcessStack {
    fn drop(&mut self) {
        // The processes die with the stack (kill on drop). Their logs stay
        // for a failed test to be read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        } else {
            eprintln!("service logs kept in {}", self.log_dir.display());
        }
    }
}
