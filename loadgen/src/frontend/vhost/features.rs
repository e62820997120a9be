//! Feature negotiation: which virtio and vhost-user protocol features
//! loadgen asks for, and what the session ended up with.

use vhost::vhost_user::VhostUserProtocolFeatures as Proto;

use gpu::protocol::GpuConfig;

use crate::frontend::QueueFeatures;

/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features;
/// acking it also means rings start disabled until `SET_VRING_ENABLE`.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device-specific feature bits (0..24) are the GPU's `VIRTIO_GPU_F_*`.
const DEVICE_FEATURES: u64 = (1 << 24) - 1;

/// The protocol features loadgen can use, as QEMU 10 asks for a GPU: the
/// caller may drop REPLY_ACK and INFLIGHT_SHMFD.
pub fn wanted_protocol(reply_ack: bool, inflight_shmfd: bool) -> Proto {
    let mut p = Proto::MQ
        | Proto::CONFIG
        | Proto::BACKEND_REQ
        | Proto::BACKEND_SEND_FD
        | Proto::CONFIGURE_MEM_SLOTS
        | Proto::RESET_DEVICE
        | Proto::SHMEM;
    if reply_ack {
        p |= Proto::REPLY_ACK;
    }
    if inflight_shmfd {
        p |= Proto::INFLIGHT_SHMFD;
    }
    p
}

/// The virtio features the guest driver model acks out of `offered`:
/// VERSION_1, the ring features the driver wants, the GPU features the
/// caller asks for, and PROTOCOL_FEATURES (a vhost-user bit, acked as QEMU
/// does so `SET_VRING_ENABLE` is allowed).
pub fn driver_features(offered: u64, rings: QueueFeatures, gpu_features: u64) -> u64 {
    let mut want = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
    if rings.event_idx {
        want |= VIRTIO_RING_F_EVENT_IDX;
    }
    if rings.indirect {
        want |= VIRTIO_RING_F_INDIRECT_DESC;
    }
    want |= gpu_features & DEVICE_FEATURES;
    offered & want
}

/// The ring features the acked virtio features allow.
pub fn queue_features(acked: u64) -> QueueFeatures {
    QueueFeatures {
        event_idx: acked & VIRTIO_RING_F_EVENT_IDX != 0,
        indirect: acked & VIRTIO_RING_F_INDIRECT_DESC != 0,
    }
}

/// The message that carried guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMessage {
    SetMemTable,
    AddMemReg,
}

/// What the session negotiated and learnt from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Virtio features the backend offered (`GET_FEATURES`).
    pub offered: u64,
    /// Virtio features acked (`SET_FEATURES`).
    pub acked: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: Proto,
    /// Protocol features acked (`SET_PROTOCOL_FEATURES`).
    pub protocol: Proto,
    /// Queues the backend has (`GET_QUEUE_NUM`, or 2 without MQ).
    pub queue_num: u64,
    /// `GET_MAX_MEM_SLOTS`, when `CONFIGURE_MEM_SLOTS` was negotiated.
    pub max_mem_slots: Option<u64>,
    /// The device configuration space (`GET_CONFIG`), when CONFIG was
    /// negotiated. QEMU's own backend reports 0 scanouts there: the VMM
    /// decides, and answers `GET_DISPLAY_INFO` on the GPU socket.
    pub config: Option<GpuConfig>,
    /// Shared memory region sizes by shmid (`GET_SHMEM_CONFIG`), when SHMEM
    /// was negotiated.
    pub shmem_sizes: Option<Vec<u64>>,
    /// The memory message used.
    pub memory: MemoryMessage,
    /// Ring features the driver model runs with.
    pub queue_features: QueueFeatures,
}

impl Negotiated {
    /// Requests that have no reply of their own wait for an ack.
    pub fn reply_ack(&self) -> bool {
        self.protocol.contains(Proto::REPLY_ACK)
    }

    /// Whether `VIRTIO_GPU_F_<bit>` was acked.
    pub fn has_gpu_feature(&self, bit: u32) -> bool {
        bit < 24 && self.acked & (1 << bit) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_offered_features_are_acked_and_ring_features_follow_the_ack() {
        let offered = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | 0b11;
        let rings = QueueFeatures {
            event_idx: true,
            indirect: true,
        };
        let acked = driver_features(offered, rings, 0b10);
        assert_eq!(
            acked,
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | 0b10
        );
        assert_eq!(
            queue_features(acked),
            QueueFeatures {
                event_idx: false,
                indirect: true
            }
        );
    }

    #[test]
    fn transport_bits_in_the_gpu_mask_are_not_acked_through_it() {
        let acked = driver_features(u64::MAX, QueueFeatures::default(), u64::MAX);
        assert_eq!(acked & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_ne!(acked & VHOST_USER_F_PROTOCOL_FEATURES, 0);
    }

    #[test]
    fn reply_ack_is_asked_for_only_when_wanted() {
        assert!(wanted_protocol(true, false).contains(Proto::REPLY_ACK));
        assert!(!wanted_protocol(false, false).contains(Proto::REPLY_ACK));
        assert!(wanted_protocol(false, true).contains(Proto::INFLIGHT_SHMFD));
    }
}
