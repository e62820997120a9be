//! The dozen virglrenderer 0.10.4 calls this renderer makes, declared by
//! hand from `/usr/include/virgl/virglrenderer.h` (Debian bookworm's
//! libvirglrenderer-dev). Why not `virglrenderer-sys`:
//! docs/decisions/0004-virgl-ffi.md.
//!
//! Error returns are positive errno values (`EINVAL`), 0 on success, except
//! `virgl_renderer_init` (-1 or a negative errno).

use std::ffi::{c_char, c_int, c_void};

/// `VIRGL_RENDERER_USE_EGL`
pub const USE_EGL: c_int = 1;
/// `VIRGL_RENDERER_THREAD_SYNC`: a sync thread waits on GL fences and
/// signals the eventfd `virgl_renderer_get_poll_fd` returns.
pub const THREAD_SYNC: c_int = 2;
/// `VIRGL_RENDERER_USE_SURFACELESS`: EGL without a GBM render node.
pub const USE_SURFACELESS: c_int = 1 << 3;

/// `VIRGL_RES_BIND_RENDER_TARGET`
pub const BIND_RENDER_TARGET: u32 = 1 << 1;
/// `PIPE_TEXTURE_2D`
pub const PIPE_TEXTURE_2D: u32 = 2;
/// `VIRTIO_GPU_RESOURCE_FLAG_Y_0_TOP`, what QEMU gives 2D resources.
pub const RESOURCE_FLAG_Y_0_TOP: u32 = 1;

/// `struct virgl_renderer_callbacks`, the whole `VIRGL_RENDERER_UNSTABLE_APIS`
/// layout (version 4), so whatever version we announce, every field the
/// library may read exists; we set only the fence callbacks.
#[repr(C)]
pub struct Callbacks {
    pub version: c_int,
    pub write_fence: Option<unsafe extern "C" fn(cookie: *mut c_void, fence: u32)>,
    pub create_gl_context: Option<unsafe extern "C" fn()>,
    pub destroy_gl_context: Option<unsafe extern "C" fn()>,
    pub make_current: Option<unsafe extern "C" fn()>,
    pub get_drm_fd: Option<unsafe extern "C" fn(cookie: *mut c_void) -> c_int>,
    pub write_context_fence: Option<
        unsafe extern "C" fn(cookie: *mut c_void, ctx_id: u32, ring_idx: u32, fence_id: u64),
    >,
    pub get_server_fd: Option<unsafe extern "C" fn(cookie: *mut c_void, version: u32) -> c_int>,
    pub get_egl_display: Option<unsafe extern "C" fn(cookie: *mut c_void) -> *mut c_void>,
}

/// `struct virgl_renderer_resource_create_args`
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ResourceCreateArgs {
    pub handle: u32,
    pub target: u32,
    pub format: u32,
    pub bind: u32,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    pub array_size: u32,
    pub last_level: u32,
    pub nr_samples: u32,
    pub flags: u32,
}

/// `struct virgl_box` (virglrenderer_hw.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct VirglBox {
    pub x: u32,
    pub y: u32,
    pub z: u32,
    pub w: u32,
    pub h: u32,
    pub d: u32,
}

impl VirglBox {
    /// A 2D rectangle: layer 0, depth 1.
    pub fn of_rect(r: crate::protocol::Rect) -> VirglBox {
        VirglBox {
            x: r.x,
            y: r.y,
            z: 0,
            w: r.width,
            h: r.height,
            d: 1,
        }
    }
}

#[link(name = "virglrenderer")]
extern "C" {
    pub fn virgl_renderer_init(cookie: *mut c_void, flags: c_int, cbs: *mut Callbacks) -> c_int;
    pub fn virgl_renderer_cleanup(cookie: *mut c_void);
    pub fn virgl_renderer_poll();
    pub fn virgl_renderer_get_poll_fd() -> c_int;

    pub fn virgl_renderer_get_cap_set(set: u32, max_ver: *mut u32, max_size: *mut u32);
    pub fn virgl_renderer_fill_caps(set: u32, version: u32, caps: *mut c_void);

    pub fn virgl_renderer_context_create_with_flags(
        ctx_id: u32,
        ctx_flags: u32,
        nlen: u32,
        name: *const c_char,
    ) -> c_int;
    pub fn virgl_renderer_context_destroy(handle: u32);
    pub fn virgl_renderer_ctx_attach_resource(ctx_id: c_int, res_handle: c_int);
    pub fn virgl_renderer_ctx_detach_resource(ctx_id: c_int, res_handle: c_int);

    pub fn virgl_renderer_resource_create(
        args: *mut ResourceCreateArgs,
        iov: *mut libc::iovec,
        num_iovs: u32,
    ) -> c_int;
    pub fn virgl_renderer_resource_unref(res_handle: u32);
    /// Keeps `iov` (the pointer, not a copy) as the resource's backing
    /// until `detach_iov`: the array and the memory it names must outlive
    /// that.
    pub fn virgl_renderer_resource_attach_iov(
        res_handle: c_int,
        iov: *mut libc::iovec,
        num_iovs: c_int,
    ) -> c_int;
    /// Forgets the backing, handing back the array `attach_iov` was given.
    pub fn virgl_renderer_resource_detach_iov(
        res_handle: c_int,
        iov: *mut *mut libc::iovec,
        num_iovs: *mut c_int,
    );

    pub fn virgl_renderer_submit_cmd(buffer: *mut c_void, ctx_id: c_int, ndw: c_int) -> c_int;

    pub fn virgl_renderer_transfer_read_iov(
        handle: u32,
        ctx_id: u32,
        level: u32,
        stride: u32,
        layer_stride: u32,
        box_: *mut VirglBox,
        offset: u64,
        iov: *mut libc::iovec,
        iovec_cnt: c_int,
    ) -> c_int;
    pub fn virgl_renderer_transfer_write_iov(
        handle: u32,
        ctx_id: u32,
        level: c_int,
        stride: u32,
        layer_stride: u32,
        box_: *mut VirglBox,
        offset: u64,
        iovec: *mut libc::iovec,
        iovec_cnt: u32,
    ) -> c_int;

    pub fn virgl_renderer_create_fence(client_fence_id: c_int, ctx_id: u32) -> c_int;
    pub fn virgl_renderer_context_create_fence(
        ctx_id: u32,
        flags: u32,
        ring_idx: u32,
        fence_id: u64,
    ) -> c_int;
}
