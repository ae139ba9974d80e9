//! cgnat-bench: the NAT translation pipeline measured on one core, in memory.
//!
//! It drives the real `nat::Shard::process` over bursts of 32 mbuf-shaped buffers (2 KiB each, the
//! IPv4 packet at offset 14, 64-byte UDP frames), with DPDK's prefetch (`dataplane::DpdkPrefetch`),
//! and reports for each table size:
//!
//! * established-flow rate in2out and out2in: every burst carries 32 flows drawn in a random order
//!   over the whole table (a uniformly random access pattern, the cache-hostile case);
//! * new-session rate while the table grows from 90 % to 100 % of the stated size;
//! * memory per session: slab + index + port maps, and the process RSS growth.
//!
//! Packets are written into the burst buffers before each call (the translation rewrites them in
//! place); the time to write them is measured separately with the same loop minus the NAT and
//! subtracted, and both figures are reported.
//!
//! Limitations: one core, no NIC, no DPDK mbuf headers (the buffers are plain memory, which is what
//! the NAT core touches); the table and slab are heap memory advised for transparent huge pages, as
//! in cgnatd (`--no-thp` shows the difference).
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use dataplane::DpdkPrefetch;
use nat::{
    Counters, Dir, FlowKey, NoPrefetch, PacketBatch, Pool, Prefetch, Rules, Shard, ShardConfig,
    SnatRule, Timeouts, Verdict,
};
use serde_json::json;
use wire::{Ipv4Addr, Ipv4Packet, UdpPacket, ip_proto};

const BURST: usize = 32;
const L3: usize = 14;
const FRAME: usize = 60; // 64-byte frame without FCS
const SERVER: u32 = 0xc633_640a; // 198.51.100.10
const FLOWS_PER_SUB: u32 = 256;

#[derive(Parser, Debug)]
#[command(
    name = "cgnat-bench",
    about = "Benchmark the cgnat translation pipeline on one core"
)]
struct Cli {
    /// Table sizes (sessions); K and M suffixes allowed.
    #[arg(long, value_delimiter = ',', default_value = "1K,64K,1M,16M")]
    sizes: Vec<String>,
    /// Seconds per established-rate measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also measure without prefetching, to show what the pipeline's prefetch buys.
    #[arg(long)]
    no_prefetch_too: bool,
    /// Do not ask for transparent huge pages for the slab and index (cgnatd always asks).
    #[arg(long)]
    no_thp: bool,
}

fn parse_size(s: &str) -> Result<u32> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1024u64),
        Some('M' | 'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse::<u64>()? * mul;
    if n == 0 || n > 64 * 1024 * 1024 {
        bail!("size {s} out of range");
    }
    Ok(n as u32)
}

/// Burst of owned 2 KiB buffers: what the NAT sees of mbufs.
struct Bufs(Vec<Vec<u8>>);

impl PacketBatch for Bufs {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn packet(&self, i: usize) -> &[u8] {
        &self.0[i][L3..FRAME]
    }
    fn packet_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.0[i][L3..FRAME]
    }
}

/// Write a 64-byte UDP frame (src → dst) into `buf`, with a full IPv4 header checksum and no UDP
/// checksum (as many generators send), which is what the translator then updates incrementally.
#[inline]
fn write_udp(buf: &mut [u8], src: u32, sport: u16, dst: u32, dport: u16) {
    let ip_len = FRAME - L3;
    buf[12] = 0x08;
    buf[13] = 0x00;
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[L3..FRAME]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_dscp_ecn(0);
    ip.set_total_len(ip_len as u16);
    ip.set_ident(0);
    ip.set_flags_and_frag(false, false, 0);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(Ipv4Addr::from(src));
    ip.set_dst_addr(Ipv4Addr::from(dst));
    ip.fill_checksum();
    let mut u = UdpPacket::new_unchecked(&mut buf[L3 + 20..FRAME]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_len((ip_len - 20) as u16);
    u.set_checksum(0);
}

fn flow(i: u32) -> (u32, u16) {
    (
        0x6440_0000 + i / FLOWS_PER_SUB,
        1024 + (i % FLOWS_PER_SUB) as u16,
    )
}

/// A shuffled visiting order over `n` flows (xorshift-driven Fisher-Yates, fixed seed).
fn permutation(n: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut r = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..v.len()).rev() {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
    v
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Bench {
    n: u32,
    shard: Shard,
    outside: Vec<(u32, u16)>,
    bufs: Bufs,
}

impl Bench {
    /// A shard sized for exactly `n` sessions, with enough pool addresses that no address
    /// runs out of ports, filled with `n` established UDP flows. Returns it and the new-session rate
    /// over the last 10 % of the fill.
    fn build(n: u32, thp: bool) -> Result<(Bench, f64)> {
        let addrs = (n / 30_000 + 1).max(4);
        let pool = Pool {
            name: "bench".into(),
            addrs: (0..addrs).map(|a| 0xcb00_0000 + a).collect(),
            port_lo: 1024,
            port_hi: 65535,
        };
        let rules = Rules::new(
            vec![pool],
            vec![SnatRule {
                prefix: 0x6440_0000,
                len: 10,
                pool: 0,
            }],
        )?;
        let cfg = ShardConfig {
            max_sessions: n,
            timeouts: Timeouts::default(),
            worker: 0,
            workers: 1,
            seed: 0x5eed_1234_abcd_ef01,
        };
        let advise: Option<nat::MemAdvice> = if thp {
            Some(dpdk::advise_hugepages)
        } else {
            None
        };
        let mut shard = Shard::with_memory_advice(
            cfg,
            Arc::new(rules),
            Arc::new(Counters::default()),
            0,
            advise,
        )?;
        let mut bufs = Bufs((0..BURST).map(|_| vec![0u8; 2048]).collect());
        let mut verdicts = [Verdict::Forward; BURST];
        let tail_start = n - n / 10;
        let mut tail_time = Duration::ZERO;
        let mut i = 0;
        while i < n {
            let k = (n - i).min(BURST as u32) as usize;
            bufs.0.truncate(k);
            for j in 0..k {
                let (s, p) = flow(i + j as u32);
                write_udp(&mut bufs.0[j], s, p, SERVER, 53);
            }
            let t = Instant::now();
            shard.process::<_, DpdkPrefetch>(Dir::In2Out, &mut bufs, &mut verdicts[..k], 0);
            if i >= tail_start {
                tail_time += t.elapsed();
            }
            if verdicts[..k].iter().any(|v| *v != Verdict::Forward) {
                bail!("fill failed at flow {i}: {:?}", &verdicts[..k]);
            }
            i += k as u32;
        }
        bufs.0.resize_with(BURST, || vec![0u8; 2048]);
        let tail = (n - tail_start) as f64;
        let new_rate = tail / tail_time.as_secs_f64().max(1e-9);
        let mut outside = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (s, p) = flow(i);
            let k = FlowKey {
                src: s,
                dst: SERVER,
                sport: p,
                dport: 53,
                proto: ip_proto::UDP,
            };
            let Some(sess) = shard.find(Dir::In2Out, &k) else {
                bail!("flow {i} has no session after the fill");
            };
            outside.push((sess.out_addr, sess.out_port));
        }
        Ok((
            Bench {
                n,
                shard,
                outside,
                bufs,
            },
            new_rate,
        ))
    }

    /// Packets per second for `dir` over `secs`; with `nat == false` only the packet writing runs.
    fn established<P: Prefetch>(
        &mut self,
        dir: Dir,
        order: &[u32],
        secs: f64,
        nat: bool,
    ) -> Result<f64> {
        let mut verdicts = [Verdict::Forward; BURST];
        let deadline = Duration::from_secs_f64(secs);
        let start = Instant::now();
        let mut pos = 0usize;
        let mut packets = 0u64;
        let mut forwarded = 0u64;
        while start.elapsed() < deadline {
            // 256 bursts between clock reads.
            for _ in 0..256 {
                for j in 0..BURST {
                    let f = order[pos];
                    pos += 1;
                    if pos == order.len() {
                        pos = 0;
                    }
                    match dir {
                        Dir::In2Out => {
                            let (s, p) = flow(f);
                            write_udp(&mut self.bufs.0[j], s, p, SERVER, 53);
                        }
                        Dir::Out2In => {
                            let (a, p) = self.outside[f as usize];
                            write_udp(&mut self.bufs.0[j], SERVER, 53, a, p);
                        }
                    }
                }
                if nat {
                    self.shard
                        .process::<_, P>(dir, &mut self.bufs, &mut verdicts, 0);
                    forwarded += verdicts.iter().filter(|v| **v == Verdict::Forward).count() as u64;
                } else {
                    black_box(&mut self.bufs);
                }
                packets += BURST as u64;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        if nat && forwarded != packets {
            bail!(
                "{} of {packets} packets were not forwarded ({dir:?})",
                packets - forwarded
            );
        }
        Ok(packets as f64 / elapsed)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut results = Vec::new();
    for s in &cli.sizes {
        let n = parse_size(s)?;
        let rss0 = rss_bytes();
        let mut fills = Vec::new();
        let mut bench = None;
        // Small tables fill in microseconds: rebuild a few times for a stable new-session figure.
        let builds = if n <= 1 << 20 { cli.repeat.max(1) } else { 1 };
        for _ in 0..builds {
            let (b, rate) = Bench::build(n, !cli.no_thp)?;
            fills.push(rate);
            bench = Some(b);
        }
        let Some(mut b) = bench else {
            bail!("no bench built")
        };
        let rss = rss_bytes().saturating_sub(rss0);
        let (slab, index, ports) = b.shard.memory_bytes();
        let order = permutation(b.n);
        let mut fig = |dir: Dir, nat: bool, prefetch: bool| -> Result<f64> {
            let mut v = Vec::new();
            for _ in 0..cli.repeat.max(1) {
                v.push(if prefetch {
                    b.established::<DpdkPrefetch>(dir, &order, cli.seconds, nat)?
                } else {
                    b.established::<NoPrefetch>(dir, &order, cli.seconds, nat)?
                });
            }
            Ok(median(v))
        };
        let gen_in = fig(Dir::In2Out, false, true)?;
        let gen_out = fig(Dir::Out2In, false, true)?;
        let in2out = fig(Dir::In2Out, true, true)?;
        let out2in = fig(Dir::Out2In, true, true)?;
        let (np_in, np_out) = if cli.no_prefetch_too {
            (
                Some(fig(Dir::In2Out, true, false)?),
                Some(fig(Dir::Out2In, true, false)?),
            )
        } else {
            (None, None)
        };
        // NAT-only cost per packet: total time minus the time to write the packet.
        let net = |total: f64, write: f64| {
            let ns = 1e9 / total - 1e9 / write;
            (ns, 1e3 / ns)
        };
        let (ns_in, mpps_in) = net(in2out, gen_in);
        let (ns_out, mpps_out) = net(out2in, gen_out);
        let r = json!({
            "sessions": n,
            "in2out_mpps": in2out / 1e6,
            "out2in_mpps": out2in / 1e6,
            "in2out_ns_per_packet": 1e9 / in2out,
            "out2in_ns_per_packet": 1e9 / out2in,
            "packet_write_ns": { "in2out": 1e9 / gen_in, "out2in": 1e9 / gen_out },
            "nat_only": { "in2out_ns": ns_in, "in2out_mpps": mpps_in, "out2in_ns": ns_out, "out2in_mpps": mpps_out },
            "no_prefetch": { "in2out_mpps": np_in.map(|x| x / 1e6), "out2in_mpps": np_out.map(|x| x / 1e6) },
            "new_sessions_per_s": median(fills),
            "memory": {
                "slab_bytes": slab, "index_bytes": index, "port_map_bytes": ports,
                "table_bytes_per_session": (slab + index) as f64 / n as f64,
                "all_in_bytes_per_session": (slab + index + ports) as f64 / n as f64,
                "rss_growth_bytes_per_session": rss as f64 / n as f64,
                "capacity": n,
            },
        });
        eprintln!(
            "{:>9} sessions: in2out {:6.2} Mpps ({:5.1} ns, NAT-only {:5.1} ns), out2in {:6.2} Mpps ({:5.1} ns, NAT-only {:5.1} ns), new {:5.2} M/s, {:.1} B/session",
            n,
            in2out / 1e6,
            1e9 / in2out,
            ns_in,
            out2in / 1e6,
            1e9 / out2in,
            ns_out,
            median(r["new_sessions_per_s"].as_f64().into_iter().collect()) / 1e6,
            (slab + index) as f64 / n as f64,
        );
        results.push(r);
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "pipeline": results }))?
    );
    Ok(())
}
