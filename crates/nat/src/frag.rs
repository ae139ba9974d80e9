//! Virtual reassembly of IPv4 fragments (RFC 4787 REQ-14: in order and out of order).
//!
//! Only the first fragment of a datagram carries the transport header, so only it names the session.
//! Rather than reassembling datagrams (which costs a copy and a buffer per datagram and changes what the
//! far side receives), the NAT remembers the first fragment's transport identifiers under the datagram's
//! key (source, destination, protocol, IP identification) and translates every later fragment with
//! them: the datagram crosses the NAT fragmented exactly as it was sent, and the far host reassembles it.
//!
//! A later fragment that arrives before its first fragment is held here (bounded, per core) until the
//! first fragment arrives or `timeout_ms` passes. The table of datagrams in flight is bounded too; an
//! entry ends when every byte of its datagram has been seen, or at its deadline.
//!
//! The buffer type is generic: the data plane holds mbufs, tests hold `Vec<u8>`. Nothing here allocates
//! after construction.
//!
//! # Limitations
//!
//! Completion is judged by counting payload bytes, so a datagram whose fragments overlap (or repeat)
//! ends its entry early, and its remaining fragments are then held and time out: overlapping fragments
//! are an attack pattern (RFC 1858, RFC 3128), not something a real stack sends. An entry lives at most
//! `timeout_ms` from its first fragment, so a datagram whose fragments are spread over longer than that
//! is not translated whole.

use crate::DropReason;
use wire::{Ipv4Packet, icmp_type, ip_proto};

/// Slots looked at per lookup: the table runs at a load of at most ½, so a window this long almost never
/// fills; when it does, the new datagram is refused (`fragment_table_full`) rather than evicting one.
const PROBE: usize = 16;

/// Reassembly limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragConfig {
    /// Fragmented datagrams tracked at once per core.
    pub max_datagrams: u32,
    /// Out-of-order fragments held per core while their first fragment is awaited.
    pub max_held: u32,
    /// How long a datagram is tracked after its first fragment, and how long a held fragment waits.
    pub timeout_ms: u32,
}

impl Default for FragConfig {
    /// 4096 datagrams in flight per core is far above what an access network fragments (mostly large
    /// UDP: DNSSEC, VPNs, games); 2 s covers the reordering a real path produces while not tying up
    /// memory for datagrams that lost a fragment (the sender's own reassembly timer is 15-60 s, and it
    /// cannot complete anyway).
    fn default() -> Self {
        FragConfig {
            max_datagrams: 4096,
            max_held: 256,
            timeout_ms: 2000,
        }
    }
}

/// The identity of a fragmented datagram (RFC 791: source, destination, protocol, identification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub ident: u16,
    pub proto: u8,
}

impl FragKey {
    #[inline]
    fn hash(&self, seed: u64) -> u64 {
        let a = (u64::from(self.src) << 32) | u64::from(self.dst);
        let b = (u64::from(self.ident) << 8) | u64::from(self.proto);
        let mut h =
            (a ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 31;
        h
    }
}

/// The transport identifiers of a datagram, as its first fragment carries them: source and destination
/// port for TCP and UDP; for ICMP the message type and the echo identifier (`sport`, `dport` 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct L4Ids {
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
}

/// What [`Reassembly::classify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragClass {
    /// Not a fragment (or not one this module tracks: other protocols, invalid headers). Process it
    /// normally.
    Whole,
    /// The first fragment; its datagram is now tracked. Call [`Reassembly::release`] for its key if
    /// fragments are held.
    First(FragKey),
    /// A later fragment of a tracked datagram: translate it with these identifiers.
    Later(L4Ids),
    /// A later fragment whose first fragment has not been seen: [`Reassembly::hold`] it.
    Unknown(FragKey),
    /// Refuse it, counted under the reason.
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: FragKey,
    ids: L4Ids,
    /// Milliseconds; 0 marks a free slot.
    deadline: u64,
    /// Payload bytes seen so far, and the datagram's payload length once its last fragment is seen.
    seen: u32,
    total: u32,
    /// Two first fragments with different ports were seen: nobody can tell which is genuine, so every
    /// fragment of the datagram is refused until the entry's deadline.
    poisoned: bool,
}

struct Held<T> {
    key: FragKey,
    deadline: u64,
    buf: T,
}

/// One core's virtual reassembly state.
pub struct Reassembly<T> {
    cfg: FragConfig,
    seed: u64,
    table: Vec<Entry>,
    mask: usize,
    held: Vec<Option<Held<T>>>,
    held_count: usize,
    /// Earliest deadline among the held fragments, so that expiry is a compare when nothing is due.
    next_due: u64,
}

impl<T> Reassembly<T> {
    pub fn new(cfg: FragConfig, seed: u64) -> Reassembly<T> {
        let slots = (cfg.max_datagrams.max(1) as usize * 2).next_power_of_two();
        Reassembly {
            cfg,
            seed,
            table: vec![Entry::default(); slots],
            mask: slots - 1,
            held: (0..cfg.max_held).map(|_| None).collect(),
            held_count: 0,
            next_due: u64::MAX,
        }
    }

    pub fn config(&self) -> &FragConfig {
        &self.cfg
    }

    /// Datagrams tracked right now (deadline not yet passed at `now`).
    pub fn tracked(&self, now: u64) -> usize {
        self.table.iter().filter(|e| e.deadline > now).count()
    }

    /// Fragments held right now.
    pub fn held(&self) -> usize {
        self.held_count
    }

    /// Look at a packet (from its IPv4 header on) and say how to treat it. `now` is in milliseconds and
    /// must not go backwards.
    #[inline]
    pub fn classify(&mut self, pkt: &[u8], now: u64) -> FragClass {
        // Nearly every packet is whole: tell from the MF bit and offset alone, and leave the full
        // header check to the translator's parser, which does it anyway.
        match pkt.get(6..8) {
            Some(f) if f[0] & 0x3f == 0 && f[1] == 0 => return FragClass::Whole,
            None => return FragClass::Whole,
            _ => {}
        }
        let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
            return FragClass::Whole;
        };
        if !ip.is_fragment() {
            return FragClass::Whole;
        }
        let proto = ip.protocol();
        if !matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP) {
            return FragClass::Whole;
        }
        let key = FragKey {
            src: ip.src_addr_u32(),
            dst: ip.dst_addr_u32(),
            ident: ip.ident(),
            proto,
        };
        let payload = ip.payload();
        let len = payload.len() as u32;
        let offset = u32::from(ip.frag_offset());
        let last = !ip.more_frags();
        if offset == 0 {
            let Some(ids) = first_ids(proto, payload) else {
                return FragClass::Drop(DropReason::FragmentMalformed);
            };
            return match self.find(&key, now) {
                Some(i) => {
                    let e = &mut self.table[i];
                    if e.poisoned || e.ids != ids {
                        // A second "first fragment" naming other ports: an overlap attack (RFC 1858)
                        // or a spoofed fragment that arrived first. Either way the datagram can no
                        // longer be translated safely.
                        e.poisoned = true;
                        return FragClass::Drop(DropReason::FragmentMalformed);
                    }
                    self.account(i, 0, len, last);
                    FragClass::First(key)
                }
                None => match self.insert(key, ids, now) {
                    Some(i) => {
                        self.account(i, 0, len, last);
                        FragClass::First(key)
                    }
                    None => FragClass::Drop(DropReason::FragmentTableFull),
                },
            };
        }
        // RFC 1858: a TCP fragment at offset 8 could rewrite the flags of the header the first fragment
        // carried; no real stack sends one.
        if proto == ip_proto::TCP && offset == 8 {
            return FragClass::Drop(DropReason::FragmentMalformed);
        }
        match self.find(&key, now) {
            Some(i) if self.table[i].poisoned => FragClass::Drop(DropReason::FragmentMalformed),
            Some(i) => {
                let ids = self.table[i].ids;
                self.account(i, offset, len, last);
                FragClass::Later(ids)
            }
            None => FragClass::Unknown(key),
        }
    }

    /// Forget a datagram whose first fragment the translator refused (no session, filtered, a limit):
    /// its later fragments have nowhere to go, and an outside host must not be able to fill the table
    /// with first fragments nobody accepts. Held fragments of it time out.
    pub fn forget(&mut self, key: &FragKey, now: u64) {
        if let Some(i) = self.find(key, now)
            && !self.table[i].poisoned
        {
            self.table[i].deadline = 0;
        }
    }

    /// Keep a fragment until its first fragment arrives. Gives it back when the hold buffer is full (the
    /// caller frees it and counts `fragment_hold_full`).
    pub fn hold(&mut self, key: FragKey, buf: T, now: u64) -> Result<(), T> {
        if self.held_count >= self.held.len() {
            return Err(buf);
        }
        let Some(slot) = self.held.iter_mut().find(|h| h.is_none()) else {
            return Err(buf);
        };
        let deadline = now + u64::from(self.cfg.timeout_ms);
        *slot = Some(Held { key, deadline, buf });
        self.held_count += 1;
        self.next_due = self.next_due.min(deadline);
        Ok(())
    }

    /// Hand every held fragment of `key` to `out` (in no particular order: the receiver reassembles).
    /// Each must go through [`Reassembly::classify`] again, which now finds its datagram.
    pub fn release(&mut self, key: &FragKey, mut out: impl FnMut(T)) -> usize {
        if self.held_count == 0 {
            return 0;
        }
        let mut n = 0;
        for slot in self.held.iter_mut() {
            if slot.as_ref().is_some_and(|h| h.key == *key)
                && let Some(h) = slot.take()
            {
                out(h.buf);
                n += 1;
            }
        }
        self.held_count -= n;
        n
    }

    /// Give every held fragment whose wait is over to `dropped` (the caller frees them and counts
    /// `fragment_timeout`). Cheap when nothing is due.
    pub fn expire(&mut self, now: u64, mut dropped: impl FnMut(T)) -> usize {
        if self.held_count == 0 || now < self.next_due {
            return 0;
        }
        let mut n = 0;
        let mut next = u64::MAX;
        for slot in self.held.iter_mut() {
            match slot {
                Some(h) if h.deadline <= now => {
                    if let Some(h) = slot.take() {
                        dropped(h.buf);
                        n += 1;
                    }
                }
                Some(h) => next = next.min(h.deadline),
                None => {}
            }
        }
        self.held_count -= n;
        self.next_due = next;
        n
    }

    /// Drop everything held (shutdown), handing each buffer to `dropped`.
    pub fn clear(&mut self, mut dropped: impl FnMut(T)) {
        for slot in self.held.iter_mut() {
            if let Some(h) = slot.take() {
                dropped(h.buf);
            }
        }
        self.held_count = 0;
        self.next_due = u64::MAX;
        self.table.fill(Entry::default());
    }

    #[inline]
    fn find(&self, key: &FragKey, now: u64) -> Option<usize> {
        let home = key.hash(self.seed) as usize;
        (0..PROBE)
            .map(|d| (home + d) & self.mask)
            .find(|&i| self.table[i].deadline > now && self.table[i].key == *key)
    }

    fn insert(&mut self, key: FragKey, ids: L4Ids, now: u64) -> Option<usize> {
        let home = key.hash(self.seed) as usize;
        let i = (0..PROBE)
            .map(|d| (home + d) & self.mask)
            .find(|&i| self.table[i].deadline <= now)?;
        self.table[i] = Entry {
            key,
            ids,
            deadline: now + u64::from(self.cfg.timeout_ms).max(1),
            seen: 0,
            total: 0,
            poisoned: false,
        };
        Some(i)
    }

    /// Count a fragment's bytes; the entry ends once the whole datagram has been seen.
    #[inline]
    fn account(&mut self, i: usize, offset: u32, len: u32, last: bool) {
        let e = &mut self.table[i];
        e.seen = e.seen.saturating_add(len);
        if last {
            e.total = offset + len;
        }
        if e.total != 0 && e.seen >= e.total {
            e.deadline = 0;
        }
    }
}

/// The identifiers a first fragment carries, if it holds the whole transport header (RFC 1858: a first
/// fragment too short for it is an attack; RFC 791 guarantees 8 bytes, and TCP needs 20).
fn first_ids(proto: u8, l4: &[u8]) -> Option<L4Ids> {
    let be = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    match proto {
        ip_proto::TCP if l4.len() >= 20 => Some(L4Ids {
            sport: be(0),
            dport: be(2),
            icmp_type: 0,
        }),
        ip_proto::UDP if l4.len() >= 8 => Some(L4Ids {
            sport: be(0),
            dport: be(2),
            icmp_type: 0,
        }),
        // Only queries are fragmented legitimately (a large ping); an ICMP error is at most 576 bytes
        // and a fragmented one is refused, never translated in pieces.
        ip_proto::ICMP
            if l4.len() >= 8
                && matches!(l4[0], icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY) =>
        {
            Some(L4Ids {
                sport: be(4),
                dport: 0,
                icmp_type: l4[0],
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testpkt::{fragment, udp};
    use wire::Ipv4Addr;

    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    const SRV: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    fn reasm(max_datagrams: u32, max_held: u32) -> Reassembly<Vec<u8>> {
        Reassembly::new(
            FragConfig {
                max_datagrams,
                max_held,
                timeout_ms: 1000,
            },
            42,
        )
    }

    fn three_fragments(ident: u16) -> Vec<Vec<u8>> {
        let d = udp(SUB, 5000, SRV, 53, &[7u8; 3000]);
        fragment(&d, ident, 1200)
    }

    #[test]
    fn in_order_fragments_get_the_first_fragments_ports() {
        let mut r = reasm(16, 4);
        let f = three_fragments(1);
        assert_eq!(f.len(), 3);
        assert!(matches!(r.classify(&f[0], 10), FragClass::First(_)));
        let ids = L4Ids {
            sport: 5000,
            dport: 53,
            icmp_type: 0,
        };
        assert_eq!(r.classify(&f[1], 11), FragClass::Later(ids));
        assert_eq!(r.classify(&f[2], 12), FragClass::Later(ids));
        // Every byte seen: the entry ends at once rather than at its deadline.
        assert_eq!(r.tracked(12), 0);
    }

    #[test]
    fn whole_packets_and_other_protocols_pass_through() {
        let mut r = reasm(16, 4);
        assert_eq!(r.classify(&udp(SUB, 1, SRV, 2, b"x"), 0), FragClass::Whole);
        let mut gre = three_fragments(9)[1].clone();
        gre[9] = 47;
        assert_eq!(r.classify(&gre, 0), FragClass::Whole);
        assert_eq!(r.classify(&[1, 2, 3], 0), FragClass::Whole);
    }

    #[test]
    fn out_of_order_fragments_are_held_then_released_with_the_first() {
        let mut r = reasm(16, 4);
        let f = three_fragments(2);
        let FragClass::Unknown(k2) = r.classify(&f[2], 0) else {
            panic!("last fragment first must be unknown");
        };
        r.hold(k2, f[2].clone(), 0).unwrap();
        let FragClass::Unknown(k1) = r.classify(&f[1], 1) else {
            panic!("middle fragment must be unknown");
        };
        r.hold(k1, f[1].clone(), 1).unwrap();
        assert_eq!(r.held(), 2);
        let FragClass::First(k) = r.classify(&f[0], 5) else {
            panic!("first fragment");
        };
        let mut out = Vec::new();
        assert_eq!(r.release(&k, |b| out.push(b)), 2);
        assert_eq!(r.held(), 0);
        for b in &out {
            assert!(matches!(r.classify(b, 6), FragClass::Later(ids) if ids.sport == 5000));
        }
        assert_eq!(r.tracked(6), 0);
    }

    #[test]
    fn a_refused_first_fragment_leaves_no_entry_behind() {
        let mut r = reasm(1, 4);
        // Two slots: an outside host's first fragments that the translator refuses are forgotten at
        // once, so they cannot fill the table.
        for id in 0..100u16 {
            let FragClass::First(k) = r.classify(&three_fragments(id)[0], 0) else {
                panic!("slot {id} refused: the table filled up");
            };
            r.forget(&k, 0);
        }
        assert_eq!(r.tracked(0), 0);
        assert!(matches!(
            r.classify(&three_fragments(1)[1], 0),
            FragClass::Unknown(_)
        ));
    }

    #[test]
    fn held_fragments_time_out_and_the_buffer_is_bounded() {
        let mut r = reasm(16, 2);
        let (a, b, c) = (three_fragments(3), three_fragments(4), three_fragments(5));
        for (f, t) in [(&a, 0), (&b, 500)] {
            let FragClass::Unknown(k) = r.classify(&f[1], t) else {
                panic!()
            };
            r.hold(k, f[1].clone(), t).unwrap();
        }
        let FragClass::Unknown(k) = r.classify(&c[1], 600) else {
            panic!()
        };
        assert!(r.hold(k, c[1].clone(), 600).is_err(), "buffer of 2 is full");
        let mut dropped = 0;
        assert_eq!(r.expire(999, |_| dropped += 1), 0);
        assert_eq!(r.expire(1000, |_| dropped += 1), 1);
        assert_eq!(r.expire(1500, |_| dropped += 1), 1);
        assert_eq!((dropped, r.held()), (2, 0));
    }

    #[test]
    fn datagram_entries_expire_and_the_table_is_bounded() {
        let mut r = reasm(1, 4);
        // Two slots (load ½); only the first fragments arrive, so the entries stay.
        let mut refused = 0;
        for id in 0..8u16 {
            match r.classify(&three_fragments(100 + id)[0], 0) {
                FragClass::First(_) => {}
                FragClass::Drop(DropReason::FragmentTableFull) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(refused, 6);
        // After the deadline the slots are free again, and a late fragment is unknown.
        assert!(matches!(
            r.classify(&three_fragments(100)[1], 1000),
            FragClass::Unknown(_)
        ));
        assert!(matches!(
            r.classify(&three_fragments(200)[0], 1000),
            FragClass::First(_)
        ));
    }

    #[test]
    fn tiny_overlapping_and_conflicting_fragments_are_refused() {
        let mut r = reasm(16, 4);
        let d = udp(SUB, 5000, SRV, 53, &[1u8; 100]);
        // A first fragment of 4 payload bytes cannot hold the 8-byte UDP header.
        let mut tiny = fragment(&d, 7, 8)[0].clone();
        tiny.truncate(24);
        tiny[2..4].copy_from_slice(&24u16.to_be_bytes());
        let mut ip = Ipv4Packet::new_unchecked(&mut tiny[..]);
        ip.fill_checksum();
        assert_eq!(
            r.classify(&tiny, 0),
            FragClass::Drop(DropReason::FragmentMalformed)
        );
        // A second first fragment with other ports poisons the datagram: whichever came first may
        // be the spoofed one, so neither first fragment nor any later one is translated.
        let f = three_fragments(8);
        assert!(matches!(r.classify(&f[0], 0), FragClass::First(_)));
        let other = fragment(&udp(SUB, 5001, SRV, 53, &[7u8; 3000]), 8, 1200);
        assert_eq!(
            r.classify(&other[0], 0),
            FragClass::Drop(DropReason::FragmentMalformed)
        );
        assert_eq!(
            r.classify(&f[0], 0),
            FragClass::Drop(DropReason::FragmentMalformed)
        );
        assert_eq!(
            r.classify(&f[1], 0),
            FragClass::Drop(DropReason::FragmentMalformed)
        );
        // TCP at offset 8 (RFC 1858).
        let t = crate::rewrite::testpkt::tcp_payload(SUB, 4000, SRV, 80, &[0u8; 64]);
        let tf = fragment(&t, 9, 8);
        assert_eq!(
            r.classify(&tf[1], 0),
            FragClass::Drop(DropReason::FragmentMalformed)
        );
    }
}
