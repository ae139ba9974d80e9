//! Control-plane queries over a shard's sessions: list them (`conntrack -L`) and delete them
//! (`conntrack -D`, `-F`), by filter.
//!
//! The worker that owns the shard runs them, a bounded step per loop iteration: a step looks at no
//! more than `budget` slots of the session slab and produces no more than `max` matches, then returns
//! the cursor to resume from. Forwarding is therefore never stalled by a listing, however large the
//! table; the price is that a listing is not a snapshot (sessions created or deleted while it walks
//! may or may not appear), exactly like `conntrack -L` on a live table.

use crate::session::{CtState, Session};
use crate::shard::Shard;

/// Which sessions a query is about; every field that is set must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionFilter {
    pub proto: Option<u8>,
    pub inside_addr: Option<u32>,
    pub inside_port: Option<u16>,
    pub outside_addr: Option<u32>,
    pub outside_port: Option<u16>,
    pub remote_addr: Option<u32>,
    pub remote_port: Option<u16>,
    pub state: Option<CtState>,
    /// Source NAT sessions that this SNAT rule (by position) translates under the rules in force:
    /// the first rule matching their subscriber and remote end.
    pub snat_rule: Option<u16>,
}

impl SessionFilter {
    #[inline]
    pub fn matches(&self, s: &Session) -> bool {
        fn is<T: PartialEq>(want: Option<T>, have: T) -> bool {
            want.is_none_or(|w| w == have)
        }
        is(self.proto, s.proto)
            && is(self.inside_addr, s.in_addr)
            && is(self.inside_port, s.in_port)
            && is(self.outside_addr, s.out_addr)
            && is(self.outside_port, s.out_port)
            && is(self.remote_addr, s.rem_addr)
            && is(self.remote_port, s.rem_port)
            && is(self.state, s.ct_state())
    }
}

impl Shard {
    /// Whether a session matches `filter`, its SNAT rule included.
    #[inline]
    fn selects(&self, filter: &SessionFilter, s: &Session) -> bool {
        filter.matches(s)
            && filter.snat_rule.is_none_or(|n| {
                !s.is_dnat()
                    && self.rules().rule_index_for(s.in_addr, s.rem_addr) == Some(usize::from(n))
            })
    }
}

/// A session as a listing reports it, with its idle time and timeout on the worker's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    pub session: Session,
    /// Seconds since a packet last refreshed it.
    pub idle: u32,
    /// Its idle timeout in its current state: it expires after `timeout - idle` more seconds.
    pub timeout: u32,
}

impl Shard {
    /// One step of a listing: visit up to `budget` slots from `cursor`, handing each live session that
    /// matches `filter` to `out`, at most `max` of them. Returns the cursor to continue from, or `None`
    /// when the walk has covered the whole slab.
    pub fn scan_sessions(
        &self,
        cursor: u32,
        budget: u32,
        max: u32,
        filter: &SessionFilter,
        mut out: impl FnMut(SessionRecord),
    ) -> Option<u32> {
        let t = self.config().timeouts;
        let now = self.clock();
        let end = self.slab_capacity();
        let mut slot = cursor;
        let mut found = 0;
        let stop = cursor.saturating_add(budget).min(end);
        while slot < stop && found < max {
            let s = self.slot(slot);
            if s.is_live() && self.selects(filter, s) {
                out(SessionRecord {
                    session: *s,
                    idle: now.saturating_sub(s.last_seen),
                    timeout: s.timeout(&t),
                });
                found += 1;
            }
            slot += 1;
        }
        (slot < end).then_some(slot)
    }

    /// One step of a deletion: delete the live sessions matching `filter` among up to `budget` slots
    /// from `cursor` (their mappings end with their last session, through the hold-down as usual).
    /// Returns the cursor to continue from (or `None` when done) and how many were deleted.
    pub fn delete_sessions(
        &mut self,
        cursor: u32,
        budget: u32,
        filter: &SessionFilter,
    ) -> (Option<u32>, u32) {
        let end = self.slab_capacity();
        let stop = cursor.saturating_add(budget).min(end);
        let mut deleted = 0;
        for slot in cursor..stop {
            let s = *self.slot(slot);
            if s.is_live() && self.selects(filter, &s) {
                deleted += self.delete_slot(slot);
            }
        }
        ((stop < end).then_some(stop), deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testpkt::*;
    use crate::shard::testkit::*;
    use crate::{Dir, ShardConfig, Verdict};
    use wire::Ipv4Addr;

    fn busy_shard() -> Shard {
        let mut sh = shard_of(
            vec![pool_with(1024, 65535)],
            ShardConfig {
                max_sessions: 4096,
                ..ShardConfig::default()
            },
        );
        for i in 0..100u16 {
            let (v, _) = one(&mut sh, Dir::In2Out, udp(SUB1, 5000 + i, SRV, 53, b"q"), 1);
            assert_eq!(v, Verdict::Forward);
        }
        for i in 0..20u16 {
            one(&mut sh, Dir::In2Out, udp(SUB2, 6000 + i, SRV2, 53, b"q"), 1);
        }
        one(
            &mut sh,
            Dir::In2Out,
            tcp(SUB2, 7000, SRV, 80, wire::tcp_flags::SYN),
            1,
        );
        sh
    }

    fn list_all(sh: &Shard, filter: &SessionFilter, budget: u32, max: u32) -> Vec<SessionRecord> {
        let mut out = Vec::new();
        let mut cursor = Some(0);
        let mut steps = 0;
        while let Some(c) = cursor {
            cursor = sh.scan_sessions(c, budget, max, filter, |r| out.push(r));
            steps += 1;
            assert!(steps < 100_000, "the walk must end");
        }
        out
    }

    #[test]
    fn a_listing_in_small_steps_finds_every_matching_session_once() {
        let sh = busy_shard();
        let all = list_all(&sh, &SessionFilter::default(), 64, 7);
        assert_eq!(all.len(), 121);
        let mut keys: Vec<_> = all
            .iter()
            .map(|r| (r.session.in_addr, r.session.in_port))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 121, "no session twice");
        let sub2 = SessionFilter {
            inside_addr: Some(SUB2.into()),
            proto: Some(17),
            ..SessionFilter::default()
        };
        let got = list_all(&sh, &sub2, 4096, 1000);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|r| r.session.rem_addr == u32::from(SRV2)));
        let one_port = SessionFilter {
            inside_port: Some(5042),
            ..SessionFilter::default()
        };
        let got = list_all(&sh, &one_port, 4096, 1000);
        assert_eq!(got.len(), 1);
        let s = got[0].session;
        // The same session again by its outside endpoint and remote, as conntrack would find it.
        let by_outside = SessionFilter {
            outside_addr: Some(s.out_addr),
            outside_port: Some(s.out_port),
            remote_addr: Some(u32::from(SRV)),
            remote_port: Some(53),
            ..SessionFilter::default()
        };
        assert_eq!(list_all(&sh, &by_outside, 4096, 1000), got);
        let new_tcp = SessionFilter {
            proto: Some(6),
            state: Some(CtState::New),
            ..SessionFilter::default()
        };
        assert_eq!(list_all(&sh, &new_tcp, 4096, 1000).len(), 1);
        let est = SessionFilter {
            state: Some(CtState::Established),
            ..SessionFilter::default()
        };
        assert!(list_all(&sh, &est, 4096, 1000).is_empty());
    }

    #[test]
    fn records_carry_idle_time_and_timeout() {
        let mut sh = busy_shard();
        sh.expire(31, 0);
        let r = list_all(
            &sh,
            &SessionFilter {
                proto: Some(17),
                ..Default::default()
            },
            4096,
            1,
        )[0];
        assert_eq!((r.idle, r.timeout), (30, 300));
    }

    #[test]
    fn deletion_by_filter_cuts_only_those_sessions_and_frees_their_state() {
        let mut sh = busy_shard();
        let f = SessionFilter {
            inside_addr: Some(SUB2.into()),
            ..SessionFilter::default()
        };
        let tcp_of_sub2 = list_all(
            &sh,
            &SessionFilter {
                proto: Some(6),
                ..f
            },
            4096,
            1,
        )[0]
        .session;
        let mut cursor = Some(0);
        let mut deleted = 0;
        while let Some(c) = cursor {
            let (next, n) = sh.delete_sessions(c, 100, &f);
            cursor = next;
            deleted += n;
        }
        assert_eq!(deleted, 21);
        assert_eq!(sh.session_count(), 100);
        assert!(list_all(&sh, &f, 4096, 1000).is_empty());
        let kept = list_all(&sh, &SessionFilter::default(), 4096, 1000);
        assert!(kept.iter().all(|r| r.session.in_addr == u32::from(SUB1)));
        // A deleted session is cut: the server's answer is now unsolicited.
        let s = tcp_of_sub2;
        let answer = tcp(
            Ipv4Addr::from(s.rem_addr),
            s.rem_port,
            Ipv4Addr::from(s.out_addr),
            s.out_port,
            wire::tcp_flags::SYN | wire::tcp_flags::ACK,
        );
        assert_eq!(
            one(&mut sh, Dir::Out2In, answer, 2).0,
            Verdict::Drop(crate::DropReason::NoSession)
        );
        // Flush: everything, and the gauges follow.
        let (next, n) = sh.delete_sessions(0, u32::MAX, &SessionFilter::default());
        assert_eq!((next, n), (None, 100));
        assert_eq!(sh.session_count(), 0);
        assert_eq!(
            sh.counters().get(crate::Counter::SessionsCurrent),
            0,
            "gauges published"
        );
    }
}
