//! The vhost-user frontend against a minimal fake backend (tests/vhost_support):
//! negotiation, both memory messages, the GPU socket, the backend request
//! channel, reset, and backends that die or stall.

mod vhost_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::protocol::{
    GpuCommand, Rect, Request, ResourceFlush, ResourceId, Response, ScanoutId, SetScanout,
};
use loadgen::driver::{GpuDriver, Queue};
use loadgen::frontend::vhost::{
    DisplayOptions, MemTableMode, MemoryMessage, PixelCheck, ShmemOptions, UpdateView, VhostError,
    VhostFrontend, VhostOptions,
};
use vhost::vhost_user::VhostUserProtocolFeatures as P;
use vhost_support::{connected, expect_err, options, FakeBackend, FakeOptions, FLUSH_PIXEL};

const WAIT: Duration = Duration::from_secs(5);

fn display_info(driver: &mut GpuDriver) -> Response {
    let done = driver
        .call(
            Queue::Control,
            &Request::new(GpuCommand::GetDisplayInfo),
            WAIT,
        )
        .unwrap();
    done.response.unwrap().1
}

fn assert_two_640x480_scanouts(resp: &Response) {
    let Response::OkDisplayInfo(modes) = resp else {
        panic!("not display info: {resp:?}");
    };
    assert!(modes[0].enabled && modes[1].enabled && !modes[2].enabled);
    assert_eq!(modes[1].rect, Rect::new(640, 0, 640, 480));
}

#[test]
fn setup_follows_qemu_order_and_get_display_info_is_answered_by_the_vmm_display() {
    let (fake, session) = connected(FakeOptions::default(), options());
    let (session, mut driver) = session.unwrap();
    assert_two_640x480_scanouts(&display_info(&mut driver));
    assert_eq!(session.display_stats().display_info_answered, 1);
    assert_eq!(
        fake.gpu_protocol_offer(),
        Some(loadgen::frontend::vhost::GPU_PROTOCOL_F_EDID)
    );
    let n = session.negotiated();
    assert_eq!(n.config.map(|c| c.num_scanouts), Some(1));
    assert_eq!(n.queue_num, 2);
    assert_eq!(n.max_mem_slots, Some(8));
    assert!(n.queue_features.event_idx && n.queue_features.indirect);
    session.shutdown().unwrap();
    let mut want = vec![
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        "GET_MAX_MEM_SLOTS",
        "GET_SHMEM_CONFIG",
        "SET_BACKEND_REQ_FD",
        "SET_OWNER",
        "GET_CONFIG",
        "GPU_SET_SOCKET",
        "SET_FEATURES",
        "ADD_MEM_REG",
    ];
    for _ in 0..2 {
        want.extend([
            "SET_VRING_NUM",
            "SET_VRING_BASE",
            "SET_VRING_ADDR",
            "SET_VRING_KICK",
            "SET_VRING_CALL",
        ]);
    }
    want.extend(["SET_VRING_ENABLE", "SET_VRING_ENABLE"]);
    want.extend(["GET_VRING_BASE", "GET_VRING_BASE"]);
    assert_eq!(fake.requests(), want);
}

#[test]
fn with_reply_ack_every_request_is_acked_and_the_session_stays_in_step() {
    let (fake, session) = connected(FakeOptions::default(), options());
    let (session, mut driver) = session.unwrap();
    assert!(session.negotiated().reply_ack());
    assert!(fake.acked_protocol().contains(P::REPLY_ACK));
    // An ack left unread would be taken as the next reply: two more round
    // trips and a clean shutdown prove none was.
    display_info(&mut driver);
    display_info(&mut driver);
    assert_eq!(session.shutdown().unwrap(), [2, 0]);
}

#[test]
fn without_reply_ack_nothing_waits_for_acks_and_setup_still_works() {
    let opts = VhostOptions {
        no_reply_ack: true,
        ..options()
    };
    let (fake, session) = connected(FakeOptions::default(), opts);
    let (session, mut driver) = session.unwrap();
    assert!(!session.negotiated().reply_ack());
    assert!(!fake.acked_protocol().contains(P::REPLY_ACK));
    assert_two_640x480_scanouts(&display_info(&mut driver));
    session.shutdown().unwrap();
    // The set-up barrier: one request with a reply after the enables.
    let reqs = fake.requests();
    let enable = reqs.iter().rposition(|r| *r == "SET_VRING_ENABLE").unwrap();
    assert_eq!(reqs[enable + 1], "GET_FEATURES");
}

#[test]
fn set_mem_table_mode_hands_guest_ram_over_with_set_mem_table() {
    let opts = VhostOptions {
        mem_table: MemTableMode::SetMemTable,
        ..options()
    };
    let (fake, session) = connected(FakeOptions::default(), opts);
    let (session, mut driver) = session.unwrap();
    assert_eq!(session.negotiated().memory, MemoryMessage::SetMemTable);
    display_info(&mut driver);
    session.shutdown().unwrap();
    let reqs = fake.requests();
    assert!(reqs.contains(&"SET_MEM_TABLE") && !reqs.contains(&"ADD_MEM_REG"));
}

#[test]
fn add_mem_reg_mode_hands_guest_ram_over_with_add_mem_reg() {
    let opts = VhostOptions {
        mem_table: MemTableMode::AddMemReg,
        ..options()
    };
    let (fake, session) = connected(FakeOptions::default(), opts);
    let (session, mut driver) = session.unwrap();
    assert_eq!(session.negotiated().memory, MemoryMessage::AddMemReg);
    display_info(&mut driver);
    session.shutdown().unwrap();
    let reqs = fake.requests();
    assert!(reqs.contains(&"ADD_MEM_REG") && !reqs.contains(&"SET_MEM_TABLE"));
}

#[test]
fn auto_mode_falls_back_to_set_mem_table_without_mem_slots() {
    let fake = FakeOptions {
        protocol: FakeOptions::default().protocol - P::CONFIGURE_MEM_SLOTS,
        ..FakeOptions::default()
    };
    let (fake, session) = connected(fake, options());
    let (session, mut driver) = session.unwrap();
    assert_eq!(session.negotiated().memory, MemoryMessage::SetMemTable);
    assert_eq!(session.negotiated().max_mem_slots, None);
    display_info(&mut driver);
    session.shutdown().unwrap();
    assert!(!fake.requests().contains(&"GET_MAX_MEM_SLOTS"));
}

#[test]
fn add_mem_reg_without_mem_slots_is_refused_with_a_clear_error() {
    let fake = FakeOptions {
        protocol: FakeOptions::default().protocol - P::CONFIGURE_MEM_SLOTS,
        ..FakeOptions::default()
    };
    let opts = VhostOptions {
        mem_table: MemTableMode::AddMemReg,
        ..options()
    };
    let (_fake, session) = connected(fake, opts);
    let err = expect_err(session);
    assert!(matches!(err, VhostError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("CONFIGURE_MEM_SLOTS"), "{err}");
}

#[test]
fn the_gpu_socket_applies_scanout_and_update_and_checks_the_pixels() {
    let check: PixelCheck = Arc::new(|u: &UpdateView<'_>| {
        u.pixels
            .chunks_exact(4)
            .filter(|p| *p != FLUSH_PIXEL.to_le_bytes())
            .count() as u64
    });
    let opts = VhostOptions {
        display: DisplayOptions {
            pixel_check: Some(check),
            ..options().display
        },
        ..options()
    };
    let (_fake, session) = connected(FakeOptions::default(), opts);
    let (session, mut driver) = session.unwrap();
    let set_scanout = Request::new(GpuCommand::SetScanout(SetScanout {
        rect: Rect::new(0, 0, 64, 32),
        scanout_id: ScanoutId(0),
        resource_id: ResourceId(1),
    }));
    let flush = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
        rect: Rect::new(8, 4, 16, 8),
        resource_id: ResourceId(1),
    }));
    for req in [&set_scanout, &flush] {
        let done = driver.call(Queue::Control, req, WAIT).unwrap();
        assert_eq!(done.response.unwrap().1, Response::OkNodata);
    }
    // UPDATE has no reply: the flush can complete before the VMM applied it.
    let started = Instant::now();
    while session.display_stats().updates == 0 {
        assert!(started.elapsed() < WAIT, "no UPDATE arrived");
        std::thread::sleep(Duration::from_millis(2));
    }
    let stats = session.display_stats();
    assert_eq!((stats.scanouts_set, stats.updates), (1, 1));
    assert_eq!((stats.frames_delivered, stats.pixels_bad), (1, 0));
    assert_eq!(stats.bytes, 16 * 8 * 4);
    assert!(stats.per_scanout[0].last_update.is_some());
    let fb = session.display().framebuffer(0).unwrap();
    assert_eq!((fb.width, fb.height), (64, 32));
    assert_eq!(fb.pixel(8, 4), Some(FLUSH_PIXEL));
    assert_eq!(fb.pixel(23, 11), Some(FLUSH_PIXEL));
    assert_eq!(fb.pixel(24, 11), Some(0));
    session.shutdown().unwrap();
}

#[test]
fn a_slow_display_delays_the_update_not_the_session() {
    let opts = VhostOptions {
        display: DisplayOptions {
            update_delay: Duration::from_millis(100),
            ..options().display
        },
        ..options()
    };
    let (_fake, session) = connected(FakeOptions::default(), opts);
    let (session, mut driver) = session.unwrap();
    let set_scanout = Request::new(GpuCommand::SetScanout(SetScanout {
        rect: Rect::new(0, 0, 8, 8),
        scanout_id: ScanoutId(0),
        resource_id: ResourceId(1),
    }));
    driver.call(Queue::Control, &set_scanout, WAIT).unwrap();
    let flush = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
        rect: Rect::new(0, 0, 8, 8),
        resource_id: ResourceId(1),
    }));
    driver.call(Queue::Control, &flush, WAIT).unwrap();
    let started = Instant::now();
    while session.display_stats().updates == 0 {
        assert!(started.elapsed() < WAIT, "update never applied");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(started.elapsed() >= Duration::from_millis(50));
    session.shutdown().unwrap();
}

#[test]
fn shmem_map_from_the_backend_is_mapped_into_the_host_visible_region() {
    let (fake, session) = connected(FakeOptions::default(), options());
    let (session, _driver) = session.unwrap();
    let region = session.shmem_region().unwrap().clone();
    // The size the backend reported for the host-visible region.
    assert_eq!(region.size(), vhost_support::SHMEM_SIZE);
    let blob = memfd(b"mapped blob", 8192);
    assert_eq!(fake.shmem_map(&blob, 4096, 8192).unwrap(), 0);
    let mut buf = [0u8; 11];
    region.read(4096, &mut buf).unwrap();
    assert_eq!(&buf, b"mapped blob");
    // Overlapping the live mapping: refused, and the backend is told.
    assert!(fake.shmem_map(&blob, 8192, 4096).is_err());
    assert_eq!(fake.shmem_unmap(4096, 8192).unwrap(), 0);
    assert!(region.read(4096, &mut buf).is_err());
    let stats = session.backend_req_stats();
    assert_eq!((stats.maps, stats.unmaps, stats.refused), (1, 1, 1));
    session.shutdown().unwrap();
}

#[test]
fn slow_map_answers_each_request_after_the_delay() {
    let opts = VhostOptions {
        shmem: ShmemOptions {
            delay: Duration::from_millis(100),
            ..ShmemOptions::default()
        },
        ..options()
    };
    let (fake, session) = connected(FakeOptions::default(), opts);
    let (session, _driver) = session.unwrap();
    let blob = memfd(b"x", 4096);
    let started = Instant::now();
    assert_eq!(fake.shmem_map(&blob, 0, 4096).unwrap(), 0);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(session.backend_req_stats().maps, 1);
    session.shutdown().unwrap();
}

#[test]
fn reset_stops_the_rings_resets_the_device_and_a_new_driver_works() {
    let (fake, session) = connected(FakeOptions::default(), options());
    let (mut session, mut driver) = session.unwrap();
    display_info(&mut driver);
    let mut driver = session.reset(driver).unwrap();
    assert_two_640x480_scanouts(&display_info(&mut driver));
    assert_eq!(session.display_stats().display_info_answered, 2);
    session.shutdown().unwrap();
    let reqs = fake.requests();
    let reset = reqs.iter().position(|r| *r == "RESET_DEVICE").unwrap();
    assert_eq!(
        &reqs[reset - 2..reset],
        ["GET_VRING_BASE", "GET_VRING_BASE"]
    );
    assert_eq!(
        &reqs[reset + 1..reset + 3],
        ["GPU_SET_SOCKET", "SET_FEATURES"]
    );
    // ADD_MEM_REG is not repeated: the region outlives the reset.
    assert_eq!(reqs.iter().filter(|r| **r == "ADD_MEM_REG").count(), 1);
}

#[test]
fn reset_without_reset_device_uses_reset_owner_and_renegotiates() {
    let fake = FakeOptions {
        protocol: FakeOptions::default().protocol - P::RESET_DEVICE,
        ..FakeOptions::default()
    };
    let (fake, session) = connected(fake, options());
    let (mut session, driver) = session.unwrap();
    let mut driver = session.reset(driver).unwrap();
    display_info(&mut driver);
    session.shutdown().unwrap();
    let reqs = fake.requests();
    let reset = reqs.iter().position(|r| *r == "RESET_OWNER").unwrap();
    assert_eq!(
        &reqs[reset + 1..reset + 4],
        ["SET_OWNER", "SET_PROTOCOL_FEATURES", "GPU_SET_SOCKET"]
    );
}

#[test]
fn a_backend_that_disconnects_mid_run_gives_errors_not_hangs() {
    let (fake, session) = connected(FakeOptions::default(), options());
    let (session, mut driver) = session.unwrap();
    display_info(&mut driver);
    session.check_alive().unwrap();
    fake.kill();
    let started = Instant::now();
    let lost = driver.call(
        Queue::Control,
        &Request::new(GpuCommand::GetDisplayInfo),
        Duration::from_millis(300),
    );
    assert!(lost.is_err());
    let gone = session.check_alive().unwrap_err();
    assert!(matches!(gone, VhostError::BackendClosed { .. }), "{gone}");
    let err = session.shutdown().unwrap_err();
    assert!(
        matches!(
            err,
            VhostError::BackendClosed {
                op: "GET_VRING_BASE"
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < WAIT);
}

#[test]
fn a_backend_that_stops_answering_times_out_and_later_requests_fail_at_once() {
    let fake = FakeOptions {
        stall_on_get_vring_base: true,
        ..FakeOptions::default()
    };
    let opts = VhostOptions {
        control_timeout: Duration::from_millis(300),
        ..options()
    };
    let (_fake, session) = connected(fake, opts);
    let (mut session, driver) = session.unwrap();
    let started = Instant::now();
    let err = expect_err(session.reset(driver));
    assert!(
        matches!(
            err,
            VhostError::Timeout {
                op: "GET_VRING_BASE",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < WAIT);
    let again = session.shutdown().unwrap_err();
    assert!(matches!(again, VhostError::Broken { .. }), "{again}");
}

#[test]
fn a_backend_that_closes_during_setup_is_an_error() {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(theirs);
    let err = expect_err(VhostFrontend::from_stream(
        ours,
        vhost_support::ram(),
        options(),
    ));
    assert!(
        matches!(err, VhostError::BackendClosed { op: "GET_FEATURES" }),
        "{err}"
    );
}

#[test]
fn a_missing_socket_path_says_no_backend_is_listening_there() {
    let dir = tempdir();
    let path = dir.join("nobody.sock");
    let err = expect_err(VhostFrontend::connect(
        &path,
        vhost_support::ram(),
        options(),
    ));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("no backend listening at {}", path.display())),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connect_by_path_reaches_a_listening_backend() {
    let dir = tempdir();
    let path = dir.join("gpu.sock");
    let fake = FakeBackend::listen(&path, FakeOptions::default());
    let (session, mut driver) =
        VhostFrontend::connect(&path, vhost_support::ram(), options()).unwrap();
    assert_two_640x480_scanouts(&display_info(&mut driver));
    session.shutdown().unwrap();
    fake.join();
    let _ = std::fs::remove_dir_all(&dir);
}

fn memfd(content: &[u8], len: u64) -> std::fs::File {
    use std::io::Write;
    use std::os::fd::FromRawFd;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vhost-test-blob".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd nobody else owns.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(content).unwrap();
    f.set_len(len).unwrap();
    f
}

/// A fresh directory under the system temp dir, per test.
fn tempdir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("loadgen-vhost-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
