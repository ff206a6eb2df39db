//! Each provider client against a local HTTP server that speaks the
//! provider's real streaming wire format (SSE over a close-delimited
//! HTTP/1.1 body): success, 429 then success, 5xx until retries run out, a
//! stream cut mid-reply, a slow first byte, a client that hangs up, and a
//! provider down long enough to open the circuit breaker.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tp_llm::breaker::BreakerConfig;
use tp_llm::{
    ChatMessage, ChatRequest, LlmClient, LlmError, ProviderConfig, ProviderKind, Role, StreamEvent,
    Usage,
};

const KEY: &str = "sk-test-never-printed";

/// What the server does with one connection.
#[derive(Clone)]
enum Reply {
    Status(u16),
    Stream {
        first_byte_delay: Duration,
        chunks: Vec<String>,
        /// Keep writing keep-alives until the client goes away.
        hold_open: bool,
    },
}

struct RecordedRequest {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Default)]
struct Recorded {
    requests: Vec<RecordedRequest>,
    client_went_away: bool,
}

async fn serve(script: Vec<Reply>) -> (SocketAddr, Arc<Mutex<Recorded>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let log = recorded.clone();
    tokio::spawn(async move {
        for reply in script {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            // Read the request head and its body.
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut chunk).await.expect("read");
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let mut lines = head.lines();
            let path = lines
                .next()
                .unwrap_or_default()
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buffer.len() < head_end + length {
                let n = socket.read(&mut chunk).await.expect("read body");
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
            log.lock().expect("lock").requests.push(RecordedRequest {
                path,
                headers,
                body,
            });

            match reply {
                Reply::Status(code) => {
                    let response = format!(
                        "HTTP/1.1 {code} Busy\r\nretry-after: 0\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                }
                Reply::Stream {
                    first_byte_delay,
                    chunks,
                    hold_open,
                } => {
                    tokio::time::sleep(first_byte_delay).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        continue;
                    }
                    for chunk in chunks {
                        let _ = socket.write_all(chunk.as_bytes()).await;
                        let _ = socket.flush().await;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    if hold_open {
                        for _ in 0..400 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            if socket.write_all(b": keep-alive\n\n").await.is_err() {
                                log.lock().expect("lock").client_went_away = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
    });
    (addr, recorded)
}

fn client(kind: ProviderKind, addr: SocketAddr, first_byte_timeout: Duration) -> LlmClient {
    let base_url = match kind {
        ProviderKind::OpenAiCompatible => format!("http://{addr}/v1"),
        ProviderKind::Anthropic => format!("http://{addr}"),
    };
    LlmClient::new(ProviderConfig {
        kind,
        base_url,
        api_key: KEY.into(),
        model: "test-model".into(),
        first_byte_timeout,
        idle_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff: Duration::from_millis(10),
        breaker: BreakerConfig::default(),
    })
    .expect("client")
}

fn request() -> ChatRequest {
    ChatRequest {
        system: "You are a thought partner.".into(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: "We need to hire more engineers.".into(),
        }],
        max_tokens: 300,
    }
}

fn openai_stream(texts: &[&str], done: bool) -> Vec<String> {
    let mut chunks: Vec<String> = texts
        .iter()
        .map(|t| {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
                serde_json::json!(t)
            )
        })
        .collect();
    if done {
        chunks.push(
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":31,\"completion_tokens\":4}}\n\n"
                .into(),
        );
        chunks.push("data: [DONE]\n\n".into());
    }
    chunks
}

async fn collect(client: &LlmClient) -> Result<Vec<Result<StreamEvent, String>>, LlmError> {
    let stream = client.stream(&request()).await?;
    Ok(stream.map(|e| e.map_err(|e| e.to_string())).collect().await)
}

fn ok_stream(chunks: Vec<String>) -> Reply {
    Reply::Stream {
        first_byte_delay: Duration::ZERO,
        chunks,
        hold_open: false,
    }
}

#[tokio::test]
async fn openai_compatible_streams_text_then_usage() {
    let (addr, recorded) = serve(vec![ok_stream(openai_stream(&["Hello", ", world"], true))]).await;
    let events = collect(&client(
        ProviderKind::OpenAiCompatible,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect("stream");
    assert_eq!(
        events,
        vec![
            Ok(StreamEvent::Delta("Hello".into())),
            Ok(StreamEvent::Delta(", world".into())),
            Ok(StreamEvent::Done(Usage {
                input_tokens: 31,
                output_tokens: 4
            })),
        ]
    );
    let recorded = recorded.lock().expect("lock");
    let RecordedRequest {
        path,
        headers,
        body,
    } = &recorded.requests[0];
    assert_eq!(path, "/v1/chat/completions");
    assert!(headers.contains(&("authorization".into(), format!("Bearer {KEY}"))));
    let body: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(
        body["messages"][1]["content"],
        "We need to hire more engineers."
    );
}

#[tokio::test]
async fn anthropic_messages_streams_text_then_usage() {
    let chunks = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":40,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
        "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"What problem\"}}\n\n".to_owned(),
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" would they solve?\"}}\n\n".to_owned(),
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned(),
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n".to_owned(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned(),
    ];
    let (addr, recorded) = serve(vec![ok_stream(chunks)]).await;
    let events = collect(&client(
        ProviderKind::Anthropic,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect("stream");
    assert_eq!(
        events,
        vec![
            Ok(StreamEvent::Delta("What problem".into())),
            Ok(StreamEvent::Delta(" would they solve?".into())),
            Ok(StreamEvent::Done(Usage {
                input_tokens: 40,
                output_tokens: 9
            })),
        ]
    );
    let recorded = recorded.lock().expect("lock");
    let RecordedRequest {
        path,
        headers,
        body,
    } = &recorded.requests[0];
    assert_eq!(path, "/v1/messages");
    assert!(headers.contains(&("x-api-key".into(), KEY.into())));
    assert!(headers.iter().any(|(k, _)| k == "anthropic-version"));
    let body: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(body["system"], "You are a thought partner.");
    assert_eq!(body["messages"][0]["role"], "user");
}

#[tokio::test]
async fn a_429_is_retried_before_the_first_token() {
    let (addr, recorded) = serve(vec![
        Reply::Status(429),
        ok_stream(openai_stream(&["ok"], true)),
    ])
    .await;
    let events = collect(&client(
        ProviderKind::OpenAiCompatible,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect("stream");
    assert_eq!(events[0], Ok(StreamEvent::Delta("ok".into())));
    assert_eq!(recorded.lock().expect("lock").requests.len(), 2);
}

#[tokio::test]
async fn a_persistent_500_fails_after_the_last_attempt_without_the_key() {
    let (addr, recorded) = serve(vec![
        Reply::Status(500),
        Reply::Status(500),
        Reply::Status(500),
    ])
    .await;
    let error = collect(&client(
        ProviderKind::Anthropic,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect_err("fails");
    assert!(
        matches!(
            error,
            LlmError::Status {
                status: 500,
                attempts: 3
            }
        ),
        "{error}"
    );
    assert!(!error.to_string().contains(KEY));
    assert_eq!(recorded.lock().expect("lock").requests.len(), 3);
}

#[tokio::test]
async fn a_stream_cut_mid_reply_ends_in_an_error_not_a_short_answer() {
    let (addr, _) = serve(vec![ok_stream(openai_stream(&["Half a"], false))]).await;
    let events = collect(&client(
        ProviderKind::OpenAiCompatible,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect("stream");
    assert_eq!(events[0], Ok(StreamEvent::Delta("Half a".into())));
    assert_eq!(events.last(), Some(&Err(LlmError::Truncated.to_string())));
}

#[tokio::test]
async fn a_slow_first_byte_times_out_and_a_patient_client_waits() {
    let slow = |chunks| Reply::Stream {
        first_byte_delay: Duration::from_millis(400),
        chunks,
        hold_open: false,
    };
    let (addr, _) = serve(vec![slow(openai_stream(&["late"], true))]).await;
    let error = collect(&client(
        ProviderKind::OpenAiCompatible,
        addr,
        Duration::from_millis(100),
    ))
    .await
    .expect_err("times out");
    assert!(matches!(error, LlmError::Timeout(_)), "{error}");

    let (addr, _) = serve(vec![slow(openai_stream(&["late"], true))]).await;
    let events = collect(&client(
        ProviderKind::OpenAiCompatible,
        addr,
        Duration::from_secs(2),
    ))
    .await
    .expect("stream");
    assert_eq!(events[0], Ok(StreamEvent::Delta("late".into())));
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request() {
    let (addr, recorded) = serve(vec![Reply::Stream {
        first_byte_delay: Duration::ZERO,
        chunks: openai_stream(&["first"], false),
        hold_open: true,
    }])
    .await;
    let client = client(ProviderKind::OpenAiCompatible, addr, Duration::from_secs(2));
    let mut stream = client.stream(&request()).await.expect("stream");
    assert_eq!(
        stream.next().await.expect("an event").expect("ok"),
        StreamEvent::Delta("first".into())
    );
    drop(stream);
    let mut gone = false;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if recorded.lock().expect("lock").client_went_away {
            gone = true;
            break;
        }
    }
    assert!(gone, "the server should see the connection close");
}

#[tokio::test]
async fn a_provider_that_stays_down_opens_the_breaker_and_a_probe_closes_it() {
    let open_for = Duration::from_millis(300);
    // Two 5xx storms of three attempts each, then the provider is back.
    let mut script = vec![Reply::Status(503); 6];
    script.push(ok_stream(openai_stream(&["Back."], true)));
    script.push(ok_stream(openai_stream(&["Still here."], true)));
    let (addr, recorded) = serve(script).await;
    let client = LlmClient::new(ProviderConfig {
        kind: ProviderKind::OpenAiCompatible,
        base_url: format!("http://{addr}/v1"),
        api_key: KEY.into(),
        model: "test-model".into(),
        first_byte_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        max_attempts: 3,
        backoff: Duration::from_millis(1),
        breaker: BreakerConfig {
            failures_to_open: 2,
            open_for,
        },
    })
    .expect("client");
    let requests = || recorded.lock().expect("lock").requests.len();

    for _ in 0..2 {
        let err = collect(&client).await.expect_err("the provider is down");
        assert!(
            matches!(err, LlmError::Status { status: 503, .. }),
            "{err:?}"
        );
    }
    assert_eq!(requests(), 6, "two calls, three attempts each");
    // Open: calls fail at once, and the provider is left alone.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let err = collect(&client).await.expect_err("the breaker is open");
        assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err:?}");
        assert_eq!(err.kind(), "circuit_open");
        assert!(started.elapsed() < Duration::from_millis(50));
    }
    assert_eq!(requests(), 6, "no request while the breaker is open");

    tokio::time::sleep(open_for).await;
    let events = collect(&client).await.expect("the probe is let through");
    assert!(
        events
            .iter()
            .any(|e| e == &Ok(StreamEvent::Delta("Back.".into())))
    );
    let events = collect(&client).await.expect("closed again");
    assert!(
        events
            .iter()
            .any(|e| e == &Ok(StreamEvent::Delta("Still here.".into())))
    );
    assert_eq!(requests(), 8);
}
