//! Intake: pop chains from a virtqueue, decode each once, check what the
//! directory can check, and route it: answered here (display state,
//! capsets), or sent to the home shard of its context or resource.
//! Nothing here waits on a command: a command that cannot finish yet only
//! occupies its own chain, so the queue never blocks head-of-line.
//!
//! Display queries (GET_DISPLAY_INFO, GET_EDID) are answered from the VMM's
//! cached view, except while a newly connected VMM display is being asked
//! for it the first time: those wait (as their own task, at most
//! [`VMM_VIEW_WAIT`]) so the guest is not told a configuration the VMM is
//! about to contradict (QEMU cannot be made to tell the guest again).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};

use crate::backing::GuestMem;
use crate::fence::TimelineId;
use crate::protocol::le::ByteReader;
use crate::protocol::wire::{
    VIRTIO_GPU_CMD_CTX_CREATE, VIRTIO_GPU_FLAG_FENCE, VIRTIO_GPU_FLAG_INFO_RING_IDX,
    VIRTIO_GPU_F_CONTEXT_INIT, VIRTIO_GPU_MAX_RING_IDX,
};
use crate::protocol::{
    decode, decode_cursor, edid_for, gather, CtrlHeader, EdidBlob, Format, GpuCommand,
    ProtocolError, Rect, Request, Response, ResponseArea,
};
use vm_memory::GuestAddressSpace;

use super::backlog::Released;
use super::budget::{backing_bytes, held_bytes};
use super::directory::Shape;
use super::job::{Done, Extra, Job, QueueKind, Reply, ShardMsg};
use super::owner::{Owner, OwnerRef};
use super::scanout::{Binding, BlobPlane, CursorEvent, ScanoutMode, VmmViewWait};

/// Longest a display query waits for a newly connected VMM display's first
/// view (Linux waits 5 s for its first GET_DISPLAY_INFO).
pub(super) const VMM_VIEW_WAIT: Duration = Duration::from_secs(2);

/// A display query held until the VMM's first view is known.
pub(super) struct HeldQuery {
    generation: u64,
    kind: QueueKind,
    head: u16,
    hdr: CtrlHeader,
    area: ResponseArea,
    ticket: Option<crate::fence::FenceTicket>,
    req: Request,
    wait: VmmViewWait,
}

/// The intake task of one queue: drain, re-enable notifications, wait for a
/// kick (an eventfd read on the ring), repeat. Chains a previous backend
/// left in flight (`resubmit`) run first.
pub(super) async fn run(
    owner: OwnerRef,
    kind: QueueKind,
    kick: reactor::io::EventFd,
    resubmit: Vec<u16>,
) {
    if !resubmit.is_empty() {
        resubmit_chains(&owner, kind, &resubmit);
        reactor::yield_now().await;
    }
    loop {
        if drain(&owner, kind) {
            reactor::yield_now().await;
            continue;
        }
        if let Err(e) = kick.read().await {
            tracing::error!(queue = ?kind, error = %e, "kick eventfd failed; intake stops");
            return;
        }
    }
}

/// How long a context that sent a command with nothing of its own waiting
/// counts as active for the pacer.
const LIGHT_FOR: Duration = Duration::from_millis(100);
/// Pacer window, and how many waiting commands of flooding contexts it lets
/// go per window while lighter contexts are active (20 000/s: hundreds per
/// frame, a tenth of what the device can run).
const PACE_WINDOW: Duration = Duration::from_millis(1);
const PACE_BUDGET: u32 = 20;
/// Backlogged contexts the pacer remembers before it forgets quiet ones.
const PACER_CONTEXTS: usize = 256;

/// Fair share for contexts that flood. A context past its in-flight cap
/// waits at the owner (`dispatch`); each of its finished commands lets the
/// next one go. Unpaced, a flooding context (desktop 0 of loadgen's
/// `queue-full`) keeps every core busy with its commands, and the other
/// desktops' wake-ups wait for CPU. While any context without a backlog is
/// active, the backlogged ones together get [`PACE_BUDGET`] commands per
/// [`PACE_WINDOW`]; with none active (one context alone, or all flooding, as
/// the device benchmark) nothing is paced. A context counts as light when it
/// has not had to wait for [`LIGHT_FOR`].
#[derive(Debug)]
pub(super) struct Pacer {
    /// Last dispatch from a context that has not had to wait lately, and
    /// that context.
    light_at: Option<(u32, Instant)>,
    /// When each context last had to wait (was parked).
    backlogged_at: HashMap<u32, Instant>,
    /// Size of `backlogged_at` at which the quiet ones are swept out.
    sweep_at: usize,
    window_end: Instant,
    tokens: u32,
    /// Contexts owed a dispatch (one entry per finished command).
    owed: VecDeque<u32>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer {
            light_at: None,
            backlogged_at: HashMap::new(),
            sweep_at: PACER_CONTEXTS,
            window_end: Instant::now(),
            tokens: PACE_BUDGET,
            owed: VecDeque::new(),
        }
    }
}

impl Pacer {
    /// A command of `ctx` had to wait.
    fn waited(&mut self, ctx: u32, now: Instant) {
        // Contexts are the guest's ids: forget the ones quiet for LIGHT_FOR
        // (they count as light again anyway) before this grows.
        // The next sweep waits for twice what is left, so sweeps cost
        // O(1) per call even when every entry is recent.
        if self.backlogged_at.len() >= self.sweep_at && !self.backlogged_at.contains_key(&ctx) {
            self.backlogged_at
                .retain(|_, t| now.saturating_duration_since(*t) < LIGHT_FOR);
            self.sweep_at = (2 * self.backlogged_at.len()).max(PACER_CONTEXTS);
        }
        self.backlogged_at.insert(ctx, now);
        if self.light_at.is_some_and(|(c, _)| c == ctx) {
            self.light_at = None;
        }
    }

    /// A command of `ctx` went straight to its shard: if `ctx` has not had
    /// to wait lately, it is a light context the pacer protects.
    fn went(&mut self, ctx: u32, now: Instant) {
        let flooding = self
            .backlogged_at
            .get(&ctx)
            .is_some_and(|&t| now.saturating_duration_since(t) < LIGHT_FOR);
        if !flooding {
            self.light_at = Some((ctx, now));
        }
    }

    /// True when a waiting command of `ctx` may go now: always, unless
    /// another context is light (active, with nothing waiting).
    fn take(&mut self, ctx: u32, now: Instant) -> bool {
        let contended = self
            .light_at
            .is_some_and(|(c, t)| c != ctx && now.saturating_duration_since(t) < LIGHT_FOR);
        if !contended {
            return true;
        }
        if now >= self.window_end {
            self.window_end = now + PACE_WINDOW;
            self.tokens = PACE_BUDGET;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Chains popped before intake lets the shard's other tasks (completion,
/// context executors) run: a full 1024-entry queue must not hold the shard
/// for milliseconds.
const INTAKE_BUDGET: usize = 64;

/// Pops available chains, at most `INTAKE_BUDGET`; true when more remain.
pub(super) fn drain(owner: &OwnerRef, kind: QueueKind) -> bool {
    let mut o = owner.borrow_mut();
    let mem = o.mem.memory();
    let mut popped = 0;
    // Set after `enable_notification` said more arrived: if the ring then
    // still yields nothing, it never will until the driver changes it.
    let mut rechecked = false;
    let more = loop {
        if popped == INTAKE_BUDGET {
            break true;
        }
        let Some(q) = o.queues[kind as usize].as_mut() else {
            return false;
        };
        let chain = match q.queue.iter(&*mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                // An avail index more than the ring's size ahead (or an
                // unreadable ring): nothing can be taken. Wait for the next
                // kick; `enable_notification` would report "more" forever
                // and this loop would spin the owner shard (found by the
                // `vhost` fuzz target).
                crate::warn_limited!(queue = ?kind, error = ?e, "queue not usable");
                break false;
            }
        };
        match chain {
            Some(chain) => {
                popped += 1;
                rechecked = false;
                if let Some(log) = q.log.as_mut() {
                    log.taken(chain.head_index());
                }
                handle(&mut o, kind, chain, &mem);
            }
            None => match q.queue.enable_notification(&*mem) {
                // More arrived while notifications were off: keep going,
                // once (an avail entry that cannot be read yields nothing
                // however often it is asked for).
                Ok(true) if !rechecked => {
                    rechecked = true;
                    continue;
                }
                Ok(true) => {
                    crate::warn_limited!(queue = ?kind, "avail ring entries not readable");
                    break false;
                }
                Ok(false) => break false,
                Err(e) => {
                    crate::warn_limited!(queue = ?kind, error = ?e, "cannot enable notifications");
                    break false;
                }
            },
        }
    };
    o.signal_used(kind);
    let held = std::mem::take(&mut o.held_display);
    drop(o);
    for h in held {
        reactor::spawn_local_named("display-query", answer_after_vmm_view(owner.clone(), h));
    }
    more
}

/// Answers a held display query once the VMM's first view is known (or
/// after [`VMM_VIEW_WAIT`], from whatever is known then).
async fn answer_after_vmm_view(owner: OwnerRef, held: HeldQuery) {
    let HeldQuery {
        generation,
        kind,
        head,
        hdr,
        area,
        ticket,
        req,
        wait,
    } = held;
    if reactor::time::timeout(VMM_VIEW_WAIT, wait).await.is_err() {
        // Once per held query: a guest can send many while the VMM is slow.
        crate::warn_limited!(
            "the VMM's display view is not known after {VMM_VIEW_WAIT:?}; answering the guest's \
             display query without it"
        );
    }
    let mut o = owner.borrow_mut();
    if o.generation != generation {
        return;
    }
    if o.queues[kind as usize].is_none() {
        // The ring stopped meanwhile (its drain gave up): write nothing to
        // guest memory, only release the fence ticket.
        o.complete_now(kind, head, 0, ticket);
        o.check_quiesced();
        return;
    }
    let mem = o.mem.memory();
    let result = match route(&mut o, &req) {
        Ok(Route::Here(resp)) => Ok(resp),
        Ok(Route::Shard(..)) => Err(ProtocolError::UnknownCommandType(hdr.kind)),
        Err(e) => Err(e),
    };
    o.answer_now(kind, head, &hdr, &area, ticket, &result, &mem);
    o.signal_used(kind);
    o.check_quiesced();
}

/// Runs the chains a previous backend took and never completed, in the
/// order it took them, before anything new from the avail ring.
///
/// Their descriptors are still in the guest's table (the guest has not had
/// them back), but their avail slots may have been reused, so they are
/// walked by a private queue whose avail ring lists exactly these heads: it
/// lives in one private page added to a copy of the guest memory map (the
/// guest's own rings are only read). They stay marked in the inflight
/// region until they complete, like any other chain.
fn resubmit_chains(owner: &OwnerRef, kind: QueueKind, heads: &[u16]) {
    let mut o = owner.borrow_mut();
    let mem = o.mem.memory();
    let Some(q) = o.queues[kind as usize].as_ref() else {
        return;
    };
    let (size, desc_table) = (q.queue.size(), q.queue.desc_table());
    let mut replay = match replay_queue(&mem, size, desc_table, heads) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(queue = ?kind, commands = heads.len(), "cannot resubmit in-flight commands: {e}");
            return;
        }
    };
    let mut done = 0;
    for _ in heads {
        let Some(chain) = replay.queue.pop_descriptor_chain(&replay.view) else {
            break;
        };
        done += 1;
        o.stats.resubmitted += 1;
        handle(&mut o, kind, chain, &mem);
    }
    if done < heads.len() {
        tracing::error!(queue = ?kind, marked = heads.len(), resubmitted = done, "some marked heads are not chains");
    }
    tracing::info!(queue = ?kind, commands = done, "resubmitted in-flight commands");
    o.signal_used(kind);
}

/// A queue over the guest's descriptor table whose avail ring, in a
/// private page, holds `heads`.
struct Replay {
    view: GuestMem,
    queue: virtio_queue::Queue,
}

fn replay_queue(
    mem: &GuestMem,
    size: u16,
    desc_table: u64,
    heads: &[u16],
) -> Result<Replay, String> {
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestRegionMmap};
    const PAGE: u64 = 4096;
    // avail: flags, idx, ring[size], used_event; used: flags, idx,
    // ring[size] of 8 bytes, avail_event.
    let avail_len = 6 + 2 * u64::from(size);
    let used_at = avail_len.next_multiple_of(4);
    let len = (used_at + 6 + 8 * u64::from(size)).next_multiple_of(PAGE);
    let base = mem
        .last_addr()
        .0
        .checked_add(1)
        .and_then(|a| a.checked_next_multiple_of(PAGE))
        .filter(|a| a.checked_add(len).is_some())
        .ok_or("no guest address left for the replay ring")?;
    let region = GuestRegionMmap::<()>::from_range(GuestAddress(base), len as usize, None)
        .map_err(|e| format!("replay ring: {e}"))?;
    let view = mem
        .insert_region(Arc::new(region))
        .map_err(|e| format!("replay ring: {e}"))?;
    let n = u16::try_from(heads.len()).map_err(|_| "too many heads")?;
    let mut ring = Vec::with_capacity(4 + 2 * heads.len());
    ring.extend_from_slice(&0u16.to_le_bytes());
    ring.extend_from_slice(&n.to_le_bytes());
    for h in heads {
        ring.extend_from_slice(&h.to_le_bytes());
    }
    view.write_slice(&ring, GuestAddress(base))
        .map_err(|e| format!("replay ring: {e}"))?;
    let mut queue = virtio_queue::Queue::new(size).map_err(|e| format!("{e:?}"))?;
    queue
        .try_set_desc_table_address(GuestAddress(desc_table))
        .map_err(|e| format!("{e:?}"))?;
    queue
        .try_set_avail_ring_address(GuestAddress(base))
        .map_err(|e| format!("{e:?}"))?;
    queue
        .try_set_used_ring_address(GuestAddress(base + used_at))
        .map_err(|e| format!("{e:?}"))?;
    queue.set_ready(true);
    Ok(Replay { view, queue })
}

/// The timeline a fenced header is ordered on. Timelines exist only for
/// what exists: the global one, and rings `0..max_rings` of context 0 and
/// of live contexts (virtio 1.3 §5.7.6.7: `ring_idx` is 0 to 63 and names
/// a ring of the context). Anything else is refused, with the timeline the
/// guest named: the command is answered with the error and no timeline is
/// created for it (crosvm likewise answers a fence on an unknown context
/// with ERR_INVALID_CONTEXT_ID).
fn placement(o: &Owner, hdr: &CtrlHeader) -> Result<TimelineId, (TimelineId, ProtocolError)> {
    let rings = o.decode.has_feature(VIRTIO_GPU_F_CONTEXT_INIT);
    if !rings || hdr.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX == 0 {
        // Without CONTEXT_INIT decode refuses the flag; the error still
        // goes out in global order.
        return Ok(TimelineId::Global);
    }
    let (ctx, ring) = (hdr.ctx_id, hdr.ring_idx);
    let id = TimelineId::Ring { ctx, ring };
    // CTX_CREATE may fence on a ring of the context it creates (crosvm and
    // QEMU create first, then fence); `handle` retires the timeline again
    // if the creation is refused.
    let live =
        ctx == 0 || o.directory.context(ctx).is_ok() || hdr.kind == VIRTIO_GPU_CMD_CTX_CREATE;
    if !live {
        return Err((id, ProtocolError::UnknownContext(ctx)));
    }
    if ring >= o.shared.info.max_rings.min(VIRTIO_GPU_MAX_RING_IDX + 1) {
        return Err((id, ProtocolError::RingIdxOutOfRange(ring)));
    }
    Ok(id)
}

/// After a CTX_CREATE that did not create its context: the timeline its
/// fence may have made (see `placement`) goes once released.
fn forget_unborn_context(o: &mut Owner, hdr: &CtrlHeader) {
    let ctx = hdr.ctx_id;
    if hdr.kind == VIRTIO_GPU_CMD_CTX_CREATE && ctx != 0 && o.directory.context(ctx).is_err() {
        o.timelines.retire_context(ctx);
    }
}

fn handle(o: &mut Owner, kind: QueueKind, chain: DescriptorChain<&GuestMem>, mem: &GuestMem) {
    o.stats.chains += 1;
    let head = chain.head_index();
    let gathered = match gather(chain, &o.chain_limits) {
        Ok(g) => g,
        Err(e) => {
            // No safe place to answer: give the chain back empty.
            crate::warn_limited!(queue = ?kind, head, error = %e, "unusable descriptor chain");
            o.stats.errors += 1;
            o.complete_now(kind, head, 0, None);
            return;
        }
    };
    let area = gathered.response;
    let bytes = match gathered.request {
        Ok(b) => b,
        Err(e) => {
            o.answer_now(
                kind,
                head,
                &CtrlHeader::default(),
                &area,
                None,
                &Err(e),
                mem,
            );
            return;
        }
    };
    // The header alone, so a request with a bad body still gets its fence
    // (in order) with the error: a lost fence would hang the guest.
    let hdr = CtrlHeader::read(&mut ByteReader::new(&bytes)).unwrap_or_default();
    o.watch.start(
        kind,
        head,
        hdr.kind,
        hdr.ctx_id,
        hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0,
    );
    // A fence on a timeline that cannot exist is refused; it still goes
    // out behind the fences before it if that timeline is draining.
    let (ticket, refused) = if hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0 && kind == QueueKind::Control
    {
        match placement(o, &hdr) {
            Ok(id) => (Some(o.timelines.push(id, hdr.fence_id)), None),
            Err((id, e)) => (o.timelines.push_existing(id, hdr.fence_id), Some(e)),
        }
    } else {
        (None, None)
    };
    let req = match kind {
        QueueKind::Control => decode(&bytes, &o.decode),
        QueueKind::Cursor => decode_cursor(&bytes, &o.decode),
    };
    let req = match (req, refused) {
        (Ok(r), None) => r,
        (Err(e), _) | (Ok(_), Some(e)) => {
            o.answer_now(kind, head, &hdr, &area, ticket, &Err(e), mem);
            forget_unborn_context(o, &hdr);
            return;
        }
    };
    let display_query = matches!(req.cmd, GpuCommand::GetDisplayInfo | GpuCommand::GetEdid(_));
    if display_query {
        if let Some(wait) = o.shared.display.vmm_view_pending() {
            o.held_display.push(HeldQuery {
                generation: o.generation,
                kind,
                head,
                hdr,
                area,
                ticket,
                req,
                wait,
            });
            return;
        }
    }
    // What the decoded command holds until its shard ran it, charged
    // before anything is routed (a refusal leaves no state behind).
    let held = match o.shared.budget.charge(held_bytes(&req.cmd)) {
        Ok(c) => c,
        Err(e) => {
            o.answer_now(kind, head, &hdr, &area, ticket, &Err(e), mem);
            forget_unborn_context(o, &hdr);
            return;
        }
    };
    let routed = route(o, &req);
    forget_unborn_context(o, &hdr);
    match routed {
        Ok(Route::Here(resp)) => o.answer_now(kind, head, &hdr, &area, ticket, &Ok(resp), mem),
        Ok(Route::Shard(shard, extra)) => {
            let job = Job {
                reply: Reply {
                    generation: o.generation,
                    queue: kind,
                    head,
                    hdr,
                    response: area,
                    ticket,
                    done: o.done_tx.clone(),
                },
                cmd: req.cmd,
                extra,
                _held: held,
            };
            o.stats.in_flight += 1;
            o.stats.max_in_flight = o.stats.max_in_flight.max(o.stats.in_flight);
            o.dispatch(shard, Box::new(job));
        }
        Err(e) => o.answer_now(kind, head, &hdr, &area, ticket, &Err(e), mem),
    }
}

/// Commands of one context a shard holds at once (see `Owner::dispatch`).
const CONTEXT_IN_FLIGHT: usize = 64;

enum Route {
    Here(Response),
    Shard(usize, Extra),
}

/// Decides where a command runs, updating the directory and scanout table
/// in guest order.
fn route(o: &mut Owner, req: &Request) -> Result<Route, ProtocolError> {
    let hdr = &req.hdr;
    let ctx = hdr.ctx_id;
    let ctx_home = |o: &Owner| o.directory.context(ctx).map(|c| c.shard);
    let res_home = |o: &Owner, id: u32| o.directory.resource(id).map(|r| r.shard);
    let shard = |s| Ok(Route::Shard(s, Extra::None));
    match &req.cmd {
        GpuCommand::GetDisplayInfo => {
            // The VMM's view when it gave one (QEMU's xres/yres, its
            // windows), limited to our scanouts; else our configuration.
            let ours = o.scanouts.count() as usize;
            let modes = match o.shared.display.vmm_modes() {
                Some(m) if !m.is_empty() => m.into_iter().take(ours).collect(),
                _ => o.scanouts.modes().to_vec(),
            };
            o.shared.display.display_info_asked();
            Ok(Route::Here(Response::display_info(&modes)))
        }
        GpuCommand::GetEdid(g) => {
            let mode =
                o.scanouts
                    .mode(g.scanout_id.0)
                    .ok_or(ProtocolError::ScanoutIdOutOfRange {
                        id: g.scanout_id.0,
                        num: o.scanouts.count(),
                    })?;
            let blob = match o.shared.display.vmm_edid(g.scanout_id.0) {
                Some(vmm) => EdidBlob::new(&vmm).ok(),
                None => None,
            };
            let blob = match blob {
                Some(b) => b,
                None => {
                    let (w, h) = match o.shared.display.vmm_modes() {
                        Some(m) => m
                            .get(g.scanout_id.0 as usize)
                            .filter(|m| m.enabled)
                            .map_or((mode.rect.width, mode.rect.height), |m| {
                                (m.rect.width, m.rect.height)
                            }),
                        None => (mode.rect.width, mode.rect.height),
                    };
                    EdidBlob::new(&edid_for(w, h))?
                }
            };
            Ok(Route::Here(Response::OkEdid(blob)))
        }
        GpuCommand::GetCapsetInfo(g) => {
            let c = o.shared.info.capsets.get(g.capset_index as usize).ok_or(
                ProtocolError::CapsetIndexOutOfRange {
                    index: g.capset_index,
                    num: o.shared.info.capsets.len() as u32,
                },
            )?;
            Ok(Route::Here(Response::OkCapsetInfo {
                capset_id: c.id,
                max_version: c.max_version,
                max_size: c.data.len() as u32,
            }))
        }
        GpuCommand::GetCapset(g) => {
            let c = o
                .shared
                .info
                .capsets
                .iter()
                .find(|c| c.id == g.capset_id && g.capset_version <= c.max_version)
                .ok_or(ProtocolError::UnsupportedCapset {
                    id: g.capset_id,
                    version: g.capset_version,
                })?;
            Ok(Route::Here(Response::OkCapset(c.data.clone())))
        }
        GpuCommand::ResourceAssignUuid(r) => {
            o.directory.resource(r.resource_id.0)?;
            let mut uuid = [0u8; 16];
            uuid[..4].copy_from_slice(&r.resource_id.0.to_le_bytes());
            uuid[4..12].copy_from_slice(b"gpu-rctr");
            Ok(Route::Here(Response::OkResourceUuid(uuid)))
        }
        GpuCommand::SetScanout(s) => {
            let id = s.scanout_id.0;
            if s.resource_id.0 == 0 {
                o.hide(id);
                return Ok(Route::Here(Response::OkNodata));
            }
            let e = o.directory.check_rect(s.resource_id.0, s.rect)?;
            let format = match e.shape {
                Shape::Image {
                    format: Some(f), ..
                } => f,
                _ => return Err(ProtocolError::RectOutsideResource),
            };
            o.show(id, s.resource_id.0, s.rect, format, None);
            Ok(Route::Here(Response::OkNodata))
        }
        GpuCommand::SetScanoutBlob(s) => {
            let id = s.scanout_id.0;
            let layout = match (&s.layout, s.resource_id.0) {
                (_, 0) | (None, _) => {
                    o.hide(id);
                    return Ok(Route::Here(Response::OkNodata));
                }
                (Some(l), _) => l,
            };
            let e = o.directory.resource(s.resource_id.0)?;
            let Shape::Blob { size, .. } = e.shape else {
                return Err(ProtocolError::NotABlob(s.resource_id.0));
            };
            let needed = u64::from(layout.offsets[0])
                + u64::from(layout.strides[0]) * u64::from(layout.height);
            if needed > size {
                return Err(ProtocolError::ScanoutBeyondBlob {
                    needed,
                    blob_size: size,
                });
            }
            let plane = BlobPlane {
                offset: u64::from(layout.offsets[0]),
                stride: layout.strides[0],
            };
            o.show(id, s.resource_id.0, s.rect, layout.format, Some(plane));
            Ok(Route::Here(Response::OkNodata))
        }
        GpuCommand::ResourceCreate2d(c) => {
            let shape = Shape::Image {
                width: c.width,
                height: c.height,
                format: Some(c.format),
            };
            let bytes = c.host_bytes();
            let home = if ctx != 0 { ctx_home(o).ok() } else { None };
            let candidates = o.candidates().to_vec();
            let s = o
                .directory
                .add_resource(c.resource_id.0, shape, bytes, home, &candidates)?;
            shard(s)
        }
        GpuCommand::ResourceCreate3d(c) => {
            // virtio-gpu formats are numbered as virgl's: a 3D resource in
            // one of them can be scanned out (the guest's framebuffer).
            let shape = Shape::Image {
                width: c.width,
                height: c.height,
                format: Format::from_wire(c.format).ok(),
            };
            let bytes = c.host_bytes();
            let home = if ctx != 0 { ctx_home(o).ok() } else { None };
            let candidates = o.candidates().to_vec();
            let s = o
                .directory
                .add_resource(c.resource_id.0, shape, bytes, home, &candidates)?;
            shard(s)
        }
        GpuCommand::ResourceCreateBlob(c) => {
            let home = if c.blob_mem.is_host() {
                Some(ctx_home(o)?)
            } else if ctx != 0 {
                ctx_home(o).ok()
            } else {
                None
            };
            let shape = Shape::Blob {
                size: c.size,
                mappable: c.blob_flags.mappable(),
            };
            // A host blob's memory is ours (a memfd the guest maps and
            // fills); a guest blob's pages are the guest's own RAM, but the
            // entries that name them are ours, charged with the blob until
            // it is unreferenced (here, so a refusal leaves no id behind).
            let memory = if c.blob_mem.is_host() { c.size } else { 0 };
            let charge = memory.checked_add(backing_bytes(c.entries.len()));
            let candidates = o.candidates().to_vec();
            let s = o
                .directory
                .add_resource(c.resource_id.0, shape, charge, home, &candidates)?;
            if c.blob_mem.is_host() {
                if let Err(e) = o.directory.attach(ctx, c.resource_id.0) {
                    // Refused as a whole: the id stays free.
                    let _ = o.directory.remove_resource(c.resource_id.0);
                    return Err(e);
                }
            }
            shard(s)
        }
        GpuCommand::ResourceUnref(r) => {
            let e = o.directory.remove_resource(r.resource_id.0)?;
            for s in o.scanouts.unbind_resource(r.resource_id.0) {
                o.shared.display.scanout(s, None);
            }
            shard(e.shard)
        }
        GpuCommand::ResourceAttachBacking(a) => shard(res_home(o, a.resource_id.0)?),
        GpuCommand::ResourceDetachBacking(r) => shard(res_home(o, r.resource_id.0)?),
        GpuCommand::TransferToHost2d(t) => Ok(Route::Shard(
            o.directory.check_rect(t.resource_id.0, t.rect)?.shard,
            Extra::None,
        )),
        GpuCommand::ResourceFlush(f) => {
            // A blob has no image size of its own: its scanouts' layouts say
            // where the pixels are, and flush_targets clips to them.
            let e = o.directory.resource(f.resource_id.0)?;
            let s = match e.shape {
                Shape::Blob { .. } => e.shard,
                _ => o.directory.check_rect(f.resource_id.0, f.rect)?.shard,
            };
            let display = &o.shared.display;
            let targets = o
                .scanouts
                .flush_targets(f.resource_id.0, f.rect, |s| display.backlogged(s));
            Ok(Route::Shard(s, Extra::Flush(targets)))
        }
        GpuCommand::TransferToHost3d(t) | GpuCommand::TransferFromHost3d(t) => {
            if ctx != 0 {
                o.directory.context(ctx)?;
            }
            shard(res_home(o, t.resource_id.0)?)
        }
        GpuCommand::CtxCreate(c) => {
            let known = c.capset_id == 0
                || o.shared
                    .info
                    .capsets
                    .iter()
                    .any(|k| k.id == u32::from(c.capset_id));
            if !known {
                return Err(ProtocolError::UnsupportedCapset {
                    id: u32::from(c.capset_id),
                    version: 0,
                });
            }
            let candidates = o.candidates().to_vec();
            let home = o.directory.add_context(ctx, &candidates)?;
            o.watch.context_created(ctx);
            shard(home)
        }
        GpuCommand::CtxDestroy => {
            let e = o.directory.remove_context(ctx)?;
            o.timelines.retire_context(ctx);
            o.watch.context_destroyed(ctx);
            shard(e.shard)
        }
        GpuCommand::CtxAttachResource(r) => {
            o.directory.attach(ctx, r.resource_id.0)?;
            shard(ctx_home(o)?)
        }
        GpuCommand::CtxDetachResource(r) => {
            o.directory.detach(ctx, r.resource_id.0)?;
            shard(ctx_home(o)?)
        }
        GpuCommand::Submit3d(_) => {
            if hdr.flags & VIRTIO_GPU_FLAG_INFO_RING_IDX != 0
                && hdr.ring_idx >= o.shared.info.max_rings
            {
                return Err(ProtocolError::RingIdxOutOfRange(hdr.ring_idx));
            }
            shard(ctx_home(o)?)
        }
        GpuCommand::ResourceMapBlob(m) => {
            let e = o.directory.resource(m.resource_id.0)?;
            let Shape::Blob { mappable, .. } = e.shape else {
                return Err(ProtocolError::NotABlob(m.resource_id.0));
            };
            Ok(Route::Shard(e.shard, Extra::Mappable(mappable)))
        }
        GpuCommand::ResourceUnmapBlob(r) => shard(res_home(o, r.resource_id.0)?),
        GpuCommand::UpdateCursor(c) => {
            if c.resource_id.0 == 0 {
                o.shared.display.cursor(CursorEvent::Update {
                    scanout: c.pos.scanout_id.0,
                    x: c.pos.x,
                    y: c.pos.y,
                    hot_x: c.hot_x,
                    hot_y: c.hot_y,
                    image: None,
                });
                return Ok(Route::Here(Response::OkNodata));
            }
            shard(res_home(o, c.resource_id.0)?)
        }
        GpuCommand::MoveCursor(c) => {
            o.shared.display.cursor(CursorEvent::Move {
                scanout: c.pos.scanout_id.0,
                x: c.pos.x,
                y: c.pos.y,
            });
            Ok(Route::Here(Response::OkNodata))
        }
    }
}

impl Owner {
    /// Scanout `id` shows `rect` of `resource` from now on.
    fn show(
        &mut self,
        id: u32,
        resource: u32,
        rect: Rect,
        format: Format,
        blob: Option<BlobPlane>,
    ) {
        self.scanouts.bind(
            id,
            Some(Binding {
                resource,
                rect,
                blob,
            }),
        );
        let mode = ScanoutMode {
            width: rect.width,
            height: rect.height,
            format,
        };
        self.shared.display.scanout(id, Some(mode));
    }

    /// Scanout `id` is disabled.
    fn hide(&mut self, id: u32) {
        self.scanouts.bind(id, None);
        self.shared.display.scanout(id, None);
    }

    /// Writes a response now (owner-side commands and errors) and
    /// completes the chain, through its fence timeline if fenced.
    #[allow(clippy::too_many_arguments)]
    fn answer_now(
        &mut self,
        kind: QueueKind,
        head: u16,
        hdr: &CtrlHeader,
        area: &ResponseArea,
        ticket: Option<crate::fence::FenceTicket>,
        result: &Result<Response, ProtocolError>,
        mem: &GuestMem,
    ) {
        let resp = match result {
            Ok(r) => r.clone(),
            Err(e) => {
                self.stats.errors += 1;
                tracing::debug!(queue = ?kind, head, kind = hdr.kind, error = %e, "command refused");
                Response::Err(e.response_code())
            }
        };
        // The cursor queue carries no responses (its commands have none).
        let len = if kind == QueueKind::Cursor {
            0
        } else {
            area.write_response(mem, hdr, &resp).unwrap_or(0)
        };
        self.complete_now(kind, head, len, ticket);
    }

    fn complete_now(
        &mut self,
        kind: QueueKind,
        head: u16,
        len: u32,
        ticket: Option<crate::fence::FenceTicket>,
    ) {
        self.stats.in_flight += 1;
        let done = Done {
            generation: self.generation,
            queue: kind,
            head,
            len,
            ticket,
            routed_ctx: 0,
        };
        self.complete(done);
    }

    /// Sends a job to its shard, unless its context already has
    /// `CONTEXT_IN_FLIGHT` commands there: then it waits, in order, behind
    /// that context's others, so a context flooding the queue cannot fill
    /// every shard's executor ahead of the other contexts. Contexts are
    /// independent of each other until a fence says otherwise, so that
    /// reorders nothing the guest can rely on between contexts. A command
    /// without a context (Linux's MAP_BLOB, UNMAP_BLOB, UNREF, ...) is
    /// ordered with the waiting ones that name its resource (`backlog.rs`).
    pub(super) fn dispatch(&mut self, shard: usize, job: Box<Job>) {
        let ctx = job.reply.hdr.ctx_id;
        if ctx == 0 {
            if let Some((shard, job)) = self.parked.order_unbound((shard, job)) {
                self.send_to_shard(shard, job);
            }
            return;
        }
        let busy = self.routed.get(&ctx).copied().unwrap_or(0) >= CONTEXT_IN_FLIGHT;
        let now = Instant::now();
        if busy || self.parked.is_waiting(ctx) {
            self.parked.park(ctx, (shard, job));
            self.pacer.waited(ctx, now);
            return;
        }
        if self.parked.must_wait(&job) {
            // Behind a held command without a context: goes when it went.
            self.parked.park(ctx, (shard, job));
            self.dispatch_parked(ctx);
            return;
        }
        self.pacer.went(ctx, now);
        *self.routed.entry(ctx).or_default() += 1;
        self.send_to_shard(shard, job);
    }

    /// Hands a job to its shard's executor; if that executor is gone (its
    /// renderer failed to start), answers the command with an error so the
    /// guest's chain still comes back.
    fn send_to_shard(&mut self, shard: usize, job: Box<Job>) {
        let Err(reactor::SendError(ShardMsg::Job(job))) =
            self.shared.shards[shard].tx.send(ShardMsg::Job(job))
        else {
            return;
        };
        crate::error_limited!(shard, "shard executor is gone");
        let r = job.reply;
        self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
        if r.hdr.ctx_id != 0 {
            if let Some(n) = self.routed.get_mut(&r.hdr.ctx_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.routed.remove(&r.hdr.ctx_id);
                }
            }
        }
        let mem = self.mem.memory();
        self.answer_now(
            r.queue,
            r.head,
            &r.hdr,
            &r.response,
            r.ticket,
            &Err(ProtocolError::RendererFailed(-1)),
            &mem,
        );
    }

    /// A context's command finished on its shard: let the next waiting one go.
    pub(super) fn release_slot(&mut self, ctx: u32) {
        // Entries exist only while a context has commands on a shard: the
        // header's ctx_id is the guest's to choose.
        if let Some(n) = self.routed.get_mut(&ctx) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.routed.remove(&ctx);
            }
        }
        if self.parked.is_waiting(ctx) {
            if self.pacer.take(ctx, Instant::now()) {
                self.dispatch_parked(ctx);
            } else {
                self.stats.paced += 1;
                self.pacer.owed.push_back(ctx);
            }
        }
    }

    /// Sends `ctx`'s oldest waiting command to its shard, then the
    /// commands without a context that waited for it; a context that waited
    /// for those sends what its free slots take (it was owed them while it
    /// waited).
    fn dispatch_parked(&mut self, ctx: u32) {
        let mut tries = vec![(ctx, 1)];
        while let Some((ctx, mut n)) = tries.pop() {
            while n > 0 {
                n -= 1;
                let mut released = Released::default();
                let next = self.parked.pop(ctx, &mut released);
                let went = next.is_some();
                if let Some((shard, job)) = next {
                    *self.routed.entry(ctx).or_default() += 1;
                    self.send_to_shard(shard, job);
                }
                for (shard, job) in released.commands {
                    self.send_to_shard(shard, job);
                }
                for c in released.contexts {
                    let free =
                        CONTEXT_IN_FLIGHT.saturating_sub(self.routed.get(&c).copied().unwrap_or(0));
                    tries.push((c, free));
                }
                if !went {
                    break;
                }
            }
        }
    }

    /// Sends what the pacer owes flooding contexts, as far as this window
    /// allows; returns when to come back if something is still owed.
    pub(super) fn pace(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some(&ctx) = self.pacer.owed.front() {
            if !self.pacer.take(ctx, now) {
                return Some(self.pacer.window_end);
            }
            self.pacer.owed.pop_front();
            self.dispatch_parked(ctx);
        }
        None
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;

    #[test]
    fn a_flooding_context_alone_is_never_paced() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.went(1, t0); // before it floods, it is light itself...
        p.waited(1, t0);
        p.went(1, t0); // ...then its own commands do not make it light
        assert!((0..10_000).all(|_| p.take(1, t0)));
    }

    #[test]
    fn with_a_light_context_active_the_backlog_gets_a_budget_per_window() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.waited(1, t0);
        p.went(2, t0);
        // A light context that starts to flood stops holding others back.
        p.went(3, t0);
        p.waited(3, t0);
        assert!(p.take(1, t0) && p.light_at.is_none());
        p.went(2, t0);
        let granted = (0..1000).filter(|_| p.take(1, t0)).count();
        assert_eq!(granted, PACE_BUDGET as usize);
        // The next window grants the budget again.
        let t1 = t0 + PACE_WINDOW;
        let granted = (0..1000).filter(|_| p.take(1, t1)).count();
        assert_eq!(granted, PACE_BUDGET as usize);
        // A light context quiet for LIGHT_FOR no longer holds the others back.
        let t2 = t0 + LIGHT_FOR + PACE_WINDOW;
        assert!((0..1000).all(|_| p.take(1, t2)));
    }

    #[test]
    fn the_pacer_forgets_contexts_that_stopped_waiting() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        for ctx in 0..100_000u32 {
            // A new made-up context id every 10 µs.
            p.waited(ctx, t0 + Duration::from_micros(u64::from(ctx) * 10));
        }
        // At most twice those of the last LIGHT_FOR (10 000).
        assert!(p.backlogged_at.len() <= 2 * 10_000 + PACER_CONTEXTS);
    }

    #[test]
    fn a_context_that_waited_lately_is_not_light_until_it_has_been_quiet() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        p.waited(1, t0);
        p.went(1, t0 + LIGHT_FOR / 2);
        assert!(p.take(2, t0 + LIGHT_FOR / 2) && p.light_at.is_none());
        p.went(1, t0 + LIGHT_FOR * 2);
        assert_eq!(p.light_at, Some((1, t0 + LIGHT_FOR * 2)));
    }
}
