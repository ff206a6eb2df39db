//! A local identity provider for tests and benchmarks (feature `testing`):
//! it serves one JWK set over HTTP/1.1 to every request.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads an HTTP/1.1 request's head; false if the client went away first.
pub async fn read_request_head(socket: &mut TcpStream) -> bool {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Serves `jwks` on a free loopback port until the runtime stops; returns
/// the port's address (the JWKS URL is any path on it).
pub async fn serve_jwks(jwks: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = jwks.clone();
            tokio::spawn(async move {
                if !read_request_head(&mut socket).await {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}
