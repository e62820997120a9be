//! A real Linux guest running Mesa's virgl driver through QEMU 10 on
//! gpu-reactor's virgl renderer, pixels checked (`e2e_tests::guest3d` has
//! the harness; `tests/guest/glclient.c` the GL client, `tests/guest/init3d`
//! what the guest runs).
#![cfg(feature = "virgl")]

use std::time::Duration;

use e2e_tests::guest3d::{self, Backend, Outcome, Plan};
use e2e_tests::qemu::{Host, WorkDir};

const LIMIT: Duration = Duration::from_secs(300);

fn reactor(workers: Option<usize>) -> Backend {
    Backend::GpuReactor {
        bin: e2e_tests::gpu_reactor_binary(),
        workers,
    }
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

/// 4 GL clients (one on KMS, page-flipping, 3 offscreen) for 10 s.
#[test]
fn guest3d_virgl_four_clients_render_and_read_back_exactly() {
    let host = Host::find();
    let work = WorkDir::new("gpu-reactor-guest3d");
    let initrd = guest3d::build_image(&host, work.path());
    let plan = Plan {
        run: "clients",
        n: 4,
        secs: 10,
        outputs: 1,
        kms_heads: 1,
    };
    let o = guest3d::run(
        &host,
        &initrd,
        &reactor(None),
        &plan,
        &work.sub("four"),
        LIMIT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    report("4 clients on gpu-reactor virgl", &o);
    assert_clean(&o, 4, 1);
    work.passed();
}
