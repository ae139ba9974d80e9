//! The flow record, its preallocated slab and the sweep that expires it.
//!
//! A record is 32 bytes and holds either one session, or one endpoint-independent mapping with room
//! for one session of its own (its *embedded* session: a plain SNAT flow's only session, so that a
//! 1:1 flow is one record and two index entries, see [`crate::shard`]). Records live in one `Vec`
//! allocated at start: creating one pops a free slot, never allocates. The hot path only stamps
//! `last_seen`; a paced sweep over the slab ([`crate::sweep`]) ends every session whose idle
//! timeout has passed, looking at each slot at least once per pass (one second up to 4 Mi sessions,
//! proportionally longer above), so a session ends between its deadline and one pass after it,
//! never before. Nothing links sessions together: creating or deleting one writes its own line
//! only, and a state change that shortens its timeout (FIN, RST) needs no re-filing, since the
//! sweep reads the deadline from the session itself.

use crate::sweep::Sweep;
use crate::{MemAdvice, Timeouts};
use wire::ip_proto;

/// Slab index meaning "none".
pub const NIL: u32 = u32::MAX;

/// TCP state bits kept in [`Session::state`].
pub mod tcp_state {
    /// An inside SYN has been seen, nothing from outside yet.
    pub const SYN_SENT: u8 = 1;
    /// The outside host answered: the connection is up.
    pub const ESTABLISHED: u8 = 2;
    /// An outside SYN opened the session (endpoint-independent filtering, hairpin), the inside host has
    /// not answered yet.
    pub const SYN_RCVD: u8 = 3;
    pub const PHASE_MASK: u8 = 0x03;
    /// FIN seen from the inside host.
    pub const FIN_IN: u8 = 0x10;
    /// FIN seen from the outside host.
    pub const FIN_OUT: u8 = 0x20;
    /// RST seen in either direction.
    pub const RST: u8 = 0x40;
}

/// Set in [`Session::state`] of a UDP or ICMP session once a packet has travelled the other way from the
/// one that opened it (TCP tells the same from its handshake phase). It shares a bit with
/// [`tcp_state::FIN_IN`], which only TCP sessions use; it is never set on one.
pub const REPLIED: u8 = 0x10;

/// Set in [`Session::state`] (any protocol) of a session a destination NAT rule made: its outside
/// endpoint is the rule's (a virtual address:port, or a 1:1 address), not a port of ours, so it has no
/// mapping. Combined with [`HAIRPIN`] and without [`INBOUND`] it marks the client half of a full-NAT
/// flow instead (see [`Session::is_fullnat_client`]), which does have a mapping: the client's.
pub const DNAT: u8 = 0x04;

/// Connection-tracking state of a session, as `conntrack -L` shows it. The other two conntrack states
/// are states of packets, not sessions: RELATED is an ICMP error about a session (translated with it,
/// counted `icmp_errors_translated`), INVALID a packet no session explains and none may open (dropped and
/// counted: `tcp_invalid`, `no_session`, `icmp_error_unmatched`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Packets seen in the opening direction only (TCP: handshake not answered yet).
    New,
    /// Packets seen both ways (TCP: handshake answered, including while closing).
    Established,
}

/// Set in [`Session::state`] (any protocol) when the remote endpoint is one of our own pool addresses:
/// packets of the session are hairpinned back inside.
pub const HAIRPIN: u8 = 0x80;
/// Set in [`Session::state`] (any protocol) when an inbound packet opened the session.
pub const INBOUND: u8 = 0x08;
/// The flag bits of [`Session::state`] that are not protocol state.
pub(crate) const FLAGS: u8 = HAIRPIN | INBOUND | DNAT;

/// One translation: inside endpoint ↔ outside endpoint, towards one remote endpoint. 24 bytes, the
/// first part of a [`Record`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Session {
    pub in_addr: u32,
    pub rem_addr: u32,
    pub in_port: u16,
    pub rem_port: u16,
    pub out_addr: u32,
    pub out_port: u16,
    pub proto: u8,
    /// Protocol state: for TCP the bits of [`tcp_state`], otherwise 0; plus the [`HAIRPIN`] and
    /// [`INBOUND`] flags.
    pub state: u8,
    /// Tick (seconds) of the last packet that refreshed the session. In a free slot: the next free
    /// slot.
    pub last_seen: u32,
}

const _: () = assert!(std::mem::size_of::<Session>() == 24);

/// [`MapPart::flags`]: the record is a mapping (inside endpoint ↔ outside endpoint of
/// [`Record::s`], protocol and pool of the [`MapPart`]). Its session part holds its embedded
/// session while `s.proto` is set.
pub const MAP: u8 = 1;
/// [`MapPart::flags`]: the mapping has no sessions and is in hold-down until `count`.
pub const HELD: u8 = 2;

/// The mapping part of a record: all zero in a record that holds a separate session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MapPart {
    /// Live mapping: its sessions, the embedded one included. Held: the tick the hold-down ends.
    pub count: u32,
    /// The mapping's protocol (its session part's `proto` is 0 while nothing is embedded).
    pub proto: u8,
    pub pool: u8,
    pub flags: u8,
    pub _pad: u8,
}

/// A slab slot: a session, or a mapping with its embedded session.
///
/// Aligned to 32 bytes, so that no record straddles two cache lines: the burst pipeline prefetches
/// one line per record. (Without it the slab starts wherever the allocator puts it, typically 16
/// bytes into a page, and every other record spans two lines, the second never prefetched.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Record {
    /// The session: a separate one, or a mapping's endpoints and its embedded session.
    pub s: Session,
    pub m: MapPart,
}

const _: () = assert!(std::mem::size_of::<Record>() == 32);
const _: () = assert!(std::mem::align_of::<Record>() == 32);

impl Record {
    /// Whether the record is a mapping (live or held).
    #[inline]
    pub fn is_map(&self) -> bool {
        self.m.flags & MAP != 0
    }

    /// Whether the record is a mapping in hold-down.
    #[inline]
    pub fn is_held(&self) -> bool {
        self.m.flags & HELD != 0
    }

    /// A mapping's sessions that are separate records (they have 5-tuple index entries).
    #[inline]
    pub fn separate_sessions(&self) -> u32 {
        if self.is_held() {
            0
        } else {
            self.m.count - u32::from(self.s.proto != 0)
        }
    }

    /// Whether the slot is in use (a free one is all zero but its free-list link).
    #[inline]
    fn is_used(&self) -> bool {
        self.s.proto != 0 || self.m.flags != 0
    }
}

impl Session {
    /// Idle timeout in seconds for the session's protocol and state.
    #[inline]
    pub fn timeout(&self, t: &Timeouts) -> u32 {
        match self.proto {
            ip_proto::TCP => {
                if self.state & !FLAGS == tcp_state::ESTABLISHED {
                    t.tcp_established
                } else {
                    t.tcp_transitory
                }
            }
            ip_proto::UDP => t.udp,
            _ => t.icmp,
        }
    }

    /// Tick at which the session expires if nothing refreshes it.
    #[inline]
    pub fn deadline(&self, t: &Timeouts) -> u32 {
        self.last_seen.saturating_add(self.timeout(t))
    }

    /// Whether the slot holds a live session (used by listings; free slots have `proto == 0`).
    pub fn is_live(&self) -> bool {
        self.proto != 0
    }

    /// Whether the session's packets are hairpinned (its remote endpoint is one of our pool addresses).
    pub fn is_hairpin(&self) -> bool {
        self.state & HAIRPIN != 0
    }

    /// Whether an inbound packet opened the session.
    pub fn is_inbound(&self) -> bool {
        self.state & INBOUND != 0
    }

    /// Whether a destination NAT rule made the session (its outside endpoint is the rule's).
    #[inline]
    pub fn is_dnat(&self) -> bool {
        self.state & (DNAT | HAIRPIN | INBOUND) != DNAT | HAIRPIN && self.state & DNAT != 0
    }

    /// Whether the session is the client half of a full-NAT flow: inside endpoint = the outside
    /// client, outside endpoint = the address:port it was translated to, remote = the virtual
    /// address. Its inside key is matched by packets arriving from outside.
    #[inline]
    pub fn is_fullnat_client(&self) -> bool {
        self.state & (DNAT | HAIRPIN | INBOUND) == DNAT | HAIRPIN
    }

    /// The session's connection-tracking state.
    pub fn ct_state(&self) -> CtState {
        let up = match self.proto {
            // After the handshake the phase stays ESTABLISHED while the FIN/RST bits record closing.
            ip_proto::TCP => self.state & tcp_state::PHASE_MASK == tcp_state::ESTABLISHED,
            _ => self.state & REPLIED != 0,
        };
        if up {
            CtState::Established
        } else {
            CtState::New
        }
    }

    /// A TCP connection that ended with a FIN from each side and no RST: its port may skip the
    /// hold-down (RFC 6888 REQ-8 a; the session already waited out the 4-minute transitory timeout,
    /// which covers TIME_WAIT, RFC 7857 section 2.2).
    pub fn closed_cleanly(&self) -> bool {
        let both = tcp_state::FIN_IN | tcp_state::FIN_OUT;
        self.proto == ip_proto::TCP && self.state & both == both && self.state & tcp_state::RST == 0
    }
}

/// Slab of records, with the sweep that expires sessions and ends hold-downs.
pub struct Slab {
    slots: Vec<Record>,
    capacity: u32,
    free_head: u32,
    /// Records in use.
    live: u32,
    /// Bumped by every change of which sessions and mappings exist, so that the burst pipeline
    /// can tell whether a lookup it made before the burst's slow paths ran still holds.
    epoch: u32,
    sweep: Sweep,
}

impl Slab {
    #[cfg(test)]
    pub fn new(capacity: u32, now: u32) -> Slab {
        Slab::new_advised(capacity, now, None)
    }

    /// As [`Slab::new`], passing the slab's memory to `advise` before it is first written (the
    /// data plane uses it to ask for transparent huge pages).
    pub fn new_advised(capacity: u32, now: u32, advise: Option<MemAdvice>) -> Slab {
        let total = capacity as usize;
        let mut slots = crate::advised_vec(total, Record::default(), advise);
        // Free list threaded through `last_seen`, in ascending order so early records are dense in
        // memory.
        for i in 0..capacity {
            slots[i as usize].s.last_seen = if i + 1 < capacity { i + 1 } else { NIL };
        }
        Slab {
            slots,
            capacity,
            free_head: if capacity > 0 { 0 } else { NIL },
            live: 0,
            epoch: 0,
            sweep: Sweep::new(capacity, now),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn live(&self) -> u32 {
        self.live
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Record>()
    }

    /// Whether no record is free.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_head == NIL
    }

    /// See [`Slab::epoch`]'s field.
    #[inline]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The session part of a record.
    #[inline]
    pub fn get(&self, slot: u32) -> &Session {
        &self.slots[slot as usize].s
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Session {
        &mut self.slots[slot as usize].s
    }

    #[inline]
    pub fn rec(&self, slot: u32) -> &Record {
        &self.slots[slot as usize]
    }

    /// A record's mapping part (the caller keeps [`Slab::epoch`] true: holds and revivals do not
    /// change which sessions exist).
    #[inline]
    pub fn map_mut(&mut self, slot: u32) -> &mut MapPart {
        &mut self.slots[slot as usize].m
    }

    /// Store a new session in a record of its own. `None` when the slab is full.
    pub fn insert(&mut self, s: Session) -> Option<u32> {
        self.insert_record(Record {
            s,
            m: MapPart::default(),
        })
    }

    /// Store a new record. `None` when the slab is full.
    pub fn insert_record(&mut self, r: Record) -> Option<u32> {
        let slot = self.free_head;
        if slot == NIL {
            return None;
        }
        self.free_head = self.slots[slot as usize].s.last_seen;
        self.slots[slot as usize] = r;
        self.live += 1;
        self.epoch = self.epoch.wrapping_add(1);
        Some(slot)
    }

    /// Put `s` in mapping record `slot` as its embedded session (its session part is free).
    pub fn embed(&mut self, slot: u32, s: Session) {
        let r = &mut self.slots[slot as usize];
        debug_assert!(r.is_map() && r.s.proto == 0);
        r.s = s;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// End the embedded session of mapping record `slot`, keeping the mapping's endpoints.
    pub fn unembed(&mut self, slot: u32) -> Session {
        let r = &mut self.slots[slot as usize];
        let s = r.s;
        r.s.proto = 0;
        r.s.state = 0;
        r.s.rem_addr = 0;
        r.s.rem_port = 0;
        self.epoch = self.epoch.wrapping_add(1);
        s
    }

    /// Return the slot to the free list.
    pub fn remove(&mut self, slot: u32) -> Record {
        let r = self.slots[slot as usize];
        self.slots[slot as usize] = Record {
            s: Session {
                last_seen: self.free_head,
                ..Session::default()
            },
            m: MapPart::default(),
        };
        self.free_head = slot;
        self.live -= 1;
        self.epoch = self.epoch.wrapping_add(1);
        r
    }

    /// The expiry sweep's position and pace (a session ends at most one pass late).
    #[inline]
    pub fn sweep_state(&self) -> &Sweep {
        &self.sweep
    }

    /// How many slots of the sweep to look at now: at most `budget`, and no more than the ticks up
    /// to `now` grant. Take them with [`Slab::sweep_step`].
    #[inline]
    pub fn sweep_grant(&mut self, now: u32, budget: u32) -> u32 {
        self.sweep.grant(now, budget)
    }

    /// Look at the sweep's next slot: `Some(slot)` if it holds a session past its deadline at
    /// `now`, or a mapping whose hold-down is over, which the caller then ends.
    #[inline]
    pub fn sweep_step(&mut self, now: u32, t: &Timeouts) -> Option<u32> {
        let slot = self.sweep.next();
        let r = &self.slots[slot as usize];
        ((r.s.is_live() && r.s.deadline(t) <= now) || (r.is_held() && r.m.count <= now))
            .then_some(slot)
    }

    /// Go on with the sweep ([`Slab::sweep_grant`], [`Slab::sweep_step`]), handing each session
    /// past its deadline to `expire`, which must remove it (and may remove others too). Returns
    /// how many slots were looked at.
    #[cfg(test)]
    pub fn sweep(
        &mut self,
        now: u32,
        budget: u32,
        t: &Timeouts,
        mut expire: impl FnMut(&mut Slab, u32),
    ) -> u32 {
        let n = self.sweep_grant(now, budget);
        for _ in 0..n {
            if let Some(slot) = self.sweep_step(now, t) {
                expire(self, slot);
                assert!(!self.slots[slot as usize].s.is_live());
            }
        }
        n
    }

    /// Iterate over live sessions with their slot numbers (control-plane use: O(capacity)).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, r)| r.s.is_live())
            .map(|(i, r)| (i as u32, &r.s))
    }

    /// Iterate over the records in use with their slot numbers (control-plane use: O(capacity)).
    pub fn records(&self) -> impl Iterator<Item = (u32, &Record)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_used())
            .map(|(i, r)| (i as u32, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            tcp_established: 7440,
            tcp_transitory: 240,
            udp: 300,
            icmp: 60,
        }
    }

    fn udp(last_seen: u32, port: u16) -> Session {
        Session {
            in_addr: 1,
            rem_addr: 2,
            in_port: port,
            rem_port: 53,
            out_addr: 3,
            out_port: port,
            proto: ip_proto::UDP,
            last_seen,
            ..Session::default()
        }
    }

    #[test]
    fn a_record_is_one_half_line() {
        assert_eq!(std::mem::size_of::<Record>(), 32);
        let s = Slab::new(4, 0);
        assert_eq!(s.rec(1) as *const Record as usize % 32, 0);
    }

    #[test]
    fn a_mapping_record_counts_its_separate_sessions_and_sweeps_its_hold_down() {
        let tm = t();
        let mut s = Slab::new(4, 0);
        let m = Record {
            s: Session {
                proto: 0,
                ..udp(0, 7)
            },
            m: MapPart {
                count: 0,
                proto: ip_proto::UDP,
                pool: 0,
                flags: MAP,
                _pad: 0,
            },
        };
        let slot = s.insert_record(m).unwrap();
        assert_eq!(s.iter().count(), 0, "a mapping alone is no session");
        assert_eq!(s.records().count(), 1);
        s.embed(slot, udp(5, 7));
        s.map_mut(slot).count = 3;
        assert_eq!(s.rec(slot).separate_sessions(), 2);
        assert_eq!(s.iter().count(), 1);
        // The embedded session expires like any other; the mapping stays.
        let mut ended = Vec::new();
        for now in 0..=306 {
            while s.sweep_state().due(now) {
                s.sweep(now, 7, &tm, |sl, x| {
                    ended.push((now, sl.unembed(x).in_port))
                });
            }
        }
        assert_eq!(ended, vec![(305, 7)]);
        assert!(s.rec(slot).is_map() && !s.get(slot).is_live());
        assert_eq!(
            s.get(slot).in_port,
            7,
            "the endpoints stay with the mapping"
        );
        let mm = s.map_mut(slot);
        mm.count = 400;
        mm.flags |= HELD;
        let mut due = Vec::new();
        for now in 300..=401 {
            while s.sweep_state().due(now) {
                s.sweep_grant(now, 8);
                for _ in 0..8 {
                    if let Some(x) = s.sweep_step(now, &tm) {
                        due.push((x, now));
                        s.remove(x);
                    }
                }
            }
        }
        assert_eq!(due, vec![(slot, 400)]);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn hairpin_flag_does_not_change_the_timeout_and_clean_close_needs_both_fins() {
        let tm = t();
        let mut s = Session {
            proto: ip_proto::TCP,
            state: tcp_state::ESTABLISHED | HAIRPIN | INBOUND,
            ..udp(0, 1)
        };
        assert_eq!(s.timeout(&tm), tm.tcp_established);
        assert!(s.is_inbound());
        assert!(s.is_hairpin());
        s.state |= tcp_state::FIN_IN;
        assert!(!s.closed_cleanly());
        s.state |= tcp_state::FIN_OUT;
        assert!(s.closed_cleanly());
        s.state |= tcp_state::RST;
        assert!(!s.closed_cleanly());
        assert!(!udp(0, 1).closed_cleanly());
    }

    #[test]
    fn full_slab_refuses_then_reuses_freed_slot() {
        let mut s = Slab::new(3, 0);
        let a = s.insert(udp(0, 1)).unwrap();
        s.insert(udp(0, 2)).unwrap();
        s.insert(udp(0, 3)).unwrap();
        assert_eq!(s.insert(udp(0, 4)), None);
        s.remove(a);
        assert_eq!(s.insert(udp(0, 5)), Some(a));
        assert_eq!(s.live(), 3);
    }

    /// Sweep at every tick from `from` to `until` as a worker would (small budget, many calls per
    /// second), removing what expires; returns the tick each expired slot went at.
    fn run(s: &mut Slab, tm: &Timeouts, from: u32, until: u32) -> Vec<(u32, u32)> {
        let mut gone = Vec::new();
        for now in from..=until {
            while s.sweep_state().due(now) {
                s.sweep(now, 7, tm, |sl, slot| {
                    gone.push((slot, now));
                    sl.remove(slot);
                });
            }
        }
        gone
    }

    #[test]
    fn expires_exactly_at_deadline_not_before() {
        let tm = t();
        let mut s = Slab::new(16, 0);
        let a = s.insert(udp(0, 1)).unwrap();
        let b = s.insert(udp(10, 2)).unwrap();
        assert!(run(&mut s, &tm, 0, 299).is_empty());
        assert_eq!(run(&mut s, &tm, 300, 310), vec![(a, 300), (b, 310)]);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn refreshed_session_survives_and_long_timeouts_are_kept() {
        let tm = t();
        let mut s = Slab::new(16, 0);
        let tcp = Session {
            proto: ip_proto::TCP,
            state: tcp_state::ESTABLISHED,
            ..udp(0, 9)
        };
        let slot = s.insert(tcp).unwrap();
        assert!(run(&mut s, &tm, 0, 4999).is_empty());
        // Refreshed at 5000 s: the 7440 s deadline moves to 12440.
        s.get_mut(slot).last_seen = 5000;
        assert!(run(&mut s, &tm, 5000, 12_439).is_empty());
        assert_eq!(run(&mut s, &tm, 12_440, 12_440), vec![(slot, 12_440)]);
    }

    #[test]
    fn a_shorter_timeout_applies_without_refiling() {
        let tm = t();
        let mut s = Slab::new(4, 0);
        let slot = s
            .insert(Session {
                proto: ip_proto::TCP,
                state: tcp_state::ESTABLISHED,
                ..udp(0, 1)
            })
            .unwrap();
        assert!(run(&mut s, &tm, 0, 100).is_empty());
        s.get_mut(slot).state = tcp_state::ESTABLISHED | tcp_state::RST;
        assert_eq!(run(&mut s, &tm, 101, 1000), vec![(slot, 240)]);
    }

    #[test]
    fn budget_bounds_work_and_backlog_drains_later() {
        let tm = t();
        let mut s = Slab::new(1000, 0);
        for i in 0..1000 {
            s.insert(udp(0, i as u16)).unwrap();
        }
        let mut n = 0;
        let seen = s.sweep(400, 100, &tm, |sl, x| {
            n += 1;
            sl.remove(x);
        });
        assert_eq!(seen, 100);
        assert_eq!(n, 100);
        while s.sweep_state().due(400) {
            s.sweep(400, 100, &tm, |sl, x| {
                sl.remove(x);
            });
        }
        assert_eq!(s.live(), 0);
        assert_eq!(s.iter().count(), 0);
        // Every slot went back to the free list.
        for i in 0..1000 {
            assert!(s.insert(udp(400, i as u16)).is_some());
        }
        assert!(s.insert(udp(400, 0)).is_none());
    }

    #[test]
    fn a_session_removed_with_another_is_not_expired_twice() {
        // A full-NAT flow's halves go together: the callback removes the next slot as well.
        let tm = t();
        let mut s = Slab::new(8, 0);
        let a = s.insert(udp(0, 1)).unwrap();
        let b = s.insert(udp(0, 2)).unwrap();
        let mut calls = Vec::new();
        for now in 300..302 {
            while s.sweep_state().due(now) {
                s.sweep(now, 3, &tm, |sl, x| {
                    calls.push(x);
                    sl.remove(x);
                    if x == a {
                        sl.remove(b);
                    }
                });
            }
        }
        assert_eq!(calls, vec![a]);
        assert_eq!(s.live(), 0);
    }
}
