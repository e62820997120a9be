//! Blob map/unmap as async tasks.
//!
//! `RESOURCE_MAP_BLOB` puts a host blob's memory into the guest through the
//! VMM's host-visible shared-memory region; `RESOURCE_UNMAP_BLOB` takes it
//! out. Both need the VMM (vhost-user `SHMEM_MAP`/`SHMEM_UNMAP`), which may
//! answer slowly. A [`BlobMapper`] returns a future the resource's home shard
//! awaits on its ring: the shard, and every other context, keep running.
//! Operations on one resource are kept in guest order by [`BlobLane`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::render::BlobMemory;

/// Why the VMM did not map or unmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The frontend offers no host-visible region.
    NoRegion,
    /// The VMM refused or failed (its reason).
    Vmm(String),
}

pub type BlobFuture = Pin<Box<dyn Future<Output = Result<(), BlobError>>>>;

/// Talks to the VMM about the host-visible region. Shared by every shard;
/// the futures it returns run on the calling shard.
pub trait BlobMapper: Send + Sync {
    /// Bytes of host-visible region the guest may map into (0: none).
    fn region_size(&self) -> u64;
    /// Maps `mem` at `shm_offset` of the region.
    fn map(&self, mem: BlobMemory, shm_offset: u64, writable: bool) -> BlobFuture;
    /// Unmaps `[shm_offset, shm_offset + len)`.
    fn unmap(&self, shm_offset: u64, len: u64) -> BlobFuture;
    /// The device was reset: every mapping it made is void. (A VMM clears
    /// the region itself on reset; an in-process stand-in forgets them.)
    fn reset(&self) {}
}

/// No host-visible region: MAP_BLOB is refused.
#[derive(Debug, Default)]
pub struct NoBlobMapper;

impl BlobMapper for NoBlobMapper {
    fn region_size(&self) -> u64 {
        0
    }

    fn map(&self, _mem: BlobMemory, _shm_offset: u64, _writable: bool) -> BlobFuture {
        Box::pin(std::future::ready(Err(BlobError::NoRegion)))
    }

    fn unmap(&self, _shm_offset: u64, _len: u64) -> BlobFuture {
        Box::pin(std::future::ready(Err(BlobError::NoRegion)))
    }
}

/// An in-process VMM stand-in: records mappings, answers after `delay`
/// (a timerfd on the ring). For tests and the embedded loadgen.
#[derive(Debug)]
pub struct FakeBlobMapper {
    region: u64,
    delay: Duration,
    mapped: Mutex<HashMap<u64, u64>>,
    /// While set, answers wait (after `delay`) until it is cleared: a VMM
    /// that answers exactly when a test says so.
    held: Arc<AtomicBool>,
}

impl FakeBlobMapper {
    pub fn new(region: u64, delay: Duration) -> Self {
        FakeBlobMapper {
            region,
            delay,
            mapped: Mutex::new(HashMap::new()),
            held: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Holds (true) or releases (false) every answer not yet given.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }

    /// Current mappings: offset → length.
    pub fn mappings(&self) -> HashMap<u64, u64> {
        self.mapped.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl BlobMapper for FakeBlobMapper {
    fn region_size(&self) -> u64 {
        self.region
    }

    fn reset(&self) {
        if let Ok(mut m) = self.mapped.lock() {
            m.clear();
        }
    }

    fn map(&self, mem: BlobMemory, shm_offset: u64, _writable: bool) -> BlobFuture {
        let ok = match self.mapped.lock() {
            Ok(mut m) => m.insert(shm_offset, mem.size).is_none(),
            Err(_) => false,
        };
        self.answer(ok, format!("offset {shm_offset:#x} already mapped"))
    }

    fn unmap(&self, shm_offset: u64, _len: u64) -> BlobFuture {
        let ok = match self.mapped.lock() {
            Ok(mut m) => m.remove(&shm_offset).is_some(),
            Err(_) => false,
        };
        self.answer(ok, format!("offset {shm_offset:#x} not mapped"))
    }
}

impl FakeBlobMapper {
    /// The VMM's answer, after the configured delay (a timerfd on the ring).
    fn answer(&self, ok: bool, refusal: String) -> BlobFuture {
        let (delay, held) = (self.delay, self.held.clone());
        Box::pin(async move {
            if !delay.is_zero() {
                let _ = reactor::time::sleep(delay).await;
            }
            while held.load(Ordering::Acquire) {
                let _ = reactor::time::sleep(Duration::from_millis(1)).await;
            }
            if ok {
                Ok(())
            } else {
                Err(BlobError::Vmm(refusal))
            }
        })
    }
}

/// Keeps one resource's blob operations in guest order without blocking
/// anything else: each operation waits for the one before it.
#[derive(Default, Clone)]
pub struct BlobLane {
    last: Rc<RefCell<Option<reactor::JoinHandle<()>>>>,
}

impl BlobLane {
    /// Runs `op` after every operation queued before it on this lane.
    pub fn run<F: Future<Output = ()> + 'static>(&self, op: F) {
        let previous = self.last.borrow_mut().take();
        let handle = reactor::spawn_local_named("blob-op", async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            op.await;
        });
        *self.last.borrow_mut() = Some(handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_runs_operations_in_order_even_when_the_first_is_slow() {
        let order = Rc::new(RefCell::new(Vec::new()));
        reactor::block_on({
            let order = order.clone();
            async move {
                let lane = BlobLane::default();
                let o = order.clone();
                lane.run(async move {
                    reactor::time::sleep(Duration::from_millis(5))
                        .await
                        .unwrap();
                    o.borrow_mut().push("map");
                });
                let o = order.clone();
                lane.run(async move { o.borrow_mut().push("unmap") });
                // An unrelated task is not held back by the slow map.
                let o = order.clone();
                reactor::spawn_local(async move { o.borrow_mut().push("other") })
                    .await
                    .unwrap();
                reactor::time::sleep(Duration::from_millis(10))
                    .await
                    .unwrap();
            }
        })
        .unwrap();
        assert_eq!(*order.borrow(), vec!["other", "map", "unmap"]);
    }
}
