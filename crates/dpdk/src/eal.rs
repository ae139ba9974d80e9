//! EAL lifetime: initialisation, cleanup, and the accounting that keeps
//! cleanup from pulling memory out from under live handles.
//!
//! One atomic word holds both the EAL phase and the number of live handles
//! (`Live` tokens) that need the EAL. Handles take a token on creation;
//! `rte_eal_cleanup` only runs when the count is zero, and taking a token
//! fails once cleanup has started. Because both live in the same word, the
//! check and the transition are a single compare-and-swap, so no handle can
//! slip in between.

use std::ffi::{CStr, CString, OsStr, c_char};
use std::marker::PhantomData;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dpdk_sys as sys;

use crate::error::{Error, Result, eal_error};

const PHASE_SHIFT: u32 = 62;
const COUNT_MASK: u64 = (1 << PHASE_SHIFT) - 1;
const UNINIT: u64 = 0;
const INITIALISING: u64 = 1;
const RUNNING: u64 = 2;
const CLOSED: u64 = 3;

static STATE: AtomicU64 = AtomicU64::new(0);

fn phase(word: u64) -> u64 {
    word >> PHASE_SHIFT
}

/// Proof that the EAL is running, held by every handle that calls into DPDK.
/// While one exists, `rte_eal_cleanup` is not called.
#[derive(Debug)]
pub(crate) struct Live(());

impl Live {
    pub(crate) fn acquire() -> Result<Live> {
        let mut cur = STATE.load(Ordering::Acquire);
        loop {
            if phase(cur) != RUNNING {
                return Err(not_running());
            }
            match STATE.compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Ok(Live(())),
                Err(now) => cur = now,
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Release: everything this handle did with DPDK happens-before a
        // cleanup that observes the decremented count.
        STATE.fetch_sub(1, Ordering::Release);
    }
}

fn not_running() -> Error {
    let word = STATE.load(Ordering::Acquire);
    let msg = match phase(word) {
        UNINIT | INITIALISING => "EAL is not initialised",
        _ => "EAL has been cleaned up",
    };
    Error::Eal {
        code: libc::EINVAL,
        msg: msg.to_string(),
    }
}

/// Number of live DPDK handles (mempools, ports, queues, rings, running
/// launched jobs) currently keeping the EAL from being cleaned up.
pub fn live_handles() -> u64 {
    STATE.load(Ordering::Acquire) & COUNT_MASK
}

/// True between a successful [`Eal::init`] and a completed cleanup.
pub fn is_running() -> bool {
    phase(STATE.load(Ordering::Acquire)) == RUNNING
}

/// The initialised Environment Abstraction Layer. One per process.
///
/// The thread that calls [`Eal::init`] becomes DPDK's main lcore, and DPDK
/// requires `rte_eal_cleanup` on that same thread, hence `Eal` is neither
/// `Send` nor `Sync`.
///
/// Dropping it (or calling [`Eal::cleanup`]) runs `rte_eal_cleanup` exactly
/// once, which closes devices and releases memory, and then removes the
/// primary process's runtime directory (`/var/run/dpdk/<file-prefix>`), so
/// with `--no-huge` or `--huge-unlink` nothing is left on disk. Cleanup is skipped (the process then
/// simply keeps DPDK until it exits) while any mempool, port, queue, ring or
/// launched job is still alive, because their memory would vanish.
/// DPDK does not support initialising the EAL again after cleanup.
#[derive(Debug)]
pub struct Eal {
    done: bool,
    _main_lcore_thread: PhantomData<*const ()>,
}

impl Eal {
    /// Initialise DPDK with command-line style arguments; `args[0]` is the
    /// program name, the rest are EAL options (`-l 0-1`, `--vdev ...`,
    /// `--file-prefix ...`). Application options must not be included.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
        if args.is_empty() {
            return Err(Error::InvalidArg(
                "EAL arguments need at least the program name".to_string(),
            ));
        }
        let mut owned = Vec::with_capacity(args.len());
        for a in args {
            let a = a.as_ref();
            owned.push(
                CString::new(a)
                    .map_err(|_| Error::InvalidArg(format!("EAL argument contains NUL: {a:?}")))?,
            );
        }
        let argc = i32::try_from(owned.len())
            .map_err(|_| Error::InvalidArg("too many EAL arguments".to_string()))?;

        let start = UNINIT << PHASE_SHIFT;
        let initialising = INITIALISING << PHASE_SHIFT;
        if STATE
            .compare_exchange(start, initialising, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::Eal {
                code: libc::EALREADY,
                msg: "EAL already initialised in this process (or cleaned up; it cannot be re-initialised)"
                    .to_string(),
            });
        }

        // EAL's getopt permutes argv and some options may keep pointers into
        // the strings, so they are leaked: a few bytes once per process.
        let mut argv: Vec<*mut c_char> = owned.into_iter().map(CString::into_raw).collect();
        argv.push(std::ptr::null_mut());
        let argv = argv.leak();

        // SAFETY: argc/argv describe a NULL-terminated array of valid, leaked,
        // NUL-terminated strings; the STATE transition above guarantees that
        // no other thread is inside rte_eal_init.
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            let err = eal_error("rte_eal_init");
            // DPDK lets a failed init be retried for argument errors and
            // answers EALREADY itself otherwise, so go back to UNINIT.
            STATE.store(start, Ordering::Release);
            return Err(err);
        }
        STATE.store(RUNNING << PHASE_SHIFT, Ordering::Release);
        Ok(Eal {
            done: false,
            _main_lcore_thread: PhantomData,
        })
    }

    /// Release DPDK's resources (see the type docs); same as dropping.
    pub fn cleanup(self) {
        drop(self);
    }

    /// Like [`Eal::cleanup`], but reports why cleanup was skipped or failed.
    pub fn try_cleanup(mut self) -> Result<()> {
        self.done = true;
        cleanup_now()
    }

    /// The main lcore, i.e. the thread that called [`Eal::init`].
    pub fn main_lcore(&self) -> crate::lcore::LcoreId {
        crate::lcore::main()
    }
}

fn cleanup_now() -> Result<()> {
    let running = RUNNING << PHASE_SHIFT;
    if let Err(now) = STATE.compare_exchange(
        running,
        CLOSED << PHASE_SHIFT,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        let live = now & COUNT_MASK;
        return Err(Error::Eal {
            code: libc::EBUSY,
            msg: format!("cleanup skipped: {live} DPDK handle(s) still alive"),
        });
    }
    let runtime_dir = primary_runtime_dir();
    // SAFETY: the EAL was initialised (phase was RUNNING), no handle that
    // could touch DPDK memory exists (count was zero) and none can be created
    // (phase is now CLOSED); Eal is !Send, so this is the main lcore thread.
    let rc = unsafe { sys::rte_eal_cleanup() };
    if rc < 0 {
        return Err(Error::Eal {
            code: -rc,
            msg: format!("rte_eal_cleanup: {}", crate::error::strerror(rc)),
        });
    }
    if let Some(dir) = runtime_dir {
        remove_runtime_dir(&dir);
    }
    Ok(())
}

/// The runtime directory (`/var/run/dpdk/<file-prefix>`) if this process is
/// the primary, i.e. owns it.
fn primary_runtime_dir() -> Option<PathBuf> {
    // SAFETY: EAL is initialised; both calls read EAL's static configuration.
    let (primary, p) = unsafe {
        (
            sys::rte_eal_process_type() == sys::RTE_PROC_PRIMARY,
            sys::rte_eal_get_runtime_dir(),
        )
    };
    if !primary || p.is_null() {
        return None;
    }
    // SAFETY: non-null pointer to EAL's static NUL-terminated path buffer.
    let dir = unsafe { CStr::from_ptr(p) };
    let dir = PathBuf::from(OsStr::from_bytes(dir.to_bytes()));
    (!dir.as_os_str().is_empty()).then_some(dir)
}

/// rte_eal_cleanup releases memory but leaves the primary's shared-config
/// files (`config`, `fbarray_*`, sockets) behind; with a fresh
/// `--file-prefix` per run they would pile up. Only plain files directly in
/// the directory are removed, then the directory if it is empty.
fn remove_runtime_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| !t.is_dir()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for Eal {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            // Drop cannot report; try_cleanup is the reporting variant.
            let _ = cleanup_now();
        }
    }
}
