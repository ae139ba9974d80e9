//! Destination NAT rules at run time: the table in force, its publication to the workers (an
//! immutable table each worker swaps in between bursts), the cuts a change asks for, and the
//! counters the management API reports.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use config::Config;
use dataplane::Control;
use mgmt::{DnatBackendSnapshot, DnatRuleSnapshot, DnatSnapshot};
use nat::{BackendCounts, DnatCounters, DnatIds, DnatRule, DnatTable, OnRemoval, Rules, Scheduler};
use tracing::{info, warn};

use super::sessions::SessionBroker;

/// How long a publication waits for every worker to take the new table.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

struct State {
    table: Arc<DnatTable>,
    ids: DnatIds,
}

/// The daemon's destination NAT state.
pub struct DnatPlane {
    state: Mutex<State>,
    rules: Arc<Rules>,
    controls: Vec<Arc<Control>>,
    counters: Vec<Arc<DnatCounters>>,
    pool_names: Vec<String>,
}

impl DnatPlane {
    /// The plane for a data plane whose shards run `table` (built by [`DnatPlane::initial`]).
    pub fn new(
        initial: (Arc<DnatTable>, DnatIds),
        rules: Arc<Rules>,
        controls: Vec<Arc<Control>>,
        counters: Vec<Arc<DnatCounters>>,
    ) -> DnatPlane {
        let pool_names = rules.pools.iter().map(|p| p.name.clone()).collect();
        DnatPlane {
            state: Mutex::new(State {
                table: initial.0,
                ids: initial.1,
            }),
            rules,
            controls,
            counters,
            pool_names,
        }
    }

    /// The table the shards start with: generation 1.
    pub fn initial(cfg: &Config, rules: &Rules) -> Result<(Arc<DnatTable>, DnatIds)> {
        let mut ids = DnatIds::default();
        let t = DnatTable::build(cfg.dnat.clone(), rules, 1, None, &mut ids, &|_| false)
            .map_err(|e| anyhow!("nat.dnat: {e}"))?;
        Ok((Arc::new(t), ids))
    }

    fn counts(&self, id: u32) -> BackendCounts {
        let mut c = BackendCounts::default();
        for w in &self.counters {
            c += w.read(id);
        }
        c
    }

    /// Put `rules` in force: build and validate the next table (nothing changes on error), hand it
    /// to every worker, wait until all of them run it, then cut the sessions of removed backends
    /// whose rule says so. Returns the new generation.
    pub async fn apply(&self, rules: Vec<DnatRule>, broker: &SessionBroker) -> Result<u64> {
        let (table, cuts) = {
            let mut st = self
                .state
                .lock()
                .map_err(|_| anyhow!("dnat state poisoned"))?;
            let prev = Arc::clone(&st.table);
            let live = |id: u32| self.counts(id).sessions_current > 0;
            let next = DnatTable::build(
                rules,
                &self.rules,
                prev.generation + 1,
                Some(&prev),
                &mut st.ids,
                &live,
            )
            .map_err(|e| anyhow!("nat.dnat: {e}"))?;
            let cuts = cuts(&prev, &next);
            let next = Arc::new(next);
            for c in &self.controls {
                // The mailbox holds a few tables; a worker that has not taken the older ones yet
                // only needs the newest.
                while c.dnat.push(Arc::clone(&next)).is_err() {
                    let _ = c.dnat.pop();
                }
            }
            st.table = Arc::clone(&next);
            (next, cuts)
        };
        let deadline = Instant::now() + PUBLISH_WAIT;
        while self
            .controls
            .iter()
            .any(|c| c.dnat_generation.load(Ordering::Acquire) < table.generation)
        {
            if Instant::now() > deadline {
                warn!(
                    generation = table.generation,
                    "a worker has not taken the new destination NAT rules yet"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for f in cuts {
            match broker.delete_matching(f) {
                Ok(rx) => {
                    let n = rx.await.unwrap_or(0);
                    info!(
                        backend = %format!("{}:{}", Ipv4Addr::from(f.inside_addr.unwrap_or(0)), f.inside_port.unwrap_or(0)),
                        deleted = n,
                        "cut the sessions of a removed backend"
                    );
                }
                Err(e) => warn!(error = %e, "cannot cut a removed backend's sessions"),
            }
        }
        Ok(table.generation)
    }

    /// The rules in force with their counters.
    pub fn snapshot(&self) -> DnatSnapshot {
        let Ok(st) = self.state.lock() else {
            return DnatSnapshot::default();
        };
        let t = Arc::clone(&st.table);
        drop(st);
        let rules = t
            .rules()
            .iter()
            .map(|e| {
                let r = &e.rule;
                DnatRuleSnapshot {
                    name: r.name.clone(),
                    address: Ipv4Addr::from(r.addr),
                    proto: r.proto.unwrap_or(0),
                    port: r.port,
                    scheduler: match r.scheduler {
                        Scheduler::WeightedRandom => "random",
                        Scheduler::RoundRobin => "round_robin",
                        Scheduler::Maglev => "maglev",
                    },
                    affinity: Duration::from_secs(u64::from(r.affinity_s)),
                    snat_pool: r.snat_pool.and_then(|i| self.pool_names.get(i).cloned()),
                    on_removal: match r.on_removal {
                        OnRemoval::Drain => "drain",
                        OnRemoval::Cut => "cut",
                    },
                    retired: e.retired,
                    backends: e
                        .backends
                        .iter()
                        .map(|b| {
                            let c = self.counts(b.id);
                            DnatBackendSnapshot {
                                address: Ipv4Addr::from(b.backend.addr),
                                port: b.backend.port,
                                weight: b.backend.weight,
                                retired: b.retired,
                                packets: c.packets,
                                bytes: c.bytes,
                                sessions_created: c.sessions_created,
                                sessions_current: c.sessions_current,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        DnatSnapshot {
            generation: t.generation,
            rules,
        }
    }
}

/// Session filters for the backends `prev` had that `next` retired (or dropped) under a rule that
/// cuts: their sessions are deleted once `next` is in force.
fn cuts(prev: &DnatTable, next: &DnatTable) -> Vec<nat::SessionFilter> {
    let mut out = Vec::new();
    for old in prev.rules() {
        let r = &old.rule;
        let new = next.index_of(r).map(|i| next.rule(i));
        let cut = new.map_or(r.on_removal, |n| n.rule.on_removal) == OnRemoval::Cut;
        if !cut {
            continue;
        }
        for b in old.backends.iter().filter(|b| !b.retired || new.is_none()) {
            let kept = new.is_some_and(|n| {
                n.backends.iter().any(|nb| {
                    !nb.retired
                        && nb.backend.addr == b.backend.addr
                        && nb.backend.port == b.backend.port
                })
            });
            if kept {
                continue;
            }
            out.push(nat::SessionFilter {
                proto: r.proto,
                inside_addr: Some(b.backend.addr),
                inside_port: (b.backend.port != 0).then_some(b.backend.port),
                outside_addr: Some(r.addr),
                outside_port: (r.port != 0).then_some(r.port),
                ..nat::SessionFilter::default()
            });
        }
    }
    out
}

/// Reload `nat.dnat` from the configuration file on SIGHUP, forever.
pub async fn reload_on_hangup(
    path: PathBuf,
    running: Config,
    plane: Arc<DnatPlane>,
    broker: Arc<SessionBroker>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    while hup.recv().await.is_some() {
        info!(config = %path.display(), "SIGHUP: reloading nat.dnat");
        let rules = match config::reload_dnat_file(&running, &path) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "reload refused, nothing changed");
                continue;
            }
        };
        let n = rules.len();
        match plane.apply(rules, &broker).await {
            Ok(generation) => info!(rules = n, generation, "destination NAT rules reloaded"),
            Err(e) => warn!(error = %e, "reload refused, nothing changed"),
        }
    }
    Ok(())
}
