//! The memory assertion: resident anonymous memory of the process.
//!
//! Everything a guest can make the daemon hold is charged to its memory
//! budget (`DeviceConfig::memory_limit`, gpu/src/device/budget.rs), so
//! memory a guest causes is bounded by that budget, not by what it sends.
//! The fuzz targets run their device with a small budget ([`BUDGET`]) and
//! check, after every batch of commands (and every vhost-user input):
//!
//! - within one input, anonymous RSS grew by at most [`BUDGET`] plus
//!   [`PER_COMMAND`] for each command sent so far plus [`INPUT_SLACK`]
//!   (the command's own bytes, its response, allocator rounding);
//! - over the whole run, anonymous RSS stays under the first input's
//!   level plus [`BUDGET`] plus [`RUN_SLACK`] (libFuzzer's own corpus,
//!   allocator fragmentation): memory left behind by one input (a leak
//!   past a reset, a cache keyed by guest ids) adds up over millions of
//!   inputs and trips this.
//!
//! Anonymous only (`resident - shared` of `/proc/self/statm`): guest RAM
//! is a memfd the guest fills as it likes, and mapped files are not the
//! daemon's to bound.

/// The device's memory budget in the fuzz targets.
pub const BUDGET: u64 = 32 << 20;
/// What one command may add beyond what is charged.
pub const PER_COMMAND: u64 = 64 << 10;
/// Allowance per input.
pub const INPUT_SLACK: u64 = 16 << 20;
/// Allowance over a run.
pub const RUN_SLACK: u64 = 128 << 20;

/// Resident anonymous bytes of this process.
pub fn anon_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let mut f = statm
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let (_size, resident, shared) = (f.next(), f.next(), f.next());
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    resident.unwrap_or(0).saturating_sub(shared.unwrap_or(0)) * page
}

/// One input's memory check.
pub struct MemoryBound {
    start: u64,
    run_floor: u64,
}

impl MemoryBound {
    /// Starts an input; `run_floor` is the level the first input started at.
    pub fn start(run_floor: u64) -> MemoryBound {
        MemoryBound {
            start: anon_bytes(),
            run_floor,
        }
    }

    /// Panics (a libFuzzer crash) when memory is past either bound after
    /// `commands` commands of this input.
    pub fn check(&self, commands: u64, what: &str) {
        let now = anon_bytes();
        let input_bound = self.start + BUDGET + INPUT_SLACK + commands * PER_COMMAND;
        assert!(
            now <= input_bound,
            "{what}: resident anonymous memory {} MiB after {commands} commands, \
             {} MiB at the input's start (bound {} MiB)",
            now >> 20,
            self.start >> 20,
            input_bound >> 20
        );
        let run_bound = self.run_floor + BUDGET + RUN_SLACK;
        assert!(
            now <= run_bound,
            "{what}: resident anonymous memory {} MiB, {} MiB at the first input (bound {} MiB)",
            now >> 20,
            self.run_floor >> 20,
            run_bound >> 20
        );
    }
}

/// The first input's level, measured once per process.
pub fn run_floor() -> u64 {
    static FLOOR: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *FLOOR.get_or_init(anon_bytes)
}
