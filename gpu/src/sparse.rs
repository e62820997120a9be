//! Maps keyed by guest ids give their tables back as they empty.
//!
//! A `HashMap` keeps the capacity of its fullest moment: a guest that made
//! 2048 contexts (a 32 MiB budget) with 64 rings each and destroyed them
//! would leave the fence timelines' and the sim's ring clocks' tables sized
//! for 131072 entries each, megabytes the budget no longer charges.
//! [`shrink_sparse`] is called after removals from such maps.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Capacity a map keeps however empty it gets (not worth a reallocation).
const KEEP: usize = 64;

/// Shrinks `map` to twice its length once it is less than a quarter full
/// (amortised: a shrink halves the capacity at least, and the map must
/// then lose half of what is left before the next one).
pub fn shrink_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > KEEP && map.len() < map.capacity() / 4 {
        map.shrink_to((2 * map.len()).max(KEEP));
    }
}

/// [`shrink_sparse`] for a set.
pub fn shrink_sparse_set<K: Eq + Hash>(set: &mut HashSet<K>) {
    if set.capacity() > KEEP && set.len() < set.capacity() / 4 {
        set.shrink_to((2 * set.len()).max(KEEP));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_map_gives_its_table_back_and_a_full_one_keeps_it() {
        let mut m: HashMap<u32, [u8; 64]> = (0..100_000).map(|i| (i, [0; 64])).collect();
        let full = m.capacity();
        shrink_sparse(&mut m);
        assert_eq!(m.capacity(), full, "a full map is left alone");
        m.retain(|&k, _| k < 10);
        shrink_sparse(&mut m);
        assert!(m.capacity() < 1000, "{} slots for 10 entries", m.capacity());
        assert_eq!(m.len(), 10);
        let mut s: HashSet<u32> = (0..10_000).collect();
        s.clear();
        shrink_sparse_set(&mut s);
        assert!(s.capacity() < 1000);
    }
}
