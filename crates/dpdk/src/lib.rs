//! Safe layer over DPDK (`dpdk-sys`): EAL, mempools, mbufs, ports and
//! queues, lcores, rings. cgnat's data plane is written against this crate;
//! it and `dpdk-sys` are the only crates with `unsafe` code.
//!
//! # Threading and safety model
//!
//! - **EAL**: [`Eal::init`] once per process; the calling thread becomes the
//!   main lcore. Every handle below holds a token that keeps
//!   `rte_eal_cleanup` from running while it exists, and no handle can be
//!   created before init or after cleanup (those calls return
//!   [`Error::Eal`]). Cleanup therefore never frees memory still in use.
//! - **Ownership**: an [`Mbuf`] is owned (freed on drop) and `Send`; an
//!   [`MbufBurst`] is a fixed array of them. Receiving moves mbufs from the
//!   PMD into a burst; transmitting or enqueueing moves them out, so an mbuf
//!   is never referenced twice.
//! - **Queues**: a port's queues are handed out one handle each
//!   ([`RxQueue`], [`TxQueue`]): `Send`, not `Sync`, so exactly one thread
//!   polls a queue, as DPDK requires. Control calls on [`Port`] (stats,
//!   link, start) are thread-safe; stop/close wait for all queue handles to
//!   be dropped.
//! - **Mempools** are `Send + Sync`. A pool is only freed once all its mbufs
//!   are back; otherwise it is leaked so outstanding mbufs stay valid.
//! - **Rings**: [`MbufRing`] moves mbufs between cores; its single-producer
//!   and single-consumer modes are enforced, not just documented. A
//!   `net_ring` port over rings ([`PortId::from_rings`]) holds them until it
//!   is closed and takes the ends its queues use.
//! - **Lcores**: [`lcore::launch`] runs a `'static` closure on an EAL worker.
//!
//! # Limitations
//!
//! - Data accessors see the first segment only; multi-segment (scattered)
//!   packets are carried and freed correctly but not parsed across segments.
//! - No mbuf cloning or external buffers: every mbuf owns its data buffer,
//!   which is what makes [`Mbuf::data_mut`] sound.
//! - DPDK's fast-path functions are `static inline` in C and reached through
//!   one non-inlined wrapper call each (see `dpdk-sys`), so per-packet calls
//!   such as [`Mempool::alloc`] cost a function call more than in C; burst
//!   calls amortise it.
//! - Dropping a [`Mempool`] concurrently with another core still returning
//!   mbufs to it through its lcore cache is a race DPDK itself cannot
//!   detect; keep pools alive until workers have stopped.
//! - Only primary processes are supported (no DPDK multi-process).

// Every unsafe block states why it is sound.
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

mod burst;
mod eal;
mod error;
pub mod flow;
pub mod lcore;
mod mbuf;
mod mempool;
mod port;
mod ring;

pub use burst::{BURST, Drain, MbufBurst};
pub use eal::{Eal, is_running, live_handles};
pub use error::{Error, Result, rte_errno, strerror};
pub use mbuf::Mbuf;
pub use mempool::{DEFAULT_DATA_ROOM, HEADROOM, Mempool, SOCKET_ID_ANY};
pub use port::{LinkStatus, Port, PortConfig, PortId, PortStats, RxQueue, TxQueue};
pub use ring::MbufRing;

/// Raw bindings, for what this crate does not wrap.
pub use dpdk_sys as sys;

use std::ffi::CStr;

/// DPDK's version string, e.g. `DPDK 22.11.11`.
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated
    // string; it works before EAL init.
    let p = unsafe { sys::rte_version() };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null static C string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// NUMA socket of the calling lcore (`SOCKET_ID_ANY`, -1, on non-EAL threads).
pub fn socket_id() -> i32 {
    // SAFETY: reads a thread-local variable.
    let s = unsafe { sys::rte_socket_id() };
    // Non-EAL threads report SOCKET_ID_ANY, which round-trips through u32.
    s as i32
}

/// Start loading the cache line holding `*r` into all cache levels.
#[inline(always)]
pub fn prefetch0<T>(r: &T) {
    prefetch0_ptr((r as *const T).cast::<u8>());
}

/// Start loading the cache line at `p` into all cache levels
/// (`rte_prefetch0`). Safe for any address: a prefetch never faults.
#[inline(always)]
pub fn prefetch0_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: PREFETCHT0 is a hint: it never faults and has no
        // architectural effect, whatever the address. SSE is baseline on
        // x86_64. Inlined here rather than calling the C wrapper, which
        // would cost a call per packet.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: rte_prefetch0 is a hint and never faults.
        unsafe { sys::rte_prefetch0(p.cast()) }
    }
}

/// Ask the kernel to back `[addr, addr + len)` with transparent huge pages (`madvise`
/// `MADV_HUGEPAGE`), for large tables that are read at random (session slab, flow index): 2 MiB
/// pages cut TLB misses by orders of magnitude. Only the 2 MiB-aligned interior is advised. Call it
/// before the memory is first written, so the first touch faults in huge pages directly.
///
/// Returns whether the kernel accepted the advice (it refuses when THP is disabled,
/// `/sys/kernel/mm/transparent_hugepage/enabled` = `never`). The advice never changes the
/// contents or the validity of the memory, so any address range is acceptable.
pub fn advise_hugepages(addr: usize, len: usize) -> bool {
    const HUGE: usize = 2 << 20;
    let start = addr.div_ceil(HUGE) * HUGE;
    let end = (addr.saturating_add(len) / HUGE) * HUGE;
    if end <= start {
        return false;
    }
    // SAFETY: MADV_HUGEPAGE only changes how the kernel backs the range; it cannot unmap, move or
    // alter memory. An address that is not mapped makes madvise fail with ENOMEM, nothing else.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) == 0 }
}

/// Bytes of this process's anonymous memory that transparent huge pages back now (`AnonHugePages`
/// of `/proc/self/smaps_rollup`): whether [`advise_hugepages`] took effect, which its return value
/// cannot say (the kernel may accept the advice and still fault in 4 KiB pages when no huge page
/// is free). Pages are only there once written: zero-filled tables fault theirs in as flows
/// arrive. `None` where the kernel does not report it.
pub fn thp_backed_bytes() -> Option<u64> {
    anon_huge_bytes(&std::fs::read_to_string("/proc/self/smaps_rollup").ok()?)
}

/// The `AnonHugePages:` line of an smaps text, in bytes.
fn anon_huge_bytes(smaps: &str) -> Option<u64> {
    let line = smaps.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let mut f = line.split_whitespace().skip(1);
    let n: u64 = f.next()?.parse().ok()?;
    (f.next()? == "kB").then_some(n * 1024)
}

/// Time-stamp counter access for cheap timing in the data path.
pub mod time {
    use dpdk_sys as sys;

    /// Current TSC value (cycles).
    #[inline(always)]
    pub fn tsc() -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: RDTSC has no preconditions and is baseline on x86_64;
            // this is what rte_rdtsc does, without the wrapper call.
            unsafe { std::arch::x86_64::_rdtsc() }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // SAFETY: reads the cycle counter; no preconditions.
            unsafe { sys::rte_get_tsc_cycles() }
        }
    }

    /// TSC ticks per second, as calibrated by EAL init (0 before init).
    pub fn tsc_hz() -> u64 {
        // SAFETY: reads a value EAL stored at init.
        unsafe { sys::rte_get_tsc_hz() }
    }

    /// Cycles elapsed over `ms` milliseconds (for timer deadlines).
    pub fn ms_to_tsc(ms: u64) -> u64 {
        tsc_hz().saturating_mul(ms) / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reports_installed_dpdk() {
        let v = version();
        assert!(v.starts_with("DPDK 22.") || v.starts_with("DPDK 2"), "{v}");
    }

    #[test]
    fn handles_are_refused_without_eal() {
        // No EAL in the unit-test binary: creating handles must fail cleanly
        // rather than touch uninitialised DPDK state.
        assert!(!is_running());
        match Mempool::new_pktmbuf("nope", 63, 0, DEFAULT_DATA_ROOM, SOCKET_ID_ANY) {
            Err(Error::Eal { msg, .. }) => assert!(msg.contains("not initialised"), "{msg}"),
            other => panic!("expected Error::Eal, got {other:?}"),
        }
        assert!(matches!(
            MbufRing::new("nope", 16, true, true),
            Err(Error::Eal { .. })
        ));
        assert!(matches!(
            PortId::by_name("net_null0"),
            Err(Error::Eal { .. })
        ));
        assert!(matches!(
            PortId::from_rings("nope", &[], &[]),
            Err(Error::Eal { .. })
        ));
        assert_eq!(PortId::count_avail(), 0);
        assert!(PortId::all().is_empty());
        assert!(matches!(
            lcore::launch(lcore::LcoreId(1), || 0),
            Err(Error::Eal { .. })
        ));
        assert_eq!(live_handles(), 0);
    }

    #[test]
    fn anon_huge_pages_are_read_from_smaps() {
        let smaps =
            "Rss:              123456 kB\nAnonHugePages:     40960 kB\nShmemHugePages: 0 kB\n";
        assert_eq!(anon_huge_bytes(smaps), Some(40960 * 1024));
        assert_eq!(anon_huge_bytes("Rss: 1 kB\n"), None, "no such line");
        assert_eq!(
            anon_huge_bytes("AnonHugePages: x kB\n"),
            None,
            "not a number"
        );
    }

    /// Where the kernel grants THP on advice (sysfs `madvise` or `always`), advised memory that is
    /// then written is backed by huge pages, and [`thp_backed_bytes`] sees it: what cgnatd logs
    /// and cgnat-bench reports for the session tables.
    #[test]
    fn advised_memory_is_backed_by_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !mode.contains("[madvise]") && !mode.contains("[always]") {
            eprintln!("THP is off here ({mode:?}): nothing to check");
            return;
        }
        const LEN: usize = 64 << 20;
        let before = thp_backed_bytes().expect("smaps_rollup");
        let mut v: Vec<u8> = Vec::with_capacity(LEN);
        assert!(advise_hugepages(v.as_ptr() as usize, LEN), "advice refused");
        v.resize(LEN, 1);
        let grew = thp_backed_bytes()
            .expect("smaps_rollup")
            .saturating_sub(before);
        assert!(
            grew >= (LEN / 2) as u64,
            "only {grew} of {LEN} advised bytes on huge pages"
        );
        assert_eq!(v[LEN - 1], 1);
    }

    #[test]
    fn prefetch_accepts_any_address() {
        let x = 5u64;
        prefetch0(&x);
        prefetch0_ptr(std::ptr::null());
        prefetch0_ptr(usize::MAX as *const u8);
        assert_eq!(x, 5);
    }

    #[test]
    fn non_eal_thread_has_no_lcore() {
        assert_eq!(lcore::current(), None);
        assert_eq!(socket_id(), SOCKET_ID_ANY);
    }
}
