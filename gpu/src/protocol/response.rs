//! Responses: what the device writes into the writable part of a chain.
//! [`Response::encode`] is the device side; [`Response::decode`] is the
//! guest side (loadgen) of the same layouts.

use super::error::ProtocolError;
use super::header::CtrlHeader;
use super::le::{put_u32, put_zeros, ByteReader};
use super::types::DisplayMode;
use super::wire::*;

/// An EDID blob of at most 1024 bytes (the size of `resp_edid.edid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdidBlob(Vec<u8>);

impl EdidBlob {
    /// Wraps `bytes`, or `EdidSizeOutOfRange` when longer than 1024.
    pub fn new(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if bytes.len() > EDID_BLOB_SIZE {
            return Err(ProtocolError::EdidSizeOutOfRange(
                u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            ));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// The EDID bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A response body, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `OK_NODATA`.
    OkNodata,
    /// `OK_DISPLAY_INFO`: one entry per possible scanout (16).
    OkDisplayInfo(Box<[DisplayMode; VIRTIO_GPU_MAX_SCANOUTS]>),
    /// `OK_CAPSET_INFO`.
    OkCapsetInfo {
        /// `VIRTIO_GPU_CAPSET_*`.
        capset_id: u32,
        /// Newest version the device speaks.
        max_version: u32,
        /// Largest capset data, in bytes.
        max_size: u32,
    },
    /// `OK_CAPSET`: the capset data.
    OkCapset(Vec<u8>),
    /// `OK_EDID`.
    OkEdid(EdidBlob),
    /// `OK_RESOURCE_UUID`.
    OkResourceUuid([u8; 16]),
    /// `OK_MAP_INFO`: `VIRTIO_GPU_MAP_CACHE_*` in the low bits.
    OkMapInfo {
        /// Caching mode of the mapping.
        map_info: u32,
    },
    /// One of `VIRTIO_GPU_RESP_ERR_*`.
    Err(u32),
}

impl From<&ProtocolError> for Response {
    fn from(e: &ProtocolError) -> Self {
        Response::Err(e.response_code())
    }
}

impl Response {
    /// `OK_DISPLAY_INFO` from up to 16 modes; missing scanouts are
    /// reported disabled, extra ones dropped.
    pub fn display_info(modes: &[DisplayMode]) -> Self {
        let mut all = [DisplayMode::default(); VIRTIO_GPU_MAX_SCANOUTS];
        for (slot, m) in all.iter_mut().zip(modes) {
            *slot = *m;
        }
        Response::OkDisplayInfo(Box::new(all))
    }

    /// The `VIRTIO_GPU_RESP_*` type.
    pub fn kind(&self) -> u32 {
        match self {
            Response::OkNodata => VIRTIO_GPU_RESP_OK_NODATA,
            Response::OkDisplayInfo(_) => VIRTIO_GPU_RESP_OK_DISPLAY_INFO,
            Response::OkCapsetInfo { .. } => VIRTIO_GPU_RESP_OK_CAPSET_INFO,
            Response::OkCapset(_) => VIRTIO_GPU_RESP_OK_CAPSET,
            Response::OkEdid(_) => VIRTIO_GPU_RESP_OK_EDID,
            Response::OkResourceUuid(_) => VIRTIO_GPU_RESP_OK_RESOURCE_UUID,
            Response::OkMapInfo { .. } => VIRTIO_GPU_RESP_OK_MAP_INFO,
            Response::Err(code) => *code,
        }
    }

    /// Bytes [`Response::encode`] writes: lets the device check the
    /// writable capacity before encoding.
    pub fn encoded_len(&self) -> usize {
        CTRL_HDR_SIZE
            + match self {
                Response::OkNodata | Response::Err(_) => 0,
                Response::OkDisplayInfo(_) => VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE_SIZE,
                Response::OkCapsetInfo { .. } => 16,
                Response::OkCapset(data) => data.len(),
                Response::OkEdid(_) => 8 + EDID_BLOB_SIZE,
                Response::OkResourceUuid(_) => 16,
                Response::OkMapInfo { .. } => 8,
            }
    }

    /// The response header for a request header: echoes `ctx_id`, and
    /// `FLAG_FENCE` with `fence_id` and `FLAG_INFO_RING_IDX` with
    /// `ring_idx` when the request set them (virtio 1.3 §5.7.6.7).
    pub fn header_for(&self, hdr_in: &CtrlHeader) -> CtrlHeader {
        let fenced = hdr_in.is_fenced();
        let ring = hdr_in.ring();
        let mut flags = 0;
        if fenced {
            flags |= VIRTIO_GPU_FLAG_FENCE;
        }
        if ring.is_some() {
            flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
        }
        CtrlHeader {
            kind: self.kind(),
            flags,
            fence_id: if fenced { hdr_in.fence_id } else { 0 },
            ctx_id: hdr_in.ctx_id,
            ring_idx: ring.unwrap_or(0),
        }
    }

    /// Appends the response to the request with header `hdr_in`.
    pub fn encode(&self, hdr_in: &CtrlHeader, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.header_for(hdr_in).write(out);
        match self {
            Response::OkNodata | Response::Err(_) => {}
            Response::OkDisplayInfo(modes) => {
                for m in modes.iter() {
                    m.write(out);
                }
            }
            Response::OkCapsetInfo {
                capset_id,
                max_version,
                max_size,
            } => {
                for v in [*capset_id, *max_version, *max_size, 0] {
                    put_u32(out, v);
                }
            }
            Response::OkCapset(data) => out.extend_from_slice(data),
            Response::OkEdid(edid) => {
                let bytes = edid.as_bytes();
                put_u32(out, bytes.len() as u32);
                put_u32(out, 0);
                out.extend_from_slice(bytes);
                put_zeros(out, EDID_BLOB_SIZE - bytes.len());
            }
            Response::OkResourceUuid(uuid) => out.extend_from_slice(uuid),
            Response::OkMapInfo { map_info } => {
                put_u32(out, *map_info);
                put_u32(out, 0);
            }
        }
    }

    /// Decodes a response as the guest reads it. `OK_CAPSET` takes every
    /// byte after the header as capset data.
    pub fn decode(bytes: &[u8]) -> Result<(CtrlHeader, Response), ProtocolError> {
        let short = |e: ProtocolError| match e {
            ProtocolError::ShortCommand { needed, got } => {
                ProtocolError::ShortResponse { needed, got }
            }
            other => other,
        };
        let mut r = ByteReader::new(bytes);
        let hdr = CtrlHeader::read(&mut r).map_err(short)?;
        let resp = Self::decode_body(hdr.kind, &mut r).map_err(short)?;
        Ok((hdr, resp))
    }

    fn decode_body(kind: u32, r: &mut ByteReader<'_>) -> Result<Response, ProtocolError> {
        Ok(match kind {
            VIRTIO_GPU_RESP_OK_NODATA => Response::OkNodata,
            VIRTIO_GPU_RESP_OK_DISPLAY_INFO => {
                r.require(VIRTIO_GPU_MAX_SCANOUTS * DISPLAY_ONE_SIZE)?;
                let mut modes = [DisplayMode::default(); VIRTIO_GPU_MAX_SCANOUTS];
                for m in &mut modes {
                    *m = DisplayMode::read(r)?;
                }
                Response::OkDisplayInfo(Box::new(modes))
            }
            VIRTIO_GPU_RESP_OK_CAPSET_INFO => {
                let [capset_id, max_version, max_size, _pad] = r.u32_array::<4>()?;
                Response::OkCapsetInfo {
                    capset_id,
                    max_version,
                    max_size,
                }
            }
            VIRTIO_GPU_RESP_OK_CAPSET => Response::OkCapset(r.bytes(r.remaining())?.to_vec()),
            VIRTIO_GPU_RESP_OK_EDID => {
                r.require(8 + EDID_BLOB_SIZE)?;
                let size = r.u32()?;
                r.skip(4)?;
                let blob = r.bytes(EDID_BLOB_SIZE)?;
                let edid = blob
                    .get(..size as usize)
                    .ok_or(ProtocolError::EdidSizeOutOfRange(size))?;
                Response::OkEdid(EdidBlob::new(edid)?)
            }
            VIRTIO_GPU_RESP_OK_RESOURCE_UUID => Response::OkResourceUuid(r.array::<16>()?),
            VIRTIO_GPU_RESP_OK_MAP_INFO => {
                let map_info = r.u32()?;
                r.skip(4)?;
                Response::OkMapInfo { map_info }
            }
            VIRTIO_GPU_RESP_ERR_UNSPEC..=VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER => {
                Response::Err(kind)
            }
            other => return Err(ProtocolError::UnknownResponseType(other)),
        })
    }
}
