//! The seed inputs in `corpus/` (written by `make-corpus`): guest sessions
//! a real driver would run, so the fuzzer starts deep in the device and the
//! session instead of searching for headers and handshakes.

use gpu::protocol::wire::*;

use crate::commands::seed_command;
use crate::input::Output;
use crate::vhost::{
    self, seed_message, seed_ram, FD_EVENTFD, FD_GUEST_RAM, FD_SMALL_MEMFD, FD_SOCKET,
};

/// Device-target ops (`device::run`).
const OP_CMD: u8 = 0;
const OP_RAW: u8 = 3;
const OP_KICK: u8 = 4;
const OP_RESET: u8 = 5;
const OP_CURSOR: u8 = 6;
const OP_RAW_DESC: u8 = 7;

struct DeviceSeed(Output);

impl DeviceSeed {
    fn new(renderer: u8, drop_features: u8) -> Self {
        let mut o = Output::default();
        o.u8(renderer).u8(drop_features);
        DeviceSeed(o)
    }
    /// A command on the control queue in chain layout `layout` (0: one
    /// readable and one writable descriptor) followed by the layout's
    /// own choice bytes.
    fn cmd(&mut self, kind: u32, fence: bool, ctx: u8, fields: &[u8], layout: &[u8]) -> &mut Self {
        self.0.u8(OP_CMD);
        seed_command(&mut self.0, kind, fence, ctx, fields);
        if layout.is_empty() {
            self.0.u8(0);
        } else {
            self.0.bytes(layout);
        }
        self
    }
    fn cursor(&mut self, kind: u32, fields: &[u8]) -> &mut Self {
        self.0.u8(OP_CURSOR);
        seed_command(&mut self.0, kind, false, 0, fields);
        self
    }
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.u8(op);
        self
    }
}

// Field bytes (see `commands.rs`): ids < 0xf0 are id % 8; dims < 64 are
// themselves, 64..128 are 32 times (b - 64); formats < 0xe0 index the 2D
// formats; addresses < 0x80 are backing pages; sizes < 64 are pages.

fn desktop(renderer: u8) -> Vec<u8> {
    let mut s = DeviceSeed::new(renderer, 0);
    s.cmd(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, false, 0, &[], &[])
        .cmd(VIRTIO_GPU_CMD_GET_EDID, false, 0, &[0, 0], &[])
        // 64x64 BGRA, 16 KiB of backing in one entry.
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_CREATE_2D,
            false,
            0,
            &[1, 0, 64 + 2, 64 + 2],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            false,
            0,
            &[1, 1, 0, 4],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_SET_SCANOUT,
            false,
            0,
            &[0, 0, 64 + 2, 64 + 2, 0, 1],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_2D,
            false,
            0,
            &[0, 0, 64 + 2, 64 + 2, 0, 1, 0],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            true,
            0,
            &[0, 0, 64 + 2, 64 + 2, 1, 0],
            &[],
        )
        .op(OP_KICK)
        .cursor(VIRTIO_GPU_CMD_UPDATE_CURSOR, &[0, 10, 10, 0, 1, 0, 0, 0])
        .cursor(VIRTIO_GPU_CMD_MOVE_CURSOR, &[0, 20, 20, 0, 1, 0, 0, 0])
        .op(OP_KICK)
        .cmd(
            VIRTIO_GPU_CMD_SET_SCANOUT,
            false,
            0,
            &[0, 0, 0, 0, 0, 0],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_DETACH_BACKING,
            false,
            0,
            &[1, 0],
            &[],
        )
        .cmd(VIRTIO_GPU_CMD_RESOURCE_UNREF, false, 0, &[1, 0], &[]);
    s.0 .0
}

fn three_d() -> Vec<u8> {
    let mut s = DeviceSeed::new(0, 0);
    // CTX_CREATE: name length 4, context_init the sim capset.
    s.cmd(VIRTIO_GPU_CMD_CTX_CREATE, false, 1, &[4, 0], &[])
        .cmd(VIRTIO_GPU_CMD_GET_CAPSET_INFO, false, 0, &[0, 0], &[])
        .cmd(
            VIRTIO_GPU_CMD_GET_CAPSET,
            false,
            0,
            &[0xf0, 63, 0, 0, 0, 1],
            &[],
        )
        // CREATE_3D: id 2, target 2 (2D texture), format, bind (raw u32),
        // 32x32x1, 1 layer, last level 0, 0 samples, flags (raw), pad.
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_CREATE_3D,
            false,
            1,
            &[2, 2, 0, 2, 0, 0, 0, 32, 32, 1, 1, 0, 0, 0, 0, 0, 0, 0],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_ATTACH_BACKING,
            false,
            0,
            &[2, 1, 8, 1],
            &[],
        )
        .cmd(VIRTIO_GPU_CMD_CTX_ATTACH_RESOURCE, false, 1, &[2, 0], &[])
        // SUBMIT_3D: a sim fill of resource 2, 5 µs of GPU time.
        .cmd(
            VIRTIO_GPU_CMD_SUBMIT_3D,
            true,
            1,
            &[2, 5, 2, 0, 0, 16, 16, 0xff, 0, 0, 0xff, 0],
            &[],
        )
        // TRANSFER_TO/FROM_HOST_3D: box 0,0,0 16x16x1, offset, res 2,
        // level 0, stride 128, layer stride 0.
        .cmd(
            VIRTIO_GPU_CMD_TRANSFER_TO_HOST_3D,
            true,
            1,
            &[0, 0, 0, 16, 16, 1, 8, 2, 0, 64 + 4, 0],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_TRANSFER_FROM_HOST_3D,
            true,
            1,
            &[0, 0, 0, 16, 16, 1, 8, 2, 0, 64 + 4, 0],
            &[],
        )
        .op(OP_KICK)
        .cmd(VIRTIO_GPU_CMD_CTX_DETACH_RESOURCE, false, 1, &[2, 0], &[])
        .cmd(VIRTIO_GPU_CMD_CTX_DESTROY, false, 1, &[], &[]);
    s.0 .0
}

fn blobs() -> Vec<u8> {
    let mut s = DeviceSeed::new(0, 0);
    // CREATE_BLOB: id 3, blob_mem 2 (host3d), flags 1 (mappable), no
    // entries, blob_id 0, size 16 pages.
    s.cmd(VIRTIO_GPU_CMD_CTX_CREATE, false, 1, &[4, 0], &[])
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
            false,
            1,
            &[3, 2, 1, 0, 0, 16],
            &[],
        )
        .cmd(VIRTIO_GPU_CMD_RESOURCE_MAP_BLOB, true, 1, &[3, 0, 0], &[])
        // SET_SCANOUT_BLOB: rect 64x32, scanout 0, res 3, 64x32 BGRA,
        // strides 256, offsets 0.
        .cmd(
            VIRTIO_GPU_CMD_SET_SCANOUT_BLOB,
            false,
            0,
            &[
                0,
                0,
                64 + 2,
                32,
                0,
                3,
                64 + 2,
                32,
                0,
                0,
                64 + 8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ],
            &[],
        )
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_FLUSH,
            true,
            0,
            &[0, 0, 64 + 2, 32, 3, 0],
            &[],
        )
        .cmd(VIRTIO_GPU_CMD_RESOURCE_ASSIGN_UUID, false, 0, &[3, 0], &[])
        .op(OP_KICK)
        .cmd(VIRTIO_GPU_CMD_RESOURCE_UNMAP_BLOB, true, 1, &[3, 0], &[])
        // A guest blob: blob_mem 1, two entries.
        .cmd(
            VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
            false,
            0,
            &[4, 1, 0, 2, 0, 4, 4, 4, 0, 8],
            &[],
        )
        .cmd(VIRTIO_GPU_CMD_RESOURCE_UNREF, false, 0, &[3, 0], &[])
        .op(OP_RESET)
        .cmd(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, false, 0, &[], &[]);
    s.0 .0
}

/// One command in every chain layout (and indirect, and looping), raw
/// bytes, raw descriptors.
fn layouts(renderer: u8, drop_features: u8) -> Vec<u8> {
    let mut s = DeviceSeed::new(renderer, drop_features);
    let info = |s: &mut DeviceSeed, layout: &[u8]| {
        s.cmd(VIRTIO_GPU_CMD_GET_DISPLAY_INFO, false, 0, &[], layout);
    };
    info(&mut s, &[0]);
    info(&mut s, &[1, 4, 8, 12, 24]);
    info(&mut s, &[2, 10]);
    info(&mut s, &[3]);
    info(&mut s, &[4, 0]);
    info(&mut s, &[5, 8]);
    info(&mut s, &[6]);
    info(&mut s, &[7]);
    info(&mut s, &[8, 0]);
    info(&mut s, &[9, 4, 8, 12, 24, 1]);
    info(&mut s, &[8, 2]);
    info(&mut s, &[8, 0x14]);
    info(&mut s, &[0x10]);
    s.op(OP_KICK);
    // Raw bytes: a header with an unknown type.
    s.0.u8(OP_RAW).u16(24).u32(0x1234).bytes(&[0; 20]).u8(0);
    // Raw descriptors: two, chained, the second writable.
    s.0.u8(OP_RAW_DESC).u8(1);
    s.0.u8(0).u8(3).u8(1).u8(1);
    s.0.u8(1).u8(128).u8(2).u8(0);
    s.op(OP_KICK);
    s.0 .0
}

// vhost-user.
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_NUM: u32 = 8;
const SET_VRING_ADDR: u32 = 9;
const SET_VRING_BASE: u32 = 10;
const GET_VRING_BASE: u32 = 11;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_CALL: u32 = 13;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const SET_VRING_ENABLE: u32 = 18;
const SET_BACKEND_REQ_FD: u32 = 21;
const GET_CONFIG: u32 = 24;
const SET_CONFIG: u32 = 25;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
const GPU_SET_SOCKET: u32 = 33;
const RESET_DEVICE: u32 = 34;
const GET_MAX_MEM_SLOTS: u32 = 36;
const ADD_MEM_REG: u32 = 37;
const REM_MEM_REG: u32 = 38;

/// Where the frontend says guest RAM is mapped in its address space.
const USER_ADDR: u64 = 0x7f00_0000_0000;

fn le(words: &[u64], sizes: &[usize]) -> Vec<u8> {
    let mut v = Vec::new();
    for (w, s) in words.iter().zip(sizes) {
        v.extend_from_slice(&w.to_le_bytes()[..*s]);
    }
    v
}

fn handshake(o: &mut Output, reply_ack: bool) {
    let protocol = gpu::vhost::offered_protocol_features().bits();
    let protocol = if reply_ack {
        protocol
    } else {
        protocol & !(1 << 3)
    };
    let features = (1u64 << 32) | (1 << 30) | (1 << 29) | (1 << 28) | 0x1f;
    seed_message(o, GET_FEATURES, false, &[], &[]);
    seed_message(o, GET_PROTOCOL_FEATURES, false, &[], &[]);
    seed_message(
        o,
        SET_PROTOCOL_FEATURES,
        false,
        &protocol.to_le_bytes(),
        &[],
    );
    seed_message(o, GET_QUEUE_NUM, false, &[], &[]);
    seed_message(o, SET_OWNER, reply_ack, &[], &[]);
    seed_message(o, SET_FEATURES, reply_ack, &features.to_le_bytes(), &[]);
}

fn mem_table(o: &mut Output) {
    let region = le(&[1, 0, 0, vhost::RAM, USER_ADDR, 0], &[4, 4, 8, 8, 8, 8]);
    seed_message(o, SET_MEM_TABLE, true, &region, &[FD_GUEST_RAM]);
}

/// The control ring at guest address 0 with one GET_DISPLAY_INFO chain.
fn control_ring(o: &mut Output) {
    let desc = le(
        &[0x10000, 24, 1, 1, 0x11000, 1024, 2, 0],
        &[8, 4, 2, 2, 8, 4, 2, 2],
    );
    seed_ram(o, 0, &desc);
    seed_ram(o, 0x1000, &le(&[0, 1, 0], &[2, 2, 2]));
    let mut hdr = vec![0u8; 24];
    hdr[..4].copy_from_slice(&VIRTIO_GPU_CMD_GET_DISPLAY_INFO.to_le_bytes());
    seed_ram(o, 0x10000, &hdr);
}

fn start_ring(o: &mut Output, index: u64) {
    let i = index;
    seed_message(o, SET_VRING_NUM, true, &le(&[i, 64], &[4, 4]), &[]);
    seed_message(o, SET_VRING_BASE, true, &le(&[i, 0], &[4, 4]), &[]);
    let base = USER_ADDR + i * 0x4000;
    let addr = le(
        &[i, 0, base, base + 0x2000, base + 0x1000, 0],
        &[4, 4, 8, 8, 8, 8],
    );
    seed_message(o, SET_VRING_ADDR, true, &addr, &[]);
    seed_message(o, SET_VRING_KICK, false, &i.to_le_bytes(), &[FD_EVENTFD]);
    seed_message(o, SET_VRING_CALL, false, &i.to_le_bytes(), &[FD_EVENTFD]);
    seed_message(o, SET_VRING_ENABLE, true, &le(&[i, 1], &[4, 4]), &[]);
}

fn vhost_session() -> Vec<u8> {
    let mut o = Output::default();
    control_ring(&mut o);
    handshake(&mut o, true);
    mem_table(&mut o);
    start_ring(&mut o, 0);
    start_ring(&mut o, 1);
    seed_message(
        &mut o,
        GET_CONFIG,
        false,
        &le(&[0, 16, 0, 0, 0, 0, 0], &[4, 4, 4, 4, 4, 4, 4]),
        &[],
    );
    seed_message(&mut o, GET_VRING_BASE, false, &le(&[0, 0], &[4, 4]), &[]);
    seed_message(&mut o, GET_VRING_BASE, false, &le(&[1, 0], &[4, 4]), &[]);
    o.0
}

fn vhost_channels() -> Vec<u8> {
    let mut o = Output::default();
    handshake(&mut o, false);
    seed_message(&mut o, SET_BACKEND_REQ_FD, false, &[], &[FD_SOCKET]);
    seed_message(&mut o, GPU_SET_SOCKET, false, &[], &[FD_SOCKET]);
    // SET_CONFIG events_clear (offset 4, size 4).
    seed_message(
        &mut o,
        SET_CONFIG,
        false,
        &le(&[4, 4, 0, 1], &[4, 4, 4, 4]),
        &[],
    );
    // GET_INFLIGHT_FD for 2 queues of 64, then SET_INFLIGHT_FD with a memfd.
    let inflight = le(&[0, 0, 2, 64, 0], &[8, 8, 2, 2, 4]);
    seed_message(&mut o, GET_INFLIGHT_FD, false, &inflight, &[]);
    let inflight = le(&[4096, 0, 2, 64, 0], &[8, 8, 2, 2, 4]);
    seed_message(&mut o, SET_INFLIGHT_FD, false, &inflight, &[FD_SMALL_MEMFD]);
    seed_message(&mut o, RESET_DEVICE, false, &[], &[]);
    o.0
}

fn vhost_mem_slots() -> Vec<u8> {
    let mut o = Output::default();
    handshake(&mut o, true);
    seed_message(&mut o, GET_MAX_MEM_SLOTS, false, &[], &[]);
    let region = le(&[0, 0, vhost::RAM, USER_ADDR, 0], &[8, 8, 8, 8, 8]);
    seed_message(&mut o, ADD_MEM_REG, true, &region, &[FD_GUEST_RAM]);
    control_ring(&mut o);
    start_ring(&mut o, 0);
    seed_message(&mut o, REM_MEM_REG, true, &region, &[]);
    o.0
}

/// Every seed: (target, name, bytes).
pub fn all() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("device", "desktop-sim", desktop(0)),
        ("device", "desktop-2d", desktop(1)),
        ("device", "three-d", three_d()),
        ("device", "blobs", blobs()),
        ("device", "layouts-sim", layouts(0, 0)),
        ("device", "layouts-2d", layouts(1, 0)),
        ("device", "layouts-no-indirect-no-event-idx", layouts(0, 3)),
        ("vhost", "session", vhost_session()),
        ("vhost", "channels", vhost_channels()),
        ("vhost", "mem-slots", vhost_mem_slots()),
    ]
}
