//! Tests of the whole path: bytes → [`decode`] → typed value, and typed
//! value → bytes, as the device and the guest (loadgen) use it.
//!
//! `rules.rs` has one test per decoder rule, each corrupting one field of
//! an otherwise valid request and asserting the exact error and response
//! code; `round_trip.rs` encodes and decodes every command and response;
//! `hostile.rs` throws mutated and truncated bytes at the decoders.

mod hostile;
mod round_trip;
mod rules;

use super::*;

/// Every feature negotiated, 4 scanouts, 2 capsets, default limits.
pub(super) fn full_ctx() -> DecodeContext {
    DecodeContext {
        features: (1 << wire::VIRTIO_GPU_F_VIRGL)
            | (1 << wire::VIRTIO_GPU_F_EDID)
            | (1 << wire::VIRTIO_GPU_F_RESOURCE_UUID)
            | (1 << wire::VIRTIO_GPU_F_RESOURCE_BLOB)
            | (1 << wire::VIRTIO_GPU_F_CONTEXT_INIT),
        num_scanouts: 4,
        num_capsets: 2,
        limits: Limits::default(),
    }
}

/// One valid request of every command type, as a guest would send it.
pub(super) fn sample_requests() -> Vec<Request> {
    use GpuCommand as C;
    let r = |id| ResourceRef {
        resource_id: ResourceId(id),
    };
    let cursor = CursorUpdate {
        pos: CursorPos {
            scanout_id: ScanoutId(1),
            x: -3,
            y: 700,
        },
        resource_id: ResourceId(9),
        hot_x: 4,
        hot_y: 5,
    };
    let transfer = Transfer3d {
        box3d: Box3d {
            x: 1,
            y: 2,
            z: 0,
            w: 64,
            h: 32,
            d: 1,
        },
        offset: 4096,
        resource_id: ResourceId(12),
        level: 0,
        stride: 256,
        layer_stride: 0,
    };
    vec![
        Request::new(C::GetDisplayInfo),
        Request::new(C::ResourceCreate2d(ResourceCreate2d {
            resource_id: ResourceId(1),
            format: Format::B8G8R8X8Unorm,
            width: 1280,
            height: 800,
        })),
        Request::new(C::ResourceUnref(r(1))),
        Request::new(C::SetScanout(SetScanout {
            rect: Rect::new(0, 0, 1280, 800),
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(1),
        })),
        Request::new(C::ResourceFlush(ResourceFlush {
            rect: Rect::new(10, 20, 30, 40),
            resource_id: ResourceId(1),
        }))
        .with_fence(77),
        Request::new(C::TransferToHost2d(TransferToHost2d {
            rect: Rect::new(0, 0, 1280, 800),
            offset: 0x1000,
            resource_id: ResourceId(1),
        })),
        Request::new(C::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: ResourceId(1),
            entries: vec![
                MemEntry {
                    addr: 0x10_0000,
                    length: 0x1000,
                },
                MemEntry {
                    addr: 0x30_0000,
                    length: 0x3e_f000,
                },
            ],
        })),
        Request::new(C::ResourceDetachBacking(r(1))),
        Request::new(C::GetCapsetInfo(GetCapsetInfo { capset_index: 1 })),
        Request::new(C::GetCapset(GetCapset {
            capset_id: 4,
            capset_version: 0,
        })),
        Request::new(C::GetEdid(GetEdid {
            scanout_id: ScanoutId(3),
        })),
        Request::new(C::ResourceAssignUuid(r(5))),
        Request::new(C::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(6),
            blob_mem: BlobMem::Guest,
            blob_flags: BlobFlags::from_wire(wire::VIRTIO_GPU_BLOB_FLAG_USE_SHAREABLE).unwrap(),
            blob_id: 0,
            size: 0x2000,
            entries: vec![MemEntry {
                addr: 0x50_0000,
                length: 0x2000,
            }],
        })),
        Request::new(C::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(7),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(wire::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap(),
            blob_id: 0xdead_beef,
            size: 1 << 20,
            entries: vec![],
        }))
        .with_ctx(2),
        Request::new(C::SetScanoutBlob(SetScanoutBlob {
            rect: Rect::new(0, 0, 1920, 1080),
            scanout_id: ScanoutId(2),
            resource_id: ResourceId(6),
            layout: Some(BlobScanoutLayout {
                width: 1920,
                height: 1080,
                format: Format::X8R8G8B8Unorm,
                strides: [7680, 0, 0, 0],
                offsets: [0, 0, 0, 0],
            }),
        })),
        Request::new(C::SetScanoutBlob(SetScanoutBlob {
            rect: Rect::default(),
            scanout_id: ScanoutId(2),
            resource_id: ResourceId(0),
            layout: None,
        })),
        Request::new(C::CtxCreate(CtxCreate {
            debug_name: b"gnome-shell".to_vec(),
            capset_id: 4,
        }))
        .with_ctx(2),
        Request::new(C::CtxDestroy).with_ctx(2),
        Request::new(C::CtxAttachResource(r(7))).with_ctx(2),
        Request::new(C::CtxDetachResource(r(7))).with_ctx(2),
        Request::new(C::ResourceCreate3d(ResourceCreate3d {
            resource_id: ResourceId(12),
            target: 2,
            format: 1,
            bind: 0x0a,
            width: 256,
            height: 256,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        })),
        Request::new(C::TransferToHost3d(transfer)).with_ctx(2),
        Request::new(C::TransferFromHost3d(transfer))
            .with_ctx(2)
            .with_fence(9),
        Request::new(C::Submit3d(Submit3d {
            data: (0..=255u8).cycle().take(1000).collect(),
        }))
        .with_ctx(2)
        .with_fence(10)
        .with_ring(3),
        Request::new(C::ResourceMapBlob(ResourceMapBlob {
            resource_id: ResourceId(7),
            offset: 0x10_0000,
        })),
        Request::new(C::ResourceUnmapBlob(r(7))),
        Request::new(C::UpdateCursor(cursor)),
        Request::new(C::MoveCursor(cursor)),
    ]
}

/// Decodes with the decoder for the queue the command belongs on.
pub(super) fn decode_any(bytes: &[u8], ctx: &DecodeContext) -> Result<Request, ProtocolError> {
    let kind = bytes
        .get(0..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match kind {
        Some(k) if wire::is_cursor_command(k) => decode_cursor(bytes, ctx),
        _ => decode(bytes, ctx),
    }
}
