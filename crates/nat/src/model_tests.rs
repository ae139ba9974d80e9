//! The shard against a model of its SNAT contract, over long random runs.
//!
//! The behaviour tests pin down one RFC rule each. This one lets random subscribers, remotes and
//! the clock drive two pools (an SNAT rule by destination picks the second for two of the
//! remotes) for thousands of steps, in bursts of mixed directions, under each filtering behaviour,
//! with a roomy and a small table, over UDP and over TCP, and checks after every packet that the
//! shard did what the contract says:
//!
//! * one outside endpoint per inside endpoint and pool while its mapping lives or is held (RFC
//!   4787 REQ-1), revived for the same endpoint during its hold-down, never shared between two
//!   mappings, and never reused before the hold-down is over (RFC 6888 REQ-8);
//! * one session per inside tuple: an outbound packet follows its session's mapping whatever
//!   pool its rule names now, and an inbound one cannot open a second session for a tuple that
//!   already has one through the other pool;
//! * inbound packets reach the mapping's inside endpoint, and open sessions only as the pool's
//!   filter allows (RFC 4787 section 5: any remote, a remote address the mapping has a session
//!   with, or none new); nothing gets in to a held port or to a port no mapping has;
//! * outbound packets keep a UDP session alive, inbound ones do not (REQ-6, the default); TCP
//!   segments refresh both ways;
//! * only a SYN opens a TCP session (RFC 5382), from inside, or from outside where the filter
//!   lets it; only a connection both sides took part in, untouched by FIN or RST, gets the long
//!   timeout; and a mapping whose last connection closed with a FIN each way and no RST frees
//!   its port without a hold-down (RFC 6888 REQ-8 a, RFC 7857 section 2.2);
//! * a session ends no earlier than its idle timeout and no later than one sweep pass after it,
//!   and a hold-down likewise; the counts the control plane reads follow, and everything drains
//!   to zero with no index entry left behind;
//! * in a table that is full (sessions, or mappings with the held ones), a new session is refused
//!   and counted (`table_full`) while every established one goes on both ways (as RFC 6888
//!   REQ-11 asks: no eviction);
//! * the control plane's deletions (by subscriber, remote address or outside endpoint) end
//!   exactly the sessions they select, and a mapping that loses its last one is held from then
//!   (or freed, after a clean close).
//!
//! The contract allows a range in two places: expiry (a pass of the sweep), and which of several
//! sessions ending together went last (whose close decides the hold-down). There the model reads
//! the shard's state, checks that it is one the contract allows, and adopts it. Everywhere else
//! it predicts. HashMap order differs from process to process, so every random pick is made from
//! a sorted list: a seed replays the same run. It exists for the table
//! redesign planned in perf/README.md, which moves a mapping's first session into its mapping's
//! record: the transitions it exercises most (a mapping's sessions ending in any order while
//! others go on, inbound sessions on an outbound mapping, revival during the hold-down, two
//! mappings of one inside endpoint) are the ones that redesign must get right.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::rewrite::testpkt::*;
use crate::shard::testkit::*;
use crate::{
    Counters, Dir, DropReason, Filtering, FlowKey, Pool, Prefix, Rules, SessionFilter, Shard,
    ShardConfig, SnatRule, TestRng as Rng, Timeouts, Verdict,
};
use wire::{Ipv4Addr, ip_proto, tcp_flags as F};

type Ep = (u32, u16);
/// A mapping's identity: its inside endpoint and its pool.
type MapKey = (Ep, usize);

const UDP_TIMEOUT: u32 = 30;
const TCP_ESTABLISHED: u32 = 60;
const TCP_TRANSITORY: u32 = 15;
const HOLD_DOWN: u32 = 20;
const PORT_LO: u16 = 1024;
const PORT_HI: u16 = 1100;
const SUBSCRIBERS: u32 = 6;
const PORTS_PER_SUBSCRIBER: u16 = 4;
/// 198.51.100.1-5; an SNAT rule sends flows to 198.51.100.4/30 (the last two) to pool 1.
const REMOTES: u32 = 5;
const REMOTE_BASE: u32 = 0xc633_6401;
const POOL_B: [u32; 2] = [0xcb00_7180, 0xcb00_7181];

fn pool_addrs(pool: usize) -> [u32; 2] {
    if pool == 0 { POOL } else { POOL_B }
}

/// The pool the SNAT rules give a new flow to `remote`.
fn pool_for(remote: Ep) -> usize {
    usize::from(Prefix::new(0xc633_6404, 30).contains(remote.0))
}

#[derive(Debug, Clone, Copy)]
struct MapState {
    out: Ep,
    /// `None` while the mapping has sessions; the tick its hold-down ends once it has none.
    held_until: Option<u32>,
    /// Just lost its last session, and which of its sessions went last is not known: whether
    /// that one closed cleanly (its port is freed at once) or not (the port is held).
    may_free: bool,
    may_hold: bool,
    /// The remote of the session embedded in the mapping's record (its first session, or the
    /// first one opened while the record had none): that session takes no record of its own.
    embedded: Option<Ep>,
}

impl MapState {
    fn live(out: Ep, embedded: Option<Ep>) -> MapState {
        MapState {
            out,
            held_until: None,
            may_free: false,
            may_hold: true,
            embedded,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opened by an inside SYN, not answered yet.
    SynSent,
    /// Opened by an outside SYN the filter let through, not answered yet.
    SynRcvd,
    Established,
}

/// A TCP session's state as RFC 5382 and RFC 7857 describe it: only an answered connection that
/// no FIN or RST has touched gets the long timeout, and only a FIN from each side without a RST
/// lets its port skip the hold-down.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    phase: Phase,
    fin_in: bool,
    fin_out: bool,
    rst: bool,
}

impl Tcp {
    fn opened(dir: Dir) -> Tcp {
        Tcp {
            phase: if dir == Dir::In2Out {
                Phase::SynSent
            } else {
                Phase::SynRcvd
            },
            fin_in: false,
            fin_out: false,
            rst: false,
        }
    }

    fn on(&mut self, dir: Dir, flags: u8) {
        if flags & F::RST != 0 {
            self.rst = true;
        } else if flags & F::SYN != 0 && flags & F::ACK == 0 {
            // A new connection on a closed or closing tuple; a repeated SYN changes nothing.
            if self.rst || self.fin_in || self.fin_out {
                *self = Tcp::opened(dir);
            }
        } else {
            // The side that did not open answers: the connection is up.
            let answer = match dir {
                Dir::Out2In => Phase::SynSent,
                Dir::In2Out => Phase::SynRcvd,
            };
            if flags & F::ACK != 0 && self.phase == answer {
                self.phase = Phase::Established;
            }
            if flags & F::FIN != 0 {
                match dir {
                    Dir::In2Out => self.fin_in = true,
                    Dir::Out2In => self.fin_out = true,
                }
            }
        }
    }

    fn timeout(&self) -> u32 {
        if self.phase == Phase::Established && !(self.fin_in || self.fin_out || self.rst) {
            TCP_ESTABLISHED
        } else {
            TCP_TRANSITORY
        }
    }

    fn clean(&self) -> bool {
        self.fin_in && self.fin_out && !self.rst
    }
}

fn bare_syn(flags: u8) -> bool {
    flags & (F::SYN | F::ACK | F::RST | F::FIN) == F::SYN
}

#[derive(Debug, Clone, Copy)]
struct Sess {
    /// Tick of the last packet that refreshed it.
    last: u32,
    /// The pool of the mapping it belongs to.
    pool: usize,
    /// TCP only.
    tcp: Option<Tcp>,
}

impl Sess {
    fn deadline(&self) -> u32 {
        self.last + self.tcp.map_or(UDP_TIMEOUT, |t| t.timeout())
    }

    /// Whether its mapping, should it be the last session, frees its port at once.
    fn clean(&self) -> bool {
        self.tcp.is_some_and(|t| t.clean())
    }
}

#[derive(Default)]
struct Model {
    maps: HashMap<MapKey, MapState>,
    /// By (inside endpoint, remote endpoint): one session per inside tuple.
    sessions: HashMap<(Ep, Ep), Sess>,
}

impl Model {
    fn sessions_of(&self, m: MapKey) -> usize {
        self.sessions
            .iter()
            .filter(|((i, _), s)| (*i, s.pool) == m)
            .count()
    }

    fn owner_of(&self, out: Ep) -> Option<MapKey> {
        self.maps
            .iter()
            .find(|(_, m)| m.out == out)
            .map(|(&k, _)| k)
    }
}

fn key(inside: Ep, remote: Ep, proto: u8) -> FlowKey {
    FlowKey {
        src: inside.0,
        dst: remote.0,
        sport: inside.1,
        dport: remote.1,
        proto,
    }
}

fn inside_ep(r: &mut Rng) -> Ep {
    (
        0x6440_0001 + r.below(u64::from(SUBSCRIBERS)) as u32,
        1000 + r.below(u64::from(PORTS_PER_SUBSCRIBER)) as u16,
    )
}

fn remote_ep(r: &mut Rng) -> Ep {
    (
        REMOTE_BASE + r.below(u64::from(REMOTES)) as u32,
        53 + r.below(2) as u16,
    )
}

/// An outbound packet from `inside` to `remote` on mapping (`inside`, `pool`) and what the model
/// expects of it: translated to this outside endpoint (`None`: a new mapping, whose port the
/// shard chooses), or refused for this reason (a TCP segment other than a SYN cannot open a
/// session; a full table).
struct Out {
    inside: Ep,
    remote: Ep,
    pool: usize,
    out: Option<Ep>,
    refused: Option<DropReason>,
}

/// An inbound packet from `remote` to `out` and what the model expects of it: delivered to this
/// inside endpoint, or dropped for this reason (no live mapping, the pool's filter or the tuple's
/// session in the other pool, a TCP segment other than a SYN, a new session in a full table).
struct In {
    remote: Ep,
    out: Ep,
    to: Result<Ep, DropReason>,
}

struct Run {
    sh: Shard,
    /// UDP or TCP: every flow of a run has the one protocol (their port spaces are apart).
    proto: u8,
    filtering: Filtering,
    /// Record capacity (`max_sessions`): a mapping is a record with room for one session, every
    /// further session one more. A new session that needs a record beyond it is refused, and
    /// nothing else changes.
    max: usize,
    /// New sessions the model expected refused for it.
    refused: u64,
    /// Mappings the outbound packets planned so far in this burst make, with the remote of the
    /// session each embeds.
    made: HashMap<MapKey, Ep>,
    model: Model,
    now: u32,
    /// How late a sweep may end a session or a hold-down (one pass, and the tick it runs in).
    lag: u32,
    rng: Rng,
}

impl Run {
    fn new(seed: u64, max_sessions: u32, filtering: Filtering, proto: u8) -> Run {
        let pool = |name: &str, addrs: [u32; 2]| Pool {
            filtering,
            ..Pool::new(name, addrs.to_vec(), PORT_LO, PORT_HI)
        };
        let rules = Rules::new(
            vec![pool("a", POOL), pool("b", POOL_B)],
            vec![
                SnatRule {
                    dst: Some(Prefix::new(0xc633_6404, 30)),
                    ..subscribers_rule(1)
                },
                subscribers_rule(0),
            ],
        )
        .unwrap();
        let cfg = ShardConfig {
            max_sessions,
            timeouts: Timeouts {
                udp: UDP_TIMEOUT,
                tcp_established: TCP_ESTABLISHED,
                tcp_transitory: TCP_TRANSITORY,
                ..Timeouts::default()
            },
            hold_down_s: HOLD_DOWN,
            seed: seed.rotate_left(7),
            ..ShardConfig::default()
        };
        let sh = Shard::new(cfg, Arc::new(rules), Arc::new(Counters::default()), 0).unwrap();
        let lag = sh.expiry_lag_seconds() + 1;
        Run {
            sh,
            proto,
            filtering,
            max: max_sessions as usize,
            refused: 0,
            made: HashMap::new(),
            model: Model::default(),
            now: 0,
            lag,
            rng: Rng(seed | 1),
        }
    }

    /// Records in use: every mapping (live, held, or made in this burst) with its embedded session,
    /// and every other session. Sessions planned in this burst are in the model already; the
    /// mappings made for them carry theirs.
    fn records(&self) -> usize {
        let embedded = self
            .model
            .maps
            .values()
            .filter(|m| m.embedded.is_some())
            .count();
        self.model.maps.len() + self.made.len() + self.model.sessions.len()
            - embedded
            - self.made.len()
    }

    /// What the model expects of the next packet, applied to the model as the shard should apply
    /// it (packets of a burst take effect one after the other).
    fn plan_outbound(&mut self, inside: Ep, remote: Ep, flags: u8) -> Out {
        let now = self.now;
        let tcp = self.proto == ip_proto::TCP;
        let existing = self.model.sessions.get(&(inside, remote)).copied();
        // An existing session keeps its mapping (an inbound one may be on the other pool's).
        let pool = existing.map_or_else(|| pool_for(remote), |s| s.pool);
        // Refused before anything is looked up: a held mapping stays held.
        // The mapping table has the session table's capacity (`max_mappings` 0), and held
        // mappings take their place in it. Mappings an earlier packet of this burst makes are
        // in the model only once the burst is checked: counted from `made`.
        let needs_mapping = !self.model.maps.contains_key(&(inside, pool))
            && !self.made.contains_key(&(inside, pool));
        // A new session takes a record unless its mapping exists with nothing embedded.
        let embeds = !needs_mapping
            && self
                .model
                .maps
                .get(&(inside, pool))
                .is_some_and(|m| m.embedded.is_none());
        let refused = match existing {
            Some(_) => None,
            None if tcp && !bare_syn(flags) => Some(DropReason::TcpInvalid),
            None if !embeds && self.records() >= self.max => Some(DropReason::TableFull),
            None if needs_mapping && self.model.maps.len() + self.made.len() >= self.max => {
                Some(DropReason::TableFull)
            }
            None => None,
        };
        if refused.is_none() && existing.is_none() {
            if needs_mapping {
                self.made.insert((inside, pool), remote);
            } else if embeds && let Some(m) = self.model.maps.get_mut(&(inside, pool)) {
                m.embedded = Some(remote);
            }
        }
        if refused.is_some() {
            return Out {
                inside,
                remote,
                pool,
                out: None,
                refused,
            };
        }
        let out = self.model.maps.get_mut(&(inside, pool)).map(|m| {
            // Revived if held: the same endpoint gets its port back.
            m.held_until = None;
            m.out
        });
        // Outbound packets refresh their session, new or not.
        let tcp = match existing.and_then(|s| s.tcp) {
            Some(mut t) => {
                t.on(Dir::In2Out, flags);
                Some(t)
            }
            None => tcp.then(|| Tcp::opened(Dir::In2Out)),
        };
        self.model.sessions.insert(
            (inside, remote),
            Sess {
                last: now,
                pool,
                tcp,
            },
        );
        Out {
            inside,
            remote,
            pool,
            out,
            refused,
        }
    }

    fn plan_inbound(&mut self, remote: Ep, out: Ep, flags: u8) -> In {
        let now = self.now;
        let tcp = self.proto == ip_proto::TCP;
        let to = match self.model.owner_of(out) {
            // Nobody uses a port during its hold-down.
            Some(k) if self.model.maps[&k].held_until.is_none() => {
                let (i, pool) = k;
                let admits = self.admits(k, remote);
                let embeds = self.model.maps[&k].embedded.is_none();
                let full = !embeds && self.records() >= self.max;
                let existing = self.model.sessions.get(&(i, remote)).copied();
                match existing {
                    Some(mut s) if s.pool == pool => {
                        // Established, whatever the filter. UDP is not refreshed from outside;
                        // TCP is, and follows the connection.
                        if let Some(t) = &mut s.tcp {
                            t.on(Dir::Out2In, flags);
                            s.last = now;
                        }
                        self.model.sessions.insert((i, remote), s);
                        Ok(i)
                    }
                    // Only a SYN the filter lets through may open a session, and the tuple has
                    // its session through the other pool: one tuple, one session.
                    Some(_) if tcp && admits && !bare_syn(flags) => Err(DropReason::TcpInvalid),
                    Some(_) => Err(DropReason::Filtered),
                    None if !admits => Err(DropReason::Filtered),
                    None if tcp && !bare_syn(flags) => Err(DropReason::TcpInvalid),
                    None if full => Err(DropReason::TableFull),
                    None => {
                        if embeds && let Some(m) = self.model.maps.get_mut(&k) {
                            m.embedded = Some(remote);
                        }
                        let tcp = tcp.then(|| Tcp::opened(Dir::Out2In));
                        self.model.sessions.insert(
                            (i, remote),
                            Sess {
                                last: now,
                                pool,
                                tcp,
                            },
                        );
                        Ok(i)
                    }
                }
            }
            _ => Err(DropReason::NoSession),
        };
        In { remote, out, to }
    }

    /// TCP flags for a segment in `dir` of the tuple (inside, remote) if known; 0 for UDP. Three
    /// times in four the segment a well-behaved peer sends next (so that connections open, get
    /// answered and close cleanly, both ways), else any segment, resets included.
    fn flags(&mut self, dir: Dir, tuple: Option<(Ep, Ep)>) -> u8 {
        if self.proto != ip_proto::TCP {
            return 0;
        }
        if self.rng.below(4) > 0 {
            let state = tuple
                .and_then(|k| self.model.sessions.get(&k))
                .and_then(|s| s.tcp);
            let fin_sent = |t: &Tcp| match dir {
                Dir::In2Out => t.fin_in,
                Dir::Out2In => t.fin_out,
            };
            return match state.map(|t| (t.phase, t)) {
                None => F::SYN,
                Some((Phase::SynSent, _)) if dir == Dir::Out2In => F::SYN | F::ACK,
                Some((Phase::SynRcvd, _)) if dir == Dir::In2Out => F::SYN | F::ACK,
                Some((_, t)) if t.rst || fin_sent(&t) => F::ACK,
                Some((Phase::Established, _)) if self.rng.below(2) == 0 => F::FIN | F::ACK,
                Some(_) => F::ACK,
            };
        }
        let choices: &[u8] = match dir {
            Dir::In2Out => &[
                F::SYN,
                F::SYN,
                F::SYN,
                F::ACK,
                F::ACK,
                F::FIN | F::ACK,
                F::RST,
            ],
            Dir::Out2In => &[
                F::SYN | F::ACK,
                F::SYN | F::ACK,
                F::ACK,
                F::ACK,
                F::FIN | F::ACK,
                F::SYN,
                F::RST,
            ],
        };
        choices[self.rng.below(choices.len() as u64) as usize]
    }

    fn packet(&self, src: Ep, dst: Ep, flags: u8) -> Vec<u8> {
        if self.proto == ip_proto::TCP {
            tcp(ip(src.0), src.1, ip(dst.0), dst.1, flags)
        } else {
            udp(ip(src.0), src.1, ip(dst.0), dst.1, b"payload")
        }
    }

    /// Whether the pool's filter lets `remote` open a session on mapping `m` (RFC 4787 section
    /// 5): anyone, a remote address the mapping has a session with, or nobody new.
    fn admits(&self, m: MapKey, remote: Ep) -> bool {
        match self.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self
                .model
                .sessions
                .iter()
                .any(|(&(i, r), s)| (i, s.pool) == m && r.0 == remote.0),
            Filtering::AddressAndPortDependent => false,
        }
    }

    /// A burst of up to eight packets, mixed directions run as two bursts (a worker translates
    /// each direction's burst separately), checked packet by packet.
    fn burst(&mut self) {
        let n = 1 + self.rng.below(8) as usize;
        let mut outs = Vec::new();
        let mut ins = Vec::new();
        // Outbound first, then inbound: an inbound packet may aim at a mapping made just now.
        for _ in 0..n {
            if self.rng.below(3) > 0 {
                let (i, r) = (inside_ep(&mut self.rng), remote_ep(&mut self.rng));
                let flags = self.flags(Dir::In2Out, Some((i, r)));
                let e = self.plan_outbound(i, r, flags);
                outs.push((self.packet(i, r, flags), e));
            }
        }
        self.check_outbound(outs);
        self.made.clear();
        for _ in 0..n {
            if self.rng.below(2) == 0 {
                // Half the time the remote end of a session answers it; else a random remote
                // tries a mapping, or a port that may have none.
                let mut sessions: Vec<(Ep, Ep)> = Vec::new();
                if self.rng.below(2) == 0 {
                    sessions = self
                        .model
                        .sessions
                        .iter()
                        .map(|(&(i, r), s)| (r, self.model.maps[&(i, s.pool)].out))
                        .collect();
                    // HashMap order is not seeded by the run: sort for reproducible runs.
                    sessions.sort_unstable();
                }
                let live: Vec<Ep> = self.model.maps.values().map(|m| m.out).collect();
                let (r, out) = if !sessions.is_empty() {
                    sessions[self.rng.below(sessions.len() as u64) as usize]
                } else if !live.is_empty() && self.rng.below(4) > 0 {
                    let mut live = live;
                    live.sort_unstable();
                    (
                        remote_ep(&mut self.rng),
                        live[self.rng.below(live.len() as u64) as usize],
                    )
                } else {
                    (
                        remote_ep(&mut self.rng),
                        (
                            pool_addrs(self.rng.below(2) as usize)[self.rng.below(2) as usize],
                            PORT_LO + self.rng.below(u64::from(PORT_HI - PORT_LO + 1)) as u16,
                        ),
                    )
                };
                let tuple = self.model.owner_of(out).map(|(i, _)| (i, r));
                let flags = self.flags(Dir::Out2In, tuple);
                let e = self.plan_inbound(r, out, flags);
                ins.push((self.packet(r, out, flags), e));
            }
        }
        self.check_inbound(ins);
    }

    fn check_outbound(&mut self, burst: Vec<(Vec<u8>, Out)>) {
        let (mut pkts, expects): (Vec<_>, Vec<_>) = burst.into_iter().unzip();
        let v = run(&mut self.sh, Dir::In2Out, &mut pkts, self.now);
        let now = self.now;
        for ((p, e), v) in pkts.iter().zip(expects).zip(v) {
            let Out {
                inside,
                remote,
                pool,
                out,
                refused,
            } = e;
            if let Some(r) = refused {
                assert_eq!(v, Verdict::Drop(r), "t={now} {inside:?} -> {remote:?}");
                if r == DropReason::TableFull {
                    self.refused += 1;
                }
                continue;
            }
            assert_eq!(v, Verdict::Forward, "t={now} {inside:?} -> {remote:?}");
            assert_eq!(dst_of(p), remote, "t={now}: destination kept");
            let got = src_of(p);
            match out {
                Some(o) => assert_eq!(got, o, "t={now} {inside:?}: its outside endpoint"),
                None => {
                    // A new mapping: a port of its pool that no other mapping, live or held, has.
                    assert!(
                        pool_addrs(pool).contains(&got.0) && (PORT_LO..=PORT_HI).contains(&got.1),
                        "t={now} {inside:?} -> {remote:?}: {got:?} not of pool {pool}"
                    );
                    if let Some(other) = self.model.owner_of(got) {
                        assert_eq!(other, (inside, pool), "t={now}: {got:?} given twice");
                    }
                }
            }
            // Later packets of the burst expect it (the first outbound packet made it).
            let m = self
                .model
                .maps
                .entry((inside, pool))
                .or_insert(MapState::live(got, self.made.get(&(inside, pool)).copied()));
            assert_eq!(m.out, got, "t={now} {inside:?}");
        }
    }

    fn check_inbound(&mut self, burst: Vec<(Vec<u8>, In)>) {
        let (mut pkts, expects): (Vec<_>, Vec<_>) = burst.into_iter().unzip();
        let v = run(&mut self.sh, Dir::Out2In, &mut pkts, self.now);
        let now = self.now;
        for ((p, e), v) in pkts.iter().zip(expects).zip(v) {
            let In { remote, out, to } = e;
            match to {
                Err(r) => {
                    assert_eq!(v, Verdict::Drop(r), "t={now} {remote:?} -> {out:?}");
                    if r == DropReason::TableFull {
                        self.refused += 1;
                    }
                }
                Ok(i) => {
                    assert_eq!(v, Verdict::Forward, "t={now} {remote:?} -> {out:?}");
                    assert_eq!(dst_of(p), i, "t={now}: to the mapping's endpoint");
                    assert_eq!(src_of(p), remote, "t={now}: source kept");
                }
            }
        }
    }

    /// The control plane deletes the sessions of a subscriber, of a remote address or of an
    /// outside endpoint, in steps as a worker runs a command; a mapping whose last session goes
    /// enters its hold-down now, or frees its port if that session closed cleanly. Call it at the
    /// tick of the last burst (the shard's clock).
    fn delete(&mut self) {
        let now = self.now;
        let mut filter = SessionFilter {
            proto: Some(self.proto),
            ..SessionFilter::default()
        };
        let mut outs: Vec<Ep> = self.model.maps.values().map(|m| m.out).collect();
        outs.sort_unstable();
        match self.rng.below(3) {
            0 => filter.inside_addr = Some(inside_ep(&mut self.rng).0),
            1 => filter.remote_addr = Some(remote_ep(&mut self.rng).0),
            _ if !outs.is_empty() => {
                let o = outs[self.rng.below(outs.len() as u64) as usize];
                filter.outside_addr = Some(o.0);
                filter.outside_port = Some(o.1);
            }
            _ => return,
        }
        let doomed: Vec<(Ep, Ep)> = self
            .model
            .sessions
            .iter()
            .filter(|&(&(i, r), sess)| {
                let o = self.model.maps[&(i, sess.pool)].out;
                filter.inside_addr.is_none_or(|a| a == i.0)
                    && filter.remote_addr.is_none_or(|a| a == r.0)
                    && filter.outside_addr.is_none_or(|a| a == o.0)
                    && filter.outside_port.is_none_or(|p| p == o.1)
            })
            .map(|(&k, _)| k)
            .collect();
        let (mut cursor, mut deleted) = (Some(0), 0);
        while let Some(c) = cursor {
            let (next, n) = self.sh.delete_sessions(c, 64, &filter);
            cursor = next;
            deleted += n as usize;
        }
        assert_eq!(deleted, doomed.len(), "t={now}: deleted by {filter:?}");
        // They all end now; which of a mapping's went last is the slab's order.
        let ended: Vec<((Ep, Ep), Sess, u32)> = doomed
            .into_iter()
            .filter_map(|k| self.model.sessions.remove(&k).map(|s| (k, s, now)))
            .collect();
        self.mappings_after(&ended);
        self.check_mappings();
    }

    /// Mappings that lost their last session among `ended` ((key, session, tick it ended at the
    /// earliest)): held from when the last of them ended, or freed at once if that one closed
    /// cleanly. Which went last is known only when their earliest ends are far enough apart, so
    /// the model allows every outcome of the sessions that may have been last.
    fn mappings_after(&mut self, ended: &[((Ep, Ep), Sess, u32)]) {
        // An ended embedded session leaves its record's session part free.
        for &((i, r), s, _) in ended {
            if let Some(m) = self.model.maps.get_mut(&(i, s.pool))
                && m.embedded == Some(r)
            {
                m.embedded = None;
            }
        }
        let mut by_map: HashMap<MapKey, Vec<(Sess, u32)>> = HashMap::new();
        for &((i, _), s, at) in ended {
            by_map.entry((i, s.pool)).or_default().push((s, at));
        }
        let lag = self.lag;
        for (k, ends) in by_map {
            if self.model.sessions_of(k) > 0 {
                continue;
            }
            let Some(m) = self.model.maps.get_mut(&k) else {
                panic!(
                    "t={}: session of {k:?} without a mapping in the model",
                    self.now
                );
            };
            let latest = ends.iter().map(|&(_, at)| at).max().unwrap_or(self.now);
            let last = ends.iter().filter(|&&(_, at)| at + lag > latest);
            m.may_free = last.clone().any(|(s, _)| s.clean());
            m.may_hold = last.clone().any(|(s, _)| !s.clean());
            // The hold-down runs from when the last session ended.
            m.held_until = Some(latest + HOLD_DOWN);
        }
    }

    /// Every mapping of the model against the shard's: a live one live, a held one held for as
    /// long as its hold-down allows, a freed one gone. What the sweep's allowance or an unknown
    /// order left open is read from the shard, checked allowed, and adopted.
    fn check_mappings(&mut self) {
        let (now, lag) = (self.now, self.lag);
        assert_eq!(
            self.sh.hint_mismatches(),
            0,
            "t={now}: a mapping's entries say wrongly whether it has separate sessions"
        );
        let mut released = Vec::new();
        for (&k, m) in self.model.maps.iter_mut() {
            let ((ia, ip_), pool) = k;
            let got = self
                .sh
                .find_mapping(m.out.0, m.out.1, self.proto)
                .filter(|g| (g.in_addr, g.in_port, usize::from(g.pool)) == (ia, ip_, pool));
            let Some(earliest) = m.held_until else {
                assert!(
                    got.is_some_and(|g| !g.is_held()),
                    "t={now}: live mapping {k:?} -> {:?}",
                    m.out
                );
                continue;
            };
            match got {
                Some(g) => {
                    let until = g.held_until();
                    assert!(m.may_hold, "t={now}: {k:?} held after a clean close");
                    assert!(
                        until.is_some_and(|u| u >= earliest && u < earliest + lag),
                        "t={now}: {k:?} held until {until:?}, expected from {earliest} within {lag} s"
                    );
                    let u = until.unwrap_or(earliest);
                    assert!(now < u + lag, "t={now}: hold-down of {k:?} outlived {u}");
                    m.held_until = until;
                    m.may_free = false;
                }
                None => {
                    assert!(
                        m.may_free || now >= earliest,
                        "t={now}: {k:?} released before {earliest}"
                    );
                    released.push(k);
                }
            }
        }
        for k in released {
            self.model.maps.remove(&k);
        }
    }

    /// Let `secs` pass with expiry running as a worker runs it, then bring the model up to date:
    /// what must have ended is checked gone, what must live is checked present (on its mapping),
    /// and what is inside the sweep's allowance is read from the shard (checked allowed) and
    /// adopted.
    fn advance(&mut self, secs: u32) {
        let from = self.now + 1;
        self.now += secs;
        tick(&mut self.sh, from, self.now);
        let now = self.now;
        let mut ended = Vec::new();
        for (&(i, r), s) in &self.model.sessions {
            let deadline = s.deadline();
            let found = self.sh.find(Dir::In2Out, &key(i, r, self.proto));
            if let Some(f) = found {
                let m = self.model.maps[&(i, s.pool)];
                assert_eq!((f.out_addr, f.out_port), m.out, "t={now}: {i:?} -> {r:?}");
            }
            if now < deadline {
                assert!(
                    found.is_some(),
                    "t={now}: {i:?} -> {r:?} ended before {deadline}"
                );
            } else if now >= deadline + self.lag {
                assert!(
                    found.is_none(),
                    "t={now}: {i:?} -> {r:?} outlived {deadline}"
                );
            }
            if found.is_none() {
                ended.push(((i, r), *s, deadline));
            }
        }
        for &(k, _, _) in &ended {
            self.model.sessions.remove(&k);
        }
        self.mappings_after(&ended);
        self.check_mappings();
        assert_eq!(
            self.sh.session_count() as usize,
            self.model.sessions.len(),
            "t={now}: sessions"
        );
        assert_eq!(
            self.sh.mapping_count() as usize,
            self.model.maps.len(),
            "t={now}: mappings, live and held"
        );
        let held = self
            .model
            .maps
            .values()
            .filter(|m| m.held_until.is_some())
            .count();
        assert_eq!(self.sh.held_count() as usize, held, "t={now}: held");
        let outs: HashSet<Ep> = self.model.maps.values().map(|m| m.out).collect();
        assert_eq!(
            outs.len(),
            self.model.maps.len(),
            "t={now}: an outside endpoint twice"
        );
    }
}

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// `max_sessions` 4096: the table never fills (24 inside endpoints × 10 remotes at most). 48: it is
/// full much of the time, so new sessions are refused while the established ones go on. Each
/// filtering behaviour of RFC 4787 section 5 in turn, UDP and TCP.
#[test]
fn random_subscribers_remotes_and_clock_follow_the_snat_contract() {
    use Filtering::*;
    use ip_proto::{TCP, UDP};
    for (max, seed, filtering, proto) in [
        (4096, 1u64, EndpointIndependent, UDP),
        (4096, 0x5eed, EndpointIndependent, UDP),
        (4096, 0xdead_beef, AddressDependent, UDP),
        (4096, 99, AddressAndPortDependent, UDP),
        (48, 42_4242, EndpointIndependent, UDP),
        (48, 7, AddressDependent, UDP),
        (4096, 3, EndpointIndependent, TCP),
        (4096, 11, AddressDependent, TCP),
        (16, 13, EndpointIndependent, TCP),
    ] {
        let mut r = Run::new(seed, max, filtering, proto);
        for _ in 0..1500 {
            match r.rng.below(20) {
                0..=12 => r.burst(),
                13 => {
                    r.burst();
                    r.delete();
                }
                14..=17 => {
                    let s = r.rng.below(8) as u32;
                    r.advance(s);
                }
                // Now and then long enough for sessions and hold-downs to end in numbers.
                _ => {
                    let s = 10 + r.rng.below(30) as u32;
                    r.advance(s);
                }
            }
        }
        // Let everything go: sessions, then their hold-downs.
        r.advance(TCP_ESTABLISHED.max(UDP_TIMEOUT) + HOLD_DOWN + 3 * r.lag);
        // Every refusal was counted under its reason, and the small table did fill.
        let counted = r.sh.counters().drops(DropReason::TableFull);
        assert_eq!(counted, r.refused, "seed {seed}: table_full drops");
        assert!(
            max > 1000 || r.refused > 100,
            "seed {seed}: the small table never filled ({} refused)",
            r.refused
        );
        assert_eq!(r.sh.session_count(), 0, "seed {seed}");
        assert_eq!(r.sh.mapping_count(), 0, "seed {seed}");
        assert_eq!(r.sh.ports_in_use(), 0, "seed {seed}");
        assert_eq!(r.sh.index_residue(), 0, "seed {seed}: index entries left");
    }
}
