//! A hostile guest against the device's memory (issue 17, findings 1 and 3):
//! sizes that overflow or ask for absurd amounts are refused with an error
//! response, never a panic or an abort (these tests build in debug, where
//! an unchecked multiplication panics), and every class of host memory a
//! guest can make the device hold is charged to its budget
//! (`DeviceConfig::memory_limit`, the daemon's `--max-guest-memory`).

use std::time::Duration;

use gpu::protocol::wire::*;
use gpu::protocol::*;
use gpu::render::sim::SIM_CAPSET_ID;
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{GpuDriver, Queue};

const T: Duration = Duration::from_secs(10);

fn call(d: &mut GpuDriver, req: Request) -> Response {
    let c = d.call(Queue::Control, &req, T).unwrap();
    c.response.unwrap().1
}

fn ctx_create(d: &mut GpuDriver, ctx: u32) {
    let r = call(
        d,
        Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"hostile".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(ctx),
    );
    assert_eq!(r, Response::OkNodata);
}

#[allow(clippy::too_many_arguments)]
fn create_3d(
    ctx: u32,
    id: u32,
    target: u32,
    width: u32,
    height: u32,
    depth: u32,
    array_size: u32,
) -> Request {
    Request::new(GpuCommand::ResourceCreate3d(ResourceCreate3d {
        resource_id: ResourceId(id),
        target,
        format: 2,
        bind: 2,
        width,
        height,
        depth,
        array_size,
        last_level: 0,
        nr_samples: 0,
        flags: 0,
    }))
    .with_ctx(ctx)
}

fn is_refusal(r: &Response) -> bool {
    matches!(
        r,
        Response::Err(VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER | VIRTIO_GPU_RESP_ERR_OUT_OF_MEMORY)
    )
}

#[test]
fn create_3d_sizes_that_overflow_or_reserve_gigabytes_are_refused() {
    let (_b, mut d) = DirectBackend::start(DirectOptions::default()).unwrap();
    ctx_create(&mut d, 1);
    for (w, h, depth, layers) in [
        // 65536^3 * 16384 * 4 bytes: overflows u64.
        (65536, 65536, 65536, 16384),
        // 16384^2 * 16 * 2^30 * 4 = 2^64: wrapped to a charge of 0.
        (16384, 16384, 16, 1 << 30),
    ] {
        let r = call(&mut d, create_3d(1, 7, 2, w, h, depth, layers));
        assert!(is_refusal(&r), "{w}x{h}x{depth}[{layers}]: {r:?}");
    }
    // The device is still serving, and id 7 was never taken.
    assert_eq!(
        call(&mut d, create_3d(1, 7, 2, 64, 64, 1, 1)),
        Response::OkNodata
    );
}
