//! Eventfd, timerfd, socket and poll operations on one shard.

use std::cell::RefCell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use reactor::io::{AsyncFd, EventFd, TimerFd, TimerSpec};
use reactor::{block_on, spawn_local, stats, yield_now};

#[test]
fn eventfd_write_wakes_a_pending_read() {
    block_on(async {
        let efd = EventFd::new().unwrap();
        let reader = {
            let efd = efd.clone();
            spawn_local(async move { efd.read().await.unwrap() })
        };
        yield_now().await; // the read is now in the kernel
        efd.write(3).await.unwrap();
        assert_eq!(reader.await.unwrap(), 3);
    })
    .unwrap();
}

#[test]
fn nonblocking_eventfd_from_elsewhere_is_waited_for_not_failed() {
    // SAFETY: plain syscall, result checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: freshly created fd.
    let efd = EventFd::from_owned(unsafe { OwnedFd::from_raw_fd(raw) });
    let notifier = efd.notifier();
    block_on(async move {
        let reader = spawn_local(async move { efd.read().await });
        yield_now().await;
        yield_now().await;
        notifier.notify().unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), 1);
    })
    .unwrap();
}

#[test]
fn eventfd_notified_from_another_thread_wakes_the_shard() {
    let efd = EventFd::new().unwrap();
    let notifier = efd.notifier();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        notifier.notify().unwrap();
    });
    let v = block_on(async move { efd.read().await.unwrap() }).unwrap();
    assert_eq!(v, 1);
    t.join().unwrap();
}

#[test]
fn timerfds_fire_in_deadline_order_on_clock_monotonic() {
    let order = Rc::new(RefCell::new(Vec::new()));
    block_on({
        let order = order.clone();
        async move {
            let start = Instant::now();
            let mut handles = Vec::new();
            // Armed out of order; relative and absolute mixed.
            for (i, ms, absolute) in [(0, 30, false), (1, 10, true), (2, 20, false), (3, 5, true)] {
                let order = order.clone();
                handles.push(spawn_local(async move {
                    let t = TimerFd::new().unwrap();
                    let d = Duration::from_millis(ms);
                    if absolute {
                        t.set(TimerSpec::At(start + d)).unwrap();
                    } else {
                        t.set(TimerSpec::After(d)).unwrap();
                    }
                    assert_eq!(t.wait().await.unwrap(), 1);
                    // Never early: the deadline is a lower bound.
                    assert!(start.elapsed() >= d, "timer {i} fired before its deadline");
                    order.borrow_mut().push(i);
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
        }
    })
    .unwrap();
    assert_eq!(*order.borrow(), vec![3, 1, 2, 0]);
}

#[test]
fn periodic_timer_counts_expirations_missed_while_not_reading() {
    block_on(async {
        let t = TimerFd::every(Duration::from_millis(1)).unwrap();
        assert!(t.wait().await.unwrap() >= 1);
        // Hold the shard: expirations accumulate in the timerfd.
        std::thread::sleep(Duration::from_millis(5));
        assert!(t.wait().await.unwrap() >= 4);
        t.set(TimerSpec::Disarmed).unwrap();
    })
    .unwrap();
}

#[test]
fn absolute_deadline_in_the_past_fires_at_once() {
    block_on(async {
        let t = TimerFd::new().unwrap();
        t.set(TimerSpec::At(Instant::now() - Duration::from_secs(1)))
            .unwrap();
        assert_eq!(t.wait().await.unwrap(), 1);
    })
    .unwrap();
}

#[test]
fn timeout_cancels_a_read_that_never_completes() {
    block_on(async {
        let efd = EventFd::new().unwrap();
        let r = reactor::time::timeout(Duration::from_millis(5), efd.read()).await;
        assert!(r.is_err());
        // Let the cancellation complete; the slab must be empty again.
        for _ in 0..100 {
            if stats().unwrap().ops_in_flight == 0 {
                break;
            }
            yield_now().await;
            reactor::time::sleep(Duration::from_micros(100))
                .await
                .unwrap();
        }
        assert_eq!(stats().unwrap().ops_in_flight, 0);
    })
    .unwrap();
}

fn socketpair() -> (AsyncFd, AsyncFd) {
    let (a, b) = UnixStream::pair().unwrap();
    (
        AsyncFd::new(OwnedFd::from(a)),
        AsyncFd::new(OwnedFd::from(b)),
    )
}

#[test]
fn socket_write_all_then_read_round_trips_bytes() {
    block_on(async {
        let (a, b) = socketpair();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            spawn_local(async move {
                let (r, _) = a.write_all(data).await;
                r.unwrap();
            })
        };
        let mut got = Vec::with_capacity(data.len());
        while got.len() < data.len() {
            got.reserve(65536);
            let (r, g) = b.read(got).await;
            got = g;
            assert!(r.unwrap() > 0);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    })
    .unwrap();
}

#[test]
fn sendmsg_passes_file_descriptors_that_recvmsg_receives() {
    block_on(async {
        let (a, b) = socketpair();
        let efd = EventFd::new().unwrap();
        let efd_dup: OwnedFd = {
            // SAFETY: duplicating a live fd.
            let raw = unsafe { libc::dup(efd.as_raw_fd()) };
            // SAFETY: fresh fd from dup.
            unsafe { OwnedFd::from_raw_fd(raw) }
        };
        let (r, _) = a.sendmsg(b"hello".to_vec(), &[efd_dup.as_fd()]).await;
        assert_eq!(r.unwrap(), 5);
        drop(efd_dup); // the kernel already holds its own reference
        let (r, buf) = b.recvmsg(Vec::with_capacity(64), 4).await;
        let msg = r.unwrap();
        assert_eq!(&buf[..msg.len], b"hello");
        assert_eq!(msg.fds.len(), 1);
        // The received fd is the same eventfd: writing it wakes our reader.
        let received = EventFd::from_owned(msg.fds.into_iter().next().unwrap());
        received.notify().unwrap();
        assert_eq!(efd.read().await.unwrap(), 1);
    })
    .unwrap();
}

#[test]
fn recvmsg_reports_peer_close_as_zero_length() {
    block_on(async {
        let (a, b) = socketpair();
        drop(a);
        let (r, _) = b.recvmsg(Vec::with_capacity(16), 2).await;
        assert_eq!(r.unwrap().len, 0);
    })
    .unwrap();
}

#[test]
fn poll_reports_readable() {
    block_on(async {
        let (a, b) = socketpair();
        let (r, _) = a.write(vec![1]).await;
        r.unwrap();
        let ev = b.poll(libc::POLLIN as u32).await.unwrap();
        assert_ne!(ev & libc::POLLIN as u32, 0);
    })
    .unwrap();
}
