//! The run loop: one thread plays the guest's CPU for every desktop (they
//! share one virtio-gpu driver, as containers share one VM's kernel). It
//! submits what is due, kicks, sleeps until the next frame or a call
//! eventfd, and hands completions to their desktops.

use std::cell::RefCell;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::device::DeviceConfig;
use gpu::protocol::{GetCapsetInfo, GpuCommand, Request, Response};

use crate::desktop::{pick_capset, Desktop, Shared};
use crate::direct::{DirectBackend, DirectOptions};
use crate::display::CheckingDisplay;
use crate::driver::{GpuDriver, GpuDriverError, Queue};
use crate::frontend::vhost::{PixelCheck, UpdateView, VhostError, VhostFrontend, VhostOptions};
use crate::frontend::GuestRam;
use crate::pixels;
use crate::report::{self, DesktopReport, Isolation, Report};
use crate::scenario::{FenceMode, Plan, Profile, RenderMode, RendererKind, Scenario};

/// Where the backend runs.
pub enum Backend {
    /// gpu-reactor's device in this process, driven directly (no vhost-user).
    Direct {
        backend: Box<DirectBackend>,
        display: Arc<CheckingDisplay>,
    },
    /// Any vhost-user GPU backend, over the real protocol: gpu-reactor
    /// embedded in this process on a socketpair, or an external one.
    Vhost {
        frontend: Box<RefCell<Option<VhostFrontend>>>,
        name: String,
        embedded: Option<Embedded>,
    },
}

/// gpu-reactor's vhost-user backend running in this process.
pub struct Embedded {
    backend: Arc<gpu::vhost::Backend>,
    session: Option<std::thread::JoinHandle<()>>,
}

/// What went wrong starting a backend.
#[derive(Debug)]
pub enum StartError {
    Driver(GpuDriverError),
    Vhost(VhostError),
    Io(std::io::Error),
    /// The backend cannot run this plan (say what it lacks).
    Unsupported(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Driver(e) => write!(f, "{e}"),
            StartError::Vhost(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Unsupported(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

pub fn guest_ram_bytes(plan: &Plan) -> u64 {
    let frame = u64::from(plan.width) * u64::from(plan.height) * 4;
    (frame * plan.desktops as u64 + (64 << 20)).next_power_of_two()
}

/// The device a plan's desktops need: a scanout each (up to 16) at the
/// plan's size.
fn device_config(plan: &Plan) -> DeviceConfig {
    DeviceConfig {
        num_scanouts: plan.scanouts.clamp(1, 16),
        width: plan.width,
        height: plan.height,
        // The guest's budget: the default, or twice the plan's guest RAM
        // for plans with many large desktops.
        memory_limit: gpu::device::DEFAULT_GUEST_MEMORY.max(2 * guest_ram_bytes(plan)),
        ..DeviceConfig::default()
    }
}

/// gpu-reactor's vhost-user backend as a plan needs it, with `renderer`.
pub fn backend_options(
    plan: &Plan,
    shards: usize,
    renderer: Arc<dyn gpu::render::RendererFactory>,
) -> gpu::vhost::BackendOptions {
    gpu::vhost::BackendOptions {
        shards,
        device: device_config(plan),
        host_visible_region: (plan.desktops as u64 + 1) << 20,
        renderer,
        latency_slice: plan.latency_slice,
        ..gpu::vhost::BackendOptions::default()
    }
}

/// The frontend options a plan needs (features, display, host-visible region).
pub fn vhost_options(plan: &Plan) -> VhostOptions {
    use gpu::protocol::wire::*;
    let mut gpu_features = 1u64 << VIRTIO_GPU_F_EDID;
    if plan.profile == Profile::ThreeD {
        gpu_features |= (1 << VIRTIO_GPU_F_VIRGL)
            | (1 << VIRTIO_GPU_F_CONTEXT_INIT)
            | (1 << VIRTIO_GPU_F_RESOURCE_BLOB);
    }
    // An update the size of a desktop's damage is one frame: one colour. A
    // whole-scanout update under partial damage is a backend's refresh of
    // a scanout whose display fell behind (gpu-reactor sends one in place
    // of the partial updates it still holds): many frames, one desktop.
    let (full, tile, width, height) = (plan.full_damage, plan.tile, plan.width, plan.height);
    let check: PixelCheck = Arc::new(move |u: &UpdateView<'_>| {
        let refresh = !full && u.width == width && u.height == height && u.width != tile;
        let ok = if refresh {
            pixels::check_refresh(u.scanout as usize, u.pixels)
        } else {
            pixels::check(u.scanout as usize, u.pixels).is_some()
        };
        u64::from(!ok)
    });
    let mut opts = VhostOptions {
        gpu_features,
        no_reply_ack: plan.no_reply_ack,
        mem_table: plan.mem_table,
        ..VhostOptions::default()
    };
    opts.display.scanouts = plan.scanouts.clamp(1, 16);
    opts.display.width = plan.width;
    opts.display.height = plan.height;
    opts.display.pixel_check = Some(check);
    opts.display.framebuffers = false;
    if plan.scenario != Scenario::SlowDisplay {
        opts.display.update_delay = plan.display_delay;
    }
    opts.shmem.region_size = (plan.desktops as u64 + 1) << 20;
    opts.shmem.delay = plan.scenario.vmm_map_delay();
    // A backend that takes over must find what the old one held.
    opts.inflight_shmfd = plan.reconnect.is_some();
    opts
}

impl Backend {
    /// Starts the in-process backend for `plan`, driven directly.
    pub fn direct(
        plan: &Plan,
        shards: usize,
        pin: bool,
        spin: Option<Duration>,
    ) -> Result<(Backend, GpuDriver), GpuDriverError> {
        let display = Arc::new(CheckingDisplay::default());
        let opts = DirectOptions {
            shards,
            config: device_config(plan),
            blob_delay: plan.scenario.vmm_map_delay(),
            blob_region: (plan.desktops as u64 + 1) << 20,
            guest_ram: guest_ram_bytes(plan),
            sink: Some(display.clone()),
            pin,
            spin,
            ..DirectOptions::default()
        };
        let (backend, driver) = DirectBackend::start(opts)?;
        let backend = Box::new(backend);
        Ok((Backend::Direct { backend, display }, driver))
    }

    /// Starts gpu-reactor's vhost-user backend in this process and connects
    /// to it over a socketpair: the same protocol as with QEMU.
    pub fn embedded(plan: &Plan, shards: usize) -> Result<(Backend, GpuDriver), StartError> {
        let renderer = renderer_factory(plan)?;
        Backend::embedded_with(plan, shards, renderer)
    }

    /// The embedded backend with a renderer the caller made (tests that
    /// watch it, e.g. render worker stats).
    pub fn embedded_with(
        plan: &Plan,
        shards: usize,
        renderer: Arc<dyn gpu::render::RendererFactory>,
    ) -> Result<(Backend, GpuDriver), StartError> {
        if plan.render == RenderMode::Real && plan.renderer != RendererKind::Virgl {
            return Err(StartError::Unsupported(
                "--render real submits virgl command streams: it needs --renderer virgl".into(),
            ));
        }
        let backend = Arc::new(
            gpu::vhost::Backend::start(backend_options(plan, shards, renderer))
                .map_err(StartError::Io)?,
        );
        let (ours, theirs) = UnixStream::pair().map_err(StartError::Io)?;
        let b = backend.clone();
        let session = std::thread::Builder::new()
            .name("vhost-control".into())
            .spawn(move || {
                let _ = b.serve_stream(theirs);
            })
            .map_err(StartError::Io)?;
        let ram = GuestRam::new(guest_ram_bytes(plan))
            .map_err(|e| StartError::Driver(GpuDriverError::Memory(format!("{e:?}"))))?;
        let (frontend, driver) = VhostFrontend::from_stream(ours, ram, vhost_options(plan))
            .map_err(StartError::Vhost)?;
        let name = format!("gpu-reactor/{}", backend.device().renderer_info().name);
        let b = Backend::Vhost {
            frontend: Box::new(RefCell::new(Some(frontend))),
            name,
            embedded: Some(Embedded {
                backend,
                session: Some(session),
            }),
        };
        b.check_plan(plan)?;
        Ok((b, driver))
    }

    /// Wraps a session already set up by the caller (tests that serve
    /// several sessions from one backend).
    pub fn from_frontend(frontend: VhostFrontend, name: &str) -> Backend {
        Backend::Vhost {
            frontend: Box::new(RefCell::new(Some(frontend))),
            name: name.to_string(),
            embedded: None,
        }
    }

    /// Connects to a vhost-user GPU backend listening at `path`.
    pub fn socket(plan: &Plan, path: &Path) -> Result<(Backend, GpuDriver), StartError> {
        let ram = GuestRam::new(guest_ram_bytes(plan))
            .map_err(|e| StartError::Driver(GpuDriverError::Memory(format!("{e:?}"))))?;
        let (frontend, driver) =
            VhostFrontend::connect(path, ram, vhost_options(plan)).map_err(StartError::Vhost)?;
        let b = Backend::Vhost {
            frontend: Box::new(RefCell::new(Some(frontend))),
            name: format!("vhost-user:{}", path.display()),
            embedded: None,
        };
        b.check_plan(plan)?;
        Ok((b, driver))
    }

    /// Refuses plans the backend cannot run, saying what it lacks.
    fn check_plan(&self, plan: &Plan) -> Result<(), StartError> {
        use gpu::protocol::wire::*;
        let Backend::Vhost { frontend, .. } = self else {
            return Ok(());
        };
        let acked = frontend
            .borrow()
            .as_ref()
            .map_or(0, |f| f.negotiated().acked);
        let has = |bit: u32| acked & (1 << bit) != 0;
        if plan.profile == Profile::ThreeD && !has(VIRTIO_GPU_F_VIRGL) {
            return Err(StartError::Unsupported(
                "the backend does not offer VIRTIO_GPU_F_VIRGL (3D): use --profile 2d".into(),
            ));
        }
        if plan.effective_fence_mode() == FenceMode::Ring && !has(VIRTIO_GPU_F_CONTEXT_INIT) {
            return Err(StartError::Unsupported(
                "the backend does not offer VIRTIO_GPU_F_CONTEXT_INIT (ring fences): use --fence-mode global".into(),
            ));
        }
        Ok(())
    }

    pub fn name(&self) -> String {
        match self {
            Backend::Direct { backend, .. } => {
                format!("gpu-reactor/{}", backend.device.renderer_info().name)
            }
            Backend::Vhost { name, .. } => name.clone(),
        }
    }

    fn reset(&self, driver: GpuDriver) -> Result<GpuDriver, String> {
        match self {
            Backend::Direct { backend, .. } => backend.reset(driver).map_err(|e| e.to_string()),
            Backend::Vhost { frontend, .. } => match frontend.borrow_mut().as_mut() {
                Some(f) => f.reset(driver).map_err(|e| e.to_string()),
                None => Err("session closed".into()),
            },
        }
    }

    /// The virtio features in use (what the guest driver acked).
    fn features(&self) -> u64 {
        match self {
            Backend::Direct { backend, .. } => backend.device.device_features(),
            Backend::Vhost { frontend, .. } => frontend
                .borrow()
                .as_ref()
                .map_or(0, |f| f.negotiated().acked),
        }
    }

    /// Makes the VMM's display slow on `scanout` (a vhost-user backend has
    /// a GPU socket to be slow on; the direct one does not).
    fn set_slow_display(&self, scanout: u32, delay: Duration) -> Result<(), String> {
        match self {
            Backend::Direct { .. } => {
                Err("slow-display plays a slow VMM on the GPU socket: not with --direct".into())
            }
            Backend::Vhost { frontend, .. } => match frontend.borrow().as_ref() {
                Some(f) => {
                    f.display().set_slow_scanout(Some((scanout, delay)));
                    Ok(())
                }
                None => Err("session closed".into()),
            },
        }
    }

    /// Pixel bytes gpu-reactor's renderers copied (None for other backends).
    fn pixel_bytes_copied(&self) -> Option<u64> {
        let stats = match self {
            Backend::Direct { backend, .. } => backend.device.stats(),
            Backend::Vhost {
                embedded: Some(e), ..
            } => e.backend.device().stats(),
            Backend::Vhost { .. } => return None,
        };
        stats.ok().map(|s| s.pixel_bytes_copied)
    }

    /// Frames the embedded backend merged into newer ones (0 otherwise).
    fn frames_merged(&self) -> u64 {
        match self {
            Backend::Vhost {
                embedded: Some(e), ..
            } => e.backend.display().stats().updates_replaced,
            _ => 0,
        }
    }

    /// The backend went away: dial its socket again (until `deadline`)
    /// and replay the set-up, keeping the guest's driver and rings.
    fn reconnect(&self, driver: &GpuDriver, deadline: Instant) -> Result<(), String> {
        match self {
            Backend::Direct { .. } => Err("the direct backend cannot reconnect".into()),
            Backend::Vhost { frontend, .. } => match frontend.borrow_mut().as_mut() {
                Some(f) => f
                    .reconnect(driver, deadline)
                    .map(|r| {
                        eprintln!(
                            "loadgen: reconnected after {} attempt(s); ring bases {:?}, inflight buffer {}",
                            r.attempts,
                            r.bases,
                            if r.inflight { "handed over" } else { "not used" }
                        );
                    })
                    .map_err(|e| e.to_string()),
                None => Err("session closed".into()),
            },
        }
    }

    /// Err when the backend is gone (its control socket closed).
    fn check_alive(&self) -> Result<(), String> {
        match self {
            Backend::Direct { .. } => Ok(()),
            Backend::Vhost { frontend, .. } => match frontend.borrow().as_ref() {
                Some(f) => f.check_alive().map_err(|e| e.to_string()),
                None => Err("session closed".into()),
            },
        }
    }

    /// (frames delivered, pixels bad) once the last updates arrived: for the
    /// embedded gpu-reactor, until every one of `frames` was delivered or
    /// merged; for others, until nothing changed for `quiet`; at most 3 s.
    fn display(&self, quiet: Duration, frames: u64) -> (u64, u64) {
        match self {
            Backend::Direct { display, .. } => {
                display.finish();
                let s = display.stats();
                (s.frames_delivered, s.pixels_bad)
            }
            Backend::Vhost { frontend, .. } => {
                let f = frontend.borrow();
                let Some(f) = f.as_ref() else { return (0, 0) };
                // Updates travel on the GPU socket after their fence
                // completed: let the last ones arrive.
                let deadline = Instant::now() + Duration::from_secs(3);
                if let Backend::Vhost {
                    embedded: Some(_), ..
                } = self
                {
                    loop {
                        let now = f.display_stats();
                        let done = now.frames_delivered + self.frames_merged() >= frames;
                        if done || Instant::now() > deadline {
                            return (now.frames_delivered, now.pixels_bad);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                let mut last = f.display_stats();
                loop {
                    std::thread::sleep(quiet);
                    let now = f.display_stats();
                    if now == last || Instant::now() > deadline {
                        return (now.frames_delivered, now.pixels_bad);
                    }
                    last = now;
                }
            }
        }
    }

    /// Ends the session cleanly (GET_VRING_BASE, close) and stops an
    /// embedded backend.
    pub fn finish(self) -> Result<(), String> {
        match self {
            Backend::Direct { .. } => Ok(()),
            Backend::Vhost {
                frontend, embedded, ..
            } => {
                let r = match frontend.into_inner() {
                    Some(f) => f.shutdown().map(|_| ()).map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                if let Some(mut e) = embedded {
                    e.backend.interrupt();
                    if let Some(t) = e.session.take() {
                        let _ = t.join();
                    }
                }
                r
            }
        }
    }
}

/// The embedded backend's renderer.
fn renderer_factory(plan: &Plan) -> Result<Arc<dyn gpu::render::RendererFactory>, StartError> {
    if plan.render_workers.is_some() && plan.renderer != RendererKind::Virgl {
        return Err(StartError::Unsupported(
            "--render-workers is for --renderer virgl".into(),
        ));
    }
    match plan.renderer {
        RendererKind::Sim => Ok(Arc::new(gpu::render::sim::SimFactory::default())),
        RendererKind::TwoD => Ok(Arc::new(gpu::render::rutabaga2d::Rutabaga2dFactory)),
        #[cfg(feature = "virgl")]
        RendererKind::Virgl => match plan.render_workers {
            None | Some(0) => gpu::render::virgl::VirglFactory::new()
                .map(|f| Arc::new(f) as Arc<dyn gpu::render::RendererFactory>)
                .map_err(StartError::Unsupported),
            Some(n) => {
                use gpu::render::virgl::{WorkerExe, WorkerOptions, WorkerPoolFactory};
                let exe = plan
                    .render_worker_exe
                    .as_ref()
                    .map_or_else(WorkerExe::current, WorkerExe::at);
                WorkerPoolFactory::new(WorkerOptions::new(n, exe))
                    .map(|f| Arc::new(f) as Arc<dyn gpu::render::RendererFactory>)
                    .map_err(StartError::Unsupported)
            }
        },
        #[cfg(not(feature = "virgl"))]
        RendererKind::Virgl => Err(StartError::Unsupported(
            "this loadgen was built without the virgl renderer: build with `--features virgl`"
                .into(),
        )),
    }
}

/// The capsets the backend offers (GET_CAPSET_INFO until it says no).
fn query_capsets(driver: &mut GpuDriver) -> Vec<u32> {
    let mut ids = Vec::new();
    for index in 0..16 {
        let req = Request::new(GpuCommand::GetCapsetInfo(GetCapsetInfo {
            capset_index: index,
        }));
        match driver.call(Queue::Control, &req, Duration::from_secs(2)) {
            Ok(c) => match c.response {
                Ok((_, Response::OkCapsetInfo { capset_id, .. })) => ids.push(capset_id),
                _ => break,
            },
            Err(_) => break,
        }
    }
    ids
}

/// How many scanouts the backend reports connected (GET_DISPLAY_INFO).
fn query_scanouts(driver: &mut GpuDriver) -> Option<u32> {
    let req = Request::new(GpuCommand::GetDisplayInfo);
    match driver
        .call(Queue::Control, &req, Duration::from_secs(2))
        .ok()?
        .response
    {
        Ok((_, Response::OkDisplayInfo(modes))) => {
            Some(modes.iter().take_while(|m| m.enabled).count() as u32)
        }
        _ => None,
    }
}

/// Progress callback: fraction done.
pub type Progress<'a> = &'a mut dyn FnMut(f64);

/// Runs `plan` against `backend`; returns the report.
pub fn run(
    plan: &Plan,
    backend: &Backend,
    mut driver: GpuDriver,
    progress: Progress<'_>,
) -> Report {
    // Desktops beyond the backend's scanouts render off screen; without
    // RESOURCE_BLOB there is no blob lifecycle.
    let blobs = backend.features() & (1 << gpu::protocol::wire::VIRTIO_GPU_F_RESOURCE_BLOB) != 0;
    let plan = &Plan {
        scanouts: query_scanouts(&mut driver).map_or(plan.scanouts, |n| n.min(plan.scanouts)),
        blob_every: if blobs { plan.blob_every } else { 0 },
        ..plan.clone()
    };
    let start = Instant::now();
    let end = start + plan.duration;
    let stress_at = start + plan.duration / 2;
    // Set-up and first frames are not what a desktop feels all day.
    let warm_until = start + (plan.duration / 10).min(Duration::from_secs(1));
    let reset_at = start + plan.duration * 3 / 4;
    let mut desktops: Vec<Desktop> = (0..plan.desktops)
        .map(|i| Desktop::new(i, plan, start))
        .collect();
    let capset = if plan.profile == Profile::ThreeD {
        pick_capset(&query_capsets(&mut driver), plan.render)
    } else {
        0
    };
    let mut next_fence = 0u64;
    let mut pattern = Vec::new();
    let mut fatal: Option<String> = None;
    let mut reset_done = false;
    let mut slow_display_on = false;
    let mut turn = 0usize;
    let grace = Duration::from_secs(1) + Duration::from_micros(u64::from(plan.gpu_cost_us) * 4);
    let mut drain_until: Option<Instant> = None;
    let mut next_alive_check = start;
    let mut reconnects = 0u64;

    loop {
        let now = Instant::now();
        let draining = now >= end;
        if draining && drain_until.is_none() {
            drain_until = Some(now + grace);
        }
        if let Some(d) = drain_until {
            // Wait for every fence that can still complete.
            let waiting = desktops
                .iter()
                .filter(|x| !x.is_hung())
                .any(|x| x.pending_fences() > 0);
            if !waiting || now >= d {
                break;
            }
        }
        if now >= next_alive_check {
            next_alive_check = now + Duration::from_millis(100);
            if let Err(e) = backend.check_alive() {
                let Some(window) = plan.reconnect else {
                    fatal = Some(format!("backend disconnected mid-run: {e}"));
                    break;
                };
                if let Err(e) = backend.reconnect(&driver, Instant::now() + window) {
                    fatal = Some(format!(
                        "backend disconnected mid-run, reconnect failed: {e}"
                    ));
                    break;
                }
                reconnects += 1;
                for d in &mut desktops {
                    d.on_reconnect();
                }
            }
        }
        if plan.scenario == Scenario::Reset && !reset_done && now >= reset_at {
            reset_done = true;
            match backend.reset(driver) {
                Ok(d) => driver = d,
                Err(e) => {
                    fatal = Some(format!("reset failed: {e}"));
                    return build_report(plan, backend, &desktops, start, fatal, reconnects);
                }
            }
            for d in &mut desktops {
                d.on_reset(now);
            }
        }
        let stressing = plan.scenario != Scenario::None && now >= stress_at;
        if plan.scenario == Scenario::SlowDisplay && stressing && !slow_display_on {
            slow_display_on = true;
            if let Err(e) = backend.set_slow_display(0, plan.slow_display_delay()) {
                fatal = Some(e);
                break;
            }
        }
        {
            let mut sh = Shared {
                driver: &mut driver,
                plan,
                next_fence: &mut next_fence,
                stressing,
                draining,
                warming: now < warm_until,
                capset,
                pattern: &mut pattern,
            };
            // Rotate who goes first so a full queue is shared fairly.
            let n = desktops.len();
            for k in 0..n {
                let d = &mut desktops[(turn + k) % n];
                if let Err(e) = d.poll(now, &mut sh) {
                    fatal = Some(format!("desktop {}: {e}", d.id));
                    break;
                }
            }
            turn = turn.wrapping_add(1);
        }
        if fatal.is_some() {
            break;
        }
        for q in [Queue::Control, Queue::Cursor] {
            if let Err(e) = driver.kick(q) {
                fatal = Some(format!("kick: {e}"));
            }
        }
        // Sleep until the next frame is due or the device calls.
        let next = desktops
            .iter()
            .filter_map(Desktop::next_deadline)
            .min()
            .unwrap_or(now + Duration::from_millis(5))
            .min(end.max(now))
            .min(now + Duration::from_millis(50));
        let wait = next.saturating_duration_since(Instant::now());
        if let Err(e) = driver.wait_call(wait) {
            fatal = Some(format!("wait: {e}"));
            break;
        }
        if let Err(e) = driver.reap() {
            fatal = Some(format!("backend: {e}"));
            break;
        }
        let now = Instant::now();
        let mut sh = Shared {
            driver: &mut driver,
            plan,
            next_fence: &mut next_fence,
            stressing,
            draining,
            warming: now < warm_until,
            capset,
            pattern: &mut pattern,
        };
        for c in sh.driver.take_completions() {
            let Some(d) = desktops.get_mut(Desktop::of_tag(c.tag)) else {
                continue;
            };
            if let Err(e) = d.complete(&c, now, &mut sh) {
                fatal = Some(format!("desktop {}: {e}", d.id));
            }
        }
        progress((now - start).as_secs_f64() / plan.duration.as_secs_f64());
    }
    build_report(plan, backend, &desktops, start, fatal, reconnects)
}

fn build_report(
    plan: &Plan,
    backend: &Backend,
    desktops: &[Desktop],
    start: Instant,
    fatal: Option<String>,
    reconnects: u64,
) -> Report {
    let now = Instant::now();
    let elapsed = plan.duration.as_secs_f64();
    let mut latency = report::histogram();
    let mut overhead = report::histogram();
    let mut before = report::histogram();
    let mut during = report::histogram();
    let (mut commands, mut frames, mut fences, mut errors) = (0, 0, 0, 0);
    let (mut lost, mut stressed_pending, mut stalls) = (0u64, 0u64, 0u64);
    let mut max_stall = Duration::ZERO;
    let (mut lost_state, mut twice, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut per_desktop = Vec::new();
    let mut error_samples: Vec<String> = fatal.into_iter().collect();
    if !error_samples.is_empty() {
        errors += 1;
    }
    for d in desktops {
        let s = &d.stats;
        let stressed = d.is_stressed(plan);
        let _ = latency.add(&s.latency);
        let _ = overhead.add(&s.overhead);
        if !stressed {
            let _ = before.add(&s.latency_before);
            let _ = during.add(&s.latency_during);
            lost += d.pending_fences() as u64;
        } else {
            stressed_pending += d.pending_fences() as u64;
        }
        commands += s.commands;
        frames += s.frames;
        fences += s.fences;
        errors += s.errors;
        lost_state += s.lost_state;
        twice += s.fences_completed_twice;
        out_of_order += s.fences_out_of_order;
        error_samples.extend(s.error_samples.iter().cloned());
        let stall = s.max_stall.max(d.current_wait(now));
        if !stressed {
            max_stall = max_stall.max(stall);
            stalls += s.stalls_over_50ms;
        }
        per_desktop.push(DesktopReport {
            desktop: d.id,
            stressed,
            fences: s.fences,
            frames: s.frames,
            max_stall_ms: stall.as_secs_f64() * 1e3,
            stalls_over_50ms: s.stalls_over_50ms,
            frames_after_reconnect: s.frames_after_reconnect,
            fence_latency_us: report::percentiles(&s.latency),
            errors: s.errors,
            fences_pending: d.pending_fences() as u64,
        });
    }
    error_samples.truncate(20);
    let isolation = plan.scenario.stresses().then(|| {
        let b = report::percentiles(&before).p99;
        let d = report::percentiles(&during).p99;
        Isolation {
            others_p99_us_before: b,
            others_p99_us_during: d,
            ratio: if b == 0 { 0.0 } else { d as f64 / b as f64 },
        }
    });
    // A display slower than 50 ms per update is quiet that long between
    // updates that are still coming.
    let slowest = plan.display_delay.max(match plan.scenario {
        Scenario::SlowDisplay => plan.slow_display_delay(),
        _ => Duration::ZERO,
    });
    let (frames_delivered, pixels_bad) =
        backend.display(Duration::from_millis(50).max(slowest * 2), frames);
    let frames_merged = backend.frames_merged();
    let pixel_bytes_copied_per_frame = backend
        .pixel_bytes_copied()
        .filter(|_| frames > 0)
        .map(|b| b as f64 / frames as f64);
    let _ = start;
    Report {
        backend: backend.name(),
        desktops: plan.desktops,
        profile: plan.profile.to_string(),
        fence_mode: plan.effective_fence_mode().to_string(),
        scenario: plan.scenario.to_string(),
        duration_s: elapsed,
        commands,
        commands_per_s: commands as f64 / elapsed,
        frames,
        frames_per_s: frames as f64 / elapsed,
        fences,
        fences_lost: lost,
        stressed_fences_pending: stressed_pending,
        errors,
        reconnects,
        lost_state_answers: lost_state,
        fences_completed_twice: twice,
        fences_out_of_order: out_of_order,
        fence_latency_us: report::percentiles(&latency),
        fence_overhead_us: report::percentiles(&overhead),
        max_stall_ms: max_stall.as_secs_f64() * 1e3,
        stalls_over_50ms: stalls,
        frames_delivered,
        frames_merged,
        pixel_bytes_copied_per_frame,
        pixels_bad,
        isolation,
        per_desktop,
        error_samples,
    }
}
