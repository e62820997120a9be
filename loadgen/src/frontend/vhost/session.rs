//! [`VhostFrontend`]: the VMM side of one vhost-user GPU session.
//!
//! Control messages go through the `vhost` crate's `Frontend`, in the order
//! QEMU 10 sends them to a vhost-user GPU; `GPU_SET_SOCKET`, which the crate
//! lacks, is framed by `gpu_set_socket`. Every request runs under a
//! [`ControlDeadline`], so a backend that stops answering or goes away gives
//! an error, never a hang. The result is a [`GpuDriver`] whose rings the
//! backend serves, and this handle, which keeps the GPU socket and the
//! backend request channel served until it is shut down or dropped.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures as Proto};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use gpu::protocol::GpuConfig;

use crate::driver::{GpuDriver, Queue, QueueEnds};
use crate::frontend::GuestRam;

use super::backend_req::{BackendReqServer, BackendReqStats};
use super::deadline::ControlDeadline;
use super::display::{DisplayStats, VmmDisplay};
use super::error::VhostError;
use super::features::{
    driver_features, queue_features, wanted_protocol, MemoryMessage, Negotiated,
    VHOST_USER_F_PROTOCOL_FEATURES,
};
use super::gpu_set_socket::{self, SetSocketError};
use super::gpu_socket::GpuSocketServer;
use super::options::{MemTableMode, SetupPause, VhostOptions};
use super::shmem_region::HostVisibleRegion;

/// The GPU device's queues: control and cursor.
const QUEUES: usize = 2;

/// One session with a vhost-user GPU backend.
pub struct VhostFrontend {
    // Dropped first: the threads stop before the control socket closes.
    gpu_socket: Option<GpuSocketServer>,
    backend_req: Option<BackendReqServer>,
    deadline: ControlDeadline,
    frontend: Frontend,
    /// A clone of the control socket: `GPU_SET_SOCKET` and liveness.
    ctrl: UnixStream,
    ram: GuestRam,
    opts: VhostOptions,
    display: Arc<VmmDisplay>,
    region: Option<Arc<HostVisibleRegion>>,
    negotiated: Negotiated,
    /// `ADD_MEM_REG` was sent (it is not repeated after a reset).
    memory_added: bool,
    /// Why the control channel is unusable, once it is.
    broken: Option<String>,
    /// What a paused set-up still has to send ([`SetupPause`]).
    remaining: Option<RemainingSetup>,
    /// Where the backend listens (`connect` only): what `reconnect` dials.
    path: Option<PathBuf>,
    /// The inflight buffer (`GET_INFLIGHT_FD`), kept across reconnects.
    inflight: Option<(VhostUserInflight, File)>,
    /// Per ring: our copies of the kick and call eventfds the backend was
    /// given, handed again to a backend after a reconnect.
    ring_fds: Vec<(OwnedFd, OwnedFd)>,
}

/// What [`VhostFrontend::reconnect`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnected {
    /// Connection attempts until the backend accepted.
    pub attempts: u32,
    /// `SET_VRING_BASE` sent per ring: the used index (as QEMU sends it
    /// when the old backend could not say where it stopped).
    pub bases: [u16; QUEUES],
    /// Whether the inflight buffer was handed to the new backend.
    pub inflight: bool,
}

/// The part of a set-up held back by [`SetupPause`].
struct RemainingSetup {
    memory: bool,
    /// Ring addresses still to send, by ring index.
    addrs: Vec<VringConfigData>,
}

impl std::fmt::Debug for VhostFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostFrontend")
            .field("negotiated", &self.negotiated)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl VhostFrontend {
    /// Connects to a backend listening at `path` and sets the device up.
    pub fn connect(
        path: impl AsRef<Path>,
        ram: GuestRam,
        opts: VhostOptions,
    ) -> Result<(Self, GpuDriver), VhostError> {
        let path = path.as_ref();
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if started.elapsed() >= opts.connect_wait {
                        return Err(VhostError::NoBackend {
                            path: path.to_path_buf(),
                            source: e,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(VhostError::Connect {
                        path: path.to_path_buf(),
                        source: e,
                    })
                }
            }
        };
        let (mut session, driver) = Self::from_stream(stream, ram, opts)?;
        session.path = Some(path.to_path_buf());
        Ok((session, driver))
    }

    /// Sets the device up over an already connected socket (loadgen's
    /// embedded mode hands one end of a socketpair).
    pub fn from_stream(
        stream: UnixStream,
        ram: GuestRam,
        opts: VhostOptions,
    ) -> Result<(Self, GpuDriver), VhostError> {
        let local = |what| move |source| VhostError::Local { what, source };
        let ctrl = stream
            .try_clone()
            .map_err(local("cloning the control socket"))?;
        let watched = stream
            .try_clone()
            .map_err(local("cloning the control socket"))?;
        let deadline = ControlDeadline::start(watched).map_err(local("starting the watchdog"))?;
        let display = Arc::new(VmmDisplay::new(opts.display.clone()));
        let mut session = Self {
            gpu_socket: None,
            backend_req: None,
            deadline,
            frontend: Frontend::from_stream(stream, QUEUES as u64),
            ctrl,
            ram,
            opts,
            display,
            region: None,
            negotiated: Negotiated {
                offered: 0,
                acked: 0,
                offered_protocol: Proto::empty(),
                protocol: Proto::empty(),
                queue_num: QUEUES as u64,
                max_mem_slots: None,
                config: None,
                shmem_sizes: None,
                memory: MemoryMessage::SetMemTable,
                queue_features: Default::default(),
            },
            memory_added: false,
            broken: None,
            remaining: None,
            path: None,
            inflight: None,
            ring_fds: Vec::new(),
        };
        session.negotiate()?;
        session.attach_gpu_socket()?;
        let driver = session.start_device()?;
        Ok((session, driver))
    }

    /// What was negotiated and learnt from the backend.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The VMM's display (framebuffers, counters) the GPU socket feeds.
    pub fn display(&self) -> &Arc<VmmDisplay> {
        &self.display
    }

    /// A snapshot of the display counters.
    pub fn display_stats(&self) -> DisplayStats {
        self.display.stats()
    }

    /// The host-visible region `SHMEM_MAP` requests map into.
    pub fn shmem_region(&self) -> Option<&Arc<HostVisibleRegion>> {
        self.region.as_ref()
    }

    /// What the backend asked for on the backend request channel.
    pub fn backend_req_stats(&self) -> BackendReqStats {
        self.backend_req
            .as_ref()
            .map_or_else(BackendReqStats::default, BackendReqServer::stats)
    }

    /// Ok while the backend keeps the control socket open (it never sends
    /// anything unasked, so a readable socket means it closed or broke the
    /// protocol). Does not block.
    pub fn check_alive(&self) -> Result<(), VhostError> {
        const OP: &str = "the idle control connection";
        if let Some(cause) = &self.broken {
            return Err(VhostError::Broken {
                op: OP,
                cause: cause.clone(),
            });
        }
        let mut pfd = libc::pollfd {
            fd: self.ctrl.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one live pollfd; a zero timeout never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 {
            return Err(VhostError::Local {
                what: "polling the control socket",
                source: io::Error::last_os_error(),
            });
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
            return Err(VhostError::BackendClosed { op: OP });
        }
        if pfd.revents & libc::POLLIN != 0 {
            return Err(VhostError::Protocol {
                op: OP,
                detail: "the backend sent a message nobody asked for".into(),
            });
        }
        Ok(())
    }

    /// A device reset as QEMU does it, followed by a driver reload: the
    /// rings are stopped (`GET_VRING_BASE`), the old driver dropped, the
    /// device reset (`RESET_DEVICE`, or `RESET_OWNER` + `SET_OWNER` without
    /// it), a new GPU socket handed over (unless
    /// `reset_replaces_gpu_socket` is off), and a new driver set up on the
    /// same guest RAM.
    pub fn reset(&mut self, old: GpuDriver) -> Result<GpuDriver, VhostError> {
        self.stop_rings()?;
        drop(old);
        if let Some(region) = &self.region {
            region.unmap_all();
        }
        let replace = self.opts.reset_replaces_gpu_socket;
        if replace {
            // QEMU closes its end of the GPU socket when the device stops.
            self.gpu_socket = None;
        }
        if self.negotiated.protocol.contains(Proto::RESET_DEVICE) {
            self.op("RESET_DEVICE", |f| f.reset_device())?;
        } else {
            // A backend may forget REPLY_ACK with its owner: ask for no
            // acks until the protocol features are set again.
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
            self.op("RESET_OWNER", |f| f.reset_owner())?;
            self.op("SET_OWNER", |f| f.set_owner())?;
            if self.negotiated.offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                let proto = self.negotiated.protocol;
                self.op("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(proto))?;
            }
            self.ack_replies();
        }
        if replace {
            self.attach_gpu_socket()?;
        }
        // A reset guest starts with fresh rings: a new inflight buffer
        // (the old one describes rings that are gone), as QEMU does.
        self.inflight = None;
        self.start_device()
    }

    /// Takes the device up again on a new backend after the old one went
    /// away (closed its socket, was killed), keeping the guest as it is:
    /// the same driver, rings, guest RAM and outstanding commands.
    ///
    /// Dials the same path until `deadline`, then replays the set-up as
    /// QEMU does on a reconnect: features, protocol features, the backend
    /// request channel and GPU socket (new ones), `SET_INFLIGHT_FD` with
    /// the same buffer, `SET_FEATURES`, guest RAM, and per ring its size,
    /// `SET_VRING_BASE` = the used ring's `idx` (the old backend cannot say
    /// where it stopped; with the inflight buffer the new one finds the
    /// chains it had taken), the same addresses, kick and call eventfds,
    /// enable; then kicks both rings. Mappings the old backend made in the
    /// host-visible region are dropped (the new one has none).
    pub fn reconnect(
        &mut self,
        driver: &GpuDriver,
        deadline: Instant,
    ) -> Result<Reconnected, VhostError> {
        let Some(path) = self.path.clone() else {
            return Err(VhostError::Unsupported(
                "reconnect needs a backend socket path (the session was set up on a socket it was handed)".into(),
            ));
        };
        let mut attempts = 0u32;
        let stream = loop {
            attempts += 1;
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(source) => return Err(VhostError::NoBackend { path, source }),
            }
        };
        let local = |what| move |source| VhostError::Local { what, source };
        // The old session's threads and sockets go first.
        self.gpu_socket = None;
        self.backend_req = None;
        if let Some(region) = &self.region {
            region.unmap_all();
        }
        self.ctrl = stream
            .try_clone()
            .map_err(local("cloning the control socket"))?;
        let watched = stream
            .try_clone()
            .map_err(local("cloning the control socket"))?;
        self.deadline = ControlDeadline::start(watched).map_err(local("starting the watchdog"))?;
        self.frontend = Frontend::from_stream(stream, QUEUES as u64);
        self.broken = None;
        self.remaining = None;
        self.memory_added = false;
        let offered_before = self.negotiated.offered;
        self.negotiate()?;
        if self.negotiated.offered & offered_before != offered_before {
            return Err(VhostError::Unsupported(format!(
                "the new backend offers features {:#x}, the old one offered {offered_before:#x}",
                self.negotiated.offered
            )));
        }
        self.attach_gpu_socket()?;
        let inflight = self.send_inflight()?;
        let acked = self.negotiated.acked;
        self.op("SET_FEATURES", |f| f.set_features(acked))?;
        self.send_memory()?;
        let mut bases = [0u16; QUEUES];
        for (index, base) in bases.iter_mut().enumerate() {
            let queue = if index == 0 {
                Queue::Control
            } else {
                Queue::Cursor
            };
            let q = driver.queue(queue);
            *base = q
                .used_idx()
                .map_err(|e| VhostError::Driver(crate::driver::GpuDriverError::Ring(e)))?;
            let config = self.ring_config(driver, queue);
            let (kick, call) = self
                .ring_fds
                .get(index)
                .ok_or_else(|| VhostError::Unsupported(format!("ring {index} was never set up")))?;
            let kick = event_fd(kick.try_clone().map_err(local("dup of a kick eventfd"))?);
            let call = event_fd(call.try_clone().map_err(local("dup of a call eventfd"))?);
            let b = *base;
            self.op("SET_VRING_NUM", |f| {
                f.set_vring_num(index, config.queue_size)
            })?;
            self.op("SET_VRING_BASE", |f| f.set_vring_base(index, b))?;
            self.op("SET_VRING_ADDR", |f| f.set_vring_addr(index, &config))?;
            self.op("SET_VRING_KICK", |f| f.set_vring_kick(index, &kick))?;
            self.op("SET_VRING_CALL", |f| f.set_vring_call(index, &call))?;
        }
        if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for index in 0..QUEUES {
                self.op("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
        }
        if !self.negotiated.reply_ack() && self.opts.setup_barrier {
            self.op("GET_FEATURES (set-up barrier)", |f| f.get_features())?;
        }
        // Whatever the driver published while nobody listened.
        for (kick, _) in &self.ring_fds {
            crate::irq::write_eventfd(kick).map_err(local("kicking a ring"))?;
        }
        Ok(Reconnected {
            attempts,
            bases,
            inflight,
        })
    }

    /// `GET_INFLIGHT_FD` (once per device life) and `SET_INFLIGHT_FD`, when
    /// both sides want inflight tracking; true when the buffer was sent.
    fn send_inflight(&mut self) -> Result<bool, VhostError> {
        if !self.opts.inflight_shmfd || !self.negotiated.protocol.contains(Proto::INFLIGHT_SHMFD) {
            return Ok(false);
        }
        if self.inflight.is_none() {
            let want = VhostUserInflight::new(0, 0, QUEUES as u16, self.opts.queue_size);
            let got = self.op("GET_INFLIGHT_FD", |f| f.get_inflight_fd(&want))?;
            self.inflight = Some(got);
        }
        let Some((info, file)) = &self.inflight else {
            return Ok(false);
        };
        let (info, fd) = (*info, file.as_raw_fd());
        self.op("SET_INFLIGHT_FD", |f| f.set_inflight_fd(&info, fd))?;
        Ok(true)
    }

    /// Stops both rings (`GET_VRING_BASE`, which returns where the backend
    /// stopped) and closes the session.
    pub fn shutdown(mut self) -> Result<[u32; QUEUES], VhostError> {
        self.stop_rings()
    }

    fn negotiate(&mut self) -> Result<(), VhostError> {
        let offered = self.op("GET_FEATURES", |f| f.get_features())?;
        self.negotiated.offered = offered;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let theirs = self.op("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
            let proto = theirs & wanted_protocol(!self.opts.no_reply_ack, self.opts.inflight_shmfd);
            self.op("SET_PROTOCOL_FEATURES", |f| f.set_protocol_features(proto))?;
            self.negotiated.offered_protocol = theirs;
            self.negotiated.protocol = proto;
            self.ack_replies();
        }
        let proto = self.negotiated.protocol;
        if proto.contains(Proto::MQ) {
            let n = self.op("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if n < QUEUES as u64 {
                return Err(VhostError::Unsupported(format!(
                    "{n} queue(s); a GPU has a control and a cursor queue"
                )));
            }
            self.negotiated.queue_num = n;
        }
        if proto.contains(Proto::CONFIGURE_MEM_SLOTS) {
            let slots = self.op("GET_MAX_MEM_SLOTS", |f| f.get_max_mem_slots())?;
            self.negotiated.max_mem_slots = Some(slots);
        }
        if proto.contains(Proto::SHMEM) {
            let cfg = self.op("GET_SHMEM_CONFIG", |f| f.get_shmem_config())?;
            // Sizes are indexed by shmid; backends disagree on whether
            // `nregions` counts regions or bounds the index, so keep every
            // entry up to the last non-zero one as well.
            let sizes = cfg.memory_sizes;
            let used = sizes.iter().rposition(|&s| s > 0).map_or(0, |i| i + 1);
            let keep = used.max(cfg.nregions as usize).min(sizes.len());
            self.negotiated.shmem_sizes = Some(sizes[..keep].to_vec());
        }
        self.reserve_region()?;
        if proto.contains(Proto::BACKEND_REQ) {
            let (server, theirs) = BackendReqServer::start(
                self.region.clone(),
                self.opts.shmem,
                proto.contains(Proto::REPLY_ACK),
            )
            .map_err(|source| VhostError::Local {
                what: "starting the backend request channel",
                source,
            })?;
            self.backend_req = Some(server);
            self.op("SET_BACKEND_REQ_FD", |f| f.set_backend_request_fd(&theirs))?;
        }
        self.op("SET_OWNER", |f| f.set_owner())?;
        if proto.contains(Proto::CONFIG) {
            let size = GpuConfig::SIZE as u32;
            let zeros = [0u8; GpuConfig::SIZE];
            let (_, bytes) = self.op("GET_CONFIG", |f| {
                f.get_config(0, size, VhostUserConfigFlags::empty(), &zeros)
            })?;
            let mut raw = [0u8; GpuConfig::SIZE];
            if let Some(src) = bytes.get(..GpuConfig::SIZE) {
                raw.copy_from_slice(src);
            }
            self.negotiated.config = Some(GpuConfig::from_bytes(&raw));
        }
        Ok(())
    }

    /// From now on, requests without a reply of their own wait for an ack.
    fn ack_replies(&mut self) {
        if self.negotiated.reply_ack() {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }

    /// The host-visible region: the size the backend reports for our shmid,
    /// else the configured one.
    fn reserve_region(&mut self) -> Result<(), VhostError> {
        let reported = self
            .negotiated
            .shmem_sizes
            .as_ref()
            .and_then(|s| s.get(usize::from(self.opts.shmem.shmid)).copied())
            .filter(|&s| s > 0);
        let size = reported.unwrap_or(self.opts.shmem.region_size);
        if size > 0 {
            let region = HostVisibleRegion::reserve(size).map_err(|source| VhostError::Local {
                what: "reserving the host-visible region",
                source,
            })?;
            self.region = Some(Arc::new(region));
        }
        Ok(())
    }

    /// A fresh GPU socket pair: our end served, theirs sent with message 33.
    fn attach_gpu_socket(&mut self) -> Result<(), VhostError> {
        let (server, theirs) =
            GpuSocketServer::start(Arc::clone(&self.display)).map_err(|source| {
                VhostError::Local {
                    what: "starting the GPU socket",
                    source,
                }
            })?;
        // Served before the backend learns of it: QEMU's backend asks for
        // protocol features as soon as it has the socket.
        self.gpu_socket = Some(server);
        let need_reply = self.negotiated.reply_ack();
        self.guarded("GPU_SET_SOCKET", |_, ctrl| {
            gpu_set_socket::send(ctrl, theirs.as_raw_fd(), need_reply).map_err(|e| match e {
                SetSocketError::Closed => VhostError::BackendClosed {
                    op: "GPU_SET_SOCKET",
                },
                SetSocketError::Refused(_) => VhostError::Refused {
                    op: "GPU_SET_SOCKET",
                },
                SetSocketError::Io(e) if is_disconnect(&e) => VhostError::BackendClosed {
                    op: "GPU_SET_SOCKET",
                },
                e => VhostError::Protocol {
                    op: "GPU_SET_SOCKET",
                    detail: e.to_string(),
                },
            })
        })
    }

    /// SET_FEATURES, guest RAM, both rings, enable: a driver ready to go
    /// (or, with [`SetupPause`], a driver whose rings are not all ready).
    fn start_device(&mut self) -> Result<GpuDriver, VhostError> {
        // QEMU hands the inflight buffer over before the device starts.
        self.send_inflight()?;
        let acked = driver_features(
            self.negotiated.offered,
            self.opts.queue_features,
            self.opts.gpu_features,
        );
        self.op("SET_FEATURES", |f| f.set_features(acked))?;
        self.negotiated.acked = acked;
        self.negotiated.queue_features = queue_features(acked);
        let (driver, ends) = GpuDriver::new(
            self.ram.clone(),
            self.opts.queue_size,
            self.negotiated.queue_features,
        )?;
        self.ring_fds.clear();
        let pause = self.opts.pause_setup;
        let memory_later = pause == SetupPause::BeforeMemory;
        let addrs_later = matches!(pause, SetupPause::BeforeMemory | SetupPause::BeforeRingAddr);
        if !memory_later {
            self.send_memory()?;
        }
        let mut addrs = Vec::new();
        for (index, end) in ends.into_iter().enumerate() {
            let queue = if index == 0 {
                Queue::Control
            } else {
                Queue::Cursor
            };
            let config = self.ring_config(&driver, queue);
            self.start_ring(index, config, end, !addrs_later)?;
            addrs.push(config);
        }
        self.remaining = Some(RemainingSetup {
            memory: memory_later,
            addrs: if addrs_later { addrs } else { Vec::new() },
        });
        if pause == SetupPause::None {
            self.finish_setup()?;
        }
        Ok(driver)
    }

    /// Sends what a [`SetupPause`] held back: the memory table, ring
    /// addresses, `SET_VRING_ENABLE` and the set-up barrier. Nothing when
    /// the set-up is complete.
    pub fn finish_setup(&mut self) -> Result<(), VhostError> {
        let Some(rest) = self.remaining.take() else {
            return Ok(());
        };
        if rest.memory {
            self.send_memory()?;
        }
        for (index, config) in rest.addrs.iter().enumerate() {
            self.op("SET_VRING_ADDR", |f| f.set_vring_addr(index, config))?;
        }
        if self.negotiated.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for index in 0..QUEUES {
                self.op("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
        }
        if !self.negotiated.reply_ack() && self.opts.setup_barrier {
            // Processed in order: once this is answered, so is every
            // message before it.
            self.op("GET_FEATURES (set-up barrier)", |f| f.get_features())?;
        }
        Ok(())
    }

    /// `SET_VRING_ENABLE` for one ring (pause and resume it; needs
    /// `VHOST_USER_F_PROTOCOL_FEATURES`).
    pub fn set_ring_enabled(&mut self, index: usize, on: bool) -> Result<(), VhostError> {
        self.op("SET_VRING_ENABLE", |f| f.set_vring_enable(index, on))
    }

    /// `GET_VRING_BASE` for one ring: the backend stops it and says where
    /// (the next avail index it would have read).
    pub fn stop_ring(&mut self, index: usize) -> Result<u32, VhostError> {
        self.op("GET_VRING_BASE", |f| f.get_vring_base(index))
    }

    /// Hands the backend guest RAM again while the rings run, as QEMU does
    /// whenever the memory layout changes: `SET_MEM_TABLE` with the same
    /// region, or `REM_MEM_REG` then `ADD_MEM_REG` of it.
    pub fn replace_memory(&mut self) -> Result<(), VhostError> {
        let region = self.region_info();
        match self.negotiated.memory {
            MemoryMessage::SetMemTable => {
                self.op("SET_MEM_TABLE", |f| f.set_mem_table(&[region]).map(drop))
            }
            MemoryMessage::AddMemReg => {
                self.op("REM_MEM_REG", |f| f.remove_mem_region(&region).map(drop))?;
                self.op("ADD_MEM_REG", |f| f.add_mem_region(&region).map(drop))
            }
        }
    }

    fn region_info(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.ram.base().0,
            memory_size: self.ram.size(),
            userspace_addr: self.ram.userspace_addr(),
            mmap_offset: self.ram.mmap_offset(),
            mmap_handle: self.ram.file().as_raw_fd(),
        }
    }

    fn send_memory(&mut self) -> Result<(), VhostError> {
        let slots = self
            .negotiated
            .protocol
            .contains(Proto::CONFIGURE_MEM_SLOTS);
        let message =
            match (self.opts.mem_table, slots) {
                (MemTableMode::Auto, true) | (MemTableMode::AddMemReg, true) => {
                    MemoryMessage::AddMemReg
                }
                (MemTableMode::Auto, false) | (MemTableMode::SetMemTable, _) => {
                    MemoryMessage::SetMemTable
                }
                (MemTableMode::AddMemReg, false) => return Err(VhostError::Unsupported(
                    "ADD_MEM_REG was asked for, but the backend does not offer CONFIGURE_MEM_SLOTS"
                        .into(),
                )),
            };
        self.negotiated.memory = message;
        let region = self.region_info();
        match message {
            MemoryMessage::SetMemTable => {
                self.op("SET_MEM_TABLE", |f| f.set_mem_table(&[region]).map(drop))
            }
            // The region outlives a device reset: QEMU does not add it again.
            MemoryMessage::AddMemReg if self.memory_added => Ok(()),
            MemoryMessage::AddMemReg => {
                self.op("ADD_MEM_REG", |f| f.add_mem_region(&region).map(drop))?;
                self.memory_added = true;
                Ok(())
            }
        }
    }

    /// Where a queue's rings are, in the frontend's address space: where
    /// guest RAM is mapped here, plus the guest address's offset in it.
    fn ring_config(&self, driver: &GpuDriver, queue: Queue) -> VringConfigData {
        let q = driver.queue(queue);
        let size = q.size();
        let host = |a: GuestAddress| self.ram.userspace_addr() + (a.0 - self.ram.base().0);
        VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: host(q.desc_table()),
            used_ring_addr: host(q.used_ring()),
            avail_ring_addr: host(q.avail_ring()),
            log_addr: None,
        }
    }

    fn start_ring(
        &mut self,
        index: usize,
        config: VringConfigData,
        ends: QueueEnds,
        with_addr: bool,
    ) -> Result<(), VhostError> {
        let local = |what| move |source| VhostError::Local { what, source };
        self.ring_fds.push((
            ends.kick
                .try_clone()
                .map_err(local("dup of a kick eventfd"))?,
            ends.call
                .try_clone()
                .map_err(local("dup of a call eventfd"))?,
        ));
        let kick = event_fd(ends.kick);
        let call = event_fd(ends.call);
        self.op("SET_VRING_NUM", |f| {
            f.set_vring_num(index, config.queue_size)
        })?;
        self.op("SET_VRING_BASE", |f| f.set_vring_base(index, 0))?;
        if with_addr {
            self.op("SET_VRING_ADDR", |f| f.set_vring_addr(index, &config))?;
        }
        self.op("SET_VRING_KICK", |f| f.set_vring_kick(index, &kick))?;
        self.op("SET_VRING_CALL", |f| f.set_vring_call(index, &call))?;
        Ok(())
    }

    fn stop_rings(&mut self) -> Result<[u32; QUEUES], VhostError> {
        let mut bases = [0; QUEUES];
        for (index, base) in bases.iter_mut().enumerate() {
            *base = self.op("GET_VRING_BASE", |f| f.get_vring_base(index))?;
        }
        Ok(bases)
    }

    /// Runs one control request through the `vhost` crate.
    fn op<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, VhostError> {
        self.guarded(op, |frontend, _| f(frontend).map_err(|e| classify(op, e)))
    }

    /// Runs `f` under the control deadline; refuses at once after the
    /// channel broke, and remembers when it breaks.
    fn guarded<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend, &UnixStream) -> Result<T, VhostError>,
    ) -> Result<T, VhostError> {
        if let Some(cause) = &self.broken {
            return Err(VhostError::Broken {
                op,
                cause: cause.clone(),
            });
        }
        let result = {
            let _armed = self.deadline.arm(self.opts.control_timeout);
            f(&mut self.frontend, &self.ctrl)
        };
        let result = match result {
            Err(_) if self.deadline.fired() => Err(VhostError::Timeout {
                op,
                after: self.opts.control_timeout,
            }),
            other => other,
        };
        if let Err(e) = &result {
            if e.breaks_session() {
                self.broken = Some(e.to_string());
            }
        }
        result
    }
}

/// Maps the crate's errors onto what the caller can act on.
fn classify(op: &'static str, e: vhost::Error) -> VhostError {
    use vhost::vhost_user::Error as U;
    match e {
        vhost::Error::VhostUserProtocol(U::BackendInternalError) => VhostError::Refused { op },
        vhost::Error::VhostUserProtocol(U::Disconnected | U::PartialMessage) => {
            VhostError::BackendClosed { op }
        }
        vhost::Error::VhostUserProtocol(U::SocketBroken(ref io)) if is_disconnect(io) => {
            VhostError::BackendClosed { op }
        }
        vhost::Error::VhostUserProtocol(
            U::InactiveFeature(_) | U::InactiveOperation(_) | U::InvalidParam,
        ) => VhostError::Unsupported(format!("{op}: {e}")),
        other => VhostError::Protocol {
            op,
            detail: other.to_string(),
        },
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    )
}

/// The `vhost` crate takes eventfds as `EventFd`.
fn event_fd(fd: OwnedFd) -> EventFd {
    // SAFETY: `into_raw_fd` hands over sole ownership of an open eventfd;
    // EventFd takes it and closes it once.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}
