//! A model of the guest's virtio-gpu driver: encodes commands into guest
//! buffers, puts them on the control or cursor queue, kicks, and turns used
//! elements back into typed responses with their kick-to-used latency.
//!
//! It is transport-agnostic: it owns the driver side of the rings and the
//! kick/call eventfds; whoever sets up the backend (in-process device, or a
//! vhost-user frontend) hands the other ends to the device.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use gpu::protocol::{CtrlHeader, ProtocolError, Request, Response};
use vm_memory::{Bytes, GuestAddress};

use crate::frontend::{AddError, Buf, DriverError, DriverQueue, GuestRam, QueueFeatures};
use crate::irq::{drain_eventfd, write_eventfd, Irq};

/// Bytes reserved for each response (the largest, a capset, is smaller).
const RESPONSE_BYTES: u32 = 4096;

/// Which queue a command goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    Control = 0,
    Cursor = 1,
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Completion {
    pub tag: u64,
    pub queue: Queue,
    /// The decoded response (`Err` when the backend wrote garbage; the
    /// cursor queue has none and reports `OkNodata`).
    pub response: Result<(CtrlHeader, Response), ProtocolError>,
    /// From the kick that published the command to the reap that saw it.
    pub latency: Duration,
}

/// What went wrong on the driver side.
#[derive(Debug)]
pub enum GpuDriverError {
    Full,
    Add(AddError),
    Ring(DriverError),
    Memory(String),
    Io(io::Error),
    /// No completion within the deadline.
    Timeout,
}

impl fmt::Display for GpuDriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuDriverError::Full => f.write_str("queue full"),
            GpuDriverError::Add(e) => write!(f, "cannot add chain: {e:?}"),
            GpuDriverError::Ring(e) => write!(f, "backend wrote a bad used ring: {e:?}"),
            GpuDriverError::Memory(e) => write!(f, "guest memory: {e}"),
            GpuDriverError::Io(e) => write!(f, "eventfd: {e}"),
            GpuDriverError::Timeout => f.write_str("no completion before the deadline"),
        }
    }
}

impl std::error::Error for GpuDriverError {}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One queue, driver side, with its kick eventfd (calls go to the IRQ
/// thread).
pub struct QueueSide {
    pub ring: DriverQueue,
    kick: OwnedFd,
    /// Commands added since the last kick.
    unkicked: Vec<u16>,
}

struct Pending {
    tag: u64,
    buf: GuestAddress,
    req_len: u32,
    kicked_at: Option<Instant>,
}

/// The ends a backend needs: the device reads `kick`, writes `call`.
pub struct QueueEnds {
    pub kick: OwnedFd,
    pub call: OwnedFd,
}

/// The guest driver model.
pub struct GpuDriver {
    ram: GuestRam,
    queues: [QueueSide; 2],
    irq: Irq,
    pending: HashMap<(u8, u16), Pending>,
    /// Completions reaped but not yet asked for.
    ready: Vec<Completion>,
}

impl GpuDriver {
    /// Creates both queues in `ram`; returns the driver and, per queue, the
    /// eventfd ends to hand to the backend.
    pub fn new(
        ram: GuestRam,
        size: u16,
        features: QueueFeatures,
    ) -> Result<(GpuDriver, [QueueEnds; 2]), GpuDriverError> {
        let mut sides = Vec::new();
        let mut ends = Vec::new();
        let mut calls = Vec::new();
        for _ in 0..2 {
            let ring = DriverQueue::new(&ram, size, features)
                .map_err(|e| GpuDriverError::Memory(format!("{e:?}")))?;
            let kick = eventfd().map_err(GpuDriverError::Io)?;
            let call = eventfd().map_err(GpuDriverError::Io)?;
            ends.push(QueueEnds {
                kick: kick.try_clone().map_err(GpuDriverError::Io)?,
                call: call.try_clone().map_err(GpuDriverError::Io)?,
            });
            calls.push(call);
            sides.push(QueueSide {
                ring,
                kick,
                unkicked: Vec::new(),
            });
        }
        let mut s = sides.into_iter();
        let mut e = ends.into_iter();
        let mut cl = calls.into_iter();
        let (Some(c), Some(k), Some(ec), Some(ek), Some(cc), Some(ck)) =
            (s.next(), s.next(), e.next(), e.next(), cl.next(), cl.next())
        else {
            return Err(GpuDriverError::Memory("queue set-up".into()));
        };
        let irq = Irq::start(
            ram.memory().clone(),
            [c.ring.used_ring(), k.ring.used_ring()],
            [cc, ck],
        )
        .map_err(GpuDriverError::Io)?;
        Ok((
            GpuDriver {
                ram,
                irq,
                queues: [c, k],
                pending: HashMap::new(),
                ready: Vec::new(),
            },
            [ec, ek],
        ))
    }

    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    pub fn queue(&self, q: Queue) -> &DriverQueue {
        &self.queues[q as usize].ring
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Puts `req` on queue `q` (not yet visible to the device: see `kick`).
    pub fn submit(&mut self, q: Queue, req: &Request, tag: u64) -> Result<(), GpuDriverError> {
        let bytes = req.to_bytes();
        self.submit_bytes(q, &bytes, tag)
    }

    /// Puts raw request bytes on a queue (for malformed-command tests).
    pub fn submit_bytes(&mut self, q: Queue, bytes: &[u8], tag: u64) -> Result<(), GpuDriverError> {
        self.submit_chain(q, bytes, None, tag)
    }

    /// Puts a chain the device must refuse whole on a queue: its response
    /// buffer lies at `addr`, outside guest RAM (a buggy or hostile guest).
    /// It comes back with nothing written.
    pub fn submit_unusable(
        &mut self,
        q: Queue,
        bytes: &[u8],
        addr: GuestAddress,
        tag: u64,
    ) -> Result<(), GpuDriverError> {
        self.submit_chain(q, bytes, Some(addr), tag)
    }

    fn submit_chain(
        &mut self,
        q: Queue,
        bytes: &[u8],
        response_at: Option<GuestAddress>,
        tag: u64,
    ) -> Result<(), GpuDriverError> {
        let side = &mut self.queues[q as usize];
        if side.ring.num_free() == 0 {
            return Err(GpuDriverError::Full);
        }
        let req_len = bytes.len() as u32;
        let resp_len = if q == Queue::Cursor {
            0
        } else {
            RESPONSE_BYTES
        };
        let buf = self
            .ram
            .alloc(u64::from(req_len) + u64::from(resp_len), 64)
            .map_err(|e| GpuDriverError::Memory(format!("{e:?}")))?;
        self.ram
            .memory()
            .write_slice(bytes, buf)
            .map_err(|e| GpuDriverError::Memory(e.to_string()))?;
        if response_at.is_none() && resp_len > 0 {
            // The response header poisoned (type 0xffffffff is no response):
            // a backend that does not write it is seen, not an earlier
            // chain's answer left in the recycled buffer.
            self.ram
                .memory()
                .write_slice(&[0xff; 24], GuestAddress(buf.0 + u64::from(req_len)))
                .map_err(|e| GpuDriverError::Memory(e.to_string()))?;
        }
        let mut bufs = vec![Buf::readable(buf, req_len)];
        if let Some(at) = response_at {
            bufs.push(Buf::writable(at, RESPONSE_BYTES));
        } else if resp_len > 0 {
            bufs.push(Buf::writable(
                GuestAddress(buf.0 + u64::from(req_len)),
                resp_len,
            ));
        }
        let head = match side.ring.add(&bufs) {
            Ok(h) => h,
            Err(e) => {
                let _ = self.ram.free(buf);
                return Err(match e {
                    AddError::QueueFull { .. } => GpuDriverError::Full,
                    e => GpuDriverError::Add(e),
                });
            }
        };
        side.unkicked.push(head);
        self.pending.insert(
            (q as u8, head),
            Pending {
                tag,
                buf,
                req_len,
                kicked_at: None,
            },
        );
        Ok(())
    }

    /// Publishes what was submitted and kicks the device if it asked to be.
    pub fn kick(&mut self, q: Queue) -> Result<(), GpuDriverError> {
        let side = &mut self.queues[q as usize];
        if side.unkicked.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for head in side.unkicked.drain(..) {
            if let Some(p) = self.pending.get_mut(&(q as u8, head)) {
                p.kicked_at = Some(now);
            }
        }
        if side.ring.publish().map_err(GpuDriverError::Ring)? {
            write_eventfd(&side.kick).map_err(GpuDriverError::Io)?;
        }
        Ok(())
    }

    /// Collects every completion the device has posted.
    pub fn reap(&mut self) -> Result<usize, GpuDriverError> {
        let now = Instant::now();
        let mut n = 0;
        for qi in 0..2u8 {
            let used = self.queues[qi as usize]
                .ring
                .take_used()
                .map_err(GpuDriverError::Ring)?;
            for u in used {
                let Some(p) = self.pending.remove(&(qi, u.head)) else {
                    continue;
                };
                let queue = if qi == 0 {
                    Queue::Control
                } else {
                    Queue::Cursor
                };
                let response = if queue == Queue::Cursor {
                    Ok((CtrlHeader::default(), Response::OkNodata))
                } else {
                    let mut bytes = vec![0u8; u.len.min(RESPONSE_BYTES) as usize];
                    match self
                        .ram
                        .memory()
                        .read_slice(&mut bytes, GuestAddress(p.buf.0 + u64::from(p.req_len)))
                    {
                        Ok(()) => Response::decode(&bytes),
                        Err(_) => Err(ProtocolError::ShortResponse { needed: 24, got: 0 }),
                    }
                };
                let _ = self.ram.free(p.buf);
                self.ready.push(Completion {
                    tag: p.tag,
                    queue,
                    response,
                    latency: p
                        .kicked_at
                        .map_or(Duration::ZERO, |k| now.saturating_duration_since(k)),
                });
                n += 1;
            }
        }
        Ok(n)
    }

    /// Takes the completions reaped so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.ready)
    }

    /// Blocks until the device interrupts or `timeout` passes (this thread
    /// is the guest's CPU, never a backend shard). Returns whether it did.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, GpuDriverError> {
        let mut fds = [libc::pollfd {
            fd: self.irq.wake_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // ppoll: a nanosecond timeout, so a frame due in 300 µs is slept
        // for, not spun on (poll(2) rounds down to whole milliseconds).
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live pollfd, `ts` a live timespec, no mask.
        let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(GpuDriverError::Io(e));
        }
        if r > 0 {
            drain_eventfd(self.irq.wake_fd());
        }
        Ok(r > 0)
    }

    /// Submits, kicks and waits for one command: the synchronous call the
    /// Linux driver makes for most non-fenced commands.
    pub fn call(
        &mut self,
        q: Queue,
        req: &Request,
        timeout: Duration,
    ) -> Result<Completion, GpuDriverError> {
        let tag = u64::MAX - self.pending.len() as u64;
        self.submit(q, req, tag)?;
        self.kick(q)?;
        self.wait_for(tag, timeout)
    }

    /// Waits until the command tagged `tag` completes; other completions
    /// stay queued for `take_completions`.
    pub fn wait_for(&mut self, tag: u64, timeout: Duration) -> Result<Completion, GpuDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap()?;
            if let Some(i) = self.ready.iter().position(|c| c.tag == tag) {
                return Ok(self.ready.remove(i));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GpuDriverError::Timeout);
            }
            self.wait_call(left.min(Duration::from_millis(10)))?;
        }
    }

    /// Waits until `n` completions are ready (or the deadline passes);
    /// returns them all.
    pub fn wait_n(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Completion>, GpuDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.reap()?;
            if self.ready.len() >= n {
                return Ok(self.take_completions());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GpuDriverError::Timeout);
            }
            self.wait_call(left.min(Duration::from_millis(10)))?;
        }
    }
}
