//! Hostile bytes: every truncation and many single-field corruptions of
//! every valid request must decode to `Ok` or an error, never a panic, and
//! never allocate more than the input's size allows.

use super::*;

/// Deterministic xorshift, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn every_truncation_of_every_request_is_decoded_without_panic() {
    let ctx = full_ctx();
    for req in sample_requests() {
        let bytes = req.to_bytes();
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut], &ctx);
            let _ = decode_cursor(&bytes[..cut], &ctx);
        }
    }
}

#[test]
fn randomly_corrupted_requests_are_decoded_without_panic() {
    let ctx = full_ctx();
    let samples: Vec<Vec<u8>> = sample_requests().iter().map(Request::to_bytes).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let interesting = [
        0u32,
        1,
        63,
        64,
        0xff,
        0x100,
        0x7fff_ffff,
        0x8000_0000,
        u32::MAX - 1,
        u32::MAX,
    ];
    for _ in 0..20_000 {
        let mut bytes = samples[(rng.next() % samples.len() as u64) as usize].clone();
        let edits = 1 + rng.next() % 3;
        for _ in 0..edits {
            let at = (rng.next() as usize % bytes.len()) & !3;
            let v = if rng.next() & 1 == 0 {
                interesting[(rng.next() % interesting.len() as u64) as usize]
            } else {
                rng.next() as u32
            };
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        let cut = bytes.len() - (rng.next() as usize % 8).min(bytes.len());
        if let Ok(req) = decode(&bytes[..cut], &ctx).or_else(|_| decode_cursor(&bytes[..cut], &ctx))
        {
            // Whatever decodes re-encodes to something that decodes the same.
            assert_eq!(decode_any(&req.to_bytes(), &ctx), Ok(req));
        }
    }
}

#[test]
fn random_response_bytes_are_decoded_without_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..5_000 {
        let len = (rng.next() % 1200) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if bytes.len() >= 4 {
            let kind = 0x1100 + (rng.next() % 0x120) as u32;
            bytes[..4].copy_from_slice(&kind.to_le_bytes());
        }
        let _ = Response::decode(&bytes);
    }
}
