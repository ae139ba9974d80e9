//! The worker loop's rarer paths on a real DPDK lcore: frames waiting for a neighbour's ARP reply
//! (and, once it came, later bursts: their order and MACs, whole or with a frame of another fate
//! in the middle), ARP shared between workers, what a worker does with frames still waiting when it stops, a
//! handoff ring that is full, fragments handed to the worker owning their flow, and expiry of a large table by a worker that naps when idle.
//!
//! The ports are `net_ring` ports built from rings the test holds the other end of
//! ([`PortId::from_rings`]): the test enqueues frames where the worker's `rx_burst` finds them and
//! dequeues what its `tx_burst` sent. EAL runs in-process with `--no-huge` and its own file prefix;
//! DPDK allows one EAL per process, hence one test function walking through the cases.
//!
//! What an operator would see is checked: the order a flow's frames leave in, and that the drop
//! counters account for every frame exactly once.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dataplane::handoff::{self, Links};
use dataplane::local::{self, L3};
use dataplane::route::{Prefix, RouteTable};
use dataplane::{PortSetup, Worker, WorkerConfig};
use dpdk::lcore::{self, LcoreId};
use dpdk::{Eal, Mbuf, MbufBurst, MbufRing, Mempool, Port, PortConfig, PortId, SOCKET_ID_ANY};
use nat::{Counter, Counters, DropReason, Pool, Rules, Shard, ShardConfig, SnatRule};
use wire::{EthernetAddress, EthernetFrame, Ipv4Packet, UdpPacket, ethertype, ip_proto};

const INSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The inside router, a static neighbour: subscribers are behind it.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const ROUTER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The outside gateway, learnt by ARP: translated frames wait for it.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);
const POOL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SUBSCRIBER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 5);
/// Where the subscribers' datagrams go: routed via the outside gateway.
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// How long the worker gets to handle what the test enqueued (it polls continuously).
const SETTLE: Duration = Duration::from_millis(200);

/// Removes this test's DPDK runtime directory however the test ends.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A UDP datagram of one flow from the subscriber, its sequence number `tag` in the IP
/// identification and the first payload bytes.
fn udp_frame(pool: &Mempool, dst_mac: EthernetAddress, tag: u16) -> Mbuf {
    udp_frame_from(pool, dst_mac, SUBSCRIBER, tag)
}

/// [`udp_frame`] from subscriber `src`.
fn udp_frame_from(pool: &Mempool, dst_mac: EthernetAddress, src: Ipv4Addr, tag: u16) -> Mbuf {
    let mut udp = [0u8; 24];
    udp[8..10].copy_from_slice(&tag.to_be_bytes());
    let mut u = UdpPacket::new_unchecked(&mut udp[..]);
    u.set_src_port(20000);
    u.set_dst_port(10000);
    u.set_len(24);
    u.fill_checksum(src, REMOTE);
    ipv4_frame(pool, dst_mac, src, tag, (false, 0), &udp)
}

/// A frame from the inside router with an IPv4 packet from `src` to [`REMOTE`]: identification
/// `ident`, fragment fields `frag` (more fragments, offset in bytes), `payload` after the header
/// (padded to the 60-byte minimum frame).
fn ipv4_frame(
    pool: &Mempool,
    dst_mac: EthernetAddress,
    src: Ipv4Addr,
    ident: u16,
    frag: (bool, u16),
    payload: &[u8],
) -> Mbuf {
    let mut m = pool.alloc().expect("mbuf");
    let len = 20 + payload.len();
    let buf = m.append((L3 + len).max(60)).expect("room");
    buf.fill(0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(dst_mac);
    eth.set_src_addr(ROUTER_MAC);
    eth.set_ethertype(ethertype::IPV4);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[L3..L3 + len]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(len as u16);
    ip.set_ident(ident);
    ip.set_flags_and_frag(false, frag.0, frag.1);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(src);
    ip.set_dst_addr(REMOTE);
    ip.fill_checksum();
    ip.payload_mut().copy_from_slice(payload);
    m
}

/// Polls `cond` until it holds, for at most 5 s (the workers share a CPU with the test and with
/// whatever else runs on the machine); `what` names it if it never does.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn tag_of(m: &Mbuf) -> u16 {
    u16::from_be_bytes([m.data()[L3 + 28], m.data()[L3 + 29]])
}

fn drain(r: &MbufRing) -> Vec<Mbuf> {
    let mut out = Vec::new();
    let mut b = MbufBurst::<32>::new();
    while r.dequeue_burst(&mut b) > 0 {
        out.extend(b.drain(..));
    }
    out
}

fn put(r: &MbufRing, frames: Vec<Mbuf>) {
    let mut b = MbufBurst::<32>::new();
    for f in frames {
        assert!(b.push(f).is_ok(), "at most 32 frames at a time");
    }
    let n = b.len();
    assert_eq!(r.enqueue_burst(&mut b), n, "the ring has room");
}

/// Two `net_ring` ports (inside, outside) with `queues` queue pairs each.
struct Rig {
    /// Per queue, [inside, outside]: the test enqueues, the worker receives.
    rx: Vec<[Arc<MbufRing>; 2]>,
    /// Per queue, [inside, outside]: the worker transmits, the test dequeues.
    tx: Vec<[Arc<MbufRing>; 2]>,
    ports: Vec<Port>,
}

fn rig(tag: &str, queues: usize, pool: &Mempool) -> Rig {
    let ring = |n: String| Arc::new(MbufRing::new(&n, 1024, true, true).expect("ring"));
    let rx: Vec<_> = (0..queues)
        .map(|q| [ring(format!("{tag}ir{q}")), ring(format!("{tag}or{q}"))])
        .collect();
    let tx: Vec<_> = (0..queues)
        .map(|q| [ring(format!("{tag}it{q}")), ring(format!("{tag}ot{q}"))])
        .collect();
    let mut ports = Vec::new();
    for side in 0..2 {
        let r: Vec<&Arc<MbufRing>> = rx.iter().map(|x| &x[side]).collect();
        let t: Vec<&Arc<MbufRing>> = tx.iter().map(|x| &x[side]).collect();
        let id = PortId::from_rings(&format!("{tag}{side}"), &r, &t).expect("ring port");
        let conf = PortConfig {
            rx_queues: queues as u16,
            tx_queues: queues as u16,
            ..PortConfig::default()
        };
        let port = Port::configure(id, &conf, pool).expect("configure");
        port.start().expect("start");
        ports.push(port);
    }
    Rig { rx, tx, ports }
}

/// What [`worker`] may change from the defaults.
struct Tables {
    max_sessions: u32,
    udp_timeout: u32,
    idle_sleep: Duration,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            max_sessions: 4096,
            udp_timeout: nat::Timeouts::default().udp,
            idle_sleep: Duration::from_micros(200),
        }
    }
}

/// Worker `q` of `workers`, on queue `q` of both ports. The outside gateway is not a static
/// neighbour: its MAC is learnt by ARP.
fn worker(
    rig: &Rig,
    q: u16,
    workers: usize,
    links: Links,
    pool: &Arc<Mempool>,
    stop: &Arc<AtomicBool>,
    tables: Tables,
) -> (Worker, Arc<Counters>) {
    let setup = |p: &Port, addr, routes, statics| PortSetup {
        rx: p.rx_queue(q).expect("rx queue"),
        tx: p.tx_queue(q).expect("tx queue"),
        mac: EthernetAddress(p.mac_addr()),
        addr,
        mtu: 1500,
        routes,
        proxy_arp: Vec::new(),
        static_neighbours: statics,
    };
    let rules = Rules::new(
        vec![Pool::new("p", vec![u32::from(POOL_ADDR)], 1024, 65535)],
        vec![SnatRule {
            prefix: u32::from(Ipv4Addr::new(100, 64, 0, 0)),
            len: 10,
            pool: 0,
            dst: None,
        }],
    )
    .expect("rules");
    let counters = Arc::new(Counters::default());
    let shard = Shard::new(
        ShardConfig {
            max_sessions: tables.max_sessions,
            timeouts: nat::Timeouts {
                udp: tables.udp_timeout,
                ..nat::Timeouts::default()
            },
            worker: q,
            workers: workers as u16,
            event_ring: 0,
            ..ShardConfig::default()
        },
        Arc::new(rules),
        counters.clone(),
        0,
    )
    .expect("shard");
    let inside_routes = RouteTable::new(
        Prefix::new(INSIDE_ADDR, 24),
        None,
        &[(Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10), ROUTER)],
    );
    let outside_routes = RouteTable::new(Prefix::new(OUTSIDE_ADDR, 24), Some(GATEWAY), &[]);
    let cfg = WorkerConfig {
        inside: setup(
            &rig.ports[0],
            INSIDE_ADDR,
            inside_routes,
            vec![(ROUTER, ROUTER_MAC)],
        ),
        outside: setup(&rig.ports[1], OUTSIDE_ADDR, outside_routes, vec![]),
        neighbour_reachable_s: 3600,
        neighbour_retransmit_ms: 10_000,
        icmp_errors_per_s: 1000,
        refusal_icmp: false,
        worker: q as usize,
        workers,
        links,
        idle_sleep: tables.idle_sleep,
        idle_polls: 64,
        fragments: nat::FragConfig::default(),
        events: None,
        control: None,
        masquerade: false,
        panic_after: None,
    };
    (
        Worker::new(cfg, shard, pool.clone(), stop.clone()),
        counters,
    )
}

fn launch(lcore: u32, w: Worker) {
    lcore::launch(LcoreId(lcore), move || {
        w.run();
        0
    })
    .expect("launch");
}

/// Workers 0 and 1 of two, on queues 0 and 1 and lcores 1 and 2, joined by handoff rings;
/// their counters.
fn launch_two_workers(
    rig: &Rig,
    pool: &Arc<Mempool>,
    stop: &Arc<AtomicBool>,
) -> [Arc<Counters>; 2] {
    let mut links = handoff::mesh(2, 256).expect("mesh");
    let l1 = links.pop().expect("links 1");
    let l0 = links.pop().expect("links 0");
    let (w0, c0) = worker(rig, 0, 2, l0, pool, stop, Tables::default());
    let (w1, c1) = worker(rig, 1, 2, l1, pool, stop, Tables::default());
    launch(1, w0);
    launch(2, w1);
    [c0, c1]
}

fn all_drops(c: &Counters) -> u64 {
    DropReason::ALL.iter().map(|r| c.drops(*r)).sum()
}

#[test]
fn neighbour_waits_arp_sharing_and_stopping() {
    let prefix = format!("cgnat-neigh-stop-{}", std::process::id());
    let args = [
        "neighbours-and-stop",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--file-prefix",
        &prefix,
        "--log-level=*:warning",
        // Main lcore 0 is the test thread; two workers share the other CPU (they mostly idle).
        "--lcores",
        "0@0,1@1,2@1",
    ];
    let _run_dir = RunDir(Path::new("/var/run/dpdk").join(&prefix));
    let _eal = Eal::init(&args).expect("EAL init");
    let pool = Arc::new(
        Mempool::new_pktmbuf("nas_pool", 8191, 0, 2048 + dpdk::HEADROOM, SOCKET_ID_ANY)
            .expect("pool"),
    );

    frames_held_for_arp_leave_in_order(&pool);
    malformed_arp_is_counted_once_and_good_arp_is_shared(&pool);
    frames_waiting_at_stop_are_counted(&pool);
    a_full_handoff_ring_drops_and_counts(&pool);
    fragments_are_handed_to_their_owner(&pool);
    an_idle_worker_sweeps_a_large_table_on_time(&pool);
    assert_eq!(pool.in_use_count(), 0, "every mbuf went back to the pool");
}

/// A flow's frames that wait for the gateway's MAC leave, once it answers, in the order they came;
/// so do later bursts, whole or with a frame the translator gives another verdict.
fn frames_held_for_arp_leave_in_order(pool: &Arc<Mempool>) {
    let rig = rig("a", 1, pool);
    let stop = Arc::new(AtomicBool::new(false));
    let (w, counters) = worker(&rig, 0, 1, Links::none(), pool, &stop, Tables::default());
    launch(1, w);
    let in_mac = EthernetAddress(rig.ports[0].mac_addr());
    put(
        &rig.rx[0][0],
        (1..=6).map(|t| udp_frame(pool, in_mac, t)).collect(),
    );
    std::thread::sleep(SETTLE);
    answer_gateway_arp(&rig, pool);
    let out = drain(&rig.tx[0][1]);
    let tags: Vec<u16> = out.iter().map(tag_of).collect();
    assert_eq!(tags, vec![1, 2, 3, 4, 5, 6], "released in arrival order");
    let out_mac = EthernetAddress(rig.ports[1].mac_addr());
    let to_gateway = |m: &Mbuf| {
        EthernetFrame::new_checked(m.data()).map(|e| (e.dst_addr(), e.src_addr()))
            == Ok((GATEWAY_MAC, out_mac))
    };
    assert!(out.iter().all(to_gateway), "sent to the learnt MAC");
    assert_eq!(all_drops(&counters), 0, "nothing dropped");
    drop(out);

    // The gateway known, a burst of plain frames is translated and sent as it came in.
    put(
        &rig.rx[0][0],
        (7..=10).map(|t| udp_frame(pool, in_mac, t)).collect(),
    );
    std::thread::sleep(SETTLE);
    let out = drain(&rig.tx[0][1]);
    assert_eq!(
        out.iter().map(tag_of).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(out.iter().all(to_gateway), "addressed to the gateway");
    drop(out);
    // One frame of a burst has another fate (its TTL runs out here): the others still leave in
    // their order, and it gets its ICMP error.
    let burst: Vec<Mbuf> = (11..=16)
        .map(|t| {
            let mut m = udp_frame(pool, in_mac, t);
            if t == 13 {
                let mut ip = Ipv4Packet::new_unchecked(&mut m.data_mut()[L3..L3 + 44]);
                ip.set_ttl(1);
                ip.fill_checksum();
            }
            m
        })
        .collect();
    put(&rig.rx[0][0], burst);
    std::thread::sleep(SETTLE);
    let out = drain(&rig.tx[0][1]);
    let back = drain(&rig.tx[0][0]);
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    assert_eq!(
        out.iter().map(tag_of).collect::<Vec<_>>(),
        vec![11, 12, 14, 15, 16],
        "the rest in arrival order"
    );
    assert!(out.iter().all(to_gateway), "addressed to the gateway");
    assert_eq!(back.len(), 1, "one ICMP error towards the subscriber");
    let ip = Ipv4Packet::new_checked(&back[0].data()[L3..]).expect("IPv4");
    assert_eq!(
        (ip.protocol(), ip.dst_addr(), ip.payload()[0]),
        (ip_proto::ICMP, SUBSCRIBER, 11),
        "time exceeded, to the subscriber"
    );
    assert_eq!(counters.get(Counter::RxPackets), 6 + 1 + 4 + 6);
    assert_eq!(counters.drops(DropReason::TtlExceeded), 1);
    assert_eq!(all_drops(&counters), 1, "nothing else dropped");
}

/// Answers the one ARP request for the gateway that queue 0's worker sent, and gives the worker
/// time to release what waited for it.
fn answer_gateway_arp(rig: &Rig, pool: &Mempool) {
    answer_gateway_arp_on(rig, pool, 0);
}

/// [`answer_gateway_arp`] for queue `q`'s worker.
fn answer_gateway_arp_on(rig: &Rig, pool: &Mempool, q: usize) {
    let requests = drain(&rig.tx[q][1]);
    assert_eq!(requests.len(), 1, "one ARP request for the gateway");
    let mut reply = pool.alloc().expect("mbuf");
    reply
        .append(requests[0].len())
        .expect("room")
        .copy_from_slice(requests[0].data());
    local::arp_reply_in_place(reply.data_mut(), GATEWAY_MAC, GATEWAY);
    drop(requests);
    put(&rig.rx[q][1], vec![reply]);
    std::thread::sleep(SETTLE);
}

/// The two fragments of one UDP datagram from `src` (IP identification `ident`): the first with
/// the UDP header and 64 bytes of data, the second with the last 40.
fn udp_fragments(pool: &Mempool, dst_mac: EthernetAddress, src: Ipv4Addr, ident: u16) -> [Mbuf; 2] {
    let mut udp = [0u8; 8 + 104];
    for (i, b) in udp[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut u = UdpPacket::new_unchecked(&mut udp[..]);
    u.set_src_port(20001);
    u.set_dst_port(10000);
    u.set_len(112);
    u.fill_checksum(src, REMOTE);
    [
        ipv4_frame(pool, dst_mac, src, ident, (true, 0), &udp[..72]),
        ipv4_frame(pool, dst_mac, src, ident, (false, 72), &udp[72..]),
    ]
}

/// With two workers, the fragments of a datagram that reach the worker not owning its flow are
/// handed to the owner, the later one (which came first) once its first fragment told whose
/// flow it is; the owner translates both, and the far side can reassemble a datagram whose UDP
/// checksum holds for the translated addresses.
fn fragments_are_handed_to_their_owner(pool: &Arc<Mempool>) {
    let rig = rig("f", 2, pool);
    let in_mac = EthernetAddress(rig.ports[0].mac_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let [c0, c1] = launch_two_workers(&rig, pool, &stop);
    // SUBSCRIBER (odd) is worker 1's; its fragments arrive on worker 0's queue, later one first.
    let [first, later] = udp_fragments(pool, in_mac, SUBSCRIBER, 0x4242);
    put(&rig.rx[0][0], vec![later]);
    wait_for("the later fragment held until its first", || {
        c0.get(Counter::FragmentsHeld) == 1
    });
    put(&rig.rx[0][0], vec![first]);
    wait_for("worker 1's ARP request", || rig.tx[1][1].count() == 1);
    answer_gateway_arp_on(&rig, pool, 1);
    wait_for("both fragments", || rig.tx[1][1].count() == 2);
    let out = drain(&rig.tx[1][1]);
    let elsewhere = drain(&rig.tx[0][1]);
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    lcore::wait(LcoreId(2));
    assert!(elsewhere.is_empty(), "nothing left by worker 0");
    assert_eq!(c0.get(Counter::HandoffOut), 2, "both fragments handed over");
    assert_eq!(out.len(), 2, "both fragments left through their owner");
    let ips: Vec<Ipv4Packet<&[u8]>> = out
        .iter()
        .map(|m| Ipv4Packet::new_checked(&m.data()[L3..]).expect("IPv4"))
        .collect();
    assert_eq!(
        ips.iter()
            .map(|ip| (ip.src_addr(), ip.ident(), ip.frag_offset(), ip.more_frags()))
            .collect::<Vec<_>>(),
        vec![(POOL_ADDR, 0x4242, 0, true), (POOL_ADDR, 0x4242, 72, false)],
        "translated, first fragment first"
    );
    assert!(ips.iter().all(|ip| ip.verify_checksum()), "IPv4 checksums");
    let mut datagram = ips[0].payload().to_vec();
    datagram.extend_from_slice(ips[1].payload());
    let udp = UdpPacket::new_checked(&datagram[..]).expect("UDP");
    assert!(
        udp.verify_checksum(POOL_ADDR, REMOTE),
        "the reassembled datagram's UDP checksum holds after translation"
    );
    assert_eq!(c1.get(Counter::FragmentsTranslated), 2);
    let sum = |c: &dyn Fn(&Counters) -> u64| c(&c0) + c(&c1);
    assert_eq!(sum(&|c| all_drops(c)), 0, "nothing dropped");
}

/// A handoff ring that is full drops what does not fit, counted `handoff_full`, without holding
/// up the sender: its own flows in the same bursts still leave, in order.
fn a_full_handoff_ring_drops_and_counts(pool: &Arc<Mempool>) {
    let rig = rig("e", 2, pool);
    let in_mac = EthernetAddress(rig.ports[0].mac_addr());
    let stop = Arc::new(AtomicBool::new(false));
    // Eight slots towards worker 1, which the test plays and which never drains them.
    let mut links = handoff::mesh(2, 8).expect("mesh");
    let l1 = links.pop().expect("links 1");
    let l0 = links.pop().expect("links 0");
    let towards_1 = l1.from[0].clone();
    let (w, counters) = worker(&rig, 0, 2, l0, pool, &stop, Tables::default());
    launch(1, w);
    // With two workers, even subscriber addresses are worker 0's and odd ones (SUBSCRIBER)
    // worker 1's.
    let own = Ipv4Addr::new(100, 64, 0, 4);
    put(&rig.rx[0][0], vec![udp_frame_from(pool, in_mac, own, 0)]);
    wait_for("the ARP request", || rig.tx[0][1].count() == 1);
    answer_gateway_arp(&rig, pool);
    wait_for("the first frame", || rig.tx[0][1].count() == 1);
    drop(drain(&rig.tx[0][1]));

    // Two bursts of 16 frames for worker 1 interleaved with 16 of worker 0's own.
    for burst in 0..2u16 {
        put(
            &rig.rx[0][0],
            (0..32u16)
                .map(|i| {
                    let tag = 1 + burst * 32 + i;
                    let src = if i % 2 == 0 { SUBSCRIBER } else { own };
                    udp_frame_from(pool, in_mac, src, tag)
                })
                .collect(),
        );
        // Handed over or dropped (after the ARP copy), and the worker's own sent.
        let n = 16 * (u64::from(burst) + 1);
        wait_for("the burst", || {
            counters.get(Counter::HandoffOut) + counters.drops(DropReason::HandoffFull) == 1 + n
                && u64::from(rig.tx[0][1].count()) == n
        });
    }
    let out = drain(&rig.tx[0][1]);
    l1.stopped.fetch_add(1, Ordering::AcqRel);
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    assert_eq!(
        out.iter().map(tag_of).collect::<Vec<_>>(),
        (0..2u16)
            .flat_map(|b| (0..32u16)
                .filter(|i| i % 2 == 1)
                .map(move |i| 1 + b * 32 + i))
            .collect::<Vec<_>>(),
        "the worker's own flows leave, in order"
    );
    // The ring's first slot went to the copy of the gateway's ARP reply (shared with worker 1).
    let handed = drain(&towards_1);
    let ethertype = |m: &Mbuf| EthernetFrame::new_checked(m.data()).map(|e| e.ethertype());
    assert_eq!(handed.len(), 8, "the ring took what it holds");
    assert_eq!(ethertype(&handed[0]), Ok(ethertype::ARP), "the ARP copy");
    assert_eq!(
        handed[1..].iter().map(tag_of).collect::<Vec<_>>(),
        (0..7u16).map(|i| 1 + 2 * i).collect::<Vec<_>>(),
        "then the first burst's frames for worker 1, in order"
    );
    assert_eq!(counters.get(Counter::HandoffOut), 8);
    assert_eq!(
        counters.drops(DropReason::HandoffFull),
        32 - 7,
        "the rest dropped"
    );
    assert_eq!(all_drops(&counters), 32 - 7, "and counted once each");
}

/// With two workers, a malformed ARP frame is one drop, not one per worker; a good one reaches
/// the other worker, and a copy that cannot be delivered is not counted as a packet drop.
fn malformed_arp_is_counted_once_and_good_arp_is_shared(pool: &Arc<Mempool>) {
    let rig = rig("b", 2, pool);
    let stop = Arc::new(AtomicBool::new(false));
    let [c0, c1] = launch_two_workers(&rig, pool, &stop);

    let arp = |hlen: u8| {
        let mut m = pool.alloc().expect("mbuf");
        let b = m.append(60).expect("room");
        b.fill(0);
        local::arp_request(b, ROUTER_MAC, ROUTER, INSIDE_ADDR);
        b[L3 + 4] = hlen;
        m
    };
    // Hardware length 8: not Ethernet/IPv4 ARP.
    put(&rig.rx[0][0], vec![arp(8)]);
    std::thread::sleep(SETTLE);
    let sum = |c: &dyn Fn(&Counters) -> u64| c(&c0) + c(&c1);
    assert_eq!(sum(&|c| c.get(Counter::RxPackets)), 1);
    assert_eq!(
        sum(&|c| c.drops(DropReason::ArpMalformed)),
        1,
        "one malformed frame, one drop"
    );
    assert_eq!(sum(&|c| all_drops(c)), 1, "and no other drop");
    assert_eq!(sum(&|c| c.get(Counter::HandoffOut)), 0, "not copied");

    // A good request for our address: answered by the worker that got it, copied to the other.
    put(&rig.rx[0][0], vec![arp(6)]);
    std::thread::sleep(SETTLE);
    let replies = drain(&rig.tx[0][0]);
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    lcore::wait(LcoreId(2));
    assert_eq!(replies.len(), 1, "one ARP reply");
    assert_eq!(c0.get(Counter::ArpRepliesSent), 1);
    assert_eq!(c0.get(Counter::HandoffOut), 1, "one copy for worker 1");
    assert_eq!(c1.get(Counter::HandoffIn), 1, "worker 1 got it");
    assert_eq!(
        c1.get(Counter::ArpRepliesSent),
        0,
        "a copy is never answered"
    );
    assert_eq!(sum(&|c| c.get(Counter::ArpCopiesLost)), 0);
    assert_eq!(sum(&|c| all_drops(c)), 1, "still only the malformed frame");
}

/// Frames still waiting when a worker stops are freed and counted `shutdown`: for an ARP reply,
/// and in the handoff ring towards a worker that no longer polls.
fn frames_waiting_at_stop_are_counted(pool: &Arc<Mempool>) {
    let rig = rig("c", 2, pool);
    let in_mac = EthernetAddress(rig.ports[0].mac_addr());

    // Waiting for the gateway's MAC, which never comes.
    let stop = Arc::new(AtomicBool::new(false));
    let (w, counters) = worker(&rig, 0, 1, Links::none(), pool, &stop, Tables::default());
    launch(1, w);
    put(
        &rig.rx[0][0],
        (1..=4).map(|t| udp_frame(pool, in_mac, t)).collect(),
    );
    std::thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    assert_eq!(drain(&rig.tx[0][1]).len(), 1, "only the ARP request left");
    assert_eq!(counters.get(Counter::RxPackets), 4);
    assert_eq!(counters.drops(DropReason::Shutdown), 4);
    assert_eq!(all_drops(&counters), 4, "each frame counted once");

    // Worker 0 of 2 stops before it ever polls; worker 1 (played by the test) had handed it 3
    // frames and stops too. Worker 0 frees and counts them.
    let mut links = handoff::mesh(2, 256).expect("mesh");
    let l1 = links.pop().expect("links 1");
    let l0 = links.pop().expect("links 0");
    let towards_0 = l0.from[0].clone();
    put(
        &towards_0,
        (1..=3).map(|t| udp_frame(pool, in_mac, t)).collect(),
    );
    l1.stopped.fetch_add(1, Ordering::AcqRel);
    let stop = Arc::new(AtomicBool::new(true));
    let (w, counters) = worker(&rig, 0, 2, l0, pool, &stop, Tables::default());
    launch(1, w);
    lcore::wait(LcoreId(1));
    assert_eq!(counters.get(Counter::HandoffIn), 0, "never polled");
    assert_eq!(counters.drops(DropReason::Shutdown), 3);
    assert_eq!(all_drops(&counters), 3);
    assert_eq!(towards_0.count(), 0, "the ring was emptied");
}

/// A worker that naps when idle still ends an idle session of a large table on time: its sweeps
/// look at 256 slots per loop, so a pass over a million sessions and a million mappings takes
/// thousands of loops, and a worker napping 5 ms between them would need about 20 s for it.
fn an_idle_worker_sweeps_a_large_table_on_time(pool: &Arc<Mempool>) {
    let rig = rig("d", 1, pool);
    let in_mac = EthernetAddress(rig.ports[0].mac_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let tables = Tables {
        max_sessions: 1 << 20,
        udp_timeout: 1,
        idle_sleep: Duration::from_millis(5),
    };
    let (w, counters) = worker(&rig, 0, 1, Links::none(), pool, &stop, tables);
    launch(1, w);
    put(&rig.rx[0][0], vec![udp_frame(pool, in_mac, 1)]);
    let start = std::time::Instant::now();
    while counters.get(Counter::SessionsCreated) == 0 && start.elapsed() < SETTLE * 10 {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(counters.get(Counter::SessionsCreated), 1, "the flow opened");
    // Idle from here on: the 1 s timeout, plus up to a second to the tick the sweep sees it at,
    // plus the pass.
    while counters.get(Counter::SessionsCurrent) != 0 && start.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    lcore::wait(LcoreId(1));
    drop(drain(&rig.tx[0][1]));
    assert_eq!(
        counters.get(Counter::SessionsCurrent),
        0,
        "the idle session was still there after {took:?}"
    );
    assert_eq!(counters.get(Counter::SessionsDeleted), 1);
    assert!(
        counters.get(Counter::IdleSleeps) > 0,
        "the worker did nap while idle"
    );
}
