//! Fuzz target 2: the vhost-user message layer.
//!
//! One `gpu::vhost::Backend` (sim renderer) per process; each input is one
//! frontend session on a fresh socketpair, served by `Backend::serve_stream`
//! exactly as the daemon serves QEMU: framing (`frame.rs`), dispatch and
//! every message's rules (`session.rs`), the memory table (`memory.rs`,
//! mapping the input's memfd), rings (`vring.rs`) started on the device,
//! config space, the inflight buffer, the GPU socket and the backend
//! request channel (socketpair ends nobody answers), then the reset after
//! the session. Guest RAM is a memfd the input fills, so a session that
//! sets up a ring and kicks it reaches the device's intake too.
//!
//! Input: a sequence of ops. `0xfe`: write bytes into guest RAM (offset
//! u32, length u16, bytes). Anything else: one message (request: the op
//! byte mod 48, or with `0xff` a raw u32; flags byte: bit 0 NEED_REPLY,
//! bit 6 a made-up header size, bit 7 raw flags; payload length u16 and
//! bytes; fd byte: up to 3 descriptors of the kinds the next bytes name).

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gpu::device::DeviceConfig;
use gpu::vhost::frame::{Header, FLAG_NEED_REPLY, MAX_PAYLOAD, VERSION};
use gpu::vhost::{Backend, BackendOptions};

use crate::input::{Input, Output};
use crate::rss::{self, MemoryBound};

/// Guest RAM of a session (one memfd).
pub const RAM: u64 = 1 << 20;
pub const OP_WRITE_RAM: u8 = 0xfe;
pub const OP_RAW_REQUEST: u8 = 0xff;

/// Descriptor kinds an input can attach.
pub const FD_EVENTFD: u8 = 0;
pub const FD_GUEST_RAM: u8 = 1;
pub const FD_SOCKET: u8 = 2;
pub const FD_PIPE: u8 = 3;
pub const FD_SMALL_MEMFD: u8 = 4;

fn backend() -> &'static Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        // libFuzzer's main is C's: SIGPIPE is not ignored as in a Rust
        // binary, and the backend writes to sockets whose peer is gone.
        // SAFETY: setting a signal to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Backend::start(BackendOptions {
            shards: 2,
            device: DeviceConfig {
                memory_limit: rss::BUDGET,
                stall_warn: None,
                ..DeviceConfig::default()
            },
            renderer: Arc::new(gpu::render::sim::SimFactory::default()),
            stall_warn: None,
            // Nobody answers on the GPU socket or the backend channel.
            display_reply_timeout: Duration::from_millis(20),
            blob_reply_timeout: Duration::from_millis(20),
            host_visible_region: 16 << 20,
            ..BackendOptions::default()
        })
        .expect("backend")
    })
}

fn check(r: i32, what: &str) -> i32 {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = own(check(
        unsafe { libc::memfd_create(c"fuzz-ram".as_ptr(), libc::MFD_CLOEXEC) },
        "memfd_create",
    ));
    // SAFETY: no pointers.
    check(
        unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) },
        "ftruncate",
    );
    fd
}

/// One message as it goes on the wire.
struct Frame {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// Sends `bytes` with `fds` (MSG_NOSIGNAL: the session may have hung up).
fn send(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> bool {
    let mut done = 0;
    while done < bytes.len() {
        let with = if done == 0 { fds } else { &[] };
        let mut iov = libc::iovec {
            iov_base: bytes[done..].as_ptr() as *mut libc::c_void,
            iov_len: bytes.len() - done,
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(with) as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: zeroed msghdr is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !with.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: msg_control points at `space` bytes, enough for one
            // cmsghdr carrying `with.len()` descriptors (CMSG_SPACE above).
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(with) as u32) as usize;
                std::ptr::copy_nonoverlapping(
                    with.as_ptr(),
                    libc::CMSG_DATA(c).cast::<RawFd>(),
                    with.len(),
                );
            }
        }
        // SAFETY: `msg` points at live iovec and control buffers.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n <= 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let backend = backend();
    let floor = rss::run_floor();
    let memory = MemoryBound::start(floor);
    let ram = memfd(RAM);
    let mut i = Input::new(data);
    let mut frames = Vec::new();
    // Peers of the sockets handed over, held until the session ends.
    let mut peers = Vec::new();
    while !i.is_empty() && frames.len() < 256 {
        let op = i.u8();
        if op == OP_WRITE_RAM {
            let off = u64::from(i.u32()) % RAM;
            let n = usize::from(i.u16()) % 4096;
            let b = i.bytes(n);
            let len = b.len().min((RAM - off) as usize);
            // SAFETY: writes `len` bytes of a live slice.
            unsafe { libc::pwrite(ram.as_raw_fd(), b.as_ptr().cast(), len, off as libc::off_t) };
            continue;
        }
        let request = if op == OP_RAW_REQUEST {
            i.u32()
        } else {
            u32::from(op % 48)
        };
        let fb = i.u8();
        let mut flags = VERSION;
        if fb & 1 != 0 {
            flags |= FLAG_NEED_REPLY;
        }
        if fb & 0x80 != 0 {
            flags = i.u32();
        }
        let len = usize::from(i.u16()) % (MAX_PAYLOAD + 64);
        let payload = i.bytes(len);
        let size = if fb & 0x40 != 0 {
            i.u32()
        } else {
            payload.len() as u32
        };
        let mut header = Header::request(request, 0, 0);
        header.flags = flags;
        header.size = size;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let nfds = i.u8() & 3;
        let mut fds = Vec::new();
        for _ in 0..nfds {
            fds.push(match i.u8() % 5 {
                // SAFETY: no pointers; checked.
                FD_EVENTFD => own(check(
                    unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
                    "eventfd",
                )),
                FD_GUEST_RAM => ram.try_clone().expect("dup"),
                FD_SOCKET => {
                    let (a, b) = UnixStream::pair().expect("socketpair");
                    peers.push(b);
                    OwnedFd::from(a)
                }
                FD_PIPE => {
                    let mut p = [0; 2];
                    // SAFETY: `p` has room for the two descriptors.
                    check(
                        unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) },
                        "pipe2",
                    );
                    drop(own(p[1]));
                    own(p[0])
                }
                _ => memfd(4096),
            });
        }
        frames.push(Frame { bytes, fds });
    }
    let n = frames.len() as u64;
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    std::thread::scope(|s| {
        let writer = ours.try_clone().expect("dup");
        s.spawn(move || {
            for f in &frames {
                let raw: Vec<RawFd> = f.fds.iter().map(|f| f.as_raw_fd()).collect();
                if !send(&writer, &f.bytes, &raw) {
                    break;
                }
            }
            let _ = writer.shutdown(std::net::Shutdown::Write);
        });
        let mut reader = ours.try_clone().expect("dup");
        s.spawn(move || {
            let mut buf = [0u8; 4096];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
        });
        let end = backend.serve_stream(theirs);
        let _ = ours.shutdown(std::net::Shutdown::Both);
        if std::env::var_os("GPU_FUZZ_VERBOSE").is_some() {
            // For seeing what an input reaches: how it ended, what ran.
            eprintln!("session: {end}; device {:?}", backend.device().stats());
        }
    });
    drop(peers);
    memory.check(n, "vhost");
}

/// A message for seeds, with no descriptors unless `fds` names kinds.
pub fn seed_message(out: &mut Output, request: u32, need_reply: bool, payload: &[u8], fds: &[u8]) {
    if request < 48 {
        out.u8(request as u8);
    } else {
        out.u8(OP_RAW_REQUEST).u32(request);
    }
    out.u8(u8::from(need_reply));
    out.u16(payload.len() as u16).bytes(payload);
    out.u8(fds.len() as u8);
    for k in fds {
        out.u8(*k);
    }
}

/// Guest RAM contents for seeds.
pub fn seed_ram(out: &mut Output, offset: u32, bytes: &[u8]) {
    out.u8(OP_WRITE_RAM)
        .u32(offset)
        .u16(bytes.len() as u16)
        .bytes(bytes);
}
