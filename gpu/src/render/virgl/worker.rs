//! The render worker process: one virglrenderer, serving one device process
//! over a socketpair (see `wire.rs`, and `pool.rs` for the parent side).
//!
//! The device process starts it by re-executing its own binary with the
//! hidden first argument [`WORKER_ARG`], the socket on fd 3 and the shared
//! read-back area (a memfd) on fd 4. `gpu-reactor` and `loadgen` call
//! [`run_if_requested`] first thing in `main`. `--seccomp MODE` after it
//! (the daemon's mode) makes the worker install its own filter
//! ([`Profile::RenderWorker`]) once it is up: its ring made, its library
//! initialised, before it says Ready. That filter stacks on the one it
//! inherited from the daemon and takes away what only start-up needed
//! (new rings, execve, new processes, signals to others). The hidden
//! `--seccomp-selftest CALL` makes a call that filter refuses right after
//! Ready (the sandbox tests).
//!
//! Inside, it is the in-process [`Virgl`] renderer on a one-shard reactor:
//! requests are carried out in arrival order; fences are tasks that answer
//! when the library reports them, so a long GPU job never holds up the
//! replies behind it. The worker dies with its parent (`PR_SET_PDEATHSIG`).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::launcher::LAUNCHER_ARG;
use super::wire::{self, Event, MemRegion, Request, RC_WORKER_ERROR};
use super::{read_capsets, Virgl};
use crate::backing::{Backing, GuestMem};
use crate::protocol::ProtocolError;
use crate::render::Renderer;
use crate::sandbox::{self, Profile, SeccompMode};

/// The hidden first argument that makes a binary a render worker.
pub const WORKER_ARG: &str = "--render-worker";
/// Where the worker finds its socket and its shared read-back area.
pub const SOCKET_FD: i32 = 3;
pub const SHM_FD: i32 = 4;

/// A call the worker's filter refuses, made once it is on (`--seccomp-selftest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerSelftest {
    /// io_uring_setup: a fresh ring, which no restriction would bind.
    IoUringSetup,
    /// execve of a path that does not exist.
    Execve,
    /// fork (clone without CLONE_THREAD).
    Fork,
    /// kill(parent, 0): a signal to another process (0: none is sent).
    KillOther,
    /// prlimit64 on the parent (reading its limits).
    PrlimitOther,
    /// ftruncate of the read-back memfd to 0 (refused by its seals).
    ShrinkReadback,
    /// unlink of a path that does not exist (EACCES, not ENOENT).
    Unlink,
}

impl WorkerSelftest {
    pub const ALL: [(&'static str, WorkerSelftest); 7] = [
        ("io-uring-setup", WorkerSelftest::IoUringSetup),
        ("execve", WorkerSelftest::Execve),
        ("fork", WorkerSelftest::Fork),
        ("kill-other", WorkerSelftest::KillOther),
        ("prlimit-other", WorkerSelftest::PrlimitOther),
        ("shrink-readback", WorkerSelftest::ShrinkReadback),
        ("unlink", WorkerSelftest::Unlink),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("?", |(n, _)| n)
    }

    fn parse(s: &str) -> Option<WorkerSelftest> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }
}

/// What the worker was started with after [`WORKER_ARG`].
#[derive(Debug, Clone, Copy)]
pub(super) struct WorkerArgs {
    pub(super) seccomp: SeccompMode,
    selftest: Option<WorkerSelftest>,
}

pub(super) fn parse_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<WorkerArgs, String> {
    let mut out = WorkerArgs {
        seccomp: SeccompMode::Off,
        selftest: None,
    };
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| format!("{a} takes a value"))?;
        match a.as_str() {
            "--seccomp" => {
                out.seccomp = match value.as_str() {
                    "off" => SeccompMode::Off,
                    "log" => SeccompMode::Log,
                    "kill" => SeccompMode::Kill,
                    v => return Err(format!("--seccomp {v}: off, log or kill")),
                }
            }
            "--seccomp-selftest" => {
                out.selftest = Some(
                    WorkerSelftest::parse(&value)
                        .ok_or_else(|| format!("--seccomp-selftest {value}: unknown"))?,
                )
            }
            _ => return Err(format!("unknown render worker argument {a}")),
        }
    }
    Ok(out)
}

/// Runs a render worker and returns its exit code if this process was
/// started as one; `None` otherwise (carry on with `main`).
pub fn run_if_requested() -> Option<ExitCode> {
    let first = std::env::args_os().nth(1);
    if first
        .as_ref()
        .is_none_or(|a| a != WORKER_ARG && a != LAUNCHER_ARG)
    {
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // The parent may block termination signals on its threads; a worker
    // takes its default dispositions back.
    // SAFETY: an empty, initialised set handed to sigprocmask.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    if first.is_some_and(|a| a == LAUNCHER_ARG) {
        return super::launcher::run_if_requested();
    }
    // SAFETY: plain prctl with integer arguments; the result is checked
    // below through getppid (a parent gone before this call).
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() } == 1 {
        return Some(ExitCode::FAILURE);
    }
    let args = match parse_args(std::env::args_os().skip(2)) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("render worker: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    // SAFETY: the parent put these descriptors here for us alone (dup2 in
    // its pre_exec); nothing else in this fresh process owns them.
    let (sock, shm) = unsafe {
        (
            OwnedFd::from_raw_fd(SOCKET_FD),
            OwnedFd::from_raw_fd(SHM_FD),
        )
    };
    match reactor::block_on(serve(sock, shm, args)) {
        Ok(Ok(())) => Some(ExitCode::SUCCESS),
        Ok(Err(e)) => {
            tracing::error!(error = %e, pid = std::process::id(), "render worker stops");
            Some(ExitCode::FAILURE)
        }
        Err(e) => {
            tracing::error!(error = %e, "render worker has no reactor");
            Some(ExitCode::FAILURE)
        }
    }
}

/// The shared read-back area, mapped writable here.
struct Shm {
    ptr: *mut u8,
    len: usize,
}

impl Shm {
    fn map(fd: &OwnedFd) -> std::io::Result<Shm> {
        use std::os::fd::AsRawFd;
        let len = File::from(fd.try_clone()?).metadata()?.len() as usize;
        // SAFETY: a shared mapping of a memfd of `len` bytes; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Shm {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), ProtocolError> {
        let end = offset.checked_add(src.len() as u64);
        if end.is_none_or(|e| e > self.len as u64) {
            return Err(ProtocolError::OutOfMemory {
                requested: src.len() as u64,
            });
        }
        // SAFETY: `offset..offset+len` lies inside the mapping (checked);
        // the parent reads that span only after our reply.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset as usize), src.len())
        };
        Ok(())
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

async fn serve(sock: OwnedFd, shm_fd: OwnedFd, args: WorkerArgs) -> Result<(), String> {
    let shm = Shm::map(&shm_fd).map_err(|e| format!("cannot map the read-back area: {e}"))?;
    let mut virgl = Virgl::new()?;
    // Up: this thread's ring exists (block_on made it), the library and
    // its threads run. From here on, only what serving needs.
    sandbox::install(args.seccomp, Profile::RenderWorker)
        .map_err(|e| format!("render worker filter: {e}"))?;
    let sock = reactor::io::AsyncFd::new(sock);
    // One writer, so replies from fence tasks never interleave mid-frame.
    let (tx, mut rx) = reactor::channel::<Vec<u8>>();
    let out = sock.clone();
    let writer = reactor::spawn_local_named("worker-writer", async move {
        while let Some(frame) = rx.recv().await {
            if out.write_all(frame).await.0.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(wire::encode_event(&Event::Ready(read_capsets())));
    if let Some(call) = args.selftest {
        // Let the writer send Ready first: the parent then knows this
        // worker came up and that what follows is the call's doing.
        let _ = reactor::time::sleep(std::time::Duration::from_millis(100)).await;
        let said = selftest(call, &shm_fd);
        tracing::error!("selftest: {} {said}", call.name());
        return Err(format!("selftest {} came back", call.name()));
    }
    let mut mem: GuestMem = GuestMemoryMmap::new();
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut buf = Vec::new();
    loop {
        let (r, mut b) = sock.recvmsg(Vec::with_capacity(256 << 10), 16).await;
        let msg = r.map_err(|e| format!("socket: {e}"))?;
        if msg.len == 0 {
            break; // the parent closed: we are done
        }
        fds.extend(msg.fds);
        buf.append(&mut b);
        for body in wire::split_frames(&mut buf).map_err(|e| e.to_string())? {
            let (seq, req) = wire::decode_request(&body).map_err(|e| e.to_string())?;
            let reply = move |rc: i32| wire::encode_event(&Event::Reply { seq, rc });
            // A memory table this worker cannot map is the end of it: it
            // would go on rendering with the old guest memory (or none).
            // The parent sees it exit and starts another, which gets the
            // table again.
            if let Request::MemTable(regions) = &req {
                mem = map_guest_memory(regions, &mut fds)
                    .map_err(|e| format!("cannot map the guest memory table: {e}"))?;
                let _ = tx.send(reply(0));
                continue;
            }
            if let Request::Fence { ctx, ring } = req {
                let wait = virgl.fence(ctx, ring);
                let tx = tx.clone();
                reactor::spawn_local_named("worker-fence", async move {
                    wait.await;
                    let _ = tx.send(reply(0));
                });
                continue;
            }
            let rc = match handle(&mut virgl, &mem, &shm, req) {
                Ok(()) => 0,
                Err(ProtocolError::RendererFailed(rc)) => rc,
                Err(e) => {
                    tracing::debug!(error = %e, "render worker request failed");
                    RC_WORKER_ERROR
                }
            };
            let _ = tx.send(reply(rc));
        }
    }
    drop(tx);
    let _ = writer.await;
    drop(virgl);
    Ok(())
}

fn handle(v: &mut Virgl, mem: &GuestMem, shm: &Shm, req: Request) -> Result<(), ProtocolError> {
    match req {
        // Handled by `serve`: a failure ends the worker.
        Request::MemTable(_) => Ok(()),
        Request::CtxCreate { ctx, capset, name } => v.create_context(ctx, capset, &name),
        Request::CtxDestroy(ctx) => {
            v.destroy_context(ctx);
            Ok(())
        }
        Request::Attach { ctx, res } => v.attach_resource(ctx, res),
        Request::Detach { ctx, res } => {
            v.detach_resource(ctx, res);
            Ok(())
        }
        Request::ResCreate { id, kind } => v.create_resource(id, &kind),
        Request::ResDestroy(id) => {
            v.destroy_resource(id);
            Ok(())
        }
        Request::Submit { ctx, ring, cmds } => v.submit(ctx, ring, &cmds),
        // Answered by its own task (see `serve`).
        Request::Fence { .. } => Ok(()),
        Request::Transfer2d {
            id,
            rect,
            offset,
            entries,
        } => {
            let backing = Backing::new(entries, mem)?;
            v.transfer_to_host_2d(id, rect, offset, &backing, mem)
        }
        Request::Transfer3d {
            ctx,
            t,
            to_host,
            entries,
        } => {
            let backing = Backing::new(entries, mem)?;
            v.transfer_3d(ctx, &t, to_host, &backing, mem)
        }
        Request::AttachBacking { id, entries } => {
            let backing = Backing::new(entries, mem)?;
            v.attach_backing(id, &backing, mem)
        }
        Request::DetachBacking(id) => v.detach_backing(id),
        Request::ReadRect {
            id,
            rect,
            shm_offset,
        } => {
            let mut px = Vec::new();
            v.read_rect(id, rect, &mut px)?;
            shm.write(shm_offset, &px)
        }
        Request::WriteRect { id, rect, pixels } => v.write_rect(id, rect, &pixels),
    }
}

/// Guest RAM as the parent has it: each region from the fd sent with it.
fn map_guest_memory(
    regions: &[MemRegion],
    fds: &mut VecDeque<OwnedFd>,
) -> Result<GuestMem, ProtocolError> {
    let bad = |r: &MemRegion| ProtocolError::BackingBeyondGuestMemory {
        addr: r.guest_addr,
        length: u32::try_from(r.size).unwrap_or(u32::MAX),
    };
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let fd = fds.pop_front().ok_or_else(|| bad(r))?;
        let size = usize::try_from(r.size).map_err(|_| bad(r))?;
        let file = Arc::new(File::from(fd));
        let region = MmapRegion::<()>::from_file(FileOffset::from_arc(file, r.file_offset), size)
            .map_err(|_| bad(r))?;
        mapped
            .push(GuestRegionMmap::new(region, GuestAddress(r.guest_addr)).ok_or_else(|| bad(r))?);
    }
    GuestMemoryMmap::from_regions(mapped)
        .map_err(|_| ProtocolError::BackingBeyondGuestMemory { addr: 0, length: 0 })
}

/// `--seccomp-selftest`: makes the call and says how it came back (under
/// `--seccomp kill` the ones the filter refuses do not: SIGSYS).
fn selftest(call: WorkerSelftest, shm: &OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    // The errno only for a failure (it is stale after a success).
    let came_back = |r: i64| match r {
        0.. => format!("returned {r}"),
        _ => format!("returned {r} ({})", std::io::Error::last_os_error()),
    };
    match call {
        WorkerSelftest::IoUringSetup => {
            // struct io_uring_params: 120 bytes, zeroed (no flags).
            let mut params = [0u64; 15];
            // SAFETY: io_uring_setup writes at most the 120 bytes of
            // `params`, a live local; the ring made, if any, is closed.
            let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
            if fd >= 0 {
                // SAFETY: the descriptor was just returned to us.
                unsafe { libc::close(fd as i32) };
            }
            came_back(fd)
        }
        WorkerSelftest::Execve => {
            let path = c"/nonexistent/gpu-render-worker-selftest";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path; argv and envp are
            // NULL-terminated arrays of valid C strings outliving the call.
            let r = unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            came_back(r.into())
        }
        WorkerSelftest::Fork => {
            // SAFETY: the child only calls _exit, which is
            // async-signal-safe; the parent reaps it.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the child at once, running nothing of ours.
                unsafe { libc::_exit(0) };
            }
            if pid > 0 {
                // SAFETY: waits for our own child; no status is read.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            came_back(pid.into())
        }
        WorkerSelftest::KillOther => {
            // SAFETY: integer arguments; signal 0 sends nothing.
            let r = unsafe { libc::kill(libc::getppid(), 0) };
            came_back(r.into())
        }
        WorkerSelftest::PrlimitOther => {
            let mut old = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads the parent's limit into `old`, a live local;
            // sets none (NULL new limit).
            let r = unsafe {
                libc::prlimit64(
                    libc::getppid(),
                    libc::RLIMIT_NOFILE,
                    std::ptr::null(),
                    &mut old,
                )
            };
            came_back(r.into())
        }
        WorkerSelftest::ShrinkReadback => {
            // SAFETY: integer arguments on our own descriptor. Were it to
            // succeed, the parent would take SIGBUS: that is the test.
            let r = unsafe { libc::ftruncate(shm.as_raw_fd(), 0) };
            came_back(r.into())
        }
        WorkerSelftest::Unlink => {
            let path = c"/nonexistent/gpu-render-worker-selftest";
            // SAFETY: a NUL-terminated static path.
            let r = unsafe { libc::unlink(path.as_ptr()) };
            came_back(r.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The events a worker sent until it closed its socket.
    fn events_until_closed(sock: &mut UnixStream) -> Vec<Event> {
        let mut buf = Vec::new();
        let _ = sock.read_to_end(&mut buf);
        wire::split_frames(&mut buf)
            .unwrap()
            .iter()
            .map(|b| wire::decode_event(b).unwrap())
            .collect()
    }

    #[test]
    fn virgl_worker_that_cannot_map_a_memory_table_stops_instead_of_answering() {
        let _serial = super::super::tests::serial();
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        // SAFETY: memfd_create with a static name; checked below.
        let raw = unsafe { libc::memfd_create(c"test-readback".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: a fresh descriptor nobody else owns.
        let shm = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(shm.try_clone().unwrap()).set_len(4096).unwrap();
        let args = WorkerArgs {
            seccomp: SeccompMode::Off,
            selftest: None,
        };
        let worker = std::thread::spawn(move || reactor::block_on(serve(theirs.into(), shm, args)));
        // A region sent without its fd: nothing to map it from. Then the
        // parent closes its side: a worker that answered the table and
        // went on would end cleanly here.
        let table = Request::MemTable(vec![MemRegion {
            guest_addr: 0,
            size: 1 << 20,
            file_offset: 0,
        }]);
        ours.write_all(&wire::encode_request(1, &table)).unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        let ended = worker.join().unwrap().unwrap();
        let err = ended.expect_err("the worker stops");
        assert!(err.contains("cannot map the guest memory table"), "{err}");
        let events = events_until_closed(&mut ours);
        assert!(
            matches!(events.as_slice(), [Event::Ready(_)]),
            "the table was answered: {events:?}"
        );
    }
}
