//! The read interface between the management server and the daemon.
//!
//! The server never sees data-plane types: the daemon implements [`Backend`]
//! by reading its per-core counters and port state into these plain structs,
//! and the server turns them into protobuf messages. This keeps `mgmt` free of
//! DPDK and lets it be tested with a fake backend.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// Source of everything the management API reports.
///
/// Methods are called from async request handlers on the management runtime,
/// so they must be quick and must not block: read counters with relaxed loads,
/// do not wait on the workers. Each call returns a fresh snapshot.
pub trait Backend: Send + Sync + 'static {
    /// Facts about the running daemon.
    fn info(&self) -> InfoSnapshot;
    /// Current counters of every worker, ordered by worker index.
    fn stats(&self) -> StatsSnapshot;
    /// Every port the daemon drives, ordered by DPDK port id.
    fn ports(&self) -> Vec<PortSnapshot>;
    /// Every pool, in configuration order, with its usage.
    fn pools(&self) -> Vec<PoolSnapshot>;
    /// Start listing the sessions matching `query` on every worker. The sessions arrive on the
    /// receiver, which closes when every worker has finished its walk. A listing that cannot
    /// finish (a worker stopped during it) ends with an error item instead, so a client never
    /// takes a partial listing for a whole one.
    fn list_sessions(&self, query: SessionQuery) -> Result<SessionListing, BackendError>;
    /// Start deleting the sessions matching `query` on every worker; the receiver gets how many,
    /// or why not every worker could answer.
    fn delete_sessions(&self, query: SessionQuery) -> Result<SessionDeletion, BackendError>;
    /// Session events from now on. Workers record them while at least one receiver exists.
    /// Refused when the workers record no events at all (`nat.event_ring: 0`), and when a worker
    /// has stopped (its sessions' events could no longer come).
    fn watch_sessions(&self) -> Result<SessionWatch, BackendError>;
    /// The destination NAT rules in force with their per-backend counters (summed over workers).
    fn dnat(&self) -> DnatSnapshot;
    /// The translation policy in force (the desired state) and its generation.
    fn policy(&self) -> PolicySnapshot;
    /// Validate a policy change and, unless it is a dry run, put it in force on every worker.
    /// The future resolves once the workers run it (or with why nothing changed).
    fn change_policy(&self, request: PolicyRequest) -> PolicyFuture;
}

/// A policy document or change the config crate refused: `Invalid`, naming the first field.
impl From<config::ConfigError> for PolicyError {
    fn from(e: config::ConfigError) -> Self {
        let field = match &e {
            config::ConfigError::Invalid { errors } => {
                errors.first().map(|f| f.path.clone()).unwrap_or_default()
            }
            config::ConfigError::Yaml { field, .. } => field.clone(),
            _ => String::new(),
        };
        PolicyError::Invalid {
            field,
            message: e.to_string(),
        }
    }
}

/// A fine-grained edit that does not fit the document in force.
impl From<config::policy::EditError> for PolicyError {
    fn from(e: config::policy::EditError) -> Self {
        use config::policy::EditError;
        match e {
            EditError::NotFound { path } => PolicyError::NotFound(path),
            EditError::AlreadyExists { path } => PolicyError::AlreadyExists(path),
            EditError::Invalid { path, message } => PolicyError::Invalid {
                message: format!("{path}: {message}"),
                field: path,
            },
        }
    }
}

/// What [`Backend::change_policy`] returns.
pub type PolicyFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<PolicyOutcome, PolicyError>> + Send + 'static>,
>;

/// The translation policy for `GetPolicy`: the document as last applied (the YAML keys of the
/// config file's translation sections), with the generation that put it in force.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySnapshot {
    pub generation: u64,
    pub document: serde_yaml::Value,
}

/// A requested policy change.
#[derive(Debug, Clone)]
pub struct PolicyRequest {
    pub change: PolicyChange,
    /// Refuse unless this is the generation in force (optimistic concurrency); `None` skips the check.
    pub expected_generation: Option<u64>,
    /// Validate and report the changes without applying anything.
    pub dry_run: bool,
    /// Who asks, for the log: the access level and the peer address.
    pub caller: String,
}

/// The change itself.
#[derive(Debug, Clone)]
pub enum PolicyChange {
    /// Replace the whole policy with this document.
    Replace(serde_yaml::Value),
    /// Add, update or delete one pool or rule of the policy in force.
    Edit(config::policy::Edit),
}

/// What a policy change did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// The generation in force after the call.
    pub generation: u64,
    /// False for dry runs and for requests that change nothing.
    pub applied: bool,
    pub changes: Vec<config::policy::Change>,
}

/// Why a policy change was refused (nothing was applied), or did not complete everywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The request or the policy it leads to is invalid; `field` is the path of the first offending
    /// field (`pools[1].addresses[0]`), `message` lists every problem, each with its path.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// `expected_generation` is not the generation in force.
    #[error(
        "the policy is at generation {current}, not the expected {expected}; get it again and retry"
    )]
    Conflict { expected: u64, current: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The change waits on something that should pass (a pool still draining); retry later.
    /// Nothing was applied.
    #[error("{message}")]
    Precondition { field: String, message: String },
    /// The daemon could not make the change (state file, a worker behind); nothing was applied.
    #[error("{0}")]
    Failed(String),
    /// The change is in force and saved, but not on every worker: the message says which.
    #[error("{0}")]
    Incomplete(String),
}

/// The destination NAT rules in force for `ListDnatRules`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnatSnapshot {
    /// Generation of the rule set: 1 at start, +1 for every applied change.
    pub generation: u64,
    pub rules: Vec<DnatRuleSnapshot>,
}

/// One rule. Counters of the rule are the sums of its backends'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatRuleSnapshot {
    pub name: String,
    pub address: Ipv4Addr,
    /// 6 (TCP), 17 (UDP), or 0 for an address-only (1:1 or identity) rule.
    pub proto: u8,
    /// 0 for an address-only rule.
    pub port: u16,
    /// "random", "round_robin" or "maglev".
    pub scheduler: &'static str,
    /// Client-IP affinity timeout; zero when off.
    pub affinity: Duration,
    /// Full NAT: the pool clients are translated to; `None` keeps the client address.
    pub snat_pool: Option<String>,
    /// "drain" or "cut".
    pub on_removal: &'static str,
    /// No longer configured; listed while its sessions drain.
    pub retired: bool,
    pub backends: Vec<DnatBackendSnapshot>,
}

/// One backend with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatBackendSnapshot {
    pub address: Ipv4Addr,
    /// 0 keeps the client's destination port.
    pub port: u16,
    pub weight: u32,
    /// No longer configured; listed while its sessions drain.
    pub retired: bool,
    pub packets: u64,
    pub bytes: u64,
    pub sessions_created: u64,
    pub sessions_current: u64,
}

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    Created,
    Deleted,
}

/// A session event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEventSnapshot {
    pub change: SessionChange,
    pub worker: u32,
    pub proto: u8,
    pub inside: SocketAddrV4,
    pub outside: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub inbound: bool,
}

/// A pool and its usage for `ListPools`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub name: String,
    /// Inclusive address ranges.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub port_lo: u16,
    pub port_hi: u16,
    pub masquerade: bool,
    pub filtering: &'static str,
    pub allocation: &'static str,
    /// Ports in use per address, over all workers, every address of the pool listed.
    pub by_address: Vec<(Ipv4Addr, u64)>,
    /// Port blocks held per address, over all workers, in `by_address`'s order.
    pub blocks_by_address: Vec<u64>,
    /// Removed from the policy; still translating its existing sessions until they end.
    pub retired: bool,
}

/// The sessions of a listing as they arrive; see [`Backend::list_sessions`].
pub type SessionListing = mpsc::Receiver<Result<SessionSnapshot, BackendError>>;
/// The outcome of a deletion; see [`Backend::delete_sessions`].
pub type SessionDeletion = oneshot::Receiver<Result<u64, BackendError>>;

/// A session event subscription; see [`Backend::watch_sessions`].
pub struct SessionWatch {
    /// The events, from the moment of subscription.
    pub events: broadcast::Receiver<SessionEventSnapshot>,
    /// Turns to the error naming a worker when one stops. A watch must then end with it: the
    /// stream would otherwise go on with the other workers' events, and a client could not tell
    /// that the stopped worker's sessions are missing from it.
    pub failure: watch::Receiver<Option<BackendError>>,
}

/// Why the backend cannot take (or finish) a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Every worker's command queue is full: too many queries at once.
    #[error("too many session queries in progress; retry shortly")]
    Busy,
    /// A worker left its loop (it panicked): its sessions can be neither listed nor deleted, and
    /// its subscribers' packets are dropped, until the daemon is restarted.
    #[error(
        "worker {worker} (lcore {lcore}) has stopped ({why}); its sessions cannot be reached \
         until cgnatd is restarted"
    )]
    WorkerFailed {
        worker: u32,
        lcore: u32,
        why: String,
    },
    /// A deletion under way when a worker stopped: the running workers deleted their matching
    /// sessions, the stopped one could not.
    #[error(
        "deleted {deleted} session(s) on the running workers, but worker {worker} (lcore {lcore}) \
         has stopped ({why}) and its sessions cannot be reached until cgnatd is restarted"
    )]
    DeletionCut {
        deleted: u64,
        worker: u32,
        lcore: u32,
        why: String,
    },
    /// The workers were configured to record no session events.
    #[error(
        "nat.event_ring: 0, so the workers record no session events and there is nothing to \
         watch; set it above 0 (it takes a restart) to watch sessions"
    )]
    EventsDisabled,
}

/// An endpoint filter: an address, optionally with a port.
pub type EndpointFilter = (Ipv4Addr, Option<u16>);

/// Which sessions a query is about; `None` matches anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionQuery {
    /// IP protocol number (6, 17, 1).
    pub proto: Option<u8>,
    pub inside: Option<EndpointFilter>,
    pub outside: Option<EndpointFilter>,
    pub remote: Option<EndpointFilter>,
    pub state: Option<SessionState>,
    /// Sessions the Nth SNAT rule translates (the daemon's workers check it against the rules in
    /// force; a destination NAT rule in a filter is resolved to its address, port and protocol).
    pub snat_rule: Option<u16>,
}

impl SessionQuery {
    pub fn is_empty(&self) -> bool {
        *self == SessionQuery::default()
    }

    /// Whether a session with these endpoints matches (`state` given when known).
    pub fn matches(
        &self,
        proto: u8,
        inside: SocketAddrV4,
        outside: SocketAddrV4,
        remote: SocketAddrV4,
        state: Option<SessionState>,
    ) -> bool {
        let ep = |f: Option<EndpointFilter>, a: SocketAddrV4| {
            f.is_none_or(|(ip, port)| ip == *a.ip() && port.is_none_or(|p| p == a.port()))
        };
        self.proto.is_none_or(|p| p == proto)
            && ep(self.inside, inside)
            && ep(self.outside, outside)
            && ep(self.remote, remote)
            && self.state.is_none_or(|st| Some(st) == state)
    }
}

/// Connection-tracking state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    New,
    Established,
}

/// One session as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub worker: u32,
    pub proto: u8,
    pub inside: SocketAddrV4,
    pub outside: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: SessionState,
    /// TCP only (`syn_sent`, `established`, ...); empty for other protocols.
    pub tcp_state: &'static str,
    pub inbound: bool,
    pub hairpin: bool,
    pub idle: Duration,
    pub expires_in: Duration,
}

/// Daemon facts for `GetInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoSnapshot {
    /// cgnatd version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// Wall-clock start time; uptime is derived from it.
    pub started_at: SystemTime,
    /// Number of data-plane workers.
    pub workers: u32,
    /// Generation of the applied configuration (1 for the start-up config).
    pub generation: u64,
    /// DPDK library version string, e.g. "DPDK 22.11.4".
    pub dpdk_version: String,
}

/// Counters of all workers for `GetStats`/`WatchStats`. Totals are computed by
/// the server, so the backend only reports per-worker values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// One entry per worker.
    pub workers: Vec<WorkerStatsSnapshot>,
    /// Per SNAT rule of the policy in force, summed over workers.
    pub snat_rules: Vec<SnatRuleStatsSnapshot>,
}

/// One SNAT rule's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatRuleStatsSnapshot {
    /// "100.64.0.0/10", or "100.64.0.0/10 to 198.51.100.0/24".
    pub matches: String,
    pub pool: String,
    pub sessions_opened: u64,
    pub flows_refused: u64,
}

/// Counters of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatsSnapshot {
    /// Worker index, 0-based.
    pub worker: u32,
    /// DPDK lcore the worker runs on.
    pub lcore: u32,
    /// Counters and gauges by snake_case name (e.g. "rx_packets").
    pub counters: Vec<(&'static str, u64)>,
    /// Drops by snake_case reason (e.g. "no_session"), zeros included.
    pub drops: Vec<(&'static str, u64)>,
    /// Ports in use per pool address (dotted quad), every address listed.
    pub ports_by_address: Vec<(String, u64)>,
    /// Why the worker is no longer in its loop (e.g. "panicked"); `None` while it runs.
    pub failed: Option<String>,
}

/// Which side of the NAT a port faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// Subscriber side.
    Inside,
    /// Internet side.
    Outside,
}

/// How a packet arriving on a port reaches the worker that owns its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SteeringSnapshot {
    /// One worker owns every flow.
    SingleWorker,
    /// The device's rte_flow rules deliver each flow to its owner's queue.
    RteFlow {
        /// Rules installed on the port.
        rules: u32,
    },
    /// The device took no rules: other workers' flows are handed off to their owner.
    Handoff {
        /// Why, as the device (or the worker count) said it.
        reason: String,
    },
}

/// One DPDK port for `ListPorts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSnapshot {
    /// Name from the configuration.
    pub name: String,
    /// Side of the NAT.
    pub role: PortRole,
    /// DPDK port id.
    pub port_id: u16,
    /// PCI address or vdev spec.
    pub device: String,
    /// DPDK driver name.
    pub driver: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// Interface address with prefix, e.g. "100.64.0.1/24".
    pub address: String,
    /// Link state.
    pub link_up: bool,
    /// Link speed in Mbit/s, 0 if unknown.
    pub speed_mbps: u32,
    /// NIC counters.
    pub counters: PortCountersSnapshot,
    /// Owner steering, decided when the port started.
    pub steering: SteeringSnapshot,
}

/// NIC-level counters of a port (rte_eth_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortCountersSnapshot {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets dropped by the NIC for lack of RX descriptors.
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// A backend with fixed, known numbers for the tests of this crate.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::sync::Mutex;

    pub(crate) struct FakeBackend {
        pub(crate) started_at: SystemTime,
        /// The session table the session RPCs work on, and the queries they received.
        pub(crate) sessions: Mutex<Vec<SessionSnapshot>>,
        pub(crate) queries: Mutex<Vec<SessionQuery>>,
        /// What the session queries (list and delete) fail with, if anything.
        pub(crate) refuse: Option<BackendError>,
        /// What the session queries end with after their answer, as when a worker stops while
        /// they run.
        pub(crate) interrupt: Option<BackendError>,
        /// Whether `watch_sessions` is refused as with `nat.event_ring: 0`.
        pub(crate) events_disabled: bool,
        /// Tests send session events through this.
        pub(crate) events: broadcast::Sender<SessionEventSnapshot>,
        /// Tests stop a worker under open watches through this.
        pub(crate) failure: watch::Sender<Option<BackendError>>,
        pub(crate) policy: Mutex<FakePolicy>,
        /// Every change request received, applied or not.
        pub(crate) policy_requests: Mutex<Vec<PolicyRequest>>,
    }

    /// The policy in force in the fake: the lab's configuration file and what was applied over it.
    pub(crate) struct FakePolicy {
        pub(crate) generation: u64,
        pub(crate) doc: config::policy::PolicyDoc,
        pub(crate) config: config::Config,
    }

    pub(crate) const LAB: &str = include_str!("../../../config/lab.yaml");

    impl FakeBackend {
        fn change_policy_now(&self, request: PolicyRequest) -> Result<PolicyOutcome, PolicyError> {
            use config::policy::PolicyDoc;
            self.policy_requests.lock().unwrap().push(request.clone());
            let mut st = self.policy.lock().unwrap();
            if let Some(expected) = request.expected_generation
                && expected != st.generation
            {
                return Err(PolicyError::Conflict {
                    expected,
                    current: st.generation,
                });
            }
            let doc = match &request.change {
                PolicyChange::Replace(v) => PolicyDoc::from_value(v.clone())?,
                PolicyChange::Edit(e) => st.doc.edit(e)?,
            };
            let config = doc.apply_to(LAB)?;
            let live = config::policy::check_live(&st.config, &config);
            if !live.is_empty() {
                return Err(config::ConfigError::Invalid { errors: live }.into());
            }
            let changes = config::policy::diff(&st.config, &config);
            if request.dry_run || changes.is_empty() {
                return Ok(PolicyOutcome {
                    generation: st.generation,
                    applied: false,
                    changes,
                });
            }
            st.generation += 1;
            st.doc = doc;
            st.config = config;
            Ok(PolicyOutcome {
                generation: st.generation,
                applied: true,
                changes,
            })
        }
    }

    pub(crate) fn session(proto: u8, inside: &str, outside: &str, remote: &str) -> SessionSnapshot {
        SessionSnapshot {
            worker: 0,
            proto,
            inside: inside.parse().unwrap(),
            outside: outside.parse().unwrap(),
            remote: remote.parse().unwrap(),
            state: SessionState::Established,
            tcp_state: if proto == 6 { "established" } else { "" },
            inbound: false,
            hairpin: false,
            idle: Duration::from_secs(3),
            expires_in: Duration::from_secs(297),
        }
    }

    /// What the daemon's workers do with a query, over the fake table.
    fn matches(q: &SessionQuery, s: &SessionSnapshot) -> bool {
        q.matches(s.proto, s.inside, s.outside, s.remote, Some(s.state))
    }

    impl FakeBackend {
        pub(crate) fn new() -> Self {
            FakeBackend {
                // An hour and a bit ago, so uptime is clearly non-zero.
                started_at: SystemTime::now() - Duration::from_secs(3725),
                sessions: Mutex::new(vec![
                    session(
                        17,
                        "100.64.0.11:5000",
                        "203.0.113.2:40001",
                        "198.51.100.10:53",
                    ),
                    session(
                        6,
                        "100.64.0.11:40000",
                        "203.0.113.2:40002",
                        "198.51.100.10:80",
                    ),
                    session(
                        6,
                        "100.64.0.12:40000",
                        "203.0.113.3:50000",
                        "198.51.100.11:443",
                    ),
                ]),
                queries: Mutex::new(Vec::new()),
                refuse: None,
                interrupt: None,
                events_disabled: false,
                events: broadcast::channel(4).0,
                failure: watch::channel(None).0,
                policy: Mutex::new(FakePolicy {
                    generation: 1,
                    doc: config::policy::PolicyDoc::from_config_text(LAB).unwrap(),
                    config: config::Config::from_yaml_str(LAB).unwrap(),
                }),
                policy_requests: Mutex::new(Vec::new()),
            }
        }
    }

    impl Backend for FakeBackend {
        fn info(&self) -> InfoSnapshot {
            InfoSnapshot {
                version: "9.8.7".into(),
                started_at: self.started_at,
                workers: 2,
                generation: 42,
                dpdk_version: "DPDK 22.11.4".into(),
            }
        }

        fn stats(&self) -> StatsSnapshot {
            StatsSnapshot {
                workers: vec![
                    WorkerStatsSnapshot {
                        worker: 0,
                        lcore: 1,
                        counters: vec![
                            ("rx_packets", 1000),
                            ("tx_packets", 990),
                            ("sessions_current", 7),
                        ],
                        drops: vec![("no_session", 4), ("out_of_ports", 0)],
                        ports_by_address: vec![
                            ("203.0.113.1".into(), 3),
                            ("203.0.113.2".into(), 0),
                        ],
                        failed: None,
                    },
                    WorkerStatsSnapshot {
                        worker: 1,
                        lcore: 3,
                        counters: vec![
                            ("rx_packets", 500),
                            ("tx_packets", 480),
                            ("sessions_current", 5),
                        ],
                        drops: vec![("no_session", 6), ("out_of_ports", 2)],
                        ports_by_address: vec![
                            ("203.0.113.1".into(), 1),
                            ("203.0.113.2".into(), 4),
                        ],
                        failed: None,
                    },
                ],
                snat_rules: vec![SnatRuleStatsSnapshot {
                    matches: "100.64.0.0/10".into(),
                    pool: "lab".into(),
                    sessions_opened: 12,
                    flows_refused: 2,
                }],
            }
        }

        fn list_sessions(&self, query: SessionQuery) -> Result<SessionListing, BackendError> {
            if let Some(e) = &self.refuse {
                return Err(e.clone());
            }
            self.queries.lock().unwrap().push(query);
            let found: Vec<_> = self
                .sessions
                .lock()
                .unwrap()
                .iter()
                .filter(|s| matches(&query, s))
                .cloned()
                .collect();
            let (tx, rx) = mpsc::channel(found.len() + 1);
            for s in found {
                tx.try_send(Ok(s)).unwrap();
            }
            if let Some(e) = &self.interrupt {
                tx.try_send(Err(e.clone())).unwrap();
            }
            Ok(rx)
        }

        fn delete_sessions(&self, query: SessionQuery) -> Result<SessionDeletion, BackendError> {
            if let Some(e) = &self.refuse {
                return Err(e.clone());
            }
            self.queries.lock().unwrap().push(query);
            let mut table = self.sessions.lock().unwrap();
            let before = table.len();
            table.retain(|s| !matches(&query, s));
            let (tx, rx) = oneshot::channel();
            let _ = tx.send(match &self.interrupt {
                Some(e) => Err(e.clone()),
                None => Ok((before - table.len()) as u64),
            });
            Ok(rx)
        }

        fn watch_sessions(&self) -> Result<SessionWatch, BackendError> {
            if self.events_disabled {
                return Err(BackendError::EventsDisabled);
            }
            if let Some(e) = self.failure.borrow().clone() {
                return Err(e);
            }
            Ok(SessionWatch {
                events: self.events.subscribe(),
                failure: self.failure.subscribe(),
            })
        }

        /// A load-balanced TCP service with one retired backend, a retired full-NAT UDP rule and
        /// an address-only rule.
        fn dnat(&self) -> DnatSnapshot {
            let backend = |last: u8, port, weight, retired, n: u64| DnatBackendSnapshot {
                address: Ipv4Addr::new(100, 64, 0, last),
                port,
                weight,
                retired,
                packets: 10 * n,
                bytes: 1_000 * n,
                sessions_created: 2 * n,
                sessions_current: n,
            };
            DnatSnapshot {
                generation: 3,
                rules: vec![
                    DnatRuleSnapshot {
                        name: "web".into(),
                        address: Ipv4Addr::new(203, 0, 113, 101),
                        proto: 6,
                        port: 80,
                        scheduler: "round_robin",
                        affinity: Duration::from_secs(30),
                        snat_pool: None,
                        on_removal: "drain",
                        retired: false,
                        backends: vec![
                            backend(21, 8001, 1, false, 2),
                            backend(22, 8002, 2, true, 1),
                            // 10 packets, 1000 bytes, 2 sessions created, none left.
                            DnatBackendSnapshot {
                                sessions_current: 0,
                                ..backend(23, 8003, 3, false, 1)
                            },
                        ],
                    },
                    DnatRuleSnapshot {
                        name: "web-fullnat".into(),
                        address: Ipv4Addr::new(203, 0, 113, 102),
                        proto: 17,
                        port: 53,
                        scheduler: "maglev",
                        affinity: Duration::ZERO,
                        snat_pool: Some("lab".into()),
                        on_removal: "drain",
                        retired: true,
                        backends: vec![backend(23, 5353, 1, true, 0)],
                    },
                    DnatRuleSnapshot {
                        name: "static-host".into(),
                        address: Ipv4Addr::new(203, 0, 113, 50),
                        proto: 0,
                        port: 0,
                        scheduler: "random",
                        affinity: Duration::ZERO,
                        snat_pool: None,
                        on_removal: "cut",
                        retired: false,
                        backends: vec![backend(24, 0, 1, false, 5)],
                    },
                ],
            }
        }

        fn pools(&self) -> Vec<PoolSnapshot> {
            vec![PoolSnapshot {
                name: "lab".into(),
                ranges: vec![(Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2))],
                port_lo: 1024,
                port_hi: 65535,
                masquerade: false,
                filtering: "endpoint-independent",
                allocation: "random",
                by_address: vec![
                    (Ipv4Addr::new(203, 0, 113, 1), 10),
                    (Ipv4Addr::new(203, 0, 113, 2), 5),
                ],
                blocks_by_address: vec![0, 0],
                retired: false,
            }]
        }

        fn policy(&self) -> PolicySnapshot {
            let st = self.policy.lock().unwrap();
            PolicySnapshot {
                generation: st.generation,
                document: st.doc.value().clone(),
            }
        }

        /// The daemon's validation (config::policy) without a data plane behind it.
        fn change_policy(&self, request: PolicyRequest) -> PolicyFuture {
            let result = self.change_policy_now(request);
            Box::pin(async move { result })
        }

        fn ports(&self) -> Vec<PortSnapshot> {
            vec![
                PortSnapshot {
                    name: "inside".into(),
                    role: PortRole::Inside,
                    port_id: 0,
                    device: "net_af_packet0,iface=cgn-in".into(),
                    driver: "net_af_packet".into(),
                    mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a],
                    address: "100.64.0.1/24".into(),
                    link_up: true,
                    speed_mbps: 10_000,
                    counters: PortCountersSnapshot {
                        rx_packets: 11,
                        tx_packets: 12,
                        rx_bytes: 13,
                        tx_bytes: 14,
                        rx_missed: 15,
                        rx_errors: 16,
                        tx_errors: 17,
                        rx_nombuf: 18,
                    },
                    steering: SteeringSnapshot::Handoff {
                        reason: "rte_flow is not supported by net_af_packet".into(),
                    },
                },
                PortSnapshot {
                    name: "outside".into(),
                    role: PortRole::Outside,
                    port_id: 1,
                    device: "0000:03:00.1".into(),
                    driver: "net_ixgbe".into(),
                    mac: [0xde, 0xad, 0xbe, 0xef, 0x00, 0xff],
                    address: "192.0.2.1/24".into(),
                    link_up: false,
                    speed_mbps: 0,
                    counters: PortCountersSnapshot::default(),
                    steering: SteeringSnapshot::RteFlow { rules: 4 },
                },
            ]
        }
    }
}
