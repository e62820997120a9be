//! Our reactor's side of `bench reactor`, following the same contract as
//! `tokio_uring.rs`, `epoll.rs` and `raw_uring.rs` (see the module docs of
//! `reactor_bench` for the case definitions).

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use reactor::io::{EventFd, TimerFd, TimerSpec};

use super::{stats, BenchError, Doorbell, Result, TIMER_PERIOD, WARMUP_TIMERS, WARMUP_WAKES};

fn shard_err(e: io::Error) -> BenchError {
    BenchError::io("reactor shard", e)
}

/// A task keeps an eventfd read pending on the ring; the measuring task
/// stamps `t0`, writes the eventfd with `write(2)` and waits on a channel the
/// reader signals once its read completed (where `t1` is stamped).
pub fn same_shard_eventfd(iterations: usize) -> Result<Histogram<u64>> {
    reactor::block_on(async move {
        let efd = EventFd::new().map_err(|e| BenchError::io("eventfd", e))?;
        let t0: Rc<Cell<Option<Instant>>> = Rc::new(Cell::new(None));
        let hist = Rc::new(RefCell::new(stats::new_histogram()));
        let (done_tx, mut done_rx) = reactor::channel::<io::Result<()>>();
        let reader = {
            let (efd, t0, hist) = (efd.clone(), t0.clone(), hist.clone());
            reactor::spawn_local(async move {
                loop {
                    let r = efd.read().await;
                    let t1 = Instant::now();
                    if let (Ok(_), Some(t0)) = (&r, t0.take()) {
                        stats::record_between(&mut hist.borrow_mut(), t0, t1);
                    }
                    let failed = r.is_err();
                    if done_tx.send(r.map(|_| ())).is_err() || failed {
                        return;
                    }
                }
            })
        };
        for i in 0..WARMUP_WAKES + iterations {
            // One turn of the loop puts the reader's read in the kernel.
            reactor::yield_now().await;
            let now = Instant::now();
            t0.set((i >= WARMUP_WAKES).then_some(now));
            efd.notify()
                .map_err(|e| BenchError::io("eventfd write", e))?;
            match done_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(BenchError::io("reactor eventfd read", e)),
                None => return Err(BenchError::msg("reader task ended")),
            }
        }
        drop(reader);
        Ok(hist.replace(stats::new_histogram()))
    })
    .map_err(shard_err)?
}

/// Receiver B is a shard waiting on a cross-shard channel; sender A (another
/// shard, on the other CPU) sends `t0`. The send wakes B's task through B's
/// doorbell eventfd, as any cross-shard message does.
pub fn cross_shard_doorbell(iterations: usize) -> Result<Histogram<u64>> {
    let bell = &Doorbell::default();
    let total = WARMUP_WAKES + iterations;
    let (tx, mut rx) = reactor::channel::<Instant>();
    let receiver = || {
        reactor::block_on(async {
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
        .map_err(shard_err)?
    };
    let sender = move || {
        reactor::block_on(async move {
            bell.drive(total, |t0| {
                tx.send(t0)
                    .map_err(|_| BenchError::msg("receiver shard is gone"))
            })
            // Dropping `tx` ends B's loop.
        })
        .map_err(shard_err)?
    };
    super::run_pair(bell, receiver, sender, || Ok(()))
}

/// Arm a CLOCK_MONOTONIC timerfd 1 ms ahead, await its read on the ring,
/// record wake-up minus deadline.
pub fn timerfd_1ms_lateness(iterations: usize) -> Result<Histogram<u64>> {
    reactor::block_on(async move {
        let t = TimerFd::new().map_err(|e| BenchError::io("timerfd", e))?;
        let mut h = stats::new_histogram();
        for i in 0..WARMUP_TIMERS + iterations {
            let armed = Instant::now();
            t.set(TimerSpec::After(TIMER_PERIOD))
                .map_err(|e| BenchError::io("timerfd_settime", e))?;
            t.wait()
                .await
                .map_err(|e| BenchError::io("timerfd read", e))?;
            let woke = Instant::now();
            if i >= WARMUP_TIMERS {
                stats::record_between(&mut h, armed + TIMER_PERIOD, woke);
            }
        }
        Ok(h)
    })
    .map_err(shard_err)?
}
