//! The GPU socket (`VHOST_USER_GPU_SET_SOCKET`), VMM side: one thread that
//! reads the backend's display messages, answers the ones that want an
//! answer (protocol features, display info, EDID, DMABUF_UPDATE) and applies
//! the rest to the [`VmmDisplay`], like QEMU's `vhost-user-gpu.c`.
//!
//! A plain thread with blocking reads is right here: it is the VMM, and a
//! slow display is exactly back-pressure on this socket. Malformed messages
//! are counted and logged; the stream stays in step because every payload
//! is consumed by its header's size.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::gpu_message::GpuBackendReq;

use super::display::VmmDisplay;
use super::framing::{self, Header};
use super::gpu_wire::{self, GpuMessage, GPU_PROTOCOL_F_EDID, UPDATE_PIXELS_AT};

/// Largest message held: a full 16384x4096 update. Larger ones are read
/// and dropped (counted as errors).
const MAX_MESSAGE: u32 = 256 << 20;
/// A backend that stops reading our replies fails the write after this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The thread serving one GPU socket.
pub(crate) struct GpuSocketServer {
    sock: UnixStream,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GpuSocketServer {
    /// Starts serving `display`; returns the end to hand to the backend.
    pub(crate) fn start(display: Arc<VmmDisplay>) -> io::Result<(Self, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let closing = Arc::new(AtomicBool::new(false));
        let conn = Connection {
            sock: ours.try_clone()?,
            display,
            closing: Arc::clone(&closing),
        };
        let thread = std::thread::Builder::new()
            .name("vhost-gpu-socket".into())
            .spawn(move || conn.serve())?;
        Ok((
            Self {
                sock: ours,
                closing,
                thread: Some(thread),
            },
            theirs,
        ))
    }
}

impl Drop for GpuSocketServer {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        let _ = self.sock.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Connection {
    sock: UnixStream,
    display: Arc<VmmDisplay>,
    closing: Arc<AtomicBool>,
}

impl Connection {
    fn serve(self) {
        let mut payload = Vec::new();
        while let Some((header, fds)) = self.next(&mut payload) {
            match gpu_wire::decode(header, &payload, fds) {
                Ok(msg) => {
                    if let Err(e) = self.handle(msg, &payload) {
                        self.log_io(&e);
                        return;
                    }
                }
                Err(e) => {
                    self.display.error();
                    tracing::warn!("GPU socket: {e}");
                }
            }
        }
    }

    /// Reads the next message into `payload`; None when the stream ends.
    fn next(&self, payload: &mut Vec<u8>) -> Option<(Header, Vec<std::fs::File>)> {
        loop {
            let (header, fds) = match framing::recv_header(&self.sock) {
                Ok(Some(got)) => got,
                Ok(None) => return None,
                Err(e) => {
                    self.log_io(&e);
                    return None;
                }
            };
            if header.size > MAX_MESSAGE {
                self.display.error();
                tracing::warn!(
                    "GPU socket: request {} of {} bytes dropped",
                    header.request,
                    header.size
                );
                if let Err(e) = framing::discard_payload(&self.sock, u64::from(header.size)) {
                    self.log_io(&e);
                    return None;
                }
                continue;
            }
            if let Err(e) = framing::recv_payload(&self.sock, header.size as usize, payload) {
                self.log_io(&e);
                return None;
            }
            return Some((header, fds));
        }
    }

    fn handle(&self, msg: GpuMessage, payload: &[u8]) -> io::Result<()> {
        let applied = match msg {
            GpuMessage::GetProtocolFeatures => {
                let offer = if self.display.options().edid {
                    GPU_PROTOCOL_F_EDID
                } else {
                    0
                };
                return self.reply(GpuBackendReq::GET_PROTOCOL_FEATURES, &offer.to_ne_bytes());
            }
            GpuMessage::SetProtocolFeatures(f) => {
                self.display.set_protocol_features(f);
                Ok(())
            }
            GpuMessage::GetDisplayInfo => {
                let body = gpu_wire::display_info_payload(&self.display.modes());
                // Counted before the reply leaves: whoever sees the answer
                // also sees the count.
                self.display.answered_display_info();
                return self.reply(GpuBackendReq::GET_DISPLAY_INFO, &body);
            }
            GpuMessage::GetEdid { scanout_id } => {
                let edid = self.display.edid(scanout_id);
                if edid.is_err() {
                    self.display.error();
                }
                let body = gpu_wire::edid_payload(edid.as_ref().map(|e| &e[..]).map_err(|c| *c));
                self.display.answered_edid();
                return self.reply(GpuBackendReq::GET_EDID, &body);
            }
            GpuMessage::Scanout {
                scanout_id,
                width,
                height,
            } => self.display.set_scanout(scanout_id, width, height),
            GpuMessage::Update(rect) => self.display.update(rect, &payload[UPDATE_PIXELS_AT..]),
            GpuMessage::CursorPos(at) => self.display.cursor(at, true, None),
            GpuMessage::CursorPosHide(at) => self.display.cursor(at, false, None),
            GpuMessage::CursorUpdate { at, hot_x, hot_y } => {
                self.display.cursor(at, true, Some((hot_x, hot_y)))
            }
            GpuMessage::DmabufScanout(s) => self.display.dmabuf_scanout(&s),
            GpuMessage::DmabufUpdate(rect) => {
                // The backend blocks until the VMM has presented the frame.
                let shown = self.display.dmabuf_update(rect);
                self.reply(GpuBackendReq::DMABUF_UPDATE, &[])?;
                shown
            }
        };
        if let Err(e) = applied {
            tracing::warn!("GPU socket: {e}");
        }
        Ok(())
    }

    fn reply(&self, request: GpuBackendReq, body: &[u8]) -> io::Result<()> {
        framing::send(
            &self.sock,
            gpu_wire::reply_header(request.into(), body.len()),
            body,
        )
    }

    fn log_io(&self, e: &io::Error) {
        if !self.closing.load(Ordering::Acquire) && e.kind() != io::ErrorKind::UnexpectedEof {
            tracing::warn!("GPU socket closed: {e}");
        }
    }
}
