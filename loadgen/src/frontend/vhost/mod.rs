//! loadgen's vhost-user frontend: the VMM side of a vhost-user GPU, so the
//! guest driver model can drive any backend (gpu-reactor, rust-vmm's
//! vhost-device-gpu, QEMU's contrib vhost-user-gpu) over the real protocol.
//!
//! A session has three channels, each served here:
//!
//! | channel | who asks | file |
//! |---|---|---|
//! | control socket | loadgen (the `vhost` crate's `Frontend`, plus message 33) | `session.rs`, `gpu_set_socket.rs`, `deadline.rs` |
//! | GPU socket | the backend: display info, EDID, scanouts, updates, cursor | `gpu_socket.rs`, `gpu_wire.rs`, `display.rs` |
//! | backend request channel | the backend: `SHMEM_MAP`/`SHMEM_UNMAP` | `backend_req.rs`, `shmem_region.rs` |
//!
//! `framing.rs` reads and writes the 12-byte message header for the two
//! channels loadgen answers; `features.rs` decides what is negotiated;
//! `options.rs` is what the caller chooses; `error.rs` the one error type.
//!
//! ```no_run
//! use loadgen::driver::Queue;
//! use loadgen::frontend::vhost::{VhostFrontend, VhostOptions};
//! use loadgen::frontend::GuestRam;
//! use gpu::protocol::{GpuCommand, Request};
//! use std::time::Duration;
//!
//! let ram = GuestRam::new(64 << 20)?;
//! let (session, mut driver) =
//!     VhostFrontend::connect("/tmp/gpu.sock", ram, VhostOptions::default())?;
//! let info = driver.call(
//!     Queue::Control,
//!     &Request::new(GpuCommand::GetDisplayInfo),
//!     Duration::from_secs(1),
//! )?;
//! println!("{:?}, display: {:?}", info.response, session.display_stats());
//! session.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod backend_req;
mod deadline;
mod display;
mod error;
mod features;
mod framing;
mod gpu_set_socket;
mod gpu_socket;
mod gpu_wire;
mod options;
mod session;
mod shmem_region;

pub use backend_req::{BackendReqStats, ShmemOptions};
pub use display::{
    DisplayError, DisplayOptions, DisplayStats, DmabufFormat, Framebuffer, PixelCheck,
    ScanoutStats, UpdateView, VmmDisplay,
};
pub use error::VhostError;
pub use features::{MemoryMessage, Negotiated};
pub use gpu_wire::{GPU_PROTOCOL_F_DMABUF2, GPU_PROTOCOL_F_EDID};
pub use options::{MemTableMode, SetupPause, VhostOptions};
pub use session::{Reconnected, VhostFrontend};
pub use shmem_region::{HostVisibleRegion, ShmemError, ShmemMapping};
