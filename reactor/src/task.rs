//! Tasks: `!Send` futures owned by one shard, in a slab indexed by
//! `TaskRef` (key + generation, so a wake for a finished task whose slot was
//! reused is ignored).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;

use crate::doorbell::{Message, Remote};
use crate::oneshot::{self, JoinHandle};
use crate::shard;

pub(crate) type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct TaskRef {
    key: u32,
    gen: u32,
}

impl TaskRef {
    /// The future passed to `block_on`, which lives outside the slab.
    pub(crate) const MAIN: TaskRef = TaskRef {
        key: u32::MAX,
        gen: u32::MAX,
    };
}

struct TaskSlot {
    gen: u32,
    /// `None` while the task is being polled.
    future: Option<LocalFuture>,
    waker: Waker,
    queued: bool,
    name: &'static str,
}

#[derive(Default)]
pub(crate) struct TaskTable {
    slots: Slab<TaskSlot>,
    next_gen: u32,
}

/// Wakes a task from any thread: directly on its own shard, through the
/// doorbell from anywhere else.
struct TaskWaker {
    remote: Arc<Remote>,
    task: TaskRef,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !shard::schedule_if_local(self.remote.uid, self.task) {
            self.remote.push(Message::Wake(self.task));
        }
    }
}

pub(crate) fn waker_for(remote: &Arc<Remote>, task: TaskRef) -> Waker {
    Waker::from(Arc::new(TaskWaker {
        remote: remote.clone(),
        task,
    }))
}

impl TaskTable {
    /// Inserts a task, already queued to run.
    pub(crate) fn insert(
        &mut self,
        remote: &Arc<Remote>,
        name: &'static str,
        future: LocalFuture,
    ) -> TaskRef {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1) % u32::MAX;
        let entry = self.slots.vacant_entry();
        let task = TaskRef {
            key: entry.key() as u32,
            gen,
        };
        entry.insert(TaskSlot {
            gen,
            future: Some(future),
            waker: waker_for(remote, task),
            queued: true,
            name,
        });
        task
    }

    /// Marks `task` queued; false if it is already queued or gone.
    pub(crate) fn mark_queued(&mut self, task: TaskRef) -> bool {
        match self.slots.get_mut(task.key as usize) {
            Some(slot) if slot.gen == task.gen && !slot.queued => {
                slot.queued = true;
                true
            }
            _ => false,
        }
    }

    /// Takes the future out for polling.
    pub(crate) fn begin_poll(
        &mut self,
        task: TaskRef,
    ) -> Option<(LocalFuture, Waker, &'static str)> {
        let slot = self.slots.get_mut(task.key as usize)?;
        if slot.gen != task.gen {
            return None;
        }
        slot.queued = false;
        let fut = slot.future.take()?;
        Some((fut, slot.waker.clone(), slot.name))
    }

    /// Puts a pending future back.
    pub(crate) fn end_poll(&mut self, task: TaskRef, future: LocalFuture) {
        if let Some(slot) = self.slots.get_mut(task.key as usize) {
            if slot.gen == task.gen {
                slot.future = Some(future);
            }
        }
    }

    pub(crate) fn remove(&mut self, task: TaskRef) {
        if matches!(self.slots.get(task.key as usize), Some(s) if s.gen == task.gen) {
            self.slots.remove(task.key as usize);
        }
    }

    /// Removes every task; the caller drops the futures outside any borrow.
    pub(crate) fn drain(&mut self) -> Vec<LocalFuture> {
        self.slots.drain().filter_map(|s| s.future).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}

/// Spawns a `!Send` future on the current shard.
///
/// # Panics
/// When called outside a shard thread (a programming error, like tokio's
/// `spawn_local` outside a `LocalSet`).
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    spawn_local_named("task", future)
}

/// Like [`spawn_local`], with a name that stall reports use.
pub fn spawn_local_named<F>(name: &'static str, future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let (tx, handle) = oneshot::pair();
    let wrapped = async move {
        tx.send(future.await);
    };
    shard::spawn_on_current(name, Box::pin(wrapped));
    handle
}

/// Lets the other ready tasks of this shard run once.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

/// Future returned by [`yield_now`].
pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
