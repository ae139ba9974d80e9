//! Endpoint-independent mappings (RFC 4787 REQ-1, RFC 5382 REQ-1): inside address:port ↔ outside
//! address:port per protocol and pool, shared by every session of that inside endpoint.
//!
//! The store mirrors the session store: a slab of 20-byte records allocated once, a free list threaded
//! through it, and an [`Index`] with two 8-byte entries per mapping (its inside key and its outside key)
//! at a load of at most one half. A lookup is one bucket line and the record's line (a quarter of the
//! records straddle two), which the burst pipeline prefetches.
//!
//! A mapping lives while it has sessions. When the last one goes it either frees its port at once (a
//! TCP connection closed by FIN both ways, a deterministic port, or no hold-down configured) or is
//! *held* (RFC 6888 REQ-8): it stays in the index, so the same inside endpoint coming back gets the
//! same port again, but nothing else can take the port until the hold-down ends. A paced sweep over
//! the slab ([`crate::sweep`]) finds held mappings whose hold-down is over, so a hold-down ends
//! between its due tick and one pass after it (one second up to 4 Mi mappings), never before; nothing
//! but the record itself (its due tick in `count`) remembers that it is held.

use crate::index::{Index, OUT_BIT};
use crate::key::FlowKey;
use crate::session::NIL;
use crate::sweep::Sweep;
use crate::{MemAdvice, advised_vec};

const HELD: u8 = 1;

/// Hash tweaks so that inside and outside keys of equal value land apart.
const IN_TWEAK: u64 = 0x6d61_7069_6e00_0001;
const OUT_TWEAK: u64 = 0x6d61_706f_7574_0002;

/// One mapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Mapping {
    pub in_addr: u32,
    pub out_addr: u32,
    pub in_port: u16,
    pub out_port: u16,
    /// Live: number of sessions. Held: tick the hold-down ends. Free: next free slot.
    count: u32,
    /// Protocol; 0 marks a free slot. (The subscriber record is found from the inside address and
    /// the pool: the flow record this table is to become has no room for its slot.)
    pub proto: u8,
    pub pool: u8,
    flags: u8,
    _pad: u8,
}

const _: () = assert!(std::mem::size_of::<Mapping>() == 20);

impl Mapping {
    pub fn new(
        in_addr: u32,
        in_port: u16,
        out_addr: u32,
        out_port: u16,
        proto: u8,
        pool: u8,
    ) -> Mapping {
        Mapping {
            in_addr,
            out_addr,
            in_port,
            out_port,
            count: 0,
            proto,
            pool,
            flags: 0,
            _pad: 0,
        }
    }

    pub fn is_held(&self) -> bool {
        self.flags & HELD != 0
    }

    /// Sessions using the mapping (0 while held).
    pub fn sessions(&self) -> u32 {
        if self.is_held() || self.proto == 0 {
            0
        } else {
            self.count
        }
    }

    /// The tick the hold-down ends, while held.
    pub fn held_until(&self) -> Option<u32> {
        self.is_held().then_some(self.count)
    }

    pub fn is_live(&self) -> bool {
        self.proto != 0
    }
}

/// Hash of a mapping's inside key. The pool is not hashed (it is only known after the rule lookup, and
/// the pipeline wants to prefetch before that); it is compared.
#[inline]
pub fn in_hash(seed: u64, addr: u32, port: u16, proto: u8) -> u32 {
    FlowKey {
        src: addr,
        dst: 0,
        sport: port,
        dport: 0,
        proto,
    }
    .hash(seed ^ IN_TWEAK)
}

/// Hash of a mapping's outside key.
#[inline]
pub fn out_hash(seed: u64, addr: u32, port: u16, proto: u8) -> u32 {
    FlowKey {
        src: addr,
        dst: 0,
        sport: port,
        dport: 0,
        proto,
    }
    .hash(seed ^ OUT_TWEAK)
}

pub struct MapTable {
    slots: Vec<Mapping>,
    free_head: u32,
    /// Live and held mappings.
    live: u32,
    held: u32,
    index: Index,
    /// Finds held mappings whose hold-down is over.
    sweep: Sweep,
}

impl MapTable {
    #[cfg(test)]
    pub fn new(capacity: u32) -> MapTable {
        MapTable::new_advised(capacity, 0, None)
    }

    /// A table for `capacity` mappings whose clock starts at tick `now`, its slab and index handed to
    /// `advise` before first use.
    pub fn new_advised(capacity: u32, now: u32, advise: Option<MemAdvice>) -> MapTable {
        let mut slots = advised_vec(capacity as usize, Mapping::default(), advise);
        for (i, m) in slots.iter_mut().enumerate() {
            m.count = if i + 1 < capacity as usize {
                i as u32 + 1
            } else {
                NIL
            };
        }
        MapTable {
            slots,
            free_head: if capacity > 0 { 0 } else { NIL },
            live: 0,
            held: 0,
            index: Index::with_capacity_advised(capacity as usize * 2, advise),
            sweep: Sweep::new(capacity, now),
        }
    }

    /// Store the index inserts deferred by [`MapTable::insert`] (end of a burst), prefetching
    /// their buckets with `P` first.
    #[inline]
    pub fn flush<P: crate::Prefetch>(&mut self) {
        self.index.flush::<P>();
    }

    /// Live and held mappings.
    pub fn len(&self) -> u32 {
        self.live
    }

    pub fn held(&self) -> u32 {
        self.held
    }

    /// Index entries (tests: nothing may be left behind).
    #[cfg(test)]
    pub fn residue(&self) -> usize {
        self.index.len()
    }

    pub fn is_full(&self) -> bool {
        self.free_head == NIL
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Mapping>() + self.index.memory_bytes()
    }

    #[inline]
    pub fn get(&self, slot: u32) -> &Mapping {
        &self.slots[slot as usize]
    }

    /// The index bucket (one cache line) a lookup for `hash` starts at; prefetch it before looking up.
    #[inline]
    pub fn home_ref(&self, hash: u32) -> &impl Sized {
        self.index.home_ref(hash)
    }

    /// The mapping the first index entry matching `hash` names, if any (for a prefetch once the
    /// entry's line is cached; the real lookup compares the key).
    #[inline]
    pub fn candidate(&self, hash: u32) -> Option<&Mapping> {
        let (_, slot) = self.index.find_first(hash)?;
        self.slots.get((slot & !OUT_BIT) as usize)
    }

    /// The live or held mapping of an inside endpoint in a pool.
    #[inline]
    pub fn find_in(&self, hash: u32, addr: u32, port: u16, proto: u8, pool: u8) -> Option<u32> {
        self.index
            .find(hash, |s| {
                let m = &self.slots[(s & !OUT_BIT) as usize];
                s & OUT_BIT == 0
                    && m.in_addr == addr
                    && m.in_port == port
                    && m.proto == proto
                    && m.pool == pool
            })
            .map(|(_, s)| s)
    }

    /// The live or held mapping of an outside endpoint.
    #[inline]
    pub fn find_out(&self, hash: u32, addr: u32, port: u16, proto: u8) -> Option<u32> {
        self.index
            .find(hash, |s| {
                let m = &self.slots[(s & !OUT_BIT) as usize];
                s & OUT_BIT != 0 && m.out_addr == addr && m.out_port == port && m.proto == proto
            })
            .map(|(_, s)| s & !OUT_BIT)
    }

    /// Store a new mapping (with no sessions yet) and index it. `None` when the slab is full. The
    /// outside key's insert is deferred (see [`Index::insert_later`]): its port was just chosen, so
    /// its bucket is not in cache; the inside key's bucket was prefetched by the lookup that missed.
    pub fn insert(&mut self, m: Mapping, in_h: u32, out_h: u32) -> Option<u32> {
        let slot = self.free_head;
        if slot == NIL {
            return None;
        }
        self.free_head = self.slots[slot as usize].count;
        self.slots[slot as usize] = Mapping {
            count: 0,
            flags: 0,
            ..m
        };
        // Sized for two keys per slot: cannot fail while the slab had room.
        let ok = self.index.insert(in_h, slot) && self.index.insert_later(out_h, slot | OUT_BIT);
        debug_assert!(ok);
        self.live += 1;
        Some(slot)
    }

    /// One more session on a live mapping.
    #[inline]
    pub fn add_session(&mut self, slot: u32) {
        let m = &mut self.slots[slot as usize];
        debug_assert!(!m.is_held());
        m.count += 1;
    }

    /// One session fewer; returns how many remain.
    #[inline]
    pub fn remove_session(&mut self, slot: u32) -> u32 {
        let m = &mut self.slots[slot as usize];
        debug_assert!(!m.is_held() && m.count > 0);
        m.count = m.count.saturating_sub(1);
        m.count
    }

    /// Put a mapping with no sessions into hold-down until tick `until`.
    pub fn hold(&mut self, slot: u32, until: u32) {
        let m = &mut self.slots[slot as usize];
        m.flags |= HELD;
        m.count = until;
        self.held += 1;
    }

    /// The same inside endpoint is back during the hold-down: the mapping is live again (with no
    /// sessions yet).
    pub fn revive(&mut self, slot: u32) {
        let m = &mut self.slots[slot as usize];
        debug_assert!(m.is_held());
        m.flags &= !HELD;
        m.count = 0;
        self.held -= 1;
    }

    /// Remove a mapping (live with no sessions, or held) from the index and recycle its slot.
    pub fn remove(&mut self, slot: u32, in_h: u32, out_h: u32) -> Mapping {
        let m = self.slots[slot as usize];
        let a = self.index.remove(in_h, slot);
        let b = self.index.remove(out_h, slot | OUT_BIT);
        debug_assert!(a && b);
        if m.is_held() {
            self.held -= 1;
        }
        self.live -= 1;
        self.slots[slot as usize] = Mapping {
            count: self.free_head,
            ..Mapping::default()
        };
        self.free_head = slot;
        m
    }

    /// The hold-down sweep's position and pace (a hold-down ends at most one pass late).
    #[inline]
    pub fn sweep_state(&self) -> &Sweep {
        &self.sweep
    }

    /// How many slots of the sweep to look at now (at most `budget`); take them with
    /// [`MapTable::sweep_step`].
    #[inline]
    pub fn sweep_grant(&mut self, now: u32, budget: u32) -> u32 {
        self.sweep.grant(now, budget)
    }

    /// Look at the sweep's next slot: `Some(slot)` if it holds a mapping whose hold-down is over at
    /// `now`, which the caller then releases.
    #[inline]
    pub fn sweep_step(&mut self, now: u32) -> Option<u32> {
        let slot = self.sweep.next();
        let m = &self.slots[slot as usize];
        (m.is_live() && m.is_held() && m.count <= now).then_some(slot)
    }

    /// Slots of every held mapping (control plane: O(capacity)).
    pub fn held_slots(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&s| self.slots[s as usize].is_live() && self.slots[s as usize].is_held())
            .collect()
    }

    /// Live and held mappings with their slots (control plane: O(capacity)).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Mapping)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_live())
            .map(|(i, m)| (i as u32, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 42;

    fn put(t: &mut MapTable, port: u16) -> u32 {
        let m = Mapping::new(1, port, 9, port + 1000, 17, 0);
        t.insert(
            m,
            in_hash(SEED, 1, port, 17),
            out_hash(SEED, 9, port + 1000, 17),
        )
        .unwrap()
    }

    fn drop_it(t: &mut MapTable, slot: u32) {
        let m = *t.get(slot);
        t.remove(
            slot,
            in_hash(SEED, m.in_addr, m.in_port, m.proto),
            out_hash(SEED, m.out_addr, m.out_port, m.proto),
        );
    }

    #[test]
    fn mapping_is_20_bytes() {
        assert_eq!(std::mem::size_of::<Mapping>(), 20);
    }

    #[test]
    fn found_by_either_key_and_pool_is_compared() {
        let mut t = MapTable::new(8);
        let s = put(&mut t, 5000);
        assert_eq!(
            t.find_in(in_hash(SEED, 1, 5000, 17), 1, 5000, 17, 0),
            Some(s)
        );
        assert_eq!(t.find_in(in_hash(SEED, 1, 5000, 17), 1, 5000, 17, 1), None);
        assert_eq!(t.find_in(in_hash(SEED, 1, 5000, 6), 1, 5000, 6, 0), None);
        assert_eq!(
            t.find_out(out_hash(SEED, 9, 6000, 17), 9, 6000, 17),
            Some(s)
        );
        drop_it(&mut t, s);
        assert_eq!(t.find_out(out_hash(SEED, 9, 6000, 17), 9, 6000, 17), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn full_table_refuses_then_reuses() {
        let mut t = MapTable::new(2);
        let a = put(&mut t, 1);
        put(&mut t, 2);
        assert!(t.is_full());
        assert!(
            t.insert(
                Mapping::new(1, 3, 9, 3, 17, 0),
                in_hash(SEED, 1, 3, 17),
                out_hash(SEED, 9, 3, 17)
            )
            .is_none()
        );
        drop_it(&mut t, a);
        assert_eq!(put(&mut t, 4), a);
    }

    /// Sweep at every tick from `from` to `until` as a worker would, releasing what is due; returns
    /// the (slot, tick) of each release.
    fn sweep(t: &mut MapTable, from: u32, until: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for now in from..=until {
            while t.sweep_state().due(now) {
                for _ in 0..t.sweep_grant(now, 3) {
                    if let Some(slot) = t.sweep_step(now) {
                        out.push((slot, now));
                        drop_it(t, slot);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn hold_down_releases_on_time_and_revival_cancels_it() {
        let mut t = MapTable::new(4);
        let a = put(&mut t, 1);
        let b = put(&mut t, 2);
        t.hold(a, 120);
        t.hold(b, 125);
        assert_eq!(t.held(), 2);
        assert!(sweep(&mut t, 0, 119).is_empty());
        assert_eq!(sweep(&mut t, 120, 120), vec![(a, 120)]);
        // b is revived before its time: it is not released.
        t.revive(b);
        assert!(sweep(&mut t, 121, 200).is_empty());
        assert!(t.get(b).is_live() && !t.get(b).is_held());
        assert_eq!(t.held(), 0);
    }

    #[test]
    fn a_mapping_held_again_is_released_at_its_new_time() {
        let mut t = MapTable::new(4);
        let a = put(&mut t, 1);
        t.hold(a, 120);
        t.revive(a);
        t.hold(a, 200);
        assert!(sweep(&mut t, 0, 199).is_empty(), "not at the first time");
        assert_eq!(sweep(&mut t, 200, 200), vec![(a, 200)]);
    }

    #[test]
    fn a_released_slot_is_reused_at_once() {
        let mut t = MapTable::new(1);
        let a = put(&mut t, 1);
        t.hold(a, 120);
        t.revive(a);
        // Freed at once (e.g. a clean TCP close) after a hold-down that was cancelled.
        drop_it(&mut t, a);
        assert!(!t.is_full());
        assert_eq!(put(&mut t, 2), a);
        assert!(
            sweep(&mut t, 0, 300).is_empty(),
            "the new mapping is live, not held"
        );
        assert_eq!(t.residue(), 2);
    }
}
