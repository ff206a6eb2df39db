//! The product under load: the three service binaries started as child
//! processes on free loopback ports, as `deploy/local/run` starts them,
//! so each one's memory and CPU can be read on its own.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The secret the stack verifies tokens with; the load generator mints them.
pub const SIGNING_SECRET: &str = "tp-loadgen-signing-secret-not-for-production";

/// How a service's process is started.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// `gateway`, `conversation` and `knowledge` in one directory, as
    /// `cargo build --bins` leaves them.
    BinDir(PathBuf),
    /// One binary serving whichever service `TP_SERVICE` names: the
    /// end-to-end tests' `tp-e2e-service`, which cargo builds for them (it
    /// builds no other package's binaries for a package's tests).
    OneBinary(PathBuf),
}

impl Launcher {
    fn command(&self, name: &str) -> anyhow::Result<Command> {
        self.command_under(name, None)
    }

    /// The service's command, run by `valgrind --tool=callgrind` writing
    /// `profile` when there is one.
    fn command_under(&self, name: &str, profile: Option<&Path>) -> anyhow::Result<Command> {
        let program = match self {
            Launcher::BinDir(dir) => binary(dir, name)?,
            Launcher::OneBinary(path) => path.clone(),
        };
        let mut command = match profile {
            None => Command::new(program),
            Some(profile) => {
                let mut command = Command::new("valgrind");
                command
                    .arg("--tool=callgrind")
                    .arg(format!("--callgrind-out-file={}", profile.display()))
                    .arg(program);
                command
            }
        };
        if let Launcher::OneBinary(_) = self {
            command.env("TP_SERVICE", name);
        }
        Ok(command)
    }
}

/// One service's own environment: (variable, value).
type ServiceEnv = Vec<(&'static str, String)>;

/// Which services to start and how.
#[derive(Clone, Debug)]
pub struct StackConfig {
    pub launcher: Launcher,
    pub app_url: String,
    pub log_dir: PathBuf,
    /// False starts every service with `TP_TELEMETRY=off`.
    pub telemetry: bool,
    /// Where services with telemetry on export spans and metrics (OTLP/gRPC).
    pub otlp_endpoint: Option<String>,
    /// More environment for one service: (service, variable, value). Set
    /// after the stack's own, so it can override them.
    pub extra_env: Vec<(&'static str, String, String)>,
    /// Run every service under valgrind's callgrind, its profile written
    /// to this directory (see [`crate::callgrind`]).
    pub callgrind: Option<PathBuf>,
}

pub struct ServiceProcess {
    pub name: &'static str,
    pub pid: u32,
    child: Child,
    /// The ops port (`/readyz`), to wait for after a restart.
    http: SocketAddr,
    env: Vec<(String, String)>,
}

pub struct Stack {
    pub gateway: SocketAddr,
    pub conversation: SocketAddr,
    pub knowledge: SocketAddr,
    config: StackConfig,
    processes: Vec<ServiceProcess>,
    /// In the order this process started its stacks (the callgrind
    /// profiles' names).
    number: usize,
}

/// A port on loopback nothing listens on right now, and one this process
/// has not handed out before.
///
/// The port is free only until someone binds it: the kernel may give the
/// same port to the next `bind(0)` once this probe closes. Stacks started
/// side by side in one process (the process tests run in parallel) would
/// then collide: one service fails to bind, and the other stack's service
/// answers the first stack's readiness probe in its place. Remembering
/// every port handed out rules that out within a process.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(addr.port()) {
            return Ok(addr);
        }
    }
    bail!("no loopback port this process has not used already after 64 tries")
}

fn binary(bin_dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the services first (`cargo build --release --bins`), \
             or pass --bin-dir",
            path.display()
        );
    }
    Ok(path)
}

/// Runs every service's migrations as the schema owner.
pub async fn migrate(launcher: &Launcher, owner_url: &str) -> anyhow::Result<()> {
    for name in ["gateway", "conversation", "knowledge"] {
        let output = launcher
            .command(name)?
            .args(["migrate", "--database-url", owner_url])
            .env("RUST_LOG", "warn")
            .output()
            .await
            .with_context(|| format!("running {name} migrate"))?;
        if !output.status.success() {
            bail!(
                "{name} migrate failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(())
}

impl Stack {
    pub async fn start(config: &StackConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.log_dir)?;
        let gateway = free_port()?;
        let conversation = free_port()?;
        let knowledge = free_port()?;
        let http: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut stack = Stack {
            gateway,
            conversation,
            knowledge,
            config: config.clone(),
            processes: Vec::new(),
            number: crate::callgrind::next_stack_number(),
        };
        let url = |addr: SocketAddr| format!("http://{addr}");
        let spawn_plan: [(&'static str, SocketAddr, ServiceEnv); 3] = [
            (
                "knowledge",
                http[2],
                vec![
                    ("TP_KNOWLEDGE_ADDR", knowledge.to_string()),
                    ("TP_HTTP_ADDR", http[2].to_string()),
                    // As deployed (deploy/k8s): a fraction of a core, one
                    // worker thread.
                    ("TP_WORKER_THREADS", "1".to_owned()),
                ],
            ),
            (
                "conversation",
                http[1],
                vec![
                    ("TP_CONVERSATION_ADDR", conversation.to_string()),
                    ("TP_HTTP_ADDR", http[1].to_string()),
                    ("TP_KNOWLEDGE_URL", url(knowledge)),
                ],
            ),
            (
                "gateway",
                http[0],
                vec![
                    ("TP_GATEWAY_ADDR", gateway.to_string()),
                    ("TP_HTTP_ADDR", http[0].to_string()),
                    ("TP_CONVERSATION_URL", url(conversation)),
                    ("TP_KNOWLEDGE_URL", url(knowledge)),
                    ("TP_JWT_HS256_SECRET", SIGNING_SECRET.to_owned()),
                    ("TP_WORKER_THREADS", "1".to_owned()),
                    (
                        "TP_SLO_SCRAPE_URLS",
                        format!("http://{}/metrics,http://{}/metrics", http[1], http[2]),
                    ),
                    // The load is the point here, not the product's
                    // per-tenant limits (measured in their own benchmark).
                    ("TP_RATE_TENANT_PER_SECOND", "1000000".to_owned()),
                    ("TP_RATE_TENANT_BURST", "1000000".to_owned()),
                    ("TP_RATE_USER_PER_SECOND", "1000000".to_owned()),
                    ("TP_RATE_USER_BURST", "1000000".to_owned()),
                    ("TP_MAX_STREAMS_PER_TENANT", "100000".to_owned()),
                ],
            ),
        ];
        for (name, http, env) in spawn_plan {
            let mut env: Vec<(String, String)> = env
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value))
                .collect();
            env.extend(
                config
                    .extra_env
                    .iter()
                    .filter(|(service, _, _)| *service == name)
                    .map(|(_, key, value)| (key.clone(), value.clone())),
            );
            let child = stack.spawn(name, &env)?;
            let pid = child.id().context("a started service has a pid")?;
            stack.processes.push(ServiceProcess {
                name,
                pid,
                child,
                http,
                env,
            });
        }
        for (name, addr) in [
            ("knowledge", http[2]),
            ("conversation", http[1]),
            ("gateway", http[0]),
        ] {
            stack.wait_ready(name, addr, &config.log_dir).await?;
        }
        Ok(stack)
    }

    fn spawn(&self, name: &str, env: &[(String, String)]) -> anyhow::Result<Child> {
        let config = &self.config;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.log_dir.join(format!("{name}.log")))?;
        let profile = config
            .callgrind
            .as_deref()
            .map(|dir| crate::callgrind::profile_path(dir, self.number, name, config.telemetry));
        let mut command = config.launcher.command_under(name, profile.as_deref())?;
        command
            .arg("serve")
            .env("TP_DATABASE_URL", &config.app_url)
            .env("TP_TELEMETRY", if config.telemetry { "on" } else { "off" })
            .envs(
                config
                    .otlp_endpoint
                    .iter()
                    .filter(|_| config.telemetry)
                    .map(|url| ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())),
            )
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        command.spawn().with_context(|| format!("starting {name}"))
    }

    fn process(&mut self, name: &str) -> anyhow::Result<&mut ServiceProcess> {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no service named {name} in the stack"))
    }

    /// SIGKILL: the service dies at once, as in a crash or an OOM kill.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let process = self.process(name)?;
        process.child.start_kill()?;
        process.child.wait().await?;
        Ok(())
    }

    /// Where a service serves HTTP: `/metrics`, `/healthz`, `/readyz`, and
    /// the gateway's webhooks.
    pub fn http_addr(&mut self, name: &str) -> anyhow::Result<SocketAddr> {
        Ok(self.process(name)?.http)
    }

    /// SIGTERM, which a service answers with a graceful shutdown.
    pub fn signal_terminate(&mut self, name: &str) -> anyhow::Result<()> {
        terminate(self.process(name)?.pid);
        Ok(())
    }

    /// The service's exit status once it has exited, waiting at most
    /// `limit` (an error if it is still running then).
    pub async fn wait_exit(&mut self, name: &str, limit: Duration) -> anyhow::Result<ExitStatus> {
        let process = self.process(name)?;
        tokio::time::timeout(limit, process.child.wait())
            .await
            .with_context(|| format!("{name} still running after {limit:?}"))?
            .map_err(Into::into)
    }

    /// Starts a service that was killed or stopped again, on the same
    /// ports, and waits until it is ready.
    pub async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let (env, http) = {
            let process = self.process(name)?;
            if process.child.try_wait()?.is_none() {
                bail!("{name} is still running");
            }
            (process.env.clone(), process.http)
        };
        let child = self.spawn(name, &env)?;
        let process = self.process(name)?;
        process.pid = child.id().context("a started service has a pid")?;
        process.child = child;
        let log_dir = self.config.log_dir.clone();
        self.wait_ready(name, http, &log_dir).await
    }

    async fn wait_ready(
        &mut self,
        name: &str,
        http: SocketAddr,
        log_dir: &Path,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = matches!(http_status(http, "/readyz").await, Ok(200));
            // Checked after the probe too: a service that died cannot be
            // ready, whatever answered on its port.
            let process = self.process(name)?;
            if let Some(status) = process.child.try_wait()? {
                bail!(
                    "{name} exited ({status}) while starting; see {}",
                    log_dir.join(format!("{name}.log")).display()
                );
            }
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready within 30 s; see {}",
                    log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each service's name and process id.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name.to_owned(), p.pid))
            .collect()
    }

    /// SIGTERM to every service, then waits for them (killing any still
    /// running after 10 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for process in &self.processes {
            terminate(process.pid);
        }
        for process in &mut self.processes {
            match tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => process.child.kill().await?,
            }
        }
        Ok(())
    }
}

/// Sends SIGTERM, which the services answer with a graceful shutdown.
pub fn terminate(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we started; at worst it is gone (ESRCH).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// The status code of a plain HTTP/1.1 GET (the ops routes).
pub async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    // "HTTP/1.1 200"
    let code = std::str::from_utf8(&head[9..12])?.parse()?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_never_handed_out_twice_in_a_process() -> anyhow::Result<()> {
        let mut seen = BTreeSet::new();
        for _ in 0..500 {
            let addr = free_port()?;
            assert!(addr.ip().is_loopback());
            assert!(
                seen.insert(addr.port()),
                "port {} handed out twice",
                addr.port()
            );
        }
        Ok(())
    }
}
