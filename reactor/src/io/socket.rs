//! recvmsg/sendmsg with SCM_RIGHTS file descriptors (vhost-user messages,
//! the QEMU GPU socket).
//!
//! The `msghdr`, its `iovec` and the control buffer live in one `Box` owned
//! by the op, so their addresses are stable until the completion.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use io_uring::{opcode, types};

use super::{is_would_block, AsyncFd};
use crate::op;

/// Most fds one message may carry (vhost-user allows 8 per message).
const MAX_FDS: usize = 32;

/// What one `recvmsg` produced.
#[derive(Debug)]
pub struct RecvMsg {
    /// Bytes appended to the buffer; 0 means the peer closed.
    pub len: usize,
    pub fds: Vec<OwnedFd>,
}

struct MsgParts {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// u64 storage keeps the cmsg alignment right.
    control: [u64; (MAX_FDS * 4 + 64) / 8],
    /// fds being sent, kept open until the kernel has copied them.
    _sending: Vec<OwnedFd>,
}

impl MsgParts {
    fn new(sending: Vec<OwnedFd>) -> Box<MsgParts> {
        Box::new(MsgParts {
            // SAFETY: msghdr and iovec are plain C structs; all-zero is a
            // valid (empty) value for both.
            hdr: unsafe { mem::zeroed() },
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
            control: [0; (MAX_FDS * 4 + 64) / 8],
            _sending: sending,
        })
    }

    /// Points the header at its own iovec and control buffer.
    fn link(&mut self, base: *mut u8, len: usize, control_len: usize) {
        self.iov.iov_base = base.cast();
        self.iov.iov_len = len;
        self.hdr.msg_iov = &mut self.iov;
        self.hdr.msg_iovlen = 1;
        if control_len > 0 {
            self.hdr.msg_control = self.control.as_mut_ptr().cast();
            self.hdr.msg_controllen = control_len;
        }
    }
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic only.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<libc::c_int>()) as u32) as usize }
}

pub(super) async fn recvmsg(
    fd: &AsyncFd,
    mut buf: Vec<u8>,
    max_fds: usize,
) -> (io::Result<RecvMsg>, Vec<u8>) {
    let max_fds = max_fds.min(MAX_FDS);
    loop {
        let mut parts = MsgParts::new(Vec::new());
        let spare = buf.spare_capacity_mut();
        let control_len = if max_fds > 0 { cmsg_space(max_fds) } else { 0 };
        parts.link(spare.as_mut_ptr().cast(), spare.len(), control_len);
        let hdr: *mut libc::msghdr = &mut parts.hdr;
        let entry = opcode::RecvMsg::new(types::Fd(fd.as_raw_fd()), hdr)
            .flags(libc::MSG_CMSG_CLOEXEC as u32)
            .build();
        // SAFETY: the header, iovec and control buffer are in `parts` (a
        // Box) and the iovec points into `buf`'s spare capacity; both are
        // owned by the op until completion, as is the fd.
        let (res, (_fd, parts, mut b)) =
            unsafe { op::run(entry, (fd.shared().clone(), parts, buf)) }.await;
        match res {
            Ok(n) => {
                // SAFETY: the kernel initialised `n` bytes of spare capacity.
                unsafe { b.set_len(b.len() + n as usize) };
                let fds = take_fds(&parts.hdr);
                if parts.hdr.msg_flags & libc::MSG_CTRUNC != 0 {
                    drop(fds);
                    return (
                        Err(io::Error::other(
                            "message carried more file descriptors than allowed",
                        )),
                        b,
                    );
                }
                return (
                    Ok(RecvMsg {
                        len: n as usize,
                        fds,
                    }),
                    b,
                );
            }
            Err(e) if is_would_block(&e) => {
                buf = b;
                if let Err(e) = fd.poll(libc::POLLIN as u32).await {
                    return (Err(e), buf);
                }
            }
            Err(e) => return (Err(e), b),
        }
    }
}

/// Takes ownership of every fd in the SCM_RIGHTS control messages.
fn take_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    if hdr.msg_controllen == 0 {
        return fds;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed cmsgs; CMSG_* walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<libc::c_int>();
                for i in 0..n {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    if raw >= 0 {
                        // The kernel just installed this fd for us.
                        fds.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    fds
}

pub(super) async fn sendmsg(
    fd: &AsyncFd,
    mut buf: Vec<u8>,
    fds: &[BorrowedFd<'_>],
) -> (io::Result<usize>, Vec<u8>) {
    if fds.len() > MAX_FDS {
        return (
            Err(io::Error::other(
                "too many file descriptors for one message",
            )),
            buf,
        );
    }
    // The op owns duplicates, so the caller's fds may close at any time.
    let mut owned = Vec::with_capacity(fds.len());
    for f in fds {
        match f.try_clone_to_owned() {
            Ok(o) => owned.push(o),
            Err(e) => return (Err(e), buf),
        }
    }
    loop {
        let raw: Vec<libc::c_int> = owned.iter().map(|f| f.as_raw_fd()).collect();
        let mut parts = MsgParts::new(mem::take(&mut owned));
        let control_len = if raw.is_empty() {
            0
        } else {
            cmsg_space(raw.len())
        };
        parts.link(buf.as_mut_ptr(), buf.len(), control_len);
        if !raw.is_empty() {
            // SAFETY: the control buffer holds `cmsg_space(raw.len())` bytes
            // (checked against MAX_FDS above); we write one cmsg into it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&parts.hdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len =
                    libc::CMSG_LEN((raw.len() * mem::size_of::<libc::c_int>()) as u32) as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                    raw.len(),
                );
            }
        }
        let hdr: *const libc::msghdr = &parts.hdr;
        let entry = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        // SAFETY: header, iovec, control buffer and the fds being sent are in
        // `parts`; the iovec points into `buf`; all owned by the op.
        let (res, (_fd, mut parts, b)) =
            unsafe { op::run(entry, (fd.shared().clone(), parts, buf)) }.await;
        buf = b;
        match res {
            Ok(n) => return (Ok(n as usize), buf),
            Err(e) if is_would_block(&e) => {
                owned = mem::take(&mut parts._sending);
                if let Err(e) = fd.poll(libc::POLLOUT as u32).await {
                    return (Err(e), buf);
                }
            }
            Err(e) => return (Err(e), buf),
        }
    }
}
