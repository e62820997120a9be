//! What the queue owner knows about contexts and resources: enough to route
//! every command to the right shard and to refuse unknown or reused ids
//! before anything is queued. The heavy state (pixels, backing, renderer
//! objects) lives on each object's home shard.

use std::collections::{HashMap, HashSet};

use crate::protocol::{Format, ProtocolError, Rect};

#[derive(Debug, Clone)]
pub struct ContextEntry {
    pub shard: usize,
    pub resources: HashSet<u32>,
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

#[derive(Debug, Clone)]
pub struct ResourceEntry {
    pub shard: usize,
    pub shape: Shape,
    /// Host memory charged to this resource.
    pub bytes: u64,
}

/// The registry, owned by the queue owner shard.
#[derive(Debug)]
pub struct Directory {
    contexts: HashMap<u32, ContextEntry>,
    resources: HashMap<u32, ResourceEntry>,
    /// Contexts per shard, for placement.
    load: Vec<usize>,
    bytes: u64,
    memory_limit: u64,
    next_shard: usize,
}

impl Directory {
    pub fn new(shards: usize, memory_limit: u64) -> Self {
        Directory {
            contexts: HashMap::new(),
            resources: HashMap::new(),
            load: vec![0; shards.max(1)],
            bytes: 0,
            memory_limit,
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

    /// Places a new context on the least loaded of `candidates`.
    pub fn add_context(&mut self, ctx: u32, candidates: &[usize]) -> Result<usize, ProtocolError> {
        if ctx == 0 {
            return Err(ProtocolError::ContextIdZero);
        }
        if self.contexts.contains_key(&ctx) {
            return Err(ProtocolError::ContextIdInUse(ctx));
        }
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
            },
        );
        Ok(shard)
    }

    pub fn remove_context(&mut self, ctx: u32) -> Result<ContextEntry, ProtocolError> {
        let e = self
            .contexts
            .remove(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        self.load[e.shard] = self.load[e.shard].saturating_sub(1);
        Ok(e)
    }

    /// Registers a resource, charging `bytes` against the memory limit.
    /// `home` is the shard of the creating context, if any; otherwise
    /// resources are spread over `candidates` in turn.
    pub fn add_resource(
        &mut self,
        id: u32,
        shape: Shape,
        bytes: u64,
        home: Option<usize>,
        candidates: &[usize],
    ) -> Result<usize, ProtocolError> {
        if id == 0 {
            return Err(ProtocolError::ResourceIdZero);
        }
        if self.resources.contains_key(&id) {
            return Err(ProtocolError::ResourceIdInUse(id));
        }
        if self.bytes.saturating_add(bytes) > self.memory_limit {
            return Err(ProtocolError::OutOfMemory { requested: bytes });
        }
        let shard = match home {
            Some(s) => s,
            None if candidates.is_empty() => 0,
            None => {
                self.next_shard = self.next_shard.wrapping_add(1);
                candidates[self.next_shard % candidates.len()]
            }
        };
        self.bytes += bytes;
        self.resources.insert(
            id,
            ResourceEntry {
                shard,
                shape,
                bytes,
            },
        );
        Ok(shard)
    }

    pub fn remove_resource(&mut self, id: u32) -> Result<ResourceEntry, ProtocolError> {
        let e = self
            .resources
            .remove(&id)
            .ok_or(ProtocolError::UnknownResource(id))?;
        self.bytes = self.bytes.saturating_sub(e.bytes);
        for c in self.contexts.values_mut() {
            c.resources.remove(&id);
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

    pub fn attach(&mut self, ctx: u32, id: u32) -> Result<(), ProtocolError> {
        self.resource(id)?;
        let c = self
            .contexts
            .get_mut(&ctx)
            .ok_or(ProtocolError::UnknownContext(ctx))?;
        c.resources.insert(id);
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
        Ok(())
    }

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
        let mut d = Directory::new(2, u64::MAX);
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
    fn resource_memory_is_bounded_and_given_back() {
        let mut d = Directory::new(1, 100);
        let img = Shape::Image {
            width: 1,
            height: 1,
            format: None,
        };
        d.add_resource(1, img, 60, None, &[0]).unwrap();
        assert_eq!(
            d.add_resource(2, img, 60, None, &[0]),
            Err(ProtocolError::OutOfMemory { requested: 60 })
        );
        d.remove_resource(1).unwrap();
        d.add_resource(2, img, 60, None, &[0]).unwrap();
        assert_eq!(d.bytes_in_use(), 60);
    }
}
