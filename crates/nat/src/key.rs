//! Flow keys and their keyed hash.

/// The 5-tuple of a packet as seen on the wire, addresses and ports in host byte order.
///
/// ICMP query messages use the identifier as the port of the side that chose it: inside→outside echo
/// requests carry it in `sport`, replies from outside in `dport`, and the other port is 0. That keeps one
/// key shape for every protocol, so one index serves them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    /// Keyed hash. The seed is random per shard so that outside hosts cannot pick tuples that collide
    /// on purpose (hash flooding would turn every lookup into a long probe).
    ///
    /// The source address and port sit in the low bits of the two product inputs: a product's bit
    /// depends only on its inputs' bits at or below it, and an endpoint key (a mapping's, with no
    /// remote: `dst` and `dport` zero) has nothing else. With them in the high bits, as until
    /// 2026-12-07, the two products of all endpoint keys agreed in their low 32 bits, so those keys
    /// had hashes of 32 bits at most however they were mixed afterwards, and at 16M sessions a
    /// lookup of an absent endpoint met a false tag match 20 times as often as with a sound hash
    /// (0.32 % against 0.016 % of lookups; see the tests).
    #[inline]
    pub fn hash(&self, seed: u64) -> Hash {
        let a = self.src as u64 | (self.dst as u64) << 32;
        let b = self.sport as u64 | (self.dport as u64) << 16 | (self.proto as u64) << 32;
        let h = (a ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (b ^ seed.rotate_left(29)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        fold(h)
    }
}

/// A key's hash, as the index takes it: the home bucket comes from the high 32 bits, the tag from
/// bits 16-31 (see `index`). A 32-bit hash did not have the bits for both: the home of a table
/// of 2^23 buckets takes 23 of them, so the keys of one bucket had hashes within 2^9 of each other
/// and their tags told them apart only by those 9 bits; a lookup of an absent key at 16M sessions
/// then met a false tag match in 1.5 % of lookups (a fetched record for nothing), and at the
/// largest tables allowed (64 Mi records) in about 6 %.
pub type Hash = u64;

/// The hash from the 64 bits of the two products. A product's low bits depend only on the low
/// bits of its input, its high bits on all of them: keys that differ only in a field in the high
/// bits of an input give products that differ only in their high bits (a 5-tuple's remote
/// address and port; before 2026-12-07 also the source address and port). Two rounds of folding
/// the high half onto the low one and multiplying spread that over every output bit from the
/// 16th up, which the index needs at both ends: its home bucket comes from the high half, its tag
/// from bits 16-31 (the lowest bits of the last product depend on few bits of its input, so they
/// are not used). One round was not enough: for about a third of random seeds the 64K source ports of one
/// subscriber crowded into a fraction of the buckets (a review measured up to 30 % of them
/// overflowing, against 2.3 % for a sound hash; see the tests, which try many seeds). This is
/// MurmurHash3's 64-bit finaliser with shifts of 32 instead of 33.
#[inline]
fn fold(h: u64) -> Hash {
    let x = (h ^ (h >> 32)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    let p = (x ^ (x >> 32)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    p ^ (p >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_spreads_sequential_ports_over_buckets() {
        // 64K flows from one subscriber to one server differ only in the source port: the worst case for a
        // weak hash. Count how evenly they land in 1024 buckets.
        let mut buckets = vec![0u32; 1024];
        for p in 0..65536u32 {
            let k = FlowKey {
                src: 0x6440_000b,
                dst: 0xc633_640a,
                sport: p as u16,
                dport: 80,
                proto: 6,
            };
            buckets[home(k.hash(0x1234_5678_9abc_def0), 1024)] += 1;
        }
        let max = *buckets.iter().max().unwrap();
        let min = *buckets.iter().min().unwrap();
        // Expected 64 per bucket; a sound hash stays within a few standard deviations (sigma = 8).
        assert!(max < 64 + 48 && min > 64 - 48, "min {min} max {max}");
    }

    /// The bucket of `n` that the index makes `h`'s home (multiply-shift of the high half).
    fn home(h: Hash, n: u64) -> usize {
        (((h >> 32) * n) >> 32) as usize
    }

    /// Chi-square of `n` keys over `bins` bins, each key's bin from `bin_of(hash)`.
    fn chi_square(keys: &[FlowKey], seed: u64, bins: usize, bin_of: impl Fn(Hash) -> usize) -> f64 {
        let mut count = vec![0u32; bins];
        for k in keys {
            count[bin_of(k.hash(seed))] += 1;
        }
        let e = keys.len() as f64 / bins as f64;
        count.iter().map(|&c| (f64::from(c) - e).powi(2) / e).sum()
    }

    /// The bucket and tag (bits 16-31, the lowest forced to one, as the index keeps them) of `k`
    /// in a table of `buckets`, as one word.
    fn place(k: &FlowKey, seed: u64, buckets: u64) -> u64 {
        let h = k.hash(seed);
        (home(h, buckets) as u64) << 16 | ((h >> 16) & 0xffff | 1)
    }

    #[test]
    fn keys_of_one_bucket_are_told_apart_by_their_tags_in_a_large_table() {
        // A table of 2^22 buckets (the index of about 10M sessions) holding 2^24 keys, four per
        // bucket (a full index holds five), and 2^20 lookups of absent keys, each counted when a
        // stored key has its bucket and tag (a false match: a record fetched for nothing). A
        // sound hash gives about 2^20 * 4 / 2^15 = 128 of them. Endpoint keys (subscribers' source
        // ports with no remote, as every mapping's) and 5-tuples (subscriber ports to servers),
        // the absent ones the families' next members.
        // With the endpoint fields in the high bits of the products, endpoint keys' hashes had
        // 32 bits and about 2,100 of these lookups met a false match.
        let endpoint = |i: u32| FlowKey {
            src: 0x6440_0000 + (i >> 8),
            dst: 0,
            sport: 1024 + (i & 255) as u16,
            dport: 0,
            proto: 17,
        };
        let tuple = |i: u32| FlowKey {
            src: 0x6440_0000 + (i >> 12),
            dst: 0xc633_6400 + (i & 15),
            sport: 1024 + ((i >> 4) & 255) as u16,
            dport: 443,
            proto: 6,
        };
        let (stored, looked_up, buckets) = (1u32 << 24, 1u32 << 20, 1u64 << 22);
        for seed in [0x1234_5678_9abc_def0u64, 0x2e3a_4ef3_496f_4112] {
            for (name, family) in [
                ("endpoint", &endpoint as &dyn Fn(u32) -> FlowKey),
                ("5-tuple", &tuple),
            ] {
                let mut table: Vec<u64> = (0..stored)
                    .map(|i| place(&family(i), seed, buckets))
                    .collect();
                table.sort_unstable();
                let false_matches = (stored..stored + looked_up)
                    .filter(|&i| {
                        table
                            .binary_search(&place(&family(i), seed, buckets))
                            .is_ok()
                    })
                    .count();
                assert!(
                    false_matches < 256,
                    "seed {seed:#x}: {false_matches} of {looked_up} absent {name} keys met a false match"
                );
            }
        }
    }

    #[test]
    fn both_ends_of_the_hash_spread_structured_keys() {
        // The index's home bucket comes from the high half (multiply-shift) and its tag from bits
        // 16-31 (the low byte of which is also the queue filter's bit): both must spread keys that
        // differ in only a few bits, and independently of each other, since a tag only tells
        // apart keys of one bucket (the joint bins: five bits of the home, five of the tag). Four families: source
        // ports of one subscriber, subscribers of one /16 on one port, servers of one subscriber
        // port, and the endpoint keys mappings use (no remote).
        let mut families: Vec<Vec<FlowKey>> = Vec::new();
        let base = FlowKey {
            src: 0x6440_0000,
            dst: 0xc633_640a,
            sport: 1024,
            dport: 443,
            proto: 6,
        };
        families.push(
            (0..65536u32)
                .map(|p| FlowKey {
                    sport: p as u16,
                    ..base
                })
                .collect(),
        );
        families.push(
            (0..65536u32)
                .map(|i| FlowKey {
                    src: base.src + i,
                    ..base
                })
                .collect(),
        );
        families.push(
            (0..65536u32)
                .map(|i| FlowKey {
                    dst: base.dst + i,
                    ..base
                })
                .collect(),
        );
        families.push(
            (0..65536u32)
                .map(|i| FlowKey {
                    src: 0xcb00_7100 + (i >> 10),
                    dst: 0,
                    sport: (i & 1023) as u16 + 1024,
                    dport: 0,
                    proto: 17,
                })
                .collect(),
        );
        // Shards draw their seed at random, so the spread must hold for any seed, not a chosen
        // few: fixed corner cases and 64 more from a PRNG (among them one under which a single
        // fold-and-multiply, with the key fields placed as before 2026-12-07, crowded the source
        // ports into a fraction of the buckets).
        let mut rng = crate::TestRng(0x9e37_79b9_7f4a_7c15);
        let seeds: Vec<u64> = [0x1234_5678_9abc_def0u64, 0, u64::MAX, 0x2e3a_4ef3_496f_4112]
            .into_iter()
            .chain(std::iter::repeat_with(|| rng.next()).take(64))
            .collect();
        // 1023 degrees of freedom: mean 1023, sigma about 45; 1300 is six sigma.
        for (f, keys) in families.iter().enumerate() {
            for &seed in &seeds {
                let high = chi_square(keys, seed, 1024, |h| home(h, 1024));
                let low = chi_square(keys, seed, 1024, |h| ((h >> 16) & 1023) as usize);
                let tag = chi_square(keys, seed, 1024, |h| ((h >> 22) & 1023) as usize);
                let joint = chi_square(keys, seed, 1024, |h| {
                    home(h, 32) << 5 | ((h >> 16) & 31) as usize
                });
                assert!(
                    high < 1300.0 && low < 1300.0 && tag < 1300.0 && joint < 1300.0,
                    "family {f} seed {seed:#x}: chi-square high {high:.0} low {low:.0} tag {tag:.0} \
                     joint {joint:.0}"
                );
            }
        }
    }

    #[test]
    fn seed_changes_hash() {
        let k = FlowKey {
            src: 1,
            dst: 2,
            sport: 3,
            dport: 4,
            proto: 17,
        };
        assert_ne!(k.hash(1), k.hash(2));
        assert_eq!(k.hash(7), k.hash(7));
    }
}
