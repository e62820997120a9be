//! The result slot of a spawned task: awaited from any shard, or joined with
//! a blocking wait from a thread that is not a shard.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The task was dropped before it produced its output (its shard shut down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canceled;

impl fmt::Display for Canceled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task was dropped before it completed")
    }
}

impl std::error::Error for Canceled {}

struct State<T> {
    value: Option<T>,
    waker: Option<Waker>,
    sender_gone: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    done: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the state half-written
        // (every critical section is a few field assignments), so poisoning is
        // ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// Awaits the output of a spawned task. Dropping it detaches the task.
pub struct JoinHandle<T> {
    shared: Arc<Shared<T>>,
}

pub(crate) fn pair<T>() -> (Sender<T>, JoinHandle<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            waker: None,
            sender_gone: false,
        }),
        done: Condvar::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        JoinHandle { shared },
    )
}

impl<T> Sender<T> {
    pub(crate) fn send(self, value: T) {
        self.shared.lock().value = Some(value);
        // Drop runs next and wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.shared.lock();
            st.sender_gone = true;
            st.waker.take()
        };
        self.shared.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> JoinHandle<T> {
    /// Blocks the calling thread until the task finishes. Never call this on a
    /// shard thread: it would stop that shard.
    pub fn join(self) -> Result<T, Canceled> {
        let mut st = self.shared.lock();
        loop {
            if let Some(v) = st.value.take() {
                return Ok(v);
            }
            if st.sender_gone {
                return Err(Canceled);
            }
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// True once the task has finished or was dropped.
    pub fn is_finished(&self) -> bool {
        self.shared.lock().sender_gone
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, Canceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.shared.lock();
        if let Some(v) = st.value.take() {
            return Poll::Ready(Ok(v));
        }
        if st.sender_gone {
            return Poll::Ready(Err(Canceled));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
