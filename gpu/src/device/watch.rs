//! What the owner knows about commands in flight: for the stall watchdog
//! (a command older than `--stall-warn-ms` is logged with its context and
//! type: the diagnosis the deadlock analysis had to do by hand) and for the
//! Prometheus metrics (per-context fence latency, queue depth).

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::protocol::wire::type_name;

use super::job::QueueKind;

/// Upper bounds (µs) of the fence latency histogram buckets.
const BUCKETS_US: [u64; 12] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000,
];

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
#[derive(Default)]
pub struct Watch {
    inflight: HashMap<(u8, u16), Inflight>,
    fence_latency: HashMap<u32, Histogram>,
    stalls_reported: u64,
    by_type: HashMap<u32, u64>,
}

impl Watch {
    pub fn start(&mut self, queue: QueueKind, head: u16, kind: u32, ctx: u32, fenced: bool) {
        *self.by_type.entry(kind).or_default() += 1;
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
            self.fence_latency
                .entry(c.ctx)
                .or_default()
                .observe(c.since.elapsed());
        }
        if c.warned {
            tracing::warn!(
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
                tracing::warn!(
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

    /// Everything in flight is gone (reset).
    pub fn clear(&mut self) {
        self.inflight.clear();
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
        let mut kinds: Vec<_> = self.by_type.iter().collect();
        kinds.sort_unstable();
        for (k, n) in kinds {
            let _ = writeln!(
                out,
                "gpu_reactor_commands_total{{type=\"{}\"}} {n}",
                type_name(*k)
            );
        }
        let _ = writeln!(out, "# HELP gpu_reactor_fence_latency_seconds Pop to used-ring release of fenced commands, per context.");
        let _ = writeln!(out, "# TYPE gpu_reactor_fence_latency_seconds histogram");
        let mut ctxs: Vec<_> = self.fence_latency.keys().copied().collect();
        ctxs.sort_unstable();
        for ctx in ctxs {
            let h = &self.fence_latency[&ctx];
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
            let _ = writeln!(out, "gpu_reactor_fence_latency_seconds_bucket{{ctx=\"{ctx}\",le=\"+Inf\"}} {cumulative}");
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::VIRTIO_GPU_CMD_SUBMIT_3D;

    #[test]
    fn a_command_past_the_threshold_is_reported_once_with_its_context() {
        let mut w = Watch::default();
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
}
