//! Completion: shards report finished commands; the owner releases them to
//! the used ring in the order their fence timelines demand, then interrupts
//! the guest once per batch (EVENT_IDX decides whether at all).

use std::time::Instant;

use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::job::{Done, QueueKind};
use super::owner::{Owner, OwnerRef};

/// The completion task of a device.
pub(super) async fn run(owner: OwnerRef, mut rx: reactor::Receiver<Done>) {
    let mut batch = Vec::new();
    // When the pacer owes flooding contexts commands it could not send yet.
    let mut pace_at: Option<Instant> = None;
    loop {
        let next = match pace_at {
            None => rx.recv().await,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                match reactor::time::timeout(wait, rx.recv()).await {
                    Ok(d) => d,
                    // The pacer's window ended: send what it owes.
                    Err(_) => {
                        pace_at = owner.borrow_mut().pace();
                        continue;
                    }
                }
            }
        };
        let Some(first) = next else { break };
        batch.push(first);
        rx.drain_into(&mut batch);
        {
            let mut o = owner.borrow_mut();
            for d in batch.drain(..) {
                o.complete(d);
            }
            pace_at = o.pace();
            o.signal_used(QueueKind::Control);
            o.signal_used(QueueKind::Cursor);
            o.check_quiesced();
        }
        // A steady stream of completions must not starve intake.
        reactor::yield_now().await;
    }
}

impl Owner {
    /// Releases `done` (and whatever it unblocks on its timeline) to the
    /// used ring. Completions of an older generation (before a reset) are
    /// dropped: their chains belong to a ring that no longer exists.
    pub(super) fn complete(&mut self, done: Done) {
        if done.generation != self.generation {
            return;
        }
        if done.routed_ctx != 0 {
            self.release_slot(done.routed_ctx);
        }
        self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
        let mut released = std::mem::take(&mut self.released);
        let entry = (done.queue, done.head, done.len);
        match done.ticket {
            Some(t) => {
                if !self.timelines.signal(t, entry, &mut released) {
                    tracing::error!(?t, "fence ticket signalled twice or unknown");
                }
            }
            None => released.push(entry),
        }
        let mem = self.mem.memory();
        for (queue, head, len) in released.drain(..) {
            self.watch.finish(queue, head);
            let Some(q) = self.queues[queue as usize].as_mut() else {
                continue;
            };
            if let Some(log) = q.log.as_mut() {
                log.completing(head);
            }
            match q.queue.add_used(&*mem, head, len) {
                Ok(()) => {
                    if let Some(log) = q.log.as_mut() {
                        log.completed(head, q.queue.next_used());
                    }
                    self.stats.completed += 1;
                    q.unsignalled = true;
                }
                Err(e) => {
                    crate::error_limited!(?queue, head, error = ?e, "cannot write the used ring")
                }
            }
        }
        self.released = released;
    }

    /// Interrupts the guest if anything was added since the last call and
    /// the driver wants to hear about it.
    pub(super) fn signal_used(&mut self, kind: QueueKind) {
        let mem = self.mem.memory();
        let Some(q) = self.queues[kind as usize].as_mut() else {
            return;
        };
        if !std::mem::take(&mut q.unsignalled) {
            return;
        }
        match q.queue.needs_notification(&*mem) {
            Ok(true) => {
                self.stats.calls += 1;
                if let Err(e) = q.call.notify() {
                    crate::warn_limited!(queue = ?kind, error = %e, "call eventfd write failed");
                }
            }
            Ok(false) => {}
            Err(e) => crate::warn_limited!(queue = ?kind, error = ?e, "cannot read used_event"),
        }
    }
}
