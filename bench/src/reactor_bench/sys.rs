//! Thin, checked wrappers around the libc calls the baselines share: eventfd,
//! timerfd, epoll, plain `read`/`write` of 8-byte counters and CPU pinning.
//!
//! Every wrapper turns a failed syscall into a [`BenchError`] that names the
//! call, so a failure ends the run with a clear message instead of a panic.
//!
//! The eventfd and timerfd are created *blocking* (no `O_NONBLOCK`) on purpose:
//! io_uring honours `O_NONBLOCK` on the file and would complete a READ with
//! `-EAGAIN` instead of waiting, and epoll only reads after readiness, so a
//! blocking descriptor is correct for every system and keeps the fds identical.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{BenchError, Result};

fn os_error(what: &str) -> BenchError {
    BenchError::io(what, io::Error::last_os_error())
}

/// A new eventfd with counter 0 (blocking, close-on-exec).
pub fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("eventfd"));
    }
    // SAFETY: `fd` was just returned by eventfd, is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new CLOCK_MONOTONIC timerfd (blocking, close-on-exec), disarmed.
pub fn timerfd() -> Result<OwnedFd> {
    // SAFETY: timerfd_create takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(os_error("timerfd_create"));
    }
    // SAFETY: `fd` was just returned by timerfd_create and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms `fd` to expire once, `after` from now (relative, no interval).
pub fn timerfd_arm_relative(fd: RawFd, after: Duration) -> Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec living across the call; the old-value
    // pointer may be null; an invalid `fd` only makes the call fail with EBADF.
    let rc = unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(os_error("timerfd_settime"));
    }
    Ok(())
}

/// Adds `value` to an eventfd counter with one plain `write(2)`.
pub fn eventfd_write(fd: RawFd, value: u64) -> Result<()> {
    let bytes = value.to_ne_bytes();
    loop {
        // SAFETY: `bytes` is an 8-byte buffer valid for the whole call; the kernel
        // only reads from it. A bad `fd` makes the call fail, not misbehave.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n >= 0 {
            return Err(BenchError::msg(format!(
                "eventfd write: short write ({n} bytes)"
            )));
        }
        return Err(BenchError::io("eventfd write", err));
    }
}

/// Reads the 8-byte counter of an eventfd or timerfd with one plain `read(2)`.
pub fn read_u64(fd: RawFd, what: &str) -> Result<u64> {
    let mut bytes = [0u8; 8];
    loop {
        // SAFETY: `bytes` is a writable 8-byte buffer valid for the whole call and
        // the length passed matches it.
        let n = unsafe { libc::read(fd, bytes.as_mut_ptr().cast(), bytes.len()) };
        if n == 8 {
            return Ok(u64::from_ne_bytes(bytes));
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n >= 0 {
            return Err(BenchError::msg(format!("{what}: short read ({n} bytes)")));
        }
        return Err(BenchError::io(what, err));
    }
}

/// A level-triggered epoll instance watching one descriptor for `EPOLLIN`.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn watching(target: RawFd) -> Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; it returns a new fd or -1.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(os_error("epoll_create1"));
        }
        // SAFETY: `raw` was just returned by epoll_create1 and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; bad
        // descriptors only make the call fail.
        let rc =
            unsafe { libc::epoll_ctl(fd.as_raw_fd(), libc::EPOLL_CTL_ADD, target, &mut event) };
        if rc < 0 {
            return Err(os_error("epoll_ctl(ADD)"));
        }
        Ok(Self { fd })
    }

    /// Blocks in `epoll_wait` (no timeout) until the watched fd is readable.
    pub fn wait(&self) -> Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
        loop {
            // SAFETY: `events` is a writable array of 1 epoll_event and maxevents
            // is 1, so the kernel writes at most one entry into it.
            let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), 1, -1) };
            if n > 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() != io::ErrorKind::Interrupted {
                return Err(BenchError::io("epoll_wait", err));
            }
        }
    }
}

/// The CPUs this process may run on, lowest first.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t and the size passed is its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc < 0 {
        return Err(os_error("sched_getaffinity"));
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET only reads the bit array; `cpu` is below CPU_SETSIZE.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(BenchError::msg(format!("cpu {cpu} is beyond CPU_SETSIZE")));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays in bounds.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t and the size passed is its size; pid 0
    // means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc < 0 {
        return Err(os_error(&format!("sched_setaffinity(cpu {cpu})")));
    }
    Ok(())
}
