//! Real LLM provider clients over `reqwest`, streaming with server-sent
//! events: OpenAI-compatible chat completions (OpenAI, Azure OpenAI, vLLM,
//! llama.cpp server, Ollama) and the Anthropic Messages API.
//!
//! - Retries with backoff on 429 and 5xx, only before the first token.
//! - A circuit breaker ([`breaker`]) stops calling a provider that is down
//!   and fails at once instead, until a probe finds it up.
//! - Dropping the stream drops the HTTP response, which cancels the upstream
//!   request.
//! - The API key is never in `Debug`, errors, logs or spans.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

pub mod breaker;
mod sse;

use breaker::{BreakerConfig, CircuitBreaker, ProviderHealth};
pub use sse::{SseEvent, SseParser};

/// Which wire format a provider speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// `POST {base}/chat/completions`, `Authorization: Bearer`.
    OpenAiCompatible,
    /// `POST {base}/v1/messages`, `x-api-key`, `anthropic-version`.
    Anthropic,
}

/// How to reach a provider.
#[derive(Clone)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    /// Longest wait for the response headers (the first byte).
    pub first_byte_timeout: Duration,
    /// Longest silence between two chunks of a streaming reply.
    pub idle_timeout: Duration,
    /// Attempts in all, for 429 and 5xx before the first token.
    pub max_attempts: u32,
    /// First backoff; doubles each retry (a `retry-after` header wins, up to 10 s).
    pub backoff: Duration,
    pub breaker: BreakerConfig,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// One completion: a system prompt and the transcript, oldest first.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u32,
}

/// Tokens the provider says it used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

/// What a stream yields: text in order, then exactly one `Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    Delta(String),
    Done(Usage),
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("provider answered HTTP {status} after {attempts} attempt(s)")]
    Status { status: u16, attempts: u32 },
    #[error("no response from the provider within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the provider: {0}")]
    Transport(String),
    #[error("the provider's stream is malformed: {0}")]
    Protocol(String),
    #[error("the provider reported an error: {0}")]
    Provider(String),
    #[error("the provider's stream ended before the reply was complete")]
    Truncated,
    #[error("invalid provider configuration: {0}")]
    Config(String),
    #[error(
        "the model provider has been failing; calls to it are paused for another {}s",
        .retry_after.as_secs().max(1)
    )]
    CircuitOpen { retry_after: Duration },
}

/// What [`LlmError::Transport`] says when reqwest gave up waiting (the
/// connect or idle timeout), as opposed to failing outright.
const TRANSPORT_TIMED_OUT: &str = "timed out";

impl LlmError {
    /// reqwest errors can carry the URL; never the headers. Keep only the
    /// kind of failure, so no secret can leak through an error message.
    fn transport(e: &reqwest::Error) -> Self {
        let kind = if e.is_connect() {
            "connection failed"
        } else if e.is_timeout() {
            TRANSPORT_TIMED_OUT
        } else if e.is_body() || e.is_decode() {
            "body could not be read"
        } else {
            "request failed"
        };
        LlmError::Transport(kind.to_owned())
    }

    /// A short name for the failure from a small fixed set, for metrics
    /// (`error.type`): never the message, which may quote the provider.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Status { status: 429, .. } => "http_429",
            LlmError::Status { status, .. } if *status >= 500 => "http_5xx",
            LlmError::Status { .. } => "http_4xx",
            LlmError::Timeout(_) => "timeout",
            LlmError::Transport(kind) if kind == TRANSPORT_TIMED_OUT => "timeout",
            LlmError::Transport(_) => "transport",
            LlmError::Protocol(_) => "protocol",
            LlmError::Provider(_) => "provider_error",
            LlmError::Truncated => "stream_cut",
            LlmError::Config(_) => "config",
            LlmError::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// What the failure says about the provider, for the breaker.
    fn health(&self) -> ProviderHealth {
        match self {
            LlmError::Status { status, .. } if *status == 429 || *status >= 500 => {
                ProviderHealth::Down
            }
            LlmError::Timeout(_) | LlmError::Transport(_) => ProviderHealth::Down,
            _ => ProviderHealth::Up,
        }
    }
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

/// A client for one configured provider.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    config: ProviderConfig,
    /// Shared by every clone: one breaker per provider per process.
    breaker: Arc<Mutex<CircuitBreaker>>,
}

static CRYPTO: Once = Once::new();

impl LlmClient {
    pub fn new(config: ProviderConfig) -> Result<Self, LlmError> {
        if config.api_key.trim().is_empty() {
            return Err(LlmError::Config("the API key is empty".into()));
        }
        if !(config.base_url.starts_with("https://") || config.base_url.starts_with("http://")) {
            return Err(LlmError::Config(format!(
                "base URL `{}` must start with https:// (or http:// for a local server)",
                config.base_url
            )));
        }
        if config.model.trim().is_empty() || config.max_attempts == 0 {
            return Err(LlmError::Config(
                "model and max_attempts must be set".into(),
            ));
        }
        // One rustls crypto provider for the process; a second install is a no-op.
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let http = reqwest::Client::builder()
            .connect_timeout(config.first_byte_timeout)
            .read_timeout(config.idle_timeout)
            .build()
            .map_err(|e| LlmError::Config(format!("HTTP client: {}", LlmError::transport(&e))))?;
        Ok(Self {
            http,
            breaker: Arc::new(Mutex::new(CircuitBreaker::new(config.breaker))),
            config,
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Starts a streaming completion. Retries 429 and 5xx (with backoff)
    /// until the provider accepts; after that, errors end the stream. Fails
    /// at once with [`LlmError::CircuitOpen`] while the breaker is open.
    pub async fn stream(&self, request: &ChatRequest) -> Result<EventStream, LlmError> {
        self.with_breaker(|breaker| breaker.admit(Instant::now()))
            .map_err(|refused| LlmError::CircuitOpen {
                retry_after: refused.retry_after,
            })?;
        let started = self.stream_with_retries(request).await;
        let health = match &started {
            Ok(_) => ProviderHealth::Up,
            Err(e) => e.health(),
        };
        if let Some(state) = self.with_breaker(|breaker| breaker.record(health, Instant::now())) {
            match state {
                breaker::BreakerState::Closed { .. } => {
                    tracing::info!("model provider answering again; circuit closed")
                }
                _ => tracing::warn!(
                    open_for_ms = self.config.breaker.open_for.as_millis() as u64,
                    "model provider down; circuit open, calls fail at once"
                ),
            }
        }
        started
    }

    fn with_breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a valid state.
        let mut breaker = self
            .breaker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut breaker)
    }

    async fn stream_with_retries(&self, request: &ChatRequest) -> Result<EventStream, LlmError> {
        let (url, body) = self.wire_request(request);
        let body = body.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            builder = match self.config.kind {
                ProviderKind::OpenAiCompatible => builder.bearer_auth(&self.config.api_key),
                ProviderKind::Anthropic => builder
                    .header("x-api-key", &self.config.api_key)
                    .header("anthropic-version", "2023-06-01"),
            };
            let sent = tokio::time::timeout(self.config.first_byte_timeout, builder.send()).await;
            let response = match sent {
                Err(_) => return Err(LlmError::Timeout(self.config.first_byte_timeout)),
                Ok(Err(e)) => return Err(LlmError::transport(&e)),
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_success() {
                return Ok(self.events(response));
            }
            let retryable = status.as_u16() == 429 || status.is_server_error();
            if !retryable || attempt >= self.config.max_attempts {
                return Err(LlmError::Status {
                    status: status.as_u16(),
                    attempts: attempt,
                });
            }
            let wait = retry_after(response.headers())
                .unwrap_or(self.config.backoff * 2u32.saturating_pow(attempt - 1));
            tracing::warn!(
                status = status.as_u16(),
                attempt,
                wait_ms = wait.as_millis() as u64,
                "provider busy; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn wire_request(&self, request: &ChatRequest) -> (String, Value) {
        let base = self.config.base_url.trim_end_matches('/');
        let role = |r: Role| match r {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        match self.config.kind {
            ProviderKind::OpenAiCompatible => {
                let mut messages = vec![json!({"role": "system", "content": request.system})];
                messages.extend(
                    request
                        .messages
                        .iter()
                        .map(|m| json!({"role": role(m.role), "content": m.content})),
                );
                (
                    format!("{base}/chat/completions"),
                    json!({
                        "model": self.config.model,
                        "messages": messages,
                        "max_tokens": request.max_tokens,
                        "stream": true,
                        "stream_options": {"include_usage": true},
                    }),
                )
            }
            ProviderKind::Anthropic => (
                format!("{base}/v1/messages"),
                json!({
                    "model": self.config.model,
                    "system": request.system,
                    "messages": request.messages.iter()
                        .map(|m| json!({"role": role(m.role), "content": m.content}))
                        .collect::<Vec<_>>(),
                    "max_tokens": request.max_tokens,
                    "stream": true,
                }),
            ),
        }
    }

    fn events(&self, response: reqwest::Response) -> EventStream {
        let kind = self.config.kind;
        let mut decoder = Decoder::new(kind);
        let mut body = response.bytes_stream();
        let stream = async_stream(move |sender| async move {
            loop {
                // Stop reading as soon as the consumer is gone, even while the
                // provider is silent, so the upstream request is cancelled.
                let next = tokio::select! {
                    () = sender.closed() => return,
                    next = body.next() => next,
                };
                let Some(chunk) = next else { break };
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let _ = sender.send(Err(LlmError::transport(&e))).await;
                        return;
                    }
                };
                for event in decoder.push(&chunk) {
                    let finished = matches!(event, Ok(StreamEvent::Done(_)) | Err(_));
                    if sender.send(event).await.is_err() || finished {
                        return;
                    }
                }
            }
            let _ = sender.send(Err(LlmError::Truncated)).await;
        });
        Box::pin(stream)
    }
}

/// Runs a producer task that feeds a channel, as a stream. Dropping the
/// stream drops the receiver, the producer's next send fails and it stops,
/// dropping the HTTP body: the upstream request is cancelled.
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<StreamEvent, LlmError>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<StreamEvent, LlmError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(32);
    tokio::spawn(producer(sender));
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(10)))
}

/// Turns a provider's SSE events into [`StreamEvent`]s. Pure.
pub struct Decoder {
    kind: ProviderKind,
    sse: SseParser,
    usage: Usage,
}

impl Decoder {
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            sse: SseParser::default(),
            usage: Usage::default(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<Result<StreamEvent, LlmError>> {
        let mut out = Vec::new();
        for event in self.sse.push(bytes) {
            match self.kind {
                ProviderKind::OpenAiCompatible => self.openai(event, &mut out),
                ProviderKind::Anthropic => self.anthropic(event, &mut out),
            }
        }
        out
    }

    fn openai(&mut self, event: SseEvent, out: &mut Vec<Result<StreamEvent, LlmError>>) {
        if event.data.trim() == "[DONE]" {
            out.push(Ok(StreamEvent::Done(self.usage)));
            return;
        }
        let value: Value = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(e) => return out.push(Err(LlmError::Protocol(format!("chunk is not JSON: {e}")))),
        };
        if let Some(message) = value.pointer("/error/message").and_then(Value::as_str) {
            return out.push(Err(LlmError::Provider(message.to_owned())));
        }
        if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
            self.usage = Usage {
                input_tokens: token_count(usage, "prompt_tokens"),
                output_tokens: token_count(usage, "completion_tokens"),
            };
        }
        if let Some(text) = value
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            && !text.is_empty()
        {
            out.push(Ok(StreamEvent::Delta(text.to_owned())));
        }
    }

    fn anthropic(&mut self, event: SseEvent, out: &mut Vec<Result<StreamEvent, LlmError>>) {
        let value: Value = match serde_json::from_str(&event.data) {
            Ok(v) => v,
            Err(e) => return out.push(Err(LlmError::Protocol(format!("event is not JSON: {e}")))),
        };
        match value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "message_start" => {
                if let Some(usage) = value.pointer("/message/usage") {
                    self.usage.input_tokens = token_count(usage, "input_tokens");
                    self.usage.output_tokens = token_count(usage, "output_tokens");
                }
            }
            "content_block_delta" => {
                if let Some(text) = value.pointer("/delta/text").and_then(Value::as_str) {
                    out.push(Ok(StreamEvent::Delta(text.to_owned())));
                }
            }
            "message_delta" => {
                if let Some(usage) = value.get("usage") {
                    self.usage.output_tokens = token_count(usage, "output_tokens");
                }
            }
            "message_stop" => out.push(Ok(StreamEvent::Done(self.usage))),
            "error" => out.push(Err(LlmError::Provider(
                value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned(),
            ))),
            _ => {} // ping, content_block_start/stop
        }
    }
}

fn token_count(usage: &Value, field: &str) -> u32 {
    usage
        .get(field)
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: ProviderKind) -> ProviderConfig {
        ProviderConfig {
            kind,
            base_url: "http://127.0.0.1:1".into(),
            api_key: "sk-secret-value".into(),
            model: "m".into(),
            first_byte_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_attempts: 3,
            backoff: Duration::from_millis(10),
            breaker: breaker::BreakerConfig::default(),
        }
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let debug = format!("{:?}", config(ProviderKind::Anthropic));
        assert!(!debug.contains("sk-secret-value") && debug.contains("<redacted>"));
    }

    #[test]
    fn bad_configuration_is_refused_up_front() {
        let mut c = config(ProviderKind::OpenAiCompatible);
        c.api_key = " ".into();
        assert!(matches!(LlmClient::new(c), Err(LlmError::Config(_))));
        let mut c = config(ProviderKind::OpenAiCompatible);
        c.base_url = "api.openai.com".into();
        assert!(matches!(LlmClient::new(c), Err(LlmError::Config(_))));
    }

    #[test]
    fn openai_chunks_decode_to_deltas_and_usage() {
        let mut d = Decoder::new(ProviderKind::OpenAiCompatible);
        let events = d.push(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
              data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
              data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3}}\n\n\
              data: [DONE]\n\n",
        );
        let events: Vec<StreamEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                StreamEvent::Delta("Hi".into()),
                StreamEvent::Done(Usage {
                    input_tokens: 12,
                    output_tokens: 3
                })
            ]
        );
    }

    #[test]
    fn anthropic_events_decode_to_deltas_and_usage() {
        let mut d = Decoder::new(ProviderKind::Anthropic);
        let events = d.push(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
              event: ping\ndata: {\"type\":\"ping\"}\n\n\
              event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Yo\"}}\n\n\
              event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
              event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let events: Vec<StreamEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                StreamEvent::Delta("Yo".into()),
                StreamEvent::Done(Usage {
                    input_tokens: 20,
                    output_tokens: 7
                })
            ]
        );
    }

    #[test]
    fn error_kinds_are_a_small_fixed_set() {
        let status = |status| LlmError::Status {
            status,
            attempts: 1,
        };
        assert_eq!(status(429).kind(), "http_429");
        assert_eq!(status(503).kind(), "http_5xx");
        assert_eq!(status(401).kind(), "http_4xx");
        assert_eq!(LlmError::Timeout(Duration::from_secs(1)).kind(), "timeout");
        assert_eq!(
            LlmError::Transport(TRANSPORT_TIMED_OUT.into()).kind(),
            "timeout"
        );
        assert_eq!(
            LlmError::Transport("connection failed".into()).kind(),
            "transport"
        );
        assert_eq!(LlmError::Truncated.kind(), "stream_cut");
        // The provider's own words never become the kind.
        assert_eq!(
            LlmError::Provider("Overloaded: try later".into()).kind(),
            "provider_error"
        );
    }

    #[test]
    fn provider_errors_and_garbage_are_errors() {
        let mut d = Decoder::new(ProviderKind::Anthropic);
        let e = d.push(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
        assert!(matches!(&e[0], Err(LlmError::Provider(m)) if m == "Overloaded"));
        let mut d = Decoder::new(ProviderKind::OpenAiCompatible);
        assert!(matches!(
            d.push(b"data: not json\n\n")[0],
            Err(LlmError::Protocol(_))
        ));
    }
}
