//! loadgen: plays the VMM and the guest driver against a vhost-user GPU
//! backend, and measures what a desktop would feel.
//!
//! [`frontend`] is the guest half: guest RAM the load generator owns and the
//! split virtqueues it fills the way the Linux virtio driver does, so that a
//! backend under test sees the same ring traffic a real guest produces.

pub mod frontend;
