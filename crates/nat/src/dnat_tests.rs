//! Destination NAT through the shard, over `Vec<u8>` packets: port forwarding with the client
//! address preserved, services and their schedulers, stickiness across rule changes (drain and cut),
//! full NAT, hairpin to a rule's address (also from the backend's own host), 1:1 and identity
//! mappings, and refusals.

use std::collections::HashMap;
use std::sync::Arc;

use crate::rewrite::testpkt::*;
use crate::shard::testkit::*;
use crate::{
    Backend, Counter, Dir, DnatIds, DnatRule, DnatTable, DropReason, OnRemoval, Scheduler,
    SessionFilter, Shard, ShardConfig, Verdict,
};
use wire::{Ipv4Addr, icmp_type, ip_proto, tcp_flags as F};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 100);
const STATIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const B1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 21);
const B2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 22);
const B3: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 23);

fn a(ip: Ipv4Addr) -> u32 {
    ip.into()
}

fn backend(ip: Ipv4Addr, port: u16, weight: u32) -> Backend {
    Backend {
        addr: a(ip),
        port,
        weight,
    }
}

fn service(name: &str, port: u16, backends: Vec<Backend>, scheduler: Scheduler) -> DnatRule {
    DnatRule {
        name: name.into(),
        addr: a(VIP),
        proto: Some(ip_proto::TCP),
        port,
        backends,
        scheduler,
        affinity_s: 0,
        snat_pool: None,
        on_removal: OnRemoval::Drain,
    }
}

fn three(scheduler: Scheduler) -> DnatRule {
    service(
        "web",
        80,
        vec![
            backend(B1, 8001, 1),
            backend(B2, 8002, 2),
            backend(B3, 8003, 3),
        ],
        scheduler,
    )
}

/// The control plane's side: ids kept across tables, like the daemon.
struct Plane {
    ids: DnatIds,
    generation: u64,
}

impl Plane {
    fn new() -> Plane {
        Plane {
            ids: DnatIds::default(),
            generation: 0,
        }
    }

    fn publish(&mut self, sh: &mut Shard, rules: Vec<DnatRule>) {
        self.generation += 1;
        let prev = Arc::clone(sh.dnat());
        let counters = Arc::clone(sh.dnat_counters());
        let live = |id: u32| counters.read(id).sessions_current > 0;
        let t = DnatTable::build(
            rules,
            sh.rules(),
            self.generation,
            Some(&prev),
            &mut self.ids,
            &live,
        )
        .unwrap();
        sh.set_dnat(Arc::new(t));
    }
}

fn dnat_shard(rules: Vec<DnatRule>) -> (Shard, Plane) {
    dnat_shard_with(rules, ShardConfig::default())
}

fn dnat_shard_with(rules: Vec<DnatRule>, cfg: ShardConfig) -> (Shard, Plane) {
    let mut sh = shard_of(vec![pool_with(1024, 65535)], cfg);
    let mut plane = Plane::new();
    plane.publish(&mut sh, rules);
    (sh, plane)
}

/// Counters of the rule's backend at `addr` summed with what the shard counts.
fn backend_counts(sh: &Shard, rule: &str, addr: Ipv4Addr) -> crate::BackendCounts {
    let t = sh.dnat();
    let e = t.rules().iter().find(|e| e.rule.name == rule).unwrap();
    let b = e
        .backends
        .iter()
        .find(|b| b.backend.addr == a(addr))
        .unwrap();
    sh.dnat_counters().read(b.id)
}

/// Open a TCP connection from `client`:`port` to VIP:`vport`; returns the backend endpoint it got.
fn connect(sh: &mut Shard, client: Ipv4Addr, port: u16, vport: u16, now: u32) -> (u32, u16) {
    let (v, pkt) = one(sh, Dir::Out2In, tcp(client, port, VIP, vport, F::SYN), now);
    assert_eq!(v, Verdict::Forward, "SYN from {client}:{port}");
    assert!(checksums_valid(&pkt));
    dst_of(&pkt)
}

#[test]
fn port_forwarding_preserves_the_client_and_translates_replies() {
    let rule = service(
        "fwd",
        8080,
        vec![backend(SUB1, 80, 1)],
        Scheduler::default(),
    );
    let (mut sh, _) = dnat_shard(vec![rule]);
    let (v, syn) = one(
        &mut sh,
        Dir::Out2In,
        tcp(CLIENT, 40000, VIP, 8080, F::SYN),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&syn));
    assert_eq!(dst_of(&syn), (a(SUB1), 80));
    assert_eq!(
        src_of(&syn),
        (a(CLIENT), 40000),
        "the server sees the real client"
    );
    assert_eq!(ttl_of(&syn), 63);
    let (v, synack) = one(
        &mut sh,
        Dir::In2Out,
        tcp(SUB1, 80, CLIENT, 40000, F::SYN | F::ACK),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&synack));
    assert_eq!(
        src_of(&synack),
        (a(VIP), 8080),
        "the reply comes from the forwarded port"
    );
    assert_eq!(dst_of(&synack), (a(CLIENT), 40000));
    let c = backend_counts(&sh, "fwd", SUB1);
    assert_eq!(
        (c.packets, c.sessions_created, c.sessions_current),
        (2, 1, 1)
    );
    assert_eq!(c.bytes, (syn.len() + synack.len()) as u64);
    // No mapping, no subscriber record, no port taken for it.
    assert_eq!(sh.mapping_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    // Another port of the address is not forwarded.
    let (v, _) = one(
        &mut sh,
        Dir::Out2In,
        tcp(CLIENT, 40001, VIP, 8081, F::SYN),
        0,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
    // Idle expiry removes it and the gauge follows.
    tick(&mut sh, 0, 8000);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(backend_counts(&sh, "fwd", SUB1).sessions_current, 0);
}

#[test]
fn udp_forwarding_is_refreshed_by_the_client() {
    let mut rule = service("dns", 5353, vec![backend(SUB1, 0, 1)], Scheduler::default());
    rule.proto = Some(ip_proto::UDP);
    let (mut sh, _) = dnat_shard(vec![rule]);
    let t = sh.config().timeouts.udp;
    let (v, q) = one(&mut sh, Dir::Out2In, udp(CLIENT, 5000, VIP, 5353, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(
        dst_of(&q),
        (a(SUB1), 5353),
        "port 0 keeps the client's port"
    );
    // The client keeps talking, the server never answers: the session lives on.
    for now in (t / 2..3 * t).step_by((t / 2) as usize) {
        let (v, _) = one(
            &mut sh,
            Dir::Out2In,
            udp(CLIENT, 5000, VIP, 5353, b"q"),
            now,
        );
        assert_eq!(v, Verdict::Forward);
        tick(&mut sh, now.saturating_sub(t / 2), now);
    }
    assert_eq!(sh.session_count(), 1);
}

#[test]
fn tcp_needs_a_syn_and_unknown_addresses_stay_unsolicited() {
    let (mut sh, _) = dnat_shard(vec![three(Scheduler::default())]);
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 1, VIP, 80, F::ACK), 0);
    assert_eq!(v, Verdict::Drop(DropReason::TcpInvalid));
    let other = Ipv4Addr::new(203, 0, 113, 99);
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 1, other, 80, F::SYN), 0);
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
}

#[test]
fn round_robin_is_exact_and_follows_the_weights() {
    let (mut sh, _) = dnat_shard(vec![three(Scheduler::RoundRobin)]);
    let mut got: HashMap<u32, u32> = HashMap::new();
    for i in 0..60 {
        let (b, _) = connect(&mut sh, CLIENT, 10000 + i, 80, 0);
        *got.entry(b).or_default() += 1;
    }
    assert_eq!(got[&a(B1)], 10);
    assert_eq!(got[&a(B2)], 20);
    assert_eq!(got[&a(B3)], 30);
    assert_eq!(backend_counts(&sh, "web", B3).sessions_created, 30);
}

#[test]
fn every_packet_of_a_flow_goes_to_its_first_backend() {
    for scheduler in [
        Scheduler::WeightedRandom,
        Scheduler::RoundRobin,
        Scheduler::Maglev,
    ] {
        let (mut sh, _) = dnat_shard(vec![three(scheduler)]);
        let first: Vec<(u32, u16)> = (0..50)
            .map(|i| connect(&mut sh, CLIENT, 20000 + i, 80, 0))
            .collect();
        for (i, want) in first.iter().enumerate() {
            let (v, pkt) = one(
                &mut sh,
                Dir::Out2In,
                tcp(CLIENT, 20000 + i as u16, VIP, 80, F::ACK),
                1,
            );
            assert_eq!(v, Verdict::Forward);
            assert_eq!(dst_of(&pkt), *want, "{scheduler:?}: flow {i} moved");
        }
    }
}

#[test]
fn removing_a_backend_drains_it_and_new_flows_avoid_it() {
    let (mut sh, mut plane) = dnat_shard(vec![three(Scheduler::WeightedRandom)]);
    let before: Vec<(u32, u16)> = (0..60)
        .map(|i| connect(&mut sh, CLIENT, 30000 + i, 80, 0))
        .collect();
    let on_b3 = before.iter().filter(|b| b.0 == a(B3)).count() as u64;
    assert!(on_b3 > 0);
    // B3 removed, B1 reweighted.
    let mut r = three(Scheduler::WeightedRandom);
    r.backends = vec![backend(B1, 8001, 5), backend(B2, 8002, 2)];
    plane.publish(&mut sh, vec![r]);
    // Existing flows, B3's included, keep their backend.
    for (i, want) in before.iter().enumerate() {
        let (v, pkt) = one(
            &mut sh,
            Dir::Out2In,
            tcp(CLIENT, 30000 + i as u16, VIP, 80, F::ACK),
            1,
        );
        assert_eq!(v, Verdict::Forward);
        assert_eq!(dst_of(&pkt), *want);
    }
    // B3 stays listed, retired, while its sessions drain; it gets no new flows.
    let t = Arc::clone(sh.dnat());
    let b3 = t.rules()[0]
        .backends
        .iter()
        .find(|b| b.backend.addr == a(B3))
        .copied()
        .unwrap();
    assert!(b3.retired && b3.backend.weight == 0);
    assert_eq!(sh.dnat_counters().read(b3.id).sessions_current, on_b3);
    for i in 0..200 {
        let (b, _) = connect(&mut sh, CLIENT, 40000 + i, 80, 2);
        assert_ne!(b, a(B3), "a new flow went to the removed backend");
    }
}

#[test]
fn cutting_a_backend_deletes_its_sessions() {
    let mut r = three(Scheduler::RoundRobin);
    r.on_removal = OnRemoval::Cut;
    let (mut sh, mut plane) = dnat_shard(vec![r.clone()]);
    for i in 0..6 {
        connect(&mut sh, CLIENT, 50000 + i, 80, 0);
    }
    r.backends.truncate(2);
    plane.publish(&mut sh, vec![r]);
    // What the control plane does for a cut backend: delete its sessions on every worker.
    let filter = SessionFilter {
        inside_addr: Some(a(B3)),
        inside_port: Some(8003),
        outside_addr: Some(a(VIP)),
        outside_port: Some(80),
        ..SessionFilter::default()
    };
    let (_, deleted) = sh.delete_sessions(0, u32::MAX, &filter);
    assert_eq!(deleted, 3);
    let t = Arc::clone(sh.dnat());
    let b3 = t.rules()[0]
        .backends
        .iter()
        .find(|b| b.backend.addr == a(B3))
        .copied()
        .unwrap();
    assert_eq!(sh.dnat_counters().read(b3.id).sessions_current, 0);
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 50005, VIP, 80, F::ACK), 1);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::TcpInvalid),
        "the cut flow is gone"
    );
}

#[test]
fn affinity_keeps_a_client_on_one_backend() {
    let mut r = three(Scheduler::WeightedRandom);
    r.affinity_s = 30;
    let (mut sh, _) = dnat_shard(vec![r]);
    let first = connect(&mut sh, CLIENT, 1000, 80, 0).0;
    for i in 1..40 {
        assert_eq!(connect(&mut sh, CLIENT, 1000 + i, 80, 10).0, first);
    }
}

#[test]
fn zero_weights_refuse_new_flows_with_a_reason() {
    let (mut sh, mut plane) = dnat_shard(vec![three(Scheduler::default())]);
    // A table whose only rule no longer exists keeps nothing for new flows: removed rules drain.
    connect(&mut sh, CLIENT, 1, 80, 0);
    plane.publish(&mut sh, Vec::new());
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 2, VIP, 80, F::SYN), 1);
    assert_eq!(v, Verdict::Drop(DropReason::NoBackend));
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 1, VIP, 80, F::ACK), 1);
    assert_eq!(v, Verdict::Forward, "the old flow still drains");
}

#[test]
fn full_nat_shows_the_backend_a_pool_address_and_brings_replies_back() {
    let mut r = service("full", 80, vec![backend(B3, 8003, 1)], Scheduler::default());
    r.snat_pool = Some(0);
    let (mut sh, _) = dnat_shard(vec![r]);
    let (v, syn) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 40000, VIP, 80, F::SYN), 0);
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&syn));
    assert_eq!(dst_of(&syn), (a(B3), 8003));
    let (sa, sp) = src_of(&syn);
    assert!(
        POOL.contains(&sa),
        "the backend sees a pool address, not the client"
    );
    let (v, synack) = one(
        &mut sh,
        Dir::In2Out,
        tcp(B3, 8003, Ipv4Addr::from(sa), sp, F::SYN | F::ACK),
        0,
    );
    assert_eq!(v, Verdict::Forward, "the reply leaves outside");
    assert!(checksums_valid(&synack));
    assert_eq!(src_of(&synack), (a(VIP), 80));
    assert_eq!(dst_of(&synack), (a(CLIENT), 40000));
    assert_eq!(ttl_of(&synack), 63);
    // The client's next segment takes the same endpoints.
    let (v, ack) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 40000, VIP, 80, F::ACK), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&ack), (sa, sp));
    assert_eq!(dst_of(&ack), (a(B3), 8003));
    assert_eq!(sh.session_count(), 2, "a client half and a backend half");
    // Expiry returns everything, the client's port included.
    tick(&mut sh, 0, 9000);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.index_residue(), 0);
}

#[test]
fn hairpin_to_a_rule_address_works_from_a_subscriber_and_from_the_backend_itself() {
    let rule = service(
        "fwd",
        8080,
        vec![backend(SUB1, 80, 1)],
        Scheduler::default(),
    );
    let (mut sh, _) = dnat_shard(vec![rule]);
    for (client, cport) in [(SUB2, 7000), (SUB1, 7001)] {
        let (v, syn) = one(
            &mut sh,
            Dir::In2Out,
            tcp(client, cport, VIP, 8080, F::SYN),
            0,
        );
        assert_eq!(v, Verdict::Hairpin, "from {client}");
        assert!(checksums_valid(&syn));
        assert_eq!(dst_of(&syn), (a(SUB1), 80));
        let (sa, sp) = src_of(&syn);
        assert!(
            POOL.contains(&sa),
            "the backend sees the client's outside endpoint"
        );
        assert_eq!(ttl_of(&syn), 63);
        let (v, synack) = one(
            &mut sh,
            Dir::In2Out,
            tcp(SUB1, 80, Ipv4Addr::from(sa), sp, F::SYN | F::ACK),
            0,
        );
        assert_eq!(v, Verdict::Hairpin);
        assert!(checksums_valid(&synack));
        assert_eq!(src_of(&synack), (a(VIP), 8080));
        assert_eq!(dst_of(&synack), (a(client), cport));
    }
    tick(&mut sh, 0, 9000);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.index_residue(), 0);
}

fn one_to_one(inside: Ipv4Addr) -> DnatRule {
    DnatRule {
        name: "host".into(),
        addr: a(STATIC),
        proto: None,
        port: 0,
        backends: vec![backend(inside, 0, 1)],
        scheduler: Scheduler::default(),
        affinity_s: 0,
        snat_pool: None,
        on_removal: OnRemoval::Drain,
    }
}

#[test]
fn one_to_one_maps_every_port_and_the_hosts_own_flows() {
    let (mut sh, _) = dnat_shard(vec![one_to_one(SUB2)]);
    // Inbound: any port, and ICMP echo.
    let (v, pkt) = one(
        &mut sh,
        Dir::Out2In,
        tcp(CLIENT, 1234, STATIC, 22, F::SYN),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&pkt), (a(SUB2), 22));
    let (v, ping) = one(
        &mut sh,
        Dir::Out2In,
        icmp_echo(CLIENT, STATIC, icmp_type::ECHO_REQUEST, 77),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&ping));
    let (v, pong) = one(
        &mut sh,
        Dir::In2Out,
        icmp_echo(SUB2, CLIENT, icmp_type::ECHO_REPLY, 77),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert!(checksums_valid(&pong));
    assert_eq!(src_of(&pong).0, a(STATIC));
    // Outbound: the host's new flows leave under its own address, ports unchanged, no pool port.
    let (v, out) = one(&mut sh, Dir::In2Out, udp(SUB2, 5555, SRV, 53, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&out), (a(STATIC), 5555));
    let (v, back) = one(&mut sh, Dir::Out2In, udp(SRV, 53, STATIC, 5555, b"a"), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&back), (a(SUB2), 5555));
    assert_eq!(sh.ports_in_use(), 0);
    // Other subscribers still use the pool.
    let (_, out) = one(&mut sh, Dir::In2Out, udp(SUB1, 5555, SRV, 53, b"q"), 0);
    assert!(POOL.contains(&src_of(&out).0));
}

#[test]
fn identity_mapping_passes_packets_unchanged_but_tracked() {
    let (mut sh, _) = dnat_shard(vec![DnatRule {
        addr: a(B1),
        ..one_to_one(B1)
    }]);
    let (v, pkt) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 1, B1, 443, F::SYN), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&pkt), (a(B1), 443));
    let (v, pkt) = one(
        &mut sh,
        Dir::In2Out,
        tcp(B1, 443, CLIENT, 1, F::SYN | F::ACK),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(src_of(&pkt), (a(B1), 443));
    assert_eq!(sh.session_count(), 1);
}

#[test]
fn a_backends_own_new_flow_goes_to_its_subscriber_owner() {
    // B1 = 100.64.0.21: odd, so worker 1 of 2 owns it as a subscriber.
    let rule = three(Scheduler::default());
    let cfg = ShardConfig {
        worker: 0,
        workers: 2,
        ..ShardConfig::default()
    };
    let (mut sh, _) = dnat_shard_with(vec![rule], cfg);
    // New or established (its session lives on its owner), UDP or TCP: all of it goes there.
    for pkt in [
        udp(B1, 5000, SRV, 53, b"q"),
        tcp(B1, 5001, SRV, 80, F::SYN),
        tcp(B1, 5001, SRV, 80, F::ACK),
    ] {
        let (v, _) = one(&mut sh, Dir::In2Out, pkt, 0);
        assert_eq!(
            v,
            Verdict::Handoff {
                worker: 1,
                dir: Dir::In2Out
            }
        );
    }
}

#[test]
fn overlapping_rules_are_refused_by_name() {
    let rules = crate::Rules::new(vec![pool_with(1024, 65535)], vec![subscribers_rule(0)]).unwrap();
    let mut ids = DnatIds::default();
    let build = |rs: Vec<DnatRule>, ids: &mut DnatIds| {
        DnatTable::build(rs, &rules, 1, None, ids, &|_| false).map(|_| ())
    };
    let e = build(
        vec![
            three(Scheduler::default()),
            service("again", 80, vec![backend(B1, 1, 1)], Scheduler::default()),
        ],
        &mut ids,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("\"web\"") && e.to_string().contains("\"again\""),
        "{e}"
    );
    let mut zero = three(Scheduler::default());
    zero.backends.iter_mut().for_each(|b| b.weight = 0);
    let e = build(vec![zero], &mut ids).unwrap_err();
    assert!(e.to_string().contains("zero total weight"), "{e}");
    let mut on_pool = three(Scheduler::default());
    on_pool.addr = POOL[0];
    on_pool.port = 8080;
    let e = build(vec![on_pool.clone()], &mut ids).unwrap_err();
    assert!(e.to_string().contains("pool"), "{e}");
    // Below the pool's port range it is fine: SNAT never hands those ports out.
    on_pool.port = 80;
    assert!(build(vec![on_pool], &mut ids).is_ok());
    let e = build(
        vec![
            one_to_one(SUB2),
            DnatRule {
                addr: a(STATIC),
                ..three(Scheduler::default())
            },
        ],
        &mut ids,
    )
    .unwrap_err();
    assert!(e.to_string().contains("every port"), "{e}");
}

#[test]
fn a_full_nat_clients_mapping_cannot_be_reached_from_outside() {
    let mut r = service("full", 80, vec![backend(B3, 8003, 1)], Scheduler::default());
    r.snat_pool = Some(0);
    let (mut sh, _) = dnat_shard(vec![r]);
    let (_, syn) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 40000, VIP, 80, F::SYN), 0);
    let (sa, sp) = src_of(&syn);
    // Somebody else sends to the client's pool endpoint (endpoint-independent filtering would
    // admit it for a subscriber's mapping).
    let (v, _) = one(
        &mut sh,
        Dir::Out2In,
        tcp(SRV, 1, Ipv4Addr::from(sa), sp, F::SYN),
        0,
    );
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
    assert_eq!(sh.session_count(), 2);
}

#[test]
fn a_full_nat_client_whose_backend_was_cut_opens_a_new_flow() {
    let mut r = service("full", 53, vec![backend(B3, 5353, 1)], Scheduler::default());
    r.proto = Some(ip_proto::UDP);
    r.snat_pool = Some(0);
    r.on_removal = OnRemoval::Cut;
    let (mut sh, mut plane) = dnat_shard(vec![r.clone()]);
    let (v, _) = one(&mut sh, Dir::Out2In, udp(CLIENT, 5000, VIP, 53, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    r.backends = vec![backend(B2, 5353, 1)];
    plane.publish(&mut sh, vec![r]);
    let filter = SessionFilter {
        inside_addr: Some(a(B3)),
        ..SessionFilter::default()
    };
    let (_, n) = sh.delete_sessions(0, u32::MAX, &filter);
    assert_eq!(
        n, 2,
        "the cut removes the backend half, and the client half with it"
    );
    assert_eq!(sh.session_count(), 0);
    // The client's next datagram, same source port: a fresh flow to the remaining backend.
    let (v, pkt) = one(&mut sh, Dir::Out2In, udp(CLIENT, 5000, VIP, 53, b"q"), 1);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&pkt), (a(B2), 5353));
    assert_eq!(sh.session_count(), 2);
}

#[test]
fn a_rule_on_a_pool_address_leaves_the_pools_own_ports_alone() {
    // Port 22 of a pool address is forwarded; every other port is still the pool's.
    let mut r = service("ssh", 22, vec![backend(B1, 22, 1)], Scheduler::default());
    r.addr = POOL[0];
    let cfg = ShardConfig {
        worker: 0,
        workers: 2,
        ..ShardConfig::default()
    };
    let (mut sh, _) = dnat_shard_with(vec![r], cfg);
    // A subscriber's hairpin to a pool port another worker owns is still handed over.
    let (v, _) = one(
        &mut sh,
        Dir::In2Out,
        udp(SUB2, 5000, Ipv4Addr::from(POOL[0]), 64 * 21, b"x"),
        0,
    );
    assert_eq!(
        v,
        Verdict::Handoff {
            worker: 1,
            dir: Dir::Out2In
        }
    );
}

#[test]
fn the_backend_half_of_a_hairpinned_udp_flow_becomes_established() {
    let mut rule = service("dns", 5353, vec![backend(SUB1, 0, 1)], Scheduler::default());
    rule.proto = Some(ip_proto::UDP);
    let (mut sh, _) = dnat_shard(vec![rule]);
    let (v, q) = one(&mut sh, Dir::In2Out, udp(SUB2, 6000, VIP, 5353, b"q"), 0);
    assert_eq!(v, Verdict::Hairpin);
    let (sa, sp) = src_of(&q);
    let (v, _) = one(
        &mut sh,
        Dir::In2Out,
        udp(SUB1, 5353, Ipv4Addr::from(sa), sp, b"a"),
        0,
    );
    assert_eq!(v, Verdict::Hairpin);
    assert!(
        sh.sessions()
            .all(|s| s.ct_state() == crate::CtState::Established),
        "both halves saw both directions"
    );
}

#[test]
fn a_finished_connection_gives_way_when_the_client_reuses_its_port_towards_another_rule() {
    // Two rules in front of the same backend, as a ClusterIP and a NodePort of one Service are.
    let b = vec![backend(B1, 8001, 1)];
    let (mut sh, _) = dnat_shard(vec![
        service("a", 80, b.clone(), Scheduler::default()),
        service("b", 81, b, Scheduler::default()),
    ]);
    connect(&mut sh, CLIENT, 4242, 80, 0);
    let (v, _) = one(
        &mut sh,
        Dir::In2Out,
        tcp(B1, 8001, CLIENT, 4242, F::SYN | F::ACK),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    // While the first connection is open, the same client port cannot reach the backend via b.
    let (v, _) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 4242, VIP, 81, F::SYN), 0);
    assert_eq!(v, Verdict::Drop(DropReason::DnatConflict));
    // Once it has closed both ways, it can.
    one(
        &mut sh,
        Dir::Out2In,
        tcp(CLIENT, 4242, VIP, 80, F::FIN | F::ACK),
        1,
    );
    one(
        &mut sh,
        Dir::In2Out,
        tcp(B1, 8001, CLIENT, 4242, F::FIN | F::ACK),
        1,
    );
    let (v, pkt) = one(&mut sh, Dir::Out2In, tcp(CLIENT, 4242, VIP, 81, F::SYN), 2);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&pkt), (a(B1), 8001));
    let (v, pkt) = one(
        &mut sh,
        Dir::In2Out,
        tcp(B1, 8001, CLIENT, 4242, F::SYN | F::ACK),
        2,
    );
    assert_eq!(v, Verdict::Forward);
    assert_eq!(
        src_of(&pkt),
        (a(VIP), 81),
        "the reply belongs to the new connection"
    );
    assert_eq!(sh.session_count(), 1);
}

/// A full-NAT UDP service `VIP:53 → B3:5353` whose clients take ports from one pool address with
/// 64 ports, so that a freed port is soon handed out again.
fn small_full_nat() -> Shard {
    let mut sh = shard_of(
        vec![crate::Pool::new("p", vec![POOL[0]], 1024, 1087)],
        ShardConfig::default(),
    );
    let mut r = service("dns", 53, vec![backend(B3, 5353, 1)], Scheduler::default());
    r.proto = Some(ip_proto::UDP);
    r.snat_pool = Some(0);
    Plane::new().publish(&mut sh, vec![r]);
    sh
}

/// A full-NAT flow from CLIENT:40000 that the backend has answered; the client's pool endpoint.
fn answered_full_nat_flow(sh: &mut Shard) -> (u32, u16) {
    let (v, q) = one(sh, Dir::Out2In, udp(CLIENT, 40000, VIP, 53, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    let (x, p) = src_of(&q);
    let (v, _) = one(
        sh,
        Dir::In2Out,
        udp(B3, 5353, Ipv4Addr::from(x), p, b"r"),
        0,
    );
    assert_eq!(v, Verdict::Forward);
    (x, p)
}

/// Subscriber SUB1 takes ports until it gets `want`.
fn take_port(sh: &mut Shard, want: (u32, u16), now: u32) {
    for p in 0..64u16 {
        let (v, o) = one(sh, Dir::In2Out, udp(SUB1, 2000 + p, SRV, 53, b"x"), now);
        assert_eq!(v, Verdict::Forward);
        if src_of(&o) == want {
            return;
        }
    }
    panic!("port {want:?} never handed out again");
}

#[test]
fn the_halves_of_a_full_nat_flow_are_deleted_together() {
    let mut sh = small_full_nat();
    let (_, q) = one(&mut sh, Dir::Out2In, udp(CLIENT, 40000, VIP, 53, b"q"), 0);
    let (x, p) = src_of(&q);
    assert_eq!(sh.session_count(), 2);
    // conntrack -D -s CLIENT selects only the client half; the backend half goes with it.
    let f = SessionFilter {
        inside_addr: Some(a(CLIENT)),
        ..SessionFilter::default()
    };
    assert_eq!(sh.delete_sessions(0, u32::MAX, &f).1, 2, "both halves");
    assert_eq!(sh.session_count(), 0);
    assert_eq!(backend_counts(&sh, "dns", B3).sessions_current, 0);
    assert_eq!(sh.held_count(), 1, "the client's port is held");
    // The backend keeps sending to the client's pool endpoint, past the hold-down, and the port
    // goes to subscriber SUB1: nothing reaches SUB1 under the rule's address.
    for t in (50..=250).step_by(50) {
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            udp(B3, 5353, Ipv4Addr::from(x), p, b"s"),
            t,
        );
        assert_ne!(v, Verdict::Forward, "t={t}: the client half is gone");
        tick(&mut sh, t - 49, t);
    }
    take_port(&mut sh, (x, p), 250);
    let (v, out) = one(
        &mut sh,
        Dir::In2Out,
        udp(B3, 5353, Ipv4Addr::from(x), p, b"for the client"),
        251,
    );
    assert!(
        v != Verdict::Hairpin || src_of(&out) != (a(VIP), 53),
        "SUB1 got the backend's datagram for the client as if from the service"
    );
}

#[test]
fn a_full_nat_flow_whose_halves_expire_in_one_batch_is_deleted_once() {
    let mut sh = small_full_nat();
    answered_full_nat_flow(&mut sh);
    for now in 1..300 {
        sh.expire(now, u32::MAX);
    }
    // Both halves are due at 300 and the sweep finds them in the same batch: the first one's
    // deletion takes the other along, which the batch then skips.
    assert_eq!(sh.expire(300, u32::MAX), 2);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.counters().get(crate::Counter::SessionsDeleted), 2);
    assert_eq!(sh.held_count(), 1, "the client's port is held");
    tick(&mut sh, 301, 300 + 121);
    assert_eq!((sh.held_count(), sh.ports_in_use()), (0, 0));
    assert_eq!(sh.index_residue(), 0, "nothing left behind");
}

#[test]
fn a_full_nat_flow_expires_whole_even_when_the_budget_splits_its_halves() {
    let mut sh = small_full_nat();
    answered_full_nat_flow(&mut sh);
    for now in 1..300 {
        sh.expire(now, u32::MAX);
    }
    // Both halves are due at 300; a budget of one slot looks at one of them at most.
    let mut calls = Vec::new();
    while sh.expiry_due(300) && sh.session_count() > 0 {
        calls.push(sh.expire(300, 1));
    }
    assert_eq!(sh.session_count(), 0);
    assert!(
        calls.iter().all(|&d| d == 0 || d == 2) && calls.contains(&2),
        "the other half went with the first: {calls:?}"
    );
    assert_eq!(sh.held_count(), 1, "the client's port is held");
    tick(&mut sh, 301, 300 + 121);
    assert_eq!((sh.held_count(), sh.ports_in_use()), (0, 0));
    assert_eq!(sh.index_residue(), 0, "nothing left behind");
}

#[test]
fn a_failed_full_nat_open_puts_a_revived_mapping_back_into_hold_down() {
    let mut sh = small_full_nat();
    let (x, p) = answered_full_nat_flow(&mut sh);
    // Both halves idle out at 300; the client's port X:P is held until 420.
    tick(&mut sh, 1, 301);
    assert_eq!((sh.session_count(), sh.held_count()), (0, 1));
    let until = held_until(&sh, x, p, ip_proto::UDP);
    assert!(until.is_some_and(|u| u >= 420), "{until:?}");
    // A late datagram of the backend to X:P: as a subscriber, B3 opens its own session to it
    // (refused at the held mapping, but the session stays).
    let (v, _) = one(
        &mut sh,
        Dir::In2Out,
        udp(B3, 5353, Ipv4Addr::from(x), p, b"late"),
        310,
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoSession));
    // The client is back from the same port: its held mapping is revived, and the new backend
    // half clashes with B3's session.
    let (v, _) = one(
        &mut sh,
        Dir::Out2In,
        udp(CLIENT, 40000, VIP, 53, b"q2"),
        320,
    );
    assert_eq!(v, Verdict::Drop(DropReason::DnatConflict));
    assert_eq!(sh.held_count(), 1, "X:P is held again, not freed");
    assert_eq!(
        held_until(&sh, x, p, ip_proto::UDP),
        until,
        "and until its hold-down would have ended: the failed flow never used it"
    );
    // Nobody else gets X:P before a full hold-down has passed.
    for p2 in 0..63u16 {
        let (v, o) = one(
            &mut sh,
            Dir::In2Out,
            udp(SUB1, 2000 + p2, SRV, 53, b"x"),
            321,
        );
        if v == Verdict::Forward {
            assert_ne!(src_of(&o), (x, p), "X:P handed out during its hold-down");
        }
    }
}

#[test]
fn a_subscriber_answering_a_rule_address_is_hairpinned_after_its_session_expired() {
    let mut r = service(
        "svc",
        5353,
        vec![backend(SUB1, 5353, 1)],
        Scheduler::default(),
    );
    r.proto = Some(ip_proto::UDP);
    let (mut sh, _) = dnat_shard(vec![r]);
    // SUB2:7000 asks the service once (hairpinned to SUB1) and keeps its mapping busy with
    // another flow from the same port.
    let (v, q) = one(
        &mut sh,
        Dir::In2Out,
        udp(SUB2, 7000, VIP, 5353, b"subscribe"),
        0,
    );
    assert_eq!(v, Verdict::Hairpin);
    let (x, p) = src_of(&q);
    // The backend streams to it for ten minutes: inbound UDP does not refresh, so SUB2's own
    // session to the rule expires and the stream reopens one on SUB2's mapping.
    for t in (20..=600).step_by(20) {
        let (v, _) = one(
            &mut sh,
            Dir::In2Out,
            udp(SUB1, 5353, Ipv4Addr::from(x), p, b"d"),
            t,
        );
        assert_eq!(v, Verdict::Hairpin, "t={t}");
        one(
            &mut sh,
            Dir::In2Out,
            udp(SUB2, 7000, SRV, 53, b"keepalive"),
            t,
        );
        tick(&mut sh, t - 19, t);
    }
    // SUB2 answers the service: back inside to the backend, as its first packet was.
    let (v, out) = one(
        &mut sh,
        Dir::In2Out,
        udp(SUB2, 7000, VIP, 5353, b"ack"),
        601,
    );
    assert_eq!(
        v,
        Verdict::Hairpin,
        "left outside towards {:?}",
        dst_of(&out)
    );
    assert_eq!(dst_of(&out), (a(SUB1), 5353));
}

#[test]
fn an_address_only_rule_cannot_translate_its_client_and_says_so() {
    let mut r = one_to_one(B3);
    r.snat_pool = Some(0);
    let sh = shard_of(vec![pool_with(1024, 65535)], ShardConfig::default());
    let Err(err) = DnatTable::build(
        vec![r],
        sh.rules(),
        1,
        None,
        &mut DnatIds::default(),
        &|_| false,
    ) else {
        panic!("an address-only rule with snat was accepted");
    };
    let msg = err.to_string();
    assert!(msg.contains("\"host\""), "names the rule: {msg}");
    assert!(msg.contains("address-only"), "says why: {msg}");
}

#[test]
fn a_subscriber_pinging_a_one_to_one_address_keeps_its_flow_across_echoes() {
    let (mut sh, _) = dnat_shard(vec![one_to_one(SUB1)]);
    let mut seen = None;
    let mut sessions = None;
    for round in 0..3u32 {
        let (v, ping) = one(
            &mut sh,
            Dir::In2Out,
            icmp_echo(SUB2, STATIC, icmp_type::ECHO_REQUEST, 77),
            round,
        );
        assert_eq!(v, Verdict::Hairpin, "echo {round}");
        assert!(checksums_valid(&ping));
        let (sa, id) = src_of(&ping);
        assert!(POOL.contains(&sa), "SUB1 sees SUB2's outside address");
        assert_eq!(dst_of(&ping).0, a(SUB1));
        if let Some(first) = seen {
            assert_eq!(
                (sa, id),
                first,
                "echo {round} keeps the first echo's endpoint"
            );
        }
        seen = Some((sa, id));
        let (v, pong) = one(
            &mut sh,
            Dir::In2Out,
            icmp_echo(SUB1, Ipv4Addr::from(sa), icmp_type::ECHO_REPLY, id),
            round,
        );
        assert_eq!(v, Verdict::Hairpin, "reply {round}");
        assert!(checksums_valid(&pong));
        assert_eq!(src_of(&pong), (a(STATIC), 77));
        assert_eq!(dst_of(&pong).0, a(SUB2));
        let n = sh.session_count();
        assert_eq!(
            *sessions.get_or_insert(n),
            n,
            "no new state after echo {round}"
        );
    }
    tick(&mut sh, 3, 9000);
    assert_eq!(sh.session_count(), 0);
    assert_eq!(sh.ports_in_use(), 0);
    assert_eq!(sh.index_residue(), 0);
}

#[test]
fn a_full_nat_flow_that_cannot_fit_is_refused_before_anything_is_made() {
    let cfg = ShardConfig {
        max_sessions: 5,
        ..ShardConfig::default()
    };
    let mut sh = shard_of(vec![pool_with(1024, 65535)], cfg);
    let mut rules = Vec::new();
    for (name, port, bport) in [("dns", 53, 5353), ("alt", 54, 5354)] {
        let mut r = service(
            name,
            port,
            vec![backend(B3, bport, 1)],
            Scheduler::default(),
        );
        r.proto = Some(ip_proto::UDP);
        r.snat_pool = Some(0);
        rules.push(r);
    }
    Plane::new().publish(&mut sh, rules);
    // A new client: its mapping, its client half and the backend half.
    let (v, _) = one(&mut sh, Dir::Out2In, udp(CLIENT, 40000, VIP, 53, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(sh.record_count(), 3);
    let c = sh.counters();
    let before = (
        c.get(Counter::MappingsCreated),
        c.get(Counter::SessionsCreated),
        c.get(Counter::SessionsDeleted),
    );
    // Two records left: another new client needs three and is refused untouched.
    let (v, _) = one(&mut sh, Dir::Out2In, udp(CLIENT, 40001, VIP, 53, b"q"), 0);
    assert_eq!(v, Verdict::Drop(DropReason::TableFull));
    let c = sh.counters();
    let after = (
        c.get(Counter::MappingsCreated),
        c.get(Counter::SessionsCreated),
        c.get(Counter::SessionsDeleted),
    );
    assert_eq!(after, before, "nothing was made and undone");
    assert_eq!(sh.record_count(), 3);
    // The first client's mapping is there already: its flow to the other rule needs two.
    let (v, pkt) = one(&mut sh, Dir::Out2In, udp(CLIENT, 40000, VIP, 54, b"q"), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(dst_of(&pkt), (a(B3), 5354));
    assert_eq!(sh.record_count(), 5);
}
