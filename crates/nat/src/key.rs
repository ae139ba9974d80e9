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
    #[inline]
    pub fn hash(&self, seed: u64) -> u32 {
        let a = ((self.src as u64) << 32) | self.dst as u64;
        let b = ((self.sport as u64) << 48) | ((self.dport as u64) << 32) | self.proto as u64;
        let h = (a ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (b ^ seed.rotate_left(29)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        fmix64(h) as u32
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
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
            buckets[(k.hash(0x1234_5678_9abc_def0) & 1023) as usize] += 1;
        }
        let max = *buckets.iter().max().unwrap();
        let min = *buckets.iter().min().unwrap();
        // Expected 64 per bucket; a sound hash stays within a few standard deviations (sigma = 8).
        assert!(max < 64 + 48 && min > 64 - 48, "min {min} max {max}");
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
