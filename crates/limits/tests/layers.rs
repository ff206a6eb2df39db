//! The two layers driven directly as tower services, with a dummy handler,
//! the way the gateway will stack them: the subject rides in the request
//! extensions and rejections come back as gRPC statuses in the headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame};
use std::sync::Mutex;
use tonic::Code;
use tonic_types::StatusExt;
use tower::{Layer, ServiceExt, service_fn};
use tp_limits::{
    ConfigError, LimitsConfig, Rate, RateLimitLayer, RateLimits, RejectionObserver,
    STREAM_RETRY_AFTER, Scope, StreamConcurrencyLayer, Subject,
};

const SEND_MESSAGE: &str = "/thoughtpartner.v1.ConversationService/SendMessage";
const LIST_CONVERSATIONS: &str = "/thoughtpartner.v1.ConversationService/ListConversations";

fn rate(per_second: f64, burst: u32) -> Rate {
    Rate { per_second, burst }
}

fn config(tenant: Rate, user: Rate) -> LimitsConfig {
    LimitsConfig {
        default: RateLimits { tenant, user },
        plans: HashMap::new(),
        max_streams_per_tenant: 2,
        lanes_per_tenant: 2,
    }
}

/// What the gateway will do: read the subject its auth step stored.
fn subject_of(request: &http::Request<&'static str>) -> Option<Subject> {
    request.extensions().get::<Subject>().cloned()
}

/// A call on `path`; the body says what the dummy handler should reply with.
fn request(
    path: &str,
    subject: Option<Subject>,
    body: &'static str,
) -> http::Request<&'static str> {
    let mut request = http::Request::new(body);
    *request.uri_mut() = path.parse().unwrap();
    if let Some(subject) = subject {
        request.extensions_mut().insert(subject);
    }
    request
}

/// Rejections an observer was told of: the limit and the tenant.
type Seen = Arc<Mutex<Vec<(Scope, String)>>>;

fn observer() -> (RejectionObserver, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let observer: RejectionObserver = Arc::new(move |scope, tenant: &str| {
        sink.lock().unwrap().push((scope, tenant.to_owned()));
    });
    (observer, seen)
}

fn seen(seen: &Seen) -> Vec<(Scope, String)> {
    seen.lock().unwrap().clone()
}

fn grpc_status<B>(response: &http::Response<B>) -> Option<tonic::Status> {
    tonic::Status::from_header_map(response.headers())
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .expect("a RetryInfo detail")
        .retry_delay
        .expect("a retry delay")
}

// ---- Request rates -------------------------------------------------------

/// A handler that counts its calls and answers "ok".
fn counting_handler(
    calls: &Arc<AtomicUsize>,
) -> impl tower::Service<
    http::Request<&'static str>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let calls = Arc::clone(calls);
    service_fn(move |_request: http::Request<&'static str>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new("ok".to_owned())) }
    })
}

#[tokio::test]
async fn a_user_over_their_rate_is_rejected_with_retry_info() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (observe, rejections) = observer();
    let layer = RateLimitLayer::new(&config(rate(1000.0, 100), rate(0.5, 2)), subject_of)
        .unwrap()
        .on_rejection(observe);
    let service = layer.layer(counting_handler(&calls));
    let alice = Subject::new("tenant-1", "alice", "free");

    for _ in 0..2 {
        let response = service
            .clone()
            .oneshot(request(LIST_CONVERSATIONS, Some(alice.clone()), ""))
            .await
            .unwrap();
        assert!(grpc_status(&response).is_none());
        assert_eq!(response.body(), "ok");
    }

    let response = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(alice.clone()), ""))
        .await
        .unwrap();
    let status = grpc_status(&response).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("per-user request rate limit exceeded"),
        "{}",
        status.message()
    );
    // Two tokens spent at 0.5/s: the next one is (just under) 2 s away.
    let delay = retry_delay(&status);
    assert!(
        delay > Duration::from_millis(1900) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    assert!(
        status
            .message()
            .ends_with(&format!("retry after {} ms", delay.as_millis())),
        "{}",
        status.message()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the handler ran for a rejected call"
    );
    // The observer hears of the one rejection: the user's limit, the tenant.
    assert_eq!(
        seen(&rejections),
        vec![(Scope::User, "tenant-1".to_owned())]
    );

    // Another user of the same tenant is not affected.
    let bob = Subject::new("tenant-1", "bob", "free");
    let response = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(bob), ""))
        .await
        .unwrap();
    assert!(grpc_status(&response).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_rejected_and_other_tenants_are_not() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (observe, rejections) = observer();
    let layer = RateLimitLayer::new(&config(rate(0.01, 2), rate(1000.0, 100)), subject_of)
        .unwrap()
        .on_rejection(observe);
    let service = layer.layer(counting_handler(&calls));

    for user in ["a", "b"] {
        let subject = Subject::new("tenant-1", user, "free");
        let response = service
            .clone()
            .oneshot(request(LIST_CONVERSATIONS, Some(subject), ""))
            .await
            .unwrap();
        assert!(grpc_status(&response).is_none());
    }
    let subject = Subject::new("tenant-1", "c", "free");
    let response = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(subject), ""))
        .await
        .unwrap();
    let status = grpc_status(&response).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .starts_with("per-tenant request rate limit exceeded"),
        "{}",
        status.message()
    );
    // 0.01/s: a token is about 100 s away.
    let delay = retry_delay(&status);
    assert!(
        delay > Duration::from_secs(99) && delay <= Duration::from_secs(100),
        "{delay:?}"
    );

    let other = Subject::new("tenant-2", "c", "free");
    let response = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(other), ""))
        .await
        .unwrap();
    assert!(grpc_status(&response).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        seen(&rejections),
        vec![(Scope::Tenant, "tenant-1".to_owned())]
    );
}

#[tokio::test]
async fn a_plan_gets_its_own_limits_and_unknown_plans_the_default() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut cfg = config(rate(1000.0, 100), rate(0.01, 1));
    cfg.plans.insert(
        "enterprise".to_owned(),
        RateLimits {
            tenant: rate(1000.0, 100),
            user: rate(0.01, 3),
        },
    );
    let service = RateLimitLayer::new(&cfg, subject_of)
        .unwrap()
        .layer(counting_handler(&calls));

    let admitted = |plan: &str| {
        let service = service.clone();
        let subject = Subject::new(format!("tenant-{plan}"), "u", plan);
        async move {
            let response = service
                .oneshot(request(LIST_CONVERSATIONS, Some(subject), ""))
                .await
                .unwrap();
            grpc_status(&response).is_none()
        }
    };
    for _ in 0..3 {
        assert!(admitted("enterprise").await);
    }
    assert!(!admitted("enterprise").await);
    assert!(admitted("no-such-plan").await);
    assert!(!admitted("no-such-plan").await);
}

#[tokio::test]
async fn calls_without_a_subject_are_not_limited() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RateLimitLayer::new(&config(rate(0.01, 1), rate(0.01, 1)), subject_of)
        .unwrap()
        .layer(counting_handler(&calls));
    for _ in 0..10 {
        let response = service
            .clone()
            .oneshot(request("/grpc.health.v1.Health/Check", None, ""))
            .await
            .unwrap();
        assert!(grpc_status(&response).is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[test]
fn a_nonsensical_config_does_not_build_a_layer() {
    let result = RateLimitLayer::new(&config(rate(-1.0, 1), rate(1.0, 1)), subject_of);
    assert!(matches!(result, Err(ConfigError::InvalidRate { .. })));
    let result = StreamConcurrencyLayer::new(
        &config(rate(1.0, 1), rate(1.0, 1)),
        ["thoughtpartner.v1.ConversationService/SendMessage"],
        subject_of,
    );
    assert!(matches!(result, Err(ConfigError::InvalidPath(_))));
}

// ---- Concurrent streams --------------------------------------------------

/// A reply body: empty, one chunk, or open until the test drops it.
#[derive(Default)]
enum TestBody {
    #[default]
    Empty,
    Chunk(Option<&'static [u8]>),
    Open,
}

impl Body for TestBody {
    type Data = &'static [u8];
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            TestBody::Empty => Poll::Ready(None),
            TestBody::Chunk(chunk) => Poll::Ready(chunk.take().map(|data| Ok(Frame::data(data)))),
            TestBody::Open => Poll::Pending,
        }
    }
}

/// A handler that returns at once with the body the request asks for.
fn streaming_handler() -> impl tower::Service<
    http::Request<&'static str>,
    Response = http::Response<TestBody>,
    Error = &'static str,
    Future = impl Send,
> + Clone {
    service_fn(|request: http::Request<&'static str>| async move {
        match *request.body() {
            "open" => Ok(http::Response::new(TestBody::Open)),
            "chunk" => Ok(http::Response::new(TestBody::Chunk(Some(b"hello")))),
            "fail" => Err("handler failed"),
            _ => Ok(http::Response::new(TestBody::Empty)),
        }
    })
}

/// The subject extractor as a plain function pointer, so the layer type can be named.
type Extract = fn(&http::Request<&'static str>) -> Option<Subject>;

/// Every open stream runs at once (as many lanes as the cap).
fn stream_layer(max: usize) -> StreamConcurrencyLayer<Extract> {
    laned_stream_layer(max, max)
}

fn laned_stream_layer(max: usize, lanes: usize) -> StreamConcurrencyLayer<Extract> {
    let mut cfg = config(rate(1.0, 1), rate(1.0, 1));
    cfg.max_streams_per_tenant = max;
    cfg.lanes_per_tenant = lanes;
    StreamConcurrencyLayer::new(&cfg, [SEND_MESSAGE], subject_of as Extract).unwrap()
}

fn tenant(name: &str) -> Option<Subject> {
    Some(Subject::new(name, "user", "free"))
}

#[tokio::test]
async fn the_third_open_stream_of_a_tenant_is_rejected_until_one_is_dropped() {
    let (observe, rejections) = observer();
    let layer = stream_layer(2).on_rejection(observe);
    let slots = Arc::clone(layer.slots());
    let service = layer.layer(streaming_handler());

    let a1 = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    let a2 = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    // Both handlers have returned, yet both calls still count.
    assert!(grpc_status(&a1).is_none() && grpc_status(&a2).is_none());
    assert!(a1.body().holds_slot() && a2.body().holds_slot());
    assert_eq!(slots.open("a"), 2);

    let a3 = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    let status = grpc_status(&a3).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("at most 2 concurrent streams"),
        "{}",
        status.message()
    );
    assert_eq!(retry_delay(&status), STREAM_RETRY_AFTER);
    assert_eq!(STREAM_RETRY_AFTER, Duration::from_secs(1));
    assert!(!a3.body().holds_slot());
    assert_eq!(slots.open("a"), 2);
    assert_eq!(seen(&rejections), vec![(Scope::Streams, "a".to_owned())]);

    // Another tenant is not held back by the first one's streams.
    let b1 = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("b"), "open"))
        .await
        .unwrap();
    assert!(grpc_status(&b1).is_none());
    assert_eq!(slots.open("b"), 1);

    // Methods that are not capped are not counted.
    let unary = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, tenant("a"), "open"))
        .await
        .unwrap();
    assert!(grpc_status(&unary).is_none());
    assert!(!unary.body().holds_slot());

    // The client goes away: its body is dropped and the slot is free again.
    drop(a1);
    assert_eq!(slots.open("a"), 1);
    let a4 = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    assert!(grpc_status(&a4).is_none());
    assert_eq!(slots.open("a"), 2);

    drop((a2, a4, b1));
    assert_eq!(slots.tenants_with_open_streams(), 0);
    // Admitted calls are not rejections.
    assert_eq!(seen(&rejections).len(), 1);
}

#[tokio::test]
async fn a_finished_body_frees_its_slot_while_still_alive() {
    let layer = stream_layer(1);
    let slots = Arc::clone(layer.slots());
    let service = layer.layer(streaming_handler());

    let response = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "chunk"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
    let data = frame.expect("a frame").unwrap().into_data().ok();
    assert_eq!(data, Some(&b"hello"[..]));
    // Mid-stream the slot is held.
    assert_eq!(slots.open("a"), 1);
    let rejected = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&rejected).map(|s| s.code()),
        Some(Code::ResourceExhausted)
    );

    let end = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
    assert!(end.is_none());
    assert!(!body.holds_slot());
    assert_eq!(slots.open("a"), 0);
    let admitted = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    assert!(grpc_status(&admitted).is_none());
    drop(body);
}

#[tokio::test]
async fn a_failed_handler_frees_its_slot() {
    let layer = stream_layer(1);
    let slots = Arc::clone(layer.slots());
    let service = layer.layer(streaming_handler());

    let result = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "fail"))
        .await;
    assert_eq!(result.err(), Some("handler failed"));
    assert_eq!(slots.open("a"), 0);
    let admitted = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), "open"))
        .await
        .unwrap();
    assert!(grpc_status(&admitted).is_none());
}

#[tokio::test]
async fn streams_without_a_subject_are_not_capped() {
    let layer = stream_layer(1);
    let slots = Arc::clone(layer.slots());
    let service = layer.layer(streaming_handler());
    let mut open = Vec::new();
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(request(SEND_MESSAGE, None, "open"))
            .await
            .unwrap();
        assert!(grpc_status(&response).is_none());
        open.push(response);
    }
    assert_eq!(slots.tenants_with_open_streams(), 0);
}

#[tokio::test]
async fn rejections_are_held_and_admitted_calls_are_not() {
    let calls = Arc::new(AtomicUsize::new(0));
    // A generous rate: the retry delay (under 10 ms) is far shorter than
    // the hold, which applies in full.
    let layer = RateLimitLayer::new(&config(rate(1000.0, 100), rate(200.0, 1)), subject_of)
        .unwrap()
        .hold_rejections(Duration::from_millis(60));
    let service = layer.layer(counting_handler(&calls));
    let bob = Subject::new("tenant-1", "bob", "free");
    let admitted = std::time::Instant::now();
    service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(bob.clone()), ""))
        .await
        .unwrap();
    assert!(
        admitted.elapsed() < Duration::from_millis(60),
        "admitted calls are not held"
    );

    let started = std::time::Instant::now();
    let response = service
        .clone()
        .oneshot(request(LIST_CONVERSATIONS, Some(bob), ""))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(60));
    let status = grpc_status(&response).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(retry_delay(&status) < Duration::from_millis(60));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tenants_stream_beyond_its_lanes_waits_for_one_of_its_own_streams_to_end() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = laned_stream_layer(3, 1);
    let slots = Arc::clone(layer.slots());
    let counted = Arc::clone(&calls);
    let service = layer.layer(service_fn(move |_request: http::Request<&'static str>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(TestBody::Chunk(Some(b"hello")))) }
    }));

    let first = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("a"), ""))
        .await
        .unwrap();
    assert!(first.body().holds_slot());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A's second stream is admitted (under the cap of 3) but waits for A's
    // only lane: the handler is not called yet.
    let second = tokio::spawn(
        service
            .clone()
            .oneshot(request(SEND_MESSAGE, tenant("a"), "")),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!second.is_finished());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(slots.open("a"), 2);

    // Tenant B has a lane of its own and runs at once.
    let b = service
        .clone()
        .oneshot(request(SEND_MESSAGE, tenant("b"), ""))
        .await
        .unwrap();
    assert!(grpc_status(&b).is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A's first stream ends: the waiting one runs.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the waiting stream runs once a lane is free")
        .unwrap()
        .unwrap();
    assert!(grpc_status(&second).is_none());
    assert!(second.body().holds_slot());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(slots.open("a"), 1);

    // A waiting call whose client goes away gives its slot back.
    let abandoned = tokio::spawn(
        service
            .clone()
            .oneshot(request(SEND_MESSAGE, tenant("a"), "")),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(slots.open("a"), 2);
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(slots.open("a"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    drop((second, b));
    assert_eq!(slots.tenants_with_open_streams(), 0);
}
