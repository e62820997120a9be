//! The real gpu-reactor binary for the daemon tests: started on a socket
//! path (`-s`) or, as libvirt starts it, on an inherited connected socket
//! (`--fd=N`), its log in a file; loadgen sessions against it; its
//! `/metrics` scraped.
//!
//! Included by `sandbox.rs`, `libvirt.rs`, `daemon_flags.rs` and
//! `daemon_hostile.rs` with `#[path]`; built alone it is an empty test
//! crate.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{Plan, Profile, Scenario};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_gpu-reactor");
pub const DESKTOPS: usize = 4;

/// A fresh directory for one test's socket and logs.
pub fn work_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("gpu-reactor-daemon-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A gpu-reactor process, its log in `dir/daemon.log`; killed if a test
/// fails before stopping it.
pub struct Daemon {
    child: Option<Child>,
    /// Where it listens (`-s`; nothing is there under `--fd`).
    pub sock: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Listening on `dir/gpu.sock`, with 2 shards and 4 outputs.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
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

    /// As libvirt starts it: `theirs` (one end of a socket pair, the other
    /// end the VMM's) inherited as descriptor `fd`, `--fd=FD`, 2 shards and
    /// 4 outputs.
    pub fn start_on_fd(dir: &Path, theirs: UnixStream, fd: i32, args: &[&str]) -> Daemon {
        let log = dir.join("daemon.log");
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(DAEMON);
        cmd.arg(format!("--fd={fd}"))
            .args(["--shards", "2", "--outputs", "4"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        // SAFETY: dup2 and fcntl are async-signal-safe; they give the child
        // our socket end as `fd` without the close-on-exec flag (dup2 onto
        // itself would keep the flag, so that case clears it).
        unsafe {
            cmd.pre_exec(move || {
                let r = if theirs_fd == fd {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(theirs_fd, fd)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        Daemon {
            child: Some(child),
            sock: PathBuf::new(),
            log,
        }
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

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Its exit status, waiting at most 20 s (`what` it waits for names the
    /// failure).
    pub fn wait_exit(&mut self, what: &str) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gpu-reactor did not exit {what}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then its exit status (bounded wait).
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        self.wait_exit("on SIGTERM")
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

/// `DESKTOPS` desktops on as many scanouts for 1.5 s.
pub fn plan(profile: Profile, scenario: Scenario) -> Plan {
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
pub fn run_over_socket(d: &Daemon, plan: &Plan) -> Report {
    let (backend, driver) = Backend::socket(plan, &d.sock)
        .unwrap_or_else(|e| panic!("loadgen cannot start: {e:?}\n{}", d.log_text()));
    run::run(plan, &backend, driver, &mut |_| {})
}

/// One loadgen run as the VMM on `ours`, the socket pair end the daemon
/// did not get; the session stays open until the returned backend drops.
pub fn run_over_fd(d: &Daemon, ours: UnixStream, plan: &Plan) -> (Backend, Report) {
    let ram = loadgen::frontend::GuestRam::new(run::guest_ram_bytes(plan)).unwrap();
    let (frontend, driver) =
        loadgen::frontend::VhostFrontend::from_stream(ours, ram, run::vhost_options(plan))
            .unwrap_or_else(|e| panic!("session over --fd: {e:?}\n{}", d.log_text()));
    let backend = Backend::from_frontend(frontend, "gpu-reactor --fd");
    let r = run::run(plan, &backend, driver, &mut |_| {});
    (backend, r)
}

/// No errors, no lost fences, no bad pixels, frames from every desktop not
/// under stress.
pub fn assert_clean(r: &Report, d: &Daemon) {
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

/// `GET /metrics` from the daemon's `--metrics` address, retried until it
/// answers (it binds before it listens on its socket, but be patient).
pub fn scrape(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            return text;
        }
        assert!(Instant::now() < deadline, "no metrics at {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
