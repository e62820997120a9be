//! `GET_CONFIG`/`SET_CONFIG`: the 16-byte `virtio_gpu_config` as the
//! frontend reads and writes it. `events_clear` is write-to-clear (each 1
//! bit clears that bit of `events_read`); the other fields are read-only.
//!
//! `events_read` is shared: the session reads and clears it, the display
//! link raises `VIRTIO_GPU_EVENT_DISPLAY` from a reactor task when the VMM's
//! display configuration changed (see `Backend::start`).

use std::fmt;
use std::mem;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserConfig, VhostUserConfigFlags};

use super::frame;
use crate::protocol::GpuConfig;

/// Offset of `events_clear` in `virtio_gpu_config`.
const EVENTS_CLEAR: usize = 4;
const HEADER: usize = mem::size_of::<VhostUserConfig>();

/// A config access the frontend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigAccess {
    pub offset: u32,
    pub size: u32,
    pub flags: u32,
    /// The bytes written (`SET_CONFIG`); `size` zeros for `GET_CONFIG`.
    pub data: Vec<u8>,
}

/// Why a config access failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The payload is not `VhostUserConfig` followed by `size` bytes.
    Malformed(String),
    /// The range is outside the 16-byte config space.
    OutOfRange { offset: u32, size: u32 },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Malformed(why) => write!(f, "malformed config message: {why}"),
            ConfigError::OutOfRange { offset, size } => write!(
                f,
                "config access [{offset}, {offset}+{size}) outside the {}-byte virtio_gpu_config",
                GpuConfig::SIZE
            ),
        }
    }
}

impl ConfigAccess {
    /// Decodes the payload of `GET_CONFIG` or `SET_CONFIG`.
    pub fn parse(payload: &[u8]) -> Result<ConfigAccess, ConfigError> {
        let head = payload
            .get(..HEADER)
            .and_then(frame::parse::<VhostUserConfig>)
            .ok_or_else(|| ConfigError::Malformed(format!("{} bytes", payload.len())))?;
        let (offset, size, flags) = (head.offset, head.size, head.flags);
        if VhostUserConfigFlags::from_bits(flags).is_none() {
            return Err(ConfigError::Malformed(format!("unknown flags {flags:#x}")));
        }
        let data = &payload[HEADER..];
        if data.len() != size as usize {
            return Err(ConfigError::Malformed(format!(
                "size {size} but {} data bytes",
                data.len()
            )));
        }
        Ok(ConfigAccess {
            offset,
            size,
            flags,
            data: data.to_vec(),
        })
    }

    fn range(&self) -> Result<std::ops::Range<usize>, ConfigError> {
        let start = self.offset as usize;
        match start.checked_add(self.size as usize) {
            Some(end) if self.size > 0 && end <= GpuConfig::SIZE => Ok(start..end),
            _ => Err(ConfigError::OutOfRange {
                offset: self.offset,
                size: self.size,
            }),
        }
    }

    /// The reply payload: the same `VhostUserConfig` and the bytes read.
    /// A failed read answers with size 0, which frontends treat as an error.
    pub fn reply(&self, bytes: Option<&[u8]>) -> Vec<u8> {
        let size = bytes.map_or(0, |b| b.len() as u32);
        let flags = VhostUserConfigFlags::from_bits_truncate(self.flags);
        let head = VhostUserConfig::new(self.offset, size, flags);
        let mut out = Vec::with_capacity(HEADER + size as usize);
        out.extend_from_slice(vm_memory::ByteValued::as_slice(&head));
        out.extend_from_slice(bytes.unwrap_or(&[]));
        out
    }
}

/// The config state the backend keeps: pending events. Clones share it.
#[derive(Debug, Default, Clone)]
pub struct ConfigSpace {
    events_read: Arc<AtomicU32>,
}

impl ConfigSpace {
    fn current(&self, device: GpuConfig) -> GpuConfig {
        GpuConfig {
            events_read: self.events_read(),
            events_clear: 0,
            ..device
        }
    }

    /// Pending events (`VIRTIO_GPU_EVENT_*`).
    pub fn events_read(&self) -> u32 {
        self.events_read.load(Ordering::Acquire)
    }

    /// Raises `VIRTIO_GPU_EVENT_DISPLAY`.
    pub fn raise_display_event(&self) {
        let mut c = GpuConfig::default();
        c.signal_display_change();
        self.events_read.fetch_or(c.events_read, Ordering::AcqRel);
    }

    /// No events pending (device reset, new session).
    pub fn reset(&self) {
        self.events_read.store(0, Ordering::Release);
    }

    /// `GET_CONFIG`: the requested bytes of the current config.
    pub fn read(&self, device: GpuConfig, access: &ConfigAccess) -> Result<Vec<u8>, ConfigError> {
        let range = access.range()?;
        Ok(self.current(device).to_bytes()[range].to_vec())
    }

    /// `SET_CONFIG`: applies a write to `events_clear`; writes to read-only
    /// fields are ignored, as a device ignores them. Returns the bits the
    /// driver wrote to `events_clear` (QEMU, which keeps `events_read`
    /// itself, still forwards them: they say the guest handled an event).
    pub fn write(&self, access: &ConfigAccess) -> Result<u32, ConfigError> {
        let range = access.range()?;
        // Only the bytes written count: a field not written clears nothing.
        let mut written = [0u8; GpuConfig::SIZE];
        for (dst, src) in written[range].iter_mut().zip(&access.data) {
            *dst = *src;
        }
        let clear = u32::from_le_bytes([
            written[EVENTS_CLEAR],
            written[EVENTS_CLEAR + 1],
            written[EVENTS_CLEAR + 2],
            written[EVENTS_CLEAR + 3],
        ]);
        if clear != 0 {
            self.events_read.fetch_and(!clear, Ordering::AcqRel);
        }
        Ok(clear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::wire::VIRTIO_GPU_EVENT_DISPLAY;

    fn access(offset: u32, data: &[u8]) -> ConfigAccess {
        let head = VhostUserConfig::new(offset, data.len() as u32, VhostUserConfigFlags::WRITABLE);
        let mut p = vm_memory::ByteValued::as_slice(&head).to_vec();
        p.extend_from_slice(data);
        ConfigAccess::parse(&p).unwrap()
    }

    const DEV: GpuConfig = GpuConfig {
        events_read: 0,
        events_clear: 0,
        num_scanouts: 2,
        num_capsets: 1,
    };

    #[test]
    fn reads_fields_at_their_offsets() {
        let c = ConfigSpace::default();
        assert_eq!(
            c.read(DEV, &access(8, &[0; 4])).unwrap(),
            2u32.to_le_bytes()
        );
        assert_eq!(
            c.read(DEV, &access(12, &[0; 4])).unwrap(),
            1u32.to_le_bytes()
        );
        assert!(c.read(DEV, &access(12, &[0; 8])).is_err());
        assert!(c.read(DEV, &access(0, &[])).is_err());
    }

    #[test]
    fn events_clear_is_write_to_clear_and_other_fields_are_read_only() {
        let c = ConfigSpace::default();
        c.raise_display_event();
        assert_eq!(c.events_read(), VIRTIO_GPU_EVENT_DISPLAY);
        assert_eq!(c.read(DEV, &access(0, &[0; 4])).unwrap(), [1, 0, 0, 0]);
        assert_eq!(c.write(&access(8, &[9, 0, 0, 0])).unwrap(), 0);
        assert_eq!(
            c.read(DEV, &access(8, &[0; 4])).unwrap(),
            2u32.to_le_bytes()
        );
        assert_eq!(
            c.write(&access(4, &VIRTIO_GPU_EVENT_DISPLAY.to_le_bytes()))
                .unwrap(),
            VIRTIO_GPU_EVENT_DISPLAY
        );
        assert_eq!(c.read(DEV, &access(0, &[0; 8])).unwrap(), [0; 8]);
        // A clone is the same config (the display link raises through one).
        c.clone().raise_display_event();
        assert_eq!(c.read(DEV, &access(0, &[0; 4])).unwrap(), [1, 0, 0, 0]);
        c.reset();
        assert_eq!(c.events_read(), 0);
    }

    #[test]
    fn payload_size_must_match_the_announced_size() {
        let head = VhostUserConfig::new(0, 16, VhostUserConfigFlags::empty());
        let p = vm_memory::ByteValued::as_slice(&head).to_vec();
        assert!(matches!(
            ConfigAccess::parse(&p),
            Err(ConfigError::Malformed(_))
        ));
    }
}
