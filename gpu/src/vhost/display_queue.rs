//! What waits to be sent on the QEMU GPU socket, merged so that a slow VMM
//! costs memory bounded by a few frames and never blocks the guest.
//!
//! - Requests (protocol features, display info, EDID) go first, in order.
//!   Their senders bound them: one display fetch at a time, each request
//!   awaiting its reply before the next (a few messages at most).
//! - Cursor messages go next: an unsent move is replaced by a newer one; a
//!   new image or hide replaces everything unsent for that scanout; one
//!   for a scanout the device does not have is dropped. At most two per
//!   scanout wait.
//! - Each scanout has its own queue, served round robin: an `UPDATE` whose
//!   rectangle covers an unsent one replaces it (latest pixels win); a new
//!   `SCANOUT` replaces everything unsent of that scanout (an older
//!   `SCANOUT` the VMM never saw, and the updates of the modes it
//!   replaces), so a queue is at most one `SCANOUT`, first, then updates
//!   of that mode. If a scanout still piles up more than
//!   [`MAX_PENDING_BYTES`] of pixels or [`MAX_PENDING_UPDATES`] updates,
//!   its oldest updates are dropped and counted.
//!
//! Every kind is bounded, so a VMM that stops reading costs at most a few
//! frames per scanout, whatever the guest sends.
//! - Pixel buffers come back once sent, replaced or dropped, and are handed
//!   out again for the next flush ([`Outbox::buffer`]): at 60 fps of full
//!   frames a fresh allocation per flush costs page faults on every frame.

use std::collections::VecDeque;

use crate::device::CursorEvent;
use crate::protocol::Rect;

/// Unsent pixel bytes one scanout may hold (four 4K frames).
pub const MAX_PENDING_BYTES: usize = 4 * 3840 * 2160 * 4;
/// Unsent updates one scanout may hold (rectangles none of which covers
/// another, after a `SCANOUT`).
pub const MAX_PENDING_UPDATES: usize = 16;
/// Unsent updates of one scanout from which the next flush to it sends the
/// whole scanout (see `DisplaySink::backlogged`).
pub const BACKLOG_UPDATES: usize = 3;
/// Bytes of spare pixel buffers kept for reuse.
pub const MAX_SPARE_BYTES: usize = 64 << 20;

/// A message for the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A request or notification with its encoded payload.
    Request {
        code: u32,
        payload: Vec<u8>,
    },
    Scanout {
        scanout: u32,
        width: u32,
        height: u32,
    },
    Update {
        scanout: u32,
        rect: Rect,
        pixels: Vec<u8>,
    },
    Cursor(CursorEvent),
}

/// What a push did to the queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Unsent messages a newer one made pointless.
    pub replaced: u64,
    /// Of those, `UPDATE`s (frames superseded before the VMM read them).
    pub updates_replaced: u64,
    /// Unsent messages dropped: updates beyond a scanout's limits, cursor
    /// events for a scanout the device does not have.
    pub dropped: u64,
}

#[derive(Debug, Default)]
pub struct Outbox {
    control: VecDeque<Outgoing>,
    cursor: VecDeque<CursorEvent>,
    scanouts: Vec<VecDeque<Outgoing>>,
    pending_bytes: Vec<usize>,
    next_scanout: usize,
    /// Pixel buffers to hand out again.
    spare: Vec<Vec<u8>>,
}

fn covers(outer: Rect, inner: Rect) -> bool {
    match (outer.end(), inner.end()) {
        (Some((or, ob)), Some((ir, ib))) => {
            outer.x <= inner.x && outer.y <= inner.y && or >= ir && ob >= ib
        }
        _ => false,
    }
}

fn cursor_scanout(e: &CursorEvent) -> u32 {
    match e {
        CursorEvent::Update { scanout, .. } | CursorEvent::Move { scanout, .. } => *scanout,
    }
}

impl Outbox {
    pub fn new(num_scanouts: u32) -> Outbox {
        let n = num_scanouts.max(1) as usize;
        Outbox {
            scanouts: (0..n).map(|_| VecDeque::new()).collect(),
            pending_bytes: vec![0; n],
            ..Outbox::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.control.is_empty()
            && self.cursor.is_empty()
            && self.scanouts.iter().all(|q| q.is_empty())
    }

    pub fn clear(&mut self) {
        self.control.clear();
        self.cursor.clear();
        self.scanouts.iter_mut().for_each(VecDeque::clear);
        self.pending_bytes.iter_mut().for_each(|b| *b = 0);
        self.spare.clear();
    }

    pub fn push_request(&mut self, code: u32, payload: Vec<u8>) {
        self.control.push_back(Outgoing::Request { code, payload });
    }

    /// A new mode (`width` 0: disabled). It replaces everything unsent of
    /// this scanout: a `SCANOUT` the VMM has not read yet would only make
    /// it build a surface this one replaces, and updates of an older mode
    /// would land on a surface about to be replaced. The queue is then
    /// this `SCANOUT` alone, so the updates pushed after it follow it.
    pub fn push_scanout(&mut self, scanout: u32, width: u32, height: u32) -> Merged {
        let Some(q) = self.scanouts.get_mut(scanout as usize) else {
            return Merged::default();
        };
        let mut merged = Merged::default();
        for m in q.drain(..) {
            merged.replaced += 1;
            if let Outgoing::Update { pixels, .. } = m {
                merged.updates_replaced += 1;
                self.spare.push(pixels);
            }
        }
        self.pending_bytes[scanout as usize] = 0;
        q.push_back(Outgoing::Scanout {
            scanout,
            width,
            height,
        });
        self.trim_spare();
        merged
    }

    /// Unsent messages of every kind (for tests and metrics).
    pub fn len(&self) -> usize {
        self.control.len()
            + self.cursor.len()
            + self.scanouts.iter().map(VecDeque::len).sum::<usize>()
    }

    /// New pixels for `rect`: unsent updates it covers (since the last
    /// mode change) are replaced.
    pub fn push_update(&mut self, scanout: u32, rect: Rect, pixels: Vec<u8>) -> Merged {
        let i = scanout as usize;
        let Some(q) = self.scanouts.get_mut(i) else {
            return Merged::default();
        };
        let mut merged = Merged::default();
        // Only updates after the last SCANOUT may go: an older one belongs
        // to a surface that SCANOUT replaces anyway.
        let first = q
            .iter()
            .rposition(|m| matches!(m, Outgoing::Scanout { .. }))
            .map_or(0, |p| p + 1);
        let mut k = first;
        while k < q.len() {
            let covered = matches!(&q[k], Outgoing::Update { rect: r, .. } if covers(rect, *r));
            if covered {
                if let Some(Outgoing::Update { pixels, .. }) = q.remove(k) {
                    self.pending_bytes[i] -= pixels.len();
                    self.spare.push(pixels);
                }
                merged.replaced += 1;
                merged.updates_replaced += 1;
            } else {
                k += 1;
            }
        }
        self.pending_bytes[i] += pixels.len();
        q.push_back(Outgoing::Update {
            scanout,
            rect,
            pixels,
        });
        let too_many = |q: &VecDeque<Outgoing>, bytes: usize| {
            bytes > MAX_PENDING_BYTES
                || q.iter()
                    .filter(|m| matches!(m, Outgoing::Update { .. }))
                    .nth(MAX_PENDING_UPDATES)
                    .is_some()
        };
        while too_many(q, self.pending_bytes[i]) {
            let Some(oldest) = q.iter().position(|m| matches!(m, Outgoing::Update { .. })) else {
                break;
            };
            if oldest + 1 == q.len() {
                break; // never drop the newest
            }
            if let Some(Outgoing::Update { pixels, .. }) = q.remove(oldest) {
                self.pending_bytes[i] -= pixels.len();
                self.spare.push(pixels);
            }
            merged.dropped += 1;
        }
        merged
    }

    /// True when `scanout` has at least [`BACKLOG_UPDATES`] unsent updates
    /// (rectangles none of which covers another: covered ones are replaced
    /// on arrival).
    pub fn backlogged(&self, scanout: u32) -> bool {
        self.scanouts.get(scanout as usize).is_some_and(|q| {
            q.iter()
                .filter(|m| matches!(m, Outgoing::Update { .. }))
                .nth(BACKLOG_UPDATES - 1)
                .is_some()
        })
    }

    /// An empty buffer for `len` bytes of pixels: a spare one when one is
    /// large enough, else a new one.
    pub fn buffer(&mut self, len: usize) -> Vec<u8> {
        self.trim_spare();
        match self.spare.iter().rposition(|b| b.capacity() >= len) {
            Some(i) => {
                let mut b = self.spare.swap_remove(i);
                b.clear();
                b
            }
            None => Vec::with_capacity(len),
        }
    }

    /// Takes back a buffer whose pixels were sent.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare.push(buf);
        self.trim_spare();
    }

    /// Drops the oldest spare buffers beyond [`MAX_SPARE_BYTES`].
    fn trim_spare(&mut self) {
        let mut bytes: usize = self.spare.iter().map(Vec::capacity).sum();
        while bytes > MAX_SPARE_BYTES && !self.spare.is_empty() {
            bytes -= self.spare.remove(0).capacity();
        }
    }

    pub fn push_cursor(&mut self, event: CursorEvent) -> Merged {
        let s = cursor_scanout(&event);
        if s as usize >= self.scanouts.len() {
            // Nothing to show it on; one queued per id would be unbounded.
            return Merged {
                dropped: 1,
                ..Merged::default()
            };
        }
        let before = self.cursor.len();
        match &event {
            CursorEvent::Move { .. } => self
                .cursor
                .retain(|e| !(matches!(e, CursorEvent::Move { .. }) && cursor_scanout(e) == s)),
            CursorEvent::Update { .. } => self.cursor.retain(|e| cursor_scanout(e) != s),
        }
        let replaced = (before - self.cursor.len()) as u64;
        self.cursor.push_back(event);
        Merged {
            replaced,
            ..Merged::default()
        }
    }

    /// The next message to send: requests, then cursor, then one message
    /// of the next scanout that has any.
    pub fn pop(&mut self) -> Option<Outgoing> {
        if let Some(m) = self.control.pop_front() {
            return Some(m);
        }
        if let Some(e) = self.cursor.pop_front() {
            return Some(Outgoing::Cursor(e));
        }
        let n = self.scanouts.len();
        for step in 0..n {
            let i = (self.next_scanout + step) % n;
            if let Some(m) = self.scanouts[i].pop_front() {
                if let Outgoing::Update { pixels, .. } = &m {
                    self.pending_bytes[i] -= pixels.len();
                }
                self.next_scanout = (i + 1) % n;
                return Some(m);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(o: &mut Outbox, s: u32, r: Rect, fill: u8) -> Merged {
        o.push_update(s, r, vec![fill; (r.width * r.height * 4) as usize])
    }

    fn drain(o: &mut Outbox) -> Vec<Outgoing> {
        std::iter::from_fn(|| o.pop()).collect()
    }

    #[test]
    fn a_covering_update_replaces_the_unsent_one_and_latest_pixels_win() {
        let mut o = Outbox::new(1);
        o.push_scanout(0, 64, 64);
        update(&mut o, 0, Rect::new(0, 0, 8, 8), 1);
        update(&mut o, 0, Rect::new(4, 4, 8, 8), 2); // overlaps, does not cover
        let m = update(&mut o, 0, Rect::new(0, 0, 64, 64), 3);
        assert_eq!(m.replaced, 2);
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 2);
        assert!(matches!(&sent[1], Outgoing::Update { pixels, .. } if pixels[0] == 3));
    }

    #[test]
    fn a_partial_update_is_kept_in_order() {
        let mut o = Outbox::new(1);
        o.push_scanout(0, 64, 64);
        update(&mut o, 0, Rect::new(0, 0, 64, 64), 1);
        update(&mut o, 0, Rect::new(0, 0, 8, 8), 2);
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 3);
        assert!(matches!(&sent[2], Outgoing::Update { pixels, .. } if pixels[0] == 2));
    }

    #[test]
    fn a_new_mode_replaces_the_unsent_mode_and_its_updates() {
        let mut o = Outbox::new(1);
        o.push_scanout(0, 64, 64);
        update(&mut o, 0, Rect::new(0, 0, 8, 8), 1);
        let m = o.push_scanout(0, 32, 32);
        assert_eq!((m.replaced, m.updates_replaced), (2, 1));
        let sent = drain(&mut o);
        assert_eq!(
            sent,
            vec![Outgoing::Scanout {
                scanout: 0,
                width: 32,
                height: 32
            }]
        );
    }

    #[test]
    fn alternating_modes_keep_one_scanout_queued_and_the_last_one_wins() {
        let mut o = Outbox::new(2);
        o.push_scanout(1, 640, 480);
        for i in 0..100_000u32 {
            let (w, h) = if i % 2 == 0 { (64, 64) } else { (32, 16) };
            o.push_scanout(0, w, h);
            assert!(o.len() <= 2, "{} messages queued after {i}", o.len());
        }
        let sent = drain(&mut o);
        let last_of_0: Vec<_> = sent
            .iter()
            .filter(|m| matches!(m, Outgoing::Scanout { scanout: 0, .. }))
            .collect();
        assert_eq!(
            last_of_0,
            vec![&Outgoing::Scanout {
                scanout: 0,
                width: 32,
                height: 16
            }]
        );
        assert_eq!(sent.len(), 2, "scanout 1's own mode is kept");
    }

    #[test]
    fn a_scanout_goes_before_the_updates_that_follow_it() {
        let mut o = Outbox::new(1);
        o.push_scanout(0, 64, 64);
        update(&mut o, 0, Rect::new(0, 0, 8, 8), 1);
        o.push_scanout(0, 32, 32);
        update(&mut o, 0, Rect::new(0, 0, 4, 4), 2);
        update(&mut o, 0, Rect::new(8, 8, 4, 4), 3);
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 3);
        assert!(matches!(
            sent[0],
            Outgoing::Scanout {
                width: 32,
                height: 32,
                ..
            }
        ));
        let fills: Vec<u8> = sent[1..]
            .iter()
            .map(|m| match m {
                Outgoing::Update { pixels, .. } => pixels[0],
                _ => 0,
            })
            .collect();
        assert_eq!(fills, vec![2, 3]);
    }

    #[test]
    fn a_scanout_holds_a_bounded_number_of_small_updates() {
        let mut o = Outbox::new(1);
        o.push_scanout(0, 4096, 1);
        let mut dropped = 0;
        for x in 0..4096u32 {
            // 1x1 updates: none covers another, far below the byte limit.
            dropped += update(&mut o, 0, Rect::new(x, 0, 1, 1), (x % 251) as u8).dropped;
            assert!(o.len() <= 1 + MAX_PENDING_UPDATES, "{} queued", o.len());
        }
        assert_eq!(dropped as usize, 4096 - MAX_PENDING_UPDATES);
        let sent = drain(&mut o);
        assert!(matches!(sent.last(), Some(Outgoing::Update { rect, .. }) if rect.x == 4095));
    }

    #[test]
    fn cursor_events_are_bounded_per_scanout_and_dropped_for_unknown_ones() {
        let mut o = Outbox::new(2);
        let mut dropped = 0;
        for s in 0..100_000u32 {
            dropped += o
                .push_cursor(CursorEvent::Move {
                    scanout: s,
                    x: 1,
                    y: 1,
                })
                .dropped;
        }
        assert_eq!(dropped, 100_000 - 2);
        assert_eq!(o.len(), 2, "one move per scanout the device has");
    }

    #[test]
    fn requests_go_before_cursor_before_pixels_and_scanouts_take_turns() {
        let mut o = Outbox::new(2);
        update(&mut o, 0, Rect::new(0, 0, 1, 1), 0);
        update(&mut o, 0, Rect::new(1, 0, 1, 1), 0);
        update(&mut o, 1, Rect::new(0, 0, 1, 1), 0);
        o.push_cursor(CursorEvent::Move {
            scanout: 0,
            x: 1,
            y: 1,
        });
        o.push_request(3, Vec::new());
        let sent = drain(&mut o);
        assert!(matches!(sent[0], Outgoing::Request { code: 3, .. }));
        assert!(matches!(sent[1], Outgoing::Cursor(_)));
        let order: Vec<u32> = sent[2..]
            .iter()
            .map(|m| match m {
                Outgoing::Update { scanout, .. } => *scanout,
                _ => 99,
            })
            .collect();
        assert_eq!(order, vec![0, 1, 0]);
    }

    #[test]
    fn cursor_moves_collapse_and_a_new_image_supersedes_them() {
        let mut o = Outbox::new(1);
        for x in 0..5 {
            o.push_cursor(CursorEvent::Move {
                scanout: 0,
                x,
                y: 0,
            });
        }
        assert_eq!(drain(&mut o).len(), 1);
        o.push_cursor(CursorEvent::Move {
            scanout: 0,
            x: 1,
            y: 0,
        });
        o.push_cursor(CursorEvent::Update {
            scanout: 0,
            x: 2,
            y: 2,
            hot_x: 0,
            hot_y: 0,
            image: None,
        });
        let sent = drain(&mut o);
        assert_eq!(sent.len(), 1);
        assert!(matches!(
            sent[0],
            Outgoing::Cursor(CursorEvent::Update { .. })
        ));
    }

    #[test]
    fn a_scanout_that_piles_up_drops_its_oldest_updates() {
        let mut o = Outbox::new(1);
        let strip = Rect::new(0, 0, 3840, 2160);
        let mut dropped = 0;
        for i in 0..10u32 {
            // Bands shifted by a row: none covers another.
            let r = Rect::new(0, i, strip.width, strip.height - 10);
            dropped += update(&mut o, 0, r, i as u8).dropped;
        }
        assert!(dropped > 0);
        let sent = drain(&mut o);
        let bytes: usize = sent
            .iter()
            .map(|m| match m {
                Outgoing::Update { pixels, .. } => pixels.len(),
                _ => 0,
            })
            .sum();
        assert!(bytes <= MAX_PENDING_BYTES);
        assert!(matches!(sent.last(), Some(Outgoing::Update { pixels, .. }) if pixels[0] == 9));
        assert!(o.is_empty());
    }

    #[test]
    fn a_scanout_is_backlogged_from_three_unsent_partial_updates_until_a_whole_one() {
        let mut o = Outbox::new(2);
        for i in 0..3u32 {
            assert!(!o.backlogged(0), "after {i}");
            update(&mut o, 0, Rect::new(i * 10, 0, 10, 10), 1);
        }
        assert!(o.backlogged(0));
        assert!(!o.backlogged(1), "another scanout's queue is its own");
        assert!(!o.backlogged(7), "no such scanout");
        // The whole-scanout update the device sends then replaces them all.
        assert_eq!(update(&mut o, 0, Rect::new(0, 0, 640, 480), 2).replaced, 3);
        assert!(!o.backlogged(0));
    }

    #[test]
    fn sent_and_replaced_buffers_are_handed_out_again_up_to_a_limit() {
        let mut o = Outbox::new(1);
        let frame = Rect::new(0, 0, 64, 64);
        let len = 64 * 64 * 4;
        let first = o.buffer(len);
        assert!(first.is_empty() && first.capacity() >= len);
        let (a, b) = (vec![1u8; len], vec![2u8; len]);
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        o.push_update(0, frame, a);
        assert_eq!(o.push_update(0, frame, b).replaced, 1);
        // The replaced buffer comes back first, empty; the sent one after.
        let again = o.buffer(len);
        assert_eq!((again.as_ptr(), again.len()), (pa, 0));
        let Some(Outgoing::Update { pixels, .. }) = o.pop() else {
            panic!("the update was not queued");
        };
        o.recycle(pixels);
        let sent = o.buffer(len);
        assert_eq!(sent.as_ptr(), pb);
        // A buffer too small for the ask is not handed out.
        o.recycle(Vec::with_capacity(16));
        assert!(o.buffer(len).capacity() >= len);
        // Spares beyond the byte limit are freed.
        for _ in 0..(MAX_SPARE_BYTES / len + 8) {
            o.recycle(vec![0; len]);
        }
        assert!(o.spare.iter().map(Vec::capacity).sum::<usize>() <= MAX_SPARE_BYTES);
    }
}
