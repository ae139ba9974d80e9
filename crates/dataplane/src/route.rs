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

/// Where a packet goes next on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// The port's own subnet: destinations in it are on-link.
    connected: Prefix,
    /// (prefix, next hop), longest prefix first; a gateway is the /0 entry.
    routes: Vec<(Prefix, u32)>,
}

impl RouteTable {
    pub fn new(
        connected: Prefix,
        gateway: Option<Ipv4Addr>,
        statics: &[(Prefix, Ipv4Addr)],
    ) -> RouteTable {
        let mut routes: Vec<(Prefix, u32)> = statics
            .iter()
            .map(|(p, via)| (*p, u32::from(*via)))
            .collect();
        if let Some(gw) = gateway {
            routes.push((Prefix { addr: 0, len: 0 }, gw.into()));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.len));
        RouteTable { connected, routes }
    }

    /// Next-hop address for `dst`, or `None` when nothing routes it. A static route more specific than the
    /// connected subnet wins over it, as in any router.
    #[inline]
    pub fn next_hop(&self, dst: u32) -> Option<u32> {
        for (p, via) in &self.routes {
            if p.len > self.connected.len && p.contains(dst) {
                return Some(*via);
            }
        }
        if self.connected.contains(dst) {
            return Some(dst);
        }
        self.routes
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, via)| *via)
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
}
