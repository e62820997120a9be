//! The backend request channel (`SET_BACKEND_REQ_FD`) as a [`BlobMapper`]:
//! `RESOURCE_MAP_BLOB` and `RESOURCE_UNMAP_BLOB` become vhost-user
//! `SHMEM_MAP`/`SHMEM_UNMAP` requests that put a blob's memory into (or take
//! it out of) the device's host-visible shared memory region.
//!
//! The VMM may answer slowly; nothing waits for it but the blob operation
//! itself. Requests from any shard are queued to one writer task on the
//! channel's shard (one writer keeps messages whole on the stream); a
//! reader task there matches the VMM's `REPLY_ACK` status to the waiting
//! operation, which awaits it on its own shard's ring.
//!
//! Mapping needs the frontend to have negotiated `SHMEM` (the requests),
//! `BACKEND_SEND_FD` (the blob's fd rides along) and `REPLY_ACK` (to learn
//! whether it worked), and to have given a channel; otherwise the region
//! size is 0 and the device refuses `MAP_BLOB`.
//!
//! The same channel carries `CONFIG_CHANGE_MSG` ([`VmmBlobMapper::config_changed`]),
//! how a vhost-user backend raises the config interrupt: the display events
//! in `events_read` changed. It needs `CONFIG`; with `REPLY_ACK` it asks for
//! an ack, and a frontend that refuses it (QEMU's vhost-user-gpu does: it
//! keeps `events_read` itself) is not asked again on this channel.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use reactor::io::AsyncFd;
use vhost::vhost_user::message::{
    BackendReq, VhostUserMMap, VhostUserMMapFlags, VhostUserMsgValidator,
    VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vm_memory::ByteValued;

use super::frame::{self, Header, FLAG_NEED_REPLY, FLAG_REPLY};
use super::link::{self, Waiters};
use crate::blob::{BlobError, BlobFuture, BlobMapper};
use crate::render::BlobMemory;

/// The virtio-gpu shared memory region id of host-visible memory
/// (`VIRTIO_GPU_SHM_ID_HOST_VISIBLE`).
pub const SHMID_HOST_VISIBLE: u8 = 1;

/// Protocol features mapping needs besides `BACKEND_REQ`.
pub fn mapping_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::SHMEM
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK
}

struct Request {
    code: BackendReq,
    payload: Vec<u8>,
    fd: Option<Arc<OwnedFd>>,
    need_reply: bool,
}

struct Link {
    generation: u64,
    fd: AsyncFd,
    can_map: bool,
    features: VhostUserProtocolFeatures,
    /// The frontend answered a `CONFIG_CHANGE_MSG` with a failure.
    config_change_refused: bool,
    queue: VecDeque<Request>,
    waiters: Waiters<u64>,
    writer: Option<Waker>,
}

impl Link {
    fn close(mut self) {
        self.waiters.clear();
        self.queue.clear();
        // SAFETY: shutdown(2) takes no memory; the fd is open (owned by
        // `self.fd`).
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    link: Option<Link>,
    config_changes: ConfigChangeStats,
}

/// `CONFIG_CHANGE_MSG`s sent and how the frontend took them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigChangeStats {
    /// Messages written to the channel.
    pub sent: u64,
    /// Acked with status 0.
    pub acked: u64,
    /// Acked with a failure (the frontend does not take them).
    pub refused: u64,
    /// Not sent: no channel, `CONFIG` not negotiated, or refused before.
    pub skipped: u64,
}

impl State {
    fn link(&mut self, generation: u64) -> Option<&mut Link> {
        self.link.as_mut().filter(|l| l.generation == generation)
    }
}

type Shared = Arc<Mutex<State>>;

/// Maps blobs through the VMM over the backend request channel.
pub struct VmmBlobMapper {
    shard: reactor::ShardHandle,
    state: Shared,
    region: u64,
    reply_timeout: Duration,
}

impl VmmBlobMapper {
    /// A mapper with no channel yet, offering a host-visible region of
    /// `region` bytes once one is attached; its tasks run on `shard`.
    pub fn new(shard: reactor::ShardHandle, region: u64, reply_timeout: Duration) -> Self {
        VmmBlobMapper {
            shard,
            state: Arc::default(),
            region,
            reply_timeout,
        }
    }

    /// Bytes of host-visible region offered (`GET_SHMEM_CONFIG`).
    pub fn configured_region(&self) -> u64 {
        self.region
    }

    /// The `GET_SHMEM_CONFIG` answer: one region, at the host-visible id.
    pub fn shmem_config(&self) -> VhostUserShMemConfig {
        let mut sizes = [0u64; SHMID_HOST_VISIBLE as usize + 1];
        sizes[SHMID_HOST_VISIBLE as usize] = self.region;
        VhostUserShMemConfig::new(u32::from(self.region > 0), &sizes)
    }

    /// Uses `fd` as the channel; `features` are the protocol features the
    /// frontend acknowledged.
    pub fn attach(&self, fd: OwnedFd, features: VhostUserProtocolFeatures) {
        let fd = AsyncFd::new(fd);
        let can_map = features.contains(mapping_features()) && self.region > 0;
        let generation = {
            let mut st = link::lock(&self.state);
            if let Some(old) = st.link.take() {
                old.close();
            }
            st.generation += 1;
            st.link = Some(Link {
                generation: st.generation,
                fd: fd.clone(),
                can_map,
                features,
                config_change_refused: false,
                queue: VecDeque::new(),
                waiters: Waiters::default(),
                writer: None,
            });
            st.generation
        };
        if !can_map {
            tracing::info!(
                "backend channel without SHMEM, BACKEND_SEND_FD and REPLY_ACK (or no region): MAP_BLOB is refused"
            );
        }
        let state = self.state.clone();
        let started = self.shard.run(move || {
            reactor::spawn_local_named(
                "backend-channel-reader",
                reader(state.clone(), generation, fd.clone()),
            );
            reactor::spawn_local_named("backend-channel-writer", writer(state, generation, fd));
        });
        if !started {
            tracing::error!("backend channel shard is gone; blobs cannot be mapped");
            self.detach();
        }
    }

    /// Drops the channel: waiting operations fail, new ones are refused.
    pub fn detach(&self) {
        let mut st = link::lock(&self.state);
        st.generation += 1;
        if let Some(old) = st.link.take() {
            old.close();
        }
    }

    pub fn is_attached(&self) -> bool {
        link::lock(&self.state).link.is_some()
    }

    /// Queues `req` and returns the future of its status reply.
    fn send(&self, code: BackendReq, msg: VhostUserMMap, fd: Option<Arc<OwnedFd>>) -> BlobFuture {
        if !msg.is_valid() {
            let (off, len) = (msg.shm_offset, msg.len);
            return Box::pin(std::future::ready(Err(BlobError::Vmm(format!(
                "invalid {code:?} range {off:#x}+{len:#x}"
            )))));
        }
        let rx = {
            let mut st = link::lock(&self.state);
            let Some(l) = st.link.as_mut().filter(|l| l.can_map) else {
                return Box::pin(std::future::ready(Err(BlobError::NoRegion)));
            };
            let rx = l.waiters.push(code as u32);
            l.queue.push_back(Request {
                code,
                payload: msg.as_slice().to_vec(),
                fd,
                need_reply: true,
            });
            if let Some(w) = l.writer.take() {
                w.wake();
            }
            rx
        };
        let timeout = self.reply_timeout;
        Box::pin(async move {
            let mut rx = rx;
            match reactor::time::timeout(timeout, rx.recv()).await {
                Ok(Some(0)) => Ok(()),
                Ok(Some(status)) => Err(BlobError::Vmm(format!(
                    "VMM refused {code:?} (status {status:#x})"
                ))),
                Ok(None) => Err(BlobError::Vmm(format!(
                    "backend channel closed before the VMM answered {code:?}"
                ))),
                Err(_) => Err(BlobError::Vmm(format!(
                    "VMM did not answer {code:?} within {timeout:?}"
                ))),
            }
        })
    }

    /// Tells the frontend the device config changed (`CONFIG_CHANGE_MSG`:
    /// it then raises the guest's config interrupt). Nothing waits for the
    /// answer; a refusal is logged once and stops further messages on this
    /// channel.
    pub fn config_changed(&self) {
        let rx = {
            let mut st = link::lock(&self.state);
            let State {
                link,
                config_changes,
                ..
            } = &mut *st;
            let usable = link.as_mut().filter(|l| {
                l.features.contains(VhostUserProtocolFeatures::CONFIG) && !l.config_change_refused
            });
            let Some(l) = usable else {
                config_changes.skipped += 1;
                return;
            };
            let need_reply = l.features.contains(VhostUserProtocolFeatures::REPLY_ACK);
            let generation = l.generation;
            let rx = need_reply.then(|| l.waiters.push(BackendReq::CONFIG_CHANGE_MSG as u32));
            l.queue.push_back(Request {
                code: BackendReq::CONFIG_CHANGE_MSG,
                payload: Vec::new(),
                fd: None,
                need_reply,
            });
            if let Some(w) = l.writer.take() {
                w.wake();
            }
            config_changes.sent += 1;
            rx.map(|rx| (rx, generation))
        };
        let Some((mut rx, generation)) = rx else {
            return;
        };
        let (state, timeout) = (self.state.clone(), self.reply_timeout);
        self.shard.run(move || {
            reactor::spawn_local_named("config-change-ack", async move {
                let status = match reactor::time::timeout(timeout, rx.recv()).await {
                    Ok(Some(s)) => s,
                    // Channel gone or no answer: nothing to learn.
                    _ => return,
                };
                let mut st = link::lock(&state);
                if status == 0 {
                    st.config_changes.acked += 1;
                    return;
                }
                st.config_changes.refused += 1;
                if let Some(l) = st.link(generation) {
                    l.config_change_refused = true;
                    tracing::info!(
                        status,
                        "the frontend refused CONFIG_CHANGE_MSG (QEMU's vhost-user-gpu keeps \
                         the GPU config events itself); not sent again on this channel"
                    );
                }
            });
        });
    }

    /// What happened to `CONFIG_CHANGE_MSG`s so far.
    pub fn config_change_stats(&self) -> ConfigChangeStats {
        link::lock(&self.state).config_changes
    }

    fn in_region(&self, shm_offset: u64, len: u64) -> bool {
        shm_offset
            .checked_add(len)
            .is_some_and(|end| end <= self.region)
    }
}

impl BlobMapper for VmmBlobMapper {
    fn region_size(&self) -> u64 {
        match &link::lock(&self.state).link {
            Some(l) if l.can_map => self.region,
            _ => 0,
        }
    }

    fn map(&self, mem: BlobMemory, shm_offset: u64, writable: bool) -> BlobFuture {
        if !self.in_region(shm_offset, mem.size) {
            return Box::pin(std::future::ready(Err(BlobError::Vmm(format!(
                "{:#x}+{:#x} lies outside the {:#x}-byte host-visible region",
                shm_offset, mem.size, self.region
            )))));
        }
        let flags = if writable {
            VhostUserMMapFlags::WRITABLE
        } else {
            VhostUserMMapFlags::default()
        };
        let msg = VhostUserMMap {
            shmid: SHMID_HOST_VISIBLE,
            padding: [0; 7],
            fd_offset: mem.offset,
            shm_offset,
            len: mem.size,
            flags: flags.bits(),
        };
        self.send(BackendReq::SHMEM_MAP, msg, Some(mem.fd))
    }

    fn unmap(&self, shm_offset: u64, len: u64) -> BlobFuture {
        let msg = VhostUserMMap {
            shmid: SHMID_HOST_VISIBLE,
            padding: [0; 7],
            fd_offset: 0,
            shm_offset,
            len,
            flags: 0,
        };
        self.send(BackendReq::SHMEM_UNMAP, msg, None)
    }
}

/// Ends link `generation` (once). `None`: the frontend closed the channel.
fn fail(state: &Shared, generation: u64, error: Option<&str>) {
    let mut st = link::lock(state);
    if st.link(generation).is_none() {
        return;
    }
    match error {
        Some(why) => {
            tracing::warn!("backend request channel: {why}; blob map/unmap is refused from now on")
        }
        None => tracing::info!("the frontend closed the backend request channel"),
    }
    if let Some(l) = st.link.take() {
        l.close();
    }
}

/// Sends queued requests, each whole and with its fd.
async fn writer(state: Shared, generation: u64, fd: AsyncFd) {
    loop {
        let next = link::next_item(state.clone(), move |st: &mut State, waker: &Waker| {
            let Some(l) = st.link(generation) else {
                return Some(None);
            };
            match l.queue.pop_front() {
                Some(r) => Some(Some(r)),
                None => {
                    l.writer = Some(waker.clone());
                    None
                }
            }
        })
        .await;
        let Some(req) = next else {
            return;
        };
        let flags = if req.need_reply { FLAG_NEED_REPLY } else { 0 };
        let header = Header::request(req.code as u32, flags, req.payload.len());
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(&req.payload);
        let fds: Vec<_> = req.fd.iter().map(|f| f.as_fd()).collect();
        let (res, bytes) = fd.sendmsg(bytes, &fds).await;
        let res = match res {
            // The descriptors went with the first byte; the rest is plain.
            Ok(n) if n < bytes.len() => fd.write_all(bytes[n..].to_vec()).await.0,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            return fail(&state, generation, Some(&format!("write failed: {e}")));
        }
    }
}

/// Matches the VMM's status replies to the waiting operations.
async fn reader(state: Shared, generation: u64, fd: AsyncFd) {
    loop {
        match link::read_message(&fd, frame::MAX_PAYLOAD).await {
            Ok(Some((h, payload))) => {
                let mut st = link::lock(&state);
                let Some(l) = st.link(generation) else {
                    return;
                };
                if h.flags & FLAG_REPLY == 0 {
                    tracing::debug!(
                        request = h.request,
                        "frontend sent a request on the backend channel; ignored"
                    );
                    continue;
                }
                let Some(status) = frame::parse::<u64>(&payload) else {
                    drop(st);
                    return fail(
                        &state,
                        generation,
                        Some(&format!(
                            "reply to {} is {} bytes, not 8",
                            h.request,
                            payload.len()
                        )),
                    );
                };
                if !l.waiters.complete(h.request, status) {
                    tracing::debug!(
                        request = h.request,
                        "unsolicited reply on the backend channel; ignored"
                    );
                }
            }
            Ok(None) => return fail(&state, generation, None),
            Err(e) => return fail(&state, generation, Some(&format!("read failed: {e}"))),
        }
    }
}
