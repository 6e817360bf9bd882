//! A bounded cache of grain tables, shared by all sparse extents of a link.
//!
//! Grain tables are loaded on demand and evicted oldest-first once the byte budget is reached, so
//! memory stays bounded whatever the disk size. Entries are atomics so a writer can update a cached
//! table in place; every load and every update runs under one lock, which keeps the cache and the
//! file in step (a table is never loaded from disk while an entry of it is being rewritten).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;

/// A cached grain table.
pub type Table = Arc<[AtomicU64]>;

/// Default budget: 8 MiB of entries.
pub const DEFAULT_BUDGET: usize = 8 << 20;

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A fresh owner id for an extent using the cache.
pub fn new_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug, Default)]
struct Inner {
    tables: HashMap<(u64, u64), Table>,
    order: VecDeque<(u64, u64)>,
    bytes: usize,
}

/// The cache.
#[derive(Debug)]
pub struct GtCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl Default for GtCache {
    fn default() -> Self {
        GtCache::new(DEFAULT_BUDGET)
    }
}

impl GtCache {
    /// A cache holding at most `budget` bytes of entries (at least one table is always kept).
    pub fn new(budget: usize) -> GtCache {
        GtCache { inner: Mutex::new(Inner::default()), budget }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns table `gt` of `owner`, loading it with `load` on a miss.
    pub fn get(&self, owner: u64, gt: u64, load: impl FnOnce() -> Result<Vec<u64>>) -> Result<Table> {
        let mut inner = self.lock();
        if let Some(t) = inner.tables.get(&(owner, gt)) {
            return Ok(t.clone());
        }
        let entries: Table = load()?.into_iter().map(AtomicU64::new).collect();
        let size = entries.len() * 8 + 64;
        while inner.bytes + size > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(t) = inner.tables.remove(&old) {
                inner.bytes -= t.len() * 8 + 64;
            }
        }
        inner.bytes += size;
        inner.order.push_back((owner, gt));
        inner.tables.insert((owner, gt), entries.clone());
        Ok(entries)
    }

    /// Runs `write` (which rewrites entries `first..first+values.len()` of table `gt` on disk) under
    /// the cache lock, then updates the cached copy if there is one.
    pub fn update(
        &self,
        owner: u64,
        gt: u64,
        first: usize,
        values: &[u64],
        write: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let inner = self.lock();
        write()?;
        if let Some(t) = inner.tables.get(&(owner, gt)) {
            for (i, v) in values.iter().enumerate() {
                if let Some(e) = t.get(first + i) {
                    e.store(*v, Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// Drops every table of `owner`.
    pub fn forget(&self, owner: u64) {
        let mut inner = self.lock();
        let mut freed = 0;
        inner.tables.retain(|k, t| {
            let keep = k.0 != owner;
            if !keep {
                freed += t.len() * 8 + 64;
            }
            keep
        });
        inner.bytes -= freed;
        inner.order.retain(|k| k.0 != owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_within_budget() {
        let c = GtCache::new(3 * (512 * 8 + 64));
        for gt in 0..5 {
            c.get(1, gt, || Ok(vec![gt; 512])).unwrap();
        }
        let mut loaded = false;
        c.get(1, 0, || {
            loaded = true;
            Ok(vec![7; 512])
        })
        .unwrap();
        assert!(loaded, "table 0 must have been evicted");
        let t = c.get(1, 4, || panic!("table 4 must still be cached")).unwrap();
        assert_eq!(t[0].load(Ordering::Relaxed), 4);
        c.update(1, 4, 2, &[9, 10], || Ok(())).unwrap();
        assert_eq!(t[3].load(Ordering::Relaxed), 10);
    }
}
