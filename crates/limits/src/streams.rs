//! Per-tenant counts of open streaming calls.
//!
//! A streaming reply holds a model call and a connection for as long as it
//! runs, so its cost is its duration, not its arrival: a rate limit alone
//! would let one tenant hold every worker with a handful of long streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::ConfigError;

/// How long a client turned away for too many streams is told to wait. A
/// stream's end cannot be predicted, so this is a short, fixed back-off.
pub const STREAM_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Counts the open streams of each tenant, up to a cap. Only tenants with an
/// open stream have an entry, so memory follows current use, not history.
/// A counter under a lock rather than a semaphore per tenant: calls over the
/// cap are refused, never queued, and the entry goes with the last permit.
#[derive(Debug)]
pub struct StreamSlots {
    max_per_tenant: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    pub fn new(max_per_tenant: usize) -> Result<Self, ConfigError> {
        if max_per_tenant == 0 {
            return Err(ConfigError::ZeroStreams);
        }
        Ok(Self {
            max_per_tenant,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub fn max_per_tenant(&self) -> usize {
        self.max_per_tenant
    }

    /// Takes a slot for `tenant`; the slot is given back when the permit is
    /// dropped.
    pub fn try_acquire(self: &Arc<Self>, tenant: &str) -> Result<StreamPermit, TooManyStreams> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get_mut(tenant) {
            Some(count) if *count >= self.max_per_tenant => {
                return Err(TooManyStreams {
                    max: self.max_per_tenant,
                });
            }
            Some(count) => *count += 1,
            None => {
                open.insert(tenant.to_owned(), 1);
            }
        }
        Ok(StreamPermit {
            slots: Arc::clone(self),
            tenant: tenant.to_owned(),
        })
    }

    /// How many streams `tenant` has open.
    pub fn open(&self, tenant: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(tenant).copied().unwrap_or(0)
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
        if let Some(count) = open.get_mut(tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(tenant);
            }
        }
    }
}

/// One open stream of a tenant; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamPermit {
    slots: Arc<StreamSlots>,
    tenant: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
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
        let slots = Arc::new(StreamSlots::new(2).unwrap());
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
        let slots = Arc::new(StreamSlots::new(3).unwrap());
        for i in 0..10_000 {
            let permit = slots.try_acquire(&format!("tenant-{i}")).unwrap();
            assert_eq!(slots.tenants_with_open_streams(), 1);
            drop(permit);
        }
        assert_eq!(slots.tenants_with_open_streams(), 0);
    }

    #[test]
    fn a_zero_cap_is_refused() {
        assert_eq!(StreamSlots::new(0).unwrap_err(), ConfigError::ZeroStreams);
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
}
