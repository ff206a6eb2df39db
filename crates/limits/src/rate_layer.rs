//! The tower layer that applies the per-tenant and per-user request rates.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{ConfigError, LimitsConfig};
use crate::limiter::RateLimiter;
use crate::{RejectionObserver, Scope, Subject};

/// Checks every call that has a [`Subject`] against its tenant's and user's
/// rate and answers excess calls with `RESOURCE_EXHAUSTED` before any handler
/// runs. `extract` reads the subject from the request (the gateway sets it in
/// the extensions after authentication); `None` means "not limited".
pub struct RateLimitLayer<F> {
    limiter: Arc<RateLimiter>,
    extract: Arc<F>,
    hold: Duration,
    spread: Arc<Spread>,
    on_rejection: Option<RejectionObserver>,
}

impl<F> RateLimitLayer<F> {
    /// A layer with its own [`RateLimiter`] built from `config`.
    pub fn new(config: &LimitsConfig, extract: F) -> Result<Self, ConfigError> {
        Ok(Self::with_limiter(
            Arc::new(RateLimiter::new(config)?),
            extract,
        ))
    }

    /// A layer over an existing limiter, e.g. one with a chosen capacity or
    /// shared with a timer that calls [`RateLimiter::evict_idle`].
    pub fn with_limiter(limiter: Arc<RateLimiter>, extract: F) -> Self {
        Self {
            limiter,
            extract: Arc::new(extract),
            hold: Duration::ZERO,
            spread: Arc::new(Spread::default()),
            on_rejection: None,
        }
    }

    /// Calls `observer` with the limit ([`Scope::Tenant`] or
    /// [`Scope::User`]) and the tenant of every call this layer rejects.
    pub fn on_rejection(mut self, observer: RejectionObserver) -> Self {
        self.on_rejection = Some(observer);
        self
    }

    /// Holds each rejection for `hold` before answering. A client that
    /// ignores `RetryInfo` and retries in a tight loop is then slowed to a
    /// few calls a second per stream, instead of spending the server's CPU
    /// on thousands of rejections a second (measured: a 32-stream flood
    /// made 11,000 rejected calls a second without a hold; a hold capped
    /// at the retry delay, often 20 ms, still let through 1,600). A held
    /// call costs a timer, not a thread; a client that honours `RetryInfo`
    /// loses nothing, as the delay it is told counts from the answer.
    ///
    /// Each hold is stretched by a spread of up to its own length (so
    /// between `hold` and twice it). Without the spread, a tenant's
    /// rejected callers all come back at the same instant, find the tokens
    /// that refilled meanwhile, and arrive as one burst of a dozen admitted
    /// calls, which is what slowed other tenants in the noisy-neighbour
    /// benchmark; spread out, the same admitted rate arrives evenly.
    pub fn hold_rejections(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }
}

impl<F> Clone for RateLimitLayer<F> {
    fn clone(&self) -> Self {
        Self {
            limiter: Arc::clone(&self.limiter),
            extract: Arc::clone(&self.extract),
            hold: self.hold,
            spread: Arc::clone(&self.spread),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

impl<S, F> Layer<S> for RateLimitLayer<F> {
    type Service = RateLimit<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            extract: Arc::clone(&self.extract),
            hold: self.hold,
            spread: Arc::clone(&self.spread),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around the inner one.
pub struct RateLimit<S, F> {
    inner: S,
    limiter: Arc<RateLimiter>,
    extract: Arc<F>,
    hold: Duration,
    spread: Arc<Spread>,
    on_rejection: Option<RejectionObserver>,
}

impl<S: Clone, F> Clone for RateLimit<S, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: Arc::clone(&self.limiter),
            extract: Arc::clone(&self.extract),
            hold: self.hold,
            spread: Arc::clone(&self.spread),
            on_rejection: self.on_rejection.clone(),
        }
    }
}

/// Fractions in [0, 1) that look random enough to de-synchronise held
/// callers: a counter through the SplitMix64 finaliser. Not for secrets.
#[derive(Debug, Default)]
struct Spread {
    counter: AtomicU64,
}

impl Spread {
    fn next_fraction(&self) -> f64 {
        let mut z = self
            .counter
            .fetch_add(0x9E37_79B9_7F4A_7C15, AtomicOrdering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits make an exactly representable fraction below 1.
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<S, F, ReqBody, ResBody> Service<http::Request<ReqBody>> for RateLimit<S, F>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    F: Fn(&http::Request<ReqBody>) -> Option<Subject>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RateLimitFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // The decision is synchronous, so the inner service (readied by
        // poll_ready) is called directly and nothing is boxed.
        if let Some(subject) = (self.extract)(&request)
            && let Err(limited) = self.limiter.check(&subject, Instant::now())
        {
            // Debug, not info: rejections grow with abuse, and logging each
            // at info would let a flood of calls flood the logs too.
            tracing::debug!(
                tenant = %subject.tenant,
                user = %subject.user,
                plan = %subject.plan,
                method = request.uri().path(),
                limit = %limited.limit,
                retry_after_ms = u64::try_from(limited.retry_after.as_millis()).unwrap_or(u64::MAX),
                "call rejected: request rate limit"
            );
            if let Some(observer) = &self.on_rejection {
                observer(Scope::from(limited.limit), &subject.tenant);
            }
            let hold = self.hold + self.hold.mul_f64(self.spread.next_fraction());
            return RateLimitFuture::Rejected {
                response: Some(limited.to_status().into_http()),
                hold: (!hold.is_zero()).then(|| Box::pin(tokio::time::sleep(hold))),
            };
        }
        RateLimitFuture::Admitted {
            future: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response of [`RateLimit`]: the inner service's, or the rejection.
    #[project = RateLimitFutureProj]
    pub enum RateLimitFuture<Fut, ResBody> {
        Rejected {
            response: Option<http::Response<ResBody>>,
            hold: Option<Pin<Box<tokio::time::Sleep>>>,
        },
        Admitted { #[pin] future: Fut },
    }
}

impl<Fut, ResBody, E> Future for RateLimitFuture<Fut, ResBody>
where
    Fut: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RateLimitFutureProj::Rejected { response, hold } => {
                if let Some(sleep) = hold {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *hold = None;
                }
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            RateLimitFutureProj::Admitted { future } => future.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spread;

    #[test]
    fn the_spread_covers_zero_to_one_evenly() {
        let spread = Spread::default();
        let mut tenths = [0usize; 10];
        for _ in 0..10_000 {
            let f = spread.next_fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
            tenths[(f * 10.0) as usize] += 1;
        }
        // Each tenth holds about 1,000 of 10,000: none empty, none double.
        for count in tenths {
            assert!((700..1300).contains(&count), "{tenths:?}");
        }
    }
}
