//! The NAT core: a per-core connection-tracking shard and NAPT translation for TCP, UDP and ICMP echo.
//!
//! Written against the [`PacketBatch`] trait rather than DPDK mbufs, so everything here is tested with
//! plain `cargo test` over `Vec<u8>` packets; the data plane implements the trait for mbufs.
//!
//! One [`Shard`] belongs to one worker core and is never shared: no locks, no atomics beyond the
//! single-writer [`Counters`]. A burst is processed in stages (parse and hash every packet, prefetch the
//! index buckets, probe and prefetch the sessions, then verify and rewrite), so the cache misses of up to
//! 32 packets overlap instead of being paid one after another.
//!
//! Limitations of this release (tracked as later work): endpoint-dependent mapping (a new outside port per
//! 5-tuple; EIM/EIF, hairpinning and port blocks per subscriber come with the RFC 4787/6888 work), no
//! fragment translation (fragments are dropped and counted), ICMP errors are not translated (dropped and
//! counted), no destination NAT. Rules are fixed for the life of a shard.

#![forbid(unsafe_code)]

mod counters;
mod index;
mod key;
mod ports;
mod rewrite;
mod rules;
mod session;
mod shard;

pub use counters::{Counter, Counters, DropReason};
pub use index::Index;
pub use key::FlowKey;
pub use ports::{BLOCK_PORTS, PortAllocator, port_owner};
pub use rules::{Pool, Rules, SnatRule};
pub use session::{Session, tcp_state};
pub use shard::{Dir, MAX_BURST, Shard, ShardConfig, Verdict};

/// A hint about a large allocation, called with its address and length before the memory is first
/// written: the data plane passes `dpdk::advise_hugepages` so the session slab and the index are
/// backed by transparent huge pages. This crate stays free of `unsafe` and of DPDK.
pub type MemAdvice = fn(addr: usize, len: usize) -> bool;

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

/// Errors building a shard.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatError {
    #[error("max_sessions must be between 1 and 2^31-1, got {0}")]
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
}
