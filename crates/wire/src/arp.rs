//! ARP for IPv4 over Ethernet (RFC 826).

use std::net::Ipv4Addr;

use crate::ethernet::{EthernetAddress, ethertype};
use crate::{Error, Result, be};

/// ARP operation codes.
pub mod arp_op {
    /// "Who has target IP? Tell sender."
    pub const REQUEST: u16 = 1;
    /// "Sender IP is at sender MAC."
    pub const REPLY: u16 = 2;
}

/// Hardware type for Ethernet.
const HTYPE_ETHERNET: u16 = 1;

mod field {
    use core::ops::Range;

    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// A read/write view of an Ethernet/IPv4 ARP packet.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |      Hardware Type (1)        |    Protocol Type (0x0800)     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  HLEN (6)     |   PLEN (4)    |          Operation            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                Sender Hardware Address (6 bytes)              |
/// +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |  Sender Protocol Address ...  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  ... (4 bytes)                |  Target Hardware Address ...  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |                     ... (6 bytes)                             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                Target Protocol Address (4 bytes)              |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Only the Ethernet/IPv4 layout is accepted, so the address fields sit at fixed offsets.
/// Trailing bytes (Ethernet padding) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = 28;

    /// Wraps a buffer without checking it. Getters and setters panic if the buffer is shorter
    /// than [`Self::LEN`]; call [`Self::check_len`] before using them on untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the buffer:
    /// - `Err(Truncated)` if it is shorter than 28 bytes;
    /// - `Err(Unsupported)` if it is not Ethernet/IPv4 ARP (htype 1, ptype 0x0800, hlen 6, plen 4),
    ///   since then the address fields would not be where this view reads them.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::LEN {
            return Err(Error::Truncated);
        }
        if self.hardware_type() != HTYPE_ETHERNET
            || self.protocol_type() != ethertype::IPV4
            || self.hardware_len() != 6
            || self.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    #[inline]
    pub fn hardware_type(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::HTYPE])
    }

    /// Protocol type (an EtherType; 0x0800 = IPv4).
    #[inline]
    pub fn protocol_type(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::PTYPE])
    }

    /// Hardware address length in bytes.
    #[inline]
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length in bytes.
    #[inline]
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// Operation; see [`arp_op`].
    #[inline]
    pub fn operation(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::OPER])
    }

    /// Sender hardware address.
    #[inline]
    pub fn sender_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::SHA])
    }

    /// Sender protocol address.
    #[inline]
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(be::u32(&self.buffer.as_ref()[field::SPA]))
    }

    /// Target hardware address (all zeros in a request).
    #[inline]
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress::from_bytes(&self.buffer.as_ref()[field::THA])
    }

    /// Target protocol address.
    #[inline]
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(be::u32(&self.buffer.as_ref()[field::TPA]))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    #[inline]
    pub fn set_hardware_type(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::HTYPE], value);
    }

    /// Sets the protocol type.
    #[inline]
    pub fn set_protocol_type(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::PTYPE], value);
    }

    /// Sets the hardware address length.
    #[inline]
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length.
    #[inline]
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the operation.
    #[inline]
    pub fn set_operation(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::OPER], value);
    }

    /// Sets the sender hardware address.
    #[inline]
    pub fn set_sender_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    /// Sets the sender protocol address.
    #[inline]
    pub fn set_sender_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    /// Sets the target hardware address.
    #[inline]
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    /// Sets the target protocol address.
    #[inline]
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }

    /// Writes the fixed Ethernet/IPv4 header fields (so the result passes `check_len`).
    #[inline]
    fn fill_fixed(&mut self, operation: u16) {
        self.set_hardware_type(HTYPE_ETHERNET);
        self.set_protocol_type(ethertype::IPV4);
        self.set_hardware_len(6);
        self.set_protocol_len(4);
        self.set_operation(operation);
    }

    /// Writes every field of a request "who has `target_ip`? tell `src_ip` at `src_mac`"; the
    /// target hardware address is zero (RFC 826 leaves it unspecified; zero is what hosts send).
    #[inline]
    pub fn fill_request(
        &mut self,
        src_mac: EthernetAddress,
        src_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    ) {
        self.fill_fixed(arp_op::REQUEST);
        self.set_sender_hardware_addr(src_mac);
        self.set_sender_protocol_addr(src_ip);
        self.set_target_hardware_addr(EthernetAddress::ZERO);
        self.set_target_protocol_addr(target_ip);
    }

    /// Writes every field of a reply "`src_ip` is at `src_mac`", addressed to the requester
    /// `dst_mac`/`dst_ip`.
    #[inline]
    pub fn fill_reply(
        &mut self,
        src_mac: EthernetAddress,
        src_ip: Ipv4Addr,
        dst_mac: EthernetAddress,
        dst_ip: Ipv4Addr,
    ) {
        self.fill_fixed(arp_op::REPLY);
        self.set_sender_hardware_addr(src_mac);
        self.set_sender_protocol_addr(src_ip);
        self.set_target_hardware_addr(dst_mac);
        self.set_target_protocol_addr(dst_ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARP body of a real request captured on a veth pair: who has 10.99.0.2? tell 10.99.0.1.
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc, 0x0a,
        0x63, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x00, 0x02,
    ];
    /// The real reply that followed: 10.99.0.2 is at 62:cb:2b:c7:d4:ef.
    const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x62, 0xcb, 0x2b, 0xc7, 0xd4, 0xef, 0x0a,
        0x63, 0x00, 0x02, 0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc, 0x0a, 0x63, 0x00, 0x01,
    ];
    const MAC_A: EthernetAddress = EthernetAddress([0xce, 0xd5, 0x0e, 0xcf, 0x31, 0xcc]);
    const MAC_B: EthernetAddress = EthernetAddress([0x62, 0xcb, 0x2b, 0xc7, 0xd4, 0xef]);
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    #[test]
    fn parses_real_request() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), arp_op::REQUEST);
        assert_eq!(p.sender_hardware_addr(), MAC_A);
        assert_eq!(p.sender_protocol_addr(), IP_A);
        assert_eq!(p.target_hardware_addr(), EthernetAddress::ZERO);
        assert_eq!(p.target_protocol_addr(), IP_B);
    }

    #[test]
    fn fill_request_and_reply_reproduce_real_packets() {
        // Start from garbage to prove every field is written.
        let mut buf = [0xa5u8; 28];
        ArpPacket::new_unchecked(&mut buf[..]).fill_request(MAC_A, IP_A, IP_B);
        assert_eq!(buf, REQUEST);

        let mut buf = [0x5au8; 28];
        ArpPacket::new_unchecked(&mut buf[..]).fill_reply(MAC_B, IP_B, MAC_A, IP_A);
        assert_eq!(buf, REPLY);
        assert!(ArpPacket::new_checked(&buf[..]).is_ok());
    }

    #[test]
    fn tolerates_ethernet_padding() {
        let mut buf = [0u8; 46];
        buf[..28].copy_from_slice(&REQUEST);
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.target_protocol_addr(), IP_B);
    }

    #[test]
    fn rejects_every_truncation() {
        for len in 0..ArpPacket::<&[u8]>::LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_non_ethernet_ipv4() {
        // (byte index, bad value): htype, ptype, hlen, plen.
        for (at, value) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut buf = REQUEST;
            buf[at] = value;
            assert_eq!(
                ArpPacket::new_checked(&buf[..]),
                Err(Error::Unsupported),
                "byte {at}"
            );
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 28];
        let mut p = ArpPacket::new_unchecked(&mut buf[..]);
        p.set_hardware_type(0x1234);
        p.set_protocol_type(0x5678);
        p.set_hardware_len(9);
        p.set_protocol_len(10);
        p.set_operation(0xbeef);
        p.set_sender_hardware_addr(MAC_B);
        p.set_sender_protocol_addr(IP_B);
        p.set_target_hardware_addr(MAC_A);
        p.set_target_protocol_addr(IP_A);
        assert_eq!(p.hardware_type(), 0x1234);
        assert_eq!(p.protocol_type(), 0x5678);
        assert_eq!(p.hardware_len(), 9);
        assert_eq!(p.protocol_len(), 10);
        assert_eq!(p.operation(), 0xbeef);
        assert_eq!(p.sender_hardware_addr(), MAC_B);
        assert_eq!(p.sender_protocol_addr(), IP_B);
        assert_eq!(p.target_hardware_addr(), MAC_A);
        assert_eq!(p.target_protocol_addr(), IP_A);
        assert_eq!(p.check_len(), Err(Error::Unsupported));
    }
}
