//! `bench reactor`: wake-up latency of our reactor next to its peers.
//!
//! Three cases, each measured for four systems with identical definitions:
//!
//! * `same_shard_eventfd` — one thread; a read of an eventfd is pending; the
//!   measuring code stamps `t0`, writes 1 with a plain `libc::write`, yields to
//!   the executor, and the reader stamps `t1` once its read has completed.
//! * `cross_shard_doorbell` — thread A (cpu 0) stamps `t0` and wakes thread B
//!   (cpu 1), which is asleep; B stamps `t1` once it holds the doorbell's
//!   payload. A waits for B's acknowledgement and spins 20–50 µs between samples
//!   so that B really is asleep when rung.
//! * `timerfd_1ms_lateness` — arm a CLOCK_MONOTONIC timerfd 1 ms ahead
//!   (relative `timerfd_settime`, `t_arm` stamped just before it); the sample is
//!   `t_wake - (t_arm + 1 ms)` where `t_wake` is stamped when the expiry has
//!   been read. At most 2000 iterations per round (each costs 1 ms).
//!
//! Systems: `reactor` (ours, [`ours`]), `tokio_uring` (tokio-uring 0.5),
//! `epoll` (a plain epoll thread, the design of today's peers) and
//! `io_uring_raw` (the io-uring crate driven directly: the floor).
//!
//! The systems run interleaved in rounds (round r: reactor, tokio_uring, epoll,
//! io_uring_raw, for each case) after one discarded warm-up round, and their
//! histograms are merged per system. Single-threaded cases run on a fresh
//! thread pinned to the first allowed CPU; cross-shard functions start and pin
//! their own two threads (first and second allowed CPU; unpinned if only one).
//!
//! Convention for every system function: run `WARMUP_*` unrecorded iterations
//! first, then record exactly `iterations` samples in nanoseconds.

pub mod epoll;
pub mod ours;
pub mod raw_uring;
pub mod stats;
mod sys;
pub mod tokio_uring;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use stats::{Percentiles, Ratio};

/// Unrecorded iterations at the start of every eventfd / doorbell run.
pub const WARMUP_WAKES: usize = 100;
/// Unrecorded iterations at the start of every timer run.
pub const WARMUP_TIMERS: usize = 5;
/// Per-round cap on timer iterations (each one costs 1 ms).
pub const TIMER_ITERATIONS_CAP: usize = 2000;
/// The timer period of `timerfd_1ms_lateness`.
pub const TIMER_PERIOD: Duration = Duration::from_millis(1);

/// Iterations of the discarded warm-up round.
const WARMUP_ROUND_WAKES: usize = 500;
const WARMUP_ROUND_TIMERS: usize = 20;

/// How long the doorbell sender waits for the receiver before giving up.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// An error of one benchmark run, naming what failed.
#[derive(Debug)]
pub struct BenchError {
    what: String,
    source: Option<io::Error>,
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self {
            what: what.into(),
            source: Some(source),
        }
    }

    pub fn msg(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// Prefixes the message with where it happened (system / case).
    pub fn context(self, ctx: &str) -> Self {
        Self {
            what: format!("{ctx}: {}", self.what),
            source: self.source,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    SameShardEventfd,
    CrossShardDoorbell,
    TimerfdLateness,
}

impl Case {
    pub const ALL: [Case; 3] = [
        Case::SameShardEventfd,
        Case::CrossShardDoorbell,
        Case::TimerfdLateness,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::SameShardEventfd => "same_shard_eventfd",
            Case::CrossShardDoorbell => "cross_shard_doorbell",
            Case::TimerfdLateness => "timerfd_1ms_lateness",
        }
    }

    fn iterations(self, requested: usize) -> usize {
        match self {
            Case::TimerfdLateness => requested.min(TIMER_ITERATIONS_CAP),
            _ => requested,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Reactor,
    TokioUring,
    Epoll,
    IoUringRaw,
}

impl System {
    /// Order within a round.
    pub const ALL: [System; 4] = [
        System::Reactor,
        System::TokioUring,
        System::Epoll,
        System::IoUringRaw,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Reactor => "reactor",
            System::TokioUring => "tokio_uring",
            System::Epoll => "epoll",
            System::IoUringRaw => "io_uring_raw",
        }
    }
}

/// Runs one system on one case and returns its samples (ns).
fn run_one(
    system: System,
    case: Case,
    iterations: usize,
    cpus: &[usize],
) -> Result<Histogram<u64>> {
    let ctx = format!("{} / {}", system.name(), case.name());
    let result = match case {
        Case::CrossShardDoorbell => match system {
            System::Reactor => ours::cross_shard_doorbell(iterations),
            System::TokioUring => tokio_uring::cross_shard_doorbell(iterations),
            System::Epoll => epoll::cross_shard_doorbell(iterations),
            System::IoUringRaw => raw_uring::cross_shard_doorbell(iterations),
        },
        Case::SameShardEventfd | Case::TimerfdLateness => {
            let cpu = cpus.first().copied();
            on_pinned_thread(cpu, move || match (system, case) {
                (System::Reactor, Case::SameShardEventfd) => ours::same_shard_eventfd(iterations),
                (System::Reactor, _) => ours::timerfd_1ms_lateness(iterations),
                (System::TokioUring, Case::SameShardEventfd) => {
                    tokio_uring::same_shard_eventfd(iterations)
                }
                (System::TokioUring, _) => tokio_uring::timerfd_1ms_lateness(iterations),
                (System::Epoll, Case::SameShardEventfd) => epoll::same_shard_eventfd(iterations),
                (System::Epoll, _) => epoll::timerfd_1ms_lateness(iterations),
                (System::IoUringRaw, Case::SameShardEventfd) => {
                    raw_uring::same_shard_eventfd(iterations)
                }
                (System::IoUringRaw, _) => raw_uring::timerfd_1ms_lateness(iterations),
            })
        }
    };
    result.map_err(|e| e.context(&ctx))
}

/// Runs `f` on a new thread pinned to `cpu` (unpinned if `None`).
fn on_pinned_thread<T: Send>(
    cpu: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("bench-shard".into())
            .spawn_scoped(s, move || {
                if let Some(cpu) = cpu {
                    sys::pin_current_thread(cpu)?;
                }
                f()
            })
            .map_err(|e| BenchError::io("spawning the benchmark thread", e))?
            .join()
            .map_err(|_| BenchError::msg("benchmark thread panicked"))?
    })
}

/// The two CPUs used by the cross-shard case: (sender A, receiver B), or
/// `None` when fewer than two CPUs are allowed (then nothing is pinned).
pub(crate) fn cross_shard_cpus() -> Result<Option<(usize, usize)>> {
    let cpus = sys::allowed_cpus()?;
    Ok(match cpus.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    })
}

/// Shared state of a cross-shard doorbell run (sender A ↔ receiver B).
#[derive(Default)]
pub(crate) struct Doorbell {
    /// B has set up and is about to wait for the first ring.
    pub ready: AtomicBool,
    /// Number of rings B has handled (recorded or warm-up).
    pub acked: AtomicU64,
    /// B failed and will not acknowledge any more.
    pub failed: AtomicBool,
    /// A has finished; the next ring only tells B to leave.
    pub stop: AtomicBool,
}

impl Doorbell {
    /// A's side: `total` times, pause 20–50 µs, stamp `t0`, `ring(t0)`, and spin
    /// until B acknowledges. Does not stop B: the caller must, on every path.
    pub fn drive(&self, total: usize, mut ring: impl FnMut(Instant) -> Result<()>) -> Result<()> {
        self.spin_until("receiver ready", || self.ready.load(Ordering::Acquire))?;
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..total {
            spin_pause(&mut rng);
            let t0 = Instant::now();
            ring(t0)?;
            let want = i as u64 + 1;
            self.spin_until("receiver acknowledgement", || {
                self.acked.load(Ordering::Acquire) >= want
            })?;
        }
        Ok(())
    }

    fn spin_until(&self, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            if cond() {
                return Ok(());
            }
            if self.failed.load(Ordering::Acquire) {
                return Err(BenchError::msg(format!(
                    "receiver failed while waiting for {what}"
                )));
            }
            if start.elapsed() > PEER_TIMEOUT {
                return Err(BenchError::msg(format!(
                    "no {what} within {PEER_TIMEOUT:?}"
                )));
            }
            std::hint::spin_loop();
        }
    }
}

/// Busy-waits 20–50 µs (xorshift-chosen) so the receiver is really asleep.
fn spin_pause(rng: &mut u64) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let pause = Duration::from_micros(20 + *rng % 31);
    let start = Instant::now();
    while start.elapsed() < pause {
        std::hint::spin_loop();
    }
}

/// Runs a cross-shard pair: `receiver` (B) on the second CPU and `sender` (A)
/// on the first. B's errors raise `bell.failed` so A stops waiting; once A is
/// done — or could not start — `bell.stop` is raised and `release` is called
/// to wake B for the last time (a no-op where dropping A's state ends B).
/// B's error wins over A's, since A's is usually its consequence.
pub(crate) fn run_pair<'env>(
    bell: &'env Doorbell,
    receiver: impl FnOnce() -> Result<Histogram<u64>> + Send + 'env,
    sender: impl FnOnce() -> Result<()> + Send + 'env,
    release: impl Fn() -> Result<()> + Sync + 'env,
) -> Result<Histogram<u64>> {
    let cpus = cross_shard_cpus()?;
    let release = &release;
    let finish = move || {
        bell.stop.store(true, Ordering::Release);
        release()
    };
    std::thread::scope(|s| {
        let b = std::thread::Builder::new()
            .name("doorbell-b".into())
            .spawn_scoped(s, move || {
                let r = cpus
                    .map_or(Ok(()), |(_, cpu)| sys::pin_current_thread(cpu))
                    .and_then(|()| receiver());
                if r.is_err() {
                    bell.failed.store(true, Ordering::Release);
                }
                r
            })
            .map_err(|e| BenchError::io("spawning doorbell receiver thread", e))?;
        let a = std::thread::Builder::new()
            .name("doorbell-a".into())
            .spawn_scoped(s, move || {
                let r = cpus
                    .map_or(Ok(()), |(cpu, _)| sys::pin_current_thread(cpu))
                    .and_then(|()| sender());
                r.and(finish())
            });
        let a = match a {
            Ok(a) => a
                .join()
                .map_err(|_| BenchError::msg("doorbell sender thread panicked"))
                .and_then(|r| r),
            Err(e) => {
                let _ = finish();
                Err(BenchError::io("spawning doorbell sender thread", e))
            }
        };
        let b = b
            .join()
            .map_err(|_| BenchError::msg("doorbell receiver thread panicked"))
            .and_then(|r| r);
        let hist = b?;
        a?;
        Ok(hist)
    })
}

/// Encodes an instant as a non-zero eventfd value: nanoseconds since `base` + 1.
pub(crate) fn encode_instant(base: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base).as_nanos())
        .unwrap_or(u64::MAX - 2)
        .min(u64::MAX - 2)
        + 1
}

/// Inverse of [`encode_instant`].
pub(crate) fn decode_instant(base: Instant, value: u64) -> Instant {
    base + Duration::from_nanos(value.saturating_sub(1))
}

// ---------------------------------------------------------------------------
// Report

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub iterations: usize,
    pub rounds: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub iterations: usize,
    pub rounds: usize,
    pub machine: Machine,
    pub cases: Cases,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Cases {
    pub same_shard_eventfd: CaseReport,
    pub cross_shard_doorbell: CaseReport,
    pub timerfd_1ms_lateness: CaseReport,
}

impl Cases {
    pub fn iter(&self) -> impl Iterator<Item = (Case, &CaseReport)> {
        [
            (Case::SameShardEventfd, &self.same_shard_eventfd),
            (Case::CrossShardDoorbell, &self.cross_shard_doorbell),
            (Case::TimerfdLateness, &self.timerfd_1ms_lateness),
        ]
        .into_iter()
    }
}

#[derive(Debug, Serialize)]
pub struct CaseReport {
    pub reactor: Percentiles,
    pub tokio_uring: Percentiles,
    pub epoll: Percentiles,
    pub io_uring_raw: Percentiles,
    /// reactor / tokio_uring
    pub ratio_vs_tokio_uring: Ratio,
    /// reactor / io_uring_raw
    pub ratio_vs_raw_floor: Ratio,
}

impl CaseReport {
    fn from_histograms(h: &[Histogram<u64>; 4]) -> Self {
        let [reactor, tokio_uring, epoll, io_uring_raw] =
            h.each_ref().map(Percentiles::from_histogram);
        Self {
            ratio_vs_tokio_uring: reactor.ratio_to(&tokio_uring),
            ratio_vs_raw_floor: reactor.ratio_to(&io_uring_raw),
            reactor,
            tokio_uring,
            epoll,
            io_uring_raw,
        }
    }

    pub fn get(&self, system: System) -> &Percentiles {
        match system {
            System::Reactor => &self.reactor,
            System::TokioUring => &self.tokio_uring,
            System::Epoll => &self.epoll,
            System::IoUringRaw => &self.io_uring_raw,
        }
    }
}

fn machine() -> Machine {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    Machine { cores, kernel }
}

/// Runs the whole benchmark: one discarded warm-up round, then `rounds`
/// interleaved rounds. `progress` receives one line per round.
pub fn run(cfg: Config, mut progress: impl FnMut(&str)) -> Result<Report> {
    if cfg.iterations == 0 || cfg.rounds == 0 {
        return Err(BenchError::msg(
            "--iterations and --rounds must be at least 1",
        ));
    }
    let cpus = sys::allowed_cpus()?;
    let mut merged: [[Histogram<u64>; 4]; 3] =
        std::array::from_fn(|_| std::array::from_fn(|_| stats::new_histogram()));

    for round in 0..=cfg.rounds {
        let warmup = round == 0;
        progress(&if warmup {
            "warm-up round (discarded)".to_owned()
        } else {
            format!("round {round}/{}", cfg.rounds)
        });
        for (ci, case) in Case::ALL.into_iter().enumerate() {
            let n = if warmup {
                match case {
                    Case::TimerfdLateness => WARMUP_ROUND_TIMERS,
                    _ => WARMUP_ROUND_WAKES,
                }
                .min(cfg.iterations)
            } else {
                case.iterations(cfg.iterations)
            };
            for (si, system) in System::ALL.into_iter().enumerate() {
                let h = run_one(system, case, n, &cpus)?;
                if !warmup {
                    merged[ci][si]
                        .add(&h)
                        .map_err(|e| BenchError::msg(format!("merging histograms: {e:?}")))?;
                }
            }
        }
    }

    let [same, cross, timer] = merged;
    Ok(Report {
        bench: "reactor",
        iterations: cfg.iterations,
        rounds: cfg.rounds,
        machine: machine(),
        cases: Cases {
            same_shard_eventfd: CaseReport::from_histograms(&same),
            cross_shard_doorbell: CaseReport::from_histograms(&cross),
            timerfd_1ms_lateness: CaseReport::from_histograms(&timer),
        },
    })
}

/// A human-readable table of the report.
pub fn render_table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench reactor: {} iterations x {} rounds (timer case capped at {} per round); {} cores, kernel {}",
        r.iterations, r.rounds, TIMER_ITERATIONS_CAP, r.machine.cores, r.machine.kernel
    );
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    for (case, c) in r.cases.iter() {
        let _ = writeln!(out, "\n{}  (µs)", case.name());
        let _ = writeln!(
            out,
            "  {:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "system", "p50", "p99", "p999", "max", "samples"
        );
        for system in System::ALL {
            let p = c.get(system);
            let note = if p.samples == 0 { "  (no samples)" } else { "" };
            let _ = writeln!(
                out,
                "  {:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{note}",
                system.name(),
                us(p.p50_us),
                us(p.p99_us),
                us(p.p999_us),
                us(p.max_us),
                p.samples
            );
        }
        for (label, rt) in [
            ("reactor/tokio_uring", &c.ratio_vs_tokio_uring),
            ("reactor/raw floor", &c.ratio_vs_raw_floor),
        ] {
            let _ = writeln!(
                out,
                "  {label:<20} p50 {}  p99 {}  p999 {}",
                ratio(rt.p50),
                ratio(rt.p99),
                ratio(rt.p999)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_round_trips_through_eventfd_encoding() {
        let base = Instant::now();
        let t = base + Duration::from_nanos(123_456);
        let v = encode_instant(base, t);
        assert_ne!(v, 0);
        assert_eq!(decode_instant(base, v), t);
        assert_eq!(encode_instant(base, base), 1);
    }
}
