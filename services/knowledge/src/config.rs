//! Configuration, read from the command line or `TP_*` environment variables.

use std::net::SocketAddr;

use tp_store::DatabaseSettings;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "knowledge";

#[derive(Clone, Debug, clap::Args)]
pub struct KnowledgeConfig {
    /// Where to listen for internal gRPC calls.
    #[arg(long, env = "TP_KNOWLEDGE_ADDR", default_value = "127.0.0.1:50053")]
    pub listen_addr: SocketAddr,
    /// Where to serve the ops routes over HTTP/1.1 (`GET /metrics`,
    /// `/healthz`, `/readyz`).
    #[arg(long, env = "TP_HTTP_ADDR", default_value = "127.0.0.1:50063")]
    pub http_addr: SocketAddr,
    /// Postgres URL of the application role (`tp_app`).
    #[arg(long, env = "TP_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "TP_DATABASE_MAX_CONNECTIONS", default_value_t = 5)]
    pub database_max_connections: u32,
}

impl KnowledgeConfig {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
        }
    }
}
