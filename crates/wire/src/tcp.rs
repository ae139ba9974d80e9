//! TCP headers (RFC 9293).

use core::cmp::min;
use std::net::Ipv4Addr;

use crate::ipv4::ip_proto;
use crate::{Error, Result, be, checksum};

/// TCP flag bits, as in the byte returned by [`TcpPacket::flags`].
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo (RFC 3168).
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: u8 = 0x80;
}

mod field {
    use core::ops::Range;

    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// A read/write view of a TCP segment.
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          Source Port          |       Destination Port        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                        Sequence Number                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Acknowledgment Number                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Data |       |C|E|U|A|P|R|S|F|                               |
/// | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
/// |       |       |R|E|G|K|H|T|N|N|                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Checksum            |         Urgent Pointer        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                           [Options]                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                             Data ...
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// TCP has no length field: the segment is the whole buffer, so the caller passes exactly the
/// IPv4 payload ([`Ipv4Packet::payload`](crate::Ipv4Packet::payload)), which excludes Ethernet
/// padding.
///
/// The header quoted in an ICMP error is only 8 bytes long and fails `new_checked`; the port
/// accessors touch bytes 0..4 only, so `new_unchecked` over a buffer of at least 4 bytes may be
/// used to read and rewrite the quoted ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Length of a header without options.
    pub const MIN_HEADER_LEN: usize = 20;

    /// Wraps a buffer without checking it. Getters and setters panic if the buffer is shorter
    /// than the field they access (20 bytes covers all); call [`Self::check_len`] before using
    /// them on untrusted data.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`Self::check_len`]; afterwards no accessor can panic.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates the buffer, in this order:
    /// 1. shorter than 20 bytes: `Truncated`;
    /// 2. data offset below 5 words: `BadHeaderLength`;
    /// 3. header (data offset × 4) longer than the buffer: `Truncated`.
    ///
    /// The checksum is not verified; see [`Self::verify_checksum`].
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < Self::MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < Self::MIN_HEADER_LEN {
            return Err(Error::BadHeaderLength);
        }
        if header_len > len {
            return Err(Error::Truncated);
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

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        be::u32(&self.buffer.as_ref()[field::SEQ_NUM])
    }

    /// Acknowledgment number.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        be::u32(&self.buffer.as_ref()[field::ACK_NUM])
    }

    /// Header length in bytes (data offset × 4), options included.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight flag bits CWR..FIN; test them with [`tcp_flags`]. (The experimental NS bit in
    /// the previous byte is not included.)
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Window size (unscaled).
    #[inline]
    pub fn window_len(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::WIN_SIZE])
    }

    /// Checksum as stored.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Urgent pointer.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        be::u16(&self.buffer.as_ref()[field::URGENT])
    }

    /// The data after the header and options (clamped to the buffer).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let data = self.buffer.as_ref();
        &data[min(usize::from(self.header_len()), data.len())..]
    }

    /// One's-complement sum of pseudo-header and segment.
    #[inline]
    fn full_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = self.buffer.as_ref();
        // An IPv4 payload is below 64 KiB, so the length fits; a larger buffer is a caller bug
        // that yields a wrong checksum, not a panic.
        let len = data.len() as u16;
        checksum::pseudo_header_v4(src, dst, ip_proto::TCP, len) + checksum::sum(data)
    }

    /// Whether the checksum is correct for a segment carried from `src` to `dst`.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::finish(self.full_sum(src, dst)) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
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

    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        be::set_u32(&mut self.buffer.as_mut()[field::SEQ_NUM], value);
    }

    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, value: u32) {
        be::set_u32(&mut self.buffer.as_mut()[field::ACK_NUM], value);
    }

    /// Sets the header length in bytes (a multiple of 4 from 20 to 60; the low two bits are
    /// dropped), keeping the reserved and NS bits.
    #[inline]
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | (((len / 4) & 0x0f) << 4);
    }

    /// Sets the eight flag bits CWR..FIN.
    #[inline]
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size.
    #[inline]
    pub fn set_window_len(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::WIN_SIZE], value);
    }

    /// Stores a checksum (e.g. one updated with [`checksum::adjust16`]).
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        be::set_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    /// Computes the checksum over the pseudo-header and the whole buffer and stores it. NAT
    /// rewrites should prefer the incremental helpers in [`checksum`].
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::finish(self.full_sum(src, dst));
        self.set_checksum(c);
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for TcpPacket<T> {
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

    /// A real Linux SYN, 10.99.0.1:58238 -> 10.99.0.2:8080, with MSS, SACK-permitted,
    /// timestamps and window scale options.
    const SYN: [u8; 40] = [
        0xe3, 0x7e, 0x1f, 0x90, 0x14, 0x56, 0x74, 0xbe, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0xad, 0x7a, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0xb1, 0x08,
        0x4d, 0x9d, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// A real data segment carrying "hello" (odd length), 10.99.0.1:46910 -> 10.99.0.2:8080.
    const HELLO: [u8; 37] = [
        0xb7, 0x3e, 0x1f, 0x90, 0x97, 0xbd, 0x37, 0xa2, 0x84, 0xfa, 0xbc, 0x55, 0x80, 0x18, 0x00,
        0x3f, 0xe8, 0x5c, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xdf, 0xd5, 0x20, 0xbe, 0xb7, 0x5f,
        0x96, 0x07, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
    ];

    #[test]
    fn parses_real_syn() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 58238);
        assert_eq!(p.dst_port(), 8080);
        assert_eq!(p.seq_number(), 0x1456_74be);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), tcp_flags::SYN);
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0xad7a);
        assert_eq!(p.urgent_at(), 0);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum(CLIENT, SERVER));
        // The pseudo-header binds the checksum to the addresses.
        assert!(!p.verify_checksum(CLIENT, Ipv4Addr::new(10, 99, 0, 3)));
    }

    #[test]
    fn parses_real_data_segment() {
        let p = TcpPacket::new_checked(&HELLO[..]).unwrap();
        assert_eq!(p.src_port(), 46910);
        assert_eq!(p.seq_number(), 0x97bd_37a2);
        assert_eq!(p.ack_number(), 0x84fa_bc55);
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.flags(), tcp_flags::PSH | tcp_flags::ACK);
        assert_eq!(p.window_len(), 63);
        assert_eq!(p.payload(), b"hello");
        assert!(p.verify_checksum(CLIENT, SERVER));
    }

    #[test]
    fn fill_checksum_reproduces_real_checksums() {
        for seg in [&SYN[..], &HELLO[..]] {
            let mut buf = seg.to_vec();
            let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
            p.set_checksum(0x0bad);
            assert!(!p.verify_checksum(CLIENT, SERVER));
            p.fill_checksum(CLIENT, SERVER);
            assert_eq!(buf, seg);
        }
    }

    #[test]
    fn rejects_every_truncation() {
        for len in 0..TcpPacket::<&[u8]>::MIN_HEADER_LEN {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        // Data offset says 40 bytes of header; fewer are present.
        for len in 20..40 {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]),
                Err(Error::Truncated),
                "len {len}"
            );
        }
    }

    #[test]
    fn rejects_bad_data_offset() {
        for words in 0u8..5 {
            let mut buf = SYN;
            buf[12] = words << 4;
            assert_eq!(
                TcpPacket::new_checked(&buf[..]),
                Err(Error::BadHeaderLength),
                "offset {words}"
            );
        }
        // Offset 15 (60 bytes) in a 40-byte segment.
        let mut buf = SYN;
        buf[12] = 0xf0;
        assert_eq!(TcpPacket::new_checked(&buf[..]), Err(Error::Truncated));
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 24];
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(1024);
        p.set_dst_port(443);
        p.set_seq_number(0xdead_beef);
        p.set_ack_number(0x0102_0304);
        p.set_header_len(20);
        p.set_flags(tcp_flags::FIN | tcp_flags::ACK | tcp_flags::CWR);
        p.set_window_len(0xfff0);
        p.set_checksum(0x1234);
        assert_eq!(p.check_len(), Ok(()));
        assert_eq!(p.src_port(), 1024);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0xdead_beef);
        assert_eq!(p.ack_number(), 0x0102_0304);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.flags(), 0x91);
        assert_eq!(p.window_len(), 0xfff0);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(p.payload().len(), 4);
        // The NS/reserved nibble survives a header length change.
        buf[12] = 0x51;
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        p.set_header_len(24);
        assert_eq!(p.header_len(), 24);
        assert_eq!(buf[12], 0x61);
    }

    #[test]
    fn quoted_header_ports_with_new_unchecked() {
        // The first 8 bytes of a TCP header, as quoted in an ICMP error.
        let mut quote = [0u8; 8];
        quote.copy_from_slice(&SYN[..8]);
        assert_eq!(TcpPacket::new_checked(&quote[..]), Err(Error::Truncated));
        let mut p = TcpPacket::new_unchecked(&mut quote[..]);
        assert_eq!((p.src_port(), p.dst_port()), (58238, 8080));
        p.set_src_port(1);
        assert_eq!(p.seq_number(), 0x1456_74be);
        assert_eq!(&quote[..2], &[0, 1]);
    }

    /// NAT rewrites: source address (through the pseudo-header) and source port, updated
    /// incrementally, must equal a full recompute.
    #[test]
    fn incremental_snat_matches_full_recompute() {
        let mut rng = XorShift::new(793);
        for i in 0..5_000 {
            let mut buf = if i % 2 == 0 {
                SYN.to_vec()
            } else {
                HELLO.to_vec()
            };
            let mut p = TcpPacket::new_checked(&mut buf[..]).unwrap();
            let new_src = Ipv4Addr::from(rng.next_u32());
            let new_port = rng.next_u16();
            let old_port = p.src_port();

            let mut c = checksum::adjust_addr(p.checksum(), CLIENT, new_src);
            c = checksum::adjust16(c, old_port, new_port);
            p.set_src_port(new_port);
            p.set_checksum(c);
            assert!(p.verify_checksum(new_src, SERVER));

            p.fill_checksum(new_src, SERVER);
            assert_eq!(p.checksum(), c);
        }
    }
}
