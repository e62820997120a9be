//! Guest RAM owned by the load generator.
//!
//! The RAM is a memfd so the very same pages can be handed to an out-of-process
//! backend (vhost-user `SET_MEM_TABLE` takes an fd, a size and an offset) or
//! shared with an in-process device through [`GuestRam::atomic`]. Everything the
//! driver writes (rings, indirect tables, command buffers) lives in it, and is
//! carved out by a small first-fit allocator that reuses freed space, so a long
//! run never exhausts RAM.
//!
//! Layout, from the base address up:
//!
//! ```text
//! base          guard page, never allocated (a zero address means "unset" to
//!               devices, virtio-queue refuses an avail ring at 0)
//! base+4K       ring region: descriptor tables, avail and used rings
//! ...           heap: guest buffers and indirect descriptor tables
//! base+size
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vm_memory::mmap::FromRangesError;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
    GuestRegionMmap,
};

/// Page size the layout is rounded to (the guard page and region boundaries).
const PAGE: u64 = 4096;
/// Smallest unit the allocator hands out; keeps every block 16-byte aligned,
/// which is what descriptor tables need.
const GRANULE: u64 = 16;

/// Where and how big the guest RAM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRamConfig {
    /// Guest-physical address of the first byte.
    pub base: GuestAddress,
    /// Total bytes, rounded up to a page.
    pub size: u64,
    /// Bytes reserved right after the guard page for virtqueue rings, so
    /// buffer churn never fragments the space a new queue needs.
    pub ring_region: u64,
}

impl Default for GuestRamConfig {
    /// 64 MiB at guest address 0, 1 MiB of it for rings (enough for a few
    /// 1024-entry queues and one of the maximum 32768 size).
    fn default() -> Self {
        Self {
            base: GuestAddress(0),
            size: 64 << 20,
            ring_region: 1 << 20,
        }
    }
}

/// Guest RAM could not be created.
#[derive(Debug)]
pub enum GuestRamError {
    /// `memfd_create` failed.
    Memfd(io::Error),
    /// Sizing the memfd (`ftruncate`) failed.
    Resize(io::Error),
    /// Sealing the memfd against shrinking failed.
    Seal(io::Error),
    /// Mapping the memfd into this process failed.
    Map(FromRangesError),
    /// The configuration does not fit: size too small for the guard page, the
    /// ring region and a heap, base not page aligned, or the range overflows.
    Layout(GuestRamConfig),
}

impl fmt::Display for GuestRamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memfd(e) => write!(f, "memfd_create for guest RAM failed: {e}"),
            Self::Resize(e) => write!(f, "sizing the guest RAM memfd failed: {e}"),
            Self::Seal(e) => write!(f, "sealing the guest RAM memfd failed: {e}"),
            Self::Map(e) => write!(f, "mapping guest RAM failed: {e}"),
            Self::Layout(c) => write!(
                f,
                "guest RAM layout does not fit: base {:#x}, size {:#x}, ring region {:#x}",
                c.base.0, c.size, c.ring_region
            ),
        }
    }
}

impl std::error::Error for GuestRamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Memfd(e) | Self::Resize(e) | Self::Seal(e) => Some(e),
            Self::Map(e) => Some(e),
            Self::Layout(_) => None,
        }
    }
}

/// No free block is large enough for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfGuestMemory {
    /// Bytes asked for.
    pub len: u64,
    /// Alignment asked for.
    pub align: u64,
    /// Bytes free in the region at the time (possibly fragmented).
    pub free: u64,
}

impl fmt::Display for OutOfGuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of guest memory: {} bytes aligned to {} requested, {} bytes free",
            self.len, self.align, self.free
        )
    }
}

impl std::error::Error for OutOfGuestMemory {}

/// `free` was given an address that is not the start of a live allocation
/// (a double free, or an address never returned by `alloc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAllocated(pub GuestAddress);

impl fmt::Display for NotAllocated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest address {:#x} is not an allocation", self.0 .0)
    }
}

impl std::error::Error for NotAllocated {}

/// Memfd-backed guest RAM, mapped into this process, with an allocator.
///
/// Cloning is cheap and shares the same RAM and allocator: queues keep a
/// clone so they can allocate indirect tables and give their rings back on
/// drop.
#[derive(Clone)]
pub struct GuestRam {
    inner: Arc<Inner>,
}

struct Inner {
    memfd: Arc<File>,
    mem: Arc<GuestMemoryMmap>,
    config: GuestRamConfig,
    ring_start: u64,
    heap_start: u64,
    rings: Mutex<FirstFit>,
    heap: Mutex<FirstFit>,
}

impl fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam")
            .field("config", &self.inner.config)
            .field("heap_free", &self.heap_free())
            .finish_non_exhaustive()
    }
}

impl GuestRam {
    /// `size` bytes of guest RAM at guest address 0, with the default ring
    /// region (capped at a quarter of the RAM so small test RAMs still work).
    pub fn new(size: u64) -> Result<Self, GuestRamError> {
        let ring_region = GuestRamConfig::default().ring_region.min(size / 4);
        Self::with_config(GuestRamConfig {
            size,
            ring_region,
            ..GuestRamConfig::default()
        })
    }

    /// Guest RAM with an explicit layout.
    pub fn with_config(config: GuestRamConfig) -> Result<Self, GuestRamError> {
        let bad = || GuestRamError::Layout(config);
        let size = round_up(config.size, PAGE).ok_or_else(bad)?;
        let ring_region = round_up(config.ring_region, PAGE).ok_or_else(bad)?;
        let base = config.base.0;
        if !base.is_multiple_of(PAGE) || ring_region == 0 {
            return Err(bad());
        }
        let end = base.checked_add(size).ok_or_else(bad)?;
        let ring_start = base + PAGE;
        let heap_start = ring_start.checked_add(ring_region).ok_or_else(bad)?;
        if heap_start >= end {
            return Err(bad());
        }
        let map_len = usize::try_from(size).map_err(|_| bad())?;

        let memfd = Arc::new(create_memfd(size)?);
        let region = GuestRegionMmap::from_range(
            config.base,
            map_len,
            Some(FileOffset::from_arc(Arc::clone(&memfd), 0)),
        )
        .map_err(GuestRamError::Map)?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| GuestRamError::Map(FromRangesError::Collection(e)))?;

        Ok(Self {
            inner: Arc::new(Inner {
                memfd,
                mem: Arc::new(mem),
                config: GuestRamConfig {
                    size,
                    ring_region,
                    ..config
                },
                ring_start,
                heap_start,
                rings: Mutex::new(FirstFit::new(ring_start, heap_start)),
                heap: Mutex::new(FirstFit::new(heap_start, end)),
            }),
        })
    }

    /// The guest memory, for `Bytes` access (`read_obj`, `write_obj`,
    /// `load`, `store`).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.inner.mem
    }

    /// The guest memory behind an `Arc`, for devices that take ownership of a
    /// handle (virtio-queue's `pop_descriptor_chain` takes `M: Deref`).
    pub fn memory_arc(&self) -> Arc<GuestMemoryMmap> {
        Arc::clone(&self.inner.mem)
    }

    /// The guest memory as the address space an in-process vhost-user style
    /// backend expects; it shares the same mapping.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        GuestMemoryAtomic::from(self.memory_arc())
    }

    /// Guest-physical address of the first byte.
    pub fn base(&self) -> GuestAddress {
        self.inner.config.base
    }

    /// Total bytes (page rounded).
    pub fn size(&self) -> u64 {
        self.inner.config.size
    }

    /// The layout actually used (sizes page rounded).
    pub fn config(&self) -> GuestRamConfig {
        self.inner.config
    }

    /// Offset of guest RAM inside the memfd (vhost-user `mmap_offset`).
    pub fn mmap_offset(&self) -> u64 {
        0
    }

    /// Where the RAM is mapped in this process (vhost-user `userspace_addr`,
    /// which a backend uses to translate the frontend's ring addresses).
    pub fn userspace_addr(&self) -> u64 {
        self.inner
            .mem
            .get_host_address(self.base())
            .map_or(0, |p| p as u64)
    }

    /// The memfd, to dup into a vhost-user message.
    pub fn file(&self) -> &Arc<File> {
        &self.inner.memfd
    }

    /// Allocates `len` bytes (at least one granule of 16) aligned to `align`
    /// (rounded up to a power of two, at least 16) from the buffer heap.
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestAddress, OutOfGuestMemory> {
        lock(&self.inner.heap).alloc(len, align).map(GuestAddress)
    }

    /// Allocates from the ring region (queues only: rings must not fail
    /// because buffers fragmented the heap).
    pub(crate) fn alloc_ring(
        &self,
        len: u64,
        align: u64,
    ) -> Result<GuestAddress, OutOfGuestMemory> {
        lock(&self.inner.rings).alloc(len, align).map(GuestAddress)
    }

    /// Returns an allocation (from either region) to its free list.
    pub fn free(&self, addr: GuestAddress) -> Result<(), NotAllocated> {
        let region = if (self.inner.ring_start..self.inner.heap_start).contains(&addr.0) {
            &self.inner.rings
        } else {
            &self.inner.heap
        };
        if lock(region).free(addr.0) {
            Ok(())
        } else {
            Err(NotAllocated(addr))
        }
    }

    /// Bytes free in the buffer heap (possibly fragmented).
    pub fn heap_free(&self) -> u64 {
        lock(&self.inner.heap).free_bytes
    }

    /// Live allocations in the buffer heap.
    pub fn heap_allocations(&self) -> usize {
        lock(&self.inner.heap).used.len()
    }
}

impl AsFd for GuestRam {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.memfd.as_fd()
    }
}

/// The allocator never panics half way, so a poisoned lock still guards a
/// consistent free list.
fn lock(m: &Mutex<FirstFit>) -> MutexGuard<'_, FirstFit> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn create_memfd(size: u64) -> Result<File, GuestRamError> {
    // SAFETY: the name is a valid NUL-terminated C string that outlives the
    // call; memfd_create only reads it and returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"loadgen-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(GuestRamError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing
    // else owns it; OwnedFd takes over closing it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // ftruncate: a fresh memfd has size 0 and reads as zeros once sized.
    file.set_len(size).map_err(GuestRamError::Resize)?;
    // A backend gets this fd; if it shrank the file, our own accesses to the
    // mapping would SIGBUS. The seal makes shrinking fail instead.
    // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of ours;
    // the fd is valid for the duration of the call (borrowed from `file`).
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK,
        )
    };
    if rc < 0 {
        return Err(GuestRamError::Seal(io::Error::last_os_error()));
    }
    Ok(file)
}

fn round_up(v: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    v.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// First-fit allocator over `[start, end)` of guest-physical space.
///
/// Free blocks are kept by address so a freed block merges with both
/// neighbours in O(log n); that coalescing is what lets a long run of
/// mixed-size allocations keep reusing the same space.
struct FirstFit {
    /// Free blocks: start -> length.
    free: BTreeMap<u64, u64>,
    /// Live allocations: start -> length (so `free` needs only the address).
    used: HashMap<u64, u64>,
    free_bytes: u64,
}

impl FirstFit {
    fn new(start: u64, end: u64) -> Self {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        Self {
            free,
            used: HashMap::new(),
            free_bytes: end.saturating_sub(start),
        }
    }

    fn alloc(&mut self, len: u64, align: u64) -> Result<u64, OutOfGuestMemory> {
        let err = OutOfGuestMemory {
            len,
            align,
            free: self.free_bytes,
        };
        let align = align.max(GRANULE).checked_next_power_of_two().ok_or(err)?;
        let len = round_up(len.max(1), GRANULE).ok_or(err)?;
        let (block, block_len, at) = self
            .free
            .iter()
            .find_map(|(&start, &block_len)| {
                let at = round_up(start, align)?;
                let fits = (at - start).checked_add(len)? <= block_len;
                fits.then_some((start, block_len, at))
            })
            .ok_or(err)?;
        self.free.remove(&block);
        if at > block {
            self.free.insert(block, at - block);
        }
        let tail = block + block_len - (at + len);
        if tail > 0 {
            self.free.insert(at + len, tail);
        }
        self.used.insert(at, len);
        self.free_bytes -= len;
        Ok(at)
    }

    fn free(&mut self, addr: u64) -> bool {
        let Some(len) = self.used.remove(&addr) else {
            return false;
        };
        self.free_bytes += len;
        let (mut start, mut len) = (addr, len);
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..start).next_back() {
            if prev + prev_len == start {
                self.free.remove(&prev);
                start = prev;
                len += prev_len;
            }
        }
        self.free.insert(start, len);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memfd_backs_the_guest_memory_and_starts_zeroed() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let region = ram.memory().find_region(ram.base()).unwrap();
        assert!(vm_memory::GuestMemoryRegion::file_offset(region).is_some());
        assert_eq!(ram.file().metadata().unwrap().len(), 1 << 20);
        let addr = ram.alloc(64, 8).unwrap();
        assert_eq!(ram.memory().read_obj::<u64>(addr).unwrap(), 0);
        ram.memory().write_obj(0xfeed_u64, addr).unwrap();
        // Another mapping of the same fd sees the write: the pages are shared.
        let other = GuestRegionMmap::<()>::from_range(
            GuestAddress(0),
            1 << 20,
            Some(FileOffset::new(ram.file().try_clone().unwrap(), 0)),
        )
        .unwrap();
        let other = GuestMemoryMmap::from_regions(vec![other]).unwrap();
        assert_eq!(other.read_obj::<u64>(addr).unwrap(), 0xfeed);
    }

    #[test]
    fn memfd_cannot_be_shrunk_by_whoever_gets_the_fd() {
        let ram = GuestRam::new(1 << 20).unwrap();
        assert!(ram.file().set_len(4096).is_err());
        assert_ne!(ram.userspace_addr(), 0);
    }

    #[test]
    fn guard_page_and_ring_region_are_never_handed_out_as_buffers() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let cfg = ram.config();
        let addr = ram.alloc(16, 16).unwrap();
        assert!(addr.0 >= cfg.base.0 + PAGE + cfg.ring_region);
        let ring = ram.alloc_ring(16, 16).unwrap();
        assert_eq!(ring.0, cfg.base.0 + PAGE);
        ram.free(ring).unwrap();
    }

    #[test]
    fn allocations_honour_alignment_and_do_not_overlap() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let mut blocks = Vec::new();
        for (i, align) in [1u64, 2, 16, 64, 4096, 3, 100]
            .iter()
            .cycle()
            .take(70)
            .enumerate()
        {
            let len = 1 + (i as u64 * 37) % 500;
            let a = ram.alloc(len, *align).unwrap();
            let want = align.max(&GRANULE).next_power_of_two();
            assert_eq!(a.0 % want, 0);
            blocks.push((a.0, len));
        }
        blocks.sort();
        for w in blocks.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?} overlap");
        }
    }

    #[test]
    fn exhausted_heap_reports_out_of_memory_and_recovers_after_free() {
        let ram = GuestRam::with_config(GuestRamConfig {
            base: GuestAddress(0x10_0000),
            size: 64 << 10,
            ring_region: 4096,
        })
        .unwrap();
        let mut held = Vec::new();
        let err = loop {
            match ram.alloc(4096, 16) {
                Ok(a) => held.push(a),
                Err(e) => break e,
            }
        };
        assert_eq!(err.len, 4096);
        assert!(!held.is_empty());
        ram.free(held.pop().unwrap()).unwrap();
        assert!(ram.alloc(4096, 16).is_ok());
    }

    #[test]
    fn double_free_is_reported_and_leaves_the_free_list_intact() {
        let ram = GuestRam::new(1 << 20).unwrap();
        let before = ram.heap_free();
        let a = ram.alloc(100, 16).unwrap();
        ram.free(a).unwrap();
        assert_eq!(ram.free(a), Err(NotAllocated(a)));
        assert_eq!(
            ram.free(GuestAddress(a.0 + 16)),
            Err(NotAllocated(GuestAddress(a.0 + 16)))
        );
        assert_eq!(ram.heap_free(), before);
        assert_eq!(ram.heap_allocations(), 0);
    }

    #[test]
    fn a_million_alloc_free_cycles_do_not_exhaust_a_small_ram() {
        let ram = GuestRam::new(256 << 10).unwrap();
        let before = ram.heap_free();
        // A sliding window of live blocks of varied sizes and alignments:
        // frees happen out of allocation order, so coalescing is exercised.
        let mut live = std::collections::VecDeque::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..1_000_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = 1 + seed % 2048;
            let align = 1 << ((seed >> 20) % 8);
            live.push_back(ram.alloc(len, align).unwrap());
            if live.len() > 16 {
                let victim = (seed >> 32) as usize % live.len();
                let addr = live.swap_remove_back(victim).unwrap();
                ram.free(addr).unwrap();
            }
        }
        for addr in live {
            ram.free(addr).unwrap();
        }
        assert_eq!(ram.heap_free(), before);
        assert_eq!(ram.heap_allocations(), 0);
        // Everything coalesced back into one block.
        assert!(ram.alloc(before, 16).is_ok());
    }

    #[test]
    fn layouts_that_do_not_fit_are_refused() {
        let cfg = |base, size, ring_region| GuestRamConfig {
            base: GuestAddress(base),
            size,
            ring_region,
        };
        assert!(matches!(
            GuestRam::with_config(cfg(0, 8192, 4096)),
            Err(GuestRamError::Layout(_))
        ));
        assert!(matches!(
            GuestRam::with_config(cfg(100, 1 << 20, 4096)),
            Err(GuestRamError::Layout(_))
        ));
        assert!(matches!(
            GuestRam::with_config(cfg(u64::MAX - 4095, 1 << 20, 4096)),
            Err(GuestRamError::Layout(_))
        ));
    }
}
