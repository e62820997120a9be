//! Fence ordering.
//!
//! With `VIRTIO_GPU_FLAG_INFO_RING_IDX` every (context, ring) is its own
//! timeline: the guest treats "fence N signalled" as "every earlier fence on
//! that timeline signalled", so completions are released in submission order
//! per timeline, and independently across timelines. Without the flag all
//! fences share one global timeline (the Linux driver signals every earlier
//! fence of its one dma-fence context), so completions are released in global
//! submission order. Work itself may finish in any order; only the release
//! (writing the used element) is ordered here.

use std::collections::{HashMap, VecDeque};

/// Which timeline a fenced command is ordered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimelineId {
    Global,
    Ring { ctx: u32, ring: u8 },
}

/// A fenced command's place on its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceTicket {
    timeline: TimelineId,
    seq: u64,
}

impl FenceTicket {
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }
}

struct Pending<T> {
    fence_id: u64,
    /// `Some` once the command's work is done; released when it reaches the
    /// front of the timeline.
    done: Option<T>,
}

/// The fenced commands of one timeline, oldest first.
pub struct FenceTimeline<T> {
    id: TimelineId,
    pending: VecDeque<Pending<T>>,
    /// Sequence number of `pending[0]`.
    front_seq: u64,
    last_released: Option<u64>,
}

impl<T> FenceTimeline<T> {
    pub fn new(id: TimelineId) -> Self {
        FenceTimeline {
            id,
            pending: VecDeque::new(),
            front_seq: 0,
            last_released: None,
        }
    }

    /// Registers a fenced command, in submission order.
    pub fn push(&mut self, fence_id: u64) -> FenceTicket {
        let seq = self.front_seq + self.pending.len() as u64;
        self.pending.push_back(Pending {
            fence_id,
            done: None,
        });
        FenceTicket {
            timeline: self.id,
            seq,
        }
    }

    /// Marks a command's work done and appends to `released`, in order,
    /// every completion that may now be given to the guest. A ticket of
    /// another timeline, or one already signalled, is ignored (returns false).
    pub fn signal(&mut self, ticket: FenceTicket, value: T, released: &mut Vec<T>) -> bool {
        if ticket.timeline != self.id || ticket.seq < self.front_seq {
            return false;
        }
        let Some(slot) = self.pending.get_mut((ticket.seq - self.front_seq) as usize) else {
            return false;
        };
        if slot.done.is_some() {
            return false;
        }
        slot.done = Some(value);
        while let Some(front) = self.pending.front_mut() {
            let Some(v) = front.done.take() else { break };
            self.last_released = Some(front.fence_id);
            released.push(v);
            self.pending.pop_front();
            self.front_seq += 1;
        }
        true
    }

    /// Commands registered and not yet released.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The fence id most recently released to the guest.
    pub fn last_released(&self) -> Option<u64> {
        self.last_released
    }
}

/// Every timeline of a device. The caller decides which ids may exist (the
/// global one, and rings of live contexts: `device::intake`): a timeline is
/// created by the first [`push`](Self::push) on it, and once its context is
/// destroyed ([`retire_context`](Self::retire_context)) it is dropped as
/// soon as it holds no pending fence. A reset drops them all (a new value).
pub struct FenceTimelines<T> {
    timelines: HashMap<TimelineId, Entry<T>>,
}

struct Entry<T> {
    timeline: FenceTimeline<T>,
    /// Its context is gone: dropped once empty.
    retired: bool,
}

impl<T> Default for FenceTimelines<T> {
    fn default() -> Self {
        FenceTimelines {
            timelines: HashMap::new(),
        }
    }
}

impl<T> FenceTimelines<T> {
    /// Registers a fenced command on `id`, creating the timeline if needed.
    /// Only for an id that may exist: its context is live (again).
    pub fn push(&mut self, id: TimelineId, fence_id: u64) -> FenceTicket {
        let e = self.timelines.entry(id).or_insert_with(|| Entry {
            timeline: FenceTimeline::new(id),
            retired: false,
        });
        e.retired = false;
        e.timeline.push(fence_id)
    }

    /// Registers a fenced command on `id` only if that timeline still
    /// exists (a destroyed context's, draining): a refused command is then
    /// released behind the fences before it. Creates nothing.
    pub fn push_existing(&mut self, id: TimelineId, fence_id: u64) -> Option<FenceTicket> {
        self.timelines
            .get_mut(&id)
            .map(|e| e.timeline.push(fence_id))
    }

    pub fn signal(&mut self, ticket: FenceTicket, value: T, released: &mut Vec<T>) -> bool {
        let id = ticket.timeline;
        let Some(e) = self.timelines.get_mut(&id) else {
            return false;
        };
        let signalled = e.timeline.signal(ticket, value, released);
        if e.retired && e.timeline.is_empty() {
            self.timelines.remove(&id);
            crate::sparse::shrink_sparse(&mut self.timelines);
        }
        signalled
    }

    pub fn get(&self, id: TimelineId) -> Option<&FenceTimeline<T>> {
        self.timelines.get(&id).map(|e| &e.timeline)
    }

    /// A context was destroyed: its empty timelines go now, the others
    /// once their pending fences are released.
    pub fn retire_context(&mut self, ctx: u32) {
        self.timelines.retain(|id, e| {
            if !matches!(id, TimelineId::Ring { ctx: c, .. } if *c == ctx) {
                return true;
            }
            e.retired = true;
            !e.timeline.is_empty()
        });
        crate::sparse::shrink_sparse(&mut self.timelines);
    }

    /// Fenced commands not yet released, over all timelines.
    pub fn pending(&self) -> usize {
        self.timelines.values().map(|e| e.timeline.len()).sum()
    }

    /// Timelines that exist.
    pub fn count(&self) -> usize {
        self.timelines.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_released_in_submission_order_per_timeline() {
        let mut t = FenceTimeline::new(TimelineId::Global);
        let a = t.push(1);
        let b = t.push(2);
        let c = t.push(3);
        let mut out = Vec::new();
        assert!(t.signal(c, "c", &mut out));
        assert!(t.signal(b, "b", &mut out));
        assert!(out.is_empty(), "nothing may pass fence 1");
        assert!(t.signal(a, "a", &mut out));
        assert_eq!(out, vec!["a", "b", "c"]);
        assert_eq!(t.last_released(), Some(3));
        assert!(t.is_empty());
    }

    #[test]
    fn a_stalled_ring_does_not_hold_back_another_ring() {
        let mut ts = FenceTimelines::default();
        let r0 = TimelineId::Ring { ctx: 1, ring: 0 };
        let r1 = TimelineId::Ring { ctx: 1, ring: 1 };
        let _stalled = ts.push(r0, 10);
        let other = ts.push(r1, 11);
        let mut out = Vec::new();
        assert!(ts.signal(other, 11u64, &mut out));
        assert_eq!(out, vec![11]);
        assert_eq!(ts.pending(), 1);
    }

    #[test]
    fn signalling_twice_or_on_the_wrong_timeline_is_ignored() {
        let mut ts = FenceTimelines::default();
        let g = ts.push(TimelineId::Global, 1);
        let mut out = Vec::new();
        assert!(ts.signal(g, 1, &mut out));
        assert!(!ts.signal(g, 1, &mut out));
        let mut other = FenceTimeline::new(TimelineId::Ring { ctx: 2, ring: 0 });
        assert!(!other.signal(g, 1, &mut out));
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn retiring_a_context_keeps_timelines_with_pending_fences() {
        let mut ts = FenceTimelines::default();
        let busy = TimelineId::Ring { ctx: 3, ring: 0 };
        let idle = TimelineId::Ring { ctx: 3, ring: 1 };
        ts.push(busy, 1);
        let t = ts.push(idle, 2);
        ts.signal(t, (), &mut Vec::new());
        ts.retire_context(3);
        assert!(ts.get(busy).is_some());
        assert!(ts.get(idle).is_none());
    }

    #[test]
    fn a_retired_timeline_is_dropped_once_its_last_fence_is_released() {
        let mut ts = FenceTimelines::default();
        let ring = TimelineId::Ring { ctx: 4, ring: 2 };
        let a = ts.push(ring, 1);
        ts.retire_context(4);
        assert_eq!(ts.count(), 1, "still draining");
        // A refused command of the dead context waits behind fence 1...
        let b = ts.push_existing(ring, 2).unwrap();
        let mut out = Vec::new();
        ts.signal(b, 2, &mut out);
        assert!(out.is_empty());
        ts.signal(a, 1, &mut out);
        assert_eq!(out, vec![1, 2]);
        // ...and the drained timeline is gone.
        assert_eq!(ts.count(), 0);
        assert!(ts.push_existing(ring, 3).is_none());
    }

    #[test]
    fn push_existing_creates_nothing() {
        let mut ts: FenceTimelines<()> = FenceTimelines::default();
        for ctx in 0..1000 {
            assert!(ts
                .push_existing(TimelineId::Ring { ctx, ring: 0 }, 1)
                .is_none());
        }
        assert_eq!(ts.count(), 0);
    }

    #[test]
    fn a_context_created_again_keeps_its_draining_timeline() {
        let mut ts = FenceTimelines::default();
        let ring = TimelineId::Ring { ctx: 5, ring: 0 };
        let a = ts.push(ring, 1);
        ts.retire_context(5);
        // The id is live again before the old fence is released.
        let b = ts.push(ring, 2);
        let mut out = Vec::new();
        ts.signal(a, 1, &mut out);
        ts.signal(b, 2, &mut out);
        assert_eq!(out, vec![1, 2]);
        assert_eq!(ts.count(), 1, "a live context's timeline stays");
    }
}
