//! The `virgl` renderer: virglrenderer 0.10.4 (Debian bookworm) on Mesa's
//! llvmpipe, headless through EGL surfaceless. What was seen to work and
//! what was not is in the project's `virgl.md`; the FFI choice in
//! docs/decisions/0004-virgl-ffi.md.
//!
//! virglrenderer is one process-wide instance whose GL context is current on
//! the thread that called `virgl_renderer_init`, so every call must come from
//! that thread: the renderer is `single_shard`, and a [`Library`] records
//! which thread owns it and refuses any other.
//!
//! Fences are events: with `THREAD_SYNC` the library's sync thread signals an
//! eventfd when GL work retires. One task on the render shard waits on it
//! with an io_uring `POLL_ADD` (never a read: the library drains the eventfd
//! itself), then calls `virgl_renderer_poll()`, which runs `write_fence` /
//! `write_context_fence` on this thread; those complete the waiting
//! [`GpuWait`]s. There is no poll timer.
//!
//! Guest memory: a resource's backing (`RESOURCE_ATTACH_BACKING`) is handed
//! to the library as host iovecs it keeps (`attach_iov`) until the backing
//! is detached or the resource goes, because the guest's own command
//! streams name it: Mesa's virgl driver puts `TRANSFER3D` (and inline
//! writes) into SUBMIT_3D, which the library resolves against the
//! attached iovecs. The [`Attached`] record keeps the iovec array and the
//! guest memory mapping it points into alive for exactly that long.
//! Explicit transfers (`TRANSFER_*_3D`) still resolve the backing afresh
//! for the length of one call.

mod ffi;
pub mod launcher;
pub mod pool;
mod wire;
pub mod worker;

pub use pool::{SlotView, WorkerExe, WorkerOptions, WorkerPoolFactory, WorkerStats};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{c_int, c_void};
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;

use vm_memory::volatile_memory::PtrGuardMut;
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::{BlobMemory, Capset, GpuWait, Renderer, RendererFactory, RendererInfo, ResourceKind};
use crate::backing::{Backing, GuestMem};
use crate::protocol::wire::{
    VIRTIO_GPU_CAPSET_VIRGL, VIRTIO_GPU_CAPSET_VIRGL2, VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
    VIRTIO_GPU_F_RESOURCE_BLOB,
};
use crate::protocol::{ProtocolError, Rect, Transfer3d};

/// Bytes per pixel of what `read_rect` returns (the scanout formats).
const BPP: u64 = 4;

/// Init flags: EGL without a render node (`USE_EGL` alone wants GBM), fences
/// retired by the library's sync thread onto an eventfd.
const INIT_FLAGS: c_int = ffi::USE_EGL | ffi::USE_SURFACELESS | ffi::THREAD_SYNC;

/// The thread virglrenderer is initialised on, if any (one per process).
static OWNER: Mutex<Option<ThreadId>> = Mutex::new(None);

thread_local! {
    /// This thread's library, shared by the renderer instances of one shard
    /// (a device reset makes the new instance before dropping the old).
    static LIBRARY: RefCell<Weak<Library>> = const { RefCell::new(Weak::new()) };
}

/// Makes the `virgl` renderer (one instance, on the device's last shard).
#[derive(Debug, Clone)]
pub struct VirglFactory {
    capsets: Vec<Capset>,
}

impl VirglFactory {
    /// Asks the library for its capsets. It has to be initialised for that,
    /// and only on one thread at a time, so a short-lived thread does it
    /// (init, query, cleanup); the render shard initialises it again later.
    pub fn new() -> Result<VirglFactory, String> {
        let probe = std::thread::Builder::new()
            .name("virgl-probe".into())
            .spawn(probe_capsets)
            .map_err(|e| format!("cannot start the virgl probe thread: {e}"))?;
        let capsets = probe
            .join()
            .map_err(|_| "the virgl probe thread panicked".to_string())??;
        Ok(VirglFactory { capsets })
    }
}

/// What virgl offers, in this process or in render workers (whose pool is
/// one instance on one shard too).
pub(crate) fn virgl_info(capsets: Vec<Capset>) -> RendererInfo {
    RendererInfo {
        name: "virgl",
        capsets,
        has_3d: true,
        // 0.10.4 has blob calls, but on llvmpipe there is nothing to
        // export to the VMM (no dmabuf): not offered.
        has_blob: false,
        // vrend keeps one ring per context: ring_idx 1 is -EINVAL.
        max_rings: 1,
        single_shard: true,
    }
}

impl RendererFactory for VirglFactory {
    fn info(&self) -> RendererInfo {
        virgl_info(self.capsets.clone())
    }

    fn create(&self, _shard: usize) -> Result<Box<dyn Renderer>, String> {
        Ok(Box::new(Virgl::new()?))
    }
}

/// Claims virglrenderer for this thread, or says who has it.
fn claim_owner() -> Result<(), String> {
    let me = std::thread::current().id();
    let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
    match *owner {
        Some(other) if other != me => Err(format!(
            "virglrenderer is already running on thread {other:?} of this process"
        )),
        _ => {
            *owner = Some(me);
            Ok(())
        }
    }
}

fn release_owner() {
    *OWNER.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Runs on its own thread: init, read VIRGL and VIRGL2, cleanup.
fn probe_capsets() -> Result<Vec<Capset>, String> {
    // `book` and `cbs` outlive the library: cleanup below, before they drop.
    let (book, cbs, cookie) = init_library()?;
    let capsets = read_capsets();
    // SAFETY: the cookie init was given; on the init thread.
    unsafe { ffi::virgl_renderer_cleanup(cookie) };
    release_owner();
    drop((book, cbs));
    Ok(capsets)
}

/// VIRGL and VIRGL2 as the library describes them. Must run on the thread
/// that initialised the library (a render worker asks its own).
pub(crate) fn read_capsets() -> Vec<Capset> {
    let mut capsets = Vec::new();
    for id in [VIRTIO_GPU_CAPSET_VIRGL, VIRTIO_GPU_CAPSET_VIRGL2] {
        let (mut max_version, mut size) = (0u32, 0u32);
        // SAFETY: initialised on this thread (the caller's contract); two
        // valid out-pointers.
        unsafe { ffi::virgl_renderer_get_cap_set(id, &mut max_version, &mut size) };
        if max_version == 0 || size == 0 {
            continue;
        }
        // u32 words: the library fills a `union virgl_caps` of u32 fields.
        let mut words = vec![0u32; (size as usize).div_ceil(4)];
        // SAFETY: `words` holds at least `size` bytes, the most the library
        // writes for this set; initialised on this thread.
        unsafe { ffi::virgl_renderer_fill_caps(id, max_version, words.as_mut_ptr().cast()) };
        let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        data.truncate(size as usize);
        capsets.push(Capset {
            id,
            max_version,
            data,
        });
    }
    capsets
}

/// Claims the library for this thread and initialises it. The caller must
/// keep the returned fence book and callbacks alive until it calls
/// `virgl_renderer_cleanup(cookie)` on this thread.
fn init_library() -> Result<(Box<FenceBook>, Box<ffi::Callbacks>, *mut c_void), String> {
    claim_owner()?;
    let book = Box::new(FenceBook::default());
    let mut cbs = callbacks();
    let cookie = std::ptr::from_ref::<FenceBook>(&book)
        .cast_mut()
        .cast::<c_void>();
    // SAFETY: `cookie` points at the boxed `FenceBook` and `cbs` is boxed:
    // both are returned to the caller, who keeps them until cleanup (see
    // above); the callbacks only read the cookie as that `FenceBook`. This
    // thread owns the library from here on.
    let rc = unsafe { ffi::virgl_renderer_init(cookie, INIT_FLAGS, &mut *cbs) };
    if rc != 0 {
        release_owner();
        return Err(format!(
            "virgl_renderer_init failed ({rc}): no EGL surfaceless / llvmpipe? \
             (needs libegl-mesa0 and libgl1-mesa-dri)"
        ));
    }
    Ok((book, cbs, cookie))
}

fn callbacks() -> Box<ffi::Callbacks> {
    Box::new(ffi::Callbacks {
        version: 3,
        write_fence: Some(write_fence),
        create_gl_context: None,
        destroy_gl_context: None,
        make_current: None,
        get_drm_fd: None,
        write_context_fence: Some(write_context_fence),
        get_server_fd: None,
        get_egl_display: None,
    })
}

/// `write_fence`: a ctx-0 fence retired.
unsafe extern "C" fn write_fence(cookie: *mut c_void, fence: u32) {
    // SAFETY: the cookie is the `FenceBook` given to `virgl_renderer_init`,
    // alive until `virgl_renderer_cleanup`; without ASYNC_FENCE_CB the
    // library calls back only on the init thread, inside its own calls.
    let book = unsafe { &*cookie.cast::<FenceBook>() };
    book.signal(Timeline::Global, u64::from(fence));
}

/// `write_context_fence`: fence `fence_id` of (ctx, ring) retired.
unsafe extern "C" fn write_context_fence(
    cookie: *mut c_void,
    ctx_id: u32,
    _ring_idx: u32,
    fence_id: u64,
) {
    // SAFETY: as in `write_fence`.
    let book = unsafe { &*cookie.cast::<FenceBook>() };
    book.signal(Timeline::Context(ctx_id), fence_id);
}

/// Where a fence's order lives: the ctx-0 timeline, or one context's ring 0
/// (the only ring vrend has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Timeline {
    Global,
    Context(u32),
}

/// One waiting fence: done once the library reported it.
#[derive(Default)]
struct FenceSlot {
    done: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl FenceSlot {
    fn complete(&self) {
        self.done.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

struct FenceWait(Rc<FenceSlot>);

impl Future for FenceWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.done.get() {
            return Poll::Ready(());
        }
        self.0.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

/// One timeline's waiting fences: (id, slot), oldest first.
type FenceQueue = VecDeque<(u64, Rc<FenceSlot>)>;

/// Fences created and not yet reported, in creation order per timeline.
/// The library's callbacks write here (through the init cookie), so no
/// borrow of `waiting` is ever held across a virglrenderer call.
#[derive(Default)]
struct FenceBook {
    waiting: RefCell<HashMap<Timeline, FenceQueue>>,
}

impl FenceBook {
    fn wait(&self, t: Timeline, id: u64) -> FenceWait {
        let slot = Rc::new(FenceSlot::default());
        self.waiting
            .borrow_mut()
            .entry(t)
            .or_default()
            .push_back((id, slot.clone()));
        FenceWait(slot)
    }

    /// Fence `id` of `t` retired: so did every earlier one there.
    fn signal(&self, t: Timeline, id: u64) {
        let done: Vec<Rc<FenceSlot>> = {
            let mut waiting = self.waiting.borrow_mut();
            let Some(q) = waiting.get_mut(&t) else { return };
            let mut done = Vec::new();
            while let Some((front, _)) = q.front() {
                let reached = match t {
                    // ctx-0 ids are 32 bits on the wire: compare modulo 2^32.
                    Timeline::Global => (id as u32).wrapping_sub(*front as u32) as i32 >= 0,
                    Timeline::Context(_) => *front <= id,
                };
                if !reached {
                    break;
                }
                done.extend(q.pop_front().map(|(_, s)| s));
            }
            done
        };
        for slot in done {
            slot.complete();
        }
    }

    /// Completes every fence of `t` (its context is gone), or of every
    /// timeline (the library is gone): nothing would ever report them.
    fn complete_all(&self, t: Option<Timeline>) {
        let queues: Vec<FenceQueue> = {
            let mut waiting = self.waiting.borrow_mut();
            match t {
                Some(t) => waiting.remove(&t).into_iter().collect(),
                None => waiting.drain().map(|(_, q)| q).collect(),
            }
        };
        for (_, slot) in queues.into_iter().flatten() {
            slot.complete();
        }
    }
}

/// virglrenderer, initialised on this thread, and its fence pump.
struct Library {
    /// The init cookie: boxed so its address is stable.
    book: Box<FenceBook>,
    /// The library keeps a pointer to these until cleanup.
    callbacks: Box<ffi::Callbacks>,
    pump: reactor::AbortHandle,
    next_context_fence: Cell<u64>,
    next_global_fence: Cell<u32>,
}

impl Library {
    /// This thread's library, initialised on first use. Must run on a
    /// reactor shard (the fence pump is a task of it).
    fn open() -> Result<Rc<Library>, String> {
        if let Some(lib) = LIBRARY.with(|l| l.borrow().upgrade()) {
            return Ok(lib);
        }
        if reactor::current_shard().is_none() {
            return Err("the virgl renderer must be created on a reactor shard".into());
        }
        // `book` and `callbacks` move into the `Library`, whose drop calls
        // cleanup before freeing them; every later call is made from this
        // thread (the `Library` is an `Rc`, so it cannot leave it).
        let (book, callbacks, cookie) = init_library()?;
        let fail = |msg: String| {
            // SAFETY: initialised just above on this thread, with this cookie.
            unsafe { ffi::virgl_renderer_cleanup(cookie) };
            release_owner();
            Err(msg)
        };
        // SAFETY: initialised on this thread.
        let raw = unsafe { ffi::virgl_renderer_get_poll_fd() };
        if raw < 0 {
            return fail(
                "virglrenderer has no fence poll fd (THREAD_SYNC off: VIRGL_DISABLE_MT set?); \
                 refusing to poll fences on a timer"
                    .into(),
            );
        }
        // The fd belongs to the library, which closes it at cleanup: the
        // ring watches a duplicate (same eventfd, its own descriptor).
        // SAFETY: plain fcntl on an open fd; the result is checked.
        let dup = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return fail(format!(
                "cannot duplicate the virgl poll fd: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `dup` is a fresh descriptor nobody else owns.
        let fd = reactor::io::AsyncFd::new(unsafe { OwnedFd::from_raw_fd(dup) });
        let (pump, handle) = reactor::abortable(pump_fences(fd));
        reactor::spawn_local_named("virgl-fences", pump);
        let lib = Rc::new(Library {
            book,
            callbacks,
            pump: handle,
            next_context_fence: Cell::new(1),
            next_global_fence: Cell::new(1),
        });
        LIBRARY.with(|l| *l.borrow_mut() = Rc::downgrade(&lib));
        Ok(lib)
    }

    fn cookie(&self) -> *mut c_void {
        std::ptr::from_ref::<FenceBook>(&self.book)
            .cast_mut()
            .cast::<c_void>()
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // The pump never polls again once aborted, so it cannot call into
        // the library after cleanup.
        self.pump.abort();
        // SAFETY: initialised on this thread (a `Library` never leaves it)
        // with this cookie; `callbacks` is freed only after this returns.
        unsafe { ffi::virgl_renderer_cleanup(self.cookie()) };
        release_owner();
        self.book.complete_all(None);
        let _ = &self.callbacks;
    }
}

/// The one task that turns the library's fence eventfd into callbacks.
async fn pump_fences(fd: reactor::io::AsyncFd) {
    loop {
        if let Err(e) = fd.poll(libc::POLLIN as u32).await {
            tracing::error!(error = %e, "virgl fence fd poll failed: fences stop completing");
            return;
        }
        // SAFETY: this task runs on the init thread and is aborted (never
        // polled again) before the library is cleaned up.
        unsafe { ffi::virgl_renderer_poll() };
    }
}

/// What bounds checks need about a resource.
#[derive(Debug, Clone, Copy)]
struct Extent {
    width: u32,
    height: u32,
}

/// A backing the library holds (`attach_iov`): the iovec array it keeps a
/// pointer to, and the guest memory those iovecs point into. Both live
/// until `detach_iov` has been called for the resource (see
/// [`Virgl::detach_iov`]): a later memory table from the VMM replaces the
/// device's view but cannot unmap what this still holds.
struct Attached {
    iovecs: Box<[libc::iovec]>,
    _guards: Vec<PtrGuardMut>,
    _mem: GuestMem,
}

/// The `virgl` renderer instance of the render shard.
pub struct Virgl {
    lib: Rc<Library>,
    contexts: HashSet<u32>,
    resources: HashMap<u32, Extent>,
    attached: HashMap<u32, Attached>,
}

impl Virgl {
    /// Initialises virglrenderer on this thread (or shares this thread's
    /// instance). Must be called on a reactor shard.
    pub fn new() -> Result<Virgl, String> {
        Ok(Virgl {
            lib: Library::open()?,
            contexts: HashSet::new(),
            resources: HashMap::new(),
            attached: HashMap::new(),
        })
    }

    /// Takes resource `id`'s backing back from the library, if it has one,
    /// and only then frees the iovecs and lets go of the mapping.
    fn detach_iov(&mut self, id: u32) {
        let Some(mut held) = self.attached.remove(&id) else {
            return;
        };
        let mut iov: *mut libc::iovec = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: on the init thread; `id` is a resource we attached
        // `held.iovecs` to (ids fit in c_int: the library keys them as int
        // on this call). After it returns the library no longer points at
        // the array, which `held` frees below.
        unsafe { ffi::virgl_renderer_resource_detach_iov(id as c_int, &mut iov, &mut n) };
        debug_assert!(iov.is_null() || std::ptr::eq(iov, held.iovecs.as_mut_ptr()));
        drop(held);
    }

    fn extent(&self, id: u32) -> Result<Extent, ProtocolError> {
        self.resources
            .get(&id)
            .copied()
            .ok_or(ProtocolError::UnknownResource(id))
    }

    fn create(&mut self, mut args: ffi::ResourceCreateArgs) -> Result<(), ProtocolError> {
        let id = args.handle;
        if self.resources.contains_key(&id) {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        // SAFETY: on the init thread; `args` is a valid struct, no iovecs.
        let rc = unsafe { ffi::virgl_renderer_resource_create(&mut args, std::ptr::null_mut(), 0) };
        check("resource_create", id, rc)?;
        self.resources.insert(
            id,
            Extent {
                width: args.width,
                height: args.height,
            },
        );
        Ok(())
    }

    /// A transfer between `backing` and resource `id`, with the backing
    /// resolved to host iovecs for this call only.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &mut self,
        id: u32,
        ctx: u32,
        b: ffi::VirglBox,
        level: u32,
        stride: u32,
        layer_stride: u32,
        offset: u64,
        to_host: bool,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        self.extent(id)?;
        // To the host the library reads guest pages; from it, it writes them.
        let access = if to_host {
            Permissions::Read
        } else {
            Permissions::Write
        };
        let (mut iovecs, guards) = backing_iovecs(backing, mem, access)?;
        let mut b = b;
        let n = iovecs.len();
        // SAFETY: on the init thread. The iovecs point into guest memory
        // mapped by `mem`, which this call borrows, and `guards` keep each
        // mapping alive until after the call; the library uses them only
        // during the call (explicit iovecs are not kept, unlike
        // attach_iov). They cover exactly the backing; the library checks
        // box, stride and offset against their total length. The guest may
        // touch those pages meanwhile (virtio says it must not): that can
        // tear its own image, nothing else.
        let rc = unsafe {
            if to_host {
                ffi::virgl_renderer_transfer_write_iov(
                    id,
                    ctx,
                    level as c_int,
                    stride,
                    layer_stride,
                    &mut b,
                    offset,
                    iovecs.as_mut_ptr(),
                    n as u32,
                )
            } else {
                ffi::virgl_renderer_transfer_read_iov(
                    id,
                    ctx,
                    level,
                    stride,
                    layer_stride,
                    &mut b,
                    offset,
                    iovecs.as_mut_ptr(),
                    n as c_int,
                )
            }
        };
        drop(guards);
        check(
            if to_host {
                "transfer_write"
            } else {
                "transfer_read"
            },
            id,
            rc,
        )
    }
}

impl Drop for Virgl {
    fn drop(&mut self) {
        // A reset makes a new instance on the same library first: leave it
        // nothing of ours.
        for ctx in self.contexts.drain() {
            // SAFETY: on the init thread; a context we created.
            unsafe { ffi::virgl_renderer_context_destroy(ctx) };
            self.lib.book.complete_all(Some(Timeline::Context(ctx)));
        }
        let ids: Vec<u32> = self.resources.keys().copied().collect();
        for id in ids {
            self.destroy_resource(id);
        }
    }
}

/// A library error code (positive errno) as the renderer's error.
fn check(op: &'static str, id: u32, rc: c_int) -> Result<(), ProtocolError> {
    if rc == 0 {
        return Ok(());
    }
    tracing::debug!(id, rc, "virgl {op} failed");
    Err(ProtocolError::RendererFailed(rc))
}

/// Host iovecs for the whole of `backing`, re-resolved against `mem` now
/// (guest memory may have been replaced since the backing was checked),
/// with a guard per mapping.
fn backing_iovecs(
    backing: &Backing,
    mem: &GuestMem,
    access: Permissions,
) -> Result<(Vec<libc::iovec>, Vec<PtrGuardMut>), ProtocolError> {
    let mut iovecs = Vec::with_capacity(backing.entries().len());
    let mut guards = Vec::with_capacity(backing.entries().len());
    for e in backing.entries() {
        let beyond = || ProtocolError::BackingBeyondGuestMemory {
            addr: e.addr,
            length: e.length,
        };
        let slices = mem
            .get_slices(GuestAddress(e.addr), e.length as usize, access)
            .map_err(|_| beyond())?;
        let mut got = 0;
        for slice in slices {
            let guard = slice.map_err(|_| beyond())?.ptr_guard_mut();
            got += guard.len();
            iovecs.push(libc::iovec {
                iov_base: guard.as_ptr().cast::<c_void>(),
                iov_len: guard.len(),
            });
            guards.push(guard);
        }
        if got != e.length as usize {
            return Err(beyond());
        }
    }
    Ok((iovecs, guards))
}

impl Renderer for Virgl {
    fn create_context(
        &mut self,
        ctx: u32,
        capset_id: u8,
        name: &[u8],
    ) -> Result<(), ProtocolError> {
        if self.contexts.contains(&ctx) {
            return Err(ProtocolError::ContextIdInUse(ctx));
        }
        // Without CONTEXT_INIT the guest names no capset: VIRGL2, as
        // `virgl_renderer_context_create` would pick.
        let capset = match u32::from(capset_id) {
            0 => VIRTIO_GPU_CAPSET_VIRGL2,
            id @ (VIRTIO_GPU_CAPSET_VIRGL | VIRTIO_GPU_CAPSET_VIRGL2) => id,
            id => return Err(ProtocolError::UnsupportedCapset { id, version: 0 }),
        };
        // SAFETY: on the init thread; `name` is valid for `name.len()` bytes
        // (bounded by the decoder), which the library copies.
        let rc = unsafe {
            ffi::virgl_renderer_context_create_with_flags(
                ctx,
                capset,
                name.len() as u32,
                name.as_ptr().cast(),
            )
        };
        check("context_create", ctx, rc)?;
        self.contexts.insert(ctx);
        Ok(())
    }

    fn destroy_context(&mut self, ctx: u32) {
        if self.contexts.remove(&ctx) {
            // SAFETY: on the init thread; a context we created.
            unsafe { ffi::virgl_renderer_context_destroy(ctx) };
            self.lib.book.complete_all(Some(Timeline::Context(ctx)));
        }
    }

    fn attach_resource(&mut self, ctx: u32, id: u32) -> Result<(), ProtocolError> {
        if self.contexts.contains(&ctx) && self.resources.contains_key(&id) {
            // SAFETY: on the init thread; both exist (ids fit in c_int: the
            // library keys them as int on this call only).
            unsafe { ffi::virgl_renderer_ctx_attach_resource(ctx as c_int, id as c_int) };
        }
        Ok(())
    }

    fn detach_resource(&mut self, ctx: u32, id: u32) {
        if self.contexts.contains(&ctx) && self.resources.contains_key(&id) {
            // SAFETY: as in `attach_resource`.
            unsafe { ffi::virgl_renderer_ctx_detach_resource(ctx as c_int, id as c_int) };
        }
    }

    fn submit(&mut self, ctx: u32, ring: u8, cmds: &[u8]) -> Result<(), ProtocolError> {
        if !self.contexts.contains(&ctx) {
            return Err(ProtocolError::UnknownContext(ctx));
        }
        if ring != 0 {
            return Err(ProtocolError::RingIdxOutOfRange(ring));
        }
        if !cmds.len().is_multiple_of(4) {
            return Err(ProtocolError::RendererFailed(libc::EINVAL));
        }
        // The library reads u32 words: an aligned copy (the guest's bytes
        // are in a Vec<u8> of any alignment).
        let mut words: Vec<u32> = cmds
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // SAFETY: on the init thread; `words` holds exactly `ndw` words for
        // the length of the call.
        let rc = unsafe {
            ffi::virgl_renderer_submit_cmd(
                words.as_mut_ptr().cast(),
                ctx as c_int,
                words.len() as c_int,
            )
        };
        check("submit_cmd", ctx, rc)
    }

    fn fence(&mut self, ctx: u32, _ring: u8) -> GpuWait {
        let lib = &self.lib;
        if ctx != 0 && self.contexts.contains(&ctx) {
            let id = lib.next_context_fence.get();
            lib.next_context_fence.set(id + 1);
            // Registered before the call, in case the library reports it at
            // once; no borrow is held across the call.
            let wait = lib.book.wait(Timeline::Context(ctx), id);
            // SAFETY: on the init thread; a context we created. Flags 0: not
            // mergeable, so this id itself is reported.
            let rc = unsafe { ffi::virgl_renderer_context_create_fence(ctx, 0, 0, id) };
            if rc != 0 {
                tracing::warn!(ctx, rc, "virgl context fence refused: completing it now");
                wait.0.complete();
            }
            return Box::pin(wait);
        }
        let id = lib.next_global_fence.get();
        lib.next_global_fence.set(id.wrapping_add(1));
        let wait = lib.book.wait(Timeline::Global, u64::from(id));
        // SAFETY: on the init thread. The id is echoed back as u32.
        let rc = unsafe { ffi::virgl_renderer_create_fence(id as c_int, 0) };
        if rc != 0 {
            tracing::warn!(rc, "virgl fence refused: completing it now");
            wait.0.complete();
        }
        Box::pin(wait)
    }

    fn create_resource(&mut self, id: u32, kind: &ResourceKind) -> Result<(), ProtocolError> {
        let args = match kind {
            // What QEMU's virtio-gpu-virgl gives a 2D resource: virtio's 2D
            // format numbers are virgl's.
            ResourceKind::Image2d {
                format,
                width,
                height,
            } => ffi::ResourceCreateArgs {
                handle: id,
                target: ffi::PIPE_TEXTURE_2D,
                format: format.to_wire(),
                bind: ffi::BIND_RENDER_TARGET,
                width: *width,
                height: *height,
                depth: 1,
                array_size: 1,
                last_level: 0,
                nr_samples: 0,
                flags: ffi::RESOURCE_FLAG_Y_0_TOP,
            },
            ResourceKind::Image3d(c) => ffi::ResourceCreateArgs {
                handle: id,
                target: c.target,
                format: c.format,
                bind: c.bind,
                width: c.width,
                height: c.height,
                depth: c.depth,
                array_size: c.array_size,
                last_level: c.last_level,
                nr_samples: c.nr_samples,
                flags: c.flags,
            },
            ResourceKind::HostBlob { .. } | ResourceKind::GuestBlob { .. } => {
                return Err(ProtocolError::FeatureNotNegotiated {
                    command: VIRTIO_GPU_CMD_RESOURCE_CREATE_BLOB,
                    feature: VIRTIO_GPU_F_RESOURCE_BLOB,
                })
            }
        };
        self.create(args)
    }

    fn destroy_resource(&mut self, id: u32) {
        if self.resources.remove(&id).is_some() {
            self.detach_iov(id);
            // SAFETY: on the init thread; a resource we created.
            unsafe { ffi::virgl_renderer_resource_unref(id) };
        }
    }

    fn attach_backing(
        &mut self,
        id: u32,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        self.extent(id)?;
        // The library keeps the first backing it was given: replace ours.
        self.detach_iov(id);
        let (iovecs, guards) = backing_iovecs(backing, mem, Permissions::ReadWrite)?;
        let n = c_int::try_from(iovecs.len()).map_err(|_| ProtocolError::OutOfMemory {
            requested: iovecs.len() as u64,
        })?;
        let mut held = Attached {
            iovecs: iovecs.into_boxed_slice(),
            _guards: guards,
            _mem: mem.clone(),
        };
        // SAFETY: on the init thread; a resource we created. The library
        // keeps the array pointer: the boxed slice does not move when
        // `held` does, and `held` lives in `attached` until `detach_iov`
        // has taken the pointer back. The iovecs point into guest memory
        // mapped by `held._mem`'s regions, which stay mapped while it is
        // held. The guest may write those pages at any time; the library
        // only copies from and to them.
        let rc = unsafe {
            ffi::virgl_renderer_resource_attach_iov(id as c_int, held.iovecs.as_mut_ptr(), n)
        };
        check("attach_iov", id, rc)?;
        self.attached.insert(id, held);
        Ok(())
    }

    fn detach_backing(&mut self, id: u32) -> Result<(), ProtocolError> {
        self.detach_iov(id);
        Ok(())
    }

    fn transfer_to_host_2d(
        &mut self,
        id: u32,
        rect: Rect,
        offset: u64,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let e = self.extent(id)?;
        if !rect.fits_within(e.width, e.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        let b = ffi::VirglBox::of_rect(rect);
        // Stride 0: rows as wide as the resource, as QEMU does.
        self.transfer(id, 0, b, 0, 0, 0, offset, true, backing, mem)
    }

    fn transfer_3d(
        &mut self,
        ctx: u32,
        t: &Transfer3d,
        to_host: bool,
        backing: &Backing,
        mem: &GuestMem,
    ) -> Result<(), ProtocolError> {
        let b = ffi::VirglBox {
            x: t.box3d.x,
            y: t.box3d.y,
            z: t.box3d.z,
            w: t.box3d.w,
            h: t.box3d.h,
            d: t.box3d.d,
        };
        self.transfer(
            t.resource_id.0,
            ctx,
            b,
            t.level,
            t.stride,
            t.layer_stride,
            t.offset,
            to_host,
            backing,
            mem,
        )
    }

    fn read_rect(&mut self, id: u32, rect: Rect, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let e = self.extent(id)?;
        if !rect.fits_within(e.width, e.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        if rect.is_empty() {
            return Ok(());
        }
        let row = u64::from(rect.width) * BPP;
        let stride =
            u32::try_from(row).map_err(|_| ProtocolError::OutOfMemory { requested: row })?;
        let len = row.saturating_mul(u64::from(rect.height));
        let len =
            usize::try_from(len).map_err(|_| ProtocolError::OutOfMemory { requested: len })?;
        let start = out.len();
        out.resize(start + len, 0);
        let mut iov = libc::iovec {
            iov_base: out[start..].as_mut_ptr().cast::<c_void>(),
            iov_len: len,
        };
        let mut b = ffi::VirglBox::of_rect(rect);
        // SAFETY: on the init thread; the iovec is `len` bytes of `out`,
        // borrowed for the call; the library writes at most the box's rows
        // at `row` bytes each (it checks that against the iovec length).
        let rc = unsafe {
            ffi::virgl_renderer_transfer_read_iov(id, 0, 0, stride, 0, &mut b, 0, &mut iov, 1)
        };
        if let Err(err) = check("read_rect", id, rc) {
            out.truncate(start);
            return Err(err);
        }
        Ok(())
    }

    fn blob_memory(&mut self, _id: u32) -> Option<BlobMemory> {
        None
    }
}

impl Virgl {
    /// Writes `rect` of resource `id` from `pixels` (4 bytes a pixel, rows
    /// packed): what [`Renderer::read_rect`] reads, the other way. Render
    /// workers bring a replica of another worker's resource up to date
    /// with it.
    pub fn write_rect(&mut self, id: u32, rect: Rect, pixels: &[u8]) -> Result<(), ProtocolError> {
        let e = self.extent(id)?;
        if !rect.fits_within(e.width, e.height) {
            return Err(ProtocolError::RectOutsideResource);
        }
        let row = u64::from(rect.width) * BPP;
        if pixels.len() as u64 != row * u64::from(rect.height) {
            return Err(ProtocolError::RendererFailed(libc::EINVAL));
        }
        if rect.is_empty() {
            return Ok(());
        }
        let stride =
            u32::try_from(row).map_err(|_| ProtocolError::OutOfMemory { requested: row })?;
        let mut iov = libc::iovec {
            iov_base: pixels.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: pixels.len(),
        };
        let mut b = ffi::VirglBox::of_rect(rect);
        // SAFETY: on the init thread; the iovec is `pixels`, borrowed for
        // the call; the library only reads through it for a write transfer
        // (the pointer is mutable in its signature only), at most the box's
        // rows at `row` bytes each, which it checks against the length.
        let rc = unsafe {
            ffi::virgl_renderer_transfer_write_iov(id, 0, 0, stride, 0, &mut b, 0, &mut iov, 1)
        };
        check("write_rect", id, rc)
    }
}

#[cfg(test)]
mod tests;

pub use super::virgl_cmd::{clear_stream, copy_stream, VIRGL_FORMAT_R8G8B8A8_UNORM};
