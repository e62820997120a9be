//! The gate catches a slowed HEAD (five rounds: with fewer, the t-interval
//! on a loaded CI machine can be too wide to call even a 5x regression): `bench ab` with a HEAD whose fences take
//! five times longer (modelled GPU time 10 ms instead of 2 ms, injected
//! through the command line) exits 1 and names the latency metrics. The
//! two sides are bench's own in-process loadgen, so no build is needed.

use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

#[test]
fn a_head_with_five_times_the_fence_latency_fails_the_gate() {
    let out = Command::new(BENCH)
        .args([
            "ab",
            "--baseline",
            "base",
            "--rounds",
            "5",
            "--duration",
            "1",
        ])
        .arg(format!("--baseline-cmd={BENCH} loadgen"))
        .arg(format!("--head-cmd={BENCH} loadgen --gpu-cost-us 10000"))
        .output()
        .unwrap();
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
