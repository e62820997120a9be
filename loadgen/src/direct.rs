//! The device driven in-process without vhost-user: guest RAM and rings of
//! the [`GpuDriver`] handed straight to a [`Device`]. The device tests use
//! it; the vhost-user frontend does the same set-up over a socket.

use std::sync::Arc;
use std::time::Duration;

use gpu::blob::FakeBlobMapper;
use gpu::device::{Device, DeviceConfig, DisplaySink, QueueKind, QueueSetup, RecordingDisplay};
use gpu::render::RendererFactory;

use crate::driver::{GpuDriver, GpuDriverError, QueueEnds};
use crate::frontend::{GuestRam, QueueFeatures};

/// How to build the in-process device.
#[derive(Clone)]
pub struct DirectOptions {
    pub shards: usize,
    pub queue_size: u16,
    pub queue_features: QueueFeatures,
    /// Virtio features the "driver" accepts (masked by what is offered).
    pub accept_features: u64,
    pub config: DeviceConfig,
    pub renderer: Arc<dyn RendererFactory>,
    /// Host-visible region size and how slowly the fake VMM maps.
    pub blob_region: u64,
    pub blob_delay: Duration,
    pub guest_ram: u64,
    /// Where pixels go; `None`: a `RecordingDisplay` (see `DirectBackend::display`).
    pub sink: Option<Arc<dyn DisplaySink>>,
    /// Pin shard i to CPU i (see `reactor::Builder::pin`).
    pub pin: bool,
    /// Bounded spin of idle shards before they sleep (`reactor::Builder::spin`).
    pub spin: Option<Duration>,
}

impl Default for DirectOptions {
    fn default() -> Self {
        DirectOptions {
            shards: 2,
            queue_size: 1024,
            // As the Linux driver: EVENT_IDX and indirect chains.
            queue_features: QueueFeatures {
                event_idx: true,
                indirect: true,
            },
            accept_features: u64::MAX,
            config: DeviceConfig::default(),
            renderer: Arc::new(gpu::render::sim::SimFactory::default()),
            blob_region: 256 << 20,
            blob_delay: Duration::ZERO,
            guest_ram: 256 << 20,
            sink: None,
            pin: false,
            spin: None,
        }
    }
}

/// A running in-process device and what it shows.
pub struct DirectBackend {
    pub device: Device,
    pub display: Arc<RecordingDisplay>,
    pub blob: Arc<FakeBlobMapper>,
    opts: DirectOptions,
    // Last: the device's shards stop after everything above is dropped.
    pub reactor: reactor::Reactor,
}

impl DirectBackend {
    pub fn start(opts: DirectOptions) -> Result<(DirectBackend, GpuDriver), GpuDriverError> {
        let reactor = reactor::Reactor::builder()
            .shards(opts.shards)
            .pin(opts.pin)
            .spin(opts.spin)
            .name("gpu")
            .build()
            .map_err(GpuDriverError::Io)?;
        let display = Arc::new(RecordingDisplay::default());
        let blob = Arc::new(FakeBlobMapper::new(opts.blob_region, opts.blob_delay));
        let sink: Arc<dyn DisplaySink> = match &opts.sink {
            Some(s) => s.clone(),
            None => display.clone(),
        };
        let device = Device::new(
            &reactor,
            opts.config.clone(),
            opts.renderer.clone(),
            sink,
            blob.clone(),
        )
        .map_err(GpuDriverError::Io)?;
        let ram =
            GuestRam::new(opts.guest_ram).map_err(|e| GpuDriverError::Memory(format!("{e:?}")))?;
        device.set_memory(ram.memory().clone());
        let backend = DirectBackend {
            device,
            display,
            blob,
            opts,
            reactor,
        };
        let driver = backend.connect(ram)?;
        Ok((backend, driver))
    }

    /// Negotiates features and starts both queues of a fresh driver.
    pub fn connect(&self, ram: GuestRam) -> Result<GpuDriver, GpuDriverError> {
        let (driver, ends) = GpuDriver::new(ram, self.opts.queue_size, self.opts.queue_features)?;
        let mut features = self.device.device_features() & self.opts.accept_features;
        let event_idx = 1u64 << gpu::device::VIRTIO_RING_F_EVENT_IDX;
        if !self.opts.queue_features.event_idx {
            features &= !event_idx;
        }
        self.device
            .set_features(features)
            .map_err(|e| GpuDriverError::Memory(e.to_string()))?;
        let [ctrl, cursor] = ends;
        self.start_queue(&driver, QueueKind::Control, ctrl)?;
        self.start_queue(&driver, QueueKind::Cursor, cursor)?;
        Ok(driver)
    }

    fn start_queue(
        &self,
        driver: &GpuDriver,
        kind: QueueKind,
        ends: QueueEnds,
    ) -> Result<(), GpuDriverError> {
        let q = match kind {
            QueueKind::Control => driver.queue(crate::driver::Queue::Control),
            QueueKind::Cursor => driver.queue(crate::driver::Queue::Cursor),
        };
        let setup = QueueSetup {
            size: q.size(),
            desc_table: q.desc_table().0,
            avail_ring: q.avail_ring().0,
            used_ring: q.used_ring().0,
            next_avail: 0,
            next_used: 0,
            event_idx: self.opts.queue_features.event_idx,
        };
        self.device
            .start_queue(kind, setup, ends.kick, ends.call)
            .map_err(|e| GpuDriverError::Memory(e.to_string()))
    }

    /// A device reset followed by a driver reload: the old driver's rings
    /// are dropped and a new driver starts on the same guest RAM.
    pub fn reset(&self, old: GpuDriver) -> Result<GpuDriver, GpuDriverError> {
        self.device
            .reset()
            .map_err(|e| GpuDriverError::Memory(e.to_string()))?;
        let ram = old.ram().clone();
        drop(old);
        self.connect(ram)
    }
}
