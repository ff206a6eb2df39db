//! `tp-loadgen`: starts the product (three service processes) against a
//! fresh database, drives its public gRPC API with many tenants and
//! members, and reports every scenario next to baselines measured in the
//! same run: a bare tonic echo server, `pgbench` running SendMessage's own
//! SQL, a bare HTTP/2 proxy in place of the gateway, and the product with
//! telemetry off. Loopback only; stops by itself.
//!
//! ```sh
//! deploy/local/bench            # starts PostgreSQL, builds, runs this
//! cargo run --release -p tp-loadgen -- run --admin-url postgres://postgres@127.0.0.1:31434/postgres
//! ```

mod api;
mod driver;
mod echo;
use tp_loadgen::otlp;
mod pgbench;
mod proxy;
mod report;
mod run;
mod seed;
mod workers;

use tp_loadgen::stack;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tp-loadgen", about = "Load generator with same-run baselines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the stack, seed it, run the scenarios and baselines, report.
    Run(Box<run::RunArgs>),
    /// Serve the bare-tonic echo baseline (started by `run`).
    EchoServer {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Serve the gateway hop's floor, a bare HTTP/2 proxy (started by `run`).
    ProxyServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
    },
    /// Print a JSON report (`run --json`) as the human-readable table.
    Show { json: PathBuf },
    /// Telemetry's throughput cost pooled over several runs' JSON reports
    /// (`run --phases telemetry --json ...`, or full runs): each run's
    /// figure, their mean and its one-sided 95 % upper bound against the
    /// target.
    PoolTelemetry {
        #[arg(required = true, num_args = 2..)]
        reports: Vec<PathBuf>,
        /// The target, in percent of throughput.
        #[arg(long, default_value_t = 5.0)]
        target_percent: f64,
    },
    /// Telemetry's instructions per SendMessage, from the profiles of a
    /// `run --phases telemetry --callgrind DIR`.
    CallgrindReport {
        dir: PathBuf,
        /// How many functions to list.
        #[arg(long, default_value_t = 30)]
        top: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                let report = run::run(*args).await?;
                if report.failed_calls() > 0 {
                    anyhow::bail!(
                        "{} calls failed during the measured windows (see the table above)",
                        report.failed_calls()
                    );
                }
                Ok(())
            }
            Command::EchoServer { addr } => echo::serve(addr).await,
            Command::ProxyServer { addr, upstream } => proxy::serve(addr, upstream).await,
            Command::CallgrindReport { dir, top } => {
                print!("{}", tp_loadgen::callgrind::report_dir(&dir, top)?);
                Ok(())
            }
            Command::PoolTelemetry {
                reports,
                target_percent,
            } => {
                let mut loaded = Vec::new();
                for path in reports {
                    let report: report::Report = serde_json::from_slice(&std::fs::read(&path)?)?;
                    loaded.push((path.display().to_string(), report));
                }
                print!(
                    "{}",
                    run::pooled_telemetry(&loaded, target_percent / 100.0)?
                );
                Ok(())
            }
            Command::Show { json } => {
                let report: report::Report = serde_json::from_slice(&std::fs::read(&json)?)?;
                print!("{}", report.render());
                Ok(())
            }
        }
    })
}
