//! Cursor queue: `UPDATE_CURSOR` and `MOVE_CURSOR` share one struct.

use super::check_scanout;
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, ByteReader};
use crate::protocol::limits::DecodeContext;
use crate::protocol::types::{CursorPos, ResourceId};

/// `struct virtio_gpu_update_cursor` minus the header. For `MOVE_CURSOR`
/// only `pos` matters; the other fields are carried as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorUpdate {
    /// Where, and on which scanout (below `num_scanouts`).
    pub pos: CursorPos,
    /// 64x64 cursor image, or 0 to hide the cursor.
    pub resource_id: ResourceId,
    /// Hotspot x within the image.
    pub hot_x: u32,
    /// Hotspot y within the image.
    pub hot_y: u32,
}

impl CursorUpdate {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let pos = CursorPos::read(r)?;
        check_scanout(pos.scanout_id.0, ctx)?;
        let resource_id = ResourceId(r.u32()?);
        let hot_x = r.u32()?;
        let hot_y = r.u32()?;
        r.skip(4)?;
        Ok(Self {
            pos,
            resource_id,
            hot_x,
            hot_y,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.pos.write(out);
        for v in [self.resource_id.0, self.hot_x, self.hot_y, 0] {
            put_u32(out, v);
        }
    }
}
