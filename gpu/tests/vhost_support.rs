//! A hand-written vhost-user frontend for the vhost tests: it speaks the
//! control socket message by message, so each test states exactly what a
//! VMM sends. Guest RAM, rings and the driver come from loadgen.
//!
//! Included by the `vhost_*` tests with `#[path]`; built alone it is an
//! empty test crate.
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use gpu::device::{DeviceConfig, VIRTIO_RING_F_EVENT_IDX};
use gpu::vhost::frame::{self, Header, Message, FLAG_NEED_REPLY};
use gpu::vhost::{offered_protocol_features, Backend, BackendOptions, SessionEnd};
use loadgen::driver::{GpuDriver, Queue, QueueEnds};
use loadgen::frontend::{DriverQueue, GuestRam, QueueFeatures};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserSingleMemoryRegion, VhostUserVringAddr, VhostUserVringAddrFlags,
    VhostUserVringState,
};
use vm_memory::ByteValued;

pub const T: Duration = Duration::from_secs(10);
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
pub const RING_SIZE: u16 = 256;

pub fn options() -> BackendOptions {
    BackendOptions {
        shards: 2,
        display_reply_timeout: Duration::from_millis(300),
        blob_reply_timeout: Duration::from_secs(2),
        stall_warn: None,
        ..BackendOptions::default()
    }
}

pub fn options_with_outputs(n: u32) -> BackendOptions {
    BackendOptions {
        device: DeviceConfig {
            num_scanouts: n,
            ..DeviceConfig::default()
        },
        ..options()
    }
}

/// The frontend's end of the control socket.
pub struct Frontend {
    pub sock: UnixStream,
}

/// A backend serving one frontend over a socketpair on a control thread.
pub struct Running {
    pub backend: Arc<Backend>,
    pub frontend: Frontend,
    pub session: JoinHandle<SessionEnd>,
}

pub fn start(opts: BackendOptions) -> Running {
    let backend = Arc::new(Backend::start(opts).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let b = backend.clone();
    let session = thread::spawn(move || b.serve_stream(theirs));
    ours.set_read_timeout(Some(T)).unwrap();
    Running {
        backend,
        frontend: Frontend { sock: ours },
        session,
    }
}

impl Frontend {
    pub fn connect(path: &std::path::Path) -> Frontend {
        let sock = UnixStream::connect(path).unwrap();
        sock.set_read_timeout(Some(T)).unwrap();
        Frontend { sock }
    }

    pub fn send(&self, req: FrontendReq, flags: u32, payload: &[u8], fds: &[BorrowedFd<'_>]) {
        frame::send(
            &self.sock,
            Header::request(req as u32, flags, payload.len()),
            payload,
            fds,
        )
        .unwrap();
    }

    pub fn send_raw(&self, header: Header, payload: &[u8]) {
        frame::send(&self.sock, header, payload, &[]).unwrap();
    }

    pub fn recv(&self) -> Message {
        frame::recv(&self.sock).unwrap()
    }

    /// True when the backend closed the connection.
    pub fn is_closed(&self) -> bool {
        matches!(frame::recv(&self.sock), Err(frame::FrameError::Closed))
    }

    pub fn reply_for(&self, req: FrontendReq) -> Message {
        let m = self.recv();
        assert_eq!(m.header.request, req as u32, "reply to the wrong request");
        assert!(m.header.is_reply());
        m
    }

    pub fn get_u64(&self, req: FrontendReq) -> u64 {
        self.send(req, 0, &[], &[]);
        let m = self.reply_for(req);
        u64::from_ne_bytes(m.payload.try_into().unwrap())
    }

    pub fn set_u64(&self, req: FrontendReq, v: u64) {
        self.send(req, 0, &v.to_ne_bytes(), &[]);
    }

    /// Sends with NEED_REPLY and returns the REPLY_ACK status.
    pub fn acked(&self, req: FrontendReq, payload: &[u8], fds: &[BorrowedFd<'_>]) -> u64 {
        self.send(req, FLAG_NEED_REPLY, payload, fds);
        let m = self.reply_for(req);
        u64::from_ne_bytes(m.payload.try_into().unwrap())
    }

    /// What QEMU does first: features, protocol features (all offered),
    /// owner, and the driver's features (VERSION_1, EVENT_IDX).
    pub fn negotiate(&self) -> u64 {
        let features = self.get_u64(FrontendReq::GET_FEATURES);
        let proto = self.get_u64(FrontendReq::GET_PROTOCOL_FEATURES);
        assert_eq!(proto, offered_protocol_features().bits());
        self.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, proto);
        assert_eq!(self.acked(FrontendReq::SET_OWNER, &[], &[]), 0);
        let acked = features & ((1 << 32) | (1 << VIRTIO_RING_F_EVENT_IDX) | PROTOCOL_FEATURES);
        assert_eq!(
            self.acked(FrontendReq::SET_FEATURES, &acked.to_ne_bytes(), &[]),
            0
        );
        acked
    }

    pub fn add_ram(&self, ram: &GuestRam) {
        let r = VhostUserSingleMemoryRegion::new(
            ram.base().0,
            ram.size(),
            ram.userspace_addr(),
            ram.mmap_offset(),
        );
        let status = self.acked(
            FrontendReq::ADD_MEM_REG,
            r.as_slice(),
            &[ram.file().as_fd()],
        );
        assert_eq!(status, 0);
    }

    pub fn vring_state(&self, req: FrontendReq, index: u32, num: u32) -> u64 {
        let s = VhostUserVringState::new(index, num);
        self.acked(req, s.as_slice(), &[])
    }

    /// SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR (frontend addresses).
    pub fn ring_layout(&self, index: u32, ram: &GuestRam, q: &DriverQueue, base: u16) {
        let num = u32::from(q.size());
        assert_eq!(self.vring_state(FrontendReq::SET_VRING_NUM, index, num), 0);
        let base = u32::from(base);
        assert_eq!(
            self.vring_state(FrontendReq::SET_VRING_BASE, index, base),
            0
        );
        let va = |gpa: vm_memory::GuestAddress| ram.userspace_addr() + (gpa.0 - ram.base().0);
        let a = VhostUserVringAddr::new(
            index,
            VhostUserVringAddrFlags::empty(),
            va(q.desc_table()),
            va(q.used_ring()),
            va(q.avail_ring()),
            0,
        );
        assert_eq!(
            self.acked(FrontendReq::SET_VRING_ADDR, a.as_slice(), &[]),
            0
        );
    }

    pub fn vring_fd(&self, req: FrontendReq, index: u32, fd: &OwnedFd) -> u64 {
        self.acked(req, &u64::from(index).to_ne_bytes(), &[fd.as_fd()])
    }

    pub fn enable(&self, index: u32, on: bool) {
        let status = self.vring_state(FrontendReq::SET_VRING_ENABLE, index, u32::from(on));
        assert_eq!(status, 0);
    }

    /// A whole set-up: negotiate, RAM, both rings laid out, call and kick
    /// fds given, rings enabled. Returns the driver.
    pub fn bring_up(&self, ram: &GuestRam) -> GpuDriver {
        self.negotiate();
        self.add_ram(ram);
        let (driver, ends) = new_driver(ram);
        for (i, q) in [Queue::Control, Queue::Cursor].into_iter().enumerate() {
            let QueueEnds { kick, call } = &ends[i];
            let i = i as u32;
            self.ring_layout(i, ram, driver.queue(q), 0);
            assert_eq!(self.vring_fd(FrontendReq::SET_VRING_CALL, i, call), 0);
            assert_eq!(self.vring_fd(FrontendReq::SET_VRING_KICK, i, kick), 0);
            self.enable(i, true);
        }
        driver
    }
}

pub fn guest_ram() -> GuestRam {
    GuestRam::new(64 << 20).unwrap()
}

pub fn new_driver(ram: &GuestRam) -> (GpuDriver, [QueueEnds; 2]) {
    GpuDriver::new(
        ram.clone(),
        RING_SIZE,
        QueueFeatures {
            event_idx: true,
            indirect: true,
        },
    )
    .unwrap()
}

pub fn eventfd() -> OwnedFd {
    // SAFETY: no pointers; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: fresh fd we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads an eventfd's counter without blocking (0: not signalled).
pub fn eventfd_count(fd: &OwnedFd) -> u64 {
    use std::os::fd::AsRawFd;
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local; the fd is non-blocking.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

/// Every log line of this test binary (all threads), for asserting on.
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(sink.clone()))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
        buf
    })
    .clone()
}

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
