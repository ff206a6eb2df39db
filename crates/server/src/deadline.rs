//! The caller's deadline (`grpc-timeout`), enforced for the whole call:
//! tonic applies it only until the response headers, so a reply still
//! streaming ran on past it. [`DeadlineLayer`] ends such a stream at the
//! deadline with `DEADLINE_EXCEEDED` trailers and drops the stream behind
//! it, which is what stops the work producing it (the reply task sees its
//! channel closed; the gateway's upstream call is reset, so `conversation`
//! stops too, as well as enforcing the deadline the gateway forwards).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

/// `DEADLINE_EXCEEDED`.
const CODE_DEADLINE_EXCEEDED: &str = "4";

/// Reads a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 protocol defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Enforces each call's `grpc-timeout` on its whole response.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

/// Made once: looked up by `&str`, the name was parsed on every call.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<DeadlineBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let deadline = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        let future = self.inner.call(request);
        Box::pin(async move {
            let Some(deadline) = deadline else {
                return Ok(future.await?.map(|body| DeadlineBody::new(body, None)));
            };
            match tokio::time::timeout_at(deadline, future).await {
                Ok(response) => Ok(response?.map(|body| DeadlineBody::new(body, Some(deadline)))),
                // No response yet at the deadline: answer it ourselves.
                Err(_) => Ok(tonic::Status::deadline_exceeded(DEADLINE_MESSAGE)
                    .into_http::<ResBody>()
                    .map(|body| DeadlineBody::new(body, None))),
            }
        })
    }
}

const DEADLINE_MESSAGE: &str = "the call's deadline (grpc-timeout) passed before it finished";

/// A response body that ends with `DEADLINE_EXCEEDED` trailers when its
/// deadline passes first, dropping the rest of the inner body.
pub struct DeadlineBody<B> {
    inner: Option<B>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, deadline: Option<Instant>) -> Self {
        Self {
            inner: Some(inner),
            sleep: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        }
    }
}

fn deadline_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        http::HeaderValue::from_static(CODE_DEADLINE_EXCEEDED),
    );
    // Printable ASCII needs no percent-encoding in `grpc-message`.
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static(DEADLINE_MESSAGE),
    );
    trailers
}

impl<B> http_body::Body for DeadlineBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            this.sleep = None;
            // Dropping the inner body stops whatever was producing it.
            this.inner = None;
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_trailers()))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let finished = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Ready(Some(Err(_))) => true,
            Poll::Pending => false,
        };
        if finished {
            // The call ended by itself: the deadline no longer applies.
            this.sleep = None;
        }
        polled
    }

    // An inner body at its end ends the response whatever the timer says:
    // a trailers-only answer (an error status in the headers) must go out
    // as HEADERS with END_STREAM, which grpcio insists on (an empty DATA
    // frame after it reads as `UNKNOWN: Stream removed`).
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            Some(inner) if self.sleep.is_none() => inner.size_hint(),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn a_trailers_only_answer_ends_at_once_under_a_deadline() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let empty = DeadlineBody::new(http_body_util::Empty::<bytes::Bytes>::new(), Some(deadline));
        assert!(
            empty.is_end_stream(),
            "nothing follows an error status in the headers"
        );
        let streaming = DeadlineBody::new(
            http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<Frame<bytes::Bytes>, std::convert::Infallible>,
            >()),
            Some(deadline),
        );
        assert!(!streaming.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        use http_body_util::BodyExt as _;
        let deadline = Instant::now() + Duration::from_millis(100);
        let mut body = DeadlineBody::new(
            http_body_util::StreamBody::new(futures_util::stream::pending::<
                Result<Frame<bytes::Bytes>, std::convert::Infallible>,
            >()),
            Some(deadline),
        );
        let frame = body.frame().await.expect("a frame").expect("no error");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(trailers["grpc-status"], CODE_DEADLINE_EXCEEDED);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn grpc_timeout_values_parse_as_the_protocol_defines_them() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("800m"), Some(Duration::from_millis(800)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "m", "123456789S", "1x", "-1S", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
