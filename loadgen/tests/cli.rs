//! The command line: bad input gets a clear message and a non-zero exit.

use std::process::Command;

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flag_is_refused() {
    let (code, _, err) = loadgen(&["--desktopz", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("--desktopz"), "{err}");
}

#[test]
fn bad_scenario_lists_the_valid_ones() {
    let (code, _, err) = loadgen(&["--scenario", "meltdown"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unmap-storm") && err.contains("queue-full"),
        "{err}"
    );
}

#[test]
fn bad_duration_is_refused() {
    let (code, _, err) = loadgen(&["--duration", "ten seconds"]);
    assert_eq!(code, 2);
    assert!(err.contains("duration"), "{err}");
}

#[test]
fn short_run_prints_json_with_the_contract_fields() {
    let (code, out, err) = loadgen(&["--desktops", "2", "--duration", "500ms", "--json", "-"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "backend",
        "desktops",
        "profile",
        "fence_mode",
        "scenario",
        "duration_s",
        "commands",
        "commands_per_s",
        "frames",
        "frames_per_s",
        "fences",
        "fences_lost",
        "errors",
        "fence_latency_us",
        "fence_overhead_us",
        "max_stall_ms",
        "frames_delivered",
        "pixels_bad",
        "per_desktop",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {out}");
    }
    assert_eq!(v["desktops"], 2);
    assert!(v["fences"].as_u64().unwrap() > 0);
    assert_eq!(v["per_desktop"].as_array().unwrap().len(), 2);
}

#[test]
fn missing_backend_socket_is_a_clear_error_not_a_hang() {
    let (code, _, err) = loadgen(&["--socket", "/nonexistent/gpu.sock", "--duration", "1s"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no backend listening at /nonexistent/gpu.sock"),
        "{err}"
    );
}

#[test]
fn direct_and_socket_cannot_be_combined() {
    let (code, _, err) = loadgen(&["--socket", "/tmp/x", "--direct"]);
    assert_eq!(code, 2);
    assert!(err.contains("--direct"), "{err}");
}

#[test]
fn unknown_memory_message_is_refused_with_the_choices() {
    let (code, _, err) = loadgen(&["--mem-table", "mmap-it"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("set-mem-table") && err.contains("add-mem-reg"),
        "{err}"
    );
}

#[test]
fn without_reply_ack_and_with_set_mem_table_a_run_completes() {
    let (code, out, err) = loadgen(&[
        "--no-reply-ack",
        "--mem-table",
        "set-mem-table",
        "--desktops",
        "1",
        "--duration",
        "300ms",
        "--json",
        "-",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["fences_lost"], 0);
    assert!(v["fences"].as_u64().unwrap() > 0);
}
