//! Open-addressing index from a flow-key hash to a session slot.
//!
//! Each session has two entries (its inside and its outside key), both in this one table, and a third
//! (its remote address with its outside endpoint) when its pool filters by address. An entry is 8 bytes:
//! the full 32-bit hash and the slot number with the key kind in the top two bits. Mappings and
//! subscribers use their own instances. Eight entries
//! share a cache line, so a lookup is one bucket fetch plus one session fetch, and the burst API can
//! prefetch both. Linear probing with backward-shift deletion keeps the table free of tombstones however
//! much churn there is; the table is sized so the load factor stays at or below one half.

/// Marks an unused entry.
const EMPTY: u32 = u32::MAX;
/// Top bit of `slot`: set for the outside (out2in) key of a session or mapping.
pub const OUT_BIT: u32 = 1 << 31;
/// Second bit of `slot`: set for the address-dependent-filtering key of a session (remote address and
/// outside endpoint, no remote port).
pub const ADF_BIT: u32 = 1 << 30;
/// Both kind bits; slot numbers stay below `ADF_BIT`.
pub const KIND_BITS: u32 = OUT_BIT | ADF_BIT;
/// Both kind bits set: the inside key of a full-NAT client session, which packets arriving from
/// outside match (the client is outside).
pub const XIN_BITS: u32 = OUT_BIT | ADF_BIT;

#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Entry {
    hash: u32,
    slot: u32,
}

const EMPTY_ENTRY: Entry = Entry {
    hash: 0,
    slot: EMPTY,
};

pub struct Index {
    entries: Vec<Entry>,
    mask: usize,
    len: usize,
}

impl Index {
    /// An index that can hold `max_keys` keys at a load factor of at most 1/2.
    pub fn with_capacity(max_keys: usize) -> Index {
        Index::with_capacity_advised(max_keys, None)
    }

    /// As [`Index::with_capacity`], passing the table's memory to `advise` before it is first
    /// written.
    pub fn with_capacity_advised(max_keys: usize, advise: Option<crate::MemAdvice>) -> Index {
        let size = (max_keys.max(8) * 2).next_power_of_two();
        let mut entries: Vec<Entry> = Vec::with_capacity(size);
        if let Some(advise) = advise {
            advise(
                entries.as_ptr() as usize,
                size * std::mem::size_of::<Entry>(),
            );
        }
        entries.resize(size, EMPTY_ENTRY);
        Index {
            entries,
            mask: size - 1,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory the index occupies.
    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
    }

    /// The entry a lookup for `hash` starts at; prefetch it before probing.
    #[inline]
    pub fn home_ref(&self, hash: u32) -> &impl Sized {
        &self.entries[hash as usize & self.mask]
    }

    /// First slot (with direction bit) whose hash matches, starting at the home entry; the caller checks the
    /// real key and continues with [`Index::find_from`] on a false match.
    #[inline]
    pub fn find_first(&self, hash: u32) -> Option<(usize, u32)> {
        self.find_from(hash, hash as usize & self.mask)
    }

    /// Continue probing from position `pos` (inclusive).
    #[inline]
    pub fn find_from(&self, hash: u32, mut pos: usize) -> Option<(usize, u32)> {
        loop {
            let e = self.entries[pos];
            if e.slot == EMPTY {
                return None;
            }
            if e.hash == hash {
                return Some((pos, e.slot));
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Find the entry for `hash` whose slot satisfies `is_key` (the caller compares the real key).
    #[inline]
    pub fn find(&self, hash: u32, mut is_key: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        let mut pos = hash as usize & self.mask;
        loop {
            let (p, slot) = self.find_from(hash, pos)?;
            if is_key(slot) {
                return Some((p, slot));
            }
            pos = (p + 1) & self.mask;
        }
    }

    /// Insert without a duplicate check: the caller has just missed on the same key.
    /// Returns false only if the table is completely full, which sizing prevents.
    pub fn insert(&mut self, hash: u32, slot: u32) -> bool {
        if self.len >= self.mask {
            return false;
        }
        let mut pos = hash as usize & self.mask;
        while self.entries[pos].slot != EMPTY {
            pos = (pos + 1) & self.mask;
        }
        self.entries[pos] = Entry { hash, slot };
        self.len += 1;
        true
    }

    /// Remove the entry for (`hash`, `slot`) if present.
    pub fn remove(&mut self, hash: u32, slot: u32) -> bool {
        match self.find(hash, |s| s == slot) {
            Some((pos, _)) => {
                self.remove_at(pos);
                true
            }
            None => false,
        }
    }

    /// Backward-shift deletion: pull later entries of the same probe run back so no lookup ever needs a
    /// tombstone to keep going.
    fn remove_at(&mut self, mut hole: usize) {
        let mut pos = (hole + 1) & self.mask;
        loop {
            let e = self.entries[pos];
            if e.slot == EMPTY {
                break;
            }
            let home = e.hash as usize & self.mask;
            // Move e into the hole if its home is not cyclically within (hole, pos].
            let dist_home = pos.wrapping_sub(home) & self.mask;
            let dist_hole = pos.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.entries[hole] = e;
                hole = pos;
            }
            pos = (pos + 1) & self.mask;
        }
        self.entries[hole] = EMPTY_ENTRY;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A deterministic PRNG for tests (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn matches_a_hashmap_under_heavy_churn() {
        // Small table, deliberately colliding hashes (only 6 distinct low bits) to exercise long runs,
        // wrap-around and backward shifts.
        let mut idx = Index::with_capacity(256);
        let mut model: HashMap<u32, u32> = HashMap::new(); // slot -> hash
        let mut rng = Rng(0x9e37_79b9);
        for round in 0..200_000u32 {
            let slot = (rng.next() % 300) as u32;
            if let Some(h) = model.remove(&slot) {
                assert!(idx.remove(h, slot), "round {round}: slot {slot} missing");
            } else if model.len() < 256 {
                let h = (rng.next() as u32 & 0xffff_ff3f) | 0x3f;
                assert!(idx.insert(h, slot));
                model.insert(slot, h);
            }
            if round % 997 == 0 {
                for (&s, &h) in &model {
                    assert_eq!(idx.find(h, |x| x == s).map(|(_, x)| x), Some(s));
                }
                assert_eq!(idx.len(), model.len());
            }
        }
        for (&s, &h) in &model {
            assert!(idx.remove(h, s));
        }
        assert!(idx.is_empty());
        assert!(
            idx.entries.iter().all(|e| e.slot == EMPTY),
            "no residue after removing everything"
        );
    }

    #[test]
    fn find_skips_false_hash_matches() {
        let mut idx = Index::with_capacity(16);
        idx.insert(42, 1);
        idx.insert(42, 2 | OUT_BIT);
        assert_eq!(
            idx.find(42, |s| s == (2 | OUT_BIT)).map(|x| x.1),
            Some(2 | OUT_BIT)
        );
        assert_eq!(idx.find(42, |s| s == 3), None);
        assert_eq!(idx.find(43, |_| true), None);
    }

    #[test]
    fn sized_for_half_load() {
        let idx = Index::with_capacity(1000);
        assert_eq!(idx.entries.len(), 2048);
        assert_eq!(idx.memory_bytes(), 2048 * 8);
    }
}
