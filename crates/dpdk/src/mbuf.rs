//! Owned packet buffers.

use std::ptr::NonNull;

use dpdk_sys as sys;

/// An owned packet mbuf (possibly the head of a segment chain).
///
/// Dropping it returns the whole chain to its pool (`rte_pktmbuf_free`).
/// Data accessors work on the first segment, which for every packet the
/// data path handles (received frames up to the pool's data room) is the
/// whole packet; [`Mbuf::is_contiguous`] says whether that holds.
///
/// The layout is exactly an `rte_mbuf *`, so slices of `Mbuf` can be handed
/// to burst functions directly.
#[repr(transparent)]
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is exclusively owned; DPDK mbufs may be freed from any
// thread (the pool handler is thread-safe), and nothing is thread-bound.
unsafe impl Send for Mbuf {}
// SAFETY: &Mbuf only reads the mbuf; there is no interior mutability.
unsafe impl Sync for Mbuf {}

impl Mbuf {
    /// Take ownership of a raw mbuf.
    ///
    /// # Safety
    /// `m` must point to a valid packet mbuf (from a pktmbuf pool) that the
    /// caller owns exclusively: no other `Mbuf`, burst, ring or PMD refers to
    /// it, its reference count is 1 and its data buffer is not shared
    /// (no clones or attached indirect mbufs). Its pool must stay alive,
    /// which holds for pools created by this crate.
    pub unsafe fn from_raw(m: NonNull<sys::rte_mbuf>) -> Mbuf {
        Mbuf(m)
    }

    /// Give up ownership without freeing; the caller must eventually free
    /// the mbuf (e.g. by passing it to a PMD or back to [`Mbuf::from_raw`]).
    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        let m = self.0;
        std::mem::forget(self);
        m
    }

    /// Pointer to the `rte_mbuf` header, for fields this type does not wrap.
    pub fn as_ptr(&self) -> *const sys::rte_mbuf {
        self.0.as_ptr()
    }

    /// Mutable pointer to the header, valid while `self` is borrowed.
    pub fn as_mut_ptr(&mut self) -> *mut sys::rte_mbuf {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn hdr(&self) -> &sys::rte_mbuf {
        // SAFETY: we own a valid mbuf (type invariant) and hand out a shared
        // borrow tied to &self.
        unsafe { self.0.as_ref() }
    }

    #[inline(always)]
    fn hdr_mut(&mut self) -> &mut sys::rte_mbuf {
        // SAFETY: we own the mbuf exclusively (type invariant); borrow tied to &mut self.
        unsafe { self.0.as_mut() }
    }

    #[inline(always)]
    fn data_ptr(&self) -> *mut u8 {
        let h = self.hdr();
        // rte_pktmbuf_mtod: data starts data_off bytes into the buffer.
        h.buf_addr
            .cast::<u8>()
            .wrapping_add(usize::from(h.data_off))
    }

    /// Packet data of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let len = usize::from(self.hdr().data_len);
        // SAFETY: DPDK keeps data_off + data_len within the segment's buffer,
        // which we own for as long as &self lives.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), len) }
    }

    /// Mutable packet data of the first segment.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.hdr().data_len);
        // SAFETY: as for data(); the buffer is exclusively ours (from_raw
        // contract: not shared), and &mut self prevents aliasing.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), len) }
    }

    /// Total packet length over all segments (`pkt_len`).
    #[inline]
    pub fn len(&self) -> usize {
        self.hdr().pkt_len as usize
    }

    /// Data length of the first segment.
    #[inline]
    pub fn data_len(&self) -> usize {
        usize::from(self.hdr().data_len)
    }

    /// True if the packet has no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.hdr().pkt_len == 0
    }

    /// Number of segments in the chain.
    #[inline]
    pub fn nb_segs(&self) -> u16 {
        self.hdr().nb_segs
    }

    /// True if the whole packet is in the first segment.
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.hdr().nb_segs == 1
    }

    /// Grow the packet by `n` bytes at the end (of the last segment) and
    /// return the new bytes, or `None` without change if there is not
    /// enough tailroom.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let len = u16::try_from(n).ok()?;
        // SAFETY: valid owned mbuf; DPDK checks the tailroom.
        let p = unsafe { sys::rte_pktmbuf_append(self.0.as_ptr(), len) };
        let p = NonNull::new(p.cast::<u8>())?;
        // SAFETY: DPDK returned the start of n newly added data bytes inside
        // our buffer; the borrow is tied to &mut self.
        Some(unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), n) })
    }

    /// Grow the packet by `n` bytes at the front (into the headroom) and
    /// return them, or `None` without change if the headroom is too small.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let len = u16::try_from(n).ok()?;
        // SAFETY: valid owned mbuf; DPDK checks the headroom.
        let p = unsafe { sys::rte_pktmbuf_prepend(self.0.as_ptr(), len) };
        let p = NonNull::new(p.cast::<u8>())?;
        // SAFETY: DPDK returned the new data start; n bytes follow in our buffer.
        Some(unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), n) })
    }

    /// Remove `n` bytes from the front of the first segment. Returns false,
    /// without change, if the first segment holds fewer than `n` bytes.
    pub fn adj(&mut self, n: usize) -> bool {
        let Ok(len) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: valid owned mbuf; DPDK checks the length.
        !unsafe { sys::rte_pktmbuf_adj(self.0.as_ptr(), len) }.is_null()
    }

    /// Remove `n` bytes from the end of the last segment. Returns false,
    /// without change, if the last segment holds fewer than `n` bytes
    /// (see [`Mbuf::truncate`] for chains).
    pub fn trim(&mut self, n: usize) -> bool {
        let Ok(len) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: valid owned mbuf; DPDK checks the length.
        unsafe { sys::rte_pktmbuf_trim(self.0.as_ptr(), len) == 0 }
    }

    /// Shorten the packet to `len` bytes if it is longer, across segments:
    /// segments past the new end are freed.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len() {
            return;
        }
        let head = self.0.as_ptr();
        let mut seg = head;
        let mut remaining = len;
        let mut segs: u16 = 1;
        // SAFETY: we own the whole chain; each `next` is either null or a
        // valid segment of it. The loop stops at the segment holding the new
        // end, which exists because len < pkt_len = sum of data_len.
        unsafe {
            loop {
                let dl = usize::from((*seg).data_len);
                if remaining <= dl || (*seg).next.is_null() {
                    // remaining <= dl <= u16::MAX here (or this is the last
                    // segment, whose data_len already bounds it).
                    (*seg).data_len = remaining.min(dl) as u16;
                    break;
                }
                remaining -= dl;
                seg = (*seg).next;
                segs += 1;
            }
            let rest = (*seg).next;
            if !rest.is_null() {
                (*seg).next = std::ptr::null_mut();
                // The tail is a well-formed chain of segments we own.
                sys::rte_pktmbuf_free(rest);
            }
            (*head).nb_segs = segs;
            (*head).pkt_len = len as u32;
        }
    }

    /// Input port of a received packet.
    #[inline]
    pub fn port(&self) -> u16 {
        self.hdr().port
    }

    /// Set the port field (used by some PMDs and for bookkeeping).
    #[inline]
    pub fn set_port(&mut self, port: u16) {
        self.hdr_mut().port = port;
    }

    /// The NIC's RSS hash, if the PMD filled it in.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let h = self.hdr();
        if h.ol_flags & u64::from(sys::RTE_MBUF_F_RX_RSS_HASH) != 0 {
            // SAFETY: the RSS flag says the `rss` member of the hash union is
            // the one the PMD wrote; it is a plain u32 either way.
            Some(unsafe { h.__bindgen_anon_2.hash.rss })
        } else {
            None
        }
    }

    /// Offload flags (`ol_flags`, `RTE_MBUF_F_*`).
    #[inline]
    pub fn ol_flags(&self) -> u64 {
        self.hdr().ol_flags
    }

    /// Bytes free in front of the data in the first segment.
    #[inline]
    pub fn headroom(&self) -> usize {
        usize::from(self.hdr().data_off)
    }

    /// Bytes free after the data in the last segment (where
    /// [`Mbuf::append`] writes).
    pub fn tailroom(&self) -> usize {
        let mut seg = self.0.as_ptr();
        // SAFETY: walking our own chain; every non-null `next` is valid.
        unsafe {
            while !(*seg).next.is_null() {
                seg = (*seg).next;
            }
            let s = &*seg;
            usize::from(s.buf_len) - usize::from(s.data_off) - usize::from(s.data_len)
        }
    }

    /// Reset to an empty packet with default headroom, freeing any chained
    /// segments, so a received buffer can be reused to build a reply.
    pub fn reset(&mut self) {
        self.truncate(0);
        // SAFETY: owned, now single-segment mbuf.
        unsafe { sys::rte_pktmbuf_reset(self.0.as_ptr()) };
    }

    /// Start loading the packet data into L1 (see [`crate::prefetch0_ptr`]).
    #[inline(always)]
    pub fn prefetch_data(&self) {
        crate::prefetch0_ptr(self.data_ptr());
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the chain (type invariant) and free it exactly once.
        unsafe { sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl AsRef<[u8]> for Mbuf {
    fn as_ref(&self) -> &[u8] {
        self.data()
    }
}

impl AsMut<[u8]> for Mbuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self.data_mut()
    }
}
