//! One `&'static str` per text for the bounded names telemetry labels
//! and names things with: the methods a process serves and calls, the
//! models its configuration names, and the tenants admitted under the
//! metrics' cap. A label value is then a copied pointer: no allocation,
//! no reference count that both workers write, no drop glue, and series
//! are found by the pointer's identity (see `series::Sharded`).

use std::collections::HashSet;
use std::sync::{LazyLock, RwLock};

/// The process's one copy of `name`, kept for the life of the process.
/// Only for bounded sets of names (see the module's documentation): the
/// methods of the compiled services a process serves and the few paths
/// its clients call, a few configured models, at most the tenant cap's
/// tenants; a few kilobytes in all.
///
/// Each thread keeps the names it has used: the shared set's lock, taken on
/// every outgoing call, was a cache line both worker threads wrote.
pub(crate) fn interned(name: &str) -> &'static str {
    static NAMES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(RwLock::default);
    thread_local! {
        static KNOWN: std::cell::RefCell<HashSet<&'static str, foldhash::fast::RandomState>> =
            std::cell::RefCell::new(HashSet::default());
    }
    if let Some(known) = KNOWN.with_borrow(|known| known.get(name).copied()) {
        return known;
    }
    let shared = {
        // A poisoned lock only means another thread panicked mid-insert;
        // the set is still a valid set.
        let known = NAMES
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied();
        match known {
            Some(known) => known,
            None => {
                let mut names = NAMES.write().unwrap_or_else(|e| e.into_inner());
                match names.get(name) {
                    Some(known) => known,
                    None => {
                        let name: &'static str = Box::leak(Box::from(name));
                        names.insert(name);
                        name
                    }
                }
            }
        }
    };
    KNOWN.with_borrow_mut(|known| known.insert(shared));
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_text_has_one_copy_on_every_thread() {
        let first = interned(&String::from("tenant-7f3a"));
        assert_eq!(first, "tenant-7f3a");
        assert!(std::ptr::eq(interned("tenant-7f3a"), first));
        let elsewhere = std::thread::scope(|s| s.spawn(|| interned("tenant-7f3a")).join());
        assert!(elsewhere.is_ok_and(|name| std::ptr::eq(name, first)));
        assert!(!std::ptr::eq(interned("tenant-7f3b"), first));
    }
}
