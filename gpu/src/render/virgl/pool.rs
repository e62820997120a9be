//! Render workers, the device side: the `virgl` renderer as N child
//! processes, each with its own virglrenderer (`worker.rs`), so one
//! context's expensive GPU work never freezes contexts on other workers.
//!
//! One [`WorkerPool`] lives on the render shard and speaks to every worker
//! over its socketpair without blocking: a writer task per worker sends
//! frames queued by the renderer calls, a reader task completes what the
//! worker answers, a watchdog task kills a worker that leaves a request
//! unanswered past its deadline. The renderer calls themselves only queue:
//! what the device must wait for before it answers a command comes back
//! through [`Renderer::settle`] and [`Renderer::read_rect_later`].
//!
//! - **Placement.** A context goes to the live worker with the fewest
//!   contexts at CTX_CREATE. A resource is created on a worker the first
//!   time it is used: on the worker of the first context it is attached to
//!   (or transferred by), else the least loaded. From then on it lives
//!   there. A context that has done nothing yet and attaches a resource
//!   living elsewhere moves to that worker; any other context on another
//!   worker that attaches or transfers it gets `ResourceOnOtherWorker`
//!   (docs/decisions/0005-render-workers.md).
//! - **Guest memory** is shared, not copied: the guest RAM fds (memfds
//!   from the VMM or loadgen) go to each worker once per memory table;
//!   transfers name guest addresses.
//! - **Read-back** (RESOURCE_FLUSH, cursor): the worker writes pixels into
//!   a 64 MiB memfd area shared with this process, spans handed out in
//!   request order, so no pixel crosses the socket. It is sealed at its
//!   size before the worker gets it, and the seals are checked before it
//!   is mapped here: a worker cannot shrink it under our mapping (SIGBUS).
//!   Nothing else comes from a worker as a descriptor (its socket is read
//!   with `read`, which drops any passed fds). Guest RAM fds are the VMM's,
//!   mapped here anyway: QEMU seals its memfd backends (`seal=on` is the
//!   default), loadgen seals its own.
//! - **Loss.** A worker that exits, breaks the protocol or misses the
//!   watchdog deadline is killed; what it owed completes (commands with
//!   `RenderWorkerLost`, fences as done: never lost); its contexts and
//!   resources are lost (later commands on them get `RenderWorkerLost`); a
//!   fresh worker takes its slot. Other workers never notice.
//! - **Start-up failures.** A worker that dies (or cannot be spawned)
//!   before it said Ready, or after it but before it settled (answered a
//!   request or lived 10 s: a crash loop), is started again after a
//!   backoff, 100 ms doubling to 5 s while it keeps failing, from a timer
//!   task on the render shard; the slot takes no contexts meanwhile. How a worker
//!   ended is logged when it was not our kill (a signal by name; SIGSYS
//!   with where to find the refused system call).
//! - **Resources shared across workers** (a compositor sampling its
//!   clients' buffers: weston's context imports every client's window).
//!   A resource lives on the worker of the context that first used it
//!   (its home); a context on another worker that attaches it gets a
//!   *replica* there, a copy brought up to date before each of that
//!   context's submits when the home side may have written it since (a
//!   submit by a context that has it attached, a transfer to it): the home
//!   worker reads it into its read-back area, and the replica's worker
//!   gets the pixels in `WriteRect` frames held in its queue until they
//!   are in, so nothing sent to that worker later runs before the copy
//!   (and since the read is queued on the home worker before that hold,
//!   holds never wait on each other in a circle). Only single-level 2D
//!   images of 4 bytes a pixel up to 40 MB are replicated (window
//!   buffers); others
//!   are still refused on another worker, as is everything past 4096
//!   replicas or 256 MiB of them (host memory beside the guest's budget).
//!   One copy per replica is on its way at a time; a worker's watchdog
//!   does not count the time its queue is held for another's pixels. A
//!   replica is read-only in effect: what its worker draws into it stays
//!   there, and the home is whoever used it first (a buffer a compositor
//!   allocates and a client draws would copy the wrong way). A hold stops
//!   the whole queue of the replica's worker, not only its context's.
//! - **Under a seccomp filter** workers are started by a launcher
//!   (`launcher.rs`) made before the daemon's filter, and inherit the
//!   launcher's filter (and, once up, add their own: `worker.rs`, given the
//!   daemon's `--seccomp` in [`WorkerExe::args`]); the daemon forks,
//!   executes and makes rings no more.
//!   [`RendererFactory::check_under_filter`] starts one once the daemon's
//!   filter is on, so a worker that cannot be started under it stops the
//!   daemon at start instead of every context failing later.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::future::Future;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::launcher::{Launcher, WorkerProcess};
use super::wire::{self, Event, MemRegion, Request};
use super::worker::WORKER_ARG;
use crate::backing::{Backing, GuestMem};
use crate::protocol::wire::{
    VIRTIO_GPU_CAPSET_VIRGL, VIRTIO_GPU_CAPSET_VIRGL2, VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
    VIRTIO_GPU_F_RESOURCE_BLOB,
};
use crate::protocol::{ProtocolError, Rect, Transfer3d};
use crate::render::{
    BlobMemory, Capset, GpuWait, PixelsWait, Renderer, RendererFactory, RendererInfo, ResourceKind,
    Settle,
};

/// The shared read-back area of each worker (pages are touched only as
/// used; a 1280x800 scanout is 4 MB).
const SHM_SIZE: u64 = 64 << 20;
/// How long a fresh worker may take to bring its library up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// The wait before starting a worker again after it died before it was
/// ready, doubling with each failure in a row up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A worker that was ready and then lived this long, or answered a
/// request, has settled: its death is a loss, restarted at once, and the
/// backoff starts over. One that dies sooner is crash-looping: it counts
/// as a failed start for the backoff.
const SETTLED_AFTER: Duration = Duration::from_secs(10);

/// The wait before the `failures`-th start in a row (counting from 1)
/// after workers of one slot died before they were ready.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (RETRY_FIRST * (1u32 << doublings)).min(RETRY_MAX)
}

/// The binary a worker runs: one that calls
/// [`run_if_requested`](super::worker::run_if_requested) first in `main`.
#[derive(Debug, Clone)]
pub struct WorkerExe {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The binary that starts the workers (see `launcher.rs`): one that
    /// calls `run_if_requested` first in `main`, like `program`.
    pub launcher: PathBuf,
}

impl WorkerExe {
    /// This very binary, re-executed (gpu-reactor, loadgen).
    pub fn current() -> WorkerExe {
        WorkerExe::at("/proc/self/exe")
    }

    /// Another binary that can be a worker (tests: `gpu-reactor`).
    pub fn at(program: impl Into<PathBuf>) -> WorkerExe {
        let program = program.into();
        WorkerExe {
            launcher: program.clone(),
            program,
            args: vec![WORKER_ARG.into()],
        }
    }

    /// Workers run this program, started by `launcher` (tests: a script
    /// as the worker, `gpu-reactor` as its launcher).
    pub fn launched_by(self, launcher: impl Into<PathBuf>) -> WorkerExe {
        WorkerExe {
            launcher: launcher.into(),
            ..self
        }
    }

    /// Starts the launcher of these workers. Blocking; before any filter.
    pub fn start_launcher(&self) -> Result<Launcher, String> {
        Launcher::start(&self.launcher, &self.program, &self.args, STARTUP_DEADLINE)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Worker processes (at least 1).
    pub workers: usize,
    pub exe: WorkerExe,
    /// A request (other than a fence) unanswered this long kills its worker.
    pub watchdog: Duration,
}

impl WorkerOptions {
    pub fn new(workers: usize, exe: WorkerExe) -> WorkerOptions {
        WorkerOptions {
            workers: workers.max(1),
            exe,
            watchdog: Duration::from_secs(10),
        }
    }
}

/// One worker slot as the outside sees it (tests, logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotView {
    /// The process serving the slot now (`None`: the slot is dead).
    pub pid: Option<u32>,
    /// Contexts placed on it, live ones only.
    pub contexts: Vec<u32>,
}

/// Counters shared by the factory and its pools (Prometheus, tests).
#[derive(Debug, Default)]
pub struct WorkerStats {
    losses: AtomicU64,
    restarts: AtomicU64,
    start_failures: AtomicU64,
    contexts_lost: AtomicU64,
    cross_worker_refusals: AtomicU64,
    context_moves: AtomicU64,
    replica_copies: AtomicU64,
    launcher_pid: AtomicU64,
    slots: Mutex<Vec<SlotView>>,
}

impl WorkerStats {
    /// Workers lost (crashed, killed, or past the watchdog deadline).
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }
    /// Workers started again in a lost worker's slot.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
    /// Worker starts that failed: the process died before it was ready
    /// (or could not be spawned). Each is retried after a backoff.
    pub fn start_failures(&self) -> u64 {
        self.start_failures.load(Ordering::Relaxed)
    }
    pub fn contexts_lost(&self) -> u64 {
        self.contexts_lost.load(Ordering::Relaxed)
    }
    /// Attaches or transfers refused because the resource lives elsewhere.
    pub fn cross_worker_refusals(&self) -> u64 {
        self.cross_worker_refusals.load(Ordering::Relaxed)
    }
    /// Fresh contexts moved to the worker of the first resource they
    /// attached.
    pub fn context_moves(&self) -> u64 {
        self.context_moves.load(Ordering::Relaxed)
    }
    /// Replicas brought up to date from their resource's home worker.
    pub fn replica_copies(&self) -> u64 {
        self.replica_copies.load(Ordering::Relaxed)
    }
    /// The process that starts this factory's workers.
    pub fn launcher_pid(&self) -> u32 {
        self.launcher_pid.load(Ordering::Relaxed) as u32
    }
    /// The slots of the current pool.
    pub fn slots(&self) -> Vec<SlotView> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Makes the worker-backed `virgl` renderer.
#[derive(Debug)]
pub struct WorkerPoolFactory {
    opts: WorkerOptions,
    launcher: Arc<Launcher>,
    capsets: Vec<Capset>,
    stats: Arc<WorkerStats>,
}

impl WorkerPoolFactory {
    /// Starts the workers' launcher, and one worker to learn the library's
    /// capsets (it has to be up for that), then lets that one go.
    /// Blocking: call it before serving, and before the filter (the
    /// launcher is forked and executed).
    pub fn new(opts: WorkerOptions) -> Result<WorkerPoolFactory, String> {
        let launcher = Arc::new(opts.exe.start_launcher()?);
        let capsets = probe_capsets(&launcher)?;
        let stats = Arc::new(WorkerStats::default());
        stats
            .launcher_pid
            .store(u64::from(launcher.pid()), Ordering::Relaxed);
        Ok(WorkerPoolFactory {
            opts,
            launcher,
            capsets,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }
}

impl RendererFactory for WorkerPoolFactory {
    fn info(&self) -> RendererInfo {
        super::virgl_info(self.capsets.clone())
    }

    /// Starts a worker (the daemon's part of it now under the daemon's
    /// filter, the worker under its launcher's) and waits for it to be
    /// ready. Blocking (at most the start-up deadline).
    fn check_under_filter(&self) -> Result<(), String> {
        let started = Instant::now();
        probe_capsets(&self.launcher).map_err(|e| {
            format!(
                "no render worker can start under the seccomp filter (one did before \
                 it was installed): {e}. {SECCOMP_HINT}, and allow it for render \
                 workers in gpu/src/sandbox.rs"
            )
        })?;
        tracing::info!(
            took = ?started.elapsed(),
            "a render worker starts under the seccomp filter"
        );
        Ok(())
    }

    fn create(&self, _shard: usize) -> Result<Box<dyn Renderer>, String> {
        if reactor::current_shard().is_none() {
            return Err("render workers are driven from a reactor shard".into());
        }
        Ok(Box::new(WorkerPool::start(
            self.opts.clone(),
            self.launcher.clone(),
            self.stats.clone(),
        )?))
    }

    fn metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let s = &self.stats;
        let live = s.slots().iter().filter(|v| v.pid.is_some()).count();
        let mut metric = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP gpu_reactor_{name} {help}");
            let _ = writeln!(out, "# TYPE gpu_reactor_{name} {kind}");
            let _ = writeln!(out, "gpu_reactor_{name} {v}");
        };
        metric(
            "render_workers",
            "gauge",
            "Render worker processes running.",
            live as u64,
        );
        metric(
            "render_worker_losses_total",
            "counter",
            "Render workers lost (exited, killed, or past the watchdog deadline).",
            s.losses(),
        );
        metric(
            "render_worker_restarts_total",
            "counter",
            "Render workers started again after a loss.",
            s.restarts(),
        );
        metric(
            "render_worker_start_failures_total",
            "counter",
            "Render workers that died, or could not be started, before they were ready (each retried after a backoff).",
            s.start_failures(),
        );
        metric(
            "render_contexts_lost_total",
            "counter",
            "Contexts lost with their render worker.",
            s.contexts_lost(),
        );
        metric(
            "render_context_moves_total",
            "counter",
            "Fresh contexts moved to the render worker of the first resource they attached.",
            s.context_moves(),
        );
        metric(
            "render_cross_worker_refusals_total",
            "counter",
            "Resource uses refused because the resource lives on another render worker.",
            s.cross_worker_refusals(),
        );
        metric(
            "render_replica_copies_total",
            "counter",
            "Replicas of a resource on another render worker brought up to date from its home.",
            s.replica_copies(),
        );
    }
}

/// A worker process just started.
struct Spawned {
    child: WorkerProcess,
    sock: OwnedFd,
    shm: OwnedFd,
}

/// The seals of the read-back memfd: its size is fixed before a worker
/// gets it. A worker that could shrink it would make this process take
/// SIGBUS reading a span past the new end (every context lost); one that
/// could grow it would charge us its memory.
const READBACK_SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// The read-back memfd: [`SHM_SIZE`] bytes, sealed at that size.
fn readback_memfd() -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a static name; the result is checked.
    let raw = unsafe {
        libc::memfd_create(
            c"gpu-render-readback".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let shm = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    std::fs::File::from(shm.try_clone()?).set_len(SHM_SIZE)?;
    // SAFETY: fcntl on our own descriptor with an integer argument.
    if unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_ADD_SEALS, READBACK_SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(shm)
}

/// Refuses a read-back area whose size a worker could change: it must be
/// sealed against shrinking and growing, and be [`SHM_SIZE`] long.
fn check_sealed(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals & need != need {
        return Err(io::Error::other(format!(
            "the read-back memfd is not sealed against resizing (seals {seals:#x})"
        )));
    }
    let len = std::fs::File::from(fd.try_clone()?).metadata()?.len();
    if len != SHM_SIZE {
        return Err(io::Error::other(format!(
            "the read-back memfd is {len} bytes, not {SHM_SIZE}"
        )));
    }
    Ok(())
}

fn spawn(launcher: &Launcher) -> io::Result<Spawned> {
    let (ours, theirs) = UnixStream::pair()?;
    let shm = readback_memfd()?;
    let child = launcher.start_worker(&theirs.into(), &shm, STARTUP_DEADLINE)?;
    Ok(Spawned {
        child,
        sock: ours.into(),
        shm,
    })
}

/// Kills a worker and reaps it off the shard (its exit may take a while:
/// llvmpipe threads, large mappings). How it ended is logged unless it
/// was our kill: a worker that died by itself (a signal, an exit) has
/// already begun to exit when its socket closes, and a kill then no
/// longer changes its exit status.
fn bury(mut child: WorkerProcess, slot: Option<usize>) {
    let pid = child.id();
    let _ = child.kill();
    let _ = std::thread::Builder::new()
        .name("render-worker-reap".into())
        .spawn(move || {
            let Ok(status) = child.wait() else { return };
            if status.success() || status.signal() == Some(libc::SIGKILL) {
                tracing::debug!(?slot, pid, status = %describe_exit(status), "render worker reaped");
            } else if status.signal() == Some(libc::SIGSYS) {
                tracing::error!(
                    ?slot,
                    pid,
                    "render worker ended: {}. {SECCOMP_HINT}",
                    describe_exit(status)
                );
            } else {
                tracing::error!(?slot, pid, "render worker ended: {}", describe_exit(status));
            }
        });
}

/// Where to find the system call a seccomp filter refused: a SIGSYS exit
/// status does not carry it, the kernel's audit record does.
const SECCOMP_HINT: &str = "To see what the filter refuses, run with `--seccomp log` \
     and look for the kernel's audit lines `type=1326 ... syscall=N` (dmesg or journalctl -k)";

/// How a worker ended, for people: the signal by name; SIGSYS is what a
/// seccomp filter's kill looks like.
pub(super) fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(libc::SIGSYS)) => format!(
            "killed by signal {} (SIGSYS: a system call the seccomp filter refuses)",
            libc::SIGSYS
        ),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        (None, None) => format!("{status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    use libc::*;
    match sig {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGQUIT => "SIGQUIT",
        SIGILL => "SIGILL",
        SIGTRAP => "SIGTRAP",
        SIGABRT => "SIGABRT",
        SIGBUS => "SIGBUS",
        SIGFPE => "SIGFPE",
        SIGKILL => "SIGKILL",
        SIGUSR1 => "SIGUSR1",
        SIGSEGV => "SIGSEGV",
        SIGUSR2 => "SIGUSR2",
        SIGPIPE => "SIGPIPE",
        SIGALRM => "SIGALRM",
        SIGTERM => "SIGTERM",
        SIGXCPU => "SIGXCPU",
        SIGXFSZ => "SIGXFSZ",
        SIGSYS => "SIGSYS",
        _ => "another signal",
    }
}

/// Starts a worker, waits for its Ready (at most the start-up deadline)
/// and lets it go. Blocking.
fn probe_capsets(launcher: &Launcher) -> Result<Vec<Capset>, String> {
    let program = launcher.program();
    let s =
        spawn(launcher).map_err(|e| format!("cannot start a render worker ({program:?}): {e}"))?;
    let mut child = s.child;
    let mut sock = UnixStream::from(s.sock);
    let _ = sock.set_read_timeout(Some(STARTUP_DEADLINE));
    let mut buf = Vec::new();
    let got = loop {
        let mut chunk = [0u8; 4096];
        let n = match sock.read(&mut chunk) {
            Ok(0) => {
                // It is exiting (its socket closed with it), so a kill no
                // longer changes what it died of.
                let _ = child.kill();
                let how = match child.wait() {
                    Ok(s) if s.signal() == Some(libc::SIGSYS) => describe_exit(s),
                    Ok(s) => format!("{} (no EGL/llvmpipe? see its log above)", describe_exit(s)),
                    Err(e) => format!("not reaped: {e}"),
                };
                return Err(format!(
                    "the render worker ({program:?}) died before it was ready: {how}"
                ));
            }
            Ok(n) => n,
            // A signal, or a tracer attaching (strace -f): not an answer.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(format!("no answer from the render worker: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        match wire::split_frames(&mut buf) {
            Ok(frames) => {
                if let Some(body) = frames.first() {
                    break match wire::decode_event(body) {
                        Ok(Event::Ready(capsets)) => Ok(capsets),
                        Ok(other) => Err(format!("render worker said {other:?} first")),
                        Err(e) => Err(e.to_string()),
                    };
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    bury(child, None);
    got
}

/// Starts a worker and waits (at most the start-up deadline) for it to
/// end by itself, then says whether it was ready first and how it ended:
/// the daemon's `--seccomp-selftest` of a worker call (a worker started
/// with one makes the call right after Ready). Blocking.
pub fn run_worker_to_its_end(launcher: &Launcher) -> String {
    let s = match spawn(launcher) {
        Ok(s) => s,
        Err(e) => return format!("cannot start a render worker: {e}"),
    };
    let mut child = s.child;
    let mut sock = UnixStream::from(s.sock);
    let _ = sock.set_read_timeout(Some(STARTUP_DEADLINE));
    let (mut buf, mut ready) = (Vec::new(), false);
    let timed_out = loop {
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) => break false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let frames = wire::split_frames(&mut buf).unwrap_or_default();
                ready |= frames
                    .iter()
                    .any(|b| matches!(wire::decode_event(b), Ok(Event::Ready(_))));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break true,
        }
    };
    if timed_out {
        let _ = child.kill();
    }
    let how = match child.wait() {
        Ok(status) => describe_exit(status),
        Err(e) => format!("not reaped: {e}"),
    };
    match (timed_out, ready) {
        (true, _) => format!("did not end by itself, killed: {how}"),
        (false, true) => format!("ready, then {how}"),
        (false, false) => format!("never ready: {how}"),
    }
}

/// What a worker owes for one request.
struct ReplySlot {
    value: RefCell<Option<Result<Vec<u8>, ProtocolError>>>,
    waker: Cell<Option<Waker>>,
}

impl ReplySlot {
    fn new() -> Rc<ReplySlot> {
        Rc::new(ReplySlot {
            value: RefCell::new(None),
            waker: Cell::new(None),
        })
    }

    fn complete(&self, r: Result<Vec<u8>, ProtocolError>) {
        *self.value.borrow_mut() = Some(r);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

struct ReplyWait(Rc<ReplySlot>);

impl Future for ReplyWait {
    type Output = Result<Vec<u8>, ProtocolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.0.value.borrow_mut().take() {
            return Poll::Ready(r);
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

enum OwedKind {
    /// Nobody waits (destroy, detach): owed only to the watchdog.
    Nothing,
    Reply(Rc<ReplySlot>),
    /// Pixels at a span of the shared area, to be copied into `out` (a
    /// buffer the display recycles: its pages are in, nothing to zero).
    Pixels {
        slot: Rc<ReplySlot>,
        offset: u64,
        len: u64,
        out: Vec<u8>,
    },
    /// A fence: may take as long as the GPU work; not watched.
    Fence(Rc<ReplySlot>),
}

struct Owed {
    sent: Instant,
    /// The context or resource the request was about (for errors).
    subject: u32,
    kind: OwedKind,
}

impl Owed {
    /// The worker is gone: commands fail, fences are done.
    fn abandon(self) {
        match self.kind {
            OwedKind::Nothing => {}
            OwedKind::Reply(s) | OwedKind::Pixels { slot: s, .. } => {
                s.complete(Err(ProtocolError::RenderWorkerLost(self.subject)))
            }
            OwedKind::Fence(s) => s.complete(Ok(Vec::new())),
        }
    }
}

/// The read-back area, mapped read-only here; spans handed out in request
/// order and given back in the same order (a worker answers in order).
struct ReadBack {
    ptr: *const u8,
    len: u64,
    live: VecDeque<(u64, u64)>,
}

impl ReadBack {
    /// Maps `fd` once its seals are checked: the worker holds it writable,
    /// and only the seals keep it from cutting the mapping short.
    fn map(fd: &OwnedFd) -> io::Result<ReadBack> {
        check_sealed(fd)?;
        // SAFETY: a shared read-only mapping of a memfd sealed at
        // SHM_SIZE bytes (checked above), so every page of it stays
        // backed; the result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SHM_SIZE as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(ReadBack {
            ptr: ptr.cast(),
            len: SHM_SIZE,
            live: VecDeque::new(),
        })
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        if len == 0 || len > self.len {
            return None;
        }
        let at = match (self.live.front(), self.live.back()) {
            (Some(&(tail, _)), Some(&(b, blen))) => {
                let head = b + blen;
                if b >= tail {
                    // Not wrapped: free is [head, len) and [0, tail).
                    if head + len <= self.len {
                        head
                    } else if len <= tail {
                        0
                    } else {
                        return None;
                    }
                } else if head + len <= tail {
                    head
                } else {
                    return None;
                }
            }
            _ => 0,
        };
        self.live.push_back((at, len));
        Some(at)
    }

    /// Copies a span out and gives it back.
    /// The pixels of the span at `offset`, in `out` (emptied first), and
    /// the span given back.
    fn take(&mut self, offset: u64, len: u64, mut out: Vec<u8>) -> Vec<u8> {
        out.clear();
        if offset + len <= self.len {
            let len = len as usize;
            out.reserve(len);
            // SAFETY: the span lies inside our mapping (checked above) and
            // `out` has room for `len` bytes (reserved above); they do not
            // overlap (`out` is our heap). The worker may still write the
            // span (it says it does not; nothing enforces it): a raw copy,
            // never a reference to that memory, so at worst the guest gets
            // pixels half drawn. The `len` bytes are then initialised.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(offset as usize), out.as_mut_ptr(), len);
                out.set_len(len);
            }
        } else {
            out.resize(len as usize, 0);
        }
        if let Some(i) = self.live.iter().position(|&(o, _)| o == offset) {
            self.live.remove(i);
        }
        out
    }
}

impl Drop for ReadBack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast_mut().cast(), self.len as usize) };
    }
}

enum Outgoing {
    Frame {
        frame: Vec<u8>,
        fds: Vec<OwnedFd>,
    },
    /// Frames that exist once a wait is over (a replica's pixels from its
    /// home worker), written in their turn: every later frame waits.
    Later(Pin<Box<dyn Future<Output = Vec<Vec<u8>>>>>),
}

type LinkRef = Rc<RefCell<Link>>;

/// One worker process and everything in flight with it.
struct Link {
    generation: u64,
    child: Option<WorkerProcess>,
    pid: u32,
    tx: reactor::Sender<Outgoing>,
    owed: BTreeMap<u64, Owed>,
    next_seq: u64,
    readback: ReadBack,
    /// (guest address, size, host address) of the memory table sent.
    mem_key: Vec<(u64, u64, usize)>,
    contexts: usize,
    /// When the worker said it was ready (its library up).
    ready: Option<Instant>,
    /// It answered a request.
    served: bool,
    started: Instant,
    /// Workers of this slot that died before they were ready or soon
    /// after (before they settled: [`SETTLED_AFTER`]), in a row, right
    /// before this one.
    failures: u32,
    slot: usize,
    tasks: Vec<reactor::AbortHandle>,
    /// Frames held back for replica pixels from another worker.
    holds: Rc<Holds>,
}

/// What the watchdog must know of held frames: while any wait, everything
/// queued behind them is not the worker's to answer yet, and once they are
/// written, what was queued behind them is timed from then.
#[derive(Default)]
struct Holds {
    pending: Cell<usize>,
    resumed: Cell<Option<Instant>>,
}

impl Link {
    fn start(
        opts: &WorkerOptions,
        launcher: &Launcher,
        slot: usize,
        generation: u64,
        failures: u32,
        pool: Weak<RefCell<Pool>>,
    ) -> Result<Rc<RefCell<Link>>, String> {
        let s = spawn(launcher).map_err(|e| {
            format!(
                "cannot start render worker {slot} ({:?}): {e}",
                opts.exe.program
            )
        })?;
        let readback =
            ReadBack::map(&s.shm).map_err(|e| format!("cannot map the read-back area: {e}"))?;
        let pid = s.child.id();
        let sock = reactor::io::AsyncFd::new(s.sock);
        let (tx, rx) = reactor::channel();
        let link = Rc::new(RefCell::new(Link {
            generation,
            child: Some(s.child),
            pid,
            tx,
            owed: BTreeMap::new(),
            next_seq: 1,
            readback,
            mem_key: Vec::new(),
            contexts: 0,
            ready: None,
            served: false,
            started: Instant::now(),
            failures,
            slot,
            tasks: Vec::new(),
            holds: Rc::default(),
        }));
        let (w, wh) = reactor::abortable(write_frames(sock.clone(), rx));
        reactor::spawn_local_named("render-worker-write", w);
        let (r, rh) = reactor::abortable(read_events(
            sock,
            Rc::downgrade(&link),
            pool.clone(),
            slot,
            generation,
        ));
        reactor::spawn_local_named("render-worker-read", r);
        let (d, dh) = reactor::abortable(watchdog(Rc::downgrade(&link), opts.watchdog, slot));
        reactor::spawn_local_named("render-worker-watchdog", d);
        link.borrow_mut().tasks = vec![wh, rh, dh];
        tracing::info!(slot, pid, generation, "render worker started");
        Ok(link)
    }

    fn send(&mut self, req: Request, fds: Vec<OwnedFd>, subject: u32, kind: OwedKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = wire::encode_request(seq, &req);
        self.owed.insert(
            seq,
            Owed {
                sent: Instant::now(),
                subject,
                kind,
            },
        );
        // A closed channel means the writer stopped: the reader sees the
        // worker go and abandons what it owes, this included.
        let _ = self.tx.send(Outgoing::Frame { frame, fds });
    }

    /// Queues `WriteRect`s of `id` (`width` pixels wide), one per band of
    /// `bands`, whose pixels are those `pixels` brings (the whole image,
    /// rows packed): their sequence numbers are taken now, their frames
    /// written once the pixels are in, and nothing queued after them goes
    /// before. No pixels (the home worker failed): the worker gets empty
    /// writes, which it refuses, and the replica keeps what it had.
    fn send_later(
        &mut self,
        id: u32,
        width: u32,
        bands: Vec<Rect>,
        pixels: ReplyWait,
        sync: Rc<ReplicaSync>,
    ) {
        let now = Instant::now();
        let seqs: Vec<u64> = bands
            .iter()
            .map(|_| {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.owed.insert(
                    seq,
                    Owed {
                        sent: now,
                        subject: id,
                        kind: OwedKind::Nothing,
                    },
                );
                seq
            })
            .collect();
        let row = width as usize * 4;
        let holds = self.holds.clone();
        holds.pending.set(holds.pending.get() + 1);
        let frames = async move {
            let px = pixels.await;
            holds.pending.set(holds.pending.get() - 1);
            holds.resumed.set(Some(Instant::now()));
            sync.pending.set(false);
            // No pixels: the replica keeps what it had and is copied again
            // at the next submit that uses it.
            let px = px.unwrap_or_else(|_| {
                sync.synced.set(None);
                Vec::new()
            });
            bands
                .iter()
                .zip(seqs)
                .map(|(b, seq)| {
                    let start = b.y as usize * row;
                    let band = px
                        .get(start..start + b.height as usize * row)
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default();
                    wire::encode_request(
                        seq,
                        &Request::WriteRect {
                            id,
                            rect: *b,
                            pixels: band,
                        },
                    )
                })
                .collect()
        };
        let _ = self.tx.send(Outgoing::Later(Box::pin(frames)));
    }

    /// Asks for `rect` of `id` (`len` bytes, 4 a pixel) through the
    /// read-back area: the pixels once the worker wrote them, or `None`
    /// when the area has no room for them now.
    fn read_rect(&mut self, id: u32, rect: Rect, len: u64, out: Vec<u8>) -> Option<ReplyWait> {
        let offset = self.readback.alloc(len)?;
        let slot = ReplySlot::new();
        self.send(
            Request::ReadRect {
                id,
                rect,
                shm_offset: offset,
            },
            Vec::new(),
            id,
            OwedKind::Pixels {
                slot: slot.clone(),
                offset,
                len,
                out,
            },
        );
        Some(ReplyWait(slot))
    }

    fn request(&mut self, req: Request, subject: u32) -> ReplyWait {
        let slot = ReplySlot::new();
        self.send(req, Vec::new(), subject, OwedKind::Reply(slot.clone()));
        ReplyWait(slot)
    }

    /// Sends the guest memory table if `mem` is not the one the worker has.
    fn share_memory(&mut self, mem: &GuestMem) -> Result<(), ProtocolError> {
        let key: Vec<(u64, u64, usize)> = mem
            .iter()
            .map(|r| (r.start_addr().0, r.len(), r.as_ptr() as usize))
            .collect();
        if key == self.mem_key {
            return Ok(());
        }
        let mut regions = Vec::with_capacity(key.len());
        let mut fds = Vec::with_capacity(key.len());
        for r in mem.iter() {
            // Guest RAM without a file (an anonymous mapping) cannot be
            // shared with another process.
            let fo = r
                .file_offset()
                .ok_or(ProtocolError::BackingBeyondGuestMemory {
                    addr: r.start_addr().0,
                    length: 0,
                })?;
            let fd = fo
                .file()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|_| ProtocolError::OutOfMemory { requested: 0 })?;
            regions.push(MemRegion {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: fo.start(),
            });
            fds.push(fd);
        }
        self.send(Request::MemTable(regions), fds, 0, OwedKind::Nothing);
        self.mem_key = key;
        Ok(())
    }

    /// Stops the tasks, kills the process, hands back what it owed.
    fn shut(&mut self) -> Vec<Owed> {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(child) = self.child.take() {
            bury(child, Some(self.slot));
        }
        std::mem::take(&mut self.owed).into_values().collect()
    }
}

async fn write_frames(sock: reactor::io::AsyncFd, mut rx: reactor::Receiver<Outgoing>) {
    while let Some(o) = rx.recv().await {
        let (mut frame, fds) = match o {
            Outgoing::Frame { frame, fds } => (frame, fds),
            Outgoing::Later(frames) => {
                for f in frames.await {
                    if sock.write_all(f).await.0.is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        if !fds.is_empty() {
            let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let (r, f) = sock.sendmsg(frame, &fds).await;
            match r {
                Ok(n) => {
                    frame = f;
                    frame.drain(..n);
                }
                Err(_) => return,
            }
        }
        if !frame.is_empty() && sock.write_all(frame).await.0.is_err() {
            return;
        }
    }
}

async fn read_events(
    sock: reactor::io::AsyncFd,
    link: Weak<RefCell<Link>>,
    pool: Weak<RefCell<Pool>>,
    slot: usize,
    generation: u64,
) {
    let mut buf = Vec::new();
    let why = 'read: loop {
        let (r, mut b) = sock.read(Vec::with_capacity(64 << 10)).await;
        match r {
            Ok(0) => break "exited",
            Ok(_) => buf.append(&mut b),
            Err(_) => break "socket error",
        }
        let frames = match wire::split_frames(&mut buf) {
            Ok(f) => f,
            Err(_) => break "protocol error",
        };
        let Some(link) = link.upgrade() else { return };
        for body in frames {
            let done = {
                let mut l = link.borrow_mut();
                match wire::decode_event(&body) {
                    Ok(Event::Ready(_)) => {
                        l.ready = Some(Instant::now());
                        if l.failures > 0 {
                            tracing::info!(
                                slot,
                                pid = l.pid,
                                failures = l.failures,
                                "render worker ready after failed starts"
                            );
                        }
                        None
                    }
                    Ok(Event::Reply { seq, rc }) => l.owed.remove(&seq).map(|o| {
                        l.served = true;
                        let r = if rc == 0 {
                            Ok(())
                        } else {
                            Err(ProtocolError::RendererFailed(rc))
                        };
                        match o.kind {
                            OwedKind::Nothing => (None, r.map(|()| Vec::new())),
                            OwedKind::Reply(s) | OwedKind::Fence(s) => {
                                (Some(s), r.map(|()| Vec::new()))
                            }
                            OwedKind::Pixels {
                                slot,
                                offset,
                                len,
                                out,
                            } => {
                                let px = l.readback.take(offset, len, out);
                                (Some(slot), r.map(|()| px))
                            }
                        }
                    }),
                    Err(_) => break 'read "protocol error",
                }
            };
            if let Some((Some(s), r)) = done {
                s.complete(r);
            }
        }
    };
    worker_lost(&pool, slot, generation, why);
}

/// Kills a worker that leaves a request (not a fence) unanswered past the
/// deadline, or does not come up; the reader then sees it go.
async fn watchdog(link: Weak<RefCell<Link>>, deadline: Duration, slot: usize) {
    let period = (deadline / 4).max(Duration::from_millis(5));
    loop {
        if reactor::time::sleep(period).await.is_err() {
            return;
        }
        let Some(link) = link.upgrade() else { return };
        let mut l = link.borrow_mut();
        let now = Instant::now();
        // Requests queued while the worker was still starting are timed
        // from when it was ready: start-up has its own, longer deadline.
        let (late, stuck) = match l.ready {
            // Waiting on another worker's pixels is not this one's delay.
            Some(_) if l.holds.pending.get() > 0 => (false, false),
            Some(ready) => {
                let from = l.holds.resumed.get().map_or(ready, |r| r.max(ready));
                let late = l
                    .owed
                    .values()
                    .find(|o| !matches!(o.kind, OwedKind::Fence(_)))
                    .is_some_and(|o| now - o.sent.max(from) > deadline);
                (late, false)
            }
            None => (false, now - l.started > STARTUP_DEADLINE),
        };
        if late || stuck {
            tracing::error!(
                slot,
                pid = l.pid,
                ?deadline,
                "render worker missed its watchdog deadline: killing it"
            );
            if let Some(c) = l.child.as_mut() {
                let _ = c.kill();
            }
            return;
        }
    }
}

/// A worker went: abandon what it owed, lose its contexts, restart it.
fn worker_lost(pool: &Weak<RefCell<Pool>>, slot: usize, generation: u64, why: &str) {
    let Some(pool) = pool.upgrade() else { return };
    let owed = {
        let mut p = pool.borrow_mut();
        let Some(link) = p.links.get(slot).cloned().flatten() else {
            return;
        };
        let mut l = link.borrow_mut();
        if l.generation != generation {
            return;
        }
        let owed = l.shut();
        let (pid, ready, failures) = (l.pid, l.ready, l.failures);
        let settled = ready.is_some_and(|t| l.served || t.elapsed() >= SETTLED_AFTER);
        drop(l);
        let lost: Vec<u32> = p
            .contexts
            .iter()
            .filter(|(_, c)| c.slot == slot && c.generation == generation)
            .map(|(&id, _)| id)
            .collect();
        p.stats.losses.fetch_add(1, Ordering::Relaxed);
        p.stats
            .contexts_lost
            .fetch_add(lost.len() as u64, Ordering::Relaxed);
        tracing::error!(slot, pid, why, contexts = ?lost, "render worker lost: its contexts are lost, the others continue");
        p.links[slot] = None;
        match ready {
            _ if settled => restart(&pool, &mut p, slot, generation + 1, 0),
            // Crash-looping: ready, then dead before it settled. Backed
            // off like a failed start, so a worker that dies at once
            // after each start does not take a core in fork and exec.
            Some(t) => {
                tracing::warn!(
                    slot,
                    pid,
                    lived = ?t.elapsed(),
                    "render worker died soon after it was ready, before serving a request"
                );
                retry_later(&pool, &mut p, slot, generation + 1, failures + 1);
            }
            None => {
                p.stats.start_failures.fetch_add(1, Ordering::Relaxed);
                retry_later(&pool, &mut p, slot, generation + 1, failures + 1);
            }
        }
        p.publish();
        owed
    };
    for o in owed {
        o.abandon();
    }
}

/// Starts a worker in the empty `slot`; one that cannot be spawned is
/// tried again later, like one that dies before it is ready.
fn restart(pool: &Rc<RefCell<Pool>>, p: &mut Pool, slot: usize, generation: u64, failures: u32) {
    match Link::start(
        &p.opts,
        &p.launcher,
        slot,
        generation,
        failures,
        Rc::downgrade(pool),
    ) {
        Ok(l) => {
            p.links[slot] = Some(l);
            p.stats.restarts.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(slot, error = %e, "render worker not started");
            p.stats.start_failures.fetch_add(1, Ordering::Relaxed);
            retry_later(pool, p, slot, generation + 1, failures + 1);
        }
    }
}

/// Starts a worker in the empty `slot` after the backoff for `failures`
/// failed starts (or deaths before settling) in a row, from a timer task
/// (never blocking the shard).
fn retry_later(
    pool: &Rc<RefCell<Pool>>,
    p: &mut Pool,
    slot: usize,
    generation: u64,
    failures: u32,
) {
    let delay = retry_delay(failures);
    tracing::warn!(
        slot,
        failures,
        ?delay,
        "render worker failed to start or settle: starting it again after {delay:?}"
    );
    let weak = Rc::downgrade(pool);
    let (t, h) = reactor::abortable(async move {
        if let Err(e) = reactor::time::sleep(delay).await {
            tracing::error!(slot, error = %e, "no timer to retry a render worker: its slot stays empty");
            return;
        }
        let Some(pool) = weak.upgrade() else { return };
        let mut p = pool.borrow_mut();
        // Shut meanwhile (its slots are gone)?
        if p.links.len() <= slot {
            return;
        }
        p.retries[slot] = None;
        restart(&pool, &mut p, slot, generation, failures);
        p.publish();
    });
    reactor::spawn_local_named("render-worker-retry", t);
    if let Some(old) = p.retries[slot].replace(h) {
        old.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placed {
    slot: usize,
    generation: u64,
}

struct PoolResource {
    width: u32,
    height: u32,
    kind: ResourceKind,
    home: Option<Placed>,
    /// The guest's backing: given to the worker with the resource (see
    /// `Pool::place`), since the library must hold it wherever its command
    /// streams may name it.
    backing: Option<Vec<crate::protocol::MemEntry>>,
    /// Counts what may have changed it at home (submits of contexts that
    /// have it attached there, transfers to it).
    version: u64,
    /// Workers holding a replica, and how far each is copied.
    replicas: Vec<(Placed, Rc<ReplicaSync>)>,
}

/// How far one replica is brought up to date.
#[derive(Default)]
struct ReplicaSync {
    /// The home's version the last copy sent was taken at (`None`: never
    /// copied, or the last copy failed).
    synced: Cell<Option<u64>>,
    /// A copy is on its way (at most one per replica: the next submit after
    /// it lands copies again if the home wrote meanwhile).
    pending: Cell<bool>,
}

impl PoolResource {
    /// A single-level 2D image of 4 bytes a pixel (what `ReadRect` and
    /// `WriteRect` move) can be replicated on another worker.
    fn replicable(&self) -> bool {
        if u64::from(self.width) * u64::from(self.height) * 4 > REPLICA_MAX_BYTES {
            return false;
        }
        /// virgl's B8G8R8A8, B8G8R8X8, A8R8G8B8, X8R8G8B8, R8G8B8A8 and
        /// X8B8G8R8 (UNORM).
        const FORMATS: [u32; 6] = [1, 2, 3, 4, 67, 68];
        match &self.kind {
            ResourceKind::Image2d { .. } => true,
            ResourceKind::Image3d(c) => {
                c.target == super::ffi::PIPE_TEXTURE_2D
                    && c.depth <= 1
                    && c.array_size <= 1
                    && c.last_level == 0
                    && c.nr_samples <= 1
                    && FORMATS.contains(&c.format)
            }
            ResourceKind::HostBlob { .. } | ResourceKind::GuestBlob { .. } => false,
        }
    }
}

/// The largest image replicated (a 3840x2160 window is 33 MB): its copy
/// must fit the home worker's read-back area beside a scanout's.
const REPLICA_MAX_BYTES: u64 = 40 << 20;
/// All replicas of one pool together, and their number: past either, a
/// resource on another worker is refused as before replicas existed.
/// They are host memory beside the guest's budget, so they are bounded.
const REPLICA_TOTAL_BYTES: u64 = 256 << 20;
const REPLICA_COUNT: usize = 4096;
/// Rows of a replica's copy per `WriteRect` frame: at most this many bytes.
const REPLICA_BAND_BYTES: u64 = 4 << 20;

/// All workers of one device instance.
struct Pool {
    opts: WorkerOptions,
    launcher: Arc<Launcher>,
    stats: Arc<WorkerStats>,
    links: Vec<Option<Rc<RefCell<Link>>>>,
    /// Per slot: the timer task that starts a worker again after a failed
    /// start, while it waits.
    retries: Vec<Option<reactor::AbortHandle>>,
    contexts: HashMap<u32, Placed>,
    /// Contexts that have done nothing yet (no submit, fence, attach or
    /// transfer), with what created them: they may still move.
    fresh: HashMap<u32, (u8, Vec<u8>)>,
    resources: HashMap<u32, PoolResource>,
    /// The resources each context has attached.
    attached: HashMap<u32, HashSet<u32>>,
    /// Resources with at least one replica (what submits look at), and the
    /// replicas' bytes and number.
    shared: HashSet<u32>,
    replica_bytes: u64,
    replica_count: usize,
    /// The newest guest memory the device handed the pool (with a backing
    /// or a transfer): what a resource placed later shares with its worker.
    mem: Option<GuestMem>,
}

impl Pool {
    /// The worker of `p` if it is still the one things were placed on.
    fn link(&self, p: Placed) -> Option<Rc<RefCell<Link>>> {
        self.links
            .get(p.slot)
            .cloned()
            .flatten()
            .filter(|l| l.borrow().generation == p.generation)
    }

    /// The live worker with the fewest contexts.
    fn least_loaded(&self) -> Option<Placed> {
        self.links
            .iter()
            .enumerate()
            .filter_map(|(slot, l)| {
                let l = l.as_ref()?.borrow();
                Some((l.contexts, slot, l.generation))
            })
            .min()
            .map(|(_, slot, generation)| Placed { slot, generation })
    }

    fn context(&self, ctx: u32) -> Result<(Placed, Rc<RefCell<Link>>), ProtocolError> {
        let p = *self
            .contexts
            .get(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        let link = self.link(p).ok_or(ProtocolError::RenderWorkerLost(ctx))?;
        Ok((p, link))
    }

    /// The worker resource `id` lives on, creating it there first if it
    /// lives nowhere yet (on `want`, else the least loaded worker).
    fn place(
        &mut self,
        id: u32,
        want: Option<Placed>,
    ) -> Result<(Placed, LinkRef, Vec<ReplyWait>), ProtocolError> {
        let home = self
            .resources
            .get(&id)
            .ok_or(ProtocolError::UnknownResource(id))?
            .home;
        if let Some(p) = home {
            let link = self.link(p).ok_or(ProtocolError::RenderWorkerLost(id))?;
            return Ok((p, link, Vec::new()));
        }
        let p = want
            .or_else(|| self.least_loaded())
            .ok_or(ProtocolError::RenderWorkerLost(id))?;
        let link = self.link(p).ok_or(ProtocolError::RenderWorkerLost(id))?;
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        let mut l = link.borrow_mut();
        if let (Some(_), Some(mem)) = (&r.backing, &self.mem) {
            l.share_memory(mem)?;
        }
        r.home = Some(p);
        let mut waits = vec![l.request(
            Request::ResCreate {
                id,
                kind: r.kind.clone(),
            },
            id,
        )];
        if let Some(entries) = &r.backing {
            waits.push(l.request(
                Request::AttachBacking {
                    id,
                    entries: entries.clone(),
                },
                id,
            ));
        }
        drop(l);
        Ok((p, link, waits))
    }

    /// Refuses a resource that lives on another worker than `ctx`.
    fn refuse_elsewhere(
        &self,
        id: u32,
        ctx: u32,
        home: Placed,
        want: Placed,
    ) -> Result<(), ProtocolError> {
        if home.slot == want.slot {
            return Ok(());
        }
        self.stats
            .cross_worker_refusals
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            resource = id,
            ctx,
            resource_worker = home.slot,
            context_worker = want.slot,
            "a resource is used by a context on another render worker: refused"
        );
        Err(ProtocolError::ResourceOnOtherWorker { resource: id, ctx })
    }

    /// Moves context `ctx` from `from` to `to` (it has done nothing yet, so
    /// there is nothing of it to carry over).
    fn move_context(&mut self, ctx: u32, from: Placed, to: Placed) -> Option<ReplyWait> {
        let (capset, name) = self.fresh.get(&ctx).cloned()?;
        let new = self.link(to)?;
        if let Some(old) = self.link(from) {
            let mut l = old.borrow_mut();
            l.contexts = l.contexts.saturating_sub(1);
            l.send(Request::CtxDestroy(ctx), Vec::new(), ctx, OwedKind::Nothing);
        }
        let wait = {
            let mut l = new.borrow_mut();
            l.contexts += 1;
            l.request(Request::CtxCreate { ctx, capset, name }, ctx)
        };
        self.contexts.insert(ctx, to);
        self.stats.context_moves.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            ctx,
            from = from.slot,
            to = to.slot,
            "context follows its first resource"
        );
        self.publish();
        Some(wait)
    }

    /// Makes sure worker `at` has a replica of `id` (which lives on
    /// another worker), creating one if not: the wait for its creation.
    /// `None` with `Ok`: it has one already. Refused past the replicas'
    /// bounds.
    fn replicate(&mut self, id: u32, at: Placed) -> Result<Option<ReplyWait>, ProtocolError> {
        let live: Vec<bool> = {
            let r = self
                .resources
                .get(&id)
                .ok_or(ProtocolError::UnknownResource(id))?;
            r.replicas
                .iter()
                .map(|(p, _)| self.link(*p).is_some())
                .collect()
        };
        let link = self.link(at).ok_or(ProtocolError::RenderWorkerLost(id))?;
        let r = self
            .resources
            .get_mut(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        let bytes = u64::from(r.width) * u64::from(r.height) * 4;
        // Replicas on workers lost since are gone with them.
        let before = r.replicas.len();
        let mut keep = live.into_iter();
        r.replicas.retain(|_| keep.next().unwrap_or(false));
        let gone = before - r.replicas.len();
        self.replica_count -= gone;
        self.replica_bytes -= bytes * gone as u64;
        if r.replicas.iter().any(|(p, _)| *p == at) {
            return Ok(None);
        }
        if self.replica_count >= REPLICA_COUNT || self.replica_bytes + bytes > REPLICA_TOTAL_BYTES {
            return Err(ProtocolError::ResourceOnOtherWorker {
                resource: id,
                ctx: 0,
            });
        }
        r.replicas.push((at, Rc::default()));
        self.replica_count += 1;
        self.replica_bytes += bytes;
        self.shared.insert(id);
        let wait = link.borrow_mut().request(
            Request::ResCreate {
                id,
                kind: r.kind.clone(),
            },
            id,
        );
        Ok(Some(wait))
    }

    /// The shared resources `ctx` has attached (walking the smaller set).
    fn shared_of(&self, ctx: u32) -> Vec<u32> {
        let Some(ids) = self.attached.get(&ctx) else {
            return Vec::new();
        };
        if ids.len() < self.shared.len() {
            ids.iter()
                .filter(|id| self.shared.contains(id))
                .copied()
                .collect()
        } else {
            self.shared
                .iter()
                .filter(|id| ids.contains(id))
                .copied()
                .collect()
        }
    }

    /// Before a submit of `ctx` on worker `at`: every replica there of a
    /// resource `ctx` has attached that its home may have written since it
    /// was copied is copied again, ahead of the submit in `at`'s queue.
    fn refresh_replicas(&mut self, ctx: u32, at: Placed) {
        for id in self.shared_of(ctx) {
            let Some(r) = self.resources.get(&id) else {
                continue;
            };
            let (Some(home), version) = (r.home, r.version) else {
                continue;
            };
            let Some((_, sync)) = r.replicas.iter().find(|(p, _)| *p == at) else {
                continue;
            };
            if home == at || sync.pending.get() || sync.synced.get() == Some(version) {
                continue;
            }
            let sync = sync.clone();
            let (width, height) = (r.width, r.height);
            let (Some(from), Some(to)) = (self.link(home), self.link(at)) else {
                continue;
            };
            let len = u64::from(width) * u64::from(height) * 4;
            if len == 0 {
                continue;
            }
            let Some(pixels) =
                from.borrow_mut()
                    .read_rect(id, Rect::new(0, 0, width, height), len, Vec::new())
            else {
                // The home's read-back area is full: the next submit tries
                // again.
                tracing::debug!(resource = id, "no read-back room for a replica copy now");
                continue;
            };
            let rows = (REPLICA_BAND_BYTES / (u64::from(width) * 4)).max(1) as u32;
            let bands = (0..height)
                .step_by(rows as usize)
                .map(|y| Rect::new(0, y, width, rows.min(height - y)))
                .collect();
            sync.pending.set(true);
            sync.synced.set(Some(version));
            to.borrow_mut().send_later(id, width, bands, pixels, sync);
            self.stats.replica_copies.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `ctx` (on `at`) may have written what it has attached there.
    fn touch(&mut self, ctx: u32, at: Placed) {
        for id in self.shared_of(ctx) {
            if let Some(r) = self.resources.get_mut(&id) {
                if r.home == Some(at) {
                    r.version += 1;
                }
            }
        }
    }

    /// Tells the stats what each slot holds now.
    fn publish(&self) {
        let mut view: Vec<SlotView> = self
            .links
            .iter()
            .map(|l| SlotView {
                pid: l.as_ref().map(|l| l.borrow().pid),
                contexts: Vec::new(),
            })
            .collect();
        for (&ctx, &p) in &self.contexts {
            if self.link(p).is_some() {
                view[p.slot].contexts.push(ctx);
            }
        }
        for v in &mut view {
            v.contexts.sort_unstable();
        }
        *self.stats.slots.lock().unwrap_or_else(|e| e.into_inner()) = view;
    }

    fn shut_all(&mut self) {
        for r in self.retries.iter_mut().filter_map(Option::take) {
            r.abort();
        }
        let mut owed = Vec::new();
        for l in self.links.drain(..).flatten() {
            owed.extend(l.borrow_mut().shut());
        }
        for o in owed {
            o.abandon();
        }
    }
}

/// The worker-backed `virgl` renderer of the render shard.
pub struct WorkerPool {
    pool: Rc<RefCell<Pool>>,
    /// What the current command waits for (see [`Renderer::settle`]).
    owed: Vec<ReplyWait>,
}

impl WorkerPool {
    fn start(
        opts: WorkerOptions,
        launcher: Arc<Launcher>,
        stats: Arc<WorkerStats>,
    ) -> Result<WorkerPool, String> {
        let n = opts.workers.max(1);
        let pool = Rc::new(RefCell::new(Pool {
            opts,
            launcher: launcher.clone(),
            stats,
            links: Vec::with_capacity(n),
            retries: (0..n).map(|_| None).collect(),
            contexts: HashMap::new(),
            fresh: HashMap::new(),
            resources: HashMap::new(),
            attached: HashMap::new(),
            shared: HashSet::new(),
            replica_bytes: 0,
            replica_count: 0,
            mem: None,
        }));
        for slot in 0..n {
            let opts = pool.borrow().opts.clone();
            match Link::start(&opts, &launcher, slot, 0, 0, Rc::downgrade(&pool)) {
                Ok(l) => pool.borrow_mut().links.push(Some(l)),
                Err(e) => {
                    pool.borrow_mut().shut_all();
                    return Err(e);
                }
            }
        }
        pool.borrow().publish();
        Ok(WorkerPool {
            pool,
            owed: Vec::new(),
        })
    }

    fn owe(&mut self, w: impl IntoIterator<Item = ReplyWait>) {
        self.owed.extend(w);
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &mut self,
        id: u32,
        ctx: u32,
        to_host: bool,
        check: Option<Rect>,
        req: impl FnOnce(Vec<crate::protocol::MemEntry>) -> Request,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let mut p = self.pool.borrow_mut();
        let r = p
            .resources
            .get(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        if let Some(rect) = check {
            if !rect.fits_within(r.width, r.height) {
                return Err(ProtocolError::RectOutsideResource);
            }
        }
        let want = match ctx {
            0 => None,
            ctx => p.contexts.get(&ctx).copied(),
        };
        p.fresh.remove(&ctx);
        p.mem = Some(mem.clone());
        let (home, link, created) = p.place(id, want)?;
        if let Some(want) = want {
            p.refuse_elsewhere(id, ctx, home, want)?;
        }
        if to_host {
            if let Some(r) = p.resources.get_mut(&id) {
                r.version += 1;
            }
        }
        drop(p);
        self.owe(created);
        let mut l = link.borrow_mut();
        l.share_memory(mem)?;
        let wait = l.request(req(backing.entries().to_vec()), id);
        drop(l);
        self.owe(Some(wait));
        Ok(())
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.pool.borrow_mut().shut_all();
    }
}

impl Renderer for WorkerPool {
    fn create_context(
        &mut self,
        ctx: u32,
        capset_id: u8,
        name: &[u8],
    ) -> Result<(), ProtocolError> {
        match u32::from(capset_id) {
            0 | VIRTIO_GPU_CAPSET_VIRGL | VIRTIO_GPU_CAPSET_VIRGL2 => {}
            id => return Err(ProtocolError::UnsupportedCapset { id, version: 0 }),
        }
        let mut p = self.pool.borrow_mut();
        if p.contexts.contains_key(&ctx) {
            return Err(ProtocolError::ContextIdInUse(ctx));
        }
        let at = p
            .least_loaded()
            .ok_or(ProtocolError::RenderWorkerLost(ctx))?;
        let link = p.link(at).ok_or(ProtocolError::RenderWorkerLost(ctx))?;
        p.contexts.insert(ctx, at);
        p.fresh.insert(ctx, (capset_id, name.to_vec()));
        let wait = {
            let mut l = link.borrow_mut();
            l.contexts += 1;
            l.request(
                Request::CtxCreate {
                    ctx,
                    capset: capset_id,
                    name: name.to_vec(),
                },
                ctx,
            )
        };
        tracing::debug!(ctx, worker = at.slot, "context placed");
        p.publish();
        drop(p);
        self.owe(Some(wait));
        Ok(())
    }

    fn destroy_context(&mut self, ctx: u32) {
        let mut p = self.pool.borrow_mut();
        p.fresh.remove(&ctx);
        p.attached.remove(&ctx);
        let Some(at) = p.contexts.remove(&ctx) else {
            return;
        };
        if let Some(link) = p.link(at) {
            let mut l = link.borrow_mut();
            l.contexts = l.contexts.saturating_sub(1);
            l.send(Request::CtxDestroy(ctx), Vec::new(), ctx, OwedKind::Nothing);
        }
        p.publish();
    }

    fn attach_resource(&mut self, ctx: u32, id: u32) -> Result<(), ProtocolError> {
        let mut p = self.pool.borrow_mut();
        let (mut at, _) = p.context(ctx)?;
        // A context that has done nothing yet follows an existing resource
        // to its worker, so contexts sharing resources end up together
        // (a compositor importing a client's buffer first).
        let home = p.resources.get(&id).and_then(|r| r.home);
        let mut moved = None;
        if let Some(home) = home.filter(|h| h.slot != at.slot) {
            moved = p.move_context(ctx, at, home);
            if moved.is_some() {
                at = home;
            }
        }
        p.fresh.remove(&ctx);
        let (home, mut link, created) = p.place(id, Some(at))?;
        let mut replica = None;
        if home.slot != at.slot {
            if p.resources.get(&id).is_some_and(PoolResource::replicable) {
                replica = match p.replicate(id, at) {
                    Ok(w) => w,
                    // Past the replicas' bounds: refused as any other.
                    Err(ProtocolError::ResourceOnOtherWorker { .. }) => {
                        return p.refuse_elsewhere(id, ctx, home, at);
                    }
                    Err(e) => return Err(e),
                };
                link = p.link(at).ok_or(ProtocolError::RenderWorkerLost(ctx))?;
            } else {
                p.refuse_elsewhere(id, ctx, home, at)?;
            }
        }
        p.attached.entry(ctx).or_default().insert(id);
        drop(p);
        self.owe(moved);
        self.owe(created);
        self.owe(replica);
        let wait = link
            .borrow_mut()
            .request(Request::Attach { ctx, res: id }, ctx);
        self.owe(Some(wait));
        Ok(())
    }

    fn detach_resource(&mut self, ctx: u32, id: u32) {
        let mut p = self.pool.borrow_mut();
        if let Some(ids) = p.attached.get_mut(&ctx) {
            ids.remove(&id);
        }
        let (Ok((at, link)), Some(r)) = (p.context(ctx), p.resources.get(&id)) else {
            return;
        };
        let there = r.home == Some(at) || r.replicas.iter().any(|(p, _)| *p == at);
        if there {
            link.borrow_mut().send(
                Request::Detach { ctx, res: id },
                Vec::new(),
                ctx,
                OwedKind::Nothing,
            );
        }
    }

    fn submit(&mut self, ctx: u32, ring: u8, cmds: &[u8]) -> Result<(), ProtocolError> {
        if ring != 0 {
            return Err(ProtocolError::RingIdxOutOfRange(ring));
        }
        if !cmds.len().is_multiple_of(4) {
            return Err(ProtocolError::RendererFailed(libc::EINVAL));
        }
        let (_, link) = {
            let mut p = self.pool.borrow_mut();
            p.fresh.remove(&ctx);
            let (at, link) = p.context(ctx)?;
            p.refresh_replicas(ctx, at);
            p.touch(ctx, at);
            (at, link)
        };
        let wait = link.borrow_mut().request(
            Request::Submit {
                ctx,
                ring,
                cmds: cmds.to_vec(),
            },
            ctx,
        );
        self.owe(Some(wait));
        Ok(())
    }

    fn fence(&mut self, ctx: u32, ring: u8) -> GpuWait {
        // ctx 0 work (transfers, read-back) is done once its replies are
        // in, which the device awaits before the fence: nothing to wait
        // for. A lost context's fences complete at once: never lost.
        let Ok((_, link)) = ({
            let mut p = self.pool.borrow_mut();
            p.fresh.remove(&ctx);
            p.context(ctx)
        }) else {
            return Box::pin(std::future::ready(()));
        };
        let slot = ReplySlot::new();
        link.borrow_mut().send(
            Request::Fence { ctx, ring },
            Vec::new(),
            ctx,
            OwedKind::Fence(slot.clone()),
        );
        Box::pin(async move {
            let _ = ReplyWait(slot).await;
        })
    }

    fn create_resource(&mut self, id: u32, kind: &ResourceKind) -> Result<(), ProtocolError> {
        let (width, height) = match kind {
            ResourceKind::Image2d { width, height, .. } => (*width, *height),
            ResourceKind::Image3d(c) => (c.width, c.height),
            ResourceKind::HostBlob { .. } | ResourceKind::GuestBlob { .. } => {
                return Err(ProtocolError::FeatureNotNegotiated {
                    command: VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                    feature: VIRTIO_GPU_F_RESOURCE_BLOB,
                })
            }
        };
        let mut p = self.pool.borrow_mut();
        if p.resources.contains_key(&id) {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        // Created on a worker when first used (see `Pool::place`).
        p.resources.insert(
            id,
            PoolResource {
                width,
                height,
                kind: kind.clone(),
                home: None,
                backing: None,
                version: 0,
                replicas: Vec::new(),
            },
        );
        Ok(())
    }

    fn destroy_resource(&mut self, id: u32) {
        let mut p = self.pool.borrow_mut();
        let Some(r) = p.resources.remove(&id) else {
            return;
        };
        for ids in p.attached.values_mut() {
            ids.remove(&id);
        }
        if p.shared.remove(&id) {
            let bytes = u64::from(r.width) * u64::from(r.height) * 4;
            let live = r.replicas.len();
            p.replica_count -= live;
            p.replica_bytes -= bytes * live as u64;
        }
        let homes = r.home.into_iter().chain(r.replicas.iter().map(|(p, _)| *p));
        for link in homes.filter_map(|h| p.link(h)) {
            link.borrow_mut()
                .send(Request::ResDestroy(id), Vec::new(), id, OwedKind::Nothing);
        }
    }

    fn attach_backing(
        &mut self,
        id: u32,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let mut p = self.pool.borrow_mut();
        let home = p
            .resources
            .get(&id)
            .ok_or(ProtocolError::UnknownResource(id))?
            .home;
        p.mem = Some(mem.clone());
        let entries = backing.entries().to_vec();
        // Not on a worker yet: it gets the backing when it is placed.
        let mut wait = None;
        if let Some(home) = home {
            let link = p.link(home).ok_or(ProtocolError::RenderWorkerLost(id))?;
            let mut l = link.borrow_mut();
            l.share_memory(mem)?;
            wait = Some(l.request(
                Request::AttachBacking {
                    id,
                    entries: entries.clone(),
                },
                id,
            ));
        }
        if let Some(r) = p.resources.get_mut(&id) {
            r.backing = Some(entries);
        }
        drop(p);
        self.owe(wait);
        Ok(())
    }

    fn detach_backing(&mut self, id: u32) -> Result<(), ProtocolError> {
        let mut p = self.pool.borrow_mut();
        let Some(r) = p.resources.get_mut(&id) else {
            return Ok(());
        };
        r.backing = None;
        if let Some(link) = r.home.and_then(|h| p.link(h)) {
            let wait = link.borrow_mut().request(Request::DetachBacking(id), id);
            drop(p);
            self.owe(Some(wait));
        }
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        self.transfer(
            id,
            0,
            true,
            Some(rect),
            |entries| Request::Transfer2d {
                id,
                rect,
                offset,
                entries,
            },
            backing,
            mem,
        )
    }

    fn transfer_3d(
        &mut self,
        ctx: u32,
        t: &Transfer3d,
        to_host: bool,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let t = *t;
        self.transfer(
            t.resource_id.0,
            ctx,
            to_host,
            None,
            |entries| Request::Transfer3d {
                ctx,
                t,
                to_host,
                entries,
            },
            backing,
            mem,
        )
    }

    fn read_rect(
        &mut self,
        _id: u32,
        _rect: Rect,
        _out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        // Pixels live in another process: only `read_rect_later` has them.
        Err(ProtocolError::RendererFailed(libc::EAGAIN))
    }

    fn read_rect_later(&mut self, id: u32, rect: Rect, out: Vec<u8>) -> PixelsWait {
        let ready = |r| -> PixelsWait { Box::pin(std::future::ready(r)) };
        let p = self.pool.borrow();
        let Some(r) = p.resources.get(&id) else {
            return ready(Err(ProtocolError::UnknownResource(id)));
        };
        if !rect.fits_within(r.width, r.height) {
            return ready(Err(ProtocolError::RectOutsideResource));
        }
        let len = u64::from(rect.width)
            .checked_mul(u64::from(rect.height))
            .and_then(|n| n.checked_mul(4));
        let Some(len) = len.filter(|&n| usize::try_from(n).is_ok()) else {
            return ready(Err(ProtocolError::OutOfMemory {
                requested: u64::MAX,
            }));
        };
        let Some(home) = r.home else {
            // Never rendered to nor written: what a fresh resource holds.
            return ready(Ok(vec![0; len as usize]));
        };
        if len == 0 {
            return ready(Ok(Vec::new()));
        }
        let Some(link) = p.link(home) else {
            return ready(Err(ProtocolError::RenderWorkerLost(id)));
        };
        drop(p);
        let read = link.borrow_mut().read_rect(id, rect, len, out);
        match read {
            Some(pixels) => Box::pin(pixels),
            None => ready(Err(ProtocolError::OutOfMemory { requested: len })),
        }
    }

    fn blob_memory(&mut self, _id: u32) -> Option<BlobMemory> {
        None
    }

    fn settle(&mut self) -> Option<Settle> {
        if self.owed.is_empty() {
            return None;
        }
        let owed = std::mem::take(&mut self.owed);
        Some(Box::pin(async move {
            let mut first = Ok(());
            for w in owed {
                if let Err(e) = w.await {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
            first
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virgl_worker_start_retries_back_off_from_100_ms_doubling_to_5_s() {
        let ms = |n| retry_delay(n).as_millis();
        assert_eq!(
            (1..=8).map(ms).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(ms(u32::MAX), 5000);
    }

    #[test]
    fn virgl_readback_memfd_is_sealed_so_a_worker_cannot_resize_it() {
        use std::os::fd::FromRawFd;
        let shm = readback_memfd().unwrap();
        check_sealed(&shm).unwrap();
        let file = std::fs::File::from(shm.try_clone().unwrap());
        // What the worker holds (writable): shrinking and growing refused.
        for len in [0, SHM_SIZE / 2, SHM_SIZE * 2] {
            let e = file.set_len(len).expect_err("resized a sealed memfd");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "to {len}");
        }
        assert_eq!(file.metadata().unwrap().len(), SHM_SIZE);
        // Seals cannot be taken off (F_SEAL_SEAL) ...
        // SAFETY: fcntl on our descriptor with an integer argument.
        let r = unsafe { libc::fcntl(shm.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_WRITE) };
        assert_eq!(r, -1);
        // ... and an unsealed one, which a worker could shrink, is refused.
        // SAFETY: memfd_create with a static name; checked below.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let plain = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = std::fs::File::from(plain.try_clone().unwrap());
        f.set_len(SHM_SIZE).unwrap();
        f.set_len(4096).unwrap();
        f.set_len(SHM_SIZE).unwrap();
        let e = check_sealed(&plain).expect_err("unsealed");
        assert!(e.to_string().contains("not sealed"), "{e}");
        assert!(ReadBack::map(&plain).is_err());
    }

    #[test]
    fn virgl_worker_exit_names_its_signal_and_sigsys_says_where_to_look() {
        let sys = describe_exit(ExitStatus::from_raw(libc::SIGSYS));
        assert_eq!(
            sys,
            format!(
                "killed by signal {} (SIGSYS: a system call the seccomp filter refuses)",
                libc::SIGSYS
            )
        );
        assert!(SECCOMP_HINT.contains("--seccomp log") && SECCOMP_HINT.contains("type=1326"));
        let segv = describe_exit(ExitStatus::from_raw(libc::SIGSEGV));
        assert_eq!(segv, "killed by signal 11 (SIGSEGV)");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }
}
