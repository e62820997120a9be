//! `bench dashboard` renders in a real browser: headless Chromium loads the
//! page from disk, and its DOM has the charts (svg) and tables the history
//! calls for. The screenshot is kept as `target/dashboard.png`.
//!
//! Chromium is Debian's `chromium`, installed by `tests/run`; when it is
//! missing this test fails and says how to install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bench-dashboard-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The cargo target directory this test binary was built into.
fn target_dir() -> PathBuf {
    // CARGO_BIN_EXE_bench is <target>/<profile>/bench.
    Path::new(BENCH)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

fn chromium() -> PathBuf {
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return c.into();
        }
    }
    panic!(
        "chromium is not installed: run tests/run, or `sudo apt-get install -y chromium` (Debian)"
    );
}

/// Runs chromium headless on `url` with `extra` flags, with a fresh profile
/// and a deadline; returns stdout.
fn headless(url: &str, extra: &[String]) -> String {
    let profile = scratch(&format!("profile-{}", extra.len()));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--window-size=1280,2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap()
}

/// A history of two runs: loadgen cases (one stressed), micro-benchmarks and
/// a peer table.
fn history() -> String {
    let mut s = String::new();
    for (rev, date, fps) in [
        ("aaaaaaa", "2026-11-24T10:00:00Z", 900.0),
        ("bbbbbbb", "2026-11-25T10:00:00Z", 950.0),
    ] {
        let stamp = format!(
            r#""rev":"{rev}","date":"{date}","machine":{{"cores":2,"kernel":"6.1","cpu":"Test CPU"}}"#
        );
        for case in ["3d/ring/16/none", "2d/global/16/none"] {
            s += &format!(
                r#"{{"kind":"loadgen","case":"{case}",{stamp},"params":{{"desktops":16}},"metrics":{{"commands_per_s":{},"frames_per_s":{fps},"fence_latency_p50_us":2900,"fence_latency_p99_us":7000,"fences_lost":0,"errors":0}}}}"#,
                fps * 4.0
            );
            s.push('\n');
        }
        s += &format!(
            r#"{{"kind":"loadgen","case":"3d/ring/16/stalled-context",{stamp},"metrics":{{"frames_per_s":{fps},"fence_latency_p50_us":3000,"fence_latency_p99_us":8000,"isolation_ratio":1.02}}}}"#
        );
        s.push('\n');
        s += &format!(
            r#"{{"kind":"reactor","case":"reactor/same_shard_eventfd",{stamp},"metrics":{{"reactor_p50_us":1.3,"reactor_p99_us":3.0,"io_uring_raw_p50_us":1.1}}}}"#
        );
        s.push('\n');
        s += &format!(
            r#"{{"kind":"device","case":"device/16ctx/2shards",{stamp},"metrics":{{"commands_per_s":250000}}}}"#
        );
        s.push('\n');
    }
    s += r#"{"kind":"peers","case":"peers","rev":"bbbbbbb","date":"2026-11-25T11:00:00Z","machine":{"cores":2,"kernel":"6.1","cpu":"Test CPU"},"params":{"desktops":16},"metrics":{},"peers":[{"peer":"gpu-reactor/2d","profile":"2d","ran":true,"frames_per_s":960.0,"fence_p50_us":900,"fence_p99_us":1800,"frames_delivered":4800,"frames_ratio":1.0,"p99_ratio":1.0,"could_not":[]},{"peer":"vhost-device-gpu (null)","profile":"2d","ran":true,"frames_per_s":960.0,"fence_p50_us":80,"fence_p99_us":140,"frames_delivered":0,"frames_ratio":1.0,"p99_ratio":0.08,"could_not":["2d: delivers no pixels"]}]}"#;
    s.push('\n');
    s
}

#[test]
fn dashboard_renders_in_headless_chromium_with_charts_and_tables() {
    let dir = scratch("page");
    let hist = dir.join("history.jsonl");
    std::fs::write(&hist, history()).unwrap();
    let out = dir.join("out");
    let st = Command::new(BENCH)
        .args(["dashboard", "--history"])
        .arg(&hist)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let page = out.join("index.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no scripts, no stylesheets or images fetched.
    for needle in ["<script", "<link", "src=", "<img"] {
        assert!(!html.contains(needle), "the page must not contain {needle}");
    }
    let url = format!("file://{}", page.display());

    let dom = headless(&url, &["--dump-dom".to_string()]);
    // 3 loadgen cases x 3 charts + the isolation bars + 2 micro charts.
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= 12, "expected at least 12 svg charts, found {svgs}");
    assert!(
        dom.matches("<polyline").count() >= 9,
        "history lines are drawn"
    );
    for id in ["peers", "isolation", "latest"] {
        assert!(
            dom.contains(&format!("<table id=\"{id}\"")),
            "table {id} missing from the DOM"
        );
    }
    assert!(dom.contains("vhost-device-gpu (null)"));
    assert!(dom.contains("2d: delivers no pixels"));
    assert!(dom.contains("3d/ring/16/stalled-context"));

    let png = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    headless(&url, &[format!("--screenshot={}", png.display())]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    let _ = std::fs::remove_dir_all(&dir);
}
