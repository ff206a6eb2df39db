//! A local stand-in for an OpenAI-compatible provider, speaking the real
//! streaming wire format (SSE chunks of `chat.completion.chunk`, a usage
//! chunk, `[DONE]`), for tests of the model responder.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake answers, one entry per request, in order.
#[derive(Clone)]
pub enum FakeReply {
    /// Streams these deltas, then usage (`prompt_tokens`, `completion_tokens`) and `[DONE]`.
    Text(Vec<String>, u32, u32),
    /// Streams these deltas, then closes the connection mid-reply.
    CutAfter(Vec<String>),
    /// Streams the first delta, waits, then finishes like `Text`.
    Slow(String, std::time::Duration, Vec<String>),
}

/// The running fake: its base URL and the JSON bodies it received.
pub struct FakeOpenAi {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub async fn start(script: Vec<FakeReply>) -> anyhow::Result<FakeOpenAi> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    tokio::spawn(async move {
        for reply in script {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head_end, length) = loop {
                let Ok(n) = socket.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
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
                let Ok(n) = socket.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            if let Ok(body) = serde_json::from_slice(&buffer[head_end..head_end + length])
                && let Ok(mut log) = log.lock()
            {
                log.push(body);
            }
            let mut pause = None;
            let (deltas, ending) = match reply {
                FakeReply::Text(deltas, input, output) => (
                    deltas,
                    format!(
                        "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{input},\"completion_tokens\":{output}}}}}\n\ndata: [DONE]\n\n"
                    ),
                ),
                FakeReply::CutAfter(deltas) => (deltas, String::new()),
                FakeReply::Slow(first, wait, rest) => {
                    pause = Some(wait);
                    let mut deltas = vec![first];
                    deltas.extend(rest);
                    (
                        deltas,
                        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n".to_owned(),
                    )
                }
            };
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_err() {
                continue;
            }
            for (i, delta) in deltas.iter().enumerate() {
                let chunk = format!(
                    "data: {{\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}\n\n",
                    serde_json::json!(delta)
                );
                let _ = socket.write_all(chunk.as_bytes()).await;
                if i == 0
                    && let Some(wait) = pause
                {
                    let _ = socket.flush().await;
                    tokio::time::sleep(wait).await;
                }
            }
            let _ = socket.write_all(ending.as_bytes()).await;
        }
    });
    Ok(FakeOpenAi {
        base_url: format!("http://{addr}/v1"),
        requests,
    })
}
