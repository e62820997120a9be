//! One virtqueue as the frontend sets it up, and the vhost-user rule for
//! when it runs.
//!
//! A ring starts when it has a size, addresses, a kick fd, guest memory, and
//! is enabled. With `VHOST_USER_F_PROTOCOL_FEATURES` negotiated a ring
//! starts disabled until `SET_VRING_ENABLE 1`; without it, the kick fd
//! enables it. `GET_VRING_BASE` stops it and forgets the kick fd, so it
//! restarts only after a new `SET_VRING_KICK` (that is how the frontend
//! restarts a ring). The device drains the ring as soon as it starts, so a
//! kick the driver sent before the ring ran is never lost.

use std::os::fd::OwnedFd;

use crate::device::{QueueKind, QueueSetup};

/// The ring's addresses, guest-physical (already translated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// What the frontend told us about one ring.
#[derive(Debug, Default)]
pub struct Vring {
    pub size: Option<u16>,
    pub addrs: Option<RingAddrs>,
    /// Next avail index to read (`SET_VRING_BASE`, or where it stopped).
    pub base: u16,
    pub kick: Option<OwnedFd>,
    pub call: Option<OwnedFd>,
    /// Kept only to own it: the device reports no ring errors yet.
    pub err: Option<OwnedFd>,
    pub enabled: bool,
    /// The device is running this ring.
    pub started: bool,
    /// The ring runs with `VIRTIO_RING_F_EVENT_IDX` (set when it started).
    pub event_idx: bool,
}

impl Vring {
    /// True when everything a start needs is there (memory is checked by
    /// the caller) and the ring is not running yet.
    pub fn ready(&self) -> bool {
        !self.started
            && self.enabled
            && self.size.is_some()
            && self.addrs.is_some()
            && self.kick.is_some()
    }

    /// The device's queue set-up; `next_used` comes from the used ring in
    /// guest memory (vhost-user carries only the avail index).
    pub fn setup(&self, next_used: u16, event_idx: bool) -> Option<QueueSetup> {
        let a = self.addrs?;
        Some(QueueSetup {
            size: self.size?,
            desc_table: a.desc_table,
            avail_ring: a.avail_ring,
            used_ring: a.used_ring,
            next_avail: self.base,
            next_used,
            event_idx,
        })
    }
}

/// The two rings of a virtio-gpu device.
pub const NUM_QUEUES: usize = 2;

/// The device queue behind a vring index.
pub fn queue_kind(index: u32) -> Option<QueueKind> {
    match index {
        0 => Some(QueueKind::Control),
        1 => Some(QueueKind::Cursor),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_is_ready_only_with_size_addresses_kick_and_enable() {
        let mut v = Vring::default();
        assert!(!v.ready());
        v.size = Some(256);
        v.addrs = Some(RingAddrs {
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
        });
        v.kick = Some(std::fs::File::open("/dev/null").unwrap().into());
        assert!(!v.ready(), "not enabled yet");
        v.enabled = true;
        assert!(v.ready());
        v.started = true;
        assert!(!v.ready(), "already running");
        let s = v.setup(5, true).unwrap();
        assert_eq!(
            (s.size, s.next_avail, s.next_used, s.event_idx),
            (256, 0, 5, true)
        );
    }
}
