//! The backend: a device on its reactor, the display sink and blob mapper
//! that reach the VMM, and [`Backend::serve_stream`], which runs one
//! frontend session on the calling thread and resets the device after it.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::backend_channel::VmmBlobMapper;
use super::config_space::ConfigSpace;
use super::gpu_socket::GpuSocketDisplay;
use super::link;
use super::session::{Session, SessionEnd};
use crate::device::{Device, DeviceConfig, MAX_QUEUE_SIZE};
use crate::render::RendererFactory;

/// How to build a [`Backend`].
#[derive(Clone)]
pub struct BackendOptions {
    /// Reactor shards (threads); the display shard is shard 0.
    pub shards: usize,
    /// Largest ring the frontend may set up (at most [`MAX_QUEUE_SIZE`]).
    pub max_queue_size: u16,
    pub device: DeviceConfig,
    pub renderer: Arc<dyn RendererFactory>,
    /// Report task polls longer than this (`None`: never).
    pub stall_warn: Option<Duration>,
    /// How long the VMM may take to answer on the GPU socket.
    pub display_reply_timeout: Duration,
    /// How long the VMM may take to answer `SHMEM_MAP`/`SHMEM_UNMAP`.
    pub blob_reply_timeout: Duration,
    /// Host-visible region offered for blobs (bytes; 0: none).
    pub host_visible_region: u64,
    /// Scheduler slice the shard threads ask for (`reactor::request_slice`).
    pub latency_slice: Option<Duration>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_queue_size: MAX_QUEUE_SIZE,
            device: DeviceConfig::default(),
            renderer: Arc::new(crate::render::sim::SimFactory::default()),
            stall_warn: Some(Duration::from_millis(10)),
            display_reply_timeout: Duration::from_secs(2),
            blob_reply_timeout: Duration::from_secs(10),
            host_visible_region: 256 << 20,
            latency_slice: None,
        }
    }
}

/// A virtio-gpu device served over vhost-user.
pub struct Backend {
    pub(super) device: Device,
    pub(super) display: Arc<GpuSocketDisplay>,
    pub(super) blob: Arc<VmmBlobMapper>,
    /// The config space's pending events, shared by the session and the
    /// display link.
    pub(super) config: ConfigSpace,
    pub(super) max_queue_size: u16,
    /// Held while a session runs: one frontend at a time.
    session: Mutex<()>,
    /// The running session's socket, to end it from another thread.
    current: Mutex<Option<UnixStream>>,
    // Last: the shards stop after the device and sinks are gone.
    reactor: reactor::Reactor,
}

impl Backend {
    /// Starts the reactor and the device.
    pub fn start(opts: BackendOptions) -> io::Result<Backend> {
        if opts.max_queue_size == 0
            || opts.max_queue_size > MAX_QUEUE_SIZE
            || !opts.max_queue_size.is_power_of_two()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "queue size {} (a power of two up to {MAX_QUEUE_SIZE})",
                    opts.max_queue_size
                ),
            ));
        }
        let reactor = reactor::Reactor::builder()
            .shards(opts.shards)
            .latency_slice(opts.latency_slice)
            .name("gpu")
            .stall_threshold(opts.stall_warn)
            .build()?;
        // Pixels to the VMM are bulk copies: keep them off shard 0, which
        // owns the queues (intake and completion are the latency path) -
        // unless the renderer runs on one shard only (the last): then the
        // display goes to the shard before it, so the renderer's copies and
        // the socket writes do not take turns on one thread.
        let n = reactor.shards().len();
        let display_shard = if opts.renderer.info().single_shard && n > 1 {
            n - 2
        } else {
            n - 1
        };
        let display = Arc::new(GpuSocketDisplay::new(
            reactor.shard(display_shard).clone(),
            opts.device.num_scanouts,
            opts.display_reply_timeout,
        ));
        let blob = Arc::new(VmmBlobMapper::new(
            reactor.shard(0).clone(),
            opts.host_visible_region,
            opts.blob_reply_timeout,
        ));
        // A change in the VMM's display view reaches the guest as
        // VIRTIO_GPU_EVENT_DISPLAY and a config interrupt, which a vhost-user
        // backend asks the frontend for with CONFIG_CHANGE_MSG.
        let config = ConfigSpace::default();
        {
            let (config, blob) = (config.clone(), blob.clone());
            display.on_change(Arc::new(move || {
                config.raise_display_event();
                blob.config_changed();
            }));
        }
        let device = Device::new(
            &reactor,
            opts.device.clone(),
            opts.renderer.clone(),
            display.clone(),
            blob.clone(),
        )?;
        Ok(Backend {
            device,
            display,
            blob,
            config,
            max_queue_size: opts.max_queue_size,
            session: Mutex::new(()),
            current: Mutex::new(None),
            reactor,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The display sink (the QEMU GPU socket side).
    pub fn display(&self) -> &GpuSocketDisplay {
        &self.display
    }

    /// The blob mapper (the backend request channel side).
    pub fn blob_mapper(&self) -> &VmmBlobMapper {
        &self.blob
    }

    /// Pending config events (`events_read`) of the device.
    pub fn events_read(&self) -> u32 {
        self.config.events_read()
    }

    pub fn reactor(&self) -> &reactor::Reactor {
        &self.reactor
    }

    /// Serves one frontend on `stream` until it leaves or breaks the
    /// protocol, on the calling thread (which must not be a reactor shard),
    /// then resets the device and drops everything the session set up.
    /// A second call waits for the first session to end.
    pub fn serve_stream(&self, stream: UnixStream) -> SessionEnd {
        let _one = link::lock(&self.session);
        *link::lock(&self.current) = stream.try_clone().ok();
        let end = Session::new(self, &stream).run();
        match &end {
            SessionEnd::Disconnected => tracing::info!("vhost-user frontend disconnected"),
            SessionEnd::Closed(why) => tracing::warn!("closing vhost-user connection: {why}"),
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        *link::lock(&self.current) = None;
        self.display.detach();
        self.blob.detach();
        if let Err(e) = self.device.reset() {
            tracing::error!("device reset after the session failed: {e}");
        }
        self.device.set_memory(GuestMemoryMmap::new());
        end
    }

    /// Ends the running session, if any (its socket is shut down; the
    /// session thread then resets the device).
    pub fn interrupt(&self) {
        if let Some(s) = link::lock(&self.current).as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}
