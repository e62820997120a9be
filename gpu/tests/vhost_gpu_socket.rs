//! The QEMU GPU socket (`GPU_SET_SOCKET`): what a VMM receives when the
//! guest shows pixels, and what happens when the VMM does not answer.

#[path = "vhost_support.rs"]
mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;

use std::thread;
use std::time::{Duration, Instant};

use gpu::protocol::*;
use gpu::vhost::frame::Header;
use gpu::vhost::GPU_PROTOCOL_F_EDID;
use loadgen::driver::{GpuDriver, Queue};
use support::*;
use vhost::vhost_user::gpu_message::{VirtioGpuRespDisplayInfo, VirtioGpuRespGetEdid};
use vhost::vhost_user::message::FrontendReq;
use vm_memory::{ByteValued, Bytes};

const GET_PROTOCOL_FEATURES: u32 = 1;
const SET_PROTOCOL_FEATURES: u32 = 2;
const GET_DISPLAY_INFO: u32 = 3;
const SCANOUT: u32 = 7;
const UPDATE: u32 = 8;
const GET_EDID: u32 = 11;
const REPLY: u32 = 0x4;

/// The VMM side of the GPU socket: answers what it is told to, hands every
/// message it reads to the test.
struct FakeVmm {
    messages: mpsc::Receiver<(u32, Vec<u8>)>,
}

fn read_msg(s: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let h = Header::from_bytes(&head);
    let mut payload = vec![0u8; h.size as usize];
    s.read_exact(&mut payload).ok()?;
    Some((h, payload))
}

fn reply(s: &mut UnixStream, request: u32, payload: &[u8]) {
    let h = Header {
        request,
        flags: REPLY,
        size: payload.len() as u32,
    };
    s.write_all(&h.to_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

impl FakeVmm {
    fn spawn(s: UnixStream, answer_display_info: bool) -> FakeVmm {
        FakeVmm::spawn_after(s, answer_display_info, None)
    }

    /// A VMM that reads nothing until `gate` says so (or is dropped).
    fn spawn_after(
        mut s: UnixStream,
        answer_display_info: bool,
        gate: Option<mpsc::Receiver<()>>,
    ) -> FakeVmm {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            if let Some(gate) = gate {
                let _ = gate.recv();
            }
            while let Some((h, payload)) = read_msg(&mut s) {
                match h.request {
                    GET_PROTOCOL_FEATURES => {
                        reply(&mut s, h.request, &GPU_PROTOCOL_F_EDID.to_ne_bytes())
                    }
                    GET_DISPLAY_INFO if answer_display_info => {
                        let mut info = VirtioGpuRespDisplayInfo::default();
                        info.hdr.type_ = 0x1101;
                        info.pmodes[0].r.width = 1024;
                        info.pmodes[0].r.height = 768;
                        info.pmodes[0].enabled = 1;
                        reply(&mut s, h.request, info.as_slice());
                    }
                    GET_EDID => {
                        let mut e = VirtioGpuRespGetEdid {
                            size: 128,
                            ..Default::default()
                        };
                        e.edid[0..8].copy_from_slice(&[0, 255, 255, 255, 255, 255, 255, 0]);
                        reply(&mut s, h.request, e.as_slice());
                    }
                    _ => {}
                }
                if tx.send((h.request, payload)).is_err() {
                    return;
                }
            }
        });
        FakeVmm { messages: rx }
    }

    /// The next pixel or scanout message (SCANOUT, UPDATE), skipping the
    /// display queries the backend makes in the background.
    fn next_display_output(&self) -> (u32, Vec<u8>) {
        loop {
            let (r, p) = self
                .messages
                .recv_timeout(T)
                .unwrap_or_else(|_| panic!("no SCANOUT or UPDATE from the backend"));
            if r == SCANOUT || r == UPDATE {
                return (r, p);
            }
        }
    }

    /// The next message of kind `request`, skipping others.
    fn next(&self, request: u32) -> Vec<u8> {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (r, p) = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no message {request} from the backend"));
            if r == request {
                return p;
            }
        }
    }
}

fn attach_vmm(f: &Frontend, answer_display_info: bool) -> FakeVmm {
    let (backend_end, vmm_end) = UnixStream::pair().unwrap();
    vmm_end.set_read_timeout(Some(T)).unwrap();
    let status = f.acked(FrontendReq::GPU_SET_SOCKET, &[], &[backend_end.as_fd()]);
    assert_eq!(status, 0);
    FakeVmm::spawn(vmm_end, answer_display_info)
}

fn call(d: &mut GpuDriver, req: Request) -> Response {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap().1
}

/// A 2D resource with a pattern in its backing, transferred to the host.
fn resource_with_pattern(d: &mut GpuDriver, w: u32, h: u32) -> Vec<u8> {
    let create = ResourceCreate2d {
        resource_id: ResourceId(1),
        format: Format::B8G8R8X8Unorm,
        width: w,
        height: h,
    };
    assert_eq!(
        call(d, Request::new(GpuCommand::ResourceCreate2d(create))),
        Response::OkNodata
    );
    let len = w * h * 4;
    let backing = d.ram().alloc(u64::from(len), 4096).unwrap();
    let attach = ResourceAttachBacking {
        resource_id: ResourceId(1),
        entries: vec![MemEntry {
            addr: backing.0,
            length: len,
        }],
    };
    assert_eq!(
        call(d, Request::new(GpuCommand::ResourceAttachBacking(attach))),
        Response::OkNodata
    );
    let pattern: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    d.ram().memory().write_slice(&pattern, backing).unwrap();
    let transfer = TransferToHost2d {
        rect: Rect::new(0, 0, w, h),
        offset: 0,
        resource_id: ResourceId(1),
    };
    assert_eq!(
        call(d, Request::new(GpuCommand::TransferToHost2d(transfer))),
        Response::OkNodata
    );
    pattern
}

fn show_and_flush(d: &mut GpuDriver, w: u32, h: u32) {
    let rect = Rect::new(0, 0, w, h);
    let set = SetScanout {
        rect,
        scanout_id: ScanoutId(0),
        resource_id: ResourceId(1),
    };
    assert_eq!(
        call(d, Request::new(GpuCommand::SetScanout(set))),
        Response::OkNodata
    );
    let flush = ResourceFlush {
        rect,
        resource_id: ResourceId(1),
    };
    let r = call(
        d,
        Request::new(GpuCommand::ResourceFlush(flush)).with_fence(1),
    );
    assert_eq!(r, Response::OkNodata);
}

fn u32_at(p: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(p[i * 4..i * 4 + 4].try_into().unwrap())
}

#[test]
fn set_scanout_and_flush_send_scanout_and_update_with_the_guest_pixels() {
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    let vmm = attach_vmm(f, true);

    // The handshake: features asked, EDID accepted, display info asked.
    vmm.next(GET_PROTOCOL_FEATURES);
    assert_eq!(
        vmm.next(SET_PROTOCOL_FEATURES),
        GPU_PROTOCOL_F_EDID.to_ne_bytes()
    );
    vmm.next(GET_DISPLAY_INFO);
    assert_eq!(u32_at(&vmm.next(GET_EDID), 0), 0);

    let (w, h) = (64, 32);
    let pattern = resource_with_pattern(&mut d, w, h);
    show_and_flush(&mut d, w, h);

    let scanout = vmm.next(SCANOUT);
    assert_eq!(
        [
            u32_at(&scanout, 0),
            u32_at(&scanout, 1),
            u32_at(&scanout, 2)
        ],
        [0, w, h]
    );
    let update = vmm.next(UPDATE);
    let fields: Vec<u32> = (0..5).map(|i| u32_at(&update, i)).collect();
    assert_eq!(fields, vec![0, 0, 0, w, h]);
    assert!(
        update[20..] == pattern[..],
        "UPDATE pixels differ from the guest's"
    );

    // Linux's dumb-buffer path sets the same scanout up with every frame:
    // the VMM is not told again (a SCANOUT makes QEMU build a new surface).
    show_and_flush(&mut d, w, h);
    let (kind, update) = vmm.next_display_output();
    assert_eq!(kind, UPDATE, "a SCANOUT for a mode already shown");
    assert!(update[20..] == pattern[..]);

    let cached = r.backend.display().vmm_display();
    let modes = cached.modes.expect("display info cached");
    assert_eq!(modes[0].rect, Rect::new(0, 0, 1024, 768));
    assert_eq!(cached.edid[0].as_ref().map(Vec::len), Some(128));
}

#[test]
fn a_vmm_that_never_answers_get_display_info_costs_a_timeout_not_a_hang() {
    let logs = support::logs();
    let r = start(gpu::vhost::BackendOptions {
        display_reply_timeout: Duration::from_secs(2),
        ..options()
    });
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    let vmm = attach_vmm(f, false);
    vmm.next(GET_DISPLAY_INFO);
    // The guest's own GET_DISPLAY_INFO, asked while the VMM is silent during
    // its first display fetch, waits for that fetch at most (bounded by the
    // reply timeout and the device's VMM_VIEW_WAIT), then is answered with
    // the device's modes: never held for ever behind the VMM.
    match call(&mut d, Request::new(GpuCommand::GetDisplayInfo)) {
        Response::OkDisplayInfo(modes) => assert!(modes[0].enabled),
        other => panic!("unexpected {other:?}"),
    }

    // The guest is not held up meanwhile: its flush completes and its
    // pixels go out.
    let started = Instant::now();
    let (w, h) = (16, 16);
    let pattern = resource_with_pattern(&mut d, w, h);
    show_and_flush(&mut d, w, h);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the guest waited for the VMM"
    );
    let update = vmm.next(UPDATE);
    assert!(update[20..] == pattern[..]);

    let deadline = Instant::now() + T;
    while r.backend.display().stats().reply_timeouts == 0 {
        assert!(Instant::now() < deadline, "no timeout recorded");
        thread::sleep(Duration::from_millis(20));
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        text.contains("did not answer GET_DISPLAY_INFO"),
        "no timeout log line in:\n{text}"
    );
    assert!(r.backend.display().vmm_display().modes.is_none());
    // The handshake went on without it (no EDID: features asked first were
    // answered, so EDID requests follow).
    vmm.next(GET_EDID);
}

#[test]
fn the_socket_is_dropped_when_the_session_ends() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let _vmm = attach_vmm(f, true);
    assert!(r.backend.display().is_attached());
    f.sock.shutdown(std::net::Shutdown::Both).unwrap();
    r.session.join().unwrap();
    assert!(!r.backend.display().is_attached());
}

#[test]
fn alternating_set_scanouts_to_a_vmm_that_does_not_read_stay_bounded_and_the_last_mode_wins() {
    let r = start(options());
    let f = &r.frontend;
    let ram = guest_ram();
    let mut d = f.bring_up(&ram);
    let (backend_end, vmm_end) = UnixStream::pair().unwrap();
    let (open, gate) = mpsc::channel();
    assert_eq!(
        f.acked(FrontendReq::GPU_SET_SOCKET, &[], &[backend_end.as_fd()]),
        0
    );
    let vmm = FakeVmm::spawn_after(vmm_end, true, Some(gate));
    resource_with_pattern(&mut d, 64, 64);

    // 100,000 SET_SCANOUTs switching between two modes, in batches the
    // ring holds, while the VMM reads nothing.
    let modes = [(64, 64), (32, 16)];
    let total = 100_000u64;
    let batch = 64;
    let display = r.backend.display();
    let mut most_queued = 0;
    let mut sent = 0u64;
    while sent < total {
        let n = batch.min(total - sent);
        for k in 0..n {
            let (w, h) = modes[((sent + k) % 2) as usize];
            let set = SetScanout {
                rect: Rect::new(0, 0, w, h),
                scanout_id: ScanoutId(0),
                resource_id: ResourceId(1),
            };
            d.submit(
                Queue::Control,
                &Request::new(GpuCommand::SetScanout(set)),
                sent + k,
            )
            .unwrap();
        }
        d.kick(Queue::Control).unwrap();
        for c in d.wait_n(n as usize, T).unwrap() {
            assert_eq!(c.response.unwrap().1, Response::OkNodata);
        }
        sent += n;
        most_queued = most_queued.max(display.queued_messages());
        // One SCANOUT for the scanout, and a request or two of the
        // handshake (checked as it goes: an unbounded queue fails early).
        assert!(
            most_queued <= 4,
            "{most_queued} messages waited for the VMM after {sent} SET_SCANOUTs"
        );
    }
    let (fw, fh) = modes[((total - 1) % 2) as usize];

    // The VMM reads again: the last SCANOUT it sees is the final mode, and
    // a flush after it lands on that mode.
    open.send(()).unwrap();
    let flush = ResourceFlush {
        rect: Rect::new(0, 0, fw, fh),
        resource_id: ResourceId(1),
    };
    assert_eq!(
        call(&mut d, Request::new(GpuCommand::ResourceFlush(flush))),
        Response::OkNodata
    );
    let mut scanouts = 0u64;
    let mut last = None;
    loop {
        let (kind, p) = vmm.next_display_output();
        if kind == UPDATE {
            let fields: Vec<u32> = (0..5).map(|i| u32_at(&p, i)).collect();
            assert_eq!(fields, vec![0, 0, 0, fw, fh]);
            break;
        }
        scanouts += 1;
        last = Some([u32_at(&p, 0), u32_at(&p, 1), u32_at(&p, 2)]);
    }
    assert_eq!(
        last,
        Some([0, fw, fh]),
        "the VMM's last view is not the final mode"
    );
    assert!(scanouts < total, "every SCANOUT was sent: nothing merged");
    assert_eq!(display.queued_messages(), 0);
}
