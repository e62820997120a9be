//! `bench peers`: the same loadgen plan against every backend found, side
//! by side in one run, over vhost-user:
//!
//! * gpu-reactor with the sim renderer (embedded, on a socketpair);
//! * gpu-reactor with the 2d renderer (rutabaga_gfx), served in this process
//!   on a unix socket path by `gpu::vhost::Server`;
//! * rust-vmm's vhost-device-gpu in null mode (serves one frontend, exits);
//! * QEMU's contrib `/usr/lib/qemu/vhost-user-gpu`.
//!
//! Each (peer, profile) gets a fresh backend. The 2d profile (what every
//! backend supports) and the 3d profile are tried; a peer that lacks a
//! feature is listed with what it could not do, never dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::report::Report;
use loadgen::run::{self, Backend, StartError};
use loadgen::scenario::{FenceMode, Plan, Profile};
use serde_json::json;

use crate::history::{PeerRow, Record, Stamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    ReactorSim,
    Reactor2d,
    VhostDeviceGpu,
    QemuContrib,
}

impl Peer {
    pub const ALL: [Peer; 4] = [
        Peer::ReactorSim,
        Peer::Reactor2d,
        Peer::VhostDeviceGpu,
        Peer::QemuContrib,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Peer::ReactorSim => "gpu-reactor/sim",
            Peer::Reactor2d => "gpu-reactor/2d",
            Peer::VhostDeviceGpu => "vhost-device-gpu (null)",
            Peer::QemuContrib => "qemu vhost-user-gpu",
        }
    }

    fn external(self) -> Option<(PathBuf, Vec<&'static str>)> {
        match self {
            Peer::VhostDeviceGpu => {
                let home = std::env::var_os("CARGO_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
                    .unwrap_or_default();
                Some((home.join("bin/vhost-device-gpu"), vec!["-g", "null", "-s"]))
            }
            Peer::QemuContrib => Some((PathBuf::from("/usr/lib/qemu/vhost-user-gpu"), vec!["-s"])),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub desktops: usize,
    pub duration: Duration,
    pub shards: usize,
    /// Frames per second per desktop (0: unthrottled, for throughput).
    pub fps: u32,
}

/// Kills a peer process on every path.
struct Child2(Child);

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backend a run was started against, stopped on drop.
enum Running {
    None,
    /// Held only to be killed on drop.
    Process(#[allow(dead_code)] Child2),
    Server {
        stop: gpu::vhost::ServerStop,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Server { stop, thread } = self {
            stop.stop();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn scratch_socket(tag: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("bench-peers-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.join("gpu.sock"))
}

fn wait_for(sock: &Path, child: &mut Child2) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Ok(Some(st)) = child.0.try_wait() {
            return Err(format!("exited ({st}) before listening"));
        }
        if Instant::now() > deadline {
            return Err("never listened".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts `peer` for `plan`; Err(text) says why it cannot run.
fn start(
    peer: Peer,
    plan: &Plan,
    shards: usize,
) -> Result<(Running, Backend, loadgen::driver::GpuDriver), String> {
    let tag = format!("{}-{}", peer as u8, plan.profile);
    let unsupported = |e: StartError| match e {
        StartError::Unsupported(m) => m,
        e => format!("cannot start: {e}"),
    };
    match peer {
        Peer::ReactorSim => {
            let (b, d) = Backend::embedded(plan, shards).map_err(unsupported)?;
            Ok((Running::None, b, d))
        }
        Peer::Reactor2d => {
            let backend = Arc::new(
                gpu::vhost::Backend::start(run::backend_options(
                    plan,
                    shards,
                    Arc::new(gpu::render::rutabaga2d::Rutabaga2dFactory),
                ))
                .map_err(|e| format!("cannot start: {e}"))?,
            );
            let sock = scratch_socket(&tag)?;
            let server = gpu::vhost::Server::bind(&sock, backend)
                .map_err(|e| format!("binding {}: {e}", sock.display()))?;
            let stop = server.stopper();
            let thread = std::thread::Builder::new()
                .name("peer-2d-server".into())
                .spawn(move || {
                    let _ = server.run();
                })
                .map_err(|e| e.to_string())?;
            let running = Running::Server {
                stop,
                thread: Some(thread),
            };
            let (b, d) = Backend::socket(plan, &sock).map_err(unsupported)?;
            Ok((running, b, d))
        }
        Peer::VhostDeviceGpu | Peer::QemuContrib => {
            let Some((bin, args)) = peer.external() else {
                return Err("not an external peer".into());
            };
            if !bin.exists() {
                return Err(format!(
                    "not installed ({} missing: run bench/install-peers.sh)",
                    bin.display()
                ));
            }
            let sock = scratch_socket(&tag)?;
            let mut child = Child2(
                Command::new(&bin)
                    .args(&args)
                    .arg(&sock)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("{}: {e}", bin.display()))?,
            );
            wait_for(&sock, &mut child)?;
            let (b, d) = Backend::socket(plan, &sock).map_err(unsupported)?;
            Ok((Running::Process(child), b, d))
        }
    }
}

pub fn plan(profile: Profile, opts: &Options) -> Plan {
    Plan {
        desktops: opts.desktops,
        duration: opts.duration,
        profile,
        fence_mode: FenceMode::Ring,
        full_damage: profile == Profile::TwoD,
        fps: opts.fps,
        ..Plan::default()
    }
}

/// What a finished run shows a peer could not do.
pub fn shortcomings(plan: &Plan, r: &Report) -> Vec<String> {
    let p = plan.profile;
    let mut out = Vec::new();
    if r.frames > 0 && r.frames_delivered == 0 {
        out.push(format!(
            "{p}: delivers no pixels (0 frames reached the display)"
        ));
    }
    if r.pixels_bad > 0 {
        out.push(format!("{p}: {} frames with wrong pixels", r.pixels_bad));
    }
    if r.fences_lost > 0 {
        out.push(format!("{p}: lost {} fences", r.fences_lost));
    }
    if r.errors > 0 {
        out.push(format!(
            "{p}: {} errors ({})",
            r.errors,
            r.error_samples.first().map_or("", String::as_str)
        ));
    }
    let wanted = (plan.desktops as f64) * f64::from(plan.fps);
    if plan.fps > 0 && r.frames_per_s < 0.95 * wanted {
        out.push(format!(
            "{p}: kept up with {:.0} of {wanted:.0} frames/s",
            r.frames_per_s
        ));
    }
    out
}

/// Fills in the ratios to gpu-reactor: 2d rows against gpu-reactor/2d, 3d
/// rows against gpu-reactor/sim (the renderer each profile is meant for),
/// or the other gpu-reactor row when that one did not run.
pub fn fill_ratios(rows: &mut [PeerRow]) {
    for profile in ["2d", "3d"] {
        let preferred = if profile == "2d" {
            Peer::Reactor2d.name()
        } else {
            Peer::ReactorSim.name()
        };
        let reference = rows
            .iter()
            .filter(|r| r.profile == profile && r.ran)
            .filter(|r| r.peer.starts_with("gpu-reactor"))
            .min_by_key(|r| r.peer != preferred)
            .map(|r| (r.frames_per_s, r.fence_p99_us));
        let Some((fps, p99)) = reference else {
            continue;
        };
        for r in rows.iter_mut().filter(|r| r.profile == profile && r.ran) {
            r.frames_ratio = (fps > 0.0).then(|| r.frames_per_s / fps);
            r.p99_ratio = (p99 > 0).then(|| r.fence_p99_us as f64 / p99 as f64);
        }
    }
}

pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Vec<PeerRow> {
    let mut rows = Vec::new();
    for profile in [Profile::TwoD, Profile::ThreeD] {
        let plan = plan(profile, opts);
        for peer in Peer::ALL {
            let mut row = PeerRow {
                peer: peer.name().into(),
                profile: profile.to_string(),
                ran: false,
                frames_per_s: 0.0,
                fence_p50_us: 0,
                fence_p99_us: 0,
                frames_delivered: 0,
                frames_ratio: None,
                p99_ratio: None,
                could_not: Vec::new(),
            };
            match start(peer, &plan, opts.shards) {
                Err(e) => {
                    progress(&format!("{} {profile}: {e}", peer.name()));
                    row.could_not.push(format!("{profile}: {e}"));
                }
                Ok((running, backend, driver)) => {
                    let r = run::run(&plan, &backend, driver, &mut |_| {});
                    let _ = backend.finish();
                    drop(running);
                    progress(&format!(
                        "{} {profile}: {:.0} frames/s, fence p50 {} p99 {} µs, delivered {}",
                        peer.name(),
                        r.frames_per_s,
                        r.fence_latency_us.p50,
                        r.fence_latency_us.p99,
                        r.frames_delivered
                    ));
                    row.ran = true;
                    row.frames_per_s = r.frames_per_s;
                    row.fence_p50_us = r.fence_latency_us.p50;
                    row.fence_p99_us = r.fence_latency_us.p99;
                    row.frames_delivered = r.frames_delivered;
                    row.could_not = shortcomings(&plan, &r);
                }
            }
            rows.push(row);
        }
    }
    fill_ratios(&mut rows);
    rows
}

pub fn record(stamp: &Stamp, opts: &Options, rows: Vec<PeerRow>) -> Record {
    Record {
        kind: "peers".into(),
        case: "peers".into(),
        stamp: stamp.clone(),
        params: [
            ("desktops".to_string(), json!(opts.desktops)),
            ("duration_s".to_string(), json!(opts.duration.as_secs_f64())),
            ("fps".to_string(), json!(opts.fps)),
        ]
        .into_iter()
        .collect(),
        metrics: Default::default(),
        peers: rows,
    }
}

/// The table `bench peers` prints; `duration_s` is each run's length.
pub fn render_table(rows: &[PeerRow], duration_s: f64) -> String {
    let duration_s = duration_s.max(1e-9);
    let mut s = format!(
        "{:<26} {:>4} {:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}  could not\n",
        "peer",
        "prof",
        "frames/s",
        "p50 µs",
        "p99 µs",
        "delivered",
        "delivered/s",
        "fps ÷gr",
        "p99 ÷gr"
    );
    let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for r in rows {
        let body = if r.ran {
            format!(
                "{:>9.0} {:>9} {:>9} {:>9} {:>11.0} {:>8} {:>8}",
                r.frames_per_s,
                r.fence_p50_us,
                r.fence_p99_us,
                r.frames_delivered,
                r.frames_delivered as f64 / duration_s,
                opt(r.frames_ratio),
                opt(r.p99_ratio)
            )
        } else {
            format!(
                "{:>9} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}",
                "-", "-", "-", "-", "-", "-", "-"
            )
        };
        s.push_str(&format!(
            "{:<26} {:>4} {body}  {}\n",
            r.peer,
            r.profile,
            r.could_not.join("; ")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(peer: &str, profile: &str, fps: f64, p99: u64) -> PeerRow {
        PeerRow {
            peer: peer.into(),
            profile: profile.into(),
            ran: true,
            frames_per_s: fps,
            fence_p50_us: 1,
            fence_p99_us: p99,
            frames_delivered: 1,
            frames_ratio: None,
            p99_ratio: None,
            could_not: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_to_the_gpu_reactor_row_meant_for_the_profile() {
        let mut rows = vec![
            row("gpu-reactor/sim", "2d", 500.0, 50),
            row("gpu-reactor/2d", "2d", 1000.0, 100),
            row("qemu vhost-user-gpu", "2d", 250.0, 400),
            row("gpu-reactor/sim", "3d", 800.0, 10),
            PeerRow {
                ran: false,
                ..row("qemu vhost-user-gpu", "3d", 0.0, 0)
            },
        ];
        fill_ratios(&mut rows);
        assert_eq!(rows[2].frames_ratio, Some(0.25));
        assert_eq!(rows[2].p99_ratio, Some(4.0));
        assert_eq!(rows[1].frames_ratio, Some(1.0));
        assert_eq!(rows[3].p99_ratio, Some(1.0));
        assert_eq!(rows[4].frames_ratio, None);
    }

    #[test]
    fn a_backend_that_shows_nothing_is_said_to_deliver_no_pixels() {
        let plan = plan(
            Profile::TwoD,
            &Options {
                desktops: 2,
                duration: Duration::from_secs(1),
                shards: 1,
                fps: 60,
            },
        );
        let r = Report {
            desktops: 2,
            profile: "2d".into(),
            fence_mode: "global".into(),
            duration_s: 1.0,
            frames: 120,
            frames_per_s: 120.0,
            fences: 120,
            frames_delivered: 0,
            ..Report::default()
        };
        let s = shortcomings(&plan, &r);
        assert_eq!(s.len(), 1, "{s:?}");
        assert!(s[0].contains("no pixels"));
    }
}
