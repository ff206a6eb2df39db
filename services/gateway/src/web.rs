//! Browsers' way in. The public API also speaks gRPC-Web (tonic-web) on the
//! gateway's gRPC port, over HTTP/1.1 as browsers send it; pages on other
//! origins may call it when they are listed in `TP_WEB_ALLOWED_ORIGINS`
//! (CORS). For local use the same port serves a minimal chat page at
//! `GET /chat` (and `/`), so the page and the API share one origin and need
//! no CORS at all.
//!
//! The page is three static files compiled in: no build step, no external
//! assets, and a Content-Security-Policy that lets it talk to its own origin
//! only.

use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tonic::body::Body;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

const CHAT_HTML: &str = include_str!("web/chat.html");
const CHAT_JS: &str = include_str!("web/chat.js");

/// The path of the chat page on the gRPC port.
pub const CHAT_PATH: &str = "/chat";

/// Scripts from this origin only, no inline script, calls to this origin
/// only; nothing may frame the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Errors in the web settings, reported at start-up.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error(
        "TP_WEB_ALLOWED_ORIGINS: {origin:?} is not an origin (expected scheme://host[:port], \
         e.g. https://app.example.com, with no path)"
    )]
    BadOrigin { origin: String },
}

/// CORS for gRPC-Web calls from the listed origins (none: no CORS layer,
/// so other origins' browsers cannot read any answer).
pub fn cors(allowed_origins: &[String]) -> Result<Option<CorsLayer>, WebConfigError> {
    if allowed_origins.is_empty() {
        return Ok(None);
    }
    let origins = allowed_origins
        .iter()
        .map(|origin| {
            let trimmed = origin.trim();
            let valid = (trimmed.starts_with("https://") || trimmed.starts_with("http://"))
                && !trimmed.trim_end_matches('/').contains(['?', '#'])
                && trimmed
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains('/'));
            match HeaderValue::from_str(trimmed) {
                Ok(value) if valid => Ok(value),
                _ => Err(WebConfigError::BadOrigin {
                    origin: origin.clone(),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    const REQUEST_HEADERS: [&str; 5] = [
        "authorization",
        "content-type",
        "grpc-timeout",
        "x-grpc-web",
        "x-user-agent",
    ];
    const EXPOSED_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::POST])
            .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// Serves the chat page's files on `GET`; everything else goes on to the
/// API.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChatPageLayer;

impl<S> Layer<S> for ChatPageLayer {
    type Service = ChatPage<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ChatPage { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ChatPage<S> {
    inner: S,
}

fn static_file(content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(
        bytes::Bytes::from_static(body.as_bytes()),
    )));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The page's file at `path`, if it is one.
pub fn page_file(method: &Method, path: &str) -> Option<Response<Body>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/" | CHAT_PATH => Some(static_file("text/html; charset=utf-8", CHAT_HTML)),
        "/chat.js" => Some(static_file("text/javascript; charset=utf-8", CHAT_JS)),
        "/favicon.ico" => {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::NO_CONTENT;
            Some(response)
        }
        _ => None,
    }
}

impl<S, B> Service<Request<B>> for ChatPage<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match page_file(request.method(), request.uri().path()) {
            Some(response) => futures_util::future::Either::Left(std::future::ready(Ok(response))),
            None => futures_util::future::Either::Right(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_script_are_served_with_a_strict_policy() {
        let page = page_file(&Method::GET, "/chat").expect("the chat page");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap_or_default();
        assert!(policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"));
        // No inline script: the policy would block it.
        assert!(!CHAT_HTML.contains("<script>"));
        assert!(CHAT_HTML.contains("<script src=\"/chat.js\">"));
        assert!(page_file(&Method::GET, "/chat.js").is_some());
        assert!(page_file(&Method::POST, "/chat").is_none());
        assert!(
            page_file(
                &Method::GET,
                "/thoughtpartner.v1.ConversationService/SendMessage"
            )
            .is_none()
        );
    }

    #[test]
    fn the_script_calls_the_methods_the_api_declares() {
        // The page names methods by string; a renamed RPC must fail here.
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(tp_proto::PUBLIC_DESCRIPTOR_SET)
            .expect("the public descriptor set decodes");
        let declared: Vec<String> = set
            .file
            .iter()
            .filter(|file| file.package() == "thoughtpartner.v1")
            .flat_map(|file| &file.service)
            .filter(|service| service.name() == "ConversationService")
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        assert!(CHAT_JS.contains("\"/thoughtpartner.v1.ConversationService/\""));
        for method in ["CreateConversation", "SendMessage"] {
            assert!(CHAT_JS.contains(&format!("call(\"{method}\"")), "{method}");
            assert!(
                declared.iter().any(|d| d == method),
                "{method} in {declared:?}"
            );
        }
    }

    #[test]
    fn allowed_origins_are_checked_at_start_up() {
        assert!(cors(&[]).expect("no origins").is_none());
        assert!(
            cors(&[
                "https://app.example.com".into(),
                "http://localhost:5173".into()
            ])
            .expect("two origins")
            .is_some()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/chat",
            "*",
            "https://",
        ] {
            let error = cors(&[bad.into()]).expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
