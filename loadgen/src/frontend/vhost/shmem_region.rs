//! The host-visible shared memory region the VMM owns: an address range
//! reserved `PROT_NONE`, into which backend `SHMEM_MAP` requests map their
//! file descriptors (`MAP_FIXED`) and out of which `SHMEM_UNMAP` takes them
//! (back to an inaccessible reservation). In a real VMM this range is a PCI
//! BAR the guest sees; loadgen only keeps it so the backend's requests are
//! carried out for real.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// mmap granularity.
const PAGE: u64 = 4096;

/// Why a map or unmap was refused.
#[derive(Debug)]
pub enum ShmemError {
    /// `[offset, offset + len)` is not inside the region (or `len` is 0).
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// An offset or the length is not page aligned.
    Misaligned {
        shm_offset: u64,
        fd_offset: u64,
        len: u64,
    },
    /// The range overlaps a live mapping at `existing`.
    Overlaps { existing: u64 },
    /// No mapping is exactly `[offset, offset + len)`.
    NotMapped { offset: u64, len: u64 },
    /// The kernel refused the mmap.
    Mmap(io::Error),
}

impl fmt::Display for ShmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { offset, len, size } => write!(
                f,
                "range {offset:#x}+{len:#x} is outside the {size:#x}-byte region"
            ),
            Self::Misaligned {
                shm_offset,
                fd_offset,
                len,
            } => write!(
                f,
                "not page aligned: shm offset {shm_offset:#x}, fd offset {fd_offset:#x}, len {len:#x}"
            ),
            Self::Overlaps { existing } => {
                write!(f, "overlaps the mapping at {existing:#x}")
            }
            Self::NotMapped { offset, len } => write!(f, "no mapping at {offset:#x}+{len:#x}"),
            Self::Mmap(e) => write!(f, "mmap: {e}"),
        }
    }
}

impl std::error::Error for ShmemError {}

impl ShmemError {
    /// The errno a backend gets back in a failed ack.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Mmap(e) => e.raw_os_error().unwrap_or(libc::EINVAL),
            Self::Overlaps { .. } => libc::EEXIST,
            Self::NotMapped { .. } => libc::ENOENT,
            _ => libc::EINVAL,
        }
    }
}

/// One live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmemMapping {
    pub offset: u64,
    pub len: u64,
    pub writable: bool,
}

/// The reserved range and what is mapped in it.
pub struct HostVisibleRegion {
    /// Start of the reservation in this process (an address, never
    /// dereferenced outside this file).
    base: usize,
    size: u64,
    /// Live mappings by offset. Held across the mmap calls so two requests
    /// can never map over each other.
    mappings: Mutex<BTreeMap<u64, ShmemMapping>>,
}

impl fmt::Debug for HostVisibleRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostVisibleRegion")
            .field("size", &self.size)
            .field("mappings", &self.lock().len())
            .finish()
    }
}

impl HostVisibleRegion {
    /// Reserves `size` bytes (rounded up to a page) of address space that
    /// is neither readable nor backed until something is mapped in.
    pub fn reserve(size: u64) -> io::Result<Self> {
        let size = size
            .checked_add(PAGE - 1)
            .map(|s| s & !(PAGE - 1))
            .filter(|&s| s > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let len = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh anonymous PROT_NONE reservation at an address the
        // kernel picks: it cannot alias any memory Rust knows about.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: p as usize,
            size,
            mappings: Mutex::new(BTreeMap::new()),
        })
    }

    /// Bytes reserved.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The live mappings, by offset.
    pub fn mappings(&self) -> Vec<ShmemMapping> {
        self.lock().values().copied().collect()
    }

    /// Maps `len` bytes of `fd` from `fd_offset` at `shm_offset`.
    pub fn map(
        &self,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        shm_offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ShmemError> {
        self.check_range(shm_offset, len)?;
        if ![shm_offset, fd_offset, len]
            .iter()
            .all(|v| v.is_multiple_of(PAGE))
        {
            return Err(ShmemError::Misaligned {
                shm_offset,
                fd_offset,
                len,
            });
        }
        let file_offset = libc::off_t::try_from(fd_offset).map_err(|_| ShmemError::Misaligned {
            shm_offset,
            fd_offset,
            len,
        })?;
        let mut maps = self.lock();
        if let Some(existing) = overlapping(&maps, shm_offset, len) {
            return Err(ShmemError::Overlaps { existing });
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // check_range bounded both values by the reservation, a usize.
        let (at, n) = (self.base + shm_offset as usize, len as usize);
        // SAFETY: `[at, at + n)` lies inside our own reservation (checked
        // above) and overlaps no live mapping (checked under the lock we
        // hold), so MAP_FIXED replaces only PROT_NONE pages no reference
        // points into. The fd is borrowed for the call; the mapping keeps
        // its own reference to the file.
        let p = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                n,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                file_offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(ShmemError::Mmap(io::Error::last_os_error()));
        }
        maps.insert(
            shm_offset,
            ShmemMapping {
                offset: shm_offset,
                len,
                writable,
            },
        );
        Ok(())
    }

    /// Unmaps the mapping that is exactly `[shm_offset, shm_offset + len)`,
    /// leaving the range reserved and inaccessible again.
    pub fn unmap(&self, shm_offset: u64, len: u64) -> Result<(), ShmemError> {
        self.check_range(shm_offset, len)?;
        let mut maps = self.lock();
        match maps.get(&shm_offset) {
            Some(m) if m.len == len => {}
            _ => {
                return Err(ShmemError::NotMapped {
                    offset: shm_offset,
                    len,
                })
            }
        }
        self.reserve_again(shm_offset, len)
            .map_err(ShmemError::Mmap)?;
        maps.remove(&shm_offset);
        Ok(())
    }

    /// Removes every mapping (a device reset voids them all, as QEMU drops
    /// a device's shared-memory mappings when it resets).
    pub fn unmap_all(&self) {
        let all: Vec<(u64, u64)> = self.lock().iter().map(|(o, m)| (*o, m.len)).collect();
        for (offset, len) in all {
            let _ = self.unmap(offset, len);
        }
    }

    /// Copies bytes out of one live mapping (a check that what the backend
    /// mapped is what it meant).
    pub fn read(&self, shm_offset: u64, buf: &mut [u8]) -> Result<(), ShmemError> {
        let maps = self.lock();
        Self::inside_one(&maps, shm_offset, buf.len() as u64, false)?;
        // SAFETY: the source range lies inside one live, readable mapping
        // (checked under the lock, which also keeps it from being unmapped
        // during the copy) and cannot overlap `buf`, which Rust owns. A
        // backend that shrinks the file behind the mapping could still raise
        // SIGBUS here; loadgen reads only when a check asks it to.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + shm_offset as usize) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies bytes into one live writable mapping (what the guest does
    /// through a mapped blob).
    pub fn write(&self, shm_offset: u64, buf: &[u8]) -> Result<(), ShmemError> {
        let maps = self.lock();
        Self::inside_one(&maps, shm_offset, buf.len() as u64, true)?;
        // SAFETY: the destination range lies inside one live mapping made
        // with PROT_WRITE (checked under the lock, which also keeps it from
        // being unmapped during the copy) and cannot overlap `buf`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                (self.base + shm_offset as usize) as *mut u8,
                buf.len(),
            );
        }
        Ok(())
    }

    /// Ok when `[offset, offset + len)` (not empty) lies inside one mapping
    /// of `maps`, a writable one if `write`.
    fn inside_one(
        maps: &BTreeMap<u64, ShmemMapping>,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<(), ShmemError> {
        let inside = maps.range(..=offset).next_back().is_some_and(|(_, m)| {
            (m.writable || !write) && offset.saturating_add(len) <= m.offset + m.len
        });
        if !inside || len == 0 {
            return Err(ShmemError::NotMapped { offset, len });
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ShmemError> {
        let end = offset.checked_add(len);
        if len == 0 || end.is_none_or(|e| e > self.size) {
            return Err(ShmemError::OutOfRange {
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn reserve_again(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: `[offset, offset + len)` is a whole mapping of ours inside
        // the reservation (the caller checked, holding the lock); replacing
        // it with PROT_NONE anonymous pages drops the backend's memory and
        // keeps the range reserved so nothing else is placed there.
        let p = unsafe {
            libc::mmap(
                (self.base + offset as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, ShmemMapping>> {
        self.mappings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HostVisibleRegion {
    fn drop(&mut self) {
        // SAFETY: the whole reservation (and every mapping inside it) is
        // ours; `&mut self` means no read is in progress.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.size as usize);
        }
    }
}

/// The offset of a live mapping that overlaps `[offset, offset + len)`.
fn overlapping(maps: &BTreeMap<u64, ShmemMapping>, offset: u64, len: u64) -> Option<u64> {
    let end = offset + len;
    if let Some((&at, m)) = maps.range(..end).next_back() {
        if at + m.len > offset {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    fn memfd(bytes: &[u8]) -> std::fs::File {
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"shmem-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd we own.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(bytes).unwrap();
        f.set_len(2 * PAGE).unwrap();
        f
    }

    #[test]
    fn a_mapped_file_is_readable_through_the_region_until_unmapped() {
        let r = HostVisibleRegion::reserve(1 << 20).unwrap();
        let f = memfd(b"blob bytes");
        r.map(f.as_fd(), 0, 8 * PAGE, 2 * PAGE, false).unwrap();
        let mut buf = [0u8; 10];
        r.read(8 * PAGE, &mut buf).unwrap();
        assert_eq!(&buf, b"blob bytes");
        // Read-only: the guest cannot write through it.
        assert!(r.write(8 * PAGE, b"x").is_err());
        r.unmap(8 * PAGE, 2 * PAGE).unwrap();
        assert!(r.read(8 * PAGE, &mut buf).is_err());
        assert!(r.mappings().is_empty());
    }

    #[test]
    fn a_writable_mapping_takes_writes_that_the_file_then_holds() {
        let r = HostVisibleRegion::reserve(1 << 20).unwrap();
        let mut f = memfd(b"");
        r.map(f.as_fd(), 0, 4 * PAGE, 2 * PAGE, true).unwrap();
        r.write(4 * PAGE + 3, b"pixels").unwrap();
        let mut back = [0u8; 9];
        std::io::Read::read_exact(&mut f, &mut back).unwrap();
        assert_eq!(&back, b"\0\0\0pixels");
        // Past the mapping's end, or across it, is refused.
        assert!(r.write(6 * PAGE, b"x").is_err());
        assert!(r.write(6 * PAGE - 2, b"xyz").is_err());
        assert!(r.write(4 * PAGE, b"").is_err());
    }

    #[test]
    fn overlapping_out_of_range_and_misaligned_maps_are_refused() {
        let r = HostVisibleRegion::reserve(16 * PAGE).unwrap();
        let f = memfd(b"x");
        r.map(f.as_fd(), 0, 4 * PAGE, 2 * PAGE, true).unwrap();
        assert!(matches!(
            r.map(f.as_fd(), 0, 5 * PAGE, PAGE, true),
            Err(ShmemError::Overlaps { existing }) if existing == 4 * PAGE
        ));
        assert!(matches!(
            r.map(f.as_fd(), 0, 15 * PAGE, 2 * PAGE, true),
            Err(ShmemError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.map(f.as_fd(), 1, 0, PAGE, true),
            Err(ShmemError::Misaligned { .. })
        ));
        assert!(matches!(
            r.unmap(4 * PAGE, PAGE),
            Err(ShmemError::NotMapped { .. })
        ));
        r.map(f.as_fd(), 0, 6 * PAGE, PAGE, true).unwrap();
    }
}
