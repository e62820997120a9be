//! The real 3D guest: a Linux guest running the host's Mesa (virgl driver)
//! and GL clients, booted in QEMU 10 on a vhost-user GPU backend
//! (`tests/tests/guest3d.rs`; `bench guest3d` runs it against QEMU's own
//! `virtio-gpu-gl-pci` too).
//!
//! The initramfs holds busybox, the virtio_gpu modules, `tests/guest/init3d`,
//! `tests/guest/glclient.c` (built here, dynamically linked), kmscube,
//! glmark2-es2-drm, weston with `weston-simple-egl`, and every shared object
//! they and Mesa load, at the host's paths (the `ldd` closure plus what Mesa
//! and weston open by name: glvnd's vendor file and `libEGL_mesa`,
//! `dri/virtio_gpu_dri.so`, `gbm/dri_gbm.so`, weston's backend, renderer and
//! shell).

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::qemu::{
    add_guest_modules, free_local_addr, gcc, gzip_to, scrape, stat_fields, BootFiles, Cpio, Guard,
    Host, Ppm, Qmp, BUSYBOX,
};

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

/// What Mesa and glvnd open by name, beside the `ldd` closure.
const MESA_DLOPENED: &[&str] = &[
    "libEGL_mesa.so.0",
    "dri/virtio_gpu_dri.so",
    "gbm/dri_gbm.so",
];
const MESA_FILES: &[&str] = &["/usr/share/glvnd/egl_vendor.d/50_mesa.json"];
/// Clients no one here wrote (Debian packages): kmscube, glmark2, and
/// weston 14 (bookworm-backports) with its GL renderer on the DRM backend,
/// its desktop shell, `weston-simple-egl`, and seatd, the seat it opens its
/// devices through.
const CLIENTS: &[&str] = &[
    "/usr/bin/kmscube",
    "/usr/bin/glmark2-es2-drm",
    "/usr/bin/weston",
    "/usr/bin/weston-simple-egl",
    "/usr/libexec/weston-desktop-shell",
    "/usr/sbin/seatd",
];
/// What weston opens by name: its backend, renderer and shell.
const WESTON_DLOPENED: &[&str] = &[
    "libweston-14/drm-backend.so",
    "libweston-14/gl-renderer.so",
    "weston/desktop-shell.so",
];
/// Data directories the clients read: glmark2's models, shaders and
/// textures; the XKB keymaps weston compiles its keyboard's from.
const DATA_DIRS: &[&str] = &["/usr/share/glmark2", "/usr/share/X11/xkb"];

/// Builds the 3D guest's initramfs in `dir`.
pub fn build_image(host: &Host, dir: &Path) -> PathBuf {
    let glclient = gcc(
        dir,
        "glclient",
        concat!(env!("CARGO_MANIFEST_DIR"), "/guest/glclient.c"),
        &["-ldrm", "-lgbm", "-lEGL", "-lGLESv2"],
    );
    let mut cpio = Cpio::default();
    let mut tree = Tree::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "run"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", 0o755, include_bytes!("../guest/init3d"));
    cpio.file("bin/busybox", 0o755, &fs::read(BUSYBOX).unwrap());
    cpio.file("glclient", 0o755, &fs::read(&glclient).unwrap());

    let mut objects: Vec<PathBuf> = CLIENTS.iter().map(PathBuf::from).collect();
    objects.push(glclient.clone());
    let dlopened = || MESA_DLOPENED.iter().chain(WESTON_DLOPENED);
    for lib in dlopened() {
        let p = Path::new(LIBDIR).join(lib);
        assert!(
            p.exists(),
            "{} is missing: the 3D guest needs the host's Mesa and weston 14 (tests/run \
             installs them)",
            p.display()
        );
        objects.push(p);
    }
    for c in CLIENTS.iter().chain(DATA_DIRS) {
        assert!(
            Path::new(c).exists(),
            "{c} is missing (tests/run installs kmscube, glmark2-es2-drm, weston and seatd)"
        );
    }
    let closure = ldd_closure(&objects);
    let mut files: BTreeSet<PathBuf> = closure;
    files.extend(CLIENTS.iter().map(PathBuf::from));
    files.extend(MESA_FILES.iter().map(PathBuf::from));
    for lib in dlopened() {
        files.insert(Path::new(LIBDIR).join(lib));
    }
    files.remove(&glclient);
    let mut bytes = 0u64;
    for f in &files {
        bytes += tree.add(&mut cpio, f);
    }
    for d in DATA_DIRS {
        for f in walk(Path::new(d)) {
            bytes += tree.add(&mut cpio, &f);
        }
    }
    // The modules at /lib/modules, wherever /lib leads (after the
    // libraries made it).
    tree.real_dir(&mut cpio, Path::new("/lib/modules"));
    add_guest_modules(&mut cpio, &host.kver);
    println!(
        "3D guest: {} host files ({} MB) with glclient, kmscube, glmark2-es2-drm, weston \
         and Mesa",
        files.len(),
        bytes >> 20
    );
    let path = dir.join("initramfs3d.cpio.gz");
    gzip_to(&cpio.finish(), &path);
    path
}

/// Every shared object `objects` load, by `ldd` (recursively: what a
/// dlopened library needs too), with the dynamic loader.
fn ldd_closure(objects: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<PathBuf> = objects.to_vec();
    while let Some(o) = todo.pop() {
        let out = Command::new("ldd")
            .arg(&o)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run ldd");
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines() {
            // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next(),
                None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                let p = PathBuf::from(p);
                if seen.insert(p.clone()) {
                    todo.push(p);
                }
            }
        }
    }
    seen
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The archive's view of the host's tree: directories made, symlinks and
/// files added (by their path in the archive).
#[derive(Default)]
struct Tree {
    made: BTreeSet<PathBuf>,
}

impl Tree {
    /// Makes `dir` (a path without symlinks) and its parents.
    fn dir(&mut self, cpio: &mut Cpio, dir: &Path) {
        let mut at = PathBuf::new();
        for c in dir.components().skip(1) {
            at.push(c);
            if self.made.insert(at.clone()) {
                cpio.dir(&at.to_string_lossy());
            }
        }
    }

    /// Makes directory `dir` as on the host: each symlinked directory on
    /// the way as its symlink (`/lib64` → `usr/lib64`) beside the real
    /// one. Returns the real path.
    fn real_dir(&mut self, cpio: &mut Cpio, dir: &Path) -> PathBuf {
        let mut at = PathBuf::from("/");
        for c in dir.components().skip(1) {
            at.push(c);
            if let Ok(target) = fs::read_link(&at) {
                let rel = at.strip_prefix("/").unwrap().to_path_buf();
                let real =
                    fs::canonicalize(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()));
                self.dir(cpio, &real);
                if self.made.insert(rel.clone()) {
                    cpio.symlink(&rel.to_string_lossy(), &target.to_string_lossy());
                }
                at = real;
            }
        }
        self.dir(cpio, &at);
        at
    }

    /// `path` into the archive at the same place, as on the host: each
    /// symlinked directory on the way as its symlink (`/lib64` →
    /// `usr/lib64`), the file in its real directory, a symlinked file as
    /// its symlink and its target. Returns the bytes of file data added.
    fn add(&mut self, cpio: &mut Cpio, path: &Path) -> u64 {
        let at = self.real_dir(cpio, path.parent().unwrap_or(Path::new("/")));
        let Some(name) = path.file_name() else {
            return 0;
        };
        let real = at.join(name);
        let rel = real.strip_prefix("/").unwrap().to_path_buf();
        if !self.made.insert(rel.clone()) {
            return 0;
        }
        match fs::read_link(&real) {
            Ok(target) => {
                cpio.symlink(&rel.to_string_lossy(), &target.to_string_lossy());
                self.add(cpio, &at.join(&target))
            }
            Err(_) => {
                let data = fs::read(&real).unwrap_or_else(|e| panic!("{}: {e}", real.display()));
                cpio.file(&rel.to_string_lossy(), 0o755, &data);
                data.len() as u64
            }
        }
    }
}

/// The backend a 3D guest runs on.
pub enum Backend {
    /// `gpu-reactor --renderer virgl` on a vhost-user socket.
    GpuReactor {
        bin: PathBuf,
        /// `--render-workers`; `None`: the daemon's default.
        workers: Option<usize>,
    },
    /// QEMU's own `virtio-gpu-gl-pci` (virglrenderer in QEMU's main loop)
    /// on a GL display under Xvfb: the seed's system. Its screendump
    /// answers "no surface" for virgl scanouts, so heads are not
    /// screendumped; the guest's own read-backs still check every client.
    QemuGl,
}

/// An X server for QEMU's GL display, and its name (`:N`).
fn start_xvfb(dir: &Path) -> Result<(Guard, String), String> {
    let n = 50 + std::process::id() % 900;
    let name = format!(":{n}");
    let log = fs::File::create(dir.join("xvfb.log")).unwrap();
    let mut cmd = Command::new("Xvfb");
    cmd.arg(&name)
        .args([
            "-screen",
            "0",
            "1600x1200x24",
            "+extension",
            "GLX",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut x = Guard::spawn("Xvfb", &mut cmd)?;
    let sock = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(st) = x.exited() {
            let log = fs::read_to_string(dir.join("xvfb.log")).unwrap_or_default();
            return Err(format!("Xvfb {name} exited: {st}\n{log}"));
        }
        if Instant::now() > until {
            return Err(format!("Xvfb {name} did not listen within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((x, name))
}

/// What the guest runs (`tests/guest/init3d`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub run: &'static str,
    pub n: u32,
    pub secs: u32,
    /// QEMU's `max_outputs` and gpu-reactor's `--outputs`.
    pub outputs: u32,
    /// KMS heads whose last frame the host checks by screendump.
    pub kms_heads: u32,
}

/// One client's report (`GLCLIENT-JSON`).
#[derive(Debug, Clone, Default)]
pub struct ClientReport {
    pub id: i64,
    pub head: i64,
    pub frames: u64,
    pub fps: f64,
    pub finish_p50_us: f64,
    pub finish_p99_us: f64,
    pub max_gap_ms: f64,
    pub readbacks: u64,
    pub readback_errors: u64,
    pub flip_errors: u64,
}

impl ClientReport {
    fn parse(json: &str) -> Option<ClientReport> {
        let num = |k: &str| -> Option<f64> {
            let at = json.find(&format!("\"{k}\":"))? + k.len() + 3;
            let rest = &json[at..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            rest[..end].trim().parse().ok()
        };
        Some(ClientReport {
            id: num("id")? as i64,
            head: num("head")? as i64,
            frames: num("frames")? as u64,
            fps: num("fps")?,
            finish_p50_us: num("finish_p50_us")?,
            finish_p99_us: num("finish_p99_us")?,
            max_gap_ms: num("max_gap_ms")?,
            readbacks: num("readbacks")? as u64,
            readback_errors: num("readback_errors")? as u64,
            flip_errors: num("flip_errors")? as u64,
        })
    }
}

/// A head's last frame: the guest's hash of it and the screendump's.
#[derive(Debug, Clone)]
pub struct HeadCheck {
    pub head: u32,
    pub width: u32,
    pub height: u32,
    pub guest_fnv: u64,
    pub screen_fnv: u64,
}

/// What one boot showed.
pub struct Outcome {
    pub serial: String,
    pub backend_log: String,
    pub clients: Vec<ClientReport>,
    pub heads: Vec<HeadCheck>,
    /// `*ERROR*` lines in the guest kernel's log.
    pub kernel_errors: u64,
    /// Exit lines (`G3D-EXIT name status`) of every client.
    pub exits: Vec<(String, i32)>,
    pub metrics: Option<String>,
    /// Head 0 screendumped twice, 2 s apart, when the guest printed
    /// `G3D-SHOT` (weston's run).
    pub shots: Vec<Ppm>,
    /// QMP `query-status` round trips (ms), one per 100 ms of the run: how
    /// responsive QEMU's main loop stayed (QEMU's own virgl runs there).
    pub qmp_ms: Vec<f64>,
    /// How busy the guest's one vCPU (QEMU's TCG thread) was while the
    /// clients rendered (from `G3D-RUN` to the first client's report), as
    /// a fraction of that time: near 1, the guest's CPU bounds the frame
    /// rates whatever the backend does.
    pub vcpu_busy: Option<f64>,
    /// How busy the host's CPUs were over the same time (all of them: 1
    /// is every core busy), from /proc/stat.
    pub host_busy: Option<f64>,
    /// The render worker the host killed when the guest printed
    /// `G3D-KILL-WORKER` (the faults run).
    pub killed_worker: Option<KilledWorker>,
    pub elapsed: Duration,
}

/// A render worker killed from the host: the one of the backend's workers
/// that used the most CPU over a second.
#[derive(Debug, Clone, Copy)]
pub struct KilledWorker {
    pub pid: u32,
    /// Its CPU time over that second, in clock ticks, and the next
    /// busiest worker's.
    pub ticks: u64,
    pub next_ticks: u64,
}

impl Outcome {
    /// Lines of the backend's log that report a virgl context error.
    pub fn context_errors(&self) -> Vec<&str> {
        self.backend_log
            .lines()
            .filter(|l| l.contains("context error") || l.contains("Illegal"))
            .collect()
    }

    pub fn serial_lines(&self, prefix: &str) -> Vec<&str> {
        self.serial
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::trim_end)
            .collect()
    }
}

/// Boots the guest on `backend`, waits for it to finish `plan` (bounded by
/// `limit`), checks each KMS head's screendump against the guest's hash of
/// its last frame while the client holds it, and stops everything.
pub fn run(
    host: &Host,
    initrd: &Path,
    backend: &Backend,
    plan: &Plan,
    dir: &Path,
    limit: Duration,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let deadline = start + limit;
    fs::create_dir_all(dir).unwrap();
    let files = BootFiles::in_dir(dir, 150);
    let logs = |what: &str| files.logs(what);

    let metrics_addr = free_local_addr();
    // KMS clients hold their last frame this long for the screendump.
    let screendumps = matches!(backend, Backend::GpuReactor { .. });
    let hold = if plan.kms_heads > 0 && screendumps {
        20
    } else {
        0
    };
    let append = format!(
        "quiet loglevel=4 g3d.run={} g3d.n={} g3d.secs={} g3d.hold={hold}",
        plan.run, plan.n, plan.secs
    );
    // `backend_proc`: what runs beside QEMU and stops after it (the
    // backend, or QEMU's X server).
    let (mut backend_proc, mut qemu) = match backend {
        Backend::GpuReactor { bin, workers } => {
            let mut c = Command::new(bin);
            c.arg("-s").arg(&files.sock).args(["--renderer", "virgl"]);
            c.arg("--outputs").arg(plan.outputs.to_string());
            c.arg("--metrics").arg(metrics_addr.to_string());
            if let Some(w) = workers {
                c.arg("--render-workers").arg(w.to_string());
            }
            c.env("RUST_LOG", "warn");
            let b = files.start_backend(&mut c)?;
            let q = files.start_qemu(host, 2048, plan.outputs, initrd, &append)?;
            (b, q)
        }
        Backend::QemuGl => {
            let (x, name) = start_xvfb(dir).map_err(|e| logs(&e))?;
            let q = files.start_qemu_gl(host, 2048, plan.outputs, &name, initrd, &append)?;
            (x, q)
        }
    };
    let serial = &files.serial;
    let mut qmp = Qmp::connect(&files.qmp, deadline).map_err(|e| logs(&e))?;

    let mut heads: Vec<HeadCheck> = Vec::new();
    let mut shots: Vec<Ppm> = Vec::new();
    let mut qmp_ms = Vec::new();
    let mut killed_worker = None;
    // At G3D-RUN: the vCPU's ticks, the host's, and when.
    let mut floors_from = None;
    let mut floors_taken = false;
    let (mut vcpu_busy, mut host_busy) = (None, None);
    loop {
        // Not an error when it fails: QEMU quits once the guest powers
        // off, which the checks below see.
        let asked = Instant::now();
        if qmp.execute(r#"{"execute":"query-status"}"#).is_ok() {
            qmp_ms.push(asked.elapsed().as_secs_f64() * 1e3);
        }
        let text = fs::read_to_string(serial).unwrap_or_default();
        // The floors, sampled before any screendump below (the end is when
        // the first client reports, before a KMS client's hold).
        if floors_from.is_none() && text.lines().any(|l| l.starts_with("G3D-RUN")) {
            floors_from = Some((vcpu_ticks(qemu.child.id()), host_ticks(), Instant::now()));
        }
        if let Some((vcpu0, host0, at)) = floors_from.filter(|_| !floors_taken) {
            if text.lines().any(|l| l.starts_with("GLCLIENT-JSON")) {
                floors_taken = true;
                // SAFETY: sysconf takes a constant and reads no memory.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
                let secs = at.elapsed().as_secs_f64();
                vcpu_busy = vcpu0
                    .zip(vcpu_ticks(qemu.child.id()))
                    .map(|(t0, t1)| t1.saturating_sub(t0) as f64 / hz / secs);
                host_busy = host0
                    .zip(host_ticks())
                    .map(|((busy0, all0), (busy1, all1))| {
                        busy1.saturating_sub(busy0) as f64 / all1.saturating_sub(all0).max(1) as f64
                    });
            }
        }
        // Each KMS head, once its client has printed its last frame's hash
        // (it holds that frame on screen for `hold` seconds).
        for l in text.lines().filter(|l| l.starts_with("GLCLIENT-HASH ")) {
            let Some(h) = parse_hash(l) else {
                return Err(logs(&format!("bad line from the guest: {l}")));
            };
            if heads.iter().any(|c| c.head == h.head) {
                continue;
            }
            if screendumps {
                heads.push(screen_check(&mut qmp, dir, h, &logs)?);
            } else {
                heads.push(h);
            }
        }
        if shots.is_empty() && text.lines().any(|l| l.starts_with("G3D-SHOT")) {
            for k in 0..2 {
                if k > 0 {
                    std::thread::sleep(Duration::from_secs(2));
                }
                shots.push(screendump(
                    &mut qmp,
                    &dir.join(format!("shot-{k}.ppm")),
                    0,
                    &logs,
                )?);
            }
        }
        if killed_worker.is_none() && text.lines().any(|l| l.starts_with("G3D-KILL-WORKER")) {
            killed_worker =
                Some(kill_busiest_worker(backend_proc.child.id()).map_err(|e| logs(&e))?);
        }
        if text.lines().any(|l| l.starts_with("G3D-DONE")) {
            break;
        }
        for bad in ["G3D-FAILED", "Kernel panic"] {
            if let Some(l) = text.lines().find(|l| l.contains(bad)) {
                return Err(logs(&format!("the guest failed: {l}")));
            }
        }
        if let Some(st) = backend_proc.exited() {
            return Err(logs(&format!("the backend died under the guest: {st}")));
        }
        if let Some(st) = qemu.exited() {
            return Err(logs(&format!(
                "QEMU exited before the guest was done: {st}"
            )));
        }
        if Instant::now() > deadline {
            return Err(logs(&format!(
                "the guest was not done within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = screendumps.then(|| scrape(metrics_addr).ok()).flatten();
    if let Some(m) = &metrics {
        // Beside the logs, for whoever reads a run's directory.
        let _ = fs::write(dir.join("metrics.txt"), m);
    }
    match files.stop(qmp, &mut qemu, &mut backend_proc)? {
        st if st.success() => {}
        st => return Err(logs(&format!("the backend's exit after SIGTERM: {st}"))),
    }
    let serial_text = fs::read_to_string(serial).unwrap_or_default();
    let mut clients = Vec::new();
    for l in serial_text.lines() {
        if let Some(json) = l.trim_end().strip_prefix("GLCLIENT-JSON ") {
            clients.push(
                ClientReport::parse(json)
                    .ok_or_else(|| logs(&format!("bad client report: {json}")))?,
            );
        }
    }
    let exits = serial_text
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("G3D-EXIT ")?.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect();
    let kernel_errors = serial_text
        .lines()
        .find_map(|l| l.strip_prefix("G3D-KERNEL-ERRORS "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| logs("the guest did not report its kernel errors"))?;
    Ok(Outcome {
        serial: serial_text,
        backend_log: fs::read_to_string(&files.backend_log).unwrap_or_default(),
        clients,
        heads,
        kernel_errors,
        exits,
        metrics,
        shots,
        qmp_ms,
        vcpu_busy,
        host_busy,
        killed_worker,
        elapsed: start.elapsed(),
    })
}

/// The render workers under `daemon`.
fn render_workers(daemon: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_worker_of(pid, daemon))
        .collect()
}

/// Whether `pid` is a render worker of `daemon`: its launcher's child, a
/// process whose first argument is `--render-worker` and whose parent's
/// parent is `daemon`.
fn is_worker_of(pid: u32, daemon: u32) -> bool {
    let ppid = |pid: u32| -> Option<u32> {
        stat_fields(Path::new(&format!("/proc/{pid}/stat")))?
            .get(1)?
            .parse()
            .ok()
    };
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    cmdline.split(|b| *b == 0).nth(1) == Some(b"--render-worker".as_slice())
        && ppid(pid).and_then(ppid) == Some(daemon)
}

/// The CPU time of QEMU's vCPU thread (`CPU 0/TCG`), in clock ticks.
fn vcpu_ticks(qemu: u32) -> Option<u64> {
    fs::read_dir(format!("/proc/{qemu}/task"))
        .ok()?
        .flatten()
        .find(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == "CPU 0/TCG")
        })
        .and_then(|t| ticks_of(&t.path().join("stat")))
}

/// The host's CPU time (all cores, clock ticks): busy (all but idle and
/// iowait) and in all.
fn host_ticks() -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let all: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4)?;
    Some((all - idle, all))
}

/// A process's CPU time (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    ticks_of(Path::new(&format!("/proc/{pid}/stat")))
}

/// utime + stime of a `/proc/.../stat` file.
fn ticks_of(path: &Path) -> Option<u64> {
    let f = stat_fields(path)?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A pidfd of `pid` if, once opened, it is still a render worker of
/// `daemon` (the pid could have been reused between the scan and the open;
/// from the open on, the pidfd names that one process).
fn worker_pidfd(pid: u32, daemon: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1; checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just made for us, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    is_worker_of(pid, daemon).then_some(fd)
}

/// SIGKILLs the render worker of `daemon` that used the most CPU over one
/// second: a worker whose context is rendering, not an idle one. The
/// signal goes through a pidfd opened before the sampling, so it reaches
/// that worker or, if it is gone, no one.
fn kill_busiest_worker(daemon: u32) -> Result<KilledWorker, String> {
    let workers: Vec<(u32, OwnedFd)> = render_workers(daemon)
        .into_iter()
        .filter_map(|p| Some((p, worker_pidfd(p, daemon)?)))
        .collect();
    if workers.is_empty() {
        return Err(format!(
            "no render workers under the backend (pid {daemon})"
        ));
    }
    let before: Vec<Option<u64>> = workers.iter().map(|(p, _)| cpu_ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut used: Vec<(u64, usize)> = workers
        .iter()
        .zip(before)
        .enumerate()
        .filter_map(|(i, ((p, _), b))| Some((cpu_ticks(*p)?.saturating_sub(b?), i)))
        .collect();
    used.sort_unstable_by(|a, b| b.cmp(a));
    let Some(&(ticks, i)) = used.first() else {
        return Err("the render workers went away while sampled".into());
    };
    let (pid, fd) = &workers[i];
    // SAFETY: pidfd_send_signal on a pidfd we own, a signal number, no
    // siginfo (null) and no flags; the result is checked.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "kill -9 {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(KilledWorker {
        pid: *pid,
        ticks,
        next_ticks: used.get(1).map_or(0, |u| u.0),
    })
}

/// `GLCLIENT-HASH id=C head=H WxH fnv=X`.
fn parse_hash(l: &str) -> Option<HeadCheck> {
    let mut head = None;
    let mut dims = None;
    let mut fnv = None;
    for f in l.split_whitespace().skip(1) {
        if let Some(h) = f.strip_prefix("head=") {
            head = h.parse().ok();
        } else if let Some(x) = f.strip_prefix("fnv=") {
            fnv = u64::from_str_radix(x, 16).ok();
        } else if let Some((w, h)) = f.split_once('x') {
            dims = Some((w.parse().ok()?, h.parse().ok()?));
        }
    }
    let (width, height) = dims?;
    Some(HeadCheck {
        head: head?,
        width,
        height,
        guest_fnv: fnv?,
        screen_fnv: 0,
    })
}

/// QMP `screendump` of `head` into `path`, read back.
fn screendump(
    qmp: &mut Qmp,
    path: &Path,
    head: u32,
    logs: &dyn Fn(&str) -> String,
) -> Result<Ppm, String> {
    let _ = fs::remove_file(path);
    qmp.execute(&format!(
        r#"{{"execute":"screendump","arguments":{{"filename":"{}","device":"gpu0","head":{}}}}}"#,
        path.display(),
        head
    ))
    .map_err(|e| logs(&format!("QMP screendump of head {head}: {e}")))?;
    Ppm::read(path).map_err(|e| logs(&format!("screendump: {e}")))
}

/// Screendumps `h.head` until it shows the guest's last frame (at most 10 s:
/// the client holds it for 20).
fn screen_check(
    qmp: &mut Qmp,
    dir: &Path,
    mut h: HeadCheck,
    logs: &dyn Fn(&str) -> String,
) -> Result<HeadCheck, String> {
    let path = dir.join(format!("screen-{}.ppm", h.head));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let dump = screendump(qmp, &path, h.head, logs)?;
        h.screen_fnv = crate::qemu::checksum(&dump.rgb);
        let same_size = (dump.width, dump.height) == (h.width, h.height);
        if same_size && h.screen_fnv == h.guest_fnv {
            return Ok(h);
        }
        if Instant::now() > until {
            let keep = dir.join(format!("screen-{}-mismatch.ppm", h.head));
            let _ = fs::rename(&path, &keep);
            println!(
                "head {}: screen {}x{} fnv {:016x}, guest's last frame {}x{} fnv {:016x} \
                 (kept in {}); first pixels {:02x?}",
                h.head,
                dump.width,
                dump.height,
                h.screen_fnv,
                h.width,
                h.height,
                h.guest_fnv,
                keep.display(),
                &dump.rgb[..dump.rgb.len().min(12)]
            );
            return Ok(h);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
