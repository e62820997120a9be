//! 2D resources and scanouts: `RESOURCE_CREATE_2D`, `RESOURCE_UNREF`,
//! `SET_SCANOUT`, `RESOURCE_FLUSH`, `TRANSFER_TO_HOST_2D`,
//! `RESOURCE_ATTACH_BACKING`, `RESOURCE_DETACH_BACKING`,
//! `RESOURCE_ASSIGN_UUID` — layouts and the rules that need no device state.

use super::check_scanout;
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, put_u64, ByteReader};
use crate::protocol::limits::{DecodeContext, Limits};
use crate::protocol::types::{Format, MemEntry, Rect, ResourceId, ScanoutId};
use crate::protocol::wire::MEM_ENTRY_SIZE;

/// `RESOURCE_CREATE_2D`: a host image of `width` x `height` in `format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceCreate2d {
    /// New resource id, never 0.
    pub resource_id: ResourceId,
    /// Pixel format.
    pub format: Format,
    /// Width, 1..=max_dimension.
    pub width: u32,
    /// Height, 1..=max_dimension.
    pub height: u32,
}

impl ResourceCreate2d {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let resource_id = read_new_resource_id(r)?;
        let format = Format::from_wire(r.u32()?)?;
        let width = r.u32()?;
        let height = r.u32()?;
        check_image_size(width, height, &ctx.limits)?;
        Ok(Self {
            resource_id,
            format,
            width,
            height,
        })
    }

    /// Host bytes the image takes; `None` if that does not fit 64 bits
    /// (never under the decoder's limits).
    pub fn host_bytes(&self) -> Option<u64> {
        u64::from(self.width)
            .checked_mul(u64::from(self.height))?
            .checked_mul(u64::from(self.format.bytes_per_pixel()))
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.resource_id.0,
            self.format.to_wire(),
            self.width,
            self.height,
        ] {
            put_u32(out, v);
        }
    }
}

/// `RESOURCE_UNREF`, `RESOURCE_DETACH_BACKING`, `RESOURCE_ASSIGN_UUID`,
/// `CTX_ATTACH_RESOURCE`, `CTX_DETACH_RESOURCE`, `RESOURCE_UNMAP_BLOB`:
/// a resource id and 4 bytes of padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceRef {
    /// The resource named.
    pub resource_id: ResourceId,
}

impl ResourceRef {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let resource_id = ResourceId(r.u32()?);
        r.skip(4)?;
        Ok(Self { resource_id })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.resource_id.0);
        put_u32(out, 0);
    }
}

/// `SET_SCANOUT`: show `rect` of a resource on a scanout; resource 0
/// disables the scanout (and the rect is then ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetScanout {
    /// Part of the resource to show.
    pub rect: Rect,
    /// Scanout, below `num_scanouts`.
    pub scanout_id: ScanoutId,
    /// Resource, or 0 to disable.
    pub resource_id: ResourceId,
}

impl SetScanout {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let rect = Rect::read(r)?;
        let scanout_id = check_scanout(r.u32()?, ctx)?;
        let resource_id = ResourceId(r.u32()?);
        if resource_id.0 != 0 {
            check_scanout_rect(&rect)?;
        }
        Ok(Self {
            rect,
            scanout_id,
            resource_id,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.rect.write(out);
        put_u32(out, self.scanout_id.0);
        put_u32(out, self.resource_id.0);
    }
}

/// `RESOURCE_FLUSH`: push `rect` of a resource to every scanout showing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceFlush {
    /// Damaged area; empty is a no-op.
    pub rect: Rect,
    /// The resource.
    pub resource_id: ResourceId,
}

impl ResourceFlush {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let rect = Rect::read(r)?;
        let resource_id = ResourceId(r.u32()?);
        r.skip(4)?;
        rect.check_overflow()?;
        Ok(Self { rect, resource_id })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.rect.write(out);
        put_u32(out, self.resource_id.0);
        put_u32(out, 0);
    }
}

/// `TRANSFER_TO_HOST_2D`: copy `rect` from the backing (starting at byte
/// `offset`, rows of `width * 4` bytes) into the host image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferToHost2d {
    /// Area of the resource to update.
    pub rect: Rect,
    /// Byte offset into the backing of the rect's first pixel.
    pub offset: u64,
    /// The resource.
    pub resource_id: ResourceId,
}

impl TransferToHost2d {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let rect = Rect::read(r)?;
        let offset = r.u64()?;
        let resource_id = ResourceId(r.u32()?);
        r.skip(4)?;
        rect.check_overflow()?;
        Ok(Self {
            rect,
            offset,
            resource_id,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.rect.write(out);
        put_u64(out, self.offset);
        put_u32(out, self.resource_id.0);
        put_u32(out, 0);
    }
}

/// `RESOURCE_ATTACH_BACKING`: guest pages that back a resource, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttachBacking {
    /// The resource.
    pub resource_id: ResourceId,
    /// At most `max_backing_entries`, each non-empty and not wrapping.
    pub entries: Vec<MemEntry>,
}

impl ResourceAttachBacking {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let resource_id = ResourceId(r.u32()?);
        let nr_entries = r.u32()?;
        let entries = read_mem_entries(r, nr_entries, &ctx.limits)?;
        Ok(Self {
            resource_id,
            entries,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.resource_id.0);
        put_u32(out, wire_count(self.entries.len()));
        write_mem_entries(&self.entries, out);
    }
}

/// Reads `nr` mem entries after checking the count against the limit and
/// the bytes present, so the `Vec` is never sized by an unchecked value.
pub(crate) fn read_mem_entries(
    r: &mut ByteReader<'_>,
    nr: u32,
    limits: &Limits,
) -> Result<Vec<MemEntry>, ProtocolError> {
    if nr > limits.max_backing_entries {
        return Err(ProtocolError::TooManyBackingEntries {
            n: nr,
            max: limits.max_backing_entries,
        });
    }
    // nr <= max_backing_entries (a u32), so this cannot overflow usize on
    // 64-bit hosts; saturate anyway so 32-bit hosts fail closed.
    r.require((nr as usize).saturating_mul(MEM_ENTRY_SIZE))?;
    let mut entries = Vec::with_capacity(nr as usize);
    for index in 0..nr as usize {
        let e = MemEntry::read(r)?;
        if e.length == 0 {
            return Err(ProtocolError::ZeroLengthBackingEntry { index });
        }
        if e.addr.checked_add(u64::from(e.length)).is_none() {
            return Err(ProtocolError::BackingEntryOverflows { index });
        }
        entries.push(e);
    }
    Ok(entries)
}

pub(crate) fn write_mem_entries(entries: &[MemEntry], out: &mut Vec<u8>) {
    for e in entries {
        e.write(out);
    }
}

/// A Vec length as the wire's `le32` count. Encoders are driven by the
/// host's own values; a count that does not fit is written saturated (and
/// the device will then reject it as too many entries).
pub(crate) fn wire_count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Resource id 0 means "none" and can never be created.
pub(crate) fn read_new_resource_id(r: &mut ByteReader<'_>) -> Result<ResourceId, ProtocolError> {
    match r.u32()? {
        0 => Err(ProtocolError::ResourceIdZero),
        id => Ok(ResourceId(id)),
    }
}

/// Width and height of an image the device will allocate or scan out.
pub(crate) fn check_image_size(
    width: u32,
    height: u32,
    limits: &Limits,
) -> Result<(), ProtocolError> {
    if width == 0 || height == 0 {
        return Err(ProtocolError::ZeroSize { width, height });
    }
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(ProtocolError::DimensionTooLarge {
            width,
            height,
            max: limits.max_dimension,
        });
    }
    Ok(())
}

/// A scanout that shows something shows a non-empty, non-wrapping rect.
pub(crate) fn check_scanout_rect(rect: &Rect) -> Result<(), ProtocolError> {
    rect.check_overflow()?;
    if rect.is_empty() {
        return Err(ProtocolError::ScanoutRectEmpty);
    }
    Ok(())
}
