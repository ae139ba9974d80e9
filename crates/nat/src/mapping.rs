//! Endpoint-independent mappings (RFC 4787 REQ-1, RFC 5382 REQ-1): inside address:port ↔ outside
//! address:port per protocol and pool, shared by every session of that inside endpoint.
//!
//! A mapping is a record of the shard's one flow slab ([`crate::session::Record`], flag
//! [`crate::session::MAP`]) with two entries in its one index, its inside endpoint (kind
//! [`crate::index::M_IN`]) and its outside endpoint ([`crate::index::M_OUT`]), hashed here. The
//! record has room for one session of the mapping, its embedded session, which then needs no index
//! entries of its own; further sessions are separate records. [`Mapping`] is a mapping as the
//! control plane sees it, by value.
//!
//! A mapping lives while it has sessions. When the last one goes it either frees its port at once (a
//! TCP connection closed by FIN both ways, a deterministic port, or no hold-down configured) or is
//! *held* (RFC 6888 REQ-8): it stays in the index, so the same inside endpoint coming back gets the
//! same port again, but nothing else can take the port until the hold-down ends. The paced sweep over
//! the slab ([`crate::sweep`]) finds held mappings whose hold-down is over, so a hold-down ends
//! between its due tick and one pass after it (one second up to 4 Mi records), never before; nothing
//! but the record itself (its due tick in `count`) remembers that it is held.

use crate::key::{FlowKey, Hash};
use crate::session::Record;

const HELD: u8 = 1;

/// Hash tweaks so that inside and outside keys of equal value land apart.
const IN_TWEAK: u64 = 0x6d61_7069_6e00_0001;
const OUT_TWEAK: u64 = 0x6d61_706f_7574_0002;

/// One mapping, as the control plane sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub in_addr: u32,
    pub out_addr: u32,
    pub in_port: u16,
    pub out_port: u16,
    /// Live: number of sessions. Held: tick the hold-down ends.
    count: u32,
    /// Protocol; 0 only in a default value. (The subscriber record is found from the inside
    /// address and the pool: the record has no room for its slot.)
    pub proto: u8,
    pub pool: u8,
    flags: u8,
}

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
        }
    }

    /// The mapping a mapping record holds.
    pub fn of_record(r: &Record) -> Mapping {
        debug_assert!(r.is_map());
        Mapping {
            in_addr: r.s.in_addr,
            out_addr: r.s.out_addr,
            in_port: r.s.in_port,
            out_port: r.s.out_port,
            count: r.m.count,
            proto: r.m.proto,
            pool: r.m.pool,
            flags: if r.is_held() { HELD } else { 0 },
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
pub fn in_hash(seed: u64, addr: u32, port: u16, proto: u8) -> Hash {
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
pub fn out_hash(seed: u64, addr: u32, port: u16, proto: u8) -> Hash {
    FlowKey {
        src: addr,
        dst: 0,
        sport: port,
        dport: 0,
        proto,
    }
    .hash(seed ^ OUT_TWEAK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{HELD as REC_HELD, MAP, MapPart, Session};

    #[test]
    fn a_record_reads_as_its_mapping_live_or_held() {
        let mut r = Record {
            s: Session {
                in_addr: 1,
                in_port: 1000,
                out_addr: 9,
                out_port: 2000,
                ..Session::default()
            },
            m: MapPart {
                count: 3,
                proto: 17,
                pool: 1,
                flags: MAP,
                _pad: 0,
            },
        };
        let m = Mapping::of_record(&r);
        assert_eq!(
            (m.in_addr, m.in_port, m.out_addr, m.out_port),
            (1, 1000, 9, 2000)
        );
        assert_eq!(
            (m.proto, m.pool, m.sessions(), m.held_until()),
            (17, 1, 3, None)
        );
        r.m.flags |= REC_HELD;
        r.m.count = 777;
        let m = Mapping::of_record(&r);
        assert!(m.is_held());
        assert_eq!((m.sessions(), m.held_until()), (0, Some(777)));
    }

    #[test]
    fn inside_and_outside_keys_of_equal_value_hash_apart() {
        for seed in [0, 42, 0x9e37_79b9_7f4a_7c15] {
            assert_ne!(in_hash(seed, 5, 6, 17), out_hash(seed, 5, 6, 17));
            assert_ne!(
                in_hash(seed, 5, 6, 17),
                in_hash(seed, 5, 6, 6),
                "the protocol counts"
            );
        }
    }
}
