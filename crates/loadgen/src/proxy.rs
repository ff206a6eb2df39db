//! The gateway hop's floor: a bare HTTP/2 reverse proxy (`tp-loadgen
//! proxy-server`), its own process, forwarding every call unchanged over
//! one HTTP/2 connection to its upstream with the gateway's own client
//! ([`Http2Channel`]), as the gateway does to `conversation`, with nothing
//! else: no authentication, no layers, no decoding. What a hop through it
//! adds is what any hop costs here.

use std::net::SocketAddr;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::body::Body;
use tower::Service as _;
use tp_server::Http2Channel;

/// Serves on `addr`, forwarding to `upstream`, until the process is stopped.
pub async fn serve(addr: SocketAddr, upstream: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() || !upstream.ip().is_loopback() {
        anyhow::bail!("the proxy runs on loopback only, not {addr} -> {upstream}");
    }
    // The gateway's own client for the services behind it, so the floor
    // forwards as the gateway does: one connection, a call's HEADERS and
    // message in one write (hyper's client writes them in two).
    let upstream = Http2Channel::lazy(&format!("http://{upstream}"))?;
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let mut upstream = upstream.clone();
                // The channel sets the scheme and authority; the path stays.
                async move {
                    upstream
                        .call(request.map(Body::new))
                        .await
                        .map_err(|e| anyhow::anyhow!(e))
                }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
