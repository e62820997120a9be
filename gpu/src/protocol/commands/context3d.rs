//! 3D contexts and resources: `CTX_CREATE`, `RESOURCE_CREATE_3D`,
//! `TRANSFER_TO_HOST_3D`, `TRANSFER_FROM_HOST_3D`, `SUBMIT_3D`
//! (`CTX_DESTROY` has no body; attach/detach are bare resource refs).
//!
//! The spec leaves the 3D structs to the Linux header; their gallium
//! fields (target, bind, format) are the renderer's to judge, so only
//! what could hurt the host is checked here.

use super::resource::read_new_resource_id;
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, put_u64, ByteReader};
use crate::protocol::limits::DecodeContext;
use crate::protocol::types::{Box3d, ResourceId};
use crate::protocol::wire::{
    DEBUG_NAME_SIZE, VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK, VIRTIO_GPU_F_CONTEXT_INIT,
};

/// `CTX_CREATE` for the context in `hdr.ctx_id` (never 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtxCreate {
    /// The first `nlen` bytes of `debug_name` (at most 64), not
    /// necessarily UTF-8.
    pub debug_name: Vec<u8>,
    /// Capset id from `context_init` (0: the device picks the type).
    /// Non-zero only with `F_CONTEXT_INIT`.
    pub capset_id: u8,
}

impl CtxCreate {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let nlen = r.u32()?;
        let context_init = r.u32()?;
        let name = r.bytes(DEBUG_NAME_SIZE)?;
        let max = ctx.max_debug_name();
        if nlen > max {
            return Err(ProtocolError::DebugNameTooLong { nlen, max });
        }
        if context_init & !VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK != 0 {
            return Err(ProtocolError::ContextInitReservedBits(context_init));
        }
        if context_init != 0 && !ctx.has_feature(VIRTIO_GPU_F_CONTEXT_INIT) {
            return Err(ProtocolError::ContextInitWithoutFeature(context_init));
        }
        let debug_name = name.get(..nlen as usize).unwrap_or(name).to_vec();
        Ok(Self {
            debug_name,
            capset_id: context_init as u8,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let name = &self.debug_name[..self.debug_name.len().min(DEBUG_NAME_SIZE)];
        put_u32(out, name.len() as u32);
        put_u32(out, u32::from(self.capset_id));
        out.extend_from_slice(name);
        out.resize(out.len() + DEBUG_NAME_SIZE - name.len(), 0);
    }

    /// The debug name for logs.
    pub fn debug_name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.debug_name).into_owned()
    }
}

/// `RESOURCE_CREATE_3D`: a gallium resource description, passed to the
/// renderer as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // gallium's pipe_resource fields, named as in the header
pub struct ResourceCreate3d {
    /// New resource id, never 0.
    pub resource_id: ResourceId,
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

impl ResourceCreate3d {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let resource_id = read_new_resource_id(r)?;
        let [target, format, bind, width, height, depth, array_size, last_level, nr_samples, flags] =
            r.u32_array::<10>()?;
        r.skip(4)?;
        Ok(Self {
            resource_id,
            target,
            format,
            bind,
            width,
            height,
            depth,
            array_size,
            last_level,
            nr_samples,
            flags,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.resource_id.0,
            self.target,
            self.format,
            self.bind,
            self.width,
            self.height,
            self.depth,
            self.array_size,
            self.last_level,
            self.nr_samples,
            self.flags,
            0,
        ] {
            put_u32(out, v);
        }
    }
}

/// `TRANSFER_TO_HOST_3D` / `TRANSFER_FROM_HOST_3D`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer3d {
    /// Region of the resource; its end does not overflow.
    pub box3d: Box3d,
    /// Byte offset in the backing.
    pub offset: u64,
    /// The resource.
    pub resource_id: ResourceId,
    /// Mip level.
    pub level: u32,
    /// Bytes per row in the backing (0: packed).
    pub stride: u32,
    /// Bytes per layer in the backing (0: packed).
    pub layer_stride: u32,
}

impl Transfer3d {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let box3d = Box3d::read(r)?;
        let offset = r.u64()?;
        let resource_id = ResourceId(r.u32()?);
        let level = r.u32()?;
        let stride = r.u32()?;
        let layer_stride = r.u32()?;
        if box3d.end().is_none() {
            return Err(ProtocolError::BoxOverflow);
        }
        Ok(Self {
            box3d,
            offset,
            resource_id,
            level,
            stride,
            layer_stride,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.box3d.write(out);
        put_u64(out, self.offset);
        for v in [
            self.resource_id.0,
            self.level,
            self.stride,
            self.layer_stride,
        ] {
            put_u32(out, v);
        }
    }
}

/// `SUBMIT_3D`: an opaque command stream for the context in `hdr.ctx_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit3d {
    /// Exactly `size` bytes, at most `max_submit_bytes`.
    pub data: Vec<u8>,
}

impl Submit3d {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let size = r.u32()?;
        r.skip(4)?;
        let max = ctx.limits.max_submit_bytes;
        if size > max {
            return Err(ProtocolError::SubmitTooLarge { size, max });
        }
        if size as usize > r.remaining() {
            return Err(ProtocolError::SubmitSizeExceedsChain {
                size,
                available: r.remaining(),
            });
        }
        Ok(Self {
            data: r.bytes(size as usize)?.to_vec(),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, u32::try_from(self.data.len()).unwrap_or(u32::MAX));
        put_u32(out, 0);
        out.extend_from_slice(&self.data);
    }
}
