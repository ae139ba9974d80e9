//! The management API's view of the running daemon.

use std::sync::Arc;
use std::time::SystemTime;

use config::{Device, Role};
use mgmt::{
    Backend, BackendError, InfoSnapshot, PoolSnapshot, PortCountersSnapshot, PortRole,
    PortSnapshot, SessionDeletion, SessionEventSnapshot, SessionListing, SessionQuery,
    SessionWatch, StatsSnapshot, SteeringSnapshot, WorkerStatsSnapshot,
};
use nat::{Counter, Counters, DropReason};
use tokio::sync::broadcast;

/// Session events buffered for each watcher.
const WATCH_BUFFER: usize = 8192;

use super::sessions::SessionBroker;
use super::setup::DataPlane;
use super::workers::WorkerStatus;

struct PortInfo {
    name: String,
    role: PortRole,
    device: String,
    address: String,
    port: dpdk::PortId,
    driver: String,
    mac: [u8; 6],
    steering: SteeringSnapshot,
}

pub struct DaemonBackend {
    started_at: SystemTime,
    dpdk_version: String,
    workers: Vec<(u32, Arc<Counters>)>,
    ports: Vec<PortInfo>,
    /// Port handles for link state and NIC counters (read-only DPDK calls, safe from any thread).
    handles: Vec<Arc<dpdk::Port>>,
    pub sessions: Arc<SessionBroker>,
    /// Session events for `WatchSessions` (the event router sends, each watcher subscribes).
    pub session_events: broadcast::Sender<SessionEventSnapshot>,
    policy: Arc<super::policy::PolicyPlane>,
    status: Arc<WorkerStatus>,
    /// Whether the workers record session events at all (`nat.event_ring` above 0).
    records_events: bool,
}

impl DaemonBackend {
    pub fn new(
        dp: &DataPlane,
        started_at: SystemTime,
        policy: Arc<super::policy::PolicyPlane>,
    ) -> DaemonBackend {
        let ports = dp
            .ports
            .iter()
            .map(|p| PortInfo {
                name: p.cfg.name.clone(),
                role: match p.cfg.role {
                    Role::Inside => PortRole::Inside,
                    Role::Outside => PortRole::Outside,
                },
                device: match &p.cfg.device {
                    Device::Vdev { spec } => spec.clone(),
                    Device::Pci { addr } => addr.clone(),
                },
                address: format!("{}/{}", p.cfg.address, p.cfg.prefix.len),
                port: p.port.id(),
                driver: p.port.driver_name(),
                mac: p.port.mac_addr(),
                steering: p.steering.clone(),
            })
            .collect();
        DaemonBackend {
            policy,
            started_at,
            dpdk_version: dpdk::version(),
            workers: dp.workers.iter().map(|(l, c)| (l.0, c.clone())).collect(),
            ports,
            handles: dp.ports.iter().map(|p| p.port.clone()).collect(),
            sessions: Arc::new(SessionBroker::new(dp.controls.clone(), dp.status.clone())),
            status: dp.status.clone(),
            records_events: !dp.events.is_empty(),
            // A watcher that falls this far behind is told how many events it missed.
            session_events: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

impl Backend for DaemonBackend {
    fn info(&self) -> InfoSnapshot {
        InfoSnapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            workers: self.workers.len() as u32,
            generation: self.policy.generation(),
            dpdk_version: self.dpdk_version.clone(),
        }
    }

    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot {
            workers: self
                .workers
                .iter()
                .enumerate()
                .map(|(i, (lcore, c))| WorkerStatsSnapshot {
                    worker: i as u32,
                    lcore: *lcore,
                    counters: c.snapshot_counters(),
                    drops: c.snapshot_drops(),
                    ports_by_address: c
                        .ports_by_address()
                        .into_iter()
                        .map(|(a, n)| (std::net::Ipv4Addr::from(a).to_string(), n))
                        .collect(),
                    failed: self.status.failure(i).map(str::to_owned),
                })
                .collect(),
            snat_rules: self.policy.snat_rule_stats(),
        }
    }

    fn list_sessions(&self, query: SessionQuery) -> Result<SessionListing, BackendError> {
        self.sessions.list(&query)
    }

    fn delete_sessions(&self, query: SessionQuery) -> Result<SessionDeletion, BackendError> {
        self.sessions.delete(&query)
    }

    fn watch_sessions(&self) -> Result<SessionWatch, BackendError> {
        if !self.records_events {
            return Err(BackendError::EventsDisabled);
        }
        // Subscribe to failures first: a worker stopping between the check and the subscription
        // is then still seen by the stream.
        let failure = self.status.subscribe();
        if let Some(e) = self.status.first_error() {
            return Err(e);
        }
        Ok(SessionWatch {
            events: self.session_events.subscribe(),
            failure,
        })
    }

    fn dnat(&self) -> mgmt::DnatSnapshot {
        self.policy.dnat_snapshot()
    }

    fn pools(&self) -> Vec<PoolSnapshot> {
        self.policy.pools()
    }

    fn policy(&self) -> mgmt::PolicySnapshot {
        self.policy.snapshot()
    }

    fn change_policy(&self, request: mgmt::PolicyRequest) -> mgmt::PolicyFuture {
        let plane = Arc::clone(&self.policy);
        let broker = Arc::clone(&self.sessions);
        // Its own task: a client that goes away (or times out) must not cancel a change half way,
        // after it is saved and published but before it is logged and its cuts are made.
        Box::pin(async move {
            tokio::spawn(async move { plane.apply(request, &broker).await })
                .await
                .unwrap_or_else(|e| {
                    Err(mgmt::PolicyError::Failed(format!(
                        "policy task failed: {e}"
                    )))
                })
        })
    }

    fn ports(&self) -> Vec<PortSnapshot> {
        self.ports
            .iter()
            .zip(&self.handles)
            .map(|(p, h)| {
                let link = h.link();
                let s = h.stats();
                PortSnapshot {
                    name: p.name.clone(),
                    role: p.role,
                    port_id: p.port.0,
                    device: p.device.clone(),
                    driver: p.driver.clone(),
                    mac: p.mac,
                    address: p.address.clone(),
                    link_up: link.up,
                    speed_mbps: link.speed_mbps,
                    counters: PortCountersSnapshot {
                        rx_packets: s.ipackets,
                        tx_packets: s.opackets,
                        rx_bytes: s.ibytes,
                        tx_bytes: s.obytes,
                        rx_missed: s.imissed,
                        rx_errors: s.ierrors,
                        tx_errors: s.oerrors,
                        rx_nombuf: s.rx_nombuf,
                    },
                    steering: p.steering.clone(),
                }
            })
            .collect()
    }
}

/// One log line with the headline counters summed over workers, and the non-zero drops.
pub fn summary_line(workers: &[Arc<Counters>]) -> String {
    let sum = |c: Counter| workers.iter().map(|w| w.get(c)).sum::<u64>();
    let mut line = format!(
        "rx={} tx={} in2out={} out2in={} sessions={} created={} ports_in_use={}",
        sum(Counter::RxPackets),
        sum(Counter::TxPackets),
        sum(Counter::In2outPackets),
        sum(Counter::Out2inPackets),
        sum(Counter::SessionsCurrent),
        sum(Counter::SessionsCreated),
        sum(Counter::PortsInUse),
    );
    for r in DropReason::ALL {
        let n: u64 = workers.iter().map(|w| w.drops(r)).sum();
        if n > 0 {
            line.push_str(&format!(" drop.{}={n}", r.name()));
        }
    }
    line
}
