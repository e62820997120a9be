//! A minimal vhost-user GPU backend for the frontend's tests: the `vhost`
//! crate's request handler, a log of every request in order, real guest
//! memory and rings (virtio-queue), and enough of a GPU to answer
//! GET_DISPLAY_INFO through the VMM (the GPU socket), turn SET_SCANOUT and
//! RESOURCE_FLUSH into SCANOUT and UPDATE messages, and ask for SHMEM_MAP.
//! Knobs make it misbehave: stall on GET_VRING_BASE, or die on request.

#![allow(dead_code)]

use std::fs::File;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gpu::protocol::{decode, DecodeContext, GpuCommand, GpuConfig, Response};
use vhost::vhost_user::gpu_message::{
    VhostUserGpuEdidRequest, VhostUserGpuScanout, VhostUserGpuUpdate,
};
use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut, VhostUserFrontendReqHandler, VhostUserProtocolFeatures as P,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestRegionMmap,
};

pub const VERSION_1: u64 = 1 << 32;
pub const EVENT_IDX: u64 = 1 << 29;
pub const INDIRECT: u64 = 1 << 28;
pub const PROTOCOL_FEATURES: u64 = 1 << 30;
pub const GPU_F_EDID: u64 = 1 << 1;
/// The pixel every UPDATE the fake sends is filled with.
pub const FLUSH_PIXEL: u32 = 0xff11_2233;
/// The host-visible region size the fake reports for shmid 1.
pub const SHMEM_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct FakeOptions {
    pub protocol: P,
    pub virtio: u64,
    pub num_scanouts: u32,
    /// GET_VRING_BASE never answers (until the fake is killed).
    pub stall_on_get_vring_base: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            protocol: P::MQ
                | P::REPLY_ACK
                | P::CONFIG
                | P::BACKEND_REQ
                | P::BACKEND_SEND_FD
                | P::CONFIGURE_MEM_SLOTS
                | P::RESET_DEVICE
                | P::SHMEM,
            virtio: VERSION_1 | EVENT_IDX | INDIRECT | PROTOCOL_FEATURES | GPU_F_EDID,
            num_scanouts: 1,
            stall_on_get_vring_base: false,
        }
    }
}

/// A running fake backend.
pub struct FakeBackend {
    device: Arc<Mutex<Device>>,
    conn: Arc<Mutex<Option<UnixStream>>>,
    killed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeBackend {
    /// Serves an already connected socket.
    pub fn spawn(stream: UnixStream, opts: FakeOptions) -> Self {
        let mut fake = Self::new(opts);
        *lock(&fake.conn) = Some(stream.try_clone().unwrap());
        let (device, killed) = (Arc::clone(&fake.device), Arc::clone(&fake.killed));
        fake.thread = Some(std::thread::spawn(move || serve(stream, device, killed)));
        fake
    }

    /// Listens at `path` and serves the first frontend that connects.
    pub fn listen(path: &Path, opts: FakeOptions) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let mut fake = Self::new(opts);
        let (device, killed, conn) = (
            Arc::clone(&fake.device),
            Arc::clone(&fake.killed),
            Arc::clone(&fake.conn),
        );
        fake.thread = Some(std::thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                *lock(&conn) = Some(stream.try_clone().unwrap());
                serve(stream, device, killed);
            }
        }));
        fake
    }

    fn new(opts: FakeOptions) -> Self {
        let killed = Arc::new(AtomicBool::new(false));
        Self {
            device: Arc::new(Mutex::new(Device::new(opts, Arc::clone(&killed)))),
            conn: Arc::new(Mutex::new(None)),
            killed,
            thread: None,
        }
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<&'static str> {
        lock(&self.device).log.clone()
    }

    /// Protocol features the frontend acked.
    pub fn acked_protocol(&self) -> P {
        P::from_bits_truncate(lock(&self.device).acked_protocol)
    }

    /// Virtio features the frontend acked.
    pub fn acked_features(&self) -> u64 {
        lock(&self.device).acked_features
    }

    /// GPU socket protocol features the VMM offered.
    pub fn gpu_protocol_offer(&self) -> Option<u64> {
        lock(&self.device).gpu_protocol_offer
    }

    /// Sends SHMEM_MAP for `len` bytes of `file` at `shm_offset` on the
    /// backend request channel; returns the frontend's answer.
    pub fn shmem_map(&self, file: &File, shm_offset: u64, len: u64) -> std::io::Result<u64> {
        let backend = lock(&self.device)
            .backend
            .clone()
            .expect("no backend channel");
        let req = VhostUserMMap {
            shmid: 1,
            fd_offset: 0,
            shm_offset,
            len,
            flags: VhostUserMMapFlags::WRITABLE.bits(),
            ..Default::default()
        };
        backend.shmem_map(&req, file)
    }

    pub fn shmem_unmap(&self, shm_offset: u64, len: u64) -> std::io::Result<u64> {
        let backend = lock(&self.device)
            .backend
            .clone()
            .expect("no backend channel");
        let req = VhostUserMMap {
            shmid: 1,
            shm_offset,
            len,
            ..Default::default()
        };
        backend.shmem_unmap(&req)
    }

    /// The backend dies: every socket closes, the rings stop.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        if let Some(c) = lock(&self.conn).as_ref() {
            let _ = c.shutdown(Shutdown::Both);
        }
        let mut dev = lock(&self.device);
        dev.stop_rings();
        dev.gpu = None;
        dev.backend = None;
    }

    /// Waits for the control connection to end (after kill or shutdown).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.kill();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn serve(stream: UnixStream, device: Arc<Mutex<Device>>, killed: Arc<AtomicBool>) {
    let mut handler = BackendReqHandler::from_stream(stream, device);
    loop {
        match handler.handle_request() {
            Ok(()) => {}
            Err(
                VuError::Disconnected
                | VuError::PartialMessage
                | VuError::SocketBroken(_)
                | VuError::SocketError(_),
            ) => return,
            Err(_) if killed.load(Ordering::Acquire) => return,
            // A refused request was already answered; keep serving.
            Err(_) => {}
        }
    }
}

#[derive(Default)]
struct Ring {
    size: u16,
    base: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: Option<File>,
    call: Option<File>,
    worker: Option<(Arc<AtomicBool>, JoinHandle<u16>)>,
}

struct MemRegion {
    gpa: u64,
    size: u64,
    uaddr: u64,
}

struct Device {
    opts: FakeOptions,
    killed: Arc<AtomicBool>,
    log: Vec<&'static str>,
    acked_protocol: u64,
    acked_features: u64,
    regions: Vec<MemRegion>,
    mem: Option<GuestMemoryMmap>,
    rings: [Ring; 2],
    gpu: Option<GpuBackend>,
    gpu_protocol_offer: Option<u64>,
    backend: Option<Arc<Backend>>,
}

impl Device {
    fn new(opts: FakeOptions, killed: Arc<AtomicBool>) -> Self {
        Self {
            opts,
            killed,
            log: Vec::new(),
            acked_protocol: 0,
            acked_features: 0,
            regions: Vec::new(),
            mem: None,
            rings: Default::default(),
            gpu: None,
            gpu_protocol_offer: None,
            backend: None,
        }
    }

    fn to_gpa(&self, uaddr: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| uaddr >= r.uaddr && uaddr < r.uaddr + r.size)
            .map(|r| uaddr - r.uaddr + r.gpa)
    }

    fn add_region(&mut self, r: &VhostUserMemoryRegion, file: File) -> VuResult<()> {
        let region = GuestRegionMmap::from_range(
            GuestAddress(r.guest_phys_addr),
            r.memory_size as usize,
            Some(FileOffset::new(file, r.mmap_offset)),
        )
        .map_err(|_| VuError::InvalidParam)?;
        let mut regions: Vec<GuestRegionMmap> = Vec::new();
        if let Some(old) = self.mem.take() {
            for reg in old.iter() {
                let fo =
                    vm_memory::GuestMemoryRegion::file_offset(reg).ok_or(VuError::InvalidParam)?;
                regions.push(
                    GuestRegionMmap::from_range(
                        vm_memory::GuestMemoryRegion::start_addr(reg),
                        vm_memory::GuestMemoryRegion::len(reg) as usize,
                        Some(FileOffset::from_arc(Arc::clone(fo.arc()), fo.start())),
                    )
                    .map_err(|_| VuError::InvalidParam)?,
                );
            }
        }
        regions.push(region);
        self.mem = Some(GuestMemoryMmap::from_regions(regions).map_err(|_| VuError::InvalidParam)?);
        self.regions.push(MemRegion {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
            uaddr: r.user_addr,
        });
        Ok(())
    }

    fn start_ring(&mut self, index: usize) -> VuResult<()> {
        let mem = self
            .mem
            .clone()
            .ok_or(VuError::InvalidOperation("no memory"))?;
        let (desc, avail, used) = {
            let r = &self.rings[index];
            (
                self.to_gpa(r.desc),
                self.to_gpa(r.avail),
                self.to_gpa(r.used),
            )
        };
        let (Some(desc), Some(avail), Some(used)) = (desc, avail, used) else {
            return Err(VuError::InvalidParam);
        };
        let ring = &mut self.rings[index];
        let kick = ring
            .kick
            .as_ref()
            .ok_or(VuError::InvalidParam)?
            .try_clone()
            .unwrap();
        let call = ring
            .call
            .as_ref()
            .ok_or(VuError::InvalidParam)?
            .try_clone()
            .unwrap();
        let mut q = Queue::new(ring.size.max(1)).map_err(|_| VuError::InvalidParam)?;
        q.set_size(ring.size);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(used);
        q.set_used_ring_address(lo, hi);
        q.set_event_idx(self.acked_features & EVENT_IDX != 0);
        q.set_next_avail(ring.base);
        q.set_next_used(ring.base);
        q.set_ready(true);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            queue: q,
            mem,
            kick,
            call,
            gpu: self.gpu.clone(),
            control: index == 0,
            stop: Arc::clone(&stop),
        };
        ring.worker = Some((stop, std::thread::spawn(move || worker.run())));
        Ok(())
    }

    fn stop_rings(&mut self) {
        for i in 0..2 {
            self.stop_ring(i);
        }
    }

    fn stop_ring(&mut self, index: usize) -> u16 {
        let ring = &mut self.rings[index];
        if let Some((stop, t)) = ring.worker.take() {
            stop.store(true, Ordering::Release);
            ring.base = t.join().unwrap_or(ring.base);
        }
        ring.base
    }
}

impl VhostUserBackendReqHandlerMut for Device {
    fn set_owner(&mut self) -> VuResult<()> {
        self.log.push("SET_OWNER");
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.log.push("RESET_OWNER");
        self.stop_rings();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.log.push("RESET_DEVICE");
        self.stop_rings();
        self.rings = Default::default();
        self.gpu = None;
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        self.log.push("GET_FEATURES");
        Ok(self.opts.virtio)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        self.log.push("SET_FEATURES");
        self.acked_features = features;
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.log.push("SET_MEM_TABLE");
        self.mem = None;
        self.regions.clear();
        for (r, f) in ctx.iter().zip(files) {
            self.add_region(r, f)?;
        }
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.log.push("SET_VRING_NUM");
        self.rings[index as usize].size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.log.push("SET_VRING_ADDR");
        let r = &mut self.rings[index as usize];
        (r.desc, r.used, r.avail) = (descriptor, used, available);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.log.push("SET_VRING_BASE");
        self.rings[index as usize].base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.log.push("GET_VRING_BASE");
        if self.opts.stall_on_get_vring_base {
            let until = Instant::now() + Duration::from_secs(30);
            while !self.killed.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(VuError::Disconnected);
        }
        let base = self.stop_ring(index as usize);
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.log.push("SET_VRING_KICK");
        self.rings[index as usize].kick = fd;
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.log.push("SET_VRING_CALL");
        self.rings[index as usize].call = fd;
        Ok(())
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        self.log.push("SET_VRING_ERR");
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<P> {
        self.log.push("GET_PROTOCOL_FEATURES");
        Ok(self.opts.protocol)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.log.push("SET_PROTOCOL_FEATURES");
        self.acked_protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        self.log.push("GET_QUEUE_NUM");
        Ok(2)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.log.push("SET_VRING_ENABLE");
        if enable {
            self.start_ring(index as usize)
        } else {
            self.stop_ring(index as usize);
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        self.log.push("GET_CONFIG");
        let cfg = GpuConfig {
            num_scanouts: self.opts.num_scanouts,
            ..GpuConfig::default()
        }
        .to_bytes();
        cfg.get(offset as usize..(offset + size) as usize)
            .map(<[u8]>::to_vec)
            .ok_or(VuError::InvalidParam)
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        self.log.push("SET_CONFIG");
        Ok(())
    }

    fn set_backend_req_fd(&mut self, backend: Backend) {
        self.log.push("SET_BACKEND_REQ_FD");
        backend.set_reply_ack_flag(self.acked_protocol & P::REPLY_ACK.bits() != 0);
        backend.set_shmem_flag(self.acked_protocol & P::SHMEM.bits() != 0);
        self.backend = Some(Arc::new(backend));
    }

    fn set_gpu_socket(&mut self, gpu: GpuBackend) -> VuResult<()> {
        self.log.push("GPU_SET_SOCKET");
        // As QEMU's backend: ask the VMM what it speaks right away.
        let offer = gpu
            .get_protocol_features()
            .map_err(VuError::ReqHandlerError)?;
        gpu.set_protocol_features(&offer)
            .map_err(VuError::ReqHandlerError)?;
        self.gpu_protocol_offer = Some(offer.value);
        self.gpu = Some(gpu);
        Ok(())
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, _i: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(VuError::InvalidOperation("no inflight"))
    }

    fn set_inflight_fd(&mut self, _i: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("no inflight"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        self.log.push("GET_MAX_MEM_SLOTS");
        Ok(8)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        self.log.push("ADD_MEM_REG");
        self.add_region(region, fd)?;
        Ok(None)
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        self.log.push("REM_MEM_REG");
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("no migration"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("no migration"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        self.log.push("GET_SHMEM_CONFIG");
        Ok(VhostUserShMemConfig::new(2, &[0, SHMEM_SIZE]))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("no logging"))
    }
}

/// Serves one ring until stopped; returns where it stopped (next avail).
struct Worker {
    queue: Queue,
    mem: GuestMemoryMmap,
    kick: File,
    call: File,
    gpu: Option<GpuBackend>,
    control: bool,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) -> u16 {
        while !self.stop.load(Ordering::Acquire) {
            let mut pfd = libc::pollfd {
                fd: self.kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
                continue;
            }
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a live local.
            unsafe { libc::read(self.kick.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
            self.drain();
        }
        self.queue.next_avail()
    }

    fn drain(&mut self) {
        loop {
            let _ = self.queue.disable_notification(&self.mem);
            while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                let len = if self.control { self.answer(&descs) } else { 0 };
                self.queue.add_used(&self.mem, head, len).unwrap();
            }
            if !self.queue.enable_notification(&self.mem).unwrap_or(false) {
                break;
            }
        }
        if self.queue.needs_notification(&self.mem).unwrap_or(true) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live local.
            unsafe { libc::write(self.call.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Handles one control command; returns the bytes written back.
    fn answer(&self, descs: &[virtio_queue::desc::split::Descriptor]) -> u32 {
        let mut req = Vec::new();
        for d in descs.iter().filter(|d| !d.is_write_only()) {
            let mut buf = vec![0u8; d.len() as usize];
            self.mem.read_slice(&mut buf, d.addr()).unwrap();
            req.extend_from_slice(&buf);
        }
        let resp = match decode(&req, &DecodeContext::default()) {
            Ok(r) => {
                let mut out = Vec::new();
                let body = self.execute(&r.cmd);
                match body {
                    Reply::Raw(bytes) => out = bytes,
                    Reply::Typed(resp) => resp.encode(&r.hdr, &mut out),
                }
                out
            }
            Err(e) => {
                let mut out = Vec::new();
                Response::from(&e).encode(&Default::default(), &mut out);
                out
            }
        };
        let mut written = 0usize;
        for d in descs.iter().filter(|d| d.is_write_only()) {
            let n = (d.len() as usize).min(resp.len() - written);
            self.mem
                .write_slice(&resp[written..written + n], d.addr())
                .unwrap();
            written += n;
        }
        written as u32
    }

    fn execute(&self, cmd: &GpuCommand) -> Reply {
        let Some(gpu) = &self.gpu else {
            return Reply::Typed(Response::Err(0x1200));
        };
        match cmd {
            GpuCommand::GetDisplayInfo => match gpu.get_display_info() {
                Ok(info) => Reply::Raw(info.as_slice().to_vec()),
                Err(_) => Reply::Typed(Response::Err(0x1200)),
            },
            GpuCommand::GetEdid(e) => {
                let req = VhostUserGpuEdidRequest {
                    scanout_id: e.scanout_id.0,
                };
                match gpu.get_edid(&req) {
                    Ok(edid) => Reply::Raw(edid.as_slice().to_vec()),
                    Err(_) => Reply::Typed(Response::Err(0x1200)),
                }
            }
            GpuCommand::SetScanout(s) => {
                let msg = VhostUserGpuScanout {
                    scanout_id: s.scanout_id.0,
                    width: s.rect.width,
                    height: s.rect.height,
                };
                let _ = gpu.set_scanout(&msg);
                Reply::Typed(Response::OkNodata)
            }
            GpuCommand::ResourceFlush(f) => {
                let r = f.rect;
                let pixels: Vec<u8> =
                    std::iter::repeat_n(FLUSH_PIXEL.to_le_bytes(), (r.width * r.height) as usize)
                        .flatten()
                        .collect();
                let msg = VhostUserGpuUpdate {
                    scanout_id: 0,
                    x: r.x,
                    y: r.y,
                    width: r.width,
                    height: r.height,
                };
                let _ = gpu.update_scanout(&msg, &pixels);
                Reply::Typed(Response::OkNodata)
            }
            _ => Reply::Typed(Response::OkNodata),
        }
    }
}

enum Reply {
    Raw(Vec<u8>),
    Typed(Response),
}

/// Guest RAM small enough for many tests at once.
pub fn ram() -> loadgen::frontend::GuestRam {
    loadgen::frontend::GuestRam::new(16 << 20).unwrap()
}

/// Frontend options for tests: small queues, short timeouts, two 640x480
/// scanouts.
pub fn options() -> loadgen::frontend::vhost::VhostOptions {
    use loadgen::frontend::vhost::{DisplayOptions, VhostOptions};
    VhostOptions {
        queue_size: 64,
        control_timeout: Duration::from_secs(2),
        display: DisplayOptions {
            scanouts: 2,
            width: 640,
            height: 480,
            ..DisplayOptions::default()
        },
        ..VhostOptions::default()
    }
}

/// A fake backend on one end of a socketpair, the frontend set up on the
/// other (loadgen's embedded mode).
pub fn connected(
    fake: FakeOptions,
    opts: loadgen::frontend::vhost::VhostOptions,
) -> (
    FakeBackend,
    Result<
        (
            loadgen::frontend::vhost::VhostFrontend,
            loadgen::driver::GpuDriver,
        ),
        loadgen::frontend::vhost::VhostError,
    >,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let backend = FakeBackend::spawn(theirs, fake);
    let session = loadgen::frontend::vhost::VhostFrontend::from_stream(ours, ram(), opts);
    (backend, session)
}

/// The error of a call expected to fail (the success type is not Debug).
pub fn expect_err<T>(
    r: Result<T, loadgen::frontend::vhost::VhostError>,
) -> loadgen::frontend::vhost::VhostError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}
