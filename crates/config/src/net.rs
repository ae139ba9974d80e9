//! Small IPv4 value types used by the schema: prefixes, address ranges and port ranges.
//!
//! They are written here rather than taken from a crate such as `ipnet` because the config
//! needs only a handful of operations and very specific parse errors (the YAML error names
//! the offending value), and every extra dependency is one more thing to audit on an
//! appliance.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a prefix, address range or port range string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid MAC address `{0}`: expected six hex octets such as 02:00:00:00:00:01")]
    Mac(String),
    #[error("invalid IPv4 prefix `{0}`: expected a.b.c.d/len")]
    PrefixSyntax(String),
    #[error("invalid IPv4 address `{0}`")]
    Address(String),
    #[error("invalid prefix length in `{0}`: must be 0..=32")]
    PrefixLen(String),
    #[error(
        "invalid address range `{0}`: expected a prefix a.b.c.d/len, a range a.b.c.d-e.f.g.h or one address"
    )]
    RangeSyntax(String),
    #[error("invalid address range `{0}`: the first address is above the last")]
    RangeOrder(String),
    #[error("invalid port range `{0}`: expected low-high with 1 <= low <= high <= 65535")]
    PortRange(String),
}

/// An IPv4 prefix (`addr/len`).
///
/// `addr` is kept exactly as written, host bits included, because an interface address such
/// as `100.64.0.1/24` is both an address and a subnet. All set operations (`contains`,
/// `overlaps`, ...) look only at the network part. A `len` above 32 cannot be parsed; if one is
/// built by hand the operations treat it as 32 rather than panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    /// A prefix from its parts; `None` if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then_some(Ipv4Net { addr, len })
    }

    fn mask_bits(&self) -> u32 {
        match self.len.min(32) {
            0 => 0,
            n => u32::MAX << (32 - u32::from(n)),
        }
    }

    /// The subnet mask, e.g. 255.255.255.0 for /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    /// The first address of the prefix (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask_bits())
    }

    /// The last address of the prefix (host bits set). For /31 and /32 this is simply the
    /// highest address; whether it may be used as a host is the caller's decision (RFC 3021).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask_bits())
    }

    /// The same prefix with host bits cleared.
    pub fn trunc(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.network(),
            len: self.len.min(32),
        }
    }

    /// True when `addr` has no host bits set, i.e. this is written as a network.
    pub fn is_network(&self) -> bool {
        self.addr == self.network()
    }

    /// Whether `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask_bits() == u32::from(self.network())
    }

    /// Whether the two prefixes share at least one address. Two prefixes overlap exactly when
    /// one contains the other's network address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// Whether every address of `other` is inside `self`.
    pub fn covers(&self, other: &Ipv4Net) -> bool {
        self.len <= other.len && self.contains(other.network())
    }

    /// Number of addresses in the prefix (2^(32-len)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len.min(32)))
    }

    /// The prefix as an inclusive address range.
    pub fn range(&self) -> (Ipv4Addr, Ipv4Addr) {
        (self.network(), self.broadcast())
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = ParseError;

    /// Parses `a.b.c.d/len`. The length is mandatory: an interface address without one is
    /// a classic misconfiguration, and guessing /32 or a classful mask would hide it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| ParseError::PrefixSyntax(s.to_owned()))?;
        let addr = parse_addr(addr)?;
        // u8::from_str accepts a leading '+'; a prefix length is digits only.
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::PrefixLen(s.to_owned()));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| ParseError::PrefixLen(s.to_owned()))?;
        Ipv4Net::new(addr, len).ok_or_else(|| ParseError::PrefixLen(s.to_owned()))
    }
}

fn parse_addr(s: &str) -> Result<Ipv4Addr, ParseError> {
    // std's parser already rejects leading zeros ("010.0.0.1"), which would be ambiguous
    // (octal in inet_aton), so nothing more is needed here.
    s.parse().map_err(|_| ParseError::Address(s.to_owned()))
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<Ipv4Net>::new("an IPv4 prefix a.b.c.d/len"))
    }
}

/// One entry of a pool's `addresses` list: a prefix, an inclusive range, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// Set when the entry was written as a prefix; kept so errors can quote it as written
    /// and so validation can insist on a network address.
    pub prefix: Option<Ipv4Net>,
}

impl AddressRange {
    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }

    /// Always false: a range holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    pub fn overlaps(&self, other: &AddressRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    pub fn overlaps_net(&self, net: &Ipv4Net) -> bool {
        let (lo, hi) = net.range();
        self.first <= hi && lo <= self.last
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix {
            Some(p) => p.fmt(f),
            None if self.first == self.last => self.first.fmt(f),
            None => write!(f, "{}-{}", self.first, self.last),
        }
    }
}

impl FromStr for AddressRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains('/') {
            let p: Ipv4Net = s.parse()?;
            let (first, last) = p.range();
            return Ok(AddressRange {
                first,
                last,
                prefix: Some(p),
            });
        }
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s, s),
        };
        let first: Ipv4Addr = first
            .parse()
            .map_err(|_| ParseError::RangeSyntax(s.to_owned()))?;
        let last: Ipv4Addr = last
            .parse()
            .map_err(|_| ParseError::RangeSyntax(s.to_owned()))?;
        if first > last {
            return Err(ParseError::RangeOrder(s.to_owned()));
        }
        Ok(AddressRange {
            first,
            last,
            prefix: None,
        })
    }
}

impl<'de> Deserialize<'de> for AddressRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::<AddressRange>::new(
            "an address prefix, range or single address",
        ))
    }
}

/// An inclusive range of TCP/UDP ports (also used for ICMP identifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl Default for PortRange {
    /// 1024-65535: the well-known ports are left out because some servers and firewalls treat
    /// a privileged source port as a sign of a trusted (root-owned) client, which a NAT must
    /// not fake, and RFC 6056 section 2.1 starts ephemeral selection at 1024 for that reason.
    fn default() -> Self {
        PortRange {
            lo: crate::defaults::POOL_PORT_LO,
            hi: crate::defaults::POOL_PORT_HI,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl FromStr for PortRange {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::PortRange(s.to_owned());
        let (lo, hi) = s.split_once('-').unwrap_or((s, s));
        let num = |t: &str| -> Result<u16, ParseError> {
            let t = t.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(PortRange { lo, hi })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port range such as \"1024-65535\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
            // `ports: 5000` arrives as an integer; treat it as a one-port range.
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Deserializes any `FromStr` type from a string, reporting the parse error verbatim so the
/// YAML error carries both the value and its location.
pub(crate) struct FromStrVisitor<T> {
    expecting: &'static str,
    _t: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    pub(crate) fn new(expecting: &'static str) -> Self {
        FromStrVisitor {
            expecting,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// An Ethernet MAC address as written in the config: six two-digit hex octets separated by
/// `:` or `-` (one separator throughout), in either case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Group bit (I/G, the low bit of the first octet): set for multicast and broadcast.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<MacAddr, ParseError> {
        let bad = || ParseError::Mac(s.to_owned());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for o in out.iter_mut() {
            // Checked digit by digit: from_str_radix alone would accept a sign (`+f`).
            let part = parts
                .next()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(bad)?;
            *o = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_arithmetic() {
        let n = net("100.64.0.1/24");
        assert_eq!(n.addr, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(n.network(), Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(100, 64, 0, 255));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(!n.is_network());
        assert_eq!(n.trunc(), net("100.64.0.0/24"));
        assert_eq!(n.size(), 256);
        assert_eq!(n.to_string(), "100.64.0.1/24");
    }

    #[test]
    fn zero_and_full_length_prefixes() {
        let all = net("0.0.0.0/0");
        assert_eq!(all.netmask(), Ipv4Addr::new(0, 0, 0, 0));
        assert!(all.contains(Ipv4Addr::new(255, 255, 255, 255)));
        assert_eq!(all.size(), 1 << 32);
        let host = net("192.0.2.7/32");
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 8)));
        assert_eq!(host.network(), host.broadcast());
        // A hand-built oversize length must not panic in the shift.
        let odd = Ipv4Net {
            addr: Ipv4Addr::new(10, 0, 0, 1),
            len: 40,
        };
        assert_eq!(odd.size(), 1);
        assert!(odd.contains(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn contains_and_overlaps() {
        let cgn = net("100.64.0.0/10");
        assert!(cgn.contains(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!cgn.contains(Ipv4Addr::new(100, 128, 0, 0)));
        assert!(cgn.overlaps(&net("100.64.5.0/24")));
        assert!(net("100.64.5.0/24").overlaps(&cgn));
        assert!(!cgn.overlaps(&net("10.0.0.0/8")));
        assert!(cgn.covers(&net("100.64.5.0/24")));
        assert!(!net("100.64.5.0/24").covers(&cgn));
    }

    #[test]
    fn prefix_parse_errors() {
        for bad in [
            "10.0.0.1",
            "10.0.0.1/",
            "10.0.0.1/33",
            "10.0.0.1/+8",
            "10.0.0/8",
            "010.0.0.1/8",
            "10.0.0.1/8/8",
            "",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad} accepted");
        }
        assert_eq!(
            "10.0.0.1/33".parse::<Ipv4Net>().unwrap_err().to_string(),
            "invalid prefix length in `10.0.0.1/33`: must be 0..=32"
        );
    }

    #[test]
    fn address_ranges() {
        let r: AddressRange = "198.18.0.10-198.18.0.20".parse().unwrap();
        assert_eq!(r.len(), 11);
        assert_eq!(r.to_string(), "198.18.0.10-198.18.0.20");
        let p: AddressRange = "203.0.113.0/29".parse().unwrap();
        assert_eq!(
            (p.first, p.last),
            (Ipv4Addr::new(203, 0, 113, 0), Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(p.to_string(), "203.0.113.0/29");
        let one: AddressRange = "192.0.2.9".parse().unwrap();
        assert_eq!(one.len(), 1);
        assert!(r.overlaps(&"198.18.0.20-198.18.0.30".parse().unwrap()));
        assert!(!r.overlaps(&"198.18.0.21-198.18.0.30".parse().unwrap()));
        assert_eq!(
            "10.0.0.9-10.0.0.1".parse::<AddressRange>(),
            Err(ParseError::RangeOrder("10.0.0.9-10.0.0.1".into()))
        );
        assert!("10.0.0.1-".parse::<AddressRange>().is_err());
        assert!("pool".parse::<AddressRange>().is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(
            "1024-65535".parse::<PortRange>(),
            Ok(PortRange {
                lo: 1024,
                hi: 65535
            })
        );
        assert_eq!("53".parse::<PortRange>(), Ok(PortRange { lo: 53, hi: 53 }));
        for bad in ["0-10", "10-9", "1-65536", "a-b", "-5", "5-", "+5-6"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serde_round_trip_of_prefix() {
        let n: Ipv4Net = serde_yaml::from_str("\"10.1.0.0/16\"").unwrap();
        assert_eq!(n, net("10.1.0.0/16"));
        assert_eq!(serde_yaml::to_string(&n).unwrap().trim(), "10.1.0.0/16");
    }

    #[test]
    fn mac_addresses() {
        let m: MacAddr = "02:AA:bb:0c:dd:01".parse().unwrap();
        assert_eq!(m.0, [0x02, 0xaa, 0xbb, 0x0c, 0xdd, 0x01]);
        assert_eq!(m.to_string(), "02:aa:bb:0c:dd:01");
        assert_eq!("02-AA-BB-0C-DD-01".parse::<MacAddr>(), Ok(m));
        assert!(m.is_unicast() && !m.is_zero());
        assert!(!"01:00:5e:00:00:01".parse::<MacAddr>().unwrap().is_unicast());
        assert!(!"ff:ff:ff:ff:ff:ff".parse::<MacAddr>().unwrap().is_unicast());
        assert!("00:00:00:00:00:00".parse::<MacAddr>().unwrap().is_zero());
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0",
            "02:00:00:00:00:001",
            "02:00-00:00:00:00",
            "02:00:00:00:00:0g",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:01:",
            "0200.0000.0001",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(ParseError::Mac(bad.to_owned())),
                "`{bad}` accepted"
            );
        }
    }
}
