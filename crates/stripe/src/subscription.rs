//! A subscription as the gateway needs it, read leniently from Stripe's JSON.
//!
//! Lenient on purpose: async-stripe's typed models reject a whole object
//! when any field the OpenAPI spec calls required is missing or has an
//! unexpected shape, and Stripe's objects have drifted from the spec before.
//! The gateway needs a handful of fields, so this reads those and ignores
//! the rest; a missing one is named in the error.

use serde_json::Value;

/// A Stripe subscription's status (`status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// The first payment has not succeeded yet (Stripe waits ~23 hours).
    Incomplete,
    /// The first payment never succeeded; the subscription is dead.
    IncompleteExpired,
    Trialing,
    Active,
    /// A renewal payment failed; Stripe is retrying.
    PastDue,
    Canceled,
    /// Retries ran out and the subscription was left open but unpaid.
    Unpaid,
    /// A trial ended without a payment method.
    Paused,
    /// A status this crate does not know yet, as Stripe spelled it.
    Other(String),
}

impl SubscriptionStatus {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Canceled => "canceled",
            Self::Unpaid => "unpaid",
            Self::Paused => "paused",
            Self::Other(other) => other,
        }
    }
}

impl From<&str> for SubscriptionStatus {
    fn from(status: &str) -> Self {
        match status {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "canceled" => Self::Canceled,
            "unpaid" => Self::Unpaid,
            "paused" => Self::Paused,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// A subscription as Stripe has it now: what the gateway reconciles its own
/// record with after every webhook event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    /// `metadata[tenant_id]`, set by [`crate::StripeBilling::create_account`];
    /// `None` for a subscription made elsewhere (e.g. in the Dashboard).
    pub tenant_id: Option<String>,
    pub customer_id: String,
    pub subscription_id: String,
    /// The item on the seat price (or the only item, if the price changed).
    pub item_id: String,
    /// Paid seats: the item's `quantity`.
    pub quantity: u32,
    pub status: SubscriptionStatus,
    /// The current billing period, from the item (where API versions since
    /// `2025-03-31.basil` keep it), else from the subscription (older ones).
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    /// When the subscription was created (Unix seconds).
    pub created: i64,
}

/// Reads a subscription object. `seat_price_id` picks the seat item when
/// there are several. The error names what is missing, never a value.
pub(crate) fn snapshot(
    subscription: &Value,
    seat_price_id: &str,
) -> Result<SubscriptionSnapshot, String> {
    if let Some(kind) = subscription.get("object").and_then(Value::as_str)
        && kind != "subscription"
    {
        return Err(format!("expected a subscription object, got `{kind}`"));
    }
    let subscription_id = string(subscription, "id")?;
    let customer_id = expandable_id(subscription.get("customer"))
        .ok_or("no `customer`")?
        .to_owned();
    let status = SubscriptionStatus::from(string(subscription, "status")?.as_str());
    let created = subscription
        .get("created")
        .and_then(Value::as_i64)
        .ok_or("no `created`")?;
    let tenant_id = subscription
        .pointer("/metadata/tenant_id")
        .and_then(Value::as_str)
        .map(str::to_owned);

    let items = subscription
        .pointer("/items/data")
        .and_then(Value::as_array)
        .ok_or("no `items.data`")?;
    let item = items
        .iter()
        .find(|item| item_price_id(item) == Some(seat_price_id))
        .or(match items.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .ok_or_else(|| {
            format!(
                "none of its {} items is on the seat price `{seat_price_id}`",
                items.len()
            )
        })?;
    let item_id = string(item, "id").map_err(|e| format!("item: {e}"))?;
    // A licensed (per-seat) price always has a quantity; a metered one has
    // none, which means no seats are paid for on it.
    let quantity = match item.get("quantity").and_then(Value::as_u64) {
        None => 0,
        Some(q) => u32::try_from(q).map_err(|_| format!("item quantity {q} is out of range"))?,
    };
    let period = |field: &str| {
        item.get(field)
            .and_then(Value::as_i64)
            .or_else(|| subscription.get(field).and_then(Value::as_i64))
    };

    Ok(SubscriptionSnapshot {
        tenant_id,
        customer_id,
        subscription_id,
        item_id,
        quantity,
        status,
        current_period_start: period("current_period_start"),
        current_period_end: period("current_period_end"),
        created,
    })
}

fn string(object: &Value, field: &str) -> Result<String, String> {
    object
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("no `{field}`"))
}

/// An expandable field holds an id, or the whole object when expanded.
pub(crate) fn expandable_id(field: Option<&Value>) -> Option<&str> {
    match field? {
        Value::String(id) => Some(id),
        Value::Object(object) => object.get("id").and_then(Value::as_str),
        _ => None,
    }
}

fn item_price_id(item: &Value) -> Option<&str> {
    expandable_id(item.get("price")).or_else(|| expandable_id(item.get("plan")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn item(id: &str, price: &str, quantity: u64) -> Value {
        json!({"id": id, "object": "subscription_item", "price": {"id": price, "object": "price"},
               "quantity": quantity, "current_period_start": 100, "current_period_end": 200})
    }

    fn subscription(items: Vec<Value>) -> Value {
        json!({"id": "sub_1", "object": "subscription", "customer": "cus_1", "status": "past_due",
               "created": 50, "metadata": {"tenant_id": "t-1"},
               "items": {"object": "list", "data": items}})
    }

    #[test]
    fn picks_the_seat_item_among_several() {
        let sub = subscription(vec![
            item("si_other", "price_addon", 1),
            item("si_seat", "price_seat", 7),
        ]);
        let snap = snapshot(&sub, "price_seat").expect("snapshot");
        assert_eq!(snap.item_id, "si_seat");
        assert_eq!(snap.quantity, 7);
        assert_eq!(snap.status, SubscriptionStatus::PastDue);
        assert_eq!(snap.tenant_id.as_deref(), Some("t-1"));
        assert_eq!(
            (snap.current_period_start, snap.current_period_end),
            (Some(100), Some(200))
        );
    }

    #[test]
    fn a_single_item_on_another_price_still_counts() {
        let sub = subscription(vec![item("si_only", "price_old", 3)]);
        assert_eq!(
            snapshot(&sub, "price_seat").expect("snapshot").item_id,
            "si_only"
        );
    }

    #[test]
    fn several_items_none_on_the_seat_price_is_an_error() {
        let sub = subscription(vec![item("si_a", "price_a", 1), item("si_b", "price_b", 1)]);
        let error = snapshot(&sub, "price_seat").expect_err("ambiguous");
        assert!(error.contains("price_seat"), "{error}");
    }

    #[test]
    fn periods_fall_back_to_the_subscription_in_older_versions() {
        let mut sub = subscription(vec![
            json!({"id": "si_1", "price": "price_seat", "quantity": 2}),
        ]);
        sub["current_period_start"] = json!(10);
        sub["current_period_end"] = json!(20);
        sub["customer"] = json!({"id": "cus_expanded", "object": "customer"});
        let snap = snapshot(&sub, "price_seat").expect("snapshot");
        assert_eq!(
            (snap.current_period_start, snap.current_period_end),
            (Some(10), Some(20))
        );
        assert_eq!(snap.customer_id, "cus_expanded");
    }

    #[test]
    fn unknown_status_is_kept_and_missing_fields_are_named() {
        let mut sub = subscription(vec![item("si_1", "price_seat", 1)]);
        sub["status"] = json!("frozen");
        assert_eq!(
            snapshot(&sub, "price_seat").expect("snapshot").status,
            SubscriptionStatus::Other("frozen".into())
        );
        sub.as_object_mut().expect("object").remove("customer");
        assert_eq!(
            snapshot(&sub, "price_seat").expect_err("no customer"),
            "no `customer`"
        );
    }
}
