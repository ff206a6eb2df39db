//! `verify_event` on deliveries signed by async-stripe-webhook's signer (an
//! independent implementation of Stripe's scheme): authentic, forged,
//! stale, rotated secrets, broken headers and bodies, and which subscription
//! each kind of event points at.

use serde_json::{Value, json};
use stripe_webhook::Webhook;
use tp_stripe::{STRIPE_API_VERSION, WebhookError, WebhookEvent, verify_event};

const SECRET: &str = "whsec_test_5WbX5kEWLlfzsGNjH64I8lOOqUB6e8FH";
const NOW: i64 = 1_792_000_000;
const SUBSCRIPTION: &str = include_str!("fixtures/subscription.json");

fn event(event_type: &str, object: Value) -> String {
    json!({
        "id": "evt_1SeatEventAbCdEf",
        "object": "event",
        "api_version": STRIPE_API_VERSION,
        "created": NOW - 2,
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": "req_Xyz123", "idempotency_key": "seats-1"},
        "type": event_type
    })
    .to_string()
}

fn subscription() -> Value {
    serde_json::from_str(SUBSCRIPTION).expect("fixture")
}

fn sign(payload: &str, secret: &str, at: i64) -> String {
    Webhook::generate_test_header(payload, secret, Some(at))
}

fn verify(payload: &str, header: &str) -> Result<WebhookEvent, WebhookError> {
    verify_event(payload.as_bytes(), header, SECRET, NOW)
}

#[test]
fn an_authentic_subscription_event_verifies_and_names_the_subscription() {
    let payload = event("customer.subscription.updated", subscription());
    let event = verify(&payload, &sign(&payload, SECRET, NOW - 1)).expect("authentic");
    assert_eq!(
        event,
        WebhookEvent {
            id: "evt_1SeatEventAbCdEf".into(),
            event_type: "customer.subscription.updated".into(),
            created: NOW - 2,
            subscription_id: Some("sub_1SeatsTenant42AbCdEf".into()),
            customer_id: Some("cus_TenantFortyTwo01".into()),
        }
    );
}

#[test]
fn created_and_deleted_subscription_events_name_their_subscription() {
    for event_type in [
        "customer.subscription.created",
        "customer.subscription.deleted",
    ] {
        let mut object = subscription();
        object["id"] = json!("sub_Other");
        let payload = event(event_type, object);
        let event = verify(&payload, &sign(&payload, SECRET, NOW)).expect("authentic");
        assert_eq!(event.event_type, event_type);
        assert_eq!(event.subscription_id.as_deref(), Some("sub_Other"));
    }
}

/// An invoice as the pinned version renders it: the subscription is under
/// `parent.subscription_details`, no longer at the top level.
fn invoice(subscription: Value) -> Value {
    json!({
        "id": "in_1PaidInvoiceT42",
        "object": "invoice",
        "amount_due": 18000,
        "amount_paid": 18000,
        "billing_reason": "subscription_cycle",
        "currency": "usd",
        "customer": "cus_TenantFortyTwo01",
        "lines": {"object": "list", "data": [], "has_more": false, "url": "/v1/invoices/in_1PaidInvoiceT42/lines"},
        "parent": {
            "quote_details": null,
            "subscription_details": {
                "metadata": {"tenant_id": "tenant-42"},
                "subscription": subscription
            },
            "type": "subscription_details"
        },
        "period_end": 1793491200,
        "period_start": 1790812800,
        "status": "paid"
    })
}

#[test]
fn invoice_events_name_the_invoices_subscription() {
    for event_type in ["invoice.paid", "invoice.payment_failed"] {
        let payload = event(event_type, invoice(json!("sub_1SeatsTenant42AbCdEf")));
        let event = verify(&payload, &sign(&payload, SECRET, NOW)).expect("authentic");
        assert_eq!(event.event_type, event_type);
        assert_eq!(
            event.subscription_id.as_deref(),
            Some("sub_1SeatsTenant42AbCdEf")
        );
        assert_eq!(event.customer_id.as_deref(), Some("cus_TenantFortyTwo01"));
    }
}

#[test]
fn invoice_subscriptions_are_found_expanded_and_in_the_pre_basil_place() {
    let expanded = event(
        "invoice.paid",
        invoice(json!({"id": "sub_Expanded", "object": "subscription"})),
    );
    let event_ = verify(&expanded, &sign(&expanded, SECRET, NOW)).expect("authentic");
    assert_eq!(event_.subscription_id.as_deref(), Some("sub_Expanded"));

    let old = event(
        "invoice.payment_failed",
        json!({"id": "in_Old", "object": "invoice", "customer": "cus_Old", "subscription": "sub_Old"}),
    );
    let event_ = verify(&old, &sign(&old, SECRET, NOW)).expect("authentic");
    assert_eq!(event_.subscription_id.as_deref(), Some("sub_Old"));
}

#[test]
fn a_one_off_invoice_has_no_subscription() {
    let mut one_off = invoice(Value::Null);
    one_off["parent"] = Value::Null;
    let payload = event("invoice.paid", one_off);
    let event = verify(&payload, &sign(&payload, SECRET, NOW)).expect("authentic");
    assert_eq!(event.subscription_id, None);
}

#[test]
fn an_unknown_event_type_decodes_for_the_gateway_to_ignore() {
    let payload = event(
        "thoughtpartner.future_thing.happened",
        json!({"id": "fut_1", "object": "future_thing", "customer": "cus_Someone"}),
    );
    let event = verify(&payload, &sign(&payload, SECRET, NOW)).expect("authentic");
    assert_eq!(event.event_type, "thoughtpartner.future_thing.happened");
    assert_eq!(event.subscription_id, None);
    assert_eq!(event.customer_id.as_deref(), Some("cus_Someone"));
}

#[test]
fn a_wrong_secret_is_a_bad_signature() {
    let payload = event("customer.subscription.updated", subscription());
    let header = sign(&payload, "whsec_someone_elses", NOW);
    assert!(matches!(
        verify(&payload, &header),
        Err(WebhookError::BadSignature)
    ));
}

#[test]
fn a_changed_body_is_a_bad_signature() {
    let payload = event("customer.subscription.updated", subscription());
    let header = sign(&payload, SECRET, NOW);
    let tampered = payload.replace("\"quantity\":12", "\"quantity\":1200");
    assert_ne!(tampered, payload);
    assert!(matches!(
        verify(&tampered, &header),
        Err(WebhookError::BadSignature)
    ));
}

#[test]
fn a_signature_six_minutes_old_is_stale() {
    let payload = event("customer.subscription.updated", subscription());
    let signed_at = NOW - 6 * 60;
    match verify(&payload, &sign(&payload, SECRET, signed_at)) {
        Err(WebhookError::Stale { signed_at: at, now }) => {
            assert_eq!((at, now), (signed_at, NOW));
        }
        other => panic!("{other:?}"),
    }
    // Six minutes ahead (a skewed clock) is refused the same way.
    let ahead = sign(&payload, SECRET, NOW + 6 * 60);
    assert!(matches!(
        verify(&payload, &ahead),
        Err(WebhookError::Stale { .. })
    ));
    // Exactly five minutes is still within the tolerance.
    let edge = sign(&payload, SECRET, NOW - 5 * 60);
    assert!(verify(&payload, &edge).is_ok());
}

#[test]
fn any_of_several_v1_signatures_may_match() {
    let payload = event("customer.subscription.updated", subscription());
    let old_secret = sign(&payload, "whsec_rotated_out", NOW);
    let current = sign(&payload, SECRET, NOW);
    let v1 = |header: &str| header.split_once(",v1=").expect("v1").1.to_owned();
    // As during a secret rotation: the old secret's signature first, plus a
    // v0 that is ignored.
    let header = format!(
        "t={NOW},v1={},v1={},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39",
        v1(&old_secret),
        v1(&current)
    );
    assert!(verify(&payload, &header).is_ok());
    // Neither matching is still refused.
    let header = format!("t={NOW},v1={},v1=nothex", v1(&old_secret));
    assert!(matches!(
        verify(&payload, &header),
        Err(WebhookError::BadSignature)
    ));
}

#[test]
fn malformed_headers_are_told_apart_from_bad_signatures() {
    let payload = event("customer.subscription.updated", subscription());
    for header in [
        "",
        "sha256=abc",
        "t=yesterday,v1=00",
        "v1=00",
        &format!("t={NOW}"),
    ] {
        match verify(&payload, header) {
            Err(error @ WebhookError::MalformedHeader(_)) => {
                assert!(error.to_string().contains("Stripe-Signature"), "{error}");
            }
            other => panic!("{header:?}: {other:?}"),
        }
    }
}

#[test]
fn an_authentic_body_that_is_not_an_event_is_malformed() {
    for payload in [
        "{\"id\": \"evt_1\", \"object\": \"event\",".to_owned(),
        "[]".to_owned(),
        json!({"id": "evt_1", "object": "event", "type": "invoice.paid", "created": NOW})
            .to_string(),
    ] {
        match verify(&payload, &sign(&payload, SECRET, NOW)) {
            Err(WebhookError::MalformedPayload(why)) => assert!(!why.is_empty()),
            other => panic!("{payload}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_secret_verifies_nothing() {
    let payload = event("customer.subscription.updated", subscription());
    let header = sign(&payload, "", NOW);
    assert!(matches!(
        verify_event(payload.as_bytes(), &header, "", NOW),
        Err(WebhookError::BadSignature)
    ));
}

/// Our verifier and async-stripe-webhook's accept and refuse the same
/// deliveries.
#[test]
fn async_stripe_webhook_agrees() {
    let payload = event("customer.subscription.updated", subscription());
    let cases = [
        (sign(&payload, SECRET, NOW), true),
        (sign(&payload, "whsec_other", NOW), false),
        (sign(&payload, SECRET, NOW - 6 * 60), false),
        (sign(&payload, SECRET, NOW + 299), true),
    ];
    for (header, authentic) in cases {
        let theirs = Webhook::construct_event_with_timestamp(&payload, &header, SECRET, NOW);
        let ours = verify(&payload, &header);
        assert_eq!(
            theirs.is_ok(),
            authentic,
            "async-stripe-webhook on {header}: {theirs:?}"
        );
        assert_eq!(ours.is_ok(), authentic, "ours on {header}: {ours:?}");
    }
}
