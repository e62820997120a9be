//! Render workers (feature `virgl`): the whole device in this process, its
//! virglrenderers in `gpu-reactor --render-worker` children. Placement,
//! resources shared across workers (replicas) and the rule for what cannot be, and losing a worker (kill -9, or
//! stopped past the watchdog) without losing anyone else's work; a worker
//! that dies at start is started again with backoff, and one that never
//! comes up (before or under a seccomp filter) is refused with the cause.
#![cfg(feature = "virgl")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu::protocol::wire::{
    VIRTIO_GPU_CAPSET_VIRGL2, VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID, VIRTIO_GPU_RESP_ERR_UNSPEC,
};
use gpu::protocol::*;
use gpu::render::virgl::{
    clear_stream, copy_stream, WorkerExe, WorkerOptions, WorkerPoolFactory, WorkerStats,
    VIRGL_FORMAT_R8G8B8A8_UNORM,
};
use gpu::render::RendererFactory;
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{GpuDriver, Queue};

const T: Duration = Duration::from_secs(20);
const SIZE: u32 = 64;
const TARGET_2D: u32 = 2;
const BIND: u32 = 1 << 1 | 1 << 3;

const DAEMON: &str = env!("CARGO_BIN_EXE_gpu-reactor");

fn start(workers: usize, watchdog: Duration) -> (DirectBackend, GpuDriver, Arc<WorkerStats>) {
    start_with(workers, watchdog, WorkerExe::at(DAEMON))
}

fn start_with(
    workers: usize,
    watchdog: Duration,
    exe: WorkerExe,
) -> (DirectBackend, GpuDriver, Arc<WorkerStats>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("gpu=info")
        .try_init();
    let mut o = WorkerOptions::new(workers, exe);
    o.watchdog = watchdog;
    let factory = WorkerPoolFactory::new(o).expect("a render worker starts headless");
    let stats = factory.stats();
    let (b, d) = DirectBackend::start(DirectOptions {
        renderer: Arc::new(factory),
        ..DirectOptions::default()
    })
    .unwrap();
    (b, d, stats)
}

fn call(d: &mut GpuDriver, req: Request) -> Response {
    d.call(Queue::Control, &req, T).unwrap().response.unwrap().1
}

fn create_ctx(d: &mut GpuDriver, ctx: u32) -> Response {
    call(
        d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"desktop".to_vec(),
            capset_id: VIRTIO_GPU_CAPSET_VIRGL2 as u8,
        }))
        .with_ctx(ctx),
    )
}

fn create_target(d: &mut GpuDriver, id: u32) {
    let r = call(
        d,
        Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
            resource_id: ResourceId(id),
            target: TARGET_2D,
            format: VIRGL_FORMAT_R8G8B8A8_UNORM,
            bind: BIND,
            width: SIZE,
            height: SIZE,
            depth: 1,
            array_size: 1,
            last_level: 0,
            nr_samples: 0,
            flags: 0,
        })),
    );
    assert_eq!(r, Response::OkNodata);
}

fn attach(d: &mut GpuDriver, ctx: u32, id: u32) -> Response {
    call(
        d,
        Request::new(GpuCommand::CtxAttachResource(ResourceRef {
            resource_id: ResourceId(id),
        }))
        .with_ctx(ctx),
    )
}

/// Clears `res` on `ctx` with a fence; the fenced answer.
fn clear(d: &mut GpuDriver, ctx: u32, res: u32, rgba: [f32; 4], fence: u64) -> Response {
    call(
        d,
        Request::new(GpuCommand::Submit3d(Submit3d {
            data: clear_stream(res, rgba),
        }))
        .with_ctx(ctx)
        .with_ring(0)
        .with_fence(fence),
    )
}

/// A fresh render target `res`, attached to `ctx` and cleared there to
/// `rgba` (fenced `fence`): each step answered OK.
fn draw_new_target(d: &mut GpuDriver, ctx: u32, res: u32, rgba: [f32; 4], fence: u64) {
    create_target(d, res);
    assert_eq!(attach(d, ctx, res), Response::OkNodata);
    assert_eq!(clear(d, ctx, res, rgba, fence), Response::OkNodata);
}

/// Flushes `res` to scanout 0 and returns what the display shows.
fn flush_and_look(b: &DirectBackend, d: &mut GpuDriver, res: u32) -> Vec<u8> {
    let rect = Rect::new(0, 0, SIZE, SIZE);
    let r = call(
        d,
        Request::new(GpuCommand::SetScanout(SetScanout {
            rect,
            scanout_id: ScanoutId(0),
            resource_id: ResourceId(res),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let r = call(
        d,
        Request::new(GpuCommand::ResourceFlush(ResourceFlush {
            rect,
            resource_id: ResourceId(res),
        }))
        .with_fence(1000 + u64::from(res)),
    );
    assert_eq!(r, Response::OkNodata);
    b.display.snapshot().frames[&0].clone()
}

/// A worker executable (a shell script) that counts its starts in `dir`
/// and dies at start (`die`: a shell command) on the starts numbered in
/// `dies` (counting from 1: a factory's capset probe is start 1), and is
/// the real worker otherwise. Also the directory, to remove at the end.
fn flaky_worker(
    name: &str,
    dies: std::ops::RangeInclusive<u32>,
    die: &str,
) -> (WorkerExe, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "gpu-virgl-flaky-worker-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (first, last) = (dies.start(), dies.end());
    let script = dir.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             n=$(( $(cat '{starts}' 2>/dev/null || echo 0) + 1 ))\n\
             echo \"$n\" > '{starts}'\n\
             if [ \"$n\" -ge {first} ] && [ \"$n\" -le {last} ]; then {die}; fi\n\
             exec '{DAEMON}' \"$@\"\n",
            starts = dir.join("starts").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Started by the real binary's launcher: the script counts workers.
    (WorkerExe::at(script).launched_by(DAEMON), dir)
}

/// Dies the way a worker under `--seccomp kill` dies on a refused call.
const DIE_BY_SIGSYS: &str = "kill -s SYS $$";

/// The slot whose worker hosts `ctx`.
fn slot_of(stats: &WorkerStats, ctx: u32) -> usize {
    stats
        .slots()
        .iter()
        .position(|s| s.contexts.contains(&ctx))
        .unwrap_or_else(|| panic!("context {ctx} is on no worker: {:?}", stats.slots()))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn virgl_worker_renders_shares_guest_memory_and_reads_back_through_shared_memory() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    draw_new_target(&mut d, 1, 5, [0.4, 0.0, 1.0, 1.0], 7);
    // TRANSFER_FROM_HOST_3D: the worker writes the guest's own pages (the
    // guest RAM memfd it was given), nothing copied through the socket.
    let len = SIZE * SIZE * 4;
    let backing = d.ram().alloc(u64::from(len), 4096).unwrap();
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
            resource_id: ResourceId(5),
            entries: vec![MemEntry {
                addr: backing.0,
                length: len,
            }],
        })),
    );
    assert_eq!(r, Response::OkNodata);
    let r = call(
        &mut d,
        Request::new(GpuCommand::TransferFromHost3d(Transfer3d {
            box3d: Box3d {
                x: 0,
                y: 0,
                z: 0,
                w: SIZE,
                h: SIZE,
                d: 1,
            },
            offset: 0,
            resource_id: ResourceId(5),
            level: 0,
            stride: SIZE * 4,
            layer_stride: 0,
        }))
        .with_ctx(1)
        .with_fence(9),
    );
    assert_eq!(r, Response::OkNodata);
    let mut guest = vec![0u8; len as usize];
    vm_memory::Bytes::read_slice(d.ram().memory(), &mut guest, backing).unwrap();
    assert!(guest.chunks(4).all(|px| px == [102, 0, 255, 255]));
    // RESOURCE_FLUSH: pixels through the worker's read-back area.
    let frame = flush_and_look(&b, &mut d, 5);
    assert!(frame.chunks(4).all(|px| px == [102, 0, 255, 255]));
    assert_eq!(stats.losses(), 0);
}

#[test]
fn virgl_workers_place_each_context_on_the_least_loaded_worker() {
    let (_b, mut d, stats) = start(2, Duration::from_secs(10));
    for ctx in 1..=4 {
        assert_eq!(create_ctx(&mut d, ctx), Response::OkNodata);
    }
    let slots = stats.slots();
    assert_eq!(slots.len(), 2);
    assert!(slots.iter().all(|s| s.contexts.len() == 2), "{slots:?}");
    assert_ne!(slots[0].pid, slots[1].pid, "one process per worker");
    // A context going frees room where it was: the next one goes there.
    let freed = slot_of(&stats, 3);
    let r = call(&mut d, Request::new(GpuCommand::CtxDestroy).with_ctx(3));
    assert_eq!(r, Response::OkNodata);
    assert_eq!(create_ctx(&mut d, 5), Response::OkNodata);
    assert_eq!(slot_of(&stats, 5), freed);
    // Every placed context renders on its worker.
    for ctx in [1, 2, 4, 5] {
        let res = 10 + ctx;
        create_target(&mut d, res);
        assert_eq!(attach(&mut d, ctx, res), Response::OkNodata);
        assert_eq!(
            clear(&mut d, ctx, res, [0.0, 1.0, 0.0, 1.0], u64::from(ctx)),
            Response::OkNodata
        );
    }
}

/// Copies `src` into `dst` on `ctx` (a compositor using a client's
/// buffer); the fenced answer.
fn copy(d: &mut GpuDriver, ctx: u32, dst: u32, src: u32, fence: u64) -> Response {
    call(
        d,
        Request::new(GpuCommand::Submit3d(Submit3d {
            data: copy_stream(dst, src, SIZE, SIZE),
        }))
        .with_ctx(ctx)
        .with_ring(0)
        .with_fence(fence),
    )
}

/// weston's case: a compositor (context 2, on its own worker, rendering
/// already) uses the buffer of a client (context 1, on the other worker).
/// It gets a replica on its worker, brought up to date before its next
/// submit whenever the client has drawn since: what it copies out is the
/// client's latest frame, each time.
#[test]
fn virgl_resource_of_another_worker_is_replicated_there_up_to_date() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    assert_eq!(create_ctx(&mut d, 2), Response::OkNodata);
    assert_ne!(slot_of(&stats, 1), slot_of(&stats, 2));
    // The client's buffer, placed on its worker by its first attach.
    create_target(&mut d, 5);
    assert_eq!(attach(&mut d, 1, 5), Response::OkNodata);
    // The compositor has rendered on its own worker: it stays there.
    draw_new_target(&mut d, 2, 6, [0.0, 0.0, 1.0, 1.0], 1);
    assert_eq!(attach(&mut d, 2, 5), Response::OkNodata);
    assert_eq!(stats.context_moves(), 0);
    let mut fence = 10;
    for (rgba, px) in [
        ([1.0, 0.0, 0.0, 1.0], [255, 0, 0, 255]),
        ([0.0, 1.0, 0.0, 1.0], [0, 255, 0, 255]),
    ] {
        fence += 2;
        assert_eq!(clear(&mut d, 1, 5, rgba, fence), Response::OkNodata);
        assert_eq!(copy(&mut d, 2, 6, 5, fence + 1), Response::OkNodata);
        let frame = flush_and_look(&b, &mut d, 6);
        assert!(
            frame.chunks(4).all(|p| p == px),
            "the compositor's copy shows {:?}, the client drew {px:?}",
            &frame[..4]
        );
    }
    // Nothing drawn since: nothing copied again.
    let copies = stats.replica_copies();
    assert_eq!(copies, 2);
    assert_eq!(copy(&mut d, 2, 6, 5, 20), Response::OkNodata);
    assert_eq!(stats.replica_copies(), copies);
    assert_eq!(stats.cross_worker_refusals(), 0);
    // The client's own view never changed hands.
    let frame = flush_and_look(&b, &mut d, 5);
    assert!(frame.chunks(4).all(|p| p == [0, 255, 0, 255]));
}

/// What cannot be replicated (here a mipmapped texture) is still refused on
/// another worker, and its owner keeps rendering it.
#[test]
fn virgl_resource_of_another_worker_that_cannot_be_replicated_is_refused() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    assert_eq!(create_ctx(&mut d, 2), Response::OkNodata);
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
            resource_id: ResourceId(7),
            target: TARGET_2D,
            format: VIRGL_FORMAT_R8G8B8A8_UNORM,
            bind: BIND,
            width: SIZE,
            height: SIZE,
            depth: 1,
            array_size: 1,
            last_level: 2,
            nr_samples: 0,
            flags: 0,
        })),
    );
    assert_eq!(r, Response::OkNodata);
    assert_eq!(attach(&mut d, 1, 7), Response::OkNodata);
    draw_new_target(&mut d, 2, 6, [0.0, 0.0, 1.0, 1.0], 1);
    assert_eq!(
        attach(&mut d, 2, 7),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)
    );
    assert_eq!(stats.cross_worker_refusals(), 1);
    // Its owner keeps rendering (a resource of its own: flushes take
    // single-level images).
    draw_new_target(&mut d, 1, 5, [1.0, 0.0, 0.0, 1.0], 3);
    let frame = flush_and_look(&b, &mut d, 5);
    assert!(frame.chunks(4).all(|px| px == [255, 0, 0, 255]));
}

#[test]
fn virgl_fresh_context_moves_to_the_worker_of_the_resource_it_attaches() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    assert_eq!(create_ctx(&mut d, 2), Response::OkNodata);
    let first = slot_of(&stats, 1);
    assert_ne!(slot_of(&stats, 2), first);
    draw_new_target(&mut d, 1, 5, [1.0, 0.0, 0.0, 1.0], 1);
    // Context 2 has done nothing yet: sharing resource 5 moves it to
    // context 1's worker, where it can render into it.
    assert_eq!(attach(&mut d, 2, 5), Response::OkNodata);
    assert_eq!(stats.context_moves(), 1);
    assert_eq!(slot_of(&stats, 2), first);
    assert_eq!(stats.slots()[1 - first].contexts, Vec::<u32>::new());
    assert_eq!(
        clear(&mut d, 2, 5, [0.0, 1.0, 0.0, 1.0], 1),
        Response::OkNodata
    );
    let frame = flush_and_look(&b, &mut d, 5);
    assert!(frame.chunks(4).all(|px| px == [0, 255, 0, 255]));
    assert_eq!(stats.cross_worker_refusals(), 0);
}

#[test]
fn virgl_worker_killed_loses_only_its_contexts_and_is_restarted() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    for ctx in [1, 2] {
        assert_eq!(create_ctx(&mut d, ctx), Response::OkNodata);
        create_target(&mut d, 10 + ctx);
        assert_eq!(attach(&mut d, ctx, 10 + ctx), Response::OkNodata);
        assert_eq!(
            clear(&mut d, ctx, 10 + ctx, [0.0, 0.0, 1.0, 1.0], 1),
            Response::OkNodata
        );
    }
    let victim = slot_of(&stats, 1);
    let pid = stats.slots()[victim].pid.unwrap();
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_until("the worker to be restarted", || stats.restarts() == 1);
    assert_eq!(stats.losses(), 1);
    assert_eq!(stats.contexts_lost(), 1);
    let slots = stats.slots();
    assert!(slots[victim].pid.is_some_and(|p| p != pid), "{slots:?}");
    // The lost context's commands fail; its fenced ones are still answered.
    assert_eq!(
        clear(&mut d, 1, 11, [0.0, 1.0, 0.0, 1.0], 2),
        Response::Err(VIRTIO_GPU_RESP_ERR_UNSPEC)
    );
    // The other worker's context never noticed.
    assert_eq!(
        clear(&mut d, 2, 12, [0.0, 1.0, 0.0, 1.0], 2),
        Response::OkNodata
    );
    // A new context goes to the fresh worker (it has none) and renders.
    assert_eq!(create_ctx(&mut d, 3), Response::OkNodata);
    assert_eq!(slot_of(&stats, 3), victim);
    draw_new_target(&mut d, 3, 13, [0.0, 1.0, 0.0, 1.0], 1);
    // The loss is in the device's Prometheus text.
    let text = b.device.metrics().unwrap();
    for line in [
        "gpu_reactor_render_workers 2",
        "gpu_reactor_render_worker_losses_total 1",
        "gpu_reactor_render_worker_restarts_total 1",
        "gpu_reactor_render_contexts_lost_total 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[test]
fn virgl_worker_stopped_past_the_watchdog_is_killed_and_its_command_fails() {
    let (_b, mut d, stats) = start(2, Duration::from_secs(1));
    for ctx in [1, 2] {
        assert_eq!(create_ctx(&mut d, ctx), Response::OkNodata);
        create_target(&mut d, 10 + ctx);
        assert_eq!(attach(&mut d, ctx, 10 + ctx), Response::OkNodata);
    }
    let victim = slot_of(&stats, 1);
    let pid = stats.slots()[victim].pid.unwrap();
    // A worker that stops answering (stopped, not dead).
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    // Its command is answered, with an error, once the watchdog fires.
    assert_eq!(
        clear(&mut d, 1, 11, [0.0, 1.0, 0.0, 1.0], 1),
        Response::Err(VIRTIO_GPU_RESP_ERR_UNSPEC)
    );
    wait_until("the worker to be restarted", || stats.restarts() == 1);
    assert_eq!(stats.contexts_lost(), 1);
    assert_eq!(
        clear(&mut d, 2, 12, [0.0, 1.0, 0.0, 1.0], 1),
        Response::OkNodata
    );
}

#[test]
fn virgl_worker_dying_at_start_is_started_again_with_backoff_and_its_slot_then_serves() {
    // One slot; the probe (start 1) is fine, the pool's first worker and
    // the next two retries die at start (as under a filter refusing a
    // call), the third retry (start 5) comes up.
    let (exe, dir) = flaky_worker("retry", 2..=4, DIE_BY_SIGSYS);
    let began = Instant::now();
    let (b, mut d, stats) = start_with(1, Duration::from_secs(10), exe);
    wait_until("three failed starts and a worker in the slot", || {
        stats.start_failures() == 3 && stats.slots()[0].pid.is_some()
    });
    // Backoff 100 + 200 + 400 ms between the four starts.
    assert!(
        began.elapsed() >= Duration::from_millis(700),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(stats.restarts(), 3);
    assert_eq!(stats.losses(), 3);
    // Contexts on the slot work: the slot is not left empty.
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    draw_new_target(&mut d, 1, 5, [0.0, 1.0, 0.0, 1.0], 1);
    let frame = flush_and_look(&b, &mut d, 5);
    assert!(frame.chunks(4).all(|px| px == [0, 255, 0, 255]));
    let text = b.device.metrics().unwrap();
    for line in [
        "gpu_reactor_render_workers 1",
        "gpu_reactor_render_worker_start_failures_total 3",
        "gpu_reactor_render_worker_restarts_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    drop((b, d));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn virgl_worker_dying_soon_after_ready_is_started_again_with_backoff_not_at_once() {
    // One slot; the pool's first worker and the next two come up (Ready)
    // and are killed 2 s later, before serving anything: a crash loop.
    // The fourth (start 5) lives.
    let die = format!("'{DAEMON}' \"$@\" & sleep 2; kill -s KILL $!; exit 1");
    let (exe, dir) = flaky_worker("ready-loop", 2..=4, &die);
    let (b, mut d, stats) = start_with(1, Duration::from_secs(10), exe);
    // How long the slot stays empty after each death: restarted at once,
    // it never is; backed off, 100, 200, 400 ms.
    wait_until("the pool's slot", || !stats.slots().is_empty());
    let mut gaps = Vec::new();
    let mut empty_since = None;
    let until = Instant::now() + Duration::from_secs(40);
    while gaps.len() < 3 {
        assert!(Instant::now() < until, "gaps so far: {gaps:?}");
        match (stats.slots()[0].pid, empty_since) {
            (None, None) => empty_since = Some(Instant::now()),
            (Some(_), Some(t)) => {
                gaps.push(t.elapsed());
                empty_since = None;
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (gap, backoff) in gaps.iter().zip([100, 200, 400]) {
        assert!(
            *gap >= Duration::from_millis(backoff * 9 / 10),
            "gaps {gaps:?}: backoff {backoff} ms not kept"
        );
    }
    assert_eq!(stats.losses(), 3);
    // The one that lives serves.
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    draw_new_target(&mut d, 1, 5, [0.0, 1.0, 0.0, 1.0], 1);
    drop((b, d));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn virgl_workers_that_never_come_up_are_refused_with_a_clear_error() {
    let err = WorkerPoolFactory::new(WorkerOptions::new(
        1,
        WorkerExe::at("/bin/false").launched_by(DAEMON),
    ))
    .expect_err("/bin/false is no render worker");
    assert!(
        err.contains("died before it was ready: exited with status 1"),
        "{err}"
    );
}

#[test]
fn virgl_check_under_filter_fails_naming_sigsys_when_a_worker_no_longer_starts() {
    let real = WorkerPoolFactory::new(WorkerOptions::new(1, WorkerExe::at(DAEMON))).unwrap();
    assert_eq!(real.check_under_filter(), Ok(()));
    // Fine for the probe before the filter (start 1), dead by SIGSYS after.
    let (exe, dir) = flaky_worker("check", 2..=u32::MAX, DIE_BY_SIGSYS);
    let f = WorkerPoolFactory::new(WorkerOptions::new(1, exe)).unwrap();
    let err = f
        .check_under_filter()
        .expect_err("the worker dies at start");
    for says in [
        "no render worker can start under the seccomp filter",
        "killed by signal",
        "(SIGSYS: a system call the seccomp filter refuses)",
        "--seccomp log",
        "type=1326",
    ] {
        assert!(err.contains(says), "no `{says}` in: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 17, finding 9: a resource the guest never wrote reads back as
/// zeros, never as what the host's heap held before (here: textures of the
/// same size cleared to a pattern and destroyed just before, whose memory
/// llvmpipe would hand out again if it did not clear new textures).
#[test]
fn virgl_resource_never_written_reads_back_zeros_not_old_host_memory() {
    let (_b, mut d, _stats) = start(1, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    let mut fence = 0;
    for id in 100..108 {
        create_target(&mut d, id);
        assert_eq!(attach(&mut d, 1, id), Response::OkNodata);
        fence += 1;
        assert_eq!(
            clear(&mut d, 1, id, [0.2, 0.4, 0.6, 0.8], fence),
            Response::OkNodata
        );
        let r = call(
            &mut d,
            Request::new(GpuCommand::ResourceUnref(ResourceRef {
                resource_id: ResourceId(id),
            })),
        );
        assert_eq!(r, Response::OkNodata);
    }
    let len = SIZE * SIZE * 4;
    for id in 200..208 {
        create_target(&mut d, id);
        assert_eq!(attach(&mut d, 1, id), Response::OkNodata);
        let backing = d.ram().alloc(u64::from(len), 4096).unwrap();
        // What the guest's pages held before: not what the read-back leaves.
        vm_memory::Bytes::write_slice(d.ram().memory(), &vec![0xa5; len as usize], backing)
            .unwrap();
        let r = call(
            &mut d,
            Request::new(GpuCommand::ResourceAttachBacking(ResourceAttachBacking {
                resource_id: ResourceId(id),
                entries: vec![MemEntry {
                    addr: backing.0,
                    length: len,
                }],
            })),
        );
        assert_eq!(r, Response::OkNodata);
        fence += 1;
        let r = call(
            &mut d,
            Request::new(GpuCommand::TransferFromHost3d(Transfer3d {
                box3d: Box3d {
                    x: 0,
                    y: 0,
                    z: 0,
                    w: SIZE,
                    h: SIZE,
                    d: 1,
                },
                offset: 0,
                resource_id: ResourceId(id),
                level: 0,
                stride: SIZE * 4,
                layer_stride: 0,
            }))
            .with_ctx(1)
            .with_fence(fence),
        );
        assert_eq!(r, Response::OkNodata);
        let mut guest = vec![0u8; len as usize];
        vm_memory::Bytes::read_slice(d.ram().memory(), &mut guest, backing).unwrap();
        let nonzero = guest.iter().filter(|&&b| b != 0).count();
        assert_eq!(
            nonzero,
            0,
            "resource {id} never written reads back {nonzero} non-zero bytes, first {:?}",
            &guest[..8]
        );
    }
}

/// Replicas are host memory the guest's budget does not see (its charge is
/// for the resource once): past 256 MiB of them, a resource on another
/// worker is refused as before replicas existed, and a destroyed one's
/// room can be used again.
#[test]
fn virgl_replicas_past_their_bound_are_refused_until_one_goes() {
    let (_b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    assert_eq!(create_ctx(&mut d, 2), Response::OkNodata);
    draw_new_target(&mut d, 2, 6, [0.0, 0.0, 1.0, 1.0], 1);
    // 36 MB each: 7 fit in 256 MiB, the 8th does not.
    const SIDE: u32 = 3000;
    for id in 10..18 {
        let r = call(
            &mut d,
            Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
                resource_id: ResourceId(id),
                target: TARGET_2D,
                format: VIRGL_FORMAT_R8G8B8A8_UNORM,
                bind: BIND,
                width: SIDE,
                height: SIDE,
                depth: 1,
                array_size: 1,
                last_level: 0,
                nr_samples: 0,
                flags: 0,
            })),
        );
        assert_eq!(r, Response::OkNodata);
        assert_eq!(attach(&mut d, 1, id), Response::OkNodata);
    }
    for id in 10..17 {
        assert_eq!(attach(&mut d, 2, id), Response::OkNodata, "replica {id}");
    }
    assert_eq!(
        attach(&mut d, 2, 17),
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_RESOURCE_ID)
    );
    assert_eq!(stats.cross_worker_refusals(), 1);
    let r = call(
        &mut d,
        Request::new(GpuCommand::ResourceUnref(ResourceRef {
            resource_id: ResourceId(10),
        })),
    );
    assert_eq!(r, Response::OkNodata);
    assert_eq!(attach(&mut d, 2, 17), Response::OkNodata);
}

/// `/proc/<pid>/stat`'s state and parent, or `None` once it is gone.
fn proc_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": the name may hold spaces, so after its ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.next()?.parse().ok()?))
}

/// Gone, or a zombie no one has reaped yet (the launcher is our child
/// and never waited for: the daemon may not wait under its filter).
fn ended(pid: u32) -> bool {
    proc_state(pid).is_none_or(|(s, _)| s == 'Z')
}

/// The device process starts no worker itself (under its filter it may
/// not fork, execve or make a ring): the launcher does, before the filter,
/// and every worker is its child. A launcher that is gone makes every
/// later start fail with the reason, and nothing hangs.
#[test]
fn virgl_workers_are_the_launchers_children_and_without_it_starts_fail_cleanly() {
    let (_b, mut d, stats) = start(1, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    draw_new_target(&mut d, 1, 5, [0.0, 1.0, 0.0, 1.0], 1);
    let launcher = stats.launcher_pid();
    let worker = stats.slots()[0].pid.expect("a worker serves slot 0");
    assert_eq!(proc_state(launcher).map(|s| s.1), Some(std::process::id()));
    assert_eq!(proc_state(worker).map(|s| s.1), Some(launcher));
    // SAFETY: a signal to the launcher, our own child.
    assert_eq!(unsafe { libc::kill(launcher as i32, libc::SIGKILL) }, 0);
    // Its worker dies with it (PR_SET_PDEATHSIG); the slot's restarts
    // fail, each one at once.
    wait_until("the worker's end", || ended(worker));
    wait_until("a failed restart", || stats.start_failures() >= 1);
    assert_ne!(
        clear(&mut d, 1, 5, [1.0, 0.0, 0.0, 1.0], 2),
        Response::OkNodata
    );
    assert_ne!(create_ctx(&mut d, 2), Response::OkNodata);
    assert_eq!(stats.slots()[0].pid, None);
}

/// Dropping the device (the daemon stopping) closes the launcher's socket:
/// the launcher ends, and every worker with it.
#[test]
fn virgl_launcher_and_its_workers_end_with_the_device() {
    let (b, mut d, stats) = start(2, Duration::from_secs(10));
    assert_eq!(create_ctx(&mut d, 1), Response::OkNodata);
    let launcher = stats.launcher_pid();
    let workers: Vec<u32> = stats.slots().iter().filter_map(|s| s.pid).collect();
    assert_eq!(workers.len(), 2);
    assert!(!ended(launcher));
    drop((b, d));
    wait_until("the launcher's end", || ended(launcher));
    for w in workers {
        wait_until("a worker's end", || ended(w));
    }
}
