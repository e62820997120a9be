//! The guest's memory budget (`DeviceConfig::memory_limit`, the daemon's
//! `--max-guest-memory`): every kind of host memory a guest can make the
//! device hold is charged here before it is taken, and given back when it
//! is freed, so a hostile guest gets `ERR_OUT_OF_MEMORY` instead of the
//! host's memory.
//!
//! | what | charged | given back |
//! |---|---|---|
//! | a resource: its image ([`crate::protocol::ResourceCreate3d::host_bytes`]: format, mips, layers, samples), a host blob's size, plus [`RESOURCE_BYTES`] | at intake (`Directory::add_resource`) | `RESOURCE_UNREF`, reset |
//! | a context: [`CONTEXT_BYTES`] | at intake (`Directory::add_context`) | `CTX_DESTROY`, reset |
//! | a resource attached to a context: [`ATTACHMENT_BYTES`] | at intake (`Directory::attach`) | `CTX_DETACH_RESOURCE`, `RESOURCE_UNREF`, `CTX_DESTROY`, reset |
//! | a backing (`ATTACH_BACKING`): [`BACKING_ENTRY_BYTES`] an entry | on the shard, with the backing | `DETACH_BACKING`, `RESOURCE_UNREF`, reset |
//! | a blob's entries given at `CREATE_BLOB`: the same | at intake, with the blob | `RESOURCE_UNREF`, reset |
//! | a command's own buffers while it is held ([`held_bytes`]: `SUBMIT_3D` data, mem entries) | at intake | once its shard ran it |
//! | a flush's pixel buffers | on the shard, before reading | once handed to the display |
//!
//! A [`Charge`] gives its bytes back when dropped, so whatever holds the
//! memory holds the charge, and nothing can be freed without it. The
//! number of contexts and resources a guest can have follows from their
//! fixed charges (the default 1 GiB holds 65536 contexts or 524288
//! resources, at most).
//!
//! Not charged: what is bounded without the guest's say: the display's
//! queues (a few frames per scanout, merged), a command's decoded header
//! and job (the queue size bounds them), the cursor image (64x64).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::{GpuCommand, MemEntry, ProtocolError};

/// What the device and its renderer keep for every resource besides its
/// pixels: the directory's entry, the shard's `ShardResource`, the
/// renderer's record (the sim's `SimResource`, rutabaga's or
/// virglrenderer's resource and the GL texture object behind it), and the
/// hash table slots of each. A few hundred bytes on our side (the test
/// below), more inside the libraries: 2 KiB.
pub const RESOURCE_BYTES: u64 = 2048;

/// What the device and its renderer keep for every context: the
/// directory's entry, the owner's per-context maps (in-flight slots,
/// parked commands, pacer), fence timelines and the sim's ring clocks for
/// up to 64 rings, per-context metrics, and a renderer's context state
/// (virglrenderer's decoder and sub-context): 16 KiB.
pub const CONTEXT_BYTES: u64 = 16 << 10;

/// What a resource attached to a context costs: the directory's set slot
/// and the renderer's (virglrenderer's per-context resource table): 64.
pub const ATTACHMENT_BYTES: u64 = 64;

/// Host bytes for each guest memory entry of an attached backing: the
/// device's `Backing` keeps the entry (16 bytes) and its linear offset (8),
/// and a renderer may keep its own view of the pages (virgl: an iovec of
/// 16 bytes and a mapping guard for each; the sim: a copy of the `Backing`
/// while a transfer is pending): 64.
pub const BACKING_ENTRY_BYTES: u64 = 64;

/// The budget of one device (one guest at a time), shared by the owner
/// and every shard.
#[derive(Debug)]
pub struct GuestBudget {
    limit: u64,
    used: AtomicU64,
    /// Bytes given back since the budget was made (the owner's allocator
    /// trim follows it: `owner.rs`).
    freed: AtomicU64,
}

impl GuestBudget {
    pub fn new(limit: u64) -> Arc<GuestBudget> {
        Arc::new(GuestBudget {
            limit,
            used: AtomicU64::new(0),
            freed: AtomicU64::new(0),
        })
    }

    /// Charges `bytes`, or refuses with `OutOfMemory` when they do not fit
    /// what is left.
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Result<Charge, ProtocolError> {
        self.take(bytes)?;
        Ok(Charge {
            budget: self.clone(),
            bytes,
        })
    }

    fn take(&self, bytes: u64) -> Result<(), ProtocolError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .map(|_| ())
            .map_err(|_| ProtocolError::OutOfMemory { requested: bytes })
    }

    /// Charges `bytes` if they could be counted at all (`None`: a size
    /// that overflowed 64 bits, refused).
    pub fn charge_size(self: &Arc<Self>, bytes: Option<u64>) -> Result<Charge, ProtocolError> {
        self.charge(bytes.ok_or(ProtocolError::OutOfMemory {
            requested: u64::MAX,
        })?)
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes given back so far, in total.
    pub fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Bytes charged to a budget, given back when this is dropped.
#[must_use = "a charge is given back when dropped"]
pub struct Charge {
    budget: Arc<GuestBudget>,
    bytes: u64,
}

impl Charge {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Charges `bytes` more to the same holder, or refuses as
    /// [`GuestBudget::charge`] does (the charge is then unchanged).
    pub fn grow(&mut self, bytes: u64) -> Result<(), ProtocolError> {
        self.budget.take(bytes)?;
        self.bytes += bytes;
        Ok(())
    }

    /// Gives `bytes` of this charge back (at most all of it).
    pub fn shrink(&mut self, bytes: u64) {
        let bytes = bytes.min(self.bytes);
        self.budget.give_back(bytes);
        self.bytes -= bytes;
    }
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Charge({} bytes)", self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Bytes of a backing of `entries` entries, kept while it is attached.
pub fn backing_bytes(entries: usize) -> u64 {
    (entries as u64).saturating_mul(BACKING_ENTRY_BYTES)
}

/// Bytes a decoded command holds while it waits for and runs on its shard:
/// a `SUBMIT_3D`'s command buffer, the mem entries of an `ATTACH_BACKING`
/// or `CREATE_BLOB`.
pub fn held_bytes(cmd: &GpuCommand) -> u64 {
    let entries = |n: usize| (n as u64).saturating_mul(std::mem::size_of::<MemEntry>() as u64);
    match cmd {
        GpuCommand::Submit3d(s) => s.data.len() as u64,
        GpuCommand::ResourceAttachBacking(a) => entries(a.entries.len()),
        GpuCommand::ResourceCreateBlob(b) => entries(b.entries.len()),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_limit_and_given_back_when_dropped() {
        let b = GuestBudget::new(100);
        let a = b.charge(60).unwrap();
        assert_eq!(
            b.charge(41).unwrap_err(),
            ProtocolError::OutOfMemory { requested: 41 }
        );
        let c = b.charge(40).unwrap();
        assert_eq!(b.in_use(), 100);
        assert!(b.charge(u64::MAX).is_err(), "no overflow past u64");
        assert!(b.charge_size(None).is_err());
        let mut a = a;
        assert!(a.grow(1).is_err());
        a.shrink(10);
        a.grow(5).unwrap();
        assert_eq!((a.bytes(), b.in_use()), (55, 95));
        a.shrink(u64::MAX);
        assert_eq!((a.bytes(), b.in_use()), (0, 40));
        drop(a);
        assert_eq!(b.in_use(), 40);
        drop(c);
        assert_eq!(b.in_use(), 0);
    }

    /// The fixed charges cover what our own structs cost for an object
    /// (with room for a hash table slot each); the rest of each figure is
    /// for the renderer libraries, which we cannot measure.
    #[test]
    fn the_fixed_charges_cover_our_own_structs() {
        use std::mem::size_of;
        let slot = |n: usize| 2 * n + 8; // a hash table slot at 1/2 load
        let resource = slot(size_of::<super::super::directory::ResourceEntry>())
            + slot(size_of::<super::super::context::ShardResource>());
        assert!(
            (resource as u64) < RESOURCE_BYTES / 2,
            "resource: {resource}"
        );
        let context = slot(size_of::<super::super::directory::ContextEntry>());
        assert!((context as u64) < CONTEXT_BYTES / 16, "context: {context}");
        let entry = size_of::<MemEntry>() + size_of::<u64>();
        assert!((entry as u64) <= BACKING_ENTRY_BYTES / 2, "entry: {entry}");
    }
}
