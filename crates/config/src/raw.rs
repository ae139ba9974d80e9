//! The YAML schema exactly as written, before validation.
//!
//! Every struct denies unknown fields: a misspelt optional key (`promiscous: true`) would
//! otherwise silently fall back to its default, which on a NAT means quietly wrong behaviour.
//! Values that have a syntax of their own (prefixes, ranges, addresses) are parsed here, so
//! their errors carry a line and column; rules that relate fields to each other live in
//! `validate`.

use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::defaults as d;
use crate::eal::EalLogLevel;
use crate::net::{AddressRange, Ipv4Net, MacAddr, PortRange};
use crate::{LogFormat, Role};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cgnatd config mapping (eal, ports, pools, ...)"
)]
pub(crate) struct RawConfig {
    pub eal: RawEal,
    #[serde(default)]
    pub workers: Option<RawWorkers>,
    pub ports: Vec<RawPort>,
    pub pools: Vec<RawPool>,
    #[serde(default)]
    pub snat: Vec<RawSnat>,
    #[serde(default)]
    pub exclusions: Vec<RawExclusion>,
    #[serde(default)]
    pub nat: RawNat,
    #[serde(default)]
    pub neighbour: RawNeighbour,
    #[serde(default)]
    pub mgmt: RawMgmt,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default = "stats_interval")]
    pub stats_interval: u32,
    #[serde(default)]
    pub dataplane: RawDataplane,
}

fn stats_interval() -> u32 {
    d::STATS_INTERVAL_SECS
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the eal mapping (lcores, main_lcore, memory, file_prefix, log_level, extra_args)"
)]
pub(crate) struct RawEal {
    #[serde(default, deserialize_with = "string_or_int")]
    pub lcores: Option<String>,
    #[serde(default)]
    pub main_lcore: Option<u32>,
    #[serde(default)]
    pub memory: RawMemory,
    #[serde(default = "file_prefix")]
    pub file_prefix: String,
    #[serde(default)]
    pub log_level: EalLogLevel,
    #[serde(default)]
    pub extra_args: Vec<String>,
}

fn file_prefix() -> String {
    d::FILE_PREFIX.to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a memory mapping (hugepages, size_mb)"
)]
pub(crate) struct RawMemory {
    pub hugepages: bool,
    pub size_mb: Option<u32>,
}

impl Default for RawMemory {
    fn default() -> Self {
        RawMemory {
            hugepages: d::HUGEPAGES,
            size_mb: None,
        }
    }
}

/// `workers: 2` or `workers: [1, 2]`. Written by hand instead of `#[serde(untagged)]`
/// because an untagged enum buffers the value and loses the YAML location and path, which
/// would leave the operator with "data did not match any variant" and no line number.
#[derive(Debug)]
pub(crate) enum RawWorkers {
    Count(u16),
    Lcores(Vec<u32>),
}

impl<'de> Deserialize<'de> for RawWorkers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawWorkers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a worker count or a list of worker lcore ids")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawWorkers, E> {
                u16::try_from(v)
                    .map(RawWorkers::Count)
                    .map_err(|_| E::custom(format!("worker count {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawWorkers, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("worker count {v} is negative"))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawWorkers, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(RawWorkers::Lcores(ids))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Accepts `lcores: "0-1"` as well as `lcores: 3`, which YAML reads as an integer.
fn string_or_int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an lcore list such as \"0-1\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    deserializer.deserialize_any(V)
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a port mapping (name, role, device, address, ...)"
)]
pub(crate) struct RawPort {
    pub name: String,
    pub role: Role,
    pub device: RawDevice,
    pub address: Ipv4Net,
    #[serde(default = "mtu")]
    pub mtu: u16,
    #[serde(default)]
    pub promiscuous: bool,
    #[serde(default = "rx_desc")]
    pub rx_desc: u16,
    #[serde(default = "tx_desc")]
    pub tx_desc: u16,
    #[serde(default, deserialize_with = "opt_ipv4")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub neighbours: Vec<RawStaticNeighbour>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a neighbour mapping (ip, mac)")]
pub(crate) struct RawStaticNeighbour {
    #[serde(deserialize_with = "ipv4")]
    pub ip: Ipv4Addr,
    #[serde(deserialize_with = "mac")]
    pub mac: MacAddr,
}

fn mac<'de, D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
    deserializer.deserialize_str(QuotingVisitor::<MacAddr>::new(
        "MAC address",
        "; expected six hex octets such as 02:00:00:00:00:01",
    ))
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "the dataplane mapping (idle_sleep_us, idle_polls, handoff_ring, inject_panic)"
)]
pub(crate) struct RawDataplane {
    pub idle_sleep_us: u32,
    pub idle_polls: u32,
    pub handoff_ring: u32,
    pub inject_panic: Option<RawInjectPanic>,
}

impl Default for RawDataplane {
    fn default() -> Self {
        RawDataplane {
            idle_sleep_us: d::IDLE_SLEEP_US,
            idle_polls: d::IDLE_POLLS,
            handoff_ring: d::HANDOFF_RING,
            inject_panic: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "the inject_panic mapping (worker, after_ms)"
)]
pub(crate) struct RawInjectPanic {
    pub worker: u32,
    pub after_ms: u32,
}

fn mtu() -> u16 {
    d::MTU
}
fn rx_desc() -> u16 {
    d::RX_DESC
}
fn tx_desc() -> u16 {
    d::TX_DESC
}

// std's address parse errors do not quote the input; these wrappers do, so the message
// shows the bad value next to its line and column.
fn ipv4<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv4Addr, D::Error> {
    deserializer.deserialize_str(QuotingVisitor::<Ipv4Addr>::new("IPv4 address", ""))
}

fn opt_ipv4<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Ipv4Addr>, D::Error> {
    ipv4(deserializer).map(Some)
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_str(QuotingVisitor::<SocketAddr>::new(
        "socket address",
        "; expected ip:port, e.g. 127.0.0.1:50051",
    ))
}

/// Parses a string with `FromStr`, replacing the error with one that quotes the input.
struct QuotingVisitor<T> {
    what: &'static str,
    hint: &'static str,
    _t: PhantomData<T>,
}

impl<T> QuotingVisitor<T> {
    fn new(what: &'static str, hint: &'static str) -> Self {
        QuotingVisitor {
            what,
            hint,
            _t: PhantomData,
        }
    }
}

impl<T: FromStr> Visitor<'_> for QuotingVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an {}", self.what)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse()
            .map_err(|_| E::custom(format!("invalid {} `{v}`{}", self.what, self.hint)))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a device mapping with vdev or pci")]
pub(crate) struct RawDevice {
    #[serde(default)]
    pub vdev: Option<String>,
    #[serde(default)]
    pub pci: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a route mapping (prefix, via)")]
pub(crate) struct RawRoute {
    pub prefix: Ipv4Net,
    #[serde(deserialize_with = "ipv4")]
    pub via: Ipv4Addr,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool mapping (name, addresses or masquerade, ports, filtering, allocation)"
)]
pub(crate) struct RawPool {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<AddressRange>,
    /// MASQUERADE: the outside port's own address is the pool (no `addresses`).
    #[serde(default)]
    pub masquerade: bool,
    #[serde(default)]
    pub ports: PortRange,
    #[serde(default)]
    pub filtering: crate::types::Filtering,
    #[serde(default)]
    pub allocation: RawAllocation,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an allocation mapping (mode, block_size, max_blocks, inside, ports_per_subscriber)"
)]
pub(crate) struct RawAllocation {
    #[serde(default)]
    pub mode: crate::types::AllocationMode,
    #[serde(default)]
    pub block_size: Option<u16>,
    #[serde(default)]
    pub max_blocks: Option<u16>,
    #[serde(default)]
    pub inside: Option<Ipv4Net>,
    #[serde(default)]
    pub ports_per_subscriber: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an exclusion mapping (destination, source)"
)]
pub(crate) struct RawExclusion {
    pub destination: Ipv4Net,
    #[serde(default)]
    pub source: Option<Ipv4Net>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an snat rule mapping (match, destination, pool)"
)]
pub(crate) struct RawSnat {
    #[serde(rename = "match")]
    pub prefix: Ipv4Net,
    #[serde(default)]
    pub destination: Option<Ipv4Net>,
    pub pool: String,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "the nat mapping (max_sessions, max_mappings, max_subscribers, timeouts, limits, hold_down, udp_inbound_refresh, event_ring, fragments, dnat)"
)]
pub(crate) struct RawNat {
    pub max_sessions: u32,
    pub max_mappings: u32,
    pub max_subscribers: u32,
    pub timeouts: RawTimeouts,
    pub limits: RawLimits,
    pub hold_down: u32,
    pub udp_inbound_refresh: bool,
    pub event_ring: u32,
    pub fragments: RawFragments,
    pub dnat: Vec<RawDnat>,
}

/// One destination NAT rule. Ports and weights are read wider than they are stored so that an
/// out-of-range value is reported by validation with the rule's name, not as a type error.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a dnat rule mapping (name, address, protocol, port, backends, scheduler, affinity_timeout, snat, on_backend_removal)"
)]
pub(crate) struct RawDnat {
    pub name: String,
    #[serde(deserialize_with = "ipv4")]
    pub address: Ipv4Addr,
    #[serde(default)]
    pub protocol: Option<DnatProtocol>,
    #[serde(default)]
    pub port: Option<u32>,
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub scheduler: Option<DnatScheduler>,
    #[serde(default)]
    pub affinity_timeout: Option<u32>,
    #[serde(default)]
    pub snat: Option<String>,
    #[serde(default)]
    pub on_backend_removal: Option<DnatOnRemoval>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a backend mapping (address, port, weight)"
)]
pub(crate) struct RawBackend {
    #[serde(deserialize_with = "ipv4")]
    pub address: Ipv4Addr,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default = "dnat_weight")]
    pub weight: u32,
}

fn dnat_weight() -> u32 {
    d::DNAT_WEIGHT
}

/// `nat.dnat[].protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DnatProtocol {
    Tcp,
    Udp,
}

impl DnatProtocol {
    pub fn name(self) -> &'static str {
        match self {
            DnatProtocol::Tcp => "tcp",
            DnatProtocol::Udp => "udp",
        }
    }
}

/// `nat.dnat[].scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DnatScheduler {
    Random,
    RoundRobin,
    Maglev,
}

/// `nat.dnat[].on_backend_removal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DnatOnRemoval {
    Drain,
    Cut,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a fragments mapping (max_datagrams, max_held, timeout_ms)"
)]
pub(crate) struct RawFragments {
    pub max_datagrams: u32,
    pub max_held: u32,
    pub timeout_ms: u32,
}

impl Default for RawFragments {
    fn default() -> Self {
        RawFragments {
            max_datagrams: d::FRAG_MAX_DATAGRAMS,
            max_held: d::FRAG_MAX_HELD,
            timeout_ms: d::FRAG_TIMEOUT_MS,
        }
    }
}

impl Default for RawNat {
    fn default() -> Self {
        RawNat {
            max_sessions: d::MAX_SESSIONS,
            max_mappings: 0,
            max_subscribers: 0,
            timeouts: RawTimeouts::default(),
            limits: RawLimits::default(),
            hold_down: d::HOLD_DOWN_SECS,
            udp_inbound_refresh: false,
            event_ring: d::EVENT_RING,
            fragments: RawFragments::default(),
            dnat: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a limits mapping (max_sessions_per_subscriber, max_ports_per_subscriber, icmp_unreachable)"
)]
pub(crate) struct RawLimits {
    pub max_sessions_per_subscriber: u32,
    pub max_ports_per_subscriber: u32,
    pub icmp_unreachable: bool,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_sessions_per_subscriber: d::MAX_SESSIONS_PER_SUBSCRIBER,
            max_ports_per_subscriber: d::MAX_PORTS_PER_SUBSCRIBER,
            icmp_unreachable: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a timeouts mapping of integer seconds (tcp_established, tcp_transitory, udp, icmp) and enforce_rfc_minimums"
)]
pub(crate) struct RawTimeouts {
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub udp: u32,
    pub icmp: u32,
    pub enforce_rfc_minimums: bool,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            tcp_established: d::TCP_ESTABLISHED_SECS,
            tcp_transitory: d::TCP_TRANSITORY_SECS,
            udp: d::UDP_SECS,
            icmp: d::ICMP_SECS,
            enforce_rfc_minimums: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "the neighbour mapping (reachable_time, retransmit_ms)"
)]
pub(crate) struct RawNeighbour {
    pub reachable_time: u32,
    pub retransmit_ms: u32,
}

impl Default for RawNeighbour {
    fn default() -> Self {
        RawNeighbour {
            reachable_time: d::REACHABLE_TIME_SECS,
            retransmit_ms: d::RETRANSMIT_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "the mgmt mapping (listen, tokens, tls, state_file)"
)]
pub(crate) struct RawMgmt {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    pub tokens: RawTokens,
    pub state_file: Option<std::path::PathBuf>,
    pub tls: Option<RawTls>,
}

impl Default for RawMgmt {
    fn default() -> Self {
        RawMgmt {
            listen: d::MGMT_LISTEN,
            tokens: RawTokens::default(),
            state_file: None,
            tls: None,
        }
    }
}

/// Every field optional here so that a missing `cert` or `key` is reported by `validate` under
/// its own name (`mgmt.tls.key`), like the other rules, rather than as a serde "missing field".
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a tls mapping (cert, key, client_ca: paths of PEM files)"
)]
pub(crate) struct RawTls {
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a tokens mapping (read_write, read_only: paths of token files)"
)]
pub(crate) struct RawTokens {
    pub read_write: Option<std::path::PathBuf>,
    pub read_only: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "the logging mapping (level, format, nat_events)"
)]
pub(crate) struct RawLogging {
    pub level: String,
    pub format: LogFormat,
    pub nat_events: bool,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: d::LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
            nat_events: true,
        }
    }
}
