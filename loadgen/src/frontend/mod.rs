//! The guest side of a virtio-gpu device: guest RAM and driver-side rings.
//!
//! - [`guest_ram`]: a memfd-backed guest RAM that can be shared with a backend
//!   (vhost-user `SET_MEM_TABLE`) or an in-process device, plus an allocator
//!   for rings and buffers inside it.
//! - [`vring`]: [`DriverQueue`], a split virtqueue written as a driver writes
//!   it (descriptor free list, avail publishing, kick and interrupt
//!   suppression, used-ring validation).

pub mod guest_ram;
pub mod vhost;
pub mod vring;

pub use guest_ram::{GuestRam, GuestRamConfig, GuestRamError, NotAllocated, OutOfGuestMemory};
pub use vhost::{MemTableMode, VhostError, VhostFrontend, VhostOptions};
pub use vring::{AddError, Buf, DriverError, DriverQueue, QueueFeatures, QueueSetupError, Used};
