//! Paced sweeps over a slab: how idle sessions expire and hold-downs end.
//!
//! A sweep walks a slab's slots in order, wrapping, and looks at each one against the clock. It needs
//! no link fields in the records (a timer wheel threads two through each one) and no queue beside
//! them (the hold-down FIFO cost 8 bytes per mapping), and creating or deleting a record touches no
//! other record's line. The cost is that a record is looked at once per pass rather than at its
//! deadline, so it may be ended up to one pass late, never early.
//!
//! Passes are paced by the clock, not by how often the caller asks: each one-second tick grants a
//! quota of slots, enough for a full pass every [`Sweep::pass_seconds`] seconds, that is one second
//! for slabs of up to [`SLOTS_PER_SECOND`] slots. A worker that calls often (every poll loop) spends
//! the quota early in each second in small pieces; one that calls rarely still cannot be asked for
//! more than one pass at once. At [`SLOTS_PER_SECOND`] slots of 32 bytes the sweep reads 128 MiB/s
//! in order, which the hardware prefetchers stream: a few milliseconds of a core per second.

/// Slots a sweep may look at per second; slabs up to this size are swept once per second.
pub const SLOTS_PER_SECOND: u32 = 1 << 22;

/// The position and pacing of one slab's sweep.
#[derive(Debug, Clone)]
pub struct Sweep {
    capacity: u32,
    cursor: u32,
    /// Seconds per pass.
    pass: u32,
    per_tick: u32,
    /// Slots still granted in the current tick (unused quota carries over, up to one pass).
    left: u32,
    tick: u32,
}

impl Sweep {
    /// A sweep over `capacity` slots starting at tick `now`, with the first tick's quota granted.
    pub fn new(capacity: u32, now: u32) -> Sweep {
        Sweep::with_rate(capacity, now, SLOTS_PER_SECOND)
    }

    /// As [`Sweep::new`], looking at no more than `rate` slots per second.
    fn with_rate(capacity: u32, now: u32, rate: u32) -> Sweep {
        let pass = capacity.div_ceil(rate.max(1)).max(1);
        let per_tick = capacity.div_ceil(pass);
        Sweep {
            capacity,
            cursor: 0,
            pass,
            per_tick,
            left: per_tick,
            tick: now,
        }
    }

    /// The longest a full pass takes in seconds: how late past its deadline a record may be ended.
    pub fn pass_seconds(&self) -> u32 {
        self.pass
    }

    /// Slots granted per tick: the sweep's pace.
    pub fn per_tick(&self) -> u32 {
        self.per_tick
    }

    /// Whether a call at `now` would be granted any slots.
    #[inline]
    pub fn due(&self, now: u32) -> bool {
        self.left > 0 || (Self::later(now, self.tick) && self.per_tick > 0)
    }

    /// How many slots to look at now: at most `budget`, within the quota of the ticks up to `now`.
    /// The caller then takes that many from [`Sweep::next`].
    #[inline]
    pub fn grant(&mut self, now: u32, budget: u32) -> u32 {
        if Self::later(now, self.tick) {
            let ticks = u64::from(now.wrapping_sub(self.tick));
            let quota = u64::from(self.left) + u64::from(self.per_tick) * ticks;
            self.left = quota.min(u64::from(self.capacity)) as u32;
            self.tick = now;
        }
        let n = budget.min(self.left);
        self.left -= n;
        n
    }

    /// The next slot of the pass.
    #[inline]
    pub fn next(&mut self) -> u32 {
        let slot = self.cursor;
        self.cursor = if slot + 1 >= self.capacity {
            0
        } else {
            slot + 1
        };
        slot
    }

    /// Whether tick `a` comes after tick `b` (the clock is a wrapping u32 of seconds).
    #[inline]
    fn later(a: u32, b: u32) -> bool {
        (a.wrapping_sub(b) as i32) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(s: &mut Sweep, now: u32, budget: u32) -> Vec<u32> {
        let n = s.grant(now, budget);
        (0..n).map(|_| s.next()).collect()
    }

    #[test]
    fn a_small_slab_is_swept_whole_every_second_and_no_more() {
        let mut s = Sweep::new(10, 100);
        assert_eq!(s.pass_seconds(), 1);
        assert_eq!(take(&mut s, 100, 4), vec![0, 1, 2, 3]);
        assert_eq!(take(&mut s, 100, 100), vec![4, 5, 6, 7, 8, 9]);
        assert!(!s.due(100));
        assert!(take(&mut s, 100, 100).is_empty(), "one pass per tick");
        assert!(s.due(101));
        assert_eq!(take(&mut s, 101, 3), vec![0, 1, 2], "wraps to the start");
    }

    #[test]
    fn a_large_slab_is_swept_over_several_seconds() {
        let s = Sweep::new(SLOTS_PER_SECOND * 4 + 1, 0);
        assert_eq!(s.pass_seconds(), 5);
        assert_eq!(s.per_tick(), (SLOTS_PER_SECOND * 4 + 1).div_ceil(5));
        // The same arithmetic at a small scale: 103 slots at 25 per second.
        let (cap, rate) = (103u32, 25u32);
        let mut s = Sweep::with_rate(cap, 0, rate);
        assert_eq!(s.pass_seconds(), 5);
        assert!(s.per_tick() <= rate, "the pace is kept");
        // Drained in small calls each tick, as a worker does: no slot waits longer than a pass
        // between two looks, and every slot is looked at.
        let mut last = vec![None::<u32>; cap as usize];
        for now in 0..40u32 {
            let mut n = 0;
            loop {
                let g = s.grant(now, 7);
                if g == 0 {
                    break;
                }
                for _ in 0..g {
                    let slot = s.next() as usize;
                    if let Some(t) = last[slot] {
                        assert!(now - t <= s.pass_seconds(), "slot {slot}: {t} then {now}");
                    }
                    last[slot] = Some(now);
                    n += 1;
                }
            }
            assert_eq!(n, s.per_tick(), "tick {now} looked at its quota");
        }
        assert!(last.iter().all(|t| t.is_some_and(|t| t >= 40 - 5)));
    }

    #[test]
    fn a_long_gap_grants_one_pass_not_a_backlog() {
        let mut s = Sweep::new(8, 0);
        assert_eq!(s.grant(0, u32::MAX), 8);
        assert_eq!(s.grant(1000, u32::MAX), 8);
        // The clock wraps without stalling the sweep.
        let mut s = Sweep::new(8, u32::MAX - 1);
        assert_eq!(s.grant(u32::MAX - 1, u32::MAX), 8);
        assert_eq!(s.grant(1, u32::MAX), 8);
        assert_eq!(s.grant(0, u32::MAX), 0, "an earlier tick grants nothing");
    }

    #[test]
    fn an_empty_slab_is_never_due() {
        let mut s = Sweep::new(0, 0);
        assert!(!s.due(5));
        assert_eq!(s.grant(5, 10), 0);
    }
}
