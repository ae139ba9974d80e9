//! ARP neighbour table of one port on one worker.
//!
//! Entries are learned only from ARP (requests addressed to us and replies), never from IP traffic, so a
//! spoofed IP source cannot redirect anyone's traffic. A resolved entry is trusted for `reachable` ticks,
//! then re-resolved while still used: the stale MAC keeps being used until the answer arrives, so a
//! working flow never stalls on a refresh. Unresolved next hops get a request at most every `retransmit`.
//! Time is in TSC ticks so the hot path never converts.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use wire::EthernetAddress;

/// The table's own hasher: keys are IPv4 addresses chosen by us (next hops) or by ARP senders on our own
/// links, so a multiply-shift is enough and far cheaper than SipHash.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    mac: Option<EthernetAddress>,
    /// Configured by hand: never expires, never replaced, never evicted.
    fixed: bool,
    /// When the MAC was last confirmed by ARP.
    confirmed: u64,
    /// When we last sent a request for it.
    requested: u64,
}

impl Entry {
    /// Whether a resolved entry is stale and no request for it is outstanding: using it now should
    /// also ask again. Never for a configured one.
    #[inline]
    fn due_refresh(&self, now: u64, reachable: u64, retransmit: u64) -> bool {
        !self.fixed
            && now.saturating_sub(self.confirmed) > reachable
            && now.saturating_sub(self.requested) > retransmit
    }
}

/// What the caller must do to reach a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Send to this MAC.
    Known(EthernetAddress),
    /// Send to this MAC and also send an ARP request to refresh the entry.
    KnownRefresh(EthernetAddress),
    /// Unknown: drop the packet and send an ARP request.
    Request,
    /// Unknown and a request is already outstanding: drop the packet.
    Pending,
}

pub struct NeighbourTable {
    entries: HashMap<u32, Entry, BuildHasherDefault<AddrHasher>>,
    reachable: u64,
    retransmit: u64,
    max_entries: usize,
}

impl NeighbourTable {
    /// `reachable` and `retransmit` in TSC ticks; `max_entries` bounds memory against ARP floods.
    pub fn new(reachable: u64, retransmit: u64, max_entries: usize) -> NeighbourTable {
        NeighbourTable {
            entries: HashMap::default(),
            reachable,
            retransmit,
            max_entries,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    #[inline]
    pub fn resolve(&mut self, ip: u32, now: u64) -> Resolution {
        match self.entries.get_mut(&ip) {
            Some(e) => match e.mac {
                Some(mac) => {
                    if e.due_refresh(now, self.reachable, self.retransmit) {
                        e.requested = now;
                        Resolution::KnownRefresh(mac)
                    } else {
                        Resolution::Known(mac)
                    }
                }
                None => {
                    if now.saturating_sub(e.requested) > self.retransmit {
                        e.requested = now;
                        Resolution::Request
                    } else {
                        Resolution::Pending
                    }
                }
            },
            None => {
                if self.entries.len() >= self.max_entries {
                    self.evict(now);
                    if self.entries.len() >= self.max_entries {
                        // Full of live neighbours: refuse rather than grow without bound.
                        return Resolution::Pending;
                    }
                }
                self.entries.insert(
                    ip,
                    Entry {
                        mac: None,
                        fixed: false,
                        confirmed: 0,
                        requested: now,
                    },
                );
                Resolution::Request
            }
        }
    }

    /// The MAC [`NeighbourTable::resolve`] would answer [`Resolution::Known`] with, without
    /// resolving: `None` whenever resolving would do something more (refresh, request, wait). The
    /// data plane's whole-burst path asks this, so that a next hop needing work is resolved once,
    /// by the path that does the work.
    #[inline]
    pub fn known(&self, ip: u32, now: u64) -> Option<EthernetAddress> {
        let e = self.entries.get(&ip)?;
        let mac = e.mac?;
        (!e.due_refresh(now, self.reachable, self.retransmit)).then_some(mac)
    }

    /// Record a MAC learned from ARP.
    pub fn learn(&mut self, ip: u32, mac: EthernetAddress, now: u64) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.max_entries {
            self.evict(now);
            if self.entries.len() >= self.max_entries {
                return;
            }
        }
        let e = self.entries.entry(ip).or_insert(Entry {
            mac: None,
            fixed: false,
            confirmed: 0,
            requested: 0,
        });
        if e.fixed {
            return;
        }
        e.mac = Some(mac);
        e.confirmed = now;
    }

    /// A neighbour configured by hand (one that does not answer ARP, or a pinned router).
    pub fn add_static(&mut self, ip: u32, mac: EthernetAddress) {
        self.entries.insert(
            ip,
            Entry {
                mac: Some(mac),
                fixed: true,
                confirmed: 0,
                requested: 0,
            },
        );
    }

    pub fn lookup(&self, ip: u32) -> Option<EthernetAddress> {
        self.entries.get(&ip).and_then(|e| e.mac)
    }

    /// Drop entries nobody refreshed for a long time (slow path, bounded by the table size).
    pub fn evict(&mut self, now: u64) {
        let horizon = self.reachable.saturating_mul(4);
        self.entries
            .retain(|_, e| e.fixed || now.saturating_sub(e.confirmed.max(e.requested)) <= horizon);
        if self.entries.len() >= self.max_entries {
            // Still full of fresh entries: forget unresolved ones first; they cost nothing to re-request.
            self.entries.retain(|_, e| e.fixed || e.mac.is_some());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);

    #[test]
    fn unknown_then_pending_then_retransmit_then_known() {
        let mut t = NeighbourTable::new(1000, 100, 64);
        assert_eq!(t.resolve(7, 0), Resolution::Request);
        assert_eq!(t.resolve(7, 50), Resolution::Pending);
        assert_eq!(t.resolve(7, 101), Resolution::Request);
        t.learn(7, MAC, 120);
        assert_eq!(t.resolve(7, 130), Resolution::Known(MAC));
    }

    #[test]
    fn stale_entry_keeps_forwarding_while_refreshing() {
        let mut t = NeighbourTable::new(1000, 100, 64);
        t.learn(7, MAC, 0);
        assert_eq!(t.resolve(7, 1001), Resolution::KnownRefresh(MAC));
        assert_eq!(t.resolve(7, 1050), Resolution::Known(MAC));
        assert_eq!(t.resolve(7, 1102), Resolution::KnownRefresh(MAC));
        t.learn(7, EthernetAddress([2, 0, 0, 0, 0, 2]), 1103);
        assert_eq!(
            t.resolve(7, 1104),
            Resolution::Known(EthernetAddress([2, 0, 0, 0, 0, 2]))
        );
    }

    #[test]
    fn static_entries_never_expire_or_change() {
        let mut t = NeighbourTable::new(10, 10, 4);
        t.add_static(7, MAC);
        t.learn(7, EthernetAddress([2, 0, 0, 0, 0, 9]), 5);
        assert_eq!(t.resolve(7, 1_000_000), Resolution::Known(MAC));
        for ip in 100..200 {
            t.learn(ip, MAC, 1_000_000);
        }
        assert_eq!(t.lookup(7), Some(MAC));
    }

    #[test]
    fn known_answers_only_where_resolving_would_just_send_and_changes_nothing() {
        let mut t = NeighbourTable::new(1000, 100, 64);
        // Unknown: no answer, and no entry made (resolving would make one and ask).
        assert_eq!(t.known(7, 0), None);
        assert!(t.is_empty());
        assert_eq!(t.resolve(7, 0), Resolution::Request);
        // Asked, no answer yet.
        assert_eq!(t.known(7, 50), None);
        t.learn(7, MAC, 60);
        assert_eq!(t.known(7, 70), Some(MAC));
        // Stale with no request outstanding: resolving must refresh, so no answer here; and asking
        // did not take the refresh away from the resolution that follows.
        assert_eq!(t.known(7, 1100), None);
        assert_eq!(t.resolve(7, 1100), Resolution::KnownRefresh(MAC));
        // Stale but just asked again: resolving sends to the old MAC, and so does this.
        assert_eq!(t.known(7, 1150), Some(MAC));
        assert_eq!(t.resolve(7, 1150), Resolution::Known(MAC));
        t.add_static(9, MAC);
        assert_eq!(t.known(9, u64::MAX), Some(MAC));
    }

    #[test]
    fn table_size_is_bounded() {
        let mut t = NeighbourTable::new(1000, 100, 16);
        for ip in 0..1000 {
            t.learn(ip, MAC, 0);
            t.resolve(100_000 + ip, 0);
        }
        assert!(t.len() <= 16, "{} entries", t.len());
    }
}
