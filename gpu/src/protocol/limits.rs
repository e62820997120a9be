//! What the stateless decoder needs to know about the device: negotiated
//! features, scanout and capset counts, and the bounds that keep guest
//! values from sizing host allocations.

use super::wire::{
    CTRL_HDR_SIZE, DEBUG_NAME_SIZE, MEM_ENTRY_SIZE, VIRTIO_GPU_F_CONTEXT_INIT,
    VIRTIO_GPU_MAX_SCANOUTS,
};

/// Bounds on guest-chosen sizes, checked before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most `mem_entry`s in one `ATTACH_BACKING` or `CREATE_BLOB`
    /// (QEMU uses 16384: 64 MiB of 4 KiB pages).
    pub max_backing_entries: u32,
    /// Largest `SUBMIT_3D` command buffer, in bytes.
    pub max_submit_bytes: u32,
    /// Largest width or height of a 2D resource or blob scanout, and of a
    /// 1D, 2D, rectangle, cube or array texture (`RESOURCE_CREATE_3D`):
    /// 16384, what current GPUs (and llvmpipe) allow for 2D textures.
    pub max_dimension: u32,
    /// Largest width, height or depth of a 3D texture (`PIPE_TEXTURE_3D`):
    /// 2048, GL's `MAX_3D_TEXTURE_SIZE` on current GPUs.
    pub max_3d_dimension: u32,
    /// Most layers of an array texture (cube faces count as layers): 2048,
    /// GL's `MAX_ARRAY_TEXTURE_LAYERS` on current GPUs.
    pub max_array_layers: u32,
    /// Most samples per pixel of a multisampled texture: 16.
    pub max_samples: u32,
    /// Largest `PIPE_BUFFER` resource, in bytes (its width): 2 GiB.
    pub max_buffer_bytes: u32,
    /// Longest `CTX_CREATE` debug name; never above the 64-byte field.
    pub max_debug_name: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_backing_entries: 16 * 1024,
            max_submit_bytes: 4 * 1024 * 1024,
            max_dimension: 16 * 1024,
            max_3d_dimension: 2048,
            max_array_layers: 2048,
            max_samples: 16,
            max_buffer_bytes: 1 << 31,
            max_debug_name: DEBUG_NAME_SIZE as u32,
        }
    }
}

impl Limits {
    /// The largest readable part a valid request can have under these
    /// limits: the bound for gathering a descriptor chain.
    pub fn max_request_len(&self) -> usize {
        // SUBMIT_3D: header + {size, padding} + data.
        let submit = CTRL_HDR_SIZE + 8 + self.max_submit_bytes as usize;
        // RESOURCE_CREATE_BLOB is the larger of the two commands with
        // mem entries: header + 32-byte body + entries.
        let backing =
            CTRL_HDR_SIZE + 32 + MEM_ENTRY_SIZE.saturating_mul(self.max_backing_entries as usize);
        submit.max(backing)
    }
}

/// Device facts the stateless checks depend on. Built once at feature
/// negotiation and shared read-only by whoever decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// Negotiated device feature bits (`1 << VIRTIO_GPU_F_*`).
    pub features: u64,
    /// `num_scanouts` from config space (1..=16).
    pub num_scanouts: u32,
    /// `num_capsets` from config space.
    pub num_capsets: u32,
    /// Size bounds.
    pub limits: Limits,
}

impl Default for DecodeContext {
    fn default() -> Self {
        Self {
            features: 0,
            num_scanouts: 1,
            num_capsets: 0,
            limits: Limits::default(),
        }
    }
}

impl DecodeContext {
    /// True when feature bit `bit` (a `VIRTIO_GPU_F_*`) was negotiated.
    pub const fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1u64 << bit) != 0
    }

    /// Scanouts ids below this are valid; never above the spec's 16.
    pub fn scanout_count(&self) -> u32 {
        self.num_scanouts.min(VIRTIO_GPU_MAX_SCANOUTS as u32)
    }

    /// True when `FLAG_INFO_RING_IDX` may be used.
    pub const fn ring_timelines(&self) -> bool {
        self.has_feature(VIRTIO_GPU_F_CONTEXT_INIT)
    }

    /// The effective debug name bound (the field is 64 bytes whatever the
    /// configured limit says).
    pub fn max_debug_name(&self) -> u32 {
        self.limits.max_debug_name.min(DEBUG_NAME_SIZE as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_request_bound_is_header_plus_max_submit() {
        assert_eq!(
            Limits::default().max_request_len(),
            24 + 8 + 4 * 1024 * 1024
        );
    }

    #[test]
    fn scanout_count_never_exceeds_sixteen() {
        let ctx = DecodeContext {
            num_scanouts: 99,
            ..DecodeContext::default()
        };
        assert_eq!(ctx.scanout_count(), 16);
    }
}
