//! eventfd: virtqueue kicks and calls, fence signals, doorbells.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::AsyncFd;

/// An eventfd whose reads complete on the ring.
#[derive(Clone, Debug)]
pub struct EventFd {
    fd: AsyncFd,
}

/// The write side of an eventfd, usable from any thread with a plain
/// `write(2)` (which never blocks on an eventfd in practice).
#[derive(Clone, Debug)]
pub struct EventFdNotifier {
    fd: Arc<OwnedFd>,
}

impl EventFd {
    /// A new blocking-mode eventfd (the ring waits on it without `EAGAIN`).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: no memory arguments; result checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        Ok(EventFd::from_owned(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wraps an eventfd received from elsewhere (blocking or not).
    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd {
            fd: AsyncFd::new(fd),
        }
    }

    /// Waits for the counter to be non-zero; returns and resets it.
    pub async fn read(&self) -> io::Result<u64> {
        let (res, buf) = self.fd.read(Vec::with_capacity(8)).await;
        match res? {
            8 => Ok(u64::from_ne_bytes([
                buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
            ])),
            n => Err(io::Error::other(format!("eventfd read returned {n} bytes"))),
        }
    }

    /// Adds `value` to the counter through the ring.
    pub async fn write(&self, value: u64) -> io::Result<()> {
        let (res, _) = self.fd.write(value.to_ne_bytes().to_vec()).await;
        match res? {
            8 => Ok(()),
            n => Err(io::Error::other(format!("eventfd write took {n} bytes"))),
        }
    }

    /// Adds 1 with a direct syscall (from any thread, no ring needed).
    pub fn notify(&self) -> io::Result<()> {
        notify_fd(self.fd.as_raw_fd())
    }

    pub fn notifier(&self) -> EventFdNotifier {
        EventFdNotifier {
            fd: self.fd.shared().clone(),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl EventFdNotifier {
    pub fn notify(&self) -> io::Result<()> {
        notify_fd(self.fd.as_raw_fd())
    }
}

impl AsRawFd for EventFdNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn notify_fd(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    if n == 8 {
        Ok(())
    } else if n < 0 {
        let e = io::Error::last_os_error();
        // A non-blocking eventfd at its maximum already signals the reader.
        if e.raw_os_error() == Some(libc::EAGAIN) {
            Ok(())
        } else {
            Err(e)
        }
    } else {
        Err(io::Error::other("short eventfd write"))
    }
}
