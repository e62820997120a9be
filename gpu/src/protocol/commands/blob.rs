//! Blob resources: `RESOURCE_CREATE_BLOB`, `SET_SCANOUT_BLOB`,
//! `RESOURCE_MAP_BLOB` (`RESOURCE_UNMAP_BLOB` is a bare resource ref).

use super::check_scanout;
use super::resource::{
    check_image_size, check_scanout_rect, read_mem_entries, read_new_resource_id, wire_count,
    write_mem_entries,
};
use crate::protocol::error::ProtocolError;
use crate::protocol::le::{put_u32, put_u64, ByteReader};
use crate::protocol::limits::DecodeContext;
use crate::protocol::types::{BlobFlags, BlobMem, Format, MemEntry, Rect, ResourceId, ScanoutId};
use crate::protocol::wire::VIRTIO_GPU_F_VIRGL;

/// `RESOURCE_CREATE_BLOB`: a size-based resource in guest memory, host
/// memory, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceCreateBlob {
    /// New resource id, never 0.
    pub resource_id: ResourceId,
    /// Where the memory lives; HOST3D kinds only with `F_VIRGL`.
    pub blob_mem: BlobMem,
    /// How the blob will be used.
    pub blob_flags: BlobFlags,
    /// Context-local object id (HOST3D kinds); ignored for GUEST.
    pub blob_id: u64,
    /// Size in bytes, never 0.
    pub size: u64,
    /// Guest pages: none for HOST3D; when present, they cover `size`.
    pub entries: Vec<MemEntry>,
}

impl ResourceCreateBlob {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let resource_id = read_new_resource_id(r)?;
        let blob_mem_raw = r.u32()?;
        let blob_mem = BlobMem::from_wire(blob_mem_raw)?;
        if blob_mem.is_host() && !ctx.has_feature(VIRTIO_GPU_F_VIRGL) {
            return Err(ProtocolError::BlobMemRequiresVirgl(blob_mem_raw));
        }
        let blob_flags = BlobFlags::from_wire(r.u32()?)?;
        let nr_entries = r.u32()?;
        let blob_id = r.u64()?;
        let size = r.u64()?;
        if size == 0 {
            return Err(ProtocolError::BlobSizeZero);
        }
        if blob_mem == BlobMem::Host3d && nr_entries != 0 {
            return Err(ProtocolError::BlobEntriesOnHostBlob { nr_entries });
        }
        let entries = read_mem_entries(r, nr_entries, &ctx.limits)?;
        // nr_entries may be 0 (backing attached later, for swap); when
        // pages are given they must cover the blob.
        if !entries.is_empty() {
            let backing: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
            if backing < size {
                return Err(ProtocolError::BlobBackingSmallerThanSize { size, backing });
            }
        }
        Ok(Self {
            resource_id,
            blob_mem,
            blob_flags,
            blob_id,
            size,
            entries,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.resource_id.0);
        put_u32(out, self.blob_mem.to_wire());
        put_u32(out, self.blob_flags.to_wire());
        put_u32(out, wire_count(self.entries.len()));
        put_u64(out, self.blob_id);
        put_u64(out, self.size);
        write_mem_entries(&self.entries, out);
    }
}

/// How a blob is read as a framebuffer for `SET_SCANOUT_BLOB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobScanoutLayout {
    /// Framebuffer width, 1..=max_dimension.
    pub width: u32,
    /// Framebuffer height, 1..=max_dimension.
    pub height: u32,
    /// Pixel format.
    pub format: Format,
    /// Bytes per row of each plane; plane 0 holds at least one row.
    pub strides: [u32; 4],
    /// Byte offset of each plane in the blob.
    pub offsets: [u32; 4],
}

/// `SET_SCANOUT_BLOB`: show `rect` of a blob on a scanout; resource 0
/// disables the scanout and then carries no layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetScanoutBlob {
    /// Part of the framebuffer to show, inside `width` x `height`.
    pub rect: Rect,
    /// Scanout, below `num_scanouts`.
    pub scanout_id: ScanoutId,
    /// Blob resource, or 0 to disable.
    pub resource_id: ResourceId,
    /// `None` exactly when `resource_id` is 0 (the fields are then ignored
    /// and encoded as zeros).
    pub layout: Option<BlobScanoutLayout>,
}

impl SetScanoutBlob {
    pub(crate) fn decode(
        r: &mut ByteReader<'_>,
        ctx: &DecodeContext,
    ) -> Result<Self, ProtocolError> {
        let rect = Rect::read(r)?;
        let scanout_id = check_scanout(r.u32()?, ctx)?;
        let resource_id = ResourceId(r.u32()?);
        let width = r.u32()?;
        let height = r.u32()?;
        let format_raw = r.u32()?;
        r.skip(4)?;
        let strides = r.u32_array::<4>()?;
        let offsets = r.u32_array::<4>()?;
        if resource_id.0 == 0 {
            return Ok(Self {
                rect,
                scanout_id,
                resource_id,
                layout: None,
            });
        }
        let format = Format::from_wire(format_raw)?;
        check_image_size(width, height, &ctx.limits)?;
        check_scanout_rect(&rect)?;
        if !rect.fits_within(width, height) {
            let (right, bottom) = rect.end().unwrap_or((u32::MAX, u32::MAX));
            return Err(ProtocolError::ScanoutRectOutsideFramebuffer {
                right,
                bottom,
                fb_width: width,
                fb_height: height,
            });
        }
        let min = u64::from(width) * u64::from(format.bytes_per_pixel());
        if u64::from(strides[0]) < min {
            return Err(ProtocolError::StrideTooSmall {
                stride: strides[0],
                min,
            });
        }
        let layout = BlobScanoutLayout {
            width,
            height,
            format,
            strides,
            offsets,
        };
        Ok(Self {
            rect,
            scanout_id,
            resource_id,
            layout: Some(layout),
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.rect.write(out);
        put_u32(out, self.scanout_id.0);
        put_u32(out, self.resource_id.0);
        let (width, height, format, strides, offsets) = match &self.layout {
            Some(l) => (l.width, l.height, l.format.to_wire(), l.strides, l.offsets),
            None => (0, 0, 0, [0; 4], [0; 4]),
        };
        for v in [width, height, format, 0] {
            put_u32(out, v);
        }
        for v in strides.into_iter().chain(offsets) {
            put_u32(out, v);
        }
    }
}

/// `RESOURCE_MAP_BLOB`: map a host blob at `offset` in the host visible
/// memory region. Whether it fits there is a stateful check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceMapBlob {
    /// The blob.
    pub resource_id: ResourceId,
    /// Offset in the host visible region.
    pub offset: u64,
}

impl ResourceMapBlob {
    pub(crate) fn decode(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let resource_id = ResourceId(r.u32()?);
        r.skip(4)?;
        let offset = r.u64()?;
        Ok(Self {
            resource_id,
            offset,
        })
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.resource_id.0);
        put_u32(out, 0);
        put_u64(out, self.offset);
    }
}
