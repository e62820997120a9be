//! The floor: the io-uring crate driven directly, no executor. One READ SQE
//! on the eventfd / timerfd, `submit_and_wait(1)`, reap the CQE.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};

use super::{stats, sys, BenchError, Doorbell, Result, TIMER_PERIOD, WARMUP_TIMERS, WARMUP_WAKES};

const READ_TAG: u64 = 0x5eed;

/// A tiny ring reading 8-byte counters into its own buffer.
struct Reader {
    ring: IoUring,
    fd: RawFd,
    /// Boxed so its address is stable while a READ is in flight.
    buf: Box<[u8; 8]>,
    in_flight: bool,
}

impl Reader {
    fn new(fd: RawFd) -> Result<Self> {
        let ring = IoUring::new(8).map_err(|e| BenchError::io("io_uring_setup", e))?;
        Ok(Self {
            ring,
            fd,
            buf: Box::new([0; 8]),
            in_flight: false,
        })
    }

    /// Queues one READ of 8 bytes at offset 0 (not yet submitted).
    fn queue_read(&mut self) -> Result<()> {
        if self.in_flight {
            return Err(BenchError::msg("io_uring READ already in flight"));
        }
        let sqe = opcode::Read::new(types::Fd(self.fd), self.buf.as_mut_ptr(), 8)
            .offset(0)
            .build()
            .user_data(READ_TAG);
        // SAFETY: the READ writes into `self.buf`, a heap buffer owned by `self`
        // that is neither moved nor freed while the READ is in flight: `Drop`
        // below waits for the completion, and `in_flight` forbids a second READ
        // into the same buffer.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| BenchError::msg("io_uring submission queue full"))?;
        self.in_flight = true;
        Ok(())
    }

    fn submit(&mut self) -> Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BenchError::io("io_uring_enter(submit)", e)),
            }
        }
    }

    /// Submits anything queued and blocks until one completion is available.
    fn submit_and_wait(&mut self) -> Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BenchError::io("io_uring_enter(submit_and_wait)", e)),
            }
        }
    }

    /// Takes the READ's completion and returns the counter it read.
    fn reap(&mut self, what: &str) -> Result<u64> {
        let cqe = self.ring.completion().next().ok_or_else(|| {
            BenchError::msg(format!("{what}: no completion after submit_and_wait"))
        })?;
        self.in_flight = false;
        match cqe.result() {
            8 => Ok(u64::from_ne_bytes(*self.buf)),
            r if r < 0 => Err(BenchError::io(what, io::Error::from_raw_os_error(-r))),
            r => Err(BenchError::msg(format!("{what}: short read ({r} bytes)"))),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if !self.in_flight {
            return;
        }
        // Only reached on an error path. Cancel the READ and wait for its
        // completion so the kernel no longer writes into `buf`.
        let cancel = opcode::AsyncCancel::new(READ_TAG).build().user_data(0);
        // SAFETY: AsyncCancel carries no buffer.
        let pushed = unsafe { self.ring.submission().push(&cancel) }.is_ok();
        while pushed && self.in_flight {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == READ_TAG {
                    self.in_flight = false;
                }
            }
        }
        if self.in_flight {
            // Could not confirm the READ is gone: leak the buffer rather than
            // let the kernel write into freed memory.
            std::mem::forget(std::mem::replace(&mut self.buf, Box::new([0; 8])));
        }
    }
}

/// Submit a READ, stamp `t0`, write the eventfd, `submit_and_wait(1)`, reap, `t1`.
pub fn same_shard_eventfd(iterations: usize) -> Result<Histogram<u64>> {
    let efd = sys::eventfd()?;
    let fd = efd.as_raw_fd();
    let mut reader = Reader::new(fd)?;
    let mut h = stats::new_histogram();
    for i in 0..WARMUP_WAKES + iterations {
        reader.queue_read()?;
        reader.submit()?;
        let t0 = Instant::now();
        sys::eventfd_write(fd, 1)?;
        reader.submit_and_wait()?;
        reader.reap("io_uring READ eventfd")?;
        let t1 = Instant::now();
        if i >= WARMUP_WAKES {
            stats::record_between(&mut h, t0, t1);
        }
    }
    drop(reader);
    drop(efd);
    Ok(h)
}

/// A (cpu 0) writes `t0` as the eventfd value; B (cpu 1) sleeps in
/// `submit_and_wait` on a READ of it and stamps `t1` once it has the value.
pub fn cross_shard_doorbell(iterations: usize) -> Result<Histogram<u64>> {
    let efd = sys::eventfd()?;
    let fd = efd.as_raw_fd();
    let base = Instant::now();
    let bell = Doorbell::default();
    let total = WARMUP_WAKES + iterations;
    let receiver = || {
        let mut reader = Reader::new(fd)?;
        let mut h = stats::new_histogram();
        let mut n = 0u64;
        bell.ready.store(true, Ordering::Release);
        loop {
            reader.queue_read()?;
            reader.submit_and_wait()?;
            let value = reader.reap("io_uring READ eventfd")?;
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

/// Arm 1 ms, READ the timerfd through the ring, `submit_and_wait(1)`, stamp.
pub fn timerfd_1ms_lateness(iterations: usize) -> Result<Histogram<u64>> {
    let tfd = sys::timerfd()?;
    let fd = tfd.as_raw_fd();
    let mut reader = Reader::new(fd)?;
    let mut h = stats::new_histogram();
    for i in 0..WARMUP_TIMERS + iterations {
        let armed = Instant::now();
        sys::timerfd_arm_relative(fd, TIMER_PERIOD)?;
        reader.queue_read()?;
        reader.submit_and_wait()?;
        reader.reap("io_uring READ timerfd")?;
        let woke = Instant::now();
        if i >= WARMUP_TIMERS {
            stats::record_between(&mut h, armed + TIMER_PERIOD, woke);
        }
    }
    drop(reader);
    drop(tfd);
    Ok(h)
}
