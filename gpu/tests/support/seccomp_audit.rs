//! What the kernel says seccomp refused: a daemon test that fails under the
//! filter names the system calls instead of leaving a bare SIGSYS.
//!
//! A process the filter kills (`SECCOMP_RET_KILL_PROCESS`) dies with SIGSYS,
//! and its exit status does not say which call it made; the kernel's audit
//! record does, for kills and for `--seccomp log` alike:
//!
//! ```text
//! audit: type=1326 audit(1796646419.493:6): ... pid=8554 comm="exe"
//!   exe="/…/gpu-reactor" sig=31 arch=c000003e syscall=99 ... code=0x80000000
//! ```
//!
//! [`name_refused_calls_on_failure`] runs a test; if it fails it runs the
//! same work once more under `--seccomp log` (every missing call logged, not
//! only the first that killed), reads those records for the daemon binary
//! since the test began (dmesg, else `journalctl -k`, else auditd's log) and
//! fails with the calls by name.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// One `type=1326` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Seconds since the epoch (the record's `audit(SECS.MS:SERIAL)`).
    pub at: u64,
    pub pid: u32,
    pub exe: String,
    pub syscall: i64,
    /// Killed (`SECCOMP_RET_KILL_*`) rather than only logged.
    pub killed: bool,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.split('"').next();
    }
    rest.split_whitespace().next()
}

/// The seccomp record in a kernel or audit log line, if it is one.
pub fn parse(line: &str) -> Option<Refusal> {
    if !line.contains("type=1326") && !line.contains("type=SECCOMP") {
        return None;
    }
    let stamp = line.split("audit(").nth(1)?;
    let at = stamp.split(['.', ':']).next()?.parse().ok()?;
    let code = field(line, "code")?.trim_start_matches("0x");
    let code = u32::from_str_radix(code, 16).ok()?;
    Some(Refusal {
        at,
        pid: field(line, "pid")?.parse().ok()?,
        exe: field(line, "exe")?.to_string(),
        syscall: field(line, "syscall")?.parse().ok()?,
        // SECCOMP_RET_KILL_PROCESS 0x80000000, SECCOMP_RET_KILL_THREAD 0.
        killed: code & 0xffff_0000 == 0x8000_0000 || code & 0xffff_0000 == 0,
    })
}

/// The kernel's log lines, from the first source that can be read.
fn kernel_log() -> Result<String, String> {
    let mut tried = Vec::new();
    for (cmd, args) in [
        ("dmesg", &[][..]),
        ("journalctl", &["-k", "-o", "cat", "--no-pager", "-q"][..]),
    ] {
        match Command::new(cmd).args(args).output() {
            Ok(out) if out.status.success() && !out.stdout.is_empty() => {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(out) => tried.push(format!(
                "{cmd}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{cmd}: {e}")),
        }
    }
    match std::fs::read_to_string("/var/log/audit/audit.log") {
        Ok(text) => Ok(text),
        Err(e) => {
            tried.push(format!("/var/log/audit/audit.log: {e}"));
            Err(tried.join("; "))
        }
    }
}

/// The refusals recorded for `exe` (its processes: the daemon and its
/// render workers, which run the same binary) at or after `since`.
pub fn refusals_since(exe: &str, since: u64) -> Result<Vec<Refusal>, String> {
    let exe = std::fs::canonicalize(exe)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| exe.to_string());
    Ok(kernel_log()?
        .lines()
        .filter_map(parse)
        .filter(|r| r.at >= since && r.exe == exe)
        .collect())
}

/// The name of system call `nr` of this machine's architecture.
pub fn syscall_name(nr: i64) -> Option<String> {
    // auditd's own table, if installed.
    if let Ok(out) = Command::new("ausyscall").arg(nr.to_string()).output() {
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !name.is_empty() {
            return Some(name);
        }
    }
    // The kernel headers (linux-libc-dev): `#define __NR_sysinfo 99`.
    let arch = std::env::consts::ARCH;
    for h in [
        format!("/usr/include/{arch}-linux-gnu/asm/unistd_64.h"),
        "/usr/include/asm/unistd_64.h".to_string(),
        "/usr/include/asm-generic/unistd.h".to_string(),
    ] {
        let Ok(text) = std::fs::read_to_string(&h) else {
            continue;
        };
        let found = text.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            let (Some("#define"), Some(name), Some(n)) = (w.next(), w.next(), w.next()) else {
                return None;
            };
            let name = name.strip_prefix("__NR_")?;
            (n.parse::<i64>().ok()? == nr).then(|| name.to_string())
        });
        if found.is_some() {
            return found;
        }
    }
    KNOWN
        .iter()
        .find(|&&(n, _)| n == nr)
        .map(|&(_, name)| name.trim_start_matches("SYS_").to_string())
}

macro_rules! known {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name, stringify!($name)),)*]
    };
}

/// The last resort: calls a renderer library might newly make (the
/// numbers from libc, so right for this architecture).
const KNOWN: &[(i64, &str)] = known![
    SYS_sysinfo,
    SYS_uname,
    SYS_getrusage,
    SYS_times,
    SYS_getcpu,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_getpriority,
    SYS_membarrier,
    SYS_ioctl,
    SYS_statfs,
    SYS_fstatfs,
    SYS_getcwd,
    SYS_pipe2,
    SYS_socket,
    SYS_connect,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_pidfd_open,
    SYS_waitid,
    SYS_prctl,
    SYS_mincore,
    SYS_msync,
    SYS_get_mempolicy,
    SYS_set_mempolicy,
    SYS_mbind,
    SYS_execveat,
    SYS_close_range,
    SYS_readv,
    SYS_writev,
    SYS_pwrite64,
    SYS_fsync,
    SYS_flock,
    SYS_unlinkat,
    SYS_statx,
    SYS_ptrace,
];

/// What the audit records say, for a failure message.
pub fn describe(exe: &str, since: u64) -> String {
    let refusals = match refusals_since(exe, since) {
        Ok(r) => r,
        Err(e) => {
            return format!(
                "seccomp: cannot read the kernel's audit records ({e}). To find a call the \
                 filter refuses: run gpu-reactor with `--seccomp log` and look for \
                 `type=1326 ... syscall=N` in dmesg or journalctl -k, or run it under \
                 `strace -f` and look at the call before `+++ killed by SIGSYS +++`"
            )
        }
    };
    if refusals.is_empty() {
        return "seccomp: the kernel recorded no system call refused to gpu-reactor since the \
                test began (so the filter is not what failed, or its records go elsewhere: \
                try `--seccomp log` and dmesg, or `strace -f`)"
            .to_string();
    }
    // Each call once, with how often and whether it killed.
    let mut calls: BTreeMap<i64, (usize, bool)> = BTreeMap::new();
    for r in &refusals {
        let e = calls.entry(r.syscall).or_default();
        e.0 += 1;
        e.1 |= r.killed;
    }
    let list: Vec<String> = calls
        .iter()
        .map(|(&nr, &(n, killed))| {
            let name = syscall_name(nr).unwrap_or_else(|| "?".to_string());
            let how = if killed { ", killed a process" } else { "" };
            format!("{name} (syscall {nr}; {n} record(s){how})")
        })
        .collect();
    format!(
        "seccomp: the kernel recorded these system calls refused to gpu-reactor (the daemon \
         or a render worker) since the test began: {}. Add what the daemon needs to its \
         allow list (gpu/src/sandbox.rs).",
        list.join(", ")
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `test`; if it fails, runs `again_logging` (the same work with
/// `--seccomp log`; its own failures are ignored) and fails with the
/// original message and the system calls the kernel recorded refused to
/// `exe` meanwhile.
pub fn name_refused_calls_on_failure(exe: &str, test: impl FnOnce(), again_logging: impl FnOnce()) {
    let since = now_secs();
    let Err(failure) = panic::catch_unwind(AssertUnwindSafe(test)) else {
        return;
    };
    let what = failure
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| failure.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".to_string());
    eprintln!("the test failed: running it again under `--seccomp log` to find refused calls");
    let _ = panic::catch_unwind(AssertUnwindSafe(again_logging));
    panic!("{what}\n\n{}", describe(exe, since));
}

#[test]
fn seccomp_audit_records_are_parsed_and_their_calls_named() {
    let kill = "[  728.399505] audit: type=1326 audit(1796646419.493:6): auid=4294967295 \
                uid=0 gid=0 ses=4294967295 pid=8554 comm=\"exe\" \
                exe=\"/work/main/target/debug/gpu-reactor\" sig=31 arch=c000003e \
                syscall=99 compat=0 ip=0x7fb5c40630c7 code=0x80000000";
    assert_eq!(
        parse(kill),
        Some(Refusal {
            at: 1796646419,
            pid: 8554,
            exe: "/work/main/target/debug/gpu-reactor".into(),
            syscall: 99,
            killed: true,
        })
    );
    let logged = kill
        .replace("sig=31", "sig=0")
        .replace("code=0x80000000", "code=0x7ffc0000");
    assert!(!parse(&logged).unwrap().killed);
    assert_eq!(parse("[  1.0] usb 1-1: new device"), None);
    assert_eq!(syscall_name(libc::SYS_sysinfo).as_deref(), Some("sysinfo"));
    assert_eq!(syscall_name(libc::SYS_socket).as_deref(), Some("socket"));
}
