//! Wiring: database, token verifier, conversation client, handlers, layers, serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::service::Routes;
use tower::ServiceBuilder;
use tp_auth::{AuthLayer, Hs256Verifier};
use tp_proto::v1::conversation_service_client::ConversationServiceClient;
use tp_proto::v1::conversation_service_server::ConversationServiceServer;
use tp_proto::v1::knowledge_service_client::KnowledgeServiceClient;
use tp_proto::v1::knowledge_service_server::KnowledgeServiceServer;
use tp_proto::v1::member_service_server::MemberServiceServer;
use tp_proto::v1::tenant_admin_service_server::TenantAdminServiceServer;
use tp_server::{BoundService, Listener};
use tp_telemetry::ServerTelemetryLayer;

use crate::access::Access;
use crate::config::{GatewayConfig, SCHEMA};
use crate::conversations::ConversationGateway;
use crate::knowledge::KnowledgeGateway;
use crate::members::MemberAdmin;
use crate::membership::{ListenerGuard, Membership};
use crate::tenants::TenantAdmin;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/gateway");

/// Applies this service's migrations as the schema owner.
pub async fn migrate(owner_url: &str) -> anyhow::Result<()> {
    tp_store::migrate(owner_url, SCHEMA, &MIGRATOR).await?;
    Ok(())
}

/// Tokens shorter than this are trivially guessable.
const MIN_SECRET_BYTES: usize = 16;

/// A built, bound service, ready to serve.
pub struct Application {
    bound: BoundService,
    auth: AuthLayer,
    /// Keeps the membership cache current; stopped with the service.
    membership_listener: Option<ListenerGuard>,
}

impl Application {
    pub async fn build(config: &GatewayConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.jwt_hs256_secret.len() >= MIN_SECRET_BYTES,
            "TP_JWT_HS256_SECRET must be at least {MIN_SECRET_BYTES} bytes"
        );
        let pool = tp_store::connect_app(&config.database(), SCHEMA).await?;
        let (membership, membership_listener) = if config.membership_cache_ttl_secs == 0 {
            (Membership::uncached(pool.clone()), None)
        } else {
            let (membership, listener) = Membership::cached(
                pool.clone(),
                Duration::from_secs(config.membership_cache_ttl_secs),
                config.database_url.clone(),
            )
            .await;
            (membership, Some(listener))
        };
        let access = Access::new(membership);
        let conversation =
            ConversationServiceClient::new(tp_server::internal_channel(&config.conversation_url)?);
        let knowledge =
            KnowledgeServiceClient::new(tp_server::internal_channel(&config.knowledge_url)?);

        let mut routes = Routes::builder();
        let health =
            tp_server::add_infrastructure(&mut routes, &[tp_proto::PUBLIC_DESCRIPTOR_SET])?;
        routes
            .add_service(ConversationServiceServer::new(ConversationGateway::new(
                access.clone(),
                conversation,
            )))
            .add_service(KnowledgeServiceServer::new(KnowledgeGateway::new(
                access.clone(),
                knowledge,
            )))
            .add_service(TenantAdminServiceServer::new(TenantAdmin::new(
                pool.clone(),
            )))
            .add_service(MemberServiceServer::new(MemberAdmin::new(pool, access)));
        health
            .set_serving::<ConversationServiceServer<ConversationGateway>>()
            .await;
        health
            .set_serving::<KnowledgeServiceServer<KnowledgeGateway>>()
            .await;
        health
            .set_serving::<TenantAdminServiceServer<TenantAdmin>>()
            .await;
        health
            .set_serving::<MemberServiceServer<MemberAdmin>>()
            .await;

        let auth = AuthLayer::new(Arc::new(Hs256Verifier::new(
            config.jwt_hs256_secret.as_bytes(),
        )));
        let listener = Listener::bind(config.listen_addr).await?;
        Ok(Self {
            bound: BoundService::new("gateway", listener, routes.routes()),
            auth,
            membership_listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr()
    }

    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        // Telemetry outermost, so rejected calls are traced and counted too.
        let layers = ServiceBuilder::new()
            .layer(ServerTelemetryLayer::new("gateway"))
            .layer(self.auth);
        let _listener = self.membership_listener;
        self.bound.serve(layers, shutdown).await?;
        Ok(())
    }
}

/// The `gateway` binary.
pub struct GatewayService;

impl tp_server::cli::ServiceMain for GatewayService {
    const NAME: &'static str = "gateway";
    type Config = GatewayConfig;

    async fn migrate(owner_url: &str) -> anyhow::Result<()> {
        migrate(owner_url).await
    }

    async fn serve(
        config: GatewayConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        Application::build(&config).await?.run_until(shutdown).await
    }
}
