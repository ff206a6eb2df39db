//! Wiring: database, token verifier, conversation client, handlers, layers, serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::body::Body;
use tonic::service::Routes;
use tower::ServiceBuilder;
use tp_auth::{
    AuthLayer, ByAlgorithm, CachingVerifier, Hs256Verifier, JwksSettings, JwksVerifier,
    TokenVerifier,
};
use tp_context::RequestContext;
use tp_limits::{
    InFlightBody, InFlightLimitLayer, LimitedBody, RateLimitLayer, StreamConcurrencyLayer, Subject,
};
use tp_proto::internal::conversation::v1::usage_service_client::UsageServiceClient;
use tp_proto::v1::audit_service_server::AuditServiceServer;
use tp_proto::v1::conversation_service_client::ConversationServiceClient;
use tp_proto::v1::member_service_server::MemberServiceServer;
use tp_proto::v1::operations_service_server::OperationsServiceServer;
use tp_proto::v1::quota_service_server::QuotaServiceServer;
use tp_proto::v1::settings_service_server::SettingsServiceServer;
use tp_proto::v1::subscription_service_server::SubscriptionServiceServer;
use tp_proto::v1::tenant_admin_service_server::TenantAdminServiceServer;
use tp_server::{AbortOnDrop, BoundService, HttpFallback, HttpListener, Listener, Ops};
use tp_telemetry::{Metrics, RpcMethods, ServerTelemetryLayer};

use crate::access::AccessLayer;
use crate::audit::AuditLog;
use crate::billing::Billing;
use crate::config::{GatewayConfig, SCHEMA};
use crate::conversations::ConversationGateway;
use crate::forward::{ConversationRoutes, KnowledgeRoutes};
use crate::members::MemberAdmin;
use crate::membership::{ListenerGuard, Membership};
use crate::policy::Standing;
use crate::quota::Quotas;
use crate::retention::RetentionSweep;
use crate::settings::Settings;
use crate::slo_status::{Operations, SloMonitor};
use crate::subscription::{Pricing, Subscriptions};
use crate::tenants::TenantAdmin;
use crate::webhook::Webhooks;
use tp_proto::internal::conversation::v1::retention_service_client::RetentionServiceClient;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/gateway");

/// Applies this service's migrations as the schema owner.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    tp_store::migrate(owner_url, SCHEMA, &MIGRATOR).await?;
    Ok(())
}

/// Tokens shorter than this are trivially guessable.
const MIN_SECRET_BYTES: usize = 16;

/// The gRPC services the gateway serves (health and reflection aside).
const SERVICES: [&str; 9] = [
    tp_proto::v1::conversation_service_server::SERVICE_NAME,
    tp_proto::v1::knowledge_service_server::SERVICE_NAME,
    tp_proto::v1::tenant_admin_service_server::SERVICE_NAME,
    tp_proto::v1::member_service_server::SERVICE_NAME,
    tp_proto::v1::subscription_service_server::SERVICE_NAME,
    tp_proto::v1::audit_service_server::SERVICE_NAME,
    tp_proto::v1::quota_service_server::SERVICE_NAME,
    tp_proto::v1::operations_service_server::SERVICE_NAME,
    tp_proto::v1::settings_service_server::SERVICE_NAME,
];

/// Calls that stream a reply, capped per tenant.
const STREAMING_METHODS: [&str; 3] = [
    "/thoughtpartner.v1.ConversationService/SendMessage",
    "/thoughtpartner.v1.ConversationService/EditMessage",
    "/thoughtpartner.v1.ConversationService/RegenerateReply",
];

type SubjectFn = fn(&http::Request<Body>) -> Option<Subject>;

/// Who a call's limits apply to: the tenant and user the access layer
/// admitted, on their tenant's plan. Operator and infrastructure calls
/// carry no tenant and are not limited here.
fn limited_subject(request: &http::Request<Body>) -> Option<Subject> {
    let ctx = request.extensions().get::<RequestContext>()?;
    let standing = request.extensions().get::<Standing>()?;
    Some(Subject::new(
        ctx.tenant_id.to_string(),
        ctx.user_id.clone(),
        standing.plan.clone(),
    ))
}

// The auth and limits crates report in their own terms (they know no
// metrics); these name them as the schema does.
fn auth_mode(kind: tp_auth::VerifierKind) -> tp_telemetry::AuthMode {
    match kind {
        tp_auth::VerifierKind::Hs256 => tp_telemetry::AuthMode::Hs256,
        tp_auth::VerifierKind::Jwks => tp_telemetry::AuthMode::Jwks,
    }
}

fn auth_outcome(outcome: tp_auth::AuthOutcome) -> tp_telemetry::AuthOutcome {
    match outcome {
        tp_auth::AuthOutcome::Accepted => tp_telemetry::AuthOutcome::Accepted,
        tp_auth::AuthOutcome::Rejected => tp_telemetry::AuthOutcome::Rejected,
        tp_auth::AuthOutcome::Error => tp_telemetry::AuthOutcome::Error,
    }
}

fn limit_scope(scope: tp_limits::Scope) -> tp_telemetry::LimitScope {
    match scope {
        tp_limits::Scope::Tenant => tp_telemetry::LimitScope::Tenant,
        tp_limits::Scope::User => tp_telemetry::LimitScope::User,
        tp_limits::Scope::Streams => tp_telemetry::LimitScope::Streams,
    }
}

/// How long a call refused at capacity is told to wait.
const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_millis(100);

/// A background task that stops when the service does.
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The token verifiers the configuration asks for: the dev HS256 secret,
/// the identity provider's JWKS, or both (chosen per token by `alg`).
async fn token_verifier(config: &GatewayConfig) -> anyhow::Result<Arc<dyn TokenVerifier>> {
    let hs256 = match &config.jwt_hs256_secret {
        Some(secret) => {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "TP_JWT_HS256_SECRET must be at least {MIN_SECRET_BYTES} bytes"
            );
            Some(Hs256Verifier::new(secret.as_bytes()))
        }
        None => None,
    };
    let jwks = match &config.jwt_jwks_url {
        Some(url) => {
            let (Some(issuer), Some(audience)) = (&config.jwt_issuer, &config.jwt_audience) else {
                anyhow::bail!("TP_JWT_JWKS_URL needs TP_JWT_ISSUER and TP_JWT_AUDIENCE");
            };
            // Fetched now, so a wrong URL stops start-up rather than every call.
            Some(
                JwksVerifier::connect(JwksSettings::new(
                    url.clone(),
                    issuer.clone(),
                    audience.clone(),
                ))
                .await?,
            )
        }
        None => None,
    };
    anyhow::ensure!(
        hs256.is_some() || jwks.is_some(),
        "no token verifier: set TP_JWT_JWKS_URL (with TP_JWT_ISSUER and TP_JWT_AUDIENCE) \
         or, for local development, TP_JWT_HS256_SECRET"
    );
    // A client sends the same token until it expires: check it once.
    Ok(Arc::new(CachingVerifier::new(ByAlgorithm { hs256, jwks })))
}

/// A built, bound service, ready to serve.
pub struct Application {
    bound: BoundService,
    auth: AuthLayer,
    in_flight: InFlightLimitLayer,
    access: AccessLayer,
    rates: RateLimitLayer<SubjectFn>,
    streams: StreamConcurrencyLayer<SubjectFn>,
    background: Vec<TaskGuard>,
    /// Keeps the membership cache current; stopped with the service.
    membership_listener: Option<ListenerGuard>,
    /// The HTTP listener: ops routes, and Stripe's webhooks with the
    /// `stripe` billing provider.
    http: HttpListener,
    ops: Ops,
    webhooks: Option<Arc<Webhooks>>,
    metrics: Metrics,
    methods: RpcMethods,
    /// The SLO history behind `GetSloStatus` and `GET /slo`.
    slo_monitor: Arc<SloMonitor>,
    slo_refresh_secs: u64,
    /// CORS for gRPC-Web calls from `TP_WEB_ALLOWED_ORIGINS`, if any.
    web_cors: Option<tower_http::cors::CorsLayer>,
}

impl Application {
    pub async fn build(config: &GatewayConfig) -> anyhow::Result<Self> {
        let verifier = token_verifier(config).await?;
        anyhow::ensure!(
            config.seat_price_minor >= 0,
            "TP_SEAT_PRICE_MINOR must not be negative"
        );
        anyhow::ensure!(
            config.billing_currency.len() == 3
                && config
                    .billing_currency
                    .chars()
                    .all(|c| c.is_ascii_lowercase()),
            "TP_BILLING_CURRENCY must be a lower-case ISO 4217 code such as `eur`"
        );
        let stripe_settings = config.stripe()?;
        let web_cors = crate::web::cors(&config.web_allowed_origins)?;
        let metrics = Metrics::with_tenant_cap("gateway", config.metrics_tenant_cap);
        let methods = tp_server::served_methods(&[tp_proto::PUBLIC_DESCRIPTOR_SET], &SERVICES)?;
        let pool = tp_store::connect_app(&config.database(), SCHEMA).await?;
        let db_timer = tp_server::db_timer(&metrics);
        let billing = match &stripe_settings {
            Some(settings) => Billing::stripe(settings, pool.clone(), db_timer.clone())?,
            None => Billing::local(),
        };
        let (membership, membership_listener) = if config.membership_cache_ttl_secs == 0 {
            (Membership::uncached(pool.clone()), None)
        } else {
            let (membership, listener) = Membership::cached(
                pool.clone(),
                Duration::from_secs(config.membership_cache_ttl_secs),
                config
                    .database_listen_url
                    .clone()
                    .unwrap_or_else(|| config.database_url.clone()),
            )
            .await;
            (membership, Some(listener))
        };
        let membership = membership.with_timer(db_timer.clone());
        let conversation_channel = tp_server::internal_channel(&config.conversation_url, &metrics)?;
        let conversation = ConversationServiceClient::new(conversation_channel.clone());
        let knowledge = tp_server::internal_channel(&config.knowledge_url, &metrics)?;
        let usage = UsageServiceClient::new(tp_server::internal_channel(
            &config.conversation_url,
            &metrics,
        )?);

        anyhow::ensure!(
            config.slo_sample_interval_ms > 0,
            "TP_SLO_SAMPLE_INTERVAL_MS must be positive"
        );
        let slo_monitor = Arc::new(SloMonitor::new(metrics, &config.slo_scrape_urls)?);

        let mut routes = Routes::builder();
        let health =
            tp_server::add_infrastructure(&mut routes, &[tp_proto::PUBLIC_DESCRIPTOR_SET])?;
        routes
            .add_service(ConversationRoutes::new(
                ConversationGateway::new(conversation, pool.clone(), db_timer.clone()),
                conversation_channel,
            ))
            .add_service(KnowledgeRoutes::new(knowledge))
            .add_service(TenantAdminServiceServer::new(
                TenantAdmin::new(pool.clone(), membership.clone())
                    .with_stripe(billing.stripe.clone())
                    .with_timer(db_timer.clone()),
            ))
            .add_service(MemberServiceServer::new(
                MemberAdmin::new(pool.clone(), membership.clone()).with_timer(db_timer.clone()),
            ))
            .add_service(SubscriptionServiceServer::new(
                Subscriptions::new(
                    pool.clone(),
                    Pricing {
                        seat_price_minor: config.seat_price_minor,
                        currency: config.billing_currency.clone(),
                    },
                    billing.provider.clone(),
                    usage.clone(),
                )
                .with_timer(db_timer.clone()),
            ))
            .add_service(QuotaServiceServer::new(
                Quotas::new(pool.clone(), usage).with_timer(db_timer.clone()),
            ))
            .add_service(AuditServiceServer::new(
                AuditLog::new(pool.clone()).with_timer(db_timer.clone()),
            ))
            .add_service(OperationsServiceServer::new(Operations::new(
                slo_monitor.clone(),
            )))
            .add_service(SettingsServiceServer::new(Settings::new(
                pool.clone(),
                db_timer.clone(),
            )));
        health.set_serving::<ConversationRoutes>().await;
        health.set_serving::<KnowledgeRoutes>().await;
        health
            .set_serving::<TenantAdminServiceServer<TenantAdmin>>()
            .await;
        health
            .set_serving::<MemberServiceServer<MemberAdmin>>()
            .await;
        health
            .set_serving::<SubscriptionServiceServer<Subscriptions>>()
            .await;
        health.set_serving::<AuditServiceServer<AuditLog>>().await;
        health.set_serving::<QuotaServiceServer<Quotas>>().await;
        health
            .set_serving::<OperationsServiceServer<Operations>>()
            .await;
        health
            .set_serving::<SettingsServiceServer<Settings>>()
            .await;

        let http = HttpListener::bind(config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("TP_HTTP_ADDR: {e}"))?;
        let ops = Ops::new(metrics, health, &SERVICES).with_pool(SCHEMA, pool.clone());
        let webhooks = billing.stripe.as_ref().map(|stripe| {
            Arc::new(
                Webhooks::new(pool.clone(), stripe.clone(), membership.clone())
                    .with_timer(db_timer.clone()),
            )
        });

        let auth = AuthLayer::new(verifier).on_attempt(move |attempt| {
            metrics.auth(
                auth_mode(attempt.kind),
                auth_outcome(attempt.outcome),
                attempt.duration,
            )
        });
        let on_rejection: tp_limits::RejectionObserver = Arc::new(move |scope, tenant: &str| {
            metrics.rate_limit_rejection(limit_scope(scope), Some(tenant));
        });
        let in_flight = InFlightLimitLayer::new(
            usize::try_from(config.max_in_flight)?,
            IN_FLIGHT_RETRY_AFTER,
        )
        .on_rejection(Arc::new(move || {
            metrics.rate_limit_rejection(tp_telemetry::LimitScope::Capacity, None)
        }));
        let access = AccessLayer::new(membership);
        let limits = config.limits()?;
        let rate_limiter = Arc::new(tp_limits::RateLimiter::new(&limits)?);
        let rates =
            RateLimitLayer::with_limiter(rate_limiter.clone(), limited_subject as SubjectFn)
                .hold_rejections(Duration::from_millis(config.rate_hold_ms))
                .on_rejection(on_rejection.clone());
        let streams =
            StreamConcurrencyLayer::new(&limits, STREAMING_METHODS, limited_subject as SubjectFn)?
                .on_rejection(on_rejection);
        // Full buckets are dropped as the map grows; this also drops them
        // when the gateway is idle, so memory returns to its floor.
        let sweeper = TaskGuard(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                rate_limiter.evict_idle(std::time::Instant::now());
            }
        }));
        // The SLO history's first sample is its baseline: counts from before
        // this gateway started are not in any window.
        let slo_sample_interval = Duration::from_millis(config.slo_sample_interval_ms);
        let slo_sampler = TaskGuard(slo_monitor.clone().spawn_sampler(slo_sample_interval));
        // The page refreshes about as often as there is something new.
        let slo_refresh_secs = slo_sample_interval.as_secs().clamp(1, 60);
        let mut background = vec![sweeper, slo_sampler];
        if config.retention_interval_secs > 0 {
            let retention = RetentionSweep::new(
                pool.clone(),
                db_timer.clone(),
                RetentionServiceClient::new(tp_server::internal_channel(
                    &config.conversation_url,
                    &metrics,
                )?),
                metrics,
                config.retention_batch,
            );
            background.push(TaskGuard(
                retention.spawn(Duration::from_secs(config.retention_interval_secs)),
            ));
        }
        let listener = Listener::bind(config.listen_addr).await?;
        Ok(Self {
            bound: BoundService::new("gateway", listener, routes.routes()),
            auth,
            in_flight,
            access,
            rates,
            streams,
            background,
            slo_monitor,
            slo_refresh_secs,
            web_cors,
            membership_listener,
            http,
            ops,
            webhooks,
            metrics,
            methods,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr()
    }

    /// The HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/slo`, and
    /// `POST /webhooks/stripe` with the `stripe` billing provider.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        // Browsers first: the chat page's files, CORS for the allowed
        // origins, and gRPC-Web translated to gRPC. Then telemetry, so
        // rejected calls are traced and counted too; then who the caller
        // is, what they may do, and how much of it.
        let layers = ServiceBuilder::new()
            .layer(crate::web::ChatPageLayer)
            .option_layer(self.web_cors)
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(ServerTelemetryLayer::new(self.metrics, self.methods).with_tenant_label())
            .layer(tp_server::DeadlineLayer)
            // Overload is shed first, before any work is spent on it.
            .map_response(|response: http::Response<InFlightBody<Body>>| response.map(Body::new))
            .layer(self.in_flight)
            .layer(self.auth)
            .layer(self.access)
            .layer(self.rates)
            .map_response(|response: http::Response<LimitedBody<Body>>| response.map(Body::new))
            .layer(self.streams);
        let _background = self.background;
        let fallback: Option<HttpFallback> = self.webhooks.map(|webhooks| {
            tracing::info!(addr = %self.http.local_addr(), path = crate::webhook::WEBHOOK_PATH, "serving Stripe webhooks");
            crate::webhook::routes(webhooks)
        });
        let fallback = crate::slo_status::routes(self.slo_monitor, self.slo_refresh_secs, fallback);
        let _http: AbortOnDrop = self.http.spawn(self.ops, Some(fallback));
        let _listener = self.membership_listener;
        // HTTP/1.1 too: browsers send gRPC-Web over it.
        self.bound.accept_http1().serve(layers, shutdown).await?;
        Ok(())
    }
}

/// The `gateway` binary.
pub struct GatewayService;

impl tp_server::cli::ServiceMain for GatewayService {
    const NAME: &'static str = "gateway";
    type Config = GatewayConfig;

    async fn migrate(owner_url: &str) -> anyhow::Result<()> {
        migrate(owner_url).await
    }

    async fn serve(
        config: GatewayConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Application::build(&config).await?.run_until(shutdown).await
    }
}
