//! One gnome-shell: its own context, a scanout framebuffer, a frame every
//! 1/fps, a cursor, and now and then a gst-plugin-scan style blob lifecycle.
//! A desktop is a state machine the run loop drives: `poll` submits what is
//! due, `complete` takes the device's answers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gpu::protocol::wire::VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE;
use gpu::protocol::*;
use gpu::render::sim::{sim_submit, sim_submit_fill, SIM_CAPSET_ID};
use hdrhistogram::Histogram;
use vm_memory::{Bytes, GuestAddress};

use crate::driver::{Completion, GpuDriver, GpuDriverError, Queue};
use crate::pixels;
use crate::report;
use crate::scenario::{FenceMode, Plan, Profile, RenderMode, Scenario};

/// Modelled GPU time of a stressed desktop's submits (heavy-context).
const HEAVY_GPU_US: u32 = 50_000;
/// Rounds of a stressed desktop's frame in real rendering: each two full
/// clears of a `HEAVY_SIZE` square scratch texture that llvmpipe really
/// rasterizes (seconds of GPU work a frame; see `heavy_clear_stream`).
const HEAVY_ROUNDS: usize = 150;
const HEAVY_SIZE: u32 = 4096;
/// `PIPE_TEXTURE_2D`, `PIPE_BIND_RENDER_TARGET`, `PIPE_BIND_SAMPLER_VIEW`.
const PIPE_TEXTURE_2D: u32 = 2;
const BIND_RENDER_TARGET: u32 = 1 << 1;
const BIND_SAMPLER_VIEW: u32 = 1 << 3;

/// A virgl command stream that clears the render target `fb` in `colour`
/// (its bytes as R8G8B8A8, so the display check reads it back exactly as
/// `pixels::colour` wrote it), once or `heavy` rounds of clears.
fn real_frame(fb: u32, colour: u32, heavy: Option<(u32, usize)>) -> Vec<u8> {
    let [r, g, b, a] = colour.to_le_bytes().map(|c| f32::from(c) / 255.0);
    match heavy {
        None => gpu::render::virgl_cmd::clear_stream(fb, [r, g, b, a]),
        Some((scratch, rounds)) => {
            gpu::render::virgl_cmd::heavy_clear_stream(fb, scratch, [r, g, b, a], rounds)
        }
    }
}

/// Size of one blob of the blob lifecycle.
const BLOB_SIZE: u64 = 1 << 20;

/// Context and resource ids of a desktop's n-th life (after n reconnects)
/// are offset by n times this, so nothing it creates again collides with
/// what a resubmitted command of its previous life created.
const ID_STRIDE: u32 = 10_000_000;

/// Answers that mean "the backend does not have this": what a restarted
/// backend says to commands about contexts and resources of the old one.
fn is_lost_state(code: u32) -> bool {
    use gpu::protocol::wire::{
        VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID,
    };
    matches!(
        code,
        VIRTIO_GPU_RESP_ERR_INVALID_CONTEXT_ID | VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// Set-up command (context, framebuffer, backing, scanout).
    Init,
    /// A fenced command of frame `frame` that waited for `gpu` of GPU time.
    Fenced {
        frame: u64,
        gpu: Duration,
        fence: u64,
    },
    /// Unfenced frame command.
    Frame,
    BlobCreate,
    BlobMap,
    BlobUnmap,
    BlobUnref,
    Flood,
    Cursor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for `outstanding` set-up commands.
    Init {
        outstanding: usize,
    },
    Idle,
    /// Waiting for the fenced commands of the current frame.
    InFrame {
        outstanding: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blob {
    Idle,
    /// CREATE_BLOB + MAP_BLOB in flight.
    Mapping {
        outstanding: usize,
    },
    /// Mapped; UNMAP_BLOB + UNREF go out when the queue has room.
    Mapped,
    /// UNMAP_BLOB + UNREF in flight.
    Unmapping {
        outstanding: usize,
    },
}

/// What the run loop shares with every desktop.
pub struct Shared<'a> {
    pub driver: &'a mut GpuDriver,
    pub plan: &'a Plan,
    pub next_fence: &'a mut u64,
    /// The second half of a stress scenario.
    pub stressing: bool,
    /// No new work: the run is ending.
    pub draining: bool,
    /// Still warming up: latencies are not recorded yet.
    pub warming: bool,
    pub capset: u8,
    pub pattern: &'a mut Vec<u8>,
}

/// Per-desktop counters.
pub struct Stats {
    pub commands: u64,
    pub fences: u64,
    pub frames: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub max_stall: Duration,
    pub stalls_over_50ms: u64,
    pub latency: Histogram<u64>,
    pub overhead: Histogram<u64>,
    /// Latency split by phase, for the isolation ratio.
    pub latency_before: Histogram<u64>,
    pub latency_during: Histogram<u64>,
    /// Error answers to commands sent before the desktop set itself up
    /// again after a reconnect, saying the context or resource is unknown
    /// (the restarted backend never had them). Not in `errors`.
    pub lost_state: u64,
    /// Fenced answers naming another fence than the command's.
    pub fences_completed_twice: u64,
    /// Fences that completed before an earlier fence of the same desktop.
    pub fences_out_of_order: u64,
    /// Frames made since the desktop last set itself up after a reconnect.
    pub frames_after_reconnect: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            commands: 0,
            fences: 0,
            frames: 0,
            errors: 0,
            error_samples: Vec::new(),
            max_stall: Duration::ZERO,
            stalls_over_50ms: 0,
            latency: report::histogram(),
            overhead: report::histogram(),
            latency_before: report::histogram(),
            latency_during: report::histogram(),
            lost_state: 0,
            fences_completed_twice: 0,
            fences_out_of_order: 0,
            frames_after_reconnect: 0,
        }
    }
}

pub struct Desktop {
    pub id: usize,
    ctx: u32,
    fb: u32,
    scanout: Option<u32>,
    backing: Option<GuestAddress>,
    state: State,
    blob: Blob,
    blob_serial: u32,
    seq: u64,
    cmds: HashMap<u64, Cmd>,
    frame: u64,
    next_frame_at: Instant,
    frame_started: Instant,
    hung: bool,
    /// Lives: reconnects survived (ids are offset by it).
    life: u32,
    /// Commands with a smaller sequence number were sent to a backend that
    /// died (or before the desktop set itself up again).
    stale_below: u64,
    /// The backend was replaced: set up again once every command sent to
    /// the old one is answered; until then every command is stale.
    awaiting_setup: bool,
    /// The highest fence completed so far.
    last_fence: u64,
    pub stats: Stats,
}

impl Desktop {
    pub fn new(id: usize, plan: &Plan, start: Instant) -> Desktop {
        // Desktops are not in step: spread their frame phases.
        let period = frame_period(plan);
        let offset = period.mul_f64((id as f64 * 0.618_034).fract());
        Desktop {
            id,
            ctx: id as u32 + 1,
            fb: id as u32 + 1,
            scanout: (id < plan.scanouts as usize).then_some(id as u32),
            backing: None,
            state: State::Init { outstanding: 0 },
            blob: Blob::Idle,
            blob_serial: 0,
            seq: 0,
            cmds: HashMap::new(),
            frame: 0,
            next_frame_at: start + offset,
            frame_started: start,
            hung: false,
            life: 0,
            stale_below: 0,
            awaiting_setup: false,
            last_fence: 0,
            stats: Stats::default(),
        }
    }

    /// The desktop a command tag belongs to.
    pub fn of_tag(tag: u64) -> usize {
        (tag >> 40) as usize
    }

    pub fn is_stressed(&self, plan: &Plan) -> bool {
        self.id == 0 && plan.scenario.stresses()
    }

    /// Fenced commands still outstanding.
    pub fn pending_fences(&self) -> usize {
        self.cmds
            .values()
            .filter(|c| matches!(c, Cmd::Fenced { .. }))
            .count()
    }

    /// Submitted work that will never complete (stalled-context).
    pub fn is_hung(&self) -> bool {
        self.hung
    }

    /// When this desktop next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle => Some(self.next_frame_at),
            _ => None,
        }
    }

    /// How long the current frame has been waiting (for the end report).
    pub fn current_wait(&self, now: Instant) -> Duration {
        match self.state {
            State::InFrame { .. } => now.saturating_duration_since(self.frame_started),
            _ => Duration::ZERO,
        }
    }

    /// The device was reset: everything in flight is gone; start over.
    pub fn on_reset(&mut self, now: Instant) {
        self.cmds.clear();
        self.state = State::Init { outstanding: 0 };
        self.blob = Blob::Idle;
        self.backing = None;
        self.hung = false;
        self.next_frame_at = now;
    }

    /// The backend was replaced by a new one (a reconnect): the commands
    /// in flight are the new backend's to answer (resubmitted from the
    /// inflight buffer); once they are, the desktop sets itself up again
    /// under new ids (the new backend has none of its contexts and
    /// resources).
    pub fn on_reconnect(&mut self) {
        self.awaiting_setup = true;
    }

    fn is_stale(&self, tag: u64) -> bool {
        self.awaiting_setup || (tag & 0xff_ffff_ffff) < self.stale_below
    }

    /// Once nothing sent to the old backend is outstanding: a new life.
    fn set_up_again(&mut self, sh: &mut Shared<'_>) {
        self.life += 1;
        let id = self.id as u32 + 1 + self.life * ID_STRIDE;
        self.ctx = id;
        self.fb = id;
        if let Some(b) = self.backing.take() {
            let _ = sh.driver.ram().free(b);
        }
        self.state = State::Init { outstanding: 0 };
        self.blob = Blob::Idle;
        self.hung = false;
        self.awaiting_setup = false;
        self.stale_below = self.seq + 1;
        self.stats.frames_after_reconnect = 0;
    }

    fn tag(&mut self, cmd: Cmd) -> u64 {
        self.seq += 1;
        let tag = ((self.id as u64) << 40) | (self.seq & 0xff_ffff_ffff);
        self.cmds.insert(tag, cmd);
        tag
    }

    fn put(
        &mut self,
        sh: &mut Shared<'_>,
        q: Queue,
        req: &Request,
        cmd: Cmd,
    ) -> Result<(), GpuDriverError> {
        let tag = self.tag(cmd);
        match sh.driver.submit(q, req, tag) {
            Ok(()) => {
                self.stats.commands += 1;
                Ok(())
            }
            Err(e) => {
                self.cmds.remove(&tag);
                Err(e)
            }
        }
    }

    /// Puts one of this frame's fenced commands (`gpu`: its modelled GPU
    /// time) on the control queue.
    fn put_fenced(
        &mut self,
        sh: &mut Shared<'_>,
        req: Request,
        gpu: Duration,
    ) -> Result<(), GpuDriverError> {
        let req = self.fence(sh, req);
        let fence = *sh.next_fence;
        let cmd = Cmd::Fenced {
            frame: self.frame,
            gpu,
            fence,
        };
        self.put(sh, Queue::Control, &req, cmd)
    }

    fn fence(&self, sh: &mut Shared<'_>, req: Request) -> Request {
        *sh.next_fence += 1;
        let req = req.with_fence(*sh.next_fence);
        match sh.plan.effective_fence_mode() {
            FenceMode::Ring => req.with_ctx(self.ctx).with_ring(0),
            FenceMode::Global => req,
        }
    }

    /// Submits whatever is due at `now`.
    pub fn poll(&mut self, now: Instant, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        if self.awaiting_setup {
            if !self.cmds.is_empty() {
                return Ok(());
            }
            self.set_up_again(sh);
        }
        if self.state == (State::Init { outstanding: 0 }) && !sh.draining {
            return self.init(sh);
        }
        let stressed = self.is_stressed(sh.plan) && sh.stressing;
        if stressed && sh.plan.scenario == Scenario::QueueFull && !sh.draining {
            self.flood(sh)?;
        }
        if self.state == State::Idle && now >= self.next_frame_at && !sh.draining && !self.hung {
            self.start_frame(now, sh, stressed)?;
        }
        let storm =
            stressed && matches!(sh.plan.scenario, Scenario::UnmapStorm | Scenario::SlowMap);
        let blob_due = sh.plan.profile == Profile::ThreeD
            && matches!(self.state, State::Idle | State::InFrame { .. })
            && (storm
                || (sh.plan.blob_every > 0
                    && self.frame > 0
                    && self.frame.is_multiple_of(sh.plan.blob_every)));
        if self.blob == Blob::Idle && blob_due && !sh.draining {
            self.start_blob(sh)?;
        }
        if self.blob == Blob::Mapped {
            // Unmap even while draining: a mapping must not outlive the run.
            self.finish_blob(sh)?;
        }
        Ok(())
    }

    fn init(&mut self, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        let plan = sh.plan;
        let len = u64::from(plan.width) * u64::from(plan.height) * 4;
        let backing = sh
            .driver
            .ram()
            .alloc(len, 4096)
            .map_err(|e| GpuDriverError::Memory(format!("{e:?}")))?;
        self.backing = Some(backing);
        let mut reqs = Vec::new();
        if plan.profile == Profile::ThreeD {
            reqs.push(
                Request::new(GpuCommand::CtxCreate(CtxCreate {
                    debug_name: format!("gnome-shell-{}", self.id).into_bytes(),
                    capset_id: sh.capset,
                }))
                .with_ctx(self.ctx),
            );
        }
        let real = plan.profile == Profile::ThreeD && plan.render == RenderMode::Real;
        let mut create = if real {
            // A render target the context draws into with virgl.
            Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
                resource_id: ResourceId(self.fb),
                target: PIPE_TEXTURE_2D,
                format: Format::R8G8B8A8Unorm.to_wire(),
                bind: BIND_RENDER_TARGET | BIND_SAMPLER_VIEW,
                width: plan.width,
                height: plan.height,
                depth: 1,
                array_size: 1,
                last_level: 0,
                nr_samples: 0,
                flags: 0,
            }))
        } else {
            Request::new(GpuCommand::ResourceCreate2d(ResourceCreate2d {
                resource_id: ResourceId(self.fb),
                format: Format::B8G8R8X8Unorm,
                width: plan.width,
                height: plan.height,
            }))
        };
        if plan.profile == Profile::ThreeD {
            // Created by the desktop's context, so it lives on its shard.
            create = create.with_ctx(self.ctx);
        }
        reqs.push(create);
        if real {
            reqs.push(
                Request::new(GpuCommand::CtxAttachResource(ResourceRef {
                    resource_id: ResourceId(self.fb),
                }))
                .with_ctx(self.ctx),
            );
        }
        if real
            && self.is_stressed(plan)
            && matches!(
                plan.scenario,
                Scenario::StalledContext | Scenario::HeavyContext
            )
        {
            // What the expensive frames clear over and over.
            reqs.push(
                Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
                    resource_id: ResourceId(self.scratch()),
                    target: PIPE_TEXTURE_2D,
                    format: Format::R8G8B8A8Unorm.to_wire(),
                    bind: BIND_RENDER_TARGET | BIND_SAMPLER_VIEW,
                    width: HEAVY_SIZE,
                    height: HEAVY_SIZE,
                    depth: 1,
                    array_size: 1,
                    last_level: 0,
                    nr_samples: 0,
                    flags: 0,
                }))
                .with_ctx(self.ctx),
            );
            reqs.push(
                Request::new(GpuCommand::CtxAttachResource(ResourceRef {
                    resource_id: ResourceId(self.scratch()),
                }))
                .with_ctx(self.ctx),
            );
        }
        reqs.push(Request::new(GpuCommand::ResourceAttachBacking(
            ResourceAttachBacking {
                resource_id: ResourceId(self.fb),
                entries: vec![MemEntry {
                    addr: backing.0,
                    length: len as u32,
                }],
            },
        )));
        if let (Some(s), Profile::ThreeD) = (self.scanout, plan.profile) {
            reqs.push(self.set_scanout(s, plan));
        }
        if sh.driver.queue(Queue::Control).num_free() < reqs.len() as u16 {
            let _ = sh.driver.ram().free(backing);
            self.backing = None;
            return Ok(());
        }
        for r in &reqs {
            self.put(sh, Queue::Control, r, Cmd::Init)?;
        }
        self.state = State::Init {
            outstanding: reqs.len(),
        };
        Ok(())
    }

    fn set_scanout(&self, scanout: u32, plan: &Plan) -> Request {
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect: Rect::new(0, 0, plan.width, plan.height),
            scanout_id: ScanoutId(scanout),
            resource_id: ResourceId(self.fb),
        }))
    }

    fn damage(&self, plan: &Plan) -> Rect {
        let tile = plan.tile.max(1);
        if plan.full_damage || plan.width <= tile || plan.height <= tile {
            return Rect::new(0, 0, plan.width, plan.height);
        }
        let x = (self.frame as u32).wrapping_mul(64) % (plan.width - tile);
        let y = (self.frame as u32).wrapping_mul(32) % (plan.height - tile);
        Rect::new(x, y, tile, tile)
    }

    /// Draws the frame into guest memory: the damaged rectangle gets this
    /// frame's colour.
    fn draw(&self, rect: Rect, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        let Some(backing) = self.backing else {
            return Ok(());
        };
        let colour = pixels::colour(self.id, self.frame).to_le_bytes();
        let stride = u64::from(sh.plan.width) * 4;
        // One row of the frame's colour, written row by row straight into
        // guest memory: a frame costs one pass over its pixels.
        let row = rect.width as usize * 4;
        if sh.pattern.len() != row || sh.pattern.get(..4) != Some(&colour[..]) {
            sh.pattern.clear();
            sh.pattern
                .extend(std::iter::repeat_n(colour, rect.width as usize).flatten());
        }
        let mem = sh.driver.ram().memory();
        for r in 0..rect.height {
            let at = backing.0 + u64::from(rect.y + r) * stride + u64::from(rect.x) * 4;
            mem.write_slice(sh.pattern, GuestAddress(at))
                .map_err(|e| GpuDriverError::Memory(e.to_string()))?;
        }
        Ok(())
    }

    fn start_frame(
        &mut self,
        now: Instant,
        sh: &mut Shared<'_>,
        stressed: bool,
    ) -> Result<(), GpuDriverError> {
        let plan = sh.plan;
        // 3d: submit + flush; 2d: transfer + set-scanout + flush.
        if sh.driver.queue(Queue::Control).num_free() < 3 {
            return Ok(()); // the queue is full: try again next turn
        }
        let rect = self.damage(plan);
        let colour = pixels::colour(self.id, self.frame);
        let mut fenced = 0;
        let mut gpu = Duration::ZERO;
        if plan.profile == Profile::ThreeD {
            // The GPU draws the frame: a sim submit that fills the damaged
            // rectangle with this frame's colour after `cost` of GPU time.
            let hang = stressed && plan.scenario == Scenario::StalledContext;
            let cost = if stressed && plan.scenario == Scenario::HeavyContext {
                HEAVY_GPU_US
            } else {
                plan.gpu_cost_us
            };
            let data = if plan.render == RenderMode::Real {
                // Really drawn (llvmpipe): no modelled time; the stressed
                // desktop's "hang" and "heavy" are a very expensive stream.
                let expensive = stressed
                    && matches!(
                        plan.scenario,
                        Scenario::StalledContext | Scenario::HeavyContext
                    );
                real_frame(
                    self.fb,
                    colour,
                    expensive.then_some((self.scratch(), HEAVY_ROUNDS)),
                )
            } else {
                gpu = Duration::from_micros(u64::from(cost));
                sim_submit_fill(cost, hang, self.fb, rect, colour)
            };
            let hang = hang && plan.render == RenderMode::Sim;
            let submit = Request::new(GpuCommand::Submit3d(Submit3d { data })).with_ctx(self.ctx);
            self.put_fenced(sh, submit, gpu)?;
            fenced += 1;
            self.hung |= hang;
        } else {
            // The CPU draws into the dumb buffer; the host copies it in.
            self.draw(rect, sh)?;
            let transfer = Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
                rect,
                offset: (u64::from(rect.y) * u64::from(plan.width) + u64::from(rect.x)) * 4,
                resource_id: ResourceId(self.fb),
            }));
            self.put(sh, Queue::Control, &transfer, Cmd::Frame)?;
            if let Some(s) = self.scanout {
                let set = self.set_scanout(s, plan);
                self.put(sh, Queue::Control, &set, Cmd::Frame)?;
            }
        }
        let mut flush = Request::new(GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: ResourceId(self.fb),
        }));
        if plan.profile == Profile::ThreeD {
            // Flushed by the context that drew it: the device keeps a
            // context's commands in order, not commands across contexts.
            flush = flush.with_ctx(self.ctx);
        }
        self.put_fenced(sh, flush, gpu)?;
        fenced += 1;
        if let Some(s) = self.scanout {
            let mv = Request::new(GpuCommand::MoveCursor(CursorUpdate {
                pos: CursorPos {
                    scanout_id: ScanoutId(s),
                    x: (self.frame % 1280) as i32,
                    y: (self.frame % 800) as i32,
                },
                resource_id: ResourceId(0),
                hot_x: 0,
                hot_y: 0,
            }));
            if sh.driver.queue(Queue::Cursor).num_free() > 0 {
                self.put(sh, Queue::Cursor, &mv, Cmd::Cursor)?;
            }
        }
        self.state = State::InFrame {
            outstanding: fenced,
        };
        self.frame_started = now;
        Ok(())
    }

    fn start_blob(&mut self, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        if sh.driver.queue(Queue::Control).num_free() < 2 {
            return Ok(());
        }
        self.blob_serial = self.blob_serial.wrapping_add(1);
        let id = self.blob_id();
        let create = Request::new(GpuCommand::ResourceCreateBlob(ResourceCreateBlob {
            resource_id: ResourceId(id),
            blob_mem: BlobMem::Host3d,
            blob_flags: BlobFlags::from_wire(VIRTIO_GPU_BLOB_FLAG_USE_MAPPABLE).unwrap_or_default(),
            blob_id: u64::from(id),
            size: BLOB_SIZE,
            entries: vec![],
        }))
        .with_ctx(self.ctx);
        let map = Request::new(GpuCommand::ResourceMapBlob(ResourceMapBlob {
            resource_id: ResourceId(id),
            offset: self.id as u64 * BLOB_SIZE,
        }))
        .with_ctx(self.ctx);
        self.put(sh, Queue::Control, &create, Cmd::BlobCreate)?;
        self.put(sh, Queue::Control, &map, Cmd::BlobMap)?;
        self.blob = Blob::Mapping { outstanding: 2 };
        Ok(())
    }

    /// The heavy scratch texture of a stressed desktop (real rendering).
    fn scratch(&self) -> u32 {
        50_000 + self.id as u32
    }

    fn blob_id(&self) -> u32 {
        100_000 + self.id as u32 * 1000 + self.blob_serial % 1000 + self.life * ID_STRIDE
    }

    fn finish_blob(&mut self, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        if sh.driver.queue(Queue::Control).num_free() < 2 {
            return Ok(()); // stays Mapped; `poll` tries again
        }
        let id = ResourceRef {
            resource_id: ResourceId(self.blob_id()),
        };
        let unmap = Request::new(GpuCommand::ResourceUnmapBlob(id)).with_ctx(self.ctx);
        let unref = Request::new(GpuCommand::ResourceUnref(id));
        self.put(sh, Queue::Control, &unmap, Cmd::BlobUnmap)?;
        self.put(sh, Queue::Control, &unref, Cmd::BlobUnref)?;
        self.blob = Blob::Unmapping { outstanding: 2 };
        Ok(())
    }

    fn flood(&mut self, sh: &mut Shared<'_>) -> Result<(), GpuDriverError> {
        let req = match sh.plan.profile {
            Profile::ThreeD => Request::new(GpuCommand::Submit3d(Submit3d {
                data: sim_submit(0, false),
            }))
            .with_ctx(self.ctx),
            Profile::TwoD => Request::new(GpuCommand::TransferToHost2d(TransferToHost2d {
                rect: Rect::new(0, 0, 1, 1),
                offset: 0,
                resource_id: ResourceId(self.fb),
            })),
        };
        while sh.driver.queue(Queue::Control).num_free() > 0 {
            match self.put(sh, Queue::Control, &req, Cmd::Flood) {
                Ok(()) => {}
                Err(GpuDriverError::Full) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn error(&mut self, what: String) {
        self.stats.errors += 1;
        if self.stats.error_samples.len() < 5 {
            self.stats
                .error_samples
                .push(format!("desktop {}: {what}", self.id));
        }
    }

    /// Takes a completion of one of this desktop's commands.
    pub fn complete(
        &mut self,
        c: &Completion,
        now: Instant,
        sh: &mut Shared<'_>,
    ) -> Result<(), GpuDriverError> {
        let Some(cmd) = self.cmds.remove(&c.tag) else {
            return Ok(()); // from before a reset
        };
        match &c.response {
            Ok((_, Response::Err(code))) if self.is_stale(c.tag) && is_lost_state(*code) => {
                self.stats.lost_state += 1;
            }
            Ok((_, Response::Err(code))) => self.error(format!("{cmd:?} answered error {code:#x}")),
            Ok(_) => {}
            Err(e) => self.error(format!("{cmd:?}: undecodable response: {e}")),
        }
        if let Cmd::Fenced { fence, .. } = cmd {
            self.check_fence(c, fence);
        }
        match cmd {
            Cmd::Init => {
                if let State::Init { outstanding } = &mut self.state {
                    *outstanding = outstanding.saturating_sub(1);
                    if *outstanding == 0 {
                        self.state = State::Idle;
                        self.next_frame_at = self.next_frame_at.max(now);
                    }
                }
            }
            Cmd::Fenced { frame, gpu, .. } => {
                self.stats.fences += 1;
                if !sh.warming {
                    report::record(&mut self.stats.latency, c.latency);
                    report::record(&mut self.stats.overhead, c.latency.saturating_sub(gpu));
                    let phase = if sh.stressing {
                        &mut self.stats.latency_during
                    } else {
                        &mut self.stats.latency_before
                    };
                    report::record(phase, c.latency);
                }
                if let State::InFrame { outstanding } = &mut self.state {
                    if frame == self.frame {
                        *outstanding = outstanding.saturating_sub(1);
                        if *outstanding == 0 {
                            self.end_frame(now, sh.plan);
                        }
                    }
                }
            }
            Cmd::BlobCreate | Cmd::BlobMap => {
                if let Blob::Mapping { outstanding } = &mut self.blob {
                    *outstanding -= 1;
                    if *outstanding == 0 {
                        self.blob = Blob::Mapped;
                        self.finish_blob(sh)?;
                    }
                }
            }
            Cmd::BlobUnmap | Cmd::BlobUnref => {
                if let Blob::Unmapping { outstanding } = &mut self.blob {
                    *outstanding -= 1;
                    if *outstanding == 0 {
                        self.blob = Blob::Idle;
                    }
                }
            }
            Cmd::Frame | Cmd::Flood | Cmd::Cursor => {}
        }
        Ok(())
    }

    /// A fenced answer names its own fence (when the backend echoes it)
    /// and comes after every earlier fence of this desktop: its fences are
    /// on one timeline (its ring 0, or the global one).
    fn check_fence(&mut self, c: &Completion, fence: u64) {
        use gpu::protocol::wire::VIRTIO_GPU_FLAG_FENCE;
        if let Ok((hdr, _)) = &c.response {
            if hdr.flags & VIRTIO_GPU_FLAG_FENCE != 0 && hdr.fence_id != fence {
                self.stats.fences_completed_twice += 1;
                self.error(format!(
                    "fence {fence}'s command was answered for fence {}",
                    hdr.fence_id
                ));
                return;
            }
        }
        if fence < self.last_fence {
            self.stats.fences_out_of_order += 1;
            self.error(format!(
                "fence {fence} completed after fence {}",
                self.last_fence
            ));
        }
        self.last_fence = self.last_fence.max(fence);
    }

    fn end_frame(&mut self, now: Instant, plan: &Plan) {
        let waited = now.saturating_duration_since(self.frame_started);
        self.stats.max_stall = self.stats.max_stall.max(waited);
        if waited > Duration::from_millis(50) {
            self.stats.stalls_over_50ms += 1;
        }
        self.stats.frames += 1;
        if self.life > 0 {
            self.stats.frames_after_reconnect += 1;
        }
        self.frame += 1;
        self.state = State::Idle;
        let period = frame_period(plan);
        self.next_frame_at = if period.is_zero() {
            now
        } else {
            // Keep the cadence; if late, start at once (no catch-up burst).
            (self.next_frame_at + period).max(now)
        };
    }
}

fn frame_period(plan: &Plan) -> Duration {
    if plan.fps == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / f64::from(plan.fps))
    }
}

/// The capset a 3d desktop asks for: VIRGL2 for real rendering, else the
/// sim's, when offered; else none.
pub fn pick_capset(capsets: &[u32], render: RenderMode) -> u8 {
    let want = match render {
        RenderMode::Real => gpu::protocol::wire::VIRTIO_GPU_CAPSET_VIRGL2,
        RenderMode::Sim => SIM_CAPSET_ID,
    };
    if capsets.contains(&want) {
        want as u8
    } else {
        0
    }
}
