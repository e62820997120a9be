//! What the queue owner knows about contexts and resources: enough to route
//! every command to the right shard and to refuse unknown or reused ids
//! before anything is queued. The heavy state (pixels, backing, renderer
//! objects) lives on each object's home shard. Each context and resource
//! holds its charge to the guest's memory budget (`budget.rs`): refused
//! here when it does not fit, given back when it is removed (or the
//! directory is dropped, at reset).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::protocol::{Format, ProtocolError, Rect};

use super::budget::{Charge, GuestBudget, ATTACHMENT_BYTES, CONTEXT_BYTES, RESOURCE_BYTES};

#[derive(Debug)]
pub struct ContextEntry {
    pub shard: usize,
    pub resources: HashSet<u32>,
    /// [`CONTEXT_BYTES`] and [`ATTACHMENT_BYTES`] for each attached resource.
    charge: Charge,
}

/// Shape of a resource, for rectangle checks at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Image {
        width: u32,
        height: u32,
        format: Option<Format>,
    },
    Blob {
        size: u64,
        mappable: bool,
    },
}

#[derive(Debug)]
pub struct ResourceEntry {
    pub shard: usize,
    pub shape: Shape,
    /// Host memory charged to this resource (its storage and
    /// [`RESOURCE_BYTES`]).
    charge: Charge,
}

/// The registry, owned by the queue owner shard.
#[derive(Debug)]
pub struct Directory {
    contexts: HashMap<u32, ContextEntry>,
    resources: HashMap<u32, ResourceEntry>,
    /// Contexts per shard, for placement.
    load: Vec<usize>,
    /// Bytes charged to resources.
    bytes: u64,
    budget: Arc<GuestBudget>,
    next_shard: usize,
}

impl Directory {
    pub fn new(shards: usize, budget: Arc<GuestBudget>) -> Self {
        Directory {
            contexts: HashMap::new(),
            resources: HashMap::new(),
            load: vec![0; shards.max(1)],
            bytes: 0,
            budget,
            next_shard: 0,
        }
    }

    pub fn context(&self, ctx: u32) -> Result<&ContextEntry, ProtocolError> {
        self.contexts
            .get(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))
    }

    pub fn resource(&self, id: u32) -> Result<&ResourceEntry, ProtocolError> {
        if id == 0 {
            return Err(ProtocolError::ResourceIdZero);
        }
        self.resources
            .get(&id)
            .ok_or(ProtocolError::UnknownResource(id))
    }

    /// Places a new context on the least loaded of `candidates`, charging
    /// [`CONTEXT_BYTES`].
    pub fn add_context(&mut self, ctx: u32, candidates: &[usize]) -> Result<usize, ProtocolError> {
        if ctx == 0 {
            return Err(ProtocolError::ContextIdZero);
        }
        if self.contexts.contains_key(&ctx) {
            return Err(ProtocolError::ContextIdInUse(ctx));
        }
        let charge = self.budget.charge(CONTEXT_BYTES)?;
        let shard = candidates
            .iter()
            .copied()
            .filter(|&s| s < self.load.len())
            .min_by_key(|&s| self.load[s])
            .unwrap_or(0);
        self.load[shard] += 1;
        self.contexts.insert(
            ctx,
            ContextEntry {
                shard,
                resources: HashSet::new(),
                charge,
            },
        );
        Ok(shard)
    }

    pub fn remove_context(&mut self, ctx: u32) -> Result<ContextEntry, ProtocolError> {
        let e = self
            .contexts
            .remove(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        crate::sparse::shrink_sparse(&mut self.contexts);
        self.load[e.shard] = self.load[e.shard].saturating_sub(1);
        Ok(e)
    }

    /// Registers a resource, charging its storage (`bytes`; `None`: too
    /// large to count, refused) and [`RESOURCE_BYTES`] to the budget.
    /// `home` is the shard of the creating context, if any; otherwise
    /// resources are spread over `candidates` in turn.
    pub fn add_resource(
        &mut self,
        id: u32,
        shape: Shape,
        bytes: Option<u64>,
        home: Option<usize>,
        candidates: &[usize],
    ) -> Result<usize, ProtocolError> {
        if id == 0 {
            return Err(ProtocolError::ResourceIdZero);
        }
        if self.resources.contains_key(&id) {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        let charge = self
            .budget
            .charge_size(bytes.and_then(|b| b.checked_add(RESOURCE_BYTES)))?;
        let shard = match home {
            Some(s) => s,
            None if candidates.is_empty() => 0,
            None => {
                self.next_shard = self.next_shard.wrapping_add(1);
                candidates[self.next_shard % candidates.len()]
            }
        };
        self.bytes = self.bytes.saturating_add(charge.bytes());
        self.resources.insert(
            id,
            ResourceEntry {
                shard,
                shape,
                charge,
            },
        );
        Ok(shard)
    }

    pub fn remove_resource(&mut self, id: u32) -> Result<ResourceEntry, ProtocolError> {
        let e = self
            .resources
            .remove(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        crate::sparse::shrink_sparse(&mut self.resources);
        self.bytes = self.bytes.saturating_sub(e.charge.bytes());
        for c in self.contexts.values_mut() {
            if c.resources.remove(&id) {
                c.charge.shrink(ATTACHMENT_BYTES);
            }
        }
        Ok(e)
    }

    /// `rect` must lie inside the image `id`.
    pub fn check_rect(&self, id: u32, rect: Rect) -> Result<&ResourceEntry, ProtocolError> {
        let e = self.resource(id)?;
        match e.shape {
            Shape::Image { width, height, .. } if rect.fits_within(width, height) => Ok(e),
            _ => Err(ProtocolError::RectOutsideResource),
        }
    }

    /// Attaches resource `id` to `ctx`, charging [`ATTACHMENT_BYTES`] to
    /// the context the first time.
    pub fn attach(&mut self, ctx: u32, id: u32) -> Result<(), ProtocolError> {
        self.resource(id)?;
        let c = self
            .contexts
            .get_mut(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        if !c.resources.contains(&id) {
            c.charge.grow(ATTACHMENT_BYTES)?;
            c.resources.insert(id);
        }
        Ok(())
    }

    pub fn detach(&mut self, ctx: u32, id: u32) -> Result<(), ProtocolError> {
        let c = self
            .contexts
            .get_mut(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        if !c.resources.remove(&id) {
            return Err(ProtocolError::ResourceNotInContext { ctx, resource: id });
        }
        c.charge.shrink(ATTACHMENT_BYTES);
        Ok(())
    }

    /// Bytes charged to resources (of the budget's total).
    pub fn bytes_in_use(&self) -> u64 {
        self.bytes
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.contexts.len(), self.resources.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_go_to_the_least_loaded_shard() {
        let mut d = Directory::new(2, GuestBudget::new(u64::MAX));
        assert_eq!(d.add_context(1, &[0, 1]).unwrap(), 0);
        assert_eq!(d.add_context(2, &[0, 1]).unwrap(), 1);
        assert_eq!(d.add_context(3, &[0, 1]).unwrap(), 0);
        d.remove_context(1).unwrap();
        assert_eq!(d.add_context(4, &[0, 1]).unwrap(), 0);
        assert_eq!(
            d.add_context(2, &[0, 1]),
            Err(ProtocolError::ContextIdInUse(2))
        );
    }

    #[test]
    fn resource_and_context_memory_is_bounded_and_given_back() {
        let budget = GuestBudget::new(2 * RESOURCE_BYTES + 100);
        let mut d = Directory::new(1, budget.clone());
        let img = Shape::Image {
            width: 1,
            height: 1,
            format: None,
        };
        d.add_resource(1, img, Some(60), None, &[0]).unwrap();
        assert_eq!(
            d.add_resource(2, img, Some(60), None, &[0]),
            Err(ProtocolError::OutOfMemory {
                requested: 60 + RESOURCE_BYTES
            })
        );
        assert!(d.add_resource(2, img, None, None, &[0]).is_err());
        assert!(d.add_context(1, &[0]).is_err(), "a context costs too");
        // Attachments cost a context, and are given back with the resource.
        let mut d2 = Directory::new(
            1,
            GuestBudget::new(CONTEXT_BYTES + 2 * RESOURCE_BYTES + ATTACHMENT_BYTES),
        );
        d2.add_context(1, &[0]).unwrap();
        d2.add_resource(1, img, Some(0), None, &[0]).unwrap();
        d2.add_resource(2, img, Some(0), None, &[0]).unwrap();
        d2.attach(1, 1).unwrap();
        d2.attach(1, 1).unwrap(); // again: no second charge
        assert!(d2.attach(1, 2).is_err());
        d2.remove_resource(1).unwrap();
        d2.attach(1, 2).unwrap();
        d2.detach(1, 2).unwrap();
        d2.remove_resource(2).unwrap();
        assert_eq!(d2.budget.in_use(), CONTEXT_BYTES);
        d.remove_resource(1).unwrap();
        d.add_resource(2, img, Some(60), None, &[0]).unwrap();
        assert_eq!(d.bytes_in_use(), 60 + RESOURCE_BYTES);
        assert_eq!(budget.in_use(), 60 + RESOURCE_BYTES);
        drop(d);
        assert_eq!(budget.in_use(), 0, "a dropped directory gives all back");
    }
}
