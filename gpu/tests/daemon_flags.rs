//! The daemon's flags reach the device it serves.

#[path = "daemon_support.rs"]
mod support;

use support::*;

#[test]
fn max_guest_memory_is_the_devices_budget() {
    let dir = work_dir("max-guest-memory");
    // A free port, let go for the daemon to take.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start(&dir, &["--max-guest-memory", "64M", "--metrics", &addr]);
    let text = scrape(&addr);
    assert!(
        text.contains("gpu_reactor_guest_memory_limit_bytes 67108864\n"),
        "{text}\n{}",
        d.log_text()
    );
    assert!(
        text.contains("gpu_reactor_guest_memory_bytes 0\n"),
        "{text}"
    );
    assert!(d.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}
