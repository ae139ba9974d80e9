//! Default values of optional fields. docs/CONFIG.md gives the reason for each.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

pub const FILE_PREFIX: &str = "cgnat";
pub const HUGEPAGES: bool = true;
/// Memory for `--no-huge` mode, where DPDK needs an explicit size.
pub const NOHUGE_SIZE_MB: u32 = 512;
pub const WORKERS: u16 = 1;
pub const MTU: u16 = 1500;
pub const RX_DESC: u16 = 1024;
pub const TX_DESC: u16 = 1024;
pub const POOL_PORT_LO: u16 = 1024;
pub const POOL_PORT_HI: u16 = 65535;
pub const MAX_SESSIONS: u32 = 1 << 20;
/// RFC 5382 REQ-5: an established TCP session must not time out in under 2 h 4 min.
pub const TCP_ESTABLISHED_SECS: u32 = 7440;
/// RFC 5382 REQ-5 / RFC 7857 section 2: 4 minutes (2 MSL) for connections opening or closing.
pub const TCP_TRANSITORY_SECS: u32 = 240;
/// RFC 4787 REQ-5 recommends 5 minutes.
pub const UDP_SECS: u32 = 300;
/// RFC 5508 REQ-1: at least 60 seconds.
pub const ICMP_SECS: u32 = 60;
pub const REACHABLE_TIME_SECS: u32 = 300;
pub const RETRANSMIT_MS: u32 = 1000;
pub const MGMT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 50051));
pub const LOG_LEVEL: &str = "info";
pub const STATS_INTERVAL_SECS: u32 = 10;
/// Pure busy polling: the lowest latency, and what a dedicated core is for.
pub const IDLE_SLEEP_US: u32 = 0;
pub const IDLE_POLLS: u32 = 1024;
/// Per ordered pair of workers: a few bursts of headroom at line rate between two polls.
pub const HANDOFF_RING: u32 = 1024;
/// RFC 6888 REQ-8: a freed outside port is not reused for 120 s.
pub const HOLD_DOWN_SECS: u32 = 120;
/// RFC 6888 REQ-4/5: room for P2P on one mapping, still stops one infected host.
pub const MAX_SESSIONS_PER_SUBSCRIBER: u32 = 16384;
/// Leaves room for 15 busy subscribers on one outside address.
pub const MAX_PORTS_PER_SUBSCRIBER: u32 = 4096;
pub const EVENT_RING: u32 = 4096;

/// Fragmented datagrams tracked per worker and side, out-of-order fragments held, and how long
/// (nat::FragConfig explains the choice).
pub const FRAG_MAX_DATAGRAMS: u32 = 4096;
pub const FRAG_MAX_HELD: u32 = 256;
pub const FRAG_TIMEOUT_MS: u32 = 2000;

/// A destination NAT backend without a `weight` gets an equal share.
pub const DNAT_WEIGHT: u32 = 1;
