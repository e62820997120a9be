//! A deadline on the control socket.
//!
//! The `vhost` crate's frontend reads replies with blocking `recvmsg` and
//! retries on `EAGAIN`, so a socket read timeout would only make it spin. A
//! watchdog thread instead shuts the socket down when a request is still
//! unanswered at its deadline: the blocked read returns end-of-file, the
//! call returns an error, and the session reports `Timeout` instead of
//! hanging. A backend that closes the socket is seen directly as EOF.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Watches one socket; at most one request is armed at a time.
pub(crate) struct ControlDeadline {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// A clone of the control socket: shutting it down wakes the reader.
    sock: UnixStream,
}

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    stop: bool,
}

/// Disarms the deadline when dropped.
pub(crate) struct Armed<'a> {
    owner: &'a ControlDeadline,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.owner.lock().deadline = None;
    }
}

impl ControlDeadline {
    /// Starts the watchdog thread for `sock` (a clone of the control socket).
    pub(crate) fn start(sock: UnixStream) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            sock,
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vhost-deadline".into())
            .spawn(move || watch(&watched))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Arms a deadline `timeout` from now until the guard is dropped.
    pub(crate) fn arm(&self, timeout: Duration) -> Armed<'_> {
        self.lock().deadline = Some(Instant::now() + timeout);
        self.shared.wake.notify_one();
        Armed { owner: self }
    }

    /// Whether a deadline passed and the socket was shut down.
    pub(crate) fn fired(&self) -> bool {
        self.lock().fired
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ControlDeadline {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared) {
    let lock = || shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut st = lock();
    loop {
        if st.stop {
            return;
        }
        st = match st.deadline {
            None => shared.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
            Some(at) => {
                let now = Instant::now();
                if now >= at {
                    st.deadline = None;
                    st.fired = true;
                    // The blocked reader sees EOF; every later request
                    // fails at once instead of waiting again.
                    let _ = shared.sock.shutdown(Shutdown::Both);
                    st
                } else {
                    shared
                        .wake
                        .wait_timeout(st, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn an_unanswered_read_is_woken_by_the_deadline() {
        let (a, _peer) = UnixStream::pair().unwrap();
        let d = ControlDeadline::start(a.try_clone().unwrap()).unwrap();
        let started = Instant::now();
        let _armed = d.arm(Duration::from_millis(50));
        let mut buf = [0u8; 1];
        assert_eq!((&a).read(&mut buf).unwrap(), 0);
        assert!(d.fired());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_disarmed_deadline_never_fires() {
        let (a, _peer) = UnixStream::pair().unwrap();
        let d = ControlDeadline::start(a.try_clone().unwrap()).unwrap();
        drop(d.arm(Duration::from_millis(10)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!d.fired());
    }
}
