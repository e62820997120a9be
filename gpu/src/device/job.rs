//! The messages between the queue owner and the shards.

use crate::fence::FenceTicket;
use crate::protocol::{CtrlHeader, GpuCommand, ResponseArea};

use super::budget::Charge;
use super::scanout::FlushTarget;

/// Which virtqueue a chain came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Control = 0,
    Cursor = 1,
}

/// What the owner worked out for the shard beyond the command itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Extra {
    #[default]
    None,
    /// RESOURCE_FLUSH: where the pixels go.
    Flush(Vec<FlushTarget>),
    /// RESOURCE_CREATE_BLOB / MAP_BLOB: the blob may be mapped.
    Mappable(bool),
}

/// Where and how a command's response goes.
#[derive(Clone)]
pub struct Reply {
    pub generation: u64,
    pub queue: QueueKind,
    pub head: u16,
    pub hdr: CtrlHeader,
    pub response: ResponseArea,
    pub ticket: Option<FenceTicket>,
    pub done: reactor::Sender<Done>,
}

/// One command routed to a shard.
pub struct Job {
    pub reply: Reply,
    pub cmd: GpuCommand,
    pub extra: Extra,
    /// The command's own buffers charged to the guest's budget
    /// (`budget::held_bytes`), given back when the job is dropped.
    pub _held: Charge,
}

/// A command's response is in guest memory; the owner may release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub generation: u64,
    pub queue: QueueKind,
    pub head: u16,
    pub len: u32,
    pub ticket: Option<FenceTicket>,
    /// The context of a command a shard ran (0: none, or answered by the
    /// owner itself): frees one of that context's in-flight slots.
    pub routed_ctx: u32,
}

/// Work for a shard's executor.
pub enum ShardMsg {
    Job(Box<Job>),
    /// Drop every context and resource (device reset).
    Reset,
}
