//! Per-subscriber state: the paired outside address (RFC 6888 REQ-2), the counts the per-subscriber
//! limits are checked against (REQ-4/5) and the port blocks it owns (port block allocation).
//!
//! A subscriber is an inside address *in one pool*: SNAT rules with destination prefixes can send one
//! address's traffic to several pools, and each pool then has its own record, paired address and
//! limits. The record exists while the subscriber has a mapping, live or held; it lives in a
//! preallocated slab (28 bytes, aligned to 32) with one 6-byte entry in its own [`Index`] (12.8 B
//! at its load of ½), plus, when a pool uses port block allocation, a fixed array of block numbers.

use crate::index::Index;
use crate::key::{FlowKey, Hash};
use crate::session::NIL;

const TWEAK: u64 = 0x7375_6273_6372_0003;

/// Aligned to 32 bytes (4 of them padding), so that no record straddles two cache lines: a new
/// flow reads its subscriber's record, which the burst pipeline prefetches as one line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Subscriber {
    /// Inside address.
    pub addr: u32,
    /// The outside address every mapping of the subscriber uses.
    pub out_addr: u32,
    pub sessions: u32,
    /// Live mappings: the ports counted against `max_ports_per_subscriber`.
    pub mappings: u32,
    /// Mappings in hold-down.
    pub held: u32,
    /// Tick of the last quota event (at most one per second per subscriber). Free slots: next free.
    pub(crate) last_event: u32,
    /// Port blocks owned.
    pub blocks: u16,
    pub pool: u8,
    pub(crate) used: u8,
}

const _: () = assert!(std::mem::size_of::<Subscriber>() == 32);

impl Subscriber {
    pub fn is_live(&self) -> bool {
        self.used != 0
    }

    /// Nothing keeps the record alive any more.
    pub fn is_idle(&self) -> bool {
        self.sessions == 0 && self.mappings == 0 && self.held == 0 && self.blocks == 0
    }
}

/// Hash of a subscriber record's key. The pool is not hashed (the burst pipeline prefetches the
/// record before the rule lookup names the pool); it is compared, and an address is in few pools.
#[inline]
pub fn sub_hash(seed: u64, addr: u32) -> Hash {
    FlowKey {
        src: addr,
        dst: 0,
        sport: 0,
        dport: 0,
        proto: 0,
    }
    .hash(seed ^ TWEAK)
}

pub struct SubTable {
    slots: Vec<Subscriber>,
    free_head: u32,
    live: u32,
    index: Index,
    /// `blocks[slot * stride ..][..blocks]`: block numbers on the subscriber's address.
    blocks: Vec<u16>,
    stride: usize,
}

impl SubTable {
    /// `max_blocks`: the most blocks any pool lets a subscriber own (0 when no pool uses blocks).
    pub fn new(capacity: u32, max_blocks: u16) -> SubTable {
        let mut slots = vec![Subscriber::default(); capacity as usize];
        for (i, s) in slots.iter_mut().enumerate() {
            s.last_event = if i + 1 < capacity as usize {
                i as u32 + 1
            } else {
                NIL
            };
        }
        SubTable {
            slots,
            free_head: if capacity > 0 { 0 } else { NIL },
            live: 0,
            index: Index::with_capacity(capacity as usize),
            blocks: vec![0; capacity as usize * max_blocks as usize],
            stride: max_blocks as usize,
        }
    }

    pub fn len(&self) -> u32 {
        self.live
    }

    /// The most port blocks a record can hold (fixed at construction).
    pub fn max_blocks(&self) -> u16 {
        self.stride as u16
    }

    /// Index entries (tests: nothing may be left behind).
    #[cfg(test)]
    pub fn residue(&self) -> usize {
        self.index.len()
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Subscriber>()
            + self.index.memory_bytes()
            + self.blocks.len() * 2
    }

    #[inline]
    pub fn get(&self, slot: u32) -> &Subscriber {
        &self.slots[slot as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Subscriber {
        &mut self.slots[slot as usize]
    }

    /// The index bucket (one cache line) a lookup of `hash` reads first, for a prefetch.
    #[inline]
    pub fn home_ref(&self, hash: Hash) -> &impl Sized {
        self.index.home_ref(hash)
    }

    /// The record the first index entry matching `hash` names, if any (for a prefetch: the caller
    /// has the entry's line cached and wants the record's on its way before the real lookup).
    #[inline]
    pub fn candidate(&self, hash: Hash) -> Option<&Subscriber> {
        let (_, slot) = self.index.find_first(hash)?;
        self.slots.get(slot as usize)
    }

    pub fn find(&self, hash: Hash, addr: u32, pool: u8) -> Option<u32> {
        self.index
            .find(hash, |s| {
                let r = &self.slots[s as usize];
                r.addr == addr && r.pool == pool
            })
            .map(|(_, s)| s)
    }

    /// A new record for `addr` in `pool` using `out_addr`. `None` when the table is full.
    pub fn insert(&mut self, hash: Hash, addr: u32, pool: u8, out_addr: u32) -> Option<u32> {
        let slot = self.free_head;
        if slot == NIL {
            return None;
        }
        self.free_head = self.slots[slot as usize].last_event;
        self.slots[slot as usize] = Subscriber {
            addr,
            out_addr,
            pool,
            used: 1,
            // Never an event "this second" yet.
            last_event: u32::MAX,
            ..Subscriber::default()
        };
        let ok = self.index.insert(hash, slot);
        debug_assert!(ok);
        self.live += 1;
        Some(slot)
    }

    pub fn remove(&mut self, slot: u32, hash: Hash) {
        let ok = self.index.remove(hash, slot);
        debug_assert!(ok);
        self.slots[slot as usize] = Subscriber {
            last_event: self.free_head,
            ..Subscriber::default()
        };
        self.free_head = slot;
        self.live -= 1;
    }

    /// The subscriber's port blocks.
    #[inline]
    pub fn blocks_of(&self, slot: u32) -> &[u16] {
        let n = self.slots[slot as usize].blocks as usize;
        let start = slot as usize * self.stride;
        &self.blocks[start..start + n.min(self.stride)]
    }

    /// Record a new block; false when the subscriber's array is full.
    pub fn add_block(&mut self, slot: u32, block: u16) -> bool {
        let n = self.slots[slot as usize].blocks as usize;
        if n >= self.stride {
            return false;
        }
        self.blocks[slot as usize * self.stride + n] = block;
        self.slots[slot as usize].blocks += 1;
        true
    }

    /// Forget a block; false if the subscriber did not own it.
    pub fn remove_block(&mut self, slot: u32, block: u16) -> bool {
        let n = self.slots[slot as usize].blocks as usize;
        let start = slot as usize * self.stride;
        let list = &mut self.blocks[start..start + n.min(self.stride)];
        let Some(i) = list.iter().position(|&b| b == block) else {
            return false;
        };
        list.swap(i, n - 1);
        self.slots[slot as usize].blocks -= 1;
        true
    }

    /// Live records with their slots (control plane: O(capacity)).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Subscriber)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_live())
            .map(|(i, s)| (i as u32, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_per_pool_and_recycled() {
        let mut t = SubTable::new(2, 0);
        let h = |a, _p| sub_hash(7, a);
        let a = t.insert(h(10, 0), 10, 0, 99).unwrap();
        let b = t.insert(h(10, 1), 10, 1, 98).unwrap();
        assert_eq!(t.find(h(10, 0), 10, 0), Some(a));
        assert_eq!(t.find(h(10, 1), 10, 1), Some(b));
        assert!(t.insert(h(11, 0), 11, 0, 99).is_none(), "full");
        t.remove(a, h(10, 0));
        assert_eq!(t.find(h(10, 0), 10, 0), None);
        assert_eq!(t.insert(h(11, 0), 11, 0, 99), Some(a));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn block_lists_are_bounded() {
        let mut t = SubTable::new(2, 2);
        let s = t.insert(sub_hash(1, 5), 5, 0, 1).unwrap();
        assert!(t.add_block(s, 7) && t.add_block(s, 9));
        assert!(!t.add_block(s, 11));
        assert_eq!(t.blocks_of(s), &[7, 9]);
        assert!(t.remove_block(s, 7));
        assert!(!t.remove_block(s, 7));
        assert_eq!(t.blocks_of(s), &[9]);
        assert_eq!(t.get(s).blocks, 1);
    }
}
