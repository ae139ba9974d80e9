//! Per-core counters: one writer (the worker that owns the shard), any number of readers.
//!
//! Every counter is an `AtomicU64` updated with a relaxed load + store rather than a read-modify-write:
//! there is exactly one writer per core, so no `lock`-prefixed instruction is needed on the hot path, and
//! readers (the management plane) only need a recent value, never a consistent cut across counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a packet was dropped. Indexes the per-core drop counters; never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Frame shorter than an Ethernet header.
    FrameTruncated,
    /// Neither IPv4 nor ARP (IPv6, LLDP, VLAN-tagged, ...).
    UnsupportedEthertype,
    /// ARP that is not Ethernet/IPv4, or truncated.
    ArpMalformed,
    /// Shorter than an IPv4 header, or than its IHL says.
    Ipv4Truncated,
    Ipv4BadVersion,
    /// IHL below 5 words.
    Ipv4BadIhl,
    /// Total length below the header length or beyond the frame.
    Ipv4BadTotalLength,
    Ipv4BadChecksum,
    /// UDP length field below 8 or beyond the IP payload (includes zero-length UDP).
    UdpBadLength,
    /// TCP header truncated or with a data offset below 5 words.
    TcpMalformed,
    /// ICMP header truncated.
    IcmpMalformed,
    /// A protocol the translator does not handle (not TCP, UDP or ICMP).
    UnsupportedProtocol,
    /// A fragment that cannot be translated safely: a first fragment too short to hold the whole
    /// transport header (RFC 1858 tiny fragments), a TCP fragment at offset 8 (header overlap), a first
    /// fragment whose ports contradict an earlier one of the same datagram, a fragmented ICMP error.
    FragmentMalformed,
    /// ICMP message types other than echo request/reply.
    IcmpUnsupported,
    /// TTL would reach zero here; an ICMP time-exceeded is sent back when possible.
    TtlExceeded,
    /// Inbound packet that matches no session (unsolicited).
    NoSession,
    /// TCP segment with no session that is not a SYN, or with impossible flags.
    TcpInvalid,
    /// No SNAT rule matches the inside source address.
    NoSnatRule,
    /// The subscriber's outside address has no free port.
    OutOfPorts,
    /// The session table is full.
    TableFull,
    /// No route to the destination.
    NoRoute,
    /// Next hop has no ARP entry yet (a request has been sent).
    NeighbourUnresolved,
    /// Unicast frame for another MAC address (promiscuous ports see these).
    NotForUs,
    /// The TX ring was full; the mbuf was freed.
    TxFull,
    /// Multi-segment mbuf (jumbo frames chained) that the translator cannot rewrite in place.
    MultiSegment,
    /// Packet addressed to the appliance itself that it does not answer (only ICMP echo is answered).
    LocalUnhandled,
    /// Could not allocate an mbuf for a generated packet (ARP, ICMP).
    NoMbuf,
    /// The handoff ring to the worker owning the flow was full.
    HandoffFull,
    /// A per-subscriber limit (sessions, ports, port blocks or the deterministic port range) is reached
    /// (RFC 6888 REQ-4/5). Existing mappings are never evicted to make room.
    QuotaExceeded,
    /// Inbound packet to a live mapping that its pool's filtering (address-dependent or
    /// address-and-port-dependent) rejects.
    Filtered,
    /// A non-first fragment held while waiting for its datagram's first fragment, which did not arrive
    /// within `nat.fragments.timeout_ms`.
    FragmentTimeout,
    /// A non-first fragment arrived before its first fragment and the per-core hold buffer was full.
    FragmentHoldFull,
    /// No room to track another fragmented datagram (`nat.fragments.max_datagrams` in flight).
    FragmentTableFull,
    /// An ICMP error (RFC 5508) whose quoted packet matches no session, or quotes a packet that
    /// cannot be ours (too short, an error about an error, a fragment).
    IcmpErrorUnmatched,
    /// Larger than the egress port's MTU and not fragmentable: DF set (answered with ICMP
    /// fragmentation needed and the MTU) or IP options present.
    MtuExceeded,
    /// A new flow to a destination NAT rule none of whose backends takes new flows (every weight 0,
    /// or the rule was removed while its old flows drain).
    NoBackend,
    /// A new destination NAT flow whose backend already has a session with the same tuple (the same
    /// client port towards two rules that share a backend): the replies could not be told apart.
    DnatConflict,
    /// Still waiting when the data plane stopped: for a neighbour's ARP reply, for its datagram's
    /// first fragment, or in a handoff ring that its worker no longer polled.
    Shutdown,
}

impl DropReason {
    pub const COUNT: usize = DropReason::Shutdown as usize + 1;
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::FrameTruncated,
        DropReason::UnsupportedEthertype,
        DropReason::ArpMalformed,
        DropReason::Ipv4Truncated,
        DropReason::Ipv4BadVersion,
        DropReason::Ipv4BadIhl,
        DropReason::Ipv4BadTotalLength,
        DropReason::Ipv4BadChecksum,
        DropReason::UdpBadLength,
        DropReason::TcpMalformed,
        DropReason::IcmpMalformed,
        DropReason::UnsupportedProtocol,
        DropReason::FragmentMalformed,
        DropReason::IcmpUnsupported,
        DropReason::TtlExceeded,
        DropReason::NoSession,
        DropReason::TcpInvalid,
        DropReason::NoSnatRule,
        DropReason::OutOfPorts,
        DropReason::TableFull,
        DropReason::NoRoute,
        DropReason::NeighbourUnresolved,
        DropReason::NotForUs,
        DropReason::TxFull,
        DropReason::MultiSegment,
        DropReason::LocalUnhandled,
        DropReason::NoMbuf,
        DropReason::HandoffFull,
        DropReason::QuotaExceeded,
        DropReason::Filtered,
        DropReason::FragmentTimeout,
        DropReason::FragmentHoldFull,
        DropReason::FragmentTableFull,
        DropReason::IcmpErrorUnmatched,
        DropReason::MtuExceeded,
        DropReason::NoBackend,
        DropReason::DnatConflict,
        DropReason::Shutdown,
    ];

    /// Stable snake_case name used by the management API and `cgnatctl`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::FrameTruncated => "frame_truncated",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::ArpMalformed => "arp_malformed",
            DropReason::Ipv4Truncated => "ipv4_truncated",
            DropReason::Ipv4BadVersion => "ipv4_bad_version",
            DropReason::Ipv4BadIhl => "ipv4_bad_ihl",
            DropReason::Ipv4BadTotalLength => "ipv4_bad_total_length",
            DropReason::Ipv4BadChecksum => "ipv4_bad_checksum",
            DropReason::UdpBadLength => "udp_bad_length",
            DropReason::TcpMalformed => "tcp_malformed",
            DropReason::IcmpMalformed => "icmp_malformed",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::FragmentMalformed => "fragment_malformed",
            DropReason::IcmpUnsupported => "icmp_unsupported",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::NoSession => "no_session",
            DropReason::TcpInvalid => "tcp_invalid",
            DropReason::NoSnatRule => "no_snat_rule",
            DropReason::OutOfPorts => "out_of_ports",
            DropReason::TableFull => "table_full",
            DropReason::NoRoute => "no_route",
            DropReason::NeighbourUnresolved => "neighbour_unresolved",
            DropReason::NotForUs => "not_for_us",
            DropReason::TxFull => "tx_full",
            DropReason::MultiSegment => "multi_segment",
            DropReason::LocalUnhandled => "local_unhandled",
            DropReason::NoMbuf => "no_mbuf",
            DropReason::HandoffFull => "handoff_full",
            DropReason::QuotaExceeded => "quota_exceeded",
            DropReason::Filtered => "filtered",
            DropReason::FragmentTimeout => "fragment_timeout",
            DropReason::FragmentHoldFull => "fragment_hold_full",
            DropReason::FragmentTableFull => "fragment_table_full",
            DropReason::IcmpErrorUnmatched => "icmp_error_unmatched",
            DropReason::MtuExceeded => "mtu_exceeded",
            DropReason::NoBackend => "no_backend",
            DropReason::DnatConflict => "dnat_conflict",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// Named per-core event counters other than drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Counter {
    RxPackets,
    TxPackets,
    In2outPackets,
    Out2inPackets,
    SessionsCreated,
    SessionsDeleted,
    SessionsCurrent,
    TcpSessionsCreated,
    UdpSessionsCreated,
    IcmpSessionsCreated,
    PortsInUse,
    ArpRequestsSent,
    ArpRepliesSent,
    IcmpErrorsSent,
    LocalEchoReplies,
    /// Iterations of the worker loop.
    Loops,
    /// Iterations that received a packet, or left expiry work for the next one (the worker never
    /// naps after these).
    BusyLoops,
    /// Packets passed to the worker that owns their flow.
    HandoffOut,
    /// Packets received from other workers.
    HandoffIn,
    /// Sleeps taken by an idle worker (`dataplane.idle_sleep_us`).
    IdleSleeps,
    TcpSessionsDeleted,
    UdpSessionsDeleted,
    IcmpSessionsDeleted,
    /// Sessions opened by an inbound packet to an existing mapping (endpoint-independent or
    /// address-dependent filtering), hairpinned ones included.
    InboundSessionsCreated,
    /// Endpoint-independent mappings (inside address:port ↔ outside address:port per protocol).
    MappingsCreated,
    MappingsDeleted,
    /// Mappings alive or in hold-down.
    MappingsCurrent,
    /// Subscribers (inside address per pool) with at least one mapping alive or held.
    SubscribersCurrent,
    /// Port blocks (port block allocation) currently owned by subscribers.
    BlocksInUse,
    BlocksAllocated,
    BlocksReleased,
    /// Outside ports kept out of use by the hold-down after their mapping ended (RFC 6888 REQ-8).
    PortsHeld,
    /// Packets translated on both ends and sent back inside (hairpinning).
    HairpinPackets,
    /// Packets forwarded untranslated by a no-NAT exclusion.
    UntranslatedPackets,
    /// Events lost because the event ring was full.
    EventsDropped,
    /// ICMP errors (RFC 5508) translated by the session of the packet they quote.
    IcmpErrorsTranslated,
    /// IPv4 fragments translated (first and later ones).
    FragmentsTranslated,
    /// Non-first fragments that arrived before their first fragment and were held for it.
    FragmentsHeld,
    /// Fragments this appliance made of packets larger than the egress MTU (DF clear).
    FragmentsCreated,
    /// Copies of a received ARP frame that another worker did not get (no mbuf for the copy, or
    /// that worker's handoff ring full). Not a packet drop: the frame itself was handled; that
    /// worker learns the neighbour from a later ARP.
    ArpCopiesLost,
}

impl Counter {
    pub const COUNT: usize = Counter::ArpCopiesLost as usize + 1;
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::RxPackets,
        Counter::TxPackets,
        Counter::In2outPackets,
        Counter::Out2inPackets,
        Counter::SessionsCreated,
        Counter::SessionsDeleted,
        Counter::SessionsCurrent,
        Counter::TcpSessionsCreated,
        Counter::UdpSessionsCreated,
        Counter::IcmpSessionsCreated,
        Counter::PortsInUse,
        Counter::ArpRequestsSent,
        Counter::ArpRepliesSent,
        Counter::IcmpErrorsSent,
        Counter::LocalEchoReplies,
        Counter::Loops,
        Counter::BusyLoops,
        Counter::HandoffOut,
        Counter::HandoffIn,
        Counter::IdleSleeps,
        Counter::TcpSessionsDeleted,
        Counter::UdpSessionsDeleted,
        Counter::IcmpSessionsDeleted,
        Counter::InboundSessionsCreated,
        Counter::MappingsCreated,
        Counter::MappingsDeleted,
        Counter::MappingsCurrent,
        Counter::SubscribersCurrent,
        Counter::BlocksInUse,
        Counter::BlocksAllocated,
        Counter::BlocksReleased,
        Counter::PortsHeld,
        Counter::HairpinPackets,
        Counter::UntranslatedPackets,
        Counter::EventsDropped,
        Counter::IcmpErrorsTranslated,
        Counter::FragmentsTranslated,
        Counter::FragmentsHeld,
        Counter::FragmentsCreated,
        Counter::ArpCopiesLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::RxPackets => "rx_packets",
            Counter::TxPackets => "tx_packets",
            Counter::In2outPackets => "in2out_packets",
            Counter::Out2inPackets => "out2in_packets",
            Counter::SessionsCreated => "sessions_created",
            Counter::SessionsDeleted => "sessions_deleted",
            Counter::SessionsCurrent => "sessions_current",
            Counter::TcpSessionsCreated => "tcp_sessions_created",
            Counter::UdpSessionsCreated => "udp_sessions_created",
            Counter::IcmpSessionsCreated => "icmp_sessions_created",
            Counter::PortsInUse => "ports_in_use",
            Counter::ArpRequestsSent => "arp_requests_sent",
            Counter::ArpRepliesSent => "arp_replies_sent",
            Counter::IcmpErrorsSent => "icmp_errors_sent",
            Counter::LocalEchoReplies => "local_echo_replies",
            Counter::Loops => "loops",
            Counter::BusyLoops => "busy_loops",
            Counter::HandoffOut => "handoff_out",
            Counter::HandoffIn => "handoff_in",
            Counter::IdleSleeps => "idle_sleeps",
            Counter::TcpSessionsDeleted => "tcp_sessions_deleted",
            Counter::UdpSessionsDeleted => "udp_sessions_deleted",
            Counter::IcmpSessionsDeleted => "icmp_sessions_deleted",
            Counter::InboundSessionsCreated => "inbound_sessions_created",
            Counter::MappingsCreated => "mappings_created",
            Counter::MappingsDeleted => "mappings_deleted",
            Counter::MappingsCurrent => "mappings_current",
            Counter::SubscribersCurrent => "subscribers_current",
            Counter::BlocksInUse => "blocks_in_use",
            Counter::BlocksAllocated => "blocks_allocated",
            Counter::BlocksReleased => "blocks_released",
            Counter::PortsHeld => "ports_held",
            Counter::HairpinPackets => "hairpin_packets",
            Counter::UntranslatedPackets => "untranslated_packets",
            Counter::EventsDropped => "events_dropped",
            Counter::IcmpErrorsTranslated => "icmp_errors_translated",
            Counter::FragmentsTranslated => "fragments_translated",
            Counter::FragmentsHeld => "fragments_held",
            Counter::FragmentsCreated => "fragments_created",
            Counter::ArpCopiesLost => "arp_copies_lost",
        }
    }
}

/// One core's counters. Allocate one per worker (`Arc<Counters>`), so no two cores share a cache line.
#[derive(Debug)]
pub struct Counters {
    drops: [AtomicU64; DropReason::COUNT],
    values: [AtomicU64; Counter::COUNT],
    /// Ports in use per outside address (all protocols), in the shard's address order. The shard
    /// keeps its own reference and updates the gauges when a port is taken or freed; the mutex only
    /// guards replacing the whole set when a policy change adds or drops addresses (between bursts)
    /// and readers taking a reference, never a per-packet step.
    addresses: Mutex<AddressGauges>,
    /// Per SNAT rule (by position, the first [`SNAT_RULE_COUNTERS`]): sessions it opened and new
    /// flows it matched but could not open (limits, ports, table). Like `iptables -t nat -L -v`,
    /// whose NAT rules also see only a connection's first packet. Zeroed when the SNAT rules change.
    rule_opened: [AtomicU64; SNAT_RULE_COUNTERS],
    rule_refused: [AtomicU64; SNAT_RULE_COUNTERS],
}

/// SNAT rules counted individually; later ones only in the totals.
pub const SNAT_RULE_COUNTERS: usize = 256;

/// One outside address's gauges, written by its shard on port and block changes.
#[derive(Debug)]
pub(crate) struct AddrGauge {
    pub addr: u32,
    pub ports: AtomicU64,
    pub blocks: AtomicU64,
}

/// Per-address gauges, in the shard's address order.
pub(crate) type AddressGauges = Arc<[AddrGauge]>;

impl Default for Counters {
    fn default() -> Self {
        Counters {
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            addresses: Mutex::new(Arc::from(Vec::new())),
            rule_opened: std::array::from_fn(|_| AtomicU64::new(0)),
            rule_refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Counters {
    /// Install a new set of per-address port gauges with their current values, replacing the old
    /// set; the shard writes through the returned reference.
    pub(crate) fn install_addresses(&self, addrs: Vec<(u32, u64, u64)>) -> AddressGauges {
        let set: AddressGauges = addrs
            .into_iter()
            .map(|(addr, ports, blocks)| AddrGauge {
                addr,
                ports: AtomicU64::new(ports),
                blocks: AtomicU64::new(blocks),
            })
            .collect();
        match self.addresses.lock() {
            Ok(mut g) => *g = Arc::clone(&set),
            Err(poisoned) => *poisoned.into_inner() = Arc::clone(&set),
        }
        set
    }

    fn gauges(&self) -> AddressGauges {
        match self.addresses.lock() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Ports in use per outside address (address in host order), as last published by the worker.
    pub fn ports_by_address(&self) -> Vec<(u32, u64)> {
        self.gauges()
            .iter()
            .map(|g| (g.addr, g.ports.load(Ordering::Relaxed)))
            .collect()
    }

    /// Port blocks held by subscribers per outside address (port block allocation only).
    pub fn blocks_by_address(&self) -> Vec<(u32, u64)> {
        self.gauges()
            .iter()
            .map(|g| (g.addr, g.blocks.load(Ordering::Relaxed)))
            .collect()
    }

    /// Per SNAT rule position: (sessions opened, new flows refused), for the first `n` rules.
    pub fn snat_rules(&self, n: usize) -> Vec<(u64, u64)> {
        (0..n.min(SNAT_RULE_COUNTERS))
            .map(|i| {
                (
                    self.rule_opened[i].load(Ordering::Relaxed),
                    self.rule_refused[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    #[inline]
    pub(crate) fn count_rule(&self, rule: usize, opened: bool) {
        let set = if opened {
            &self.rule_opened
        } else {
            &self.rule_refused
        };
        if let Some(c) = set.get(rule) {
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Start the per-rule counters over (the SNAT rules changed, so positions mean other rules).
    pub(crate) fn reset_rules(&self) {
        for c in self.rule_opened.iter().chain(&self.rule_refused) {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Single-writer increment: only the owning core may call the mutating methods.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.count_drops(reason, 1);
    }

    #[inline]
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        let c = &self.drops[reason as usize];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, counter: Counter, n: u64) {
        let c = &self.values[counter as usize];
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn sub(&self, counter: Counter, n: u64) {
        let c = &self.values[counter as usize];
        c.store(c.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn set(&self, counter: Counter, v: u64) {
        self.values[counter as usize].store(v, Ordering::Relaxed);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize].load(Ordering::Relaxed)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// All counters by name, for export.
    pub fn snapshot_counters(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .map(|c| (c.name(), self.get(*c)))
            .collect()
    }

    /// All drop counters by reason name, for export.
    pub fn snapshot_drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops(*r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_tables_are_complete_and_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} out of order", r.name());
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{} out of order", c.name());
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            DropReason::COUNT,
            "drop reason names must be unique"
        );
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::COUNT, "counter names must be unique");
        for name in DropReason::ALL
            .iter()
            .map(|r| r.name())
            .chain(Counter::ALL.iter().map(|c| c.name()))
        {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name} is not snake_case"
            );
        }
    }

    #[test]
    fn counters_accumulate_per_reason() {
        let c = Counters::default();
        c.count_drop(DropReason::NoSession);
        c.count_drops(DropReason::NoSession, 4);
        c.add(Counter::SessionsCurrent, 3);
        c.sub(Counter::SessionsCurrent, 1);
        assert_eq!(c.drops(DropReason::NoSession), 5);
        assert_eq!(c.drops(DropReason::TableFull), 0);
        assert_eq!(c.get(Counter::SessionsCurrent), 2);
        let snap = c.snapshot_drops();
        assert!(snap.contains(&("no_session", 5)));
    }
}
