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
}

impl SimRenderer {
    pub fn new(default_cost: Duration) -> Self {
        SimRenderer {
            default_cost,
            rings: HashMap::new(),
            contexts: HashMap::new(),
            resources: HashMap::new(),
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

fn image_bytes(width: u32, height: u32, depth: u32) -> Result<usize, ProtocolError> {
    let n = u64::from(width) * u64::from(height) * u64::from(depth.max(1)) * 4;
    usize::try_from(n).map_err(|_| ProtocolError::OutOfMemory { requested: n })
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
    }

    fn submit(&mut self, ctx: u32, ring: u8, cmds: &[u8]) -> Result<(), ProtocolError> {
        if !self.contexts.contains_key(&ctx) {
            return Err(ProtocolError::UnknownContext(ctx));
        }
        let SimSubmit { cost, hang, fill } = parse_submit(cmds, self.default_cost);
        if let Some((id, rect, colour)) = fill {
            let res = self.resource(id)?;
            if !rect.fits_within(res.width, res.height) || res.pixels.is_empty() {
                return Err(ProtocolError::RectOutsideResource);
            }
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
            },
            ResourceKind::Image3d(c) => SimResource {
                pixels: vec![0; image_bytes(c.width, c.height, c.depth)?],
                width: c.width,
                height: c.height,
                blob: None,
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
            },
            ResourceKind::GuestBlob { .. } => SimResource {
                pixels: Vec::new(),
                width: 0,
                height: 0,
                blob: None,
            },
        };
        if self.resources.insert(id, res).is_some() {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        Ok(())
    }

    fn destroy_resource(&mut self, id: u32) {
        self.resources.remove(&id);
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let res = self.resource(id)?;
        if !rect.fits_within(res.width, res.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        let stride = u64::from(res.width) * 4;
        let row = rect.width as usize * 4;
        for y in 0..rect.height {
            let src = offset + u64::from(y) * stride;
            let dst = ((rect.y + y) as usize * res.width as usize + rect.x as usize) * 4;
            backing.read(mem, src, &mut res.pixels[dst..dst + row])?;
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
        let res = self.resource(t.resource_id.0)?;
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
            let guest = t.offset + u64::from(y) * stride;
            let host = ((b.y + y) as usize * res.width as usize + b.x as usize) * 4;
            let span = &mut res.pixels[host..host + row];
            if to_host {
                backing.read(mem, guest, span)?;
            } else {
                backing.write(mem, guest, span)?;
            }
        }
        Ok(())
    }

    fn read_rect(&mut self, id: u32, rect: Rect, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let res = self.resource(id)?;
        if !rect.fits_within(res.width, res.height) || res.pixels.is_empty() {
            return Err(ProtocolError::RectOutsideResource);
        }
        out.reserve(rect.width as usize * rect.height as usize * 4);
        for y in 0..rect.height {
            let start = ((rect.y + y) as usize * res.width as usize + rect.x as usize) * 4;
            out.extend_from_slice(&res.pixels[start..start + rect.width as usize * 4]);
        }
        Ok(())
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
