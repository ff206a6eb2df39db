//! PostgreSQL access shared by all services: connecting as the restricted
//! application role, running a service's migrations, and the one helper that
//! opens a tenant-scoped transaction.
//!
//! Only this crate sets `app.tenant_id`. Row-level security policies on every
//! tenant-owned table read it back and fail closed when it is unset.

pub mod paging;
mod pool;
pub mod sealed;

pub use pool::{Pool, PoolStatus, PooledConnection};

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool};
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

/// How long a call waits for a database connection before it is answered
/// `Unavailable`. Longer means the database is down or the pool is
/// saturated: a client is better served by a quick `Unavailable` and a
/// retry with its idempotency key than by a call that hangs for the
/// outage (measured in `tests/tests/database_restart.rs`: with 5 s, calls
/// during a 3 s restart hung until the database was back).
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects as the application role and refuses a role that row-level
/// security would not bind: a superuser, a `BYPASSRLS` role, or the owner of
/// the service's schema or tables.
pub async fn connect_app(settings: &DatabaseSettings, schema: &str) -> Result<Pool, StoreError> {
    let pool = Pool::new(&settings.url, settings.max_connections, ACQUIRE_TIMEOUT)?;
    check_app_role(&pool, schema).await?;
    Ok(pool)
}

async fn check_app_role(pool: &Pool, schema: &str) -> Result<(), StoreError> {
    let mut connection = pool.acquire().await?;
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
    .fetch_one(&mut *connection)
    .await?;
    connection.release();
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
    let pool = schema_pool(owner_url, schema).await?;
    migrator.run(&pool).await?;
    pool.close().await;
    Ok(())
}

/// Runs a service's migrations up to and including `version` only: for
/// tests of what a later migration does to the data written before it.
pub async fn migrate_to(
    owner_url: &str,
    schema: &str,
    migrator: &Migrator,
    version: i64,
) -> Result<(), StoreError> {
    let pool = schema_pool(owner_url, schema).await?;
    migrator.run_to(version, &pool).await?;
    pool.close().await;
    Ok(())
}

/// One connection as the schema owner, the schema created and on the
/// search path.
async fn schema_pool(owner_url: &str, schema: &str) -> Result<PgPool, StoreError> {
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
    Ok(pool)
}

/// A transaction on a pooled connection. It derefs to the connection, so
/// `&mut *tx` works as with a `sqlx::Transaction`; dropped without
/// [`commit`](Self::commit), it rolls back (in a task of its own, before
/// the connection goes back to the pool).
#[derive(Debug)]
pub struct Tx {
    connection: PooledConnection,
}

impl Tx {
    /// `statement` must open the transaction (it starts with BEGIN).
    async fn begin(pool: &Pool, statement: String) -> Result<Tx, sqlx::Error> {
        let mut connection = pool.acquire().await?;
        // Before BEGIN is sent: a call cancelled while it travels still
        // rolls back whatever it opened.
        connection.transaction_open();
        connection.execute(sqlx::AssertSqlSafe(statement)).await?;
        Ok(Tx { connection })
    }

    /// Commits; the connection goes straight back to the pool. When the
    /// COMMIT fails, the connection is rolled back and checked instead.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.connection.execute("COMMIT").await?;
        self.connection.release();
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

/// Begins a transaction scoped to one tenant: `app.tenant_id` is set with
/// `set_config(..., true)`, so it ends with the transaction and can never
/// leak to the next user of the pooled connection.
///
/// Keep these transactions short: never hold one open while a reply streams.
pub async fn begin_tenant_tx(pool: &Pool, tenant: TenantId) -> Result<Tx, StoreError> {
    // BEGIN and the setting travel as one simple query: one round trip, not
    // two, on every request. The tenant id is a parsed UUID (hex digits and
    // hyphens only), so formatting it into the statement cannot inject SQL.
    let statement = format!(
        "BEGIN; SELECT set_config('app.tenant_id', '{}', true)",
        tenant.as_uuid().hyphenated()
    );
    Ok(Tx::begin(pool, statement).await?)
}

/// Begins the one cross-tenant read the product makes: the retention sweep
/// listing the organisations that have a retention. It sets `app.sweep` to
/// `retention` for this transaction only, which a single policy on
/// `gateway.tenants` honours (SELECT of rows with a retention; migration
/// gateway/0007). No tenant is set, so every other table shows nothing.
pub async fn begin_retention_sweep_tx(pool: &Pool) -> Result<Tx, StoreError> {
    Ok(Tx::begin(
        pool,
        "BEGIN; SELECT set_config('app.sweep', 'retention', true)".to_owned(),
    )
    .await?)
}

/// What [`TxTimer`] reports of one transaction: the operation it served (a
/// code-chosen name from a small fixed set, never anything a caller sent),
/// how long it took from asking the pool for a connection to its end, and
/// why it failed, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRecord {
    pub operation: &'static str,
    pub duration: Duration,
    pub error_type: Option<&'static str>,
}

/// `error_type` of a transaction that ended without a commit: the operation
/// failed part-way (or chose to undo its work) and everything was rolled back.
pub const ROLLED_BACK: &str = "rollback";

/// A bounded name for a database error, for `error.type`: never the
/// message, which can quote the statement or the data.
pub fn error_type(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::PoolTimedOut => "pool_timeout",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "connection",
        sqlx::Error::Database(_) => "database",
        _ => "other",
    }
}

type TxObserver = Arc<dyn Fn(TxRecord) + Send + Sync>;

/// Times tenant transactions for a service's metrics, without this crate
/// knowing the metrics: the service hands in what to do with each
/// [`TxRecord`]. A disabled timer (the default) opens plain timed-nowhere
/// transactions, so stores built without one (benchmarks, tools) still work.
#[derive(Clone, Default)]
pub struct TxTimer {
    observer: Option<TxObserver>,
}

impl std::fmt::Debug for TxTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxTimer")
            .field("enabled", &self.observer.is_some())
            .finish()
    }
}

impl TxTimer {
    pub fn new(observer: impl Fn(TxRecord) + Send + Sync + 'static) -> Self {
        Self {
            observer: Some(Arc::new(observer)),
        }
    }

    /// A timer that reports nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    fn report(&self, operation: &'static str, started: Instant, error_type: Option<&'static str>) {
        if let Some(observer) = &self.observer {
            observer(TxRecord {
                operation,
                duration: started.elapsed(),
                error_type,
            });
        }
    }

    /// [`begin_tenant_tx`], timed as `operation` until the transaction is
    /// committed, closed or dropped. A failure to begin (no connection in
    /// time, the database down) is reported too: that is when a request
    /// waits longest.
    pub async fn begin(
        &self,
        pool: &Pool,
        tenant: TenantId,
        operation: &'static str,
    ) -> Result<TenantTx, StoreError> {
        let started = Instant::now();
        match begin_tenant_tx(pool, tenant).await {
            Ok(tx) => Ok(TenantTx {
                tx,
                timing: Timing {
                    timer: self.clone(),
                    operation,
                    started,
                    ended: None,
                },
            }),
            Err(e) => {
                let kind = match &e {
                    StoreError::Database(e) => error_type(e),
                    _ => "other",
                };
                self.report(operation, started, Some(kind));
                Err(e)
            }
        }
    }

    /// Times one statement run outside a tenant transaction (e.g. on the
    /// shared, non-tenant corpus) as `operation`.
    pub async fn time<T>(
        &self,
        operation: &'static str,
        statement: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        let started = Instant::now();
        let result = statement.await;
        self.report(operation, started, result.as_ref().err().map(error_type));
        result
    }
}

/// Reports its transaction when dropped, so every way a [`TenantTx`] ends
/// (commit, an early `?` return, a cancelled request) is counted once.
struct Timing {
    timer: TxTimer,
    operation: &'static str,
    started: Instant,
    /// `Some(error_type)` once the transaction ended on purpose; `None`
    /// means it was abandoned, i.e. rolled back.
    ended: Option<Option<&'static str>>,
}

impl Drop for Timing {
    fn drop(&mut self) {
        let error_type = self.ended.unwrap_or(Some(ROLLED_BACK));
        self.timer.report(self.operation, self.started, error_type);
    }
}

/// A tenant-scoped transaction timed by a [`TxTimer`]. It derefs to the
/// connection, so `&mut *tx` and `&mut tx` work as with a
/// `sqlx::Transaction`; dropping it rolls back (and is reported as
/// [`ROLLED_BACK`]).
pub struct TenantTx {
    tx: Tx,
    timing: Timing,
}

impl TenantTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let TenantTx { tx, mut timing } = self;
        let result = tx.commit().await;
        timing.ended = Some(result.as_ref().err().map(error_type));
        result
    }

    /// Ends a read-only transaction without waiting for a COMMIT: dropping
    /// it rolls back in a task of its own as the connection returns to the
    /// pool, so the caller saves a round trip and loses nothing. Reported
    /// as a success.
    pub fn close_read_only(self) {
        let TenantTx { tx, mut timing } = self;
        drop(tx);
        timing.ended = Some(None);
    }
}

impl std::ops::Deref for TenantTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for TenantTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn recording() -> (TxTimer, Arc<Mutex<Vec<TxRecord>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = records.clone();
        let timer = TxTimer::new(move |record| {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(record);
        });
        (timer, records)
    }

    #[tokio::test]
    async fn timed_statements_report_their_operation_and_failure_kind() {
        let (timer, records) = recording();
        let ok: Result<u8, sqlx::Error> = timer.time("search", async { Ok(1) }).await;
        assert_eq!(ok.ok(), Some(1));
        let failed: Result<u8, sqlx::Error> = timer
            .time("search", async { Err(sqlx::Error::PoolTimedOut) })
            .await;
        assert!(failed.is_err());
        let records = records.lock().unwrap().clone();
        let kinds: Vec<(&str, Option<&str>)> = records
            .iter()
            .map(|r| (r.operation, r.error_type))
            .collect();
        assert_eq!(
            kinds,
            vec![("search", None), ("search", Some("pool_timeout"))]
        );
    }

    #[tokio::test]
    async fn a_failed_begin_is_reported() {
        let (timer, records) = recording();
        // Nothing listens on port 1: the pool cannot hand out a connection.
        let pool = Pool::new(
            "postgres://tp_app@127.0.0.1:1/none",
            2,
            Duration::from_millis(200),
        )
        .expect("a pool");
        let tenant: TenantId = "7f0c0a36-2a8e-4d43-9c5a-5b0c2a0e9d10"
            .parse()
            .expect("a tenant id");
        assert!(timer.begin(&pool, tenant, "get_thing").await.is_err());
        let records = records.lock().unwrap().clone();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].operation, "get_thing");
        assert!(records[0].error_type.is_some());
    }

    #[test]
    fn database_errors_have_bounded_names() {
        assert_eq!(error_type(&sqlx::Error::PoolTimedOut), "pool_timeout");
        assert_eq!(error_type(&sqlx::Error::RowNotFound), "other");
        assert_eq!(
            error_type(&sqlx::Error::Protocol("anything at all".into())),
            "connection"
        );
    }
}
