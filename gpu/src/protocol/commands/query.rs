//! Device queries: `GET_CAPSET_INFO`, `GET_CAPSET`, `GET_EDID`
//! (`GET_DISPLAY_INFO` has no body).

use super::check_scanout;
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, ByteReader};
use crate::protocol::limits::DecodeContext;
use crate::protocol::types::ScanoutId;

/// `GET_CAPSET_INFO`: describe the capset at an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetCapsetInfo {
    /// Below `num_capsets` (the spec's MUST).
    pub capset_index: u32,
}

impl GetCapsetInfo {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let capset_index = r.u32()?;
        r.skip(4)?;
        if capset_index >= ctx.num_capsets {
            return Err(ProtocolError::CapsetIndexOutOfRange {
                index: capset_index,
                num: ctx.num_capsets,
            });
        }
        Ok(Self { capset_index })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.capset_index);
        put_u32(out, 0);
    }
}

/// `GET_CAPSET`: fetch one version of a capset. Whether the device has it
/// is a stateful check (`UnsupportedCapset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetCapset {
    /// `VIRTIO_GPU_CAPSET_*`.
    pub capset_id: u32,
    /// Version wanted.
    pub capset_version: u32,
}

impl GetCapset {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            capset_id: r.u32()?,
            capset_version: r.u32()?,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.capset_id);
        put_u32(out, self.capset_version);
    }
}

/// `GET_EDID`: the EDID of one scanout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetEdid {
    /// Below `num_scanouts`.
    pub scanout_id: ScanoutId,
}

impl GetEdid {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let scanout_id = check_scanout(r.u32()?, ctx)?;
        r.skip(4)?;
        Ok(Self { scanout_id })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.scanout_id.0);
        put_u32(out, 0);
    }
}
