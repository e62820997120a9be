//! `VHOST_USER_GPU_SET_SOCKET` (33): the `vhost` crate's frontend has no
//! method for it, so it is framed here and written on the same control
//! socket, between two of the crate's requests (never during one: the
//! session calls it from the only thread that uses the socket).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;

use super::framing::{self, Header, FLAG_NEED_REPLY, FLAG_VERSION_1};

/// The request number.
pub(crate) const GPU_SET_SOCKET: u32 = 33;

/// Why the message or its ack failed.
#[derive(Debug)]
pub(crate) enum SetSocketError {
    Io(io::Error),
    /// The peer closed the socket before acking.
    Closed,
    /// The ack was not an ack of message 33.
    BadAck(Header),
    /// The backend acked with a non-zero status.
    Refused(u64),
}

impl fmt::Display for SetSocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Closed => f.write_str("connection closed before the ack"),
            Self::BadAck(h) => write!(
                f,
                "unexpected reply (request {}, flags {:#x}, size {})",
                h.request, h.flags, h.size
            ),
            Self::Refused(v) => write!(f, "ack status {v:#x}"),
        }
    }
}

/// Sends the GPU socket `fd`; with `need_reply` (REPLY_ACK negotiated) also
/// reads the backend's ack.
pub(crate) fn send(ctrl: &UnixStream, fd: RawFd, need_reply: bool) -> Result<(), SetSocketError> {
    let mut flags = FLAG_VERSION_1;
    if need_reply {
        flags |= FLAG_NEED_REPLY;
    }
    let header = Header {
        request: GPU_SET_SOCKET,
        flags,
        size: 0,
    };
    framing::send_with_fd(ctrl, header, fd).map_err(SetSocketError::Io)?;
    if !need_reply {
        return Ok(());
    }
    let (ack, fds) = match framing::recv_header(ctrl) {
        Ok(Some(got)) => got,
        Ok(None) => return Err(SetSocketError::Closed),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(SetSocketError::Closed),
        Err(e) => return Err(SetSocketError::Io(e)),
    };
    if ack.request != GPU_SET_SOCKET || !ack.is_reply() || ack.size != 8 || !fds.is_empty() {
        return Err(SetSocketError::BadAck(ack));
    }
    let mut body = Vec::with_capacity(8);
    framing::recv_payload(ctrl, 8, &mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SetSocketError::Closed,
        _ => SetSocketError::Io(e),
    })?;
    let mut word = [0u8; 8];
    word.copy_from_slice(&body);
    match u64::from_ne_bytes(word) {
        0 => Ok(()),
        v => Err(SetSocketError::Refused(v)),
    }
}
