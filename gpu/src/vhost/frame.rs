//! vhost-user framing on the control socket: a 12-byte header (request,
//! flags, payload size, all native-endian u32), the payload, and file
//! descriptors riding along as `SCM_RIGHTS`.
//!
//! The vhost crate keeps its `Connection` and header type private, so the
//! framing is ours; the payload layouts still come from
//! `vhost::vhost_user::message`. These calls block: they run on the
//! session's control thread, never on a reactor shard. Every size comes
//! from the peer, so every allocation here is bounded by [`MAX_PAYLOAD`].

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::ByteValued;

/// Header bytes before every payload.
pub const HEADER_SIZE: usize = 12;
/// Protocol version carried in flag bits 0..=1.
pub const VERSION: u32 = 0x1;
const VERSION_MASK: u32 = 0x3;
/// The message answers a request.
pub const FLAG_REPLY: u32 = 0x4;
/// The sender wants a reply (`REPLY_ACK`).
pub const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest payload either side may send (the vhost-user `MAX_MSG_SIZE`).
pub const MAX_PAYLOAD: usize = 0x1000;
/// Most descriptors one message may carry (a memory table of 32 regions).
pub const MAX_FDS: usize = 32;

/// The 12-byte message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    /// A request header (version 1, `flags` added).
    pub fn request(request: u32, flags: u32, size: usize) -> Header {
        Header {
            request,
            flags: VERSION | flags,
            size: size as u32,
        }
    }

    /// The reply header for a request.
    pub fn reply_to(request: u32, size: usize) -> Header {
        Header::request(request, FLAG_REPLY, size)
    }

    pub fn need_reply(&self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }

    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    /// The rules every header must keep: version 1, no reserved flag bits,
    /// a payload no larger than [`MAX_PAYLOAD`].
    pub fn check(&self) -> Result<(), FrameError> {
        if self.flags & VERSION_MASK != VERSION {
            return Err(FrameError::Malformed(format!(
                "request {} has protocol version {} (only 1 exists)",
                self.request,
                self.flags & VERSION_MASK
            )));
        }
        if self.flags & !(VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY) != 0 {
            return Err(FrameError::Malformed(format!(
                "request {} sets reserved flag bits {:#x}",
                self.request, self.flags
            )));
        }
        if self.size as usize > MAX_PAYLOAD {
            return Err(FrameError::Malformed(format!(
                "request {} announces a {}-byte payload (at most {MAX_PAYLOAD})",
                self.request, self.size
            )));
        }
        Ok(())
    }
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why a message could not be received.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between messages.
    Closed,
    Io(io::Error),
    /// The bytes break a framing rule (the reason says which).
    Malformed(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => f.write_str("peer closed the connection"),
            FrameError::Io(e) => write!(f, "socket error: {e}"),
            FrameError::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads one whole message (blocking).
pub fn recv(stream: &UnixStream) -> Result<Message, FrameError> {
    let mut fds = Vec::new();
    let mut head = [0u8; HEADER_SIZE];
    let got = recv_exact(stream, &mut head, &mut fds)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < HEADER_SIZE {
        return Err(FrameError::Malformed(format!(
            "connection closed inside a message header ({got} of {HEADER_SIZE} bytes)"
        )));
    }
    let header = Header::from_bytes(&head);
    header.check()?;
    let mut payload = vec![0u8; header.size as usize];
    let got = recv_exact(stream, &mut payload, &mut fds)?;
    if got < payload.len() {
        return Err(FrameError::Malformed(format!(
            "connection closed inside the payload of request {} ({got} of {} bytes)",
            header.request, header.size
        )));
    }
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Writes one message with `fds` attached to its first byte (blocking).
pub fn send(
    stream: &UnixStream,
    header: Header,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(payload);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut done = send_some(stream.as_raw_fd(), &bytes, &raw)?;
    while done < bytes.len() {
        done += send_some(stream.as_raw_fd(), &bytes[done..], &[])?;
    }
    Ok(())
}

/// Reads a fixed-layout payload: exactly `size_of::<T>()` bytes, copied
/// (the payload buffer need not be aligned for `T`).
pub fn parse<T: ByteValued + Default>(payload: &[u8]) -> Option<T> {
    if payload.len() != mem::size_of::<T>() {
        return None;
    }
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(payload);
    Some(value)
}

/// Fills `buf`, collecting descriptors; returns the bytes read (short only
/// when the peer closed).
fn recv_exact(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, FrameError> {
    let mut done = 0;
    while done < buf.len() {
        match recv_some(stream.as_raw_fd(), &mut buf[done..], fds) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                return Err(FrameError::Malformed(format!(
                    "message carried more than {MAX_FDS} file descriptors"
                )))
            }
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(done)
}

/// Room for [`MAX_FDS`] descriptors, u64-aligned as cmsg headers need.
type ControlBuf = [u64; (MAX_FDS * 4 + 64) / 8];

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic only.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<libc::c_int>()) as u32) as usize }
}

/// One `recvmsg`; descriptors received are appended to `fds` (owned, close
/// on exec). More descriptors than fit is an `EMSGSIZE` error.
pub(crate) fn recv_some(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut control: ControlBuf = [0; (MAX_FDS * 4 + 64) / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg_space(MAX_FDS);
    // SAFETY: `hdr` points at `iov` (into `buf`) and `control`, all live
    // for the call; the kernel writes at most their stated lengths.
    let n = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    take_fds(&hdr, fds);
    if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok(n as usize)
}

/// Takes ownership of every descriptor in the `SCM_RIGHTS` messages.
fn take_fds(hdr: &libc::msghdr, out: &mut Vec<OwnedFd>) {
    if hdr.msg_controllen == 0 {
        return;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed cmsgs; the CMSG_* macros walk them within that length.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<libc::c_int>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    if raw >= 0 {
                        // The kernel just installed this descriptor for us.
                        out.push(OwnedFd::from_raw_fd(raw));
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
}

/// One `sendmsg` with `fds` attached (none when empty).
pub(crate) fn send_some(fd: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(
            "too many file descriptors for one message",
        ));
    }
    let mut control: ControlBuf = [0; (MAX_FDS * 4 + 64) / 8];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = cmsg_space(fds.len());
        // SAFETY: the control buffer holds `cmsg_space(fds.len())` bytes
        // (fds.len() <= MAX_FDS checked above); one cmsg is written into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                fds.len(),
            );
        }
    }
    loop {
        // SAFETY: `hdr` points at `iov` (into `bytes`, only read by the
        // kernel) and `control`, all live for the call.
        let n = unsafe { libc::sendmsg(fd, &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_reserved_bits() {
        let h = Header::request(24, FLAG_NEED_REPLY, 28);
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert!(h.check().is_ok());
        let bad = Header { flags: 0x11, ..h };
        assert!(bad.check().is_err());
        let v2 = Header { flags: 0x2, ..h };
        assert!(v2.check().is_err());
        let huge = Header {
            size: MAX_PAYLOAD as u32 + 1,
            ..h
        };
        assert!(huge.check().is_err());
    }

    #[test]
    fn message_with_fds_crosses_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        send(
            &a,
            Header::request(12, 0, 8),
            &7u64.to_ne_bytes(),
            &[file.as_fd()],
        )
        .unwrap();
        let m = recv(&b).unwrap();
        assert_eq!(m.header.request, 12);
        assert_eq!(m.payload, 7u64.to_ne_bytes());
        assert_eq!(m.fds.len(), 1);
        drop(a);
        assert!(matches!(recv(&b), Err(FrameError::Closed)));
    }
}
