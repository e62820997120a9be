//! [`GpuCommand`]: one variant per virtio-gpu command, each carrying its
//! fields as types, plus the per-type dispatch of body decoding and
//! encoding. The layouts and value rules of each command live beside its
//! struct, grouped as the spec groups them.

mod blob;
mod context3d;
mod cursor;
mod query;
mod resource;

pub use blob::{BlobScanoutLayout, ResourceCreateBlob, ResourceMapBlob, SetScanoutBlob};
pub use context3d::{
    CtxCreate, ResourceCreate3d, Submit3d, Transfer3d, PIPE_BUFFER, PIPE_TEXTURE_1D,
    PIPE_TEXTURE_1D_ARRAY, PIPE_TEXTURE_2D, PIPE_TEXTURE_2D_ARRAY, PIPE_TEXTURE_3D,
    PIPE_TEXTURE_CUBE, PIPE_TEXTURE_CUBE_ARRAY, PIPE_TEXTURE_RECT,
};
pub use cursor::CursorUpdate;
pub use query::{GetCapset, GetCapsetInfo, GetEdid};
pub use resource::{
    ResourceAttachBacking, ResourceCreate2d, ResourceFlush, ResourceRef, SetScanout,
    TransferToHost2d,
};

use super::error::ProtocolError;
use super::header::CtrlHeader;
use super::le::ByteReader;
use super::limits::DecodeContext;
use super::types::{ResourceId, ScanoutId};
use super::wire::*;

/// A decoded command. Every value in it passed the stateless rules; ids
/// still have to be looked up by the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuCommand {
    /// `GET_DISPLAY_INFO`.
    GetDisplayInfo,
    /// `RESOURCE_CREATE_2D`.
    ResourceCreate2d(ResourceCreate2d),
    /// `RESOURCE_UNREF`.
    ResourceUnref(ResourceRef),
    /// `SET_SCANOUT`.
    SetScanout(SetScanout),
    /// `RESOURCE_FLUSH`.
    ResourceFlush(ResourceFlush),
    /// `TRANSFER_TO_HOST_2D`.
    TransferToHost2d(TransferToHost2d),
    /// `RESOURCE_ATTACH_BACKING`.
    ResourceAttachBacking(ResourceAttachBacking),
    /// `RESOURCE_DETACH_BACKING`.
    ResourceDetachBacking(ResourceRef),
    /// `GET_CAPSET_INFO`.
    GetCapsetInfo(GetCapsetInfo),
    /// `GET_CAPSET`.
    GetCapset(GetCapset),
    /// `GET_EDID` (needs `F_EDID`).
    GetEdid(GetEdid),
    /// `RESOURCE_ASSIGN_UUID` (needs `F_RESOURCE_UUID`).
    ResourceAssignUuid(ResourceRef),
    /// `RESOURCE_CREATE_BLOB` (needs `F_RESOURCE_BLOB`).
    ResourceCreateBlob(ResourceCreateBlob),
    /// `SET_SCANOUT_BLOB` (needs `F_RESOURCE_BLOB`).
    SetScanoutBlob(SetScanoutBlob),
    /// `CTX_CREATE` (needs `F_VIRGL`; context in the header).
    CtxCreate(CtxCreate),
    /// `CTX_DESTROY` (needs `F_VIRGL`; context in the header).
    CtxDestroy,
    /// `CTX_ATTACH_RESOURCE` (needs `F_VIRGL`).
    CtxAttachResource(ResourceRef),
    /// `CTX_DETACH_RESOURCE` (needs `F_VIRGL`).
    CtxDetachResource(ResourceRef),
    /// `RESOURCE_CREATE_3D` (needs `F_VIRGL`).
    ResourceCreate3d(ResourceCreate3d),
    /// `TRANSFER_TO_HOST_3D` (needs `F_VIRGL`).
    TransferToHost3d(Transfer3d),
    /// `TRANSFER_FROM_HOST_3D` (needs `F_VIRGL`).
    TransferFromHost3d(Transfer3d),
    /// `SUBMIT_3D` (needs `F_VIRGL`; context in the header).
    Submit3d(Submit3d),
    /// `RESOURCE_MAP_BLOB` (needs `F_RESOURCE_BLOB`).
    ResourceMapBlob(ResourceMapBlob),
    /// `RESOURCE_UNMAP_BLOB` (needs `F_RESOURCE_BLOB`).
    ResourceUnmapBlob(ResourceRef),
    /// `UPDATE_CURSOR` (cursor queue).
    UpdateCursor(CursorUpdate),
    /// `MOVE_CURSOR` (cursor queue).
    MoveCursor(CursorUpdate),
}

impl GpuCommand {
    /// The `VIRTIO_GPU_CMD_*` value.
    pub fn kind(&self) -> u32 {
        use GpuCommand::*;
        match self {
            GetDisplayInfo => VIRTIO_GPU_CMD_GET_DISPLAY_INFO,
            ResourceCreate2d(_) => VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
            ResourceUnref(_) => VIRTIO_GPU_CMD_RESOURCE_UNREF,
            SetScanout(_) => VIRTIO_GPU_CMD_SET_SCANOUT,
            ResourceFlush(_) => VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            TransferToHost2d(_) => VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
            ResourceAttachBacking(_) => VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            ResourceDetachBacking(_) => VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
            GetCapsetInfo(_) => VIRTIO_GPU_CMD_GET_CAPSET_INFO,
            GetCapset(_) => VIRTIO_GPU_CMD_GET_CAPSET,
            GetEdid(_) => VIRTIO_GPU_CMD_GET_EDID,
            ResourceAssignUuid(_) => VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID,
            ResourceCreateBlob(_) => VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
            SetScanoutBlob(_) => VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
            CtxCreate(_) => VIRTIO_GPU_CMD_CTX_CREATE,
            CtxDestroy => VIRTIO_GPU_CMD_CTX_DESTROY,
            CtxAttachResource(_) => VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE,
            CtxDetachResource(_) => VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE,
            ResourceCreate3d(_) => VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
            TransferToHost3d(_) => VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
            TransferFromHost3d(_) => VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
            Submit3d(_) => VIRTIO_GPU_CMD_SUBMIT_3D,
            ResourceMapBlob(_) => VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB,
            ResourceUnmapBlob(_) => VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB,
            UpdateCursor(_) => VIRTIO_GPU_CMD_UPDATE_CURSOR,
            MoveCursor(_) => VIRTIO_GPU_CMD_MOVE_CURSOR,
        }
    }

    /// The spec's name, for logs and the stall watchdog.
    pub fn name(&self) -> &'static str {
        type_name(self.kind())
    }

    /// The resource the command is about, if any: what commands without a
    /// context are routed by. 0 ("none", e.g. disable a scanout) gives
    /// `None`.
    pub fn resource_id(&self) -> Option<ResourceId> {
        use GpuCommand::*;
        let id = match self {
            GetDisplayInfo | GetCapsetInfo(_) | GetCapset(_) | GetEdid(_) | CtxCreate(_)
            | CtxDestroy | Submit3d(_) => return None,
            ResourceCreate2d(c) => c.resource_id,
            ResourceUnref(c)
            | ResourceDetachBacking(c)
            | ResourceAssignUuid(c)
            | CtxAttachResource(c)
            | CtxDetachResource(c)
            | ResourceUnmapBlob(c) => c.resource_id,
            SetScanout(c) => c.resource_id,
            ResourceFlush(c) => c.resource_id,
            TransferToHost2d(c) => c.resource_id,
            ResourceAttachBacking(c) => c.resource_id,
            ResourceCreateBlob(c) => c.resource_id,
            SetScanoutBlob(c) => c.resource_id,
            ResourceCreate3d(c) => c.resource_id,
            TransferToHost3d(c) | TransferFromHost3d(c) => c.resource_id,
            ResourceMapBlob(c) => c.resource_id,
            UpdateCursor(c) | MoveCursor(c) => c.resource_id,
        };
        (id.0 != 0).then_some(id)
    }

    /// True for the cursor-queue commands.
    pub fn is_cursor(&self) -> bool {
        is_cursor_command(self.kind())
    }

    /// Decodes the body that follows a header of type `hdr.kind`.
    pub(crate) fn decode_body(
        hdr: &CtrlHeader,
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        use GpuCommand as C;
        let kind = hdr.kind;
        if let Some(feature) = required_feature(kind) {
            if !ctx.has_feature(feature) {
                return Err(ProtocolError::FeatureNotNegotiated {
                    command: kind,
                    feature,
                });
            }
        }
        if let Some(fixed) = request_body_size(kind) {
            r.require(fixed)?;
        }
        if names_context_in_header(kind) && hdr.ctx_id == 0 {
            return Err(ProtocolError::ContextIdZero);
        }
        Ok(match kind {
            VIRTIO_GPU_CMD_GET_DISPLAY_INFO => C::GetDisplayInfo,
            VIRTIO_GPU_CMD_RESOURCE_CREATE_2D => {
                C::ResourceCreate2d(ResourceCreate2d::decode(r, ctx)?)
            }
            VIRTIO_GPU_CMD_RESOURCE_UNREF => C::ResourceUnref(ResourceRef::decode(r)?),
            VIRTIO_GPU_CMD_SET_SCANOUT => C::SetScanout(SetScanout::decode(r, ctx)?),
            VIRTIO_GPU_CMD_RESOURCE_FLUSH => C::ResourceFlush(ResourceFlush::decode(r)?),
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D => C::TransferToHost2d(TransferToHost2d::decode(r)?),
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING => {
                C::ResourceAttachBacking(ResourceAttachBacking::decode(r, ctx)?)
            }
            VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING => {
                C::ResourceDetachBacking(ResourceRef::decode(r)?)
            }
            VIRTIO_GPU_CMD_GET_CAPSET_INFO => C::GetCapsetInfo(GetCapsetInfo::decode(r, ctx)?),
            VIRTIO_GPU_CMD_GET_CAPSET => C::GetCapset(GetCapset::decode(r)?),
            VIRTIO_GPU_CMD_GET_EDID => C::GetEdid(GetEdid::decode(r, ctx)?),
            VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID => C::ResourceAssignUuid(ResourceRef::decode(r)?),
            VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB => {
                C::ResourceCreateBlob(ResourceCreateBlob::decode(r, ctx)?)
            }
            VIRTIO_GPU_CMD_SET_SCANOUT_BLOB => C::SetScanoutBlob(SetScanoutBlob::decode(r, ctx)?),
            VIRTIO_GPU_CMD_CTX_CREATE => C::CtxCreate(CtxCreate::decode(r, ctx)?),
            VIRTIO_GPU_CMD_CTX_DESTROY => C::CtxDestroy,
            VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE => C::CtxAttachResource(ResourceRef::decode(r)?),
            VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE => C::CtxDetachResource(ResourceRef::decode(r)?),
            VIRTIO_GPU_CMD_RESOURCE_CREATE_3D => {
                C::ResourceCreate3d(ResourceCreate3d::decode(r, ctx)?)
            }
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D => C::TransferToHost3d(Transfer3d::decode(r)?),
            VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D => C::TransferFromHost3d(Transfer3d::decode(r)?),
            VIRTIO_GPU_CMD_SUBMIT_3D => C::Submit3d(Submit3d::decode(r, ctx)?),
            VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB => C::ResourceMapBlob(ResourceMapBlob::decode(r)?),
            VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => C::ResourceUnmapBlob(ResourceRef::decode(r)?),
            VIRTIO_GPU_CMD_UPDATE_CURSOR => C::UpdateCursor(CursorUpdate::decode(r, ctx)?),
            VIRTIO_GPU_CMD_MOVE_CURSOR => C::MoveCursor(CursorUpdate::decode(r, ctx)?),
            other => return Err(ProtocolError::UnknownCommandType(other)),
        })
    }

    /// Appends the body (everything after the header) in wire layout.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) {
        use GpuCommand::*;
        match self {
            GetDisplayInfo | CtxDestroy => {}
            ResourceCreate2d(c) => c.encode(out),
            ResourceUnref(c)
            | ResourceDetachBacking(c)
            | ResourceAssignUuid(c)
            | CtxAttachResource(c)
            | CtxDetachResource(c)
            | ResourceUnmapBlob(c) => c.encode(out),
            SetScanout(c) => c.encode(out),
            ResourceFlush(c) => c.encode(out),
            TransferToHost2d(c) => c.encode(out),
            ResourceAttachBacking(c) => c.encode(out),
            GetCapsetInfo(c) => c.encode(out),
            GetCapset(c) => c.encode(out),
            GetEdid(c) => c.encode(out),
            ResourceCreateBlob(c) => c.encode(out),
            SetScanoutBlob(c) => c.encode(out),
            CtxCreate(c) => c.encode(out),
            ResourceCreate3d(c) => c.encode(out),
            TransferToHost3d(c) | TransferFromHost3d(c) => c.encode(out),
            Submit3d(c) => c.encode(out),
            ResourceMapBlob(c) => c.encode(out),
            UpdateCursor(c) | MoveCursor(c) => c.encode(out),
        }
    }
}

/// The feature bit a command depends on; a driver that did not negotiate
/// it gets `ERR_UNSPEC`, as from a device without the command.
pub fn required_feature(kind: u32) -> Option<u32> {
    match kind {
        VIRTIO_GPU_CMD_GET_EDID => Some(VIRTIO_GPU_F_EDID),
        VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID => Some(VIRTIO_GPU_F_RESOURCE_UUID),
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB
        | VIRTIO_GPU_CMD_SET_SCANOUT_BLOB
        | VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB
        | VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB => Some(VIRTIO_GPU_F_RESOURCE_BLOB),
        VIRTIO_GPU_CMD_CTX_CREATE
        | VIRTIO_GPU_CMD_CTX_DESTROY
        | VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE
        | VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE
        | VIRTIO_GPU_CMD_RESOURCE_CREATE_3D
        | VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D
        | VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D
        | VIRTIO_GPU_CMD_SUBMIT_3D => Some(VIRTIO_GPU_F_VIRGL),
        _ => None,
    }
}

/// Commands whose subject is the context in `hdr.ctx_id`, which therefore
/// cannot be 0. (Transfers, `RESOURCE_CREATE_3D` and map/unmap are sent
/// with `ctx_id` 0 by Linux and are not in this list.)
pub fn names_context_in_header(kind: u32) -> bool {
    matches!(
        kind,
        VIRTIO_GPU_CMD_CTX_CREATE
            | VIRTIO_GPU_CMD_CTX_DESTROY
            | VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE
            | VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE
            | VIRTIO_GPU_CMD_SUBMIT_3D
    )
}

/// Scanout ids must be below `num_scanouts`.
pub(crate) fn check_scanout(id: u32, ctx: &DecodeContext) -> Result<ScanoutId, ProtocolError> {
    let num = ctx.scanout_count();
    if id >= num {
        return Err(ProtocolError::ScanoutIdOutOfRange { id, num });
    }
    Ok(ScanoutId(id))
}
