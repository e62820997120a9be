//! Against the real library on llvmpipe (needs libvirglrenderer1,
//! libegl-mesa0, libgl1-mesa-dri). Each test takes `SERIAL`: the library is
//! one per process, owned by one thread at a time.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::protocol::{ResourceCreate3d, ResourceId};

/// The library is one per process: tests using it (here and in
/// `worker.rs`) take this first.
static SERIAL: Mutex<()> = Mutex::new(());

pub(super) fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `VIRGL_RES_BIND_SAMPLER_VIEW`
const BIND_SAMPLER_VIEW: u32 = 1 << 3;
const SIZE: u32 = 64;

/// A 2D RGBA8 texture a context can render to and sample.
fn texture(id: u32) -> ResourceKind {
    ResourceKind::Image3d(ResourceCreate3d {
        resource_id: ResourceId(id),
        target: ffi::PIPE_TEXTURE_2D,
        format: VIRGL_FORMAT_R8G8B8A8_UNORM,
        bind: ffi::BIND_RENDER_TARGET | BIND_SAMPLER_VIEW,
        width: SIZE,
        height: SIZE,
        depth: 1,
        array_size: 1,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    })
}

/// Runs `f` with a fresh renderer on a one-shard reactor.
fn with_virgl(f: impl AsyncFnOnce(&mut Virgl) + 'static) {
    let _serial = serial();
    reactor::block_on(async move {
        let mut v = Virgl::new().expect("virgl starts headless on llvmpipe");
        f(&mut v).await;
    })
    .unwrap();
}

/// Clears a fresh texture of a fresh context, waits for its fence, reads
/// every pixel back.
async fn clear_and_read(v: &mut Virgl, ctx: u32, res: u32, rgba: [f32; 4]) -> Vec<u8> {
    v.create_context(ctx, VIRTIO_GPU_CAPSET_VIRGL2 as u8, b"test")
        .unwrap();
    v.create_resource(res, &texture(res)).unwrap();
    v.attach_resource(ctx, res).unwrap();
    v.submit(ctx, 0, &clear_stream(res, rgba)).unwrap();
    let fence = v.fence(ctx, 0);
    reactor::time::timeout(Duration::from_secs(10), fence)
        .await
        .expect("the fence completes through the poll fd");
    let mut px = Vec::new();
    v.read_rect(res, Rect::new(0, 0, SIZE, SIZE), &mut px)
        .unwrap();
    px
}

#[test]
fn init_succeeds_headless_with_a_cookie() {
    let _serial = serial();
    let factory = VirglFactory::new().expect("probe init on llvmpipe");
    let info = factory.info();
    assert!(info.has_3d && info.single_shard && !info.has_blob);
    assert_eq!(info.max_rings, 1);
    drop(_serial);
    with_virgl(async |_v| {});
}

#[test]
fn capset_virgl2_is_reported_with_max_version_2() {
    let _serial = serial();
    let info = VirglFactory::new().unwrap().info();
    let virgl2 = info
        .capsets
        .iter()
        .find(|c| c.id == VIRTIO_GPU_CAPSET_VIRGL2)
        .expect("VIRGL2");
    assert_eq!(virgl2.max_version, 2);
    assert!(virgl2.data.len() >= 308, "{}", virgl2.data.len());
    let virgl = info
        .capsets
        .iter()
        .find(|c| c.id == VIRTIO_GPU_CAPSET_VIRGL)
        .expect("VIRGL");
    assert_eq!(virgl.max_version, 1);
}

#[test]
fn clear_completes_its_fence_through_the_poll_fd_and_reads_back_exact() {
    with_virgl(async |v| {
        let px = clear_and_read(v, 1, 10, [0.4, 0.0, 1.0, 1.0]).await;
        assert_eq!(px.len(), (SIZE * SIZE * 4) as usize);
        for (i, p) in px.chunks(4).enumerate() {
            assert_eq!(p, [102, 0, 255, 255], "pixel {i}");
        }
    });
}

#[test]
fn global_fence_completes_through_the_poll_fd() {
    with_virgl(async |v| {
        let fence = v.fence(0, 0);
        reactor::time::timeout(Duration::from_secs(10), fence)
            .await
            .expect("the ctx-0 fence completes");
    });
}

#[test]
fn a_bad_command_stream_fails_only_its_context() {
    with_virgl(async |v| {
        v.create_context(1, VIRTIO_GPU_CAPSET_VIRGL2 as u8, b"bad")
            .unwrap();
        // CREATE_OBJECT of an object type that does not exist.
        let bad: Vec<u8> = [1 | (99 << 8) | (1 << 16), 7u32]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert!(matches!(
            v.submit(1, 0, &bad),
            Err(ProtocolError::RendererFailed(_))
        ));
        let px = clear_and_read(v, 2, 20, [0.0, 1.0, 0.0, 1.0]).await;
        assert!(px.chunks(4).all(|p| p == [0, 255, 0, 255]));
        v.destroy_context(1);
    });
}

#[test]
fn a_2d_resource_is_written_and_read_back() {
    with_virgl(async |v| {
        use vm_memory::{Bytes, GuestMemoryMmap};
        let mem: GuestMem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let kind = ResourceKind::Image2d {
            format: crate::protocol::Format::R8G8B8A8Unorm,
            width: 4,
            height: 2,
        };
        v.create_resource(5, &kind).unwrap();
        let pixels: Vec<u8> = (0..32).collect();
        mem.write_slice(&pixels, GuestAddress(0x1000)).unwrap();
        let backing = Backing::new(
            vec![crate::protocol::MemEntry {
                addr: 0x1000,
                length: 32,
            }],
            &mem,
        )
        .unwrap();
        v.transfer_to_host_2d(5, Rect::new(0, 0, 4, 2), 0, &backing, &mem)
            .unwrap();
        let mut out = Vec::new();
        v.read_rect(5, Rect::new(1, 1, 2, 1), &mut out).unwrap();
        assert_eq!(out, pixels[20..28]);
    });
}
