//! Stripe as the billing provider, and the only crate that knows Stripe.
//!
//! - [`StripeBilling`] implements [`tp_billing::BillingProvider`]: a seat
//!   change becomes a new `quantity` on the tenant's one subscription item,
//!   prorated from now. Its inherent methods open an account
//!   ([`StripeBilling::create_account`]), cancel it, and read a subscription
//!   back ([`StripeBilling::fetch_subscription`]).
//! - [`verify_event`] authenticates a webhook delivery and decodes the few
//!   fields the gateway acts on. Events only say *which* subscription
//!   changed: the gateway re-fetches the subscription for every event, so
//!   deliveries that arrive late or out of order cannot apply stale state.
//!
//! # API version
//!
//! Every request carries `Stripe-Version: `[`STRIPE_API_VERSION`], the
//! version async-stripe was generated from, so responses always have the
//! shape this crate reads. Webhook payloads are different: Stripe renders
//! them in the API version of the *webhook endpoint*, chosen when the
//! endpoint is created (Dashboard → Developers → Webhooks, or the API). That
//! endpoint must be created with the same [`STRIPE_API_VERSION`]; otherwise
//! fields move (an invoice's subscription id, for one, moved from
//! `subscription` to `parent.subscription_details.subscription` in
//! `2025-03-31.basil`). [`verify_event`] logs a warning for every event of
//! another version. Upgrading async-stripe changes the pinned version: create
//! a new endpoint with the new version at the same time.
//!
//! # Secrets
//!
//! The secret key and the webhook signing secret are never in `Debug`,
//! errors, logs or spans; neither are webhook payloads.
//!
//! # TLS
//!
//! async-stripe's hyper client, through hyper-rustls with the ring provider
//! and Mozilla's root certificates (webpki-roots): the same hyper 1 and
//! rustls 0.23 as the rest of the workspace, no native-tls, OpenSSL or
//! aws-lc. [`StripeBilling::new`] installs ring as the process's rustls
//! provider, once, as tp-llm and tp-auth do.

use std::fmt;

mod client;
mod subscription;
mod webhook;

pub use client::{AccountDirectory, BoxFuture, StripeAccount, StripeBilling};
pub use subscription::{SubscriptionSnapshot, SubscriptionStatus};
pub use webhook::{WEBHOOK_TOLERANCE_SECONDS, WebhookError, WebhookEvent, verify_event};

/// The Stripe API version every request pins, exactly as async-stripe sends
/// it in `Stripe-Version` (its `VERSION` for the pinned release; a wire test
/// checks the header). The webhook endpoint must use the same version.
pub const STRIPE_API_VERSION: &str = "2026-09-30.endive";

/// How to reach Stripe, and what to charge for.
#[derive(Clone)]
pub struct StripeSettings {
    /// `sk_live_…` / `sk_test_…`, or a restricted `rk_…` key that may write
    /// customers and subscriptions.
    pub secret_key: String,
    /// The recurring per-seat price (`price_…`) of every tenant's
    /// subscription item.
    pub seat_price_id: String,
    /// `None` for `https://api.stripe.com/`. Tests (and stripe-mock) point
    /// it at a local server; plain `http://` is allowed for that.
    pub api_base_url: Option<String>,
    /// The signing secret (`whsec_…`) of the webhook endpoint.
    pub webhook_secret: String,
}

impl fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeSettings")
            .field("secret_key", &"<redacted>")
            .field("seat_price_id", &self.seat_price_id)
            .field("api_base_url", &self.api_base_url)
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

/// The settings cannot work; says which one and why (never its value, when
/// it is a secret).
#[derive(Debug, thiserror::Error)]
#[error("invalid Stripe settings: {0}")]
pub struct SettingsError(String);

impl SettingsError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let settings = StripeSettings {
            secret_key: "sk_test_SECRET_KEY_VALUE".into(),
            seat_price_id: "price_seat".into(),
            api_base_url: None,
            webhook_secret: "whsec_SIGNING_SECRET_VALUE".into(),
        };
        let shown = format!("{settings:?}");
        assert!(!shown.contains("SECRET_KEY_VALUE"), "{shown}");
        assert!(!shown.contains("SIGNING_SECRET_VALUE"), "{shown}");
        assert!(shown.contains("price_seat"), "{shown}");
    }
}
