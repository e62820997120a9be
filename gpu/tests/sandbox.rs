//! The daemon's seccomp sandbox (gpu::sandbox), on the real binary: with the
//! filter on (the default) gpu-reactor serves full loadgen runs over its
//! socket for each renderer and stops cleanly on SIGTERM; a forbidden call
//! kills it with SIGSYS, also from a thread started before the filter;
//! `--seccomp off` and `log` let the same call through; bad values are
//! refused.

#[path = "support/seccomp_audit.rs"]
// Its helpers serve the virgl test; the parser's own test runs in both builds.
#[cfg_attr(not(feature = "virgl"), allow(dead_code))]
mod seccomp_audit;
#[path = "daemon_support.rs"]
mod support;

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use loadgen::scenario::{Plan, Profile, Scenario};
use support::*;

/// Serves every plan as its own session, then stops on SIGTERM with 0.
fn serve_runs_under_the_filter(renderer: &str, plans: &[Plan]) {
    let dir = work_dir(renderer);
    let mut d = Daemon::start(&dir, &["--renderer", renderer]);
    assert!(
        d.log_text().contains("seccomp filter installed"),
        "the default is not the filter:\n{}",
        d.log_text()
    );
    for p in plans {
        let r = run_over_socket(&d, p);
        assert_clean(&r, &d);
    }
    let status = d.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "gpu-reactor under the filter did not exit 0 on SIGTERM ({status}):\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("SIGTERM: stopping"));
    // The filter refuses unlink: the socket file is removed by the helper
    // started before it.
    assert!(
        !d.sock.exists(),
        "the socket file outlived the daemon:\n{}",
        d.log_text()
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sim_daemon_under_the_default_filter_serves_runs_and_stops_on_sigterm() {
    // A second session after the first one's reset, stalls and blob storms:
    // the paths that run after start-up (new control thread, memory table,
    // blob memfds, device resets).
    serve_runs_under_the_filter(
        "sim",
        &[
            plan(Profile::ThreeD, Scenario::None),
            plan(Profile::ThreeD, Scenario::Reset),
            plan(Profile::ThreeD, Scenario::UnmapStorm),
            plan(Profile::ThreeD, Scenario::StalledContext),
        ],
    );
}

#[test]
fn two_d_daemon_under_the_default_filter_serves_runs_and_stops_on_sigterm() {
    serve_runs_under_the_filter(
        "2d",
        &[
            plan(Profile::TwoD, Scenario::None),
            plan(Profile::TwoD, Scenario::Reset),
        ],
    );
}

/// virglrenderer + llvmpipe in render workers started again after each
/// device reset, under the filter (run by tests/run's virgl subset). A
/// worker or daemon the filter kills dies with SIGSYS: the failure then
/// names the refused system calls from the kernel's audit records, found
/// by running the same sessions once more under `--seccomp log`.
#[cfg(feature = "virgl")]
#[test]
fn virgl_daemon_under_the_default_filter_serves_real_frames_and_stops_on_sigterm() {
    use loadgen::scenario::{RenderMode, RendererKind};
    let real = |scenario| Plan {
        renderer: RendererKind::Virgl,
        render: RenderMode::Real,
        width: 320,
        height: 200,
        // Render workers take a second or more to come up on a loaded
        // 2-core machine; a 1.5 s run could end before the first frame.
        duration: std::time::Duration::from_secs(4),
        ..plan(Profile::ThreeD, scenario)
    };
    let plans = [real(Scenario::None), real(Scenario::Reset)];
    seccomp_audit::name_refused_calls_on_failure(
        DAEMON,
        || serve_runs_under_the_filter("virgl", &plans),
        || {
            let dir = work_dir("virgl-seccomp-log");
            let d = Daemon::start(&dir, &["--renderer", "virgl", "--seccomp", "log"]);
            for p in &plans {
                run_over_socket(&d, p);
            }
        },
    );
}

/// `--fd` (how libvirt starts backends): the filter is on for the one
/// session on the inherited socket, and the daemon exits 0 when the VMM
/// leaves.
#[test]
fn fd_mode_under_the_default_filter_serves_a_run_and_exits_0_when_the_vmm_leaves() {
    let dir = work_dir("fd");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = Daemon::start_on_fd(&dir, theirs, 3, &[]);
    let (backend, r) = run_over_fd(&d, ours, &plan(Profile::ThreeD, Scenario::None));
    assert_clean(&r, &d);
    drop(backend);
    let status = d.wait_exit("after the VMM left");
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log_text());
    assert!(
        d.log_text().contains("seccomp filter installed"),
        "{}",
        d.log_text()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The daemon with `--seccomp-selftest CALL` (and `extra` flags) run to its
/// end (bounded).
fn selftest(dir: &Path, call: &str, extra: &[&str]) -> (ExitStatus, String) {
    let sock = selftest_socket(dir, call);
    let mut child = Command::new(DAEMON)
        .arg("-s")
        .arg(&sock)
        .args(["--shards", "2", "--seccomp-selftest", call])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gpu-reactor --seccomp-selftest {call} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where [`selftest`] has the daemon listen for `call`.
fn selftest_socket(dir: &Path, call: &str) -> std::path::PathBuf {
    dir.join(format!("{call}.sock"))
}

#[test]
fn a_forbidden_call_kills_the_daemon_with_sigsys_and_goes_through_without_the_filter() {
    let dir = work_dir("selftest");
    // socket(AF_INET) on reactor shard 0, a thread started before the
    // filter (TSYNC); the others on the main thread: a fresh ring (its
    // ops would bypass seccomp), execve, fork, a signal to another
    // process (the test: signal 0).
    for call in ["socket", "execve", "io-uring-setup", "fork", "kill-other"] {
        let (status, log) = selftest(&dir, call, &[]);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{call} under the default filter: {status}\n{log}"
        );
        // The same call without the filter, and in log mode, comes back
        // (the hook then reports it and exits 1): the kill above is the
        // filter's doing.
        for mode in ["off", "log"] {
            let (status, log) = selftest(&dir, call, &["--seccomp", mode]);
            assert_eq!(status.code(), Some(1), "{call}, --seccomp {mode}: {log}");
            assert!(
                log.contains("selftest:") && log.contains("returned"),
                "{call}, --seccomp {mode}: {log}"
            );
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unlink_under_the_filter_fails_with_eacces_and_the_file_stays() {
    let dir = work_dir("unlink");
    let victim = |dir: &Path| {
        let mut v = selftest_socket(dir, "unlink").into_os_string();
        v.push(".selftest");
        std::path::PathBuf::from(v)
    };
    fs::write(victim(&dir), b"a file of the user's").unwrap();
    for mode in ["kill", "log"] {
        let (status, log) = selftest(&dir, "unlink", &["--seccomp", mode]);
        assert_eq!(status.code(), Some(1), "--seccomp {mode}: {log}");
        assert!(log.contains("Permission denied"), "--seccomp {mode}: {log}");
        assert!(victim(&dir).exists(), "--seccomp {mode} removed it: {log}");
        // Its own socket file is gone all the same (the remover).
        assert!(!selftest_socket(&dir, "unlink").exists(), "{log}");
    }
    let (status, log) = selftest(&dir, "unlink", &["--seccomp", "off"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("unlink returned Ok"), "{log}");
    assert!(!victim(&dir).exists());
    let _ = fs::remove_dir_all(&dir);
}

/// A render worker's own filter (on top of the daemon's): each call a
/// compromised worker could use against the host is refused, where the
/// daemon's filter it inherits lets it through (`--seccomp off`, the
/// worker unfiltered, shows the call itself works).
#[cfg(feature = "virgl")]
#[test]
fn virgl_worker_calls_its_own_filter_refuses_kill_it_with_sigsys_and_go_through_without_it() {
    let dir = work_dir("virgl-worker-selftest");
    let virgl = ["--renderer", "virgl", "--render-workers", "1"];
    for call in [
        "io-uring-setup",
        "execve",
        "fork",
        "kill-other",
        "prlimit-other",
    ] {
        let worker_call = format!("worker-{call}");
        let (status, log) = selftest(&dir, &worker_call, &virgl);
        assert_eq!(status.code(), Some(1), "{call}: {log}");
        assert!(
            log.contains(&format!(
                "selftest: {call} in a render worker: ready, then killed by signal {}",
                libc::SIGSYS
            )),
            "{call} under the default filter:\n{log}"
        );
        let off = [&virgl[..], &["--seccomp", "off"]].concat();
        let (_, log) = selftest(&dir, &worker_call, &off);
        assert!(
            log.contains(&format!("selftest: {call} returned"))
                && log.contains("ready, then exited with status 1"),
            "{call}, --seccomp off:\n{log}"
        );
    }
    // Calls answered with an errno: the worker comes back either way.
    // Shrinking the read-back memfd (the parent would take SIGBUS): EPERM
    // from the filter, and from the memfd's seals without it.
    for mode in ["kill", "off"] {
        let args = [&virgl[..], &["--seccomp", mode]].concat();
        let (_, log) = selftest(&dir, "worker-shrink-readback", &args);
        assert!(
            log.contains("selftest: shrink-readback returned -1 (Operation not permitted"),
            "--seccomp {mode}:\n{log}"
        );
    }
    let (_, log) = selftest(&dir, "worker-unlink", &virgl);
    assert!(
        log.contains("selftest: unlink returned -1 (Permission denied"),
        "{log}"
    );
    // The daemon itself starts no process and makes no ring (its
    // launcher starts the workers), and signals no pid (it kills a worker
    // through its pidfd).
    for call in ["kill-other", "io-uring-setup", "fork", "execve"] {
        let (status, log) = selftest(&dir, call, &virgl);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{call}: {status}\n{log}"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn seccomp_off_serves_a_run_without_a_filter() {
    let dir = work_dir("off");
    let mut d = Daemon::start(&dir, &["--seccomp", "off"]);
    assert!(!d.log_text().contains("seccomp filter installed"));
    let r = run_over_socket(&d, &plan(Profile::ThreeD, Scenario::None));
    assert_clean(&r, &d);
    assert_eq!(d.terminate().code(), Some(0));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_seccomp_values_are_refused_with_a_clear_error() {
    for (bad, says) in [
        ("on", "invalid value 'on' for '--seccomp <MODE>'"),
        ("KILLL", "invalid value 'KILLL' for '--seccomp <MODE>'"),
        ("", "a value is required for '--seccomp <MODE>'"),
    ] {
        let out = Command::new(DAEMON)
            .args(["-s", "/nonexistent/never-bound.sock", "--seccomp", bad])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--seccomp {bad:?}: {err}");
        assert!(
            err.contains(says) && err.contains("[possible values: off, log, kill]"),
            "--seccomp {bad:?}: {err}"
        );
    }
}
