//! What the two reactor-side channels to the VMM share (the QEMU GPU
//! socket and the vhost-user backend request channel): reading whole
//! messages with ring I/O, and matching replies to the requests that wait
//! for them.
//!
//! Both peers answer requests in the order they were sent, so replies are
//! matched first-in first-out per request code. A waiter that gave up (its
//! timeout passed) keeps its place in the queue: the late reply then lands
//! on it and is dropped, instead of being taken for the answer to a newer
//! request.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use reactor::io::AsyncFd;

use super::frame::{Header, HEADER_SIZE};

/// Reads exactly `n` bytes. `Ok(None)`: the peer closed before the first
/// byte; closing in the middle is an error.
pub(crate) async fn read_exact(fd: &AsyncFd, n: usize) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(n);
    while buf.len() < n {
        let (res, b) = fd.read(buf).await;
        buf = b;
        match res? {
            0 if buf.is_empty() => return Ok(None),
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("peer closed inside a message ({} of {n} bytes)", buf.len()),
                ))
            }
            _ => {}
        }
    }
    Ok(Some(buf))
}

/// Reads one message (header and payload). Payloads above `max_payload`
/// are a protocol error: the size comes from the peer.
pub(crate) async fn read_message(
    fd: &AsyncFd,
    max_payload: usize,
) -> io::Result<Option<(Header, Vec<u8>)>> {
    let Some(head) = read_exact(fd, HEADER_SIZE).await? else {
        return Ok(None);
    };
    let mut raw = [0u8; HEADER_SIZE];
    raw.copy_from_slice(&head);
    let header = Header::from_bytes(&raw);
    if header.size as usize > max_payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "message {} announces a {}-byte payload (at most {max_payload})",
                header.request, header.size
            ),
        ));
    }
    let payload = match read_exact(fd, header.size as usize).await? {
        Some(p) => p,
        None if header.size == 0 => Vec::new(),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed before the payload",
            ))
        }
    };
    Ok(Some((header, payload)))
}

/// Requests waiting for their reply, per request code, oldest first.
pub(crate) struct Waiters<T> {
    queues: HashMap<u32, VecDeque<reactor::Sender<T>>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters {
            queues: HashMap::new(),
        }
    }
}

impl<T> Waiters<T> {
    /// Registers a waiter for the next unanswered `code`. Call it in the
    /// same critical section that queues the request, so both orders agree.
    pub fn push(&mut self, code: u32) -> reactor::Receiver<T> {
        let (tx, rx) = reactor::channel();
        self.queues.entry(code).or_default().push_back(tx);
        rx
    }

    /// Hands a reply to the oldest waiter of `code`; false when nobody
    /// asked (an unsolicited reply).
    pub fn complete(&mut self, code: u32, value: T) -> bool {
        let Some(q) = self.queues.get_mut(&code) else {
            return false;
        };
        let Some(tx) = q.pop_front() else {
            return false;
        };
        // A waiter that timed out dropped its receiver: the reply is late
        // and goes nowhere, which is what it deserves.
        let _ = tx.send(value);
        true
    }

    /// Fails every waiter (their receivers see the channel close).
    pub fn clear(&mut self) {
        self.queues.clear();
    }
}

/// Locks a link's state. Critical sections are short pushes and pops that
/// leave the state consistent even if a panic interrupted one, so a poisoned
/// lock is used as is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `take` finds something in the shared state; `take` gets the
/// state and the slot where it must park the task's waker when it returns
/// `None`. The writer tasks use it to sleep until a sink call queues work.
pub(crate) fn next_item<S, T, F>(state: Arc<Mutex<S>>, take: F) -> NextItem<S, F>
where
    F: FnMut(&mut S, &Waker) -> Option<T>,
{
    NextItem { state, take }
}

pub(crate) struct NextItem<S, F> {
    state: Arc<Mutex<S>>,
    take: F,
}

impl<S, T, F> Future for NextItem<S, F>
where
    F: FnMut(&mut S, &Waker) -> Option<T> + Unpin,
{
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = &mut *self;
        let mut st = lock(&this.state);
        match (this.take)(&mut st, cx.waker()) {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_reply_lands_on_the_abandoned_waiter_not_the_next_one() {
        reactor::block_on(async {
            let mut w = Waiters::<u32>::default();
            let first = w.push(3);
            let mut second = w.push(3);
            drop(first); // timed out
            assert!(w.complete(3, 1)); // the late answer to the first
            assert!(w.complete(3, 2));
            assert_eq!(second.recv().await, Some(2));
            assert!(!w.complete(3, 9), "nobody left waiting");
            assert!(!w.complete(4, 9));
        })
        .unwrap();
    }
}
