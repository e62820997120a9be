//! The daemon's seccomp sandbox: after start-up (shards, rings, renderer
//! factory, listening socket), every thread of the process may make only the
//! system calls serving a VMM needs.
//!
//! Built with `seccompiler` (rust-vmm, as firecracker and crosvm do). Two
//! filters are installed on every thread at once (`SECCOMP_FILTER_FLAG_TSYNC`,
//! after `PR_SET_NO_NEW_PRIVS`); threads started later inherit them:
//!
//! - the **allow list** ([`allowed`]): anything not on it kills the process
//!   (`SECCOMP_RET_KILL_PROCESS`: SIGSYS) or, in [`SeccompMode::Log`], is
//!   allowed and logged by the kernel (`SECCOMP_RET_LOG`, in the audit log /
//!   `dmesg`) to find what a new code path needs;
//! - the **soft denials** ([`denied_with_errno`]): calls a library makes and
//!   copes with failing. They fail with an errno instead of killing: the
//!   stricter action of the two filters wins, so these override the allow
//!   list. `clone3` gets `ENOSYS` so glibc falls back to `clone`, whose flags
//!   the allow list can check (threads only, no new processes). Opening a
//!   file gets `EACCES` (under `virgl`: opening one for writing, and
//!   creating a directory, as Mesa's shader disk cache tries), so the daemon
//!   opens no file after start-up under `sim` and `2d`, and writes none under
//!   `virgl`. `unlink`/`unlinkat` get `EACCES` everywhere: the socket file
//!   is removed at stop by [`PathRemover`], a helper forked before the
//!   filter.
//!
//! The lists are per renderer ([`Profile`]): `sim` and `2d` share the base
//! list; `virgl` adds what virglrenderer and Mesa's llvmpipe do when the
//! render shard initialises the library again after a device reset (load the
//! DRI driver, read driconf, JIT shaders into executable memory, start and
//! tune its threads); with render workers, the daemon's list adds starting
//! them and what a worker does until it is up, and each worker then stacks
//! its own, narrower filter ([`Profile::RenderWorker`]).
//!
//! How the lists were found: `strace -f` of the daemon serving loadgen over
//! `--socket` for each renderer, everything after `listen(2)`, then the code
//! paths that run rarely (errors, aborts, `--metrics`, sleeps). The groups
//! below say who needs each call. io_uring operations are not seen by
//! seccomp: the rings all exist before the filter is installed,
//! `io_uring_setup` is not allowed after it, and each ring accepts only the
//! reactor's own operations (`IORING_REGISTER_RESTRICTIONS`, in `reactor`).
//! With render workers, the daemon starts no process either: a launcher
//! forked and executed before the filter starts them
//! ([`Profile::Launcher`], which alone allows what a worker needs until
//! its own filter: execve, fork, `io_uring_setup`).

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What the filter does with a call that is not on the allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter.
    Off,
    /// Allow it and have the kernel log it (`SECCOMP_RET_LOG`).
    Log,
    /// Kill the process (`SECCOMP_RET_KILL_PROCESS`, SIGSYS).
    Kill,
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Off => "off",
            SeccompMode::Log => "log",
            SeccompMode::Kill => "kill",
        })
    }
}

/// Which renderer's system calls to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Sim,
    TwoD,
    /// virglrenderer in this process.
    Virgl,
    /// virglrenderer in render worker processes, which a launcher process
    /// starts for this one (`render/virgl/launcher.rs`): the base list
    /// plus the launcher's and the workers' sockets and killing a worker
    /// through its pidfd. This process loads no GL library, starts no
    /// process and makes no ring.
    VirglWorkers,
    /// The render worker launcher: the virgl list plus starting and
    /// reaping workers, and what a worker does from its execve until it
    /// installs its own filter ([`Profile::RenderWorker`]): a worker
    /// inherits this filter (a filter survives execve), so its start-up
    /// calls (making its ring, restricting it, initialising the library)
    /// must pass it.
    Launcher,
    /// A render worker once it is up (its ring made and restricted, its
    /// library initialised): installed by the worker itself on top of the
    /// inherited [`Profile::Launcher`] filter (stacked filters: the
    /// stricter answer wins). No new rings, no execve, no new processes,
    /// no signals but to itself, no limits of another process.
    RenderWorker,
}

/// One allowed system call, unconditionally or only when one of `rules`
/// holds (each rule a conjunction of argument conditions).
struct Allow {
    nr: i64,
    rules: Vec<Vec<Cond>>,
}

/// `arg[index] & mask == value` (the whole 64-bit argument).
#[derive(Clone, Copy)]
struct Cond {
    index: u8,
    mask: u64,
    value: u64,
}

fn any(nr: i64) -> Allow {
    Allow { nr, rules: vec![] }
}

/// Allowed when argument `index` equals one of `values`.
fn arg_in(nr: i64, index: u8, values: &[u64]) -> Allow {
    let rules = values
        .iter()
        .map(|&value| {
            vec![Cond {
                index,
                mask: u64::MAX,
                value,
            }]
        })
        .collect();
    Allow { nr, rules }
}

/// Allowed when the bits of `mask` in argument `index` equal `value`.
fn arg_bits(nr: i64, index: u8, mask: u64, value: u64) -> Allow {
    Allow {
        nr,
        rules: vec![vec![Cond { index, mask, value }]],
    }
}

/// Allowed when argument `index` equals `value` and argument `index2`
/// equals `value2`.
fn args_eq(nr: i64, (index, value): (u8, u64), (index2, value2): (u8, u64)) -> Allow {
    let eq = |index, value| Cond {
        index,
        mask: u64::MAX,
        value,
    };
    Allow {
        nr,
        rules: vec![vec![eq(index, value), eq(index2, value2)]],
    }
}

/// The allow list of `profile`, group by group.
fn allowed(profile: Profile) -> Vec<Allow> {
    use libc::*;
    // This process: a filter is compiled in the process it is for (a
    // render worker compiles its own).
    let pid = u64::from(std::process::id());
    let prot_exec = PROT_EXEC as u64;
    let mut v = vec![
        // The reactor: every shard waits in io_uring_enter; eventfd,
        // timerfd and socket I/O are ring operations. Timers for sim's
        // modelled GPU time are made per command. (No io_uring_setup: the
        // rings exist before the filter.)
        any(SYS_io_uring_enter),
        any(SYS_timerfd_create),
        any(SYS_timerfd_settime),
        any(SYS_eventfd2),
        // Locks, condition variables, channels, thread parking.
        any(SYS_futex),
        any(SYS_sched_yield),
        // Plain descriptor I/O: logs to stderr, eventfds outside the ring,
        // the vhost-user control socket (SCM_RIGHTS in and out), the GPU
        // socket and backend channel.
        any(SYS_read),
        any(SYS_write),
        any(SYS_recvmsg),
        any(SYS_sendmsg),
        any(SYS_close),
        // Waking a blocked accept on stop; ending a session's sockets.
        any(SYS_shutdown),
        // Descriptor flags and duplicates (try_clone, std's debug checks,
        // memfd seals).
        arg_in(
            SYS_fcntl,
            1,
            &[
                F_GETFD as u64,
                F_SETFD as u64,
                F_GETFL as u64,
                F_SETFL as u64,
                F_DUPFD_CLOEXEC as u64,
                F_ADD_SEALS as u64,
                F_GET_SEALS as u64,
            ],
        ),
        // A frontend connecting (the listening socket) and `--metrics`
        // scrapes: accept, read the request, answer, a read timeout.
        any(SYS_accept4),
        any(SYS_recvfrom),
        any(SYS_sendto),
        arg_in(SYS_setsockopt, 1, &[SOL_SOCKET as u64]),
        // Guest memory and shared regions: SET_MEM_TABLE maps the VMM's
        // fds (checking their size); blob and inflight memfds; the
        // allocator. No executable mappings for sim and 2d (see virgl).
        arg_bits(SYS_mmap, 2, prot_exec, 0),
        arg_bits(SYS_mprotect, 2, prot_exec, 0),
        any(SYS_munmap),
        any(SYS_mremap),
        any(SYS_madvise),
        any(SYS_brk),
        any(SYS_memfd_create),
        any(SYS_ftruncate),
        any(SYS_fstat),
        any(SYS_newfstatat),
        any(SYS_statx),
        // Threads: a control thread per session (glibc's pthread_create
        // and a thread's start and exit). `clone` only for threads;
        // `clone3` is answered ENOSYS by the second filter so glibc uses
        // `clone`.
        arg_bits(SYS_clone, 0, CLONE_THREAD as u64, CLONE_THREAD as u64),
        any(SYS_clone3),
        any(SYS_set_robust_list),
        any(SYS_rseq),
        any(SYS_sigaltstack),
        arg_in(SYS_prctl, 0, &[PR_SET_NAME as u64]),
        any(SYS_sched_getaffinity),
        any(SYS_gettid),
        any(SYS_getpid),
        any(SYS_exit),
        any(SYS_exit_group),
        // Signals: the signal thread's sigwait, masks, and abort(3)
        // raising SIGABRT on this process only.
        any(SYS_rt_sigtimedwait),
        any(SYS_rt_sigprocmask),
        any(SYS_rt_sigaction),
        any(SYS_rt_sigreturn),
        arg_in(SYS_tgkill, 0, &[pid]),
        // Time and randomness: clocks (vDSO fallback), sleeps (accept
        // retry), hash seeds.
        any(SYS_clock_gettime),
        any(SYS_clock_nanosleep),
        any(SYS_nanosleep),
        any(SYS_getrandom),
        any(SYS_restart_syscall),
        // Opening files: glibc's malloc reads
        // /proc/sys/vm/overcommit_memory the first time a thread's arena
        // shrinks. Under sim and 2d every open fails with EACCES (second
        // filter; malloc copes); under virgl only read-only opens succeed.
        any(SYS_openat),
        // The inflight buffer (GET_INFLIGHT_FD): each queue's header is
        // written at its offset (lseek, write) before the fd is handed over.
        any(SYS_lseek),
        // Removing a file: let through here only to be answered EACCES by
        // the errno filter. The server's socket file is removed at stop by
        // a helper started before the filter (`PathRemover`).
        #[cfg(target_arch = "x86_64")]
        any(SYS_unlink),
        any(SYS_unlinkat),
    ];
    if matches!(
        profile,
        Profile::Virgl | Profile::Launcher | Profile::RenderWorker
    ) {
        v.extend([
            // virglrenderer initialised again on the render shard after
            // each device reset: Mesa dlopens its DRI driver (swrast_dri.so
            // and its libraries: open, stat, read, map executable), reads
            // driconf (/usr/share/drirc.d, /etc/drirc, ~/.drirc) and the
            // CPU topology in /sys, resolves its own path (readlink).
            // Opens for writing and mkdir are EACCES (second filter).
            any(SYS_lseek),
            any(SYS_pread64),
            any(SYS_getdents64),
            #[cfg(target_arch = "x86_64")]
            any(SYS_readlink),
            any(SYS_readlinkat),
            #[cfg(target_arch = "x86_64")]
            any(SYS_access),
            any(SYS_faccessat),
            #[cfg(target_arch = "x86_64")]
            any(SYS_mkdir),
            any(SYS_mkdirat),
            // Mesa 25 sizes llvmpipe's caches from the machine's memory.
            any(SYS_sysinfo),
            any(SYS_getuid),
            any(SYS_geteuid),
            any(SYS_getgid),
            any(SYS_getegid),
            // llvmpipe JITs shaders and loads code: executable mappings.
            any(SYS_mmap),
            any(SYS_mprotect),
            // llvmpipe's worker threads and virglrenderer's sync thread
            // lower their priority and pin themselves.
            any(SYS_sched_setaffinity),
            any(SYS_sched_setscheduler),
            any(SYS_setpriority),
        ]);
    }
    if profile == Profile::VirglWorkers {
        v.extend([
            // A worker: a socket pair to it and one to hear from the
            // launcher about it (the read-back memfd is in the base list),
            // sent to the launcher; on a loss, SIGKILL through the pidfd
            // the launcher answered with (no other signal, no other
            // process: a pidfd names one process, never a reused pid).
            any(SYS_socketpair),
            arg_in(SYS_pidfd_send_signal, 1, &[SIGKILL as u64]),
        ]);
    }
    if profile == Profile::Launcher {
        v.extend([
            // A worker: fork (clone without CLONE_THREAD, from std's
            // Command with a pre_exec that moves its fds into place with
            // dup2), execve of the worker's program; its pidfd for the
            // daemon; then waitpid (a thread per worker) and, when it
            // cannot hand the pidfd over, kill (std's Child::kill:
            // SIGKILL; no other signal). Only the launcher needs them: a
            // worker's own filter refuses them.
            // std's Command hears of a failed exec on a socket pair.
            any(SYS_socketpair),
            #[cfg(target_arch = "x86_64")]
            any(SYS_dup2),
            any(SYS_dup3),
            any(SYS_clone),
            any(SYS_execve),
            any(SYS_wait4),
            any(SYS_pidfd_open),
            arg_in(SYS_kill, 1, &[SIGKILL as u64]),
            // A worker from execve until its own filter (strace -f of
            // workers started, lost and started again): the dynamic loader
            // (TLS, brk, its own limits, access), std's start-up check of
            // fds 0-2 (poll), dying with the parent (PR_SET_PDEATHSIG,
            // getppid), its own reactor (a ring it restricts like ours,
            // PR_SET_TIMERSLACK), then its filter (seccomp, with
            // PR_SET_NO_NEW_PRIVS first: already set, filters only ever
            // take away). io_uring_setup and io_uring_register are here
            // for the worker's ring only: the launcher has no ring. The
            // daemon's own filter allows neither. See
            // docs/decisions/0005-render-workers.md.
            #[cfg(target_arch = "x86_64")]
            any(SYS_arch_prctl),
            any(SYS_set_tid_address),
            arg_in(SYS_prlimit64, 0, &[0]),
            #[cfg(target_arch = "x86_64")]
            any(SYS_poll),
            any(SYS_ppoll),
            any(SYS_getppid),
            any(SYS_io_uring_setup),
            any(SYS_io_uring_register),
            args_eq(
                SYS_seccomp,
                (0, u64::from(SECCOMP_SET_MODE_FILTER)),
                (1, SECCOMP_FILTER_FLAG_TSYNC),
            ),
            // Let through here only to be answered EACCES by the errno
            // filter (a kill here would win over it): glibc's nscd lookup.
            any(SYS_socket),
            arg_in(
                SYS_prctl,
                0,
                &[
                    PR_SET_NAME as u64,
                    PR_SET_PDEATHSIG as u64,
                    PR_SET_TIMERSLACK as u64,
                    PR_SET_NO_NEW_PRIVS as u64,
                ],
            ),
        ]);
    }
    if profile == Profile::RenderWorker {
        // The worker's socket is read and written on its ring; it accepts,
        // shuts down and tunes no socket.
        let serving_only = [SYS_accept4, SYS_shutdown, SYS_setsockopt];
        v.retain(|a| !serving_only.contains(&a.nr));
        v.extend([
            // Signals to itself only: abort(3) is tgkill(own pid) (in the
            // base list); raise from a library may be kill(own pid). Not
            // kill(0): the process group holds the daemon and maybe the VMM.
            arg_in(SYS_kill, 0, &[pid]),
            // Its own limits (getrlimit, from glibc and Mesa), no other
            // process's.
            arg_in(SYS_prlimit64, 0, &[0, pid]),
            // Let through only to be answered EACCES (errno filter):
            // glibc's nscd lookup, should Mesa ask for a home again.
            any(SYS_socket),
        ]);
    }
    v
}

/// Calls that fail with an errno instead of killing (the second filter).
fn denied_with_errno(profile: Profile) -> Vec<(Allow, u32)> {
    use libc::*;
    let mut v = vec![
        (any(SYS_clone3), ENOSYS as u32),
        // No file is removed after start-up (the socket file: see
        // `PathRemover`).
        (any(SYS_unlinkat), EACCES as u32),
    ];
    #[cfg(target_arch = "x86_64")]
    v.push((any(SYS_unlink), EACCES as u32));
    if matches!(profile, Profile::Launcher | Profile::RenderWorker) {
        // glibc in a worker asks nscd (a unix socket) for the user's home
        // (Mesa's cache path); without it, it reads the files.
        v.push((any(SYS_socket), EACCES as u32));
    }
    if !matches!(
        profile,
        Profile::Virgl | Profile::Launcher | Profile::RenderWorker
    ) {
        v.push((any(SYS_openat), EACCES as u32));
    } else {
        // openat(dirfd, path, flags, mode): any of the writing flags set.
        let opens = [O_WRONLY, O_RDWR, O_CREAT, O_TRUNC]
            .iter()
            .map(|&f| {
                vec![Cond {
                    index: 2,
                    mask: f as u64,
                    value: f as u64,
                }]
            })
            .collect();
        v.push((
            Allow {
                nr: SYS_openat,
                rules: opens,
            },
            EACCES as u32,
        ));
        v.push((any(SYS_mkdirat), EACCES as u32));
        #[cfg(target_arch = "x86_64")]
        v.push((any(SYS_mkdir), EACCES as u32));
    }
    if profile == Profile::RenderWorker {
        // A worker that is up opens nothing it needs (strace: Mesa reads
        // /proc/meminfo at each context and copes without it): no file of
        // the user's can be read into guest memory.
        v.push((any(SYS_openat), EACCES as u32));
        // Nor resizes a file: guest RAM fds are the VMM's (shrinking an
        // unsealed one would take QEMU down with SIGBUS), the read-back
        // memfd is sealed anyway.
        v.push((any(SYS_ftruncate), EPERM as u32));
    }
    v
}

fn arch() -> Result<TargetArch, String> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: unsupported architecture: {e:?}"))
}

fn rule_map(list: Vec<Allow>) -> Result<BTreeMap<i64, Vec<SeccompRule>>, String> {
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for a in list {
        let rules = a
            .rules
            .into_iter()
            .map(|conds| {
                let conds = conds
                    .into_iter()
                    .map(|c| {
                        SeccompCondition::new(
                            c.index,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(c.mask),
                            c.value,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                SeccompRule::new(conds)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("seccomp rule for syscall {}: {e}", a.nr))?;
        // An unconditional entry (None) wins over conditional ones.
        let entry = map.entry(a.nr).or_insert(Some(Vec::new()));
        match (entry.as_mut(), rules.is_empty()) {
            (Some(_), true) => *entry = None,
            (Some(existing), false) => existing.extend(rules),
            (None, _) => {}
        }
    }
    Ok(map
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect())
}

/// The compiled filters for `profile` in `mode` (none for `Off`): the soft
/// denials, then the allow list (installed in this order).
pub fn filters(mode: SeccompMode, profile: Profile) -> Result<Vec<BpfProgram>, String> {
    let on_mismatch = match mode {
        SeccompMode::Off => return Ok(Vec::new()),
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Kill => SeccompAction::KillProcess,
    };
    let arch = arch()?;
    let compile = |f: Result<SeccompFilter, seccompiler::BackendError>| {
        f.and_then(BpfProgram::try_from)
            .map_err(|e| format!("seccomp filter: {e}"))
    };
    // Group the soft denials by errno: one filter each.
    let mut by_errno: BTreeMap<u32, Vec<Allow>> = BTreeMap::new();
    for (a, errno) in denied_with_errno(profile) {
        by_errno.entry(errno).or_default().push(a);
    }
    let mut progs = Vec::new();
    for (errno, list) in by_errno {
        progs.push(compile(SeccompFilter::new(
            rule_map(list)?,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            arch,
        ))?);
    }
    // Last: installing a filter takes prctl(PR_SET_NO_NEW_PRIVS) and
    // seccomp(2), which the allow list does not allow.
    progs.push(compile(SeccompFilter::new(
        rule_map(allowed(profile))?,
        on_mismatch,
        SeccompAction::Allow,
        arch,
    ))?);
    Ok(progs)
}

/// Installs the filters of `profile` on every thread of the process (TSYNC);
/// threads started later inherit them. Sets `PR_SET_NO_NEW_PRIVS` first.
/// Nothing happens for [`SeccompMode::Off`].
pub fn install(mode: SeccompMode, profile: Profile) -> Result<(), String> {
    let progs = filters(mode, profile)?;
    if progs.is_empty() {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            std::io::Error::last_os_error()
        ));
    }
    for prog in &progs {
        seccompiler::apply_filter_all_threads(prog)
            .map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// Removes one path (the server's socket file) when the daemon stops,
/// although the daemon's filter lets it remove no file (`unlink` and
/// `unlinkat` are EACCES: a compromised daemon must not delete the user's
/// files, disk images among them).
///
/// [`PathRemover::start`], before the filter, forks a helper that holds
/// one end of a socketpair and nothing else (every other descriptor
/// closed) and waits. Dropping the remover (the daemon stopping, also on
/// an error path) asks it to remove the path if it is still the file it
/// was at start (same device and inode: a newer daemon's socket at the
/// same path is left alone), and waits for its answer. A daemon that dies
/// without asking (killed, crashed) leaves the file, as it always did: the
/// next one replaces a stale socket.
pub struct PathRemover {
    ours: std::os::fd::OwnedFd,
    pid: libc::pid_t,
}

impl PathRemover {
    /// Forks the helper for `path`, which must exist.
    pub fn start(path: &std::path::Path) -> std::io::Result<PathRemover> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        let (dev, ino) = (meta.dev(), meta.ino());
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`; checked.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both were just made for us alone.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let keep = theirs.as_raw_fd();
        // SAFETY: the child runs only async-signal-safe calls (close,
        // close_range, read, lstat, unlink, write, _exit) on data made
        // before the fork; it never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; the child ends in _exit.
            unsafe { remover_child(keep, &c_path, dev, ino) };
        }
        drop(theirs);
        Ok(PathRemover { ours, pid })
    }
}

/// The helper: every descriptor but `fd` closed, then it waits for a
/// byte (remove the path) or the end of the socket (the daemon is gone:
/// leave it).
///
/// # Safety
/// Only in the child right after `fork`: it calls only async-signal-safe
/// functions and never returns.
unsafe fn remover_child(fd: i32, path: &std::ffi::CStr, dev: u64, ino: u64) -> ! {
    // SAFETY: integer arguments; close_range exists since Linux 5.9, and
    // without it the loop closes what a daemon this young may hold.
    unsafe {
        let upto = libc::c_uint::MAX;
        if fd > 0 && libc::syscall(libc::SYS_close_range, 0, fd - 1, 0) != 0 {
            (0..fd).for_each(|i| {
                libc::close(i);
            });
        }
        if libc::syscall(libc::SYS_close_range, fd + 1, upto, 0) != 0 {
            (fd + 1..4096).for_each(|i| {
                libc::close(i);
            });
        }
    }
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a live local.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        // SAFETY: errno of this (the only) thread.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        if n != 1 {
            // SAFETY: ends the helper.
            unsafe { libc::_exit(0) };
        }
        break;
    }
    // SAFETY: lstat into a zeroed local; unlink of a NUL-terminated path;
    // write of a live local; then the helper ends.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let same = libc::lstat(path.as_ptr(), &mut st) == 0 && st.st_dev == dev && st.st_ino == ino;
        let answer: u8 = if same && libc::unlink(path.as_ptr()) == 0 {
            1
        } else {
            0
        };
        libc::write(fd, (&answer as *const u8).cast(), 1);
        libc::_exit(0)
    }
}

impl Drop for PathRemover {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        let Ok(fd) = self.ours.as_fd().try_clone_to_owned() else {
            return;
        };
        let mut sock = std::os::unix::net::UnixStream::from(fd);
        let mut answer = [0u8];
        // Bounded: the helper answers at once (an lstat and an unlink).
        let _ = sock.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        let removed = sock.write_all(&[1]).is_ok() && sock.read_exact(&mut answer).is_ok();
        tracing::debug!(
            pid = self.pid,
            removed = removed && answer[0] == 1,
            "socket file removal"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const ALL: [Profile; 6] = [
        Profile::Sim,
        Profile::TwoD,
        Profile::Virgl,
        Profile::VirglWorkers,
        Profile::Launcher,
        Profile::RenderWorker,
    ];

    fn names(list: &[Allow]) -> std::collections::BTreeSet<i64> {
        list.iter().map(|a| a.nr).collect()
    }

    /// How a call made under a filter ended.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// The call returned (any value, success or an error other than
        /// the ones below): the filter let it through.
        CameBack,
        /// It failed with this errno (an errno answer, or the kernel's).
        Errno(i32),
        /// The filter killed the process.
        Sigsys,
    }

    /// Makes `call` in a child process under `profile`'s filters (kill
    /// mode; `None`: no filter). `call` returns the call's result (< 0:
    /// failed, errno set). The filters are compiled here, before the fork:
    /// the child only installs them and calls (no allocation after fork).
    fn under(profile: Option<Profile>, call: &dyn Fn() -> i64) -> Outcome {
        let progs = match profile {
            Some(p) => filters(SeccompMode::Kill, p).unwrap(),
            None => Vec::new(),
        };
        // SAFETY: the child runs only async-signal-safe code: prctl and
        // seccomp through seccompiler (no allocation), the call, _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            for p in &progs {
                if seccompiler::apply_filter_all_threads(p).is_err() {
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(100) };
                }
            }
            let r = call();
            // SAFETY: errno of this thread, read right after the call.
            let errno = unsafe { *libc::__errno_location() };
            // SAFETY: ends the child, running nothing of the parent's.
            unsafe { libc::_exit(if r >= 0 { 0 } else { errno.min(99) }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child into a live local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "killed otherwise");
            return Outcome::Sigsys;
        }
        match libc::WEXITSTATUS(status) {
            0 => Outcome::CameBack,
            100 => panic!("the filter could not be installed"),
            e => Outcome::Errno(e),
        }
    }

    fn io_uring_setup() -> i64 {
        let mut params = [0u64; 15];
        // SAFETY: io_uring_setup writes at most the 120 bytes of `params`;
        // the child ends right after (the ring with it).
        unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) }
    }

    #[test]
    fn render_worker_filter_refuses_new_rings_exec_fork_and_others_pids_which_its_parent_filter_allowed(
    ) {
        use Outcome::*;
        // The worker's parent filter is its launcher's; the daemon with
        // workers (it starts none itself) refuses them all as the worker
        // does.
        let (w, parent) = (Some(Profile::RenderWorker), Some(Profile::Launcher));
        let daemon = Some(Profile::VirglWorkers);
        // A fresh ring (no restrictions: its ops would bypass seccomp).
        assert_eq!(under(w, &io_uring_setup), Sigsys);
        assert_eq!(under(daemon, &io_uring_setup), Sigsys);
        assert_eq!(under(parent, &io_uring_setup), CameBack);
        assert_eq!(under(Some(Profile::Virgl), &io_uring_setup), Sigsys);
        // execve (of nothing: the kernel's answer is ENOENT).
        let execve = || {
            let path = c"/nonexistent/gpu-reactor-selftest";
            let argv = [path.as_ptr(), std::ptr::null()];
            // SAFETY: NUL-terminated path, NULL-terminated argv/envp.
            unsafe {
                libc::execve(path.as_ptr(), argv.as_ptr(), [std::ptr::null()].as_ptr()) as i64
            }
        };
        assert_eq!(under(w, &execve), Sigsys);
        assert_eq!(under(daemon, &execve), Sigsys);
        assert_eq!(under(parent, &execve), Errno(libc::ENOENT));
        // fork: clone without CLONE_THREAD.
        let fork = || {
            // SAFETY: the grandchild only calls _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: ends the grandchild.
                unsafe { libc::_exit(0) };
            }
            pid as i64
        };
        assert_eq!(under(w, &fork), Sigsys);
        assert_eq!(under(daemon, &fork), Sigsys);
        assert_eq!(under(parent, &fork), CameBack);
        // Signals to another process: a sleeper of ours stands in for QEMU.
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let other = sleeper.id() as i32;
        // SAFETY: integer arguments.
        let term = || unsafe { libc::kill(other, libc::SIGTERM) as i64 };
        // SAFETY: integer arguments.
        let kill9 = || unsafe { libc::kill(other, libc::SIGKILL) as i64 };
        assert_eq!(under(w, &kill9), Sigsys);
        assert_eq!(under(w, &term), Sigsys);
        // The daemon kills no pid (its workers through their pidfds); the
        // launcher with SIGKILL only.
        assert_eq!(under(daemon, &kill9), Sigsys);
        assert_eq!(under(parent, &term), Sigsys);
        assert_eq!(
            sleeper.try_wait().unwrap(),
            None,
            "the sleeper was signalled"
        );
        assert_eq!(under(parent, &kill9), CameBack);
        let _ = sleeper.wait();
        // Another process's limits; its own are fine.
        let mut lim = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let lp = &mut lim as *mut libc::rlimit64 as usize;
        // SAFETY: reads a limit into `lim`, alive across the fork.
        let theirs = || unsafe {
            libc::prlimit64(1, libc::RLIMIT_NOFILE, std::ptr::null(), lp as *mut _) as i64
        };
        // SAFETY: as above.
        let own = || unsafe {
            libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), lp as *mut _) as i64
        };
        assert_eq!(under(w, &theirs), Sigsys);
        assert_eq!(under(w, &own), CameBack);
        assert_eq!(under(parent, &own), CameBack);
        // The daemon signals a worker only through its pidfd, and only
        // SIGKILL.
        let sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // SAFETY: pidfd_open of our own child, no flags; checked.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, sleeper.id() as i32, 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let send = |sig: i32| {
            move || {
                // SAFETY: a pidfd inherited by the child, no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd,
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                }
            }
        };
        assert_eq!(under(daemon, &send(libc::SIGTERM)), Sigsys);
        assert_eq!(under(w, &send(libc::SIGKILL)), Sigsys);
        let mut sleeper = sleeper;
        assert_eq!(
            sleeper.try_wait().unwrap(),
            None,
            "the sleeper was signalled"
        );
        assert_eq!(under(daemon, &send(libc::SIGKILL)), CameBack);
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(pidfd as i32) };
    }

    #[test]
    fn render_worker_filter_answers_opens_with_eacces_and_resizes_with_eperm() {
        use Outcome::*;
        let w = Some(Profile::RenderWorker);
        let open = || {
            // SAFETY: a NUL-terminated static path; the fd is left to _exit.
            unsafe { libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY) as i64 }
        };
        assert_eq!(under(w, &open), Errno(libc::EACCES));
        // In-process virgl (and a worker until it is up) reads files.
        assert_eq!(under(Some(Profile::Virgl), &open), CameBack);
        assert_eq!(under(Some(Profile::Launcher), &open), CameBack);
        // The daemon with workers loads no library: it opens nothing.
        assert_eq!(
            under(Some(Profile::VirglWorkers), &open),
            Errno(libc::EACCES)
        );
        // SAFETY: memfd_create with a static name; checked.
        let fd = unsafe { libc::memfd_create(c"resize".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: integer arguments on our memfd (inherited by the child).
        let grow = || unsafe { libc::ftruncate(fd, 4096) as i64 };
        assert_eq!(under(w, &grow), Errno(libc::EPERM));
        assert_eq!(under(Some(Profile::Launcher), &grow), CameBack);
        assert_eq!(under(Some(Profile::VirglWorkers), &grow), CameBack);
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn every_profile_answers_unlink_with_eacces_and_the_file_stays() {
        let path = std::env::temp_dir().join(format!("gpu-sandbox-unlink-{}", std::process::id()));
        std::fs::write(&path, b"x").unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path alive across the fork.
        let unlink = || unsafe { libc::unlink(c.as_ptr()) as i64 };
        // SAFETY: as above.
        let unlinkat = || unsafe { libc::unlinkat(libc::AT_FDCWD, c.as_ptr(), 0) as i64 };
        for profile in ALL {
            assert_eq!(
                under(Some(profile), &unlink),
                Outcome::Errno(libc::EACCES),
                "{profile:?}"
            );
            assert_eq!(
                under(Some(profile), &unlinkat),
                Outcome::Errno(libc::EACCES),
                "{profile:?}"
            );
            assert!(path.exists(), "{profile:?} removed it");
        }
        assert_eq!(under(None, &unlink), Outcome::CameBack);
        assert!(!path.exists());
    }

    #[test]
    fn every_profile_compiles_in_every_mode_and_off_installs_nothing() {
        for profile in ALL {
            assert!(filters(SeccompMode::Off, profile).unwrap().is_empty());
            for mode in [SeccompMode::Log, SeccompMode::Kill] {
                // clone3 → ENOSYS, opens and unlinks → EACCES, (a render
                // worker: ftruncate → EPERM), then the allow list.
                let progs = filters(mode, profile).unwrap();
                let errnos = if profile == Profile::RenderWorker {
                    3
                } else {
                    2
                };
                assert_eq!(progs.len(), errnos + 1, "{profile:?} {mode}");
                assert!(progs.iter().all(|p| !p.is_empty()));
            }
        }
    }

    #[test]
    fn virgl_adds_to_the_base_list_and_the_base_list_keeps_out_what_it_must() {
        let base = names(&allowed(Profile::Sim));
        assert_eq!(base, names(&allowed(Profile::TwoD)));
        let virgl = names(&allowed(Profile::Virgl));
        assert!(virgl.is_superset(&base));
        assert!(virgl.len() > base.len());
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_bind,
            libc::SYS_io_uring_setup,
            libc::SYS_ptrace,
            libc::SYS_ioctl,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_kill,
        ] {
            assert!(!virgl.contains(&nr), "syscall {nr} is allowed");
        }
        // The launcher: the virgl list plus starting processes.
        let launcher = names(&allowed(Profile::Launcher));
        assert!(launcher.is_superset(&virgl));
        for nr in [libc::SYS_execve, libc::SYS_wait4, libc::SYS_kill] {
            assert!(launcher.contains(&nr), "syscall {nr} is not allowed");
        }
        for nr in [libc::SYS_connect, libc::SYS_bind, libc::SYS_ptrace] {
            assert!(!launcher.contains(&nr), "syscall {nr} is allowed");
        }
        // The daemon with render workers: the base list and their sockets;
        // no process, no ring, no executable memory, no kill.
        let daemon = names(&allowed(Profile::VirglWorkers));
        assert!(daemon.is_superset(&base));
        for nr in [
            libc::SYS_execve,
            libc::SYS_wait4,
            libc::SYS_kill,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_register,
            libc::SYS_socket,
            libc::SYS_seccomp,
        ] {
            assert!(!daemon.contains(&nr), "syscall {nr} is allowed");
        }
        // socket passes the allow list only to be refused with EACCES.
        let refused = denied_with_errno(Profile::Launcher);
        assert!(refused.iter().any(|(a, e)| a.nr == libc::SYS_socket
            && a.rules.is_empty()
            && *e == libc::EACCES as u32));
    }
}
