//! `bench`: benchmarks of gpu-reactor.
//!
//! Subcommands (one module each):
//! * `reactor` — wake-up latency of our reactor vs tokio-uring, epoll and raw
//!   io_uring ([`reactor_bench`]).
//! * `device` — commands/s through the device for 1/4/16 contexts on 1 and 2
//!   shards ([`device_bench`]).
//! * `run` — the loadgen scenario matrix plus the micro-benchmarks, one
//!   history line per case ([`matrix`], [`history`]).
//! * `dashboard` — a static HTML page of the history ([`dashboard`]).
//! * `peers` — loadgen against every peer backend found ([`peers`]).
//! * `guest3d` — a real Linux guest's GL clients on gpu-reactor and on
//!   QEMU's own virtio-gpu-gl, alternating ([`guest3d_bench`]).
//! * `ab` — the regression gate: REV and HEAD interleaved, ratios with
//!   confidence intervals ([`ab`]).
//!
//! To add a subcommand: add a variant to [`Command`] with its own `Args`
//! struct, a module, and an arm in [`Command::run`].

mod ab;
mod dashboard;
mod device_bench;
mod guest3d_bench;
mod history;
mod matrix;
mod peers;
mod reactor_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "gpu-reactor benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wake-up latency percentiles (same-shard eventfd, cross-shard doorbell,
    /// 1 ms timerfd lateness) for our reactor, tokio-uring, epoll and raw io_uring.
    Reactor(ReactorArgs),
    /// Commands per second through the device, 1/4/16 contexts on 1 and 2 shards.
    Device(DeviceArgs),
    /// The loadgen matrix (embedded gpu-reactor) and the micro-benchmarks;
    /// one JSON line per case appended to the history.
    Run(RunArgs),
    /// A static HTML page (inline SVG charts) of the history.
    Dashboard(DashboardArgs),
    /// loadgen's 2d (and 3d) profile against every backend found, side by side.
    Peers(PeersArgs),
    /// A real Linux guest's GL clients (Mesa virgl; 1 on KMS, the rest
    /// offscreen) on gpu-reactor and on QEMU's own virtio-gpu-gl-pci,
    /// alternating in one run; one history line per backend and count.
    Guest3d(Guest3dArgs),
    /// Regression gate: builds REV in a git worktree and HEAD, runs their
    /// loadgen interleaved, reports HEAD/REV ratios; exit 1 on a regression.
    Ab(AbArgs),
    /// One loadgen case in this process, JSON report on stdout (the
    /// loadgen CLI's flags that `bench ab` uses; for tests of the gate).
    #[command(hide = true)]
    Loadgen(LoadgenArgs),
}

impl Command {
    fn run(self) -> Result<(), String> {
        match self {
            Command::Reactor(args) => run_reactor(args),
            Command::Device(args) => run_device(args),
            Command::Run(args) => run_matrix(args),
            Command::Dashboard(args) => run_dashboard(args),
            Command::Peers(args) => run_peers(args),
            Command::Guest3d(args) => run_guest3d(args),
            Command::Ab(args) => run_ab(args),
            Command::Loadgen(args) => run_loadgen(args),
        }
    }
}

/// Where to write the JSON report.
#[derive(Debug, Clone)]
enum JsonOut {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for JsonOut {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty path (use - for stdout)".into()),
            "-" => Ok(JsonOut::Stdout),
            path => Ok(JsonOut::File(path.into())),
        }
    }
}

#[derive(Debug, Args)]
struct ReactorArgs {
    /// Write ONE JSON object to PATH, or to stdout with `-`, instead of the table.
    #[arg(long, value_name = "PATH|-")]
    json: Option<JsonOut>,
    /// Recorded samples per system, case and round (the timer case is capped at 2000).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Interleaved rounds whose histograms are merged per system.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

fn run_reactor(args: ReactorArgs) -> Result<(), String> {
    let cfg = reactor_bench::Config {
        iterations: args.iterations as usize,
        rounds: args.rounds as usize,
    };
    // Open the output first so a bad path fails before minutes of measuring.
    let mut out: Option<Box<dyn std::io::Write>> = match &args.json {
        None => None,
        Some(JsonOut::Stdout) => Some(Box::new(std::io::stdout().lock())),
        Some(JsonOut::File(path)) => Some(Box::new(
            std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?,
        )),
    };
    let report = reactor_bench::run(cfg, |line| eprintln!("bench reactor: {line}"))
        .map_err(|e| e.to_string())?;
    match &mut out {
        None => print!("{}", reactor_bench::render_table(&report)),
        Some(out) => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| format!("serialising the report: {e}"))?;
            json.push('\n');
            out.write_all(json.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing the JSON report: {e}"))?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
struct DeviceArgs {
    /// Write ONE JSON object to PATH, or to stdout with `-`, instead of the table.
    #[arg(long, value_name = "PATH|-")]
    json: Option<JsonOut>,
    /// Commands per case and round.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1000..))]
    commands: u64,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

fn run_device(args: DeviceArgs) -> Result<(), String> {
    let report = device_bench::run(args.rounds as usize, args.commands, |l| {
        eprintln!("bench device: {l}")
    })?;
    match &args.json {
        None => print!("{}", device_bench::render_table(&report)),
        Some(out) => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
            match out {
                JsonOut::Stdout => print!("{json}"),
                JsonOut::File(p) => {
                    std::fs::write(p, json).map_err(|e| format!("{}: {e}", p.display()))?
                }
            }
        }
    }
    Ok(())
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn seconds(s: &str) -> Result<std::time::Duration, String> {
    let v: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v > 0.0 && v < 3600.0 {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        Err(format!("{s}: out of range (0, 3600) s"))
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Reduced matrix, short cases, small micro-benchmarks (under 2 minutes).
    #[arg(long)]
    quick: bool,
    /// History file to append to.
    #[arg(long, default_value = history::DEFAULT_PATH)]
    history: PathBuf,
    /// Seconds per loadgen case (default 1.5 with --quick, else 4).
    #[arg(long, value_parser = seconds)]
    duration: Option<std::time::Duration>,
    /// Only the loadgen cases whose name (e.g. `3d/ring/16/none`) contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Leave out the reactor and device micro-benchmarks.
    #[arg(long)]
    no_micro: bool,
}

fn run_matrix(args: RunArgs) -> Result<(), String> {
    let opts = matrix::Options {
        quick: args.quick,
        duration: args
            .duration
            .unwrap_or(std::time::Duration::from_secs_f64(if args.quick {
                1.5
            } else {
                4.0
            })),
        filter: args.filter,
        micro: !args.no_micro,
        shards: default_shards(),
    };
    let started = std::time::Instant::now();
    let out = matrix::run(
        &opts,
        |recs| history::append(&args.history, recs),
        |l| eprintln!("bench run: {l}"),
    )?;
    eprintln!(
        "bench run: {} lines appended to {} in {:.0} s",
        out.records.len(),
        args.history.display(),
        started.elapsed().as_secs_f64()
    );
    if out.failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} cases failed:\n  {}",
            out.failed.len(),
            out.failed.join("\n  ")
        ))
    }
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// History file to read.
    #[arg(long, default_value = history::DEFAULT_PATH)]
    history: PathBuf,
    /// Directory to write index.html into.
    #[arg(long)]
    out: PathBuf,
}

fn run_dashboard(args: DashboardArgs) -> Result<(), String> {
    let path = dashboard::write(&args.history, &args.out)?;
    println!("{}", path.display());
    Ok(())
}

#[derive(Debug, Args)]
struct PeersArgs {
    /// Seconds per peer and profile.
    #[arg(long, default_value = "5", value_parser = seconds)]
    duration: std::time::Duration,
    /// Desktops (full-frame 1280x800 flushes in 2d).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=255))]
    desktops: u16,
    /// Frames per second per desktop; 0 runs unthrottled (throughput).
    #[arg(long, default_value_t = 60)]
    fps: u32,
    /// History file the `peers` line is appended to.
    #[arg(long, default_value = history::DEFAULT_PATH)]
    history: PathBuf,
}

fn run_peers(args: PeersArgs) -> Result<(), String> {
    let opts = peers::Options {
        desktops: args.desktops as usize,
        duration: args.duration,
        shards: default_shards(),
        fps: args.fps,
    };
    let stamp = history::Stamp::now();
    let rows = peers::run(&opts, |l| eprintln!("bench peers: {l}"));
    print!(
        "{}",
        peers::render_table(&rows, opts.duration.as_secs_f64())
    );
    history::append(&args.history, &[peers::record(&stamp, &opts, rows)])
}

#[derive(Debug, Args)]
struct Guest3dArgs {
    /// Client counts, comma-separated (each: 1 KMS client, the rest offscreen).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: Vec<u32>,
    /// Seconds each client renders.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    secs: u32,
    /// Rounds (each boots every count on both backends, the order flipping).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// The gpu-reactor daemon, built with `--features virgl` (default: the
    /// one beside this binary).
    #[arg(long, value_name = "PATH")]
    daemon: Option<PathBuf>,
    /// gpu-reactor's `--render-workers` (default: the daemon's).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=64))]
    render_workers: Option<u16>,
    /// History file to append to.
    #[arg(long, default_value = history::DEFAULT_PATH)]
    history: PathBuf,
    /// The heavy run (client 0 offscreen with a very expensive fragment
    /// shader, the others light: what a stalled desktop does to the
    /// others); "others' gap" is then the light clients' longest frame gap.
    #[arg(long)]
    heavy: bool,
    /// Keep the scratch directory (each boot's serial console, backend and
    /// QEMU logs, gpu-reactor's metrics) and print its path.
    #[arg(long)]
    keep: bool,
}

fn run_guest3d(args: Guest3dArgs) -> Result<(), String> {
    let daemon = args.daemon.unwrap_or_else(guest3d_bench::default_daemon);
    if !daemon.exists() {
        return Err(format!(
            "{} does not exist: build it with `cargo build --release -p gpu --features virgl \
             --bin gpu-reactor`, or name it with --daemon",
            daemon.display()
        ));
    }
    let opts = guest3d_bench::Options {
        clients: args.clients,
        secs: args.secs,
        rounds: args.rounds,
        heavy: args.heavy,
        daemon,
        workers: args.render_workers.map(usize::from),
        dir: std::env::temp_dir().join(format!("gpu-reactor-bench-guest3d-{}", std::process::id())),
    };
    let stamp = history::Stamp::now();
    let rows = guest3d_bench::run(&opts, |l| eprintln!("bench guest3d: {l}"))?;
    print!("{}", guest3d_bench::render_table(&rows));
    history::append(&args.history, &guest3d_bench::records(&stamp, &opts, &rows))?;
    if args.keep {
        eprintln!(
            "bench guest3d: logs and metrics kept in {}",
            opts.dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&opts.dir);
    }
    Ok(())
}

#[derive(Debug, Args)]
struct AbArgs {
    /// The revision to compare HEAD (the working tree) against.
    #[arg(long)]
    baseline: String,
    /// Interleaved rounds (REV, HEAD per case each round).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=50))]
    rounds: u32,
    /// Seconds per loadgen run.
    #[arg(long, default_value = "3", value_parser = seconds)]
    duration: std::time::Duration,
    /// Relative change a metric must exceed, with 95% confidence, to fail.
    #[arg(long, default_value_t = 0.10)]
    threshold: f64,
    /// Run this command (whitespace-separated) as the baseline instead of
    /// building REV; needs --head-cmd too.
    #[arg(long, hide = true, requires = "head_cmd")]
    baseline_cmd: Option<String>,
    /// Run this command as HEAD instead of building the working tree.
    #[arg(long, hide = true, requires = "baseline_cmd")]
    head_cmd: Option<String>,
}

fn run_ab(args: AbArgs) -> Result<(), String> {
    let split = |s: &Option<String>| {
        s.as_ref()
            .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    };
    let opts = ab::Options {
        baseline: args.baseline.clone(),
        rounds: args.rounds as usize,
        duration_s: args.duration.as_secs_f64(),
        threshold: args.threshold,
        baseline_cmd: split(&args.baseline_cmd),
        head_cmd: split(&args.head_cmd),
    };
    let rows = ab::run(&opts, |l| eprintln!("bench ab: {l}"))?;
    print!("{}", ab::render_table(&rows, &args.baseline));
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.regressed)
        .map(|r| format!("{} {}", r.case, r.metric))
        .collect();
    if bad.is_empty() {
        println!(
            "no regression beyond {:.0}% with 95% confidence",
            args.threshold * 100.0
        );
        Ok(())
    } else {
        Err(format!("regression: {}", bad.join(", ")))
    }
}

#[derive(Debug, Args)]
struct LoadgenArgs {
    #[arg(long, default_value_t = 16)]
    desktops: usize,
    #[arg(long, default_value = "3d")]
    profile: loadgen::scenario::Profile,
    #[arg(long, default_value = "ring")]
    fence_mode: loadgen::scenario::FenceMode,
    #[arg(long, default_value = "10", value_parser = seconds)]
    duration: std::time::Duration,
    /// Modelled GPU time per submit, µs.
    #[arg(long, default_value_t = 2000)]
    gpu_cost_us: u32,
    /// Only `-` (stdout) is supported.
    #[arg(long, default_value = "-")]
    json: String,
    /// Print a canned report with this fence latency instead of running
    /// (tests of the gate's arithmetic, which must not depend on timing).
    #[arg(long, hide = true)]
    fake_latency_us: Option<u64>,
}

fn run_loadgen(args: LoadgenArgs) -> Result<(), String> {
    if args.json != "-" {
        return Err("bench loadgen writes its JSON to stdout only (--json -)".into());
    }
    if let Some(l) = args.fake_latency_us {
        let canned = serde_json::json!({
            "commands_per_s": 4000.0,
            "frames_per_s": 960.0,
            "fence_latency_us": {"p50": l, "p99": l * 3 / 2},
            "fence_overhead_us": {"p50": l / 10, "p99": l / 5},
        });
        println!("{canned}");
        return Ok(());
    }
    let case = matrix::Case {
        desktops: args.desktops,
        profile: args.profile,
        fence_mode: args.fence_mode,
        scenario: loadgen::scenario::Scenario::None,
        virgl_workers: None,
    };
    let plan = loadgen::scenario::Plan {
        gpu_cost_us: args.gpu_cost_us,
        ..case.plan(args.duration)
    };
    let report = matrix::run_plan(&plan, default_shards())?;
    println!(
        "{}",
        serde_json::to_string(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn main() -> ExitCode {
    // Re-executed as a render worker of a virgl case's embedded backend?
    #[cfg(feature = "virgl")]
    if let Some(code) = gpu::render::virgl::worker::run_if_requested() {
        return code;
    }
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
