//! Bounds enforced by validation. docs/CONFIG.md gives the reason for each.

/// RFC 791: every IPv4 host must accept 68-byte datagrams without fragmenting.
pub const MTU_MIN: u16 = 68;
/// Common jumbo-frame ceiling supported by the NICs DPDK drives.
pub const MTU_MAX: u16 = 9000;
pub const DESC_MIN: u16 = 64;
pub const DESC_MAX: u16 = 16384;
pub const MAX_SESSIONS_MIN: u32 = 1024;
pub const MAX_SESSIONS_MAX: u32 = 1 << 26;
/// RFC 4787 REQ-5: a UDP mapping must not expire in under two minutes.
pub const UDP_TIMEOUT_MIN_SECS: u32 = 120;
/// RFC 5382 REQ-5: an established TCP connection must not expire in under 2 h 4 min.
pub const TCP_ESTABLISHED_MIN_SECS: u32 = 7440;
/// RFC 5508 REQ-1: an ICMP query mapping must not expire in under 60 s.
pub const ICMP_TIMEOUT_MIN_SECS: u32 = 60;
/// Fragment tracking: at least one datagram; at most 1 Mi per worker and side (16 probes over a table
/// of twice that, 64 MiB).
pub const FRAG_TABLE_MAX: u32 = 1 << 20;
/// Held fragments are scanned when a first fragment arrives and when one is due, and each holds an
/// mbuf: a few thousand cover any real reordering.
pub const FRAG_HELD_MAX: u32 = 4096;
/// A fragment deadline of 10 ms to 60 s (Linux's reassembly timer is 30 s).
pub const FRAG_TIMEOUT_MIN_MS: u32 = 10;
pub const FRAG_TIMEOUT_MAX_MS: u32 = 60_000;
/// One week. Longer idle timeouts are almost always milliseconds typed as seconds.
pub const TIMEOUT_MAX_SECS: u32 = 7 * 24 * 3600;
pub const REACHABLE_TIME_MAX_SECS: u32 = 24 * 3600;
pub const RETRANSMIT_MIN_MS: u32 = 10;
pub const RETRANSMIT_MAX_MS: u32 = 60_000;
pub const STATS_INTERVAL_MAX_SECS: u32 = 24 * 3600;
/// Smallest DPDK memory size accepted: mbuf pools and two port rings do not fit in less.
pub const MEMORY_MIN_MB: u32 = 64;
/// DPDK `--file-prefix` ends up in socket paths under /var/run/dpdk, whose names are
/// limited to 108 bytes; 64 leaves room for the directory and suffixes.
pub const FILE_PREFIX_MAX_LEN: usize = 64;
pub const IDLE_SLEEP_US_MAX: u32 = 10_000;
pub const IDLE_POLLS_MAX: u32 = 1_000_000;
pub const HANDOFF_RING_MIN: u32 = 64;
pub const HANDOFF_RING_MAX: u32 = 65536;
/// Destination NAT rules: at most 4096. Every change rebuilds the whole rule table (Maglev
/// lookup tables included) and swaps it into every worker, so the set must stay small enough to
/// rebuild on a reload in well under a second; port forwards and services number in the tens to
/// hundreds in practice.
pub const DNAT_RULES_MAX: usize = 4096;
/// Backends per rule: 1..=1024 (kube-proxy services rarely exceed a few hundred endpoints; a
/// Maglev table stays much larger than the backend count).
pub const DNAT_BACKENDS_MAX: usize = 1024;
/// Largest backend weight. Weights are relative; a million leaves fine ratios while the sum
/// over 1024 backends stays far from overflowing.
pub const DNAT_WEIGHT_MAX: u32 = 1_000_000;
/// Client-IP affinity of at most a day (the Kubernetes default is 10800 s, three hours).
pub const DNAT_AFFINITY_MAX_SECS: u32 = 24 * 3600;
/// Rule names end up in errors, counters and the API.
pub const DNAT_NAME_MAX_LEN: usize = 64;
/// Backends over all rules together: the NAT core keeps counters for at most 16384 (rule,
/// backend) pairs.
pub const DNAT_BACKENDS_TOTAL_MAX: usize = 16384;
/// Pool addresses over all pools: at most 65536 (a /16). Each address takes three 8 KiB port
/// bitmaps (TCP, UDP, ICMP) per worker, so a /16 is already 1.5 GiB per worker; a pool larger
/// than that is a typing error far more often than a plan.
pub const POOL_ADDRESSES_MAX: u64 = 1 << 16;
/// Source NAT rules and no-NAT exclusions: at most 1024 each. A policy change diffs the old list
/// against the new one (quadratic in the length), and packets of new flows scan the lists in
/// order; operators' lists number in the tens.
pub const SNAT_RULES_MAX: usize = 1024;
pub const EXCLUSIONS_MAX: usize = 1024;
/// CPU ids in an lcore's CPU set: below 1024, the size of the `cpu_set_t` DPDK pins with.
pub const CPU_ID_MAX: u32 = 1023;
