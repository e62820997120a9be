//! `bench run` appends one history line per case, with where and when it
//! was measured and the metrics of the contract.

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

#[test]
fn one_case_appends_one_line_with_revision_machine_params_and_metrics() {
    let dir = std::env::temp_dir().join(format!("bench-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hist = dir.join("h/history.jsonl");
    for _ in 0..2 {
        let out = Command::new(BENCH)
            .args([
                "run",
                "--quick",
                "--no-micro",
                "--duration",
                "1",
                "--filter",
                "3d/ring/1/none",
                "--history",
            ])
            .arg(&hist)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&hist).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "appended, not overwritten: {text}");
    let l = &lines[1];
    assert_eq!(l["kind"], "loadgen");
    assert_eq!(l["case"], "3d/ring/1/none");
    assert!(l["rev"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(l["date"].as_str().is_some_and(|d| d.ends_with('Z')));
    assert!(l["machine"]["cores"].as_u64().is_some_and(|c| c > 0));
    assert!(l["machine"]["cpu"].is_string() && l["machine"]["kernel"].is_string());
    assert_eq!(l["params"]["desktops"], 1);
    assert_eq!(l["params"]["fence_mode"], "ring");
    let m = &l["metrics"];
    for k in [
        "commands_per_s",
        "frames_per_s",
        "fence_latency_p50_us",
        "fence_latency_p99_us",
        "fence_latency_p999_us",
        "fence_overhead_p99_us",
        "fences_lost",
        "errors",
    ] {
        assert!(m[k].is_number(), "metric {k} missing: {m}");
    }
    assert!(m["frames_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(m["errors"], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
