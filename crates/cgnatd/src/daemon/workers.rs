//! Whether each worker is still in its loop, and the watchdog that finds out when one is not.
//!
//! A worker leaves its loop only when the daemon stops it, or when it panics (the lcore launcher
//! catches the panic and the lcore goes idle). Its RX queues then stop being polled: on a NIC
//! with RSS the subscribers hashed to it lose all traffic, and with the software handoff the
//! other workers' rings to it fill and drop. Nothing of that shows in the counters of the
//! workers still running, so the watchdog looks at the lcores themselves, several times a second,
//! and on the first sign of a stopped worker logs it, turns the health service NOT_SERVING (so an
//! orchestrator or a redundant peer takes over) and makes session queries, which could no longer
//! be answered whole, fail with the reason. A stopped worker is not restarted in place: its shard
//! may have been left half-changed by the panic, so only a restart of the daemon brings it back.

use std::sync::OnceLock;

use mgmt::BackendError;
use tokio::sync::watch;

struct Slot {
    lcore: u32,
    /// Why the worker stopped, once it has.
    failed: OnceLock<String>,
}

/// The running-or-stopped state of every worker, shared by the watchdog (which writes it) and
/// everything that must not wait for a stopped worker (which reads it).
pub struct WorkerStatus {
    slots: Vec<Slot>,
    /// The first stopped worker's error, for those who must act the moment it is known (open
    /// `WatchSessions` streams end with it).
    first: watch::Sender<Option<BackendError>>,
}

impl WorkerStatus {
    /// All workers running, in worker order, on these lcores.
    pub fn new(lcores: impl IntoIterator<Item = u32>) -> WorkerStatus {
        WorkerStatus {
            slots: lcores
                .into_iter()
                .map(|lcore| Slot {
                    lcore,
                    failed: OnceLock::new(),
                })
                .collect(),
            first: watch::channel(None).0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Record that worker `w` stopped. Returns false if it was already recorded (the first
    /// reason stays).
    pub fn mark_failed(&self, w: usize, why: String) -> bool {
        let new = self.slots.get(w).is_some_and(|s| s.failed.set(why).is_ok());
        if new {
            self.first.send_if_modified(|first| {
                let was_none = first.is_none();
                if was_none {
                    *first = self.error(w);
                }
                was_none
            });
        }
        new
    }

    /// Follows [`WorkerStatus::first_error`]: `None` until a worker is found stopped.
    pub fn subscribe(&self) -> watch::Receiver<Option<BackendError>> {
        self.first.subscribe()
    }

    /// Why worker `w` stopped, if it has.
    pub fn failure(&self, w: usize) -> Option<&str> {
        self.slots.get(w)?.failed.get().map(String::as_str)
    }

    pub fn is_failed(&self, w: usize) -> bool {
        self.failure(w).is_some()
    }

    /// The error naming stopped worker `w`, if it has stopped.
    pub fn error(&self, w: usize) -> Option<BackendError> {
        let s = self.slots.get(w)?;
        s.failed.get().map(|why| BackendError::WorkerFailed {
            worker: w as u32,
            lcore: s.lcore,
            why: why.clone(),
        })
    }

    /// The error naming the first stopped worker, if any has stopped.
    pub fn first_error(&self) -> Option<BackendError> {
        (0..self.slots.len()).find_map(|w| self.error(w))
    }

    /// "worker 1 (lcore 2) has stopped (panicked)", for the first stopped worker, if any.
    pub fn first_stopped(&self) -> Option<String> {
        (0..self.slots.len()).find_map(|w| self.describe(w))
    }

    /// "worker 1 (lcore 2) has stopped (panicked)", if worker `w` has stopped.
    pub fn describe(&self, w: usize) -> Option<String> {
        let s = self.slots.get(w)?;
        let why = s.failed.get()?;
        Some(format!(
            "worker {w} (lcore {}) has stopped ({why})",
            s.lcore
        ))
    }
}

/// What the watchdog does on each look: `ended(w)` says whether worker `w` has left its loop and
/// with what return code (`None` while it runs). Each worker found stopped for the first time is
/// recorded and returned, with the reason, so the caller can log it and report NOT_SERVING.
/// Workers leave their loops at shutdown on purpose, so a worker found stopped after
/// `stopping()` (the workers' stop flag) has turned true is not a failure. `stopping` is asked
/// after the worker was seen stopped: a worker that stopped because the daemon told it to was
/// told before it stopped.
pub fn look(
    status: &WorkerStatus,
    stopping: impl Fn() -> bool,
    mut ended: impl FnMut(usize) -> Option<i32>,
) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for w in 0..status.len() {
        if status.is_failed(w) {
            continue;
        }
        if let Some(rc) = ended(w) {
            if stopping() {
                break;
            }
            let why = reason(rc);
            if status.mark_failed(w, why.clone()) {
                found.push((w, why));
            }
        }
    }
    found
}

/// What a worker's return code says about how it stopped.
pub fn reason(rc: i32) -> String {
    if rc == dpdk::lcore::PANICKED {
        "panicked".to_owned()
    } else {
        format!("left its loop with status {rc}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_worker_is_found_once_with_its_reason() {
        let status = WorkerStatus::new([1, 3]);
        let mut watcher = status.subscribe();
        let mut ended: [Option<i32>; 2] = [None, None];
        assert!(look(&status, || false, |w| ended[w]).is_empty());
        assert!(status.first_error().is_none());
        assert!(!watcher.has_changed().unwrap());

        ended[1] = Some(dpdk::lcore::PANICKED);
        assert_eq!(
            look(&status, || false, |w| ended[w]),
            vec![(1, "panicked".to_owned())]
        );
        assert_eq!(
            status.first_error(),
            Some(BackendError::WorkerFailed {
                worker: 1,
                lcore: 3,
                why: "panicked".into()
            })
        );
        // Open watches are told at once, with the same error.
        assert!(watcher.has_changed().unwrap());
        assert_eq!(*watcher.borrow_and_update(), status.first_error());
        // Reported once, not at every look.
        assert!(look(&status, || false, |w| ended[w]).is_empty());

        ended[0] = Some(7);
        assert_eq!(
            look(&status, || false, |w| ended[w]),
            vec![(0, "left its loop with status 7".to_owned())]
        );
        assert_eq!(status.failure(1), Some("panicked"));
        // The watches keep the first worker found stopped.
        assert!(!watcher.has_changed().unwrap());
        assert!(format!("{:?}", *watcher.borrow()).contains("worker: 1"));
    }

    #[test]
    fn workers_stopped_by_the_daemon_are_not_failures() {
        let status = WorkerStatus::new([1]);
        assert!(look(&status, || true, |_| Some(0)).is_empty());
        assert!(!status.is_failed(0));
    }
}
