//! One test per decoder rule. Each starts from a valid request, breaks one
//! field, and asserts the exact error variant and the response code the
//! guest would get.

use super::*;
use crate::protocol::wire::*;

const HDR: usize = CTRL_HDR_SIZE;

fn expect(bytes: &[u8], ctx: &DecodeContext, err: ProtocolError, code: u32) {
    let got = decode_any(bytes, ctx).expect_err("decode should fail");
    assert_eq!(got, err);
    assert_eq!(got.response_code(), code, "{got}");
}

fn bytes_of(cmd: GpuCommand) -> Vec<u8> {
    Request::new(cmd).to_bytes()
}

fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn set_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn create_2d(width: u32, height: u32) -> GpuCommand {
    GpuCommand::ResourceCreate2d(ResourceCreate2d {
        resource_id: ResourceId(1),
        format: Format::B8G8R8A8Unorm,
        width,
        height,
    })
}

fn set_scanout(scanout: u32, resource: u32, rect: Rect) -> GpuCommand {
    GpuCommand::SetScanout(SetScanout {
        rect,
        scanout_id: ScanoutId(scanout),
        resource_id: ResourceId(resource),
    })
}

fn scanout_blob(rect: Rect, width: u32, height: u32, stride: u32) -> GpuCommand {
    GpuCommand::SetScanoutBlob(SetScanoutBlob {
        rect,
        scanout_id: ScanoutId(0),
        resource_id: ResourceId(6),
        layout: Some(BlobScanoutLayout {
            width,
            height,
            format: Format::B8G8R8X8Unorm,
            strides: [stride, 0, 0, 0],
            offsets: [0; 4],
        }),
    })
}

fn attach(entries: Vec<MemEntry>) -> GpuCommand {
    GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
        resource_id: ResourceId(1),
        entries,
    })
}

fn blob(blob_mem: BlobMem, size: u64, entries: Vec<MemEntry>) -> GpuCommand {
    GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
        resource_id: ResourceId(6),
        blob_mem,
        blob_flags: BlobFlags::default(),
        blob_id: 1,
        size,
        entries,
    })
}

fn page(addr: u64) -> MemEntry {
    MemEntry { addr, length: 4096 }
}

// ---- Header and framing ----

#[test]
fn header_shorter_than_24_bytes_is_unspec() {
    let bytes = bytes_of(GpuCommand::GetDisplayInfo);
    expect(
        &bytes[..23],
        &full_ctx(),
        ProtocolError::ShortCommand {
            needed: 24,
            got: 23,
        },
        VIRTIO_GPU_RESP_ERR_UNSPEC,
    );
    expect(
        &[],
        &full_ctx(),
        ProtocolError::ShortCommand { needed: 24, got: 0 },
        VIRTIO_GPU_RESP_ERR_UNSPEC,
    );
}

#[test]
fn body_shorter_than_its_struct_is_unspec_for_every_command() {
    let ctx = full_ctx();
    for req in sample_requests() {
        let kind = req.cmd.kind();
        let body = request_body_size(kind).unwrap_or(0);
        if body == 0 {
            continue;
        }
        let bytes = req.to_bytes();
        let cut = HDR + body - 1;
        expect(
            &bytes[..cut],
            &ctx,
            ProtocolError::ShortCommand {
                needed: HDR + body,
                got: cut,
            },
            VIRTIO_GPU_RESP_ERR_UNSPEC,
        );
    }
}

#[test]
fn unknown_command_type_is_unspec() {
    for kind in [
        0,
        0x010e,
        0x020a,
        0x0302,
        VIRTIO_GPU_RESP_OK_NODATA,
        u32::MAX,
    ] {
        let mut bytes = Vec::new();
        CtrlHeader::new(kind).write(&mut bytes);
        expect(
            &bytes,
            &full_ctx(),
            ProtocolError::UnknownCommandType(kind),
            VIRTIO_GPU_RESP_ERR_UNSPEC,
        );
        let got = decode_cursor(&bytes, &full_ctx()).unwrap_err();
        assert_eq!(got, ProtocolError::UnknownCommandType(kind));
    }
}

#[test]
fn cursor_command_on_the_control_queue_is_unspec() {
    let cmd = GpuCommand::MoveCursor(CursorUpdate {
        pos: CursorPos::default(),
        resource_id: ResourceId(0),
        hot_x: 0,
        hot_y: 0,
    });
    let err = decode(&bytes_of(cmd), &full_ctx()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::CursorCommandOnControlQueue(VIRTIO_GPU_CMD_MOVE_CURSOR)
    );
    assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
}

#[test]
fn control_command_on_the_cursor_queue_is_unspec() {
    let err = decode_cursor(&bytes_of(GpuCommand::GetDisplayInfo), &full_ctx()).unwrap_err();
    assert_eq!(
        err,
        ProtocolError::ControlCommandOnCursorQueue(VIRTIO_GPU_CMD_GET_DISPLAY_INFO)
    );
    assert_eq!(err.response_code(), VIRTIO_GPU_RESP_ERR_UNSPEC);
}

#[test]
fn undefined_header_flag_bits_are_invalid_parameter() {
    let mut bytes = bytes_of(GpuCommand::GetDisplayInfo);
    set_u32(&mut bytes, 4, VIRTIO_GPU_FLAG_FENCE | 0x8);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::UnknownHeaderFlags(0x9),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn ring_idx_flag_without_context_init_is_invalid_parameter() {
    let ctx = DecodeContext {
        features: full_ctx().features & !(1 << VIRTIO_GPU_F_CONTEXT_INIT),
        ..full_ctx()
    };
    let bytes = Request::new(GpuCommand::GetDisplayInfo)
        .with_fence(1)
        .with_ring(0)
        .to_bytes();
    expect(
        &bytes,
        &ctx,
        ProtocolError::RingIdxWithoutContextInit,
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn ring_idx_above_63_is_invalid_parameter() {
    let ok = Request::new(GpuCommand::CtxDestroy)
        .with_ctx(1)
        .with_fence(1)
        .with_ring(63);
    assert_eq!(decode(&ok.to_bytes(), &full_ctx()), Ok(ok));
    let bytes = Request::new(GpuCommand::CtxDestroy)
        .with_ctx(1)
        .with_fence(1)
        .with_ring(64)
        .to_bytes();
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::RingIdxOutOfRange(64),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn ring_idx_value_without_its_flag_is_ignored() {
    let mut bytes = bytes_of(GpuCommand::GetDisplayInfo);
    bytes[20] = 200;
    let got = decode(&bytes, &DecodeContext::default()).unwrap();
    assert_eq!(got.hdr.ring(), None);
}

#[test]
fn command_whose_feature_was_not_negotiated_is_unspec() {
    for req in sample_requests() {
        let kind = req.cmd.kind();
        let Some(feature) = required_feature(kind) else {
            continue;
        };
        let ctx = DecodeContext {
            features: full_ctx().features & !(1u64 << feature),
            ..full_ctx()
        };
        expect(
            &req.to_bytes(),
            &ctx,
            ProtocolError::FeatureNotNegotiated {
                command: kind,
                feature,
            },
            VIRTIO_GPU_RESP_ERR_UNSPEC,
        );
    }
}

#[test]
fn commands_of_the_2d_path_need_no_feature() {
    let ctx = DecodeContext {
        features: 0,
        num_scanouts: 1,
        num_capsets: 0,
        ..full_ctx()
    };
    for cmd in [
        GpuCommand::GetDisplayInfo,
        create_2d(64, 64),
        set_scanout(0, 1, Rect::new(0, 0, 64, 64)),
        attach(vec![page(0x1000)]),
    ] {
        assert!(decode(&bytes_of(cmd), &ctx).is_ok());
    }
}

// ---- Ids ----

#[test]
fn creating_resource_id_zero_is_invalid_resource_id() {
    let ctx = full_ctx();
    let mut b2d = bytes_of(create_2d(64, 64));
    set_u32(&mut b2d, HDR, 0);
    expect(
        &b2d,
        &ctx,
        ProtocolError::ResourceIdZero,
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    );

    let mut b3d = sample_requests()
        .into_iter()
        .find(|r| r.cmd.kind() == VIRTIO_GPU_CMD_RESOURCE_CREATE_3D)
        .unwrap()
        .to_bytes();
    set_u32(&mut b3d, HDR, 0);
    expect(
        &b3d,
        &ctx,
        ProtocolError::ResourceIdZero,
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    );

    let mut bblob = bytes_of(blob(BlobMem::Guest, 4096, vec![page(0x1000)]));
    set_u32(&mut bblob, HDR, 0);
    expect(
        &bblob,
        &ctx,
        ProtocolError::ResourceIdZero,
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    );
}

#[test]
fn context_command_with_ctx_id_zero_is_invalid_context_id() {
    for req in sample_requests() {
        if !names_context_in_header(req.cmd.kind()) {
            continue;
        }
        let bytes = req.clone().with_ctx(0).to_bytes();
        expect(
            &bytes,
            &full_ctx(),
            ProtocolError::ContextIdZero,
            VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
        );
    }
}

#[test]
fn set_scanout_beyond_num_scanouts_is_invalid_scanout_id() {
    let bytes = bytes_of(set_scanout(4, 1, Rect::new(0, 0, 64, 64)));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ScanoutIdOutOfRange { id: 4, num: 4 },
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    );
}

#[test]
fn set_scanout_blob_beyond_num_scanouts_is_invalid_scanout_id() {
    let mut bytes = bytes_of(scanout_blob(Rect::new(0, 0, 64, 64), 64, 64, 256));
    set_u32(&mut bytes, HDR + 16, 16);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ScanoutIdOutOfRange { id: 16, num: 4 },
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    );
}

#[test]
fn get_edid_beyond_num_scanouts_is_invalid_scanout_id() {
    let bytes = bytes_of(GpuCommand::GetEdid(GetEdid {
        scanout_id: ScanoutId(7),
    }));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ScanoutIdOutOfRange { id: 7, num: 4 },
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    );
}

#[test]
fn cursor_on_a_scanout_beyond_num_scanouts_is_invalid_scanout_id() {
    let c = CursorUpdate {
        pos: CursorPos {
            scanout_id: ScanoutId(u32::MAX),
            x: 0,
            y: 0,
        },
        resource_id: ResourceId(1),
        hot_x: 0,
        hot_y: 0,
    };
    for cmd in [GpuCommand::UpdateCursor(c), GpuCommand::MoveCursor(c)] {
        expect(
            &bytes_of(cmd),
            &full_ctx(),
            ProtocolError::ScanoutIdOutOfRange {
                id: u32::MAX,
                num: 4,
            },
            VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
        );
    }
}

#[test]
fn scanout_ids_are_bounded_by_sixteen_even_if_config_says_more() {
    let ctx = DecodeContext {
        num_scanouts: 100,
        ..full_ctx()
    };
    let bytes = bytes_of(set_scanout(16, 1, Rect::new(0, 0, 8, 8)));
    expect(
        &bytes,
        &ctx,
        ProtocolError::ScanoutIdOutOfRange { id: 16, num: 16 },
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    );
}

// ---- Formats and sizes ----

#[test]
fn create_2d_with_unknown_format_is_invalid_parameter() {
    let mut bytes = bytes_of(create_2d(64, 64));
    set_u32(&mut bytes, HDR + 4, 5);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::UnknownFormat(5),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn set_scanout_blob_with_unknown_format_is_invalid_parameter() {
    let mut bytes = bytes_of(scanout_blob(Rect::new(0, 0, 64, 64), 64, 64, 256));
    set_u32(&mut bytes, HDR + 32, 0);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::UnknownFormat(0),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_2d_with_zero_width_or_height_is_invalid_parameter() {
    for (w, h) in [(0, 64), (64, 0)] {
        expect(
            &bytes_of(create_2d(w, h)),
            &full_ctx(),
            ProtocolError::ZeroSize {
                width: w,
                height: h,
            },
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        );
    }
}

/// A 2D render target of `w` x `h`, otherwise as a guest's Mesa sends it.
fn create_3d(target: u32, extent: [u32; 4]) -> ResourceCreate3d {
    let [width, height, depth, array_size] = extent;
    ResourceCreate3d {
        resource_id: ResourceId(1),
        target,
        format: 67, // R8G8B8A8_UNORM
        bind: 2,
        width,
        height,
        depth,
        array_size,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }
}

fn bytes_3d(c: ResourceCreate3d) -> Vec<u8> {
    bytes_of(GpuCommand::ResourceCreate3d(c))
}

#[test]
fn create_3d_with_an_unknown_target_is_invalid_parameter() {
    expect(
        &bytes_3d(create_3d(9, [1, 1, 1, 1])),
        &full_ctx(),
        ProtocolError::UnknownTarget(9),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_3d_with_an_unknown_format_is_invalid_parameter() {
    let mut c = create_3d(PIPE_TEXTURE_2D, [1, 1, 1, 1]);
    c.format = 313;
    expect(
        &bytes_3d(c),
        &full_ctx(),
        ProtocolError::UnknownFormat(313),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_3d_larger_than_its_target_allows_is_invalid_parameter() {
    let (d, d3, l) = (16384, 2048, 2048);
    // (target, the largest extent it takes, each axis one past it)
    let table = [
        (PIPE_BUFFER, [1 << 31, 1, 1, 1]),
        (PIPE_TEXTURE_1D, [d, 1, 1, 1]),
        (PIPE_TEXTURE_2D, [d, d, 1, 1]),
        (PIPE_TEXTURE_RECT, [d, d, 1, 1]),
        (PIPE_TEXTURE_3D, [d3, d3, d3, 1]),
        (PIPE_TEXTURE_CUBE, [d, d, 1, 6]),
        (PIPE_TEXTURE_1D_ARRAY, [d, 1, 1, l]),
        (PIPE_TEXTURE_2D_ARRAY, [d, d, 1, l]),
        (PIPE_TEXTURE_CUBE_ARRAY, [d, d, 1, l]),
    ];
    for (target, max) in table {
        let at_max = decode(&bytes_3d(create_3d(target, max)), &full_ctx());
        assert!(at_max.is_ok(), "target {target} at {max:?}: {at_max:?}");
        for axis in 0..4 {
            let mut extent = max;
            extent[axis] += 1;
            expect(
                &bytes_3d(create_3d(target, extent)),
                &full_ctx(),
                ProtocolError::Resource3dTooLarge {
                    target,
                    extent,
                    max,
                },
                VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
            );
        }
    }
    // Zero depth and layers are taken as one, as virglrenderer takes them.
    assert!(decode(
        &bytes_3d(create_3d(PIPE_TEXTURE_2D, [4, 4, 0, 0])),
        &full_ctx()
    )
    .is_ok());
}

#[test]
fn create_3d_with_more_mip_levels_than_its_size_has_is_invalid_parameter() {
    // 1024 = 2^10: levels 0..=10 reach 1x1; virglrenderer takes one more.
    let mut c = create_3d(PIPE_TEXTURE_2D, [1024, 16, 1, 1]);
    c.last_level = 11;
    assert!(decode(&bytes_3d(c), &full_ctx()).is_ok());
    c.last_level = 12;
    expect(
        &bytes_3d(c),
        &full_ctx(),
        ProtocolError::TooManyMipLevels {
            last_level: 12,
            max: 11,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_3d_with_more_than_16_samples_is_invalid_parameter() {
    let mut c = create_3d(PIPE_TEXTURE_2D, [64, 64, 1, 1]);
    c.nr_samples = 16;
    assert!(decode(&bytes_3d(c), &full_ctx()).is_ok());
    c.nr_samples = 17;
    expect(
        &bytes_3d(c),
        &full_ctx(),
        ProtocolError::TooManySamples {
            nr_samples: 17,
            max: 16,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_2d_larger_than_max_dimension_is_invalid_parameter() {
    assert!(decode(&bytes_of(create_2d(16384, 16384)), &full_ctx()).is_ok());
    expect(
        &bytes_of(create_2d(16385, 1)),
        &full_ctx(),
        ProtocolError::DimensionTooLarge {
            width: 16385,
            height: 1,
            max: 16384,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn set_scanout_blob_framebuffer_of_zero_size_is_invalid_parameter() {
    expect(
        &bytes_of(scanout_blob(Rect::new(0, 0, 1, 1), 0, 64, 256)),
        &full_ctx(),
        ProtocolError::ZeroSize {
            width: 0,
            height: 64,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn set_scanout_blob_framebuffer_larger_than_max_dimension_is_invalid_parameter() {
    expect(
        &bytes_of(scanout_blob(Rect::new(0, 0, 1, 1), 64, 20000, 256)),
        &full_ctx(),
        ProtocolError::DimensionTooLarge {
            width: 64,
            height: 20000,
            max: 16384,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

// ---- Rectangles and boxes ----

#[test]
fn rect_overflowing_32_bits_is_invalid_parameter() {
    let rect = Rect::new(u32::MAX - 10, 0, 11, 1);
    let err = ProtocolError::RectOverflow {
        x: u32::MAX - 10,
        y: 0,
        width: 11,
        height: 1,
    };
    let cmds = [
        GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: ResourceId(1),
        }),
        GpuCommand::TransferToHost2d(TransferToHost2d {
            rect,
            offset: 0,
            resource_id: ResourceId(1),
        }),
        set_scanout(0, 1, rect),
        scanout_blob(rect, 64, 64, 256),
    ];
    for cmd in cmds {
        expect(
            &bytes_of(cmd),
            &full_ctx(),
            err.clone(),
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        );
    }
}

#[test]
fn set_scanout_with_an_empty_rect_is_invalid_parameter() {
    expect(
        &bytes_of(set_scanout(0, 1, Rect::new(0, 0, 0, 800))),
        &full_ctx(),
        ProtocolError::ScanoutRectEmpty,
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    expect(
        &bytes_of(scanout_blob(Rect::new(0, 0, 64, 0), 64, 64, 256)),
        &full_ctx(),
        ProtocolError::ScanoutRectEmpty,
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn disabling_a_scanout_ignores_its_rect() {
    // Linux disables with resource 0 and an all-zero rect.
    let cmd = set_scanout(3, 0, Rect::new(u32::MAX, 0, 5, 0));
    assert!(decode(&bytes_of(cmd), &full_ctx()).is_ok());
    let mut bytes = bytes_of(scanout_blob(Rect::new(0, 0, 64, 64), 64, 64, 256));
    set_u32(&mut bytes, HDR + 20, 0); // resource 0: layout fields are ignored
    set_u32(&mut bytes, HDR + 32, 999);
    match decode(&bytes, &full_ctx()).unwrap().cmd {
        GpuCommand::SetScanoutBlob(c) => assert_eq!(c.layout, None),
        other => panic!("{other:?}"),
    }
}

#[test]
fn flush_of_an_empty_rect_is_accepted() {
    let cmd = GpuCommand::ResourceFlush(ResourceFlush {
        rect: Rect::default(),
        resource_id: ResourceId(1),
    });
    assert!(decode(&bytes_of(cmd), &full_ctx()).is_ok());
}

#[test]
fn scanout_blob_rect_outside_its_framebuffer_is_invalid_parameter() {
    expect(
        &bytes_of(scanout_blob(Rect::new(10, 0, 64, 64), 64, 64, 256)),
        &full_ctx(),
        ProtocolError::ScanoutRectOutsideFramebuffer {
            right: 74,
            bottom: 64,
            fb_width: 64,
            fb_height: 64,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn scanout_blob_stride_shorter_than_a_row_is_invalid_parameter() {
    expect(
        &bytes_of(scanout_blob(Rect::new(0, 0, 64, 64), 64, 64, 255)),
        &full_ctx(),
        ProtocolError::StrideTooSmall {
            stride: 255,
            min: 256,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn transfer_3d_box_overflowing_32_bits_is_invalid_parameter() {
    let t = Transfer3d {
        box3d: Box3d {
            x: 0,
            y: 0,
            z: u32::MAX,
            w: 1,
            h: 1,
            d: 1,
        },
        offset: 0,
        resource_id: ResourceId(1),
        level: 0,
        stride: 0,
        layer_stride: 0,
    };
    for cmd in [
        GpuCommand::TransferToHost3d(t),
        GpuCommand::TransferFromHost3d(t),
    ] {
        expect(
            &bytes_of(cmd),
            &full_ctx(),
            ProtocolError::BoxOverflow,
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        );
    }
}

// ---- Backing entries ----

#[test]
fn attach_backing_with_more_entries_than_limit_is_invalid_parameter() {
    let ctx = full_ctx();
    let max = ctx.limits.max_backing_entries;
    // The count alone decides: no entry bytes follow, nothing is allocated.
    let mut bytes = bytes_of(attach(vec![]));
    set_u32(&mut bytes, HDR + 4, max + 1);
    expect(
        &bytes,
        &ctx,
        ProtocolError::TooManyBackingEntries { n: max + 1, max },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    set_u32(&mut bytes, HDR + 4, u32::MAX);
    expect(
        &bytes,
        &ctx,
        ProtocolError::TooManyBackingEntries { n: u32::MAX, max },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn attach_backing_with_exactly_the_limit_is_accepted() {
    let ctx = DecodeContext {
        limits: Limits {
            max_backing_entries: 3,
            ..Limits::default()
        },
        ..full_ctx()
    };
    let entries = vec![page(0x1000), page(0x3000), page(0x9000)];
    assert!(decode(&bytes_of(attach(entries)), &ctx).is_ok());
}

#[test]
fn attach_backing_with_fewer_entries_than_nr_entries_is_unspec() {
    let mut bytes = bytes_of(attach(vec![page(0x1000), page(0x2000)]));
    set_u32(&mut bytes, HDR + 4, 3);
    let got = bytes.len();
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ShortCommand {
            needed: got + 16,
            got,
        },
        VIRTIO_GPU_RESP_ERR_UNSPEC,
    );
}

#[test]
fn attach_backing_with_a_zero_length_entry_is_invalid_parameter() {
    let entries = vec![
        page(0x1000),
        MemEntry {
            addr: 0x2000,
            length: 0,
        },
    ];
    expect(
        &bytes_of(attach(entries)),
        &full_ctx(),
        ProtocolError::ZeroLengthBackingEntry { index: 1 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn attach_backing_entry_wrapping_the_address_space_is_invalid_parameter() {
    let entries = vec![MemEntry {
        addr: u64::MAX - 100,
        length: 4096,
    }];
    expect(
        &bytes_of(attach(entries)),
        &full_ctx(),
        ProtocolError::BackingEntryOverflows { index: 0 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

// ---- Capsets ----

#[test]
fn capset_index_not_below_num_capsets_is_invalid_parameter() {
    let bytes = bytes_of(GpuCommand::GetCapsetInfo(GetCapsetInfo { capset_index: 2 }));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::CapsetIndexOutOfRange { index: 2, num: 2 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    let none = DecodeContext {
        num_capsets: 0,
        ..full_ctx()
    };
    let bytes = bytes_of(GpuCommand::GetCapsetInfo(GetCapsetInfo { capset_index: 0 }));
    expect(
        &bytes,
        &none,
        ProtocolError::CapsetIndexOutOfRange { index: 0, num: 0 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

// ---- Blobs ----

#[test]
fn create_blob_with_undefined_blob_mem_is_invalid_parameter() {
    for bad in [0u32, 4, 0x100] {
        let mut bytes = bytes_of(blob(BlobMem::Guest, 4096, vec![page(0x1000)]));
        set_u32(&mut bytes, HDR + 4, bad);
        expect(
            &bytes,
            &full_ctx(),
            ProtocolError::BlobMemInvalid(bad),
            VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        );
    }
}

#[test]
fn create_host3d_blob_without_virgl_is_invalid_parameter() {
    let ctx = DecodeContext {
        features: 1 << VIRTIO_GPU_F_RESOURCE_BLOB,
        ..full_ctx()
    };
    let bytes = bytes_of(blob(BlobMem::Host3d, 4096, vec![]));
    expect(
        &bytes,
        &ctx,
        ProtocolError::BlobMemRequiresVirgl(VIRTIO_GPU_BLOB_MEM_HOST3D),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // A guest blob needs only F_RESOURCE_BLOB.
    assert!(decode(&bytes_of(blob(BlobMem::Guest, 4096, vec![page(0)])), &ctx).is_ok());
}

#[test]
fn create_blob_with_undefined_flag_bits_is_invalid_parameter() {
    let mut bytes = bytes_of(blob(BlobMem::Guest, 4096, vec![page(0x1000)]));
    set_u32(&mut bytes, HDR + 8, 0x9);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::BlobFlagsInvalid(0x9),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_blob_of_size_zero_is_invalid_parameter() {
    let mut bytes = bytes_of(blob(BlobMem::Host3d, 4096, vec![]));
    set_u64(&mut bytes, HDR + 24, 0);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::BlobSizeZero,
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_host_only_blob_with_guest_pages_is_invalid_parameter() {
    let bytes = bytes_of(blob(BlobMem::Host3d, 4096, vec![page(0x1000)]));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::BlobEntriesOnHostBlob { nr_entries: 1 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_blob_whose_pages_do_not_cover_its_size_is_invalid_parameter() {
    let bytes = bytes_of(blob(
        BlobMem::Host3dGuest,
        8193,
        vec![page(0x1000), page(0x5000)],
    ));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::BlobBackingSmallerThanSize {
            size: 8193,
            backing: 8192,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_guest_blob_without_pages_is_accepted_for_later_attach() {
    assert!(decode(&bytes_of(blob(BlobMem::Guest, 4096, vec![])), &full_ctx()).is_ok());
}

#[test]
fn create_blob_with_more_entries_than_limit_is_invalid_parameter() {
    let ctx = DecodeContext {
        limits: Limits {
            max_backing_entries: 1,
            ..Limits::default()
        },
        ..full_ctx()
    };
    let bytes = bytes_of(blob(BlobMem::Guest, 8192, vec![page(0x1000), page(0x2000)]));
    expect(
        &bytes,
        &ctx,
        ProtocolError::TooManyBackingEntries { n: 2, max: 1 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn create_blob_with_a_zero_length_entry_is_invalid_parameter() {
    let bytes = bytes_of(blob(
        BlobMem::Guest,
        4096,
        vec![
            page(0x1000),
            MemEntry {
                addr: 0x2000,
                length: 0,
            },
        ],
    ));
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ZeroLengthBackingEntry { index: 1 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

// ---- Contexts ----

fn ctx_create(name: &[u8], capset_id: u8) -> Vec<u8> {
    Request::new(GpuCommand::CtxCreate(CtxCreate {
        debug_name: name.to_vec(),
        capset_id,
    }))
    .with_ctx(1)
    .to_bytes()
}

#[test]
fn ctx_create_with_nlen_above_64_is_invalid_parameter() {
    let mut bytes = ctx_create(b"x", 0);
    set_u32(&mut bytes, HDR, 65);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::DebugNameTooLong { nlen: 65, max: 64 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // A configured limit below the field size is honoured.
    let ctx = DecodeContext {
        limits: Limits {
            max_debug_name: 8,
            ..Limits::default()
        },
        ..full_ctx()
    };
    set_u32(&mut bytes, HDR, 9);
    expect(
        &bytes,
        &ctx,
        ProtocolError::DebugNameTooLong { nlen: 9, max: 8 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    assert!(decode(&ctx_create(&[b'n'; 64], 0), &full_ctx()).is_ok());
}

#[test]
fn ctx_create_with_a_capset_but_without_context_init_is_invalid_parameter() {
    let ctx = DecodeContext {
        features: 1 << VIRTIO_GPU_F_VIRGL,
        ..full_ctx()
    };
    expect(
        &ctx_create(b"venus", 4),
        &ctx,
        ProtocolError::ContextInitWithoutFeature(4),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    assert!(decode(&ctx_create(b"virgl", 0), &ctx).is_ok());
}

#[test]
fn ctx_create_with_reserved_context_init_bits_is_invalid_parameter() {
    let mut bytes = ctx_create(b"x", 4);
    set_u32(&mut bytes, HDR + 4, 0x104);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::ContextInitReservedBits(0x104),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

// ---- Submit ----

fn submit(len: usize) -> Vec<u8> {
    Request::new(GpuCommand::Submit3d(Submit3d {
        data: vec![0x5a; len],
    }))
    .with_ctx(1)
    .to_bytes()
}

#[test]
fn submit_larger_than_the_limit_is_invalid_parameter() {
    let ctx = DecodeContext {
        limits: Limits {
            max_submit_bytes: 64,
            ..Limits::default()
        },
        ..full_ctx()
    };
    assert!(decode(&submit(64), &ctx).is_ok());
    expect(
        &submit(65),
        &ctx,
        ProtocolError::SubmitTooLarge { size: 65, max: 64 },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // The size field alone decides; nothing is allocated for it.
    let mut bytes = submit(0);
    set_u32(&mut bytes, HDR, u32::MAX);
    expect(
        &bytes,
        &ctx,
        ProtocolError::SubmitTooLarge {
            size: u32::MAX,
            max: 64,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn submit_size_beyond_the_bytes_in_the_chain_is_invalid_parameter() {
    let mut bytes = submit(100);
    set_u32(&mut bytes, HDR, 101);
    expect(
        &bytes,
        &full_ctx(),
        ProtocolError::SubmitSizeExceedsChain {
            size: 101,
            available: 100,
        },
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
}

#[test]
fn empty_submit_is_accepted() {
    assert!(decode(&submit(0), &full_ctx()).is_ok());
}
