//! `bench`: benchmarks of gpu-reactor.
//!
//! Subcommands (one module each):
//! * `reactor` — wake-up latency of our reactor vs tokio-uring, epoll and raw
//!   io_uring ([`reactor_bench`]).
//! * `device` — commands/s through the device for 1/4/16 contexts on 1 and 2
//!   shards ([`device_bench`]).
//!
//! To add a subcommand: add a variant to [`Command`] with its own `Args`
//! struct, a module, and an arm in [`Command::run`].

mod device_bench;
mod reactor_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "gpu-reactor benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wake-up latency percentiles (same-shard eventfd, cross-shard doorbell,
    /// 1 ms timerfd lateness) for our reactor, tokio-uring, epoll and raw io_uring.
    Reactor(ReactorArgs),
    /// Commands per second through the device, 1/4/16 contexts on 1 and 2 shards.
    Device(DeviceArgs),
}

impl Command {
    fn run(self) -> Result<(), String> {
        match self {
            Command::Reactor(args) => run_reactor(args),
            Command::Device(args) => run_device(args),
        }
    }
}

/// Where to write the JSON report.
#[derive(Debug, Clone)]
enum JsonOut {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for JsonOut {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Err("empty path (use - for stdout)".into()),
            "-" => Ok(JsonOut::Stdout),
            path => Ok(JsonOut::File(path.into())),
        }
    }
}

#[derive(Debug, Args)]
struct ReactorArgs {
    /// Write ONE JSON object to PATH, or to stdout with `-`, instead of the table.
    #[arg(long, value_name = "PATH|-")]
    json: Option<JsonOut>,
    /// Recorded samples per system, case and round (the timer case is capped at 2000).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// Interleaved rounds whose histograms are merged per system.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

fn run_reactor(args: ReactorArgs) -> Result<(), String> {
    let cfg = reactor_bench::Config {
        iterations: args.iterations as usize,
        rounds: args.rounds as usize,
    };
    // Open the output first so a bad path fails before minutes of measuring.
    let mut out: Option<Box<dyn std::io::Write>> = match &args.json {
        None => None,
        Some(JsonOut::Stdout) => Some(Box::new(std::io::stdout().lock())),
        Some(JsonOut::File(path)) => Some(Box::new(
            std::fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?,
        )),
    };
    let report = reactor_bench::run(cfg, |line| eprintln!("bench reactor: {line}"))
        .map_err(|e| e.to_string())?;
    match &mut out {
        None => print!("{}", reactor_bench::render_table(&report)),
        Some(out) => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| format!("serialising the report: {e}"))?;
            json.push('\n');
            out.write_all(json.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing the JSON report: {e}"))?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
struct DeviceArgs {
    /// Write ONE JSON object to PATH, or to stdout with `-`, instead of the table.
    #[arg(long, value_name = "PATH|-")]
    json: Option<JsonOut>,
    /// Commands per case and round.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1000..))]
    commands: u64,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

fn run_device(args: DeviceArgs) -> Result<(), String> {
    let report = device_bench::run(args.rounds as usize, args.commands, |l| {
        eprintln!("bench device: {l}")
    })?;
    match &args.json {
        None => print!("{}", device_bench::render_table(&report)),
        Some(out) => {
            let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
            match out {
                JsonOut::Stdout => print!("{json}"),
                JsonOut::File(p) => {
                    std::fs::write(p, json).map_err(|e| format!("{}: {e}", p.display()))?
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
