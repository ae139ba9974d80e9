//! ICMP error translation (RFC 5508 section 4) and fragment translation (RFC 4787 REQ-14) through the
//! whole shard, with every checksum checked by recomputation, as the far host would check it.

use crate::rewrite::testpkt::*;
use crate::shard::testkit::*;
use crate::{
    Counter, Dir, DropReason, FragClass, FragConfig, L4Ids, NoPrefetch, PacketBatch, Reassembly,
    Shard, ShardConfig, Verdict,
};
use wire::{Icmpv4Packet, Ipv4Addr, Ipv4Packet, TcpPacket, UdpPacket, icmp_type, ip_proto};

const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn shard() -> Shard {
    shard_of(vec![pool_with(1024, 65535)], ShardConfig::default())
}

/// Open a UDP session from SUB1:5000 to SRV:53; returns the translated datagram.
fn udp_session(sh: &mut Shard) -> Vec<u8> {
    let (v, out) = one(sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"query"), 1);
    assert_eq!(v, Verdict::Forward);
    out
}

/// The quoted packet of an ICMP error, and whether the ICMP checksum (which covers it) is right.
fn quoted(b: &[u8]) -> (Vec<u8>, bool) {
    let ip = Ipv4Packet::new_checked(b).unwrap();
    let c = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    (c.data().to_vec(), c.verify_checksum())
}

/// The quote is `orig` as it left the NAT: the same bytes but for the TTL (decremented on the way) and
/// the header checksum that covers it.
fn same_quote(q: &[u8], orig: &[u8]) -> bool {
    q.len() == orig.len() && q[..8] == orig[..8] && q[9] == orig[9] && q[12..] == orig[12..]
}

fn quoted_header_ok(q: &[u8]) -> bool {
    let hl = usize::from(q[0] & 0x0f) * 4;
    wire::checksum::checksum(&q[..hl]) == 0
}

// ---- RFC 5508: errors from outside about packets we sent ----

#[test]
fn outside_errors_reach_the_subscriber_with_every_checksum_fixed() {
    for (ty, code) in [
        (icmp_type::DEST_UNREACHABLE, 3), // port unreachable, from the server
        (icmp_type::DEST_UNREACHABLE, 4), // fragmentation needed (PMTU discovery), from a router
        (icmp_type::TIME_EXCEEDED, 0),    // traceroute, from a router
        (icmp_type::PARAMETER_PROBLEM, 0),
    ] {
        let mut sh = shard();
        let sent = udp_session(&mut sh);
        let (out_addr, out_port) = src_of(&sent);
        // Linux quotes as much as fits in 576 bytes: the whole datagram here, UDP checksum included.
        let err = icmp_error(ROUTER, ip(out_addr), ty, code, &sent, 576);
        let (v, b) = one(&mut sh, Dir::Out2In, err, 2);
        assert_eq!(v, Verdict::Forward, "type {ty} code {code}");
        let outer = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(outer.verify_checksum());
        assert_eq!(outer.dst_addr(), SUB1, "the error goes to the subscriber");
        assert_eq!(outer.src_addr(), ROUTER, "from whoever sent it");
        assert_eq!(outer.ttl(), 63);
        let c = Icmpv4Packet::new_checked(outer.payload()).unwrap();
        assert_eq!((c.msg_type(), c.msg_code()), (ty, code));
        if code == 4 {
            assert_eq!(
                c.next_hop_mtu(),
                1400,
                "the MTU reaches the subscriber untouched"
            );
        }
        let (q, icmp_ok) = quoted(&b);
        assert!(icmp_ok, "ICMP checksum over the rewritten quote");
        assert!(quoted_header_ok(&q), "quoted IPv4 header checksum");
        // The quote now shows the packet as the subscriber sent it: its own address and port, and a
        // UDP checksum that verifies over it.
        assert!(same_quote(&q, &udp(SUB1, 5000, SRV, 53, b"query")));
        assert_ne!((out_addr, out_port), (u32::from(SUB1), 5000));
        assert_eq!(sh.counters().get(Counter::IcmpErrorsTranslated), 1);
    }
}

#[test]
fn short_quotes_and_quoted_tcp_and_echo_are_translated() {
    let mut sh = shard();
    // TCP: only the header's first 8 bytes quoted (RFC 792 minimum): the TCP checksum is not there.
    let syn = tcp(SUB1, 4000, SRV, 80, wire::tcp_flags::SYN);
    let (v, sent) = one(&mut sh, Dir::In2Out, syn.clone(), 1);
    assert_eq!(v, Verdict::Forward);
    let (oa, _) = src_of(&sent);
    let (v, b) = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 1, &sent, 28),
        2,
    );
    assert_eq!(v, Verdict::Forward);
    let (q, ok) = quoted(&b);
    assert!(ok && quoted_header_ok(&q));
    assert!(same_quote(&q, &syn[..28]));
    // TCP with the whole segment quoted: the TCP checksum is rewritten too.
    let (_, b) = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 1, &sent, 576),
        3,
    );
    let (q, ok) = quoted(&b);
    assert!(ok);
    assert!(same_quote(&q, &syn));
    let qi = Ipv4Packet::new_checked(&q[..]).unwrap();
    assert!(
        TcpPacket::new_checked(qi.payload())
            .unwrap()
            .verify_checksum(SUB1, SRV)
    );
    // Echo: the identifier and the echo checksum are restored.
    let ping = icmp_echo(SUB1, SRV, icmp_type::ECHO_REQUEST, 77);
    let (_, sent) = one(&mut sh, Dir::In2Out, ping.clone(), 4);
    let (oa, _) = src_of(&sent);
    let (v, b) = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(ROUTER, ip(oa), icmp_type::TIME_EXCEEDED, 0, &sent, 576),
        5,
    );
    assert_eq!(v, Verdict::Forward);
    let (q, ok) = quoted(&b);
    assert!(ok);
    assert!(same_quote(&q, &ping));
}

#[test]
fn errors_never_refresh_or_move_the_session() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            timeouts: crate::Timeouts {
                udp: 30,
                ..Default::default()
            },
            hold_down_s: 0,
            ..ShardConfig::default()
        },
    );
    let sent = udp_session(&mut sh);
    let (oa, _) = src_of(&sent);
    // Errors keep arriving, but the subscriber sends nothing: the session still expires on time.
    let mut from = 1;
    for t in [10, 20, 29] {
        tick(&mut sh, from, t);
        from = t + 1;
        let err = icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 3, &sent, 576);
        assert_eq!(one(&mut sh, Dir::Out2In, err, t).0, Verdict::Forward);
    }
    tick(&mut sh, from, 40);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
}

#[test]
fn errors_that_match_nothing_are_dropped_and_counted() {
    let mut sh = shard();
    let sent = udp_session(&mut sh);
    let (oa, op) = src_of(&sent);
    let counted = |sh: &Shard| sh.counters().drops(DropReason::IcmpErrorUnmatched);
    // A quote of a packet we never sent (another port).
    let other = udp(ip(oa), op.wrapping_add(1), SRV, 53, b"query");
    let v = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 3, &other, 576),
        2,
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorUnmatched));
    // Sent to another address than the one the quoted packet came from.
    let v = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(POOL[1]), icmp_type::DEST_UNREACHABLE, 3, &sent, 576),
        2,
    )
    .0;
    if oa != POOL[1] {
        assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorUnmatched));
    }
    // An error about an error.
    let inner = icmp_error(ip(oa), SRV, icmp_type::DEST_UNREACHABLE, 3, &sent, 576);
    let v = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 3, &inner, 576),
        2,
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorUnmatched));
    // A quote too short to hold the ports.
    let v = one(
        &mut sh,
        Dir::Out2In,
        icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 3, &sent, 24),
        2,
    )
    .0;
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorUnmatched));
    assert!(counted(&sh) >= 3);
    // No ICMP error ever opens a session.
    assert_eq!(sh.session_count(), 1);
}

// ---- RFC 5508: errors from a subscriber about packets it received ----

#[test]
fn inside_errors_leave_under_the_outside_endpoint() {
    let mut sh = shard();
    let sent = udp_session(&mut sh);
    let (oa, op) = src_of(&sent);
    // The server's answer reaches the subscriber...
    let (v, delivered) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"answer"), 2);
    assert_eq!(v, Verdict::Forward);
    // ...whose socket is gone: port unreachable, quoting what it received.
    let err = icmp_error(SUB1, SRV, icmp_type::DEST_UNREACHABLE, 3, &delivered, 576);
    let (v, b) = one(&mut sh, Dir::In2Out, err, 3);
    assert_eq!(v, Verdict::Forward);
    let outer = Ipv4Packet::new_checked(&b[..]).unwrap();
    assert!(outer.verify_checksum());
    assert_eq!((outer.src_addr_u32(), outer.dst_addr()), (oa, SRV));
    let (q, ok) = quoted(&b);
    assert!(ok && quoted_header_ok(&q));
    // The server recognises its own datagram, to our outside endpoint.
    assert!(same_quote(&q, &udp(SRV, 53, ip(oa), op, b"answer")));
    let qi = Ipv4Packet::new_checked(&q[..]).unwrap();
    assert!(
        UdpPacket::new_checked(qi.payload())
            .unwrap()
            .verify_checksum(SRV, ip(oa))
    );
}

#[test]
fn inside_errors_must_come_from_the_subscriber_or_a_router_and_go_to_the_remote() {
    let mut sh = shard();
    let sent = udp_session(&mut sh);
    let (oa, op) = src_of(&sent);
    let (_, delivered) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"answer"), 2);
    // SUB2, a subscriber with its own state, quoting what SUB1 received: refused, or SUB2 could
    // speak under SUB1's outside address.
    one(&mut sh, Dir::In2Out, udp(SUB2, 1, SRV, 53, b"mine"), 2);
    let forged = icmp_error(SUB2, SRV, icmp_type::DEST_UNREACHABLE, 3, &delivered, 576);
    assert_eq!(
        one(&mut sh, Dir::In2Out, forged, 3).0,
        Verdict::Drop(DropReason::IcmpErrorUnmatched)
    );
    // Aimed at anyone but the session's remote: refused.
    let elsewhere = icmp_error(SUB1, SRV2, icmp_type::DEST_UNREACHABLE, 3, &delivered, 576);
    assert_eq!(
        one(&mut sh, Dir::In2Out, elsewhere, 3).0,
        Verdict::Drop(DropReason::IcmpErrorUnmatched)
    );
    // A router on the subscriber side (no mappings of its own), e.g. a BNG's frag-needed: passes,
    // under the subscriber's outside address.
    let bng = Ipv4Addr::new(100, 64, 0, 2);
    let from_router = icmp_error(bng, SRV, icmp_type::DEST_UNREACHABLE, 4, &delivered, 576);
    let (v, b) = one(&mut sh, Dir::In2Out, from_router, 3);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&b).0, oa);
}

#[test]
fn errors_between_subscribers_are_hairpinned() {
    let mut sh = shard();
    // SUB2 has a mapping; SUB1 sends to it (hairpin), SUB2 answers with port unreachable.
    let (_, s2) = one(&mut sh, Dir::In2Out, udp(SUB2, 6000, SRV, 53, b"x"), 1);
    let (a2, p2) = src_of(&s2);
    let (v, to_sub2) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, ip(a2), p2, b"hi"), 2);
    assert_eq!(v, Verdict::Hairpin);
    let (a1, p1) = src_of(&to_sub2);
    let err = icmp_error(SUB2, ip(a1), icmp_type::DEST_UNREACHABLE, 3, &to_sub2, 576);
    let (v, b) = one(&mut sh, Dir::In2Out, err, 3);
    assert_eq!(v, Verdict::Hairpin);
    let outer = Ipv4Packet::new_checked(&b[..]).unwrap();
    assert!(outer.verify_checksum());
    // SUB1 gets it from SUB2's outside address, quoting its own packet as it sent it.
    assert_eq!((outer.src_addr_u32(), outer.dst_addr()), (a2, SUB1));
    assert_eq!(outer.ttl(), 63, "one crossing, one decrement");
    let (q, ok) = quoted(&b);
    assert!(ok && quoted_header_ok(&q));
    assert!(same_quote(&q, &udp(SUB1, 5000, ip(a2), p2, b"hi")));
    assert_ne!((a1, p1), (u32::from(SUB1), 5000));
}

// ---- Fragments (RFC 4787 REQ-14) ----

/// A batch with the identifiers virtual reassembly found for each later fragment, as the data plane
/// passes them.
struct Hinted {
    pkts: Vec<Vec<u8>>,
    later: Vec<Option<L4Ids>>,
}

impl PacketBatch for Hinted {
    fn len(&self) -> usize {
        self.pkts.len()
    }
    fn packet(&self, i: usize) -> &[u8] {
        &self.pkts[i]
    }
    fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.pkts[i]
    }
    fn later_fragment(&self, i: usize) -> Option<L4Ids> {
        self.later[i]
    }
}

/// What a worker does: virtual reassembly first (holding what comes before its first fragment), then
/// the shard. Returns the packets that left, in the order they left.
fn through(
    sh: &mut Shard,
    r: &mut Reassembly<Vec<u8>>,
    dir: Dir,
    arriving: Vec<Vec<u8>>,
    now: u32,
) -> Vec<Vec<u8>> {
    let mut queue: std::collections::VecDeque<Vec<u8>> = arriving.into();
    let mut left = Vec::new();
    while let Some(p) = queue.pop_front() {
        let later = match r.classify(&p, u64::from(now) * 1000) {
            FragClass::Whole => None,
            FragClass::Later(ids) => Some(ids),
            FragClass::First(k) => {
                // Released fragments go right after their first fragment.
                let mut rel = Vec::new();
                r.release(&k, |b| rel.push(b));
                for b in rel.into_iter().rev() {
                    queue.push_front(b);
                }
                None
            }
            FragClass::Unknown(k) => {
                r.hold(k, p, u64::from(now) * 1000).unwrap();
                continue;
            }
            FragClass::Drop(reason) => panic!("fragment refused: {reason:?}"),
        };
        let mut b = Hinted {
            pkts: vec![p],
            later: vec![later],
        };
        let mut v = [Verdict::Drop(DropReason::NoMbuf)];
        sh.process::<_, NoPrefetch>(dir, &mut b, &mut v, now);
        assert!(
            matches!(v[0], Verdict::Forward),
            "fragment verdict {:?} for {:?}, hint {:?}",
            v[0],
            &b.pkts[0][..28],
            later
        );
        left.push(b.pkts.pop().unwrap());
    }
    left
}

fn reasm() -> Reassembly<Vec<u8>> {
    Reassembly::new(FragConfig::default(), 7)
}

#[test]
fn a_fragmented_datagram_crosses_both_ways_in_any_order() {
    let payload: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
    for order in [
        [0usize, 1, 2, 3, 4, 5, 6, 7],
        [7, 6, 5, 4, 3, 2, 1, 0],
        [3, 0, 7, 1, 6, 2, 5, 4],
    ] {
        let mut sh = shard();
        let (mut ri, mut ro) = (reasm(), reasm());
        let d = udp(SUB1, 5000, SRV, 4000, &payload);
        let frags = fragment(&d, 0x4242, 1200);
        assert_eq!(frags.len(), 8);
        let arriving: Vec<Vec<u8>> = order.iter().map(|&i| frags[i].clone()).collect();
        let left = through(&mut sh, &mut ri, Dir::In2Out, arriving, 1);
        assert_eq!(left.len(), 8, "every fragment crosses");
        for f in &left {
            let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 0x4242, "fragments stay one datagram");
            assert_eq!(ip.ttl(), 63);
        }
        // What the server reassembles: our outside endpoint, the payload intact, a valid checksum.
        let got = reassemble(&left);
        let (oa, op) = src_of(&got);
        assert!(POOL.contains(&oa));
        assert_eq!(dst_of(&got), (u32::from(SRV), 4000));
        let gi = Ipv4Packet::new_checked(&got[..]).unwrap();
        let u = UdpPacket::new_checked(gi.payload()).unwrap();
        assert!(u.verify_checksum(ip(oa), SRV));
        assert_eq!(u.payload(), &payload[..]);

        // The reply, fragmented by the server, comes back to the subscriber whole.
        let reply = udp(SRV, 4000, ip(oa), op, &payload[..5000]);
        let rfr = fragment(&reply, 0x1111, 1480);
        let back: Vec<Vec<u8>> = rfr.iter().rev().cloned().collect();
        let left = through(&mut sh, &mut ro, Dir::Out2In, back, 2);
        let got = reassemble(&left);
        assert_eq!(dst_of(&got), (u32::from(SUB1), 5000));
        let gi = Ipv4Packet::new_checked(&got[..]).unwrap();
        let u = UdpPacket::new_checked(gi.payload()).unwrap();
        assert!(u.verify_checksum(SRV, SUB1));
        assert_eq!(u.payload(), &payload[..5000]);
        assert_eq!(sh.counters().get(Counter::FragmentsTranslated), 8 + 4);
        assert_eq!((ri.held(), ro.held()), (0, 0));
    }
}

#[test]
fn a_fragmented_ping_is_translated() {
    let mut sh = shard();
    let mut r = reasm();
    // 3000-byte echo request: the identifier only in the first fragment.
    let mut l4 = vec![0u8; 3008];
    l4[8..].fill(0xab);
    let mut c = Icmpv4Packet::new_unchecked(&mut l4[..]);
    c.set_msg_type(icmp_type::ECHO_REQUEST);
    c.set_echo_ident(99);
    c.fill_checksum();
    let mut d = udp(SUB1, 1, SRV, 1, &[]);
    d.truncate(20);
    d.extend_from_slice(&l4);
    let mut h = Ipv4Packet::new_unchecked(&mut d[..]);
    h.set_protocol(ip_proto::ICMP);
    h.set_total_len(3028);
    h.fill_checksum();
    let frags = fragment(&d, 5, 1480);
    let left = through(&mut sh, &mut r, Dir::In2Out, frags, 1);
    let got = reassemble(&left);
    let gi = Ipv4Packet::new_checked(&got[..]).unwrap();
    assert!(POOL.contains(&gi.src_addr_u32()));
    let c = Icmpv4Packet::new_checked(gi.payload()).unwrap();
    assert!(c.verify_checksum());
    assert_eq!(sh.session_count(), 1);
}

#[test]
fn later_fragments_never_open_sessions() {
    let mut sh = shard();
    let d = udp(SUB1, 5000, SRV, 4000, &[1u8; 3000]);
    let frags = fragment(&d, 9, 1480);
    let ids = L4Ids {
        sport: 5000,
        dport: 4000,
        icmp_type: 0,
    };
    // A later fragment with a hint but no session (its first fragment was refused, say).
    let mut b = Hinted {
        pkts: vec![frags[1].clone()],
        later: vec![Some(ids)],
    };
    let mut v = [Verdict::Forward];
    sh.process::<_, NoPrefetch>(Dir::In2Out, &mut b, &mut v, 1);
    assert_eq!(v[0], Verdict::Drop(DropReason::NoSession));
    // Inbound likewise, even to a live mapping under endpoint-independent filtering.
    let sent = udp_session(&mut sh);
    let (oa, op) = src_of(&sent);
    let reply = udp(ROUTER, 9, ip(oa), op, &[2u8; 3000]);
    let rf = fragment(&reply, 10, 1480);
    let mut b = Hinted {
        pkts: vec![rf[1].clone()],
        later: vec![Some(L4Ids {
            sport: 9,
            dport: op,
            icmp_type: 0,
        })],
    };
    sh.process::<_, NoPrefetch>(Dir::Out2In, &mut b, &mut v, 2);
    assert_eq!(v[0], Verdict::Drop(DropReason::NoSession));
    assert_eq!(sh.session_count(), 1);
}

// ---- Conntrack states (NEW / ESTABLISHED; RELATED and INVALID packets) ----

fn only_session(sh: &Shard) -> crate::Session {
    let v: Vec<_> = sh.sessions().copied().collect();
    assert_eq!(v.len(), 1);
    v[0]
}

#[test]
fn sessions_are_new_until_the_other_side_answers() {
    use crate::CtState;
    use wire::tcp_flags as F;
    let mut sh = shard();
    // UDP: NEW after the request, ESTABLISHED after the answer.
    let sent = udp_session(&mut sh);
    assert_eq!(only_session(&sh).ct_state(), CtState::New);
    let (oa, op) = src_of(&sent);
    one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"a"), 2);
    assert_eq!(only_session(&sh).ct_state(), CtState::Established);
    // An ICMP error about it (RELATED) changes nothing.
    sh.flush();
    let sent = udp_session(&mut sh);
    let (oa, _) = src_of(&sent);
    let err = icmp_error(SRV, ip(oa), icmp_type::DEST_UNREACHABLE, 3, &sent, 576);
    assert_eq!(one(&mut sh, Dir::Out2In, err, 2).0, Verdict::Forward);
    assert_eq!(only_session(&sh).ct_state(), CtState::New);
    // TCP: NEW through SYN, ESTABLISHED once the SYN is answered, and still while closing.
    sh.flush();
    let (_, syn) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 3);
    assert_eq!(only_session(&sh).ct_state(), CtState::New);
    let (oa, op) = src_of(&syn);
    one(
        &mut sh,
        Dir::Out2In,
        tcp(SRV, 80, ip(oa), op, F::SYN | F::ACK),
        3,
    );
    assert_eq!(only_session(&sh).ct_state(), CtState::Established);
    one(
        &mut sh,
        Dir::In2Out,
        tcp(SUB1, 4000, SRV, 80, F::FIN | F::ACK),
        4,
    );
    assert_eq!(only_session(&sh).ct_state(), CtState::Established);
    // A session an outside host opened (endpoint-independent filtering) is NEW until the
    // subscriber answers.
    sh.flush();
    let sent = udp_session(&mut sh);
    let (oa, op) = src_of(&sent);
    one(
        &mut sh,
        Dir::Out2In,
        udp(ROUTER, 9, ip(oa), op, b"hello"),
        5,
    );
    let inbound: Vec<_> = sh.sessions().filter(|s| s.is_inbound()).copied().collect();
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].ct_state(), CtState::New);
    one(&mut sh, Dir::In2Out, udp(SUB1, 5000, ROUTER, 9, b"hi"), 5);
    let inbound: Vec<_> = sh.sessions().filter(|s| s.is_inbound()).copied().collect();
    assert_eq!(inbound[0].ct_state(), CtState::Established);
}

#[test]
fn impossible_tcp_flags_are_invalid_and_leave_the_session_alone() {
    use wire::tcp_flags as F;
    let mut sh = shard();
    let (_, syn) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 1);
    let (oa, op) = src_of(&syn);
    one(
        &mut sh,
        Dir::Out2In,
        tcp(SRV, 80, ip(oa), op, F::SYN | F::ACK),
        1,
    );
    let before = only_session(&sh);
    for (dir, flags) in [
        (Dir::In2Out, F::SYN | F::FIN),
        (Dir::In2Out, 0),
        (Dir::Out2In, F::FIN),
        (Dir::Out2In, F::SYN | F::RST),
        (Dir::Out2In, F::FIN | F::PSH | F::URG),
    ] {
        let pkt = match dir {
            Dir::In2Out => tcp(SUB1, 4000, SRV, 80, flags),
            Dir::Out2In => tcp(SRV, 80, ip(oa), op, flags),
        };
        assert_eq!(
            one(&mut sh, dir, pkt, 50).0,
            Verdict::Drop(DropReason::TcpInvalid),
            "flags {flags:#x}"
        );
    }
    // Neither its state nor its timer moved; ordinary segments still pass.
    assert_eq!(only_session(&sh), before);
    assert_eq!(sh.counters().drops(DropReason::TcpInvalid), 5);
    let v = one(
        &mut sh,
        Dir::In2Out,
        tcp(SUB1, 4000, SRV, 80, F::ACK | F::PSH),
        51,
    )
    .0;
    assert_eq!(v, Verdict::Forward);
}
