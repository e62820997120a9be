//! The render worker launcher: the one process that starts render workers,
//! so that the daemon itself can start none once its filter is on.
//!
//! A render worker needs, from its execve until its own filter, calls the
//! guest-facing daemon must never have: fork and execve, and
//! `io_uring_setup` for its ring (a fresh ring is not bound by seccomp, so
//! a daemon allowed to make one could open, write and connect anything).
//! So the pool's factory starts, before the daemon's filter, a launcher:
//! this binary again with the hidden first argument [`LAUNCHER_ARG`], the
//! worker's program and arguments after it, and its control socket (a
//! `SOCK_SEQPACKET` pair) on fd 3. The launcher installs its own filter
//! ([`Profile::Launcher`]: starting workers, and what a worker does before
//! its own filter, which every worker inherits), says hello, and from then
//! on only serves requests.
//!
//! A request is one message carrying three descriptors and nothing else
//! the daemon chooses: the worker's socket, its read-back memfd, and a
//! status socket. The program and its arguments (the daemon's `--seccomp`
//! mode among them) were fixed when the launcher started, so a compromised
//! daemon cannot ask for an unfiltered worker. The answer comes on the
//! status socket: the worker's pid with a pidfd (the daemon kills it with
//! `pidfd_send_signal`, which names that process only and never a reused
//! pid), or an errno; later, the worker's wait status once the launcher
//! has reaped it. At most [`MAX_LIVE`] workers live at once. When the
//! control socket closes (the daemon is gone) the launcher exits, and its
//! workers with it (they die with their parent: `PR_SET_PDEATHSIG`).
//!
//! A launcher that dies is not started again (the daemon cannot, under its
//! filter): every worker start fails from then on, with the reason.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::worker::{SHM_FD, SOCKET_FD};
use crate::sandbox::{self, Profile};
use crate::vhost::frame::{recv_some, send_some};

/// The hidden first argument that makes a binary a render worker launcher.
pub const LAUNCHER_ARG: &str = "--render-launcher";
/// Where the launcher finds its control socket.
const CONTROL_FD: i32 = 3;
/// The one request there is: start a worker.
const REQ_START: u8 = 1;
/// The launcher's hello, once its filter is on.
const HELLO: u8 = 0x4c;
/// Workers alive at once, at most (a pool has one per shard or as many as
/// `--render-workers` asks, up to 64, plus the ones on their way out).
pub const MAX_LIVE: usize = 256;

/// A `SOCK_SEQPACKET` pair, both ends close-on-exec.
fn seqpacket_pair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`; checked.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just made for us alone.
    Ok(unsafe {
        (
            UnixStream::from_raw_fd(fds[0]),
            UnixStream::from_raw_fd(fds[1]),
        )
    })
}

/// One message, at most `buf.len()` bytes and `fds` descriptors kept;
/// interrupted calls are made again.
fn recv_msg(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    loop {
        match recv_some(fd, buf, fds) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// The device process's handle on its launcher.
#[derive(Debug)]
pub struct Launcher {
    control: UnixStream,
    /// The launcher process: never waited for (the daemon may not, under
    /// its filter); it ends when `control` closes and is reaped when the
    /// daemon exits.
    pid: u32,
    program: PathBuf,
}

/// A worker process, as its launcher's answers show it.
#[derive(Debug)]
pub struct WorkerProcess {
    pid: u32,
    pidfd: OwnedFd,
    status: UnixStream,
    ended: Option<ExitStatus>,
}

impl Launcher {
    /// Starts the launcher `launcher` for workers that run `program` with
    /// `args`, and waits (at most `deadline`) for its hello. Blocking;
    /// call it before the daemon's filter (it forks and execs).
    pub fn start(
        launcher: &std::path::Path,
        program: &std::path::Path,
        args: &[OsString],
        deadline: Duration,
    ) -> Result<Launcher, String> {
        let what = || format!("the render worker launcher ({launcher:?})");
        let (ours, theirs) = seqpacket_pair().map_err(|e| format!("{}: {e}", what()))?;
        let t = theirs.as_raw_fd();
        let mut cmd = Command::new(launcher);
        cmd.arg0("gpu-render-launcher")
            .arg(LAUNCHER_ARG)
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        // SAFETY: between fork and exec only async-signal-safe calls
        // (fcntl, dup2) on a descriptor this process owns; the copy above
        // 10 is close-on-exec, the one placed on 3 is not.
        unsafe {
            cmd.pre_exec(move || {
                let t2 = libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 10);
                if t2 < 0 || libc::dup2(t2, CONTROL_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", what()))?;
        drop(theirs);
        let _ = ours.set_read_timeout(Some(deadline));
        let mut hello = [0u8; 1];
        let got = recv_msg(ours.as_raw_fd(), &mut hello, &mut Vec::new());
        let _ = ours.set_read_timeout(None);
        match got {
            Ok(1) if hello[0] == HELLO => Ok(Launcher {
                control: ours,
                pid: child.id(),
                program: program.to_owned(),
            }),
            Ok(_) => {
                // It is exiting (its socket closed with it).
                let how = match child.wait() {
                    Ok(s) => super::pool::describe_exit(s),
                    Err(e) => format!("not reaped: {e}"),
                };
                Err(format!("{} did not start: {how}", what()))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "{} did not say hello within {deadline:?}: {e}",
                    what()
                ))
            }
        }
    }

    /// The launcher's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Has the launcher start a worker on `sock` (its end of the worker's
    /// socket) and `shm` (the read-back memfd), and waits (at most
    /// `deadline`) for its pid. Blocking: a fork and an exec in the
    /// launcher.
    pub fn start_worker(
        &self,
        sock: &OwnedFd,
        shm: &OwnedFd,
        deadline: Duration,
    ) -> io::Result<WorkerProcess> {
        let (status, theirs) = seqpacket_pair()?;
        let fds = [sock.as_raw_fd(), shm.as_raw_fd(), theirs.as_raw_fd()];
        send_some(self.control.as_raw_fd(), &[REQ_START], &fds).map_err(|e| {
            io::Error::other(format!(
                "the render worker launcher (pid {}) is gone: {e}",
                self.pid
            ))
        })?;
        drop(theirs);
        let _ = status.set_read_timeout(Some(deadline));
        let mut answer = [0u8; 8];
        let mut got = Vec::new();
        let n = recv_msg(status.as_raw_fd(), &mut answer, &mut got)?;
        let _ = status.set_read_timeout(None);
        if n != answer.len() {
            return Err(io::Error::other(format!(
                "the render worker launcher (pid {}) did not answer ({n} bytes): it is gone",
                self.pid
            )));
        }
        let pid = u32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]);
        let errno = i32::from_ne_bytes([answer[4], answer[5], answer[6], answer[7]]);
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let (Some(pidfd), true) = (got.pop(), got.is_empty()) else {
            return Err(io::Error::other("the launcher's answer carried no pidfd"));
        };
        Ok(WorkerProcess {
            pid,
            pidfd,
            status,
            ended: None,
        })
    }

    /// The program workers run.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }
}

impl WorkerProcess {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// SIGKILL to the worker, through its pidfd (a worker already gone is
    /// no error).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let e = io::Error::last_os_error();
        match r {
            0 => Ok(()),
            _ if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            _ => Err(e),
        }
    }

    /// Waits for the launcher to report the worker's end. Blocking.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.ended {
            return Ok(s);
        }
        let mut raw = [0u8; 4];
        match recv_msg(self.status.as_raw_fd(), &mut raw, &mut Vec::new())? {
            4 => {
                let s = ExitStatus::from_raw(i32::from_ne_bytes(raw));
                self.ended = Some(s);
                Ok(s)
            }
            _ => Err(io::Error::other(
                "the render worker launcher is gone: how the worker ended is unknown",
            )),
        }
    }
}

/// Runs the launcher and returns its exit code if this process was started
/// as one; `None` otherwise.
pub(super) fn run_if_requested() -> Option<ExitCode> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_none_or(|a| a != LAUNCHER_ARG) {
        return None;
    }
    let Some(program) = argv.next() else {
        tracing::error!("render worker launcher: no worker program");
        return Some(ExitCode::FAILURE);
    };
    let args: Vec<OsString> = argv.collect();
    let mode = match super::worker::parse_args(args.iter().skip(1).cloned()) {
        Ok(a) => a.seccomp,
        Err(e) => {
            tracing::error!("render worker launcher: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    // SAFETY: the parent put this descriptor here for us alone (dup2 in
    // its pre_exec); nothing else in this fresh process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    // Workers must not inherit it (they get theirs on fd 3 anew).
    // SAFETY: fcntl on our own descriptor with an integer argument.
    unsafe { libc::fcntl(control.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    if let Err(e) = sandbox::install(mode, Profile::Launcher) {
        tracing::error!("render worker launcher filter: {e}");
        return Some(ExitCode::FAILURE);
    }
    if send_some(control.as_raw_fd(), &[HELLO], &[]).is_err() {
        return Some(ExitCode::FAILURE);
    }
    Some(serve(&control, &program, &args))
}

/// Starts a worker for each request until the control socket closes.
fn serve(control: &OwnedFd, program: &OsString, args: &[OsString]) -> ExitCode {
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut req, mut fds) = ([0u8; 16], Vec::new());
        match recv_msg(control.as_raw_fd(), &mut req, &mut fds) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(1) if req[0] == REQ_START && fds.len() == 3 => {}
            Ok(n) => {
                // Dropping the descriptors closes the status socket: the
                // requester sees no answer.
                tracing::warn!(
                    bytes = n,
                    fds = fds.len(),
                    "render worker launcher: a malformed request"
                );
                continue;
            }
            Err(e) => {
                tracing::error!("render worker launcher: {e}");
                return ExitCode::FAILURE;
            }
        }
        let Some(status) = fds.pop() else { continue };
        let (sock, shm) = (&fds[0], &fds[1]);
        let answer = |pid: u32, errno: i32, fd: &[RawFd]| {
            let mut a = [0u8; 8];
            a[..4].copy_from_slice(&pid.to_ne_bytes());
            a[4..].copy_from_slice(&errno.to_ne_bytes());
            let _ = send_some(status.as_raw_fd(), &a, fd);
        };
        if live.load(Ordering::Relaxed) >= MAX_LIVE {
            answer(0, libc::EAGAIN, &[]);
            continue;
        }
        let mut child = match start(program, args, sock, shm) {
            Ok(c) => c,
            Err(e) => {
                answer(0, e.raw_os_error().unwrap_or(libc::EIO), &[]);
                continue;
            }
        };
        // SAFETY: pidfd_open of our own unreaped child, no flags.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as i32, 0) };
        if pidfd < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            let _ = child.kill();
            let _ = child.wait();
            answer(0, errno, &[]);
            continue;
        }
        // SAFETY: the kernel just made this descriptor for us.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        answer(child.id(), 0, &[pidfd.as_raw_fd()]);
        drop(pidfd);
        live.fetch_add(1, Ordering::Relaxed);
        let live = live.clone();
        let reaped = std::thread::Builder::new()
            .name("launcher-reap".into())
            .spawn(move || {
                let raw = child.wait().map_or(-1, |s| s.into_raw());
                let _ = send_some(status.as_raw_fd(), &raw.to_ne_bytes(), &[]);
                live.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = reaped {
            tracing::error!("render worker launcher: no thread to reap a worker: {e}");
            return ExitCode::FAILURE;
        }
    }
}

/// Forks and execs one worker with `sock` on fd 3 and `shm` on fd 4.
fn start(
    program: &OsString,
    args: &[OsString],
    sock: &OwnedFd,
    shm: &OwnedFd,
) -> io::Result<Child> {
    let (t, s) = (sock.as_raw_fd(), shm.as_raw_fd());
    let mut cmd = Command::new(program);
    // What `ps` shows (the program may be `/proc/self/exe`).
    cmd.arg0("gpu-render-worker")
        .args(args)
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2) on descriptors this process owns. The copies above 10 make
    // sure placing one on 3 or 4 cannot clobber the other; they are
    // close-on-exec, the placed ones are not (dup2 clears the flag).
    unsafe {
        cmd.pre_exec(move || {
            let t2 = libc::fcntl(t, libc::F_DUPFD_CLOEXEC, 10);
            let s2 = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 10);
            if t2 < 0 || s2 < 0 || libc::dup2(t2, SOCKET_FD) < 0 || libc::dup2(s2, SHM_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.spawn()
}
