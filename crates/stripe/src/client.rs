//! [`StripeBilling`]: seats as the quantity of one subscription item.
//!
//! Requests are built with async-stripe's typed builders (paths, form
//! encoding, `Stripe-Version`, idempotency keys, Stripe's error bodies) and
//! sent with its hyper client. Replies are read as plain JSON, leniently
//! (see [`crate::subscription`]), rather than into async-stripe's typed
//! models, which reject a whole reply over any field that drifted from the
//! spec: a seat change that Stripe applied must not be reported as failed
//! because an unrelated field could not be decoded.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::time::Duration;

use serde_json::Value;
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, RetrieveSubscription,
};
use stripe_billing::subscription_item::{
    UpdateSubscriptionItem, UpdateSubscriptionItemProrationBehavior,
};
use stripe_core::customer::CreateCustomer;
use tp_billing::{BillingError, BillingProvider, SeatUpdate};

use crate::subscription::{SubscriptionSnapshot, snapshot};
use crate::webhook::{WebhookError, WebhookEvent, verify_event};
use crate::{SettingsError, StripeSettings};

/// A boxed, sendable future, as [`AccountDirectory`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a tenant's seats are billed in Stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeAccount {
    pub customer_id: String,
    pub subscription_id: String,
    /// The subscription item on the seat price: its `quantity` is the
    /// number of paid seats.
    pub item_id: String,
}

/// Finds a tenant's [`StripeAccount`]. The gateway implements it on
/// Postgres, where it keeps what [`StripeBilling::create_account`]
/// returned; this crate stores nothing.
pub trait AccountDirectory: Send + Sync + 'static {
    /// `Ok(None)` when the tenant has no Stripe account (yet).
    fn account<'a>(
        &'a self,
        tenant_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StripeAccount>, BillingError>>;
}

/// Longest wait for one Stripe request. async-stripe has no default, and a
/// seat change waits on this call before it commits.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

static CRYPTO: Once = Once::new();

/// Stripe as the [`BillingProvider`], plus the account operations the
/// gateway needs around it.
pub struct StripeBilling {
    client: Client,
    seat_price_id: String,
    webhook_secret: String,
    directory: Arc<dyn AccountDirectory>,
}

impl fmt::Debug for StripeBilling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeBilling")
            .field("seat_price_id", &self.seat_price_id)
            .finish_non_exhaustive()
    }
}

impl StripeBilling {
    /// Checks the settings and builds the HTTP client (no request is made).
    pub fn new(
        settings: &StripeSettings,
        directory: Arc<dyn AccountDirectory>,
    ) -> Result<Self, SettingsError> {
        check_secret("secret_key", &settings.secret_key)?;
        check_secret("webhook_secret", &settings.webhook_secret)?;
        if !is_stripe_id(&settings.seat_price_id) {
            return Err(SettingsError::new(format!(
                "seat_price_id `{}` is not a Stripe price id (price_…)",
                settings.seat_price_id
            )));
        }
        // async-stripe builds its rustls config from the process's default
        // provider: make that ring, once (a second install is a no-op).
        CRYPTO.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let mut builder = ClientBuilder::new(settings.secret_key.clone())
            .request_strategy(RequestStrategy::Once)
            .timeout(REQUEST_TIMEOUT)
            .app_info("thoughtpartner", None, None);
        if let Some(url) = &settings.api_base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(SettingsError::new(format!(
                    "api_base_url `{url}` must start with https:// (or http:// for a local server)"
                )));
            }
            // async-stripe appends `v1/...` to the base as it is.
            let url = if url.ends_with('/') {
                url.clone()
            } else {
                format!("{url}/")
            };
            builder = builder.url(url);
        }
        // Its errors name the setting, never the key.
        let client = builder
            .build()
            .map_err(|e| SettingsError::new(e.to_string()))?;
        Ok(Self {
            client,
            seat_price_id: settings.seat_price_id.clone(),
            webhook_secret: settings.webhook_secret.clone(),
            directory,
        })
    }

    /// Opens a tenant's account: a Customer, then a Subscription with one
    /// item of `seats` on the seat price, both with `metadata[tenant_id]`
    /// so that a webhook or the Dashboard leads back to the tenant.
    ///
    /// The two requests use `{idempotency_key}-customer` and
    /// `{idempotency_key}-subscription`: retrying with the same key after a
    /// failure between them reuses the customer instead of making a second.
    pub async fn create_account(
        &self,
        tenant_id: &str,
        display_name: &str,
        seats: u32,
        idempotency_key: &str,
    ) -> Result<StripeAccount, BillingError> {
        if tenant_id.is_empty() {
            return Err(BillingError::Refused("the tenant id is empty".into()));
        }
        let metadata = HashMap::from([("tenant_id".to_owned(), tenant_id.to_owned())]);

        const CUSTOMER: &str = "create a customer";
        let customer = CreateCustomer::new()
            .name(display_name)
            .metadata(metadata.clone());
        let customer = self
            .call(
                CUSTOMER,
                &customer,
                Some(key(idempotency_key, Some("customer"))?),
            )
            .await?;
        let customer_id = customer
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| is_stripe_id(id))
            .ok_or_else(|| unreadable(CUSTOMER, "no customer `id`"))?;

        const SUBSCRIPTION: &str = "create a subscription";
        let item = CreateSubscriptionItems {
            price: Some(self.seat_price_id.clone()),
            quantity: Some(u64::from(seats)),
            ..CreateSubscriptionItems::new()
        };
        let subscription = CreateSubscription::new()
            .customer(customer_id)
            .items(vec![item])
            .metadata(metadata);
        let subscription = self
            .call(
                SUBSCRIPTION,
                &subscription,
                Some(key(idempotency_key, Some("subscription"))?),
            )
            .await?;
        let snapshot = self.read_subscription(SUBSCRIPTION, &subscription)?;
        tracing::info!(
            tenant_id,
            customer_id = %snapshot.customer_id,
            subscription_id = %snapshot.subscription_id,
            seats,
            "stripe: account created"
        );
        Ok(StripeAccount {
            customer_id: snapshot.customer_id,
            subscription_id: snapshot.subscription_id,
            item_id: snapshot.item_id,
        })
    }

    /// Sets the paid seats of a subscription item, prorated from now
    /// (`proration_behavior=create_prorations`: the difference is charged
    /// or credited on the next invoice). Current API versions keep the
    /// quantity on the item, not on the subscription.
    pub async fn update_item_quantity(
        &self,
        item_id: &str,
        seats: u32,
        idempotency_key: &str,
    ) -> Result<(), BillingError> {
        check_id("subscription item", item_id)?;
        let request = UpdateSubscriptionItem::new(item_id)
            .quantity(u64::from(seats))
            .proration_behavior(UpdateSubscriptionItemProrationBehavior::CreateProrations);
        self.call(
            "update the seat quantity",
            &request,
            Some(key(idempotency_key, None)?),
        )
        .await?;
        tracing::info!(item_id, seats, "stripe: seat quantity updated");
        Ok(())
    }

    /// Cancels a subscription now (not at the period's end), without a
    /// final invoice or a proration credit: Stripe's defaults.
    ///
    /// Stripe ignores idempotency keys on DELETE (DELETE is idempotent by
    /// definition, it says); the key is taken and sent, harmlessly, like
    /// every other write's. A retry after a lost answer may therefore be
    /// refused because the subscription is already canceled: re-fetch it.
    pub async fn cancel(
        &self,
        subscription_id: &str,
        idempotency_key: &str,
    ) -> Result<SubscriptionSnapshot, BillingError> {
        const OP: &str = "cancel the subscription";
        check_id("subscription", subscription_id)?;
        let request = CancelSubscription::new(subscription_id);
        let subscription = self
            .call(OP, &request, Some(key(idempotency_key, None)?))
            .await?;
        let snapshot = self.read_subscription(OP, &subscription)?;
        tracing::info!(subscription_id, "stripe: subscription canceled");
        Ok(snapshot)
    }

    /// The subscription as Stripe has it now. The gateway calls this for
    /// every webhook event instead of trusting the event's copy, which may
    /// be older than one it already applied.
    pub async fn fetch_subscription(
        &self,
        subscription_id: &str,
    ) -> Result<SubscriptionSnapshot, BillingError> {
        const OP: &str = "fetch the subscription";
        check_id("subscription", subscription_id)?;
        let request = RetrieveSubscription::new(subscription_id);
        let subscription = self.call(OP, &request, None).await?;
        self.read_subscription(OP, &subscription)
    }

    /// [`verify_event`] with the configured signing secret.
    pub fn verify_webhook(
        &self,
        payload: &[u8],
        signature_header: &str,
        now: i64,
    ) -> Result<WebhookEvent, WebhookError> {
        verify_event(payload, signature_header, &self.webhook_secret, now)
    }

    fn read_subscription(
        &self,
        op: &'static str,
        subscription: &Value,
    ) -> Result<SubscriptionSnapshot, BillingError> {
        snapshot(subscription, &self.seat_price_id).map_err(|e| unreadable(op, &e))
    }

    /// Sends one request, once, and reads the reply as JSON.
    async fn call(
        &self,
        op: &'static str,
        request: &impl StripeRequest,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Value, BillingError> {
        let mut request = request.build().customize::<miniserde::json::Value>();
        if let Some(key) = idempotency_key {
            request = request.request_strategy(RequestStrategy::Idempotent(key));
        }
        let reply = request
            .send(&self.client)
            .await
            .map_err(|e| billing_error(op, e))?;
        serde_json::from_str(&miniserde::json::to_string(&reply))
            .map_err(|_| unreadable(op, "not JSON"))
    }
}

impl BillingProvider for StripeBilling {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn update_seats<'a>(
        &'a self,
        update: SeatUpdate<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), BillingError>> + Send + 'a>> {
        Box::pin(async move {
            let Some(account) = self.directory.account(update.tenant_id).await? else {
                return Err(BillingError::Refused(
                    "this tenant has no Stripe subscription yet".into(),
                ));
            };
            self.update_item_quantity(&account.item_id, update.seats, update.idempotency_key)
                .await
        })
    }
}

/// Sorts a failed request into "try again" and "Stripe said no".
fn billing_error(op: &'static str, error: StripeError) -> BillingError {
    match error {
        StripeError::Stripe(api, status) => {
            let message = api
                .message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("{} (HTTP {status})", api.type_.as_str()));
            match status {
                // Not the tenant's doing, and Stripe's message quotes part
                // of the key: tell the operator, not the admin.
                401 | 403 => {
                    tracing::error!(op, status, "stripe: the configured secret key was rejected");
                    BillingError::Unavailable(format!(
                        "Stripe rejected the platform's secret key (HTTP {status}); the operator must fix the Stripe settings"
                    ))
                }
                // Conflicts (a request with the same key still running),
                // rate limits and Stripe's own failures pass.
                409 | 429 | 500..=599 => {
                    tracing::warn!(
                        op,
                        status,
                        error_type = api.type_.as_str(),
                        "stripe: request failed"
                    );
                    BillingError::Unavailable(format!(
                        "Stripe could not {op} (HTTP {status}): {message}"
                    ))
                }
                _ => {
                    tracing::info!(
                        op,
                        status,
                        error_type = api.type_.as_str(),
                        "stripe: request refused"
                    );
                    BillingError::Refused(message)
                }
            }
        }
        StripeError::Timeout => {
            tracing::warn!(op, "stripe: request timed out");
            BillingError::Unavailable(format!(
                "Stripe did not answer within {} s ({op})",
                REQUEST_TIMEOUT.as_secs()
            ))
        }
        // hyper's connection and protocol errors; they carry no headers.
        StripeError::ClientError(detail) => {
            tracing::warn!(op, %detail, "stripe: could not reach Stripe");
            BillingError::Unavailable(format!("could not reach Stripe to {op}: {detail}"))
        }
        // An error reply that is not Stripe's JSON (a proxy's page, an
        // empty 503) or a reply that is not UTF-8.
        StripeError::JSONDeserialize(_) => unreadable(op, "not a Stripe reply"),
        StripeError::ConfigError(detail) => {
            BillingError::Unavailable(format!("Stripe client misconfigured ({op}): {detail}"))
        }
    }
}

fn unreadable(op: &str, why: &str) -> BillingError {
    tracing::warn!(op, why, "stripe: unreadable reply");
    BillingError::Unavailable(format!("Stripe's answer could not be read ({op}): {why}"))
}

/// The key Stripe deduplicates on. It goes into a header, so it must be
/// visible ASCII; Stripe takes at most 255 characters.
fn key(base: &str, suffix: Option<&str>) -> Result<IdempotencyKey, BillingError> {
    let key = match suffix {
        Some(suffix) => format!("{base}-{suffix}"),
        None => base.to_owned(),
    };
    if base.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BillingError::Refused(
            "the idempotency key must be non-empty visible ASCII".into(),
        ));
    }
    IdempotencyKey::new(&key)
        .map_err(|e| BillingError::Refused(format!("bad idempotency key: {e}")))
}

/// Ids go into URL paths unescaped by async-stripe; anything but Stripe's
/// `prefix_alphanumeric` shape is refused before it can change the path.
fn check_id(kind: &str, id: &str) -> Result<(), BillingError> {
    if is_stripe_id(id) {
        Ok(())
    } else {
        Err(BillingError::Refused(format!(
            "not a valid Stripe {kind} id"
        )))
    }
}

fn is_stripe_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_secret(name: &str, secret: &str) -> Result<(), SettingsError> {
    if secret.is_empty() {
        return Err(SettingsError::new(format!("{name} is empty")));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SettingsError::new(format!(
            "{name} contains whitespace or non-ASCII characters (a trailing newline from a file?)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_derived_and_checked() {
        assert_eq!(
            key("abc", Some("customer")).expect("key").as_str(),
            "abc-customer"
        );
        assert!(matches!(key("", None), Err(BillingError::Refused(_))));
        assert!(matches!(key("a b", None), Err(BillingError::Refused(_))));
        assert!(matches!(
            key(&"k".repeat(250), Some("subscription")),
            Err(BillingError::Refused(_))
        ));
    }

    #[test]
    fn ids_that_could_change_a_path_are_refused() {
        assert!(check_id("subscription", "sub_1Abc").is_ok());
        for bad in ["", "sub_1/../customers", "si_1?x=1", "si 1"] {
            assert!(check_id("subscription item", bad).is_err(), "{bad}");
        }
    }
}
