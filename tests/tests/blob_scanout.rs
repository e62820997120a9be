//! A host blob shown with SET_SCANOUT_BLOB, over vhost-user: the guest
//! writes pixels through the mapping the VMM made of the blob (MAP_BLOB,
//! SHMEM_MAP), and a flush brings them to the VMM's display through the
//! layout's offset and stride.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::protocol::wire::*;
use gpu::protocol::*;
use gpu::render::sim::SIM_CAPSET_ID;
use loadgen::driver::{GpuDriver, Queue};
use loadgen::frontend::vhost::VhostFrontend;
use loadgen::frontend::GuestRam;
use loadgen::run;
use loadgen::scenario::Plan;

const T: Duration = Duration::from_secs(10);

fn call(d: &mut GpuDriver, req: Request) -> Response {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap().1
}

#[test]
fn flush_of_a_host_blob_scanout_brings_the_mapped_pixels_to_the_vmm() {
    let gpu = Arc::new(gpu::vhost::Backend::start(gpu::vhost::BackendOptions::default()).unwrap());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let serving = {
        let gpu = gpu.clone();
        std::thread::spawn(move || {
            let _ = gpu.serve_stream(theirs);
        })
    };
    let (w, h) = (32u32, 16u32);
    let plan = Plan {
        desktops: 1,
        width: w,
        height: h,
        ..Plan::default()
    };
    let mut opts = run::vhost_options(&plan);
    opts.display.framebuffers = true;
    let ram = GuestRam::new(64 << 20).unwrap();
    let (frontend, mut d) = VhostFrontend::from_stream(ours, ram, opts).unwrap();

    let r = call(
        &mut d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"blob".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(1),
    );
    assert_eq!(r, Response::OkNodata);
    let size = 64 << 10;
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(9),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap(),
            blob_id: 9,
            size,
            entries: vec![],
        }))
        .with_ctx(1),
    );
    assert_eq!(r, Response::OkNodata);
    let at = 0x10_0000;
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: ResourceId(9),
            offset: at,
        }))
        .with_ctx(1),
    );
    assert!(matches!(r, Response::OkMapInfo { .. }), "{r:?}");

    // The guest draws through its mapping: rows of 40 pixels, 512 bytes in.
    let (stride, offset) = (40 * 4u32, 512u32);
    let bytes: Vec<u8> = (0..stride * h).map(|i| (i * 29 % 253) as u8).collect();
    let region = frontend.shmem_region().unwrap().clone();
    region.write(at + u64::from(offset), &bytes).unwrap();

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
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceFlush(ResourceFlush {
            rect: Rect::new(0, 0, w, h),
            resource_id: ResourceId(9),
        }))
        .with_fence(1),
    );
    assert_eq!(r, Response::OkNodata);

    // The update travels after the fence: wait for it.
    let deadline = Instant::now() + T;
    while frontend.display_stats().updates == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let fb = frontend.display().framebuffer(0).unwrap();
    assert_eq!((fb.width, fb.height), (w, h));
    for y in 0..h {
        let row = &fb.pixels[(y * w * 4) as usize..((y + 1) * w * 4) as usize];
        let src = (y * stride) as usize;
        assert_eq!(row, &bytes[src..src + (w * 4) as usize], "row {y}");
    }
    drop(frontend);
    serving.join().unwrap();
}
