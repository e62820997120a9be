//! The plain epoll baseline: one thread blocking in `epoll_wait`, then a
//! `read(2)` of the eventfd / timerfd — the design of today's peers.
//!
//! `t1` is stamped after the `read`, i.e. when the waiting code holds the
//! event's data, which is what an io_uring READ completion means.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::sys::{self, Epoll};
use super::{stats, Doorbell, Result, TIMER_PERIOD, WARMUP_TIMERS, WARMUP_WAKES};

/// Same thread: stamp `t0`, write the eventfd, `epoll_wait`, read, stamp `t1`.
pub fn same_shard_eventfd(iterations: usize) -> Result<Histogram<u64>> {
    let efd = sys::eventfd()?;
    let fd = efd.as_raw_fd();
    let ep = Epoll::watching(fd)?;
    let mut h = stats::new_histogram();
    for i in 0..WARMUP_WAKES + iterations {
        let t0 = Instant::now();
        sys::eventfd_write(fd, 1)?;
        ep.wait()?;
        sys::read_u64(fd, "eventfd read")?;
        let t1 = Instant::now();
        if i >= WARMUP_WAKES {
            stats::record_between(&mut h, t0, t1);
        }
    }
    Ok(h)
}

/// A (cpu 0) writes `t0` as the eventfd value; B (cpu 1) sleeps in
/// `epoll_wait`, reads the value and stamps `t1`.
pub fn cross_shard_doorbell(iterations: usize) -> Result<Histogram<u64>> {
    let efd = sys::eventfd()?;
    let fd = efd.as_raw_fd();
    let base = Instant::now();
    let bell = Doorbell::default();
    let total = WARMUP_WAKES + iterations;
    let receiver = || {
        let ep = Epoll::watching(fd)?;
        let mut h = stats::new_histogram();
        let mut n = 0u64;
        bell.ready.store(true, Ordering::Release);
        loop {
            ep.wait()?;
            let value = sys::read_u64(fd, "eventfd read")?;
            let t1 = Instant::now();
            if bell.stop.load(Ordering::Acquire) {
                return Ok(h);
            }
            if n >= WARMUP_WAKES as u64 {
                stats::record_between(&mut h, super::decode_instant(base, value), t1);
            }
            n += 1;
            bell.acked.store(n, Ordering::Release);
        }
    };
    let sender = || {
        bell.drive(total, |t0| {
            sys::eventfd_write(fd, super::encode_instant(base, t0))
        })
    };
    super::run_pair(&bell, receiver, sender, || sys::eventfd_write(fd, 1))
}

/// Arm 1 ms, `epoll_wait` on the timerfd, read the expiry count, stamp.
pub fn timerfd_1ms_lateness(iterations: usize) -> Result<Histogram<u64>> {
    let tfd = sys::timerfd()?;
    let fd = tfd.as_raw_fd();
    let ep = Epoll::watching(fd)?;
    let mut h = stats::new_histogram();
    for i in 0..WARMUP_TIMERS + iterations {
        let armed = Instant::now();
        sys::timerfd_arm_relative(fd, TIMER_PERIOD)?;
        ep.wait()?;
        sys::read_u64(fd, "timerfd read")?;
        let woke = Instant::now();
        if i >= WARMUP_TIMERS {
            stats::record_between(&mut h, armed + TIMER_PERIOD, woke);
        }
    }
    Ok(h)
}
