//! Test harness: a fresh database per test and the three real services on
//! random ports, wired to each other over gRPC exactly as in production.
//!
//! Needs a PostgreSQL server: `TP_TEST_PG_ADDR` (host:port, default
//! `127.0.0.1:31433`) reachable as the superuser `postgres` without a
//! password. `deploy/local/test` starts one.

use std::net::SocketAddr;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tp_auth::{Claims, mint_hs256};
use tp_context::{Role, TenantId};
use tp_loadgen::transcript::{SeedTurn, append_turns};
use tp_proto::v1 as pb;
use uuid::Uuid;

pub mod fake_provider;
pub mod fake_stripe;
pub mod load;
pub mod processes;
pub mod raw;
pub mod relevance;

pub use tp_proto;

/// The HS256 secret the test gateway verifies with.
pub const JWT_SECRET: &str = "test-secret-at-least-16-bytes";

fn pg_addr() -> String {
    std::env::var("TP_TEST_PG_ADDR").unwrap_or_else(|_| "127.0.0.1:31433".to_owned())
}

/// A database of its own for one test, with the roles the product uses.
pub struct TestDatabase {
    pub name: String,
    /// The superuser: bypasses row-level security, for asserting on raw rows.
    pub admin_url: String,
    /// The schema owner, who runs migrations.
    pub owner_url: String,
    /// The application role the services connect as.
    pub app_url: String,
}

impl TestDatabase {
    pub async fn create() -> anyhow::Result<Self> {
        let addr = pg_addr();
        let server_url = format!("postgres://postgres@{addr}/postgres");
        let server = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server_url)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the test PostgreSQL at {addr} ({e}); run the suite with deploy/local/test"
                )
            })?;
        // Roles are cluster-wide; tests running in parallel may race to create them.
        server
            .execute(
                "DO $$ BEGIN
                   CREATE ROLE tp_owner LOGIN;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
            )
            .await?;
        server
            .execute(
                "DO $$ BEGIN
                   CREATE ROLE tp_app LOGIN NOSUPERUSER NOBYPASSRLS;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;",
            )
            .await?;
        let name = format!("tp_test_{}", Uuid::new_v4().simple());
        server
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {name} OWNER tp_owner"
            )))
            .await?;
        server.close().await;
        Ok(Self {
            admin_url: format!("postgres://postgres@{addr}/{name}"),
            owner_url: format!("postgres://tp_owner@{addr}/{name}"),
            app_url: format!("postgres://tp_app@{addr}/{name}"),
            name,
        })
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        tp_gateway::migrate(&self.owner_url).await?;
        tp_conversation::migrate(&self.owner_url).await?;
        tp_knowledge::migrate(&self.owner_url).await?;
        Ok(())
    }

    /// One connection as the role in `url`, its session scoped to
    /// `tenant` (as an operator working by hand would): row-level security
    /// then admits that tenant's rows only, for the owner role too.
    pub async fn tenant_session(
        url: &str,
        tenant: TenantId,
    ) -> anyhow::Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        let mut conn = Self::pool(url).await?.acquire().await?;
        set_session_tenant(&mut conn, tenant).await?;
        Ok(conn)
    }

    pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect_with(PgConnectOptions::from_str(url)?)
            .await?)
    }
}

/// The key the test stack seals page tokens with (every conversation
/// service of a test shares it, as replicas would).
pub const PAGE_TOKEN_KEY: &str = "test-page-token-key-0123456789abcdef";

/// The one browser origin the test stack's gateway lets call it over
/// gRPC-Web (CORS).
pub const WEB_TEST_ORIGIN: &str = "https://app.example.test";

/// The membership cache's time to live in the test stack's gateway.
pub const GATEWAY_MEMBERSHIP_CACHE_TTL_SECS: u64 = 30;

fn gateway_config(
    db: &TestDatabase,
    conversation_addr: SocketAddr,
    knowledge_addr: SocketAddr,
    conversation_http_addr: SocketAddr,
    membership_cache_ttl_secs: u64,
) -> tp_gateway::GatewayConfig {
    tp_gateway::GatewayConfig {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        conversation_url: format!("http://{conversation_addr}"),
        knowledge_url: format!("http://{knowledge_addr}"),
        database_url: db.app_url.clone(),
        database_listen_url: None,
        database_max_connections: 4,
        membership_cache_ttl_secs,
        jwt_hs256_secret: Some(JWT_SECRET.to_owned()),
        jwt_jwks_url: None,
        jwt_issuer: None,
        jwt_audience: None,
        // Generous, so suites that send hundreds of messages run unthrottled;
        // tests of the limits run a gateway with tight ones.
        rate_tenant_per_second: 1000.0,
        rate_tenant_burst: 2000,
        rate_user_per_second: 500.0,
        rate_user_burst: 1000,
        max_streams_per_tenant: 16,
        max_in_flight: 512,
        stream_lanes_per_tenant: None,
        rate_plans: String::new(),
        rate_hold_ms: 250,
        seat_price_minor: 3000,
        billing_currency: "eur".to_owned(),
        billing_provider: tp_gateway::BillingProviderKind::Local,
        stripe_secret_key: None,
        stripe_seat_price_id: None,
        stripe_webhook_secret: None,
        stripe_api_base: None,
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_tenant_cap: tp_telemetry::metrics::DEFAULT_TENANT_CAP,
        // Short, so a test sees its calls in GetSloStatus within a moment;
        // a sample is an in-process encode and one loopback scrape.
        slo_sample_interval_ms: 200,
        slo_scrape_urls: format!("http://{conversation_http_addr}/metrics"),
        web_allowed_origins: vec![WEB_TEST_ORIGIN.to_owned()],
        // Often, so the retention test sees a pass within a second or two.
        retention_interval_secs: 1,
        retention_batch: 2,
    }
}

/// `message` with `authorization: Bearer <token>`, for clients built
/// without the [`Bearer`] interceptor.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}

/// A conversation client for the gateway at `addr`.
pub async fn conversations_via(
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<ConversationClient> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(
        pb::conversation_service_client::ConversationServiceClient::with_interceptor(
            channel,
            Bearer(Some(format!("Bearer {token}").parse()?)),
        ),
    )
}

/// Scopes a test connection's session (not a transaction) to `tenant`.
pub async fn set_session_tenant(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
) -> anyhow::Result<()> {
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(tenant.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// The three services, running.
pub struct TestApp {
    pub db: TestDatabase,
    pub gateway_addr: SocketAddr,
    pub conversation_addr: SocketAddr,
    pub knowledge_addr: SocketAddr,
    /// Each service's ops port (`/metrics`, `/healthz`, `/readyz`).
    pub gateway_http_addr: SocketAddr,
    pub conversation_http_addr: SocketAddr,
    pub knowledge_http_addr: SocketAddr,
    api: GatewayApi,
    shutdown: watch::Sender<bool>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn spawn_service(
    name: &'static str,
    run: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = run.await {
            panic!("{name} stopped with an error: {e:#}");
        }
    });
}

impl TestApp {
    /// A fresh database, migrated, and the three services on random ports.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with(true, None).await
    }

    /// Like [`TestApp::spawn`], but the knowledge service never starts: its
    /// address refuses connections, as a crashed service's would.
    pub async fn spawn_without_knowledge() -> anyhow::Result<Self> {
        Self::spawn_with(false, None).await
    }

    /// Like [`TestApp::spawn`], with replies written by a model provider
    /// (a test server) speaking `wire` at `base_url`.
    pub async fn spawn_with_model(
        wire: fake_provider::Wire,
        base_url: &str,
    ) -> anyhow::Result<Self> {
        let provider = match wire {
            fake_provider::Wire::OpenAi => tp_conversation::LlmProvider::Openai,
            fake_provider::Wire::Anthropic => tp_conversation::LlmProvider::Anthropic,
        };
        Self::spawn_with(true, Some((provider, base_url.to_owned()))).await
    }

    async fn spawn_with(
        knowledge_up: bool,
        model: Option<(tp_conversation::LlmProvider, String)>,
    ) -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        db.migrate().await?;
        let any_port: SocketAddr = "127.0.0.1:0".parse()?;
        let (shutdown, stop) = watch::channel(false);

        let knowledge = tp_knowledge::Application::build(&tp_knowledge::KnowledgeConfig {
            listen_addr: any_port,
            http_addr: any_port,
            database_url: db.app_url.clone(),
            database_max_connections: 2,
        })
        .await?;
        let knowledge_addr = knowledge.local_addr();
        let knowledge_http_addr = knowledge.http_addr();
        if knowledge_up {
            spawn_service("knowledge", knowledge.run_until(stopped(stop.clone())));
        } else {
            // Dropping the bound application closes its port.
            drop(knowledge);
        }

        let conversation =
            tp_conversation::Application::build(&tp_conversation::ConversationConfig {
                listen_addr: any_port,
                http_addr: any_port,
                knowledge_url: format!("http://{knowledge_addr}"),
                database_url: db.app_url.clone(),
                database_max_connections: 4,
                llm_provider: model
                    .as_ref()
                    .map_or(tp_conversation::LlmProvider::Offline, |(provider, _)| {
                        *provider
                    }),
                llm_api_key: model.as_ref().map(|_| "sk-test-key".to_owned()),
                llm_model: model.as_ref().map(|_| "test-model".to_owned()),
                llm_base_url: model.map(|(_, url)| url),
                llm_first_byte_timeout_ms: 5_000,
                llm_max_tokens: 300,
                llm_context_tokens: 2_000,
                llm_breaker_failures: 5,
                llm_breaker_open_ms: 30_000,
                page_token_key: Some(PAGE_TOKEN_KEY.to_owned()),
                coach_word_cap: 180,
            })
            .await?;
        let conversation_addr = conversation.local_addr();
        let conversation_http_addr = conversation.http_addr();
        spawn_service(
            "conversation",
            conversation.run_until(stopped(stop.clone())),
        );

        let gateway = tp_gateway::Application::build(&gateway_config(
            &db,
            conversation_addr,
            knowledge_addr,
            conversation_http_addr,
            GATEWAY_MEMBERSHIP_CACHE_TTL_SECS,
        ))
        .await?;
        let gateway_addr = gateway.local_addr();
        let gateway_http_addr = gateway.http_addr();
        spawn_service("gateway", gateway.run_until(stopped(stop)));

        Ok(Self {
            db,
            gateway_addr,
            conversation_addr,
            knowledge_addr,
            gateway_http_addr,
            conversation_http_addr,
            knowledge_http_addr,
            api: GatewayApi::new(gateway_addr, JWT_SECRET),
            shutdown,
        })
    }

    /// Another gateway in front of the same services and database, as a
    /// second replica would be.
    pub async fn spawn_gateway(
        &self,
        membership_cache_ttl_secs: u64,
    ) -> anyhow::Result<SocketAddr> {
        self.spawn_gateway_with(|config| {
            config.membership_cache_ttl_secs = membership_cache_ttl_secs;
        })
        .await
    }

    /// Another gateway, configured like the stack's and then by `adjust`.
    pub async fn spawn_gateway_with(
        &self,
        adjust: impl FnOnce(&mut tp_gateway::GatewayConfig),
    ) -> anyhow::Result<SocketAddr> {
        let mut config = gateway_config(
            &self.db,
            self.conversation_addr,
            self.knowledge_addr,
            self.conversation_http_addr,
            GATEWAY_MEMBERSHIP_CACHE_TTL_SECS,
        );
        adjust(&mut config);
        let gateway = tp_gateway::Application::build(&config).await?;
        let addr = gateway.local_addr();
        spawn_service(
            "gateway",
            gateway.run_until(stopped(self.shutdown.subscribe())),
        );
        Ok(addr)
    }

    /// Like [`TestApp::spawn_gateway_with`], also returning where the
    /// gateway serves HTTP: the ops routes, and webhooks when Stripe is
    /// configured.
    pub async fn spawn_gateway_with_http(
        &self,
        adjust: impl FnOnce(&mut tp_gateway::GatewayConfig),
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let mut config = gateway_config(
            &self.db,
            self.conversation_addr,
            self.knowledge_addr,
            self.conversation_http_addr,
            GATEWAY_MEMBERSHIP_CACHE_TTL_SECS,
        );
        adjust(&mut config);
        let gateway = tp_gateway::Application::build(&config).await?;
        let addrs = (gateway.local_addr(), gateway.http_addr());
        spawn_service(
            "gateway",
            gateway.run_until(stopped(self.shutdown.subscribe())),
        );
        Ok(addrs)
    }

    /// Counts rows as the superuser, which row-level security does not bind.
    pub async fn count_rows(&self, table: &str) -> anyhow::Result<i64> {
        self.db.count_rows(table).await
    }
}

impl TestDatabase {
    /// Adds user turns to the end of a conversation in bulk, as the schema owner under
    /// the tenant (for tests that need many messages; SendMessage would
    /// take minutes and test nothing new).
    pub async fn insert_user_turns(
        &self,
        tenant: TenantId,
        conversation_id: &str,
        contents: &[String],
    ) -> anyhow::Result<()> {
        let owner = TestDatabase::pool(&self.owner_url).await?;
        let mut tx = owner.begin().await?;
        sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        let turns: Vec<SeedTurn> = contents
            .iter()
            .map(|content| SeedTurn {
                message_id: Uuid::new_v4(),
                role: "user",
                content,
                reply_to: None,
            })
            .collect();
        append_turns(
            &mut tx,
            tenant.as_uuid(),
            conversation_id.parse::<Uuid>()?,
            &turns,
        )
        .await?;
        tx.commit().await?;
        owner.close().await;
        Ok(())
    }

    /// Counts rows as the superuser, which row-level security does not bind.
    pub async fn count_rows(&self, table: &str) -> anyhow::Result<i64> {
        let pool = TestDatabase::pool(&self.admin_url).await?;
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await?;
        pool.close().await;
        Ok(count)
    }
}

/// The public API of a running gateway, and tokens it accepts (HS256
/// with the secret it was started with).
pub struct GatewayApi {
    pub addr: SocketAddr,
    secret: String,
}

impl GatewayApi {
    pub fn new(addr: SocketAddr, secret: &str) -> Self {
        Self {
            addr,
            secret: secret.to_owned(),
        }
    }

    pub fn token(&self, sub: &str, tenant: Option<TenantId>, role: Role) -> String {
        mint_hs256(
            self.secret.as_bytes(),
            &Claims::expiring_in(sub, tenant, role, 300),
        )
        .expect("HS256 signing cannot fail")
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?)
    }

    /// Any raw `authorization` value, including broken ones.
    pub async fn conversations_with_auth(
        &self,
        authorization: Option<&str>,
    ) -> anyhow::Result<ConversationClient> {
        let bearer = Bearer(authorization.map(str::parse).transpose()?);
        Ok(
            pb::conversation_service_client::ConversationServiceClient::with_interceptor(
                self.channel().await?,
                bearer,
            ),
        )
    }

    pub async fn conversations(&self, token: &str) -> anyhow::Result<ConversationClient> {
        conversations_via(self.addr, token).await
    }

    pub async fn members(&self, token: &str) -> anyhow::Result<MemberClient> {
        Ok(
            pb::member_service_client::MemberServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    pub async fn knowledge(&self, token: &str) -> anyhow::Result<KnowledgeClient> {
        Ok(
            pb::knowledge_service_client::KnowledgeServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    pub async fn settings(&self, token: &str) -> anyhow::Result<SettingsClient> {
        Ok(
            pb::settings_service_client::SettingsServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    pub async fn audit(&self, token: &str) -> anyhow::Result<AuditClient> {
        Ok(
            pb::audit_service_client::AuditServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    pub async fn subscriptions(&self, token: &str) -> anyhow::Result<SubscriptionClient> {
        Ok(
            pb::subscription_service_client::SubscriptionServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    pub async fn tenants(&self, token: &str) -> anyhow::Result<TenantClient> {
        Ok(
            pb::tenant_admin_service_client::TenantAdminServiceClient::with_interceptor(
                self.channel().await?,
                Bearer(Some(format!("Bearer {token}").parse()?)),
            ),
        )
    }

    /// Creates a tenant through the API as an operator; `admin` becomes its admin.
    pub async fn create_tenant(
        &self,
        name: &str,
        seats: i32,
        admin: &str,
    ) -> anyhow::Result<TenantId> {
        let operator = self.token("operator-1", None, Role::Operator);
        let tenant = self
            .tenants(&operator)
            .await?
            .create_tenant(pb::CreateTenantRequest {
                display_name: name.to_owned(),
                seats,
                admin_user_id: admin.to_owned(),
            })
            .await?
            .into_inner()
            .tenant
            .ok_or_else(|| anyhow::anyhow!("CreateTenant returned no tenant"))?;
        Ok(tenant.tenant_id.parse()?)
    }

    /// A tenant with an admin and one member; returns the member's token.
    pub async fn tenant_with_member(
        &self,
        name: &str,
        member: &str,
    ) -> anyhow::Result<(TenantId, String)> {
        let admin = format!("{member}-admin");
        let tenant = self.create_tenant(name, 5, &admin).await?;
        let token = self.add_member(tenant, &admin, member).await?;
        Ok((tenant, token))
    }

    /// `admin` adds `member` to `tenant`; returns the member's token.
    pub async fn add_member(
        &self,
        tenant: TenantId,
        admin: &str,
        member: &str,
    ) -> anyhow::Result<String> {
        self.members(&self.token(admin, Some(tenant), Role::Admin))
            .await?
            .add_member(pb::AddMemberRequest {
                user_id: member.to_owned(),
                role: pb::MemberRole::Member.into(),
            })
            .await?;
        Ok(self.token(member, Some(tenant), Role::Member))
    }
}

/// The stack's public API: `app.token(…)`, `app.conversations(…)` and the
/// tenant helpers are the gateway's.
impl std::ops::Deref for TestApp {
    type Target = GatewayApi;

    fn deref(&self) -> &GatewayApi {
        &self.api
    }
}

/// An HTTP/1.1 answer, read whole.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

/// `GET path` from the HTTP listener at `addr` (an ops port), over a
/// connection of its own.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {head:?}"))?;
    let content_type = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-type")
            .then(|| value.trim().to_owned())
    });
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(HttpReply {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| anyhow::anyhow!("a broken chunk"))?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| anyhow::anyhow!("a short chunk"))?;
        body.push_str(chunk);
        rest = after.get(size + 2..).unwrap_or_default();
    }
}

/// Sends a fixed `authorization` value (or none) with every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type ConversationClient =
    pb::conversation_service_client::ConversationServiceClient<InterceptedService<Channel, Bearer>>;
pub type KnowledgeClient =
    pb::knowledge_service_client::KnowledgeServiceClient<InterceptedService<Channel, Bearer>>;
pub type MemberClient =
    pb::member_service_client::MemberServiceClient<InterceptedService<Channel, Bearer>>;
pub type SubscriptionClient =
    pb::subscription_service_client::SubscriptionServiceClient<InterceptedService<Channel, Bearer>>;
pub type TenantClient =
    pb::tenant_admin_service_client::TenantAdminServiceClient<InterceptedService<Channel, Bearer>>;
pub type SettingsClient =
    pb::settings_service_client::SettingsServiceClient<InterceptedService<Channel, Bearer>>;
pub type AuditClient =
    pb::audit_service_client::AuditServiceClient<InterceptedService<Channel, Bearer>>;

/// The events of one `SendMessage` call.
#[derive(Debug)]
pub struct Exchange {
    pub deltas: Vec<String>,
    pub completed: pb::MessageCompleted,
}

impl Exchange {
    pub fn assistant(&self) -> &pb::Message {
        self.completed
            .assistant_message
            .as_ref()
            .expect("completed carries the assistant message")
    }

    pub fn user(&self) -> &pb::Message {
        self.completed
            .user_message
            .as_ref()
            .expect("completed carries the user message")
    }
}

/// Sends a message and drains the stream; fails unless the stream ends with
/// exactly one `completed` event after the deltas.
pub async fn send(
    client: &mut ConversationClient,
    conversation_id: &str,
    content: &str,
    idempotency_key: &str,
) -> Result<Exchange, tonic::Status> {
    send_request(
        client,
        tonic::Request::new(pb::SendMessageRequest {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
            ..Default::default()
        }),
    )
    .await
}

/// [`send`] with a request of the caller's (a deadline, metadata).
pub async fn send_request(
    client: &mut ConversationClient,
    request: tonic::Request<pb::SendMessageRequest>,
) -> Result<Exchange, tonic::Status> {
    drain_reply(client.send_message(request).await?.into_inner()).await
}

/// EditMessage, drained as [`send`] drains SendMessage.
pub async fn edit(
    client: &mut ConversationClient,
    message_id: &str,
    content: &str,
    idempotency_key: &str,
) -> Result<Exchange, tonic::Status> {
    let request = pb::EditMessageRequest {
        message_id: message_id.to_owned(),
        content: content.to_owned(),
        idempotency_key: idempotency_key.to_owned(),
    };
    drain_reply(client.edit_message(request).await?.into_inner()).await
}

/// RegenerateReply, drained as [`send`] drains SendMessage.
pub async fn regenerate(
    client: &mut ConversationClient,
    message_id: &str,
    idempotency_key: &str,
) -> Result<Exchange, tonic::Status> {
    let request = pb::RegenerateReplyRequest {
        message_id: message_id.to_owned(),
        idempotency_key: idempotency_key.to_owned(),
    };
    drain_reply(client.regenerate_reply(request).await?.into_inner()).await
}

/// Reads a reply stream to its end; fails unless it ends with exactly one
/// `completed` event after the deltas.
async fn drain_reply<T: tp_proto::ReplyEvent>(
    mut stream: tonic::Streaming<T>,
) -> Result<Exchange, tonic::Status> {
    let mut deltas = Vec::new();
    let mut completed = None;
    while let Some(event) = stream.message().await? {
        match event.into_part() {
            tp_proto::ReplyPart::Delta(text) => {
                assert!(
                    completed.is_none(),
                    "a delta arrived after the completed event"
                );
                deltas.push(text);
            }
            tp_proto::ReplyPart::Completed(done) => {
                assert!(completed.is_none(), "two completed events");
                completed = Some(*done);
            }
            tp_proto::ReplyPart::Empty => panic!("an event with no payload"),
        }
    }
    let completed = completed
        .ok_or_else(|| tonic::Status::internal("stream ended without a completed event"))?;
    Ok(Exchange { deltas, completed })
}

/// Every message of a conversation's active branch, oldest first, page by
/// page: what ListMessages shows the member.
pub async fn transcript(
    client: &mut ConversationClient,
    conversation_id: &str,
) -> Result<Vec<pb::Message>, tonic::Status> {
    let (mut messages, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                conversation_id: conversation_id.to_owned(),
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        messages.extend(page.messages);
        if page.next_page_token.is_empty() {
            return Ok(messages);
        }
        page_token = page.next_page_token;
    }
}

/// Creates a conversation and returns it.
pub async fn new_conversation(
    client: &mut ConversationClient,
    title: &str,
) -> anyhow::Result<pb::Conversation> {
    client
        .create_conversation(pb::CreateConversationRequest {
            title: title.to_owned(),
        })
        .await?
        .into_inner()
        .conversation
        .ok_or_else(|| anyhow::anyhow!("CreateConversation returned no conversation"))
}
