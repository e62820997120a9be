//! 3D contexts and resources: `CTX_CREATE`, `RESOURCE_CREATE_3D`,
//! `TRANSFER_TO_HOST_3D`, `TRANSFER_FROM_HOST_3D`, `SUBMIT_3D`
//! (`CTX_DESTROY` has no body; attach/detach are bare resource refs).
//!
//! The spec leaves the 3D structs to the Linux header; their gallium
//! fields are the renderer's to judge, so only what could hurt the host is
//! checked here: a `RESOURCE_CREATE_3D`'s target, format and extent, which
//! size host memory ([`ResourceCreate3d::host_bytes`]), are held to
//! [`Limits`] per target, as a real GPU holds them.

use super::resource::read_new_resource_id;
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, put_u64, ByteReader};
use crate::protocol::limits::{DecodeContext, Limits};
use crate::protocol::types::{Box3d, ResourceId};
use crate::protocol::virgl_format::{bytes_per_texel, VIRGL_FORMAT_MAX};
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

/// Gallium's `pipe_texture_target` numbers.
pub const PIPE_BUFFER: u32 = 0;
/// `PIPE_TEXTURE_1D`.
pub const PIPE_TEXTURE_1D: u32 = 1;
/// `PIPE_TEXTURE_2D`.
pub const PIPE_TEXTURE_2D: u32 = 2;
/// `PIPE_TEXTURE_3D`.
pub const PIPE_TEXTURE_3D: u32 = 3;
/// `PIPE_TEXTURE_CUBE`.
pub const PIPE_TEXTURE_CUBE: u32 = 4;
/// `PIPE_TEXTURE_RECT`.
pub const PIPE_TEXTURE_RECT: u32 = 5;
/// `PIPE_TEXTURE_1D_ARRAY`.
pub const PIPE_TEXTURE_1D_ARRAY: u32 = 6;
/// `PIPE_TEXTURE_2D_ARRAY`.
pub const PIPE_TEXTURE_2D_ARRAY: u32 = 7;
/// `PIPE_TEXTURE_CUBE_ARRAY`, the last target.
pub const PIPE_TEXTURE_CUBE_ARRAY: u32 = 8;

/// Largest (width, height, depth, array_size) a resource of `target` may
/// have under `limits`; `None` for an unknown target. A cube has 6 layers.
fn extent_limits(target: u32, limits: &Limits) -> Option<[u32; 4]> {
    let (dim, dim3, layers) = (
        limits.max_dimension,
        limits.max_3d_dimension,
        limits.max_array_layers,
    );
    Some(match target {
        PIPE_BUFFER => [limits.max_buffer_bytes, 1, 1, 1],
        PIPE_TEXTURE_1D => [dim, 1, 1, 1],
        PIPE_TEXTURE_2D | PIPE_TEXTURE_RECT => [dim, dim, 1, 1],
        PIPE_TEXTURE_3D => [dim3, dim3, dim3, 1],
        PIPE_TEXTURE_CUBE => [dim, dim, 1, 6],
        PIPE_TEXTURE_1D_ARRAY => [dim, 1, 1, layers],
        PIPE_TEXTURE_2D_ARRAY | PIPE_TEXTURE_CUBE_ARRAY => [dim, dim, 1, layers],
        _ => return None,
    })
}

/// Mip levels below level 0 a resource this large can have: down to 1x1,
/// plus the one extra level virglrenderer accepts.
fn max_last_level(width: u32, height: u32, depth: u32) -> u32 {
    let largest = width.max(height).max(depth).max(1);
    largest.ilog2() + 1
}

impl ResourceCreate3d {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let resource_id = read_new_resource_id(r)?;
        let [target, format, bind, width, height, depth, array_size, last_level, nr_samples, flags] =
            r.u32_array::<10>()?;
        r.skip(4)?;
        let c = Self {
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
        };
        c.check(&ctx.limits)?;
        Ok(c)
    }

    /// The rules on what sizes host memory. Zero depth, layers and samples
    /// count as one (gallium's guests send 1; virglrenderer takes 0).
    fn check(&self, limits: &Limits) -> Result<(), ProtocolError> {
        let max =
            extent_limits(self.target, limits).ok_or(ProtocolError::UnknownTarget(self.target))?;
        if self.format >= VIRGL_FORMAT_MAX {
            return Err(ProtocolError::UnknownFormat(self.format));
        }
        let extent = [self.width, self.height, self.depth, self.array_size];
        if extent.iter().zip(max).any(|(&v, m)| v > m) {
            return Err(ProtocolError::Resource3dTooLarge {
                target: self.target,
                extent,
                max,
            });
        }
        let levels = max_last_level(self.width, self.height, self.depth);
        if self.last_level > levels {
            return Err(ProtocolError::TooManyMipLevels {
                last_level: self.last_level,
                max: levels,
            });
        }
        if self.nr_samples > limits.max_samples {
            return Err(ProtocolError::TooManySamples {
                nr_samples: self.nr_samples,
                max: limits.max_samples,
            });
        }
        Ok(())
    }

    /// Host bytes the resource's storage takes at most: every mip level of
    /// every layer and sample, at the format's bytes per texel (a buffer's
    /// width is its size in bytes). `None` when that does not fit 64 bits
    /// or the format is unknown; checked arithmetic throughout, so any
    /// guest values are safe here.
    pub fn host_bytes(&self) -> Option<u64> {
        let texel = if self.target == PIPE_BUFFER {
            1
        } else {
            bytes_per_texel(self.format)?
        };
        let one = |v: u32| u64::from(v.max(1));
        let mut texels = 0u64;
        for level in 0..=self.last_level.min(32) {
            let at = |v: u32| one(v.checked_shr(level).unwrap_or(0));
            let depth = if self.target == PIPE_TEXTURE_3D {
                at(self.depth)
            } else {
                one(self.depth)
            };
            let n = at(self.width)
                .checked_mul(at(self.height))?
                .checked_mul(depth)?;
            texels = texels.checked_add(n)?;
        }
        texels
            .checked_mul(texel)?
            .checked_mul(one(self.array_size))?
            .checked_mul(one(self.nr_samples))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn texture(target: u32, format: u32, extent: [u32; 4]) -> ResourceCreate3d {
        let [width, height, depth, array_size] = extent;
        ResourceCreate3d {
            resource_id: ResourceId(1),
            target,
            format,
            bind: 2,
            width,
            height,
            depth,
            array_size,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        }
    }

    #[test]
    fn host_bytes_count_format_mips_layers_and_samples() {
        // 256x256 RGBA8: 256 KiB.
        let mut c = texture(PIPE_TEXTURE_2D, 67, [256, 256, 1, 1]);
        assert_eq!(c.host_bytes(), Some(256 * 256 * 4));
        // A full mip chain: 256^2 + 128^2 + ... + 1 texels.
        c.last_level = 8;
        let chain: u64 = (0..=8).map(|l| (256u64 >> l).pow(2)).sum();
        assert_eq!(c.host_bytes(), Some(chain * 4));
        // R32G32B32A32_FLOAT, 4 samples, 6 layers.
        let mut c = texture(PIPE_TEXTURE_2D_ARRAY, 31, [64, 64, 1, 6]);
        c.nr_samples = 4;
        assert_eq!(c.host_bytes(), Some(64 * 64 * 16 * 6 * 4));
        // A 3D texture's mips shrink in depth too: 4x4x4 + 2x2x2 + 1.
        let mut c = texture(PIPE_TEXTURE_3D, 2, [4, 4, 4, 1]);
        c.last_level = 2;
        assert_eq!(c.host_bytes(), Some((64 + 8 + 1) * 4));
        // A buffer's width is its size in bytes, whatever the format.
        assert_eq!(
            texture(PIPE_BUFFER, 31, [1000, 1, 1, 1]).host_bytes(),
            Some(1000)
        );
    }

    #[test]
    fn host_bytes_of_any_guest_values_never_overflow() {
        let mut c = texture(PIPE_TEXTURE_2D, 27, [u32::MAX; 4]);
        c.nr_samples = u32::MAX;
        c.last_level = u32::MAX;
        assert_eq!(c.host_bytes(), None);
        assert_eq!(texture(PIPE_TEXTURE_2D, 313, [1; 4]).host_bytes(), None);
        // The two: 65536^3 x 16384 and 16384^2 x 16 x 2^30.
        let c = texture(PIPE_TEXTURE_2D, 2, [65536, 65536, 65536, 16384]);
        assert_eq!(c.host_bytes(), None);
        let c = texture(PIPE_TEXTURE_2D, 2, [16384, 16384, 16, 1 << 30]);
        assert_eq!(c.host_bytes(), None);
    }
}
