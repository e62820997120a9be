//! Fuzz target 1: the device through its virtqueues.
//!
//! One device per renderer (sim, 2d) per process, on its own reactor, made
//! on first use; each input resets it, negotiates features, starts both
//! queues on fresh split rings in guest RAM and plays a sequence of guest
//! actions: commands (structured, with every command the device knows, or
//! raw bytes) in chains of any layout (split, too short, zero-length
//! descriptors, outside guest RAM, writable before readable, indirect,
//! looping, raw descriptors), kicks, and resets in the middle.
//!
//! What must hold, besides not crashing: every chain the guest made
//! available comes back exactly once (unless the device says it still
//! holds commands: a fence waiting on modelled GPU time, which a reset
//! frees); the device never puts a head in the used ring that the guest
//! did not make available; and memory stays bounded (`rss.rs`).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use gpu::backing::GuestMem;
use gpu::blob::FakeBlobMapper;
use gpu::device::{Device, DeviceConfig, NullDisplay, QueueKind, QueueSetup};
use gpu::render::RendererFactory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::commands::{self, GUEST_RAM};
use crate::input::Input;
use crate::rss::{self, MemoryBound};

const QUEUE_SIZE: u16 = 64;
/// Most descriptors one chain of ours takes.
const MAX_CHAIN: u16 = 6;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
/// Indirect tables live here, below the data area.
const INDIRECT_BASE: u64 = 0x8000;
const INDIRECT_END: u64 = commands::DATA_BASE;
/// An address no guest RAM covers.
const OUTSIDE: u64 = 1 << 40;
/// How long a batch may take before the device is asked whether it holds
/// anything; then how long before a chain counts as lost.
const SETTLE: Duration = Duration::from_millis(5);
const LOST: Duration = Duration::from_secs(10);

/// A device and its guest RAM, kept for the whole process.
pub struct Rig {
    device: Device,
    mem: GuestMem,
    // Last: the shards stop after the device is dropped.
    _reactor: reactor::Reactor,
}

fn rig(renderer: u8) -> &'static Mutex<Rig> {
    static SIM: OnceLock<Mutex<Rig>> = OnceLock::new();
    static TWO_D: OnceLock<Mutex<Rig>> = OnceLock::new();
    let (cell, factory): (_, fn() -> Arc<dyn RendererFactory>) = if renderer & 1 == 0 {
        (&SIM, || Arc::new(gpu::render::sim::SimFactory::default()))
    } else {
        (&TWO_D, || {
            Arc::new(gpu::render::rutabaga2d::Rutabaga2dFactory)
        })
    };
    cell.get_or_init(|| Mutex::new(Rig::new(factory())))
}

impl Rig {
    fn new(renderer: Arc<dyn RendererFactory>) -> Rig {
        let reactor = reactor::Reactor::builder()
            .shards(2)
            .name("fuzz-gpu")
            .build()
            .expect("reactor");
        let config = DeviceConfig {
            memory_limit: rss::BUDGET,
            stall_warn: None,
            ..DeviceConfig::default()
        };
        let device = Device::new(
            &reactor,
            config,
            renderer,
            Arc::new(NullDisplay),
            Arc::new(FakeBlobMapper::new(64 << 20, Duration::ZERO)),
        )
        .expect("device");
        let mem: GuestMem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), GUEST_RAM as usize)]).expect("ram");
        device.set_memory(mem.clone());
        Rig {
            device,
            mem,
            _reactor: reactor,
        }
    }
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The driver side of one split ring.
struct Ring {
    base: u64,
    kick: OwnedFd,
    call: OwnedFd,
    /// Next descriptor slot of this batch.
    next_desc: u16,
    avail_idx: u16,
    used_idx: u16,
    /// Heads made available and not yet used, with how often each (a
    /// head may only be in the avail ring once at a time).
    outstanding: HashSet<u16>,
    /// Chains added since the last publish.
    pending: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
}

/// One descriptor as the guest writes it.
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// One input's run against a device.
struct Run<'a> {
    rig: &'a Rig,
    rings: [Ring; 2],
    features: u64,
    event_idx: bool,
    indirect: bool,
    data_next: u64,
    indirect_next: u64,
    commands: u64,
    memory: MemoryBound,
}

impl<'a> Run<'a> {
    fn start(rig: &'a Rig, feature_choice: u8, memory: MemoryBound) -> Run<'a> {
        let offered = rig.device.device_features();
        // Bit i of the choice drops offered feature bit i of these.
        let droppable = [
            gpu::device::VIRTIO_RING_F_EVENT_IDX,
            gpu::device::VIRTIO_RING_F_INDIRECT_DESC,
            gpu::protocol::wire::VIRTIO_GPU_F_VIRGL,
            gpu::protocol::wire::VIRTIO_GPU_F_EDID,
            gpu::protocol::wire::VIRTIO_GPU_F_RESOURCE_UUID,
            gpu::protocol::wire::VIRTIO_GPU_F_RESOURCE_BLOB,
            gpu::protocol::wire::VIRTIO_GPU_F_CONTEXT_INIT,
        ];
        let mut features = offered;
        for (i, bit) in droppable.iter().enumerate() {
            if feature_choice & (1 << i) != 0 {
                features &= !(1u64 << bit);
            }
        }
        let mk = |base| Ring {
            base,
            kick: eventfd(),
            call: eventfd(),
            next_desc: 0,
            avail_idx: 0,
            used_idx: 0,
            outstanding: HashSet::new(),
            pending: 0,
        };
        let mut run = Run {
            rig,
            rings: [mk(0), mk(0x4000)],
            features,
            event_idx: features & (1 << gpu::device::VIRTIO_RING_F_EVENT_IDX) != 0,
            indirect: features & (1 << gpu::device::VIRTIO_RING_F_INDIRECT_DESC) != 0,
            data_next: commands::DATA_BASE,
            indirect_next: INDIRECT_BASE,
            commands: 0,
            memory,
        };
        run.setup();
        run
    }

    /// Resets the device and starts both queues on zeroed rings.
    fn setup(&mut self) {
        let d = &self.rig.device;
        d.reset().expect("reset");
        d.set_features(self.features).expect("features");
        // Zero both rings (descriptor table, avail, used).
        self.rig
            .mem
            .write_slice(&[0u8; 0x8000], GuestAddress(0))
            .expect("rings");
        for (q, kind) in [QueueKind::Control, QueueKind::Cursor]
            .into_iter()
            .enumerate()
        {
            let r = &mut self.rings[q];
            r.kick = eventfd();
            r.call = eventfd();
            r.next_desc = 0;
            r.avail_idx = 0;
            r.used_idx = 0;
            r.outstanding.clear();
            r.pending = 0;
            let setup = QueueSetup {
                size: QUEUE_SIZE,
                desc_table: r.desc(),
                avail_ring: r.avail(),
                used_ring: r.used(),
                next_avail: 0,
                next_used: 0,
                event_idx: self.event_idx,
            };
            let (kick, call) = (
                r.kick.try_clone().expect("dup"),
                r.call.try_clone().expect("dup"),
            );
            d.start_queue(kind, setup, kick, call).expect("start queue");
        }
        self.data_next = commands::DATA_BASE;
        self.indirect_next = INDIRECT_BASE;
    }

    fn write_desc(&self, at: u64, d: Desc) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        // Inside guest RAM by construction (ring or indirect area).
        self.rig
            .mem
            .write_slice(&b, GuestAddress(at))
            .expect("descriptor");
    }

    /// Places `bytes` in the data area (None: no room left this batch).
    fn place(&mut self, bytes: &[u8], extra: u64) -> Option<u64> {
        let at = self.data_next;
        let end = at + bytes.len() as u64 + extra;
        if end > commands::BACKING_BASE {
            return None;
        }
        self.rig
            .mem
            .write_slice(bytes, GuestAddress(at))
            .expect("data");
        self.data_next = (end + 63) & !63;
        Some(at)
    }

    /// Puts a chain of `descs` (their `next` fields filled in here unless
    /// `raw`) on queue `q`.
    fn add_chain(&mut self, q: usize, mut descs: Vec<Desc>, indirect: Option<u8>, raw: bool) {
        let count = descs.len().max(1) as u16;
        let use_indirect = indirect.is_some() && self.indirect && !raw;
        let slots_needed = if use_indirect { 1 } else { count };
        let head = self.rings[q].next_desc;
        if !raw {
            let n = descs.len();
            for (k, d) in descs.iter_mut().enumerate() {
                if k + 1 < n {
                    d.flags |= VRING_DESC_F_NEXT;
                    d.next = if use_indirect {
                        (k + 1) as u16
                    } else {
                        head + k as u16 + 1
                    };
                }
            }
        }
        if use_indirect {
            let style = indirect.unwrap_or(0);
            let table = self.indirect_next;
            for (k, d) in descs.iter().enumerate() {
                let mut d = *d;
                // A nested indirect flag, or a next pointing past the table.
                if style & 1 != 0 && k == 0 {
                    d.flags |= VRING_DESC_F_INDIRECT;
                }
                if style & 2 != 0 && k + 1 == descs.len() {
                    d.flags |= VRING_DESC_F_NEXT;
                    d.next = count + 3;
                }
                self.write_desc(table + 16 * k as u64, d);
            }
            self.indirect_next += 16 * u64::from(count);
            let mut len = 16 * u32::from(count);
            if style & 4 != 0 {
                len = len.wrapping_sub(1 + u32::from(style >> 4));
            }
            let r = &self.rings[q];
            self.write_desc(
                r.desc() + 16 * u64::from(head),
                Desc {
                    addr: table,
                    len,
                    flags: VRING_DESC_F_INDIRECT,
                    next: 0,
                },
            );
        } else {
            for (k, d) in descs.iter().enumerate() {
                let r = &self.rings[q];
                let mut d = *d;
                if raw {
                    d.next %= QUEUE_SIZE;
                }
                self.write_desc(r.desc() + 16 * u64::from(head + k as u16), d);
            }
        }
        let r = &mut self.rings[q];
        r.next_desc += slots_needed;
        let slot = r.avail() + 4 + 2 * u64::from(r.avail_idx % QUEUE_SIZE);
        self.rig
            .mem
            .write_obj(head.to_le(), GuestAddress(slot))
            .expect("avail");
        let r = &mut self.rings[q];
        r.avail_idx = r.avail_idx.wrapping_add(1);
        r.pending += 1;
        assert!(r.outstanding.insert(head), "head {head} reused");
    }

    /// Publishes and waits first when a chain of up to [`MAX_CHAIN`]
    /// descriptors and its data might not fit this batch.
    fn make_room(&mut self, q: usize, data: u64) {
        let r = &self.rings[q];
        if r.next_desc + MAX_CHAIN > QUEUE_SIZE
            || r.outstanding.len() as u16 >= QUEUE_SIZE
            || self.indirect_next + 16 * u64::from(MAX_CHAIN) > INDIRECT_END
            || self.data_next + data + 64 > commands::BACKING_BASE
        {
            self.flush();
        }
    }

    /// A command in a chain of the layout `layout` chooses.
    fn command_chain(&mut self, q: usize, cmd: &[u8], layout: u8, i: &mut Input) {
        self.commands += 1;
        self.make_room(q, cmd.len() as u64 + 1024);
        let resp_len: u32 = if q == 1 { 0 } else { 1024 };
        let Some(at) = self.place(cmd, u64::from(resp_len)) else {
            self.flush();
            return;
        };
        let resp = at + cmd.len() as u64;
        let rlen = cmd.len() as u32;
        let read = |addr, len| Desc {
            addr,
            len,
            flags: 0,
            next: 0,
        };
        let write = |addr, len| Desc {
            addr,
            len,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        };
        let mut descs = match layout & 7 {
            0 => vec![read(at, rlen), write(resp, resp_len)],
            1 => {
                // The request split in up to four pieces, the response in two.
                let mut v = Vec::new();
                let mut off = 0u32;
                for _ in 0..3 {
                    let piece = u32::from(i.u8()).min(rlen - off);
                    v.push(read(at + u64::from(off), piece));
                    off += piece;
                }
                v.push(read(at + u64::from(off), rlen - off));
                let half = u32::from(i.u8()).min(resp_len);
                v.push(write(resp, half));
                v.push(write(resp + u64::from(half), resp_len - half));
                v
            }
            2 => vec![read(at, rlen), write(resp, u32::from(i.u8() % 40))],
            3 => vec![
                read(at, 0),
                read(at, rlen),
                read(at, 0),
                write(resp, 0),
                write(resp, resp_len),
            ],
            4 => vec![
                read(OUTSIDE + u64::from(i.u8()), rlen),
                write(resp, resp_len),
            ],
            5 => vec![
                read(at, rlen),
                write(GUEST_RAM - u64::from(i.u8()), resp_len),
            ],
            6 => vec![write(resp, resp_len), read(at, rlen)],
            _ => vec![read(at, rlen)],
        };
        if q == 1 && layout & 7 == 0 {
            descs.truncate(1);
        }
        let indirect = (layout & 8 != 0).then(|| i.u8());
        if layout & 0x10 != 0 && indirect.is_none() {
            // The last descriptor loops back to the head.
            let head = self.rings[q].next_desc;
            let n = descs.len() as u16;
            if self.rings[q].next_desc + n <= QUEUE_SIZE {
                let mut descs = descs;
                for (k, d) in descs.iter_mut().enumerate() {
                    d.flags |= VRING_DESC_F_NEXT;
                    d.next = if k as u16 + 1 == n {
                        head
                    } else {
                        head + k as u16 + 1
                    };
                }
                self.add_chain(q, descs, None, true);
                return;
            }
        }
        self.add_chain(q, descs, indirect, false);
    }

    /// Descriptors straight from the input.
    fn raw_chain(&mut self, q: usize, i: &mut Input) {
        self.commands += 1;
        self.make_room(q, 0);
        let n = 1 + usize::from(i.u8() % 6);
        let descs = (0..n)
            .map(|_| Desc {
                addr: commands::addr(i),
                len: match i.u8() {
                    b @ 0..=0xef => u32::from(b) * 8,
                    _ => i.u32(),
                },
                flags: u16::from(i.u8() & 7),
                next: u16::from(i.u8()),
            })
            .collect();
        self.add_chain(q, descs, None, true);
    }

    /// Publishes both rings, kicks, and waits for every chain.
    fn flush(&mut self) {
        for q in 0..2 {
            let r = &mut self.rings[q];
            if r.pending == 0 {
                continue;
            }
            let mem = &self.rig.mem;
            // used_event: a call as soon as anything completes.
            mem.write_obj(
                r.used_idx.to_le(),
                GuestAddress(r.avail() + 4 + 2 * u64::from(QUEUE_SIZE)),
            )
            .expect("used_event");
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            mem.write_obj(r.avail_idx.to_le(), GuestAddress(r.avail() + 2))
                .expect("avail idx");
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            r.pending = 0;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            let one = 1u64;
            unsafe { libc::write(r.kick.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        let start = Instant::now();
        let mut asked = false;
        loop {
            self.reap();
            if self.rings.iter().all(|r| r.outstanding.is_empty()) {
                break;
            }
            let waited = start.elapsed();
            if waited > SETTLE && !asked {
                asked = true;
                let s = self.rig.device.stats().expect("stats");
                if s.in_flight > 0 {
                    // A command waits (modelled GPU time, a hung ring):
                    // the guest would wait too; a reset frees it.
                    self.setup();
                    break;
                }
            }
            if waited > LOST {
                let s = self.rig.device.stats().expect("stats");
                if s.in_flight > 0 {
                    self.setup();
                    break;
                }
                // Nothing in flight: whatever the device answered is in the
                // used rings by now. Reaped once more before a chain counts
                // as lost, for the device may have answered it since the
                // reap above (this thread was stopped or descheduled past
                // LOST: the long runs found that, stopped with SIGSTOP).
                self.reap();
                if self.rings.iter().all(|r| r.outstanding.is_empty()) {
                    break;
                }
                let lost: Vec<_> = self.rings.iter().map(|r| r.outstanding.clone()).collect();
                panic!("chains lost: {lost:?}, device {s:?}");
            }
            self.wait_call(Duration::from_millis(2));
        }
        for r in &mut self.rings {
            r.next_desc = 0;
        }
        self.data_next = commands::DATA_BASE;
        self.indirect_next = INDIRECT_BASE;
        self.memory.check(self.commands, "device");
    }

    fn wait_call(&self, timeout: Duration) {
        let mut fds = [
            libc::pollfd {
                fd: self.rings[0].call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.rings[1].call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout.as_millis() as i32) };
        let mut v = 0u64;
        for f in &fds {
            if f.revents != 0 {
                // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
                unsafe { libc::read(f.fd, (&mut v as *mut u64).cast(), 8) };
            }
        }
    }

    /// Takes what the device put in both used rings.
    fn reap(&mut self) {
        for r in &mut self.rings {
            let mem = &self.rig.mem;
            let idx: u16 =
                u16::from_le(mem.read_obj(GuestAddress(r.used() + 2)).expect("used idx"));
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            while r.used_idx != idx {
                let at = r.used() + 4 + 8 * u64::from(r.used_idx % QUEUE_SIZE);
                let id: u32 = u32::from_le(mem.read_obj(GuestAddress(at)).expect("used elem"));
                let head = u16::try_from(id).unwrap_or(u16::MAX);
                assert!(
                    r.outstanding.remove(&head),
                    "used ring at {:#x}: head {id} was not available (outstanding {:?})",
                    r.base,
                    r.outstanding
                );
                r.used_idx = r.used_idx.wrapping_add(1);
            }
            // Ask for a call at the next completion.
            let _ = mem.write_obj(
                r.used_idx.to_le(),
                GuestAddress(r.avail() + 4 + 2 * u64::from(QUEUE_SIZE)),
            );
        }
    }
}

/// Runs one input. Byte 0: renderer (bit 0: 2d) ; byte 1: features the
/// driver drops; then actions until the input ends.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let renderer = i.u8();
    let features = i.u8();
    let rig = rig(renderer).lock().unwrap_or_else(|e| e.into_inner());
    let floor = rss::run_floor();
    let mut run = Run::start(&rig, features, MemoryBound::start(floor));
    let mut actions = 0;
    while !i.is_empty() && actions < 512 {
        actions += 1;
        let op = i.u8();
        let q = usize::from(op & 0x08 != 0);
        match op & 7 {
            0..=2 => {
                let cmd = commands::command(&mut i);
                let layout = i.u8();
                run.command_chain(q, &cmd, layout, &mut i);
            }
            3 => {
                let n = usize::from(i.u16() % 8192);
                let cmd = i.bytes(n).to_vec();
                let layout = i.u8();
                run.command_chain(q, &cmd, layout, &mut i);
            }
            4 => run.flush(),
            5 => {
                run.flush();
                run.setup();
            }
            6 => {
                // A cursor command on the cursor queue.
                let cmd = commands::command(&mut i);
                run.command_chain(1, &cmd, 0, &mut i);
            }
            _ => run.raw_chain(q, &mut i),
        }
    }
    run.flush();
    if std::env::var_os("GPU_FUZZ_VERBOSE").is_some() {
        // For seeing what an input reaches.
        eprintln!("device before the reset: {:?}", rig.device.stats());
    }
    // Everything the guest made goes with a reset, and every byte charged
    // to its budget once the shards have run it.
    rig.device.reset().expect("reset");
    let deadline = Instant::now() + LOST;
    loop {
        let s = rig.device.stats().expect("stats");
        if (
            s.contexts,
            s.resources,
            s.resource_bytes,
            s.guest_memory_bytes,
        ) == (0, 0, 0, 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "left after a reset: {s:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
}
