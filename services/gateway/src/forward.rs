//! The public `ConversationService` and `KnowledgeService` as the router
//! sees them: calls the gateway only passes on go to `conversation` or
//! `knowledge` with their messages as they came, undecoded; the two whose
//! handler reads the request or acts before forwarding go to the typed
//! handlers in [`crate::conversations`]. Every `KnowledgeService` method is
//! passed on (the access layer decides who may call which).
//!
//! Why: a typed handler decodes every message of a call and encodes it
//! again, on the way in and, for each streamed event, on the way out, only
//! to hand the same bytes on. The layers before the router (telemetry,
//! authentication, access, limits) work on the HTTP request and never
//! needed the message; what the gateway changes is the metadata, and that
//! is rebuilt here the same way as for a typed call
//! ([`crate::access::internal_metadata`]): nothing the client sent reaches
//! `conversation` but its deadline, its messages' encoding, and its
//! messages.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{CONTENT_TYPE, TE};
use http::{HeaderValue, Method};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tower::{Service, ServiceExt as _};
use tp_context::RequestContext;
use tp_proto::v1::conversation_service_server::ConversationServiceServer;
use tp_proto::v1::knowledge_service_server;

use crate::access::{internal_metadata, verified};
use crate::conversations::{ConversationGateway, UpstreamChannel};

type Typed = ConversationServiceServer<ConversationGateway>;

/// Methods whose typed handler does more than pass the call on: an
/// organisation-wide search is decided from the request's scope, and a
/// tenant export is written to the audit log before it starts.
const TYPED_METHODS: [&str; 2] = [
    "/thoughtpartner.v1.ConversationService/SearchMessages",
    "/thoughtpartner.v1.ConversationService/ExportTenant",
];

/// Request headers, besides the verified context and the deadline, that
/// travel with undecoded messages: how they are compressed, and what the
/// client accepts back. The called service answers an encoding it does
/// not support as the gateway's own server would (`Unimplemented`).
const PASSED_ON: [http::HeaderName; 2] = [
    http::HeaderName::from_static("grpc-encoding"),
    http::HeaderName::from_static("grpc-accept-encoding"),
];

#[derive(Clone)]
pub struct ConversationRoutes {
    typed: Typed,
    upstream: UpstreamChannel,
}

impl ConversationRoutes {
    pub fn new(typed: ConversationGateway, upstream: UpstreamChannel) -> Self {
        Self {
            typed: ConversationServiceServer::new(typed),
            upstream,
        }
    }
}

impl NamedService for ConversationRoutes {
    const NAME: &'static str = <Typed as NamedService>::NAME;
}

impl Service<http::Request<Body>> for ConversationRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both inner services are always ready: the typed server is, and
        // the channel is made ready per call in `forward`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if TYPED_METHODS.contains(&request.uri().path()) {
            let typed = self.typed.clone();
            return Box::pin(typed.oneshot(request));
        }
        passed_on(&self.upstream, request)
    }
}

/// The public `KnowledgeService`: every call passed on to `knowledge`.
#[derive(Clone)]
pub struct KnowledgeRoutes {
    upstream: UpstreamChannel,
}

impl KnowledgeRoutes {
    pub fn new(upstream: UpstreamChannel) -> Self {
        Self { upstream }
    }
}

impl NamedService for KnowledgeRoutes {
    const NAME: &'static str = knowledge_service_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for KnowledgeRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        passed_on(&self.upstream, request)
    }
}

type RouteFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// The routed call passed on; a failure to pass it on is its status.
fn passed_on(upstream: &UpstreamChannel, request: http::Request<Body>) -> RouteFuture {
    let upstream = upstream.clone();
    Box::pin(async move {
        Ok(forward(upstream, request)
            .await
            .unwrap_or_else(Status::into_http))
    })
}

/// Passes one call on to the service behind `upstream`; its answer, error
/// statuses included, comes back as the service sent it.
async fn forward(
    upstream: UpstreamChannel,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    let outbound = internal_http_request(request)?;
    let response = upstream
        .oneshot(outbound)
        .await
        .map_err(Status::from_error)?;
    Ok(response.map(|body| Body::new(StatusOnError::new(body))))
}

/// A passed-on answer whose stream fails midway (the connection to the
/// service lost, which the traced channel names `Unavailable`) ends with
/// that status in its trailers, as a typed handler ends it. Passed on as an
/// error, hyper would reset the client's stream, and the client would read
/// an HTTP/2 protocol error (`Internal`) instead of a status that says
/// "retry".
struct StatusOnError {
    inner: Body,
    ended: bool,
}

impl StatusOnError {
    fn new(inner: Body) -> Self {
        Self {
            inner,
            ended: false,
        }
    }
}

impl http_body::Body for StatusOnError {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(status)) => {
                self.ended = true;
                let mut trailers = http::HeaderMap::new();
                status.add_header(&mut trailers)?;
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            frame => Poll::Ready(frame),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The internal request for an undecoded call: the client's path and
/// messages, and fresh headers (see [`PASSED_ON`]).
fn internal_http_request(request: http::Request<Body>) -> Result<http::Request<Body>, Status> {
    let ctx = verified(request.extensions().get::<RequestContext>())?;
    let (parts, body) = request.into_parts();
    let mut client_headers = parts.headers;
    let encodings = PASSED_ON.map(|name| client_headers.remove(&name).map(|value| (name, value)));
    let client_metadata = MetadataMap::from_headers(client_headers);
    let mut headers = internal_metadata(&ctx, client_metadata.get("grpc-timeout"))?.into_headers();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.extend(encodings.into_iter().flatten());
    // The channel sets the scheme and authority of `conversation`.
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .ok_or_else(|| Status::internal("a routed call has a path"))?;
    let mut outbound = http::Request::new(body);
    *outbound.method_mut() = Method::POST;
    *outbound.uri_mut() = http::Uri::from(path);
    *outbound.headers_mut() = headers;
    Ok(outbound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use tp_context::Role;
    use uuid::Uuid;

    fn admitted(headers: &[(&str, &str)]) -> http::Request<Body> {
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri("http://gateway.example/thoughtpartner.v1.ConversationService/GetConversation");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(Body::empty()).expect("a valid request");
        request.extensions_mut().insert(RequestContext {
            tenant_id: Uuid::from_u128(7).into(),
            user_id: "user-1".to_owned(),
            role: Role::Member,
        });
        request
    }

    #[test]
    fn only_the_verified_context_the_deadline_and_the_encoding_are_passed_on() {
        let request = admitted(&[
            ("content-type", "application/grpc+proto"),
            ("authorization", "Bearer secret-token"),
            ("x-tp-tenant-id", "00000000-0000-0000-0000-000000000009"),
            ("x-tp-role", "admin"),
            ("grpc-timeout", "250m"),
            ("grpc-encoding", "gzip"),
            ("grpc-accept-encoding", "gzip"),
            ("cookie", "session=1"),
        ]);
        let outbound = internal_http_request(request).expect("an admitted call is forwarded");
        let headers = outbound.headers();
        assert_eq!(
            outbound.uri(),
            "/thoughtpartner.v1.ConversationService/GetConversation"
        );
        assert_eq!(outbound.method(), Method::POST);
        assert_eq!(
            headers["x-tp-tenant-id"],
            Uuid::from_u128(7).to_string().as_str()
        );
        assert_eq!(headers["x-tp-role"], "member");
        assert_eq!(headers["x-tp-user-id"], "user-1");
        assert_eq!(headers["grpc-timeout"], "250m");
        assert_eq!(headers["grpc-encoding"], "gzip");
        assert_eq!(headers["grpc-accept-encoding"], "gzip");
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert!(headers.get("authorization").is_none());
        assert!(headers.get("cookie").is_none());
        assert_eq!(headers.len(), 8, "nothing else: {headers:?}");
    }

    #[tokio::test]
    async fn a_stream_that_fails_midway_ends_with_its_status_in_trailers() {
        use http_body_util::BodyExt as _;
        let frames: Vec<Result<http_body::Frame<bytes::Bytes>, Status>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"event"))),
            Err(Status::unavailable(
                "the connection to conversation was lost",
            )),
        ];
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut body = StatusOnError::new(Body::new(failing));
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "event");
        let last = body.frame().await.expect("a frame").expect("not an error");
        let trailers = last.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], "14");
        assert!(body.frame().await.is_none(), "nothing after the trailers");
        assert!(body.is_end_stream());
    }

    #[test]
    fn a_call_without_a_verified_context_is_not_forwarded() {
        let mut request = admitted(&[]);
        request.extensions_mut().remove::<RequestContext>();
        let status = internal_http_request(request).expect_err("no context, no call");
        assert_eq!(status.code(), tonic::Code::Internal);
    }
}
