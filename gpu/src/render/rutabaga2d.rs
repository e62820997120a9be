//! The `2d` renderer: rutabaga_gfx's 2D component (`Rutabaga2D`), the
//! software path crosvm uses when it has no GPU. Resources are host images
//! rutabaga allocates; `TRANSFER_TO_HOST_2D` copies guest pages into them
//! and `RESOURCE_FLUSH` reads them back for the display.
//!
//! Rutabaga is `!Send` and keeps every resource in one instance, so the
//! renderer is `single_shard`: the device places every resource on one
//! shard and [`Rutabaga2dFactory::create`] builds the instance on that
//! shard's thread. There are no contexts, no blobs and no capsets; 2D work
//! is a memcpy done before the command returns, so fences are ready at once.
//!
//! Two things about rutabaga's 2D arithmetic shape the code below:
//! - it locates row `r` of a rect at `offset + (y + r) * stride + x * 4` of
//!   the backing, while virtio-gpu's `offset` is where the rect's *first
//!   pixel* is (QEMU, the Linux driver, and this crate's `sim` agree). We
//!   hand it iovecs that start `y * stride + x * 4` bytes before `offset`.
//! - `transfer_read` places row `r` at `(y + r) * stride + x * 4` of the
//!   destination, so reading a rect packed needs that many bytes in front.

use std::collections::HashMap;
use std::ffi::c_void;
use std::io::IoSliceMut;

use rutabaga_gfx::{
    ResourceCreate3D, Rutabaga, RutabagaBuilder, RutabagaComponentType, RutabagaError,
    RutabagaFenceHandler, RutabagaIovec, Transfer3D, RUTABAGA_PIPE_BIND_RENDER_TARGET,
    RUTABAGA_PIPE_TEXTURE_2D,
};
use vm_memory::volatile_memory::PtrGuard;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::{BlobMemory, GpuWait, Renderer, RendererFactory, RendererInfo, ResourceKind};
use crate::backing::{Backing, GuestMem};
use crate::protocol::wire::{
    VIRTIO_GPU_CMD_CTX_CREATE, VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB, VIRTIO_GPU_CMD_SUBMIT_3D,
    VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D, VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
    VIRTIO_GPU_F_RESOURCE_BLOB, VIRTIO_GPU_F_VIRGL,
};
use crate::protocol::{ProtocolError, Rect, Transfer3d};

/// Every virtio-gpu 2D format is 4 bytes per pixel.
const BPP: u64 = 4;

/// Makes `2d` renderers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rutabaga2dFactory;

impl RendererFactory for Rutabaga2dFactory {
    fn info(&self) -> RendererInfo {
        RendererInfo {
            name: "2d",
            capsets: Vec::new(),
            has_3d: false,
            has_blob: false,
            max_rings: 1,
            single_shard: true,
        }
    }

    fn create(&self, _shard: usize) -> Result<Box<dyn Renderer>, String> {
        Ok(Box::new(Rutabaga2d::new()?))
    }
}

#[derive(Debug, Clone, Copy)]
struct Size {
    width: u32,
    height: u32,
}

impl Size {
    fn stride(self) -> u64 {
        u64::from(self.width) * BPP
    }
}

/// One rutabaga 2D instance (lives and dies on the thread that made it).
pub struct Rutabaga2d {
    rutabaga: Rutabaga,
    /// Rutabaga keeps the pixels; this keeps what bounds checks need, so
    /// nothing the guest sends reaches rutabaga's arithmetic unchecked.
    resources: HashMap<u32, Size>,
    /// Host bytes rutabaga's offset arithmetic wants in front of the data
    /// (see the module docs). Grows to the largest resource plus a row and
    /// is reused; its contents never matter.
    scratch: Vec<u8>,
    /// Pixel bytes copied so far (see `Renderer::pixel_bytes_copied`).
    copied: u64,
}

impl Rutabaga2d {
    /// Builds a rutabaga instance with only the 2D component.
    pub fn new() -> Result<Rutabaga2d, String> {
        // 2D fences are signalled inside `create_fence`; we never create
        // any (2D work is done when the call returns), so nothing listens.
        let fences = RutabagaFenceHandler::new(|_| {});
        let rutabaga = RutabagaBuilder::new(0, fences)
            .set_default_component(RutabagaComponentType::Rutabaga2D)
            .build()
            .map_err(|e| format!("rutabaga 2D did not start: {e}"))?;
        Ok(Rutabaga2d {
            rutabaga,
            resources: HashMap::new(),
            scratch: Vec::new(),
            copied: 0,
        })
    }

    fn size(&self, id: u32) -> Result<Size, ProtocolError> {
        self.resources
            .get(&id)
            .copied()
            .ok_or(ProtocolError::UnknownResource(id))
    }
}

/// The first `len` bytes of `scratch`, grown if need be.
fn scratch(scratch: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    &mut scratch[..len]
}

/// A rutabaga failure the guest cannot have caused (every input was checked
/// first): logged with its text, answered as the renderer's own error.
fn failed(op: &'static str, id: u32, e: RutabagaError) -> ProtocolError {
    tracing::warn!(resource = id, error = %e, "rutabaga 2D {op} failed");
    match e {
        RutabagaError::ComponentError(code) => ProtocolError::RendererFailed(code),
        _ => ProtocolError::RendererFailed(-libc::EIO),
    }
}

fn to_usize(n: u64) -> Result<usize, ProtocolError> {
    usize::try_from(n).map_err(|_| ProtocolError::OutOfMemory { requested: n })
}

/// Appends host iovecs for bytes `[from, to)` of `backing` (already checked
/// to lie inside it), keeping a guard for each mapping it points into.
fn guest_iovecs(
    backing: &Backing,
    mem: &GuestMem,
    from: u64,
    to: u64,
    iovecs: &mut Vec<RutabagaIovec>,
    guards: &mut Vec<PtrGuard>,
) -> Result<(), ProtocolError> {
    let mut pos = 0u64; // linear start of the current entry
    for e in backing.entries() {
        let e_end = pos + u64::from(e.length);
        let (a, b) = (from.max(pos), to.min(e_end));
        if a < b {
            let n = (b - a) as usize; // at most one entry's u32 length
            let addr = e.addr.saturating_add(a - pos);
            let beyond = || ProtocolError::BackingBeyondGuestMemory {
                addr,
                length: n as u32,
            };
            // Guest memory may have been replaced since the backing was
            // checked: every span is resolved (and so re-checked) here.
            let slices = mem
                .get_slices(GuestAddress(addr), n, Permissions::Read)
                .map_err(|_| beyond())?;
            let mut got = 0;
            for slice in slices {
                let guard = slice.map_err(|_| beyond())?.ptr_guard();
                got += guard.len();
                iovecs.push(RutabagaIovec {
                    // Rutabaga's iovec type is `*mut`; 2D transfer_write
                    // only reads through it.
                    base: guard.as_ptr().cast_mut().cast::<c_void>(),
                    len: guard.len(),
                });
                guards.push(guard);
            }
            if got != n {
                return Err(beyond());
            }
        }
        if e_end >= to {
            break;
        }
        pos = e_end;
    }
    Ok(())
}

impl Renderer for Rutabaga2d {
    fn create_context(
        &mut self,
        _ctx: u32,
        _capset_id: u8,
        _name: &[u8],
    ) -> Result<(), ProtocolError> {
        Err(ProtocolError::FeatureNotNegotiated {
            command: VIRTIO_GPU_CMD_CTX_CREATE,
            feature: VIRTIO_GPU_F_VIRGL,
        })
    }

    fn destroy_context(&mut self, _ctx: u32) {}

    fn submit(&mut self, _ctx: u32, _ring: u8, _cmds: &[u8]) -> Result<(), ProtocolError> {
        Err(ProtocolError::FeatureNotNegotiated {
            command: VIRTIO_GPU_CMD_SUBMIT_3D,
            feature: VIRTIO_GPU_F_VIRGL,
        })
    }

    fn fence(&mut self, _ctx: u32, _ring: u8) -> GpuWait {
        // Every 2D command finished its copy before it returned.
        Box::pin(std::future::ready(()))
    }

    fn create_resource(&mut self, id: u32, kind: &ResourceKind) -> Result<(), ProtocolError> {
        let (format, width, height) = match kind {
            ResourceKind::Image2d {
                format,
                width,
                height,
            } => (*format, *width, *height),
            ResourceKind::Image3d(_) => {
                return Err(ProtocolError::FeatureNotNegotiated {
                    command: VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
                    feature: VIRTIO_GPU_F_VIRGL,
                })
            }
            ResourceKind::HostBlob { .. } | ResourceKind::GuestBlob { .. } => {
                return Err(ProtocolError::FeatureNotNegotiated {
                    command: VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                    feature: VIRTIO_GPU_F_RESOURCE_BLOB,
                })
            }
        };
        if self.resources.contains_key(&id) {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        // Rutabaga computes the row in u32 and allocates `vec![0; size]`
        // (an abort, not an error, if it cannot): keep both in range here.
        let bytes = u64::from(width)
            .checked_mul(u64::from(height))
            .and_then(|n| n.checked_mul(BPP))
            .unwrap_or(u64::MAX);
        if u32::try_from(u64::from(width) * BPP).is_err() {
            return Err(ProtocolError::OutOfMemory { requested: bytes });
        }
        to_usize(bytes)?;
        let create = ResourceCreate3D {
            target: RUTABAGA_PIPE_TEXTURE_2D,
            format: format.to_wire(),
            bind: RUTABAGA_PIPE_BIND_RENDER_TARGET,
            width,
            height,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        self.rutabaga
            .resource_create_3d(id, create)
            .map_err(|e| failed("resource_create_3d", id, e))?;
        self.resources.insert(id, Size { width, height });
        Ok(())
    }

    fn destroy_resource(&mut self, id: u32) {
        if self.resources.remove(&id).is_some() {
            if let Err(e) = self.rutabaga.unref_resource(id) {
                failed("unref_resource", id, e);
            }
        }
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let size = self.size(id)?;
        if !rect.fits_within(size.width, size.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        if rect.is_empty() {
            return Ok(());
        }
        let stride = size.stride();
        // The backing bytes the rect's rows occupy: [offset, end).
        let span = u64::from(rect.height - 1) * stride + u64::from(rect.width) * BPP;
        let end = offset
            .checked_add(span)
            .filter(|&e| e <= backing.len())
            .ok_or(ProtocolError::TransferBeyondBacking {
                needed: offset.saturating_add(span),
                backing: backing.len(),
            })?;
        // Rutabaga reads row r at `lead + r * stride` of the iovecs, so they
        // must start `lead` bytes before `offset`: with earlier backing
        // bytes where there are enough (always, for the Linux driver's
        // offsets), else with scratch bytes it skips over unread.
        let lead = u64::from(rect.y) * stride + u64::from(rect.x) * BPP;
        let (pad, from) = match offset.checked_sub(lead) {
            Some(from) => (0, from),
            None => (to_usize(lead - offset)?, 0),
        };
        let mut iovecs = Vec::new();
        let mut guards = Vec::new();
        if pad > 0 {
            let scratch = scratch(&mut self.scratch, pad);
            iovecs.push(RutabagaIovec {
                base: scratch.as_mut_ptr().cast::<c_void>(),
                len: pad,
            });
        }
        guest_iovecs(backing, mem, from, end, &mut iovecs, &mut guards)?;

        // Pointer lifetime (rutabaga's `attach_backing` is a safe fn taking
        // raw pointers; the argument is ours to keep): the iovecs point into
        // guest memory mapped by `mem`, which this call borrows, so no
        // mapping goes away before we return (and `guards` keep any
        // per-access mapping alive), and into `self.scratch`, untouched until
        // then. They are detached before returning on every path, so
        // rutabaga never holds them longer. The guest may write those pages
        // while we copy (virtio says it must not); that can tear pixels of
        // its own image, as in crosvm, nothing else.
        self.rutabaga
            .attach_backing(id, iovecs)
            .map_err(|e| failed("attach_backing", id, e))?;
        let transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
        let written = self.rutabaga.transfer_write(0, id, transfer, None);
        let detached = self.rutabaga.detach_backing(id);
        drop(guards);
        written.map_err(|e| failed("transfer_write", id, e))?;
        self.copied += u64::from(rect.width) * u64::from(rect.height) * BPP;
        detached.map_err(|e| failed("detach_backing", id, e))
    }

    fn transfer_3d(
        &mut self,
        _ctx: u32,
        _t: &Transfer3d,
        to_host: bool,
        _backing: &Backing,
        _mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        Err(ProtocolError::FeatureNotNegotiated {
            command: if to_host {
                VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D
            } else {
                VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D
            },
            feature: VIRTIO_GPU_F_VIRGL,
        })
    }

    fn read_rect(&mut self, id: u32, rect: Rect, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let size = self.size(id)?;
        if !rect.fits_within(size.width, size.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        if rect.is_empty() {
            return Ok(());
        }
        // With the destination stride set to one rect row, rutabaga writes
        // the rect packed, starting `lead` bytes into the buffer.
        let row = u64::from(rect.width) * BPP;
        let lead = to_usize(u64::from(rect.y) * row + u64::from(rect.x) * BPP)?;
        let len = to_usize(row * u64::from(rect.height))?;
        let mut transfer = Transfer3D::new_2d(rect.x, rect.y, rect.width, rect.height, 0);
        transfer.stride = rect.width * BPP as u32; // <= the resource's row, checked at create
        let start = out.len();
        if lead <= start {
            // Room in front already (a full-frame flush has lead 0):
            // rutabaga writes straight into `out` after what it holds.
            out.resize(start + len, 0);
            let dst = IoSliceMut::new(&mut out[start - lead..]);
            if let Err(e) = self.rutabaga.transfer_read(0, id, transfer, Some(dst)) {
                out.truncate(start);
                return Err(failed("transfer_read", id, e));
            }
            self.copied += len as u64;
        } else {
            let dst = IoSliceMut::new(scratch(&mut self.scratch, lead + len));
            self.rutabaga
                .transfer_read(0, id, transfer, Some(dst))
                .map_err(|e| failed("transfer_read", id, e))?;
            out.extend_from_slice(&self.scratch[lead..lead + len]);
            self.copied += 2 * len as u64;
        }
        Ok(())
    }

    fn pixel_bytes_copied(&self) -> u64 {
        self.copied
    }

    fn blob_memory(&mut self, _id: u32) -> Option<BlobMemory> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Format, MemEntry, ResourceCreate3d, ResourceId};
    use vm_memory::GuestMemoryMmap;

    const W: u32 = 16;
    const H: u32 = 8;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn image(id: u32, width: u32, height: u32) -> (u32, ResourceKind) {
        (
            id,
            ResourceKind::Image2d {
                format: Format::B8G8R8X8Unorm,
                width,
                height,
            },
        )
    }

    fn renderer_with(id: u32, width: u32, height: u32) -> Rutabaga2d {
        let mut r = Rutabaga2d::new().unwrap();
        let (id, kind) = image(id, width, height);
        r.create_resource(id, &kind).unwrap();
        r
    }

    /// A W x H image's backing in two guest spans, the second page first,
    /// so rows cross from one entry into the other.
    fn split_backing(m: &GuestMem) -> Backing {
        let len = W * H * 4;
        let first = len / 2 + 20; // not on a row boundary
        Backing::new(
            vec![
                MemEntry {
                    addr: 0x8000,
                    length: first,
                },
                MemEntry {
                    addr: 0x2000,
                    length: len - first,
                },
            ],
            m,
        )
        .unwrap()
    }

    /// Byte `i` of the linear backing; never 0, so a stray copy shows.
    fn pattern(i: u64) -> u8 {
        (i % 251) as u8 + 1
    }

    fn fill(b: &Backing, m: &GuestMem) {
        let bytes: Vec<u8> = (0..b.len()).map(pattern).collect();
        b.write(m, 0, &bytes).unwrap();
    }

    fn read_all(r: &mut Rutabaga2d, id: u32, w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_rect(id, Rect::new(0, 0, w, h), &mut out).unwrap();
        out
    }

    #[test]
    fn factory_says_single_shard_2d_only() {
        let info = Rutabaga2dFactory.info();
        assert_eq!(info.name, "2d");
        assert!(info.single_shard);
        assert!(!info.has_3d && !info.has_blob);
        assert_eq!(info.max_rings, 1);
        assert!(info.capsets.is_empty());
        assert!(Rutabaga2dFactory.create(0).is_ok());
    }

    #[test]
    fn sub_rect_transfer_at_its_offset_lands_exactly_in_that_rect() {
        let m = mem();
        let b = split_backing(&m);
        fill(&b, &m);
        let mut r = renderer_with(1, W, H);
        let rect = Rect::new(3, 2, 5, 4);
        let stride = u64::from(W) * 4;
        let offset = 2 * stride + 3 * 4; // the Linux driver's offset
        r.transfer_to_host_2d(1, rect, offset, &b, &m).unwrap();

        let all = read_all(&mut r, 1, W, H);
        for y in 0..H {
            for x in 0..W {
                let i = u64::from(y) * stride + u64::from(x) * 4;
                let inside = (3..8).contains(&x) && (2..6).contains(&y);
                for c in 0..4 {
                    let want = if inside { pattern(i + c) } else { 0 };
                    assert_eq!(all[(i + c) as usize], want, "pixel ({x},{y}) byte {c}");
                }
            }
        }
        // The rect alone comes back packed.
        let mut packed = Vec::new();
        r.read_rect(1, rect, &mut packed).unwrap();
        let want: Vec<u8> = (0..4u64)
            .flat_map(|row| {
                let start = offset + row * stride;
                (start..start + 20).map(pattern)
            })
            .collect();
        assert_eq!(packed, want);
    }

    #[test]
    fn offset_before_the_rect_start_reads_rows_from_that_offset() {
        // A packed staging layout: the rect's first pixel at byte 0 although
        // the rect is not at (0, 0). Row r is read at `offset + r * stride`.
        let m = mem();
        let b = split_backing(&m);
        fill(&b, &m);
        let mut r = renderer_with(1, W, H);
        let rect = Rect::new(4, 3, 2, 2);
        r.transfer_to_host_2d(1, rect, 8, &b, &m).unwrap();
        let mut got = Vec::new();
        r.read_rect(1, rect, &mut got).unwrap();
        let stride = u64::from(W) * 4;
        let want: Vec<u8> = (8..16)
            .chain(stride + 8..stride + 16)
            .map(pattern)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn read_rect_appends_after_what_out_holds() {
        let m = mem();
        let b = split_backing(&m);
        fill(&b, &m);
        let mut r = renderer_with(1, W, H);
        r.transfer_to_host_2d(1, Rect::new(0, 0, W, H), 0, &b, &m)
            .unwrap();
        let rect = Rect::new(1, 1, 2, 1);
        let want: Vec<u8> = (68..76).map(pattern).collect();
        // Room in front (written in place) and none (through scratch).
        for prefix in [vec![9u8; 200], vec![9u8; 3]] {
            let mut out = prefix.clone();
            r.read_rect(1, rect, &mut out).unwrap();
            assert_eq!(&out[..prefix.len()], &prefix[..]);
            assert_eq!(&out[prefix.len()..], &want[..]);
        }
    }

    #[test]
    fn transfer_outside_the_resource_is_refused() {
        let m = mem();
        let b = split_backing(&m);
        let mut r = renderer_with(1, W, H);
        for rect in [
            Rect::new(W - 2, 0, 3, 1),
            Rect::new(0, H, 1, 1),
            Rect::new(u32::MAX, u32::MAX, 2, 2),
        ] {
            assert_eq!(
                r.transfer_to_host_2d(1, rect, 0, &b, &m),
                Err(ProtocolError::RectOutsideResource)
            );
            assert_eq!(
                r.read_rect(1, rect, &mut Vec::new()),
                Err(ProtocolError::RectOutsideResource)
            );
        }
    }

    #[test]
    fn backing_too_small_is_refused_and_nothing_is_copied() {
        let m = mem();
        let b = Backing::new(
            vec![MemEntry {
                addr: 0,
                length: 64,
            }],
            &m,
        )
        .unwrap();
        fill(&b, &m);
        let mut r = renderer_with(1, W, H);
        let err = r.transfer_to_host_2d(1, Rect::new(0, 0, W, H), 0, &b, &m);
        assert!(matches!(
            err,
            Err(ProtocolError::TransferBeyondBacking { backing: 64, .. })
        ));
        // An offset near u64::MAX does not wrap into range.
        let err = r.transfer_to_host_2d(1, Rect::new(0, 0, 1, 1), u64::MAX - 1, &b, &m);
        assert!(matches!(
            err,
            Err(ProtocolError::TransferBeyondBacking { .. })
        ));
        assert!(read_all(&mut r, 1, W, H).iter().all(|&v| v == 0));
    }

    #[test]
    fn backing_no_longer_in_guest_memory_is_refused() {
        let m = mem();
        let b = Backing::new(
            vec![MemEntry {
                addr: 0xf_0000,
                length: W * H * 4,
            }],
            &m,
        )
        .unwrap();
        // The VMM sent a smaller memory table since the backing was attached.
        let smaller = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let mut r = renderer_with(1, W, H);
        assert!(matches!(
            r.transfer_to_host_2d(1, Rect::new(0, 0, W, H), 0, &b, &smaller),
            Err(ProtocolError::BackingBeyondGuestMemory { .. })
        ));
    }

    #[test]
    fn unknown_and_duplicate_ids_are_refused() {
        let m = mem();
        let b = split_backing(&m);
        let mut r = renderer_with(1, W, H);
        let (_, kind) = image(1, 4, 4);
        assert_eq!(
            r.create_resource(1, &kind),
            Err(ProtocolError::ResourceIdInUse(1))
        );
        let rect = Rect::new(0, 0, 1, 1);
        assert_eq!(
            r.transfer_to_host_2d(2, rect, 0, &b, &m),
            Err(ProtocolError::UnknownResource(2))
        );
        assert_eq!(
            r.read_rect(2, rect, &mut Vec::new()),
            Err(ProtocolError::UnknownResource(2))
        );
        // Destroyed ids are free again, and start zeroed.
        r.transfer_to_host_2d(1, Rect::new(0, 0, W, H), 0, &b, &m)
            .unwrap();
        r.destroy_resource(1);
        r.destroy_resource(1);
        r.create_resource(1, &kind).unwrap();
        assert!(read_all(&mut r, 1, 4, 4).iter().all(|&v| v == 0));
    }

    #[test]
    fn three_d_blobs_and_contexts_are_refused_without_panicking() {
        let mut r = Rutabaga2d::new().unwrap();
        let c3d = ResourceCreate3d {
            resource_id: ResourceId(2),
            target: 2,
            format: 2,
            bind: 2,
            width: 4,
            height: 4,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        };
        for kind in [
            ResourceKind::Image3d(c3d),
            ResourceKind::HostBlob {
                size: 4096,
                blob_id: 1,
            },
            ResourceKind::GuestBlob { size: 4096 },
        ] {
            assert!(matches!(
                r.create_resource(2, &kind),
                Err(ProtocolError::FeatureNotNegotiated { .. })
            ));
        }
        assert!(r.create_context(1, 0, b"x").is_err());
        assert!(r.submit(1, 0, &[0; 8]).is_err());
        assert!(r.blob_memory(2).is_none());
        // Nothing was created under the refused id.
        assert_eq!(
            r.read_rect(2, Rect::new(0, 0, 1, 1), &mut Vec::new()),
            Err(ProtocolError::UnknownResource(2))
        );
    }

    #[test]
    fn oversized_image_is_refused_before_rutabaga_allocates() {
        let mut r = Rutabaga2d::new().unwrap();
        let (_, kind) = image(1, 1 << 30, 1);
        assert!(matches!(
            r.create_resource(1, &kind),
            Err(ProtocolError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn fence_of_2d_work_is_ready_at_once() {
        reactor::block_on(async {
            let mut r = Rutabaga2d::new().unwrap();
            r.fence(0, 0).await;
        })
        .unwrap();
    }

    /// The whole device with the `2d` renderer: a guest's driver sequence
    /// through a real control queue on a two-shard reactor.
    mod device {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
        use virtio_queue::desc::split::Descriptor;
        use virtio_queue::desc::RawDescriptor;
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

        use super::super::Rutabaga2dFactory;
        use crate::blob::NoBlobMapper;
        use crate::device::{Device, DeviceConfig, QueueKind, QueueSetup, RecordingDisplay};
        use crate::protocol::*;

        const REQ: u64 = 0x10_0000;
        const RESP: u64 = 0x20_0000;
        const FB: u64 = 0x40_0000;

        fn eventfd() -> OwnedFd {
            // SAFETY: no pointer arguments; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0);
            // SAFETY: a fresh fd nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }

        #[test]
        fn transferred_rect_reaches_the_scanout_through_the_device() {
            let (w, h) = (64u32, 32u32);
            let mem: GuestMemoryMmap =
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
            let stride = u64::from(w) * 4;
            let fb: Vec<u8> = (0..stride * u64::from(h)).map(super::pattern).collect();
            mem.write_slice(&fb, GuestAddress(FB)).unwrap();

            let rect = Rect::new(8, 4, 16, 8);
            let half = (w * h * 4) / 2;
            let res = ResourceId(1);
            let requests = [
                Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
                    resource_id: res,
                    format: Format::B8G8R8X8Unorm,
                    width: w,
                    height: h,
                })),
                Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
                    resource_id: res,
                    entries: vec![
                        MemEntry {
                            addr: FB,
                            length: half,
                        },
                        MemEntry {
                            addr: FB + u64::from(half),
                            length: half,
                        },
                    ],
                })),
                Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
                    rect,
                    offset: u64::from(rect.y) * stride + u64::from(rect.x) * 4,
                    resource_id: res,
                })),
                Request::new(GpuCommand::SetScanout(SetScanout {
                    rect: Rect::new(0, 0, w, h),
                    scanout_id: ScanoutId(0),
                    resource_id: res,
                })),
                Request::new(GpuCommand::ResourceFlush(ResourceFlush {
                    rect: Rect::new(0, 0, w, h),
                    resource_id: res,
                }))
                .with_fence(1),
            ];
            let vq = MockSplitQueue::new(&mem, 16);
            let mut descs = Vec::new();
            for (i, req) in requests.iter().enumerate() {
                let bytes = req.to_bytes();
                let (at, resp) = (REQ + i as u64 * 0x1000, RESP + i as u64 * 0x100);
                mem.write_slice(&bytes, GuestAddress(at)).unwrap();
                let next = 2 * i as u16 + 1;
                descs.push(RawDescriptor::from(Descriptor::new(
                    at,
                    bytes.len() as u32,
                    VRING_DESC_F_NEXT as u16,
                    next,
                )));
                descs.push(RawDescriptor::from(Descriptor::new(
                    resp,
                    0x100,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )));
            }
            vq.add_desc_chains(&descs, 0).unwrap();

            let reactor = reactor::Reactor::builder()
                .shards(2)
                .name("ruta2d-test")
                .build()
                .unwrap();
            let display = Arc::new(RecordingDisplay::default());
            let device = Device::new(
                &reactor,
                DeviceConfig::default(),
                Arc::new(Rutabaga2dFactory),
                display.clone(),
                Arc::new(NoBlobMapper),
            )
            .unwrap();
            device.set_memory(mem.clone());
            device.set_features(device.device_features()).unwrap();
            let setup = QueueSetup {
                size: 16,
                desc_table: vq.desc_table_addr().0,
                avail_ring: vq.avail_addr().0,
                used_ring: vq.used_addr().0,
                next_avail: 0,
                next_used: 0,
                event_idx: false,
            };
            device
                .start_queue(QueueKind::Control, setup, eventfd(), eventfd())
                .unwrap();

            // Intake drains what is already available when the queue starts.
            let used_idx = GuestAddress(vq.used_addr().0 + 2);
            let deadline = Instant::now() + Duration::from_secs(10);
            while mem.read_obj::<u16>(used_idx).unwrap() < requests.len() as u16 {
                assert!(Instant::now() < deadline, "device did not answer in 10 s");
                std::thread::sleep(Duration::from_millis(1));
            }
            for i in 0..requests.len() {
                let mut resp = [0u8; 24];
                mem.read_slice(&mut resp, GuestAddress(RESP + i as u64 * 0x100))
                    .unwrap();
                let (_, r) = Response::decode(&resp).unwrap();
                assert_eq!(r, Response::OkNodata, "request {i}");
            }

            let shown = display.snapshot();
            let frame = &shown.frames[&0];
            for y in 0..h {
                for x in 0..w {
                    let i = (u64::from(y) * stride + u64::from(x) * 4) as usize;
                    let inside = (8..24).contains(&x) && (4..12).contains(&y);
                    let want = if inside { &fb[i..i + 4] } else { &[0u8; 4][..] };
                    assert_eq!(&frame[i..i + 4], want, "pixel ({x},{y})");
                }
            }
            drop(device);
            drop(reactor);
        }
    }
}
