//! What a run does: the desktop profile, the fence mode, and the scenario
//! from the deadlock analysis that stresses desktop 0.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How the desktops use the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Contexts, fenced SUBMIT_3D, fenced flush, cursor, blob lifecycles.
    ThreeD,
    /// Dumb buffers: TRANSFER_TO_HOST_2D + SET_SCANOUT + fenced flush (every
    /// backend supports it; always on the global fence timeline).
    TwoD,
}

/// Which fence timelines the guest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// `VIRTIO_GPU_FLAG_INFO_RING_IDX`: one timeline per desktop context.
    Ring,
    /// One global timeline for every fence.
    Global,
}

/// The stress desktop 0 applies during the second half of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    None,
    /// Desktop 0 maps and unmaps blobs in a loop; the VMM is slow (20 ms).
    UnmapStorm,
    /// Desktop 0's GPU work never completes.
    StalledContext,
    /// The VMM answers SHMEM_MAP after 100 ms while desktop 0 maps blobs.
    SlowMap,
    /// Desktop 0 floods the control queue.
    QueueFull,
    /// The device is reset mid-run; everyone re-initialises and resumes.
    Reset,
    /// Desktop 0's submits each cost 50 ms of GPU time.
    HeavyContext,
    /// Desktop 0's scanout is shown by a slow display: the VMM takes
    /// `--vmm-display-delay-us` (10 ms unless set) to apply each of its
    /// updates, holding up the one GPU socket all scanouts share.
    SlowDisplay,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::None,
        Scenario::UnmapStorm,
        Scenario::StalledContext,
        Scenario::SlowMap,
        Scenario::QueueFull,
        Scenario::Reset,
        Scenario::HeavyContext,
        Scenario::SlowDisplay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::UnmapStorm => "unmap-storm",
            Scenario::StalledContext => "stalled-context",
            Scenario::SlowMap => "slow-map",
            Scenario::QueueFull => "queue-full",
            Scenario::Reset => "reset",
            Scenario::HeavyContext => "heavy-context",
            Scenario::SlowDisplay => "slow-display",
        }
    }

    /// How slowly the VMM answers blob map/unmap requests.
    pub fn vmm_map_delay(self) -> Duration {
        match self {
            Scenario::UnmapStorm => Duration::from_millis(20),
            Scenario::SlowMap => Duration::from_millis(100),
            _ => Duration::ZERO,
        }
    }

    /// True when desktop 0 is stressed (and the others measured before and
    /// during).
    pub fn stresses(self) -> bool {
        !matches!(self, Scenario::None | Scenario::Reset)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!("unknown scenario '{s}' (one of: {})", names.join(", "))
            })
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "3d" => Ok(Profile::ThreeD),
            "2d" => Ok(Profile::TwoD),
            _ => Err(format!("unknown profile '{s}' (3d or 2d)")),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::ThreeD => "3d",
            Profile::TwoD => "2d",
        })
    }
}

impl FromStr for FenceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ring" => Ok(FenceMode::Ring),
            "global" => Ok(FenceMode::Global),
            _ => Err(format!("unknown fence mode '{s}' (ring or global)")),
        }
    }
}

impl fmt::Display for FenceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FenceMode::Ring => "ring",
            FenceMode::Global => "global",
        })
    }
}

/// What the embedded backend renders with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RendererKind {
    Sim,
    TwoD,
    Virgl,
}

impl FromStr for RendererKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sim" => Ok(RendererKind::Sim),
            "2d" => Ok(RendererKind::TwoD),
            "virgl" => Ok(RendererKind::Virgl),
            _ => Err(format!("unknown renderer '{s}' (sim, 2d or virgl)")),
        }
    }
}

/// What a 3d desktop submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenderMode {
    /// Sim command buffers: modelled GPU time, the sim draws the frame.
    Sim,
    /// Real virgl command streams (a clear of the desktop's render target
    /// in the frame's colour), for the virgl renderer.
    Real,
}

impl FromStr for RenderMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sim" => Ok(RenderMode::Sim),
            "real" => Ok(RenderMode::Real),
            _ => Err(format!("unknown render mode '{s}' (sim or real)")),
        }
    }
}

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub desktops: usize,
    pub duration: Duration,
    pub profile: Profile,
    pub fence_mode: FenceMode,
    pub scenario: Scenario,
    /// Frames per second per desktop; 0 = as fast as fences allow.
    pub fps: u32,
    /// Modelled GPU time per submit (sim renderer).
    pub gpu_cost_us: u32,
    pub width: u32,
    pub height: u32,
    /// Flush the whole frame (else a `tile` x `tile` square moving over the
    /// screen).
    pub full_damage: bool,
    /// Side of the damaged square of a partial-damage frame, in pixels.
    pub tile: u32,
    /// A blob lifecycle every this many frames (3d profile).
    pub blob_every: u64,
    /// Scanouts the backend offers (desktop i shows on scanout i).
    pub scanouts: u32,
    /// The embedded backend's renderer.
    pub renderer: RendererKind,
    /// What 3d desktops submit.
    pub render: RenderMode,
    /// vhost-user frontend behaviour: do not negotiate REPLY_ACK.
    pub no_reply_ack: bool,
    /// vhost-user frontend behaviour: which memory message to send.
    pub mem_table: crate::frontend::vhost::MemTableMode,
    /// The VMM applies each UPDATE this late: on every scanout, or under
    /// `slow-display` only on desktop 0's while it is stressed.
    pub display_delay: Duration,
    /// Scheduler slice the embedded backend's shards ask for.
    pub latency_slice: Option<Duration>,
    /// The embedded virgl backend's render worker processes (`None`:
    /// virglrenderer on a render shard of this process).
    pub render_workers: Option<usize>,
    /// The binary render workers run (`None`: this one, re-executed; it
    /// must call `gpu::render::virgl::worker::run_if_requested`).
    pub render_worker_exe: Option<std::path::PathBuf>,
    /// vhost-user over a socket path: when the backend goes away mid-run,
    /// dial the path again for up to this long and carry on (with inflight
    /// tracking, so the new backend resubmits what the old one held).
    pub reconnect: Option<Duration>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            desktops: 16,
            duration: Duration::from_secs(10),
            profile: Profile::ThreeD,
            fence_mode: FenceMode::Ring,
            scenario: Scenario::None,
            fps: 60,
            gpu_cost_us: 2000,
            width: 1280,
            height: 800,
            full_damage: false,
            tile: 256,
            blob_every: 60,
            scanouts: 16,
            renderer: RendererKind::Sim,
            render: RenderMode::Sim,
            no_reply_ack: false,
            mem_table: crate::frontend::vhost::MemTableMode::Auto,
            display_delay: Duration::ZERO,
            latency_slice: None,
            render_workers: None,
            render_worker_exe: None,
            reconnect: None,
        }
    }
}

impl Plan {
    /// How late the VMM applies desktop 0's updates under `slow-display`.
    pub fn slow_display_delay(&self) -> Duration {
        if self.display_delay.is_zero() {
            Duration::from_millis(10)
        } else {
            self.display_delay
        }
    }

    /// The fence mode actually used (2d has no contexts: global).
    pub fn effective_fence_mode(&self) -> FenceMode {
        match self.profile {
            Profile::TwoD => FenceMode::Global,
            Profile::ThreeD => self.fence_mode,
        }
    }
}
