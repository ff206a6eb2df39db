//! Stripe webhook deliveries: authenticate, then decode what the gateway
//! acts on.
//!
//! The scheme (<https://docs.stripe.com/webhooks#verify-manually>): the
//! `Stripe-Signature` header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`,
//! where each `v1` is HMAC-SHA256 of `"{t}.{raw body}"` under the endpoint's
//! signing secret. Several `v1`s appear while a rotated secret overlaps the
//! old one; any match will do. A `t` more than five minutes from now is
//! refused, so a captured delivery cannot be replayed later.
//!
//! Implemented here rather than through async-stripe-webhook, whose
//! `construct_event_with_timestamp` does the same check but reports a
//! malformed header as a bad signature and then decodes the event into its
//! strict typed model, refusing an authentic event whose object does not
//! match the model exactly. Refusing authentic events makes Stripe retry
//! them for days and then disable the endpoint. The tests sign with
//! async-stripe-webhook and check that both verifiers agree.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::STRIPE_API_VERSION;
use crate::subscription::expandable_id;

/// How far a signature's timestamp may be from now, either way (Stripe's
/// own libraries use the same five minutes).
pub const WEBHOOK_TOLERANCE_SECONDS: i64 = 300;

/// What the gateway needs from one event. Only ids: the gateway re-fetches
/// the subscription for the current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    /// `evt_…`; Stripe may deliver an event more than once, so deduplicate
    /// on it.
    pub id: String,
    /// e.g. `customer.subscription.updated`. Types the gateway does not
    /// handle decode all the same, to be acknowledged and ignored.
    pub event_type: String,
    /// When the event happened (Unix seconds).
    pub created: i64,
    /// For subscription events, the subscription; for invoice events, the
    /// subscription the invoice bills (if any).
    pub subscription_id: Option<String>,
    /// The customer the object belongs to, where it has one.
    pub customer_id: Option<String>,
}

/// Why a delivery was refused. Answer 400 to all of these: Stripe retries,
/// which helps once the operator has fixed the cause.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "no v1 signature in the Stripe-Signature header matches the body: check that the configured signing secret (whsec_…) is this endpoint's, and that the body reaches the check byte for byte"
    )]
    BadSignature,
    #[error(
        "the webhook was signed at {signed_at} and it is now {now}: more than the {WEBHOOK_TOLERANCE_SECONDS} s tolerance apart, so a replayed delivery, or this server's clock is off"
    )]
    Stale { signed_at: i64, now: i64 },
    #[error("malformed Stripe-Signature header: {0}")]
    MalformedHeader(&'static str),
    /// Only after the signature checked out: Stripe sent something this
    /// crate cannot read.
    #[error("the webhook body is not a Stripe event: {0}")]
    MalformedPayload(String),
}

/// Authenticates one delivery against `secret` at time `now` (Unix seconds)
/// and decodes it. `payload` must be the raw request body: re-serialized
/// JSON does not verify.
pub fn verify_event(
    payload: &[u8],
    signature_header: &str,
    secret: &str,
    now: i64,
) -> Result<WebhookEvent, WebhookError> {
    let header = SignatureHeader::parse(signature_header)?;
    // Anyone can compute an HMAC under an empty key.
    if secret.is_empty() {
        tracing::error!("stripe webhook: no signing secret is configured");
        return Err(WebhookError::BadSignature);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| WebhookError::BadSignature)?;
    mac.update(header.timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    // `verify_slice` compares in constant time.
    let authentic = header.signatures.iter().any(|candidate| {
        hex::decode(candidate).is_ok_and(|tag| mac.clone().verify_slice(&tag).is_ok())
    });
    if !authentic {
        tracing::warn!("stripe webhook: bad signature");
        return Err(WebhookError::BadSignature);
    }
    if (now - header.timestamp).abs() > WEBHOOK_TOLERANCE_SECONDS {
        tracing::warn!(
            signed_at = header.timestamp,
            now,
            "stripe webhook: signature outside the tolerance"
        );
        return Err(WebhookError::Stale {
            signed_at: header.timestamp,
            now,
        });
    }
    let event = decode(payload)?;
    tracing::debug!(event_id = %event.id, event_type = %event.event_type, "stripe webhook: verified");
    Ok(event)
}

struct SignatureHeader<'a> {
    timestamp: i64,
    signatures: Vec<&'a str>,
}

impl<'a> SignatureHeader<'a> {
    fn parse(header: &'a str) -> Result<Self, WebhookError> {
        use WebhookError::MalformedHeader;
        if header.trim().is_empty() {
            return Err(MalformedHeader(
                "it is missing or empty; is this request from Stripe?",
            ));
        }
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for pair in header.split(',') {
            let (name, value) = pair
                .trim()
                .split_once('=')
                .ok_or(MalformedHeader("expected comma-separated name=value pairs"))?;
            match name {
                "t" => {
                    let t = value
                        .parse()
                        .map_err(|_| MalformedHeader("`t` is not a Unix timestamp"))?;
                    if timestamp.replace(t).is_some() {
                        return Err(MalformedHeader("`t` appears more than once"));
                    }
                }
                "v1" => signatures.push(value),
                // v0 (test-mode legacy) and schemes to come.
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(MalformedHeader("no `t=` timestamp"))?;
        if signatures.is_empty() {
            return Err(MalformedHeader("no `v1=` signature"));
        }
        Ok(Self {
            timestamp,
            signatures,
        })
    }
}

fn decode(payload: &[u8]) -> Result<WebhookEvent, WebhookError> {
    use WebhookError::MalformedPayload;
    // serde_json's syntax errors give a position, not the text.
    let event: Value =
        serde_json::from_slice(payload).map_err(|e| MalformedPayload(format!("not JSON: {e}")))?;
    if event.get("object").and_then(Value::as_str) != Some("event") {
        return Err(MalformedPayload("`object` is not \"event\"".into()));
    }
    let text = |field: &str| {
        event
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| MalformedPayload(format!("no `{field}`")))
    };
    let id = text("id")?;
    let event_type = text("type")?;
    let created = event
        .get("created")
        .and_then(Value::as_i64)
        .ok_or_else(|| MalformedPayload("no `created`".into()))?;
    let object = event
        .pointer("/data/object")
        .filter(|o| o.is_object())
        .ok_or_else(|| MalformedPayload("no `data.object`".into()))?;

    if let Some(version) = event.get("api_version").and_then(Value::as_str)
        && version != STRIPE_API_VERSION
    {
        tracing::warn!(
            event_id = %id,
            api_version = version,
            expected = STRIPE_API_VERSION,
            "stripe webhook: the endpoint's API version differs from the client's; recreate the endpoint with the expected version"
        );
    }

    // By the object's kind rather than the event's type: every
    // `customer.subscription.*` event carries a subscription, every
    // `invoice.*` event an invoice, and new event types of those kinds
    // need no change here.
    let kind = object.get("object").and_then(Value::as_str);
    let owned = |v: Option<&str>| v.map(str::to_owned);
    let (subscription_id, customer_id) = match kind {
        Some("subscription") => {
            let id = object
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| MalformedPayload("the subscription has no `id`".into()))?;
            (
                Some(id.to_owned()),
                owned(expandable_id(object.get("customer"))),
            )
        }
        Some("invoice") => (
            owned(invoice_subscription(object)),
            owned(expandable_id(object.get("customer"))),
        ),
        Some("customer") => (None, owned(object.get("id").and_then(Value::as_str))),
        _ => (None, owned(expandable_id(object.get("customer")))),
    };

    Ok(WebhookEvent {
        id,
        event_type,
        created,
        subscription_id,
        customer_id,
    })
}

/// The subscription an invoice bills. Since `2025-03-31.basil` (and so in
/// the pinned version) it is `parent.subscription_details.subscription`;
/// before, a top-level `subscription`. Either is read, so events from an
/// endpoint on an older version still lead to the right subscription.
fn invoice_subscription(invoice: &Value) -> Option<&str> {
    expandable_id(invoice.pointer("/parent/subscription_details/subscription"))
        .or_else(|| expandable_id(invoice.get("subscription")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parsing_names_the_problem() {
        let cases = [
            ("", "missing"),
            ("garbage", "name=value"),
            ("t=abc,v1=00", "Unix timestamp"),
            ("v1=00", "no `t=`"),
            ("t=1,v0=00", "no `v1=`"),
            ("t=1,t=2,v1=00", "more than once"),
        ];
        for (header, expected) in cases {
            match SignatureHeader::parse(header) {
                Err(WebhookError::MalformedHeader(why)) => {
                    assert!(why.contains(expected), "{header:?}: {why}")
                }
                Err(other) => panic!("{header:?}: {other}"),
                Ok(_) => panic!("{header:?} parsed"),
            }
        }
        let ok = SignatureHeader::parse("t=12, v1=aa ,v0=bb,v1=cc").expect("valid");
        assert_eq!(ok.timestamp, 12);
        assert_eq!(ok.signatures, ["aa", "cc"]);
    }
}
