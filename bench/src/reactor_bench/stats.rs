//! Histogram helpers and the serialisable percentile summary.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value a histogram tracks exactly: 60 s in ns. Larger samples are
/// clamped to it (`saturating_record`), so recording never allocates or fails.
pub const HIGHEST_TRACKABLE_NS: u64 = 60_000_000_000;

/// A new, empty nanosecond histogram, 1 ns ..= 60 s, 3 significant figures.
///
/// Every system records into one of these, so their resolution is identical.
/// (Not auto-resizing: `saturating_record` on an auto-resizing histogram clamps
/// to its tiny initial range instead of growing it.)
pub fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, HIGHEST_TRACKABLE_NS, 3)
        .expect("constant bounds 1..=60e9 with 3 significant figures are valid")
}

/// Records `end - start` in nanoseconds (0 if `end` is before `start`).
pub fn record_between(h: &mut Histogram<u64>, start: Instant, end: Instant) {
    let ns = end.saturating_duration_since(start).as_nanos();
    h.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX));
}

/// Wake-up latency percentiles in microseconds. `None` (JSON `null`) when the
/// histogram has no samples, e.g. for a system that is not implemented yet.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    pub samples: u64,
    /// Raw nanosecond values, kept for the ratios (not serialised).
    #[serde(skip)]
    ns: Option<[u64; 3]>,
}

impl Percentiles {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                p50_us: None,
                p99_us: None,
                p999_us: None,
                max_us: None,
                samples: 0,
                ns: None,
            };
        }
        let ns = [
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
        ];
        Self {
            p50_us: Some(to_us(ns[0])),
            p99_us: Some(to_us(ns[1])),
            p999_us: Some(to_us(ns[2])),
            max_us: Some(to_us(h.max())),
            samples: h.len(),
            ns: Some(ns),
        }
    }

    /// `self / other` per percentile; `null` where either side has no samples.
    pub fn ratio_to(&self, other: &Percentiles) -> Ratio {
        let r = |i: usize| match (self.ns, other.ns) {
            (Some(a), Some(b)) if b[i] > 0 => Some(round(a[i] as f64 / b[i] as f64, 3)),
            _ => None,
        };
        Ratio {
            p50: r(0),
            p99: r(1),
            p999: r(2),
        }
    }
}

/// Ratio of two [`Percentiles`] (numerator / denominator).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratio {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

fn to_us(ns: u64) -> f64 {
    round(ns as f64 / 1000.0, 2)
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_histogram_gives_nulls_and_null_ratios() {
        let empty = Percentiles::from_histogram(&new_histogram());
        assert_eq!(empty.samples, 0);
        assert!(empty.p99_us.is_none());
        let mut h = new_histogram();
        h.saturating_record(2_000);
        let full = Percentiles::from_histogram(&h);
        assert!(empty.ratio_to(&full).p99.is_none());
        assert!(full.ratio_to(&empty).p50.is_none());
    }

    #[test]
    fn large_samples_are_kept_and_huge_ones_clamped() {
        let mut h = new_histogram();
        h.saturating_record(50_000);
        h.saturating_record(u64::MAX);
        let mut merged = new_histogram();
        merged.add(&h).unwrap();
        assert_eq!(merged.len(), 2);
        assert!(merged.value_at_quantile(0.5).abs_diff(50_000) <= 50);
        assert!(merged.max() >= HIGHEST_TRACKABLE_NS);
    }

    #[test]
    fn percentiles_are_microseconds_and_ratio_is_numerator_over_denominator() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for _ in 0..100 {
            a.saturating_record(3_000);
            b.saturating_record(2_000);
        }
        let (pa, pb) = (
            Percentiles::from_histogram(&a),
            Percentiles::from_histogram(&b),
        );
        assert!((pa.p50_us.unwrap() - 3.0).abs() < 0.01);
        assert_eq!(pa.samples, 100);
        let r = pa.ratio_to(&pb).p99.unwrap();
        assert!((r - 1.5).abs() < 0.005, "ratio {r}");
    }
}
