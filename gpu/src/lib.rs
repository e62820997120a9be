//! gpu-reactor's virtio-gpu device model.
//!
//! | module | concern |
//! |---|---|
//! | [`protocol`] | guest bytes → typed, validated commands; typed responses → bytes (the only place raw guest bytes are read) |
//! | [`device`] | queue intake, routing by context, per-shard execution, ordered completion |
//! | [`fence`] | fence timelines: per (context, ring), or one global |
//! | [`blob`] | blob map/unmap as async tasks; the `BlobMapper` the VMM side implements |
//! | [`render`] | the `Renderer` trait and the renderers (`sim`, `rutabaga2d`) |
//! | [`backing`] | guest pages behind a resource |
//! | [`log_limit`] | rate limits for log lines a guest can cause per command |
//! | [`sparse`] | maps keyed by guest ids shrink as they empty |
//! | [`sandbox`] | the daemon's seccomp filter, per renderer |
//! | [`vhost`] | the vhost-user backend: sessions, memory, rings, GPU socket, SHMEM_MAP |
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backing;
pub mod blob;
pub mod device;
pub mod fence;
pub mod log_limit;
pub mod protocol;
pub mod render;
pub mod sandbox;
pub mod sparse;
pub mod vhost;
