//! The gate's verdicts, on canned reports (`bench loadgen --fake-latency-us`)
//! so they do not depend on how loaded the machine is: a HEAD whose fences
//! take five times longer fails the gate and names the latency metrics; an
//! unchanged HEAD passes. (Measuring real builds is `bench ab` itself.)

use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn gate(base_us: u64, head_us: u64) -> Output {
    Command::new(BENCH)
        .args([
            "ab",
            "--baseline",
            "base",
            "--rounds",
            "3",
            "--duration",
            "1",
        ])
        .arg(format!(
            "--baseline-cmd={BENCH} loadgen --fake-latency-us {base_us}"
        ))
        .arg(format!(
            "--head-cmd={BENCH} loadgen --fake-latency-us {head_us}"
        ))
        .output()
        .unwrap()
}

#[test]
fn a_head_with_five_times_the_fence_latency_fails_the_gate() {
    let out = gate(2000, 10000);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("3d/ring/16/none") && l.contains("fence_latency_p50_us"))
        .unwrap_or_else(|| panic!("no latency row: {stdout}"));
    assert!(line.ends_with("REGRESSION"), "{line}");
    assert!(stderr.contains("regression: "), "{stderr}");
}

#[test]
fn an_unchanged_head_passes_the_gate() {
    let out = gate(2000, 2000);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("REGRESSION"), "{stdout}");
    assert!(stdout.contains("fence_latency_p99_us"), "{stdout}");
}
