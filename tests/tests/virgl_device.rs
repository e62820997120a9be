//! The virgl renderer behind the whole device (feature `virgl`): a context
//! renders on llvmpipe, its fence completes through virglrenderer's poll fd
//! on the render shard, and RESOURCE_FLUSH reads the pixels back to the
//! display.
#![cfg(feature = "virgl")]

use std::sync::Arc;
use std::time::Duration;

use gpu::protocol::wire::{VIRTIO_GPU_CAPSET_VIRGL2, VIRTIO_GPU_FLAG_FENCE};
use gpu::protocol::*;
use gpu::render::virgl::{clear_stream, VirglFactory, VIRGL_FORMAT_R8G8B8A8_UNORM};
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{GpuDriver, Queue};

const T: Duration = Duration::from_secs(20);
const SIZE: u32 = 64;
/// `PIPE_TEXTURE_2D`, `PIPE_BIND_RENDER_TARGET | PIPE_BIND_SAMPLER_VIEW`.
const TARGET_2D: u32 = 2;
const BIND: u32 = 1 << 1 | 1 << 3;

fn call(d: &mut GpuDriver, req: Request) -> (CtrlHeader, Response) {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap()
}

#[test]
fn a_virgl_clear_is_fenced_by_the_poll_fd_read_back_by_transfer_from_host_and_flushed() {
    let (b, mut d) = DirectBackend::start(DirectOptions {
        renderer: Arc::new(VirglFactory::new().expect("virgl starts headless")),
        ..DirectOptions::default()
    })
    .unwrap();
    // The capset the guest's Mesa would ask for.
    let ctx = 1;
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"gnome-shell".to_vec(),
            capset_id: VIRTIO_GPU_CAPSET_VIRGL2 as u8,
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
            resource_id: ResourceId(5),
            target: TARGET_2D,
            format: VIRGL_FORMAT_R8G8B8A8_UNORM,
            bind: BIND,
            width: SIZE,
            height: SIZE,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::CtxAttachResource(ResourceRef {
            resource_id: ResourceId(5),
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
    let (hdr, r) = call(
        &mut d,
        Request::new(GpuCommand::Submit3d(Submit3d {
            data: clear_stream(5, [0.4, 0.0, 1.0, 1.0]),
        }))
        .with_ctx(ctx)
        .with_ring(0)
        .with_fence(7),
    );
    assert_eq!(r, Response::OkNodata);
    assert_ne!(hdr.flags & VIRTIO_GPU_FLAG_FENCE, 0);
    assert_eq!(hdr.fence_id, 7);
    let rect = Rect::new(0, 0, SIZE, SIZE);
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect,
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(5),
        })),
    );
    // The render target is the guest's framebuffer: it can be scanned out.
    assert_eq!(r, Response::OkNodata);
    // The guest reads the rendering back into its own pages
    // (TRANSFER_FROM_HOST_3D into the resource's backing).
    let len = SIZE * SIZE * 4;
    let backing = d.ram().alloc(u64::from(len), 4096).unwrap();
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: ResourceId(5),
            entries: vec![MemEntry {
                addr: backing.0,
                length: len,
            }],
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::TransferFromHost3d(Transfer3d {
            box3d: Box3d {
                x: 0,
                y: 0,
                z: 0,
                w: SIZE,
                h: SIZE,
                d: 1,
            },
            offset: 0,
            resource_id: ResourceId(5),
            level: 0,
            stride: SIZE * 4,
            layer_stride: 0,
        }))
        .with_ctx(ctx)
        .with_fence(9),
    );
    assert_eq!(r, Response::OkNodata);
    let mut guest = vec![0u8; len as usize];
    vm_memory::Bytes::read_slice(d.ram().memory(), &mut guest, backing).unwrap();
    assert!(
        guest.chunks(4).all(|px| px == [102, 0, 255, 255]),
        "TRANSFER_FROM_HOST_3D did not bring back the clear colour"
    );
    let (_, r) = call(
        &mut d,
        Request::new(GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: ResourceId(5),
        }))
        .with_fence(8),
    );
    assert_eq!(r, Response::OkNodata);
    let frame = &b.display.snapshot().frames[&0];
    assert!(
        frame.chunks(4).all(|px| px == [102, 0, 255, 255]),
        "the display does not show the clear colour"
    );
}

#[test]
fn loadgen_desktops_render_real_virgl_frames_and_every_pixel_arrives() {
    use loadgen::run::{self, Backend};
    use loadgen::scenario::{Plan, RenderMode, RendererKind};
    let plan = Plan {
        desktops: 4,
        duration: Duration::from_millis(1500),
        renderer: RendererKind::Virgl,
        render: RenderMode::Real,
        width: 320,
        height: 200,
        ..Plan::default()
    };
    let (backend, driver) = Backend::embedded(&plan, 2).unwrap();
    let r = run::run(&plan, &backend, driver, &mut |_| {});
    backend.finish().unwrap();
    assert_eq!(r.errors, 0, "{:?}", r.error_samples);
    assert_eq!(r.fences_lost, 0);
    assert_eq!(r.pixels_bad, 0);
    assert!(r.frames > 0, "{}", r.summary());
    // Every frame reached the VMM, or was superseded for its scanout by a
    // newer one before the VMM read it (latest pixels win).
    assert_eq!(
        r.frames_delivered + r.frames_merged,
        r.frames,
        "{}",
        r.summary()
    );
    assert_eq!(r.backend, "gpu-reactor/virgl");
}
