//! The run-to-completion worker loop of one lcore.
//!
//! Per iteration, for each port the worker owns a queue on: `rx_burst` up to 32 frames, prefetch them,
//! classify (ARP, IPv4 for translation, IPv4 for us, drop), translate the IPv4 batch through the shard,
//! route and resolve the next hop, and queue the frame on the egress port's TX burst. TX bursts are
//! flushed at the end of the iteration; what the NIC does not take is freed and counted. A receive
//! burst of plain IPv4 frames this worker owns is translated in place instead, and when each of them
//! is forwarded to a known neighbour, sent at once with its own `tx_burst` (after what the egress
//! port had queued), without the frame-by-frame steps. Idle-session
//! expiry (256 slots of each of the shard's sweeps, while the second's quota lasts) and neighbour
//! upkeep run with a bounded budget every iteration; a worker does not nap while a sweep has quota
//! left. Nothing here allocates, locks, makes a system call or logs per packet.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dpdk::{BURST, Mbuf, MbufBurst, MbufRing, Mempool, RxQueue, TxQueue};
use nat::{
    Counter, Counters, Dir, DropReason, FragClass, FragConfig, FragKey, L4Ids, PacketBatch,
    Prefetch, Reassembly, Shard, Verdict,
};
use wire::{ArpPacket, EthernetAddress, EthernetFrame, Ipv4Packet, arp_op, ethertype, icmp_type};

use crate::handoff::{Links, inside_owner_addr, outside_port_of, subscriber_owner};
use crate::local::{self, L3, RateLimit};
use crate::neighbour::{NeighbourTable, Resolution};
use crate::route::RouteTable;

/// Packets held per port while their next hop is being resolved.
const HOLD_MAX: usize = 64;
/// Events moved from the shard's ring to the control plane per iteration at most.
const EVENT_BATCH: usize = 64;

/// Session slots a worker looks at per iteration for a control-plane query: about as long as one
/// expiry step, so a listing of millions of sessions never delays a burst noticeably.
const QUERY_BUDGET: u32 = 1024;

/// A control-plane query about a worker's sessions (`conntrack -L` / `-D` / `-F`).
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// Send every session matching the filter as [`Reply::Session`], then [`Reply::Done`].
    List { id: u64, filter: nat::SessionFilter },
    /// Delete every matching session, then [`Reply::Done`] with how many.
    Delete { id: u64, filter: nat::SessionFilter },
}

/// What a worker answers a [`Command`] with, tagged with the command's id.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Session { id: u64, record: nat::SessionRecord },
    Done { id: u64, count: u64 },
}

/// A worker's command and reply queues (bounded, lock-free). The worker runs one command at a time,
/// a bounded step per iteration, and pauses a listing while the reply queue is full: a slow reader
/// slows its own listing, never the forwarding.
pub struct Control {
    pub commands: crossbeam::queue::ArrayQueue<Command>,
    pub replies: crossbeam::queue::ArrayQueue<Reply>,
    /// Set while someone watches the session table: the worker then records session events too.
    pub session_events: std::sync::atomic::AtomicBool,
    /// A new translation policy for the worker to put in force at its next loop (between bursts).
    pub policy: crossbeam::queue::ArrayQueue<Arc<Policy>>,
    /// Publication sequence number ([`Policy::seq`]) of the policy the worker has in force.
    pub policy_seq: std::sync::atomic::AtomicU64,
    /// Sequence number of the last policy the worker's shard refused (0: none); the worker keeps
    /// the policy it had. The control plane checks a policy against everything the shard checks
    /// before publishing it, so this means a bug; it is reported rather than waited for.
    pub policy_refused: std::sync::atomic::AtomicU64,
}

/// A translation policy as the workers run it: immutable, built by the control plane, swapped in
/// whole by each worker between bursts (no lock on the data path; see [`nat::Shard::set_policy`]).
#[derive(Debug)]
pub struct Policy {
    /// Publication sequence number: +1 for every policy handed to the workers, which report the
    /// one they run ([`Control::policy_seq`]). Not the API's generation, which counts changes to
    /// the desired state (a publication that only frees drained pool slots keeps it).
    pub seq: u64,
    pub generation: u64,
    pub rules: Arc<nat::Rules>,
    pub params: nat::PolicyParams,
    pub dnat: Arc<nat::DnatTable>,
    /// Addresses other than its own that the outside port answers ARP for: pool and destination
    /// NAT addresses inside its subnet.
    pub outside_proxy_arp: Vec<u32>,
    /// The outside port's own address is translated too (a MASQUERADE pool, or a destination NAT
    /// rule forwarding ports of it).
    pub masquerade: bool,
    /// Answer flows refused at a limit with ICMP unreachable (`nat.limits.icmp_unreachable`).
    pub refusal_icmp: bool,
}

impl Control {
    pub fn new(commands: usize, replies: usize) -> Control {
        Control {
            commands: crossbeam::queue::ArrayQueue::new(commands.max(1)),
            replies: crossbeam::queue::ArrayQueue::new(replies.max(2)),
            session_events: std::sync::atomic::AtomicBool::new(false),
            policy: crossbeam::queue::ArrayQueue::new(4),
            policy_seq: std::sync::atomic::AtomicU64::new(0),
            policy_refused: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// The command a worker is working through.
struct Active {
    cmd: Command,
    cursor: u32,
    count: u64,
}

/// The queue a worker hands the shard's events (mappings, port blocks, limits) to the control plane
/// over: bounded and lock-free; when it is full the events wait in the shard's ring, and when that is
/// full they are dropped and counted (`events_dropped`), never blocking the worker.
pub type EventQueue = crossbeam::queue::ArrayQueue<nat::Event>;

/// Side of the NAT a port faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Inside = 0,
    Outside = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
        }
    }

    /// The translation direction of a frame received on this side.
    fn dir(self) -> Dir {
        match self {
            Side::Inside => Dir::In2Out,
            Side::Outside => Dir::Out2In,
        }
    }
}

/// Everything a worker needs to drive one port.
pub struct PortSetup {
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub mac: EthernetAddress,
    pub addr: Ipv4Addr,
    /// Largest IPv4 packet this port sends; bigger ones are fragmented or refused (DF).
    pub mtu: u16,
    pub routes: RouteTable,
    /// Extra addresses this port answers ARP for (pool addresses inside the outside subnet).
    pub proxy_arp: Vec<u32>,
    /// Neighbours configured by hand: never expire, never overwritten by ARP.
    pub static_neighbours: Vec<(Ipv4Addr, EthernetAddress)>,
}

/// Worker parameters.
pub struct WorkerConfig {
    pub inside: PortSetup,
    pub outside: PortSetup,
    /// Neighbour entry lifetime and ARP retry interval, in seconds and milliseconds.
    pub neighbour_reachable_s: u64,
    pub neighbour_retransmit_ms: u64,
    /// ICMP errors per second this worker may send.
    pub icmp_errors_per_s: u64,
    /// Answer a subscriber's flow refused at a limit (quota, ports, table) with ICMP destination
    /// unreachable, administratively prohibited (type 3 code 13); off: a silent drop.
    pub refusal_icmp: bool,
    /// This worker's index and the number of workers.
    pub worker: usize,
    pub workers: usize,
    /// Handoff rings to and from the other workers.
    pub links: Links,
    /// Sleep this long after `idle_polls` empty polls (zero: never sleep).
    pub idle_sleep: Duration,
    pub idle_polls: u32,
    /// Virtual reassembly limits (per side of this worker).
    pub fragments: FragConfig,
    /// Where to hand the shard's events; `None` leaves them in the shard's ring.
    pub events: Option<Arc<EventQueue>>,
    /// Session queries from the control plane.
    pub control: Option<Arc<Control>>,
    /// MASQUERADE: the outside port's address is also a pool address (or a destination NAT rule
    /// forwards ports of it). Packets to it are translated like any pool address, except ICMP echo
    /// requests, which the appliance answers itself.
    pub masquerade: bool,
    /// Testing only (`dataplane.inject_panic`): panic this long after the worker is built, so that
    /// what notices a stopped worker (the daemon's watchdog, an operator's monitoring) can be
    /// tried on a real one.
    pub panic_after: Option<Duration>,
}

struct PortCtx {
    rx: RxQueue,
    tx: TxQueue,
    mac: EthernetAddress,
    addr: u32,
    mtu: u16,
    routes: RouteTable,
    proxy_arp: Vec<u32>,
    neigh: NeighbourTable,
    out: MbufBurst<BURST>,
    /// Frames waiting for ARP: (next hop, when queued, frame).
    held: Vec<(u32, u64, Mbuf)>,
}

/// DPDK's prefetch for the NAT pipeline.
pub struct DpdkPrefetch;

impl Prefetch for DpdkPrefetch {
    #[inline(always)]
    fn prefetch<T>(r: &T) {
        dpdk::prefetch0(r);
    }
}

/// The IPv4 packets of a burst as the NAT sees them: from the IP header on, with what virtual
/// reassembly found for each later fragment.
struct L3Batch<'a>(&'a mut MbufBurst<BURST>, &'a [Option<L4Ids>; BURST]);

impl PacketBatch for L3Batch<'_> {
    #[inline]
    fn later_fragment(&self, i: usize) -> Option<L4Ids> {
        self.1[i]
    }
    #[inline]
    fn len(&self) -> usize {
        self.0.len()
    }
    #[inline]
    fn packet(&self, i: usize) -> &[u8] {
        &self.0.as_slice()[i].data()[L3..]
    }
    #[inline]
    fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.0.as_mut_slice()[i].data_mut()[L3..]
    }
}

pub struct Worker {
    shard: Shard,
    ports: [PortCtx; 2],
    counters: Arc<Counters>,
    pool: Arc<Mempool>,
    stop: Arc<AtomicBool>,
    icmp_limit: RateLimit,
    /// Fragmentation-needed has a budget of its own: path MTU discovery must not starve because a
    /// subscriber sends TTL-1 packets (Linux exempts it for the same reason).
    frag_needed_limit: RateLimit,
    tsc_hz: u64,
    start_tsc: u64,
    /// TSC ticks per millisecond, for fragment deadlines.
    tsc_per_ms: u64,
    /// TSC at which the worker panics on purpose ([`WorkerConfig::panic_after`]); `u64::MAX`:
    /// never. One compare per loop, not per packet.
    panic_at: u64,
    /// The burst being gathered for translation, and an empty one to swap in while it is
    /// translated. Boxed so that the swap moves two pointers: moving the 264-byte bursts in and out
    /// of the worker cost a memcpy call each way (callgrind, with the receive burst's moves: about
    /// 9 instructions per packet).
    ipv4: Box<MbufBurst<BURST>>,
    spare: Option<Box<MbufBurst<BURST>>>,
    /// For each frame of `ipv4`: the transport identifiers of a later fragment, or the datagram of a
    /// first fragment (forgotten again if the translator refuses it).
    ipv4_later: [Option<L4Ids>; BURST],
    ipv4_first: [Option<FragKey>; BURST],
    /// Whether `ipv4_later`/`ipv4_first` hold anything for the burst being gathered.
    burst_has_fragments: bool,
    /// Per egress side: the next hop last resolved to a known MAC in the burst being routed. The
    /// neighbour table cannot change while a translated burst is routed (ARP is handled before
    /// translation, and `now` is the burst's), so a resolution holds for the rest of the burst and
    /// the table is looked up once per next hop and burst, not per packet. Cleared per burst.
    resolved: [Option<(u32, EthernetAddress)>; 2],
    /// Virtual reassembly per side (a datagram's fragments all arrive on one side).
    reasm: [Reassembly<Mbuf>; 2],
    /// Fragments released by their first fragment, waiting to be dispatched right after it.
    released: Vec<Mbuf>,
    local_addrs: [u32; 2],
    /// Each port's MAC as the low 48 bits of a little-endian word: [`Worker::plain_ipv4`] checks a
    /// frame's destination with one load, mask and compare (callgrind: 3 instructions per packet
    /// fewer than comparing the six bytes).
    mac_words: [u64; 2],
    /// The outside address when it doubles as the pool (MASQUERADE).
    masq_addr: Option<u32>,
    /// The smaller of the two ports' MTUs: anything no larger fits whichever port it leaves by.
    min_mtu: u16,
    events: Option<Arc<EventQueue>>,
    control: Option<Arc<Control>>,
    active: Option<Active>,
    /// Whether the shard records session events (follows `Control::session_events`).
    session_events: bool,
    /// Reused for every event batch (capacity `EVENT_BATCH`, never grows).
    event_buf: Vec<nat::Event>,
    refusal_icmp: bool,
    /// DPDK port ids of the inside and outside ports (handed-off frames carry theirs in `mbuf.port`).
    port_ids: [u16; 2],
    me: usize,
    workers: usize,
    to_peer: Vec<Option<Arc<MbufRing>>>,
    from_peer: Vec<Arc<MbufRing>>,
    /// Workers of the mesh that have stopped (see [`Links::stopped`]).
    peers_stopped: Arc<AtomicUsize>,
    /// Frames waiting to be enqueued to each peer, flushed once per iteration.
    handoff_out: Vec<MbufBurst<BURST>>,
    idle_sleep: Duration,
    idle_polls: u32,
    idle: u32,
}

/// The 48 bits of a MAC address in a little-endian word.
const MAC_BITS: u64 = (1 << 48) - 1;

/// `mac` as the low 48 bits of a little-endian word, as [`Worker::plain_ipv4`] reads a frame's
/// destination address (its first 8 bytes, masked to 6).
fn mac_word(mac: &[u8; 6]) -> u64 {
    u64::from_le_bytes([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0])
}

/// Whether a frame's destination MAC is the one `mac_word` ([`mac_word`]) holds. The frame's first
/// 8 bytes are read as one word, of which the top two (the source MAC's start) are masked off.
#[inline(always)]
fn addressed_to(frame: &[u8; L3 + 20], mac_word: u64) -> bool {
    let first: [u8; 8] = [
        frame[0], frame[1], frame[2], frame[3], frame[4], frame[5], frame[6], frame[7],
    ];
    u64::from_le_bytes(first) & MAC_BITS == mac_word
}

/// Write a frame's destination and source MACs through one fixed-size view; `false` if the frame is
/// too short to have an Ethernet header.
#[inline(always)]
fn set_macs(m: &mut Mbuf, dst: EthernetAddress, src: EthernetAddress) -> bool {
    let Some(h) = m.data_mut().first_chunk_mut::<12>() else {
        return false;
    };
    h[..6].copy_from_slice(&dst.0);
    h[6..].copy_from_slice(&src.0);
    true
}

/// Send a burst on `tx`; what the PMD does not take is freed and counted `tx_full`.
#[inline]
fn transmit(counters: &Counters, tx: &mut TxQueue, burst: &mut MbufBurst<BURST>) {
    let sent = tx.tx_burst(burst);
    counters.add(Counter::TxPackets, sent as u64);
    if !burst.is_empty() {
        counters.count_drops(DropReason::TxFull, burst.len() as u64);
        burst.clear();
    }
}

/// Whether an IPv4 packet (from its header on) is an unfragmented ICMP echo request.
#[inline]
fn is_echo_request(ip: &[u8]) -> bool {
    let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
    let unfragmented = ip.get(6..8).is_some_and(|f| f[0] & 0x3f == 0 && f[1] == 0);
    ip.get(9) == Some(&wire::ip_proto::ICMP)
        && unfragmented
        && ip.get(ihl) == Some(&icmp_type::ECHO_REQUEST)
}

/// A frame's fate after the Ethernet-level look.
enum Class {
    Ipv4,
    Local,
    Arp,
    Drop(DropReason),
}

impl Worker {
    pub fn new(
        cfg: WorkerConfig,
        shard: Shard,
        pool: Arc<Mempool>,
        stop: Arc<AtomicBool>,
    ) -> Worker {
        let tsc_hz = dpdk::time::tsc_hz().max(1);
        let start_tsc = dpdk::time::tsc();
        let counters = shard.counters().clone();
        let frag_seed = shard.config().seed ^ 0x6672_6167_0000_0000;
        let mk = |p: PortSetup| {
            let mut proxy_arp = p.proxy_arp;
            proxy_arp.sort_unstable();
            let mut neigh = NeighbourTable::new(
                cfg.neighbour_reachable_s.saturating_mul(tsc_hz),
                cfg.neighbour_retransmit_ms.saturating_mul(tsc_hz) / 1000,
                65536,
            );
            for (ip, mac) in &p.static_neighbours {
                neigh.add_static(u32::from(*ip), *mac);
            }
            PortCtx {
                rx: p.rx,
                tx: p.tx,
                mac: p.mac,
                addr: p.addr.into(),
                mtu: p.mtu,
                routes: p.routes,
                proxy_arp,
                neigh,
                out: MbufBurst::new(),
                held: Vec::with_capacity(HOLD_MAX),
            }
        };
        let inside = mk(cfg.inside);
        let outside = mk(cfg.outside);
        let local_addrs = [inside.addr, outside.addr];
        let mac_words = [mac_word(&inside.mac.0), mac_word(&outside.mac.0)];
        let (inside_mtu, outside_mtu) = (inside.mtu, outside.mtu);
        let port_ids = [inside.rx.port().0, outside.rx.port().0];
        let workers = cfg.workers.max(1);
        Worker {
            shard,
            ports: [inside, outside],
            counters,
            pool,
            stop,
            icmp_limit: RateLimit::new(cfg.icmp_errors_per_s, cfg.icmp_errors_per_s.max(1), tsc_hz),
            frag_needed_limit: RateLimit::new(
                cfg.icmp_errors_per_s,
                cfg.icmp_errors_per_s.max(1),
                tsc_hz,
            ),
            tsc_hz,
            start_tsc,
            tsc_per_ms: (tsc_hz / 1000).max(1),
            panic_at: cfg.panic_after.map_or(u64::MAX, |d| {
                // In u128: microseconds times a GHz clock overflow u64 after about 1.7 hours.
                let ticks = d.as_micros().saturating_mul(u128::from(tsc_hz)) / 1_000_000;
                start_tsc.saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
            }),
            ipv4: Box::new(MbufBurst::new()),
            spare: Some(Box::new(MbufBurst::new())),
            ipv4_later: [None; BURST],
            ipv4_first: [None; BURST],
            burst_has_fragments: false,
            resolved: [None; 2],
            reasm: [
                // Keyed like the session table (random per worker): outside hosts choose the keys, and
                // datagrams that collide on purpose could fill a probe window.
                Reassembly::new(cfg.fragments, frag_seed),
                Reassembly::new(cfg.fragments, frag_seed.rotate_left(17) ^ 0x5eed),
            ],
            // Never grows: at most every held fragment is released at once.
            released: Vec::with_capacity(cfg.fragments.max_held as usize),
            local_addrs,
            mac_words,
            masq_addr: cfg
                .masquerade
                .then_some(local_addrs[Side::Outside as usize]),
            refusal_icmp: cfg.refusal_icmp,
            min_mtu: inside_mtu.min(outside_mtu),
            events: cfg.events,
            control: cfg.control,
            active: None,
            session_events: false,
            event_buf: Vec::with_capacity(EVENT_BATCH),
            port_ids,
            me: cfg.worker,
            workers,
            to_peer: cfg.links.to,
            from_peer: cfg.links.from,
            peers_stopped: cfg.links.stopped,
            handoff_out: (0..workers).map(|_| MbufBurst::new()).collect(),
            idle_sleep: cfg.idle_sleep,
            idle_polls: cfg.idle_polls.max(1),
            idle: 0,
        }
    }

    /// Poll until the stop flag is raised. Returns the shard so the caller can inspect it afterwards.
    pub fn run(mut self) -> Shard {
        // The receive burst lives here rather than in the worker, so that polling hands it down
        // by reference instead of moving it out of `self` and back (a memcpy call each way).
        let mut rx = MbufBurst::<BURST>::new();
        while !self.stop.load(Ordering::Relaxed) {
            let now = dpdk::time::tsc();
            if now >= self.panic_at {
                self.injected_panic();
            }
            let now_s = ((now - self.start_tsc) / self.tsc_hz) as u32;
            let mut busy = self.poll(Side::Inside, &mut rx, now, now_s);
            busy += self.poll(Side::Outside, &mut rx, now, now_s);
            if !self.from_peer.is_empty() {
                busy += self.poll_peers(&mut rx, now, now_s);
                self.flush_handoff();
            }
            self.flush(Side::Inside);
            self.flush(Side::Outside);
            if self.shard.expiry_due(now_s) {
                self.shard
                    .expire_with::<DpdkPrefetch>(now_s, nat::EXPIRY_BUDGET);
                // A sweep with quota left is work to do: never nap before it is done (a worker
                // sleeping between calls would look at 256 slots per nap, and a pass of a large
                // table would take minutes instead of a second).
                if self.shard.expiry_due(now_s) {
                    busy += 1;
                }
            }
            self.expire_held(now);
            self.expire_fragments(now);
            self.export_events();
            self.run_command();
            self.counters.add(Counter::Loops, 1);
            if busy > 0 {
                self.counters.add(Counter::BusyLoops, 1);
                self.idle = 0;
            } else if !self.idle_sleep.is_zero() {
                // Idle: after enough empty polls, give the core back briefly. Never on a busy path.
                self.idle += 1;
                if self.idle >= self.idle_polls {
                    self.counters.add(Counter::IdleSleeps, 1);
                    std::thread::sleep(self.idle_sleep);
                }
            }
        }
        self.flush_handoff();
        for side in [Side::Inside, Side::Outside] {
            self.flush(side);
        }
        // What is still waiting will never be sent: count it, so that a stopped worker's
        // counters account for every frame it received.
        let mut left = 0;
        for p in &mut self.ports {
            left += p.held.len();
            p.held.clear();
        }
        for r in &mut self.reasm {
            r.clear(|f| {
                left += 1;
                drop(f);
            });
        }
        left += self.drain_peers_at_stop();
        if left > 0 {
            self.counters.count_drops(DropReason::Shutdown, left as u64);
        }
        // The last events (mapping and port block records among them) go to the control plane,
        // which drains its queues once every worker has stopped; what its queue has no room
        // for is counted lost.
        loop {
            let pending = self.shard.pending_events();
            self.export_events();
            if pending == 0 || self.shard.pending_events() == pending {
                break;
            }
        }
        let lost = self.shard.pending_events();
        if lost > 0 && self.events.is_some() {
            self.counters.add(Counter::EventsDropped, lost as u64);
        }
        self.shard
    }

    #[cold]
    #[inline(never)]
    fn injected_panic(&self) -> ! {
        panic!(
            "worker {} panics as dataplane.inject_panic asks (a test of what notices)",
            self.me
        );
    }

    /// At stop, once every worker of the mesh has sent its last handoffs (or after a grace
    /// period, should one of them never get there): free what is left in the rings towards this
    /// worker, which no one will poll again. Returns how many frames that was.
    fn drain_peers_at_stop(&mut self) -> usize {
        if self.from_peer.is_empty() {
            return 0;
        }
        self.peers_stopped.fetch_add(1, Ordering::AcqRel);
        let grace = Instant::now() + Duration::from_millis(200);
        while self.peers_stopped.load(Ordering::Acquire) < self.workers && Instant::now() < grace {
            std::thread::yield_now();
        }
        let mut burst = MbufBurst::<BURST>::new();
        let mut n = 0;
        for r in &self.from_peer {
            loop {
                let k = r.dequeue_burst(&mut burst);
                if k == 0 {
                    break;
                }
                n += k;
                burst.clear();
            }
        }
        n
    }

    #[inline]
    fn poll(&mut self, side: Side, rx: &mut MbufBurst<BURST>, now: u64, now_s: u32) -> usize {
        let n = self.ports[side as usize].rx.rx_burst(rx);
        if n == 0 {
            return 0;
        }
        self.counters.add(Counter::RxPackets, n as u64);
        for m in rx.iter() {
            m.prefetch_data();
        }
        if self.ipv4.is_empty() && rx.iter().all(|m| self.plain_and_mine(side, m)) {
            self.translate_received(side, rx, now, now_s);
        } else {
            self.dispatch(side, rx, false, now, now_s);
        }
        n
    }

    /// Whether [`Worker::dispatch`] would take a frame from the wire straight into the burst for
    /// translation: a plain IPv4 frame ([`Worker::plain_ipv4`]) of a flow this worker owns.
    #[inline(always)]
    fn plain_and_mine(&self, side: Side, m: &Mbuf) -> bool {
        self.plain_ipv4(side, m) && (self.workers == 1 || self.owner(side, m, None) == self.me)
    }

    /// A received burst of nothing but frames [`Worker::plain_and_mine`] accepts (with one worker,
    /// or with NIC steering to the owner, nearly every burst; not a burst with frames for the
    /// appliance's own addresses, such as MASQUERADE replies, nor, without steering, one received
    /// for several workers): translated where it was received rather than moved frame by frame into the burst
    /// [`Worker::dispatch`] gathers; and when every frame is forwarded to a neighbour whose MAC is
    /// known, sent as it is, rather than moved again into the port's TX burst. What this saves is
    /// the two moves of each frame and their checks (callgrind on cgnatd's worker: 27 of 148
    /// instructions per packet). A verdict other than forward (translated or not), or a next hop
    /// that needs resolving, sends the
    /// rest of the burst through [`Worker::deliver`] frame by frame, in order.
    fn translate_received(&mut self, side: Side, rx: &mut MbufBurst<BURST>, now: u64, now_s: u32) {
        const WHOLE: [Option<L4Ids>; BURST] = [None; BURST];
        let mut verdicts = [Verdict::Forward; BURST];
        self.shard.process::<_, DpdkPrefetch>(
            side.dir(),
            &mut L3Batch(rx, &WHOLE),
            &mut verdicts,
            now_s,
        );
        self.resolved = [None; 2];
        let egress = side.other();
        let n = rx.len();
        let mut ready = 0;
        while ready < n {
            if !matches!(
                verdicts[ready],
                Verdict::Forward | Verdict::ForwardUntranslated
            ) {
                break;
            }
            let Some(mac) = self.known_next_mac(egress, &rx[ready], now) else {
                break;
            };
            if !set_macs(&mut rx[ready], mac, self.ports[egress as usize].mac) {
                break;
            }
            ready += 1;
        }
        if ready == n {
            // Frames queued for this port before this burst go first.
            self.flush(egress);
            transmit(&self.counters, &mut self.ports[egress as usize].tx, rx);
            return;
        }
        for (i, m) in rx.drain(..).enumerate() {
            if i < ready {
                self.enqueue(egress, m);
            } else {
                self.deliver(side, m, verdicts[i], now);
            }
        }
    }

    /// The MAC of the next hop towards a translated frame's destination, when it is known and using
    /// it needs nothing more ([`NeighbourTable::known`]); `None` leaves the frame to
    /// [`Worker::route`], which resolves, asks or drops.
    #[inline(always)]
    fn known_next_mac(&mut self, egress: Side, m: &Mbuf, now: u64) -> Option<EthernetAddress> {
        let e = egress as usize;
        let nh = self.next_hop(egress, m).ok()?;
        if let Some(mac) = self.resolved_in_burst(egress, nh) {
            return Some(mac);
        }
        let mac = self.ports[e].neigh.known(nh, now)?;
        self.resolved[e] = Some((nh, mac));
        Some(mac)
    }

    /// Frames other workers received for flows this worker owns.
    fn poll_peers(&mut self, inside: &mut MbufBurst<BURST>, now: u64, now_s: u32) -> usize {
        let mut total = 0;
        for r in 0..self.from_peer.len() {
            let n = self.from_peer[r].dequeue_burst(inside);
            if n == 0 {
                continue;
            }
            total += n;
            self.counters.add(Counter::HandoffIn, n as u64);
            // Split by the port the frame arrived on; each side is one translation direction.
            let mut outside: MbufBurst<BURST> = MbufBurst::new();
            let mut i = 0;
            while i < inside.len() {
                if inside[i].port() == self.port_ids[Side::Outside as usize] {
                    // Order within a side is kept; swap_remove would reorder a flow's packets.
                    let m = inside.drain(i..=i).next();
                    if let Some(m) = m {
                        let _ = outside.push(m);
                    }
                } else {
                    i += 1;
                }
            }
            self.dispatch(Side::Inside, inside, true, now, now_s);
            self.dispatch(Side::Outside, &mut outside, true, now, now_s);
        }
        total
    }

    /// Classify a burst received on `side` (from the wire, or from a peer when `from_peer`), hand
    /// frames of flows owned by other workers to them, and translate the rest.
    #[inline]
    fn dispatch(
        &mut self,
        side: Side,
        rx: &mut MbufBurst<BURST>,
        from_peer: bool,
        now: u64,
        now_s: u32,
    ) {
        let now_ms = (now - self.start_tsc) / self.tsc_per_ms;
        for m in rx.drain(..) {
            if !from_peer && self.plain_ipv4(side, &m) {
                self.admit_whole(side, m, false, now, now_s);
                continue;
            }
            match self.classify(side, &m, from_peer) {
                Class::Ipv4 => self.admit_ipv4(side, m, from_peer, now, now_s, now_ms),
                Class::Arp => {
                    if !from_peer && self.workers > 1 {
                        self.share_arp(side, &m);
                    }
                    self.arp(side, m, now, from_peer);
                }
                Class::Local => self.local(side, m),
                Class::Drop(r) => self.counters.count_drop(r),
            }
        }
        self.translate(side, now, now_s);
    }

    /// Whether a frame from the wire is the common case, decided from one fixed-size view of its
    /// first 34 bytes rather than field by field: unicast to this port's MAC, in one segment, IPv4
    /// not addressed to the appliance itself, a whole datagram no larger than the smaller MTU. For
    /// such a frame [`Worker::classify`] says [`Class::Ipv4`] and [`Worker::admit_ipv4`] takes its
    /// inline path, so [`Worker::dispatch`] goes straight to [`Worker::admit_whole`]; any other
    /// frame takes those two (which may still accept it, e.g. a reply to the masquerade address).
    #[inline(always)]
    fn plain_ipv4(&self, side: Side, m: &Mbuf) -> bool {
        let Some(h) = m.data().first_chunk::<{ L3 + 20 }>() else {
            return false;
        };
        let dst = u32::from_be_bytes([h[L3 + 16], h[L3 + 17], h[L3 + 18], h[L3 + 19]]);
        addressed_to(h, self.mac_words[side as usize])
            && h[12..14] == [0x08, 0x00]
            && h[L3..]
                .first_chunk::<8>()
                .is_some_and(|ip| self.whole_and_fits(ip, false))
            && m.is_contiguous()
            && !self.local_addrs.contains(&dst)
    }

    /// Whether an IPv4 header's first 8 bytes describe a whole datagram (MF clear, offset 0) that
    /// fits the smaller MTU (a peer's frame was checked by the worker that received it).
    #[inline(always)]
    fn whole_and_fits(&self, ip: &[u8; 8], from_peer: bool) -> bool {
        (from_peer || u16::from_be_bytes([ip[2], ip[3]]) <= self.min_mtu)
            && ip[6] & 0x3f == 0
            && ip[7] == 0
    }

    /// An IPv4 frame for translation, to its owner here or over the handoff ring.
    ///
    /// Nearly every frame is a whole datagram that fits both ports: that case is decided here from
    /// the length and fragment fields alone, inline in the burst loop. The rest (a frame larger than
    /// the smaller MTU, a fragment, a frame too short to tell) takes [`Worker::admit_ipv4_full`].
    /// callgrind on cgnatd's worker (pcap replay to net_null): the out-of-line call with its
    /// register saves and the general checks cost about 80 instructions per packet.
    #[inline(always)]
    fn admit_ipv4(
        &mut self,
        side: Side,
        m: Mbuf,
        from_peer: bool,
        now: u64,
        now_s: u32,
        now_ms: u64,
    ) {
        let whole_and_fits = m
            .data()
            .get(L3..)
            .and_then(|ip| ip.first_chunk::<8>())
            .is_some_and(|ip| self.whole_and_fits(ip, from_peer));
        if !whole_and_fits {
            return self.admit_ipv4_full(side, m, from_peer, now, now_s, now_ms);
        }
        self.admit_whole(side, m, from_peer, now, now_s);
    }

    /// A whole datagram that fits the port it leaves by: to the burst being gathered, or to the
    /// worker that owns its flow.
    #[inline(always)]
    fn admit_whole(&mut self, side: Side, m: Mbuf, from_peer: bool, now: u64, now_s: u32) {
        let owner = if from_peer || self.workers == 1 {
            self.me
        } else {
            self.owner(side, &m, None)
        };
        if owner != self.me {
            return self.handoff(owner, side, m);
        }
        if self.ipv4.is_full() {
            self.translate(side, now, now_s);
        }
        // Cannot fail: the burst was translated above when full.
        let _ = self.ipv4.push(m);
    }

    /// [`Worker::admit_ipv4`] for any frame: the MTU check, virtual reassembly (a later fragment
    /// learns its ports, or waits for its first fragment), then the owner.
    #[inline(never)]
    fn admit_ipv4_full(
        &mut self,
        side: Side,
        m: Mbuf,
        from_peer: bool,
        now: u64,
        now_s: u32,
        now_ms: u64,
    ) {
        // A router's duty before anything else: a packet must fit the port it leaves by (the other
        // side; a hairpin, addressed to one of our outside addresses, leaves by the inside port). A
        // peer's frame was checked by the worker that received it. Packets that fit both ports,
        // nearly all of them, cost one compare.
        if !from_peer
            && let Some(h) = m.data().get(L3..L3 + 20)
            && u16::from_be_bytes([h[2], h[3]]) > self.min_mtu
        {
            let len = u16::from_be_bytes([h[2], h[3]]);
            let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
            let egress = if side == Side::Inside && self.shard.is_outside_address(dst) {
                Side::Inside
            } else {
                side.other()
            };
            let mtu = self.ports[egress as usize].mtu;
            if len > mtu {
                self.too_big(side, m, mtu, from_peer, now, now_s, now_ms);
                return;
            }
        }
        let mut later = None;
        let mut first = None;
        match self.reasm[side as usize].classify(&m.data()[L3..], now_ms) {
            FragClass::Whole => {}
            FragClass::First(key) => first = Some(key),
            FragClass::Later(ids) => later = Some(ids),
            FragClass::Unknown(key) => {
                match self.reasm[side as usize].hold(key, m, now_ms) {
                    Ok(()) => self.counters.add(Counter::FragmentsHeld, 1),
                    // Dropping `m` frees it.
                    Err(_) => self.counters.count_drop(DropReason::FragmentHoldFull),
                }
                return;
            }
            FragClass::Drop(r) => {
                self.counters.count_drop(r);
                return;
            }
        }
        let owner = if from_peer || self.workers == 1 {
            self.me
        } else {
            self.owner(side, &m, later)
        };
        if owner == self.me {
            if self.ipv4.is_full() {
                self.translate(side, now, now_s);
            }
            // The side arrays are only written (and reset) for bursts with fragments.
            if later.is_some() || first.is_some() {
                self.ipv4_later[self.ipv4.len()] = later;
                self.ipv4_first[self.ipv4.len()] = first;
                self.burst_has_fragments = true;
            }
            // Cannot fail: the burst was flushed above when full.
            let _ = self.ipv4.push(m);
        } else {
            self.handoff(owner, side, m);
        }
        if let Some(key) = first {
            // Fragments that came before their first fragment follow it now, in the same order of
            // handling (and over the same ring, when another worker owns the flow).
            let mut released = std::mem::take(&mut self.released);
            self.reasm[side as usize].release(&key, |f| released.push(f));
            for f in released.drain(..) {
                self.admit_ipv4_full(side, f, from_peer, now, now_s, now_ms);
            }
            self.released = released;
        }
    }

    /// Translate the IPv4 frames gathered for `side` and send each where its verdict says.
    fn translate(&mut self, side: Side, now: u64, now_s: u32) {
        if self.ipv4.is_empty() {
            return;
        }
        let dir = side.dir();
        let mut verdicts = [Verdict::Forward; BURST];
        // The spare is always here: routing never admits frames, so no translation runs inside
        // another.
        let Some(empty) = self.spare.take() else {
            return;
        };
        let mut ipv4 = std::mem::replace(&mut self.ipv4, empty);
        self.shard.process::<_, DpdkPrefetch>(
            dir,
            &mut L3Batch(&mut ipv4, &self.ipv4_later),
            &mut verdicts,
            now_s,
        );
        if self.burst_has_fragments {
            // Forget the datagrams whose first fragment the translator refused.
            self.ipv4_later = [None; BURST];
            let now_ms = (now - self.start_tsc) / self.tsc_per_ms;
            for (i, v) in verdicts.iter().enumerate().take(ipv4.len()) {
                if let (Some(key), Verdict::Drop(_)) = (self.ipv4_first[i], v) {
                    self.reasm[side as usize].forget(&key, now_ms);
                }
            }
            self.ipv4_first = [None; BURST];
            self.burst_has_fragments = false;
        }
        self.resolved = [None; 2];
        for (i, m) in ipv4.drain(..).enumerate() {
            self.deliver(side, m, verdicts[i], now);
        }
        // Drained: it is the spare now.
        self.spare = Some(ipv4);
    }

    /// Send a translated frame where its verdict says (a frame received on `side`).
    #[inline]
    fn deliver(&mut self, side: Side, m: Mbuf, verdict: Verdict, now: u64) {
        match verdict {
            Verdict::Forward | Verdict::ForwardUntranslated => self.route(side.other(), m, now),
            // Both ends translated: back out of the inside port, to the target subscriber.
            Verdict::Hairpin => self.route(Side::Inside, m, now),
            // The rest of the packet's journey belongs to another worker (the target of a
            // hairpin, or a deterministic subscriber's port range): it continues there as if
            // received on the side that direction starts from.
            Verdict::Handoff { worker, dir } => {
                let as_side = match dir {
                    Dir::In2Out => Side::Inside,
                    Dir::Out2In => Side::Outside,
                };
                let w = usize::from(worker);
                if w == self.me || w >= self.workers {
                    self.counters.count_drop(DropReason::HandoffFull);
                } else {
                    self.handoff(w, as_side, m);
                }
            }
            Verdict::Drop(DropReason::TtlExceeded) => {
                self.icmp_reply(side, m, now, icmp_type::TIME_EXCEEDED, 0, 0)
            }
            Verdict::Drop(
                DropReason::QuotaExceeded | DropReason::OutOfPorts | DropReason::TableFull,
            ) if self.refusal_icmp && side == Side::Inside && self.untranslated_source(&m) => {
                // Communication administratively prohibited: the application learns at once
                // instead of retrying into a limit. (Not for the second half of a hairpin,
                // refused at the target's limit: its source is already translated.)
                self.icmp_reply(side, m, now, icmp_type::DEST_UNREACHABLE, 13, 0)
            }
            Verdict::Drop(_) => {}
        }
    }

    /// Whether the frame's IPv4 source is still an inside address (not one the translator wrote).
    fn untranslated_source(&self, m: &Mbuf) -> bool {
        m.data().get(L3 + 12..L3 + 16).is_some_and(|b| {
            !self
                .shard
                .is_outside_address(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        })
    }

    /// Move a bounded batch of the shard's events to the control plane's queue, as many as it has
    /// room for.
    fn export_events(&mut self) {
        let Some(q) = &self.events else {
            return;
        };
        if self.shard.pending_events() == 0 {
            return;
        }
        let room = q.capacity() - q.len();
        if room == 0 {
            return;
        }
        self.event_buf.clear();
        self.shard
            .drain_events(&mut self.event_buf, room.min(EVENT_BATCH));
        for e in self.event_buf.drain(..) {
            // Single producer: the room counted above is still there.
            let _ = q.push(e);
        }
    }

    /// One bounded step of the current control-plane command (taking the next one when idle).
    fn run_command(&mut self) {
        let Some(ctl) = &self.control else {
            return;
        };
        // `is_empty` first: an empty `pop` costs a full memory fence, on every loop otherwise (the
        // worker is the only consumer, so a queue seen non-empty stays so until it pops).
        if !ctl.policy.is_empty()
            && let Some(p) = ctl.policy.pop()
        {
            match self
                .shard
                .set_policy(Arc::clone(&p.rules), p.params, Arc::clone(&p.dnat))
            {
                Ok(()) => {
                    let mut arp = p.outside_proxy_arp.clone();
                    arp.sort_unstable();
                    self.ports[Side::Outside as usize].proxy_arp = arp;
                    self.masq_addr = p
                        .masquerade
                        .then_some(self.local_addrs[Side::Outside as usize]);
                    self.refusal_icmp = p.refusal_icmp;
                    ctl.policy_seq.store(p.seq, Ordering::Release);
                }
                Err(_) => ctl.policy_refused.store(p.seq, Ordering::Release),
            }
        }
        let watched = ctl.session_events.load(Ordering::Relaxed);
        if watched != self.session_events {
            self.session_events = watched;
            self.shard.set_log_sessions(watched);
        }
        if self.active.is_none() {
            if ctl.commands.is_empty() {
                return;
            }
            match ctl.commands.pop() {
                Some(cmd) => {
                    self.active = Some(Active {
                        cmd,
                        cursor: 0,
                        count: 0,
                    })
                }
                None => return,
            }
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        // Room for this step's records plus the final Done.
        let room = (ctl.replies.capacity() - ctl.replies.len()) as u32;
        if room < 2 {
            return;
        }
        let (id, next) = match a.cmd {
            Command::List { id, filter } => {
                let next =
                    self.shard
                        .scan_sessions(a.cursor, QUERY_BUDGET, room - 1, &filter, |record| {
                            // Single producer: the room counted above is still there.
                            let _ = ctl.replies.push(Reply::Session { id, record });
                            a.count += 1;
                        });
                (id, next)
            }
            Command::Delete { id, filter } => {
                let (next, n) = self.shard.delete_sessions(a.cursor, QUERY_BUDGET, &filter);
                a.count += u64::from(n);
                (id, next)
            }
        };
        match next {
            Some(c) => a.cursor = c,
            None => {
                let _ = ctl.replies.push(Reply::Done { id, count: a.count });
                self.active = None;
            }
        }
    }

    /// Free held fragments whose first fragment never came.
    fn expire_fragments(&mut self, now: u64) {
        let now_ms = (now - self.start_tsc) / self.tsc_per_ms;
        for r in &mut self.reasm {
            let n = r.expire(now_ms, drop);
            if n > 0 {
                self.counters
                    .count_drops(DropReason::FragmentTimeout, n as u64);
            }
        }
    }

    /// The worker owning the flow of an IPv4 frame: inside by subscriber, outside by outside port.
    #[inline]
    fn owner(&self, side: Side, m: &Mbuf, later: Option<L4Ids>) -> usize {
        let ip = &m.data()[L3..];
        let dnat = self.shard.dnat();
        if !dnat.is_empty()
            && let Some(o) = self.dnat_owner(side, ip, later)
        {
            return o;
        }
        if let (Side::Outside, Some(ids)) = (side, later) {
            // A later fragment carries no ports: those of its first fragment name the owner. For
            // TCP/UDP the destination port is ours; for an echo, the identifier.
            let port = if ip.get(9) == Some(&wire::ip_proto::ICMP) {
                ids.sport
            } else {
                ids.dport
            };
            return nat::port_owner(port, self.workers as u16) as usize;
        }
        match side {
            Side::Inside => match inside_owner_addr(ip) {
                Some(a) => subscriber_owner(a, self.workers),
                None => self.me,
            },
            Side::Outside => match outside_port_of(ip) {
                Some(p) => nat::port_owner(p, self.workers as u16) as usize,
                None => self.me,
            },
        }
    }

    /// The owner of a destination NAT flow, when the packet is one: outside, a packet to a rule's
    /// address belongs to the worker of its client; inside, a backend's packet belongs to the worker of
    /// the client it answers (or, towards a pool address, the worker owning that port, as a full-NAT
    /// or hairpinned client's endpoint is). The shard hands a backend's own new flows on to its
    /// subscriber owner.
    #[cold]
    fn dnat_owner(&self, side: Side, ip: &[u8], later: Option<L4Ids>) -> Option<usize> {
        let dnat = self.shard.dnat();
        let addr = |o: usize| {
            ip.get(o..o + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (src, dst) = (addr(12)?, addr(16)?);
        let workers = self.workers as u16;
        match side {
            // On a pool address only the rule's own port is the rule's; the rest are mappings.
            Side::Outside
                if dnat.is_vip(dst)
                    && (!self.shard.is_pool_address(dst)
                        || dnat
                            .find(
                                dst,
                                *ip.get(9)?,
                                match later {
                                    Some(ids) => ids.dport,
                                    None => outside_port_of(ip)?,
                                },
                            )
                            .is_some()) =>
            {
                Some(nat::client_owner(src, workers) as usize)
            }
            Side::Inside if dnat.is_backend(src) => {
                if self.shard.is_pool_address(dst) {
                    let port = match later {
                        Some(ids) if ip.get(9) == Some(&wire::ip_proto::ICMP) => ids.sport,
                        Some(ids) => ids.dport,
                        // The port a pool address is addressed on, as from outside.
                        None => outside_port_of(ip)?,
                    };
                    Some(nat::port_owner(port, workers) as usize)
                } else {
                    Some(nat::client_owner(dst, workers) as usize)
                }
            }
            _ => None,
        }
    }

    #[inline]
    fn handoff(&mut self, owner: usize, side: Side, mut m: Mbuf) {
        m.set_port(self.port_ids[side as usize]);
        if self.handoff_out[owner].is_full() {
            self.flush_handoff_to(owner);
        }
        if self.handoff_out[owner].push(m).is_err() {
            self.counters.count_drop(DropReason::HandoffFull);
        }
    }

    fn flush_handoff(&mut self) {
        for j in 0..self.handoff_out.len() {
            if !self.handoff_out[j].is_empty() {
                self.flush_handoff_to(j);
            }
        }
    }

    fn flush_handoff_to(&mut self, j: usize) {
        // Every peer has a ring; only `j == self.worker` has none, and a worker never hands off
        // to itself. Were it to, the frames would be freed and counted (as handoff_full), not leaked.
        let Some(ring) = self.to_peer.get(j).and_then(|r| r.as_ref()) else {
            let n = self.handoff_out[j].len();
            self.handoff_out[j].clear();
            self.counters.count_drops(DropReason::HandoffFull, n as u64);
            return;
        };
        let sent = ring.enqueue_burst(&mut self.handoff_out[j]);
        self.counters.add(Counter::HandoffOut, sent as u64);
        let left = self.handoff_out[j].len();
        if left > 0 {
            self.handoff_out[j].clear();
            self.counters
                .count_drops(DropReason::HandoffFull, left as u64);
        }
    }

    /// Every worker keeps its own neighbour table, so an ARP frame one worker receives is copied to
    /// the others (rare, control traffic: the copy's allocation is fine here).
    ///
    /// Only well-formed ARP is copied: a malformed frame teaches nothing and is counted once, by
    /// [`Worker::arp`], not once per worker. A copy goes straight onto the peer's ring, not into
    /// the handoff burst with real frames, so that a copy that cannot be made or delivered is
    /// counted `arp_copies_lost` instead of as the drop of a packet (the original was handled);
    /// that peer learns the neighbour from a later ARP instead.
    fn share_arp(&mut self, side: Side, m: &Mbuf) {
        if ArpPacket::new_checked(&m.data()[L3..]).is_err() {
            return;
        }
        let mut lost = 0;
        for j in 0..self.workers {
            if j == self.me {
                continue;
            }
            let Some(ring) = self.to_peer.get(j).and_then(|r| r.as_ref()) else {
                lost += 1;
                continue;
            };
            let Some(mut c) = self.pool.alloc() else {
                lost += 1;
                continue;
            };
            let src = m.data();
            let Some(dst) = c.append(src.len()) else {
                lost += 1;
                continue;
            };
            dst.copy_from_slice(src);
            c.set_port(self.port_ids[side as usize]);
            let mut one = MbufBurst::<1>::new();
            let _ = one.push(c);
            // A copy the ring refuses is freed with `one`.
            if ring.enqueue_burst(&mut one) == 1 {
                self.counters.add(Counter::HandoffOut, 1);
            } else {
                lost += 1;
            }
        }
        if lost > 0 {
            self.counters.add(Counter::ArpCopiesLost, lost);
        }
    }

    #[inline]
    fn classify(&self, side: Side, m: &Mbuf, from_peer: bool) -> Class {
        let p = &self.ports[side as usize];
        let d = m.data();
        let Ok(eth) = EthernetFrame::new_checked(d) else {
            return Class::Drop(DropReason::FrameTruncated);
        };
        let dst = eth.dst_addr();
        // A peer's frame was checked on arrival; a hairpin handed over for its outside half still
        // carries the inside port's MAC.
        if from_peer {
            return match eth.ethertype() {
                ethertype::ARP => Class::Arp,
                _ => Class::Ipv4,
            };
        }
        if dst != p.mac && dst.is_unicast() {
            return Class::Drop(DropReason::NotForUs);
        }
        if !m.is_contiguous() {
            return Class::Drop(DropReason::MultiSegment);
        }
        match eth.ethertype() {
            ethertype::IPV4 => {
                if dst != p.mac {
                    // Broadcast or multicast IPv4 is never translated.
                    return Class::Drop(DropReason::NotForUs);
                }
                // The destination sits at bytes 16..20 of the IP header; short frames are left for the
                // parser to reject with the precise reason.
                match d.get(L3 + 16..L3 + 20) {
                    Some(b) => {
                        let dst = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                        if !self.local_addrs.contains(&dst) {
                            Class::Ipv4
                        } else if Some(dst) == self.masq_addr && !is_echo_request(&d[L3..]) {
                            // The address is also the pool: replies to subscribers' flows, and
                            // hairpins to them, are the translator's.
                            Class::Ipv4
                        } else {
                            Class::Local
                        }
                    }
                    _ => Class::Ipv4,
                }
            }
            ethertype::ARP => Class::Arp,
            _ => Class::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Answer requests for our addresses and learn neighbours (RFC 826), then release the frame. A copy
    /// from a peer worker (`learn_only`) is never answered: the worker that received it did that.
    fn arp(&mut self, side: Side, mut m: Mbuf, now: u64, learn_only: bool) {
        let p = &mut self.ports[side as usize];
        let Ok(arp) = ArpPacket::new_checked(&m.data()[L3..]) else {
            self.counters.count_drop(DropReason::ArpMalformed);
            return;
        };
        let (op, sip, smac, tip) = (
            arp.operation(),
            u32::from(arp.sender_protocol_addr()),
            arp.sender_hardware_addr(),
            u32::from(arp.target_protocol_addr()),
        );
        let for_us = tip == p.addr || (tip != sip && p.proxy_arp.binary_search(&tip).is_ok());
        // Learn only on-link unicast senders: a request for us, or any ARP from a neighbour we already
        // track (replies and gratuitous updates).
        if p.routes.is_on_link(sip)
            && sip != p.addr
            && smac.is_unicast()
            && (for_us || p.neigh.lookup(sip).is_some() || op == arp_op::REPLY)
        {
            p.neigh.learn(sip, smac, now);
            self.release_held(side, sip);
        }
        let p = &mut self.ports[side as usize];
        if op == arp_op::REQUEST && for_us && !learn_only {
            local::arp_reply_in_place(m.data_mut(), p.mac, Ipv4Addr::from(tip));
            self.counters.add(Counter::ArpRepliesSent, 1);
            self.enqueue(side, m);
        }
    }

    /// Packets addressed to the appliance: answer pings, drop the rest.
    fn local(&mut self, side: Side, mut m: Mbuf) {
        if local::echo_reply_in_place(m.data_mut()) {
            self.counters.add(Counter::LocalEchoReplies, 1);
            self.enqueue(side, m);
        } else {
            self.counters.count_drop(DropReason::LocalUnhandled);
        }
    }

    /// Send a translated frame out of `egress`: pick the next hop, resolve its MAC, rewrite Ethernet.
    #[inline]
    fn route(&mut self, egress: Side, m: Mbuf, now: u64) {
        let e = egress as usize;
        let nh = match self.next_hop(egress, &m) {
            Ok(nh) => nh,
            Err(r) => return self.counters.count_drop(r),
        };
        if let Some(mac) = self.resolved_in_burst(egress, nh) {
            return self.send_to(egress, m, mac);
        }
        match self.ports[e].neigh.resolve(nh, now) {
            Resolution::Known(mac) => {
                self.resolved[e] = Some((nh, mac));
                self.send_to(egress, m, mac)
            }
            Resolution::KnownRefresh(mac) => {
                self.send_to(egress, m, mac);
                self.arp_request(egress, nh);
            }
            Resolution::Request => {
                self.arp_request(egress, nh);
                self.hold(egress, nh, m, now);
            }
            Resolution::Pending => self.hold(egress, nh, m, now),
        }
    }

    /// The next hop on `egress` towards a translated frame's destination.
    #[inline(always)]
    fn next_hop(&self, egress: Side, m: &Mbuf) -> Result<u32, DropReason> {
        // The translator parsed the header, so the address is there; one bounds check, not four.
        let b = m
            .data()
            .get(L3 + 16..L3 + 20)
            .ok_or(DropReason::FrameTruncated)?;
        self.ports[egress as usize]
            .routes
            .next_hop(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(DropReason::NoRoute)
    }

    /// The MAC `nh` was resolved to earlier in this burst ([`Worker`]'s `resolved`).
    #[inline(always)]
    fn resolved_in_burst(&self, egress: Side, nh: u32) -> Option<EthernetAddress> {
        self.resolved[egress as usize].and_then(|(ip, mac)| (ip == nh).then_some(mac))
    }

    #[inline]
    fn send_to(&mut self, egress: Side, mut m: Mbuf, mac: EthernetAddress) {
        // Every frame sent here was parsed as IPv4 or ARP, so it has an Ethernet header.
        if !set_macs(&mut m, mac, self.ports[egress as usize].mac) {
            self.counters.count_drop(DropReason::FrameTruncated);
            return;
        }
        self.enqueue(egress, m);
    }

    /// Per packet: the push alone, inline; a full TX burst is sent first, out of line.
    #[inline(always)]
    fn enqueue(&mut self, side: Side, m: Mbuf) {
        let out = &mut self.ports[side as usize].out;
        if out.is_full() {
            return self.enqueue_after_flush(side, m);
        }
        // Cannot fail: not full.
        let _ = out.push(m);
    }

    #[inline(never)]
    fn enqueue_after_flush(&mut self, side: Side, m: Mbuf) {
        self.flush(side);
        if self.ports[side as usize].out.push(m).is_err() {
            self.counters.count_drop(DropReason::TxFull);
        }
    }

    fn flush(&mut self, side: Side) {
        let p = &mut self.ports[side as usize];
        if !p.out.is_empty() {
            transmit(&self.counters, &mut p.tx, &mut p.out);
        }
    }

    fn hold(&mut self, egress: Side, nh: u32, m: Mbuf, now: u64) {
        let p = &mut self.ports[egress as usize];
        if p.held.len() < HOLD_MAX {
            p.held.push((nh, now, m));
        } else {
            self.counters.count_drop(DropReason::NeighbourUnresolved);
        }
    }

    fn release_held(&mut self, side: Side, ip: u32) {
        let p = &mut self.ports[side as usize];
        if p.held.is_empty() {
            return;
        }
        let Some(mac) = p.neigh.lookup(ip) else {
            return;
        };
        // In arrival order: a flow's frames waiting for one neighbour must leave as they came
        // (swap_remove would send the last first). At most HOLD_MAX frames, on a rare path.
        let mut i = 0;
        while i < self.ports[side as usize].held.len() {
            if self.ports[side as usize].held[i].0 == ip {
                let (_, _, m) = self.ports[side as usize].held.remove(i);
                self.send_to(side, m, mac);
            } else {
                i += 1;
            }
        }
    }

    /// Frames held longer than three ARP retries are dropped: the next hop is not answering.
    fn expire_held(&mut self, now: u64) {
        let limit = self.tsc_hz * 3;
        for p in &mut self.ports {
            if p.held.is_empty() {
                continue;
            }
            let before = p.held.len();
            p.held.retain(|(_, t, _)| now.saturating_sub(*t) < limit);
            let dropped = before - p.held.len();
            if dropped > 0 {
                self.counters
                    .count_drops(DropReason::NeighbourUnresolved, dropped as u64);
            }
        }
    }

    fn arp_request(&mut self, side: Side, target: u32) {
        let Some(mut m) = self.pool.alloc() else {
            self.counters.count_drop(DropReason::NoMbuf);
            return;
        };
        let p = &self.ports[side as usize];
        let (mac, addr) = (p.mac, Ipv4Addr::from(p.addr));
        let Some(buf) = m.append(local::MIN_FRAME) else {
            self.counters.count_drop(DropReason::NoMbuf);
            return;
        };
        local::arp_request(buf, mac, addr, Ipv4Addr::from(target));
        self.counters.add(Counter::ArpRequestsSent, 1);
        self.enqueue(side, m);
    }

    /// A packet larger than the MTU of the port it must leave by: with DF set, answer "fragmentation
    /// needed" with that MTU (RFC 1191, so the sender's path MTU discovery works through us); without,
    /// fragment it (RFC 791) and send the fragments on, each translated as a fragment. Packets with IP
    /// options are refused rather than fragmented (which options to copy is per option; none of the
    /// traffic a CGNAT carries uses them).
    #[allow(clippy::too_many_arguments)]
    fn too_big(
        &mut self,
        side: Side,
        m: Mbuf,
        mtu: u16,
        from_peer: bool,
        now: u64,
        now_s: u32,
        now_ms: u64,
    ) {
        let Ok(h) = Ipv4Packet::new_checked(&m.data()[L3..]) else {
            // A total length beyond the frame: the translator names the reason.
            self.counters.count_drop(DropReason::Ipv4BadTotalLength);
            return;
        };
        if !h.verify_checksum() {
            // Never split (and so re-checksum) a corrupted header.
            self.counters.count_drop(DropReason::Ipv4BadChecksum);
            return;
        }
        let (df, options, len) = (h.dont_frag(), h.header_len() != 20, h.total_len());
        // Pieces of a datagram that would run past the 65535-byte limit would overlap.
        let past_end = usize::from(h.frag_offset()) + usize::from(len) - 20 > 65535;
        if df || options || past_end || mtu < 68 {
            self.counters.count_drop(DropReason::MtuExceeded);
            if df {
                self.icmp_reply(side, m, now, icmp_type::DEST_UNREACHABLE, 4, u32::from(mtu));
            }
            return;
        }
        for (off, n) in local::fragment_plan(usize::from(len) - 20, mtu) {
            let Some(mut f) = self.pool.alloc() else {
                self.counters.count_drop(DropReason::NoMbuf);
                return;
            };
            let Some(dst) = f.append(L3 + 20 + n) else {
                self.counters.count_drop(DropReason::NoMbuf);
                return;
            };
            let src = m.data();
            local::write_fragment(src, &src[L3..], off, n, dst);
            f.set_port(m.port());
            self.counters.add(Counter::FragmentsCreated, 1);
            self.admit_ipv4(side, f, from_peer, now, now_s, now_ms);
        }
    }

    /// Answer a packet with an ICMP error (type/code, `rest` as the second header word) from the
    /// address of the port it arrived on (for TTL expiry that is the hop traceroute shows), back to the
    /// neighbour it came from. Rate-limited, and never about ICMP errors, fragments or broadcasts.
    fn icmp_reply(&mut self, side: Side, mut m: Mbuf, now: u64, ty: u8, code: u8, rest: u32) {
        let d = m.data();
        let ip_part = &d[L3..];
        let limit = if ty == icmp_type::DEST_UNREACHABLE && code == 4 {
            &mut self.frag_needed_limit
        } else {
            &mut self.icmp_limit
        };
        if !local::may_send_icmp_error(ip_part) || !limit.allow(now) {
            return;
        }
        let Ok(ip) = Ipv4Packet::new_checked(ip_part) else {
            return;
        };
        let dst = ip.src_addr();
        let quote_len = (ip.total_len() as usize).min(local::ICMP_ERROR_MAX_QUOTE);
        let mut quote = [0u8; local::ICMP_ERROR_MAX_QUOTE];
        quote[..quote_len].copy_from_slice(&ip_part[..quote_len]);
        let eth = EthernetFrame::new_unchecked(d);
        let back_to = eth.src_addr();
        let p = &self.ports[side as usize];
        let (mac, addr) = (p.mac, Ipv4Addr::from(p.addr));
        let need = L3 + 28 + quote_len;
        let have = m.data_len();
        if need > have {
            if m.append(need - have).is_none() {
                self.counters.count_drop(DropReason::NoMbuf);
                return;
            }
        } else {
            m.truncate(need);
        }
        local::icmp_error(
            m.data_mut(),
            mac,
            back_to,
            addr,
            dst,
            ty,
            code,
            rest,
            &quote[..quote_len],
        );
        self.counters.add(Counter::IcmpErrorsSent, 1);
        self.enqueue(side, m);
    }
}

#[cfg(test)]
mod tests {
    use super::{L3, addressed_to, is_echo_request, mac_word};

    #[test]
    fn the_fast_path_takes_frames_for_the_port_mac_and_no_other() {
        let mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x31];
        let word = mac_word(&mac);
        let mut frame = [0u8; L3 + 20];
        frame[..6].copy_from_slice(&mac);
        // Whatever the source MAC: only the first six bytes are the destination.
        for src in [[0u8; 6], [0xff; 6], [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]] {
            frame[6..12].copy_from_slice(&src);
            assert!(addressed_to(&frame, word), "source {src:02x?}");
        }
        for i in 0..6 {
            let mut other = frame;
            other[i] ^= 0x01;
            assert!(
                !addressed_to(&other, word),
                "destination differs in byte {i}"
            );
        }
        let mut broadcast = frame;
        broadcast[..6].fill(0xff);
        assert!(
            !addressed_to(&broadcast, word),
            "broadcast is not the fast path"
        );
    }

    fn icmp(ty: u8, flags: [u8; 2]) -> Vec<u8> {
        let mut b = vec![0u8; 28];
        b[0] = 0x45;
        b[6..8].copy_from_slice(&flags);
        b[9] = 1;
        b[20] = ty;
        b
    }

    #[test]
    fn only_whole_echo_requests_to_the_masquerade_address_are_answered_locally() {
        assert!(
            is_echo_request(&icmp(8, [0x40, 0])),
            "DF set is still whole"
        );
        assert!(
            !is_echo_request(&icmp(0, [0, 0])),
            "replies belong to subscribers"
        );
        assert!(
            !is_echo_request(&icmp(3, [0, 0])),
            "errors belong to subscribers"
        );
        assert!(!is_echo_request(&icmp(8, [0x20, 0])), "first fragment");
        assert!(!is_echo_request(&icmp(8, [0, 0x10])), "later fragment");
        let mut udp = icmp(8, [0, 0]);
        udp[9] = 17;
        assert!(!is_echo_request(&udp));
        assert!(!is_echo_request(&[0x45, 0, 0]), "truncated");
    }
}
