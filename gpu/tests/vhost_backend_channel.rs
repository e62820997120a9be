//! Blob map/unmap through the VMM over the backend request channel
//! (`SHMEM_MAP`/`SHMEM_UNMAP`): what the VMM receives, and that the
//! operation waits for the VMM's answer without blocking a shard.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use gpu::blob::{BlobError, BlobMapper};
use gpu::render::BlobMemory;
use gpu::vhost::frame::{self, Header};
use gpu::vhost::{mapping_features, VmmBlobMapper, SHMID_HOST_VISIBLE};
use vhost::vhost_user::message::{BackendReq, VhostUserMMap, VhostUserProtocolFeatures};

const T: Duration = Duration::from_secs(10);
const REGION: u64 = 1 << 20;

fn blob(size: u64) -> BlobMemory {
    // SAFETY: a static NUL-terminated name; result checked.
    let fd = unsafe { libc::memfd_create(c"blob".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
    BlobMemory {
        fd: Arc::new(fd),
        offset: 0,
        size,
    }
}

struct Setup {
    mapper: Arc<VmmBlobMapper>,
    vmm: UnixStream,
    // Last: shards stop after the mapper's tasks are gone.
    reactor: reactor::Reactor,
}

fn setup(features: VhostUserProtocolFeatures, timeout: Duration) -> Setup {
    let reactor = reactor::Reactor::builder().shards(1).build().unwrap();
    let mapper = Arc::new(VmmBlobMapper::new(
        reactor.shard(0).clone(),
        REGION,
        timeout,
    ));
    let (ours, vmm) = UnixStream::pair().unwrap();
    vmm.set_read_timeout(Some(T)).unwrap();
    mapper.attach(ours.into(), features);
    Setup {
        mapper,
        vmm,
        reactor,
    }
}

fn all_features() -> VhostUserProtocolFeatures {
    mapping_features() | VhostUserProtocolFeatures::BACKEND_REQ
}

#[test]
fn map_blob_is_a_shmem_map_with_the_blob_fd_that_waits_for_the_vmm() {
    let s = setup(all_features(), T);
    assert_eq!(s.mapper.region_size(), REGION);
    let m = s.mapper.clone();
    let job = s
        .reactor
        .shard(0)
        .spawn(move || m.map(blob(8192), 0x2000, true));

    let msg = frame::recv(&s.vmm).unwrap();
    assert_eq!(msg.header.request, BackendReq::SHMEM_MAP as u32);
    assert!(msg.header.need_reply());
    assert_eq!(msg.fds.len(), 1, "the blob's fd goes with the request");
    let req: VhostUserMMap = frame::parse(&msg.payload).unwrap();
    let (shmid, off, len, flags) = (req.shmid, req.shm_offset, req.len, req.flags);
    assert_eq!(
        (shmid, off, len, flags),
        (SHMID_HOST_VISIBLE, 0x2000, 8192, 1)
    );

    thread::sleep(Duration::from_millis(50));
    assert!(!job.is_finished(), "finished before the VMM answered");
    frame::send(
        &s.vmm,
        Header::reply_to(msg.header.request, 8),
        &0u64.to_ne_bytes(),
        &[],
    )
    .unwrap();
    assert_eq!(job.join().unwrap(), Ok(()));
}

#[test]
fn a_refused_unmap_reports_the_vmm_status() {
    let s = setup(all_features(), T);
    let m = s.mapper.clone();
    let job = s.reactor.shard(0).spawn(move || m.unmap(0x1000, 4096));
    let msg = frame::recv(&s.vmm).unwrap();
    assert_eq!(msg.header.request, BackendReq::SHMEM_UNMAP as u32);
    assert!(msg.fds.is_empty());
    frame::send(
        &s.vmm,
        Header::reply_to(msg.header.request, 8),
        &5u64.to_ne_bytes(),
        &[],
    )
    .unwrap();
    assert!(matches!(job.join().unwrap(), Err(BlobError::Vmm(why)) if why.contains("0x5")));
}

#[test]
fn without_shmem_negotiated_there_is_no_region_and_map_is_refused() {
    let s = setup(
        VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::REPLY_ACK,
        T,
    );
    assert_eq!(s.mapper.region_size(), 0);
    let m = s.mapper.clone();
    let r = s
        .reactor
        .shard(0)
        .spawn(move || m.map(blob(4096), 0, false))
        .join()
        .unwrap();
    assert_eq!(r, Err(BlobError::NoRegion));
}

#[test]
fn a_map_outside_the_region_never_reaches_the_vmm() {
    let s = setup(all_features(), T);
    let m = s.mapper.clone();
    let r = s
        .reactor
        .shard(0)
        .spawn(move || m.map(blob(8192), REGION - 4096, false))
        .join()
        .unwrap();
    assert!(matches!(r, Err(BlobError::Vmm(_))));
}

#[test]
fn a_vmm_that_never_answers_fails_the_map_after_the_timeout() {
    let s = setup(all_features(), Duration::from_millis(100));
    let m = s.mapper.clone();
    let job = s.reactor.shard(0).spawn(move || m.map(blob(4096), 0, true));
    let _unanswered = frame::recv(&s.vmm).unwrap();
    assert!(
        matches!(job.join().unwrap(), Err(BlobError::Vmm(why)) if why.contains("did not answer"))
    );
}

#[test]
fn a_closed_channel_fails_waiting_maps_and_refuses_new_ones() {
    let s = setup(all_features(), T);
    let m = s.mapper.clone();
    let job = s.reactor.shard(0).spawn(move || m.map(blob(4096), 0, true));
    let _unanswered = frame::recv(&s.vmm).unwrap();
    drop(s.vmm);
    assert!(matches!(job.join().unwrap(), Err(BlobError::Vmm(_))));
    let deadline = std::time::Instant::now() + T;
    while s.mapper.is_attached() {
        assert!(std::time::Instant::now() < deadline);
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.mapper.region_size(), 0);
}
