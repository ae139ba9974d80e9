//! UDP headers (RFC 768).

use core::cmp::min;
use std::net::Ipv4Addr;

use crate::ipv4::ip_proto;
use crate::{Error, Result, be, checksum};

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// A read/write view of a UDP datagram.
///
/// ```text
///  0      7 8     15 16    23 24    31
/// +--------+--------+--------+--------+
/// |     Source      |   Destination   |
/// |      Port       |      Port       |
/// +--------+--------+--------+--------+
/// |                 |                 |
/// |     Length      |    Checksum     |
/// +--------+--------+--------+--------+
/// |
/// |          data octets ...
/// +---------------- ...
/// ```
///
/// Length covers header and data; the buffer may be longer (bytes past Length are ignored).
/// A checksum of 0 means the sender did not compute one (RFC 768); a computed 0 is sent as 0xffff.
///
/// The 8-byte header quoted in an ICMP error passes `new_checked` only if its Length fits what was
/// quoted; port accessors touch bytes 0..4 only, so `new_unchecked` over at least 4 bytes may be
/// used to read and rewrite quoted ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Length of the UDP header.
    pub const HEADER_LEN: usize = 8;

    /// Wraps a buffer without checking it. Getters and setters panic if the buffer is shorter
    /// than the field they access (8 bytes covers all); call [`Self::check_len`] before using
    /// them on untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the buffer: `Truncated` if shorter than 8 bytes, `BadLength` if the Length field
    /// is below 8 or beyond the buffer. The checksum is not verified; see
    /// [`Self::verify_checksum`].
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let buf_len = self.buffer.as_ref().len();
        if buf_len < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(self.len());
        if len < Self::HEADER_LEN || len > buf_len {
            return Err(Error::BadLength);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// The Length field: header plus data, in bytes.
    // A datagram is never "empty" (the header alone is 8 bytes), so `is_empty` would be
    // meaningless; the name mirrors the RFC field.
    #[allow(clippy::len_without_is_empty)]
    #[inline]
    pub fn len(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Checksum as stored (0 = not computed by the sender).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// The header and data, bounded by Length and by the buffer.
    #[inline]
    fn datagram(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..min(usize::from(self.len()), data.len())]
    }

    /// The data after the header, up to Length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let datagram = self.datagram();
        &datagram[min(Self::HEADER_LEN, datagram.len())..]
    }

    /// One's-complement sum of pseudo-header and datagram.
    #[inline]
    fn full_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let datagram = self.datagram();
        // Bounded by the u16 Length field, so the cast is exact.
        let len = datagram.len() as u16;
        checksum::pseudo_header_v4(src, dst, ip_proto::UDP, len) + checksum::sum(datagram)
    }

    /// Whether the checksum is correct for a datagram carried from `src` to `dst`. A checksum of
    /// 0 means none was sent and is accepted.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::finish(self.full_sum(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port. The checksum is not updated.
    #[inline]
    pub fn set_src_port(&mut self, port: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::SRC_PORT], port);
    }

    /// Sets the destination port. The checksum is not updated.
    #[inline]
    pub fn set_dst_port(&mut self, port: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::DST_PORT], port);
    }

    /// Sets the Length field.
    #[inline]
    pub fn set_len(&mut self, len: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    /// Stores a checksum. When storing an incrementally adjusted one, remember the UDP rule:
    /// leave an absent (0) checksum alone, and store a computed 0 as 0xffff.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Computes the checksum over pseudo-header and datagram (up to Length) and stores it,
    /// writing a computed 0 as 0xffff because 0 would mean "no checksum".
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::finish(self.full_sum(src, dst));
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for UdpPacket<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::tests::XorShift;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    /// A real DNS query (A example.com) sent by Linux, 10.99.0.1:40000 -> 10.99.0.2:53.
    /// 37 bytes: the odd length exercises the checksum's padding byte.
    const DNS: [u8; 37] = [
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x25, 0x64, 0xcd, 0x1a, 0x2b, 0x01, 0x00, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x03, 0x63,
        0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn parses_real_dns_query() {
        let p = UdpPacket::new_checked(&DNS[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 37);
        assert_eq!(p.checksum(), 0x64cd);
        assert_eq!(p.payload(), &DNS[8..]);
        assert_eq!(&p.payload()[13..20], b"example");
        assert!(p.verify_checksum(CLIENT, SERVER));
        assert!(!p.verify_checksum(SERVER, SERVER));
    }

    #[test]
    fn fill_checksum_reproduces_real_checksum() {
        let mut buf = DNS;
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_checksum(0);
        p.fill_checksum(CLIENT, SERVER);
        assert_eq!(buf, DNS);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        let mut buf = DNS;
        // Tune the DNS flags word so the datagram's checksum comes out as exactly 0.
        buf[10..12].copy_from_slice(&[0, 0]);
        buf[6..8].copy_from_slice(&[0, 0]);
        let c = checksum::finish(
            checksum::pseudo_header_v4(CLIENT, SERVER, ip_proto::UDP, 37) + checksum::sum(&buf),
        );
        buf[10..12].copy_from_slice(&c.to_be_bytes());
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.fill_checksum(CLIENT, SERVER);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(CLIENT, SERVER));

        // Adjusting a stored 0xffff (one's-complement -0) still matches a full recompute.
        let mut rng = XorShift::new(0xffff);
        for _ in 0..1_000 {
            let mut copy = buf;
            let mut p = UdpPacket::new_checked(&mut copy[..]).unwrap();
            let new_port = rng.next_u16();
            let c = checksum::adjust16(p.checksum(), p.src_port(), new_port);
            p.set_src_port(new_port);
            p.fill_checksum(CLIENT, SERVER);
            assert_eq!(if c == 0 { 0xffff } else { c }, p.checksum());
        }
    }

    #[test]
    fn absent_checksum_verifies() {
        let mut buf = DNS;
        buf[6..8].copy_from_slice(&[0, 0]);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.checksum(), 0);
        assert!(p.verify_checksum(CLIENT, SERVER));
        assert!(p.verify_checksum(SERVER, CLIENT));
    }

    #[test]
    fn rejects_every_truncation() {
        for len in 0..UdpPacket::<&[u8]>::HEADER_LEN {
            assert_eq!(
                UdpPacket::new_checked(&DNS[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_bad_length_field() {
        for len in [0u16, 1, 7, 38, 0xffff] {
            let mut buf = DNS;
            buf[4..6].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                UdpPacket::new_checked(&buf[..]),
                Err(Error::BadLength),
                "len {len}"
            );
        }
        // Datagram cut short: Length 37, 36 bytes present.
        assert_eq!(UdpPacket::new_checked(&DNS[..36]), Err(Error::BadLength));
    }

    #[test]
    fn payload_stops_at_length() {
        let mut buf = [0xeeu8; 64];
        buf[..37].copy_from_slice(&DNS);
        let p = UdpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &DNS[8..]);
        assert!(p.verify_checksum(CLIENT, SERVER));
        // Header-only datagram.
        let mut hdr = DNS;
        hdr[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert!(
            UdpPacket::new_checked(&hdr[..])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 12];
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(5353);
        p.set_dst_port(65535);
        p.set_len(12);
        p.set_checksum(0xabcd);
        assert_eq!(p.check_len(), Ok(()));
        assert_eq!(p.src_port(), 5353);
        assert_eq!(p.dst_port(), 65535);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0xabcd);
        assert_eq!(p.payload().len(), 4);
        assert_eq!(&buf[..8], &[0x14, 0xe9, 0xff, 0xff, 0x00, 0x0c, 0xab, 0xcd]);
    }

    #[test]
    fn lengths_broken_after_check_never_panic() {
        let mut buf = DNS;
        let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_len(0xffff);
        assert_eq!(p.payload().len(), 29);
        let _ = p.verify_checksum(CLIENT, SERVER);
        p.set_len(3);
        assert!(p.payload().is_empty());
        let _ = p.verify_checksum(CLIENT, SERVER);
    }

    /// NAT rewrites with the UDP rule applied: incremental result equals `fill_checksum`.
    #[test]
    fn incremental_snat_matches_full_recompute() {
        let mut rng = XorShift::new(768);
        for _ in 0..5_000 {
            let mut buf = DNS;
            let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
            let new_src = Ipv4Addr::from(rng.next_u32());
            let new_port = rng.next_u16();

            let mut c = checksum::adjust_addr(p.checksum(), CLIENT, new_src);
            c = checksum::adjust16(c, p.src_port(), new_port);
            let c = if c == 0 { 0xffff } else { c };
            p.set_src_port(new_port);
            p.set_checksum(c);
            assert!(p.verify_checksum(new_src, SERVER));

            p.fill_checksum(new_src, SERVER);
            assert_eq!(p.checksum(), c);
        }
    }
}
