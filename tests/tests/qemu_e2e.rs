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
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A whole boot, from starting the backend to QEMU's exit.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long the screendump may take to show the pattern once the guest has
/// drawn it (the flush is asynchronous all the way).
const PIXELS_LIMIT: Duration = Duration::from_secs(20);
/// Backend socket, QEMU exit, backend exit.
const SHORT_LIMIT: Duration = Duration::from_secs(10);

const CONTRIB: &str = "/usr/lib/qemu/vhost-user-gpu";
const QEMU: &str = "qemu-system-x86_64";
const BUSYBOX: &str = "/bin/busybox";
/// The virtio_gpu driver and its PCI transport; their dependencies are
/// read from modules.dep.
const GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_gpu"];

const INSTALL_HINT: &str = "run `tests/run` as root (or with sudo): it installs QEMU 10 \
     (`apt-get install -y -t bookworm-backports qemu-system-x86 qemu-system-gui`, after adding \
     the bookworm-backports source) and `apt-get install -y linux-image-amd64 busybox-static \
     libdrm-dev gcc`";

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
    let work = WorkDir::new();
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
// What the host must have

struct Host {
    qemu: PathBuf,
    kernel: PathBuf,
    kver: String,
}

impl Host {
    /// The tools and files the test needs, or a failure naming the command
    /// that installs them.
    fn find() -> Self {
        let mut missing = Vec::new();
        let qemu = which(QEMU);
        match &qemu {
            None => missing.push(format!("{QEMU} (not on PATH)")),
            Some(q) => match qemu_major(q) {
                Some(v) if v >= 10 => {}
                Some(v) => missing.push(format!(
                    "QEMU 10 ({} is QEMU {v}, which refuses vhost-user-gpu-pci without KVM)",
                    q.display()
                )),
                None => missing.push(format!(
                    "a working {QEMU} ({} --version failed)",
                    q.display()
                )),
            },
        }
        if !Path::new(CONTRIB).exists() {
            missing.push(format!("{CONTRIB} (qemu-system-gui)"));
        }
        if !Path::new(BUSYBOX).exists() {
            missing.push(format!("{BUSYBOX} (busybox-static)"));
        }
        if which("gcc").is_none() {
            missing.push("gcc".into());
        }
        if !Path::new("/usr/include/libdrm/drm_mode.h").exists() {
            missing.push("/usr/include/libdrm/drm_mode.h (libdrm-dev)".into());
        }
        if which("gzip").is_none() {
            missing.push("gzip".into());
        }
        let kernel = find_kernel();
        if kernel.is_none() {
            missing.push(
                "a kernel /boot/vmlinuz-<ver> with /lib/modules/<ver>/modules.dep (linux-image-amd64)"
                    .into(),
            );
        }
        assert!(
            missing.is_empty(),
            "the QEMU end-to-end test needs: {}.\nTo install them, {INSTALL_HINT}.",
            missing.join(", ")
        );
        let (kernel, kver) = kernel.unwrap();
        Host {
            qemu: qemu.unwrap(),
            kernel,
            kver,
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qemu_major(qemu: &Path) -> Option<u32> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.split("version ").nth(1)?;
    v.split('.').next()?.trim().parse().ok()
}

/// The newest `/boot/vmlinuz-<ver>` that has its modules installed.
fn find_kernel() -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&ver)
                .join("modules.dep")
                .exists()
                .then(|| (Path::new("/boot").join(&name), ver))
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.1));
    found.pop()
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
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
    for (name, src) in programs {
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-I/usr/include/libdrm", "-o"])
            .arg(dir.join(name))
            .arg(src)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run gcc");
        assert!(
            out.status.success(),
            "gcc -static {src} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, include_bytes!("../guest/init"));
    cpio.file("bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap());
    for (name, _) in programs {
        cpio.file(name, 0o755, &fs::read(dir.join(name)).unwrap());
    }

    let mut list = String::new();
    for module in guest_modules(&host.kver) {
        let name = module_name(&module);
        let ko = format!("{}.ko", name);
        cpio.file(&format!("lib/modules/{ko}"), 0o644, &read_module(&module));
        writeln!(list, "{ko}").unwrap();
    }
    println!(
        "guest modules, in load order: {}",
        list.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    cpio.file("modules.list", 0o644, list.as_bytes());

    let raw = cpio.finish();
    let path = dir.join("initramfs.cpio.gz");
    let file = fs::File::create(&path).unwrap();
    let mut gzip = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .expect("cannot run gzip");
    gzip.stdin.take().unwrap().write_all(&raw).unwrap();
    assert!(gzip.wait().unwrap().success(), "gzip failed");
    path
}

/// The module files (absolute paths) to load, dependencies first, from
/// `/lib/modules/<ver>/modules.dep`. Built-in modules are left out.
fn guest_modules(kver: &str) -> Vec<PathBuf> {
    let root = Path::new("/lib/modules").join(kver);
    let dep = fs::read_to_string(root.join("modules.dep")).expect("modules.dep");
    let builtin = fs::read_to_string(root.join("modules.builtin")).unwrap_or_default();
    let deps: Vec<(String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let lookup = |wanted: &str| -> Option<&(String, Vec<String>)> {
        let want = wanted.replace('-', "_");
        deps.iter()
            .find(|(m, _)| module_name(Path::new(m)).replace('-', "_") == want)
    };
    fn visit(path: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>, depth: usize) {
        assert!(depth < 64, "module dependency loop at {path}");
        if out.iter().any(|p| p == path) {
            return;
        }
        if let Some((_, d)) = deps.iter().find(|(m, _)| m == path) {
            // modules.dep lists the deepest dependencies last.
            for p in d.iter().rev() {
                visit(p, deps, out, depth + 1);
            }
        }
        out.push(path.to_string());
    }
    let mut order = Vec::new();
    for wanted in GUEST_MODULES {
        match lookup(wanted) {
            Some((m, _)) => visit(m, &deps, &mut order, 0),
            None => {
                let w = wanted.replace('_', "-");
                let is_builtin = builtin.lines().any(|l| {
                    let n = module_name(Path::new(l));
                    n == *wanted || n == w
                });
                assert!(
                    is_builtin,
                    "module {wanted} is in neither modules.dep nor modules.builtin of {kver}"
                );
            }
        }
    }
    order.into_iter().map(|m| root.join(m)).collect()
}

/// `kernel/drivers/virtio/virtio_pci.ko.xz` → `virtio_pci`.
fn module_name(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(".ko").next().unwrap().to_string()
}

/// A module as an uncompressed .ko (busybox insmod takes nothing else).
fn read_module(path: &Path) -> Vec<u8> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        Some("xz")
    } else if name.ends_with(".ko.zst") {
        Some("zstd")
    } else if name.ends_with(".ko.gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).unwrap_or_else(|e| panic!("{name}: {e}")),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {tool} to decompress {name}: {e}"));
            assert!(out.status.success(), "{tool} -d {name} failed");
            out.stdout
        }
    }
}

/// A newc cpio archive (what the kernel's initramfs unpacker reads).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            write!(self.out, "{f:08x}").unwrap();
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
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

/// `gpu_reactor_commands_total{type="<what>"} N` in a metrics text.
fn command_count(metrics: &str, what: &str) -> u64 {
    let key = format!("gpu_reactor_commands_total{{type=\"{what}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// GET /metrics from gpu-reactor's `--metrics` endpoint (bounded waits).
fn scrape(addr: std::net::SocketAddr) -> Result<String, String> {
    use std::net::TcpStream;
    let mut s =
        TcpStream::connect_timeout(&addr, SHORT_LIMIT).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(SHORT_LIMIT)).unwrap();
    s.set_write_timeout(Some(SHORT_LIMIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("{addr}: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!("{addr}: unexpected answer: {resp}")),
    }
}

/// A free TCP port on the loopback for `--metrics`.
fn free_local_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap()
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
    let sock = dir.join("gpu.sock");
    let serial = dir.join("serial.log");
    let qmp_path = dir.join("qmp.sock");
    let backend_log = dir.join("backend.log");
    let qemu_log = dir.join("qemu.log");

    let logs = |what: &str| -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
        format!(
            "{what}\n==== serial console ({})\n{}\n==== backend log ({})\n{}\n==== QEMU log ({})\n{}",
            serial.display(),
            read(&serial),
            backend_log.display(),
            read(&backend_log),
            qemu_log.display(),
            read(&qemu_log)
        )
    };

    // The backend, listening first.
    let blog = fs::File::create(&backend_log).unwrap();
    let metrics_addr = free_local_addr();
    let mut cmd = match kind {
        BackendKind::GpuReactor(bin) => {
            let mut c = Command::new(bin);
            c.arg("-s").arg(&sock).args(["--renderer", "2d"]);
            c.arg("--outputs").arg(scenario.outputs.to_string());
            c.arg("--metrics").arg(metrics_addr.to_string());
            c.env("RUST_LOG", "gpu=debug");
            c
        }
        BackendKind::Contrib => {
            let mut c = Command::new(CONTRIB);
            c.arg("-s").arg(&sock);
            c.env("G_MESSAGES_DEBUG", "all");
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(blog.try_clone().unwrap())
        .stderr(blog);
    let mut backend = Guard::spawn("backend", &mut cmd).map_err(|e| logs(&e))?;
    let sock_deadline = Instant::now() + SHORT_LIMIT;
    while !sock.exists() {
        if let Some(st) = backend.exited() {
            return Err(logs(&format!("the backend exited before listening: {st}")));
        }
        if Instant::now() > sock_deadline {
            return Err(logs("the backend did not create its socket within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // QEMU, as in README.md "Use with QEMU".
    let qlog = fs::File::create(&qemu_log).unwrap();
    let mut cmd = Command::new(&host.qemu);
    cmd.args(["-accel", "tcg", "-m", "512", "-nodefaults", "-vga", "none"])
        .args(["-display", "none", "-no-reboot"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=vgpu,path={}", sock.display()))
        .arg("-device")
        .arg(format!(
            "vhost-user-gpu-pci,chardev=vgpu,id=gpu0,max_outputs={}",
            scenario.outputs
        ))
        .arg("-chardev")
        .arg(format!("file,id=ser0,path={}", serial.display()))
        .args(["-serial", "chardev:ser0"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .arg("-kernel")
        .arg(&host.kernel)
        .arg("-initrd")
        .arg(initrd)
        // no_timer_check: on TCG under load the kernel's IO-APIC timer check
        // can miss its ticks and panic ("IO-APIC + timer doesn't work!").
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 no_timer_check e2e.prog={}",
            scenario.program
        ))
        .stdin(Stdio::null())
        .stdout(qlog.try_clone().unwrap())
        .stderr(qlog);
    let mut qemu = Guard::spawn("qemu", &mut cmd).map_err(|e| logs(&e))?;

    // Until the guest has drawn (or something died): the size of each head.
    let heads: Vec<(u32, u32)> = loop {
        let text = fs::read_to_string(&serial).unwrap_or_default();
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
    let text = fs::read_to_string(&serial).unwrap_or_default();
    let bound = text
        .lines()
        .any(|l| l.contains("Initialized virtio_gpu") || l.contains("virtio_gpudrmfb"));
    if !bound || !text.lines().any(|l| l.trim_end() == "E2E-DEV /dev/fb0") {
        return Err(logs(
            "the guest's virtio_gpu driver did not bind or /dev/fb0 is missing",
        ));
    }

    // (2) the pixels of every head, through QMP screendump.
    let mut qmp = Qmp::connect(&qmp_path, deadline).map_err(|e| logs(&e))?;
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
            match dump.compare(head, w, h) {
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
    let _ = qmp.execute(r#"{"execute":"quit"}"#);
    drop(qmp);
    if qemu.wait_exit(SHORT_LIMIT).is_none() {
        return Err(logs("QEMU did not quit within 10 s"));
    }
    backend.terminate();
    let backend_exit = match backend.wait_exit(SHORT_LIMIT) {
        Some(st) => st,
        None => return Err(logs("the backend did not exit within 10 s of SIGTERM")),
    };
    if matches!(kind, BackendKind::GpuReactor(_)) && !backend_exit.success() {
        return Err(logs(&format!(
            "gpu-reactor did not exit cleanly on SIGTERM: {backend_exit}"
        )));
    }
    Ok(Boot {
        serial: fs::read_to_string(&serial).unwrap_or_default(),
        backend_log: fs::read_to_string(&backend_log).unwrap_or_default(),
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

/// A child process that is killed (and reaped) when dropped.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self, String> {
        cmd.spawn()
            .map(|child| Guard { name, child })
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited().is_none() {
            eprintln!("killing {} (pid {})", self.name, self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A QMP client with bounded waits.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, deadline: Instant) -> Result<Self, String> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot connect to QMP at {}: {e}", path.display()))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(SHORT_LIMIT)).unwrap();
        stream.set_write_timeout(Some(SHORT_LIMIT)).unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.line()?;
        if !greeting.contains("\"QMP\"") {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Sends one command; its `return` line (events are skipped).
    fn execute(&mut self, cmd: &str) -> Result<String, String> {
        self.writer
            .write_all(format!("{cmd}\n").as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let l = self.line()?;
            if l.contains("\"return\"") {
                return Ok(l);
            }
            if l.contains("\"error\"") {
                return Err(format!("{cmd} -> {}", l.trim_end()));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Pixels

/// A binary PPM (P6, maxval 255) as QEMU's screendump writes it.
struct Ppm {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Ppm {
    fn read(path: &Path) -> Result<Self, String> {
        let mut bytes = Vec::new();
        fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Header: "P6" ws width ws height ws maxval, one whitespace, data.
        let mut fields = Vec::new();
        let mut i = 0;
        while fields.len() < 4 {
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let s = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if s == i {
                return Err("truncated PPM header".into());
            }
            fields.push(String::from_utf8_lossy(&bytes[s..i]).into_owned());
        }
        i += 1;
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| format!("bad PPM header field {s:?}"))
        };
        if fields[0] != "P6" || num(&fields[3])? != 255 {
            return Err(format!("not a P6/255 PPM: {fields:?}"));
        }
        let (width, height) = (num(&fields[1])?, num(&fields[2])?);
        let len = width as usize * height as usize * 3;
        let rgb = bytes.get(i..i + len).ok_or("truncated PPM data")?.to_vec();
        Ok(Ppm { width, height, rgb })
    }

    /// Every pixel against head `head`'s pattern in a `w`x`h` framebuffer.
    fn compare(&self, head: u32, w: u32, h: u32) -> Result<(), String> {
        if (self.width, self.height) != (w, h) {
            return Err(format!(
                "screen is {}x{}, the guest's framebuffer {w}x{h}",
                self.width, self.height
            ));
        }
        let mut bad = 0usize;
        let mut first = String::new();
        for y in 0..h {
            for x in 0..w {
                let o = (y as usize * w as usize + x as usize) * 3;
                let got = &self.rgb[o..o + 3];
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
            assert_eq!(checksum(&self.rgb), checksum(&expected));
            Ok(())
        } else {
            Err(format!("{bad} of {} pixels differ:{first}", w * h))
        }
    }
}

/// FNV-1a, 64 bits.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Scratch space: removed after a pass, kept (and named) after a failure.

struct WorkDir {
    path: PathBuf,
    passed: bool,
}

impl WorkDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("gpu-reactor-qemu-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        WorkDir {
            path,
            passed: false,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.passed {
            let _ = fs::remove_dir_all(&self.path);
        } else {
            eprintln!(
                "logs, initramfs and screendumps kept in {}",
                self.path.display()
            );
        }
    }
}
