//! Rate limits for log lines a guest can cause once per command.
//!
//! A guest that sends a malformed chain gets one answer per chain, but the
//! host log must not get one line per chain: a guest could fill the host's
//! disk or drown everything else in it. Each such call site has its own
//! [`LogLimit`]: the first [`LINES_PER_INTERVAL`] lines of every
//! [`INTERVAL`] are written, the rest counted, and the count is written as
//! one line of its own ("N similar lines suppressed") before the site's
//! next line that is let through, in a later interval.
//!
//! The call sites use [`warn_limited!`](crate::warn_limited) and
//! [`error_limited!`](crate::error_limited), which take what `tracing::warn!`
//! and `tracing::error!` take (fields, then the message).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site writes per interval before it is suppressed.
pub const LINES_PER_INTERVAL: u32 = 10;
/// Length of the interval [`LINES_PER_INTERVAL`] counts over.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The window of one call site.
#[derive(Debug)]
struct Window {
    /// Start of the current interval (`None` before the first line).
    start: Option<Instant>,
    /// Lines written in it.
    written: u32,
    /// Lines suppressed since the last line written.
    suppressed: u64,
}

/// A fixed-window limit for one call site, usable from any thread (a
/// `static`: `LogLimit::new` is `const`).
#[derive(Debug)]
pub struct LogLimit {
    lines: u32,
    interval: Duration,
    window: Mutex<Window>,
}

impl LogLimit {
    /// At most `lines` per `interval`.
    pub const fn new(lines: u32, interval: Duration) -> Self {
        LogLimit {
            lines,
            interval,
            window: Mutex::new(Window {
                start: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` lets it through,
    /// `n` being how many were suppressed since the last one written (to be
    /// reported first); `None` suppresses it (it is counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging;
        // the counts are still usable.
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let over = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.interval);
        if over {
            w.start = Some(now);
            w.written = 0;
        }
        if w.written >= self.lines {
            w.suppressed = w.suppressed.saturating_add(1);
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// Writes `tracing::$level!($($arg)+)` through a [`LogLimit`] of this call
/// site; the count of what it suppressed goes out first, on its own line.
#[doc(hidden)]
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new(
            $crate::log_limit::LINES_PER_INTERVAL,
            $crate::log_limit::INTERVAL,
        );
        if let Some(suppressed) = LIMIT.admit(::std::time::Instant::now()) {
            if suppressed > 0 {
                ::tracing::$level!(
                    suppressed,
                    site = concat!(file!(), ":", line!()),
                    "{suppressed} similar lines suppressed"
                );
            }
            ::tracing::$level!($($arg)+);
        }
    }};
}

/// `tracing::warn!` at most [`LINES_PER_INTERVAL`] times per [`INTERVAL`]
/// from this call site (see the module docs).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(warn, $($arg)+) };
}

/// `tracing::error!` at most [`LINES_PER_INTERVAL`] times per [`INTERVAL`]
/// from this call site (see the module docs).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(error, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_lines_of_an_interval_pass_and_the_rest_are_counted() {
        let l = LogLimit::new(3, SEC);
        let t0 = Instant::now();
        let passed: Vec<_> = (0..10).map(|_| l.admit(t0)).collect();
        assert_eq!(&passed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(passed[3..].iter().all(Option::is_none));
    }

    #[test]
    fn the_next_interval_reports_what_was_suppressed_once() {
        let l = LogLimit::new(2, SEC);
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.admit(t0);
        }
        // Still inside the first interval: suppressed.
        assert_eq!(l.admit(t0 + SEC / 2), None);
        let t1 = t0 + SEC;
        assert_eq!(l.admit(t1), Some(999));
        assert_eq!(l.admit(t1), Some(0), "the count is reported only once");
        assert_eq!(l.admit(t1), None);
        assert_eq!(l.admit(t1 + SEC), Some(1));
    }

    #[test]
    fn a_quiet_site_is_never_suppressed() {
        let l = LogLimit::new(1, SEC);
        let t0 = Instant::now();
        assert!((0..100).all(|i| l.admit(t0 + SEC * i) == Some(0)));
    }

    #[test]
    fn lines_written_over_a_flood_are_bounded_by_intervals_not_events() {
        let l = LogLimit::new(10, SEC);
        let t0 = Instant::now();
        // 100 000 events over 5 s: 10 lines per interval, 5 intervals.
        let written = (0..100_000u32)
            .filter(|i| {
                l.admit(t0 + Duration::from_micros(u64::from(*i) * 50))
                    .is_some()
            })
            .count();
        assert_eq!(written, 50);
    }

    /// The macros through a real subscriber: a flood from two call sites
    /// gives each its own few lines, then one count per later interval.
    #[test]
    fn a_flood_from_two_call_sites_writes_a_few_lines_for_each() {
        use std::io::Write;
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let started = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..10_000 {
                crate::warn_limited!(i, "site a");
                crate::error_limited!(i, "site b {}", i % 7);
            }
        });
        let intervals = started.elapsed().as_secs() + 1;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let count = |what: &str| text.lines().filter(|l| l.contains(what)).count() as u64;
        let bound = u64::from(LINES_PER_INTERVAL) * intervals;
        for site in ["site a", "site b"] {
            let n = count(site);
            assert!(
                n >= u64::from(LINES_PER_INTERVAL) && n <= bound,
                "{n} lines of {site:?}"
            );
        }
        // At most one count line per site and interval after the first.
        assert!(count("similar lines suppressed") <= 2 * (intervals - 1));
        assert!(text.lines().count() as u64 <= 2 * bound + 2 * intervals);
    }

    #[test]
    fn a_time_going_backwards_does_not_reopen_the_window() {
        let l = LogLimit::new(1, SEC);
        let t0 = Instant::now() + SEC;
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 - SEC / 2), None);
    }
}
