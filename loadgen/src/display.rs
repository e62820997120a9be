//! The display side of the in-process (`direct`) backend: a `DisplaySink`
//! that checks every update's pixels as the VMM's display would show them.
//! The check runs on its own thread, as a VMM's display is its own process:
//! the device's flush hands the pixels over and moves on.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use gpu::device::{CursorEvent, DisplaySink, ScanoutMode};
use gpu::protocol::Rect;

use crate::pixels;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DisplayStats {
    pub frames_delivered: u64,
    pub pixels_bad: u64,
    pub bytes: u64,
    pub cursor_events: u64,
}

/// One update on its way to the checker: (scanout, rect, pixels).
type Update = (u32, Rect, Vec<u8>);

/// Checks updates: scanout `i` shows desktop `i`.
pub struct CheckingDisplay {
    stats: Arc<Mutex<DisplayStats>>,
    tx: Mutex<Option<mpsc::Sender<Update>>>,
    checker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Default for CheckingDisplay {
    fn default() -> Self {
        let stats = Arc::new(Mutex::new(DisplayStats::default()));
        let (tx, rx) = mpsc::channel::<Update>();
        let st = stats.clone();
        let checker = std::thread::Builder::new()
            .name("vmm-display".into())
            .spawn(move || {
                for (scanout, rect, px) in rx {
                    let ok = px.len() == rect.width as usize * rect.height as usize * 4
                        && pixels::check(scanout as usize, &px).is_some();
                    if let Ok(mut s) = st.lock() {
                        s.bytes += px.len() as u64;
                        if ok {
                            s.frames_delivered += 1;
                        } else {
                            s.pixels_bad += 1;
                        }
                    }
                }
            })
            .ok();
        CheckingDisplay {
            stats,
            tx: Mutex::new(Some(tx)),
            checker: Mutex::new(checker),
        }
    }
}

impl CheckingDisplay {
    /// Counters so far; `finish` first for the final ones.
    pub fn stats(&self) -> DisplayStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Waits until every update handed over so far has been checked.
    pub fn finish(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.checker.lock().ok().and_then(|mut c| c.take()) {
            let _ = t.join();
        }
    }
}

impl DisplaySink for CheckingDisplay {
    fn scanout(&self, _scanout: u32, _mode: Option<ScanoutMode>) {}

    fn update(&self, scanout: u32, rect: Rect, pixels: Vec<u8>) {
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                let _ = tx.send((scanout, rect, pixels));
            }
        }
    }

    fn cursor(&self, _event: CursorEvent) {
        if let Ok(mut s) = self.stats.lock() {
            s.cursor_events += 1;
        }
    }
}
