//! Logical cores: identity and launching work on EAL worker threads.
//!
//! EAL starts one pinned thread per worker lcore (`-l`/`--lcores`) that
//! waits for jobs. [`launch`] hands such a thread a Rust closure; [`wait`]
//! collects its return value.

use std::ffi::{c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use dpdk_sys as sys;

use crate::eal::Live;
use crate::error::{Error, Result};

/// What [`wait`] returns for a launched closure that panicked.
pub const PANICKED: i32 = i32::MIN;

/// An EAL logical core number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LcoreId(pub u32);

impl std::fmt::Display for LcoreId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lcore {}", self.0)
    }
}

impl LcoreId {
    /// True if the EAL runs a thread for this lcore (it was in `-l`).
    pub fn is_enabled(self) -> bool {
        // SAFETY: reads static EAL configuration; DPDK bounds-checks the id.
        unsafe { sys::rte_lcore_is_enabled(self.0) == 1 }
    }

    /// NUMA socket of this lcore's CPU, `None` for lcores that are not enabled.
    pub fn socket_id(self) -> Option<u32> {
        // DPDK indexes its lcore table without a bounds check.
        if !self.is_enabled() {
            return None;
        }
        // SAFETY: enabled lcore, so the id is within the table.
        Some(unsafe { sys::rte_lcore_to_socket_id(self.0) })
    }
}

/// The lcore of the calling thread, `None` for threads DPDK did not create
/// (other than the main one).
pub fn current() -> Option<LcoreId> {
    // SAFETY: reads a thread-local variable; fine on any thread.
    let id = unsafe { sys::rte_lcore_id() };
    (id != sys::LCORE_ID_ANY).then_some(LcoreId(id))
}

/// The main lcore (the thread that initialised the EAL).
pub fn main() -> LcoreId {
    // SAFETY: reads static EAL configuration.
    LcoreId(unsafe { sys::rte_get_main_lcore() })
}

/// All enabled worker lcores, in order (`RTE_LCORE_FOREACH_WORKER`).
pub fn workers() -> Vec<LcoreId> {
    let mut out = Vec::new();
    let next = |i: u32| {
        // SAFETY: reads static EAL configuration; i is any index, DPDK wraps
        // u32::MAX + 1 to 0 as the C macro does with -1.
        unsafe { sys::rte_get_next_lcore(i, 1, 0) }
    };
    let mut i = next(u32::MAX);
    while i < sys::RTE_MAX_LCORE {
        out.push(LcoreId(i));
        i = next(i);
    }
    out
}

/// Number of enabled lcores, main included.
pub fn count() -> u32 {
    // SAFETY: reads static EAL configuration.
    unsafe { sys::rte_lcore_count() }
}

type Job = Box<dyn FnOnce() -> i32 + Send + 'static>;

/// What travels to the worker: the job and the token keeping the EAL alive
/// while it runs.
struct Launched {
    job: Job,
    _live: Live,
}

unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Box<Launched> leaked by launch(), handed to
    // exactly one worker, so it is reclaimed exactly once here.
    let launched = unsafe { Box::from_raw(arg.cast::<Launched>()) };
    let Launched { job, _live } = *launched;
    // Unwinding out of an extern "C" function aborts the process; turn a
    // panic into a distinctive return code instead (the panic hook has
    // already reported it).
    catch_unwind(AssertUnwindSafe(job)).unwrap_or(PANICKED)
}

/// Run `f` on worker `lcore` (`rte_eal_remote_launch`). The worker must be
/// idle (not running a previous job); its result is read with [`wait`].
/// Panics inside `f` are caught and reported as [`PANICKED`].
pub fn launch<F: FnOnce() -> i32 + Send + 'static>(lcore: LcoreId, f: F) -> Result<()> {
    let live = Live::acquire()?;
    // DPDK neither bounds-checks the id nor rejects lcores it runs no
    // thread for (it would talk to pipes that do not exist).
    if !lcore.is_enabled() || lcore == main() {
        return Err(Error::InvalidArg(format!(
            "{lcore} is not an enabled worker lcore (workers: {:?})",
            workers()
        )));
    }
    let arg = Box::into_raw(Box::new(Launched {
        job: Box::new(f),
        _live: live,
    }));
    // SAFETY: trampoline matches lcore_function_t and takes ownership of
    // arg only if the launch succeeds (DPDK then calls it exactly once).
    let rc = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg.cast::<c_void>(), lcore.0) };
    if rc != 0 {
        // SAFETY: the launch failed, so the worker never saw arg; reclaim it.
        drop(unsafe { Box::from_raw(arg) });
        return Err(Error::Launch {
            lcore: lcore.0,
            code: rc,
        });
    }
    Ok(())
}

/// Wait for the job on `lcore` to finish and return its value (for an idle
/// worker, the value of its last job, 0 if none; 0 for lcores that are not
/// enabled).
pub fn wait(lcore: LcoreId) -> i32 {
    if !lcore.is_enabled() {
        return 0;
    }
    // SAFETY: enabled lcore, so the id indexes EAL's lcore table.
    unsafe { sys::rte_eal_wait_lcore(lcore.0) }
}

/// Wait for every worker to finish its job.
pub fn wait_all() {
    // SAFETY: blocks on EAL's per-lcore state.
    unsafe { sys::rte_eal_mp_wait_lcore() }
}

/// True if `lcore` is running a launched job.
pub fn is_busy(lcore: LcoreId) -> bool {
    // SAFETY: enabled lcore (checked first), so the id indexes EAL's table.
    lcore.is_enabled() && unsafe { sys::rte_eal_get_lcore_state(lcore.0) == sys::RUNNING }
}
