//! `StripeBilling` against a local HTTP/1.1 server that records each request
//! (method, path, headers, form body) and answers with Stripe-shaped JSON:
//! what goes on the wire for each operation, and how Stripe's answers and
//! failures map to `BillingError`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tp_billing::{BillingError, BillingProvider, SeatUpdate};
use tp_stripe::{
    AccountDirectory, BoxFuture, STRIPE_API_VERSION, StripeAccount, StripeBilling, StripeSettings,
    SubscriptionSnapshot, SubscriptionStatus,
};

const SECRET_KEY: &str = "sk_test_51NeverPrintedKeyValue";
const SEAT_PRICE: &str = "price_1SeatMonthlyUsd";
const SUBSCRIPTION: &str = include_str!("fixtures/subscription.json");
const CUSTOMER: &str = include_str!("fixtures/customer.json");

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The form body, decoded (keys too: brackets may arrive escaped).
    fn form(&self) -> HashMap<String, String> {
        self.body
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect()
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3).expect("two hex digits after %");
                out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 form")
}

type Log = Arc<Mutex<Vec<Request>>>;

/// Answers the i-th connection with the i-th `(status, JSON body)`.
async fn serve(replies: Vec<(u16, String)>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: Log = Arc::default();
    let recorded = log.clone();
    tokio::spawn(async move {
        for (status, reply) in replies {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut chunk).await.expect("read");
                assert!(n > 0, "client closed before sending a request");
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
            let mut lines = head.lines();
            let mut request_line = lines.next().unwrap_or_default().split(' ');
            let method = request_line.next().unwrap_or_default().to_owned();
            let path = request_line.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buffer.len() < head_end + length {
                let n = socket.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "client closed mid-body");
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
            recorded.lock().expect("lock").push(Request {
                method,
                path,
                headers,
                body,
            });
            let response = format!(
                "HTTP/1.1 {status} Reply\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (addr, log)
}

/// Tenants and their accounts, as the gateway keeps them in Postgres.
#[derive(Default)]
struct Directory(HashMap<String, StripeAccount>);

impl AccountDirectory for Directory {
    fn account<'a>(
        &'a self,
        tenant_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StripeAccount>, BillingError>> {
        Box::pin(std::future::ready(Ok(self.0.get(tenant_id).cloned())))
    }
}

fn account() -> StripeAccount {
    StripeAccount {
        customer_id: "cus_TenantFortyTwo01".into(),
        subscription_id: "sub_1SeatsTenant42AbCdEf".into(),
        item_id: "si_SeatItemTenant42".into(),
    }
}

fn settings(base_url: String) -> StripeSettings {
    StripeSettings {
        secret_key: SECRET_KEY.into(),
        seat_price_id: SEAT_PRICE.into(),
        api_base_url: Some(base_url),
        webhook_secret: "whsec_test_secret".into(),
    }
}

fn billing(addr: SocketAddr) -> StripeBilling {
    let directory = Directory(HashMap::from([("tenant-42".to_owned(), account())]));
    StripeBilling::new(&settings(format!("http://{addr}")), Arc::new(directory)).expect("billing")
}

fn stripe_error(kind: &str, code: &str, message: &str) -> String {
    json!({"error": {"type": kind, "code": code, "message": message,
                     "doc_url": format!("https://stripe.com/docs/error-codes/{code}"),
                     "request_log_url": "https://dashboard.stripe.com/test/logs/req_abc"}})
    .to_string()
}

fn subscription_item(quantity: u64) -> String {
    let subscription: Value = serde_json::from_str(SUBSCRIPTION).expect("fixture");
    let mut item = subscription["items"]["data"][0].clone();
    item["quantity"] = json!(quantity);
    item.to_string()
}

fn expected_snapshot() -> SubscriptionSnapshot {
    SubscriptionSnapshot {
        tenant_id: Some("tenant-42".into()),
        customer_id: "cus_TenantFortyTwo01".into(),
        subscription_id: "sub_1SeatsTenant42AbCdEf".into(),
        item_id: "si_SeatItemTenant42".into(),
        quantity: 12,
        status: SubscriptionStatus::Active,
        current_period_start: Some(1_790_812_800),
        current_period_end: Some(1_793_491_200),
        created: 1_790_812_799,
    }
}

fn assert_common_headers(request: &Request) {
    assert_eq!(request.header("stripe-version"), Some(STRIPE_API_VERSION));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {SECRET_KEY}").as_str())
    );
}

#[tokio::test]
async fn create_account_makes_a_customer_then_a_seat_subscription() {
    let (addr, log) = serve(vec![
        (200, CUSTOMER.to_owned()),
        (200, SUBSCRIPTION.to_owned()),
    ])
    .await;
    let account = billing(addr)
        .create_account("tenant-42", "Acme & Co. GmbH", 12, "signup-7f3a")
        .await
        .expect("account");
    assert_eq!(account, self::account());

    let requests = log.lock().expect("lock");
    assert_eq!(requests.len(), 2, "{requests:?}");

    let customer = &requests[0];
    assert_eq!(
        (customer.method.as_str(), customer.path.as_str()),
        ("POST", "/v1/customers")
    );
    assert_common_headers(customer);
    assert_eq!(
        customer.header("idempotency-key"),
        Some("signup-7f3a-customer")
    );
    assert_eq!(
        customer.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = customer.form();
    assert_eq!(
        form.get("metadata[tenant_id]").map(String::as_str),
        Some("tenant-42")
    );
    assert_eq!(
        form.get("name").map(String::as_str),
        Some("Acme & Co. GmbH")
    );

    let subscription = &requests[1];
    assert_eq!(
        (subscription.method.as_str(), subscription.path.as_str()),
        ("POST", "/v1/subscriptions")
    );
    assert_common_headers(subscription);
    assert_eq!(
        subscription.header("idempotency-key"),
        Some("signup-7f3a-subscription")
    );
    let form = subscription.form();
    assert_eq!(
        form.get("customer").map(String::as_str),
        Some("cus_TenantFortyTwo01")
    );
    assert_eq!(
        form.get("items[0][price]").map(String::as_str),
        Some(SEAT_PRICE)
    );
    assert_eq!(
        form.get("items[0][quantity]").map(String::as_str),
        Some("12")
    );
    assert_eq!(
        form.get("metadata[tenant_id]").map(String::as_str),
        Some("tenant-42")
    );
}

#[tokio::test]
async fn a_failed_second_step_reports_the_failure() {
    let (addr, log) = serve(vec![
        (200, CUSTOMER.to_owned()),
        (
            400,
            stripe_error(
                "invalid_request_error",
                "resource_missing",
                "No such price: 'price_1SeatMonthlyUsd'",
            ),
        ),
    ])
    .await;
    let error = billing(addr)
        .create_account("tenant-42", "Acme", 3, "signup-1")
        .await
        .expect_err("no such price");
    assert!(
        matches!(&error, BillingError::Refused(m) if m == "No such price: 'price_1SeatMonthlyUsd'"),
        "{error:?}"
    );
    assert_eq!(log.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn update_seats_sets_the_item_quantity_with_prorations() {
    let (addr, log) = serve(vec![(200, subscription_item(13))]).await;
    let billing = billing(addr);
    assert_eq!(billing.name(), "stripe");
    billing
        .update_seats(SeatUpdate {
            tenant_id: "tenant-42",
            seats: 13,
            idempotency_key: "seats-tenant-42-v9",
        })
        .await
        .expect("updated");

    let requests = log.lock().expect("lock");
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v1/subscription_items/si_SeatItemTenant42")
    );
    assert_common_headers(request);
    assert_eq!(
        request.header("idempotency-key"),
        Some("seats-tenant-42-v9")
    );
    let form = request.form();
    assert_eq!(form.get("quantity").map(String::as_str), Some("13"));
    assert_eq!(
        form.get("proration_behavior").map(String::as_str),
        Some("create_prorations")
    );
    assert_eq!(form.len(), 2, "nothing else is changed: {form:?}");
}

#[tokio::test]
async fn a_tenant_without_an_account_is_refused_without_a_request() {
    let (addr, log) = serve(vec![(200, subscription_item(1))]).await;
    let error = billing(addr)
        .update_seats(SeatUpdate {
            tenant_id: "tenant-unknown",
            seats: 2,
            idempotency_key: "k",
        })
        .await
        .expect_err("no account");
    assert!(matches!(error, BillingError::Refused(_)), "{error:?}");
    assert!(log.lock().expect("lock").is_empty());
}

async fn update_against(status: u16, body: String) -> BillingError {
    let (addr, _log) = serve(vec![(status, body)]).await;
    billing(addr)
        .update_seats(SeatUpdate {
            tenant_id: "tenant-42",
            seats: 20,
            idempotency_key: "seats-1",
        })
        .await
        .expect_err("Stripe said no")
}

#[tokio::test]
async fn a_card_error_is_refused_with_stripes_message() {
    let error = update_against(
        402,
        stripe_error("card_error", "card_declined", "Your card was declined."),
    )
    .await;
    assert!(
        matches!(&error, BillingError::Refused(m) if m == "Your card was declined."),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_invalid_request_is_refused_with_stripes_message() {
    let error = update_against(
        404,
        stripe_error(
            "invalid_request_error",
            "resource_missing",
            "No such subscription item: 'si_SeatItemTenant42'",
        ),
    )
    .await;
    assert!(
        matches!(&error, BillingError::Refused(m) if m.contains("No such subscription item")),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_unavailable() {
    let cases = [
        (
            500,
            stripe_error("api_error", "", "An unknown error occurred"),
        ),
        (
            429,
            stripe_error("invalid_request_error", "rate_limit", "Too many requests"),
        ),
        (
            409,
            stripe_error("idempotency_error", "idempotency_key_in_use", "in use"),
        ),
        // A proxy's answer, not Stripe's JSON.
        (503, String::new()),
    ];
    for (status, body) in cases {
        let error = update_against(status, body).await;
        assert!(
            matches!(error, BillingError::Unavailable(_)),
            "{status}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_rejected_key_is_unavailable_and_never_quoted() {
    let error = update_against(
        401,
        stripe_error(
            "invalid_request_error",
            "api_key_invalid",
            &format!("Invalid API Key provided: {SECRET_KEY}"),
        ),
    )
    .await;
    let BillingError::Unavailable(message) = &error else {
        panic!("{error:?}");
    };
    assert!(!message.contains(SECRET_KEY), "{message}");
    assert!(message.contains("401"), "{message}");
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    // A port that was just free: nothing listens there now.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let error = billing(addr)
        .update_item_quantity("si_SeatItemTenant42", 3, "k-1")
        .await
        .expect_err("nobody there");
    assert!(matches!(error, BillingError::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn fetch_subscription_reads_the_pinned_versions_shape() {
    let (addr, log) = serve(vec![(200, SUBSCRIPTION.to_owned())]).await;
    let snapshot = billing(addr)
        .fetch_subscription("sub_1SeatsTenant42AbCdEf")
        .await
        .expect("snapshot");
    assert_eq!(snapshot, expected_snapshot());

    let requests = log.lock().expect("lock");
    let request = &requests[0];
    // async-stripe appends the (empty) query string's `?`.
    let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
    assert_eq!(
        (request.method.as_str(), path, query),
        ("GET", "/v1/subscriptions/sub_1SeatsTenant42AbCdEf", "")
    );
    assert_common_headers(request);
    assert_eq!(request.header("idempotency-key"), None);
}

/// The fixture is what Stripe sends in the pinned version, as far as
/// async-stripe's generated model (from Stripe's OpenAPI spec for that
/// version) can tell: its strict decoder accepts it.
#[test]
fn the_subscription_fixture_matches_async_stripes_model() {
    let typed: stripe_billing::Subscription =
        miniserde::json::from_str(SUBSCRIPTION).expect("fixture decodes as a Subscription");
    assert_eq!(typed.id.as_str(), "sub_1SeatsTenant42AbCdEf");
    assert_eq!(typed.items.data[0].quantity, Some(12));
}

#[tokio::test]
async fn cancel_deletes_the_subscription() {
    let mut canceled: Value = serde_json::from_str(SUBSCRIPTION).expect("fixture");
    canceled["status"] = json!("canceled");
    canceled["canceled_at"] = json!(1_791_000_000);
    canceled["ended_at"] = json!(1_791_000_000);
    let (addr, log) = serve(vec![(200, canceled.to_string())]).await;
    let snapshot = billing(addr)
        .cancel("sub_1SeatsTenant42AbCdEf", "cancel-tenant-42")
        .await
        .expect("canceled");
    assert_eq!(snapshot.status, SubscriptionStatus::Canceled);

    let requests = log.lock().expect("lock");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("DELETE", "/v1/subscriptions/sub_1SeatsTenant42AbCdEf")
    );
    assert_eq!(request.header("idempotency-key"), Some("cancel-tenant-42"));
}

#[tokio::test]
async fn ids_that_would_change_the_path_never_leave_the_process() {
    let (addr, log) = serve(vec![(200, SUBSCRIPTION.to_owned())]).await;
    let error = billing(addr)
        .fetch_subscription("sub_1/../../v1/customers")
        .await
        .expect_err("bad id");
    assert!(matches!(error, BillingError::Refused(_)), "{error:?}");
    assert!(log.lock().expect("lock").is_empty());
}

#[test]
fn unusable_settings_are_refused_without_quoting_secrets() {
    let directory: Arc<dyn AccountDirectory> = Arc::new(Directory::default());
    let good = settings("http://127.0.0.1:1".into());
    let cases = [
        StripeSettings {
            secret_key: format!("{SECRET_KEY}\n"),
            ..good.clone()
        },
        StripeSettings {
            secret_key: String::new(),
            ..good.clone()
        },
        StripeSettings {
            webhook_secret: String::new(),
            ..good.clone()
        },
        StripeSettings {
            api_base_url: Some("ftp://stripe.test".into()),
            ..good.clone()
        },
        StripeSettings {
            seat_price_id: String::new(),
            ..good.clone()
        },
    ];
    for settings in cases {
        let error = StripeBilling::new(&settings, directory.clone()).expect_err("invalid");
        assert!(!error.to_string().contains(SECRET_KEY), "{error}");
    }
    assert!(StripeBilling::new(&good, directory).is_ok());
}
