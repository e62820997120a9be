//! Sleeping and timeouts on CLOCK_MONOTONIC timerfds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::io::{TimerFd, TimerSpec};

/// Waits `d` (one timerfd, read on the ring).
pub async fn sleep(d: Duration) -> io::Result<()> {
    let t = TimerFd::new()?;
    t.set(TimerSpec::After(d))?;
    t.wait().await.map(|_| ())
}

/// Waits until `at`.
pub async fn sleep_until(at: Instant) -> io::Result<()> {
    let t = TimerFd::new()?;
    t.set(TimerSpec::At(at))?;
    t.wait().await.map(|_| ())
}

/// The deadline passed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// Runs `fut` for at most `d`; the future is dropped (its ops cancelled) when
/// the deadline passes first.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let fut = std::pin::pin!(fut);
    let timer = std::pin::pin!(sleep(d));
    Timeout { fut, timer }.await
}

struct Timeout<'a, F: Future, T: Future<Output = io::Result<()>>> {
    fut: Pin<&'a mut F>,
    timer: Pin<&'a mut T>,
}

impl<F: Future, T: Future<Output = io::Result<()>>> Future for Timeout<'_, F, T> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(v) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.timer.as_mut().poll(cx) {
            // A timer that cannot even be created counts as elapsed: the
            // caller gets a bounded wait either way.
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}
