//! `loadgen`: N gnome-shell-like desktops against a virtio-gpu backend,
//! reporting throughput and fence-latency percentiles.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loadgen::run::{self, Backend};
use loadgen::scenario::{FenceMode, Plan, Profile, Scenario};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Plays N gnome-shell desktops against a virtio-gpu backend and measures fence latency",
    long_about = "Plays N gnome-shell-like desktops against gpu-reactor (embedded, the default) \
and reports throughput and p50/p99/p999 kick-to-used fence latency. Scenarios from the \
multi-desktop deadlock analysis stress desktop 0 during the second half of the run while \
the others are measured before and during."
)]
struct Args {
    /// Number of desktops (one GPU context and scanout each).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=255))]
    desktops: u16,
    /// Run time, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// `3d` (contexts, SUBMIT_3D, blobs) or `2d` (dumb buffers, the base device).
    #[arg(long, default_value = "3d")]
    profile: Profile,
    /// `ring` (a fence timeline per desktop) or `global` (one timeline).
    #[arg(long, default_value = "ring")]
    fence_mode: FenceMode,
    /// none, unmap-storm, stalled-context, slow-map, queue-full, reset,
    /// heavy-context, slow-display.
    #[arg(long, default_value = "none")]
    scenario: Scenario,
    /// Frames per second per desktop (0 = unthrottled).
    #[arg(long, default_value_t = 60)]
    fps: u32,
    /// The embedded backend's renderer: sim, 2d or virgl (virgl needs a
    /// loadgen built with `--features virgl`).
    #[arg(long, default_value = "sim")]
    renderer: loadgen::scenario::RendererKind,
    /// What 3d desktops submit: `sim` command buffers (modelled GPU time) or
    /// `real` virgl streams (with --renderer virgl).
    #[arg(long, default_value = "sim")]
    render: loadgen::scenario::RenderMode,
    /// Modelled GPU time per submit, in µs (sim renderer).
    #[arg(long, default_value_t = 2000)]
    gpu_cost_us: u32,
    /// Flush whole frames instead of a moving 256x256 tile (default for 2d).
    #[arg(long)]
    full_damage: Option<bool>,
    /// Side of the damaged square flushed per frame (partial damage), pixels.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    damage_px: u32,
    /// Drive any vhost-user GPU backend listening at PATH instead of the
    /// embedded gpu-reactor (ours, vhost-device-gpu, QEMU's vhost-user-gpu).
    #[arg(long, value_name = "PATH")]
    socket: Option<std::path::PathBuf>,
    /// With --socket: when the backend goes away mid-run (killed,
    /// restarted), dial PATH again and carry on, with inflight tracking
    /// (INFLIGHT_SHMFD) so the new backend resubmits what the old one held.
    #[arg(long, requires = "socket")]
    reconnect: bool,
    /// With --reconnect: how long to keep dialing for a new backend.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, requires = "reconnect")]
    reconnect_wait: Duration,
    /// vhost-user: do not negotiate REPLY_ACK (no request waits for the
    /// backend's ack, as a frontend without it behaves).
    #[arg(long)]
    no_reply_ack: bool,
    /// vhost-user: how guest memory is handed over: auto (ADD_MEM_REG when
    /// the backend has CONFIGURE_MEM_SLOTS, as QEMU 10), set-mem-table,
    /// add-mem-reg.
    #[arg(long, default_value = "auto", value_parser = parse_mem_table)]
    mem_table: loadgen::frontend::vhost::MemTableMode,
    /// Drive the embedded device directly, without vhost-user (measures the
    /// device alone).
    #[arg(long, conflicts_with = "socket")]
    direct: bool,
    /// Shards of the embedded backend (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// With --renderer virgl: render worker processes of the embedded
    /// backend, each with its own virglrenderer (0: in this process, on a
    /// render shard) [default: one per desktop, up to 64: each desktop's
    /// GPU work isolated from the others'; the daemon's default is one per
    /// shard]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
    render_workers: Option<u16>,
    /// With --direct: pin backend shard i to CPU i and this driver thread to the last CPU.
    #[arg(long)]
    pin: bool,
    /// With --direct: idle backend shards spin this long before sleeping (µs; 0 = never).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// The VMM applies each display UPDATE this many µs late (a slow
    /// display): on every scanout, or with `--scenario slow-display` only on
    /// desktop 0's while it is stressed (10000 there unless set).
    #[arg(long, default_value_t = 0)]
    vmm_display_delay_us: u64,
    /// Scheduler slice (µs) the embedded backend's shards and loadgen's
    /// interrupt thread ask for (Linux 6.12+ EEVDF); 0: the kernel's.
    #[arg(long, default_value_t = 0)]
    slice_us: u64,
    /// Write the JSON report to PATH, or `-` for stdout.
    #[arg(long)]
    json: Option<String>,
}

fn parse_mem_table(s: &str) -> Result<loadgen::frontend::vhost::MemTableMode, String> {
    use loadgen::frontend::vhost::MemTableMode;
    match s {
        "auto" => Ok(MemTableMode::Auto),
        "set-mem-table" => Ok(MemTableMode::SetMemTable),
        "add-mem-reg" => Ok(MemTableMode::AddMemReg),
        _ => Err(format!(
            "unknown memory message '{s}' (auto, set-mem-table, add-mem-reg)"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("unknown unit in '{s}' (ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("duration '{s}' out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    // Re-executed as the embedded backend's render worker?
    #[cfg(feature = "virgl")]
    if let Some(code) = gpu::render::virgl::worker::run_if_requested() {
        return code;
    }
    let args = Args::parse();
    let shards = args
        .shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let plan = Plan {
        desktops: args.desktops as usize,
        duration: args.duration,
        profile: args.profile,
        fence_mode: args.fence_mode,
        scenario: args.scenario,
        fps: args.fps,
        gpu_cost_us: args.gpu_cost_us,
        full_damage: args.full_damage.unwrap_or(args.profile == Profile::TwoD),
        tile: args.damage_px,
        no_reply_ack: args.no_reply_ack,
        renderer: args.renderer,
        render: args.render,
        mem_table: args.mem_table,
        display_delay: Duration::from_micros(args.vmm_display_delay_us),
        latency_slice: (args.slice_us > 0).then(|| Duration::from_micros(args.slice_us)),
        render_workers: match (args.renderer, args.render_workers) {
            (loadgen::scenario::RendererKind::Virgl, None) => {
                Some((args.desktops as usize).clamp(1, 64))
            }
            (_, n) => n.map(usize::from),
        },
        reconnect: args.reconnect.then_some(args.reconnect_wait),
        ..Plan::default()
    };
    if args.pin {
        pin_to_last_cpu();
    }
    loadgen::irq::IRQ_SLICE_US.store(args.slice_us, std::sync::atomic::Ordering::Relaxed);
    if args.direct && (plan.scenario == Scenario::SlowDisplay || !plan.display_delay.is_zero()) {
        eprintln!(
            "loadgen: --direct has no GPU socket for a slow display to hold up: \
             slow-display and --vmm-display-delay-us need a vhost-user backend"
        );
        return ExitCode::from(2);
    }
    let started = if let Some(path) = &args.socket {
        Backend::socket(&plan, path)
    } else if args.direct {
        Backend::direct(
            &plan,
            shards,
            args.pin,
            (args.spin_us > 0).then(|| Duration::from_micros(args.spin_us)),
        )
        .map_err(run::StartError::Driver)
    } else {
        Backend::embedded(&plan, shards)
    };
    let (backend, driver) = match started {
        Ok(x) => x,
        Err(e) => {
            eprintln!("loadgen: cannot start the backend: {e}");
            return ExitCode::from(2);
        }
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(1000);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bar:40} {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("{} desktops, {}", plan.desktops, plan.scenario));
        b
    });
    let mut progress = |f: f64| {
        if let Some(b) = &bar {
            b.set_position((f.clamp(0.0, 1.0) * 1000.0) as u64);
        }
    };
    let report = run::run(&plan, &backend, driver, &mut progress);
    if let Err(e) = backend.finish() {
        eprintln!("loadgen: closing the session: {e}");
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprint!("{}", report.summary());
    if let Some(path) = &args.json {
        let json = match serde_json::to_string(&report) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("loadgen: cannot encode the report: {e}");
                return ExitCode::from(2);
            }
        };
        let written = if path == "-" {
            writeln!(std::io::stdout(), "{json}")
        } else {
            std::fs::write(path, json + "\n")
        };
        if let Err(e) = written {
            eprintln!("loadgen: cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Pins the calling thread to the last CPU it may run on.
fn pin_to_last_cpu() {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and sizes.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return;
        }
        let Some(last) = (0..libc::CPU_SETSIZE as usize)
            .rev()
            .find(|&c| libc::CPU_ISSET(c, &set))
        else {
            return;
        };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(last, &mut one);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
    }
}
