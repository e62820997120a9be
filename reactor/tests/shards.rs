//! Shards, cross-shard messages, stalls, shutdown and memory bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor::io::EventFd;
use reactor::{block_on, channel, current_shard, spawn_local, stats, Canceled, Reactor};

#[test]
fn spawn_runs_on_the_chosen_shard() {
    let r = Reactor::builder().shards(2).pin(true).build().unwrap();
    for i in 0..2 {
        let got = r.shard(i).spawn(|| async { current_shard() }).join();
        assert_eq!(got, Ok(Some(i)));
    }
    r.shutdown();
}

#[test]
fn cross_shard_messages_under_contention_arrive_once_and_in_order_per_sender() {
    const SENDERS: u64 = 4;
    const PER_SENDER: u64 = 50_000;
    let r = Reactor::builder().shards(2).build().unwrap();
    let (tx, mut rx) = channel::<(u64, u64)>();
    let receiver = r.shard(1).spawn(move || async move {
        let mut next = [0u64; SENDERS as usize];
        let mut total = 0u64;
        while let Some((sender, seq)) = rx.recv().await {
            assert_eq!(seq, next[sender as usize], "sender {sender} out of order");
            next[sender as usize] += 1;
            total += 1;
        }
        total
    });
    // Two senders on shard 0, two on plain threads.
    let mut joins = Vec::new();
    for s in 0..SENDERS {
        let tx = tx.clone();
        if s < 2 {
            let h = r.shard(0).spawn(move || async move {
                for i in 0..PER_SENDER {
                    tx.send((s, i)).unwrap();
                    if i % 1000 == 0 {
                        reactor::yield_now().await;
                    }
                }
            });
            joins.push(std::thread::spawn(move || h.join().unwrap()));
        } else {
            joins.push(std::thread::spawn(move || {
                for i in 0..PER_SENDER {
                    tx.send((s, i)).unwrap();
                }
            }));
        }
    }
    drop(tx);
    for j in joins {
        j.join().unwrap();
    }
    assert_eq!(receiver.join(), Ok(SENDERS * PER_SENDER));
    r.shutdown();
}

#[test]
fn waking_a_task_from_another_shard_rings_its_doorbell() {
    let r = Reactor::builder().shards(2).build().unwrap();
    let efd = EventFd::new().unwrap();
    let notifier = efd.notifier();
    let waiter = r
        .shard(1)
        .spawn(move || async move { efd.read().await.unwrap() });
    std::thread::sleep(Duration::from_millis(10)); // shard 1 goes to sleep
    r.shard(0)
        .spawn(move || async move { notifier.notify().unwrap() })
        .join()
        .unwrap();
    assert_eq!(waiter.join(), Ok(1));
}

#[test]
fn stall_detector_reports_a_task_that_blocks_its_shard() {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = {
        let reports = reports.clone();
        Reactor::builder()
            .shards(1)
            .stall_threshold(Some(Duration::from_millis(5)))
            .on_stall(move |rep| reports.lock().unwrap().push(rep.clone()))
            .build()
            .unwrap()
    };
    r.shard(0)
        .spawn(|| async {
            reactor::spawn_local_named("well-behaved", async {
                reactor::time::sleep(Duration::from_millis(1))
                    .await
                    .unwrap();
            })
            .await
            .unwrap();
            reactor::spawn_local_named("blocker", async {
                std::thread::sleep(Duration::from_millis(20));
            })
            .await
            .unwrap();
        })
        .join()
        .unwrap();
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].task, "blocker");
    assert!(reports[0].duration >= Duration::from_millis(20));
}

#[test]
fn shutdown_drops_pending_tasks_and_later_spawns_resolve_canceled() {
    let r = Reactor::builder().shards(2).build().unwrap();
    let efd = EventFd::new().unwrap();
    let pending = r.shard(0).spawn(move || async move { efd.read().await });
    let handle = r.shard(1).clone();
    // Make sure the read is in the kernel before shutting down.
    r.shard(0)
        .spawn(|| async { reactor::yield_now().await })
        .join()
        .unwrap();
    r.shutdown(); // cancels and drains the read, joins the threads
    assert_eq!(pending.join().map(|_| ()), Err(Canceled));
    assert_eq!(handle.spawn(|| async { 1 }).join(), Err(Canceled));
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn hundred_thousand_timers_do_not_grow_memory() {
    const TOTAL: usize = 100_000;
    const CONCURRENT: usize = 500;
    block_on(async {
        let fired = Arc::new(AtomicU64::new(0));
        let run_batch = |fired: Arc<AtomicU64>| async move {
            let mut hs = Vec::with_capacity(CONCURRENT);
            for i in 0..CONCURRENT {
                let fired = fired.clone();
                hs.push(spawn_local(async move {
                    reactor::time::sleep(Duration::from_micros(50 + (i as u64 % 7) * 10))
                        .await
                        .unwrap();
                    fired.fetch_add(1, Ordering::Relaxed);
                }));
            }
            for h in hs {
                h.await.unwrap();
            }
        };
        // Warm up: allocator arenas, slab capacity.
        for _ in 0..4 {
            run_batch(fired.clone()).await;
        }
        let warm = stats().unwrap();
        let rss_before = rss_kib();
        for _ in 0..TOTAL / CONCURRENT {
            run_batch(fired.clone()).await;
        }
        let after = stats().unwrap();
        let rss_after = rss_kib();
        assert_eq!(
            fired.load(Ordering::Relaxed),
            (TOTAL + 4 * CONCURRENT) as u64
        );
        assert_eq!(after.ops_in_flight, 0);
        assert_eq!(after.tasks, 0);
        // Slots are reused: capacity is set by concurrency, not by count.
        assert_eq!(after.ops_capacity, warm.ops_capacity);
        assert_eq!(after.tasks_capacity, warm.tasks_capacity);
        assert!(
            rss_after <= rss_before + 2048,
            "RSS grew from {rss_before} KiB to {rss_after} KiB"
        );
    })
    .unwrap();
}

/// The scheduler slice the calling thread has (sched_getattr's runtime).
fn slice_of_this_thread() -> u64 {
    // struct sched_attr as the kernel lays it out (56 bytes).
    let mut attr = [0u64; 7];
    // SAFETY: sched_getattr writes at most `size` (56) bytes into `attr`,
    // which is 56 bytes long and lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
            0,
        )
    };
    assert_eq!(rc, 0, "sched_getattr: {}", std::io::Error::last_os_error());
    // size u32, policy u32 | flags u64 | nice i32, priority u32 | runtime
    attr[3]
}

/// Linux 6.12 added custom slices for SCHED_OTHER threads; before, the
/// kernel takes the call and keeps its own slice.
fn kernel_has_custom_slices() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (6, 12)
}

#[test]
fn shard_threads_get_the_scheduler_slice_they_ask_for() {
    let slice = Duration::from_micros(300);
    let r = Reactor::builder()
        .shards(2)
        .latency_slice(Some(slice))
        .build()
        .unwrap();
    let plain = Reactor::builder().shards(1).build().unwrap();
    let asked = r
        .shard(1)
        .spawn(|| async { slice_of_this_thread() })
        .join()
        .unwrap();
    let default = plain
        .shard(0)
        .spawn(|| async { slice_of_this_thread() })
        .join()
        .unwrap();
    if kernel_has_custom_slices() {
        assert_eq!(asked, 300_000);
        assert_ne!(
            default, 300_000,
            "a reactor that asks nothing keeps the kernel's slice"
        );
    }
    // Any thread may ask too (loadgen's interrupt thread does).
    std::thread::spawn(move || {
        reactor::request_slice(Duration::from_micros(200)).unwrap();
        if kernel_has_custom_slices() {
            assert_eq!(slice_of_this_thread(), 200_000);
        }
    })
    .join()
    .unwrap();
}
