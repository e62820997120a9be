//! The backend request channel (`SET_BACKEND_REQ_FD`), VMM side: the backend
//! asks, loadgen answers. `SHMEM_MAP`/`SHMEM_UNMAP` are carried out on the
//! [`HostVisibleRegion`]; `CONFIG_CHANGE_MSG` (the device config changed,
//! e.g. a display event) is counted and accepted; anything else is answered
//! with a failure. With
//! REPLY_ACK every request that asks for an ack gets one, after the optional
//! delay that models a slow VMM (`slow-map`).
//!
//! A plain thread with blocking reads: this is the VMM, not a backend shard.

use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    BackendReq, VhostUserMMap, VhostUserMMapFlags, VhostUserMsgValidator,
};
use vm_memory::ByteValued;

use super::framing::{self, Header, FLAG_REPLY, FLAG_VERSION_1};
use super::shmem_region::HostVisibleRegion;

/// Largest request accepted on this channel (the vhost-user limit).
const MAX_REQUEST: u32 = 4096;

/// The host-visible region and how the VMM answers map requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmemOptions {
    /// Bytes of address space reserved (0: no region; every map fails).
    /// When the backend reports a size for `shmid` (`GET_SHMEM_CONFIG`),
    /// that size is used instead.
    pub region_size: u64,
    /// The shared memory id maps must name (virtio-gpu's host-visible
    /// region is 1).
    pub shmid: u8,
    /// Wait this long before carrying out and answering each request.
    pub delay: Duration,
}

impl Default for ShmemOptions {
    /// 256 MiB for shmid 1, answered at once.
    fn default() -> Self {
        Self {
            region_size: 256 << 20,
            shmid: gpu::protocol::wire::VIRTIO_GPU_SHM_ID_HOST_VISIBLE,
            delay: Duration::ZERO,
        }
    }
}

/// What the backend asked for and how it went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendReqStats {
    /// `SHMEM_MAP` carried out.
    pub maps: u64,
    /// `SHMEM_UNMAP` carried out.
    pub unmaps: u64,
    /// Map or unmap requests refused (bad range, overlap, wrong shmid...).
    pub refused: u64,
    /// Requests that broke the protocol (bad size, missing fd, an ack asked
    /// for without REPLY_ACK).
    pub malformed: u64,
    /// `CONFIG_CHANGE_MSG`s (accepted).
    pub config_changes: u64,
    /// Other requests (answered with a failure).
    pub other: u64,
}

/// The thread serving the channel.
pub(crate) struct BackendReqServer {
    /// Our end, kept to shut the socket down and wake the thread.
    sock: UnixStream,
    closing: Arc<AtomicBool>,
    stats: Arc<Mutex<BackendReqStats>>,
    thread: Option<JoinHandle<()>>,
}

struct Channel {
    sock: UnixStream,
    region: Option<Arc<HostVisibleRegion>>,
    opts: ShmemOptions,
    reply_ack: bool,
    closing: Arc<AtomicBool>,
    stats: Arc<Mutex<BackendReqStats>>,
}

impl BackendReqServer {
    /// Starts serving; returns the end to hand to the backend.
    pub(crate) fn start(
        region: Option<Arc<HostVisibleRegion>>,
        opts: ShmemOptions,
        reply_ack: bool,
    ) -> io::Result<(Self, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let closing = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(BackendReqStats::default()));
        let channel = Channel {
            sock: ours.try_clone()?,
            region,
            opts,
            reply_ack,
            closing: Arc::clone(&closing),
            stats: Arc::clone(&stats),
        };
        let thread = std::thread::Builder::new()
            .name("vhost-backend-req".into())
            .spawn(move || channel.serve())?;
        Ok((
            Self {
                sock: ours,
                closing,
                stats,
                thread: Some(thread),
            },
            theirs,
        ))
    }

    pub(crate) fn stats(&self) -> BackendReqStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for BackendReqServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The outcome sent back in an ack: 0, or a negative errno.
type Status = Result<(), i32>;

impl Channel {
    fn serve(self) {
        let mut payload = Vec::new();
        loop {
            let (header, fds) = match framing::recv_header(&self.sock) {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) => {
                    if !self.closing.load(Ordering::Acquire) {
                        tracing::warn!("backend request channel: {e}");
                    }
                    break;
                }
            };
            let status = if header.size > MAX_REQUEST {
                self.count(|s| s.malformed += 1);
                tracing::warn!(
                    "backend request {} with a {}-byte payload: refused",
                    header.request,
                    header.size
                );
                if framing::discard_payload(&self.sock, u64::from(header.size)).is_err() {
                    break;
                }
                Err(libc::EMSGSIZE)
            } else {
                if framing::recv_payload(&self.sock, header.size as usize, &mut payload).is_err() {
                    break;
                }
                if !self.opts.delay.is_zero() {
                    std::thread::sleep(self.opts.delay);
                }
                self.handle(header, &payload, fds)
            };
            if header.needs_reply() && self.ack(header, status).is_err() {
                break;
            }
        }
    }

    fn handle(&self, header: Header, payload: &[u8], fds: Vec<File>) -> Status {
        match BackendReq::try_from(header.request) {
            Ok(BackendReq::SHMEM_MAP) => {
                let (req, fd) = match (decode_mmap(payload), <[File; 1]>::try_from(fds)) {
                    (Some(req), Ok([fd])) => (req, fd),
                    _ => return self.malformed("SHMEM_MAP without one fd and a valid body"),
                };
                self.map(&req, &fd)
            }
            Ok(BackendReq::SHMEM_UNMAP) => match decode_mmap(payload) {
                Some(req) if fds.is_empty() => self.unmap(&req),
                _ => self.malformed("SHMEM_UNMAP with an fd or an invalid body"),
            },
            Ok(BackendReq::CONFIG_CHANGE_MSG) if fds.is_empty() => {
                // A VMM would raise the guest's config interrupt here.
                self.count(|s| s.config_changes += 1);
                Ok(())
            }
            other => {
                self.count(|s| s.other += 1);
                tracing::debug!("backend request {:?} ({}) refused", other, header.request);
                Err(libc::ENOSYS)
            }
        }
    }

    fn map(&self, req: &VhostUserMMap, fd: &File) -> Status {
        let (shmid, fd_offset, shm_offset, len, flags) =
            (req.shmid, req.fd_offset, req.shm_offset, req.len, req.flags);
        let region = match &self.region {
            Some(r) if shmid == self.opts.shmid => r,
            _ => {
                return self.refused(
                    format_args!("SHMEM_MAP of unknown shmid {shmid}"),
                    libc::EINVAL,
                )
            }
        };
        let writable =
            VhostUserMMapFlags::from_bits_truncate(flags).contains(VhostUserMMapFlags::WRITABLE);
        match region.map(fd.as_fd(), fd_offset, shm_offset, len, writable) {
            Ok(()) => {
                self.count(|s| s.maps += 1);
                Ok(())
            }
            Err(e) => self.refused(format_args!("SHMEM_MAP: {e}"), e.errno()),
        }
    }

    fn unmap(&self, req: &VhostUserMMap) -> Status {
        let (shmid, shm_offset, len) = (req.shmid, req.shm_offset, req.len);
        let region = match &self.region {
            Some(r) if shmid == self.opts.shmid => r,
            _ => {
                return self.refused(
                    format_args!("SHMEM_UNMAP of unknown shmid {shmid}"),
                    libc::EINVAL,
                )
            }
        };
        match region.unmap(shm_offset, len) {
            Ok(()) => {
                self.count(|s| s.unmaps += 1);
                Ok(())
            }
            Err(e) => self.refused(format_args!("SHMEM_UNMAP: {e}"), e.errno()),
        }
    }

    fn ack(&self, request: Header, status: Status) -> io::Result<()> {
        if !self.reply_ack {
            // The backend asked for an ack REPLY_ACK does not allow; answer
            // anyway, since it is now waiting for one.
            self.count(|s| s.malformed += 1);
            tracing::warn!(
                "backend request {} asked for an ack without REPLY_ACK",
                request.request
            );
        }
        let value: u64 = match status {
            Ok(()) => 0,
            Err(errno) => (-i64::from(errno)) as u64,
        };
        let reply = Header {
            request: request.request,
            flags: FLAG_VERSION_1 | FLAG_REPLY,
            size: 8,
        };
        framing::send(&self.sock, reply, &value.to_ne_bytes())
    }

    fn refused(&self, what: std::fmt::Arguments<'_>, errno: i32) -> Status {
        self.count(|s| s.refused += 1);
        tracing::warn!("backend request refused: {what}");
        Err(errno)
    }

    fn malformed(&self, what: &str) -> Status {
        self.count(|s| s.malformed += 1);
        tracing::warn!("malformed backend request: {what}");
        Err(libc::EINVAL)
    }

    fn count(&self, f: impl FnOnce(&mut BackendReqStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// The `VhostUserMMap` body, checked by the crate's own validator.
fn decode_mmap(payload: &[u8]) -> Option<VhostUserMMap> {
    let req = *VhostUserMMap::from_slice(payload)?;
    req.is_valid().then_some(req)
}

#[cfg(test)]
mod tests {
    use super::framing::FLAG_NEED_REPLY;
    use super::*;

    #[test]
    fn a_config_change_is_counted_and_acked_and_an_unknown_request_refused() {
        let (server, theirs) =
            BackendReqServer::start(None, ShmemOptions::default(), true).unwrap();
        let ask = |request: u32| {
            let h = Header {
                request,
                flags: FLAG_VERSION_1 | FLAG_NEED_REPLY,
                size: 0,
            };
            framing::send(&theirs, h, &[]).unwrap();
            let (reply, _) = framing::recv_header(&theirs).unwrap().unwrap();
            assert_eq!((reply.request, reply.size), (request, 8));
            assert!(reply.is_reply());
            let mut status = Vec::new();
            framing::recv_payload(&theirs, 8, &mut status).unwrap();
            u64::from_ne_bytes(status.try_into().unwrap())
        };
        assert_eq!(ask(BackendReq::CONFIG_CHANGE_MSG as u32), 0);
        assert_eq!(ask(BackendReq::CONFIG_CHANGE_MSG as u32), 0);
        // VRING_HOST_NOTIFIER_MSG: not something loadgen's VMM does.
        assert_ne!(ask(BackendReq::VRING_HOST_NOTIFIER_MSG as u32), 0);
        let stats = server.stats();
        assert_eq!((stats.config_changes, stats.other), (2, 1));
    }
}
