//! Configuration, read from the command line or `TP_*` environment variables.

use std::net::SocketAddr;

use tp_store::DatabaseSettings;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "gateway";

#[derive(Clone, clap::Args)]
pub struct GatewayConfig {
    /// Where to listen for public gRPC calls.
    #[arg(long, env = "TP_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// The conversation service.
    #[arg(
        long,
        env = "TP_CONVERSATION_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub conversation_url: String,
    /// The knowledge service.
    #[arg(
        long,
        env = "TP_KNOWLEDGE_URL",
        default_value = "http://127.0.0.1:50053"
    )]
    pub knowledge_url: String,
    /// Postgres URL of the application role (`tp_app`).
    #[arg(long, env = "TP_DATABASE_URL")]
    pub database_url: String,
    /// Postgres URL for the membership cache's LISTEN connection, when
    /// `TP_DATABASE_URL` goes through a transaction-mode pooler such as
    /// PgBouncer (which cannot carry LISTEN): a direct connection to the
    /// same database. Unset: `TP_DATABASE_URL`.
    #[arg(long, env = "TP_DATABASE_LISTEN_URL")]
    pub database_listen_url: Option<String>,
    #[arg(long, env = "TP_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
    /// How long a membership may be served from the gateway's cache, in
    /// seconds (0: read it from the database on every call). Changes reach
    /// every gateway at once through Postgres notifications; this bounds
    /// staleness should one be missed.
    #[arg(long, env = "TP_MEMBERSHIP_CACHE_TTL_SECS", default_value_t = 30)]
    pub membership_cache_ttl_secs: u64,
    /// Shared secret that verifies HS256 bearer tokens (local and dev);
    /// unset in production, where tokens come from the identity provider.
    #[arg(long, env = "TP_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// The identity provider's JWK set (RS256 and ES256 tokens).
    #[arg(long, env = "TP_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// The `iss` tokens from the identity provider must carry.
    #[arg(long, env = "TP_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` tokens from the identity provider must name.
    #[arg(long, env = "TP_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Requests per second a tenant may make (sustained), and its burst.
    #[arg(long, env = "TP_RATE_TENANT_PER_SECOND", default_value_t = 50.0)]
    pub rate_tenant_per_second: f64,
    #[arg(long, env = "TP_RATE_TENANT_BURST", default_value_t = 100)]
    pub rate_tenant_burst: u32,
    /// Requests per second one user may make (sustained), and their burst.
    #[arg(long, env = "TP_RATE_USER_PER_SECOND", default_value_t = 10.0)]
    pub rate_user_per_second: f64,
    #[arg(long, env = "TP_RATE_USER_BURST", default_value_t = 20)]
    pub rate_user_burst: u32,
    /// Replies a tenant may have streaming at once.
    #[arg(long, env = "TP_MAX_STREAMS_PER_TENANT", default_value_t = 16)]
    pub max_streams_per_tenant: usize,
    /// Calls the gateway serves at once, from all tenants together (a
    /// streaming reply counts until it ends). Past it, calls are refused
    /// at once with RESOURCE_EXHAUSTED instead of queueing: overload is
    /// shed, memory stays bounded, and admitted calls keep their latency.
    #[arg(long, env = "TP_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// How many of a tenant's streaming replies run at once; its others
    /// wait for one of these lanes, so a tenant's burst queues behind
    /// itself instead of slowing every other tenant. At most the stream cap;
    /// unset, every open stream runs (the noisy-neighbour benchmark met its
    /// target without lanes once held rejections were spread, and with an
    /// LLM responder a lane is held for a whole multi-second reply).
    #[arg(long, env = "TP_STREAM_LANES_PER_TENANT")]
    pub stream_lanes_per_tenant: Option<usize>,
    /// Per-plan request rates, overriding the defaults above for tenants on
    /// those plans: `plan=TENANT_RPS/TENANT_BURST:USER_RPS/USER_BURST`,
    /// comma-separated, e.g. `enterprise=200/400:20/40`.
    #[arg(long, env = "TP_RATE_PLANS", default_value = "")]
    pub rate_plans: String,
    /// How long a rejected over-the-limit call is held before its answer,
    /// so a client that retries in a tight loop cannot spend the gateway's
    /// CPU; each hold is stretched by up to its own length again, so held
    /// callers do not all come back at once. 0 answers at once.
    #[arg(long, env = "TP_RATE_HOLD_MS", default_value_t = 250)]
    pub rate_hold_ms: u64,
    /// The price of one seat for one month, in the currency's smallest unit.
    #[arg(long, env = "TP_SEAT_PRICE_MINOR", default_value_t = 2900)]
    pub seat_price_minor: i64,
    /// ISO 4217 currency of seat prices, lower case.
    #[arg(long, env = "TP_BILLING_CURRENCY", default_value = "eur")]
    pub billing_currency: String,
    /// Who charges for seats: `local` (the gateway's own ledger only) or
    /// `stripe` (needs the `TP_STRIPE_*` settings).
    #[arg(long, env = "TP_BILLING_PROVIDER", value_enum, default_value_t = BillingProviderKind::Local)]
    pub billing_provider: BillingProviderKind,
    /// Stripe secret key (`sk_…` or a restricted `rk_…`), for `stripe`.
    #[arg(long, env = "TP_STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// The recurring per-seat Stripe price (`price_…`), for `stripe`.
    #[arg(long, env = "TP_STRIPE_SEAT_PRICE_ID")]
    pub stripe_seat_price_id: Option<String>,
    /// The signing secret (`whsec_…`) of the Stripe webhook endpoint.
    #[arg(long, env = "TP_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// Stripe's API base URL; unset for `https://api.stripe.com/` (tests
    /// and stripe-mock point it at a local server).
    #[arg(long, env = "TP_STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Where to listen for HTTP/1.1: the ops routes (`GET /metrics`,
    /// `/healthz`, `/readyz`) and, with `TP_BILLING_PROVIDER=stripe`,
    /// Stripe's webhooks (`POST /webhooks/stripe`).
    #[arg(long, env = "TP_HTTP_ADDR", default_value = "127.0.0.1:50061")]
    pub http_addr: SocketAddr,
    /// Distinct tenants the metrics are labelled with (`tp.tenant.id`)
    /// before further tenants are counted together as `_other`, so a
    /// growing customer base cannot grow the metric series without bound.
    #[arg(long, env = "TP_METRICS_TENANT_CAP", default_value_t = tp_telemetry::metrics::DEFAULT_TENANT_CAP)]
    pub metrics_tenant_cap: usize,
    /// How often the SLO history (`GetSloStatus`, `GET /slo`) samples the
    /// services' counters, in milliseconds.
    #[arg(long, env = "TP_SLO_SAMPLE_INTERVAL_MS", default_value_t = 10_000)]
    pub slo_sample_interval_ms: u64,
    /// The other services' `/metrics`, comma-separated `http://host:port/path`,
    /// read for the SLOs they measure (the coaching SLO counts replies in
    /// conversation). The gateway's own metrics are read in-process.
    #[arg(
        long,
        env = "TP_SLO_SCRAPE_URLS",
        default_value = "http://127.0.0.1:50062/metrics,http://127.0.0.1:50063/metrics"
    )]
    pub slo_scrape_urls: String,
    /// Browser origins (`https://app.example.com`, comma-separated) whose
    /// pages may call the API over gRPC-Web (CORS). Unset: none; the chat
    /// page the gateway serves itself needs none.
    #[arg(long, env = "TP_WEB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub web_allowed_origins: Vec<String>,
    /// How often the retention job deletes the conversations organisations
    /// no longer keep, in seconds (0: never; for a replica that should not).
    #[arg(long, env = "TP_RETENTION_INTERVAL_SECS", default_value_t = 3600)]
    pub retention_interval_secs: u64,
    /// Conversations deleted per call to the conversation service.
    #[arg(long, env = "TP_RETENTION_BATCH", default_value_t = 500, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub retention_batch: i32,
}

/// Who charges tenants for their seats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BillingProviderKind {
    /// The gateway's seat ledger is the only record.
    Local,
    /// Stripe: a customer and a seat subscription per tenant.
    Stripe,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen_addr", &self.listen_addr)
            .field("conversation_url", &self.conversation_url)
            .field("knowledge_url", &self.knowledge_url)
            .field("database_max_connections", &self.database_max_connections)
            .field("membership_cache_ttl_secs", &self.membership_cache_ttl_secs)
            .field("jwt_jwks_url", &self.jwt_jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("rate_tenant_per_second", &self.rate_tenant_per_second)
            .field("rate_tenant_burst", &self.rate_tenant_burst)
            .field("rate_user_per_second", &self.rate_user_per_second)
            .field("rate_user_burst", &self.rate_user_burst)
            .field("max_streams_per_tenant", &self.max_streams_per_tenant)
            .field("max_in_flight", &self.max_in_flight)
            .field("stream_lanes_per_tenant", &self.stream_lanes_per_tenant)
            .field("rate_plans", &self.rate_plans)
            .field("rate_hold_ms", &self.rate_hold_ms)
            .field("seat_price_minor", &self.seat_price_minor)
            .field("billing_currency", &self.billing_currency)
            .field("billing_provider", &self.billing_provider)
            .field("stripe_seat_price_id", &self.stripe_seat_price_id)
            .field("stripe_api_base", &self.stripe_api_base)
            .field("http_addr", &self.http_addr)
            .field("metrics_tenant_cap", &self.metrics_tenant_cap)
            .field("slo_sample_interval_ms", &self.slo_sample_interval_ms)
            .field("slo_scrape_urls", &self.slo_scrape_urls)
            .field("web_allowed_origins", &self.web_allowed_origins)
            .field("retention_interval_secs", &self.retention_interval_secs)
            .field("retention_batch", &self.retention_batch)
            .field(
                "database_listen_url",
                &self.database_listen_url.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    /// Request-rate and stream limits: the defaults, and per-plan rates.
    pub fn limits(&self) -> anyhow::Result<tp_limits::LimitsConfig> {
        Ok(tp_limits::LimitsConfig {
            default: tp_limits::RateLimits {
                tenant: tp_limits::Rate {
                    per_second: self.rate_tenant_per_second,
                    burst: self.rate_tenant_burst,
                },
                user: tp_limits::Rate {
                    per_second: self.rate_user_per_second,
                    burst: self.rate_user_burst,
                },
            },
            plans: parse_rate_plans(&self.rate_plans)?,
            max_streams_per_tenant: self.max_streams_per_tenant,
            lanes_per_tenant: self
                .stream_lanes_per_tenant
                .unwrap_or(self.max_streams_per_tenant),
        })
    }

    /// The Stripe settings, when `stripe` is the billing provider; names
    /// every missing setting (never a value).
    pub fn stripe(&self) -> anyhow::Result<Option<tp_stripe::StripeSettings>> {
        if self.billing_provider != BillingProviderKind::Stripe {
            return Ok(None);
        }
        let missing: Vec<&str> = [
            ("TP_STRIPE_SECRET_KEY", &self.stripe_secret_key),
            ("TP_STRIPE_SEAT_PRICE_ID", &self.stripe_seat_price_id),
            ("TP_STRIPE_WEBHOOK_SECRET", &self.stripe_webhook_secret),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_none_or(str::is_empty))
        .map(|(name, _)| name)
        .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "TP_BILLING_PROVIDER=stripe needs {}",
            missing.join(", ")
        );
        Ok(Some(tp_stripe::StripeSettings {
            secret_key: self.stripe_secret_key.clone().unwrap_or_default(),
            seat_price_id: self.stripe_seat_price_id.clone().unwrap_or_default(),
            api_base_url: self.stripe_api_base.clone(),
            webhook_secret: self.stripe_webhook_secret.clone().unwrap_or_default(),
        }))
    }

    pub fn database(&self) -> DatabaseSettings {
        DatabaseSettings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: GatewayConfig,
    }

    fn parse(extra: &[&str]) -> GatewayConfig {
        let mut args = vec!["gateway", "--database-url", "postgres://tp_app@db/tp"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).expect("valid arguments").config
    }

    #[test]
    fn stripe_settings_are_required_with_stripe_and_never_shown() {
        let local = parse(&[]);
        assert_eq!(local.billing_provider, BillingProviderKind::Local);
        assert!(local.stripe().expect("local needs nothing").is_none());

        let missing = parse(&["--billing-provider", "stripe"])
            .stripe()
            .expect_err("settings missing")
            .to_string();
        for name in [
            "TP_STRIPE_SECRET_KEY",
            "TP_STRIPE_SEAT_PRICE_ID",
            "TP_STRIPE_WEBHOOK_SECRET",
        ] {
            assert!(missing.contains(name), "{missing}");
        }

        let config = parse(&[
            "--billing-provider",
            "stripe",
            "--stripe-secret-key",
            "sk_test_KEY_VALUE",
            "--stripe-seat-price-id",
            "price_seat",
            "--stripe-webhook-secret",
            "whsec_SIGNING_VALUE",
        ]);
        let settings = config.stripe().expect("complete").expect("stripe");
        assert_eq!(settings.seat_price_id, "price_seat");
        assert_eq!(settings.api_base_url, None);
        let shown = format!("{config:?} {settings:?}");
        assert!(!shown.contains("KEY_VALUE"), "{shown}");
        assert!(!shown.contains("SIGNING_VALUE"), "{shown}");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:50061");
    }
}

/// Parses `TP_RATE_PLANS`: `plan=T/TB:U/UB,...` (tenant rate per second and
/// burst, user rate per second and burst).
pub fn parse_rate_plans(
    spec: &str,
) -> anyhow::Result<std::collections::HashMap<String, tp_limits::RateLimits>> {
    let rate = |part: &str, plan: &str| -> anyhow::Result<tp_limits::Rate> {
        let (per_second, burst) = part.split_once('/').ok_or_else(|| {
            anyhow::anyhow!("TP_RATE_PLANS: plan `{plan}` needs RATE/BURST, got `{part}`")
        })?;
        Ok(tp_limits::Rate {
            per_second: per_second.trim().parse().map_err(|_| {
                anyhow::anyhow!("TP_RATE_PLANS: plan `{plan}`: `{per_second}` is not a rate")
            })?,
            burst: burst.trim().parse().map_err(|_| {
                anyhow::anyhow!("TP_RATE_PLANS: plan `{plan}`: `{burst}` is not a burst")
            })?,
        })
    };
    let mut plans = std::collections::HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (plan, rates) = entry
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("TP_RATE_PLANS: `{entry}` is not `plan=T/TB:U/UB`"))?;
        let plan = plan.trim();
        let (tenant, user) = rates.split_once(':').ok_or_else(|| {
            anyhow::anyhow!("TP_RATE_PLANS: plan `{plan}` needs TENANT:USER rates")
        })?;
        let limits = tp_limits::RateLimits {
            tenant: rate(tenant, plan)?,
            user: rate(user, plan)?,
        };
        anyhow::ensure!(
            plans.insert(plan.to_owned(), limits).is_none(),
            "TP_RATE_PLANS: plan `{plan}` is given twice"
        );
    }
    Ok(plans)
}

#[cfg(test)]
mod rate_plan_tests {
    use super::parse_rate_plans;

    #[test]
    fn plans_parse_and_mistakes_are_named() {
        let plans = parse_rate_plans("enterprise=200/400:20/40, starter = 5/10:1/2").unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans["enterprise"].tenant.per_second, 200.0);
        assert_eq!(plans["enterprise"].user.burst, 40);
        assert_eq!(plans["starter"].user.per_second, 1.0);
        assert!(parse_rate_plans("").unwrap().is_empty());
        for bad in [
            "gold",
            "gold=1/2",
            "gold=x/2:1/1",
            "gold=1/2:1",
            "a=1/1:1/1,a=2/2:2/2",
        ] {
            let error = parse_rate_plans(bad).unwrap_err().to_string();
            assert!(error.starts_with("TP_RATE_PLANS"), "{bad}: {error}");
        }
    }
}
