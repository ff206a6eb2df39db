//! Wiring: database, corpus, handlers, layers, serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use tonic::service::Routes;
use tower::ServiceBuilder;
use tp_context::RequireContextLayer;
use tp_proto::internal::knowledge::v1::retrieval_service_server::RetrievalServiceServer;
use tp_proto::v1::knowledge_service_server::KnowledgeServiceServer;
use tp_server::{BoundService, HttpListener, Listener, Ops};
use tp_telemetry::{Metrics, RpcMethods, ServerTelemetryLayer};

use crate::config::{KnowledgeConfig, SCHEMA};
use crate::corpus;
use crate::handlers::KnowledgeHandler;
use crate::retrieval::RetrievalHandler;
use crate::search::{Catalog, Searcher};
use crate::store::{KnowledgeStore, sync_corpus};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/knowledge");

/// Applies this service's migrations, then loads the built-in corpus, both
/// as the schema owner: the application role may read the corpus, never
/// write it.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    let entries = corpus::builtin()?;
    tp_store::migrate(owner_url, SCHEMA, &MIGRATOR).await?;
    let owner = PgPoolOptions::new()
        .max_connections(1)
        .connect(owner_url)
        .await?;
    sync_corpus(&owner, &entries).await?;
    owner.close().await;
    tracing::info!(entries = entries.len(), "corpus loaded");
    Ok(())
}

/// The gRPC services this one serves (health and reflection aside).
const SERVICES: [&str; 2] = [
    tp_proto::v1::knowledge_service_server::SERVICE_NAME,
    tp_proto::internal::knowledge::v1::retrieval_service_server::SERVICE_NAME,
];

/// A built, bound service, ready to serve.
pub struct Application {
    bound: BoundService,
    http: HttpListener,
    ops: Ops,
    metrics: Metrics,
    methods: RpcMethods,
}

impl Application {
    pub async fn build(config: &KnowledgeConfig) -> anyhow::Result<Self> {
        let metrics = Metrics::new("knowledge");
        let methods = tp_server::served_methods(
            &[
                tp_proto::PUBLIC_DESCRIPTOR_SET,
                tp_proto::INTERNAL_DESCRIPTOR_SET,
            ],
            &SERVICES,
        )?;
        let pool = tp_store::connect_app(&config.database(), SCHEMA).await?;
        let ops_pool = pool.clone();
        let catalog = Catalog::load(&pool).await?;
        anyhow::ensure!(
            catalog.frameworks().next().is_some(),
            "the corpus is empty: run `knowledge migrate` first"
        );
        tracing::info!(entries = catalog.len(), "corpus ready");
        let store = KnowledgeStore::new(pool).with_timer(tp_server::db_timer(&metrics));
        let searcher = Searcher::new(store, Arc::new(catalog));

        let mut routes = Routes::builder();
        let health = tp_server::add_infrastructure(
            &mut routes,
            &[
                tp_proto::PUBLIC_DESCRIPTOR_SET,
                tp_proto::INTERNAL_DESCRIPTOR_SET,
            ],
        )?;
        routes
            .add_service(KnowledgeServiceServer::new(KnowledgeHandler::new(
                searcher.clone(),
            )))
            .add_service(RetrievalServiceServer::new(RetrievalHandler::new(searcher)));
        health
            .set_serving::<KnowledgeServiceServer<KnowledgeHandler>>()
            .await;
        health
            .set_serving::<RetrievalServiceServer<RetrievalHandler>>()
            .await;

        let listener = Listener::bind(config.listen_addr).await?;
        let http = HttpListener::bind(config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("TP_HTTP_ADDR: {e}"))?;
        Ok(Self {
            bound: BoundService::new("knowledge", listener, routes.routes()),
            http,
            ops: Ops::new(metrics, health, &SERVICES).with_pool(SCHEMA, ops_pool),
            metrics,
            methods,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr()
    }

    /// Where the ops routes (`/metrics`, `/healthz`, `/readyz`) are served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let layers = ServiceBuilder::new()
            .layer(ServerTelemetryLayer::new(self.metrics, self.methods))
            .layer(tp_server::DeadlineLayer)
            .layer(RequireContextLayer)
            .map_request(tp_server::record_caller);
        let _http = self.http.spawn(self.ops, None);
        self.bound.serve(layers, shutdown).await?;
        Ok(())
    }
}

/// The `knowledge` binary.
pub struct KnowledgeService;

impl tp_server::cli::ServiceMain for KnowledgeService {
    const NAME: &'static str = "knowledge";
    type Config = KnowledgeConfig;

    async fn migrate(owner_url: &str) -> anyhow::Result<()> {
        migrate(owner_url).await
    }

    async fn serve(
        config: KnowledgeConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Application::build(&config).await?.run_until(shutdown).await
    }
}
