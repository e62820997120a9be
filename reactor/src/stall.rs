//! Stall detection: a task that holds its shard for too long in one poll
//! delays every other task of that shard, so it is reported by name.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One task poll that took longer than the shard's stall threshold.
#[derive(Debug, Clone)]
pub struct StallReport {
    pub shard: usize,
    pub task: &'static str,
    pub duration: Duration,
}

pub(crate) type StallHook = Arc<dyn Fn(&StallReport) + Send + Sync>;

pub(crate) struct StallDetector {
    threshold: Option<Duration>,
    hook: Option<StallHook>,
    pub(crate) count: Cell<u64>,
}

impl StallDetector {
    pub(crate) fn new(threshold: Option<Duration>, hook: Option<StallHook>) -> Self {
        StallDetector {
            threshold,
            hook,
            count: Cell::new(0),
        }
    }

    /// Start of a poll: `None` when detection is off (no clock read at all).
    pub(crate) fn start(&self) -> Option<Instant> {
        self.threshold.map(|_| Instant::now())
    }

    pub(crate) fn finish(&self, shard: usize, task: &'static str, started: Option<Instant>) {
        let (Some(threshold), Some(started)) = (self.threshold, started) else {
            return;
        };
        let duration = started.elapsed();
        if duration < threshold {
            return;
        }
        self.count.set(self.count.get() + 1);
        let report = StallReport {
            shard,
            task,
            duration,
        };
        match &self.hook {
            Some(hook) => hook(&report),
            None => tracing::warn!(
                shard,
                task,
                duration_ms = duration.as_secs_f64() * 1e3,
                "task held its shard past the stall threshold"
            ),
        }
    }
}
