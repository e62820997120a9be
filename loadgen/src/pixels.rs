//! The pixels a desktop draws, and the check the display side runs on what
//! arrives: every frame fills its damaged rectangle with one colour that
//! encodes (desktop, frame), so a check is a scan, and a wrong, stale or
//! torn update is caught.

/// The colour desktop `desktop` draws in frame `frame` (B8G8R8X8).
pub fn colour(desktop: usize, frame: u64) -> u32 {
    0xff00_0000 | ((desktop as u32 & 0xff) << 16) | (frame as u32 & 0xffff)
}

/// The desktop a colour names.
pub fn desktop_of(c: u32) -> usize {
    ((c >> 16) & 0xff) as usize
}

/// Checks an update for `desktop`: every pixel the same colour of that
/// desktop. Returns the frame number (low 16 bits) on success.
pub fn check(desktop: usize, pixels: &[u8]) -> Option<u16> {
    let mut words = pixels.chunks_exact(4);
    let first = words.next()?;
    let c = u32::from_le_bytes([first[0], first[1], first[2], first[3]]);
    if desktop_of(c) != desktop & 0xff || c >> 24 != 0xff {
        return None;
    }
    let all_same = pixels.chunks_exact(4).all(|w| w == first);
    (all_same && pixels.len().is_multiple_of(4)).then_some(c as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_accepts_a_uniform_frame_and_rejects_torn_or_foreign_ones() {
        let c = colour(3, 77);
        let good: Vec<u8> = std::iter::repeat_n(c.to_le_bytes(), 100)
            .flatten()
            .collect();
        assert_eq!(check(3, &good), Some(77));
        assert_eq!(check(4, &good), None, "another desktop's pixels");
        let mut torn = good.clone();
        torn[200] ^= 1;
        assert_eq!(check(3, &torn), None);
        assert_eq!(check(3, &[]), None);
    }
}
