//! The commands that wait at the owner before they go to a shard, in guest
//! order: a context's commands past its in-flight cap (`Owner::dispatch`),
//! and the commands that name a resource one of those waiting commands
//! names.
//!
//! The second kind is why this is more than a queue per context. Linux
//! sends a blob's `CREATE_BLOB` with its context but the `MAP_BLOB` right
//! behind it, and later `UNMAP_BLOB` + `UNREF`, without one (ctx 0), and
//! does not wait for the answers in between: it relies on the control queue
//! running in order. A command without a context that overtook its
//! context's waiting `CREATE_BLOB` (or `UNMAP_BLOB`) would find no resource
//! on the shard (`ERR_INVALID_RESOURCE_ID`). So every waiting command has
//! a sequence number in guest order, and per resource:
//!
//! - a command without a context naming it is held (`gated`) while a
//!   waiting context command naming it came before it;
//! - a context command naming it does not go before a held command that
//!   came before it (its context is `blocked` until then).
//!
//! Every wait is for something older, so nothing waits in a circle. The
//! state is one entry per waiting command (and at most one `blocked` entry
//! per context); it exists only while something waits: the ids in it are
//! the guest's.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::job::Job;

/// A command and the shard it goes to.
pub(super) type Routed = (usize, Box<Job>);

struct Waiting {
    seq: u64,
    routed: Routed,
}

/// The waiting commands naming one resource.
#[derive(Default)]
struct ResourceOrder {
    /// Sequence numbers of waiting context commands naming it.
    parked: BTreeSet<u64>,
    /// Commands without a context naming it, in order.
    gated: VecDeque<Waiting>,
    /// Contexts whose next command names it and waits for `gated`.
    blocked: Vec<u32>,
}

impl ResourceOrder {
    fn is_empty(&self) -> bool {
        self.parked.is_empty() && self.gated.is_empty() && self.blocked.is_empty()
    }
}

/// What became free to go when a waiting command went.
#[derive(Default)]
pub(super) struct Released {
    /// Commands without a context, to send in this order right after it.
    pub commands: Vec<Routed>,
    /// Contexts whose next command no longer waits for one of those: to
    /// try again (they had a free slot when they were blocked).
    pub contexts: Vec<u32>,
}

#[derive(Default)]
pub(super) struct Backlogs {
    queues: HashMap<u32, VecDeque<Waiting>>,
    resources: HashMap<u32, ResourceOrder>,
    next_seq: u64,
}

impl Backlogs {
    /// True when `ctx` has commands waiting.
    pub(super) fn is_waiting(&self, ctx: u32) -> bool {
        self.queues.contains_key(&ctx)
    }

    /// True when a context command naming this job's resource must not go
    /// yet: a command without a context naming it came first and waits.
    pub(super) fn must_wait(&self, job: &Job) -> bool {
        resource_of(job)
            .and_then(|r| self.resources.get(&r))
            .is_some_and(|o| !o.gated.is_empty())
    }

    /// `ctx`'s command waits behind its others.
    pub(super) fn park(&mut self, ctx: u32, routed: Routed) {
        let seq = self.seq();
        if let Some(res) = resource_of(&routed.1) {
            self.resources.entry(res).or_default().parked.insert(seq);
        }
        self.queues
            .entry(ctx)
            .or_default()
            .push_back(Waiting { seq, routed });
    }

    /// A command without a context: given back when it may go now, else
    /// held until every waiting command naming its resource before it went.
    pub(super) fn order_unbound(&mut self, routed: Routed) -> Option<Routed> {
        let Some(res) = resource_of(&routed.1) else {
            return Some(routed);
        };
        if !self.resources.contains_key(&res) {
            return Some(routed);
        }
        let seq = self.seq();
        if let Some(o) = self.resources.get_mut(&res) {
            o.gated.push_back(Waiting { seq, routed });
        }
        None
    }

    /// Takes `ctx`'s oldest waiting command unless it must wait for an
    /// older command without a context (then `ctx` is tried again when
    /// that one went: see `Released::contexts`). What its going set free
    /// is added to `released`.
    pub(super) fn pop(&mut self, ctx: u32, released: &mut Released) -> Option<Routed> {
        let q = self.queues.get_mut(&ctx)?;
        let front = q.front()?;
        let res = resource_of(&front.routed.1);
        if let Some(o) = res.and_then(|r| self.resources.get_mut(&r)) {
            if o.gated.front().is_some_and(|g| g.seq < front.seq) {
                if !o.blocked.contains(&ctx) {
                    o.blocked.push(ctx);
                }
                return None;
            }
        }
        let w = q.pop_front()?;
        if q.is_empty() {
            self.queues.remove(&ctx);
        }
        if let Some(res) = res {
            self.went(res, w.seq, released);
        }
        Some(w.routed)
    }

    /// Forgets everything (device reset).
    pub(super) fn clear(&mut self) {
        *self = Backlogs::default();
    }

    /// Context command `seq` naming `res` went: the held commands no
    /// older waiting command names `res` before go too.
    fn went(&mut self, res: u32, seq: u64, released: &mut Released) {
        let Some(o) = self.resources.get_mut(&res) else {
            return;
        };
        o.parked.remove(&seq);
        let before = o.gated.len();
        while let Some(g) = o.gated.front() {
            if o.parked.first().is_some_and(|&p| p < g.seq) {
                break;
            }
            if let Some(g) = o.gated.pop_front() {
                released.commands.push(g.routed);
            }
        }
        if o.gated.len() != before {
            // Each tries again and blocks again if it still must wait.
            released.contexts.append(&mut o.blocked);
        }
        if o.is_empty() {
            self.resources.remove(&res);
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

fn resource_of(job: &Job) -> Option<u32> {
    job.cmd.resource_id().map(|r| r.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::budget::GuestBudget;
    use crate::device::job::{Extra, QueueKind, Reply};
    use crate::protocol::{CtrlHeader, GpuCommand, ResourceRef, ResponseArea};
    use crate::protocol::{ResourceId, Submit3d};

    /// A job of `ctx` (chain `head`) naming `res` (0: none).
    fn job(head: u16, ctx: u32, res: u32) -> Routed {
        let cmd = if res == 0 {
            GpuCommand::Submit3d(Submit3d { data: vec![] })
        } else {
            GpuCommand::ResourceUnref(ResourceRef {
                resource_id: ResourceId(res),
            })
        };
        let hdr = CtrlHeader {
            ctx_id: ctx,
            ..CtrlHeader::default()
        };
        let reply = Reply {
            generation: 0,
            queue: QueueKind::Control,
            head,
            hdr,
            response: ResponseArea::default(),
            ticket: None,
            done: reactor::channel().0,
        };
        let job = Job {
            reply,
            cmd,
            extra: Extra::None,
            _held: GuestBudget::new(u64::MAX).charge(0).unwrap(),
        };
        (0, Box::new(job))
    }

    fn head(r: &Routed) -> u16 {
        r.1.reply.head
    }

    fn heads(rs: &[Routed]) -> Vec<u16> {
        rs.iter().map(head).collect()
    }

    #[test]
    fn a_command_without_a_context_goes_at_once_unless_a_waiting_one_names_its_resource() {
        let mut b = Backlogs::default();
        b.park(1, job(1, 1, 7));
        assert!(b.order_unbound(job(2, 0, 8)).is_some());
        assert!(b.order_unbound(job(3, 0, 0)).is_some());
        assert!(b.order_unbound(job(4, 0, 7)).is_none());
        assert!(b.order_unbound(job(5, 0, 7)).is_none());
        let mut released = Released::default();
        assert_eq!(b.pop(1, &mut released).as_ref().map(head), Some(1));
        assert_eq!(heads(&released.commands), [4, 5], "in guest order");
        assert!(!b.is_waiting(1));
        assert!(b.order_unbound(job(6, 0, 7)).is_some(), "state left behind");
    }

    #[test]
    fn a_held_command_waits_only_for_the_waiting_ones_before_it() {
        let mut b = Backlogs::default();
        b.park(1, job(1, 1, 7));
        b.park(1, job(2, 1, 0));
        assert!(b.order_unbound(job(3, 0, 7)).is_none());
        // Naming the resource after the held command: behind it.
        b.park(1, job(4, 1, 7));
        let mut released = Released::default();
        assert_eq!(b.pop(1, &mut released).as_ref().map(head), Some(1));
        assert_eq!(heads(&released.commands), [3]);
        let mut released = Released::default();
        assert_eq!(b.pop(1, &mut released).as_ref().map(head), Some(2));
        assert_eq!(b.pop(1, &mut released).as_ref().map(head), Some(4));
        assert!(released.commands.is_empty());
        assert!(b.resources.is_empty() && b.queues.is_empty());
    }

    #[test]
    fn a_context_command_does_not_overtake_an_older_held_command() {
        let mut b = Backlogs::default();
        // Context 2 named resource 7 first; the command without a context
        // waits for it; context 1's later command naming 7 waits for that.
        b.park(2, job(1, 2, 7));
        assert!(b.order_unbound(job(2, 0, 7)).is_none());
        let probe = job(3, 1, 7);
        assert!(b.must_wait(&probe.1));
        b.park(1, probe);
        let mut released = Released::default();
        assert!(b.pop(1, &mut released).is_none(), "overtook the held one");
        assert!(b.pop(1, &mut released).is_none());
        assert_eq!(b.pop(2, &mut released).as_ref().map(head), Some(1));
        assert_eq!(heads(&released.commands), [2]);
        assert_eq!(released.contexts, [1], "context 1 not tried again");
        let mut again = Released::default();
        assert_eq!(b.pop(1, &mut again).as_ref().map(head), Some(3));
        assert!(b.resources.is_empty() && b.queues.is_empty());
    }

    #[test]
    fn clear_forgets_everything() {
        let mut b = Backlogs::default();
        b.park(1, job(1, 1, 7));
        assert!(b.order_unbound(job(2, 0, 7)).is_none());
        b.clear();
        assert!(!b.is_waiting(1));
        assert!(b.order_unbound(job(3, 0, 7)).is_some());
    }
}
