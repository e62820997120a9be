//! Dropping futures with operations in the kernel: the kernel's memory stays
//! alive until the completion, and nothing completes the wrong future.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use reactor::io::{AsyncFd, EventFd};
use reactor::{block_on, spawn_local, stats, yield_now};

async fn wait_until_no_ops_in_flight() {
    for _ in 0..1000 {
        if stats().unwrap().ops_in_flight == 0 {
            return;
        }
        yield_now().await;
        reactor::time::sleep(Duration::from_micros(50))
            .await
            .unwrap();
    }
    panic!("ops still in flight: {:?}", stats());
}

#[test]
fn dropped_eventfd_read_is_cancelled_and_does_not_consume_the_next_value() {
    block_on(async {
        let efd = EventFd::new().unwrap();
        let task = {
            let efd = efd.clone();
            spawn_local(async move { efd.read().await })
        };
        yield_now().await;
        assert_eq!(stats().unwrap().ops_in_flight, 1);
        drop(task); // detaches; the task is still alive
                    // Cancel by dropping the future itself: race it against a timeout.
        let r = reactor::time::timeout(Duration::from_millis(1), efd.read()).await;
        assert!(r.is_err());
        efd.notify().unwrap();
        // One of the two reads (the detached task's) takes the value; the
        // cancelled one must not.
        wait_until_no_ops_in_flight().await;
        efd.notify().unwrap();
        assert_eq!(efd.read().await.unwrap(), 1);
    })
    .unwrap();
}

#[test]
fn dropping_many_pending_reads_keeps_their_buffers_until_completion() {
    block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let a = AsyncFd::new(OwnedFd::from(a));
        let b = AsyncFd::new(OwnedFd::from(b));
        for _ in 0..64 {
            let mut fut = Box::pin(b.read(Vec::with_capacity(4096)));
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            drop(fut); // buffer moves into the slab, cancel submitted
        }
        // Data written now must not land in any freed buffer: it is read by
        // the next live read, whole.
        let (r, _) = a.write(vec![7u8; 100]).await;
        r.unwrap();
        wait_until_no_ops_in_flight().await;
        let (r, buf) = b.read(Vec::with_capacity(4096)).await;
        assert_eq!(r.unwrap(), 100);
        assert!(buf.iter().all(|&x| x == 7));
    })
    .unwrap();
}

#[test]
fn dropped_recvmsg_does_not_swallow_fds_or_bytes() {
    block_on(async {
        let (a, b) = UnixStream::pair().unwrap();
        let a = AsyncFd::new(OwnedFd::from(a));
        let b = AsyncFd::new(OwnedFd::from(b));
        let r = reactor::time::timeout(
            Duration::from_millis(1),
            b.recvmsg(Vec::with_capacity(64), 4),
        )
        .await;
        assert!(r.is_err());
        wait_until_no_ops_in_flight().await;
        let (r, _) = a.write(b"abc".to_vec()).await;
        r.unwrap();
        let (r, buf) = b.recvmsg(Vec::with_capacity(64), 4).await;
        assert_eq!(r.unwrap().len, 3);
        assert_eq!(&buf[..], b"abc");
    })
    .unwrap();
}

#[test]
fn block_on_returning_with_ops_in_flight_drains_them() {
    // The spawned task's read is still in the kernel when the main future
    // returns: teardown must cancel it and wait, not free its buffer.
    let efd = EventFd::new().unwrap();
    let e2 = efd.clone();
    block_on(async move {
        spawn_local(async move {
            let _ = e2.read().await;
        });
        yield_now().await;
        assert_eq!(stats().unwrap().ops_in_flight, 1);
    })
    .unwrap();
    // Nothing left reading: a write stays in the counter.
    efd.notify().unwrap();
    let v = block_on(async move { efd.read().await.unwrap() }).unwrap();
    assert_eq!(v, 1);
}
