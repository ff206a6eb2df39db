//! [`Http2Channel`]: the client side of a call to another of our services,
//! as one HTTP/2 connection that the calling task hands requests to
//! directly.
//!
//! tonic's `Channel` puts a `tower::Buffer` in front of its connection: a
//! call is queued to a worker task, which wakes and hands it to hyper's
//! connection task. That worker is a hand-off, and a wake-up, on every
//! call; it buys load balancing over several endpoints and `poll_ready`
//! back-pressure, and each internal client here has one endpoint and is
//! bounded by the caller's own limits. Here the caller clones the
//! connection's sender (an `Arc`) and sends on it.
//!
//! It speaks HTTP/2 with `h2`, the crate under hyper, not through hyper's
//! client: hyper waits for flow-control capacity before it sends a
//! request's first DATA frame, and a new stream has none until the
//! connection task has opened it, so hyper hands the body to a task of its
//! own and every call leaves in two writes, HEADERS and then DATA (seen
//! with `strace` on the gateway: two `writev`s per passed-on call, and the
//! called service often woke twice to read them). `h2` buffers a message
//! sent before the stream is open, and the connection writes HEADERS and
//! DATA together; the request's message is sent from the calling task.
//!
//! What it keeps of tonic's channel: connecting lazily (the other service
//! may start later), reconnecting on the next call after the connection
//! died, `TCP_NODELAY`, hyper's HTTP/2 settings (the ones tonic's channel
//! uses), and errors tonic maps to statuses as it does for its own channel
//! (a refused connection is `Unavailable`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::uri::{Authority, PathAndQuery, Scheme};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::body::Body;
use tower_service::Service;

/// How long a connection attempt may take before calls waiting on it fail
/// with `Unavailable` (tonic's channel has no limit; an address that drops
/// packets would then hold every call until its own deadline).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// hyper's HTTP/2 client defaults, which tonic's channel runs with.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

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
    /// The open connection; `None` before the first call.
    connection: Mutex<Option<Connection>>,
    /// Held by the one call that is connecting; holds the last attempt's
    /// failure, so calls that waited on that attempt fail with it instead
    /// of each trying again in turn.
    connecting: tokio::sync::Mutex<Option<FailedAttempt>>,
}

/// An HTTP/2 connection's sender, and whether its connection task ended.
#[derive(Clone)]
struct Connection {
    sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
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
    /// The open connection, unless there is none or it has closed.
    fn open(&self) -> Option<Connection> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connection
            .as_ref()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
    }

    /// A sender on an open connection, connecting first if need be.
    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, tonic::Status> {
        if let Some(connection) = self.open() {
            return Ok(connection.sender);
        }
        let waited_from = Instant::now();
        let mut last_failure = self.connecting.lock().await;
        // Another call may have connected, or failed to, while this one
        // waited.
        if let Some(connection) = self.open() {
            return Ok(connection.sender);
        }
        if let Some(failed) = last_failure.as_ref()
            && failed.ended >= waited_from
        {
            return Err(failed.status.clone());
        }
        match self.connect().await {
            Ok(connection) => {
                let sender = connection.sender.clone();
                *self
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(connection);
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

    async fn connect(&self) -> Result<Connection, tonic::Status> {
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
        handshake(stream, self.authority.clone())
            .await
            .map_err(|e| unreachable(e.to_string()))
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

/// An HTTP/2 connection over `io`, its connection task spawned.
async fn handshake<T>(io: T, authority: Authority) -> Result<Connection, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false)
        .handshake(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    // Not in the calling call's trace: the connection outlives it.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%authority, error = %e, "connection to a service ended");
        }
        ended.store(true, Ordering::Release);
    });
    Ok(Connection { sender, closed })
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
            let sender = shared.sender().await?;
            let mut sender = sender.ready().await?;
            let (parts, body) = shared.addressed(request).into_parts();
            let end_of_stream = body.is_end_stream();
            let (response, stream) =
                sender.send_request(http::Request::from_parts(parts, ()), end_of_stream)?;
            if !end_of_stream {
                // The message is at hand (a unary or server-streaming
                // call's only one): sent now, it leaves with the HEADERS.
                // A body still arriving is sent on by a task of its own.
                let mut pipe = RequestPipe::new(body, stream);
                let finished = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut pipe).poll(cx)));
                if finished.await.is_pending() {
                    tokio::spawn(pipe);
                }
            }
            let response = response.await?;
            Ok(response.map(|recv| Body::new(ResponseBody::new(recv))))
        })
    }
}

/// Sends a request's body on its stream: its first message at once (h2
/// buffers it until the stream opens), every later one as the stream's
/// flow-control window allows (an empty one at once). Stops if the peer
/// resets the stream.
struct RequestPipe {
    body: Body,
    stream: h2::SendStream<Bytes>,
    /// A message waiting for the window, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
    sent_any: bool,
}

impl RequestPipe {
    fn new(body: Body, stream: h2::SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            waiting: None,
            sent_any: false,
        }
    }
}

impl Future for RequestPipe {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if this.stream.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((data, end)) = this.waiting.take() {
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            this.waiting = Some((data, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        // The stream closed or failed: the response says why.
                        Poll::Ready(None | Some(Err(_))) => return Poll::Ready(()),
                    }
                }
                if this.stream.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let data = data.copy_to_bytes(data.remaining());
                        let end = this.body.is_end_stream();
                        // An empty frame (a bare end of stream) needs no
                        // window, and would never be given one.
                        if this.sent_any && !data.is_empty() {
                            this.stream.reserve_capacity(data.len());
                            this.waiting = Some((data, end));
                            continue;
                        }
                        this.sent_any = true;
                        if this.stream.send_data(data, end).is_err() || end {
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = this.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(_)) => {
                    this.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(());
                }
                None => {
                    let _ = this.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A response's body as it arrives: its messages, giving the window back
/// as each is handed on, then its trailers.
struct ResponseBody {
    recv: h2::RecvStream,
    data_ended: bool,
}

impl ResponseBody {
    fn new(recv: h2::RecvStream) -> Self {
        Self {
            recv,
            data_ended: false,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_ended {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Only the stream's own window: an error here means the
                    // stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_ended = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
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

    /// The client's end of a connection, keeping every write it makes.
    struct RecordedWrites {
        inner: tokio::io::DuplexStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for RecordedWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for RecordedWrites {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        /// One write, as a socket's `writev` is.
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &joined))?;
            self.writes.lock().unwrap().push(joined[..written].to_vec());
            Poll::Ready(Ok(written))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// The (type, flags, stream) of each whole HTTP/2 frame in `write`.
    fn frames(mut write: &[u8]) -> Vec<(u8, u8, u32)> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        write = write.strip_prefix(PREFACE).unwrap_or(write);
        let mut found = Vec::new();
        while write.len() >= 9 {
            let len =
                usize::from(write[0]) << 16 | usize::from(write[1]) << 8 | usize::from(write[2]);
            let stream = u32::from_be_bytes([write[5], write[6], write[7], write[8]]) & 0x7fff_ffff;
            found.push((write[3], write[4], stream));
            write = &write[(9 + len).min(write.len())..];
        }
        found
    }

    /// A server that answers every request with the bytes it sent, and an
    /// OK status.
    async fn echoing(io: tokio::io::DuplexStream) {
        let mut connection = h2::server::handshake(io).await.expect("server handshake");
        // Each request on a task of its own: the connection reads frames
        // only while it is polled here.
        while let Some(accepted) = connection.accept().await {
            let (request, respond) = accepted.expect("request");
            tokio::spawn(echo(request, respond));
        }
    }

    async fn echo(
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let mut body = request.into_body();
        let mut received = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.expect("request data");
            let _ = body.flow_control().release_capacity(data.len());
            received.extend_from_slice(&data);
        }
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        let mut stream = respond.send_response(response, false).expect("respond");
        stream
            .send_data(Bytes::from(received), false)
            .expect("reply");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        stream.send_trailers(trailers).expect("trailers");
    }

    /// One call with `body` through a channel whose connection records its
    /// writes, to a server that echoes: the reply, its trailers, and the
    /// HTTP/2 frames of the one write that carried the call's HEADERS.
    async fn recorded_call(body: Body) -> (Bytes, http::HeaderMap, Vec<(u8, u8, u32)>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let recorded = RecordedWrites {
            inner: client_io,
            writes: writes.clone(),
        };
        tokio::spawn(echoing(server_io));
        let mut channel = Http2Channel::lazy("http://conversation:50052").expect("url");
        let connection = handshake(recorded, channel.shared.authority.clone())
            .await
            .expect("handshake");
        *channel.shared.connection.lock().unwrap() = Some(connection);

        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = "/pkg.Service/Method".parse().unwrap();
        let call = async {
            let response = channel.call(request).await.expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("body")
        };
        let collected = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("the call is answered");
        let trailers = collected.trailers().cloned().expect("trailers");

        const HEADERS: u8 = 0x1;
        let writes = writes.lock().unwrap();
        let mut with_headers: Vec<_> = writes
            .iter()
            .map(|w| frames(w))
            .filter(|f| {
                f.iter()
                    .any(|&(kind, _, stream)| kind == HEADERS && stream == 1)
            })
            .collect();
        assert_eq!(
            with_headers.len(),
            1,
            "one write carries the call's HEADERS: {writes:?}"
        );
        (collected.to_bytes(), trailers, with_headers.remove(0))
    }

    const DATA: u8 = 0x0;
    const END_STREAM: u8 = 0x1;

    #[tokio::test]
    async fn a_calls_headers_and_message_leave_in_one_write() {
        let message = Bytes::from_static(b"\0\0\0\0\x05hello");
        let body = Body::new(http_body_util::Full::new(message.clone()));
        let (reply, trailers, write) = recorded_call(body).await;
        assert_eq!(reply, message, "the server got the message");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(
            write.iter().any(|&(kind, flags, stream)| kind == DATA
                && stream == 1
                && flags & END_STREAM != 0),
            "the message, ending the stream, is in the same write: {write:?}"
        );
    }

    #[tokio::test]
    async fn a_body_ended_by_an_empty_frame_is_sent_whole() {
        // As a request passed on arrives: its message, then the end of the
        // stream as a DATA frame with nothing in it.
        let message = Bytes::from_static(b"\0\0\0\0\x05hello");
        let frames =
            [message.clone(), Bytes::new()].map(|data| Ok::<_, tonic::Status>(Frame::data(data)));
        let body = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        let (reply, _, write) = recorded_call(body).await;
        assert_eq!(reply, message, "the server got the message");
        assert!(
            write
                .iter()
                .any(|&(kind, _, stream)| kind == DATA && stream == 1),
            "the message is in the HEADERS' write: {write:?}"
        );
    }
}
