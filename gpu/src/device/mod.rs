//! The virtio-gpu device: queue intake on the owner (display) shard, routing
//! by context to home shards, per-shard execution, ordered completion.
//!
//! | file | concern |
//! |---|---|
//! | `owner.rs` | the queue owner actor: queues, directory, scanouts, timelines |
//! | `intake.rs` | pop, decode, check ids, route (or answer) |
//! | `completion.rs` | release to the used ring in fence order, interrupt |
//! | `context.rs` | `ContextShard`: a shard's renderer, resources, blob tasks |
//! | `directory.rs` | which shard owns which context and resource |
//! | `budget.rs` | the guest's memory budget: what is charged, when it is given back |
//! | `scanout.rs` | scanout table, flush targets, `DisplaySink` |
//! | `job.rs` | messages between owner and shards |
//!
//! [`Device`] is the handle the transport (vhost-user glue, or an
//! in-process frontend) drives; it is `Send` and its calls block until the
//! owner shard has acted on them, so it must not be used on a shard thread.

mod backlog;
pub mod budget;
mod completion;
mod context;
mod directory;
mod intake;
mod job;
mod owner;
pub mod scanout;
mod watch;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;

use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backing::GuestMem;
use crate::blob::BlobMapper;
use crate::protocol::wire::{
    VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_EDID, VIRTIO_GPU_F_RESOURCE_BLOB,
    VIRTIO_GPU_F_RESOURCE_UUID, VIRTIO_GPU_F_VIRGL,
};
use crate::protocol::{GpuConfig, Limits};
use crate::render::{RendererFactory, RendererInfo};

pub use job::QueueKind;
pub use owner::OwnerStats;
pub use scanout::{
    CursorEvent, DisplaySink, NullDisplay, RecordingDisplay, ScanoutMode, VmmViewWait,
};

/// Virtio transport features the device offers besides its own.
pub const VIRTIO_F_VERSION_1: u32 = 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Largest control queue (the spec allows 32768; 1024 covers 16 desktops).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// The default [`DeviceConfig::memory_limit`]: 1 GiB, a desktop guest's
/// framebuffers and GL resources several times over.
pub const DEFAULT_GUEST_MEMORY: u64 = 1 << 30;

/// Device settings.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub num_scanouts: u32,
    /// Mode every scanout reports until the VMM says otherwise.
    pub width: u32,
    pub height: u32,
    /// The guest's memory budget (the daemon's `--max-guest-memory`): host
    /// memory everything the guest creates or sends may hold together
    /// (resources by format, mips, layers and samples, blobs, backing
    /// entries, contexts, held command buffers, flush pixel buffers; see
    /// [`budget`]). Past it, commands answer `ERR_OUT_OF_MEMORY`.
    pub memory_limit: u64,
    pub limits: Limits,
    /// Log any command in flight longer than this, with its context and
    /// type (`None`: no watchdog).
    pub stall_warn: Option<std::time::Duration>,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            num_scanouts: 1,
            width: 1280,
            height: 800,
            memory_limit: DEFAULT_GUEST_MEMORY,
            limits: Limits::default(),
            stall_warn: Some(std::time::Duration::from_secs(1)),
        }
    }
}

/// Where a started queue lives in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSetup {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
}

/// Where the device records the chains it holds, so that a backend started
/// after this one dies can take them up again (vhost-user inflight
/// tracking). Called on the owner shard, in program order: a few stores
/// per command, no system call.
pub trait InflightLog: Send {
    /// `head` was taken from the avail ring.
    fn taken(&mut self, head: u16);
    /// `head` is about to be written to the used ring.
    fn completing(&mut self, head: u16);
    /// `head` is in the used ring, whose `idx` is now `used_idx`.
    fn completed(&mut self, head: u16, used_idx: u16);
}

/// What a started queue picks up from a previous backend.
pub struct QueueResume {
    pub log: Box<dyn InflightLog>,
    /// Heads the previous backend took and never completed, in the order
    /// it took them: they run before anything new from the avail ring.
    pub resubmit: Vec<u16>,
}

pub(crate) struct ShardLink {
    pub tx: reactor::Sender<job::ShardMsg>,
}

/// What every part of a device shares.
pub(crate) struct DeviceShared {
    pub config: DeviceConfig,
    pub info: RendererInfo,
    pub shards: Vec<ShardLink>,
    /// Shards that host contexts and resources.
    pub placement: Vec<usize>,
    pub display: Arc<dyn DisplaySink>,
    pub blob: Arc<dyn BlobMapper>,
    /// Pixel bytes the renderers copied (transfers, display read-backs).
    pub pixel_bytes_copied: Arc<AtomicU64>,
    /// For the renderer's own metrics (render workers).
    pub renderer: Arc<dyn RendererFactory>,
    /// The guest's memory budget (`DeviceConfig::memory_limit`).
    pub budget: Arc<budget::GuestBudget>,
}

/// A virtio-gpu device running on a reactor.
pub struct Device {
    shared: Arc<DeviceShared>,
    owner: reactor::Sender<owner::OwnerCmd>,
    mem: GuestMemoryAtomic<GuestMem>,
}

/// Why a device call failed.
#[derive(Debug)]
pub enum DeviceError {
    /// The owner shard is gone (reactor shut down).
    Stopped,
    /// The queue set-up was refused.
    Queue(String),
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::Stopped => f.write_str("device stopped"),
            DeviceError::Queue(e) => write!(f, "queue set-up refused: {e}"),
        }
    }
}

impl std::error::Error for DeviceError {}

impl Device {
    /// Starts a device on `reactor`: the queue owner on shard 0, a context
    /// executor on every shard.
    pub fn new(
        reactor: &reactor::Reactor,
        config: DeviceConfig,
        renderer: Arc<dyn RendererFactory>,
        display: Arc<dyn DisplaySink>,
        blob: Arc<dyn BlobMapper>,
    ) -> io::Result<Device> {
        let info = renderer.info();
        let n = reactor.shards().len();
        // A single-threaded renderer gets the last shard, leaving shard 0
        // to intake and display.
        let placement = if info.single_shard {
            vec![n - 1]
        } else {
            (0..n).collect()
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let pixel_bytes_copied = Arc::new(AtomicU64::new(0));
        let budget = budget::GuestBudget::new(config.memory_limit);
        let blob_ranges = Arc::new(crate::blob::HostVisibleRanges::default());
        let mut shards = Vec::with_capacity(n);
        for (i, handle) in reactor.shards().iter().enumerate() {
            let (tx, rx) = reactor::channel();
            // Only shards that host contexts and resources get an executor
            // (and a renderer): a single-threaded library gets exactly one.
            if placement.contains(&i) {
                let env = context::ShardEnv {
                    shard: i,
                    mem: mem.clone(),
                    display: display.clone(),
                    blob: blob.clone(),
                    blob_ranges: blob_ranges.clone(),
                    renderer: renderer.clone(),
                    pixel_bytes_copied: pixel_bytes_copied.clone(),
                    budget: budget.clone(),
                };
                handle.run(move || {
                    reactor::spawn_local_named("context-shard", context::run(env, rx));
                });
            }
            shards.push(ShardLink { tx });
        }
        let shared = Arc::new(DeviceShared {
            config,
            info,
            shards,
            placement,
            display,
            blob,
            pixel_bytes_copied,
            renderer,
            budget,
        });
        let (owner_tx, owner_rx) = reactor::channel();
        let (s, m) = (shared.clone(), mem.clone());
        reactor
            .shard(0)
            .run(move || {
                reactor::spawn_local_named("queue-owner", owner::run(s, m, owner_rx));
            })
            .then_some(())
            .ok_or_else(|| io::Error::other("reactor shard 0 is not running"))?;
        Ok(Device {
            shared,
            owner: owner_tx,
            mem,
        })
    }

    pub fn renderer_info(&self) -> &RendererInfo {
        &self.shared.info
    }

    /// Feature bits offered to the driver.
    pub fn device_features(&self) -> u64 {
        let info = &self.shared.info;
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_GPU_F_EDID)
            | (1 << VIRTIO_GPU_F_RESOURCE_UUID);
        if info.has_3d {
            f |= (1 << VIRTIO_GPU_F_VIRGL) | (1 << VIRTIO_GPU_F_CONTEXT_INIT);
        }
        if info.has_blob {
            f |= 1 << VIRTIO_GPU_F_RESOURCE_BLOB;
        }
        f
    }

    /// The features the driver accepted (masked by what was offered).
    pub fn set_features(&self, acked: u64) -> Result<(), DeviceError> {
        self.owner
            .send(owner::OwnerCmd::SetFeatures(acked & self.device_features()))
            .map_err(|_| DeviceError::Stopped)
    }

    /// Replaces guest memory (a new memory table from the VMM).
    pub fn set_memory(&self, mem: GuestMem) {
        let guard = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        guard.replace(mem);
    }

    /// The memory handle shards read guest memory through.
    pub fn memory(&self) -> GuestMemoryAtomic<GuestMem> {
        self.mem.clone()
    }

    /// Starts a queue: `kick` is the driver→device eventfd, `call` the
    /// device→driver one.
    pub fn start_queue(
        &self,
        kind: QueueKind,
        setup: QueueSetup,
        kick: OwnedFd,
        call: OwnedFd,
    ) -> Result<(), DeviceError> {
        self.start_queue_with(kind, setup, kick, call, None)
    }

    /// [`Device::start_queue`] with inflight tracking: every chain taken
    /// and completed is recorded in `resume.log`, and `resume.resubmit`
    /// runs first.
    pub fn start_queue_with(
        &self,
        kind: QueueKind,
        setup: QueueSetup,
        kick: OwnedFd,
        call: OwnedFd,
        resume: Option<QueueResume>,
    ) -> Result<(), DeviceError> {
        if setup.size == 0 || setup.size > MAX_QUEUE_SIZE || !setup.size.is_power_of_two() {
            return Err(DeviceError::Queue(format!(
                "queue size {} (must be a power of two up to {MAX_QUEUE_SIZE})",
                setup.size
            )));
        }
        let kick = reactor::io::EventFd::from_owned(kick);
        let call = reactor::io::EventFd::from_owned(call).notifier();
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::StartQueue {
                kind,
                setup,
                kick,
                call,
                resume,
                reply,
            })
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv()
            .map_err(|_| DeviceError::Stopped)?
            .map_err(DeviceError::Queue)
    }

    /// Stops a queue: no chain is taken from it any more; the ones already
    /// taken complete (for at most `drain`), then nothing is written to it.
    /// Returns its next avail index (`None`: not started).
    pub fn stop_queue(
        &self,
        kind: QueueKind,
        drain: std::time::Duration,
    ) -> Result<Option<u16>, DeviceError> {
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::StopQueue { kind, drain, reply })
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv().map_err(|_| DeviceError::Stopped)
    }

    /// Waits (at most `timeout`) until every command taken from the queues
    /// has completed; intake keeps running. True when drained (e.g. before
    /// the VMM replaces guest memory).
    pub fn drain(&self, timeout: std::time::Duration) -> Result<bool, DeviceError> {
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::Drain { timeout, reply })
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv().map_err(|_| DeviceError::Stopped)
    }

    /// Device reset: queues stop, every context and resource is dropped,
    /// fence machinery starts afresh.
    pub fn reset(&self) -> Result<(), DeviceError> {
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::Reset(reply))
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv().map_err(|_| DeviceError::Stopped)
    }

    /// The process's seccomp filter is now on (the daemon, before it
    /// serves). The renderer checks that the processes it starts, which
    /// inherit the filter, still come up under it (render workers:
    /// [`RendererFactory::check_under_filter`]); then the device is reset,
    /// so its renderers are made again under the filter and no render
    /// worker started before it keeps running unfiltered. An error means
    /// the daemon cannot serve under this filter, and says why. Blocking.
    pub fn filter_installed(&self) -> Result<(), String> {
        self.shared.renderer.check_under_filter()?;
        self.reset()
            .map_err(|e| format!("device reset under the new filter: {e}"))
    }

    /// Prometheus text exposition of the device's metrics.
    pub fn metrics(&self) -> Result<String, DeviceError> {
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::Metrics(reply))
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv().map_err(|_| DeviceError::Stopped)
    }

    pub fn stats(&self) -> Result<OwnerStats, DeviceError> {
        let (reply, rx) = mpsc::channel();
        self.owner
            .send(owner::OwnerCmd::Stats(reply))
            .map_err(|_| DeviceError::Stopped)?;
        rx.recv().map_err(|_| DeviceError::Stopped)
    }

    /// The configuration space.
    pub fn config(&self) -> GpuConfig {
        GpuConfig {
            events_read: 0,
            events_clear: 0,
            num_scanouts: self.shared.config.num_scanouts,
            num_capsets: self.shared.info.capsets.len() as u32,
        }
    }
}
