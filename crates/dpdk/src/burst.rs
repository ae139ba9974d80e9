//! Fixed-capacity, allocation-free bursts of owned mbufs.

use std::mem::MaybeUninit;
use std::ops::{Bound, Deref, DerefMut, RangeBounds};
use std::ptr;

use dpdk_sys as sys;

use crate::mbuf::Mbuf;

/// Default burst size of the data path.
pub const BURST: usize = 32;

/// Up to `N` owned mbufs in order, stored inline (no heap). This is what
/// [`crate::RxQueue::rx_burst`] fills and [`crate::TxQueue::tx_burst`]
/// drains; dropping it (or [`MbufBurst::clear`]) frees what is left.
///
/// It dereferences to `[Mbuf]`, so slice methods (indexing, `iter`,
/// `swap`, `sort_by_key`, ...) work on the packets it holds.
pub struct MbufBurst<const N: usize> {
    len: usize,
    // Invariant: slots[..len] are initialised, owned mbufs.
    slots: [MaybeUninit<Mbuf>; N],
}

impl<const N: usize> MbufBurst<N> {
    /// An empty burst.
    pub const fn new() -> Self {
        MbufBurst {
            len: 0,
            slots: [const { MaybeUninit::uninit() }; N],
        }
    }

    /// Number of mbufs held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no mbufs are held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if no more mbufs fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Maximum number of mbufs (`N`).
    #[inline]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Free slots left.
    #[inline]
    pub fn room(&self) -> usize {
        N - self.len
    }

    /// Append `m`, or give it back if the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == N {
            return Err(m);
        }
        self.slots[self.len].write(m);
        self.len += 1;
        Ok(())
    }

    /// Remove and return the last mbuf.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slot `len` was initialised (below the old len) and is now
        // outside the initialised prefix, so it is read exactly once.
        Some(unsafe { self.slots[self.len].assume_init_read() })
    }

    /// The held mbufs as a slice.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: slots[..len] are initialised (invariant); MaybeUninit<T>
        // has T's layout.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<Mbuf>(), self.len) }
    }

    /// The held mbufs as a mutable slice.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: as in as_slice, borrowed mutably through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.slots.as_mut_ptr().cast::<Mbuf>(), self.len) }
    }

    /// Iterate over the held mbufs in order.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, Mbuf> {
        self.as_slice().iter()
    }

    /// Iterate mutably over the held mbufs in order.
    #[inline]
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Mbuf> {
        self.as_mut_slice().iter_mut()
    }

    /// The `i`-th mbuf.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&Mbuf> {
        self.as_slice().get(i)
    }

    /// The `i`-th mbuf, mutably.
    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut Mbuf> {
        self.as_mut_slice().get_mut(i)
    }

    /// Free every held mbuf (one bulk call).
    pub fn clear(&mut self) {
        let n = self.len;
        if n == 0 {
            return;
        }
        // Forget them first: if DPDK were to unwind (it cannot), nothing
        // would be freed twice.
        self.len = 0;
        // SAFETY: the n pointers were owned mbufs and are no longer reachable
        // through the burst; n <= N fits in u32 for any usable N.
        unsafe {
            sys::rte_pktmbuf_free_bulk(
                self.slots.as_mut_ptr().cast::<*mut sys::rte_mbuf>(),
                n as u32,
            )
        };
    }

    /// Free the mbufs from index `len` on, keeping the first `len`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let n = self.len - len;
        self.len = len;
        // SAFETY: slots[len..len+n] were owned mbufs and are now outside the
        // initialised prefix, so they are freed exactly once.
        unsafe {
            sys::rte_pktmbuf_free_bulk(
                self.slots
                    .as_mut_ptr()
                    .add(len)
                    .cast::<*mut sys::rte_mbuf>(),
                n as u32,
            )
        };
    }

    /// Remove the mbufs in `range` and yield them in order; the rest close
    /// up. Mbufs of the range that the iterator does not yield are freed
    /// when it is dropped.
    ///
    /// # Panics
    /// If the range is out of bounds or decreasing, like `Vec::drain`.
    pub fn drain<R: RangeBounds<usize>>(&mut self, range: R) -> Drain<'_, N> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        assert!(
            start <= end && end <= self.len,
            "drain range {start}..{end} out of bounds for burst of {}",
            self.len
        );
        let tail_len = self.len - end;
        // While draining, the burst only owns the prefix; if the Drain is
        // leaked, the range and tail leak too instead of being freed twice.
        self.len = start;
        Drain {
            burst: self,
            next: start,
            end,
            tail_start: end,
            tail_len,
        }
    }

    /// Keep the mbufs for which `keep` returns true, in order; free the rest.
    pub fn retain_mut<F: FnMut(&mut Mbuf) -> bool>(&mut self, mut keep: F) {
        let n = self.len;
        // Everything is taken out of the burst during the scan so a panic in
        // `keep` leaks rather than double-frees.
        self.len = 0;
        let base = self.slots.as_mut_ptr().cast::<Mbuf>();
        let mut kept = 0;
        for i in 0..n {
            // SAFETY: i < n, slot i is initialised and not yet moved; kept <= i.
            unsafe {
                let cur = base.add(i);
                if keep(&mut *cur) {
                    if kept != i {
                        ptr::copy_nonoverlapping(cur, base.add(kept), 1);
                    }
                    kept += 1;
                } else {
                    ptr::drop_in_place(cur);
                }
            }
        }
        self.len = kept;
    }

    /// Pointer to the first free slot, for DPDK calls that write mbuf
    /// pointers into the burst.
    #[inline]
    pub(crate) fn spare_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        // SAFETY: len <= N, so this is at most one past the end of slots.
        unsafe {
            self.slots
                .as_mut_ptr()
                .add(self.len)
                .cast::<*mut sys::rte_mbuf>()
        }
    }

    /// Pointer to the first held mbuf, for DPDK calls that read them.
    #[inline]
    pub(crate) fn raw_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        self.slots.as_mut_ptr().cast::<*mut sys::rte_mbuf>()
    }

    /// Record that DPDK wrote `n` owned mbuf pointers at `spare_ptr()`.
    ///
    /// # Safety
    /// The `n` slots after `len` must hold valid mbufs now owned by the burst.
    #[inline]
    pub(crate) unsafe fn assume_pushed(&mut self, n: usize) {
        debug_assert!(self.len + n <= N);
        self.len += n;
    }

    /// Forget the first `n` mbufs (DPDK took ownership of them) and move the
    /// rest to the front, preserving order.
    ///
    /// # Safety
    /// Ownership of the first `n` mbufs must have passed elsewhere.
    #[inline]
    pub(crate) unsafe fn consume_front(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        let rest = self.len - n;
        if rest > 0 && n > 0 {
            // SAFETY: both ranges lie within slots; copy handles overlap.
            unsafe { ptr::copy(self.slots.as_ptr().add(n), self.slots.as_mut_ptr(), rest) };
        }
        self.len = rest;
    }
}

impl<const N: usize> Default for MbufBurst<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Drop for MbufBurst<N> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl<const N: usize> Deref for MbufBurst<N> {
    type Target = [Mbuf];
    fn deref(&self) -> &[Mbuf] {
        self.as_slice()
    }
}

impl<const N: usize> DerefMut for MbufBurst<N> {
    fn deref_mut(&mut self) -> &mut [Mbuf] {
        self.as_mut_slice()
    }
}

impl<const N: usize> std::fmt::Debug for MbufBurst<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbufBurst")
            .field("len", &self.len)
            .field("capacity", &N)
            .finish()
    }
}

impl<'a, const N: usize> IntoIterator for &'a MbufBurst<N> {
    type Item = &'a Mbuf;
    type IntoIter = std::slice::Iter<'a, Mbuf>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, const N: usize> IntoIterator for &'a mut MbufBurst<N> {
    type Item = &'a mut Mbuf;
    type IntoIter = std::slice::IterMut<'a, Mbuf>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

/// Iterator returned by [`MbufBurst::drain`].
pub struct Drain<'a, const N: usize> {
    burst: &'a mut MbufBurst<N>,
    next: usize,
    end: usize,
    tail_start: usize,
    tail_len: usize,
}

impl<const N: usize> Iterator for Drain<'_, N> {
    type Item = Mbuf;

    fn next(&mut self) -> Option<Mbuf> {
        if self.next == self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        // SAFETY: slots in next..end are initialised and each is read once.
        Some(unsafe { self.burst.slots[i].assume_init_read() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.end - self.next;
        (n, Some(n))
    }
}

impl<const N: usize> ExactSizeIterator for Drain<'_, N> {}

impl<const N: usize> Drop for Drain<'_, N> {
    fn drop(&mut self) {
        // Free what was not taken.
        while self.next != self.end {
            let i = self.next;
            self.next += 1;
            // SAFETY: initialised, not yet read (see next()).
            drop(unsafe { self.burst.slots[i].assume_init_read() });
        }
        let start = self.burst.len;
        if self.tail_len > 0 && self.tail_start != start {
            // SAFETY: the tail is initialised and moves down into the
            // vacated range; ptr::copy handles the overlap.
            unsafe {
                let base = self.burst.slots.as_mut_ptr();
                ptr::copy(base.add(self.tail_start), base.add(start), self.tail_len);
            }
        }
        self.burst.len = start + self.tail_len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bursts holding real mbufs need the EAL; those cases live in
    // tests/eal.rs. These cover what works on an empty burst.

    #[test]
    fn empty_burst_reports_capacity_and_room() {
        let mut b = MbufBurst::<BURST>::new();
        assert_eq!(b.len(), 0);
        assert!(b.is_empty());
        assert!(!b.is_full());
        assert_eq!(b.capacity(), 32);
        assert_eq!(b.room(), 32);
        assert!(b.pop().is_none());
        assert!(b.get(0).is_none());
        assert_eq!(b.iter().count(), 0);
        assert_eq!(b.drain(..).len(), 0);
        b.retain_mut(|_| true);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn zero_capacity_burst_is_full_and_empty() {
        let b = MbufBurst::<0>::new();
        assert!(b.is_full());
        assert!(b.is_empty());
        assert_eq!(b.room(), 0);
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn drain_past_len_panics() {
        let mut b = MbufBurst::<4>::new();
        let _ = b.drain(0..1);
    }

    #[test]
    fn burst_has_pointer_array_layout() {
        // rx/tx burst hand the slots to DPDK as `struct rte_mbuf **`.
        assert_eq!(
            std::mem::size_of::<MbufBurst<BURST>>(),
            std::mem::size_of::<usize>() + BURST * std::mem::size_of::<*mut sys::rte_mbuf>()
        );
        assert_eq!(
            std::mem::size_of::<Mbuf>(),
            std::mem::size_of::<*mut sys::rte_mbuf>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Mbuf>>(),
            std::mem::size_of::<*mut sys::rte_mbuf>()
        );
    }
}
