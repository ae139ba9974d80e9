//! The translation policy at run time: the desired state the API gets and applies (pools, SNAT
//! rules, exclusions, timeouts, limits, destination NAT rules), its validation, its publication to
//! the workers (an immutable [`dataplane::Policy`] each worker swaps in between bursts), the state
//! file, and the destination NAT counters the API reports.
//!
//! Pools keep their slot (the index the NAT core stores in mappings and subscriber records) for as
//! long as they have state: a pool removed from the policy stays in the workers' rules, *retired*
//! (no new flows, its sessions go on), until an apply finds it without ports in use on any worker
//! and empties its slot, which a later pool may take. Its addresses cannot join another pool while
//! it drains.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use config::policy::{Change, PolicyDoc};
use config::{Config, ConfigError};
use dataplane::Control;
use mgmt::{
    DnatBackendSnapshot, DnatRuleSnapshot, DnatSnapshot, PolicyChange, PolicyError, PolicyOutcome,
    PolicyRequest, PolicySnapshot, PoolSnapshot, SnatRuleStatsSnapshot,
};
use nat::{
    BackendCounts, Counters, DnatCounters, DnatIds, DnatTable, OnRemoval, Pool, Rules, Scheduler,
};
use tracing::{info, warn};

use super::sessions::SessionBroker;
use super::state_file::{self, Saved};

/// How long a publication waits for every worker to take the new policy.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// How often retired pools are checked for having drained (their slots and addresses are freed).
pub const DRAIN_CHECK: Duration = Duration::from_secs(10);

/// The NAT core's pool slots are a byte.
const MAX_SLOTS: usize = nat::MAX_POOLS;

/// The sequence number of the first publication: the policy the workers start with.
pub const FIRST_SEQ: u64 = 1;

/// The policy in force.
#[derive(Clone)]
struct State {
    generation: u64,
    /// Sequence number of the last publication to the workers.
    seq: u64,
    doc: PolicyDoc,
    /// The whole configuration with this policy (validated).
    config: Config,
    /// What the workers run: pools by slot (retired and vacant ones included), rules by slot.
    rules: Arc<Rules>,
    table: Arc<DnatTable>,
    ids: DnatIds,
}

/// What the data plane needs from the daemon to take a policy.
pub struct Wiring {
    pub controls: Vec<Arc<Control>>,
    pub dnat_counters: Vec<Arc<DnatCounters>>,
    pub counters: Vec<Arc<Counters>>,
    /// The outside port's address and subnet (proxy ARP, MASQUERADE).
    pub outside_addr: Ipv4Addr,
    pub outside_net: config::Ipv4Net,
    pub workers: u16,
    /// Port blocks per subscriber record, fixed when the shards were built.
    pub block_capacity: u16,
    /// Which workers still run: a stopped one can take no policy.
    pub status: Arc<super::workers::WorkerStatus>,
}

/// The daemon's translation policy.
pub struct PolicyPlane {
    /// One change at a time, from validation to the workers' acknowledgement.
    apply_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The configuration file's text as loaded: every apply is validated as this file with its
    /// policy sections replaced, so the rest of the configuration takes part in the checks.
    base_text: String,
    state_file: Option<PathBuf>,
    wiring: Wiring,
}

/// The policy cgnatd starts with: the state file's when there is one, else the config file's.
pub struct Initial {
    pub generation: u64,
    pub doc: PolicyDoc,
    pub config: Config,
    /// The state file it came from, when it did (logged once logging is up).
    pub restored_from: Option<PathBuf>,
}

/// Load the starting policy. A state file that exists but does not fit the configuration stops
/// the start: running on an older policy than the one last applied would be worse.
pub fn initial(base_text: &str, file_cfg: &Config) -> Result<Initial> {
    let from_file = || -> Result<Initial> {
        Ok(Initial {
            generation: 1,
            doc: PolicyDoc::from_config_text(base_text).map_err(|e| anyhow!("{e}"))?,
            config: file_cfg.clone(),
            restored_from: None,
        })
    };
    let Some(path) = &file_cfg.mgmt.state_file else {
        return from_file();
    };
    match state_file::read(path)? {
        None => from_file(),
        Some(saved) => {
            let config = saved.doc.apply_to(base_text).map_err(|e| {
                anyhow!(
                    "state file {}: its policy does not fit the configuration: {e}",
                    path.display()
                )
            })?;
            Ok(Initial {
                generation: saved.generation,
                doc: saved.doc,
                config,
                restored_from: Some(path.clone()),
            })
        }
    }
}

/// The NAT core's rules for a configuration, pools in configuration order.
pub fn rules_of(cfg: &Config) -> Result<Rules> {
    super::setup::nat_rules(cfg)
}

/// The first destination NAT table.
pub fn initial_table(
    cfg: &Config,
    rules: &Rules,
    generation: u64,
) -> Result<(Arc<DnatTable>, DnatIds)> {
    let mut ids = DnatIds::default();
    let t = DnatTable::build(cfg.dnat.clone(), rules, generation, None, &mut ids, &|_| {
        false
    })
    .map_err(|e| anyhow!("nat.dnat: {e}"))?;
    Ok((Arc::new(t), ids))
}

/// What every worker runs for `rules`/`table` under `cfg`.
pub fn worker_policy(
    (seq, generation): (u64, u64),
    cfg: &Config,
    rules: &Arc<Rules>,
    table: &Arc<DnatTable>,
    outside_addr: Ipv4Addr,
    outside_net: config::Ipv4Net,
) -> dataplane::Policy {
    let own = u32::from(outside_addr);
    // Pool (retired ones too: they still translate) and rule addresses inside the outside subnet
    // are answered for in ARP; routed ones need nothing.
    let mut arp: Vec<u32> = rules
        .pools
        .iter()
        .flat_map(|p| p.addrs.iter().copied())
        .chain(table.rules().iter().map(|r| r.rule.addr))
        .filter(|a| outside_net.contains((*a).into()) && *a != own)
        .collect();
    arp.sort_unstable();
    arp.dedup();
    let masquerade = rules.pools.iter().any(|p| p.addrs.contains(&own))
        || table.rules().iter().any(|r| r.rule.addr == own);
    dataplane::Policy {
        seq,
        generation,
        rules: Arc::clone(rules),
        params: super::setup::policy_params(cfg),
        dnat: Arc::clone(table),
        outside_proxy_arp: arp,
        masquerade,
        refusal_icmp: cfg.nat.limits.icmp_unreachable,
    }
}

fn invalid_at(field: &str, message: String) -> PolicyError {
    PolicyError::Invalid {
        field: field.to_owned(),
        message: format!("{field}: {message}"),
    }
}

impl PolicyPlane {
    pub fn new(
        initial: Initial,
        rules: Arc<Rules>,
        table: (Arc<DnatTable>, DnatIds),
        base_text: String,
        wiring: Wiring,
    ) -> PolicyPlane {
        PolicyPlane {
            apply_lock: tokio::sync::Mutex::new(()),
            state_file: initial.config.mgmt.state_file.clone(),
            state: Mutex::new(State {
                generation: initial.generation,
                seq: FIRST_SEQ,
                doc: initial.doc,
                config: initial.config,
                rules,
                table: table.0,
                ids: table.1,
            }),
            base_text,
            wiring,
        }
    }

    fn current(&self) -> Result<State, PolicyError> {
        self.state
            .lock()
            .map(|s| s.clone())
            .map_err(|_| PolicyError::Failed("policy state poisoned".into()))
    }

    pub fn generation(&self) -> u64 {
        self.current().map_or(0, |s| s.generation)
    }

    pub fn snapshot(&self) -> PolicySnapshot {
        match self.current() {
            Ok(s) => PolicySnapshot {
                generation: s.generation,
                document: s.doc.value().clone(),
            },
            Err(_) => PolicySnapshot {
                generation: 0,
                document: serde_yaml::Value::Null,
            },
        }
    }

    /// Ports in use per outside address, summed over workers.
    fn ports_in_use(&self) -> HashMap<u32, u64> {
        let mut in_use = HashMap::new();
        for c in &self.wiring.counters {
            for (a, n) in c.ports_by_address() {
                *in_use.entry(a).or_insert(0) += n;
            }
        }
        in_use
    }

    /// Port blocks held per outside address, summed over workers.
    fn blocks_in_use(&self) -> HashMap<u32, u64> {
        let mut held = HashMap::new();
        for c in &self.wiring.counters {
            for (a, n) in c.blocks_by_address() {
                *held.entry(a).or_insert(0) += n;
            }
        }
        held
    }

    /// The SNAT rules in force with what each opened and refused, summed over workers. Workers
    /// start their counts over when they take new SNAT rules, so right after a change a rule may
    /// briefly show the counts of the rule that was at its position.
    pub fn snat_rule_stats(&self) -> Vec<SnatRuleStatsSnapshot> {
        let Ok(st) = self.current() else {
            return Vec::new();
        };
        let n = st.config.snat.len();
        let mut sums = vec![(0u64, 0u64); n];
        for c in &self.wiring.counters {
            for (i, (opened, refused)) in c.snat_rules(n).into_iter().enumerate() {
                sums[i].0 += opened;
                sums[i].1 += refused;
            }
        }
        st.config
            .snat
            .iter()
            .zip(sums)
            .map(|(r, (opened, refused))| SnatRuleStatsSnapshot {
                matches: match r.destination {
                    Some(d) => format!("{} to {d}", r.prefix),
                    None => r.prefix.to_string(),
                },
                pool: st
                    .config
                    .pools
                    .get(r.pool)
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                sessions_opened: opened,
                flows_refused: refused,
            })
            .collect()
    }

    /// Validate, and unless it is a dry run, persist and publish a policy change. Nothing changes
    /// on any error. Returns the generation in force afterwards and what changed.
    pub async fn apply(
        &self,
        req: PolicyRequest,
        broker: &SessionBroker,
    ) -> Result<PolicyOutcome, PolicyError> {
        let _one_at_a_time = self.apply_lock.lock().await;
        let cur = self.current()?;
        // A stopped worker would never take the change: saving it would put a policy on record
        // that part of the data plane does not run. A dry run changes nothing and is answered.
        let stopped = self.wiring.status.first_stopped();
        if let Some(stopped) = &stopped
            && !req.dry_run
        {
            return Err(PolicyError::Failed(format!(
                "{stopped}, and no policy change can be put in force until cgnatd is restarted; \
                 nothing was applied"
            )));
        }
        // Every worker runs the last publication before the next one goes out: the mailbox then
        // never holds more than one policy (none is ever dropped unseen), and a pool slot retired
        // by an earlier publication is retired on every worker, so its drained gauges below are
        // final (no worker can allocate on it any more). (A stopped worker never catches up;
        // only dry runs get past the check above then.)
        if stopped.is_none()
            && let Some(w) = self
                .wiring
                .controls
                .iter()
                .position(|c| c.policy_seq.load(Ordering::Acquire) < cur.seq)
        {
            return Err(PolicyError::Failed(format!(
                "worker {w} has not taken the policy published before (generation {}) yet; \
                 nothing was applied, retry shortly",
                cur.generation
            )));
        }
        if let Some(expected) = req.expected_generation
            && expected != cur.generation
        {
            return Err(PolicyError::Conflict {
                expected,
                current: cur.generation,
            });
        }
        let doc = match &req.change {
            PolicyChange::Replace(v) => PolicyDoc::from_value(v.clone())?,
            PolicyChange::Edit(e) => cur.doc.edit(e)?,
        };
        let config = doc.apply_to(&self.base_text)?;
        let live = config::policy::check_live(&cur.config, &config);
        if !live.is_empty() {
            return Err(ConfigError::Invalid { errors: live }.into());
        }
        let changes = config::policy::diff(&cur.config, &config);
        let (rules, vacated) = self.next_rules(&cur, &config)?;
        // The generation counts changes to the desired state; a publication that only frees the
        // slots of drained pools keeps it (a saved `rules get` stays valid).
        let generation = if changes.is_empty() {
            cur.generation
        } else {
            cur.generation + 1
        };
        let seq = cur.seq + 1;
        let mut ids = cur.ids.clone();
        let live_ids = |id: u32| self.dnat_counts(id).sessions_current > 0;
        let dnat_rules = remap_dnat(&config, &rules);
        let table = DnatTable::build(
            dnat_rules,
            &rules,
            generation,
            Some(&cur.table),
            &mut ids,
            &live_ids,
        )
        .map_err(|e| invalid_at("nat.dnat", e.to_string()))?;
        if req.dry_run || (changes.is_empty() && vacated == 0) {
            return Ok(PolicyOutcome {
                generation: cur.generation,
                applied: false,
                changes,
            });
        }
        if changes.is_empty() {
            // Nothing for the state file: it holds the desired state, not slot bookkeeping.
        } else if let Some(path) = &self.state_file {
            let (path, saved) = (
                path.clone(),
                Saved {
                    generation,
                    doc: doc.clone(),
                },
            );
            // fsync blocks: keep it off the runtime thread that serves the API.
            tokio::task::spawn_blocking(move || state_file::write(&path, &saved))
                .await
                .map_err(|e| PolicyError::Failed(format!("state file writer failed: {e}")))?
                .map_err(|e| PolicyError::Failed(format!("{e:#}; nothing was applied")))?;
        } else if cur.generation == 1 {
            warn!(
                "mgmt.state_file is not set: policy changes made through the API are lost at restart"
            );
        }
        let rules = Arc::new(rules);
        let table = Arc::new(table);
        let cuts = cuts(&cur.table, &table);
        let published = Arc::new(worker_policy(
            (seq, generation),
            &config,
            &rules,
            &table,
            self.wiring.outside_addr,
            self.wiring.outside_net,
        ));
        for (w, c) in self.wiring.controls.iter().enumerate() {
            // Cannot be full: every worker took the previous publication (checked above).
            if c.policy.push(Arc::clone(&published)).is_err() {
                warn!(
                    worker = w,
                    seq, "policy mailbox full; the worker gets this policy late"
                );
            }
        }
        if let Ok(mut st) = self.state.lock() {
            *st = State {
                generation,
                seq,
                doc,
                config,
                rules,
                table,
                ids,
            };
        }
        let summary: Vec<String> = changes.iter().map(describe).collect();
        info!(
            caller = %req.caller,
            generation,
            changes = %summary.join("; "),
            vacated_pool_slots = vacated,
            "translation policy applied"
        );
        let taken = self.wait_for_workers(seq, generation).await;
        if taken.is_ok() {
            for f in cuts {
                let backend = format!(
                    "{}:{}",
                    Ipv4Addr::from(f.inside_addr.unwrap_or(0)),
                    f.inside_port.unwrap_or(0)
                );
                let deleted = match broker.delete_matching(f) {
                    Ok(rx) => rx.await.unwrap_or(Ok(0)),
                    Err(e) => Err(e),
                };
                match deleted {
                    Ok(n) => info!(%backend, deleted = n, "cut the sessions of a removed backend"),
                    Err(e) => {
                        warn!(%backend, error = %e, "cannot cut a removed backend's sessions")
                    }
                }
            }
        } else if !cuts.is_empty() {
            warn!(
                generation,
                "removed backends were not cut: not every worker runs the new rules"
            );
        }
        taken.map(|()| PolicyOutcome {
            generation,
            applied: true,
            changes,
        })
    }

    /// Wait until every worker runs publication `seq`. A worker that refuses it, or does not take
    /// it in time, makes the change incomplete: it is in force (and saved) on the others.
    async fn wait_for_workers(&self, seq: u64, generation: u64) -> Result<(), PolicyError> {
        let deadline = Instant::now() + PUBLISH_WAIT;
        loop {
            let controls = &self.wiring.controls;
            if let Some(w) = controls
                .iter()
                .position(|c| c.policy_refused.load(Ordering::Acquire) == seq)
            {
                return Err(PolicyError::Incomplete(format!(
                    "generation {generation} is applied and saved, but worker {w} refused it and \
                     keeps the previous policy; this is a bug, please report it with the log"
                )));
            }
            if controls
                .iter()
                .all(|c| c.policy_seq.load(Ordering::Acquire) >= seq)
            {
                return Ok(());
            }
            // A worker that stopped before taking it never will.
            if let Some(stopped) = controls.iter().enumerate().find_map(|(w, c)| {
                (c.policy_seq.load(Ordering::Acquire) < seq)
                    .then(|| self.wiring.status.describe(w))
                    .flatten()
            }) {
                return Err(PolicyError::Incomplete(format!(
                    "generation {generation} is applied and saved, but {stopped} and will never \
                     run it; restart cgnatd (with mgmt.state_file set, it starts on this policy)"
                )));
            }
            if Instant::now() > deadline {
                return Err(PolicyError::Incomplete(format!(
                    "generation {generation} is applied and saved, but a worker has not taken it \
                     within {PUBLISH_WAIT:?}; it will at its next loop"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Free the slots of retired pools that have drained, without an operator change: their
    /// addresses become free for other pools, and ListPools stops showing them. Keeps the
    /// generation. Run periodically.
    pub async fn free_drained_pools(&self, broker: &SessionBroker) {
        let Ok(cur) = self.current() else {
            return;
        };
        let in_use = self.ports_in_use();
        let drained = cur.rules.pools.iter().any(|p| {
            p.retired
                && !p.addrs.is_empty()
                && p.addrs
                    .iter()
                    .all(|a| in_use.get(a).copied().unwrap_or(0) == 0)
        });
        if !drained {
            return;
        }
        let req = PolicyRequest {
            change: PolicyChange::Replace(cur.doc.value().clone()),
            expected_generation: Some(cur.generation),
            dry_run: false,
            caller: "cgnatd (freeing drained pools)".to_owned(),
        };
        if let Err(e) = self.apply(req, broker).await {
            // An operator's change got in first, or a worker lags: the next round retries.
            tracing::debug!(error = %e, "drained pools not freed this time");
        }
    }

    /// The workers' next rules: pools by slot. A pool kept by name stays in its slot (with the
    /// addresses it gained); a removed one retires; a retired one with no ports in use anywhere
    /// empties its slot; a new one takes the first empty slot or a new one. Returns the rules and
    /// how many slots were emptied.
    fn next_rules(&self, cur: &State, cfg: &Config) -> Result<(Rules, usize), PolicyError> {
        let want = rules_of(cfg).map_err(|e| invalid_at("pools", format!("{e:#}")))?;
        let in_use = self.ports_in_use();
        let drained = |p: &Pool| {
            p.addrs
                .iter()
                .all(|a| in_use.get(a).copied().unwrap_or(0) == 0)
        };
        let mut slots: Vec<Pool> = cur.rules.pools.clone();
        let mut slot_of = vec![usize::MAX; want.pools.len()];
        let mut vacated = 0;
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.addrs.is_empty() {
                continue;
            }
            let kept = want
                .pools
                .iter()
                .position(|p| p.name == slot.name && (!slot.retired || same_pool(p, slot)));
            match kept {
                Some(j) if slot_of[j] == usize::MAX => {
                    *slot = want.pools[j].clone();
                    slot_of[j] = i;
                }
                _ if slot.retired && drained(slot) => {
                    *slot = Pool {
                        retired: true,
                        ..Pool::new(String::new(), Vec::new(), 1, 1)
                    };
                    vacated += 1;
                }
                _ => slot.retired = true,
            }
        }
        for (j, p) in want.pools.iter().enumerate() {
            if slot_of[j] != usize::MAX {
                continue;
            }
            for &a in &p.addrs {
                if let Some(old) = slots.iter().find(|s| s.retired && s.addrs.contains(&a)) {
                    let field = format!("pools[{j}].addresses");
                    let ports: u64 = old
                        .addrs
                        .iter()
                        .map(|x| in_use.get(x).copied().unwrap_or(0))
                        .sum();
                    return Err(PolicyError::Precondition {
                        message: format!(
                            "{field}: {} still belongs to the removed pool {:?}, which is draining ({ports} port(s) in use by sessions \
                             or held down for nat.hold_down after their sessions ended); retry once it is empty, \
                             or delete its sessions first (cgnatctl sessions delete --outside {}) and wait out the hold-down",
                            Ipv4Addr::from(a),
                            old.name,
                            Ipv4Addr::from(a)
                        ),
                        field,
                    });
                }
            }
            let free = slots.iter().position(|s| s.retired && s.addrs.is_empty());
            let i = match free {
                Some(i) => {
                    slots[i] = p.clone();
                    i
                }
                None if slots.len() < MAX_SLOTS => {
                    slots.push(p.clone());
                    slots.len() - 1
                }
                None => {
                    return Err(invalid_at(
                        &format!("pools[{j}]"),
                        format!(
                            "no free pool slot: {MAX_SLOTS} pools are configured or still draining"
                        ),
                    ));
                }
            };
            slot_of[j] = i;
        }
        let snat = want
            .snat
            .iter()
            .map(|r| nat::SnatRule {
                pool: slot_of[r.pool],
                ..*r
            })
            .collect();
        let rules = Rules::with_exclusions(slots, snat, want.exclusions.clone())
            .map_err(|e| invalid_at("snat", e.to_string()))?;
        cur.rules
            .is_live_successor(&rules)
            .map_err(|e| invalid_at("pools", e.to_string()))?;
        nat::check_rules(
            &rules,
            self.wiring.workers,
            Some(self.wiring.block_capacity),
        )
        .map_err(|e| invalid_at("pools", e.to_string()))?;
        Ok((rules, vacated))
    }

    fn dnat_counts(&self, id: u32) -> BackendCounts {
        let mut c = BackendCounts::default();
        for w in &self.wiring.dnat_counters {
            c += w.read(id);
        }
        c
    }

    /// Every pool with its usage: the policy's in configuration order, then retired ones.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        let Ok(st) = self.current() else {
            return Vec::new();
        };
        let in_use = self.ports_in_use();
        let held = self.blocks_in_use();
        let own = u32::from(self.wiring.outside_addr);
        let snapshot = |p: &Pool| {
            let count = |m: &HashMap<u32, u64>, a: &u32| m.get(a).copied().unwrap_or(0);
            PoolSnapshot {
                name: p.name.clone(),
                ranges: ranges(&p.addrs),
                port_lo: p.port_lo,
                port_hi: p.port_hi,
                masquerade: p.addrs == [own],
                filtering: match p.filtering {
                    nat::Filtering::EndpointIndependent => "endpoint-independent",
                    nat::Filtering::AddressDependent => "address-dependent",
                    nat::Filtering::AddressAndPortDependent => "address-and-port-dependent",
                },
                allocation: match p.allocation {
                    nat::PortAllocation::Random => "random",
                    nat::PortAllocation::Preserve => "preserve",
                    nat::PortAllocation::Parity => "parity",
                    nat::PortAllocation::Blocks { .. } => "blocks",
                    nat::PortAllocation::Deterministic { .. } => "deterministic",
                },
                by_address: p
                    .addrs
                    .iter()
                    .map(|a| (Ipv4Addr::from(*a), count(&in_use, a)))
                    .collect(),
                blocks_by_address: p.addrs.iter().map(|a| count(&held, a)).collect(),
                retired: p.retired,
            }
        };
        // The policy's pools in its order (each is in its slot), then the retired ones draining.
        let active = st.config.pools.iter().filter_map(|c| {
            st.rules
                .pools
                .iter()
                .find(|p| !p.retired && p.name == c.name)
        });
        let retired = st
            .rules
            .pools
            .iter()
            .filter(|p| p.retired && !p.addrs.is_empty());
        active.chain(retired).map(snapshot).collect()
    }

    /// The destination NAT rules in force with their counters.
    pub fn dnat_snapshot(&self) -> DnatSnapshot {
        let Ok(st) = self.current() else {
            return DnatSnapshot::default();
        };
        let t = st.table;
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
                    snat_pool: r
                        .snat_pool
                        .and_then(|i| st.rules.pools.get(i).map(|p| p.name.clone())),
                    on_removal: match r.on_removal {
                        OnRemoval::Drain => "drain",
                        OnRemoval::Cut => "cut",
                    },
                    retired: e.retired,
                    backends: e
                        .backends
                        .iter()
                        .map(|b| {
                            let c = self.dnat_counts(b.id);
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

/// Whether a retired pool and a pool of the new policy are the same pool (it may come back).
fn same_pool(p: &Pool, retired: &Pool) -> bool {
    Pool {
        retired: true,
        ..p.clone()
    } == *retired
}

/// The destination NAT rules of `cfg` with `snat_pool` naming slots of `rules` instead of
/// configuration indexes.
fn remap_dnat(cfg: &Config, rules: &Rules) -> Vec<nat::DnatRule> {
    cfg.dnat
        .iter()
        .map(|r| nat::DnatRule {
            snat_pool: r.snat_pool.and_then(|i| {
                let name = &cfg.pools.get(i)?.name;
                rules
                    .pools
                    .iter()
                    .position(|p| !p.retired && &p.name == name)
            }),
            ..r.clone()
        })
        .collect()
}

/// Sorted addresses as inclusive ranges.
fn ranges(addrs: &[u32]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut sorted = addrs.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for a in sorted {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(a) => *hi = a,
            _ => out.push((a, a)),
        }
    }
    out.into_iter()
        .map(|(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi)))
        .collect()
}

/// One change for a log line.
pub fn describe(c: &Change) -> String {
    let kind = match c.kind {
        config::policy::ChangeKind::Added => "added",
        config::policy::ChangeKind::Removed => "removed",
        config::policy::ChangeKind::Modified => "modified",
    };
    if c.detail.is_empty() {
        format!("{kind} {}", c.path)
    } else {
        format!("{kind} {} ({})", c.path, c.detail)
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

/// Apply the configuration file's translation policy on SIGHUP, forever. The rest of the file must
/// be as it was (a restart takes everything else).
pub async fn reload_on_hangup(
    path: PathBuf,
    plane: Arc<PolicyPlane>,
    broker: Arc<SessionBroker>,
    hangup: Arc<AtomicBool>,
) -> Result<()> {
    // The flag is raised by the handler installed at start (a SIGHUP during start-up is applied
    // now, once); polled, as the termination flag is.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    loop {
        tick.tick().await;
        if !hangup.swap(false, Ordering::Relaxed) {
            continue;
        }
        info!(config = %path.display(), "SIGHUP: reloading the translation policy");
        let running = match plane.current() {
            Ok(s) => s.config,
            Err(e) => {
                warn!(error = %e, "reload refused, nothing changed");
                continue;
            }
        };
        let doc = match config::reload_policy_file(&running, &path) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "reload refused, nothing changed");
                continue;
            }
        };
        let req = PolicyRequest {
            change: PolicyChange::Replace(doc.value().clone()),
            expected_generation: None,
            dry_run: false,
            caller: "SIGHUP".to_owned(),
        };
        match plane.apply(req, &broker).await {
            Ok(o) if o.applied => info!(generation = o.generation, "translation policy reloaded"),
            Ok(o) => info!(
                generation = o.generation,
                "the file's translation policy is already in force"
            ),
            Err(e) => warn!(error = %e, "reload refused, nothing changed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::workers::WorkerStatus;
    use super::*;

    const LAB: &str = include_str!("../../../../config/lab.yaml");

    /// A policy plane over the lab configuration and two workers that exist only as their
    /// control blocks: the test plays the workers' part (taking a publication, or not).
    fn plane() -> (
        Arc<PolicyPlane>,
        Arc<SessionBroker>,
        Vec<Arc<Control>>,
        Arc<WorkerStatus>,
    ) {
        let cfg = Config::from_yaml_str(LAB).unwrap();
        let init = initial(LAB, &cfg).unwrap();
        let rules = Arc::new(rules_of(&init.config).unwrap());
        let table = initial_table(&init.config, &rules, init.generation).unwrap();
        let controls: Vec<Arc<Control>> = (0..2).map(|_| Arc::new(Control::new(4, 4))).collect();
        for c in &controls {
            c.policy_seq.store(FIRST_SEQ, Ordering::Release);
        }
        let status = Arc::new(WorkerStatus::new([1, 2]));
        let outside = cfg.outside_port();
        let wiring = Wiring {
            controls: controls.clone(),
            dnat_counters: (0..2).map(|_| Arc::new(DnatCounters::default())).collect(),
            counters: (0..2).map(|_| Arc::new(Counters::default())).collect(),
            outside_addr: outside.address,
            outside_net: outside.prefix,
            workers: 2,
            block_capacity: 0,
            status: status.clone(),
        };
        let plane = Arc::new(PolicyPlane::new(init, rules, table, LAB.to_owned(), wiring));
        let broker = Arc::new(SessionBroker::new(controls.clone(), status.clone()));
        (plane, broker, controls, status)
    }

    fn add_pool(name: &str, addr: &str) -> PolicyRequest {
        PolicyRequest {
            change: PolicyChange::Edit(config::policy::Edit::Add {
                section: config::policy::Section::Pools,
                item: serde_yaml::from_str(&format!("{{name: {name}, addresses: [{addr}]}}"))
                    .unwrap(),
                position: None,
            }),
            expected_generation: None,
            dry_run: false,
            caller: "test".to_owned(),
        }
    }

    /// A worker that stops while a change waits for it: the change ends at once (not after the
    /// publication timeout), saying it is saved but that worker will never run it; the next
    /// change is refused with nothing applied.
    #[tokio::test]
    async fn a_change_waiting_for_a_worker_that_stops_ends_at_once() {
        let (plane, broker, controls, status) = plane();
        let apply = {
            let (plane, broker) = (plane.clone(), broker.clone());
            tokio::spawn(async move {
                plane
                    .apply(add_pool("extra", "198.51.100.9"), &broker)
                    .await
            })
        };
        // Worker 0 takes the publication; worker 1 never will.
        let published = loop {
            if let Some(p) = controls[0].policy.pop() {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        controls[0]
            .policy_seq
            .store(published.seq, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!apply.is_finished(), "the change waits for worker 1");
        let t = Instant::now();
        status.mark_failed(1, "panicked".to_owned());
        let err = apply.await.unwrap().unwrap_err();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?} after the worker stopped",
            t.elapsed()
        );
        match &err {
            PolicyError::Incomplete(m) => assert!(
                m.contains("worker 1 (lcore 2) has stopped (panicked)")
                    && m.contains("will never run it"),
                "{m}"
            ),
            e => panic!("not Incomplete: {e:?}"),
        }
        // The change is in force on worker 0 and on record.
        assert_eq!(plane.generation(), 2);
        // From now on nothing is applied; a dry run is still answered.
        let refused = plane
            .apply(add_pool("more", "198.51.100.10"), &broker)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, PolicyError::Failed(m) if m.contains("nothing was applied")),
            "{refused:?}"
        );
        assert_eq!(plane.generation(), 2);
        let mut dry = add_pool("more", "198.51.100.10");
        dry.dry_run = true;
        let answer = plane.apply(dry, &broker).await.unwrap();
        assert!(!answer.applied && !answer.changes.is_empty(), "{answer:?}");
        assert_eq!(plane.generation(), 2);
    }
}
