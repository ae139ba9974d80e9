//! The `cgnat.v1.Cgnat` service: turns [`Backend`] snapshots into protobuf.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cgnat::v1;
use cgnat::v1::cgnat_server::Cgnat;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::auth::require_write;
use crate::backend::PolicyChange;
use config::policy::Section;

use crate::backend::{
    Backend, BackendError, DnatBackendSnapshot, DnatRuleSnapshot, DnatSnapshot, EndpointFilter,
    InfoSnapshot, PoolSnapshot, PortCountersSnapshot, PortRole, PortSnapshot, SessionChange,
    SessionEventSnapshot, SessionQuery, SessionSnapshot, SessionState, SessionWatch, StatsSnapshot,
    SteeringSnapshot,
};

/// Smallest accepted `WatchStats` interval. Reading all counters is cheap, but
/// a flood of updates to many watchers would still steal the control core
/// from command-ring work.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// `WatchStats` interval when the request leaves it unset.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct CgnatService<B> {
    backend: Arc<B>,
    /// Flips to `true` when the server starts shutting down, so that endless
    /// `WatchStats` streams finish and graceful shutdown does not wait forever.
    stopping: watch::Receiver<bool>,
}

impl<B: Backend> CgnatService<B> {
    pub(crate) fn new(backend: Arc<B>, stopping: watch::Receiver<bool>) -> Self {
        CgnatService { backend, stopping }
    }
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<v1::Stats, Status>> + Send>>;
type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::Session, Status>> + Send>>;
type SessionEventStream = Pin<Box<dyn Stream<Item = Result<v1::SessionEvent, Status>> + Send>>;

fn event_to_proto(e: &SessionEventSnapshot) -> v1::SessionEvent {
    v1::SessionEvent {
        r#type: match e.change {
            SessionChange::Created => v1::SessionEventType::Created,
            SessionChange::Deleted => v1::SessionEventType::Deleted,
        } as i32,
        session: Some(v1::Session {
            protocol: proto_name(e.proto).to_owned(),
            inside: e.inside.to_string(),
            outside: e.outside.to_string(),
            remote: e.remote.to_string(),
            inbound: e.inbound,
            worker: e.worker,
            ..v1::Session::default()
        }),
        dropped: 0,
    }
}

fn backend_status(e: BackendError) -> Status {
    match e {
        BackendError::Busy => Status::resource_exhausted(e.to_string()),
        // Retrying will not help until the daemon is restarted, but UNAVAILABLE is what a
        // client's retry and failover logic expects of a server that cannot serve.
        BackendError::WorkerFailed { .. } | BackendError::DeletionCut { .. } => {
            Status::unavailable(e.to_string())
        }
        BackendError::EventsDisabled => Status::failed_precondition(e.to_string()),
    }
}

/// Parse an endpoint filter: "a.b.c.d" or "a.b.c.d:port"; empty means any.
fn endpoint_filter(field: &str, text: &str) -> Result<Option<EndpointFilter>, Status> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Status::invalid_argument(format!("filter.{field}: {why}"));
    let (ip, port) = match text.rsplit_once(':') {
        Some((ip, port)) => {
            let port: u16 = port
                .parse()
                .map_err(|_| bad(format!("`{port}` is not a port (0-65535)")))?;
            (ip, Some(port))
        }
        None => (text, None),
    };
    let ip = ip.parse().map_err(|_| {
        bad(format!(
            "`{ip}` is not an IPv4 address (expected a.b.c.d or a.b.c.d:port)"
        ))
    })?;
    Ok(Some((ip, port)))
}

/// The backend query for a request's filter; errors name the offending field.
/// The filter of a session call; `dnat` resolves a destination NAT rule named in `filter.rule`.
pub(crate) fn session_query(
    filter: Option<&v1::SessionFilter>,
    dnat: &dyn Fn() -> DnatSnapshot,
) -> Result<SessionQuery, Status> {
    let Some(f) = filter else {
        return Ok(SessionQuery::default());
    };
    let proto = match f.protocol.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "tcp" => Some(6),
        "udp" => Some(17),
        "icmp" => Some(1),
        other => {
            return Err(Status::invalid_argument(format!(
                "filter.protocol: `{other}` is not one of tcp, udp, icmp"
            )));
        }
    };
    let state = match f.state.trim().to_ascii_lowercase().as_str() {
        "" => None,
        "new" => Some(SessionState::New),
        "established" => Some(SessionState::Established),
        other => {
            return Err(Status::invalid_argument(format!(
                "filter.state: `{other}` is not one of new, established"
            )));
        }
    };
    let mut q = SessionQuery {
        proto,
        inside: endpoint_filter("inside", &f.inside)?,
        outside: endpoint_filter("outside", &f.outside)?,
        remote: endpoint_filter("remote", &f.remote)?,
        state,
        snat_rule: None,
    };
    let rule = f.rule.trim();
    if rule.is_empty() {
        return Ok(q);
    }
    if let Some(n) = rule.strip_prefix("snat[").and_then(|r| r.strip_suffix(']')) {
        q.snat_rule = Some(n.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "filter.rule: `{rule}`: a SNAT rule is snat[N], N its position from 0"
            ))
        })?);
        return Ok(q);
    }
    let rules = dnat();
    let Some(r) = rules.rules.iter().find(|r| r.name == rule && !r.retired) else {
        return Err(Status::invalid_argument(format!(
            "filter.rule: `{rule}` is neither snat[N] nor a destination NAT rule in force"
        )));
    };
    if q.outside.is_some() {
        return Err(Status::invalid_argument(
            "filter.rule: a destination NAT rule names the outside endpoint; leave filter.outside empty",
        ));
    }
    if r.proto != 0 {
        if q.proto.is_some_and(|p| p != r.proto) {
            return Err(Status::invalid_argument(format!(
                "filter.protocol: rule `{rule}` forwards {} only",
                proto_name(r.proto)
            )));
        }
        q.proto = Some(r.proto);
    }
    q.outside = Some((r.address, (r.port != 0).then_some(r.port)));
    Ok(q)
}

fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

pub(crate) fn pool_to_proto(p: &PoolSnapshot) -> v1::Pool {
    let per_addr = u64::from(p.port_hi.saturating_sub(p.port_lo)) + 1;
    let addresses: u64 = p
        .ranges
        .iter()
        .map(|&(lo, hi)| u64::from(u32::from(hi)) - u64::from(u32::from(lo)) + 1)
        .sum();
    v1::Pool {
        name: p.name.clone(),
        addresses: p
            .ranges
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect(),
        ports: format!("{}-{}", p.port_lo, p.port_hi),
        masquerade: p.masquerade,
        filtering: p.filtering.to_owned(),
        allocation: p.allocation.to_owned(),
        ports_total: addresses * per_addr,
        ports_in_use: p.by_address.iter().map(|&(_, n)| n).sum(),
        by_address: p
            .by_address
            .iter()
            .enumerate()
            .map(|(i, &(a, n))| v1::PoolAddress {
                address: a.to_string(),
                ports_in_use: n,
                blocks_in_use: p.blocks_by_address.get(i).copied().unwrap_or(0),
            })
            .collect(),
        blocks_in_use: p.blocks_by_address.iter().sum(),
        retired: p.retired,
    }
}

fn dnat_backend_to_proto(b: &DnatBackendSnapshot) -> v1::DnatBackend {
    v1::DnatBackend {
        address: b.address.to_string(),
        port: u32::from(b.port),
        weight: b.weight,
        retired: b.retired,
        packets: b.packets,
        bytes: b.bytes,
        sessions_created: b.sessions_created,
        sessions_current: b.sessions_current,
    }
}

/// One rule; its counters are the sums over its backends (saturating, like the stats totals).
pub(crate) fn dnat_rule_to_proto(r: &DnatRuleSnapshot) -> v1::DnatRule {
    let sum = |f: fn(&DnatBackendSnapshot) -> u64| {
        r.backends
            .iter()
            .map(f)
            .fold(0u64, |acc, n| acc.saturating_add(n))
    };
    v1::DnatRule {
        name: r.name.clone(),
        address: r.address.to_string(),
        protocol: match r.proto {
            0 => "any",
            p => proto_name(p),
        }
        .to_owned(),
        port: u32::from(r.port),
        scheduler: r.scheduler.to_owned(),
        affinity_timeout: Some(proto_duration(r.affinity)),
        snat_pool: r.snat_pool.clone().unwrap_or_default(),
        on_backend_removal: r.on_removal.to_owned(),
        retired: r.retired,
        packets: sum(|b| b.packets),
        bytes: sum(|b| b.bytes),
        sessions_created: sum(|b| b.sessions_created),
        sessions_current: sum(|b| b.sessions_current),
        backends: r.backends.iter().map(dnat_backend_to_proto).collect(),
    }
}

pub(crate) fn dnat_to_proto(d: &DnatSnapshot) -> v1::ListDnatRulesResponse {
    v1::ListDnatRulesResponse {
        generation: d.generation,
        rules: d.rules.iter().map(dnat_rule_to_proto).collect(),
    }
}

pub(crate) fn session_to_proto(s: &SessionSnapshot) -> v1::Session {
    v1::Session {
        protocol: proto_name(s.proto).to_owned(),
        inside: s.inside.to_string(),
        outside: s.outside.to_string(),
        remote: s.remote.to_string(),
        state: match s.state {
            SessionState::New => v1::SessionState::New,
            SessionState::Established => v1::SessionState::Established,
        } as i32,
        tcp_state: s.tcp_state.to_owned(),
        inbound: s.inbound,
        hairpin: s.hairpin,
        idle: Some(proto_duration(s.idle)),
        expires_in: Some(proto_duration(s.expires_in)),
        worker: s.worker,
    }
}

#[tonic::async_trait]
impl<B: Backend> Cgnat for CgnatService<B> {
    async fn get_info(
        &self,
        request: Request<v1::GetInfoRequest>,
    ) -> Result<Response<v1::Info>, Status> {
        debug!(rpc = "GetInfo", peer = ?request.remote_addr(), "gRPC request");
        Ok(Response::new(info_to_proto(
            &self.backend.info(),
            SystemTime::now(),
        )))
    }

    async fn get_stats(
        &self,
        request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::Stats>, Status> {
        debug!(rpc = "GetStats", peer = ?request.remote_addr(), "gRPC request");
        let b = &self.backend;
        Ok(Response::new(stats_to_proto(&b.stats(), &b.pools())))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(
        &self,
        request: Request<v1::WatchStatsRequest>,
    ) -> Result<Response<Self::WatchStatsStream>, Status> {
        let interval = watch_interval(request.get_ref().interval)?;
        debug!(rpc = "WatchStats", peer = ?request.remote_addr(), ?interval, "gRPC request");

        // Capacity 1: a client that reads slowly gets the newest numbers when
        // it catches up instead of an ever-growing backlog of stale ones.
        let (tx, rx) = mpsc::channel(1);
        let backend = Arc::clone(&self.backend);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        match tx.try_send(Ok(stats_to_proto(&backend.stats(), &backend.pools()))) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                debug!("WatchStats client is slow; skipped one update");
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    () = tx.closed() => break,
                    // Err means the server is gone altogether; stop either way.
                    _ = stopping.wait_for(|stop| *stop) => break,
                }
            }
            debug!("WatchStats stream finished");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_ports(
        &self,
        request: Request<v1::ListPortsRequest>,
    ) -> Result<Response<v1::ListPortsResponse>, Status> {
        debug!(rpc = "ListPorts", peer = ?request.remote_addr(), "gRPC request");
        let ports = self.backend.ports().iter().map(port_to_proto).collect();
        Ok(Response::new(v1::ListPortsResponse { ports }))
    }

    async fn list_pools(
        &self,
        request: Request<v1::ListPoolsRequest>,
    ) -> Result<Response<v1::ListPoolsResponse>, Status> {
        debug!(rpc = "ListPools", peer = ?request.remote_addr(), "gRPC request");
        let pools = self.backend.pools().iter().map(pool_to_proto).collect();
        Ok(Response::new(v1::ListPoolsResponse { pools }))
    }

    async fn get_session(
        &self,
        request: Request<v1::GetSessionRequest>,
    ) -> Result<Response<v1::Session>, Status> {
        let r = request.get_ref();
        let filter = v1::SessionFilter {
            protocol: r.protocol.clone(),
            inside: r.inside.clone(),
            outside: r.outside.clone(),
            remote: r.remote.clone(),
            state: String::new(),
            rule: String::new(),
        };
        let query = session_query(Some(&filter), &|| self.backend.dnat())?;
        let exact = |e: Option<EndpointFilter>| e.is_some_and(|(_, p)| p.is_some());
        if query.proto.is_none() {
            return Err(Status::invalid_argument(
                "protocol: required (tcp, udp or icmp)",
            ));
        }
        if !exact(query.remote) {
            return Err(Status::invalid_argument("remote: required as address:port"));
        }
        match (r.inside.trim().is_empty(), r.outside.trim().is_empty()) {
            (false, true) if exact(query.inside) => {}
            (true, false) if exact(query.outside) => {}
            _ => {
                return Err(Status::invalid_argument(
                    "inside, outside: give exactly one, as address:port",
                ));
            }
        }
        debug!(rpc = "GetSession", peer = ?request.remote_addr(), ?query, "gRPC request");
        let mut rx = self.backend.list_sessions(query).map_err(backend_status)?;
        // One session at most matches a full tuple; take it and let the walk finish on its own.
        match rx.recv().await {
            Some(Ok(s)) => Ok(Response::new(session_to_proto(&s))),
            Some(Err(e)) => Err(backend_status(e)),
            None => Err(Status::not_found("no such session")),
        }
    }

    type ListSessionsStream = SessionStream;

    async fn list_sessions(
        &self,
        request: Request<v1::ListSessionsRequest>,
    ) -> Result<Response<Self::ListSessionsStream>, Status> {
        let query = session_query(request.get_ref().filter.as_ref(), &|| self.backend.dnat())?;
        debug!(rpc = "ListSessions", peer = ?request.remote_addr(), ?query, "gRPC request");
        let limit = match request.get_ref().limit {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let rx = self.backend.list_sessions(query).map_err(backend_status)?;
        let stream = tokio_stream::StreamExt::take(
            tokio_stream::StreamExt::map(ReceiverStream::new(rx), |s| match s {
                Ok(s) => Ok(session_to_proto(&s)),
                Err(e) => Err(backend_status(e)),
            }),
            limit,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_sessions(
        &self,
        request: Request<v1::DeleteSessionsRequest>,
    ) -> Result<Response<v1::DeleteSessionsResponse>, Status> {
        let query = session_query(request.get_ref().filter.as_ref(), &|| self.backend.dnat())?;
        if query.is_empty() {
            return Err(Status::invalid_argument(
                "filter: empty; it would delete every session (use FlushSessions for that)",
            ));
        }
        let who = require_write(&request, "DeleteSessions")?;
        let peer = request.remote_addr();
        let deleted = self.delete(query).await?;
        info!(
            rpc = "DeleteSessions",
            ?peer,
            ?who,
            ?query,
            deleted,
            "sessions deleted"
        );
        Ok(Response::new(v1::DeleteSessionsResponse { deleted }))
    }

    async fn flush_sessions(
        &self,
        request: Request<v1::FlushSessionsRequest>,
    ) -> Result<Response<v1::DeleteSessionsResponse>, Status> {
        let who = require_write(&request, "FlushSessions")?;
        let peer = request.remote_addr();
        let deleted = self.delete(SessionQuery::default()).await?;
        info!(
            rpc = "FlushSessions",
            ?peer,
            ?who,
            deleted,
            "session table flushed"
        );
        Ok(Response::new(v1::DeleteSessionsResponse { deleted }))
    }

    async fn list_dnat_rules(
        &self,
        request: Request<v1::ListDnatRulesRequest>,
    ) -> Result<Response<v1::ListDnatRulesResponse>, Status> {
        debug!(rpc = "ListDnatRules", peer = ?request.remote_addr(), "gRPC request");
        Ok(Response::new(dnat_to_proto(&self.backend.dnat())))
    }

    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        debug!(rpc = "GetPolicy", peer = ?request.remote_addr(), "gRPC request");
        let p = self.backend.policy();
        let policy = match &p.document {
            serde_yaml::Value::Mapping(m) => crate::policy::struct_to_proto(m),
            _ => prost_types::Struct::default(),
        };
        Ok(Response::new(v1::Policy {
            generation: p.generation,
            policy: Some(policy),
        }))
    }

    async fn apply_policy(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let doc = r
            .policy
            .as_ref()
            .map(crate::policy::struct_from_proto)
            .ok_or_else(|| Status::invalid_argument("policy: missing"))?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "ApplyPolicy",
            PolicyChange::Replace(doc),
            expected,
            dry_run,
        )
        .await
    }

    async fn add_pool(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::add(Section::Pools, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "AddPool",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn update_pool(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::update(Section::Pools, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "UpdatePool",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn delete_pool(
        &self,
        request: Request<v1::DeletePolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::delete(Section::Pools, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "DeletePool",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn add_snat_rule(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::add(Section::Snat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "AddSnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn update_snat_rule(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::update(Section::Snat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "UpdateSnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn delete_snat_rule(
        &self,
        request: Request<v1::DeletePolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::delete(Section::Snat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "DeleteSnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn add_exclusion(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::add(Section::Exclusions, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "AddExclusion",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn update_exclusion(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::update(Section::Exclusions, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "UpdateExclusion",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn delete_exclusion(
        &self,
        request: Request<v1::DeletePolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::delete(Section::Exclusions, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "DeleteExclusion",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn add_dnat_rule(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::add(Section::Dnat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "AddDnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn update_dnat_rule(
        &self,
        request: Request<v1::PutPolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::update(Section::Dnat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "UpdateDnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    async fn delete_dnat_rule(
        &self,
        request: Request<v1::DeletePolicyItemRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let r = request.get_ref();
        let edit = crate::policy::delete(Section::Dnat, r)?;
        let (expected, dry_run) = (r.expected_generation, r.dry_run);
        crate::policy::change(
            &*self.backend,
            &request,
            "DeleteDnatRule",
            PolicyChange::Edit(edit),
            expected,
            dry_run,
        )
        .await
    }

    type WatchSessionsStream = SessionEventStream;

    async fn watch_sessions(
        &self,
        request: Request<v1::WatchSessionsRequest>,
    ) -> Result<Response<Self::WatchSessionsStream>, Status> {
        self.watch(request).await
    }
}

impl<B: Backend> CgnatService<B> {
    async fn watch(
        &self,
        request: Request<v1::WatchSessionsRequest>,
    ) -> Result<Response<SessionEventStream>, Status> {
        let req = request.get_ref();
        let query = session_query(req.filter.as_ref(), &|| self.backend.dnat())?;
        if query.snat_rule.is_some() {
            return Err(Status::invalid_argument(
                "filter.rule: SNAT rules are not supported by WatchSessions (the rules in force decide, and events are matched away from the workers)",
            ));
        }
        if query.state.is_some() {
            return Err(Status::invalid_argument(
                "filter.state: not supported by WatchSessions (events carry no state)",
            ));
        }
        debug!(rpc = "WatchSessions", peer = ?request.remote_addr(), ?query, "gRPC request");
        // Subscribe before the snapshot, so nothing falls between the two.
        let SessionWatch {
            mut events,
            mut failure,
        } = self.backend.watch_sessions().map_err(backend_status)?;
        let snapshot = if req.snapshot {
            Some(self.backend.list_sessions(query).map_err(backend_status)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel(256);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            if let Some(mut snap) = snapshot {
                while let Some(s) = snap.recv().await {
                    let s = match s {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(backend_status(e))).await;
                            return;
                        }
                    };
                    let ev = v1::SessionEvent {
                        r#type: v1::SessionEventType::Snapshot as i32,
                        session: Some(session_to_proto(&s)),
                        dropped: 0,
                    };
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let ev = tokio::select! {
                    r = events.recv() => Ok(r),
                    () = tx.closed() => break,
                    _ = stopping.wait_for(|stop| *stop) => break,
                    f = failure.wait_for(Option::is_some) => Err(f.ok().and_then(|f| f.clone())),
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    // A stopped worker's sessions send no more events: end the stream with why,
                    // so the client knows it is no longer seeing every session.
                    Err(failed) => {
                        if let Some(e) = failed {
                            let _ = tx.send(Err(backend_status(e))).await;
                        }
                        break;
                    }
                };
                let msg = match ev {
                    Ok(e) if query.matches(e.proto, e.inside, e.outside, e.remote, None) => {
                        event_to_proto(&e)
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => v1::SessionEvent {
                        r#type: v1::SessionEventType::Dropped as i32,
                        session: None,
                        dropped: n,
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            debug!("WatchSessions stream finished");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(&self, query: SessionQuery) -> Result<u64, Status> {
        let rx = self
            .backend
            .delete_sessions(query)
            .map_err(backend_status)?;
        rx.await
            .map_err(|_| Status::unavailable("the data plane stopped before answering"))?
            .map_err(backend_status)
    }
}

/// Validates the requested `WatchStats` interval; errors name the field so a
/// grpcurl user knows what to change.
pub(crate) fn watch_interval(requested: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let Some(requested) = requested else {
        return Ok(DEFAULT_WATCH_INTERVAL);
    };
    let interval = Duration::try_from(requested).map_err(|_| {
        Status::invalid_argument(format!(
            "interval must be a positive duration of at least {MIN_WATCH_INTERVAL:?}"
        ))
    })?;
    if interval < MIN_WATCH_INTERVAL {
        return Err(Status::invalid_argument(format!(
            "interval {interval:?} is below the minimum of {MIN_WATCH_INTERVAL:?}"
        )));
    }
    Ok(interval)
}

pub(crate) fn info_to_proto(info: &InfoSnapshot, now: SystemTime) -> v1::Info {
    // A wall-clock step backwards could put `now` before the start time; an
    // uptime of zero is more honest than an error for a status query.
    let uptime = now.duration_since(info.started_at).unwrap_or_default();
    v1::Info {
        version: info.version.clone(),
        uptime: Some(proto_duration(uptime)),
        started_at: Some(prost_types::Timestamp::from(info.started_at)),
        workers: info.workers,
        config_generation: info.generation,
        dpdk_version: info.dpdk_version.clone(),
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    // Only fails beyond i64::MAX seconds, which no uptime reaches.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

pub(crate) fn stats_to_proto(stats: &StatsSnapshot, pools: &[PoolSnapshot]) -> v1::Stats {
    let mut totals = HashMap::new();
    let mut drops = HashMap::new();
    let mut ports_by_address = HashMap::new();
    let workers = stats
        .workers
        .iter()
        .map(|w| {
            add_into(&mut totals, &w.counters);
            add_into(&mut drops, &w.drops);
            let mut by_addr = HashMap::with_capacity(w.ports_by_address.len());
            for (addr, n) in &w.ports_by_address {
                let slot: &mut u64 = ports_by_address.entry(addr.clone()).or_insert(0);
                *slot = slot.saturating_add(*n);
                by_addr.insert(addr.clone(), *n);
            }
            v1::WorkerStats {
                worker: w.worker,
                lcore: w.lcore,
                counters: to_map(&w.counters),
                drops: to_map(&w.drops),
                ports_by_address: by_addr,
                failed: w.failed.is_some(),
                failure: w.failed.clone().unwrap_or_default(),
            }
        })
        .collect();
    v1::Stats {
        totals,
        drops,
        workers,
        ports_by_address,
        snat_rules: stats
            .snat_rules
            .iter()
            .enumerate()
            .map(|(i, r)| v1::SnatRuleStats {
                index: i as u32,
                r#match: r.matches.clone(),
                pool: r.pool.clone(),
                sessions_opened: r.sessions_opened,
                flows_refused: r.flows_refused,
            })
            .collect(),
        pools: pools
            .iter()
            .map(|p| {
                let v = pool_to_proto(p);
                v1::PoolStats {
                    name: v.name,
                    ports_in_use: v.ports_in_use,
                    ports_total: v.ports_total,
                    blocks_in_use: v.blocks_in_use,
                    retired: v.retired,
                }
            })
            .collect(),
    }
}

fn to_map(pairs: &[(&'static str, u64)]) -> HashMap<String, u64> {
    let mut map = HashMap::with_capacity(pairs.len());
    add_into(&mut map, pairs);
    map
}

/// Adds counters into `sum` by name. Saturating, because a wrapped total would
/// look like a reset to every monitoring system reading it.
fn add_into(sum: &mut HashMap<String, u64>, pairs: &[(&'static str, u64)]) {
    for &(name, value) in pairs {
        let slot = sum.entry(name.to_owned()).or_insert(0);
        *slot = slot.saturating_add(value);
    }
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

fn role_to_proto(role: PortRole) -> v1::Role {
    match role {
        PortRole::Inside => v1::Role::Inside,
        PortRole::Outside => v1::Role::Outside,
    }
}

fn counters_to_proto(c: &PortCountersSnapshot) -> v1::PortCounters {
    v1::PortCounters {
        rx_packets: c.rx_packets,
        tx_packets: c.tx_packets,
        rx_bytes: c.rx_bytes,
        tx_bytes: c.tx_bytes,
        rx_missed: c.rx_missed,
        rx_errors: c.rx_errors,
        tx_errors: c.tx_errors,
        rx_nombuf: c.rx_nombuf,
    }
}

pub(crate) fn port_to_proto(port: &PortSnapshot) -> v1::Port {
    v1::Port {
        name: port.name.clone(),
        role: role_to_proto(port.role).into(),
        port_id: u32::from(port.port_id),
        device: port.device.clone(),
        driver: port.driver.clone(),
        mac: format_mac(&port.mac),
        address: port.address.clone(),
        link_up: port.link_up,
        speed_mbps: port.speed_mbps,
        counters: Some(counters_to_proto(&port.counters)),
        steering: Some(steering_to_proto(&port.steering)),
    }
}

fn steering_to_proto(s: &SteeringSnapshot) -> v1::Steering {
    use v1::SteeringMode as Mode;
    let (mode, rules, reason) = match s {
        SteeringSnapshot::SingleWorker => (Mode::SingleWorker, 0, String::new()),
        SteeringSnapshot::RteFlow { rules } => (Mode::RteFlow, *rules, String::new()),
        SteeringSnapshot::Handoff { reason } => (Mode::SoftwareHandoff, 0, reason.clone()),
    };
    v1::Steering {
        mode: mode.into(),
        rules,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::WorkerStatsSnapshot;
    use crate::backend::fake::FakeBackend;

    #[test]
    fn totals_are_sums_over_workers() {
        let fake = FakeBackend::new();
        let stats = stats_to_proto(&fake.stats(), &fake.pools());
        assert_eq!(stats.totals["rx_packets"], 1500);
        assert_eq!(stats.totals["tx_packets"], 1470);
        assert_eq!(stats.totals["sessions_current"], 12);
        assert_eq!(stats.drops["no_session"], 10);
        assert_eq!(stats.drops["out_of_ports"], 2);
        assert_eq!(stats.workers.len(), 2);
        assert_eq!(stats.workers[1].lcore, 3);
        assert_eq!(stats.workers[1].counters["rx_packets"], 500);
        assert_eq!(stats.workers[0].drops["out_of_ports"], 0);
        assert_eq!(stats.ports_by_address["203.0.113.1"], 4);
        assert_eq!(stats.ports_by_address["203.0.113.2"], 4);
        assert_eq!(stats.workers[1].ports_by_address["203.0.113.2"], 4);
        // Per SNAT rule and per pool, as iptables -t nat -L -v and ListPools give them.
        let r = &stats.snat_rules[0];
        assert_eq!(
            (r.index, r.r#match.as_str(), r.pool.as_str()),
            (0, "100.64.0.0/10", "lab")
        );
        assert_eq!((r.sessions_opened, r.flows_refused), (12, 2));
        let p = &stats.pools[0];
        assert_eq!(
            (p.name.as_str(), p.ports_in_use, p.ports_total),
            ("lab", 15, 129_024)
        );
    }

    #[test]
    fn totals_saturate_instead_of_wrapping() {
        let worker = |n| WorkerStatsSnapshot {
            worker: n,
            lcore: n,
            counters: vec![("rx_packets", u64::MAX - 1)],
            drops: vec![],
            ports_by_address: vec![],
            failed: None,
        };
        let stats = stats_to_proto(
            &StatsSnapshot {
                workers: vec![worker(0), worker(1)],
                snat_rules: vec![],
            },
            &[],
        );
        assert_eq!(stats.totals["rx_packets"], u64::MAX);
    }

    #[test]
    fn a_stopped_worker_is_marked_in_the_stats() {
        let mut stats = FakeBackend::new().stats();
        stats.workers[1].failed = Some("panicked".into());
        let proto = stats_to_proto(&stats, &[]);
        assert!(!proto.workers[0].failed);
        assert_eq!(proto.workers[0].failure, "");
        assert!(proto.workers[1].failed);
        assert_eq!(proto.workers[1].failure, "panicked");
    }

    #[test]
    fn uptime_is_measured_from_start_and_never_negative() {
        let info = FakeBackend::new().info();
        let now = info.started_at + Duration::from_secs(10_925);
        let proto = info_to_proto(&info, now);
        assert_eq!(proto.uptime.unwrap().seconds, 10_925);
        assert_eq!(proto.config_generation, 42);
        assert_eq!(proto.workers, 2);

        let before_start = info.started_at - Duration::from_secs(5);
        assert_eq!(
            info_to_proto(&info, before_start).uptime.unwrap(),
            prost_types::Duration::default()
        );
    }

    #[test]
    fn ports_use_text_addresses_and_named_roles() {
        let ports = FakeBackend::new().ports();
        let p = port_to_proto(&ports[1]);
        assert_eq!(p.mac, "de:ad:be:ef:00:ff");
        assert_eq!(p.role(), v1::Role::Outside);
        assert_eq!(p.address, "192.0.2.1/24");
        assert_eq!(port_to_proto(&ports[0]).counters.unwrap().rx_nombuf, 18);
    }

    #[test]
    fn dnat_rules_sum_their_backends_and_read_as_text() {
        let reply = dnat_to_proto(&FakeBackend::new().dnat());
        assert_eq!(reply.generation, 3);
        let web = &reply.rules[0];
        assert_eq!(
            (web.address.as_str(), web.protocol.as_str(), web.port),
            ("203.0.113.101", "tcp", 80)
        );
        assert_eq!(web.affinity_timeout.unwrap().seconds, 30);
        assert_eq!(web.snat_pool, "");
        assert_eq!(
            (
                web.packets,
                web.bytes,
                web.sessions_created,
                web.sessions_current
            ),
            (40, 4_000, 8, 3)
        );
        assert_eq!(web.backends[1].address, "100.64.0.22");
        assert!(web.backends[1].retired);
        let fullnat = &reply.rules[1];
        assert_eq!((fullnat.protocol.as_str(), fullnat.port), ("udp", 53));
        assert_eq!(fullnat.snat_pool, "lab");
        assert!(fullnat.retired);
        let static_host = &reply.rules[2];
        assert_eq!(
            (static_host.protocol.as_str(), static_host.port),
            ("any", 0)
        );
        assert_eq!(static_host.snat_pool, "");
        assert_eq!(static_host.affinity_timeout.unwrap().seconds, 0);

        // Rule totals saturate rather than wrap, like the stats totals.
        let mut big = FakeBackend::new().dnat();
        for b in &mut big.rules[0].backends {
            b.bytes = u64::MAX - 1;
        }
        assert_eq!(dnat_to_proto(&big).rules[0].bytes, u64::MAX);
    }

    #[test]
    fn watch_interval_defaults_and_limits() {
        assert_eq!(watch_interval(None).unwrap(), DEFAULT_WATCH_INTERVAL);
        let ms = |n: i32| prost_types::Duration {
            seconds: 0,
            nanos: n * 1_000_000,
        };
        assert_eq!(
            watch_interval(Some(ms(250))).unwrap(),
            Duration::from_millis(250)
        );

        let too_small = watch_interval(Some(ms(99))).unwrap_err();
        assert_eq!(too_small.code(), tonic::Code::InvalidArgument);
        assert!(too_small.message().contains("interval"), "{too_small:?}");

        let negative = watch_interval(Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }))
        .unwrap_err();
        assert_eq!(negative.code(), tonic::Code::InvalidArgument);
        assert!(negative.message().contains("interval"), "{negative:?}");
    }
}
