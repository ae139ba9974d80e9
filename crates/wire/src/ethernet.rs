//! Ethernet II frames and MAC addresses.

use core::fmt;
use core::str::FromStr;

use crate::{Error, Result, be};

/// A 48-bit Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);
    /// `00:00:00:00:00:00`, e.g. the unknown target hardware address of an ARP request.
    pub const ZERO: EthernetAddress = EthernetAddress([0; 6]);

    /// Builds an address from a 6-byte slice.
    ///
    /// # Panics
    /// If `data.len() != 6`. Meant for slices whose length is already known (a field range);
    /// parse untrusted text with [`FromStr`] instead.
    #[inline]
    pub fn from_bytes(data: &[u8]) -> EthernetAddress {
        let mut bytes = [0u8; 6];
        bytes.copy_from_slice(data);
        EthernetAddress(bytes)
    }

    /// The address as bytes, in transmission order.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is `ff:ff:ff:ff:ff:ff`.
    #[inline]
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the I/G bit (least significant bit of the first octet) is set. Broadcast counts as
    /// multicast, as on the wire.
    #[inline]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is an individual (unicast) address, i.e. not multicast or broadcast.
    #[inline]
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The text given to [`EthernetAddress::from_str`] is not six two-digit hex octets separated by
/// `:` (or consistently by `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseEthernetAddressError;

impl fmt::Display for ParseEthernetAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid mac address, expected aa:bb:cc:dd:ee:ff")
    }
}

impl std::error::Error for ParseEthernetAddressError {}

impl FromStr for EthernetAddress {
    type Err = ParseEthernetAddressError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case). `aa-bb-cc-dd-ee-ff` is accepted too since that is
    /// how some vendors print MACs; mixing separators is not.
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 17 {
            return Err(ParseEthernetAddressError);
        }
        let sep = b[2];
        if sep != b':' && sep != b'-' {
            return Err(ParseEthernetAddressError);
        }
        let mut out = [0u8; 6];
        for (i, octet) in out.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != sep {
                return Err(ParseEthernetAddressError);
            }
            let hi = hex_digit(b[at]).ok_or(ParseEthernetAddressError)?;
            let lo = hex_digit(b[at + 1]).ok_or(ParseEthernetAddressError)?;
            *octet = (hi << 4) | lo;
        }
        Ok(EthernetAddress(out))
    }
}

#[inline]
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// EtherType values the data plane dispatches on.
pub mod ethertype {
    /// Internet Protocol version 4.
    pub const IPV4: u16 = 0x0800;
    /// Address Resolution Protocol.
    pub const ARP: u16 = 0x0806;
    /// IEEE 802.1Q tag (not parsed by this crate).
    pub const VLAN: u16 = 0x8100;
    /// Internet Protocol version 6 (not handled by this crate).
    pub const IPV6: u16 = 0x86dd;
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// A read/write view of an Ethernet II frame (no FCS, no 802.1Q parsing).
///
/// ```text
/// +--------+--------+--------+--------+--------+--------+
/// |               Destination MAC address               |
/// +--------+--------+--------+--------+--------+--------+
/// |                 Source MAC address                  |
/// +--------+--------+--------+--------+--------+--------+
/// |    EtherType    |  Payload ...
/// +--------+--------+--------
/// ```
///
/// The payload runs to the end of the buffer and so includes any padding up to the 60-byte
/// minimum frame; the inner protocol's own length field (e.g. IPv4 total length) bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of the Ethernet II header.
    pub const HEADER_LEN: usize = 14;

    /// Wraps a buffer without checking it. Getters and setters panic if the buffer is shorter
    /// than [`Self::HEADER_LEN`]; call [`Self::check_len`] before using them on untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` if the buffer cannot hold the 14-byte header.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// Source MAC address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// EtherType; see [`ethertype`](crate::ethertype).
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::ETHERTYPE])
    }

    /// Everything after the header, padding included.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source MAC address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::ETHERTYPE], ethertype);
    }

    /// Everything after the header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for EthernetFrame<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ARP request frame, captured on a veth pair (Linux sends it unpadded: 14 + 28 bytes).
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc, 0x0a, 0x63,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x00, 0x02,
    ];

    #[test]
    fn parses_real_frame() {
        let f = EthernetFrame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(
            f.src_addr(),
            EthernetAddress([0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc])
        );
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(f.payload(), &ARP_FRAME[14..]);
        assert_eq!(f.payload().len(), 28);
    }

    #[test]
    fn rejects_every_truncation() {
        for len in 0..EthernetFrame::<&[u8]>::HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_FRAME[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        let bare = EthernetFrame::new_checked(&ARP_FRAME[..14]).unwrap();
        assert!(bare.payload().is_empty());
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 20];
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        let a = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
        let b = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
        f.set_dst_addr(a);
        f.set_src_addr(b);
        f.set_ethertype(ethertype::IPV4);
        f.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(f.dst_addr(), a);
        assert_eq!(f.src_addr(), b);
        assert_eq!(f.ethertype(), 0x0800);
        assert_eq!(f.payload(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            buf,
            [
                0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, 1, 2, 3, 4, 5, 6
            ]
        );
    }

    #[test]
    fn address_classes() {
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert!(!EthernetAddress::BROADCAST.is_unicast());
        let mcast = EthernetAddress([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_unicast());
        let ucast = EthernetAddress([0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc]);
        assert!(ucast.is_unicast() && !ucast.is_multicast() && !ucast.is_broadcast());
        assert_eq!(EthernetAddress::ZERO.as_bytes(), &[0; 6]);
        assert_eq!(
            EthernetAddress::from_bytes(&[1, 2, 3, 4, 5, 6]),
            EthernetAddress([1, 2, 3, 4, 5, 6])
        );
    }

    #[test]
    fn display_and_parse() {
        let a = EthernetAddress([0xce, 0xd5, 0x0e, 0xcf, 0x31, 0x0c]);
        assert_eq!(a.to_string(), "ce:d5:0e:cf:31:0c");
        assert_eq!("ce:d5:0e:cf:31:0c".parse(), Ok(a));
        assert_eq!("CE:D5:0E:CF:31:0C".parse(), Ok(a));
        assert_eq!("ce-d5-0e-cf-31-0c".parse(), Ok(a));
        for bad in [
            "",
            "ce:d5:0e:cf:31",
            "ce:d5:0e:cf:31:0c:00",
            "ce:d5:0e:cf:31:0g",
            "ce:d5-0e:cf:31:0c",
            "ce.d5.0e.cf.31.0c",
            "c:ed5:0e:cf:31:0c",
            "+e:d5:0e:cf:31:0c",
            "ce:d5:0e:cf:31:0c ",
            "çe:d5:0e:cf:31:0",
        ] {
            assert_eq!(
                bad.parse::<EthernetAddress>(),
                Err(ParseEthernetAddressError),
                "{bad:?}"
            );
        }
    }
}
