//! Validated domain types. Everything here has passed `validate`: prefixes are networks,
//! references between sections are indices, times are `Duration`s.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::defaults as d;
use crate::net::Ipv4Net;

/// Which side of the NAT a port faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Subscribers: sources here are translated.
    Inside,
    /// The public side: pool addresses are used here.
    Outside,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Inside => "inside",
            Role::Outside => "outside",
        })
    }
}

/// How DPDK finds the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A virtual device, passed as `--vdev <spec>`.
    Vdev { spec: String },
    /// A PCI function, passed as `-a <addr>`; `addr` is normalised to lower case, the form
    /// DPDK uses for the ethdev name.
    Pci { addr: String },
}

impl Device {
    /// The ethdev name DPDK gives this device, for `rte_eth_dev_get_port_by_name`. Port ids
    /// depend on probe order (PCI ports are probed in bus order, not `-a` order), so the
    /// dataplane must look ports up by this name rather than assume an id.
    pub fn port_name(&self) -> &str {
        match self {
            Device::Vdev { spec } => spec.split(',').next().unwrap_or(spec),
            Device::Pci { addr } => addr,
        }
    }
}

/// One network port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCfg {
    pub name: String,
    pub role: Role,
    pub device: Device,
    /// Our address on this port (answered in ARP, used as ICMP error source).
    pub address: Ipv4Addr,
    /// The connected subnet, host bits cleared.
    pub prefix: Ipv4Net,
    pub mtu: u16,
    pub promiscuous: bool,
    pub rx_desc: u16,
    pub tx_desc: u16,
    /// Default next hop out of this port (at most one port has one).
    pub gateway: Option<Ipv4Addr>,
    pub routes: Vec<Route>,
    /// Neighbours with a fixed MAC: never expire, never replaced by ARP.
    pub neighbours: Vec<StaticNeighbour>,
}

/// A neighbour configured by hand, for next hops that do not answer ARP (traffic generators) or to
/// pin a router's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticNeighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// Worker loop tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataplaneCfg {
    /// Sleep taken by a worker after `idle_polls` consecutive empty polls; zero never sleeps.
    pub idle_sleep: Duration,
    pub idle_polls: u32,
    /// Capacity of each inter-worker handoff ring (packets).
    pub handoff_ring: u32,
    /// Testing only: make one worker panic this long after it starts, to check that monitoring
    /// and failover notice a stopped worker.
    pub inject_panic: Option<InjectPanic>,
}

/// `dataplane.inject_panic`: which worker panics, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectPanic {
    /// Worker index (0-based).
    pub worker: u16,
    /// Time from the worker's start.
    pub after: Duration,
}

impl Default for DataplaneCfg {
    fn default() -> Self {
        DataplaneCfg {
            idle_sleep: Duration::from_micros(u64::from(d::IDLE_SLEEP_US)),
            idle_polls: d::IDLE_POLLS,
            handoff_ring: d::HANDOFF_RING,
            inject_panic: None,
        }
    }
}

/// A static route: `prefix` is reached through the neighbour `via` on the owning port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub prefix: Ipv4Net,
    pub via: Ipv4Addr,
}

/// A public address pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Inclusive address ranges, sorted, non-overlapping, with adjacent ranges merged.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Inclusive range of outside ports (and ICMP identifiers) handed out from each address.
    pub port_lo: u16,
    pub port_hi: u16,
    pub filtering: Filtering,
    pub allocation: Allocation,
    /// MASQUERADE: `ranges` is the outside port's address, shared with the appliance itself.
    pub masquerade: bool,
}

/// Which inbound packets reach an existing mapping (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Any outside host (RFC 6888 REQ-7; games, VoIP and WebRTC depend on it).
    #[default]
    EndpointIndependent,
    /// Hosts the mapping has sent to (any of their ports).
    AddressDependent,
    /// Exactly the endpoints the mapping has sent to.
    AddressAndPortDependent,
}

/// `pools[].allocation.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationMode {
    #[default]
    Random,
    Preserve,
    Parity,
    Blocks,
    Deterministic,
}

/// How outside ports are chosen for new mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allocation {
    /// Random over the range (RFC 6056; RFC 6888 REQ-15: hard to guess).
    #[default]
    Random,
    /// Keep the inside port when free, random otherwise.
    Preserve,
    /// Random with the inside port's parity (RFC 4787 REQ-3/4).
    Parity,
    /// Port blocks per subscriber: `block_size` ports each, at most `max_blocks`.
    Blocks { block_size: u16, max_blocks: u16 },
    /// Deterministic NAT (RFC 7422) for the subscribers of `inside`.
    Deterministic {
        inside: Ipv4Net,
        ports_per_subscriber: u16,
    },
}

/// A destination forwarded without translation (RFC 6888 REQ-6), optionally only for some sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    pub destination: Ipv4Net,
    pub source: Option<Ipv4Net>,
}

/// Per-subscriber limits (RFC 6888 REQ-4/5); 0 = unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions_per_subscriber: u32,
    pub max_ports_per_subscriber: u32,
    /// Answer a refused new flow with ICMP destination unreachable, code 13 (administratively
    /// prohibited); off by default: silent drops leak nothing about the limits to a scanning host.
    pub icmp_unreachable: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions_per_subscriber: d::MAX_SESSIONS_PER_SUBSCRIBER,
            max_ports_per_subscriber: d::MAX_PORTS_PER_SUBSCRIBER,
            icmp_unreachable: false,
        }
    }
}

impl Pool {
    /// Every address in the pool, ascending.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(lo, hi)| (u32::from(lo)..=u32::from(hi)).map(Ipv4Addr::from))
    }

    /// Number of addresses.
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|&(lo, hi)| u64::from(u32::from(hi)) - u64::from(u32::from(lo)) + 1)
            .sum()
    }

    /// True only for a pool built by hand without ranges; validation never produces one.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= ip && ip <= hi)
    }

    /// Number of ports per address.
    pub fn ports_per_address(&self) -> u32 {
        u32::from(self.port_hi).saturating_sub(u32::from(self.port_lo)) + 1
    }
}

/// Source NAT rule: inside sources in `prefix` are translated to addresses of
/// `pools[pool]`. Rules are tried in order, first match wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatRule {
    pub prefix: Ipv4Net,
    /// Only towards these destinations, when set.
    pub destination: Option<Ipv4Net>,
    /// Index into `Config::pools`.
    pub pool: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatCfg {
    /// Session table capacity per worker.
    pub max_sessions: u32,
    /// Mapping and subscriber table capacities per worker; 0 = `max_sessions`.
    pub max_mappings: u32,
    pub max_subscribers: u32,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// How long a freed outside port stays unused (RFC 6888 REQ-8); zero disables.
    pub hold_down: Duration,
    /// Whether inbound UDP refreshes a session's timer (RFC 4787 REQ-6 makes it optional).
    pub udp_inbound_refresh: bool,
    /// Capacity of each worker's event ring; 0 records no events.
    pub event_ring: u32,
    pub fragments: FragmentsCfg,
}

/// Virtual reassembly of IPv4 fragments, per worker and side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentsCfg {
    pub max_datagrams: u32,
    pub max_held: u32,
    pub timeout: Duration,
}

impl Default for FragmentsCfg {
    fn default() -> Self {
        FragmentsCfg {
            max_datagrams: d::FRAG_MAX_DATAGRAMS,
            max_held: d::FRAG_MAX_HELD,
            timeout: Duration::from_millis(u64::from(d::FRAG_TIMEOUT_MS)),
        }
    }
}

impl Default for NatCfg {
    fn default() -> Self {
        NatCfg {
            max_sessions: d::MAX_SESSIONS,
            max_mappings: 0,
            max_subscribers: 0,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            hold_down: secs(d::HOLD_DOWN_SECS),
            udp_inbound_refresh: false,
            event_ring: d::EVENT_RING,
            fragments: FragmentsCfg::default(),
        }
    }
}

/// Idle timeouts per protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_established: Duration,
    /// TCP sessions that are opening (SYN seen) or closing (FIN/RST seen).
    pub tcp_transitory: Duration,
    pub udp: Duration,
    /// ICMP query (echo) sessions.
    pub icmp: Duration,
    /// Whether the RFC floors were enforced (false: a lab or test config went below them).
    pub rfc_minimums: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_established: secs(d::TCP_ESTABLISHED_SECS),
            tcp_transitory: secs(d::TCP_TRANSITORY_SECS),
            udp: secs(d::UDP_SECS),
            icmp: secs(d::ICMP_SECS),
            rfc_minimums: true,
        }
    }
}

/// ARP cache behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourCfg {
    /// How long a resolved entry is trusted before it is re-resolved.
    pub reachable_time: Duration,
    /// Interval between ARP requests while an entry is unresolved.
    pub retransmit: Duration,
}

impl Default for NeighbourCfg {
    fn default() -> Self {
        NeighbourCfg {
            reachable_time: secs(d::REACHABLE_TIME_SECS),
            retransmit: Duration::from_millis(u64::from(d::RETRANSMIT_MS)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtCfg {
    /// Address of the gRPC server.
    pub listen: SocketAddr,
    /// Files holding the bearer tokens (read by cgnatd at start); none: no access control.
    pub read_write_token: Option<std::path::PathBuf>,
    pub read_only_token: Option<std::path::PathBuf>,
    /// Where the translation policy applied through the API is kept across restarts; none: such
    /// changes last until cgnatd stops.
    pub state_file: Option<std::path::PathBuf>,
    /// TLS for the gRPC server; none: plaintext HTTP/2.
    pub tls: Option<MgmtTls>,
}

impl Default for MgmtCfg {
    fn default() -> Self {
        MgmtCfg {
            listen: d::MGMT_LISTEN,
            read_write_token: None,
            read_only_token: None,
            state_file: None,
            tls: None,
        }
    }
}

/// `mgmt.tls`: PEM files, read by cgnatd at start (absolute paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MgmtTls {
    /// The server's certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key of the leaf certificate.
    pub key: std::path::PathBuf,
    /// CA certificates that client certificates must chain to; set, a client without one fails
    /// the TLS handshake (mutual TLS).
    pub client_ca: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingCfg {
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info,dataplane=debug`.
    pub level: String,
    pub format: LogFormat,
    /// Log the NAT's events (mappings, port blocks, limits hit) under the `cgnat::event` target.
    pub nat_events: bool,
}

impl Default for LoggingCfg {
    fn default() -> Self {
        LoggingCfg {
            level: d::LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
            nat_events: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Which lcores run workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workers {
    /// The first n lcores of the list, skipping the main lcore.
    Count(u16),
    /// Exactly these lcore ids.
    Lcores(Vec<u32>),
}

impl Workers {
    /// How many workers run.
    pub fn len(&self) -> usize {
        match self {
            Workers::Count(n) => usize::from(*n),
            Workers::Lcores(ids) => ids.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_dpdk_naming() {
        let v = Device::Vdev {
            spec: "net_af_packet0,iface=cgn-in,qpairs=1".into(),
        };
        assert_eq!(v.port_name(), "net_af_packet0");
        let bare = Device::Vdev {
            spec: "net_tap0".into(),
        };
        assert_eq!(bare.port_name(), "net_tap0");
        let p = Device::Pci {
            addr: "0000:3b:00.1".into(),
        };
        assert_eq!(p.port_name(), "0000:3b:00.1");
    }

    #[test]
    fn pool_enumerates_every_address_once() {
        let pool = Pool {
            masquerade: false,
            name: "p".into(),
            ranges: vec![
                (Ipv4Addr::new(10, 0, 0, 254), Ipv4Addr::new(10, 0, 1, 1)),
                (Ipv4Addr::new(10, 0, 2, 0), Ipv4Addr::new(10, 0, 2, 0)),
            ],
            port_lo: 1024,
            port_hi: 65535,
            filtering: Filtering::default(),
            allocation: Allocation::default(),
        };
        let all: Vec<Ipv4Addr> = pool.addresses().collect();
        assert_eq!(all.len() as u64, pool.len());
        assert_eq!(pool.len(), 5);
        assert_eq!(all[2], Ipv4Addr::new(10, 0, 1, 0));
        assert!(pool.contains(Ipv4Addr::new(10, 0, 2, 0)));
        assert!(!pool.contains(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(pool.ports_per_address(), 64512);
    }
}
