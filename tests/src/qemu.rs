//! What the real-guest tests share (`tests/tests/qemu_e2e.rs`,
//! `tests/tests/guest3d.rs`) and `bench guest3d`: the host's QEMU and
//! kernel, a newc initramfs with the virtio_gpu modules, child processes
//! killed on every path, a QMP client, screendumps, scratch directories.
//! Every wait is bounded.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Socket, QMP and process-exit waits.
pub const SHORT_LIMIT: Duration = Duration::from_secs(10);
/// How long a backend may take to listen: a virgl daemon starts its
/// launcher and one render worker under its filter first (Mesa's start,
/// seconds on a loaded machine).
pub const BACKEND_START_LIMIT: Duration = Duration::from_secs(60);
pub const CONTRIB: &str = "/usr/lib/qemu/vhost-user-gpu";
pub const QEMU: &str = "qemu-system-x86_64";
pub const BUSYBOX: &str = "/bin/busybox";
/// The virtio_gpu driver and its PCI transport; their dependencies are
/// read from modules.dep.
pub const GUEST_MODULES: &[&str] = &["virtio_pci", "virtio_gpu"];

const INSTALL_HINT: &str = "run `tests/run` as root (or with sudo): it installs QEMU 10 \
     (`apt-get install -y -t bookworm-backports qemu-system-x86 qemu-system-gui`, after adding \
     the bookworm-backports source) and `apt-get install -y linux-image-amd64 busybox-static \
     libdrm-dev gcc`";

pub struct Host {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub kver: String,
}

impl Host {
    /// The tools and files the test needs, or a failure naming the command
    /// that installs them.
    pub fn find() -> Self {
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

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

pub fn qemu_major(qemu: &Path) -> Option<u32> {
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
pub fn find_kernel() -> Option<(PathBuf, String)> {
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

/// The module files (absolute paths) to load, dependencies first, from
/// `/lib/modules/<ver>/modules.dep`. Built-in modules are left out.
pub fn guest_modules(kver: &str) -> Vec<PathBuf> {
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
    pub fn visit(path: &str, deps: &[(String, Vec<String>)], out: &mut Vec<String>, depth: usize) {
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
pub fn module_name(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.split(".ko").next().unwrap().to_string()
}

/// A module as an uncompressed .ko (busybox insmod takes nothing else).
pub fn read_module(path: &Path) -> Vec<u8> {
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
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
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

    pub fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

/// `gpu_reactor_commands_total{type="<what>"} N` in a metrics text.
pub fn command_count(metrics: &str, what: &str) -> u64 {
    let key = format!("gpu_reactor_commands_total{{type=\"{what}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// GET /metrics from gpu-reactor's `--metrics` endpoint (bounded waits).
pub fn scrape(addr: std::net::SocketAddr) -> Result<String, String> {
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
pub fn free_local_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap()
}

/// Starts the backend and QEMU, waits for the guest to draw, checks the
/// screendump against the pattern, stops both. Every failure carries the
/// A child process that is killed (and reaped) when dropped.
pub struct Guard {
    name: &'static str,
    pub child: Child,
}

impl Guard {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self, String> {
        cmd.spawn()
            .map(|child| Guard { name, child })
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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

    pub fn terminate(&mut self) {
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
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path, deadline: Instant) -> Result<Self, String> {
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

    pub fn line(&mut self) -> Result<String, String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => Err("QMP closed".into()),
            Ok(_) => Ok(l),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Sends one command; its `return` line (events are skipped).
    pub fn execute(&mut self, cmd: &str) -> Result<String, String> {
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
pub struct Ppm {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Ppm {
    pub fn read(path: &Path) -> Result<Self, String> {
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
}

/// FNV-1a, 64 bits.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------
// Scratch space: removed after a pass, kept (and named) after a failure.

pub struct WorkDir {
    path: PathBuf,
    passed: bool,
}

impl WorkDir {
    /// `/tmp/<prefix>-<pid>`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        WorkDir {
            path,
            passed: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn passed(mut self) {
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
/// Adds the virtio_gpu module chain (uncompressed, `lib/modules/*.ko`) and
/// `modules.list` (their load order, read by the guest's /init).
pub fn add_guest_modules(cpio: &mut Cpio, kver: &str) {
    use std::fmt::Write as _;
    let mut list = String::new();
    for module in guest_modules(kver) {
        let ko = format!("{}.ko", module_name(&module));
        cpio.file(&format!("lib/modules/{ko}"), 0o644, &read_module(&module));
        writeln!(list, "{ko}").unwrap();
    }
    println!(
        "guest modules, in load order: {}",
        list.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    cpio.file("modules.list", 0o644, list.as_bytes());
}

/// `gzip -1` of `raw` into `path`.
pub fn gzip_to(raw: &[u8], path: &Path) {
    let file = fs::File::create(path).unwrap();
    let mut gzip = Command::new("gzip")
        .args(["-n", "-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .expect("cannot run gzip");
    gzip.stdin.take().unwrap().write_all(raw).unwrap();
    assert!(gzip.wait().unwrap().success(), "gzip failed");
}

/// `gcc <args> -o dir/name src`, failing the test with gcc's output.
pub fn gcc(dir: &Path, name: &str, src: &str, args: &[&str]) -> PathBuf {
    let out_path = dir.join(name);
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-I/usr/include/libdrm", "-o"])
        .arg(&out_path)
        .arg(src)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run gcc");
    assert!(
        out.status.success(),
        "gcc {src} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out_path
}

/// The fields of a `/proc/.../stat` file after the command's name (which
/// may hold spaces and parentheses): `[0]` is the state, `[1]` the parent's
/// pid, `[11]` and `[12]` utime and stime.
pub fn stat_fields(path: &Path) -> Option<Vec<String>> {
    let stat = fs::read_to_string(path).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// Each thread of `pid`: name, state and where it waits in the kernel
/// (what a process that does not exit is stuck on).
fn threads(pid: u32) -> String {
    let mut out = String::new();
    for t in fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
        let state = stat_fields(&p.join("stat"))
            .and_then(|f| f.into_iter().next())
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} {} {state} wchan={} syscall={}\n",
            t.file_name().to_string_lossy(),
            read("comm").trim_end(),
            read("wchan"),
            read("syscall").split_whitespace().next().unwrap_or("")
        ));
    }
    out
}

/// The files of one boot in its scratch directory, and the failure text
/// that carries them.
pub struct BootFiles {
    pub sock: PathBuf,
    pub serial: PathBuf,
    pub qmp: PathBuf,
    pub backend_log: PathBuf,
    pub qemu_log: PathBuf,
    /// Lines of the backend's log a failure shows (its last ones).
    backend_tail: usize,
}

impl BootFiles {
    pub fn in_dir(dir: &Path, backend_tail: usize) -> BootFiles {
        BootFiles {
            sock: dir.join("gpu.sock"),
            serial: dir.join("serial.log"),
            qmp: dir.join("qmp.sock"),
            backend_log: dir.join("backend.log"),
            qemu_log: dir.join("qemu.log"),
            backend_tail,
        }
    }

    /// `what`, then the serial console, the backend's and QEMU's logs.
    pub fn logs(&self, what: &str) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_else(|e| format!("({e})"));
        let backend = read(&self.backend_log);
        let lines: Vec<&str> = backend.lines().collect();
        let from = lines.len().saturating_sub(self.backend_tail);
        format!(
            "{what}\n==== serial console ({})\n{}\n==== backend log ({}{})\n{}\n==== QEMU log ({})\n{}",
            self.serial.display(),
            read(&self.serial),
            self.backend_log.display(),
            if from > 0 { ", last lines" } else { "" },
            lines[from..].join("\n"),
            self.qemu_log.display(),
            read(&self.qemu_log)
        )
    }

    /// Starts the backend `cmd` (its output to the backend log) and waits
    /// for it to create its socket.
    pub fn start_backend(&self, cmd: &mut Command) -> Result<Guard, String> {
        let log = fs::File::create(&self.backend_log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut backend = Guard::spawn("backend", cmd).map_err(|e| self.logs(&e))?;
        let deadline = Instant::now() + BACKEND_START_LIMIT;
        while !self.sock.exists() {
            if let Some(st) = backend.exited() {
                return Err(self.logs(&format!("the backend exited before listening: {st}")));
            }
            if Instant::now() > deadline {
                return Err(self.logs(&format!(
                    "the backend did not create its socket within {} s",
                    BACKEND_START_LIMIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(backend)
    }

    /// Starts QEMU as README.md "Use with QEMU" says: TCG, `mem_mb` of
    /// guest RAM as a shared memfd, vhost-user-gpu-pci with `max_outputs`
    /// on the backend's socket, the serial console to a file, QMP. The
    /// kernel command line is `append` after `console=ttyS0 panic=-1
    /// no_timer_check` (on TCG under load the kernel's IO-APIC timer check
    /// can miss its ticks and panic: "IO-APIC + timer doesn't work!").
    pub fn start_qemu(
        &self,
        host: &Host,
        mem_mb: u32,
        max_outputs: u32,
        initrd: &Path,
        append: &str,
    ) -> Result<Guard, String> {
        let mut cmd = Command::new(&host.qemu);
        cmd.args(["-display", "none"])
            .arg("-chardev")
            .arg(format!("socket,id=vgpu,path={}", self.sock.display()))
            .arg("-device")
            .arg(format!(
                "vhost-user-gpu-pci,chardev=vgpu,id=gpu0,max_outputs={max_outputs}"
            ));
        self.boot_qemu(cmd, mem_mb, host, initrd, append)
    }

    /// Starts QEMU with its own in-process virgl, `virtio-gpu-gl-pci`, the
    /// seed's system: its GL display is SDL (one head) or GTK (more; SDL
    /// aborts with `max_outputs=2`) on the X server `x_display`, whose GL is
    /// the host's llvmpipe.
    pub fn start_qemu_gl(
        &self,
        host: &Host,
        mem_mb: u32,
        max_outputs: u32,
        x_display: &str,
        initrd: &Path,
        append: &str,
    ) -> Result<Guard, String> {
        let mut cmd = Command::new(&host.qemu);
        let ui = if max_outputs > 1 {
            "gtk,gl=on"
        } else {
            "sdl,gl=on"
        };
        cmd.env("DISPLAY", x_display)
            .args(["-display", ui])
            .arg("-device")
            .arg(format!(
                "virtio-gpu-gl-pci,id=gpu0,max_outputs={max_outputs}"
            ));
        self.boot_qemu(cmd, mem_mb, host, initrd, append)
    }

    /// The rest of QEMU's command line, both GPU devices alike: TCG,
    /// `mem_mb` of RAM as a shared memfd, the serial console to a file,
    /// QMP, the host's kernel and `initrd`.
    fn boot_qemu(
        &self,
        mut cmd: Command,
        mem_mb: u32,
        host: &Host,
        initrd: &Path,
        append: &str,
    ) -> Result<Guard, String> {
        let log = fs::File::create(&self.qemu_log).unwrap();
        // debug-threads: the vCPU thread is named (`CPU 0/TCG`), so its
        // CPU time can be read.
        cmd.args(["-accel", "tcg", "-nodefaults", "-vga", "none"])
            .args(["-name", "guest,debug-threads=on"])
            .arg("-m")
            .arg(mem_mb.to_string())
            .arg("-no-reboot")
            .arg("-object")
            .arg(format!(
                "memory-backend-memfd,id=mem,size={mem_mb}M,share=on"
            ))
            .args(["-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("file,id=ser0,path={}", self.serial.display()))
            .args(["-serial", "chardev:ser0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp.display()))
            .arg("-kernel")
            .arg(&host.kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 no_timer_check {append}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        Guard::spawn("qemu", &mut cmd).map_err(|e| self.logs(&e))
    }

    /// Quits QEMU over QMP, then stops the backend with SIGTERM; both must
    /// go within 10 s. The backend's exit status.
    pub fn stop(
        &self,
        mut qmp: Qmp,
        qemu: &mut Guard,
        backend: &mut Guard,
    ) -> Result<ExitStatus, String> {
        let _ = qmp.execute(r#"{"execute":"quit"}"#);
        drop(qmp);
        if qemu.wait_exit(SHORT_LIMIT).is_none() {
            return Err(self.logs(&format!(
                "QEMU did not quit within 10 s; its threads:\n{}the backend's:\n{}",
                threads(qemu.child.id()),
                threads(backend.child.id())
            )));
        }
        backend.terminate();
        backend
            .wait_exit(SHORT_LIMIT)
            .ok_or_else(|| self.logs("the backend did not exit within 10 s of SIGTERM"))
    }
}
