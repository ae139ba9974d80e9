//! Open-addressing index from a flow-key hash to a session slot.
//!
//! Every record of the flow slab has two entries here: a mapping record its inside and its outside
//! endpoint, a separate session its inside and its outside 5-tuple, and a third (its remote address
//! with its outside endpoint) when its pool filters by address. The key's 64-bit hash
//! ([`crate::Hash`]) gives the home bucket (its high half) and the tag (bits 16-31). An entry is 6
//! bytes: the 16-bit tag, the lowest bit forced to one, and the slot number with the key kind in
//! its top three bits. A mapping's endpoint entries also carry [`SEP_BIT`] while the mapping has
//! sessions in records of their own, a hint the burst pipeline reads from the entry (see [`kind`]
//! for the kind without it). Subscribers use an instance of their own.
//!
//! **Buckets of one cache line.** The table is an array of 64-byte buckets of ten entries (their
//! ten tags, then ten slots), each bucket aligned to its line. A key's hash picks its home bucket;
//! the key lives there unless the bucket is full, and then in the first later bucket with room. A
//! lookup compares all ten tags of a bucket at once, without a branch per entry, and moves on to
//! the next bucket only if the bucket's *overflow count* (the word after its tags) says that some
//! key passed it full. At a load of one half a bucket rarely overflows (eleven or more of a
//! Poisson(5) number of keys: about 1.4 %), so nearly every lookup, hit or miss, is one line, the
//! line the burst pipeline prefetched, and a removal only clears its entry and lowers the counts of
//! the buckets its key passed: no shifting, no tombstones, however much churn there is.
//!
//! Until 2026-12-07 an entry was 8 bytes (a 24-bit tag and its slot), eight to a line, and the
//! hash 32 bits: 64 B per 1:1 flow (a 32-byte record and two entries at load ½), now 57.6 B; ten
//! entries to a line overflow less at the same load (1.4 % of buckets against 2.1 %). The 32-bit
//! hash gave both the home and the tag, so in a large table the tag had few bits of its own (see
//! [`TAG_SHIFT`]).
//!
//! This replaced linear probing entry by entry, whose run length varies from key to key: measured
//! on the pipeline benchmark, the new-session rate fell by a quarter between a load of 0.25 and
//! 0.44 (every miss ended on a mispredicted branch, later the fuller the table), and a group
//! compare over eight entries that did not start on a line boundary read two lines, cutting the
//! 1M-session established rate by a quarter.
//!
//! **Sizing.** The table has as many buckets as [`MAX_LOAD`] needs for the keys it must hold, not
//! the next power of two: the home bucket is the hash's high bits scaled to the bucket count
//! (multiply-shift), so any count works. With a power of two, a capacity just above a power (a shard
//! for 17M sessions) paid for a table twice as large as it needed, and the load factor, and with it
//! the memory per session and the speed of a new session, depended on where the configured
//! capacity fell between two powers.
//!
//! **Deferred inserts.** A new session's outside key (and a new mapping's) hashes a port that was
//! only just chosen, so its bucket cannot have been prefetched with the lookups and inserting it at
//! once waits for DRAM: on a large table that was most of the cost of a new session.
//! [`Index::insert_later`] queues the entry. At the end of a burst the shard prefetches the buckets
//! of the whole queue in one loop ([`Index::prefetch_queued`]), and stores the queue
//! ([`Index::flush`]) in the next burst, once that burst's own buckets are prefetched and before
//! any of its lookups: the misses of all the burst's new flows overlap one another and what
//! happens between the bursts (transmitting, receiving, parsing the next burst). Until then
//! lookups also search the queue, and a removal stores it first, so a queued entry behaves
//! exactly like a stored one.
//!
//! The prefetches are issued together at the end of the burst rather than one by one as the keys
//! are queued: measured on the pipeline benchmark at 16M sessions (KVM guest), a prefetch issued
//! in the middle of a new flow's slow path stalled it (a quarter of all samples sat on that one
//! instruction), and moving them to the flush raised the new-session rate by 10-25 %, at 1M by
//! about 7 %. Storing the queue right after those prefetches waited for them still; storing it
//! in the next burst instead (2026-12-07, alternated `cgnat-bench` runs) raised new sessions at
//! 16M from 8.6-8.8 to 9.2-9.6 M/s and at 1M from 10.2-10.6 to 11.1-11.2, at 64K unchanged.
//!
//! Limitation: an overflow count saturates at 65,535 and then stays there (lookups through that
//! bucket always continue to the next one). At the loads the table is sized for, no bucket comes
//! near it.

use wide::u16x16;

use crate::key::Hash;

/// Highest load factor the table is sized for, as a fraction: a full table holds this many keys
/// per entry. Fuller tables were measured (pipeline benchmark, 2026-12-06): at ⅝ the memory per
/// session fell from 129 to 116 B all-in and at ¾ to 108 B, but new sessions at 1M fell by a fifth
/// and by a third, as more buckets overflowed and more misses read a second line.
pub const MAX_LOAD: (usize, usize) = (1, 2);

/// Marks an unused entry.
const EMPTY: u32 = u32::MAX;
/// Top bit of `slot`: set for the outside (out2in) key of a session or mapping.
pub const OUT_BIT: u32 = 1 << 31;
/// Second bit of `slot`: set for the address-dependent-filtering key of a session (remote address and
/// outside endpoint, no remote port).
pub const ADF_BIT: u32 = 1 << 30;
/// Third bit of `slot`: set for the endpoint keys of a mapping record (with [`OUT_BIT`] its outside
/// endpoint, without it its inside one).
pub const MAP_BIT: u32 = 1 << 29;
/// The kind bits; slot numbers stay below `MAP_BIT`.
pub const KIND_BITS: u32 = OUT_BIT | ADF_BIT | MAP_BIT;
/// `OUT_BIT | ADF_BIT`: the inside key of a full-NAT client session, which packets arriving from
/// outside match (the client is outside).
pub const XIN_BITS: u32 = OUT_BIT | ADF_BIT;
/// A mapping's inside endpoint key.
pub const M_IN: u32 = MAP_BIT;
/// A mapping's outside endpoint key.
pub const M_OUT: u32 = MAP_BIT | OUT_BIT;
/// With [`MAP_BIT`] (a combination no other key uses): the mapping has sessions in records of
/// their own, so a packet of its endpoint may need the 5-tuple probe too. The burst pipeline reads
/// it straight from the endpoint entry and starts that probe without waiting for the record.
pub const SEP_BIT: u32 = ADF_BIT;

/// The kind of entry `slot` without a mapping's [`SEP_BIT`]: one of 0, [`OUT_BIT`], [`ADF_BIT`],
/// [`XIN_BITS`], [`M_IN`] and [`M_OUT`].
#[inline(always)]
pub fn kind(slot: u32) -> u32 {
    let k = slot & KIND_BITS;
    // MAP_BIT sits just below SEP_BIT: shifting it up clears the hint of a mapping's key only.
    k & !((k & MAP_BIT) << 1)
}

const _: () = assert!(MAP_BIT << 1 == SEP_BIT);

/// A queued insert: the whole hash and the slot.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Entry {
    hash: Hash,
    slot: u32,
}

/// Where the bits of a hash that an entry keeps and compares start: bits 16-31, the lowest forced
/// to one so that a used entry's tag is never zero, the mark of an unused one (the lowest bits of
/// the hash come from few bits of its last product, see `key::fold`). The home bucket comes from
/// the high half, so the tag is independent of it and tells apart the keys of one bucket by all of
/// its 15 free bits at any table size: a false match (a record fetched for nothing) in about one
/// lookup in 6,500 at load ½. With the 32-bit hash of before, home and tag shared bits: at 16M
/// sessions the keys of a bucket had hashes within 2^9 of each other, and 1.5 % of lookups for an
/// absent key met a false match.
const TAG_SHIFT: u32 = 16;
/// An overflow count that has reached this stays (see the module's limitation).
const OVERFLOW_MAX: u16 = u16::MAX;

/// Entries per bucket: as many 6-byte entries (a 2-byte tag and a 4-byte slot) as a cache line
/// holds beside the bucket's overflow count.
const WIDTH: usize = 10;

/// A bucket's 16-bit words: the [`WIDTH`] tags, the overflow count, a spare zero, then the slots,
/// each as two words (low half first).
const WORDS: usize = 32;
/// Where the overflow count is.
const OVER_WORD: usize = WIDTH;
/// Where the first slot starts.
const SLOT_WORD: usize = WIDTH + 2;

/// [`Bucket::mask_of`]'s bits for the [`WIDTH`] entries.
const ENTRY_BITS: u32 = (1 << WIDTH) - 1;

/// The tag `hash` has in the table.
#[inline]
fn tag_of(hash: Hash) -> u16 {
    (hash >> TAG_SHIFT) as u16 | 1
}

/// A cache line of entries: the tags first, so that the first 16 words (the ten tags, the
/// overflow count, the spare word and the first two slots) compare as one vector of 16 words.
/// The slots are words rather than `u32`s so that the bucket is one array that vector can be
/// read from in safe code; on a little-endian machine the compiler reads and writes each slot
/// with one 4-byte access.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Bucket {
    words: [u16; WORDS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);
const _: () = assert!(SLOT_WORD + 2 * WIDTH == WORDS && SLOT_WORD <= 16);

impl Bucket {
    /// Bit `i` set when entry `i` holds a key with `hash`'s tag: ten compares, no branch.
    #[inline]
    fn hits(&self, hash: Hash) -> u32 {
        self.mask_of(tag_of(hash))
    }

    /// Bit `i` set when entry `i` is unused.
    #[inline]
    fn empties(&self) -> u32 {
        self.mask_of(0)
    }

    /// One compare of the first 16 words (two SSE2 registers on x86-64, packed into one mask;
    /// NEON on aarch64, scalar elsewhere, behind `wide`'s safe interface), of which the ten
    /// tags' bits are kept: about eight instructions. (Two vectors of eight tag words each, with
    /// a mask apiece, cost six more per packet under callgrind.)
    #[inline]
    fn mask_of(&self, tag: u16) -> u32 {
        self.words.first_chunk::<16>().map_or(0, |w| {
            u16x16::new(*w).simd_eq(u16x16::splat(tag)).to_bitmask() & ENTRY_BITS
        })
    }

    /// Keys that passed this bucket full and live in a later one.
    #[inline]
    fn overflow(&self) -> u16 {
        self.words[OVER_WORD]
    }

    fn set_overflow(&mut self, n: u16) {
        self.words[OVER_WORD] = n;
    }

    /// The slot value of entry `i`.
    #[inline(always)]
    fn slot(&self, i: usize) -> u32 {
        let w = SLOT_WORD + 2 * i;
        u32::from(self.words[w]) | u32::from(self.words[w + 1]) << 16
    }

    #[inline(always)]
    fn set_slot(&mut self, i: usize, slot: u32) {
        let w = SLOT_WORD + 2 * i;
        self.words[w] = slot as u16;
        self.words[w + 1] = (slot >> 16) as u16;
    }

    /// Put a key in entry `i`.
    #[inline]
    fn put(&mut self, i: usize, hash: Hash, slot: u32) {
        self.words[i] = tag_of(hash);
        self.set_slot(i, slot);
    }

    /// Empty entry `i`.
    fn clear(&mut self, i: usize) {
        self.words[i] = 0;
        self.set_slot(i, EMPTY);
    }

    /// The tag words, and the slots.
    #[cfg(test)]
    fn is_clean(&self) -> bool {
        self.words[..SLOT_WORD].iter().all(|&t| t == 0) && (0..WIDTH).all(|i| self.slot(i) == EMPTY)
    }
}

/// A [`crate::Prefetch`] implementation as a function pointer (the port allocator's, for a bitmap
/// word).
pub fn prefetch_with<P: crate::Prefetch, T>(r: &T) {
    P::prefetch(r);
}

/// Inserts held back by [`Index::insert_later`] before the queue is stored anyway. A new 1:1 flow
/// queues one key (its mapping's outside endpoint), a separate session two (its outside key, and
/// its filtering key in an address-filtering pool): a burst of 32 new flows fits unless many of
/// them make both a mapping and a separate session (a hairpin), and then the full queue is stored
/// early.
pub const DEFERRED: usize = 64;

const EMPTY_ENTRY: Entry = Entry {
    hash: 0,
    slot: EMPTY,
};

const EMPTY_BUCKET: Bucket = {
    let mut b = Bucket { words: [0; WORDS] };
    let mut w = SLOT_WORD;
    while w < WORDS {
        b.words[w] = u16::MAX;
        w += 1;
    }
    b
};
const _: () = assert!(EMPTY == u32::MAX);

/// A position is a table entry (bucket `pos / WIDTH`, entry `pos % WIDTH`) below `entries`, and
/// queue entry `pos - entries` from there.
pub struct Index {
    buckets: Vec<Bucket>,
    /// Entries in the table: `buckets.len() * WIDTH`.
    entries: usize,
    /// Keys held, the queued ones included.
    len: usize,
    /// Inserts queued by [`Index::insert_later`]; lookups see them at positions `entries + j`.
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

/// The filter bit of `hash`: the low byte of its tag. The home bucket comes from the high half, so
/// queued keys that share a bucket still spread over the filter.
#[inline]
fn filter_bit(hash: Hash) -> (usize, u64) {
    let b = (hash >> TAG_SHIFT) & 0xff;
    ((b >> 6) as usize, 1u64 << (b & 63))
}

impl Index {
    /// An index that can hold `max_keys` keys at a load factor of at most [`MAX_LOAD`].
    pub fn with_capacity(max_keys: usize) -> Index {
        Index::with_capacity_advised(max_keys, None)
    }

    /// As [`Index::with_capacity`], passing the table's memory to `advise` before it is first
    /// written.
    pub fn with_capacity_advised(max_keys: usize, advise: Option<crate::MemAdvice>) -> Index {
        let n = Index::buckets_for(max_keys);
        let mut buckets: Vec<Bucket> = Vec::with_capacity(n);
        if let Some(advise) = advise {
            advise(buckets.as_ptr() as usize, n * std::mem::size_of::<Bucket>());
        }
        buckets.resize(n, EMPTY_BUCKET);
        Index {
            buckets,
            entries: n * WIDTH,
            len: 0,
            deferred: [EMPTY_ENTRY; DEFERRED],
            n_deferred: 0,
            filter: [0; FILTER_WORDS],
        }
    }

    /// Buckets a table for `max_keys` keys has: enough entries for [`MAX_LOAD`], and at least two
    /// buckets.
    fn buckets_for(max_keys: usize) -> usize {
        let (num, den) = MAX_LOAD;
        (max_keys.max(8) * den).div_ceil(num).div_ceil(WIDTH).max(2)
    }

    /// The home bucket of `hash`: its high bits scaled to the table (multiply-shift).
    #[inline]
    fn home(&self, hash: Hash) -> usize {
        (((hash >> 32) * self.buckets.len() as u64) >> 32) as usize
    }

    /// The bucket after `b`, wrapping.
    #[inline]
    fn succ(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() {
            0
        } else {
            b + 1
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys queued by [`Index::insert_later`] and not yet stored.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.n_deferred
    }

    /// Bytes of memory the index occupies.
    pub fn memory_bytes(&self) -> usize {
        self.buckets.len() * std::mem::size_of::<Bucket>() + DEFERRED * std::mem::size_of::<Entry>()
    }

    /// The cache line a lookup for `hash` starts at; prefetch it before probing.
    #[inline]
    pub fn home_ref(&self, hash: Hash) -> &impl Sized {
        &self.buckets[self.home(hash)]
    }

    /// First slot (with direction bit) whose hash matches, starting at the home bucket: a
    /// candidate to prefetch. The caller checks the real key and, on a false match, looks up
    /// again with [`Index::find`].
    ///
    /// The home bucket is tested here, inline in the burst pipeline: that is where nearly every
    /// lookup ends. The rest (an overflowed bucket, a queue) is [`Index::find_beyond`]'s, out of
    /// line.
    #[inline(always)]
    pub fn find_first(&self, hash: Hash) -> Option<(usize, u32)> {
        let b = self.home(hash);
        let bucket = &self.buckets[b];
        let hits = bucket.hits(hash);
        if hits != 0 {
            let i = hits.trailing_zeros() as usize;
            return Some((b * WIDTH + i, bucket.slot(i)));
        }
        if bucket.overflow() == 0 && self.n_deferred == 0 {
            return None;
        }
        self.find_beyond(hash, b)
    }

    /// [`Index::find_first`] after a miss in home bucket `b`.
    #[inline(never)]
    fn find_beyond(&self, hash: Hash, b: usize) -> Option<(usize, u32)> {
        self.probe(hash, b, b, true, |_| true)
    }

    /// Find the entry for `hash` whose slot satisfies `is_key` (the caller compares the real key).
    #[inline]
    pub fn find(&self, hash: Hash, is_key: impl FnMut(u32) -> bool) -> Option<(usize, u32)> {
        let home = self.home(hash);
        self.probe(hash, home, home, false, is_key)
    }

    /// The first entry for `hash` whose slot satisfies `is_key`, in probe order: the buckets from
    /// `from` on (all of `from` unless `skip_from`, which [`Index::find_first`] has searched),
    /// while the overflow counts say keys went on and never past the last bucket before `home`
    /// (a probe would otherwise circle back to it when every bucket has overflowed); then the
    /// queue of deferred inserts. Positions are as [`Index`] describes them.
    #[inline]
    fn probe(
        &self,
        hash: Hash,
        home: usize,
        from: usize,
        skip_from: bool,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        let mut b = from;
        let mut skip = skip_from;
        loop {
            let bucket = &self.buckets[b];
            let mut hits = if skip { 0 } else { bucket.hits(hash) };
            skip = false;
            while hits != 0 {
                let i = hits.trailing_zeros() as usize;
                if is_key(bucket.slot(i)) {
                    return Some((b * WIDTH + i, bucket.slot(i)));
                }
                hits &= hits - 1;
            }
            let next = self.succ(b);
            if bucket.overflow() == 0 || next == home {
                break;
            }
            b = next;
        }
        self.find_deferred(hash, is_key)
    }

    /// The first queued entry with `hash` whose slot satisfies `is_key`. A queue is at most
    /// [`DEFERRED`] entries and exists only from a burst that created flows until the next burst's
    /// stage 1; the filter answers most lookups without reading it.
    #[inline]
    fn find_deferred(
        &self,
        hash: Hash,
        mut is_key: impl FnMut(u32) -> bool,
    ) -> Option<(usize, u32)> {
        if self.n_deferred == 0 {
            return None;
        }
        let (w, bit) = filter_bit(hash);
        if self.filter[w] & bit == 0 {
            return None;
        }
        self.deferred[..self.n_deferred]
            .iter()
            .enumerate()
            .find(|(_, e)| e.hash == hash && is_key(e.slot))
            .map(|(j, e)| (self.entries + j, e.slot))
    }

    /// Insert without a duplicate check: the caller has just missed on the same key.
    /// Returns false when the table holds all the keys it can (one entry always stays free, so
    /// that a store finds room), which sizing prevents.
    pub fn insert(&mut self, hash: Hash, slot: u32) -> bool {
        if self.len + 1 >= self.entries {
            return false;
        }
        self.store(hash, slot);
        self.len += 1;
        true
    }

    /// As [`Index::insert`], but store the entry at the next [`Index::flush`] (or when the queue
    /// is full). Lookups find it meanwhile.
    #[inline]
    pub fn insert_later(&mut self, hash: Hash, slot: u32) -> bool {
        if self.len + 1 >= self.entries {
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
    /// with `P` (`NoPrefetch` when [`Index::prefetch_queued`] did so earlier).
    #[inline]
    pub fn flush<P: crate::Prefetch>(&mut self) {
        if self.n_deferred == 0 {
            return;
        }
        for e in &self.deferred[..self.n_deferred] {
            P::prefetch(&self.buckets[self.home(e.hash)]);
        }
        for j in 0..self.n_deferred {
            let e = self.deferred[j];
            self.store(e.hash, e.slot);
        }
        self.n_deferred = 0;
        self.filter = [0; FILTER_WORDS];
    }

    /// Prefetch with `P` the buckets of the queued inserts, to be stored by a later
    /// [`Index::flush`] once they have come.
    #[inline]
    pub fn prefetch_queued<P: crate::Prefetch>(&self) {
        for e in &self.deferred[..self.n_deferred] {
            P::prefetch(&self.buckets[self.home(e.hash)]);
        }
    }

    /// Put an entry in the first bucket with room from its home on, counting it in the overflow of
    /// every full bucket it passes (`len` is the caller's, and leaves room somewhere).
    #[inline]
    fn store(&mut self, hash: Hash, slot: u32) {
        let mut b = self.home(hash);
        loop {
            let bucket = &mut self.buckets[b];
            let empties = bucket.empties();
            if empties != 0 {
                bucket.put(empties.trailing_zeros() as usize, hash, slot);
                return;
            }
            let n = bucket.overflow();
            if n < OVERFLOW_MAX {
                bucket.set_overflow(n + 1);
            }
            b = self.succ(b);
        }
    }

    /// Change the slot value of the entry for (`hash`, `old`) to `new`, in the table or in the
    /// queue, where it stays. Returns whether there was one.
    ///
    /// The queue is searched first: an entry made in this burst (a mapping that got its second
    /// session at once) is there, and a table probe first would wait for a bucket nobody
    /// prefetched. Slot values are unique, so the order finds the same entry.
    pub fn replace(&mut self, hash: Hash, old: u32, new: u32) -> bool {
        let found = self
            .find_deferred(hash, |s| s == old)
            .or_else(|| self.find(hash, |s| s == old));
        let Some((pos, _)) = found else {
            return false;
        };
        if pos < self.entries {
            self.buckets[pos / WIDTH].set_slot(pos % WIDTH, new);
        } else {
            self.deferred[pos - self.entries].slot = new;
        }
        true
    }

    /// Remove the entry for (`hash`, `slot`) if present. The entry is found by its tag and its slot
    /// value, so slot values (with their kind bits) must be unique within an index, as every
    /// caller's are.
    pub fn remove(&mut self, hash: Hash, slot: u32) -> bool {
        // Positions are table positions only once the queue is stored.
        self.flush::<crate::NoPrefetch>();
        let Some((pos, _)) = self.find(hash, |s| s == slot) else {
            return false;
        };
        let at = pos / WIDTH;
        self.buckets[at].clear(pos % WIDTH);
        // The buckets the key passed on its way no longer have it beyond them. (Each counted it
        // when it was stored, so a count that has not saturated is at least one here.)
        let mut b = self.home(hash);
        while b != at {
            let n = self.buckets[b].overflow();
            if n < OVERFLOW_MAX {
                self.buckets[b].set_overflow(n.saturating_sub(1));
            }
            b = self.succ(b);
        }
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::TestRng as Rng;

    /// The 64K source ports of one subscriber talking to one server, the keys that differ least,
    /// hashed with the real key hash under random seeds: at load ½ only a few percent of buckets
    /// may overflow (a sound hash gives about 1.4 % with ten entries to a bucket), so lookups stay
    /// at one line. A hash that crowded them for some seeds fails here (the first fold of
    /// 2026-12-07, with the key fields placed as then: 30 % under seed 0x3409_5b91_3310_4226,
    /// kept among the seeds).
    #[test]
    fn one_subscribers_source_ports_leave_lookups_at_one_line() {
        let mut rng = Rng(0x5eed);
        let seeds = [0x3409_5b91_3310_4226u64]
            .into_iter()
            .chain(std::iter::repeat_with(|| rng.next()).take(7));
        for seed in seeds {
            let mut idx = Index::with_capacity(65536);
            for p in 0..65536u32 {
                let k = crate::FlowKey {
                    src: 0x6440_0000,
                    dst: 0xc633_640a,
                    sport: p as u16,
                    dport: 443,
                    proto: 6,
                };
                assert!(idx.insert(k.hash(seed), p));
            }
            let over = idx.buckets.iter().filter(|b| b.overflow() > 0).count();
            let share = over as f64 / idx.buckets.len() as f64;
            assert!(
                share < 0.04,
                "seed {seed:#x}: {:.1} % of buckets overflowed",
                share * 100.0
            );
        }
    }

    impl Index {
        /// A hash whose home is bucket `b` and whose tag's low byte (also its queue-filter bit)
        /// is `low`, the rest of the tag zero.
        fn hash_at(&self, b: usize, low: u8) -> Hash {
            let n = self.buckets.len() as u64;
            let high = ((b as u64) << 32).div_ceil(n);
            let h = high << 32 | u64::from(low) << TAG_SHIFT;
            assert_eq!(self.home(h), b, "test hash for bucket {b}");
            h
        }

        /// Nothing stored and no overflow count left anywhere.
        fn is_clean(&self) -> bool {
            self.buckets
                .iter()
                .all(|b| b.empties() == ENTRY_BITS && b.is_clean())
        }
    }

    #[test]
    fn matches_a_hashmap_under_heavy_churn() {
        // Small table, deliberately colliding hashes (eight distinct homes, the last one the
        // table's last bucket, and few distinct tags) so that buckets overflow far, runs wrap
        // around and lookups meet false tag matches.
        let mut idx = Index::with_capacity(200);
        let n = idx.buckets.len();
        assert_eq!(n % 8, 0, "the eighth home is the last bucket");
        let mut model: HashMap<u32, Hash> = HashMap::new(); // slot -> hash
        let mut rng = Rng(0x9e37_79b9);
        let mut wrapped = 0;
        for round in 0..200_000u32 {
            let slot = (rng.next() % 300) as u32;
            if let Some(h) = model.remove(&slot) {
                assert!(idx.remove(h, slot), "round {round}: slot {slot} missing");
            } else if model.len() < 256 {
                let home = (rng.next() % 8) as usize * (n / 8) + n / 8 - 1;
                let h = idx.hash_at(home, (rng.next() % 4) as u8);
                assert!(idx.insert(h, slot));
                model.insert(slot, h);
            }
            if round % 997 == 0 {
                for (&s, &h) in &model {
                    assert_eq!(idx.find(h, |x| x == s).map(|(_, x)| x), Some(s));
                }
                assert_eq!(idx.len(), model.len());
                // Bucket 0 is no key's home: what it holds wrapped around from the last bucket.
                wrapped += usize::from(idx.buckets[0].empties() != ENTRY_BITS);
            }
        }
        assert!(wrapped > 20, "runs wrapped around at {wrapped} checks");
        for (&s, &h) in &model {
            assert!(idx.remove(h, s));
        }
        assert!(idx.is_empty());
        assert!(idx.is_clean(), "no residue after removing everything");
    }

    #[test]
    fn deferred_inserts_behave_like_stored_ones() {
        // Churn against a model with most inserts deferred and removals rare, so the queue often
        // fills (and is stored because it is full) and otherwise is stored at random moments. The
        // hashes are 24 values homed in the table's last two buckets: 200 keys overflow them and
        // wrap to the first buckets, and many keys share a hash, some stored and some queued, so
        // lookups must continue past false matches in the table and in the queue.
        let mut idx = Index::with_capacity(256);
        let n = idx.buckets.len();
        let hashes: Vec<Hash> = (0..24u32)
            .map(|d| idx.hash_at(n - 2 + (d % 2) as usize, (d * 11) as u8))
            .collect();
        let mut model: HashMap<u32, Hash> = HashMap::new(); // slot -> hash
        let mut rng = Rng(0x5eed_1234);
        let mut full_flushes = 0;
        for round in 0..100_000u32 {
            let r = rng.next();
            if round % 512 == 511 {
                // Remove about half the keys (the queue is stored once), so that the refill queues
                // up until the queue is full.
                let odd = (round / 512) % 2;
                let victims: Vec<(u32, Hash)> = model
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
                let h = hashes[(rng.next() % 24) as usize];
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
                // A key that is not there is not found, however far the buckets overflowed.
                assert_eq!(idx.find(hashes[0], |x| x == 999), None);
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
        assert!(idx.is_clean());
    }

    #[test]
    fn a_replaced_entry_is_found_by_its_new_value_in_the_table_and_in_the_queue() {
        // WIDTH + 4 keys of one hash homed in the last bucket: WIDTH fill it, two wrap to the
        // first, two wait in the queue; a mapping's hint changes its entry's value wherever it is.
        let w = WIDTH as u32;
        let mut idx = Index::with_capacity(64);
        let n = idx.buckets.len();
        let h = idx.hash_at(n - 1, 0x33);
        for s in 0..w + 2 {
            assert!(idx.insert(h, s));
        }
        assert_eq!(
            idx.buckets[0].slot(1),
            w + 1,
            "two wrapped to the first bucket"
        );
        assert!(idx.insert_later(h, w + 2) && idx.insert_later(h, w + 3));
        let changed = [3, w + 1, w + 3];
        for s in changed {
            assert!(idx.replace(h, s, s | SEP_BIT));
        }
        assert!(!idx.replace(h, 42, 43), "no entry, nothing changed");
        assert_eq!(idx.len(), WIDTH + 4);
        assert_eq!(idx.n_deferred, 2, "a replacement leaves the queue queued");
        for s in 0..w + 4 {
            let v = if changed.contains(&s) { s | SEP_BIT } else { s };
            assert_eq!(idx.find(h, |x| x == v).map(|x| x.1), Some(v), "slot {s}");
            if v != s {
                assert_eq!(idx.find(h, |x| x == s), None, "slot {s}'s old value");
            }
            assert!(idx.remove(h, v));
        }
        assert!(idx.is_clean());
    }

    #[test]
    fn kind_hides_only_a_mappings_hint() {
        for k in [0, OUT_BIT, ADF_BIT, XIN_BITS, M_IN, M_OUT] {
            assert_eq!(kind(12345 | k), k);
        }
        assert_eq!(kind(12345 | M_IN | SEP_BIT), M_IN);
        assert_eq!(kind(12345 | M_OUT | SEP_BIT), M_OUT);
    }

    /// Distinct hashes with spread homes and tags.
    fn spread(s: u32) -> Hash {
        u64::from(s).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn a_full_queue_is_stored_and_the_table_never_overfills() {
        let mut idx = Index::with_capacity(100);
        let room = idx.entries as u32 - 1;
        for s in 0..room {
            assert!(idx.insert_later(spread(s), s));
            assert!(idx.n_deferred <= DEFERRED);
        }
        // A hash no stored key shares its home and tag with.
        let absent = idx.hash_at(0, 0xee);
        assert!(
            !idx.insert_later(absent, 999),
            "no room is refused, not queued"
        );
        assert!(!idx.insert(absent, 999));
        for s in 0..room {
            assert_eq!(idx.find(spread(s), |x| x == s).map(|x| x.1), Some(s));
        }
        idx.flush::<crate::NoPrefetch>();
        assert_eq!(idx.len(), room as usize);
        assert_eq!(
            idx.find(absent, |_| true),
            None,
            "a full table still answers a miss"
        );
    }

    #[test]
    fn a_lookup_ends_when_every_bucket_has_overflowed() {
        // Two buckets, each of which a key passed full (the first's count from a key homed in it,
        // the second's from one that wrapped around to the first), each with a free entry again
        // afterwards: the overflow counts alone would send a miss round in circles.
        const W: usize = WIDTH;
        let mut idx = Index::with_capacity(8);
        assert_eq!(idx.buckets.len(), 2);
        let h0: Vec<Hash> = (0..=W as u8).map(|i| idx.hash_at(0, 0x10 + i)).collect();
        let h1: Vec<Hash> = (0..W as u8).map(|i| idx.hash_at(1, 0x40 + i)).collect();
        // W fill bucket 0; bucket 1 gets the one after them and W - 2 of its own.
        let mut keys: Vec<(Hash, u32)> = (0..=W).map(|i| (h0[i], i as u32)).collect();
        keys.extend((0..W - 2).map(|i| (h1[i], 100 + i as u32)));
        for &(h, s) in &keys {
            assert!(idx.insert(h, s));
        }
        let (last, wraps) = (
            (h1[W - 2], 100 + W as u32 - 2),
            (h1[W - 1], 100 + W as u32 - 1),
        );
        assert!(idx.remove(keys[0].0, keys[0].1));
        assert!(idx.insert(last.0, last.1), "bucket 1's last entry");
        assert!(idx.remove(keys[1].0, keys[1].1));
        assert!(
            idx.insert(wraps.0, wraps.1),
            "passes bucket 1 full, wraps to bucket 0"
        );
        assert!(idx.buckets.iter().all(|b| b.overflow() > 0));
        assert_eq!(idx.find(idx.hash_at(0, 0xee), |_| true), None);
        assert_eq!(idx.find(last.0, |s| s == 999), None);
        for &(h, s) in keys[2..].iter().chain(&[last, wraps]) {
            assert_eq!(idx.find(h, |x| x == s).map(|x| x.1), Some(s));
        }
    }

    #[test]
    fn a_queued_key_is_found_when_every_bucket_has_overflowed() {
        // Found in review: with both buckets' overflow counts up and false matches for the
        // queued key's hash in both (stored keys with the same hash), a probe that continued past
        // them went round the table again instead of on to the queue.
        const W: usize = WIDTH;
        let mut idx = Index::with_capacity(8);
        let h0: Vec<Hash> = (0..=W as u8).map(|i| idx.hash_at(0, 0x10 + i)).collect();
        let h1: Vec<Hash> = (0..W as u8).map(|i| idx.hash_at(1, 0x40 + i)).collect();
        let hq = h0[W];
        for i in 0..W as u32 {
            assert!(idx.insert(if i == 3 { hq } else { h0[i as usize] }, i));
        }
        assert!(
            idx.insert(hq, W as u32),
            "passes bucket 0 full, stored in bucket 1"
        );
        for i in 0..W as u32 - 2 {
            assert!(idx.insert(h1[i as usize], 100 + i));
        }
        assert!(idx.remove(h0[0], 0));
        assert!(idx.insert(h1[W - 2], 100 + W as u32 - 2));
        assert!(idx.remove(h0[1], 1));
        assert!(
            idx.insert(h1[W - 1], 100 + W as u32 - 1),
            "passes bucket 1 full, wraps to bucket 0"
        );
        assert!(idx.remove(h0[2], 2));
        assert!(idx.buckets.iter().all(|b| b.overflow() > 0));
        assert!(idx.insert_later(hq, 999));
        assert_eq!(idx.find(hq, |s| s == 999).map(|x| x.1), Some(999));
        for s in [3, W as u32] {
            assert_eq!(idx.find(hq, |x| x == s).map(|x| x.1), Some(s));
        }
        assert_eq!(
            idx.find(hq, |s| s == 12345),
            None,
            "an absent key still ends"
        );
        idx.flush::<crate::NoPrefetch>();
        assert_eq!(idx.find(hq, |s| s == 999).map(|x| x.1), Some(999));
    }

    #[test]
    fn the_queue_filter_never_hides_a_queued_key() {
        let mut idx = Index::with_capacity(1024);
        // Stored keys, then queued ones whose tag bytes fall in all four filter words, and whose
        // homes are those of stored keys; the first has a stored key's whole hash.
        for s in 0..120u32 {
            assert!(idx.insert(idx.hash_at((s % 10) as usize, (s * 7) as u8), s));
        }
        let queued: Vec<(Hash, u32)> = (0..DEFERRED as u32)
            .map(|j| (idx.hash_at((j % 10) as usize, (j * 4) as u8), 1000 + j))
            .collect();
        for &(h, s) in &queued {
            assert!(idx.insert_later(h, s));
        }
        for &(h, s) in &queued {
            assert_eq!(idx.find(h, |x| x == s).map(|x| x.1), Some(s), "{h:#x}");
        }
        for s in 0..120u32 {
            let h = idx.hash_at((s % 10) as usize, (s * 7) as u8);
            assert_eq!(idx.find(h, |x| x == s).map(|x| x.1), Some(s));
        }
        // Absent hashes, with a filter bit no queued key has and with one that some have: no
        // queued key answers them. (Stored keys may: twelve keys per home overflowed into the
        // next buckets, and their tags repeat.)
        assert_eq!(idx.find(idx.hash_at(3, 3), |s| s >= 1000), None);
        assert_eq!(idx.find(idx.hash_at(5, 4), |s| s >= 1000), None);
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
    fn a_buckets_overflow_count_is_never_taken_for_an_entry() {
        // The count shares the tag words: a count of 1 equals the tag of a hash whose bits 16-31
        // are 0, and the spare word is 0 like an unused entry. Neither may match.
        let mut idx = Index::with_capacity(8);
        for i in 0..=WIDTH as u8 {
            assert!(idx.insert(idx.hash_at(0, 0x10 + i), u32::from(i)));
        }
        assert_eq!(idx.buckets[0].overflow(), 1);
        assert_eq!(tag_of(0), 1);
        assert_eq!(idx.buckets[0].hits(0), 0, "the count is not a tag");
        assert_eq!(idx.buckets[0].empties(), 0, "a full bucket has no room");
        assert_eq!(idx.find_first(0), None);
        assert!(
            idx.insert(0, 77),
            "stored in bucket 1, after the overflowed key"
        );
        assert_eq!(idx.find_first(0), Some((WIDTH + 1, 77)));
    }

    #[test]
    fn find_skips_false_hash_matches() {
        let mut idx = Index::with_capacity(16);
        let (h, other) = (idx.hash_at(0, 0x42), idx.hash_at(0, 0x44));
        idx.insert(h, 1);
        idx.insert(h, 2 | OUT_BIT);
        assert_eq!(
            idx.find(h, |s| s == (2 | OUT_BIT)).map(|x| x.1),
            Some(2 | OUT_BIT)
        );
        assert_eq!(idx.find(h, |s| s == 3), None);
        assert_eq!(
            idx.find(other, |_| true),
            None,
            "another tag in the same bucket"
        );
    }

    #[test]
    fn sized_for_the_load_factor_not_the_next_power_of_two() {
        let (num, den) = MAX_LOAD;
        for keys in [1000, 1 << 20, (1 << 20) + 1, 17_000_000] {
            let n = Index::buckets_for(keys);
            let need = keys * den / num;
            assert!(n * WIDTH >= need, "{keys} keys: {n} buckets");
            assert!(
                n * WIDTH < need + WIDTH,
                "{keys} keys: {n} buckets, no more than needed"
            );
        }
        let idx = Index::with_capacity(1000);
        assert_eq!(
            idx.memory_bytes(),
            Index::buckets_for(1000) * 64 + DEFERRED * 16,
            "the table and the queue of (hash, slot) pairs"
        );
        assert_eq!(
            idx.buckets.as_ptr() as usize % 64,
            0,
            "buckets start on a cache line"
        );
    }
}
