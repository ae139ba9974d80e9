//! RFC behaviour of the shard as a whole (RFC 4787, 5382, 5508, 6888, 7422), over `Vec<u8>` packets:
//! mapping, filtering, pooling, port allocation modes, limits, hold-down, hairpinning, exclusions,
//! events and state that always drains to zero.

use std::collections::HashSet;
use std::sync::Arc;

use crate::rewrite::testpkt::*;
use crate::shard::testkit::*;
use crate::{
    Counter, Counters, Dir, DropReason, Event, EventKind, Exclusion, Filtering, Limit, Limits,
    Pool, PortAllocation, Prefix, Rules, Shard, ShardConfig, SnatRule, Verdict,
    deterministic_reverse, paired_address, tcp_state,
};
use wire::{Ipv4Addr, icmp_type, ip_proto, tcp_flags as F};

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

fn pool(filtering: Filtering, allocation: PortAllocation) -> Pool {
    Pool {
        filtering,
        allocation,
        ..pool_with(1024, 65535)
    }
}

fn eif() -> Shard {
    shard_of(vec![pool_with(1024, 65535)], ShardConfig::default())
}

fn with_filtering(f: Filtering) -> Shard {
    shard_of(
        vec![pool(f, PortAllocation::Random)],
        ShardConfig::default(),
    )
}

/// Two subscribers of 100.64.0.0/24 whose paired addresses differ.
fn subscribers_on_two_addresses() -> (Ipv4Addr, Ipv4Addr) {
    let p = pool_with(1024, 65535);
    let a = 0x6440_0001u32;
    let b = (0x6440_0002u32..0x6440_00ff)
        .find(|&b| paired_address(&p, b) != paired_address(&p, a))
        .unwrap();
    (ip(a), ip(b))
}

fn drain(sh: &mut Shard) -> Vec<Event> {
    let mut out = Vec::new();
    sh.drain_events(&mut out, usize::MAX);
    out
}

// ---- Mapping (RFC 4787 REQ-1, RFC 5382 REQ-1, RFC 5508 REQ-2) ----

#[test]
fn eim_one_outside_endpoint_for_every_destination_and_protocol() {
    let mut sh = eif();
    let (_, a) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"a"), 0);
    let (_, b) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV2, 3478, b"b"), 0);
    assert_eq!(
        src_of(&a),
        src_of(&b),
        "UDP mapping depends on the destination"
    );
    let (_, a) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 0);
    let (_, b) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV2, 443, F::SYN), 0);
    assert_eq!(
        src_of(&a),
        src_of(&b),
        "TCP mapping depends on the destination"
    );
    let req = icmp_type::ECHO_REQUEST;
    let (_, a) = one(&mut sh, Dir::In2Out, icmp_echo(SUB1, SRV, req, 9), 0);
    let (_, b) = one(&mut sh, Dir::In2Out, icmp_echo(SUB1, SRV2, req, 9), 0);
    assert_eq!(
        src_of(&a),
        src_of(&b),
        "ICMP mapping depends on the destination"
    );
    assert_eq!(sh.session_count(), 6);
    assert_eq!(sh.mapping_count(), 3);
    assert_eq!(sh.ports_in_use(), 3);
    // The mapping is shared: both sessions point at the same outside endpoint.
    let (oa, op) = src_of(&a);
    let m = sh.find_mapping(oa, op, ip_proto::ICMP).unwrap();
    assert_eq!((m.in_addr, m.in_port, m.sessions()), (SUB1.into(), 9, 2));
}

// ---- Filtering (RFC 4787 section 5, RFC 6888 REQ-7, RFC 5382 REQ-3/4) ----

/// Opens SUB1:5000 → SRV:53 and returns its outside endpoint.
fn open_udp(sh: &mut Shard) -> (u32, u16) {
    let (v, out) = one(sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    src_of(&out)
}

#[test]
fn filtering_endpoint_independent_admits_any_remote() {
    let mut sh = eif();
    let (oa, op) = open_udp(&mut sh);
    let (v, back) = one(
        &mut sh,
        Dir::Out2In,
        udp(SRV2, 9999, ip(oa), op, b"from a stranger"),
        1,
    );
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&back));
    assert_eq!(dst_of(&back), (SUB1.into(), 5000));
    assert_eq!(sh.counters().get(Counter::InboundSessionsCreated), 1);
    // The inbound-created session carries the subscriber's answer back out on the same mapping.
    let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV2, 9999, b"hi"), 2);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&out), (oa, op));
    assert_eq!(sh.session_count(), 2);
    assert_eq!(sh.mapping_count(), 1);
}

#[test]
fn filtering_address_dependent_admits_only_known_addresses() {
    let mut sh = with_filtering(Filtering::AddressDependent);
    let (oa, op) = open_udp(&mut sh);
    let (v, back) = one(&mut sh, Dir::Out2In, udp(SRV, 4444, ip(oa), op, b"x"), 1);
    assert_eq!(v, Verdict::Forward, "same address, other port");
    assert_eq!(dst_of(&back), (SUB1.into(), 5000));
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV2, 53, ip(oa), op, b"x"), 1);
    assert_eq!(v, Verdict::Drop(DropReason::Filtered), "other address");
    assert_eq!(sh.counters().drops(DropReason::Filtered), 1);
    // Once the subscriber talks to SRV2, SRV2 is admitted from any port.
    one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV2, 53, b"q"), 2);
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV2, 7777, ip(oa), op, b"x"), 3);
    assert_eq!(v, Verdict::Forward);
}

#[test]
fn filtering_address_and_port_dependent_admits_only_the_exact_remote() {
    let mut sh = with_filtering(Filtering::AddressAndPortDependent);
    let (oa, op) = open_udp(&mut sh);
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"x"), 1);
    assert_eq!(v, Verdict::Forward);
    for (src, port) in [(SRV, 54), (SRV2, 53)] {
        let (v, _) = one(&mut sh, Dir::Out2In, udp(src, port, ip(oa), op, b"x"), 1);
        assert_eq!(v, Verdict::Drop(DropReason::Filtered));
    }
    assert_eq!(sh.session_count(), 1);
}

#[test]
fn inbound_syn_to_a_mapping_opens_under_eif_and_is_dropped_under_apdf() {
    for (filtering, expect) in [
        (Filtering::EndpointIndependent, Verdict::Forward),
        (
            Filtering::AddressAndPortDependent,
            Verdict::Drop(DropReason::Filtered),
        ),
    ] {
        let mut sh = with_filtering(filtering);
        let (_, out) = one(&mut sh, Dir::In2Out, tcp(SUB1, 4000, SRV, 80, F::SYN), 0);
        let (oa, op) = src_of(&out);
        // A peer that learned the mapping connects to it (simultaneous open / P2P, RFC 5382).
        let (v, back) = one(&mut sh, Dir::Out2In, tcp(SRV2, 6000, ip(oa), op, F::SYN), 1);
        assert_eq!(v, expect, "{filtering:?}");
        if expect != Verdict::Forward {
            assert_eq!(sh.session_count(), 1);
            continue;
        }
        assert!(checksums_valid(&back));
        assert_eq!(dst_of(&back), (SUB1.into(), 4000));
        let k = crate::FlowKey {
            src: SUB1.into(),
            dst: SRV2.into(),
            sport: 4000,
            dport: 6000,
            proto: ip_proto::TCP,
        };
        let st = sh.find(Dir::In2Out, &k).unwrap().state;
        assert_eq!(st & tcp_state::PHASE_MASK, tcp_state::SYN_RCVD);
        // The subscriber answers: established.
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            tcp(SUB1, 4000, SRV2, 6000, F::SYN | F::ACK),
            1,
        );
        assert_eq!(v, Verdict::Forward);
        let st = sh.find(Dir::In2Out, &k).unwrap().state;
        assert_eq!(st & tcp_state::PHASE_MASK, tcp_state::ESTABLISHED);
        // A segment other than a SYN from a stranger is invalid, not a new connection.
        let (v, _) = one(&mut sh, Dir::Out2In, tcp(SRV2, 6001, ip(oa), op, F::ACK), 1);
        assert_eq!(v, Verdict::Drop(DropReason::TcpInvalid));
    }
}

#[test]
fn inbound_udp_refreshes_the_timer_only_when_configured() {
    for refresh in [false, true] {
        let mut sh = shard_of(
            vec![pool_with(1024, 65535)],
            ShardConfig {
                udp_inbound_refresh: refresh,
                ..ShardConfig::default()
            },
        );
        let (oa, op) = open_udp(&mut sh);
        one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"x"), 200);
        tick(&mut sh, 0, 300);
        assert_eq!(
            sh.session_count(),
            u32::from(refresh),
            "inbound refresh {refresh}"
        );
    }
}

// ---- Paired pooling (RFC 6888 REQ-2) ----

#[test]
fn paired_pooling_holds_for_every_subscriber_and_spills_over_only_when_full() {
    // 64 ports per address (one block).
    let mut sh = shard_of(vec![pool_with(2048, 2111)], ShardConfig::default());
    let p = pool_with(2048, 2111);
    let (a, b) = subscribers_on_two_addresses();
    let c = (0x6440_0100u32..)
        .find(|&c| paired_address(&p, c) == paired_address(&p, a.into()))
        .map(ip)
        .unwrap();
    for sub in [a, b] {
        let addrs: HashSet<u32> = (0..20u16)
            .map(|i| src_of(&one(&mut sh, Dir::In2Out, udp(sub, 3000 + i, SRV, 53, b"x"), 0).1).0)
            .collect();
        assert_eq!(addrs, HashSet::from([paired_address(&p, sub.into())]));
    }
    // Fill a's address; c hashes to it too, finds it full, and gets the other one for all its mappings.
    for i in 20..64u16 {
        one(&mut sh, Dir::In2Out, udp(a, 3000 + i, SRV, 53, b"x"), 0);
    }
    let addrs: HashSet<u32> = (0..10u16)
        .map(|i| src_of(&one(&mut sh, Dir::In2Out, udp(c, 3000 + i, SRV, 53, b"x"), 0).1).0)
        .collect();
    assert_eq!(addrs, HashSet::from([paired_address(&p, b.into())]));
}

// ---- Port allocation modes ----

#[test]
fn preserve_keeps_the_inside_port_when_free() {
    let mut sh = shard_of(
        vec![pool(
            Filtering::EndpointIndependent,
            PortAllocation::Preserve,
        )],
        ShardConfig::default(),
    );
    let p = pool_with(1024, 65535);
    let (a, _) = subscribers_on_two_addresses();
    let twin = (0x6440_0100u32..)
        .find(|&c| paired_address(&p, c) == paired_address(&p, a.into()))
        .map(ip)
        .unwrap();
    let (_, out) = one(&mut sh, Dir::In2Out, udp(a, 5060, SRV, 5060, b"x"), 0);
    assert_eq!(src_of(&out).1, 5060);
    let (_, out) = one(&mut sh, Dir::In2Out, tcp(a, 40000, SRV, 80, F::SYN), 0);
    assert_eq!(src_of(&out).1, 40000);
    let (_, out) = one(&mut sh, Dir::In2Out, icmp_echo(a, SRV, 8, 4242), 0);
    assert_eq!(src_of(&out).1, 4242);
    // Taken on the shared address: another port, never the same one twice.
    let (_, out) = one(&mut sh, Dir::In2Out, udp(twin, 5060, SRV, 5060, b"x"), 0);
    assert_eq!(src_of(&out).0, paired_address(&p, a.into()));
    assert_ne!(src_of(&out).1, 5060);
    // Below the range: not preservable.
    let (_, out) = one(&mut sh, Dir::In2Out, udp(a, 80, SRV, 80, b"x"), 0);
    assert!(src_of(&out).1 >= 1024);
}

#[test]
fn parity_is_preserved() {
    let mut sh = shard_of(
        vec![pool(Filtering::EndpointIndependent, PortAllocation::Parity)],
        ShardConfig::default(),
    );
    for i in 0..500u16 {
        let inside = 10000 + i;
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, inside, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(src_of(&out).1 % 2, inside % 2, "RTP/RTCP parity lost");
    }
}

#[test]
fn random_ports_are_not_sequential() {
    let mut sh = eif();
    let ports: Vec<u16> = (0..64u16)
        .map(|i| src_of(&one(&mut sh, Dir::In2Out, udp(SUB1, 20000 + i, SRV, 53, b"x"), 0).1).1)
        .collect();
    let sequential = ports
        .windows(2)
        .filter(|w| w[1].wrapping_sub(w[0]) <= 2)
        .count();
    assert!(sequential < 4, "predictable ports {ports:?}");
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 64);
}

#[test]
fn port_blocks_per_subscriber() {
    // Blocks of 128 ports, at most 2 per subscriber.
    let blocks = PortAllocation::Blocks {
        size: 128,
        max_blocks: 2,
    };
    let mut sh = shard_of(
        vec![pool(Filtering::EndpointIndependent, blocks)],
        ShardConfig::default(),
    );
    let mut ports = HashSet::new();
    for i in 0..256u16 {
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 10000 + i, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward, "mapping {i}");
        ports.insert(src_of(&out));
    }
    assert_eq!(ports.len(), 256);
    let owned = sh.subscriber_blocks(SUB1.into(), 0);
    assert_eq!(owned.len(), 2);
    assert!(owned.iter().all(|b| b.len() == 128));
    for &(a, p) in &ports {
        assert!(
            owned.iter().any(|b| b.addr == a && b.contains(p)),
            "{p} outside its blocks"
        );
    }
    assert_eq!(sh.blocks_in_use(), 2);
    // A third block is over the subscriber's maximum.
    let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 9999, SRV, 53, b"x"), 0);
    assert_eq!(v, Verdict::Drop(DropReason::QuotaExceeded));
    // TCP uses the same blocks (a block reserves its ports for every protocol).
    let (v, out) = one(&mut sh, Dir::In2Out, tcp(SUB1, 9999, SRV, 80, F::SYN), 0);
    assert_eq!(v, Verdict::Forward);
    let (a, p) = src_of(&out);
    assert!(owned.iter().any(|b| b.addr == a && b.contains(p)));
    // Another subscriber gets other blocks.
    let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB2, 10000, SRV, 53, b"x"), 0);
    let theirs = sh.subscriber_blocks(SUB2.into(), 0);
    assert_eq!(theirs.len(), 1);
    assert!(theirs[0].contains(src_of(&out).1));
    for b in &owned {
        assert!(b.addr != theirs[0].addr || b.first_port != theirs[0].first_port);
    }
    let allocated: Vec<_> = drain(&mut sh)
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::BlockAllocated { .. }))
        .collect();
    assert_eq!(allocated.len(), 3);
    // Blocks go back when empty (after the hold-down of their last ports).
    tick(&mut sh, 1, 300 + 240 + 121);
    assert_eq!(sh.blocks_in_use(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.subscriber_count(), 0);
    let released = drain(&mut sh)
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::BlockReleased { .. }))
        .count();
    assert_eq!(released, 3);
    assert_eq!(sh.counters().get(Counter::BlocksInUse), 0);
}

fn deterministic_pool() -> Pool {
    pool(
        Filtering::EndpointIndependent,
        PortAllocation::Deterministic {
            inside: Prefix::new(0x6440_0000, 24),
            ports_per_subscriber: 0,
        },
    )
}

fn deterministic_shard(worker: u16, workers: u16) -> Shard {
    let rules = Rules::new(
        vec![deterministic_pool()],
        vec![SnatRule {
            prefix: 0x6440_0000,
            len: 24,
            pool: 0,
            dst: None,
        }],
    )
    .unwrap();
    Shard::new(
        ShardConfig {
            worker,
            workers,
            seed: 5,
            ..ShardConfig::default()
        },
        Arc::new(rules),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap()
}

#[test]
fn deterministic_allocation_stays_in_the_subscribers_range() {
    let mut sh = deterministic_shard(0, 1);
    let pool = deterministic_pool();
    for k in 0..256u32 {
        let sub = ip(0x6440_0000 + k);
        for i in 0..3u16 {
            let (v, out) = one(&mut sh, Dir::In2Out, udp(sub, 7000 + i, SRV, 53, b"x"), 0);
            assert_eq!(v, Verdict::Forward);
            let (a, p) = src_of(&out);
            assert_eq!(deterministic_reverse(&pool, 1, a, p), Some(sub.into()));
        }
    }
    // A subscriber's range is its quota: /24 over 2 addresses × 1008 blocks → 7 blocks (448 ports).
    let sub = ip(0x6440_0007);
    let mut ok = 3;
    for i in 0..500u16 {
        if one(&mut sh, Dir::In2Out, udp(sub, 20000 + i, SRV, 53, b"x"), 0).0 == Verdict::Forward {
            ok += 1;
        }
    }
    assert_eq!(ok, 448);
    assert!(sh.counters().drops(DropReason::QuotaExceeded) > 0);
    // Deterministic ports belong to their subscriber for good: no hold-down.
    tick(&mut sh, 1, 301);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.held_count(), 0);
}

#[test]
fn deterministic_subscriber_on_the_wrong_worker_is_handed_over() {
    let rules = Rules::new(
        vec![deterministic_pool()],
        vec![SnatRule {
            prefix: 0x6440_0000,
            len: 24,
            pool: 0,
            dst: None,
        }],
    )
    .unwrap();
    let mut w = [deterministic_shard(0, 2), deterministic_shard(1, 2)];
    for k in 0..16u32 {
        let sub = 0x6440_0000 + k;
        let owner = rules.subscriber_worker(sub, SRV.into(), 2).unwrap();
        let other = 1 - owner as usize;
        let (v, _) = one(
            &mut w[other],
            Dir::In2Out,
            udp(ip(sub), 1, SRV, 53, b"x"),
            0,
        );
        assert_eq!(
            v,
            Verdict::Handoff {
                worker: owner,
                dir: Dir::In2Out
            }
        );
        let (v, out) = one(
            &mut w[owner as usize],
            Dir::In2Out,
            udp(ip(sub), 1, SRV, 53, b"x"),
            0,
        );
        assert_eq!(v, Verdict::Forward);
        let (a, p) = src_of(&out);
        assert_eq!(crate::port_owner(p, 2), owner);
        assert_eq!(deterministic_reverse(&rules.pools[0], 2, a, p), Some(sub));
    }
    assert_eq!(rules.subscriber_worker(0x0a00_0001, SRV.into(), 2), None);
}

// ---- Limits (RFC 6888 REQ-4/5, REQ-11: no eviction) ----

#[test]
fn session_limit_refuses_new_flows_and_keeps_existing_ones_both_ways() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            limits: Limits {
                max_sessions_per_subscriber: 3,
                max_ports_per_subscriber: 0,
            },
            ..ShardConfig::default()
        },
    );
    let outs: Vec<(u32, u16)> = (0..3u16)
        .map(|i| src_of(&one(&mut sh, Dir::In2Out, udp(SUB1, 1000 + i, SRV, 53, b"x"), 0).1))
        .collect();
    for t in 0..3 {
        let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 2000, SRV, 53, b"x"), t);
        assert_eq!(v, Verdict::Drop(DropReason::QuotaExceeded));
    }
    // Inbound openings count too (and, in the same second, add no second event).
    let (oa, op) = outs[0];
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV2, 1, ip(oa), op, b"x"), 2);
    assert_eq!(v, Verdict::Drop(DropReason::QuotaExceeded));
    for (i, &(oa, op)) in outs.iter().enumerate() {
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            udp(SUB1, 1000 + i as u16, SRV, 53, b"x"),
            3,
        );
        assert_eq!(v, Verdict::Forward);
        let (v, back) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"x"), 3);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(dst_of(&back), (SUB1.into(), 1000 + i as u16));
    }
    // Other subscribers are not affected.
    assert_eq!(
        one(&mut sh, Dir::In2Out, udp(SUB2, 2000, SRV, 53, b"x"), 3).0,
        Verdict::Forward
    );
    assert_eq!(sh.counters().drops(DropReason::QuotaExceeded), 4);
    // One quota event per subscriber per second.
    let quota: Vec<u32> = drain(&mut sh)
        .into_iter()
        .filter_map(|e| match e.kind {
            EventKind::QuotaExceeded {
                subscriber,
                limit: Limit::Sessions,
            } => {
                assert_eq!(subscriber, u32::from(SUB1));
                Some(e.time)
            }
            _ => None,
        })
        .collect();
    assert_eq!(quota, vec![0, 1, 2]);
}

#[test]
fn port_limit_refuses_new_mappings_but_not_new_sessions_on_existing_ones() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            limits: Limits {
                max_sessions_per_subscriber: 0,
                max_ports_per_subscriber: 2,
            },
            ..ShardConfig::default()
        },
    );
    assert_eq!(
        one(&mut sh, Dir::In2Out, udp(SUB1, 1, SRV, 53, b"x"), 0).0,
        Verdict::Forward
    );
    assert_eq!(
        one(&mut sh, Dir::In2Out, tcp(SUB1, 2, SRV, 80, F::SYN), 0).0,
        Verdict::Forward
    );
    assert_eq!(
        one(&mut sh, Dir::In2Out, udp(SUB1, 3, SRV, 53, b"x"), 0).0,
        Verdict::Drop(DropReason::QuotaExceeded)
    );
    // Same inside endpoint to a new destination: same mapping, no new port.
    assert_eq!(
        one(&mut sh, Dir::In2Out, udp(SUB1, 1, SRV2, 53, b"x"), 0).0,
        Verdict::Forward
    );
    assert_eq!(sh.ports_in_use(), 2);
    assert!(drain(&mut sh).iter().any(|e| matches!(
        e.kind,
        EventKind::QuotaExceeded {
            limit: Limit::Ports,
            ..
        }
    )));
}

// ---- Hold-down (RFC 6888 REQ-8) ----

#[test]
fn freed_ports_are_held_then_reused_and_the_same_endpoint_gets_its_port_back() {
    // One address with 64 ports.
    let mut sh = shard_of(
        vec![Pool::new("one", vec![POOL[0]], 2048, 2111)],
        ShardConfig::default(),
    );
    let mut ports = Vec::new();
    for i in 0..64u16 {
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 1000 + i, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward);
        ports.push(src_of(&out).1);
    }
    tick(&mut sh, 1, 300);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.held_count(), 64);
    assert_eq!(sh.counters().get(Counter::PortsHeld), 64);
    // Another subscriber finds every port held.
    let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB2, 7, SRV, 53, b"x"), 301);
    assert_eq!(v, Verdict::Drop(DropReason::OutOfPorts));
    // The same inside endpoint coming back is exempt: it gets its old port.
    let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 1005, SRV2, 53, b"x"), 302);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&out).1, ports[5]);
    assert_eq!(sh.held_count(), 63);
    // Not reused before 120 s have passed...
    tick(&mut sh, 301, 419);
    assert_eq!(
        one(&mut sh, Dir::In2Out, udp(SUB2, 7, SRV, 53, b"x"), 419).0,
        Verdict::Drop(DropReason::OutOfPorts)
    );
    // ...and reusable after.
    tick(&mut sh, 420, 420);
    assert_eq!(sh.held_count(), 0);
    let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB2, 7, SRV, 53, b"x"), 420);
    assert_eq!(v, Verdict::Forward);
    assert!(ports.contains(&src_of(&out).1));
    // While held, the port admits nothing from outside.
    let mut sh2 = shard_of(vec![pool_with(1024, 65535)], ShardConfig::default());
    let (oa, op) = open_udp(&mut sh2);
    tick(&mut sh2, 1, 300);
    assert_eq!(sh2.held_count(), 1);
    let (v, _) = one(&mut sh2, Dir::Out2In, udp(SRV, 53, ip(oa), op, b"x"), 301);
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
}

#[test]
fn hold_down_zero_frees_ports_at_once() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            hold_down_s: 0,
            ..ShardConfig::default()
        },
    );
    open_udp(&mut sh);
    tick(&mut sh, 1, 300);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.mapping_count(), 0);
}

// ---- Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8, RFC 5508 section 6) ----

#[test]
fn udp_hairpin_shows_the_senders_outside_endpoint() {
    let mut sh = eif();
    let (a, b) = subscribers_on_two_addresses();
    // b has a mapping (say, learned through a rendezvous server).
    let (_, out) = one(&mut sh, Dir::In2Out, udp(b, 6000, SRV, 3478, b"bind"), 0);
    let (b_oa, b_op) = src_of(&out);
    // a's own mapping, as the rendezvous server would see it.
    let (_, out) = one(&mut sh, Dir::In2Out, udp(a, 5000, SRV, 3478, b"bind"), 0);
    let (a_oa, a_op) = src_of(&out);
    let (v, pkt) = one(
        &mut sh,
        Dir::In2Out,
        udp(a, 5000, ip(b_oa), b_op, b"hello b"),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&pkt));
    assert_eq!(dst_of(&pkt), (b.into(), 6000));
    assert_eq!(
        src_of(&pkt),
        (a_oa, a_op),
        "the receiver sees a's outside endpoint"
    );
    assert_eq!(ttl_of(&pkt), 63, "one hop");
    // And back.
    let (v, pkt) = one(
        &mut sh,
        Dir::In2Out,
        udp(b, 6000, ip(a_oa), a_op, b"hello a"),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&pkt));
    assert_eq!(dst_of(&pkt), (a.into(), 5000));
    assert_eq!(src_of(&pkt), (b_oa, b_op));
    assert_eq!(sh.counters().get(Counter::HairpinPackets), 2);
    // Filtering applies: under APDF b's mapping has never talked to a's endpoint.
    let mut sh = with_filtering(Filtering::AddressAndPortDependent);
    let (_, out) = one(&mut sh, Dir::In2Out, udp(b, 6000, SRV, 3478, b"bind"), 0);
    let (b_oa, b_op) = src_of(&out);
    let (v, _) = one(&mut sh, Dir::In2Out, udp(a, 5000, ip(b_oa), b_op, b"x"), 1);
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
}

#[test]
fn flows_opened_earlier_in_a_burst_are_seen_by_the_rest_of_it() {
    // A new flow's outside keys (its session's, its mapping's, its address-filtering key) are
    // stored in the next burst, their buckets prefetched at the end of this one. Within the burst
    // they must already work exactly as stored keys.
    let p = pool_with(1024, 65535);
    let preserve = |filtering| {
        shard_of(
            vec![pool(filtering, PortAllocation::Preserve)],
            ShardConfig {
                max_sessions: 8,
                ..ShardConfig::default()
            },
        )
    };
    let (a, b) = subscribers_on_two_addresses();
    let (a_out, b_out) = (paired_address(&p, a.into()), paired_address(&p, b.into()));

    // The mapping's outside key: a hairpin to the endpoint packet 0 just mapped finds it.
    let mut sh = preserve(Filtering::EndpointIndependent);
    let mut burst = vec![
        udp(a, 5000, SRV, 3478, b"bind"),
        udp(b, 6000, ip(a_out), 5000, b"to a"),
        udp(b, 6001, SRV, 53, b"q1"),
    ];
    let v = run(&mut sh, Dir::In2Out, &mut burst, 0);
    assert_eq!(v[0], Verdict::Forward);
    assert_eq!(src_of(&burst[0]), (a_out, 5000), "the port is preserved");
    assert_eq!(v[1], Verdict::Hairpin, "packet 0's mapping is found");
    assert_eq!(dst_of(&burst[1]), (a.into(), 5000));
    assert_eq!(v[2], Verdict::Forward);
    // a→SRV, b→a and its inbound half on a's mapping, b:6001→SRV.
    assert_eq!(sh.session_count(), 4);

    // A session's outside key: the second packet of a flow opened from outside in the same burst
    // is that session's, not another one.
    let mut burst = vec![
        udp(SRV2, 7000, ip(a_out), 5000, b"in 1"),
        udp(SRV2, 7000, ip(a_out), 5000, b"in 2"),
    ];
    let v = run(&mut sh, Dir::Out2In, &mut burst, 1);
    assert_eq!(v, [Verdict::Forward, Verdict::Forward]);
    assert_eq!(dst_of(&burst[1]), (a.into(), 5000));
    assert_eq!(sh.session_count(), 5, "one session for the inbound flow");
    let c = sh.counters();
    assert_eq!(c.get(Counter::InboundSessionsCreated), 2);
    // The table is full at 8 records. Six are in use: the mappings of a:5000, b:6000 and
    // b:6001 with their first sessions embedded, and the three further sessions on a's and b's
    // mappings (the hairpin, its inbound half, SRV2's). A refusal in a burst leaves the burst's
    // earlier flows alone.
    assert_eq!(sh.record_count(), 6);
    let mut burst: Vec<Vec<u8>> = (0..3u16).map(|i| udp(b, 6100 + i, SRV, 53, b"q")).collect();
    let v = run(&mut sh, Dir::In2Out, &mut burst, 1);
    assert_eq!(v[..2], [Verdict::Forward; 2]);
    assert_eq!(v[2], Verdict::Drop(DropReason::TableFull));
    let (v, back) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(b_out), 6101, b"r"), 2);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&back), (b.into(), 6101));
    assert_eq!(sh.flush(), 7);
    assert_empty(&sh);

    // The address-filtering key: under ADF, b's mapping may be reached from a's address only
    // once b has sent to it; b does so in packet 0, and a's packet 1 of the same burst, from
    // another port (no session matches it exactly, only the filter can let it in), is let in.
    let mut sh = preserve(Filtering::AddressDependent);
    let mut first = vec![udp(a, 5000, SRV, 3478, b"bind")];
    assert_eq!(run(&mut sh, Dir::In2Out, &mut first, 0), [Verdict::Forward]);
    let mut burst = vec![
        udp(b, 6000, ip(a_out), 5000, b"b to a"),
        udp(a, 5001, ip(b_out), 6000, b"a to b"),
    ];
    let v = run(&mut sh, Dir::In2Out, &mut burst, 1);
    assert_eq!(
        v[0],
        Verdict::Drop(DropReason::Filtered),
        "a has not sent to b's address"
    );
    assert_eq!(
        v[1],
        Verdict::Hairpin,
        "b has sent to a's address (packet 0)"
    );
    assert_eq!(dst_of(&burst[1]), (b.into(), 6000));
    assert_eq!(src_of(&burst[1]), (a_out, 5001));
}

#[test]
fn flows_of_a_burst_are_seen_before_the_next_burst_stores_their_keys() {
    // A burst's new outside keys wait in the index's queue until the next burst stores them:
    // meanwhile the control plane's lookups must see them, the next burst must store them before
    // its lookups (its reply finds the mapping), and a flow that ends while its key is queued
    // must leave nothing behind.
    let mut sh = eif();
    let mut burst = vec![
        udp(SUB1, 5000, SRV, 53, b"q"),
        udp(SUB2, 5001, SRV, 53, b"q"),
    ];
    assert_eq!(
        run(&mut sh, Dir::In2Out, &mut burst, 0),
        [Verdict::Forward; 2]
    );
    let (a_out, a_port) = src_of(&burst[0]);
    assert_eq!(
        sh.queued_index_keys(),
        2,
        "both mappings' outside keys wait"
    );
    let m = sh.find_mapping(a_out, a_port, ip_proto::UDP);
    assert_eq!(m.map(|m| (m.in_addr, m.in_port)), Some((SUB1.into(), 5000)));

    // The reply in the next burst finds its mapping; the burst stores the queue.
    let (v, back) = one(
        &mut sh,
        Dir::Out2In,
        udp(SRV, 53, ip(a_out), a_port, b"r"),
        1,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&back), (SUB1.into(), 5000));
    assert_eq!(sh.queued_index_keys(), 0);

    // A flow whose key is still queued when it expires ends cleanly, and so do the others.
    let mut burst = vec![udp(SUB1, 5002, SRV, 53, b"q")];
    assert_eq!(run(&mut sh, Dir::In2Out, &mut burst, 2), [Verdict::Forward]);
    assert_eq!(sh.queued_index_keys(), 1);
    let udp_s = sh.config().timeouts.udp;
    let hold = sh.config().hold_down_s;
    tick(&mut sh, 3, 3 + udp_s + hold + 2);
    assert_empty(&sh);
}

#[test]
fn tcp_hairpin_connects_both_subscribers() {
    let mut sh = eif();
    let (a, b) = subscribers_on_two_addresses();
    let (_, out) = one(&mut sh, Dir::In2Out, tcp(b, 7000, SRV, 80, F::SYN), 0);
    let (b_oa, b_op) = src_of(&out);
    let (v, syn) = one(
        &mut sh,
        Dir::In2Out,
        tcp(a, 4000, ip(b_oa), b_op, F::SYN),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&syn));
    assert_eq!(dst_of(&syn), (b.into(), 7000));
    let (a_oa, a_op) = src_of(&syn);
    assert!(POOL.contains(&a_oa));
    let (v, synack) = one(
        &mut sh,
        Dir::In2Out,
        tcp(b, 7000, ip(a_oa), a_op, F::SYN | F::ACK),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&synack));
    assert_eq!(dst_of(&synack), (a.into(), 4000));
    assert_eq!(src_of(&synack), (b_oa, b_op));
    let (v, _) = one(
        &mut sh,
        Dir::In2Out,
        tcp(a, 4000, ip(b_oa), b_op, F::ACK),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    let est = sh
        .sessions()
        .filter(|s| s.is_hairpin() && s.state & tcp_state::PHASE_MASK == tcp_state::ESTABLISHED)
        .count();
    assert_eq!(est, 2, "both halves established");
}

#[test]
fn icmp_echo_hairpin_round_trip() {
    // Identifiers are preserved, so the target's outside identifier is predictable.
    let mut sh = shard_of(
        vec![pool(
            Filtering::EndpointIndependent,
            PortAllocation::Preserve,
        )],
        ShardConfig::default(),
    );
    let (a, b) = subscribers_on_two_addresses();
    let (_, out) = one(
        &mut sh,
        Dir::In2Out,
        icmp_echo(b, SRV, icmp_type::ECHO_REQUEST, 7777),
        0,
    );
    let (b_oa, b_id) = src_of(&out);
    assert_eq!(b_id, 7777);
    let (v, req) = one(
        &mut sh,
        Dir::In2Out,
        icmp_echo(a, ip(b_oa), icmp_type::ECHO_REQUEST, 7777),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&req));
    let a_oa = src_of(&req).0;
    assert_ne!(a_oa, b_oa);
    assert_eq!(dst_of(&req), (b.into(), 7777));
    assert_eq!(ttl_of(&req), 63);
    // b's kernel answers the request.
    let (v, rep) = one(
        &mut sh,
        Dir::In2Out,
        icmp_echo(b, ip(a_oa), icmp_type::ECHO_REPLY, 7777),
        1,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(checksums_valid(&rep));
    assert_eq!(src_of(&rep).0, b_oa);
    assert_eq!(dst_of(&rep), (a.into(), 7777));
}

#[test]
fn hairpin_to_a_port_of_another_worker_is_handed_over_half_done() {
    let pools = || vec![pool_with(1024, 65535)];
    let cfg = |worker| ShardConfig {
        worker,
        workers: 2,
        ..ShardConfig::default()
    };
    let mut w0 = shard_of(pools(), cfg(0));
    let mut w1 = shard_of(pools(), cfg(1));
    let (a, b) = subscribers_on_two_addresses();
    let (_, out) = one(&mut w1, Dir::In2Out, udp(b, 6000, SRV, 3478, b"bind"), 0);
    let (b_oa, b_op) = src_of(&out);
    assert_eq!(crate::port_owner(b_op, 2), 1);
    let (v, pkt) = one(&mut w0, Dir::In2Out, udp(a, 5000, ip(b_oa), b_op, b"hi"), 1);
    assert_eq!(
        v,
        Verdict::Handoff {
            worker: 1,
            dir: Dir::Out2In
        }
    );
    assert!(checksums_valid(&pkt));
    assert_eq!(
        ttl_of(&pkt),
        64,
        "the TTL is decremented by the second half"
    );
    let (a_oa, a_op) = src_of(&pkt);
    assert_eq!(crate::port_owner(a_op, 2), 0);
    let (v, pkt) = one(&mut w1, Dir::Out2In, pkt, 1);
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&pkt));
    assert_eq!(dst_of(&pkt), (b.into(), 6000));
    assert_eq!(src_of(&pkt), (a_oa, a_op));
    assert_eq!(ttl_of(&pkt), 63);
}

// ---- Exclusions and rule selection (RFC 6888 REQ-6) ----

fn excluding_shard() -> Shard {
    let rules = Rules::with_exclusions(
        vec![
            pool_with(1024, 65535),
            Pool::new("voip", vec![0xcb00_7180], 1024, 65535),
        ],
        vec![
            SnatRule {
                dst: Some(Prefix::new(u32::from(SRV2), 32)),
                ..subscribers_rule(1)
            },
            subscribers_rule(0),
        ],
        vec![Exclusion {
            dst: Prefix::new(0x0a00_0000, 8),
            src: None,
        }],
    )
    .unwrap();
    Shard::new(
        ShardConfig::default(),
        Arc::new(rules),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap()
}

#[test]
fn exclusions_forward_untranslated_both_ways() {
    let mut sh = excluding_shard();
    let dc = Ipv4Addr::new(10, 1, 2, 3);
    let orig = udp(SUB1, 5000, dc, 53, b"q");
    let (v, out) = one(&mut sh, Dir::In2Out, orig.clone(), 0);
    assert_eq!(v, Verdict::ForwardUntranslated);
    assert!(checksums_valid(&out));
    assert_eq!((src_of(&out), dst_of(&out)), (src_of(&orig), dst_of(&orig)));
    assert_eq!(ttl_of(&out), 63);
    // Any protocol.
    let mut gre = udp(SUB1, 1, dc, 1, b"x");
    gre[9] = 47;
    gre[10..12].copy_from_slice(&[0, 0]);
    let ck = wire::checksum::checksum(&gre[..20]);
    gre[10..12].copy_from_slice(&ck.to_be_bytes());
    let (v, _) = one(&mut sh, Dir::In2Out, gre, 0);
    assert_eq!(v, Verdict::ForwardUntranslated);
    // Return traffic to the inside address.
    let (v, back) = one(&mut sh, Dir::Out2In, udp(dc, 53, SUB1, 5000, b"a"), 0);
    assert_eq!(v, Verdict::ForwardUntranslated);
    assert_eq!(dst_of(&back), (SUB1.into(), 5000));
    // Not from an excluded prefix: no.
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 53, SUB1, 5000, b"a"), 0);
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.counters().get(Counter::UntranslatedPackets), 3);
}

#[test]
fn snat_rules_can_pick_a_pool_by_destination() {
    let mut sh = excluding_shard();
    let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV2, 5060, b"x"), 0);
    assert_eq!(src_of(&out).0, 0xcb00_7180);
    let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000, SRV, 53, b"x"), 0);
    assert!(POOL.contains(&src_of(&out).0));
    // One subscriber record per pool.
    assert_eq!(sh.subscriber_count(), 2);
}

#[test]
fn masquerade_is_a_pool_of_the_interface_address_with_a_narrower_range() {
    // The outside interface address as the only pool address; ports below 20000 stay the appliance's.
    let iface = 0xc000_0201;
    let mut sh = shard_of(
        vec![Pool::new("masquerade", vec![iface], 20000, 65535)],
        ShardConfig::default(),
    );
    for i in 0..200u16 {
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 1000 + i, SRV, 53, b"x"), 0);
        assert_eq!(v, Verdict::Forward);
        let (a, p) = src_of(&out);
        assert_eq!(a, iface);
        assert!(p >= 20000, "port {p} is reserved for the appliance");
        let (v, back) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(a), p, b"y"), 0);
        assert_eq!(v, Verdict::Forward);
        assert_eq!(dst_of(&back), (SUB1.into(), 1000 + i));
    }
    // Traffic to the appliance's own ports is none of the translator's business.
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 53, ip(iface), 22, b"z"), 0);
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
}

// ---- Events and counters ----

#[test]
fn events_record_what_happened_in_order() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            log_sessions: true,
            hold_down_s: 0,
            ..ShardConfig::default()
        },
    );
    let (oa, op) = open_udp(&mut sh);
    tick(&mut sh, 1, 300);
    let kinds: Vec<&'static str> = drain(&mut sh)
        .iter()
        .map(|e| match e.kind {
            EventKind::MappingCreated(m) => {
                assert_eq!(
                    (m.in_addr, m.in_port, m.out_addr, m.out_port),
                    (SUB1.into(), 5000, oa, op)
                );
                "mapping+"
            }
            EventKind::SessionCreated(s) => {
                assert_eq!((s.rem_addr, s.rem_port, s.inbound), (SRV.into(), 53, false));
                "session+"
            }
            EventKind::SessionDeleted(_) => "session-",
            EventKind::MappingDeleted(_) => "mapping-",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, vec!["mapping+", "session+", "session-", "mapping-"]);
    assert_eq!(sh.pending_events(), 0);
}

#[test]
fn a_full_event_ring_drops_new_events_and_counts_them() {
    let mut sh = shard_of(
        vec![pool_with(1024, 65535)],
        ShardConfig {
            event_ring: 4,
            ..ShardConfig::default()
        },
    );
    for i in 0..10u16 {
        one(&mut sh, Dir::In2Out, udp(SUB1, 100 + i, SRV, 53, b"x"), 0);
    }
    let ev = drain(&mut sh);
    assert_eq!(ev.len(), 4);
    assert!(matches!(ev[0].kind, EventKind::MappingCreated(m) if m.in_port == 100));
    assert_eq!(sh.counters().get(Counter::EventsDropped), 6);
}

#[test]
fn ports_in_use_are_reported_per_address() {
    let mut sh = eif();
    let (a, b) = subscribers_on_two_addresses();
    for i in 0..3u16 {
        one(&mut sh, Dir::In2Out, udp(a, 100 + i, SRV, 53, b"x"), 0);
    }
    one(&mut sh, Dir::In2Out, tcp(b, 100, SRV, 80, F::SYN), 0);
    let p = pool_with(1024, 65535);
    let mut by_addr = sh.ports_in_use_by_address();
    by_addr.sort();
    let mut want = vec![
        (paired_address(&p, a.into()), 3),
        (paired_address(&p, b.into()), 1),
    ];
    want.sort();
    assert_eq!(by_addr, want);
    assert_eq!(sh.counters().get(Counter::PortsInUse), 4);
    assert_eq!(sh.counters().get(Counter::MappingsCurrent), 4);
    assert_eq!(sh.counters().get(Counter::SubscribersCurrent), 2);
    assert_eq!(sh.counters().get(Counter::TcpSessionsCreated), 1);
    assert_eq!(sh.counters().get(Counter::UdpSessionsCreated), 3);
    // The control plane reads the same figures from the counters, without touching the shard; every
    // pool address is listed, idle ones at zero.
    let published = sh.counters().ports_by_address();
    assert_eq!(published.len(), POOL.len());
    let mut nonzero: Vec<_> = published.into_iter().filter(|&(_, n)| n > 0).collect();
    nonzero.sort();
    assert_eq!(nonzero, want);
    sh.flush();
    assert!(
        sh.counters()
            .ports_by_address()
            .iter()
            .all(|&(_, n)| n == 0)
    );
}

// ---- State always drains ----

/// Every kind of state at once: EIF/ADF/APDF, blocks, deterministic, hairpins, inbound sessions.
fn everything() -> Shard {
    let rules = Rules::with_exclusions(
        vec![
            Pool::new("eif", vec![0xcb00_7101, 0xcb00_7102], 1024, 65535),
            Pool {
                filtering: Filtering::AddressDependent,
                allocation: PortAllocation::Blocks {
                    size: 256,
                    max_blocks: 4,
                },
                ..Pool::new("adf-blocks", vec![0xcb00_7110], 1024, 65535)
            },
            Pool {
                filtering: Filtering::AddressAndPortDependent,
                allocation: PortAllocation::Deterministic {
                    inside: Prefix::new(0x6440_0200, 24),
                    ports_per_subscriber: 0,
                },
                ..Pool::new("det", vec![0xcb00_7120], 1024, 65535)
            },
            Pool {
                allocation: PortAllocation::Parity,
                ..Pool::new("parity", vec![0xcb00_7130], 1024, 65535)
            },
        ],
        vec![
            SnatRule {
                prefix: 0x6440_0100,
                len: 24,
                pool: 1,
                dst: None,
            },
            SnatRule {
                prefix: 0x6440_0200,
                len: 24,
                pool: 2,
                dst: None,
            },
            SnatRule {
                prefix: 0x6440_0300,
                len: 24,
                pool: 3,
                dst: None,
            },
            subscribers_rule(0),
        ],
        vec![Exclusion {
            dst: Prefix::new(0x0a00_0000, 8),
            src: None,
        }],
    )
    .unwrap();
    Shard::new(
        ShardConfig {
            max_sessions: 4096,
            log_sessions: true,
            seed: 99,
            ..ShardConfig::default()
        },
        Arc::new(rules),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap()
}

fn assert_empty(sh: &Shard) {
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.mapping_count(), 0);
    assert_eq!(sh.held_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.blocks_in_use(), 0);
    assert_eq!(sh.subscriber_count(), 0);
    assert_eq!(
        sh.index_residue(),
        0,
        "index or hold-down entries left behind"
    );
    assert!(sh.ports_in_use_by_address().iter().all(|&(_, n)| n == 0));
    let c = sh.counters();
    for g in [
        Counter::SessionsCurrent,
        Counter::MappingsCurrent,
        Counter::PortsInUse,
        Counter::PortsHeld,
        Counter::BlocksInUse,
        Counter::SubscribersCurrent,
    ] {
        assert_eq!(c.get(g), 0, "{}", g.name());
    }
    assert_eq!(
        c.get(Counter::SessionsCreated),
        c.get(Counter::SessionsDeleted)
    );
    assert_eq!(
        c.get(Counter::MappingsCreated),
        c.get(Counter::MappingsDeleted)
    );
    assert_eq!(
        c.get(Counter::BlocksAllocated),
        c.get(Counter::BlocksReleased)
    );
}

#[test]
fn everything_drains_to_exactly_zero_after_the_timeouts() {
    let mut sh = everything();
    let subs: Vec<Ipv4Addr> = [0x6440_000b, 0x6440_0105, 0x6440_0207, 0x6440_0309]
        .into_iter()
        .map(ip)
        .collect();
    let mut outs = Vec::new();
    for (n, &s) in subs.iter().enumerate() {
        for i in 0..40u16 {
            let t = u32::from(i);
            let (_, o) = one(&mut sh, Dir::In2Out, udp(s, 1000 + i, SRV, 53, b"x"), t);
            outs.push(src_of(&o));
            let (_, o) = one(&mut sh, Dir::In2Out, tcp(s, 2000 + i, SRV, 80, F::SYN), t);
            let (oa, op) = src_of(&o);
            one(
                &mut sh,
                Dir::Out2In,
                tcp(SRV, 80, ip(oa), op, F::SYN | F::ACK),
                t,
            );
            if i % 3 == 0 {
                one(&mut sh, Dir::Out2In, tcp(SRV, 80, ip(oa), op, F::RST), t);
            }
            one(&mut sh, Dir::In2Out, icmp_echo(s, SRV, 8, 3000 + i), t);
            one(
                &mut sh,
                Dir::In2Out,
                udp(s, 1, Ipv4Addr::new(10, 0, 0, n as u8), 9, b"x"),
                t,
            );
        }
    }
    // Inbound openings and hairpins between every pair.
    for &(oa, op) in &outs {
        one(&mut sh, Dir::Out2In, udp(SRV, 54, ip(oa), op, b"x"), 50);
        for &s in &subs {
            one(&mut sh, Dir::In2Out, udp(s, 1000, ip(oa), op, b"x"), 50);
        }
    }
    assert!(sh.session_count() > 400, "{}", sh.session_count());
    assert!(sh.blocks_in_use() > 0);
    assert!(sh.counters().get(Counter::HairpinPackets) > 0);
    // Long after every timeout (established TCP: 7440 s) and the hold-down.
    tick(&mut sh, 51, 50 + 7440 + 130);
    assert_empty(&sh);
    let ev = drain(&mut sh);
    let created = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SessionCreated(_)))
        .count();
    let deleted = ev
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SessionDeleted(_)))
        .count();
    assert_eq!(created, deleted);
}

#[test]
fn flush_empties_everything_at_once() {
    let mut sh = everything();
    for i in 0..50u16 {
        one(
            &mut sh,
            Dir::In2Out,
            udp(ip(0x6440_0105), 100 + i, SRV, 53, b"x"),
            0,
        );
        one(&mut sh, Dir::In2Out, udp(SUB1, 100 + i, SRV, 53, b"x"), 0);
    }
    tick(&mut sh, 1, 400);
    one(&mut sh, Dir::In2Out, udp(SUB2, 1, SRV, 53, b"x"), 400);
    assert!(sh.held_count() > 0 && sh.session_count() == 1);
    assert_eq!(sh.flush(), 1);
    assert_empty(&sh);
}

#[test]
fn garbage_never_panics_and_leaves_nothing_behind() {
    let mut shards = [everything(), eif(), deterministic_shard(1, 2)];
    let mut rng = 0x1234_5678_9abc_def1u64;
    let seeds = [
        udp(SUB1, 1, SRV, 53, b"hello"),
        tcp(SUB1, 2, SRV, 80, F::SYN),
        icmp_echo(SUB1, SRV, 8, 3),
        udp(SRV, 53, ip(POOL[0]), 2000, b"in"),
        udp(ip(0x6440_0105), 7, ip(0xcb00_7110), 5000, b"hairpin"),
        tcp(ip(0x6440_0207), 9, Ipv4Addr::new(10, 9, 9, 9), 22, F::SYN),
        icmp_echo(SRV, ip(POOL[1]), 0, 1500),
    ];
    for round in 0..40_000usize {
        let sh = &mut shards[round % 3];
        let mut p = seeds[(round / 3) % seeds.len()].clone();
        for _ in 0..3 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % p.len() as u64) as usize;
            // Keep the IPv4 header checksum valid half of the time, so the mutations reach the
            // translator instead of all stopping at the checksum check.
            p[i] = (rng >> 32) as u8;
        }
        if round % 2 == 0 && p.len() >= 20 && p[0] == 0x45 {
            p[10..12].copy_from_slice(&[0, 0]);
            let ck = wire::checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&ck.to_be_bytes());
        }
        p.truncate((rng >> 40) as usize % (p.len() + 1));
        let dir = if round % 2 == 0 {
            Dir::In2Out
        } else {
            Dir::Out2In
        };
        one(sh, dir, p, (round / 100) as u32);
        if round % 1000 == 0 {
            sh.expire((round / 100) as u32, 64);
        }
    }
    for sh in &mut shards {
        assert!(
            sh.counters().get(Counter::SessionsCreated) > 0,
            "the garbage created no state"
        );
        tick(sh, 400, 400 + 7440 + 130);
        assert_empty(sh);
    }
}
