//! `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD`: the shared buffer in which a
//! backend records the descriptors it has taken but not yet completed, so a
//! backend started after it dies can resubmit them (the vhost-user spec's
//! "Inflight I/O tracking", split virtqueue layout).
//!
//! The buffer is allocated here (`GET_INFLIGHT_FD`) and handed to the
//! frontend, which keeps it across reconnects and gives it back
//! (`SET_INFLIGHT_FD`) to every later backend. Both sides map it; a
//! [`QueueRegion`] is one queue's part, and the device records into it on
//! the owner shard (the [`InflightLog`] hooks: a few stores per command):
//!
//! - a head taken from the avail ring: `counter` = next counter, then
//!   `inflight` = 1;
//! - a head put in the used ring: `next` = `last_batch_head`,
//!   `last_batch_head` = head, the used element and `used.idx` written,
//!   then `inflight` = 0 and `used_idx` = `used.idx`. Every used element is
//!   its own batch of one (the device writes `used.idx` per element).
//!
//! A new session's first start of a ring [`recovers`](QueueRegion::recover):
//! when `used_idx` lags the used ring's `idx`, the backend died between
//! writing a used element and clearing its mark, so `last_batch_head` is
//! cleared; the heads still marked are resubmitted in counter order, and
//! the ring goes on from `used.idx` + their number (every head taken is
//! either used or still marked).
//!
//! The stores are atomics (release order where a later store must not be
//! seen first): the process may be killed between any two of them, and the
//! memory outlives it.
//!
//! The VMM holds the same file, and a shared mapping past the end of a file
//! faults (SIGBUS) on first touch: one bad `SET_INFLIGHT_FD` would take
//! every desktop of the daemon down. The VMM is trusted more than a guest,
//! but not to that point, so a buffer is taken only when it is long enough
//! (`fstat`) *and* can never get shorter: sealed with `F_SEAL_SHRINK`
//! (added here when the file allows sealing, as memfds made with
//! `MFD_ALLOW_SEALING` do). Sealed first, then measured, so the size
//! checked is the size kept. Buffers allocated here are sealed against
//! shrinking and growing, and against further seals (a write seal would
//! make a later backend's shared mapping fail). A buffer that cannot be
//! sealed (not a memfd, or one made without `MFD_ALLOW_SEALING`) is
//! refused: that session runs without inflight tracking, and what a dead
//! backend left in flight in it is not resubmitted.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;

use crate::device::InflightLog;

/// `struct inflight_split_region` header: features u64, version u16,
/// desc_num u16, last_batch_head u16, used_idx u16.
const REGION_HEADER: u64 = 16;
/// `struct inflight_split_desc`: inflight u8, padding[5], next u16, counter u64.
const DESC_SIZE: u64 = 16;
/// Each queue's region starts on a cache line.
const ALIGN: u64 = 64;
/// Current layout version.
const VERSION: u16 = 1;
/// Largest split queue the spec allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// More queues than a GPU has is a malformed request.
const MAX_QUEUES: u16 = 8;

/// Bytes of inflight buffer for one split queue of `queue_size` entries.
pub fn split_queue_region_size(queue_size: u16) -> u64 {
    (REGION_HEADER + DESC_SIZE * u64::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// The buffer given to (or received from) the frontend.
#[derive(Debug)]
pub struct InflightBuffer {
    pub fd: OwnedFd,
    pub size: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

/// Why an inflight request was refused.
#[derive(Debug)]
pub enum InflightError {
    /// The request itself breaks the protocol (queue counts, layout).
    Malformed(String),
    /// The file is shorter than the mapping asked for: touching the end
    /// would fault.
    BeyondFile {
        mapped: u64,
        file_size: u64,
    },
    /// The file may still shrink under the mapping (no `F_SEAL_SHRINK`,
    /// and it cannot be added).
    NotSealed(String),
    Io(io::Error),
}

impl InflightError {
    /// A well-formed request with a buffer this backend will not map (the
    /// frontend is told, the session goes on), rather than a protocol
    /// violation.
    pub fn is_unusable_buffer(&self) -> bool {
        !matches!(self, InflightError::Malformed(_))
    }
}

impl std::fmt::Display for InflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflightError::Malformed(why) => write!(f, "inflight request: {why}"),
            InflightError::BeyondFile { mapped, file_size } => write!(
                f,
                "inflight buffer of {mapped} bytes in a {file_size}-byte file (a mapping past the end faults)"
            ),
            InflightError::NotSealed(why) => write!(
                f,
                "inflight buffer not sealed against shrinking (F_SEAL_SHRINK): {why}"
            ),
            InflightError::Io(e) => write!(f, "inflight buffer: {e}"),
        }
    }
}

/// Makes sure the file behind `fd` holds `len` bytes and always will:
/// `F_SEAL_SHRINK` added (or already there), then the size measured.
fn ensure_sealed_size(fd: BorrowedFd<'_>, len: u64) -> Result<(), InflightError> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on an fd we hold, with an integer argument; failure
    // (not a memfd, or F_SEAL_SEAL already set) is judged from the seals
    // read next.
    unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    // SAFETY: as above, no argument.
    let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
    if seals < 0 {
        let e = io::Error::last_os_error();
        return Err(InflightError::NotSealed(format!(
            "not a sealable file ({e})"
        )));
    }
    if seals & libc::F_SEAL_SHRINK == 0 {
        return Err(InflightError::NotSealed(
            "the file does not allow adding seals (memfd made without MFD_ALLOW_SEALING?)".into(),
        ));
    }
    let meta = File::from(fd.try_clone_to_owned().map_err(InflightError::Io)?)
        .metadata()
        .map_err(InflightError::Io)?;
    if !meta.is_file() || meta.len() < len {
        return Err(InflightError::BeyondFile {
            mapped: len,
            file_size: meta.len(),
        });
    }
    Ok(())
}

fn check(req: &VhostUserInflight) -> Result<(), InflightError> {
    let (n, q) = (req.num_queues, req.queue_size);
    if n == 0 || n > MAX_QUEUES || q == 0 || q > MAX_QUEUE_SIZE {
        return Err(InflightError::Malformed(format!(
            "{n} queues of {q} entries (1..={MAX_QUEUES} queues of 1..={MAX_QUEUE_SIZE})"
        )));
    }
    Ok(())
}

/// `GET_INFLIGHT_FD`: a zeroed memfd with every queue's region header
/// initialised (version, descriptor count).
pub fn allocate(req: &VhostUserInflight) -> Result<InflightBuffer, InflightError> {
    check(req)?;
    let per_queue = split_queue_region_size(req.queue_size);
    let size = per_queue * u64::from(req.num_queues);
    // SAFETY: a static NUL-terminated name; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"gpu-reactor-inflight".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(InflightError::Io(io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = File::from(fd);
    file.set_len(size).map_err(InflightError::Io)?;
    let mut header = [0u8; REGION_HEADER as usize];
    header[8..10].copy_from_slice(&VERSION.to_ne_bytes());
    header[10..12].copy_from_slice(&req.queue_size.to_ne_bytes());
    for q in 0..u64::from(req.num_queues) {
        file.seek(SeekFrom::Start(q * per_queue))
            .and_then(|_| file.write_all(&header))
            .map_err(InflightError::Io)?;
    }
    // Fixed size for its whole life, whoever holds it (see the module doc).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on the fd `file` owns, integer argument; checked.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(InflightError::Io(io::Error::last_os_error()));
    }
    Ok(InflightBuffer {
        fd: file.into(),
        size,
        num_queues: req.num_queues,
        queue_size: req.queue_size,
    })
}

/// `SET_INFLIGHT_FD`: takes the frontend's buffer (checked against the size
/// its queues need, and against its file: long enough and sealed against
/// shrinking, see the module doc).
pub fn adopt(req: &VhostUserInflight, fd: OwnedFd) -> Result<InflightBuffer, InflightError> {
    check(req)?;
    let (size, offset) = (req.mmap_size, req.mmap_offset);
    let need = split_queue_region_size(req.queue_size) * u64::from(req.num_queues);
    if offset != 0 || size < need {
        return Err(InflightError::Malformed(format!(
            "buffer of {size} bytes at offset {offset} (need {need} at 0)"
        )));
    }
    ensure_sealed_size(fd.as_fd(), size)?;
    Ok(InflightBuffer {
        fd,
        size,
        num_queues: req.num_queues,
        queue_size: req.queue_size,
    })
}

/// An inflight buffer mapped shared; unmapped when the last queue using it
/// is gone.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// atomics at checked offsets (`QueueRegion`), so it may move between
// threads (the session thread maps it, the owner shard writes it).
unsafe impl Send for Mapping {}
// SAFETY: as above: only atomic accesses, never a reference to plain data.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing
        // borrows the memory any more (the last `Arc` is going).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A mapped inflight buffer: one region per queue.
#[derive(Debug, Clone)]
pub struct InflightRegion {
    map: Arc<Mapping>,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl InflightRegion {
    /// Maps `buf` read-write, shared with the frontend.
    pub fn map(buf: &InflightBuffer) -> Result<InflightRegion, InflightError> {
        let len = usize::try_from(buf.size)
            .map_err(|_| InflightError::Malformed(format!("{} bytes", buf.size)))?;
        let need = split_queue_region_size(buf.queue_size) * u64::from(buf.num_queues);
        if (len as u64) < need {
            return Err(InflightError::Malformed(format!(
                "{len} bytes for {} queues of {} (need {need})",
                buf.num_queues, buf.queue_size
            )));
        }
        ensure_sealed_size(buf.fd.as_fd(), len as u64)?;
        // SAFETY: a fresh shared mapping of the whole buffer: its size was
        // checked above against what the queues need, and its file holds
        // `len` bytes and is sealed against shrinking, so no page of the
        // mapping lies past the end of the file, now or later (no SIGBUS);
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                buf.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(InflightError::Io(io::Error::last_os_error()));
        }
        Ok(InflightRegion {
            map: Arc::new(Mapping {
                ptr: ptr.cast(),
                len,
            }),
            num_queues: buf.num_queues,
            queue_size: buf.queue_size,
        })
    }

    /// Queue `index`'s part (`None` past the last queue).
    pub fn queue(&self, index: usize) -> Option<QueueRegion> {
        if index >= usize::from(self.num_queues) {
            return None;
        }
        let offset = split_queue_region_size(self.queue_size) as usize * index;
        let q = QueueRegion {
            map: self.map.clone(),
            offset,
            desc_num: self.queue_size,
            counter: 0,
        };
        let counter = (0..q.desc_num)
            .filter(|&i| q.inflight(i))
            .map(|i| q.counter(i))
            .max()
            .map_or(0, |c| c.wrapping_add(1));
        Some(QueueRegion { counter, ..q })
    }
}

/// What a ring resumes from after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Heads to run again, in the order they were taken.
    pub resubmit: Vec<u16>,
    /// The next avail index to read: `used.idx` + resubmitted heads.
    pub next_avail: u16,
    /// The previous backend died between writing a used element and
    /// clearing its mark (that head is not resubmitted).
    pub fixed_last_batch: bool,
}

/// One split queue's region: header (features u64, version u16, desc_num
/// u16, last_batch_head u16, used_idx u16) and `desc_num` entries of
/// (inflight u8, padding, next u16, counter u64).
#[derive(Debug)]
pub struct QueueRegion {
    map: Arc<Mapping>,
    offset: usize,
    desc_num: u16,
    /// The counter the next taken head gets.
    counter: u64,
}

const VERSION_AT: usize = 8;
const DESC_NUM_AT: usize = 10;
const LAST_BATCH_HEAD_AT: usize = 12;
const USED_IDX_AT: usize = 14;
const DESC_NEXT_AT: usize = 6;
const DESC_COUNTER_AT: usize = 8;

impl QueueRegion {
    fn at(&self, byte: usize) -> *mut u8 {
        debug_assert!(self.offset + byte < self.map.len);
        // SAFETY: callers pass offsets inside this queue's region (header
        // fields, or an entry below `desc_num`), which `InflightRegion::map`
        // checked lies inside the mapping.
        unsafe { self.map.ptr.add(self.offset + byte) }
    }

    fn u8_at(&self, byte: usize) -> &AtomicU8 {
        // SAFETY: in the mapping (see `at`), alignment 1, and only ever
        // accessed atomically while the mapping lives (`self.map`).
        unsafe { &*self.at(byte).cast::<AtomicU8>() }
    }

    fn u16_at(&self, byte: usize) -> &AtomicU16 {
        // SAFETY: as `u8_at`; every u16 field is at an even offset of a
        // 64-byte aligned region.
        unsafe { &*self.at(byte).cast::<AtomicU16>() }
    }

    fn u64_at(&self, byte: usize) -> &AtomicU64 {
        // SAFETY: as `u8_at`; `counter` is at offset 8 of a 16-byte entry
        // that starts 16 bytes into a 64-byte aligned region.
        unsafe { &*self.at(byte).cast::<AtomicU64>() }
    }

    fn desc(i: u16) -> usize {
        REGION_HEADER as usize + DESC_SIZE as usize * usize::from(i)
    }

    fn inflight(&self, i: u16) -> bool {
        self.u8_at(Self::desc(i)).load(Ordering::Acquire) == 1
    }

    fn counter(&self, i: u16) -> u64 {
        self.u64_at(Self::desc(i) + DESC_COUNTER_AT)
            .load(Ordering::Acquire)
    }

    /// Entries in this queue's region.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }

    /// The `used_idx` the last completion recorded.
    pub fn used_idx(&self) -> u16 {
        self.u16_at(USED_IDX_AT).load(Ordering::Acquire)
    }

    /// Heads marked in flight, in the order they were taken.
    pub fn marked(&self) -> Vec<u16> {
        let mut heads: Vec<u16> = (0..self.desc_num).filter(|&i| self.inflight(i)).collect();
        heads.sort_by_key(|&i| self.counter(i));
        heads
    }

    /// Takes the region up at a ring's first start in a session:
    /// `used_idx_now` is the used ring's `idx` in guest memory, `ring_size`
    /// the ring's size (at most `desc_num`).
    pub fn recover(
        &mut self,
        used_idx_now: u16,
        ring_size: u16,
    ) -> Result<Recovery, InflightError> {
        let version = self.u16_at(VERSION_AT).load(Ordering::Acquire);
        let desc_num = self.u16_at(DESC_NUM_AT).load(Ordering::Acquire);
        if version == 0 {
            // A buffer nobody has used: initialise it.
            self.u16_at(DESC_NUM_AT)
                .store(self.desc_num, Ordering::Relaxed);
            self.u16_at(USED_IDX_AT)
                .store(used_idx_now, Ordering::Relaxed);
            self.u16_at(VERSION_AT).store(VERSION, Ordering::Release);
        } else if version != VERSION || desc_num != self.desc_num {
            return Err(InflightError::Malformed(format!(
                "queue region version {version} with {desc_num} entries (expected version {VERSION}, {} entries)",
                self.desc_num
            )));
        }
        if ring_size > self.desc_num {
            return Err(InflightError::Malformed(format!(
                "ring of {ring_size} entries, region of {}",
                self.desc_num
            )));
        }
        let mut fixed_last_batch = false;
        if self.used_idx() != used_idx_now {
            let head = self.u16_at(LAST_BATCH_HEAD_AT).load(Ordering::Acquire);
            if head < self.desc_num {
                self.u8_at(Self::desc(head)).store(0, Ordering::Release);
            }
            self.u16_at(USED_IDX_AT)
                .store(used_idx_now, Ordering::Release);
            fixed_last_batch = true;
        }
        let resubmit = self.marked();
        if let Some(&bad) = resubmit.iter().find(|&&h| h >= ring_size) {
            return Err(InflightError::Malformed(format!(
                "head {bad} marked in flight on a ring of {ring_size}"
            )));
        }
        let next_avail = used_idx_now.wrapping_add(resubmit.len() as u16);
        Ok(Recovery {
            resubmit,
            next_avail,
            fixed_last_batch,
        })
    }
}

impl InflightLog for QueueRegion {
    fn taken(&mut self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let d = Self::desc(head);
        self.u64_at(d + DESC_COUNTER_AT)
            .store(self.counter, Ordering::Relaxed);
        self.counter = self.counter.wrapping_add(1);
        // Release: the counter is in place before the mark says so.
        self.u8_at(d).store(1, Ordering::Release);
    }

    fn completing(&mut self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let last = self.u16_at(LAST_BATCH_HEAD_AT).load(Ordering::Relaxed);
        self.u16_at(Self::desc(head) + DESC_NEXT_AT)
            .store(last, Ordering::Relaxed);
        // Release, and the used ring's idx store after it is a release too:
        // the batch head is recorded before the element can be seen.
        self.u16_at(LAST_BATCH_HEAD_AT)
            .store(head, Ordering::Release);
    }

    fn completed(&mut self, head: u16, used_idx: u16) {
        if head >= self.desc_num {
            return;
        }
        // Release: the used ring's idx (written before) comes first.
        self.u8_at(Self::desc(head)).store(0, Ordering::Release);
        self.u16_at(USED_IDX_AT).store(used_idx, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn split_queue_size_follows_the_spec_layout() {
        assert_eq!(split_queue_region_size(256), 16 + 16 * 256 + 48);
        assert_eq!(split_queue_region_size(1024) % 64, 0);
    }

    #[test]
    fn allocated_buffer_has_initialised_headers() {
        let req = VhostUserInflight::new(0, 0, 2, 256);
        let b = allocate(&req).unwrap();
        assert_eq!(b.size, 2 * split_queue_region_size(256));
        let mut f = File::from(b.fd);
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        let second = split_queue_region_size(256) as usize;
        assert_eq!(&all[8..12], &[1, 0, 0, 1]);
        assert_eq!(&all[second + 8..second + 12], &[1, 0, 0, 1]);
        assert!(allocate(&VhostUserInflight::new(0, 0, 0, 256)).is_err());
    }

    fn region(queues: u16, size: u16) -> InflightRegion {
        let buf = allocate(&VhostUserInflight::new(0, 0, queues, size)).unwrap();
        InflightRegion::map(&buf).unwrap()
    }

    #[test]
    fn a_fresh_region_resubmits_nothing_and_resumes_at_the_used_index() {
        let r = region(2, 8);
        let mut q = r.queue(0).unwrap();
        let rec = q.recover(5, 8).unwrap();
        assert_eq!(rec.resubmit, Vec::<u16>::new());
        assert_eq!(rec.next_avail, 5);
        assert!(r.queue(2).is_none());
    }

    #[test]
    fn heads_taken_and_not_completed_come_back_in_the_order_taken() {
        let r = region(2, 8);
        let mut q = r.queue(1).unwrap();
        q.recover(0, 8).unwrap();
        for head in [5, 2, 7, 0] {
            q.taken(head);
        }
        // Out of order: 2 then 5 complete (used idx 1, 2).
        q.completing(2);
        q.completed(2, 1);
        q.completing(5);
        q.completed(5, 2);
        // A later backend maps the same buffer.
        let mut again = r.queue(1).unwrap();
        let rec = again.recover(2, 8).unwrap();
        assert_eq!(rec.resubmit, vec![7, 0]);
        assert_eq!(rec.next_avail, 4);
        assert!(!rec.fixed_last_batch);
        // New heads are counted after the old ones.
        again.taken(3);
        assert_eq!(r.queue(1).unwrap().marked(), vec![7, 0, 3]);
        // Queue 0's region is untouched.
        assert!(r.queue(0).unwrap().marked().is_empty());
    }

    #[test]
    fn a_death_between_the_used_ring_and_the_mark_does_not_resubmit_that_head() {
        let r = region(1, 4);
        let mut q = r.queue(0).unwrap();
        q.recover(0, 4).unwrap();
        q.taken(1);
        q.taken(3);
        q.completing(3);
        // The used element for 3 reached the ring (idx 1), then the backend
        // died before `completed`.
        let rec = r.queue(0).unwrap().recover(1, 4).unwrap();
        assert!(rec.fixed_last_batch);
        assert_eq!(rec.resubmit, vec![1]);
        assert_eq!(rec.next_avail, 2);
        assert_eq!(r.queue(0).unwrap().used_idx(), 1);
    }

    #[test]
    fn a_region_that_does_not_fit_the_ring_is_refused() {
        let r = region(1, 4);
        assert!(r.queue(0).unwrap().recover(0, 8).is_err());
        let mut q = r.queue(0).unwrap();
        q.recover(0, 4).unwrap();
        q.taken(3);
        assert!(
            r.queue(0).unwrap().recover(0, 2).is_err(),
            "head 3 on a ring of 2"
        );
    }
}
