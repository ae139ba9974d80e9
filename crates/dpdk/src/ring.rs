//! Lock-free rings for handing mbufs between cores.

use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk_sys as sys;

use crate::burst::MbufBurst;
use crate::eal::Live;
use crate::error::{Error, Result, rte_errno, strerror};

/// Keeps the two flags on separate cache lines so the producer and the
/// consumer core do not bounce one line between them.
#[repr(align(64))]
#[derive(Debug, Default)]
struct SideLock(AtomicBool);

/// A bounded FIFO of owned mbufs on an `rte_ring`, shared by reference
/// between cores (it is `Send + Sync`).
///
/// With `single_producer`, DPDK's cheaper single-producer enqueue is used,
/// which is only correct if one thread enqueues at a time; likewise
/// `single_consumer` for dequeue. The intended use is one ring per
/// (source core, destination core) pair: only the source worker calls
/// [`MbufRing::enqueue_burst`], only the destination worker calls
/// [`MbufRing::dequeue_burst`], and any thread may call [`MbufRing::count`].
/// The rule is enforced rather than trusted: on a single-producer (or
/// single-consumer) side, a second thread that calls while another is inside
/// gets 0, exactly as if the ring were full (or empty), and its mbufs stay
/// in its burst. The check is one uncontended atomic swap per burst.
///
/// A ring can also be one end of a `net_ring` port ([`crate::PortId::from_rings`]): the port's
/// RX queues dequeue from it, or its TX queues enqueue to it, as another thread would. A
/// single-consumer RX ring (single-producer TX ring) is the port's alone until the port is
/// closed: [`MbufRing::dequeue_burst`] ([`MbufRing::enqueue_burst`]) on it returns 0 meanwhile.
///
/// Dropping the ring frees any mbufs still in it.
#[derive(Debug)]
pub struct MbufRing {
    raw: NonNull<sys::rte_ring>,
    producer: Option<SideLock>,
    consumer: Option<SideLock>,
    _live: Live,
}

// SAFETY: rte_ring is designed for cross-thread use; the single-producer and
// single-consumer paths are serialised by the side locks.
unsafe impl Send for MbufRing {}
// SAFETY: as above; all methods take &self and are thread-safe.
unsafe impl Sync for MbufRing {}

/// Runs `f` holding `lock` if there is one; `None` if it is held elsewhere.
#[inline(always)]
fn with_side<R>(lock: &Option<SideLock>, f: impl FnOnce() -> R) -> Option<R> {
    match lock {
        None => Some(f()),
        Some(l) => {
            if l.0.swap(true, Ordering::Acquire) {
                return None;
            }
            let r = f();
            l.0.store(false, Ordering::Release);
            Some(r)
        }
    }
}

impl MbufRing {
    /// Create a ring holding up to `capacity` mbufs (exact, not rounded to a
    /// power of two). Names are global and at most 28 bytes.
    pub fn new(
        name: &str,
        capacity: u32,
        single_producer: bool,
        single_consumer: bool,
    ) -> Result<MbufRing> {
        let live = Live::acquire()?;
        let cname = CString::new(name)
            .map_err(|_| Error::InvalidArg(format!("ring name contains NUL: {name:?}")))?;
        let mut flags = sys::RING_F_EXACT_SZ;
        if single_producer {
            flags |= sys::RING_F_SP_ENQ;
        }
        if single_consumer {
            flags |= sys::RING_F_SC_DEQ;
        }
        // SAFETY: EAL running; cname is a valid C string DPDK copies.
        let raw =
            unsafe { sys::rte_ring_create(cname.as_ptr(), capacity, sys::SOCKET_ID_ANY, flags) };
        let Some(raw) = NonNull::new(raw) else {
            let code = rte_errno();
            return Err(Error::InvalidArg(format!(
                "rte_ring_create({name}, {capacity}): {} ({code})",
                strerror(code)
            )));
        };
        Ok(MbufRing {
            raw,
            producer: single_producer.then(SideLock::default),
            consumer: single_consumer.then(SideLock::default),
            _live: live,
        })
    }

    /// Move mbufs from the front of `burst` into the ring, as many as fit;
    /// returns how many. The rest stay in `burst`, in order.
    #[inline]
    pub fn enqueue_burst<const N: usize>(&self, burst: &mut MbufBurst<N>) -> usize {
        let len = burst.len() as u32;
        if len == 0 {
            return 0;
        }
        let n = with_side(&self.producer, || {
            // SAFETY: ring alive; the first len slots are owned mbuf
            // pointers; the SP path is serialised by with_side.
            unsafe {
                sys::rte_ring_enqueue_burst(
                    self.raw.as_ptr(),
                    burst.raw_ptr().cast::<*mut c_void>(),
                    len,
                    std::ptr::null_mut(),
                )
            }
        })
        .unwrap_or(0) as usize;
        // SAFETY: the ring now owns the first n mbufs.
        unsafe { burst.consume_front(n) };
        n
    }

    /// Move mbufs from the ring into the free room of `burst`; returns how many.
    #[inline]
    pub fn dequeue_burst<const N: usize>(&self, burst: &mut MbufBurst<N>) -> usize {
        let room = burst.room() as u32;
        if room == 0 {
            return 0;
        }
        let n = with_side(&self.consumer, || {
            // SAFETY: ring alive; the burst's spare slots have room for
            // `room` pointers; the SC path is serialised by with_side.
            unsafe {
                sys::rte_ring_dequeue_burst(
                    self.raw.as_ptr(),
                    burst.spare_ptr().cast::<*mut c_void>(),
                    room,
                    std::ptr::null_mut(),
                )
            }
        })
        .unwrap_or(0) as usize;
        // SAFETY: the ring only ever holds owned mbufs (enqueue_burst), and
        // the n dequeued are now the burst's.
        unsafe { burst.assume_pushed(n) };
        n
    }

    /// Mbufs currently queued (a snapshot when other cores are active).
    pub fn count(&self) -> u32 {
        // SAFETY: ring alive; reads head/tail indices.
        unsafe { sys::rte_ring_count(self.raw.as_ptr()) }
    }

    /// Maximum number of mbufs the ring holds.
    pub fn capacity(&self) -> u32 {
        // SAFETY: ring alive; immutable field.
        unsafe { sys::rte_ring_get_capacity(self.raw.as_ptr()) }
    }

    /// True if no mbufs are queued.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// NUMA socket of the ring's memory (`SOCKET_ID_ANY`, -1, if DPDK does not say).
    pub(crate) fn socket_id(&self) -> i32 {
        // SAFETY: ring alive; `memzone` is set by rte_ring_create and immutable afterwards.
        let mz = unsafe { (*self.raw.as_ptr()).memzone };
        if mz.is_null() {
            return sys::SOCKET_ID_ANY;
        }
        // SAFETY: the ring's memzone lives as long as the ring.
        unsafe { (*mz).socket_id }
    }

    fn side(&self, end: End) -> &Option<SideLock> {
        match end {
            End::Consumer => &self.consumer,
            End::Producer => &self.producer,
        }
    }
}

/// The end of a ring a `net_ring` port's queue works at: an RX queue dequeues, a TX queue
/// enqueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Consumer,
    Producer,
}

/// One end of a ring lent to a `net_ring` port for as long as the port exists. It keeps the ring
/// alive (the PMD holds its raw pointer) and, on a single-consumer (single-producer) end, holds
/// that end's lock, so the port's one queue on the ring is the end's only user, as
/// `RING_F_SC_DEQ` (`RING_F_SP_ENQ`) requires. Multi-consumer (multi-producer) ends are
/// thread-safe in DPDK itself and take no lock.
#[derive(Debug)]
pub(crate) struct LentEnd {
    ring: Arc<MbufRing>,
    end: End,
}

impl LentEnd {
    /// Lend `end` of `ring`; `None` if that end is single-threaded and in use: lent to another
    /// queue already, or a call on it is in progress in another thread.
    pub(crate) fn new(ring: &Arc<MbufRing>, end: End) -> Option<LentEnd> {
        if let Some(lock) = ring.side(end)
            && lock.0.swap(true, Ordering::Acquire)
        {
            return None;
        }
        Some(LentEnd {
            ring: Arc::clone(ring),
            end,
        })
    }

    /// The raw ring, for the PMD. Valid as long as `self` is.
    pub(crate) fn raw(&self) -> *mut sys::rte_ring {
        self.ring.raw.as_ptr()
    }
}

impl Drop for LentEnd {
    fn drop(&mut self) {
        // Release: what the port's queue did with the ring happens-before the next caller of
        // this end takes the lock.
        if let Some(lock) = self.ring.side(self.end) {
            lock.0.store(false, Ordering::Release);
        }
    }
}

impl Drop for MbufRing {
    fn drop(&mut self) {
        // &mut self: no other thread can be enqueueing or dequeueing.
        let mut burst = MbufBurst::<64>::new();
        loop {
            let n = self.dequeue_burst(&mut burst);
            burst.clear();
            if n == 0 {
                break;
            }
        }
        // SAFETY: the ring is empty and no other reference to it exists.
        unsafe { sys::rte_ring_free(self.raw.as_ptr()) };
    }
}
