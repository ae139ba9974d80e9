//! The session record, its preallocated slab and the timer wheel that expires it.
//!
//! Sessions are 32 bytes and live in one `Vec` allocated at start: creating one pops a free slot, never
//! allocates. Expiry uses a hashed timer wheel of one-second ticks whose lists are threaded through the
//! sessions themselves (`next`/`prev`), so the hot path only stamps `last_seen`; when a wheel slot comes
//! due each session in it is either expired or re-filed at its real deadline. Every session is therefore
//! looked at about once per timeout period, and the work per call is bounded by a budget.

use crate::{MemAdvice, Timeouts};
use wire::ip_proto;

/// Slab index meaning "none".
pub const NIL: u32 = u32::MAX;

/// Wheel size in one-second ticks. Deadlines further away are filed at the far edge and re-filed when
/// that slot comes due.
pub const WHEEL_SLOTS: u32 = 1024;

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

/// One translation: inside endpoint ↔ outside endpoint, towards one remote endpoint.
///
/// Aligned to its size, so that no session straddles two cache lines: the burst pipeline prefetches
/// one line per session. (Without it the slab starts wherever the allocator puts it, typically 16
/// bytes into a page, and every other session spans two lines, the second never prefetched.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
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
    /// Wheel tick (seconds) of the last packet that refreshed the session.
    pub last_seen: u32,
    pub(crate) next: u32,
    pub(crate) prev: u32,
}

const _: () = assert!(std::mem::size_of::<Session>() == 32);
const _: () = assert!(std::mem::align_of::<Session>() == 32);

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

/// Slab of sessions plus wheel sentinels. Slots `0..capacity` are sessions; slots
/// `capacity..capacity+WHEEL_SLOTS` are the list heads of the wheel, so unlinking never needs to know
/// which list a session is on.
pub struct Slab {
    slots: Vec<Session>,
    capacity: u32,
    free_head: u32,
    live: u32,
    /// Next wheel tick to process.
    cursor: u32,
}

impl Slab {
    #[cfg(test)]
    pub fn new(capacity: u32, now: u32) -> Slab {
        Slab::new_advised(capacity, now, None)
    }

    /// As [`Slab::new`], passing the slab's memory to `advise` before it is first written (the
    /// data plane uses it to ask for transparent huge pages).
    pub fn new_advised(capacity: u32, now: u32, advise: Option<MemAdvice>) -> Slab {
        let total = capacity as usize + WHEEL_SLOTS as usize;
        let mut slots: Vec<Session> = Vec::with_capacity(total);
        if let Some(advise) = advise {
            advise(
                slots.as_ptr() as usize,
                total * std::mem::size_of::<Session>(),
            );
        }
        slots.resize(total, Session::default());
        // Free list threaded through `next`, in ascending order so early sessions are dense in memory.
        for i in 0..capacity {
            slots[i as usize].next = if i + 1 < capacity { i + 1 } else { NIL };
        }
        for w in 0..WHEEL_SLOTS {
            let s = capacity + w;
            slots[s as usize].next = s;
            slots[s as usize].prev = s;
        }
        Slab {
            slots,
            capacity,
            free_head: if capacity > 0 { 0 } else { NIL },
            live: 0,
            cursor: now,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn live(&self) -> u32 {
        self.live
    }

    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Session>()
    }

    #[inline]
    pub fn get(&self, slot: u32) -> &Session {
        &self.slots[slot as usize]
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Session {
        &mut self.slots[slot as usize]
    }

    /// Store a new session and file it on the wheel. `None` when the slab is full.
    pub fn insert(&mut self, mut s: Session, t: &Timeouts) -> Option<u32> {
        let slot = self.free_head;
        if slot == NIL {
            return None;
        }
        self.free_head = self.slots[slot as usize].next;
        s.next = NIL;
        s.prev = NIL;
        self.slots[slot as usize] = s;
        self.live += 1;
        self.file(slot, t);
        Some(slot)
    }

    /// Unlink from the wheel and return the slot to the free list.
    pub fn remove(&mut self, slot: u32) -> Session {
        self.unlink(slot);
        let s = self.slots[slot as usize];
        self.slots[slot as usize] = Session {
            next: self.free_head,
            ..Session::default()
        };
        self.free_head = slot;
        self.live -= 1;
        s
    }

    /// Re-file a session after a change that shortened its deadline (FIN, RST), so it does not wait for a
    /// slot filed under the longer timeout.
    pub fn refile(&mut self, slot: u32, t: &Timeouts) {
        self.unlink(slot);
        self.file(slot, t);
    }

    fn file(&mut self, slot: u32, t: &Timeouts) {
        let deadline = self.slots[slot as usize].deadline(t);
        // Never into the slot being processed (or an earlier one), never beyond one turn of the wheel.
        let tick = deadline.clamp(
            self.cursor.wrapping_add(1),
            self.cursor.wrapping_add(WHEEL_SLOTS - 1),
        );
        let head = self.capacity + (tick % WHEEL_SLOTS);
        let first = self.slots[head as usize].next;
        self.slots[slot as usize].next = first;
        self.slots[slot as usize].prev = head;
        self.slots[first as usize].prev = slot;
        self.slots[head as usize].next = slot;
    }

    fn unlink(&mut self, slot: u32) {
        let Session { next, prev, .. } = self.slots[slot as usize];
        if next == NIL {
            return;
        }
        self.slots[prev as usize].next = next;
        self.slots[next as usize].prev = prev;
        self.slots[slot as usize].next = NIL;
        self.slots[slot as usize].prev = NIL;
    }

    /// Walk due wheel slots up to `now`, looking at no more than `budget` sessions. Sessions past their
    /// deadline are handed to `expire` (which must call [`Slab::remove`]); others are re-filed.
    /// Returns how many sessions were looked at.
    pub fn advance(
        &mut self,
        now: u32,
        budget: u32,
        t: &Timeouts,
        mut expire: impl FnMut(&mut Slab, u32),
    ) -> u32 {
        let mut seen = 0;
        while self.cursor <= now && seen < budget {
            let head = self.capacity + (self.cursor % WHEEL_SLOTS);
            let first = self.slots[head as usize].next;
            if first == head {
                self.cursor = self.cursor.wrapping_add(1);
                continue;
            }
            seen += 1;
            if self.slots[first as usize].deadline(t) <= now {
                expire(self, first);
                // The callback must have removed it; make sure it is at least off this list so the loop
                // cannot spin on it.
                if self.slots[head as usize].next == first {
                    self.unlink(first);
                }
            } else {
                self.unlink(first);
                self.file(first, t);
            }
        }
        seen
    }

    /// Iterate over live sessions with their slot numbers (control-plane use: O(capacity)).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.slots[..self.capacity as usize]
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_live())
            .map(|(i, s)| (i as u32, s))
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
    fn session_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Session>(), 32);
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
        let a = s.insert(udp(0, 1), &t()).unwrap();
        s.insert(udp(0, 2), &t()).unwrap();
        s.insert(udp(0, 3), &t()).unwrap();
        assert_eq!(s.insert(udp(0, 4), &t()), None);
        s.remove(a);
        assert_eq!(s.insert(udp(0, 5), &t()), Some(a));
        assert_eq!(s.live(), 3);
    }

    #[test]
    fn expires_exactly_at_deadline_not_before() {
        let tm = t();
        let mut s = Slab::new(16, 0);
        s.insert(udp(0, 1), &tm).unwrap();
        let mut expired = Vec::new();
        s.advance(299, u32::MAX, &tm, |sl, slot| {
            expired.push(slot);
            sl.remove(slot);
        });
        assert!(expired.is_empty());
        s.advance(300, u32::MAX, &tm, |sl, slot| {
            expired.push(slot);
            sl.remove(slot);
        });
        assert_eq!(expired.len(), 1);
        assert_eq!(s.live(), 0);
    }

    #[test]
    fn refreshed_session_survives_and_long_timeouts_wrap_the_wheel() {
        let tm = t();
        let mut s = Slab::new(16, 0);
        let tcp = Session {
            proto: ip_proto::TCP,
            state: tcp_state::ESTABLISHED,
            ..udp(0, 9)
        };
        let slot = s.insert(tcp, &tm).unwrap();
        let mut expired = 0;
        // Refresh at 5000 s: the 7440 s deadline moves to 12440.
        for now in 0..=12_440u32 {
            if now == 5000 {
                s.get_mut(slot).last_seen = 5000;
            }
            s.advance(now, u32::MAX, &tm, |sl, x| {
                expired += 1;
                assert_eq!(now, 12_440, "expired early at {now}");
                sl.remove(x);
            });
        }
        assert_eq!(expired, 1);
    }

    #[test]
    fn refile_applies_a_shorter_timeout_promptly() {
        let tm = t();
        let mut s = Slab::new(4, 0);
        let slot = s
            .insert(
                Session {
                    proto: ip_proto::TCP,
                    state: tcp_state::ESTABLISHED,
                    ..udp(0, 1)
                },
                &tm,
            )
            .unwrap();
        s.get_mut(slot).state = tcp_state::ESTABLISHED | tcp_state::RST;
        s.refile(slot, &tm);
        let mut when = None;
        for now in 0..1000 {
            s.advance(now, u32::MAX, &tm, |sl, x| {
                when = Some(now);
                sl.remove(x);
            });
        }
        assert_eq!(when, Some(240));
    }

    #[test]
    fn budget_bounds_work_and_backlog_drains_later() {
        let tm = t();
        let mut s = Slab::new(1000, 0);
        for i in 0..1000 {
            s.insert(udp(0, i as u16), &tm).unwrap();
        }
        let mut n = 0;
        let seen = s.advance(400, 100, &tm, |sl, x| {
            n += 1;
            sl.remove(x);
        });
        assert_eq!(seen, 100);
        assert_eq!(n, 100);
        while s.live() > 0 {
            s.advance(400, 100, &tm, |sl, x| {
                sl.remove(x);
            });
        }
        assert_eq!(s.iter().count(), 0);
    }
}
