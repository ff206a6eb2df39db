//! A circuit breaker for one provider: after enough calls in a row find
//! the provider down (5xx or 429 after the retries, timeouts, failed
//! connections), stop calling it for a while and fail at once; then let
//! one probe call through, and close again if the provider answers.
//!
//! Pure state and time passed in: no clock, no I/O, so every transition is
//! unit-tested directly.

use std::time::{Duration, Instant};

/// When to open and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Calls in a row that find the provider down before the breaker opens.
    pub failures_to_open: u32,
    /// How long it stays open before a probe is let through; also how long
    /// a probe may take before another is let through (a probe whose
    /// caller left never reports).
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// What a call found out about the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderHealth {
    /// It answered (even with a 4xx, which is ours to fix, not its).
    Up,
    /// 5xx or 429 after the retries, a timeout, no connection.
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in flight since then.
    HalfOpen {
        probe_since: Instant,
    },
}

/// A call refused by an open breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// When a call may be let through again.
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go to the provider now.
    pub fn admit(&mut self, now: Instant) -> Result<(), Refused> {
        match self.state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if now < until => Err(Refused {
                retry_after: until - now,
            }),
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen { probe_since: now };
                Ok(())
            }
            BreakerState::HalfOpen { probe_since } => {
                let waited = now.saturating_duration_since(probe_since);
                if waited < self.config.open_for {
                    Err(Refused {
                        retry_after: self.config.open_for - waited,
                    })
                } else {
                    // The probe never reported (its caller left): probe again.
                    self.state = BreakerState::HalfOpen { probe_since: now };
                    Ok(())
                }
            }
        }
    }

    /// Records what an admitted call found; returns the new state when it
    /// changed between closed and open (for the log).
    pub fn record(&mut self, health: ProviderHealth, now: Instant) -> Option<BreakerState> {
        let before = self.state;
        self.state = match (self.state, health) {
            (_, ProviderHealth::Up) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, ProviderHealth::Down) => {
                let failures = failures + 1;
                if failures >= self.config.failures_to_open {
                    BreakerState::Open {
                        until: now + self.config.open_for,
                    }
                } else {
                    BreakerState::Closed { failures }
                }
            }
            (BreakerState::HalfOpen { .. }, ProviderHealth::Down) => BreakerState::Open {
                until: now + self.config.open_for,
            },
            // A call admitted before the breaker opened failed too.
            (BreakerState::Open { until }, ProviderHealth::Down) => BreakerState::Open { until },
        };
        let was_open = !matches!(before, BreakerState::Closed { .. });
        let is_open = !matches!(self.state, BreakerState::Closed { .. });
        (was_open != is_open).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(10);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failures_to_open: 3,
            open_for: OPEN_FOR,
        })
    }

    #[test]
    fn opens_after_the_failures_in_a_row_and_refuses_until_open_for_has_passed() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Ok(()));
            assert_eq!(b.record(ProviderHealth::Down, t0), None);
        }
        assert_eq!(b.admit(t0), Ok(()));
        assert_eq!(
            b.record(ProviderHealth::Down, t0),
            Some(BreakerState::Open {
                until: t0 + OPEN_FOR
            })
        );
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            b.admit(later),
            Err(Refused {
                retry_after: Duration::from_secs(6)
            })
        );
    }

    #[test]
    fn a_success_between_failures_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.record(ProviderHealth::Down, t0);
        b.record(ProviderHealth::Down, t0);
        b.record(ProviderHealth::Up, t0);
        b.record(ProviderHealth::Down, t0);
        b.record(ProviderHealth::Down, t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        assert_eq!(b.admit(t0), Ok(()));
    }

    #[test]
    fn after_open_for_one_probe_goes_through_and_its_answer_decides() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(ProviderHealth::Down, t0);
        }
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.admit(t1), Ok(()), "the probe");
        assert!(b.admit(t1).is_err(), "only one probe at a time");
        // The probe fails: open again for a whole period.
        assert_eq!(b.record(ProviderHealth::Down, t1), None);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t1 + OPEN_FOR
            }
        );
        assert!(b.admit(t1 + Duration::from_secs(9)).is_err());
        // The next probe succeeds: closed, every call goes through.
        let t2 = t1 + OPEN_FOR;
        assert_eq!(b.admit(t2), Ok(()));
        assert_eq!(
            b.record(ProviderHealth::Up, t2),
            Some(BreakerState::Closed { failures: 0 })
        );
        assert_eq!(b.admit(t2), Ok(()));
        assert_eq!(b.admit(t2), Ok(()));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_open_for() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(ProviderHealth::Down, t0);
        }
        let t1 = t0 + OPEN_FOR;
        assert_eq!(b.admit(t1), Ok(()));
        // Its caller left; nothing is recorded.
        assert!(b.admit(t1 + Duration::from_secs(5)).is_err());
        assert_eq!(b.admit(t1 + OPEN_FOR), Ok(()), "a new probe");
    }

    #[test]
    fn a_late_failure_does_not_extend_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(ProviderHealth::Down, t0);
        }
        b.record(ProviderHealth::Down, t0 + Duration::from_secs(5));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: t0 + OPEN_FOR
            }
        );
    }
}
