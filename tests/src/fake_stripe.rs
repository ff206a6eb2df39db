//! A local HTTP/1.1 server speaking Stripe's wire format for the calls the
//! gateway makes (create a customer, create a subscription, set an item's
//! quantity, read a subscription back). It records every request (method,
//! path, form fields, `Idempotency-Key`), keeps the subscriptions it made,
//! and lets a test change them as the Dashboard would, or fail the next
//! request. Plus signing and posting webhooks as Stripe does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A subscription as Stripe renders it in the pinned API version (the
/// fixture `tp-stripe`'s own tests check against async-stripe's model).
const SUBSCRIPTION: &str = include_str!("../../crates/stripe/tests/fixtures/subscription.json");
const CUSTOMER: &str = include_str!("../../crates/stripe/tests/fixtures/customer.json");

/// The API version webhook events are rendered in.
pub const API_VERSION: &str = "2026-09-30.endive";

/// The seat price the fake's subscriptions are on.
pub const SEAT_PRICE: &str = "price_1SeatMonthlyUsd";

/// One request, as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub idempotency_key: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Clone, Debug)]
struct Subscription {
    customer: String,
    tenant_id: Option<String>,
    item_id: String,
    quantity: u64,
    status: String,
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    next_id: u32,
    subscriptions: HashMap<String, Subscription>,
    /// `(method and path prefix, status, body)`: the next matching request
    /// fails with it.
    failures: Vec<(String, u16, String)>,
}

/// The fake Stripe, running until dropped.
pub struct FakeStripe {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Stripe error body.
pub fn stripe_error(kind: &str, code: &str, message: &str) -> String {
    json!({"error": {"type": kind, "code": code, "message": message}}).to_string()
}

impl FakeStripe {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = answer(socket, state).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// `TP_STRIPE_API_BASE` for a gateway that talks to this fake.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state().requests.clone()
    }

    /// The subscription made for `tenant_id`, if any.
    pub fn subscription_of(&self, tenant_id: &str) -> Option<String> {
        self.state()
            .subscriptions
            .iter()
            .find(|(_, s)| s.tenant_id.as_deref() == Some(tenant_id))
            .map(|(id, _)| id.clone())
    }

    /// A quantity change made in the Dashboard.
    pub fn set_quantity(&self, subscription_id: &str, quantity: u64) {
        if let Some(s) = self.state().subscriptions.get_mut(subscription_id) {
            s.quantity = quantity;
        }
    }

    pub fn set_status(&self, subscription_id: &str, status: &str) {
        if let Some(s) = self.state().subscriptions.get_mut(subscription_id) {
            s.status = status.to_owned();
        }
    }

    /// A subscription made elsewhere (not through the gateway), for
    /// `tenant_id` in its metadata; returns its id.
    pub fn add_subscription(&self, tenant_id: Option<&str>, quantity: u64) -> String {
        let mut state = self.state();
        state.next_id += 1;
        let n = state.next_id;
        let id = format!("sub_Elsewhere{n:04}");
        state.subscriptions.insert(
            id.clone(),
            Subscription {
                customer: format!("cus_Elsewhere{n:04}"),
                tenant_id: tenant_id.map(str::to_owned),
                item_id: format!("si_Elsewhere{n:04}"),
                quantity,
                status: "active".into(),
            },
        );
        id
    }

    /// The next request whose `"METHOD /path"` starts with `prefix`
    /// answers `status` with `body`.
    pub fn fail_next(&self, prefix: &str, status: u16, body: String) {
        self.state()
            .failures
            .push((prefix.to_owned(), status, body));
    }
}

fn subscription_json(id: &str, s: &Subscription) -> Value {
    let mut value: Value = serde_json::from_str(SUBSCRIPTION).unwrap_or_default();
    value["id"] = json!(id);
    value["customer"] = json!(s.customer);
    value["status"] = json!(s.status);
    value["metadata"] = match &s.tenant_id {
        Some(tenant) => json!({ "tenant_id": tenant }),
        None => json!({}),
    };
    let item = &mut value["items"]["data"][0];
    item["id"] = json!(s.item_id);
    item["quantity"] = json!(s.quantity);
    item["subscription"] = json!(id);
    value
}

/// Routes one request; `(status, JSON body)`.
fn route(
    state: &mut State,
    method: &str,
    path: &str,
    form: &HashMap<String, String>,
) -> (u16, String) {
    let line = format!("{method} {path}");
    if let Some(i) = state
        .failures
        .iter()
        .position(|(prefix, _, _)| line.starts_with(prefix.as_str()))
    {
        let (_, status, body) = state.failures.remove(i);
        return (status, body);
    }
    let not_found = |what: &str| {
        (
            404,
            stripe_error(
                "invalid_request_error",
                "resource_missing",
                &format!("No such {what}"),
            ),
        )
    };
    match (method, path) {
        ("POST", "/v1/customers") => {
            state.next_id += 1;
            let mut customer: Value = serde_json::from_str(CUSTOMER).unwrap_or_default();
            customer["id"] = json!(format!("cus_Fake{:04}", state.next_id));
            customer["name"] = json!(form.get("name"));
            customer["metadata"] = json!({ "tenant_id": form.get("metadata[tenant_id]") });
            (200, customer.to_string())
        }
        ("POST", "/v1/subscriptions") => {
            state.next_id += 1;
            let n = state.next_id;
            let id = format!("sub_Fake{n:04}");
            let subscription = Subscription {
                customer: form.get("customer").cloned().unwrap_or_default(),
                tenant_id: form.get("metadata[tenant_id]").cloned(),
                item_id: format!("si_Fake{n:04}"),
                quantity: form
                    .get("items[0][quantity]")
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1),
                status: "active".into(),
            };
            let body = subscription_json(&id, &subscription).to_string();
            state.subscriptions.insert(id, subscription);
            (200, body)
        }
        ("POST", path) if path.starts_with("/v1/subscription_items/") => {
            let item_id = &path["/v1/subscription_items/".len()..];
            let quantity = form.get("quantity").and_then(|q| q.parse().ok());
            let Some((id, s)) = state
                .subscriptions
                .iter_mut()
                .find(|(_, s)| s.item_id == item_id)
            else {
                return not_found("subscription item");
            };
            if let Some(quantity) = quantity {
                s.quantity = quantity;
            }
            let item = subscription_json(id, s)["items"]["data"][0].clone();
            (200, item.to_string())
        }
        ("GET", path) if path.starts_with("/v1/subscriptions/") => {
            let id = &path["/v1/subscriptions/".len()..];
            match state.subscriptions.get(id) {
                Some(s) => (200, subscription_json(id, s).to_string()),
                None => not_found("subscription"),
            }
        }
        _ => not_found("route"),
    }
}

async fn answer(mut socket: TcpStream, state: Arc<Mutex<State>>) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before a request");
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed mid-body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string();
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let (status, reply) = {
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let reply = route(&mut state, &method, &path, &form);
        state.requests.push(Recorded {
            method,
            path,
            idempotency_key: header("idempotency-key"),
            form,
        });
        reply
    };
    let response = format!(
        "HTTP/1.1 {status} Reply\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await?;
    Ok(())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match text
                    .get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => out.push(byte),
                    None => out.push(b'%'),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A `Stripe-Signature` header for `payload`, signed at `timestamp` with
/// `secret`, as Stripe signs: `t=<unix>,v1=<hex HMAC-SHA256 of "{t}.{payload}">`.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// An event of `event_type` about `object`, as Stripe delivers it.
pub fn event(id: &str, event_type: &str, object: Value) -> Vec<u8> {
    json!({
        "id": id,
        "object": "event",
        "api_version": API_VERSION,
        "created": unix_now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": event_type,
        "data": {"object": object},
    })
    .to_string()
    .into_bytes()
}

/// A `customer.subscription.*` event's object: the subscription (its
/// content is not trusted; the gateway re-fetches it).
pub fn subscription_object(subscription_id: &str, customer_id: &str) -> Value {
    json!({"id": subscription_id, "object": "subscription", "customer": customer_id,
           "status": "active"})
}

/// An `invoice.*` event's object, billing `subscription_id`.
pub fn invoice_object(subscription_id: &str, customer_id: &str) -> Value {
    json!({"id": "in_1FakeInvoice", "object": "invoice", "customer": customer_id,
           "parent": {"type": "subscription_details",
                      "subscription_details": {"subscription": subscription_id}}})
}

/// POSTs `payload` to the gateway's webhook endpoint; `(status, body)`.
pub async fn post_webhook(
    http_addr: SocketAddr,
    payload: &[u8],
    signature: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut socket = TcpStream::connect(http_addr).await?;
    let mut request = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: {http_addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        payload.len()
    );
    if let Some(signature) = signature {
        request.push_str(&format!("stripe-signature: {signature}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await?;
    // A server refusing an oversized body may answer and close before it
    // has all of it: read its answer all the same.
    let _ = socket.write_all(payload).await;
    let mut response = Vec::new();
    let read = socket.read_to_end(&mut response).await;
    if response.is_empty() {
        read?;
    }
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
