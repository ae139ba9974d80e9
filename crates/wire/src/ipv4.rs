//! IPv4 headers (RFC 791).

use core::cmp::min;
use std::net::Ipv4Addr;

use crate::{Error, Result, be, checksum};

/// IP protocol numbers the NAT translates.
pub mod ip_proto {
    /// Internet Control Message Protocol.
    pub const ICMP: u8 = 1;
    /// Transmission Control Protocol.
    pub const TCP: u8 = 6;
    /// User Datagram Protocol.
    pub const UDP: u8 = 17;
}

mod field {
    use core::ops::Range;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version|  IHL  |   DSCP    |ECN|          Total Length         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |         Identification        |Flags|      Fragment Offset    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       Source Address                          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Destination Address                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Options                    |    Padding    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// The buffer may be longer than Total Length (Ethernet pads short frames to 60 bytes);
/// [`payload`](Self::payload) stops at Total Length so padding never reaches TCP/UDP.
///
/// Variable-length slices (`options`, `payload`) are additionally clamped to the buffer, so even
/// after a setter writes an inconsistent length they return fewer bytes rather than panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// Wraps a buffer without checking it. Fixed-field getters and setters panic if the buffer
    /// is shorter than [`Self::MIN_HEADER_LEN`]; call [`Self::check_len`] before using them on
    /// untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Wraps a buffer holding the start of an IPv4 datagram whose tail may be missing: the copy of
    /// the offending datagram quoted inside an ICMP error (RFC 792 only requires the header plus
    /// 8 bytes, so Total Length describes the original, not what is here).
    ///
    /// Runs the header checks of [`Self::check_len`] (Truncated, BadVersion, BadHeaderLength)
    /// but not the Total Length check. [`payload`](Self::payload) then returns the bytes present,
    /// up to Total Length.
    #[inline]
    pub fn new_checked_header(buffer: T) -> Result<Ipv4Packet<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_header()?;
        Ok(packet)
    }

    #[inline]
    fn check_header(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::BadVersion);
        }
        let header_len = usize::from(self.header_len());
        if header_len < Self::MIN_HEADER_LEN {
            return Err(Error::BadHeaderLength);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Validates the buffer, in this order:
    /// 1. shorter than 20 bytes: `Truncated`;
    /// 2. version not 4: `BadVersion`;
    /// 3. IHL below 5: `BadHeaderLength`;
    /// 4. shorter than IHL × 4: `Truncated`;
    /// 5. Total Length below IHL × 4 or beyond the buffer: `BadTotalLength`.
    ///
    /// The header checksum is not verified; see [`Self::verify_checksum`].
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        self.check_header()?;
        let total_len = usize::from(self.total_len());
        if total_len < usize::from(self.header_len()) || total_len > self.buffer.as_ref().len() {
            return Err(Error::BadTotalLength);
        }
        Ok(())
    }

    /// Gives back the wrapped buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field (4 for a valid packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN, as the raw second byte (formerly Type of Service).
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total Length: header plus payload, in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::LENGTH])
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::IDENT])
    }

    #[inline]
    fn flags_and_frag(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::FLG_OFF])
    }

    /// Don't Fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.flags_and_frag() & FLAG_DF != 0
    }

    /// More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.flags_and_frag() & FLAG_MF != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_and_frag() & OFFSET_MASK) * 8
    }

    /// Whether this is a fragment (MF set or non-zero offset). Only the first fragment carries
    /// the transport header, so the NAT must not read ports from the others.
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_and_frag() & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// Time to Live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol; see [`ip_proto`].
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// Header checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_addr_u32())
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_addr_u32())
    }

    /// Source address as a host-order integer (`u32::from(src_addr())`), handy for hashing.
    #[inline]
    pub fn src_addr_u32(&self) -> u32 {
        be::u32(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// Destination address as a host-order integer.
    #[inline]
    pub fn dst_addr_u32(&self) -> u32 {
        be::u32(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The header bytes (options included), clamped to the buffer.
    #[inline]
    fn header(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[..min(usize::from(self.header_len()), data.len())]
    }

    /// Whether the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        let data = self.buffer.as_ref();
        // Nearly every header has no options: check those 20 bytes in fixed-size pieces.
        if let Some(h) = data.first_chunk::<20>()
            && h[0] == 0x45
        {
            return checksum::verify20(h);
        }
        self.verify_checksum_with_options()
    }

    /// The general case of [`Self::verify_checksum`], out of line so that the common one inlines.
    #[inline(never)]
    fn verify_checksum_with_options(&self) -> bool {
        checksum::checksum(self.header()) == 0
    }

    /// Options: bytes 20 to IHL × 4 (empty for the usual 20-byte header).
    #[inline]
    pub fn options(&self) -> &[u8] {
        let header = self.header();
        &header[min(Self::MIN_HEADER_LEN, header.len())..]
    }

    /// The payload: from the end of the header to Total Length (so Ethernet padding is excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        let (start, end) = self.payload_range(data.len());
        &data[start..end]
    }

    #[inline]
    fn payload_range(&self, len: usize) -> (usize, usize) {
        let end = min(usize::from(self.total_len()), len);
        let start = min(usize::from(self.header_len()), end);
        (start, end)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version nibble, keeping IHL.
    #[inline]
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes, keeping the version. `len` should be a multiple of 4
    /// between 20 and 60; the low two bits are dropped.
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    #[inline]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets Total Length.
    #[inline]
    pub fn set_total_len(&mut self, len: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::LENGTH], len);
    }

    /// Sets Identification.
    #[inline]
    pub fn set_ident(&mut self, ident: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::IDENT], ident);
    }

    /// Sets the DF and MF flags and the fragment offset (in bytes; it is stored in 8-byte units,
    /// so the low three bits are dropped). The reserved flag bit is cleared.
    #[inline]
    pub fn set_flags_and_frag(&mut self, dont_frag: bool, more_frags: bool, offset_bytes: u16) {
        let mut raw = (offset_bytes / 8) & OFFSET_MASK;
        if dont_frag {
            raw |= FLAG_DF;
        }
        if more_frags {
            raw |= FLAG_MF;
        }
        be::set_u16(&mut self.buffer.as_mut()[field::FLG_OFF], raw);
    }

    /// Sets Time to Live.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets Protocol.
    #[inline]
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Stores a header checksum (e.g. one updated with [`checksum::adjust_addr`]).
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Sets the source address. The checksum is not updated.
    #[inline]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address. The checksum is not updated.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// Computes the header checksum from scratch and stores it. NAT rewrites should prefer the
    /// incremental [`checksum::adjust16`]/[`checksum::adjust_addr`]; this is for packets the
    /// appliance builds itself.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.header());
        self.set_checksum(c);
    }

    /// The payload, mutable; same bounds as [`payload`](Ipv4Packet::payload).
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = self.payload_range(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[start..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Ipv4Packet<T> {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::tests::XorShift;

    /// A real ICMP echo request from Linux, 10.99.0.1 -> 10.99.0.2, as the IPv4 packet.
    const PING: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x7f, 0xcb, 0x40, 0x00, 0x40, 0x01, 0xa6, 0x2d, 0x0a, 0x63, 0x00,
        0x01, 0x0a, 0x63, 0x00, 0x02, 0x08, 0x00, 0xa2, 0x2c, 0x63, 0xd0, 0x00, 0x01, 0x10, 0x11,
        0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f,
    ];

    /// A real UDP DNS query for example.com, 10.99.0.1:40000 -> 10.99.0.2:53.
    const DNS: [u8; 57] = [
        0x45, 0x00, 0x00, 0x39, 0x2c, 0x6d, 0x40, 0x00, 0x40, 0x11, 0xf9, 0x7e, 0x0a, 0x63, 0x00,
        0x01, 0x0a, 0x63, 0x00, 0x02, 0x9c, 0x40, 0x00, 0x35, 0x00, 0x25, 0x64, 0xcd, 0x1a, 0x2b,
        0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d,
        0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    /// A real ICMP port unreachable sent by Linux (DSCP CS6, DF clear) in answer to `DNS`.
    const UNREACH_HEADER: [u8; 20] = [
        0x45, 0xc0, 0x00, 0x55, 0x15, 0x89, 0x00, 0x00, 0x40, 0x01, 0x4f, 0x97, 0x0a, 0x63, 0x00,
        0x02, 0x0a, 0x63, 0x00, 0x01,
    ];

    #[test]
    fn parses_real_ping() {
        let p = Ipv4Packet::new_checked(&PING[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 60);
        assert_eq!(p.ident(), 0x7fcb);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), ip_proto::ICMP);
        assert_eq!(p.checksum(), 0xa62d);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 99, 0, 2));
        assert_eq!(p.src_addr_u32(), 0x0a63_0001);
        assert_eq!(p.dst_addr_u32(), 0x0a63_0002);
        assert!(p.verify_checksum());
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &PING[20..]);
    }

    #[test]
    fn parses_real_dns_and_icmp_error_headers() {
        let p = Ipv4Packet::new_checked(&DNS[..]).unwrap();
        assert_eq!(p.protocol(), ip_proto::UDP);
        assert_eq!(p.total_len(), 57);
        assert_eq!(p.payload().len(), 37);
        assert!(p.verify_checksum());

        let mut buf = [0u8; 85];
        buf[..20].copy_from_slice(&UNREACH_HEADER);
        buf[28..].copy_from_slice(&DNS);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.dscp_ecn(), 0xc0);
        assert!(!p.dont_frag());
        assert_eq!(p.ident(), 0x1589);
        assert!(p.verify_checksum());
    }

    #[test]
    fn fill_checksum_reproduces_real_checksums() {
        for pkt in [&PING[..], &DNS[..], &UNREACH_HEADER[..]] {
            let mut buf = pkt.to_vec();
            buf[10] = 0xde;
            buf[11] = 0xad;
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            assert!(!p.verify_checksum());
            p.fill_checksum();
            assert!(p.verify_checksum());
            assert_eq!(buf, pkt);
        }
    }

    #[test]
    fn rejects_every_truncation_below_the_header() {
        for len in 0..Ipv4Packet::<&[u8]>::MIN_HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&PING[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_bad_version() {
        for version in [0u8, 1, 5, 6, 15] {
            let mut buf = PING;
            buf[0] = (version << 4) | 5;
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..]),
                Err(Error::BadVersion),
                "v{version}"
            );
        }
    }

    #[test]
    fn rejects_bad_ihl() {
        for ihl in 0u8..5 {
            let mut buf = PING;
            buf[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..]),
                Err(Error::BadHeaderLength),
                "ihl {ihl}"
            );
        }
    }

    #[test]
    fn rejects_header_longer_than_buffer() {
        // IHL 15 = 60 bytes of header, but only 40 bytes of buffer.
        let mut buf = PING;
        buf[0] = 0x4f;
        assert_eq!(Ipv4Packet::new_checked(&buf[..40]), Err(Error::Truncated));
        // With the whole 60 bytes the header fits (40 bytes of options, empty payload).
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 60);
        assert_eq!(p.options(), &PING[20..60]);
        assert!(p.payload().is_empty());
    }

    #[test]
    fn rejects_bad_total_len() {
        let too_big = [61u16, 100, 0xffff];
        let too_small = [0u16, 1, 19];
        for total in too_big.into_iter().chain(too_small) {
            let mut buf = PING;
            buf[2..4].copy_from_slice(&total.to_be_bytes());
            assert_eq!(
                Ipv4Packet::new_checked(&buf[..]),
                Err(Error::BadTotalLength),
                "total {total}"
            );
        }
        // Total length smaller than a header with options.
        let mut buf = PING;
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(
            Ipv4Packet::new_checked(&buf[..]),
            Err(Error::BadTotalLength)
        );
        // A packet cut short on the wire: Total Length says 60, 59 bytes arrived.
        assert_eq!(
            Ipv4Packet::new_checked(&PING[..59]),
            Err(Error::BadTotalLength)
        );
    }

    #[test]
    fn ethernet_padding_is_excluded_from_payload() {
        // A 57-byte IP packet in a frame padded with garbage up to 100 bytes.
        let mut buf = [0xeeu8; 100];
        buf[..57].copy_from_slice(&DNS);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &DNS[20..]);
        assert!(p.verify_checksum());

        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.payload_mut().len(), 37);
        // Minimal packet: header only, padded.
        let mut hdr = [0u8; 46];
        hdr[..20].copy_from_slice(&UNREACH_HEADER);
        hdr[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert!(
            Ipv4Packet::new_checked(&hdr[..])
                .unwrap()
                .payload()
                .is_empty()
        );
    }

    #[test]
    fn quoted_header_in_icmp_error() {
        // RFC 792 quote: the DNS packet's header plus the first 8 bytes (its UDP header).
        let quote = &DNS[..28];
        assert_eq!(Ipv4Packet::new_checked(quote), Err(Error::BadTotalLength));
        let p = Ipv4Packet::new_checked_header(quote).unwrap();
        assert_eq!(p.total_len(), 57);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(p.payload(), &DNS[20..28]);
        assert!(p.verify_checksum());
        // Header checks still apply.
        assert_eq!(
            Ipv4Packet::new_checked_header(&DNS[..19]),
            Err(Error::Truncated)
        );
        let mut bad = [0u8; 28];
        bad.copy_from_slice(quote);
        bad[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked_header(&bad[..]),
            Err(Error::BadHeaderLength)
        );
        bad[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked_header(&bad[..]),
            Err(Error::BadVersion)
        );
    }

    #[test]
    fn fragments_are_recognised() {
        let mut buf = PING;
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_flags_and_frag(false, true, 0);
        assert!(p.is_fragment() && p.more_frags() && !p.dont_frag());
        p.set_flags_and_frag(false, false, 1480);
        assert!(p.is_fragment() && !p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        p.set_flags_and_frag(true, false, 0);
        assert!(!p.is_fragment() && p.dont_frag());
        // Largest representable offset.
        p.set_flags_and_frag(false, false, 0xfff8);
        assert_eq!(p.frag_offset(), 0xfff8);
        assert_eq!(&buf[6..8], &[0x1f, 0xff]);
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 64];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(24);
        p.set_dscp_ecn(0xb8);
        p.set_total_len(64);
        p.set_ident(0xbeef);
        p.set_flags_and_frag(true, true, 64);
        p.set_ttl(63);
        p.set_protocol(ip_proto::TCP);
        p.set_src_addr(Ipv4Addr::new(100, 64, 0, 11));
        p.set_dst_addr(Ipv4Addr::new(198, 51, 100, 10));
        p.payload_mut().fill(0x77);
        p.fill_checksum();
        assert_eq!(p.check_len(), Ok(()));
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.dscp_ecn(), 0xb8);
        assert_eq!(p.total_len(), 64);
        assert_eq!(p.ident(), 0xbeef);
        assert!(p.dont_frag() && p.more_frags());
        assert_eq!(p.frag_offset(), 64);
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.protocol(), ip_proto::TCP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(100, 64, 0, 11));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 51, 100, 10));
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[0, 0, 0, 0]);
        assert_eq!(p.payload().len(), 40);
        p.set_checksum(0x1234);
        assert_eq!(p.checksum(), 0x1234);
        // Version and IHL live in one byte: each setter keeps the other nibble.
        p.set_version(6);
        assert_eq!(p.header_len(), 24);
        p.set_header_len(20);
        assert_eq!(p.version(), 6);
        assert_eq!(buf[0], 0x65);
        assert!(buf[24..].iter().all(|&b| b == 0x77));
    }

    #[test]
    fn lengths_broken_after_check_never_panic() {
        let mut buf = PING;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_total_len(0xffff);
        assert_eq!(p.payload().len(), 40);
        p.set_total_len(3);
        assert!(p.payload().is_empty());
        p.set_header_len(60);
        p.set_total_len(60);
        assert_eq!(p.options().len(), 40);
        let mut short = [0x4fu8; 30];
        short[2..4].copy_from_slice(&500u16.to_be_bytes());
        let p = Ipv4Packet::new_unchecked(&short[..]);
        assert_eq!(p.options().len(), 10);
        assert!(p.payload().is_empty());
        let _ = p.verify_checksum();
    }

    /// NAT rewrites: incremental updates of the header checksum must match `fill_checksum`.
    #[test]
    fn incremental_rewrites_match_full_recompute() {
        let mut rng = XorShift::new(0x0791);
        for _ in 0..5_000 {
            let mut buf = PING;
            let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            p.set_ident(rng.next_u16());
            p.set_ttl(rng.next_u64() as u8 | 1);
            p.fill_checksum();

            // SNAT: source address rewrite.
            let old = p.src_addr();
            let new = Ipv4Addr::from(rng.next_u32());
            p.set_src_addr(new);
            let adjusted = checksum::adjust_addr(p.checksum(), old, new);
            p.fill_checksum();
            assert_eq!(adjusted, p.checksum());

            // Router duty: TTL decrement, adjusting the TTL/protocol word.
            let word = u16::from_be_bytes([p.ttl(), p.protocol()]);
            let ttl = p.ttl() - 1;
            p.set_ttl(ttl);
            let adjusted =
                checksum::adjust16(p.checksum(), word, u16::from_be_bytes([ttl, p.protocol()]));
            p.fill_checksum();
            assert_eq!(adjusted, p.checksum());
        }
    }
}
