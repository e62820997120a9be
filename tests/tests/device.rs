//! The device through an in-process guest driver: rings in guest memory,
//! kicks and calls on eventfds, exactly what a guest produces.

use std::time::Duration;

use gpu::protocol::wire::*;
use gpu::protocol::*;
use gpu::render::sim::{sim_submit, SIM_CAPSET_ID};
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{Completion, GpuDriver, Queue};
use loadgen::rng::Rng;
use vm_memory::{Bytes, GuestAddress};

const T: Duration = Duration::from_secs(10);

fn start() -> (DirectBackend, GpuDriver) {
    DirectBackend::start(DirectOptions::default()).unwrap()
}

fn ok(c: &Completion) -> &Response {
    &c.response.as_ref().unwrap().1
}

fn call(d: &mut GpuDriver, req: Request) -> Response {
    let c = d.call(Queue::Control, &req, T).unwrap();
    c.response.unwrap().1
}

fn create_2d(d: &mut GpuDriver, id: u32, w: u32, h: u32) -> GuestAddress {
    let r = call(
        d,
        Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: ResourceId(id),
            format: Format::B8G8R8X8Unorm,
            width: w,
            height: h,
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let len = w * h * 4;
    let backing = d.ram().alloc(u64::from(len), 4096).unwrap();
    let r = call(
        d,
        Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: ResourceId(id),
            entries: vec![MemEntry {
                addr: backing.0,
                length: len,
            }],
        })),
    );
    assert_eq!(r, Response::OkNodata);
    backing
}

fn ctx_create(d: &mut GpuDriver, ctx: u32) {
    let r = call(
        d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"desktop".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
}

fn submit(ctx: u32, gpu_us: u32, hang: bool) -> Request {
    Request::new(GpuCommand::Submit3d(Submit3d {
        data: sim_submit(gpu_us, hang),
    }))
    .with_ctx(ctx)
}

#[test]
fn display_info_reports_every_scanout_connected() {
    let (_b, mut d) = start();
    match call(&mut d, Request::new(GpuCommand::GetDisplayInfo)) {
        Response::OkDisplayInfo(modes) => {
            assert!(modes[0].enabled);
            assert_eq!(modes[0].rect, Rect::new(0, 0, 1280, 800));
            assert!(!modes[1].enabled);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn fenced_flush_delivers_the_guest_pixels_to_the_display() {
    let (b, mut d) = start();
    let (w, h) = (64u32, 32u32);
    let backing = create_2d(&mut d, 1, w, h);
    let pattern: Vec<u8> = (0..w * h * 4).map(|i| (i * 7 % 251) as u8).collect();
    d.ram().memory().write_slice(&pattern, backing).unwrap();
    let rect = Rect::new(0, 0, w, h);
    let r = call(
        &mut d,
        Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
            rect,
            offset: 0,
            resource_id: ResourceId(1),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let r = call(
        &mut d,
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect,
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(1),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let c = d
        .call(
            Queue::Control,
            &Request::new(GpuCommand::ResourceFlush(ResourceFlush {
                rect,
                resource_id: ResourceId(1),
            }))
            .with_fence(1),
            T,
        )
        .unwrap();
    let (hdr, resp) = c.response.unwrap();
    assert_eq!(resp, Response::OkNodata);
    assert_eq!(hdr.flags & VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_FLAG_FENCE);
    assert_eq!(hdr.fence_id, 1);
    let shown = b.display.snapshot();
    assert_eq!(shown.frames[&0], pattern);
}

/// Submits without waiting; returns nothing. Kick separately.
fn put(d: &mut GpuDriver, req: &Request, tag: u64) {
    d.submit(Queue::Control, req, tag).unwrap();
}

#[test]
fn fence_on_ring_1_completes_while_ring_0_of_another_context_is_stalled() {
    let (_b, mut d) = start();
    ctx_create(&mut d, 1);
    ctx_create(&mut d, 2);
    put(&mut d, &submit(1, 0, true).with_ring(0).with_fence(10), 10);
    put(
        &mut d,
        &submit(2, 50, false).with_ring(1).with_fence(11),
        11,
    );
    d.kick(Queue::Control).unwrap();
    let done = d.wait_for(11, T).unwrap();
    let (hdr, resp) = done.response.unwrap();
    assert_eq!(resp, Response::OkNodata);
    assert_eq!((hdr.fence_id, hdr.ring_idx), (11, 1));
    assert_eq!(
        d.in_flight(),
        1,
        "the stalled context's fence is still pending"
    );
}

#[test]
fn global_timeline_fences_are_never_released_out_of_order() {
    let (_b, mut d) = start();
    for ctx in 1..=4 {
        ctx_create(&mut d, ctx);
    }
    // Later fences are cheaper than earlier ones on other contexts, so they
    // finish first on the GPU; the guest must still see them in order.
    let n = 200u64;
    for f in 1..=n {
        let ctx = (f % 4) as u32 + 1;
        let cost = ((n - f) * 37 % 2000) as u32;
        put(&mut d, &submit(ctx, cost, false).with_fence(f), f);
        if f % 50 == 0 {
            d.kick(Queue::Control).unwrap();
        }
    }
    d.kick(Queue::Control).unwrap();
    let done = d.wait_n(n as usize, T).unwrap();
    let fences: Vec<u64> = done
        .iter()
        .map(|c| c.response.as_ref().unwrap().0.fence_id)
        .collect();
    let mut sorted = fences.clone();
    sorted.sort_unstable();
    assert_eq!(fences, sorted, "fences released out of order");
    assert_eq!(fences.len(), n as usize);
}

#[test]
fn thousand_commands_of_a_stalled_context_do_not_delay_another_context() {
    let (_b, mut d) = start();
    ctx_create(&mut d, 1);
    ctx_create(&mut d, 2);
    put(&mut d, &submit(1, 0, true).with_ring(0).with_fence(1), 1);
    for i in 0..999u64 {
        put(
            &mut d,
            &submit(1, 10, false).with_ring(0).with_fence(2 + i),
            2 + i,
        );
    }
    d.kick(Queue::Control).unwrap();
    // Behind 1000 stuck commands in the same queue: another context's
    // fenced and unfenced work.
    put(
        &mut d,
        &submit(2, 10, false).with_ring(0).with_fence(5000),
        5000,
    );
    put(&mut d, &Request::new(GpuCommand::GetDisplayInfo), 5001);
    d.kick(Queue::Control).unwrap();
    let c = d.wait_for(5000, T).unwrap();
    assert_eq!(ok(&c), &Response::OkNodata);
    let c = d.wait_for(5001, T).unwrap();
    assert!(matches!(ok(&c), Response::OkDisplayInfo(_)));
    // Non-fenced submits of the stalled context completed; fenced ones wait.
    assert_eq!(d.in_flight(), 1000);
}

/// Context 1 floods the queue with 900 commands; context 2 runs fenced
/// frames meanwhile. With context 2 active, the pacer holds context 1 to
/// its budget (counted); everything still completes, in each context's
/// order. Alone, a flooding context is never paced.
#[test]
fn a_flooding_context_is_paced_only_while_another_is_active_and_loses_nothing() {
    let flood = |d: &mut GpuDriver, first_tag: u64| {
        for i in 0..900u64 {
            put(d, &submit(1, 0, false), first_tag + i);
        }
        d.kick(Queue::Control).unwrap();
    };
    let (b, mut d) = start();
    ctx_create(&mut d, 1);
    flood(&mut d, 10_000);
    for i in 0..900u64 {
        assert_eq!(ok(&d.wait_for(10_000 + i, T).unwrap()), &Response::OkNodata);
    }
    assert_eq!(
        b.device.stats().unwrap().paced,
        0,
        "paced with no one else active"
    );

    ctx_create(&mut d, 2);
    let frame = submit(2, 10, false).with_ring(0).with_fence(1);
    assert_eq!(
        ok(&d.call(Queue::Control, &frame, T).unwrap()),
        &Response::OkNodata
    );
    flood(&mut d, 20_000);
    for f in 2..=4u64 {
        let frame = submit(2, 10, false).with_ring(0).with_fence(f);
        assert_eq!(
            ok(&d.call(Queue::Control, &frame, T).unwrap()),
            &Response::OkNodata
        );
    }
    for i in 0..900u64 {
        assert_eq!(ok(&d.wait_for(20_000 + i, T).unwrap()), &Response::OkNodata);
    }
    assert_eq!(d.in_flight(), 0);
    assert!(
        b.device.stats().unwrap().paced > 0,
        "the flood was not paced"
    );
}

fn create_host_blob(d: &mut GpuDriver, ctx: u32, id: u32, size: u64) {
    let r = call(
        d,
        Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(id),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap(),
            blob_id: u64::from(id),
            size,
            entries: vec![],
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
}

#[test]
fn unmap_blob_awaiting_a_slow_vmm_does_not_stop_other_contexts() {
    let (b, mut d) = DirectBackend::start(DirectOptions {
        blob_delay: Duration::from_millis(100),
        ..DirectOptions::default()
    })
    .unwrap();
    ctx_create(&mut d, 1);
    ctx_create(&mut d, 2);
    create_host_blob(&mut d, 1, 7, 1 << 20);
    let map = Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
        resource_id: ResourceId(7),
        offset: 0,
    }))
    .with_ctx(1);
    let r = d.call(Queue::Control, &map, T).unwrap();
    assert!(matches!(ok(&r), Response::OkMapInfo { .. }));
    assert_eq!(b.blob.mappings().get(&0), Some(&(1 << 20)));

    let unmap = Request::new(GpuCommand::ResourceUnmapBlob(ResourceRef {
        resource_id: ResourceId(7),
    }))
    .with_ctx(1);
    // The VMM sits on the unmap until the test lets it answer.
    b.blob.hold(true);
    put(&mut d, &unmap, 100);
    d.kick(Queue::Control).unwrap();
    // Meanwhile context 2 runs 20 fenced frames.
    for f in 1..=20u64 {
        put(&mut d, &submit(2, 100, false).with_fence(f), f);
        d.kick(Queue::Control).unwrap();
        d.wait_for(f, T).unwrap();
        assert_eq!(
            d.in_flight(),
            1,
            "the unmap finished before context 2's frame {f}"
        );
    }
    b.blob.hold(false);
    let c = d.wait_for(100, T).unwrap();
    assert_eq!(ok(&c), &Response::OkNodata);
    assert!(b.blob.mappings().is_empty());
}

/// Puts context `ctx` past its in-flight cap for a while: 100 fenced
/// submits on its ring 0 (tags 1..=100), the first holding the ring for
/// 300 ms of modelled GPU time, so none of them is done and whatever the
/// context sends next waits at the owner until then.
fn fill_context_slots(d: &mut GpuDriver, ctx: u32) {
    for f in 1..=100u64 {
        let cost = if f == 1 { 300_000 } else { 0 };
        put(d, &submit(ctx, cost, false).with_ring(0).with_fence(f), f);
    }
}

fn blob_ref(id: u32) -> ResourceRef {
    ResourceRef {
        resource_id: ResourceId(id),
    }
}

/// Linux creates a mappable blob with its context and maps it right away
/// without one (`virtio_gpu_vram_map`), not waiting for the create's
/// answer; it frees it with UNMAP + UNREF, again without a context. With
/// the context's CREATE_BLOB waiting behind its earlier commands, the
/// commands without a context must not overtake it.
#[test]
fn blob_commands_without_a_context_wait_behind_their_contexts_create() {
    let (b, mut d) = start();
    ctx_create(&mut d, 1);
    fill_context_slots(&mut d, 1);
    put(
        &mut d,
        &Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(7),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap(),
            blob_id: 7,
            size: 1 << 20,
            entries: vec![],
        }))
        .with_ctx(1),
        200,
    );
    let map = ResourceMapBlob {
        resource_id: ResourceId(7),
        offset: 0,
    };
    put(&mut d, &Request::new(GpuCommand::ResourceMapBlob(map)), 201);
    let unmap = GpuCommand::ResourceUnmapBlob(blob_ref(7));
    put(&mut d, &Request::new(unmap), 202);
    put(
        &mut d,
        &Request::new(GpuCommand::ResourceUnref(blob_ref(7))),
        203,
    );
    d.kick(Queue::Control).unwrap();
    assert_eq!(ok(&d.wait_for(200, T).unwrap()), &Response::OkNodata);
    let c = d.wait_for(201, T).unwrap();
    assert!(
        matches!(ok(&c), Response::OkMapInfo { .. }),
        "MAP_BLOB ran before its CREATE_BLOB: {:?}",
        ok(&c)
    );
    assert_eq!(ok(&d.wait_for(202, T).unwrap()), &Response::OkNodata);
    assert_eq!(ok(&d.wait_for(203, T).unwrap()), &Response::OkNodata);
    d.wait_n(100, T).unwrap();
    assert_eq!(d.in_flight(), 0);
    assert!(b.blob.mappings().is_empty());
}

/// loadgen's blob lifecycle under `queue-full`: the flooding context's
/// UNMAP_BLOB waits behind its earlier commands; the UNREF that follows
/// it without a context must wait too, else the UNMAP finds no resource
/// (`ERR_INVALID_RESOURCE_ID`).
#[test]
fn unref_without_a_context_waits_behind_its_contexts_unmap() {
    let (b, mut d) = start();
    ctx_create(&mut d, 1);
    create_host_blob(&mut d, 1, 7, 1 << 20);
    let map = Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
        resource_id: ResourceId(7),
        offset: 0,
    }))
    .with_ctx(1);
    let r = d.call(Queue::Control, &map, T).unwrap();
    assert!(matches!(ok(&r), Response::OkMapInfo { .. }));
    fill_context_slots(&mut d, 1);
    let unmap = GpuCommand::ResourceUnmapBlob(blob_ref(7));
    put(&mut d, &Request::new(unmap).with_ctx(1), 200);
    put(
        &mut d,
        &Request::new(GpuCommand::ResourceUnref(blob_ref(7))),
        201,
    );
    d.kick(Queue::Control).unwrap();
    assert_eq!(
        ok(&d.wait_for(200, T).unwrap()),
        &Response::OkNodata,
        "UNMAP_BLOB ran after the UNREF behind it"
    );
    assert_eq!(ok(&d.wait_for(201, T).unwrap()), &Response::OkNodata);
    d.wait_n(100, T).unwrap();
    assert_eq!(d.in_flight(), 0);
    assert!(b.blob.mappings().is_empty());
}

#[test]
fn full_queue_of_1024_is_drained_without_loss() {
    let (_b, mut d) = start();
    ctx_create(&mut d, 1);
    let mut tags = Vec::new();
    for i in 0..1024u64 {
        let req = match i % 3 {
            0 => submit(1, 0, false).with_fence(i + 1),
            1 => Request::new(GpuCommand::GetDisplayInfo),
            _ => submit(1, 0, false),
        };
        put(&mut d, &req, i);
        tags.push(i);
    }
    assert!(matches!(
        d.submit(
            Queue::Control,
            &Request::new(GpuCommand::GetDisplayInfo),
            9999
        ),
        Err(loadgen::driver::GpuDriverError::Full)
    ));
    d.kick(Queue::Control).unwrap();
    let done = d.wait_n(1024, T).unwrap();
    let mut got: Vec<u64> = done.iter().map(|c| c.tag).collect();
    got.sort_unstable();
    assert_eq!(got, tags);
    assert!(done.iter().all(|c| !matches!(ok(c), Response::Err(_))));
}

#[test]
fn fences_still_complete_after_100_resets() {
    let (b, mut d) = start();
    for round in 0..100u64 {
        ctx_create(&mut d, 1);
        put(&mut d, &submit(1, 0, false).with_fence(round + 1), round);
        // Some work left in flight when the reset comes.
        put(
            &mut d,
            &submit(1, 0, true).with_fence(round + 2),
            1000 + round,
        );
        d.kick(Queue::Control).unwrap();
        let c = d.wait_for(round, T).unwrap();
        assert_eq!(c.response.unwrap().0.fence_id, round + 1);
        d = b.reset(d).unwrap();
    }
    ctx_create(&mut d, 1);
    put(&mut d, &submit(1, 0, false).with_fence(1), 1);
    d.kick(Queue::Control).unwrap();
    assert_eq!(ok(&d.wait_for(1, T).unwrap()), &Response::OkNodata);
}

#[test]
fn fenced_command_that_fails_still_signals_its_fence_in_order() {
    let (_b, mut d) = start();
    ctx_create(&mut d, 1);
    put(&mut d, &submit(1, 2000, false).with_fence(1), 1);
    // Unknown resource: refused at once, but released after fence 1.
    let bad = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
        rect: Rect::new(0, 0, 1, 1),
        resource_id: ResourceId(99),
    }))
    .with_fence(2);
    put(&mut d, &bad, 2);
    d.kick(Queue::Control).unwrap();
    let done = d.wait_n(2, T).unwrap();
    assert_eq!(done[0].tag, 1);
    let (hdr, resp) = done[1].response.clone().unwrap();
    assert_eq!(resp, Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID));
    assert_eq!(hdr.fence_id, 2);
}

#[test]
fn map_blob_must_be_page_aligned_inside_the_region_and_over_no_mapped_blob() {
    let (b, mut d) = DirectBackend::start(DirectOptions::default()).unwrap();
    let region = DirectOptions::default().blob_region;
    ctx_create(&mut d, 1);
    for (id, size) in [(7, 8192), (8, 8192), (9, 100), (10, 8192)] {
        create_host_blob(&mut d, 1, id, size);
    }
    let map = |id, offset| {
        Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: ResourceId(id),
            offset,
        }))
        .with_ctx(1)
    };
    let mapped = |d: &mut GpuDriver, req| matches!(call(d, req), Response::OkMapInfo { .. });
    let invalid = VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER;

    // Not on a page boundary: refused before the VMM hears of it.
    expect_err(&mut d, map(7, 0x10100), invalid);
    assert!(b.blob.mappings().is_empty());
    assert!(mapped(&mut d, map(7, 0x10000)));
    // Over blob 7's second page; reaching into its first; covering it.
    expect_err(&mut d, map(8, 0x11000), invalid);
    expect_err(&mut d, map(8, 0xf000), invalid);
    expect_err(&mut d, map(10, 0x10000), invalid);
    // Past the region's end, by bytes or by the last page.
    expect_err(&mut d, map(8, region - 4096), invalid);
    expect_err(&mut d, map(8, u64::MAX - 4095), invalid);
    assert_eq!(b.blob.mappings().len(), 1, "a refused map reached the VMM");
    // Right after blob 7; a short blob in the region's last page.
    assert!(mapped(&mut d, map(8, 0x12000)));
    assert!(mapped(&mut d, map(9, region - 4096)));
    // Once blob 7 is unmapped its range is free again.
    let unmap = Request::new(GpuCommand::ResourceUnmapBlob(ResourceRef {
        resource_id: ResourceId(7),
    }))
    .with_ctx(1);
    assert_eq!(call(&mut d, unmap), Response::OkNodata);
    assert!(mapped(&mut d, map(10, 0x10000)));
    let mut now: Vec<_> = b.blob.mappings().into_iter().collect();
    now.sort();
    assert_eq!(
        now,
        vec![(0x10000, 8192), (0x12000, 8192), (region - 4096, 100)]
    );
}

fn expect_err(d: &mut GpuDriver, req: Request, code: u32) {
    let r = call(d, req.clone());
    assert_eq!(r, Response::Err(code), "for {req:?}");
}

#[test]
fn stateful_rules_answer_their_error_codes() {
    let mut opts = DirectOptions::default();
    opts.config.memory_limit = 16 << 20;
    let (_b, mut d) = DirectBackend::start(opts).unwrap();
    let res = |id| ResourceId(id);
    let create = |id, w, h| {
        Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: ResourceId(id),
            format: Format::B8G8R8A8Unorm,
            width: w,
            height: h,
        }))
    };
    // Unknown resource.
    expect_err(
        &mut d,
        Request::new(GpuCommand::ResourceUnref(ResourceRef {
            resource_id: res(5),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    );
    // Resource id in use.
    assert_eq!(call(&mut d, create(1, 16, 16)), Response::OkNodata);
    expect_err(
        &mut d,
        create(1, 16, 16),
        VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    );
    // Rect outside the resource.
    expect_err(
        &mut d,
        Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
            rect: Rect::new(8, 8, 16, 16),
            offset: 0,
            resource_id: res(1),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Transfer without backing.
    expect_err(
        &mut d,
        Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
            rect: Rect::new(0, 0, 16, 16),
            offset: 0,
            resource_id: res(1),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Backing beyond guest memory.
    expect_err(
        &mut d,
        Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: res(1),
            entries: vec![MemEntry {
                addr: 1 << 40,
                length: 4096,
            }],
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Backing smaller than the transfer.
    let small = d.ram().alloc(64, 64).unwrap();
    assert_eq!(
        call(
            &mut d,
            Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
                resource_id: res(1),
                entries: vec![MemEntry {
                    addr: small.0,
                    length: 64,
                }],
            }))
        ),
        Response::OkNodata
    );
    expect_err(
        &mut d,
        Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
            rect: Rect::new(0, 0, 16, 16),
            offset: 0,
            resource_id: res(1),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Unknown context.
    expect_err(
        &mut d,
        submit(9, 0, false),
        VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
    );
    // Context id in use.
    ctx_create(&mut d, 3);
    expect_err(
        &mut d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: vec![],
            capset_id: 0,
        }))
        .with_ctx(3),
        VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID,
    );
    // Unsupported capset.
    expect_err(
        &mut d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: vec![],
            capset_id: 5,
        }))
        .with_ctx(4),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // A blob that is not mappable.
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: res(20),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(0).unwrap(),
            blob_id: 1,
            size: 4096,
            entries: vec![],
        }))
        .with_ctx(3),
    );
    assert_eq!(r, Response::OkNodata);
    expect_err(
        &mut d,
        Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: res(20),
            offset: 0,
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Unmapping what is not mapped.
    expect_err(
        &mut d,
        Request::new(GpuCommand::ResourceUnmapBlob(ResourceRef {
            resource_id: res(20),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
    );
    // Memory limit.
    expect_err(
        &mut d,
        create(30, 4096, 4096),
        VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY,
    );
    // Set scanout on a scanout that does not exist.
    expect_err(
        &mut d,
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect: Rect::new(0, 0, 16, 16),
            scanout_id: ScanoutId(5),
            resource_id: res(1),
        })),
        VIRTIO_GPU_RESP_ERR_INVALID_SCANOUT_ID,
    );
}

#[test]
fn malformed_bytes_get_errors_and_the_device_keeps_serving() {
    let (_b, mut d) = start();
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (vec![0u8; 3], VIRTIO_GPU_RESP_ERR_UNSPEC), // shorter than a header
        (
            {
                let mut h = Request::new(GpuCommand::GetDisplayInfo).to_bytes();
                h[0..4].copy_from_slice(&0x9999u32.to_le_bytes());
                h
            },
            VIRTIO_GPU_RESP_ERR_UNSPEC,
        ), // unknown type
        (
            {
                let mut b = Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
                    resource_id: ResourceId(1),
                    format: Format::B8G8R8A8Unorm,
                    width: 1,
                    height: 1,
                }))
                .to_bytes();
                b.truncate(b.len() - 4);
                b
            },
            VIRTIO_GPU_RESP_ERR_UNSPEC,
        ), // body cut short
    ];
    for (i, (bytes, code)) in cases.iter().enumerate() {
        d.submit_bytes(Queue::Control, bytes, i as u64).unwrap();
        d.kick(Queue::Control).unwrap();
        let c = d.wait_for(i as u64, T).unwrap();
        assert_eq!(ok(&c), &Response::Err(*code), "case {i}");
    }
    assert!(matches!(
        call(&mut d, Request::new(GpuCommand::GetDisplayInfo)),
        Response::OkDisplayInfo(_)
    ));
}

#[test]
fn cursor_queue_updates_reach_the_display_without_the_control_queue() {
    let (b, mut d) = start();
    ctx_create(&mut d, 1);
    // The control queue is stuck behind a hung fenced submit.
    put(&mut d, &submit(1, 0, true).with_fence(1), 1);
    d.kick(Queue::Control).unwrap();
    let mv = Request::new(GpuCommand::MoveCursor(CursorUpdate {
        pos: CursorPos {
            scanout_id: ScanoutId(0),
            x: 10,
            y: 20,
        },
        resource_id: ResourceId(0),
        hot_x: 0,
        hot_y: 0,
    }));
    d.call(Queue::Cursor, &mv, T).unwrap();
    let shown = b.display.snapshot();
    assert!(shown.cursor.contains(&gpu::device::CursorEvent::Move {
        scanout: 0,
        x: 10,
        y: 20
    }));
}

#[test]
fn metrics_report_per_context_fence_latency_and_commands_in_flight() {
    let (b, mut d) = start();
    ctx_create(&mut d, 4);
    put(
        &mut d,
        &submit(4, 0, false).with_ctx(4).with_ring(0).with_fence(1),
        1,
    );
    put(
        &mut d,
        &submit(4, 0, true).with_ctx(4).with_ring(1).with_fence(2),
        2,
    );
    d.kick(Queue::Control).unwrap();
    d.wait_for(1, T).unwrap();
    let text = b.device.metrics().unwrap();
    assert!(
        text.contains("gpu_reactor_fence_latency_seconds_count{ctx=\"4\"} 1"),
        "{text}"
    );
    assert!(text.contains("gpu_reactor_commands_in_flight 1"), "{text}");
    assert!(text.contains("gpu_reactor_contexts 1"), "{text}");
}

#[test]
fn a_context_past_its_in_flight_cap_still_runs_its_commands_in_order() {
    let (b, mut d) = start();
    ctx_create(&mut d, 1);
    let (w, h) = (8u32, 8u32);
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
            resource_id: ResourceId(9),
            format: Format::B8G8R8X8Unorm,
            width: w,
            height: h,
        }))
        .with_ctx(1),
    );
    assert_eq!(r, Response::OkNodata);
    let rect = Rect::new(0, 0, w, h);
    let r = call(
        &mut d,
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect,
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(9),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    // 300 draws (far past the per-context cap of commands a shard holds),
    // each painting its own colour, then a flush by the same context: the
    // last colour must be what is shown.
    for i in 1..=300u32 {
        let fill = gpu::render::sim::sim_submit_fill(0, false, 9, rect, 0xff00_0000 | i);
        put(
            &mut d,
            &Request::new(GpuCommand::Submit3d(Submit3d { data: fill })).with_ctx(1),
            u64::from(i),
        );
    }
    let flush = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
        rect,
        resource_id: ResourceId(9),
    }))
    .with_ctx(1)
    .with_fence(1);
    put(&mut d, &flush, 1000);
    d.kick(Queue::Control).unwrap();
    let done = d.wait_n(301, T).unwrap();
    assert!(done.iter().all(|c| ok(c) == &Response::OkNodata));
    let frame = &b.display.snapshot().frames[&0];
    let last = (0xff00_0000u32 | 300).to_le_bytes();
    assert!(
        frame.chunks(4).all(|px| px == last),
        "a draw ran out of order"
    );
}

/// A guest blob shown with SET_SCANOUT_BLOB: a flush reads the damaged
/// rectangle through the layout's offset and stride, from the guest pages.
#[test]
fn flush_of_a_guest_blob_scanout_reads_through_its_layout() {
    let (b, mut d) = start();
    let (w, h) = (16u32, 8u32);
    // Rows padded to 20 pixels, the image 256 bytes into the blob.
    let (stride, offset) = (20 * 4u32, 256u32);
    let size = u64::from(offset + stride * h);
    let pages = d.ram().alloc(size, 4096).unwrap();
    let bytes: Vec<u8> = (0..size).map(|i| (i * 13 % 251) as u8).collect();
    d.ram().memory().write_slice(&bytes, pages).unwrap();
    ctx_create(&mut d, 1);
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(9),
            blob_mem: BlobMem::Guest,
            blob_flags: BlobFlags::from_wire(0).unwrap(),
            blob_id: 0,
            size,
            entries: vec![MemEntry {
                addr: pages.0,
                length: size as u32,
            }],
        }))
        .with_ctx(1),
    );
    assert_eq!(r, Response::OkNodata);
    let layout = BlobScanoutLayout {
        width: w,
        height: h,
        format: Format::B8G8R8X8Unorm,
        strides: [stride, 0, 0, 0],
        offsets: [offset, 0, 0, 0],
    };
    let r = call(
        &mut d,
        Request::new(GpuCommand::SetScanoutBlob(SetScanoutBlob {
            rect: Rect::new(0, 0, w, h),
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(9),
            layout: Some(layout),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let damage = Rect::new(3, 2, 5, 4);
    let c = d
        .call(
            Queue::Control,
            &Request::new(GpuCommand::ResourceFlush(ResourceFlush {
                rect: damage,
                resource_id: ResourceId(9),
            }))
            .with_fence(1),
            T,
        )
        .unwrap();
    assert_eq!(ok(&c), &Response::OkNodata);
    let shown = b.display.snapshot();
    let frame = &shown.frames[&0];
    for y in 0..h {
        for x in 0..w {
            let at = ((y * w + x) * 4) as usize;
            let inside = (3..8).contains(&x) && (2..6).contains(&y);
            let want = if inside {
                let src = (offset + y * stride + x * 4) as usize;
                &bytes[src..src + 4]
            } else {
                &[0u8; 4][..]
            };
            assert_eq!(&frame[at..at + 4], want, "pixel ({x}, {y})");
        }
    }
    // A layout that does not fit the blob is refused.
    let r = call(
        &mut d,
        Request::new(GpuCommand::SetScanoutBlob(SetScanoutBlob {
            rect: Rect::new(0, 0, w, h),
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(9),
            layout: Some(BlobScanoutLayout {
                offsets: [offset + stride, 0, 0, 0],
                ..layout
            }),
        })),
    );
    assert!(matches!(r, Response::Err(_)), "{r:?}");
}

/// Per-context metric series in Prometheus text (one `_count` line each).
fn context_series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("gpu_reactor_fence_latency_seconds_count{"))
        .collect()
}

/// 50 000 fenced commands naming made-up contexts, rings and types (as
/// issue 17 found: every one made a fence timeline, a latency histogram
/// and a type counter that were never freed). Every command is answered,
/// with its fence; state stays bounded by what exists; a reset goes back
/// to the state of a fresh device.
#[test]
fn hostile_fenced_commands_with_made_up_ids_are_answered_and_create_no_state() {
    let (b, mut d) = start();
    let fresh = b.device.stats().unwrap();
    assert_eq!((fresh.fence_timelines, fresh.context_series), (0, 0));
    let fresh_text = b.device.metrics().unwrap();
    let live = 1..=4u32;
    for ctx in live.clone() {
        ctx_create(&mut d, ctx);
    }
    let mut r = Rng(0x5eed_1517);
    let total = 50_000u64;
    let batch = 500u64;
    let mut fence = 0u64;
    let mut answered = 0u64;
    for start in (0..total).step_by(batch as usize) {
        // tag → (fence id, the error the device must answer, if any)
        let mut want = std::collections::HashMap::new();
        for tag in start..start + batch {
            fence += 1;
            let ctx = match r.below(10) {
                0 | 1 => 1 + r.below(4) as u32,
                2 => 0,
                _ => 5 + r.next_u64() as u32 % (u32::MAX - 5),
            };
            let ring = r.next_u64() as u8;
            let with_ring = r.below(10) < 8;
            let unknown_type = match r.below(4) {
                0 => Some(0xffff_ffffu32),
                1 => Some(0x1_0000 + tag as u32),
                _ => None,
            };
            let cmd = if r.below(2) == 0 {
                GpuCommand::GetDisplayInfo
            } else {
                GpuCommand::Submit3d(Submit3d {
                    data: sim_submit(0, false),
                })
            };
            let is_submit = matches!(cmd, GpuCommand::Submit3d(_));
            let mut req = Request::new(cmd).with_ctx(ctx).with_fence(fence);
            if with_ring {
                req = req.with_ring(ring);
            }
            let mut bytes = req.to_bytes();
            if let Some(t) = unknown_type {
                bytes[..4].copy_from_slice(&t.to_le_bytes());
            }
            let ctx_live = live.contains(&ctx);
            let code = if unknown_type.is_some() {
                Some(VIRTIO_GPU_RESP_ERR_UNSPEC)
            } else if with_ring && ring > 63 {
                Some(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER)
            } else if (with_ring && ctx != 0 && !ctx_live) || (is_submit && !ctx_live) {
                Some(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)
            } else {
                None
            };
            want.insert(tag, (fence, code));
            d.submit_bytes(Queue::Control, &bytes, tag).unwrap();
        }
        d.kick(Queue::Control).unwrap();
        for c in d.wait_n(batch as usize, T).unwrap() {
            let (hdr, resp) = c.response.clone().unwrap();
            let (fence_id, code) = want[&c.tag];
            assert_eq!(
                (hdr.flags & VIRTIO_GPU_FLAG_FENCE, hdr.fence_id),
                (VIRTIO_GPU_FLAG_FENCE, fence_id),
                "tag {}: fence not echoed",
                c.tag
            );
            match code {
                Some(code) => assert_eq!(resp, Response::Err(code), "tag {}", c.tag),
                None => assert!(!matches!(resp, Response::Err(_)), "tag {}: {resp:?}", c.tag),
            }
            answered += 1;
        }
    }
    assert_eq!(answered, total);
    assert_eq!(d.in_flight(), 0);
    let s = b.device.stats().unwrap();
    assert_eq!(s.fences_pending, 0);
    // The global timeline, 64 rings of each live context and of context 0.
    assert!(
        s.fence_timelines <= 1 + 64 * (live.clone().count() as u64 + 1),
        "{s:?}"
    );
    assert!(s.context_series <= 1 + live.clone().count() as u64, "{s:?}");
    let text = b.device.metrics().unwrap();
    assert!(
        text.len() < 64 << 10,
        "Prometheus text of {} bytes, {} lines",
        text.len(),
        text.lines().count()
    );
    assert!(
        context_series(&text).len() <= 5,
        "{:?}",
        context_series(&text)
    );

    // Destroying a context takes its timelines and its series with it.
    let destroy = Request::new(GpuCommand::CtxDestroy).with_ctx(4);
    assert_eq!(call(&mut d, destroy), Response::OkNodata);
    let after_destroy = b.device.stats().unwrap();
    assert!(
        after_destroy.fence_timelines <= 1 + 64 * 4,
        "{after_destroy:?}"
    );
    assert!(!b.device.metrics().unwrap().contains("ctx=\"4\""));

    // A reset leaves what a fresh device has (context 0's series aside).
    d = b.reset(d).unwrap();
    let s = b.device.stats().unwrap();
    assert_eq!((s.fence_timelines, s.contexts, s.fences_pending), (0, 0, 0));
    assert!(s.context_series <= 1, "{s:?}");
    let text = b.device.metrics().unwrap();
    assert!(
        context_series(&text)
            .iter()
            .all(|l| l.contains("{ctx=\"0\"}")),
        "{:?}",
        context_series(&text)
    );
    // One line per command type seen and context 0's histogram at most.
    assert!(
        text.lines().count() <= fresh_text.lines().count() + 27 + 16,
        "{text}"
    );
    // And the device still serves rings of a new context.
    ctx_create(&mut d, 1);
    let c = d
        .call(
            Queue::Control,
            &submit(1, 0, false).with_ring(3).with_fence(1),
            T,
        )
        .unwrap();
    assert_eq!(ok(&c), &Response::OkNodata);
}

/// A fenced command refused for its ring is still released behind the
/// fences of that timeline while its destroyed context drains.
#[test]
fn a_refused_fence_on_a_draining_timeline_waits_for_the_fences_before_it() {
    let (_b, mut d) = start();
    ctx_create(&mut d, 1);
    put(
        &mut d,
        &submit(1, 2000, false).with_ring(2).with_fence(1),
        1,
    );
    put(&mut d, &Request::new(GpuCommand::CtxDestroy).with_ctx(1), 2);
    let late = Request::new(GpuCommand::GetDisplayInfo)
        .with_ctx(1)
        .with_ring(2)
        .with_fence(3);
    put(&mut d, &late, 3);
    // Nothing before it on its (made-up) ring: answered at once.
    let other = Request::new(GpuCommand::GetDisplayInfo)
        .with_ctx(1)
        .with_ring(5)
        .with_fence(4);
    put(&mut d, &other, 4);
    d.kick(Queue::Control).unwrap();
    let done = d.wait_n(4, T).unwrap();
    let order: Vec<u64> = done.iter().map(|c| c.tag).collect();
    let at = |tag| order.iter().position(|&t| t == tag).unwrap();
    assert!(at(1) < at(3), "the refused fence passed fence 1: {order:?}");
    assert!(at(4) < at(1), "nothing was before it on ring 5: {order:?}");
    for tag in [3, 4] {
        assert_eq!(
            ok(&done[at(tag)]),
            &Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID)
        );
    }
}

/// Collects what a `tracing` fmt subscriber writes.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// 10 000 chains whose response buffer is outside guest memory: each comes
/// back empty, and the host log gets a few lines per second for them, not
/// one line each.
#[test]
fn ten_thousand_unusable_chains_write_a_bounded_number_of_log_lines() {
    let log = LogCapture::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The shards log from their own threads: a global subscriber (this is
    // the only test that sets one).
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let (_b, mut d) = start();
    let started = std::time::Instant::now();
    let bytes = Request::new(GpuCommand::GetDisplayInfo).to_bytes();
    let total = 10_000u64;
    for start in (0..total).step_by(500) {
        for tag in start..start + 500 {
            d.submit_unusable(Queue::Control, &bytes, GuestAddress(1 << 44), tag)
                .unwrap();
        }
        d.kick(Queue::Control).unwrap();
        for c in d.wait_n(500, T).unwrap() {
            assert!(c.response.is_err(), "an unusable chain was answered");
        }
    }
    let intervals = started.elapsed().as_secs() + 1;
    assert!(matches!(
        call(&mut d, Request::new(GpuCommand::GetDisplayInfo)),
        Response::OkDisplayInfo(_)
    ));
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines = |what: &str| text.lines().filter(|l| l.contains(what)).count() as u64;
    let per_interval = u64::from(gpu::log_limit::LINES_PER_INTERVAL);
    let chains = lines("unusable descriptor chain");
    assert!(
        (1..=per_interval * intervals).contains(&chains),
        "{chains} lines for {total} chains in {intervals} intervals"
    );
    // One count per later interval at most (the intake sites').
    let counts = text
        .lines()
        .filter(|l| l.contains("similar lines suppressed") && l.contains("intake.rs"))
        .count() as u64;
    assert!(counts < intervals, "{counts} count lines");
}
