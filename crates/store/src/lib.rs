//! PostgreSQL access shared by all services: connecting as the restricted
//! application role, running a service's migrations, and the one helper that
//! opens a tenant-scoped transaction.
//!
//! Only this crate sets `app.tenant_id`. Row-level security policies on every
//! tenant-owned table read it back and fail closed when it is unset.

pub mod paging;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool, Postgres, Transaction};
use tp_context::TenantId;

/// The role every service connects as. Migrations grant it table privileges;
/// it is neither superuser, nor table owner, nor `BYPASSRLS`.
pub const APP_ROLE: &str = "tp_app";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("refusing to run as database role `{role}`: {reason}")]
    UnsafeRole { role: String, reason: String },
    #[error("schema `{0}` has no tables: run the service's `migrate` command first")]
    NotMigrated(String),
}

/// How a service reaches its database.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    /// A `postgres://` URL for the application role.
    pub url: String,
    pub max_connections: u32,
}

/// Connects as the application role and refuses a role that row-level
/// security would not bind: a superuser, a `BYPASSRLS` role, or the owner of
/// the service's schema or tables.
pub async fn connect_app(settings: &DatabaseSettings, schema: &str) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(&settings.url)?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    check_app_role(&pool, schema).await?;
    Ok(pool)
}

async fn check_app_role(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let (role, superuser, bypass_rls, owns_schema, owns_tables, tables): (
        String,
        bool,
        bool,
        bool,
        bool,
        i64,
    ) = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls,
                EXISTS (SELECT 1 FROM pg_namespace n WHERE n.nspname = $1 AND n.nspowner = r.oid),
                EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = $1 AND t.tableowner = r.rolname),
                (SELECT count(*) FROM pg_tables t WHERE t.schemaname = $1)
           FROM pg_roles r WHERE r.rolname = current_user",
    )
    .bind(schema)
    .fetch_one(pool)
    .await?;
    let unsafe_role = |reason: &str| StoreError::UnsafeRole {
        role: role.clone(),
        reason: reason.to_owned(),
    };
    if superuser {
        return Err(unsafe_role(
            "it is a superuser, which bypasses row-level security",
        ));
    }
    if bypass_rls {
        return Err(unsafe_role("it has BYPASSRLS"));
    }
    if owns_schema || owns_tables {
        return Err(unsafe_role(
            "it owns the service's schema or tables; connect as the application role",
        ));
    }
    if tables == 0 {
        return Err(StoreError::NotMigrated(schema.to_owned()));
    }
    Ok(())
}

/// Runs a service's migrations as the schema owner. The schema is created
/// first and used as the search path, so each service keeps its own
/// `_sqlx_migrations` history beside its tables.
pub async fn migrate(owner_url: &str, schema: &str, migrator: &Migrator) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(owner_url)?.options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    // Identifiers cannot be bound; the schema name is a compile-time constant
    // of the calling service, never user input.
    debug_assert!(schema.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
    pool.execute(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .await?;
    migrator.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Begins a transaction scoped to one tenant: `app.tenant_id` is set with
/// `set_config(..., true)`, so it ends with the transaction and can never
/// leak to the next user of the pooled connection.
///
/// Keep these transactions short: never hold one open while a reply streams.
pub async fn begin_tenant_tx(
    pool: &PgPool,
    tenant: TenantId,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    // BEGIN and the setting travel as one simple query: one round trip, not
    // two, on every request. The tenant id is a parsed UUID (hex digits and
    // hyphens only), so formatting it into the statement cannot inject SQL.
    let statement = format!(
        "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
        tenant.as_uuid().hyphenated()
    );
    Ok(pool.begin_with(sqlx::AssertSqlSafe(statement)).await?)
}
