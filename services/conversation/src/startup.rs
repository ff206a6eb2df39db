//! Wiring: database, knowledge client, handlers, layers, serve.

use std::future::Future;
use std::net::SocketAddr;

use tonic::service::Routes;
use tower::ServiceBuilder;
use tp_context::RequireContextLayer;
use tp_proto::internal::conversation::v1::retention_service_server::RetentionServiceServer;
use tp_proto::internal::conversation::v1::usage_service_server::UsageServiceServer;

use crate::usage::UsageHandler;
use tp_proto::internal::knowledge::v1::retrieval_service_client::RetrievalServiceClient;
use tp_proto::v1::conversation_service_server::ConversationServiceServer;
use tp_server::{BoundService, HttpListener, Listener, Ops};
use tp_telemetry::{Metrics, RpcMethods, ServerTelemetryLayer};

use crate::config::{ConversationConfig, SCHEMA};
use crate::export::ExportStore;
use crate::handler::ConversationHandler;
use crate::reply::{ReplyPipeline, Responder};
use crate::retention::RetentionHandler;
use crate::search::MessageSearch;
use crate::store::ConversationStore;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/conversation");

/// Applies this service's migrations as the schema owner.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    tp_store::migrate(owner_url, SCHEMA, &MIGRATOR).await?;
    Ok(())
}

/// Applies this service's migrations up to `version` only, for tests of
/// what a later one does to data written before it.
pub async fn migrate_to(owner_url: &str, version: i64) -> anyhow::Result<()> {
    tp_store::migrate_to(owner_url, SCHEMA, &MIGRATOR, version).await?;
    Ok(())
}

/// The gRPC services this one serves (health and reflection aside).
const SERVICES: [&str; 3] = [
    tp_proto::v1::conversation_service_server::SERVICE_NAME,
    tp_proto::internal::conversation::v1::usage_service_server::SERVICE_NAME,
    tp_proto::internal::conversation::v1::retention_service_server::SERVICE_NAME,
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
    pub async fn build(config: &ConversationConfig) -> anyhow::Result<Self> {
        // A misconfigured provider stops start-up with a clear message,
        // rather than failing every request.
        let responder = match config.llm_client()? {
            None => Responder::Offline,
            Some(client) => Responder::Model {
                client,
                max_tokens: config.llm_max_tokens,
                context_tokens: config.llm_context_tokens,
            },
        };
        tracing::info!(provider = ?config.llm_provider, "responder configured");
        let metrics = Metrics::new("conversation");
        let methods = tp_server::served_methods(
            &[
                tp_proto::PUBLIC_DESCRIPTOR_SET,
                tp_proto::INTERNAL_DESCRIPTOR_SET,
            ],
            &SERVICES,
        )?;
        let pool = tp_store::connect_app(&config.database(), SCHEMA).await?;
        let knowledge = RetrievalServiceClient::new(tp_server::internal_channel(
            &config.knowledge_url,
            &metrics,
        )?);
        let db_timer = tp_server::db_timer(&metrics);
        let usage = UsageHandler::new(pool.clone()).with_timer(db_timer.clone());
        let ops_pool = pool.clone();
        let search = MessageSearch::new(pool.clone(), db_timer.clone());
        let (export_pool, export_timer) = (pool.clone(), db_timer.clone());
        let (retention_pool, retention_timer) = (pool.clone(), db_timer.clone());
        let handler = ConversationHandler::new(
            ConversationStore::new(pool).with_timer(db_timer),
            ReplyPipeline::new(
                knowledge,
                responder,
                usize::from(config.coach_word_cap),
                metrics,
            ),
            search,
            ExportStore::new(export_pool, export_timer),
            config.page_token_sealer()?,
        );

        let mut routes = Routes::builder();
        let health = tp_server::add_infrastructure(
            &mut routes,
            &[
                tp_proto::PUBLIC_DESCRIPTOR_SET,
                tp_proto::INTERNAL_DESCRIPTOR_SET,
            ],
        )?;
        routes
            .add_service(ConversationServiceServer::new(handler))
            .add_service(UsageServiceServer::new(usage))
            .add_service(RetentionServiceServer::new(RetentionHandler::new(
                retention_pool,
                retention_timer,
            )));
        health
            .set_serving::<ConversationServiceServer<ConversationHandler>>()
            .await;
        health
            .set_serving::<UsageServiceServer<UsageHandler>>()
            .await;
        health
            .set_serving::<RetentionServiceServer<RetentionHandler>>()
            .await;

        let listener = Listener::bind(config.listen_addr).await?;
        let http = HttpListener::bind(config.http_addr)
            .await
            .map_err(|e| anyhow::anyhow!("TP_HTTP_ADDR: {e}"))?;
        Ok(Self {
            bound: BoundService::new("conversation", listener, routes.routes()),
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

/// The `conversation` binary.
pub struct ConversationService;

impl tp_server::cli::ServiceMain for ConversationService {
    const NAME: &'static str = "conversation";
    type Config = ConversationConfig;

    async fn migrate(owner_url: &str) -> anyhow::Result<()> {
        migrate(owner_url).await
    }

    async fn serve(
        config: ConversationConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Application::build(&config).await?.run_until(shutdown).await
    }
}
