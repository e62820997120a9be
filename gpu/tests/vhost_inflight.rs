//! Inflight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`), driven
//! message by message: the device marks the chains it holds in the buffer
//! the frontend keeps, clears them as they reach the used ring, and a new
//! session handed that buffer resubmits what is still marked, in the order
//! it was taken, before anything new.

#[path = "vhost_support.rs"]
mod support;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread;

use gpu::device::InflightLog;
use gpu::protocol::wire::{
    VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_F_VIRGL, VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
};
use gpu::protocol::{CtxCreate, GpuCommand, Request, Response, Submit3d};
use gpu::render::sim::sim_submit;
use gpu::vhost::{Backend, InflightBuffer, InflightRegion};
use loadgen::driver::{GpuDriver, Queue};
use loadgen::frontend::GuestRam;
use support::*;
use vhost::vhost_user::message::{FrontendReq, VhostUserInflight};
use vm_memory::ByteValued;

/// `negotiate`, with the 3D feature acked too (contexts, SUBMIT_3D).
fn negotiate_3d(f: &Frontend) {
    let features = f.get_u64(FrontendReq::GET_FEATURES);
    let proto = f.get_u64(FrontendReq::GET_PROTOCOL_FEATURES);
    f.set_u64(FrontendReq::SET_PROTOCOL_FEATURES, proto);
    assert_eq!(f.acked(FrontendReq::SET_OWNER, &[], &[]), 0);
    let want = (1 << 32)
        | (1 << gpu::device::VIRTIO_RING_F_EVENT_IDX)
        | PROTOCOL_FEATURES
        | (1 << VIRTIO_GPU_F_VIRGL);
    assert_eq!(
        f.acked(
            FrontendReq::SET_FEATURES,
            &(features & want).to_ne_bytes(),
            &[]
        ),
        0
    );
}

/// `GET_INFLIGHT_FD` for both rings: the buffer, and our mapping of it.
fn get_inflight(f: &Frontend) -> (VhostUserInflight, OwnedFd, InflightRegion) {
    let req = VhostUserInflight::new(0, 0, 2, RING_SIZE);
    f.send(FrontendReq::GET_INFLIGHT_FD, 0, req.as_slice(), &[]);
    let m = f.reply_for(FrontendReq::GET_INFLIGHT_FD);
    let info = VhostUserInflight::from_slice(&m.payload).copied().unwrap();
    let fd = m.fds.into_iter().next().unwrap();
    let buf = InflightBuffer {
        fd: fd.try_clone().unwrap(),
        size: info.mmap_size,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
    };
    let region = InflightRegion::map(&buf).unwrap();
    (info, fd, region)
}

fn set_inflight(f: &Frontend, info: &VhostUserInflight, fd: &OwnedFd) {
    assert_eq!(
        f.acked(FrontendReq::SET_INFLIGHT_FD, info.as_slice(), &[fd.as_fd()]),
        0
    );
}

/// Rings laid out at `bases`, call and kick fds given, enabled.
fn start_rings(
    f: &Frontend,
    ram: &GuestRam,
    d: &GpuDriver,
    ends: &[(OwnedFd, OwnedFd)],
    bases: [u16; 2],
) {
    for (i, q) in [Queue::Control, Queue::Cursor].into_iter().enumerate() {
        let (kick, call) = &ends[i];
        let n = i as u32;
        f.ring_layout(n, ram, d.queue(q), bases[i]);
        assert_eq!(f.vring_fd(FrontendReq::SET_VRING_CALL, n, call), 0);
        assert_eq!(f.vring_fd(FrontendReq::SET_VRING_KICK, n, kick), 0);
        f.enable(n, true);
    }
}

/// A new driver; our copies of its kick and call fds (per ring).
fn driver(ram: &GuestRam) -> (GpuDriver, Vec<(OwnedFd, OwnedFd)>) {
    let (d, ends) = new_driver(ram);
    let ends = ends.into_iter().map(|e| (e.kick, e.call)).collect();
    (d, ends)
}

fn dup(ends: &[(OwnedFd, OwnedFd)]) -> Vec<(OwnedFd, OwnedFd)> {
    ends.iter()
        .map(|(k, c)| (k.try_clone().unwrap(), c.try_clone().unwrap()))
        .collect()
}

/// A second session on the same backend (the first frontend went away).
fn second_session(
    backend: &Arc<Backend>,
) -> (Frontend, thread::JoinHandle<gpu::vhost::SessionEnd>) {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(T)).unwrap();
    let b = backend.clone();
    let session = thread::spawn(move || b.serve_stream(theirs));
    (Frontend { sock: ours }, session)
}

#[test]
fn marked_chains_are_resubmitted_in_the_order_taken_and_the_ring_goes_on_after_them() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let (info, fd, region) = get_inflight(f);
    let ram = guest_ram();
    f.add_ram(&ram);
    let (mut d, ends) = driver(&ram);
    // Three commands the guest published; a previous backend took them in
    // the order 3, 1, 2 and completed none (its counters say so).
    for tag in 1..=3 {
        d.submit(
            Queue::Control,
            &Request::new(GpuCommand::GetDisplayInfo),
            tag,
        )
        .unwrap();
    }
    d.kick(Queue::Control).unwrap();
    let heads: Vec<u16> = (0..RING_SIZE)
        .filter(|&h| d.queue(Queue::Control).is_in_flight(h))
        .collect();
    assert_eq!(heads.len(), 3);
    let mut q0 = region.queue(0).unwrap();
    for &h in [heads[2], heads[0], heads[1]].iter() {
        q0.taken(h);
    }
    set_inflight(f, &info, &fd);
    // As QEMU after a backend died: the base is the used index (0).
    start_rings(f, &ram, &d, &ends, [0, 0]);
    let done = d.wait_n(3, T).unwrap();
    let order: Vec<u64> = done.iter().map(|c| c.tag).collect();
    assert_eq!(order, vec![3, 1, 2], "resubmitted in counter order");
    assert_eq!(r.backend.device().stats().unwrap().resubmitted, 3);
    // The avail entries of those three are not run again: the ring goes on
    // at used idx + 3.
    d.submit(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), 4)
        .unwrap();
    d.kick(Queue::Control).unwrap();
    assert!(matches!(
        d.wait_for(4, T).unwrap().response.unwrap().1,
        Response::OkDisplayInfo(_)
    ));
    std::thread::sleep(std::time::Duration::from_millis(50));
    d.reap().unwrap();
    assert!(d.take_completions().is_empty(), "a chain completed twice");
    let q0 = region.queue(0).unwrap();
    assert!(q0.marked().is_empty());
    assert_eq!(q0.used_idx(), 4);
}

#[test]
fn a_held_command_stays_marked_and_a_new_session_answers_it_once_with_its_fence() {
    let r = start(options());
    let f = &r.frontend;
    negotiate_3d(f);
    let (info, fd, region) = get_inflight(f);
    set_inflight(f, &info, &fd);
    let ram = guest_ram();
    f.add_ram(&ram);
    let (mut d, ends) = driver(&ram);
    start_rings(f, &ram, &d, &dup(&ends), [0, 0]);
    let create = Request::new(GpuCommand::CtxCreate(CtxCreate {
        debug_name: b"held".to_vec(),
        capset_id: 0,
    }))
    .with_ctx(7);
    assert_eq!(
        d.call(Queue::Control, &create, T)
            .unwrap()
            .response
            .unwrap()
            .1,
        Response::OkNodata
    );
    // A submit the (modelled) GPU never finishes: its chain stays taken.
    let hung = Request::new(GpuCommand::Submit3d(Submit3d {
        data: sim_submit(0, true),
    }))
    .with_ctx(7)
    .with_fence(42);
    d.submit(Queue::Control, &hung, 100).unwrap();
    d.kick(Queue::Control).unwrap();
    for _ in 0..2 {
        d.call(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), T)
            .unwrap();
    }
    let q0 = region.queue(0).unwrap();
    let held: Vec<u16> = (0..RING_SIZE)
        .filter(|&h| d.queue(Queue::Control).is_in_flight(h))
        .collect();
    assert_eq!(q0.marked(), held, "exactly the held chain is marked");
    let used = d.queue(Queue::Control).used_idx().unwrap();
    assert_eq!(q0.used_idx(), used);

    // The frontend goes away; the backend resets and serves the next one,
    // which hands over the same buffer and restarts at the used index.
    drop(r.frontend);
    let _ = r.session.join();
    let (f2, _s2) = second_session(&r.backend);
    negotiate_3d(&f2);
    set_inflight(&f2, &info, &fd);
    f2.add_ram(&ram);
    start_rings(&f2, &ram, &d, &dup(&ends), [used, 0]);
    // The new device has no context 7: the resubmitted submit is answered
    // with that error, and its fence.
    let c = d.wait_for(100, T).unwrap();
    let (hdr, resp) = c.response.unwrap();
    assert_eq!(resp, Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID));
    assert!(hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0 && hdr.fence_id == 42);
    assert_eq!(r.backend.device().stats().unwrap().resubmitted, 1);
    assert!(region.queue(0).unwrap().marked().is_empty());
    // Nothing else comes back for it.
    std::thread::sleep(std::time::Duration::from_millis(50));
    d.reap().unwrap();
    assert!(d.take_completions().is_empty());
    let _keep = File::from(fd);
}

/// An inflight buffer as a VMM might make one: a memfd of `size` bytes,
/// sealable or not.
fn vmm_memfd(size: u64, sealable: bool) -> OwnedFd {
    use std::os::fd::FromRawFd;
    let flags = libc::MFD_CLOEXEC | if sealable { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: a static NUL-terminated name; the result is checked.
    let raw = unsafe { libc::memfd_create(c"vmm-inflight".as_ptr(), flags) };
    assert!(raw >= 0);
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
    fd
}

fn log_text(logs: &std::sync::Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap()).to_string()
}

/// Rings started on a buffer the frontend made itself: a command runs and
/// the buffer records its completion.
fn rings_run_on(f: &Frontend, fd: &OwnedFd, info: &VhostUserInflight) {
    let ram = guest_ram();
    f.add_ram(&ram);
    let (mut d, ends) = driver(&ram);
    start_rings(f, &ram, &d, &ends, [0, 0]);
    assert!(matches!(
        d.call(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), T)
            .unwrap()
            .response
            .unwrap()
            .1,
        Response::OkDisplayInfo(_)
    ));
    let region = InflightRegion::map(&InflightBuffer {
        fd: fd.try_clone().unwrap(),
        size: info.mmap_size,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
    })
    .unwrap();
    let q0 = region.queue(0).unwrap();
    assert_eq!(q0.used_idx(), 1, "the completion is recorded in the buffer");
    assert!(q0.marked().is_empty());
}

#[test]
fn a_set_inflight_fd_past_the_end_of_its_file_is_refused_and_a_correct_one_is_taken() {
    let logs = support::logs();
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    // 8320 bytes (2 queues of 256) asked for in an empty file: mapping it
    // would fault at the first store when a ring starts.
    let info = VhostUserInflight::new(8320, 0, 2, RING_SIZE);
    let empty = vmm_memfd(0, true);
    assert_eq!(
        f.acked(
            FrontendReq::SET_INFLIGHT_FD,
            info.as_slice(),
            &[empty.as_fd()]
        ),
        1,
        "a buffer larger than its file was accepted"
    );
    let text = log_text(&logs);
    assert!(
        text.contains("SET_INFLIGHT_FD refused") && text.contains("8320 bytes in a 0-byte file"),
        "no refusal log line in:\n{text}"
    );
    // The session goes on and takes a buffer that fits.
    let good = vmm_memfd(8320, true);
    set_inflight(f, &info, &good);
    rings_run_on(f, &good, &info);
    assert_eq!(r.backend.device().stats().unwrap().resubmitted, 0);
}

#[test]
fn an_inflight_fd_that_could_shrink_is_refused_and_a_taken_one_is_sealed() {
    let logs = support::logs();
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let info = VhostUserInflight::new(8320, 0, 2, RING_SIZE);
    // Long enough now, but nothing stops the VMM from truncating it under
    // the mapping later.
    let unsealable = vmm_memfd(8320, false);
    assert_eq!(
        f.acked(
            FrontendReq::SET_INFLIGHT_FD,
            info.as_slice(),
            &[unsealable.as_fd()]
        ),
        1,
        "a buffer that can shrink was accepted"
    );
    let text = log_text(&logs);
    assert!(
        text.contains("F_SEAL_SHRINK"),
        "no refusal log line in:\n{text}"
    );
    // A sealable one is sealed by the backend before it is measured: the
    // VMM cannot shrink it any more.
    let sealable = vmm_memfd(8320, true);
    set_inflight(f, &info, &sealable);
    assert!(
        File::from(sealable.try_clone().unwrap())
            .set_len(0)
            .is_err(),
        "the buffer can still be truncated under the backend's mapping"
    );
    rings_run_on(f, &sealable, &info);
}

#[test]
fn the_buffer_get_inflight_fd_hands_out_keeps_its_size() {
    let r = start(options());
    let f = &r.frontend;
    f.negotiate();
    let (info, fd, _region) = get_inflight(f);
    let file = File::from(fd);
    assert!(file.set_len(0).is_err(), "shrinkable");
    assert!(file.set_len(info.mmap_size * 2).is_err(), "growable");
    assert_eq!(file.metadata().unwrap().len(), info.mmap_size);
}
