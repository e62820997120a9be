//! The vhost-user frontend against QEMU's own backend,
//! `/usr/lib/qemu/vhost-user-gpu` (Debian package qemu-system-gui): a real
//! peer that forwards GET_DISPLAY_INFO and GET_EDID to the VMM over the GPU
//! socket and sends every flush as an UPDATE with the pixels inline.
//!
//! The backend must be installed; without it this test fails and says how
//! to install it (it never skips silently).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::protocol::{
    edid_for, Format, GetEdid, GpuCommand, MemEntry, Rect, Request, ResourceAttachBacking,
    ResourceCreate2d, ResourceFlush, ResourceId, Response, ScanoutId, SetScanout, TransferToHost2d,
};
use loadgen::driver::{GpuDriver, Queue};
use loadgen::frontend::vhost::{
    DisplayOptions, MemoryMessage, PixelCheck, UpdateView, VhostFrontend, VhostOptions,
};
use loadgen::frontend::GuestRam;
use vm_memory::Bytes;

const CONTRIB: &str = "/usr/lib/qemu/vhost-user-gpu";
const WAIT: Duration = Duration::from_secs(10);
const W: u32 = 64;
const H: u32 = 32;

/// The pixel the guest draws at (x, y), x8r8g8b8.
fn pattern(x: u32, y: u32) -> u32 {
    0xff00_0000 | (x << 8) | y
}

struct Contrib {
    child: Child,
    dir: PathBuf,
}

impl Contrib {
    fn spawn() -> (Self, PathBuf) {
        assert!(
            Path::new(CONTRIB).exists(),
            "QEMU's vhost-user-gpu backend is not installed at {CONTRIB}; \
             install it with: apt-get install -y qemu-system-gui"
        );
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("loadgen-contrib-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("gpu.sock");
        let log = std::fs::File::create(dir.join("backend.log")).unwrap();
        let child = Command::new(CONTRIB)
            .arg("--socket-path")
            .arg(&sock)
            .env("G_MESSAGES_DEBUG", "all")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (Self { child, dir }, sock)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("backend.log")).unwrap_or_default()
    }

    /// Waits for the backend to exit on its own; its status.
    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Contrib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// QEMU's backend and a session with it.
fn start(opts: VhostOptions) -> (Contrib, VhostFrontend, GpuDriver, GuestRam) {
    let (contrib, sock) = Contrib::spawn();
    let opts = VhostOptions {
        queue_size: 256,
        connect_wait: Duration::from_secs(5),
        ..opts
    };
    let ram = GuestRam::new(32 << 20).unwrap();
    match VhostFrontend::connect(&sock, ram.clone(), opts) {
        Ok((session, driver)) => (contrib, session, driver, ram),
        Err(e) => panic!("set-up failed: {e}\nbackend log:\n{}", contrib.log()),
    }
}

fn display_options() -> DisplayOptions {
    DisplayOptions {
        scanouts: 1,
        width: 640,
        height: 480,
        ..DisplayOptions::default()
    }
}

fn assert_one_640x480_scanout(driver: &mut GpuDriver) {
    let Response::OkDisplayInfo(modes) = call(driver, GpuCommand::GetDisplayInfo) else {
        panic!("no display info");
    };
    assert!(modes[0].enabled && !modes[1].enabled);
    assert_eq!(modes[0].rect, Rect::new(0, 0, 640, 480));
}

fn call(driver: &mut GpuDriver, cmd: GpuCommand) -> Response {
    let done = driver
        .call(Queue::Control, &Request::new(cmd), WAIT)
        .unwrap();
    done.response.unwrap().1
}

#[test]
fn qemu_contrib_backend_is_set_up_answered_and_draws_through_the_vmm_display() {
    let check: PixelCheck = Arc::new(|u: &UpdateView<'_>| {
        let mut bad = 0;
        for (i, px) in u.pixels.chunks_exact(4).enumerate() {
            let (x, y) = (u.x + i as u32 % u.width, u.y + i as u32 / u.width);
            bad += u64::from(px != pattern(x, y).to_le_bytes());
        }
        bad
    });
    let (mut contrib, session, mut driver, ram) = start(VhostOptions {
        display: DisplayOptions {
            pixel_check: Some(check),
            ..display_options()
        },
        ..VhostOptions::default()
    });
    let n = session.negotiated().clone();
    eprintln!("negotiated with QEMU's backend: {n:#?}");
    assert!(n.reply_ack());
    assert_eq!(n.memory, MemoryMessage::AddMemReg);

    // Forwarded to the VMM display over the GPU socket and back.
    assert_one_640x480_scanout(&mut driver);
    // QEMU 7.2's backend offers no EDID feature; later ones forward
    // GET_EDID to the VMM like GET_DISPLAY_INFO.
    if n.has_gpu_feature(gpu::protocol::wire::VIRTIO_GPU_F_EDID) {
        let edid = call(
            &mut driver,
            GpuCommand::GetEdid(GetEdid {
                scanout_id: ScanoutId(0),
            }),
        );
        let Response::OkEdid(blob) = edid else {
            panic!("no EDID: {edid:?}");
        };
        assert_eq!(&blob.as_bytes()[..128], &edid_for(640, 480)[..]);
    }

    // The 2D path: a dumb buffer drawn by the guest reaches the display.
    let bytes = u64::from(W * H * 4);
    let backing = ram.alloc(bytes, 4096).unwrap();
    let pixels: Vec<u8> = (0..H)
        .flat_map(|y| (0..W).flat_map(move |x| pattern(x, y).to_le_bytes()))
        .collect();
    ram.memory().write_slice(&pixels, backing).unwrap();
    let rect = Rect::new(0, 0, W, H);
    let res = ResourceId(1);
    let steps = [
        GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: res,
            format: Format::B8G8R8X8Unorm,
            width: W,
            height: H,
        }),
        GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: res,
            entries: vec![MemEntry {
                addr: backing.0,
                length: bytes as u32,
            }],
        }),
        GpuCommand::SetScanout(SetScanout {
            rect,
            scanout_id: ScanoutId(0),
            resource_id: res,
        }),
        GpuCommand::TransferToHost2d(TransferToHost2d {
            rect,
            offset: 0,
            resource_id: res,
        }),
        GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: res,
        }),
    ];
    for cmd in steps {
        let name = format!("{cmd:?}");
        assert_eq!(call(&mut driver, cmd), Response::OkNodata, "{name}");
    }
    let started = Instant::now();
    while session.display_stats().updates == 0 {
        assert!(
            started.elapsed() < WAIT,
            "no UPDATE arrived: {:#?}\nbackend log:\n{}",
            session.display_stats(),
            contrib.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = session.display_stats();
    eprintln!("display after one flush: {stats:#?}");
    assert_eq!((stats.frames_delivered, stats.pixels_bad), (1, 0));
    let fb = session.display().framebuffer(0).unwrap();
    assert_eq!((fb.width, fb.height), (W, H));
    assert_eq!(fb.pixel(5, 7), Some(pattern(5, 7)));
    assert_eq!(fb.pixel(W - 1, H - 1), Some(pattern(W - 1, H - 1)));

    session.shutdown().unwrap();
    drop(driver);
    let status = contrib.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "backend did not exit cleanly after the frontend left: {status:?}\n{}",
        contrib.log()
    );
}

#[test]
fn qemu_contrib_backend_takes_set_mem_table_without_reply_ack() {
    let (_contrib, session, mut driver, _ram) = start(VhostOptions {
        no_reply_ack: true,
        mem_table: loadgen::frontend::vhost::MemTableMode::SetMemTable,
        display: display_options(),
        ..VhostOptions::default()
    });
    assert!(!session.negotiated().reply_ack());
    assert_eq!(session.negotiated().memory, MemoryMessage::SetMemTable);
    assert_one_640x480_scanout(&mut driver);
    session.shutdown().unwrap();
}

/// QEMU's backend (7.2) refuses a second GPU socket (`assertion
/// 'g->sock_fd == -1' failed`): the reset keeps the first one.
#[test]
fn qemu_contrib_backend_survives_a_device_reset_and_serves_the_new_driver() {
    let (contrib, mut session, mut driver, _ram) = start(VhostOptions {
        reset_replaces_gpu_socket: false,
        display: display_options(),
        ..VhostOptions::default()
    });
    assert_one_640x480_scanout(&mut driver);
    let mut driver = match session.reset(driver) {
        Ok(d) => d,
        Err(e) => panic!("reset failed: {e}\nbackend log:\n{}", contrib.log()),
    };
    let after = driver.call(
        Queue::Control,
        &Request::new(GpuCommand::GetDisplayInfo),
        WAIT,
    );
    assert!(
        after.is_ok(),
        "no answer after the reset: {:?}\n{:#?}\nbackend log:\n{}",
        after.err(),
        session.display_stats(),
        contrib.log()
    );
    assert_eq!(session.display_stats().display_info_answered, 2);
    session.shutdown().unwrap();
}
