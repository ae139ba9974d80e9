//! Everything that needs a live EAL. DPDK allows one EAL per process, so
//! this is a single test that walks through the API in order, with
//! `--no-huge` (no hugepages, no root network setup) and two virtual
//! devices: `net_ring0` (TX loops back to RX through an rte_ring) and
//! `net_null0` (RX makes up packets, TX drops them), and `net_ring` ports
//! made at run time over rings the test holds the other ends of.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dpdk::lcore::{self, LcoreId};
use dpdk::{
    BURST, DEFAULT_DATA_ROOM, Eal, Error, HEADROOM, Mbuf, MbufBurst, MbufRing, Mempool, Port,
    PortConfig, PortId, SOCKET_ID_ANY,
};

/// An mbuf from `pool` whose data is `len` bytes, all equal to `tag`.
fn tagged(pool: &Mempool, tag: u8, len: usize) -> Mbuf {
    let mut m = pool.alloc().expect("pool has free mbufs");
    m.append(len).expect("fits in one segment").fill(tag);
    m
}

fn tags<const N: usize>(b: &MbufBurst<N>) -> Vec<u8> {
    b.iter().map(|m| m.data()[0]).collect()
}

#[test]
fn dpdk_api_against_virtual_devices() {
    let prefix = format!("cgnat-dpdk-test-{}", std::process::id());
    let args = [
        "dpdk-test",
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_ring0",
        "--vdev",
        "net_null0",
        "--log-level=*:warning",
        "-l",
        "0-1",
    ];
    let run_dir = RunDir(Path::new("/var/run/dpdk").join(&prefix));
    let eal = Eal::init(&args).expect("EAL init");
    assert!(dpdk::is_running());
    match Eal::init(&args) {
        Err(Error::Eal { code, .. }) => assert_eq!(code, libc::EALREADY),
        other => panic!("second init must fail, got {other:?}"),
    }
    assert!(
        dpdk::version().starts_with("DPDK 22.11"),
        "{}",
        dpdk::version()
    );

    lcores_and_time();
    let pool = Mempool::new_pktmbuf("test_pool", 1023, 32, DEFAULT_DATA_ROOM, SOCKET_ID_ANY)
        .expect("mempool");
    mempool_rules(&pool);
    mbuf_editing(&pool);
    multi_segment_truncate(&pool);
    burst_ownership(&pool);
    ring_port_loopback(&pool);
    null_port_and_runtime_vdev(&pool);
    mbuf_ring(&pool);
    ports_from_rings(&pool);
    launch_on_worker(&pool);

    assert_eq!(pool.in_use_count(), 0, "every mbuf went back to the pool");
    drop(pool);
    assert_eq!(dpdk::live_handles(), 0);
    eal.try_cleanup().expect("EAL cleanup");
    assert!(!dpdk::is_running());
    assert!(matches!(
        Mempool::new_pktmbuf("late", 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY),
        Err(Error::Eal { .. })
    ));

    // With --no-huge nothing backs memory with hugepage files, and cleanup
    // removes the runtime directory with its shared-config files.
    let left: Vec<String> = std::fs::read_dir(&run_dir.0)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "files left in {}: {left:?}",
        run_dir.0.display()
    );
    assert!(!run_dir.0.exists(), "{} still exists", run_dir.0.display());
}

/// Removes this test's DPDK runtime directory if the test fails before
/// EAL cleanup does it.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lcores_and_time() {
    assert_eq!(lcore::count(), 2);
    assert_eq!(lcore::main(), LcoreId(0));
    assert_eq!(lcore::workers(), vec![LcoreId(1)]);
    // The test thread called Eal::init, so it is the main lcore.
    assert_eq!(lcore::current(), Some(LcoreId(0)));
    assert!(dpdk::socket_id() >= 0);
    assert_eq!(LcoreId(1).socket_id(), Some(0));
    assert_eq!(LcoreId(7).socket_id(), None);

    let hz = dpdk::time::tsc_hz();
    assert!(hz > 100_000_000, "TSC calibrated to {hz} Hz");
    let t0 = dpdk::time::tsc();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let elapsed = dpdk::time::tsc() - t0;
    assert!(
        elapsed >= dpdk::time::ms_to_tsc(15),
        "{elapsed} cycles in 20 ms at {hz} Hz"
    );
}

fn mempool_rules(pool: &Mempool) {
    assert_eq!(pool.name(), "test_pool");
    assert_eq!(pool.capacity(), 1023);
    assert_eq!(pool.in_use_count(), 0);
    assert_eq!(pool.avail_count(), 1023);
    // Names are global.
    assert!(matches!(
        Mempool::new_pktmbuf("test_pool", 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY),
        Err(Error::Mempool(_))
    ));
    // Name limits as documented.
    let longest = Mempool::new_pktmbuf(&"p".repeat(25), 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY);
    assert!(longest.is_ok(), "{longest:?}");
    drop(longest);
    assert!(matches!(
        Mempool::new_pktmbuf(&"q".repeat(26), 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY),
        Err(Error::Mempool(_))
    ));
    assert!(MbufRing::new(&"r".repeat(28), 16, true, true).is_ok());
    assert!(MbufRing::new(&"s".repeat(29), 16, true, true).is_err());
    // DPDK caps the per-lcore cache at 512.
    assert!(matches!(
        Mempool::new_pktmbuf("big_cache", 4095, 1024, DEFAULT_DATA_ROOM, SOCKET_ID_ANY),
        Err(Error::Mempool(_))
    ));
    assert!(matches!(
        Mempool::new_pktmbuf("tiny", 63, 0, HEADROOM - 1, SOCKET_ID_ANY),
        Err(Error::InvalidArg(_))
    ));
    // A small pool runs dry and recovers when its mbufs are dropped.
    let small =
        Mempool::new_pktmbuf("small", 8, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY).expect("small pool");
    let held: Vec<Mbuf> = std::iter::from_fn(|| small.alloc()).collect();
    assert_eq!(held.len(), 8);
    assert!(small.alloc().is_none());
    assert_eq!(small.in_use_count(), 8);
    drop(held);
    assert_eq!(small.in_use_count(), 0);
}

fn mbuf_editing(pool: &Mempool) {
    let mut m = pool.alloc().expect("alloc");
    assert!(m.is_empty());
    assert_eq!(m.len(), 0);
    assert_eq!(m.nb_segs(), 1);
    assert!(m.is_contiguous());
    assert_eq!(m.headroom(), usize::from(HEADROOM));
    let room = usize::from(DEFAULT_DATA_ROOM - HEADROOM);
    assert_eq!(m.tailroom(), room);
    assert_eq!(pool.in_use_count(), 1);

    let payload: Vec<u8> = (0..100u8).collect();
    m.append(100).expect("append").copy_from_slice(&payload);
    assert_eq!(m.data(), &payload[..]);
    assert_eq!((m.len(), m.data_len()), (100, 100));
    assert_eq!(m.tailroom(), room - 100);

    // An Ethernet header in front of the payload.
    m.prepend(14).expect("prepend").fill(0xee);
    assert_eq!(m.len(), 114);
    assert_eq!(&m.data()[..14], &[0xee; 14]);
    assert_eq!(&m.data()[14..], &payload[..]);
    assert_eq!(m.headroom(), usize::from(HEADROOM) - 14);
    assert_eq!(m.as_ref(), m.data());

    m.data_mut()[14] = 0xaa;
    assert!(m.adj(14));
    assert_eq!(m.data()[0], 0xaa);
    assert!(m.trim(10));
    assert_eq!(m.len(), 90);
    assert_eq!(m.data()[89], 89);

    // Failed edits leave the packet alone.
    assert!(m.append(room).is_none());
    assert!(m.prepend(usize::from(HEADROOM) + 100).is_none());
    assert!(!m.adj(91));
    assert!(!m.trim(91));
    assert!(m.append(70_000).is_none());
    assert_eq!(m.len(), 90);

    m.truncate(200);
    assert_eq!(m.len(), 90);
    m.truncate(40);
    assert_eq!(m.len(), 40);
    assert_eq!(m.data()[39], 39);
    assert_eq!(m.rss_hash(), None);
    m.set_port(3);
    assert_eq!(m.port(), 3);
    m.prefetch_data();

    // into_raw/from_raw round-trip keeps ownership exact.
    let raw = m.into_raw();
    assert_eq!(pool.in_use_count(), 1);
    // SAFETY: raw came from into_raw above and nothing else refers to it.
    let mut m = unsafe { Mbuf::from_raw(raw) };
    m.reset();
    assert!(m.is_empty());
    assert_eq!(m.headroom(), usize::from(HEADROOM));
    drop(m);
    assert_eq!(pool.in_use_count(), 0);
}

fn multi_segment_truncate(pool: &Mempool) {
    // Three segments of 100, 50 and 30 bytes.
    let mut head = tagged(pool, 1, 100);
    for (tag, len) in [(2u8, 50usize), (3, 30)] {
        let seg = tagged(pool, tag, len);
        // SAFETY: both are owned, single-owner chains; on success the chain
        // takes `seg` over, so ownership is handed to `head` via into_raw.
        let rc =
            unsafe { dpdk::sys::rte_pktmbuf_chain(head.as_mut_ptr(), seg.into_raw().as_ptr()) };
        assert_eq!(rc, 0);
    }
    assert_eq!((head.len(), head.data_len(), head.nb_segs()), (180, 100, 3));
    assert!(!head.is_contiguous());
    assert_eq!(pool.in_use_count(), 3);

    // Cut inside the second segment: the third is freed.
    head.truncate(120);
    assert_eq!((head.len(), head.nb_segs()), (120, 2));
    assert_eq!(pool.in_use_count(), 2);
    // Cut exactly at the end of the first segment.
    head.truncate(100);
    assert_eq!((head.len(), head.nb_segs(), head.data_len()), (100, 1, 100));
    assert!(head.is_contiguous());
    assert_eq!(pool.in_use_count(), 1);
    drop(head);
    assert_eq!(pool.in_use_count(), 0);
}

fn burst_ownership(pool: &Mempool) {
    let mut b = MbufBurst::<8>::new();
    for tag in 0..8 {
        assert!(b.push(tagged(pool, tag, 60)).is_ok());
    }
    assert!(b.is_full());
    let extra = b
        .push(tagged(pool, 99, 60))
        .expect_err("full burst gives the mbuf back");
    assert_eq!(extra.data()[0], 99);
    drop(extra);
    assert_eq!(pool.in_use_count(), 8);
    assert_eq!(tags(&b), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(b[3].data()[0], 3);
    assert_eq!(b.get_mut(4).map(|m| m.data()[0]), Some(4));

    let last = b.pop().expect("pop");
    assert_eq!(last.data()[0], 7);
    drop(last);

    // Drain the middle: yields in order, the tail closes up.
    let drained: Vec<u8> = b.drain(2..5).map(|m| m.data()[0]).collect();
    assert_eq!(drained, vec![2, 3, 4]);
    assert_eq!(tags(&b), vec![0, 1, 5, 6]);
    assert_eq!(pool.in_use_count(), 4);

    // A partly consumed drain frees what it did not yield.
    {
        let mut d = b.drain(1..3);
        assert_eq!(d.next().map(|m| m.data()[0]), Some(1));
    }
    assert_eq!(tags(&b), vec![0, 6]);
    assert_eq!(pool.in_use_count(), 2);

    for tag in [10, 11, 12, 13] {
        assert!(b.push(tagged(pool, tag, 60)).is_ok());
    }
    b.retain_mut(|m| {
        m.data_mut()[1] = 0x55;
        m.data()[0] % 2 == 0
    });
    assert_eq!(tags(&b), vec![0, 6, 10, 12]);
    assert!(b.iter().all(|m| m.data()[1] == 0x55));
    assert_eq!(pool.in_use_count(), 4);
    b.as_mut_slice().reverse();
    assert_eq!(tags(&b), vec![12, 10, 6, 0]);
    b.truncate(1);
    assert_eq!(tags(&b), vec![12]);
    assert_eq!(pool.in_use_count(), 1);

    // Bulk allocation is all or nothing.
    assert!(pool.alloc_bulk(&mut b, 7));
    assert!(b.is_full());
    assert!(!pool.alloc_bulk(&mut b, 1));
    assert_eq!(pool.in_use_count(), 8);
    b.clear();
    assert!(b.is_empty());
    assert_eq!(pool.in_use_count(), 0);

    // Drop frees whatever is left.
    let mut b2 = MbufBurst::<BURST>::new();
    assert!(pool.alloc_bulk(&mut b2, 20));
    assert_eq!(pool.in_use_count(), 20);
    drop(b2);
    assert_eq!(pool.in_use_count(), 0);
}

fn ring_port_loopback(pool: &Mempool) {
    assert_eq!(PortId::count_avail(), 2);
    let ring_id = PortId::by_name("net_ring0").expect("net_ring0");
    let null_id = PortId::by_name("net_null0").expect("net_null0");
    assert_eq!(PortId::all(), vec![ring_id, null_id]);
    assert!(matches!(
        PortId::by_name("net_nope9"),
        Err(Error::NotFound(_))
    ));

    // Validation happens before the device is touched.
    let too_many = PortConfig {
        rx_queues: 64,
        ..PortConfig::default()
    };
    assert!(matches!(
        Port::configure(ring_id, &too_many, pool),
        Err(Error::InvalidArg(_))
    ));
    let jumbo = PortConfig {
        mtu: Some(9000),
        ..PortConfig::default()
    };
    assert!(matches!(
        Port::configure(ring_id, &jumbo, pool),
        Err(Error::InvalidArg(_))
    ));

    // Two RX queues with RSS requested: net_ring cannot hash, so RSS stays off.
    let conf = PortConfig {
        rx_queues: 2,
        tx_queues: 2,
        rx_desc: 512,
        tx_desc: 512,
        mtu: Some(1500),
        promiscuous: true,
        rss: true,
    };
    let port = Port::configure(ring_id, &conf, pool).expect("configure net_ring0");
    assert!(!port.rss_enabled());
    assert_eq!((port.rx_queues(), port.tx_queues()), (2, 2));
    assert!(matches!(
        Port::configure(ring_id, &conf, pool),
        Err(Error::InvalidArg(_))
    ));
    assert_eq!(port.id(), ring_id);
    assert_eq!(port.driver_name(), "net_ring");
    assert_eq!(port.name(), "net_ring0");
    assert_eq!(port.mac_addr().len(), 6);
    port.start().expect("start");
    let link = port.link();
    assert!(link.up, "{link:?}");
    assert!(link.speed_mbps > 0, "{link:?}");

    // net_ring has no rte_flow: steering is refused with a flow error (the data plane then falls
    // back to software handoff), and a rule for a queue the port lacks is refused up front.
    use dpdk::flow::{L4, Match, Steering};
    match Steering::inside(&port, 2) {
        Err(Error::Flow { op, .. }) => assert_eq!(op, "rte_flow_validate"),
        other => panic!(
            "expected a flow error, got {:?}",
            other.map(|s| s.rules.len())
        ),
    }
    assert!(matches!(
        Steering::outside(&port, 3, 6),
        Err(Error::InvalidArg(_))
    ));
    assert!(matches!(
        port.steer(
            Match::L4DstPort {
                proto: L4::Udp,
                value: 0,
                mask: 0x40
            },
            7
        ),
        Err(Error::InvalidArg(_))
    ));

    let mut rx = port.rx_queue(0).expect("rx queue 0");
    let mut tx = port.tx_queue(0).expect("tx queue 0");
    assert!(port.rx_queue(0).is_err(), "a queue is handed out once");
    assert!(port.tx_queue(2).is_err(), "only 2 TX queues");

    let mut out = MbufBurst::<BURST>::new();
    for i in 0..8u8 {
        let mut m = pool.alloc().expect("alloc");
        let len = 60 + usize::from(i);
        let d = m.append(len).expect("append");
        for (j, b) in d.iter_mut().enumerate() {
            *b = i.wrapping_mul(31).wrapping_add(j as u8);
        }
        assert!(out.push(m).is_ok());
    }
    let sent = tx.tx_burst(&mut out);
    assert_eq!(sent, 8);
    assert!(out.is_empty(), "sent mbufs leave the burst");

    let mut inb = MbufBurst::<BURST>::new();
    assert_eq!(rx.rx_burst(&mut inb), 8);
    for (i, m) in inb.iter().enumerate() {
        let i = i as u8;
        assert_eq!(m.len(), 60 + usize::from(i));
        assert!(
            m.data()
                .iter()
                .enumerate()
                .all(|(j, &b)| b == i.wrapping_mul(31).wrapping_add(j as u8))
        );
    }
    // Queue 1 is a different ring: nothing there.
    let mut rx1 = port.rx_queue(1).expect("rx queue 1");
    let mut empty = MbufBurst::<BURST>::new();
    assert_eq!(rx1.rx_burst(&mut empty), 0);

    // net_ring counts packets but not bytes.
    let stats = port.stats();
    assert_eq!((stats.opackets, stats.ipackets), (8, 8), "{stats:?}");
    assert_eq!((stats.ierrors, stats.oerrors, stats.rx_nombuf), (0, 0, 0));
    port.reset_stats();
    assert_eq!(port.stats().opackets, 0);

    // A full ring refuses the overflow; unsent mbufs stay in order. This
    // needs more mbufs than the shared pool has.
    let big_pool = Mempool::new_pktmbuf("big_pool", 2047, 0, 512, SOCKET_ID_ANY).expect("big pool");
    let mut big = MbufBurst::<1100>::new();
    for i in 0..1100u32 {
        assert!(big.push(tagged(&big_pool, (i % 251) as u8, 16)).is_ok());
    }
    let sent = tx.tx_burst(&mut big);
    assert!(sent < 1100, "net_ring's ring holds fewer than 1100");
    assert_eq!(big.len(), 1100 - sent);
    assert_eq!(big[0].data()[0], (sent % 251) as u8);
    big.clear();
    let mut drained = 0;
    loop {
        let mut b = MbufBurst::<BURST>::new();
        let n = rx.rx_burst(&mut b);
        if n == 0 {
            break;
        }
        drained += n;
    }
    assert_eq!(drained, sent);
    assert_eq!(big_pool.in_use_count(), 0);
    drop(big_pool);
    drop(inb);

    // Stop waits for the queues to be given back.
    match port.stop() {
        Err(Error::Port { code, .. }) => assert_eq!(code, -libc::EBUSY),
        other => panic!("stop with live queues must fail, got {other:?}"),
    }
    drop((rx, rx1));
    assert!(port.stop().is_err(), "the TX queue is still held");
    drop(tx);
    port.stop().expect("stop");
    port.start().expect("restart");
    port.close().expect("close");
    assert!(matches!(
        PortId::by_name("net_ring0"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(pool.in_use_count(), 0);
}

fn null_port_and_runtime_vdev(pool: &Mempool) {
    let null_id = PortId::by_name("net_null0").expect("net_null0");
    let port = Port::configure(null_id, &PortConfig::default(), pool).expect("configure net_null0");
    port.start().expect("start");
    let mut rx = port.rx_queue(0).expect("rx");
    let mut tx = port.tx_queue(0).expect("tx");
    let mut b = MbufBurst::<BURST>::new();
    // net_null makes up full bursts of 64-byte packets from our pool.
    assert_eq!(rx.rx_burst(&mut b), BURST);
    assert!(b.iter().all(|m| m.len() == 64));
    assert_eq!(rx.rx_burst(&mut b), 0, "no room left in the burst");
    assert_eq!(pool.in_use_count(), BURST as u32);
    assert_eq!(tx.tx_burst(&mut b), BURST);
    assert_eq!(pool.in_use_count(), 0, "net_null frees what it transmits");
    let s = port.stats();
    assert_eq!(
        (s.ipackets, s.opackets),
        (BURST as u64, BURST as u64),
        "{s:?}"
    );
    drop((rx, tx));
    // Dropping the last handle stops and closes the device.
    drop(port);
    assert!(matches!(
        PortId::by_name("net_null0"),
        Err(Error::NotFound(_))
    ));

    let id = PortId::create_vdev("net_null1", "size=128").expect("runtime vdev");
    assert_eq!(PortId::all(), vec![id]);
    // A port keeps its pool alive: net_null allocates from it on every receive burst and holds
    // no mbuf in between, so a pool freed when the caller's handle goes (no mbuf out) would be
    // used after free by the next burst.
    let own = Mempool::new_pktmbuf("own_pool", 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY)
        .expect("own pool");
    let port = Port::configure(id, &PortConfig::default(), &own).expect("configure net_null1");
    port.start().expect("start");
    let handles = dpdk::live_handles();
    drop(own);
    assert_eq!(
        dpdk::live_handles(),
        handles,
        "the running port still holds its pool"
    );
    let mut rx = port.rx_queue(0).expect("rx");
    let mut b = MbufBurst::<4>::new();
    assert_eq!(rx.rx_burst(&mut b), 4);
    assert!(b.iter().all(|m| m.len() == 128));
    drop(b);
    drop(rx);
    port.close().expect("close");
    assert_eq!(
        dpdk::live_handles(),
        handles - 2,
        "closing the port released it and freed its pool"
    );
}

fn mbuf_ring(pool: &Mempool) {
    let ring = MbufRing::new("test_ring", 100, true, true).expect("ring");
    assert_eq!(
        ring.capacity(),
        100,
        "exact size, not rounded to a power of two"
    );
    assert!(ring.is_empty());

    let mut b = MbufBurst::<128>::new();
    for i in 0..120u8 {
        assert!(b.push(tagged(pool, i, 8)).is_ok());
    }
    assert_eq!(ring.enqueue_burst(&mut b), 100);
    assert_eq!(ring.count(), 100);
    assert_eq!(
        tags(&b),
        (100..120).collect::<Vec<u8>>(),
        "the overflow stays, in order"
    );
    b.clear();

    let mut out = MbufBurst::<8>::new();
    assert_eq!(ring.dequeue_burst(&mut out), 8);
    assert_eq!(tags(&out), (0..8).collect::<Vec<u8>>());
    assert_eq!(ring.count(), 92);
    assert_eq!(ring.dequeue_burst(&mut out), 0, "no room in the burst");
    drop(out);
    assert_eq!(pool.in_use_count(), 92);
    // Dropping the ring frees what it still holds.
    drop(ring);
    assert_eq!(pool.in_use_count(), 0);

    // Multi-producer ring fed from two threads at once.
    let ring = MbufRing::new("test_mp_ring", 1024, false, true).expect("mp ring");
    std::thread::scope(|s| {
        for t in 0..2u8 {
            let ring = &ring;
            s.spawn(move || {
                for _ in 0..16 {
                    let mut b = MbufBurst::<16>::new();
                    for _ in 0..16 {
                        assert!(b.push(tagged(pool, t, 8)).is_ok());
                    }
                    assert_eq!(ring.enqueue_burst(&mut b), 16);
                }
            });
        }
    });
    assert_eq!(ring.count(), 512);
    let mut b = MbufBurst::<512>::new();
    assert_eq!(ring.dequeue_burst(&mut b), 512);
    assert_eq!(b.iter().filter(|m| m.data()[0] == 1).count(), 256);
    drop(b);
    drop(ring);
    assert_eq!(pool.in_use_count(), 0);
}

fn ports_from_rings(pool: &Mempool) {
    let ring = |name: &str| Arc::new(MbufRing::new(name, 64, true, true).expect("ring"));
    let (rx, tx) = (ring("fr_rx"), ring("fr_tx"));

    // Arguments DPDK would choke on are refused before it sees them.
    let mc = Arc::new(MbufRing::new("fr_mc", 64, false, false).expect("mp/mc ring"));
    assert!(matches!(
        PortId::from_rings("fr0", &[], &[&tx]),
        Err(Error::InvalidArg(_))
    ));
    let seventeen = vec![&mc; 17];
    assert!(matches!(
        PortId::from_rings("fr0", &seventeen, &[&mc]),
        Err(Error::InvalidArg(_))
    ));
    match PortId::from_rings(&"n".repeat(20), &[&rx], &[&tx]) {
        Err(Error::Eal { code, .. }) => assert_eq!(code, libc::ENAMETOOLONG),
        other => panic!("net_ring_<20 bytes> is too long for DPDK, got {other:?}"),
    }
    // A failed call gives back the ends it had taken: rx's consumer end is free again.
    let mut b = MbufBurst::<8>::new();
    assert!(b.push(tagged(pool, 1, 60)).is_ok());
    assert_eq!(rx.enqueue_burst(&mut b), 1);
    assert_eq!(rx.dequeue_burst(&mut b), 1);
    b.clear();

    let id = PortId::from_rings("fr0", &[&rx], &[&tx]).expect("from_rings");
    // Single-consumer RX and single-producer TX ends are the port's alone.
    match PortId::from_rings("fr1", &[&rx], &[&mc]) {
        Err(Error::InvalidArg(msg)) => assert!(msg.contains("RX ring 0"), "{msg}"),
        other => panic!("rx's consumer end is taken, got {other:?}"),
    }
    assert!(matches!(
        PortId::from_rings("fr1", &[&mc], &[&tx]),
        Err(Error::InvalidArg(_))
    ));
    assert!(
        matches!(
            PortId::from_rings("fr0", &[&mc], &[&mc]),
            Err(Error::InvalidArg(_))
        ),
        "the name is taken"
    );
    let port = Port::configure(id, &PortConfig::default(), pool).expect("configure");
    assert_eq!(port.name(), "net_ring_fr0");
    assert_eq!(port.driver_name(), "net_ring");
    port.start().expect("start");
    let mut rxq = port.rx_queue(0).expect("rx queue");
    let mut txq = port.tx_queue(0).expect("tx queue");

    // What the test enqueues on the RX ring is what rx_burst receives, in order.
    let mut b = MbufBurst::<BURST>::new();
    for tag in 0..8 {
        assert!(b.push(tagged(pool, tag, 60 + usize::from(tag))).is_ok());
    }
    assert_eq!(rx.enqueue_burst(&mut b), 8);
    assert_eq!(rx.count(), 8);
    let mut stolen = MbufBurst::<BURST>::new();
    assert_eq!(
        rx.dequeue_burst(&mut stolen),
        0,
        "the port is rx's consumer"
    );
    assert_eq!(rxq.rx_burst(&mut b), 8);
    assert_eq!(tags(&b), (0..8).collect::<Vec<u8>>());
    assert!(b.iter().enumerate().all(|(i, m)| m.len() == 60 + i));
    assert!(rx.is_empty());

    // What tx_burst sends lands on the TX ring, in order.
    assert_eq!(txq.tx_burst(&mut b), 8);
    assert!(b.is_empty());
    assert_eq!(tx.count(), 8);
    assert!(b.push(tagged(pool, 99, 60)).is_ok());
    assert_eq!(tx.enqueue_burst(&mut b), 0, "the port is tx's producer");
    b.clear();
    assert_eq!(tx.dequeue_burst(&mut b), 8);
    assert_eq!(tags(&b), (0..8).collect::<Vec<u8>>());
    assert!(b.iter().enumerate().all(|(i, m)| m.len() == 60 + i));
    b.clear();
    let stats = port.stats();
    assert_eq!((stats.ipackets, stats.opackets), (8, 8), "{stats:?}");

    // The port keeps its rings: the test's handle of rx may go first, with mbufs in the ring.
    for tag in 0..3 {
        assert!(b.push(tagged(pool, tag, 60)).is_ok());
    }
    assert_eq!(rx.enqueue_burst(&mut b), 3);
    let rx_left = Arc::downgrade(&rx);
    drop(rx);
    assert!(rx_left.upgrade().is_some(), "the port holds rx");
    assert_eq!(pool.in_use_count(), 3);
    drop((rxq, txq));
    port.close().expect("close");
    assert!(rx_left.upgrade().is_none(), "closing the port let go of rx");
    assert_eq!(pool.in_use_count(), 0, "rx was freed with its mbufs");
    // tx's producer end is the test's again, and the name can be used again.
    assert!(b.push(tagged(pool, 7, 60)).is_ok());
    assert_eq!(tx.enqueue_burst(&mut b), 1);
    assert_eq!(tx.dequeue_burst(&mut b), 1);
    b.clear();

    // One ring as both ends of a port: TX loops back to RX.
    let lo = ring("fr_lo");
    let id = PortId::from_rings("fr0", &[&lo], &[&lo]).expect("loopback");
    let port = Port::configure(id, &PortConfig::default(), pool).expect("configure");
    port.start().expect("start");
    let (mut rxq, mut txq) = (port.rx_queue(0).unwrap(), port.tx_queue(0).unwrap());
    for tag in 0..4 {
        assert!(b.push(tagged(pool, tag, 60)).is_ok());
    }
    assert_eq!(txq.tx_burst(&mut b), 4);
    assert_eq!(lo.count(), 4);
    assert_eq!(rxq.rx_burst(&mut b), 4);
    assert_eq!(tags(&b), vec![0, 1, 2, 3]);
    b.clear();
    drop((rxq, txq));
    port.close().expect("close");
    assert_eq!(
        Arc::strong_count(&lo),
        1,
        "the closed port let go of its ring"
    );
    drop((lo, tx, mc));
    assert_eq!(pool.in_use_count(), 0);
}

fn launch_on_worker(pool: &Mempool) {
    let worker = LcoreId(1);
    assert!(!lcore::is_busy(worker));
    lcore::launch(worker, || match lcore::current() {
        Some(LcoreId(1)) => 42,
        _ => -1,
    })
    .expect("launch");
    assert_eq!(lcore::wait(worker), 42);

    // A worker that owns an RX queue and a pool handle, as a data-plane core does.
    let null_id = PortId::create_vdev("net_null2", "").expect("vdev");
    let port = Port::configure(null_id, &PortConfig::default(), pool).expect("configure");
    port.start().expect("start");
    let mut rx = port.rx_queue(0).expect("rx");
    let before = dpdk::live_handles();
    lcore::launch(worker, move || {
        let mut total = 0;
        for _ in 0..10 {
            let mut b = MbufBurst::<BURST>::new();
            total += rx.rx_burst(&mut b);
        }
        total as i32
    })
    .expect("launch rx loop");
    assert_eq!(lcore::wait(worker), 10 * BURST as i32);
    assert_eq!(
        dpdk::live_handles(),
        before,
        "the job's token is released with it"
    );
    assert_eq!(port.stats().ipackets, 10 * BURST as u64);
    port.close().expect("close");

    assert!(matches!(
        lcore::launch(LcoreId(0), || 0),
        Err(Error::InvalidArg(_))
    ));
    assert!(matches!(
        lcore::launch(LcoreId(9), || 0),
        Err(Error::InvalidArg(_))
    ));
    lcore::launch(worker, || panic!("worker job panics on purpose")).expect("launch");
    assert_eq!(lcore::wait(worker), lcore::PANICKED);
    lcore::wait_all();
    assert_eq!(pool.in_use_count(), 0);
}
