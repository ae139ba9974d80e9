//! One worker's connection-tracking shard and the burst pipeline over it.
//!
//! Two tables, each a preallocated slab with an open-addressing index: flows and subscribers
//! (paired address, limits, port blocks). The flow slab's 32-byte records are mappings (inside
//! endpoint ↔ outside endpoint) and sessions, with two index entries each:
//!
//! * A mapping record has its inside and its outside endpoint in the index, and room for one
//!   session: the first plain SNAT session of the mapping (outbound, or let in by the filter) is
//!   *embedded* in it. A 1:1 flow, the common case, is thus one record and two entries (57.6
//!   bytes at the index's load of ½), and its packets are found by their endpoint: one hash of three
//!   fields, one bucket line, one record line, then the remote end compared in the record.
//! * Every other session is a record of its own with its two 5-tuple entries (and a filtering
//!   entry in an address-dependent pool): further sessions of a mapping, hairpinned ones, and those
//!   destination NAT makes (which have no mapping, or, for a full-NAT client, are matched from
//!   outside). A lookup probes the 5-tuple only when the endpoint's mapping says it has separate
//!   sessions, or when no mapping explains the packet and its address is one that destination NAT
//!   sessions use ([`AddrFilter`]): one more dependent round for those sessions, none for 1:1 flows
//!   and new ones. For a mapping's further sessions the mapping's endpoint entries carry a hint
//!   ([`SEP_BIT`]), so the burst pipeline starts the 5-tuple probe from the entry, in the round in
//!   which the record is fetched, rather than after it.
//!
//! A packet that hits a session never touches the subscribers; the slow paths (new outbound flow,
//! inbound packet to a mapping, hairpin) do a bounded number of lookups and never allocate.
//! Capacity (`max_sessions`) is counted in records: a 1:1 flow takes one, a further session one
//! more, a held mapping one until its hold-down ends.

use std::sync::Arc;

use crate::counters::{Counter, Counters, DropReason};
use crate::deterministic::DetPlan;
use crate::dnat::{DnatCounters, DnatTable, Picker, RuleEntry, subscriber_owner};
use crate::events::{Event, EventKind, EventRing, Limit, MappingInfo, SessionInfo};
use crate::index::{
    ADF_BIT, Index, KIND_BITS, M_IN, M_OUT, MAP_BIT, OUT_BIT, SEP_BIT, XIN_BITS, kind,
    prefetch_with,
};
use crate::key::{FlowKey, Hash};
use crate::lb::{Affinity, flow_hash};
use crate::mapping::{self, Mapping};
use crate::ports::{AddrSpec, PortAllocator, port_owner};
use crate::rewrite::{
    End, Parsed, decrement_ttl, frag_pos, ip_header, parse, rewrite, rewrite_icmp_error,
    rewrite_inline,
};
use crate::rules::{Filtering, PortAllocation, Rules, paired_index};
use crate::session::{
    DNAT, FLAGS, HAIRPIN, HELD, INBOUND, MAP, MapPart, NIL, REPLIED, Record, Session, Slab,
    tcp_state,
};
use crate::subscriber::{SubTable, Subscriber, sub_hash};
use crate::{MemAdvice, NatError, PacketBatch, Prefetch, Timeouts};
use wire::{icmp_type, ip_proto, tcp_flags};

/// Largest burst [`Shard::process`] handles in one call (DPDK's usual burst of 32).
pub const MAX_BURST: usize = 32;

/// Slot numbers of every table stay below this (the index keeps key kinds in the top three bits).
const MAX_SLOTS: u32 = MAP_BIT;

/// How many pool addresses a new subscriber tries, starting at its paired choice, before giving up.
const PAIRING_TRIES: usize = 8;

/// Client-IP affinity entries per shard (a fixed table; the stalest entry of a full bucket is replaced).
const AFFINITY_ENTRIES: usize = 1 << 16;

/// Hash tweak for the address-dependent-filtering key of a session.
const ADF_TWEAK: u64 = 0x6164_6600_0000_0004;

/// Counters of [`AddrFilter`].
const ADDR_FILTER: usize = 1024;

/// Counts, per hash of an address, the sessions found by 5-tuple whose endpoint no mapping record
/// has: destination NAT sessions (their backend or 1:1 host inside, their rule's address outside)
/// and full-NAT client halves (matched from outside, towards the rule's address). A lookup that
/// found no embedded session probes the 5-tuple when its address counts here (or its mapping has
/// separate sessions); a collision costs one probe, never a wrong answer. It follows the sessions
/// rather than the rules in force, so that a session outlives a rule change as it must.
struct AddrFilter {
    counts: Box<[u32; ADDR_FILTER]>,
    total: u32,
}

impl AddrFilter {
    fn new() -> AddrFilter {
        AddrFilter {
            counts: Box::new([0; ADDR_FILTER]),
            total: 0,
        }
    }

    #[inline]
    fn slot(addr: u32) -> usize {
        (addr.wrapping_mul(0x9e37_79b1) >> 22) as usize % ADDR_FILTER
    }

    fn add(&mut self, addr: u32) {
        self.counts[AddrFilter::slot(addr)] += 1;
        self.total += 1;
    }

    fn remove(&mut self, addr: u32) {
        let c = &mut self.counts[AddrFilter::slot(addr)];
        debug_assert!(*c > 0, "address filter underflow");
        *c = c.saturating_sub(1);
        self.total = self.total.saturating_sub(1);
    }

    #[inline]
    fn contains(&self, addr: u32) -> bool {
        self.total != 0 && self.counts[AddrFilter::slot(addr)] != 0
    }
}

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
    /// Translated in place; route it by its (new) destination out of the other side.
    Forward,
    /// Drop, counted under the reason. For [`DropReason::TtlExceeded`] the packet is untouched, so the
    /// caller can quote it in an ICMP time-exceeded.
    Drop(DropReason),
    /// A subscriber reached another mapping of ours (hairpinning, RFC 4787 REQ-9, RFC 5382 REQ-8, RFC
    /// 5508 section 6): both ends are translated and the TTL decremented once; send it back out of the
    /// **inside** port, routed by its new destination.
    Hairpin,
    /// This worker cannot finish the packet: hand it, as it now is, to worker `worker`, which must run it
    /// through [`Shard::process`] in direction `dir` (as if received on that side's port).
    /// `dir: Out2In` is the second half of a hairpin whose target port another worker owns (the source
    /// is already translated and the TTL not yet decremented); `dir: In2Out` is a deterministic-NAT
    /// subscriber whose port range another worker owns (see [`Rules::subscriber_worker`]).
    Handoff { worker: u16, dir: Dir },
    /// A no-NAT exclusion (RFC 6888 REQ-6) or its return traffic: TTL decremented and the header checksum
    /// fixed, nothing else; route it by its destination out of the other side.
    ForwardUntranslated,
}

/// Per-subscriber limits (RFC 6888 REQ-4/5); 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions_per_subscriber: u32,
    /// Live mappings (outside ports and ICMP identifiers, all protocols together) per subscriber.
    pub max_ports_per_subscriber: u32,
}

impl Default for Limits {
    /// 4096 ports leave room for 15 busy subscribers on one outside address and are far above what a
    /// household uses (a browser opens tens to a few hundred connections); 16384 sessions let one
    /// endpoint-independent mapping talk to many peers (P2P, games) while still stopping a single
    /// infected host from filling the table.
    fn default() -> Self {
        Limits {
            max_sessions_per_subscriber: 16384,
            max_ports_per_subscriber: 4096,
        }
    }
}

/// Shard parameters.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Flow record capacity of this shard: sessions, and mappings with their first session
    /// embedded (see the module docs).
    pub max_sessions: u32,
    pub timeouts: Timeouts,
    /// This worker's index and the number of workers, for outside port-block ownership.
    pub worker: u16,
    pub workers: u16,
    /// Random seed (from the OS) for the flow hash and port selection. The default (0) is for tests;
    /// always set it.
    pub seed: u64,
    /// How many of the flow records may be mappings (live or held); 0 = `max_sessions`, which never
    /// binds: every mapping is a record.
    pub max_mappings: u32,
    /// Subscriber capacity; 0 = `max_sessions`.
    pub max_subscribers: u32,
    pub limits: Limits,
    /// Seconds a freed outside port stays unused (RFC 6888 REQ-8: 120). 0 disables the hold-down.
    pub hold_down_s: u32,
    /// Whether inbound UDP packets refresh their session's timer. RFC 4787 REQ-6 requires outbound
    /// refresh and makes inbound refresh optional; off by default, so that under endpoint-independent
    /// filtering an outside host cannot keep a subscriber's mapping (and port) alive by spraying it.
    /// Turn it on for receive-only UDP applications without keepalives.
    pub udp_inbound_refresh: bool,
    /// Capacity of the event ring; 0 records no events.
    pub event_ring: u32,
    /// Record session create/delete events too (one per flow: heavy). Mapping and port block events,
    /// which already tell who used an outside address and port when, are always recorded.
    pub log_sessions: bool,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            max_sessions: 1 << 16,
            timeouts: Timeouts::default(),
            worker: 0,
            workers: 1,
            seed: 0,
            max_mappings: 0,
            max_subscribers: 0,
            limits: Limits::default(),
            hold_down_s: 120,
            udp_inbound_refresh: false,
            event_ring: 4096,
            log_sessions: false,
        }
    }
}

/// Memory held by a shard's tables, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// The flow slab: sessions and mappings.
    pub sessions: usize,
    /// The flow slab's index.
    pub session_index: usize,
    pub subscribers: usize,
    pub ports: usize,
    pub events: usize,
}

/// Where [`Core::mapping_for`] found a flow's mapping: what undoing it means if the flow fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Made for this flow.
    Made,
    /// Revived from a hold-down that would have ended at tick `until`.
    Revived { until: u32 },
    /// Live, with sessions of its own.
    Live,
}

#[derive(Clone, Copy, Default)]
struct Meta {
    p: Parsed,
    /// The hash of the packet's endpoint (stage 1), or of its 5-tuple once stage 3 found that its
    /// session may be a separate record.
    hash: Hash,
    /// Candidate slot (with kind bits) from the probe stages, or NIL.
    cand: u32,
    ok: bool,
    /// Stage 3 confirmed `cand` (valid while [`Slab::epoch`] has not moved).
    hit: bool,
    /// Stage 3 asked for a 5-tuple probe (`hash`), which stage 4 makes.
    tuple: bool,
    /// Stage 2 found `cand` to be the endpoint entry of a mapping with separate sessions
    /// ([`SEP_BIT`]), so stage 2a probed the 5-tuple at once, into the packet's [`Second`].
    sep: bool,
}

/// Stage 2a's 5-tuple probe of a packet whose `sep` is set (not written otherwise). Apart from
/// [`Meta`] so that bursts of 1:1 flows, which never probe twice, keep their scratch small.
#[derive(Clone, Copy, Default)]
struct Second {
    hash: Hash,
    /// The candidate slot with its kind bits, or NIL.
    cand: u32,
}

pub struct Shard {
    slab: Slab,
    core: Core,
    /// [`Shard::process`]'s per-packet scratch, kept here so that a burst neither clears nor
    /// copies it (callgrind: about 6 instructions per packet on the stack). Stage 1 writes every
    /// entry of the burst before anything reads it.
    meta: Box<[Meta; MAX_BURST]>,
    second: Box<[Second; MAX_BURST]>,
}

/// Everything but the flow slab, so that expiry can walk the slab while updating the rest.
struct Core {
    cfg: ShardConfig,
    rules: Arc<Rules>,
    counters: Arc<Counters>,
    /// The flow slab's index.
    index: Index,
    /// Live sessions (embedded and separate), mapping records (live and held), held ones.
    n_sessions: u32,
    n_maps: u32,
    n_held: u32,
    max_mappings: u32,
    /// Addresses of sessions without a mapping, by direction (see [`AddrFilter`]): in2out
    /// lookups check their source, out2in ones their destination.
    tuple_in: AddrFilter,
    tuple_out: AddrFilter,
    subs: SubTable,
    ports: PortAllocator,
    /// This shard's per-address port gauges (shared with its [`Counters`] for the control plane).
    addr_gauges: crate::counters::AddressGauges,
    events: EventRing,
    /// Per pool: its deterministic layout.
    det: Vec<Option<DetPlan>>,
    /// Per pool: address-dependent filtering (its sessions carry a third index key).
    adf: Vec<bool>,
    last_exhausted: u32,
    /// Latest time seen, for events from the control plane's calls.
    now: u32,
    /// Destination NAT rules (swapped whole by [`Shard::set_dnat`]) and their per-worker state.
    dnat: Arc<DnatTable>,
    dnat_counters: Arc<DnatCounters>,
    /// Per rule of `dnat`: the round-robin cursor.
    rr: Vec<u32>,
    /// Client-IP affinity: (client, rule) → backend counter id.
    affinity: Affinity,
    /// xorshift state for weighted random scheduling.
    rng: u64,
    /// Scratch for [`Shard::process`]: the subscriber key hashes of the burst's missed outbound
    /// probes. Kept here rather than in `Meta` or on the stack so that a burst of established
    /// flows neither copies nor clears it.
    missed: Box<[Hash; MAX_BURST]>,
    /// Hint changes of mappings' outside endpoint entries (hash, old value, new value) waiting for
    /// the end of the burst, whose buckets are prefetched together then (see
    /// [`Core::mark_separate`]). Only [`Shard::process`] queues; outside a burst marks apply at
    /// once.
    marks: Box<[(Hash, u32, u32); MAX_BURST]>,
    n_marks: usize,
    in_burst: bool,
    /// Packets stage 3 found by stage 2a's 5-tuple candidate (tests: that the early probe works).
    #[cfg(test)]
    second_hits: u64,
}

#[inline]
fn in_key(s: &Session) -> FlowKey {
    FlowKey {
        src: s.in_addr,
        dst: s.rem_addr,
        sport: s.in_port,
        dport: s.rem_port,
        proto: s.proto,
    }
}

/// Kind bits of a session's inside key in the index.
#[inline]
fn in_kind(s: &Session) -> u32 {
    if s.is_fullnat_client() { XIN_BITS } else { 0 }
}

/// Whether candidate `cand` (an entry's slot with its kind bits, or NIL) is the endpoint entry of a
/// mapping with separate sessions ([`SEP_BIT`]).
#[inline(always)]
fn has_separate(cand: u32) -> bool {
    cand != NIL && separate_bit(cand) != 0
}

/// [`SEP_BIT`] if index entry `slot` is the endpoint entry of a mapping with separate sessions,
/// else 0: two operations, no branch ([`MAP_BIT`] sits just below [`SEP_BIT`]).
#[inline(always)]
fn separate_bit(slot: u32) -> u32 {
    slot & (slot << 1) & SEP_BIT
}

#[inline]
fn out_key(s: &Session) -> FlowKey {
    FlowKey {
        src: s.rem_addr,
        dst: s.out_addr,
        sport: s.rem_port,
        dport: s.out_port,
        proto: s.proto,
    }
}

/// The out2in key from a destination NAT session's outside endpoint to its remote endpoint, by
/// which either half of a flow finds the other: a full-NAT client half its backend half (from the
/// client's pool endpoint to the rule's address), and a backend half the session of its client
/// when that client is one of ours (from the rule's address to the client's pool endpoint, as
/// [`Core::hairpin`] looks it up for the backend's replies). For ICMP the identifier, which the
/// echo carries as both "ports", is the outside one.
#[inline]
fn other_half_key(s: &Session) -> FlowKey {
    let icmp = s.proto == ip_proto::ICMP;
    FlowKey {
        src: s.out_addr,
        dst: s.rem_addr,
        sport: if icmp { 0 } else { s.out_port },
        dport: if icmp { s.out_port } else { s.rem_port },
        proto: s.proto,
    }
}

#[inline]
fn adf_hash(seed: u64, rem: u32, out_addr: u32, out_port: u16, proto: u8) -> Hash {
    FlowKey {
        src: rem,
        dst: out_addr,
        sport: 0,
        dport: out_port,
        proto,
    }
    .hash(seed ^ ADF_TWEAK)
}

/// Flag combinations a real TCP sends (Linux conntrack's table, PSH/ECE/CWR ignored). Anything else —
/// SYN with FIN or RST, no flags at all, FIN without ACK (scans, "Christmas tree" packets) — is INVALID:
/// dropped without touching the session.
#[inline]
fn tcp_flags_valid(flags: u8) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN, URG};
    const MASK: u8 = FIN | SYN | RST | ACK | URG;
    const fn bits(combos: &[u8]) -> u64 {
        let mut m = 0u64;
        let mut i = 0;
        while i < combos.len() {
            m |= 1 << combos[i];
            i += 1;
        }
        m
    }
    // One bit per valid combination of the flags under MASK (all below 64).
    const VALID: u64 = bits(&[
        SYN,
        SYN | URG,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        FIN | ACK | URG,
        ACK,
        ACK | URG,
    ]);
    (VALID >> (flags & MASK)) & 1 != 0
}

/// Why a packet without a session may not open one, if it may not: only a first fragment (or a
/// whole datagram) carries the header the rules and the TCP state machine look at; only a SYN opens
/// a TCP session (RFC 5382); only a request starts an ICMP query.
fn opening_refusal(p: &Parsed) -> Option<DropReason> {
    if p.frag == frag_pos::LATER {
        return Some(DropReason::NoSession);
    }
    match p.key.proto {
        ip_proto::TCP if !is_bare_syn(p.tcp_flags) => Some(DropReason::TcpInvalid),
        ip_proto::ICMP if p.icmp_type != icmp_type::ECHO_REQUEST => {
            Some(DropReason::IcmpUnsupported)
        }
        _ => None,
    }
}

#[inline]
fn is_bare_syn(flags: u8) -> bool {
    flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST | tcp_flags::FIN) == tcp_flags::SYN
}

/// The hash a packet travelling `dir` with key `k` is first looked up by: its endpoint's (the
/// source inside, the destination outside), which is also the key of its mapping.
#[inline]
fn endpoint_hash(seed: u64, dir: Dir, k: &FlowKey) -> Hash {
    match dir {
        Dir::In2Out => mapping::in_hash(seed, k.src, k.sport, k.proto),
        Dir::Out2In => mapping::out_hash(seed, k.dst, k.dport, k.proto),
    }
}

fn mapping_info(m: &Mapping) -> MappingInfo {
    MappingInfo {
        proto: m.proto,
        in_addr: m.in_addr,
        in_port: m.in_port,
        out_addr: m.out_addr,
        out_port: m.out_port,
    }
}

fn session_info(s: &Session) -> SessionInfo {
    SessionInfo {
        mapping: MappingInfo {
            proto: s.proto,
            in_addr: s.in_addr,
            in_port: s.in_port,
            out_addr: s.out_addr,
            out_port: s.out_port,
        },
        rem_addr: s.rem_addr,
        rem_port: s.rem_port,
        inbound: s.is_inbound(),
    }
}

/// Advance the TCP state. A change that shortens the idle timeout (FIN, RST) needs nothing more: the
/// expiry sweep reads the deadline from the session.
#[inline]
fn track_tcp(s: &mut Session, dir: Dir, flags: u8) {
    let keep = s.state & FLAGS;
    let before = s.state & !FLAGS;
    let mut state = before;
    if flags & tcp_flags::RST != 0 {
        state |= tcp_state::RST;
    } else if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
        // A fresh SYN on a closed or closing tuple starts a new connection on the same mapping.
        if before & (tcp_state::RST | tcp_state::FIN_IN | tcp_state::FIN_OUT) != 0 {
            state = match dir {
                Dir::In2Out => tcp_state::SYN_SENT,
                Dir::Out2In => tcp_state::SYN_RCVD,
            };
        }
    } else {
        let phase = state & tcp_state::PHASE_MASK;
        // The side that did not send the first SYN answers: the connection is up.
        if flags & tcp_flags::ACK != 0
            && ((dir == Dir::Out2In && phase == tcp_state::SYN_SENT)
                || (dir == Dir::In2Out && phase == tcp_state::SYN_RCVD))
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
    s.state = state | keep;
}

/// The parts of a [`ShardConfig`] that a policy change may replace on a running shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyParams {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub hold_down_s: u32,
    pub udp_inbound_refresh: bool,
}

/// Whether two pools are the same pool apart from retirement and the addresses it gained.
fn same_definition(a: &crate::Pool, b: &crate::Pool) -> bool {
    a.name == b.name
        && a.port_lo == b.port_lo
        && a.port_hi == b.port_hi
        && a.filtering == b.filtering
        && a.allocation == b.allocation
        && !b.addrs.is_empty()
}

/// No pool lets a subscriber hold more port blocks than a subscriber record has room for.
fn check_block_capacity(rules: &Rules, cap: u16) -> Result<(), NatError> {
    for pool in &rules.pools {
        if let PortAllocation::Blocks { max_blocks, .. } = pool.allocation
            && max_blocks > cap
        {
            return Err(NatError::PolicyChange(format!(
                "pool {:?}: max_blocks {max_blocks} is more than the {cap} blocks per \
                 subscriber the subscriber table was sized for at start (the largest \
                 max_blocks of the pools then); restart cgnatd to take it",
                pool.name
            )));
        }
    }
    Ok(())
}

/// Every pool address with its pool's range, index and block size, and the most port blocks any
/// pool lets a subscriber own.
fn pool_layout(rules: &Rules) -> (Vec<AddrSpec>, u16) {
    let mut specs = Vec::new();
    let mut max_blocks = 0;
    for (pi, pool) in rules.pools.iter().enumerate() {
        let block_size = match pool.allocation {
            PortAllocation::Blocks {
                size,
                max_blocks: mb,
            } => {
                max_blocks = max_blocks.max(mb);
                Some(size)
            }
            _ => None,
        };
        specs.extend(pool.addrs.iter().map(|&addr| AddrSpec {
            addr,
            lo: pool.port_lo,
            hi: pool.port_hi,
            pool: pi as u8,
            block_size,
        }));
    }
    (specs, max_blocks)
}

/// Per pool: whether its sessions carry the third (address-dependent filtering) index key.
fn adf_of(rules: &Rules) -> Vec<bool> {
    rules
        .pools
        .iter()
        .map(|p| p.filtering == Filtering::AddressDependent)
        .collect()
}

/// What `rules` needs from a data plane of `workers` workers: a deterministic layout for every
/// deterministic pool, at least one port block per worker on every port-block pool, and (for a
/// running shard, `block_capacity`) no more blocks per subscriber than its subscriber table holds.
/// The control plane calls this before publishing a policy, so that no worker refuses it.
pub fn check_rules(
    rules: &Rules,
    workers: u16,
    block_capacity: Option<u16>,
) -> Result<(), NatError> {
    for pool in &rules.pools {
        DetPlan::for_pool(pool, workers)?;
        if let PortAllocation::Blocks { size, .. } = pool.allocation
            && (0..workers).any(|w| {
                crate::ports::lane_blocks(pool.port_lo, pool.port_hi, size, w, workers).1 == 0
            })
        {
            return Err(NatError::BadBlockSize {
                pool: pool.name.clone(),
                size,
            });
        }
    }
    if let Some(cap) = block_capacity {
        check_block_capacity(rules, cap)?;
    }
    Ok(())
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

    /// As [`Shard::new`], handing the flow slab and its index to
    /// `advise` before they are first written (for transparent huge pages: random lookups over hundreds
    /// of MiB are dominated by TLB misses on 4 KiB pages).
    pub fn with_memory_advice(
        cfg: ShardConfig,
        rules: Arc<Rules>,
        counters: Arc<Counters>,
        now: u32,
        advise: Option<MemAdvice>,
    ) -> Result<Shard, NatError> {
        if cfg.max_sessions == 0 || cfg.max_sessions >= MAX_SLOTS {
            return Err(NatError::BadCapacity(cfg.max_sessions as u64));
        }
        let max_mappings = if cfg.max_mappings == 0 {
            cfg.max_sessions
        } else {
            cfg.max_mappings
        };
        let max_subscribers = if cfg.max_subscribers == 0 {
            cfg.max_sessions
        } else {
            cfg.max_subscribers
        };
        for n in [max_mappings, max_subscribers] {
            if n >= MAX_SLOTS {
                return Err(NatError::BadCapacity(n as u64));
            }
        }
        if cfg.workers == 0 || cfg.worker >= cfg.workers {
            return Err(NatError::BadWorker {
                worker: cfg.worker,
                workers: cfg.workers,
            });
        }
        check_rules(&rules, cfg.workers, None)?;
        let det = rules
            .pools
            .iter()
            .map(|p| DetPlan::for_pool(p, cfg.workers))
            .collect::<Result<Vec<_>, _>>()?;
        let (specs, max_blocks) = pool_layout(&rules);
        let ports = PortAllocator::build(&specs, cfg.worker, cfg.workers, cfg.seed.rotate_left(17));
        let addr_gauges = counters.install_addresses(ports.usage_by_address());
        let adf = adf_of(&rules);
        // Two entries per record; a separate session of an address-dependent pool has a third.
        let keys_per_record = if adf.iter().any(|&a| a) { 3 } else { 2 };
        let shard = Shard {
            slab: Slab::new_advised(cfg.max_sessions, now, advise),
            meta: Box::new([Meta::default(); MAX_BURST]),
            second: Box::new([Second::default(); MAX_BURST]),
            core: Core {
                index: Index::with_capacity_advised(
                    cfg.max_sessions as usize * keys_per_record,
                    advise,
                ),
                n_sessions: 0,
                n_maps: 0,
                n_held: 0,
                max_mappings,
                tuple_in: AddrFilter::new(),
                tuple_out: AddrFilter::new(),
                subs: SubTable::new(max_subscribers, max_blocks),
                ports,
                addr_gauges,
                events: EventRing::new(cfg.event_ring),
                det,
                adf,
                last_exhausted: u32::MAX,
                now,
                dnat: Arc::new(DnatTable::empty()),
                dnat_counters: Arc::new(DnatCounters::default()),
                rr: Vec::new(),
                affinity: Affinity::new(AFFINITY_ENTRIES, cfg.seed.rotate_left(29)),
                rng: cfg.seed | 1,
                missed: Box::new([0; MAX_BURST]),
                marks: Box::new([(0, 0, 0); MAX_BURST]),
                n_marks: 0,
                in_burst: false,
                #[cfg(test)]
                second_hits: 0,
                rules,
                counters,
                cfg,
            },
        };
        shard.core.gauges();
        Ok(shard)
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.core.counters
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.core.rules
    }

    /// The destination NAT rules in force.
    pub fn dnat(&self) -> &Arc<DnatTable> {
        &self.core.dnat
    }

    /// This shard's per-backend counters (read them with [`DnatTable::rules`]' counter ids).
    pub fn dnat_counters(&self) -> &Arc<DnatCounters> {
        &self.core.dnat_counters
    }

    /// Put a new translation policy in force (between bursts): pools, SNAT rules, exclusions, the
    /// timeouts and limits, and the destination NAT rules built against those pools. New flows use
    /// it at once; existing sessions keep their mapping, pool and backend. `rules` must be a live
    /// successor of the rules in force ([`Rules::is_live_successor`]): pools keep their index, a
    /// removed pool stays (retired) while it has state here or on any other worker. Refused, with
    /// nothing changed, when `rules` does not fit this shard (a successor check, per-worker layout,
    /// port blocks beyond what the subscriber table was sized for at start).
    ///
    /// Timeouts apply to new sessions at once, and to existing ones when the expiry sweep next looks
    /// at them (within [`Shard::expiry_lag_seconds`]): the sweep reads each deadline from the
    /// session's `last_seen` and the timeouts in force. Allocates only for pools and addresses that are new.
    pub fn set_policy(
        &mut self,
        rules: Arc<Rules>,
        params: PolicyParams,
        dnat: Arc<DnatTable>,
    ) -> Result<(), NatError> {
        let c = &mut self.core;
        c.rules.is_live_successor(&rules)?;
        check_block_capacity(&rules, c.subs.max_blocks())?;
        // A slot whose pool changes (or empties) must have nothing here any more: its mappings and
        // subscriber records carry the slot, and would otherwise take the new pool's filtering
        // and addresses. The control plane only does this to drained pools; this is the local
        // proof, since only this shard knows its own state exactly.
        for (i, o) in c.rules.pools.iter().enumerate() {
            let same = rules.pools.get(i).is_some_and(|n| same_definition(o, n));
            if !same && let Some(&a) = o.addrs.iter().find(|&&a| c.ports.ports_in_use(a) > 0) {
                return Err(NatError::PolicyChange(format!(
                    "pool slot {i} ({:?}) changes while {} still has ports in use on this worker",
                    o.name,
                    std::net::Ipv4Addr::from(a)
                )));
            }
        }
        let (specs, _) = pool_layout(&rules);
        if let Some(a) = c.ports.conflicts(&specs) {
            return Err(NatError::PolicyChange(format!(
                "{} changes its port range or block size while ports of it are in use",
                std::net::Ipv4Addr::from(a)
            )));
        }
        let mut det = Vec::with_capacity(rules.pools.len());
        for (i, p) in rules.pools.iter().enumerate() {
            let same = c
                .rules
                .pools
                .get(i)
                .is_some_and(|o| same_definition(o, p) && o.addrs == p.addrs);
            match c.det.get_mut(i) {
                Some(d) if same => det.push(d.take()),
                _ => det.push(DetPlan::for_pool(p, c.cfg.workers)?),
            }
        }
        c.ports.reconcile(&specs, c.cfg.worker);
        c.addr_gauges = c.counters.install_addresses(c.ports.usage_by_address());
        if c.rules.snat != rules.snat {
            c.counters.reset_rules();
        }
        c.det = det;
        c.adf = adf_of(&rules);
        c.rules = rules;
        c.cfg.timeouts = params.timeouts;
        c.cfg.limits = params.limits;
        c.cfg.hold_down_s = params.hold_down_s;
        c.cfg.udp_inbound_refresh = params.udp_inbound_refresh;
        self.set_dnat(dnat);
        Ok(())
    }

    /// The policy parameters in force (see [`Shard::set_policy`]).
    pub fn policy_params(&self) -> PolicyParams {
        let c = &self.core.cfg;
        PolicyParams {
            timeouts: c.timeouts,
            limits: c.limits,
            hold_down_s: c.hold_down_s,
            udp_inbound_refresh: c.udp_inbound_refresh,
        }
    }

    /// Put a new set of destination NAT rules in force (between bursts). New flows use it; existing
    /// sessions keep the backend they have. Affinity entries follow their rule by its match.
    pub fn set_dnat(&mut self, table: Arc<DnatTable>) {
        let c = &mut self.core;
        let old = Arc::clone(&c.dnat);
        c.affinity.remap(|rule, backend| {
            let r = old.rules().get(rule as usize)?;
            Some((table.index_of(&r.rule)?, backend))
        });
        c.rr = vec![0; table.rules().len()];
        c.dnat = table;
    }

    pub fn config(&self) -> &ShardConfig {
        &self.core.cfg
    }

    pub fn session_count(&self) -> u32 {
        self.core.n_sessions
    }

    /// Records of the flow slab in use: separate sessions and mappings (live and held), out of
    /// `max_sessions`.
    pub fn record_count(&self) -> u32 {
        self.slab.live()
    }

    /// Mappings alive or in hold-down.
    pub fn mapping_count(&self) -> u32 {
        self.core.n_maps
    }

    /// Mappings in hold-down (their ports are in use but not reusable yet).
    pub fn held_count(&self) -> u32 {
        self.core.n_held
    }

    pub fn subscriber_count(&self) -> u32 {
        self.core.subs.len()
    }

    /// Outside ports allocated (mapped or held), all addresses and protocols.
    pub fn ports_in_use(&self) -> u64 {
        self.core.ports.total_in_use()
    }

    /// (pool address, ports in use on it) for every pool address (control plane).
    pub fn ports_in_use_by_address(&self) -> Vec<(u32, u64)> {
        self.core.ports.in_use_by_address()
    }

    /// Port blocks owned by subscribers.
    pub fn blocks_in_use(&self) -> u64 {
        self.core.ports.blocks_in_use()
    }

    /// Memory held by the flow slab, its index with the subscriber table and the event ring, and
    /// the port maps.
    pub fn memory_bytes(&self) -> (usize, usize, usize) {
        let m = self.memory();
        (
            m.sessions,
            m.session_index + m.subscribers + m.events,
            m.ports,
        )
    }

    pub fn memory(&self) -> Memory {
        let c = &self.core;
        Memory {
            sessions: self.slab.memory_bytes(),
            session_index: c.index.memory_bytes(),
            subscribers: c.subs.memory_bytes(),
            ports: c.ports.memory_bytes(),
            events: c.events.memory_bytes(),
        }
    }

    /// Live sessions (control plane: O(capacity)).
    /// Record session create/delete events from now on, or stop (the control plane turns them on
    /// while someone watches the session table).
    pub fn set_log_sessions(&mut self, on: bool) {
        self.core.cfg.log_sessions = on;
    }

    /// Whether `addr` is one of this shard's outside (pool) addresses.
    #[inline]
    pub fn is_outside_address(&self, addr: u32) -> bool {
        self.core.ports.addr_index(addr).is_some() || self.core.dnat.is_vip(addr)
    }

    /// Whether `addr` is one of the pool addresses (not a destination NAT address).
    #[inline]
    pub fn is_pool_address(&self, addr: u32) -> bool {
        self.core.ports.addr_index(addr).is_some()
    }

    /// The shard's clock: the latest `now` it was given (seconds).
    pub fn clock(&self) -> u32 {
        self.core.now
    }

    pub(crate) fn slab_capacity(&self) -> u32 {
        self.slab.capacity()
    }

    pub(crate) fn slot(&self, slot: u32) -> &Session {
        self.slab.get(slot)
    }

    /// Delete the session in `slot` (control plane: `conntrack -D`), ending its mapping if it was the
    /// last one, through the hold-down as for an expiry. Returns how many sessions that deleted: 2
    /// for either half of a full-NAT flow whose other half was still there.
    pub(crate) fn delete_slot(&mut self, slot: u32) -> u32 {
        let Shard { slab, core, .. } = self;
        let now = core.now;
        let n = core.delete_session(slab, slot, now, false);
        core.gauges();
        n
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.slab.iter().map(|(_, s)| s)
    }

    /// Live and held mappings (control plane: O(capacity)).
    pub fn mappings(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.slab
            .records()
            .filter(|(_, r)| r.is_map())
            .map(|(_, r)| Mapping::of_record(r))
    }

    /// Subscriber records (control plane: O(capacity)).
    pub fn subscribers(&self) -> impl Iterator<Item = &Subscriber> {
        self.core.subs.iter().map(|(_, s)| s)
    }

    /// The port blocks a subscriber (inside address, pool index) owns.
    pub fn subscriber_blocks(&self, addr: u32, pool: usize) -> Vec<crate::PortSet> {
        let c = &self.core;
        let Some(slot) = c.subs.find(sub_hash(c.cfg.seed, addr), addr, pool as u8) else {
            return Vec::new();
        };
        let Some(a) = c.ports.addr_index(c.subs.get(slot).out_addr) else {
            return Vec::new();
        };
        c.subs
            .blocks_of(slot)
            .iter()
            .map(|&j| c.ports.block_set(a, j))
            .collect()
    }

    /// The mapping (live or held) of an outside endpoint.
    pub fn find_mapping(&self, out_addr: u32, out_port: u16, proto: u8) -> Option<Mapping> {
        self.core
            .find_map_out(&self.slab, out_addr, out_port, proto)
            .map(|ms| Mapping::of_record(self.slab.rec(ms)))
    }

    /// Entries left in the flow and subscriber indexes, and in the address filters.
    #[cfg(test)]
    pub(crate) fn index_residue(&self) -> usize {
        self.core.index.len()
            + self.core.subs.residue()
            + (self.core.tuple_in.total + self.core.tuple_out.total) as usize
    }

    /// Index inserts queued and not yet stored (see [`Index::insert_later`]).
    #[cfg(test)]
    pub(crate) fn queued_index_keys(&self) -> usize {
        self.core.index.queued()
    }

    /// Mapping records whose endpoint entries are missing, or whose [`SEP_BIT`] hint disagrees
    /// with whether the mapping has separate sessions.
    #[cfg(test)]
    pub(crate) fn hint_mismatches(&self) -> usize {
        let c = &self.core;
        let seed = c.cfg.seed;
        self.slab
            .records()
            .filter(|(_, r)| r.is_map())
            .filter(|&(ms, r)| {
                let hint = if r.separate_sessions() > 0 {
                    SEP_BIT
                } else {
                    0
                };
                // The entry with the right hint, and none with the other.
                let right = |h: Hash, slot: u32| {
                    c.index.find(h, |x| x == slot | hint).is_some()
                        && c.index.find(h, |x| x == slot | (hint ^ SEP_BIT)).is_none()
                };
                !(right(
                    mapping::in_hash(seed, r.s.in_addr, r.s.in_port, r.m.proto),
                    ms | M_IN,
                ) && right(
                    mapping::out_hash(seed, r.s.out_addr, r.s.out_port, r.m.proto),
                    ms | M_OUT,
                ))
            })
            .count()
    }

    /// Events waiting to be drained.
    pub fn pending_events(&self) -> usize {
        self.core.events.len()
    }

    /// Move up to `max` of the oldest events into `out` (control plane). Returns how many were moved.
    pub fn drain_events(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        self.core.events.drain(out, max)
    }

    /// Full lookup of one key (slow path and control plane): the slot of its session.
    pub fn lookup(&self, dir: Dir, k: &FlowKey) -> Option<u32> {
        self.core.lookup(&self.slab, dir, k)
    }

    /// Look a session up by the tuple of a packet travelling in `dir`.
    pub fn find(&self, dir: Dir, k: &FlowKey) -> Option<&Session> {
        self.lookup(dir, k).map(|s| self.slab.get(s))
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
        let meta = &mut *self.meta;
        let second = &mut *self.second;
        let core = &mut self.core;
        let slab = &mut self.slab;
        let seed = core.cfg.seed;
        core.now = now;
        core.ports.prefetch = prefetch_with::<P, u64>;
        core.in_burst = true;
        // Packet counters are updated once per burst, not per packet.
        let (mut forwarded, mut hairpinned, mut untranslated) = (0u64, 0u64, 0u64);
        let (mut icmp_errors, mut fragments) = (0u64, 0u64);

        // Stage 1: parse and hash every packet's endpoint; prefetch its home bucket.
        for i in 0..n {
            match parse(batch.packet(i), dir, batch.later_fragment(i)) {
                Ok(p) => {
                    let hash = endpoint_hash(seed, dir, &p.key);
                    P::prefetch(core.index.home_ref(hash));
                    meta[i] = Meta {
                        p,
                        hash,
                        cand: NIL,
                        ok: true,
                        hit: false,
                        tuple: false,
                        sep: false,
                    };
                }
                Err(r) => {
                    // Protocols and packets the translator cannot handle may still be exempt from it.
                    let v = match r {
                        DropReason::UnsupportedProtocol
                        | DropReason::FragmentMalformed
                        | DropReason::IcmpUnsupported
                        | DropReason::IcmpErrorUnmatched
                            if !core.rules.exclusions.is_empty() =>
                        {
                            core.untranslated_raw(dir, batch.packet_mut(i))
                        }
                        _ => None,
                    };
                    verdicts[i] = v.unwrap_or(Verdict::Drop(r));
                    match verdicts[i] {
                        Verdict::Drop(r) => core.counters.count_drop(r),
                        _ => untranslated += 1,
                    }
                    meta[i].ok = false;
                }
            }
        }
        // The inserts the last burst queued, whose buckets it prefetched at its end: stored before
        // any lookup of this burst, so stage 2 finds an empty queue (a home-bucket miss then
        // ends at once) and positions stay table positions.
        core.index.flush::<crate::NoPrefetch>();
        // Stage 2: probe the (now cached) buckets for a hash match and prefetch the record it
        // names: for a 1:1 flow, its mapping with the session embedded. A miss is most likely a
        // new flow, whose slow path reads its subscriber: prefetched just below. `kinds` gathers
        // the hints in a register (two operations per packet, no store or branch); storing a
        // per-packet flag here, or a pass of its own over the candidates, measured the same.
        let mut kinds = 0;
        for m in meta[..n].iter_mut().filter(|m| m.ok) {
            if let Some((_, slot)) = core.index.find_first(m.hash) {
                m.cand = slot;
                P::prefetch(slab.get(slot & !KIND_BITS));
                kinds |= separate_bit(slot);
            }
        }
        // Stage 2a: the endpoint's mapping has sessions in records of their own, as the entry
        // says: probe the 5-tuple now, not after the record has come and told so.
        if kinds != 0 {
            core.probe_separate::<P>(slab, &mut meta[..n], &mut second[..n]);
        }
        // Misses are counted in a pass of their own: a counter in the loop above cost bursts of
        // established flows about a tenth of their rate (measured; the loop's code generation
        // changes).
        if dir == Dir::In2Out && meta[..n].iter().any(|m| m.ok && m.cand == NIL) {
            core.prefetch_subscribers::<P>(&meta[..n]);
        }
        // Stage 3: confirm each candidate and translate. A packet its candidate does not explain
        // may be a session of its endpoint's mapping in a record of its own: the first such packet
        // has the rest of the burst planned together (`plan_rest`: their endpoint probes, and the
        // 5-tuple buckets of those that need one prefetched and probed), so that their second
        // lookup rounds overlap too. A burst of 1:1 flows never plans: confirming its records in
        // a pass of their own, before any packet's work, exposed their fetch latency (established
        // rate at 1M -7 %). What the plan confirmed holds while no session or mapping came or went
        // since; otherwise the candidate is checked again, and a miss looked up in full: it may
        // be a false hash match, or a flow an earlier packet of this burst created.
        let mut epoch = slab.epoch();
        let mut planned = false;
        for i in 0..n {
            if !meta[i].ok {
                continue;
            }
            let mut found = Core::confirmed(&meta[i], slab, dir, epoch).then_some(meta[i].cand);
            if found.is_none() && Core::confirms_second(slab, dir, &meta[i], &second[i]) {
                found = Some(second[i].cand);
                #[cfg(test)]
                {
                    core.second_hits += 1;
                }
            }
            if found.is_none() {
                if !planned {
                    planned = true;
                    core.plan_rest::<P>(slab, dir, &mut meta[i..n], &second[i..n]);
                    epoch = slab.epoch();
                    found = Core::confirmed(&meta[i], slab, dir, epoch).then_some(meta[i].cand);
                }
                if found.is_none() {
                    found = core.lookup_kind(slab, dir, &meta[i].p.key);
                }
            }
            let m = &meta[i];
            let slot = found.map(|s| s & !KIND_BITS);
            let pkt = batch.packet_mut(i);
            verdicts[i] = match (slot, dir) {
                _ if m.p.icmp_error => match slot {
                    Some(s) => core.icmp_error(slab, s, dir, &m.p, pkt),
                    None => core.icmp_error_miss(dir, pkt),
                },
                (Some(s), Dir::Out2In) if found.is_some_and(|f| f & KIND_BITS == XIN_BITS) => {
                    core.fullnat_client(slab, s, &m.p, pkt, now)
                }
                (Some(s), _) => core.forward(slab, s, dir, &m.p, pkt, now),
                (None, Dir::In2Out) => core.in2out_miss(slab, &m.p, pkt, now),
                (None, Dir::Out2In) => core.out2in_miss(slab, &m.p, pkt, now),
            };
            match verdicts[i] {
                Verdict::Drop(r) => core.counters.count_drop(r),
                Verdict::Forward => forwarded += 1,
                Verdict::Hairpin => hairpinned += 1,
                Verdict::ForwardUntranslated => untranslated += 1,
                Verdict::Handoff { .. } => {}
            }
            // Rare packets: test their own (already loaded) fields before the verdict.
            if (m.p.icmp_error || m.p.frag != frag_pos::NONE)
                && matches!(verdicts[i], Verdict::Forward | Verdict::Hairpin)
            {
                if m.p.icmp_error {
                    icmp_errors += 1;
                } else {
                    fragments += 1;
                }
            }
        }
        // The new flows' outside keys, queued in stage 3: their buckets are prefetched together
        // now and the keys stored after the next burst's stage 1 (see the index module), so that
        // the misses overlap what happens between the bursts instead of stalling this one.
        core.index.prefetch_queued::<P>();
        core.apply_marks::<P>();
        core.in_burst = false;
        core.ports.prefetch = |_| {};
        let c = &core.counters;
        c.add(
            match dir {
                Dir::In2Out => Counter::In2outPackets,
                Dir::Out2In => Counter::Out2inPackets,
            },
            forwarded,
        );
        if hairpinned > 0 {
            c.add(Counter::HairpinPackets, hairpinned);
        }
        if untranslated > 0 {
            c.add(Counter::UntranslatedPackets, untranslated);
        }
        if icmp_errors > 0 {
            c.add(Counter::IcmpErrorsTranslated, icmp_errors);
        }
        if fragments > 0 {
            c.add(Counter::FragmentsTranslated, fragments);
        }
    }

    /// Expire idle sessions and end hold-downs: go on with the sweep of the flow slab, looking at
    /// no more than `budget` slots, and no more than the ticks up to `now` grant (see
    /// [`crate::sweep`]: a full pass per second up to 4 Mi slots). Call it often;
    /// [`Shard::expiry_due`] says whether a call would do anything. Returns how many sessions were
    /// deleted. Without prefetching: the data plane calls [`Shard::expire_with`].
    pub fn expire(&mut self, now: u32, budget: u32) -> u32 {
        self.expire_with::<crate::NoPrefetch>(now, budget)
    }

    /// [`Shard::expire`], prefetching with `P`. What the sweep finds due is ended in batches of up
    /// to [`crate::EXPIRY_BATCH`]: first the index buckets (and subscriber buckets) every ending of
    /// the batch will touch are prefetched together, then the endings run. Each ending touches
    /// several random lines (its index entries, its mapping's, its subscriber); one after another
    /// they were a DRAM latency each when a large table goes idle at once.
    pub fn expire_with<P: Prefetch>(&mut self, now: u32, budget: u32) -> u32 {
        let Shard { slab, core, .. } = self;
        core.now = now;
        let timeouts = core.cfg.timeouts;
        let mut batch = [0u32; crate::EXPIRY_BATCH];
        let mut k = 0;
        let (mut deleted, mut released) = (0, 0);
        for _ in 0..slab.sweep_grant(now, budget) {
            if let Some(slot) = slab.sweep_step(now, &timeouts) {
                batch[k] = slot;
                k += 1;
                if k == crate::EXPIRY_BATCH {
                    let (d, r) = core.end_due::<P>(slab, &batch, now);
                    deleted += d;
                    released += r;
                    k = 0;
                }
            }
        }
        let (d, r) = core.end_due::<P>(slab, &batch[..k], now);
        deleted += d;
        released += r;
        if deleted > 0 || released > 0 {
            core.gauges();
        }
        deleted
    }

    /// Whether [`Shard::expire`] at `now` would look at anything (its sweep has quota left).
    #[inline]
    pub fn expiry_due(&self, now: u32) -> bool {
        self.slab.sweep_state().due(now)
    }

    /// The longest a sweep pass takes, in seconds: a session ends at most this long after its idle
    /// timeout, and a hold-down at most this long after it is over.
    pub fn expiry_lag_seconds(&self) -> u32 {
        self.slab.sweep_state().pass_seconds()
    }

    /// Slab slots the expiry sweep looks at per second.
    pub fn expiry_pace(&self) -> u64 {
        u64::from(self.slab.sweep_state().per_tick())
    }

    /// Delete every session, mapping (hold-down included: an operator's flush starts over), subscriber
    /// record and port block (control plane). Returns how many sessions were deleted.
    pub fn flush(&mut self) -> u32 {
        let Shard { slab, core, .. } = self;
        let now = core.now;
        let slots: Vec<u32> = slab.iter().map(|(i, _)| i).collect();
        for &slot in &slots {
            // The other half of a full-NAT flow goes with the first.
            if slab.get(slot).is_live() {
                core.delete_session(slab, slot, now, true);
            }
        }
        let held: Vec<u32> = slab
            .records()
            .filter(|(_, r)| r.is_held())
            .map(|(i, _)| i)
            .collect();
        for ms in held {
            core.release_mapping(slab, ms, now);
        }
        core.gauges();
        slots.len() as u32
    }
}

impl Core {
    /// End what the sweep found due in `slots`: sessions past their deadline, mappings whose
    /// hold-down is over. First the index buckets each ending touches are prefetched: a separate
    /// session's two keys (three in an address-dependent pool), its mapping's inside key and its
    /// subscriber; a mapping's two endpoint keys when it may be released, and its subscriber. A slot
    /// an earlier ending of the batch already took along (the other half of a full-NAT flow) is
    /// skipped. Returns the sessions deleted and the mappings released.
    fn end_due<P: Prefetch>(&mut self, slab: &mut Slab, slots: &[u32], now: u32) -> (u32, u32) {
        let seed = self.cfg.seed;
        let any_adf = self.adf.iter().any(|&a| a);
        for &slot in slots {
            let r = slab.rec(slot);
            let s = &r.s;
            if r.is_map() {
                P::prefetch(self.subs.home_ref(sub_hash(seed, s.in_addr)));
                // A hold-down that is over: the release frees the mapping's port, whose bitmap
                // word nothing else brings in (at 16M sessions, without this prefetch the releases
                // spent nearly all their time waiting for that word; perf, cpu-clock).
                if r.is_held()
                    && r.m.count <= now
                    && let Some(a) = self.ports.addr_index(s.out_addr)
                    && let Some(w) = self.ports.word_ref(a, r.m.proto, s.out_port)
                {
                    P::prefetch(w);
                }
                // Held, or about to lose its last session: the endpoint entries may go.
                if r.is_held() || r.m.count == 1 {
                    P::prefetch(
                        self.index
                            .home_ref(mapping::in_hash(seed, s.in_addr, s.in_port, r.m.proto)),
                    );
                    P::prefetch(
                        self.index
                            .home_ref(mapping::out_hash(seed, s.out_addr, s.out_port, r.m.proto)),
                    );
                }
                continue;
            }
            P::prefetch(self.index.home_ref(in_key(s).hash(seed)));
            P::prefetch(self.index.home_ref(out_key(s).hash(seed)));
            if !s.is_dnat() {
                P::prefetch(
                    self.index
                        .home_ref(mapping::in_hash(seed, s.in_addr, s.in_port, s.proto)),
                );
                P::prefetch(self.subs.home_ref(sub_hash(seed, s.in_addr)));
                // An address-dependent pool's filtering key, the third entry the deletion removes.
                if any_adf
                    && let Some(a) = self.ports.addr_index(s.out_addr)
                    && self
                        .adf
                        .get(self.ports.pool_of(a))
                        .copied()
                        .unwrap_or(false)
                {
                    let h = adf_hash(seed, s.rem_addr, s.out_addr, s.out_port, s.proto);
                    P::prefetch(self.index.home_ref(h));
                }
            }
        }
        let t = self.cfg.timeouts;
        let (mut deleted, mut released) = (0, 0);
        for &slot in slots {
            let r = slab.rec(slot);
            if r.is_held() {
                if r.m.count <= now {
                    self.release_mapping(slab, slot, now);
                    released += 1;
                }
            } else if r.s.is_live() && r.s.deadline(&t) <= now {
                deleted += self.delete_session(slab, slot, now, false);
            }
        }
        (deleted, released)
    }

    /// After stage 2 of [`Shard::process`], for an outbound burst with missed probes: a miss is
    /// most likely a new flow, whose slow path looks up its subscriber. Prefetch the subscriber
    /// buckets, then the records they name. Without this a new flow waits for DRAM for it, one
    /// flow after another; with it the burst's lookups are fetched together. Kept out of line so
    /// that bursts of established flows carry none of it.
    #[inline(never)]
    fn prefetch_subscribers<P: Prefetch>(&mut self, meta: &[Meta]) {
        let seed = self.cfg.seed;
        let mut j = 0;
        for m in meta.iter().filter(|m| m.ok && m.cand == NIL) {
            let sh = sub_hash(seed, m.p.key.src);
            P::prefetch(self.subs.home_ref(sh));
            self.missed[j] = sh;
            j += 1;
        }
        for &sh in &self.missed[..j] {
            if let Some(r) = self.subs.candidate(sh) {
                P::prefetch(r);
            }
        }
    }

    /// Hot path: whether index entry `slot` (with its kind bits) names the session of a packet
    /// with key `k` travelling `dir`: a mapping's embedded session by its endpoint entry, or a
    /// separate session by one of its 5-tuple entries. Both compare the same fields (a mapping
    /// record's session part is its embedded session, `proto` 0 when there is none).
    #[inline(always)]
    fn matches(slab: &Slab, slot: u32, dir: Dir, k: &FlowKey) -> bool {
        let s = slab.get(slot & !KIND_BITS);
        // The kinds (index module): a session's inside key 0, its outside key OUT, its filtering
        // key ADF, a full-NAT client's inside key XIN = OUT|ADF, a mapping's endpoints MAP and
        // MAP|OUT, each of those two with or without the hint SEP = ADF.
        let kind = slot & KIND_BITS;
        match dir {
            // 0, M_IN, M_IN|SEP.
            Dir::In2Out => {
                kind & OUT_BIT == 0
                    && kind != ADF_BIT
                    && s.in_addr == k.src
                    && s.rem_addr == k.dst
                    && s.in_port == k.sport
                    && s.rem_port == k.dport
                    && s.proto == k.proto
            }
            // OUT, M_OUT, M_OUT|SEP.
            Dir::Out2In if kind & OUT_BIT != 0 && kind != XIN_BITS => {
                s.rem_addr == k.src
                    && s.out_addr == k.dst
                    && s.rem_port == k.sport
                    && s.out_port == k.dport
                    && s.proto == k.proto
            }
            // A full-NAT client's own key: the client is outside.
            Dir::Out2In => {
                kind == XIN_BITS
                    && s.in_addr == k.src
                    && s.rem_addr == k.dst
                    && s.in_port == k.sport
                    && s.rem_port == k.dport
                    && s.proto == k.proto
            }
        }
    }

    /// Stage 3 of [`Shard::process`]: whether packet `m`'s candidate is its session, as the plan
    /// confirmed it (while `epoch` holds) or by comparing the record now. Inlined: as a closure the
    /// compiler kept it out of line, a call per packet.
    #[inline(always)]
    fn confirmed(m: &Meta, slab: &Slab, dir: Dir, epoch: u32) -> bool {
        (m.hit && slab.epoch() == epoch)
            || (m.cand != NIL && Core::matches(slab, m.cand, dir, &m.p.key))
    }

    /// Stage 2a of [`Shard::process`] for the packets whose endpoint entry carries [`SEP_BIT`]:
    /// hash their 5-tuples and prefetch the buckets, then probe them and prefetch the records they
    /// name, while the endpoint's record (the embedded session, in case it is the one) comes too.
    /// Out of line: bursts of 1:1 flows never come here.
    #[inline(never)]
    fn probe_separate<P: Prefetch>(&self, slab: &Slab, meta: &mut [Meta], second: &mut [Second]) {
        let seed = self.cfg.seed;
        for (m, t) in meta.iter_mut().zip(second.iter_mut()) {
            m.sep = m.ok && has_separate(m.cand);
            if m.sep {
                t.hash = m.p.key.hash(seed);
                P::prefetch(self.index.home_ref(t.hash));
            }
        }
        for (_, t) in meta.iter().zip(second.iter_mut()).filter(|(m, _)| m.sep) {
            t.cand = NIL;
            if let Some((_, slot)) = self.index.find_first(t.hash) {
                t.cand = slot;
                P::prefetch(slab.get(slot & !KIND_BITS));
            }
        }
    }

    /// Whether stage 2a's 5-tuple candidate of `m` is its session.
    #[inline(always)]
    fn confirms_second(slab: &Slab, dir: Dir, m: &Meta, t: &Second) -> bool {
        m.sep && t.cand != NIL && Core::matches(slab, t.cand, dir, &m.p.key)
    }

    /// The endpoint probe of a lookup (its bucket is `hash`'s): the entry of the embedded session
    /// of `k`, if one of the endpoint's mappings has it; else whether the 5-tuple must be probed
    /// too (a mapping of the endpoint has separate sessions, or its address is one that sessions
    /// without a mapping use).
    #[inline]
    fn probe_endpoint(&self, slab: &Slab, dir: Dir, k: &FlowKey, hash: Hash) -> Result<u32, bool> {
        let (want, addr, port) = match dir {
            Dir::In2Out => (M_IN, k.src, k.sport),
            Dir::Out2In => (M_OUT, k.dst, k.dport),
        };
        let mut further = false;
        let hit = self.index.find(hash, |slot| {
            if kind(slot) != want {
                return false;
            }
            let r = slab.rec(slot & !KIND_BITS);
            let (a, p) = match dir {
                Dir::In2Out => (r.s.in_addr, r.s.in_port),
                Dir::Out2In => (r.s.out_addr, r.s.out_port),
            };
            if a != addr || p != port || r.m.proto != k.proto {
                return false;
            }
            if Core::matches(slab, slot, dir, k) {
                return true;
            }
            further |= r.separate_sessions() > 0;
            false
        });
        match hit {
            Some((_, slot)) => Ok(slot),
            None => {
                let filter = match dir {
                    Dir::In2Out => &self.tuple_in,
                    Dir::Out2In => &self.tuple_out,
                };
                Err(further || filter.contains(addr))
            }
        }
    }

    /// The lookup plan of [`Shard::process`] for the rest of a burst, from its first packet that
    /// its candidate did not explain: confirm every candidate, and for the others make the
    /// endpoint probe in full ([`Core::plan_lookup`]); then probe the 5-tuple buckets that asks
    /// for (prefetched meanwhile) and prefetch the records they name.
    #[inline(never)]
    fn plan_rest<P: Prefetch>(&self, slab: &Slab, dir: Dir, meta: &mut [Meta], second: &[Second]) {
        let mut tuples = false;
        for (m, t) in meta.iter_mut().zip(second).filter(|(m, _)| m.ok) {
            if m.cand != NIL && Core::matches(slab, m.cand, dir, &m.p.key) {
                m.hit = true;
            } else if Core::confirms_second(slab, dir, m, t) {
                m.cand = t.cand;
                m.hit = true;
            } else {
                tuples |= self.plan_lookup::<P>(slab, dir, m);
            }
        }
        if tuples {
            for m in meta.iter_mut().filter(|m| m.ok && m.tuple) {
                if let Some((_, slot)) = self.index.find_first(m.hash) {
                    m.cand = slot;
                    P::prefetch(slab.get(slot & !KIND_BITS));
                }
            }
        }
    }

    /// [`Core::plan_rest`] for a packet its first candidate did not explain: the
    /// endpoint probe in full (the bucket is cached), and if the session may be a separate record,
    /// its 5-tuple hash with the bucket prefetched. Returns whether a 5-tuple probe is asked for.
    #[inline(never)]
    fn plan_lookup<P: Prefetch>(&self, slab: &Slab, dir: Dir, m: &mut Meta) -> bool {
        m.cand = NIL;
        match self.probe_endpoint(slab, dir, &m.p.key, m.hash) {
            Ok(slot) => {
                m.cand = slot;
                m.hit = true;
                false
            }
            Err(false) => false,
            // Stage 2a probed the 5-tuple already and its candidate did not confirm: most likely
            // a new session of the mapping; stage 3's full lookup decides.
            Err(true) if m.sep => false,
            Err(true) => {
                m.hash = m.p.key.hash(self.cfg.seed);
                P::prefetch(self.index.home_ref(m.hash));
                m.tuple = true;
                true
            }
        }
    }

    /// The slot of the session of a packet with key `k` travelling `dir`.
    fn lookup(&self, slab: &Slab, dir: Dir, k: &FlowKey) -> Option<u32> {
        self.lookup_kind(slab, dir, k).map(|slot| slot & !KIND_BITS)
    }

    /// As [`Core::lookup`], with the kind bits of the entry that matched.
    fn lookup_kind(&self, slab: &Slab, dir: Dir, k: &FlowKey) -> Option<u32> {
        let seed = self.cfg.seed;
        match self.probe_endpoint(slab, dir, k, endpoint_hash(seed, dir, k)) {
            Ok(slot) => Some(slot),
            Err(false) => None,
            Err(true) => self
                .index
                .find(k.hash(seed), |slot| {
                    slot & MAP_BIT == 0 && Core::matches(slab, slot, dir, k)
                })
                .map(|(_, slot)| slot),
        }
    }

    /// The mapping record (live or held) of inside endpoint (`addr`, `port`) in pool `pool`.
    fn find_map_in(&self, slab: &Slab, addr: u32, port: u16, proto: u8, pool: u8) -> Option<u32> {
        let h = mapping::in_hash(self.cfg.seed, addr, port, proto);
        self.index
            .find(h, |slot| {
                let r = slab.rec(slot & !KIND_BITS);
                kind(slot) == M_IN
                    && r.s.in_addr == addr
                    && r.s.in_port == port
                    && r.m.proto == proto
                    && r.m.pool == pool
            })
            .map(|(_, slot)| slot & !KIND_BITS)
    }

    /// The mapping record (live or held) of outside endpoint (`addr`, `port`).
    fn find_map_out(&self, slab: &Slab, addr: u32, port: u16, proto: u8) -> Option<u32> {
        let h = mapping::out_hash(self.cfg.seed, addr, port, proto);
        self.index
            .find(h, |slot| {
                let r = slab.rec(slot & !KIND_BITS);
                kind(slot) == M_OUT
                    && r.s.out_addr == addr
                    && r.s.out_port == port
                    && r.m.proto == proto
            })
            .map(|(_, slot)| slot & !KIND_BITS)
    }

    /// Publish the table gauges (relaxed stores; called when they change, never per packet).
    fn gauges(&self) {
        let c = &self.counters;
        c.set(Counter::SessionsCurrent, u64::from(self.n_sessions));
        c.set(Counter::PortsInUse, self.ports.total_in_use());
        c.set(Counter::MappingsCurrent, u64::from(self.n_maps));
        c.set(Counter::PortsHeld, u64::from(self.n_held));
        c.set(Counter::SubscribersCurrent, u64::from(self.subs.len()));
        c.set(Counter::BlocksInUse, self.ports.blocks_in_use());
    }

    fn event(&mut self, now: u32, kind: EventKind) {
        if self.cfg.event_ring == 0 {
            return;
        }
        if !self.events.push(Event { time: now, kind }) {
            self.counters.add(Counter::EventsDropped, 1);
        }
    }

    /// A quota event, at most one per subscriber per second (a refused flow retries many times).
    fn quota_event(&mut self, sub: u32, limit: Limit, now: u32) {
        let r = self.subs.get_mut(sub);
        if r.last_event == now {
            return;
        }
        r.last_event = now;
        let subscriber = r.addr;
        self.event(now, EventKind::QuotaExceeded { subscriber, limit });
    }

    /// A port exhaustion event, at most one per shard per second.
    fn exhausted_event(&mut self, subscriber: u32, out_addr: u32, proto: u8, now: u32) {
        if self.last_exhausted == now {
            return;
        }
        self.last_exhausted = now;
        self.event(
            now,
            EventKind::PortsExhausted {
                subscriber,
                out_addr,
                proto,
            },
        );
    }

    fn untranslated(&mut self, pkt: &mut [u8]) -> Verdict {
        decrement_ttl(pkt);
        Verdict::ForwardUntranslated
    }

    /// Exclusion check for a packet the parser refused (other protocols, fragments, ICMP errors): only
    /// its IPv4 header is looked at.
    fn untranslated_raw(&mut self, dir: Dir, pkt: &mut [u8]) -> Option<Verdict> {
        let (src, dst, ttl) = ip_header(pkt)?;
        let excluded = match dir {
            Dir::In2Out => self.rules.excluded_outbound(src, dst),
            Dir::Out2In => {
                self.ports.addr_index(dst).is_none() && self.rules.excluded_inbound(src, dst)
            }
        };
        if !excluded {
            return None;
        }
        if ttl <= 1 {
            return Some(Verdict::Drop(DropReason::TtlExceeded));
        }
        Some(self.untranslated(pkt))
    }

    /// Every established packet's translation. Forced inline into stage 3: in cgnat-bench's build
    /// the compiler left it a call, whose register saves cost 11 instructions per packet
    /// (callgrind, 436 → 424 in `Shard::process`; established 64K +3-5 %). cgnatd's build had
    /// inlined it already.
    #[inline(always)]
    fn forward(
        &mut self,
        slab: &mut Slab,
        slot: u32,
        dir: Dir,
        p: &Parsed,
        pkt: &mut [u8],
        now: u32,
    ) -> Verdict {
        let s = slab.get_mut(slot);
        if dir == Dir::In2Out && s.state & HAIRPIN != 0 {
            return self.hairpin(slab, slot, p, pkt, now);
        }
        // A later fragment has no flags to look at; its first fragment was checked.
        if s.proto == ip_proto::TCP && p.frag != frag_pos::LATER && !tcp_flags_valid(p.tcp_flags) {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        // A destination NAT flow is opened from outside: its inbound packets are its outbound ones.
        if dir == Dir::In2Out
            || s.proto != ip_proto::UDP
            || self.cfg.udp_inbound_refresh
            || s.state & DNAT != 0
        {
            s.last_seen = now;
        }
        if s.state & DNAT != 0 && s.is_dnat() {
            self.dnat_packet(&*s, p);
        }
        let (end, addr, port) = match dir {
            Dir::In2Out => (End::Source, s.out_addr, s.out_port),
            Dir::Out2In => (End::Destination, s.in_addr, s.in_port),
        };
        if s.proto == ip_proto::TCP {
            track_tcp(s, dir, p.tcp_flags);
        } else if s.state & REPLIED == 0 && (dir == Dir::Out2In) != (s.state & INBOUND != 0) {
            // Written once, not per packet: out2in UDP otherwise leaves the session line clean.
            s.state |= REPLIED;
        }
        rewrite_inline(pkt, p, end, addr, port, true);
        Verdict::Forward
    }

    /// An outbound packet of a session whose remote end is one of our outside endpoints: translate the
    /// source as usual, then treat the packet as if it arrived from outside (filtering included).
    fn hairpin(
        &mut self,
        slab: &mut Slab,
        slot: u32,
        p: &Parsed,
        pkt: &mut [u8],
        now: u32,
    ) -> Verdict {
        let s = slab.get_mut(slot);
        if s.proto == ip_proto::TCP && p.frag != frag_pos::LATER && !tcp_flags_valid(p.tcp_flags) {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        s.last_seen = now;
        if s.proto == ip_proto::TCP {
            track_tcp(s, Dir::In2Out, p.tcp_flags);
        } else if s.state & (INBOUND | REPLIED) == INBOUND {
            // The answer of a session opened from the other end (a backend's reply).
            s.state |= REPLIED;
        }
        let s = *slab.get(slot);
        if s.is_dnat() {
            self.dnat_packet(&s, p);
        }
        // The TTL is decremented once, by the destination half (here or on the worker it is handed to).
        rewrite(pkt, p, End::Source, s.out_addr, s.out_port, false);
        let icmp = s.proto == ip_proto::ICMP;
        // ICMP echo has one identifier: after the source half it is the sender's outside identifier, and
        // that is what names the target mapping, exactly as for an echo arriving from outside.
        let target_port = if icmp { s.out_port } else { p.key.dport };
        let owner = port_owner(target_port, self.cfg.workers);
        // Both halves of a destination NAT hairpin or full-NAT flow live here: a subscriber's flow to
        // a rule's address, and a backend's reply to it.
        let local = s.state & DNAT != 0
            || (self.dnat.is_vip(p.key.dst)
                && self.dnat.find(p.key.dst, s.proto, target_port).is_some());
        if owner != self.cfg.worker && !local {
            return Verdict::Handoff {
                worker: owner,
                dir: Dir::Out2In,
            };
        }
        let p2 = Parsed {
            key: FlowKey {
                src: s.out_addr,
                dst: p.key.dst,
                sport: if icmp { 0 } else { s.out_port },
                dport: target_port,
                proto: s.proto,
            },
            ..*p
        };
        let v = match self.lookup(slab, Dir::Out2In, &p2.key) {
            // A backend's reply to a full-NAT client: it leaves outside, towards the client.
            Some(s2) if slab.get(s2).is_fullnat_client() => {
                return self.forward(slab, s2, Dir::Out2In, &p2, pkt, now);
            }
            Some(s2) => self.forward(slab, s2, Dir::Out2In, &p2, pkt, now),
            None => self.out2in_miss(slab, &p2, pkt, now),
        };
        match v {
            Verdict::Forward => Verdict::Hairpin,
            other => other,
        }
    }

    /// An ICMP error whose quoted packet belongs to session `slot` (RFC 5508 section 4): out2in it goes
    /// to the subscriber that sent the quoted packet, in2out it leaves under the subscriber's outside
    /// address and endpoint. Errors never refresh a session or move its TCP state: an error says
    /// nothing about the peer being alive, and anyone on the path can send one. An error a subscriber
    /// sends about a packet from another subscriber's mapping is hairpinned like any packet to our
    /// outside endpoints.
    fn icmp_error(
        &mut self,
        slab: &mut Slab,
        slot: u32,
        dir: Dir,
        p: &Parsed,
        pkt: &mut [u8],
    ) -> Verdict {
        let s = *slab.get(slot);
        match dir {
            Dir::Out2In => {
                // An error about a packet we sent comes back to the address it was sent from.
                if ip_header(pkt).is_none_or(|(_, dst, _)| dst != s.out_addr) {
                    return Verdict::Drop(DropReason::IcmpErrorUnmatched);
                }
                rewrite_icmp_error(
                    pkt,
                    p,
                    End::Destination,
                    s.in_addr,
                    s.in_addr,
                    s.in_port,
                    true,
                );
                Verdict::Forward
            }
            Dir::In2Out => {
                // The error must go where the quoted packet came from, and must not come from
                // another subscriber of ours: a subscriber cannot speak, under someone else's
                // outside address, to that someone's peers. (Routers on the subscriber side, which
                // have no mappings, may send errors about any subscriber's packets.)
                let Some((src, dst, _)) = ip_header(pkt) else {
                    return Verdict::Drop(DropReason::IcmpErrorUnmatched);
                };
                if dst != s.rem_addr || (src != s.in_addr && self.is_subscriber(src, dst)) {
                    return Verdict::Drop(DropReason::IcmpErrorUnmatched);
                }
                let hairpin = self.ports.addr_index(s.rem_addr).is_some();
                if hairpin && s.proto == ip_proto::ICMP {
                    // An echo has a single identifier; its target mapping cannot be told apart.
                    return Verdict::Drop(DropReason::IcmpErrorUnmatched);
                }
                rewrite_icmp_error(
                    pkt,
                    p,
                    End::Source,
                    s.out_addr,
                    s.out_addr,
                    s.out_port,
                    !hairpin,
                );
                if !hairpin {
                    return Verdict::Forward;
                }
                // The quoted packet came from the other subscriber's outside endpoint (rem): it is
                // the source port of the quoted packet that names the target now.
                let owner = port_owner(s.rem_port, self.cfg.workers);
                if owner != self.cfg.worker {
                    return Verdict::Handoff {
                        worker: owner,
                        dir: Dir::Out2In,
                    };
                }
                let Ok(p2) = parse(pkt, Dir::Out2In, None) else {
                    return Verdict::Drop(DropReason::IcmpErrorUnmatched);
                };
                match self.lookup(slab, Dir::Out2In, &p2.key) {
                    Some(s2) => {
                        let t = *slab.get(s2);
                        rewrite_icmp_error(
                            pkt,
                            &p2,
                            End::Destination,
                            t.in_addr,
                            t.in_addr,
                            t.in_port,
                            true,
                        );
                        Verdict::Hairpin
                    }
                    None => Verdict::Drop(DropReason::IcmpErrorUnmatched),
                }
            }
        }
    }

    /// Whether `addr` is a subscriber with state in this shard (for traffic towards `dst`).
    fn is_subscriber(&self, addr: u32, dst: u32) -> bool {
        self.rules.pool_index_for(addr, dst).is_some_and(|pi| {
            self.subs
                .find(sub_hash(self.cfg.seed, addr), addr, pi as u8)
                .is_some()
        })
    }

    /// An ICMP error that quotes no session of ours: it may belong to a no-NAT exclusion.
    fn icmp_error_miss(&mut self, dir: Dir, pkt: &mut [u8]) -> Verdict {
        if !self.rules.exclusions.is_empty()
            && let Some(v) = self.untranslated_raw(dir, pkt)
        {
            return v;
        }
        Verdict::Drop(DropReason::IcmpErrorUnmatched)
    }

    /// Slow path: an outbound packet with no session.
    fn in2out_miss(&mut self, slab: &mut Slab, p: &Parsed, pkt: &mut [u8], now: u32) -> Verdict {
        let k = p.key;
        // The data plane sends a backend's packets to the worker of the client they answer; a
        // backend's other packets (its own flows as a subscriber, established or not) belong to its
        // subscriber owner. A 1:1 host's own flows stay here, with its inbound ones.
        if self.cfg.workers > 1
            && self.dnat.is_backend(k.src)
            && self.dnat.static_for(k.src).is_none()
        {
            let owner = self
                .rules
                .subscriber_worker(k.src, k.dst, self.cfg.workers)
                .unwrap_or_else(|| subscriber_owner(k.src, self.cfg.workers));
            if owner != self.cfg.worker {
                return Verdict::Handoff {
                    worker: owner,
                    dir: Dir::In2Out,
                };
            }
        }
        if !self.rules.exclusions.is_empty() && self.rules.excluded_outbound(k.src, k.dst) {
            return self.untranslated(pkt);
        }
        if let Some(r) = opening_refusal(p) {
            return Verdict::Drop(r);
        }
        if let Some(r) = self.dnat.static_for(k.src)
            && self.ports.addr_index(k.dst).is_none()
            && !self.dnat.is_vip(k.dst)
        {
            return self.static_outbound(slab, r, p, pkt, now);
        }
        let Some(ri) = self.rules.rule_index_for(k.src, k.dst) else {
            return Verdict::Drop(DropReason::NoSnatRule);
        };
        let pi = self.rules.snat[ri].pool;
        match self.open_outbound(slab, pi, p, now) {
            Ok(slot) => {
                self.counters.count_rule(ri, true);
                self.forward(slab, slot, Dir::In2Out, p, pkt, now)
            }
            Err(v) => {
                if matches!(v, Verdict::Drop(_)) {
                    self.counters.count_rule(ri, false);
                }
                v
            }
        }
    }

    fn open_outbound(
        &mut self,
        slab: &mut Slab,
        pi: usize,
        p: &Parsed,
        now: u32,
    ) -> Result<u32, Verdict> {
        let k = p.key;
        if let Some(plan) = &self.det[pi] {
            match plan.forward(k.src) {
                Some(d) if d.lane != self.cfg.worker => {
                    return Err(Verdict::Handoff {
                        worker: d.lane,
                        dir: Dir::In2Out,
                    });
                }
                Some(_) => {}
                None => return Err(Verdict::Drop(DropReason::NoSnatRule)),
            }
        }
        // A full slab may still take a session embedded in the mapping it already has; whether a
        // record is needed is known only once the mapping is found (see `mapping_for` and
        // `insert_session`).
        let sub = self.subscriber(pi, k.src, k.proto, now)?;
        let lim = self.cfg.limits.max_sessions_per_subscriber;
        if lim != 0 && self.subs.get(sub).sessions >= lim {
            self.quota_event(sub, Limit::Sessions, now);
            self.release_subscriber_if_idle(sub);
            return Err(Verdict::Drop(DropReason::QuotaExceeded));
        }
        let (ms, origin) = match self.mapping_for(slab, pi, sub, k.src, k.sport, k.proto, now) {
            Ok(got) => got,
            Err(r) => {
                self.release_subscriber_if_idle(sub);
                self.gauges();
                return Err(Verdict::Drop(r));
            }
        };
        let m = *slab.get(ms);
        let mut state = if k.proto == ip_proto::TCP {
            tcp_state::SYN_SENT
        } else {
            0
        };
        if self.ports.addr_index(k.dst).is_some() || self.dnat.is_vip(k.dst) {
            state |= HAIRPIN;
        }
        let s = Session {
            in_addr: k.src,
            rem_addr: k.dst,
            in_port: k.sport,
            rem_port: k.dport,
            out_addr: m.out_addr,
            out_port: m.out_port,
            proto: k.proto,
            state,
            last_seen: now,
        };
        self.insert_session(slab, s, ms, origin, sub, now)
            .map_err(Verdict::Drop)
    }

    /// The subscriber record for (`src`, pool), created with its paired address if new.
    fn subscriber(&mut self, pi: usize, src: u32, proto: u8, now: u32) -> Result<u32, Verdict> {
        let h = sub_hash(self.cfg.seed, src);
        if let Some(s) = self.subs.find(h, src, pi as u8) {
            return Ok(s);
        }
        let out_addr = match &self.det[pi] {
            Some(plan) => match plan.forward(src) {
                Some(d) => self.rules.pools[pi].addrs[d.addr_pos],
                None => return Err(Verdict::Drop(DropReason::NoSnatRule)),
            },
            None => {
                // Paired pooling: the hashed choice, unless that address is full, then the next ones.
                // Fixed from here on while the subscriber has any mapping.
                let n = self.rules.pools[pi].addrs.len();
                let start = paired_index(n, src);
                let mut chosen = None;
                for i in 0..n.min(PAIRING_TRIES) {
                    let a = self.rules.pools[pi].addrs[(start + i) % n];
                    if self
                        .ports
                        .addr_index(a)
                        .is_some_and(|ai| self.ports.has_room(ai, proto))
                    {
                        chosen = Some(a);
                        break;
                    }
                }
                match chosen {
                    Some(a) => a,
                    None => {
                        let a = self.rules.pools[pi].addrs[start];
                        self.exhausted_event(src, a, proto, now);
                        return Err(Verdict::Drop(DropReason::OutOfPorts));
                    }
                }
            }
        };
        let slot = self
            .subs
            .insert(h, src, pi as u8, out_addr)
            .ok_or(Verdict::Drop(DropReason::TableFull))?;
        Ok(slot)
    }

    /// The subscriber's mapping for an inside endpoint: the live one, the held one revived (the same
    /// endpoint gets its port back, exempt from the hold-down), or a new one, with where it came
    /// from. A flow that fails after this undoes it with [`Core::undo_mapping`].
    #[allow(clippy::too_many_arguments)]
    fn mapping_for(
        &mut self,
        slab: &mut Slab,
        pi: usize,
        sub: u32,
        in_addr: u32,
        in_port: u16,
        proto: u8,
        now: u32,
    ) -> Result<(u32, Origin), DropReason> {
        let seed = self.cfg.seed;
        let lim = self.cfg.limits.max_ports_per_subscriber;
        if let Some(ms) = self.find_map_in(slab, in_addr, in_port, proto, pi as u8) {
            if !slab.rec(ms).is_held() {
                return Ok((ms, Origin::Live));
            }
            if lim != 0 && self.subs.get(sub).mappings >= lim {
                self.quota_event(sub, Limit::Ports, now);
                return Err(DropReason::QuotaExceeded);
            }
            let m = slab.map_mut(ms);
            let until = m.count;
            m.flags &= !HELD;
            m.count = 0;
            self.n_held -= 1;
            let r = self.subs.get_mut(sub);
            r.held -= 1;
            r.mappings += 1;
            return Ok((ms, Origin::Revived { until }));
        }
        if lim != 0 && self.subs.get(sub).mappings >= lim {
            self.quota_event(sub, Limit::Ports, now);
            return Err(DropReason::QuotaExceeded);
        }
        if self.n_maps >= self.max_mappings || slab.is_full() {
            return Err(DropReason::TableFull);
        }
        let port = self.alloc_port(pi, sub, in_port, proto, now)?;
        let out_addr = self.subs.get(sub).out_addr;
        self.publish_ports(out_addr);
        let rec = Record {
            s: Session {
                in_addr,
                in_port,
                out_addr,
                out_port: port,
                ..Session::default()
            },
            m: MapPart {
                count: 0,
                proto,
                pool: pi as u8,
                flags: MAP,
                _pad: 0,
            },
        };
        let Some(ms) = slab.insert_record(rec) else {
            self.free_port(Some(sub), in_addr, out_addr, proto, port, now);
            return Err(DropReason::TableFull);
        };
        // The inside endpoint's bucket is the one the missed lookup read; the outside endpoint
        // names a port just chosen, so its insert is queued: the buckets of all the burst's new
        // flows are prefetched together at its end and the keys stored in the next burst (a
        // lookup finds it meanwhile). The index is sized for two entries of every record, so
        // neither can fail.
        let ok = self
            .index
            .insert(mapping::in_hash(seed, in_addr, in_port, proto), ms | M_IN)
            && self
                .index
                .insert_later(mapping::out_hash(seed, out_addr, port, proto), ms | M_OUT);
        debug_assert!(ok);
        self.n_maps += 1;
        self.subs.get_mut(sub).mappings += 1;
        self.counters.add(Counter::MappingsCreated, 1);
        self.event(
            now,
            EventKind::MappingCreated(mapping_info(&Mapping::of_record(&rec))),
        );
        Ok((ms, Origin::Made))
    }

    /// Choose an outside port for a new mapping of `sub` by its pool's allocation mode.
    fn alloc_port(
        &mut self,
        pi: usize,
        sub: u32,
        in_port: u16,
        proto: u8,
        now: u32,
    ) -> Result<u16, DropReason> {
        let r = *self.subs.get(sub);
        let Some(a) = self.ports.addr_index(r.out_addr) else {
            return Err(DropReason::OutOfPorts);
        };
        let got = match self.rules.pools[pi].allocation {
            PortAllocation::Random => self.ports.alloc_random(a, proto, None),
            PortAllocation::Preserve => self.ports.alloc_preserve(a, proto, in_port),
            PortAllocation::Parity => self.ports.alloc_random(a, proto, Some(in_port)),
            PortAllocation::Blocks { max_blocks, .. } => {
                return self.alloc_in_blocks(a, sub, proto, max_blocks, now);
            }
            PortAllocation::Deterministic { .. } => {
                let set = self.det[pi]
                    .and_then(|plan| plan.forward(r.addr).map(|d| plan.set(&d, r.out_addr)));
                let got = set.and_then(|set| self.ports.alloc_in(a, proto, &set));
                if got.is_none() {
                    self.quota_event(sub, Limit::DeterministicRange, now);
                    return Err(DropReason::QuotaExceeded);
                }
                got
            }
        };
        got.ok_or_else(|| {
            self.exhausted_event(r.addr, r.out_addr, proto, now);
            DropReason::OutOfPorts
        })
    }

    /// Port block allocation: a port in one of the subscriber's blocks, or in a new block.
    fn alloc_in_blocks(
        &mut self,
        a: usize,
        sub: u32,
        proto: u8,
        max_blocks: u16,
        now: u32,
    ) -> Result<u16, DropReason> {
        let owned = self.subs.get(sub).blocks as usize;
        for i in 0..owned {
            let set = self.ports.block_set(a, self.subs.blocks_of(sub)[i]);
            if let Some(port) = self.ports.alloc_in(a, proto, &set) {
                return Ok(port);
            }
        }
        if owned >= max_blocks as usize {
            self.quota_event(sub, Limit::Blocks, now);
            return Err(DropReason::QuotaExceeded);
        }
        let r = *self.subs.get(sub);
        let Some(j) = self.ports.take_block(a) else {
            self.exhausted_event(r.addr, r.out_addr, proto, now);
            return Err(DropReason::OutOfPorts);
        };
        let set = self.ports.block_set(a, j);
        if !self.subs.add_block(sub, j) {
            self.ports.put_block(a, j);
            return Err(DropReason::QuotaExceeded);
        }
        self.counters.add(Counter::BlocksAllocated, 1);
        self.event(
            now,
            EventKind::BlockAllocated {
                subscriber: r.addr,
                block: set,
            },
        );
        match self.ports.alloc_in(a, proto, &set) {
            Some(port) => Ok(port),
            None => {
                // A block is handed out only when none of its ports is mapped or held.
                debug_assert!(false, "fresh block {j} has no free port");
                self.subs.remove_block(sub, j);
                self.ports.put_block(a, j);
                Err(DropReason::OutOfPorts)
            }
        }
    }

    /// Store a session on mapping `ms` of subscriber `sub`: embedded in the mapping's record when
    /// it is a plain SNAT session and the record's session part is free, else in a record of its
    /// own with its index entries. `origin`: where [`Core::mapping_for`] found the mapping, for
    /// undoing it on failure. Returns the session's slot.
    fn insert_session(
        &mut self,
        slab: &mut Slab,
        s: Session,
        ms: u32,
        origin: Origin,
        sub: u32,
        now: u32,
    ) -> Result<u32, DropReason> {
        let plain = s.state & (DNAT | HAIRPIN) == 0;
        let slot = if plain && !slab.get(ms).is_live() {
            let m = slab.get(ms);
            debug_assert!(
                (m.in_addr, m.in_port, m.out_addr, m.out_port)
                    == (s.in_addr, s.in_port, s.out_addr, s.out_port)
            );
            slab.embed(ms, s);
            ms
        } else {
            let Some(slot) = slab.insert(s) else {
                if slab.rec(ms).m.count == 0 {
                    self.undo_mapping(slab, ms, Some(sub), origin, now);
                }
                return Err(DropReason::TableFull);
            };
            let seed = self.cfg.seed;
            // The index is sized for every key of every slab slot, so these cannot fail while the
            // slab has room. The outside and filtering keys are queued (see the index module), as
            // a new mapping's outside key is.
            let mut ok = self.index.insert(in_key(&s).hash(seed), slot | in_kind(&s))
                && self
                    .index
                    .insert_later(out_key(&s).hash(seed), slot | OUT_BIT);
            if self.adf[usize::from(slab.rec(ms).m.pool)] {
                ok &= self.index.insert_later(
                    adf_hash(seed, s.rem_addr, s.out_addr, s.out_port, s.proto),
                    slot | ADF_BIT,
                );
            }
            debug_assert!(ok);
            if s.is_fullnat_client() {
                // Matched from outside towards the rule's address, which no mapping has.
                self.tuple_out.add(s.rem_addr);
            }
            slot
        };
        slab.map_mut(ms).count += 1;
        if slot != ms && slab.rec(ms).separate_sessions() == 1 {
            self.mark_separate(slab, ms, true);
        }
        self.n_sessions += 1;
        self.subs.get_mut(sub).sessions += 1;
        self.session_created(&s, now);
        Ok(slot)
    }

    /// Counters, event and gauges for a session just stored.
    fn session_created(&mut self, s: &Session, now: u32) {
        let c = &self.counters;
        c.add(Counter::SessionsCreated, 1);
        c.add(
            match s.proto {
                ip_proto::TCP => Counter::TcpSessionsCreated,
                ip_proto::UDP => Counter::UdpSessionsCreated,
                _ => Counter::IcmpSessionsCreated,
            },
            1,
        );
        if s.is_inbound() {
            c.add(Counter::InboundSessionsCreated, 1);
        }
        if self.cfg.log_sessions {
            self.event(now, EventKind::SessionCreated(session_info(s)));
        }
        self.gauges();
    }

    /// Slow path: an inbound packet with no session. It may open one on a live mapping if the pool's
    /// filtering lets it through (RFC 4787 section 5), or be the return traffic of an exclusion.
    fn out2in_miss(&mut self, slab: &mut Slab, p: &Parsed, pkt: &mut [u8], now: u32) -> Verdict {
        let k = p.key;
        if let Some(r) = self.dnat.find(k.dst, k.proto, k.dport) {
            return self.dnat_open(slab, r, p, pkt, now);
        }
        let Some(ms) = self.find_map_out(slab, k.dst, k.dport, k.proto) else {
            if !self.rules.exclusions.is_empty()
                && self.ports.addr_index(k.dst).is_none()
                && self.rules.excluded_inbound(k.src, k.dst)
            {
                return self.untranslated(pkt);
            }
            return Verdict::Drop(DropReason::NoSession);
        };
        if p.frag == frag_pos::LATER {
            return Verdict::Drop(DropReason::NoSession);
        }
        let m = Mapping::of_record(slab.rec(ms));
        if m.is_held() {
            // Nobody uses the port during the hold-down.
            return Verdict::Drop(DropReason::NoSession);
        }
        let pi = m.pool as usize;
        // A full-NAT client's mapping exists for its flows to a rule, not to be reached: its inside
        // end is an outside host, which no SNAT rule names as a subscriber.
        if !self.dnat.is_empty() && !self.rules.snat.iter().any(|r| r.matches(m.in_addr)) {
            return Verdict::Drop(DropReason::Filtered);
        }
        let allowed = match self.rules.pools[pi].filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => self.adf_match(slab, ms, k.src),
            Filtering::AddressAndPortDependent => false,
        };
        if !allowed {
            return Verdict::Drop(DropReason::Filtered);
        }
        // RFC 5382: an inbound SYN the filter lets through opens a connection (simultaneous open, P2P);
        // any other segment without a session is invalid.
        if k.proto == ip_proto::TCP && !is_bare_syn(p.tcp_flags) {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let mut s = Session {
            in_addr: m.in_addr,
            rem_addr: k.src,
            in_port: m.in_port,
            rem_port: k.sport,
            out_addr: m.out_addr,
            out_port: m.out_port,
            proto: k.proto,
            state: INBOUND,
            last_seen: now,
        };
        if k.proto == ip_proto::TCP {
            s.state |= tcp_state::SYN_RCVD;
        }
        // From one of our own addresses, as for an outbound flow: a pool address, or a destination
        // NAT rule's (its backend's packets, hairpinned here). The subscriber's answers go back
        // inside, not out of the outside port to our own address.
        if self.ports.addr_index(k.src).is_some() || self.dnat.is_vip(k.src) {
            s.state |= HAIRPIN;
        }
        // The inside endpoint may already talk to this remote through a mapping of another pool (SNAT
        // rules by destination); one inside tuple must name one session.
        let ik = in_key(&s);
        if self.lookup(slab, Dir::In2Out, &ik).is_some() {
            return Verdict::Drop(DropReason::Filtered);
        }
        let Some(sub) = self.subscriber_of(m.in_addr, m.pool) else {
            debug_assert!(false, "a live mapping without its subscriber");
            return Verdict::Drop(DropReason::NoSession);
        };
        let lim = self.cfg.limits.max_sessions_per_subscriber;
        if lim != 0 && self.subs.get(sub).sessions >= lim {
            self.quota_event(sub, Limit::Sessions, now);
            return Verdict::Drop(DropReason::QuotaExceeded);
        }
        match self.insert_session(slab, s, ms, Origin::Live, sub, now) {
            Ok(slot) => self.forward(slab, slot, Dir::Out2In, p, pkt, now),
            Err(r) => Verdict::Drop(r),
        }
    }

    /// Count a packet of a destination NAT session on its backend.
    #[inline]
    fn dnat_packet(&self, s: &Session, p: &Parsed) {
        if let Some(id) = self
            .dnat
            .counter_id(s.out_addr, s.proto, s.out_port, s.in_addr, s.in_port)
        {
            self.dnat_counters.packet(id, u64::from(p.total_len));
        }
    }

    /// A packet from a full-NAT client (outside) matched its client session: translate the source to
    /// the client's outside endpoint, then the destination by the backend session, exactly as a
    /// subscriber's hairpinned packet is.
    fn fullnat_client(
        &mut self,
        slab: &mut Slab,
        slot: u32,
        p: &Parsed,
        pkt: &mut [u8],
        now: u32,
    ) -> Verdict {
        let s = *slab.get(slot);
        if s.proto == ip_proto::TCP && p.frag != frag_pos::LATER && !tcp_flags_valid(p.tcp_flags) {
            return Verdict::Drop(DropReason::TcpInvalid);
        }
        let p2 = Parsed {
            key: other_half_key(&s),
            ..*p
        };
        let Some(s2) = self.lookup(slab, Dir::Out2In, &p2.key) else {
            // The backend half expired or was cut first: the client half is an orphan. Remove it,
            // and let the packet open a new flow if it may.
            self.delete_session(slab, slot, now, false);
            self.gauges();
            return self.out2in_miss(slab, p, pkt, now);
        };
        let c = slab.get_mut(slot);
        c.last_seen = now;
        if c.proto == ip_proto::TCP {
            track_tcp(c, Dir::In2Out, p.tcp_flags);
        }
        rewrite(pkt, p, End::Source, s.out_addr, s.out_port, false);
        self.forward(slab, s2, Dir::Out2In, &p2, pkt, now)
    }

    /// Choose the backend of rule `r` for a new flow `k`: the client's affinity if it has one, else
    /// the rule's scheduler. `None` when no backend takes new flows.
    fn pick_backend(&mut self, r: u16, k: &FlowKey, client: u32, now: u32) -> Option<usize> {
        let table = Arc::clone(&self.dnat);
        let e: &RuleEntry = table.rule(r);
        let affinity = e.rule.affinity_s;
        if affinity > 0
            && let Some(id) = self.affinity.lookup(client, r, now, affinity)
            && let Some(i) = e
                .backends
                .iter()
                .position(|b| u32::from(id) == b.id && b.backend.weight > 0)
        {
            return Some(i);
        }
        let i = match &e.picker {
            Picker::Random(w) => {
                // xorshift64: cheap, and only the slow path draws.
                let mut x = self.rng;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.rng = x;
                w.pick((x >> 32) as u32)
            }
            Picker::RoundRobin(rr) => {
                let cursor = self.rr.get_mut(r as usize)?;
                rr.pick(cursor)
            }
            Picker::Maglev(m) => m.lookup(flow_hash(
                self.cfg.seed,
                k.src,
                k.dst,
                k.sport,
                k.dport,
                k.proto,
            )),
        }? as usize;
        if affinity > 0 {
            self.affinity
                .remember(client, r, e.backends[i].id as u16, now);
        }
        Some(i)
    }

    /// Slow path: a new flow to destination NAT rule `r` (from outside, or the second half of a
    /// subscriber's hairpin). Plain DNAT keeps the client's address; full NAT also translates the
    /// client to an endpoint of the rule's pool, with a client session of its own (its mapping, limits
    /// and port come from that pool like a subscriber's).
    fn dnat_open(
        &mut self,
        slab: &mut Slab,
        r: u16,
        p: &Parsed,
        pkt: &mut [u8],
        now: u32,
    ) -> Verdict {
        let k = p.key;
        if let Some(r) = opening_refusal(p) {
            return Verdict::Drop(r);
        }
        let table = Arc::clone(&self.dnat);
        let e = table.rule(r);
        let Some(bi) = self.pick_backend(r, &k, k.src, now) else {
            return Verdict::Drop(DropReason::NoBackend);
        };
        let b = e.backends[bi];
        let bport = if e.rule.is_address_only() {
            k.dport
        } else {
            e.backend_port(&b.backend, k.dport)
        };
        // A subscriber's flow already carries its own outside endpoint as the source.
        let hairpin = self.ports.addr_index(k.src).is_some();
        let full = e.rule.snat_pool.filter(|_| !hairpin);
        // Records this flow takes: the backend half; with full NAT the client half too, and the
        // client's mapping when it has none yet (a client half is never embedded in its mapping).
        // Refusing here, before anything is made, keeps a refused flow out of the counters.
        let needed = match full {
            None => 1,
            Some(pi) => match self.find_map_in(slab, k.src, k.sport, k.proto, pi as u8) {
                Some(_) => 2,
                None => 3,
            },
        };
        if slab.live() + needed > slab.capacity() {
            return Verdict::Drop(DropReason::TableFull);
        }
        let tcp = k.proto == ip_proto::TCP;
        let mut client = (k.src, k.sport);
        let mut client_slot = None;
        if let Some(pi) = full {
            match self.open_fullnat_client(slab, pi, &k, now) {
                Ok((slot, ms, addr, port, origin)) => {
                    client = (addr, port);
                    client_slot = Some((slot, ms, origin));
                }
                Err(v) => return v,
            }
        }
        let mut state = DNAT | INBOUND;
        if hairpin || full.is_some() {
            state |= HAIRPIN;
        }
        if tcp {
            state |= tcp_state::SYN_RCVD;
        }
        let s = Session {
            in_addr: b.backend.addr,
            rem_addr: client.0,
            in_port: bport,
            rem_port: if k.proto == ip_proto::ICMP {
                0
            } else {
                client.1
            },
            out_addr: k.dst,
            out_port: k.dport,
            proto: k.proto,
            state,
            last_seen: now,
        };
        let slot = match self.insert_dnat(slab, s, b.id, client_slot.map(|(cs, ..)| cs), now) {
            Ok(slot) => slot,
            Err(reason) => {
                // The client half goes, and its mapping as `undo_mapping` says: freed at once if
                // made for this flow, back into its hold-down as it was if revived.
                if let Some((cs, ms, origin)) = client_slot {
                    self.delete_session(slab, cs, now, origin == Origin::Made);
                    self.restore_hold_down(slab, ms, origin);
                    self.gauges();
                }
                return Verdict::Drop(reason);
            }
        };
        if let Some((cs, ..)) = client_slot {
            let c = *slab.get(cs);
            rewrite(pkt, p, End::Source, c.out_addr, c.out_port, false);
        }
        let p2 = Parsed {
            key: FlowKey {
                src: client.0,
                sport: if k.proto == ip_proto::ICMP {
                    0
                } else {
                    client.1
                },
                ..k
            },
            ..*p
        };
        self.forward(slab, slot, Dir::Out2In, &p2, pkt, now)
    }

    /// The client session of a full-NAT flow: the outside client is treated as a subscriber of pool
    /// `pi` (paired address, limits, endpoint-independent mapping), its key matched from outside.
    fn open_fullnat_client(
        &mut self,
        slab: &mut Slab,
        pi: usize,
        k: &FlowKey,
        now: u32,
    ) -> Result<(u32, u32, u32, u16, Origin), Verdict> {
        if self.det[pi].is_some() {
            return Err(Verdict::Drop(DropReason::NoSnatRule));
        }
        let sub = self.subscriber(pi, k.src, k.proto, now)?;
        let lim = self.cfg.limits.max_sessions_per_subscriber;
        if lim != 0 && self.subs.get(sub).sessions >= lim {
            self.quota_event(sub, Limit::Sessions, now);
            self.release_subscriber_if_idle(sub);
            return Err(Verdict::Drop(DropReason::QuotaExceeded));
        }
        // TCP and UDP only: `snat` is refused on address-only rules, the only ones that carry ICMP
        // (DnatTable::build), so the client's port is its source port.
        debug_assert!(k.proto != ip_proto::ICMP);
        let (ms, origin) = match self.mapping_for(slab, pi, sub, k.src, k.sport, k.proto, now) {
            Ok(got) => got,
            Err(r) => {
                self.release_subscriber_if_idle(sub);
                self.gauges();
                return Err(Verdict::Drop(r));
            }
        };
        let m = *slab.get(ms);
        let s = Session {
            in_addr: k.src,
            rem_addr: k.dst,
            in_port: k.sport,
            rem_port: k.dport,
            out_addr: m.out_addr,
            out_port: m.out_port,
            proto: k.proto,
            state: DNAT
                | HAIRPIN
                | if k.proto == ip_proto::TCP {
                    tcp_state::SYN_SENT
                } else {
                    0
                },
            last_seen: now,
        };
        let slot = self
            .insert_session(slab, s, ms, origin, sub, now)
            .map_err(Verdict::Drop)?;
        Ok((slot, ms, m.out_addr, m.out_port, origin))
    }

    /// Slow path: a new outbound flow of the inside host of a 1:1 rule: its source becomes the rule's
    /// address, ports unchanged (the address is the host's alone).
    fn static_outbound(
        &mut self,
        slab: &mut Slab,
        r: u16,
        p: &Parsed,
        pkt: &mut [u8],
        now: u32,
    ) -> Verdict {
        let k = p.key;
        let table = Arc::clone(&self.dnat);
        let e = table.rule(r);
        if slab.live() >= slab.capacity() {
            return Verdict::Drop(DropReason::TableFull);
        }
        let s = Session {
            in_addr: k.src,
            rem_addr: k.dst,
            in_port: k.sport,
            rem_port: k.dport,
            out_addr: e.rule.addr,
            out_port: k.sport,
            proto: k.proto,
            state: DNAT
                | if k.proto == ip_proto::TCP {
                    tcp_state::SYN_SENT
                } else {
                    0
                },
            last_seen: now,
        };
        match self.insert_dnat(slab, s, e.backends[0].id, None, now) {
            Ok(slot) => self.forward(slab, slot, Dir::In2Out, p, pkt, now),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    /// Store a destination NAT session (no mapping, no subscriber) and index it.
    /// Store the backend half `s` of a destination NAT flow for backend counter `id`. `client`:
    /// the full-NAT client half just made for it, which a session giving way here must not take
    /// with it.
    fn insert_dnat(
        &mut self,
        slab: &mut Slab,
        s: Session,
        id: u32,
        client: Option<u32>,
        now: u32,
    ) -> Result<u32, DropReason> {
        let seed = self.cfg.seed;
        let (ik, ok) = (in_key(&s), out_key(&s));
        // One tuple names one session on each side. A finished TCP connection that holds the
        // backend's tuple (the client reused its port towards another rule with the same backend)
        // gives way to the new SYN, as the backend's own stack does with TIME_WAIT.
        for (dir, key) in [(Dir::In2Out, ik), (Dir::Out2In, ok)] {
            if let Some(old) = self.lookup(slab, dir, &key) {
                let o = *slab.get(old);
                let finished = o.closed_cleanly() || o.state & tcp_state::RST != 0;
                if s.proto != ip_proto::TCP || o.proto != ip_proto::TCP || !finished {
                    return Err(DropReason::DnatConflict);
                }
                self.delete_pair(slab, old, now, false, client);
            }
        }
        let Some(slot) = slab.insert(s) else {
            return Err(DropReason::TableFull);
        };
        let ins = self.index.insert(ik.hash(seed), slot)
            && self.index.insert(ok.hash(seed), slot | OUT_BIT);
        debug_assert!(ins);
        // No mapping has either endpoint: lookups find the session by 5-tuple only.
        self.tuple_in.add(s.in_addr);
        self.tuple_out.add(s.out_addr);
        self.n_sessions += 1;
        self.dnat_counters.opened(id);
        self.session_created(&s, now);
        Ok(slot)
    }

    /// Whether mapping `ms` has a session with remote address `rem`: its embedded one, or a
    /// separate one by its filtering key.
    fn adf_match(&self, slab: &Slab, ms: u32, rem: u32) -> bool {
        let m = *slab.get(ms);
        if m.is_live() && m.rem_addr == rem {
            return true;
        }
        let proto = slab.rec(ms).m.proto;
        let (out_addr, out_port) = (m.out_addr, m.out_port);
        let h = adf_hash(self.cfg.seed, rem, out_addr, out_port, proto);
        self.index
            .find(h, |slot| {
                let s = slab.get(slot & !KIND_BITS);
                slot & KIND_BITS == ADF_BIT
                    && s.rem_addr == rem
                    && s.out_addr == out_addr
                    && s.out_port == out_port
                    && s.proto == proto
            })
            .is_some()
    }

    /// Remove a session and its index entries; end its mapping if it was the last session. `force`
    /// skips the hold-down (flush). Returns how many sessions were deleted.
    ///
    /// The two halves of a full-NAT flow are deleted together, whichever goes first (expiry,
    /// `conntrack -D`, a cut backend). Left alone, a backend half would keep answering, under the
    /// rule's address, a pool port whose mapping is about to end: refreshed by the backend's own
    /// packets it would outlive the hold-down, and once the port was handed to another subscriber
    /// deliver the client's traffic to that subscriber.
    fn delete_session(&mut self, slab: &mut Slab, slot: u32, now: u32, force: bool) -> u32 {
        self.delete_pair(slab, slot, now, force, None)
    }

    /// [`Core::delete_session`], but never taking session `keep` along as the other half.
    fn delete_pair(
        &mut self,
        slab: &mut Slab,
        slot: u32,
        now: u32,
        force: bool,
        keep: Option<u32>,
    ) -> u32 {
        let rec = *slab.rec(slot);
        let s = rec.s;
        let seed = self.cfg.seed;
        // An embedded session has no entries of its own; its record stays with the mapping.
        let embedded = rec.is_map();
        if embedded {
            slab.unembed(slot);
        } else {
            slab.remove(slot);
            self.index.remove(in_key(&s).hash(seed), slot | in_kind(&s));
            self.index.remove(out_key(&s).hash(seed), slot | OUT_BIT);
        }
        self.n_sessions -= 1;
        let mut deleted = 1;
        // A backend half can only have a client half of ours if it is hairpinned (full NAT sets
        // the flag too): plain port forwards, most DNAT sessions, skip the lookup.
        if s.is_fullnat_client() || (s.is_dnat() && s.state & HAIRPIN != 0) {
            let k = other_half_key(&s);
            if let Some(o) = self.lookup(slab, Dir::Out2In, &k)
                && Some(o) != keep
            {
                let other = slab.get(o);
                let halves = if s.is_fullnat_client() {
                    other.is_dnat()
                } else {
                    other.is_fullnat_client()
                };
                if halves {
                    deleted += self.delete_session(slab, o, now, force);
                }
            }
        }
        let pi = if embedded {
            usize::from(rec.m.pool)
        } else {
            self.ports
                .addr_index(s.out_addr)
                .map_or(0, |a| self.ports.pool_of(a))
        };
        let dnat = s.is_dnat();
        if !embedded && !dnat && self.adf.get(pi).copied().unwrap_or(false) {
            self.index.remove(
                adf_hash(seed, s.rem_addr, s.out_addr, s.out_port, s.proto),
                slot | ADF_BIT,
            );
        }
        let c = &self.counters;
        c.add(Counter::SessionsDeleted, 1);
        c.add(
            match s.proto {
                ip_proto::TCP => Counter::TcpSessionsDeleted,
                ip_proto::UDP => Counter::UdpSessionsDeleted,
                _ => Counter::IcmpSessionsDeleted,
            },
            1,
        );
        if self.cfg.log_sessions {
            self.event(now, EventKind::SessionDeleted(session_info(&s)));
        }
        if dnat {
            // No mapping: the outside endpoint is the rule's.
            self.tuple_in.remove(s.in_addr);
            self.tuple_out.remove(s.out_addr);
            if let Some(id) = self
                .dnat
                .counter_id(s.out_addr, s.proto, s.out_port, s.in_addr, s.in_port)
            {
                self.dnat_counters.closed(id);
            }
            return deleted;
        }
        if s.is_fullnat_client() {
            self.tuple_out.remove(s.rem_addr);
        }
        let ms = if embedded {
            slot
        } else {
            match self.find_map_in(slab, s.in_addr, s.in_port, s.proto, pi as u8) {
                Some(ms) => ms,
                None => {
                    debug_assert!(false, "session without a mapping");
                    return deleted;
                }
            }
        };
        // A live mapping's subscriber record lives while it does; were it ever missing, the
        // mapping still ends (its port must not leak), only the subscriber's counts are skipped.
        let sub = self.subscriber_of(s.in_addr, slab.rec(ms).m.pool);
        debug_assert!(sub.is_some(), "a live mapping without its subscriber");
        if let Some(sub) = sub {
            let r = self.subs.get_mut(sub);
            r.sessions = r.sessions.saturating_sub(1);
        }
        let m = slab.map_mut(ms);
        m.count = m.count.saturating_sub(1);
        if !embedded && slab.rec(ms).separate_sessions() == 0 {
            self.mark_separate(slab, ms, false);
        }
        if slab.rec(ms).m.count == 0 {
            self.end_mapping(slab, ms, sub, force || s.closed_cleanly(), now);
        }
        deleted
    }

    /// Set or clear [`SEP_BIT`] in both endpoint entries of mapping `ms`: whether it has sessions
    /// in records of their own. Called when their number leaves or reaches zero (rare: most
    /// mappings have one session, embedded). The hint only steers prefetching; lookups decide by
    /// the record ([`Record::separate_sessions`]).
    ///
    /// The inside entry's bucket is the one the burst's lookup just read, so it changes at once.
    /// The outside one's is a line nobody prefetched: within a burst the change waits for its
    /// end, where the buckets of all queued changes are prefetched together, as for deferred
    /// inserts (a lookup meanwhile sees the old hint, which only costs it the early probe).
    /// Measured on the pipeline benchmark with 16 remotes per mapping, changing it at once cost
    /// new sessions about 5 %: a DRAM read per mapping, on the slow path.
    fn mark_separate(&mut self, slab: &Slab, ms: u32, on: bool) {
        let r = slab.rec(ms);
        let seed = self.cfg.seed;
        let (from, to) = if on { (0, SEP_BIT) } else { (SEP_BIT, 0) };
        let ok = self.index.replace(
            mapping::in_hash(seed, r.s.in_addr, r.s.in_port, r.m.proto),
            ms | M_IN | from,
            ms | M_IN | to,
        );
        debug_assert!(ok, "a mapping's inside endpoint entry");
        let out = (
            mapping::out_hash(seed, r.s.out_addr, r.s.out_port, r.m.proto),
            ms | M_OUT | from,
            ms | M_OUT | to,
        );
        if self.in_burst {
            // In order: a change made at once while an earlier one of the same entry waited would
            // look for a value the entry does not have yet.
            if self.n_marks == MAX_BURST {
                self.apply_marks::<crate::NoPrefetch>();
            }
            self.marks[self.n_marks] = out;
            self.n_marks += 1;
        } else {
            let ok = self.index.replace(out.0, out.1, out.2);
            debug_assert!(ok, "a mapping's outside endpoint entry");
        }
    }

    /// Apply the queued outside-endpoint hint changes in the order they were made, after
    /// prefetching their buckets with `P`. Also called before a mapping's entries are removed,
    /// which must find them by their current value.
    fn apply_marks<P: Prefetch>(&mut self) {
        if self.n_marks == 0 {
            return;
        }
        for &(h, _, _) in &self.marks[..self.n_marks] {
            P::prefetch(self.index.home_ref(h));
        }
        for j in 0..self.n_marks {
            let (h, from, to) = self.marks[j];
            let ok = self.index.replace(h, from, to);
            debug_assert!(ok, "a mapping's outside endpoint entry");
        }
        self.n_marks = 0;
    }

    /// The subscriber record a mapping (inside address `addr`, pool `pool`) belongs to: that of
    /// its inside address in its pool (which lives while the subscriber has a mapping, live or
    /// held).
    #[inline]
    fn subscriber_of(&self, addr: u32, pool: u8) -> Option<u32> {
        self.subs.find(sub_hash(self.cfg.seed, addr), addr, pool)
    }

    /// Mapping `ms` of subscriber `sub` (its record, `None` only were the table inconsistent) lost
    /// its last session: free its port now, or hold it (RFC 6888 REQ-8).
    fn end_mapping(&mut self, slab: &mut Slab, ms: u32, sub: Option<u32>, bypass: bool, now: u32) {
        let pool = slab.rec(ms).m.pool;
        if let Some(sub) = sub {
            let r = self.subs.get_mut(sub);
            r.mappings = r.mappings.saturating_sub(1);
        }
        // Deterministic ports belong to one subscriber for good (REQ-8 b): nobody else can get them.
        let skip = bypass || self.cfg.hold_down_s == 0 || self.det[pool as usize].is_some();
        if skip {
            self.release_mapping_of(slab, ms, sub, now);
        } else {
            let m = slab.map_mut(ms);
            m.flags |= HELD;
            m.count = now.saturating_add(self.cfg.hold_down_s);
            self.n_held += 1;
            if let Some(sub) = sub {
                self.subs.get_mut(sub).held += 1;
            }
        }
    }

    /// Undo mapping `ms` of subscriber `sub`, which a flow that then failed got from
    /// [`Core::mapping_for`] and left without sessions: a mapping made for it is freed at once (its
    /// port never carried a packet); a revived one goes back into the hold-down it was in, ending
    /// when it would have (RFC 6888 REQ-8 counts from the port's last use, which this flow was
    /// not).
    fn undo_mapping(
        &mut self,
        slab: &mut Slab,
        ms: u32,
        sub: Option<u32>,
        origin: Origin,
        now: u32,
    ) {
        self.end_mapping(slab, ms, sub, origin == Origin::Made, now);
        self.restore_hold_down(slab, ms, origin);
    }

    /// After `ms` went back into hold-down: if `origin` says it was revived from one, let it end
    /// when that one would have (the held record's `count` is its hold-down tick).
    fn restore_hold_down(&mut self, slab: &mut Slab, ms: u32, origin: Origin) {
        if let Origin::Revived { until } = origin
            && slab.rec(ms).is_map()
            && slab.rec(ms).is_held()
        {
            slab.map_mut(ms).count = until;
        }
    }

    /// Remove a mapping with no sessions and free its port (and its port block, if now empty).
    fn release_mapping(&mut self, slab: &mut Slab, ms: u32, now: u32) {
        let r = slab.rec(ms);
        let sub = self.subscriber_of(r.s.in_addr, r.m.pool);
        debug_assert!(sub.is_some(), "a mapping without its subscriber");
        self.release_mapping_of(slab, ms, sub, now);
    }

    /// [`Core::release_mapping`] for a mapping whose subscriber record is known to be `sub`.
    fn release_mapping_of(&mut self, slab: &mut Slab, ms: u32, sub: Option<u32>, now: u32) {
        let m = Mapping::of_record(slab.rec(ms));
        debug_assert!(
            !slab.get(ms).is_live(),
            "a mapping released with its session"
        );
        let seed = self.cfg.seed;
        self.apply_marks::<crate::NoPrefetch>();
        self.index.remove(
            mapping::in_hash(seed, m.in_addr, m.in_port, m.proto),
            ms | M_IN,
        );
        self.index.remove(
            mapping::out_hash(seed, m.out_addr, m.out_port, m.proto),
            ms | M_OUT,
        );
        slab.remove(ms);
        self.n_maps -= 1;
        if m.is_held() {
            self.n_held -= 1;
            if let Some(sub) = sub {
                let r = self.subs.get_mut(sub);
                r.held = r.held.saturating_sub(1);
            }
        }
        self.counters.add(Counter::MappingsDeleted, 1);
        self.event(now, EventKind::MappingDeleted(mapping_info(&m)));
        self.free_port(sub, m.in_addr, m.out_addr, m.proto, m.out_port, now);
        if let Some(sub) = sub {
            self.release_subscriber_if_idle(sub);
        }
    }

    /// Publish how many ports of `out_addr` are in use (for the control plane; on port changes only).
    #[inline]
    fn publish_ports(&self, out_addr: u32) {
        if let Some(a) = self.ports.addr_index(out_addr)
            && let Some(g) = self.addr_gauges.get(a)
        {
            use std::sync::atomic::Ordering::Relaxed;
            g.ports
                .store(u64::from(self.ports.ports_in_use(out_addr)), Relaxed);
            g.blocks.store(self.ports.blocks_held(a), Relaxed);
        }
    }

    /// Free a port of subscriber `sub` (its record; the address `sub_addr`), and its port block if
    /// now empty.
    fn free_port(
        &mut self,
        sub: Option<u32>,
        sub_addr: u32,
        out_addr: u32,
        proto: u8,
        port: u16,
        now: u32,
    ) {
        let Some(a) = self.ports.addr_index(out_addr) else {
            return;
        };
        let released = self.ports.release(a, proto, port);
        if let Some(Some(j)) = released {
            // The block is empty (nothing mapped or held in it): give it back.
            let set = self.ports.block_set(a, j);
            let owned = sub.is_some_and(|sub| self.subs.remove_block(sub, j));
            debug_assert!(owned, "emptied block {j} not owned by its subscriber");
            self.ports.put_block(a, j);
            self.counters.add(Counter::BlocksReleased, 1);
            self.event(
                now,
                EventKind::BlockReleased {
                    subscriber: sub_addr,
                    block: set,
                },
            );
        }
        self.publish_ports(out_addr);
    }

    fn release_subscriber_if_idle(&mut self, sub: u32) {
        let r = *self.subs.get(sub);
        if r.is_live() && r.is_idle() {
            self.subs.remove(sub, sub_hash(self.cfg.seed, r.addr));
        }
    }
}

/// Helpers shared by the shard tests and the behaviour tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::NoPrefetch;
    use crate::rules::{Pool, SnatRule};
    use wire::{Icmpv4Packet, Ipv4Addr, Ipv4Packet, TcpPacket, UdpPacket};

    pub const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    pub const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 12);
    pub const SRV: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    pub const SRV2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
    pub const POOL: [u32; 2] = [0xcb00_7101, 0xcb00_7102];

    pub fn subscribers_rule(pool: usize) -> SnatRule {
        SnatRule {
            prefix: 0x6440_0000,
            len: 10,
            pool,
            dst: None,
        }
    }

    /// A shard over `pools`, every subscriber of 100.64.0.0/10 on the first, with `cfg` (seed fixed).
    pub fn shard_of(pools: Vec<Pool>, cfg: ShardConfig) -> Shard {
        let rules = Rules::new(pools, vec![subscribers_rule(0)]).unwrap();
        Shard::new(
            ShardConfig {
                seed: 0xdead_beef_cafe,
                ..cfg
            },
            Arc::new(rules),
            Arc::new(Counters::default()),
            0,
        )
        .unwrap()
    }

    pub fn pool_with(lo: u16, hi: u16) -> Pool {
        Pool::new("p", POOL.to_vec(), lo, hi)
    }

    pub fn run(sh: &mut Shard, dir: Dir, pkts: &mut [Vec<u8>], now: u32) -> Vec<Verdict> {
        let mut v = vec![Verdict::Drop(DropReason::NoMbuf); pkts.len()];
        sh.process::<_, NoPrefetch>(dir, pkts, &mut v, now);
        v
    }

    pub fn one(sh: &mut Shard, dir: Dir, pkt: Vec<u8>, now: u32) -> (Verdict, Vec<u8>) {
        let mut b = [pkt];
        let v = run(sh, dir, &mut b, now);
        let [p] = b;
        (v[0], p)
    }

    /// (address, port or echo identifier) of the source.
    pub fn src_of(b: &[u8]) -> (u32, u16) {
        let ip = Ipv4Packet::new_checked(b).unwrap();
        (ip.src_addr_u32(), l4_ports(&ip).0)
    }

    /// (address, port or echo identifier) of the destination.
    pub fn dst_of(b: &[u8]) -> (u32, u16) {
        let ip = Ipv4Packet::new_checked(b).unwrap();
        (ip.dst_addr_u32(), l4_ports(&ip).1)
    }

    fn l4_ports(ip: &Ipv4Packet<&[u8]>) -> (u16, u16) {
        match ip.protocol() {
            ip_proto::TCP => {
                let t = TcpPacket::new_checked(ip.payload()).unwrap();
                (t.src_port(), t.dst_port())
            }
            ip_proto::UDP => {
                let u = UdpPacket::new_checked(ip.payload()).unwrap();
                (u.src_port(), u.dst_port())
            }
            _ => {
                let id = Icmpv4Packet::new_checked(ip.payload())
                    .unwrap()
                    .echo_ident();
                (id, id)
            }
        }
    }

    pub fn ttl_of(b: &[u8]) -> u8 {
        Ipv4Packet::new_checked(b).unwrap().ttl()
    }

    /// When the held mapping of outside endpoint (`addr`, `port`) ends its hold-down (`None`: no
    /// such mapping, or a live one).
    pub fn held_until(sh: &Shard, addr: u32, port: u16, proto: u8) -> Option<u32> {
        sh.find_mapping(addr, port, proto)
            .and_then(|m| m.held_until())
    }

    /// Run expiry as a worker loop would, one second at a time with a small budget, until `until`.
    pub fn tick(sh: &mut Shard, from: u32, until: u32) {
        for now in from..=until {
            while sh.expiry_due(now) {
                sh.expire(now, 64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::rewrite::testpkt::*;
    use crate::rules::{Filtering, Pool};
    use wire::{Ipv4Addr, Ipv4Packet, UdpPacket, icmp_type, tcp_flags as F};

    fn shard_with(max: u32, lo: u16, hi: u16) -> Shard {
        shard_of(
            vec![pool_with(lo, hi)],
            ShardConfig {
                max_sessions: max,
                ..ShardConfig::default()
            },
        )
    }

    fn shard() -> Shard {
        shard_with(1024, 1024, 65535)
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
        assert_eq!(sh.counters().get(Counter::MappingsCreated), 1);
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
    fn a_mappings_further_sessions_are_found_both_ways_within_bursts() {
        // One inside endpoint talking to eight servers: the first session is embedded in the
        // mapping, the other seven are records of their own. The first burst makes them all (no
        // entry exists at its stage 2); from the next one on they are found through the mapping's
        // hint (stage 2a), in both directions, and new sessions on the hinted mapping (whose early
        // 5-tuple probe misses) are made by the full lookup.
        let mut sh = shard();
        let servers: Vec<Ipv4Addr> = (0..8u8)
            .map(|i| Ipv4Addr::new(198, 51, 100, 20 + i))
            .collect();
        let out_burst = |servers: &[Ipv4Addr]| -> Vec<Vec<u8>> {
            servers
                .iter()
                .map(|&s| udp(SUB1, 5000, s, 53, b"q"))
                .collect()
        };
        let mut b = out_burst(&servers);
        let v = run(&mut sh, Dir::In2Out, &mut b, 0);
        assert!(v.iter().all(|v| *v == Verdict::Forward), "{v:?}");
        let (oa, op) = src_of(&b[0]);
        assert!(
            b.iter().all(|p| src_of(p) == (oa, op)),
            "one mapping for all eight"
        );
        assert_eq!(sh.session_count(), 8);
        assert_eq!(sh.hint_mismatches(), 0);
        for round in 0..2 {
            // Replies from all eight in one burst, and a burst of both old and repeated flows.
            let mut back: Vec<Vec<u8>> = servers
                .iter()
                .map(|&s| udp(s, 53, oa.into(), op, b"r"))
                .collect();
            let v = run(&mut sh, Dir::Out2In, &mut back, round);
            assert!(v.iter().all(|v| *v == Verdict::Forward), "{v:?}");
            assert!(back.iter().all(|p| dst_of(p) == (u32::from(SUB1), 5000)));
            let mut again = out_burst(&servers);
            again.extend(out_burst(&servers[..3]));
            let v = run(&mut sh, Dir::In2Out, &mut again, round);
            assert!(v.iter().all(|v| *v == Verdict::Forward), "{v:?}");
            assert!(again.iter().all(|p| src_of(p) == (oa, op)));
            assert_eq!(sh.session_count(), 8, "no session made twice");
        }
        // 2 × (7 replies + 7 + 2 repeats outbound): every further session found early.
        assert_eq!(sh.core.second_hits, 32);
        // New servers for the hinted mapping, beside known ones, in one burst each way.
        let more: Vec<Ipv4Addr> = (0..4u8)
            .map(|i| Ipv4Addr::new(198, 51, 100, 40 + i))
            .collect();
        let mut b = out_burst(&more);
        b.extend(out_burst(&servers[1..3]));
        let v = run(&mut sh, Dir::In2Out, &mut b, 1);
        assert!(v.iter().all(|v| *v == Verdict::Forward), "{v:?}");
        assert!(b.iter().all(|p| src_of(p) == (oa, op)));
        assert_eq!(sh.session_count(), 12);
        let mut back: Vec<Vec<u8>> = more
            .iter()
            .map(|&s| udp(s, 53, oa.into(), op, b"r"))
            .collect();
        let v = run(&mut sh, Dir::Out2In, &mut back, 1);
        assert!(v.iter().all(|v| *v == Verdict::Forward), "{v:?}");
        assert_eq!(sh.hint_mismatches(), 0);
        // Only the first server keeps talking: the others idle out, the hint goes with them, and
        // the embedded session carries on.
        for now in 2..=400 {
            if now % 60 == 0 {
                let (v, _) = one(
                    &mut sh,
                    Dir::In2Out,
                    udp(SUB1, 5000, servers[0], 53, b"k"),
                    now,
                );
                assert_eq!(v, Verdict::Forward);
            }
            while sh.expiry_due(now) {
                sh.expire(now, 64);
            }
        }
        assert_eq!(sh.session_count(), 1);
        assert_eq!(sh.hint_mismatches(), 0);
        let (v, r) = one(
            &mut sh,
            Dir::Out2In,
            udp(servers[0], 53, oa.into(), op, b"r"),
            400,
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(dst_of(&r), (u32::from(SUB1), 5000));
        // A new server gets the same mapping again (endpoint-independent), hint and all.
        let (v, o) = one(
            &mut sh,
            Dir::In2Out,
            udp(SUB1, 5000, servers[5], 53, b"q"),
            400,
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(src_of(&o), (oa, op));
        assert_eq!(sh.hint_mismatches(), 0);
        let (v, r) = one(
            &mut sh,
            Dir::Out2In,
            udp(servers[5], 53, oa.into(), op, b"r"),
            400,
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(dst_of(&r), (u32::from(SUB1), 5000));
    }

    /// Mapping records of `sh` (with their embedded session).
    fn mapping_slots(sh: &Shard) -> Vec<u32> {
        sh.slab
            .records()
            .filter(|(_, r)| r.is_map())
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether mapping `ms`'s outside endpoint entry holds exactly `value` (its slot and kind bits).
    fn out_entry_is(sh: &Shard, ms: u32, value: u32) -> bool {
        let r = sh.slab.rec(ms);
        let h = mapping::out_hash(sh.core.cfg.seed, r.s.out_addr, r.s.out_port, r.m.proto);
        sh.core.index.find(h, |x| x == value).is_some()
    }

    #[test]
    fn queued_hint_changes_keep_their_order_when_the_queue_overflows() {
        // More outside-endpoint changes in one burst than the queue holds, some of them undoing
        // one still queued (a full-NAT open that fails marks its client's mapping on, then off).
        let mut sh = shard();
        for p in 0..40u16 {
            let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 6000 + p, SRV, 53, b"x"), 0);
            assert_eq!(v, Verdict::Forward);
        }
        let maps = mapping_slots(&sh);
        assert_eq!(maps.len(), 40);
        let Shard { slab, core, .. } = &mut sh;
        core.in_burst = true;
        for &ms in &maps {
            core.mark_separate(slab, ms, true);
        }
        for &ms in &maps[..10] {
            core.mark_separate(slab, ms, false);
        }
        core.apply_marks::<crate::NoPrefetch>();
        core.in_burst = false;
        for (i, &ms) in maps.iter().enumerate() {
            let want = if i < 10 {
                ms | M_OUT
            } else {
                ms | M_OUT | SEP_BIT
            };
            assert!(out_entry_is(&sh, ms, want), "mapping {i}");
            assert!(
                !out_entry_is(&sh, ms, want ^ SEP_BIT),
                "mapping {i}: both values"
            );
        }
    }

    #[test]
    fn a_mapping_released_within_a_burst_takes_its_queued_hint_change_first() {
        // The last separate session of a mapping whose embedded one is gone ends within a burst
        // (its hint change queued), and the mapping is released at once: its outside entry must
        // be removed by the value it has after the change.
        let mut sh = shard_with(64, 1024, 65535);
        sh.core.cfg.hold_down_s = 0;
        for srv in [SRV, SRV2] {
            let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 7000, srv, 53, b"x"), 0);
            assert_eq!(v, Verdict::Forward);
        }
        let ms = mapping_slots(&sh)[0];
        let first = sh.lookup(
            Dir::In2Out,
            &crate::FlowKey {
                src: u32::from(SUB1),
                dst: u32::from(SRV),
                sport: 7000,
                dport: 53,
                proto: ip_proto::UDP,
            },
        );
        assert_eq!(first, Some(ms), "the first session is embedded");
        let second = sh
            .lookup(
                Dir::In2Out,
                &crate::FlowKey {
                    src: u32::from(SUB1),
                    dst: u32::from(SRV2),
                    sport: 7000,
                    dport: 53,
                    proto: ip_proto::UDP,
                },
            )
            .expect("the second session");
        assert!(out_entry_is(&sh, ms, ms | M_OUT | SEP_BIT));
        assert_eq!(sh.delete_slot(ms), 1);
        let Shard { slab, core, .. } = &mut sh;
        core.in_burst = true;
        assert_eq!(core.delete_session(slab, second, 0, true), 1);
        core.in_burst = false;
        assert_eq!(core.n_marks, 0, "applied by the release");
        assert_eq!(sh.session_count(), 0);
        assert_eq!(sh.ports_in_use(), 0);
        assert_eq!(sh.index_residue(), 0, "no entry left behind");
    }

    #[test]
    fn a_revived_mapping_whose_flow_finds_the_table_full_keeps_its_hold_down_end() {
        // Three records: SUB2's mapping, SUB1's held one, SUB1's other mapping. SUB1's old
        // endpoint then sends to SUB2's outside endpoint: the held mapping is revived, but the
        // hairpinned session needs a record of its own and there is none.
        let mut sh = shard_with(3, 1024, 65535);
        let (v, o2) = one(&mut sh, Dir::In2Out, udp(SUB2, 6000, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward);
        let (x2, p2) = src_of(&o2);
        let (v, o1) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward);
        let (x1, p1) = src_of(&o1);
        // SUB2 keeps talking; SUB1's session idles out at 300 and its port is held.
        for now in 1..=310 {
            if now % 60 == 0 {
                let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB2, 6000, SRV, 53, b"k"), now);
                assert_eq!(v, Verdict::Forward);
            }
            while sh.expiry_due(now) {
                sh.expire(now, 64);
            }
        }
        let until = held_until(&sh, x1, p1, ip_proto::UDP);
        assert!(until.is_some_and(|u| u >= 420), "{until:?}");
        let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 5001, SRV, 53, b"x"), 310);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(sh.record_count(), 3);
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            udp(SUB1, 5000, Ipv4Addr::from(x2), p2, b"hairpin"),
            320,
        );
        assert_eq!(v, Verdict::Drop(DropReason::TableFull));
        assert_eq!(
            held_until(&sh, x1, p1, ip_proto::UDP),
            until,
            "held again, until the hold-down it was in would have ended"
        );
        assert_eq!(sh.counters().get(Counter::MappingsDeleted), 0);
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
        // Address-and-port-dependent filtering: only the exact remote endpoint of a session gets in.
        // (Under the default endpoint-independent filtering a second remote port is admitted; see
        // behaviour_tests::filtering_*.)
        let mut sh = shard_of(
            vec![Pool {
                filtering: Filtering::AddressAndPortDependent,
                ..pool_with(1024, 65535)
            }],
            ShardConfig::default(),
        );
        let (v, _) = one(
            &mut sh,
            Dir::Out2In,
            udp(SRV, 53, POOL[0].into(), 40000, b"x"),
            0,
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoSession));
        let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"q"), 0);
        let (oa, op) = src_of(&out);
        let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 54, oa.into(), op, b"x"), 0);
        assert_eq!(v, Verdict::Drop(DropReason::Filtered));
        assert_eq!(sh.counters().drops(DropReason::NoSession), 1);
        assert_eq!(sh.counters().drops(DropReason::Filtered), 1);
        assert_eq!(sh.session_count(), 1, "no session was created for it");
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
        // Closed by FIN both ways: the port skips the hold-down.
        assert_eq!(sh.ports_in_use(), 0);
        assert_eq!(sh.mapping_count(), 0);
    }

    /// The TCP state machine as a table: (state before, direction, flags) → state after, and the
    /// idle timeout that state gets (RFC 5382 REQ-5, RFC 7857 section 2.2).
    #[test]
    fn tcp_state_machine_table() {
        use tcp_state::*;
        let t = Timeouts::default();
        let (long, short) = (t.tcp_established, t.tcp_transitory);
        let rows: &[(u8, Dir, u8, u8, u32)] = &[
            // Opening from inside: the answer establishes, anything else from inside waits.
            (SYN_SENT, Dir::Out2In, F::SYN | F::ACK, ESTABLISHED, long),
            (SYN_SENT, Dir::In2Out, F::ACK, SYN_SENT, short),
            (SYN_SENT, Dir::In2Out, F::SYN, SYN_SENT, short),
            (
                SYN_SENT,
                Dir::Out2In,
                F::RST | F::ACK,
                SYN_SENT | RST,
                short,
            ),
            // Opening from outside (endpoint-independent filtering, simultaneous open).
            (SYN_RCVD, Dir::In2Out, F::SYN | F::ACK, ESTABLISHED, long),
            (SYN_RCVD, Dir::Out2In, F::ACK, SYN_RCVD, short),
            // Established: data keeps it; FIN or RST moves it to the short timeout.
            (ESTABLISHED, Dir::In2Out, F::ACK | F::PSH, ESTABLISHED, long),
            (ESTABLISHED, Dir::Out2In, F::ACK, ESTABLISHED, long),
            (
                ESTABLISHED,
                Dir::In2Out,
                F::FIN | F::ACK,
                ESTABLISHED | FIN_IN,
                short,
            ),
            (
                ESTABLISHED,
                Dir::Out2In,
                F::FIN | F::ACK,
                ESTABLISHED | FIN_OUT,
                short,
            ),
            (
                ESTABLISHED | FIN_IN,
                Dir::Out2In,
                F::FIN | F::ACK,
                ESTABLISHED | FIN_IN | FIN_OUT,
                short,
            ),
            (ESTABLISHED, Dir::Out2In, F::RST, ESTABLISHED | RST, short),
            (
                ESTABLISHED,
                Dir::In2Out,
                F::RST | F::ACK,
                ESTABLISHED | RST,
                short,
            ),
            // A closed tuple reopened by a new SYN starts over on the same mapping.
            (ESTABLISHED | RST, Dir::In2Out, F::SYN, SYN_SENT, short),
            (
                ESTABLISHED | FIN_IN | FIN_OUT,
                Dir::Out2In,
                F::SYN,
                SYN_RCVD,
                short,
            ),
        ];
        for &(before, dir, flags, after, timeout) in rows {
            for flag_bits in [0, INBOUND, HAIRPIN] {
                let mut s = Session {
                    proto: ip_proto::TCP,
                    state: before | flag_bits,
                    ..Session::default()
                };
                track_tcp(&mut s, dir, flags);
                assert_eq!(
                    s.state,
                    after | flag_bits,
                    "{before:#04x} {dir:?} flags {flags:#04x}"
                );
                assert_eq!(s.timeout(&t), timeout, "timeout after {after:#04x}");
            }
        }
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
        // An RST is not a proper close: the port is held.
        assert_eq!(sh.ports_in_use(), 1);
        assert_eq!(sh.held_count(), 1);
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
    fn icmp_echo_that_cannot_open_a_session_is_refused() {
        let mut sh = shard();
        // An echo reply from inside answers nothing we forwarded.
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            icmp_echo(SUB1, SRV, icmp_type::ECHO_REPLY, 7),
            0,
        );
        assert_eq!(v, Verdict::Drop(DropReason::IcmpUnsupported));
        // An echo request from outside to an identifier nobody uses.
        let (v, _) = one(
            &mut sh,
            Dir::Out2In,
            icmp_echo(SRV, Ipv4Addr::from(POOL[0]), icmp_type::ECHO_REQUEST, 7),
            0,
        );
        assert_eq!(v, Verdict::Drop(DropReason::NoSession));
        assert_eq!(sh.session_count(), 0);
        assert_eq!(sh.mapping_count(), 0);
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
        // Bounded work per call; keep calling as a worker loop would (many calls per second).
        let mut now = 0;
        while sh.session_count() > 0 {
            now += 1;
            while sh.expiry_due(now) {
                sh.expire(now, 64);
            }
            assert!(now < 700, "sessions never drained");
        }
        // The last session was created at 299: not one second early, not one second late.
        assert_eq!(now, 300 + 299, "drained at the wrong time");
        assert_eq!(sh.counters().get(Counter::SessionsCurrent), 0);
        assert_eq!(sh.counters().get(Counter::SessionsDeleted), 300);
        assert_eq!(sh.counters().get(Counter::UdpSessionsDeleted), 300);
        // The ports are held for the hold-down (120 s after each mapping ended), then all come back.
        assert!(sh.ports_in_use() > 0, "ports reused before the hold-down");
        while sh.ports_in_use() > 0 {
            now += 1;
            tick(&mut sh, now, now);
            assert!(now < 300 + 299 + 130, "ports never came back");
        }
        assert_eq!(now, 300 + 299 + 120, "hold-down cut short or overrun");
        assert_eq!(sh.counters().get(Counter::PortsInUse), 0);
        assert_eq!(sh.counters().get(Counter::MappingsCurrent), 0);
        assert_eq!(sh.counters().get(Counter::SubscribersCurrent), 0);
        assert_eq!(sh.mapping_count(), 0);
        assert_eq!(sh.subscriber_count(), 0);
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
        assert_eq!(
            sh.subscriber_count(),
            1,
            "the refused subscriber left no record"
        );
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
    fn bad_configurations_are_refused() {
        let rules = Arc::new(Rules::new(vec![pool_with(1024, 65535)], vec![]).unwrap());
        let c = Arc::new(Counters::default());
        for cfg in [
            ShardConfig {
                max_sessions: 0,
                ..ShardConfig::default()
            },
            ShardConfig {
                max_sessions: 1 << 30,
                ..ShardConfig::default()
            },
            ShardConfig {
                max_mappings: 1 << 30,
                ..ShardConfig::default()
            },
        ] {
            assert!(matches!(
                Shard::new(cfg, rules.clone(), c.clone(), 0),
                Err(NatError::BadCapacity(_))
            ));
        }
        assert_eq!(
            Shard::new(
                ShardConfig {
                    worker: 2,
                    workers: 2,
                    ..ShardConfig::default()
                },
                rules,
                c.clone(),
                0
            )
            .err(),
            Some(NatError::BadWorker {
                worker: 2,
                workers: 2
            })
        );
        // Blocks of 32768 ports leave worker 1 of 2 with none on a 1024-65535 range.
        let blocks = Arc::new(
            Rules::new(
                vec![Pool {
                    allocation: crate::PortAllocation::Blocks {
                        size: 32768,
                        max_blocks: 1,
                    },
                    ..pool_with(1024, 65535)
                }],
                vec![],
            )
            .unwrap(),
        );
        assert!(matches!(
            Shard::new(
                ShardConfig {
                    worker: 1,
                    workers: 2,
                    ..ShardConfig::default()
                },
                blocks,
                c,
                0
            ),
            Err(NatError::BadBlockSize { .. })
        ));
    }
}
