//! A real Linux guest in QEMU against gpu-reactor, pixels checked end to end.
//!
//! The test builds a small initramfs (busybox-static, the virtio_gpu module
//! chain of the installed distribution kernel, `tests/guest/init`, and
//! `tests/guest/fbfill.c` compiled with `gcc -static`), starts
//! `gpu-reactor -s SOCK --renderer 2d`, and boots the distribution kernel in
//! QEMU 10 on TCG with `-device vhost-user-gpu-pci` on that socket. The guest's
//! virtio_gpu driver binds, `fbfill` fills `/dev/fb0` with a pattern that is a
//! function of (x, y) (the kernel turns that into TRANSFER_TO_HOST_2D +
//! RESOURCE_FLUSH), and a QMP `screendump` shows what the backend sent QEMU
//! as UPDATE messages on the GPU socket: every pixel must be the pattern's.
//!
//! Then QEMU's own backend, `/usr/lib/qemu/vhost-user-gpu`, goes through the
//! identical steps with the same initramfs, and must show the same pixels.
//!
//! Nothing is skipped: without QEMU 10, the kernel, busybox or gcc the test
//! fails and names the command that installs them (`tests/run`). Each boot is
//! bounded (120 s), and every child process is killed on every path.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use e2e_tests::qemu::{
    add_guest_modules, checksum, command_count, free_local_addr, gcc, gzip_to, scrape, BootFiles,
    Cpio, Host, Ppm, Qmp, WorkDir, BUSYBOX, CONTRIB,
};

/// A whole boot, from starting the backend to QEMU's exit.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long the screendump may take to show the pattern once the guest has
/// drawn it (the flush is asynchronous all the way).
const PIXELS_LIMIT: Duration = Duration::from_secs(20);

/// The guest's pattern on head `head` (tests/guest/kmsfill.c; head 0's is
/// also tests/guest/fbfill.c's), as RGB.
fn pattern(head: u32, x: u32, y: u32) -> [u8; 3] {
    [
        ((x + 64 * head) & 0xff) as u8,
        ((y ^ (head * 0x55)) & 0xff) as u8,
        (((x >> 8) | ((y >> 8) << 4)) ^ (0xa5 + 0x3c * head)) as u8,
    ]
}

/// What the guest does and what the host checks.
struct Scenario {
    /// QEMU's `max_outputs` and gpu-reactor's `--outputs`.
    outputs: u32,
    /// `fbfill` (fbdev, head 0) or `kmsfill` (DRM/KMS, every head).
    program: &'static str,
}

/// One head through fbdev, as most guests first light up a display.
const ONE_HEAD: Scenario = Scenario {
    outputs: 1,
    program: "fbfill",
};

/// Two heads (`max_outputs=2`), each with its own pattern, set up by
/// DRM/KMS (fbdev drives only head 0).
const TWO_HEADS: Scenario = Scenario {
    outputs: 2,
    program: "kmsfill",
};

#[test]
fn linux_guest_pixels_through_gpu_reactor_and_qemu_contrib() {
    guest_pixels_through_both_backends(&ONE_HEAD);
}

/// `max_outputs=2`: the guest lights up both heads with KMS, each with its
/// own pattern and size, and QMP `screendump` of each head (`device`,
/// `head`) must show that head's pattern pixel for pixel, with both
/// backends (QEMU's contrib backend keeps up to 16 scanouts too).
#[test]
fn linux_guest_two_heads_through_gpu_reactor_and_qemu_contrib() {
    guest_pixels_through_both_backends(&TWO_HEADS);
}

fn guest_pixels_through_both_backends(scenario: &Scenario) {
    let started = Instant::now();
    let host = Host::find();
    let work = WorkDir::new("gpu-reactor-qemu-e2e");
    let initrd = build_initramfs(&host, work.path());
    let reactor = e2e_tests::gpu_reactor_binary();
    println!("kernel {} (modules {})", host.kernel.display(), host.kver);
    println!(
        "initramfs {} ({} bytes)",
        initrd.display(),
        fs::metadata(&initrd).unwrap().len()
    );
    println!("gpu-reactor {}", reactor.display());

    let ours = boot(
        &host,
        &initrd,
        &BackendKind::GpuReactor(reactor),
        &work.sub("gpu-reactor"),
        scenario,
    )
    .unwrap_or_else(|e| panic!("gpu-reactor: {e}"));
    ours.report("gpu-reactor");

    // (3) gpu-reactor itself saw the guest's 2D work: its command counters
    // (`--metrics`), or else its log.
    for what in ["TRANSFER_TO_HOST_2D", "RESOURCE_FLUSH"] {
        match &ours.metrics {
            Some(m) => {
                let n = command_count(m, what);
                assert!(
                    n > 0,
                    "gpu-reactor's metrics count no {what}:\n{m}\nlog:\n{}",
                    ours.backend_log
                );
            }
            None => assert!(
                ours.backend_log.contains(what),
                "gpu-reactor served no metrics and its log (RUST_LOG=gpu=debug) never mentions \
                 {what}:\n{}",
                ours.backend_log
            ),
        }
    }

    let theirs = boot(
        &host,
        &initrd,
        &BackendKind::Contrib,
        &work.sub("contrib"),
        scenario,
    )
    .unwrap_or_else(|e| panic!("QEMU's contrib vhost-user-gpu: {e}"));
    theirs.report("contrib vhost-user-gpu");

    // What the guest was told about its connectors (GET_DISPLAY_INFO, EDID):
    // gpu-reactor answers from the VMM's view it cached, QEMU's backend asks
    // QEMU each time; the guest must see the same.
    let connectors = |b: &Boot| -> Vec<String> {
        b.serial
            .lines()
            .filter(|l| l.starts_with("E2E-CONNECTOR") || l.starts_with("kmsfill: head"))
            .map(|l| l.trim_end().to_string())
            .collect()
    };
    assert_eq!(
        connectors(&ours),
        connectors(&theirs),
        "the guest saw different connectors with gpu-reactor and with QEMU's backend"
    );
    let screens = |b: &Boot| -> Vec<(u32, u32, u64)> {
        b.dumps
            .iter()
            .map(|d| (d.width, d.height, checksum(&d.rgb)))
            .collect()
    };
    assert_eq!(ours.dumps.len(), scenario.outputs as usize);
    assert_eq!(
        screens(&ours),
        screens(&theirs),
        "gpu-reactor and QEMU's backend showed different screens for the same guest work"
    );
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    work.passed();
}

// ---------------------------------------------------------------------------
// The guest's initramfs

fn build_initramfs(host: &Host, dir: &Path) -> PathBuf {
    // The guest programs, static.
    let programs = [
        (
            "fbfill",
            concat!(env!("CARGO_MANIFEST_DIR"), "/guest/fbfill.c"),
        ),
        (
            "kmsfill",
            concat!(env!("CARGO_MANIFEST_DIR"), "/guest/kmsfill.c"),
        ),
    ];
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, include_bytes!("../guest/init"));
    cpio.file("bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap());
    for (name, src) in programs {
        let bin = gcc(dir, name, src, &["-static"]);
        cpio.file(name, 0o755, &fs::read(bin).unwrap());
    }
    add_guest_modules(&mut cpio, &host.kver);
    let path = dir.join("initramfs.cpio.gz");
    gzip_to(&cpio.finish(), &path);
    path
}

// ---------------------------------------------------------------------------
// One boot

enum BackendKind {
    GpuReactor(PathBuf),
    Contrib,
}

struct Boot {
    serial: String,
    backend_log: String,
    /// A screendump per head, in head order.
    dumps: Vec<Ppm>,
    boot_to_ready: Duration,
    total: Duration,
    backend_exit: ExitStatus,
    /// gpu-reactor's Prometheus text, scraped once the pixels matched.
    metrics: Option<String>,
}

impl Boot {
    fn report(&self, name: &str) {
        println!("---- {name}: guest dmesg (virtio_gpu, drm, fb0)");
        for l in self.serial.lines().filter(|l| l.starts_with("E2E-DMESG")) {
            println!("  {}", l.trim_start_matches("E2E-DMESG ").trim_end());
        }
        for l in self.serial.lines() {
            if l.starts_with("E2E-DEV")
                || l.starts_with("E2E-CONNECTOR")
                || l.starts_with("fbfill:")
                || l.starts_with("kmsfill:")
            {
                println!("  {}", l.trim_end());
            }
        }
        for (head, d) in self.dumps.iter().enumerate() {
            println!(
                "---- {name}: head {head}: {}x{} screendump, checksum {:016x}",
                d.width,
                d.height,
                checksum(&d.rgb),
            );
        }
        println!(
            "---- {name}: pattern drawn {:.1} s after start, boot total {:.1} s, backend exit {}",
            self.boot_to_ready.as_secs_f64(),
            self.total.as_secs_f64(),
            self.backend_exit
        );
        if let Some(m) = &self.metrics {
            println!("---- {name}: commands counted by the backend (--metrics)");
            for l in m
                .lines()
                .filter(|l| l.starts_with("gpu_reactor_commands_total{"))
            {
                println!("  {l}");
            }
        }
    }
}

/// Starts the backend and QEMU, waits for the guest to draw, checks the
/// screendump against the pattern, stops both. Every failure carries the
/// logs.
fn boot(
    host: &Host,
    initrd: &Path,
    kind: &BackendKind,
    dir: &Path,
    scenario: &Scenario,
) -> Result<Boot, String> {
    let start = Instant::now();
    let deadline = start + BOOT_LIMIT;
    let files = BootFiles::in_dir(dir, usize::MAX);
    let logs = |what: &str| files.logs(what);

    // The backend, listening first.
    let metrics_addr = free_local_addr();
    let mut cmd = match kind {
        BackendKind::GpuReactor(bin) => {
            let mut c = Command::new(bin);
            c.arg("-s").arg(&files.sock).args(["--renderer", "2d"]);
            c.arg("--outputs").arg(scenario.outputs.to_string());
            c.arg("--metrics").arg(metrics_addr.to_string());
            c.env("RUST_LOG", "gpu=debug");
            c
        }
        BackendKind::Contrib => {
            let mut c = Command::new(CONTRIB);
            c.arg("-s").arg(&files.sock);
            c.env("G_MESSAGES_DEBUG", "all");
            c
        }
    };
    let mut backend = files.start_backend(&mut cmd)?;
    let mut qemu = files.start_qemu(
        host,
        512,
        scenario.outputs,
        initrd,
        &format!("e2e.prog={}", scenario.program),
    )?;
    let serial = &files.serial;

    // Until the guest has drawn (or something died): the size of each head.
    let heads: Vec<(u32, u32)> = loop {
        let text = fs::read_to_string(serial).unwrap_or_default();
        match drawn_heads(&text) {
            Ok(Some(heads)) => break heads,
            Ok(None) => {}
            Err(bad) => return Err(logs(&format!("bad line from the guest: {bad}"))),
        }
        for bad in [
            "FBFILL-FAILED",
            "KMSFILL-FAILED",
            "E2E-NO-FB0",
            "E2E-POWEROFF",
            "Kernel panic",
        ] {
            if let Some(l) = text.lines().find(|l| l.contains(bad)) {
                return Err(logs(&format!("the guest failed: {l}")));
            }
        }
        if let Some(st) = backend.exited() {
            return Err(logs(&format!(
                "the backend died while the guest booted: {st}"
            )));
        }
        if let Some(st) = qemu.exited() {
            return Err(logs(&format!("QEMU exited before the guest drew: {st}")));
        }
        if Instant::now() > deadline {
            return Err(logs("the guest did not draw within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let boot_to_ready = start.elapsed();
    if heads.len() != scenario.outputs as usize {
        return Err(logs(&format!(
            "the guest drew {} heads, the device has {}",
            heads.len(),
            scenario.outputs
        )));
    }

    // (1) the driver bound and /dev/fb0 exists.
    let text = fs::read_to_string(serial).unwrap_or_default();
    let bound = text
        .lines()
        .any(|l| l.contains("Initialized virtio_gpu") || l.contains("virtio_gpudrmfb"));
    if !bound || !text.lines().any(|l| l.trim_end() == "E2E-DEV /dev/fb0") {
        return Err(logs(
            "the guest's virtio_gpu driver did not bind or /dev/fb0 is missing",
        ));
    }

    // (2) the pixels of every head, through QMP screendump.
    let mut qmp = Qmp::connect(&files.qmp, deadline).map_err(|e| logs(&e))?;
    let mut dumps = Vec::new();
    for (head, &(w, h)) in heads.iter().enumerate() {
        let head = head as u32;
        let dump_path = dir.join(format!("screen-{head}.ppm"));
        let pixels_deadline = (Instant::now() + PIXELS_LIMIT).min(deadline);
        let dump = loop {
            let _ = fs::remove_file(&dump_path);
            qmp.execute(&format!(
                r#"{{"execute":"screendump","arguments":{{"filename":"{}","device":"gpu0","head":{head}}}}}"#,
                dump_path.display()
            ))
            .map_err(|e| logs(&format!("QMP screendump of head {head}: {e}")))?;
            let dump = Ppm::read(&dump_path)
                .map_err(|e| logs(&format!("screendump of head {head}: {e}")))?;
            match compare(&dump, head, w, h) {
                Ok(()) => break dump,
                Err(why) if Instant::now() > pixels_deadline => {
                    let keep = dir.join(format!("screen-{head}-mismatch.ppm"));
                    let _ = fs::rename(&dump_path, &keep);
                    return Err(logs(&format!(
                        "head {head} never showed the guest's pattern within {} s: {why} (last \
                         screendump kept in {})",
                        PIXELS_LIMIT.as_secs(),
                        keep.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
            if let Some(st) = backend.exited() {
                return Err(logs(&format!("the backend died: {st}")));
            }
        };
        dumps.push(dump);
    }

    let metrics = match kind {
        BackendKind::GpuReactor(_) => match scrape(metrics_addr) {
            Ok(m) => Some(m),
            Err(e) => {
                println!("no metrics from gpu-reactor ({e}); its log is checked instead");
                None
            }
        },
        BackendKind::Contrib => None,
    };

    // Stop QEMU, then the backend; both must go in time.
    let backend_exit = files.stop(qmp, &mut qemu, &mut backend)?;
    if matches!(kind, BackendKind::GpuReactor(_)) && !backend_exit.success() {
        return Err(logs(&format!(
            "gpu-reactor did not exit cleanly on SIGTERM: {backend_exit}"
        )));
    }
    Ok(Boot {
        serial: fs::read_to_string(serial).unwrap_or_default(),
        backend_log: fs::read_to_string(&files.backend_log).unwrap_or_default(),
        dumps,
        boot_to_ready,
        total: start.elapsed(),
        backend_exit,
        metrics,
    })
}

/// The heads the guest program says it drew, as (width, height) in head
/// order: `FBFILL-READY WxH` (fbfill, head 0), or `KMSFILL-HEAD h WxH` lines
/// and then `KMSFILL-READY n` (kmsfill). `Ok(None)`: not drawn yet;
/// `Err(line)`: a line that does not parse.
fn drawn_heads(serial: &str) -> Result<Option<Vec<(u32, u32)>>, String> {
    fn dims(d: &str) -> Option<(u32, u32)> {
        let (w, h) = d.split_once('x')?;
        Some((w.parse().ok()?, h.trim().parse().ok()?))
    }
    let lines = || serial.lines().map(str::trim_end);
    if let Some(l) = lines().find(|l| l.starts_with("FBFILL-READY")) {
        return match l.split_whitespace().nth(1).and_then(dims) {
            Some(d) => Ok(Some(vec![d])),
            None => Err(l.to_string()),
        };
    }
    let Some(ready) = lines().find(|l| l.starts_with("KMSFILL-READY")) else {
        return Ok(None);
    };
    let n: usize = ready
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ready.to_string())?;
    let mut heads = vec![None; n];
    for l in lines().filter(|l| l.starts_with("KMSFILL-HEAD ")) {
        let mut f = l.split_whitespace().skip(1);
        let head: Option<usize> = f.next().and_then(|h| h.parse().ok());
        match (head, f.next().and_then(dims)) {
            (Some(h), Some(d)) if h < n => heads[h] = Some(d),
            _ => return Err(l.to_string()),
        }
    }
    heads
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(Some)
        .ok_or_else(|| format!("{ready} without a KMSFILL-HEAD line for every head"))
}

/// Every pixel of `dump` against head `head`'s pattern in a `w`x`h` framebuffer.
fn compare(dump: &Ppm, head: u32, w: u32, h: u32) -> Result<(), String> {
    if (dump.width, dump.height) != (w, h) {
        return Err(format!(
            "screen is {}x{}, the guest's framebuffer {w}x{h}",
            dump.width, dump.height
        ));
    }
    let mut bad = 0usize;
    let mut first = String::new();
    for y in 0..h {
        for x in 0..w {
            let o = (y as usize * w as usize + x as usize) * 3;
            let got = &dump.rgb[o..o + 3];
            let want = pattern(head, x, y);
            if got != want {
                if bad < 5 {
                    write!(first, " ({x},{y}) {got:02x?} != {want:02x?};").unwrap();
                }
                bad += 1;
            }
        }
    }
    let expected: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| pattern(head, x, y)))
        .collect();
    if bad == 0 {
        assert_eq!(checksum(&dump.rgb), checksum(&expected));
        Ok(())
    } else {
        Err(format!("{bad} of {} pixels differ:{first}", w * h))
    }
}
