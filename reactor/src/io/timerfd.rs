//! timerfd on CLOCK_MONOTONIC: modelled GPU time, deadlines, timeouts.
//! Expirations are reads completing on the ring; nothing polls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::AsyncFd;

/// When a [`TimerFd`] fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerSpec {
    /// Once, `d` from now (relative).
    After(Duration),
    /// Once, at an instant (absolute on CLOCK_MONOTONIC, which is the
    /// clock of `std::time::Instant` on Linux).
    At(Instant),
    /// First after `first`, then every `interval`.
    Every { first: Duration, interval: Duration },
    /// Not armed.
    Disarmed,
}

#[derive(Clone, Debug)]
pub struct TimerFd {
    fd: AsyncFd,
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    }
}

/// A zero `it_value` disarms a timerfd: "already due" is 1 ns instead.
fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_nanos(1))
}

fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl TimerFd {
    /// A disarmed CLOCK_MONOTONIC timer.
    pub fn new() -> io::Result<TimerFd> {
        // SAFETY: no memory arguments; result checked.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TimerFd {
            // SAFETY: just created, owned by nobody else.
            fd: AsyncFd::new(unsafe { OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// A timer that fires every `period`, the first time one period from
    /// now.
    pub fn every(period: Duration) -> io::Result<TimerFd> {
        let t = TimerFd::new()?;
        t.set(TimerSpec::Every {
            first: period,
            interval: period,
        })?;
        Ok(t)
    }

    /// (Re)arms or disarms the timer; expirations not yet read are dropped.
    pub fn set(&self, spec: TimerSpec) -> io::Result<()> {
        let zero = Duration::ZERO;
        let (flags, value, interval) = match spec {
            TimerSpec::After(d) => (0, nonzero(d), zero),
            TimerSpec::At(at) => {
                let from_now = at.saturating_duration_since(Instant::now());
                (
                    libc::TFD_TIMER_ABSTIME,
                    nonzero(monotonic_now() + from_now),
                    zero,
                )
            }
            TimerSpec::Every { first, interval } => (0, nonzero(first), interval),
            TimerSpec::Disarmed => (0, zero, zero),
        };
        let new = libc::itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(value),
        };
        // SAFETY: `new` is a live local; the old value is not requested.
        let r = unsafe {
            libc::timerfd_settime(self.fd.as_raw_fd(), flags, &new, std::ptr::null_mut())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the next expiration; returns how many happened since the
    /// last read (more than 1 when a periodic timer was read late).
    pub async fn wait(&self) -> io::Result<u64> {
        let (res, buf) = self.fd.read(Vec::with_capacity(8)).await;
        match res? {
            8 => Ok(u64::from_ne_bytes([
                buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7],
            ])),
            n => Err(io::Error::other(format!("timerfd read returned {n} bytes"))),
        }
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
