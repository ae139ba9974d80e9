//! Parsing a packet into a flow key, and rewriting it in place with incremental checksums.

use crate::{DropReason, FlowKey, shard::Dir};
use wire::{
    Error as WireError, Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket, checksum, icmp_type,
    ip_proto,
};

/// What the fast path needs to know about a packet after parsing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parsed {
    /// The packet's tuple as on the wire (see [`FlowKey`] for ICMP).
    pub key: FlowKey,
    /// Offset of the L4 header from the start of the IPv4 header.
    pub l4_off: u16,
    /// IPv4 total length: the rewrite never touches bytes past it (Ethernet padding).
    pub total_len: u16,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP message type (echo request or reply), 0 for other protocols.
    pub icmp_type: u8,
}

#[inline]
fn ipv4_error(e: WireError) -> DropReason {
    match e {
        WireError::BadVersion => DropReason::Ipv4BadVersion,
        WireError::BadHeaderLength => DropReason::Ipv4BadIhl,
        WireError::BadTotalLength => DropReason::Ipv4BadTotalLength,
        _ => DropReason::Ipv4Truncated,
    }
}

/// Validate the headers the translator relies on and extract the flow key. Everything that could make a
/// later stage index out of bounds is rejected here, with the reason it is counted under.
#[inline]
pub fn parse(pkt: &[u8], dir: Dir) -> Result<Parsed, DropReason> {
    let ip = Ipv4Packet::new_checked(pkt).map_err(ipv4_error)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    if ip.is_fragment() {
        return Err(DropReason::FragmentUnsupported);
    }
    if ip.ttl() <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let l4_off = ip.header_len() as u16;
    let total_len = ip.total_len();
    let (src, dst) = (ip.src_addr_u32(), ip.dst_addr_u32());
    let proto = ip.protocol();
    let payload = ip.payload();
    let mut icmp = 0;
    let (sport, dport, tcp_flags) = match proto {
        ip_proto::TCP => {
            let t = TcpPacket::new_checked(payload).map_err(|_| DropReason::TcpMalformed)?;
            (t.src_port(), t.dst_port(), t.flags())
        }
        ip_proto::UDP => {
            let u = UdpPacket::new_checked(payload).map_err(|_| DropReason::UdpBadLength)?;
            if u.len() as usize != payload.len() {
                // The UDP length must agree with the IP payload; a shorter one would let the rest of the
                // datagram pass untranslated and unchecked.
                return Err(DropReason::UdpBadLength);
            }
            (u.src_port(), u.dst_port(), 0)
        }
        ip_proto::ICMP => {
            let c = Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::IcmpMalformed)?;
            // Both echo types travel both ways: a reply from inside answers a request that reached the
            // subscriber through a mapping (endpoint-independent filtering, hairpinning). Which of them
            // may open a session is the shard's decision. The identifier is the inside side's "port"
            // in2out and the outside side's out2in, the same key shape as TCP and UDP.
            icmp = c.msg_type();
            if icmp != icmp_type::ECHO_REQUEST && icmp != icmp_type::ECHO_REPLY {
                return Err(DropReason::IcmpUnsupported);
            }
            match dir {
                Dir::In2Out => (c.echo_ident(), 0, 0),
                Dir::Out2In => (0, c.echo_ident(), 0),
            }
        }
        _ => return Err(DropReason::UnsupportedProtocol),
    };
    Ok(Parsed {
        key: FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        },
        l4_off,
        total_len,
        tcp_flags,
        icmp_type: icmp,
    })
}

/// Source, destination and TTL of a packet whose IPv4 header is valid (checked again here, so any
/// bytes are safe to pass).
#[inline]
pub fn ip_header(pkt: &[u8]) -> Option<(u32, u32, u8)> {
    let ip = Ipv4Packet::new_checked(pkt).ok()?;
    Some((ip.src_addr_u32(), ip.dst_addr_u32(), ip.ttl()))
}

/// Forward without translation: decrement the TTL and fix the header checksum, nothing else. The caller
/// has checked the header and that the TTL is above 1.
#[inline]
pub fn decrement_ttl(pkt: &mut [u8]) {
    let mut ip = Ipv4Packet::new_unchecked(pkt);
    let ttl = ip.ttl();
    let proto = ip.protocol();
    let ck = checksum::adjust16(
        ip.checksum(),
        u16::from_be_bytes([ttl, proto]),
        u16::from_be_bytes([ttl.wrapping_sub(1), proto]),
    );
    ip.set_ttl(ttl.wrapping_sub(1));
    ip.set_checksum(ck);
}

/// Which end of the packet to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrite one endpoint (address and port, or ICMP identifier) and, if `dec_ttl`, decrement the TTL,
/// updating the IPv4 and L4 checksums incrementally (RFC 1624). `p` comes from [`parse`] on the same
/// bytes (its key may describe them as seen after an earlier rewrite, as for the second half of a
/// hairpin: only the offsets and protocol are used). A hairpinned packet is rewritten twice but crosses
/// the NAT once, so only one of the two rewrites decrements the TTL.
#[inline]
pub fn rewrite(pkt: &mut [u8], p: &Parsed, end: End, addr: u32, port: u16, dec_ttl: bool) {
    let (hdr, rest) = pkt.split_at_mut(p.l4_off as usize);
    let l4 = &mut rest[..(p.total_len - p.l4_off) as usize];
    let mut ip = Ipv4Packet::new_unchecked(hdr);
    let new_addr = wire::Ipv4Addr::from(addr);
    let old_addr = match end {
        End::Source => ip.src_addr(),
        End::Destination => ip.dst_addr(),
    };
    let ttl = ip.ttl();
    let new_ttl = if dec_ttl { ttl.wrapping_sub(1) } else { ttl };
    let old_word = u16::from_be_bytes([ttl, p.key.proto]);
    let new_word = u16::from_be_bytes([new_ttl, p.key.proto]);
    let mut ck = checksum::adjust_addr(ip.checksum(), old_addr, new_addr);
    ck = checksum::adjust16(ck, old_word, new_word);
    ip.set_ttl(new_ttl);
    match end {
        End::Source => ip.set_src_addr(new_addr),
        End::Destination => ip.set_dst_addr(new_addr),
    }
    ip.set_checksum(ck);

    match p.key.proto {
        ip_proto::TCP => {
            let mut t = TcpPacket::new_unchecked(l4);
            let old_port = match end {
                End::Source => t.src_port(),
                End::Destination => t.dst_port(),
            };
            let ck = checksum::adjust16(
                checksum::adjust_addr(t.checksum(), old_addr, new_addr),
                old_port,
                port,
            );
            match end {
                End::Source => t.set_src_port(port),
                End::Destination => t.set_dst_port(port),
            }
            t.set_checksum(ck);
        }
        ip_proto::UDP => {
            let mut u = UdpPacket::new_unchecked(l4);
            let old_port = match end {
                End::Source => u.src_port(),
                End::Destination => u.dst_port(),
            };
            match end {
                End::Source => u.set_src_port(port),
                End::Destination => u.set_dst_port(port),
            }
            // A zero UDP checksum means "none" and must stay zero; a computed zero is sent as all ones.
            let old_ck = u.checksum();
            if old_ck != 0 {
                let ck = checksum::adjust16(
                    checksum::adjust_addr(old_ck, old_addr, new_addr),
                    old_port,
                    port,
                );
                u.set_checksum(if ck == 0 { 0xffff } else { ck });
            }
        }
        _ => {
            // ICMP echo: the identifier is the "port"; ICMP has no pseudo-header, so only it moves.
            let mut c = Icmpv4Packet::new_unchecked(l4);
            let old_id = c.echo_ident();
            let ck = checksum::adjust16(c.checksum(), old_id, port);
            c.set_echo_ident(port);
            c.set_checksum(ck);
        }
    }
}

#[cfg(test)]
pub(crate) mod testpkt {
    //! Packet builders for tests: real headers with correct checksums, computed the slow way.
    use wire::{Icmpv4Packet, Ipv4Addr, Ipv4Packet, TcpPacket, UdpPacket, ip_proto};

    fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + l4.len()];
        b[20..].copy_from_slice(l4);
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + l4.len()) as u16);
        ip.set_ident(0x1234);
        ip.set_flags_and_frag(true, false, 0);
        ip.set_ttl(64);
        ip.set_protocol(proto);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        b
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; 8 + payload.len()];
        l4[8..].copy_from_slice(payload);
        let mut u = UdpPacket::new_unchecked(&mut l4[..]);
        u.set_src_port(sport);
        u.set_dst_port(dport);
        u.set_len((8 + payload.len()) as u16);
        u.fill_checksum(src, dst);
        ipv4(ip_proto::UDP, src, dst, &l4)
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
        let mut l4 = vec![0u8; 24];
        l4[20..].copy_from_slice(b"data");
        let mut t = TcpPacket::new_unchecked(&mut l4[..]);
        t.set_src_port(sport);
        t.set_dst_port(dport);
        t.set_seq_number(1000);
        t.set_header_len(20);
        t.set_flags(flags);
        t.set_window_len(65535);
        t.fill_checksum(src, dst);
        ipv4(ip_proto::TCP, src, dst, &l4)
    }

    pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, ident: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 16];
        l4[8..].copy_from_slice(b"pingpong");
        let mut c = Icmpv4Packet::new_unchecked(&mut l4[..]);
        c.set_msg_type(ty);
        c.set_msg_code(0);
        c.set_echo_ident(ident);
        c.set_echo_seq_no(7);
        c.fill_checksum();
        ipv4(ip_proto::ICMP, src, dst, &l4)
    }

    /// Every checksum in the packet is what a full recomputation gives.
    pub fn checksums_valid(b: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(b).unwrap();
        let (s, d) = (ip.src_addr(), ip.dst_addr());
        ip.verify_checksum()
            && match ip.protocol() {
                ip_proto::TCP => TcpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(s, d),
                ip_proto::UDP => UdpPacket::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(s, d),
                _ => Icmpv4Packet::new_checked(ip.payload())
                    .unwrap()
                    .verify_checksum(),
            }
    }
}

#[cfg(test)]
mod tests {
    use super::testpkt::*;
    use super::*;
    use wire::{Ipv4Addr, tcp_flags};

    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    const SRV: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const OUT: u32 = 0xcb00_7103;

    #[test]
    fn parse_extracts_the_tuple() {
        let p = parse(&udp(SUB, 5000, SRV, 53, b"q"), Dir::In2Out).unwrap();
        assert_eq!(
            p.key,
            FlowKey {
                src: SUB.into(),
                dst: SRV.into(),
                sport: 5000,
                dport: 53,
                proto: 17
            }
        );
        let p = parse(
            &icmp_echo(SUB, SRV, icmp_type::ECHO_REQUEST, 77),
            Dir::In2Out,
        )
        .unwrap();
        assert_eq!((p.key.sport, p.key.dport), (77, 0));
        let p = parse(&icmp_echo(SRV, SUB, icmp_type::ECHO_REPLY, 77), Dir::Out2In).unwrap();
        assert_eq!((p.key.sport, p.key.dport), (0, 77));
        let p = parse(&tcp(SUB, 4000, SRV, 80, tcp_flags::SYN), Dir::In2Out).unwrap();
        assert_eq!(p.tcp_flags, tcp_flags::SYN);
    }

    #[test]
    fn parse_rejects_with_the_right_reason() {
        let good = udp(SUB, 5000, SRV, 53, b"hello");
        assert_eq!(
            parse(&good[..10], Dir::In2Out).unwrap_err(),
            DropReason::Ipv4Truncated
        );
        let mut b = good.clone();
        b[0] = 0x44;
        assert_eq!(parse(&b, Dir::In2Out).unwrap_err(), DropReason::Ipv4BadIhl);
        let mut b = good.clone();
        b[0] = 0x65;
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::Ipv4BadVersion
        );
        let mut b = good.clone();
        b[3] = 200; // total length beyond the buffer
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::Ipv4BadTotalLength
        );
        let mut b = good.clone();
        b[10] ^= 0xff;
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::Ipv4BadChecksum
        );
        // Zero-length UDP.
        let mut b = good.clone();
        b[24] = 0;
        b[25] = 0;
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::UdpBadLength
        );
        // UDP length shorter than the payload.
        let mut b = good.clone();
        b[25] = 9;
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::UdpBadLength
        );
        // TTL 1: the router must answer, not forward.
        let mut b = good.clone();
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_ttl(1);
        ip.fill_checksum();
        assert_eq!(parse(&b, Dir::In2Out).unwrap_err(), DropReason::TtlExceeded);
        // A fragment.
        let mut b = good.clone();
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_flags_and_frag(false, true, 0);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::FragmentUnsupported
        );
        // ICMP other than echo (timestamp here; errors are not translated yet).
        assert_eq!(
            parse(&icmp_echo(SUB, SRV, icmp_type::TIMESTAMP, 1), Dir::In2Out).unwrap_err(),
            DropReason::IcmpUnsupported
        );
        assert_eq!(
            parse(&icmp_echo(SRV, SUB, icmp_type::TIMESTAMP, 1), Dir::Out2In).unwrap_err(),
            DropReason::IcmpUnsupported
        );
        // Echo replies from inside and requests from outside parse (the key shape follows the
        // direction); the shard refuses them when no mapping or session explains them, see
        // `shard::tests::icmp_echo_that_cannot_open_a_session_is_refused`.
        let p = parse(&icmp_echo(SUB, SRV, icmp_type::ECHO_REPLY, 9), Dir::In2Out).unwrap();
        assert_eq!((p.key.sport, p.key.dport, p.icmp_type), (9, 0, 0));
        let p = parse(
            &icmp_echo(SRV, SUB, icmp_type::ECHO_REQUEST, 9),
            Dir::Out2In,
        )
        .unwrap();
        assert_eq!((p.key.sport, p.key.dport, p.icmp_type), (0, 9, 8));
        // Truncated TCP header.
        let t = tcp(SUB, 4000, SRV, 80, tcp_flags::SYN);
        let mut b = t[..30].to_vec();
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_total_len(30);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::TcpMalformed
        );
        // GRE.
        let mut b = good;
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_protocol(47);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out).unwrap_err(),
            DropReason::UnsupportedProtocol
        );
    }

    #[test]
    fn rewrite_keeps_every_checksum_valid() {
        for mut b in [
            udp(SUB, 5000, SRV, 53, b"odd-length!"),
            tcp(SUB, 4000, SRV, 80, tcp_flags::SYN),
            icmp_echo(SUB, SRV, icmp_type::ECHO_REQUEST, 0xfffe),
        ] {
            let p = parse(&b, Dir::In2Out).unwrap();
            rewrite(&mut b, &p, End::Source, OUT, 61000, true);
            assert!(checksums_valid(&b), "{b:02x?}");
            let ip = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert_eq!(ip.src_addr_u32(), OUT);
            assert_eq!(ip.ttl(), 63);
            let q = parse(&b, Dir::In2Out).unwrap();
            assert_eq!(q.key.sport, 61000);
            assert_eq!(q.key.dst, u32::from(SRV));
        }
    }

    #[test]
    fn both_ends_rewritten_with_one_ttl_decrement_keep_checksums_valid() {
        for mut b in [
            udp(SUB, 5000, SRV, 53, b"odd-length!"),
            tcp(SUB, 4000, SRV, 80, tcp_flags::SYN | tcp_flags::ACK),
            icmp_echo(SUB, SRV, icmp_type::ECHO_REQUEST, 0x1234),
        ] {
            let p = parse(&b, Dir::In2Out).unwrap();
            rewrite(&mut b, &p, End::Source, OUT, 61000, false);
            rewrite(&mut b, &p, End::Destination, 0x6440_000c, 7000, true);
            assert!(checksums_valid(&b), "{b:02x?}");
            let ip = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert_eq!((ip.src_addr_u32(), ip.dst_addr_u32()), (OUT, 0x6440_000c));
            assert_eq!(ip.ttl(), 63, "one hop, one decrement");
        }
    }

    #[test]
    fn untranslated_forwarding_only_touches_ttl_and_header_checksum() {
        let orig = udp(SUB, 5000, SRV, 53, b"abc");
        let mut b = orig.clone();
        decrement_ttl(&mut b);
        assert!(checksums_valid(&b));
        assert_eq!(b[8], 63);
        let differing: Vec<usize> = (0..b.len()).filter(|&i| b[i] != orig[i]).collect();
        assert!(
            differing.iter().all(|&i| i == 8 || i == 10 || i == 11),
            "{differing:?}"
        );
        assert_eq!(ip_header(&b), Some((u32::from(SUB), u32::from(SRV), 63)));
        assert_eq!(ip_header(&b[..5]), None);
    }

    #[test]
    fn udp_without_checksum_stays_without() {
        let mut b = udp(SUB, 5000, SRV, 53, b"x");
        b[26] = 0;
        b[27] = 0;
        let p = parse(&b, Dir::In2Out).unwrap();
        rewrite(&mut b, &p, End::Source, OUT, 1234, true);
        assert_eq!(&b[26..28], &[0, 0]);
    }

    #[test]
    fn ethernet_padding_is_left_alone() {
        let mut b = udp(SUB, 5000, SRV, 53, b"x");
        let n = b.len();
        b.extend_from_slice(&[0xaa; 17]);
        let p = parse(&b, Dir::In2Out).unwrap();
        rewrite(&mut b, &p, End::Source, OUT, 1234, true);
        assert!(checksums_valid(&b[..n]));
        assert!(b[n..].iter().all(|&x| x == 0xaa));
    }
}
