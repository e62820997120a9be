//! The vhost-user message frame on a stream socket, for the two channels on
//! which loadgen is the answering side and the `vhost` crate's reader does
//! not fit: the GPU socket (payloads of megabytes) and the backend request
//! channel (every request must be answered, even unknown ones).
//!
//! Both use the same 12-byte header: `request`, `flags`, `size` (native
//! endian), then `size` bytes of payload. File descriptors ride on the
//! header's bytes, so the header is read with `recvmsg` and exactly its 12
//! bytes: a read never crosses into the next message's descriptors.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Bytes of a header.
pub(crate) const HEADER_SIZE: usize = 12;
/// Protocol version 1, in the low bits of `flags` (the control and backend
/// channels; the GPU socket leaves them 0).
pub(crate) const FLAG_VERSION_1: u32 = 0x1;
/// Set on every reply.
pub(crate) const FLAG_REPLY: u32 = 0x4;
/// The sender waits for a reply (REPLY_ACK).
pub(crate) const FLAG_NEED_REPLY: u32 = 0x8;
/// Most descriptors accepted with one message; more are a protocol error.
const MAX_FDS: usize = 8;

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub request: u32,
    pub flags: u32,
    pub size: u32,
}

impl Header {
    pub(crate) fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request.to_ne_bytes());
        b[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.size.to_ne_bytes());
        b
    }

    pub(crate) fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    pub(crate) fn is_reply(self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    pub(crate) fn needs_reply(self) -> bool {
        self.flags & FLAG_NEED_REPLY != 0
    }
}

/// Reads one header and the descriptors sent with it; `None` when the peer
/// closed the stream cleanly between messages.
pub(crate) fn recv_header(sock: &UnixStream) -> io::Result<Option<(Header, Vec<File>)>> {
    let mut buf = [0u8; HEADER_SIZE];
    let mut raw_fds: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let (got, nfds) = loop {
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at `buf`, a live local array of exactly
        // `iov_len` bytes that any byte pattern may fill; `raw_fds` has room
        // for MAX_FDS descriptors and the call reports how many it stored.
        match unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) } {
            Ok(r) => break r,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    let files: Vec<File> = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg installed these descriptors in this process for us
        // alone; each is wrapped exactly once, so each is closed exactly once.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER_SIZE {
        // The rest of the header carries no descriptors (they came with
        // the first byte); plain reads finish it.
        let mut reader = sock;
        reader.read_exact(&mut buf[got..])?;
    }
    Ok(Some((Header::from_bytes(&buf), files)))
}

/// Reads exactly `len` bytes of payload into `buf` (its capacity is reused
/// across messages; the bytes are read into it as they are, never zeroed
/// first: a 4 MB UPDATE costs its copy out of the socket and nothing more).
pub(crate) fn recv_payload(sock: &UnixStream, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.reserve(len);
    let got = sock.take(len as u64).read_to_end(buf)?;
    if got < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("payload ended after {got} of {len} bytes"),
        ));
    }
    Ok(())
}

/// Reads and drops `len` bytes: keeps the stream in step after a message
/// too large to hold.
pub(crate) fn discard_payload(sock: &UnixStream, mut len: u64) -> io::Result<()> {
    let mut scratch = vec![0u8; 64 << 10];
    let mut reader = sock;
    while len > 0 {
        let n = usize::try_from(len.min(scratch.len() as u64)).unwrap_or(scratch.len());
        reader.read_exact(&mut scratch[..n])?;
        len -= n as u64;
    }
    Ok(())
}

/// Writes a header and its payload.
pub(crate) fn send(sock: &UnixStream, header: Header, payload: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(HEADER_SIZE + payload.len());
    msg.extend_from_slice(&header.to_bytes());
    msg.extend_from_slice(payload);
    let mut writer = sock;
    writer.write_all(&msg)
}

/// Writes a header carrying one descriptor, with no payload.
pub(crate) fn send_with_fd(sock: &UnixStream, header: Header, fd: RawFd) -> io::Result<()> {
    let bytes = header.to_bytes();
    let sent = loop {
        match sock.send_with_fd(&bytes[..], fd) {
            Ok(n) => break n,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.errno())),
        }
    };
    if sent < bytes.len() {
        // The descriptor went with the first part; the rest is plain bytes.
        let mut writer = sock;
        writer.write_all(&bytes[sent..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn header_round_trips_and_reads_flags() {
        let h = Header {
            request: 33,
            flags: FLAG_VERSION_1 | FLAG_NEED_REPLY,
            size: 0,
        };
        let back = Header::from_bytes(&h.to_bytes());
        assert_eq!(back, h);
        assert!(back.needs_reply() && !back.is_reply());
    }

    #[test]
    fn a_descriptor_sent_with_a_header_arrives_with_it_and_not_with_the_next() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let h = Header {
            request: 7,
            flags: 0,
            size: 0,
        };
        send_with_fd(&a, h, x.as_raw_fd()).unwrap();
        send(&a, Header { size: 3, ..h }, b"abc").unwrap();
        let (got, fds) = recv_header(&b).unwrap().unwrap();
        assert_eq!((got, fds.len()), (h, 1));
        let (got, fds) = recv_header(&b).unwrap().unwrap();
        assert_eq!((got.size, fds.len()), (3, 0));
        let mut buf = Vec::new();
        recv_payload(&b, 3, &mut buf).unwrap();
        assert_eq!(buf, b"abc");
        drop(a);
        assert!(recv_header(&b).unwrap().is_none());
    }
}
