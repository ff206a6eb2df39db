//! The tower layer that caps how many calls one process serves at once,
//! whoever makes them: past the cap a call is refused at once with
//! `RESOURCE_EXHAUSTED` and a retry delay, instead of queueing. Under
//! overload the calls admitted keep their latency, memory stays bounded by
//! the cap, and the excess is shed cheaply (before authentication).
//!
//! A streaming call counts until its reply body ends, not only until the
//! handler returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic_types::{ErrorDetails, StatusExt};
use tower_layer::Layer;
use tower_service::Service;

/// Called with nothing for every call the cap refuses (for metrics).
pub type CapacityObserver = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
    retry_after: Duration,
    on_rejection: Option<CapacityObserver>,
}

impl InFlightLimitLayer {
    /// At most `max` calls at once; refused calls are told to retry after
    /// `retry_after`.
    pub fn new(max: usize, retry_after: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            retry_after,
            on_rejection: None,
        }
    }

    pub fn on_rejection(mut self, observer: CapacityObserver) -> Self {
        self.on_rejection = Some(observer);
        self
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    fn refusal(&self) -> tonic::Status {
        tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            format!(
                "the service is at capacity ({} calls in flight); retry in {} ms",
                self.max,
                self.retry_after.as_millis()
            ),
            ErrorDetails::with_retry_info(Some(self.retry_after)),
        )
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    layer: InFlightLimitLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for InFlightLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = http::Response<InFlightBody<ResBody>>;
    type Error = S::Error;
    type Future = InFlightFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        match Arc::clone(&self.layer.permits).try_acquire_owned() {
            Ok(permit) => InFlightFuture::Admitted {
                future: self.inner.call(request),
                permit: Some(permit),
            },
            Err(_) => {
                if let Some(observer) = &self.layer.on_rejection {
                    observer();
                }
                let response = self.layer.refusal().into_http::<ResBody>();
                InFlightFuture::Refused {
                    response: Some(response.map(|body| InFlightBody {
                        inner: body,
                        permit: None,
                    })),
                }
            }
        }
    }
}

pin_project! {
    #[project = InFlightFutureProj]
    pub enum InFlightFuture<Fut, ResBody> {
        Refused { response: Option<http::Response<InFlightBody<ResBody>>> },
        Admitted { #[pin] future: Fut, permit: Option<OwnedSemaphorePermit> },
    }
}

impl<Fut, ResBody, E> Future for InFlightFuture<Fut, ResBody>
where
    Fut: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<InFlightBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InFlightFutureProj::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            InFlightFutureProj::Admitted { future, permit } => {
                let response = std::task::ready!(future.poll(cx))?;
                let permit = permit.take();
                Poll::Ready(Ok(response.map(|inner| InFlightBody { inner, permit })))
            }
        }
    }
}

pin_project! {
    /// A reply body holding its call's place under the cap until it has
    /// ended (or failed) or is dropped (the client went away).
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B: Default> Default for InFlightBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            permit: None,
        }
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.permit.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;

    type TestBody = http_body_util::Full<bytes::Bytes>;

    #[tokio::test]
    async fn past_the_cap_calls_are_refused_until_a_body_ends() {
        let layer = InFlightLimitLayer::new(2, Duration::from_millis(100));
        let service = ServiceBuilder::new().layer(layer.clone()).service_fn(
            |_request: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(TestBody::from("reply")))
            },
        );
        let first = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        let second = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(layer.in_flight(), 2, "both bodies are still open");

        let refused = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("at capacity"),
            "{}",
            status.message()
        );
        assert_eq!(
            status.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_millis(100))
        );

        // The first body is read to its end: its place is free again.
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"reply");
        assert_eq!(layer.in_flight(), 1);
        let admitted = service
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert!(tonic::Status::from_header_map(admitted.headers()).is_none());
        // A body dropped unread (the client left) frees its place too.
        drop(second);
        drop(admitted);
        assert_eq!(layer.in_flight(), 0);
    }
}
