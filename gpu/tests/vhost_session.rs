//! The vhost-user control protocol, driven message by message the way a
//! VMM drives it: negotiation, config space, memory and rings, and what
//! happens to a frontend that breaks the rules.

#[path = "vhost_support.rs"]
mod support;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gpu::protocol::{GpuCommand, Rect, Request, Response};
use gpu::vhost::frame::{Header, FLAG_NEED_REPLY};
use gpu::vhost::{offered_protocol_features, Backend, Server, SessionEnd};
use loadgen::driver::Queue;
use support::*;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserInflight,
    VhostUserProtocolFeatures, VhostUserVringState,
};
use vm_memory::{ByteValued, Bytes};

fn display_info(d: &mut loadgen::driver::GpuDriver) -> Response {
    d.call(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), T)
        .unwrap()
        .response
        .unwrap()
        .1
}

#[test]
fn features_are_the_device_bits_plus_protocol_features() {
    let r = start(options());
    let f = &r.frontend;
    let features = f.get_u64(FrontendReq::GET_FEATURES);
    assert_ne!(features & PROTOCOL_FEATURES, 0);
    assert_eq!(
        features & !PROTOCOL_FEATURES,
        r.backend.device().device_features()
    );

    let proto = VhostUserProtocolFeatures::from_bits_truncate(
        f.get_u64(FrontendReq::GET_PROTOCOL_FEATURES),
    );
    for needed in [
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::BACKEND_REQ,
        VhostUserProtocolFeatures::CONFIG,
        VhostUserProtocolFeatures::INFLIGHT_SHMFD,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        VhostUserProtocolFeatures::RESET_DEVICE,
    ] {
        assert!(proto.contains(needed), "{needed:?} not offered");
    }
    assert!(!proto.contains(VhostUserProtocolFeatures::MQ));

    f.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, proto.bits());
    assert_eq!(f.get_u64(FrontendReq::GET_QUEUE_NUM), 2);
    assert_eq!(f.get_u64(FrontendReq::GET_MAX_MEM_SLOTS), 32);
    // REPLY_ACK now negotiated: a message without a reply of its own is
    // acknowledged when asked.
    assert_eq!(f.acked(FrontendReq::SET_OWNER, &[], &[]), 0);
}

#[test]
fn get_config_reports_scanouts_and_capsets_and_checks_ranges() {
    let r = start(options_with_outputs(2));
    let f = &r.frontend;
    f.negotiate();
    let get = |offset: u32, size: u32| {
        let mut p = VhostUserConfig::new(offset, size, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        p.resize(p.len() + size as usize, 0);
        f.send(FrontendReq::GET_CONFIG, 0, &p, &[]);
        let m = f.reply_for(FrontendReq::GET_CONFIG);
        let head = &m.payload[..12];
        let got_size = u32::from_ne_bytes(head[4..8].try_into().unwrap());
        (got_size, m.payload[12..].to_vec())
    };
    let (size, bytes) = get(0, 16);
    assert_eq!(size, 16);
    let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!((word(0), word(1), word(2), word(3)), (0, 0, 2, 1));
    assert_eq!(get(8, 4), (4, 2u32.to_le_bytes().to_vec()));
    // Outside the 16-byte config: an empty answer, and the session goes on.
    assert_eq!(get(12, 8), (0, Vec::new()));

    let mut clear = VhostUserConfig::new(4, 4, VhostUserConfigFlags::WRITABLE)
        .as_slice()
        .to_vec();
    clear.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(f.acked(FrontendReq::SET_CONFIG, &clear, &[]), 0);
    assert_eq!(f.get_u64(FrontendReq::GET_QUEUE_NUM), 2, "session still up");
}

#[test]
fn a_kick_on_the_control_ring_completes_get_display_info() {
    let r = start(options());
    let ram = guest_ram();
    let mut d = r.frontend.bring_up(&ram);
    match display_info(&mut d) {
        Response::OkDisplayInfo(modes) => {
            assert!(modes[0].enabled);
            assert_eq!(modes[0].rect, Rect::new(0, 0, 1280, 800));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_avail_index_more_than_a_ring_ahead_does_not_hang_the_device() {
    // Found by the `vhost` fuzz target (tests/fuzz): the owner shard spun
    // on such a ring, and the device never answered again.
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    f.negotiate();
    f.add_ram(&ram);
    let (mut d, ends) = new_driver(&ram);
    f.ring_layout(0, &ram, d.queue(Queue::Control), 0);
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, 0, &ends[0].call), 0);
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, 0, &ends[0].kick), 0);
    f.enable(0, true);
    let avail_idx = vm_memory::GuestAddress(d.queue(Queue::Control).avail_ring().0 + 2);
    ram.memory()
        .write_obj(RING_SIZE + 1, avail_idx)
        .expect("avail idx");
    // SAFETY: writes 8 bytes from a live u64 to an eventfd we hold.
    let one = 1u64;
    let n = unsafe { libc::write(ends[0].kick.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
    thread::sleep(Duration::from_millis(50));
    let (tx, rx) = std::sync::mpsc::channel();
    let b = r.backend.clone();
    thread::spawn(move || tx.send(b.device().stats().is_ok()));
    assert_eq!(rx.recv_timeout(T), Ok(true), "the device stopped answering");
    // The driver fixes its index: the ring serves again.
    ram.memory().write_obj(0u16, avail_idx).expect("avail idx");
    match display_info(&mut d) {
        Response::OkDisplayInfo(_) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_kick_sent_before_the_ring_is_enabled_is_not_lost() {
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    f.negotiate();
    f.add_ram(&ram);
    let (mut d, ends) = new_driver(&ram);
    f.ring_layout(0, &ram, d.queue(Queue::Control), 0);
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, 0, &ends[0].call), 0);
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, 0, &ends[0].kick), 0);
    // PROTOCOL_FEATURES was negotiated: the ring waits for SET_VRING_ENABLE.
    d.submit(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), 7)
        .unwrap();
    d.kick(Queue::Control).unwrap();
    thread::sleep(Duration::from_millis(50));
    d.reap().unwrap();
    assert!(d.take_completions().is_empty(), "ran before it was enabled");
    f.enable(0, true);
    let c = d.wait_for(7, T).unwrap();
    assert!(matches!(c.response.unwrap().1, Response::OkDisplayInfo(_)));
}

#[test]
fn get_vring_base_stops_the_ring_at_the_next_avail_index_and_it_restarts_there() {
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    for _ in 0..3 {
        display_info(&mut d);
    }
    let s = VhostUserVringState::new(0, 0);
    f.send(FrontendReq::GET_VRING_BASE, 0, s.as_slice(), &[]);
    let m = f.reply_for(FrontendReq::GET_VRING_BASE);
    let state: [u32; 2] = [
        u32::from_ne_bytes(m.payload[0..4].try_into().unwrap()),
        u32::from_ne_bytes(m.payload[4..8].try_into().unwrap()),
    ];
    assert_eq!(state, [0, 3]);

    // Stopped: a kick does nothing until the frontend restarts the ring
    // (SET_VRING_BASE, then a new kick fd), as QEMU does.
    d.submit(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), 9)
        .unwrap();
    d.kick(Queue::Control).unwrap();
    thread::sleep(Duration::from_millis(50));
    d.reap().unwrap();
    assert!(d.take_completions().is_empty(), "a stopped ring ran");
    assert_eq!(f.vring_state(FrontendReq::SET_VRING_BASE, 0, 3), 0);
    let kick = eventfd();
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, 0, &kick), 0);
    let c = d.wait_for(9, T).unwrap();
    assert!(matches!(c.response.unwrap().1, Response::OkDisplayInfo(_)));
}

#[test]
fn a_call_fd_replaced_while_the_ring_runs_gets_the_interrupts() {
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    display_info(&mut d);
    let call = eventfd();
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, 0, &call), 0);
    display_info(&mut d); // the driver reaps by polling; the call goes to `call`
    assert!(eventfd_count(&call) > 0, "no interrupt on the new call fd");
}

#[test]
fn inflight_fd_has_the_split_queue_size_and_a_descriptor() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let req = VhostUserInflight::new(0, 0, 2, 256);
    f.send(FrontendReq::GET_INFLIGHT_FD, 0, req.as_slice(), &[]);
    let m = f.reply_for(FrontendReq::GET_INFLIGHT_FD);
    assert_eq!(m.fds.len(), 1);
    let size = u64::from_ne_bytes(m.payload[0..8].try_into().unwrap());
    assert_eq!(size, 2 * gpu::vhost::split_queue_region_size(256));
    let file = std::fs::File::from(m.fds.into_iter().next().unwrap());
    assert_eq!(file.metadata().unwrap().len(), size);
}

#[test]
fn ring_addresses_before_any_memory_table_close_the_connection() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let a = vhost::vhost_user::message::VhostUserVringAddr::new(
        0,
        vhost::vhost_user::message::VhostUserVringAddrFlags::empty(),
        0x1000,
        0x3000,
        0x2000,
        0,
    );
    f.send(
        FrontendReq::SET_VRING_ADDR,
        FLAG_NEED_REPLY,
        a.as_slice(),
        &[],
    );
    assert!(f.is_closed());
    match r.session.join().unwrap() {
        SessionEnd::Closed(why) => assert!(why.contains("memory table"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_memory_region_needs_exactly_one_fd() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let ram = guest_ram();
    let region = vhost::vhost_user::message::VhostUserSingleMemoryRegion::new(
        0,
        ram.size(),
        ram.userspace_addr(),
        0,
    );
    f.send(FrontendReq::ADD_MEM_REG, 0, region.as_slice(), &[]);
    assert!(f.is_closed());
    assert!(matches!(r.session.join().unwrap(), SessionEnd::Closed(_)));
}

fn server() -> (
    Arc<Backend>,
    std::path::PathBuf,
    gpu::vhost::ServerStop,
    thread::JoinHandle<()>,
) {
    let dir = std::env::temp_dir().join(format!("gpu-reactor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vhost.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path));
    let backend = Arc::new(Backend::start(options()).unwrap());
    let server = Server::bind(&path, backend.clone()).unwrap();
    let stop = server.stopper();
    let t = thread::spawn(move || server.run().unwrap());
    (backend, path, stop, t)
}

#[test]
fn malformed_or_unknown_messages_close_the_connection_and_the_next_frontend_is_served() {
    let (_backend, path, stop, t) = server();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // GET_FEATURES carries no payload.
    let f = Frontend::connect(&path);
    f.send_raw(
        Header::request(FrontendReq::GET_FEATURES as u32, 0, 4),
        &[0; 4],
    );
    assert!(f.is_closed());

    // No such request.
    let f = Frontend::connect(&path);
    f.send_raw(Header::request(999, 0, 0), &[]);
    assert!(f.is_closed());

    // SET_FEATURES needs 8 bytes.
    let f = Frontend::connect(&path);
    f.send_raw(
        Header::request(FrontendReq::SET_FEATURES as u32, 0, 4),
        &[0; 4],
    );
    assert!(f.is_closed());

    // A file descriptor where none belongs.
    let f = Frontend::connect(&path);
    let fd = eventfd();
    f.send(FrontendReq::GET_QUEUE_NUM, 0, &[], &[fd.as_fd()]);
    assert!(f.is_closed());

    // And the next one is served normally.
    let f = Frontend::connect(&path);
    assert_eq!(
        f.get_u64(FrontendReq::GET_PROTOCOL_FEATURES),
        offered_protocol_features().bits()
    );
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    assert!(matches!(display_info(&mut d), Response::OkDisplayInfo(_)));

    stop.stop();
    t.join().unwrap();
}
