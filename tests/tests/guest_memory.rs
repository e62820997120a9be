//! A hostile guest against the device's memory (issue 17, findings 1 and 3):
//! sizes that overflow or ask for absurd amounts are refused with an error
//! response, never a panic or an abort (these tests build in debug, where
//! an unchecked multiplication panics), and every class of host memory a
//! guest can make the device hold is charged to its budget
//! (`DeviceConfig::memory_limit`, the daemon's `--max-guest-memory`).

use std::time::Duration;

use gpu::device::budget::{ATTACHMENT_BYTES, BACKING_ENTRY_BYTES, CONTEXT_BYTES, RESOURCE_BYTES};
use gpu::protocol::wire::*;
use gpu::protocol::*;
use gpu::render::sim::SIM_CAPSET_ID;
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{GpuDriver, Queue};

const T: Duration = Duration::from_secs(10);

fn call(d: &mut GpuDriver, req: Request) -> Response {
    let c = d.call(Queue::Control, &req, T).unwrap();
    c.response.unwrap().1
}

fn ctx_create(d: &mut GpuDriver, ctx: u32) {
    let r = call(
        d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"hostile".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
}

#[allow(clippy::too_many_arguments)]
fn create_3d(
    ctx: u32,
    id: u32,
    target: u32,
    width: u32,
    height: u32,
    depth: u32,
    array_size: u32,
) -> Request {
    Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: ResourceId(id),
        target,
        format: 2,
        bind: 2,
        width,
        height,
        depth,
        array_size,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }))
    .with_ctx(ctx)
}

fn is_refusal(r: &Response) -> bool {
    matches!(
        r,
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER | VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)
    )
}

#[test]
fn create_3d_sizes_that_overflow_or_reserve_gigabytes_are_refused() {
    let (_b, mut d) = DirectBackend::start(DirectOptions::default()).unwrap();
    ctx_create(&mut d, 1);
    for (w, h, depth, layers) in [
        // 65536^3 * 16384 * 4 bytes: overflows u64.
        (65536, 65536, 65536, 16384),
        // 16384^2 * 16 * 2^30 * 4 = 2^64: wrapped to a charge of 0.
        (16384, 16384, 16, 1 << 30),
    ] {
        let r = call(&mut d, create_3d(1, 7, 2, w, h, depth, layers));
        assert!(is_refusal(&r), "{w}x{h}x{depth}[{layers}]: {r:?}");
    }
    // The device is still serving, and id 7 was never taken.
    assert_eq!(
        call(&mut d, create_3d(1, 7, 2, 64, 64, 1, 1)),
        Response::OkNodata
    );
}

// ---- Finding 3: the guest's memory budget, one class at a time ----

const MIB: u64 = 1 << 20;

/// A device whose guest may hold `budget` bytes, with context 1 (the
/// hostile one) and context 2 (the one that must keep being served).
fn start_with_budget(budget: u64) -> (DirectBackend, GpuDriver) {
    let mut opts = DirectOptions::default();
    opts.config.memory_limit = budget;
    let (b, mut d) = DirectBackend::start(opts).unwrap();
    ctx_create(&mut d, 1);
    ctx_create(&mut d, 2);
    (b, d)
}

fn oom(r: &Response) -> bool {
    *r == Response::Err(VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)
}

/// Context 2's fenced command (a submit, which holds no memory) still
/// completes: the refusals cost the device nothing.
fn other_context_is_served(d: &mut GpuDriver) {
    let submit = Request::new(GpuCommand::Submit3d(Submit3d { data: vec![] }))
        .with_ctx(2)
        .with_ring(0)
        .with_fence(1 << 40);
    let c = d.call(Queue::Control, &submit, T).unwrap();
    assert_eq!(c.response.unwrap().1, Response::OkNodata);
}

/// Bytes charged to the guest once the device has let go of what it
/// freed (the shards give back a command's buffers after answering it, and
/// a reset's work after `Device::reset` returns): polled up to `T`.
fn charged_settles_to(b: &DirectBackend, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + T;
    loop {
        let now = b.device.stats().unwrap().guest_memory_bytes;
        if now == want || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn create_2d(ctx: u32, id: u32, width: u32, height: u32) -> Request {
    Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
        resource_id: ResourceId(id),
        format: Format::B8G8R8X8Unorm,
        width,
        height,
    }))
    .with_ctx(ctx)
}

fn attach(id: u32, entries: Vec<MemEntry>) -> Request {
    Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
        resource_id: ResourceId(id),
        entries,
    }))
}

fn unref(id: u32) -> Request {
    Request::new(GpuCommand::ResourceUnref(ResourceRef {
        resource_id: ResourceId(id),
    }))
}

/// Two contexts' fixed charges: what every test's device starts with.
const TWO_CONTEXTS: u64 = 2 * CONTEXT_BYTES;

#[test]
fn a_2d_image_past_the_budget_is_out_of_memory() {
    let (b, mut d) = start_with_budget(8 * MIB);
    // 1024x1024 at 4 bytes: 4 MiB fits once, not twice.
    assert_eq!(
        call(&mut d, create_2d(1, 1, 1024, 1024)),
        Response::OkNodata
    );
    assert!(oom(&call(&mut d, create_2d(1, 2, 1024, 1024))));
    other_context_is_served(&mut d);
    assert_eq!(
        charged_settles_to(&b, TWO_CONTEXTS + 4 * MIB + RESOURCE_BYTES),
        TWO_CONTEXTS + 4 * MIB + RESOURCE_BYTES
    );
}

#[test]
fn a_3d_image_is_charged_by_format_mips_samples_and_layers() {
    // 1024x1024 RGBA8 is 4 MiB: it fits in 5 MiB; with any of these it
    // does not (4 bytes a pixel alone would have let each through).
    let (_b, mut d) = start_with_budget(5 * MIB);
    let tex = |id, target, format, array_size, last_level, nr_samples| {
        Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
            resource_id: ResourceId(id),
            target,
            format,
            bind: 2,
            width: 1024,
            height: 1024,
            depth: 1,
            array_size,
            last_level,
            nr_samples,
            flags: 0,
        }))
        .with_ctx(1)
    };
    let plain = tex(1, PIPE_TEXTURE_2D, 67, 1, 0, 0);
    assert_eq!(call(&mut d, plain), Response::OkNodata);
    assert_eq!(call(&mut d, unref(1)), Response::OkNodata);
    for (what, req) in [
        ("R32G32B32A32_FLOAT", tex(2, PIPE_TEXTURE_2D, 31, 1, 0, 0)),
        ("a full mip chain", tex(3, PIPE_TEXTURE_2D, 67, 1, 10, 0)),
        ("2 samples", tex(4, PIPE_TEXTURE_2D, 67, 1, 0, 2)),
        ("2 layers", tex(5, PIPE_TEXTURE_2D_ARRAY, 67, 2, 0, 0)),
    ] {
        assert!(oom(&call(&mut d, req)), "{what}");
        other_context_is_served(&mut d);
    }
}

#[test]
fn resources_and_contexts_cost_a_fixed_charge_which_caps_their_number() {
    let budget = MIB;
    let (b, mut d) = start_with_budget(budget);
    let each = RESOURCE_BYTES + 4;
    let fit = (budget - TWO_CONTEXTS) / each;
    let mut created = 0;
    for id in 1..=2 * fit as u32 {
        match call(&mut d, create_2d(1, id, 1, 1)) {
            Response::OkNodata => created += 1,
            r => assert!(oom(&r), "{r:?}"),
        }
    }
    assert_eq!(created, fit, "1x1 resources in {budget} bytes");
    other_context_is_served(&mut d);
    // Contexts: what is left holds none.
    let r = call(
        &mut d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: vec![],
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(3),
    );
    assert!(oom(&r), "{r:?}");
    for id in 1..=fit as u32 {
        assert_eq!(call(&mut d, unref(id)), Response::OkNodata);
    }
    // Freed, the same budget holds (budget - 2 contexts) / CONTEXT_BYTES more.
    let contexts = (budget - TWO_CONTEXTS) / CONTEXT_BYTES;
    let mut made = 0;
    for ctx in 3..3 + 2 * contexts as u32 {
        let r = call(
            &mut d,
            Request::new(GpuCommand::CtxCreate(CtxCreate {
                debug_name: vec![],
                capset_id: SIM_CAPSET_ID as u8,
            }))
            .with_ctx(ctx),
        );
        match r {
            Response::OkNodata => made += 1,
            r => assert!(oom(&r), "{r:?}"),
        }
    }
    assert_eq!(made, contexts);
    other_context_is_served(&mut d);
    assert_eq!(
        charged_settles_to(&b, budget),
        budget - (budget - TWO_CONTEXTS) % CONTEXT_BYTES
    );
}

#[test]
fn attaching_resources_to_contexts_is_charged_and_refused_past_the_budget() {
    // 100 images; room for 150 attachments, not the 200 of attaching each
    // to both contexts.
    let budget = TWO_CONTEXTS + 100 * (RESOURCE_BYTES + 4) + 150 * ATTACHMENT_BYTES;
    let (b, mut d) = start_with_budget(budget);
    let ctx_attach = |ctx, id| {
        Request::new(GpuCommand::CtxAttachResource(ResourceRef {
            resource_id: ResourceId(id),
        }))
        .with_ctx(ctx)
    };
    for id in 1..=100 {
        assert_eq!(call(&mut d, create_2d(0, id, 1, 1)), Response::OkNodata);
        assert_eq!(call(&mut d, ctx_attach(1, id)), Response::OkNodata);
    }
    let attached = (1..=100)
        .filter(|&id| call(&mut d, ctx_attach(2, id)) == Response::OkNodata)
        .count();
    assert_eq!(attached, 50);
    other_context_is_served(&mut d);
    // Detaching (or destroying the resource) gives it back.
    for id in 1..=50 {
        let detach = Request::new(GpuCommand::CtxDetachResource(ResourceRef {
            resource_id: ResourceId(id),
        }))
        .with_ctx(1);
        assert_eq!(call(&mut d, detach), Response::OkNodata);
    }
    for id in 51..=100 {
        assert_eq!(call(&mut d, ctx_attach(2, id)), Response::OkNodata);
    }
    assert_eq!(charged_settles_to(&b, budget), budget);
    for id in 1..=100 {
        assert_eq!(call(&mut d, unref(id)), Response::OkNodata);
    }
    assert_eq!(charged_settles_to(&b, TWO_CONTEXTS), TWO_CONTEXTS);
}

/// The case: 2000 x (a 1x1 image + a backing of 16384 one-byte
/// entries) was all accepted, 8000 bytes charged and 780 MB resident.
#[test]
fn two_thousand_one_pixel_images_with_16384_entry_backings_are_refused() {
    let budget = 64 * MIB;
    let (b, mut d) = start_with_budget(budget);
    let page = d.ram().alloc(4096, 4096).unwrap();
    let entries = vec![
        MemEntry {
            addr: page.0,
            length: 1,
        };
        16384
    ];
    let (mut attached, mut refused) = (0u64, 0u64);
    for id in 1..=2000 {
        let created = call(&mut d, create_2d(1, id, 1, 1));
        if oom(&created) {
            refused += 1;
            continue;
        }
        assert_eq!(created, Response::OkNodata);
        match call(&mut d, attach(id, entries.clone())) {
            Response::OkNodata => attached += 1,
            r => {
                assert!(oom(&r), "{r:?}");
                refused += 1;
            }
        }
    }
    let per = 16384 * BACKING_ENTRY_BYTES + RESOURCE_BYTES + 4;
    assert!(refused > 0 && attached > 0);
    assert!(attached * per <= budget, "{attached} attached");
    assert!(
        (attached + 2) * per > budget - TWO_CONTEXTS,
        "{attached} attached"
    );
    other_context_is_served(&mut d);
    assert!(b.device.stats().unwrap().guest_memory_bytes <= budget);
}

#[test]
fn a_backing_is_charged_while_attached_and_given_back_when_detached() {
    let (b, mut d) = start_with_budget(4 * MIB);
    let page = d.ram().alloc(4096, 4096).unwrap();
    let entries = |n| {
        vec![
            MemEntry {
                addr: page.0,
                length: 1
            };
            n
        ]
    };
    assert_eq!(call(&mut d, create_2d(1, 1, 1, 1)), Response::OkNodata);
    let base = TWO_CONTEXTS + RESOURCE_BYTES + 4;
    assert_eq!(call(&mut d, attach(1, entries(1000))), Response::OkNodata);
    assert_eq!(
        charged_settles_to(&b, base + 1000 * BACKING_ENTRY_BYTES),
        base + 1000 * BACKING_ENTRY_BYTES
    );
    let detach = Request::new(GpuCommand::ResourceDetachBacking(ResourceRef {
        resource_id: ResourceId(1),
    }));
    assert_eq!(call(&mut d, detach), Response::OkNodata);
    assert_eq!(charged_settles_to(&b, base), base);
    // 16384 entries are 1 MiB: four do not fit in 4 MiB.
    let mut ok = 0;
    for id in 1..=4 {
        if id > 1 {
            assert_eq!(call(&mut d, create_2d(1, id, 1, 1)), Response::OkNodata);
        }
        match call(&mut d, attach(id, entries(16384))) {
            Response::OkNodata => ok += 1,
            r => assert!(oom(&r), "{r:?}"),
        }
    }
    assert_eq!(ok, 3);
    other_context_is_served(&mut d);
}

fn create_blob(ctx: u32, id: u32, blob_mem: BlobMem, size: u64, entries: Vec<MemEntry>) -> Request {
    Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
        resource_id: ResourceId(id),
        blob_mem,
        blob_flags: BlobFlags::from_wire(VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap(),
        blob_id: u64::from(id),
        size,
        entries,
    }))
    .with_ctx(ctx)
}

#[test]
fn a_host_blob_past_the_budget_is_out_of_memory() {
    let (b, mut d) = start_with_budget(16 * MIB);
    let blob = |id, size| create_blob(1, id, BlobMem::Host3d, size, vec![]);
    assert_eq!(call(&mut d, blob(1, 8 * MIB)), Response::OkNodata);
    assert!(oom(&call(&mut d, blob(2, 8 * MIB))));
    other_context_is_served(&mut d);
    assert_eq!(call(&mut d, unref(1)), Response::OkNodata);
    assert_eq!(call(&mut d, blob(2, 8 * MIB)), Response::OkNodata);
    // A host blob is attached to the context that made it.
    let want = TWO_CONTEXTS + 8 * MIB + RESOURCE_BYTES + ATTACHMENT_BYTES;
    assert_eq!(charged_settles_to(&b, want), want);
}

#[test]
fn guest_blobs_are_charged_their_entries_and_refused_past_the_budget() {
    let (b, mut d) = start_with_budget(4 * MIB);
    // A guest blob's pages are the guest's RAM; its 16384 entries are ours.
    let page = d.ram().alloc(4096, 4096).unwrap();
    let entries = vec![
        MemEntry {
            addr: page.0,
            length: 1
        };
        16384
    ];
    let mut ok = 0;
    for id in 1..=4 {
        match call(
            &mut d,
            create_blob(1, id, BlobMem::Guest, 16384, entries.clone()),
        ) {
            Response::OkNodata => ok += 1,
            r => assert!(oom(&r), "{r:?}"),
        }
    }
    assert_eq!(ok, 3, "1 MiB of entries each in 4 MiB");
    other_context_is_served(&mut d);
    let want = TWO_CONTEXTS + 3 * (16384 * BACKING_ENTRY_BYTES + RESOURCE_BYTES);
    assert_eq!(charged_settles_to(&b, want), want);
}

#[test]
fn submit_buffers_are_charged_while_held_and_given_back_once_run() {
    let (b, mut d) = start_with_budget(2 * MIB);
    // More than the budget has left: refused at intake.
    let big = Request::new(GpuCommand::Submit3d(Submit3d {
        data: vec![0; (2 * MIB) as usize],
    }))
    .with_ctx(1);
    assert!(oom(&call(&mut d, big)));
    other_context_is_served(&mut d);
    // A buffer that fits is given back once the renderer ran it, even
    // while its fence never signals (a hung ring keeps only the reply).
    let mut hung = gpu::render::sim::sim_submit(0, true);
    hung.resize((MIB) as usize, 0);
    let req = Request::new(GpuCommand::Submit3d(Submit3d { data: hung }))
        .with_ctx(1)
        .with_ring(0)
        .with_fence(7);
    d.submit(Queue::Control, &req, 7).unwrap();
    d.kick(Queue::Control).unwrap();
    assert_eq!(charged_settles_to(&b, TWO_CONTEXTS), TWO_CONTEXTS);
    assert_eq!(d.in_flight(), 1, "its fence is still pending");
    other_context_is_served(&mut d);
}

#[test]
fn a_flush_whose_pixel_buffer_does_not_fit_is_out_of_memory() {
    let (b, mut d) = start_with_budget(6 * MIB);
    assert_eq!(
        call(&mut d, create_2d(1, 1, 1024, 1024)),
        Response::OkNodata
    );
    let rect = Rect::new(0, 0, 1024, 1024);
    let show = Request::new(GpuCommand::SetScanout(SetScanout {
        rect,
        scanout_id: ScanoutId(0),
        resource_id: ResourceId(1),
    }));
    assert_eq!(call(&mut d, show), Response::OkNodata);
    let flush = |rect| {
        Request::new(GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: ResourceId(1),
        }))
    };
    // The whole image is 4 MiB more than the 2 MiB left.
    assert!(oom(&call(&mut d, flush(rect))));
    other_context_is_served(&mut d);
    // A quarter of it fits, and is given back once the display has it.
    assert_eq!(
        call(&mut d, flush(Rect::new(0, 0, 512, 512))),
        Response::OkNodata
    );
    let want = TWO_CONTEXTS + 4 * MIB + RESOURCE_BYTES;
    assert_eq!(charged_settles_to(&b, want), want);
    assert!(b.display.snapshot().frames.contains_key(&0));
}

/// Everything a guest can hold at once: images, a backing, blobs of both
/// kinds, contexts, a held submit.
fn create_one_of_everything(d: &mut GpuDriver) {
    let page = d.ram().alloc(4096, 4096).unwrap();
    let entries = |n| {
        vec![
            MemEntry {
                addr: page.0,
                length: 1
            };
            n
        ]
    };
    assert_eq!(call(d, create_2d(1, 1, 256, 256)), Response::OkNodata);
    assert_eq!(call(d, attach(1, entries(100))), Response::OkNodata);
    assert_eq!(
        call(d, create_3d(1, 2, 2, 64, 64, 1, 1)),
        Response::OkNodata
    );
    assert_eq!(
        call(d, create_blob(1, 3, BlobMem::Host3d, MIB, vec![])),
        Response::OkNodata
    );
    assert_eq!(
        call(d, create_blob(2, 4, BlobMem::Guest, 100, entries(100))),
        Response::OkNodata
    );
    let hung = Request::new(GpuCommand::Submit3d(Submit3d {
        data: gpu::render::sim::sim_submit(0, true),
    }))
    .with_ctx(1)
    .with_ring(0)
    .with_fence(99);
    d.submit(Queue::Control, &hung, 99).unwrap();
    d.kick(Queue::Control).unwrap();
}

#[test]
fn the_budget_returns_to_zero_once_everything_is_destroyed() {
    let (b, mut d) = start_with_budget(64 * MIB);
    create_one_of_everything(&mut d);
    assert!(b.device.stats().unwrap().guest_memory_bytes > MIB);
    for id in 1..=4 {
        assert_eq!(call(&mut d, unref(id)), Response::OkNodata);
    }
    for ctx in [1, 2] {
        let destroy = Request::new(GpuCommand::CtxDestroy).with_ctx(ctx);
        assert_eq!(call(&mut d, destroy), Response::OkNodata);
    }
    assert_eq!(charged_settles_to(&b, 0), 0);
}

#[test]
fn the_budget_returns_to_zero_after_a_reset() {
    let (b, mut d) = start_with_budget(64 * MIB);
    create_one_of_everything(&mut d);
    assert!(b.device.stats().unwrap().guest_memory_bytes > MIB);
    let mut d = b.reset(d).unwrap();
    assert_eq!(charged_settles_to(&b, 0), 0);
    // And the new driver has the whole budget again.
    ctx_create(&mut d, 1);
    assert_eq!(
        call(&mut d, create_2d(1, 1, 2048, 2048)),
        Response::OkNodata
    );
}

#[test]
fn the_budget_in_use_is_a_metric() {
    let (b, mut d) = start_with_budget(8 * MIB);
    assert_eq!(call(&mut d, create_2d(1, 1, 16, 16)), Response::OkNodata);
    let want = TWO_CONTEXTS + 16 * 16 * 4 + RESOURCE_BYTES;
    charged_settles_to(&b, want);
    let text = b.device.metrics().unwrap();
    assert!(
        text.contains(&format!("gpu_reactor_guest_memory_bytes {want}\n")),
        "{text}"
    );
}
