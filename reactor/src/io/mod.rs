//! Owned-buffer I/O on the shard's ring.
//!
//! Every call takes its buffer by value and hands it back with the result;
//! the file descriptor is shared (`Arc<OwnedFd>`) into the operation so it
//! cannot be closed while the kernel uses it. See the crate docs for what
//! happens when a future is dropped early.
//!
//! File descriptors received from elsewhere (a VMM's kick eventfds) may be
//! `O_NONBLOCK`; their file status flags are shared with the sender, so they
//! are never changed here. Instead an `EAGAIN` is answered with a ring
//! `POLL_ADD` and a retry.

mod eventfd;
mod socket;
mod timerfd;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;

use io_uring::{opcode, types};

use crate::op;

pub use eventfd::{EventFd, EventFdNotifier};
pub use socket::RecvMsg;
pub use timerfd::{TimerFd, TimerSpec};

/// A file descriptor driven by the ring.
#[derive(Clone, Debug)]
pub struct AsyncFd {
    fd: Arc<OwnedFd>,
}

fn is_would_block(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

impl AsyncFd {
    pub fn new(fd: OwnedFd) -> AsyncFd {
        AsyncFd { fd: Arc::new(fd) }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Reads into the spare capacity of `buf` (at most
    /// `capacity - len` bytes), appending what was read.
    pub async fn read(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            let spare = buf.spare_capacity_mut();
            let (ptr, len) = (spare.as_mut_ptr().cast::<u8>(), spare.len() as u32);
            let entry = opcode::Read::new(types::Fd(self.fd.as_raw_fd()), ptr, len).build();
            // SAFETY: `ptr..ptr+len` is the spare capacity of `buf`'s heap
            // allocation, owned by the op until completion; the fd is kept
            // open by the `Arc` clone in the op.
            let (res, (_fd, mut b)) = unsafe { op::run(entry, (self.fd.clone(), buf)) }.await;
            match res {
                Ok(n) => {
                    // SAFETY: the kernel initialised `n <= len` bytes of the
                    // spare capacity.
                    unsafe { b.set_len(b.len() + n as usize) };
                    return (Ok(n as usize), b);
                }
                Err(e) if is_would_block(&e) => {
                    buf = b;
                    if let Err(e) = self.poll(libc::POLLIN as u32).await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), b),
            }
        }
    }

    /// Writes `buf[..]` once (may be short).
    pub async fn write(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.write_from(buf, 0).await
    }

    /// Writes `buf[offset..]` once.
    async fn write_from(&self, mut buf: Vec<u8>, offset: usize) -> (io::Result<usize>, Vec<u8>) {
        loop {
            let rest = &buf[offset.min(buf.len())..];
            let entry = opcode::Write::new(
                types::Fd(self.fd.as_raw_fd()),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .build();
            // SAFETY: the kernel reads `buf`'s heap allocation, owned by the
            // op until completion; the fd is kept open by the op.
            let (res, (_fd, b)) = unsafe { op::run(entry, (self.fd.clone(), buf)) }.await;
            buf = b;
            match res {
                Ok(n) => return (Ok(n as usize), buf),
                Err(e) if is_would_block(&e) => {
                    if let Err(e) = self.poll(libc::POLLOUT as u32).await {
                        return (Err(e), buf);
                    }
                }
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Writes all of `buf`, retrying short writes.
    pub async fn write_all(&self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut done = 0;
        while done < buf.len() {
            let (res, b) = self.write_from(buf, done).await;
            buf = b;
            match res {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Waits until the fd reports any of `events` (`POLLIN`, ...); returns
    /// the events that fired.
    pub async fn poll(&self, events: u32) -> io::Result<u32> {
        let entry = opcode::PollAdd::new(types::Fd(self.fd.as_raw_fd()), events).build();
        // SAFETY: poll touches no memory of ours; the op keeps the fd open.
        let (res, _fd) = unsafe { op::run(entry, self.fd.clone()) }.await;
        res
    }

    /// Receives one message and up to `max_fds` file descriptors into the
    /// spare capacity of `buf`.
    pub async fn recvmsg(&self, buf: Vec<u8>, max_fds: usize) -> (io::Result<RecvMsg>, Vec<u8>) {
        socket::recvmsg(self, buf, max_fds).await
    }

    /// Sends `buf` with `fds` attached (SCM_RIGHTS).
    pub async fn sendmsg(
        &self,
        buf: Vec<u8>,
        fds: &[BorrowedFd<'_>],
    ) -> (io::Result<usize>, Vec<u8>) {
        socket::sendmsg(self, buf, fds).await
    }

    pub(crate) fn shared(&self) -> &Arc<OwnedFd> {
        &self.fd
    }
}

impl AsRawFd for AsyncFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
