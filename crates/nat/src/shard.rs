//! One worker's connection-tracking shard and the burst pipeline over it.

use std::sync::Arc;

use crate::counters::{Counter, Counters, DropReason};
use crate::index::{Index, OUT_BIT};
use crate::key::FlowKey;
use crate::ports::PortAllocator;
use crate::rewrite::{End, Parsed, parse, rewrite};
use crate::rules::{Rules, paired_address};
use crate::session::{NIL, Session, Slab, tcp_state};
use crate::{MemAdvice, NatError, PacketBatch, Prefetch, Timeouts};
use wire::{ip_proto, tcp_flags};

/// Largest burst [`Shard::process`] handles in one call (DPDK's usual burst of 32).
pub const MAX_BURST: usize = 32;

/// Direction of a packet relative to the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From a subscriber towards the outside: source translated.
    In2Out,
    /// From the outside towards a subscriber: destination translated back.
    Out2In,
}

/// What to do with a packet after translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Translated in place; route it by its (new) destination.
    Forward,
    /// Drop, counted under the reason. For [`DropReason::TtlExceeded`] the packet is untouched, so the
    /// caller can quote it in an ICMP time-exceeded.
    Drop(DropReason),
}

/// Shard parameters.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Session capacity of this shard.
    pub max_sessions: u32,
    pub timeouts: Timeouts,
    /// This worker's index and the number of workers, for outside port-block ownership.
    pub worker: u16,
    pub workers: u16,
    /// Random seed (from the OS) for the flow hash and port selection.
    pub seed: u64,
}

#[derive(Clone, Copy, Default)]
struct Meta {
    p: Parsed,
    hash: u32,
    /// Candidate slot (with direction bit) from the probe stage, or NIL.
    cand: u32,
    ok: bool,
}

pub struct Shard {
    cfg: ShardConfig,
    rules: Arc<Rules>,
    slab: Slab,
    index: Index,
    ports: PortAllocator,
    counters: Arc<Counters>,
}

impl Shard {
    pub fn new(
        cfg: ShardConfig,
        rules: Arc<Rules>,
        counters: Arc<Counters>,
        now: u32,
    ) -> Result<Shard, NatError> {
        Shard::with_memory_advice(cfg, rules, counters, now, None)
    }

    /// As [`Shard::new`], handing the session slab and the index to `advise` before they are first
    /// written (for transparent huge pages: random lookups over hundreds of MiB are dominated by TLB
    /// misses on 4 KiB pages).
    pub fn with_memory_advice(
        cfg: ShardConfig,
        rules: Arc<Rules>,
        counters: Arc<Counters>,
        now: u32,
        advise: Option<MemAdvice>,
    ) -> Result<Shard, NatError> {
        if cfg.max_sessions == 0 || cfg.max_sessions >= OUT_BIT {
            return Err(NatError::BadCapacity(cfg.max_sessions as u64));
        }
        if cfg.workers == 0 || cfg.worker >= cfg.workers {
            return Err(NatError::BadWorker {
                worker: cfg.worker,
                workers: cfg.workers,
            });
        }
        let ports = PortAllocator::new(
            &rules.outside_addresses(),
            cfg.worker,
            cfg.workers,
            cfg.seed.rotate_left(17),
        );
        Ok(Shard {
            slab: Slab::new_advised(cfg.max_sessions, now, advise),
            index: Index::with_capacity_advised(cfg.max_sessions as usize * 2, advise),
            ports,
            rules,
            counters,
            cfg,
        })
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    pub fn session_count(&self) -> u32 {
        self.slab.live()
    }

    pub fn ports_in_use(&self) -> u64 {
        self.ports.total_in_use()
    }

    /// Memory held by the session slab, the index and the port maps.
    pub fn memory_bytes(&self) -> (usize, usize, usize) {
        (
            self.slab.memory_bytes(),
            self.index.memory_bytes(),
            self.ports.memory_bytes(),
        )
    }

    /// Live sessions (control plane: O(capacity)).
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.slab.iter().map(|(_, s)| s)
    }

    /// Translate a burst in place. `verdicts[i]` receives the fate of packet `i`; at most [`MAX_BURST`]
    /// packets are looked at (callers pass bursts of that size). `now` is in seconds.
    pub fn process<B: PacketBatch + ?Sized, P: Prefetch>(
        &mut self,
        dir: Dir,
        batch: &mut B,
        verdicts: &mut [Verdict],
        now: u32,
    ) {
        let n = batch.len().min(verdicts.len()).min(MAX_BURST);
        let mut meta = [Meta::default(); MAX_BURST];
        let seed = self.cfg.seed;

        // Stage 1: parse and hash everything; prefetch the home bucket of each key.
        for i in 0..n {
            match parse(batch.packet(i), dir) {
                Ok(p) => {
                    let hash = p.key.hash(seed);
                    P::prefetch(self.index.home_ref(hash));
                    meta[i] = Meta {
                        p,
                        hash,
                        cand: NIL,
                        ok: true,
                    };
                }
                Err(r) => {
                    verdicts[i] = Verdict::Drop(r);
                    self.counters.count_drop(r);
                }
            }
        }
        // Stage 2: probe the (now cached) buckets for a hash match and prefetch the session it names.
        for m in meta[..n].iter_mut().filter(|m| m.ok) {
            if let Some((_, slot)) = self.index.find_first(m.hash) {
                m.cand = slot;
                P::prefetch(self.slab.get(slot & !OUT_BIT));
            }
        }
        // Stage 3: confirm the key against the session and rewrite; misses take the slow path.
        let mut forwarded = 0u64;
        for i in 0..n {
            let m = meta[i];
            if !m.ok {
                continue;
            }
            let slot = if m.cand != NIL && self.key_matches(m.cand, dir, &m.p.key) {
                Some(m.cand & !OUT_BIT)
            } else {
                // A false hash match, or a key created earlier in this same burst.
                self.lookup(dir, &m.p.key, m.hash)
            };
            verdicts[i] = match (slot, dir) {
                (Some(s), _) => self.forward(s, dir, &m.p, batch.packet_mut(i), now),
                (None, Dir::In2Out) => match self.create(&m.p, now) {
                    Ok(s) => self.forward(s, dir, &m.p, batch.packet_mut(i), now),
                    Err(r) => Verdict::Drop(r),
                },
                (None, Dir::Out2In) => Verdict::Drop(DropReason::NoSession),
            };
            match verdicts[i] {
                Verdict::Drop(r) => self.counters.count_drop(r),
                Verdict::Forward => forwarded += 1,
            }
        }
        // One counter update per burst, not per packet.
        self.counters.add(
            match dir {
                Dir::In2Out => Counter::In2outPackets,
                Dir::Out2In => Counter::Out2inPackets,
            },
            forwarded,
        );
    }

    #[inline]
    fn key_matches(&self, slot: u32, dir: Dir, k: &FlowKey) -> bool {
        let s = self.slab.get(slot & !OUT_BIT);
        match dir {
            Dir::In2Out => {
                slot & OUT_BIT == 0
                    && s.in_addr == k.src
                    && s.rem_addr == k.dst
                    && s.in_port == k.sport
                    && s.rem_port == k.dport
                    && s.proto == k.proto
            }
            Dir::Out2In => {
                slot & OUT_BIT != 0
                    && s.rem_addr == k.src
                    && s.out_addr == k.dst
                    && s.rem_port == k.sport
                    && s.out_port == k.dport
                    && s.proto == k.proto
            }
        }
    }

    /// Full lookup of one key (slow path and control plane).
    pub fn lookup(&self, dir: Dir, k: &FlowKey, hash: u32) -> Option<u32> {
        self.index
            .find(hash, |slot| self.key_matches(slot, dir, k))
            .map(|(_, slot)| slot & !OUT_BIT)
    }

    /// Look a session up by the tuple of a packet travelling in `dir`.
    pub fn find(&self, dir: Dir, k: &FlowKey) -> Option<&Session> {
        self.lookup(dir, k, k.hash(self.cfg.seed))
            .map(|s| self.slab.get(s))
    }

    #[inline]
    fn forward(&mut self, slot: u32, dir: Dir, p: &Parsed, pkt: &mut [u8], now: u32) -> Verdict {
        let s = self.slab.get_mut(slot);
        s.last_seen = now;
        let (end, addr, port) = match dir {
            Dir::In2Out => (End::Source, s.out_addr, s.out_port),
            Dir::Out2In => (End::Destination, s.in_addr, s.in_port),
        };
        if s.proto == ip_proto::TCP && self.track_tcp(slot, dir, p.tcp_flags) {
            self.slab.refile(slot, &self.cfg.timeouts);
        }
        rewrite(pkt, p, end, addr, port);
        Verdict::Forward
    }

    /// Advance the TCP state; returns true when the idle timeout got shorter (the session must be
    /// re-filed on the timer wheel so the shorter deadline is honoured).
    #[inline]
    fn track_tcp(&mut self, slot: u32, dir: Dir, flags: u8) -> bool {
        let s = self.slab.get_mut(slot);
        let before = s.state;
        let mut state = before;
        if flags & tcp_flags::RST != 0 {
            state |= tcp_state::RST;
        } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 && dir == Dir::In2Out {
            // A fresh SYN on a closed or closing tuple starts a new connection on the same mapping.
            if before & (tcp_state::RST | tcp_state::FIN_IN | tcp_state::FIN_OUT) != 0 {
                state = tcp_state::SYN_SENT;
            }
        } else {
            if dir == Dir::Out2In
                && state & tcp_state::PHASE_MASK == tcp_state::SYN_SENT
                && flags & tcp_flags::ACK != 0
            {
                state = (state & !tcp_state::PHASE_MASK) | tcp_state::ESTABLISHED;
            }
            if flags & tcp_flags::FIN != 0 {
                state |= match dir {
                    Dir::In2Out => tcp_state::FIN_IN,
                    Dir::Out2In => tcp_state::FIN_OUT,
                };
            }
        }
        s.state = state;
        before == tcp_state::ESTABLISHED && state != tcp_state::ESTABLISHED
    }

    /// Slow path: a new outbound flow.
    fn create(&mut self, p: &Parsed, now: u32) -> Result<u32, DropReason> {
        let k = p.key;
        let state = if k.proto == ip_proto::TCP {
            // Only a SYN opens a session (RFC 5382); anything else without a session is invalid here.
            if p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN)
                != tcp_flags::SYN
            {
                return Err(DropReason::TcpInvalid);
            }
            tcp_state::SYN_SENT
        } else {
            0
        };
        let pool = self.rules.pool_for(k.src).ok_or(DropReason::NoSnatRule)?;
        let out_addr = paired_address(pool, k.src);
        if self.slab.live() >= self.slab.capacity() {
            return Err(DropReason::TableFull);
        }
        let out_port = self
            .ports
            .alloc(out_addr, k.proto)
            .ok_or(DropReason::OutOfPorts)?;
        let s = Session {
            in_addr: k.src,
            rem_addr: k.dst,
            in_port: k.sport,
            rem_port: k.dport,
            out_addr,
            out_port,
            proto: k.proto,
            state,
            last_seen: now,
            ..Session::default()
        };
        let Some(slot) = self.slab.insert(s, &self.cfg.timeouts) else {
            self.ports.free(out_addr, k.proto, out_port);
            return Err(DropReason::TableFull);
        };
        let out_key = FlowKey {
            src: k.dst,
            dst: out_addr,
            sport: k.dport,
            dport: out_port,
            proto: k.proto,
        };
        // The index is sized for two keys per slab slot, so these cannot fail while the slab has room.
        let inserted = self.index.insert(k.hash(self.cfg.seed), slot)
            && self
                .index
                .insert(out_key.hash(self.cfg.seed), slot | OUT_BIT);
        debug_assert!(inserted);
        let c = &self.counters;
        c.add(Counter::SessionsCreated, 1);
        c.add(
            match k.proto {
                ip_proto::TCP => Counter::TcpSessionsCreated,
                ip_proto::UDP => Counter::UdpSessionsCreated,
                _ => Counter::IcmpSessionsCreated,
            },
            1,
        );
        c.set(Counter::SessionsCurrent, self.slab.live() as u64);
        c.set(Counter::PortsInUse, self.ports.total_in_use());
        Ok(slot)
    }

    /// Remove a session, its index entries and its port.
    fn delete(slab: &mut Slab, index: &mut Index, ports: &mut PortAllocator, seed: u64, slot: u32) {
        let s = slab.remove(slot);
        let in_key = FlowKey {
            src: s.in_addr,
            dst: s.rem_addr,
            sport: s.in_port,
            dport: s.rem_port,
            proto: s.proto,
        };
        let out_key = FlowKey {
            src: s.rem_addr,
            dst: s.out_addr,
            sport: s.rem_port,
            dport: s.out_port,
            proto: s.proto,
        };
        index.remove(in_key.hash(seed), slot);
        index.remove(out_key.hash(seed), slot | OUT_BIT);
        ports.free(s.out_addr, s.proto, s.out_port);
    }

    /// Expire idle sessions, looking at no more than `budget` of them. Returns how many were deleted.
    pub fn expire(&mut self, now: u32, budget: u32) -> u32 {
        let seed = self.cfg.seed;
        let timeouts = self.cfg.timeouts;
        let (index, ports) = (&mut self.index, &mut self.ports);
        let mut deleted = 0;
        self.slab.advance(now, budget, &timeouts, |slab, slot| {
            Self::delete(slab, index, ports, seed, slot);
            deleted += 1;
        });
        if deleted > 0 {
            let c = &self.counters;
            c.add(Counter::SessionsDeleted, deleted as u64);
            c.set(Counter::SessionsCurrent, self.slab.live() as u64);
            c.set(Counter::PortsInUse, self.ports.total_in_use());
        }
        deleted
    }

    /// Delete every session (control plane).
    pub fn flush(&mut self) -> u32 {
        let slots: Vec<u32> = self.slab.iter().map(|(i, _)| i).collect();
        for &slot in &slots {
            Self::delete(
                &mut self.slab,
                &mut self.index,
                &mut self.ports,
                self.cfg.seed,
                slot,
            );
        }
        let c = &self.counters;
        c.add(Counter::SessionsDeleted, slots.len() as u64);
        c.set(Counter::SessionsCurrent, 0);
        c.set(Counter::PortsInUse, self.ports.total_in_use());
        slots.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoPrefetch;
    use crate::rewrite::testpkt::*;
    use crate::rules::{Pool, SnatRule};
    use wire::{Ipv4Addr, Ipv4Packet, UdpPacket, icmp_type, tcp_flags as F};

    const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 12);
    const SRV: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const SRV2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
    const POOL: [u32; 2] = [0xcb00_7101, 0xcb00_7102];

    fn shard_with(max: u32, lo: u16, hi: u16) -> Shard {
        let rules = Rules::new(
            vec![Pool {
                name: "p".into(),
                addrs: POOL.to_vec(),
                port_lo: lo,
                port_hi: hi,
            }],
            vec![SnatRule {
                prefix: 0x6440_0000,
                len: 10,
                pool: 0,
            }],
        )
        .unwrap();
        let cfg = ShardConfig {
            max_sessions: max,
            timeouts: Timeouts::default(),
            worker: 0,
            workers: 1,
            seed: 0xdead_beef_cafe,
        };
        Shard::new(cfg, Arc::new(rules), Arc::new(Counters::default()), 0).unwrap()
    }

    fn shard() -> Shard {
        shard_with(1024, 1024, 65535)
    }

    fn run(sh: &mut Shard, dir: Dir, pkts: &mut [Vec<u8>], now: u32) -> Vec<Verdict> {
        let mut v = vec![Verdict::Drop(DropReason::NoMbuf); pkts.len()];
        sh.process::<_, NoPrefetch>(dir, pkts, &mut v, now);
        v
    }

    fn one(sh: &mut Shard, dir: Dir, pkt: Vec<u8>, now: u32) -> (Verdict, Vec<u8>) {
        let mut b = [pkt];
        let v = run(sh, dir, &mut b, now);
        let [p] = b;
        (v[0], p)
    }

    fn src_of(b: &[u8]) -> (u32, u16) {
        let ip = Ipv4Packet::new_checked(b).unwrap();
        (
            ip.src_addr_u32(),
            UdpPacket::new_unchecked(ip.payload()).src_port(),
        )
    }

    #[test]
    fn udp_round_trip_translates_both_ways() {
        let mut sh = shard();
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"query"), 0);
        assert_eq!(v, Verdict::Forward);
        assert!(checksums_valid(&out));
        let (oa, op) = src_of(&out);
        assert!(POOL.contains(&oa), "source must be a pool address");
        assert!(op >= 1024);
        // The reply comes back to the pool address and reaches the subscriber's own address and port.
        let (v, back) = one(
            &mut sh,
            Dir::Out2In,
            udp(SRV, 53, oa.into(), op, b"answer"),
            1,
        );
        assert_eq!(v, Verdict::Forward);
        assert!(checksums_valid(&back));
        let ip = Ipv4Packet::new_checked(&back[..]).unwrap();
        assert_eq!(ip.dst_addr(), SUB1);
        assert_eq!(UdpPacket::new_unchecked(ip.payload()).dst_port(), 5000);
        assert_eq!(sh.counters().get(Counter::SessionsCreated), 1);
        assert_eq!(sh.counters().get(Counter::In2outPackets), 1);
        assert_eq!(sh.counters().get(Counter::Out2inPackets), 1);
    }

    #[test]
    fn same_flow_reuses_session_even_within_one_burst() {
        let mut sh = shard();
        let mut b = vec![
            udp(SUB1, 5000, SRV, 53, b"a"),
            udp(SUB1, 5000, SRV, 53, b"b"),
            udp(SUB1, 5000, SRV, 53, b"c"),
        ];
        let v = run(&mut sh, Dir::In2Out, &mut b, 0);
        assert!(v.iter().all(|v| *v == Verdict::Forward));
        assert_eq!(sh.session_count(), 1);
        assert!(b.iter().all(|p| src_of(p) == src_of(&b[0])));
    }

    #[test]
    fn subscribers_never_share_an_outside_endpoint() {
        let mut sh = shard();
        let mut seen = std::collections::HashSet::new();
        for port in 0..200u16 {
            for sub in [SUB1, SUB2] {
                let (v, out) = one(
                    &mut sh,
                    Dir::In2Out,
                    udp(sub, 10000 + port, SRV, 53, b"x"),
                    0,
                );
                assert_eq!(v, Verdict::Forward);
                assert!(seen.insert(src_of(&out)), "outside endpoint reused");
            }
        }
        assert_eq!(sh.session_count(), 400);
        assert_eq!(sh.ports_in_use(), 400);
    }

    #[test]
    fn paired_pooling_keeps_one_address_per_subscriber() {
        let mut sh = shard();
        let addrs: std::collections::HashSet<u32> = (0..50u16)
            .map(|i| {
                src_of(
                    &one(
                        &mut sh,
                        Dir::In2Out,
                        udp(
                            SUB1,
                            2000 + i,
                            if i % 2 == 0 { SRV } else { SRV2 },
                            53,
                            b"x",
                        ),
                        0,
                    )
                    .1,
                )
                .0
            })
            .collect();
        assert_eq!(addrs.len(), 1);
    }

    #[test]
    fn unsolicited_inbound_is_dropped_and_counted() {
        let mut sh = shard();
        let (v, _) = one(
            &mut sh,
            Dir::Out2In,
            udp(SRV, 53, POOL[0].into(), 40000, b"x"),
            0,
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoSession));
        // A reply from another remote port to an existing session is not the session's tuple either.
        let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"q"), 0);
        let (oa, op) = src_of(&out);
        let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 54, oa.into(), op, b"x"), 0);
        assert_eq!(v, Verdict::Drop(DropReason::NoSession));
        assert_eq!(sh.counters().drops(DropReason::NoSession), 2);
    }

    #[test]
    fn tcp_needs_a_syn_and_follows_the_connection() {
        let mut sh = shard();
        let (v, _) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::ACK), 0);
        assert_eq!(v, Verdict::Drop(DropReason::TcpInvalid));
        let (v, out) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 0);
        assert_eq!(v, Verdict::Forward);
        let (oa, op) = src_of(&out);
        let k = FlowKey {
            src: SUB1.into(),
            dst: SRV.into(),
            sport: 4000,
            dport: 80,
            proto: 6,
        };
        assert_eq!(sh.find(Dir::In2Out, &k).unwrap().state, tcp_state::SYN_SENT);
        let (v, _) = one(
            &mut sh,
            Dir::Out2In,
            tcp(SRV, 80, oa.into(), op, F::SYN | F::ACK),
            1,
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(
            sh.find(Dir::In2Out, &k).unwrap().state,
            tcp_state::ESTABLISHED
        );
        // Established sessions live 2 h 4 min.
        assert_eq!(sh.expire(3600, u32::MAX), 0);
        one(
            &mut sh,
            Dir::In2Out,
            tcp(SUB1, 4000, SRV, 80, F::FIN | F::ACK),
            3600,
        );
        one(
            &mut sh,
            Dir::Out2In,
            tcp(SRV, 80, oa.into(), op, F::FIN | F::ACK),
            3600,
        );
        let s = sh.find(Dir::In2Out, &k).unwrap().state;
        assert_eq!(
            s & (tcp_state::FIN_IN | tcp_state::FIN_OUT),
            tcp_state::FIN_IN | tcp_state::FIN_OUT
        );
        // Closed connections drop to the 4-minute transitory timeout.
        assert_eq!(sh.expire(3600 + 239, u32::MAX), 0);
        assert_eq!(sh.expire(3600 + 240, u32::MAX), 1);
        assert_eq!(sh.session_count(), 0);
        assert_eq!(sh.ports_in_use(), 0);
    }

    #[test]
    fn rst_shortens_the_timeout() {
        let mut sh = shard();
        let (_, out) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 0);
        let (oa, op) = src_of(&out);
        one(
            &mut sh,
            Dir::Out2In,
            tcp(SRV, 80, oa.into(), op, F::SYN | F::ACK),
            0,
        );
        one(
            &mut sh,
            Dir::Out2In,
            tcp(SRV, 80, oa.into(), op, F::RST),
            10,
        );
        assert_eq!(sh.expire(249, u32::MAX), 0);
        assert_eq!(sh.expire(250, u32::MAX), 1);
    }

    #[test]
    fn icmp_echo_is_translated_by_identifier() {
        let mut sh = shard();
        let (v, out) = one(
            &mut sh,
            Dir::In2Out,
            icmp_echo(SUB1, SRV, icmp_type::ECHO_REQUEST, 0x4242),
            0,
        );
        assert_eq!(v, Verdict::Forward);
        assert!(checksums_valid(&out));
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        let oa = ip.src_addr();
        let id = wire::Icmpv4Packet::new_checked(ip.payload())
            .unwrap()
            .echo_ident();
        let (v, back) = one(
            &mut sh,
            Dir::Out2In,
            icmp_echo(SRV, oa, icmp_type::ECHO_REPLY, id),
            0,
        );
        assert_eq!(v, Verdict::Forward);
        assert!(checksums_valid(&back));
        let ip = Ipv4Packet::new_checked(&back[..]).unwrap();
        assert_eq!(ip.dst_addr(), SUB1);
        assert_eq!(
            wire::Icmpv4Packet::new_checked(ip.payload())
                .unwrap()
                .echo_ident(),
            0x4242
        );
        assert_eq!(sh.expire(59, u32::MAX), 0);
        assert_eq!(sh.expire(60, u32::MAX), 1);
    }

    #[test]
    fn idle_sessions_expire_and_return_every_port() {
        let mut sh = shard();
        for p in 0..300u16 {
            one(
                &mut sh,
                Dir::In2Out,
                udp(SUB1, 1000 + p, SRV, 53, b"x"),
                p as u32,
            );
        }
        assert_eq!(sh.session_count(), 300);
        // Bounded work per call; keep calling as a worker loop would.
        let mut now = 0;
        while sh.session_count() > 0 {
            now += 1;
            assert!(sh.expire(now, 64) <= 64);
            assert!(now < 700, "sessions never drained");
        }
        assert!(now >= 300 + 299, "expired before the UDP timeout: {now}");
        assert_eq!(sh.ports_in_use(), 0);
        assert_eq!(sh.counters().get(Counter::SessionsCurrent), 0);
        assert_eq!(sh.counters().get(Counter::PortsInUse), 0);
        assert_eq!(sh.counters().get(Counter::SessionsDeleted), 300);
    }

    #[test]
    fn table_full_refuses_new_flows_but_keeps_existing() {
        let mut sh = shard_with(4, 1024, 65535);
        let mut outs = Vec::new();
        for p in 0..4u16 {
            outs.push(src_of(
                &one(&mut sh, Dir::In2Out, udp(SUB1, 1000 + p, SRV, 53, b"x"), 0).1,
            ));
        }
        let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB2, 9, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Drop(DropReason::TableFull));
        for (i, (oa, op)) in outs.iter().enumerate() {
            let (v, _) = one(
                &mut sh,
                Dir::In2Out,
                udp(SUB1, 1000 + i as u16, SRV, 53, b"x"),
                0,
            );
            assert_eq!(v, Verdict::Forward);
            let (v, _) = one(
                &mut sh,
                Dir::Out2In,
                udp(SRV, 53, (*oa).into(), *op, b"x"),
                0,
            );
            assert_eq!(v, Verdict::Forward);
        }
        assert_eq!(sh.counters().drops(DropReason::TableFull), 1);
    }

    #[test]
    fn out_of_ports_refuses_new_flows_but_keeps_existing() {
        // 64 ports per address; SUB1 is paired with one address.
        let mut sh = shard_with(1024, 2048, 2111);
        let mut ok = 0;
        for p in 0..70u16 {
            if one(&mut sh, Dir::In2Out, udp(SUB1, 1000 + p, SRV, 53, b"x"), 0).0
                == Verdict::Forward
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 64);
        assert_eq!(sh.counters().drops(DropReason::OutOfPorts), 6);
        assert_eq!(
            one(&mut sh, Dir::In2Out, udp(SUB1, 1000, SRV, 53, b"x"), 0).0,
            Verdict::Forward
        );
    }

    #[test]
    fn no_rule_and_malformed_are_counted_by_reason() {
        let mut sh = shard();
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            udp(Ipv4Addr::new(10, 0, 0, 1), 1, SRV, 53, b"x"),
            0,
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoSnatRule));
        let mut bad = udp(SUB1, 1, SRV, 53, b"x");
        bad[0] = 0x43;
        let mut b = vec![bad, udp(SUB1, 1, SRV, 53, b"x"), vec![0x45, 0]];
        let v = run(&mut sh, Dir::In2Out, &mut b, 0);
        assert_eq!(
            v,
            vec![
                Verdict::Drop(DropReason::Ipv4BadIhl),
                Verdict::Forward,
                Verdict::Drop(DropReason::Ipv4Truncated)
            ]
        );
        assert_eq!(sh.counters().drops(DropReason::Ipv4BadIhl), 1);
        assert_eq!(sh.counters().drops(DropReason::Ipv4Truncated), 1);
        assert_eq!(sh.counters().drops(DropReason::NoSnatRule), 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut sh = shard();
        let mut rng = 0x1234_5678_9abc_def1u64;
        let seeds = [
            udp(SUB1, 1, SRV, 53, b"hello"),
            tcp(SUB1, 2, SRV, 80, F::SYN),
            icmp_echo(SUB1, SRV, 8, 3),
        ];
        for round in 0..20_000 {
            let mut p = seeds[round % 3].clone();
            for _ in 0..3 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % p.len() as u64) as usize;
                p[i] = (rng >> 32) as u8;
            }
            p.truncate((rng >> 40) as usize % (p.len() + 1));
            let dir = if round % 2 == 0 {
                Dir::In2Out
            } else {
                Dir::Out2In
            };
            one(&mut sh, dir, p, 0);
        }
    }
}
