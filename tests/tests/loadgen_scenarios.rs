//! Every loadgen scenario against the in-process backend: nothing lost,
//! nothing wrong, the stress really applied. (Latency numbers are for
//! benchmarks, not asserted here.)

use std::time::Duration;

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{FenceMode, Plan, Profile, Scenario};

fn run(plan: Plan) -> Report {
    let (backend, driver) = Backend::direct(&plan, 2, false, None).unwrap();
    run::run(&plan, &backend, driver, &mut |_| {})
}

/// The same run over vhost-user: gpu-reactor's backend embedded in this
/// process on a socketpair, loadgen's frontend playing the VMM.
fn run_vhost(plan: Plan) -> Report {
    let (backend, driver) = Backend::embedded(&plan, 2).unwrap();
    let r = run::run(&plan, &backend, driver, &mut |_| {});
    backend.finish().unwrap();
    r
}

fn plan(scenario: Scenario) -> Plan {
    Plan {
        desktops: 4,
        duration: Duration::from_millis(1200),
        scenario,
        gpu_cost_us: 500,
        ..Plan::default()
    }
}

fn assert_clean(r: &Report) {
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.fences_lost, 0);
    assert_eq!(r.pixels_bad, 0);
    assert!(r.frames > 0 && r.frames_delivered > 0, "{}", r.summary());
    for d in r.per_desktop.iter().filter(|d| !d.stressed) {
        assert!(d.frames > 0, "desktop {} made no frames", d.desktop);
    }
}

#[test]
fn plain_run_loses_nothing_and_delivers_correct_pixels() {
    let r = run(plan(Scenario::None));
    assert_clean(&r);
    assert!(r.isolation.is_none());
    assert_eq!(
        r.frames_delivered, r.frames,
        "every flushed frame reached the display"
    );
}

#[test]
fn stalled_context_leaves_only_the_stressed_desktops_fences_pending() {
    let r = run(plan(Scenario::StalledContext));
    assert_clean(&r);
    assert!(r.stressed_fences_pending > 0, "desktop 0 was not stalled");
    assert!(r.isolation.is_some());
}

#[test]
fn heavy_unmap_storm_slow_map_and_queue_full_lose_nothing() {
    for s in [
        Scenario::HeavyContext,
        Scenario::UnmapStorm,
        Scenario::SlowMap,
        Scenario::QueueFull,
    ] {
        let r = run(plan(s));
        assert_clean(&r);
        assert_eq!(r.stressed_fences_pending, 0, "{s}");
    }
}

#[test]
fn reset_mid_run_and_everyone_resumes() {
    let r = run(plan(Scenario::Reset));
    assert_clean(&r);
}

#[test]
fn two_d_profile_on_the_global_timeline() {
    let r = run(Plan {
        profile: Profile::TwoD,
        fence_mode: FenceMode::Ring,
        full_damage: true,
        width: 320,
        height: 200,
        ..plan(Scenario::None)
    });
    assert_clean(&r);
    assert_eq!(r.fence_mode, "global");
    // Each frame's pixels are copied once by the backend: from the guest's
    // backing straight into what goes to the display.
    assert_eq!(
        r.pixel_bytes_copied_per_frame,
        Some(f64::from(320 * 200 * 4)),
        "{}",
        r.summary()
    );
}

#[test]
fn over_vhost_user_pixels_reach_the_vmm_display_and_nothing_is_lost() {
    let r = run_vhost(plan(Scenario::None));
    assert_clean(&r);
    // Every frame reached the VMM's display, or was superseded for its
    // scanout by a newer one before the VMM read it (latest pixels win).
    assert_eq!(
        r.frames_delivered + r.frames_merged,
        r.frames,
        "{}",
        r.summary()
    );
}

#[test]
fn over_vhost_user_a_reset_and_slow_blob_maps_lose_nothing() {
    for s in [Scenario::Reset, Scenario::SlowMap, Scenario::StalledContext] {
        let r = run_vhost(plan(s));
        assert_clean(&r);
    }
}

#[test]
fn over_vhost_user_a_slow_display_on_one_scanout_merges_its_frames_and_loses_nothing() {
    let r = run_vhost(Plan {
        // 50 ms per update of desktop 0's scanout: it cannot show 60 fps.
        display_delay: Duration::from_millis(50),
        ..plan(Scenario::SlowDisplay)
    });
    assert_clean(&r);
    assert!(r.isolation.is_some());
    assert!(
        r.frames_merged > 0,
        "the slow scanout's unsent frames were not merged: {}",
        r.summary()
    );
    assert_eq!(
        r.frames_delivered + r.frames_merged,
        r.frames,
        "{}",
        r.summary()
    );
}

#[test]
fn a_slow_display_needs_a_gpu_socket() {
    let p = plan(Scenario::SlowDisplay);
    let r = run(p);
    assert!(
        r.error_samples.iter().any(|e| e.contains("--direct")),
        "{}",
        r.summary()
    );
}

#[test]
fn a_backend_that_dies_mid_run_ends_the_run_with_a_clear_error_not_a_hang() {
    use std::sync::Arc;
    let dir = std::env::temp_dir().join(format!("gpu-reactor-dies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpu.sock");
    let backend =
        Arc::new(gpu::vhost::Backend::start(gpu::vhost::BackendOptions::default()).unwrap());
    let server = gpu::vhost::Server::bind(&path, backend.clone()).unwrap();
    let stop = server.stopper();
    let serving = std::thread::spawn(move || server.run());
    let plan = Plan {
        duration: Duration::from_secs(30),
        ..plan(Scenario::None)
    };
    let (lg, driver) = Backend::socket(&plan, &path).unwrap();
    let killer = {
        let backend = backend.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            backend.interrupt();
        })
    };
    let started = std::time::Instant::now();
    let r = run::run(&plan, &lg, driver, &mut |_| {});
    assert!(started.elapsed() < Duration::from_secs(10), "the run hung");
    assert!(r.errors > 0);
    assert!(
        r.error_samples
            .iter()
            .any(|e| e.contains("backend disconnected")),
        "{:?}",
        r.error_samples
    );
    killer.join().unwrap();
    stop.stop();
    let _ = serving.join();
}
