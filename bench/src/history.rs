//! The history file: one JSON object per line, one line per measured case,
//! appended by `bench run` and `bench peers`, read by `bench dashboard`.
//!
//! Every line carries where it was measured (revision, date, machine) so a
//! reader compares like with like. Metrics are a flat name → number map so
//! the dashboard and the gate treat every kind of case alike.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Default history file, relative to the workspace root.
pub const DEFAULT_PATH: &str = "bench/history.jsonl";

/// The machine a line was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| cpu_model(&s))
            .unwrap_or_else(|| "unknown".into());
        Machine { cores, kernel, cpu }
    }
}

/// The first `model name` of a /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "model name").then(|| v.trim().to_owned())
    })
}

/// Where and when lines are measured: shared by every line of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub rev: String,
    pub date: String,
    pub machine: Machine,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            rev: git_rev(),
            date: iso_date(std::time::SystemTime::now()),
            machine: Machine::this(),
        }
    }
}

/// `git rev-parse --short HEAD` of the current directory, or "unknown".
pub fn git_rev() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn iso_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One row of a peer comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub peer: String,
    pub profile: String,
    /// Measured, or `false` when the peer could not run this profile.
    pub ran: bool,
    pub frames_per_s: f64,
    pub fence_p50_us: u64,
    pub fence_p99_us: u64,
    pub frames_delivered: u64,
    /// frames/s of this peer / frames/s of gpu-reactor (same profile).
    pub frames_ratio: Option<f64>,
    /// p99 fence latency of this peer / gpu-reactor's (same profile).
    pub p99_ratio: Option<f64>,
    /// What the peer could not do, one phrase each.
    pub could_not: Vec<String>,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `loadgen`, `reactor`, `device` or `peers`.
    pub kind: String,
    /// Stable name of the case, e.g. `3d/ring/16/none`.
    pub case: String,
    #[serde(flatten)]
    pub stamp: Stamp,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerRow>,
}

/// Appends `records` to `path` (created with its directory if missing).
pub fn append(path: &Path, records: &[Record]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads every well-formed line of `path`; returns them and how many lines
/// were skipped as malformed.
pub fn read(path: &Path) -> Result<(Vec<Record>, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(parse(&text))
}

pub fn parse(text: &str) -> (Vec<Record>, usize) {
    let mut bad = 0;
    let records = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).map_err(|_| bad += 1).ok())
        .collect();
    (records, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(case: &str, v: f64) -> Record {
        Record {
            kind: "loadgen".into(),
            case: case.into(),
            stamp: Stamp {
                rev: "abc1234".into(),
                date: "2026-11-26T10:00:00Z".into(),
                machine: Machine {
                    cores: 2,
                    kernel: "6.1".into(),
                    cpu: "x".into(),
                },
            },
            params: BTreeMap::new(),
            metrics: BTreeMap::from([("frames_per_s".into(), v)]),
            peers: Vec::new(),
        }
    }

    #[test]
    fn appended_records_read_back_in_order_and_bad_lines_are_counted() {
        let dir = std::env::temp_dir().join(format!("bench-history-{}", std::process::id()));
        let path = dir.join("sub/history.jsonl");
        let _ = std::fs::remove_dir_all(&dir);
        append(&path, &[record("a", 1.0)]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        append(&path, &[record("b", 2.0)]).unwrap();
        let (rs, bad) = read(&path).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(rs, vec![record("a", 1.0), record("b", 2.0)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_line_has_rev_date_and_machine_at_top_level() {
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&record("a", 1.0)).unwrap()).unwrap();
        assert_eq!(v["rev"], "abc1234");
        assert_eq!(v["machine"]["cores"], 2);
        assert_eq!(v["metrics"]["frames_per_s"], 1.0);
    }

    #[test]
    fn iso_date_of_known_instants() {
        let t = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(iso_date(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(iso_date(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(iso_date(t(1_796_212_861)), "2026-12-02T12:01:01Z");
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info =
            "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("flags: x"), None);
    }
}
