//! The data plane: one run-to-completion [`Worker`] per lcore, driving DPDK ports through a NAT
//! [`nat::Shard`] it owns.
//!
//! A worker is the whole life of a packet on its core: receive a burst, classify it, answer ARP and pings
//! for the appliance's own addresses, translate IPv4 through the shard, pick the next hop, resolve it by
//! ARP, and transmit. Routing ([`route`]), neighbour resolution ([`neighbour`]) and the packets the
//! appliance originates itself ([`local`]) are plain code over byte slices, unit-tested without DPDK.
//!
//! Limitations of this release: one inside and one outside port; each worker keeps its own neighbour
//! table and learns from the ARP frames it receives itself, which is exact with one worker (with several,
//! ARP and return traffic must reach the owning worker: that is the multi-core handoff work); frames
//! waiting for ARP are held (up to 64 per port, three seconds) rather than queued without bound; VLAN
//! tags and IPv6 are dropped and counted.

#![forbid(unsafe_code)]

pub mod handoff;
pub mod local;
pub mod neighbour;
pub mod route;
mod worker;

pub use worker::{
    Command, Control, DpdkPrefetch, EventQueue, Policy, PortSetup, Reply, Side, Worker,
    WorkerConfig,
};
