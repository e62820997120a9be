//! Interop: rust-vmm's own vhost-user frontend (the `vhost` crate's
//! `Frontend`, written independently of our backend) brings the device up
//! in the order QEMU 10 uses (shared/qemu-e2e.md), and the guest driver
//! then talks to it. Any framing or reply-format disagreement fails here.

#[path = "vhost_support.rs"]
mod support;

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;

use gpu::protocol::{GpuCommand, Request, Response};
use gpu::vhost::{offered_protocol_features, Backend, SessionEnd};
use loadgen::driver::Queue;
use support::*;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

fn event_fd(fd: OwnedFd) -> EventFd {
    // SAFETY: `fd` is an eventfd we own; ownership moves into the EventFd.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

#[test]
fn rust_vmm_frontend_brings_the_device_up_the_qemu_way() {
    let backend = Arc::new(Backend::start(options()).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let b = backend.clone();
    let session = thread::spawn(move || b.serve_stream(theirs));
    let mut fe = Frontend::from_stream(ours, 2);
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

    let features = fe.get_features().unwrap();
    let proto = fe.get_protocol_features().unwrap();
    assert_eq!(proto, offered_protocol_features());
    let wanted = VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE;
    fe.set_protocol_features(wanted).unwrap();
    // (GET_QUEUE_NUM: this frontend asks only with MQ, which a GPU does
    // not offer; vhost_session.rs covers it.)
    assert_eq!(fe.get_max_mem_slots().unwrap(), 32);
    let (backend_req, _vmm_side) = UnixStream::pair().unwrap();
    fe.set_backend_request_fd(&backend_req).unwrap();
    fe.set_owner().unwrap();

    let ram = guest_ram();
    let (mut driver, ends) = new_driver(&ram);
    let [ctrl, cursor] = ends;
    let err = EventFd::new(0).unwrap();
    fe.set_vring_call(0, &event_fd(ctrl.call)).unwrap();
    fe.set_vring_call(1, &event_fd(cursor.call)).unwrap();
    fe.set_vring_err(0, &err).unwrap();
    for _ in 0..2 {
        let (cfg, bytes) = fe
            .get_config(0, 16, VhostUserConfigFlags::empty(), &[0; 16])
            .unwrap();
        let size = cfg.size;
        assert_eq!(size, 16);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    }
    fe.set_features(features & ((1 << 32) | (1 << 29) | PROTOCOL_FEATURES))
        .unwrap();

    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: ram.base().0,
        memory_size: ram.size(),
        userspace_addr: ram.userspace_addr(),
        mmap_offset: ram.mmap_offset(),
        mmap_handle: ram.file().as_raw_fd(),
    };
    fe.add_mem_region(&region).unwrap();
    let va = |gpa: vm_memory::GuestAddress| ram.userspace_addr() + (gpa.0 - ram.base().0);
    for (i, (q, kick)) in [(Queue::Control, ctrl.kick), (Queue::Cursor, cursor.kick)]
        .into_iter()
        .enumerate()
    {
        let dq = driver.queue(q);
        fe.set_vring_num(i, dq.size()).unwrap();
        fe.set_vring_base(i, 0).unwrap();
        let config = VringConfigData {
            queue_max_size: dq.size(),
            queue_size: dq.size(),
            flags: 0,
            desc_table_addr: va(dq.desc_table()),
            used_ring_addr: va(dq.used_ring()),
            avail_ring_addr: va(dq.avail_ring()),
            log_addr: None,
        };
        fe.set_vring_addr(i, &config).unwrap();
        fe.set_vring_kick(i, &event_fd(kick)).unwrap();
        fe.set_vring_enable(i, true).unwrap();
    }

    let c = driver
        .call(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), T)
        .unwrap();
    assert!(matches!(c.response.unwrap().1, Response::OkDisplayInfo(_)));

    let (info, file) = fe
        .get_inflight_fd(&VhostUserInflight::new(0, 0, 2, RING_SIZE))
        .unwrap();
    let size = info.mmap_size;
    assert_eq!(file.metadata().unwrap().len(), size);

    // Shutdown as QEMU does it: disable, then read back where each ring is.
    fe.set_vring_enable(0, false).unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), 1);
    assert_eq!(fe.get_vring_base(1).unwrap(), 0);
    fe.reset_device().unwrap();
    drop(fe);
    assert_eq!(session.join().unwrap(), SessionEnd::Disconnected);
}
