//! The tower layer that caps each tenant's concurrent streaming calls.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, LimitsConfig, validate_method_path};
use crate::streams::{StreamPermit, StreamSlots};
use crate::{RejectionObserver, Scope, Subject};

/// Caps how many calls on `paths` (gRPC method paths such as
/// `/thoughtpartner.v1.ConversationService/SendMessage`) each tenant may have
/// open, and runs at most `lanes_per_tenant` of them at once: the others wait
/// for one of their own tenant's lanes before the handler is called. A server-streaming handler returns as soon as the stream is set up;
/// the call lasts until its reply body is finished, so the slot is tied to
/// the body ([`LimitedBody`]) and freed when the body ends or is dropped
/// (the client went away). Other paths and calls without a [`Subject`] pass
/// through; their bodies are wrapped too, holding nothing.
pub struct StreamConcurrencyLayer<F> {
    slots: Arc<StreamSlots>,
    paths: Arc<HashSet<String>>,
    extract: Arc<F>,
    on_rejection: Option<RejectionObserver>,
}

impl<F> StreamConcurrencyLayer<F> {
    /// A layer capping each tenant at `config.max_streams_per_tenant` open
    /// calls on `paths`. The whole config is validated, since the gateway
    /// builds both layers from it.
    pub fn new<I, P>(config: &LimitsConfig, paths: I, extract: F) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        config.validate()?;
        let paths = paths
            .into_iter()
            .map(|path| {
                let path = path.into();
                validate_method_path(&path).map(|()| path)
            })
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(Self {
            slots: Arc::new(StreamSlots::new(
                config.max_streams_per_tenant,
                config.lanes_per_tenant,
            )?),
            paths: Arc::new(paths),
            extract: Arc::new(extract),
            on_rejection: None,
        })
    }

    /// Calls `observer` with [`Scope::Streams`] and the tenant of every
    /// call this layer rejects.
    pub fn on_rejection(mut self, observer: RejectionObserver) -> Self {
        self.on_rejection = Some(observer);
        self
    }

    /// The counts behind the layer (for metrics and tests).
    pub fn slots(&self) -> &Arc<StreamSlots> {
        &self.slots
    }
}

impl<F> Clone for StreamConcurrencyLayer<F> {
    fn clone(&self) -> Self {
        Self {
            slots: Arc::clone(&self.slots),
            paths: Arc::clone(&self.paths),
            extract: Arc::clone(&self.extract),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<S, F> Layer<S> for StreamConcurrencyLayer<F> {
    type Service = StreamConcurrency<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamConcurrency {
            inner,
            slots: Arc::clone(&self.slots),
            paths: Arc::clone(&self.paths),
            extract: Arc::clone(&self.extract),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

/// The service [`StreamConcurrencyLayer`] wraps around the inner one.
pub struct StreamConcurrency<S, F> {
    inner: S,
    slots: Arc<StreamSlots>,
    paths: Arc<HashSet<String>>,
    extract: Arc<F>,
    on_rejection: Option<RejectionObserver>,
}

impl<S: Clone, F> Clone for StreamConcurrency<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            slots: Arc::clone(&self.slots),
            paths: Arc::clone(&self.paths),
            extract: Arc::clone(&self.extract),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<S, F, ReqBody, ResBody> Service<http::Request<ReqBody>> for StreamConcurrency<S, F>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(&http::Request<ReqBody>) -> Option<Subject>,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<LimitedBody<ResBody>>;
    type Error = S::Error;
    type Future = StreamConcurrencyFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut permit = None;
        if self.paths.contains(request.uri().path())
            && let Some(subject) = (self.extract)(&request)
        {
            match self.slots.try_acquire(&subject.tenant) {
                Ok(acquired) => permit = Some(acquired),
                Err(refused) => {
                    tracing::info!(
                        tenant = %subject.tenant,
                        method = request.uri().path(),
                        max_streams = refused.max,
                        "call rejected: too many concurrent streams"
                    );
                    if let Some(observer) = &self.on_rejection {
                        observer(Scope::Streams, &subject.tenant);
                    }
                    return StreamConcurrencyFuture::Rejected {
                        response: Some(refused.to_status().into_http()),
                    };
                }
            }
        }
        let has_lane = permit.as_mut().is_none_or(StreamPermit::try_lane);
        match permit {
            Some(waiting) if !has_lane => {
                // All the tenant's lanes are busy: wait for one, then call
                // the service that was made ready for this call (the usual
                // tower hand-over: keep a fresh clone for the next call).
                let fresh = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, fresh);
                StreamConcurrencyFuture::Queued {
                    future: Box::pin(async move {
                        let running = waiting.lane().await;
                        let response = ready.call(request).await?;
                        Ok(response.map(|body| LimitedBody {
                            inner: body,
                            permit: Some(running),
                        }))
                    }),
                }
            }
            permit => StreamConcurrencyFuture::Admitted {
                future: self.inner.call(request),
                permit,
            },
        }
    }
}

/// A call waiting for its tenant's lane, then running.
type QueuedCall<ResBody, E> =
    Pin<Box<dyn Future<Output = Result<http::Response<LimitedBody<ResBody>>, E>> + Send>>;

pin_project! {
    /// The response of [`StreamConcurrency`]. Holds the permit while the
    /// handler runs (dropping the future, or a handler error, frees it) and
    /// hands it to the body once there is one. Only a call that must wait
    /// for a lane is boxed.
    #[project = StreamConcurrencyFutureProj]
    pub enum StreamConcurrencyFuture<Fut, ResBody, E> {
        Rejected { response: Option<http::Response<LimitedBody<ResBody>>> },
        Admitted { #[pin] future: Fut, permit: Option<StreamPermit> },
        Queued { future: QueuedCall<ResBody, E> },
    }
}

impl<Fut, ResBody, E> Future for StreamConcurrencyFuture<Fut, ResBody, E>
where
    Fut: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<LimitedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StreamConcurrencyFutureProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StreamConcurrencyFutureProj::Admitted { future, permit } => {
                let response = std::task::ready!(future.poll(cx))?;
                let permit = permit.take();
                Poll::Ready(Ok(response.map(|body| LimitedBody {
                    inner: body,
                    permit,
                })))
            }
            StreamConcurrencyFutureProj::Queued { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// A reply body that holds its call's stream slot, if it has one, until
    /// the body has ended (or failed) or is dropped.
    #[derive(Debug)]
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        permit: Option<StreamPermit>,
    }
}

impl<B> LimitedBody<B> {
    /// A body that holds no slot.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            permit: None,
        }
    }

    /// Whether the body still holds a stream slot.
    pub fn holds_slot(&self) -> bool {
        self.permit.is_some()
    }

    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Default> Default for LimitedBody<B> {
    fn default() -> Self {
        Self::new(B::default())
    }
}

impl<B: Body> Body for LimitedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        // The connection may keep the finished body around a little longer;
        // the stream is over, so the slot is given back now.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
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
