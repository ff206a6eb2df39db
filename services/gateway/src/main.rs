//! `gateway`: thin entry point — configuration, telemetry, serve.

use clap::{Parser, Subcommand};
use tp_gateway::{Application, GatewayConfig, migrate};

#[derive(Parser)]
#[command(name = "gateway", about = "Thoughtpartner gateway service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the public gRPC API until Ctrl-C or SIGTERM.
    Serve(GatewayConfig),
    /// Apply this service's database migrations, then exit.
    Migrate {
        /// Postgres URL of the schema owner (not the application role).
        #[arg(long, env = "TP_DATABASE_MIGRATE_URL")]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = tp_telemetry::init("gateway")?;
    match cli.command {
        Command::Migrate { database_url } => migrate(&database_url).await,
        Command::Serve(config) => {
            Application::build(&config)
                .await?
                .run_until(tp_server::shutdown_signal())
                .await
        }
    }
}
