//! loadgen's 2d profile against the peer backends, over vhost-user: it
//! completes and reports; what a peer gets wrong is counted, never a crash
//! or a hang of loadgen. The peers are installed by `tests/run`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{Plan, Profile};

/// Kills the peer on every path.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sock(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpu-reactor-peers-{}-{name}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir.join("gpu.sock")
}

fn spawn(bin: &Path, args: &[&str], sock: &Path, install: &str) -> Peer {
    assert!(
        bin.exists(),
        "{} is missing: run tests/run (it installs it with `{install}`)",
        bin.display()
    );
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never listened",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Peer(child)
}

fn two_d() -> Plan {
    Plan {
        desktops: 2,
        duration: Duration::from_millis(1500),
        profile: Profile::TwoD,
        full_damage: true,
        width: 320,
        height: 200,
        ..Plan::default()
    }
}

fn run_against(path: &Path) -> Report {
    let plan = two_d();
    let (backend, driver) = Backend::socket(&plan, path).unwrap();
    let r = run::run(&plan, &backend, driver, &mut |_| {});
    let _ = backend.finish();
    r
}

#[test]
fn qemu_contrib_vhost_user_gpu_runs_the_2d_profile_with_correct_pixels() {
    let s = sock("qemu");
    let _peer = spawn(
        Path::new("/usr/lib/qemu/vhost-user-gpu"),
        &["-s", s.to_str().unwrap()],
        &s,
        "apt-get install qemu-system-gui",
    );
    let r = run_against(&s);
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.fences_lost, 0);
    assert!(r.frames > 0 && r.frames_delivered > 0, "{}", r.summary());
    assert_eq!(r.pixels_bad, 0);
}

#[test]
fn rust_vmm_vhost_device_gpu_null_runs_and_its_missing_pixels_are_reported() {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let bin = home.join("bin/vhost-device-gpu");
    let s = sock("rustvmm");
    let _peer = spawn(
        &bin,
        &["--socket-path", s.to_str().unwrap(), "-g", "null"],
        &s,
        "cargo install vhost-device-gpu --locked --no-default-features",
    );
    let r = run_against(&s);
    // Its null mode completes commands but never sends a pixel: the run
    // finishes, fences complete, and the missing frames are visible.
    assert_eq!(r.fences_lost, 0, "{}", r.summary());
    assert!(r.frames > 0, "{}", r.summary());
    assert_eq!(r.frames_delivered, 0, "null mode shows nothing");
}
