//! `POST /webhooks/stripe`: Stripe's word on a tenant's subscription, over
//! HTTP/1.1 on the gateway's HTTP listener (`TP_HTTP_ADDR`, shared with the
//! ops routes; served only with the `stripe` billing provider).
//!
//! A delivery is authenticated (`Stripe-Signature`, five minutes' tolerance,
//! in `tp_stripe`), then the subscription it names is re-fetched from
//! Stripe, so that late or out-of-order deliveries cannot apply stale
//! state. The subscription's `metadata.tenant_id` names the tenant; one
//! transaction scoped to that tenant records the event id (each event is
//! applied once), checks that the subscription is the tenant's, and applies
//! the seats and status Stripe has now, with audit events by
//! `billing:stripe`. Webhooks for subscriptions that are not a tenant's
//! are acknowledged and change nothing. Neither payloads nor secrets are
//! logged.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use tp_billing::BillingError;
use tp_context::TenantId;
use tp_store::Pool;
use tp_store::TxTimer;
use tp_stripe::{StripeBilling, SubscriptionSnapshot, WebhookEvent};

use crate::audit::{self, Event};
use crate::billing::{account_of, status_from_stripe, status_reason};
use crate::membership::Membership;
use crate::policy::TenantStatus;
use crate::subscription::MAX_SEATS;

/// Where Stripe delivers events.
pub const WEBHOOK_PATH: &str = "/webhooks/stripe";

/// Stripe's events are a few kilobytes; anything much larger is not one.
const MAX_BODY_BYTES: usize = 1 << 20;

/// How long a client may take to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the audit log names for changes Stripe made.
pub const STRIPE_ACTOR: &str = "billing:stripe";

/// The event types acted on; every other is acknowledged and ignored.
const HANDLED: [&str; 5] = [
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
];

/// What a webhook needs: the database, Stripe, and the membership cache
/// (a tenant's standing is cached with its memberships).
pub struct Webhooks {
    pool: Pool,
    timer: TxTimer,
    stripe: Arc<StripeBilling>,
    membership: Membership,
}

impl Webhooks {
    pub fn new(pool: Pool, stripe: Arc<StripeBilling>, membership: Membership) -> Self {
        Self {
            pool,
            timer: TxTimer::disabled(),
            stripe,
            membership,
        }
    }

    /// Reports how long each transaction took (the gateway's metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }
}

/// Routes the gateway's HTTP listener sends past its ops paths: the
/// webhook, and 404 for anything else.
pub fn routes(webhooks: Arc<Webhooks>) -> tp_server::HttpFallback {
    Arc::new(move |request| {
        let webhooks = webhooks.clone();
        Box::pin(async move { webhooks.handle(request).await })
    })
}

/// A plain-text answer.
fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Why an authentic event could not be applied now; Stripe retries.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("Stripe unavailable: {0}")]
    Stripe(String),
}

fn storage(e: impl std::fmt::Display) -> Failure {
    Failure::Storage(e.to_string())
}

impl Webhooks {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != WEBHOOK_PATH {
            return reply(StatusCode::NOT_FOUND, "not found");
        }
        if request.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        }
        let signature = request
            .headers()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
        let payload = match tokio::time::timeout(READ_TIMEOUT, body).await {
            Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "the body took too long"),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is larger than 1 MiB",
                );
            }
            Ok(Err(_)) => return reply(StatusCode::BAD_REQUEST, "the body could not be read"),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let event = match self.stripe.verify_webhook(&payload, &signature, now) {
            Ok(event) => event,
            // The reasons name the problem, never the secret or the body.
            Err(e) => return reply(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        match self.apply(&event).await {
            Ok(outcome) => {
                tracing::info!(
                    event_id = %event.id,
                    event_type = %event.event_type,
                    outcome,
                    "stripe webhook"
                );
                reply(StatusCode::OK, outcome)
            }
            Err(e) => {
                tracing::error!(event_id = %event.id, error = %e, "stripe webhook not applied");
                match e {
                    Failure::Storage(_) => reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "storage is unavailable; retry later",
                    ),
                    Failure::Stripe(_) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the subscription could not be re-read from Stripe; retry later",
                    ),
                }
            }
        }
    }

    /// The subscription as Stripe has it now; `Ok(None)` when Stripe does
    /// not know it (not ours to act on).
    async fn fetch(&self, subscription_id: &str) -> Result<Option<SubscriptionSnapshot>, Failure> {
        match self.stripe.fetch_subscription(subscription_id).await {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(BillingError::Refused(reason)) => {
                tracing::warn!(%reason, "stripe webhook: the subscription could not be read");
                Ok(None)
            }
            Err(BillingError::Unavailable(reason)) => Err(Failure::Stripe(reason)),
        }
    }

    /// Applies one authentic event; the outcome is the answer's text.
    async fn apply(&self, event: &WebhookEvent) -> Result<&'static str, Failure> {
        if !HANDLED.contains(&event.event_type.as_str()) {
            return Ok("ignored: event type not handled");
        }
        let Some(subscription_id) = &event.subscription_id else {
            return Ok("ignored: no subscription");
        };
        // Which tenant: only Stripe's copy of the subscription says.
        let Some(first) = self.fetch(subscription_id).await? else {
            return Ok("ignored: unknown subscription");
        };
        let Some(tenant) = first
            .tenant_id
            .as_deref()
            .and_then(|t| t.parse::<TenantId>().ok())
        else {
            tracing::warn!(event_id = %event.id, "stripe webhook: the subscription names no tenant");
            return Ok("ignored: not a tenant's subscription");
        };

        let mut tx = self
            .timer
            .begin(&self.pool, tenant, "apply_billing_event")
            .await
            .map_err(storage)?;
        // The tenant's lock serialises this with seat changes and other
        // deliveries for the tenant.
        let current: Option<(i32, String, String)> = sqlx::query_as(
            "SELECT seats, status, status_reason FROM gateway.tenants
              WHERE tenant_id = $1 FOR UPDATE",
        )
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(storage)?;
        let Some((seats, status, reason)) = current else {
            tracing::warn!(event_id = %event.id, %tenant, "stripe webhook for an unknown tenant");
            return Ok("ignored: unknown tenant");
        };
        let account = account_of(&mut tx, tenant, true).await.map_err(storage)?;
        if account.as_ref().is_none_or(|a| {
            a.subscription_id != first.subscription_id || a.customer_id != first.customer_id
        }) {
            tracing::warn!(
                event_id = %event.id,
                %tenant,
                "stripe webhook: the subscription is not the tenant's account"
            );
            return Ok("ignored: not this tenant's subscription");
        }
        let recorded = sqlx::query(
            "INSERT INTO gateway.billing_events (event_id, tenant_id, event_type)
             VALUES ($1, $2, $3) ON CONFLICT (tenant_id, event_id) DO NOTHING",
        )
        .bind(&event.id)
        .bind(tenant.as_uuid())
        .bind(&event.event_type)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        if recorded.rows_affected() == 0 {
            tx.commit().await.map_err(storage)?;
            return Ok("duplicate: already processed");
        }
        // Re-read under the lock: a fetch that started before a seat change
        // committed must not undo it.
        let Some(now) = self.fetch(subscription_id).await? else {
            return Ok("ignored: unknown subscription");
        };
        if now.subscription_id != first.subscription_id || now.customer_id != first.customer_id {
            return Ok("ignored: not this tenant's subscription");
        }

        let target = tenant.to_string();
        match i32::try_from(now.quantity) {
            Ok(quantity) if quantity == seats => {}
            Ok(quantity) if (1..=MAX_SEATS).contains(&quantity) => {
                sqlx::query("UPDATE gateway.tenants SET seats = $2 WHERE tenant_id = $1")
                    .bind(tenant.as_uuid())
                    .bind(quantity)
                    .execute(&mut *tx)
                    .await
                    .map_err(storage)?;
                sqlx::query("INSERT INTO gateway.seat_changes (tenant_id, seats) VALUES ($1, $2)")
                    .bind(tenant.as_uuid())
                    .bind(quantity)
                    .execute(&mut *tx)
                    .await
                    .map_err(storage)?;
                audit::record(
                    &mut tx,
                    tenant,
                    Event {
                        actor: STRIPE_ACTOR,
                        action: "seats.updated",
                        target: &target,
                        before: Some(serde_json::json!({ "seats": seats })),
                        after: Some(serde_json::json!({ "seats": quantity })),
                    },
                )
                .await
                .map_err(storage)?;
                tracing::info!(%tenant, from = seats, to = quantity, "seats updated from Stripe");
            }
            _ => tracing::warn!(
                %tenant,
                quantity = now.quantity,
                "stripe webhook: the seat quantity is out of range; seats unchanged"
            ),
        }

        let current_status = status.parse::<TenantStatus>().map_err(storage)?;
        if let Some(next) = status_from_stripe(&now.status, current_status) {
            let next_reason = status_reason(next);
            sqlx::query(
                "UPDATE gateway.tenants SET status = $2, status_reason = $3 WHERE tenant_id = $1",
            )
            .bind(tenant.as_uuid())
            .bind(next.as_str())
            .bind(next_reason)
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
            audit::record(
                &mut tx,
                tenant,
                Event {
                    actor: STRIPE_ACTOR,
                    action: "tenant.status_changed",
                    target: &target,
                    before: Some(serde_json::json!({ "status": status, "reason": reason })),
                    after: Some(serde_json::json!({
                        "status": next.as_str(),
                        "reason": next_reason,
                        "stripe_status": now.status.as_str(),
                    })),
                },
            )
            .await
            .map_err(storage)?;
            tracing::info!(%tenant, from = %current_status, to = %next, "tenant status from Stripe");
        }

        sqlx::query(
            "UPDATE gateway.billing_accounts
                SET item_id = $2, synced_at = now(),
                    last_event_created = GREATEST(coalesce(last_event_created, $3), $3)
              WHERE tenant_id = $1",
        )
        .bind(tenant.as_uuid())
        .bind(&now.item_id)
        .bind(event.created)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        self.membership.forget_tenant(tenant);
        Ok("processed")
    }
}
