//! Stopping a task from outside: wrap its future with [`abortable`]; the
//! [`AbortHandle`] (usable from any thread) makes it finish at its next poll,
//! dropping the inner future, which cancels that future's in-flight ops.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct State {
    aborted: bool,
    waker: Option<Waker>,
}

/// Aborts the future it was made with.
#[derive(Clone)]
pub struct AbortHandle {
    state: Arc<Mutex<State>>,
}

/// The future was aborted before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

/// A future that can be stopped by its [`AbortHandle`].
pub struct Abortable<F> {
    inner: Pin<Box<F>>,
    state: Arc<Mutex<State>>,
}

/// Wraps `fut` so that [`AbortHandle::abort`] ends it.
pub fn abortable<F: Future>(fut: F) -> (Abortable<F>, AbortHandle) {
    let state = Arc::new(Mutex::new(State::default()));
    (
        Abortable {
            inner: Box::pin(fut),
            state: state.clone(),
        },
        AbortHandle { state },
    )
}

impl AbortHandle {
    pub fn abort(&self) {
        let waker = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.aborted = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<F: Future> Future for Abortable<F> {
    type Output = Result<F::Output, Aborted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.aborted {
                return Poll::Ready(Err(Aborted));
            }
            match &st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.waker = Some(cx.waker().clone()),
            }
        }
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::EventFd;

    #[test]
    fn aborting_from_another_thread_ends_a_pending_read() {
        let r = crate::Reactor::builder().shards(1).build().unwrap();
        let efd = EventFd::new().unwrap();
        let (fut, handle) = abortable(async move { efd.read().await });
        let mut fut = Some(fut);
        let task = r.shard(0).spawn(move || async move {
            match fut.take() {
                Some(f) => f.await.is_err(),
                None => false,
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(5));
        handle.abort();
        assert_eq!(task.join(), Ok(true));
    }
}
