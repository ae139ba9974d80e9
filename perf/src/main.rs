//! cgnat-bench: the NAT translation pipeline measured on one core, in memory.
//!
//! It drives the real `nat::Shard::process` over bursts of 32 mbuf-shaped buffers (2 KiB each, the
//! IPv4 packet at offset 14, 64-byte UDP frames) and reports, for each table size N:
//!
//! * **established-flow rate**, in2out and out2in: a table filled with N UDP flows, each burst
//!   carrying 32 flows taken in turn from a random permutation of all N (every flow is visited once
//!   per pass, in an order unrelated to where its session lives: the cache-hostile case of many
//!   subscribers), with DPDK's `rte_prefetch0` (`dpdk::prefetch0`) and, for comparison, with
//!   `nat::NoPrefetch`;
//! * **new-session rate**: a second shard with room for N + N/8 flows is pre-filled with N, then
//!   N/8 more flows from another subscriber range are created in 4 successive chunks (shuffled
//!   order), each chunk timed: the table holds 100 % to 112.5 % of the stated size meanwhile;
//! * **sustained new sessions at a full table**: a third shard sized for exactly N holds N flows,
//!   an eighth of them idle past their timeout; as many new flows are created while the expiry
//!   sweep ends the idle ones, as a worker interleaves them (creation and expiry timed together);
//! * **memory per session**: `Shard::memory()` of the first shard (sized for exactly N) divided by N,
//!   all tables included, and the growth of the process RSS while it was built and filled;
//! * **expiry**, on that shard once the rates are measured: what the expiry sweeps cost per slot
//!   while nothing is due (and so what share of a core they take at their pace), then how fast the
//!   whole table's sessions are ended once idle, and their mappings released after the hold-down,
//!   driven as cgnatd's worker drives them (`nat::EXPIRY_BUDGET` slots per call);
//! * with `--remotes R`, all of the above with each inside endpoint talking to R servers, so that a
//!   mapping carries R sessions (by default every flow is a mapping of its own);
//! * with `--memory-probe`, first, **the machine's memory**: random 64-byte reads in buffers of about
//!   the tables' size at each scale, one after another (latency) and in prefetched bursts of 32
//!   (what the memory system delivers to a burst pipeline), so the NAT's figures can be read
//!   against what the machine allows.
//!
//! The translator rewrites packets in place, so each burst's 32 packets are written into the buffers
//! before the call, from a per-direction tuple list laid out in visiting order (read sequentially, so
//! producing packets costs no cache misses). The same loop without the NAT is measured too and
//! reported; "NAT only" subtracts it.
//!
//! Limitations: one core, no NIC and no DPDK mbuf headers (the buffers are plain memory, which is
//! all the NAT core touches); packets are written by the CPU just before translation, so they are
//! in L1 — a NIC's DMA leaves them in the last-level cache at best. The tables are heap memory
//! advised for transparent huge pages, as in cgnatd (`--no-thp` shows the difference); whether the
//! kernel grants them depends on `/sys/kernel/mm/transparent_hugepage/enabled`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use nat::{
    Counter, Counters, Dir, NoPrefetch, PacketBatch, Pool, Prefetch, Rules, Shard, ShardConfig,
    SnatRule, Verdict,
};
use serde_json::{Value, json};
use wire::{Ipv4Addr, Ipv4Packet, UdpPacket, checksum, ip_proto};

const BURST: usize = 32;
/// Where the IPv4 header starts in a frame (after the Ethernet header), as in an mbuf.
const L3: usize = 14;
/// A 64-byte frame without its FCS.
const FRAME: usize = 60;
/// mbuf data room of DPDK's default pools.
const BUF: usize = 2048;
const SERVER: u32 = 0xc633_640a; // 198.51.100.10
const SERVER_PORT: u16 = 53;
/// Subscribers of the pre-filled flows start at 100.64.0.0, those of the new flows at 100.96.0.0:
/// both inside the SNAT rule's 100.64.0.0/10, never the same endpoints ([`check_ranges`] refuses
/// sizes whose subscribers would not fit).
const BASE_FILL: u32 = 0x6440_0000;
const BASE_NEW: u32 = 0x6460_0000;
/// The end of 100.64.0.0/10.
const BASE_END: u32 = 0x6480_0000;
const FIRST_PORT: u16 = 1024;
/// Ports handed out per pool address (1024-65535).
const PORTS_PER_ADDR: u64 = 64512;
/// New-session chunks per measurement.
const CHUNKS: u32 = 4;
/// The smallest table whose endings (mass expiry) and sustained churn are timed: below it they
/// take a few tens of microseconds, one sample that a single interrupt distorts tenfold.
const MIN_TIMED: u32 = 8192;

#[derive(Parser, Debug)]
#[command(
    name = "cgnat-bench",
    about = "Benchmark the cgnat translation pipeline (nat::Shard::process) on one core"
)]
struct Cli {
    /// Table sizes (sessions); K and M suffixes (binary) allowed.
    #[arg(long, value_delimiter = ',', default_value = "1K,64K,1M,16M")]
    sizes: Vec<String>,
    /// Seconds per established-rate measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Flows (sessions) per subscriber address.
    #[arg(long, default_value_t = 256)]
    flows_per_subscriber: u32,
    /// Remote endpoints per inside endpoint: each of a subscriber's source ports talks to this
    /// many servers, so that every mapping carries this many sessions. 1 (the default) makes
    /// every flow a mapping of its own, the case the goals are stated for.
    #[arg(long, default_value_t = 1)]
    remotes: u32,
    /// Also measure with `nat::NoPrefetch`, to show what the pipeline's prefetching buys.
    #[arg(long)]
    no_prefetch_too: bool,
    /// Do not ask for transparent huge pages for the tables (cgnatd always asks).
    #[arg(long)]
    no_thp: bool,
    /// First measure this machine's memory: random 64-byte reads in buffers about the size of the
    /// tables (dependent: the latency; batched with prefetch: what a burst pipeline can reach).
    #[arg(long)]
    memory_probe: bool,
}

/// `rte_prefetch0`, through the dpdk crate (needs no EAL): what the data plane's prefetch does.
struct Prefetch0;

impl Prefetch for Prefetch0 {
    #[inline(always)]
    fn prefetch<T>(r: &T) {
        dpdk::prefetch0(r);
    }
}

fn parse_size(s: &str) -> Result<u32> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    let n = num
        .parse::<u64>()
        .with_context(|| format!("size {s:?}"))?
        .saturating_mul(mul);
    // The new-session shard holds N + N/8; keep it below the 2^26 cgnatd accepts.
    if !(32..=(32 << 20)).contains(&n) {
        bail!("size {s} must be between 32 and 32M sessions");
    }
    Ok(n as u32)
}

/// A burst of owned 2 KiB buffers: what the NAT sees of mbufs.
struct Bufs(Vec<Vec<u8>>);

impl Bufs {
    fn new(n: usize) -> Bufs {
        Bufs((0..n).map(|_| vec![0u8; BUF]).collect())
    }
}

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

/// Write a 64-byte UDP frame (src → dst) into `buf`, with a full IPv4 header checksum and a UDP
/// checksum over the pseudo-header, header and (zero) payload, as Linux and most traffic send
/// them: the translator then updates both incrementally. (Until 2026-12-07 the frames carried no
/// UDP checksum, which the translator leaves alone: about ten instructions per packet that the
/// benchmark did not measure.)
///
/// Both checksums are summed from the field values, not read back from the buffer: reading
/// eight bytes that several narrower stores have just written defeats store-to-load forwarding,
/// and the load then waits for the store buffer to drain. A NIC's DMA has no such stall. Alone
/// (the loop without the NAT) this function went from about 14 to 4-5 ns per packet; the loop
/// with the NAT did not measurably change, so "NAT only", the difference, grew by about as much.
#[inline]
fn write_udp(buf: &mut [u8], src: u32, sport: u16, dst: u32, dport: u16) {
    let ip_len = FRAME - L3;
    // The 16-bit words of the header as written below, checksum field zero.
    let words = [
        0x4500u32,
        ip_len as u32,
        0,
        0,
        (64 << 8) | u32::from(ip_proto::UDP),
        src >> 16,
        src & 0xffff,
        dst >> 16,
        dst & 0xffff,
    ];
    let ip_checksum = checksum::finish(words.iter().sum());
    let udp_len = (ip_len - 20) as u32;
    // Pseudo-header (addresses, protocol, length), then the header (ports, length, checksum zero).
    let udp_words = [
        src >> 16,
        src & 0xffff,
        dst >> 16,
        dst & 0xffff,
        u32::from(ip_proto::UDP),
        udp_len,
        u32::from(sport),
        u32::from(dport),
        udp_len,
    ];
    // A computed zero is sent as all ones (zero means "no checksum").
    let udp_checksum = match checksum::finish(udp_words.iter().sum()) {
        0 => 0xffff,
        c => c,
    };
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
    ip.set_checksum(ip_checksum);
    let mut u = UdpPacket::new_unchecked(&mut buf[L3 + 20..FRAME]);
    u.set_src_port(sport);
    u.set_dst_port(dport);
    u.set_len(udp_len as u16);
    u.set_checksum(udp_checksum);
    // The payload the checksum was summed for.
    buf[L3 + 28..FRAME].fill(0);
}

/// The workload: flow `i` of a range is subscriber `base + i / per_sub`; its `k = i % per_sub`-th
/// flow goes from source port `FIRST_PORT + k / remotes` to server `SERVER + k % remotes`, port
/// SERVER_PORT. So a subscriber has `per_sub / remotes` inside endpoints (mappings), each with
/// `remotes` sessions.
#[derive(Clone, Copy)]
struct Flows {
    base: u32,
    per_sub: u32,
    remotes: u32,
}

impl Flows {
    fn new(base: u32, cli: &Cli) -> Flows {
        Flows {
            base,
            per_sub: cli.flows_per_subscriber,
            remotes: cli.remotes,
        }
    }

    #[inline]
    fn inside(&self, i: u32) -> (u32, u16) {
        (
            self.base + i / self.per_sub,
            FIRST_PORT + (i % self.per_sub / self.remotes) as u16,
        )
    }

    #[inline]
    fn remote(&self, i: u32) -> u32 {
        SERVER + i % self.per_sub % self.remotes
    }

    /// The flow with this inside endpoint and server, if it is one of the range's.
    fn index(&self, addr: u32, port: u16, server: u32) -> Option<u32> {
        let sub = addr.checked_sub(self.base)?;
        let ep = u32::from(port.checked_sub(FIRST_PORT)?);
        let r = server.checked_sub(SERVER)?;
        (ep < self.per_sub / self.remotes && r < self.remotes)
            .then(|| sub * self.per_sub + ep * self.remotes + r)
    }

    fn subscribers(&self, n: u32) -> u32 {
        n.div_ceil(self.per_sub)
    }

    /// Inside endpoints (mappings) of the range's first `n` flows.
    fn mappings(&self, n: u32) -> u32 {
        n.div_ceil(self.remotes)
    }
}

/// A shuffled visiting order over `n` flows (xorshift-driven Fisher-Yates, fixed seed).
fn permutation(n: u32, seed: u64) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n).collect();
    let mut r = seed | 1;
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
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A shard for `capacity` flows of `subscribers` subscribers and `mappings` inside endpoints (as
/// an operator who knows the ratio sets `max_mappings`), its pool large enough that every address
/// stays about half used at capacity (so port allocation never runs dry and rarely retries).
fn shard(capacity: u32, subscribers: u32, mappings: u32, thp: bool) -> Result<Shard> {
    let addrs = (capacity as u64 * 2).div_ceil(PORTS_PER_ADDR).max(4) as u32;
    let pool = Pool::new(
        "bench",
        (0..addrs).map(|a| 0xcb00_0000 + a).collect(),
        1024,
        65535,
    );
    let rules = Rules::new(
        vec![pool],
        vec![SnatRule {
            prefix: 0x6440_0000,
            len: 10,
            pool: 0,
            ..Default::default()
        }],
    )?;
    let cfg = ShardConfig {
        max_sessions: capacity,
        max_mappings: mappings,
        // Paired pooling may move a subscriber whose address is full; a little slack for that.
        max_subscribers: subscribers + subscribers / 8 + 16,
        seed: 0x5eed_1234_abcd_ef01,
        ..ShardConfig::default()
    };
    let advise: Option<nat::MemAdvice> = if thp {
        Some(dpdk::advise_hugepages)
    } else {
        None
    };
    Ok(Shard::with_memory_advice(
        cfg,
        Arc::new(rules),
        Arc::new(Counters::default()),
        0,
        advise,
    )?)
}

/// Buffers of the memory probe, each with the smallest table size it stands for: cache-resident
/// tables (about 8K sessions all-in); 1M sessions (121 MiB all-in, of which an established packet
/// touches the 64 MiB slab and index); 16M sessions (1.9 GiB all-in, 1 GiB slab and index).
const PROBE_BYTES: [(usize, u32); 3] = [(1 << 20, 0), (128 << 20, 1 << 20), (2 << 30, 16 << 20)];

/// The line a probe read picks: a finaliser of a counter, so that no address waits for the one
/// before it (a serial random-number chain would be a latency of its own).
#[inline(always)]
fn probe_line(i: u64, mask: u64) -> usize {
    let mut k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    k ^= k >> 29;
    k = k.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    k ^= k >> 32;
    (k & mask) as usize * 8
}

/// The next burst of the memory probe: the word positions of 32 random lines (from counter `i`
/// on), each prefetched.
#[inline(always)]
fn prefetched_burst(buf: &[u64], i: &mut u64, mask: u64) -> [usize; BURST] {
    let mut burst = [0usize; BURST];
    for a in burst.iter_mut() {
        *a = probe_line(*i, mask);
        *i += 1;
        Prefetch0::prefetch(&buf[*a]);
    }
    burst
}

/// Random 64-byte reads in a buffer of `bytes` (advised for transparent huge pages like the
/// tables, which covers every buffer but the 1 MiB one): `dependent_ns`, each address computed from
/// the value read before (the load-to-use latency the pipeline must hide), and `batched_ns`, bursts
/// of 32 independent reads all prefetched before any is used (the pipeline's access pattern: what
/// the memory system delivers with as many misses in flight as it allows). `batched_write_ns` is
/// the same with every line also written: a dirtied line is written back when it is evicted, so
/// it costs the memory system a second transfer. That is what an index insert or a new session
/// does to a line no packet brought into cache (an established packet only writes its session's
/// `last_seen`). Medians of short samples.
fn memory_probe(bytes: usize, thp: bool) -> Result<Value> {
    let words = bytes / 8;
    // A power of two (PROBE_BYTES), so that a mask, not a division, picks the line.
    let mask = (words / 8 - 1) as u64;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(words)
        .with_context(|| format!("memory probe: {} MiB buffer", bytes >> 20))?;
    if thp {
        dpdk::advise_hugepages(buf.as_ptr() as usize, bytes);
    }
    // Written, not just allocated: untouched pages would all read the kernel's one zero page.
    buf.resize(words, 1);
    const BATCHES: u64 = 1 << 15;
    const STEPS: u64 = 1 << 17;
    // Short samples, the median of several: one disturbed moment on a shared machine must not
    // become the figure.
    const SAMPLES: usize = 7;
    let (mut batched, mut written, mut dependent) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0u64;
    let mut at = 0usize;
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let mut sum = 0u64;
        for _ in 0..BATCHES {
            for a in prefetched_burst(&buf, &mut i, mask) {
                sum = sum.wrapping_add(buf[a]);
            }
        }
        black_box(sum);
        batched.push(t.elapsed().as_secs_f64() * 1e9 / (BATCHES * BURST as u64) as f64);
        let t = Instant::now();
        for _ in 0..BATCHES {
            for a in prefetched_burst(&buf, &mut i, mask) {
                buf[a] = buf[a].wrapping_add(1);
            }
        }
        black_box(&buf);
        written.push(t.elapsed().as_secs_f64() * 1e9 / (BATCHES * BURST as u64) as f64);
        let t = Instant::now();
        for _ in 0..STEPS {
            // The next address depends on the value just read, so the reads cannot overlap.
            at = probe_line(i.wrapping_add(buf[at]), mask);
            i += 1;
        }
        black_box(at);
        dependent.push(t.elapsed().as_secs_f64() * 1e9 / STEPS as f64);
    }
    Ok(json!({
        "bytes": bytes, "samples": SAMPLES,
        "dependent_ns": median(dependent), "batched_ns": median(batched),
        "batched_write_ns": median(written),
    }))
}

/// Create sessions for the flows `ids` of `flows` (bursts of 32, in2out), failing on any drop.
/// Returns the time spent in `Shard::process`.
fn create<P: Prefetch>(
    sh: &mut Shard,
    bufs: &mut Bufs,
    flows: Flows,
    ids: &[u32],
    now: u32,
) -> Result<Duration> {
    let mut verdicts = [Verdict::Forward; BURST];
    let mut spent = Duration::ZERO;
    for chunk in ids.chunks(BURST) {
        bufs.0.truncate(chunk.len());
        for (j, &f) in chunk.iter().enumerate() {
            let (s, p) = flows.inside(f);
            write_udp(&mut bufs.0[j], s, p, flows.remote(f), SERVER_PORT);
        }
        let t = Instant::now();
        sh.process::<_, P>(Dir::In2Out, bufs, &mut verdicts[..chunk.len()], now);
        spent += t.elapsed();
        if let Some((j, v)) = verdicts[..chunk.len()]
            .iter()
            .enumerate()
            .find(|(_, v)| **v != Verdict::Forward)
        {
            bail!(
                "creating flow {} of {}: {v:?} ({} sessions in the table)",
                chunk[j],
                ids.len(),
                sh.session_count()
            );
        }
    }
    bufs.0.resize_with(BURST, || vec![0u8; BUF]);
    Ok(spent)
}

/// Packets per second over `secs`, visiting `seq` (one tuple per packet, in order, wrapping):
/// in2out packets come from the tuple's endpoint to its server, out2in packets from the server to
/// the endpoint. With `nat == false` only the packet writing runs.
fn established<P: Prefetch>(
    sh: &mut Shard,
    bufs: &mut Bufs,
    dir: Dir,
    seq: &[(u32, u16, u32)],
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
            for buf in bufs.0.iter_mut() {
                let (a, p, server) = seq[pos];
                pos += 1;
                if pos == seq.len() {
                    pos = 0;
                }
                match dir {
                    Dir::In2Out => write_udp(buf, a, p, server, SERVER_PORT),
                    Dir::Out2In => write_udp(buf, server, SERVER_PORT, a, p),
                }
            }
            if nat {
                sh.process::<_, P>(dir, bufs, &mut verdicts, 0);
                forwarded += verdicts.iter().filter(|v| **v == Verdict::Forward).count() as u64;
            } else {
                black_box(&mut *bufs);
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

/// Established-flow rates and memory for a table of exactly `n` flows.
fn measure_established(cli: &Cli, n: u32) -> Result<Value> {
    let flows = Flows::new(BASE_FILL, cli);
    let rss0 = rss_bytes();
    let thp0 = dpdk::thp_backed_bytes();
    let mut sh = shard(n, flows.subscribers(n), flows.mappings(n), !cli.no_thp)?;
    let mut bufs = Bufs::new(BURST);
    let all: Vec<u32> = (0..n).collect();
    let t = Instant::now();
    let fill_time = create::<Prefetch0>(&mut sh, &mut bufs, flows, &all, 0)?;
    let fill_wall = t.elapsed();
    drop(all);
    let rss = rss_bytes().saturating_sub(rss0);
    // How much of that growth transparent huge pages back (None: the kernel does not say).
    let thp = thp0
        .zip(dpdk::thp_backed_bytes())
        .map(|(a, b)| b.saturating_sub(a));
    let mem = sh.memory();

    // Per-direction tuples in visiting order. The outside tuple of each flow comes from its session.
    let mut outside = vec![(0u32, 0u16, 0u32); n as usize];
    let mut seen = 0u32;
    for s in sh.sessions() {
        let i = flows.index(s.in_addr, s.in_port, s.rem_addr);
        if let Some(slot) = i.and_then(|i| outside.get_mut(i as usize)) {
            *slot = (s.out_addr, s.out_port, s.rem_addr);
            seen += 1;
        }
    }
    if seen != n {
        bail!("{seen} sessions found after filling {n}");
    }
    let order = permutation(n, 0x9E37_79B9_7F4A_7C15);
    let seq_in: Vec<(u32, u16, u32)> = order
        .iter()
        .map(|&f| {
            let (a, p) = flows.inside(f);
            (a, p, flows.remote(f))
        })
        .collect();
    let seq_out: Vec<(u32, u16, u32)> = order.iter().map(|&f| outside[f as usize]).collect();
    drop((order, outside));

    let mut fig = |dir: Dir, nat: bool, prefetch: bool| -> Result<f64> {
        let seq = match dir {
            Dir::In2Out => &seq_in,
            Dir::Out2In => &seq_out,
        };
        let mut v = Vec::new();
        for _ in 0..cli.repeat.max(1) {
            v.push(if prefetch {
                established::<Prefetch0>(&mut sh, &mut bufs, dir, seq, cli.seconds, nat)?
            } else {
                established::<NoPrefetch>(&mut sh, &mut bufs, dir, seq, cli.seconds, nat)?
            });
        }
        Ok(median(v))
    };
    let write_in = fig(Dir::In2Out, false, true)?;
    let write_out = fig(Dir::Out2In, false, true)?;
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
    let nat_only = |total: f64, write: f64| 1e9 / total - 1e9 / write;
    let per = |b: usize| b as f64 / n as f64;
    let all_in = mem.sessions + mem.session_index + mem.subscribers + mem.ports + mem.events;
    let mut out = json!({
        "in2out_mpps": in2out / 1e6,
        "out2in_mpps": out2in / 1e6,
        "in2out_ns_per_packet": 1e9 / in2out,
        "out2in_ns_per_packet": 1e9 / out2in,
        "packet_write_ns": { "in2out": 1e9 / write_in, "out2in": 1e9 / write_out },
        "nat_only_ns": { "in2out": nat_only(in2out, write_in), "out2in": nat_only(out2in, write_out) },
        "no_prefetch": {
            "in2out_mpps": np_in.map(|x| x / 1e6),
            "out2in_mpps": np_out.map(|x| x / 1e6),
        },
        "fill": {
            "sessions_per_s_in_process": n as f64 / fill_time.as_secs_f64().max(1e-9),
            "wall_s": fill_wall.as_secs_f64(),
        },
        "memory": {
            "bytes": {
                "records": mem.sessions, "index": mem.session_index,
                "subscribers": mem.subscribers,
                "ports": mem.ports, "events": mem.events,
            },
            "per_session": {
                "flow_table": per(mem.sessions + mem.session_index),
                "subscribers": per(mem.subscribers),
                "port_maps": per(mem.ports),
                "events": per(mem.events),
                "all_in": per(all_in),
                "rss_growth": rss as f64 / n as f64,
            },
            "rss_growth_bytes": rss,
            "thp_growth_bytes": thp,
            "subscribers": sh.subscriber_count(),
            "mappings": sh.mapping_count(),
            "records": sh.record_count(),
        },
    });
    // Last: it ends every flow of the table.
    out["expiry"] = measure_expiry(&mut sh, n)?;
    Ok(out)
}

/// Run the shard's expiry as a worker does, at every tick of `ticks` while it has quota, timing only
/// the calls, until `done` holds after a call. Returns the time and the sessions deleted.
fn sweep_ticks(
    sh: &mut Shard,
    ticks: std::ops::RangeInclusive<u32>,
    done: impl Fn(&Shard) -> bool,
) -> (Duration, u64) {
    let mut spent = Duration::ZERO;
    let mut deleted = 0u64;
    for now in ticks {
        let t = Instant::now();
        while sh.expiry_due(now) {
            deleted += u64::from(sh.expire_with::<Prefetch0>(now, nat::EXPIRY_BUDGET));
            if done(sh) {
                return (spent + t.elapsed(), deleted);
            }
        }
        spent += t.elapsed();
    }
    (spent, deleted)
}

/// The expiry sweeps on a table of `n` live flows (created at tick 0), which this ends:
/// * an idle pass (nothing due): time per slot looked at, and the share of a core the sweeps take
///   at their pace (a full pass of each slab every [`Shard::expiry_lag_seconds`]);
/// * every session idle past its timeout: sessions ended per second of `Shard::expire` until the
///   last one is gone (which includes walking the slots between them, the mappings' records
///   among them);
/// * their mappings' hold-downs over: mappings released per second, likewise.
fn measure_expiry(sh: &mut Shard, n: u32) -> Result<Value> {
    let lag = sh.expiry_lag_seconds();
    let udp = sh.config().timeouts.udp;
    let hold = sh.config().hold_down_s;
    if udp <= 2 * lag {
        bail!("the UDP timeout ({udp} s) must outlast two sweep passes ({lag} s each)");
    }
    let never = |_: &Shard| false;
    // The pass that tick 0 granted, then one whole pass with nothing due.
    sweep_ticks(sh, 0..=0, never);
    let (idle, gone) = sweep_ticks(sh, 1..=lag, never);
    if gone != 0 || sh.session_count() != n {
        bail!("{gone} sessions expired before their timeout");
    }
    // Each tick granted the sweeps their pace, sessions' and mappings' slabs together.
    let pace = sh.expiry_pace() as f64;
    let per_slot = idle.as_secs_f64() / (pace * f64::from(lag));
    let core_share = per_slot * pace;
    let (ended, deleted) = sweep_ticks(sh, udp..=udp + lag, |sh| sh.session_count() == 0);
    if deleted != u64::from(n) || sh.session_count() != 0 {
        bail!(
            "{deleted} of {n} idle sessions ended within one pass of their timeout ({} left)",
            sh.session_count()
        );
    }
    let held = sh.held_count();
    let (released, _) = sweep_ticks(sh, udp + hold..=udp + hold + lag, |sh| {
        sh.mapping_count() == 0
    });
    if sh.mapping_count() != 0 {
        bail!(
            "{} of {held} held mappings left one pass after the hold-down",
            sh.mapping_count()
        );
    }
    let timed = |count: u32, d: Duration| {
        (n >= MIN_TIMED).then(|| f64::from(count) / d.as_secs_f64().max(1e-9))
    };
    Ok(json!({
        "pass_seconds": lag,
        "idle_ns_per_slot": per_slot * 1e9,
        "idle_core_share": core_share,
        "sessions_ended_per_s": timed(n, ended),
        "mappings_held": held,
        "mappings_released_per_s": timed(held, released),
    }))
}

/// New-session rate with the table pre-filled to `n`: median over chunks (and over fresh fills for
/// tables up to 1M, which fill in well under a second).
fn measure_new(cli: &Cli, n: u32) -> Result<Value> {
    let extra = (n / 8).max(1024);
    let chunk = extra / CHUNKS;
    let old = Flows::new(BASE_FILL, cli);
    let new = Flows::new(BASE_NEW, cli);
    let fills = if n <= 1 << 20 { cli.repeat.max(1) } else { 1 };
    let mut rates = Vec::new();
    for _ in 0..fills {
        let mut sh = shard(
            n + extra,
            old.subscribers(n) + new.subscribers(extra),
            old.mappings(n) + new.mappings(extra),
            !cli.no_thp,
        )?;
        let mut bufs = Bufs::new(BURST);
        let prefill: Vec<u32> = (0..n).collect();
        create::<Prefetch0>(&mut sh, &mut bufs, old, &prefill, 0)?;
        drop(prefill);
        let order = permutation(extra, 0xC2B2_AE3D_27D4_EB4F);
        for c in order.chunks(chunk as usize).take(CHUNKS as usize) {
            let t = create::<Prefetch0>(&mut sh, &mut bufs, new, c, 0)?;
            rates.push(c.len() as f64 / t.as_secs_f64().max(1e-9));
        }
    }
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "sessions_per_s": median(rates.clone()),
        "min": lo,
        "max": hi,
        "samples": rates.len(),
        "created": extra,
        "chunk": chunk,
    }))
}

/// Sustained new sessions at a full table: a shard sized for exactly `n` sessions holds `n` flows,
/// an eighth of them (in bursts scattered over the slab) idle past the UDP timeout; as many new
/// flows are created while the sweep ends the idle ones, as a worker does: before each burst of
/// new flows, expiry calls (`nat::EXPIRY_BUDGET` slots each) until the live sessions and the burst
/// fit in `n`. The rate is new sessions per second of the whole loop, creation and expiry together.
/// The flow slab has a record more per idle flow, for the ended flows' mappings, which stay held (the
/// hold-down) meanwhile. Median over fresh fills
/// for tables up to 1M, as for [`measure_new`].
fn measure_churn(cli: &Cli, n: u32) -> Result<Value> {
    if n < MIN_TIMED {
        return Ok(Value::Null);
    }
    let fills = if n <= 1 << 20 { cli.repeat.max(1) } else { 1 };
    let mut rates = Vec::new();
    let mut replaced = 0;
    for _ in 0..fills {
        let (rate, r) = churn_once(cli, n)?;
        rates.push(rate);
        replaced = r;
    }
    Ok(json!({
        "sessions_per_s": median(rates.clone()),
        "samples": rates,
        "replaced": replaced,
    }))
}

/// One fill of [`measure_churn`]: the rate and the number of sessions replaced.
fn churn_once(cli: &Cli, n: u32) -> Result<(f64, u32)> {
    let old = Flows::new(BASE_FILL, cli);
    let new = Flows::new(BASE_NEW, cli);
    // Fill by bursts, an eighth of them (chosen at random) at tick 0, the rest at tick 10: from the
    // UDP timeout on only the first are due (for the sweep's pass of up to 10 s), spread over the
    // slab 32 sessions at a time.
    let ids: Vec<u32> = (0..n).collect();
    let bursts = ids.chunks(BURST).count() as u32;
    let mut idle = vec![false; bursts as usize];
    for &b in permutation(bursts, 0x2545_F491_4F6C_DD1D)
        .iter()
        .take((bursts / 8).max(1) as usize)
    {
        idle[b as usize] = true;
    }
    let due: u32 = ids
        .chunks(BURST)
        .zip(&idle)
        .filter(|(_, i)| **i)
        .map(|(c, _)| c.len() as u32)
        .sum();
    // Room for the replaced flows' mappings, held meanwhile: records are counted as the
    // operator's sizing rule counts them (live sessions + mappings created per hold-down).
    let mut sh = shard(
        n + due,
        old.subscribers(n) + new.subscribers(due),
        old.mappings(n) + new.mappings(due),
        !cli.no_thp,
    )?;
    let udp = sh.config().timeouts.udp;
    let mut bufs = Bufs::new(BURST);
    for (b, chunk) in ids.chunks(BURST).enumerate() {
        let tick = if idle[b] { 0 } else { 10 };
        create::<Prefetch0>(&mut sh, &mut bufs, old, chunk, tick)?;
    }
    drop(ids);
    let order = permutation(due, 0x9E6C_63D0_676A_9A99);
    // The ticks since the fill grant a whole pass of quota at the UDP timeout; the clock moves on
    // only should that run out before the idle flows are found (compressed: only work is timed).
    let mut now = udp;
    let mut spent = Duration::ZERO;
    for chunk in order.chunks(BURST) {
        // Timed as `create` times its bursts: the shard's calls, not the packet writing.
        let t = Instant::now();
        while sh.session_count() as usize + chunk.len() > n as usize {
            if !sh.expiry_due(now) {
                now += 1;
                if now >= udp + 10 {
                    bail!(
                        "churn: the table is full and a whole pass found nothing ({} sessions)",
                        sh.session_count()
                    );
                }
                continue;
            }
            sh.expire_with::<Prefetch0>(now, nat::EXPIRY_BUDGET);
        }
        spent += t.elapsed();
        // Fails unless every new flow was forwarded.
        spent += create::<Prefetch0>(&mut sh, &mut bufs, new, chunk, now)?;
    }
    // The table started full, so every new flow needed an ending first.
    if sh.session_count() > n || sh.counters().get(Counter::SessionsDeleted) < u64::from(due) {
        bail!(
            "churn: {} sessions in a table of {n}, {} ended of the {due} idle",
            sh.session_count(),
            sh.counters().get(Counter::SessionsDeleted)
        );
    }
    Ok((f64::from(due) / spent.as_secs_f64().max(1e-9), due))
}

/// The pre-filled flows' subscribers (100.64.0.0 up) must end before the new flows' (100.96.0.0
/// up), and those before the end of 100.64.0.0/10: with too few flows per subscriber the "new"
/// flows of a large table would be flows already in it, and the new-session rate would measure
/// established packets.
fn check_ranges(largest: u32, per_sub: u32) -> Result<()> {
    let fill = largest.div_ceil(per_sub);
    let new = (largest / 8).max(1024).div_ceil(per_sub);
    if fill > BASE_NEW - BASE_FILL || new > BASE_END - BASE_NEW {
        bail!(
            "--flows-per-subscriber {per_sub} is too few for {largest} sessions: the table's {fill} \
             subscribers (100.64.0.0 up) and the new flows' {new} (100.96.0.0 up) must each fit in \
             {} addresses; use at least {}",
            BASE_NEW - BASE_FILL,
            largest.div_ceil(BASE_NEW - BASE_FILL)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.flows_per_subscriber == 0 || cli.flows_per_subscriber > 4096 {
        bail!("--flows-per-subscriber must be 1 .. 4096 (the default per-subscriber port limit)");
    }
    // Servers are SERVER + 0 .. remotes - 1, within one /24.
    if !(1..=128).contains(&cli.remotes) || cli.flows_per_subscriber % cli.remotes != 0 {
        bail!(
            "--remotes must be 1 .. 128 and divide --flows-per-subscriber ({})",
            cli.flows_per_subscriber
        );
    }
    let mut sizes = Vec::new();
    for s in &cli.sizes {
        sizes.push(parse_size(s)?);
    }
    let largest = sizes.iter().copied().max().unwrap_or(0);
    check_ranges(largest, cli.flows_per_subscriber)?;
    let mut probe = Vec::new();
    if cli.memory_probe {
        // Only the buffers standing for table sizes this run measures.
        for (bytes, stands_for) in PROBE_BYTES.into_iter().filter(|&(_, n)| n <= largest) {
            let mut p = memory_probe(bytes, !cli.no_thp)?;
            // The table size this buffer stands for (0: cache-resident), so the report needs no
            // copy of PROBE_BYTES.
            p["stands_for_sessions"] = json!(stands_for);
            eprintln!(
                "memory {:>5} MiB: dependent {:6.1} ns, batched {:5.1} ns per read, {:5.1} ns per \
                 read and write",
                bytes >> 20,
                p["dependent_ns"].as_f64().unwrap_or(f64::NAN),
                p["batched_ns"].as_f64().unwrap_or(f64::NAN),
                p["batched_write_ns"].as_f64().unwrap_or(f64::NAN)
            );
            probe.push(p);
        }
    }
    let mut results = Vec::new();
    for n in sizes {
        let est = measure_established(&cli, n)?;
        let mut new = measure_new(&cli, n)?;
        new["churn"] = measure_churn(&cli, n)?;
        eprintln!(
            "{n:>9} sessions: in2out {:6.2} Mpps ({:5.1} ns), out2in {:6.2} Mpps ({:5.1} ns), new {:5.2} M/s, {:.1} B/session all-in",
            est["in2out_mpps"].as_f64().unwrap_or(f64::NAN),
            est["in2out_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            est["out2in_mpps"].as_f64().unwrap_or(f64::NAN),
            est["out2in_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            new["sessions_per_s"].as_f64().unwrap_or(f64::NAN) / 1e6,
            est["memory"]["per_session"]["all_in"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        results.push(json!({ "sessions": n, "established": est, "new_sessions": new }));
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "pipeline": results,
            "memory_probe": probe,
            "config": {
                "burst": BURST, "frame_bytes": FRAME + 4, "buffer_bytes": BUF, "l3_offset": L3,
                "flows_per_subscriber": cli.flows_per_subscriber, "remotes": cli.remotes,
                "seconds": cli.seconds,
                "repeat": cli.repeat, "thp_requested": !cli.no_thp, "thp_sysfs": thp,
                "new_session_chunks": CHUNKS,
            },
        }))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1K").unwrap(), 1024);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("0").is_err());
        assert!(parse_size("64M").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn subscriber_ranges_that_would_overlap_are_refused() {
        // The default and every size up to 16M fit; 4 flows per subscriber at 16M would make the
        // "new" flows existing ones.
        assert!(check_ranges(16 << 20, 256).is_ok());
        assert!(check_ranges(16 << 20, 8).is_ok());
        let e = check_ranges(16 << 20, 4).unwrap_err().to_string();
        assert!(
            e.contains("--flows-per-subscriber 4") && e.contains("at least 8"),
            "{e}"
        );
        assert!(check_ranges(1 << 20, 1).is_ok());
        assert!(check_ranges(4 << 20, 1).is_err());
    }

    #[test]
    fn written_frames_are_valid_udp_over_ipv4() {
        // The header checksum is summed from the field values; it must equal one computed over
        // the bytes, or the translator would be fed (and count) bad packets.
        let mut buf = vec![0u8; BUF];
        for (src, dst) in [
            (0x6440_0001, SERVER),
            (SERVER, 0xffff_fffe),
            (0, 0xc0a8_0101),
        ] {
            write_udp(&mut buf, src, 40000, dst, 53);
            let ip = Ipv4Packet::new_checked(&buf[L3..FRAME]).unwrap();
            assert!(ip.verify_checksum(), "{src:#x} -> {dst:#x}");
            assert_eq!(u32::from(ip.src_addr()), src);
            assert_eq!(u32::from(ip.dst_addr()), dst);
            assert_eq!(ip.protocol(), ip_proto::UDP);
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!((u.src_port(), u.dst_port()), (40000, 53));
            assert_ne!(u.checksum(), 0, "the frames carry a UDP checksum");
            assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
        }
        // The payload the checksum covers is zero whatever the buffer held before.
        buf.fill(0xa5);
        write_udp(&mut buf, 0x6440_0001, 40000, SERVER, 53);
        let ip = Ipv4Packet::new_checked(&buf[L3..FRAME]).unwrap();
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
    }

    #[test]
    fn permutation_visits_every_flow_once() {
        let mut p = permutation(1000, 7);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn filled_table_forwards_both_ways_and_reports_memory() {
        let cli = Cli::parse_from(["cgnat-bench", "--seconds", "0.01", "--repeat", "1"]);
        let est = measure_established(&cli, 2048).unwrap();
        assert!(est["in2out_mpps"].as_f64().unwrap() > 0.0);
        assert!(est["out2in_mpps"].as_f64().unwrap() > 0.0);
        let per = &est["memory"]["per_session"];
        assert!(per["all_in"].as_f64().unwrap() >= per["flow_table"].as_f64().unwrap());
        assert_eq!(est["memory"]["mappings"].as_u64().unwrap(), 2048);
        // One record per 1:1 flow: each session is embedded in its mapping.
        assert_eq!(est["memory"]["records"].as_u64().unwrap(), 2048);
        // Every session ended and every mapping was held, then released (measure_expiry checks
        // both and fails otherwise).
        let exp = &est["expiry"];
        assert_eq!(exp["mappings_held"].as_u64().unwrap(), 2048);
        // A 2K table ends too fast to time; its endings are checked, not timed.
        assert!(exp["sessions_ended_per_s"].is_null());
        assert!(exp["idle_core_share"].as_f64().unwrap() > 0.0);
        let new = measure_new(&cli, 2048).unwrap();
        assert_eq!(new["samples"].as_u64().unwrap(), u64::from(CHUNKS));
        // Too small a table for the churn figure: none rather than a noisy one.
        assert!(measure_churn(&cli, 2048).unwrap().is_null());
        // An eighth of the table replaced while it stays full; churn_once fails unless every new
        // flow was forwarded and as many idle ones ended.
        let churn = measure_churn(&cli, MIN_TIMED).unwrap();
        assert_eq!(
            churn["replaced"].as_u64().unwrap(),
            u64::from(MIN_TIMED / 8)
        );
        assert!(churn["sessions_per_s"].as_f64().unwrap() > 0.0);
        assert!(new["sessions_per_s"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn many_remotes_share_their_endpoints_mappings() {
        let cli = Cli::parse_from([
            "cgnat-bench",
            "--seconds",
            "0.01",
            "--repeat",
            "1",
            "--remotes",
            "16",
        ]);
        let flows = Flows::new(BASE_FILL, &cli);
        // Every flow is a distinct (endpoint, server) pair, and index() inverts the numbering.
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096 {
            let (a, p) = flows.inside(i);
            assert!(seen.insert((a, p, flows.remote(i))));
            assert_eq!(flows.index(a, p, flows.remote(i)), Some(i));
        }
        let est = measure_established(&cli, 2048).unwrap();
        assert!(est["in2out_mpps"].as_f64().unwrap() > 0.0);
        assert!(est["out2in_mpps"].as_f64().unwrap() > 0.0);
        assert_eq!(est["memory"]["mappings"].as_u64().unwrap(), 2048 / 16);
        let new = measure_new(&cli, 2048).unwrap();
        assert!(new["sessions_per_s"].as_f64().unwrap() > 0.0);
    }

    #[test]
    fn translated_packet_is_valid_and_comes_back() {
        let flows = Flows {
            base: BASE_FILL,
            per_sub: 4,
            remotes: 1,
        };
        let mut sh = shard(64, 16, 64, false).unwrap();
        let mut bufs = Bufs::new(BURST);
        create::<NoPrefetch>(&mut sh, &mut bufs, flows, &[5], 0).unwrap();
        let s = *sh.sessions().next().unwrap();
        assert_eq!((s.in_addr, s.in_port), flows.inside(5));
        // A reply to the outside endpoint is translated back to the subscriber, checksum intact.
        let mut one = Bufs::new(1);
        write_udp(&mut one.0[0], SERVER, SERVER_PORT, s.out_addr, s.out_port);
        let mut v = [Verdict::Forward; 1];
        sh.process::<_, NoPrefetch>(Dir::Out2In, &mut one, &mut v, 0);
        assert_eq!(v[0], Verdict::Forward);
        let ip = Ipv4Packet::new_checked(&one.0[0][L3..FRAME]).unwrap();
        assert_eq!(u32::from(ip.dst_addr()), flows.inside(5).0);
        assert!(ip.verify_checksum());
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(u.dst_port(), flows.inside(5).1);
        assert!(u.verify_checksum(ip.src_addr(), ip.dst_addr()));
    }
}
