//! Packets the appliance answers or originates itself: ARP replies and requests, ICMP echo replies to
//! its own addresses, ICMP errors (time exceeded, fragmentation needed) a router in its position must
//! send, and the fragments of a packet too big for its egress MTU.
//!
//! Everything works on byte slices, in place where the answer fits in the question's buffer, so the data
//! plane needs no allocation for them, and all of it is unit-tested without DPDK.

use wire::{
    ArpPacket, EthernetAddress, EthernetFrame, Icmpv4Packet, Ipv4Addr, Ipv4Packet, checksum,
    ethertype, icmp_type, ip_proto,
};

/// Minimum Ethernet frame without FCS; ARP frames are padded to it so strict NICs accept them.
pub const MIN_FRAME: usize = 60;

/// RFC 1812 4.3.2.3: an ICMP error carries as much of the offending packet as fits in 576 bytes.
pub const ICMP_ERROR_MAX_QUOTE: usize = 576 - 20 - 8;

/// Offset of the IPv4 header in an untagged Ethernet frame.
pub const L3: usize = EthernetFrame::<&[u8]>::HEADER_LEN;

/// Turn an ARP request for `our_ip` into the reply, in place. The caller has checked the request.
pub fn arp_reply_in_place(frame: &mut [u8], our_mac: EthernetAddress, our_ip: Ipv4Addr) {
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    let asker_mac = eth.src_addr();
    eth.set_dst_addr(asker_mac);
    eth.set_src_addr(our_mac);
    let mut arp = ArpPacket::new_unchecked(&mut frame[L3..]);
    let asker_ip = arp.sender_protocol_addr();
    let asker_hw = arp.sender_hardware_addr();
    arp.fill_reply(our_mac, our_ip, asker_hw, asker_ip);
}

/// Write a broadcast ARP request into `buf` (at least [`MIN_FRAME`] bytes); returns the frame length.
pub fn arp_request(
    buf: &mut [u8],
    our_mac: EthernetAddress,
    our_ip: Ipv4Addr,
    target: Ipv4Addr,
) -> usize {
    buf[..MIN_FRAME].fill(0);
    let mut eth = EthernetFrame::new_unchecked(&mut *buf);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(our_mac);
    eth.set_ethertype(ethertype::ARP);
    ArpPacket::new_unchecked(&mut buf[L3..]).fill_request(our_mac, our_ip, target);
    MIN_FRAME
}

/// Turn a valid ICMP echo request addressed to us into the reply, in place: swap the Ethernet and IP
/// endpoints, answer with a fresh TTL, fix both checksums. Returns false (and leaves the frame alone)
/// for anything that is not a well-formed echo request.
pub fn echo_reply_in_place(frame: &mut [u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(&frame[L3..]) else {
        return false;
    };
    if !ip.verify_checksum() || ip.protocol() != ip_proto::ICMP || ip.is_fragment() {
        return false;
    }
    let (src, dst, hl, tl) = (
        ip.src_addr(),
        ip.dst_addr(),
        ip.header_len() as usize,
        ip.total_len() as usize,
    );
    let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
        return false;
    };
    if icmp.msg_type() != icmp_type::ECHO_REQUEST || !icmp.verify_checksum() {
        return false;
    }
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    let (a, b) = (eth.src_addr(), eth.dst_addr());
    eth.set_src_addr(b);
    eth.set_dst_addr(a);
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[L3..L3 + tl]);
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
        ip.set_ttl(64);
        ip.fill_checksum();
    }
    let mut icmp = Icmpv4Packet::new_unchecked(&mut frame[L3 + hl..L3 + tl]);
    let ck = checksum::adjust16(
        icmp.checksum(),
        (icmp_type::ECHO_REQUEST as u16) << 8,
        (icmp_type::ECHO_REPLY as u16) << 8,
    );
    icmp.set_msg_type(icmp_type::ECHO_REPLY);
    icmp.set_checksum(ck);
    true
}

/// Whether an ICMP error may be sent about this IPv4 packet (RFC 1812 4.3.2.7): never about an ICMP
/// error, a non-initial fragment, or a broadcast/multicast/unspecified source or destination.
pub fn may_send_icmp_error(ip_packet: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(ip_packet) else {
        return false;
    };
    let (s, d) = (ip.src_addr(), ip.dst_addr());
    if s.is_unspecified()
        || s.is_broadcast()
        || s.is_multicast()
        || d.is_broadcast()
        || d.is_multicast()
        || ip.frag_offset() != 0
    {
        return false;
    }
    if ip.protocol() == ip_proto::ICMP {
        return match Icmpv4Packet::new_checked(ip.payload()) {
            Ok(c) => !c.is_error(),
            Err(_) => false,
        };
    }
    true
}

/// Build an ICMP error (type/code, with `rest` as the second header word) about `quote` (the offending
/// packet from its IP header; at most [`ICMP_ERROR_MAX_QUOTE`] bytes of it are used) into `out`, which
/// must hold `L3 + 28 + quote` bytes. Returns the frame length.
#[allow(clippy::too_many_arguments)]
pub fn icmp_error(
    out: &mut [u8],
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    rest: u32,
    quote: &[u8],
) -> usize {
    let q = quote.len().min(ICMP_ERROR_MAX_QUOTE);
    let total = 20 + 8 + q;
    let mut eth = EthernetFrame::new_unchecked(&mut *out);
    eth.set_dst_addr(dst_mac);
    eth.set_src_addr(src_mac);
    eth.set_ethertype(ethertype::IPV4);
    {
        let mut icmp = Icmpv4Packet::new_unchecked(&mut out[L3 + 20..L3 + total]);
        icmp.set_msg_type(ty);
        icmp.set_msg_code(code);
        icmp.set_echo_ident((rest >> 16) as u16);
        icmp.set_echo_seq_no(rest as u16);
        icmp.data_mut()[..q].copy_from_slice(&quote[..q]);
        icmp.fill_checksum();
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut out[L3..L3 + 20]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_dscp_ecn(0xc0); // Internetwork control, as routers mark their ICMP.
    ip.set_total_len(total as u16);
    ip.set_ident(0);
    ip.set_flags_and_frag(false, false, 0);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::ICMP);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    L3 + total
}

/// Token bucket limiting generated ICMP errors (RFC 1812 4.3.2.8), in TSC ticks.
pub struct RateLimit {
    tokens: u64,
    burst: u64,
    ticks_per_token: u64,
    last: u64,
}

impl RateLimit {
    pub fn new(per_second: u64, burst: u64, tsc_hz: u64) -> RateLimit {
        RateLimit {
            tokens: burst,
            burst,
            ticks_per_token: (tsc_hz / per_second.max(1)).max(1),
            last: 0,
        }
    }

    pub fn allow(&mut self, now: u64) -> bool {
        let earned = now.saturating_sub(self.last) / self.ticks_per_token;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            self.last = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// How a packet too big for its egress MTU is split (RFC 791): `(offset, len)` of each piece's
/// payload, relative to the packet's own payload. Every piece but the last carries a multiple of 8
/// bytes; each fits `mtu` with a 20-byte header. Empty when `mtu` cannot carry 8 bytes of payload.
pub fn fragment_plan(payload_len: usize, mtu: u16) -> impl Iterator<Item = (usize, usize)> {
    let chunk = usize::from(mtu).saturating_sub(20) & !7;
    let pieces = if chunk == 0 {
        0
    } else {
        payload_len.div_ceil(chunk)
    };
    (0..pieces).map(move |i| {
        let off = i * chunk;
        (off, chunk.min(payload_len - off))
    })
}

/// Write piece `(off, len)` of the IPv4 packet `ip` (20-byte header, no options; the frame's
/// Ethernet header is `eth`) into `out`, which holds `L3 + 20 + len` bytes: the same header with
/// its total length, fragment offset (added to the packet's own, if it is itself a fragment) and
/// MF flag (set on every piece but the last, and on the last too when the packet had it) set, and
/// its checksum recomputed. DF is clear: only packets without it are fragmented.
pub fn write_fragment(eth: &[u8], ip: &[u8], off: usize, len: usize, out: &mut [u8]) {
    let h = Ipv4Packet::new_unchecked(ip);
    let payload_len = usize::from(h.total_len()) - 20;
    let (base, more) = (usize::from(h.frag_offset()), h.more_frags());
    out[..L3].copy_from_slice(&eth[..L3]);
    out[L3..L3 + 20].copy_from_slice(&ip[..20]);
    out[L3 + 20..L3 + 20 + len].copy_from_slice(&ip[20 + off..20 + off + len]);
    let mut fh = Ipv4Packet::new_unchecked(&mut out[L3..]);
    fh.set_total_len((20 + len) as u16);
    fh.set_flags_and_frag(false, more || off + len < payload_len, (base + off) as u16);
    fh.fill_checksum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::arp_op;

    fn udp_frame(payload: usize, frag: (bool, u16)) -> Vec<u8> {
        let mut f = vec![0u8; L3 + 28 + payload];
        for (i, b) in f[L3 + 28..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut f[L3..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((28 + payload) as u16);
        ip.set_ident(77);
        ip.set_flags_and_frag(false, frag.0, frag.1);
        ip.set_ttl(64);
        ip.set_protocol(ip_proto::UDP);
        ip.set_src_addr(PEER_IP);
        ip.set_dst_addr(OUR_IP);
        ip.fill_checksum();
        f
    }

    fn split(frame: &[u8], mtu: u16) -> Vec<Vec<u8>> {
        let ip = &frame[L3..];
        let len = usize::from(Ipv4Packet::new_unchecked(ip).total_len()) - 20;
        fragment_plan(len, mtu)
            .map(|(off, n)| {
                let mut out = vec![0u8; L3 + 20 + n];
                write_fragment(frame, ip, off, n, &mut out);
                out
            })
            .collect()
    }

    #[test]
    fn fragments_fit_the_mtu_and_reassemble_to_the_packet() {
        let frame = udp_frame(2972, (false, 0)); // a 3000-byte IPv4 packet
        let pieces = split(&frame, 1400);
        assert_eq!(pieces.len(), 3);
        let mut payload = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let ip = Ipv4Packet::new_checked(&p[L3..]).unwrap();
            assert!(ip.total_len() <= 1400 && ip.verify_checksum());
            assert_eq!(ip.ident(), 77, "one datagram");
            assert_eq!(usize::from(ip.frag_offset()), payload.len());
            assert_eq!(ip.more_frags(), i < 2);
            assert!(!ip.dont_frag());
            assert_eq!(ip.frag_offset() % 8, 0);
            payload.extend_from_slice(ip.payload());
        }
        assert_eq!(payload, frame[L3 + 20..]);
        assert_eq!(&pieces[0][..L3], &frame[..L3], "same Ethernet header");
    }

    #[test]
    fn a_fragment_splits_into_fragments_of_the_same_datagram() {
        // The middle fragment of a larger datagram: offset 1480, more to come.
        let frame = udp_frame(1472, (true, 1480));
        let pieces = split(&frame, 1000);
        assert_eq!(pieces.len(), 2);
        let a = Ipv4Packet::new_checked(&pieces[0][L3..]).unwrap();
        let b = Ipv4Packet::new_checked(&pieces[1][L3..]).unwrap();
        assert_eq!((a.frag_offset(), a.more_frags()), (1480, true));
        assert_eq!((b.frag_offset(), b.more_frags()), (1480 + 976, true));
        assert_eq!(
            fragment_plan(100, 27).count(),
            0,
            "an MTU with no room for 8 bytes"
        );
    }

    const OUR_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);

    fn echo_request() -> Vec<u8> {
        let mut f = vec![0u8; L3 + 20 + 16];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(OUR_MAC);
        eth.set_src_addr(PEER_MAC);
        eth.set_ethertype(ethertype::IPV4);
        {
            let mut c = Icmpv4Packet::new_unchecked(&mut f[L3 + 20..]);
            c.set_msg_type(icmp_type::ECHO_REQUEST);
            c.set_echo_ident(9);
            c.set_echo_seq_no(1);
            c.data_mut().copy_from_slice(b"abcdefgh");
            c.fill_checksum();
        }
        let mut ip = Ipv4Packet::new_unchecked(&mut f[L3..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(36);
        ip.set_ttl(1);
        ip.set_protocol(ip_proto::ICMP);
        ip.set_src_addr(PEER_IP);
        ip.set_dst_addr(OUR_IP);
        ip.fill_checksum();
        f
    }

    #[test]
    fn arp_request_then_reply_round_trip() {
        let mut req = vec![0u8; MIN_FRAME];
        assert_eq!(arp_request(&mut req, PEER_MAC, PEER_IP, OUR_IP), 60);
        let arp = ArpPacket::new_checked(&req[L3..]).unwrap();
        assert_eq!(arp.operation(), arp_op::REQUEST);
        assert_eq!(arp.target_protocol_addr(), OUR_IP);
        arp_reply_in_place(&mut req, OUR_MAC, OUR_IP);
        let eth = EthernetFrame::new_checked(&req[..]).unwrap();
        assert_eq!(eth.dst_addr(), PEER_MAC);
        assert_eq!(eth.src_addr(), OUR_MAC);
        let arp = ArpPacket::new_checked(&req[L3..]).unwrap();
        assert_eq!(arp.operation(), arp_op::REPLY);
        assert_eq!(arp.sender_hardware_addr(), OUR_MAC);
        assert_eq!(arp.sender_protocol_addr(), OUR_IP);
        assert_eq!(arp.target_hardware_addr(), PEER_MAC);
        assert_eq!(arp.target_protocol_addr(), PEER_IP);
    }

    #[test]
    fn echo_reply_is_valid_and_addressed_back() {
        let mut f = echo_request();
        assert!(echo_reply_in_place(&mut f));
        let ip = Ipv4Packet::new_checked(&f[L3..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR_IP, PEER_IP));
        let c = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(c.msg_type(), icmp_type::ECHO_REPLY);
        assert!(c.verify_checksum());
        assert_eq!(c.echo_ident(), 9);
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().dst_addr(),
            PEER_MAC
        );
    }

    #[test]
    fn echo_reply_refuses_malformed() {
        let mut f = echo_request();
        f[L3 + 20 + 2] ^= 1; // bad ICMP checksum
        let before = f.clone();
        assert!(!echo_reply_in_place(&mut f));
        assert_eq!(f, before);
        assert!(!echo_reply_in_place(&mut f[..L3 + 10]));
    }

    #[test]
    fn time_exceeded_quotes_the_packet_with_valid_checksums() {
        let orig = echo_request();
        let quote = &orig[L3..];
        assert!(may_send_icmp_error(quote));
        let mut out = vec![0u8; 200];
        let n = icmp_error(
            &mut out,
            OUR_MAC,
            PEER_MAC,
            OUR_IP,
            PEER_IP,
            icmp_type::TIME_EXCEEDED,
            0,
            0,
            quote,
        );
        assert_eq!(n, L3 + 28 + quote.len());
        let ip = Ipv4Packet::new_checked(&out[L3..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.dst_addr(), PEER_IP);
        let c = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(c.verify_checksum());
        assert_eq!(c.msg_type(), icmp_type::TIME_EXCEEDED);
        assert_eq!(c.data(), quote);
        // Never an error about an error.
        assert!(!may_send_icmp_error(&out[L3..n]));
    }

    #[test]
    fn rate_limit_allows_burst_then_refills() {
        let mut r = RateLimit::new(10, 3, 1000);
        assert!(r.allow(0) && r.allow(0) && r.allow(0));
        assert!(!r.allow(50));
        assert!(r.allow(100));
        assert!(!r.allow(150));
    }
}
