//! Structured fuzzing of the whole device through the in-process guest
//! driver: random, then one-field-corrupted, command streams, with resets at
//! random points. What must hold: no panic (the device keeps answering),
//! every chain comes back, every response decodes, and after a final reset
//! nothing the guest created is left.
//!
//! Bounded here; `GPU_FUZZ_ITERATIONS=1000000 cargo test --release -p
//! e2e-tests --test fuzz_device` for a long run (`GPU_FUZZ_SEED` picks
//! the stream).

use std::time::Duration;

use gpu::protocol::wire::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE;
use gpu::protocol::*;
use gpu::render::sim::sim_submit_fill;
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::Queue;
use loadgen::rng::Rng;
use vm_memory::GuestAddress;

const T: Duration = Duration::from_secs(20);

fn rect(r: &mut Rng) -> Rect {
    Rect::new(r.u32(300), r.u32(300), r.u32(300), r.u32(300))
}

/// A command the guest might send (ids from small pools so they collide).
fn command(r: &mut Rng, scratch: GuestAddress) -> Request {
    let res = ResourceId(1 + r.u32(24));
    let ctx = 1 + r.u32(6);
    let entry = |r: &mut Rng| MemEntry {
        // Mostly inside a scratch buffer, sometimes anywhere.
        addr: if r.chance(80) {
            scratch.0 + r.below(1 << 20)
        } else {
            r.next_u64()
        },
        length: 1 + r.u32(1 << 16),
    };
    let cmd = match r.below(22) {
        0 => GpuCommand::GetDisplayInfo,
        1 | 2 => GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: res,
            format: Format::ALL[r.below(8) as usize],
            width: 1 + r.u32(512),
            height: 1 + r.u32(512),
        }),
        3 => GpuCommand::ResourceUnref(ResourceRef { resource_id: res }),
        4 => GpuCommand::SetScanout(SetScanout {
            rect: rect(r),
            scanout_id: ScanoutId(r.u32(2)),
            resource_id: if r.chance(20) { ResourceId(0) } else { res },
        }),
        5 => GpuCommand::ResourceFlush(ResourceFlush {
            rect: rect(r),
            resource_id: res,
        }),
        6 => GpuCommand::TransferToHost2d(TransferToHost2d {
            rect: rect(r),
            offset: r.below(1 << 20),
            resource_id: res,
        }),
        7 => GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: res,
            entries: (0..1 + r.below(4)).map(|_| entry(r)).collect(),
        }),
        8 => GpuCommand::ResourceDetachBacking(ResourceRef { resource_id: res }),
        9 => GpuCommand::GetCapsetInfo(GetCapsetInfo {
            capset_index: r.u32(3),
        }),
        10 => GpuCommand::GetEdid(GetEdid {
            scanout_id: ScanoutId(r.u32(2)),
        }),
        11 => GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"fuzz".to_vec(),
            capset_id: if r.chance(80) { 63 } else { r.u32(70) as u8 },
        }),
        12 => GpuCommand::CtxDestroy,
        13 | 14 => GpuCommand::Submit3d(Submit3d {
            data: if r.chance(70) {
                sim_submit_fill(r.u32(300), false, res.0, rect(r), r.next_u64() as u32)
            } else {
                (0..r.below(64)).map(|_| r.next_u64() as u8).collect()
            },
        }),
        15 => GpuCommand::CtxAttachResource(ResourceRef { resource_id: res }),
        16 => GpuCommand::CtxDetachResource(ResourceRef { resource_id: res }),
        17 => GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: res,
            blob_mem: if r.chance(70) {
                BlobMem::Host3d
            } else {
                BlobMem::Guest
            },
            blob_flags: BlobFlags::from_wire(if r.chance(70) {
                VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE
            } else {
                0
            })
            .unwrap_or_default(),
            blob_id: r.next_u64(),
            size: 1 + r.below(1 << 21),
            entries: vec![],
        }),
        18 => GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: res,
            offset: r.below(1 << 22) & !4095,
        }),
        19 => GpuCommand::ResourceUnmapBlob(ResourceRef { resource_id: res }),
        20 => GpuCommand::ResourceAssignUuid(ResourceRef { resource_id: res }),
        _ => GpuCommand::TransferToHost3d(Transfer3d {
            box3d: Box3d {
                x: r.u32(64),
                y: r.u32(64),
                z: 0,
                w: r.u32(64),
                h: r.u32(64),
                d: 1,
            },
            offset: r.below(1 << 20),
            resource_id: res,
            level: 0,
            stride: r.u32(1024),
            layer_stride: 0,
        }),
    };
    let mut req = Request::new(cmd).with_ctx(if r.chance(70) { ctx } else { 0 });
    if r.chance(40) {
        req = req.with_fence(r.next_u64() >> 16);
    }
    if r.chance(30) {
        req = req.with_ring(r.u32(70) as u8);
    }
    req
}

/// One field (or the framing) broken.
fn corrupt(r: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    match r.below(5) {
        0 if !bytes.is_empty() => {
            let i = r.below(bytes.len() as u64) as usize;
            bytes[i] ^= 1 << r.below(8);
        }
        1 => bytes.truncate(r.below(bytes.len() as u64 + 1) as usize),
        2 => bytes.extend((0..r.below(64)).map(|_| r.next_u64() as u8)),
        3 if bytes.len() >= 4 => {
            let t =
                [0x100u32, 0x10c, 0x200, 0x300, 0x1200, r.next_u64() as u32][r.below(6) as usize];
            bytes[..4].copy_from_slice(&t.to_le_bytes());
        }
        _ if bytes.len() >= 24 => {
            // A random u32 somewhere in the body.
            let i = 24 + 4 * r.below(((bytes.len() - 24) / 4).max(1) as u64) as usize;
            if i + 4 <= bytes.len() {
                bytes[i..i + 4].copy_from_slice(&(r.next_u64() as u32).to_le_bytes());
            }
        }
        _ => {}
    }
    bytes
}

fn iterations() -> u64 {
    std::env::var("GPU_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn random_and_corrupted_command_streams_never_lose_a_chain_and_free_everything() {
    let seed = std::env::var("GPU_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
    let mut r = Rng(seed | 1);
    let (b, mut d) = DirectBackend::start(DirectOptions {
        guest_ram: 64 << 20,
        ..DirectOptions::default()
    })
    .unwrap();
    let scratch = d.ram().alloc(1 << 21, 4096).unwrap();
    let total = iterations();
    let (mut sent, mut resets) = (0u64, 0u64);
    while sent < total {
        let batch = 1 + r.below(64);
        for i in 0..batch {
            let bytes = command(&mut r, scratch).to_bytes();
            let bytes = if r.chance(25) {
                corrupt(&mut r, bytes)
            } else {
                bytes
            };
            let q = if r.chance(5) {
                Queue::Cursor
            } else {
                Queue::Control
            };
            d.submit_bytes(q, &bytes, sent + i).unwrap();
        }
        d.kick(Queue::Control).unwrap();
        d.kick(Queue::Cursor).unwrap();
        // Every chain comes back and every control response decodes, unless
        // a fence is legitimately waiting: a corrupted sim header can ask for
        // an hour of GPU time or a hang (then the guest would wait too; a
        // reset frees it).
        match d.wait_n(batch as usize, Duration::from_secs(5)) {
            Ok(done) => {
                for c in done {
                    assert!(
                        c.response.is_ok(),
                        "seed {seed:#x}: undecodable response {:?}",
                        c.response
                    );
                }
                assert_eq!(d.in_flight(), 0, "seed {seed:#x}: chains lost");
            }
            Err(loadgen::driver::GpuDriverError::Timeout) => {
                let s = b.device.stats().unwrap();
                assert!(
                    s.fences_pending > 0,
                    "seed {seed:#x}: chains lost with no fence pending: {s:?}"
                );
                d = b.reset(d).unwrap();
                resets += 1;
            }
            Err(e) => panic!("seed {seed:#x}: {e}"),
        }
        sent += batch;
        if r.chance(3) {
            d = b.reset(d).unwrap();
            resets += 1;
        }
    }
    // Still serving.
    let c = d
        .call(Queue::Control, &Request::new(GpuCommand::GetDisplayInfo), T)
        .unwrap();
    assert!(matches!(c.response, Ok((_, Response::OkDisplayInfo(_)))));
    let before = b.device.stats().unwrap();
    assert!(before.chains >= sent / 2, "{before:?}");
    // A reset frees everything the guest created.
    let _d = b.reset(d).unwrap();
    let after = b.device.stats().unwrap();
    assert_eq!(
        (after.contexts, after.resources, after.resource_bytes),
        (0, 0, 0),
        "seed {seed:#x}, {resets} resets: {after:?}"
    );
    assert!(b.blob.mappings().is_empty());
    // ...and every byte charged to the guest's memory budget, once the
    // shards have run the reset (they give back what they held after it).
    let deadline = std::time::Instant::now() + T;
    let mut charged = after.guest_memory_bytes;
    while charged != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        charged = b.device.stats().unwrap().guest_memory_bytes;
    }
    assert_eq!(charged, 0, "seed {seed:#x}: guest memory still charged");
}
