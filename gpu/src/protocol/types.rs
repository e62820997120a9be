//! Small typed values that appear inside commands: ids, rectangles, boxes,
//! backing entries, pixel formats and blob descriptions.
//!
//! Each knows its own wire layout (`read`/`write`), so the command decoders
//! read like the spec's struct listings.

use std::fmt;

use super::error::ProtocolError;
use super::le::{put_u32, put_u64, ByteReader};
use super::wire::*;

/// A guest-chosen resource id. 0 means "none" where the spec allows it
/// (disable a scanout, hide the cursor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ResourceId(pub u32);

/// A guest-chosen rendering context id (`hdr.ctx_id`). 0 means "no context".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtxId(pub u32);

/// A scanout (display head) index, below `num_scanouts` once decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ScanoutId(pub u32);

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "res{}", self.0)
    }
}

impl fmt::Display for CtxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ctx{}", self.0)
    }
}

/// `struct virtio_gpu_rect`: 0,0 is top left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Rect {
    /// A rectangle.
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// True when the rectangle covers no pixel.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// `(x + width, y + height)`, or `None` if either overflows.
    pub fn end(&self) -> Option<(u32, u32)> {
        Some((
            self.x.checked_add(self.width)?,
            self.y.checked_add(self.height)?,
        ))
    }

    /// True when the rectangle lies inside a `width` x `height` image.
    pub fn fits_within(&self, width: u32, height: u32) -> bool {
        matches!(self.end(), Some((r, b)) if r <= width && b <= height)
    }

    /// The overflow rule shared by every command that carries a rect.
    pub(crate) fn check_overflow(&self) -> Result<(), ProtocolError> {
        match self.end() {
            Some(_) => Ok(()),
            None => Err(ProtocolError::RectOverflow {
                x: self.x,
                y: self.y,
                width: self.width,
                height: self.height,
            }),
        }
    }

    pub(crate) fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            x: r.u32()?,
            y: r.u32()?,
            width: r.u32()?,
            height: r.u32()?,
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for v in [self.x, self.y, self.width, self.height] {
            put_u32(out, v);
        }
    }
}

/// `struct virtio_gpu_box`: a 3D region of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Box3d {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Front (slice or layer).
    pub z: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
    /// Depth.
    pub d: u32,
}

impl Box3d {
    /// `(x + w, y + h, z + d)`, or `None` if any overflows.
    pub fn end(&self) -> Option<(u32, u32, u32)> {
        Some((
            self.x.checked_add(self.w)?,
            self.y.checked_add(self.h)?,
            self.z.checked_add(self.d)?,
        ))
    }

    pub(crate) fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            x: r.u32()?,
            y: r.u32()?,
            z: r.u32()?,
            w: r.u32()?,
            h: r.u32()?,
            d: r.u32()?,
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        for v in [self.x, self.y, self.z, self.w, self.h, self.d] {
            put_u32(out, v);
        }
    }
}

/// `struct virtio_gpu_mem_entry`: one guest-physical span of backing.
///
/// Decoded entries have a non-zero length and do not wrap the address
/// space; whether they lie in guest memory is checked by the device, which
/// holds the memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemEntry {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
}

impl MemEntry {
    pub(crate) fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let addr = r.u64()?;
        let length = r.u32()?;
        r.skip(4)?;
        Ok(Self { addr, length })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_u64(out, self.addr);
        put_u32(out, self.length);
        put_u32(out, 0);
    }
}

/// `enum virtio_gpu_formats`: the 2D and scanout pixel formats, all
/// 4 bytes per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // names are the spec's
pub enum Format {
    B8G8R8A8Unorm,
    B8G8R8X8Unorm,
    A8R8G8B8Unorm,
    X8R8G8B8Unorm,
    R8G8B8A8Unorm,
    X8B8G8R8Unorm,
    A8B8G8R8Unorm,
    R8G8B8X8Unorm,
}

impl Format {
    /// Every format, in spec order.
    pub const ALL: [Format; 8] = [
        Format::B8G8R8A8Unorm,
        Format::B8G8R8X8Unorm,
        Format::A8R8G8B8Unorm,
        Format::X8R8G8B8Unorm,
        Format::R8G8B8A8Unorm,
        Format::X8B8G8R8Unorm,
        Format::A8B8G8R8Unorm,
        Format::R8G8B8X8Unorm,
    ];

    /// The format a wire value names, or `UnknownFormat`.
    pub fn from_wire(v: u32) -> Result<Self, ProtocolError> {
        Ok(match v {
            VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM => Format::B8G8R8A8Unorm,
            VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM => Format::B8G8R8X8Unorm,
            VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM => Format::A8R8G8B8Unorm,
            VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM => Format::X8R8G8B8Unorm,
            VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM => Format::R8G8B8A8Unorm,
            VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM => Format::X8B8G8R8Unorm,
            VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM => Format::A8B8G8R8Unorm,
            VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM => Format::R8G8B8X8Unorm,
            other => return Err(ProtocolError::UnknownFormat(other)),
        })
    }

    /// The wire value.
    pub const fn to_wire(self) -> u32 {
        match self {
            Format::B8G8R8A8Unorm => VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
            Format::B8G8R8X8Unorm => VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
            Format::A8R8G8B8Unorm => VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
            Format::X8R8G8B8Unorm => VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
            Format::R8G8B8A8Unorm => VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
            Format::X8B8G8R8Unorm => VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
            Format::A8B8G8R8Unorm => VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
            Format::R8G8B8X8Unorm => VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
        }
    }

    /// Bytes per pixel (4 for every virtio-gpu format).
    pub const fn bytes_per_pixel(self) -> u32 {
        FORMAT_BYTES_PER_PIXEL
    }
}

/// `blob_mem` of `RESOURCE_CREATE_BLOB`: where the blob's memory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobMem {
    /// Guest pages only ("guest-only blob").
    Guest,
    /// A context-local host allocation named by `blob_id` ("host-only").
    Host3d,
    /// Host allocation shadowed by guest pages ("default blob").
    Host3dGuest,
}

impl BlobMem {
    /// The kind a wire value names, or `BlobMemInvalid`.
    pub fn from_wire(v: u32) -> Result<Self, ProtocolError> {
        Ok(match v {
            VIRTIO_GPU_BLOB_MEM_GUEST => BlobMem::Guest,
            VIRTIO_GPU_BLOB_MEM_HOST3D => BlobMem::Host3d,
            VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST => BlobMem::Host3dGuest,
            other => return Err(ProtocolError::BlobMemInvalid(other)),
        })
    }

    /// The wire value.
    pub const fn to_wire(self) -> u32 {
        match self {
            BlobMem::Guest => VIRTIO_GPU_BLOB_MEM_GUEST,
            BlobMem::Host3d => VIRTIO_GPU_BLOB_MEM_HOST3D,
            BlobMem::Host3dGuest => VIRTIO_GPU_BLOB_MEM_HOST3D_GUEST,
        }
    }

    /// True when a host allocation (and so a 3D context) is involved.
    pub const fn is_host(self) -> bool {
        matches!(self, BlobMem::Host3d | BlobMem::Host3dGuest)
    }
}

/// `blob_flags` of `RESOURCE_CREATE_BLOB`; only defined bits survive decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BlobFlags(u32);

impl BlobFlags {
    /// The flags a wire value names, or `BlobFlagsInvalid` for undefined bits.
    pub fn from_wire(v: u32) -> Result<Self, ProtocolError> {
        if v & !VIRTIO_GPU_BLOB_FLAGS_KNOWN != 0 {
            return Err(ProtocolError::BlobFlagsInvalid(v));
        }
        Ok(Self(v))
    }

    /// The wire value.
    pub const fn to_wire(self) -> u32 {
        self.0
    }

    /// `USE_MAPPABLE`: the blob will be mapped.
    pub const fn mappable(self) -> bool {
        self.0 & VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE != 0
    }

    /// `USE_SHAREABLE`: shared between driver instances.
    pub const fn shareable(self) -> bool {
        self.0 & VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE != 0
    }

    /// `USE_CROSS_DEVICE`: shared with other virtio devices.
    pub const fn cross_device(self) -> bool {
        self.0 & VIRTIO_GPU_BLOB_FLAG_USE_CROSS_DEVICE != 0
    }
}

/// `struct virtio_gpu_cursor_pos`. Positions are signed: the Linux driver
/// sends the plane's `crtc_x`/`crtc_y`, negative when the cursor hangs off
/// the left or top edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CursorPos {
    /// Scanout the cursor is on.
    pub scanout_id: ScanoutId,
    /// Left of the cursor image.
    pub x: i32,
    /// Top of the cursor image.
    pub y: i32,
}

impl CursorPos {
    pub(crate) fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        let scanout_id = ScanoutId(r.u32()?);
        let x = r.u32()? as i32;
        let y = r.u32()? as i32;
        r.skip(4)?;
        Ok(Self { scanout_id, x, y })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_u32(out, self.scanout_id.0);
        put_u32(out, self.x as u32);
        put_u32(out, self.y as u32);
        put_u32(out, 0);
    }
}

/// One entry of `virtio_gpu_resp_display_info.pmodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisplayMode {
    /// Preferred position and size.
    pub rect: Rect,
    /// The display is connected (`enabled` != 0).
    pub enabled: bool,
    /// Reserved flags, echoed as given.
    pub flags: u32,
}

impl DisplayMode {
    pub(crate) fn read(r: &mut ByteReader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            rect: Rect::read(r)?,
            enabled: r.u32()? != 0,
            flags: r.u32()?,
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        self.rect.write(out);
        put_u32(out, u32::from(self.enabled));
        put_u32(out, self.flags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_its_wire_value() {
        for f in Format::ALL {
            assert_eq!(Format::from_wire(f.to_wire()), Ok(f));
            assert_eq!(f.bytes_per_pixel(), 4);
        }
        assert_eq!(Format::from_wire(5), Err(ProtocolError::UnknownFormat(5)));
    }

    #[test]
    fn rect_fits_within_checks_both_edges_without_overflow() {
        assert!(Rect::new(0, 0, 64, 64).fits_within(64, 64));
        assert!(!Rect::new(1, 0, 64, 64).fits_within(64, 64));
        assert!(!Rect::new(u32::MAX, 0, 2, 1).fits_within(u32::MAX, 1));
    }

    #[test]
    fn cursor_position_keeps_its_sign() {
        let p = CursorPos {
            scanout_id: ScanoutId(1),
            x: -5,
            y: -7,
        };
        let mut out = Vec::new();
        p.write(&mut out);
        assert_eq!(CursorPos::read(&mut ByteReader::new(&out)), Ok(p));
    }
}
