//! A bounded soak: one gpu-reactor backend serves a run of sessions, each a
//! different scenario, frontends connecting and leaving as VMs come and go.
//! Nothing may be lost, and the process's memory must level off: after a
//! warm-up the resident set's level (the median over one rotation of the
//! scenarios) grows by less than 5% up to the last rotation. (`GPU_SOAK_ROUNDS` for
//! a longer soak, `GPU_SOAK_DESKTOPS` and `GPU_SOAK_ROUND_MS` for bigger
//! rounds, `GPU_SOAK_TRACE=1` to print the RSS of each round; the 30-minute
//! soak of docs/reliability.md is `GPU_SOAK_DESKTOPS=16
//! GPU_SOAK_ROUND_MS=10000 GPU_SOAK_ROUNDS=176`.)

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use loadgen::frontend::vhost::VhostFrontend;
use loadgen::frontend::GuestRam;
use loadgen::run::{self, Backend};
use loadgen::scenario::{Plan, Scenario};

/// The resident set, with the allocator's free pages given back first: the
/// device trims once a second when the guest freed memory, so whether a
/// round's end comes before or after its trim would swing a bare sample by
/// 2-3 MiB.
fn rss_kib() -> u64 {
    // SAFETY: malloc_trim takes an integer and returns free pages of the
    // allocator's heaps to the kernel; no memory in use moves.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn sessions_with_rotating_scenarios_lose_nothing_and_memory_levels_off() {
    let rounds: usize = std::env::var("GPU_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    // Long runs: GPU_SOAK_DESKTOPS desktops at 1280x800 (else 4 at 320x200),
    // GPU_SOAK_ROUND_MS per round (else 700).
    let knob = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let desktops = knob("GPU_SOAK_DESKTOPS");
    let round_ms = knob("GPU_SOAK_ROUND_MS").unwrap_or(700);
    let scenarios = [
        Scenario::None,
        Scenario::UnmapStorm,
        Scenario::StalledContext,
        Scenario::SlowMap,
        Scenario::QueueFull,
        Scenario::Reset,
        Scenario::HeavyContext,
        Scenario::SlowDisplay,
    ];
    // glibc gives threads new arenas (up to 8 per core) as sessions start
    // and stop threads; that step-like growth is the allocator, not us, so
    // the arenas are capped to see what the backend itself keeps.
    // SAFETY: mallopt takes two integers and only tunes the allocator.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    let gpu = Arc::new(gpu::vhost::Backend::start(gpu::vhost::BackendOptions::default()).unwrap());
    // The resident set after every round. One sample swings by up to ±5%
    // with the scenario and where the allocator stands in a session, so
    // levels are compared, not samples: a rotation's median.
    assert!(
        rounds >= 4 * scenarios.len(),
        "GPU_SOAK_ROUNDS: at least four rotations of {} rounds",
        scenarios.len()
    );
    let mut rss = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (n, width, height) = match desktops {
            Some(n) => (n as usize, 1280, 800),
            None => (4, 320, 200),
        };
        let plan = Plan {
            desktops: n,
            duration: Duration::from_millis(round_ms),
            scenario: scenarios[round % scenarios.len()],
            gpu_cost_us: 500,
            width,
            height,
            ..Plan::default()
        };
        // A VM comes: a new frontend session on the same backend.
        let (ours, theirs) = UnixStream::pair().unwrap();
        let serving = {
            let gpu = gpu.clone();
            std::thread::spawn(move || {
                let _ = gpu.serve_stream(theirs);
            })
        };
        let ram = GuestRam::new(run::guest_ram_bytes(&plan)).unwrap();
        let opts = run::vhost_options(&plan);
        let (frontend, driver) = VhostFrontend::from_stream(ours, ram, opts).unwrap();
        let backend = Backend::from_frontend(frontend, "soak");
        let r = run::run(&plan, &backend, driver, &mut |_| {});
        // ...and goes.
        backend.finish().unwrap();
        serving.join().unwrap();
        assert_eq!(
            r.errors, 0,
            "round {round} ({}): {:?}",
            plan.scenario, r.error_samples
        );
        assert_eq!(r.fences_lost, 0, "round {round} ({})", plan.scenario);
        assert!(r.frames > 0, "round {round}: {}", r.summary());
        let s = gpu.device().stats().unwrap();
        assert_eq!(
            (s.contexts, s.resources),
            (0, 0),
            "round {round}: the session left state behind"
        );
        rss.push(rss_kib());
        if std::env::var_os("GPU_SOAK_TRACE").is_some() {
            eprintln!("round {round}: rss {} KiB", rss[round]);
        }
    }
    // Allocator arenas and caches settle over the first three rotations
    // (measured: flat from about round 25 to round 84); the third one is the
    // level after warm-up.
    let rotation = scenarios.len();
    let level = |rounds: &[u64]| {
        let mut sorted = rounds.to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    };
    let warm = level(&rss[2 * rotation..3 * rotation]);
    let end = level(&rss[rounds - rotation..]);
    assert!(
        end <= warm + warm / 20,
        "RSS level grew from {warm} KiB after warm-up to {end} KiB (per round: {rss:?})"
    );
}
