//! Configuration, read from the command line or `TP_*` environment variables.

use std::net::SocketAddr;

use tp_store::DatabaseSettings;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "gateway";

#[derive(Clone, clap::Args)]
pub struct GatewayConfig {
    /// Where to listen for public gRPC calls.
    #[arg(long, env = "TP_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// The conversation service.
    #[arg(
        long,
        env = "TP_CONVERSATION_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub conversation_url: String,
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
    /// How long a membership may be served from the gateway's cache, in
    /// seconds (0: read it from the database on every call). Changes reach
    /// every gateway at once through Postgres notifications; this bounds
    /// staleness should one be missed.
    #[arg(long, env = "TP_MEMBERSHIP_CACHE_TTL_SECS", default_value_t = 30)]
    pub membership_cache_ttl_secs: u64,
    /// Shared secret that verifies HS256 bearer tokens (local and dev).
    #[arg(long, env = "TP_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: String,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen_addr", &self.listen_addr)
            .field("conversation_url", &self.conversation_url)
            .field("knowledge_url", &self.knowledge_url)
            .field("database_max_connections", &self.database_max_connections)
            .field("membership_cache_ttl_secs", &self.membership_cache_ttl_secs)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
        }
    }
}
