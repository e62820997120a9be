//! Little-endian reading and writing of wire structs.
//!
//! [`ByteReader`] is a bounded cursor over bytes the guest wrote: every read
//! is checked against the end and fails with
//! [`ProtocolError::ShortCommand`] instead of panicking, so the decoders can
//! read fields in spec order without doing index arithmetic themselves.
//! The `put_*` functions append to a `Vec<u8>` for the encoders.

use super::error::ProtocolError;

/// A bounded little-endian cursor over a request's bytes.
#[derive(Debug, Clone)]
pub struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left after the cursor.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next `n` bytes, or `ShortCommand` naming how many bytes the
    /// whole request would need.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let short = || ProtocolError::ShortCommand {
            needed: self.pos.saturating_add(n),
            got: self.buf.len(),
        };
        let end = self.pos.checked_add(n).ok_or_else(short)?;
        let out = self.buf.get(self.pos..end).ok_or_else(short)?;
        self.pos = end;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// Skip `n` bytes (padding).
    pub fn skip(&mut self, n: usize) -> Result<(), ProtocolError> {
        self.bytes(n).map(|_| ())
    }

    /// Fail with `ShortCommand` unless `n` more bytes are present; lets a
    /// decoder check a whole struct before reading its first field.
    pub fn require(&self, n: usize) -> Result<(), ProtocolError> {
        if self.remaining() < n {
            return Err(ProtocolError::ShortCommand {
                needed: self.pos.saturating_add(n),
                got: self.buf.len(),
            });
        }
        Ok(())
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    /// A `le32`.
    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A `le64`.
    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// `N` consecutive `le32`s.
    pub fn u32_array<const N: usize>(&mut self) -> Result<[u32; N], ProtocolError> {
        let mut out = [0u32; N];
        for v in &mut out {
            *v = self.u32()?;
        }
        Ok(out)
    }
}

/// Append a `le32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append a `le64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Append `n` zero bytes (padding).
pub fn put_zeros(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_little_endian_in_order() {
        let bytes = [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut r = ByteReader::new(&bytes);
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(r.u64().unwrap(), 2);
        assert_eq!(r.u8().unwrap(), 9);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn read_past_end_is_short_command_with_total_needed() {
        let bytes = [0u8; 6];
        let mut r = ByteReader::new(&bytes);
        r.u32().unwrap();
        assert_eq!(
            r.u32(),
            Err(ProtocolError::ShortCommand { needed: 8, got: 6 })
        );
        // The failed read consumed nothing.
        assert_eq!(r.position(), 4);
    }

    #[test]
    fn huge_length_does_not_overflow_the_cursor() {
        let mut r = ByteReader::new(&[0u8; 4]);
        r.skip(2).unwrap();
        assert_eq!(
            r.bytes(usize::MAX),
            Err(ProtocolError::ShortCommand {
                needed: usize::MAX,
                got: 4
            })
        );
    }

    #[test]
    fn writers_append_little_endian() {
        let mut out = Vec::new();
        put_u32(&mut out, 0x0403_0201);
        put_u64(&mut out, 5);
        put_zeros(&mut out, 2);
        assert_eq!(out, [1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
