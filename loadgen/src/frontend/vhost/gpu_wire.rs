//! The vhost-user-gpu socket protocol, decoded once: a header and payload
//! from the backend become a typed [`GpuMessage`], with one error per rule
//! the VMM side checks. Replies are encoded here too.
//!
//! Layouts (native endian, packed) from QEMU's `docs/interop/vhost-user-gpu.rst`.

use std::fmt;
use std::fs::File;

use gpu::protocol::wire::{CTRL_HDR_SIZE, EDID_BLOB_SIZE};
use gpu::protocol::{CtrlHeader, DisplayMode, EdidBlob, Response};
use vhost::vhost_user::gpu_message::GpuBackendReq;

use super::framing::{Header, FLAG_REPLY};

/// `VHOST_USER_GPU_PROTOCOL_F_EDID`, as a mask.
pub const GPU_PROTOCOL_F_EDID: u64 = 1 << 0;
/// `VHOST_USER_GPU_PROTOCOL_F_DMABUF2`, as a mask.
pub const GPU_PROTOCOL_F_DMABUF2: u64 = 1 << 1;

/// Bytes of a cursor image (64x64 ARGB).
const CURSOR_IMAGE: usize = 64 * 64 * 4;

/// A scanout rectangle named by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanoutRect {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A cursor position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorAt {
    pub scanout_id: u32,
    pub x: u32,
    pub y: u32,
}

/// A DMABUF scanout (the buffer itself is only counted: loadgen has no GL).
#[derive(Debug)]
pub struct DmabufScanout {
    pub rect: ScanoutRect,
    pub fd_width: u32,
    pub fd_height: u32,
    pub fd_stride: u32,
    pub fd_flags: u32,
    pub fourcc: u32,
    /// DMABUF_SCANOUT2 only.
    pub modifier: Option<u64>,
    /// None disables the scanout.
    pub fd: Option<File>,
}

/// A request from the backend.
#[derive(Debug)]
pub enum GpuMessage {
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetDisplayInfo,
    GetEdid {
        scanout_id: u32,
    },
    CursorPos(CursorAt),
    CursorPosHide(CursorAt),
    CursorUpdate {
        at: CursorAt,
        hot_x: u32,
        hot_y: u32,
    },
    Scanout {
        scanout_id: u32,
        width: u32,
        height: u32,
    },
    /// The pixels are the payload after the 20-byte rectangle
    /// ([`UPDATE_PIXELS_AT`]), checked to be exactly width*height*4 bytes.
    Update(ScanoutRect),
    DmabufScanout(DmabufScanout),
    DmabufUpdate(ScanoutRect),
}

/// Where an UPDATE's pixels start in its payload.
pub const UPDATE_PIXELS_AT: usize = 20;

/// A message the VMM side refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuWireError {
    /// A request number the protocol does not define.
    UnknownRequest(u32),
    /// The payload is shorter than the request's layout.
    ShortPayload {
        request: u32,
        need: usize,
        got: usize,
    },
    /// An UPDATE whose pixel bytes do not match its rectangle.
    PixelBytes { expected: u64, got: usize },
    /// Descriptors attached to a request that takes none (or too many).
    UnexpectedFds { request: u32, count: usize },
}

impl fmt::Display for GpuWireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownRequest(r) => write!(f, "unknown GPU socket request {r}"),
            Self::ShortPayload { request, need, got } => write!(
                f,
                "request {request}: payload of {got} bytes, layout needs {need}"
            ),
            Self::PixelBytes { expected, got } => {
                write!(
                    f,
                    "UPDATE carries {got} pixel bytes, rectangle needs {expected}"
                )
            }
            Self::UnexpectedFds { request, count } => {
                write!(f, "request {request} came with {count} descriptors")
            }
        }
    }
}

impl std::error::Error for GpuWireError {}

/// Decodes one request. The header's flags are not looked at, as QEMU's
/// VMM side does not: QEMU's own backend (7.2) sends UPDATE with flags left
/// uninitialised, reply bit included at random.
pub fn decode(header: Header, payload: &[u8], fds: Vec<File>) -> Result<GpuMessage, GpuWireError> {
    use GpuBackendReq as R;
    let request = header.request;
    let code = R::try_from(request).map_err(|()| GpuWireError::UnknownRequest(request))?;
    let takes_fd = matches!(code, R::DMABUF_SCANOUT | R::DMABUF_SCANOUT2);
    if fds.len() > usize::from(takes_fd) {
        return Err(GpuWireError::UnexpectedFds {
            request,
            count: fds.len(),
        });
    }
    let mut r = Words::new(request, payload);
    Ok(match code {
        R::GET_PROTOCOL_FEATURES => GpuMessage::GetProtocolFeatures,
        R::SET_PROTOCOL_FEATURES => GpuMessage::SetProtocolFeatures(r.need(8)?.u64()),
        R::GET_DISPLAY_INFO => GpuMessage::GetDisplayInfo,
        R::GET_EDID => GpuMessage::GetEdid {
            scanout_id: r.need(4)?.u32(),
        },
        R::CURSOR_POS => GpuMessage::CursorPos(r.need(12)?.cursor()),
        R::CURSOR_POS_HIDE => GpuMessage::CursorPosHide(r.need(12)?.cursor()),
        R::CURSOR_UPDATE => {
            r.need(20 + CURSOR_IMAGE)?;
            GpuMessage::CursorUpdate {
                at: r.cursor(),
                hot_x: r.u32(),
                hot_y: r.u32(),
            }
        }
        R::SCANOUT => {
            r.need(12)?;
            GpuMessage::Scanout {
                scanout_id: r.u32(),
                width: r.u32(),
                height: r.u32(),
            }
        }
        R::UPDATE => {
            let rect = r.need(UPDATE_PIXELS_AT)?.rect();
            let expected = u64::from(rect.width) * u64::from(rect.height) * 4;
            let got = payload.len() - UPDATE_PIXELS_AT;
            if expected != got as u64 {
                return Err(GpuWireError::PixelBytes { expected, got });
            }
            GpuMessage::Update(rect)
        }
        R::DMABUF_UPDATE => GpuMessage::DmabufUpdate(r.need(UPDATE_PIXELS_AT)?.rect()),
        R::DMABUF_SCANOUT | R::DMABUF_SCANOUT2 => {
            let two = code == R::DMABUF_SCANOUT2;
            r.need(if two { 48 } else { 40 })?;
            GpuMessage::DmabufScanout(DmabufScanout {
                rect: r.rect(),
                fd_width: r.u32(),
                fd_height: r.u32(),
                fd_stride: r.u32(),
                fd_flags: r.u32(),
                fourcc: r.u32(),
                modifier: two.then(|| r.u64()),
                fd: fds.into_iter().next(),
            })
        }
    })
}

/// The header of a reply to `request` with `len` bytes of payload.
pub fn reply_header(request: u32, len: usize) -> Header {
    Header {
        request,
        flags: FLAG_REPLY,
        size: u32::try_from(len).unwrap_or(u32::MAX),
    }
}

/// The `virtio_gpu_resp_display_info` payload for `modes`.
pub fn display_info_payload(modes: &[DisplayMode]) -> Vec<u8> {
    let mut out = Vec::new();
    Response::display_info(modes).encode(&CtrlHeader::default(), &mut out);
    out
}

/// The `virtio_gpu_resp_edid` payload: the EDID, or an error header padded
/// to the same size (the backend reads a fixed-size reply).
pub fn edid_payload(edid: Result<&[u8], u32>) -> Vec<u8> {
    const FULL: usize = CTRL_HDR_SIZE + 8 + EDID_BLOB_SIZE;
    let resp = match edid {
        Ok(bytes) => EdidBlob::new(bytes).map_or_else(|e| Response::from(&e), Response::OkEdid),
        Err(code) => Response::Err(code),
    };
    let mut out = Vec::with_capacity(FULL);
    resp.encode(&CtrlHeader::default(), &mut out);
    out.resize(FULL, 0);
    out
}

/// A bounds-checked cursor over native-endian words.
struct Words<'a> {
    request: u32,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(request: u32, bytes: &'a [u8]) -> Self {
        Self {
            request,
            bytes,
            at: 0,
        }
    }

    /// Checks the payload holds `len` bytes; the reads after it stay inside.
    fn need(&mut self, len: usize) -> Result<&mut Self, GpuWireError> {
        if self.bytes.len() < len {
            return Err(GpuWireError::ShortPayload {
                request: self.request,
                need: len,
                got: self.bytes.len(),
            });
        }
        Ok(self)
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.take())
    }

    fn cursor(&mut self) -> CursorAt {
        CursorAt {
            scanout_id: self.u32(),
            x: self.u32(),
            y: self.u32(),
        }
    }

    fn rect(&mut self) -> ScanoutRect {
        ScanoutRect {
            scanout_id: self.u32(),
            x: self.u32(),
            y: self.u32(),
            width: self.u32(),
            height: self.u32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(request: u32, size: usize) -> Header {
        Header {
            request,
            flags: 0,
            size: size as u32,
        }
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn update_decodes_its_rectangle_and_checks_the_pixel_bytes() {
        let mut p = words(&[0, 1, 2, 2, 1]);
        p.extend_from_slice(&[7; 8]);
        let m = decode(hdr(8, p.len()), &p, Vec::new()).unwrap();
        assert!(matches!(
            m,
            GpuMessage::Update(ScanoutRect {
                x: 1,
                y: 2,
                width: 2,
                height: 1,
                ..
            })
        ));
        p.pop();
        assert_eq!(
            decode(hdr(8, p.len()), &p, Vec::new()).unwrap_err(),
            GpuWireError::PixelBytes {
                expected: 8,
                got: 7
            }
        );
    }

    #[test]
    fn request_flags_are_ignored_as_qemu_does() {
        let garbage = Header {
            flags: 0x7f87,
            ..hdr(3, 0)
        };
        assert!(matches!(
            decode(garbage, &[], Vec::new()),
            Ok(GpuMessage::GetDisplayInfo)
        ));
    }

    #[test]
    fn short_unknown_and_fd_carrying_messages_are_refused() {
        assert!(matches!(
            decode(hdr(7, 8), &[0; 8], Vec::new()),
            Err(GpuWireError::ShortPayload { need: 12, .. })
        ));
        assert_eq!(
            decode(hdr(99, 0), &[], Vec::new()).unwrap_err(),
            GpuWireError::UnknownRequest(99)
        );
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(
            decode(hdr(3, 0), &[], vec![f]),
            Err(GpuWireError::UnexpectedFds { count: 1, .. })
        ));
    }

    #[test]
    fn replies_have_the_sizes_the_backend_reads() {
        assert_eq!(display_info_payload(&[]).len(), 24 + 16 * 24);
        assert_eq!(edid_payload(Ok(&[1; 128])).len(), 24 + 8 + 1024);
        assert_eq!(edid_payload(Err(0x1202)).len(), 24 + 8 + 1024);
        let h = reply_header(1, 8);
        assert!(h.is_reply());
        assert_eq!((h.request, h.size), (1, 8));
    }
}
