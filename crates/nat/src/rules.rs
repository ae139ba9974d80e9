//! Translation rules: address pools and SNAT rules, as one immutable value a shard reads.

use crate::NatError;

/// An outside address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Outside addresses (host order), in the order subscribers are spread over them.
    pub addrs: Vec<u32>,
    /// Usable outside ports (also used as ICMP identifiers), inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
}

/// Source NAT: inside sources within `prefix/len` are translated to addresses of `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatRule {
    pub prefix: u32,
    pub len: u8,
    pub pool: usize,
}

impl SnatRule {
    #[inline]
    pub fn matches(&self, addr: u32) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len.min(32))
        };
        addr & mask == self.prefix & mask
    }
}

/// Pools and ordered SNAT rules (first match wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub pools: Vec<Pool>,
    pub snat: Vec<SnatRule>,
}

impl Rules {
    pub fn new(pools: Vec<Pool>, snat: Vec<SnatRule>) -> Result<Rules, NatError> {
        for p in &pools {
            if p.addrs.is_empty() {
                return Err(NatError::EmptyPool(p.name.clone()));
            }
            if p.port_lo == 0 || p.port_lo > p.port_hi {
                return Err(NatError::BadPortRange {
                    pool: p.name.clone(),
                    lo: p.port_lo,
                    hi: p.port_hi,
                });
            }
        }
        for (i, r) in snat.iter().enumerate() {
            if r.pool >= pools.len() {
                return Err(NatError::UnknownPool {
                    rule: i,
                    pool: r.pool,
                    pools: pools.len(),
                });
            }
        }
        Ok(Rules { pools, snat })
    }

    /// The pool for an inside source address.
    #[inline]
    pub fn pool_for(&self, src: u32) -> Option<&Pool> {
        self.snat
            .iter()
            .find(|r| r.matches(src))
            .map(|r| &self.pools[r.pool])
    }

    /// Every (outside address, port_lo, port_hi) of every pool.
    pub fn outside_addresses(&self) -> Vec<(u32, u16, u16)> {
        self.pools
            .iter()
            .flat_map(|p| p.addrs.iter().map(move |&a| (a, p.port_lo, p.port_hi)))
            .collect()
    }

    /// Whether `addr` is one of the pool addresses.
    pub fn is_pool_address(&self, addr: u32) -> bool {
        self.pools.iter().any(|p| p.addrs.contains(&addr))
    }
}

/// Paired pooling (RFC 6888 REQ-2): every mapping of one subscriber uses the same outside address. The
/// choice is a fixed function of the subscriber address, so it holds across sessions and across restarts
/// with no per-subscriber state.
#[inline]
pub fn paired_address(pool: &Pool, subscriber: u32) -> u32 {
    let h = (subscriber as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let i = ((h >> 32) % pool.addrs.len() as u64) as usize;
    pool.addrs[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, addrs: &[u32]) -> Pool {
        Pool {
            name: name.into(),
            addrs: addrs.to_vec(),
            port_lo: 1024,
            port_hi: 65535,
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = Rules::new(
            vec![pool("a", &[0xcb00_7101]), pool("b", &[0xcb00_7102])],
            vec![
                SnatRule {
                    prefix: 0x6440_0000,
                    len: 24,
                    pool: 1,
                },
                SnatRule {
                    prefix: 0x6440_0000,
                    len: 10,
                    pool: 0,
                },
            ],
        )
        .unwrap();
        assert_eq!(rules.pool_for(0x6440_000b).unwrap().name, "b");
        assert_eq!(rules.pool_for(0x6441_0001).unwrap().name, "a");
        assert!(rules.pool_for(0x0a00_0001).is_none());
    }

    #[test]
    fn invalid_rules_are_rejected_with_the_culprit() {
        assert_eq!(
            Rules::new(
                vec![pool("a", &[1])],
                vec![SnatRule {
                    prefix: 0,
                    len: 0,
                    pool: 3
                }]
            ),
            Err(NatError::UnknownPool {
                rule: 0,
                pool: 3,
                pools: 1
            })
        );
        assert_eq!(
            Rules::new(vec![pool("e", &[])], vec![]),
            Err(NatError::EmptyPool("e".into()))
        );
    }

    #[test]
    fn paired_address_is_stable_and_spreads() {
        let p = pool("p", &[1, 2, 3, 4]);
        let mut counts = [0u32; 5];
        for sub in 0x6440_0000u32..0x6440_1000 {
            let a = paired_address(&p, sub);
            assert_eq!(a, paired_address(&p, sub));
            counts[a as usize] += 1;
        }
        for &c in &counts[1..] {
            assert!((700..1350).contains(&c), "uneven spread {counts:?}");
        }
    }
}
