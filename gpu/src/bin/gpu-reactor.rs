//! gpu-reactor: a virtio-gpu vhost-user backend.
//!
//! Listens on a unix socket for a VMM (`-device vhost-user-gpu-pci`) and
//! serves one frontend at a time; SIGTERM or SIGINT stop it cleanly (stop
//! accepting, end the session, reset the device, exit 0).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use gpu::device::{DeviceConfig, MAX_QUEUE_SIZE};
use gpu::sandbox::{self, SeccompMode};
use gpu::vhost::{Backend, BackendOptions, Server, SessionEnd};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Renderer {
    /// Modelled GPU time, real memory copies (no host GPU needed).
    Sim,
    /// 2D only, through rutabaga_gfx.
    #[value(name = "2d")]
    TwoD,
    /// virglrenderer on Mesa's llvmpipe, headless (cargo feature `virgl`).
    Virgl,
}

impl Renderer {
    /// The name `--renderer` takes.
    fn name(self) -> &'static str {
        match self {
            Renderer::Sim => "sim",
            Renderer::TwoD => "2d",
            Renderer::Virgl => "virgl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Seccomp {
    /// No seccomp filter.
    Off,
    /// Allow every call but have the kernel log those not on the allow
    /// list (audit log / dmesg): for finding what a new code path needs.
    Log,
    /// Kill the process (SIGSYS) on a call not on the allow list.
    Kill,
}

/// Hidden test hook: a call the filter forbids, made once the filter is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ForbiddenCall {
    /// socket(AF_INET) on reactor shard 0 (a thread started before the
    /// filter was installed).
    Socket,
    /// execve() of a path that does not exist, on the main thread.
    Execve,
    /// io_uring_setup: a fresh, unrestricted ring.
    IoUringSetup,
    /// fork (clone without CLONE_THREAD; render workers are started by
    /// their launcher, not by the daemon).
    Fork,
    /// kill(parent, 0): a signal (none: 0) to another process.
    KillOther,
    /// unlink of `<socket path>.selftest` (EACCES: it stays).
    Unlink,
    /// The same calls in a render worker, once its own filter is on
    /// (`--renderer virgl`); the daemon says how the worker ended.
    WorkerIoUringSetup,
    WorkerExecve,
    WorkerFork,
    WorkerKillOther,
    WorkerPrlimitOther,
    /// ftruncate of the worker's read-back memfd to 0 (sealed: EPERM).
    WorkerShrinkReadback,
    WorkerUnlink,
}

impl ForbiddenCall {
    #[cfg(not(feature = "virgl"))]
    fn is_worker_call(self) -> bool {
        use ForbiddenCall::*;
        matches!(
            self,
            WorkerIoUringSetup
                | WorkerExecve
                | WorkerFork
                | WorkerKillOther
                | WorkerPrlimitOther
                | WorkerShrinkReadback
                | WorkerUnlink
        )
    }

    /// The call in a render worker, if it is one.
    #[cfg(feature = "virgl")]
    fn in_worker(self) -> Option<gpu::render::virgl::worker::WorkerSelftest> {
        use gpu::render::virgl::worker::WorkerSelftest as W;
        Some(match self {
            ForbiddenCall::WorkerIoUringSetup => W::IoUringSetup,
            ForbiddenCall::WorkerExecve => W::Execve,
            ForbiddenCall::WorkerFork => W::Fork,
            ForbiddenCall::WorkerKillOther => W::KillOther,
            ForbiddenCall::WorkerPrlimitOther => W::PrlimitOther,
            ForbiddenCall::WorkerShrinkReadback => W::ShrinkReadback,
            ForbiddenCall::WorkerUnlink => W::Unlink,
            _ => return None,
        })
    }
}

/// A virtio-gpu vhost-user backend: thread-per-core io_uring shards,
/// contexts isolated from each other, fences completed by events.
///
/// Start it, then point QEMU at the socket:
///   gpu-reactor -s /run/gpu.sock &
///   qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=2G,share=on
///     -numa node,memdev=mem -chardev socket,id=gpu,path=/run/gpu.sock
///     -device vhost-user-gpu-pci,chardev=gpu
///
/// 3D (the guest's Mesa virgl driver) is --renderer virgl, in a build with
/// the cargo feature `virgl`.
///
/// Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug, or
/// RUST_LOG=gpu::vhost=debug for every vhost-user message).
#[derive(Debug, Parser)]
#[command(name = "gpu-reactor", version, verbatim_doc_comment)]
struct Args {
    /// Listen for the VMM on this unix socket (created with mode 0600; a
    /// stale socket file is replaced).
    #[arg(short = 's', long, value_name = "PATH",
          required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,

    /// Serve one VMM on this already connected socket, then exit (how
    /// libvirt starts vhost-user backends).
    #[arg(long, value_name = "FDNUM", conflicts_with = "socket_path")]
    fd: Option<i32>,

    /// What executes the guest's GPU work [default: sim]
    #[arg(long, value_enum)]
    renderer: Option<Renderer>,

    /// The same as `--renderer virgl` (libvirt passes it for
    /// `<acceleration accel3d='yes'/>`).
    #[arg(long)]
    virgl: bool,

    /// A DRM render node (libvirt passes one): checked to exist, then not
    /// used: virgl renders on llvmpipe through EGL surfaceless, which needs
    /// no render node, and the other renderers need none either.
    #[arg(long, value_name = "PATH")]
    render_node: Option<PathBuf>,

    /// Reactor shards (threads, one io_uring each) [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    shards: Option<u16>,

    /// Largest control queue the VMM may set up (a power of two, at most 1024).
    #[arg(long, value_name = "N", default_value_t = MAX_QUEUE_SIZE, value_parser = parse_queue_size)]
    queue_size: u16,

    /// Scanouts (displays) the device reports.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    outputs: u32,

    /// Log any guest command still in flight after this long, with its
    /// context id and command type (0: never). Reactor tasks that hold a
    /// shard for more than 10 ms are always logged.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    stall_warn_ms: u64,

    /// The guest's memory budget: host memory everything it creates may
    /// hold together (resource images by format, mips, layers and samples;
    /// host blobs; backing entries; contexts and resources at a fixed
    /// cost each; command buffers and flush pixels in flight). Past it,
    /// commands answer ERR_OUT_OF_MEMORY and the device keeps serving.
    /// Bytes, or with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_name = "BYTES", default_value = "1G", value_parser = parse_bytes)]
    max_guest_memory: u64,

    /// Serve Prometheus text metrics (fence latency per context, commands
    /// in flight, stalls, ...) at http://ADDR/metrics, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,

    /// The seccomp sandbox: once started, every thread may make only the
    /// system calls the daemon needs for its renderer (docs/reliability.md).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Seccomp::Kill)]
    seccomp: Seccomp,

    /// Test hook: make a forbidden system call right after the filter is
    /// installed (the sandbox tests).
    #[arg(long, value_enum, hide = true)]
    seccomp_selftest: Option<ForbiddenCall>,

    /// virgl only: render worker processes, each with its own
    /// virglrenderer, so one context's GPU work never freezes contexts on
    /// other workers; contexts go to the least loaded one. 0 runs
    /// virglrenderer on a render shard inside this process.
    /// [default: one per shard]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    render_workers: Option<u16>,

    /// virgl only: a render worker that leaves a command (not a fence)
    /// unanswered this long is killed and restarted; its contexts are lost.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    render_watchdog_ms: u64,

    /// Print the vhost-user capabilities JSON (as libvirt reads it) and exit.
    #[arg(long)]
    print_capabilities: bool,
}

/// `1073741824`, `1024M`, `1G`: bytes, or K/M/G/T (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, unit)) if unit.is_ascii_alphabetic() => {
            let shift = match unit.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown unit {unit:?} (K, M, G or T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|e| format!("{e}"))?;
    n.checked_mul(1 << shift)
        .filter(|&n| n > 0)
        .ok_or_else(|| "must be from 1 byte to 16 EiB".to_string())
}

fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u16 = s.parse().map_err(|e| format!("{e}"))?;
    if n == 0 || n > MAX_QUEUE_SIZE || !n.is_power_of_two() {
        return Err(format!("must be a power of two from 1 to {MAX_QUEUE_SIZE}"));
    }
    Ok(n)
}

/// The vhost-user backend capabilities (vhost-user.rst, "Backend program
/// conventions"), the features in QEMU's order: with the `virgl` renderer
/// built in, `virgl` (`--virgl`) and `render-node` (`--render-node`,
/// accepted and not used).
#[cfg(feature = "virgl")]
const CAPABILITIES: &str = r#"{"type":"gpu","features":["render-node","virgl"]}"#;

/// The vhost-user backend capabilities (vhost-user.rst, "Backend program
/// conventions"): a build without the `virgl` renderer cannot do 3D.
#[cfg(not(feature = "virgl"))]
const CAPABILITIES: &str = r#"{"type":"gpu","features":[]}"#;

/// The renderer `--renderer` and `--virgl` ask for together.
fn chosen_renderer(args: &Args) -> Result<Renderer, String> {
    if !args.virgl {
        return Ok(args.renderer.unwrap_or(Renderer::Sim));
    }
    if let Some(r) = args.renderer.filter(|&r| r != Renderer::Virgl) {
        return Err(format!(
            "--virgl means --renderer virgl, not --renderer {}",
            r.name()
        ));
    }
    if cfg!(not(feature = "virgl")) {
        return Err(
            "--virgl: renderer virgl is not in this build (cargo feature `virgl`); this gpu-reactor cannot do 3D".into(),
        );
    }
    Ok(Renderer::Virgl)
}

/// `--render-node`: the path must exist (a typo is an error, not a silent
/// fallback); nothing opens it.
fn check_render_node(path: &Path) -> Result<(), String> {
    std::fs::metadata(path).map_err(|e| format!("--render-node {}: {e}", path.display()))?;
    tracing::info!(
        render_node = %path.display(),
        "render node not used: virgl renders on llvmpipe through EGL surfaceless"
    );
    Ok(())
}

fn main() -> ExitCode {
    // Re-executed as a render worker (hidden first argument)?
    #[cfg(feature = "virgl")]
    if let Some(code) = gpu::render::virgl::worker::run_if_requested() {
        return code;
    }
    fixed_mmap_threshold();
    let args = Args::parse();
    if args.print_capabilities {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-reactor: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Allocations of 128 KiB and more (what a guest sizes: images, pixel
/// copies of flushes, gathered command buffers) are mapped on their own and
/// unmapped when freed. glibc's default raises that threshold to the size
/// of every such block freed, after which the guest's freed images stay in
/// the allocator's heaps: 1,000,000 hostile commands left the daemon's
/// resident set 20% above where it started after the guest destroyed
/// everything (`gpu/tests/daemon_hostile.rs`). Set before any thread, so
/// every arena has it.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes two integers and only tunes the allocator; no
    // other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn run(args: Args) -> Result<(), String> {
    let renderer = chosen_renderer(&args)?;
    if let Some(path) = &args.render_node {
        check_render_node(path)?;
    }
    // Taken before anything starts a process (render workers), so that no
    // child inherits the VMM's socket.
    let inherited = args.fd.map(inherited_socket).transpose()?;
    let shards = args.shards.map_or_else(
        || thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    let profile = match renderer {
        Renderer::Sim => sandbox::Profile::Sim,
        Renderer::TwoD => sandbox::Profile::TwoD,
        Renderer::Virgl if args.render_workers == Some(0) => sandbox::Profile::Virgl,
        Renderer::Virgl => sandbox::Profile::VirglWorkers,
    };
    let seccomp = match args.seccomp {
        Seccomp::Off => SeccompMode::Off,
        Seccomp::Log => SeccompMode::Log,
        Seccomp::Kill => SeccompMode::Kill,
    };
    // Compiled before anything starts: a filter that cannot be built is a
    // start-up error, not a surprise after binding the socket.
    sandbox::filters(seccomp, profile)?;

    if args.render_workers.is_some() && renderer != Renderer::Virgl {
        return Err("--render-workers is for --renderer virgl".into());
    }
    let factory: Arc<dyn gpu::render::RendererFactory> = match renderer {
        Renderer::Sim => Arc::new(gpu::render::sim::SimFactory::default()),
        Renderer::TwoD => Arc::new(gpu::render::rutabaga2d::Rutabaga2dFactory),
        #[cfg(feature = "virgl")]
        Renderer::Virgl => match args.render_workers.map_or(shards, usize::from) {
            0 => Arc::new(gpu::render::virgl::VirglFactory::new()?),
            n => {
                use gpu::render::virgl::{WorkerExe, WorkerOptions, WorkerPoolFactory};
                // Each worker installs its own, stricter filter once it is
                // up, in the daemon's mode.
                let mut exe = WorkerExe::current();
                exe.args
                    .extend(["--seccomp".into(), seccomp.to_string().into()]);
                let mut o = WorkerOptions::new(n, exe);
                o.watchdog = Duration::from_millis(args.render_watchdog_ms);
                tracing::info!(workers = n, "virgl in render worker processes");
                Arc::new(WorkerPoolFactory::new(o)?)
            }
        },
        #[cfg(not(feature = "virgl"))]
        Renderer::Virgl => {
            return Err(
                "renderer virgl is not in this build (cargo feature `virgl`); use `--renderer sim` or `--renderer 2d`".into(),
            )
        }
    };
    // Signals are taken by one thread with sigwait(2); blocking them here,
    // before any thread starts, keeps every other thread from seeing them.
    let signals = block_termination_signals()?;
    let opts = BackendOptions {
        shards,
        max_queue_size: args.queue_size,
        device: DeviceConfig {
            num_scanouts: args.outputs,
            memory_limit: args.max_guest_memory,
            stall_warn: (args.stall_warn_ms > 0).then(|| Duration::from_millis(args.stall_warn_ms)),
            ..DeviceConfig::default()
        },
        stall_warn: Some(Duration::from_millis(10)),
        renderer: factory,
        ..BackendOptions::default()
    };
    let backend =
        Arc::new(Backend::start(opts).map_err(|e| format!("cannot start the device: {e}"))?);
    if let Some(addr) = args.metrics {
        serve_metrics(addr, backend.clone())?;
    }
    tracing::info!(
        renderer = renderer.name(),
        shards,
        queue_size = args.queue_size,
        outputs = args.outputs,
        "gpu-reactor started"
    );

    let mut sandbox = Sandbox {
        mode: seccomp,
        profile,
        selftest: args.seccomp_selftest,
        worker_selftest: worker_selftest(args.seccomp_selftest, seccomp, profile)?,
        socket_path: args.socket_path.clone(),
    };
    if let Some(stream) = inherited {
        enter_sandbox(&mut sandbox, &backend)?;
        return serve_fd(backend, stream, signals);
    }
    let Some(path) = args.socket_path else {
        return Err("--socket-path or --fd is required".into());
    };
    let server = Server::bind(&path, backend.clone())
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    // Under the filter no file can be removed: a helper started now
    // removes the socket file when this function returns (declared after
    // `server`, so dropped before it on every path).
    let _socket_file = (seccomp != SeccompMode::Off)
        .then(|| sandbox::PathRemover::start(&path))
        .transpose()
        .map_err(|e| format!("cannot start the socket file's remover: {e}"))?;
    enter_sandbox(&mut sandbox, &backend)?;
    let stop = server.stopper();
    spawn_signal_thread(signals, move || stop.stop())?;
    server.run().map_err(|e| format!("accept failed: {e}"))?;
    drop(server);
    shut_down(&backend);
    Ok(())
}

/// What `enter_sandbox` installs and tests.
struct Sandbox {
    mode: SeccompMode,
    profile: sandbox::Profile,
    selftest: Option<ForbiddenCall>,
    /// `--seccomp-selftest worker-*`: runs a worker that makes the call,
    /// started by a launcher made before the filter, and says how it ended.
    worker_selftest: Option<Box<dyn FnOnce() -> String>>,
    socket_path: Option<PathBuf>,
}

/// Installs the seccomp filter on every thread (the shards, the renderer's
/// threads, this one) once the rings, the renderer factory, the listening
/// socket and the metrics listener exist: none of their set-up calls need
/// to stay allowed.
fn enter_sandbox(sb: &mut Sandbox, backend: &Backend) -> Result<(), String> {
    let mode = sb.mode;
    sandbox::install(mode, sb.profile)?;
    if mode != SeccompMode::Off {
        tracing::info!(mode = %mode, "seccomp filter installed on every thread");
        // Renderers made before the filter (render workers started
        // unfiltered) are made again under it; refuses to go on when no
        // render worker can start under the filter.
        backend.device().filter_installed()?;
    }
    if let Some(run) = sb.worker_selftest.take() {
        return Err(run());
    }
    match sb.selftest {
        None => Ok(()),
        Some(call) => Err(forbidden_call(call, sb, backend)),
    }
}

/// `--seccomp-selftest`: makes the call and reports how it came back (under
/// `--seccomp kill` it does not come back: the kernel kills the process).
fn forbidden_call(call: ForbiddenCall, sb: &Sandbox, backend: &Backend) -> String {
    let last = std::io::Error::last_os_error;
    match call {
        ForbiddenCall::IoUringSetup => {
            // struct io_uring_params: 120 bytes, zeroed.
            let mut params = [0u64; 15];
            // SAFETY: io_uring_setup writes at most the 120 bytes of
            // `params`, a live local; a ring made is closed at once.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
            if fd >= 0 {
                // SAFETY: the descriptor was just returned to us.
                unsafe { libc::close(fd as i32) };
            }
            format!("selftest: io_uring_setup returned {fd}")
        }
        ForbiddenCall::Fork => {
            // SAFETY: the child only calls _exit (async-signal-safe).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(0) };
            }
            format!("selftest: fork returned {pid}")
        }
        ForbiddenCall::KillOther => {
            // SAFETY: integer arguments; signal 0 sends nothing.
            let r = unsafe { libc::kill(libc::getppid(), 0) };
            format!("selftest: kill(parent, 0) returned {r}")
        }
        ForbiddenCall::Unlink => {
            let Some(sock) = &sb.socket_path else {
                return "selftest: unlink needs --socket-path".into();
            };
            let mut victim = sock.clone().into_os_string();
            victim.push(".selftest");
            let r = std::fs::remove_file(&victim);
            format!("selftest: unlink returned {r:?}")
        }

        ForbiddenCall::Socket => {
            let (tx, rx) = std::sync::mpsc::channel();
            let sent = backend.reactor().shard(0).run(move || {
                // SAFETY: plain integer arguments; the descriptor, if any,
                // is closed right away.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                if fd >= 0 {
                    // SAFETY: `fd` was just returned to us.
                    unsafe { libc::close(fd) };
                }
                let _ = tx.send(fd);
            });
            match (sent, rx.recv_timeout(Duration::from_secs(10))) {
                (true, Ok(fd)) => format!("selftest: socket(AF_INET) on shard 0 returned {fd}"),
                _ => "selftest: shard 0 did not run the call".into(),
            }
        }
        ForbiddenCall::Execve => {
            // A path that does not exist: allowed, the call fails with
            // ENOENT and comes back; the filter stops it before any lookup.
            let path = c"/nonexistent/gpu-reactor-selftest";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path; argv and envp are NULL-terminated
            // arrays of valid C strings that outlive the call.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            format!("selftest: execve returned: {}", last())
        }
        // Run by `Sandbox::worker_selftest`.
        _ => format!("selftest: {call:?} is a render worker's call"),
    }
}

/// `--seccomp-selftest worker-*`: a launcher (started now, before the
/// filter) for a render worker that makes the call once its own filter is
/// on; run after the filter, it says how that worker ended.
#[cfg(feature = "virgl")]
fn worker_selftest(
    call: Option<ForbiddenCall>,
    mode: SeccompMode,
    profile: sandbox::Profile,
) -> Result<Option<Box<dyn FnOnce() -> String>>, String> {
    use gpu::render::virgl::{pool, WorkerExe};
    let Some(w) = call.and_then(ForbiddenCall::in_worker) else {
        return Ok(None);
    };
    if profile != sandbox::Profile::VirglWorkers {
        return Ok(Some(Box::new(|| {
            "selftest: worker calls need --renderer virgl with render workers".into()
        })));
    }
    let mut exe = WorkerExe::current();
    exe.args.extend([
        "--seccomp".into(),
        mode.to_string().into(),
        "--seccomp-selftest".into(),
        w.name().into(),
    ]);
    let launcher = exe.start_launcher()?;
    Ok(Some(Box::new(move || {
        format!(
            "selftest: {} in a render worker: {}",
            w.name(),
            pool::run_worker_to_its_end(&launcher)
        )
    })))
}

#[cfg(not(feature = "virgl"))]
fn worker_selftest(
    call: Option<ForbiddenCall>,
    _mode: SeccompMode,
    _profile: sandbox::Profile,
) -> Result<Option<Box<dyn FnOnce() -> String>>, String> {
    Ok(call.filter(|c| c.is_worker_call()).map(|c| {
        Box::new(move || format!("selftest: {c:?} needs a build with the cargo feature `virgl`"))
            as Box<dyn FnOnce() -> String>
    }))
}

/// `--fd`: the inherited socket, made close-on-exec (the parent passed it
/// without the flag; our children must not keep the VMM's connection).
fn inherited_socket(fd: i32) -> Result<UnixStream, String> {
    if fd < 0 {
        return Err(format!("--fd {fd} is not a file descriptor"));
    }
    // SAFETY: fcntl on a plain integer touches no memory; a number that is
    // not an open descriptor fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(format!("--fd {fd}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the parent handed this descriptor to us for exactly this use;
    // nothing else in the process owns it.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `--fd`: one session on the inherited socket.
fn serve_fd(
    backend: Arc<Backend>,
    stream: UnixStream,
    signals: libc::sigset_t,
) -> Result<(), String> {
    let b = backend.clone();
    spawn_signal_thread(signals, move || b.interrupt())?;
    let b = backend.clone();
    let session = thread::Builder::new()
        .name("vhost-control".into())
        .spawn(move || b.serve_stream(stream))
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    match session.join() {
        Ok(SessionEnd::Disconnected) | Ok(SessionEnd::Closed(_)) => {}
        Err(_) => tracing::error!("the session thread panicked"),
    }
    shut_down(&backend);
    Ok(())
}

fn shut_down(backend: &Backend) {
    if let Err(e) = backend.device().reset() {
        tracing::warn!("final device reset: {e}");
    }
    tracing::info!("gpu-reactor stopped");
}

fn block_termination_signals() -> Result<libc::sigset_t, String> {
    // SAFETY: sigset_t is plain data; the calls get valid pointers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(format!(
                "pthread_sigmask: {}",
                std::io::Error::from_raw_os_error(r)
            ));
        }
        Ok(set)
    }
}

/// Waits for SIGTERM/SIGINT on its own thread and calls `on_signal` once.
fn spawn_signal_thread(
    set: libc::sigset_t,
    on_signal: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            loop {
                // SAFETY: `set` and `sig` are live locals.
                let r = unsafe { libc::sigwait(&set, &mut sig) };
                if r == 0 {
                    break;
                }
            }
            let name = if sig == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            tracing::info!("{name}: stopping");
            on_signal();
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}

/// Serves `GET /metrics` (Prometheus text format) on `addr` from a plain
/// thread: a scrape asks the device's owner shard and never blocks a shard.
fn serve_metrics(addr: std::net::SocketAddr, backend: Arc<Backend>) -> Result<(), String> {
    use std::io::{Read, Write};
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("--metrics {addr}: {e}"))?;
    tracing::info!(%addr, "serving metrics at /metrics");
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = [0u8; 1024];
                let n = conn.read(&mut req).unwrap_or(0);
                let line = String::from_utf8_lossy(&req[..n]);
                let (status, body) = if line.starts_with("GET /metrics") {
                    match backend.device().metrics() {
                        Ok(text) => ("200 OK", text),
                        Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                    }
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .map_err(|e| format!("metrics thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn max_guest_memory_takes_bytes_or_a_binary_unit() {
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1X").is_err());
        assert!(parse_bytes("99999999T").is_err(), "past 64 bits");
    }
}
