//! The way into a shard from other threads: a message queue plus an eventfd
//! whose read is always pending on the shard's ring.
//!
//! Protocol: a sender pushes under the lock, then writes the eventfd only if
//! `notified` was false. The shard, when the doorbell read completes, clears
//! `notified` *before* taking the queue. So every message is either taken by
//! that drain or was pushed after the flag was cleared, and then rang again:
//! nothing is lost, and a burst of sends costs one eventfd write.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::task::TaskRef;

/// Work sent to a shard from elsewhere.
pub(crate) enum Message {
    /// Run a closure on the shard (it usually spawns a task).
    Run(Box<dyn FnOnce() + Send>),
    /// A task of this shard was woken from another thread.
    Wake(TaskRef),
    /// Stop: drop every task, drain in-flight operations, exit the thread.
    Shutdown,
}

struct Queue {
    messages: Vec<Message>,
    /// Set when the shard has exited: later messages are dropped at once, so
    /// their join handles resolve to `Canceled` instead of hanging.
    closed: bool,
}

pub(crate) struct Remote {
    /// Unique in the process: tells "am I on this shard's thread".
    pub(crate) uid: usize,
    pub(crate) shard: usize,
    queue: Mutex<Queue>,
    notified: AtomicBool,
    efd: OwnedFd,
}

static NEXT_UID: AtomicUsize = AtomicUsize::new(1);

impl Remote {
    pub(crate) fn new(shard: usize) -> io::Result<Remote> {
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Remote {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            shard,
            queue: Mutex::new(Queue {
                messages: Vec::new(),
                closed: false,
            }),
            notified: AtomicBool::new(false),
            // SAFETY: `fd` was just created and is owned by nobody else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Pushes and swaps only: a poisoned lock still holds a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` and rings the doorbell if the shard may be asleep.
    /// Returns false (and drops the message) if the shard has exited.
    pub(crate) fn push(&self, msg: Message) -> bool {
        let rejected = {
            let mut q = self.lock();
            if q.closed {
                Some(msg)
            } else {
                q.messages.push(msg);
                None
            }
        };
        if let Some(msg) = rejected {
            drop(msg);
            return false;
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live local into our own eventfd.
            // It cannot block: the counter would need 2^64-1 pending rings.
            unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        true
    }

    /// Called by the shard when the doorbell read completed, before `take`.
    pub(crate) fn rearm(&self) {
        self.notified.store(false, Ordering::Release);
    }

    /// Moves all queued messages into `out`.
    pub(crate) fn take(&self, out: &mut Vec<Message>) {
        out.append(&mut self.lock().messages);
    }

    /// Marks the shard gone; returns what was still queued, to be dropped by
    /// the caller outside the lock.
    pub(crate) fn close(&self) -> Vec<Message> {
        let mut q = self.lock();
        q.closed = true;
        std::mem::take(&mut q.messages)
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }
}
