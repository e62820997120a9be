//! End-to-end tests live in `tests/tests/`; this holds what several of
//! them share.

pub mod guest3d;
pub mod qemu;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The daemon cargo builds next to the running test
/// (`target/<profile>/gpu-reactor`); built with cargo when it is absent or
/// older than the test binary.
pub fn gpu_reactor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("gpu-reactor");
    let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let stale = match (modified(&bin), modified(&exe)) {
        (Some(b), Some(t)) => b < t,
        _ => true,
    };
    if stale {
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(option_env!("CARGO").unwrap_or("cargo")));
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "gpu", "--bin", "gpu-reactor"])
            // The virgl tests (and the 3D guest) need the virgl renderer.
            .args(
                cfg!(feature = "virgl")
                    .then_some(["--features", "virgl"])
                    .into_iter()
                    .flatten(),
            )
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        println!("building gpu-reactor: {cmd:?}");
        let status = cmd.status().expect("cannot run cargo to build gpu-reactor");
        assert!(
            status.success(),
            "cargo build -p gpu --bin gpu-reactor failed: {status}"
        );
    }
    assert!(
        bin.exists(),
        "no gpu-reactor at {} after building it",
        bin.display()
    );
    bin
}
