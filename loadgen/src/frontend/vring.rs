//! The driver side of a split virtqueue (virtio 1.3, 2.7), in guest RAM.
//!
//! [`DriverQueue`] writes descriptor chains and the available ring the way the
//! Linux virtio driver does, decides when the device must be kicked, and reads
//! the used ring back. It treats the device as untrusted: a used ring entry is
//! checked against what the driver itself put in flight before anything is
//! freed, and the free list lives in this process (never re-read from guest
//! memory), so a device that writes garbage gets a [`DriverError`] and cannot
//! corrupt the driver's state.
//!
//! Memory ordering, as the spec's "Supplying Buffers" and "Receiving Used
//! Buffers" steps ask:
//! - descriptors and avail entries are plain writes, made visible by a
//!   release store of `avail.idx` in [`DriverQueue::publish`];
//! - a full fence separates that store from reading `used.flags` /
//!   `avail_event`, and separates writing `used_event` from re-reading
//!   `used.idx`, so neither a kick nor an interrupt can be missed;
//! - `used.idx` is loaded with acquire before its entries are read.

use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError, Le16, Le32};

use super::guest_ram::{GuestRam, OutOfGuestMemory};

/// `virtq_desc.flags`: the chain continues at `next`.
const DESC_F_NEXT: u16 = 1;
/// `virtq_desc.flags`: the device writes this buffer.
const DESC_F_WRITE: u16 = 2;
/// `virtq_desc.flags`: the buffer is a table of descriptors.
const DESC_F_INDIRECT: u16 = 4;
/// `virtq_used.flags`: the device does not need kicks (no EVENT_IDX).
const USED_F_NO_NOTIFY: u16 = 1;
/// `virtq_avail.flags`: the driver does not need interrupts (no EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

const DESC_SIZE: u64 = 16;
/// `flags` + `idx` before the ring entries, in both rings.
const RING_HEADER: u64 = 4;
const AVAIL_ELEM: u64 = 2;
const USED_ELEM: u64 = 8;
/// Largest split queue the spec allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// The used ring starts on its own cache line: the driver writes the avail
/// ring while the device writes the used ring, often from another core.
const USED_RING_ALIGN: u64 = 64;

/// Negotiated features that change how the rings are driven.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueFeatures {
    /// `VIRTIO_F_EVENT_IDX`: kicks and interrupts are suppressed with
    /// `avail_event` / `used_event` instead of the ring flags.
    pub event_idx: bool,
    /// `VIRTIO_F_INDIRECT_DESC`: multi-buffer chains may use one ring
    /// descriptor pointing at a table in guest RAM.
    pub indirect: bool,
}

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address of the buffer.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (`VIRTQ_DESC_F_WRITE`); otherwise it only reads.
    pub device_writes: bool,
}

impl Buf {
    /// A buffer the device reads (a command).
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: false,
        }
    }

    /// A buffer the device writes (a response).
    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// A completed chain, as the device returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The head descriptor `add` returned for the chain.
    pub head: u16,
    /// Bytes the device says it wrote, checked to fit the writable buffers.
    pub len: u32,
}

/// A queue could not be set up.
#[derive(Debug)]
pub enum QueueSetupError {
    /// Split queue sizes are powers of two from 1 to 32768.
    InvalidSize(u16),
    /// The ring region of guest RAM has no room for the rings.
    OutOfGuestMemory(OutOfGuestMemory),
    /// Zeroing the rings failed.
    GuestMemory(GuestMemoryError),
}

impl fmt::Display for QueueSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSize(n) => write!(f, "queue size {n} is not a power of two in 1..=32768"),
            Self::OutOfGuestMemory(e) => write!(f, "no room for the rings: {e}"),
            Self::GuestMemory(e) => write!(f, "zeroing the rings failed: {e}"),
        }
    }
}

impl std::error::Error for QueueSetupError {}

/// A chain could not be added. The queue is unchanged.
#[derive(Debug)]
pub enum AddError {
    /// Not enough free descriptors now; complete some chains and retry.
    QueueFull {
        /// Descriptors the chain needs (1 when it goes indirect).
        needed: u16,
        /// Descriptors free.
        free: u16,
    },
    /// A chain has at least one buffer.
    EmptyChain,
    /// Readable buffers must all come before writable ones (spec 2.7.4.2,
    /// "Message Framing"); `index` is the first readable after a writable.
    ReadableAfterWritable {
        /// Position of the offending buffer in the slice.
        index: usize,
    },
    /// A chain is never longer than the queue size, indirect or not.
    TooManyBuffers {
        /// Buffers given.
        count: usize,
        /// The queue size.
        max: u16,
    },
    /// A chain holds fewer than 2^32 bytes in total (spec 2.7.5.1).
    TooManyBytes {
        /// Total bytes given.
        bytes: u64,
    },
    /// Writing the descriptors failed (an internal bug: the rings are
    /// allocated inside guest RAM).
    GuestMemory(GuestMemoryError),
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull { needed, free } => {
                write!(
                    f,
                    "queue full: chain needs {needed} descriptors, {free} free"
                )
            }
            Self::EmptyChain => write!(f, "a descriptor chain needs at least one buffer"),
            Self::ReadableAfterWritable { index } => {
                write!(
                    f,
                    "buffer {index} is device-readable but follows a writable one"
                )
            }
            Self::TooManyBuffers { count, max } => {
                write!(f, "{count} buffers in one chain, the queue size is {max}")
            }
            Self::TooManyBytes { bytes } => {
                write!(f, "chain of {bytes} bytes does not fit in 32 bits")
            }
            Self::GuestMemory(e) => write!(f, "writing the chain failed: {e}"),
        }
    }
}

impl std::error::Error for AddError {}

/// The device broke the used-ring contract. The offending entry is not
/// consumed and nothing is freed: calling again reports the same error.
#[derive(Debug)]
pub enum DriverError {
    /// `used.idx` moved further past the last entry the driver read than the
    /// ring has slots.
    UsedIdxJump {
        /// The driver's last-seen used index.
        last_used: u16,
        /// What the device wrote.
        used_idx: u16,
    },
    /// A used entry names a descriptor outside the table.
    UsedIdOutOfRange {
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// A used entry names a descriptor that is not the head of a chain in
    /// flight (free, in the middle of a chain, or already completed).
    UsedIdNotInFlight {
        /// The id the device wrote.
        id: u16,
    },
    /// A used entry claims more bytes written than the chain's writable
    /// buffers hold.
    UsedLenTooLarge {
        /// The chain's head.
        head: u16,
        /// The length the device wrote.
        len: u32,
        /// Total bytes of the chain's writable buffers.
        writable: u64,
    },
    /// Reading or writing the rings failed (an internal bug: the rings are
    /// allocated inside guest RAM).
    GuestMemory(GuestMemoryError),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UsedIdxJump {
                last_used,
                used_idx,
            } => write!(
                f,
                "device moved used idx from {last_used} to {used_idx}, past the ring size"
            ),
            Self::UsedIdOutOfRange { id, size } => {
                write!(f, "device used id {id}, queue size is {size}")
            }
            Self::UsedIdNotInFlight { id } => {
                write!(
                    f,
                    "device used id {id}, which is not a chain head in flight"
                )
            }
            Self::UsedLenTooLarge {
                head,
                len,
                writable,
            } => write!(
                f,
                "device wrote {len} bytes to chain {head}, which has {writable} writable bytes"
            ),
            Self::GuestMemory(e) => write!(f, "ring access failed: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}

impl From<GuestMemoryError> for DriverError {
    fn from(e: GuestMemoryError) -> Self {
        Self::GuestMemory(e)
    }
}

/// What the driver remembers about a chain it handed to the device.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Ring descriptors the chain holds (1 when indirect).
    descs: u16,
    /// The indirect table to give back to guest RAM on completion.
    indirect: Option<GuestAddress>,
    /// Total bytes of writable buffers: the most `len` can say.
    writable: u64,
}

/// A split virtqueue, driver side, with its rings in [`GuestRam`].
///
/// Chains are added with [`add`](Self::add), made visible with
/// [`publish`](Self::publish) (which says whether to kick), and come back
/// through [`take_used`](Self::take_used). Dropping the queue returns its
/// rings and indirect tables to guest RAM, so drop it only once the device
/// has stopped using it (after a device reset).
pub struct DriverQueue {
    ram: GuestRam,
    size: u16,
    features: QueueFeatures,
    ring_block: GuestAddress,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    /// The `next` each descriptor was written with. Chains are freed by
    /// walking this copy: the device could overwrite the table in guest RAM.
    next: Vec<u16>,
    /// Free descriptor indices; the most recently freed is reused first
    /// (still warm in cache, as in Linux).
    free: Vec<u16>,
    /// Per descriptor: `Some` while it heads a chain in flight.
    heads: Vec<Option<InFlight>>,
    in_flight: u16,
    /// Next avail slot to fill; ahead of `published` until `publish`.
    avail_idx: Wrapping<u16>,
    published: Wrapping<u16>,
    /// Next used slot to read.
    last_used: Wrapping<u16>,
    /// Interrupt after this many more completions (0: no interrupts).
    irq_threshold: u16,
    /// Last value written to `avail.flags` (no EVENT_IDX only).
    avail_flags: u16,
}

impl fmt::Debug for DriverQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DriverQueue")
            .field("size", &self.size)
            .field("features", &self.features)
            .field("desc_table", &self.desc_table)
            .field("in_flight", &self.in_flight)
            .field("num_free", &self.free.len())
            .field("avail_idx", &self.avail_idx.0)
            .field("last_used", &self.last_used.0)
            .finish_non_exhaustive()
    }
}

impl DriverQueue {
    /// Allocates zeroed rings for a queue of `size` entries in `ram`'s ring
    /// region, laid out descriptor table, avail ring (with `used_event`),
    /// used ring (with `avail_event`), each with the spec's alignment.
    pub fn new(
        ram: &GuestRam,
        size: u16,
        features: QueueFeatures,
    ) -> Result<Self, QueueSetupError> {
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueSetupError::InvalidSize(size));
        }
        let n = u64::from(size);
        let avail_off = DESC_SIZE * n;
        // flags, idx, ring[n], used_event
        let avail_len = RING_HEADER + AVAIL_ELEM * n + 2;
        let used_off = (avail_off + avail_len).next_multiple_of(USED_RING_ALIGN);
        // flags, idx, ring[n], avail_event
        let used_len = RING_HEADER + USED_ELEM * n + 2;
        let total = used_off + used_len;

        let block = ram
            .alloc_ring(total, USED_RING_ALIGN)
            .map_err(QueueSetupError::OutOfGuestMemory)?;
        // Ring space is reused after a queue is dropped: start from zeros,
        // which is what flags, idx and the event fields must begin at.
        // total < 1 MiB for the largest queue, so it fits in usize.
        if let Err(e) = ram.memory().write_slice(&vec![0u8; total as usize], block) {
            let _ = ram.free(block);
            return Err(QueueSetupError::GuestMemory(e));
        }

        Ok(Self {
            ram: ram.clone(),
            size,
            features,
            ring_block: block,
            desc_table: block,
            avail_ring: GuestAddress(block.0 + avail_off),
            used_ring: GuestAddress(block.0 + used_off),
            next: vec![0; usize::from(size)],
            free: (0..size).rev().collect(),
            heads: vec![None; usize::from(size)],
            in_flight: 0,
            avail_idx: Wrapping(0),
            published: Wrapping(0),
            last_used: Wrapping(0),
            irq_threshold: 1,
            avail_flags: 0,
        })
    }

    /// Guest address of the descriptor table (for the device's queue setup).
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// Guest address of the available ring.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Guest address of the used ring.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// Ring position of the next used entry `pop_used` will return.
    pub fn next_used(&self) -> u16 {
        self.last_used.0
    }

    /// The used ring's `idx` as the device last wrote it (what a VMM reads
    /// to restart a ring whose backend died: QEMU's
    /// `virtio_queue_restore_last_avail_idx`).
    pub fn used_idx(&self) -> Result<u16, DriverError> {
        let mem = self.ram.memory();
        let idx: u16 = mem.load(self.used_ring.unchecked_add(2), Ordering::Acquire)?;
        Ok(u16::from_le(idx))
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The features this queue was set up with.
    pub fn features(&self) -> QueueFeatures {
        self.features
    }

    /// Whether descriptor `head` heads a chain the device has not given
    /// back yet.
    pub fn is_in_flight(&self, head: u16) -> bool {
        self.heads
            .get(usize::from(head))
            .is_some_and(Option::is_some)
    }

    /// Chains added (published or not) and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Free descriptors in the table.
    pub fn num_free(&self) -> u16 {
        // At most `size` entries, and size <= 32768.
        self.free.len() as u16
    }

    /// Chains added since the last `publish`, not yet visible to the device.
    pub fn unpublished(&self) -> u16 {
        (self.avail_idx - self.published).0
    }

    /// Writes a chain (readable buffers first, then writable) and queues its
    /// head in the avail ring; the device sees it after [`publish`](Self::publish).
    ///
    /// With `indirect` negotiated, a chain of more than one buffer goes into
    /// an indirect table from guest RAM and takes one ring descriptor; if the
    /// heap is exhausted it falls back to direct descriptors, as Linux does.
    pub fn add(&mut self, bufs: &[Buf]) -> Result<u16, AddError> {
        let count = bufs.len();
        if count == 0 {
            return Err(AddError::EmptyChain);
        }
        if count > usize::from(self.size) {
            return Err(AddError::TooManyBuffers {
                count,
                max: self.size,
            });
        }
        if let Some(index) = bufs
            .windows(2)
            .position(|w| w[0].device_writes && !w[1].device_writes)
        {
            return Err(AddError::ReadableAfterWritable { index: index + 1 });
        }
        let bytes: u64 = bufs.iter().map(|b| u64::from(b.len)).sum();
        // Devices sum lengths in a u32 (virtio-queue stops the chain on overflow).
        if bytes > u64::from(u32::MAX) {
            return Err(AddError::TooManyBytes { bytes });
        }
        let writable: u64 = bufs
            .iter()
            .filter(|b| b.device_writes)
            .map(|b| u64::from(b.len))
            .sum();
        // count <= size <= 32768 was checked above.
        let count = count as u16;

        let want_indirect = self.features.indirect && count > 1;
        if self.free.is_empty() || (!want_indirect && self.free.len() < usize::from(count)) {
            return Err(AddError::QueueFull {
                needed: if want_indirect { 1 } else { count },
                free: self.num_free(),
            });
        }
        let table = if want_indirect {
            self.ram.alloc(DESC_SIZE * u64::from(count), DESC_SIZE).ok()
        } else {
            None
        };
        let head = match table {
            Some(table) => self.write_indirect(table, bufs).inspect_err(|_| {
                let _ = self.ram.free(table);
            })?,
            None if self.free.len() < usize::from(count) => {
                return Err(AddError::QueueFull {
                    needed: count,
                    free: self.num_free(),
                })
            }
            None => self.write_direct(bufs)?,
        };

        let slot = self.avail_slot(self.avail_idx);
        if let Err(e) = self.ram.memory().write_obj(Le16::from(head), slot) {
            if let Some(table) = table {
                let _ = self.ram.free(table);
            }
            return Err(AddError::GuestMemory(e));
        }
        self.heads[usize::from(head)] = Some(InFlight {
            descs: if table.is_some() { 1 } else { count },
            indirect: table,
            writable,
        });
        let used = if table.is_some() {
            1
        } else {
            usize::from(count)
        };
        self.free.truncate(self.free.len() - used);
        self.in_flight += 1;
        self.avail_idx += 1;
        Ok(head)
    }

    /// Makes every added chain visible to the device and says whether the
    /// device must be kicked: with EVENT_IDX when the new avail entries
    /// cross the device's `avail_event` (the spec's `vring_need_event`),
    /// otherwise unless the device set `VRING_USED_F_NO_NOTIFY`.
    pub fn publish(&mut self) -> Result<bool, DriverError> {
        let old = self.published;
        let new = self.avail_idx;
        if old == new {
            return Ok(false);
        }
        let mem = self.ram.memory();
        // Release: descriptors and avail entries are visible before idx.
        mem.store(
            new.0.to_le(),
            self.avail_ring.unchecked_add(2),
            Ordering::Release,
        )?;
        self.published = new;
        // The idx store must be visible before we read the device's
        // suppression state, or a device going to sleep is never woken.
        fence(Ordering::SeqCst);
        if self.features.event_idx {
            let event = Wrapping(u16::from_le(
                mem.load(self.avail_event_addr(), Ordering::Acquire)?,
            ));
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(mem.load(self.used_ring, Ordering::Acquire)?);
            Ok(flags & USED_F_NO_NOTIFY == 0)
        }
    }

    /// Reads one new used entry, if any, checks it against the chains in
    /// flight and frees its descriptors and indirect table.
    ///
    /// Does not re-arm interrupts: call [`rearm_interrupts`](Self::rearm_interrupts)
    /// after the last one, or use [`take_used`](Self::take_used).
    pub fn pop_used(&mut self) -> Result<Option<Used>, DriverError> {
        let mem = self.ram.memory();
        // Acquire: the entries below were written before idx.
        let used_idx = Wrapping(u16::from_le(
            mem.load(self.used_ring.unchecked_add(2), Ordering::Acquire)?,
        ));
        let pending = used_idx - self.last_used;
        if pending.0 > self.size {
            return Err(DriverError::UsedIdxJump {
                last_used: self.last_used.0,
                used_idx: used_idx.0,
            });
        }
        if pending.0 == 0 {
            return Ok(None);
        }
        let elem = self.used_slot(self.last_used);
        let id: u32 = mem.read_obj::<Le32>(elem)?.into();
        let len: u32 = mem.read_obj::<Le32>(elem.unchecked_add(4))?.into();
        if id >= u32::from(self.size) {
            return Err(DriverError::UsedIdOutOfRange {
                id,
                size: self.size,
            });
        }
        // id < size <= 32768.
        let head = id as u16;
        let Some(chain) = self.heads[usize::from(head)] else {
            return Err(DriverError::UsedIdNotInFlight { id: head });
        };
        if u64::from(len) > chain.writable {
            return Err(DriverError::UsedLenTooLarge {
                head,
                len,
                writable: chain.writable,
            });
        }

        self.heads[usize::from(head)] = None;
        let mut desc = head;
        for _ in 0..chain.descs {
            self.free.push(desc);
            desc = self.next[usize::from(desc)];
        }
        if let Some(table) = chain.indirect {
            // Allocated by `add` and freed only here, once per chain.
            let freed = self.ram.free(table);
            debug_assert!(freed.is_ok(), "indirect table {table:?} not allocated");
        }
        self.in_flight -= 1;
        self.last_used += 1;
        Ok(Some(Used { head, len }))
    }

    /// Reads every new used entry (see [`pop_used`](Self::pop_used)), then
    /// re-arms interrupts so the device signals the next completion (or the
    /// threshold-th, see [`set_interrupt_threshold`](Self::set_interrupt_threshold)),
    /// re-checking the ring so a completion racing the re-arm is not lost.
    ///
    /// On error, entries returned before the bad one have been consumed and
    /// are lost to the caller; use `pop_used` to keep them.
    pub fn take_used(&mut self) -> Result<Vec<Used>, DriverError> {
        let mut done = Vec::new();
        loop {
            while let Some(used) = self.pop_used()? {
                done.push(used);
            }
            if !self.rearm_interrupts()? {
                return Ok(done);
            }
        }
    }

    /// Asks the device to interrupt after `n` more completions (0: no
    /// interrupts). Without EVENT_IDX only on/off can be expressed, so any
    /// `n > 0` means "interrupt on every completion". Returns what
    /// [`rearm_interrupts`](Self::rearm_interrupts) returns.
    pub fn set_interrupt_threshold(&mut self, n: u16) -> Result<bool, DriverError> {
        self.irq_threshold = n;
        self.rearm_interrupts()
    }

    /// Writes `used_event` (EVENT_IDX) or `avail.flags` for the current
    /// threshold, then re-reads `used.idx`. Returns `true` when the device has
    /// already completed enough that the interrupt being armed may never
    /// come: the caller should pop again instead of waiting.
    pub fn rearm_interrupts(&mut self) -> Result<bool, DriverError> {
        let mem = self.ram.memory();
        if self.features.event_idx {
            // The device interrupts when it writes the used entry at index
            // `used_event`. For "never", aim a full u16 cycle away: more
            // completions than can ever be in flight.
            let event = self.last_used + Wrapping(self.irq_threshold) - Wrapping(1);
            mem.store(event.0.to_le(), self.used_event_addr(), Ordering::Relaxed)?;
        } else {
            let flags = if self.irq_threshold == 0 {
                AVAIL_F_NO_INTERRUPT
            } else {
                0
            };
            if flags != self.avail_flags {
                mem.store(flags.to_le(), self.avail_ring, Ordering::Relaxed)?;
                self.avail_flags = flags;
            }
        }
        // The event write must be visible before we look at used.idx again.
        fence(Ordering::SeqCst);
        let used_idx = Wrapping(u16::from_le(
            mem.load(self.used_ring.unchecked_add(2), Ordering::Acquire)?,
        ));
        let pending = (used_idx - self.last_used).0;
        Ok(pending > 0 && pending >= self.irq_threshold)
    }

    fn write_indirect(&mut self, table: GuestAddress, bufs: &[Buf]) -> Result<u16, AddError> {
        let mem = self.ram.memory();
        let last = bufs.len() - 1;
        for (i, buf) in bufs.iter().enumerate() {
            // Inside the table, entries chain by table index.
            let next = if i < last { i as u16 + 1 } else { 0 };
            let desc = encode_desc(buf.addr, buf.len, buf_flags(buf, i < last), next);
            mem.write_obj(desc, table.unchecked_add(DESC_SIZE * i as u64))
                .map_err(AddError::GuestMemory)?;
        }
        let head = self.free[self.free.len() - 1];
        // bufs.len() <= size <= 32768, so the table length fits in u32.
        let table_len = (DESC_SIZE * bufs.len() as u64) as u32;
        mem.write_obj(
            encode_desc(table, table_len, DESC_F_INDIRECT, 0),
            self.desc_addr(head),
        )
        .map_err(AddError::GuestMemory)?;
        self.next[usize::from(head)] = 0;
        Ok(head)
    }

    /// Writes the chain into the descriptors at the top of the free stack;
    /// the caller pops them only once everything is written.
    fn write_direct(&mut self, bufs: &[Buf]) -> Result<u16, AddError> {
        let mem = self.ram.memory();
        let top = self.free.len() - 1;
        let last = bufs.len() - 1;
        for (i, buf) in bufs.iter().enumerate() {
            let desc = self.free[top - i];
            let next = if i < last { self.free[top - i - 1] } else { 0 };
            mem.write_obj(
                encode_desc(buf.addr, buf.len, buf_flags(buf, i < last), next),
                self.desc_addr(desc),
            )
            .map_err(AddError::GuestMemory)?;
            self.next[usize::from(desc)] = next;
        }
        Ok(self.free[top])
    }

    fn desc_addr(&self, index: u16) -> GuestAddress {
        self.desc_table.unchecked_add(DESC_SIZE * u64::from(index))
    }

    fn avail_slot(&self, idx: Wrapping<u16>) -> GuestAddress {
        let slot = u64::from(idx.0 % self.size);
        self.avail_ring
            .unchecked_add(RING_HEADER + AVAIL_ELEM * slot)
    }

    fn used_slot(&self, idx: Wrapping<u16>) -> GuestAddress {
        let slot = u64::from(idx.0 % self.size);
        self.used_ring.unchecked_add(RING_HEADER + USED_ELEM * slot)
    }

    /// `used_event`: after the avail ring entries.
    fn used_event_addr(&self) -> GuestAddress {
        self.avail_ring
            .unchecked_add(RING_HEADER + AVAIL_ELEM * u64::from(self.size))
    }

    /// `avail_event`: after the used ring entries.
    fn avail_event_addr(&self) -> GuestAddress {
        self.used_ring
            .unchecked_add(RING_HEADER + USED_ELEM * u64::from(self.size))
    }
}

impl Drop for DriverQueue {
    fn drop(&mut self) {
        for table in self.heads.iter().flatten().filter_map(|c| c.indirect) {
            let _ = self.ram.free(table);
        }
        let _ = self.ram.free(self.ring_block);
    }
}

/// The spec's `vring_need_event`: true when moving the index from `old` to
/// `new` wrote the entry at index `event` (all arithmetic mod 2^16).
fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    (new - event - Wrapping(1)) < (new - old)
}

fn buf_flags(buf: &Buf, has_next: bool) -> u16 {
    let mut flags = 0;
    if buf.device_writes {
        flags |= DESC_F_WRITE;
    }
    if has_next {
        flags |= DESC_F_NEXT;
    }
    flags
}

/// `struct virtq_desc` in its little-endian wire form.
fn encode_desc(addr: GuestAddress, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.0.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const PLAIN: QueueFeatures = QueueFeatures {
        event_idx: false,
        indirect: false,
    };
    const EVENT_IDX: QueueFeatures = QueueFeatures {
        event_idx: true,
        indirect: false,
    };
    const INDIRECT: QueueFeatures = QueueFeatures {
        event_idx: false,
        indirect: true,
    };
    const ALL: QueueFeatures = QueueFeatures {
        event_idx: true,
        indirect: true,
    };

    fn ram() -> GuestRam {
        GuestRam::new(4 << 20).unwrap()
    }

    /// virtio-queue's device side, configured as a VMM would from the
    /// addresses the driver wrote to the transport.
    fn device_for(q: &DriverQueue, ram: &GuestRam) -> Queue {
        let mut dev = Queue::new(q.size()).unwrap();
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(q.desc_table());
        dev.set_desc_table_address(lo, hi);
        let (lo, hi) = split(q.avail_ring());
        dev.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(q.used_ring());
        dev.set_used_ring_address(lo, hi);
        dev.set_event_idx(q.features().event_idx);
        dev.set_ready(true);
        assert!(dev.is_valid(ram.memory()));
        dev
    }

    /// Pops one chain and returns (head, descriptors in chain order).
    fn pop(dev: &mut Queue, mem: &GuestMemoryMmap) -> Option<(u16, Vec<Descriptor>)> {
        let chain = dev.pop_descriptor_chain(mem)?;
        let head = chain.head_index();
        Some((head, chain.collect()))
    }

    fn bufs_of(descs: &[Descriptor]) -> Vec<Buf> {
        descs
            .iter()
            .map(|d| Buf {
                addr: d.addr(),
                len: d.len(),
                device_writes: d.is_write_only(),
            })
            .collect()
    }

    /// Writes a used entry by hand, as a device that does not check itself.
    fn raw_used(ram: &GuestRam, q: &DriverQueue, idx: u16, id: u32, len: u32) {
        let mem = ram.memory();
        let slot = u64::from(idx % q.size());
        let elem = q.used_ring().unchecked_add(4 + 8 * slot);
        mem.write_obj(Le32::from(id), elem).unwrap();
        mem.write_obj(Le32::from(len), elem.unchecked_add(4))
            .unwrap();
        mem.store(
            idx.wrapping_add(1).to_le(),
            q.used_ring().unchecked_add(2),
            Ordering::Release,
        )
        .unwrap();
    }

    fn used_event(ram: &GuestRam, q: &DriverQueue) -> u16 {
        let addr = q.avail_ring().unchecked_add(4 + 2 * u64::from(q.size()));
        u16::from_le(ram.memory().load(addr, Ordering::Acquire).unwrap())
    }

    fn set_avail_event(ram: &GuestRam, q: &DriverQueue, v: u16) {
        let addr = q.used_ring().unchecked_add(4 + 8 * u64::from(q.size()));
        ram.memory()
            .store(v.to_le(), addr, Ordering::Release)
            .unwrap();
    }

    #[test]
    fn chain_added_by_driver_is_popped_by_virtio_queue_with_its_buffers_in_order() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 16, PLAIN).unwrap();
        let mut dev = device_for(&q, &ram);
        let bufs = [
            Buf::readable(ram.alloc(24, 8).unwrap(), 24),
            Buf::readable(ram.alloc(4096, 8).unwrap(), 4096),
            Buf::writable(ram.alloc(24, 8).unwrap(), 24),
        ];
        let head = q.add(&bufs).unwrap();
        assert_eq!(q.num_free(), 13);
        assert!(
            pop(&mut dev, ram.memory()).is_none(),
            "visible before publish"
        );
        assert!(q.publish().unwrap());

        let (popped, descs) = pop(&mut dev, ram.memory()).unwrap();
        assert_eq!(popped, head);
        assert_eq!(bufs_of(&descs), bufs);
        assert_eq!(
            descs.iter().map(|d| d.has_next()).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(descs.iter().all(|d| !d.refers_to_indirect_table()));
        assert!(pop(&mut dev, ram.memory()).is_none());
    }

    #[test]
    fn completion_written_by_device_comes_back_through_take_used() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 16, PLAIN).unwrap();
        let mut dev = device_for(&q, &ram);
        let resp = ram.alloc(24, 8).unwrap();
        let head = q
            .add(&[
                Buf::readable(ram.alloc(8, 8).unwrap(), 8),
                Buf::writable(resp, 24),
            ])
            .unwrap();
        q.publish().unwrap();
        assert_eq!(q.take_used().unwrap(), []);

        let (popped, _) = pop(&mut dev, ram.memory()).unwrap();
        dev.add_used(ram.memory(), popped, 20).unwrap();
        assert_eq!(q.take_used().unwrap(), [Used { head, len: 20 }]);
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.num_free(), 16);
        assert_eq!(q.take_used().unwrap(), []);
    }

    /// Random chains in, completed by virtio-queue in random order, checked
    /// against what was added; runs past the 16-bit index wrap.
    fn churn(size: u16, features: QueueFeatures, chains: usize) {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, size, features).unwrap();
        let mut dev = device_for(&q, &ram);
        let heap_allocs = ram.heap_allocations();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut expected: HashMap<u16, Vec<Buf>> = HashMap::new();
        let mut popped: Vec<(u16, u32)> = Vec::new();
        let (mut added, mut completed) = (0usize, 0usize);
        let max_chain = u64::from(size.min(4));

        while completed < chains {
            // Fill with 1..=4 buffer chains until full or a random stop.
            let burst = 1 + next() % u64::from(size);
            for _ in 0..burst {
                if added >= chains {
                    break;
                }
                let n = 1 + next() % max_chain;
                let readable = next() % (n + 1);
                let bufs: Vec<Buf> = (0..n)
                    .map(|i| Buf {
                        addr: GuestAddress(0x10_0000 + (next() % 0x1000) * 16),
                        len: 1 + (next() % 4096) as u32,
                        device_writes: i >= readable,
                    })
                    .collect();
                match q.add(&bufs) {
                    Ok(head) => {
                        assert!(expected.insert(head, bufs).is_none(), "head {head} reused");
                        added += 1;
                    }
                    Err(AddError::QueueFull { .. }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            q.publish().unwrap();
            while let Some((head, descs)) = pop(&mut dev, ram.memory()) {
                let want = &expected[&head];
                assert_eq!(&bufs_of(&descs), want, "chain {head}");
                let writable: u64 = want
                    .iter()
                    .filter(|b| b.device_writes)
                    .map(|b| u64::from(b.len))
                    .sum();
                popped.push((head, (next() % (writable + 1)) as u32));
            }
            // Complete a random subset (everything once all are added), in
            // random order.
            let n = if added >= chains {
                popped.len()
            } else {
                (next() as usize) % (popped.len() + 1)
            };
            let mut want_used = Vec::new();
            for _ in 0..n {
                let i = (next() as usize) % popped.len();
                let (head, len) = popped.swap_remove(i);
                dev.add_used(ram.memory(), head, len).unwrap();
                want_used.push(Used { head, len });
            }
            let got = q.take_used().unwrap();
            assert_eq!(got, want_used);
            for u in &got {
                expected.remove(&u.head).unwrap();
            }
            completed += got.len();
            assert_eq!(usize::from(q.in_flight()), expected.len());
        }
        assert_eq!(q.in_flight(), 0);
        assert_eq!(q.num_free(), size);
        assert_eq!(
            ram.heap_allocations(),
            heap_allocs,
            "indirect tables leaked"
        );
        assert!(added > 65_536, "index never wrapped");
    }

    #[test]
    fn ring_wraps_over_many_cycles_with_out_of_order_completion_at_size_8() {
        churn(8, PLAIN, 70_000);
    }

    #[test]
    fn ring_wraps_over_many_cycles_with_out_of_order_completion_at_size_1024() {
        churn(1024, PLAIN, 70_000);
    }

    #[test]
    fn ring_wraps_with_event_idx_and_indirect_chains_at_size_8() {
        churn(8, ALL, 70_000);
    }

    #[test]
    fn ring_wraps_with_event_idx_and_indirect_chains_at_size_1024() {
        churn(1024, ALL, 70_000);
    }

    #[test]
    fn event_idx_kick_is_required_only_when_publish_crosses_avail_event() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, EVENT_IDX).unwrap();
        let buf = [Buf::readable(ram.alloc(8, 8).unwrap(), 8)];
        // The device wants a kick when the entry at index 2 is written.
        set_avail_event(&ram, &q, 2);
        q.add(&buf).unwrap();
        assert!(!q.publish().unwrap(), "entry 0 is not avail_event");
        q.add(&buf).unwrap();
        assert!(!q.publish().unwrap(), "entry 1 is not avail_event");
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap(), "entry 2 is avail_event");
        q.add(&buf).unwrap();
        assert!(!q.publish().unwrap(), "already past avail_event");
        // A batch that jumps over avail_event still kicks.
        set_avail_event(&ram, &q, 5);
        q.add(&buf).unwrap();
        q.add(&buf).unwrap();
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap(), "entries 4..=6 include 5");
        assert!(!q.publish().unwrap(), "nothing new, nothing to kick");
    }

    #[test]
    fn event_idx_kicks_follow_virtio_queue_enable_notification() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, EVENT_IDX).unwrap();
        let mut dev = device_for(&q, &ram);
        let buf = [Buf::readable(ram.alloc(8, 8).unwrap(), 8)];

        // A device that has gone idle asks to be woken at its next_avail.
        assert!(!dev.enable_notification(ram.memory()).unwrap());
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap());
        // Device busy (notifications not re-enabled): no more kicks.
        q.add(&buf).unwrap();
        assert!(!q.publish().unwrap());
        while let Some((head, _)) = pop(&mut dev, ram.memory()) {
            dev.add_used(ram.memory(), head, 0).unwrap();
        }
        assert!(!dev.enable_notification(ram.memory()).unwrap());
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap(), "idle device must be kicked");
        // Re-enabling while work is pending reports it, and the kick comes.
        q.add(&buf).unwrap();
        assert!(dev.enable_notification(ram.memory()).unwrap());
        assert_eq!(q.take_used().unwrap().len(), 2);
    }

    #[test]
    fn without_event_idx_kicks_follow_the_used_ring_no_notify_flag() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, PLAIN).unwrap();
        let mut dev = device_for(&q, &ram);
        let buf = [Buf::readable(ram.alloc(8, 8).unwrap(), 8)];
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap(), "flags start at 0: kick");
        dev.disable_notification(ram.memory()).unwrap();
        q.add(&buf).unwrap();
        assert!(!q.publish().unwrap(), "NO_NOTIFY set");
        dev.enable_notification(ram.memory()).unwrap();
        q.add(&buf).unwrap();
        assert!(q.publish().unwrap(), "NO_NOTIFY cleared");
    }

    #[test]
    fn device_interrupts_exactly_when_the_used_event_written_by_the_driver_is_reached() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, EVENT_IDX).unwrap();
        let mut dev = device_for(&q, &ram);
        let buf = [Buf::writable(ram.alloc(8, 8).unwrap(), 8)];
        for _ in 0..8 {
            q.add(&buf).unwrap();
        }
        q.publish().unwrap();
        let mut heads = Vec::new();
        while let Some((head, _)) = pop(&mut dev, ram.memory()) {
            heads.push(head);
        }
        let complete = |dev: &mut Queue, i: usize| {
            dev.add_used(ram.memory(), heads[i], 8).unwrap();
            dev.needs_notification(ram.memory()).unwrap()
        };

        // used_event starts at 0: the first completion interrupts.
        assert_eq!(used_event(&ram, &q), 0);
        assert!(complete(&mut dev, 0));
        assert!(!complete(&mut dev, 1), "driver has not re-armed yet");
        assert_eq!(q.take_used().unwrap().len(), 2);
        assert_eq!(used_event(&ram, &q), 2);
        assert!(complete(&mut dev, 2), "re-armed for the next completion");

        // Interrupt after 3 more: entries 4, 5 quiet, 6 interrupts.
        assert_eq!(q.take_used().unwrap().len(), 1);
        assert!(!q.set_interrupt_threshold(3).unwrap());
        assert_eq!(used_event(&ram, &q), 3 + 3 - 1);
        assert!(!complete(&mut dev, 3));
        assert!(!complete(&mut dev, 4));
        assert!(complete(&mut dev, 5));

        // Threshold 0: no interrupts at all.
        assert_eq!(q.take_used().unwrap().len(), 3);
        q.set_interrupt_threshold(0).unwrap();
        assert!(!complete(&mut dev, 6));
        assert!(!complete(&mut dev, 7));
        assert_eq!(q.take_used().unwrap().len(), 2);
    }

    #[test]
    fn rearm_reports_completions_that_raced_it() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, EVENT_IDX).unwrap();
        let mut dev = device_for(&q, &ram);
        let buf = [Buf::writable(ram.alloc(8, 8).unwrap(), 8)];
        q.add(&buf).unwrap();
        q.publish().unwrap();
        let (head, _) = pop(&mut dev, ram.memory()).unwrap();
        dev.add_used(ram.memory(), head, 8).unwrap();
        // The device finished before the driver re-armed: its interrupt for
        // that entry may be gone, so re-arming must say "look again".
        assert!(q.rearm_interrupts().unwrap());
        assert_eq!(q.pop_used().unwrap(), Some(Used { head, len: 8 }));
        assert!(!q.rearm_interrupts().unwrap());
    }

    #[test]
    fn indirect_chain_is_popped_by_virtio_queue_and_takes_one_ring_descriptor() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, INDIRECT).unwrap();
        let mut dev = device_for(&q, &ram);
        let allocs = ram.heap_allocations();
        let bufs: Vec<Buf> = (0..6)
            .map(|i| Buf {
                addr: GuestAddress(0x20_0000 + i * 0x1000),
                len: 100 + i as u32,
                device_writes: i >= 4,
            })
            .collect();
        let head = q.add(&bufs).unwrap();
        assert_eq!(q.num_free(), 7);
        assert_eq!(ram.heap_allocations(), allocs + 1, "one indirect table");
        // A single buffer never goes indirect.
        q.add(&bufs[..1]).unwrap();
        assert_eq!(ram.heap_allocations(), allocs + 1);
        q.publish().unwrap();

        let head_desc: [u8; 16] = ram
            .memory()
            .read_obj(q.desc_table().unchecked_add(16 * u64::from(head)))
            .unwrap();
        let flags = u16::from_le_bytes([head_desc[12], head_desc[13]]);
        assert_eq!(flags, DESC_F_INDIRECT);

        let (popped, descs) = pop(&mut dev, ram.memory()).unwrap();
        assert_eq!(popped, head);
        assert_eq!(bufs_of(&descs), bufs);
        let (single, descs) = pop(&mut dev, ram.memory()).unwrap();
        assert_eq!(bufs_of(&descs), &bufs[..1]);

        dev.add_used(ram.memory(), popped, 201).unwrap();
        dev.add_used(ram.memory(), single, 0).unwrap();
        assert_eq!(
            q.take_used().unwrap(),
            [
                Used { head, len: 201 },
                Used {
                    head: single,
                    len: 0
                }
            ]
        );
        assert_eq!(ram.heap_allocations(), allocs, "indirect table freed");
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn indirect_falls_back_to_direct_descriptors_when_guest_ram_is_exhausted() {
        let ram = GuestRam::new(64 << 10).unwrap();
        let mut q = DriverQueue::new(&ram, 8, INDIRECT).unwrap();
        let mut dev = device_for(&q, &ram);
        let mut hog = Vec::new();
        while let Ok(a) = ram.alloc(16, 16) {
            hog.push(a);
        }
        let bufs = [
            Buf::readable(GuestAddress(0x1000), 8),
            Buf::writable(GuestAddress(0x2000), 8),
        ];
        q.add(&bufs).unwrap();
        assert_eq!(q.num_free(), 6);
        q.publish().unwrap();
        let (head, descs) = pop(&mut dev, ram.memory()).unwrap();
        assert_eq!(bufs_of(&descs), bufs);
        dev.add_used(ram.memory(), head, 8).unwrap();
        assert_eq!(q.take_used().unwrap().len(), 1);
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn full_queue_returns_queue_full_and_accepts_chains_again_after_completion() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 8, PLAIN).unwrap();
        let mut dev = device_for(&q, &ram);
        let b = Buf::readable(GuestAddress(0x1000), 8);
        for _ in 0..6 {
            q.add(&[b]).unwrap();
        }
        assert!(matches!(
            q.add(&[b, b, b]),
            Err(AddError::QueueFull { needed: 3, free: 2 })
        ));
        q.add(&[b, b]).unwrap();
        assert!(matches!(
            q.add(&[b]),
            Err(AddError::QueueFull { needed: 1, free: 0 })
        ));
        assert_eq!(q.in_flight(), 7);
        q.publish().unwrap();

        let (head, _) = pop(&mut dev, ram.memory()).unwrap();
        dev.add_used(ram.memory(), head, 0).unwrap();
        assert_eq!(q.take_used().unwrap().len(), 1);
        q.add(&[b]).unwrap();
        q.publish().unwrap();
        let mut n = 0;
        while let Some((head, _)) = pop(&mut dev, ram.memory()) {
            dev.add_used(ram.memory(), head, 0).unwrap();
            n += 1;
        }
        assert_eq!(n, 7);
        assert_eq!(q.take_used().unwrap().len(), 7);
        assert_eq!(q.num_free(), 8);
    }

    #[test]
    fn full_queue_with_indirect_needs_only_one_free_descriptor() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 2, INDIRECT).unwrap();
        let b = Buf::readable(GuestAddress(0x1000), 8);
        q.add(&[b, b]).unwrap();
        q.add(&[b, b]).unwrap();
        assert!(matches!(
            q.add(&[b, b]),
            Err(AddError::QueueFull { needed: 1, free: 0 })
        ));
    }

    #[test]
    fn malformed_chains_are_refused_and_leave_the_queue_unchanged() {
        let ram = ram();
        let mut q = DriverQueue::new(&ram, 4, PLAIN).unwrap();
        let r = Buf::readable(GuestAddress(0x1000), 8);
        let w = Buf::writable(GuestAddress(0x2000), 8);
        assert!(matches!(q.add(&[]), Err(AddError::EmptyChain)));
        assert!(matches!(
            q.add(&[r, w, r]),
            Err(AddError::ReadableAfterWritable { index: 2 })
        ));
        assert!(matches!(
            q.add(&[r; 5]),
            Err(AddError::TooManyBuffers { count: 5, max: 4 })
        ));
        let huge = Buf::writable(GuestAddress(0x2000), u32::MAX);
        assert!(matches!(
            q.add(&[r, huge]),
            Err(AddError::TooManyBytes { .. })
        ));
        assert_eq!(q.num_free(), 4);
        assert_eq!(q.unpublished(), 0);
        assert!(!q.publish().unwrap());
    }

    /// A queue with chains in flight for the garbage tests: head of a
    /// 2-descriptor chain with 8 writable bytes, and a 1-descriptor chain.
    fn garbage_setup(ram: &GuestRam) -> (DriverQueue, u16, u16) {
        let mut q = DriverQueue::new(ram, 8, EVENT_IDX).unwrap();
        let a = q
            .add(&[
                Buf::readable(GuestAddress(0x1000), 8),
                Buf::writable(GuestAddress(0x2000), 8),
            ])
            .unwrap();
        let b = q.add(&[Buf::readable(GuestAddress(0x3000), 8)]).unwrap();
        q.publish().unwrap();
        (q, a, b)
    }

    /// The error left the driver's bookkeeping untouched, repeats, and the
    /// queue still works.
    fn assert_unharmed(q: &mut DriverQueue, err: fn(&DriverError) -> bool) {
        assert_eq!((q.in_flight(), q.num_free()), (2, 5));
        let again = q.take_used().unwrap_err();
        assert!(err(&again), "second call: {again}");
        assert_eq!((q.in_flight(), q.num_free()), (2, 5));
        q.add(&[Buf::readable(GuestAddress(0x1000), 8)]).unwrap();
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn used_id_out_of_range_is_a_driver_error() {
        let ram = ram();
        let (mut q, _, _) = garbage_setup(&ram);
        raw_used(&ram, &q, 0, 8, 0);
        let err = q.take_used().unwrap_err();
        assert!(
            matches!(err, DriverError::UsedIdOutOfRange { id: 8, size: 8 }),
            "{err}"
        );
        raw_used(&ram, &q, 0, u32::MAX, 0);
        assert_unharmed(&mut q, |e| {
            matches!(e, DriverError::UsedIdOutOfRange { .. })
        });
    }

    #[test]
    fn used_id_of_a_free_descriptor_is_a_driver_error() {
        let ram = ram();
        let (mut q, _, _) = garbage_setup(&ram);
        raw_used(&ram, &q, 0, 7, 0);
        assert_unharmed(&mut q, |e| {
            matches!(e, DriverError::UsedIdNotInFlight { id: 7 })
        });
    }

    #[test]
    fn used_id_of_a_descriptor_inside_a_chain_is_a_driver_error() {
        let ram = ram();
        let (mut q, a, _) = garbage_setup(&ram);
        let second = q.next[usize::from(a)];
        raw_used(&ram, &q, 0, u32::from(second), 0);
        let err = q.take_used().unwrap_err();
        assert!(
            matches!(err, DriverError::UsedIdNotInFlight { id } if id == second),
            "{err}"
        );
        assert_unharmed(&mut q, |e| {
            matches!(e, DriverError::UsedIdNotInFlight { .. })
        });
    }

    #[test]
    fn used_id_completed_twice_is_a_driver_error() {
        let ram = ram();
        let (mut q, _, b) = garbage_setup(&ram);
        raw_used(&ram, &q, 0, u32::from(b), 0);
        raw_used(&ram, &q, 1, u32::from(b), 0);
        let err = q.take_used().unwrap_err();
        assert!(
            matches!(err, DriverError::UsedIdNotInFlight { id } if id == b),
            "{err}"
        );
        // The first, valid completion was consumed; the duplicate is not.
        assert_eq!((q.in_flight(), q.num_free()), (1, 6));
        assert!(matches!(
            q.pop_used(),
            Err(DriverError::UsedIdNotInFlight { .. })
        ));
        assert_eq!((q.in_flight(), q.num_free()), (1, 6));
    }

    #[test]
    fn used_idx_jumping_past_the_queue_size_is_a_driver_error() {
        let ram = ram();
        let (mut q, _, _) = garbage_setup(&ram);
        let idx = q.used_ring().unchecked_add(2);
        ram.memory()
            .store(9u16.to_le(), idx, Ordering::Release)
            .unwrap();
        let err = q.take_used().unwrap_err();
        assert!(
            matches!(
                err,
                DriverError::UsedIdxJump {
                    last_used: 0,
                    used_idx: 9
                }
            ),
            "{err}"
        );
        // Going backwards is a jump of almost 2^16.
        ram.memory()
            .store(0xffffu16.to_le(), idx, Ordering::Release)
            .unwrap();
        assert_unharmed(&mut q, |e| matches!(e, DriverError::UsedIdxJump { .. }));
    }

    #[test]
    fn used_len_larger_than_the_writable_buffers_is_a_driver_error() {
        let ram = ram();
        let (mut q, a, b) = garbage_setup(&ram);
        raw_used(&ram, &q, 0, u32::from(a), 9);
        let err = q.take_used().unwrap_err();
        assert!(
            matches!(err, DriverError::UsedLenTooLarge { head, len: 9, writable: 8 } if head == a),
            "{err}"
        );
        // A chain with no writable buffer can only report 0 bytes.
        raw_used(&ram, &q, 0, u32::from(b), 1);
        assert_unharmed(&mut q, |e| {
            matches!(e, DriverError::UsedLenTooLarge { writable: 0, .. })
        });
        // The exact writable size is fine.
        raw_used(&ram, &q, 0, u32::from(a), 8);
        assert_eq!(q.take_used().unwrap(), [Used { head: a, len: 8 }]);
    }

    #[test]
    fn rings_are_aligned_and_zeroed_even_in_reused_ring_space() {
        let ram = ram();
        let q = DriverQueue::new(&ram, 256, EVENT_IDX).unwrap();
        let (desc, avail, used) = (q.desc_table(), q.avail_ring(), q.used_ring());
        assert_eq!(desc.0 % 16, 0);
        assert_eq!(avail.0 % 2, 0);
        assert_eq!(used.0 % 4, 0);
        assert!(avail.0 >= desc.0 + 16 * 256);
        assert!(used.0 >= avail.0 + 6 + 2 * 256);
        ram.memory().write_slice(&[0xff; 64], used).unwrap();
        drop(q);
        let q = DriverQueue::new(&ram, 256, EVENT_IDX).unwrap();
        assert_eq!(q.used_ring(), used, "ring space reused");
        let mut bytes = [0xaau8; 64];
        ram.memory().read_slice(&mut bytes, used).unwrap();
        assert_eq!(bytes, [0; 64]);
    }

    #[test]
    fn queue_sizes_that_are_not_powers_of_two_are_refused() {
        let ram = ram();
        for size in [0, 3, 100, 65535] {
            assert!(matches!(
                DriverQueue::new(&ram, size, PLAIN),
                Err(QueueSetupError::InvalidSize(s)) if s == size
            ));
        }
        assert!(DriverQueue::new(&ram, 1, PLAIN).is_ok());
    }

    #[test]
    fn dropping_a_queue_returns_rings_and_indirect_tables_to_guest_ram() {
        let ram = ram();
        let allocs = ram.heap_allocations();
        let mut q = DriverQueue::new(&ram, 1024, ALL).unwrap();
        let b = Buf::readable(GuestAddress(0x1000), 8);
        for _ in 0..10 {
            q.add(&[b, b, b]).unwrap();
        }
        assert_eq!(ram.heap_allocations(), allocs + 10);
        drop(q);
        assert_eq!(ram.heap_allocations(), allocs);
        // The whole ring region is free again: the largest queue fits.
        DriverQueue::new(&ram, 32768, ALL).unwrap();
    }
}
