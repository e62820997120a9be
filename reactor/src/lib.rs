//! A thread-per-core async executor on io_uring.
//!
//! # The model
//!
//! A [`Reactor`] is a set of *shards*. Each shard is one OS thread (optionally
//! pinned to one core) that owns one io_uring and runs `!Send` futures spawned
//! with [`spawn_local`]. Nothing is shared mutably between shards: other
//! threads reach a shard through a [`ShardHandle`], which queues a closure and
//! rings the shard's *doorbell* (an eventfd whose read is always pending on the
//! shard's ring). Wakers are thread-safe: waking a task from another thread
//! goes through the same doorbell, so a cross-shard [`channel`] costs one
//! eventfd write when the receiver sleeps and nothing when it is awake.
//!
//! All I/O is submitted to the ring ([`io`]): eventfd and timerfd reads
//! (virtqueue kicks, fence signals, CLOCK_MONOTONIC timers), socket
//! reads/writes with file descriptors, and poll. A shard sleeps only in
//! `io_uring_enter`; there is no periodic timer and no busy polling unless a
//! bounded spin is asked for ([`Builder::spin`]).
//!
//! # Buffer ownership (the one rule to remember)
//!
//! Every in-flight operation *owns* the memory the kernel reads or writes
//! (buffers, `msghdr`, `iovec`, the file descriptor itself) until its
//! completion arrives. Futures take buffers by value and give them back on
//! completion. Dropping a future before completion submits an
//! `IORING_OP_ASYNC_CANCEL` and moves the owned memory into the shard's slab of
//! in-flight operations, where it stays until the kernel posts the completion.
//! Completions carry a generation in `user_data`, so a completion for a slot
//! that has since been reused is recognised as stale and ignored.
//!
//! # Stalls
//!
//! A task that keeps the shard busy for longer than
//! [`Builder::stall_threshold`] in one poll is reported (a `tracing` warning by
//! default, or [`Builder::on_stall`]), with the task's name.

mod abort;
mod channel_impl;
mod doorbell;
pub mod io;
mod oneshot;
mod op;
mod shard;
mod stall;
mod task;
pub mod time;

pub use abort::{abortable, AbortHandle, Abortable, Aborted};
pub use channel_impl::{channel, Receiver, SendError, Sender};
pub use oneshot::{Canceled, JoinHandle};
pub use shard::{
    block_on, current_shard, request_slice, stats, Builder, Reactor, ShardHandle, ShardStats,
};
pub use stall::StallReport;
pub use task::{spawn_local, spawn_local_named, yield_now};
