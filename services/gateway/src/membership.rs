//! Who is a member of which tenant, with what role, and where the tenant
//! stands: read from `gateway.members` and `gateway.tenants` under the
//! tenant's row-level security, and cached for a few seconds so that a
//! public call does not cost a database transaction.
//!
//! A cached membership must never outlive its removal by more than it takes
//! Postgres to deliver a notification. Triggers on `gateway.members` and
//! `gateway.tenants` notify `gateway_membership` on every update or delete
//! (payload `<tenant>/<user>` or `<tenant>`; see the gateway migrations);
//! every gateway listens and forgets that entry. While the listener is disconnected, changes
//! could be missed, so the cache is bypassed and emptied. The time to live
//! bounds the damage of anything this reasoning missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::task::JoinHandle;
use tp_context::{Role, TenantId};
use tp_store::Pool;
use tp_store::TxTimer;

use crate::policy::{Standing, TenantStatus};

/// The channel the `members_changed` trigger notifies.
pub const CHANNEL: &str = "gateway_membership";

/// Upper bound on cached memberships; the least used are evicted first.
const MAX_ENTRIES: u64 = 100_000;

/// How long to wait before reconnecting a failed listener.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] tp_store::StoreError),
    #[error("stored role is not valid: {0}")]
    InvalidRole(String),
    #[error(transparent)]
    InvalidStatus(#[from] crate::policy::UnknownStatus),
}

/// What the gateway knows about a caller's tenant and membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The tenant's standing; `None` when the tenant does not exist.
    pub standing: Option<Standing>,
    /// The caller's role; `None` when they are not a member.
    pub role: Option<Role>,
}

struct MembershipCache {
    // Keyed by authenticated callers' tenants and users: foldhash, not
    // SipHash (both are looked up on every call).
    roles: moka::sync::Cache<(TenantId, String), Role, foldhash::fast::RandomState>,
    standings: moka::sync::Cache<TenantId, Standing, foldhash::fast::RandomState>,
    /// Bumped by every invalidation. A lookup that read the database before
    /// an invalidation it did not see must not fill the cache afterwards.
    generation: AtomicU64,
    /// True only while the listener is connected and listening.
    listening: AtomicBool,
}

impl MembershipCache {
    fn new(ttl: Duration) -> Self {
        Self {
            roles: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            standings: moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    fn forget(&self, tenant: TenantId, user_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.roles.invalidate(&(tenant, user_id.to_owned()));
    }

    fn forget_tenant(&self, tenant: TenantId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.standings.invalidate(&tenant);
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.roles.invalidate_all();
        self.standings.invalidate_all();
    }

    /// Applies one notification payload: `<tenant uuid>/<user id>` (a
    /// membership changed) or `<tenant uuid>` (the tenant changed).
    fn apply(&self, payload: &str) {
        match payload.split_once('/') {
            Some((tenant, user)) => {
                if let Ok(tenant) = tenant.parse::<TenantId>() {
                    return self.forget(tenant, user);
                }
            }
            None => {
                if let Ok(tenant) = payload.parse::<TenantId>() {
                    return self.forget_tenant(tenant);
                }
            }
        }
        tracing::warn!("unreadable membership notification; forgetting every membership");
        self.forget_all();
    }
}

/// Membership lookups, cached when a time to live is configured.
#[derive(Clone)]
pub struct Membership {
    pool: Pool,
    cache: Option<Arc<MembershipCache>>,
    timer: TxTimer,
}

/// `db.operation.name` of a membership read (every call the cache misses).
pub const LOOKUP_MEMBERSHIP: &str = "lookup_membership";

impl Membership {
    /// Lookups that always read the database.
    pub fn uncached(pool: Pool) -> Self {
        Self {
            pool,
            cache: None,
            timer: TxTimer::disabled(),
        }
    }

    /// Reports how long each read of the database took (the metrics).
    pub fn with_timer(mut self, timer: TxTimer) -> Self {
        self.timer = timer;
        self
    }

    /// Lookups cached for `ttl`, kept current by a listener on `listen_url`
    /// (its own connection, so the pool keeps all of its). The first
    /// connection is made here, so the cache is live once this returns
    /// (unless it failed: then it is bypassed until a retry succeeds). The
    /// listener runs until the returned guard is dropped.
    pub async fn cached(pool: Pool, ttl: Duration, listen_url: String) -> (Self, ListenerGuard) {
        let cache = Arc::new(MembershipCache::new(ttl));
        let first = listen(&listen_url)
            .await
            .inspect_err(|error| {
                tracing::warn!(%error, "membership listener cannot connect; cache bypassed");
            })
            .ok();
        let listener = ListenerGuard(tokio::spawn(keep_current(cache.clone(), listen_url, first)));
        (
            Self {
                pool,
                cache: Some(cache),
                timer: TxTimer::disabled(),
            },
            listener,
        )
    }

    /// The tenant's standing and the role `user_id` holds in it.
    pub async fn lookup(&self, tenant: TenantId, user_id: &str) -> Result<Found, MembershipError> {
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|c| c.listening.load(Ordering::Acquire))
        else {
            return self.stored(tenant, user_id).await;
        };
        let key = (tenant, user_id.to_owned());
        if let (Some(role), Some(standing)) = (cache.roles.get(&key), cache.standings.get(&tenant))
        {
            return Ok(Found {
                standing: Some(standing),
                role: Some(role),
            });
        }
        let generation = cache.generation.load(Ordering::Acquire);
        let found = self.stored(tenant, user_id).await?;
        // Only what exists is cached: someone just added must be let in at
        // once, so absence is always read from the database.
        if cache.listening.load(Ordering::Acquire)
            && cache.generation.load(Ordering::Acquire) == generation
        {
            if let Some(standing) = &found.standing {
                cache.standings.insert(tenant, standing.clone());
            }
            if let Some(role) = found.role {
                cache.roles.insert(key, role);
            }
        }
        Ok(found)
    }

    /// Forgets a membership this gateway just changed, so that its own next
    /// call sees the change without waiting for the notification.
    pub fn forget(&self, tenant: TenantId, user_id: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(tenant, user_id);
        }
    }

    /// Forgets a tenant's standing this gateway just changed.
    pub fn forget_tenant(&self, tenant: TenantId) {
        if let Some(cache) = &self.cache {
            cache.forget_tenant(tenant);
        }
    }

    async fn stored(&self, tenant: TenantId, user_id: &str) -> Result<Found, MembershipError> {
        let mut tx = self
            .timer
            .begin(&self.pool, tenant, LOOKUP_MEMBERSHIP)
            .await?;
        let row: Option<(String, String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT t.status, t.status_reason, t.plan, t.admins_can_search_all_transcripts, m.role
               FROM gateway.tenants t
               LEFT JOIN gateway.members m ON m.tenant_id = t.tenant_id AND m.user_id = $2
              WHERE t.tenant_id = $1",
        )
        .bind(tenant.as_uuid())
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some((status, reason, plan, admins_can_search_all_transcripts, role)) = row else {
            return Ok(Found {
                standing: None,
                role: None,
            });
        };
        Ok(Found {
            standing: Some(Standing {
                status: status.parse::<TenantStatus>()?,
                reason,
                plan,
                admins_can_search_all_transcripts,
            }),
            role: role
                .map(|r| {
                    r.parse::<Role>()
                        .map_err(|_| MembershipError::InvalidRole(r))
                })
                .transpose()?,
        })
    }
}

/// Stops the membership listener when dropped.
pub struct ListenerGuard(JoinHandle<()>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens for membership changes until aborted, reconnecting after
/// failures; the cache is in use only while the listener is listening.
async fn keep_current(cache: Arc<MembershipCache>, url: String, mut connected: Option<PgListener>) {
    loop {
        let listener = match connected.take() {
            Some(listener) => Ok(listener),
            None => listen(&url).await,
        };
        match listener {
            Ok(mut listener) => {
                // Anything may have changed while nobody was listening.
                cache.forget_all();
                cache.listening.store(true, Ordering::Release);
                tracing::debug!(channel = CHANNEL, "membership cache listening");
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => cache.apply(notification.payload()),
                        // Reconnected: notifications sent meanwhile are lost.
                        Ok(None) => cache.forget_all(),
                        Err(error) => {
                            cache.listening.store(false, Ordering::Release);
                            cache.forget_all();
                            tracing::warn!(%error, "membership listener lost; cache bypassed until it reconnects");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "membership listener cannot connect; cache bypassed");
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn listen(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::from(uuid::Uuid::new_v4())
    }

    #[test]
    fn a_notification_forgets_exactly_its_member() {
        let cache = MembershipCache::new(Duration::from_secs(60));
        let (a, b) = (tenant(), tenant());
        cache.roles.insert((a, "ann".into()), Role::Admin);
        cache.roles.insert((a, "bob".into()), Role::Member);
        cache.roles.insert((b, "ann".into()), Role::Member);
        let before = cache.generation.load(Ordering::Acquire);

        cache.apply(&format!("{a}/ann"));

        assert_eq!(cache.roles.get(&(a, "ann".into())), None);
        assert_eq!(cache.roles.get(&(a, "bob".into())), Some(Role::Member));
        assert_eq!(cache.roles.get(&(b, "ann".into())), Some(Role::Member));
        assert!(cache.generation.load(Ordering::Acquire) > before);
    }

    #[test]
    fn user_ids_may_contain_slashes() {
        let cache = MembershipCache::new(Duration::from_secs(60));
        let a = tenant();
        cache
            .roles
            .insert((a, "okta|team/ann".into()), Role::Member);
        cache.apply(&format!("{a}/okta|team/ann"));
        assert_eq!(cache.roles.get(&(a, "okta|team/ann".into())), None);
    }

    #[test]
    fn a_tenant_notification_forgets_its_standing_only() {
        let cache = MembershipCache::new(Duration::from_secs(60));
        let (a, b) = (tenant(), tenant());
        let standing = Standing {
            status: TenantStatus::Active,
            reason: String::new(),
            plan: "standard".into(),
            admins_can_search_all_transcripts: false,
        };
        cache.standings.insert(a, standing.clone());
        cache.standings.insert(b, standing);
        cache.roles.insert((a, "ann".into()), Role::Admin);
        cache.apply(&a.to_string());
        assert_eq!(cache.standings.get(&a), None);
        assert!(cache.standings.get(&b).is_some());
        assert_eq!(cache.roles.get(&(a, "ann".into())), Some(Role::Admin));
    }

    #[test]
    fn an_unreadable_notification_forgets_everything() {
        let cache = MembershipCache::new(Duration::from_secs(60));
        let a = tenant();
        cache.roles.insert((a, "ann".into()), Role::Admin);
        cache.apply("not-a-tenant/ann");
        cache.roles.run_pending_tasks();
        assert_eq!(cache.roles.get(&(a, "ann".into())), None);
    }
}
