//! The `sim` renderer: real host memory and real copies, modelled GPU time.
//!
//! A `SUBMIT_3D` command buffer may start with a sim header that says how
//! long the GPU is busy with it and whether it ever completes (loadgen uses
//! this to model an expensive or hung context):
//!
//! ```text
//! u32 magic   "GSIM" (0x4D495347, little endian)
//! u32 gpu_us  modelled GPU time of this submit
//! u32 flags   bit 0: hang (this ring never completes again)
//!             bit 1: fill (six more words follow)
//! u32 resource, x, y, width, height, colour   (with bit 1: the GPU "draws"
//!             the rectangle of the resource in one colour)
//! ```
//!
//! Anything else costs the renderer's default time. Each (context, ring)
//! is a sequential GPU queue: work starts when the previous work on that
//! ring ends. A fence completes from a CLOCK_MONOTONIC timerfd armed for the
//! moment its ring drains; nothing polls.
//!
//! Pixels are copied once on the way to the display. `TRANSFER_TO_HOST_2D`
//! of a rectangle laid out in the backing as in the image (what the Linux
//! driver sends for dumb buffers and fbdev) only records that those pixels
//! now live in the backing; the `RESOURCE_FLUSH` that follows copies them
//! from guest memory straight into the message for the VMM. They are copied
//! into the host image only when something else needs them there: another
//! transfer that does not cover them, a flush of a rectangle they do not
//! contain, a GPU fill, a 3D transfer, or `DETACH_BACKING`. The one
//! difference a guest can see: pixels it writes into the backing after the
//! transfer and before they are needed are the ones shown (the Linux driver
//! transfers right before each flush, so it shows what it just drew anyway).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{BlobMemory, Capset, GpuWait, Renderer, RendererFactory, RendererInfo, ResourceKind};
use crate::backing::{Backing, GuestMem};
use crate::protocol::{ProtocolError, Rect, Transfer3d};

/// Capset id of the sim renderer (ids below 64 fit the Linux driver's mask;
/// 1-6 are taken by real capsets).
pub const SIM_CAPSET_ID: u32 = 63;
pub const SIM_MAGIC: u32 = 0x4D49_5347;
pub const SIM_FLAG_HANG: u32 = 1;
pub const SIM_FLAG_FILL: u32 = 2;
/// Rings per context the sim keeps apart (the spec's maximum).
pub const SIM_RINGS: u8 = 64;

/// Builds a sim command buffer (for loadgen and tests).
pub fn sim_submit(gpu_us: u32, hang: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(12);
    v.extend_from_slice(&SIM_MAGIC.to_le_bytes());
    v.extend_from_slice(&gpu_us.to_le_bytes());
    v.extend_from_slice(&(if hang { SIM_FLAG_HANG } else { 0 }).to_le_bytes());
    v
}

/// Builds a sim command buffer that also draws `rect` of `resource` in
/// `colour` (4-byte pixels). The drawing lands at once; with `hang` the
/// ring's fence never signals.
pub fn sim_submit_fill(gpu_us: u32, hang: bool, resource: u32, rect: Rect, colour: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    let hang = if hang { SIM_FLAG_HANG } else { 0 };
    for w in [
        SIM_MAGIC,
        gpu_us,
        SIM_FLAG_FILL | hang,
        resource,
        rect.x,
        rect.y,
        rect.width,
        rect.height,
        colour,
    ] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// A parsed sim command buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SimSubmit {
    cost: Duration,
    hang: bool,
    fill: Option<(u32, Rect, u32)>,
}

fn parse_submit(cmds: &[u8], default: Duration) -> SimSubmit {
    let word = |i: usize| {
        cmds.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    match (word(0), word(1), word(2)) {
        (Some(SIM_MAGIC), Some(us), Some(flags)) => {
            let fill = if flags & SIM_FLAG_FILL != 0 {
                match (word(3), word(4), word(5), word(6), word(7), word(8)) {
                    (Some(r), Some(x), Some(y), Some(w), Some(h), Some(c)) => {
                        Some((r, Rect::new(x, y, w, h), c))
                    }
                    _ => None,
                }
            } else {
                None
            };
            SimSubmit {
                cost: Duration::from_micros(u64::from(us)),
                hang: flags & SIM_FLAG_HANG != 0,
                fill,
            }
        }
        _ => SimSubmit {
            cost: default,
            hang: false,
            fill: None,
        },
    }
}

#[derive(Default)]
struct RingClock {
    busy_until: Option<Instant>,
    hung: bool,
}

struct SimResource {
    /// Image bytes (2D/3D) packed, 4 bytes per pixel; empty for blobs.
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    blob: Option<BlobMemory>,
    /// Transferred pixels not copied into `pixels` yet (see the module doc).
    pending: Option<Pending>,
}

/// A rectangle whose pixels are in the backing, laid out as in the image
/// (row `y` at `y * width * 4`), and not yet in the host image.
struct Pending {
    rect: Rect,
    backing: Backing,
    mem: GuestMem,
}

impl SimResource {
    /// Copies pending pixels into the host image; returns the bytes copied.
    fn materialize(&mut self) -> Result<u64, ProtocolError> {
        let Some(p) = self.pending.take() else {
            return Ok(0);
        };
        let stride = self.width as usize * 4;
        let row = p.rect.width as usize * 4;
        for y in p.rect.y..p.rect.y + p.rect.height {
            let at = y as usize * stride + p.rect.x as usize * 4;
            p.backing
                .read(&p.mem, at as u64, &mut self.pixels[at..at + row])?;
        }
        Ok(row as u64 * u64::from(p.rect.height))
    }

    /// Appends the pixels of `rect` (inside the image) to `out`: from the
    /// backing when they are pending there, else from the host image.
    /// Returns the bytes copied.
    fn append_rect(&mut self, rect: Rect, out: &mut Vec<u8>) -> Result<u64, ProtocolError> {
        let mut copied = 0;
        if self.pending.as_ref().is_some_and(|p| !covers(p.rect, rect)) {
            copied += self.materialize()?;
        }
        let stride = self.width as usize * 4;
        let row = rect.width as usize * 4;
        out.reserve(row * rect.height as usize);
        let full_rows = rect.x == 0 && rect.width == self.width;
        for y in rect.y..rect.y + rect.height {
            let at = y as usize * stride + rect.x as usize * 4;
            // Whole rows are contiguous: one copy for the rectangle.
            let len = if full_rows {
                row * rect.height as usize
            } else {
                row
            };
            match &self.pending {
                Some(p) => p.backing.append(&p.mem, at as u64, len, out)?,
                None => out.extend_from_slice(&self.pixels[at..at + len]),
            }
            copied += len as u64;
            if full_rows {
                break;
            }
        }
        Ok(copied)
    }
}

/// True when `outer` contains `inner`.
fn covers(outer: Rect, inner: Rect) -> bool {
    let end = |at: u32, len: u32| u64::from(at) + u64::from(len);
    inner.x >= outer.x
        && inner.y >= outer.y
        && end(inner.x, inner.width) <= end(outer.x, outer.width)
        && end(inner.y, inner.height) <= end(outer.y, outer.height)
}

/// Makes sim renderers.
#[derive(Debug, Clone)]
pub struct SimFactory {
    /// GPU time of a submit without a sim header.
    pub default_cost: Duration,
}

impl Default for SimFactory {
    fn default() -> Self {
        SimFactory {
            default_cost: Duration::from_micros(100),
        }
    }
}

impl RendererFactory for SimFactory {
    fn info(&self) -> RendererInfo {
        RendererInfo {
            name: "sim",
            capsets: vec![Capset {
                id: SIM_CAPSET_ID,
                max_version: 1,
                data: b"gpu-reactor sim renderer v1\0".to_vec(),
            }],
            has_3d: true,
            has_blob: true,
            max_rings: SIM_RINGS,
            single_shard: false,
        }
    }

    fn create(&self, _shard: usize) -> Result<Box<dyn Renderer>, String> {
        Ok(Box::new(SimRenderer::new(self.default_cost)))
    }
}

/// One shard's sim GPU.
pub struct SimRenderer {
    default_cost: Duration,
    rings: HashMap<(u32, u8), RingClock>,
    contexts: HashMap<u32, ()>,
    resources: HashMap<u32, SimResource>,
    /// Pixel bytes copied so far (see `Renderer::pixel_bytes_copied`).
    copied: u64,
}

impl SimRenderer {
    pub fn new(default_cost: Duration) -> Self {
        SimRenderer {
            default_cost,
            rings: HashMap::new(),
            contexts: HashMap::new(),
            resources: HashMap::new(),
            copied: 0,
        }
    }

    fn resource(&mut self, id: u32) -> Result<&mut SimResource, ProtocolError> {
        self.resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))
    }
}

fn memfd(size: u64) -> Result<OwnedFd, ProtocolError> {
    // SAFETY: the name is a valid NUL-terminated string; result checked.
    let fd = unsafe { libc::memfd_create(c"gpu-reactor-blob".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ProtocolError::OutOfMemory { requested: size });
    }
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Sparse: no host RAM is used until the guest touches the mapping.
    // SAFETY: plain syscall on our fd.
    if unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size as libc::off_t) } != 0 {
        return Err(ProtocolError::OutOfMemory { requested: size });
    }
    Ok(fd)
}

/// Bytes of an image the sim keeps (4 a pixel); guest values, so checked.
fn image_bytes(width: u32, height: u32, depth: u32) -> Result<usize, ProtocolError> {
    let n = u64::from(width)
        .checked_mul(u64::from(height))
        .and_then(|n| n.checked_mul(u64::from(depth.max(1))))
        .and_then(|n| n.checked_mul(4));
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or(ProtocolError::OutOfMemory {
            requested: n.unwrap_or(u64::MAX),
        })
}

impl Renderer for SimRenderer {
    fn create_context(
        &mut self,
        ctx: u32,
        _capset_id: u8,
        _name: &[u8],
    ) -> Result<(), ProtocolError> {
        if self.contexts.insert(ctx, ()).is_some() {
            return Err(ProtocolError::ContextIdInUse(ctx));
        }
        Ok(())
    }

    fn destroy_context(&mut self, ctx: u32) {
        self.contexts.remove(&ctx);
        self.rings.retain(|(c, _), _| *c != ctx);
        crate::sparse::shrink_sparse(&mut self.contexts);
        crate::sparse::shrink_sparse(&mut self.rings);
    }

    fn submit(&mut self, ctx: u32, ring: u8, cmds: &[u8]) -> Result<(), ProtocolError> {
        if !self.contexts.contains_key(&ctx) {
            return Err(ProtocolError::UnknownContext(ctx));
        }
        let SimSubmit { cost, hang, fill } = parse_submit(cmds, self.default_cost);
        if let Some((id, rect, colour)) = fill {
            let res = self
                .resources
                .get_mut(&id)
                .ok_or(ProtocolError::UnknownResource(id))?;
            if !rect.fits_within(res.width, res.height) || res.pixels.is_empty() {
                return Err(ProtocolError::RectOutsideResource);
            }
            self.copied += res.materialize()?;
            // One row of the colour, then a memcpy per row.
            let row: Vec<u8> = std::iter::repeat_n(colour.to_le_bytes(), rect.width as usize)
                .flatten()
                .collect();
            for y in rect.y..rect.y + rect.height {
                let start = (y as usize * res.width as usize + rect.x as usize) * 4;
                res.pixels[start..start + row.len()].copy_from_slice(&row);
            }
        }
        let clock = self.rings.entry((ctx, ring)).or_default();
        let now = Instant::now();
        let start = clock.busy_until.map_or(now, |b| b.max(now));
        clock.busy_until = Some(start + cost);
        clock.hung |= hang;
        Ok(())
    }

    fn fence(&mut self, ctx: u32, ring: u8) -> GpuWait {
        let Some(clock) = self.rings.get(&(ctx, ring)) else {
            return Box::pin(std::future::ready(()));
        };
        if clock.hung {
            return Box::pin(std::future::pending());
        }
        match clock.busy_until {
            Some(at) if at > Instant::now() => Box::pin(async move {
                // A timer that cannot be created (fd exhaustion) completes
                // the fence at once rather than losing it.
                let _ = reactor::time::sleep_until(at).await;
            }),
            _ => Box::pin(std::future::ready(())),
        }
    }

    fn create_resource(&mut self, id: u32, kind: &ResourceKind) -> Result<(), ProtocolError> {
        let res = match kind {
            ResourceKind::Image2d { width, height, .. } => SimResource {
                pixels: vec![0; image_bytes(*width, *height, 1)?],
                width: *width,
                height: *height,
                blob: None,
                pending: None,
            },
            ResourceKind::Image3d(c) => SimResource {
                pixels: vec![0; image_bytes(c.width, c.height, c.depth)?],
                width: c.width,
                height: c.height,
                blob: None,
                pending: None,
            },
            ResourceKind::HostBlob { size, .. } => SimResource {
                pixels: Vec::new(),
                width: 0,
                height: 0,
                blob: Some(BlobMemory {
                    fd: Arc::new(memfd(*size)?),
                    offset: 0,
                    size: *size,
                }),
                pending: None,
            },
            ResourceKind::GuestBlob { .. } => SimResource {
                pixels: Vec::new(),
                width: 0,
                height: 0,
                blob: None,
                pending: None,
            },
        };
        if self.resources.insert(id, res).is_some() {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        Ok(())
    }

    fn destroy_resource(&mut self, id: u32) {
        self.resources.remove(&id);
        crate::sparse::shrink_sparse(&mut self.resources);
    }

    fn detach_backing(&mut self, id: u32) -> Result<(), ProtocolError> {
        // The guest may reuse those pages now: take what is pending.
        self.copied += self.resource(id)?.materialize()?;
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        if !rect.fits_within(res.width, res.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        let stride = u64::from(res.width) * 4;
        let in_place = offset == u64::from(rect.y) * stride + u64::from(rect.x) * 4;
        if in_place && !res.pixels.is_empty() && !rect.is_empty() {
            // Laid out as in the image: the pixels stay in the backing until
            // needed (module doc). A pending rectangle this one does not
            // cover is copied first; one that covers this one stays as is.
            let same = |p: &Pending| p.backing == *backing;
            if res
                .pending
                .as_ref()
                .is_some_and(|p| same(p) && covers(p.rect, rect))
            {
                return Ok(());
            }
            if !res
                .pending
                .as_ref()
                .is_some_and(|p| same(p) && covers(rect, p.rect))
            {
                self.copied += res.materialize()?;
            }
            // The backing must hold the rectangle's last byte.
            let end = u64::from(rect.y + rect.height - 1) * stride
                + (u64::from(rect.x) + u64::from(rect.width)) * 4;
            if end > backing.len() {
                return Err(ProtocolError::TransferBeyondBacking {
                    needed: end,
                    backing: backing.len(),
                });
            }
            res.pending = Some(Pending {
                rect,
                backing: backing.clone(),
                mem: mem.clone(),
            });
            return Ok(());
        }
        self.copied += res.materialize()?;
        let row = rect.width as usize * 4;
        for y in 0..rect.height {
            // `offset` is the guest's: a sum past 64 bits is past the backing.
            let src = offset.checked_add(u64::from(y) * stride).ok_or(
                ProtocolError::TransferBeyondBacking {
                    needed: u64::MAX,
                    backing: backing.len(),
                },
            )?;
            let dst = ((rect.y + y) as usize * res.width as usize + rect.x as usize) * 4;
            backing.read(mem, src, &mut res.pixels[dst..dst + row])?;
            self.copied += row as u64;
        }
        Ok(())
    }

    fn transfer_3d(
        &mut self,
        _ctx: u32,
        t: &Transfer3d,
        to_host: bool,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let id = t.resource_id.0;
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        self.copied += res.materialize()?;
        let b = t.box3d;
        let fits = matches!(b.end(), Some((r, btm, _)) if r <= res.width && btm <= res.height);
        if !fits || res.pixels.is_empty() || b.d > 1 || b.z > 0 {
            // The sim keeps one layer of level 0; deeper boxes are no-ops
            // for it but still validated.
            return if fits {
                Ok(())
            } else {
                Err(ProtocolError::RectOutsideResource)
            };
        }
        let row = b.w as usize * 4;
        let stride = if t.stride == 0 {
            row as u64
        } else {
            u64::from(t.stride)
        };
        for y in 0..b.h {
            let guest = t.offset.checked_add(u64::from(y) * stride).ok_or(
                ProtocolError::TransferBeyondBacking {
                    needed: u64::MAX,
                    backing: backing.len(),
                },
            )?;
            let host = ((b.y + y) as usize * res.width as usize + b.x as usize) * 4;
            let span = &mut res.pixels[host..host + row];
            if to_host {
                backing.read(mem, guest, span)?;
            } else {
                backing.write(mem, guest, span)?;
            }
            self.copied += row as u64;
        }
        Ok(())
    }

    fn read_rect(&mut self, id: u32, rect: Rect, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let res = self
            .resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        if !rect.fits_within(res.width, res.height) || res.pixels.is_empty() {
            return Err(ProtocolError::RectOutsideResource);
        }
        self.copied += res.append_rect(rect, out)?;
        Ok(())
    }

    fn pixel_bytes_copied(&self) -> u64 {
        self.copied
    }

    fn blob_memory(&mut self, id: u32) -> Option<BlobMemory> {
        self.resources.get(&id).and_then(|r| r.blob.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_header_sets_cost_hang_and_fill() {
        let p = parse_submit(&sim_submit(250, false), Duration::ZERO);
        assert_eq!(
            (p.cost, p.hang, p.fill),
            (Duration::from_micros(250), false, None)
        );
        assert!(parse_submit(&sim_submit(1, true), Duration::ZERO).hang);
        let f = parse_submit(
            &sim_submit_fill(3, false, 9, Rect::new(1, 2, 3, 4), 0xabc),
            Duration::ZERO,
        );
        assert_eq!(f.fill, Some((9, Rect::new(1, 2, 3, 4), 0xabc)));
        // Not a sim buffer: the default cost, never a hang.
        let d = parse_submit(&[1, 2, 3], Duration::from_micros(7));
        assert_eq!((d.cost, d.hang), (Duration::from_micros(7), false));
        // A fill flag with its words cut off draws nothing.
        let mut cut = sim_submit_fill(3, false, 9, Rect::new(1, 2, 3, 4), 0xabc);
        cut.truncate(20);
        assert_eq!(parse_submit(&cut, Duration::ZERO).fill, None);
    }

    #[test]
    fn fill_draws_the_rectangle_and_refuses_one_outside() {
        let mut r = SimRenderer::new(Duration::ZERO);
        r.create_context(1, 0, b"").unwrap();
        let kind = ResourceKind::Image2d {
            format: crate::protocol::Format::B8G8R8X8Unorm,
            width: 4,
            height: 4,
        };
        r.create_resource(5, &kind).unwrap();
        r.submit(
            1,
            0,
            &sim_submit_fill(0, false, 5, Rect::new(1, 1, 2, 2), 0x11223344),
        )
        .unwrap();
        let mut px = Vec::new();
        r.read_rect(5, Rect::new(0, 1, 4, 1), &mut px).unwrap();
        let words: Vec<u32> = px
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(words, vec![0, 0x11223344, 0x11223344, 0]);
        assert_eq!(
            r.submit(
                1,
                0,
                &sim_submit_fill(0, false, 5, Rect::new(3, 3, 2, 2), 1)
            ),
            Err(ProtocolError::RectOutsideResource)
        );
    }

    #[test]
    fn fences_complete_in_ring_order_after_their_modelled_time() {
        reactor::block_on(async {
            let mut r = SimRenderer::new(Duration::ZERO);
            r.create_context(1, SIM_CAPSET_ID as u8, b"t").unwrap();
            let start = Instant::now();
            r.submit(1, 0, &sim_submit(3000, false)).unwrap();
            let f0 = r.fence(1, 0);
            r.submit(1, 1, &sim_submit(0, false)).unwrap();
            let f1 = r.fence(1, 1);
            f1.await; // ring 1 is not behind ring 0's 3 ms
            f0.await;
            assert!(start.elapsed() >= Duration::from_millis(3));
        })
        .unwrap();
    }

    #[test]
    fn a_hung_ring_never_completes_but_others_do() {
        reactor::block_on(async {
            let mut r = SimRenderer::new(Duration::ZERO);
            r.create_context(1, 0, b"").unwrap();
            r.create_context(2, 0, b"").unwrap();
            r.submit(1, 0, &sim_submit(0, true)).unwrap();
            r.submit(2, 0, &sim_submit(0, false)).unwrap();
            let hung = r.fence(1, 0);
            r.fence(2, 0).await;
            let timed_out = reactor::time::timeout(Duration::from_millis(5), hung).await;
            assert!(timed_out.is_err());
        })
        .unwrap();
    }
}

/// The one-copy display path: transfers laid out as in the image stay in
/// the backing until a flush reads them (module doc).
#[cfg(test)]
mod one_copy {
    use super::*;
    use crate::protocol::{Format, MemEntry};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const W: u32 = 8;
    const H: u32 = 4;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    /// The image's bytes in two entries, split off a row boundary.
    fn backing(m: &GuestMem) -> Backing {
        let len = W * H * 4;
        let first = len / 2 + 12;
        let entries = vec![
            MemEntry {
                addr: 0x4000,
                length: first,
            },
            MemEntry {
                addr: 0x1000,
                length: len - first,
            },
        ];
        Backing::new(entries, m).unwrap()
    }

    /// Fills the whole backing with the byte `v`.
    fn paint(b: &Backing, m: &GuestMem, v: u8) {
        b.write(m, 0, &vec![v; b.len() as usize]).unwrap();
    }

    fn renderer() -> SimRenderer {
        let mut r = SimRenderer::new(Duration::ZERO);
        let kind = ResourceKind::Image2d {
            format: Format::B8G8R8X8Unorm,
            width: W,
            height: H,
        };
        r.create_resource(1, &kind).unwrap();
        r
    }

    fn read(r: &mut SimRenderer, rect: Rect) -> Vec<u8> {
        let mut out = Vec::new();
        r.read_rect(1, rect, &mut out).unwrap();
        out
    }

    fn offset(rect: Rect) -> u64 {
        u64::from(rect.y * W + rect.x) * 4
    }

    const ALL: Rect = Rect::new(0, 0, W, H);

    #[test]
    fn a_transfer_and_flush_copy_each_pixel_once_from_guest_memory() {
        let (m, mut r) = (mem(), renderer());
        let b = backing(&m);
        paint(&b, &m, 7);
        r.transfer_to_host_2d(1, ALL, 0, &b, &m).unwrap();
        assert_eq!(
            r.pixel_bytes_copied(),
            0,
            "the transfer itself copies nothing"
        );
        assert_eq!(read(&mut r, ALL), vec![7; (W * H * 4) as usize]);
        assert_eq!(r.pixel_bytes_copied(), u64::from(W * H * 4));
        // A partial flush inside the pending rectangle: rows read one by one.
        let inner = Rect::new(1, 1, 3, 2);
        assert_eq!(read(&mut r, inner), vec![7; 3 * 2 * 4]);
        assert_eq!(r.pixel_bytes_copied(), u64::from(W * H * 4) + 3 * 2 * 4);
    }

    #[test]
    fn pixels_are_taken_from_the_backing_before_it_is_detached() {
        let (m, mut r) = (mem(), renderer());
        let b = backing(&m);
        paint(&b, &m, 3);
        r.transfer_to_host_2d(1, ALL, 0, &b, &m).unwrap();
        r.detach_backing(1).unwrap();
        paint(&b, &m, 9); // the guest reuses the pages
        assert_eq!(read(&mut r, ALL), vec![3; (W * H * 4) as usize]);
    }

    #[test]
    fn a_transfer_elsewhere_first_takes_the_pending_pixels() {
        let (m, mut r) = (mem(), renderer());
        let b = backing(&m);
        let top = Rect::new(0, 0, W, 2);
        let bottom = Rect::new(0, 2, W, 2);
        paint(&b, &m, 1);
        r.transfer_to_host_2d(1, top, offset(top), &b, &m).unwrap();
        paint(&b, &m, 2);
        // Bottom does not cover top: top's pixels are copied now (the 2s).
        r.transfer_to_host_2d(1, bottom, offset(bottom), &b, &m)
            .unwrap();
        paint(&b, &m, 5);
        // Top comes from the host image, bottom from the backing.
        let got = read(&mut r, ALL);
        let half = (W * 2 * 4) as usize;
        assert_eq!(&got[..half], &vec![2; half][..]);
        assert_eq!(&got[half..], &vec![5; half][..]);
        // That flush reached outside the pending rectangle, so it took the
        // rectangle into the image first: the backing is not read again.
        paint(&b, &m, 6);
        assert_eq!(read(&mut r, bottom), vec![5; half]);
    }

    #[test]
    fn a_gpu_fill_and_a_3d_read_back_see_the_transferred_pixels() {
        let (m, mut r) = (mem(), renderer());
        let b = backing(&m);
        r.create_context(1, 0, b"").unwrap();
        paint(&b, &m, 4);
        r.transfer_to_host_2d(1, ALL, 0, &b, &m).unwrap();
        r.submit(
            1,
            0,
            &sim_submit_fill(0, false, 1, Rect::new(0, 0, 1, 1), 0x0909_0909),
        )
        .unwrap();
        paint(&b, &m, 0);
        let got = read(&mut r, Rect::new(0, 0, 2, 1));
        assert_eq!(got, vec![9, 9, 9, 9, 4, 4, 4, 4]);
    }

    #[test]
    fn a_transfer_from_another_layout_is_copied_at_once() {
        let (m, mut r) = (mem(), renderer());
        let b = backing(&m);
        paint(&b, &m, 1);
        // A 1x1 rectangle at (2, 0) read from backing offset 0: not the
        // image's layout, so it cannot stay pending.
        let rect = Rect::new(2, 0, 1, 1);
        r.transfer_to_host_2d(1, rect, 0, &b, &m).unwrap();
        assert_eq!(r.pixel_bytes_copied(), 4);
        paint(&b, &m, 2);
        assert_eq!(read(&mut r, rect), vec![1; 4]);
    }

    #[test]
    fn a_pending_rectangle_must_fit_the_backing() {
        let (m, mut r) = (mem(), renderer());
        let short = Backing::new(
            vec![MemEntry {
                addr: 0x1000,
                length: W * 4,
            }],
            &m,
        )
        .unwrap();
        assert!(matches!(
            r.transfer_to_host_2d(1, ALL, 0, &short, &m),
            Err(ProtocolError::TransferBeyondBacking { .. })
        ));
    }
}
