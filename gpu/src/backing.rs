//! Guest pages behind a resource (`RESOURCE_ATTACH_BACKING`): a list of
//! guest-physical spans, checked once against guest memory, read and written
//! as one linear byte range.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::protocol::{MemEntry, ProtocolError};

/// Guest memory as the device sees it (shared by every shard; replaced as a
/// whole when the VMM sends a new memory table).
pub type GuestMem = GuestMemoryMmap<()>;

/// A resource's backing: spans of guest memory, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    entries: Vec<MemEntry>,
    len: u64,
}

impl Backing {
    /// Checks every entry lies inside guest memory.
    pub fn new(entries: Vec<MemEntry>, mem: &GuestMem) -> Result<Backing, ProtocolError> {
        let mut len = 0u64;
        for e in &entries {
            let inside = mem.check_range(
                GuestAddress(e.addr),
                e.length as usize,
                Permissions::ReadWrite,
            );
            if !inside {
                return Err(ProtocolError::BackingBeyondGuestMemory {
                    addr: e.addr,
                    length: e.length,
                });
            }
            len += u64::from(e.length);
        }
        Ok(Backing { entries, len })
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn entries(&self) -> &[MemEntry] {
        &self.entries
    }

    /// Calls `f(guest_addr, offset_in_dst, len)` for each span of
    /// `[offset, offset + len)` of the linear backing.
    fn spans(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or(ProtocolError::TransferBeyondBacking {
                needed: offset.saturating_add(len as u64),
                backing: self.len,
            })?;
        let mut pos = 0u64; // linear start of the current entry
        let mut done = 0usize;
        for e in &self.entries {
            let e_end = pos + u64::from(e.length);
            let from = offset.max(pos);
            let to = end.min(e_end);
            if from < to {
                let n = (to - from) as usize;
                f(GuestAddress(e.addr + (from - pos)), done, n)?;
                done += n;
            }
            if e_end >= end {
                break;
            }
            pos = e_end;
        }
        Ok(())
    }

    /// Copies `dst.len()` bytes starting at linear `offset` out of guest memory.
    pub fn read(&self, mem: &GuestMem, offset: u64, dst: &mut [u8]) -> Result<(), ProtocolError> {
        let len = dst.len();
        self.spans(offset, len, |addr, at, n| {
            mem.read_slice(&mut dst[at..at + n], addr).map_err(|_| {
                ProtocolError::BackingBeyondGuestMemory {
                    addr: addr.0,
                    length: n as u32,
                }
            })
        })
    }

    /// Copies `src` into guest memory at linear `offset`.
    pub fn write(&self, mem: &GuestMem, offset: u64, src: &[u8]) -> Result<(), ProtocolError> {
        self.spans(offset, src.len(), |addr, at, n| {
            mem.write_slice(&src[at..at + n], addr).map_err(|_| {
                ProtocolError::BackingBeyondGuestMemory {
                    addr: addr.0,
                    length: n as u32,
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn reads_and_writes_span_entries_in_order() {
        let m = mem();
        let b = Backing::new(
            vec![
                MemEntry {
                    addr: 0x3000,
                    length: 4,
                },
                MemEntry {
                    addr: 0x1000,
                    length: 4,
                },
            ],
            &m,
        )
        .unwrap();
        b.write(&m, 2, &[1, 2, 3, 4]).unwrap();
        let mut lo = [0u8; 4];
        m.read_slice(&mut lo, GuestAddress(0x3000)).unwrap();
        assert_eq!(lo, [0, 0, 1, 2]);
        let mut out = [0u8; 4];
        b.read(&m, 2, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
    }

    #[test]
    fn entry_outside_guest_memory_is_refused() {
        let e = Backing::new(
            vec![MemEntry {
                addr: 0xfff0,
                length: 0x20,
            }],
            &mem(),
        );
        assert!(matches!(
            e,
            Err(ProtocolError::BackingBeyondGuestMemory { .. })
        ));
    }

    #[test]
    fn access_past_the_end_is_refused() {
        let m = mem();
        let b = Backing::new(vec![MemEntry { addr: 0, length: 8 }], &m).unwrap();
        let mut out = [0u8; 4];
        assert!(matches!(
            b.read(&m, 6, &mut out),
            Err(ProtocolError::TransferBeyondBacking { .. })
        ));
    }
}
