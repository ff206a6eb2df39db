//! The parts of a gRPC server that every service shares, so each service's
//! start-up only names its own handlers and layers.

mod channel;
pub mod cli;
mod deadline;
pub mod ops;

pub use channel::{BadServiceUrl, Http2Channel};
pub use deadline::{Deadline, DeadlineBody, DeadlineLayer, parse_grpc_timeout};

pub use ops::{AbortOnDrop, HttpFallback, HttpListener, HttpResponse, Ops, served_methods};

use std::net::SocketAddr;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("could not build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("could not read a descriptor set: {0}")]
    Descriptor(#[from] prost::DecodeError),
    #[error("no descriptor describes the service `{0}`")]
    UnknownService(String),
    #[error(transparent)]
    BadUrl(#[from] BadServiceUrl),
}

/// A bound listener: bind first, so tests can ask for port 0 and learn the
/// real address before serving.
pub struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The plain listener, for a server that accepts by itself (the ops
    /// HTTP port).
    pub(crate) fn into_tcp(self) -> TcpListener {
        self.listener
    }

    /// The accepted connections, for `Server::serve_with_incoming_shutdown`,
    /// with `TCP_NODELAY`: without it, small gRPC frames wait on delayed
    /// ACKs and every hop costs tens of milliseconds.
    pub fn incoming(self) -> TcpIncoming {
        TcpIncoming::from(self.listener).with_nodelay(Some(true))
    }
}

/// A service ready to serve: its routes and a bound listener.
pub struct BoundService {
    name: &'static str,
    listener: Listener,
    routes: Routes,
    accept_http1: bool,
}

impl BoundService {
    pub fn new(name: &'static str, listener: Listener, routes: Routes) -> Self {
        Self {
            name,
            listener,
            routes,
            accept_http1: false,
        }
    }

    /// Accepts HTTP/1.1 connections beside HTTP/2 (the gateway, for
    /// browsers' gRPC-Web); internal services speak HTTP/2 only.
    pub fn accept_http1(mut self) -> Self {
        self.accept_http1 = true;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves the routes behind `layers` (the service's tower stack: telemetry
    /// first, then authentication or context) until `shutdown` resolves,
    /// then drains in-flight calls.
    pub async fn serve<L>(
        self,
        layers: L,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError>
    where
        L: Layer<Routes> + Clone,
        L::Service:
            Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send + 'static,
        <L::Service as Service<http::Request<Body>>>::Error:
            Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        tracing::info!(service = self.name, addr = %self.local_addr(), "serving");
        Server::builder()
            .accept_http1(self.accept_http1)
            .layer(layers)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(self.listener.incoming(), shutdown)
            .await?;
        Ok(())
    }
}

/// Adds `grpc.health.v1.Health` and server reflection to a service's routes.
/// `descriptors` are the encoded descriptor sets reflection describes (the
/// gateway passes only the public one). Returns the health reporter so the
/// service can mark its own gRPC services as serving.
pub fn add_infrastructure(
    routes: &mut RoutesBuilder,
    descriptors: &[&'static [u8]],
) -> Result<tonic_health::server::HealthReporter, ServerError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = descriptors
        .iter()
        .fold(
            tonic_reflection::server::Builder::configure(),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
        .build_v1()?;
    routes.add_service(health).add_service(reflection);
    Ok(reporter)
}

/// What a service calls another of ours through: see [`internal_channel`].
pub type InternalChannel = tp_telemetry::TraceClient<Http2Channel>;

/// A channel to another of our services that carries the trace context and
/// measures each call into `metrics` (`rpc.client.call.duration`).
/// Lazy: the other service may start later, and calls reconnect on their own.
pub fn internal_channel(
    url: &str,
    metrics: &tp_telemetry::Metrics,
) -> Result<InternalChannel, ServerError> {
    let channel = Http2Channel::lazy(url)?;
    Ok(tp_telemetry::ClientTraceLayer::new(*metrics).layer(channel))
}

/// A transaction timer for a service's stores that records each
/// transaction into `metrics` (`db.client.operation.duration`), so
/// `tp-store` needs no metrics of its own.
pub fn db_timer(metrics: &tp_telemetry::Metrics) -> tp_store::TxTimer {
    if !tp_telemetry::enabled() {
        return tp_store::TxTimer::disabled();
    }
    let metrics = *metrics;
    tp_store::TxTimer::new(move |record| {
        metrics.db_operation(record.operation, record.duration, record.error_type);
    })
}

/// Copies the caller's tenant and member from the [`tp_context::RequestContext`]
/// (put there by `RequireContextLayer`) into the call's canonical record;
/// for `ServiceBuilder::map_request`, right after that layer.
pub fn record_caller<B>(request: http::Request<B>) -> http::Request<B> {
    if let (Some(ctx), Some(record)) = (
        request.extensions().get::<tp_context::RequestContext>(),
        tp_telemetry::CallRecord::current(),
    ) {
        record.set_caller(ctx.tenant_id, &ctx.user_id);
    }
    request
}

/// Resolves on Ctrl-C or SIGTERM, for graceful shutdown.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}
