//! The VMM's display, as QEMU keeps it for a vhost-user GPU: a framebuffer
//! per scanout that `SCANOUT` sizes and `UPDATE` rectangles paint, a cursor
//! per scanout, and counters. A caller-supplied [`PixelCheck`] judges every
//! update's pixels as they arrive, which is how loadgen counts
//! `frames_delivered` and `pixels_bad` against any backend.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gpu::protocol::wire::VIRTIO_GPU_MAX_SCANOUTS;
use gpu::protocol::{DisplayMode, Rect};

use super::gpu_wire::{CursorAt, DmabufScanout, ScanoutRect};

/// Largest framebuffer kept per scanout (16384x16384 would be 1 GiB).
const MAX_FRAMEBUFFER_BYTES: u64 = 256 << 20;

/// An update as it arrived: the rectangle and its pixels, row after row,
/// 4 bytes per pixel (x8r8g8b8, i.e. B, G, R, X in memory).
#[derive(Debug, Clone, Copy)]
pub struct UpdateView<'a> {
    pub scanout: u32,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub pixels: &'a [u8],
}

/// Judges an update: returns how many of its pixels are wrong (a checker
/// that only judges whole frames may return 1 for a bad one). Runs on the
/// GPU socket thread for every UPDATE.
pub type PixelCheck = Arc<dyn Fn(&UpdateView<'_>) -> u64 + Send + Sync>;

/// What the display reports to the backend and how it behaves.
#[derive(Clone)]
pub struct DisplayOptions {
    /// Scanouts reported connected by `GET_DISPLAY_INFO` (1..=16).
    pub scanouts: u32,
    /// Their preferred size.
    pub width: u32,
    pub height: u32,
    /// Offer the EDID protocol feature and answer `GET_EDID`.
    pub edid: bool,
    /// Sleep this long before applying each UPDATE (a slow display; the
    /// backend feels it as back-pressure on the socket).
    pub update_delay: Duration,
    /// Checks every UPDATE's pixels.
    pub pixel_check: Option<PixelCheck>,
    /// Keep a framebuffer per scanout that every UPDATE paints (QEMU's
    /// console surface). Off, updates are still bounds-checked and their
    /// pixels checked, but not copied anywhere: a load run checks pixels, it
    /// does not show them, and the copy would eat a core the backend shares.
    pub framebuffers: bool,
}

impl fmt::Debug for DisplayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DisplayOptions")
            .field("scanouts", &self.scanouts)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("edid", &self.edid)
            .field("update_delay", &self.update_delay)
            .field("pixel_check", &self.pixel_check.is_some())
            .field("framebuffers", &self.framebuffers)
            .finish()
    }
}

impl Default for DisplayOptions {
    /// One 1280x800 scanout (what QEMU shows a guest), EDID, no delay.
    fn default() -> Self {
        Self {
            scanouts: 1,
            width: 1280,
            height: 800,
            edid: true,
            update_delay: Duration::ZERO,
            pixel_check: None,
            framebuffers: true,
        }
    }
}

/// Per-scanout state worth reporting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanoutStats {
    /// Size set by the last SCANOUT (0x0: disabled or never set).
    pub width: u32,
    pub height: u32,
    pub updates: u64,
    pub last_update: Option<Instant>,
    /// Last cursor position and whether it is shown.
    pub cursor: Option<(u32, u32, bool)>,
    /// Hot spot of the last cursor image.
    pub cursor_hot: Option<(u32, u32)>,
    /// The DMABUF shown, when the last DMABUF_SCANOUT set one.
    pub dmabuf: Option<DmabufFormat>,
}

/// How a DMABUF scanout's buffer is laid out (as the backend described it;
/// loadgen has no GL to show it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmabufFormat {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub flags: u32,
    pub fourcc: u32,
    pub modifier: Option<u64>,
}

/// Counters for everything the backend sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DisplayStats {
    /// UPDATE messages applied (each one a frame delivered with pixels).
    pub updates: u64,
    /// Pixel bytes received in UPDATEs.
    pub bytes: u64,
    /// Frames that reached the display: UPDATEs plus DMABUF_UPDATEs.
    pub frames_delivered: u64,
    /// Sum of what the pixel check reported.
    pub pixels_bad: u64,
    /// Updates in which the check found anything wrong.
    pub frames_bad: u64,
    pub dmabuf_updates: u64,
    pub dmabuf_scanouts: u64,
    pub scanouts_set: u64,
    pub cursor_updates: u64,
    pub cursor_moves: u64,
    pub display_info_answered: u64,
    pub edid_answered: u64,
    /// GPU protocol features the backend enabled.
    pub protocol_features: u64,
    /// Malformed or impossible messages (bad scanout, out-of-bounds
    /// rectangle, short payload...).
    pub errors: u64,
    pub per_scanout: Vec<ScanoutStats>,
}

/// A scanout's pixels (4 bytes per pixel, rows of `width`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framebuffer {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Framebuffer {
    /// The pixel at (x, y) as a little-endian word, or None outside.
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * 4;
        let b = self.pixels.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Why a display message could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisplayError {
    /// The scanout id is not one the display reports.
    NoSuchScanout(u32),
    /// SCANOUT asked for a framebuffer larger than loadgen keeps.
    TooLarge { width: u32, height: u32 },
    /// An UPDATE before any SCANOUT for that scanout.
    NotSetUp(u32),
    /// The rectangle is not inside the scanout.
    OutOfBounds {
        rect: ScanoutRect,
        width: u32,
        height: u32,
    },
}

impl fmt::Display for DisplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchScanout(s) => write!(f, "scanout {s} does not exist"),
            Self::TooLarge { width, height } => write!(f, "scanout {width}x{height} is too large"),
            Self::NotSetUp(s) => write!(f, "update of scanout {s} before it was set"),
            Self::OutOfBounds {
                rect,
                width,
                height,
            } => write!(
                f,
                "rectangle {}x{}+{}+{} outside scanout {} of {width}x{height}",
                rect.width, rect.height, rect.x, rect.y, rect.scanout_id
            ),
        }
    }
}

/// The display state, shared by the GPU socket thread (which applies) and
/// the caller (which reads).
pub struct VmmDisplay {
    opts: DisplayOptions,
    state: Mutex<State>,
}

struct State {
    stats: DisplayStats,
    framebuffers: Vec<Option<Framebuffer>>,
    /// A scanout whose UPDATEs are applied slowly (a slow display on one
    /// head), switched on and off while running.
    slow: Option<(u32, Duration)>,
}

impl fmt::Debug for VmmDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmmDisplay")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl VmmDisplay {
    /// A display with `opts.scanouts` (clamped to 1..=16) scanouts.
    pub fn new(mut opts: DisplayOptions) -> Self {
        opts.scanouts = opts.scanouts.clamp(1, VIRTIO_GPU_MAX_SCANOUTS as u32);
        let n = opts.scanouts as usize;
        Self {
            opts,
            state: Mutex::new(State {
                stats: DisplayStats {
                    per_scanout: vec![ScanoutStats::default(); n],
                    ..DisplayStats::default()
                },
                framebuffers: vec![None; n],
                slow: None,
            }),
        }
    }

    pub fn options(&self) -> &DisplayOptions {
        &self.opts
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DisplayStats {
        self.lock().stats.clone()
    }

    /// From now on, sleep `delay` before applying each UPDATE of `scanout`
    /// (on top of `update_delay`); `None` ends it.
    pub fn set_slow_scanout(&self, slow: Option<(u32, Duration)>) {
        self.lock().slow = slow;
    }

    /// A copy of a scanout's framebuffer, if it was set (with no pixels
    /// unless `DisplayOptions::framebuffers`).
    pub fn framebuffer(&self, scanout: u32) -> Option<Framebuffer> {
        self.lock()
            .framebuffers
            .get(scanout as usize)
            .and_then(Clone::clone)
    }

    /// The modes `GET_DISPLAY_INFO` reports: every scanout connected at the
    /// configured size, side by side.
    pub(crate) fn modes(&self) -> Vec<DisplayMode> {
        (0..self.opts.scanouts)
            .map(|i| DisplayMode {
                rect: Rect::new(i * self.opts.width, 0, self.opts.width, self.opts.height),
                enabled: true,
                flags: 0,
            })
            .collect()
    }

    /// The EDID for a scanout, or the error code for a bad id.
    pub(crate) fn edid(&self, scanout: u32) -> Result<[u8; 128], u32> {
        if scanout >= self.opts.scanouts {
            return Err(gpu::protocol::wire::VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID);
        }
        Ok(gpu::protocol::edid_for(self.opts.width, self.opts.height))
    }

    pub(crate) fn answered_display_info(&self) {
        self.lock().stats.display_info_answered += 1;
    }

    pub(crate) fn answered_edid(&self) {
        self.lock().stats.edid_answered += 1;
    }

    pub(crate) fn set_protocol_features(&self, features: u64) {
        self.lock().stats.protocol_features = features;
    }

    pub(crate) fn error(&self) {
        self.lock().stats.errors += 1;
    }

    /// SCANOUT: (re)creates the framebuffer, black; 0x0 disables it.
    pub(crate) fn set_scanout(
        &self,
        scanout: u32,
        width: u32,
        height: u32,
    ) -> Result<(), DisplayError> {
        let bytes = u64::from(width) * u64::from(height) * 4;
        if bytes > MAX_FRAMEBUFFER_BYTES {
            return Err(self.fail(DisplayError::TooLarge { width, height }));
        }
        let mut st = self.lock();
        let Some(slot) = st.framebuffers.get_mut(scanout as usize) else {
            drop(st);
            return Err(self.fail(DisplayError::NoSuchScanout(scanout)));
        };
        *slot = (bytes > 0).then(|| Framebuffer {
            width,
            height,
            pixels: if self.opts.framebuffers {
                vec![0; bytes as usize]
            } else {
                Vec::new()
            },
        });
        st.stats.scanouts_set += 1;
        let s = &mut st.stats.per_scanout[scanout as usize];
        s.width = width;
        s.height = height;
        Ok(())
    }

    /// UPDATE: checks the pixels, paints them, counts the frame. The check
    /// runs whether or not the rectangle fits: the pixels were delivered.
    pub(crate) fn update(&self, rect: ScanoutRect, pixels: &[u8]) -> Result<(), DisplayError> {
        let slow = match self.lock().slow {
            Some((s, d)) if s == rect.scanout_id => d,
            _ => Duration::ZERO,
        };
        let delay = self.opts.update_delay + slow;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let bad = self.opts.pixel_check.as_ref().map_or(0, |check| {
            check(&UpdateView {
                scanout: rect.scanout_id,
                x: rect.x,
                y: rect.y,
                width: rect.width,
                height: rect.height,
                pixels,
            })
        });
        let mut st = self.lock();
        st.stats.updates += 1;
        st.stats.frames_delivered += 1;
        st.stats.bytes += pixels.len() as u64;
        st.stats.pixels_bad += bad;
        st.stats.frames_bad += u64::from(bad > 0);
        let painted = paint(&mut st.framebuffers, rect, pixels);
        if let Some(s) = st.stats.per_scanout.get_mut(rect.scanout_id as usize) {
            s.updates += 1;
            s.last_update = Some(Instant::now());
        }
        drop(st);
        painted.map_err(|e| self.fail(e))
    }

    /// DMABUF_SCANOUT: the buffer's layout is kept (the buffer itself is
    /// dropped: no GL); without a descriptor the scanout is disabled.
    pub(crate) fn dmabuf_scanout(&self, scanout: &DmabufScanout) -> Result<(), DisplayError> {
        let rect = scanout.rect;
        self.scanout_exists(rect.scanout_id)?;
        let mut st = self.lock();
        st.stats.dmabuf_scanouts += 1;
        let s = &mut st.stats.per_scanout[rect.scanout_id as usize];
        s.width = rect.width;
        s.height = rect.height;
        s.dmabuf = scanout.fd.as_ref().map(|_| DmabufFormat {
            width: scanout.fd_width,
            height: scanout.fd_height,
            stride: scanout.fd_stride,
            flags: scanout.fd_flags,
            fourcc: scanout.fourcc,
            modifier: scanout.modifier,
        });
        Ok(())
    }

    /// DMABUF_UPDATE: a frame delivered without pixels to check.
    pub(crate) fn dmabuf_update(&self, rect: ScanoutRect) -> Result<(), DisplayError> {
        self.scanout_exists(rect.scanout_id)?;
        let mut st = self.lock();
        st.stats.dmabuf_updates += 1;
        st.stats.frames_delivered += 1;
        let s = &mut st.stats.per_scanout[rect.scanout_id as usize];
        s.updates += 1;
        s.last_update = Some(Instant::now());
        Ok(())
    }

    /// CURSOR_POS / CURSOR_POS_HIDE, and CURSOR_UPDATE with its hot spot.
    pub(crate) fn cursor(
        &self,
        at: CursorAt,
        visible: bool,
        new_image_hot: Option<(u32, u32)>,
    ) -> Result<(), DisplayError> {
        self.scanout_exists(at.scanout_id)?;
        let mut st = self.lock();
        if new_image_hot.is_some() {
            st.stats.cursor_updates += 1;
        } else {
            st.stats.cursor_moves += 1;
        }
        let s = &mut st.stats.per_scanout[at.scanout_id as usize];
        s.cursor = Some((at.x, at.y, visible));
        if new_image_hot.is_some() {
            s.cursor_hot = new_image_hot;
        }
        Ok(())
    }

    fn scanout_exists(&self, scanout: u32) -> Result<(), DisplayError> {
        if scanout < self.opts.scanouts {
            Ok(())
        } else {
            Err(self.fail(DisplayError::NoSuchScanout(scanout)))
        }
    }

    fn fail(&self, e: DisplayError) -> DisplayError {
        self.error();
        e
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Copies an update's rows into its scanout's framebuffer.
fn paint(
    framebuffers: &mut [Option<Framebuffer>],
    rect: ScanoutRect,
    pixels: &[u8],
) -> Result<(), DisplayError> {
    let fb = framebuffers
        .get_mut(rect.scanout_id as usize)
        .ok_or(DisplayError::NoSuchScanout(rect.scanout_id))?
        .as_mut()
        .ok_or(DisplayError::NotSetUp(rect.scanout_id))?;
    let fits = |start: u32, len: u32, max: u32| start.checked_add(len).is_some_and(|e| e <= max);
    if !fits(rect.x, rect.width, fb.width) || !fits(rect.y, rect.height, fb.height) {
        return Err(DisplayError::OutOfBounds {
            rect,
            width: fb.width,
            height: fb.height,
        });
    }
    let row = rect.width as usize * 4;
    if row == 0 || fb.pixels.is_empty() {
        return Ok(());
    }
    let stride = fb.width as usize * 4;
    for (i, src) in pixels.chunks_exact(row).enumerate() {
        let at = (rect.y as usize + i) * stride + rect.x as usize * 4;
        if let Some(dst) = fb.pixels.get_mut(at..at + row) {
            dst.copy_from_slice(src);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(scanout_id: u32, x: u32, y: u32, width: u32, height: u32) -> ScanoutRect {
        ScanoutRect {
            scanout_id,
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn an_update_paints_its_rectangle_and_the_check_counts_bad_pixels() {
        let check: PixelCheck = Arc::new(|u: &UpdateView<'_>| {
            u.pixels
                .chunks_exact(4)
                .filter(|p| *p != [1, 2, 3, 0xff])
                .count() as u64
        });
        let d = VmmDisplay::new(DisplayOptions {
            pixel_check: Some(check),
            ..DisplayOptions::default()
        });
        d.set_scanout(0, 8, 4).unwrap();
        let mut px = [1u8, 2, 3, 0xff].repeat(6);
        d.update(rect(0, 2, 1, 3, 2), &px).unwrap();
        let fb = d.framebuffer(0).unwrap();
        assert_eq!(fb.pixel(2, 1), Some(0xff03_0201));
        assert_eq!(fb.pixel(4, 2), Some(0xff03_0201));
        assert_eq!(fb.pixel(5, 2), Some(0));
        px[0] = 9;
        d.update(rect(0, 0, 0, 3, 2), &px).unwrap();
        let s = d.stats();
        assert_eq!((s.updates, s.frames_delivered, s.bytes), (2, 2, 48));
        assert_eq!((s.pixels_bad, s.frames_bad), (1, 1));
        assert!(s.per_scanout[0].last_update.is_some());
    }

    #[test]
    fn impossible_updates_are_counted_as_errors_not_applied() {
        let d = VmmDisplay::new(DisplayOptions::default());
        assert_eq!(
            d.update(rect(0, 0, 0, 1, 1), &[0; 4]),
            Err(DisplayError::NotSetUp(0))
        );
        d.set_scanout(0, 4, 4).unwrap();
        assert!(matches!(
            d.update(rect(0, 3, 0, 2, 1), &[0; 8]),
            Err(DisplayError::OutOfBounds { .. })
        ));
        assert_eq!(d.set_scanout(5, 4, 4), Err(DisplayError::NoSuchScanout(5)));
        assert!(matches!(
            d.set_scanout(0, 65536, 65536),
            Err(DisplayError::TooLarge { .. })
        ));
        assert_eq!(d.stats().errors, 4);
    }

    #[test]
    fn display_info_reports_every_scanout_connected_side_by_side() {
        let d = VmmDisplay::new(DisplayOptions {
            scanouts: 2,
            width: 640,
            height: 480,
            ..DisplayOptions::default()
        });
        let m = d.modes();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.enabled));
        assert_eq!(m[1].rect, Rect::new(640, 0, 640, 480));
        assert!(d.edid(1).is_ok());
        assert!(d.edid(2).is_err());
    }
}
