//! Parsing a packet into a flow key, and rewriting it in place with incremental checksums.

use crate::{DropReason, FlowKey, L4Ids, shard::Dir};
use wire::{
    Error as WireError, Icmpv4Packet, Ipv4Packet, TcpPacket, UdpPacket, checksum, icmp_type,
    ip_proto,
};

/// Fragment position of a packet ([`Parsed::frag`]).
pub mod frag_pos {
    /// A whole datagram.
    pub const NONE: u8 = 0;
    /// The first fragment: it carries the transport header, which is rewritten as usual.
    pub const FIRST: u8 = 1;
    /// A later fragment: no transport header; only the IPv4 header is rewritten.
    pub const LATER: u8 = 2;
}

/// What the fast path needs to know about a packet after parsing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The packet's tuple as on the wire (see [`FlowKey`] for ICMP). For an ICMP error, the key of the
    /// session its quoted packet belongs to, in this direction's orientation; for a later fragment, the
    /// ports its first fragment carried.
    pub key: FlowKey,
    /// Offset of the L4 header from the start of the IPv4 header.
    pub l4_off: u16,
    /// IPv4 total length: the rewrite never touches bytes past it (Ethernet padding).
    pub total_len: u16,
    /// TCP flags, 0 for other protocols (and for later fragments).
    pub tcp_flags: u8,
    /// ICMP message type (echo request or reply, or the error type), 0 for other protocols.
    pub icmp_type: u8,
    /// [`frag_pos`].
    pub frag: u8,
    /// An ICMP error (RFC 5508): the quoted packet starts 8 bytes into the ICMP message, and
    /// `key.proto` is the quoted packet's protocol.
    pub icmp_error: bool,
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
///
/// `later` is what virtual reassembly ([`crate::Reassembly`]) knows of a later fragment: the identifiers
/// its first fragment carried. A later fragment without them is refused.
// Always inlined into the burst loop (its only data-path caller): returned through memory, the
// parsed fields were read back narrower than they were written, a store-forwarding stall per packet.
#[inline(always)]
pub fn parse(pkt: &[u8], dir: Dir, later: Option<L4Ids>) -> Result<Parsed, DropReason> {
    match parse_simple(pkt) {
        Some(p) => Ok(p),
        None => parse_general(pkt, dir, later),
    }
}

/// [`parse`] for nearly every packet: a whole TCP segment or UDP datagram under a 20-byte IPv4
/// header, valid by every check [`parse_general`] makes. It reads the headers through one
/// fixed-size view, one bounds check instead of one per field: callgrind counted about 110
/// instructions per packet for the general parse of such a packet.
///
/// `None` for anything else (options, fragments, ICMP, TTL 1, a bad length or checksum, other
/// protocols), which [`parse_general`] then accepts or refuses with its reason. For a packet
/// this accepts, the general parse returns the same [`Parsed`]; a test compares the two on
/// mutated and truncated packets.
#[inline(always)]
fn parse_simple(pkt: &[u8]) -> Option<Parsed> {
    // IPv4 header and the first 8 bytes of the transport header.
    let h = pkt.first_chunk::<28>()?;
    let total_len = u16::from_be_bytes([h[2], h[3]]);
    let total = usize::from(total_len);
    // Version 4 with IHL 5; MF clear and offset 0 (DF and the reserved bit do not matter); TTL
    // above 1; the datagram within the buffer.
    if h[0] != 0x45 || h[6] & 0x3f != 0 || h[7] != 0 || h[8] <= 1 || total > pkt.len() {
        return None;
    }
    let tcp_flags = match h[9] {
        // The UDP length must be the whole IP payload, at least a UDP header.
        ip_proto::UDP
            if total >= 28 && usize::from(u16::from_be_bytes([h[24], h[25]])) == total - 20 =>
        {
            0
        }
        ip_proto::TCP => {
            // A TCP header of data offset ≥ 5 words, all of it inside the IP payload.
            let t = pkt.get(20..total)?.first_chunk::<20>()?;
            let off = usize::from(t[12] >> 4) * 4;
            if off < 20 || off > total - 20 {
                return None;
            }
            t[13]
        }
        _ => return None,
    };
    if !checksum::verify20(h.first_chunk::<20>()?) {
        return None;
    }
    Some(Parsed {
        key: FlowKey {
            src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
            sport: u16::from_be_bytes([h[20], h[21]]),
            dport: u16::from_be_bytes([h[22], h[23]]),
            proto: h[9],
        },
        l4_off: 20,
        total_len,
        tcp_flags,
        ..Parsed::default()
    })
}

/// [`parse`] for any packet.
#[inline(never)]
fn parse_general(pkt: &[u8], dir: Dir, later: Option<L4Ids>) -> Result<Parsed, DropReason> {
    let ip = Ipv4Packet::new_checked(pkt).map_err(ipv4_error)?;
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    if ip.ttl() <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let l4_off = ip.header_len() as u16;
    let total_len = ip.total_len();
    let (src, dst) = (ip.src_addr_u32(), ip.dst_addr_u32());
    let proto = ip.protocol();
    let payload = ip.payload();
    let mut frag = frag_pos::NONE;
    if ip.is_fragment() {
        if !matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP) {
            return Err(DropReason::UnsupportedProtocol);
        }
        if ip.frag_offset() != 0 {
            return parse_later_fragment(dir, later, src, dst, proto, l4_off, total_len);
        }
        frag = frag_pos::FIRST;
    }
    let mut icmp = 0;
    let (sport, dport, tcp_flags) = match proto {
        ip_proto::TCP => {
            let t = TcpPacket::new_checked(payload).map_err(|_| DropReason::TcpMalformed)?;
            (t.src_port(), t.dst_port(), t.flags())
        }
        ip_proto::UDP => {
            // The UDP length must agree with the IP payload (a shorter one would let the rest of the
            // datagram pass untranslated and unchecked); a first fragment holds only part of it.
            let u = if frag == frag_pos::FIRST {
                if payload.len() < 8 {
                    return Err(DropReason::UdpBadLength);
                }
                let u = UdpPacket::new_unchecked(payload);
                if (u.len() as usize) <= payload.len() {
                    return Err(DropReason::UdpBadLength);
                }
                u
            } else {
                let u = UdpPacket::new_checked(payload).map_err(|_| DropReason::UdpBadLength)?;
                if u.len() as usize != payload.len() {
                    return Err(DropReason::UdpBadLength);
                }
                u
            };
            (u.src_port(), u.dst_port(), 0)
        }
        ip_proto::ICMP => {
            let c = Icmpv4Packet::new_checked(payload).map_err(|_| DropReason::IcmpMalformed)?;
            icmp = c.msg_type();
            match icmp {
                // Both echo types travel both ways: a reply from inside answers a request that reached
                // the subscriber through a mapping (endpoint-independent filtering, hairpinning). Which
                // of them may open a session is the shard's decision. The identifier is the inside
                // side's "port" in2out and the outside side's out2in, the same key shape as TCP and UDP.
                icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY => match dir {
                    Dir::In2Out => (c.echo_ident(), 0, 0),
                    Dir::Out2In => (0, c.echo_ident(), 0),
                },
                icmp_type::DEST_UNREACHABLE
                | icmp_type::TIME_EXCEEDED
                | icmp_type::PARAMETER_PROBLEM
                | icmp_type::SOURCE_QUENCH => {
                    if frag != frag_pos::NONE {
                        return Err(DropReason::FragmentMalformed);
                    }
                    return parse_icmp_error(payload, dir, l4_off, total_len, icmp);
                }
                _ => return Err(DropReason::IcmpUnsupported),
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
        frag,
        ..Parsed::default()
    })
}

/// A later fragment: its key comes from the first fragment's identifiers (kept out of line: rare).
#[cold]
fn parse_later_fragment(
    dir: Dir,
    later: Option<L4Ids>,
    src: u32,
    dst: u32,
    proto: u8,
    l4_off: u16,
    total_len: u16,
) -> Result<Parsed, DropReason> {
    let ids = later.ok_or(DropReason::FragmentMalformed)?;
    if proto == ip_proto::ICMP
        && ids.icmp_type != icmp_type::ECHO_REQUEST
        && ids.icmp_type != icmp_type::ECHO_REPLY
    {
        return Err(DropReason::FragmentMalformed);
    }
    let (sport, dport) = match (proto, dir) {
        (ip_proto::ICMP, Dir::In2Out) => (ids.sport, 0),
        (ip_proto::ICMP, Dir::Out2In) => (0, ids.sport),
        _ => (ids.sport, ids.dport),
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
        icmp_type: ids.icmp_type,
        frag: frag_pos::LATER,
        ..Parsed::default()
    })
}

/// An ICMP error (RFC 5508 section 4): the key is that of the session the quoted packet belongs to. The
/// quoted packet travelled the other way, so its source is our session's destination side: in2out it is
/// a packet we delivered to the subscriber (remote → inside endpoint), out2in one we sent out (outside
/// endpoint → remote). Swapping its ends gives this direction's session key.
#[cold]
fn parse_icmp_error(
    icmp: &[u8],
    dir: Dir,
    l4_off: u16,
    total_len: u16,
    icmp_type: u8,
) -> Result<Parsed, DropReason> {
    const UNMATCHED: DropReason = DropReason::IcmpErrorUnmatched;
    let inner = icmp.get(8..).ok_or(DropReason::IcmpMalformed)?;
    let q = Ipv4Packet::new_checked_header(inner).map_err(|_| UNMATCHED)?;
    // Only a first fragment (or a whole datagram) quotes the ports.
    if q.frag_offset() != 0 {
        return Err(UNMATCHED);
    }
    let qhl = usize::from(q.header_len());
    // RFC 792: the header plus the first 8 bytes of its payload at least.
    let ql4 = inner.get(qhl..qhl + 8).ok_or(UNMATCHED)?;
    let be = |i: usize| u16::from_be_bytes([ql4[i], ql4[i + 1]]);
    let (qsrc, qdst, qproto) = (q.src_addr_u32(), q.dst_addr_u32(), q.protocol());
    let (sport, dport) = match qproto {
        ip_proto::TCP | ip_proto::UDP => (be(2), be(0)),
        // An error about an error is never one of ours (nobody answers an ICMP error with one, RFC
        // 1122 3.2.2); of ICMP only echo has a session.
        ip_proto::ICMP if matches!(ql4[0], icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY) => {
            match dir {
                Dir::In2Out => (be(4), 0),
                Dir::Out2In => (0, be(4)),
            }
        }
        _ => return Err(UNMATCHED),
    };
    Ok(Parsed {
        key: FlowKey {
            src: qdst,
            dst: qsrc,
            sport,
            dport,
            proto: qproto,
        },
        l4_off,
        total_len,
        tcp_flags: 0,
        icmp_type,
        frag: frag_pos::NONE,
        icmp_error: true,
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
// Every packet of every flow goes through here, so it works on fixed-size views of the headers
// (one length check each instead of one per field) and sums the address change once for both
// checksums, folding each checksum once (RFC 1624 eqn. 3 over all the words that change).
#[inline]
pub fn rewrite(pkt: &mut [u8], p: &Parsed, end: End, addr: u32, port: u16, dec_ttl: bool) {
    rewrite_inline(pkt, p, end, addr, port, dec_ttl);
}

/// [`rewrite`], always inlined: for the one call every established packet makes (the shard's
/// `forward`). With several callers the compiler kept [`rewrite`] out of line, a call per packet.
#[inline(always)]
pub fn rewrite_inline(pkt: &mut [u8], p: &Parsed, end: End, addr: u32, port: u16, dec_ttl: bool) {
    // `parse` checked 20 <= l4_off and that the transport header it read lies within the packet;
    // a packet that somehow breaks that is left as it is rather than half rewritten.
    let l4_off = usize::from(p.l4_off);
    let later = p.frag == frag_pos::LATER;
    let l4_needed = match p.key.proto {
        _ if later => 0,
        ip_proto::TCP => 18,
        _ => 8,
    };
    let fits = l4_off >= 20 && pkt.len() >= l4_off + l4_needed;
    debug_assert!(fits, "rewrite of a packet parse would have refused");
    if !fits {
        return;
    }
    let (hdr, l4) = pkt.split_at_mut(l4_off);
    let Some(ip) = hdr.first_chunk_mut::<20>() else {
        return;
    };
    let at = match end {
        End::Source => 12,
        End::Destination => 16,
    };
    // Every sum here works on 16-bit words as they lie in memory (native order), not as numbers:
    // a one's-complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 section 2
    // (B)), so a checksum summed and stored in native order is the right one on the wire, and no
    // field needs swapping on its way in or out. Only the new address and port, which come as
    // numbers, are put in network order once. (The same code in big-endian numbers spent about a
    // dozen instructions per packet on byte swaps.)
    let word = |b: &[u8], i: usize| u32::from(u16::from_ne_bytes([b[i], b[i + 1]]));
    let new_addr = addr.to_be_bytes();
    // The address's one's-complement difference, which both the IPv4 and the pseudo-header sums see.
    let addr_delta = (word(ip, at) ^ 0xffff)
        + (word(ip, at + 2) ^ 0xffff)
        + word(&new_addr, 0)
        + word(&new_addr, 2);
    ip[at..at + 4].copy_from_slice(&new_addr);
    let mut ip_sum = (word(ip, 10) ^ 0xffff) + addr_delta;
    if dec_ttl {
        // The TTL shares a 16-bit word with the protocol, which does not change: ~old + new of
        // the word is that of the TTL byte alone in its place.
        let ttl = ip[8];
        ip[8] = ttl.wrapping_sub(1);
        ip_sum += (word(&[ttl, 0], 0) ^ 0xffff) + word(&[ip[8], 0], 0);
    }
    ip[10..12].copy_from_slice(&(!checksum::fold(ip_sum)).to_ne_bytes());
    if later {
        // No transport header here; the first fragment's rewrite already fixed the L4 checksum, which
        // covers the whole datagram.
        return;
    }
    let port_at = match end {
        End::Source => 0,
        End::Destination => 2,
    };
    let new_port = port.to_be_bytes();
    // The port's difference, in the same native words.
    let port_delta = |l4: &[u8]| (word(l4, port_at) ^ 0xffff) + word(&new_port, 0);
    match p.key.proto {
        ip_proto::TCP => {
            let Some(t) = l4.first_chunk_mut::<18>() else {
                return;
            };
            let sum = (word(t, 16) ^ 0xffff) + addr_delta + port_delta(t);
            t[port_at..port_at + 2].copy_from_slice(&new_port);
            t[16..18].copy_from_slice(&(!checksum::fold(sum)).to_ne_bytes());
        }
        ip_proto::UDP => {
            let Some(u) = l4.first_chunk_mut::<8>() else {
                return;
            };
            // A zero UDP checksum means "none" and must stay zero; a computed zero is sent as all
            // ones. (Zero and all ones read the same in either byte order.)
            let old_ck = word(u, 6);
            let delta = port_delta(u);
            u[port_at..port_at + 2].copy_from_slice(&new_port);
            if old_ck != 0 {
                let ck = !checksum::fold((old_ck ^ 0xffff) + addr_delta + delta);
                u[6..8].copy_from_slice(&(if ck == 0 { 0xffff } else { ck }).to_ne_bytes());
            }
        }
        _ => {
            // ICMP echo: the identifier is the "port"; ICMP has no pseudo-header, so only it moves.
            let Some(c) = l4.first_chunk_mut::<8>() else {
                return;
            };
            let old_id = u16::from_be_bytes([c[4], c[5]]);
            let ck = checksum::adjust16(u16::from_be_bytes([c[2], c[3]]), old_id, port);
            c[4..6].copy_from_slice(&port.to_be_bytes());
            c[2..4].copy_from_slice(&ck.to_be_bytes());
        }
    }
}

/// Translate an ICMP error (RFC 5508 section 4) in place. `outer_addr` replaces the outer source
/// (`End::Source`, in2out: the error leaves under the subscriber's outside address) or destination
/// (`End::Destination`, out2in: it goes to the subscriber); the quoted packet's opposite end (its
/// destination in2out, its source out2in) becomes `inner_addr`:`inner_port` (or identifier). The outer
/// TTL is decremented if `dec_ttl` (once per crossing: not by the first half of a hairpin). Every checksum is updated incrementally (RFC 1624): the outer IPv4 header, the
/// quoted IPv4 header, the quoted transport checksum where it was quoted (a zero UDP checksum stays
/// zero), and the ICMP checksum, which covers all the quoted bytes that changed. `p` comes from
/// [`parse`] on these bytes with `icmp_error` set, which checked every offset used here.
pub fn rewrite_icmp_error(
    pkt: &mut [u8],
    p: &Parsed,
    end: End,
    outer_addr: u32,
    inner_addr: u32,
    inner_port: u16,
    dec_ttl: bool,
) {
    let (hdr, rest) = pkt.split_at_mut(p.l4_off as usize);
    let icmp = &mut rest[..(p.total_len - p.l4_off) as usize];
    let mut ip = Ipv4Packet::new_unchecked(hdr);
    let new_outer = wire::Ipv4Addr::from(outer_addr);
    let old_outer = match end {
        End::Source => ip.src_addr(),
        End::Destination => ip.dst_addr(),
    };
    let ttl = ip.ttl();
    let new_ttl = if dec_ttl { ttl.wrapping_sub(1) } else { ttl };
    let mut ck = checksum::adjust_addr(ip.checksum(), old_outer, new_outer);
    ck = checksum::adjust16(
        ck,
        u16::from_be_bytes([ttl, ip_proto::ICMP]),
        u16::from_be_bytes([new_ttl, ip_proto::ICMP]),
    );
    ip.set_ttl(new_ttl);
    match end {
        End::Source => ip.set_src_addr(new_outer),
        End::Destination => ip.set_dst_addr(new_outer),
    }
    ip.set_checksum(ck);

    let (head, quoted) = icmp.split_at_mut(8);
    let mut icmp_ck = u16::from_be_bytes([head[2], head[3]]);
    let qhl = usize::from(quoted[0] & 0x0f) * 4;
    let (qhdr, ql4) = quoted.split_at_mut(qhl);
    let mut q = Ipv4Packet::new_unchecked(qhdr);
    let new_inner = wire::Ipv4Addr::from(inner_addr);
    // The quoted packet went the other way: in2out we rewrite its destination, out2in its source.
    let old_inner = match end {
        End::Source => q.dst_addr(),
        End::Destination => q.src_addr(),
    };
    match end {
        End::Source => q.set_dst_addr(new_inner),
        End::Destination => q.set_src_addr(new_inner),
    }
    let old_qck = q.checksum();
    let new_qck = checksum::adjust_addr(old_qck, old_inner, new_inner);
    q.set_checksum(new_qck);
    icmp_ck = checksum::adjust_addr(icmp_ck, old_inner, new_inner);
    icmp_ck = checksum::adjust16(icmp_ck, old_qck, new_qck);

    let word = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let put = |b: &mut [u8], i: usize, v: u16| b[i..i + 2].copy_from_slice(&v.to_be_bytes());
    match p.key.proto {
        ip_proto::TCP | ip_proto::UDP => {
            let port_at = match end {
                End::Source => 2,
                End::Destination => 0,
            };
            let old_port = word(ql4, port_at);
            put(ql4, port_at, inner_port);
            icmp_ck = checksum::adjust16(icmp_ck, old_port, inner_port);
            let ck_at = if p.key.proto == ip_proto::TCP { 16 } else { 6 };
            if ql4.len() >= ck_at + 2 {
                let old_l4 = word(ql4, ck_at);
                // A quoted UDP datagram sent without a checksum keeps none.
                if !(p.key.proto == ip_proto::UDP && old_l4 == 0) {
                    let mut l4 = checksum::adjust16(
                        checksum::adjust_addr(old_l4, old_inner, new_inner),
                        old_port,
                        inner_port,
                    );
                    if p.key.proto == ip_proto::UDP && l4 == 0 {
                        l4 = 0xffff;
                    }
                    put(ql4, ck_at, l4);
                    icmp_ck = checksum::adjust16(icmp_ck, old_l4, l4);
                }
            }
        }
        _ => {
            // A quoted echo: the identifier moves, and its own checksum (no pseudo-header) with it.
            let old_id = word(ql4, 4);
            put(ql4, 4, inner_port);
            let old_eck = word(ql4, 2);
            let new_eck = checksum::adjust16(old_eck, old_id, inner_port);
            put(ql4, 2, new_eck);
            icmp_ck = checksum::adjust16(icmp_ck, old_id, inner_port);
            icmp_ck = checksum::adjust16(icmp_ck, old_eck, new_eck);
        }
    }
    head[2..4].copy_from_slice(&icmp_ck.to_be_bytes());
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

    /// A TCP segment (ACK) carrying `payload`.
    pub fn tcp_payload(
        src: Ipv4Addr,
        sport: u16,
        dst: Ipv4Addr,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut l4 = vec![0u8; 20 + payload.len()];
        l4[20..].copy_from_slice(payload);
        let mut t = TcpPacket::new_unchecked(&mut l4[..]);
        t.set_src_port(sport);
        t.set_dst_port(dport);
        t.set_seq_number(1000);
        t.set_header_len(20);
        t.set_flags(wire::tcp_flags::ACK);
        t.set_window_len(65535);
        t.fill_checksum(src, dst);
        ipv4(ip_proto::TCP, src, dst, &l4)
    }

    /// Split a datagram (20-byte header) into fragments of at most `chunk` payload bytes (a multiple
    /// of 8), as a router or the sending host would, with identification `ident`.
    pub fn fragment(d: &[u8], ident: u16, chunk: usize) -> Vec<Vec<u8>> {
        let payload = &d[20..];
        let mut out = Vec::new();
        let mut off = 0;
        while off < payload.len() {
            let end = (off + chunk).min(payload.len());
            let mut b = d[..20].to_vec();
            b.extend_from_slice(&payload[off..end]);
            let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
            ip.set_total_len((20 + end - off) as u16);
            ip.set_ident(ident);
            ip.set_flags_and_frag(false, end < payload.len(), off as u16);
            ip.fill_checksum();
            out.push(b);
            off = end;
        }
        out
    }

    /// Put fragments back together (for checking what the far host would reassemble).
    pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
        let mut sorted: Vec<&Vec<u8>> = frags.iter().collect();
        sorted.sort_by_key(|f| Ipv4Packet::new_checked(&f[..]).unwrap().frag_offset());
        let mut d = sorted[0][..20].to_vec();
        for f in sorted {
            d.extend_from_slice(&f[20..]);
        }
        let len = d.len() as u16;
        let mut ip = Ipv4Packet::new_unchecked(&mut d[..]);
        ip.set_total_len(len);
        ip.set_flags_and_frag(false, false, 0);
        ip.fill_checksum();
        d
    }

    /// An ICMP error of type `ty` from `src` to `dst` quoting the first `quote` bytes of `quoted` (RFC
    /// 792 asks for the header and 8 bytes; Linux quotes up to 576 bytes in all).
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: u8,
        code: u8,
        quoted: &[u8],
        quote: usize,
    ) -> Vec<u8> {
        let q = &quoted[..quote.min(quoted.len())];
        let mut l4 = vec![0u8; 8 + q.len()];
        l4[8..].copy_from_slice(q);
        let mut c = Icmpv4Packet::new_unchecked(&mut l4[..]);
        c.set_msg_type(ty);
        c.set_msg_code(code);
        if ty == wire::icmp_type::DEST_UNREACHABLE && code == 4 {
            // Fragmentation needed: the next-hop MTU in the second half of the rest-of-header word.
            l4[6..8].copy_from_slice(&1400u16.to_be_bytes());
        }
        let mut c = Icmpv4Packet::new_unchecked(&mut l4[..]);
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
        let p = parse(&udp(SUB, 5000, SRV, 53, b"q"), Dir::In2Out, None).unwrap();
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
            None,
        )
        .unwrap();
        assert_eq!((p.key.sport, p.key.dport), (77, 0));
        let p = parse(
            &icmp_echo(SRV, SUB, icmp_type::ECHO_REPLY, 77),
            Dir::Out2In,
            None,
        )
        .unwrap();
        assert_eq!((p.key.sport, p.key.dport), (0, 77));
        let p = parse(&tcp(SUB, 4000, SRV, 80, tcp_flags::SYN), Dir::In2Out, None).unwrap();
        assert_eq!(p.tcp_flags, tcp_flags::SYN);
    }

    /// Whatever the fast parse accepts, the general parse accepts with the same result: the fast
    /// path may decline a packet (the general one then decides), never decide differently. Random
    /// byte changes in the headers, with the IPv4 checksum made valid again half of the time so
    /// that the other checks are reached, and truncations.
    #[test]
    fn the_fast_parse_agrees_with_the_general_one() {
        let mut tcp_opts = tcp(SUB, 4000, SRV, 80, tcp_flags::SYN | tcp_flags::ACK);
        tcp_opts[32] = 0x60; // data offset 6: a 4-byte option (the "data" bytes)
        let mut ip_opts = udp(SUB, 5000, SRV, 53, b"hello");
        ip_opts[0] = 0x46; // a 4-byte IP option (the UDP header's first bytes)
        let seeds = [
            udp(SUB, 5000, SRV, 53, b"hello"),
            udp(SUB, 5000, SRV, 53, b""),
            tcp(SUB, 4000, SRV, 80, tcp_flags::SYN),
            tcp_opts,
            tcp_payload(SUB, 4000, SRV, 80, &[7u8; 300]),
            icmp_echo(SUB, SRV, icmp_type::ECHO_REQUEST, 77),
            ip_opts,
        ];
        for s in &seeds[..5] {
            assert!(
                parse_simple(s).is_some(),
                "a plain TCP or UDP packet takes the fast path"
            );
        }
        // Edges the random changes rarely reach: each is refused by the general parse, so the
        // fast one must decline it.
        // A valid checksum over the first 20 bytes, whatever the header length field now says.
        let refix = |b: &mut [u8]| {
            b[10..12].fill(0);
            let c = checksum::checksum(&b[..20]);
            b[10..12].copy_from_slice(&c.to_be_bytes());
        };
        let edit = |s: &[u8], at: usize, v: &[u8]| {
            let mut b = s.to_vec();
            b[at..at + v.len()].copy_from_slice(v);
            refix(&mut b);
            b
        };
        let (u, t) = (&seeds[1], &seeds[2]);
        let edges = [
            edit(u, 8, &[1]),                         // TTL 1
            edit(u, 2, &[0, 27]), // total length shorter than IP + UDP headers...
            edit(&edit(u, 2, &[0, 27]), 24, &[0, 7]), // ...with a UDP length to match
            edit(u, 24, &[0, 9]), // UDP length beyond the datagram
            edit(u, 2, &[0, 29]), // total length beyond the buffer
            edit(u, 6, &[0x20, 0]), // MF
            edit(u, 6, &[0, 1]),  // fragment offset 8
            edit(t, 32, &[0x40]), // TCP data offset 4
            edit(t, 32, &[0x70]), // TCP header longer than the segment
            edit(t, 2, &[0, 39]), // TCP segment shorter than its header
        ];
        for b in &edges {
            assert!(parse_general(b, Dir::In2Out, None).is_err(), "{b:02x?}");
            assert_eq!(parse_simple(b), None, "{b:02x?}");
        }
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut fast, mut declined) = (0, 0);
        for seed in &seeds {
            for _ in 0..5000 {
                let mut b = seed.clone();
                for _ in 0..1 + next() % 3 {
                    // Edge values as often as random ones: TTL 1, a length off by one, a zero.
                    let at = (next() % 48) as usize % b.len();
                    b[at] = match next() % 5 {
                        0 => 0,
                        1 => 1,
                        2 => b[at].wrapping_add(1),
                        3 => b[at].wrapping_sub(1),
                        _ => next() as u8,
                    };
                }
                if next() % 2 == 0 && b.len() >= 20 {
                    refix(&mut b);
                }
                if next() % 8 == 0 {
                    b.truncate((next() % 64) as usize);
                }
                for dir in [Dir::In2Out, Dir::Out2In] {
                    match parse_simple(&b) {
                        Some(p) => {
                            assert_eq!(parse_general(&b, dir, None), Ok(p), "{b:02x?}");
                            fast += 1;
                        }
                        None => declined += 1,
                    }
                }
            }
        }
        // Both outcomes were exercised, not just one.
        assert!(
            fast > 1000 && declined > 1000,
            "fast {fast}, declined {declined}"
        );
    }

    #[test]
    fn parse_rejects_with_the_right_reason() {
        let good = udp(SUB, 5000, SRV, 53, b"hello");
        assert_eq!(
            parse(&good[..10], Dir::In2Out, None).unwrap_err(),
            DropReason::Ipv4Truncated
        );
        let mut b = good.clone();
        b[0] = 0x44;
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::Ipv4BadIhl
        );
        let mut b = good.clone();
        b[0] = 0x65;
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::Ipv4BadVersion
        );
        let mut b = good.clone();
        b[3] = 200; // total length beyond the buffer
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::Ipv4BadTotalLength
        );
        let mut b = good.clone();
        b[10] ^= 0xff;
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::Ipv4BadChecksum
        );
        // Zero-length UDP.
        let mut b = good.clone();
        b[24] = 0;
        b[25] = 0;
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::UdpBadLength
        );
        // UDP length shorter than the payload.
        let mut b = good.clone();
        b[25] = 9;
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::UdpBadLength
        );
        // TTL 1: the router must answer, not forward.
        let mut b = good.clone();
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_ttl(1);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::TtlExceeded
        );
        // A first fragment whose UDP length claims no more than the fragment holds.
        let mut b = good.clone();
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_flags_and_frag(false, true, 0);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::UdpBadLength
        );
        // A later fragment that virtual reassembly knows nothing of.
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_flags_and_frag(false, true, 64);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::FragmentMalformed
        );
        // ICMP other than echo and errors (timestamp here).
        assert_eq!(
            parse(
                &icmp_echo(SUB, SRV, icmp_type::TIMESTAMP, 1),
                Dir::In2Out,
                None
            )
            .unwrap_err(),
            DropReason::IcmpUnsupported
        );
        assert_eq!(
            parse(
                &icmp_echo(SRV, SUB, icmp_type::TIMESTAMP, 1),
                Dir::Out2In,
                None
            )
            .unwrap_err(),
            DropReason::IcmpUnsupported
        );
        // Echo replies from inside and requests from outside parse (the key shape follows the
        // direction); the shard refuses them when no mapping or session explains them, see
        // `shard::tests::icmp_echo_that_cannot_open_a_session_is_refused`.
        let p = parse(
            &icmp_echo(SUB, SRV, icmp_type::ECHO_REPLY, 9),
            Dir::In2Out,
            None,
        )
        .unwrap();
        assert_eq!((p.key.sport, p.key.dport, p.icmp_type), (9, 0, 0));
        let p = parse(
            &icmp_echo(SRV, SUB, icmp_type::ECHO_REQUEST, 9),
            Dir::Out2In,
            None,
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
            parse(&b, Dir::In2Out, None).unwrap_err(),
            DropReason::TcpMalformed
        );
        // GRE.
        let mut b = good;
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_protocol(47);
        ip.fill_checksum();
        assert_eq!(
            parse(&b, Dir::In2Out, None).unwrap_err(),
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
            let p = parse(&b, Dir::In2Out, None).unwrap();
            rewrite(&mut b, &p, End::Source, OUT, 61000, true);
            assert!(checksums_valid(&b), "{b:02x?}");
            let ip = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert_eq!(ip.src_addr_u32(), OUT);
            assert_eq!(ip.ttl(), 63);
            let q = parse(&b, Dir::In2Out, None).unwrap();
            assert_eq!(q.key.sport, 61000);
            assert_eq!(q.key.dst, u32::from(SRV));
        }
    }

    #[test]
    fn rewrite_of_random_packets_changes_exactly_the_endpoint_and_keeps_checksums_valid() {
        // Random tuples, payload lengths, endpoints and TTL decisions; the checksums are checked by
        // recomputing them from scratch, and every byte outside the rewritten fields must be left
        // alone (the checksum fields may change, Ethernet padding may not).
        let mut r: u64 = 0x5eed_2012;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let (mut zero_udp, mut with_options) = (0, 0);
        for round in 0..20_000u32 {
            let (src, dst) = (Ipv4Addr::from(next() as u32), Ipv4Addr::from(next() as u32));
            let (sport, dport) = (next() as u16, next() as u16);
            let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
            let mut b = match round % 3 {
                0 => udp(src, sport, dst, dport, &payload),
                1 => tcp(src, sport, dst, dport, tcp_flags::ACK),
                _ => icmp_echo(src, dst, icmp_type::ECHO_REQUEST, sport),
            };
            if round % 3 == 0 && round % 7 == 0 {
                // No UDP checksum: it must stay zero.
                b[26] = 0;
                b[27] = 0;
                zero_udp += 1;
            }
            // Every fifth packet carries IPv4 options (three NOPs and an end of list), which
            // move the transport header and take the general header-checksum path.
            let l4 = if round % 5 == 4 { 24 } else { 20 };
            if l4 == 24 {
                b.splice(20..20, [1, 1, 1, 0]);
                let total = b.len() as u16;
                let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
                ip.set_header_len(24);
                ip.set_total_len(total);
                ip.fill_checksum();
                with_options += 1;
            }
            // Any TTL the translator forwards (it refuses 0 and 1 before a rewrite).
            let ttl = 2 + (next() % 254) as u8;
            {
                let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
                ip.set_ttl(ttl);
                ip.fill_checksum();
            }
            let len = b.len();
            b.extend_from_slice(&[0xaa; 6]);
            let orig = b.clone();
            let p = parse(&b, Dir::In2Out, None).unwrap();
            let end = if next() % 2 == 0 {
                End::Source
            } else {
                End::Destination
            };
            let (addr, port, dec) = (next() as u32, next() as u16, next() % 2 == 0);
            rewrite(&mut b, &p, end, addr, port, dec);
            assert!(checksums_valid(&b[..len]), "round {round}: {b:02x?}");
            let ip = Ipv4Packet::new_checked(&b[..len]).unwrap();
            assert_eq!(ip.ttl(), if dec { ttl - 1 } else { ttl });
            assert_eq!(usize::from(ip.header_len()), l4);
            let (addr_at, port_at) = match (end, round % 3) {
                (_, 2) => (if end == End::Source { 12 } else { 16 }, l4 + 4),
                (End::Source, _) => (12, l4),
                (End::Destination, _) => (16, l4 + 2),
            };
            assert_eq!(b[addr_at..addr_at + 4], addr.to_be_bytes());
            assert_eq!(b[port_at..port_at + 2], port.to_be_bytes());
            let l4_ck = match round % 3 {
                0 => l4 + 6,
                1 => l4 + 16,
                _ => l4 + 2,
            };
            if round % 3 == 0 {
                let ck = [b[l4_ck], b[l4_ck + 1]];
                assert_eq!(
                    ck == [0, 0],
                    orig[l4_ck..l4_ck + 2] == [0, 0],
                    "round {round}"
                );
            }
            for i in 0..b.len() {
                let touched = i == 8
                    || i == 10
                    || i == 11
                    || (addr_at..addr_at + 4).contains(&i)
                    || (port_at..port_at + 2).contains(&i)
                    || (l4_ck..l4_ck + 2).contains(&i);
                if !touched {
                    assert_eq!(b[i], orig[i], "round {round}: byte {i} changed");
                }
            }
        }
        assert!(zero_udp > 300);
        assert!(with_options > 3000);
    }

    #[test]
    fn both_ends_rewritten_with_one_ttl_decrement_keep_checksums_valid() {
        for mut b in [
            udp(SUB, 5000, SRV, 53, b"odd-length!"),
            tcp(SUB, 4000, SRV, 80, tcp_flags::SYN | tcp_flags::ACK),
            icmp_echo(SUB, SRV, icmp_type::ECHO_REQUEST, 0x1234),
        ] {
            let p = parse(&b, Dir::In2Out, None).unwrap();
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
        let p = parse(&b, Dir::In2Out, None).unwrap();
        rewrite(&mut b, &p, End::Source, OUT, 1234, true);
        assert_eq!(&b[26..28], &[0, 0]);
    }

    #[test]
    fn ethernet_padding_is_left_alone() {
        let mut b = udp(SUB, 5000, SRV, 53, b"x");
        let n = b.len();
        b.extend_from_slice(&[0xaa; 17]);
        let p = parse(&b, Dir::In2Out, None).unwrap();
        rewrite(&mut b, &p, End::Source, OUT, 1234, true);
        assert!(checksums_valid(&b[..n]));
        assert!(b[n..].iter().all(|&x| x == 0xaa));
    }
}
