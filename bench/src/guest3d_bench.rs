//! `bench guest3d`: the real 3D guest (`e2e_tests::guest3d`: a Linux guest
//! with the host's Mesa, our GL client on KMS plus offscreen ones) on
//! gpu-reactor (`vhost-user-gpu-pci`, `--renderer virgl`) and on QEMU's own
//! `virtio-gpu-gl-pci` (virglrenderer in QEMU's main loop, GL display
//! under Xvfb), alternating in one run, for 1, 4 and 16 clients.
//!
//! Per backend and client count: total frames/s, the KMS client's, glFinish
//! p50 (the median of the clients') and p99 (the worst client's), the
//! longest frame gap, readback and guest kernel errors, and QEMU's main
//! loop responsiveness (QMP round trip p99). Ratios are gpu-reactor ÷ QEMU
//! of the same run. Both backends run the same initramfs, so the guest
//! (TCG here: its one vCPU is the shared bottleneck) is the same for both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e_tests::guest3d::{self, Backend, Outcome, Plan};
use e2e_tests::qemu::Host;

use crate::history::{Record, Stamp};

pub struct Options {
    pub clients: Vec<u32>,
    pub secs: u32,
    pub rounds: u32,
    /// The heavy run instead of the default one: client 0 offscreen with
    /// an expensive fragment shader, the others light (`g3d.run=heavy`).
    pub heavy: bool,
    /// The `gpu-reactor` binary (built with `--features virgl`).
    pub daemon: PathBuf,
    /// `--render-workers`; `None`: the daemon's default.
    pub workers: Option<usize>,
    /// Scratch directory (initramfs, logs).
    pub dir: PathBuf,
}

/// One boot's numbers.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: &'static str,
    pub clients: u32,
    pub total_fps: f64,
    pub kms_fps: f64,
    pub finish_p50_us: f64,
    pub finish_p99_us: f64,
    pub max_gap_ms: f64,
    /// The longest frame gap of the clients other than client 0 (the KMS
    /// client; with `heavy`, the heavy one).
    pub others_gap_ms: f64,
    pub readback_errors: u64,
    pub readbacks: u64,
    pub kernel_errors: u64,
    pub qmp_p99_ms: f64,
    /// The guest vCPU's busy fraction while the clients rendered (NaN if
    /// not measured).
    pub vcpu_busy: f64,
    /// The host CPUs' busy fraction over that time (NaN if not measured).
    pub host_busy: f64,
}

const GPU_REACTOR: &str = "gpu-reactor";
const QEMU_GL: &str = "qemu-virtio-gpu-gl";

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn row(backend: &'static str, clients: u32, o: &Outcome) -> Row {
    let c = &o.clients;
    Row {
        backend,
        clients,
        total_fps: c.iter().map(|c| c.fps).sum(),
        // `+ 0.0`: an empty sum of f64 is -0.0.
        kms_fps: c.iter().filter(|c| c.head >= 0).map(|c| c.fps).sum::<f64>() + 0.0,
        finish_p50_us: percentile(c.iter().map(|c| c.finish_p50_us).collect(), 0.5),
        finish_p99_us: c.iter().map(|c| c.finish_p99_us).fold(0.0, f64::max),
        max_gap_ms: c.iter().map(|c| c.max_gap_ms).fold(0.0, f64::max),
        others_gap_ms: c
            .iter()
            .filter(|c| c.id != 0)
            .map(|c| c.max_gap_ms)
            .fold(0.0, f64::max),
        readback_errors: c.iter().map(|c| c.readback_errors).sum(),
        readbacks: c.iter().map(|c| c.readbacks).sum(),
        kernel_errors: o.kernel_errors,
        qmp_p99_ms: percentile(o.qmp_ms.clone(), 0.99),
        vcpu_busy: o.vcpu_busy.unwrap_or(f64::NAN),
        host_busy: o.host_busy.unwrap_or(f64::NAN),
    }
}

/// Boots every case, alternating backends (the order flips each round).
pub fn run(opts: &Options, log: impl Fn(&str)) -> Result<Vec<Row>, String> {
    let host = Host::find();
    std::fs::create_dir_all(&opts.dir).map_err(|e| format!("{}: {e}", opts.dir.display()))?;
    let initrd = guest3d::build_image(&host, &opts.dir);
    let mut rows = Vec::new();
    for round in 0..opts.rounds {
        for &n in &opts.clients {
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for ours in order {
                let (name, backend) = if ours {
                    (
                        GPU_REACTOR,
                        Backend::GpuReactor {
                            bin: opts.daemon.clone(),
                            workers: opts.workers,
                        },
                    )
                } else {
                    (QEMU_GL, Backend::QemuGl)
                };
                let plan = Plan {
                    run: if opts.heavy { "heavy" } else { "clients" },
                    n,
                    secs: opts.secs,
                    outputs: 1,
                    kms_heads: u32::from(!opts.heavy),
                };
                let dir = opts.dir.join(format!("{name}-{n}-{round}"));
                let limit = Duration::from_secs(u64::from(opts.secs) * 4 + 240);
                let o = guest3d::run(&host, &initrd, &backend, &plan, &dir, limit)?;
                let r = row(name, n, &o);
                log(&format!(
                    "round {round}, {n} clients on {name}: {:.1} fps, glFinish p50 {:.1} ms, \
                     p99 {:.1} ms, longest gap {:.0} ms (others {:.0} ms), {}/{} readbacks wrong, \
                     {} kernel errors, \
                     guest vCPU {:.0}% busy, host CPUs {:.0}% busy",
                    r.total_fps,
                    r.finish_p50_us / 1e3,
                    r.finish_p99_us / 1e3,
                    r.max_gap_ms,
                    r.others_gap_ms,
                    r.readback_errors,
                    r.readbacks,
                    r.kernel_errors,
                    r.vcpu_busy * 100.0,
                    r.host_busy * 100.0
                ));
                if o.clients.len() != n as usize {
                    return Err(format!(
                        "{name} with {n} clients: {} client reports\n{}",
                        o.clients.len(),
                        o.serial
                    ));
                }
                rows.push(r);
            }
        }
    }
    Ok(rows)
}

/// The mean over the rounds of `backend` with `n` clients of what was
/// measured (NaN, not measured, is left out; NaN if nothing was).
fn mean(rows: &[Row], backend: &str, n: u32, f: impl Fn(&Row) -> f64) -> f64 {
    let v: Vec<f64> = rows
        .iter()
        .filter(|r| r.backend == backend && r.clients == n)
        .map(f)
        .filter(|v| v.is_finite())
        .collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn counts(rows: &[Row]) -> Vec<u32> {
    let mut n: Vec<u32> = rows.iter().map(|r| r.clients).collect();
    n.sort_unstable();
    n.dedup();
    n
}

/// Per client count, gpu-reactor beside QEMU (means over rounds) and the
/// ratios.
pub fn render_table(rows: &[Row]) -> String {
    let mut t = String::from(
        "clients  backend              fps  KMS fps  finish p50 ms  p99 ms  gap ms  others' gap  bad/readbacks  kernel err  QMP p99 ms  vCPU busy  host busy\n",
    );
    for n in counts(rows) {
        for b in [GPU_REACTOR, QEMU_GL] {
            let m = |f: fn(&Row) -> f64| mean(rows, b, n, f);
            let bad: u64 = rows
                .iter()
                .filter(|r| r.backend == b && r.clients == n)
                .map(|r| r.readback_errors)
                .sum();
            let all: u64 = rows
                .iter()
                .filter(|r| r.backend == b && r.clients == n)
                .map(|r| r.readbacks)
                .sum();
            let kerr: u64 = rows
                .iter()
                .filter(|r| r.backend == b && r.clients == n)
                .map(|r| r.kernel_errors)
                .sum();
            t.push_str(&format!(
                "{n:>7}  {b:<18} {:>6.1} {:>8.1} {:>14.1} {:>7.1} {:>7.0} {:>12.0} {:>14} {:>11} {:>11.1} {:>9.0}% {:>9.0}%\n",
                m(|r| r.total_fps),
                m(|r| r.kms_fps),
                m(|r| r.finish_p50_us) / 1e3,
                m(|r| r.finish_p99_us) / 1e3,
                m(|r| r.max_gap_ms),
                m(|r| r.others_gap_ms),
                format!("{bad}/{all}"),
                kerr,
                m(|r| r.qmp_p99_ms),
                m(|r| r.vcpu_busy) * 100.0,
                m(|r| r.host_busy) * 100.0,
            ));
        }
        let ratio = |f: fn(&Row) -> f64| {
            let q = mean(rows, QEMU_GL, n, f);
            if q > 0.0 {
                mean(rows, GPU_REACTOR, n, f) / q
            } else {
                f64::NAN
            }
        };
        t.push_str(&format!(
            "{n:>7}  ours ÷ QEMU         {:>5.2}x {:>7.2}x {:>13.2}x {:>6.2}x\n",
            ratio(|r| r.total_fps),
            ratio(|r| r.kms_fps),
            ratio(|r| r.finish_p50_us),
            ratio(|r| r.finish_p99_us),
        ));
    }
    t
}

/// One history line per backend and client count (means over rounds).
pub fn records(stamp: &Stamp, opts: &Options, rows: &[Row]) -> Vec<Record> {
    let mut out = Vec::new();
    for n in counts(rows) {
        for b in [GPU_REACTOR, QEMU_GL] {
            let m = |f: fn(&Row) -> f64| mean(rows, b, n, f);
            let mut r = Record {
                kind: "guest3d".into(),
                case: if opts.heavy {
                    format!("guest3d/heavy/{b}/{n}")
                } else {
                    format!("guest3d/{b}/{n}")
                },
                stamp: stamp.clone(),
                params: Default::default(),
                metrics: Default::default(),
                peers: Vec::new(),
            };
            r.params.insert("clients".into(), n.into());
            r.params.insert("secs".into(), opts.secs.into());
            r.params.insert("rounds".into(), opts.rounds.into());
            for (k, v) in [
                ("frames_per_s", m(|r| r.total_fps)),
                ("kms_frames_per_s", m(|r| r.kms_fps)),
                ("finish_p50_us", m(|r| r.finish_p50_us)),
                ("finish_p99_us", m(|r| r.finish_p99_us)),
                ("max_gap_ms", m(|r| r.max_gap_ms)),
                ("others_max_gap_ms", m(|r| r.others_gap_ms)),
                ("readback_errors", m(|r| r.readback_errors as f64)),
                ("kernel_errors", m(|r| r.kernel_errors as f64)),
                ("qmp_p99_ms", m(|r| r.qmp_p99_ms)),
                ("vcpu_busy", m(|r| r.vcpu_busy)),
                ("host_busy", m(|r| r.host_busy)),
            ] {
                // JSON has no NaN (serde writes null, which the history
                // does not read back): what was not measured is left out.
                if v.is_finite() {
                    r.metrics.insert(k.into(), v);
                }
            }
            out.push(r);
        }
    }
    out
}

/// The default daemon: `gpu-reactor` beside this `bench` binary.
pub fn default_daemon() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .unwrap_or_default()
        .join("gpu-reactor")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(backend: &'static str, fps: f64, vcpu_busy: f64) -> Row {
        Row {
            backend,
            clients: 1,
            total_fps: fps,
            kms_fps: fps,
            finish_p50_us: 1000.0,
            finish_p99_us: 2000.0,
            max_gap_ms: 10.0,
            others_gap_ms: 5.0,
            readback_errors: 0,
            readbacks: 10,
            kernel_errors: 0,
            qmp_p99_ms: 1.0,
            vcpu_busy,
            host_busy: f64::NAN,
        }
    }

    /// What was not measured (NaN) is left out of the history line, so
    /// the line still reads back with every measured number; a mean is
    /// over the rounds that measured it.
    #[test]
    fn unmeasured_floors_are_left_out_and_the_line_reads_back() {
        let rows = [
            row(GPU_REACTOR, 100.0, f64::NAN),
            row(GPU_REACTOR, 200.0, 0.5),
            row(QEMU_GL, 50.0, f64::NAN),
        ];
        let opts = Options {
            clients: vec![1],
            secs: 1,
            rounds: 2,
            heavy: false,
            daemon: PathBuf::from("gpu-reactor"),
            workers: None,
            dir: PathBuf::from("/nonexistent"),
        };
        let stamp = Stamp {
            rev: "r".into(),
            date: "d".into(),
            machine: crate::history::Machine::this(),
        };
        let records = records(&stamp, &opts, &rows);
        let text: String = records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        let (back, bad) = crate::history::parse(&text);
        assert_eq!((back.len(), bad), (2, 0), "{text}");
        let ours = &back[0].metrics;
        assert_eq!(ours.get("frames_per_s"), Some(&150.0));
        assert_eq!(ours.get("vcpu_busy"), Some(&0.5));
        assert_eq!(ours.get("host_busy"), None);
        assert_eq!(back[1].metrics.get("vcpu_busy"), None);
        assert_eq!(back[1].metrics.get("frames_per_s"), Some(&50.0));
    }
}
