//! Bringing the data plane up from a validated config, and down again.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use config::{Config, PortCfg, Role};
use dataplane::handoff::{self, Links};
use dataplane::route::{Prefix, RouteTable};
use dataplane::{Control, EventQueue, PortSetup, Worker, WorkerConfig};
use dpdk::lcore::{self, LcoreId};
use dpdk::{Mempool, Port, PortConfig, PortId};
use nat::{Counters, Pool, Rules, Shard, ShardConfig, SnatRule, Timeouts};
use tracing::{error, info, warn};
use wire::EthernetAddress;

use super::workers::WorkerStatus;

/// ICMP errors (time exceeded) each worker may originate per second.
const ICMP_ERRORS_PER_S: u64 = 1000;

/// A configured port with the config it came from.
pub struct RunningPort {
    pub cfg: PortCfg,
    /// Shared with the management backend, which reads link state and NIC counters.
    pub port: Arc<Port>,
    /// How the port's packets reach their owner, as `ListPorts` reports it.
    pub steering: mgmt::SteeringSnapshot,
}

/// A running data plane.
pub struct DataPlane {
    pub ports: Vec<RunningPort>,
    /// rte_flow rules steering flows to their owner's queue, where the NIC supports them.
    steering: Vec<dpdk::flow::Steering>,
    pub workers: Vec<(LcoreId, Arc<Counters>)>,
    /// Per worker (index, queue): the NAT events the control plane logs.
    pub events: Vec<(usize, Arc<EventQueue>)>,
    /// Per worker, in worker order: the session command and reply queues.
    pub controls: Vec<Arc<Control>>,
    /// Per worker, in worker order: destination NAT counters by backend.
    pub dnat_counters: Vec<Arc<nat::DnatCounters>>,
    /// The destination NAT table the workers start with (taken by the daemon's policy plane).
    pub dnat: Option<(Arc<nat::DnatTable>, nat::DnatIds)>,
    pub rules: Arc<Rules>,
    /// Port blocks a subscriber record holds, fixed when the shards were built.
    pub block_capacity: u16,
    /// Which workers are still in their loops (see [`super::workers`]).
    pub status: Arc<WorkerStatus>,
    pool: Option<Arc<Mempool>>,
}

impl DataPlane {
    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.workers.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Whether any worker is still in its loop (after the stop flag, until it has returned).
    pub fn workers_running(&self) -> bool {
        self.workers.iter().any(|(l, _)| lcore::is_busy(*l))
    }

    /// The return code of worker `w` if it has left its loop, `None` while it runs.
    pub fn worker_ended(&self, w: usize) -> Option<i32> {
        let (l, _) = self.workers.get(w)?;
        (!lcore::is_busy(*l)).then(|| lcore::wait(*l))
    }

    /// Wait for the workers (the caller has raised the stop flag), stop and close the ports, free the
    /// mbuf pool. Returns a one-line summary of the final counters.
    pub fn shutdown(mut self) -> String {
        for (w, (lcore, _)) in self.workers.iter().enumerate() {
            let rc = lcore::wait(*lcore);
            // One the watchdog found stopped has been reported already; one that failed on its
            // way out (or in the tick the daemon stopped) is recorded here, for the exit status.
            if rc != 0 && self.status.mark_failed(w, super::workers::reason(rc)) {
                error!(%lcore, rc, reason = %super::workers::reason(rc), "worker ended abnormally");
            }
        }
        let summary = super::backend::summary_line(&self.counters());
        // Rules go before their ports.
        self.steering.clear();
        for p in self.ports.drain(..) {
            if let Err(e) = p.port.stop() {
                warn!(port = %p.cfg.name, error = %e, "port stop failed");
            }
            match Arc::try_unwrap(p.port) {
                Ok(port) => {
                    if let Err(e) = port.close() {
                        warn!(port = %p.cfg.name, error = %e, "port close failed");
                    }
                }
                Err(_) => warn!(port = %p.cfg.name, "port still referenced; left stopped but open"),
            }
        }
        // Dropped last: the workers have returned (dropping their handles) and the closed ports have
        // released their descriptors, so this is the last reference and every mbuf is home.
        drop(self.pool.take());
        summary
    }
}

/// Ask the NICs to deliver each flow to the queue of the worker that owns it: inside by the
/// subscriber address bits, outside by the outside port-block bits. Where a device cannot (no
/// rte_flow, or a worker count that is not a power of two), the software handoff does the job.
/// Each port records which it is, for `cgnatctl ports`.
fn steer(
    ports: &mut [RunningPort],
    inside: usize,
    outside: usize,
    workers: u16,
) -> Vec<dpdk::flow::Steering> {
    use dpdk::flow::Steering;
    let shift = nat::BLOCK_PORTS.trailing_zeros();
    let attempts = [
        (inside, Steering::inside(&ports[inside].port, workers)),
        (
            outside,
            Steering::outside(&ports[outside].port, workers, shift),
        ),
    ];
    let mut installed = Vec::new();
    for (idx, res) in attempts {
        let port = &mut ports[idx];
        let name = &port.cfg.name;
        match res {
            Ok(s) => {
                info!(port = %name, rules = s.rules.len(), "rte_flow steering installed: flows reach their owner directly");
                port.steering = mgmt::SteeringSnapshot::RteFlow {
                    rules: u32::try_from(s.rules.len()).unwrap_or(u32::MAX),
                };
                installed.push(s);
            }
            Err(e) => {
                info!(port = %name, reason = %e, "rte_flow steering unavailable; flows reach their owner by software handoff");
                port.steering = mgmt::SteeringSnapshot::Handoff {
                    reason: e.to_string(),
                };
            }
        }
    }
    installed
}

fn prefix(net: config::Ipv4Net) -> nat::Prefix {
    nat::Prefix::new(u32::from(net.network()), net.len)
}

/// Translation rules in the NAT core's terms. Besides the config's own validation, the NAT core
/// checks what depends on its layout (deterministic pools large enough for their prefix, port blocks
/// fitting the range), naming the pool or rule at fault.
pub fn nat_rules(cfg: &Config) -> Result<Rules> {
    let pools = cfg
        .pools
        .iter()
        .map(|p| Pool {
            filtering: match p.filtering {
                config::Filtering::EndpointIndependent => nat::Filtering::EndpointIndependent,
                config::Filtering::AddressDependent => nat::Filtering::AddressDependent,
                config::Filtering::AddressAndPortDependent => {
                    nat::Filtering::AddressAndPortDependent
                }
            },
            allocation: match p.allocation {
                config::Allocation::Random => nat::PortAllocation::Random,
                config::Allocation::Preserve => nat::PortAllocation::Preserve,
                config::Allocation::Parity => nat::PortAllocation::Parity,
                config::Allocation::Blocks {
                    block_size,
                    max_blocks,
                } => nat::PortAllocation::Blocks {
                    size: block_size,
                    max_blocks,
                },
                config::Allocation::Deterministic {
                    inside,
                    ports_per_subscriber,
                } => nat::PortAllocation::Deterministic {
                    inside: prefix(inside),
                    ports_per_subscriber,
                },
            },
            ..Pool::new(
                p.name.clone(),
                p.addresses().map(u32::from).collect(),
                p.port_lo,
                p.port_hi,
            )
        })
        .collect();
    let snat = cfg
        .snat
        .iter()
        .map(|r| SnatRule {
            prefix: u32::from(r.prefix.network()),
            len: r.prefix.len,
            pool: r.pool,
            dst: r.destination.map(prefix),
        })
        .collect();
    let exclusions = cfg
        .exclusions
        .iter()
        .map(|e| nat::Exclusion {
            dst: prefix(e.destination),
            src: e.source.map(prefix),
        })
        .collect();
    Rules::with_exclusions(pools, snat, exclusions).context("invalid translation rules")
}

/// The per-worker NAT settings of the config.
pub fn shard_config(cfg: &Config, worker: u16, workers: u16, seed: u64) -> ShardConfig {
    let p = policy_params(cfg);
    ShardConfig {
        max_sessions: cfg.nat.max_sessions,
        max_mappings: cfg.nat.max_mappings,
        max_subscribers: cfg.nat.max_subscribers,
        timeouts: p.timeouts,
        worker,
        workers,
        seed,
        limits: p.limits,
        hold_down_s: p.hold_down_s,
        udp_inbound_refresh: p.udp_inbound_refresh,
        event_ring: cfg.nat.event_ring,
        ..ShardConfig::default()
    }
}

/// The settings of the config a policy change may replace on running shards.
pub fn policy_params(cfg: &Config) -> nat::PolicyParams {
    let t = cfg.nat.timeouts;
    let secs = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    nat::PolicyParams {
        timeouts: Timeouts {
            tcp_established: secs(t.tcp_established),
            tcp_transitory: secs(t.tcp_transitory),
            udp: secs(t.udp),
            icmp: secs(t.icmp),
        },
        limits: nat::Limits {
            max_sessions_per_subscriber: cfg.nat.limits.max_sessions_per_subscriber,
            max_ports_per_subscriber: cfg.nat.limits.max_ports_per_subscriber,
        },
        hold_down_s: secs(cfg.nat.hold_down),
        udp_inbound_refresh: cfg.nat.udp_inbound_refresh,
    }
}

fn route_table(p: &PortCfg) -> RouteTable {
    let statics: Vec<(Prefix, std::net::Ipv4Addr)> = p
        .routes
        .iter()
        .map(|r| (Prefix::new(r.prefix.network(), r.prefix.len), r.via))
        .collect();
    RouteTable::new(Prefix::new(p.address, p.prefix.len), p.gateway, &statics)
}

/// Enough mbufs for every RX and TX ring, the per-lcore caches and what workers hold in flight.
fn pool_size(cfg: &Config, workers: u32) -> u32 {
    let w = u64::from(workers);
    let rings: u64 = cfg
        .ports
        .iter()
        .map(|p| u64::from(p.rx_desc) + u64::from(p.tx_desc))
        .sum::<u64>()
        * w;
    // Bursts, frames held for ARP (64 per port) and out-of-order fragments (per side).
    let in_flight =
        w * (4 * dpdk::BURST as u64 + 2 * 64 + 2 * u64::from(cfg.nat.fragments.max_held));
    // Every handoff ring full, with each worker's burst per peer: a worker that falls behind
    // holds that many in its incoming rings, and they must not starve the RX refill of every
    // other queue.
    let handoff = if workers > 1 {
        w * (w - 1) * (u64::from(cfg.dataplane.handoff_ring) + dpdk::BURST as u64)
    } else {
        0
    };
    let caches = (w + 1) * 256;
    let n = (rings + in_flight + handoff + caches + 1024).next_power_of_two() - 1;
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub fn start(cfg: &Config, generation: u64, stop: Arc<AtomicBool>) -> Result<DataPlane> {
    if !cfg.nat.timeouts.rfc_minimums {
        warn!(
            "nat.timeouts.enforce_rfc_minimums is false: timeouts below the RFC 4787/5382/5508 floors \
             break long-idle applications; use this only in a lab"
        );
    }
    let lcores: Vec<LcoreId> = cfg.worker_lcores().into_iter().map(LcoreId).collect();
    let n_workers = lcores.len() as u16;
    if n_workers == 0 {
        bail!("no worker lcore: eal.lcores must list at least one lcore besides the main lcore");
    }
    for l in &lcores {
        if !l.is_enabled() || *l == lcore::main() {
            bail!(
                "workers: lcore {} is not an enabled worker lcore (enabled workers: {:?})",
                l.0,
                lcore::workers()
            );
        }
    }

    let max_mtu = cfg.ports.iter().map(|p| p.mtu).max().unwrap_or(1500);
    let data_room = (u32::from(max_mtu) + 14 + 4 + u32::from(dpdk::HEADROOM))
        .max(u32::from(dpdk::DEFAULT_DATA_ROOM));
    let data_room = u16::try_from(data_room).context("MTU too large for a single-segment mbuf")?;
    let n = pool_size(cfg, u32::from(n_workers));
    let pool = Mempool::new_pktmbuf("cgnat_mbufs", n, 256, data_room, dpdk::SOCKET_ID_ANY)
        .context("cannot create the mbuf pool")?;
    info!(mbufs = n, data_room, "mbuf pool created");

    let mut ports = Vec::new();
    for pc in &cfg.ports {
        let name = pc.device.port_name();
        let id = PortId::by_name(name).with_context(|| format!("port {:?}: DPDK has no device {name:?} (check the PCI address is bound to vfio-pci, or the vdev spec)", pc.name))?;
        let conf = PortConfig {
            rx_queues: n_workers,
            tx_queues: n_workers,
            rx_desc: pc.rx_desc,
            tx_desc: pc.tx_desc,
            mtu: Some(pc.mtu),
            promiscuous: pc.promiscuous,
            rss: n_workers > 1,
        };
        let port = Port::configure(id, &conf, &pool)
            .with_context(|| format!("port {:?} ({name}): configuration failed", pc.name))?;
        port.start()
            .with_context(|| format!("port {:?} ({name}): start failed", pc.name))?;
        let mac = EthernetAddress(port.mac_addr());
        let link = port.link();
        info!(port = %pc.name, role = %pc.role, id = id.0, driver = %port.driver_name(), %mac, address = %pc.address, link_up = link.up, speed_mbps = link.speed_mbps, "port started");
        ports.push(RunningPort {
            cfg: pc.clone(),
            port: Arc::new(port),
            steering: mgmt::SteeringSnapshot::SingleWorker,
        });
    }
    let (Some(inside), Some(outside)) = (
        ports.iter().position(|p| p.cfg.role == Role::Inside),
        ports.iter().position(|p| p.cfg.role == Role::Outside),
    ) else {
        bail!("the config needs one inside and one outside port");
    };

    let rules = Arc::new(nat_rules(cfg)?);
    let dnat = super::policy::initial_table(cfg, &rules, generation)?;
    // What the workers start with, exactly as a later policy change would publish it.
    let policy = super::policy::worker_policy(
        (super::policy::FIRST_SEQ, generation),
        cfg,
        &rules,
        &dnat.0,
        ports[outside].cfg.address,
        ports[outside].cfg.prefix,
    );
    let block_capacity = rules
        .pools
        .iter()
        .filter_map(|p| match p.allocation {
            nat::PortAllocation::Blocks { max_blocks, .. } => Some(max_blocks),
            _ => None,
        })
        .max()
        .unwrap_or(0);

    // Flows are owned by one worker each; frames that arrive elsewhere travel over these rings.
    let mut links: Vec<Links> = if n_workers > 1 {
        handoff::mesh(usize::from(n_workers), cfg.dataplane.handoff_ring)
            .context("cannot create the handoff rings")?
    } else {
        vec![Links::none()]
    };
    if let Some(p) = cfg.dataplane.inject_panic {
        warn!(
            worker = p.worker,
            after = ?p.after,
            "dataplane.inject_panic is set: this worker will panic on purpose (a testing aid, \
             never for production)"
        );
    }
    let seeds = RandomState::new();
    let mut workers = Vec::new();
    let mut dp = DataPlane {
        ports: Vec::new(),
        steering: Vec::new(),
        workers: Vec::new(),
        events: Vec::new(),
        controls: Vec::new(),
        dnat_counters: Vec::new(),
        dnat: None,
        rules: rules.clone(),
        block_capacity,
        status: Arc::new(WorkerStatus::new(lcores.iter().map(|l| l.0))),
        pool: None,
    };
    if n_workers > 1 {
        dp.steering = steer(&mut ports, inside, outside, n_workers);
    }
    for (i, lc) in lcores.iter().enumerate() {
        let q = i as u16;
        let setup = |idx: usize, proxy: Vec<u32>| -> Result<PortSetup> {
            let rp = &ports[idx];
            Ok(PortSetup {
                rx: rp
                    .port
                    .rx_queue(q)
                    .with_context(|| format!("port {:?}: rx queue {q}", rp.cfg.name))?,
                tx: rp
                    .port
                    .tx_queue(q)
                    .with_context(|| format!("port {:?}: tx queue {q}", rp.cfg.name))?,
                mac: EthernetAddress(rp.port.mac_addr()),
                addr: rp.cfg.address,
                mtu: rp.cfg.mtu,
                routes: route_table(&rp.cfg),
                proxy_arp: proxy,
                static_neighbours: rp
                    .cfg
                    .neighbours
                    .iter()
                    .map(|n| (n.ip, EthernetAddress(n.mac)))
                    .collect(),
            })
        };
        // Events leave the worker through a queue as large as its ring, to be logged and to reach
        // session watchers.
        let events = (cfg.nat.event_ring > 0)
            .then(|| Arc::new(EventQueue::new(cfg.nat.event_ring as usize)));
        if let Some(q) = &events {
            dp.events.push((i, q.clone()));
        }
        let control = Arc::new(Control::new(
            super::sessions::COMMAND_QUEUE,
            super::sessions::REPLY_QUEUE,
        ));
        dp.controls.push(control.clone());
        let wcfg = WorkerConfig {
            events,
            control: Some(control.clone()),
            inside: setup(inside, Vec::new())?,
            outside: setup(outside, policy.outside_proxy_arp.clone())?,
            neighbour_reachable_s: cfg.neighbour.reachable_time.as_secs(),
            neighbour_retransmit_ms: cfg.neighbour.retransmit.as_millis() as u64,
            icmp_errors_per_s: ICMP_ERRORS_PER_S,
            refusal_icmp: policy.refusal_icmp,
            worker: i,
            workers: usize::from(n_workers),
            links: std::mem::replace(&mut links[i], Links::none()),
            idle_sleep: cfg.dataplane.idle_sleep,
            idle_polls: cfg.dataplane.idle_polls,
            // Packets to the outside address go to the translator too when it is a pool address or
            // a destination NAT rule forwards ports of it (NodePort style).
            masquerade: policy.masquerade,
            panic_after: cfg
                .dataplane
                .inject_panic
                .filter(|p| usize::from(p.worker) == i)
                .map(|p| p.after),
            fragments: nat::FragConfig {
                max_datagrams: cfg.nat.fragments.max_datagrams,
                max_held: cfg.nat.fragments.max_held,
                timeout_ms: u32::try_from(cfg.nat.fragments.timeout.as_millis())
                    .unwrap_or(u32::MAX),
            },
        };
        let counters = Arc::new(Counters::default());
        let shard_cfg = shard_config(cfg, q, n_workers, seeds.hash_one(i));
        // Transparent huge pages for the slab and index when the kernel grants them (THP 'madvise'
        // or 'always'); with hugetlbfs-only setups they stay on 4 KiB pages.
        let mut shard = Shard::with_memory_advice(
            shard_cfg,
            rules.clone(),
            counters.clone(),
            0,
            Some(dpdk::advise_hugepages),
        )
        .context("cannot build the session table")?;
        shard.set_dnat(dnat.0.clone());
        control
            .policy_seq
            .store(policy.seq, std::sync::atomic::Ordering::Release);
        dp.dnat_counters.push(shard.dnat_counters().clone());
        let (slab, index, portmaps) = shard.memory_bytes();
        info!(
            worker = i,
            lcore = lc.0,
            max_sessions = cfg.nat.max_sessions,
            slab_mib = slab >> 20,
            index_mib = index >> 20,
            portmaps_kib = portmaps >> 10,
            // How late past its idle timeout a session may end (one sweep pass).
            expiry_lag_s = shard.expiry_lag_seconds(),
            "session table allocated"
        );
        workers.push((*lc, counters, wcfg, shard));
    }
    let pool = Arc::new(pool);
    dp.dnat = Some(dnat);
    dp.ports = ports;
    dp.pool = Some(pool.clone());
    for (lc, counters, wcfg, shard) in workers {
        let worker = Worker::new(wcfg, shard, pool.clone(), stop.clone());
        let launched = lcore::launch(lc, move || {
            let shard = worker.run();
            tracing::info!(
                lcore = lc.0,
                sessions = shard.session_count(),
                "worker stopped"
            );
            0
        });
        if let Err(e) = launched {
            // Stop the workers already running before reporting, so shutdown is clean.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            dp.shutdown();
            return Err(e).with_context(|| format!("cannot launch the worker on lcore {}", lc.0));
        }
        info!(lcore = lc.0, "worker launched");
        dp.workers.push((lc, counters));
    }
    Ok(dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mbuf_pool_covers_every_descriptor_and_every_handoff_ring_full() {
        let cfg = Config::from_yaml_str(include_str!("../../../../config/lab-2workers.yaml"))
            .expect("lab-2workers.yaml");
        for (workers, ring) in [(1u32, 1024u32), (2, 1024), (8, 1024), (4, 16384)] {
            let mut c = cfg.clone();
            c.dataplane.handoff_ring = ring;
            let descriptors: u32 = c
                .ports
                .iter()
                .map(|p| u32::from(p.rx_desc) + u32::from(p.tx_desc))
                .sum::<u32>()
                * workers;
            let rings = workers * (workers - 1) * ring;
            assert!(
                pool_size(&c, workers) >= descriptors + rings,
                "{workers} workers, rings of {ring}: pool {} < {descriptors} descriptors + {rings} in rings",
                pool_size(&c, workers)
            );
        }
    }
}
