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
    /// Linear offset of each entry's first byte (ascending), so a span is
    /// found by binary search: a Linux guest's framebuffer is a thousand
    /// 4 KiB entries and a flush reads it row by row.
    starts: Vec<u64>,
    len: u64,
}

impl Backing {
    /// Checks every entry lies inside guest memory.
    pub fn new(entries: Vec<MemEntry>, mem: &GuestMem) -> Result<Backing, ProtocolError> {
        let mut len = 0u64;
        let mut starts = Vec::with_capacity(entries.len());
        for e in &entries {
            starts.push(len);
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
        Ok(Backing {
            entries,
            starts,
            len,
        })
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
        // The last entry starting at or before `offset`.
        let first = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let mut pos = self.starts.get(first).copied().unwrap_or(0); // linear start of `e`
        let mut done = 0usize;
        for e in self.entries.iter().skip(first) {
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

    /// Appends `len` bytes starting at linear `offset` to `out`, copied
    /// straight from guest memory into `out`'s spare capacity.
    pub fn append(
        &self,
        mem: &GuestMem,
        offset: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        out.reserve(len);
        self.spans(offset, len, |addr, _, n| {
            mem.write_all_volatile_to(addr, out, n).map_err(|_| {
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
    fn append_matches_read_anywhere_in_many_small_entries() {
        let m = mem();
        // 64 entries of 40 bytes, in reverse order through guest memory
        // (the search must not assume ascending addresses), and one empty.
        let mut entries: Vec<MemEntry> = (0..64u64)
            .map(|i| MemEntry {
                addr: 0x8000 - i * 0x100,
                length: 40,
            })
            .collect();
        entries.insert(10, MemEntry { addr: 0, length: 0 });
        let b = Backing::new(entries, &m).unwrap();
        let bytes: Vec<u8> = (0..b.len()).map(|i| (i * 7 % 251) as u8).collect();
        b.write(&m, 0, &bytes).unwrap();
        for (offset, len) in [
            (0, 1),
            (39, 2),
            (40, 40),
            (399, 41),
            (1000, 1560),
            (2559, 1),
        ] {
            let mut want = vec![0u8; len];
            b.read(&m, offset, &mut want).unwrap();
            assert_eq!(want, bytes[offset as usize..offset as usize + len]);
            let mut out = vec![0xee];
            b.append(&m, offset, len, &mut out).unwrap();
            assert_eq!(out[0], 0xee, "append keeps what was there");
            assert_eq!(&out[1..], &want[..], "offset {offset} len {len}");
        }
        assert!(b.append(&m, 2550, 20, &mut Vec::new()).is_err());
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
