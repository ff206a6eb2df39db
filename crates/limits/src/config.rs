//! What the limits are, per plan, and the checks that turn a nonsensical
//! configuration into an error at start-up rather than a gateway that admits
//! everything (a NaN rate) or nothing (a zero burst).

use std::collections::HashMap;

/// A sustained rate with an allowance for bursts: up to `burst` requests may
/// arrive at once, after which they are admitted at `per_second` on average.
/// The burst keeps interactive clients (a page that fires a few calls at
/// once) from being throttled while the rate bounds what a loop can cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added to the bucket per second; must be positive and finite.
    pub per_second: f64,
    /// Size of the bucket, and so the largest burst; must be at least 1.
    pub burst: u32,
}

impl Rate {
    /// A checked rate.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, ConfigError> {
        let rate = Self { per_second, burst };
        rate.validate("rate")?;
        Ok(rate)
    }

    /// Whether the bucket can refill at all. The bucket relies on this so that
    /// a rate that slipped past validation cannot make it refill to "full"
    /// (`f64::min` with a NaN returns the other operand).
    pub(crate) fn refills(&self) -> bool {
        self.per_second.is_finite() && self.per_second > 0.0
    }

    fn validate(&self, scope: &str) -> Result<(), ConfigError> {
        if !self.refills() {
            return Err(ConfigError::InvalidRate {
                scope: scope.to_owned(),
                per_second: self.per_second,
            });
        }
        if self.burst == 0 {
            return Err(ConfigError::ZeroBurst {
                scope: scope.to_owned(),
            });
        }
        Ok(())
    }
}

/// The two limits every call is checked against: the tenant's, so one
/// organisation cannot starve the others, and the user's, so one member (or
/// one runaway script with a member's token) cannot use up the tenant's share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    pub tenant: Rate,
    pub user: Rate,
}

impl RateLimits {
    fn validate(&self, scope: &str) -> Result<(), ConfigError> {
        self.tenant.validate(&format!("{scope} tenant rate"))?;
        self.user.validate(&format!("{scope} user rate"))
    }
}

/// All the limits of the gateway. Plans are named as the billing side names
/// them (e.g. `"enterprise"`); a tenant whose plan has no entry gets
/// `default`, so a new plan name never leaves a tenant unlimited.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitsConfig {
    pub default: RateLimits,
    pub plans: HashMap<String, RateLimits>,
    /// How many calls on the configured streaming methods one tenant may have
    /// open at once.
    pub max_streams_per_tenant: usize,
    /// How many of a tenant's open streams run at once; the others wait in
    /// arrival order for one of the tenant's lanes (see `streams.rs`).
    pub lanes_per_tenant: usize,
}

impl LimitsConfig {
    /// Rejects zero, negative or non-finite rates, zero bursts and a zero
    /// stream cap. The limiters and layers call this when they are built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.default.validate("default")?;
        for (plan, limits) in &self.plans {
            limits.validate(&format!("plan `{plan}`"))?;
        }
        if self.max_streams_per_tenant == 0 {
            return Err(ConfigError::ZeroStreams);
        }
        if self.lanes_per_tenant == 0 || self.lanes_per_tenant > self.max_streams_per_tenant {
            return Err(ConfigError::Lanes {
                lanes: self.lanes_per_tenant,
                max_streams: self.max_streams_per_tenant,
            });
        }
        Ok(())
    }

    /// The limits of a plan: its own if configured, else the default.
    pub fn limits_for(&self, plan: &str) -> &RateLimits {
        self.plans.get(plan).unwrap_or(&self.default)
    }
}

/// A configuration that cannot be enforced sensibly.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{scope}: per_second must be a positive, finite number (got {per_second})")]
    InvalidRate { scope: String, per_second: f64 },
    #[error("{scope}: burst must be at least 1")]
    ZeroBurst { scope: String },
    #[error("max_streams_per_tenant must be at least 1")]
    ZeroStreams,
    #[error(
        "lanes_per_tenant is {lanes}; it must be at least 1 and at most max_streams_per_tenant ({max_streams})"
    )]
    Lanes { lanes: usize, max_streams: usize },
    #[error("`{0}` is not a gRPC method path (expected `/package.Service/Method`)")]
    InvalidPath(String),
    #[error("the rate limiter must be able to track at least {min} buckets (got {got})")]
    CapacityTooSmall { min: usize, got: usize },
}

/// A path that could never match a gRPC call (a typo such as a missing
/// leading slash) would silently leave a method uncapped, so it is refused.
pub(crate) fn validate_method_path(path: &str) -> Result<(), ConfigError> {
    let invalid = || ConfigError::InvalidPath(path.to_owned());
    let rest = path.strip_prefix('/').ok_or_else(invalid)?;
    let (service, method) = rest.split_once('/').ok_or_else(invalid)?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return Err(invalid());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: f64, burst: u32) -> RateLimits {
        RateLimits {
            tenant: Rate { per_second, burst },
            user: Rate { per_second, burst },
        }
    }

    fn config() -> LimitsConfig {
        LimitsConfig {
            default: limits(10.0, 20),
            plans: HashMap::from([("enterprise".to_owned(), limits(100.0, 200))]),
            max_streams_per_tenant: 4,
            lanes_per_tenant: 2,
        }
    }

    #[test]
    fn a_sound_config_passes() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn nonsensical_rates_are_rejected() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut c = config();
            c.default.user.per_second = bad;
            assert!(
                matches!(c.validate(), Err(ConfigError::InvalidRate { ref scope, .. }) if scope == "default user rate"),
                "{bad} accepted"
            );
            assert!(Rate::new(bad, 1).is_err(), "{bad} accepted by Rate::new");
        }
    }

    #[test]
    fn zero_burst_is_rejected_and_names_the_plan() {
        let mut c = config();
        c.plans.insert("gold".to_owned(), limits(1.0, 0));
        let error = c.validate().unwrap_err();
        assert_eq!(
            error,
            ConfigError::ZeroBurst {
                scope: "plan `gold` tenant rate".to_owned()
            }
        );
        assert!(error.to_string().contains("gold"));
    }

    #[test]
    fn zero_stream_cap_is_rejected() {
        let mut c = config();
        c.max_streams_per_tenant = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroStreams));
    }

    #[test]
    fn lanes_must_fit_within_the_stream_cap() {
        let mut c = config();
        c.lanes_per_tenant = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Lanes { lanes: 0, .. })
        ));
        c.lanes_per_tenant = c.max_streams_per_tenant + 1;
        assert!(matches!(c.validate(), Err(ConfigError::Lanes { .. })));
        c.lanes_per_tenant = c.max_streams_per_tenant;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_plans_get_the_default() {
        let c = config();
        assert_eq!(c.limits_for("enterprise").user.burst, 200);
        assert_eq!(c.limits_for("gold").user.burst, 20);
        assert_eq!(c.limits_for("").user.burst, 20);
    }

    #[test]
    fn method_paths_must_look_like_grpc_paths() {
        assert!(validate_method_path("/thoughtpartner.v1.ConversationService/SendMessage").is_ok());
        for bad in [
            "thoughtpartner.v1.ConversationService/SendMessage",
            "/thoughtpartner.v1.ConversationService",
            "/thoughtpartner.v1.ConversationService/",
            "//SendMessage",
            "/a/b/c",
            "",
        ] {
            assert_eq!(
                validate_method_path(bad),
                Err(ConfigError::InvalidPath(bad.to_owned()))
            );
        }
    }
}
