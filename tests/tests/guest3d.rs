//! A real Linux guest running Mesa's virgl driver through QEMU 10 on
//! gpu-reactor's virgl renderer, pixels checked (`e2e_tests::guest3d` has
//! the harness; `tests/guest/glclient.c` the GL client, `tests/guest/init3d`
//! what the guest runs).
#![cfg(feature = "virgl")]

use std::time::Duration;

use e2e_tests::guest3d::{self, Backend, Outcome, Plan};
use e2e_tests::qemu::{Host, WorkDir};

const LIMIT: Duration = Duration::from_secs(300);

/// A frame gap this long (a third of the 30 s run) is a client that stopped
/// rendering, not a slow machine.
const STALL_MS: f64 = 10_000.0;

fn reactor(workers: Option<usize>) -> Backend {
    Backend::GpuReactor {
        bin: e2e_tests::gpu_reactor_binary(),
        workers,
    }
}

/// Builds the 3D guest in a scratch directory named `dir`, boots it on
/// gpu-reactor (`--render-workers` `workers`) for `plan` and prints what it
/// showed under `name`. The directory is kept unless the test passes.
fn boot(dir: &str, name: &str, plan: &Plan, workers: Option<usize>) -> (WorkDir, Outcome) {
    let host = Host::find();
    let work = WorkDir::new(dir);
    let initrd = guest3d::build_image(&host, work.path());
    let o = guest3d::run(
        &host,
        &initrd,
        &reactor(workers),
        plan,
        &work.sub("run"),
        LIMIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    report(name, &o);
    (work, o)
}

/// The value of an unlabelled Prometheus sample `name` (0 if absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

fn report(name: &str, o: &Outcome) {
    println!("---- {name}: {:.1} s", o.elapsed.as_secs_f64());
    for l in o.serial_lines("G3D-DMESG") {
        println!("  {l}");
    }
    for c in &o.clients {
        println!("  client {c:?}");
    }
    for h in &o.heads {
        println!(
            "  head {} {}x{}: guest fnv {:016x}, screendump fnv {:016x}",
            h.head, h.width, h.height, h.guest_fnv, h.screen_fnv
        );
    }
    for l in o.serial_lines("GLCLIENT-BADPIXEL").iter().take(10) {
        println!("  {l}");
    }
    println!("  guest kernel *ERROR* lines: {}", o.kernel_errors);
    for l in o.context_errors().iter().take(10) {
        println!("  backend: {l}");
    }
}

/// Every client exited 0, read back exactly what it drew, the guest kernel
/// logged no error, the backend no context error, and every KMS head showed
/// its client's last frame.
fn assert_clean(o: &Outcome, clients: usize, heads: usize) {
    assert_eq!(o.clients.len(), clients, "client reports:\n{}", o.serial);
    for c in &o.clients {
        assert!(c.frames > 0 && c.readbacks > 0, "{c:?}");
        assert_eq!(c.readback_errors, 0, "{c:?}");
        assert_eq!(c.flip_errors, 0, "{c:?}");
    }
    assert!(
        o.exits.iter().all(|(_, st)| *st == 0),
        "client exits {:?}\n{}",
        o.exits,
        o.serial
    );
    assert_eq!(o.kernel_errors, 0, "guest kernel errors:\n{}", o.serial);
    assert!(
        o.context_errors().is_empty(),
        "backend context errors:\n{}",
        o.context_errors().join("\n")
    );
    assert_eq!(o.heads.len(), heads, "heads checked: {:?}", o.heads);
    for h in &o.heads {
        assert_eq!(
            h.screen_fnv, h.guest_fnv,
            "head {} does not show its client's last frame",
            h.head
        );
    }
}

/// 4 GL clients (one on KMS, page-flipping, 3 offscreen) for 10 s, with
/// render workers (`workers`: `None` the default, one per shard) or with
/// virgl in the daemon (`Some(0)`).
fn four_clients(name: &str, workers: Option<usize>) {
    let plan = Plan {
        run: "clients",
        n: 4,
        secs: 10,
        outputs: 1,
        kms_heads: 1,
    };
    let (work, o) = boot(
        &format!("gpu-reactor-guest3d-{name}"),
        &format!("4 clients on gpu-reactor virgl ({name})"),
        &plan,
        workers,
    );
    assert_clean(&o, 4, 1);
    work.passed();
}

#[test]
fn guest3d_virgl_four_clients_render_and_read_back_exactly() {
    four_clients("workers", None);
}

#[test]
fn guest3d_virgl_in_process_four_clients_render_and_read_back_exactly() {
    four_clients("in-process", Some(0));
}

/// kmscube (KMS, 120 frames) and three glmark2-es2-drm scenes, Debian's
/// packages, no one here wrote them: they run to completion, with scores.
#[test]
fn guest3d_virgl_kmscube_and_glmark2_run_to_completion() {
    let plan = Plan {
        run: "thirdparty",
        n: 1,
        secs: 0,
        outputs: 1,
        kms_heads: 0,
    };
    let (work, o) = boot(
        "gpu-reactor-guest3d-thirdparty",
        "kmscube and glmark2 on gpu-reactor virgl",
        &plan,
        None,
    );
    for l in o
        .serial_lines("G3D-KMSCUBE")
        .iter()
        .chain(&o.serial_lines("G3D-GLMARK2"))
    {
        println!("  {l}");
    }
    assert_clean(&o, 0, 0);
    assert_eq!(
        o.exits,
        vec![("kmscube".to_string(), 0), ("glmark2".to_string(), 0)],
        "{}",
        o.serial
    );
    // "Rendered N frames in S sec (F fps)", last line: N counts from 0.
    let rendered = o.serial_lines("G3D-KMSCUBE").iter().rev().find_map(|l| {
        l.split("Rendered ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse::<u32>()
            .ok()
    });
    assert!(
        rendered.is_some_and(|n| n >= 119),
        "kmscube did not render its 120 frames ({rendered:?}):\n{}",
        o.serial
    );
    let score = o
        .serial_lines("G3D-GLMARK2")
        .iter()
        .find_map(|l| l.split("glmark2 Score:").nth(1)?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no glmark2 score:\n{}", o.serial));
    let scenes = o
        .serial_lines("G3D-GLMARK2")
        .iter()
        .filter(|l| l.contains("FPS:"))
        .count();
    assert_eq!(scenes, 3, "glmark2 scenes with an FPS:\n{}", o.serial);
    println!("glmark2 score {score}");
    assert!(score > 0);
    work.passed();
}

/// The container manager's way: `n` heads (`max_outputs=n`, `--outputs
/// n`), each leased (connector + CRTC + primary plane) to its own KMS
/// client process; every head shows its own client's last frame.
fn leased_heads(n: u32, secs: u32) {
    let plan = Plan {
        run: "lease",
        n,
        secs,
        outputs: n,
        kms_heads: n,
    };
    let (work, o) = boot(
        &format!("gpu-reactor-guest3d-lease-{n}"),
        &format!("{n} leased heads on gpu-reactor virgl"),
        &plan,
        None,
    );
    for l in o.serial_lines("GLCLIENT-LEASE") {
        println!("  {l}");
    }
    assert_eq!(
        o.serial_lines("GLCLIENT-LEASE").len(),
        n as usize,
        "{}",
        o.serial
    );
    assert_clean(&o, n as usize, n as usize);
    let mut fnvs: Vec<u64> = o.heads.iter().map(|h| h.guest_fnv).collect();
    fnvs.sort_unstable();
    fnvs.dedup();
    assert_eq!(
        fnvs.len(),
        n as usize,
        "each head has its own picture: {:?}",
        o.heads
    );
    work.passed();
}

#[test]
fn guest3d_virgl_four_leased_heads_show_their_clients_frames() {
    leased_heads(4, 10);
}

/// The analysis's many desktops: 16 heads, the most a virtio-gpu device
/// has (`max_outputs=16`), each leased to its own client.
#[test]
fn guest3d_virgl_sixteen_leased_heads_show_their_clients_frames() {
    leased_heads(16, 10);
}

/// 16 GL processes, each its own context (1 on KMS, 15 offscreen), 30 s:
/// every client renders exactly to the end, none stalls, no error.
///
/// The longest frame gap is printed, not held to 1 s: on this 2-core TCG
/// machine 16 guest processes share one emulated CPU and the KMS client's
/// gap swung from 0.95 s to 1.14 s between runs of the same commit, so a
/// 1 s bound asserts the machine's load, not the backend. The bound below
/// (a third of the run) catches what this test is for: a client whose
/// context deadlocks or starves while the others go on.
#[test]
fn guest3d_virgl_sixteen_clients_for_30_s() {
    let plan = Plan {
        run: "clients",
        n: 16,
        secs: 30,
        outputs: 1,
        kms_heads: 1,
    };
    let (work, o) = boot(
        "gpu-reactor-guest3d-16",
        "16 clients on gpu-reactor virgl",
        &plan,
        None,
    );
    assert_clean(&o, 16, 1);
    for c in &o.clients {
        assert!(
            c.max_gap_ms <= STALL_MS,
            "client {} stalled for {:.0} ms: {c:?}",
            c.id,
            c.max_gap_ms
        );
    }
    let worst = o
        .clients
        .iter()
        .max_by(|a, b| a.max_gap_ms.total_cmp(&b.max_gap_ms))
        .expect("16 clients");
    println!(
        "longest frame gap: client {} (head {}) {:.1} ms",
        worst.id, worst.head, worst.max_gap_ms
    );
    work.passed();
}

/// One client with a very expensive fragment shader beside 3 light ones,
/// a render worker per client: every client still renders exactly, and the
/// light clients' longest frame gap is reported beside the heavy one's.
///
/// Not asserted: that the light clients keep their pace. Mesa's virgl
/// driver puts every context's fences on the guest kernel's one global
/// timeline (no CONTEXT_INIT rings), and the kernel signals every earlier
/// fence when a later one completes, so the backend must release them in
/// submission order: the heavy client's fence holds the light clients'
/// (measured: all four at the heavy client's pace). QEMU's virgl retires
/// its fences in the same global order.
#[test]
fn guest3d_virgl_heavy_client_on_its_own_worker_renders_beside_light_ones() {
    let plan = Plan {
        run: "heavy",
        n: 4,
        secs: 10,
        outputs: 1,
        kms_heads: 0,
    };
    let (work, o) = boot(
        "gpu-reactor-guest3d-heavy",
        "a heavy client and 3 light ones, a worker each",
        &plan,
        Some(4),
    );
    assert_clean(&o, 4, 0);
    let heavy = o
        .clients
        .iter()
        .find(|c| c.id == 0)
        .expect("the heavy client");
    let light_gap = o
        .clients
        .iter()
        .filter(|c| c.id != 0)
        .map(|c| c.max_gap_ms)
        .fold(0.0, f64::max);
    println!(
        "heavy client: {} frames, longest gap {:.1} ms, glFinish p50 {:.0} us; light clients' \
         longest gap {light_gap:.1} ms",
        heavy.frames, heavy.max_gap_ms, heavy.finish_p50_us
    );
    work.passed();
}

/// weston 14 on the DRM backend with its GL renderer (virgl through Mesa),
/// the desktop shell and two `weston-simple-egl` clients: weston shows its
/// background colour, both clients' windows are on it, and they move (two
/// screendumps 2 s apart differ inside the windows, nowhere else). The
/// compositor samples its clients' buffers, which live on other render
/// workers than its own context: replicas (`pool.rs`).
#[test]
fn guest3d_virgl_weston_shows_its_background_and_two_simple_egl_clients() {
    let plan = Plan {
        run: "weston",
        n: 2,
        secs: 10,
        outputs: 1,
        kms_heads: 0,
    };
    let (work, o) = boot(
        "gpu-reactor-guest3d-weston",
        "weston and 2 weston-simple-egl on gpu-reactor virgl",
        &plan,
        None,
    );
    for l in o.serial_lines("G3D-SIMPLE-EGL") {
        println!("  {l}");
    }
    assert!(
        !o.serial_lines("G3D-WESTON-UP").is_empty(),
        "weston did not come up:\n{}",
        o.serial
    );
    assert_clean(&o, 0, 0);
    let names: Vec<&str> = o.exits.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["simple-egl1", "simple-egl2", "weston"],
        "{}",
        o.serial
    );
    for k in 1..=2 {
        let fps: Vec<f64> = o
            .serial_lines(&format!("G3D-SIMPLE-EGL{k} "))
            .iter()
            .filter_map(|l| {
                l.split("seconds: ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        println!("  weston-simple-egl {k}: fps every 5 s {fps:?}");
        assert!(
            !fps.is_empty() && fps.iter().all(|f| *f > 0.0),
            "weston-simple-egl {k} reported no frames:\n{}",
            o.serial
        );
    }

    const BACKGROUND: [u8; 3] = [0x20, 0x40, 0x60];
    assert_eq!(o.shots.len(), 2, "screendumps taken");
    let (a, b) = (&o.shots[0], &o.shots[1]);
    assert_eq!((a.width, a.height), (b.width, b.height));
    let px =
        |p: &e2e_tests::qemu::Ppm, i: usize| [p.rgb[3 * i], p.rgb[3 * i + 1], p.rgb[3 * i + 2]];
    let n = (a.width * a.height) as usize;
    let w = a.width as usize;
    for corner in [0, w - 1, n - w, n - 1] {
        assert_eq!(
            px(a, corner),
            BACKGROUND,
            "weston's background at pixel {corner}"
        );
    }
    let off_background = (0..n).filter(|&i| px(a, i) != BACKGROUND).count();
    let changed = (0..n).filter(|&i| px(a, i) != px(b, i)).count();
    // Pixels that are the background in one screendump and not in the
    // other: a window moved or weston repainted outside the windows.
    let moved = (0..n)
        .filter(|&i| (px(a, i) == BACKGROUND) != (px(b, i) == BACKGROUND))
        .count();
    println!(
        "  screen {}x{}: {off_background} pixels off the background, {changed} changed in 2 s, \
         {moved} on and off the background",
        a.width, a.height
    );
    // A simple-egl window is 250x250; two may overlap, but not entirely.
    assert!(
        off_background > 250 * 250 && off_background < n / 2,
        "windows on weston's background: {off_background} of {n} pixels"
    );
    assert!(
        changed > 1000,
        "the clients' triangles turn: {changed} pixels changed"
    );
    assert!(moved < n / 100, "the background stays: {moved} pixels");
    // weston's context and the clients' are spread over the 2 render
    // workers, so at least one client's buffer reached weston's worker as
    // a replica (without them, weston's attach of it was refused).
    let metrics = o.metrics.as_deref().unwrap_or_default();
    let copies = metric(metrics, "gpu_reactor_render_replica_copies_total");
    println!("  replica copies: {copies}");
    assert!(copies > 0, "no replica copied:\n{metrics}");
    assert_eq!(
        metric(metrics, "gpu_reactor_render_cross_worker_refusals_total"),
        0
    );
    work.passed();
}

/// The deadlock analysis's faults in the real guest (`g3d.run=faults`,
/// 8 render workers): `kill -9` of an offscreen client mid-frame and of the
/// DRM-master client mid-flip take only their own contexts: client 1
/// renders on exactly, a new client on the same head shows its frame and a
/// new offscreen one renders exactly. Then the host kills the render
/// worker busiest while only clients 1 and 4 render: the one of them on it
/// loses its context (wrong readbacks, the guest kernel logs the errors),
/// the other renders on exactly, a client started after the loss renders
/// exactly, the guest does not hang and the daemon counts one loss.
#[test]
fn guest3d_virgl_clients_and_a_render_worker_killed_mid_frame_take_only_themselves_down() {
    let plan = Plan {
        run: "faults",
        n: 0,
        secs: 0,
        outputs: 1,
        kms_heads: 1,
    };
    let (work, o) = boot(
        "gpu-reactor-guest3d-faults",
        "clients and a render worker killed on gpu-reactor virgl",
        &plan,
        Some(8),
    );
    for l in o.serial_lines("G3D-WORKER-GONE") {
        println!("  {l}");
    }
    println!("  killed worker: {:?}", o.killed_worker);
    let exit = |name: &str| o.exits.iter().find(|(n, _)| n == name).map(|e| e.1);
    for (name, want) in [
        ("0", 137),
        ("2", 137),
        ("1", 0),
        ("3", 0),
        ("4", 0),
        ("5", 0),
    ] {
        assert_eq!(
            exit(name),
            Some(want),
            "client {name}'s exit:\n{}",
            o.serial
        );
    }
    let report = |id: i64| {
        o.clients
            .iter()
            .find(|c| c.id == id)
            .unwrap_or_else(|| panic!("no report of client {id}:\n{}", o.serial))
    };
    assert!(
        o.clients.iter().all(|c| c.id != 0 && c.id != 2),
        "a killed client reported: {:?}",
        o.clients
    );
    // After the client kills: the new DRM master and the new offscreen
    // client.
    for id in [3, 5] {
        let c = report(id);
        assert!(c.frames > 0 && c.readbacks > 0, "{c:?}");
        assert_eq!((c.readback_errors, c.flip_errors), (0, 0), "{c:?}");
    }
    assert_eq!(o.heads.len(), 1, "{:?}", o.heads);
    assert_eq!(
        o.heads[0].screen_fnv, o.heads[0].guest_fnv,
        "head 0 does not show the new master's last frame"
    );
    // The worker kill: exactly one of clients 1 and 4 read back wrong.
    let killed = o.killed_worker.expect("the host killed a render worker");
    assert!(killed.ticks > 0, "{killed:?}");
    let (a, b) = (report(1), report(4));
    let hit: Vec<_> = [a, b]
        .into_iter()
        .filter(|c| c.readback_errors > 0)
        .collect();
    assert_eq!(hit.len(), 1, "one client loses its context: {a:?} {b:?}");
    let survivor = if hit[0].id == 1 { b } else { a };
    assert!(
        survivor.frames > 0 && survivor.readbacks > 0,
        "{survivor:?}"
    );
    assert_eq!(survivor.readback_errors, 0, "{survivor:?}");
    // "G3D-WORKER-GONE kernel errors A -> B": the lost context's commands
    // were answered with errors after the kill, not only the killed
    // clients' before it.
    let gone = o.serial_lines("G3D-WORKER-GONE");
    let counts: Vec<u64> = gone
        .first()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        gone.len() == 1 && counts.len() == 2 && counts[1] > counts[0],
        "the lost context's commands answered with errors after the kill: {gone:?}\n{}",
        o.serial
    );
    let metrics = o.metrics.as_deref().unwrap_or_default();
    assert_eq!(
        metric(metrics, "gpu_reactor_render_worker_losses_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(metrics, "gpu_reactor_render_contexts_lost_total"),
        1,
        "{metrics}"
    );
    assert!(metric(metrics, "gpu_reactor_render_worker_restarts_total") >= 1);
    work.passed();
}
