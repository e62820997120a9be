//! virtio-gpu commands built from fuzz choices: a header and a body whose
//! fields are drawn by kind (ids from small pools so they collide, sizes
//! mostly small but sometimes anything, addresses mostly inside guest RAM),
//! so the fuzzer reaches the device's checks without having to find
//! 24-byte headers by chance. Raw bytes are the other way in
//! (`device::Action::RawCommand`).

use gpu::protocol::wire::*;

use crate::input::{Input, Output};

/// Guest RAM the device target gives its device.
pub const GUEST_RAM: u64 = 8 << 20;
/// Where command buffers are placed, up to [`BACKING_BASE`].
pub const DATA_BASE: u64 = 0x10000;
/// Where the addresses commands name mostly point (backing pages).
pub const BACKING_BASE: u64 = GUEST_RAM / 2;

/// One body field.
#[derive(Clone, Copy)]
enum F {
    /// A resource, scanout or capset id (small pool), u32.
    Id,
    /// A coordinate or dimension, u32.
    Dim,
    /// A pixel format, u32.
    Fmt,
    /// An address or offset, u64.
    Addr,
    /// A byte size, u64.
    Size,
    /// Anything, u32.
    Raw,
    /// Zero padding, u32 (sometimes not zero).
    Pad,
    /// `nr_entries` followed (at the end of the body) by that many
    /// `virtio_gpu_mem_entry`s.
    Entries,
    /// `CTX_CREATE`'s name length, context_init and 64-byte name.
    CtxName,
    /// `SUBMIT_3D`'s size, padding and command buffer.
    Submit,
}

use F::*;

/// Every command the device knows, with its body.
const COMMANDS: &[(u32, &[F])] = &[
    (VIRTIO_GPU_CMD_GET_DISPLAY_INFO, &[]),
    (VIRTIO_GPU_CMD_RESOURCE_CREATE_2D, &[Id, Fmt, Dim, Dim]),
    (VIRTIO_GPU_CMD_RESOURCE_UNREF, &[Id, Pad]),
    (VIRTIO_GPU_CMD_SET_SCANOUT, &[Dim, Dim, Dim, Dim, Id, Id]),
    (
        VIRTIO_GPU_CMD_RESOURCE_FLUSH,
        &[Dim, Dim, Dim, Dim, Id, Pad],
    ),
    (
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
        &[Dim, Dim, Dim, Dim, Addr, Id, Pad],
    ),
    (VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING, &[Id, Entries]),
    (VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING, &[Id, Pad]),
    (VIRTIO_GPU_CMD_GET_CAPSET_INFO, &[Id, Pad]),
    (VIRTIO_GPU_CMD_GET_CAPSET, &[Id, Id]),
    (VIRTIO_GPU_CMD_GET_EDID, &[Id, Pad]),
    (VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID, &[Id, Pad]),
    // resource_id, blob_mem, blob_flags, nr_entries, blob_id, size, entries.
    (
        VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
        &[Id, Id, Id, Entries, Size, Size],
    ),
    // rect, scanout_id, resource_id, width, height, format, padding,
    // strides[4], offsets[4].
    (
        VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
        &[
            Dim, Dim, Dim, Dim, Id, Id, Dim, Dim, Fmt, Pad, Dim, Dim, Dim, Dim, Dim, Dim, Dim, Dim,
        ],
    ),
    (VIRTIO_GPU_CMD_CTX_CREATE, &[CtxName]),
    (VIRTIO_GPU_CMD_CTX_DESTROY, &[]),
    (VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, &[Id, Pad]),
    (VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE, &[Id, Pad]),
    // resource_id, target, format, bind, width, height, depth, array_size,
    // last_level, nr_samples, flags, padding.
    (
        VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
        &[Id, Id, Fmt, Raw, Dim, Dim, Dim, Dim, Id, Id, Raw, Pad],
    ),
    // box (x, y, z, w, h, d), offset, resource_id, level, stride, layer_stride.
    (
        VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
        &[Dim, Dim, Dim, Dim, Dim, Dim, Addr, Id, Id, Dim, Dim],
    ),
    (
        VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
        &[Dim, Dim, Dim, Dim, Dim, Dim, Addr, Id, Id, Dim, Dim],
    ),
    (VIRTIO_GPU_CMD_SUBMIT_3D, &[Submit]),
    (VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB, &[Id, Pad, Addr]),
    (VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB, &[Id, Pad]),
    // pos (scanout_id, x, y, padding), resource_id, hot_x, hot_y, padding.
    (
        VIRTIO_GPU_CMD_UPDATE_CURSOR,
        &[Id, Dim, Dim, Pad, Id, Dim, Dim, Pad],
    ),
    (
        VIRTIO_GPU_CMD_MOVE_CURSOR,
        &[Id, Dim, Dim, Pad, Id, Dim, Dim, Pad],
    ),
];

/// Index of a command in the table (for seeds).
pub fn index_of(kind: u32) -> u8 {
    COMMANDS.iter().position(|(k, _)| *k == kind).unwrap_or(0) as u8
}

const FORMATS: [u32; 8] = [
    VIRTIO_GPU_FORMAT_B8G8R8A8_UNORM,
    VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
    VIRTIO_GPU_FORMAT_A8R8G8B8_UNORM,
    VIRTIO_GPU_FORMAT_X8R8G8B8_UNORM,
    VIRTIO_GPU_FORMAT_R8G8B8A8_UNORM,
    VIRTIO_GPU_FORMAT_X8B8G8R8_UNORM,
    VIRTIO_GPU_FORMAT_A8B8G8R8_UNORM,
    VIRTIO_GPU_FORMAT_R8G8B8X8_UNORM,
];

fn id(i: &mut Input) -> u32 {
    match i.u8() {
        b @ 0..=0xef => u32::from(b % 8),
        _ => i.u32(),
    }
}

fn dim(i: &mut Input) -> u32 {
    let b = i.u8();
    match b >> 6 {
        0 => u32::from(b & 63),
        1 => u32::from(b & 63) * 32,
        2 => u32::from(i.u16()),
        _ => i.u32(),
    }
}

fn fmt(i: &mut Input) -> u32 {
    match i.u8() {
        b @ 0..=0xdf => FORMATS[usize::from(b % 8)],
        // virgl formats and anything else.
        _ => i.u32(),
    }
}

/// Mostly page offsets inside the data area, sometimes anything.
pub fn addr(i: &mut Input) -> u64 {
    match i.u8() {
        b @ 0..=0x7f => BACKING_BASE + u64::from(b) * 4096,
        0x80..=0xbf => DATA_BASE + u64::from(i.u32()) % (GUEST_RAM - DATA_BASE),
        0xc0..=0xdf => u64::from(i.u16()),
        _ => i.u64(),
    }
}

fn size(i: &mut Input) -> u64 {
    let b = i.u8();
    match b >> 6 {
        0 => u64::from(b & 63) * 4096,
        1 => u64::from(i.u16()),
        2 => u64::from(i.u32()),
        _ => i.u64(),
    }
}

/// The 24-byte control header.
pub fn header(i: &mut Input, kind: u32) -> Vec<u8> {
    let flags_choice = i.u8();
    let mut flags = u32::from(flags_choice & 3);
    if flags_choice & 0x80 != 0 {
        flags = i.u32();
    }
    let fence = u64::from(i.u8());
    let ctx = match i.u8() {
        b @ 0..=0xef => u32::from(b % 4),
        _ => i.u32(),
    };
    let ring = match i.u8() {
        b @ 0..=0xef => b % 4,
        b => b,
    };
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&fence.to_le_bytes());
    h.extend_from_slice(&ctx.to_le_bytes());
    h.push(ring);
    h.extend_from_slice(&[0, 0, 0]);
    h
}

/// A whole command: the table entry chosen by the next byte (one past the
/// table: any type, raw), its header and body.
pub fn command(i: &mut Input) -> Vec<u8> {
    let which = usize::from(i.u8());
    let (kind, body) = match COMMANDS.get(which % (COMMANDS.len() + 1)) {
        Some((k, b)) => (*k, *b),
        None => (i.u32(), &[Raw, Raw, Raw, Raw][..]),
    };
    let mut out = header(i, kind);
    let mut entries = Vec::new();
    for f in body {
        match f {
            Id => out.extend_from_slice(&id(i).to_le_bytes()),
            Dim => out.extend_from_slice(&dim(i).to_le_bytes()),
            Fmt => out.extend_from_slice(&fmt(i).to_le_bytes()),
            Addr => out.extend_from_slice(&addr(i).to_le_bytes()),
            Size => out.extend_from_slice(&size(i).to_le_bytes()),
            Raw => out.extend_from_slice(&i.u32().to_le_bytes()),
            Pad => {
                let p = if i.u8() == 0xff { i.u32() } else { 0 };
                out.extend_from_slice(&p.to_le_bytes());
            }
            Entries => {
                let n = i.u8();
                // Sometimes the count says more than follows.
                let (claimed, real) = if n >= 0xf0 {
                    (i.u32(), u32::from(n & 3))
                } else {
                    (u32::from(n % 8), u32::from(n % 8))
                };
                out.extend_from_slice(&claimed.to_le_bytes());
                for _ in 0..real {
                    entries.extend_from_slice(&addr(i).to_le_bytes());
                    entries.extend_from_slice(&(size(i) as u32).to_le_bytes());
                    entries.extend_from_slice(&0u32.to_le_bytes());
                }
            }
            CtxName => {
                let nlen = match i.u8() {
                    b @ 0..=64 => u32::from(b),
                    _ => i.u32(),
                };
                out.extend_from_slice(&nlen.to_le_bytes());
                // context_init: the capset id in its low byte.
                let init = match i.u8() {
                    0..=0xbf => gpu::render::sim::SIM_CAPSET_ID,
                    0xc0..=0xef => 0,
                    _ => i.u32(),
                };
                out.extend_from_slice(&init.to_le_bytes());
                out.extend_from_slice(&[b'f'; 64]);
            }
            Submit => {
                let data = submit_data(i);
                let claimed = if i.u8() == 0xff {
                    i.u32()
                } else {
                    data.len() as u32
                };
                out.extend_from_slice(&claimed.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&data);
            }
        }
    }
    out.extend_from_slice(&entries);
    out
}

/// A sim command buffer (GPU time, hang, fill of a resource) or raw bytes.
fn submit_data(i: &mut Input) -> Vec<u8> {
    let choice = i.u8();
    if choice >= 0xc0 {
        let n = usize::from(i.u8());
        return i.bytes(n).to_vec();
    }
    let mut v = Vec::new();
    v.extend_from_slice(&gpu::render::sim::SIM_MAGIC.to_le_bytes());
    // GPU time: mostly short, sometimes long (the fence then waits).
    let gpu_us = if choice & 0x20 != 0 {
        i.u32()
    } else {
        u32::from(i.u8())
    };
    v.extend_from_slice(&gpu_us.to_le_bytes());
    let flags = u32::from(choice & 3);
    v.extend_from_slice(&flags.to_le_bytes());
    if flags & gpu::render::sim::SIM_FLAG_FILL != 0 {
        for w in [id(i), dim(i), dim(i), dim(i), dim(i), i.u32()] {
            v.extend_from_slice(&w.to_le_bytes());
        }
    }
    v
}

/// Seed helpers: a command from the table with small, valid-looking
/// choices. `fields` are the bytes the field readers take, in order.
pub fn seed_command(out: &mut Output, kind: u32, fence: bool, ctx: u8, fields: &[u8]) {
    out.u8(index_of(kind));
    out.u8(if fence { 1 } else { 0 }).u8(1).u8(ctx).u8(0);
    out.bytes(fields);
}
