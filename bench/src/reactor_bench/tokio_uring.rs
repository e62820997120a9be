//! tokio-uring 0.5 baseline: a current-thread tokio runtime whose io_uring is
//! flushed when the runtime parks and whose completions are noticed through
//! tokio's epoll on the ring fd.
//!
//! Runtimes are built with `tokio_uring::Runtime::new` + `block_on` (what
//! `tokio_uring::start` does) so that a failing `io_uring_setup` is reported
//! as an error instead of `start`'s panic.
//!
//! eventfd / timerfd reads use `tokio_uring::fs::File::from_std(..).read_at(buf, 0)`,
//! i.e. an IORING_OP_READ at offset 0; the kernel ignores the offset for these
//! non-seekable descriptors.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Notify};
use tokio_uring::fs::File;

use super::{stats, sys, BenchError, Doorbell, Result, TIMER_PERIOD, WARMUP_TIMERS, WARMUP_WAKES};

fn runtime() -> Result<tokio_uring::Runtime> {
    tokio_uring::Runtime::new(&tokio_uring::builder())
        .map_err(|e| BenchError::io("tokio-uring runtime", e))
}

/// Reads one 8-byte counter through tokio-uring, returning the buffer for reuse.
async fn read_counter(file: &File, buf: Vec<u8>, what: &str) -> (Result<u64>, Vec<u8>) {
    let (res, buf) = file.read_at(buf, 0).await;
    let value = match res {
        Ok(8) => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[..8]);
            Ok(u64::from_ne_bytes(bytes))
        }
        Ok(n) => Err(BenchError::msg(format!("{what}: short read ({n} bytes)"))),
        Err(e) => Err(BenchError::io(what, e)),
    };
    (value, buf)
}

/// State shared by the measuring task and the reader task (one thread).
struct SameShard {
    /// `Some(t0)` for a recorded sample, `None` during warm-up.
    t0: Cell<Option<Instant>>,
    hist: RefCell<Histogram<u64>>,
    /// Raised by the reader after each completed read.
    done: Notify,
    stop: Cell<bool>,
    error: RefCell<Option<BenchError>>,
}

/// A spawned task keeps a `read_at` pending; the measuring task stamps `t0`,
/// writes the eventfd with `libc::write` and yields (awaits the reader's
/// notification); the reader stamps `t1` as soon as its read completes.
///
/// tokio-uring only submits SQEs when the runtime parks, so before each `t0`
/// the measuring task awaits a `no_op()`: SQEs are submitted in order, so once
/// the NOP has completed the reader's READ is in the kernel, waiting.
pub fn same_shard_eventfd(iterations: usize) -> Result<Histogram<u64>> {
    let efd = sys::eventfd()?;
    let fd = efd.as_raw_fd();
    let rt = runtime()?;
    rt.block_on(async move {
        let file = File::from_std(std::fs::File::from(efd));
        let st = Rc::new(SameShard {
            t0: Cell::new(None),
            hist: RefCell::new(stats::new_histogram()),
            done: Notify::new(),
            stop: Cell::new(false),
            error: RefCell::new(None),
        });
        let reader = tokio_uring::spawn({
            let st = Rc::clone(&st);
            async move {
                let mut buf = vec![0u8; 8];
                loop {
                    let (res, b) = read_counter(&file, buf, "tokio-uring read_at(eventfd)").await;
                    let t1 = Instant::now();
                    buf = b;
                    if let Err(e) = res {
                        *st.error.borrow_mut() = Some(e);
                        st.done.notify_one();
                        return;
                    }
                    if st.stop.get() {
                        return;
                    }
                    if let Some(t0) = st.t0.take() {
                        stats::record_between(&mut st.hist.borrow_mut(), t0, t1);
                    }
                    st.done.notify_one();
                }
            }
        });

        let mut outcome = Ok(());
        for i in 0..WARMUP_WAKES + iterations {
            if let Err(e) = tokio_uring::no_op().await {
                outcome = Err(BenchError::io("tokio-uring no_op", e));
                break;
            }
            let t0 = Instant::now();
            st.t0.set((i >= WARMUP_WAKES).then_some(t0));
            if let Err(e) = sys::eventfd_write(fd, 1) {
                outcome = Err(e);
                break;
            }
            st.done.notified().await;
            if st.error.borrow().is_some() {
                break;
            }
        }
        // Release the reader's last pending read and let it finish.
        st.stop.set(true);
        if st.error.borrow().is_none() {
            outcome = outcome.and(sys::eventfd_write(fd, 1));
            if reader.await.is_err() {
                outcome = outcome.and(Err(BenchError::msg("tokio-uring reader task panicked")));
            }
        }
        if let Some(e) = st.error.borrow_mut().take() {
            return Err(e);
        }
        outcome?;
        Ok(st.hist.replace(stats::new_histogram()))
    })
}

/// Two tokio-uring runtimes on two threads; A sends `t0` over a tokio mpsc
/// channel (tokio's way of waking a parked runtime), B stamps `t1` as soon as
/// `recv` returns.
pub fn cross_shard_doorbell(iterations: usize) -> Result<Histogram<u64>> {
    let bell = &Doorbell::default();
    let total = WARMUP_WAKES + iterations;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let receiver = || {
        let rt = runtime()?;
        rt.block_on(async {
            let mut h = stats::new_histogram();
            let mut n = 0u64;
            bell.ready.store(true, Ordering::Release);
            while let Some(t0) = rx.recv().await {
                let t1 = Instant::now();
                if n >= WARMUP_WAKES as u64 {
                    stats::record_between(&mut h, t0, t1);
                }
                n += 1;
                bell.acked.store(n, Ordering::Release);
            }
            Ok(h)
        })
    };
    let sender = move || {
        let rt = runtime()?;
        rt.block_on(async {
            bell.drive(total, |t0| {
                tx.send(t0)
                    .map_err(|_| BenchError::msg("tokio mpsc: receiver runtime is gone"))
            })
        })
        // `tx` is dropped here, which ends B's `recv` loop.
    };
    super::run_pair(bell, receiver, sender, || Ok(()))
}

/// Arm 1 ms, `read_at` the timerfd through tokio-uring, stamp on completion.
pub fn timerfd_1ms_lateness(iterations: usize) -> Result<Histogram<u64>> {
    let tfd = sys::timerfd()?;
    let fd = tfd.as_raw_fd();
    let rt = runtime()?;
    rt.block_on(async move {
        let file = File::from_std(std::fs::File::from(tfd));
        let mut h = stats::new_histogram();
        let mut buf = vec![0u8; 8];
        for i in 0..WARMUP_TIMERS + iterations {
            let armed = Instant::now();
            sys::timerfd_arm_relative(fd, TIMER_PERIOD)?;
            let (res, b) = read_counter(&file, buf, "tokio-uring read_at(timerfd)").await;
            let woke = Instant::now();
            buf = b;
            res?;
            if i >= WARMUP_TIMERS {
                stats::record_between(&mut h, armed + TIMER_PERIOD, woke);
            }
        }
        Ok(h)
    })
}
