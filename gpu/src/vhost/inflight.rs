//! `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD`: the shared buffer in which a
//! backend records the descriptors it has taken but not yet completed, so a
//! restarted backend can resubmit them.
//!
//! Only the buffer is provided here: it is allocated with the size the
//! vhost-user spec gives for split queues and handed to the frontend, which
//! keeps it across reconnects. Recording descriptors in it and resubmitting
//! them after a reconnect is not implemented yet (a later issue); until then
//! a backend restart loses the commands that were in flight.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};

use vhost::vhost_user::message::VhostUserInflight;

/// `struct inflight_split_region` header: features u64, version u16,
/// desc_num u16, last_batch_head u16, used_idx u16.
const REGION_HEADER: u64 = 16;
/// `struct inflight_split_desc`: inflight u8, padding[5], next u16, counter u64.
const DESC_SIZE: u64 = 16;
/// Each queue's region starts on a cache line.
const ALIGN: u64 = 64;
/// Current layout version.
const VERSION: u16 = 1;
/// Largest split queue the spec allows.
const MAX_QUEUE_SIZE: u16 = 32768;
/// More queues than a GPU has is a malformed request.
const MAX_QUEUES: u16 = 8;

/// Bytes of inflight buffer for one split queue of `queue_size` entries.
pub fn split_queue_region_size(queue_size: u16) -> u64 {
    (REGION_HEADER + DESC_SIZE * u64::from(queue_size)).div_ceil(ALIGN) * ALIGN
}

/// The buffer given to (or received from) the frontend.
#[derive(Debug)]
pub struct InflightBuffer {
    pub fd: OwnedFd,
    pub size: u64,
    pub num_queues: u16,
    pub queue_size: u16,
}

/// Why an inflight request was refused.
#[derive(Debug)]
pub enum InflightError {
    Malformed(String),
    Io(io::Error),
}

impl std::fmt::Display for InflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InflightError::Malformed(why) => write!(f, "inflight request: {why}"),
            InflightError::Io(e) => write!(f, "inflight buffer: {e}"),
        }
    }
}

fn check(req: &VhostUserInflight) -> Result<(), InflightError> {
    let (n, q) = (req.num_queues, req.queue_size);
    if n == 0 || n > MAX_QUEUES || q == 0 || q > MAX_QUEUE_SIZE {
        return Err(InflightError::Malformed(format!(
            "{n} queues of {q} entries (1..={MAX_QUEUES} queues of 1..={MAX_QUEUE_SIZE})"
        )));
    }
    Ok(())
}

/// `GET_INFLIGHT_FD`: a zeroed memfd with every queue's region header
/// initialised (version, descriptor count).
pub fn allocate(req: &VhostUserInflight) -> Result<InflightBuffer, InflightError> {
    check(req)?;
    let per_queue = split_queue_region_size(req.queue_size);
    let size = per_queue * u64::from(req.num_queues);
    // SAFETY: a static NUL-terminated name; the result is checked.
    let raw = unsafe { libc::memfd_create(c"gpu-reactor-inflight".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(InflightError::Io(io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = File::from(fd);
    file.set_len(size).map_err(InflightError::Io)?;
    let mut header = [0u8; REGION_HEADER as usize];
    header[8..10].copy_from_slice(&VERSION.to_ne_bytes());
    header[10..12].copy_from_slice(&req.queue_size.to_ne_bytes());
    for q in 0..u64::from(req.num_queues) {
        file.seek(SeekFrom::Start(q * per_queue))
            .and_then(|_| file.write_all(&header))
            .map_err(InflightError::Io)?;
    }
    Ok(InflightBuffer {
        fd: file.into(),
        size,
        num_queues: req.num_queues,
        queue_size: req.queue_size,
    })
}

/// `SET_INFLIGHT_FD`: keeps the frontend's buffer (see the module docs for
/// what is not done with it yet).
pub fn adopt(req: &VhostUserInflight, fd: OwnedFd) -> Result<InflightBuffer, InflightError> {
    check(req)?;
    let (size, offset) = (req.mmap_size, req.mmap_offset);
    let need = split_queue_region_size(req.queue_size) * u64::from(req.num_queues);
    if offset != 0 || size < need {
        return Err(InflightError::Malformed(format!(
            "buffer of {size} bytes at offset {offset} (need {need} at 0)"
        )));
    }
    Ok(InflightBuffer {
        fd,
        size,
        num_queues: req.num_queues,
        queue_size: req.queue_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn split_queue_size_follows_the_spec_layout() {
        assert_eq!(split_queue_region_size(256), 16 + 16 * 256 + 48);
        assert_eq!(split_queue_region_size(1024) % 64, 0);
    }

    #[test]
    fn allocated_buffer_has_initialised_headers() {
        let req = VhostUserInflight::new(0, 0, 2, 256);
        let b = allocate(&req).unwrap();
        assert_eq!(b.size, 2 * split_queue_region_size(256));
        let mut f = File::from(b.fd);
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        let second = split_queue_region_size(256) as usize;
        assert_eq!(&all[8..12], &[1, 0, 0, 1]);
        assert_eq!(&all[second + 8..second + 12], &[1, 0, 0, 1]);
        assert!(allocate(&VhostUserInflight::new(0, 0, 0, 256)).is_err());
    }
}
