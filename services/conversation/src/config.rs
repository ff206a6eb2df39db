//! Configuration, read from the command line or `TP_*` environment variables.

use std::net::SocketAddr;

use tp_store::DatabaseSettings;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "conversation";

/// Who writes the assistant's turns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmProvider {
    /// The deterministic offline coach (no model, no network).
    Offline,
    /// Any OpenAI-compatible chat completions API.
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
}

#[derive(Clone, clap::Args)]
pub struct ConversationConfig {
    /// Where to listen for internal gRPC calls from the gateway.
    #[arg(long, env = "TP_CONVERSATION_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,
    /// Where to serve the ops routes over HTTP/1.1 (`GET /metrics`,
    /// `/healthz`, `/readyz`).
    #[arg(long, env = "TP_HTTP_ADDR", default_value = "127.0.0.1:50062")]
    pub http_addr: SocketAddr,
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
    /// The most words a reply may have (checked on every reply, and kept by
    /// the offline coach).
    #[arg(long, env = "TP_COACH_WORD_CAP", default_value_t = 180, value_parser = clap::value_parser!(u16).range(60..=1000))]
    pub coach_word_cap: u16,
    /// Who writes replies.
    #[arg(long, env = "TP_LLM_PROVIDER", value_enum, default_value = "offline")]
    pub llm_provider: LlmProvider,
    /// The provider's API root (default: the provider's public API).
    #[arg(long, env = "TP_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// The provider's API key.
    #[arg(long, env = "TP_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// The model name, e.g. `gpt-4o-mini` or `claude-sonnet-4-5`.
    #[arg(long, env = "TP_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Longest wait for the provider's first byte, in milliseconds.
    #[arg(long, env = "TP_LLM_FIRST_BYTE_TIMEOUT_MS", default_value_t = 15_000)]
    pub llm_first_byte_timeout_ms: u64,
    /// Most tokens a reply may use.
    #[arg(long, env = "TP_LLM_MAX_TOKENS", default_value_t = 400)]
    pub llm_max_tokens: u32,
    /// Token budget for the transcript sent with each turn (oldest turns
    /// are dropped first; the current message always goes).
    #[arg(long, env = "TP_LLM_CONTEXT_TOKENS", default_value_t = 6_000)]
    pub llm_context_tokens: usize,
    /// Calls in a row that find the provider down (5xx or 429 after the
    /// retries, timeouts, no connection) before the circuit breaker opens.
    #[arg(long, env = "TP_LLM_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_breaker_failures: u32,
    /// How long an open breaker fails calls at once before it lets a probe
    /// through, in milliseconds.
    #[arg(long, env = "TP_LLM_BREAKER_OPEN_MS", default_value_t = 30_000)]
    pub llm_breaker_open_ms: u64,
    /// The key that seals page tokens carrying more than a sequence
    /// number (SearchMessages), at least 32 bytes; every replica needs the
    /// same one, so a page token works on any of them and across restarts.
    /// Unset: a random key per process (tokens stop working on restart).
    #[arg(long, env = "TP_PAGE_TOKEN_KEY", hide_env_values = true)]
    pub page_token_key: Option<String>,
}

impl std::fmt::Debug for ConversationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationConfig")
            .field("listen_addr", &self.listen_addr)
            .field("http_addr", &self.http_addr)
            .field("knowledge_url", &self.knowledge_url)
            .field("llm_provider", &self.llm_provider)
            .field("llm_base_url", &self.llm_base_url)
            .field("llm_model", &self.llm_model)
            .field(
                "page_token_key",
                &self.page_token_key.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl ConversationConfig {
    /// The configured LLM client, or `None` for the offline coach. A
    /// misconfigured provider is an error here, at start-up, not on every
    /// request.
    pub fn llm_client(&self) -> anyhow::Result<Option<tp_llm::LlmClient>> {
        let (kind, default_url) = match self.llm_provider {
            LlmProvider::Offline => return Ok(None),
            LlmProvider::Openai => (
                tp_llm::ProviderKind::OpenAiCompatible,
                "https://api.openai.com/v1",
            ),
            LlmProvider::Anthropic => {
                (tp_llm::ProviderKind::Anthropic, "https://api.anthropic.com")
            }
        };
        let name = format!("{:?}", self.llm_provider).to_lowercase();
        let api_key = self
            .llm_api_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("TP_LLM_PROVIDER={name} needs TP_LLM_API_KEY"))?;
        let model = self
            .llm_model
            .clone()
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("TP_LLM_PROVIDER={name} needs TP_LLM_MODEL"))?;
        let client = tp_llm::LlmClient::new(tp_llm::ProviderConfig {
            kind,
            base_url: self
                .llm_base_url
                .clone()
                .unwrap_or_else(|| default_url.to_owned()),
            api_key,
            model,
            first_byte_timeout: std::time::Duration::from_millis(self.llm_first_byte_timeout_ms),
            idle_timeout: std::time::Duration::from_secs(30),
            max_attempts: 3,
            backoff: std::time::Duration::from_millis(500),
            breaker: tp_llm::breaker::BreakerConfig {
                failures_to_open: self.llm_breaker_failures,
                open_for: std::time::Duration::from_millis(self.llm_breaker_open_ms),
            },
        })?;
        Ok(Some(client))
    }

    /// Seals page tokens with `TP_PAGE_TOKEN_KEY`, or a random key.
    pub fn page_token_sealer(&self) -> anyhow::Result<tp_store::sealed::TokenSealer> {
        match &self.page_token_key {
            Some(key) => tp_store::sealed::TokenSealer::new(key.as_bytes())
                .map_err(|e| anyhow::anyhow!("TP_PAGE_TOKEN_KEY: {e}")),
            None => {
                tracing::warn!(
                    "TP_PAGE_TOKEN_KEY is unset: search page tokens are sealed with a random key                      and stop working when this process restarts (set the same key on every replica)"
                );
                let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
                key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                Ok(tp_store::sealed::TokenSealer::new(&key)?)
            }
        }
    }

    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
        }
    }
}
