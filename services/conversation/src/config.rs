//! Configuration, read from the command line or `TP_*` environment variables.

use std::net::SocketAddr;

use tp_store::DatabaseSettings;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "conversation";

#[derive(Clone, Debug, clap::Args)]
pub struct ConversationConfig {
    /// Where to listen for internal gRPC calls from the gateway.
    #[arg(long, env = "TP_CONVERSATION_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,
    /// The knowledge service.
    #[arg(
        long,
        env = "TP_KNOWLEDGE_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub knowledge_url: String,
    /// Postgres URL of the application role (`tp_app`).
    #[arg(long, env = "TP_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "TP_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

impl ConversationConfig {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
        }
    }
}
