//! ICMP for IPv4 (RFC 792, RFC 1191).

use crate::{Error, Result, be, checksum};

/// ICMP message types the NAT distinguishes.
pub mod icmp_type {
    /// Echo reply (query).
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (error; code 4 carries the next-hop MTU).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (error, deprecated by RFC 6633 but still an error message).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect (error).
    pub const REDIRECT: u8 = 5;
    /// Echo request (query).
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (error).
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (error).
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// Timestamp request (query).
    pub const TIMESTAMP: u8 = 13;
    /// Timestamp reply (query).
    pub const TIMESTAMP_REPLY: u8 = 14;
    /// Information request (query, obsolete).
    pub const INFO_REQUEST: u8 = 15;
    /// Information reply (query, obsolete).
    pub const INFO_REPLY: u8 = 16;
}

mod field {
    use core::ops::{Range, RangeFrom};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Second word of the header: identifier/sequence for queries, unused or MTU for errors.
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    pub const NEXT_HOP_MTU: Range<usize> = 6..8;
    pub const DATA: RangeFrom<usize> = 8..;
}

/// A read/write view of an ICMPv4 message.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     Type      |     Code      |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Identifier          |        Sequence Number        |  queries
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |            unused             |   Next-Hop MTU (type 3 code 4)|  errors
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     Data: query payload, or for errors the offending IP header |
/// |     + at least 8 bytes of its payload ...                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// ICMP has no length field: the message is the whole buffer, so the caller passes exactly the
/// IPv4 payload, and the checksum covers all of it. Parse the IP datagram quoted by an error with
/// [`Ipv4Packet::new_checked_header`](crate::Ipv4Packet::new_checked_header) over
/// [`data`](Self::data), since it is usually cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Length of the fixed header (type, code, checksum and the 4-byte second word).
    pub const HEADER_LEN: usize = 8;

    /// Wraps a buffer without checking it. Getters and setters panic if the buffer is shorter
    /// than [`Self::HEADER_LEN`]; call [`Self::check_len`] before using them on untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Icmpv4Packet<T> {
        Icmpv4Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Icmpv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// `Err(Truncated)` if the buffer cannot hold the 8-byte header. The checksum is not
    /// verified; see [`Self::verify_checksum`].
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

    /// Message type; see [`icmp_type`].
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Message code (meaning depends on the type).
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Identifier of a query (bytes 4..6); the NAT translates it like a port.
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// Sequence number of a query (bytes 6..8).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::ECHO_SEQNO])
    }

    /// Next-hop MTU of a "fragmentation needed" message (type 3 code 4, RFC 1191; bytes 6..8).
    /// Meaningless for other messages.
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::NEXT_HOP_MTU])
    }

    /// Everything after the 8-byte header.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether this is an error message (destination unreachable, source quench, redirect, time
    /// exceeded, parameter problem), which quotes an offending datagram the NAT must translate
    /// too, and which must never trigger another ICMP error.
    #[inline]
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            icmp_type::DEST_UNREACHABLE
                | icmp_type::SOURCE_QUENCH
                | icmp_type::REDIRECT
                | icmp_type::TIME_EXCEEDED
                | icmp_type::PARAMETER_PROBLEM
        )
    }

    /// Whether this is a query message (echo, timestamp, information request or reply), whose
    /// identifier the NAT maps like a port.
    #[inline]
    pub fn is_query(&self) -> bool {
        matches!(
            self.msg_type(),
            icmp_type::ECHO_REPLY
                | icmp_type::ECHO_REQUEST
                | icmp_type::TIMESTAMP
                | icmp_type::TIMESTAMP_REPLY
                | icmp_type::INFO_REQUEST
                | icmp_type::INFO_REPLY
        )
    }

    /// Whether the checksum over the whole buffer is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Stores a checksum (e.g. one updated with [`checksum::adjust16`]).
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Sets the query identifier. The checksum is not updated.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], value);
    }

    /// Sets the query sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::ECHO_SEQNO], value);
    }

    /// Sets the next-hop MTU (bytes 6..8), for a "fragmentation needed" message.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::NEXT_HOP_MTU], value);
    }

    /// Zeroes bytes 4..8, the "unused" word of error messages. Call before
    /// [`Self::set_next_hop_mtu`] when building a "fragmentation needed" message.
    #[inline]
    pub fn set_unused_zero(&mut self) {
        self.buffer.as_mut()[field::REST].fill(0);
    }

    /// Everything after the 8-byte header, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum over the whole buffer and stores it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Icmpv4Packet<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::tests::XorShift;
    use crate::{Ipv4Addr, Ipv4Packet, UdpPacket, ip_proto};

    /// A real echo request from Linux's ping socket (ident 0x63d0, seq 1, 32 bytes of data).
    const ECHO_REQUEST: [u8; 40] = [
        0x08, 0x00, 0xa2, 0x2c, 0x63, 0xd0, 0x00, 0x01, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16,
        0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
    ];

    /// A real port unreachable from Linux quoting the UDP DNS query that caused it
    /// (65 bytes, odd length).
    const PORT_UNREACHABLE: [u8; 65] = [
        0x03, 0x03, 0x11, 0xfc, 0x00, 0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x39, 0x2c, 0x6d, 0x40,
        0x00, 0x40, 0x11, 0xf9, 0x7e, 0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02, 0x9c, 0x40,
        0x00, 0x35, 0x00, 0x25, 0x64, 0xcd, 0x1a, 0x2b, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d,
        0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn parses_real_echo_request() {
        let p = Icmpv4Packet::new_checked(&ECHO_REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), icmp_type::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.checksum(), 0xa22c);
        assert_eq!(p.echo_ident(), 0x63d0);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.data(), &ECHO_REQUEST[8..]);
        assert!(p.is_query() && !p.is_error());
        assert!(p.verify_checksum());
    }

    #[test]
    fn parses_real_port_unreachable_and_its_quote() {
        let p = Icmpv4Packet::new_checked(&PORT_UNREACHABLE[..]).unwrap();
        assert_eq!(p.msg_type(), icmp_type::DEST_UNREACHABLE);
        assert_eq!(p.msg_code(), 3);
        assert!(p.is_error() && !p.is_query());
        assert!(p.verify_checksum());

        let inner = Ipv4Packet::new_checked_header(p.data()).unwrap();
        assert_eq!(inner.protocol(), ip_proto::UDP);
        assert_eq!(inner.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        let udp = UdpPacket::new_checked(inner.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (40000, 53));
    }

    #[test]
    fn fill_checksum_reproduces_real_checksums() {
        for msg in [&ECHO_REQUEST[..], &PORT_UNREACHABLE[..]] {
            let mut buf = msg.to_vec();
            let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
            p.set_checksum(0xffff);
            assert!(!p.verify_checksum());
            p.fill_checksum();
            assert_eq!(buf, msg);
        }
    }

    #[test]
    fn building_the_real_echo_reply() {
        // The kernel's reply differs from the request only in type and checksum.
        let mut buf = ECHO_REQUEST;
        let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_msg_type(icmp_type::ECHO_REPLY);
        p.fill_checksum();
        assert_eq!(p.checksum(), 0xaa2c);
    }

    #[test]
    fn rejects_every_truncation() {
        for len in 0..Icmpv4Packet::<&[u8]>::HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ECHO_REQUEST[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        assert!(
            Icmpv4Packet::new_checked(&ECHO_REQUEST[..8])
                .unwrap()
                .data()
                .is_empty()
        );
    }

    #[test]
    fn classification_covers_every_type() {
        let errors = [3u8, 4, 5, 11, 12];
        let queries = [0u8, 8, 13, 14, 15, 16];
        for t in 0..=255u8 {
            let buf = [t, 0, 0, 0, 0, 0, 0, 0];
            let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
            assert_eq!(p.is_error(), errors.contains(&t), "type {t}");
            assert_eq!(p.is_query(), queries.contains(&t), "type {t}");
        }
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0xaau8; 12];
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(icmp_type::DEST_UNREACHABLE);
        p.set_msg_code(4);
        p.set_unused_zero();
        p.set_next_hop_mtu(1480);
        p.data_mut().copy_from_slice(&[1, 2, 3, 4]);
        p.fill_checksum();
        assert_eq!(p.msg_type(), 3);
        assert_eq!(p.msg_code(), 4);
        assert_eq!(p.echo_ident(), 0);
        assert_eq!(p.next_hop_mtu(), 1480);
        assert_eq!(p.data(), &[1, 2, 3, 4]);
        assert!(p.verify_checksum());
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(0x5678);
        p.set_checksum(0x9abc);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 0x5678);
        assert_eq!(p.checksum(), 0x9abc);
        assert_eq!(&buf[..8], &[3, 4, 0x9a, 0xbc, 0x12, 0x34, 0x56, 0x78]);
    }

    /// NAPT of echo: the identifier is rewritten like a port; the incremental update must equal
    /// a full recompute (ICMP has no pseudo-header, so addresses do not enter).
    #[test]
    fn incremental_ident_rewrite_matches_full_recompute() {
        let mut rng = XorShift::new(792);
        for _ in 0..5_000 {
            let mut buf = ECHO_REQUEST;
            let mut p = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
            let new_ident = rng.next_u16();
            let c = checksum::adjust16(p.checksum(), p.echo_ident(), new_ident);
            p.set_echo_ident(new_ident);
            p.fill_checksum();
            assert_eq!(p.checksum(), c);
        }
    }
}
