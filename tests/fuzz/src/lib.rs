//! Coverage-guided fuzz targets of gpu-reactor (libFuzzer through
//! `libfuzzer-sys`, on stable Rust: docs/decisions/0006-coverage-guided-fuzzing.md).
//!
//! | file | what |
//! |---|---|
//! | `input.rs` | a fuzz input read as a stream of choices (and written, for seeds) |
//! | `commands.rs` | virtio-gpu commands from choices: every command, fields by kind |
//! | `device.rs` | target `device`: guest actions through split rings into the device (sim, 2d) |
//! | `vhost.rs` | target `vhost`: one vhost-user session per input into `Backend::serve_stream` |
//! | `rss.rs` | the memory bound checked after every batch and session |
//! | `seeds.rs` | the seed inputs of `corpus/` (`make-corpus`) |

pub mod commands;
pub mod device;
pub mod input;
pub mod rss;
pub mod seeds;
pub mod vhost;
