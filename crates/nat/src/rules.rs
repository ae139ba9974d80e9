//! Translation rules: address pools, SNAT rules and no-NAT exclusions, as one immutable value a shard
//! reads.

use crate::NatError;
use crate::deterministic::DetPlan;
use crate::ports::BLOCK_PORTS;

/// An IPv4 prefix, address in host byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefix {
    pub addr: u32,
    pub len: u8,
}

impl Prefix {
    pub const fn new(addr: u32, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    #[inline]
    pub const fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else if self.len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - self.len)
        }
    }

    #[inline]
    pub const fn contains(&self, addr: u32) -> bool {
        (addr ^ self.addr) & self.mask() == 0
    }

    /// First address of the prefix.
    pub const fn network(&self) -> u32 {
        self.addr & self.mask()
    }

    /// Number of addresses.
    pub const fn size(&self) -> u64 {
        1u64 << (32 - if self.len > 32 { 32 } else { self.len })
    }

    /// Whether every address of `other` is in `self`.
    pub const fn covers(&self, other: &Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

/// Which inbound packets reach a live mapping (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filtering {
    /// Any outside host may send to the mapping (RFC 4787 REQ-8 recommends it for transparency, RFC 6888
    /// REQ-7 asks it of CGNs: games, VoIP and WebRTC depend on it). The default.
    #[default]
    EndpointIndependent,
    /// Only hosts (any port) the mapping has a session with.
    AddressDependent,
    /// Only the exact remote endpoints the mapping has sessions with.
    AddressAndPortDependent,
}

/// How outside ports (and ICMP identifiers) are chosen for new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortAllocation {
    /// Random over the whole range (RFC 6056, RFC 6888 REQ-15: hard to guess). The default.
    #[default]
    Random,
    /// Keep the inside port when it is free, random otherwise (RFC 4787 section 4.2.1).
    Preserve,
    /// Random, but with the inside port's parity (RFC 4787 REQ-3/4: RTP/RTCP pairs).
    Parity,
    /// Port block allocation: each subscriber gets blocks of `size` ports (a multiple of
    /// [`BLOCK_PORTS`]), at most `max_blocks` of them, allocated on demand and released when empty; its
    /// ports are chosen at random inside its blocks. Logging one event per block instead of one per
    /// mapping is the point.
    Blocks { size: u16, max_blocks: u16 },
    /// Deterministic NAT (RFC 7422): each address of `inside` owns a fixed, computable set of
    /// `ports_per_subscriber` ports (a multiple of [`BLOCK_PORTS`]; 0 = as many as fit) on one pool
    /// address. See [`crate::deterministic_forward`] / [`crate::deterministic_reverse`].
    Deterministic {
        inside: Prefix,
        ports_per_subscriber: u16,
    },
}

/// An outside address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Outside addresses (host order), in the order subscribers are spread over them (and, for
    /// deterministic NAT, the order of the mapping). A pool whose only address is the outside interface
    /// address is MASQUERADE; give it a port range that leaves out the ports the appliance itself uses.
    pub addrs: Vec<u32>,
    /// Usable outside ports (also used as ICMP identifiers), inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    pub filtering: Filtering,
    pub allocation: PortAllocation,
    /// Removed from the policy but still translating the sessions it has: no rule may send new flows
    /// to it. A retired pool without addresses is a vacant slot. Pools keep their index (the byte
    /// stored in mappings and subscriber records) for as long as they have state, so a live policy
    /// change never renumbers them; see [`Rules::is_live_successor`].
    pub retired: bool,
}

impl Default for Pool {
    /// An empty pool with the careful defaults: ports 1024-65535 (the well-known ports are left alone,
    /// RFC 6056), endpoint-independent filtering, random ports. `name` and `addrs` must be set.
    fn default() -> Self {
        Pool {
            name: String::new(),
            addrs: Vec::new(),
            port_lo: 1024,
            port_hi: 65535,
            filtering: Filtering::default(),
            allocation: PortAllocation::default(),
            retired: false,
        }
    }
}

impl Pool {
    /// A pool with default filtering and allocation.
    pub fn new(name: impl Into<String>, addrs: Vec<u32>, port_lo: u16, port_hi: u16) -> Pool {
        Pool {
            name: name.into(),
            addrs,
            port_lo,
            port_hi,
            ..Pool::default()
        }
    }
}

/// Source NAT: inside sources within `prefix/len` (and, if set, towards destinations within `dst`) are
/// translated to addresses of `pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnatRule {
    pub prefix: u32,
    pub len: u8,
    pub pool: usize,
    pub dst: Option<Prefix>,
}

impl SnatRule {
    /// Whether the source prefix covers `addr`.
    #[inline]
    pub fn matches(&self, addr: u32) -> bool {
        Prefix::new(self.prefix, self.len).contains(addr)
    }

    /// Whether a packet from `src` to `dst` takes this rule.
    #[inline]
    pub fn matches_flow(&self, src: u32, dst: u32) -> bool {
        self.matches(src) && self.dst.is_none_or(|d| d.contains(dst))
    }
}

/// No-NAT exclusion (RFC 6888 REQ-6): packets towards `dst` (from `src`, when given) are forwarded
/// untranslated, and so is their return traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    pub dst: Prefix,
    pub src: Option<Prefix>,
}

/// Pools, ordered SNAT rules (first match wins) and exclusions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub pools: Vec<Pool>,
    pub snat: Vec<SnatRule>,
    pub exclusions: Vec<Exclusion>,
}

/// Pool indexes are stored in a byte in mappings and subscriber records.
pub const MAX_POOLS: usize = 255;

impl Rules {
    /// Rules without exclusions.
    pub fn new(pools: Vec<Pool>, snat: Vec<SnatRule>) -> Result<Rules, NatError> {
        Rules::with_exclusions(pools, snat, Vec::new())
    }

    /// Validate and build. Every error names the pool or rule at fault.
    pub fn with_exclusions(
        pools: Vec<Pool>,
        snat: Vec<SnatRule>,
        exclusions: Vec<Exclusion>,
    ) -> Result<Rules, NatError> {
        if pools.len() > MAX_POOLS {
            return Err(NatError::TooManyPools(pools.len()));
        }
        let mut seen: Vec<(u32, usize)> = Vec::new();
        for (pi, p) in pools.iter().enumerate() {
            if p.addrs.is_empty() {
                if p.retired {
                    continue;
                }
                return Err(NatError::EmptyPool(p.name.clone()));
            }
            if p.port_lo == 0 || p.port_lo > p.port_hi {
                return Err(NatError::BadPortRange {
                    pool: p.name.clone(),
                    lo: p.port_lo,
                    hi: p.port_hi,
                });
            }
            for &a in &p.addrs {
                seen.push((a, pi));
            }
            match p.allocation {
                PortAllocation::Blocks { size, max_blocks } => {
                    let span = u32::from(p.port_hi) - u32::from(p.port_lo) + 1;
                    if size == 0 || size % BLOCK_PORTS != 0 || u32::from(size) > span {
                        return Err(NatError::BadBlockSize {
                            pool: p.name.clone(),
                            size,
                        });
                    }
                    if max_blocks == 0 {
                        return Err(NatError::BadMaxBlocks(p.name.clone()));
                    }
                }
                PortAllocation::Deterministic {
                    inside,
                    ports_per_subscriber,
                } => {
                    if inside.len > 32 {
                        return Err(NatError::BadPrefix {
                            what: format!("deterministic inside prefix of pool {:?}", p.name),
                            len: inside.len,
                        });
                    }
                    if ports_per_subscriber % BLOCK_PORTS != 0 {
                        return Err(NatError::BadBlockSize {
                            pool: p.name.clone(),
                            size: ports_per_subscriber,
                        });
                    }
                    // With one worker; Shard::new checks again with the real worker count.
                    DetPlan::new(p, 1)?;
                }
                _ => {}
            }
        }
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(NatError::DuplicateAddress {
                addr: w[1].0,
                pool: pools[w[1].1].name.clone(),
            });
        }
        for (i, r) in snat.iter().enumerate() {
            if r.pool >= pools.len() || pools[r.pool].retired {
                return Err(NatError::UnknownPool {
                    rule: i,
                    pool: r.pool,
                    pools: pools.len(),
                });
            }
            if r.len > 32 || r.dst.is_some_and(|d| d.len > 32) {
                return Err(NatError::BadPrefix {
                    what: format!("snat rule {i}"),
                    len: r.len.max(r.dst.map_or(0, |d| d.len)),
                });
            }
            if let PortAllocation::Deterministic { inside, .. } = pools[r.pool].allocation
                && !inside.covers(&Prefix::new(r.prefix, r.len))
            {
                // Deterministic ranges exist only for the configured inside prefix.
                return Err(NatError::DeterministicRuleOutsidePrefix {
                    rule: i,
                    pool: pools[r.pool].name.clone(),
                });
            }
        }
        for (i, e) in exclusions.iter().enumerate() {
            if e.dst.len > 32 || e.src.is_some_and(|s| s.len > 32) {
                return Err(NatError::BadPrefix {
                    what: format!("exclusion {i}"),
                    len: e.dst.len.max(e.src.map_or(0, |s| s.len)),
                });
            }
        }
        Ok(Rules {
            pools,
            snat,
            exclusions,
        })
    }

    /// Whether a shard running `self` can switch to `next` in place: every pool keeps its index and
    /// either stays as it is (it may retire), gains addresses (random, preserve, parity or port
    /// block allocation), or was a retired pool left without state (its slot may become vacant or
    /// take a new pool). The control plane only publishes such successors; the shard cannot check
    /// the "without state" part across workers itself.
    pub fn is_live_successor(&self, next: &Rules) -> Result<(), NatError> {
        if next.pools.len() < self.pools.len() {
            return Err(NatError::PolicyChange(format!(
                "{} pools became {}: pool slots are never removed",
                self.pools.len(),
                next.pools.len()
            )));
        }
        for (old, new) in self.pools.iter().zip(&next.pools) {
            if old.retired || old.addrs.is_empty() {
                continue;
            }
            let same_kind = old.name == new.name
                && old.port_lo == new.port_lo
                && old.port_hi == new.port_hi
                && old.filtering == new.filtering
                && old.allocation == new.allocation;
            let addrs_ok = if matches!(old.allocation, PortAllocation::Deterministic { .. }) {
                old.addrs == new.addrs
            } else {
                // Sorted lookups: pools may hold thousands of addresses, and a shard runs this
                // between bursts.
                let mut have = new.addrs.clone();
                have.sort_unstable();
                old.addrs.iter().all(|a| have.binary_search(a).is_ok())
            };
            if !same_kind || !addrs_ok {
                return Err(NatError::PolicyChange(format!(
                    "pool {:?} changed while in service",
                    old.name
                )));
            }
        }
        Ok(())
    }

    /// Index of the first SNAT rule a flow from `src` to `dst` matches.
    #[inline]
    pub fn rule_index_for(&self, src: u32, dst: u32) -> Option<usize> {
        self.snat.iter().position(|r| r.matches_flow(src, dst))
    }

    /// Index of the pool for a flow from `src` to `dst` (first matching rule).
    #[inline]
    pub fn pool_index_for(&self, src: u32, dst: u32) -> Option<usize> {
        self.snat
            .iter()
            .find(|r| r.matches_flow(src, dst))
            .map(|r| r.pool)
    }

    /// The pool for a flow from `src` to `dst`.
    #[inline]
    pub fn pool_for(&self, src: u32, dst: u32) -> Option<&Pool> {
        self.pool_index_for(src, dst).map(|i| &self.pools[i])
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

    /// Whether an inside→outside packet is exempt from translation.
    #[inline]
    pub fn excluded_outbound(&self, src: u32, dst: u32) -> bool {
        self.exclusions
            .iter()
            .any(|e| e.dst.contains(dst) && e.src.is_none_or(|s| s.contains(src)))
    }

    /// Whether an outside→inside packet is the return traffic of an exclusion: it comes from an excluded
    /// destination and goes to an inside address (the exclusion's source prefix, or any source prefix of
    /// an SNAT rule when the exclusion has none). The caller has checked that `dst` is not a pool
    /// address.
    #[inline]
    pub fn excluded_inbound(&self, src: u32, dst: u32) -> bool {
        self.exclusions.iter().any(|e| {
            e.dst.contains(src)
                && match e.src {
                    Some(s) => s.contains(dst),
                    None => self.snat.iter().any(|r| r.matches(dst)),
                }
        })
    }

    /// The worker that must translate an inside→outside flow, when the rules force one: a deterministic
    /// subscriber's ports all lie in blocks owned by one worker (see [`crate::port_owner`]), so its
    /// packets must reach that worker. `None` means any worker may own the subscriber (the data plane's
    /// own choice).
    pub fn subscriber_worker(&self, src: u32, dst: u32, workers: u16) -> Option<u16> {
        let pool = self.pool_for(src, dst)?;
        if !matches!(pool.allocation, PortAllocation::Deterministic { .. }) {
            return None;
        }
        let plan = DetPlan::new(pool, workers).ok()?;
        plan.forward(src).map(|f| f.lane)
    }
}

/// Paired pooling (RFC 6888 REQ-2): the preferred outside address of a subscriber is a fixed function of
/// its address, so it is the same across sessions, restarts and workers with no shared state.
#[inline]
pub fn paired_address(pool: &Pool, subscriber: u32) -> u32 {
    pool.addrs[paired_index(pool.addrs.len(), subscriber)]
}

#[inline]
pub(crate) fn paired_index(n: usize, subscriber: u32) -> usize {
    let h = (subscriber as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 32) % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, addrs: &[u32]) -> Pool {
        Pool::new(name, addrs.to_vec(), 1024, 65535)
    }

    fn rule(prefix: u32, len: u8, pool: usize) -> SnatRule {
        SnatRule {
            prefix,
            len,
            pool,
            dst: None,
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = Rules::new(
            vec![pool("a", &[0xcb00_7101]), pool("b", &[0xcb00_7102])],
            vec![rule(0x6440_0000, 24, 1), rule(0x6440_0000, 10, 0)],
        )
        .unwrap();
        assert_eq!(rules.pool_for(0x6440_000b, 1).unwrap().name, "b");
        assert_eq!(rules.pool_for(0x6441_0001, 1).unwrap().name, "a");
        assert!(rules.pool_for(0x0a00_0001, 1).is_none());
    }

    #[test]
    fn destination_prefix_narrows_a_rule() {
        let rules = Rules::new(
            vec![pool("a", &[0xcb00_7101]), pool("b", &[0xcb00_7102])],
            vec![
                SnatRule {
                    dst: Some(Prefix::new(0xc633_6400, 24)),
                    ..rule(0x6440_0000, 10, 1)
                },
                rule(0x6440_0000, 10, 0),
            ],
        )
        .unwrap();
        assert_eq!(rules.pool_index_for(0x6440_000b, 0xc633_640a), Some(1));
        assert_eq!(rules.pool_index_for(0x6440_000b, 0x0808_0808), Some(0));
    }

    #[test]
    fn invalid_rules_are_rejected_with_the_culprit() {
        assert_eq!(
            Rules::new(vec![pool("a", &[1])], vec![rule(0, 0, 3)]),
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
        assert_eq!(
            Rules::new(vec![pool("a", &[1, 2]), pool("b", &[3, 2])], vec![]),
            Err(NatError::DuplicateAddress {
                addr: 2,
                pool: "b".into()
            })
        );
        let mut p = pool("blk", &[1]);
        p.allocation = PortAllocation::Blocks {
            size: 100,
            max_blocks: 4,
        };
        assert_eq!(
            Rules::new(vec![p.clone()], vec![]),
            Err(NatError::BadBlockSize {
                pool: "blk".into(),
                size: 100
            })
        );
        p.allocation = PortAllocation::Blocks {
            size: 128,
            max_blocks: 0,
        };
        assert_eq!(
            Rules::new(vec![p], vec![]),
            Err(NatError::BadMaxBlocks("blk".into()))
        );
        assert!(matches!(
            Rules::new(vec![pool("a", &[1])], vec![rule(0, 33, 0)]),
            Err(NatError::BadPrefix { len: 33, .. })
        ));
        let too_many: Vec<Pool> = (0..256u32).map(|i| pool("p", &[i + 1])).collect();
        assert_eq!(
            Rules::new(too_many, vec![]),
            Err(NatError::TooManyPools(256))
        );
    }

    #[test]
    fn deterministic_pools_are_checked() {
        let mut p = pool("det", &[1]);
        // A /16 of subscribers cannot get 64 ports each on one address.
        p.allocation = PortAllocation::Deterministic {
            inside: Prefix::new(0x6440_0000, 16),
            ports_per_subscriber: 64,
        };
        assert!(matches!(
            Rules::new(vec![p.clone()], vec![]),
            Err(NatError::DeterministicTooSmall { .. })
        ));
        p.allocation = PortAllocation::Deterministic {
            inside: Prefix::new(0x6440_0000, 24),
            ports_per_subscriber: 0,
        };
        // A rule whose sources fall outside the deterministic prefix has no ranges to use.
        assert_eq!(
            Rules::new(vec![p.clone()], vec![rule(0x6440_0000, 16, 0)]),
            Err(NatError::DeterministicRuleOutsidePrefix {
                rule: 0,
                pool: "det".into()
            })
        );
        assert!(Rules::new(vec![p], vec![rule(0x6440_0000, 25, 0)]).is_ok());
    }

    #[test]
    fn exclusions_match_both_ways() {
        let rules = Rules::with_exclusions(
            vec![pool("a", &[0xcb00_7101])],
            vec![rule(0x6440_0000, 10, 0)],
            vec![
                Exclusion {
                    dst: Prefix::new(0x0a00_0000, 8),
                    src: None,
                },
                Exclusion {
                    dst: Prefix::new(0xac10_0000, 12),
                    src: Some(Prefix::new(0x6440_0100, 24)),
                },
            ],
        )
        .unwrap();
        assert!(rules.excluded_outbound(0x6440_000b, 0x0a01_0203));
        assert!(!rules.excluded_outbound(0x6440_000b, 0x0b01_0203));
        // Source-restricted exclusion.
        assert!(rules.excluded_outbound(0x6440_0105, 0xac10_0001));
        assert!(!rules.excluded_outbound(0x6440_000b, 0xac10_0001));
        // Return traffic: from the excluded prefix to an inside address.
        assert!(rules.excluded_inbound(0x0a01_0203, 0x6440_000b));
        assert!(
            !rules.excluded_inbound(0x0a01_0203, 0xc000_0201),
            "not an inside address"
        );
        assert!(rules.excluded_inbound(0xac10_0001, 0x6440_0105));
        assert!(!rules.excluded_inbound(0xac10_0001, 0x6440_000b));
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

    #[test]
    fn prefix_arithmetic() {
        let p = Prefix::new(0x6440_0005, 24);
        assert_eq!(p.network(), 0x6440_0000);
        assert_eq!(p.size(), 256);
        assert!(p.contains(0x6440_00ff) && !p.contains(0x6440_0100));
        assert!(Prefix::new(0, 0).contains(0xffff_ffff));
        assert!(Prefix::new(7, 32).contains(7) && !Prefix::new(7, 32).contains(6));
        assert!(p.covers(&Prefix::new(0x6440_0080, 25)));
        assert!(!p.covers(&Prefix::new(0x6440_0000, 23)));
    }
}
