//! The ops port: one HTTP/1.1 listener per service (`TP_HTTP_ADDR`) with
//! `GET /metrics` (OpenMetrics text, trace-id exemplars included),
//! `GET /healthz` (the process is up) and `GET /readyz` (it can serve: its
//! database answers and its gRPC health says SERVING). A service may route
//! other paths on the same listener (the gateway's Stripe webhooks).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_server::Health as _;
use tonic_health::server::{HealthReporter, HealthService};
use tp_store::Pool;
use tp_telemetry::{Metrics, OPENMETRICS_CONTENT_TYPE, PoolSample, RpcMethods};

use crate::{Listener, ServerError};

/// An HTTP answer on the ops port.
pub type HttpResponse = Response<Full<Bytes>>;

/// Routes the paths the ops port does not serve itself.
pub type HttpFallback = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = HttpResponse> + Send>> + Send + Sync,
>;

/// How long a client may take to send its headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the database may take to answer `SELECT 1` before the service
/// is reported not ready.
const DB_READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Methods every server serves besides its own: health and reflection
/// (reflection is a bidirectional stream).
const INFRASTRUCTURE_METHODS: [(&str, bool); 4] = [
    ("grpc.health.v1.Health/Check", false),
    ("grpc.health.v1.Health/Watch", true),
    (
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        true,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        true,
    ),
];

/// The methods of `services` (fully-qualified service names), read from
/// the encoded descriptor sets, plus health and reflection: what the
/// telemetry layer labels `rpc.method` with (anything else is `_OTHER`).
pub fn served_methods(descriptors: &[&[u8]], services: &[&str]) -> Result<RpcMethods, ServerError> {
    let wanted: HashSet<&str> = services.iter().copied().collect();
    let mut methods: Vec<(String, bool)> = INFRASTRUCTURE_METHODS
        .iter()
        .map(|(name, streaming)| ((*name).to_owned(), *streaming))
        .collect();
    let mut found = HashSet::new();
    for set in descriptors {
        let set = prost_types::FileDescriptorSet::decode(*set)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let full = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                if !wanted.contains(full.as_str()) || !found.insert(full.clone()) {
                    continue;
                }
                for method in &service.method {
                    methods.push((
                        format!("{full}/{}", method.name()),
                        method.server_streaming(),
                    ));
                }
            }
        }
    }
    if let Some(missing) = services.iter().find(|s| !found.contains(**s)) {
        return Err(ServerError::UnknownService((*missing).to_owned()));
    }
    Ok(RpcMethods::new(methods))
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;

/// What the ops port reports on.
#[derive(Clone)]
pub struct Ops {
    metrics: Metrics,
    health: HealthReporter,
    services: Vec<&'static str>,
    pools: Vec<(&'static str, Pool)>,
}

fn text(status: StatusCode, body: &str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl Ops {
    /// `services`: the gRPC services that must report SERVING for the
    /// service to be ready.
    pub fn new(metrics: Metrics, health: HealthReporter, services: &[&'static str]) -> Self {
        Self {
            metrics,
            health,
            services: services.to_vec(),
            pools: Vec::new(),
        }
    }

    /// A database pool that must answer for the service to be ready, and
    /// whose occupancy is sampled on every scrape.
    pub fn with_pool(mut self, name: &'static str, pool: Pool) -> Self {
        self.pools.push((name, pool));
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Why the service cannot serve now, if it cannot.
    async fn not_ready(&self) -> Option<String> {
        for (name, pool) in &self.pools {
            let ping = async {
                let mut connection = pool.acquire().await?;
                sqlx::query_scalar::<_, i32>("SELECT 1")
                    .fetch_one(&mut *connection)
                    .await?;
                connection.release();
                Ok::<(), sqlx::Error>(())
            };
            match tokio::time::timeout(DB_READY_TIMEOUT, ping).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(format!("database pool {name}: {e}")),
                Err(_) => {
                    return Some(format!(
                        "database pool {name}: no answer within {} ms",
                        DB_READY_TIMEOUT.as_millis()
                    ));
                }
            }
        }
        let health = HealthService::from_health_reporter(self.health.clone());
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            let checked = health
                .check(tonic::Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                }))
                .await;
            let serving = checked.is_ok_and(|r| r.into_inner().status == SERVING);
            if !serving {
                let name = if service.is_empty() {
                    "server"
                } else {
                    service
                };
                return Some(format!("gRPC health of {name} is not SERVING"));
            }
        }
        None
    }

    fn scrape(&self) -> HttpResponse {
        for (name, pool) in &self.pools {
            let status = pool.status();
            let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
            let (size, idle) = (count(status.size), count(status.idle));
            let idle = idle.min(size);
            self.metrics.db_pool(
                name,
                PoolSample {
                    used: size - idle,
                    idle,
                    max: count(status.max_size),
                },
            );
        }
        match self.metrics.encode() {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
                );
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "metrics encoding failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics could not be encoded",
                )
            }
        }
    }

    /// The answer for an ops path, `None` for any other path.
    pub async fn route<B>(&self, request: &Request<B>) -> Option<HttpResponse> {
        let path = request.uri().path();
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return None;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
        }
        Some(match path {
            "/metrics" => {
                // Encoding every series (tens of MB with 1,000 tenants) is
                // milliseconds of CPU: on a blocking thread, so a service
                // on one worker thread keeps serving calls meanwhile.
                let ops = self.clone();
                tokio::task::spawn_blocking(move || ops.scrape())
                    .await
                    .unwrap_or_else(|_| {
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "encoding the metrics failed",
                        )
                    })
            }
            "/healthz" => text(StatusCode::OK, "ok"),
            _ => match self.not_ready().await {
                None => text(StatusCode::OK, "ready"),
                Some(reason) => {
                    tracing::warn!(%reason, "not ready");
                    text(StatusCode::SERVICE_UNAVAILABLE, &reason)
                }
            },
        })
    }
}

/// A bound ops listener; bound at build time so tests can ask for port 0.
pub struct HttpListener(Listener);

impl HttpListener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        Listener::bind(addr).await.map(Self)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }

    /// Serves the ops routes, and `fallback` for every other path (404
    /// without one), on a task stopped when the returned guard drops.
    pub fn spawn(self, ops: Ops, fallback: Option<HttpFallback>) -> AbortOnDrop {
        tracing::info!(addr = %self.local_addr(), "serving ops HTTP (/metrics, /healthz, /readyz)");
        AbortOnDrop(tokio::spawn(serve(
            self.0.into_tcp(),
            Arc::new(ops),
            fallback,
        )))
    }
}

/// A background task that stops when its owner does.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve(listener: TcpListener, ops: Arc<Ops>, fallback: Option<HttpFallback>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "ops listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ops = ops.clone();
        let fallback = fallback.clone();
        connections.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let ops = ops.clone();
                let fallback = fallback.clone();
                async move {
                    if let Some(response) = ops.route(&request).await {
                        return Ok::<_, Infallible>(response);
                    }
                    Ok(match fallback {
                        Some(fallback) => fallback(request).await,
                        None => text(StatusCode::NOT_FOUND, "not found"),
                    })
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "ops connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tonic_health::ServingStatus;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("a valid request")
    }

    async fn body(response: HttpResponse) -> String {
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("a full body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn health_metrics_and_readiness_without_a_database() {
        let health = HealthReporter::new();
        health
            .set_service_status(
                "thoughtpartner.v1.ConversationService",
                ServingStatus::Serving,
            )
            .await;
        let ops = Ops::new(
            Metrics::new("conversation"),
            health.clone(),
            &["thoughtpartner.v1.ConversationService"],
        );
        assert!(ops.route(&get("/webhooks/stripe")).await.is_none());
        let alive = ops.route(&get("/healthz")).await.expect("routed");
        assert_eq!(alive.status(), StatusCode::OK);
        let ready = ops.route(&get("/readyz")).await.expect("routed");
        assert_eq!(ready.status(), StatusCode::OK);

        let metrics = ops.route(&get("/metrics")).await.expect("routed");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        // Families without a series yet are left out; the end marker is not.
        assert_eq!(body(metrics).await, "# EOF\n");

        let post = Request::post("/metrics").body(()).expect("a valid request");
        let refused = ops.route(&post).await.expect("routed");
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);

        // A service that stops serving is not ready.
        health
            .set_service_status(
                "thoughtpartner.v1.ConversationService",
                ServingStatus::NotServing,
            )
            .await;
        let not_ready = ops.route(&get("/readyz")).await.expect("routed");
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let reason = body(not_ready).await;
        assert!(reason.contains("ConversationService"), "{reason}");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_not_ready_and_pools_are_sampled() {
        // Nothing listens on port 1: every connection attempt is refused.
        let pool = Pool::new(
            "postgres://tp_app@127.0.0.1:1/none",
            3,
            Duration::from_millis(500),
        )
        .expect("a pool");
        let ops = Ops::new(Metrics::new("knowledge"), HealthReporter::new(), &[])
            .with_pool("knowledge", pool);
        let started = std::time::Instant::now();
        let not_ready = ops.route(&get("/readyz")).await.expect("routed");
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_secs(3));
        let reason = body(not_ready).await;
        assert!(reason.starts_with("database pool knowledge"), "{reason}");
        // Still alive, and still scrapeable.
        let alive = ops.route(&get("/healthz")).await.expect("routed");
        assert_eq!(alive.status(), StatusCode::OK);
        let text = body(ops.route(&get("/metrics")).await.expect("routed")).await;
        assert!(
            text.contains(
                r#"db_client_connection_max{db_client_connection_pool_name="knowledge"} 3"#
            ),
            "{text}"
        );
    }

    #[test]
    fn served_methods_come_from_the_descriptors() {
        let methods = served_methods(
            &[tp_proto::PUBLIC_DESCRIPTOR_SET],
            &["thoughtpartner.v1.ConversationService"],
        )
        .expect("described");
        let (name, streaming) =
            methods.lookup("/thoughtpartner.v1.ConversationService/SendMessage");
        assert_eq!(name, "thoughtpartner.v1.ConversationService/SendMessage");
        assert!(streaming);
        assert!(
            !methods
                .lookup("/thoughtpartner.v1.ConversationService/ListMessages")
                .1
        );
        // Served by others, not by this server.
        assert_eq!(
            methods
                .lookup("/thoughtpartner.v1.KnowledgeService/Search")
                .0,
            "_OTHER"
        );
        assert_eq!(
            methods.lookup("/grpc.health.v1.Health/Check").0,
            "grpc.health.v1.Health/Check"
        );
        assert!(matches!(
            served_methods(
                &[tp_proto::PUBLIC_DESCRIPTOR_SET],
                &["thoughtpartner.v1.Nope"]
            ),
            Err(ServerError::UnknownService(_))
        ));
    }
}
