//! The daemon's seccomp sandbox (gpu::sandbox), on the real binary: with the
//! filter on (the default) gpu-reactor serves full loadgen runs over its
//! socket for each renderer and stops cleanly on SIGTERM; a forbidden call
//! kills it with SIGSYS, also from a thread started before the filter;
//! `--seccomp off` and `log` let the same call through; bad values are
//! refused.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{Plan, Profile, Scenario};

const DAEMON: &str = env!("CARGO_BIN_EXE_gpu-reactor");
const DESKTOPS: usize = 4;

fn work_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gpu-reactor-sandbox-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gpu-reactor process listening on `dir/gpu.sock`, its log in
/// `dir/daemon.log`; killed if a test fails before stopping it.
struct Daemon {
    child: Option<Child>,
    sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let sock = dir.join("gpu.sock");
        let log = dir.join("daemon.log");
        let child = Command::new(DAEMON)
            .arg("-s")
            .arg(&sock)
            .args(["--shards", "2", "--outputs", "4"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child: Some(child),
            sock,
            log,
        };
        d.wait_listening();
        d
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .log_text()
            .contains("waiting for a vhost-user frontend")
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gpu-reactor exited at start: {status}\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "gpu-reactor did not listen within 30 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then its exit status (bounded wait).
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gpu-reactor did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn plan(profile: Profile, scenario: Scenario) -> Plan {
    Plan {
        desktops: DESKTOPS,
        scanouts: DESKTOPS as u32,
        duration: Duration::from_millis(1500),
        profile,
        scenario,
        gpu_cost_us: 500,
        ..Plan::default()
    }
}

/// One loadgen run over the daemon's socket (a VMM session).
fn run_over_socket(d: &Daemon, plan: &Plan) -> Report {
    let (backend, driver) = Backend::socket(plan, &d.sock)
        .unwrap_or_else(|e| panic!("loadgen cannot start: {e:?}\n{}", d.log_text()));
    run::run(plan, &backend, driver, &mut |_| {})
}

fn assert_clean(r: &Report, d: &Daemon) {
    assert_eq!(
        r.errors,
        0,
        "{:?}\ndaemon log:\n{}",
        r.error_samples,
        d.log_text()
    );
    assert_eq!(r.fences_lost, 0, "{}", r.summary());
    assert_eq!(r.pixels_bad, 0, "{}", r.summary());
    assert!(r.frames > 0, "no frames: {}", r.summary());
    for desk in r.per_desktop.iter().filter(|d| !d.stressed) {
        assert!(desk.frames > 0, "desktop {} made no frames", desk.desktop);
    }
}

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

/// virglrenderer + llvmpipe re-initialised on the render shard after each
/// device reset, under the filter (run by tests/run's virgl subset).
#[cfg(feature = "virgl")]
#[test]
fn virgl_daemon_under_the_default_filter_serves_real_frames_and_stops_on_sigterm() {
    use loadgen::scenario::{RenderMode, RendererKind};
    let real = |scenario| Plan {
        renderer: RendererKind::Virgl,
        render: RenderMode::Real,
        width: 320,
        height: 200,
        ..plan(Profile::ThreeD, scenario)
    };
    serve_runs_under_the_filter("virgl", &[real(Scenario::None), real(Scenario::Reset)]);
}

/// `--fd` (how libvirt starts backends): the filter is on for the one
/// session on the inherited socket, and the daemon exits 0 when the VMM
/// leaves.
#[test]
fn fd_mode_under_the_default_filter_serves_a_run_and_exits_0_when_the_vmm_leaves() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    let dir = work_dir("fd");
    let log = dir.join("daemon.log");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(DAEMON);
    cmd.args(["--fd", "3", "--shards", "2", "--outputs", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    // SAFETY: dup2 is async-signal-safe; it gives the child our socket end
    // as fd 3 without the close-on-exec flag.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let p = plan(Profile::ThreeD, Scenario::None);
    let ram = loadgen::frontend::GuestRam::new(128 << 20).unwrap();
    let (frontend, driver) =
        loadgen::frontend::VhostFrontend::from_stream(ours, ram, run::vhost_options(&p))
            .unwrap_or_else(|e| panic!("session over --fd: {e:?}\n{}", log_text()));
    let backend = Backend::from_frontend(frontend, "gpu-reactor --fd");
    let r = run::run(&p, &backend, driver, &mut |_| {});
    assert_eq!(r.errors, 0, "{:?}\n{}", r.error_samples, log_text());
    assert_eq!(r.fences_lost, 0, "{}", r.summary());
    assert!(r.frames > 0, "{}", r.summary());
    drop(backend);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "gpu-reactor --fd did not exit after the VMM left:\n{}",
                log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}\n{}", log_text());
    assert!(
        log_text().contains("seccomp filter installed"),
        "{}",
        log_text()
    );
    let _ = fs::remove_dir_all(&dir);
}

/// The daemon with `--seccomp-selftest CALL` (and `extra` flags) run to its
/// end (bounded).
fn selftest(dir: &Path, call: &str, extra: &[&str]) -> (ExitStatus, String) {
    let sock = dir.join(format!("{call}.sock"));
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

#[test]
fn a_forbidden_call_kills_the_daemon_with_sigsys_and_goes_through_without_the_filter() {
    let dir = work_dir("selftest");
    // socket(AF_INET) on reactor shard 0, a thread started before the
    // filter (TSYNC); execve on the main thread.
    for call in ["socket", "execve"] {
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
