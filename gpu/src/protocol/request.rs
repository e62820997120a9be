//! A whole request: header plus command. [`decode`] and [`decode_cursor`]
//! are the device's single entry points from guest bytes to types;
//! [`Request::encode`] is the guest side (loadgen) of the same layout.

use super::commands::GpuCommand;
use super::error::ProtocolError;
use super::header::CtrlHeader;
use super::le::ByteReader;
use super::limits::DecodeContext;
use super::types::CtxId;
use super::wire::{
    is_cursor_command, request_body_size, VIRTIO_GPU_FLAGS_KNOWN, VIRTIO_GPU_FLAG_FENCE,
    VIRTIO_GPU_FLAG_INFO_RING_IDX, VIRTIO_GPU_MAX_RING_IDX,
};

/// A decoded request. `hdr.kind` always equals `cmd.kind()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The header as sent (the response echoes parts of it).
    pub hdr: CtrlHeader,
    /// The typed command.
    pub cmd: GpuCommand,
}

/// Decodes a control-queue request from the readable part of its chain.
///
/// Checks, in order: header length, that the type is a control command,
/// the header flags against the negotiated features, that the command's
/// feature was negotiated, then the command's own layout and value rules.
/// Bytes after the command's struct (and tail) are ignored.
pub fn decode(bytes: &[u8], ctx: &DecodeContext) -> Result<Request, ProtocolError> {
    decode_on(bytes, ctx, Queue::Control)
}

/// Decodes a cursor-queue request: only `UPDATE_CURSOR` and `MOVE_CURSOR`.
pub fn decode_cursor(bytes: &[u8], ctx: &DecodeContext) -> Result<Request, ProtocolError> {
    decode_on(bytes, ctx, Queue::Cursor)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Control,
    Cursor,
}

fn decode_on(bytes: &[u8], ctx: &DecodeContext, queue: Queue) -> Result<Request, ProtocolError> {
    let mut r = ByteReader::new(bytes);
    let hdr = CtrlHeader::read(&mut r)?;
    match (queue, is_cursor_command(hdr.kind)) {
        (Queue::Control, true) => return Err(ProtocolError::CursorCommandOnControlQueue(hdr.kind)),
        (Queue::Cursor, false) => {
            // Distinguish "wrong queue" from "not a command at all".
            return Err(match request_body_size(hdr.kind) {
                Some(_) => ProtocolError::ControlCommandOnCursorQueue(hdr.kind),
                None => ProtocolError::UnknownCommandType(hdr.kind),
            });
        }
        _ => {}
    }
    if request_body_size(hdr.kind).is_none() {
        return Err(ProtocolError::UnknownCommandType(hdr.kind));
    }
    check_header_flags(&hdr, ctx)?;
    let cmd = GpuCommand::decode_body(&hdr, &mut r, ctx)?;
    Ok(Request { hdr, cmd })
}

/// The header rules: only defined flags; ring indices only with
/// `F_CONTEXT_INIT` and only up to 63.
fn check_header_flags(hdr: &CtrlHeader, ctx: &DecodeContext) -> Result<(), ProtocolError> {
    if hdr.flags & !VIRTIO_GPU_FLAGS_KNOWN != 0 {
        return Err(ProtocolError::UnknownHeaderFlags(hdr.flags));
    }
    if hdr.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0 {
        if !ctx.ring_timelines() {
            return Err(ProtocolError::RingIdxWithoutContextInit);
        }
        if hdr.ring_idx > VIRTIO_GPU_MAX_RING_IDX {
            return Err(ProtocolError::RingIdxOutOfRange(hdr.ring_idx));
        }
    }
    Ok(())
}

impl Request {
    /// A request with no flags and no context, as the guest would build it.
    pub fn new(cmd: GpuCommand) -> Self {
        Self {
            hdr: CtrlHeader::new(cmd.kind()),
            cmd,
        }
    }

    /// Sets the context (`hdr.ctx_id`).
    pub fn with_ctx(mut self, ctx_id: u32) -> Self {
        self.hdr.ctx_id = ctx_id;
        self
    }

    /// Asks for a fence: the response waits for completion and echoes
    /// `fence_id`.
    pub fn with_fence(mut self, fence_id: u64) -> Self {
        self.hdr.flags |= VIRTIO_GPU_FLAG_FENCE;
        self.hdr.fence_id = fence_id;
        self
    }

    /// Puts the fence on the context's ring `ring_idx` (needs
    /// `F_CONTEXT_INIT`).
    pub fn with_ring(mut self, ring_idx: u8) -> Self {
        self.hdr.flags |= VIRTIO_GPU_FLAG_INFO_RING_IDX;
        self.hdr.ring_idx = ring_idx;
        self
    }

    /// The context named in the header (0: none).
    pub fn ctx_id(&self) -> CtxId {
        CtxId(self.hdr.ctx_id)
    }

    /// The fence id when `FLAG_FENCE` is set.
    pub fn fence_id(&self) -> Option<u64> {
        self.hdr.is_fenced().then_some(self.hdr.fence_id)
    }

    /// Appends the request in wire layout. The header's type is taken from
    /// the command, so the two cannot disagree.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let hdr = CtrlHeader {
            kind: self.cmd.kind(),
            ..self.hdr
        };
        hdr.write(out);
        self.cmd.encode_body(out);
    }

    /// [`Request::encode`] into a fresh `Vec`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}
