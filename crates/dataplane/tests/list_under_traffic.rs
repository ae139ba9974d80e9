//! Listing a million sessions must not stall forwarding: the real worker loop on a real DPDK lcore,
//! with a table of 1,000,000 UDP sessions, forwards a steady stream of packets of existing flows in
//! both directions while the control plane lists every session through the command and reply
//! queues, once with a reader that keeps up and once with one that stops reading for a while.
//!
//! The two ports are `net_ring` ports built from rings the test holds the other end of
//! ([`PortId::from_rings`]): the test enqueues frames where the worker's `rx_burst` finds them and
//! dequeues what its `tx_burst` sent. EAL runs in-process with `--no-huge` and its own file
//! prefix, so it shares nothing with another DPDK process on the machine. DPDK allows one EAL per
//! process, hence one test function.
//!
//! What an operator would see is checked: the listing is complete (every session once, with the
//! outside endpoint the wire shows), no stream packet is lost or left untranslated, no drop counter
//! moves, and the longest gap in forwarding while the listing runs is bounded. The machine is
//! small and shared (two cores, other builds and tests beside this one), so a gap is charged to
//! the worker only for the time it actually ran without forwarding (see [`Gaps`]); the raw gaps
//! are reported beside it, with a baseline of the stream alone.

#![forbid(unsafe_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dataplane::handoff::Links;
use dataplane::route::{Prefix, RouteTable};
use dataplane::{Command, Control, PortSetup, Reply, Worker, WorkerConfig};
use dpdk::lcore::{self, LcoreId};
use dpdk::{Eal, Mbuf, MbufBurst, MbufRing, Mempool, Port, PortConfig, PortId, SOCKET_ID_ANY};
use nat::{
    Counter, Counters, Limits, Pool, Rules, SessionFilter, SessionRecord, Shard, ShardConfig,
    SnatRule, Timeouts,
};
use wire::{EthernetAddress, EthernetFrame, Ipv4Packet, UdpPacket, ethertype, ip_proto};

/// Sessions in the table.
const SESSIONS: u32 = 1_000_000;
/// Subscribers and source ports each: 1000 endpoint-independent mappings of 1000 sessions.
const SUBSCRIBERS: u32 = 100;
const PORTS_PER_SUBSCRIBER: u32 = 10;
const MAPPINGS: u32 = SUBSCRIBERS * PORTS_PER_SUBSCRIBER;
/// Remote ports per remote address: session `i` talks to a remote endpoint of its own.
const REMOTE_PORTS: u32 = 50_000;
/// Long enough that nothing expires while the test runs (it needs well under a minute).
const UDP_TIMEOUT: u32 = 3600;

/// Depth of each of the four rings (RX and TX of both ports), as a deep NIC descriptor ring.
const RING: u32 = 8192;
/// Frames of the table fill in flight at most: below a TX ring's depth, so the worker's `tx_burst`
/// always finds room even when the test is slow to drain.
const FILL_WINDOW: u64 = 2048;
/// Sessions the stream runs over (spread over the table and the mappings).
const STREAM_FLOWS: u32 = 256;
/// Stream packets per second in each direction. An RX ring holds 82 ms of it, more than
/// `MAX_GAP`: a stall within the gap bound cannot overflow it, and one that does is caught twice,
/// as a gap and as loss.
const STREAM_PPS: u64 = 100_000;
/// Stream before and after a listing, so the listing's start and end are inside the measurement.
const MARGIN: Duration = Duration::from_millis(50);
/// The stream alone, before any listing.
const BASELINE: Duration = Duration::from_millis(200);
/// How long the slow reader stops reading (the listing is paused all that time).
const PAUSE: Duration = Duration::from_millis(500);
/// Records the slow reader takes before it stops reading.
const READ_BEFORE_PAUSE: u64 = 100_000;
/// Records read per pass of the test loop: the reader interleaves with sending and draining, as
/// the management plane's dispatcher runs beside the data plane.
const READ_BATCH: usize = 1024;
/// The reply queue of the daemon (`cgnatd` `sessions::REPLY_QUEUE`).
const REPLY_QUEUE: usize = 4096;

/// Longest gap the worker may leave between two stream packets coming out while a listing runs
/// ([`Gaps::worker`]: the test thread's own pauses and the worker's time off its core excluded).
///
/// A listing step walks at most 1024 slab slots (32 KiB) and pushes at most as many records:
/// tens of microseconds optimised, about a millisecond unoptimised. The loop polls both ports
/// between steps, so a listing alone delays a packet by about one step. The bound leaves room for
/// what the attribution cannot take off on a shared two-core machine (cache and TLB misses after
/// the scheduler ran something else on the core, time the test thread spends between packets of
/// one drain, clock granularity: a few milliseconds at worst in practice). It catches what the
/// issue is about: a worker that waits for reply room (the slow reader keeps the listing paused
/// for 500 ms) and any listing step long enough to hurt. It cannot tell a 1024-slot step from
/// one that walks the whole 1.1M-slot slab at once (a few milliseconds optimised, with a filter
/// that matches little): that difference is below what can be measured reliably here.
const MAX_GAP: Duration = Duration::from_millis(50);

/// Payload tag bit of stream packets; table-fill packets carry their session index instead.
const STREAM: u64 = 1 << 63;
/// Ethernet + IPv4 + UDP + 16 bytes of payload (tag, TSC at sending) = 58, padded to the
/// 60-byte minimum frame as a NIC delivers it: the translator must go by the IPv4 total length.
const FRAME_LEN: usize = 60;
const IP_LEN: u16 = 20 + 8 + 16;

const INSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The aggregation router the subscribers sit behind.
const INSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const ROUTER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
const SUBSCRIBER_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const GATEWAY_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0xfe]);
const POOL_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const REMOTE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// A UDP flow as the subscriber sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
}

fn mapping_of(i: u32) -> u32 {
    i % MAPPINGS
}

/// Session `i`: its subscriber and source port by mapping, its own remote endpoint.
fn session(i: u32) -> Flow {
    let m = mapping_of(i);
    Flow {
        src: Ipv4Addr::from(u32::from(SUBSCRIBER_NET) + 1 + m / PORTS_PER_SUBSCRIBER),
        sport: (20_000 + m % PORTS_PER_SUBSCRIBER) as u16,
        dst: Ipv4Addr::from(u32::from(REMOTE_NET) + i / REMOTE_PORTS),
        dport: (10_000 + i % REMOTE_PORTS) as u16,
    }
}

/// The session index a remote endpoint belongs to.
fn session_of_remote(addr: Ipv4Addr, port: u16) -> Option<u32> {
    let a = u32::from(addr).checked_sub(u32::from(REMOTE_NET))?;
    let p = u32::from(port).checked_sub(10_000)?;
    let i = a * REMOTE_PORTS + p;
    (p < REMOTE_PORTS && i < SESSIONS).then_some(i)
}

/// A frame to build: Ethernet addresses and the UDP flow.
struct Frame {
    dst_mac: EthernetAddress,
    src_mac: EthernetAddress,
    flow: Flow,
    tag: u64,
}

/// Write `f` into `buf` (`FRAME_LEN` bytes) with valid IPv4 and UDP checksums.
fn write_frame(buf: &mut [u8], f: &Frame) {
    buf.fill(0);
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_dst_addr(f.dst_mac);
    eth.set_src_addr(f.src_mac);
    eth.set_ethertype(ethertype::IPV4);
    let l3 = EthernetFrame::<&[u8]>::HEADER_LEN;
    let ip_end = l3 + usize::from(IP_LEN);
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[l3..ip_end]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(IP_LEN);
    ip.set_ident(f.tag as u16);
    ip.set_flags_and_frag(false, false, 0);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(f.flow.src);
    ip.set_dst_addr(f.flow.dst);
    ip.fill_checksum();
    let l4 = l3 + 20;
    buf[l4 + 8..l4 + 16].copy_from_slice(&f.tag.to_be_bytes());
    buf[l4 + 16..l4 + 24].copy_from_slice(&dpdk::time::tsc().to_be_bytes());
    let mut udp = UdpPacket::new_unchecked(&mut buf[l4..ip_end]);
    udp.set_src_port(f.flow.sport);
    udp.set_dst_port(f.flow.dport);
    udp.set_len(IP_LEN - 20);
    udp.fill_checksum(f.flow.src, f.flow.dst);
}

/// What came out of a port, parsed and checked for integrity.
struct Out {
    eth_src: EthernetAddress,
    eth_dst: EthernetAddress,
    flow: Flow,
    tag: u64,
    stamp: u64,
}

fn parse_out(m: &Mbuf) -> Out {
    let d = m.data();
    assert_eq!(d.len(), FRAME_LEN, "frames keep their length");
    let eth = EthernetFrame::new_checked(d).unwrap();
    assert_eq!(eth.ethertype(), ethertype::IPV4);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(
        ip.verify_checksum(),
        "IPv4 header checksum after translation"
    );
    assert_eq!(ip.ttl(), 63, "TTL decremented once");
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(
        udp.verify_checksum(ip.src_addr(), ip.dst_addr()),
        "UDP checksum after translation"
    );
    let p = udp.payload();
    Out {
        eth_src: eth.src_addr(),
        eth_dst: eth.dst_addr(),
        flow: Flow {
            src: ip.src_addr(),
            sport: udp.src_port(),
            dst: ip.dst_addr(),
            dport: udp.dst_port(),
        },
        tag: u64::from_be_bytes(p[0..8].try_into().unwrap()),
        stamp: u64::from_be_bytes(p[8..16].try_into().unwrap()),
    }
}

/// The test's ends of the four rings. Each port holds its two rings until it is closed and takes
/// the ends its queues use (the RX ring's consumer end, the TX ring's producer end), so the rings
/// cannot go while the worker polls them, and the test can only use the other ends.
struct Rings {
    /// Test → worker: the inside port's RX.
    in_rx: Arc<MbufRing>,
    /// Worker → test: the inside port's TX.
    in_tx: Arc<MbufRing>,
    out_rx: Arc<MbufRing>,
    out_tx: Arc<MbufRing>,
}

/// How far behind a reading of the worker's CPU time ([`WorkerThread::cpu`]) can be: one
/// scheduler tick, 4 ms at the CONFIG_HZ=250 of Debian's kernels (and of this machine's). A gap
/// is charged to the worker for up to the CPU time it had during the gap plus this, so the coarse
/// clock never lets it off more lightly than the CPU time it really had.
const CPU_TIME_LAG: Duration = Duration::from_millis(4);

/// The worker thread as the kernel accounts for it, read from `/proc/self/task/TID` (safe reads
/// of procfs, where a thread CPU-time clock would need `pthread_getcpuclockid` through FFI).
struct WorkerThread {
    tid: u32,
    /// `schedstat`, kept open: a read from offset 0 regenerates it (about a microsecond, so
    /// reading it for every drained burst costs the test loop little).
    schedstat: File,
}

impl WorkerThread {
    /// The kernel's id of the calling thread: `/proc/thread-self` links to `PID/task/TID`.
    fn current_tid() -> u32 {
        let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
        link.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("/proc/thread-self links to {}", link.display()))
    }

    fn open(tid: u32) -> WorkerThread {
        let path = format!("/proc/self/task/{tid}/schedstat");
        let schedstat = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        WorkerThread { tid, schedstat }
    }

    /// CPU time the worker thread has had so far: the first field of `schedstat`, the
    /// scheduler's `sum_exec_runtime` in nanoseconds. The kernel brings it up to date at each
    /// scheduler tick and context switch, not when it is read (the thread CPU-time clock of
    /// `clock_gettime` adds the time since), so while the worker runs a reading lags the truth by
    /// up to one tick, [`CPU_TIME_LAG`]: a resolution far below [`MAX_GAP`].
    fn cpu(&self) -> Duration {
        let mut buf = [0u8; 128];
        let n = self
            .schedstat
            .read_at(&mut buf, 0)
            .expect("the worker's schedstat");
        let ns = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|f| f.parse().ok())
            .expect("schedstat: on-CPU ns, waiting ns, timeslices");
        Duration::from_nanos(ns)
    }

    /// Times the worker thread gave up its core of its own accord (slept or blocked).
    fn blocked(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/self/task/{}/status", self.tid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("voluntary_ctxt_switches in /proc status")
    }
}

/// One listing as the control plane reads it.
struct Listing {
    id: u64,
    /// Per session index: listed already.
    listed: Vec<bool>,
    count: u64,
    done: Option<u64>,
    started: Instant,
    took: Duration,
}

impl Listing {
    fn new(id: u64) -> Listing {
        Listing {
            id,
            listed: vec![false; SESSIONS as usize],
            count: 0,
            done: None,
            started: Instant::now(),
            took: Duration::ZERO,
        }
    }
}

/// Stream bookkeeping. Sequence numbers run on across phases; gaps and latency are per phase.
#[derive(Default)]
struct Stream {
    sending: bool,
    next_due: Option<Instant>,
    sent: u64,
    lost: u64,
    received: u64,
    seen: Vec<bool>,
    /// When the last stream packet came out, and the worker's CPU time then.
    last_out: Option<(Instant, Duration)>,
    worst: Gaps,
    worst_latency_tsc: u64,
    /// When the current pass of the test loop began, and the longest pass since the last stream
    /// packet came out.
    last_pass: Option<Instant>,
    pass_in_gap: Duration,
    worst_pass: Duration,
}

/// The longest gaps between two stream packets coming out.
#[derive(Debug, Default, Clone, Copy)]
struct Gaps {
    /// As the test thread saw them.
    seen: Duration,
    /// The part of each the worker is answerable for. The machine has two cores and other work
    /// runs on them: while the test thread is descheduled or busy it neither sends nor drains, so
    /// the longest pass of its loop within a gap is taken off; and while the scheduler gives the
    /// worker's core to someone else the worker cannot forward, so a gap counts for no more than
    /// the CPU time the worker had during it. What is left is time the worker ran without
    /// forwarding: the stall a listing could cause.
    worker: Duration,
}

impl Gaps {
    fn max(self, o: Gaps) -> Gaps {
        Gaps {
            seen: self.seen.max(o.seen),
            worker: self.worker.max(o.worker),
        }
    }
}

struct Harness {
    rings: Rings,
    stop: Arc<AtomicBool>,
    pool: Arc<Mempool>,
    control: Arc<Control>,
    counters: Arc<Counters>,
    in_mac: EthernetAddress,
    out_mac: EthernetAddress,
    hz: u64,
    worker: WorkerThread,
    /// Per mapping: the outside port the wire showed for it during the fill (0: not yet).
    out_port: Vec<u16>,
    fill_received: u64,
    /// Session indexes the stream runs over.
    flows: Vec<u32>,
    stream: Stream,
}

/// Also runs when an assertion fails: the worker stops rather than spin on its core while the
/// failure is reported. Dropping the test's ends of the rings is harmless even if it does not
/// stop (stuck in a listing step): the ports keep the rings as long as the worker holds their
/// queues.
impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Harness {
    /// Open the million sessions, one frame each, and learn every mapping's outside port.
    fn fill(&mut self) {
        let t0 = Instant::now();
        let mut progress = (0, Instant::now());
        let mut next = 0u32;
        let mut burst = MbufBurst::<32>::new();
        while self.fill_received < u64::from(SESSIONS) {
            if burst.is_empty()
                && next < SESSIONS
                && u64::from(next) - self.fill_received < FILL_WINDOW
            {
                let n = (SESSIONS - next).min(32);
                assert!(
                    self.pool.alloc_bulk(&mut burst, n as usize),
                    "mbuf pool exhausted"
                );
                for (j, m) in burst.iter_mut().enumerate() {
                    let i = next + j as u32;
                    let frame = Frame {
                        dst_mac: self.in_mac,
                        src_mac: ROUTER_MAC,
                        flow: session(i),
                        tag: u64::from(i),
                    };
                    write_frame(m.append(FRAME_LEN).unwrap(), &frame);
                }
                next += n;
            }
            // Whatever the RX ring has no room for waits for the next pass: the fill is not the
            // measurement.
            self.rings.in_rx.enqueue_burst(&mut burst);
            self.drain();
            if self.fill_received != progress.0 {
                progress = (self.fill_received, Instant::now());
            }
            assert!(
                progress.1.elapsed() < Duration::from_secs(10),
                "fill stuck at {} of {SESSIONS} sessions; drops: {:?}",
                self.fill_received,
                nonzero_drops(&self.counters)
            );
        }
        eprintln!(
            "fill: {SESSIONS} sessions in {:.2} s ({:.0} k new flows/s)",
            t0.elapsed().as_secs_f64(),
            f64::from(SESSIONS) / t0.elapsed().as_secs_f64() / 1e3
        );
    }

    /// Dequeue everything both ports transmitted and check it.
    fn drain(&mut self) {
        for inside in [true, false] {
            loop {
                let mut b = MbufBurst::<64>::new();
                let ring = if inside {
                    &self.rings.in_tx
                } else {
                    &self.rings.out_tx
                };
                if ring.dequeue_burst(&mut b) == 0 {
                    break;
                }
                let (now, now_tsc) = (Instant::now(), dpdk::time::tsc());
                let cpu = self.worker.cpu();
                for m in b.iter() {
                    let out = parse_out(m);
                    if out.tag & STREAM == 0 {
                        assert!(!inside, "a fill frame came back inside: {:?}", out.flow);
                        self.check_fill(&out);
                    } else {
                        self.check_stream(inside, &out, now, now_tsc, cpu);
                    }
                }
            }
        }
    }

    fn check_fill(&mut self, out: &Out) {
        let i = out.tag as u32;
        let want = session(i);
        assert_eq!((out.eth_src, out.eth_dst), (self.out_mac, GATEWAY_MAC));
        assert_eq!(
            (out.flow.src, out.flow.dst, out.flow.dport),
            (POOL_ADDR, want.dst, want.dport),
            "session {i} translated to the pool address, remote untouched"
        );
        let m = mapping_of(i) as usize;
        if self.out_port[m] == 0 {
            self.out_port[m] = out.flow.sport;
        }
        assert_eq!(
            out.flow.sport, self.out_port[m],
            "session {i}: one outside port per mapping (endpoint-independent mapping)"
        );
        self.fill_received += 1;
    }

    fn check_stream(&mut self, inside: bool, out: &Out, now: Instant, now_tsc: u64, cpu: Duration) {
        let seq = out.tag & !STREAM;
        let i = self.flows[((seq >> 1) % u64::from(STREAM_FLOWS)) as usize];
        let want = session(i);
        let out_port = self.out_port[mapping_of(i) as usize];
        if seq & 1 == 0 {
            assert!(!inside, "stream packet {seq} (in2out) came out inside");
            assert_eq!((out.eth_src, out.eth_dst), (self.out_mac, GATEWAY_MAC));
            let translated = Flow {
                src: POOL_ADDR,
                sport: out_port,
                ..want
            };
            assert_eq!(out.flow, translated, "stream packet {seq} of session {i}");
        } else {
            assert!(inside, "stream packet {seq} (out2in) came out outside");
            assert_eq!((out.eth_src, out.eth_dst), (self.in_mac, ROUTER_MAC));
            let back = Flow {
                src: want.dst,
                sport: want.dport,
                dst: want.src,
                dport: want.sport,
            };
            assert_eq!(out.flow, back, "stream packet {seq} of session {i}");
        }
        let s = &mut self.stream;
        let seen = s
            .seen
            .get_mut(seq as usize)
            .expect("a stream packet that was sent");
        assert!(!*seen, "stream packet {seq} came out twice");
        *seen = true;
        s.received += 1;
        s.worst_latency_tsc = s.worst_latency_tsc.max(now_tsc.saturating_sub(out.stamp));
        if let Some((last, last_cpu)) = s.last_out {
            let gap = now - last;
            // The pass in progress counts too: the thread may have been descheduled in it.
            let own = s.pass_in_gap.max(now - s.last_pass.unwrap_or(now));
            let ran = cpu.saturating_sub(last_cpu) + CPU_TIME_LAG;
            s.worst = s.worst.max(Gaps {
                seen: gap,
                worker: gap.saturating_sub(own).min(ran),
            });
        }
        s.last_out = Some((now, cpu));
        s.pass_in_gap = Duration::ZERO;
    }

    /// Send the stream packets that are due, in both directions, and drain what came out.
    fn step(&mut self) {
        let now = Instant::now();
        let s = &mut self.stream;
        if let Some(last) = s.last_pass {
            s.pass_in_gap = s.pass_in_gap.max(now - last);
            s.worst_pass = s.worst_pass.max(now - last);
        }
        s.last_pass = Some(now);
        if self.stream.sending {
            self.send_due();
        }
        self.drain();
    }

    fn send_due(&mut self) {
        let interval = Duration::from_nanos(1_000_000_000 / (2 * STREAM_PPS));
        let now = Instant::now();
        let due = self.stream.next_due.get_or_insert(now);
        let mut n = 0;
        while *due <= now && n < 64 {
            *due += interval;
            n += 1;
        }
        if *due <= now {
            // Behind (a slow pass of the test loop): go on at the rate from now on rather than
            // catch up with a burst.
            *due = now;
        }
        let mut fresh = MbufBurst::<64>::new();
        assert!(self.pool.alloc_bulk(&mut fresh, n), "mbuf pool exhausted");
        // Named for the port the frames enter by.
        let mut to_inside = MbufBurst::<64>::new();
        let mut to_outside = MbufBurst::<64>::new();
        for mut m in fresh.drain(..) {
            let seq = self.stream.sent;
            self.stream.sent += 1;
            self.stream.seen.push(false);
            let i = self.flows[((seq >> 1) % u64::from(STREAM_FLOWS)) as usize];
            let f = session(i);
            let tag = STREAM | seq;
            let buf = m.append(FRAME_LEN).unwrap();
            if seq & 1 == 0 {
                let frame = Frame {
                    dst_mac: self.in_mac,
                    src_mac: ROUTER_MAC,
                    flow: f,
                    tag,
                };
                write_frame(buf, &frame);
                to_inside.push(m).unwrap();
            } else {
                // The remote's answer, to the outside endpoint the wire showed.
                let frame = Frame {
                    dst_mac: self.out_mac,
                    src_mac: GATEWAY_MAC,
                    flow: Flow {
                        src: f.dst,
                        sport: f.dport,
                        dst: POOL_ADDR,
                        dport: self.out_port[mapping_of(i) as usize],
                    },
                    tag,
                };
                write_frame(buf, &frame);
                to_outside.push(m).unwrap();
            }
        }
        self.rings.in_rx.enqueue_burst(&mut to_inside);
        self.rings.out_rx.enqueue_burst(&mut to_outside);
        // A frame the RX ring refuses is what a NIC drops when its descriptors are full.
        self.stream.lost += (to_inside.len() + to_outside.len()) as u64;
    }

    /// Start the stream and a phase's measurements; returns the totals it starts from.
    fn begin_phase(&mut self) -> (u64, u64, u64) {
        self.start_stream();
        (self.stream.sent, self.stream.received, self.stream.lost)
    }

    fn report(&self, name: &str, base: &(u64, u64, u64)) {
        let s = &self.stream;
        eprintln!(
            "{name}: stream {} sent, {} out, {} lost; worst gap {} (worst latency {:.2} ms, \
             longest test-loop pass {:.2} ms)",
            s.sent - base.0,
            s.received - base.1,
            s.lost - base.2,
            fmt_gaps(s.worst),
            self.ms(s.worst_latency_tsc),
            s.worst_pass.as_secs_f64() * 1e3
        );
    }

    fn start_stream(&mut self) {
        let s = &mut self.stream;
        s.sending = true;
        s.next_due = None;
        s.last_out = None;
        s.worst = Gaps::default();
        s.worst_latency_tsc = 0;
        s.last_pass = None;
        s.pass_in_gap = Duration::ZERO;
        s.worst_pass = Duration::ZERO;
    }

    fn run_for(&mut self, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            self.step();
        }
    }

    /// Stop sending and wait for every stream packet to come out (each is checked on the way).
    fn finish_stream(&mut self) {
        self.stream.sending = false;
        let t = Instant::now();
        while self.stream.received + self.stream.lost < self.stream.sent
            && t.elapsed() < Duration::from_secs(5)
        {
            self.drain();
        }
        let s = &self.stream;
        assert_eq!(
            s.lost,
            0,
            "stream packets lost to a full RX ring: the worker stopped polling (worst gap {})",
            fmt_gaps(s.worst)
        );
        assert_eq!(
            s.received,
            s.sent,
            "every stream packet comes out, translated ({} missing)",
            s.sent - s.received
        );
    }

    /// Read up to `max` replies of listing `l`.
    fn read_replies(&mut self, l: &mut Listing, max: usize) {
        for _ in 0..max {
            match self.control.replies.pop() {
                None => return,
                Some(Reply::Session { id, record }) => {
                    assert_eq!(id, l.id, "a record of another command");
                    self.check_record(l, &record);
                }
                Some(Reply::Done { id, count }) => {
                    assert_eq!(id, l.id, "the end of another command");
                    l.took = l.started.elapsed();
                    l.done = Some(count);
                    return;
                }
            }
        }
    }

    /// A listed session is one of the table's, listed once, as the wire showed it.
    fn check_record(&self, l: &mut Listing, r: &SessionRecord) {
        let s = r.session;
        let i = session_of_remote(Ipv4Addr::from(s.rem_addr), s.rem_port)
            .unwrap_or_else(|| panic!("a session nobody opened: {s:?}"));
        let want = session(i);
        assert_eq!(
            (
                s.proto,
                Ipv4Addr::from(s.in_addr),
                s.in_port,
                Ipv4Addr::from(s.out_addr),
                s.out_port
            ),
            (
                ip_proto::UDP,
                want.src,
                want.sport,
                POOL_ADDR,
                self.out_port[mapping_of(i) as usize]
            ),
            "listed session {i}"
        );
        assert_eq!(r.timeout, UDP_TIMEOUT);
        assert!(!l.listed[i as usize], "session {i} listed twice");
        l.listed[i as usize] = true;
        l.count += 1;
    }

    fn ms(&self, tsc: u64) -> f64 {
        tsc as f64 * 1e3 / self.hz as f64
    }
}

fn fmt_gaps(g: Gaps) -> String {
    format!(
        "{:.2} ms seen, {:.2} ms the worker's",
        g.seen.as_secs_f64() * 1e3,
        g.worker.as_secs_f64() * 1e3
    )
}

fn nonzero_drops(c: &Counters) -> Vec<(&'static str, u64)> {
    c.snapshot_drops()
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect()
}

/// Removes this test's DPDK runtime directory if the test fails before EAL cleanup does it.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn port_setup(
    port: &Port,
    addr: Ipv4Addr,
    routes: RouteTable,
    neighbour: (Ipv4Addr, EthernetAddress),
) -> PortSetup {
    PortSetup {
        rx: port.rx_queue(0).unwrap(),
        tx: port.tx_queue(0).unwrap(),
        mac: EthernetAddress(port.mac_addr()),
        addr,
        mtu: 1500,
        routes,
        proxy_arp: Vec::new(),
        // Static next hops: no ARP on either side, so every frame the test sees is traffic.
        static_neighbours: vec![neighbour],
    }
}

#[test]
fn listing_a_million_sessions_does_not_stall_forwarding() {
    let prefix = format!("cgnat-list-traffic-{}", std::process::id());
    let args = [
        "list-under-traffic",
        "--no-huge",
        "-m",
        "128",
        "--no-pci",
        "--file-prefix",
        &prefix,
        "--log-level=*:warning",
        // Main lcore 0 is the test thread (traffic and the control plane's reader), lcore 1 the
        // worker, each pinned to a core of its own.
        "-l",
        "0-1",
    ];
    let run_dir = RunDir(Path::new("/var/run/dpdk").join(&prefix));
    let eal = Eal::init(&args).expect("EAL init");
    let t_start = Instant::now();

    // Small buffers (every frame is 60 bytes), enough for all four rings full at once: 26 MB.
    let pool = Arc::new(
        Mempool::new_pktmbuf(
            "lut_mbufs",
            4 * RING + 8191,
            256,
            256 + dpdk::HEADROOM,
            SOCKET_ID_ANY,
        )
        .unwrap(),
    );
    let ring = |name: &str| Arc::new(MbufRing::new(name, RING, true, true).unwrap());
    let rings = Rings {
        in_rx: ring("lut_in_rx"),
        in_tx: ring("lut_in_tx"),
        out_rx: ring("lut_out_rx"),
        out_tx: ring("lut_out_tx"),
    };
    let mut ports = Vec::new();
    for (name, rx, tx) in [
        ("inside", &rings.in_rx, &rings.in_tx),
        ("outside", &rings.out_rx, &rings.out_tx),
    ] {
        let id = PortId::from_rings(name, &[rx], &[tx]).unwrap();
        let port = Port::configure(id, &PortConfig::default(), &pool).unwrap();
        port.start().unwrap();
        ports.push(port);
    }
    let (inside, outside) = (&ports[0], &ports[1]);

    let rules = Rules::new(
        vec![Pool::new("lut", vec![u32::from(POOL_ADDR)], 1024, 65535)],
        vec![SnatRule {
            prefix: u32::from(SUBSCRIBER_NET),
            len: 10,
            pool: 0,
            dst: None,
        }],
    )
    .unwrap();
    let counters = Arc::new(Counters::default());
    let shard = Shard::with_memory_advice(
        ShardConfig {
            // Room to spare: a full table would refuse flows, which is not what is measured.
            max_sessions: 1_100_000,
            max_mappings: 4 * MAPPINGS,
            max_subscribers: 4 * SUBSCRIBERS,
            timeouts: Timeouts {
                udp: UDP_TIMEOUT,
                ..Timeouts::default()
            },
            seed: 0x6c75_745f_7365_6564,
            // 10,000 sessions per subscriber: no per-subscriber limit (0 = unlimited).
            limits: Limits {
                max_sessions_per_subscriber: 0,
                max_ports_per_subscriber: 0,
            },
            event_ring: 0,
            ..ShardConfig::default()
        },
        Arc::new(rules),
        counters.clone(),
        0,
        Some(dpdk::advise_hugepages),
    )
    .unwrap();
    let control = Arc::new(Control::new(16, REPLY_QUEUE));
    let cfg = WorkerConfig {
        inside: port_setup(
            inside,
            INSIDE_ADDR,
            RouteTable::new(
                Prefix::new(INSIDE_ADDR, 24),
                None,
                &[(Prefix::new(SUBSCRIBER_NET, 10), INSIDE_ROUTER)],
            ),
            (INSIDE_ROUTER, ROUTER_MAC),
        ),
        outside: port_setup(
            outside,
            OUTSIDE_ADDR,
            RouteTable::new(Prefix::new(OUTSIDE_ADDR, 24), Some(GATEWAY), &[]),
            (GATEWAY, GATEWAY_MAC),
        ),
        neighbour_reachable_s: 3600,
        neighbour_retransmit_ms: 1000,
        icmp_errors_per_s: 1000,
        refusal_icmp: false,
        worker: 0,
        workers: 1,
        links: Links::none(),
        // Busy polling, as a production worker does.
        idle_sleep: Duration::ZERO,
        idle_polls: 1,
        fragments: nat::FragConfig::default(),
        events: None,
        control: Some(control.clone()),
        masquerade: false,
        panic_after: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(cfg, shard, pool.clone(), stop.clone());
    let (shard_tx, shard_rx) = std::sync::mpsc::channel();
    let (thread_tx, thread_rx) = std::sync::mpsc::channel();
    lcore::launch(LcoreId(1), move || {
        let _ = thread_tx.send(WorkerThread::current_tid());
        let _ = shard_tx.send(worker.run());
        0
    })
    .unwrap();
    let worker_thread = WorkerThread::open(thread_rx.recv().expect("the worker's thread id"));

    let mut h = Harness {
        rings,
        stop: stop.clone(),
        pool: pool.clone(),
        control: control.clone(),
        counters: counters.clone(),
        in_mac: EthernetAddress(inside.mac_addr()),
        out_mac: EthernetAddress(outside.mac_addr()),
        hz: dpdk::time::tsc_hz(),
        worker: worker_thread,
        out_port: vec![0; MAPPINGS as usize],
        fill_received: 0,
        // Spread over the table; 3907 is coprime to MAPPINGS, so every flow has a mapping of its own.
        flows: (0..STREAM_FLOWS).map(|k| k * 3907).collect(),
        stream: Stream::default(),
    };

    // The table: a million sessions, each opened by a frame through the worker.
    let (fill_start, fill_cpu) = (Instant::now(), h.worker.cpu());
    h.fill();
    let fill_cpu = h.worker.cpu() - fill_cpu;
    eprintln!(
        "worker CPU time during the fill: {:.2} s of {:.2} s",
        fill_cpu.as_secs_f64(),
        fill_start.elapsed().as_secs_f64()
    );
    // The gap attribution rests on schedstat counting the worker's time on its core (a kernel
    // without scheduler statistics reports zeros, which would excuse every gap).
    assert!(
        fill_cpu > Duration::ZERO,
        "schedstat counts the worker's CPU time"
    );
    assert_eq!(
        counters.get(Counter::SessionsCurrent),
        u64::from(SESSIONS),
        "the table holds one session per frame sent"
    );
    assert!(h.out_port.iter().all(|&p| p != 0), "every mapping seen");
    assert_eq!(nonzero_drops(&counters), vec![], "no drops while filling");
    let created = counters.get(Counter::SessionsCreated);
    // The worker busy-polls and waits for nothing, so it never leaves its core of its own accord:
    // the only time it is off its core is when the scheduler preempts it, which is what the gap
    // attribution (`Gaps::worker`) takes off. A worker that slept or blocked while a listing is
    // paused would stall forwarding unseen by that attribution; this is how it would show.
    let blocked = h.worker.blocked();
    eprintln!("worker voluntary context switches after the fill: {blocked}");

    // 0. The stream alone, for comparison: what the machine's own noise looks like.
    let base = h.begin_phase();
    h.run_for(BASELINE);
    h.finish_stream();
    h.report("baseline (no listing)", &base);

    // 1. A listing of every session with a reader that keeps up, under the stream.
    let phase = h.begin_phase();
    h.run_for(MARGIN);
    let mut full = Listing::new(1);
    control
        .commands
        .push(Command::List {
            id: full.id,
            filter: SessionFilter::default(),
        })
        .unwrap();
    let sent_before = h.stream.sent;
    while full.done.is_none() {
        h.step();
        h.read_replies(&mut full, READ_BATCH);
        assert!(
            full.started.elapsed() < Duration::from_secs(60),
            "listing stuck at {} records",
            full.count
        );
    }
    let sent_during = h.stream.sent - sent_before;
    h.run_for(MARGIN);
    h.finish_stream();
    eprintln!(
        "listing: {} sessions in {} ms, {sent_during} stream packets sent meanwhile",
        full.count,
        full.took.as_millis()
    );
    h.report("listing", &phase);
    assert_eq!(
        full.done,
        Some(u64::from(SESSIONS)),
        "the listing reports every session"
    );
    assert_eq!(full.count, u64::from(SESSIONS), "every session listed once");
    assert!(
        h.stream.worst.worker < MAX_GAP,
        "forwarding stalled while listing: worst gap {}",
        fmt_gaps(h.stream.worst)
    );

    // 2. The same listing with a reader that stops reading for PAUSE: the worker pauses the
    // listing on the full reply queue and goes on forwarding; the listing completes on resuming.
    let phase = h.begin_phase();
    h.run_for(MARGIN);
    let mut slow = Listing::new(2);
    control
        .commands
        .push(Command::List {
            id: slow.id,
            filter: SessionFilter::default(),
        })
        .unwrap();
    while slow.count < READ_BEFORE_PAUSE {
        h.step();
        h.read_replies(&mut slow, READ_BATCH);
    }
    let paused = Instant::now();
    let (sent_p, received_p) = (h.stream.sent, h.stream.received);
    let gaps_before = std::mem::take(&mut h.stream.worst);
    while paused.elapsed() < PAUSE {
        h.step();
    }
    let gaps_in_pause = h.stream.worst;
    h.stream.worst = gaps_in_pause.max(gaps_before);
    let (sent_in_pause, received_in_pause) =
        (h.stream.sent - sent_p, h.stream.received - received_p);
    assert!(
        control.replies.len() + 1 >= control.replies.capacity(),
        "the listing filled the reply queue and waits ({} of {} queued)",
        control.replies.len(),
        control.replies.capacity()
    );
    assert!(slow.done.is_none(), "the listing waits for the reader");
    assert!(
        received_in_pause > 0,
        "forwarding goes on while the listing waits"
    );
    while slow.done.is_none() {
        h.step();
        h.read_replies(&mut slow, READ_BATCH);
        assert!(
            slow.started.elapsed() < Duration::from_secs(60),
            "listing stuck at {} records after the reader resumed",
            slow.count
        );
    }
    h.run_for(MARGIN);
    h.finish_stream();
    eprintln!(
        "slow reader: {} sessions in {} ms, paused {} ms after {READ_BEFORE_PAUSE} records; \
         during the pause {sent_in_pause} stream packets sent, {received_in_pause} out, worst \
         gap {}",
        slow.count,
        slow.took.as_millis(),
        PAUSE.as_millis(),
        fmt_gaps(gaps_in_pause),
    );
    h.report("slow reader", &phase);
    assert_eq!(
        slow.done,
        Some(u64::from(SESSIONS)),
        "the listing completes once the reader resumes"
    );
    assert_eq!(slow.count, u64::from(SESSIONS), "every session listed once");
    assert!(
        h.stream.worst.worker < MAX_GAP,
        "forwarding stalled around a paused listing: worst gap {}",
        fmt_gaps(h.stream.worst)
    );

    // Nothing was refused, created or expired along the way.
    assert_eq!(
        h.worker.blocked(),
        blocked,
        "the worker never slept or blocked while listing"
    );
    assert_eq!(nonzero_drops(&counters), vec![], "no drops at all");
    assert_eq!(counters.get(Counter::SessionsCreated), created);
    assert_eq!(counters.get(Counter::SessionsCurrent), u64::from(SESSIONS));
    assert!(control.replies.is_empty() && control.commands.is_empty());

    stop.store(true, Ordering::Relaxed);
    assert_eq!(lcore::wait(LcoreId(1)), 0, "the worker ends cleanly");
    let shard = shard_rx.recv().unwrap();
    assert_eq!(shard.session_count(), SESSIONS);
    drop(shard);

    // Teardown in dependency order: ports (the worker gave its queues back; closing them lets go
    // of their rings), then the rings they used, then the buffers, then the EAL (whose cleanup
    // would be skipped, and fail, if a port still held a ring).
    for p in ports {
        p.close().unwrap();
    }
    drop(h);
    let pool = Arc::try_unwrap(pool).expect("the last pool handle");
    assert_eq!(pool.in_use_count(), 0, "every mbuf went back to the pool");
    drop(pool);
    eal.try_cleanup().expect("EAL cleanup");
    assert!(!run_dir.0.exists(), "{} left behind", run_dir.0.display());
    let hugepage_files: Vec<_> = std::fs::read_dir("/dev/hugepages")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(hugepage_files.is_empty(), "{hugepage_files:?}");
    eprintln!("total {:.1} s", t_start.elapsed().as_secs_f64());
}
