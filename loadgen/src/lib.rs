//! loadgen: plays the VMM and the guest driver against a virtio-gpu backend,
//! and measures what a desktop would feel.
//!
//! - [`frontend`]: guest RAM the load generator owns and the split
//!   virtqueues it fills the way the Linux virtio driver does.
//! - [`driver`]: the guest's virtio-gpu driver model on top of them
//!   (encode, submit, kick, reap, decode, latency).
//! - [`direct`]: the device in-process without vhost-user (device tests).

pub mod direct;
pub mod driver;
pub mod frontend;
