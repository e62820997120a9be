//! The daemon's flags reach the device it serves.

#[path = "daemon_support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// `GET /metrics` from the daemon's `--metrics` address, retried until it
/// answers (it binds before it listens on its socket, but be patient).
fn scrape(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            return text;
        }
        assert!(Instant::now() < deadline, "no metrics at {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
