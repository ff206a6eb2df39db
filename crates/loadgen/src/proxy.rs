//! The gateway hop's floor: a bare HTTP/2 reverse proxy (`tp-loadgen
//! proxy-server`), its own process, forwarding every call unchanged over
//! one HTTP/2 connection to its upstream, as the gateway does to
//! `conversation`, with nothing else: no authentication, no layers, no
//! decoding. What a hop through it adds is what any hop costs here.

use std::net::SocketAddr;

use anyhow::Context as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// Serves on `addr`, forwarding to `upstream`, until the process is stopped.
pub async fn serve(addr: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() || !upstream.ip().is_loopback() {
        anyhow::bail!("the proxy runs on loopback only, not {addr} -> {upstream}");
    }
    let stream = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to {upstream}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let mut sender = sender.clone();
                async move {
                    let (mut parts, body) = request.into_parts();
                    let path = parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    parts.uri = Uri::builder()
                        .scheme("http")
                        .authority(upstream.to_string())
                        .path_and_query(path)
                        .build()?;
                    let response = sender
                        .send_request(Request::from_parts(parts, body))
                        .await?;
                    anyhow::Ok(response)
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
