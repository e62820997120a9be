//! The frontend's memory table: guest RAM regions, each an fd the
//! frontend shares, mapped here and handed to the device as one
//! `GuestMemoryMmap`.
//!
//! vhost-user addresses rings by the frontend's *virtual* addresses
//! (`userspace_addr`), so the table also translates those to guest-physical
//! addresses, which is what the device's queues use.

use std::fmt;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserMsgValidator};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::backing::GuestMem;

/// Most regions the table holds (answered to `GET_MAX_MEM_SLOTS`).
pub const MAX_REGIONS: usize = 32;

/// Where one region lives, as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
    pub mmap_offset: u64,
}

impl RegionInfo {
    pub fn from_wire(r: &VhostUserMemoryRegion) -> RegionInfo {
        RegionInfo {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        }
    }
}

/// Why a region was refused.
#[derive(Debug)]
pub enum MemoryError {
    /// Zero size, or an address range that wraps.
    BadRegion(RegionInfo),
    /// `mmap_offset + memory_size` lies beyond the end of the file.
    BeyondFile {
        region: RegionInfo,
        file_size: u64,
    },
    Map(RegionInfo, String),
    Overlap(String),
    TooManyRegions,
    /// `REM_MEM_REG` named a region the table does not hold.
    NoSuchRegion(RegionInfo),
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::BadRegion(r) => write!(f, "invalid memory region {r:x?}"),
            MemoryError::BeyondFile { region, file_size } => write!(
                f,
                "memory region {region:x?} ends beyond its {file_size}-byte file"
            ),
            MemoryError::Map(r, e) => write!(f, "cannot map memory region {r:x?}: {e}"),
            MemoryError::Overlap(e) => write!(f, "memory regions overlap: {e}"),
            MemoryError::TooManyRegions => write!(f, "more than {MAX_REGIONS} memory regions"),
            MemoryError::NoSuchRegion(r) => write!(f, "no memory region {r:x?} to remove"),
        }
    }
}

impl std::error::Error for MemoryError {}

struct Mapped {
    info: RegionInfo,
    region: Arc<GuestRegionMmap<()>>,
}

/// The regions currently mapped.
#[derive(Default)]
pub struct MemoryTable {
    regions: Vec<Mapped>,
}

impl MemoryTable {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// `SET_MEM_TABLE`: maps every region first, so a bad one leaves the
    /// old table in place.
    pub fn replace(&mut self, regions: Vec<(RegionInfo, OwnedFd)>) -> Result<(), MemoryError> {
        if regions.len() > MAX_REGIONS {
            return Err(MemoryError::TooManyRegions);
        }
        let mut mapped = Vec::with_capacity(regions.len());
        for (info, fd) in regions {
            mapped.push(map(info, fd)?);
        }
        let candidate = MemoryTable { regions: mapped };
        candidate.guest_memory()?;
        *self = candidate;
        Ok(())
    }

    /// `ADD_MEM_REG`.
    pub fn add(&mut self, info: RegionInfo, fd: OwnedFd) -> Result<(), MemoryError> {
        if self.regions.len() >= MAX_REGIONS {
            return Err(MemoryError::TooManyRegions);
        }
        self.regions.push(map(info, fd)?);
        if let Err(e) = self.guest_memory() {
            self.regions.pop();
            return Err(e);
        }
        Ok(())
    }

    /// `REM_MEM_REG`: the region with this guest address, size and
    /// userspace address.
    pub fn remove(&mut self, info: RegionInfo) -> Result<(), MemoryError> {
        let at = self.regions.iter().position(|m| {
            m.info.guest_phys_addr == info.guest_phys_addr
                && m.info.memory_size == info.memory_size
                && m.info.userspace_addr == info.userspace_addr
        });
        match at {
            Some(i) => {
                self.regions.remove(i);
                Ok(())
            }
            None => Err(MemoryError::NoSuchRegion(info)),
        }
    }

    /// The device's view: every region at its guest-physical address.
    pub fn guest_memory(&self) -> Result<GuestMem, MemoryError> {
        if self.regions.is_empty() {
            return Ok(GuestMemoryMmap::new());
        }
        let mut regions: Vec<_> = self.regions.iter().map(|m| m.region.clone()).collect();
        regions.sort_by_key(|r| r.start_addr());
        GuestMemoryMmap::from_arc_regions(regions).map_err(|e| MemoryError::Overlap(e.to_string()))
    }

    /// Translates a frontend virtual address to a guest-physical one.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions.iter().find_map(|m| {
            let off = va.checked_sub(m.info.userspace_addr)?;
            (off < m.info.memory_size).then(|| m.info.guest_phys_addr + off)
        })
    }
}

fn map(info: RegionInfo, fd: OwnedFd) -> Result<Mapped, MemoryError> {
    let wire = VhostUserMemoryRegion::new(
        info.guest_phys_addr,
        info.memory_size,
        info.userspace_addr,
        info.mmap_offset,
    );
    let size = usize::try_from(info.memory_size).map_err(|_| MemoryError::BadRegion(info))?;
    if !wire.is_valid() {
        return Err(MemoryError::BadRegion(info));
    }
    let file = File::from(fd);
    // A mapping past the end of a file faults (SIGBUS) on first touch, so a
    // regular file (memfd, hugetlbfs, tmpfs) must be long enough. Other
    // kinds (device memory) are mapped as given.
    if let Ok(meta) = file.metadata() {
        let end = info.mmap_offset.saturating_add(info.memory_size);
        if meta.is_file() && end > meta.len() {
            return Err(MemoryError::BeyondFile {
                region: info,
                file_size: meta.len(),
            });
        }
    }
    let mapping = MmapRegion::<()>::from_file(FileOffset::new(file, info.mmap_offset), size)
        .map_err(|e| MemoryError::Map(info, e.to_string()))?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(info.guest_phys_addr))
        .ok_or(MemoryError::BadRegion(info))?;
    Ok(Mapped {
        info,
        region: Arc::new(region),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;
    use vm_memory::GuestMemoryBackend;

    fn memfd(size: u64) -> OwnedFd {
        // SAFETY: a static NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(c"test-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
        fd
    }

    fn info(gpa: u64, size: u64, va: u64, off: u64) -> RegionInfo {
        RegionInfo {
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: va,
            mmap_offset: off,
        }
    }

    #[test]
    fn translates_frontend_addresses_through_the_right_region() {
        let mut t = MemoryTable::default();
        t.add(info(0, 1 << 20, 0x7f00_0000_0000, 0), memfd(2 << 20))
            .unwrap();
        t.add(
            info(1 << 32, 1 << 20, 0x7e00_0000_0000, 1 << 20),
            memfd(2 << 20),
        )
        .unwrap();
        assert_eq!(t.va_to_gpa(0x7f00_0000_1000), Some(0x1000));
        assert_eq!(t.va_to_gpa(0x7e00_0000_0010), Some((1 << 32) + 0x10));
        assert_eq!(t.va_to_gpa(0x7f00_0010_0000), None);
        assert_eq!(t.guest_memory().unwrap().num_regions(), 2);
        t.remove(info(0, 1 << 20, 0x7f00_0000_0000, 0)).unwrap();
        assert_eq!(t.va_to_gpa(0x7f00_0000_1000), None);
    }

    #[test]
    fn refuses_regions_past_the_file_end_and_overlaps() {
        let mut t = MemoryTable::default();
        assert!(matches!(
            t.add(info(0, 2 << 20, 0x1000_0000, 0), memfd(1 << 20)),
            Err(MemoryError::BeyondFile { .. })
        ));
        t.add(info(0, 1 << 20, 0x1000_0000, 0), memfd(1 << 20))
            .unwrap();
        assert!(matches!(
            t.add(info(0x8_0000, 1 << 20, 0x2000_0000, 0), memfd(1 << 20)),
            Err(MemoryError::Overlap(_))
        ));
        assert_eq!(t.len(), 1);
        assert!(matches!(
            t.add(info(0, 0, 0, 0), memfd(1 << 20)),
            Err(MemoryError::BadRegion(_))
        ));
    }
}
