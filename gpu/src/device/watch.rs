//! What the owner knows about commands in flight: for the stall watchdog
//! (a command older than `--stall-warn-ms` is logged with its context and
//! type: the diagnosis the deadlock analysis had to do by hand) and for the
//! Prometheus metrics (per-context fence latency, queue depth).
//!
//! Nothing here is created for an id the guest merely names: fence latency
//! is kept for live contexts only (from `CTX_CREATE` to `CTX_DESTROY` or a
//! reset) plus context 0, and commands are counted in a fixed array of the
//! known types plus one "unknown" bucket. A scrape stays small whatever the
//! guest sends, and whatever it creates: at most [`CONTEXT_SERIES`] live
//! contexts have a series of their own, the ones created past that share
//! one (`ctx="other"`; the budget lets a guest have 65536 contexts, a
//! megabyte of text per thousand series).

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::protocol::wire::*;

use super::job::QueueKind;

/// Upper bounds (µs) of the fence latency histogram buckets.
const BUCKETS_US: [u64; 12] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000,
];

/// Live contexts with a fence latency series of their own (about 1 KiB of
/// text each); contexts created while this many have one share the
/// `other` series until they are destroyed.
pub const CONTEXT_SERIES: usize = 128;

/// The command types counted one by one; anything else is "unknown".
const COMMAND_TYPES: [u32; 26] = [
    VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
    VIRTIO_GPU_CMD_RESOURCE_UNREF,
    VIRTIO_GPU_CMD_SET_SCANOUT,
    VIRTIO_GPU_CMD_RESOURCE_FLUSH,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
    VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
    VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
    VIRTIO_GPU_CMD_GET_CAPSET_INFO,
    VIRTIO_GPU_CMD_GET_CAPSET,
    VIRTIO_GPU_CMD_GET_EDID,
    VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
    VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
    VIRTIO_GPU_CMD_CTX_CREATE,
    VIRTIO_GPU_CMD_CTX_DESTROY,
    VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
    VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
    VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
    VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
    VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
    VIRTIO_GPU_CMD_SUBMIT_3D,
    VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
    VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
    VIRTIO_GPU_CMD_UPDATE_CURSOR,
    VIRTIO_GPU_CMD_MOVE_CURSOR,
];

/// The counter of a command type: its place in [`COMMAND_TYPES`], or the
/// last one (unknown).
fn type_slot(kind: u32) -> usize {
    COMMAND_TYPES
        .iter()
        .position(|&k| k == kind)
        .unwrap_or(COMMAND_TYPES.len())
}

struct Inflight {
    kind: u32,
    ctx: u32,
    fenced: bool,
    since: Instant,
    warned: bool,
}

/// A per-context fence latency histogram (Prometheus-style cumulative).
#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS_US.len() + 1],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us += us;
        self.count += 1;
    }
}

/// In-flight commands and the metrics derived from them.
pub struct Watch {
    inflight: HashMap<(u8, u16), Inflight>,
    /// Per live context (up to [`CONTEXT_SERIES`]), and context 0 (created
    /// at its first fence).
    fence_latency: HashMap<u32, Histogram>,
    /// Live contexts created while [`CONTEXT_SERIES`] had a series: their
    /// fences go to `other` (each is charged to the guest's budget, which
    /// bounds this set).
    uncounted: HashSet<u32>,
    /// The series of `uncounted`, while there are any.
    other: Option<Histogram>,
    stalls_reported: u64,
    /// Per [`COMMAND_TYPES`] entry, then unknown types.
    by_type: [u64; COMMAND_TYPES.len() + 1],
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            inflight: HashMap::new(),
            fence_latency: HashMap::new(),
            uncounted: HashSet::new(),
            other: None,
            stalls_reported: 0,
            by_type: [0; COMMAND_TYPES.len() + 1],
        }
    }
}

impl Watch {
    pub fn start(&mut self, queue: QueueKind, head: u16, kind: u32, ctx: u32, fenced: bool) {
        self.by_type[type_slot(kind)] += 1;
        self.inflight.insert(
            (queue as u8, head),
            Inflight {
                kind,
                ctx,
                fenced,
                since: Instant::now(),
                warned: false,
            },
        );
    }

    /// The command's used element was written.
    pub fn finish(&mut self, queue: QueueKind, head: u16) {
        let Some(c) = self.inflight.remove(&(queue as u8, head)) else {
            return;
        };
        if c.fenced {
            // Not for a context that does not exist (any more).
            let h = match c.ctx {
                0 => Some(self.fence_latency.entry(0).or_default()),
                ctx if self.uncounted.contains(&ctx) => self.other.as_mut(),
                ctx => self.fence_latency.get_mut(&ctx),
            };
            if let Some(h) = h {
                h.observe(c.since.elapsed());
            }
        }
        if c.warned {
            crate::warn_limited!(
                ctx = c.ctx,
                command = type_name(c.kind),
                waited_ms = c.since.elapsed().as_secs_f64() * 1e3,
                "stalled command completed"
            );
        }
    }

    /// Logs every command older than `threshold` (once each).
    pub fn check(&mut self, threshold: Duration) {
        let now = Instant::now();
        for ((queue, head), c) in &mut self.inflight {
            let age = now.saturating_duration_since(c.since);
            if !c.warned && age >= threshold {
                c.warned = true;
                self.stalls_reported += 1;
                crate::warn_limited!(
                    ctx = c.ctx,
                    command = type_name(c.kind),
                    queue = *queue,
                    head = *head,
                    fenced = c.fenced,
                    age_ms = age.as_secs_f64() * 1e3,
                    "command in flight past the stall threshold"
                );
            }
        }
    }

    /// A context was created: its fence latency is kept from now on.
    pub fn context_created(&mut self, ctx: u32) {
        if ctx == 0 {
            return;
        }
        let own = self.fence_latency.len() - usize::from(self.fence_latency.contains_key(&0));
        if own < CONTEXT_SERIES {
            self.fence_latency.insert(ctx, Histogram::default());
        } else {
            self.uncounted.insert(ctx);
            self.other.get_or_insert_with(Histogram::default);
        }
    }

    /// A context was destroyed: its series goes (`other` once no context
    /// shares it).
    pub fn context_destroyed(&mut self, ctx: u32) {
        if ctx == 0 {
            return;
        }
        self.fence_latency.remove(&ctx);
        if self.uncounted.remove(&ctx) && self.uncounted.is_empty() {
            self.other = None;
        }
        crate::sparse::shrink_sparse(&mut self.fence_latency);
        crate::sparse::shrink_sparse_set(&mut self.uncounted);
    }

    /// Everything in flight is gone, and every context (reset). Context 0's
    /// latency and the counters stay: they are the device's, not the
    /// guest's objects.
    pub fn clear(&mut self) {
        self.inflight.clear();
        self.fence_latency.retain(|&ctx, _| ctx == 0);
        self.uncounted = HashSet::new();
        self.other = None;
    }

    /// Series kept (fence latency histograms: per context, and `other`).
    pub fn series(&self) -> usize {
        self.fence_latency.len() + usize::from(self.other.is_some())
    }

    /// Commands popped from `queue` (or any queue) whose used element is
    /// not written yet.
    pub fn in_flight_on(&self, queue: Option<QueueKind>) -> usize {
        match queue {
            None => self.inflight.len(),
            Some(q) => self.inflight.keys().filter(|(k, _)| *k == q as u8).count(),
        }
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Prometheus text for what this module tracks.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP gpu_reactor_commands_in_flight Commands popped and not yet used."
        );
        let _ = writeln!(out, "# TYPE gpu_reactor_commands_in_flight gauge");
        let _ = writeln!(
            out,
            "gpu_reactor_commands_in_flight {}",
            self.inflight.len()
        );
        let _ = writeln!(out, "# HELP gpu_reactor_stalled_commands_total Commands that stayed in flight past --stall-warn-ms.");
        let _ = writeln!(out, "# TYPE gpu_reactor_stalled_commands_total counter");
        let _ = writeln!(
            out,
            "gpu_reactor_stalled_commands_total {}",
            self.stalls_reported
        );
        let _ = writeln!(
            out,
            "# HELP gpu_reactor_commands_total Commands popped, by type."
        );
        let _ = writeln!(out, "# TYPE gpu_reactor_commands_total counter");
        for (slot, &n) in self.by_type.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let name = COMMAND_TYPES.get(slot).map_or("unknown", |&k| type_name(k));
            let _ = writeln!(out, "gpu_reactor_commands_total{{type=\"{name}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP gpu_reactor_fence_latency_seconds Pop to used-ring release of fenced commands, per context.");
        let _ = writeln!(out, "# TYPE gpu_reactor_fence_latency_seconds histogram");
        let mut ctxs: Vec<_> = self.fence_latency.keys().copied().collect();
        ctxs.sort_unstable();
        for ctx in ctxs {
            render_histogram(out, &ctx.to_string(), &self.fence_latency[&ctx]);
        }
        if let Some(h) = &self.other {
            render_histogram(out, "other", h);
        }
    }
}

/// One `gpu_reactor_fence_latency_seconds` series, labelled `ctx`.
fn render_histogram(out: &mut String, ctx: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (i, b) in BUCKETS_US.iter().enumerate() {
        cumulative += h.counts[i];
        let _ = writeln!(
            out,
            "gpu_reactor_fence_latency_seconds_bucket{{ctx=\"{ctx}\",le=\"{}\"}} {cumulative}",
            *b as f64 / 1e6
        );
    }
    cumulative += h.counts[BUCKETS_US.len()];
    let _ = writeln!(
        out,
        "gpu_reactor_fence_latency_seconds_bucket{{ctx=\"{ctx}\",le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "gpu_reactor_fence_latency_seconds_sum{{ctx=\"{ctx}\"}} {}",
        h.sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "gpu_reactor_fence_latency_seconds_count{{ctx=\"{ctx}\"}} {}",
        h.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_the_threshold_is_reported_once_with_its_context() {
        let mut w = Watch::default();
        w.context_created(7);
        w.start(QueueKind::Control, 3, VIRTIO_GPU_CMD_SUBMIT_3D, 7, true);
        w.check(Duration::from_secs(3600));
        assert_eq!(w.stalls_reported, 0);
        w.check(Duration::ZERO);
        w.check(Duration::ZERO);
        assert_eq!(w.stalls_reported, 1);
        w.finish(QueueKind::Control, 3);
        assert_eq!(w.in_flight(), 0);
        let mut text = String::new();
        w.render(&mut text);
        assert!(
            text.contains("gpu_reactor_stalled_commands_total 1"),
            "{text}"
        );
        assert!(
            text.contains("gpu_reactor_fence_latency_seconds_count{ctx=\"7\"} 1"),
            "{text}"
        );
        assert!(text.contains("le=\"+Inf\"} 1"), "{text}");
    }

    /// A fenced SUBMIT_3D of `ctx` on chain `head`, started and finished.
    fn fenced_submit(w: &mut Watch, head: u16, ctx: u32) {
        w.start(
            QueueKind::Control,
            head,
            VIRTIO_GPU_CMD_SUBMIT_3D,
            ctx,
            true,
        );
        w.finish(QueueKind::Control, head);
    }

    #[test]
    fn fence_latency_is_kept_only_for_live_contexts_and_context_0() {
        let mut w = Watch::default();
        w.context_created(3);
        for (head, ctx) in [(0u16, 0u32), (1, 3), (2, 99), (3, 100)] {
            fenced_submit(&mut w, head, ctx);
        }
        assert_eq!(w.series(), 2, "contexts 0 and 3 only");
        w.context_destroyed(3);
        assert_eq!(w.series(), 1);
        w.context_created(4);
        w.clear();
        assert_eq!(w.series(), 1, "a reset leaves context 0");
    }

    #[test]
    fn contexts_past_the_series_cap_share_one_series_until_destroyed() {
        let mut w = Watch::default();
        let n = CONTEXT_SERIES as u32;
        // Context 0 has its series besides the cap.
        fenced_submit(&mut w, 0, 0);
        for ctx in 1..=n + 1000 {
            w.context_created(ctx);
        }
        assert_eq!(w.series(), 1 + CONTEXT_SERIES + 1, "0, the cap, other");
        for (head, ctx) in [(1u16, 5u32), (2, n + 7), (3, n + 900)] {
            fenced_submit(&mut w, head, ctx);
        }
        let mut text = String::new();
        w.render(&mut text);
        assert!(text.contains("_count{ctx=\"5\"} 1\n"), "{text}");
        assert!(text.contains("_count{ctx=\"other\"} 2\n"), "{text}");
        assert!(!text.contains(&format!("ctx=\"{}\"", n + 7)), "{text}");
        assert!(text.len() < 200 << 10, "{} bytes", text.len());
        // A context with its own series goes: the next one created gets it.
        w.context_destroyed(5);
        w.context_created(5_000_000);
        let mut text = String::new();
        w.render(&mut text);
        assert!(text.contains("ctx=\"5000000\""), "{text}");
        // `other` goes with the last context that shares it.
        for ctx in n + 1..=n + 1000 {
            w.context_destroyed(ctx);
        }
        assert_eq!(w.series(), 1 + CONTEXT_SERIES);
        w.context_created(6_000_000);
        assert_eq!(w.series(), 1 + CONTEXT_SERIES + 1);
        w.clear();
        assert_eq!(w.series(), 1, "a reset leaves context 0");
    }

    #[test]
    fn unknown_command_types_share_one_counter() {
        let mut w = Watch::default();
        for i in 0..1000u32 {
            w.start(QueueKind::Control, 0, 0x10000 + i, 0, false);
            w.finish(QueueKind::Control, 0);
        }
        w.start(
            QueueKind::Control,
            0,
            VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
            0,
            false,
        );
        let mut text = String::new();
        w.render(&mut text);
        assert!(
            text.contains("gpu_reactor_commands_total{type=\"unknown\"} 1000"),
            "{text}"
        );
        assert!(
            text.contains("gpu_reactor_commands_total{type=\"GET_DISPLAY_INFO\"} 1"),
            "{text}"
        );
        assert_eq!(text.matches("gpu_reactor_commands_total{").count(), 2);
    }
}
