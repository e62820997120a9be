//! `struct virtio_gpu_config`: the 16-byte device configuration space the
//! driver reads at start-up and on a config-change interrupt.

use super::wire::{CONFIG_SIZE, VIRTIO_GPU_EVENT_DISPLAY};

/// The GPU device configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuConfig {
    /// Pending events (`VIRTIO_GPU_EVENT_*`); read-only for the driver.
    pub events_read: u32,
    /// Written by the driver: each 1 bit clears that bit of `events_read`.
    pub events_clear: u32,
    /// Scanouts the device has, 1..=16.
    pub num_scanouts: u32,
    /// Capsets the device offers.
    pub num_capsets: u32,
}

impl GpuConfig {
    /// Wire size.
    pub const SIZE: usize = CONFIG_SIZE;

    /// The little-endian layout the driver reads.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut out = [0u8; CONFIG_SIZE];
        let fields = [
            self.events_read,
            self.events_clear,
            self.num_scanouts,
            self.num_capsets,
        ];
        for (chunk, v) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses the layout (the guest side reading config space).
    pub fn from_bytes(bytes: &[u8; CONFIG_SIZE]) -> Self {
        let mut f = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut next = || f.next().unwrap_or(0);
        Self {
            events_read: next(),
            events_clear: next(),
            num_scanouts: next(),
            num_capsets: next(),
        }
    }

    /// Applies a driver write to `events_clear` (write-to-clear).
    pub fn clear_events(&mut self, mask: u32) {
        self.events_read &= !mask;
        self.events_clear = 0;
    }

    /// Raises `VIRTIO_GPU_EVENT_DISPLAY` (the display configuration changed).
    pub fn signal_display_change(&mut self) {
        self.events_read |= VIRTIO_GPU_EVENT_DISPLAY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_in_spec_field_order() {
        let c = GpuConfig {
            events_read: 1,
            events_clear: 0,
            num_scanouts: 4,
            num_capsets: 2,
        };
        let b = c.to_bytes();
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(GpuConfig::from_bytes(&b), c);
    }

    #[test]
    fn display_event_is_raised_and_cleared_by_write_to_clear() {
        let mut c = GpuConfig {
            num_scanouts: 1,
            ..GpuConfig::default()
        };
        c.signal_display_change();
        assert_eq!(c.events_read, VIRTIO_GPU_EVENT_DISPLAY);
        c.clear_events(VIRTIO_GPU_EVENT_DISPLAY);
        assert_eq!(c.events_read, 0);
    }
}
