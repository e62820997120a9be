//! `struct virtio_gpu_ctrl_hdr`, the 24 bytes in front of every request and
//! response on both queues.

use super::error::ProtocolError;
use super::le::{put_u32, put_u64, ByteReader};
use super::wire::{CTRL_HDR_SIZE, VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_FLAG_INFO_RING_IDX};

/// The control header: `type, flags, fence_id, ctx_id, ring_idx, padding[3]`.
///
/// Plain data: decoding the header checks nothing but its length; the rules
/// on flags and `ring_idx` live in the request decoder, which knows the
/// negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtrlHeader {
    /// `VIRTIO_GPU_CMD_*` or `VIRTIO_GPU_RESP_*`.
    pub kind: u32,
    /// `VIRTIO_GPU_FLAG_*`.
    pub flags: u32,
    /// Fence sequence number, meaningful with `FLAG_FENCE`.
    pub fence_id: u64,
    /// Rendering context, 0 for none.
    pub ctx_id: u32,
    /// Context ring (timeline), meaningful with `FLAG_INFO_RING_IDX`.
    pub ring_idx: u8,
}

impl CtrlHeader {
    /// Wire size.
    pub const SIZE: usize = CTRL_HDR_SIZE;

    /// A header of type `kind` with no flags.
    pub const fn new(kind: u32) -> Self {
        Self {
            kind,
            flags: 0,
            fence_id: 0,
            ctx_id: 0,
            ring_idx: 0,
        }
    }

    /// True when `FLAG_FENCE` is set.
    pub const fn is_fenced(&self) -> bool {
        self.flags & VIRTIO_GPU_FLAG_FENCE != 0
    }

    /// The ring index when `FLAG_INFO_RING_IDX` is set.
    pub const fn ring(&self) -> Option<u8> {
        if self.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
            Some(self.ring_idx)
        } else {
            None
        }
    }

    /// Reads a header; `ShortCommand` when fewer than 24 bytes are left.
    pub fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        r.require(Self::SIZE)?;
        let kind = r.u32()?;
        let flags = r.u32()?;
        let fence_id = r.u64()?;
        let ctx_id = r.u32()?;
        let ring_idx = r.u8()?;
        r.skip(3)?;
        Ok(Self {
            kind,
            flags,
            fence_id,
            ctx_id,
            ring_idx,
        })
    }

    /// Appends the 24 wire bytes (padding zeroed).
    pub fn write(&self, out: &mut Vec<u8>) {
        put_u32(out, self.kind);
        put_u32(out, self.flags);
        put_u64(out, self.fence_id);
        put_u32(out, self.ctx_id);
        out.extend_from_slice(&[self.ring_idx, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_24_bytes_in_spec_field_order() {
        let h = CtrlHeader {
            kind: 0x0104,
            flags: 3,
            fence_id: 0x1122_3344_5566_7788,
            ctx_id: 9,
            ring_idx: 5,
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(
            out,
            [
                0x04, 0x01, 0, 0, 3, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 9, 0,
                0, 0, 5, 0, 0, 0
            ]
        );
        assert_eq!(CtrlHeader::read(&mut ByteReader::new(&out)), Ok(h));
        assert!(h.is_fenced());
        assert_eq!(h.ring(), Some(5));
    }

    #[test]
    fn header_shorter_than_24_bytes_is_short_command() {
        let err = CtrlHeader::read(&mut ByteReader::new(&[0u8; 23])).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::ShortCommand {
                needed: 24,
                got: 23
            }
        );
    }
}
