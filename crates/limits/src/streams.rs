//! Per-tenant counts of open streaming calls, and the lanes they run in.
//!
//! A streaming reply holds a model call and a connection for as long as it
//! runs, so its cost is its duration, not its arrival: a rate limit alone
//! would let one tenant hold every worker with a handful of long streams.
//!
//! Two numbers per tenant. The *cap* bounds how many streams a tenant may
//! have open (waiting or running); calls over it are refused. The *lanes*
//! bound how many of those run at once; the rest wait, in arrival order, for
//! one of the tenant's own lanes. A token bucket admits a tenant's calls in
//! bursts (a bucket that refilled for 250 ms admits a dozen calls at once);
//! lanes turn such a burst into a short queue of that tenant's own, so the
//! burst costs its sender latency instead of costing every other tenant's
//! calls their share of the cores and the database pool (measured in
//! `tests/benches/noisy_neighbour.rs`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::FastMap;
use crate::config::ConfigError;

/// How long a client turned away for too many streams is told to wait. A
/// stream's end cannot be predicted, so this is a short, fixed back-off.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct TenantStreams {
    open: usize,
    lanes: Arc<Semaphore>,
}

/// Counts the open streams of each tenant, up to a cap, and hands out each
/// tenant's lanes. Only tenants with an open stream have an entry, so memory
/// follows current use, not history. The count sits under a lock rather
/// than in a semaphore: calls over the cap are refused, never queued, and
/// the entry goes with the last permit.
#[derive(Debug)]
pub struct StreamSlots {
    max_per_tenant: usize,
    lanes_per_tenant: usize,
    open: Mutex<FastMap<String, TenantStreams>>,
}

impl StreamSlots {
    /// Slots capping each tenant at `max_per_tenant` open streams, of which
    /// `lanes_per_tenant` run at once (at most the cap).
    pub fn new(max_per_tenant: usize, lanes_per_tenant: usize) -> Result<Self, ConfigError> {
        if max_per_tenant == 0 {
            return Err(ConfigError::ZeroStreams);
        }
        if lanes_per_tenant == 0 || lanes_per_tenant > max_per_tenant {
            return Err(ConfigError::Lanes {
                lanes: lanes_per_tenant,
                max_streams: max_per_tenant,
            });
        }
        Ok(Self {
            max_per_tenant,
            lanes_per_tenant,
            open: Mutex::new(FastMap::default()),
        })
    }

    pub fn max_per_tenant(&self) -> usize {
        self.max_per_tenant
    }

    pub fn lanes_per_tenant(&self) -> usize {
        self.lanes_per_tenant
    }

    /// Takes a slot for `tenant`; the slot is given back when the permit is
    /// dropped. The permit has no lane yet: see [`StreamPermit::try_lane`]
    /// and [`StreamPermit::lane`].
    pub fn try_acquire(self: &Arc<Self>, tenant: &str) -> Result<StreamPermit, TooManyStreams> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let lanes = match open.get_mut(tenant) {
            Some(streams) if streams.open >= self.max_per_tenant => {
                return Err(TooManyStreams {
                    max: self.max_per_tenant,
                });
            }
            Some(streams) => {
                streams.open += 1;
                Arc::clone(&streams.lanes)
            }
            None => {
                let lanes = Arc::new(Semaphore::new(self.lanes_per_tenant));
                open.insert(
                    tenant.to_owned(),
                    TenantStreams {
                        open: 1,
                        lanes: Arc::clone(&lanes),
                    },
                );
                lanes
            }
        };
        Ok(StreamPermit {
            slots: Arc::clone(self),
            tenant: tenant.to_owned(),
            lanes,
            lane: None,
        })
    }

    /// How many streams `tenant` has open (waiting or running).
    pub fn open(&self, tenant: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(tenant).map_or(0, |streams| streams.open)
    }

    /// How many tenants have at least one stream open (the entries held).
    pub fn tenants_with_open_streams(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn release(&self, tenant: &str) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(streams) = open.get_mut(tenant) {
            streams.open = streams.open.saturating_sub(1);
            if streams.open == 0 {
                open.remove(tenant);
            }
        }
    }
}

/// One open stream of a tenant; dropping it frees the slot, and its lane if
/// it holds one.
#[derive(Debug)]
pub struct StreamPermit {
    slots: Arc<StreamSlots>,
    tenant: String,
    lanes: Arc<Semaphore>,
    lane: Option<OwnedSemaphorePermit>,
}

impl StreamPermit {
    /// Takes one of the tenant's lanes if one is free now.
    pub fn try_lane(&mut self) -> bool {
        if self.lane.is_none() {
            self.lane = Arc::clone(&self.lanes).try_acquire_owned().ok();
        }
        self.lane.is_some()
    }

    /// Waits, behind the tenant's earlier calls (the semaphore is fair), for
    /// one of its lanes.
    pub async fn lane(mut self) -> Self {
        if self.lane.is_none() {
            // The semaphore is never closed, so this only fails if that
            // changes; the call then runs without a lane rather than never.
            self.lane = Arc::clone(&self.lanes).acquire_owned().await.ok();
        }
        self
    }

    /// Whether the permit holds a lane.
    pub fn has_lane(&self) -> bool {
        self.lane.is_some()
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        // The lane first, so a waiter of this tenant can start at once.
        self.lane.take();
        self.slots.release(&self.tenant);
    }
}

/// A streaming call turned away because its tenant holds the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "this tenant may hold at most {max} concurrent streams and all are in use; retry after {} ms",
    STREAM_RETRY_AFTER.as_millis()
)]
pub struct TooManyStreams {
    pub max: usize,
}

impl TooManyStreams {
    /// `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` detail of
    /// [`STREAM_RETRY_AFTER`].
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::with_error_details(
            Code::ResourceExhausted,
            self.to_string(),
            ErrorDetails::with_retry_info(Some(STREAM_RETRY_AFTER)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_tenant_separately_and_frees_on_drop() {
        let slots = Arc::new(StreamSlots::new(2, 2).unwrap());
        let a1 = slots.try_acquire("a").unwrap();
        let _a2 = slots.try_acquire("a").unwrap();
        assert_eq!(
            slots.try_acquire("a").unwrap_err(),
            TooManyStreams { max: 2 }
        );
        let _b1 = slots.try_acquire("b").unwrap();
        assert_eq!(slots.open("a"), 2);
        drop(a1);
        assert_eq!(slots.open("a"), 1);
        assert!(slots.try_acquire("a").is_ok());
    }

    #[test]
    fn idle_tenants_hold_no_memory() {
        let slots = Arc::new(StreamSlots::new(3, 1).unwrap());
        for i in 0..10_000 {
            let permit = slots.try_acquire(&format!("tenant-{i}")).unwrap();
            assert_eq!(slots.tenants_with_open_streams(), 1);
            drop(permit);
        }
        assert_eq!(slots.tenants_with_open_streams(), 0);
    }

    #[test]
    fn a_zero_cap_is_refused() {
        assert_eq!(
            StreamSlots::new(0, 1).unwrap_err(),
            ConfigError::ZeroStreams
        );
        assert_eq!(
            StreamSlots::new(4, 0).unwrap_err(),
            ConfigError::Lanes {
                lanes: 0,
                max_streams: 4
            }
        );
        assert_eq!(
            StreamSlots::new(4, 5).unwrap_err(),
            ConfigError::Lanes {
                lanes: 5,
                max_streams: 4
            }
        );
    }

    #[test]
    fn the_status_says_how_many_streams_and_when_to_retry() {
        let status = TooManyStreams { max: 4 }.to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("at most 4 concurrent streams"));
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(STREAM_RETRY_AFTER)
        );
    }

    #[test]
    fn each_tenant_runs_at_most_its_lanes_and_the_rest_wait_their_turn() {
        let slots = Arc::new(StreamSlots::new(4, 2).unwrap());
        let mut a: Vec<_> = (0..4).map(|_| slots.try_acquire("a").unwrap()).collect();
        assert!(a[0].try_lane());
        assert!(a[1].try_lane());
        // A's lanes are full; its other open streams wait...
        assert!(!a[2].try_lane());
        assert!(!a[3].try_lane());
        // ...while another tenant has lanes of its own.
        let mut b = slots.try_acquire("b").unwrap();
        assert!(b.try_lane());
        // Asking twice does not take a second lane.
        assert!(a[0].try_lane());
        assert!(!a[2].try_lane());
        // When one of A's running streams ends, a waiting one may run.
        drop(a.remove(0));
        assert!(a[1].try_lane());
        assert!(!a[2].try_lane());
    }

    #[tokio::test]
    async fn a_waiting_stream_gets_the_lane_freed_by_one_that_ends() {
        let slots = Arc::new(StreamSlots::new(3, 1).unwrap());
        let mut running = slots.try_acquire("a").unwrap();
        assert!(running.try_lane());
        let waiting = tokio::spawn(slots.try_acquire("a").unwrap().lane());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no lane is free yet");
        drop(running);
        let started = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the freed lane is handed on")
            .unwrap();
        assert!(started.has_lane());
        assert_eq!(slots.open("a"), 1);
        drop(started);
        assert_eq!(slots.tenants_with_open_streams(), 0);
    }
}
