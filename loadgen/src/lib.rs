//! loadgen: plays the VMM and the guest driver against a virtio-gpu backend,
//! and measures what a desktop would feel.
//!
//! | module | what |
//! |---|---|
//! | [`frontend`] | guest RAM and the driver side of split virtqueues |
//! | [`driver`] | the guest's virtio-gpu driver model: encode, submit, kick, reap, latency |
//! | [`irq`] | the guest's interrupt handler thread: when each used entry appeared |
//! | [`direct`] | the device in-process without vhost-user |
//! | [`desktop`] | one gnome-shell as a state machine |
//! | [`scenario`] | profiles, fence modes, the stress scenarios, the run plan |
//! | [`run`] | the run loop, isolation phases, the report |
//! | [`report`] | percentiles and the JSON report |
//! | [`pixels`], [`display`] | what desktops draw and the check of what arrives |
//! | [`rng`] | a seeded xorshift for streams that replay exactly (the hostile-command tests) |

pub mod desktop;
pub mod direct;
pub mod display;
pub mod driver;
pub mod frontend;
pub mod irq;
pub mod pixels;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
