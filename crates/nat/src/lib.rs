//! The NAT core: a per-core connection-tracking shard and carrier-grade NAPT (RFC 4787, 5382, 5508, 6888,
//! 7422, 7857) for TCP, UDP and ICMP echo.
//!
//! Written against the [`PacketBatch`] trait rather than DPDK mbufs, so everything here is tested with
//! plain `cargo test` over `Vec<u8>` packets; the data plane implements the trait for mbufs.
//!
//! One [`Shard`] belongs to one worker core and is never shared: no locks, no atomics beyond the
//! single-writer [`Counters`], no allocation after construction (every table is sized from
//! [`ShardConfig`] up front). A burst is processed in stages (parse and hash every packet, prefetch the
//! index buckets, probe and prefetch the sessions — or, for a likely new flow, the mapping bucket and
//! then the subscriber and mapping records the slow path reads — then verify and rewrite), so the cache misses of up to 32 packets overlap instead of being paid one after
//! another. New flows' outside keys, whose buckets depend on a port chosen in the last stage, are
//! queued; their buckets are prefetched together at the end of the burst and the keys stored in
//! the next burst (the `index` module).
//!
//! # Behaviour
//!
//! * **Mapping** is endpoint-independent for every protocol: an inside address:port (ICMP: identifier)
//!   keeps one outside address:port per pool for every destination while it has sessions
//!   ([`Mapping`]). **Filtering** is per pool ([`Filtering`]): endpoint-independent by default, or
//!   address-dependent, or address-and-port-dependent; an inbound packet the filter admits opens a
//!   session on the mapping. An inbound TCP SYN is admitted by the same filter (RFC 5382: simultaneous
//!   open); other segments without a session are `tcp_invalid`.
//! * **Paired pooling**: all mappings of a subscriber (inside address, per pool) use one outside address
//!   while it has any. The choice is a hash of the subscriber address, or the next address of the pool
//!   with room when that one is full.
//! * **Hairpinning**: a packet from inside to one of our outside endpoints is translated on both ends,
//!   filtered like any inbound packet, and comes back as [`Verdict::Hairpin`] (or
//!   [`Verdict::Handoff`] when another worker owns the target port). The receiver sees the sender's
//!   outside address and port.
//! * **Port allocation** per pool ([`PortAllocation`]): random (default), preservation, parity, port
//!   blocks per subscriber, or deterministic ranges ([`deterministic_forward`] /
//!   [`deterministic_reverse`]). Every mode hands out only ports in blocks this worker owns
//!   ([`port_owner`]).
//! * **Limits** per subscriber ([`Limits`]) and table capacities refuse new flows (`quota_exceeded`,
//!   `out_of_ports`, `table_full`, with an event); existing mappings are never evicted.
//! * **Hold-down**: a freed port stays unused for `hold_down_s` (120 s) unless its TCP connection closed
//!   with FIN both ways, the pool is deterministic, or the same inside endpoint comes back for it.
//! * **Exclusions** ([`Exclusion`]): listed destinations, and their return traffic, are forwarded
//!   untranslated ([`Verdict::ForwardUntranslated`]).
//! * **Events** ([`Event`]) go to a bounded per-shard ring the control plane drains
//!   ([`Shard::drain_events`]); when it is full new events are dropped and counted.
//! * **ICMP errors** (RFC 5508 section 4: destination unreachable, fragmentation needed, time
//!   exceeded, parameter problem, source quench) in both directions find their session from the
//!   quoted packet; the outer address, the quoted header, the quoted transport checksum and the ICMP
//!   checksum are rewritten incrementally. They never open, refresh or change the state of a session;
//!   one between two subscribers is hairpinned. Out2in, the error must be addressed to the outside
//!   address the quoted packet came from.
//! * **Fragments** (RFC 4787 REQ-14): [`Reassembly`] (virtual reassembly, run by the data plane in
//!   front of the shard) learns each datagram's ports from its first fragment and holds fragments that
//!   come before it; the shard translates a first fragment like a whole packet and a later one, by the
//!   ports it is handed ([`PacketBatch::later_fragment`]), in its IPv4 header only. Later fragments never
//!   open sessions.
//!
//! * **Destination NAT** ([`DnatRule`], [`DnatTable`]): port forwarding, address-only 1:1 and
//!   identity mappings, and services whose backends are chosen per new flow by weighted random,
//!   weighted round-robin or Maglev, optionally with client-IP affinity. A rule's session records its
//!   backend, so every packet of a flow reaches the backend of its first packet whatever the rules
//!   say later; [`Shard::set_dnat`] swaps a new table in between bursts, and removed backends stay
//!   listed, retired, while their sessions drain (or until the control plane cuts them). Without a
//!   pool the client's address is kept; with one (full NAT) the client gets an endpoint of the pool
//!   like a subscriber, in a client session whose inside key packets from outside match. A
//!   subscriber reaching a rule's address is hairpinned with its own outside endpoint as the source.
//!   A 1:1 host's own outbound flows leave under the rule's address with their ports unchanged.
//!   Destination NAT sessions have no mapping; their owner is [`client_owner`] of the client.
//!
//! # Memory
//!
//! Sessions and mappings share one slab of 32-byte records with one index, two 6-byte entries per
//! record (ten to a 64-byte bucket) at a load of at most ½ (three with address-dependent
//! filtering): **57.6 B** per record (70.4 B). A 1:1 flow (a mapping whose only session is
//! embedded in its record) is one record; each further session of a mapping, each destination NAT
//! session and each held mapping is one more. `max_sessions` counts records. Per subscriber: 28 B
//! (aligned to 32) plus one index entry (12.8 B) = **44.8 B**, plus 2 B × the largest `max_blocks`
//! of any port-block pool. Indexes are sized for their capacity exactly (to within one 64-byte
//! bucket), not rounded up to a power of two, so these figures hold for any configured capacity.
//! `max_subscribers` defaults to `max_sessions`, so the default worst case is 102.4 B per record
//! of capacity; set it lower when the number of subscribers is known (with port blocks it matters
//! most). `max_mappings` (default `max_sessions`) only
//! limits how many of the records may be mappings. Port maps: 24 KiB per pool address; the event
//! ring 32 B per entry.
//!
//! # Limitations
//!
//! A running shard takes a new policy ([`Shard::set_policy`]), but a pool keeps its index (slot) and
//! its shape (ports, filtering, allocation; it may gain addresses) while the shard has state for it;
//! subscriber records hold at most the start-time `max_blocks`, and the index was sized at start
//! for two or three keys per record. Two
//! destination NAT rules sharing a backend cannot both take a flow from the same client endpoint at
//! the same time (`dnat_conflict`: the replies would be indistinguishable; a finished TCP
//! connection gives way to a new SYN; there is no source-port remapping). An ICMP error from a third party about
//! a destination NAT flow reaches the flow's worker only with one worker or by chance (ownership is
//! by the client's address), and errors about full-NAT flows are not translated (dropped
//! `icmp_error_unmatched` from outside; a backend's error is not turned towards the client), so
//! path MTU discovery between a full-NAT client and a backend relies on the hosts' own probing; a
//! full-NAT backend's reply is checked against the inside port's MTU, not the outside one. Every
//! new full-NAT client address takes a pool port (as a subscriber would): spoofed sources can use
//! up a full-NAT pool, so give full-NAT rules a pool of their own. Fragmented ICMP errors are refused, and
//! so are errors about an echo between two subscribers. An ICMP echo is
//! hairpinned to the mapping whose outside identifier equals the sender's translated identifier (the
//! same rule as for an echo arriving from outside), so ICMP hairpinning reaches a target only when the
//! identifiers line up (port preservation makes that predictable); TCP and UDP have no such limit.
//! Unsolicited inbound SYNs are dropped silently (RFC 5382 REQ-4 allows it; no ICMP is sent), and so are
//! flows refused at a limit (no ICMP type 3 code 13). A subscriber whose traffic SNAT rules split over
//! several pools (by destination) has a record, paired address and limits per pool. Timeouts are taken
//! as given: the RFC 4787 REQ-5 floor (UDP ≥ 120 s) is for the configuration layer to enforce, so that
//! tests can use short ones. At most 255 pools.

#![forbid(unsafe_code)]

mod counters;
mod deterministic;
mod dnat;
mod events;
mod frag;
mod index;
mod key;
mod lb;
mod mapping;
mod ports;
mod query;
mod rewrite;
mod rules;
mod session;
mod shard;
mod subscriber;
mod sweep;

#[cfg(test)]
mod behaviour_tests;
#[cfg(test)]
mod dnat_tests;
#[cfg(test)]
mod icmp_frag_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod policy_tests;

/// A deterministic PRNG for tests (xorshift64*): seeded runs that are reproducible and differ from
/// each other.
#[cfg(test)]
pub(crate) struct TestRng(pub u64);

#[cfg(test)]
impl TestRng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A draw in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub use counters::{Counter, Counters, DropReason, SNAT_RULE_COUNTERS};
pub use deterministic::{deterministic_forward, deterministic_reverse};
pub use dnat::{
    Backend, BackendCounts, BackendEntry, DnatCounters, DnatIds, DnatRule, DnatTable,
    MAX_BACKEND_IDS, OnRemoval, RuleEntry, Scheduler, client_owner, subscriber_owner,
};
pub use events::{Event, EventKind, Limit, MappingInfo, SessionInfo};
pub use frag::{FragClass, FragConfig, FragKey, L4Ids, Reassembly};
pub use index::Index;
pub use key::{FlowKey, Hash};
pub use lb::{
    Affinity, MAGLEV_SIZE, MAX_BACKENDS, Maglev, RR_MAX_PERIOD, RoundRobin, WeightedRandom,
    backend_key, flow_hash,
};
pub use mapping::Mapping;
pub use ports::{BLOCK_PORTS, PortAllocator, PortSet, port_owner};
pub use query::{SessionFilter, SessionRecord};
pub use rules::{
    Exclusion, Filtering, MAX_POOLS, Pool, PortAllocation, Prefix, Rules, SnatRule, paired_address,
};
pub use session::{CtState, HAIRPIN, INBOUND, REPLIED, Session, tcp_state};
pub use shard::{
    Dir, Limits, MAX_BURST, Memory, PolicyParams, Shard, ShardConfig, Verdict, check_rules,
};
pub use subscriber::Subscriber;
pub use sweep::SLOTS_PER_SECOND as EXPIRY_SLOTS_PER_SECOND;

/// Slab slots a worker's [`Shard::expire`] call looks at at most (each of the two sweeps: sessions,
/// mappings). The sweeps' pace is set by the clock (a full pass of up to
/// [`EXPIRY_SLOTS_PER_SECOND`] slots per second), so a worker calling once per poll loop spends a
/// second's quota in a few milliseconds of its second. A call with nothing due costs a fraction of
/// a microsecond (under 1 ns per slot); one that ends 256 sessions and releases 256 mappings tens
/// of microseconds, which only mass expiry (a table going idle at once) asks for.
pub const EXPIRY_BUDGET: u32 = 256;

/// Sessions (or held mappings) [`Shard::expire_with`] ends together, the lines their deletions
/// touch prefetched first: one burst's worth, as in [`Shard::process`].
pub const EXPIRY_BATCH: usize = 32;

/// A hint about a large allocation, called with its address and length before the memory is first
/// written: the data plane passes `dpdk::advise_hugepages` so the flow slab and its index are
/// backed by transparent huge pages. This crate stays free of `unsafe` and of DPDK.
pub type MemAdvice = fn(addr: usize, len: usize) -> bool;

/// A vector of `n` copies of `fill`, its memory handed to `advise` before it is first written.
pub(crate) fn advised_vec<T: Clone>(n: usize, fill: T, advise: Option<MemAdvice>) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    if let Some(advise) = advise {
        advise(v.as_ptr() as usize, n * std::mem::size_of::<T>());
    }
    v.resize(n, fill);
    v
}

/// Idle timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    /// RFC 5382 REQ-5 (2 h 4 min established, 4 min transitory), RFC 4787 REQ-5 (5 min UDP),
    /// RFC 5508 REQ-1 (60 s ICMP query).
    fn default() -> Self {
        Timeouts {
            tcp_established: 7440,
            tcp_transitory: 240,
            udp: 300,
            icmp: 60,
        }
    }
}

/// A burst of IPv4 packets the translator can read and rewrite in place.
///
/// `packet_mut(i)` is the frame from the first byte of the IPv4 header to the end of the buffer (trailing
/// Ethernet padding included: the translator bounds itself by the IPv4 total length).
pub trait PacketBatch {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn packet(&self, i: usize) -> &[u8];
    fn packet_mut(&mut self, i: usize) -> &mut [u8];
    /// For a later fragment (non-zero offset), the transport identifiers its datagram's first fragment
    /// carried, as virtual reassembly ([`Reassembly`]) found them; `None` for everything else. A later
    /// fragment without them is dropped (`fragment_malformed`).
    fn later_fragment(&self, _i: usize) -> Option<L4Ids> {
        None
    }
}

/// Batches of owned buffers, used by tests and benchmarks.
impl PacketBatch for [Vec<u8>] {
    fn len(&self) -> usize {
        <[Vec<u8>]>::len(self)
    }
    fn packet(&self, i: usize) -> &[u8] {
        &self[i]
    }
    fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self[i]
    }
}

/// Cache prefetch hint, supplied by the data plane (DPDK's `rte_prefetch0`) so this crate stays free of
/// `unsafe`. A prefetch never faults and never changes program semantics.
pub trait Prefetch {
    fn prefetch<T>(r: &T);
}

/// No prefetching: for tests, and a baseline for benchmarks.
pub struct NoPrefetch;

impl Prefetch for NoPrefetch {
    #[inline(always)]
    fn prefetch<T>(_: &T) {}
}

/// Errors building rules or a shard. Each names the pool or rule at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatError {
    #[error(
        "table capacities (sessions, mappings, subscribers) must be between 1 and 2^30-1, got {0}"
    )]
    BadCapacity(u64),
    #[error("snat rule {rule} names pool index {pool}, but only {pools} pools exist")]
    UnknownPool {
        rule: usize,
        pool: usize,
        pools: usize,
    },
    #[error("pool {0:?} has no addresses")]
    EmptyPool(String),
    #[error("pool {pool:?}: port range {lo}-{hi} is empty or starts at 0")]
    BadPortRange { pool: String, lo: u16, hi: u16 },
    #[error("worker {worker} is out of range for {workers} workers")]
    BadWorker { worker: u16, workers: u16 },
    #[error("{0} pools configured, at most 255 are supported")]
    TooManyPools(usize),
    #[error("outside address {} is in more than one pool (again in pool {pool:?})", std::net::Ipv4Addr::from(*.addr))]
    DuplicateAddress { addr: u32, pool: String },
    #[error(
        "pool {pool:?}: port block size {size} must be a positive multiple of 64 that fits the port \
         range with at least one block per worker"
    )]
    BadBlockSize { pool: String, size: u16 },
    #[error("pool {0:?}: max_blocks must be at least 1")]
    BadMaxBlocks(String),
    #[error("{what}: prefix length {len} is above 32")]
    BadPrefix { what: String, len: u8 },
    #[error(
        "pool {pool:?}: deterministic NAT needs a port range for each of {subscribers} inside addresses, \
         but its addresses and ports hold at most {capacity}"
    )]
    DeterministicTooSmall {
        pool: String,
        subscribers: u64,
        capacity: u64,
    },
    #[error(
        "snat rule {rule}: its source prefix is not inside the deterministic prefix of pool {pool:?}"
    )]
    DeterministicRuleOutsidePrefix { rule: usize, pool: String },
    #[error("pool {0:?} does not use deterministic allocation")]
    NotDeterministic(String),
    #[error("destination NAT: {0}")]
    Dnat(String),
    #[error("policy change: {0}")]
    PolicyChange(String),
}
