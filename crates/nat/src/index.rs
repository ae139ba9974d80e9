//! Open-addressing index from a flow-key hash to a session slot.
//!
//! Each session has two entries (its inside and its outside key), both in this one table, and a third
//! (its remote address with its outside endpoint) when its pool filters by address. An entry is 8 bytes:
//! the full 32-bit hash and the slot number with the key kind in the top two bits. Mappings and
//! subscribers use their own instances. Eight entries
//! share a cache line, so a lookup is one bucket fetch plus one session fetch, and the burst API can
//! prefetch both. Linear probing with backward-shift deletion keeps the table free of tombstones however
//! much churn there is; the table is sized so the load factor stays at or below one half.
//!
//! **Deferred inserts.** A new session's outside key (and a new mapping's) hashes a port that was
//! only just chosen, so its bucket cannot have been prefetched with the lookups and inserting it at
//! once waits for DRAM: on a large table that was most of the cost of a new session.
//! [`Index::insert_later`] prefetches the bucket and queues the entry; [`Index::flush`] (the
//! shard calls it at the end of every burst) stores the queue, by which time the buckets of all the
//! burst's new flows have arrived together. Until then lookups also search the queue, and a removal
//! flushes it first, so a queued entry behaves exactly like a stored one.

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

/// One index entry (opaque outside this module; exposed so a prefetch function can take it).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Entry {
    hash: u32,
    slot: u32,
}

/// How [`Index::insert_later`] prefetches a bucket: the shard passes the data plane's prefetch
/// (see [`prefetch_with`]), tests and control-plane callers one that does nothing.
pub type PrefetchFn = fn(&Entry);

/// A [`crate::Prefetch`] implementation as a function pointer (for an index entry: a
/// [`PrefetchFn`]; for a port bitmap word: the allocator's).
pub fn prefetch_with<P: crate::Prefetch, T>(r: &T) {
    P::prefetch(r);
}

/// Inserts held back by [`Index::insert_later`] before the queue is stored anyway. Two keys of
/// each new flow of a 32-packet burst (a session's and its mapping's outside key are in separate
/// indexes; an address-filtering pool adds a third key) fit.
pub const DEFERRED: usize = 64;

const EMPTY_ENTRY: Entry = Entry {
    hash: 0,
    slot: EMPTY,
};

pub struct Index {
    entries: Vec<Entry>,
    mask: usize,
    /// Keys held, the queued ones included.
    len: usize,
    /// Inserts queued by [`Index::insert_later`]; lookups see them at positions `mask + 1 + j`.
    deferred: [Entry; DEFERRED],
    n_deferred: usize,
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
            deferred: [EMPTY_ENTRY; DEFERRED],
            n_deferred: 0,
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
        (self.entries.len() + DEFERRED) * std::mem::size_of::<Entry>()
    }

    /// The entry a lookup for `hash` starts at; prefetch it before probing.
    #[inline]
    pub fn home_ref(&self, hash: u32) -> &impl Sized {
        &self.entries[hash as usize & self.mask]
    }

    /// First slot (with direction bit) whose hash matches, starting at the home entry; the caller checks the
    /// real key and, on a false match, continues with [`Index::find_from`] at [`Index::next_pos`]
    /// (or looks up again with [`Index::find`]).
    #[inline]
    pub fn find_first(&self, hash: u32) -> Option<(usize, u32)> {
        self.find_from(hash, hash as usize & self.mask)
    }

    /// Continue probing from position `pos` (inclusive): the table's probe run, then the queue of
    /// deferred inserts.
    #[inline]
    pub fn find_from(&self, hash: u32, mut pos: usize) -> Option<(usize, u32)> {
        if pos <= self.mask {
            loop {
                let e = self.entries[pos];
                if e.slot == EMPTY {
                    break;
                }
                if e.hash == hash {
                    return Some((pos, e.slot));
                }
                pos = (pos + 1) & self.mask;
            }
            if self.n_deferred == 0 {
                return None;
            }
            pos = self.mask + 1;
        }
        self.find_deferred(hash, pos - (self.mask + 1))
    }

    /// The first queued entry at or after queue position `from` whose hash matches. The compare
    /// runs over the whole (fixed-size) queue into a bit mask, which vectorises; a queue is at most
    /// [`DEFERRED`] entries and exists only within a burst that created flows.
    fn find_deferred(&self, hash: u32, from: usize) -> Option<(usize, u32)> {
        let mut hits = 0u64;
        for (j, e) in self.deferred.iter().enumerate() {
            hits |= u64::from(e.hash == hash) << j;
        }
        hits &= low_bits(self.n_deferred) & !low_bits(from);
        if hits == 0 {
            return None;
        }
        let j = hits.trailing_zeros() as usize;
        Some((self.mask + 1 + j, self.deferred[j].slot))
    }

    /// The position after `pos` in probe order (the table wraps; the queue follows it). A position
    /// is only meaningful until the index next changes.
    #[inline]
    pub fn next_pos(&self, pos: usize) -> usize {
        if pos < self.mask {
            pos + 1
        } else if pos == self.mask {
            0
        } else {
            pos + 1
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
            pos = self.next_pos(p);
        }
    }

    /// Insert without a duplicate check: the caller has just missed on the same key.
    /// Returns false only if the table is completely full, which sizing prevents.
    pub fn insert(&mut self, hash: u32, slot: u32) -> bool {
        if self.len >= self.mask {
            return false;
        }
        self.store(hash, slot);
        self.len += 1;
        true
    }

    /// As [`Index::insert`], but only prefetch the entry's bucket now and store it at the next
    /// [`Index::flush`] (or when the queue is full). Lookups find it meanwhile.
    #[inline]
    pub fn insert_later(&mut self, hash: u32, slot: u32, prefetch: PrefetchFn) -> bool {
        if self.len >= self.mask {
            return false;
        }
        if self.n_deferred == DEFERRED {
            self.flush();
        }
        prefetch(&self.entries[hash as usize & self.mask]);
        self.deferred[self.n_deferred] = Entry { hash, slot };
        self.n_deferred += 1;
        self.len += 1;
        true
    }

    /// Store the deferred inserts, in the order they were made.
    #[inline]
    pub fn flush(&mut self) {
        for j in 0..self.n_deferred {
            let e = self.deferred[j];
            self.store(e.hash, e.slot);
        }
        self.n_deferred = 0;
    }

    /// Put an entry in the first free position of its probe run (`len` is the caller's).
    #[inline]
    fn store(&mut self, hash: u32, slot: u32) {
        let mut pos = hash as usize & self.mask;
        while self.entries[pos].slot != EMPTY {
            pos = (pos + 1) & self.mask;
        }
        self.entries[pos] = Entry { hash, slot };
    }

    /// Remove the entry for (`hash`, `slot`) if present.
    pub fn remove(&mut self, hash: u32, slot: u32) -> bool {
        // Positions are table positions only once the queue is stored.
        self.flush();
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

/// The `n` lowest bits set (`n` up to 64).
#[inline]
fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
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

    fn no_prefetch(_: &Entry) {}

    #[test]
    fn deferred_inserts_behave_like_stored_ones() {
        // Churn against a model with most inserts deferred and removals rare, so the queue often
        // fills (and is stored because it is full) and otherwise is stored at random moments. The
        // hashes are 24 values whose homes straddle the end of the table: long runs that wrap to
        // position 0, and many keys sharing a hash, some stored and some queued, so lookups must
        // continue past false matches in the table and in the queue.
        let mut idx = Index::with_capacity(256); // 512 entries
        let mut model: HashMap<u32, u32> = HashMap::new(); // slot -> hash
        let mut rng = Rng(0x5eed_1234);
        let mut full_flushes = 0;
        for round in 0..100_000u32 {
            let r = rng.next();
            if round % 512 == 511 {
                // Remove about half the keys (the queue is stored once), so that the refill queues
                // up until the queue is full.
                let odd = (round / 512) % 2;
                let victims: Vec<(u32, u32)> = model
                    .iter()
                    .filter(|&(&s, _)| s % 2 == odd)
                    .map(|(&s, &h)| (s, h))
                    .collect();
                for (s, h) in victims {
                    model.remove(&s);
                    assert!(idx.remove(h, s), "round {round}: slot {s} missing");
                }
                assert_eq!(idx.n_deferred, 0, "a removal stores the queue first");
            }
            let slot = (r % 300) as u32;
            if let Some(&h) = model.get(&slot) {
                if r & 0x7f00 == 0 {
                    model.remove(&slot);
                    assert!(idx.remove(h, slot), "round {round}: slot {slot} missing");
                    assert_eq!(idx.n_deferred, 0, "a removal stores the queue first");
                }
            } else if model.len() < 200 {
                let h = (0x1f8 + rng.next() % 24) as u32;
                let ok = if r & 0x3000 != 0 {
                    if idx.n_deferred == DEFERRED {
                        full_flushes += 1;
                    }
                    idx.insert_later(h, slot, no_prefetch)
                } else {
                    idx.insert(h, slot)
                };
                assert!(ok);
                model.insert(slot, h);
            }
            assert_eq!(idx.len(), model.len());
            if round % 97 == 0 {
                for (&s, &h) in &model {
                    assert_eq!(
                        idx.find(h, |x| x == s).map(|(_, x)| x),
                        Some(s),
                        "round {round}: slot {s} not found ({} queued)",
                        idx.n_deferred
                    );
                }
                // A key that is not there is not found, however long the runs.
                assert_eq!(idx.find(0x1f8, |x| x == 999), None);
            }
            if r & 0xfff_0000 == 0 {
                idx.flush();
            }
        }
        assert!(full_flushes > 10, "the queue filled {full_flushes} times");
        idx.flush();
        for (&s, &h) in &model {
            assert!(idx.remove(h, s));
        }
        assert!(idx.is_empty());
        assert!(idx.entries.iter().all(|e| e.slot == EMPTY));
    }

    #[test]
    fn a_full_queue_is_stored_and_the_table_never_overfills() {
        let mut idx = Index::with_capacity(100); // 256 entries: room for 255 keys
        for s in 0..255u32 {
            assert!(idx.insert_later(s.wrapping_mul(0x9e37_79b9), s, no_prefetch));
            assert!(idx.n_deferred <= DEFERRED);
        }
        assert!(
            !idx.insert_later(7, 999, no_prefetch),
            "no room is refused, not queued"
        );
        assert!(!idx.insert(7, 999));
        for s in 0..255u32 {
            assert_eq!(
                idx.find(s.wrapping_mul(0x9e37_79b9), |x| x == s)
                    .map(|x| x.1),
                Some(s)
            );
        }
        idx.flush();
        assert_eq!(idx.len(), 255);
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
        assert_eq!(idx.memory_bytes(), (2048 + DEFERRED) * 8);
    }
}
