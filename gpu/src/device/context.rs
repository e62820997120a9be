//! `ContextShard`: the state and executor a device keeps on each shard.
//!
//! It owns the shard's renderer and the resources and contexts whose home is
//! this shard. Commands arrive in order on one channel. A command that has
//! to wait (a fence, a blob map awaiting the VMM) becomes its own task, so
//! nothing queued behind it on this shard waits for it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{
    FileOffset, GuestAddressSpace, GuestMemoryAtomic, MmapRegion, VolatileMemory, WriteVolatile,
};

use crate::backing::{Backing, GuestMem};
use crate::blob::{BlobLane, BlobMapper, HostVisibleRanges, MappedRange};
use crate::protocol::wire::{
    VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_MAP_CACHE_CACHED, VIRTIO_GPU_RESP_ERR_UNSPEC,
};
use crate::protocol::{BlobMem, GpuCommand, ProtocolError, Rect, Response};
use crate::render::{
    BlobMemory, GpuWait, PixelsWait, Renderer, RendererFactory, ResourceKind, Settle,
};

use super::budget::{backing_bytes, Charge, GuestBudget};
use super::job::{Done, Extra, Job, Reply, ShardMsg};
use super::scanout::{BlobPlane, CursorEvent, DisplaySink};

/// Cursor images are 64x64 (virtio 1.3, 5.7.6.10).
const CURSOR_SIZE: u32 = 64;

pub(super) struct ShardResource {
    backing: Option<Backing>,
    /// The backing's entries charged to the guest's budget, while attached.
    backing_charge: Option<Charge>,
    /// A host blob's memory mapped for reading, once a scanout showed it.
    host_view: Option<HostBlobView>,
    /// The range of the host-visible region this blob holds, from its
    /// MAP_BLOB on.
    mapped: Option<MappedRange>,
    lane: BlobLane,
    host_blob: bool,
}

/// Everything a shard needs from its device.
#[derive(Clone)]
pub struct ShardEnv {
    pub shard: usize,
    pub mem: GuestMemoryAtomic<GuestMem>,
    pub display: Arc<dyn DisplaySink>,
    pub blob: Arc<dyn BlobMapper>,
    /// What every shard's blobs hold of the host-visible region.
    pub blob_ranges: Arc<HostVisibleRanges>,
    pub renderer: Arc<dyn RendererFactory>,
    /// The device's count of pixel bytes copied, shared by its shards.
    pub pixel_bytes_copied: Arc<AtomicU64>,
    /// The guest's memory budget (backing entries, flush buffers).
    pub budget: Arc<GuestBudget>,
}

struct State {
    renderer: Box<dyn Renderer>,
    resources: HashMap<u32, ShardResource>,
    /// The renderer's `pixel_bytes_copied` already added to the device's.
    copied_seen: u64,
}

/// Runs a shard's executor until the channel closes.
pub async fn run(env: ShardEnv, mut rx: reactor::Receiver<ShardMsg>) {
    let make = || match env.renderer.create(env.shard) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(shard = env.shard, error = %e, "renderer failed to start");
            None
        }
    };
    let Some(renderer) = make() else { return };
    let state = Rc::new(RefCell::new(State {
        renderer,
        resources: HashMap::new(),
        copied_seen: 0,
    }));
    let mut since_yield = 0;
    while let Some(msg) = rx.recv().await {
        // A queued burst must not keep the shard from its other tasks.
        since_yield += 1;
        if since_yield == 32 {
            since_yield = 0;
            reactor::yield_now().await;
        }
        match msg {
            ShardMsg::Job(job) => {
                execute(&env, &state, *job);
                let mut st = state.borrow_mut();
                let copied = st.renderer.pixel_bytes_copied();
                if copied != st.copied_seen {
                    let new = copied.saturating_sub(st.copied_seen);
                    env.pixel_bytes_copied.fetch_add(new, Ordering::Relaxed);
                    st.copied_seen = copied;
                }
            }
            ShardMsg::Reset => {
                let Some(renderer) = make() else { return };
                let mut st = state.borrow_mut();
                st.resources.clear();
                env.blob_ranges.release_shard(env.shard);
                st.renderer = renderer;
                st.copied_seen = 0;
            }
        }
    }
}

/// Writes the response and tells the owner.
fn respond(env: &ShardEnv, reply: &Reply, resp: &Response) {
    let mem = env.mem.memory();
    let len = match reply.response.write_response(&*mem, &reply.hdr, resp) {
        Ok(n) => n,
        Err(e) => {
            crate::warn_limited!(shard = env.shard, error = %e, "response does not fit the chain");
            0
        }
    };
    let _ = reply.done.send(Done {
        generation: reply.generation,
        queue: reply.queue,
        head: reply.head,
        len,
        ticket: reply.ticket,
        routed_ctx: reply.hdr.ctx_id,
    });
}

fn err(e: ProtocolError) -> Response {
    Response::Err(e.response_code())
}

/// What executing a command produced.
enum Outcome {
    Now(Response),
    /// The response is ready but the fence must wait for the GPU.
    AfterGpu(Response, GpuWait),
    /// The renderer finishes the command elsewhere (a render worker): the
    /// response waits for that, then for the fence if there is one.
    Later(Settle, Response, Option<GpuWait>),
    /// Handled by a blob task that responds itself.
    Detached,
}

fn execute(env: &ShardEnv, state: &Rc<RefCell<State>>, job: Job) {
    let hdr = job.reply.hdr;
    let fenced = hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0;
    let outcome = {
        let mut st = state.borrow_mut();
        let ran = run_command(env, &mut st, state, &job);
        // Taken in every case, so nothing owed by this command leaks into
        // the next one's settlement.
        let settle = st.renderer.settle();
        match ran {
            Ok(Some(resp)) => {
                // The fence is asked for now, in command order, even when
                // the command itself is still settling.
                let wait = fenced.then(|| st.renderer.fence(hdr.ctx_id, hdr.ring_idx));
                match (settle, wait) {
                    (Some(settle), wait) => Outcome::Later(settle, resp, wait),
                    (None, Some(wait)) => Outcome::AfterGpu(resp, wait),
                    (None, None) => Outcome::Now(resp),
                }
            }
            Ok(None) => Outcome::Detached,
            Err(e) => {
                tracing::debug!(shard = env.shard, error = %e, kind = hdr.kind, "command failed");
                Outcome::Now(err(e))
            }
        }
    };
    // What waits keeps only the reply: the command's buffers, and their
    // charge to the guest's budget, go when this returns.
    let Job { reply, .. } = job;
    match outcome {
        Outcome::Now(resp) => respond(env, &reply, &resp),
        Outcome::AfterGpu(resp, wait) => {
            let env = env.clone();
            reactor::spawn_local_named("fence-wait", async move {
                wait.await;
                respond(&env, &reply, &resp);
            });
        }
        Outcome::Later(settle, resp, wait) => {
            let env = env.clone();
            reactor::spawn_local_named("renderer-settle", async move {
                let resp = match settle.await {
                    Ok(()) => {
                        if let Some(wait) = wait {
                            wait.await;
                        }
                        resp
                    }
                    Err(e) => {
                        tracing::debug!(shard = env.shard, error = %e, kind = hdr.kind, "command failed");
                        err(e)
                    }
                };
                respond(&env, &reply, &resp);
            });
        }
        Outcome::Detached => {}
    }
}

/// A read-back: already done (every in-process renderer, so the common
/// path stays synchronous), or still owed by a render worker.
enum Read {
    Done(Result<Vec<u8>, ProtocolError>),
    Later(PixelsWait),
}

impl Read {
    fn start(mut wait: PixelsWait) -> Read {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match wait.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => Read::Done(r),
            std::task::Poll::Pending => Read::Later(wait),
        }
    }

    fn finish_now(self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            Read::Done(r) => r,
            Read::Later(_) => Err(ProtocolError::RendererFailed(libc::EAGAIN)),
        }
    }

    async fn finish(self) -> Result<Vec<u8>, ProtocolError> {
        match self {
            Read::Done(r) => r,
            Read::Later(w) => w.await,
        }
    }
}

/// Runs one command against shard state. `Ok(None)`: a task took the job
/// over and responds itself.
fn run_command(
    env: &ShardEnv,
    st: &mut State,
    state: &Rc<RefCell<State>>,
    job: &Job,
) -> Result<Option<Response>, ProtocolError> {
    let ctx = job.reply.hdr.ctx_id;
    let ok = Ok(Some(Response::OkNodata));
    match &job.cmd {
        GpuCommand::ResourceCreate2d(c) => {
            let kind = ResourceKind::Image2d {
                format: c.format,
                width: c.width,
                height: c.height,
            };
            create(st, c.resource_id.0, &kind, None)?;
            ok
        }
        GpuCommand::ResourceCreate3d(c) => {
            create(st, c.resource_id.0, &ResourceKind::Image3d(*c), None)?;
            ok
        }
        GpuCommand::ResourceCreateBlob(c) => {
            let kind = match c.blob_mem {
                BlobMem::Guest => ResourceKind::GuestBlob { size: c.size },
                BlobMem::Host3d | BlobMem::Host3dGuest => ResourceKind::HostBlob {
                    size: c.size,
                    blob_id: c.blob_id,
                },
            };
            // Entries given at creation were charged with the blob, at
            // intake; a backing attached later is charged here.
            let backing = if c.entries.is_empty() {
                None
            } else {
                Some(Backing::new(c.entries.clone(), &env.mem.memory())?)
            };
            create(st, c.resource_id.0, &kind, backing)?;
            ok
        }
        GpuCommand::ResourceUnref(r) => {
            let id = r.resource_id.0;
            let res = st
                .resources
                .remove(&id)
                .ok_or(ProtocolError::UnknownResource(id))?;
            crate::sparse::shrink_sparse(&mut st.resources);
            st.renderer.destroy_resource(id);
            if let Some(range) = res.mapped {
                // The guest freed a still-mapped blob: take it out of the
                // region behind any operation still queued on it.
                let (blob, ranges) = (env.blob.clone(), env.blob_ranges.clone());
                res.lane.run(async move {
                    let _ = blob.unmap(range.offset, range.len).await;
                    ranges.release(range);
                });
            }
            ok
        }
        GpuCommand::ResourceAttachBacking(a) => {
            let id = a.resource_id.0;
            let mem = env.mem.memory();
            if resource(st, id)?.backing.is_some() {
                return Err(ProtocolError::BackingAlreadyAttached(id));
            }
            let charge = env.budget.charge(backing_bytes(a.entries.len()))?;
            let backing = Backing::new(a.entries.clone(), &mem)?;
            st.renderer.attach_backing(id, &backing, &mem)?;
            let res = resource(st, id)?;
            res.backing = Some(backing);
            res.backing_charge = Some(charge);
            ok
        }
        GpuCommand::ResourceDetachBacking(r) => {
            let id = r.resource_id.0;
            if resource(st, id)?.backing.is_none() {
                return Err(ProtocolError::NoBacking(id));
            }
            st.renderer.detach_backing(id)?;
            let res = resource(st, id)?;
            res.backing = None;
            res.backing_charge = None;
            ok
        }
        GpuCommand::TransferToHost2d(t) => {
            let id = t.resource_id.0;
            let backing = resource(st, id)?
                .backing
                .clone()
                .ok_or(ProtocolError::NoBacking(id))?;
            st.renderer
                .transfer_to_host_2d(id, t.rect, t.offset, &backing, &env.mem.memory())?;
            ok
        }
        GpuCommand::TransferToHost3d(t) | GpuCommand::TransferFromHost3d(t) => {
            let id = t.resource_id.0;
            let to_host = matches!(job.cmd, GpuCommand::TransferToHost3d(_));
            let backing = resource(st, id)?
                .backing
                .clone()
                .ok_or(ProtocolError::NoBacking(id))?;
            st.renderer
                .transfer_3d(ctx, t, to_host, &backing, &env.mem.memory())?;
            ok
        }
        GpuCommand::ResourceFlush(f) => {
            let id = f.resource_id.0;
            resource(st, id)?;
            let Extra::Flush(targets) = &job.extra else {
                return ok;
            };
            // The pixel buffers are the guest's to pay for until the
            // display has them.
            let lens: Vec<usize> = targets
                .iter()
                .map(|t| flush_len(t.src))
                .collect::<Result<_, _>>()?;
            let total = lens
                .iter()
                .try_fold(0u64, |sum, &n| sum.checked_add(n as u64));
            let buffers = env.budget.charge_size(total)?;
            let mut reads = Vec::with_capacity(targets.len());
            for (t, &len) in targets.iter().zip(&lens) {
                let mut buf = env.display.pixel_buffer(len);
                let read = match t.blob {
                    Some(plane) => Read::Done(
                        read_blob_rect(st, env, id, plane, t.src, &mut buf).map(|()| buf),
                    ),
                    None => Read::start(st.renderer.read_rect_later(id, t.src, buf)),
                };
                reads.push((t.scanout, t.dst, read));
            }
            if reads.iter().all(|(_, _, r)| matches!(r, Read::Done(_))) {
                for (scanout, dst, r) in reads {
                    env.display.update(scanout, dst, r.finish_now()?);
                }
                drop(buffers);
                return ok;
            }
            // Pixels from a render worker: the display gets them, then the
            // guest its answer, from a task.
            let (env2, state2, reply) = (env.clone(), state.clone(), job.reply.clone());
            reactor::spawn_local_named("flush-readback", async move {
                let mut resp = Response::OkNodata;
                let _buffers = buffers;
                for (scanout, dst, r) in reads {
                    match r.finish().await {
                        Ok(px) => env2.display.update(scanout, dst, px),
                        Err(e) => {
                            tracing::debug!(resource = id, error = %e, "flush read-back failed");
                            resp = err(e);
                            break;
                        }
                    }
                }
                finish_detached(&env2, &state2, reply, resp).await;
            });
            Ok(None)
        }
        GpuCommand::CtxCreate(c) => {
            st.renderer
                .create_context(ctx, c.capset_id, &c.debug_name)?;
            ok
        }
        GpuCommand::CtxDestroy => {
            st.renderer.destroy_context(ctx);
            ok
        }
        GpuCommand::CtxAttachResource(r) => {
            st.renderer.attach_resource(ctx, r.resource_id.0)?;
            ok
        }
        GpuCommand::CtxDetachResource(r) => {
            st.renderer.detach_resource(ctx, r.resource_id.0);
            ok
        }
        GpuCommand::Submit3d(s) => {
            st.renderer.submit(ctx, job.reply.hdr.ring_idx, &s.data)?;
            ok
        }
        GpuCommand::ResourceMapBlob(m) => {
            let id = m.resource_id.0;
            let mappable = matches!(job.extra, Extra::Mappable(true));
            let blob_mem = st.renderer.blob_memory(id);
            let res = resource(st, id)?;
            if !res.host_blob {
                return Err(ProtocolError::NotABlob(id));
            }
            let Some(mem) = blob_mem.filter(|_| mappable) else {
                return Err(ProtocolError::BlobNotMappable(id));
            };
            if res.mapped.is_some() {
                return Err(ProtocolError::BlobAlreadyMapped(id));
            }
            let region = env.blob.region_size();
            if region == 0 {
                return Err(ProtocolError::NoHostVisibleRegion);
            }
            // Page aligned, inside the region, over no other blob: claimed
            // now, so a second MAP behind this one is refused.
            let range = env
                .blob_ranges
                .claim(env.shard, m.offset, mem.size, region)?;
            res.mapped = Some(range);
            let (env2, state2) = (env.clone(), state.clone());
            let (offset, reply) = (m.offset, job.reply.clone());
            res.lane.run(async move {
                let r = env2.blob.map(mem, offset, true).await;
                let resp = match r {
                    Ok(()) => Response::OkMapInfo {
                        map_info: VIRTIO_GPU_MAP_CACHE_CACHED,
                    },
                    Err(e) => {
                        crate::warn_limited!(resource = id, error = ?e, "MAP_BLOB failed in the VMM");
                        // Unless an UNMAP (or a newer MAP) took it meanwhile.
                        if let Some(r) = state2.borrow_mut().resources.get_mut(&id) {
                            if r.mapped == Some(range) {
                                r.mapped = None;
                            }
                        }
                        env2.blob_ranges.release(range);
                        Response::Err(VIRTIO_GPU_RESP_ERR_UNSPEC)
                    }
                };
                finish_detached(&env2, &state2, reply, resp).await;
            });
            Ok(None)
        }
        GpuCommand::ResourceUnmapBlob(r) => {
            let id = r.resource_id.0;
            let res = resource(st, id)?;
            let Some(range) = res.mapped.take() else {
                return Err(ProtocolError::BlobNotMapped(id));
            };
            let (env2, state2, reply) = (env.clone(), state.clone(), job.reply.clone());
            res.lane.run(async move {
                let unmapped = env2.blob.unmap(range.offset, range.len).await;
                // Free for another blob only once the VMM is done with it.
                env2.blob_ranges.release(range);
                let resp = match unmapped {
                    Ok(()) => Response::OkNodata,
                    Err(e) => {
                        crate::warn_limited!(resource = id, error = ?e, "UNMAP_BLOB failed in the VMM");
                        Response::Err(VIRTIO_GPU_RESP_ERR_UNSPEC)
                    }
                };
                finish_detached(&env2, &state2, reply, resp).await;
            });
            Ok(None)
        }
        GpuCommand::UpdateCursor(c) => {
            let id = c.resource_id.0;
            let read = Read::start(st.renderer.read_rect_later(
                id,
                Rect::new(0, 0, CURSOR_SIZE, CURSOR_SIZE),
                Vec::new(),
            ));
            let (scanout, x, y, hot_x, hot_y) =
                (c.pos.scanout_id.0, c.pos.x, c.pos.y, c.hot_x, c.hot_y);
            let update = move |image| CursorEvent::Update {
                scanout,
                x,
                y,
                hot_x,
                hot_y,
                image: Some(image),
            };
            if let Read::Done(_) = read {
                env.display.cursor(update(read.finish_now()?));
                return ok;
            }
            let (env2, state2, reply) = (env.clone(), state.clone(), job.reply.clone());
            reactor::spawn_local_named("cursor-readback", async move {
                let resp = match read.finish().await {
                    Ok(image) => {
                        env2.display.cursor(update(image));
                        Response::OkNodata
                    }
                    Err(e) => err(e),
                };
                finish_detached(&env2, &state2, reply, resp).await;
            });
            Ok(None)
        }
        // Answered by the owner; never routed here.
        other => {
            tracing::error!(shard = env.shard, cmd = ?std::mem::discriminant(other), "command routed to a shard by mistake");
            Err(ProtocolError::UnknownCommandType(job.reply.hdr.kind))
        }
    }
}

/// A detached command finished: wait for its fence if it has one, respond.
async fn finish_detached(env: &ShardEnv, state: &Rc<RefCell<State>>, reply: Reply, resp: Response) {
    if reply.hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0 {
        let wait = state
            .borrow_mut()
            .renderer
            .fence(reply.hdr.ctx_id, reply.hdr.ring_idx);
        wait.await;
    }
    respond(env, &reply, &resp);
}

fn resource(st: &mut State, id: u32) -> Result<&mut ShardResource, ProtocolError> {
    st.resources
        .get_mut(&id)
        .ok_or(ProtocolError::UnknownResource(id))
}

/// Appends the pixels of `rect` of a blob scanout's image to `out`: from
/// the guest pages of a guest blob, or from a host blob's memory.
fn read_blob_rect(
    st: &mut State,
    env: &ShardEnv,
    id: u32,
    plane: BlobPlane,
    rect: Rect,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let row = rect.width as usize * 4;
    let at = |y: u32| plane.offset + u64::from(y) * u64::from(plane.stride) + u64::from(rect.x) * 4;
    if let Some(backing) = &resource(st, id)?.backing {
        let mem = env.mem.memory();
        for y in rect.y..rect.y + rect.height {
            backing.append(&mem, at(y), row, out)?;
        }
        return Ok(());
    }
    if resource(st, id)?.host_view.is_none() {
        let blob = st
            .renderer
            .blob_memory(id)
            .ok_or(ProtocolError::NoBacking(id))?;
        resource(st, id)?.host_view = Some(HostBlobView::new(&blob)?);
    }
    let Some(view) = &resource(st, id)?.host_view else {
        return Err(ProtocolError::NoBacking(id));
    };
    for y in rect.y..rect.y + rect.height {
        view.append(at(y), row, out)?;
    }
    Ok(())
}

/// A host blob's memory mapped read-only (scanout read-back).
struct HostBlobView {
    region: MmapRegion<()>,
}

impl HostBlobView {
    fn new(blob: &BlobMemory) -> Result<Self, ProtocolError> {
        let too_big = ProtocolError::OutOfMemory {
            requested: blob.size,
        };
        let size = usize::try_from(blob.size).map_err(|_| too_big.clone())?;
        let fd = blob.fd.try_clone().map_err(|_| too_big.clone())?;
        let file = FileOffset::new(std::fs::File::from(fd), blob.offset);
        let region = MmapRegion::build(Some(file), size, libc::PROT_READ, libc::MAP_SHARED)
            .map_err(|_| too_big)?;
        Ok(HostBlobView { region })
    }

    fn append(&self, offset: u64, len: usize, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let beyond = ProtocolError::ScanoutBeyondBlob {
            needed: offset.saturating_add(len as u64),
            blob_size: self.region.size() as u64,
        };
        let at = usize::try_from(offset).map_err(|_| beyond.clone())?;
        let slice = self
            .region
            .as_volatile_slice()
            .subslice(at, len)
            .map_err(|_| beyond.clone())?;
        out.write_all_volatile(&slice).map_err(|_| beyond)
    }
}

/// Bytes of a flush's pixel buffer for `src` (4 a pixel).
fn flush_len(src: Rect) -> Result<usize, ProtocolError> {
    let n = u64::from(src.width)
        .checked_mul(u64::from(src.height))
        .and_then(|n| n.checked_mul(4));
    n.and_then(|n| usize::try_from(n).ok())
        .ok_or(ProtocolError::OutOfMemory {
            requested: n.unwrap_or(u64::MAX),
        })
}

fn create(
    st: &mut State,
    id: u32,
    kind: &ResourceKind,
    backing: Option<Backing>,
) -> Result<(), ProtocolError> {
    if st.resources.contains_key(&id) {
        return Err(ProtocolError::ResourceIdInUse(id));
    }
    st.renderer.create_resource(id, kind)?;
    st.resources.insert(
        id,
        ShardResource {
            backing,
            backing_charge: None,
            host_view: None,
            mapped: None,
            lane: BlobLane::default(),
            host_blob: matches!(kind, ResourceKind::HostBlob { .. }),
        },
    );
    Ok(())
}
