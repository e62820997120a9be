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
//!   `virgl`.
//!
//! The lists are per renderer ([`Profile`]): `sim` and `2d` share the base
//! list; `virgl` adds what virglrenderer and Mesa's llvmpipe do when the
//! render shard initialises the library again after a device reset (load the
//! DRI driver, read driconf, JIT shaders into executable memory, start and
//! tune its threads).
//!
//! How the lists were found: `strace -f` of the daemon serving loadgen over
//! `--socket` for each renderer, everything after `listen(2)`, then the code
//! paths that run rarely (errors, aborts, `--metrics`, sleeps). The groups
//! below say who needs each call. io_uring operations are not seen by
//! seccomp: the rings all exist before the filter is installed,
//! `io_uring_setup` is not allowed after it, and each ring accepts only the
//! reactor's own operations (`IORING_REGISTER_RESTRICTIONS`, in `reactor`).

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
    /// virglrenderer in render worker processes this one starts (and
    /// starts again after a loss or a device reset): the virgl list plus
    /// starting, reaping and killing them. Workers run this profile's
    /// filter too (a filter survives execve).
    VirglWorkers,
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

/// The allow list of `profile`, group by group.
fn allowed(profile: Profile) -> Vec<Allow> {
    use libc::*;
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
        // The server removes its socket file when it stops.
        #[cfg(target_arch = "x86_64")]
        any(SYS_unlink),
        any(SYS_unlinkat),
    ];
    if matches!(profile, Profile::Virgl | Profile::VirglWorkers) {
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
            // A worker: a socketpair to it, fork (clone without
            // CLONE_THREAD, from std's Command with a pre_exec that moves
            // its fds into place with dup2), execve of this binary; then
            // waitpid and, on a loss, kill.
            any(SYS_socketpair),
            #[cfg(target_arch = "x86_64")]
            any(SYS_dup2),
            any(SYS_dup3),
            any(SYS_clone),
            any(SYS_execve),
            any(SYS_wait4),
            any(SYS_kill),
            // A worker from execve on (strace -f of workers started, lost
            // and started again): the dynamic loader (TLS, brk, limits,
            // access), std's start-up check of fds 0-2 (poll), dying with
            // the parent (PR_SET_PDEATHSIG, getppid), its own reactor
            // (a ring it restricts like ours, PR_SET_TIMERSLACK).
            #[cfg(target_arch = "x86_64")]
            any(SYS_arch_prctl),
            any(SYS_set_tid_address),
            any(SYS_prlimit64),
            #[cfg(target_arch = "x86_64")]
            any(SYS_poll),
            any(SYS_ppoll),
            any(SYS_getppid),
            any(SYS_io_uring_setup),
            any(SYS_io_uring_register),
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
                ],
            ),
        ]);
    }
    v
}

/// Calls that fail with an errno instead of killing (the second filter).
fn denied_with_errno(profile: Profile) -> Vec<(Allow, u32)> {
    use libc::*;
    let mut v = vec![(any(SYS_clone3), ENOSYS as u32)];
    if profile == Profile::VirglWorkers {
        // glibc in a worker asks nscd (a unix socket) for the user's home
        // (Mesa's cache path); without it, it reads the files.
        v.push((any(SYS_socket), EACCES as u32));
    }
    if !matches!(profile, Profile::Virgl | Profile::VirglWorkers) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[Allow]) -> std::collections::BTreeSet<i64> {
        list.iter().map(|a| a.nr).collect()
    }

    #[test]
    fn every_profile_compiles_in_every_mode_and_off_installs_nothing() {
        for profile in [
            Profile::Sim,
            Profile::TwoD,
            Profile::Virgl,
            Profile::VirglWorkers,
        ] {
            assert!(filters(SeccompMode::Off, profile).unwrap().is_empty());
            for mode in [SeccompMode::Log, SeccompMode::Kill] {
                // clone3 → ENOSYS, opens → EACCES, then the allow list.
                let progs = filters(mode, profile).unwrap();
                assert_eq!(progs.len(), 3, "{profile:?} {mode}");
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
        // Render workers: the virgl list plus starting processes.
        let workers = names(&allowed(Profile::VirglWorkers));
        assert!(workers.is_superset(&virgl));
        for nr in [libc::SYS_execve, libc::SYS_wait4, libc::SYS_kill] {
            assert!(workers.contains(&nr), "syscall {nr} is not allowed");
        }
        for nr in [libc::SYS_connect, libc::SYS_bind, libc::SYS_ptrace] {
            assert!(!workers.contains(&nr), "syscall {nr} is allowed");
        }
        // socket passes the allow list only to be refused with EACCES.
        let refused = denied_with_errno(Profile::VirglWorkers);
        assert!(refused.iter().any(|(a, e)| a.nr == libc::SYS_socket
            && a.rules.is_empty()
            && *e == libc::EACCES as u32));
    }
}
