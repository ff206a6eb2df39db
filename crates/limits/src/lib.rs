//! Limits on how much of the service one tenant, or one user, may use.
//!
//! Two tower layers for the gateway, both over `http::Request` so they sit in
//! the same stack as the auth layer:
//!
//! - [`RateLimitLayer`] admits a call only if both the tenant's and the
//!   user's token bucket have a token, with limits per billing plan. One
//!   noisy tenant, or one runaway client inside a tenant, cannot then slow
//!   the others down or run up the model bill.
//! - [`InFlightLimitLayer`] caps how many calls the whole process serves at
//!   once, whoever makes them: overload is shed at once, not queued.
//! - [`StreamConcurrencyLayer`] caps how many calls on the streaming methods
//!   one tenant may have open at once; a slot is held until the reply body
//!   ends or is dropped, which is when a server-streaming call really ends.
//!
//! Calls over a limit are answered with `RESOURCE_EXHAUSTED` and a
//! `google.rpc.RetryInfo` detail, so clients know when to try again.
//!
//! Neither layer knows how a call is authenticated: each is given a function
//! that reads the [`Subject`] (tenant, user, plan) from the request, which the
//! gateway puts in the request extensions after authentication. Calls without
//! a subject (health checks, operator calls) are not limited.
//!
//! The decisions themselves ([`TokenBucket`], [`RateLimiter`],
//! [`StreamSlots`]) do no I/O and take the time as an argument.

mod bucket;
mod config;
mod in_flight;
mod limiter;
mod rate_layer;
mod stream_layer;
mod streams;

/// The maps keyed by tenant and user ids, looked up on every call: ids of
/// authenticated callers, which a caller cannot choose freely, so they are
/// hashed with foldhash rather than SipHash.
type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

pub use bucket::TokenBucket;
pub use config::{ConfigError, LimitsConfig, Rate, RateLimits};
pub use in_flight::{
    CapacityObserver, InFlightBody, InFlightFuture, InFlightLimit, InFlightLimitLayer,
};
pub use limiter::{DEFAULT_MAX_KEYS, LimitKind, MIN_MAX_KEYS, RateLimited, RateLimiter};
pub use rate_layer::{RateLimit, RateLimitFuture, RateLimitLayer};
pub use stream_layer::{
    LimitedBody, StreamConcurrency, StreamConcurrencyFuture, StreamConcurrencyLayer,
};
pub use streams::{STREAM_RETRY_AFTER, StreamPermit, StreamSlots, TooManyStreams};

use std::sync::Arc;

/// Which limit turned a call away, as an observer is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The tenant's request rate.
    Tenant,
    /// The user's request rate.
    User,
    /// The tenant's cap on concurrent streaming calls.
    Streams,
}

impl From<LimitKind> for Scope {
    fn from(kind: LimitKind) -> Self {
        match kind {
            LimitKind::Tenant => Scope::Tenant,
            LimitKind::User => Scope::User,
        }
    }
}

/// Told of every rejection: the limit and the tenant (never the user, an
/// unbounded set). Set with the layers' `on_rejection`, so the gateway can
/// count rejections without this crate knowing its metrics.
pub type RejectionObserver = Arc<dyn Fn(Scope, &str) + Send + Sync>;

/// Who a call is charged to. Tenant and user are opaque keys (the tenant id
/// and the token's subject); the plan selects the limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    pub tenant: String,
    pub user: String,
    pub plan: String,
}

impl Subject {
    pub fn new(
        tenant: impl Into<String>,
        user: impl Into<String>,
        plan: impl Into<String>,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            user: user.into(),
            plan: plan.into(),
        }
    }
}
