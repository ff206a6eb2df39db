//! Wiring: database, corpus, handlers, layers, serve.

use std::future::Future;
use std::net::SocketAddr;

use sqlx::PgPool;
use tonic::service::Routes;
use tower::ServiceBuilder;
use tp_context::RequireContextLayer;
use tp_proto::internal::knowledge::v1::framework_service_server::FrameworkServiceServer;
use tp_server::{BoundService, Listener};
use tp_telemetry::ServerTelemetryLayer;

use crate::config::{KnowledgeConfig, SCHEMA};
use crate::frameworks::FrameworkHandler;
use crate::ranking::FrameworkEntry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/knowledge");

/// Applies this service's migrations as the schema owner.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    tp_store::migrate(owner_url, SCHEMA, &MIGRATOR).await?;
    Ok(())
}

/// A built, bound service, ready to serve.
pub struct Application {
    bound: BoundService,
}

impl Application {
    pub async fn build(config: &KnowledgeConfig) -> anyhow::Result<Self> {
        let pool = tp_store::connect_app(&config.database(), SCHEMA).await?;
        let corpus = load_corpus(&pool).await?;
        tracing::info!(frameworks = corpus.len(), "framework corpus loaded");

        let mut routes = Routes::builder();
        let health = tp_server::add_infrastructure(&mut routes, tp_proto::INTERNAL_DESCRIPTOR_SET)?;
        routes.add_service(FrameworkServiceServer::new(FrameworkHandler::new(corpus)));
        health
            .set_serving::<FrameworkServiceServer<FrameworkHandler>>()
            .await;

        let listener = Listener::bind(config.listen_addr).await?;
        Ok(Self {
            bound: BoundService::new("knowledge", listener, routes.routes()),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let layers = ServiceBuilder::new()
            .layer(ServerTelemetryLayer::new("knowledge"))
            .layer(RequireContextLayer);
        self.bound.serve(layers, shutdown).await?;
        Ok(())
    }
}

async fn load_corpus(pool: &PgPool) -> Result<Vec<FrameworkEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT framework_id, name, author, summary, application, diagnostic_question,
                source_url, keywords
           FROM knowledge.frameworks ORDER BY framework_id",
    )
    .fetch_all(pool)
    .await
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
