//! The per-shard event ring: fixed-size records of what the translator did, for the control plane to
//! export (logging of mappings and port blocks is what lets an operator answer "who had outside address
//! A, port P at time T").
//!
//! The ring is allocated once with the configured capacity; recording an event is a copy into it. When
//! it is full the **new** event is dropped and counted (`events_dropped`), never an older one: the
//! control plane drains the ring in order, so what it receives is a gap-free prefix plus a count of what
//! was lost, rather than a sequence with holes it cannot see.

use crate::ports::PortSet;

/// A mapping: inside endpoint ↔ outside endpoint for one protocol (ICMP: identifiers as ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MappingInfo {
    pub proto: u8,
    pub in_addr: u32,
    pub in_port: u16,
    pub out_addr: u32,
    pub out_port: u16,
}

/// A session: a mapping and the remote endpoint it talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionInfo {
    pub mapping: MappingInfo,
    pub rem_addr: u32,
    pub rem_port: u16,
    /// Opened by an inbound packet (endpoint-independent or address-dependent filtering, or a hairpin).
    pub inbound: bool,
}

/// Which per-subscriber limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Sessions,
    Ports,
    /// Port block allocation: the subscriber owns its maximum number of blocks and they are full.
    Blocks,
    /// Deterministic NAT: every port of the subscriber's fixed range is in use.
    DeterministicRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SessionCreated(SessionInfo),
    SessionDeleted(SessionInfo),
    MappingCreated(MappingInfo),
    /// The mapping's port is free again (after the hold-down, if one applied).
    MappingDeleted(MappingInfo),
    BlockAllocated {
        subscriber: u32,
        block: PortSet,
    },
    BlockReleased {
        subscriber: u32,
        block: PortSet,
    },
    /// A new flow was refused at a per-subscriber limit (at most one event per subscriber per second).
    QuotaExceeded {
        subscriber: u32,
        limit: Limit,
    },
    /// A new flow was refused because the outside address had no free port or block (at most one event
    /// per shard per second).
    PortsExhausted {
        subscriber: u32,
        out_addr: u32,
        proto: u8,
    },
}

/// One event: what happened and when (the shard's clock, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub time: u32,
    pub kind: EventKind,
}

/// Bounded FIFO of events, preallocated.
pub(crate) struct EventRing {
    buf: Vec<Event>,
    head: usize,
    len: usize,
}

impl EventRing {
    pub fn new(capacity: u32) -> EventRing {
        let filler = Event {
            time: 0,
            kind: EventKind::MappingDeleted(MappingInfo::default()),
        };
        EventRing {
            buf: vec![filler; capacity as usize],
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn memory_bytes(&self) -> usize {
        self.buf.len() * std::mem::size_of::<Event>()
    }

    /// Record an event; false when the ring is full (the event is dropped, the caller counts it).
    #[inline]
    pub fn push(&mut self, e: Event) -> bool {
        let cap = self.buf.len();
        if self.len == cap {
            return false;
        }
        let i = (self.head + self.len) % cap;
        self.buf[i] = e;
        self.len += 1;
        true
    }

    /// Move up to `max` of the oldest events into `out`, in order. Returns how many were moved.
    pub fn drain(&mut self, out: &mut Vec<Event>, max: usize) -> usize {
        let n = self.len.min(max);
        let cap = self.buf.len();
        for k in 0..n {
            out.push(self.buf[(self.head + k) % cap]);
        }
        if cap > 0 {
            self.head = (self.head + n) % cap;
        }
        self.len -= n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u32) -> Event {
        Event {
            time: t,
            kind: EventKind::QuotaExceeded {
                subscriber: t,
                limit: Limit::Ports,
            },
        }
    }

    #[test]
    fn keeps_order_drops_newest_when_full_and_wraps() {
        let mut r = EventRing::new(3);
        assert!(r.push(ev(1)) && r.push(ev(2)) && r.push(ev(3)));
        assert!(!r.push(ev(4)), "a full ring refuses the new event");
        let mut out = Vec::new();
        assert_eq!(r.drain(&mut out, 2), 2);
        assert_eq!(out, vec![ev(1), ev(2)]);
        assert!(r.push(ev(5)) && r.push(ev(6)));
        out.clear();
        assert_eq!(r.drain(&mut out, 10), 3);
        assert_eq!(out, vec![ev(3), ev(5), ev(6)]);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn zero_capacity_records_nothing() {
        let mut r = EventRing::new(0);
        assert!(!r.push(ev(1)));
        let mut out = Vec::new();
        assert_eq!(r.drain(&mut out, 5), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn records_are_fixed_size_and_small() {
        assert!(
            std::mem::size_of::<Event>() <= 32,
            "{}",
            std::mem::size_of::<Event>()
        );
    }
}
