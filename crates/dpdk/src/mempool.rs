//! Packet-buffer mempools.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::sync::Arc;

use dpdk_sys as sys;

use crate::burst::MbufBurst;
use crate::eal::Live;
use crate::error::{Error, Result, rte_errno, strerror};
use crate::mbuf::Mbuf;

/// Headroom DPDK reserves in front of packet data in every mbuf.
pub const HEADROOM: u16 = sys::RTE_PKTMBUF_HEADROOM as u16;
/// DPDK's default data room (2048 bytes of data plus [`HEADROOM`]), enough
/// for a 1500-byte MTU frame.
pub const DEFAULT_DATA_ROOM: u16 = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
/// "Any NUMA socket" for [`Mempool::new_pktmbuf`].
pub const SOCKET_ID_ANY: i32 = sys::SOCKET_ID_ANY;

/// A pool of packet mbufs (`rte_pktmbuf_pool_create`).
///
/// Allocation and free are thread-safe (DPDK's default ring-based pool
/// handler is multi-producer/multi-consumer); EAL lcores additionally use a
/// per-lcore cache, which relies on DPDK's rule that one lcore id is used by
/// one thread at a time.
///
/// A `Mempool` is a counted handle: clones share the one pool, and every
/// [`crate::Port`] configured with a pool keeps a clone until the device is
/// closed, because its PMD allocates from the pool on every receive burst
/// (net_null, af_packet and pcap hold no mbufs between bursts, so the count
/// of mbufs out says nothing about whether the pool is still in use).
///
/// When the last handle goes, the pool is freed only if every mbuf has come
/// back. If mbufs are still out (held by the application or queued in a
/// ring), the pool is deliberately leaked, so those mbufs stay valid; the
/// leaked pool also keeps the EAL from being cleaned up.
#[derive(Debug, Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    raw: NonNull<sys::rte_mempool>,
    live: Option<Live>,
}

// SAFETY: the pool is a DPDK shared-memory object whose operations are
// thread-safe (MP/MC ring handler); the handle has no thread affinity.
unsafe impl Send for PoolInner {}
// SAFETY: as above; &PoolInner only exposes thread-safe operations.
unsafe impl Sync for PoolInner {}

impl Mempool {
    /// Create a pool of `n` mbufs, each with `data_room` bytes of buffer
    /// (including [`HEADROOM`]), with a per-lcore cache of `cache` mbufs, on
    /// NUMA `socket` ([`SOCKET_ID_ANY`] for any). DPDK requires
    /// `cache <= 512` and `cache * 1.5 <= n`; `n = 2^k - 1` is most
    /// memory-efficient. Names are global and at most 25 bytes.
    pub fn new_pktmbuf(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool> {
        let live = Live::acquire()?;
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArg(format!("mempool name contains NUL: {name:?}")))?;
        if data_room < HEADROOM {
            return Err(Error::InvalidArg(format!(
                "mempool {name}: data room {data_room} is smaller than the {HEADROOM}-byte headroom"
            )));
        }
        // SAFETY: the EAL is running (live token); cname is a valid C string
        // that DPDK copies.
        let raw =
            unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, socket) };
        match NonNull::new(raw) {
            Some(raw) => Ok(Mempool {
                inner: Arc::new(PoolInner {
                    raw,
                    live: Some(live),
                }),
            }),
            None => {
                let code = rte_errno();
                Err(Error::Mempool(format!(
                    "rte_pktmbuf_pool_create({name}, n={n}, cache={cache}, data_room={data_room}, socket={socket}): {} ({code})",
                    strerror(code)
                )))
            }
        }
    }

    /// The pool's name.
    pub fn name(&self) -> String {
        // SAFETY: the pool is alive; its name is a NUL-terminated array
        // inside the pool header.
        let name = unsafe { CStr::from_ptr((*self.inner.raw.as_ptr()).name.as_ptr()) };
        name.to_string_lossy().into_owned()
    }

    /// Total number of mbufs in the pool.
    pub fn capacity(&self) -> u32 {
        // SAFETY: the pool is alive; `size` is immutable after creation.
        unsafe { (*self.inner.raw.as_ptr()).size }
    }

    /// Mbufs currently available for allocation (including lcore caches).
    pub fn avail_count(&self) -> u32 {
        // SAFETY: the pool is alive; the count is a read-only snapshot.
        unsafe { sys::rte_mempool_avail_count(self.inner.raw.as_ptr()) }
    }

    /// Mbufs currently allocated (held by the application, rings or ports).
    pub fn in_use_count(&self) -> u32 {
        // SAFETY: the pool is alive; the count is a read-only snapshot.
        unsafe { sys::rte_mempool_in_use_count(self.inner.raw.as_ptr()) }
    }

    /// One reset mbuf (empty, default headroom), or `None` if the pool is
    /// exhausted.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is alive and is a pktmbuf pool (created above).
        let m = unsafe { sys::rte_pktmbuf_alloc(self.inner.raw.as_ptr()) };
        // SAFETY: a non-null result is a freshly allocated mbuf we now own.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m) })
    }

    /// Fill `burst` with `n` mbufs, all or nothing (`rte_pktmbuf_alloc_bulk`).
    /// Returns false, leaving `burst` untouched, if the pool cannot supply
    /// `n` or the burst has no room for them.
    pub fn alloc_bulk<const N: usize>(&self, burst: &mut MbufBurst<N>, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if n > burst.room() {
            return false;
        }
        let Ok(count) = u32::try_from(n) else {
            return false;
        };
        // SAFETY: the pool is alive; the burst's spare slots have room for n
        // pointers, which the call fills only on success.
        let rc = unsafe {
            sys::rte_pktmbuf_alloc_bulk(self.inner.raw.as_ptr(), burst.spare_ptr(), count)
        };
        if rc != 0 {
            return false;
        }
        // SAFETY: the n slots after len were just initialised with owned mbufs.
        unsafe { burst.assume_pushed(n) };
        true
    }

    /// The underlying `rte_mempool`, for calls this layer does not wrap
    /// (e.g. queue setup with other DPDK APIs). Valid while `self` lives.
    pub fn as_raw(&self) -> *mut sys::rte_mempool {
        self.inner.raw.as_ptr()
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: the pool is alive until freed just below.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) };
        if in_use == 0 {
            // SAFETY: this is the last handle, so no port that allocates
            // from the pool is left (each holds a handle until it is
            // closed), and every mbuf is back in the pool, so nothing refers
            // into its memory; the pool is freed exactly once.
            unsafe { sys::rte_mempool_free(self.raw.as_ptr()) };
        } else if let Some(live) = self.live.take() {
            // Outstanding mbufs still point into this pool: keep it, and
            // keep the EAL up for them.
            std::mem::forget(live);
        }
    }
}
