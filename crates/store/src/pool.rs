//! The services' connection pool: sqlx connections kept by `deadpool`,
//! returned without a round trip when their user ended cleanly.
//!
//! Why not sqlx's own pool: it pings every connection it takes back (a
//! `Sync` and a wait for `ReadyForQuery`), with no option to turn that off,
//! because it cannot know whether the connection's user ended cleanly.
//! That was one round trip more on every transaction: three per
//! SendMessage that the pgbench baseline does not pay (BENCHMARKS,
//! session 12). Here the user says so: a [`PooledConnection`] is released
//! as it is only when [`PooledConnection::release`] (or a committed
//! [`crate::TenantTx`]) marked it clean. Every other ending — an error, an
//! early return, a cancelled request, an open transaction — rolls back and
//! checks the connection in a task of its own before it goes back, as
//! sqlx does, so no lock of an abandoned transaction outlives its request.

use std::str::FromStr;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// How long a pooled connection may sit idle before it is checked with a
/// ping on its way out of the pool: one in steady use is known to be
/// alive, one that sat idle (e.g. across a database restart) may not be.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connections older than this are closed when next checked out, so a
/// long-lived service's backends are renewed (sqlx's default lifetime).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Connections idle this long are closed by the reaper.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const REAP_EVERY: Duration = Duration::from_secs(60);

/// What the pool holds: a connection and what its last user left behind.
#[derive(Debug)]
pub struct PgSlot {
    raw: PgConnection,
    /// When it last came back to the pool.
    idle_since: Instant,
    /// Its clean-up on return failed: the next checkout discards it.
    broken: bool,
}

#[derive(Debug)]
pub struct PgManager {
    options: PgConnectOptions,
}

impl managed::Manager for PgManager {
    type Type = PgSlot;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgSlot, sqlx::Error> {
        Ok(PgSlot {
            raw: PgConnection::connect_with(&self.options).await?,
            idle_since: Instant::now(),
            broken: false,
        })
    }

    async fn recycle(&self, slot: &mut PgSlot, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if slot.broken {
            return Err(RecycleError::message("its clean-up on return failed"));
        }
        if metrics.age() > MAX_LIFETIME {
            return Err(RecycleError::message("past its lifetime"));
        }
        if slot.idle_since.elapsed() > PING_IF_IDLE_FOR {
            slot.raw.ping().await?;
        }
        Ok(())
    }
}

/// How a checked-out connection goes back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Return {
    /// Its user ended cleanly: straight back, no round trip.
    Clean,
    /// A transaction is open on it: rolled back first.
    RollBack,
    /// Its user did not say (an error, a cancelled request): checked with
    /// a ping first, which also drains anything a cancelled statement left.
    Check,
}

/// A pool of PostgreSQL connections. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Pool {
    inner: managed::Pool<PgManager>,
}

/// How full a [`Pool`] is, for the pool-saturation metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    pub max_size: usize,
    /// Connections open, checked out or idle.
    pub size: usize,
    pub idle: usize,
    /// Calls waiting for a connection.
    pub waiting: usize,
}

impl Pool {
    /// A pool of at most `max_connections` to `url`. No connection is
    /// opened until one is needed. `acquire_timeout` bounds the wait for a
    /// connection, opening one, and checking one.
    pub fn new(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?;
        let max_size = usize::try_from(max_connections.max(1)).unwrap_or(usize::MAX);
        let inner = managed::Pool::builder(PgManager { options })
            .max_size(max_size)
            // The connection returned last is handed out first: it is the
            // one known to be alive, and the others can age out idle.
            .queue_mode(managed::QueueMode::Lifo)
            .timeouts(Timeouts {
                wait: Some(acquire_timeout),
                create: Some(acquire_timeout),
                recycle: Some(acquire_timeout),
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap_idle(inner.weak()));
        }
        Ok(Self { inner })
    }

    /// A connection, waiting at most the pool's acquire timeout. Errors are
    /// sqlx's, as its pool would report them (`PoolTimedOut`, `PoolClosed`,
    /// or why a new connection could not be opened).
    pub async fn acquire(&self) -> Result<PooledConnection, sqlx::Error> {
        let object = self.inner.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            PoolError::Closed => sqlx::Error::PoolClosed,
            other => sqlx::Error::Configuration(other.to_string().into()),
        })?;
        Ok(PooledConnection {
            object: Some(object),
            on_return: Return::Check,
        })
    }

    pub fn status(&self) -> PoolStatus {
        let status = self.inner.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            idle: status.available,
            waiting: status.waiting,
        }
    }

    /// Closes the pool: checked-out connections close when returned.
    pub fn close(&self) {
        self.inner.close();
    }
}

async fn reap_idle(pool: managed::WeakPool<PgManager>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        pool.retain(|slot, _| slot.idle_since.elapsed() < IDLE_TIMEOUT);
    }
}

/// A connection checked out of a [`Pool`]; derefs to the `PgConnection`.
/// Dropped without [`release`](Self::release), it is checked before it
/// goes back (see the module's docs).
pub struct PooledConnection {
    object: Option<Object<PgManager>>,
    on_return: Return,
}

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConnection")
            .field("on_return", &self.on_return)
            .finish()
    }
}

impl PooledConnection {
    /// Returns the connection as it is: its user finished every statement
    /// and left no transaction open.
    pub fn release(mut self) {
        self.on_return = Return::Clean;
    }

    /// A transaction was opened on it (or its COMMIT was not confirmed):
    /// roll back if it goes back without [`release`](Self::release).
    pub(crate) fn transaction_open(&mut self) {
        self.on_return = Return::RollBack;
    }

    fn slot(&mut self) -> &mut PgSlot {
        self.object
            .as_mut()
            .expect("a PooledConnection holds its object until dropped")
    }
}

impl std::ops::Deref for PooledConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self
            .object
            .as_ref()
            .expect("a PooledConnection holds its object until dropped")
            .raw
    }
}

impl std::ops::DerefMut for PooledConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.slot().raw
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(mut object) = self.object.take() else {
            return;
        };
        if self.on_return == Return::Clean {
            object.idle_since = Instant::now();
            return;
        }
        let on_return = self.on_return;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left to clean up on: never hand it out again.
            object.broken = true;
            return;
        };
        // The clean-up is a round trip, so it runs in a task of its own;
        // the connection goes back to the pool when it is done.
        runtime.spawn(async move {
            let result = match on_return {
                Return::RollBack => object.raw.execute("ROLLBACK").await.map(drop),
                _ => object.raw.ping().await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "a returned database connection failed its clean-up; discarding it");
                object.broken = true;
            }
            object.idle_since = Instant::now();
        });
    }
}
