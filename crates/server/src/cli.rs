//! The command line every service binary shares: `serve` and `migrate`.

use std::future::Future;

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
    Serve(C),
    /// Apply this service's database migrations, then exit.
    Migrate {
        /// Postgres URL of the schema owner (not the application role).
        #[arg(long, env = "TP_DATABASE_MIGRATE_URL")]
        database_url: String,
    },
}

/// The whole `main` of a service: parse the command line, start telemetry,
/// then migrate or serve.
pub fn main<S: ServiceMain>() -> anyhow::Result<()> {
    let cli = Cli::<S::Config>::parse_from(std::env::args_os());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _telemetry = tp_telemetry::init(S::NAME)?;
        match cli.command {
            Command::Migrate { database_url } => S::migrate(&database_url).await,
            Command::Serve(config) => S::serve(config, crate::shutdown_signal()).await,
        }
    })
}
