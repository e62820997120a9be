//! Renderers: what executes GPU work. The device talks to them only through
//! [`Renderer`]; they never reach back into the device.
//!
//! One renderer instance lives on each shard that hosts contexts or
//! resources (`single_shard` renderers, whose library wants one thread, get
//! exactly one instance and every context and resource is placed there).

pub mod rutabaga2d;
pub mod sim;
#[cfg(feature = "virgl")]
pub mod virgl;
pub mod virgl_cmd;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use crate::backing::{Backing, GuestMem};
use crate::protocol::{Format, ProtocolError, Rect, ResourceCreate3d, Transfer3d};

/// Completes when the GPU work it stands for has finished. A renderer signals
/// it from an eventfd or timerfd read on the shard's ring, never by polling.
pub type GpuWait = Pin<Box<dyn Future<Output = ()>>>;

/// The outcome of renderer calls that finish elsewhere (a render worker
/// process answers over its socket): the command's response waits for it.
pub type Settle = Pin<Box<dyn Future<Output = Result<(), ProtocolError>>>>;

/// Pixels a renderer reads back, possibly later (see [`Renderer::read_rect_later`]).
pub type PixelsWait = Pin<Box<dyn Future<Output = Result<Vec<u8>, ProtocolError>>>>;

/// A capability set the renderer offers (`GET_CAPSET_INFO`/`GET_CAPSET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capset {
    pub id: u32,
    pub max_version: u32,
    pub data: Vec<u8>,
}

/// What a renderer can do, fixed at start-up; drives feature negotiation.
#[derive(Debug, Clone)]
pub struct RendererInfo {
    pub name: &'static str,
    pub capsets: Vec<Capset>,
    /// Accepts 3D commands (contexts, SUBMIT_3D): offer `VIRTIO_GPU_F_VIRGL`.
    pub has_3d: bool,
    /// Host blobs that can be mapped: offer `VIRTIO_GPU_F_RESOURCE_BLOB`.
    pub has_blob: bool,
    /// Rings per context it can keep apart (1 means only ring 0).
    pub max_rings: u8,
    /// The library wants every call on one thread.
    pub single_shard: bool,
}

/// What a resource is, as created by the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    Image2d {
        format: Format,
        width: u32,
        height: u32,
    },
    Image3d(ResourceCreate3d),
    /// A host-allocated blob of `size` bytes (mappable).
    HostBlob {
        size: u64,
        blob_id: u64,
    },
    /// A blob backed only by guest pages.
    GuestBlob {
        size: u64,
    },
}

/// A host blob's memory, handed to the VMM to map into the guest.
#[derive(Debug, Clone)]
pub struct BlobMemory {
    pub fd: Arc<OwnedFd>,
    pub offset: u64,
    pub size: u64,
}

/// The renderer of one shard.
pub trait Renderer {
    fn create_context(&mut self, ctx: u32, capset_id: u8, name: &[u8])
        -> Result<(), ProtocolError>;
    fn destroy_context(&mut self, ctx: u32);
    /// `CTX_ATTACH_RESOURCE`: context `ctx` may now use resource `id`
    /// (renderers that track no such thing ignore it). A renderer may
    /// refuse (render workers: a resource lives on one worker).
    fn attach_resource(&mut self, _ctx: u32, _id: u32) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// `CTX_DETACH_RESOURCE`.
    fn detach_resource(&mut self, _ctx: u32, _id: u32) {}
    /// Queues a command buffer on (ctx, ring).
    fn submit(&mut self, ctx: u32, ring: u8, cmds: &[u8]) -> Result<(), ProtocolError>;
    /// Completes once all work submitted so far on (ctx, ring) has finished.
    /// `ctx` 0 is the 2D engine: done as soon as the command ran.
    fn fence(&mut self, ctx: u32, ring: u8) -> GpuWait;

    fn create_resource(&mut self, id: u32, kind: &ResourceKind) -> Result<(), ProtocolError>;
    fn destroy_resource(&mut self, id: u32);
    /// `RESOURCE_ATTACH_BACKING`: `id` has `backing` now (checked against
    /// `mem`). A renderer whose command streams name a resource's guest
    /// pages themselves (virgl: TRANSFER3D inside SUBMIT_3D) keeps them
    /// until [`detach_backing`](Renderer::detach_backing) or
    /// [`destroy_resource`](Renderer::destroy_resource); the others need
    /// nothing (transfers hand them the backing).
    fn attach_backing(
        &mut self,
        _id: u32,
        _backing: &Backing,
        _mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// `RESOURCE_DETACH_BACKING` is about to drop `id`'s backing: a
    /// renderer that still reads transferred pixels from it copies them now,
    /// and one that kept it lets go.
    fn detach_backing(&mut self, _id: u32) -> Result<(), ProtocolError> {
        Ok(())
    }
    /// Pixel bytes this renderer has copied so far (transfers into host
    /// images, read-backs for the display): the cost the display path is
    /// measured by. Renderers that cannot tell return 0.
    fn pixel_bytes_copied(&self) -> u64 {
        0
    }
    /// `TRANSFER_TO_HOST_2D`: `rect` of the image from `backing` (laid out
    /// like the image, starting at `offset`) into host memory.
    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError>;
    /// `TRANSFER_TO_HOST_3D` / `TRANSFER_FROM_HOST_3D` (`to_host` picks).
    fn transfer_3d(
        &mut self,
        ctx: u32,
        t: &Transfer3d,
        to_host: bool,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError>;
    /// Appends the pixels of `rect` (rows packed, 4 bytes per pixel) to `out`.
    fn read_rect(&mut self, id: u32, rect: Rect, out: &mut Vec<u8>) -> Result<(), ProtocolError>;
    /// A host blob's memory, for MAP_BLOB.
    fn blob_memory(&mut self, id: u32) -> Option<BlobMemory>;

    /// [`read_rect`](Renderer::read_rect) for renderers that answer later
    /// (render workers), appending to `out` (an empty buffer the display
    /// recycles; a renderer may return another). The default reads now.
    fn read_rect_later(&mut self, id: u32, rect: Rect, out: Vec<u8>) -> PixelsWait {
        let mut out = out;
        let r = self.read_rect(id, rect, &mut out).map(|()| out);
        Box::pin(std::future::ready(r))
    }

    /// What the calls made for the current command still owe: `None` when
    /// they are done (every in-process renderer), or a wait the device
    /// awaits before it answers the command (render workers). Taken once
    /// per command, right after its calls and before its fence.
    fn settle(&mut self) -> Option<Settle> {
        None
    }
}

/// Makes the per-shard renderers of a device.
pub trait RendererFactory: Send + Sync {
    fn info(&self) -> RendererInfo;
    /// Called on the shard thread that will own the instance.
    fn create(&self, shard: usize) -> Result<Box<dyn Renderer>, String>;
    /// Appends the renderer's own Prometheus metrics (render workers).
    fn metrics(&self, _out: &mut String) {}
    /// Called by the daemon once its seccomp filter is on, before it
    /// serves. A renderer that starts processes, which inherit the filter
    /// (render workers), checks here that one still comes up under it: an
    /// error says why it cannot, and the daemon must not serve. Blocking.
    fn check_under_filter(&self) -> Result<(), String> {
        Ok(())
    }
}
