//! `bench device`: commands per second through the device, for 1, 4 and 16
//! contexts on 1 and 2 shards, measured in one run (interleaved rounds), with
//! the 2-shard/1-shard ratio per context count.
//!
//! The guest side keeps the 1024-entry control queue full of unfenced
//! SUBMIT_3D commands (sim renderer, zero GPU time) spread over the
//! contexts, so what is measured is intake, routing, execution and
//! completion, not modelled GPU time.

use std::time::{Duration, Instant};

use gpu::protocol::{CtxCreate, GpuCommand, Request, Submit3d};
use gpu::render::sim::{sim_submit, SIM_CAPSET_ID};
use loadgen::direct::{DirectBackend, DirectOptions};
use loadgen::driver::{GpuDriver, GpuDriverError, Queue};
use serde::Serialize;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub contexts: u32,
    pub shards: usize,
    pub commands: u64,
    pub seconds: f64,
    pub commands_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub bench: &'static str,
    pub rounds: usize,
    pub cases: Vec<Case>,
    /// commands/s with 2 shards divided by commands/s with 1, per context count.
    pub ratio_2_shards_vs_1: Vec<(u32, f64)>,
}

fn setup(shards: usize, contexts: u32) -> Result<(DirectBackend, GpuDriver), GpuDriverError> {
    let (b, mut d) = DirectBackend::start(DirectOptions {
        shards,
        ..DirectOptions::default()
    })?;
    for ctx in 1..=contexts {
        let req = Request::new(GpuCommand::CtxCreate(CtxCreate {
            debug_name: b"bench".to_vec(),
            capset_id: SIM_CAPSET_ID as u8,
        }))
        .with_ctx(ctx);
        d.call(Queue::Control, &req, TIMEOUT)?;
    }
    Ok((b, d))
}

/// Pushes `total` commands through, keeping the queue full.
fn measure(d: &mut GpuDriver, contexts: u32, total: u64) -> Result<Duration, GpuDriverError> {
    let reqs: Vec<Request> = (1..=contexts)
        .map(|ctx| {
            Request::new(GpuCommand::Submit3d(Submit3d {
                data: sim_submit(0, false),
            }))
            .with_ctx(ctx)
        })
        .collect();
    let start = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < total {
        while sent < total && d.queue(Queue::Control).num_free() > 0 {
            d.submit(
                Queue::Control,
                &reqs[(sent % u64::from(contexts)) as usize],
                sent,
            )?;
            sent += 1;
        }
        d.kick(Queue::Control)?;
        d.wait_call(Duration::from_millis(5))?;
        d.reap()?;
        done += d.take_completions().len() as u64;
        if start.elapsed() > TIMEOUT * 6 {
            return Err(GpuDriverError::Timeout);
        }
    }
    Ok(start.elapsed())
}

/// Runs the matrix: `rounds` interleaved rounds of `commands` each.
pub fn run(rounds: usize, commands: u64, mut progress: impl FnMut(&str)) -> Result<Report, String> {
    let contexts = [1u32, 4, 16];
    let shards = [1usize, 2];
    let mut cases = Vec::new();
    for &c in &contexts {
        for &s in &shards {
            cases.push(Case {
                contexts: c,
                shards: s,
                commands: 0,
                seconds: 0.0,
                commands_per_s: 0.0,
            });
        }
    }
    for round in 0..rounds {
        progress(&format!("round {}/{rounds}", round + 1));
        for case in &mut cases {
            let (b, mut d) = setup(case.shards, case.contexts).map_err(|e| e.to_string())?;
            // Warm-up, discarded.
            measure(&mut d, case.contexts, commands / 10).map_err(|e| e.to_string())?;
            let t = measure(&mut d, case.contexts, commands).map_err(|e| e.to_string())?;
            case.commands += commands;
            case.seconds += t.as_secs_f64();
            drop(d);
            drop(b);
        }
    }
    for case in &mut cases {
        case.commands_per_s = case.commands as f64 / case.seconds.max(1e-9);
    }
    let ratio = contexts
        .iter()
        .map(|&c| {
            let rate = |s| {
                cases
                    .iter()
                    .find(|k| k.contexts == c && k.shards == s)
                    .map_or(0.0, |k| k.commands_per_s)
            };
            (c, rate(2) / rate(1).max(1e-9))
        })
        .collect();
    Ok(Report {
        bench: "device",
        rounds,
        cases,
        ratio_2_shards_vs_1: ratio,
    })
}

pub fn render_table(r: &Report) -> String {
    let mut s = String::from("contexts  shards  commands/s\n");
    for c in &r.cases {
        s.push_str(&format!(
            "{:>8}  {:>6}  {:>10.0}\n",
            c.contexts, c.shards, c.commands_per_s
        ));
    }
    for (c, ratio) in &r.ratio_2_shards_vs_1 {
        s.push_str(&format!(
            "{c:>2} contexts: 2 shards / 1 shard = {ratio:.2}\n"
        ));
    }
    s
}
