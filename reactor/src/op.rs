//! In-flight io_uring operations.
//!
//! Ownership rule: an [`Op`] owns everything the kernel may touch (buffers,
//! `msghdr`s, the fd) until its completion is reaped. If the future is
//! dropped first, that memory moves into the slot as `Orphaned` and an
//! `ASYNC_CANCEL` is submitted; the slot, and the memory, are freed only when
//! the kernel posts the operation's completion.
//!
//! `user_data` = generation << 32 | slot key. Bit 63 marks the shard's own
//! internal operations (doorbell read, cancels). A completion whose generation
//! does not match its slot is stale and ignored.

use std::any::Any;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;
use slab::Slab;

use crate::shard;

pub(crate) const INTERNAL: u64 = 1 << 63;
pub(crate) const UD_DOORBELL: u64 = INTERNAL | 1;
pub(crate) const UD_CANCEL: u64 = INTERNAL | 2;
const GEN_MASK: u32 = 0x7fff_ffff;

/// What the kernel said about an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// A negative result is `-errno`.
    pub fn into_result(self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

enum State {
    Pending(Option<Waker>),
    Done(Completion),
    /// The future is gone; the kernel may still use this memory.
    Orphaned(#[allow(dead_code)] Box<dyn Any>),
}

struct Slot {
    gen: u32,
    state: State,
}

#[derive(Default)]
pub(crate) struct OpTable {
    slots: Slab<Slot>,
    next_gen: u32,
    pub(crate) stale: u64,
}

pub(crate) fn user_data(key: usize, gen: u32) -> u64 {
    ((gen as u64) << 32) | key as u64
}

impl OpTable {
    pub(crate) fn insert(&mut self) -> (usize, u32) {
        let gen = self.next_gen & GEN_MASK;
        self.next_gen = self.next_gen.wrapping_add(1);
        let key = self.slots.insert(Slot {
            gen,
            state: State::Pending(None),
        });
        (key, gen)
    }

    /// Undo an insert whose submission failed.
    pub(crate) fn forget(&mut self, key: usize) {
        self.slots.try_remove(key);
    }

    /// Records a completion; returns the waker to wake, if any.
    pub(crate) fn complete(&mut self, ud: u64, c: Completion) -> Option<Waker> {
        let key = (ud & 0xffff_ffff) as usize;
        let gen = (ud >> 32) as u32;
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
            self.stale += 1;
            return None;
        };
        match std::mem::replace(&mut slot.state, State::Done(c)) {
            State::Pending(waker) => waker,
            State::Orphaned(_keep) => {
                // The kernel is done with the memory: free it now.
                self.slots.remove(key);
                None
            }
            State::Done(_) => {
                // One-shot ops complete once; a second CQE is a kernel or
                // user_data bug. Count it rather than corrupt state.
                self.stale += 1;
                None
            }
        }
    }

    pub(crate) fn poll(&mut self, key: usize, gen: u32, cx: &mut Context<'_>) -> Poll<Completion> {
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
            // Cannot happen while the Op is alive; report an error rather
            // than hang.
            return Poll::Ready(Completion {
                result: -libc::ECANCELED,
                flags: 0,
            });
        };
        match &mut slot.state {
            State::Done(c) => {
                let c = *c;
                self.slots.remove(key);
                Poll::Ready(c)
            }
            State::Pending(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Orphaned(_) => Poll::Pending,
        }
    }

    /// The future was dropped. Returns true when the op is still in the
    /// kernel (the caller then submits a cancel).
    pub(crate) fn orphan(&mut self, key: usize, gen: u32, keep: Box<dyn Any>) -> bool {
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.gen == gen) else {
            return false;
        };
        match slot.state {
            State::Done(_) => {
                self.slots.remove(key);
                false
            }
            _ => {
                slot.state = State::Orphaned(keep);
                true
            }
        }
    }

    /// user_data of every op still waiting for the kernel (for shutdown).
    pub(crate) fn in_kernel(&self) -> Vec<u64> {
        self.slots
            .iter()
            .filter(|(_, s)| !matches!(s.state, State::Done(_)))
            .map(|(k, s)| user_data(k, s.gen))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}

/// A submitted operation; resolves to its completion and gives `T` back.
pub struct Op<T: 'static> {
    key: usize,
    gen: u32,
    data: Option<T>,
}

// `data` is never pinned: it is moved out on completion or into the slab on
// drop, and the kernel only sees heap memory it points to.
impl<T> Unpin for Op<T> {}

impl<T: 'static> Op<T> {
    /// Submits `entry`, which references memory owned by `data`.
    ///
    /// # Safety
    /// Every pointer in `entry` must point into heap memory owned by `data`
    /// (which does not move when `data` moves), or into memory that outlives
    /// the shard; and the fd it names must stay open as long as `data` lives
    /// (keep an owner of it inside `data`).
    pub(crate) unsafe fn submit(entry: squeue::Entry, data: T) -> Result<Op<T>, (io::Error, T)> {
        match shard::submit_op(entry) {
            Ok((key, gen)) => Ok(Op {
                key,
                gen,
                data: Some(data),
            }),
            Err(e) => Err((e, data)),
        }
    }
}

impl<T: 'static> Future for Op<T> {
    type Output = (Completion, T);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        let c = std::task::ready!(shard::with_ops(|ops| ops.poll(me.key, me.gen, cx)));
        match me.data.take() {
            Some(data) => Poll::Ready((c, data)),
            None => panic!("reactor Op polled after it completed"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else {
            return;
        };
        shard::orphan_op(self.key, self.gen, Box::new(data));
    }
}

/// Submits `entry` and awaits it, mapping the completion to `io::Result`.
///
/// # Safety
/// As for [`Op::submit`].
pub(crate) async unsafe fn run<T: 'static>(entry: squeue::Entry, data: T) -> (io::Result<u32>, T) {
    // SAFETY: the caller upholds `Op::submit`'s contract.
    match unsafe { Op::submit(entry, data) } {
        Ok(op) => {
            let (c, data) = op.await;
            (c.into_result(), data)
        }
        Err((e, data)) => (Err(e), data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::EventFd;
    use crate::{block_on, stats, yield_now};
    use io_uring::opcode;

    #[test]
    fn stale_completion_for_a_reused_slot_is_ignored() {
        block_on(async {
            let efd = EventFd::new().unwrap();
            // First op in slot k completes and frees the slot.
            efd.notify().unwrap();
            assert_eq!(efd.read().await.unwrap(), 1);

            // Second op reuses slot k with a new generation and stays pending.
            let mut b = vec![0u8; 8];
            let entry = opcode::Read::new(
                io_uring::types::Fd(std::os::fd::AsRawFd::as_raw_fd(&efd)),
                b.as_mut_ptr(),
                8,
            )
            .build();
            // SAFETY: the buffer is owned by the op; the eventfd outlives it.
            let mut pending = unsafe { Op::submit(entry, (efd.clone(), b)) }
                .map_err(|(e, _)| e)
                .unwrap();
            let (key, gen) = (pending.key, pending.gen);
            assert!(gen > 0, "the slot was used before");

            // A completion carrying the slot's previous generation arrives.
            let stale = opcode::Nop::new()
                .build()
                .user_data(user_data(key, gen - 1));
            shard::push_raw(stale).unwrap();
            for _ in 0..4 {
                yield_now().await;
            }
            assert_eq!(stats().unwrap().stale_completions, 1);
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(
                Pin::new(&mut pending).poll(&mut cx).is_pending(),
                "stale CQE must not complete the new op"
            );

            // The real completion still reaches the right op.
            efd.notify().unwrap();
            let (c, (_efd, buf)) = pending.await;
            assert_eq!(c.result, 8);
            assert_eq!(u64::from_ne_bytes(buf[..8].try_into().unwrap()), 1);
        })
        .unwrap();
    }
}
