//! The virtio-gpu wire protocol (virtio 1.3, "GPU Device"), typed.
//!
//! Guest bytes enter here and leave as [`Request`]s; nothing outside this
//! module reads raw guest bytes. Every length, count, id and flag that can
//! be checked without device state is checked once, in [`decode`], and each
//! rule has its own [`ProtocolError`] variant mapped to the
//! `VIRTIO_GPU_RESP_ERR_*` the guest receives. Rules that need state
//! (does this resource exist?) have their variants here too, so the device
//! has one error type, but are checked by the device.
//!
//! The same types encode requests and decode responses, which is what the
//! guest side (loadgen) needs.
//!
//! | file | concern |
//! |---|---|
//! | `wire.rs` | the spec's numbers: types, flags, formats, features, sizes |
//! | `le.rs` | bounded little-endian reader, writers |
//! | `header.rs` | `virtio_gpu_ctrl_hdr` |
//! | `types.rs` | ids, rects, boxes, mem entries, formats, blob kinds |
//! | `commands/` | one struct per command with its layout and value rules |
//! | `request.rs` | header rules, [`decode`], [`decode_cursor`], encode |
//! | `response.rs` | [`Response`] encode and decode |
//! | `edid.rs` | [`edid_for`], the EDID served by `GET_EDID` |
//! | `chain.rs` | descriptor chain → bytes, response → chain |
//! | `config.rs` | [`GpuConfig`], the device configuration space |
//! | `limits.rs` | [`DecodeContext`] and [`Limits`] |
//! | `virgl_format.rs` | bytes per texel of the virgl formats (3D resources' host memory) |
//! | `error.rs` | [`ProtocolError`] |
//!
//! ```
//! use gpu::protocol::{decode, DecodeContext, GpuCommand, Request, Response};
//! use gpu::protocol::{ResourceFlush, Rect, ResourceId};
//!
//! // Guest side: build and encode.
//! let req = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
//!     rect: Rect::new(0, 0, 64, 64),
//!     resource_id: ResourceId(1),
//! }))
//! .with_fence(42);
//! let bytes = req.to_bytes();
//!
//! // Device side: decode, then answer.
//! let got = decode(&bytes, &DecodeContext::default()).unwrap();
//! assert_eq!(got, req);
//! let mut resp = Vec::new();
//! Response::OkNodata.encode(&got.hdr, &mut resp);
//! let (hdr, body) = Response::decode(&resp).unwrap();
//! assert_eq!((hdr.fence_id, body), (42, Response::OkNodata));
//! ```

#![warn(missing_docs)]

pub mod chain;
mod commands;
mod config;
pub mod edid;
mod error;
mod header;
pub mod le;
mod limits;
mod request;
mod response;
mod types;
pub mod virgl_format;
pub mod wire;

pub use chain::{gather, ChainLimits, GatheredChain, ResponseArea};
pub use commands::{
    names_context_in_header, required_feature, BlobScanoutLayout, CtxCreate, CursorUpdate,
    GetCapset, GetCapsetInfo, GetEdid, GpuCommand, ResourceAttachBacking, ResourceCreate2d,
    ResourceCreate3d, ResourceCreateBlob, ResourceFlush, ResourceMapBlob, ResourceRef, SetScanout,
    SetScanoutBlob, Submit3d, Transfer3d, TransferToHost2d, PIPE_BUFFER, PIPE_TEXTURE_1D,
    PIPE_TEXTURE_1D_ARRAY, PIPE_TEXTURE_2D, PIPE_TEXTURE_2D_ARRAY, PIPE_TEXTURE_3D,
    PIPE_TEXTURE_CUBE, PIPE_TEXTURE_CUBE_ARRAY, PIPE_TEXTURE_RECT,
};
pub use config::GpuConfig;
pub use edid::edid_for;
pub use error::ProtocolError;
pub use header::CtrlHeader;
pub use limits::{DecodeContext, Limits};
pub use request::{decode, decode_cursor, Request};
pub use response::{EdidBlob, Response};
pub use types::{
    BlobFlags, BlobMem, Box3d, CtxId, CursorPos, DisplayMode, Format, MemEntry, Rect, ResourceId,
    ScanoutId,
};

#[cfg(test)]
mod tests;
