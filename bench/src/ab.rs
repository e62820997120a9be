//! `bench ab --baseline REV`: the regression gate. REV is built in a git
//! worktree beside HEAD (its own target directory, kept for the next run);
//! the working tree's `loadgen` is built as usual. Both binaries then run a
//! few key cases interleaved (round r: REV, HEAD for each case), so drift of
//! the machine hits both alike; only ratios from this one run are used.
//!
//! Per case and metric: the paired per-round ratios HEAD/REV, their
//! geometric mean and a 95% t-interval on the log ratios. A metric regresses
//! when the whole interval lies beyond the threshold in the bad direction
//! (lower-is-better metrics above 1 + t, higher-is-better below 1/(1 + t)).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The cases the gate runs: (desktops, profile, fence mode).
pub const CASES: [(u32, &str, &str); 3] = [
    (16, "3d", "ring"),
    (16, "3d", "global"),
    (4, "2d", "global"),
];

/// (metric, JSON pointer into loadgen's report, higher is better).
pub const METRICS: [(&str, &str, bool); 6] = [
    ("commands_per_s", "/commands_per_s", true),
    ("frames_per_s", "/frames_per_s", true),
    ("fence_latency_p50_us", "/fence_latency_us/p50", false),
    ("fence_latency_p99_us", "/fence_latency_us/p99", false),
    ("fence_overhead_p50_us", "/fence_overhead_us/p50", false),
    ("fence_overhead_p99_us", "/fence_overhead_us/p99", false),
];

/// Two-sided 97.5% quantile of Student's t for 1..=30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// The geometric-mean ratio and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub ratio: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Paired ratios `head[i] / base[i]` (pairs with a zero side are skipped).
pub fn interval(base: &[f64], head: &[f64]) -> Option<Interval> {
    let logs: Vec<f64> = base
        .iter()
        .zip(head)
        .filter(|(b, h)| **b > 0.0 && **h > 0.0)
        .map(|(b, h)| (h / b).ln())
        .collect();
    let n = logs.len();
    if n == 0 {
        return None;
    }
    let mean = logs.iter().sum::<f64>() / n as f64;
    if n == 1 {
        let r = mean.exp();
        return Some(Interval {
            ratio: r,
            low: 0.0,
            high: f64::INFINITY,
            n,
        });
    }
    let var = logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = T975[(n - 2).min(T975.len() - 1)] * (var / n as f64).sqrt();
    Some(Interval {
        ratio: mean.exp(),
        low: (mean - half).exp(),
        high: (mean + half).exp(),
        n,
    })
}

/// True when the whole interval is worse than `threshold` (e.g. 0.1 = 10%).
pub fn regressed(iv: &Interval, higher_is_better: bool, threshold: f64) -> bool {
    if higher_is_better {
        iv.high < 1.0 / (1.0 + threshold)
    } else {
        iv.low > 1.0 + threshold
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub baseline: String,
    pub rounds: usize,
    pub duration_s: f64,
    pub threshold: f64,
    /// Commands to run instead of building (program + leading args); tests
    /// use them to compare two known commands without a build.
    pub baseline_cmd: Option<Vec<String>>,
    pub head_cmd: Option<Vec<String>>,
}

fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn cargo_build(
    dir: &Path,
    target: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(dir)
        .args(["build", "--release", "-p", "loadgen", "--bin", "loadgen"]);
    if let Some(t) = target {
        c.env("CARGO_TARGET_DIR", t);
    }
    progress(&format!("building loadgen in {}", dir.display()));
    let st = c.status().map_err(|e| format!("cargo: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("building loadgen in {} failed", dir.display()))
    }
}

/// Builds REV (in a worktree) and the working tree; returns the two loadgen
/// commands (baseline, head) and REV's short hash.
fn build(
    opts: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, Vec<String>, String), String> {
    let root = PathBuf::from(git(Path::new("."), &["rev-parse", "--show-toplevel"])?);
    let sha = git(
        &root,
        &[
            "rev-parse",
            "--verify",
            &format!("{}^{{commit}}", opts.baseline),
        ],
    )?;
    let short = git(&root, &["rev-parse", "--short", &sha])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let base_dir = target.join("bench-ab").join(&short);
    let tree = base_dir.join("src");
    if !tree.join("Cargo.toml").exists() {
        let _ = git(&root, &["worktree", "prune"]);
        std::fs::create_dir_all(&base_dir).map_err(|e| format!("{}: {e}", base_dir.display()))?;
        progress(&format!("git worktree add {} {short}", tree.display()));
        git(
            &root,
            &["worktree", "add", "--detach", &tree.to_string_lossy(), &sha],
        )?;
    }
    let base_target = base_dir.join("target");
    cargo_build(&tree, Some(&base_target), progress)?;
    cargo_build(&root, Some(&target), progress)?;
    let bin = |t: &Path| vec![t.join("release/loadgen").to_string_lossy().into_owned()];
    Ok((bin(&base_target), bin(&target), short))
}

/// One loadgen run; its JSON report.
fn run_once(cmd: &[String], case: (u32, &str, &str), duration_s: f64) -> Result<Value, String> {
    let (desktops, profile, fence) = case;
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .args([
            "--desktops",
            &desktops.to_string(),
            "--profile",
            profile,
            "--fence-mode",
            fence,
            "--duration",
            &format!("{duration_s}s"),
            "--json",
            "-",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .ok_or_else(|| {
            format!(
                "{} gave no JSON report: {}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// One line of the result.
#[derive(Debug)]
pub struct Row {
    pub case: String,
    pub metric: &'static str,
    pub interval: Option<Interval>,
    pub regressed: bool,
}

/// Runs the gate; Ok(rows). The caller fails when any row regressed.
pub fn run(opts: &Options, mut progress: impl FnMut(&str)) -> Result<Vec<Row>, String> {
    let (base, head, label) = match (&opts.baseline_cmd, &opts.head_cmd) {
        (Some(b), Some(h)) if !b.is_empty() && !h.is_empty() => {
            (b.clone(), h.clone(), opts.baseline.clone())
        }
        _ => build(opts, &mut progress)?,
    };
    // samples[case][metric] = (base values, head values)
    let mut samples = vec![vec![(Vec::new(), Vec::new()); METRICS.len()]; CASES.len()];
    for round in 0..opts.rounds {
        for (ci, case) in CASES.iter().enumerate() {
            for (side, cmd) in [(0, &base), (1, &head)] {
                let v = run_once(cmd, *case, opts.duration_s)?;
                for (mi, (_, ptr, _)) in METRICS.iter().enumerate() {
                    let x = v.pointer(ptr).and_then(Value::as_f64).unwrap_or(0.0);
                    let s = &mut samples[ci][mi];
                    if side == 0 {
                        s.0.push(x)
                    } else {
                        s.1.push(x)
                    }
                }
            }
            progress(&format!(
                "round {}/{}: {}d/{}/{} done ({label} then HEAD)",
                round + 1,
                opts.rounds,
                case.0,
                case.1,
                case.2
            ));
        }
    }
    let mut rows = Vec::new();
    for (ci, case) in CASES.iter().enumerate() {
        for (mi, (metric, _, higher)) in METRICS.iter().enumerate() {
            let (b, h) = &samples[ci][mi];
            let iv = interval(b, h);
            rows.push(Row {
                case: format!("{}/{}/{}/none", case.1, case.2, case.0),
                metric,
                interval: iv,
                regressed: iv.is_some_and(|iv| regressed(&iv, *higher, opts.threshold)),
            });
        }
    }
    Ok(rows)
}

pub fn render_table(rows: &[Row], baseline: &str) -> String {
    let mut s = format!(
        "{:<22} {:<24} {:>10} {:>22}  verdict\n",
        "case",
        "metric",
        format!("HEAD/{baseline}"),
        "95% interval"
    );
    for r in rows {
        let (ratio, ci) = match r.interval {
            Some(iv) => (
                format!("{:.3}", iv.ratio),
                format!("[{:.3}, {:.3}]", iv.low, iv.high),
            ),
            None => ("-".into(), "(no samples)".into()),
        };
        s.push_str(&format!(
            "{:<22} {:<24} {ratio:>10} {ci:>22}  {}\n",
            r.case,
            r.metric,
            if r.regressed { "REGRESSION" } else { "ok" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_give_ratio_one_and_no_regression() {
        let iv = interval(&[100.0, 110.0, 90.0], &[100.0, 110.0, 90.0]).unwrap();
        assert!((iv.ratio - 1.0).abs() < 1e-12);
        assert!(!regressed(&iv, false, 0.1) && !regressed(&iv, true, 0.1));
    }

    #[test]
    fn a_consistent_doubling_of_latency_is_a_regression() {
        let iv = interval(&[100.0, 120.0, 90.0, 110.0], &[205.0, 236.0, 181.0, 225.0]).unwrap();
        assert!(iv.low > 1.8 && iv.high < 2.2, "{iv:?}");
        assert!(regressed(&iv, false, 0.1));
        // The same ratios on a higher-is-better metric are an improvement.
        assert!(!regressed(&iv, true, 0.1));
    }

    #[test]
    fn a_noisy_change_whose_interval_reaches_the_threshold_is_not_a_regression() {
        let iv = interval(&[100.0, 100.0, 100.0], &[150.0, 95.0, 130.0]).unwrap();
        assert!(iv.ratio > 1.1);
        assert!(!regressed(&iv, false, 0.1), "{iv:?}");
    }

    #[test]
    fn one_round_never_claims_confidence() {
        let iv = interval(&[100.0], &[300.0]).unwrap();
        assert!(!regressed(&iv, false, 0.1));
        assert!(interval(&[0.0], &[1.0]).is_none());
    }

    #[test]
    fn throughput_falling_by_half_is_a_regression() {
        let iv = interval(&[1000.0, 1010.0, 990.0], &[500.0, 490.0, 505.0]).unwrap();
        assert!(regressed(&iv, true, 0.1));
    }
}
