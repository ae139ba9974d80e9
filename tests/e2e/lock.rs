//! One lab per machine: an exclusive, machine-wide lock held for a whole run, so that two
//! runs (CI, a developer, a second worktree) wait for each other instead of tearing down
//! each other's namespaces and fighting over the gRPC port.
//!
//! The lock is a directory (mkdir is atomic) holding the owner's PID. A lock whose owner no
//! longer exists (a run that was SIGKILLed) is stale and taken over.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

pub const LOCK_DIR: &str = "/run/cgnat-lab.lock";

pub struct LabLock;

fn owner() -> Option<u32> {
    fs::read_to_string(Path::new(LOCK_DIR).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl LabLock {
    pub fn acquire(timeout: Duration) -> Result<LabLock, String> {
        let me = std::process::id();
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            match fs::create_dir(LOCK_DIR) {
                Ok(()) => {
                    fs::write(Path::new(LOCK_DIR).join("pid"), me.to_string())
                        .map_err(|e| format!("write {LOCK_DIR}/pid: {e}"))?;
                    return Ok(LabLock);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {LOCK_DIR}: {e}")),
            }
            match owner() {
                Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => {
                    if !told {
                        eprintln!(
                            "e2e: the lab is in use by another run (pid {pid}); waiting up to {timeout:?}"
                        );
                        told = true;
                    }
                }
                // Stale (owner gone), or half-written by a run that is just starting: the
                // grace sleep below lets the latter finish writing its pid.
                Some(_) => {
                    let _ = fs::remove_dir_all(LOCK_DIR);
                    continue;
                }
                None => {
                    thread::sleep(Duration::from_millis(500));
                    if owner().is_none() {
                        let _ = fs::remove_dir_all(LOCK_DIR);
                        continue;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the lab is still in use by pid {:?} after {timeout:?} ({LOCK_DIR})",
                    owner()
                ));
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// Releases the lock if this process holds it; safe to call from the signal handler.
    pub fn release_if_mine() {
        if owner() == Some(std::process::id()) {
            let _ = fs::remove_dir_all(LOCK_DIR);
        }
    }
}

impl Drop for LabLock {
    fn drop(&mut self) {
        LabLock::release_if_mine();
    }
}
