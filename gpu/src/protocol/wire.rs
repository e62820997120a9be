//! Numbers the virtio-gpu wire protocol (virtio 1.3, "GPU Device") assigns:
//! command and response types, header flags, pixel formats, blob memory
//! kinds and flags, feature bits, capset ids and the fixed struct sizes the
//! decoder and encoders agree on.
//!
//! Kept as plain `u32`/`u64` constants, spelled as in the specification, so
//! that a reader can grep the spec and this file for the same name.

// ---- Feature bits (device feature word, bit positions) ----

/// virgl 3D mode is supported.
pub const VIRTIO_GPU_F_VIRGL: u32 = 0;
/// `GET_EDID` is supported.
pub const VIRTIO_GPU_F_EDID: u32 = 1;
/// `RESOURCE_ASSIGN_UUID` is supported.
pub const VIRTIO_GPU_F_RESOURCE_UUID: u32 = 2;
/// Blob resources (`RESOURCE_CREATE_BLOB`, `SET_SCANOUT_BLOB`, map/unmap).
pub const VIRTIO_GPU_F_RESOURCE_BLOB: u32 = 3;
/// Context types chosen at `CTX_CREATE` and per-ring fence timelines.
pub const VIRTIO_GPU_F_CONTEXT_INIT: u32 = 4;

// ---- Configuration space ----

/// `events_read` bit: the display configuration changed.
pub const VIRTIO_GPU_EVENT_DISPLAY: u32 = 1 << 0;
/// Upper bound of `num_scanouts` and the length of the display-info array.
pub const VIRTIO_GPU_MAX_SCANOUTS: usize = 16;

// ---- Shared memory region ids ----

/// No shared memory region.
pub const VIRTIO_GPU_SHM_ID_UNDEFINED: u8 = 0;
/// The host visible memory region that `RESOURCE_MAP_BLOB` maps into.
pub const VIRTIO_GPU_SHM_ID_HOST_VISIBLE: u8 = 1;

// ---- RESOURCE_CREATE_3D flags ----

/// The resource's first row is the top one (Linux header; not in the spec).
pub const VIRTIO_GPU_RESOURCE_FLAG_Y_0_TOP: u32 = 1 << 0;

// ---- 2D commands ----

/// Request the per-scanout preferred modes.
pub const VIRTIO_GPU_CMD_GET_DISPLAY_INFO: u32 = 0x0100;
/// Create a 2D resource.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_2D: u32 = 0x0101;
/// Destroy a resource.
pub const VIRTIO_GPU_CMD_RESOURCE_UNREF: u32 = 0x0102;
/// Point a scanout at a resource (or disable it with resource 0).
pub const VIRTIO_GPU_CMD_SET_SCANOUT: u32 = 0x0103;
/// Flush a rectangle of a resource to the scanouts showing it.
pub const VIRTIO_GPU_CMD_RESOURCE_FLUSH: u32 = 0x0104;
/// Copy a rectangle from guest backing into a 2D resource.
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D: u32 = 0x0105;
/// Attach guest pages as backing store.
pub const VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING: u32 = 0x0106;
/// Detach the backing store.
pub const VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING: u32 = 0x0107;
/// Describe the capset at an index.
pub const VIRTIO_GPU_CMD_GET_CAPSET_INFO: u32 = 0x0108;
/// Fetch a capset's data.
pub const VIRTIO_GPU_CMD_GET_CAPSET: u32 = 0x0109;
/// Fetch a scanout's EDID.
pub const VIRTIO_GPU_CMD_GET_EDID: u32 = 0x010a;
/// Export a resource under a UUID.
pub const VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID: u32 = 0x010b;
/// Create a blob resource.
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB: u32 = 0x010c;
/// Point a scanout at a blob resource with an explicit layout.
pub const VIRTIO_GPU_CMD_SET_SCANOUT_BLOB: u32 = 0x010d;

// ---- 3D commands ----

/// Create a rendering context.
pub const VIRTIO_GPU_CMD_CTX_CREATE: u32 = 0x0200;
/// Destroy a rendering context.
pub const VIRTIO_GPU_CMD_CTX_DESTROY: u32 = 0x0201;
/// Make a resource visible to a context.
pub const VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE: u32 = 0x0202;
/// Remove a resource from a context.
pub const VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE: u32 = 0x0203;
/// Create a 3D resource (gallium-style description).
pub const VIRTIO_GPU_CMD_RESOURCE_CREATE_3D: u32 = 0x0204;
/// Copy a box from guest backing into a 3D resource.
pub const VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D: u32 = 0x0205;
/// Copy a box from a 3D resource into guest backing.
pub const VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D: u32 = 0x0206;
/// Submit an opaque command stream to a context.
pub const VIRTIO_GPU_CMD_SUBMIT_3D: u32 = 0x0207;
/// Map a host blob into the host visible memory region.
pub const VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB: u32 = 0x0208;
/// Unmap a host blob from the host visible memory region.
pub const VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB: u32 = 0x0209;

// ---- Cursor queue commands ----

/// Set the cursor image and position.
pub const VIRTIO_GPU_CMD_UPDATE_CURSOR: u32 = 0x0300;
/// Move the cursor without changing its image.
pub const VIRTIO_GPU_CMD_MOVE_CURSOR: u32 = 0x0301;

// ---- Success responses ----

/// Success, no payload.
pub const VIRTIO_GPU_RESP_OK_NODATA: u32 = 0x1100;
/// Success, display info payload.
pub const VIRTIO_GPU_RESP_OK_DISPLAY_INFO: u32 = 0x1101;
/// Success, capset info payload.
pub const VIRTIO_GPU_RESP_OK_CAPSET_INFO: u32 = 0x1102;
/// Success, capset data payload.
pub const VIRTIO_GPU_RESP_OK_CAPSET: u32 = 0x1103;
/// Success, EDID payload.
pub const VIRTIO_GPU_RESP_OK_EDID: u32 = 0x1104;
/// Success, UUID payload.
pub const VIRTIO_GPU_RESP_OK_RESOURCE_UUID: u32 = 0x1105;
/// Success, map info payload.
pub const VIRTIO_GPU_RESP_OK_MAP_INFO: u32 = 0x1106;

// ---- Error responses ----

/// Unspecified error (also: malformed or unknown request).
pub const VIRTIO_GPU_RESP_ERR_UNSPEC: u32 = 0x1200;
/// The device could not allocate what the request needs.
pub const VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY: u32 = 0x1201;
/// The scanout id is not one the device has.
pub const VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
/// The resource id is zero, unknown, or already in use.
pub const VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
/// The context id is zero, unknown, or already in use.
pub const VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
/// A field has a value the request cannot have.
pub const VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER: u32 = 0x1205;

// ---- Header flags ----

/// The response must wait for completion and echo `fence_id`.
pub const VIRTIO_GPU_FLAG_FENCE: u32 = 1 << 0;
/// `ring_idx` names the context ring (timeline) of the fence.
pub const VIRTIO_GPU_FLAG_INFO_RING_IDX: u32 = 1 << 1;
/// Every header flag this protocol version defines.
pub const VIRTIO_GPU_FLAGS_KNOWN: u32 = VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX;
/// Highest ring index the spec allows (inclusive).
pub const VIRTIO_GPU_MAX_RING_IDX: u8 = 63;

// ---- Pixel formats (enum virtio_gpu_formats) ----

/// B8G8R8A8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM: u32 = 1;
/// B8G8R8X8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM: u32 = 2;
/// A8R8G8B8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM: u32 = 3;
/// X8R8G8B8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM: u32 = 4;
/// R8G8B8A8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM: u32 = 67;
/// X8B8G8R8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM: u32 = 68;
/// A8B8G8R8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM: u32 = 121;
/// R8G8B8X8, 4 bytes per pixel.
pub const VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM: u32 = 134;

// ---- Blob resources ----

/// Guest-only blob: guest pages only.
pub const VIRTIO_GPU_BLOB_MEM_GUEST: u32 = 0x0001;
/// Host-only blob: a context-local host allocation named by `blob_id`.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D: u32 = 0x0002;
/// Default blob: host allocation shadowed by guest pages.
pub const VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST: u32 = 0x0003;

/// The blob will be mapped (`RESOURCE_MAP_BLOB` or guest mmap).
pub const VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE: u32 = 0x0001;
/// The blob is shared between driver instances.
pub const VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE: u32 = 0x0002;
/// The blob is shared with other virtio devices.
pub const VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE: u32 = 0x0004;
/// Every blob flag this protocol version defines.
pub const VIRTIO_GPU_BLOB_FLAGS_KNOWN: u32 = VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE
    | VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE
    | VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE;

// ---- RESOURCE_MAP_BLOB map_info ----

/// Bits of `map_info` that carry the caching mode.
pub const VIRTIO_GPU_MAP_CACHE_MASK: u32 = 0x0f;
/// No caching information.
pub const VIRTIO_GPU_MAP_CACHE_NONE: u32 = 0x00;
/// Map cached.
pub const VIRTIO_GPU_MAP_CACHE_CACHED: u32 = 0x01;
/// Map uncached.
pub const VIRTIO_GPU_MAP_CACHE_UNCACHED: u32 = 0x02;
/// Map write-combined.
pub const VIRTIO_GPU_MAP_CACHE_WC: u32 = 0x03;

// ---- Capability sets and context init ----

/// Gallium/TGSI virgl protocol, first edition.
pub const VIRTIO_GPU_CAPSET_VIRGL: u32 = 1;
/// Gallium/TGSI virgl protocol, second edition.
pub const VIRTIO_GPU_CAPSET_VIRGL2: u32 = 2;
/// gfxstream (GLES and Vulkan streaming).
pub const VIRTIO_GPU_CAPSET_GFXSTREAM_VULKAN: u32 = 3;
/// Mesa's Venus Vulkan protocol.
pub const VIRTIO_GPU_CAPSET_VENUS: u32 = 4;
/// Wayland proxying (cross-domain).
pub const VIRTIO_GPU_CAPSET_CROSS_DOMAIN: u32 = 5;
/// Native DRM context.
pub const VIRTIO_GPU_CAPSET_DRM: u32 = 6;
/// Bits of `ctx_create.context_init` that carry the capset id.
pub const VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0x0000_00ff;

// ---- Fixed sizes on the wire (bytes) ----

/// `struct virtio_gpu_ctrl_hdr`.
pub const CTRL_HDR_SIZE: usize = 24;
/// `struct virtio_gpu_config`.
pub const CONFIG_SIZE: usize = 16;
/// `struct virtio_gpu_mem_entry`.
pub const MEM_ENTRY_SIZE: usize = 16;
/// `struct virtio_gpu_display_one` (rect, enabled, flags).
pub const DISPLAY_ONE_SIZE: usize = 24;
/// `char debug_name[64]` of `struct virtio_gpu_ctx_create`.
pub const DEBUG_NAME_SIZE: usize = 64;
/// `u8 edid[1024]` of `struct virtio_gpu_resp_edid`.
pub const EDID_BLOB_SIZE: usize = 1024;
/// Bytes per pixel of every `VIRTIO_GPU_FORMAT_*`.
pub const FORMAT_BYTES_PER_PIXEL: u32 = 4;
/// Size of the request struct that follows the header, per command type.
/// Variable tails (mem entries, submit data) come after this.
pub const fn request_body_size(kind: u32) -> Option<usize> {
    Some(match kind {
        VIRTIO_GPU_CMD_GET_DISPLAY_INFO | VIRTIO_GPU_CMD_CTX_DESTROY => 0,
        VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => 16,
        VIRTIO_GPU_CMD_RESOURCE_UNREF
        | VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING
        | VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING
        | VIRTIO_GPU_CMD_GET_CAPSET_INFO
        | VIRTIO_GPU_CMD_GET_CAPSET
        | VIRTIO_GPU_CMD_GET_EDID
        | VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID
        | VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE
        | VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE
        | VIRTIO_GPU_CMD_SUBMIT_3D
        | VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => 8,
        VIRTIO_GPU_CMD_SET_SCANOUT | VIRTIO_GPU_CMD_RESOURCE_FLUSH => 24,
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => 32,
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => 32,
        VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => 72,
        VIRTIO_GPU_CMD_CTX_CREATE => 8 + DEBUG_NAME_SIZE,
        VIRTIO_GPU_CMD_RESOURCE_CREATE_3D => 48,
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D | VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => 48,
        VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB => 16,
        VIRTIO_GPU_CMD_UPDATE_CURSOR | VIRTIO_GPU_CMD_MOVE_CURSOR => 32,
        _ => return None,
    })
}

/// True for the two commands that belong on the cursor queue.
pub const fn is_cursor_command(kind: u32) -> bool {
    matches!(
        kind,
        VIRTIO_GPU_CMD_UPDATE_CURSOR | VIRTIO_GPU_CMD_MOVE_CURSOR
    )
}

/// The spec's name for a command or response type, for logs and the stall
/// watchdog. Unknown values give `"UNKNOWN"`.
pub const fn type_name(kind: u32) -> &'static str {
    match kind {
        VIRTIO_GPU_CMD_GET_DISPLAY_INFO => "GET_DISPLAY_INFO",
        VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => "RESOURCE_CREATE_2D",
        VIRTIO_GPU_CMD_RESOURCE_UNREF => "RESOURCE_UNREF",
        VIRTIO_GPU_CMD_SET_SCANOUT => "SET_SCANOUT",
        VIRTIO_GPU_CMD_RESOURCE_FLUSH => "RESOURCE_FLUSH",
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => "TRANSFER_TO_HOST_2D",
        VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => "RESOURCE_ATTACH_BACKING",
        VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => "RESOURCE_DETACH_BACKING",
        VIRTIO_GPU_CMD_GET_CAPSET_INFO => "GET_CAPSET_INFO",
        VIRTIO_GPU_CMD_GET_CAPSET => "GET_CAPSET",
        VIRTIO_GPU_CMD_GET_EDID => "GET_EDID",
        VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID => "RESOURCE_ASSIGN_UUID",
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => "RESOURCE_CREATE_BLOB",
        VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => "SET_SCANOUT_BLOB",
        VIRTIO_GPU_CMD_CTX_CREATE => "CTX_CREATE",
        VIRTIO_GPU_CMD_CTX_DESTROY => "CTX_DESTROY",
        VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE => "CTX_ATTACH_RESOURCE",
        VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE => "CTX_DETACH_RESOURCE",
        VIRTIO_GPU_CMD_RESOURCE_CREATE_3D => "RESOURCE_CREATE_3D",
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D => "TRANSFER_TO_HOST_3D",
        VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => "TRANSFER_FROM_HOST_3D",
        VIRTIO_GPU_CMD_SUBMIT_3D => "SUBMIT_3D",
        VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB => "RESOURCE_MAP_BLOB",
        VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => "RESOURCE_UNMAP_BLOB",
        VIRTIO_GPU_CMD_UPDATE_CURSOR => "UPDATE_CURSOR",
        VIRTIO_GPU_CMD_MOVE_CURSOR => "MOVE_CURSOR",
        VIRTIO_GPU_RESP_OK_NODATA => "OK_NODATA",
        VIRTIO_GPU_RESP_OK_DISPLAY_INFO => "OK_DISPLAY_INFO",
        VIRTIO_GPU_RESP_OK_CAPSET_INFO => "OK_CAPSET_INFO",
        VIRTIO_GPU_RESP_OK_CAPSET => "OK_CAPSET",
        VIRTIO_GPU_RESP_OK_EDID => "OK_EDID",
        VIRTIO_GPU_RESP_OK_RESOURCE_UUID => "OK_RESOURCE_UUID",
        VIRTIO_GPU_RESP_OK_MAP_INFO => "OK_MAP_INFO",
        VIRTIO_GPU_RESP_ERR_UNSPEC => "ERR_UNSPEC",
        VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
        VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    //! Cross-checks against the Linux uapi header as bindgen'd by
    //! `virtio-bindings`: an independent transcription of the same numbers.
    use super::*;
    use std::mem::size_of;
    use virtio_bindings::virtio_gpu as b;

    #[test]
    fn command_and_response_types_match_linux_uapi() {
        let pairs = [
            (
                VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_UNREF,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNREF,
            ),
            (
                VIRTIO_GPU_CMD_SET_SCANOUT,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_FLUSH,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
            ),
            (
                VIRTIO_GPU_CMD_GET_CAPSET_INFO,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET_INFO,
            ),
            (
                VIRTIO_GPU_CMD_GET_CAPSET,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_CAPSET,
            ),
            (
                VIRTIO_GPU_CMD_GET_EDID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_GET_EDID,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
            ),
            (
                VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
            ),
            (
                VIRTIO_GPU_CMD_CTX_CREATE,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_CREATE,
            ),
            (
                VIRTIO_GPU_CMD_CTX_DESTROY,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DESTROY,
            ),
            (
                VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
            ),
            (
                VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
            ),
            (
                VIRTIO_GPU_CMD_SUBMIT_3D,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_SUBMIT_3D,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
            ),
            (
                VIRTIO_GPU_CMD_UPDATE_CURSOR,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_UPDATE_CURSOR,
            ),
            (
                VIRTIO_GPU_CMD_MOVE_CURSOR,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_CMD_MOVE_CURSOR,
            ),
            (
                VIRTIO_GPU_RESP_OK_NODATA,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_NODATA,
            ),
            (
                VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
            ),
            (
                VIRTIO_GPU_RESP_OK_CAPSET_INFO,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET_INFO,
            ),
            (
                VIRTIO_GPU_RESP_OK_CAPSET,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_CAPSET,
            ),
            (
                VIRTIO_GPU_RESP_OK_EDID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_EDID,
            ),
            (
                VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
            ),
            (
                VIRTIO_GPU_RESP_OK_MAP_INFO,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_OK_MAP_INFO,
            ),
            (
                VIRTIO_GPU_RESP_ERR_UNSPEC,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_UNSPEC,
            ),
            (
                VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
            ),
            (
                VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
            ),
            (
                VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
            ),
            (
                VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
            ),
            (
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
                b::virtio_gpu_ctrl_type_VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            ),
        ];
        for (ours, linux) in pairs {
            assert_eq!(ours, linux, "{}", type_name(ours));
        }
    }

    #[test]
    fn flags_features_formats_blobs_and_capsets_match_linux_uapi() {
        assert_eq!(VIRTIO_GPU_F_VIRGL, b::VIRTIO_GPU_F_VIRGL);
        assert_eq!(VIRTIO_GPU_F_EDID, b::VIRTIO_GPU_F_EDID);
        assert_eq!(VIRTIO_GPU_F_RESOURCE_UUID, b::VIRTIO_GPU_F_RESOURCE_UUID);
        assert_eq!(VIRTIO_GPU_F_RESOURCE_BLOB, b::VIRTIO_GPU_F_RESOURCE_BLOB);
        assert_eq!(VIRTIO_GPU_F_CONTEXT_INIT, b::VIRTIO_GPU_F_CONTEXT_INIT);
        assert_eq!(VIRTIO_GPU_FLAG_FENCE, b::VIRTIO_GPU_FLAG_FENCE);
        assert_eq!(
            VIRTIO_GPU_FLAG_INFO_RING_IDX,
            b::VIRTIO_GPU_FLAG_INFO_RING_IDX
        );
        assert_eq!(VIRTIO_GPU_MAX_SCANOUTS as u32, b::VIRTIO_GPU_MAX_SCANOUTS);
        assert_eq!(VIRTIO_GPU_EVENT_DISPLAY, b::VIRTIO_GPU_EVENT_DISPLAY);
        assert_eq!(
            VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK,
            b::VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK
        );
        assert_eq!(VIRTIO_GPU_CAPSET_VIRGL, b::VIRTIO_GPU_CAPSET_VIRGL);
        assert_eq!(VIRTIO_GPU_CAPSET_VIRGL2, b::VIRTIO_GPU_CAPSET_VIRGL2);
        assert_eq!(
            VIRTIO_GPU_CAPSET_GFXSTREAM_VULKAN,
            b::VIRTIO_GPU_CAPSET_GFXSTREAM_VULKAN
        );
        assert_eq!(VIRTIO_GPU_CAPSET_VENUS, b::VIRTIO_GPU_CAPSET_VENUS);
        assert_eq!(
            VIRTIO_GPU_CAPSET_CROSS_DOMAIN,
            b::VIRTIO_GPU_CAPSET_CROSS_DOMAIN
        );
        assert_eq!(VIRTIO_GPU_CAPSET_DRM, b::VIRTIO_GPU_CAPSET_DRM);
        assert_eq!(VIRTIO_GPU_BLOB_MEM_GUEST, b::VIRTIO_GPU_BLOB_MEM_GUEST);
        assert_eq!(VIRTIO_GPU_BLOB_MEM_HOST3D, b::VIRTIO_GPU_BLOB_MEM_HOST3D);
        assert_eq!(
            VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST,
            b::VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST
        );
        assert_eq!(
            VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE,
            b::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE
        );
        assert_eq!(
            VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE,
            b::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE
        );
        assert_eq!(
            VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE,
            b::VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE
        );
        assert_eq!(VIRTIO_GPU_MAP_CACHE_MASK, b::VIRTIO_GPU_MAP_CACHE_MASK);
        assert_eq!(
            VIRTIO_GPU_RESOURCE_FLAG_Y_0_TOP,
            b::VIRTIO_GPU_RESOURCE_FLAG_Y_0_TOP
        );
        assert_eq!(VIRTIO_GPU_MAP_CACHE_WC, b::VIRTIO_GPU_MAP_CACHE_WC);
        let formats = [
            (
                VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            ),
            (
                VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
                b::virtio_gpu_formats_VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
            ),
        ];
        for (ours, linux) in formats {
            assert_eq!(ours, linux);
        }
    }

    #[test]
    fn request_body_sizes_match_linux_uapi_struct_sizes() {
        let hdr = size_of::<b::virtio_gpu_ctrl_hdr>();
        assert_eq!(hdr, CTRL_HDR_SIZE);
        assert_eq!(size_of::<b::virtio_gpu_mem_entry>(), MEM_ENTRY_SIZE);
        assert_eq!(size_of::<b::virtio_gpu_config>(), CONFIG_SIZE);
        let sizes = [
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
                size_of::<b::virtio_gpu_resource_create_2d>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_UNREF,
                size_of::<b::virtio_gpu_resource_unref>(),
            ),
            (
                VIRTIO_GPU_CMD_SET_SCANOUT,
                size_of::<b::virtio_gpu_set_scanout>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_FLUSH,
                size_of::<b::virtio_gpu_resource_flush>(),
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
                size_of::<b::virtio_gpu_transfer_to_host_2d>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
                size_of::<b::virtio_gpu_resource_attach_backing>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
                size_of::<b::virtio_gpu_resource_detach_backing>(),
            ),
            (
                VIRTIO_GPU_CMD_GET_CAPSET_INFO,
                size_of::<b::virtio_gpu_get_capset_info>(),
            ),
            (
                VIRTIO_GPU_CMD_GET_CAPSET,
                size_of::<b::virtio_gpu_get_capset>(),
            ),
            (
                VIRTIO_GPU_CMD_GET_EDID,
                size_of::<b::virtio_gpu_cmd_get_edid>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
                size_of::<b::virtio_gpu_resource_assign_uuid>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                size_of::<b::virtio_gpu_resource_create_blob>(),
            ),
            (
                VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
                size_of::<b::virtio_gpu_set_scanout_blob>(),
            ),
            (
                VIRTIO_GPU_CMD_CTX_CREATE,
                size_of::<b::virtio_gpu_ctx_create>(),
            ),
            (
                VIRTIO_GPU_CMD_CTX_DESTROY,
                size_of::<b::virtio_gpu_ctx_destroy>(),
            ),
            (
                VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
                size_of::<b::virtio_gpu_ctx_resource>(),
            ),
            (
                VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
                size_of::<b::virtio_gpu_ctx_resource>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
                size_of::<b::virtio_gpu_resource_create_3d>(),
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
                size_of::<b::virtio_gpu_transfer_host_3d>(),
            ),
            (
                VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
                size_of::<b::virtio_gpu_transfer_host_3d>(),
            ),
            (
                VIRTIO_GPU_CMD_SUBMIT_3D,
                size_of::<b::virtio_gpu_cmd_submit>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
                size_of::<b::virtio_gpu_resource_map_blob>(),
            ),
            (
                VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
                size_of::<b::virtio_gpu_resource_unmap_blob>(),
            ),
            (
                VIRTIO_GPU_CMD_UPDATE_CURSOR,
                size_of::<b::virtio_gpu_update_cursor>(),
            ),
            (
                VIRTIO_GPU_CMD_MOVE_CURSOR,
                size_of::<b::virtio_gpu_update_cursor>(),
            ),
        ];
        assert_eq!(request_body_size(VIRTIO_GPU_CMD_GET_DISPLAY_INFO), Some(0));
        for (kind, linux_size) in sizes {
            assert_eq!(
                request_body_size(kind),
                Some(linux_size - hdr),
                "{}",
                type_name(kind)
            );
        }
        assert_eq!(request_body_size(VIRTIO_GPU_RESP_OK_NODATA), None);
    }
}
