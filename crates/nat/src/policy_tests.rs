//! Live policy changes on a running shard ([`Shard::set_policy`]): what operators do to a box in
//! service — add a pool and move subscribers to it, retire a pool, grow one, change timeouts — must
//! never disturb a flow that already exists.

use std::sync::Arc;

use crate::rewrite::testpkt::*;
use crate::shard::testkit::*;
use crate::{
    Counter, Counters, Dir, DnatTable, DropReason, NatError, Pool, PortAllocation, Rules, Shard,
    ShardConfig, Verdict,
};

const A: u32 = 0xcb00_7101; // 203.0.113.1
const B: u32 = 0xcb00_7109; // 203.0.113.9
const B2: u32 = 0xcb00_710a; // 203.0.113.10

fn pool(name: &str, addrs: &[u32]) -> Pool {
    Pool::new(name, addrs.to_vec(), 1024, 65535)
}

fn retired(p: Pool) -> Pool {
    Pool { retired: true, ..p }
}

fn vacant(name: &str) -> Pool {
    Pool {
        retired: true,
        ..Pool::new(name, Vec::new(), 1024, 65535)
    }
}

fn shard(pools: Vec<Pool>) -> Shard {
    Shard::new(
        ShardConfig {
            seed: 7,
            hold_down_s: 0,
            ..ShardConfig::default()
        },
        Arc::new(Rules::new(pools, vec![subscribers_rule(0)]).unwrap()),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap()
}

fn apply(sh: &mut Shard, pools: Vec<Pool>, rule_pool: usize) -> Result<(), NatError> {
    let rules = Rules::new(pools, vec![subscribers_rule(rule_pool)]).unwrap();
    let params = sh.policy_params();
    sh.set_policy(Arc::new(rules), params, Arc::new(DnatTable::empty()))
}

/// A UDP flow out and its reply back; returns the outside endpoint.
fn round_trip(sh: &mut Shard, sport: u16, now: u32) -> (u32, u16) {
    let (v, out) = one(sh, Dir::In2Out, udp(SUB1, sport, SRV, 53, b"q"), now);
    assert_eq!(v, Verdict::Forward);
    let (oa, op) = src_of(&out);
    let (v, back) = one(sh, Dir::Out2In, udp(SRV, 53, oa.into(), op, b"a"), now);
    assert_eq!(
        v,
        Verdict::Forward,
        "the reply to {oa:x}:{op} must get through"
    );
    assert_eq!(dst_of(&back), (u32::from(SUB1), sport));
    (oa, op)
}

#[test]
fn moving_subscribers_to_a_new_pool_keeps_existing_flows_on_the_old_one() {
    let mut sh = shard(vec![pool("old", &[A])]);
    let before = round_trip(&mut sh, 5000, 0);
    assert_eq!(before.0, A);
    apply(
        &mut sh,
        vec![retired(pool("old", &[A])), pool("new", &[B])],
        1,
    )
    .unwrap();
    // The existing flow keeps its outside endpoint, both ways.
    assert_eq!(round_trip(&mut sh, 5000, 1), before);
    // A new flow of the same subscriber takes the new pool.
    assert_eq!(round_trip(&mut sh, 5001, 1).0, B);
    assert_eq!(sh.counters().get(Counter::SessionsCreated), 2);
    let by_addr: Vec<(u32, u64)> = sh.counters().ports_by_address();
    assert_eq!(
        by_addr,
        vec![(A, 1), (B, 1)],
        "both addresses report their ports"
    );
}

#[test]
fn a_drained_pool_gives_its_address_back() {
    let mut sh = shard(vec![pool("old", &[A])]);
    round_trip(&mut sh, 5000, 0);
    apply(
        &mut sh,
        vec![retired(pool("old", &[A])), pool("new", &[B])],
        1,
    )
    .unwrap();
    assert!(
        sh.is_pool_address(A),
        "a retired pool still owns its address"
    );
    assert_eq!(sh.flush(), 1);
    assert_eq!(sh.ports_in_use(), 0);
    // Vacant slot 0: the address is dropped from the allocator and may join another pool.
    apply(&mut sh, vec![vacant("old"), pool("new", &[B])], 1).unwrap();
    assert!(!sh.is_pool_address(A));
    let (v, _) = one(&mut sh, Dir::Out2In, udp(SRV, 53, A.into(), 1500, b"x"), 2);
    assert!(
        matches!(v, Verdict::Drop(_)),
        "nothing answers on a dropped address"
    );
    apply(&mut sh, vec![pool("newer", &[A]), pool("new", &[B])], 0).unwrap();
    assert_eq!(round_trip(&mut sh, 5002, 3).0, A);
}

#[test]
fn a_slot_with_state_here_cannot_be_vacated_or_reused() {
    // The control plane vacates a slot only when all workers report no ports on it; if it ever got
    // that wrong, the shard refuses, keeping its rules, rather than let the slot's mappings and
    // subscriber records fall to another pool.
    let mut sh = shard(vec![pool("old", &[A])]);
    let before = round_trip(&mut sh, 5000, 0);
    // A pool in service cannot skip retirement.
    assert!(apply(&mut sh, vec![vacant("old"), pool("new", &[B])], 1).is_err());
    apply(
        &mut sh,
        vec![retired(pool("old", &[A])), pool("new", &[B])],
        1,
    )
    .unwrap();
    for premature in [
        vec![vacant("old"), pool("new", &[B])],
        vec![pool("other", &[B2]), pool("new", &[B])],
    ] {
        let err = apply(&mut sh, premature, 1).unwrap_err();
        assert!(matches!(err, NatError::PolicyChange(_)), "{err}");
    }
    assert_eq!(round_trip(&mut sh, 5000, 1), before);
    assert!(sh.rules().pools[0].retired && sh.rules().pools[0].addrs == [A]);
}

#[test]
fn a_drained_slot_reused_on_the_same_address_takes_the_new_layout() {
    // Delete a pool, let it drain, give its address to a pool with another port range in the same
    // slot: the address must be laid out afresh, not keep the old range's bitmap.
    let mut sh = shard(vec![pool("p", &[A])]);
    round_trip(&mut sh, 5000, 0);
    let rules = Rules::new(vec![retired(pool("p", &[A]))], vec![]).unwrap();
    let params = sh.policy_params();
    sh.set_policy(Arc::new(rules), params, Arc::new(DnatTable::empty()))
        .unwrap();
    sh.flush();
    let narrower = Pool {
        port_lo: 40000,
        port_hi: 40127,
        ..pool("q", &[A])
    };
    apply(&mut sh, vec![narrower], 0).unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 0..128u16 {
        let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 6000 + i, SRV, 53, b"q"), 2);
        assert_eq!(v, Verdict::Forward);
        let (a, p) = src_of(&out);
        assert_eq!(a, A);
        assert!(
            (40000..=40127).contains(&p),
            "port {p} outside the new range"
        );
        assert!(seen.insert(p), "port {p} handed out twice");
    }
    let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 7000, SRV, 53, b"q"), 2);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::OutOfPorts),
        "the new range holds 128 ports"
    );
}

#[test]
fn a_pool_can_grow_in_place() {
    let mut sh = shard(vec![pool("p", &[A])]);
    let before = round_trip(&mut sh, 5000, 0);
    apply(&mut sh, vec![pool("p", &[A, B, B2])], 0).unwrap();
    assert_eq!(round_trip(&mut sh, 5000, 1), before);
    assert!(sh.is_pool_address(B) && sh.is_pool_address(B2));
    // The subscriber keeps its paired address for its new flows (RFC 6888 REQ-2).
    assert_eq!(round_trip(&mut sh, 5001, 1).0, A);
    // A new subscriber may land on any of the three.
    let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB2, 6000, SRV, 53, b"q"), 1);
    assert_eq!(v, Verdict::Forward);
    assert!([A, B, B2].contains(&src_of(&out).0));
}

#[test]
fn a_pool_in_service_cannot_change_shape_and_nothing_changes() {
    let mut sh = shard(vec![pool("p", &[A, B])]);
    let before = round_trip(&mut sh, 5000, 0);
    for changed in [
        Pool::new("p", vec![A, B], 2048, 65535),
        Pool::new("p", vec![B], 1024, 65535),
        Pool {
            allocation: PortAllocation::Parity,
            ..pool("p", &[A, B])
        },
        pool("renamed", &[A, B]),
    ] {
        let err = apply(&mut sh, vec![changed], 0).unwrap_err();
        assert!(matches!(err, NatError::PolicyChange(_)), "{err}");
    }
    assert_eq!(round_trip(&mut sh, 5000, 1), before);
    assert_eq!(sh.rules().pools[0].port_lo, 1024);
}

#[test]
fn removing_the_last_rule_refuses_new_flows_only() {
    let mut sh = shard(vec![pool("p", &[A])]);
    let before = round_trip(&mut sh, 5000, 0);
    let rules = Rules::new(vec![retired(pool("p", &[A]))], vec![]).unwrap();
    let params = sh.policy_params();
    sh.set_policy(Arc::new(rules), params, Arc::new(DnatTable::empty()))
        .unwrap();
    assert_eq!(round_trip(&mut sh, 5000, 1), before);
    let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 5001, SRV, 53, b"q"), 1);
    assert_eq!(v, Verdict::Drop(DropReason::NoSnatRule));
}

#[test]
fn new_timeouts_and_limits_take_effect() {
    let mut sh = shard(vec![pool("p", &[A])]);
    let mut params = sh.policy_params();
    params.limits.max_sessions_per_subscriber = 1;
    params.timeouts.udp = 30;
    let rules = Arc::clone(sh.rules());
    sh.set_policy(
        Arc::new((*rules).clone()),
        params,
        Arc::new(DnatTable::empty()),
    )
    .unwrap();
    round_trip(&mut sh, 5000, 0);
    let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 5001, SRV, 53, b"q"), 0);
    assert_eq!(v, Verdict::Drop(DropReason::QuotaExceeded));
    tick(&mut sh, 1, 40);
    assert_eq!(sh.session_count(), 0, "the 30 s UDP timeout applies");
}

#[test]
fn a_retired_pool_cannot_take_rules() {
    let err = Rules::new(vec![retired(pool("p", &[A]))], vec![subscribers_rule(0)]).unwrap_err();
    assert!(matches!(err, NatError::UnknownPool { .. }), "{err}");
}

/// Rule 0 sends SUB2 to pool "b" (slot 1), rule 1 every other subscriber to "a" (slot 0).
fn two_rules() -> Rules {
    let sub2_rule = crate::SnatRule {
        prefix: u32::from(SUB2),
        len: 32,
        pool: 1,
        dst: None,
    };
    Rules::new(
        vec![pool("a", &[A]), pool("b", &[B])],
        vec![sub2_rule, subscribers_rule(0)],
    )
    .unwrap()
}

#[test]
fn each_snat_rule_counts_what_it_opened_and_refused() {
    // One session per subscriber.
    let rules = two_rules();
    let mut sh = Shard::new(
        ShardConfig {
            seed: 7,
            limits: crate::Limits {
                max_sessions_per_subscriber: 1,
                max_ports_per_subscriber: 0,
            },
            ..ShardConfig::default()
        },
        Arc::new(rules.clone()),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap();
    for (sub, sport) in [
        (SUB1, 1000),
        (SUB1, 1001),
        (SUB2, 2000),
        (SUB2, 2001),
        (SUB2, 2002),
    ] {
        one(&mut sh, Dir::In2Out, udp(sub, sport, SRV, 53, b"q"), 0);
    }
    assert_eq!(sh.counters().snat_rules(2), vec![(1, 2), (1, 1)]);
    // Packets of existing sessions are not rule hits.
    one(&mut sh, Dir::In2Out, udp(SUB1, 1000, SRV, 53, b"q"), 0);
    assert_eq!(sh.counters().snat_rules(2)[1], (1, 1));
    // The same rules again keep their counts; other rules start over.
    let params = sh.policy_params();
    sh.set_policy(
        Arc::new(rules.clone()),
        params,
        Arc::new(DnatTable::empty()),
    )
    .unwrap();
    assert_eq!(sh.counters().snat_rules(2), vec![(1, 2), (1, 1)]);
    let fewer = Rules::new(rules.pools.clone(), vec![subscribers_rule(0)]).unwrap();
    sh.set_policy(Arc::new(fewer), params, Arc::new(DnatTable::empty()))
        .unwrap();
    assert_eq!(sh.counters().snat_rules(2), vec![(0, 0), (0, 0)]);
}

#[test]
fn port_blocks_are_reported_per_address() {
    let blocks = Pool {
        allocation: PortAllocation::Blocks {
            size: 128,
            max_blocks: 2,
        },
        ..pool("blk", &[A])
    };
    let mut sh = shard(vec![blocks]);
    round_trip(&mut sh, 5000, 0);
    assert_eq!(sh.counters().blocks_by_address(), vec![(A, 1)]);
    assert_eq!(sh.counters().ports_by_address(), vec![(A, 1)]);
    sh.flush();
    assert_eq!(sh.counters().blocks_by_address(), vec![(A, 0)]);
    assert_eq!(sh.counters().ports_by_address(), vec![(A, 0)]);
}

#[test]
fn sessions_are_selected_by_the_snat_rule_in_force() {
    let rules = two_rules();
    let mut sh = Shard::new(
        ShardConfig {
            seed: 7,
            ..ShardConfig::default()
        },
        Arc::new(rules),
        Arc::new(Counters::default()),
        0,
    )
    .unwrap();
    for (sub, sport) in [(SUB1, 1000), (SUB1, 1001), (SUB2, 2000)] {
        one(&mut sh, Dir::In2Out, udp(sub, sport, SRV, 53, b"q"), 0);
    }
    let listed = |sh: &Shard, rule: u16| {
        let mut found = Vec::new();
        let filter = crate::SessionFilter {
            snat_rule: Some(rule),
            ..Default::default()
        };
        let mut cursor = Some(0);
        while let Some(c) = cursor {
            cursor = sh.scan_sessions(c, 1024, u32::MAX, &filter, |r| {
                found.push((r.session.in_addr, r.session.in_port))
            });
        }
        found.sort_unstable();
        found
    };
    assert_eq!(listed(&sh, 0), vec![(u32::from(SUB2), 2000)]);
    assert_eq!(
        listed(&sh, 1),
        vec![(u32::from(SUB1), 1000), (u32::from(SUB1), 1001)]
    );
    let filter = crate::SessionFilter {
        snat_rule: Some(1),
        ..Default::default()
    };
    let (_, deleted) = sh.delete_sessions(0, u32::MAX, &filter);
    assert_eq!(deleted, 2);
    assert_eq!(sh.session_count(), 1, "the other rule's session stays");
}
