//! A shard: one thread, one io_uring, a slab of tasks and a slab of
//! in-flight operations, and the run loop that drives them.

use std::any::Any;
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use crate::doorbell::{Message, Remote};
use crate::oneshot::JoinHandle;
use crate::op::{self, Completion, OpTable, UD_CANCEL, UD_DOORBELL};
use crate::stall::{StallDetector, StallHook, StallReport};
use crate::task::{self, LocalFuture, TaskRef, TaskTable};

/// How many ready tasks run before the ring is looked at again.
const TASK_BUDGET: usize = 128;

/// Counters of one shard, read with [`stats`] on that shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub shard: usize,
    pub tasks: usize,
    pub tasks_capacity: usize,
    pub ops_in_flight: usize,
    pub ops_capacity: usize,
    /// Completions whose generation did not match their slot.
    pub stale_completions: u64,
    /// Task polls longer than the stall threshold.
    pub stalls: u64,
    pub polls: u64,
    /// Times the shard went to sleep in `io_uring_enter`.
    pub sleeps: u64,
}

#[derive(Clone)]
struct Config {
    ring_entries: u32,
    spin: Option<Duration>,
    stall_threshold: Option<Duration>,
    on_stall: Option<StallHook>,
    slice: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ring_entries: 256,
            spin: None,
            stall_threshold: Some(Duration::from_millis(10)),
            on_stall: None,
            slice: None,
        }
    }
}

pub(crate) struct Core {
    shard: usize,
    ring: RefCell<IoUring>,
    ops: RefCell<OpTable>,
    tasks: RefCell<TaskTable>,
    ready: RefCell<VecDeque<TaskRef>>,
    main_ready: Cell<bool>,
    remote: Arc<Remote>,
    /// Kernel writes the doorbell eventfd's 8 bytes here.
    doorbell_buf: Box<UnsafeCell<u64>>,
    doorbell_armed: Cell<bool>,
    doorbell_fired: Cell<bool>,
    closing: Cell<bool>,
    shutdown: Cell<bool>,
    cqes: RefCell<Vec<(u64, Completion)>>,
    messages: RefCell<Vec<Message>>,
    stall: StallDetector,
    spin: Option<Duration>,
    polls: Cell<u64>,
    sleeps: Cell<u64>,
}

thread_local! {
    static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

fn current() -> Option<Rc<Core>> {
    CORE.with(|c| c.borrow().clone())
}

fn with_current<R>(f: impl FnOnce(&Rc<Core>) -> R) -> Option<R> {
    CORE.with(|c| c.borrow().as_ref().map(f))
}

/// The index of the shard running the caller, if any.
pub fn current_shard() -> Option<usize> {
    with_current(|c| c.shard)
}

/// The counters of the shard running the caller.
pub fn stats() -> Option<ShardStats> {
    with_current(|c| {
        let tasks = c.tasks.borrow();
        let ops = c.ops.borrow();
        ShardStats {
            shard: c.shard,
            tasks: tasks.len(),
            tasks_capacity: tasks.capacity(),
            ops_in_flight: ops.len(),
            ops_capacity: ops.capacity(),
            stale_completions: ops.stale,
            stalls: c.stall.count.get(),
            polls: c.polls.get(),
            sleeps: c.sleeps.get(),
        }
    })
}

pub(crate) fn schedule_if_local(uid: usize, task: TaskRef) -> bool {
    with_current(|c| {
        if c.remote.uid != uid {
            return false;
        }
        c.schedule(task);
        true
    })
    .unwrap_or(false)
}

pub(crate) fn spawn_on_current(name: &'static str, fut: LocalFuture) {
    let Some(core) = current() else {
        panic!("reactor::spawn_local called outside a reactor shard");
    };
    core.spawn(name, fut);
}

pub(crate) fn submit_op(entry: squeue::Entry) -> io::Result<(usize, u32)> {
    let Some(core) = current() else {
        return Err(io::Error::other("reactor I/O used outside a reactor shard"));
    };
    let (key, gen) = core.ops.borrow_mut().insert();
    match core.push(&entry.user_data(op::user_data(key, gen))) {
        Ok(()) => Ok((key, gen)),
        Err(e) => {
            core.ops.borrow_mut().forget(key);
            Err(e)
        }
    }
}

/// Queues a raw SQE with a caller-chosen user_data (tests of stale
/// completions).
#[cfg(test)]
pub(crate) fn push_raw(entry: squeue::Entry) -> io::Result<()> {
    match current() {
        Some(core) => core.push(&entry),
        None => Err(io::Error::other("not on a shard")),
    }
}

pub(crate) fn with_ops<R>(f: impl FnOnce(&mut OpTable) -> R) -> R {
    match current() {
        Some(core) => f(&mut core.ops.borrow_mut()),
        None => panic!("reactor Op polled outside its shard"),
    }
}

/// Moves a dropped op's memory into its slot and cancels it.
pub(crate) fn orphan_op(key: usize, gen: u32, keep: Box<dyn Any>) {
    let Some(core) = current() else {
        // The shard is being torn down under us: the kernel may still write
        // into `keep`, so leaking it is the only sound choice.
        std::mem::forget(keep);
        return;
    };
    let in_kernel = core.ops.borrow_mut().orphan(key, gen, keep);
    if in_kernel {
        let cancel = opcode::AsyncCancel::new(op::user_data(key, gen))
            .build()
            .user_data(UD_CANCEL);
        // If even the cancel cannot be queued, the op still completes on its
        // own (or at shutdown, which cancels everything left).
        let _ = core.push(&cancel);
    }
}

impl Core {
    fn new(shard: usize, remote: Arc<Remote>, cfg: &Config) -> io::Result<Core> {
        Ok(Core {
            shard,
            ring: RefCell::new(new_ring(cfg.ring_entries)?),
            ops: RefCell::default(),
            tasks: RefCell::default(),
            ready: RefCell::default(),
            main_ready: Cell::new(true),
            remote,
            doorbell_buf: Box::new(UnsafeCell::new(0)),
            doorbell_armed: Cell::new(false),
            doorbell_fired: Cell::new(false),
            closing: Cell::new(false),
            shutdown: Cell::new(false),
            cqes: RefCell::default(),
            messages: RefCell::default(),
            stall: StallDetector::new(cfg.stall_threshold, cfg.on_stall.clone()),
            spin: cfg.spin,
            polls: Cell::new(0),
            sleeps: Cell::new(0),
        })
    }

    /// Queues an SQE, flushing the submission queue to the kernel when full.
    fn push(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: the entry's pointers are kept alive by its Op (see the
            // contract of `Op::submit`) or by this Core (doorbell buffer).
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // CQ overflow backlog: the kernel wants completions reaped
                    // first. Reap into our buffer; they are processed later.
                    drop(ring);
                    self.collect_cqes();
                    ring = self.ring.borrow_mut();
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&self, name: &'static str, fut: LocalFuture) {
        let task = self.tasks.borrow_mut().insert(&self.remote, name, fut);
        self.ready.borrow_mut().push_back(task);
    }

    fn schedule(&self, task: TaskRef) {
        if task == TaskRef::MAIN {
            self.main_ready.set(true);
        } else if self.tasks.borrow_mut().mark_queued(task) {
            self.ready.borrow_mut().push_back(task);
        }
    }

    fn poll_task(&self, task: TaskRef) {
        let Some((mut fut, waker, name)) = self.tasks.borrow_mut().begin_poll(task) else {
            return;
        };
        self.polls.set(self.polls.get() + 1);
        let started = self.stall.start();
        let done = fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        self.stall.finish(self.shard, name, started);
        if done {
            self.tasks.borrow_mut().remove(task);
            // Dropped here, outside every borrow: its drop may cancel ops.
            drop(fut);
        } else {
            self.tasks.borrow_mut().end_poll(task, fut);
        }
    }

    fn arm_doorbell(&self) -> io::Result<()> {
        let entry = opcode::Read::new(
            types::Fd(self.remote.fd()),
            self.doorbell_buf.get().cast(),
            8,
        )
        .build()
        .user_data(UD_DOORBELL);
        self.push(&entry)?;
        self.doorbell_armed.set(true);
        Ok(())
    }

    fn collect_cqes(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut out = self.cqes.borrow_mut();
        out.extend(ring.completion().map(|cqe| {
            (
                cqe.user_data(),
                Completion {
                    result: cqe.result(),
                    flags: cqe.flags(),
                },
            )
        }));
    }

    /// Processes reaped completions: wakes their tasks.
    fn dispatch_cqes(&self) -> io::Result<()> {
        let cqes = std::mem::take(&mut *self.cqes.borrow_mut());
        for &(ud, c) in &cqes {
            match ud {
                UD_DOORBELL => {
                    self.doorbell_armed.set(false);
                    self.doorbell_fired.set(true);
                }
                UD_CANCEL => {}
                _ => {
                    let waker = self.ops.borrow_mut().complete(ud, c);
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            }
        }
        // Give the allocation back for the next round.
        let mut buf = self.cqes.borrow_mut();
        if buf.is_empty() {
            let mut cqes = cqes;
            cqes.clear();
            *buf = cqes;
        }
        drop(buf);
        if self.doorbell_fired.replace(false) && !self.closing.get() {
            self.remote.rearm();
            self.arm_doorbell()?;
            self.take_messages();
        }
        Ok(())
    }

    fn take_messages(&self) {
        let mut msgs = std::mem::take(&mut *self.messages.borrow_mut());
        self.remote.take(&mut msgs);
        for m in msgs.drain(..) {
            match m {
                Message::Run(f) => f(),
                Message::Wake(t) => self.schedule(t),
                Message::Shutdown => self.shutdown.set(true),
            }
        }
        *self.messages.borrow_mut() = msgs;
    }

    /// Submits queued SQEs; sleeps for a completion when `idle`.
    fn enter(&self, idle: bool) -> io::Result<()> {
        let cq_ready = |ring: &mut IoUring| !ring.completion().is_empty();
        let mut ring = self.ring.borrow_mut();
        if idle {
            if let Some(spin) = self.spin {
                let deadline = Instant::now() + spin;
                while Instant::now() < deadline {
                    submit_retrying(&ring, 0)?;
                    if cq_ready(&mut ring) {
                        drop(ring);
                        self.collect_cqes();
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
            }
            if !cq_ready(&mut ring) {
                self.sleeps.set(self.sleeps.get() + 1);
                submit_retrying(&ring, 1)?;
            }
        } else {
            submit_retrying(&ring, 0)?;
        }
        drop(ring);
        self.collect_cqes();
        Ok(())
    }

    /// The run loop. With `main`, returns when it completes; otherwise when
    /// a shutdown message arrives.
    fn run(&self, mut main: Option<&mut dyn FnMut(&mut Context<'_>) -> bool>) -> io::Result<()> {
        self.arm_doorbell()?;
        let main_waker = task::waker_for(&self.remote, TaskRef::MAIN);
        loop {
            if self.main_ready.replace(false) {
                if let Some(main) = main.as_mut() {
                    if main(&mut Context::from_waker(&main_waker)) {
                        return Ok(());
                    }
                }
            }
            for _ in 0..TASK_BUDGET {
                let next = self.ready.borrow_mut().pop_front();
                match next {
                    Some(t) => self.poll_task(t),
                    None => break,
                }
            }
            if self.shutdown.get() {
                return Ok(());
            }
            let idle = self.ready.borrow().is_empty() && !self.main_ready.get();
            self.enter(idle)?;
            self.dispatch_cqes()?;
        }
    }

    /// Drops every task, cancels every op still in the kernel and waits for
    /// all their completions, so no memory the kernel may touch is freed early.
    fn teardown(&self) {
        self.closing.set(true);
        loop {
            let futures = self.tasks.borrow_mut().drain();
            self.ready.borrow_mut().clear();
            if futures.is_empty() {
                break;
            }
            drop(futures);
        }
        for m in self.remote.close() {
            drop(m);
        }
        let mut cancels: Vec<u64> = self.ops.borrow().in_kernel();
        if self.doorbell_armed.get() {
            cancels.push(UD_DOORBELL);
        }
        for ud in cancels {
            let entry = opcode::AsyncCancel::new(ud).build().user_data(UD_CANCEL);
            if self.push(&entry).is_err() {
                break;
            }
        }
        while self.ops.borrow().in_kernel_count() > 0 || self.doorbell_armed.get() {
            if self.enter(true).is_err() || self.dispatch_cqes().is_err() {
                break;
            }
        }
    }
}

impl OpTable {
    fn in_kernel_count(&self) -> usize {
        self.in_kernel().len()
    }
}

fn submit_retrying(ring: &IoUring, want: usize) -> io::Result<()> {
    loop {
        match ring.submit_and_wait(want) {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            // CQ overflow backlog: the caller reaps, then comes back.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// One ring per shard. Single-issuer and cooperative task running cut the
/// kernel's cross-CPU work; a kernel without them gets a plain ring.
///
/// The ring accepts only the operations this crate submits ([`RING_OPS`],
/// `IORING_REGISTER_RESTRICTIONS`): io_uring operations bypass seccomp, so
/// a process that sandboxes itself (gpu-reactor) must not be able to open
/// files, sockets or connections through its rings. A ring that cannot be
/// restricted is an error, never an unrestricted ring: restrictions and
/// `IORING_SETUP_R_DISABLED` came with Linux 5.10, so older kernels cannot
/// run the reactor.
fn new_ring(entries: u32) -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(entries)
        .and_then(restrict);
    if let Ok(r) = tuned {
        return Ok(r);
    }
    IoUring::builder()
        .setup_r_disabled()
        .build(entries)
        .and_then(restrict)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "no io_uring restricted to the reactor's operations \
                     (IORING_SETUP_R_DISABLED and IORING_REGISTER_RESTRICTIONS, \
                     Linux 5.10 or later): {e}"
                ),
            )
        })
}

/// Every operation the reactor submits; anything else on a ring fails with
/// `EACCES`. A new kind of op must be added here.
const RING_OPS: [u8; 7] = [
    opcode::Nop::CODE,
    opcode::Read::CODE,
    opcode::Write::CODE,
    opcode::PollAdd::CODE,
    opcode::RecvMsg::CODE,
    opcode::SendMsg::CODE,
    opcode::AsyncCancel::CODE,
];

/// Registers [`RING_OPS`] as the ring's only operations (no SQE flags, no
/// further `io_uring_register` calls), then enables it; with
/// `SINGLE_ISSUER`, the calling thread becomes its submitter.
fn restrict(ring: IoUring) -> io::Result<IoUring> {
    let mut allowed = RING_OPS.map(io_uring::register::Restriction::sqe_op);
    ring.submitter().register_restrictions(&mut allowed)?;
    ring.submitter().register_enable_rings()?;
    Ok(ring)
}

/// Timer slack lets the kernel fire a thread's timers up to 50 µs late to
/// batch wake-ups; fence timers are latency, so a shard asks for none.
fn exact_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Asks the scheduler (EEVDF, Linux 6.12 and later) for time slices of
/// `slice` for the calling thread, which stays SCHED_OTHER at its nice
/// level. A thread with a shorter slice than the one running gets the CPU
/// when it wakes rather than when the running thread's slice (0.75 ms by
/// default) ends: what a thread that sleeps on events and works briefly
/// wants. The kernel clamps it to 0.1..=100 ms; older kernels ignore it.
pub fn request_slice(slice: Duration) -> io::Result<()> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    // SAFETY: getpriority takes integers only.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a live, fully
    // initialised local laid out as the kernel's struct sched_attr.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pin_to(index: usize) {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and sizes.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cpus.is_empty() {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus[index % cpus.len()], &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Configures and starts a [`Reactor`].
#[derive(Clone)]
pub struct Builder {
    shards: usize,
    pin: bool,
    name: String,
    cfg: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            shards: thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            name: "shard".into(),
            cfg: Config::default(),
        }
    }
}

impl Builder {
    /// Number of shard threads (default: one per available core).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }

    /// Pin shard `i` to the `i`-th allowed CPU (modulo their count).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    /// Thread name prefix (`{name}-{i}`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Submission queue size of each ring (default 256).
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.cfg.ring_entries = n.max(8);
        self
    }

    /// Spin on the completion queue for up to `d` before sleeping (default:
    /// never). Trades a core's idle time for wake-up latency.
    pub fn spin(mut self, d: Option<Duration>) -> Self {
        self.cfg.spin = d;
        self
    }

    /// Shard threads ask for scheduler slices of `d` ([`request_slice`];
    /// default `None`: the kernel's).
    pub fn latency_slice(mut self, d: Option<Duration>) -> Self {
        self.cfg.slice = d;
        self
    }

    /// Report task polls longer than `d` (default 10 ms; `None`: off).
    pub fn stall_threshold(mut self, d: Option<Duration>) -> Self {
        self.cfg.stall_threshold = d;
        self
    }

    /// Called for every stall instead of the default `tracing` warning.
    pub fn on_stall(mut self, f: impl Fn(&StallReport) + Send + Sync + 'static) -> Self {
        self.cfg.on_stall = Some(Arc::new(f));
        self
    }

    /// Starts the shard threads.
    pub fn build(self) -> io::Result<Reactor> {
        let mut shards = Vec::with_capacity(self.shards);
        let mut threads = Vec::with_capacity(self.shards);
        for i in 0..self.shards {
            let remote = Arc::new(Remote::new(i)?);
            let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
            let cfg = self.cfg.clone();
            let pin = self.pin;
            let r = remote.clone();
            let t = thread::Builder::new()
                .name(format!("{}-{i}", self.name))
                .spawn(move || {
                    if pin {
                        pin_to(i);
                    }
                    exact_timers();
                    if let Some(s) = cfg.slice {
                        if let Err(e) = request_slice(s) {
                            tracing::debug!("shard {i}: no {s:?} scheduler slice: {e}");
                        }
                    }
                    let core = match Core::new(i, r, &cfg) {
                        Ok(c) => Rc::new(c),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    // A failure is logged inside; the thread just ends.
                    let _ = run_installed(&core, None);
                })?;
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("shard thread died while starting")),
            }
            shards.push(ShardHandle { remote });
            threads.push(t);
        }
        Ok(Reactor { shards, threads })
    }

    /// Runs `fut` on the current thread as a one-shard reactor and returns
    /// its output; tasks it spawned are dropped when it returns.
    ///
    /// # Panics
    /// When called on a thread that already runs a shard.
    pub fn block_on<F: Future>(self, fut: F) -> io::Result<F::Output> {
        if current().is_some() {
            panic!("reactor::block_on called on a shard thread");
        }
        let remote = Arc::new(Remote::new(0)?);
        let core = Rc::new(Core::new(0, remote, &self.cfg)?);
        exact_timers();
        let mut fut = pin!(fut);
        let mut out = None;
        let mut poll_main = |cx: &mut Context<'_>| match fut.as_mut().poll(cx) {
            Poll::Ready(v) => {
                out = Some(v);
                true
            }
            Poll::Pending => false,
        };
        let res = run_installed(&core, Some(&mut poll_main));
        match out {
            Some(v) => Ok(v),
            None => Err(res
                .err()
                .unwrap_or_else(|| io::Error::other("shard stopped before the future completed"))),
        }
    }
}

/// Installs `core` as this thread's shard, runs it, tears it down.
fn run_installed(
    core: &Rc<Core>,
    main: Option<&mut dyn FnMut(&mut Context<'_>) -> bool>,
) -> io::Result<()> {
    CORE.with(|c| *c.borrow_mut() = Some(core.clone()));
    let res = core.run(main);
    if let Err(e) = &res {
        tracing::error!(shard = core.shard, error = %e, "shard run loop failed");
    }
    core.teardown();
    CORE.with(|c| *c.borrow_mut() = None);
    res
}

/// Runs `fut` to completion on the current thread (see [`Builder::block_on`]).
pub fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
    Builder::default().block_on(fut)
}

/// A handle to one shard, usable from any thread.
#[derive(Clone)]
pub struct ShardHandle {
    remote: Arc<Remote>,
}

impl ShardHandle {
    pub fn id(&self) -> usize {
        self.remote.shard
    }

    /// Runs `make()` on the shard and spawns the future it returns there.
    /// The handle resolves to `Canceled` if the shard is gone.
    pub fn spawn<F, Fut>(&self, make: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, handle) = crate::oneshot::pair();
        self.remote.push(Message::Run(Box::new(move || {
            let fut = make();
            spawn_on_current(
                "remote",
                Box::pin(async move {
                    tx.send(fut.await);
                }),
            );
        })));
        handle
    }

    /// Runs `f` on the shard; false when the shard is gone.
    pub fn run(&self, f: impl FnOnce() + Send + 'static) -> bool {
        self.remote.push(Message::Run(Box::new(f)))
    }
}

/// The running shards. Dropping it shuts them down and joins them.
pub struct Reactor {
    shards: Vec<ShardHandle>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Reactor {
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub fn shard(&self, i: usize) -> &ShardHandle {
        &self.shards[i % self.shards.len()]
    }

    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Stops every shard: tasks are dropped, in-flight operations cancelled
    /// and drained, threads joined.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in &self.shards {
            s.remote.push(Message::Shutdown);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;

    /// Submits one SQE on `ring` and returns its CQE's result.
    fn submit_one(ring: &mut IoUring, entry: squeue::Entry) -> i32 {
        // SAFETY: the entries own no buffers (a NUL-terminated static path
        // at most), valid until the completion is reaped below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().unwrap().result()
    }

    #[test]
    fn a_ring_that_cannot_be_restricted_is_an_error_not_an_unrestricted_ring() {
        // Restrictions need a ring made disabled (IORING_SETUP_R_DISABLED):
        // an enabled one refuses them, as a kernel before 5.10 refuses both.
        let plain = IoUring::new(8).unwrap();
        assert!(restrict(plain).is_err());
        // What a shard gets is restricted and enabled: no restriction can
        // be changed any more.
        let ring = new_ring(8).unwrap();
        let mut again = [io_uring::register::Restriction::sqe_op(opcode::Nop::CODE)];
        assert!(ring.submitter().register_restrictions(&mut again).is_err());
    }

    #[test]
    fn a_shard_ring_runs_the_reactors_ops_and_refuses_any_other() {
        let mut ring = new_ring(8).unwrap();
        assert_eq!(submit_one(&mut ring, opcode::Nop::new().build()), 0);
        // Opening a file, making a socket: what a sandboxed process must
        // not get through its rings (seccomp does not see ring ops).
        let path = c"/dev/null";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .flags(libc::O_RDONLY)
            .build();
        assert_eq!(submit_one(&mut ring, open), -libc::EACCES);
        let socket = opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0).build();
        assert_eq!(submit_one(&mut ring, socket), -libc::EACCES);
    }
}
