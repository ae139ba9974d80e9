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
//! [`Index::insert_later`] queues the entry; [`Index::flush`] (the shard calls it at the end of
//! every burst) prefetches the buckets of the whole queue in one loop and then stores it, so the
//! misses of all the burst's new flows overlap. Until then lookups also search the queue, and a
//! removal stores it first, so a queued entry behaves exactly like a stored one.
//!
//! The prefetches are issued together at the flush rather than one by one as the keys are queued:
//! measured on the pipeline benchmark at 16M sessions (KVM guest), a prefetch issued in the middle
//! of a new flow's slow path stalled it (a quarter of all samples sat on that one instruction),
//! and moving them to the flush raised the new-session rate by 10-25 %, at 1M by about 7 %.

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

/// One index entry.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Entry {
    hash: u32,
    slot: u32,
}

/// A [`crate::Prefetch`] implementation as a function pointer (the port allocator's, for a bitmap
/// word).
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
    /// One bit per value of [`filter_bit`] among the queued hashes. A lookup whose bit is clear
    /// skips the queue: in a burst of new flows nearly every lookup misses the table while the
    /// queue holds entries, and comparing them all cost a new flow about 900 instructions
    /// (callgrind: two lookups of about 450 each, session and mapping).
    filter: [u64; FILTER_WORDS],
}

/// Words of [`Index::filter`]: 256 bits, so a full burst's 64 queued keys set about a fifth.
const FILTER_WORDS: usize = 4;

/// The filter bit of `hash`: its top eight bits. A lookup that reaches the queue and the queued
/// entries have unrelated hashes, so any eight well-mixed bits would do.
#[inline]
fn filter_bit(hash: u32) -> (usize, u64) {
    let b = hash >> 24;
    ((b >> 6) as usize, 1u64 << (b & 63))
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
            filter: [0; FILTER_WORDS],
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

    /// The first queued entry at or after queue position `from` whose hash matches. A queue is at
    /// most [`DEFERRED`] entries and exists only within a burst that created flows; the filter
    /// answers most lookups without reading it.
    #[inline]
    fn find_deferred(&self, hash: u32, from: usize) -> Option<(usize, u32)> {
        let (w, bit) = filter_bit(hash);
        if self.filter[w] & bit == 0 {
            return None;
        }
        let n = self.n_deferred;
        (from..n)
            .find(|&j| self.deferred[j].hash == hash)
            .map(|j| (self.mask + 1 + j, self.deferred[j].slot))
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

    /// As [`Index::insert`], but store the entry at the next [`Index::flush`] (or when the queue
    /// is full). Lookups find it meanwhile.
    #[inline]
    pub fn insert_later(&mut self, hash: u32, slot: u32) -> bool {
        if self.len >= self.mask {
            return false;
        }
        if self.n_deferred == DEFERRED {
            self.flush::<crate::NoPrefetch>();
        }
        self.deferred[self.n_deferred] = Entry { hash, slot };
        self.n_deferred += 1;
        let (w, bit) = filter_bit(hash);
        self.filter[w] |= bit;
        self.len += 1;
        true
    }

    /// Store the deferred inserts, in the order they were made, after prefetching all their buckets
    /// with `P`.
    #[inline]
    pub fn flush<P: crate::Prefetch>(&mut self) {
        if self.n_deferred == 0 {
            return;
        }
        for e in &self.deferred[..self.n_deferred] {
            P::prefetch(&self.entries[e.hash as usize & self.mask]);
        }
        for j in 0..self.n_deferred {
            let e = self.deferred[j];
            self.store(e.hash, e.slot);
        }
        self.n_deferred = 0;
        self.filter = [0; FILTER_WORDS];
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
        self.flush::<crate::NoPrefetch>();
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
                // Three values of the top byte: the queue filter lets some lookups skip the
                // queue and sends others through it.
                let h = (0x1f8 + rng.next() % 24) as u32 | ((rng.next() % 3) as u32) << 24;
                let ok = if r & 0x3000 != 0 {
                    if idx.n_deferred == DEFERRED {
                        full_flushes += 1;
                    }
                    idx.insert_later(h, slot)
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
                idx.flush::<crate::NoPrefetch>();
            }
        }
        assert!(full_flushes > 10, "the queue filled {full_flushes} times");
        idx.flush::<crate::NoPrefetch>();
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
            assert!(idx.insert_later(s.wrapping_mul(0x9e37_79b9), s));
            assert!(idx.n_deferred <= DEFERRED);
        }
        assert!(!idx.insert_later(7, 999), "no room is refused, not queued");
        assert!(!idx.insert(7, 999));
        for s in 0..255u32 {
            assert_eq!(
                idx.find(s.wrapping_mul(0x9e37_79b9), |x| x == s)
                    .map(|x| x.1),
                Some(s)
            );
        }
        idx.flush::<crate::NoPrefetch>();
        assert_eq!(idx.len(), 255);
    }

    #[test]
    fn the_queue_filter_never_hides_a_queued_key() {
        let mut idx = Index::with_capacity(1024);
        // Stored keys, then queued ones whose top bytes fall in all four filter words, and whose
        // low bits (their table runs) are those of stored keys; the first has a stored key's
        // whole hash.
        for s in 0..100u32 {
            assert!(idx.insert(s * 7, s));
        }
        let queued: Vec<(u32, u32)> = (0..DEFERRED as u32)
            .map(|j| (((j * 4) << 24) | ((j % 10) * 7), 1000 + j))
            .collect();
        for &(h, s) in &queued {
            assert!(idx.insert_later(h, s));
        }
        for &(h, s) in &queued {
            assert_eq!(idx.find(h, |x| x == s).map(|x| x.1), Some(s), "{h:#x}");
        }
        for s in 0..100u32 {
            assert_eq!(idx.find(s * 7, |x| x == s).map(|x| x.1), Some(s));
        }
        // Absent hashes: with a filter bit no queued key has, and with one that some have.
        assert_eq!(idx.find(0x0100_0003, |_| true), None);
        assert_eq!(idx.find(0x0400_0003, |_| true), None);
        idx.flush::<crate::NoPrefetch>();
        assert_eq!(
            idx.filter, [0; FILTER_WORDS],
            "a stored queue clears the filter"
        );
        for &(h, s) in &queued {
            assert_eq!(idx.find(h, |x| x == s).map(|x| x.1), Some(s));
        }
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
