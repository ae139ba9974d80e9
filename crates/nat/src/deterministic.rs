//! Deterministic NAT (RFC 7422): every inside address of a configured prefix owns a fixed set of outside
//! ports on one pool address, computable both ways from the configuration alone, so no per-mapping log
//! is needed to tell who used an outside address and port.
//!
//! The arithmetic works in [`BLOCK_PORTS`]-port blocks. Only the whole blocks of the pool's port range
//! are used. Blocks are owned by workers (block `b` by worker `b % W`, see [`port_owner`]), and every
//! port of a subscriber must be owned by the one worker that translates it, so each worker's blocks form
//! a *lane*, and a subscriber's set is `runs` blocks of one lane, `W` blocks apart (`stride`). With one
//! worker the set is a plain contiguous range. Subscriber `k` (the `k`-th address of the prefix) gets:
//!
//! ```text
//!   S      = subscribers per address = per_lane × W
//!   a      = k / S                    (pool address, in configured order)
//!   l      = k % S;  lane u = l % W;  j = l / W
//!   blocks = lane_first(u) + (j·runs + i)·W,  i = 0..runs
//! ```
//!
//! and the reverse runs the same steps backwards. The mapping depends on the pool addresses (in order),
//! the port range, the inside prefix, the ports per subscriber and the number of workers: changing any
//! of them changes who owns which ports, so log the configuration generation with the logs.
//!
//! [`port_owner`]: crate::port_owner

use crate::NatError;
use crate::ports::{BLOCK_PORTS, PortSet};
use crate::rules::{Pool, PortAllocation};

const BP: u32 = BLOCK_PORTS as u32;

/// The computed layout of one deterministic pool for a given worker count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DetPlan {
    base: u32,
    n: u64,
    m: u32,
    first: u32,
    last: u32,
    workers: u32,
    runs: u32,
    per_lane: u32,
}

/// Where one subscriber's ports are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DetSlot {
    /// Position of the outside address in the pool's address list.
    pub addr_pos: usize,
    pub first_block: u32,
    /// The worker owning every port of the set.
    pub lane: u16,
}

impl DetPlan {
    /// The plan of a deterministic pool; `Ok(None)` for other pools.
    pub fn for_pool(pool: &Pool, workers: u16) -> Result<Option<DetPlan>, NatError> {
        match pool.allocation {
            PortAllocation::Deterministic { .. } => DetPlan::new(pool, workers).map(Some),
            _ => Ok(None),
        }
    }

    /// Lay out a deterministic pool, or say why its addresses and ports cannot serve its prefix.
    pub fn new(pool: &Pool, workers: u16) -> Result<DetPlan, NatError> {
        let PortAllocation::Deterministic {
            inside,
            ports_per_subscriber,
        } = pool.allocation
        else {
            return Err(NatError::NotDeterministic(pool.name.clone()));
        };
        let w = u32::from(workers.max(1));
        let first = u32::from(pool.port_lo).div_ceil(BP);
        // One past the last whole block.
        let end = (u32::from(pool.port_hi) + 1) / BP;
        let total = end.saturating_sub(first);
        let n = inside.size();
        let m = pool.addrs.len() as u32;
        // Every lane has at least this many blocks; the uniform share keeps every subscriber equal.
        let per_lane_blocks = total / w;
        let runs = if ports_per_subscriber == 0 {
            let per_addr = n.div_ceil(u64::from(m.max(1)));
            let per_lane_needed = per_addr.div_ceil(u64::from(w));
            (u64::from(per_lane_blocks) / per_lane_needed.max(1)) as u32
        } else {
            u32::from(ports_per_subscriber) / BP
        };
        let per_lane = per_lane_blocks.checked_div(runs).unwrap_or(0);
        let capacity = u64::from(m) * u64::from(w) * u64::from(per_lane);
        if runs == 0 || capacity < n {
            return Err(NatError::DeterministicTooSmall {
                pool: pool.name.clone(),
                subscribers: n,
                // When not even one block each fits, say how many subscribers one block each would serve.
                capacity: if runs == 0 {
                    u64::from(m) * u64::from(w) * u64::from(per_lane_blocks)
                } else {
                    capacity
                },
            });
        }
        Ok(DetPlan {
            base: inside.network(),
            n,
            m,
            first,
            last: end - 1,
            workers: w,
            runs,
            per_lane,
        })
    }

    #[inline]
    fn lane_first(&self, lane: u32) -> u32 {
        let w = self.workers;
        self.first + (lane + w - self.first % w) % w
    }

    #[inline]
    fn per_address(&self) -> u64 {
        u64::from(self.per_lane) * u64::from(self.workers)
    }

    /// Where `inside`'s ports are, if it belongs to the prefix.
    #[inline]
    pub fn forward(&self, inside: u32) -> Option<DetSlot> {
        let k = u64::from(inside.wrapping_sub(self.base));
        if k >= self.n {
            return None;
        }
        let s = self.per_address();
        let a = k / s;
        if a >= u64::from(self.m) {
            return None;
        }
        let l = (k % s) as u32;
        let lane = l % self.workers;
        let j = l / self.workers;
        Some(DetSlot {
            addr_pos: a as usize,
            first_block: self.lane_first(lane) + j * self.runs * self.workers,
            lane: lane as u16,
        })
    }

    /// The port set of a slot on outside address `addr`.
    #[inline]
    pub fn set(&self, slot: &DetSlot, addr: u32) -> PortSet {
        PortSet {
            addr,
            first_port: (slot.first_block * BP) as u16,
            runs: self.runs as u16,
            stride: self.workers as u16,
        }
    }

    /// The inside address owning `port` on the pool's `addr_pos`-th address, if any does.
    #[inline]
    pub fn reverse(&self, addr_pos: usize, port: u16) -> Option<u32> {
        let b = u32::from(port) / BP;
        if b < self.first || b > self.last || addr_pos as u64 >= u64::from(self.m) {
            return None;
        }
        let lane = b % self.workers;
        let m = (b - self.lane_first(lane)) / self.workers;
        let j = m / self.runs;
        if j >= self.per_lane {
            return None;
        }
        let k = addr_pos as u64 * self.per_address() + u64::from(j * self.workers + lane);
        if k >= self.n {
            return None;
        }
        Some(self.base.wrapping_add(k as u32))
    }
}

/// RFC 7422 forward function: the outside address and port set of inside address `inside` in a
/// deterministic `pool` translated by `workers` workers. `None` when the pool is not deterministic, its
/// layout is invalid, or `inside` is outside its prefix.
pub fn deterministic_forward(pool: &Pool, workers: u16, inside: u32) -> Option<PortSet> {
    let plan = DetPlan::new(pool, workers).ok()?;
    let slot = plan.forward(inside)?;
    Some(plan.set(&slot, pool.addrs[slot.addr_pos]))
}

/// RFC 7422 reverse function: the inside address that owns outside `port` on `outside`, or `None` when
/// no subscriber does (unused ports, addresses not in the pool, non-deterministic pools).
pub fn deterministic_reverse(pool: &Pool, workers: u16, outside: u32, port: u16) -> Option<u32> {
    let plan = DetPlan::new(pool, workers).ok()?;
    let pos = pool.addrs.iter().position(|&a| a == outside)?;
    plan.reverse(pos, port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_owner;
    use crate::rules::Prefix;

    fn det_pool(addrs: &[u32], lo: u16, hi: u16, len: u8, pps: u16) -> Pool {
        Pool {
            allocation: PortAllocation::Deterministic {
                inside: Prefix::new(0x6440_0000, len),
                ports_per_subscriber: pps,
            },
            ..Pool::new("det", addrs.to_vec(), lo, hi)
        }
    }

    #[test]
    fn forward_and_reverse_agree_for_every_subscriber_and_port() {
        for workers in [1u16, 2, 3] {
            let pool = det_pool(&[0xcb00_7101, 0xcb00_7102], 1024, 65535, 24, 0);
            let mut owner_of = std::collections::HashMap::new();
            for k in 0..256u32 {
                let inside = 0x6440_0000 + k;
                let set = deterministic_forward(&pool, workers, inside).unwrap();
                assert!(pool.addrs.contains(&set.addr));
                assert!(set.len() >= 64);
                let lane = port_owner(set.first_port, workers);
                for port in set.ports() {
                    assert!((1024..=65535).contains(&port));
                    assert_eq!(
                        deterministic_reverse(&pool, workers, set.addr, port),
                        Some(inside),
                        "workers {workers} port {port}"
                    );
                    assert_eq!(port_owner(port, workers), lane, "one worker owns the set");
                    assert!(
                        owner_of.insert((set.addr, port), inside).is_none(),
                        "port {port} given twice"
                    );
                }
            }
            // Every subscriber has the same number of ports.
            let sizes: std::collections::HashSet<u32> = (0..256u32)
                .map(|k| {
                    deterministic_forward(&pool, workers, 0x6440_0000 + k)
                        .unwrap()
                        .len()
                })
                .collect();
            assert_eq!(sizes.len(), 1);
        }
    }

    #[test]
    fn one_worker_gives_contiguous_ranges_of_the_requested_size() {
        let pool = det_pool(&[0xcb00_7101], 1024, 65535, 26, 1000 / 64 * 64);
        let a = deterministic_forward(&pool, 1, 0x6440_0000).unwrap();
        let b = deterministic_forward(&pool, 1, 0x6440_0001).unwrap();
        assert_eq!((a.first_port, a.len(), a.stride), (1024, 960, 1));
        assert_eq!(b.first_port, 1024 + 960);
        assert_eq!(a.ports().last(), Some(1024 + 959));
    }

    #[test]
    fn outside_the_prefix_or_unused_ports_have_no_owner() {
        let pool = det_pool(&[0xcb00_7101], 1024, 65535, 28, 1024);
        assert_eq!(deterministic_forward(&pool, 1, 0x6440_0010), None);
        // 16 subscribers × 1024 ports = 1024..17407; the rest is unused.
        assert_eq!(
            deterministic_reverse(&pool, 1, 0xcb00_7101, 17407),
            Some(0x6440_000f)
        );
        assert_eq!(deterministic_reverse(&pool, 1, 0xcb00_7101, 17408), None);
        assert_eq!(deterministic_reverse(&pool, 1, 0xcb00_7101, 80), None);
        assert_eq!(deterministic_reverse(&pool, 1, 0xcb00_7199, 2000), None);
        let plain = Pool::new("p", vec![1], 1024, 65535);
        assert_eq!(deterministic_forward(&plain, 1, 0x6440_0000), None);
    }

    #[test]
    fn too_small_a_pool_is_refused() {
        let pool = det_pool(&[0xcb00_7101], 1024, 2047, 24, 0);
        assert!(matches!(
            DetPlan::new(&pool, 1),
            Err(NatError::DeterministicTooSmall {
                subscribers: 256,
                capacity: 16,
                ..
            })
        ));
    }
}
