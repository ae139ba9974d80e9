//! Outside port allocation for one shard.
//!
//! Each (outside address, protocol) has a 65536-bit map; a set bit means "not available" (in use, outside
//! the configured range, or in a block owned by another worker). Ports are owned by workers in blocks of
//! [`BLOCK_PORTS`] consecutive ports, block `b` belonging to worker `b % workers`: the owner of an inbound
//! packet is then a pure function of its destination port, with no shared table to consult.
//!
//! Allocation is random by default (RFC 6056 style, RFC 6888 REQ-15: hard to guess): pick a random word
//! of the map, then the first free bit after a random rotation. The other modes (port preservation,
//! parity preservation, allocation inside a subscriber's port blocks or deterministic range) are the
//! same bit search over a narrower set of words or bits. TCP, UDP and ICMP identifiers are separate
//! spaces, as RFC 4787 allows; a port block reserves its ports in all three.

use wire::ip_proto;

/// Ports per ownership block (one bitmap word).
pub const BLOCK_PORTS: u16 = 64;
const WORDS: usize = 65536 / 64;

/// Which worker owns outside `port` when `workers` workers share the pool.
#[inline]
pub fn port_owner(port: u16, workers: u16) -> u16 {
    (port / BLOCK_PORTS) % workers.max(1)
}

/// Index of a protocol's port space, or `None` for protocols that are not translated.
#[inline]
pub fn proto_index(proto: u8) -> Option<usize> {
    match proto {
        ip_proto::TCP => Some(0),
        ip_proto::UDP => Some(1),
        ip_proto::ICMP => Some(2),
        _ => None,
    }
}

/// A set of outside ports on one address: `runs` runs of [`BLOCK_PORTS`] ports, the first starting at
/// `first_port`, each next one `stride` blocks further (stride 1: one contiguous range). Port blocks of
/// port block allocation and deterministic NAT ranges both take this shape, so that every port of a set
/// is owned by one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSet {
    pub addr: u32,
    pub first_port: u16,
    pub runs: u16,
    pub stride: u16,
}

impl PortSet {
    /// Number of ports.
    pub fn len(&self) -> u32 {
        u32::from(self.runs) * u32::from(BLOCK_PORTS)
    }

    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }

    /// Bitmap word (block number) of run `i`.
    #[inline]
    fn word(&self, i: u32) -> usize {
        (u32::from(self.first_port / BLOCK_PORTS) + i * u32::from(self.stride.max(1))) as usize
    }

    pub fn contains(&self, port: u16) -> bool {
        let (b, f) = (port / BLOCK_PORTS, self.first_port / BLOCK_PORTS);
        let stride = self.stride.max(1);
        b >= f && (b - f) % stride == 0 && (b - f) / stride < self.runs
    }

    /// Every port of the set, in increasing order.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        (0..u32::from(self.runs)).flat_map(move |i| {
            let base = self.word(i) as u32 * u32::from(BLOCK_PORTS);
            (base..base + u32::from(BLOCK_PORTS)).map(|p| p as u16)
        })
    }
}

/// Port block allocation on one address, for this worker: block `j` is `runs` of this worker's
/// 64-port blocks (its lane), `workers` blocks apart.
struct Pba {
    runs: u16,
    lane_first: u16,
    count: u16,
    /// Free block numbers (a stack; taking picks a random element).
    free: Vec<u16>,
    /// Ports allocated (mapped or held) per block.
    used: Vec<u16>,
}

/// One outside address as the allocator is built from: its pool's range, pool index and block size
/// (port block allocation), if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddrSpec {
    pub addr: u32,
    pub lo: u16,
    pub hi: u16,
    pub pool: u8,
    pub block_size: Option<u16>,
}

impl AddrSpec {
    fn shape(&self) -> (u16, u16, Option<u16>) {
        (self.lo.min(self.hi), self.hi.max(self.lo), self.block_size)
    }
}

/// One address's state, as [`PortAllocator`] keeps it spread over parallel vectors.
struct Entry {
    addr: u32,
    pool: u8,
    /// The range and block size the entry was laid out for (its template and block table).
    shape: (u16, u16, Option<u16>),
    maps: [Box<[u64; WORDS]>; 3],
    in_use: u32,
    in_use_p: [u32; 3],
    owned: u32,
    span: (usize, usize),
    pba: Option<Pba>,
}

impl Entry {
    /// An address with nothing allocated: this worker's ports of its range free, the rest marked taken
    /// so the search never offers them.
    fn new(spec: &AddrSpec, worker: u16, workers: u16) -> Entry {
        let (lo, hi) = (spec.lo.min(spec.hi), spec.hi.max(spec.lo));
        let mut template = Box::new([u64::MAX; WORDS]);
        let mut n = 0;
        // A word is one 64-port block, which belongs to one worker: a word at a time, so that
        // adding a large pool to a running shard costs microseconds per address, not a loop over
        // every port.
        for w in usize::from(lo) / 64..=usize::from(hi) / 64 {
            if port_owner((w * 64) as u16, workers) != worker {
                continue;
            }
            let first = (w * 64).max(usize::from(lo));
            let last = (w * 64 + 63).min(usize::from(hi));
            let width = last - first + 1;
            let bits = if width == 64 {
                u64::MAX
            } else {
                ((1u64 << width) - 1) << (first % 64)
            };
            template[w] &= !bits;
            n += width as u32;
        }
        let pba = spec.block_size.map(|size| {
            let (lane_first, count) = lane_blocks(lo, hi, size, worker, workers);
            Pba {
                runs: (size / BLOCK_PORTS).max(1),
                lane_first,
                count,
                free: (0..count).rev().collect(),
                used: vec![0; count as usize],
            }
        });
        Entry {
            addr: spec.addr,
            pool: spec.pool,
            shape: spec.shape(),
            maps: [template.clone(), template.clone(), template],
            in_use: 0,
            in_use_p: [0; 3],
            owned: n,
            span: (lo as usize / 64, hi as usize / 64),
            pba,
        }
    }
}

/// Port block allocation over `lo..=hi` for one worker: the first 64-port block of its lane and how
/// many blocks of `size` ports it gets. Whole 64-port blocks only, so every block has the same number
/// of ports.
pub(crate) fn lane_blocks(lo: u16, hi: u16, size: u16, worker: u16, workers: u16) -> (u16, u16) {
    let w = u32::from(workers.max(1));
    let first = u32::from(lo).div_ceil(64);
    let end = (u32::from(hi) + 1) / 64;
    let lane_first = first + (u32::from(worker) + w - first % w) % w;
    let lane = if lane_first >= end {
        0
    } else {
        (end - 1 - lane_first) / w + 1
    };
    let runs = u32::from(size / BLOCK_PORTS).max(1);
    (lane_first as u16, (lane / runs) as u16)
}

/// Outside address → its position in [`PortAllocator`]'s sorted list, in one load. A new flow asks
/// this several times (is the destination one of ours? which bitmaps does the subscriber's address
/// use?), and a binary search over a pool of hundreds of addresses is a chain of dependent loads
/// each time. Pools are prefixes or ranges in practice, so the table covers the span from the
/// lowest to the highest address; when that span is much larger than the list (scattered
/// addresses), the table is left empty and lookups search the list instead.
#[derive(Debug, Default)]
struct AddrTable {
    base: u32,
    /// Position + 1 for each address of the span, 0 for an address in it that is not listed.
    pos: Vec<u16>,
}

/// What [`AddrTable::get`] knows.
enum Lookup {
    Found(usize),
    Absent,
    /// No table: search the sorted list.
    Search,
}

impl AddrTable {
    /// Spans up to this many addresses get a table whatever their density (1 KiB of it).
    const SMALL_SPAN: u64 = 512;
    /// Larger spans get one if at least one address in this many is listed: then the table is at
    /// most twice the size of the list it replaces (2-byte entries for 4-byte addresses, ×4).
    const SPARSEST: u64 = 4;

    fn new(sorted: &[u32]) -> AddrTable {
        let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
            return AddrTable::default();
        };
        let span = u64::from(hi - lo) + 1;
        let n = sorted.len() as u64;
        if n >= u64::from(u16::MAX) || (span > Self::SMALL_SPAN && span > n * Self::SPARSEST) {
            return AddrTable::default();
        }
        let mut pos = vec![0u16; span as usize];
        for (i, &a) in sorted.iter().enumerate() {
            pos[(a - lo) as usize] = i as u16 + 1;
        }
        AddrTable { base: lo, pos }
    }

    #[inline]
    fn get(&self, addr: u32) -> Lookup {
        if self.pos.is_empty() {
            return Lookup::Search;
        }
        match self.pos.get(addr.wrapping_sub(self.base) as usize) {
            Some(&p) if p != 0 => Lookup::Found(usize::from(p) - 1),
            _ => Lookup::Absent,
        }
    }
}

pub struct PortAllocator {
    /// Sorted outside addresses this shard allocates from.
    addrs: Vec<u32>,
    /// `addrs` as a direct table, when they span few enough addresses (see [`AddrTable`]).
    table: AddrTable,
    /// Pool index of each address.
    pool_of: Vec<u8>,
    /// Per address: the range and block size it was laid out for.
    shapes: Vec<(u16, u16, Option<u16>)>,
    /// `maps[addr_idx * 3 + proto_idx]`.
    maps: Vec<Box<[u64; WORDS]>>,
    /// Allocated ports per address, all protocols.
    in_use: Vec<u32>,
    /// Allocated ports per address and protocol.
    in_use_p: Vec<u32>,
    /// Ports of the address's range this worker owns (the capacity of each protocol).
    owned: Vec<u32>,
    /// Per address: first and last bitmap word of its pool's port range.
    spans: Vec<(usize, usize)>,
    pba: Vec<Option<Pba>>,
    /// Running totals, so the gauges cost nothing however many addresses there are.
    total: u64,
    blocks_used: u64,
    /// This allocator's worker and the worker count: a port is ours to hand out (and so to free)
    /// only if [`port_owner`] gives it to `worker`.
    worker: u16,
    workers: u16,
    rng: u64,
    /// Per address and protocol: the random draws its next two [`PortAllocator::alloc_random`]s
    /// start from. They are drawn early so the bitmap words they name can be prefetched: on a
    /// large pool such a word is otherwise a cache miss on every new mapping. Two deep because a
    /// subscriber's new flows come in runs on its one address: one allocation ahead is then one
    /// new flow's work (about 100 ns at 16M sessions here), less than the miss (115-170 ns). The
    /// sequence of draws is the same generator's, so ports are exactly as unpredictable.
    draws: Vec<[u64; 2]>,
    /// How that word is prefetched: the running burst's prefetch (set by the shard), else nothing.
    pub(crate) prefetch: fn(&u64),
}

impl PortAllocator {
    /// `addrs` lists every outside address of every pool with its pool's usable range `lo..=hi`; all
    /// allocate at random. An address listed twice keeps its first range.
    pub fn new(addrs: &[(u32, u16, u16)], worker: u16, workers: u16, seed: u64) -> PortAllocator {
        let specs: Vec<AddrSpec> = addrs
            .iter()
            .map(|&(addr, lo, hi)| AddrSpec {
                addr,
                lo,
                hi,
                pool: 0,
                block_size: None,
            })
            .collect();
        PortAllocator::build(&specs, worker, workers, seed)
    }

    pub(crate) fn build(specs: &[AddrSpec], worker: u16, workers: u16, seed: u64) -> PortAllocator {
        let workers = workers.max(1);
        let mut sorted = specs.to_vec();
        sorted.sort_by_key(|a| a.addr);
        sorted.dedup_by_key(|a| a.addr);
        let entries = sorted
            .iter()
            .map(|spec| Entry::new(spec, worker, workers))
            .collect();
        let mut pa = PortAllocator {
            addrs: Vec::new(),
            table: AddrTable::default(),
            pool_of: Vec::new(),
            shapes: Vec::new(),
            maps: Vec::new(),
            in_use: Vec::new(),
            in_use_p: Vec::new(),
            owned: Vec::new(),
            spans: Vec::new(),
            pba: Vec::new(),
            total: 0,
            blocks_used: 0,
            worker,
            workers,
            rng: seed | 1,
            draws: Vec::new(),
            prefetch: |_| {},
        };
        pa.assemble(entries);
        pa
    }

    /// Follow a policy change: `specs` lists every address of the new pools. Addresses this
    /// allocator already has keep their bitmaps, block tables and counts (their pool's definition
    /// cannot change while it has state, see [`crate::Rules::is_live_successor`]); new ones start
    /// empty; an address no pool lists any more is dropped once nothing is allocated on it, and kept
    /// (still freeing, never allocating: no pool offers it) while something is. Runs between bursts,
    /// once per policy change; it allocates only for new addresses.
    pub(crate) fn reconcile(&mut self, specs: &[AddrSpec], worker: u16) {
        debug_assert!(self.conflicts(specs).is_none());
        self.worker = worker;
        let mut wanted = specs.to_vec();
        wanted.sort_by_key(|a| a.addr);
        wanted.dedup_by_key(|a| a.addr);
        let old = self.disassemble();
        let mut out: Vec<Entry> = Vec::with_capacity(wanted.len().max(old.len()));
        let mut old = old.into_iter().peekable();
        for spec in &wanted {
            while let Some(e) = old.next_if(|e| e.addr < spec.addr) {
                if e.in_use > 0 {
                    out.push(e);
                }
            }
            match old.next_if(|e| e.addr == spec.addr) {
                Some(mut e) if e.shape == spec.shape() => {
                    e.pool = spec.pool;
                    out.push(e);
                }
                // Laid out for another range or block size, with nothing allocated (the caller
                // checked, see `conflicts`): start it afresh for its new pool.
                _ => out.push(Entry::new(spec, worker, self.workers)),
            }
        }
        out.extend(old.filter(|e| e.in_use > 0));
        self.assemble(out);
    }

    /// An address `specs` gives another range or block size than this allocator laid it out for
    /// while ports of it are allocated: a change [`PortAllocator::reconcile`] cannot make.
    pub(crate) fn conflicts(&self, specs: &[AddrSpec]) -> Option<u32> {
        specs.iter().find_map(|s| {
            let a = self.addr_index(s.addr)?;
            (self.shapes[a] != s.shape() && self.in_use[a] > 0).then_some(s.addr)
        })
    }

    fn disassemble(&mut self) -> Vec<Entry> {
        let n = self.addrs.len();
        let mut maps = std::mem::take(&mut self.maps).into_iter();
        let mut pba = std::mem::take(&mut self.pba).into_iter();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (Some(m0), Some(m1), Some(m2), Some(b)) =
                (maps.next(), maps.next(), maps.next(), pba.next())
            else {
                break;
            };
            out.push(Entry {
                addr: self.addrs[i],
                pool: self.pool_of[i],
                shape: self.shapes[i],
                maps: [m0, m1, m2],
                in_use: self.in_use[i],
                in_use_p: [
                    self.in_use_p[i * 3],
                    self.in_use_p[i * 3 + 1],
                    self.in_use_p[i * 3 + 2],
                ],
                owned: self.owned[i],
                span: self.spans[i],
                pba: b,
            });
        }
        out
    }

    /// Lay sorted entries out in the parallel vectors the hot path indexes, and recount the totals.
    fn assemble(&mut self, entries: Vec<Entry>) {
        let n = entries.len();
        self.addrs = Vec::with_capacity(n);
        self.pool_of = Vec::with_capacity(n);
        self.shapes = Vec::with_capacity(n);
        self.maps = Vec::with_capacity(n * 3);
        self.in_use = Vec::with_capacity(n);
        self.in_use_p = Vec::with_capacity(n * 3);
        self.owned = Vec::with_capacity(n);
        self.spans = Vec::with_capacity(n);
        self.pba = Vec::with_capacity(n);
        self.total = 0;
        self.blocks_used = 0;
        for e in entries {
            self.addrs.push(e.addr);
            self.pool_of.push(e.pool);
            self.shapes.push(e.shape);
            self.maps.extend(e.maps);
            self.in_use.push(e.in_use);
            self.in_use_p.extend(e.in_use_p);
            self.owned.push(e.owned);
            self.spans.push(e.span);
            self.total += u64::from(e.in_use);
            if let Some(b) = &e.pba {
                self.blocks_used += u64::from(b.count) - b.free.len() as u64;
            }
            self.pba.push(e.pba);
        }
        self.draws = (0..n * 3)
            .map(|_| [self.next_rand(), self.next_rand()])
            .collect();
        self.table = AddrTable::new(&self.addrs);
    }

    /// Index of an outside address, if this allocator manages it.
    #[inline]
    pub fn addr_index(&self, addr: u32) -> Option<usize> {
        match self.table.get(addr) {
            Lookup::Found(i) => Some(i),
            Lookup::Absent => None,
            Lookup::Search => self.addrs.binary_search(&addr).ok(),
        }
    }

    #[inline]
    pub(crate) fn pool_of(&self, a: usize) -> usize {
        self.pool_of[a] as usize
    }

    pub fn ports_in_use(&self, addr: u32) -> u32 {
        self.addr_index(addr).map_or(0, |i| self.in_use[i])
    }

    pub fn total_in_use(&self) -> u64 {
        self.total
    }

    /// (address, ports in use on it over all protocols) for every address.
    pub fn in_use_by_address(&self) -> Vec<(u32, u64)> {
        self.addrs
            .iter()
            .zip(&self.in_use)
            .map(|(&a, &n)| (a, u64::from(n)))
            .collect()
    }

    /// (address, ports in use, port blocks held) for every address.
    pub(crate) fn usage_by_address(&self) -> Vec<(u32, u64, u64)> {
        (0..self.addrs.len())
            .map(|a| {
                (
                    self.addrs[a],
                    u64::from(self.in_use[a]),
                    self.blocks_held(a),
                )
            })
            .collect()
    }

    /// Port blocks of address `a` held by subscribers.
    #[inline]
    pub(crate) fn blocks_held(&self, a: usize) -> u64 {
        self.pba[a]
            .as_ref()
            .map_or(0, |b| u64::from(b.count) - b.free.len() as u64)
    }

    /// Port blocks currently owned by subscribers.
    pub fn blocks_in_use(&self) -> u64 {
        self.blocks_used
    }

    /// Bytes used by the maps and block tables.
    pub fn memory_bytes(&self) -> usize {
        self.maps.len() * WORDS * 8
            + self
                .pba
                .iter()
                .flatten()
                .map(|b| b.count as usize * 4)
                .sum::<usize>()
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: fast, and seeded from the OS per shard; port choice needs to be unpredictable to
        // off-path attackers, not cryptographically strong.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Whether a new subscriber could get a port of `proto` on address `a` (a free block for port block
    /// allocation).
    pub(crate) fn has_room(&self, a: usize, proto: u8) -> bool {
        match (&self.pba[a], proto_index(proto)) {
            (Some(b), _) => !b.free.is_empty(),
            (None, Some(p)) => self.in_use_p[a * 3 + p] < self.owned[a],
            (None, None) => false,
        }
    }

    #[inline]
    fn take(&mut self, a: usize, p: usize, w: usize, bit: u32) -> u16 {
        self.maps[a * 3 + p][w] |= 1u64 << bit;
        self.in_use[a] += 1;
        self.in_use_p[a * 3 + p] += 1;
        self.total += 1;
        let port = (w * 64) as u16 + bit as u16;
        if let Some(j) = self.block_of(a, port)
            && let Some(b) = &mut self.pba[a]
        {
            b.used[j] += 1;
        }
        port
    }

    /// Allocate a random free port on `addr` for `proto`.
    pub fn alloc(&mut self, addr: u32, proto: u8) -> Option<u16> {
        let a = self.addr_index(addr)?;
        self.alloc_random(a, proto, None)
    }

    /// A random free port of address `a`, of the given parity if `parity` is set.
    pub(crate) fn alloc_random(&mut self, a: usize, proto: u8, parity: Option<u16>) -> Option<u16> {
        let p = proto_index(proto)?;
        let (first_word, last_word) = self.spans[a];
        let span = last_word - first_word + 1;
        let next = self.next_rand();
        let [r, soon] = self.draws[a * 3 + p];
        self.draws[a * 3 + p] = [soon, next];
        // The next allocation's word again (it may have left the cache since it was asked for, when
        // this address's allocations are far apart), and the one after it.
        (self.prefetch)(&self.maps[a * 3 + p][first_word + scale(soon, span)]);
        (self.prefetch)(&self.maps[a * 3 + p][first_word + scale(next, span)]);
        let start = scale(r, span);
        // The low bits: `scale` used the high ones.
        let rot = (r % 64) as u32;
        let mask = parity_mask(parity);
        let mut k = start;
        for _ in 0..span {
            let w = first_word + k;
            k = if k + 1 == span { 0 } else { k + 1 };
            let free = !self.maps[a * 3 + p][w] & mask;
            if free == 0 {
                continue;
            }
            // Rotate so the search inside the word starts at a random bit.
            let bit = (free.rotate_right(rot).trailing_zeros() + rot) % 64;
            return Some(self.take(a, p, w, bit));
        }
        None
    }

    /// `want` if it is free (and this worker's), else a random port.
    pub(crate) fn alloc_preserve(&mut self, a: usize, proto: u8, want: u16) -> Option<u16> {
        let p = proto_index(proto)?;
        let w = want as usize / 64;
        let bit = u32::from(want % 64);
        if self.maps[a * 3 + p][w] & (1u64 << bit) == 0 {
            return Some(self.take(a, p, w, bit));
        }
        self.alloc_random(a, proto, None)
    }

    /// A random free port of `set` (which must be on address `a`).
    pub(crate) fn alloc_in(&mut self, a: usize, proto: u8, set: &PortSet) -> Option<u16> {
        let p = proto_index(proto)?;
        let runs = u32::from(set.runs);
        if runs == 0 {
            return None;
        }
        let r = self.next_rand();
        let mut k = scale(r, runs as usize) as u32;
        let rot = (r % 64) as u32;
        for _ in 0..runs {
            let w = set.word(k);
            k = if k + 1 == runs { 0 } else { k + 1 };
            let Some(&word) = self.maps[a * 3 + p].get(w) else {
                continue;
            };
            if word == u64::MAX {
                continue;
            }
            let bit = ((!word).rotate_right(rot).trailing_zeros() + rot) % 64;
            return Some(self.take(a, p, w, bit));
        }
        None
    }

    /// Return a port. Freeing a port that is not allocated is ignored (and reported as false).
    pub fn free(&mut self, addr: u32, proto: u8, port: u16) -> bool {
        self.addr_index(addr)
            .and_then(|a| self.release(a, proto, port))
            .is_some()
    }

    /// The bitmap word that holds `port` of address `a` for `proto`, for prefetching: releasing a
    /// port writes that word, a random line in maps of several megabytes once the tables are large
    /// (`None` for a protocol without ports or an index out of range).
    #[inline]
    pub(crate) fn word_ref(&self, a: usize, proto: u8, port: u16) -> Option<&u64> {
        let p = proto_index(proto)?;
        self.maps.get(a * 3 + p)?.get(usize::from(port) / 64)
    }

    /// Return a port of address `a`. `None` if it was not allocated; otherwise `Some(block)` where
    /// `block` is the port block that this emptied, if any.
    pub(crate) fn release(&mut self, a: usize, proto: u8, port: u16) -> Option<Option<u16>> {
        let p = proto_index(proto)?;
        // Outside the range, or another worker's: its bit is set to keep it out of allocation,
        // not because it is allocated, and must stay set.
        let (lo, hi, _) = *self.shapes.get(a)?;
        if port < lo || port > hi || port_owner(port, self.workers) != self.worker {
            return None;
        }
        let w = port as usize / 64;
        let m = 1u64 << (port % 64);
        let map = &mut self.maps[a * 3 + p];
        if map[w] & m == 0 {
            return None;
        }
        map[w] &= !m;
        self.in_use[a] -= 1;
        self.in_use_p[a * 3 + p] -= 1;
        self.total -= 1;
        let emptied = match (self.block_of(a, port), &mut self.pba[a]) {
            (Some(j), Some(b)) => {
                b.used[j] = b.used[j].saturating_sub(1);
                (b.used[j] == 0).then_some(j as u16)
            }
            _ => None,
        };
        Some(emptied)
    }

    /// The port block of address `a` that `port` belongs to (port block allocation only).
    #[inline]
    fn block_of(&self, a: usize, port: u16) -> Option<usize> {
        let b = self.pba[a].as_ref()?;
        let blk = port / BLOCK_PORTS;
        let d = blk.checked_sub(b.lane_first)?;
        if d % self.workers != 0 {
            return None;
        }
        let j = (d / self.workers / b.runs) as usize;
        (j < b.count as usize).then_some(j)
    }

    /// Take a free port block of address `a`, chosen at random.
    pub(crate) fn take_block(&mut self, a: usize) -> Option<u16> {
        let r = self.next_rand();
        let b = self.pba[a].as_mut()?;
        if b.free.is_empty() {
            return None;
        }
        let i = (r % b.free.len() as u64) as usize;
        self.blocks_used += 1;
        Some(b.free.swap_remove(i))
    }

    /// Give an empty block back.
    pub(crate) fn put_block(&mut self, a: usize, j: u16) {
        if let Some(b) = &mut self.pba[a] {
            debug_assert!(b.used[j as usize] == 0 && !b.free.contains(&j));
            // Capacity is `count`, and a block is only ever free once, so this never reallocates.
            b.free.push(j);
            self.blocks_used -= 1;
        }
    }

    /// The ports of block `j` of address `a`.
    pub(crate) fn block_set(&self, a: usize, j: u16) -> PortSet {
        let b = self.pba[a].as_ref();
        let (lane_first, runs) = b.map_or((0, 0), |b| (b.lane_first, b.runs));
        PortSet {
            addr: self.addrs[a],
            first_port: (lane_first + j * runs * self.workers) * BLOCK_PORTS,
            runs,
            stride: self.workers,
        }
    }
}

/// A random draw scaled to `0..n` by its high bits (Lemire's multiply-shift): no division on the
/// new-mapping path, where a 64-bit `%` by a variable is tens of cycles; the bias, at most
/// `n / 2^64`, is immaterial.
#[inline]
fn scale(draw: u64, n: usize) -> usize {
    ((u128::from(draw) * n as u128) >> 64) as usize
}

/// Bits of a bitmap word whose ports have the given parity (word bases are multiples of 64, so bit
/// parity is port parity).
#[inline]
fn parity_mask(parity: Option<u16>) -> u64 {
    match parity {
        None => u64::MAX,
        Some(p) if p & 1 == 0 => 0x5555_5555_5555_5555,
        Some(_) => 0xAAAA_AAAA_AAAA_AAAA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_addresses_are_recognised_in_dense_and_scattered_pools() {
        // A /23 with holes (direct table), a scattered set (sorted-list search), one address,
        // and addresses at the ends of the 32-bit space (no wrap-around past the span).
        let dense: Vec<u32> = (0xcb00_7000..0xcb00_7200u32)
            .filter(|a| a % 3 != 0)
            .collect();
        let scattered = vec![0x0a00_0001, 0x5000_0000, 0xcb00_7101, 0xfe00_0000];
        let single = vec![0xc633_6401];
        let ends = vec![0, 1, u32::MAX - 1, u32::MAX];
        for (name, addrs) in [
            ("dense", dense),
            ("scattered", scattered),
            ("single", single),
            ("ends", ends),
        ] {
            let specs: Vec<(u32, u16, u16)> = addrs.iter().map(|&a| (a, 1024, 2047)).collect();
            let pa = PortAllocator::new(&specs, 0, 1, 7);
            let mut probes: Vec<u32> = addrs
                .iter()
                .flat_map(|&a| [a.wrapping_sub(1), a, a.wrapping_add(1)])
                .collect();
            probes.extend([0, u32::MAX, 0xcb00_6fff, 0xcb00_7200, 0x6440_0001]);
            for a in probes {
                let want = addrs.iter().position(|&x| x == a);
                let got = pa.addr_index(a).map(|i| pa.addrs[i]);
                assert_eq!(got, want.map(|i| addrs[i]), "{name}: address {a:#x}");
            }
        }
    }

    #[test]
    fn freeing_a_port_that_was_never_ours_changes_nothing() {
        // Worker 0 of 2 owns the even 64-port words of 1024..=2047.
        let addr = 0xcb00_7101;
        let mut pa = PortAllocator::new(&[(addr, 1024, 2047)], 0, 2, 7);
        let held = pa.alloc(addr, ip_proto::UDP).unwrap();
        // Below the range, above it, and in worker 1's words: refused, counts untouched.
        for port in [80, 1023, 2048, 65535, 1024 + 64, 1024 + 64 * 3 + 5] {
            assert!(!pa.free(addr, ip_proto::UDP, port), "port {port}");
            assert_eq!(pa.ports_in_use(addr), 1, "port {port}");
        }
        // Nothing outside the worker's own ports became allocatable.
        let mut n = 1;
        while let Some(p) = pa.alloc(addr, ip_proto::UDP) {
            assert!(
                (1024..=2047).contains(&p) && port_owner(p, 2) == 0,
                "port {p}"
            );
            n += 1;
        }
        assert_eq!(n, 512, "exactly the worker's half of the range");
        assert!(pa.free(addr, ip_proto::UDP, held));
        assert!(!pa.free(addr, ip_proto::UDP, held), "not twice");
        assert_eq!(pa.ports_in_use(addr), 511);
    }

    #[test]
    fn the_word_prefetched_for_a_release_is_the_one_the_release_writes() {
        let addr = 0xcb00_7101;
        let mut pa = PortAllocator::new(&[(addr, 1024, 65535)], 0, 1, 3);
        let a = pa.addr_index(addr).unwrap();
        for proto in [ip_proto::TCP, ip_proto::UDP, ip_proto::ICMP] {
            let port = pa.alloc(addr, proto).unwrap();
            let bit = 1u64 << (port % 64);
            let before = *pa.word_ref(a, proto, port).unwrap();
            assert_ne!(
                before & bit,
                0,
                "{proto}: the allocated port's bit is in the word"
            );
            assert!(pa.free(addr, proto, port));
            let after = *pa.word_ref(a, proto, port).unwrap();
            assert_eq!(
                after,
                before & !bit,
                "{proto}: the release changed that bit only"
            );
        }
        // No bitmap for a protocol without ports, nor for an address the allocator lacks.
        assert!(pa.word_ref(a, 47, 1024).is_none());
        assert!(pa.word_ref(a + 1, ip_proto::UDP, 1024).is_none());
    }

    #[test]
    fn allocates_every_port_in_range_once_then_runs_out() {
        let mut pa = PortAllocator::new(&[(0xcb00_7101, 1024, 2047)], 0, 1, 42);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1024 {
            let p = pa.alloc(0xcb00_7101, ip_proto::UDP).unwrap();
            assert!((1024..=2047).contains(&p), "port {p} out of range");
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        assert_eq!(pa.alloc(0xcb00_7101, ip_proto::UDP), None);
        // Other protocols have their own space.
        assert!(pa.alloc(0xcb00_7101, ip_proto::TCP).is_some());
        assert_eq!(pa.ports_in_use(0xcb00_7101), 1025);
        assert!(pa.free(0xcb00_7101, ip_proto::UDP, 1500));
        assert!(
            !pa.free(0xcb00_7101, ip_proto::UDP, 1500),
            "double free must be refused"
        );
        assert_eq!(pa.alloc(0xcb00_7101, ip_proto::UDP), Some(1500));
    }

    #[test]
    fn unaligned_ranges_give_exactly_their_ports() {
        // 1030-1100 covers parts of two 64-port blocks (1024-1087, 1088-1151): each worker gets
        // exactly the ports of the range whose block it owns.
        for (worker, workers) in [(0, 1), (0, 2), (1, 2)] {
            let mut pa = PortAllocator::new(&[(0xcb00_7101, 1030, 1100)], worker, workers, 9);
            let want: Vec<u16> = (1030..=1100)
                .filter(|&p| port_owner(p, workers) == worker)
                .collect();
            let mut got = Vec::new();
            while let Some(p) = pa.alloc(0xcb00_7101, ip_proto::UDP) {
                got.push(p);
            }
            got.sort_unstable();
            assert_eq!(got, want, "worker {worker} of {workers}");
        }
    }

    #[test]
    fn workers_get_disjoint_blocks() {
        let addr = [(0x0a00_0001, 1024, 65535)];
        let mut w0 = PortAllocator::new(&addr, 0, 2, 1);
        let mut w1 = PortAllocator::new(&addr, 1, 2, 2);
        for _ in 0..5000 {
            let a = w0.alloc(addr[0].0, ip_proto::TCP).unwrap();
            let b = w1.alloc(addr[0].0, ip_proto::TCP).unwrap();
            assert_eq!(port_owner(a, 2), 0);
            assert_eq!(port_owner(b, 2), 1);
        }
    }

    #[test]
    fn allocation_is_not_sequential() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 7);
        let ports: Vec<u16> = (0..16)
            .map(|_| pa.alloc(1, ip_proto::TCP).unwrap())
            .collect();
        let sequential = ports
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(sequential < 4, "ports look predictable: {ports:?}");
    }

    #[test]
    fn unknown_address_or_protocol_is_refused() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 7);
        assert_eq!(pa.alloc(2, ip_proto::TCP), None);
        assert_eq!(pa.alloc(1, 47), None);
    }

    fn spec(addr: u32, lo: u16, hi: u16, block_size: Option<u16>) -> AddrSpec {
        AddrSpec {
            addr,
            lo,
            hi,
            pool: 0,
            block_size,
        }
    }

    #[test]
    fn preserve_keeps_a_free_port_and_parity_keeps_parity() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 9);
        assert_eq!(pa.alloc_preserve(0, ip_proto::UDP, 5060), Some(5060));
        let other = pa.alloc_preserve(0, ip_proto::UDP, 5060).unwrap();
        assert_ne!(other, 5060, "a taken port is not handed out twice");
        // Out of range: a random port instead.
        let low = pa.alloc_preserve(0, ip_proto::UDP, 80).unwrap();
        assert!(low >= 1024);
        for i in 0..2000u16 {
            let want = i % 2;
            let p = pa.alloc_random(0, ip_proto::TCP, Some(want)).unwrap();
            assert_eq!(p % 2, want);
        }
    }

    #[test]
    fn port_sets_allocate_only_inside() {
        let mut pa = PortAllocator::new(&[(1, 1024, 65535)], 0, 1, 3);
        let set = PortSet {
            addr: 1,
            first_port: 4096,
            runs: 2,
            stride: 3,
        };
        let mut got = std::collections::HashSet::new();
        while let Some(p) = pa.alloc_in(0, ip_proto::UDP, &set) {
            assert!(set.contains(p), "{p} outside the set");
            assert!(got.insert(p));
        }
        assert_eq!(got.len(), 128);
        assert_eq!(got, set.ports().collect());
        assert!(!set.contains(4096 + 64) && set.contains(4096 + 3 * 64));
    }

    #[test]
    fn blocks_are_counted_handed_out_once_and_come_back_empty() {
        // 1024-2047: 16 whole 64-port blocks; blocks of 256 ports: 4 of them per worker with 1 worker.
        let mut pa = PortAllocator::build(&[spec(1, 1024, 2047, Some(256))], 0, 1, 5);
        let mut blocks: Vec<u16> = (0..4).map(|_| pa.take_block(0).unwrap()).collect();
        assert_eq!(pa.take_block(0), None);
        assert_eq!(pa.blocks_in_use(), 4);
        blocks.sort();
        assert_eq!(blocks, vec![0, 1, 2, 3]);
        let set = pa.block_set(0, 2);
        assert_eq!((set.first_port, set.len()), (1024 + 512, 256));
        let p = pa.alloc_in(0, ip_proto::TCP, &set).unwrap();
        let q = pa.alloc_in(0, ip_proto::UDP, &set).unwrap();
        assert_eq!(
            pa.release(0, ip_proto::TCP, p),
            Some(None),
            "still one port in it"
        );
        assert_eq!(pa.release(0, ip_proto::UDP, q), Some(Some(2)), "now empty");
        assert_eq!(pa.release(0, ip_proto::UDP, q), None);
        pa.put_block(0, 2);
        assert_eq!(pa.blocks_in_use(), 3);
        assert_eq!(pa.take_block(0), Some(2));
    }

    #[test]
    fn blocks_of_two_workers_never_overlap_and_stay_owned() {
        let specs = [spec(1, 1024, 65535, Some(512))];
        let mut w0 = PortAllocator::build(&specs, 0, 2, 1);
        let mut w1 = PortAllocator::build(&specs, 1, 2, 2);
        let mut seen = std::collections::HashSet::new();
        for (w, pa) in [(0u16, &mut w0), (1, &mut w1)] {
            while let Some(j) = pa.take_block(0) {
                let set = pa.block_set(0, j);
                assert_eq!(set.len(), 512);
                for port in set.ports() {
                    assert!(port >= 1024);
                    assert_eq!(port_owner(port, 2), w);
                    assert!(seen.insert(port), "port {port} in two blocks");
                }
            }
        }
        assert!(seen.len() > 60_000);
    }
}
