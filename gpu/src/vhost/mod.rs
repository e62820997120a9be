//! vhost-user: the device behind a QEMU `-device vhost-user-gpu-pci`
//! socket (or loadgen's frontend over a socketpair).
//!
//! Message layouts come from the `vhost` crate; framing and dispatch are
//! ours, so the GPU socket and the backend request channel can be spoken
//! asynchronously on the reactor (docs/decisions/0002-own-vhost-user-dispatch.md).
//!
//! | file | concern |
//! |---|---|
//! | `server.rs` | the listening socket; one frontend at a time, each on a control thread |
//! | `backend.rs` | [`Backend`]: reactor, device, sinks; `serve_stream` runs a session and resets after it |
//! | `session.rs` | the message loop: features, memory, rings, config, sockets |
//! | `frame.rs` | header, payload and `SCM_RIGHTS` framing on the control socket |
//! | `memory.rs` | the memory table: regions mapped, frontend addresses translated |
//! | `vring.rs` | one ring's set-up and the rule for when it runs |
//! | `config_space.rs` | `GET_CONFIG`/`SET_CONFIG` on `virtio_gpu_config` |
//! | `inflight.rs` | the inflight buffer (`GET/SET_INFLIGHT_FD`): chains taken and not completed, recorded per the spec's split layout; recovery after a reconnect |
//! | `gpu_socket.rs` | [`GpuSocketDisplay`]: the QEMU GPU socket as the device's display sink |
//! | `display_queue.rs` | what waits for the GPU socket, merged so a slow VMM blocks nothing |
//! | `backend_channel.rs` | [`VmmBlobMapper`]: `SHMEM_MAP`/`UNMAP` over the backend request channel |
//! | `link.rs` | ring-I/O message reads and reply matching shared by the two VMM channels |

mod backend;
mod backend_channel;
mod config_space;
pub mod display_queue;
pub mod frame;
mod gpu_socket;
mod inflight;
mod link;
mod memory;
mod server;
mod session;
mod vring;

pub use backend::{Backend, BackendOptions};
pub use backend_channel::{mapping_features, ConfigChangeStats, VmmBlobMapper, SHMID_HOST_VISIBLE};
pub use gpu_socket::{
    DisplayChanged, DisplayStats, GpuSocketDisplay, VmmDisplay, GPU_PROTOCOL_F_EDID,
};
pub use inflight::{
    split_queue_region_size, InflightBuffer, InflightRegion, QueueRegion, Recovery,
};
pub use memory::MAX_REGIONS;
pub use server::{Server, ServerStop};
pub use session::{offered_protocol_features, SessionEnd};
