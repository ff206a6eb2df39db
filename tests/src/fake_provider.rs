//! A local stand-in for a model provider that speaks the real streaming wire
//! format of either API: OpenAI-compatible chat completions (SSE chunks of
//! `chat.completion.chunk`, a usage chunk, `[DONE]`) or Anthropic Messages
//! (`message_start`, `content_block_delta`s, `message_delta`, `message_stop`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which API the fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// What the fake answers, one entry per request, in order.
#[derive(Clone)]
pub enum FakeReply {
    /// Streams these deltas, then usage (input, output tokens) and the end.
    Text(Vec<String>, u32, u32),
    /// Streams these deltas, then closes the connection mid-reply.
    CutAfter(Vec<String>),
    /// Streams the first delta, waits, then streams the rest and the end.
    Slow(String, Duration, Vec<String>),
    /// Answers with this HTTP status and the provider's JSON error body
    /// (`retry-after: 0`, so a client's retries come at once).
    Status(u16),
    /// Sends nothing at all for this long (not even the headers), then
    /// closes the connection.
    Silent(Duration),
    /// Waits this long, then streams these deltas and the end: a model
    /// slow to its first token.
    Late(Duration, Vec<String>),
}

/// The running fake.
pub struct FakeProvider {
    pub base_url: String,
    /// The JSON bodies received, in order.
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
    /// Set when a client closed the connection before the reply was written.
    pub client_hung_up: Arc<AtomicBool>,
}

impl FakeProvider {
    pub fn hung_up(&self) -> bool {
        self.client_hung_up.load(Ordering::SeqCst)
    }

    /// Whether a client hangs up within `limit`, looking every 20 ms.
    pub async fn hangs_up_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.hung_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

fn delta(wire: Wire, text: &str) -> String {
    let text = serde_json::json!(text);
    match wire {
        Wire::OpenAi => format!(
            "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text}}}}}]}}\n\n"
        ),
        Wire::Anthropic => format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}\n\n"
        ),
    }
}

fn opening(wire: Wire, input: u32) -> String {
    match wire {
        Wire::OpenAi => String::new(),
        Wire::Anthropic => format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_test\",\"usage\":{{\"input_tokens\":{input},\"output_tokens\":1}}}}}}\n\n\
             event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
        ),
    }
}

fn ending(wire: Wire, input: u32, output: u32) -> String {
    match wire {
        Wire::OpenAi => format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{input},\"completion_tokens\":{output}}}}}\n\ndata: [DONE]\n\n"
        ),
        Wire::Anthropic => format!(
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
             event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{output}}}}}\n\n\
             event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
        ),
    }
}

/// Reads one HTTP request; returns its JSON body.
async fn read_request(socket: &mut TcpStream) -> Option<serde_json::Value> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..i]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buffer.extend_from_slice(&chunk[..n]);
    }
    serde_json::from_slice(&buffer[head_end..head_end + length]).ok()
}

pub async fn start(wire: Wire, script: Vec<FakeReply>) -> anyhow::Result<FakeProvider> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let requests = Arc::new(Mutex::new(Vec::new()));
    let client_hung_up = Arc::new(AtomicBool::new(false));
    let (log, hung_up) = (requests.clone(), client_hung_up.clone());
    tokio::spawn(async move {
        for reply in script {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let Some(body) = read_request(&mut socket).await else {
                continue;
            };
            if let Ok(mut log) = log.lock() {
                log.push(body);
            }
            // Requests are read and logged in arrival order, and each gets
            // the next scripted reply; the replies themselves are written
            // concurrently, as a real provider's would be, so a slow reply
            // does not hold back the next caller's.
            let hung_up = hung_up.clone();
            tokio::spawn(async move {
                let (first, pause, rest, end) = match reply {
                    FakeReply::Text(deltas, input, output) => {
                        (deltas, None, Vec::new(), Some((input, output)))
                    }
                    FakeReply::CutAfter(deltas) => (deltas, None, Vec::new(), None),
                    FakeReply::Slow(first, wait, rest) => {
                        (vec![first], Some(wait), rest, Some((1, 1)))
                    }
                    FakeReply::Status(code) => {
                        let body =
                            r#"{"error":{"type":"overloaded_error","message":"Overloaded"}}"#;
                        let response = format!(
                            "HTTP/1.1 {code} Error\r\ncontent-type: application/json\r\nretry-after: 0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        return;
                    }
                    FakeReply::Silent(wait) => {
                        tokio::time::sleep(wait).await;
                        return;
                    }
                    FakeReply::Late(wait, deltas) => {
                        tokio::time::sleep(wait).await;
                        (deltas, None, Vec::new(), Some((10, 5)))
                    }
                };
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n",
                );
                out.push_str(&opening(wire, end.map_or(1, |(input, _)| input)));
                for text in &first {
                    out.push_str(&delta(wire, text));
                }
                if socket.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                let _ = socket.flush().await;
                if let Some(wait) = pause {
                    // Keep-alives while waiting show whether the client is still there.
                    let started = std::time::Instant::now();
                    while started.elapsed() < wait {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let keep_alive = if wire == Wire::OpenAi {
                            ": keep-alive\n\n"
                        } else {
                            "event: ping\ndata: {\"type\":\"ping\"}\n\n"
                        };
                        if socket.write_all(keep_alive.as_bytes()).await.is_err() {
                            hung_up.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                    if hung_up.load(Ordering::SeqCst) {
                        return;
                    }
                }
                let mut tail = String::new();
                for text in &rest {
                    tail.push_str(&delta(wire, text));
                }
                if let Some((input, output)) = end {
                    tail.push_str(&ending(wire, input, output));
                }
                let _ = socket.write_all(tail.as_bytes()).await;
            });
        }
    });
    let base_url = match wire {
        Wire::OpenAi => format!("http://{addr}/v1"),
        Wire::Anthropic => format!("http://{addr}"),
    };
    Ok(FakeProvider {
        base_url,
        requests,
        client_hung_up,
    })
}
