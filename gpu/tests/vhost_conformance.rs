//! vhost-user conformance (issue 10): every legal order of frontend
//! messages, driven through loadgen's frontend where it can play the
//! behaviour and with hand-written messages where it cannot. Each test
//! asserts what completed and what was returned, never how fast.

#[path = "vhost_support.rs"]
mod support;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use gpu::protocol::wire::{
    VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_F_EDID, VIRTIO_GPU_F_VIRGL,
};
use gpu::protocol::*;
use gpu::render::sim::{sim_submit, SIM_CAPSET_ID};
use gpu::vhost::frame::{Header, FLAG_NEED_REPLY, FLAG_REPLY};
use gpu::vhost::{Backend, Server, SessionEnd};
use loadgen::driver::{GpuDriver, Queue};
use loadgen::frontend::vhost::SetupPause;
use loadgen::frontend::{
    Buf, DriverQueue, GuestRam, MemTableMode, QueueFeatures, VhostFrontend, VhostOptions,
};
use support::*;
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserSingleMemoryRegion, VhostUserVringState,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// A backend serving one loadgen frontend over a socketpair.
struct Session {
    backend: Arc<Backend>,
    frontend: VhostFrontend,
    driver: GpuDriver,
    thread: JoinHandle<SessionEnd>,
}

fn vhost_options() -> VhostOptions {
    VhostOptions {
        queue_size: RING_SIZE,
        // 3D, so the sim renderer can keep commands in flight.
        gpu_features: (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
            | (1 << VIRTIO_GPU_F_EDID),
        ..VhostOptions::default()
    }
}

fn connect(opts: VhostOptions) -> Session {
    let backend = Arc::new(Backend::start(options()).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let b = backend.clone();
    let thread = thread::spawn(move || b.serve_stream(theirs));
    let (frontend, driver) = VhostFrontend::from_stream(ours, guest_ram(), opts).unwrap();
    Session {
        backend,
        frontend,
        driver,
        thread,
    }
}

impl Session {
    fn end(self) -> SessionEnd {
        drop(self.driver);
        drop(self.frontend);
        self.thread.join().unwrap()
    }
}

fn call(d: &mut GpuDriver, req: Request) -> Response {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap().1
}

fn display_info_ok(d: &mut GpuDriver) {
    let r = call(d, Request::new(GpuCommand::GetDisplayInfo));
    assert!(matches!(r, Response::OkDisplayInfo(_)), "{r:?}");
}

fn ctx_create(d: &mut GpuDriver, ctx: u32) {
    let r = call(
        d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"conformance".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
}

/// A fenced submit that keeps the context's GPU busy for `gpu_us`.
fn slow_submit(ctx: u32, fence: u64, gpu_us: u32, hang: bool) -> Request {
    Request::new(GpuCommand::Submit3d(Submit3d {
        data: sim_submit(gpu_us, hang),
    }))
    .with_ctx(ctx)
    .with_fence(fence)
}

/// Puts `n` slow fenced submits on the control ring (tags `first..`) and
/// kicks: the commands are in flight when this returns.
fn submit_slow(d: &mut GpuDriver, ctx: u32, first: u64, n: u64, gpu_us: u32) {
    for tag in first..first + n {
        d.submit(Queue::Control, &slow_submit(ctx, tag, gpu_us, false), tag)
            .unwrap();
    }
    d.kick(Queue::Control).unwrap();
}

/// Completions already on the used ring, without waiting.
fn reap_now(d: &mut GpuDriver) -> Vec<u64> {
    d.reap().unwrap();
    let mut tags: Vec<u64> = d.take_completions().iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    tags
}

/// True when nothing more completes for a while (for "must not happen").
fn nothing_completes(d: &mut GpuDriver) -> bool {
    thread::sleep(Duration::from_millis(100));
    reap_now(d).is_empty()
}

// ---- kicks before the ring is ready ---------------------------------------

fn kick_before(pause: SetupPause) {
    for no_reply_ack in [false, true] {
        let mut s = connect(VhostOptions {
            pause_setup: pause,
            no_reply_ack,
            ..vhost_options()
        });
        s.driver
            .submit(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), 1)
            .unwrap();
        s.driver.kick(Queue::Control).unwrap();
        if !no_reply_ack {
            // Every message so far was acknowledged: the ring is not ready.
            assert!(nothing_completes(&mut s.driver), "{pause:?}: ran too early");
        }
        s.frontend.finish_setup().unwrap();
        let c = s.driver.wait_for(1, T).unwrap();
        assert!(matches!(c.response.unwrap().1, Response::OkDisplayInfo(_)));
        display_info_ok(&mut s.driver);
        assert_eq!(s.end(), SessionEnd::Disconnected);
    }
}

#[test]
fn a_kick_before_the_memory_table_is_not_lost() {
    kick_before(SetupPause::BeforeMemory);
}

#[test]
fn a_kick_before_the_ring_addresses_is_not_lost() {
    kick_before(SetupPause::BeforeRingAddr);
}

#[test]
fn a_kick_before_set_vring_enable_is_not_lost() {
    kick_before(SetupPause::BeforeEnable);
}

#[test]
fn a_ring_set_up_before_set_features_runs_with_the_features_acked_later() {
    // No PROTOCOL_FEATURES: the kick fd enables the ring, which starts
    // before SET_FEATURES; EVENT_IDX acked afterwards must apply to it
    // (else the device never publishes avail_event and the driver stops
    // kicking).
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    let (mut d, ends) = new_driver(&ram);
    let features = f.get_u64(FrontendReq::GET_FEATURES);
    f.send(FrontendReq::SET_OWNER, 0, &[], &[]);
    let region = VhostUserMemoryRegion::new(
        ram.base().0,
        ram.size(),
        ram.userspace_addr(),
        ram.mmap_offset(),
    );
    let mut table = VhostUserMemory::new(1).as_slice().to_vec();
    table.extend_from_slice(region.as_slice());
    f.send(FrontendReq::SET_MEM_TABLE, 0, &table, &[ram.file().as_fd()]);
    let (i, q) = (0u32, d.queue(Queue::Control));
    let state = |req, num| {
        let s = VhostUserVringState::new(i, num);
        f.send(req, 0, s.as_slice(), &[]);
    };
    state(FrontendReq::SET_VRING_NUM, u32::from(q.size()));
    state(FrontendReq::SET_VRING_BASE, 0);
    let va = |gpa: GuestAddress| ram.userspace_addr() + (gpa.0 - ram.base().0);
    let a = vhost::vhost_user::message::VhostUserVringAddr::new(
        i,
        vhost::vhost_user::message::VhostUserVringAddrFlags::empty(),
        va(q.desc_table()),
        va(q.used_ring()),
        va(q.avail_ring()),
        0,
    );
    f.send(FrontendReq::SET_VRING_ADDR, 0, a.as_slice(), &[]);
    f.send(
        FrontendReq::SET_VRING_CALL,
        0,
        &0u64.to_ne_bytes(),
        &[ends[0].call.as_fd()],
    );
    f.send(
        FrontendReq::SET_VRING_KICK,
        0,
        &0u64.to_ne_bytes(),
        &[ends[0].kick.as_fd()],
    );
    d.submit(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), 1)
        .unwrap();
    d.kick(Queue::Control).unwrap();
    let acked = features & ((1 << 32) | (1 << gpu::device::VIRTIO_RING_F_EVENT_IDX));
    f.set_u64(FrontendReq::SET_FEATURES, acked);
    let c = d.wait_for(1, T).unwrap();
    assert!(matches!(c.response.unwrap().1, Response::OkDisplayInfo(_)));
    for _ in 0..20 {
        display_info_ok(&mut d);
    }
}

// ---- REPLY_ACK and memory messages ----------------------------------------

#[test]
fn both_memory_messages_serve_the_guest_with_and_without_reply_ack() {
    for mem_table in [MemTableMode::SetMemTable, MemTableMode::AddMemReg] {
        for no_reply_ack in [false, true] {
            let mut s = connect(VhostOptions {
                mem_table,
                no_reply_ack,
                setup_barrier: false,
                ..vhost_options()
            });
            let want = match mem_table {
                MemTableMode::AddMemReg => loadgen::frontend::vhost::MemoryMessage::AddMemReg,
                _ => loadgen::frontend::vhost::MemoryMessage::SetMemTable,
            };
            assert_eq!(s.frontend.negotiated().memory, want);
            assert_eq!(s.frontend.negotiated().reply_ack(), !no_reply_ack);
            for _ in 0..3 {
                display_info_ok(&mut s.driver);
            }
            assert_eq!(s.end(), SessionEnd::Disconnected);
        }
    }
}

#[test]
fn a_hundred_setups_without_reply_ack_in_a_row_never_hang() {
    let (_backend, path, stop, t) = server();
    for _ in 0..100 {
        let opts = VhostOptions {
            no_reply_ack: true,
            // QEMU's race: no barrier, the first kick right after ENABLE.
            setup_barrier: false,
            control_timeout: T,
            ..vhost_options()
        };
        let (session, mut d) = VhostFrontend::connect(&path, guest_ram(), opts).unwrap();
        display_info_ok(&mut d);
        drop(d);
        session.shutdown().unwrap();
    }
    stop.stop();
    t.join().unwrap();
}

fn memory_replaced_mid_run(mem_table: MemTableMode) {
    let mut s = connect(VhostOptions {
        mem_table,
        ..vhost_options()
    });
    ctx_create(&mut s.driver, 1);
    submit_slow(&mut s.driver, 1, 10, 5, 40_000);
    s.frontend.replace_memory().unwrap();
    // Acknowledged only once the commands that used the old table are done.
    assert_eq!(reap_now(&mut s.driver), vec![10, 11, 12, 13, 14]);
    // And the rings keep running on the new table.
    submit_slow(&mut s.driver, 1, 20, 3, 0);
    s.driver.wait_n(3, T).unwrap();
    display_info_ok(&mut s.driver);
    assert_eq!(s.end(), SessionEnd::Disconnected);
}

#[test]
fn set_mem_table_mid_run_completes_commands_in_flight_first() {
    memory_replaced_mid_run(MemTableMode::SetMemTable);
}

#[test]
fn rem_and_add_mem_reg_mid_run_complete_commands_in_flight_first() {
    memory_replaced_mid_run(MemTableMode::AddMemReg);
}

// ---- stopping, pausing, resuming -----------------------------------------

#[test]
fn get_vring_base_with_commands_in_flight_completes_them_and_then_nothing() {
    let mut s = connect(vhost_options());
    ctx_create(&mut s.driver, 1);
    submit_slow(&mut s.driver, 1, 10, 5, 40_000);
    // 1 CTX_CREATE + 5 submits taken from the control ring.
    assert_eq!(s.frontend.stop_ring(0).unwrap(), 6);
    assert_eq!(reap_now(&mut s.driver), vec![10, 11, 12, 13, 14]);
    // Stopped: new work is not taken and nothing is written.
    s.driver
        .submit(
            Queue::Control,
            &Request::new(GpuCommand::GetDisplayInfo),
            99,
        )
        .unwrap();
    s.driver.kick(Queue::Control).unwrap();
    assert!(nothing_completes(&mut s.driver));
    assert_eq!(s.frontend.stop_ring(1).unwrap(), 0);
    assert_eq!(s.end(), SessionEnd::Disconnected);
}

#[test]
fn get_vring_base_with_a_hung_command_returns_and_nothing_completes_after_it() {
    let mut s = connect(vhost_options());
    ctx_create(&mut s.driver, 1);
    s.driver
        .submit(Queue::Control, &slow_submit(1, 1, 0, true), 1)
        .unwrap();
    s.driver.kick(Queue::Control).unwrap();
    // The backend gives up waiting for the hung command (bounded drain) and
    // counts it as taken.
    assert_eq!(s.frontend.stop_ring(0).unwrap(), 2);
    assert!(nothing_completes(&mut s.driver));
    assert_eq!(s.end(), SessionEnd::Disconnected);
}

#[test]
fn set_vring_enable_0_then_1_under_load_loses_nothing() {
    let mut s = connect(vhost_options());
    ctx_create(&mut s.driver, 1);
    let mut next = 100;
    for _ in 0..4 {
        submit_slow(&mut s.driver, 1, next, 8, 10_000);
        s.frontend.set_ring_enabled(0, false).unwrap();
        // Disabling let the commands in flight finish...
        assert_eq!(
            reap_now(&mut s.driver),
            (next..next + 8).collect::<Vec<_>>()
        );
        // ...and nothing new is taken while disabled...
        submit_slow(&mut s.driver, 1, next + 8, 4, 0);
        assert!(nothing_completes(&mut s.driver));
        // ...until it is enabled again.
        s.frontend.set_ring_enabled(0, true).unwrap();
        let done = s.driver.wait_n(4, T).unwrap();
        let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
        tags.sort_unstable();
        assert_eq!(tags, (next + 8..next + 12).collect::<Vec<_>>());
        next += 100;
    }
    display_info_ok(&mut s.driver);
    assert_eq!(s.end(), SessionEnd::Disconnected);
}

// ---- ring features and descriptor shapes ---------------------------------

#[test]
fn every_combination_of_event_idx_and_indirect_desc_serves_the_guest() {
    for event_idx in [false, true] {
        for indirect in [false, true] {
            let mut s = connect(VhostOptions {
                queue_features: QueueFeatures {
                    event_idx,
                    indirect,
                },
                ..vhost_options()
            });
            let q = s.frontend.negotiated().queue_features;
            assert_eq!((q.event_idx, q.indirect), (event_idx, indirect));
            ctx_create(&mut s.driver, 1);
            // More than a ring's worth, in batches, fenced and not.
            for batch in 0..3u64 {
                for i in 0..100 {
                    let tag = batch * 1000 + i;
                    let req = if i % 2 == 0 {
                        slow_submit(1, tag + 1, 0, false)
                    } else {
                        Request::new(GpuCommand::GetDisplayInfo)
                    };
                    s.driver.submit(Queue::Control, &req, tag).unwrap();
                }
                s.driver.kick(Queue::Control).unwrap();
                let done = s.driver.wait_n(100, T).unwrap();
                assert!(done.iter().all(|c| c.response.is_ok()));
            }
            assert_eq!(s.end(), SessionEnd::Disconnected);
        }
    }
}

/// Raw set-up with our own ring (the driver model always uses two buffers).
fn raw_ring(indirect: bool) -> (Running, GuestRam, DriverQueue, std::os::fd::OwnedFd) {
    let r = start(options());
    let ram = guest_ram();
    let f = &r.frontend;
    let features = f.get_u64(FrontendReq::GET_FEATURES);
    let proto = f.get_u64(FrontendReq::GET_PROTOCOL_FEATURES);
    f.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, proto);
    let mut acked = (1 << 32) | PROTOCOL_FEATURES;
    if indirect {
        acked |= 1 << gpu::device::VIRTIO_RING_F_INDIRECT_DESC;
    }
    assert_eq!(
        f.acked(
            FrontendReq::SET_FEATURES,
            &(features & acked).to_ne_bytes(),
            &[]
        ),
        0
    );
    f.add_ram(&ram);
    let q = DriverQueue::new(
        &ram,
        RING_SIZE,
        QueueFeatures {
            event_idx: false,
            indirect,
        },
    )
    .unwrap();
    f.ring_layout(0, &ram, &q, 0);
    let (kick, call) = (eventfd(), eventfd());
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, 0, &call), 0);
    assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, 0, &kick), 0);
    f.enable(0, true);
    (r, ram, q, kick)
}

/// GET_DISPLAY_INFO with its request in 1-byte pieces and its response
/// area in `resp_pieces` pieces; returns the response bytes.
fn scattered_display_info(
    ram: &GuestRam,
    q: &mut DriverQueue,
    kick: &std::os::fd::OwnedFd,
    resp_pieces: u32,
) -> Vec<u8> {
    let req = Request::new(GpuCommand::GetDisplayInfo).to_bytes();
    let resp_len = 24 + 16 * 24;
    let piece = (resp_len as u32).div_ceil(resp_pieces);
    let base = ram.alloc(4096, 64).unwrap();
    ram.memory().write_slice(&req, base).unwrap();
    let mut bufs: Vec<Buf> = (0..req.len() as u64)
        .map(|i| Buf::readable(GuestAddress(base.0 + i), 1))
        .collect();
    let resp = GuestAddress(base.0 + 1024);
    bufs.extend(
        (0..resp_pieces).map(|i| Buf::writable(GuestAddress(resp.0 + u64::from(i * piece)), piece)),
    );
    q.add(&bufs).unwrap();
    q.publish().unwrap();
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local to an eventfd we own.
    unsafe {
        libc::write(
            std::os::fd::AsRawFd::as_raw_fd(kick),
            (&one as *const u64).cast(),
            8,
        )
    };
    let deadline = std::time::Instant::now() + T;
    let used = loop {
        if let Some(u) = q.pop_used().unwrap() {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "no completion");
        thread::sleep(Duration::from_millis(1));
    };
    let mut out = vec![0u8; used.len as usize];
    ram.memory().read_slice(&mut out, resp).unwrap();
    out
}

fn assert_display_info(bytes: &[u8]) {
    assert_eq!(bytes.len(), 24 + 16 * 24);
    let kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    assert_eq!(kind, 0x1101, "RESP_OK_DISPLAY_INFO");
    let width = u32::from_le_bytes(bytes[24 + 8..24 + 12].try_into().unwrap());
    assert_eq!(width, 1280);
}

#[test]
fn a_long_direct_chain_is_gathered_and_answered_across_its_buffers() {
    let (_r, ram, mut q, kick) = raw_ring(false);
    // 24 one-byte readable buffers + 17 writable ones: 41 descriptors.
    assert_display_info(&scattered_display_info(&ram, &mut q, &kick, 17));
}

#[test]
fn an_indirect_table_with_a_long_chain_is_gathered_and_answered() {
    let (_r, ram, mut q, kick) = raw_ring(true);
    assert_display_info(&scattered_display_info(&ram, &mut q, &kick, 17));
    // A short indirect chain too (request + one response buffer).
    assert_display_info(&scattered_display_info(&ram, &mut q, &kick, 1));
}

// ---- config space ---------------------------------------------------------

#[test]
fn config_space_values_and_events_clear_is_write_to_clear() {
    let r = start(options_with_outputs(3));
    let f = &r.frontend;
    f.negotiate();
    let read = || {
        let mut p = VhostUserConfig::new(0, 16, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        p.resize(p.len() + 16, 0);
        f.send(FrontendReq::GET_CONFIG, 0, &p, &[]);
        let m = f.reply_for(FrontendReq::GET_CONFIG);
        let w =
            |i: usize| u32::from_le_bytes(m.payload[12 + 4 * i..16 + 4 * i].try_into().unwrap());
        [w(0), w(1), w(2), w(3)]
    };
    // events_read, events_clear, num_scanouts, num_capsets (sim: 1).
    assert_eq!(read(), [0, 0, 3, 1]);
    let write = |offset: u32, value: u32| {
        let mut p = VhostUserConfig::new(offset, 4, VhostUserConfigFlags::WRITABLE)
            .as_slice()
            .to_vec();
        p.extend_from_slice(&value.to_le_bytes());
        assert_eq!(f.acked(FrontendReq::SET_CONFIG, &p, &[]), 0);
    };
    // events_clear reads back 0 and clears nothing that is not set.
    write(4, u32::MAX);
    assert_eq!(read(), [0, 0, 3, 1]);
    // The other fields are read-only: writes are ignored.
    write(8, 9);
    write(12, 9);
    write(0, 9);
    assert_eq!(read(), [0, 0, 3, 1]);
}

#[test]
fn loadgen_reads_the_config_the_backend_reports() {
    let s = connect(vhost_options());
    let c = s.frontend.negotiated().config.unwrap();
    assert_eq!(
        (c.events_read, c.events_clear, c.num_scanouts, c.num_capsets),
        (0, 0, 1, 1)
    );
    assert_eq!(s.end(), SessionEnd::Disconnected);
}

// ---- broken frontends -----------------------------------------------------

fn server() -> (
    Arc<Backend>,
    std::path::PathBuf,
    gpu::vhost::ServerStop,
    JoinHandle<()>,
) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("gpu-reactor-conf-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("vhost.sock");
    let backend = Arc::new(Backend::start(options()).unwrap());
    let server = Server::bind(&path, backend.clone()).unwrap();
    let stop = server.stopper();
    let t = thread::spawn(move || server.run().unwrap());
    (backend, path, stop, t)
}

#[test]
fn each_broken_frontend_gets_one_log_line_and_a_close_and_the_next_is_served() {
    let logs = support::logs();
    let (_backend, path, stop, t) = server();
    let ram = guest_ram();
    let region = VhostUserSingleMemoryRegion::new(
        ram.base().0,
        ram.size(),
        ram.userspace_addr(),
        ram.mmap_offset(),
    );
    // (what the frontend does, a piece of the log line naming it)
    type Misbehave = Box<dyn Fn(&Frontend)>;
    let cases: Vec<(Misbehave, &str)> = vec![
        (
            Box::new(|f| {
                f.negotiate();
                let mut table = VhostUserMemory::new(1).as_slice().to_vec();
                table.extend_from_slice(
                    VhostUserMemoryRegion::new(0, 1 << 20, 0x1000_0000, 0).as_slice(),
                );
                f.send(FrontendReq::SET_MEM_TABLE, 0, &table, &[]);
            }),
            "SET_MEM_TABLE: 1 regions but 0 file descriptors",
        ),
        (
            Box::new(|f| {
                f.negotiate();
                let (a, b) = (eventfd(), eventfd());
                f.send(
                    FrontendReq::SET_VRING_KICK,
                    0,
                    &0u64.to_ne_bytes(),
                    &[a.as_fd(), b.as_fd()],
                );
            }),
            "SET_VRING_KICK: 2 file descriptors (exactly 1 expected)",
        ),
        (
            Box::new(|f| {
                f.negotiate();
                f.send(FrontendReq::SET_VRING_CALL, 0, &0u64.to_ne_bytes(), &[]);
            }),
            "SET_VRING_CALL: 0 file descriptors (exactly 1 expected)",
        ),
        (
            Box::new(|f| {
                let s = VhostUserVringState::new(0, 100);
                f.send(FrontendReq::SET_VRING_NUM, 0, s.as_slice(), &[]);
            }),
            "SET_VRING_NUM: ring size 100",
        ),
        (
            Box::new(|f| {
                f.send(FrontendReq::GET_FEATURES, FLAG_REPLY, &[], &[]);
            }),
            "GET_FEATURES: a request must not carry the reply flag",
        ),
        (
            Box::new(|f| {
                f.send_raw(
                    Header {
                        request: FrontendReq::GET_FEATURES as u32,
                        flags: 0x2,
                        size: 0,
                    },
                    &[],
                );
            }),
            "has protocol version 2",
        ),
        (
            Box::new(|f| {
                // Announces 8 bytes, sends 4, hangs up.
                f.send_raw(
                    Header::request(FrontendReq::SET_FEATURES as u32, 0, 8),
                    &[0; 4],
                );
                f.sock.shutdown(std::net::Shutdown::Write).unwrap();
            }),
            "inside the payload of request 2",
        ),
        (
            // Out of order: memory slots before protocol features.
            Box::new(move |f| {
                let fd = eventfd();
                f.send(
                    FrontendReq::ADD_MEM_REG,
                    0,
                    region.as_slice(),
                    &[fd.as_fd()],
                );
            }),
            "ADD_MEM_REG: needs protocol feature",
        ),
        (
            Box::new(move |f| {
                f.negotiate();
                f.send(FrontendReq::REM_MEM_REG, 0, region.as_slice(), &[]);
            }),
            "REM_MEM_REG: no memory region",
        ),
        (
            // Out of order: the layout of a running ring changes.
            Box::new(|f| {
                let ram = guest_ram();
                let _d = f.bring_up(&ram);
                let s = VhostUserVringState::new(0, 128);
                f.send(
                    FrontendReq::SET_VRING_NUM,
                    FLAG_NEED_REPLY,
                    s.as_slice(),
                    &[],
                );
            }),
            "SET_VRING_NUM: ring 0 is running",
        ),
        (
            Box::new(|f| {
                f.send_raw(Header::request(1234, 0, 0), &[]);
            }),
            "request 1234: unknown request",
        ),
    ];
    for (misbehave, why) in &cases {
        let f = Frontend::connect(&path);
        misbehave(&f);
        // Replies to earlier requests may come first; then the close.
        while let Ok(m) = gpu::vhost::frame::recv(&f.sock) {
            assert!(m.header.is_reply());
        }
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(why)).collect();
        assert_eq!(lines.len(), 1, "want one line with {why:?} in:\n{text}");
        assert!(
            lines[0].contains("closing vhost-user connection"),
            "{}",
            lines[0]
        );
    }
    // The daemon is ready for the next frontend.
    let f = Frontend::connect(&path);
    let mut d = f.bring_up(&ram);
    display_info_ok(&mut d);
    drop(f);
    stop.stop();
    t.join().unwrap();
}

#[test]
fn fenced_commands_carry_their_fence_back_through_vhost_user() {
    let mut s = connect(vhost_options());
    ctx_create(&mut s.driver, 1);
    let c = s
        .driver
        .call(Queue::Control, &slow_submit(1, 42, 1000, false), T)
        .unwrap();
    let (hdr, resp) = c.response.unwrap();
    assert_eq!(resp, Response::OkNodata);
    assert_eq!(hdr.flags & VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_FLAG_FENCE);
    assert_eq!(hdr.fence_id, 42);
    assert_eq!(s.backend.device().stats().unwrap().fences_pending, 0);
    assert_eq!(s.end(), SessionEnd::Disconnected);
}
