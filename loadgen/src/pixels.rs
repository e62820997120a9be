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

/// Checks a whole-scanout update that a backend sent in place of partial
/// updates a slow display had not taken yet: it holds many frames' tiles,
/// so every pixel must be a colour of `desktop` or still black.
pub fn check_refresh(desktop: usize, pixels: &[u8]) -> bool {
    pixels.len().is_multiple_of(4)
        && pixels.chunks_exact(4).all(|w| {
            let c = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            c == 0 || (c >> 24 == 0xff && desktop_of(c) == desktop & 0xff)
        })
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

    #[test]
    fn a_refresh_may_mix_frames_and_black_but_not_desktops() {
        let mixed: Vec<u8> = [colour(3, 1), 0, colour(3, 9)]
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        assert!(check_refresh(3, &mixed));
        assert!(!check_refresh(4, &mixed));
        let mut foreign = mixed.clone();
        foreign.extend_from_slice(&colour(5, 1).to_le_bytes());
        assert!(!check_refresh(3, &foreign));
        assert!(!check_refresh(3, &[0, 0, 0]));
    }
}
