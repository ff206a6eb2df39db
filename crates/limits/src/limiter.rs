//! One token bucket per tenant and one per (tenant, user), in bounded memory.

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::bucket::TokenBucket;
use crate::config::{ConfigError, LimitsConfig, RateLimits};
use crate::{FastMap, Subject};

/// How many buckets (tenants plus users) [`RateLimiter::new`] keeps at most.
/// A bucket is a few dozen bytes plus its key, so this is a few megabytes.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The smallest capacity [`RateLimiter::with_capacity`] accepts: below it the
/// limiter could not hold the buckets of the call it is checking.
pub const MIN_MAX_KEYS: usize = 16;

/// Idle buckets are looked for once the map holds this many, at the soonest,
/// so a small map is not swept on every new key.
const MIN_SWEEP_AT: usize = 1024;

/// Which of the two limits turned a call away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Tenant,
    User,
}

impl LimitKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitKind::Tenant => "per-tenant",
            LimitKind::User => "per-user",
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call turned away: which limit, and when a token will be available. If
/// both limits are exhausted this names the one that frees up last, since
/// retrying before then is pointless.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{limit} request rate limit exceeded; retry after {} ms", .retry_after.as_millis())]
pub struct RateLimited {
    pub limit: LimitKind,
    pub retry_after: Duration,
}

impl RateLimited {
    /// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail, which gRPC
    /// clients (and our own) use to back off by the right amount.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::with_error_details(
            Code::ResourceExhausted,
            self.to_string(),
            ErrorDetails::with_retry_info(Some(self.retry_after)),
        )
    }
}

/// Holds the buckets and decides whether a call may proceed. Pure logic: the
/// caller passes the current [`Instant`], so tests control time.
///
/// A call must find a token in both the tenant's and the user's bucket, and
/// takes one from each only if both have one: a call rejected by one limit
/// must not use up the other, or a throttled user would drain their tenant.
///
/// Memory is bounded in two ways. A bucket that has refilled completely is
/// the same as a fresh one, so such buckets are dropped whenever the map has
/// grown (twice its size after the last sweep): this loses no state. Should
/// more than half of the capacity still be in use after that, the least
/// recently used buckets are forgotten as well; those callers get a fresh
/// burst, the price of a hard bound. Size the capacity to about twice the
/// number of users active within a refill period.
///
/// All state sits behind one lock, held for a hash lookup and some float
/// arithmetic; that keeps the two-bucket check atomic without lock ordering.
#[derive(Debug)]
pub struct RateLimiter {
    default: RateLimits,
    plans: FastMap<String, RateLimits>,
    state: Mutex<State>,
}

impl RateLimiter {
    /// A limiter for the rate limits of `config`, keeping at most
    /// [`DEFAULT_MAX_KEYS`] buckets.
    pub fn new(config: &LimitsConfig) -> Result<Self, ConfigError> {
        Self::with_capacity(config, DEFAULT_MAX_KEYS)
    }

    /// A limiter keeping at most `max_keys` buckets (tenants plus users).
    pub fn with_capacity(config: &LimitsConfig, max_keys: usize) -> Result<Self, ConfigError> {
        config.validate()?;
        if max_keys < MIN_MAX_KEYS {
            return Err(ConfigError::CapacityTooSmall {
                min: MIN_MAX_KEYS,
                got: max_keys,
            });
        }
        Ok(Self {
            default: config.default,
            plans: config.plans.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            state: Mutex::new(State {
                tenants: FastMap::default(),
                len: 0,
                sweep_at: MIN_SWEEP_AT.min(max_keys),
                max_keys,
                clock: 0,
            }),
        })
    }

    /// The limits of a plan: its own if configured, else the default.
    pub fn limits_for(&self, plan: &str) -> &RateLimits {
        self.plans.get(plan).unwrap_or(&self.default)
    }

    /// Admits the call (taking a token from the tenant's and the user's
    /// bucket) or says which limit it hit and when to retry.
    pub fn check(&self, subject: &Subject, now: Instant) -> Result<(), RateLimited> {
        let limits = *self.limits_for(&subject.plan);
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let state: &mut State = &mut guard;
        state.make_room(subject, now);

        // Users get the older stamp: a tenant is always at least as recently
        // used as each of its users, so evicting by age never leaves users
        // behind without their tenant.
        state.clock += 2;
        let (user_stamp, tenant_stamp) = (state.clock - 1, state.clock);

        // A key is copied only when its bucket is made: on every other call
        // the lookup borrows the subject's names.
        let mut made = 0;
        let tenant = state
            .tenants
            .entry_ref(subject.tenant.as_str())
            .or_insert_with(|| {
                made += 1;
                TenantBuckets {
                    bucket: Tracked::new(TokenBucket::new(limits.tenant, now)),
                    users: FastMap::default(),
                }
            });
        let user = tenant
            .users
            .entry_ref(subject.user.as_str())
            .or_insert_with(|| {
                made += 1;
                Tracked::new(TokenBucket::new(limits.user, now))
            });
        state.len += made;
        let tenant = &mut tenant.bucket;
        tenant.last_used = tenant_stamp;
        user.last_used = user_stamp;

        tenant.bucket.set_rate(limits.tenant);
        user.bucket.set_rate(limits.user);
        tenant.bucket.refill(now);
        user.bucket.refill(now);
        let (limit, retry_after) = match (tenant.bucket.wait(), user.bucket.wait()) {
            (None, None) => {
                tenant.bucket.take();
                user.bucket.take();
                return Ok(());
            }
            (Some(t), Some(u)) if u > t => (LimitKind::User, u),
            (Some(t), _) => (LimitKind::Tenant, t),
            (None, Some(u)) => (LimitKind::User, u),
        };
        Err(RateLimited { limit, retry_after })
    }

    /// Drops every bucket that has refilled completely by `now`. The limiter
    /// does this by itself as it grows; an idle gateway may call it on a timer
    /// to give the memory back.
    pub fn evict_idle(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.evict_full(now);
        state.reset_sweep_at();
    }

    /// How many buckets (tenants plus users) are held now.
    pub fn tracked_keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }

    /// The most buckets this limiter will hold.
    pub fn capacity(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max_keys
    }
}

#[derive(Debug)]
struct State {
    tenants: FastMap<String, TenantBuckets>,
    /// Buckets held: tenants plus users.
    len: usize,
    /// Sweep when a new bucket would take `len` past this.
    sweep_at: usize,
    max_keys: usize,
    /// Stamps each use, for least-recently-used eviction; unique per bucket
    /// use, so eviction by age removes exactly as many buckets as asked.
    clock: u64,
}

#[derive(Debug)]
struct TenantBuckets {
    bucket: Tracked,
    users: FastMap<String, Tracked>,
}

#[derive(Debug)]
struct Tracked {
    bucket: TokenBucket,
    last_used: u64,
}

impl Tracked {
    fn new(bucket: TokenBucket) -> Self {
        Self {
            bucket,
            last_used: 0,
        }
    }
}

impl State {
    /// Sweeps if the buckets this call needs would take the map past the
    /// sweep mark. Afterwards there is room for them within `max_keys`.
    fn make_room(&mut self, subject: &Subject, now: Instant) {
        let missing = match self.tenants.get(&subject.tenant) {
            None => 2,
            Some(tenant) => usize::from(!tenant.users.contains_key(&subject.user)),
        };
        if missing > 0 && self.len + missing > self.sweep_at {
            self.evict_full(now);
            let target = self.max_keys / 2;
            if self.len > target {
                let forgotten = self.evict_least_recently_used(self.len - target);
                tracing::warn!(
                    forgotten,
                    capacity = self.max_keys,
                    "rate limiter at capacity: forgot the least recently used buckets"
                );
            }
            self.reset_sweep_at();
        }
    }

    /// Doubling the size between sweeps keeps their cost constant per call.
    fn reset_sweep_at(&mut self) {
        self.sweep_at = (self.len * 2).clamp(MIN_SWEEP_AT.min(self.max_keys), self.max_keys);
    }

    fn evict_full(&mut self, now: Instant) {
        let mut held = 0;
        self.tenants.retain(|_, tenant| {
            tenant.users.retain(|_, user| !user.bucket.is_full(now));
            let keep = !tenant.users.is_empty() || !tenant.bucket.bucket.is_full(now);
            if keep {
                held += 1 + tenant.users.len();
            }
            keep
        });
        self.len = held;
    }

    /// Forgets the `count` least recently used buckets; returns how many went.
    fn evict_least_recently_used(&mut self, count: usize) -> usize {
        let before = self.len;
        let mut stamps: Vec<u64> = Vec::with_capacity(self.len);
        for tenant in self.tenants.values() {
            stamps.push(tenant.bucket.last_used);
            stamps.extend(tenant.users.values().map(|user| user.last_used));
        }
        if count >= stamps.len() {
            self.tenants.clear();
            self.len = 0;
            return before;
        }
        // Everything older than the `count`-th oldest stamp goes.
        let (_, &mut oldest_kept, _) = stamps.select_nth_unstable(count);
        let mut held = 0;
        self.tenants.retain(|_, tenant| {
            if tenant.bucket.last_used < oldest_kept {
                return false;
            }
            tenant.users.retain(|_, user| user.last_used >= oldest_kept);
            held += 1 + tenant.users.len();
            true
        });
        self.len = held;
        before - held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;
    use std::collections::HashMap;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    fn config(tenant: Rate, user: Rate) -> LimitsConfig {
        LimitsConfig {
            default: RateLimits { tenant, user },
            plans: HashMap::new(),
            max_streams_per_tenant: 1,
            lanes_per_tenant: 1,
        }
    }

    fn subject(tenant: &str, user: &str) -> Subject {
        Subject::new(tenant, user, "free")
    }

    #[test]
    fn a_call_needs_the_user_and_the_tenant_bucket() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(&config(rate(1.0, 3), rate(1.0, 1))).unwrap();
        assert_eq!(limiter.check(&subject("t", "a"), t0), Ok(()));
        let rejected = limiter.check(&subject("t", "a"), t0).unwrap_err();
        assert_eq!(rejected.limit, LimitKind::User);
        assert_eq!(rejected.retry_after, Duration::from_secs(1));
        // The user's rejection did not take a tenant token: two are left.
        assert_eq!(limiter.check(&subject("t", "b"), t0), Ok(()));
        assert_eq!(limiter.check(&subject("t", "c"), t0), Ok(()));
        let rejected = limiter.check(&subject("t", "d"), t0).unwrap_err();
        assert_eq!(rejected.limit, LimitKind::Tenant);
    }

    #[test]
    fn a_tenant_rejection_does_not_take_a_user_token() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        // The tenant refills quickly, users barely at all.
        let limiter = RateLimiter::new(&config(rate(1.0, 1), rate(0.001, 2))).unwrap();
        assert_eq!(limiter.check(&subject("t", "a"), t0), Ok(()));
        let rejected = limiter.check(&subject("t", "b"), t0).unwrap_err();
        assert_eq!(rejected.limit, LimitKind::Tenant);
        assert_eq!(rejected.retry_after, Duration::from_secs(1));
        // b still has both of its tokens.
        assert_eq!(limiter.check(&subject("t", "b"), secs(1)), Ok(()));
        assert_eq!(limiter.check(&subject("t", "b"), secs(2)), Ok(()));
        let rejected = limiter.check(&subject("t", "b"), secs(3)).unwrap_err();
        assert_eq!(rejected.limit, LimitKind::User);
    }

    #[test]
    fn when_both_are_exhausted_the_later_one_is_named() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(&config(rate(1.0, 1), rate(0.1, 1))).unwrap();
        limiter.check(&subject("t", "a"), t0).unwrap();
        let rejected = limiter.check(&subject("t", "a"), t0).unwrap_err();
        assert_eq!(rejected.limit, LimitKind::User);
        assert_eq!(rejected.retry_after, Duration::from_secs(10));
    }

    #[test]
    fn tenants_are_independent() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(&config(rate(1.0, 2), rate(1.0, 2))).unwrap();
        limiter.check(&subject("t1", "a"), t0).unwrap();
        limiter.check(&subject("t1", "b"), t0).unwrap();
        assert!(limiter.check(&subject("t1", "c"), t0).is_err());
        // Another tenant, even with a user of the same id, has its own buckets.
        assert_eq!(limiter.check(&subject("t2", "a"), t0), Ok(()));
        assert_eq!(limiter.check(&subject("t2", "a"), t0), Ok(()));
        assert!(limiter.check(&subject("t2", "a"), t0).is_err());
    }

    #[test]
    fn plans_override_the_default() {
        let t0 = Instant::now();
        let mut cfg = config(rate(100.0, 100), rate(1.0, 1));
        cfg.plans.insert(
            "enterprise".to_owned(),
            RateLimits {
                tenant: rate(100.0, 100),
                user: rate(1.0, 3),
            },
        );
        let limiter = RateLimiter::new(&cfg).unwrap();
        let enterprise = Subject::new("big", "a", "enterprise");
        for _ in 0..3 {
            assert_eq!(limiter.check(&enterprise, t0), Ok(()));
        }
        assert!(limiter.check(&enterprise, t0).is_err());
        for plan in ["free", "no-such-plan"] {
            let small = Subject::new(format!("small-{plan}"), "a", plan);
            assert_eq!(limiter.check(&small, t0), Ok(()));
            assert!(
                limiter.check(&small, t0).is_err(),
                "{plan} got more than the default"
            );
        }
    }

    #[test]
    fn a_plan_change_applies_to_existing_buckets() {
        let t0 = Instant::now();
        let mut cfg = config(rate(100.0, 100), rate(1.0, 1));
        cfg.plans.insert(
            "enterprise".to_owned(),
            RateLimits {
                tenant: rate(100.0, 100),
                user: rate(1.0, 5),
            },
        );
        let limiter = RateLimiter::new(&cfg).unwrap();
        let free = Subject::new("t", "a", "free");
        limiter.check(&free, t0).unwrap();
        assert!(limiter.check(&free, t0).is_err());
        // Upgraded: the bucket now fills to 5 at 1/s.
        let upgraded = Subject::new("t", "a", "enterprise");
        let later = t0 + Duration::from_secs(5);
        for _ in 0..5 {
            assert_eq!(limiter.check(&upgraded, later), Ok(()));
        }
        assert!(limiter.check(&upgraded, later).is_err());
    }

    #[test]
    fn memory_is_bounded_under_many_active_keys() {
        let t0 = Instant::now();
        // Nothing refills within the test: no bucket is ever idle.
        let limiter =
            RateLimiter::with_capacity(&config(rate(0.001, 1_000_000), rate(0.001, 1)), 64)
                .unwrap();
        for i in 0..10_000 {
            let _ = limiter.check(&subject(&format!("t{}", i % 7), &format!("u{i}")), t0);
            assert!(
                limiter.tracked_keys() <= 64,
                "{} at {i}",
                limiter.tracked_keys()
            );
        }
        for i in 0..1_000 {
            let _ = limiter.check(&subject(&format!("t{i}"), "u"), t0);
            assert!(limiter.tracked_keys() <= 64);
        }
        // The most recent caller's state survived: its one token is spent.
        let last = subject("t999", "u");
        assert_eq!(limiter.check(&last, t0).unwrap_err().limit, LimitKind::User);
    }

    #[test]
    fn idle_buckets_are_dropped_as_new_keys_arrive() {
        let t0 = Instant::now();
        // Users refill within 100 ms; at one new user per millisecond only
        // about a hundred buckets are ever in use.
        let limiter =
            RateLimiter::new(&config(rate(1_000_000.0, 1_000_000), rate(10.0, 1))).unwrap();
        let mut most = 0;
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_millis(i);
            assert_eq!(limiter.check(&subject("t", &format!("u{i}")), now), Ok(()));
            most = most.max(limiter.tracked_keys());
        }
        assert!(most <= MIN_SWEEP_AT, "held {most} buckets");
        assert_eq!(limiter.capacity(), DEFAULT_MAX_KEYS);
    }

    #[test]
    fn evict_idle_keeps_only_buckets_still_refilling() {
        let t0 = Instant::now();
        let limiter = RateLimiter::new(&config(rate(1.0, 10), rate(1.0, 1))).unwrap();
        for user in ["a", "b", "c"] {
            limiter.check(&subject("t", user), t0).unwrap();
        }
        assert_eq!(limiter.tracked_keys(), 4);
        // At 1 s the users are full again, the tenant (3 of 10 used) is not.
        limiter.evict_idle(t0 + Duration::from_secs(1));
        assert_eq!(limiter.tracked_keys(), 1);
        limiter.evict_idle(t0 + Duration::from_secs(3));
        assert_eq!(limiter.tracked_keys(), 0);
    }

    #[test]
    fn capacity_must_hold_a_call() {
        let cfg = config(rate(1.0, 1), rate(1.0, 1));
        assert_eq!(
            RateLimiter::with_capacity(&cfg, 2).unwrap_err(),
            ConfigError::CapacityTooSmall {
                min: MIN_MAX_KEYS,
                got: 2
            }
        );
        let mut bad = cfg;
        bad.default.tenant.per_second = 0.0;
        assert!(RateLimiter::new(&bad).is_err());
    }

    #[test]
    fn rejections_become_resource_exhausted_with_retry_info() {
        let rejected = RateLimited {
            limit: LimitKind::Tenant,
            retry_after: Duration::from_millis(1500),
        };
        let status = rejected.to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "per-tenant request rate limit exceeded; retry after 1500 ms"
        );
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1500)));
    }
}
