//! What cgnatctl prints: serde views of the API replies (the stable JSON/YAML
//! shapes scripts and tests parse) and their table renderings.
//!
//! Maps are `BTreeMap` so JSON keys and table rows come out sorted and the
//! output is the same on every run.

use std::collections::BTreeMap;
use std::time::Duration;

use cgnat::v1;
use serde::Serialize;

use super::format::{Align, Table, group_thousands, human_duration, link_speed, rate};

/// `cgnatctl info` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InfoView {
    /// cgnatd version.
    pub version: String,
    /// DPDK version string.
    pub dpdk_version: String,
    /// Whole seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Start time as RFC 3339 UTC, whole seconds; empty if the server sent none.
    pub started_at: String,
    /// Number of data-plane workers.
    pub workers: u32,
    /// Generation of the applied configuration.
    pub config_generation: u64,
}

impl From<&v1::Info> for InfoView {
    fn from(info: &v1::Info) -> Self {
        InfoView {
            version: info.version.clone(),
            dpdk_version: info.dpdk_version.clone(),
            uptime_seconds: info
                .uptime
                .map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0)),
            started_at: info.started_at.map_or_else(String::new, |t| {
                // Sub-second digits only add noise for a start time.
                prost_types::Timestamp {
                    seconds: t.seconds,
                    nanos: 0,
                }
                .to_string()
            }),
            workers: info.workers,
            config_generation: info.config_generation,
        }
    }
}

/// Renders `info` as aligned `Key: value` lines.
pub fn info_table(info: &InfoView) -> String {
    let uptime = human_duration(Duration::from_secs(info.uptime_seconds));
    let rows = [
        ("Version", info.version.clone()),
        ("DPDK", info.dpdk_version.clone()),
        ("Uptime", uptime),
        ("Started", info.started_at.clone()),
        ("Workers", info.workers.to_string()),
        ("Config generation", info.config_generation.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

/// `cgnatctl stats` output; JSON shape
/// `{"totals":{..},"drops":{..},"ports_by_address":{..},"workers":[{"worker","lcore","counters","drops","ports_by_address"}],
/// "snat_rules":[{"index","match","pool","sessions_opened","flows_refused"}],
/// "pools":[{"name","ports_in_use","ports_total","blocks_in_use","retired"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct StatsView {
    /// Counters summed over workers.
    pub totals: BTreeMap<String, u64>,
    /// Drops by reason summed over workers, zeros included.
    pub drops: BTreeMap<String, u64>,
    /// Ports in use per pool address, summed over workers, idle addresses included.
    pub ports_by_address: BTreeMap<String, u64>,
    /// Per-worker detail, ordered by worker index.
    pub workers: Vec<WorkerView>,
    /// Per SNAT rule, in policy order.
    pub snat_rules: Vec<SnatRuleView>,
    /// Per pool.
    pub pools: Vec<PoolStatsView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnatRuleView {
    pub index: u32,
    #[serde(rename = "match")]
    pub matches: String,
    pub pool: String,
    pub sessions_opened: u64,
    pub flows_refused: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolStatsView {
    pub name: String,
    pub ports_in_use: u64,
    pub ports_total: u64,
    pub blocks_in_use: u64,
    pub retired: bool,
}

/// One worker in [`StatsView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// Worker index.
    pub worker: u32,
    /// lcore the worker runs on.
    pub lcore: u32,
    /// Counters by name.
    pub counters: BTreeMap<String, u64>,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
    /// Ports in use per pool address.
    pub ports_by_address: BTreeMap<String, u64>,
    /// Whether the worker has stopped, and why (`failure`), as `WorkerStats` has them; both
    /// absent while it runs, so a healthy daemon's stats keep their shape.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl From<&v1::Stats> for StatsView {
    fn from(stats: &v1::Stats) -> Self {
        let sorted = |m: &std::collections::HashMap<String, u64>| {
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let mut workers: Vec<WorkerView> = stats
            .workers
            .iter()
            .map(|w| WorkerView {
                worker: w.worker,
                lcore: w.lcore,
                counters: sorted(&w.counters),
                drops: sorted(&w.drops),
                ports_by_address: sorted(&w.ports_by_address),
                failed: w.failed,
                failure: w.failed.then(|| w.failure.clone()),
            })
            .collect();
        workers.sort_by_key(|w| w.worker);
        StatsView {
            totals: sorted(&stats.totals),
            drops: sorted(&stats.drops),
            ports_by_address: sorted(&stats.ports_by_address),
            workers,
            snat_rules: stats
                .snat_rules
                .iter()
                .map(|r| SnatRuleView {
                    index: r.index,
                    matches: r.r#match.clone(),
                    pool: r.pool.clone(),
                    sessions_opened: r.sessions_opened,
                    flows_refused: r.flows_refused,
                })
                .collect(),
            pools: stats
                .pools
                .iter()
                .map(|p| PoolStatsView {
                    name: p.name.clone(),
                    ports_in_use: p.ports_in_use,
                    ports_total: p.ports_total,
                    blocks_in_use: p.blocks_in_use,
                    retired: p.retired,
                })
                .collect(),
        }
    }
}

/// How `stats` is laid out as a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsTableOptions {
    /// Add one column per worker.
    pub per_worker: bool,
    /// Show drop reasons whose count is zero.
    pub all_drops: bool,
}

/// Per-second change of each total between two samples, for `--watch`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rates {
    /// Rate of each counter total.
    pub totals: BTreeMap<String, f64>,
    /// Rate of each drop total.
    pub drops: BTreeMap<String, f64>,
}

impl Rates {
    /// Rates from `prev` to `cur` taken `elapsed` apart. Names missing from
    /// `prev` count from zero; gauges (e.g. `sessions_current`) get signed rates.
    pub fn between(prev: &StatsView, cur: &StatsView, elapsed: Duration) -> Rates {
        let secs = elapsed.as_secs_f64();
        let diff = |old: &BTreeMap<String, u64>, new: &BTreeMap<String, u64>| {
            new.iter()
                .map(|(name, &n)| {
                    let o = old.get(name).copied().unwrap_or(0);
                    // i128 holds any difference of two u64 exactly.
                    let delta = (i128::from(n) - i128::from(o)) as f64;
                    let per_sec = if secs > 0.0 { delta / secs } else { 0.0 };
                    (name.clone(), per_sec)
                })
                .collect()
        };
        Rates {
            totals: diff(&prev.totals, &cur.totals),
            drops: diff(&prev.drops, &cur.drops),
        }
    }
}

/// Renders `stats` as two tables, counters then drops (non-zero only unless
/// `all_drops`), optionally with a column per worker and a rate column.
pub fn stats_table(stats: &StatsView, opts: StatsTableOptions, rates: Option<&Rates>) -> String {
    // First, where nobody can miss it: a stopped worker's counters stand still while its traffic
    // is dropped.
    let mut out: String = stats
        .workers
        .iter()
        .filter_map(|w| {
            let why = w.failure.as_deref().filter(|_| w.failed)?;
            Some(format!(
                "WORKER {} (lcore {}) HAS STOPPED ({why}): the traffic it owns is dropped; restart cgnatd\n",
                w.worker, w.lcore
            ))
        })
        .collect();
    if !out.is_empty() {
        out.push('\n');
    }
    out += &section(
        "COUNTER",
        &stats.totals,
        |w| &w.counters,
        stats,
        opts,
        rates.map(|r| &r.totals),
        |_| true,
    );
    out.push('\n');
    let drops = section(
        "DROP REASON",
        &stats.drops,
        |w| &w.drops,
        stats,
        opts,
        rates.map(|r| &r.drops),
        |n| opts.all_drops || n > 0,
    );
    if drops.is_empty() {
        out.push_str("No drops.\n");
    } else {
        out.push_str(&drops);
    }
    let ports = section(
        "POOL ADDRESS (PORTS IN USE)",
        &stats.ports_by_address,
        |w| &w.ports_by_address,
        stats,
        opts,
        None,
        |n| opts.all_drops || n > 0,
    );
    if !ports.is_empty() {
        out.push('\n');
        out.push_str(&ports);
    }
    if !stats.snat_rules.is_empty() {
        let mut t = Table::new([
            ("#", Align::Right),
            ("SNAT RULE", Align::Left),
            ("POOL", Align::Left),
            ("SESSIONS OPENED", Align::Right),
            ("REFUSED", Align::Right),
        ]);
        for r in &stats.snat_rules {
            t.row(vec![
                r.index.to_string(),
                r.matches.clone(),
                r.pool.clone(),
                group_thousands(r.sessions_opened),
                group_thousands(r.flows_refused),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !stats.pools.is_empty() {
        let mut t = Table::new([
            ("POOL", Align::Left),
            ("PORTS IN USE", Align::Right),
            ("OF", Align::Right),
            ("BLOCKS", Align::Right),
        ]);
        for p in &stats.pools {
            let name = if p.retired {
                format!("{} (retired)", p.name)
            } else {
                p.name.clone()
            };
            t.row(vec![
                name,
                group_thousands(p.ports_in_use),
                group_thousands(p.ports_total),
                group_thousands(p.blocks_in_use),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// One table of `stats_table`; empty string if no row passes `keep`.
fn section(
    title: &str,
    totals: &BTreeMap<String, u64>,
    of_worker: impl Fn(&WorkerView) -> &BTreeMap<String, u64>,
    stats: &StatsView,
    opts: StatsTableOptions,
    rates: Option<&BTreeMap<String, f64>>,
    keep: impl Fn(u64) -> bool,
) -> String {
    let mut columns = vec![
        (title.to_owned(), Align::Left),
        ("TOTAL".to_owned(), Align::Right),
    ];
    if rates.is_some() {
        columns.push(("RATE".to_owned(), Align::Right));
    }
    if opts.per_worker {
        columns.extend(
            stats
                .workers
                .iter()
                .map(|w| (format!("w{}/lc{}", w.worker, w.lcore), Align::Right)),
        );
    }
    let mut table = Table::new(columns);
    for (name, &total) in totals.iter().filter(|&(_, &n)| keep(n)) {
        let mut row = vec![name.clone(), group_thousands(total)];
        if let Some(rates) = rates {
            row.push(rate(rates.get(name).copied().unwrap_or(0.0)));
        }
        if opts.per_worker {
            // A worker that does not report a name has not counted it: 0.
            row.extend(
                stats
                    .workers
                    .iter()
                    .map(|w| group_thousands(of_worker(w).get(name).copied().unwrap_or(0))),
            );
        }
        table.row(row);
    }
    if table.is_empty() {
        String::new()
    } else {
        table.render()
    }
}

/// `cgnatctl ports` output; JSON shape `{"ports":[PortView,..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortsView {
    /// Ports ordered by port id.
    pub ports: Vec<PortView>,
}

/// One port in [`PortsView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortView {
    /// Configured name.
    pub name: String,
    /// "inside", "outside" or "unspecified".
    pub role: String,
    /// DPDK port id.
    pub port_id: u32,
    /// PCI address or vdev spec.
    pub device: String,
    /// DPDK driver.
    pub driver: String,
    /// MAC address.
    pub mac: String,
    /// Address with prefix length.
    pub address: String,
    /// Link state.
    pub link_up: bool,
    /// Link speed in Mbit/s, 0 if unknown.
    pub speed_mbps: u32,
    /// NIC counters.
    pub counters: PortCountersView,
    /// How the port's packets reach the worker owning their flow.
    pub steering: SteeringView,
}

/// [`PortView::steering`]: the NIC steers flows to their owner, or the workers hand them over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SteeringView {
    /// "single_worker", "rte_flow", "software_handoff" or "unspecified".
    pub mode: String,
    /// rte_flow rules installed on the port.
    pub rules: u32,
    /// Why the device took no rules (software handoff), empty otherwise.
    pub reason: String,
}

impl SteeringView {
    /// The table cell: the mode, with the rule count where there are rules.
    fn cell(&self) -> String {
        match self.mode.as_str() {
            "rte_flow" => format!("rte_flow ({} rules)", self.rules),
            "software_handoff" => "handoff".to_owned(),
            "single_worker" => "one worker".to_owned(),
            other => other.to_owned(),
        }
    }
}

impl From<Option<&v1::Steering>> for SteeringView {
    fn from(s: Option<&v1::Steering>) -> Self {
        use v1::SteeringMode as Mode;
        // A server from before steering was reported sends none: unspecified, not an error.
        let Some(s) = s else {
            return SteeringView {
                mode: "unspecified".to_owned(),
                rules: 0,
                reason: String::new(),
            };
        };
        let mode = match s.mode() {
            Mode::Unspecified => "unspecified",
            Mode::SingleWorker => "single_worker",
            Mode::RteFlow => "rte_flow",
            Mode::SoftwareHandoff => "software_handoff",
        };
        SteeringView {
            mode: mode.to_owned(),
            rules: s.rules,
            reason: s.reason.clone(),
        }
    }
}

/// NIC counters of a [`PortView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PortCountersView {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Dropped by the NIC, RX ring full.
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

fn role_name(role: v1::Role) -> &'static str {
    match role {
        v1::Role::Unspecified => "unspecified",
        v1::Role::Inside => "inside",
        v1::Role::Outside => "outside",
    }
}

impl From<&v1::ListPortsResponse> for PortsView {
    fn from(resp: &v1::ListPortsResponse) -> Self {
        let mut ports: Vec<PortView> = resp
            .ports
            .iter()
            .map(|p| {
                let c = p.counters.unwrap_or_default();
                PortView {
                    name: p.name.clone(),
                    // An unknown enum value from a newer server reads as
                    // unspecified rather than failing the whole listing.
                    role: role_name(p.role()).to_owned(),
                    port_id: p.port_id,
                    device: p.device.clone(),
                    driver: p.driver.clone(),
                    mac: p.mac.clone(),
                    address: p.address.clone(),
                    link_up: p.link_up,
                    speed_mbps: p.speed_mbps,
                    counters: PortCountersView {
                        rx_packets: c.rx_packets,
                        tx_packets: c.tx_packets,
                        rx_bytes: c.rx_bytes,
                        tx_bytes: c.tx_bytes,
                        rx_missed: c.rx_missed,
                        rx_errors: c.rx_errors,
                        tx_errors: c.tx_errors,
                        rx_nombuf: c.rx_nombuf,
                    },
                    steering: SteeringView::from(p.steering.as_ref()),
                }
            })
            .collect();
        ports.sort_by_key(|p| p.port_id);
        PortsView { ports }
    }
}

/// Renders ports as two tables: identity, link and steering, then NIC counters; below them, why
/// a port's flows are handed off rather than steered by the NIC.
pub fn ports_table(ports: &PortsView) -> String {
    if ports.ports.is_empty() {
        return "No ports.\n".to_owned();
    }
    let mut identity = Table::new([
        ("NAME", Align::Left),
        ("ROLE", Align::Left),
        ("PORT", Align::Right),
        ("DRIVER", Align::Left),
        ("DEVICE", Align::Left),
        ("MAC", Align::Left),
        ("ADDRESS", Align::Left),
        ("LINK", Align::Left),
        ("SPEED", Align::Right),
        ("STEERING", Align::Left),
    ]);
    let mut counters = Table::new([
        ("NAME", Align::Left),
        ("RX_PKTS", Align::Right),
        ("RX_BYTES", Align::Right),
        ("TX_PKTS", Align::Right),
        ("TX_BYTES", Align::Right),
        ("RX_MISSED", Align::Right),
        ("RX_ERRORS", Align::Right),
        ("TX_ERRORS", Align::Right),
        ("RX_NOMBUF", Align::Right),
    ]);
    for p in &ports.ports {
        identity.row(vec![
            p.name.clone(),
            p.role.clone(),
            p.port_id.to_string(),
            p.driver.clone(),
            p.device.clone(),
            p.mac.clone(),
            p.address.clone(),
            if p.link_up { "up" } else { "down" }.to_owned(),
            link_speed(p.speed_mbps),
            p.steering.cell(),
        ]);
        let c = &p.counters;
        counters.row(
            std::iter::once(p.name.clone())
                .chain(
                    [
                        c.rx_packets,
                        c.rx_bytes,
                        c.tx_packets,
                        c.tx_bytes,
                        c.rx_missed,
                        c.rx_errors,
                        c.tx_errors,
                        c.rx_nombuf,
                    ]
                    .map(group_thousands),
                )
                .collect(),
        );
    }
    let mut text = format!("{}\n{}", identity.render(), counters.render());
    let handed: Vec<&PortView> = ports
        .ports
        .iter()
        .filter(|p| p.steering.mode == "software_handoff")
        .collect();
    if !handed.is_empty() {
        text.push('\n');
    }
    for p in handed {
        text.push_str(&format!(
            "{}: flows reach their owner by handoff: {}\n",
            p.name, p.steering.reason
        ));
    }
    text
}

/// `cgnatctl health` output; JSON shape `{"service":"","status":"SERVING"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthView {
    /// Service checked; empty means the server as a whole.
    pub service: String,
    /// grpc.health.v1 status name: SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN.
    pub status: String,
}

/// Renders health as one line, e.g. `SERVING` or `cgnat.v1.Cgnat: SERVING`.
pub fn health_line(health: &HealthView) -> String {
    if health.service.is_empty() {
        format!("{}\n", health.status)
    } else {
        format!("{}: {}\n", health.service, health.status)
    }
}

/// One session in `cgnatctl sessions list`; JSON shape
/// `{"protocol","inside","outside","remote","state","tcp_state","inbound","hairpin","idle_seconds","expires_in_seconds","worker"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    pub protocol: String,
    pub inside: String,
    pub outside: String,
    pub remote: String,
    /// `new` or `established`.
    pub state: String,
    /// TCP only; empty otherwise.
    pub tcp_state: String,
    pub inbound: bool,
    pub hairpin: bool,
    pub idle_seconds: u64,
    pub expires_in_seconds: u64,
    pub worker: u32,
}

impl From<&v1::Session> for SessionView {
    fn from(s: &v1::Session) -> Self {
        let secs = |d: &Option<prost_types::Duration>| d.map_or(0, |d| d.seconds.max(0) as u64);
        SessionView {
            protocol: s.protocol.clone(),
            inside: s.inside.clone(),
            outside: s.outside.clone(),
            remote: s.remote.clone(),
            state: match v1::SessionState::try_from(s.state) {
                Ok(v1::SessionState::New) => "new",
                Ok(v1::SessionState::Established) => "established",
                _ => "unknown",
            }
            .to_owned(),
            tcp_state: s.tcp_state.clone(),
            inbound: s.inbound,
            hairpin: s.hairpin,
            idle_seconds: secs(&s.idle),
            expires_in_seconds: secs(&s.expires_in),
            worker: s.worker,
        }
    }
}

/// `cgnatctl sessions list` as a table, one session per line, sorted as given.
pub fn sessions_table(sessions: &Vec<SessionView>) -> String {
    let mut t = Table::new([
        ("PROTO", Align::Left),
        ("INSIDE", Align::Left),
        ("OUTSIDE", Align::Left),
        ("REMOTE", Align::Left),
        ("STATE", Align::Left),
        ("IDLE", Align::Right),
        ("EXPIRES", Align::Right),
        ("WORKER", Align::Right),
        ("FLAGS", Align::Left),
    ]);
    for s in sessions {
        // TCP's own state says more (and implies new/established).
        let state = if s.tcp_state.is_empty() {
            s.state.clone()
        } else {
            s.tcp_state.clone()
        };
        let mut flags = Vec::new();
        if s.inbound {
            flags.push("inbound");
        }
        if s.hairpin {
            flags.push("hairpin");
        }
        t.row(vec![
            s.protocol.clone(),
            s.inside.clone(),
            s.outside.clone(),
            s.remote.clone(),
            state,
            human_duration(Duration::from_secs(s.idle_seconds)),
            human_duration(Duration::from_secs(s.expires_in_seconds)),
            s.worker.to_string(),
            flags.join(","),
        ]);
    }
    t.render()
}

/// One line of `cgnatctl sessions watch`; JSON shape
/// `{"event","protocol","inside","outside","remote","inbound","worker","dropped"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionEventView {
    /// `snapshot`, `created`, `deleted` or `dropped`.
    pub event: String,
    pub protocol: String,
    pub inside: String,
    pub outside: String,
    pub remote: String,
    pub inbound: bool,
    pub worker: u32,
    /// For `dropped`: how many events this watcher missed.
    pub dropped: u64,
}

impl From<&v1::SessionEvent> for SessionEventView {
    fn from(e: &v1::SessionEvent) -> Self {
        let s = e.session.clone().unwrap_or_default();
        SessionEventView {
            event: match v1::SessionEventType::try_from(e.r#type) {
                Ok(v1::SessionEventType::Snapshot) => "snapshot",
                Ok(v1::SessionEventType::Created) => "created",
                Ok(v1::SessionEventType::Deleted) => "deleted",
                Ok(v1::SessionEventType::Dropped) => "dropped",
                _ => "unknown",
            }
            .to_owned(),
            protocol: s.protocol,
            inside: s.inside,
            outside: s.outside,
            remote: s.remote,
            inbound: s.inbound,
            worker: s.worker,
            dropped: e.dropped,
        }
    }
}

/// `[created] udp 100.64.0.11:5000 -> 203.0.113.2:40001 remote 198.51.100.10:7000 worker 0`.
pub fn session_event_line(e: &SessionEventView) -> String {
    if e.event == "dropped" {
        return format!(
            "[dropped] {} events missed (this watcher read too slowly)\n",
            e.dropped
        );
    }
    format!(
        "[{}] {} {} -> {} remote {}{} worker {}\n",
        e.event,
        e.protocol,
        e.inside,
        e.outside,
        e.remote,
        if e.inbound { " inbound" } else { "" },
        e.worker
    )
}

/// `cgnatctl pools` output; JSON shape `{"pools":[PoolView,..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolsView {
    pub pools: Vec<PoolView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolView {
    pub name: String,
    pub addresses: Vec<String>,
    pub ports: String,
    pub masquerade: bool,
    pub filtering: String,
    pub allocation: String,
    pub ports_total: u64,
    pub ports_in_use: u64,
    /// Ports in use per address, in address order.
    pub by_address: BTreeMap<String, u64>,
    /// Port blocks held by subscribers (port block allocation).
    pub blocks_in_use: u64,
    /// Removed from the policy, draining its sessions.
    pub retired: bool,
}

impl From<&v1::ListPoolsResponse> for PoolsView {
    fn from(r: &v1::ListPoolsResponse) -> Self {
        PoolsView {
            pools: r
                .pools
                .iter()
                .map(|p| PoolView {
                    name: p.name.clone(),
                    addresses: p.addresses.clone(),
                    ports: p.ports.clone(),
                    masquerade: p.masquerade,
                    filtering: p.filtering.clone(),
                    allocation: p.allocation.clone(),
                    ports_total: p.ports_total,
                    ports_in_use: p.ports_in_use,
                    by_address: p
                        .by_address
                        .iter()
                        .map(|a| (a.address.clone(), a.ports_in_use))
                        .collect(),
                    blocks_in_use: p.blocks_in_use,
                    retired: p.retired,
                })
                .collect(),
        }
    }
}

/// `cgnatctl pools` as a table; with `addresses`, a second table of every address in use.
pub fn pools_table(v: &PoolsView, addresses: bool) -> String {
    let mut t = Table::new([
        ("POOL", Align::Left),
        ("ADDRESSES", Align::Left),
        ("PORTS", Align::Left),
        ("ALLOCATION", Align::Left),
        ("FILTERING", Align::Left),
        ("IN USE", Align::Right),
        ("TOTAL", Align::Right),
        ("USE", Align::Right),
    ]);
    for p in &v.pools {
        let share = if p.ports_total == 0 {
            0.0
        } else {
            p.ports_in_use as f64 * 100.0 / p.ports_total as f64
        };
        let addrs = if p.masquerade {
            format!("{} (masquerade)", p.addresses.join(","))
        } else {
            p.addresses.join(",")
        };
        let name = if p.retired {
            format!("{} (retired, draining)", p.name)
        } else {
            p.name.clone()
        };
        let allocation = if p.allocation == "blocks" {
            format!("blocks ({} in use)", group_thousands(p.blocks_in_use))
        } else {
            p.allocation.clone()
        };
        t.row(vec![
            name,
            addrs,
            p.ports.clone(),
            allocation,
            p.filtering.clone(),
            group_thousands(p.ports_in_use),
            group_thousands(p.ports_total),
            format!("{share:.1}%"),
        ]);
    }
    let mut out = t.render();
    if addresses {
        let mut a = Table::new([
            ("POOL", Align::Left),
            ("ADDRESS", Align::Left),
            ("PORTS IN USE", Align::Right),
        ]);
        for p in &v.pools {
            for (addr, n) in &p.by_address {
                a.row(vec![p.name.clone(), addr.clone(), group_thousands(*n)]);
            }
        }
        out.push('\n');
        out.push_str(&a.render());
    }
    out
}

/// `cgnatctl dnat` output; JSON shape
/// `{"generation":N,"rules":[{"name","address","protocol","port","scheduler","snat","affinity_timeout_s","on_backend_removal","retired","packets","bytes","sessions_created","sessions_current","backends":[{"address","port","weight","retired","packets","bytes","sessions_created","sessions_current"}]}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnatView {
    /// Generation of the rule set; grows on every reload that changed it.
    pub generation: u64,
    /// Rules in the server's (configuration) order.
    pub rules: Vec<DnatRuleView>,
}

/// One rule in [`DnatView`]; its counters are the sums over its backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnatRuleView {
    pub name: String,
    pub address: String,
    /// `tcp`, `udp`, or `any` for an address-only rule.
    pub protocol: String,
    /// 0 for an address-only rule.
    pub port: u32,
    /// `random`, `round_robin` or `maglev`.
    pub scheduler: String,
    /// Full NAT pool; `null` when the backends see the client's address.
    pub snat: Option<String>,
    /// Client-IP affinity in whole seconds; 0 when off.
    pub affinity_timeout_s: u64,
    /// `drain` or `cut`.
    pub on_backend_removal: String,
    pub retired: bool,
    pub packets: u64,
    pub bytes: u64,
    pub sessions_created: u64,
    pub sessions_current: u64,
    pub backends: Vec<DnatBackendView>,
}

/// One backend of a [`DnatRuleView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnatBackendView {
    pub address: String,
    /// 0 keeps the client's destination port.
    pub port: u32,
    pub weight: u32,
    pub retired: bool,
    pub packets: u64,
    pub bytes: u64,
    pub sessions_created: u64,
    pub sessions_current: u64,
}

impl From<&v1::ListDnatRulesResponse> for DnatView {
    fn from(r: &v1::ListDnatRulesResponse) -> Self {
        let rule = |r: &v1::DnatRule| DnatRuleView {
            name: r.name.clone(),
            address: r.address.clone(),
            // An address-only rule matches every protocol; say so even if a server left it empty.
            protocol: if r.protocol.is_empty() {
                "any".to_owned()
            } else {
                r.protocol.clone()
            },
            port: r.port,
            scheduler: r.scheduler.clone(),
            snat: (!r.snat_pool.is_empty()).then(|| r.snat_pool.clone()),
            affinity_timeout_s: r
                .affinity_timeout
                .map_or(0, |d| u64::try_from(d.seconds).unwrap_or(0)),
            on_backend_removal: r.on_backend_removal.clone(),
            retired: r.retired,
            packets: r.packets,
            bytes: r.bytes,
            sessions_created: r.sessions_created,
            sessions_current: r.sessions_current,
            backends: r
                .backends
                .iter()
                .map(|b| DnatBackendView {
                    address: b.address.clone(),
                    port: b.port,
                    weight: b.weight,
                    retired: b.retired,
                    packets: b.packets,
                    bytes: b.bytes,
                    sessions_created: b.sessions_created,
                    sessions_current: b.sessions_current,
                })
                .collect(),
        };
        DnatView {
            generation: r.generation,
            rules: r.rules.iter().map(rule).collect(),
        }
    }
}

/// `retired` once no longer configured, `draining` while such a rule or backend still has sessions.
fn retired_marker(retired: bool, sessions_current: u64) -> Option<&'static str> {
    match (retired, sessions_current) {
        (false, _) => None,
        (true, 0) => Some("retired"),
        (true, _) => Some("draining"),
    }
}

/// `cgnatctl dnat` as a table: the generation, then one line per rule (what it matches, scheduler,
/// full-NAT pool, sessions open and created, packets, bytes) followed by its backends, indented.
pub fn dnat_table(v: &DnatView) -> String {
    let mut out = format!("Generation: {}\n", v.generation);
    if v.rules.is_empty() {
        out.push_str("No destination NAT rules.\n");
        return out;
    }
    let mut t = Table::new([
        ("RULE / BACKEND", Align::Left),
        ("MATCH", Align::Left),
        ("SCHEDULER", Align::Left),
        ("SNAT", Align::Left),
        ("WEIGHT", Align::Right),
        ("SESSIONS", Align::Right),
        ("CREATED", Align::Right),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
        ("FLAGS", Align::Left),
    ]);
    for r in &v.rules {
        let matches = if r.port == 0 {
            format!("{} (address-only)", r.address)
        } else {
            format!("{}:{}/{}", r.address, r.port, r.protocol)
        };
        let mut flags = Vec::new();
        if r.affinity_timeout_s > 0 {
            flags.push(format!(
                "affinity {}",
                human_duration(Duration::from_secs(r.affinity_timeout_s))
            ));
        }
        // Drain is the default; only the other policy is worth a mention.
        if r.on_backend_removal != "drain" && !r.on_backend_removal.is_empty() {
            flags.push(format!("{} on removal", r.on_backend_removal));
        }
        flags.extend(retired_marker(r.retired, r.sessions_current).map(str::to_owned));
        t.row(vec![
            r.name.clone(),
            matches,
            // An address-only rule has one backend; no scheduler picks it.
            if r.port == 0 {
                "-".to_owned()
            } else {
                r.scheduler.clone()
            },
            r.snat.clone().unwrap_or_else(|| "-".to_owned()),
            String::new(),
            group_thousands(r.sessions_current),
            group_thousands(r.sessions_created),
            group_thousands(r.packets),
            group_thousands(r.bytes),
            flags.join(", "),
        ]);
        for b in &r.backends {
            let target = if b.port == 0 {
                b.address.clone()
            } else {
                format!("{}:{}", b.address, b.port)
            };
            t.row(vec![
                format!("  {target}"),
                String::new(),
                String::new(),
                String::new(),
                b.weight.to_string(),
                group_thousands(b.sessions_current),
                group_thousands(b.sessions_created),
                group_thousands(b.packets),
                group_thousands(b.bytes),
                retired_marker(b.retired, b.sessions_current)
                    .unwrap_or_default()
                    .to_owned(),
            ]);
        }
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn map(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    fn sample_stats() -> v1::Stats {
        v1::Stats {
            totals: map(&[("rx_packets", 1_234_567), ("tx_packets", 1_500)]),
            drops: map(&[("no_session", 10), ("out_of_ports", 0)]),
            ports_by_address: map(&[("203.0.113.1", 7), ("203.0.113.2", 0)]),
            // Deliberately out of order: output is sorted by worker index.
            workers: vec![
                v1::WorkerStats {
                    worker: 1,
                    lcore: 3,
                    counters: map(&[("rx_packets", 234_567), ("tx_packets", 500)]),
                    drops: map(&[("no_session", 4), ("out_of_ports", 0)]),
                    ports_by_address: map(&[("203.0.113.1", 2), ("203.0.113.2", 0)]),
                    ..Default::default()
                },
                v1::WorkerStats {
                    worker: 0,
                    lcore: 1,
                    counters: map(&[("rx_packets", 1_000_000), ("tx_packets", 1_000)]),
                    drops: map(&[("no_session", 6), ("out_of_ports", 0)]),
                    ports_by_address: map(&[("203.0.113.1", 5), ("203.0.113.2", 0)]),
                    ..Default::default()
                },
            ],
            snat_rules: vec![v1::SnatRuleStats {
                index: 0,
                r#match: "100.64.0.0/10".into(),
                pool: "lab".into(),
                sessions_opened: 1_200,
                flows_refused: 3,
            }],
            pools: vec![v1::PoolStats {
                name: "lab".into(),
                ports_in_use: 7,
                ports_total: 129_024,
                blocks_in_use: 0,
                retired: false,
            }],
        }
    }

    /// A stopped worker is named in JSON (only then: the shape of a healthy daemon's stats does
    /// not change) and heads the table.
    #[test]
    fn a_stopped_worker_is_shown_first() {
        let mut stats = sample_stats();
        stats.workers[0].failed = true;
        stats.workers[0].failure = "panicked".into();
        let view = StatsView::from(&stats);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["workers"][1]["failed"], true);
        assert_eq!(json["workers"][1]["failure"], "panicked");
        assert!(json["workers"][0].get("failed").is_none());
        assert!(json["workers"][0].get("failure").is_none());
        let table = stats_table(&view, StatsTableOptions::default(), None);
        assert!(
            table.starts_with(
                "WORKER 1 (lcore 3) HAS STOPPED (panicked): the traffic it owns is dropped; restart cgnatd\n\n"
            ),
            "{table}"
        );
        let healthy = stats_table(
            &StatsView::from(&sample_stats()),
            StatsTableOptions::default(),
            None,
        );
        assert!(!healthy.contains("STOPPED"));
    }

    /// The JSON shape is a contract with scripts and the end-to-end tests.
    #[test]
    fn stats_json_shape() {
        let json = serde_json::to_value(StatsView::from(&sample_stats())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "totals": {"rx_packets": 1_234_567, "tx_packets": 1_500},
                "drops": {"no_session": 10, "out_of_ports": 0},
                "ports_by_address": {"203.0.113.1": 7, "203.0.113.2": 0},
                "workers": [
                    {"worker": 0, "lcore": 1,
                     "counters": {"rx_packets": 1_000_000, "tx_packets": 1_000},
                     "drops": {"no_session": 6, "out_of_ports": 0},
                     "ports_by_address": {"203.0.113.1": 5, "203.0.113.2": 0}},
                    {"worker": 1, "lcore": 3,
                     "counters": {"rx_packets": 234_567, "tx_packets": 500},
                     "drops": {"no_session": 4, "out_of_ports": 0},
                     "ports_by_address": {"203.0.113.1": 2, "203.0.113.2": 0}},
                ],
                "snat_rules": [{"index": 0, "match": "100.64.0.0/10", "pool": "lab",
                                "sessions_opened": 1_200, "flows_refused": 3}],
                "pools": [{"name": "lab", "ports_in_use": 7, "ports_total": 129_024,
                           "blocks_in_use": 0, "retired": false}],
            })
        );
    }

    #[test]
    fn stats_table_hides_zero_drops_unless_asked() {
        let stats = StatsView::from(&sample_stats());
        let text = stats_table(&stats, StatsTableOptions::default(), None);
        assert_eq!(
            text,
            "COUNTER         TOTAL\n\
             rx_packets  1,234,567\n\
             tx_packets      1,500\n\
             \n\
             DROP REASON  TOTAL\n\
             no_session      10\n\
             \n\
             POOL ADDRESS (PORTS IN USE)  TOTAL\n\
             203.0.113.1                      7\n\
             \n\
             #  SNAT RULE      POOL  SESSIONS OPENED  REFUSED\n\
             0  100.64.0.0/10  lab             1,200        3\n\
             \n\
             POOL  PORTS IN USE       OF  BLOCKS\n\
             lab              7  129,024       0\n"
        );
        let all = stats_table(
            &stats,
            StatsTableOptions {
                all_drops: true,
                ..Default::default()
            },
            None,
        );
        assert!(all.contains("out_of_ports      0\n"), "{all}");
        assert!(
            all.contains("203.0.113.2                      0\n"),
            "{all}"
        );
    }

    #[test]
    fn sessions_read_like_conntrack() {
        let s = v1::Session {
            protocol: "tcp".into(),
            inside: "100.64.0.11:40000".into(),
            outside: "203.0.113.2:40002".into(),
            remote: "198.51.100.10:80".into(),
            state: v1::SessionState::Established as i32,
            tcp_state: "established".into(),
            inbound: false,
            hairpin: true,
            idle: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            expires_in: Some(prost_types::Duration {
                seconds: 7437,
                nanos: 0,
            }),
            worker: 1,
        };
        let v = vec![SessionView::from(&s)];
        assert_eq!(
            serde_json::to_value(&v[0]).unwrap(),
            serde_json::json!({
                "protocol": "tcp", "inside": "100.64.0.11:40000", "outside": "203.0.113.2:40002",
                "remote": "198.51.100.10:80", "state": "established", "tcp_state": "established",
                "inbound": false, "hairpin": true, "idle_seconds": 3, "expires_in_seconds": 7437,
                "worker": 1
            })
        );
        assert_eq!(
            sessions_table(&v),
            "PROTO  INSIDE             OUTSIDE            REMOTE            STATE        IDLE    EXPIRES  WORKER  FLAGS\n\
             tcp    100.64.0.11:40000  203.0.113.2:40002  198.51.100.10:80  established    3s  2h 3m 57s       1  hairpin\n"
        );
    }

    #[test]
    fn session_events_print_one_line_each() {
        let e = v1::SessionEvent {
            r#type: v1::SessionEventType::Created as i32,
            session: Some(v1::Session {
                protocol: "udp".into(),
                inside: "100.64.0.11:5000".into(),
                outside: "203.0.113.2:40001".into(),
                remote: "198.51.100.10:7000".into(),
                ..Default::default()
            }),
            dropped: 0,
        };
        assert_eq!(
            session_event_line(&SessionEventView::from(&e)),
            "[created] udp 100.64.0.11:5000 -> 203.0.113.2:40001 remote 198.51.100.10:7000 worker 0\n"
        );
        let d = v1::SessionEvent {
            r#type: v1::SessionEventType::Dropped as i32,
            session: None,
            dropped: 12,
        };
        assert_eq!(
            session_event_line(&SessionEventView::from(&d)),
            "[dropped] 12 events missed (this watcher read too slowly)\n"
        );
    }

    #[test]
    fn pools_show_their_usage() {
        let r = v1::ListPoolsResponse {
            pools: vec![v1::Pool {
                name: "lab".into(),
                addresses: vec!["203.0.113.1-203.0.113.6".into()],
                ports: "1024-65535".into(),
                masquerade: false,
                filtering: "endpoint-independent".into(),
                allocation: "random".into(),
                ports_total: 387_072,
                ports_in_use: 3_871,
                by_address: vec![v1::PoolAddress {
                    address: "203.0.113.1".into(),
                    ports_in_use: 3_871,
                    blocks_in_use: 0,
                }],
                blocks_in_use: 0,
                retired: false,
            }],
        };
        let v = PoolsView::from(&r);
        assert_eq!(
            pools_table(&v, false),
            "POOL  ADDRESSES                PORTS       ALLOCATION  FILTERING             IN USE    TOTAL   USE\n\
             lab   203.0.113.1-203.0.113.6  1024-65535  random      endpoint-independent   3,871  387,072  1.0%\n"
        );
        assert!(pools_table(&v, true).ends_with("lab   203.0.113.1         3,871\n"));
    }

    #[test]
    fn stats_table_without_drops_says_so() {
        let mut stats = StatsView::from(&sample_stats());
        stats.drops.values_mut().for_each(|n| *n = 0);
        stats.ports_by_address.values_mut().for_each(|n| *n = 0);
        let text = stats_table(&stats, StatsTableOptions::default(), None);
        assert!(text.contains("\nNo drops.\n\n#  SNAT RULE"), "{text}");
    }

    #[test]
    fn per_worker_table_has_a_column_per_worker() {
        let stats = StatsView::from(&sample_stats());
        let opts = StatsTableOptions {
            per_worker: true,
            all_drops: false,
        };
        let text = stats_table(&stats, opts, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "COUNTER         TOTAL     w0/lc1   w1/lc3");
        assert_eq!(lines[1], "rx_packets  1,234,567  1,000,000  234,567");
        assert_eq!(lines[5], "no_session      10       6       4");
    }

    #[test]
    fn watch_rates_are_per_second() {
        let prev = StatsView::from(&sample_stats());
        let mut cur = prev.clone();
        *cur.totals.get_mut("tx_packets").unwrap() += 1_000;
        *cur.drops.get_mut("no_session").unwrap() += 4;
        let rates = Rates::between(&prev, &cur, Duration::from_millis(500));
        assert_eq!(rates.totals["tx_packets"], 2_000.0);
        assert_eq!(rates.totals["rx_packets"], 0.0);
        assert_eq!(rates.drops["no_session"], 8.0);

        let text = stats_table(&cur, StatsTableOptions::default(), Some(&rates));
        assert!(text.contains("tx_packets      2,500  +2,000/s\n"), "{text}");
    }

    #[test]
    fn info_view_and_table() {
        let info = v1::Info {
            version: "0.1.0".into(),
            uptime: Some(prost_types::Duration {
                seconds: 10_925,
                nanos: 5,
            }),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            workers: 2,
            config_generation: 7,
            dpdk_version: "DPDK 22.11.4".into(),
        };
        let view = InfoView::from(&info);
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::json!({
                "version": "0.1.0",
                "dpdk_version": "DPDK 22.11.4",
                "uptime_seconds": 10_925,
                "started_at": "2023-11-14T22:13:20Z",
                "workers": 2,
                "config_generation": 7,
            })
        );
        assert_eq!(
            info_table(&view),
            "Version:           0.1.0\n\
             DPDK:              DPDK 22.11.4\n\
             Uptime:            3h 2m 5s\n\
             Started:           2023-11-14T22:13:20Z\n\
             Workers:           2\n\
             Config generation: 7\n"
        );
    }

    fn sample_ports() -> v1::ListPortsResponse {
        v1::ListPortsResponse {
            ports: vec![
                v1::Port {
                    name: "outside".into(),
                    role: v1::Role::Outside.into(),
                    port_id: 1,
                    device: "net_af_packet1,iface=cgn-out".into(),
                    driver: "net_af_packet".into(),
                    mac: "02:00:00:00:00:02".into(),
                    address: "192.0.2.1/24".into(),
                    link_up: false,
                    speed_mbps: 0,
                    counters: None,
                    steering: Some(v1::Steering {
                        mode: v1::SteeringMode::RteFlow.into(),
                        rules: 2,
                        reason: String::new(),
                    }),
                },
                v1::Port {
                    name: "inside".into(),
                    role: v1::Role::Inside.into(),
                    port_id: 0,
                    device: "net_af_packet0,iface=cgn-in".into(),
                    driver: "net_af_packet".into(),
                    mac: "02:00:00:00:00:01".into(),
                    address: "100.64.0.1/24".into(),
                    link_up: true,
                    speed_mbps: 10_000,
                    counters: Some(v1::PortCounters {
                        rx_packets: 1_500,
                        tx_packets: 2,
                        rx_bytes: 3,
                        tx_bytes: 4,
                        rx_missed: 5,
                        rx_errors: 6,
                        tx_errors: 7,
                        rx_nombuf: 8,
                    }),
                    steering: Some(v1::Steering {
                        mode: v1::SteeringMode::SoftwareHandoff.into(),
                        rules: 0,
                        reason: "rte_flow is not supported by net_af_packet".into(),
                    }),
                },
            ],
        }
    }

    #[test]
    fn ports_json_shape() {
        let json = serde_json::to_value(PortsView::from(&sample_ports())).unwrap();
        assert_eq!(
            json["ports"][0],
            serde_json::json!({
                "name": "inside", "role": "inside", "port_id": 0,
                "device": "net_af_packet0,iface=cgn-in", "driver": "net_af_packet",
                "mac": "02:00:00:00:00:01", "address": "100.64.0.1/24",
                "link_up": true, "speed_mbps": 10_000,
                "counters": {"rx_packets": 1_500, "tx_packets": 2, "rx_bytes": 3,
                             "tx_bytes": 4, "rx_missed": 5, "rx_errors": 6,
                             "tx_errors": 7, "rx_nombuf": 8},
                "steering": {"mode": "software_handoff", "rules": 0,
                             "reason": "rte_flow is not supported by net_af_packet"}
            })
        );
        assert_eq!(json["ports"][1]["role"], "outside");
        assert_eq!(json["ports"][1]["counters"]["rx_packets"], 0);
        assert_eq!(json["ports"][1]["steering"]["mode"], "rte_flow");
        assert_eq!(json["ports"][1]["steering"]["rules"], 2);
    }

    #[test]
    fn ports_table_layout() {
        let text = ports_table(&PortsView::from(&sample_ports()));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME     ROLE     PORT  DRIVER         DEVICE                        MAC                ADDRESS        LINK  SPEED  STEERING"
        );
        assert_eq!(
            lines[1],
            "inside   inside      0  net_af_packet  net_af_packet0,iface=cgn-in   02:00:00:00:00:01  100.64.0.1/24  up      10G  handoff"
        );
        assert!(
            lines[2].ends_with("down      -  rte_flow (2 rules)"),
            "{text}"
        );
        assert_eq!(lines[3], "");
        assert_eq!(
            lines[5],
            "inside     1,500         3        2         4          5          6          7          8"
        );
        // Only the port without rules says why.
        assert_eq!(
            &lines[7..],
            [
                "",
                "inside: flows reach their owner by handoff: rte_flow is not supported by net_af_packet"
            ],
            "{text}"
        );
    }

    fn sample_dnat() -> v1::ListDnatRulesResponse {
        let backend = |address: &str, port, weight, retired, n: u64| v1::DnatBackend {
            address: address.into(),
            port,
            weight,
            retired,
            packets: 100 * n,
            bytes: 10_000 * n,
            sessions_created: 10 * n,
            sessions_current: n,
        };
        v1::ListDnatRulesResponse {
            generation: 2,
            rules: vec![
                v1::DnatRule {
                    name: "web".into(),
                    address: "203.0.113.101".into(),
                    protocol: "tcp".into(),
                    port: 80,
                    scheduler: "random".into(),
                    affinity_timeout: Some(prost_types::Duration::default()),
                    snat_pool: String::new(),
                    on_backend_removal: "drain".into(),
                    retired: false,
                    packets: 600,
                    bytes: 60_000,
                    sessions_created: 60,
                    sessions_current: 6,
                    backends: vec![
                        backend("100.64.0.21", 8001, 1, false, 1),
                        backend("100.64.0.22", 8002, 2, false, 2),
                        backend("100.64.0.23", 8003, 3, true, 3),
                    ],
                },
                v1::DnatRule {
                    name: "web-fullnat".into(),
                    address: "203.0.113.102".into(),
                    protocol: "udp".into(),
                    port: 53,
                    scheduler: "maglev".into(),
                    affinity_timeout: Some(prost_types::Duration {
                        seconds: 10_800,
                        nanos: 0,
                    }),
                    snat_pool: "lab".into(),
                    on_backend_removal: "cut".into(),
                    retired: true,
                    packets: 0,
                    bytes: 0,
                    sessions_created: 0,
                    sessions_current: 0,
                    backends: vec![backend("100.64.0.23", 5353, 1, true, 0)],
                },
                v1::DnatRule {
                    name: "static-host".into(),
                    address: "203.0.113.50".into(),
                    protocol: "any".into(),
                    port: 0,
                    scheduler: "random".into(),
                    affinity_timeout: None,
                    snat_pool: String::new(),
                    on_backend_removal: "drain".into(),
                    retired: false,
                    packets: 500,
                    bytes: 50_000,
                    sessions_created: 50,
                    sessions_current: 5,
                    backends: vec![backend("100.64.0.24", 0, 1, false, 5)],
                },
            ],
        }
    }

    /// The JSON shape is a contract with scripts and the end-to-end tests (tests/e2e/dnat.rs).
    #[test]
    fn dnat_json_shape() {
        let json = serde_json::to_value(DnatView::from(&sample_dnat())).unwrap();
        assert_eq!(
            json["rules"][0],
            serde_json::json!({
                "name": "web", "address": "203.0.113.101", "protocol": "tcp", "port": 80,
                "scheduler": "random", "snat": null, "affinity_timeout_s": 0,
                "on_backend_removal": "drain", "retired": false,
                "packets": 600, "bytes": 60_000, "sessions_created": 60, "sessions_current": 6,
                "backends": [
                    {"address": "100.64.0.21", "port": 8001, "weight": 1, "retired": false,
                     "packets": 100, "bytes": 10_000, "sessions_created": 10, "sessions_current": 1},
                    {"address": "100.64.0.22", "port": 8002, "weight": 2, "retired": false,
                     "packets": 200, "bytes": 20_000, "sessions_created": 20, "sessions_current": 2},
                    {"address": "100.64.0.23", "port": 8003, "weight": 3, "retired": true,
                     "packets": 300, "bytes": 30_000, "sessions_created": 30, "sessions_current": 3},
                ]
            })
        );
        assert_eq!(json["generation"], 2);
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["generation", "rules"]);
        let fullnat = &json["rules"][1];
        assert_eq!(fullnat["protocol"], "udp");
        assert_eq!(fullnat["snat"], "lab");
        assert_eq!(fullnat["affinity_timeout_s"], 10_800);
        assert_eq!(fullnat["on_backend_removal"], "cut");
        assert_eq!(fullnat["retired"], true);
        let host = &json["rules"][2];
        assert_eq!(host["protocol"], "any");
        assert_eq!(host["port"], 0);
        assert_eq!(host["snat"], serde_json::Value::Null);
        assert_eq!(host["affinity_timeout_s"], 0);
        assert_eq!(host["backends"][0]["port"], 0);

        // Unset or empty fields still give the documented shape.
        let bare = v1::ListDnatRulesResponse {
            generation: 1,
            rules: vec![v1::DnatRule {
                name: "x".into(),
                ..Default::default()
            }],
        };
        let json = serde_json::to_value(DnatView::from(&bare)).unwrap();
        assert_eq!(json["rules"][0]["protocol"], "any");
        assert_eq!(json["rules"][0]["snat"], serde_json::Value::Null);
        assert_eq!(json["rules"][0]["affinity_timeout_s"], 0);
        assert_eq!(json["rules"][0]["backends"], serde_json::json!([]));
    }

    #[test]
    fn dnat_table_lists_rules_then_their_backends() {
        let text = dnat_table(&DnatView::from(&sample_dnat()));
        assert_eq!(
            text,
            "Generation: 2\n\
             RULE / BACKEND      MATCH                        SCHEDULER  SNAT  WEIGHT  SESSIONS  CREATED  PACKETS   BYTES  FLAGS\n\
             web                 203.0.113.101:80/tcp         random     -                    6       60      600  60,000\n\
            \x20 100.64.0.21:8001                                                     1         1       10      100  10,000\n\
            \x20 100.64.0.22:8002                                                     2         2       20      200  20,000\n\
            \x20 100.64.0.23:8003                                                     3         3       30      300  30,000  draining\n\
             web-fullnat         203.0.113.102:53/udp         maglev     lab                  0        0        0       0  affinity 3h, cut on removal, retired\n\
            \x20 100.64.0.23:5353                                                     1         0        0        0       0  retired\n\
             static-host         203.0.113.50 (address-only)  -          -                    5       50      500  50,000\n\
            \x20 100.64.0.24                                                          1         5       50      500  50,000\n"
        );
        let empty = DnatView {
            generation: 1,
            rules: vec![],
        };
        assert_eq!(
            dnat_table(&empty),
            "Generation: 1\nNo destination NAT rules.\n"
        );
    }

    #[test]
    fn health_line_names_the_service() {
        let mut h = HealthView {
            service: String::new(),
            status: "SERVING".into(),
        };
        assert_eq!(health_line(&h), "SERVING\n");
        h.service = "cgnat.v1.Cgnat".into();
        assert_eq!(health_line(&h), "cgnat.v1.Cgnat: SERVING\n");
    }
}
