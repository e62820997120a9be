//! What the device process and a render worker say to each other over their
//! socketpair (a `SOCK_STREAM`: submits reach 4 MiB, beyond what a
//! `SOCK_SEQPACKET` datagram may hold). Every frame is a little-endian `u32`
//! length and a body; the body starts with a tag.
//!
//! The parent sends [`Request`]s, each with a sequence number; the worker
//! answers every one with exactly one [`Event::Reply`], in order, except
//! [`Request::Fence`], answered when the fence retires. Guest memory is
//! shared, not copied: [`Request::MemTable`] carries the guest RAM fds
//! (SCM_RIGHTS, one per region, in order) and transfers name guest
//! addresses. Scanout pixels come back through the worker's shared memory
//! area (see `pool.rs`), never through the socket.
//!
//! Decoding is bounded: every count is checked against the bytes present
//! before anything is allocated, so a confused peer gets an error, not an
//! allocation it sized.

use crate::protocol::{Box3d, Format, MemEntry, Rect, ResourceCreate3d, ResourceId, Transfer3d};
use crate::render::{Capset, ResourceKind};

/// Largest frame either side accepts: a maximal submit plus headers.
pub const MAX_FRAME: usize = 8 << 20;

/// One guest RAM region, mapped by the worker from the fd sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    MemTable(Vec<MemRegion>),
    CtxCreate {
        ctx: u32,
        capset: u8,
        name: Vec<u8>,
    },
    CtxDestroy(u32),
    Attach {
        ctx: u32,
        res: u32,
    },
    Detach {
        ctx: u32,
        res: u32,
    },
    ResCreate {
        id: u32,
        kind: ResourceKind,
    },
    ResDestroy(u32),
    Submit {
        ctx: u32,
        ring: u8,
        cmds: Vec<u8>,
    },
    Fence {
        ctx: u32,
        ring: u8,
    },
    Transfer2d {
        id: u32,
        rect: Rect,
        offset: u64,
        entries: Vec<MemEntry>,
    },
    Transfer3d {
        ctx: u32,
        t: Transfer3d,
        to_host: bool,
        entries: Vec<MemEntry>,
    },
    /// Read `rect` of `id` (4 bytes a pixel, rows packed) into the shared
    /// area at `shm_offset`.
    ReadRect {
        id: u32,
        rect: Rect,
        shm_offset: u64,
    },
    /// `id`'s backing, kept by the library until detached (its command
    /// streams name these guest pages).
    AttachBacking {
        id: u32,
        entries: Vec<MemEntry>,
    },
    DetachBacking(u32),
    /// `rect` of `id` (4 bytes a pixel, rows packed) from `pixels`: a
    /// replica of a resource that lives on another worker, brought up to
    /// date (see `pool.rs`).
    WriteRect {
        id: u32,
        rect: Rect,
        pixels: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The worker's library is up; its capsets.
    Ready(Vec<Capset>),
    /// Request `seq` is done: 0, or the renderer's error code.
    Reply { seq: u64, rc: i32 },
}

/// `rc` of a request the worker could not decode or carry out for a reason
/// of its own (logged there).
pub const RC_WORKER_ERROR: i32 = -1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "render worker protocol: {}", self.0)
    }
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    fn rect(&mut self, r: Rect) -> &mut Self {
        self.u32(r.x).u32(r.y).u32(r.width).u32(r.height)
    }
    fn entries(&mut self, e: &[MemEntry]) -> &mut Self {
        self.u32(e.len() as u32);
        for m in e {
            self.u64(m.addr).u32(m.length);
        }
        self
    }
    /// The frame: length, then body.
    fn frame(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.0.len());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("frame too short"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn rect(&mut self) -> Result<Rect, WireError> {
        Ok(Rect::new(
            self.u32()?,
            self.u32()?,
            self.u32()?,
            self.u32()?,
        ))
    }
    fn entries(&mut self) -> Result<Vec<MemEntry>, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(12) > self.0.len() {
            return Err(WireError("entry count beyond the frame"));
        }
        (0..n)
            .map(|_| {
                Ok(MemEntry {
                    addr: self.u64()?,
                    length: self.u32()?,
                })
            })
            .collect()
    }
    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

const MEM_TABLE: u8 = 1;
const CTX_CREATE: u8 = 2;
const CTX_DESTROY: u8 = 3;
const ATTACH: u8 = 4;
const DETACH: u8 = 5;
const RES_CREATE: u8 = 6;
const RES_DESTROY: u8 = 7;
const SUBMIT: u8 = 8;
const FENCE: u8 = 9;
const TRANSFER_2D: u8 = 10;
const TRANSFER_3D: u8 = 11;
const READ_RECT: u8 = 12;
const ATTACH_BACKING: u8 = 13;
const DETACH_BACKING: u8 = 14;
const WRITE_RECT: u8 = 15;

const READY: u8 = 100;
const REPLY: u8 = 101;

const KIND_2D: u8 = 1;
const KIND_3D: u8 = 2;

/// A request as one frame.
pub fn encode_request(seq: u64, req: &Request) -> Vec<u8> {
    let mut w = W(Vec::new());
    let tag = |w: &mut W, t: u8| {
        w.u8(t).u64(seq);
    };
    match req {
        Request::MemTable(regions) => {
            tag(&mut w, MEM_TABLE);
            w.u32(regions.len() as u32);
            for r in regions {
                w.u64(r.guest_addr).u64(r.size).u64(r.file_offset);
            }
        }
        Request::CtxCreate { ctx, capset, name } => {
            tag(&mut w, CTX_CREATE);
            w.u32(*ctx).u8(*capset).bytes(name);
        }
        Request::CtxDestroy(ctx) => {
            tag(&mut w, CTX_DESTROY);
            w.u32(*ctx);
        }
        Request::Attach { ctx, res } => {
            tag(&mut w, ATTACH);
            w.u32(*ctx).u32(*res);
        }
        Request::Detach { ctx, res } => {
            tag(&mut w, DETACH);
            w.u32(*ctx).u32(*res);
        }
        Request::ResCreate { id, kind } => {
            tag(&mut w, RES_CREATE);
            w.u32(*id);
            match kind {
                ResourceKind::Image2d {
                    format,
                    width,
                    height,
                } => {
                    w.u8(KIND_2D).u32(format.to_wire()).u32(*width).u32(*height);
                }
                ResourceKind::Image3d(c) => {
                    w.u8(KIND_3D)
                        .u32(c.target)
                        .u32(c.format)
                        .u32(c.bind)
                        .u32(c.width)
                        .u32(c.height)
                        .u32(c.depth)
                        .u32(c.array_size)
                        .u32(c.last_level)
                        .u32(c.nr_samples)
                        .u32(c.flags);
                }
                // Blobs are refused before they get here (no blob support
                // on llvmpipe); an unknown kind is refused by the worker.
                ResourceKind::HostBlob { .. } | ResourceKind::GuestBlob { .. } => {
                    w.u8(0);
                }
            }
        }
        Request::ResDestroy(id) => {
            tag(&mut w, RES_DESTROY);
            w.u32(*id);
        }
        Request::Submit { ctx, ring, cmds } => {
            tag(&mut w, SUBMIT);
            w.u32(*ctx).u8(*ring).bytes(cmds);
        }
        Request::Fence { ctx, ring } => {
            tag(&mut w, FENCE);
            w.u32(*ctx).u8(*ring);
        }
        Request::Transfer2d {
            id,
            rect,
            offset,
            entries,
        } => {
            tag(&mut w, TRANSFER_2D);
            w.u32(*id).rect(*rect).u64(*offset).entries(entries);
        }
        Request::Transfer3d {
            ctx,
            t,
            to_host,
            entries,
        } => {
            tag(&mut w, TRANSFER_3D);
            let b = t.box3d;
            w.u32(*ctx)
                .u8(u8::from(*to_host))
                .u32(t.resource_id.0)
                .u32(b.x)
                .u32(b.y)
                .u32(b.z)
                .u32(b.w)
                .u32(b.h)
                .u32(b.d)
                .u64(t.offset)
                .u32(t.level)
                .u32(t.stride)
                .u32(t.layer_stride)
                .entries(entries);
        }
        Request::ReadRect {
            id,
            rect,
            shm_offset,
        } => {
            tag(&mut w, READ_RECT);
            w.u32(*id).rect(*rect).u64(*shm_offset);
        }
        Request::AttachBacking { id, entries } => {
            tag(&mut w, ATTACH_BACKING);
            w.u32(*id).entries(entries);
        }
        Request::DetachBacking(id) => {
            tag(&mut w, DETACH_BACKING);
            w.u32(*id);
        }
        Request::WriteRect { id, rect, pixels } => {
            tag(&mut w, WRITE_RECT);
            w.u32(*id).rect(*rect).bytes(pixels);
        }
    }
    w.frame()
}

/// A frame body (without its length) as `(seq, request)`.
pub fn decode_request(body: &[u8]) -> Result<(u64, Request), WireError> {
    let mut r = R(body);
    let tag = r.u8()?;
    let seq = r.u64()?;
    let req = match tag {
        MEM_TABLE => {
            let n = r.u32()? as usize;
            if n.saturating_mul(24) > r.0.len() {
                return Err(WireError("region count beyond the frame"));
            }
            let regions = (0..n)
                .map(|_| {
                    Ok(MemRegion {
                        guest_addr: r.u64()?,
                        size: r.u64()?,
                        file_offset: r.u64()?,
                    })
                })
                .collect::<Result<_, WireError>>()?;
            Request::MemTable(regions)
        }
        CTX_CREATE => Request::CtxCreate {
            ctx: r.u32()?,
            capset: r.u8()?,
            name: r.bytes()?,
        },
        CTX_DESTROY => Request::CtxDestroy(r.u32()?),
        ATTACH => Request::Attach {
            ctx: r.u32()?,
            res: r.u32()?,
        },
        DETACH => Request::Detach {
            ctx: r.u32()?,
            res: r.u32()?,
        },
        RES_CREATE => {
            let id = r.u32()?;
            let kind = match r.u8()? {
                KIND_2D => ResourceKind::Image2d {
                    format: Format::from_wire(r.u32()?)
                        .map_err(|_| WireError("unknown 2D format"))?,
                    width: r.u32()?,
                    height: r.u32()?,
                },
                KIND_3D => ResourceKind::Image3d(ResourceCreate3d {
                    resource_id: ResourceId(id),
                    target: r.u32()?,
                    format: r.u32()?,
                    bind: r.u32()?,
                    width: r.u32()?,
                    height: r.u32()?,
                    depth: r.u32()?,
                    array_size: r.u32()?,
                    last_level: r.u32()?,
                    nr_samples: r.u32()?,
                    flags: r.u32()?,
                }),
                _ => return Err(WireError("unknown resource kind")),
            };
            Request::ResCreate { id, kind }
        }
        RES_DESTROY => Request::ResDestroy(r.u32()?),
        SUBMIT => Request::Submit {
            ctx: r.u32()?,
            ring: r.u8()?,
            cmds: r.bytes()?,
        },
        FENCE => Request::Fence {
            ctx: r.u32()?,
            ring: r.u8()?,
        },
        TRANSFER_2D => Request::Transfer2d {
            id: r.u32()?,
            rect: r.rect()?,
            offset: r.u64()?,
            entries: r.entries()?,
        },
        TRANSFER_3D => {
            let ctx = r.u32()?;
            let to_host = r.u8()? != 0;
            let id = r.u32()?;
            let box3d = Box3d {
                x: r.u32()?,
                y: r.u32()?,
                z: r.u32()?,
                w: r.u32()?,
                h: r.u32()?,
                d: r.u32()?,
            };
            let t = Transfer3d {
                box3d,
                offset: r.u64()?,
                resource_id: ResourceId(id),
                level: r.u32()?,
                stride: r.u32()?,
                layer_stride: r.u32()?,
            };
            Request::Transfer3d {
                ctx,
                t,
                to_host,
                entries: r.entries()?,
            }
        }
        READ_RECT => Request::ReadRect {
            id: r.u32()?,
            rect: r.rect()?,
            shm_offset: r.u64()?,
        },
        ATTACH_BACKING => Request::AttachBacking {
            id: r.u32()?,
            entries: r.entries()?,
        },
        DETACH_BACKING => Request::DetachBacking(r.u32()?),
        WRITE_RECT => Request::WriteRect {
            id: r.u32()?,
            rect: r.rect()?,
            pixels: r.bytes()?,
        },
        _ => return Err(WireError("unknown request")),
    };
    r.end()?;
    Ok((seq, req))
}

pub fn encode_event(e: &Event) -> Vec<u8> {
    let mut w = W(Vec::new());
    match e {
        Event::Ready(capsets) => {
            w.u8(READY).u32(capsets.len() as u32);
            for c in capsets {
                w.u32(c.id).u32(c.max_version).bytes(&c.data);
            }
        }
        Event::Reply { seq, rc } => {
            w.u8(REPLY).u64(*seq).u32(*rc as u32);
        }
    }
    w.frame()
}

pub fn decode_event(body: &[u8]) -> Result<Event, WireError> {
    let mut r = R(body);
    let e = match r.u8()? {
        READY => {
            let n = r.u32()? as usize;
            if n > 16 {
                return Err(WireError("too many capsets"));
            }
            let capsets = (0..n)
                .map(|_| {
                    Ok(Capset {
                        id: r.u32()?,
                        max_version: r.u32()?,
                        data: r.bytes()?,
                    })
                })
                .collect::<Result<_, WireError>>()?;
            Event::Ready(capsets)
        }
        REPLY => Event::Reply {
            seq: r.u64()?,
            rc: r.u32()? as i32,
        },
        _ => return Err(WireError("unknown event")),
    };
    r.end()?;
    Ok(e)
}

/// Takes complete frame bodies off the front of `buf`, leaving a partial
/// frame there. A frame longer than [`MAX_FRAME`] is an error.
pub fn split_frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, WireError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError("frame longer than the limit"));
        }
        if buf.len() - at - 4 < len {
            break;
        }
        frames.push(buf[at + 4..at + 4 + len].to_vec());
        at += 4 + len;
    }
    buf.drain(..at);
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(req: Request) {
        let mut frame = encode_request(7, &req);
        let bodies = split_frames(&mut frame).unwrap();
        assert!(frame.is_empty());
        assert_eq!(decode_request(&bodies[0]).unwrap(), (7, req));
    }

    #[test]
    fn virgl_worker_requests_round_trip() {
        round_trip(Request::MemTable(vec![MemRegion {
            guest_addr: 1 << 32,
            size: 4096,
            file_offset: 8192,
        }]));
        round_trip(Request::CtxCreate {
            ctx: 3,
            capset: 2,
            name: b"shell".to_vec(),
        });
        round_trip(Request::Submit {
            ctx: 3,
            ring: 0,
            cmds: vec![1, 2, 3, 4],
        });
        round_trip(Request::ResCreate {
            id: 9,
            kind: ResourceKind::Image2d {
                format: Format::B8G8R8A8Unorm,
                width: 4,
                height: 2,
            },
        });
        round_trip(Request::Transfer3d {
            ctx: 1,
            t: Transfer3d {
                box3d: Box3d {
                    x: 1,
                    y: 2,
                    z: 0,
                    w: 3,
                    h: 4,
                    d: 1,
                },
                offset: 64,
                resource_id: ResourceId(9),
                level: 0,
                stride: 12,
                layer_stride: 0,
            },
            to_host: false,
            entries: vec![MemEntry {
                addr: 0x1000,
                length: 48,
            }],
        });
        round_trip(Request::ReadRect {
            id: 9,
            rect: Rect::new(0, 0, 4, 2),
            shm_offset: 4096,
        });
        round_trip(Request::WriteRect {
            id: 9,
            rect: Rect::new(0, 1, 2, 1),
            pixels: vec![1, 2, 3, 4, 5, 6, 7, 8],
        });
        round_trip(Request::AttachBacking {
            id: 9,
            entries: vec![
                MemEntry {
                    addr: 0x2000,
                    length: 4096,
                },
                MemEntry {
                    addr: 0x8000,
                    length: 16,
                },
            ],
        });
        round_trip(Request::DetachBacking(9));
    }

    #[test]
    fn virgl_worker_frames_split_at_boundaries_and_bound_lengths() {
        let mut buf = encode_event(&Event::Reply { seq: 1, rc: -1 });
        let second = encode_event(&Event::Reply { seq: 2, rc: 22 });
        buf.extend_from_slice(&second[..3]);
        let bodies = split_frames(&mut buf).unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(
            decode_event(&bodies[0]).unwrap(),
            Event::Reply { seq: 1, rc: -1 }
        );
        assert_eq!(buf.len(), 3);
        let mut huge = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        assert!(split_frames(&mut huge).is_err());
        // A count larger than the frame allocates nothing.
        let mut w = W(Vec::new());
        w.u8(TRANSFER_2D)
            .u64(1)
            .u32(1)
            .rect(Rect::new(0, 0, 1, 1))
            .u64(0)
            .u32(u32::MAX);
        assert!(decode_request(&w.0).is_err());
    }
}
