//! Every command and response survives encode → decode unchanged, at the
//! size the Linux header gives its struct.

use super::*;
use crate::protocol::wire::*;

#[test]
fn every_command_type_has_a_sample() {
    let mut kinds: Vec<u32> = sample_requests().iter().map(|r| r.cmd.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let all = (0x0100..=0x010d)
        .chain(0x0200..=0x0209)
        .chain(0x0300..=0x0301);
    assert_eq!(kinds, all.collect::<Vec<u32>>());
}

#[test]
fn every_command_round_trips_through_encode_and_decode() {
    let ctx = full_ctx();
    for req in sample_requests() {
        let bytes = req.to_bytes();
        let got = decode_any(&bytes, &ctx).unwrap_or_else(|e| panic!("{}: {e}", req.cmd.name()));
        assert_eq!(got, req, "{}", req.cmd.name());
        assert_eq!(got.hdr.kind, got.cmd.kind());
    }
}

#[test]
fn every_command_encodes_to_its_struct_size_plus_tail() {
    for req in sample_requests() {
        let tail = match &req.cmd {
            GpuCommand::ResourceAttachBacking(c) => c.entries.len() * MEM_ENTRY_SIZE,
            GpuCommand::ResourceCreateBlob(c) => c.entries.len() * MEM_ENTRY_SIZE,
            GpuCommand::Submit3d(c) => c.data.len(),
            _ => 0,
        };
        let kind = req.cmd.kind();
        let body = request_body_size(kind).unwrap();
        assert_eq!(
            req.to_bytes().len(),
            CTRL_HDR_SIZE + body + tail,
            "{}",
            type_name(kind)
        );
    }
}

#[test]
fn trailing_bytes_after_a_command_are_ignored() {
    let req = Request::new(GpuCommand::ResourceUnref(ResourceRef {
        resource_id: ResourceId(3),
    }));
    let mut bytes = req.to_bytes();
    bytes.extend_from_slice(&[0xee; 40]);
    assert_eq!(decode(&bytes, &full_ctx()), Ok(req));
}

#[test]
fn padding_is_ignored_on_decode_and_zero_on_encode() {
    let req = Request::new(GpuCommand::ResourceUnref(ResourceRef {
        resource_id: ResourceId(3),
    }));
    let mut bytes = req.to_bytes();
    assert_eq!(&bytes[28..32], &[0, 0, 0, 0]);
    bytes[28..32].copy_from_slice(&[1, 2, 3, 4]);
    bytes[21..24].copy_from_slice(&[5, 6, 7]);
    assert_eq!(decode(&bytes, &full_ctx()), Ok(req));
}

#[test]
fn ctx_create_debug_name_is_cut_at_nlen() {
    let mut bytes = Request::new(GpuCommand::CtxCreate(CtxCreate {
        debug_name: b"abcdef".to_vec(),
        capset_id: 0,
    }))
    .with_ctx(1)
    .to_bytes();
    bytes[24..28].copy_from_slice(&3u32.to_le_bytes());
    let got = decode(&bytes, &full_ctx()).unwrap();
    match got.cmd {
        GpuCommand::CtxCreate(c) => assert_eq!(c.debug_name_lossy(), "abc"),
        other => panic!("{other:?}"),
    }
}

fn sample_responses() -> Vec<Response> {
    let mut modes = vec![DisplayMode::default(); 2];
    modes[0] = DisplayMode {
        rect: Rect::new(0, 0, 1280, 800),
        enabled: true,
        flags: 0,
    };
    modes[1] = DisplayMode {
        rect: Rect::new(1280, 0, 1024, 768),
        enabled: true,
        flags: 0,
    };
    vec![
        Response::OkNodata,
        Response::display_info(&modes),
        Response::OkCapsetInfo {
            capset_id: 4,
            max_version: 0,
            max_size: 160,
        },
        Response::OkCapset(vec![1, 2, 3, 4, 5]),
        Response::OkEdid(EdidBlob::new(&edid_for(1280, 800)).unwrap()),
        Response::OkResourceUuid(*b"0123456789abcdef"),
        Response::OkMapInfo {
            map_info: VIRTIO_GPU_MAP_CACHE_WC,
        },
        Response::Err(VIRTIO_GPU_RESP_ERR_UNSPEC),
        Response::Err(VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER),
    ]
}

#[test]
fn every_response_round_trips_and_has_its_encoded_len() {
    let hdr_in = CtrlHeader::new(VIRTIO_GPU_CMD_GET_DISPLAY_INFO);
    for resp in sample_responses() {
        let mut out = Vec::new();
        resp.encode(&hdr_in, &mut out);
        assert_eq!(out.len(), resp.encoded_len(), "{}", type_name(resp.kind()));
        let (hdr, back) = Response::decode(&out).unwrap();
        assert_eq!(hdr.kind, resp.kind());
        assert_eq!(back, resp);
    }
}

#[test]
fn response_sizes_match_linux_uapi_structs() {
    use std::mem::size_of;
    use virtio_bindings::virtio_gpu as b;
    let len = |r: Response| r.encoded_len();
    assert_eq!(len(Response::OkNodata), size_of::<b::virtio_gpu_ctrl_hdr>());
    assert_eq!(
        len(Response::display_info(&[])),
        size_of::<b::virtio_gpu_resp_display_info>()
    );
    assert_eq!(
        len(Response::OkCapsetInfo {
            capset_id: 0,
            max_version: 0,
            max_size: 0
        }),
        size_of::<b::virtio_gpu_resp_capset_info>()
    );
    assert_eq!(
        len(Response::OkEdid(EdidBlob::new(&[]).unwrap())),
        size_of::<b::virtio_gpu_resp_edid>()
    );
    assert_eq!(
        len(Response::OkResourceUuid([0; 16])),
        size_of::<b::virtio_gpu_resp_resource_uuid>()
    );
    assert_eq!(
        len(Response::OkMapInfo { map_info: 0 }),
        size_of::<b::virtio_gpu_resp_map_info>()
    );
}

#[test]
fn fenced_response_echoes_fence_id_and_ctx_id() {
    let hdr_in = CtrlHeader {
        kind: VIRTIO_GPU_CMD_SUBMIT_3D,
        flags: VIRTIO_GPU_FLAG_FENCE,
        fence_id: 99,
        ctx_id: 5,
        ring_idx: 0,
    };
    let hdr = Response::OkNodata.header_for(&hdr_in);
    assert_eq!(
        hdr,
        CtrlHeader {
            kind: VIRTIO_GPU_RESP_OK_NODATA,
            flags: VIRTIO_GPU_FLAG_FENCE,
            fence_id: 99,
            ctx_id: 5,
            ring_idx: 0
        }
    );
}

#[test]
fn ring_fenced_response_echoes_the_ring_index() {
    let hdr_in = CtrlHeader {
        kind: VIRTIO_GPU_CMD_SUBMIT_3D,
        flags: VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX,
        fence_id: 3,
        ctx_id: 5,
        ring_idx: 17,
    };
    let mut out = Vec::new();
    Response::OkNodata.encode(&hdr_in, &mut out);
    let (hdr, _) = Response::decode(&out).unwrap();
    assert_eq!(
        hdr.flags,
        VIRTIO_GPU_FLAG_FENCE | VIRTIO_GPU_FLAG_INFO_RING_IDX
    );
    assert_eq!((hdr.fence_id, hdr.ctx_id, hdr.ring_idx), (3, 5, 17));
}

#[test]
fn unfenced_response_carries_no_fence_id_or_ring_index() {
    // A stray fence_id / ring_idx without their flags is not echoed.
    let hdr_in = CtrlHeader {
        kind: VIRTIO_GPU_CMD_RESOURCE_FLUSH,
        flags: 0,
        fence_id: 1234,
        ctx_id: 0,
        ring_idx: 9,
    };
    let hdr = Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER).header_for(&hdr_in);
    assert_eq!((hdr.flags, hdr.fence_id, hdr.ring_idx), (0, 0, 0));
    assert_eq!(hdr.kind, VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER);
}

#[test]
fn decode_error_becomes_the_matching_error_response() {
    let err = ProtocolError::ScanoutIdOutOfRange { id: 9, num: 1 };
    assert_eq!(
        Response::from(&err),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID)
    );
}

#[test]
fn display_info_reports_missing_scanouts_disabled() {
    let resp = Response::display_info(&[DisplayMode {
        rect: Rect::new(0, 0, 640, 480),
        enabled: true,
        flags: 0,
    }]);
    match resp {
        Response::OkDisplayInfo(modes) => {
            assert!(modes[0].enabled);
            assert!(modes[1..].iter().all(|m| !m.enabled));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn short_or_unknown_responses_are_rejected_on_the_guest_side() {
    let mut out = Vec::new();
    Response::display_info(&[]).encode(&CtrlHeader::default(), &mut out);
    assert_eq!(
        Response::decode(&out[..100]),
        Err(ProtocolError::ShortResponse {
            needed: 24 + 384,
            got: 100
        })
    );
    let mut bogus = Vec::new();
    CtrlHeader::new(0x1300).write(&mut bogus);
    assert_eq!(
        Response::decode(&bogus),
        Err(ProtocolError::UnknownResponseType(0x1300))
    );
    let mut edid = Vec::new();
    Response::OkEdid(EdidBlob::new(&[1; 128]).unwrap()).encode(&CtrlHeader::default(), &mut edid);
    edid[24..28].copy_from_slice(&2000u32.to_le_bytes());
    assert_eq!(
        Response::decode(&edid),
        Err(ProtocolError::EdidSizeOutOfRange(2000))
    );
    assert_eq!(
        EdidBlob::new(&[0; 1025]),
        Err(ProtocolError::EdidSizeOutOfRange(1025))
    );
}
