//! The run-to-completion worker loop of one lcore.
//!
//! Per iteration, for each port the worker owns a queue on: `rx_burst` up to 32 frames, prefetch them,
//! classify (ARP, IPv4 for translation, IPv4 for us, drop), translate the IPv4 batch through the shard,
//! route and resolve the next hop, and queue the frame on the egress port's TX burst. TX bursts are
//! flushed at the end of the iteration; what the NIC does not take is freed and counted. Idle-session
//! expiry and neighbour upkeep run with a bounded budget every iteration. Nothing here allocates, locks,
//! makes a system call or logs per packet.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk::{BURST, Mbuf, MbufBurst, Mempool, RxQueue, TxQueue};
use nat::{Counter, Counters, Dir, DropReason, PacketBatch, Prefetch, Shard, Verdict};
use wire::{ArpPacket, EthernetAddress, EthernetFrame, Ipv4Packet, arp_op, ethertype, icmp_type};

use crate::local::{self, L3, RateLimit};
use crate::neighbour::{NeighbourTable, Resolution};
use crate::route::RouteTable;

/// Sessions looked at per iteration by the expiry walk: enough to keep up with a million sessions
/// expiring over minutes, small enough (a few microseconds) never to delay a burst noticeably.
const EXPIRY_BUDGET: u32 = 256;
/// Packets held per port while their next hop is being resolved.
const HOLD_MAX: usize = 64;

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
}

/// Everything a worker needs to drive one port.
pub struct PortSetup {
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub mac: EthernetAddress,
    pub addr: Ipv4Addr,
    pub routes: RouteTable,
    /// Extra addresses this port answers ARP for (pool addresses inside the outside subnet).
    pub proxy_arp: Vec<u32>,
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
}

struct PortCtx {
    rx: RxQueue,
    tx: TxQueue,
    mac: EthernetAddress,
    addr: u32,
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

/// The IPv4 packets of a burst as the NAT sees them: from the IP header on.
struct L3Batch<'a>(&'a mut MbufBurst<BURST>);

impl PacketBatch for L3Batch<'_> {
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
    tsc_hz: u64,
    start_tsc: u64,
    rx: MbufBurst<BURST>,
    ipv4: MbufBurst<BURST>,
    local_addrs: [u32; 2],
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
        let counters = shard.counters().clone();
        let mk = |p: PortSetup| {
            let mut proxy_arp = p.proxy_arp;
            proxy_arp.sort_unstable();
            PortCtx {
                rx: p.rx,
                tx: p.tx,
                mac: p.mac,
                addr: p.addr.into(),
                routes: p.routes,
                proxy_arp,
                neigh: NeighbourTable::new(
                    cfg.neighbour_reachable_s.saturating_mul(tsc_hz),
                    cfg.neighbour_retransmit_ms.saturating_mul(tsc_hz) / 1000,
                    65536,
                ),
                out: MbufBurst::new(),
                held: Vec::with_capacity(HOLD_MAX),
            }
        };
        let inside = mk(cfg.inside);
        let outside = mk(cfg.outside);
        let local_addrs = [inside.addr, outside.addr];
        Worker {
            shard,
            ports: [inside, outside],
            counters,
            pool,
            stop,
            icmp_limit: RateLimit::new(cfg.icmp_errors_per_s, cfg.icmp_errors_per_s.max(1), tsc_hz),
            tsc_hz,
            start_tsc: dpdk::time::tsc(),
            rx: MbufBurst::new(),
            ipv4: MbufBurst::new(),
            local_addrs,
        }
    }

    /// Poll until the stop flag is raised. Returns the shard so the caller can inspect it afterwards.
    pub fn run(mut self) -> Shard {
        while !self.stop.load(Ordering::Relaxed) {
            let now = dpdk::time::tsc();
            let now_s = ((now - self.start_tsc) / self.tsc_hz) as u32;
            let mut busy = self.poll(Side::Inside, now, now_s);
            busy += self.poll(Side::Outside, now, now_s);
            self.flush(Side::Inside);
            self.flush(Side::Outside);
            self.shard.expire(now_s, EXPIRY_BUDGET);
            self.expire_held(now);
            self.counters.add(Counter::Loops, 1);
            if busy > 0 {
                self.counters.add(Counter::BusyLoops, 1);
            }
        }
        for side in [Side::Inside, Side::Outside] {
            self.flush(side);
        }
        self.shard
    }

    #[inline]
    fn poll(&mut self, side: Side, now: u64, now_s: u32) -> usize {
        let s = side as usize;
        let n = self.ports[s].rx.rx_burst(&mut self.rx);
        if n == 0 {
            return 0;
        }
        self.counters.add(Counter::RxPackets, n as u64);
        for m in self.rx.iter() {
            m.prefetch_data();
        }
        let mut rx = std::mem::take(&mut self.rx);
        for m in rx.drain(..) {
            match self.classify(side, &m) {
                Class::Ipv4 => {
                    // Cannot fail: the burst has the same capacity as rx.
                    let _ = self.ipv4.push(m);
                }
                Class::Arp => self.arp(side, m, now),
                Class::Local => self.local(side, m),
                Class::Drop(r) => self.counters.count_drop(r),
            }
        }
        self.rx = rx;
        if self.ipv4.is_empty() {
            return n;
        }

        let dir = match side {
            Side::Inside => Dir::In2Out,
            Side::Outside => Dir::Out2In,
        };
        let mut verdicts = [Verdict::Forward; BURST];
        let mut ipv4 = std::mem::take(&mut self.ipv4);
        self.shard
            .process::<_, DpdkPrefetch>(dir, &mut L3Batch(&mut ipv4), &mut verdicts, now_s);
        for (m, v) in ipv4.drain(..).zip(verdicts) {
            match v {
                Verdict::Forward => self.route(side.other(), m, now),
                Verdict::Drop(DropReason::TtlExceeded) => self.time_exceeded(side, m, now),
                Verdict::Drop(_) => {}
            }
        }
        self.ipv4 = ipv4;
        n
    }

    #[inline]
    fn classify(&self, side: Side, m: &Mbuf) -> Class {
        let p = &self.ports[side as usize];
        let d = m.data();
        let Ok(eth) = EthernetFrame::new_checked(d) else {
            return Class::Drop(DropReason::FrameTruncated);
        };
        let dst = eth.dst_addr();
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
                    Some(b)
                        if self
                            .local_addrs
                            .contains(&u32::from_be_bytes([b[0], b[1], b[2], b[3]])) =>
                    {
                        Class::Local
                    }
                    _ => Class::Ipv4,
                }
            }
            ethertype::ARP => Class::Arp,
            _ => Class::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Answer requests for our addresses and learn neighbours (RFC 826), then release the frame.
    fn arp(&mut self, side: Side, mut m: Mbuf, now: u64) {
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
        if op == arp_op::REQUEST && for_us {
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
        let dst = {
            let d = m.data();
            u32::from_be_bytes([d[L3 + 16], d[L3 + 17], d[L3 + 18], d[L3 + 19]])
        };
        let Some(nh) = self.ports[e].routes.next_hop(dst) else {
            self.counters.count_drop(DropReason::NoRoute);
            return;
        };
        match self.ports[e].neigh.resolve(nh, now) {
            Resolution::Known(mac) => self.send_to(egress, m, mac),
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

    #[inline]
    fn send_to(&mut self, egress: Side, mut m: Mbuf, mac: EthernetAddress) {
        let src = self.ports[egress as usize].mac;
        let mut eth = EthernetFrame::new_unchecked(m.data_mut());
        eth.set_dst_addr(mac);
        eth.set_src_addr(src);
        self.enqueue(egress, m);
    }

    #[inline]
    fn enqueue(&mut self, side: Side, m: Mbuf) {
        if self.ports[side as usize].out.is_full() {
            self.flush(side);
        }
        if self.ports[side as usize].out.push(m).is_err() {
            self.counters.count_drop(DropReason::TxFull);
        }
    }

    fn flush(&mut self, side: Side) {
        let p = &mut self.ports[side as usize];
        if p.out.is_empty() {
            return;
        }
        let sent = p.tx.tx_burst(&mut p.out);
        self.counters.add(Counter::TxPackets, sent as u64);
        let unsent = p.out.len();
        if unsent > 0 {
            p.out.clear();
            self.counters.count_drops(DropReason::TxFull, unsent as u64);
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
        let mut i = 0;
        while i < self.ports[side as usize].held.len() {
            if self.ports[side as usize].held[i].0 == ip {
                let (_, _, m) = self.ports[side as usize].held.swap_remove(i);
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

    /// Answer a packet whose TTL ran out here with ICMP time exceeded, from the address of the port it
    /// arrived on (that is the hop traceroute shows), back to the neighbour it came from.
    fn time_exceeded(&mut self, side: Side, mut m: Mbuf, now: u64) {
        let d = m.data();
        let ip_part = &d[L3..];
        if !local::may_send_icmp_error(ip_part) || !self.icmp_limit.allow(now) {
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
            icmp_type::TIME_EXCEEDED,
            0,
            0,
            &quote[..quote_len],
        );
        self.counters.add(Counter::IcmpErrorsSent, 1);
        self.enqueue(side, m);
    }
}
