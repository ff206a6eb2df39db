//! The token bucket: the one piece of arithmetic every rate limit here uses.
//!
//! Time is passed in rather than read, so the arithmetic is tested exactly
//! and without sleeping.

use std::time::{Duration, Instant};

use crate::config::Rate;

/// A token bucket that starts full, holds at most `burst` tokens and gains
/// `per_second` tokens per second; each admitted request takes one token.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket: a caller who has not been seen for a while may burst.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token if there is one; otherwise says how long until there
    /// will be, so the caller can tell the client when to retry.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        match self.wait() {
            None => {
                self.take();
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    /// The tokens the bucket holds at `now`, without changing it.
    pub fn tokens_at(&self, now: Instant) -> f64 {
        let burst = f64::from(self.rate.burst);
        if !self.rate.refills() {
            return self.tokens.min(burst);
        }
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * self.rate.per_second).min(burst)
    }

    /// A full bucket is indistinguishable from a new one, so the limiter can
    /// forget it without letting anyone through that it would have stopped.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tokens_at(now) >= f64::from(self.rate.burst)
    }

    /// Brings the bucket up to `now`. Concurrent callers read the clock before
    /// taking the lock, so `now` may be slightly older than the last update;
    /// such a call neither credits nor debits time.
    pub(crate) fn refill(&mut self, now: Instant) {
        self.tokens = self.tokens_at(now);
        self.updated = self.updated.max(now);
    }

    /// How long until one token is available, or `None` if one is now.
    /// Call after [`Self::refill`].
    pub(crate) fn wait(&self) -> Option<Duration> {
        if self.tokens >= 1.0 {
            return None;
        }
        if !self.rate.refills() {
            return Some(Duration::MAX);
        }
        Some(round_up_to_millis(
            (1.0 - self.tokens) / self.rate.per_second,
        ))
    }

    /// Takes one token. Call only after [`Self::wait`] returned `None`.
    pub(crate) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// Applies a new rate (the tenant changed plan). Tokens are capped at the
    /// new burst so a downgrade takes effect at once.
    pub(crate) fn set_rate(&mut self, rate: Rate) {
        if rate != self.rate {
            self.rate = rate;
            self.tokens = self.tokens.min(f64::from(rate.burst));
        }
    }
}

/// Retry delays go to clients in whole milliseconds, rounded up: a client
/// that waits exactly as long as it was told must find a token.
fn round_up_to_millis(seconds: f64) -> Duration {
    let Ok(exact) = Duration::try_from_secs_f64(seconds) else {
        return Duration::MAX;
    };
    let millis = exact.as_nanos().div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn starts_full_and_allows_a_burst_then_rejects() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(2.0, 4), t0);
        for _ in 0..4 {
            assert_eq!(bucket.try_acquire(t0), Ok(()));
        }
        // Empty: one token comes back after 1 / 2 s.
        assert_eq!(bucket.try_acquire(t0), Err(Duration::from_millis(500)));
    }

    #[test]
    fn refills_at_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(2.0, 4), t0);
        for _ in 0..4 {
            bucket.try_acquire(t0).unwrap();
        }
        // A quarter second in: half a token, so a quarter second still to wait.
        assert_eq!(
            bucket.try_acquire(t0 + Duration::from_millis(250)),
            Err(Duration::from_millis(250))
        );
        assert_eq!(bucket.try_acquire(t0 + Duration::from_millis(500)), Ok(()));
        assert!(bucket.try_acquire(t0 + Duration::from_millis(500)).is_err());
        assert_eq!(bucket.try_acquire(t0 + Duration::from_millis(1000)), Ok(()));
    }

    #[test]
    fn refill_is_capped_at_the_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(2.0, 4), t0);
        bucket.try_acquire(t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(bucket.tokens_at(later), 4.0);
        assert!(bucket.is_full(later));
        for _ in 0..4 {
            assert_eq!(bucket.try_acquire(later), Ok(()));
        }
        assert!(bucket.try_acquire(later).is_err());
    }

    #[test]
    fn a_stale_instant_neither_credits_nor_panics() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(rate(1.0, 1), t0);
        bucket.try_acquire(t1).unwrap();
        // A caller that read the clock before t1 arrives late.
        assert_eq!(bucket.try_acquire(t0), Err(Duration::from_secs(1)));
        assert_eq!(bucket.try_acquire(t1 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn retry_delays_round_up_to_whole_milliseconds() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(3.0, 1), t0);
        bucket.try_acquire(t0).unwrap();
        // 1/3 s = 333.33 ms: waiting 333 ms would be too short.
        assert_eq!(bucket.try_acquire(t0), Err(Duration::from_millis(334)));
        assert_eq!(round_up_to_millis(1e-12), Duration::from_millis(1));
        assert_eq!(round_up_to_millis(f64::INFINITY), Duration::MAX);
    }

    #[test]
    fn a_downgrade_caps_the_tokens_at_the_new_burst() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(1.0, 10), t0);
        bucket.set_rate(rate(1.0, 2));
        assert_eq!(bucket.tokens_at(t0), 2.0);
        assert!(bucket.try_acquire(t0).is_ok());
        assert!(bucket.try_acquire(t0).is_ok());
        assert!(bucket.try_acquire(t0).is_err());
    }

    #[test]
    fn an_unvalidated_zero_rate_never_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate(0.0, 1), t0);
        bucket.try_acquire(t0).unwrap();
        let much_later = t0 + Duration::from_secs(86_400);
        assert_eq!(bucket.try_acquire(much_later), Err(Duration::MAX));
        let mut nan = TokenBucket::new(rate(f64::NAN, 1), t0);
        nan.try_acquire(t0).unwrap();
        assert!(!nan.is_full(much_later));
        assert!(nan.try_acquire(much_later).is_err());
    }
}
