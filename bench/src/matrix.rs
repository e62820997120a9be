//! `bench run`: the scenario matrix through loadgen's library (embedded
//! gpu-reactor over vhost-user on a socketpair, in this process), plus the
//! reactor and device micro-benchmarks; one history line per case.
//!
//! The matrix is desktops {1, 4, 16, 64} x {2d, 3d/ring, 3d/global} with no
//! stress, plus every stress scenario on 3d/ring. The 2d profile has no
//! contexts, so its fences are always on the global timeline: a "2d/ring"
//! case would measure 2d/global again and is left out. `--quick` keeps
//! desktops {1, 16}, the scenarios at 16 desktops, and short runs.

use std::collections::BTreeMap;
use std::time::Duration;

use loadgen::report::Report;
use loadgen::run::{self, Backend};
use loadgen::scenario::{FenceMode, Plan, Profile, Scenario};
use serde_json::json;

use crate::history::{Record, Stamp};
use crate::{device_bench, reactor_bench};

/// One loadgen case of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    pub desktops: usize,
    pub profile: Profile,
    pub fence_mode: FenceMode,
    pub scenario: Scenario,
    /// `Some(n)`: real virgl rendering (llvmpipe) in `n` render worker
    /// processes instead of the sim renderer.
    pub virgl_workers: Option<usize>,
}

impl Case {
    /// Stable name: `profile/fence/desktops/scenario`, and
    /// `/virgl-wN` for virgl cases.
    pub fn name(&self) -> String {
        let base = format!(
            "{}/{}/{}/{}",
            self.profile, self.fence_mode, self.desktops, self.scenario
        );
        match self.virgl_workers {
            Some(n) => format!("{base}/virgl-w{n}"),
            None => base,
        }
    }

    pub fn plan(&self, duration: Duration) -> Plan {
        let plan = Plan {
            desktops: self.desktops,
            duration,
            profile: self.profile,
            fence_mode: self.fence_mode,
            scenario: self.scenario,
            full_damage: self.profile == Profile::TwoD,
            ..Plan::default()
        };
        match self.virgl_workers {
            Some(n) => Plan {
                renderer: loadgen::scenario::RendererKind::Virgl,
                render: loadgen::scenario::RenderMode::Real,
                render_workers: Some(n),
                ..plan
            },
            None => plan,
        }
    }
}

/// The matrix, in run order.
pub fn cases(quick: bool) -> Vec<Case> {
    let desktops: &[usize] = if quick { &[1, 16] } else { &[1, 4, 16, 64] };
    let stressed_at: &[usize] = if quick { &[16] } else { &[4, 16] };
    let modes = [
        (Profile::TwoD, FenceMode::Global),
        (Profile::ThreeD, FenceMode::Ring),
        (Profile::ThreeD, FenceMode::Global),
    ];
    let mut out = Vec::new();
    for &n in desktops {
        for (profile, fence_mode) in modes {
            out.push(Case {
                desktops: n,
                profile,
                fence_mode,
                scenario: Scenario::None,
                virgl_workers: None,
            });
        }
    }
    for &n in stressed_at {
        for scenario in Scenario::ALL.into_iter().filter(|s| *s != Scenario::None) {
            out.push(Case {
                desktops: n,
                profile: Profile::ThreeD,
                fence_mode: FenceMode::Ring,
                scenario,
                virgl_workers: None,
            });
        }
    }
    out.extend(virgl_cases());
    out
}

/// Real rendering (bench built with `--features virgl`): desktop 0's
/// seconds-long llvmpipe frames with a render worker per desktop, and the
/// same with one worker for all, whose freeze the workers remove.
fn virgl_cases() -> Vec<Case> {
    if !cfg!(feature = "virgl") {
        return Vec::new();
    }
    [8, 1]
        .into_iter()
        .map(|workers| Case {
            desktops: 8,
            profile: Profile::ThreeD,
            fence_mode: FenceMode::Ring,
            scenario: Scenario::HeavyContext,
            virgl_workers: Some(workers),
        })
        .collect()
}

/// How the run is sized.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Per loadgen case.
    pub duration: Duration,
    /// Only cases whose name contains this.
    pub filter: Option<String>,
    /// Also run the reactor and device micro-benchmarks.
    pub micro: bool,
    pub shards: usize,
}

/// The history metrics of one loadgen report.
pub fn report_metrics(r: &Report) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_owned(), v);
    };
    put("commands_per_s", r.commands_per_s);
    put("frames_per_s", r.frames_per_s);
    for (name, p) in [
        ("fence_latency", &r.fence_latency_us),
        ("fence_overhead", &r.fence_overhead_us),
    ] {
        put(&format!("{name}_p50_us"), p.p50 as f64);
        put(&format!("{name}_p99_us"), p.p99 as f64);
        put(&format!("{name}_p999_us"), p.p999 as f64);
    }
    put("fences_lost", r.fences_lost as f64);
    put("errors", r.errors as f64);
    put("max_stall_ms", r.max_stall_ms);
    put("frames_delivered", r.frames_delivered as f64);
    put("pixels_bad", r.pixels_bad as f64);
    if let Some(i) = &r.isolation {
        put("isolation_ratio", i.ratio);
    }
    m
}

pub fn loadgen_record(stamp: &Stamp, case: &Case, r: &Report) -> Record {
    let mut params = BTreeMap::from([
        ("backend".into(), json!(r.backend)),
        ("desktops".into(), json!(case.desktops)),
        ("profile".into(), json!(case.profile.to_string())),
        ("fence_mode".into(), json!(case.fence_mode.to_string())),
        ("scenario".into(), json!(case.scenario.to_string())),
        ("duration_s".into(), json!(r.duration_s)),
    ]);
    if let Some(n) = case.virgl_workers {
        params.insert("render_workers".into(), json!(n));
    }
    Record {
        kind: "loadgen".into(),
        case: case.name(),
        stamp: stamp.clone(),
        params,
        metrics: report_metrics(r),
        peers: Vec::new(),
    }
}

/// Runs one case against a fresh embedded backend.
pub fn run_case(case: &Case, duration: Duration, shards: usize) -> Result<Report, String> {
    run_plan(&case.plan(duration), shards)
}

/// Runs `plan` against a fresh embedded backend.
pub fn run_plan(plan: &Plan, shards: usize) -> Result<Report, String> {
    let plan = plan.clone();
    let (backend, driver) = Backend::embedded(&plan, shards).map_err(|e| e.to_string())?;
    let report = run::run(&plan, &backend, driver, &mut |_| {});
    backend
        .finish()
        .map_err(|e| format!("closing the session: {e}"))?;
    Ok(report)
}

fn reactor_records(stamp: &Stamp, r: &reactor_bench::Report) -> Vec<Record> {
    r.cases
        .iter()
        .map(|(case, c)| {
            let mut metrics = BTreeMap::new();
            for system in reactor_bench::System::ALL {
                let p = c.get(system);
                for (q, v) in [("p50", p.p50_us), ("p99", p.p99_us), ("p999", p.p999_us)] {
                    if let Some(v) = v {
                        metrics.insert(format!("{}_{q}_us", system.name()), v);
                    }
                }
            }
            for (q, v) in [
                ("p50", c.ratio_vs_raw_floor.p50),
                ("p99", c.ratio_vs_raw_floor.p99),
            ] {
                if let Some(v) = v {
                    metrics.insert(format!("ratio_vs_raw_floor_{q}"), v);
                }
            }
            Record {
                kind: "reactor".into(),
                case: format!("reactor/{}", case.name()),
                stamp: stamp.clone(),
                params: BTreeMap::from([
                    ("iterations".into(), json!(r.iterations)),
                    ("rounds".into(), json!(r.rounds)),
                ]),
                metrics,
                peers: Vec::new(),
            }
        })
        .collect()
}

fn device_records(stamp: &Stamp, r: &device_bench::Report) -> Vec<Record> {
    r.cases
        .iter()
        .map(|c| {
            let mut metrics = BTreeMap::from([("commands_per_s".into(), c.commands_per_s)]);
            if let Some((_, ratio)) = r.ratio_2_shards_vs_1.iter().find(|(n, _)| *n == c.contexts) {
                metrics.insert("ratio_2_shards_vs_1".into(), *ratio);
            }
            Record {
                kind: "device".into(),
                case: format!("device/{}ctx/{}shards", c.contexts, c.shards),
                stamp: stamp.clone(),
                params: BTreeMap::from([
                    ("contexts".into(), json!(c.contexts)),
                    ("shards".into(), json!(c.shards)),
                    ("commands".into(), json!(c.commands)),
                ]),
                metrics,
                peers: Vec::new(),
            }
        })
        .collect()
}

/// What a run produced.
pub struct Outcome {
    pub records: Vec<Record>,
    /// Cases that failed (errors, lost fences, or could not start).
    pub failed: Vec<String>,
}

/// Runs the matrix; every finished case is handed to `sink` at once (so an
/// interrupted run keeps what it measured).
pub fn run(
    opts: &Options,
    mut sink: impl FnMut(&[Record]) -> Result<(), String>,
    mut progress: impl FnMut(&str),
) -> Result<Outcome, String> {
    let stamp = Stamp::now();
    let mut out = Outcome {
        records: Vec::new(),
        failed: Vec::new(),
    };
    let selected: Vec<Case> = cases(opts.quick)
        .into_iter()
        .filter(|c| opts.filter.as_ref().is_none_or(|f| c.name().contains(f)))
        .collect();
    for (i, case) in selected.iter().enumerate() {
        let name = case.name();
        let record = match run_case(case, opts.duration, opts.shards) {
            Ok(r) => {
                progress(&format!(
                    "[{}/{}] {name}: {:.0} frames/s, {:.0} commands/s, fence p50 {} p99 {} µs, lost {}, errors {}{}",
                    i + 1,
                    selected.len(),
                    r.frames_per_s,
                    r.commands_per_s,
                    r.fence_latency_us.p50,
                    r.fence_latency_us.p99,
                    r.fences_lost,
                    r.errors,
                    r.isolation
                        .as_ref()
                        .map_or(String::new(), |i| format!(", isolation {:.2}", i.ratio)),
                ));
                if r.failed() {
                    out.failed.push(format!(
                        "{name}: {} errors, {} fences lost {:?}",
                        r.errors, r.fences_lost, r.error_samples
                    ));
                }
                loadgen_record(&stamp, case, &r)
            }
            Err(e) => {
                progress(&format!(
                    "[{}/{}] {name}: cannot run: {e}",
                    i + 1,
                    selected.len()
                ));
                out.failed.push(format!("{name}: {e}"));
                let mut r = Record {
                    kind: "loadgen".into(),
                    case: name,
                    stamp: stamp.clone(),
                    params: BTreeMap::from([("error".into(), json!(e))]),
                    metrics: BTreeMap::from([("errors".into(), 1.0)]),
                    peers: Vec::new(),
                };
                r.params.insert("desktops".into(), json!(case.desktops));
                r
            }
        };
        sink(std::slice::from_ref(&record))?;
        out.records.push(record);
    }
    if opts.micro {
        let cfg = if opts.quick {
            reactor_bench::Config {
                iterations: 500,
                rounds: 1,
            }
        } else {
            reactor_bench::Config {
                iterations: 5000,
                rounds: 2,
            }
        };
        progress(&format!(
            "reactor micro-benchmark: {} iterations x {} rounds",
            cfg.iterations, cfg.rounds
        ));
        let r = reactor_bench::run(cfg, |_| {}).map_err(|e| format!("bench reactor: {e}"))?;
        let recs = reactor_records(&stamp, &r);
        sink(&recs)?;
        out.records.extend(recs);
        let (rounds, commands) = if opts.quick {
            (1, 20_000)
        } else {
            (2, 100_000)
        };
        progress(&format!(
            "device micro-benchmark: {commands} commands x {rounds} rounds"
        ));
        let r = device_bench::run(rounds, commands, |_| {})
            .map_err(|e| format!("bench device: {e}"))?;
        let recs = device_records(&stamp, &r);
        sink(&recs)?;
        out.records.extend(recs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matrix_covers_every_desktop_count_mode_and_stress_scenario() {
        let all = cases(false);
        for n in [1, 4, 16, 64] {
            for mode in ["2d/global", "3d/ring", "3d/global"] {
                let name = format!("{mode}/{n}/none");
                assert!(all.iter().any(|c| c.name() == name), "{name} missing");
            }
        }
        for s in Scenario::ALL.into_iter().filter(|s| *s != Scenario::None) {
            assert!(all.iter().any(|c| c.name() == format!("3d/ring/16/{s}")));
        }
    }

    #[test]
    fn stress_runs_only_on_3d_ring_and_2d_never_claims_ring_fences() {
        for c in cases(false) {
            if c.scenario != Scenario::None {
                assert_eq!(
                    (c.profile, c.fence_mode),
                    (Profile::ThreeD, FenceMode::Ring)
                );
            }
            if c.profile == Profile::TwoD {
                assert_eq!(c.fence_mode, FenceMode::Global);
            }
        }
    }

    #[cfg(feature = "virgl")]
    #[test]
    fn virgl_heavy_context_runs_with_a_worker_per_desktop_and_with_one_worker() {
        for all in [cases(false), cases(true)] {
            let names: Vec<String> = all.iter().map(Case::name).collect();
            for w in [8, 1] {
                let name = format!("3d/ring/8/heavy-context/virgl-w{w}");
                assert!(names.contains(&name), "{name} missing");
            }
        }
        let c = cases(true)
            .into_iter()
            .find(|c| c.virgl_workers == Some(1))
            .unwrap();
        let plan = c.plan(Duration::from_secs(1));
        assert_eq!(plan.render_workers, Some(1));
        assert_eq!(plan.render, loadgen::scenario::RenderMode::Real);
    }

    #[test]
    fn quick_is_a_subset_of_full_with_unique_names() {
        let full: Vec<String> = cases(false).iter().map(Case::name).collect();
        let quick: Vec<String> = cases(true).iter().map(Case::name).collect();
        assert!(quick.len() < full.len());
        assert!(quick.iter().all(|q| full.contains(q)));
        let mut dedup = full.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), full.len());
    }

    #[test]
    fn isolation_ratio_is_a_metric_only_when_the_report_has_one() {
        let mut r = Report {
            profile: "3d".into(),
            fence_mode: "ring".into(),
            fences_lost: 1,
            fence_latency_us: loadgen::report::Percentiles {
                p50: 7,
                p99: 9,
                p999: 11,
                max: 12,
            },
            ..Report::default()
        };
        let m = report_metrics(&r);
        assert_eq!(m["fence_latency_p99_us"], 9.0);
        assert_eq!(m["fences_lost"], 1.0);
        assert!(!m.contains_key("isolation_ratio"));
        r.isolation = Some(loadgen::report::Isolation {
            others_p99_us_before: 100,
            others_p99_us_during: 105,
            ratio: 1.05,
        });
        assert_eq!(report_metrics(&r)["isolation_ratio"], 1.05);
    }
}
