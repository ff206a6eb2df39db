//! [`Http2Channel`]: the client side of a call to another of our services,
//! as one HTTP/2 connection that the calling task hands requests to
//! directly.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of its connection: a
//! call is queued to a worker task, which wakes and hands it to hyper's
//! connection task. That worker is a hand-off, and a wake-up, on every
//! call; it buys load balancing over several endpoints and `poll_ready`
//! back-pressure, and each internal client here has one endpoint and is
//! bounded by the caller's own limits. Here the caller clones hyper's
//! `SendRequest` (an `Arc`) and sends on it, as the load generator's bare
//! proxy does, which is the floor the gateway hop is measured against.
//!
//! What it keeps of tonic's channel: connecting lazily (the other service
//! may start later), reconnecting on the next call after the connection
//! died, `TCP_NODELAY`, tonic's HTTP/2 settings (hyper's defaults and
//! Tokio's timer), and errors tonic maps to statuses as it does for its
//! own channel (a refused connection is `Unavailable`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tonic::body::Body;
use tower_service::Service;

/// How long a connection attempt may take before calls waiting on it fail
/// with `Unavailable` (tonic's channel has no limit; an address that drops
/// packets would then hold every call until its own deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A URL [`Http2Channel::lazy`] cannot connect to.
#[derive(Debug, thiserror::Error)]
#[error("`{url}` is not a service URL: {reason} (expected http://host:port)")]
pub struct BadServiceUrl {
    pub url: String,
    pub reason: String,
}

/// One lazily opened, reconnecting HTTP/2 connection to `http://host:port`,
/// shared by its clones. A tower service for tonic's generated clients and
/// for requests passed on as they came.
#[derive(Clone)]
pub struct Http2Channel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Http2Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Channel")
            .field("authority", &self.shared.authority)
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// The `:authority` every request is sent with.
    authority: Authority,
    /// Where to connect (a name is resolved on each connection attempt).
    host: String,
    port: u16,
    /// The open connection's sender; `None` before the first call.
    connection: Mutex<Option<SendRequest<Body>>>,
    /// Held by the one call that is connecting; holds the last attempt's
    /// failure, so calls that waited on that attempt fail with it instead
    /// of each trying again in turn.
    connecting: tokio::sync::Mutex<Option<FailedAttempt>>,
}

struct FailedAttempt {
    ended: Instant,
    status: tonic::Status,
}

impl Http2Channel {
    /// A channel to `url` (`http://host:port`) that connects on its first
    /// call.
    pub fn lazy(url: &str) -> Result<Self, BadServiceUrl> {
        let bad = |reason: &str| BadServiceUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(bad("only http:// is supported between our services"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            shared: Arc::new(Shared {
                authority,
                host,
                port,
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

impl Shared {
    /// The open connection's sender, unless there is none or it has closed.
    fn open(&self) -> Option<SendRequest<Body>> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connection.as_ref().filter(|c| !c.is_closed()).cloned()
    }

    /// A sender on an open connection, connecting first if need be.
    async fn sender(&self) -> Result<SendRequest<Body>, tonic::Status> {
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        let waited_from = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        // Another call may have connected, or failed to, while this one
        // waited.
        if let Some(sender) = self.open() {
            return Ok(sender);
        }
        if let Some(failed) = last_failure.as_ref()
            && failed.ended >= waited_from
        {
            return Err(failed.status.clone());
        }
        match self.connect().await {
            Ok(sender) => {
                *self
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
                *last_failure = None;
                Ok(sender)
            }
            Err(status) => {
                *last_failure = Some(FailedAttempt {
                    ended: Instant::now(),
                    status: status.clone(),
                });
                Err(status)
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, tonic::Status> {
        let unreachable = |what: String| {
            tonic::Status::unavailable(format!("could not connect to {}: {what}", self.authority))
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| unreachable(format!("no answer in {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        // Small gRPC frames would otherwise wait on delayed ACKs.
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let (sender, connection) = Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let authority = self.authority.clone();
        // Not in the calling call's trace: the connection outlives it.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%authority, error = %e, "connection to a service ended");
            }
        });
        Ok(sender)
    }

    /// The request with this channel's scheme and authority, as tonic's
    /// channel sends it (clients build only the path).
    fn addressed(&self, mut request: http::Request<Body>) -> http::Request<Body> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        request
    }
}

impl Service<http::Request<Body>> for Http2Channel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Nothing to reserve: HTTP/2 queues streams past the server's limit,
        // and callers are bounded by their own limits.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut sender = shared.sender().await?;
            let response = sender.send_request(shared.addressed(request)).await?;
            Ok(response.map(Body::new))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_accepted() {
        assert!(Http2Channel::lazy("http://127.0.0.1:50052").is_ok());
        assert!(Http2Channel::lazy("http://conversation:50052").is_ok());
        let error = Http2Channel::lazy("https://conversation:50052").unwrap_err();
        assert!(error.to_string().contains("only http://"), "{error}");
        assert!(Http2Channel::lazy("/no/host").is_err());
        assert!(Http2Channel::lazy("not a url").is_err());
    }

    #[test]
    fn ipv6_hosts_are_connected_to_without_brackets_and_the_port_defaults() {
        let channel = Http2Channel::lazy("http://[::1]:7000").unwrap();
        assert_eq!(channel.shared.host, "::1");
        assert_eq!(channel.shared.port, 7000);
        assert_eq!(channel.shared.authority.as_str(), "[::1]:7000");
        let channel = Http2Channel::lazy("http://knowledge").unwrap();
        assert_eq!(channel.shared.port, 80);
    }

    #[test]
    fn requests_go_out_with_the_channels_scheme_and_authority() {
        let channel = Http2Channel::lazy("http://knowledge:50053").unwrap();
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = "http://gateway:50051/pkg.Service/Method?x=1"
            .parse()
            .unwrap();
        let sent = channel.shared.addressed(request);
        assert_eq!(
            sent.uri().to_string(),
            "http://knowledge:50053/pkg.Service/Method?x=1"
        );
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = "/pkg.Service/Other".parse().unwrap();
        let sent = channel.shared.addressed(request);
        assert_eq!(
            sent.uri().to_string(),
            "http://knowledge:50053/pkg.Service/Other"
        );
    }
}
