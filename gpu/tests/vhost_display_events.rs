//! Display changes: the VMM's display view is cached (the guest's
//! GET_DISPLAY_INFO never waits for the VMM) and fetched again in the
//! background when the guest asks or clears a display event; a change
//! raises `VIRTIO_GPU_EVENT_DISPLAY` in `events_read` and a
//! `CONFIG_CHANGE_MSG` on the backend request channel, the guest's
//! `events_clear` write clears it, and GET_DISPLAY_INFO and each scanout's
//! EDID then follow the VMM's new sizes.

#[path = "vhost_support.rs"]
mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use gpu::protocol::wire::{self, VIRTIO_GPU_EVENT_DISPLAY};
use gpu::protocol::*;
use gpu::vhost::frame::{self, Header, FLAG_REPLY};
use loadgen::driver::{GpuDriver, Queue};
use support::*;
use vhost::vhost_user::gpu_message::VirtioGpuRespDisplayInfo;
use vhost::vhost_user::message::{BackendReq, FrontendReq, VhostUserConfig, VhostUserConfigFlags};
use vm_memory::ByteValued;

const GET_PROTOCOL_FEATURES: u32 = 1;
const GET_DISPLAY_INFO: u32 = 3;
const GPU_REPLY: u32 = 0x4;

/// The VMM's display: a size per scanout (0x0: disabled). Shared with the
/// fake VMM thread, which answers GET_DISPLAY_INFO from it each time, and
/// offers no GPU protocol features (no GET_EDID: the backend makes each
/// scanout's EDID from the VMM's size).
type Heads = Arc<Mutex<Vec<(u32, u32)>>>;

/// `gate`: the first GET_DISPLAY_INFO is answered only once it yields.
fn fake_vmm(
    mut s: UnixStream,
    heads: Heads,
    gate: Option<mpsc::Receiver<()>>,
) -> mpsc::Receiver<u32> {
    let (tx, rx) = mpsc::channel();
    let mut gate = gate;
    thread::spawn(move || loop {
        let mut head = [0u8; 12];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let h = Header::from_bytes(&head);
        let mut payload = vec![0u8; h.size as usize];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        if tx.send(h.request).is_err() {
            return;
        }
        let body = match h.request {
            GET_PROTOCOL_FEATURES => Some(0u64.to_ne_bytes().to_vec()),
            GET_DISPLAY_INFO => {
                if let Some(gate) = &gate {
                    let _ = gate.recv_timeout(T);
                }
                let mut info = VirtioGpuRespDisplayInfo::default();
                info.hdr.type_ = 0x1101;
                for (i, &(w, h)) in heads.lock().unwrap().iter().enumerate() {
                    info.pmodes[i].r.width = w;
                    info.pmodes[i].r.height = h;
                    info.pmodes[i].enabled = u32::from(w > 0 && h > 0);
                }
                Some(info.as_slice().to_vec())
            }
            _ => None,
        };
        if h.request == GET_DISPLAY_INFO {
            gate = None;
        }
        if let Some(body) = body {
            let r = Header {
                request: h.request,
                flags: GPU_REPLY,
                size: body.len() as u32,
            };
            if s.write_all(&r.to_bytes()).is_err() || s.write_all(&body).is_err() {
                return;
            }
        }
    });
    rx
}

/// The frontend's end of the backend request channel: every request is
/// handed to the test, acked with `status` when it asks for an ack.
fn backend_channel(f: &Frontend, status: u64) -> mpsc::Receiver<(u32, bool)> {
    let (backend_end, mut ours) = UnixStream::pair().unwrap();
    assert_eq!(
        f.acked(FrontendReq::SET_BACKEND_REQ_FD, &[], &[backend_end.as_fd()]),
        0
    );
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(m) = frame::recv(&ours) {
            let need_reply = m.header.need_reply();
            if need_reply {
                let h = Header {
                    request: m.header.request,
                    flags: 0x1 | FLAG_REPLY,
                    size: 8,
                };
                let mut bytes = h.to_bytes().to_vec();
                bytes.extend_from_slice(&status.to_ne_bytes());
                if ours.write_all(&bytes).is_err() {
                    return;
                }
            }
            if tx.send((m.header.request, need_reply)).is_err() {
                return;
            }
        }
    });
    rx
}

fn attach_display(f: &Frontend, heads: &Heads) -> mpsc::Receiver<u32> {
    attach_gated_display(f, heads, None)
}

fn attach_gated_display(
    f: &Frontend,
    heads: &Heads,
    gate: Option<mpsc::Receiver<()>>,
) -> mpsc::Receiver<u32> {
    let (backend_end, vmm_end) = UnixStream::pair().unwrap();
    assert_eq!(
        f.acked(FrontendReq::GPU_SET_SOCKET, &[], &[backend_end.as_fd()]),
        0
    );
    fake_vmm(vmm_end, heads.clone(), gate)
}

/// `events_read` through GET_CONFIG, as the frontend reads it.
fn events_read(f: &Frontend) -> u32 {
    let head = VhostUserConfig::new(0, 16, VhostUserConfigFlags::empty());
    let mut p = head.as_slice().to_vec();
    p.extend_from_slice(&[0; 16]);
    f.send(FrontendReq::GET_CONFIG, 0, &p, &[]);
    let m = f.reply_for(FrontendReq::GET_CONFIG);
    let data = &m.payload[std::mem::size_of::<VhostUserConfig>()..];
    assert_eq!(data.len(), 16, "GET_CONFIG refused");
    u32::from_le_bytes(data[0..4].try_into().unwrap())
}

/// The guest's write of `events_clear` (QEMU forwards it as SET_CONFIG).
fn clear_events(f: &Frontend, mask: u32) {
    let head = VhostUserConfig::new(4, 4, VhostUserConfigFlags::WRITABLE);
    let mut p = head.as_slice().to_vec();
    p.extend_from_slice(&mask.to_le_bytes());
    assert_eq!(f.acked(FrontendReq::SET_CONFIG, &p, &[]), 0);
}

/// `Frontend::bring_up` with the driver also accepting VIRTIO_GPU_F_EDID.
fn bring_up_with_edid(f: &Frontend, ram: &loadgen::frontend::GuestRam) -> GpuDriver {
    let features = f.get_u64(FrontendReq::GET_FEATURES);
    let proto = f.get_u64(FrontendReq::GET_PROTOCOL_FEATURES);
    f.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, proto);
    assert_eq!(f.acked(FrontendReq::SET_OWNER, &[], &[]), 0);
    let wanted = (1 << 32)
        | (1 << gpu::device::VIRTIO_RING_F_EVENT_IDX)
        | PROTOCOL_FEATURES
        | (1 << wire::VIRTIO_GPU_F_EDID);
    assert_eq!(
        f.acked(
            FrontendReq::SET_FEATURES,
            &(features & wanted).to_ne_bytes(),
            &[]
        ),
        0
    );
    f.add_ram(ram);
    let (driver, ends) = new_driver(ram);
    for (i, q) in [Queue::Control, Queue::Cursor].into_iter().enumerate() {
        let loadgen::driver::QueueEnds { kick, call } = &ends[i];
        let i = i as u32;
        f.ring_layout(i, ram, driver.queue(q), 0);
        assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, i, call), 0);
        assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, i, kick), 0);
        f.enable(i, true);
    }
    driver
}

fn call(d: &mut GpuDriver, req: Request) -> Response {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap().1
}

/// The guest's GET_DISPLAY_INFO: (width, height, enabled) of `n` scanouts.
fn display_info(d: &mut GpuDriver, n: usize) -> Vec<(u32, u32, bool)> {
    match call(d, Request::new(GpuCommand::GetDisplayInfo)) {
        Response::OkDisplayInfo(modes) => modes[..n]
            .iter()
            .map(|m| (m.rect.width, m.rect.height, m.enabled))
            .collect(),
        other => panic!("GET_DISPLAY_INFO answered {other:?}"),
    }
}

/// The preferred size in the guest's EDID of `scanout` (first detailed
/// timing descriptor, bytes 54..72).
fn edid_size(d: &mut GpuDriver, scanout: u32) -> (u32, u32) {
    let req = Request::new(GpuCommand::GetEdid(GetEdid {
        scanout_id: ScanoutId(scanout),
    }));
    match call(d, req) {
        Response::OkEdid(blob) => {
            let e = blob.as_bytes();
            let w = u32::from(e[56]) | (u32::from(e[58] & 0xf0) << 4);
            let h = u32::from(e[59]) | (u32::from(e[61] & 0xf0) << 4);
            (w, h)
        }
        other => panic!("GET_EDID {scanout} answered {other:?}"),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn recv_request(rx: &mpsc::Receiver<(u32, bool)>) -> (u32, bool) {
    rx.recv_timeout(T)
        .expect("no request on the backend channel")
}

#[test]
fn a_vmm_display_change_raises_the_display_event_until_the_guest_clears_it() {
    let r = start(options_with_outputs(2));
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = bring_up_with_edid(f, &ram);
    let requests = backend_channel(f, 0);
    let heads: Heads = Arc::new(Mutex::new(vec![(1024, 768), (800, 600)]));
    let _vmm = attach_display(f, &heads);
    let display = r.backend.display();
    wait_until("the VMM's display info", || {
        display.vmm_display().modes.is_some()
    });

    // The VMM's view, each scanout's EDID at that scanout's size.
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1024, 768, true), (800, 600, true)]
    );
    assert_eq!(edid_size(&mut d, 0), (1024, 768));
    assert_eq!(edid_size(&mut d, 1), (800, 600));
    assert_eq!(events_read(f), 0);

    // The VMM's second display changes size. The guest's query is answered
    // from the cache at once (the old size), and makes the backend look.
    heads.lock().unwrap()[1] = (1280, 720);
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1024, 768, true), (800, 600, true)]
    );
    // The change is announced: a config-change message asking for an ack,
    // and the event in the config the guest reads.
    assert_eq!(
        recv_request(&requests),
        (BackendReq::CONFIG_CHANGE_MSG as u32, true)
    );
    assert_eq!(events_read(f), VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(r.backend.events_read(), VIRTIO_GPU_EVENT_DISPLAY);

    // What the guest then asks shows the new size, in its EDID too.
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1024, 768, true), (1280, 720, true)]
    );
    assert_eq!(edid_size(&mut d, 0), (1024, 768));
    assert_eq!(edid_size(&mut d, 1), (1280, 720));

    // The guest's events_clear write clears it; the look it triggers finds
    // nothing new: no second event.
    clear_events(f, VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(events_read(f), 0);
    let refreshes_before = display.stats().vmm_refreshes;
    display.refresh();
    wait_until("a refresh after the clear", || {
        display.stats().vmm_refreshes > refreshes_before
    });
    assert_eq!(events_read(f), 0);
    assert_eq!(display.stats().vmm_changes, 1);
    let cc = r.backend.blob_mapper().config_change_stats();
    assert_eq!((cc.sent, cc.acked, cc.refused), (1, 1, 0));
    assert!(
        requests.try_recv().is_err(),
        "a second config change without a display change"
    );

    // A display disabled by the VMM is a change too.
    heads.lock().unwrap()[1] = (0, 0);
    display_info(&mut d, 2);
    assert_eq!(
        recv_request(&requests),
        (BackendReq::CONFIG_CHANGE_MSG as u32, true)
    );
    assert_eq!(events_read(f), VIRTIO_GPU_EVENT_DISPLAY);
    assert!(!display_info(&mut d, 2)[1].2, "scanout 1 still enabled");
}

/// QEMU raises the event itself (it keeps `events_read`) and forwards the
/// guest's `events_clear` write: that write makes the backend look again,
/// so the guest's next query sees the new view. QEMU refuses
/// `CONFIG_CHANGE_MSG` (status 1): the backend then stops sending it.
#[test]
fn a_forwarded_events_clear_refreshes_and_a_refused_config_change_is_not_repeated() {
    let r = start(options_with_outputs(2));
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = bring_up_with_edid(f, &ram);
    let requests = backend_channel(f, 1);
    let heads: Heads = Arc::new(Mutex::new(vec![(1280, 800), (0, 0)]));
    let _vmm = attach_display(f, &heads);
    let display = r.backend.display();
    wait_until("the VMM's display info", || {
        display.vmm_display().modes.is_some()
    });
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1280, 800, true), (0, 0, false)]
    );
    // The configured EDID size stands in for a disabled scanout.
    assert_eq!(edid_size(&mut d, 0), (1280, 800));

    // The VMM's UI opens the second display and tells the guest itself;
    // the guest clears the event, which reaches the backend.
    heads.lock().unwrap()[1] = (640, 480);
    clear_events(f, VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(
        recv_request(&requests),
        (BackendReq::CONFIG_CHANGE_MSG as u32, true)
    );
    wait_until("the refused ack", || {
        r.backend.blob_mapper().config_change_stats().refused == 1
    });
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1280, 800, true), (640, 480, true)]
    );
    assert_eq!(edid_size(&mut d, 1), (640, 480));

    // Another change: the event is raised in the config, but the frontend
    // that refused is not asked again.
    heads.lock().unwrap()[0] = (1920, 1080);
    clear_events(f, VIRTIO_GPU_EVENT_DISPLAY);
    wait_until("the second change", || display.stats().vmm_changes == 2);
    assert_eq!(events_read(f), VIRTIO_GPU_EVENT_DISPLAY);
    let cc = r.backend.blob_mapper().config_change_stats();
    assert_eq!((cc.sent, cc.refused, cc.skipped), (1, 1, 1));
    assert!(requests.try_recv().is_err());
    assert_eq!(edid_size(&mut d, 0), (1920, 1080));
}

/// The guest asks while a newly connected VMM display is being asked for its
/// view the first time (QEMU connects it just before the guest's first
/// queries): the query waits for that view instead of being answered with
/// the device's own modes, and no event is needed afterwards.
#[test]
fn a_guest_query_during_the_first_fetch_is_answered_with_the_vmm_view() {
    let r = start(gpu::vhost::BackendOptions {
        display_reply_timeout: T,
        ..options_with_outputs(2)
    });
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = bring_up_with_edid(f, &ram);
    let requests = backend_channel(f, 0);
    let heads: Heads = Arc::new(Mutex::new(vec![(1024, 768), (0, 0)]));
    let (open_gate, gate) = mpsc::channel();
    let vmm = attach_gated_display(f, &heads, Some(gate));
    let deadline = Instant::now() + T;
    while vmm.recv_timeout(T).expect("no GET_DISPLAY_INFO") != GET_DISPLAY_INFO {
        assert!(Instant::now() < deadline);
    }
    // The VMM answers once the guest's query is in the device (held).
    let backend = r.backend.clone();
    let before = backend.device().stats().unwrap();
    let opener = thread::spawn(move || {
        wait_until("the guest's query taken and held", || {
            let s = backend.device().stats().unwrap();
            s.chains > before.chains
        });
        assert_eq!(
            backend.device().stats().unwrap().completed,
            before.completed
        );
        open_gate.send(()).unwrap();
    });
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1024, 768, true), (0, 0, false)]
    );
    opener.join().unwrap();
    assert_eq!(edid_size(&mut d, 0), (1024, 768));
    assert_eq!(events_read(f), 0);
    assert_eq!(r.backend.display().stats().vmm_changes, 0);
    assert!(requests.try_recv().is_err(), "a config change for nothing");
}

/// A VMM slower than the device's bound on that wait (2 s): the guest is
/// answered with the device's own modes, and when the VMM's view arrives it
/// is told, as of any other display change.
#[test]
fn a_guest_answered_before_the_vmm_spoke_is_told_when_the_vmm_view_arrives() {
    let r = start(gpu::vhost::BackendOptions {
        display_reply_timeout: T,
        ..options_with_outputs(2)
    });
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = bring_up_with_edid(f, &ram);
    let requests = backend_channel(f, 0);
    let heads: Heads = Arc::new(Mutex::new(vec![(1024, 768), (0, 0)]));
    let (open_gate, gate) = mpsc::channel();
    let vmm = attach_gated_display(f, &heads, Some(gate));
    // The handshake has asked for the display info; the VMM sits on it.
    let deadline = Instant::now() + T;
    while vmm.recv_timeout(T).expect("no GET_DISPLAY_INFO") != GET_DISPLAY_INFO {
        assert!(Instant::now() < deadline);
    }
    // The device's own modes (two scanouts at the configured size).
    let own = display_info(&mut d, 2);
    assert!(own.iter().all(|m| m.2), "{own:?}");
    assert_ne!(own, vec![(1024, 768, true), (0, 0, false)]);
    assert_eq!(events_read(f), 0);

    open_gate.send(()).unwrap();
    assert_eq!(
        recv_request(&requests),
        (BackendReq::CONFIG_CHANGE_MSG as u32, true)
    );
    assert_eq!(events_read(f), VIRTIO_GPU_EVENT_DISPLAY);
    assert_eq!(
        display_info(&mut d, 2),
        vec![(1024, 768, true), (0, 0, false)]
    );
    assert_eq!(edid_size(&mut d, 0), (1024, 768));
}
