//! The command line every service binary shares: `serve` and `migrate`.

use std::future::Future;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// What a service binary plugs into [`main`].
pub trait ServiceMain {
    /// The service's name, in logs, traces and `--help`.
    const NAME: &'static str;
    /// What `serve` reads from flags and `TP_*` environment variables.
    type Config: Args;

    /// Applies the service's migrations as the schema owner.
    fn migrate(owner_url: &str) -> impl Future<Output = anyhow::Result<()>>;

    /// Serves until `shutdown` resolves.
    fn serve(
        config: Self::Config,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>>;
}

#[derive(Parser)]
struct Cli<C: Args> {
    #[command(subcommand)]
    command: Command<C>,
}

#[derive(Subcommand)]
enum Command<C: Args> {
    /// Serve gRPC until Ctrl-C or SIGTERM.
    Serve(ServeArgs<C>),
    /// Apply this service's database migrations, then exit.
    Migrate {
        /// Postgres URL of the schema owner (not the application role).
        #[arg(long, env = "TP_DATABASE_MIGRATE_URL")]
        database_url: String,
    },
}

#[derive(Args)]
struct ServeArgs<C: Args> {
    #[command(flatten)]
    config: C,
    /// After Ctrl-C or SIGTERM: how long in-flight calls (a reply still
    /// streaming) may run on before the process exits anyway. New calls
    /// are refused from the signal on.
    #[arg(long, env = "TP_SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    shutdown_grace_secs: u64,
    /// Threads that run the service's tasks; default one per CPU. A
    /// service that needs a fraction of a core (the gateway, knowledge)
    /// is cheaper on one: measured on two shared cores, the gateway and
    /// knowledge on one thread each cost ~230 µs less CPU per SendMessage,
    /// the wake-ups of an idle second thread that a call's tasks hop to
    /// (BENCHMARKS.md, session 13). Scale such a service out, not up.
    #[arg(long, env = "TP_WORKER_THREADS")]
    worker_threads: Option<std::num::NonZeroUsize>,
}

/// Runs `serve` with a shutdown future that resolves on `signal`, and
/// returns when `serve` does (every in-flight call drained) or `grace`
/// after the signal, whichever comes first: a stream that never ends must
/// not keep a stopping process alive past what its orchestrator allows.
pub async fn serve_with_grace<Serve, Serving>(
    signal: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    serve: Serve,
) -> anyhow::Result<()>
where
    Serve: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Serving,
    Serving: Future<Output = anyhow::Result<()>>,
{
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = Box::pin(async move {
        signal.await;
        let _ = signalled.send(());
    });
    let serving = serve(shutdown);
    tokio::pin!(serving);
    let grace_over = async move {
        match on_signal.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended without a signal: `serving` has finished.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        served = &mut serving => served,
        () = grace_over => {
            tracing::warn!(
                grace_secs = grace.as_secs_f64(),
                "in-flight calls outlived the shutdown grace period; exiting without them"
            );
            Ok(())
        }
    }
}

/// The whole `main` of a service: parse the command line, start telemetry,
/// then migrate or serve.
pub fn main<S: ServiceMain>() -> anyhow::Result<()> {
    let cli = Cli::<S::Config>::parse_from(std::env::args_os());
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(ServeArgs {
        worker_threads: Some(threads),
        ..
    }) = &cli.command
    {
        runtime.worker_threads(threads.get());
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async {
        let _telemetry = tp_telemetry::init(S::NAME)?;
        match cli.command {
            Command::Migrate { database_url } => S::migrate(&database_url).await,
            Command::Serve(args) => {
                // Tokio names its blocking threads as its workers, so this
                // is where the worker count can be read (and checked).
                tracing::info!(
                    worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
                    "runtime started"
                );
                let grace = Duration::from_secs(args.shutdown_grace_secs);
                serve_with_grace(crate::shutdown_signal(), grace, |shutdown| {
                    S::serve(args.config, shutdown)
                })
                .await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Args)]
    struct NoConfig {}

    #[test]
    fn worker_threads_are_a_positive_count_and_only_for_serve() {
        let parse = |args: &[&str]| Cli::<NoConfig>::try_parse_from(args);
        let threads = |cli: Cli<NoConfig>| match cli.command {
            Command::Serve(serve) => serve.worker_threads.map(|n| n.get()),
            Command::Migrate { .. } => None,
        };
        let one = parse(&["svc", "serve", "--worker-threads", "1"]).expect("parses");
        assert_eq!(threads(one), Some(1));
        let default = parse(&["svc", "serve"]).expect("parses");
        assert_eq!(threads(default), None);
        assert!(parse(&["svc", "serve", "--worker-threads", "0"]).is_err());
        assert!(
            parse(&[
                "svc",
                "migrate",
                "--database-url",
                "x",
                "--worker-threads",
                "1"
            ])
            .is_err()
        );
    }
    use std::time::Instant;
    use tonic::transport::Server;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    async fn connect(
        addr: std::net::SocketAddr,
    ) -> Result<HealthClient<tonic::transport::Channel>, tonic::transport::Error> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect()
            .await?;
        Ok(HealthClient::new(channel))
    }

    /// A health server (its `Watch` stream never ends by itself) run the
    /// way `main` runs a service, stopped by `stop`.
    async fn health_server(
        grace: Duration,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<(anyhow::Result<()>, Instant)>,
    ) {
        let listener = crate::Listener::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            let (_reporter, health) = tonic_health::server::health_reporter();
            let served = serve_with_grace(signal, grace, |shutdown| async move {
                Server::builder()
                    .add_service(health)
                    .serve_with_incoming_shutdown(listener.incoming(), shutdown)
                    .await?;
                Ok(())
            })
            .await;
            (served, Instant::now())
        });
        (addr, stop, task)
    }

    #[tokio::test]
    async fn an_idle_server_stops_at_once_and_refuses_new_calls() {
        let (addr, stop, task) = health_server(Duration::from_secs(30)).await;
        let mut client = connect(addr).await.unwrap();
        client.check(HealthCheckRequest::default()).await.unwrap();
        drop(client);
        let signalled = Instant::now();
        stop.send(()).unwrap();
        let (served, done) = task.await.unwrap();
        served.unwrap();
        assert!(
            done - signalled < Duration::from_secs(5),
            "drained without waiting out the grace"
        );
        assert!(
            connect(addr).await.is_err(),
            "no new connections once stopped"
        );
    }

    #[tokio::test]
    async fn a_stream_that_outlives_the_grace_period_does_not_hold_the_process() {
        let grace = Duration::from_millis(500);
        let (addr, stop, task) = health_server(grace).await;
        let mut client = connect(addr).await.unwrap();
        let mut watch = client
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        // The stream is live: its first status has arrived.
        watch.message().await.unwrap().unwrap();
        let signalled = Instant::now();
        stop.send(()).unwrap();
        // A new call after the signal is refused while the old one drains.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = connect(addr).await;
        let refused = match refused {
            Err(_) => true,
            Ok(mut late) => late.check(HealthCheckRequest::default()).await.is_err(),
        };
        assert!(refused, "a call after the signal is refused");
        let (served, done) = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the process does not wait for the stream")
            .unwrap();
        served.unwrap();
        let waited = done - signalled;
        assert!(
            waited >= grace,
            "in-flight calls got their grace: {waited:?}"
        );
        assert!(
            waited < grace + Duration::from_secs(3),
            "and no more: {waited:?}"
        );
    }
}
