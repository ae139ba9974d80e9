//! Outside port allocation for one shard.
//!
//! Each (outside address, protocol) has a 65536-bit map; a set bit means "not available" (in use, outside
//! the configured range, or in a block owned by another worker). Ports are owned by workers in blocks of
//! [`BLOCK_PORTS`] consecutive ports, block `b` belonging to worker `b % workers`: the owner of an inbound
//! packet is then a pure function of its destination port, with no shared table to consult.
//!
//! Allocation is random (RFC 6056 style, RFC 6888 REQ-15: hard to guess): pick a random word of the
//! map, then the first free bit after a random rotation. TCP, UDP and ICMP identifiers are separate
//! spaces, as RFC 4787 allows.

use wire::ip_proto;

/// Ports per ownership block (one bitmap word).
pub const BLOCK_PORTS: u16 = 64;
const WORDS: usize = 65536 / 64;

/// Which worker owns outside `port` when `workers` workers share the pool.
#[inline]
pub fn port_owner(port: u16, workers: u16) -> u16 {
    (port / BLOCK_PORTS) % workers.max(1)
}

/// Index of a protocol's port space, or `None` for protocols that are not translated.
#[inline]
pub fn proto_index(proto: u8) -> Option<usize> {
    match proto {
        ip_proto::TCP => Some(0),
        ip_proto::UDP => Some(1),
        ip_proto::ICMP => Some(2),
        _ => None,
    }
}

pub struct PortAllocator {
    /// Sorted outside addresses this shard allocates from.
    addrs: Vec<u32>,
    /// `maps[addr_idx * 3 + proto_idx]`.
    maps: Vec<Box<[u64; WORDS]>>,
    /// Allocated ports per address, all protocols.
    in_use: Vec<u32>,
    /// Per address: first and last bitmap word of its pool's port range.
    spans: Vec<(usize, usize)>,
    rng: u64,
}

impl PortAllocator {
    /// `addrs` lists every outside address of every pool with its pool's usable range `lo..=hi`.
    /// An address listed twice keeps its first range (pools never overlap after config validation).
    pub fn new(addrs: &[(u32, u16, u16)], worker: u16, workers: u16, seed: u64) -> PortAllocator {
        let mut sorted = addrs.to_vec();
        sorted.sort_by_key(|a| a.0);
        sorted.dedup_by_key(|a| a.0);
        let mut maps = Vec::with_capacity(sorted.len() * 3);
        let mut spans = Vec::with_capacity(sorted.len());
        for &(_, lo, hi) in &sorted {
            let (lo, hi) = (lo.min(hi), hi.max(lo));
            let mut template = Box::new([u64::MAX; WORDS]);
            for port in lo..=hi {
                if port_owner(port, workers) == worker {
                    template[port as usize / 64] &= !(1u64 << (port % 64));
                }
            }
            maps.push(template.clone());
            maps.push(template.clone());
            maps.push(template);
            spans.push((lo as usize / 64, hi as usize / 64));
        }
        PortAllocator {
            in_use: vec![0; sorted.len()],
            addrs: sorted.iter().map(|a| a.0).collect(),
            maps,
            spans,
            rng: seed | 1,
        }
    }

    /// Index of an outside address, if this allocator manages it.
    #[inline]
    pub fn addr_index(&self, addr: u32) -> Option<usize> {
        self.addrs.binary_search(&addr).ok()
    }

    pub fn ports_in_use(&self, addr: u32) -> u32 {
        self.addr_index(addr).map_or(0, |i| self.in_use[i])
    }

    pub fn total_in_use(&self) -> u64 {
        self.in_use.iter().map(|&n| n as u64).sum()
    }

    /// Bytes used by the maps.
    pub fn memory_bytes(&self) -> usize {
        self.maps.len() * WORDS * 8
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: fast, and seeded from the OS per shard; port choice needs to be unpredictable to
        // off-path attackers, not cryptographically strong.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Allocate a random free port on `addr` for `proto`.
    pub fn alloc(&mut self, addr: u32, proto: u8) -> Option<u16> {
        let a = self.addr_index(addr)?;
        let p = proto_index(proto)?;
        let (first_word, last_word) = self.spans[a];
        let span = last_word - first_word + 1;
        let r = self.next_rand();
        let start = (r % span as u64) as usize;
        let rot = ((r >> 32) % 64) as u32;
        let map = &mut self.maps[a * 3 + p];
        for i in 0..span {
            let w = first_word + (start + i) % span;
            let word = map[w];
            if word == u64::MAX {
                continue;
            }
            // Rotate so the search inside the word starts at a random bit.
            let bit = ((!word).rotate_right(rot).trailing_zeros() + rot) % 64;
            map[w] |= 1u64 << bit;
            self.in_use[a] += 1;
            return Some((w * 64) as u16 + bit as u16);
        }
        None
    }

    /// Return a port. Freeing a port that is not allocated is ignored (and reported as false).
    pub fn free(&mut self, addr: u32, proto: u8, port: u16) -> bool {
        let (Some(a), Some(p)) = (self.addr_index(addr), proto_index(proto)) else {
            return false;
        };
        let w = port as usize / 64;
        let m = 1u64 << (port % 64);
        let map = &mut self.maps[a * 3 + p];
        if map[w] & m == 0 {
            return false;
        }
        map[w] &= !m;
        self.in_use[a] -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_port_in_range_once_then_runs_out() {
        let mut pa = PortAllocator::new(&[(0xcb00_7101, 1024, 2047)], 0, 1, 42);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1024 {
            let p = pa.alloc(0xcb00_7101, ip_proto::UDP).unwrap();
            assert!((1024..=2047).contains(&p), "port {p} out of range");
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(pa.alloc(0xcb00_7101, ip_proto::UDP), None);
        // Other protocols have their own space.
        assert!(pa.alloc(0xcb00_7101, ip_proto::TCP).is_some());
        assert_eq!(pa.ports_in_use(0xcb00_7101), 1025);
        assert!(pa.free(0xcb00_7101, ip_proto::UDP, 1500));
        assert!(
            !pa.free(0xcb00_7101, ip_proto::UDP, 1500),
            "double free must be refused"
        );
        assert_eq!(pa.alloc(0xcb00_7101, ip_proto::UDP), Some(1500));
    }

    #[test]
    fn workers_get_disjoint_blocks() {
        let addr = [(0x0a00_0001, 1024, 65535)];
        let mut w0 = PortAllocator::new(&addr, 0, 2, 1);
        let mut w1 = PortAllocator::new(&addr, 1, 2, 2);
        for _ in 0..5000 {
            let a = w0.alloc(addr[0].0, ip_proto::TCP).unwrap();
            let b = w1.alloc(addr[0].0, ip_proto::TCP).unwrap();
            assert_eq!(port_owner(a, 2), 0);
            assert_eq!(port_owner(b, 2), 1);
        }
    }

    #[test]
    fn allocation_is_not_sequential() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 7);
        let ports: Vec<u16> = (0..16)
            .map(|_| pa.alloc(1, ip_proto::TCP).unwrap())
            .collect();
        let sequential = ports
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(sequential < 4, "ports look predictable: {ports:?}");
    }

    #[test]
    fn unknown_address_or_protocol_is_refused() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 7);
        assert_eq!(pa.alloc(2, ip_proto::TCP), None);
        assert_eq!(pa.alloc(1, 47), None);
    }
}
