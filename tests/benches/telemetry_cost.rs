//! What our telemetry costs a gRPC call: the same trivial unary RPC
//! (`grpc.health.v1.Health/Check`) served twice in one process, bare and
//! behind the `ServerTelemetryLayer` every service uses (a span per call, the
//! RPC metrics with exemplars into the Prometheus registry and the OTel
//! instruments, the canonical event), driven by the same closed-loop
//! clients, rounds alternating. Telemetry is installed as in production
//! (`tp_telemetry::init`; no OTLP endpoint, so spans are made but not
//! exported); the canonical events go to stdout as JSON, as they do in
//! production, so run it with stdout to a file: `deploy/local/bench` does.
//!
//! A trivial call is the worst case: the layer's cost is fixed per call,
//! so its share of a real call (SendMessage crosses three instrumented
//! servers and does far more work) is smaller. The report prints both the
//! throughput ratio and the cost per call in microseconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tp_telemetry::{Metrics, RpcMethods, ServerTelemetryLayer};

const CLIENTS: usize = 32;
const ROUND: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;

async fn serve(instrumented: bool) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        // The reporter lives as long as the server, which keeps the status.
        let _reporter = reporter;
        if instrumented {
            let methods = RpcMethods::new([("grpc.health.v1.Health/Check".to_owned(), false)]);
            Server::builder()
                .layer(ServerTelemetryLayer::new(Metrics::new("gateway"), methods))
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        } else {
            Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await
        }
    });
    Ok(addr)
}

/// Calls per second from `CLIENTS` closed-loop callers over `ROUND`.
async fn drive(addr: SocketAddr) -> anyhow::Result<f64> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = HealthClient::new(channel.clone());
        let (stop, calls) = (stop.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                calls.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(ROUND).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = tp_telemetry::init("telemetry-cost-bench")?;
    let bare = serve(false).await?;
    let instrumented = serve(true).await?;
    // Warm both paths (connections, allocations, the registry's series).
    drive(bare).await?;
    drive(instrumented).await?;

    let (mut bare_rates, mut instrumented_rates) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let b = drive(bare).await?;
        let i = drive(instrumented).await?;
        eprintln!("round {round}: bare {b:>8.0} calls/s, with telemetry {i:>8.0} calls/s");
        bare_rates.push(b);
        instrumented_rates.push(i);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (b, i) = (mean(&bare_rates), mean(&instrumented_rates));
    eprintln!(
        "telemetry cost on a trivial unary call, {CLIENTS} concurrent callers, 2 cores: \
         {:.1}% of throughput (with/bare = {:.3}); {:.1} us of CPU time per call",
        (1.0 - i / b) * 100.0,
        i / b,
        // Both servers share the same two cores at full load, so the extra
        // time per call is the difference of the inverse rates, per core.
        (1.0 / i - 1.0 / b) * 2.0 * 1e6,
    );
    Ok(())
}
