//! How a vhost-user session is set up: what the caller chooses.

use std::time::Duration;

use crate::frontend::QueueFeatures;

use super::backend_req::ShmemOptions;
use super::display::DisplayOptions;

/// Which message hands guest RAM to the backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemTableMode {
    /// As QEMU 10: `ADD_MEM_REG` once `CONFIGURE_MEM_SLOTS` is negotiated,
    /// `SET_MEM_TABLE` otherwise.
    #[default]
    Auto,
    /// Always `SET_MEM_TABLE`.
    SetMemTable,
    /// Always `ADD_MEM_REG` (an error when the backend lacks
    /// `CONFIGURE_MEM_SLOTS`).
    AddMemReg,
}

/// Where the set-up stops and hands the driver back, so the guest can
/// submit and kick before the backend has everything a ring needs;
/// [`VhostFrontend::finish_setup`](super::VhostFrontend::finish_setup)
/// sends the rest. Kicks given that early are legal: a backend must look at
/// the ring when it becomes ready (rust-vmm's vhost-device-gpu does not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SetupPause {
    /// The whole set-up, in QEMU's order.
    #[default]
    None,
    /// Rings get size, base, kick and call fds; then the pause; then the
    /// memory table, ring addresses and `SET_VRING_ENABLE`.
    BeforeMemory,
    /// Memory, then size, base, kick and call fds; then the pause; then
    /// ring addresses and `SET_VRING_ENABLE`.
    BeforeRingAddr,
    /// Everything but `SET_VRING_ENABLE`.
    BeforeEnable,
}

/// Everything [`VhostFrontend`](super::VhostFrontend) needs besides the socket
/// and the guest RAM.
#[derive(Debug, Clone)]
pub struct VhostOptions {
    /// Entries per virtqueue (both queues).
    pub queue_size: u16,
    /// Ring features the guest driver model wants; each is used only when the
    /// backend offers it.
    pub queue_features: QueueFeatures,
    /// `VIRTIO_GPU_F_*` bits (as a mask: `1 << VIRTIO_GPU_F_EDID`...) the
    /// guest asks for; the backend's offer masks them.
    pub gpu_features: u64,
    /// Do not negotiate `REPLY_ACK`: no request waits for the backend's ack
    /// (the race QEMU runs when the backend does not offer it).
    pub no_reply_ack: bool,
    /// Negotiate `INFLIGHT_SHMFD` when offered and track inflight I/O as
    /// QEMU's vhost-user-blk does: `GET_INFLIGHT_FD` once, then
    /// `SET_INFLIGHT_FD` of that buffer at every device start, including
    /// after a [`reconnect`](super::VhostFrontend::reconnect). A reset
    /// fetches a new buffer.
    pub inflight_shmfd: bool,
    /// Which memory message to use.
    pub mem_table: MemTableMode,
    /// Longest wait for any answer on the control socket; past it the
    /// session is shut down and the call returns `Timeout`.
    pub control_timeout: Duration,
    /// How long `connect` keeps retrying while nothing listens yet (a
    /// backend that was just spawned); zero tries once.
    pub connect_wait: Duration,
    /// Without REPLY_ACK, end the set-up with one request that has a reply,
    /// so every earlier message is known to be processed before the first
    /// kick (a backend that drops kicks before `SET_VRING_ENABLE` is then
    /// safe). QEMU does not do this.
    pub setup_barrier: bool,
    /// Stop the set-up early (every set-up, `reset` included) so the
    /// caller can kick first; see [`SetupPause`].
    pub pause_setup: SetupPause,
    /// On `reset`, close the GPU socket and hand the backend a new one, as
    /// QEMU does when the device stops and starts again. QEMU's own backend
    /// (7.2) refuses a second socket (it never noticed the first closing)
    /// and its display goes dead; `false` keeps the first socket instead.
    pub reset_replaces_gpu_socket: bool,
    /// The VMM's display on the GPU socket.
    pub display: DisplayOptions,
    /// The host-visible region backend `SHMEM_MAP` requests map into.
    pub shmem: ShmemOptions,
}

impl Default for VhostOptions {
    /// 1024-entry queues with EVENT_IDX and indirect descriptors (as the
    /// Linux driver), the EDID feature, REPLY_ACK, QEMU's memory message,
    /// 5 s control timeout.
    fn default() -> Self {
        Self {
            queue_size: 1024,
            queue_features: QueueFeatures {
                event_idx: true,
                indirect: true,
            },
            gpu_features: 1 << gpu::protocol::wire::VIRTIO_GPU_F_EDID,
            no_reply_ack: false,
            inflight_shmfd: false,
            mem_table: MemTableMode::Auto,
            control_timeout: Duration::from_secs(5),
            connect_wait: Duration::ZERO,
            setup_barrier: true,
            pause_setup: SetupPause::None,
            reset_replaces_gpu_socket: true,
            display: DisplayOptions::default(),
            shmem: ShmemOptions::default(),
        }
    }
}
