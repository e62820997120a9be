//! The guest's interrupt handler: a thread that sleeps on the call
//! eventfds and, the moment the device signals, notes how far each used
//! ring has advanced and when. The driver model reaps later (its thread
//! also draws frames), but a command's "used" time is the interrupt's time,
//! as in a real guest whose IRQ handler runs while userspace is busy.

use std::collections::VecDeque;
use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Scheduler slice (µs) the interrupt thread asks for: it timestamps
/// completions, so it should get a CPU when an interrupt wakes it, not when
/// a busy thread's slice ends (`reactor::request_slice`). 0: the kernel's.
pub static IRQ_SLICE_US: AtomicU64 = AtomicU64::new(0);

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// (used idx seen, when) per queue, oldest first.
type Log = [VecDeque<(u16, Instant)>; 2];

struct Shared {
    log: Mutex<Log>,
    stop: AtomicBool,
}

/// The interrupt thread of a driver.
pub struct Irq {
    shared: Arc<Shared>,
    /// Written by the IRQ thread after each interrupt; the driver's thread
    /// sleeps on it.
    wake: OwnedFd,
    stop_fd: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn write_eventfd(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if n == 8 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // A counter at its maximum has already signalled.
    if e.raw_os_error() == Some(libc::EAGAIN) {
        Ok(())
    } else {
        Err(e)
    }
}

pub(crate) fn drain_eventfd(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local; the fd is non-blocking.
    unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
}

impl Irq {
    /// Starts the thread for two queues whose used rings are at `used`,
    /// signalled through `calls`.
    pub fn start(
        mem: GuestMemoryMmap,
        used: [GuestAddress; 2],
        calls: [OwnedFd; 2],
    ) -> io::Result<Irq> {
        let shared = Arc::new(Shared {
            log: Mutex::new([VecDeque::new(), VecDeque::new()]),
            stop: AtomicBool::new(false),
        });
        let wake = eventfd(libc::EFD_NONBLOCK)?;
        let stop_fd = eventfd(libc::EFD_NONBLOCK)?;
        let (sh, wake2, stop2) = (shared.clone(), wake.try_clone()?, stop_fd.try_clone()?);
        let slice = IRQ_SLICE_US.load(Ordering::Relaxed);
        let thread = std::thread::Builder::new()
            .name("guest-irq".into())
            .spawn(move || {
                if slice > 0 {
                    // Best effort: a kernel without custom slices keeps its own.
                    let _ = reactor::request_slice(std::time::Duration::from_micros(slice));
                }
                irq_loop(&sh, &mem, used, &calls, &wake2, &stop2)
            })?;
        Ok(Irq {
            shared,
            wake,
            stop_fd,
            thread: Some(thread),
        })
    }

    /// The fd that becomes readable after an interrupt.
    pub fn wake_fd(&self) -> &OwnedFd {
        &self.wake
    }

    /// When the used entry at ring position `pos` of queue `q` was first
    /// seen by an interrupt; forgets older records.
    pub fn used_at(&self, q: usize, pos: u16) -> Option<Instant> {
        let mut log = self.shared.log.lock().ok()?;
        let entries = &mut log[q];
        // Records that only cover entries before `pos` are no longer needed.
        while let Some(&(idx, _)) = entries.front() {
            if (Wrapping(idx) - Wrapping(pos)).0 == 0 || (Wrapping(idx) - Wrapping(pos)).0 > 0x8000
            {
                entries.pop_front();
            } else {
                break;
            }
        }
        entries.front().map(|&(_, t)| t)
    }
}

impl Drop for Irq {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = write_eventfd(&self.stop_fd);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn irq_loop(
    sh: &Shared,
    mem: &GuestMemoryMmap,
    used: [GuestAddress; 2],
    calls: &[OwnedFd; 2],
    wake: &OwnedFd,
    stop: &OwnedFd,
) {
    let mut last = [0u16; 2];
    while !sh.stop.load(Ordering::Acquire) {
        let mut fds = [
            libc::pollfd {
                fd: calls[0].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: calls[1].as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of three pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
        let now = Instant::now();
        if r <= 0 {
            continue;
        }
        let mut any = false;
        for q in 0..2 {
            if fds[q].revents & libc::POLLIN == 0 {
                continue;
            }
            drain_eventfd(&calls[q]);
            let Ok(idx) = mem.load::<u16>(
                GuestAddress(used[q].0 + 2),
                std::sync::atomic::Ordering::Acquire,
            ) else {
                continue;
            };
            let idx = u16::from_le(idx);
            if idx != last[q] {
                last[q] = idx;
                if let Ok(mut log) = sh.log.lock() {
                    log[q].push_back((idx, now));
                }
            }
            any = true;
        }
        if any {
            let _ = write_eventfd(wake);
        }
    }
}
