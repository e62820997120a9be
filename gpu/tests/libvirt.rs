//! gpu-reactor as libvirt runs it (qemu_vhost_user.c, qemu_vhost_user_gpu.c):
//! `--print-capabilities` read as JSON, then the daemon started with
//! `--fd=N` on one end of a socket pair whose other end goes to QEMU, plus
//! `--virgl` for `<acceleration accel3d='yes'/>` and `--render-node=PATH`
//! when the capabilities list `render-node`.

#[path = "daemon_support.rs"]
mod support;

use std::fs;
use std::process::Command;

use support::*;

/// `--print-capabilities`: exit 0, one line on stdout.
fn capabilities() -> String {
    let out = Command::new(DAEMON)
        .arg("--print-capabilities")
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    String::from_utf8(out.stdout).unwrap()
}

/// The daemon run to its end with `args`, expected to refuse them: exit 1,
/// its stderr returned.
fn refused(args: &[&str]) -> String {
    let out = Command::new(DAEMON).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    err
}

/// QEMU's contrib backend lists the same two (`vhost-user-gpu -c`); libvirt
/// picks a backend with `virgl` for accel3d and one with `render-node` for
/// a rendernode.
#[cfg(feature = "virgl")]
#[test]
fn print_capabilities_in_a_virgl_build_lists_render_node_and_virgl() {
    assert_eq!(
        capabilities(),
        "{\"type\":\"gpu\",\"features\":[\"render-node\",\"virgl\"]}\n"
    );
}

/// Without the virgl renderer the daemon cannot do 3D: libvirt must not
/// pick it for accel3d.
#[cfg(not(feature = "virgl"))]
#[test]
fn print_capabilities_in_the_default_build_lists_no_features() {
    assert_eq!(capabilities(), "{\"type\":\"gpu\",\"features\":[]}\n");
}

#[test]
fn a_render_node_that_does_not_exist_is_refused_naming_the_path() {
    let dir = work_dir("bad-render-node");
    let sock = dir.join("gpu.sock");
    let err = refused(&[
        "-s",
        sock.to_str().unwrap(),
        "--render-node=/nonexistent/dri/renderD128",
    ]);
    assert!(
        err.contains("--render-node /nonexistent/dri/renderD128: No such file or directory"),
        "{err}"
    );
    assert!(!sock.exists(), "it listened before refusing");
    let _ = fs::remove_dir_all(&dir);
}

/// libvirt passes `--render-node=PATH` for 2D domains too once the
/// capabilities list `render-node`: any renderer accepts it.
#[test]
fn an_existing_render_node_is_accepted_in_both_spellings_and_logged_as_unused() {
    for (i, args) in [
        &["--render-node=/dev/null"][..],
        &["--render-node", "/dev/null"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let dir = work_dir(&format!("render-node-{i}"));
        let mut d = Daemon::start(&dir, args);
        let log = d.log_text();
        assert!(
            log.contains("render node not used") && log.contains("render_node=/dev/null"),
            "{args:?}:\n{log}"
        );
        let status = d.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "{args:?}: {status}\n{}",
            d.log_text()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn virgl_flag_with_another_renderer_is_refused() {
    for (args, other) in [
        (&["--virgl", "--renderer", "2d"], "2d"),
        (&["--renderer", "sim", "--virgl"], "sim"),
    ] {
        let err = refused(&[&["-s", "/nonexistent/never-bound.sock"][..], args].concat());
        assert!(
            err.contains(&format!(
                "--virgl means --renderer virgl, not --renderer {other}"
            )),
            "{args:?}: {err}"
        );
    }
}

#[cfg(not(feature = "virgl"))]
#[test]
fn virgl_flag_is_refused_in_a_build_without_the_feature() {
    let err = refused(&["-s", "/nonexistent/never-bound.sock", "--virgl"]);
    assert!(
        err.contains("--virgl: renderer virgl is not in this build (cargo feature `virgl`)"),
        "{err}"
    );
}

/// The process ids whose parent is `pid`.
#[cfg(feature = "virgl")]
fn children(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest.split(' ').nth(1) == Some(pid.to_string().as_str()) {
            kids.extend(
                entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok()),
            );
        }
    }
    kids
}

/// `<acceleration accel3d='yes' rendernode='/dev/null'/>`: libvirt's
/// `--fd=9 --virgl --render-node=/dev/null` (any existing path; it is not
/// opened), under the default seccomp filter with render workers. A VMM
/// session over the socket pair renders real virgl frames, pixels checked;
/// the render workers do not inherit the VMM's socket; SIGTERM stops it
/// with 0 while the VMM is still connected.
#[cfg(feature = "virgl")]
#[test]
fn virgl_libvirt_style_fd_session_renders_real_frames_and_stops_on_sigterm() {
    use loadgen::scenario::{Plan, Profile, RenderMode, RendererKind, Scenario};
    use std::os::unix::net::UnixStream;
    const FD: i32 = 9;
    let dir = work_dir("virgl-fd");
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut d = Daemon::start_on_fd(&dir, theirs, FD, &["--virgl", "--render-node=/dev/null"]);
    let p = Plan {
        renderer: RendererKind::Virgl,
        render: RenderMode::Real,
        width: 320,
        height: 200,
        ..plan(Profile::ThreeD, Scenario::None)
    };
    let (vmm, r) = run_over_fd(&d, ours, &p);
    assert_clean(&r, &d);
    assert!(r.frames_delivered > 0, "no frames shown: {}", r.summary());
    let log = d.log_text();
    for says in [
        "renderer=\"virgl\"",
        "render node not used",
        "seccomp filter installed",
    ] {
        assert!(log.contains(says), "no {says:?} in the log:\n{log}");
    }

    let vmm_socket = fs::read_link(format!("/proc/{}/fd/{FD}", d.pid())).unwrap();
    let workers = children(d.pid());
    assert!(!workers.is_empty(), "no render workers:\n{log}");
    for w in workers {
        let theirs = fs::read_link(format!("/proc/{w}/fd/{FD}")).ok();
        assert_ne!(
            theirs.as_ref(),
            Some(&vmm_socket),
            "render worker {w} holds the VMM's socket"
        );
    }

    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log_text());
    assert!(d.log_text().contains("SIGTERM: stopping"));
    drop(vmm);
    let _ = fs::remove_dir_all(&dir);
}
