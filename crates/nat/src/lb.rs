//! Backend selection for destination NAT services: the three [`crate::Scheduler`]s and client-IP
//! affinity.
//!
//! Everything here is built once, when a rule set is published, and then only read on the packet
//! path: [`Maglev`], [`WeightedRandom`] and [`RoundRobin`] are immutable after construction (so one
//! instance can be shared by every worker), the little per-worker state they need (a random number,
//! a round-robin cursor) is passed in by the caller, and [`Affinity`] is a fixed-size table owned by
//! one shard. Nothing allocates or locks after construction.
//!
//! Every selector returns an index into the backend list it was built from (`u16`: at most
//! [`MAX_BACKENDS`] backends; entries past that are ignored, as if their weight were 0), or `None`
//! when no backend has a weight.

use crate::Backend;

/// Most backends a selector can choose from: indexes are `u16`. Backends past this many are ignored
/// (never chosen), as if their weight were 0.
pub const MAX_BACKENDS: usize = 1 << 16;

/// Default Maglev lookup table size: a prime, and large enough (≥ 100 × backends, as the paper
/// recommends) for the shares to follow the weights closely with up to ~650 backends.
pub const MAGLEV_SIZE: usize = 65537;

/// Longest [`RoundRobin`] schedule: totals of weights above it are scaled down.
pub const RR_MAX_PERIOD: usize = 1 << 16;

/// The splitmix64 finalizer (Steele et al., "Fast splittable pseudorandom number generators"): a
/// bijective 64-bit mixer whose every output bit depends on every input bit. Cheap (two multiplies),
/// which matters because it runs for every new flow.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a flow's 5-tuple for [`Maglev::lookup`].
///
/// The seed should be secret (so clients cannot pick tuples that all land on one backend) and the
/// same on every worker, and on every node that serves the service behind ECMP: the point of
/// consistent hashing is that everyone who sees a flow picks the same backend for it.
#[inline]
pub fn flow_hash(seed: u64, src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> u64 {
    let a = (u64::from(src) << 32) | u64::from(dst);
    let b = (u64::from(sport) << 24) | (u64::from(dport) << 8) | u64::from(proto);
    // Two rounds: the first spreads the addresses (keyed by the seed), the second folds the ports in
    // with full avalanche, so that flows differing only in the source port spread over the table.
    mix64(mix64(a ^ seed) ^ b)
}

/// The stable key of a backend for [`Maglev`]: its address and port, `(addr << 16) | port`. It must
/// not depend on the backend's position in the list, so that reordering, adding or removing other
/// backends leaves this one's permutation alone.
#[inline]
pub fn backend_key(b: &Backend) -> u64 {
    (u64::from(b.addr) << 16) | u64::from(b.port)
}

/// Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
/// Balancer", NSDI 2016, section 3.4).
///
/// A lookup table of `M` slots (M prime) maps a flow hash to a backend. Each backend has a
/// permutation of the slots, `(offset + j × skip) mod M` for j = 0, 1, …, with offset and skip from
/// two different hashes of its stable key (skip in 1..M, so with M prime the permutation visits every
/// slot). The table is filled in rounds: at its turn a backend takes the next slot of its permutation
/// that is still empty. Because a backend's permutation does not depend on the others, removing one
/// of N backends reassigns its slots and disturbs only a few others: about 1/N of the flows change
/// backend, not all of them.
///
/// **Weights.** A backend of weight 0 takes no turns and gets no slots. Otherwise each backend keeps
/// a credit: every round it earns its weight, and while the credit is at least the largest weight it
/// spends that much on one turn. The heaviest backend thus takes a turn every round and backend `i`
/// on a fraction `w_i / w_max` of the rounds, so its share of the table is `w_i / Σw` to within a
/// slot or two (with equal weights this is exactly the paper's algorithm). Turns within a round go in
/// the order of the backend keys, so the table depends only on the set of (key, weight) pairs, not on
/// the order of the list.
///
/// **Cost.** Construction (control plane) takes about `M × w_max / w_mean` turns plus the paper's
/// `O(M log M)` probing; the table is `2 × M` bytes. A lookup is one multiply and one load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Backend index per slot; empty when no backend has a weight.
    table: Vec<u16>,
}

impl Maglev {
    /// Builds the table for `backends`, given as (stable key, weight) (see [`backend_key`]);
    /// [`Maglev::lookup`] returns indexes into this slice.
    ///
    /// `size` should be a prime (e.g. [`MAGLEV_SIZE`]) well above the number of backends; it is
    /// rounded up to the next prime (at least 2), since the permutations only cover the table when
    /// its size is prime. With fewer slots than weighted backends some backends get none.
    pub fn new(backends: &[(u64, u32)], size: usize) -> Maglev {
        let m = next_prime(size.max(2));
        // Active backends (index, key, weight), in key order so the table is independent of the
        // list order.
        let mut active: Vec<(u16, u64, u32)> = backends
            .iter()
            .take(MAX_BACKENDS)
            .enumerate()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(i, &(k, w))| (i as u16, k, w))
            .collect();
        if active.is_empty() {
            return Maglev { table: Vec::new() };
        }
        active.sort_by_key(|&(i, k, _)| (k, i));
        let w_max = u64::from(active.iter().map(|a| a.2).max().unwrap_or(1));
        // Per backend: current position in its permutation, skip, credit.
        let mut perm: Vec<(u64, u64, u64)> = active
            .iter()
            .map(|&(_, k, _)| {
                let offset = mix64(k ^ 0x9E37_79B9_7F4A_7C15) % m as u64;
                let skip = mix64(k ^ 0xC2B2_AE3D_27D4_EB4F) % (m as u64 - 1) + 1;
                (offset, skip, 0)
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m];
        let mut filled = 0usize;
        'fill: loop {
            for (a, p) in active.iter().zip(perm.iter_mut()) {
                p.2 += u64::from(a.2);
                if p.2 < w_max {
                    continue;
                }
                p.2 -= w_max;
                // The next empty slot of this backend's permutation. One exists while the table is
                // not full, since the permutation visits every slot.
                loop {
                    let c = p.0 as usize;
                    p.0 += p.1;
                    if p.0 >= m as u64 {
                        p.0 -= m as u64;
                    }
                    if table[c] == EMPTY {
                        table[c] = u32::from(a.0);
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_iter().map(|b| b as u16).collect(),
        }
    }

    /// [`Maglev::new`] over a rule's backends, keyed by [`backend_key`].
    pub fn from_backends(backends: &[Backend], size: usize) -> Maglev {
        let keys: Vec<(u64, u32)> = backends
            .iter()
            .map(|b| (backend_key(b), b.weight))
            .collect();
        Maglev::new(&keys, size)
    }

    /// The backend (index into the list the table was built from) for a flow, or `None` when no
    /// backend has a weight.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<u16> {
        // Multiply-shift range reduction (Lemire) instead of `%`: one multiply rather than a 64-bit
        // division on the packet path. It uses the high bits of the hash, which `flow_hash` mixes
        // as well as the low ones.
        let slot = ((u128::from(flow_hash) * self.table.len() as u128) >> 64) as usize;
        self.table.get(slot).copied()
    }

    /// Table size (a prime), or 0 when no backend has a weight.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no backend has a weight (every lookup returns `None`).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// The smallest prime ≥ `n` (n ≥ 2), by trial division: table sizes are small and this runs once.
fn next_prime(mut n: usize) -> usize {
    fn is_prime(n: usize) -> bool {
        if n < 4 {
            return n >= 2;
        }
        if n.is_multiple_of(2) {
            return false;
        }
        let mut d = 3;
        while d * d <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 2;
        }
        true
    }
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// Weighted random choice: backend `i` with probability `w_i / Σw` (kube-proxy's iptables mode).
///
/// Cumulative weights; a uniform random `u32` `r` is mapped onto `[0, Σw)` by multiply-shift,
/// `(r × Σw) >> 32`, and the backend is the first whose cumulative weight exceeds it. Every
/// backend's probability is within 2⁻³² of its share (exactly `w_i / Σw` when `Σw` divides 2³²);
/// weights sum as `u64`, so they cannot overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedRandom {
    /// Running sum of the weights, one per backend (zero-weight ones included, so the position is
    /// the index).
    cumulative: Vec<u64>,
    total: u64,
}

/// Up to this many backends a linear scan of the cumulative weights beats a binary search (one or
/// two cache lines, no unpredictable branches).
const LINEAR_SCAN: usize = 16;

impl WeightedRandom {
    /// One weight per backend; [`WeightedRandom::pick`] returns indexes into this slice.
    pub fn new(weights: &[u32]) -> WeightedRandom {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .take(MAX_BACKENDS)
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        WeightedRandom { cumulative, total }
    }

    /// [`WeightedRandom::new`] over a rule's backends.
    pub fn from_backends(backends: &[Backend]) -> WeightedRandom {
        let w: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        WeightedRandom::new(&w)
    }

    /// The backend for uniform random `r`, or `None` when the weights sum to 0.
    #[inline]
    pub fn pick(&self, r: u32) -> Option<u16> {
        if self.total == 0 {
            return None;
        }
        // x in [0, total): u128 because total can exceed 2^32.
        let x = ((u128::from(r) * u128::from(self.total)) >> 32) as u64;
        // The first backend whose cumulative weight exceeds x. A zero-weight backend never is: its
        // cumulative weight equals its predecessor's, which would have been found first.
        let i = if self.cumulative.len() <= LINEAR_SCAN {
            self.cumulative.iter().position(|&c| c > x)?
        } else {
            self.cumulative.partition_point(|&c| c <= x)
        };
        Some(i as u16)
    }

    /// Sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Exact weighted round-robin: over every [`RoundRobin::len`] consecutive picks from one cursor,
/// each backend is picked exactly its (effective) weight times, interleaved.
///
/// The schedule is nginx's smooth weighted round-robin, run once at construction: at every step each
/// backend's current value grows by its weight, the largest (the first on a tie) is picked and loses
/// the total. Weights 5:1:1 give `a a b a c a a` rather than five `a` in a row. The schedule is a
/// precomputed array, so a pick is a load and a compare; the cursor is the worker's.
///
/// **Effective weights.** Weights are divided by their greatest common divisor first (1:1 is a
/// schedule of 2, not of 2000 for 1000:1000). If they still sum to more than [`RR_MAX_PERIOD`], they
/// are scaled down proportionally: `max(1, ⌊w × (RR_MAX_PERIOD − n) / Σw⌋)` over the n backends with a
/// weight (then divided by their gcd again), which keeps the sum within the cap, every weighted
/// backend in the schedule, and each share within `1 / (RR_MAX_PERIOD - n)` of the configured one.
///
/// **Cost.** Construction is `O(period × backends)` (control plane); equal weights take a shortcut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundRobin {
    schedule: Vec<u16>,
}

impl RoundRobin {
    /// One weight per backend; [`RoundRobin::pick`] returns indexes into this slice.
    pub fn new(weights: &[u32]) -> RoundRobin {
        let mut w: Vec<u64> = weights
            .iter()
            .take(MAX_BACKENDS)
            .map(|&w| u64::from(w))
            .collect();
        reduce_by_gcd(&mut w);
        let total: u64 = w.iter().sum();
        if total > RR_MAX_PERIOD as u64 {
            let n = w.iter().filter(|&&x| x > 0).count() as u64;
            // n ≤ MAX_BACKENDS = RR_MAX_PERIOD, so this does not underflow; w × budget < 2^49.
            let budget = RR_MAX_PERIOD as u64 - n;
            for x in w.iter_mut().filter(|x| **x > 0) {
                *x = (*x * budget / total).max(1);
            }
            reduce_by_gcd(&mut w);
        }
        let total: u64 = w.iter().sum();
        let active: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0).collect();
        let mut schedule = Vec::with_capacity(total as usize);
        if active.iter().all(|&i| w[i] == 1) {
            // Equal weights (all 1 after the gcd): smooth round-robin visits them in index order.
            schedule.extend(active.iter().map(|&i| i as u16));
        } else {
            let mut current = vec![0i64; active.len()];
            for _ in 0..total {
                let mut best = 0;
                for (j, &i) in active.iter().enumerate() {
                    current[j] += w[i] as i64;
                    if current[j] > current[best] {
                        best = j;
                    }
                }
                current[best] -= total as i64;
                schedule.push(active[best] as u16);
            }
        }
        RoundRobin { schedule }
    }

    /// [`RoundRobin::new`] over a rule's backends.
    pub fn from_backends(backends: &[Backend]) -> RoundRobin {
        let w: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        RoundRobin::new(&w)
    }

    /// The next backend for the worker whose cursor this is, or `None` when no backend has a weight.
    ///
    /// Any cursor value is accepted: one past the end (for instance, left from a longer schedule of
    /// the previous rule set) starts over. Start each worker's cursor at a different value (its
    /// worker number, or a random one) so that the workers do not all send their first flow to the
    /// same backend.
    #[inline]
    pub fn pick(&self, cursor: &mut u32) -> Option<u16> {
        // A compare rather than `%`: no division on the packet path.
        let i = if (*cursor as usize) < self.schedule.len() {
            *cursor as usize
        } else {
            0
        };
        let b = *self.schedule.get(i)?;
        *cursor = if i + 1 == self.schedule.len() {
            0
        } else {
            i as u32 + 1
        };
        Some(b)
    }

    /// Length of the schedule: the sum of the effective weights (0 when no backend has a weight).
    pub fn len(&self) -> usize {
        self.schedule.len()
    }

    /// Whether no backend has a weight.
    pub fn is_empty(&self) -> bool {
        self.schedule.is_empty()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides all weights by the gcd of the non-zero ones.
fn reduce_by_gcd(w: &mut [u64]) {
    let g = w.iter().fold(0, |g, &x| gcd(g, x));
    if g > 1 {
        for x in w.iter_mut() {
            *x /= g;
        }
    }
}

/// Ways (slots) per bucket of [`Affinity`]: the bounded probe. 8 entries of 16 bytes are two cache
/// lines.
const AFFINITY_WAYS: usize = 8;
/// Entry key bits: client address (0..32), rule (32..48), in use (48), being moved by `remap` (49).
const KEY_USED: u64 = 1 << 48;
const KEY_MOVING: u64 = 1 << 49;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AffinityEntry {
    /// 0 when empty.
    key: u64,
    /// Last use, seconds.
    tick: u32,
    backend: u16,
}

/// Client-IP affinity (Kubernetes `sessionAffinity: ClientIP`): which backend a client's last flow
/// to a rule got, so its next new flow goes there too, until it has been idle longer than the rule's
/// timeout.
///
/// A fixed table of `capacity` entries (16 bytes each) for one shard. A (client, rule) key hashes, with
/// the shard's secret seed so that outside clients cannot aim at one bucket, to a bucket of
/// 8 entries, and lives only there: a lookup reads at most 8 entries. When a new
/// key finds its bucket full, it replaces the entry used least recently (expired ones first, since
/// they are the stalest). Affinity is a preference, not state a flow depends on: losing an entry
/// only means the client's next flow is scheduled afresh, and a lookup never returns the entry of
/// another (client, rule).
///
/// Ticks are `u32` seconds compared with wrapping arithmetic, so any epoch works; an entry idle for
/// more than 2³¹ s would look fresh again, which cannot happen with any timeout in use.
#[derive(Debug, Clone)]
pub struct Affinity {
    entries: Vec<AffinityEntry>,
    /// Number of buckets − 1 (a power of two minus 1).
    bucket_mask: usize,
    seed: u64,
}

impl Affinity {
    /// A table of at least `capacity` entries (rounded up to a power of two, at least 8), keyed with
    /// `seed` (random per shard).
    pub fn new(capacity: usize, seed: u64) -> Affinity {
        let capacity = capacity.max(AFFINITY_WAYS).next_power_of_two();
        Affinity {
            entries: vec![AffinityEntry::default(); capacity],
            bucket_mask: capacity / AFFINITY_WAYS - 1,
            seed,
        }
    }

    #[inline]
    fn key(client: u32, rule: u16) -> u64 {
        KEY_USED | (u64::from(rule) << 32) | u64::from(client)
    }

    /// First entry of the bucket of `key`.
    #[inline]
    fn bucket(&self, key: u64) -> usize {
        (mix64(key ^ self.seed) as usize & self.bucket_mask) * AFFINITY_WAYS
    }

    /// The backend `client` was given for `rule`, unless it has been idle for more than `timeout_s`
    /// seconds (then the entry is dropped). A hit counts as use: the entry's idle time restarts.
    ///
    /// The index is whatever was remembered: after a rule-set change, run [`Affinity::remap`] (or
    /// [`Affinity::forget_rule`], [`Affinity::clear`]) before looking up against the new rules.
    #[inline]
    pub fn lookup(&mut self, client: u32, rule: u16, now: u32, timeout_s: u32) -> Option<u16> {
        let key = Self::key(client, rule);
        let b = self.bucket(key);
        for e in &mut self.entries[b..b + AFFINITY_WAYS] {
            if e.key == key {
                if now.wrapping_sub(e.tick) > timeout_s {
                    *e = AffinityEntry::default();
                    return None;
                }
                e.tick = now;
                return Some(e.backend);
            }
        }
        None
    }

    /// Remembers that `client`'s flow to `rule` went to `backend` at `now`, replacing what it had,
    /// or, if its bucket is full, the least recently used entry of the bucket.
    #[inline]
    pub fn remember(&mut self, client: u32, rule: u16, backend: u16, now: u32) {
        self.insert(Self::key(client, rule), backend, now, true);
    }

    /// Puts an entry in its bucket: over the entry of the same key, else in an empty slot, else over
    /// the stalest entry that is not waiting to be moved by `remap`. With `evict_fresher` false
    /// (remap), an entry fresher than this one is kept and this one dropped instead.
    #[inline]
    fn insert(&mut self, key: u64, backend: u16, tick: u32, evict_fresher: bool) {
        let b = self.bucket(key);
        let bucket = &mut self.entries[b..b + AFFINITY_WAYS];
        let mut victim = None;
        // Staleness relative to `tick`: the smaller, the staler (empty is the stalest of all).
        let mut victim_age = i64::MAX;
        for (i, e) in bucket.iter_mut().enumerate() {
            if e.key == key {
                e.backend = backend;
                e.tick = tick;
                return;
            }
            let age = if e.key == 0 {
                i64::MIN
            } else if e.key & KEY_MOVING != 0 {
                continue;
            } else {
                i64::from(e.tick.wrapping_sub(tick) as i32)
            };
            if age < victim_age {
                victim = Some(i);
                victim_age = age;
            }
        }
        if let Some(i) = victim
            && (evict_fresher || victim_age <= 0)
        {
            bucket[i] = AffinityEntry { key, tick, backend };
        }
    }

    /// Drops every entry of `rule` (a rule that was removed, or whose backends all changed).
    pub fn forget_rule(&mut self, rule: u16) {
        for e in &mut self.entries {
            if e.key != 0 && (e.key >> 32) as u16 == rule {
                *e = AffinityEntry::default();
            }
        }
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.fill(AffinityEntry::default());
    }

    /// Carries the table over to a new rule set: `f(rule, backend)` gives the entry's new (rule,
    /// backend), or `None` to drop it (its rule or backend is gone, or the backend's weight is now 0
    /// and new flows must avoid it). Idle times are kept.
    ///
    /// Entries whose rule changes move to another bucket; one that finds its new bucket full of
    /// fresher entries is dropped. `f` is called exactly once per entry. No allocation: the moves
    /// are marked in place in a first pass and made in a second.
    pub fn remap(&mut self, f: impl Fn(u16, u16) -> Option<(u16, u16)>) {
        for e in &mut self.entries {
            if e.key == 0 {
                continue;
            }
            let rule = (e.key >> 32) as u16;
            match f(rule, e.backend) {
                None => *e = AffinityEntry::default(),
                Some((r, b)) => {
                    e.backend = b;
                    if r != rule {
                        e.key = Self::key(e.key as u32, r) | KEY_MOVING;
                    }
                }
            }
        }
        for i in 0..self.entries.len() {
            if self.entries[i].key & KEY_MOVING == 0 {
                continue;
            }
            let mut e = std::mem::take(&mut self.entries[i]);
            // A move may displace an entry that is itself waiting to move (its slot is taken by one
            // that belongs there): carry that one on. Each step settles one entry, so this ends.
            while let Some(next) = self.settle(e) {
                e = next;
            }
        }
    }

    /// Puts a moving entry in its new bucket (the second pass of `remap`): over the entry of the
    /// same key, else in an empty slot, else in the slot of an entry still waiting to move (which is
    /// returned, to be moved next), else over the stalest entry if that one is no fresher. A bucket
    /// holding entries that are about to leave must not turn away the ones arriving.
    fn settle(&mut self, mut e: AffinityEntry) -> Option<AffinityEntry> {
        e.key &= !KEY_MOVING;
        let b = self.bucket(e.key);
        let bucket = &mut self.entries[b..b + AFFINITY_WAYS];
        if let Some(x) = bucket.iter_mut().find(|x| x.key == e.key) {
            // Two old entries became one (rules merged): keep the fresher.
            if (e.tick.wrapping_sub(x.tick) as i32) > 0 {
                *x = e;
            }
            return None;
        }
        if let Some(x) = bucket.iter_mut().find(|x| x.key == 0) {
            *x = e;
            return None;
        }
        if let Some(i) = bucket.iter().position(|x| x.key & KEY_MOVING != 0) {
            return Some(std::mem::replace(&mut bucket[i], e));
        }
        self.insert(e.key, e.backend, e.tick, false);
        None
    }

    /// Number of entries (a power of two).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Entries in use, expired ones included (a full scan: for statistics and tests).
    pub fn occupied(&self) -> usize {
        self.entries.iter().filter(|e| e.key != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Deterministic test RNG (splitmix64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(self.0)
        }
        fn u32(&mut self) -> u32 {
            (self.next() >> 32) as u32
        }
    }

    fn shares(counts: &[u64]) -> Vec<f64> {
        let n: u64 = counts.iter().sum();
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    // ---- weighted random ----

    /// Weights 1:2:3 over 600 000 seeded draws: each backend's share is within ±1 percentage point of
    /// 1/6, 2/6, 3/6 (the sampling standard deviation is about 0.06 points).
    #[test]
    fn weighted_random_follows_the_weights() {
        let wr = WeightedRandom::new(&[1, 2, 3]);
        let mut rng = Rng(1);
        let mut counts = [0u64; 3];
        for _ in 0..600_000 {
            counts[wr.pick(rng.u32()).unwrap() as usize] += 1;
        }
        for (i, s) in shares(&counts).iter().enumerate() {
            let want = (i + 1) as f64 / 6.0;
            assert!(
                (s - want).abs() <= 0.01,
                "backend {i}: share {s:.4}, want {want:.4}"
            );
        }
    }

    #[test]
    fn weighted_random_never_picks_zero_weight() {
        let wr = WeightedRandom::new(&[0, 1, 0, 2, 0]);
        assert_eq!(
            wr.pick(0),
            Some(1),
            "lowest r goes to the first weighted backend"
        );
        assert_eq!(
            wr.pick(u32::MAX),
            Some(3),
            "highest r goes to the last weighted one"
        );
        let mut rng = Rng(2);
        for _ in 0..100_000 {
            let b = wr.pick(rng.u32()).unwrap();
            assert!(b == 1 || b == 3, "picked zero-weight backend {b}");
        }
        // Many backends (binary search path), only one weighted.
        let mut w = vec![0u32; 100];
        w[57] = 9;
        let wr = WeightedRandom::new(&w);
        for _ in 0..10_000 {
            assert_eq!(wr.pick(rng.u32()), Some(57));
        }
    }

    #[test]
    fn weighted_random_without_weights_is_none() {
        assert_eq!(WeightedRandom::new(&[0, 0, 0]).pick(12345), None);
        assert_eq!(WeightedRandom::new(&[]).pick(0), None);
    }

    /// Weights whose sum does not fit in 32 bits still give equal shares (±1 point).
    #[test]
    fn weighted_random_huge_weights() {
        let wr = WeightedRandom::new(&[u32::MAX; 4]);
        assert_eq!(wr.total(), 4 * u64::from(u32::MAX));
        let mut rng = Rng(3);
        let mut counts = [0u64; 4];
        for _ in 0..400_000 {
            counts[wr.pick(rng.u32()).unwrap() as usize] += 1;
        }
        for s in shares(&counts) {
            assert!((s - 0.25).abs() <= 0.01, "{counts:?}");
        }
    }

    // ---- round-robin ----

    fn rr_picks(rr: &RoundRobin, n: usize) -> Vec<u16> {
        let mut cursor = 0;
        (0..n).map(|_| rr.pick(&mut cursor).unwrap()).collect()
    }

    fn longest_run(picks: &[u16]) -> usize {
        let (mut best, mut run) = (0, 0);
        for (i, p) in picks.iter().enumerate() {
            run = if i > 0 && picks[i - 1] == *p {
                run + 1
            } else {
                1
            };
            best = best.max(run);
        }
        best
    }

    /// Weights 1:2:3: every window of 6 consecutive picks (across the schedule's wrap-around too)
    /// has backend 0 once, 1 twice and 2 three times.
    #[test]
    fn round_robin_is_exact_in_every_window() {
        let rr = RoundRobin::new(&[1, 2, 3]);
        assert_eq!(rr.len(), 6);
        let picks = rr_picks(&rr, 60);
        for (start, win) in picks.windows(6).enumerate() {
            let mut counts = [0; 3];
            for &p in win {
                counts[p as usize] += 1;
            }
            assert_eq!(counts, [1, 2, 3], "window at {start}: {win:?}");
        }
    }

    #[test]
    fn round_robin_equal_weights_alternate() {
        assert_eq!(rr_picks(&RoundRobin::new(&[1, 1]), 6), [0, 1, 0, 1, 0, 1]);
        // Equal weights reduce by their gcd: a schedule of 3, not 3000.
        let rr = RoundRobin::new(&[1000, 1000, 1000]);
        assert_eq!(rr.len(), 3);
        assert_eq!(rr_picks(&rr, 6), [0, 1, 2, 0, 1, 2]);
    }

    /// 5:1:1 is nginx's `a a b a c a a`: never five of the same in a row, the wrap-around included.
    #[test]
    fn round_robin_interleaves() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(rr_picks(&rr, 7), [0, 0, 1, 0, 2, 0, 0]);
        assert!(longest_run(&rr_picks(&rr, 21)) < 5);
        // 10:1: the light backend splits the heavy one's run in the middle.
        let picks = rr_picks(&RoundRobin::new(&[1, 10]), 33);
        assert!(longest_run(&picks) <= 10, "{picks:?}");
    }

    #[test]
    fn round_robin_skips_zero_weights() {
        let rr = RoundRobin::new(&[0, 2, 0, 1]);
        let picks = rr_picks(&rr, 30);
        assert!(picks.iter().all(|&p| p == 1 || p == 3), "{picks:?}");
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 20);
        assert_eq!(RoundRobin::new(&[0, 0]).pick(&mut 0), None);
        assert!(RoundRobin::new(&[]).is_empty());
    }

    /// Weights summing past the cap are scaled: the schedule stays within 65 536 entries, every
    /// weighted backend keeps a place, and the counts keep the proportions (to within one pick).
    #[test]
    fn round_robin_scales_large_weights() {
        let w = [100_000u32, 50_000, 1, 0, 25_001];
        let rr = RoundRobin::new(&w);
        assert!(
            rr.len() <= RR_MAX_PERIOD && rr.len() > 60_000,
            "len {}",
            rr.len()
        );
        let mut counts = [0f64; 5];
        for p in rr_picks(&rr, rr.len()) {
            counts[p as usize] += 1.0;
        }
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        for i in [0, 1, 4] {
            let want = f64::from(w[i]) / total * rr.len() as f64;
            assert!(
                (counts[i] - want).abs() <= 1.0,
                "backend {i}: {} vs {want}",
                counts[i]
            );
        }
        assert_eq!(counts[2], 1.0, "the weight-1 backend keeps one place");
        assert_eq!(counts[3], 0.0);
    }

    /// A cursor from a longer schedule (the previous rule set) does not panic and starts over.
    #[test]
    fn round_robin_cursor_out_of_range() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut cursor = 1000;
        assert_eq!(rr.pick(&mut cursor), Some(0));
        assert_eq!(rr.pick(&mut cursor), Some(1));
        let mut cursor = u32::MAX;
        assert_eq!(rr.pick(&mut cursor), Some(0));
    }

    // ---- Maglev ----

    fn keys(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| {
                let b = Backend {
                    addr: 0x0a00_0000 + i as u32 + 1,
                    port: 8080,
                    weight: 1,
                };
                (backend_key(&b), b.weight)
            })
            .collect()
    }

    fn table_counts(m: &Maglev, n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &b in &m.table {
            c[b as usize] += 1;
        }
        c
    }

    /// 100 000 flow hashes from random 5-tuples.
    fn flows() -> Vec<u64> {
        let mut rng = Rng(7);
        (0..100_000)
            .map(|_| {
                let r = rng.next();
                flow_hash(0x5eed, r as u32, 0xc633_6401, (r >> 32) as u16, 443, 6)
            })
            .collect()
    }

    /// The key each flow lands on.
    fn assignment(m: &Maglev, k: &[(u64, u32)], flows: &[u64]) -> Vec<u64> {
        flows
            .iter()
            .map(|&h| k[m.lookup(h).unwrap() as usize].0)
            .collect()
    }

    /// Each backend's share of the table is within 1% (relative) of its weight share.
    #[test]
    fn maglev_shares_follow_weights() {
        for weights in [&[1u32, 2, 3][..], &[1, 1, 1, 1, 1], &[10, 1, 5, 100, 7, 3]] {
            let mut k = keys(weights.len());
            for (e, &w) in k.iter_mut().zip(weights) {
                e.1 = w;
            }
            let m = Maglev::new(&k, MAGLEV_SIZE);
            assert_eq!(m.len(), MAGLEV_SIZE);
            let total: u32 = weights.iter().sum();
            for (i, s) in shares(&table_counts(&m, weights.len())).iter().enumerate() {
                let want = f64::from(weights[i]) / f64::from(total);
                assert!(
                    (s / want - 1.0).abs() <= 0.01,
                    "{weights:?} backend {i}: {s} vs {want}"
                );
            }
        }
    }

    #[test]
    fn maglev_zero_weight_and_empty() {
        let mut k = keys(4);
        k[1].1 = 0;
        let m = Maglev::new(&k, MAGLEV_SIZE);
        assert_eq!(table_counts(&m, 4)[1], 0, "weight 0 gets no slots");
        for k in &mut k {
            k.1 = 0;
        }
        let m = Maglev::new(&k, MAGLEV_SIZE);
        assert!(m.is_empty());
        assert_eq!(m.lookup(42), None);
        assert_eq!(Maglev::new(&[], MAGLEV_SIZE).lookup(42), None);
        // One backend takes everything; sizes round up to a prime.
        let m = Maglev::new(&keys(1), 100);
        assert_eq!(m.len(), 101);
        assert!(flows().iter().all(|&h| m.lookup(h) == Some(0)));
    }

    /// The table depends on the set of backends, not on the order they are listed in.
    #[test]
    fn maglev_ignores_list_order() {
        let k = keys(7);
        let mut r = k.clone();
        r.reverse();
        r.swap(1, 4);
        let (a, b) = (Maglev::new(&k, MAGLEV_SIZE), Maglev::new(&r, MAGLEV_SIZE));
        let f = flows();
        assert_eq!(assignment(&a, &k, &f), assignment(&b, &r, &f));
    }

    /// Fraction of flows whose backend changed between two assignments, and the fraction of those
    /// not on `removed` (before) that changed anyway.
    fn disruption(before: &[u64], after: &[u64], removed: Option<u64>) -> (f64, f64) {
        let changed = before.iter().zip(after).filter(|(a, b)| a != b).count();
        let stayers: Vec<_> = before
            .iter()
            .zip(after)
            .filter(|(a, _)| Some(**a) != removed)
            .collect();
        let moved = stayers.iter().filter(|(a, b)| a != b).count();
        (
            changed as f64 / before.len() as f64,
            moved as f64 / stayers.len() as f64,
        )
    }

    /// Removing one of N equal backends moves at most 1.3/N of the flows (ideal: exactly the removed
    /// backend's 1/N), and at most 3% of the flows on the other backends.
    #[test]
    fn maglev_removal_disrupts_little() {
        let f = flows();
        for n in [10usize, 3] {
            let k = keys(n);
            let before = assignment(&Maglev::new(&k, MAGLEV_SIZE), &k, &f);
            let gone = k[n / 2].0;
            let rest: Vec<_> = k.iter().copied().filter(|e| e.0 != gone).collect();
            let after = assignment(&Maglev::new(&rest, MAGLEV_SIZE), &rest, &f);
            assert!(after.iter().all(|&a| a != gone));
            let (changed, others) = disruption(&before, &after, Some(gone));
            println!(
                "maglev: removing 1 of {n} backends remapped {:.1}% of flows (ideal {:.1}%), \
                 {:.2}% of the flows on the other backends",
                changed * 100.0,
                100.0 / n as f64,
                others * 100.0
            );
            assert!(changed <= 1.3 / n as f64, "n={n}: {changed}");
            assert!(others <= 0.03, "n={n}: {others}");
        }
    }

    /// Adding an 11th equal backend moves at most 1.3/11 of the flows (ideal: the 1/11 it takes).
    #[test]
    fn maglev_addition_disrupts_little() {
        let f = flows();
        let k = keys(11);
        let before = assignment(&Maglev::new(&k[..10], MAGLEV_SIZE), &k[..10], &f);
        let after = assignment(&Maglev::new(&k, MAGLEV_SIZE), &k, &f);
        let (changed, _) = disruption(&before, &after, None);
        let to_new = after.iter().filter(|&&a| a == k[10].0).count() as f64 / f.len() as f64;
        println!(
            "maglev: adding an 11th backend remapped {:.1}% of flows (ideal {:.1}%), {:.1}% to the new one",
            changed * 100.0,
            100.0 / 11.0,
            to_new * 100.0
        );
        assert!(changed <= 1.3 / 11.0, "{changed}");
        assert!(
            to_new >= 0.9 / 11.0,
            "the new backend gets its share: {to_new}"
        );
    }

    /// flow_hash spreads flows that differ only in the source port, and depends on the seed.
    #[test]
    fn flow_hash_spreads_ports() {
        let m = Maglev::new(&keys(4), MAGLEV_SIZE);
        let mut counts = [0u64; 4];
        for sport in 0..40_000u16 {
            counts[m
                .lookup(flow_hash(1, 0x0a00_0001, 0xc633_6401, sport, 80, 6))
                .unwrap() as usize] += 1;
        }
        for s in shares(&counts) {
            assert!((s - 0.25).abs() <= 0.02, "{counts:?}");
        }
        assert_ne!(flow_hash(1, 1, 2, 3, 4, 6), flow_hash(2, 1, 2, 3, 4, 6));
        assert_ne!(flow_hash(1, 1, 2, 3, 4, 6), flow_hash(1, 1, 2, 3, 4, 17));
    }

    // ---- affinity ----

    #[test]
    fn affinity_remembers() {
        let mut a = Affinity::new(1000, 99);
        assert_eq!(a.capacity(), 1024);
        assert_eq!(a.lookup(0x0a00_0001, 3, 100, 10), None);
        a.remember(0x0a00_0001, 3, 7, 100);
        assert_eq!(a.lookup(0x0a00_0001, 3, 101, 10), Some(7));
        assert_eq!(a.lookup(0x0a00_0002, 3, 101, 10), None, "another client");
        a.remember(0x0a00_0001, 3, 2, 102);
        assert_eq!(
            a.lookup(0x0a00_0001, 3, 102, 10),
            Some(2),
            "remember replaces"
        );
        assert_eq!(a.occupied(), 1);
    }

    /// Idle for exactly the timeout is still valid, one second more is expired; a hit restarts the
    /// idle time.
    #[test]
    fn affinity_expires_and_is_refreshed_by_lookup() {
        let mut a = Affinity::new(64, 1);
        a.remember(5, 1, 4, 100);
        assert_eq!(a.lookup(5, 1, 110, 10), Some(4), "idle 10 = timeout");
        assert_eq!(a.lookup(5, 1, 120, 10), Some(4), "refreshed at 110");
        assert_eq!(a.lookup(5, 1, 131, 10), None, "idle 11 > timeout");
        assert_eq!(
            a.lookup(5, 1, 131, 1000),
            None,
            "an expired entry is dropped"
        );
        assert_eq!(a.occupied(), 0);
        // Across the u32 wrap of the clock.
        a.remember(6, 1, 9, u32::MAX - 2);
        assert_eq!(a.lookup(6, 1, 5, 10), Some(9));
        assert_eq!(a.lookup(6, 1, 16, 10), None);
    }

    #[test]
    fn affinity_rules_are_independent() {
        let mut a = Affinity::new(64, 2);
        a.remember(5, 1, 10, 0);
        a.remember(5, 2, 20, 0);
        assert_eq!(a.lookup(5, 1, 1, 10), Some(10));
        assert_eq!(a.lookup(5, 2, 1, 10), Some(20));
        a.forget_rule(1);
        assert_eq!(a.lookup(5, 1, 1, 10), None);
        assert_eq!(a.lookup(5, 2, 1, 10), Some(20));
        a.clear();
        assert_eq!(a.lookup(5, 2, 1, 10), None);
    }

    /// 20 000 clients in a 64-entry table: no panic, a lookup returns either nothing or the backend
    /// that very client was given, the latest client is always found, and the fresher of two entries
    /// survives.
    #[test]
    fn affinity_overflow_is_safe() {
        let mut a = Affinity::new(64, 0xfeed);
        let backend_of = |c: u32| (c.wrapping_mul(2_654_435_761) >> 20) as u16;
        let mut rng = Rng(11);
        let mut clients = Vec::new();
        for t in 0..20_000u32 {
            let c = rng.u32();
            clients.push(c);
            a.remember(c, 7, backend_of(c), t);
            assert_eq!(a.lookup(c, 7, t, 1_000_000), Some(backend_of(c)));
        }
        assert_eq!(a.occupied(), 64);
        let mut hits = 0;
        for &c in &clients {
            if let Some(b) = a.lookup(c, 7, 20_000, u32::MAX) {
                assert_eq!(
                    b,
                    backend_of(c),
                    "client {c:#x} got another client's backend"
                );
                hits += 1;
            }
        }
        assert!(hits <= 64);
        // LRU within a bucket: keep one client busy while flooding; it is never evicted.
        let mut a = Affinity::new(8, 3);
        a.remember(1, 0, 1, 0);
        for t in 1..1000u32 {
            a.remember(1000 + t, 0, 2, t);
            assert_eq!(a.lookup(1, 0, t, 10), Some(1), "t={t}");
        }
    }

    /// A rule-set change: rule 1 becomes rule 4 with backend indexes shifted by one, backend 0 of
    /// rule 1 is removed, rule 2 is removed, rule 3 is unchanged.
    #[test]
    fn affinity_remap() {
        let mut a = Affinity::new(4096, 5);
        let mut model = HashMap::new();
        for c in 0..300u32 {
            for rule in 1..=3u16 {
                let b = (c % 4) as u16;
                a.remember(c, rule, b, 100);
                model.insert((c, rule), b);
            }
        }
        a.remap(|rule, b| match rule {
            1 if b == 0 => None,
            1 => Some((4, b + 1)),
            3 => Some((3, b)),
            _ => None,
        });
        for (&(c, rule), &b) in &model {
            assert_eq!(
                a.lookup(c, rule, 101, 10),
                if rule == 3 { Some(b) } else { None }
            );
            if rule == 1 {
                let want = if b == 0 { None } else { Some(b + 1) };
                assert_eq!(a.lookup(c, 4, 101, 10), want, "client {c}");
            }
        }
    }

    /// Remap swapping two rules' ids calls the function once per entry (no entry is moved twice),
    /// and, the set of keys being the same after the swap, keeps every entry even in a table with
    /// buckets full to the last slot, although the moves pass through buckets still full of
    /// entries about to leave.
    #[test]
    fn affinity_remap_swap() {
        for capacity in [1024, 256, 64] {
            let build = |clients: &[u32]| {
                let mut a = Affinity::new(capacity, 6);
                for &c in clients {
                    a.remember(c, 1, 11, c);
                    a.remember(c, 2, 22, c);
                }
                a
            };
            // As many clients as fit without any eviction, both rules each.
            let mut clients = Vec::new();
            for c in 0..capacity as u32 {
                clients.push(c);
                if build(&clients).occupied() != 2 * clients.len() {
                    clients.pop();
                }
            }
            let mut a = build(&clients);
            assert!(
                a.occupied() * 2 > capacity,
                "a full table: {}",
                a.occupied()
            );
            a.remap(|rule, b| Some((3 - rule, b)));
            assert_eq!(a.occupied(), 2 * clients.len(), "capacity {capacity}");
            for &c in &clients {
                assert_eq!(
                    a.lookup(c, 2, c, 1000),
                    Some(11),
                    "capacity {capacity}, client {c}"
                );
                assert_eq!(
                    a.lookup(c, 1, c, 1000),
                    Some(22),
                    "capacity {capacity}, client {c}"
                );
            }
        }
    }
}
