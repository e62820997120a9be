//! A gpu-reactor daemon killed (SIGKILL) under loadgen load and started
//! again on the same socket: loadgen's frontend reconnects as QEMU does,
//! hands the new daemon the same inflight buffer, and the run goes on.
//! The commands the dead daemon held are resubmitted by the new one; no
//! fence is lost, completed twice or out of order.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{FenceMode, Plan, Profile, Scenario};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts gpu-reactor on `sock`, logging at info to `log`; returns once it
/// listens (a socket file that accepts).
fn daemon(bin: &Path, sock: &Path, log: &Path) -> Daemon {
    let child = Command::new(bin)
        .args(["--socket-path"])
        .arg(sock)
        .args(["--renderer", "sim", "--shards", "2"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "gpu-reactor never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// The sum of `commands=N` over the daemon's "resubmitted in-flight
/// commands" log lines.
fn resubmitted(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|l| l.contains("resubmitted in-flight commands"))
        .filter_map(|l| {
            let at = l.find("commands=")? + "commands=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpu-reactor-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `plan` against the daemon at `sock` on another thread (loadgen's
/// backend handle is not `Send`; it lives there).
fn run_in_thread(plan: Plan, sock: PathBuf) -> std::thread::JoinHandle<Report> {
    std::thread::spawn(move || {
        let (backend, driver) = Backend::socket(&plan, &sock).unwrap();
        let r = run::run(&plan, &backend, driver, &mut |_| {});
        backend.finish().unwrap();
        r
    })
}

/// Waits until the daemon logging to `log` has taken the session up (its
/// rings started, the inflight buffer recovered).
fn wait_for_resubmission(log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while resubmitted(log) == 0 {
        assert!(
            Instant::now() < deadline,
            "the new daemon never resubmitted: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `plan` against a daemon that is SIGKILLed and started again
/// `kills` times; each new daemon must resubmit what its predecessor held.
fn kill_and_restart(plan: Plan, name: &str, kills: usize) {
    // Found (or built) before anything runs: a restart must not wait for
    // cargo.
    let bin = e2e_tests::gpu_reactor_binary();
    let dir = workdir(name);
    let sock = dir.join("gpu.sock");
    let logs: Vec<PathBuf> = (0..=kills)
        .map(|i| dir.join(format!("daemon-{i}.log")))
        .collect();
    let mut current = daemon(&bin, &sock, &logs[0]);
    let load = run_in_thread(plan.clone(), sock.clone());
    // The first kill comes in the second half of the run: with
    // `stalled-context`, desktop 0 then has a submit the GPU never
    // finishes, so the dying daemon surely holds a command.
    std::thread::sleep(plan.duration * 3 / 5);
    for (k, log) in logs.iter().enumerate().skip(1) {
        current.0.kill().unwrap(); // SIGKILL: no clean-up of any kind
        current.0.wait().unwrap();
        current = daemon(&bin, &sock, log);
        if k < kills {
            // The next kill once loadgen is back on this daemon and desktop
            // 0 has set itself up again (and hung again).
            wait_for_resubmission(log);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let r = load.join().unwrap();
    drop(current);
    println!("{}", r.summary());
    let resubmissions: Vec<u64> = logs[1..].iter().map(|l| resubmitted(l)).collect();
    println!("resubmitted by each new daemon: {resubmissions:?}");
    println!("lost-state answers: {}", r.lost_state_answers);

    assert_eq!(r.reconnects, kills as u64, "{:?}", r.error_samples);
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.fences_lost, 0, "{}", r.summary());
    assert_eq!(r.fences_completed_twice, 0);
    assert_eq!(r.fences_out_of_order, 0);
    // Every new daemon ran again what the dead one held. (Their answers
    // about contexts and resources it never had are `lost_state_answers`,
    // not errors; commands sent while no daemon listened add to them.)
    for (n, log) in resubmissions.iter().zip(&logs[1..]) {
        assert!(
            *n > 0,
            "a new daemon resubmitted nothing: {}",
            std::fs::read_to_string(log).unwrap()
        );
    }
    for d in r.per_desktop.iter().filter(|d| !d.stressed) {
        assert!(
            d.frames_after_reconnect > 0,
            "desktop {} made no frame after the last reconnect: {}",
            d.desktop,
            r.summary()
        );
    }
    assert_eq!(r.pixels_bad, 0);
}

/// Ring fences, desktop 0 stalled in the second half (its fences are
/// expected to stay pending; the others' must not).
fn reconnecting_stalled() -> Plan {
    Plan {
        desktops: 4,
        duration: Duration::from_secs(4),
        scenario: Scenario::StalledContext,
        gpu_cost_us: 20_000,
        width: 320,
        height: 200,
        tile: 64,
        reconnect: Some(Duration::from_secs(20)),
        ..Plan::default()
    }
}

#[test]
fn a_daemon_killed_under_load_and_restarted_loses_no_fence_3d_ring_fences() {
    kill_and_restart(reconnecting_stalled(), "reconnect-3d", 1);
}

#[test]
fn a_daemon_killed_under_load_and_restarted_loses_no_fence_global_timeline() {
    // One timeline for all: a stalled desktop would hold everyone's fences,
    // so no stall here; each submit takes 200 ms of modelled GPU time
    // instead, so the daemon holds a frame of every desktop nearly all the
    // time.
    let plan = Plan {
        fence_mode: FenceMode::Global,
        scenario: Scenario::None,
        gpu_cost_us: 200_000,
        ..reconnecting_stalled()
    };
    kill_and_restart(plan, "reconnect-global", 1);
}

#[test]
fn a_daemon_killed_twice_in_one_run_loses_no_fence() {
    let plan = Plan {
        duration: Duration::from_secs(6),
        ..reconnecting_stalled()
    };
    kill_and_restart(plan, "reconnect-twice", 2);
}

#[test]
fn without_reconnect_a_killed_daemon_ends_the_run_with_an_error() {
    let dir = workdir("reconnect-off");
    let sock = dir.join("gpu.sock");
    let bin = e2e_tests::gpu_reactor_binary();
    let mut first = daemon(&bin, &sock, &dir.join("first.log"));
    let plan = Plan {
        desktops: 2,
        duration: Duration::from_secs(30),
        profile: Profile::TwoD,
        width: 320,
        height: 200,
        ..Plan::default()
    };
    let load = run_in_thread_lenient(plan, sock);
    std::thread::sleep(Duration::from_millis(500));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let r = load.join().unwrap();
    assert_eq!(r.reconnects, 0);
    assert!(r.errors > 0);
    assert!(
        r.error_samples
            .iter()
            .any(|e| e.contains("backend disconnected")),
        "{:?}",
        r.error_samples
    );
}

/// As `run_in_thread`, without asserting a clean end of the session.
fn run_in_thread_lenient(plan: Plan, sock: PathBuf) -> std::thread::JoinHandle<Report> {
    std::thread::spawn(move || {
        let (backend, driver) = Backend::socket(&plan, &sock).unwrap();
        let r = run::run(&plan, &backend, driver, &mut |_| {});
        let _ = backend.finish();
        r
    })
}

#[test]
fn inflight_tracking_through_device_resets_and_slow_maps_loses_nothing() {
    // `reconnect` turns inflight tracking on; the embedded backend never
    // dies, so this is the tracking on the ordinary paths: every chain
    // marked and cleared, a reset that fetches a new buffer.
    for scenario in [Scenario::Reset, Scenario::SlowMap] {
        let plan = Plan {
            desktops: 4,
            duration: Duration::from_millis(1500),
            scenario,
            gpu_cost_us: 500,
            reconnect: Some(Duration::from_secs(5)),
            ..Plan::default()
        };
        let (backend, driver) = Backend::embedded(&plan, 2).unwrap();
        let r = run::run(&plan, &backend, driver, &mut |_| {});
        backend.finish().unwrap();
        assert_eq!(r.errors, 0, "{scenario}: {:?}", r.error_samples);
        assert_eq!(r.fences_lost, 0, "{scenario}");
        assert_eq!(r.reconnects, 0);
        assert_eq!(r.lost_state_answers, 0);
        assert_eq!(r.pixels_bad, 0);
        assert!(r.frames > 0 && r.frames_delivered > 0, "{}", r.summary());
    }
}
