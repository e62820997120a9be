//! What a run measured, and the JSON object `--json` writes (the shape is
//! the contract in DESIGN.md, section loadgen).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000, 3) {
        Ok(h) => h,
        // The bounds above are valid constants; this arm is unreachable.
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable!()),
    }
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 60_000_000);
    // Bounds are set to hold every clamped value.
    let _ = h.record(us);
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        p50: h.value_at_quantile(0.50),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Isolation {
    pub others_p99_us_before: u64,
    pub others_p99_us_during: u64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DesktopReport {
    pub desktop: usize,
    pub stressed: bool,
    pub fences: u64,
    pub frames: u64,
    pub max_stall_ms: f64,
    pub stalls_over_50ms: u64,
    /// Frames since the desktop set itself up again after the last
    /// reconnect (0 without one).
    pub frames_after_reconnect: u64,
    pub fence_latency_us: Percentiles,
    /// Commands of this desktop answered with an error.
    pub errors: u64,
    /// Fences of this desktop still pending at the end (after the grace
    /// period); for the others, what `fences_lost` sums.
    pub fences_pending: u64,
}

/// The JSON object of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub backend: String,
    pub desktops: usize,
    pub profile: String,
    pub fence_mode: String,
    pub scenario: String,
    pub duration_s: f64,
    pub commands: u64,
    pub commands_per_s: f64,
    pub frames: u64,
    pub frames_per_s: f64,
    pub fences: u64,
    /// Fences of unstressed desktops not completed by the end (after a
    /// grace period).
    pub fences_lost: u64,
    /// Fences of the stressed desktop still pending at the end (expected in
    /// `stalled-context`).
    pub stressed_fences_pending: u64,
    pub errors: u64,
    /// Times the backend went away and a new one took over (`--reconnect`).
    pub reconnects: u64,
    /// Error answers (unknown context or resource) to commands sent before
    /// a desktop set itself up again after a reconnect: the restarted
    /// backend never had that state. Counted here, not in `errors`.
    pub lost_state_answers: u64,
    /// Fenced commands answered for another fence (a chain completed twice
    /// after the guest reused its head). Also in `errors`; a used element
    /// for a chain the driver does not have in flight ends the run with an
    /// error (`errors`).
    pub fences_completed_twice: u64,
    /// Fences completed before an earlier fence of the same timeline. Also
    /// in `errors`.
    pub fences_out_of_order: u64,
    pub fence_latency_us: Percentiles,
    pub fence_overhead_us: Percentiles,
    pub max_stall_ms: f64,
    pub stalls_over_50ms: u64,
    pub frames_delivered: u64,
    /// Frames the backend superseded with a newer one for the same scanout
    /// before the display read them (known for the embedded gpu-reactor).
    pub frames_merged: u64,
    /// Pixel bytes the backend copied per frame (transfers into host
    /// images, read-backs for the display; known for gpu-reactor embedded
    /// or direct). The kernel's socket copies are not in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixel_bytes_copied_per_frame: Option<f64>,
    pub pixels_bad: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    pub per_desktop: Vec<DesktopReport>,
    /// What went wrong, one line each (first 20).
    pub error_samples: Vec<String>,
}

impl Report {
    /// The readable summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let fl = &self.fence_latency_us;
        let fo = &self.fence_overhead_us;
        s.push_str(&format!(
            "backend {}  desktops {}  profile {}  fences {}  scenario {}  {:.1}s\n",
            self.backend,
            self.desktops,
            self.profile,
            self.fence_mode,
            self.scenario,
            self.duration_s
        ));
        s.push_str(&format!(
            "  commands   {:>10}  ({:.0}/s)\n  frames     {:>10}  ({:.1}/s)\n  fences     {:>10}  lost {}  errors {}\n",
            self.commands, self.commands_per_s, self.frames, self.frames_per_s, self.fences, self.fences_lost, self.errors
        ));
        if self.reconnects > 0 || self.fences_completed_twice > 0 || self.fences_out_of_order > 0 {
            s.push_str(&format!(
                "  reconnects {}  lost-state answers {}  fences completed twice {}  out of order {}\n",
                self.reconnects, self.lost_state_answers, self.fences_completed_twice, self.fences_out_of_order
            ));
        }
        s.push_str(&format!(
            "  fence latency  µs  p50 {:>7}  p99 {:>7}  p999 {:>7}  max {:>7}\n",
            fl.p50, fl.p99, fl.p999, fl.max
        ));
        s.push_str(&format!(
            "  fence overhead µs  p50 {:>7}  p99 {:>7}  p999 {:>7}  max {:>7}\n",
            fo.p50, fo.p99, fo.p999, fo.max
        ));
        s.push_str(&format!(
            "  longest stall {:.1} ms, waits over 50 ms: {}\n  frames delivered {}  pixels bad {}\n",
            self.max_stall_ms, self.stalls_over_50ms, self.frames_delivered, self.pixels_bad
        ));
        if let Some(b) = self.pixel_bytes_copied_per_frame {
            s.push_str(&format!(
                "  pixel bytes copied per frame by the backend {:.0}\n",
                b
            ));
        }
        if let Some(i) = &self.isolation {
            s.push_str(&format!(
                "  isolation: others' p99 {} µs before, {} µs during → ratio {:.2}\n",
                i.others_p99_us_before, i.others_p99_us_during, i.ratio
            ));
        }
        for e in &self.error_samples {
            s.push_str(&format!("  error: {e}\n"));
        }
        s
    }

    /// Exit status: non-zero when anything was lost or wrong.
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.fences_lost > 0 || self.fences_completed_twice > 0
    }
}
