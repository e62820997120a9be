//! Blob map/unmap as async tasks.
//!
//! `RESOURCE_MAP_BLOB` puts a host blob's memory into the guest through the
//! VMM's host-visible shared-memory region; `RESOURCE_UNMAP_BLOB` takes it
//! out. Both need the VMM (vhost-user `SHMEM_MAP`/`SHMEM_UNMAP`), which may
//! answer slowly. A [`BlobMapper`] returns a future the resource's home shard
//! awaits on its ring: the shard, and every other context, keep running.
//! Operations on one resource are kept in guest order by [`BlobLane`].
//!
//! The device checks a `MAP_BLOB` itself before the VMM sees it
//! ([`HostVisibleRanges`]): the offset is page aligned, the blob's pages
//! fit in the region, and they overlap no range another blob holds. A
//! range is held from the `MAP_BLOB` that claims it until the VMM has
//! answered the `UNMAP_BLOB` (or the unref) that gives it back, or refused
//! the map: a new blob can never be mapped over one the VMM still shows
//! there, nor be taken out by a late unmap of the old one.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::protocol::ProtocolError;
use crate::render::BlobMemory;

/// The host-visible region is mapped in pages of this size.
pub const SHM_PAGE_SIZE: u64 = 4096;

/// A range of the host-visible region one blob holds: `len` is the blob's
/// size, the range its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRange {
    pub offset: u64,
    pub len: u64,
    /// First byte after the blob's last page.
    end: u64,
    /// The shard whose resource holds it (cleared with that shard's reset).
    shard: usize,
    /// Tells this claim from a later one at the same offset.
    id: u64,
}

#[derive(Debug, Default)]
struct Ranges {
    by_offset: BTreeMap<u64, MappedRange>,
    next_id: u64,
}

/// The ranges of the host-visible region that blobs hold, shared by every
/// shard (resources of different shards share the one region).
#[derive(Debug, Default)]
pub struct HostVisibleRanges {
    ranges: Mutex<Ranges>,
}

impl HostVisibleRanges {
    /// Claims the pages of a `len`-byte blob at `offset` of a `region`-byte
    /// region for a resource of `shard`, or says which rule it breaks.
    pub fn claim(
        &self,
        shard: usize,
        offset: u64,
        len: u64,
        region: u64,
    ) -> Result<MappedRange, ProtocolError> {
        if !offset.is_multiple_of(SHM_PAGE_SIZE) {
            return Err(ProtocolError::MapOffsetUnaligned { offset });
        }
        let end = len
            .div_ceil(SHM_PAGE_SIZE)
            .checked_mul(SHM_PAGE_SIZE)
            .and_then(|pages| offset.checked_add(pages))
            // An empty blob (refused at creation anyway) would hold nothing
            // and could replace the claim at its offset.
            .filter(|&end| end <= region && len > 0)
            .ok_or(ProtocolError::MapOutsideHostVisibleRegion { offset, size: len })?;
        let mut r = self.lock();
        // Held ranges never overlap, so only the last one starting before
        // `end` can reach into [offset, end).
        if let Some((_, held)) = r.by_offset.range(..end).next_back() {
            if held.end > offset {
                return Err(ProtocolError::MapOverlapsMappedBlob {
                    offset,
                    size: len,
                    mapped_offset: held.offset,
                    mapped_size: held.len,
                });
            }
        }
        r.next_id += 1;
        let claim = MappedRange {
            offset,
            len,
            end,
            shard,
            id: r.next_id,
        };
        r.by_offset.insert(offset, claim);
        Ok(claim)
    }

    /// Gives `claim` back (nothing if a reset already did).
    pub fn release(&self, claim: MappedRange) {
        let mut r = self.lock();
        if r.by_offset.get(&claim.offset) == Some(&claim) {
            r.by_offset.remove(&claim.offset);
        }
    }

    /// `shard` was reset: its resources, and the ranges they held, are gone
    /// (the VMM clears its region on reset).
    pub fn release_shard(&self, shard: usize) {
        self.lock().by_offset.retain(|_, c| c.shard != shard);
    }

    /// Ranges held now.
    pub fn held(&self) -> Vec<(u64, u64)> {
        self.lock()
            .by_offset
            .values()
            .map(|c| (c.offset, c.len))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranges> {
        // The map is consistent after every step: a panic elsewhere while
        // it was held leaves nothing half done.
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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

    const REGION: u64 = 1 << 20;

    #[test]
    fn a_map_offset_must_be_page_aligned() {
        let r = HostVisibleRanges::default();
        assert_eq!(
            r.claim(0, 100, 4096, REGION),
            Err(ProtocolError::MapOffsetUnaligned { offset: 100 })
        );
        assert!(r.claim(0, 8192, 4096, REGION).is_ok());
    }

    #[test]
    fn a_blob_must_fit_the_region_by_whole_pages() {
        let r = HostVisibleRanges::default();
        let outside = |offset, size| ProtocolError::MapOutsideHostVisibleRegion { offset, size };
        assert_eq!(
            r.claim(0, REGION - 4096, 4097, REGION),
            Err(outside(REGION - 4096, 4097))
        );
        assert_eq!(r.claim(0, 0, u64::MAX, REGION), Err(outside(0, u64::MAX)));
        assert_eq!(r.claim(0, REGION, 1, REGION), Err(outside(REGION, 1)));
        // A short blob takes its whole last page.
        assert!(r.claim(0, REGION - 4096, 100, REGION).is_ok());
    }

    #[test]
    fn a_blob_may_not_overlap_one_already_held_until_it_is_released() {
        let r = HostVisibleRanges::default();
        let held = r.claim(0, 0x4000, 0x2000, REGION).unwrap();
        let overlap = |offset, size| ProtocolError::MapOverlapsMappedBlob {
            offset,
            size,
            mapped_offset: 0x4000,
            mapped_size: 0x2000,
        };
        // Inside, across either end, around it.
        assert_eq!(
            r.claim(1, 0x5000, 0x1000, REGION),
            Err(overlap(0x5000, 0x1000))
        );
        assert_eq!(
            r.claim(1, 0x3000, 0x2000, REGION),
            Err(overlap(0x3000, 0x2000))
        );
        assert_eq!(
            r.claim(1, 0x5000, 0x4000, REGION),
            Err(overlap(0x5000, 0x4000))
        );
        assert_eq!(r.claim(1, 0, 0x10000, REGION), Err(overlap(0, 0x10000)));
        // Touching is not overlapping; a short blob's last page counts.
        assert!(r.claim(1, 0x3000, 0x1000, REGION).is_ok());
        assert!(r.claim(1, 0x6000, 10, REGION).is_ok());
        assert!(r.claim(1, 0x6000, 10, REGION).is_err(), "its page is held");
        r.release(held);
        assert!(r.claim(1, 0x4000, 0x2000, REGION).is_ok());
    }

    #[test]
    fn a_release_after_a_reset_leaves_a_newer_claim_alone() {
        let r = HostVisibleRanges::default();
        let old = r.claim(0, 0, 4096, REGION).unwrap();
        r.claim(1, 4096, 4096, REGION).unwrap();
        r.release_shard(0);
        assert_eq!(r.held(), vec![(4096, 4096)], "only shard 0's ranges go");
        let new = r.claim(0, 0, 4096, REGION).unwrap();
        // The old map's late answer gives back its own claim only.
        r.release(old);
        assert_eq!(r.held(), vec![(0, 4096), (4096, 4096)]);
        r.release(new);
        assert_eq!(r.held(), vec![(4096, 4096)]);
    }

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
