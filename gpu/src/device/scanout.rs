//! Scanouts and the cursor: the display state the guest sets up, and the
//! [`DisplaySink`] that hands pixels to whoever shows them (the VMM over the
//! QEMU GPU socket, a test, or nothing).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::protocol::{DisplayMode, Format, Rect};

/// What a scanout shows after `SET_SCANOUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanoutMode {
    pub width: u32,
    pub height: u32,
    pub format: Format,
}

/// A new cursor image (64x64, 4 bytes per pixel) or a move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorEvent {
    Update {
        scanout: u32,
        x: i32,
        y: i32,
        hot_x: u32,
        hot_y: u32,
        /// `None` hides the cursor.
        image: Option<Vec<u8>>,
    },
    Move {
        scanout: u32,
        x: i32,
        y: i32,
    },
}

/// Receives what the guest displays. Calls never block: an implementation
/// queues, merges or drops, and reports nothing back.
pub trait DisplaySink: Send + Sync {
    /// A scanout was set up (`Some`) or disabled (`None`).
    fn scanout(&self, scanout: u32, mode: Option<ScanoutMode>);
    /// New pixels of `rect` (scanout coordinates), rows packed, 4 bytes per
    /// pixel. A flush fence completes once this returned.
    fn update(&self, scanout: u32, rect: Rect, pixels: Vec<u8>);
    /// An empty buffer with room for `len` bytes, to fill and pass to
    /// `update`: a sink that recycles the buffers it has sent saves the
    /// allocation (and its page faults) on every flush.
    fn pixel_buffer(&self, len: usize) -> Vec<u8> {
        Vec::with_capacity(len)
    }
    fn cursor(&self, event: CursorEvent);
    /// True when `scanout`'s unsent updates pile up (the VMM shows it more
    /// slowly than the guest flushes): the next flush to it then sends the
    /// whole scanout, which replaces them all. Memory stays bounded and no
    /// damage is lost.
    fn backlogged(&self, _scanout: u32) -> bool {
        false
    }
    /// The displays as the VMM last described them (its GET_DISPLAY_INFO),
    /// if it did: answered from a cache, never by asking the VMM now.
    fn vmm_modes(&self) -> Option<Vec<DisplayMode>> {
        None
    }
    /// The VMM's EDID for a scanout, if it sent one (cached likewise).
    fn vmm_edid(&self, _scanout: u32) -> Option<Vec<u8>> {
        None
    }
    /// The guest asked for its display configuration (and was answered from
    /// the cache): a sink that caches the VMM's view fetches it again in the
    /// background, so a change is noticed (and announced to the guest with
    /// `VIRTIO_GPU_EVENT_DISPLAY`) without the guest ever waiting.
    fn display_info_asked(&self) {}
    /// While the VMM's view is being fetched for the first time on a new
    /// display link (the VMM just connected its display): a future that
    /// resolves once that fetch is over or the link is gone. The guest's
    /// display queries arriving meanwhile are answered after it (bounded by
    /// the device), not from a view that is not there yet.
    fn vmm_view_pending(&self) -> Option<VmmViewWait> {
        None
    }
}

/// See [`DisplaySink::vmm_view_pending`].
pub type VmmViewWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Shows nothing.
#[derive(Debug, Default)]
pub struct NullDisplay;

impl DisplaySink for NullDisplay {
    fn scanout(&self, _scanout: u32, _mode: Option<ScanoutMode>) {}
    fn update(&self, _scanout: u32, _rect: Rect, _pixels: Vec<u8>) {}
    fn cursor(&self, _event: CursorEvent) {}
}

/// Keeps a framebuffer per scanout (for tests and debug dumps).
#[derive(Debug, Default)]
pub struct RecordingDisplay {
    state: Mutex<Recorded>,
}

#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub modes: HashMap<u32, ScanoutMode>,
    /// Packed 4-byte pixels per scanout, `width * height * 4` bytes.
    pub frames: HashMap<u32, Vec<u8>>,
    pub updates: u64,
    pub cursor: Vec<CursorEvent>,
}

impl RecordingDisplay {
    pub fn snapshot(&self) -> Recorded {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl DisplaySink for RecordingDisplay {
    fn scanout(&self, scanout: u32, mode: Option<ScanoutMode>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match mode {
            Some(m) => {
                st.modes.insert(scanout, m);
                st.frames
                    .insert(scanout, vec![0; m.width as usize * m.height as usize * 4]);
            }
            None => {
                st.modes.remove(&scanout);
                st.frames.remove(&scanout);
            }
        }
    }

    fn update(&self, scanout: u32, rect: Rect, pixels: Vec<u8>) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.updates += 1;
        let Some(mode) = st.modes.get(&scanout).copied() else {
            return;
        };
        let Some(frame) = st.frames.get_mut(&scanout) else {
            return;
        };
        if !rect.fits_within(mode.width, mode.height) {
            return;
        }
        let row = rect.width as usize * 4;
        for y in 0..rect.height as usize {
            let dst = ((rect.y as usize + y) * mode.width as usize + rect.x as usize) * 4;
            let src = y * row;
            if let (Some(d), Some(s)) = (frame.get_mut(dst..dst + row), pixels.get(src..src + row))
            {
                d.copy_from_slice(s);
            }
        }
    }

    fn cursor(&self, event: CursorEvent) {
        if let Ok(mut st) = self.state.lock() {
            st.cursor.push(event);
        }
    }
}

/// One scanout's binding, in resource coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub resource: u32,
    /// The part of the resource shown; its size is the scanout's mode.
    pub rect: Rect,
    /// `SET_SCANOUT_BLOB`: where the image lies in the blob.
    pub blob: Option<BlobPlane>,
}

/// A blob scanout's image (plane 0, 4 bytes per pixel): pixel (x, y) is at
/// byte `offset + y * stride + x * 4` of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobPlane {
    pub offset: u64,
    pub stride: u32,
}

/// A piece of a flush: `src` of the resource goes to `dst` on `scanout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushTarget {
    pub scanout: u32,
    pub src: Rect,
    pub dst: Rect,
    /// Set when the scanout shows a blob: read the pixels there.
    pub blob: Option<BlobPlane>,
}

/// The scanout table, kept by the display (queue owner) shard.
#[derive(Debug, Clone)]
pub struct Scanouts {
    modes: Vec<DisplayMode>,
    bindings: Vec<Option<Binding>>,
}

impl Scanouts {
    /// `count` connected heads of `width` x `height`.
    pub fn new(count: u32, width: u32, height: u32) -> Self {
        let count = count.clamp(1, crate::protocol::wire::VIRTIO_GPU_MAX_SCANOUTS as u32) as usize;
        Scanouts {
            modes: (0..count)
                .map(|_| DisplayMode {
                    rect: Rect::new(0, 0, width, height),
                    enabled: true,
                    flags: 0,
                })
                .collect(),
            bindings: vec![None; count],
        }
    }

    pub fn count(&self) -> u32 {
        self.modes.len() as u32
    }

    pub fn modes(&self) -> &[DisplayMode] {
        &self.modes
    }

    pub fn mode(&self, scanout: u32) -> Option<&DisplayMode> {
        self.modes.get(scanout as usize)
    }

    pub fn bind(&mut self, scanout: u32, binding: Option<Binding>) {
        if let Some(b) = self.bindings.get_mut(scanout as usize) {
            *b = binding;
        }
    }

    /// Unbinds every scanout showing `resource`; returns them.
    pub fn unbind_resource(&mut self, resource: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, b) in self.bindings.iter_mut().enumerate() {
            if matches!(b, Some(x) if x.resource == resource) {
                *b = None;
                out.push(i as u32);
            }
        }
        out
    }

    /// Where a flush of `rect` of `resource` lands. A scanout for which
    /// `whole(scanout)` is true gets all of its rectangle.
    pub fn flush_targets(
        &self,
        resource: u32,
        rect: Rect,
        whole: impl Fn(u32) -> bool,
    ) -> Vec<FlushTarget> {
        let mut out = Vec::new();
        for (i, b) in self.bindings.iter().enumerate() {
            let Some(b) = b.filter(|b| b.resource == resource) else {
                continue;
            };
            let Some(src) = intersect(rect, b.rect) else {
                continue;
            };
            let src = if whole(i as u32) { b.rect } else { src };
            out.push(FlushTarget {
                scanout: i as u32,
                src,
                dst: Rect::new(src.x - b.rect.x, src.y - b.rect.y, src.width, src.height),
                blob: b.blob,
            });
        }
        out
    }
}

fn intersect(a: Rect, b: Rect) -> Option<Rect> {
    let (ar, ab) = a.end()?;
    let (br, bb) = b.end()?;
    let x = a.x.max(b.x);
    let y = a.y.max(b.y);
    let r = ar.min(br);
    let bt = ab.min(bb);
    (x < r && y < bt).then(|| Rect::new(x, y, r - x, bt - y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_lands_on_every_scanout_showing_the_resource_clipped() {
        let mut s = Scanouts::new(2, 100, 100);
        s.bind(
            0,
            Some(Binding {
                resource: 7,
                rect: Rect::new(0, 0, 100, 100),
                blob: None,
            }),
        );
        s.bind(
            1,
            Some(Binding {
                resource: 7,
                rect: Rect::new(100, 0, 100, 100),
                blob: None,
            }),
        );
        let t = s.flush_targets(7, Rect::new(90, 10, 20, 5), |_| false);
        assert_eq!(
            t,
            vec![
                FlushTarget {
                    scanout: 0,
                    src: Rect::new(90, 10, 10, 5),
                    dst: Rect::new(90, 10, 10, 5),
                    blob: None,
                },
                FlushTarget {
                    scanout: 1,
                    src: Rect::new(100, 10, 10, 5),
                    dst: Rect::new(0, 10, 10, 5),
                    blob: None,
                },
            ]
        );
        // A backlogged scanout gets all of its rectangle; the other only
        // the damage.
        let t = s.flush_targets(7, Rect::new(90, 10, 20, 5), |s| s == 1);
        assert_eq!(
            (t[0].src, t[1].src, t[1].dst),
            (
                Rect::new(90, 10, 10, 5),
                Rect::new(100, 0, 100, 100),
                Rect::new(0, 0, 100, 100)
            )
        );
        // Only scanouts the flush touches at all.
        assert_eq!(
            s.flush_targets(7, Rect::new(0, 0, 10, 10), |_| true).len(),
            1
        );
        assert!(s
            .flush_targets(8, Rect::new(0, 0, 10, 10), |_| false)
            .is_empty());
        assert_eq!(s.unbind_resource(7), vec![0, 1]);
        assert!(s
            .flush_targets(7, Rect::new(0, 0, 10, 10), |_| false)
            .is_empty());
    }
}
