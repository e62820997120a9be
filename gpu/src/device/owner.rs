//! The queue owner: one actor on the display shard that owns the virtqueues,
//! the directory of contexts and resources, the scanout table and the fence
//! timelines. Intake (`intake.rs`) pops and routes; completion
//! (`completion.rs`) writes the used ring in the order fences demand.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryAtomic};

use crate::backing::GuestMem;
use crate::fence::FenceTimelines;
use crate::protocol::{ChainLimits, DecodeContext};

use super::directory::Directory;
use super::job::{Done, QueueKind, ShardMsg};
use super::scanout::Scanouts;
use super::{DeviceShared, QueueSetup};

/// A started virtqueue.
pub(super) struct VirtQueue {
    pub queue: Queue,
    pub call: reactor::io::EventFdNotifier,
    pub intake: reactor::AbortHandle,
    /// Used elements were added since the last interrupt decision.
    pub unsignalled: bool,
    /// Inflight tracking (vhost-user `INFLIGHT_SHMFD`), when the transport
    /// gave a region.
    pub log: Option<Box<dyn super::InflightLog>>,
}

/// Counters the owner keeps (read by `Device::stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerStats {
    pub chains: u64,
    pub completed: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
    pub calls: u64,
    /// Chains a previous backend took and this one ran again.
    pub resubmitted: u64,
    pub fences_pending: u64,
    /// Fence timelines that exist (global, rings of live contexts, rings
    /// of destroyed ones still draining).
    pub fence_timelines: u64,
    /// Per-context metric series (fence latency histograms).
    pub context_series: u64,
    pub contexts: u64,
    pub resources: u64,
    pub resource_bytes: u64,
    /// Bytes charged to the guest's memory budget, of every kind.
    pub guest_memory_bytes: u64,
    /// Pixel bytes the renderers copied (transfers, display read-backs).
    pub pixel_bytes_copied: u64,
    /// Commands of flooding contexts the pacer held to its budget.
    pub paced: u64,
}

/// A released completion: (queue, head, len).
pub(super) type Release = (QueueKind, u16, u32);

pub(super) struct Owner {
    pub shared: Arc<DeviceShared>,
    pub generation: u64,
    pub mem: GuestMemoryAtomic<GuestMem>,
    pub queues: [Option<VirtQueue>; 2],
    pub directory: Directory,
    pub scanouts: Scanouts,
    pub timelines: FenceTimelines<Release>,
    pub decode: DecodeContext,
    pub chain_limits: ChainLimits,
    pub done_tx: reactor::Sender<Done>,
    pub stats: OwnerStats,
    pub released: Vec<Release>,
    pub watch: super::watch::Watch,
    /// Commands routed to shards and not done yet, per context.
    pub routed: std::collections::HashMap<u32, usize>,
    /// Queues whose intake stopped, waiting for their commands in flight.
    pub stopping: Vec<(QueueKind, std::sync::mpsc::Sender<Option<u16>>)>,
    /// `Drain` requests waiting for nothing in flight.
    pub drains: Vec<std::sync::mpsc::Sender<bool>>,
    /// Commands waiting for their context's in-flight slot, in order, and
    /// commands without a context waiting behind them (`backlog.rs`).
    pub parked: super::backlog::Backlogs,
    /// Display queries to answer once the VMM's first view is known
    /// (`DisplaySink::vmm_view_pending`); intake spawns their waits.
    pub held_display: Vec<super::intake::HeldQuery>,
    /// Pacing of flooding contexts (`intake::Pacer`).
    pub pacer: super::intake::Pacer,
}

/// Control messages from the `Device` handle.
pub(super) enum OwnerCmd {
    SetFeatures(u64),
    StartQueue {
        kind: QueueKind,
        setup: QueueSetup,
        kick: reactor::io::EventFd,
        call: reactor::io::EventFdNotifier,
        resume: Option<super::QueueResume>,
        reply: std::sync::mpsc::Sender<Result<(), String>>,
    },
    /// Stop taking chains from a queue, let the ones taken complete (at
    /// most `drain`), then detach it; answers its next avail index.
    StopQueue {
        kind: QueueKind,
        drain: std::time::Duration,
        reply: std::sync::mpsc::Sender<Option<u16>>,
    },
    /// Answer once nothing taken from any queue is in flight (at most
    /// `timeout`); `true` when drained. Intake keeps running.
    Drain {
        timeout: std::time::Duration,
        reply: std::sync::mpsc::Sender<bool>,
    },
    Reset(std::sync::mpsc::Sender<()>),
    Stats(std::sync::mpsc::Sender<OwnerStats>),
    /// Prometheus text of the owner's metrics.
    Metrics(std::sync::mpsc::Sender<String>),
}

pub(super) type OwnerRef = Rc<RefCell<Owner>>;

/// The owner actor: handles control messages; spawns intake and completion.
pub(super) async fn run(
    shared: Arc<DeviceShared>,
    mem: GuestMemoryAtomic<GuestMem>,
    mut ctl: reactor::Receiver<OwnerCmd>,
) {
    let (done_tx, done_rx) = reactor::channel::<Done>();
    let owner = Rc::new(RefCell::new(Owner::new(shared, mem, done_tx)));
    let completion = {
        let owner = owner.clone();
        reactor::spawn_local_named("completion", super::completion::run(owner, done_rx))
    };
    let watchdog = owner
        .borrow()
        .shared
        .config
        .stall_warn
        .map(|t| reactor::spawn_local_named("stall-watchdog", watchdog(owner.clone(), t)));
    let trim = reactor::spawn_local_named(
        "allocator-trim",
        allocator_trim(owner.borrow().shared.budget.clone()),
    );
    while let Some(cmd) = ctl.recv().await {
        match cmd {
            OwnerCmd::SetFeatures(f) => owner.borrow_mut().decode.features = f,
            OwnerCmd::StartQueue {
                kind,
                setup,
                kick,
                call,
                resume,
                reply,
            } => {
                let r = start_queue(&owner, kind, setup, kick, call, resume);
                let _ = reply.send(r);
            }
            OwnerCmd::StopQueue { kind, drain, reply } => stop_queue(&owner, kind, drain, reply),
            OwnerCmd::Drain { timeout, reply } => {
                let drained = owner.borrow().watch.in_flight_on(None) == 0;
                if drained {
                    let _ = reply.send(true);
                } else {
                    owner.borrow_mut().drains.push(reply);
                    let o = owner.clone();
                    reactor::spawn_local_named("drain-deadline", async move {
                        let _ = reactor::time::sleep(timeout).await;
                        o.borrow_mut().finish_drains(false);
                    });
                }
            }
            OwnerCmd::Reset(reply) => {
                owner.borrow_mut().reset();
                let _ = reply.send(());
            }
            OwnerCmd::Metrics(reply) => {
                let _ = reply.send(owner.borrow().metrics());
            }
            OwnerCmd::Stats(reply) => {
                let o = owner.borrow();
                let mut s = o.stats;
                s.fences_pending = o.timelines.pending() as u64;
                s.fence_timelines = o.timelines.count() as u64;
                s.context_series = o.watch.series() as u64;
                let (contexts, resources) = o.directory.counts();
                s.contexts = contexts as u64;
                s.resources = resources as u64;
                s.resource_bytes = o.directory.bytes_in_use();
                s.guest_memory_bytes = o.shared.budget.in_use();
                s.pixel_bytes_copied = o.shared.pixel_bytes_copied.load(Ordering::Relaxed);
                let _ = reply.send(s);
            }
        }
    }
    let mut o = owner.borrow_mut();
    o.stop_queue(QueueKind::Control);
    o.stop_queue(QueueKind::Cursor);
    drop(o);
    drop(completion);
    drop(watchdog);
    drop(trim);
}

/// Bytes of the guest's objects freed after which the allocator is asked
/// to give its free pages back.
const TRIM_AFTER_FREED: u64 = 8 << 20;

/// Once a second, if the guest has freed at least [`TRIM_AFTER_FREED`] of
/// what it was charged since the last time, or freed anything since then
/// and nothing in the last second: `malloc_trim`. The guest's
/// images, blobs' bookkeeping and command buffers below the mmap threshold
/// come from glibc's heaps (one per thread that allocated them), which give
/// memory back only from their top; freed blocks in the middle stay
/// resident. 1,000,000 hostile commands left the daemon 25% above its
/// start after the guest had destroyed everything; trimmed, within 6%
/// (`gpu/tests/daemon_hostile.rs`). At most one trim a second, and only
/// after the guest gave memory back, so a guest that frees nothing never
/// pays for it.
async fn allocator_trim(budget: Arc<super::budget::GuestBudget>) {
    let Ok(timer) = reactor::io::TimerFd::every(std::time::Duration::from_secs(1)) else {
        return;
    };
    let mut trimmed_at = budget.freed();
    let mut last_tick = trimmed_at;
    while timer.wait().await.is_ok() {
        let freed = budget.freed();
        // Freeing for a while (a long teardown), or done freeing.
        let quiet = freed == last_tick && freed != trimmed_at;
        last_tick = freed;
        if quiet || freed.wrapping_sub(trimmed_at) >= TRIM_AFTER_FREED {
            trimmed_at = freed;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim takes an integer and returns free pages of
            // the allocator's heaps to the kernel; no memory in use moves.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Logs commands in flight past `threshold`, checking twice per threshold
/// on a CLOCK_MONOTONIC timerfd. Diagnostic only: nothing completes here.
async fn watchdog(owner: OwnerRef, threshold: std::time::Duration) {
    let period = (threshold / 2).max(std::time::Duration::from_millis(1));
    let Ok(timer) = reactor::io::TimerFd::every(period) else {
        return;
    };
    while timer.wait().await.is_ok() {
        owner.borrow_mut().watch.check(threshold);
    }
}

/// Stops a queue's intake now; detaches it when the commands taken from it
/// have completed, or after `drain`, whichever comes first.
fn stop_queue(
    owner: &OwnerRef,
    kind: QueueKind,
    drain: std::time::Duration,
    reply: std::sync::mpsc::Sender<Option<u16>>,
) {
    let mut o = owner.borrow_mut();
    let Some(q) = o.queues[kind as usize].as_ref() else {
        let _ = reply.send(None);
        return;
    };
    q.intake.abort();
    if o.watch.in_flight_on(Some(kind)) == 0 || drain.is_zero() {
        let _ = reply.send(o.stop_queue(kind));
        return;
    }
    o.stopping.push((kind, reply));
    let owner = owner.clone();
    reactor::spawn_local_named("stop-deadline", async move {
        let _ = reactor::time::sleep(drain).await;
        let mut o = owner.borrow_mut();
        if let Some(i) = o.stopping.iter().position(|(k, _)| *k == kind) {
            let (_, reply) = o.stopping.remove(i);
            let _ = reply.send(o.stop_queue(kind));
        }
    });
}

fn start_queue(
    owner: &OwnerRef,
    kind: QueueKind,
    setup: QueueSetup,
    kick: reactor::io::EventFd,
    call: reactor::io::EventFdNotifier,
    resume: Option<super::QueueResume>,
) -> Result<(), String> {
    let (log, resubmit) = match resume {
        Some(r) => (Some(r.log), r.resubmit),
        None => (None, Vec::new()),
    };
    let mut queue =
        Queue::new(setup.size).map_err(|e| format!("queue size {}: {e:?}", setup.size))?;
    queue
        .try_set_desc_table_address(GuestAddress(setup.desc_table))
        .map_err(|e| format!("descriptor table: {e:?}"))?;
    queue
        .try_set_avail_ring_address(GuestAddress(setup.avail_ring))
        .map_err(|e| format!("avail ring: {e:?}"))?;
    queue
        .try_set_used_ring_address(GuestAddress(setup.used_ring))
        .map_err(|e| format!("used ring: {e:?}"))?;
    queue.set_event_idx(setup.event_idx);
    queue.set_next_avail(setup.next_avail);
    queue.set_next_used(setup.next_used);
    queue.set_ready(true);
    let mut o = owner.borrow_mut();
    o.stop_queue(kind);
    let (task, intake) =
        reactor::abortable(super::intake::run(owner.clone(), kind, kick, resubmit));
    reactor::spawn_local_named("intake", task);
    o.queues[kind as usize] = Some(VirtQueue {
        queue,
        call,
        intake,
        unsignalled: false,
        log,
    });
    Ok(())
}

impl Owner {
    fn new(
        shared: Arc<DeviceShared>,
        mem: GuestMemoryAtomic<GuestMem>,
        done_tx: reactor::Sender<Done>,
    ) -> Self {
        let cfg = &shared.config;
        let decode = DecodeContext {
            features: 0,
            num_scanouts: cfg.num_scanouts,
            num_capsets: shared.info.capsets.len() as u32,
            limits: cfg.limits,
        };
        Owner {
            generation: 0,
            mem,
            queues: [None, None],
            directory: Directory::new(shared.shards.len(), shared.budget.clone()),
            scanouts: Scanouts::new(cfg.num_scanouts, cfg.width, cfg.height),
            timelines: FenceTimelines::default(),
            chain_limits: ChainLimits::for_limits(&cfg.limits),
            decode,
            done_tx,
            stats: OwnerStats::default(),
            released: Vec::new(),
            watch: super::watch::Watch::default(),
            routed: Default::default(),
            stopping: Vec::new(),
            drains: Vec::new(),
            parked: Default::default(),
            held_display: Vec::new(),
            pacer: Default::default(),
            shared,
        }
    }

    /// Detaches a queue at once; returns its next avail index. Completions
    /// of commands still in flight on it are dropped from then on.
    fn stop_queue(&mut self, kind: QueueKind) -> Option<u16> {
        let q = self.queues[kind as usize].take()?;
        q.intake.abort();
        let left = self.watch.in_flight_on(Some(kind));
        if left > 0 {
            tracing::error!(queue = ?kind, commands = left, "queue stopped with commands in flight; their completions are dropped");
        }
        Some(q.queue.next_avail())
    }

    /// Called after completions: finishes stops and drains that were
    /// waiting for their commands.
    pub(super) fn check_quiesced(&mut self) {
        let waiting = std::mem::take(&mut self.stopping);
        for (kind, reply) in waiting {
            if self.watch.in_flight_on(Some(kind)) == 0 {
                let _ = reply.send(self.stop_queue(kind));
            } else {
                self.stopping.push((kind, reply));
            }
        }
        if !self.drains.is_empty() && self.watch.in_flight_on(None) == 0 {
            self.finish_drains(true);
        }
    }

    fn finish_drains(&mut self, drained: bool) {
        for reply in self.drains.drain(..) {
            let _ = reply.send(drained);
        }
    }

    /// Device reset: forget everything the guest created; completions of
    /// commands still in flight are dropped (their generation is stale).
    fn reset(&mut self) {
        for (kind, reply) in std::mem::take(&mut self.stopping) {
            let _ = reply.send(
                self.queues[kind as usize]
                    .as_ref()
                    .map(|q| q.queue.next_avail()),
            );
        }
        self.finish_drains(false);
        self.stop_queue(QueueKind::Control);
        self.stop_queue(QueueKind::Cursor);
        self.generation += 1;
        let cfg = &self.shared.config;
        self.directory = Directory::new(self.shared.shards.len(), self.shared.budget.clone());
        self.scanouts = Scanouts::new(cfg.num_scanouts, cfg.width, cfg.height);
        self.timelines = FenceTimelines::default();
        self.stats.in_flight = 0;
        // Every context is gone, and with it its metrics.
        self.watch.clear();
        self.routed.clear();
        self.parked.clear();
        self.pacer = Default::default();
        for s in &self.shared.shards {
            let _ = s.tx.send(ShardMsg::Reset);
        }
        self.shared.blob.reset();
        for i in 0..self.scanouts.count() {
            self.shared.display.scanout(i, None);
        }
    }

    /// Prometheus text: counters, gauges, per-context fence latency.
    fn metrics(&self) -> String {
        use std::fmt::Write;
        let s = &self.stats;
        let mut out = String::new();
        let (contexts, resources) = self.directory.counts();
        for (name, help, kind, v) in [
            (
                "chains_total",
                "Descriptor chains popped.",
                "counter",
                s.chains,
            ),
            (
                "completed_total",
                "Used elements written.",
                "counter",
                s.completed,
            ),
            (
                "errors_total",
                "Commands answered with an error.",
                "counter",
                s.errors,
            ),
            (
                "interrupts_total",
                "Call eventfd writes.",
                "counter",
                s.calls,
            ),
            (
                "resubmitted_total",
                "Chains a previous backend took and never completed, run again after a reconnect.",
                "counter",
                s.resubmitted,
            ),
            (
                "fences_pending",
                "Fenced commands waiting for release.",
                "gauge",
                self.timelines.pending() as u64,
            ),
            (
                "fence_timelines",
                "Fence timelines: the global one and the rings of live contexts (and of destroyed ones until they drain).",
                "gauge",
                self.timelines.count() as u64,
            ),
            ("contexts", "Live contexts.", "gauge", contexts as u64),
            ("resources", "Live resources.", "gauge", resources as u64),
            (
                "resource_bytes",
                "Host memory charged to resources.",
                "gauge",
                self.directory.bytes_in_use(),
            ),
            (
                "guest_memory_bytes",
                "Host memory charged to the guest's budget (--max-guest-memory): resources, contexts, backing entries, blobs, held command buffers, flush pixel buffers.",
                "gauge",
                self.shared.budget.in_use(),
            ),
            (
                "guest_memory_limit_bytes",
                "The guest's memory budget (--max-guest-memory).",
                "gauge",
                self.shared.budget.limit(),
            ),
            (
                "pixel_bytes_copied_total",
                "Pixel bytes copied by the renderers (transfers into host images, read-backs for the display).",
                "counter",
                self.shared.pixel_bytes_copied.load(Ordering::Relaxed),
            ),
            (
                "paced_total",
                "Commands of flooding contexts held to the pacer's budget while lighter contexts were active.",
                "counter",
                s.paced,
            ),
        ] {
            let _ = writeln!(out, "# HELP gpu_reactor_{name} {help}");
            let _ = writeln!(out, "# TYPE gpu_reactor_{name} {kind}");
            let _ = writeln!(out, "gpu_reactor_{name} {v}");
        }
        self.watch.render(&mut out);
        self.shared.renderer.metrics(&mut out);
        out
    }

    /// Shards that may host contexts and resources.
    pub fn candidates(&self) -> &[usize] {
        &self.shared.placement
    }
}
