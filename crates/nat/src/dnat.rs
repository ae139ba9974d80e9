//! Destination NAT rules: port forwarding, address-only 1:1 and identity mappings, and load-balanced
//! services (a virtual address:port in front of weighted backends), optionally with the client
//! translated too (full NAT).
//!
//! A [`DnatRule`] is plain data (what the configuration or the management plane says). A
//! [`DnatTable`] is the validated, immutable set the data plane reads: rule lookup by (address,
//! protocol, port), each rule's scheduler state that can be shared (Maglev table, cumulative
//! weights), and the per-worker counters. A new table is built for every change and swapped into the
//! workers whole; a flow keeps the backend it was given on its first packet because the session
//! records it, whatever the table says later.

use wire::ip_proto;

/// How a service picks the backend for a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Each backend with probability weight / total (kube-proxy's iptables mode). The default.
    #[default]
    WeightedRandom,
    /// Weighted round-robin: over every `total weight` new flows of a worker, each backend gets
    /// exactly its weight, interleaved.
    RoundRobin,
    /// Maglev consistent hashing of the flow's 5-tuple (Eisenbud et al., NSDI 2016): removing one of
    /// N backends moves about 1/N of the new-flow choices, not all of them.
    Maglev,
}

/// What happens to the sessions of a backend that a new rule set no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRemoval {
    /// Existing flows continue until they end; only new flows avoid the backend. The default.
    #[default]
    Drain,
    /// Existing flows are cut: their sessions are deleted when the new rules are published.
    Cut,
}

/// One backend of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Inside address (host order).
    pub addr: u32,
    /// Inside port; 0 keeps the port the client sent to (always 0 for address-only rules).
    pub port: u16,
    /// Relative share of new flows; 0 keeps the backend (its flows continue) but sends it no new ones.
    pub weight: u32,
}

/// One destination NAT rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatRule {
    /// Unique name, used in errors, counters and the API.
    pub name: String,
    /// The outside (virtual) address clients send to (host order).
    pub addr: u32,
    /// `Some(TCP | UDP)` with a `port`: port forwarding or a service. `None`: address-only, every
    /// protocol (TCP, UDP and ICMP echo) and port: 1:1 static NAT, or an identity mapping when the one
    /// backend's address equals `addr`.
    pub proto: Option<u8>,
    /// Outside port (0 for address-only rules).
    pub port: u16,
    pub backends: Vec<Backend>,
    pub scheduler: Scheduler,
    /// Client-IP affinity (Kubernetes `sessionAffinity: ClientIP`): new flows from a client go to
    /// the backend its previous flow got, until the client has been idle this many seconds. 0 = off.
    pub affinity_s: u32,
    /// Full NAT: the client is translated to an address:port of this pool (index into
    /// [`crate::Rules::pools`]), so the backend sees the NAT and replies through it whatever its
    /// routes (NodePort with `externalTrafficPolicy: Cluster`). `None` keeps the client address
    /// (`externalTrafficPolicy: Local`): the backend must route replies back through the NAT.
    pub snat_pool: Option<usize>,
    pub on_removal: OnRemoval,
}

impl DnatRule {
    /// Whether the rule is address-only (1:1 or identity).
    pub fn is_address_only(&self) -> bool {
        self.proto.is_none()
    }

    /// Whether the rule is an address-only mapping of a host onto itself (no translation at all).
    pub fn is_identity(&self) -> bool {
        self.proto.is_none() && self.backends.len() == 1 && self.backends[0].addr == self.addr
    }

    /// Sum of the backend weights.
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }

    /// Whether a packet to `addr`:`port` with protocol `proto` is this rule's.
    #[inline]
    pub fn matches(&self, addr: u32, proto: u8, port: u16) -> bool {
        addr == self.addr
            && match self.proto {
                None => matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP),
                Some(p) => p == proto && port == self.port,
            }
    }
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::NatError;
use crate::lb::{MAGLEV_SIZE, Maglev, RoundRobin, WeightedRandom};

/// Most backends (over all rules, counting each (rule, backend) pair once for the life of the process)
/// that have counters; a change that needs more is refused.
pub const MAX_BACKEND_IDS: usize = 16384;

/// Most rules in one table.
pub const MAX_RULES: usize = 4096;

/// The worker that owns a flow with an outside client `addr` (destination NAT flows, whose
/// inside end is a backend and whose outside end is the rule's): a hash of the client address, so
/// the client → VIP packets (outside) and the backend → client replies (inside) name the same worker
/// with no shared state, and one client's flows (and its affinity) stay on one worker.
#[inline]
pub fn client_owner(addr: u32, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    ((addr.wrapping_mul(0x9E37_79B1) >> 16) % u32::from(workers)) as u16
}

/// The worker that owns a subscriber (inside address) when `workers` workers share the load: the
/// address modulo the worker count (see the data plane's handoff module for why).
#[inline]
pub fn subscriber_owner(addr: u32, workers: u16) -> u16 {
    if workers <= 1 {
        return 0;
    }
    (addr % u32::from(workers)) as u16
}

/// Lookup key of a rule: address, protocol (0 = address-only) and port.
#[inline]
fn rule_key(addr: u32, proto: u8, port: u16) -> u64 {
    (u64::from(addr) << 24) | (u64::from(proto) << 16) | u64::from(port)
}

/// The counter identity of a backend: which rule (by its match, so a renamed rule keeps its
/// counters) and which backend.
type BackendKey = (u64, u32, u16);

/// Stable counter ids for (rule, backend) pairs, kept by the control plane across tables, so that
/// a backend that stays (or comes back) keeps its counters.
#[derive(Debug, Default, Clone)]
pub struct DnatIds {
    ids: HashMap<BackendKey, u32>,
}

impl DnatIds {
    fn id(&mut self, key: BackendKey) -> Result<u32, NatError> {
        if let Some(&id) = self.ids.get(&key) {
            return Ok(id);
        }
        let id = self.ids.len();
        if id >= MAX_BACKEND_IDS {
            return Err(NatError::Dnat(format!(
                "more than {MAX_BACKEND_IDS} distinct (rule, backend) pairs since start"
            )));
        }
        self.ids.insert(key, id as u32);
        Ok(id as u32)
    }
}

/// How a rule picks backends, built once per table.
#[derive(Debug)]
pub(crate) enum Picker {
    Random(WeightedRandom),
    RoundRobin(RoundRobin),
    Maglev(Box<Maglev>),
}

/// One backend as the data plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendEntry {
    pub backend: Backend,
    /// Counter id (index into [`DnatCounters`]).
    pub id: u32,
    /// No longer configured: kept (weight 0) only while its sessions drain, so they stay counted.
    pub retired: bool,
}

/// One rule as the data plane sees it.
#[derive(Debug)]
pub struct RuleEntry {
    pub rule: DnatRule,
    pub backends: Vec<BackendEntry>,
    /// No longer configured: matches no new flows, kept while its sessions drain.
    pub retired: bool,
    pub(crate) picker: Picker,
}

impl RuleEntry {
    /// The inside port a flow to outside port `port` gets on backend `b`.
    #[inline]
    pub fn backend_port(&self, b: &Backend, port: u16) -> u16 {
        if b.port == 0 { port } else { b.port }
    }
}

/// An immutable, validated set of destination NAT rules with everything the data plane needs to
/// look them up and schedule. Build a new one for every change ([`DnatTable::build`]).
#[derive(Debug, Default)]
pub struct DnatTable {
    pub generation: u64,
    rules: Vec<RuleEntry>,
    /// (rule key, rule index), sorted by key.
    keys: Vec<(u64, u16)>,
    /// Every rule address, sorted, deduplicated.
    vips: Vec<u32>,
    /// Every backend address, sorted, deduplicated.
    backend_addrs: Vec<u32>,
    /// (inside address, rule index) of the address-only rules, sorted: 1:1 NAT outbound.
    statics: Vec<(u32, u16)>,
}

impl DnatTable {
    /// An empty table (no destination NAT).
    pub fn empty() -> DnatTable {
        DnatTable::default()
    }

    /// Validate `rules` against the translation rules (`snat_pool` indexes, pool ports) and build
    /// the table, generation `generation`. `prev` is the table being replaced: its backends (and
    /// rules) that `rules` no longer has are kept, retired, while `live(id)` says they still have
    /// sessions, so those sessions stay counted and findable. `ids` keeps counter ids stable.
    pub fn build(
        rules: Vec<DnatRule>,
        nat: &crate::Rules,
        generation: u64,
        prev: Option<&DnatTable>,
        ids: &mut DnatIds,
        live: &dyn Fn(u32) -> bool,
    ) -> Result<DnatTable, NatError> {
        if rules.len() > MAX_RULES {
            return Err(NatError::Dnat(format!(
                "{} rules, at most {MAX_RULES}",
                rules.len()
            )));
        }
        let mut entries: Vec<RuleEntry> = Vec::with_capacity(rules.len());
        let mut keys: Vec<(u64, u16)> = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for r in &rules {
            names.push(&r.name);
        }
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(NatError::Dnat(format!("rule {:?} is defined twice", w[0])));
        }
        for r in rules {
            let what = |m: &str| NatError::Dnat(format!("rule {:?}: {m}", r.name));
            match r.proto {
                None if r.port != 0 => return Err(what("an address-only rule has no port")),
                None if r.backends.len() != 1 || r.backends[0].port != 0 => {
                    return Err(what(
                        "an address-only rule has exactly one backend, without a port",
                    ));
                }
                Some(p) if p != ip_proto::TCP && p != ip_proto::UDP => {
                    return Err(what("protocol must be TCP or UDP"));
                }
                Some(_) if r.port == 0 => return Err(what("port 0")),
                _ => {}
            }
            if r.backends.is_empty() {
                return Err(what("no backends"));
            }
            if r.total_weight() == 0 {
                return Err(what("zero total weight"));
            }
            if let Some(pi) = r.snat_pool {
                if nat.pools.get(pi).is_none_or(|p| p.retired) {
                    return Err(what("snat names a pool that does not exist"));
                }
                if r.proto.is_none() {
                    return Err(what("an address-only rule cannot translate the client"));
                }
            }
            for p in &nat.pools {
                if p.addrs.contains(&r.addr)
                    && (r.proto.is_none() || (p.port_lo..=p.port_hi).contains(&r.port))
                {
                    return Err(what(&format!(
                        "{}:{} is in pool {:?}'s ports (SNAT could hand it out)",
                        std::net::Ipv4Addr::from(r.addr),
                        r.port,
                        p.name
                    )));
                }
            }
            for b in &r.backends {
                if nat.is_pool_address(b.addr) {
                    return Err(what("a backend is a pool address"));
                }
            }
            let key = rule_key(r.addr, r.proto.unwrap_or(0), r.port);
            let mut backends = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                if backends
                    .iter()
                    .any(|e: &BackendEntry| e.backend.addr == b.addr && e.backend.port == b.port)
                {
                    return Err(what("the same backend is listed twice"));
                }
                backends.push(BackendEntry {
                    backend: *b,
                    id: ids.id((key, b.addr, b.port))?,
                    retired: false,
                });
            }
            // Backends the previous table had under the same match and this one dropped stay,
            // retired, while they have sessions: draining, or until the control plane has cut them.
            if let Some(old) = prev.and_then(|t| t.rule_by_key(key)) {
                for ob in &old.backends {
                    let gone = !backends.iter().any(|e| {
                        e.backend.addr == ob.backend.addr && e.backend.port == ob.backend.port
                    });
                    // A backend removed just now is kept one generation whatever its count says: a
                    // worker may open a flow on it until it takes this table.
                    if gone && (!ob.retired || live(ob.id)) {
                        backends.push(BackendEntry {
                            backend: Backend {
                                weight: 0,
                                ..ob.backend
                            },
                            id: ob.id,
                            retired: true,
                        });
                    }
                }
            }
            let idx = entries.len() as u16;
            keys.push((key, idx));
            let picker = picker_for(&r, &backends);
            entries.push(RuleEntry {
                rule: r,
                backends,
                retired: false,
                picker,
            });
        }
        // Whole rules that are gone but still have draining sessions.
        if let Some(prev) = prev {
            for old in &prev.rules {
                let key = rule_key(old.rule.addr, old.rule.proto.unwrap_or(0), old.rule.port);
                if keys.iter().any(|&(k, _)| k == key) {
                    continue;
                }
                let backends: Vec<BackendEntry> = old
                    .backends
                    .iter()
                    .filter(|b| !old.retired || live(b.id))
                    .map(|b| BackendEntry {
                        backend: Backend {
                            weight: 0,
                            ..b.backend
                        },
                        retired: true,
                        ..*b
                    })
                    .collect();
                if backends.is_empty() {
                    continue;
                }
                let idx = entries.len() as u16;
                keys.push((key, idx));
                let picker = picker_for(&old.rule, &backends);
                entries.push(RuleEntry {
                    rule: old.rule.clone(),
                    backends,
                    retired: true,
                    picker,
                });
            }
        }
        keys.sort_unstable();
        if let Some(w) = keys.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(NatError::Dnat(format!(
                "rules {:?} and {:?} match the same address, protocol and port",
                entries[w[0].1 as usize].rule.name, entries[w[1].1 as usize].rule.name
            )));
        }
        let mut vips: Vec<u32> = entries.iter().map(|e| e.rule.addr).collect();
        vips.sort_unstable();
        vips.dedup();
        // An address-only rule takes every port of its address.
        for e in entries.iter().filter(|e| e.rule.is_address_only()) {
            if entries
                .iter()
                .filter(|o| o.rule.addr == e.rule.addr)
                .count()
                > 1
            {
                return Err(NatError::Dnat(format!(
                    "rule {:?} maps every port of {}, which another rule also uses",
                    e.rule.name,
                    std::net::Ipv4Addr::from(e.rule.addr)
                )));
            }
        }
        let mut backend_addrs: Vec<u32> = entries
            .iter()
            .flat_map(|e| e.backends.iter().map(|b| b.backend.addr))
            .collect();
        backend_addrs.sort_unstable();
        backend_addrs.dedup();
        let mut statics: Vec<(u32, u16)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.rule.is_address_only() && !e.retired)
            .map(|(i, e)| (e.backends[0].backend.addr, i as u16))
            .collect();
        statics.sort_unstable();
        if let Some(w) = statics.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(NatError::Dnat(format!(
                "rules {:?} and {:?} both map inside address {} one to one",
                entries[w[0].1 as usize].rule.name,
                entries[w[1].1 as usize].rule.name,
                std::net::Ipv4Addr::from(w[0].0)
            )));
        }
        Ok(DnatTable {
            generation,
            rules: entries,
            keys,
            vips,
            backend_addrs,
            statics,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[RuleEntry] {
        &self.rules
    }

    /// The index of the rule with the same match as `r` (address, protocol, port).
    pub fn index_of(&self, r: &DnatRule) -> Option<u16> {
        let key = rule_key(r.addr, r.proto.unwrap_or(0), r.port);
        self.keys
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| self.keys[i].1)
    }

    fn rule_by_key(&self, key: u64) -> Option<&RuleEntry> {
        self.keys
            .binary_search_by_key(&key, |&(k, _)| k)
            .ok()
            .map(|i| &self.rules[self.keys[i].1 as usize])
    }

    /// The rule a packet to `addr`:`port` (protocol `proto`) belongs to: its exact rule, else the
    /// address-only rule of `addr`.
    #[inline]
    pub fn find(&self, addr: u32, proto: u8, port: u16) -> Option<u16> {
        if self.keys.is_empty() {
            return None;
        }
        let exact = rule_key(addr, proto, port);
        let any = rule_key(addr, 0, 0);
        [exact, any]
            .into_iter()
            .find_map(|k| {
                self.keys
                    .binary_search_by_key(&k, |&(k, _)| k)
                    .ok()
                    .map(|i| self.keys[i].1)
            })
            .filter(|&r| {
                let e = &self.rules[r as usize];
                e.rule.proto.is_some()
                    || matches!(proto, ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP)
            })
    }

    pub fn rule(&self, r: u16) -> &RuleEntry {
        &self.rules[r as usize]
    }

    /// Whether `addr` is the address of any rule.
    #[inline]
    pub fn is_vip(&self, addr: u32) -> bool {
        !self.vips.is_empty() && self.vips.binary_search(&addr).is_ok()
    }

    /// Whether `addr` is a backend of any rule.
    #[inline]
    pub fn is_backend(&self, addr: u32) -> bool {
        !self.backend_addrs.is_empty() && self.backend_addrs.binary_search(&addr).is_ok()
    }

    /// The address-only (1:1) rule whose inside host is `addr`.
    #[inline]
    pub fn static_for(&self, addr: u32) -> Option<u16> {
        if self.statics.is_empty() {
            return None;
        }
        self.statics
            .binary_search_by_key(&addr, |&(a, _)| a)
            .ok()
            .map(|i| self.statics[i].1)
    }

    /// The counter id of the backend of a destination NAT session (outside = the rule's endpoint,
    /// inside = the backend's).
    #[inline]
    pub fn counter_id(
        &self,
        out_addr: u32,
        proto: u8,
        out_port: u16,
        in_addr: u32,
        in_port: u16,
    ) -> Option<u32> {
        let r = self.find(out_addr, proto, out_port)?;
        let e = &self.rules[r as usize];
        e.backends
            .iter()
            .find(|b| {
                b.backend.addr == in_addr
                    && (e.rule.is_address_only() || e.backend_port(&b.backend, out_port) == in_port)
            })
            .map(|b| b.id)
    }
}

fn picker_for(r: &DnatRule, backends: &[BackendEntry]) -> Picker {
    let weights: Vec<u32> = backends.iter().map(|b| b.backend.weight).collect();
    match r.scheduler {
        Scheduler::WeightedRandom => Picker::Random(WeightedRandom::new(&weights)),
        Scheduler::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights)),
        Scheduler::Maglev => {
            let keyed: Vec<(u64, u32)> = backends
                .iter()
                .map(|b| {
                    (
                        (u64::from(b.backend.addr) << 16) | u64::from(b.backend.port),
                        b.backend.weight,
                    )
                })
                .collect();
            Picker::Maglev(Box::new(Maglev::new(&keyed, MAGLEV_SIZE)))
        }
    }
}

/// Per-worker counters of every backend, by counter id: one writer (the worker), relaxed loads
/// and stores, any number of readers. Rule figures are the sums over their backends.
#[derive(Debug)]
pub struct DnatCounters {
    packets: Vec<AtomicU64>,
    bytes: Vec<AtomicU64>,
    created: Vec<AtomicU64>,
    current: Vec<AtomicU64>,
}

/// One backend's counters, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounts {
    pub packets: u64,
    pub bytes: u64,
    pub sessions_created: u64,
    pub sessions_current: u64,
}

impl std::ops::AddAssign for BackendCounts {
    fn add_assign(&mut self, o: BackendCounts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.sessions_created += o.sessions_created;
        self.sessions_current += o.sessions_current;
    }
}

impl Default for DnatCounters {
    fn default() -> Self {
        let v = || (0..MAX_BACKEND_IDS).map(|_| AtomicU64::new(0)).collect();
        DnatCounters {
            packets: v(),
            bytes: v(),
            created: v(),
            current: v(),
        }
    }
}

#[inline]
fn bump(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl DnatCounters {
    #[inline]
    pub(crate) fn packet(&self, id: u32, bytes: u64) {
        let i = id as usize;
        if i < MAX_BACKEND_IDS {
            bump(&self.packets[i], 1);
            bump(&self.bytes[i], bytes);
        }
    }

    pub(crate) fn opened(&self, id: u32) {
        let i = id as usize;
        if i < MAX_BACKEND_IDS {
            bump(&self.created[i], 1);
            bump(&self.current[i], 1);
        }
    }

    pub(crate) fn closed(&self, id: u32) {
        let i = id as usize;
        if i < MAX_BACKEND_IDS {
            let c = &self.current[i];
            c.store(
                c.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        }
    }

    /// The counters of backend `id`.
    pub fn read(&self, id: u32) -> BackendCounts {
        let i = id as usize;
        if i >= MAX_BACKEND_IDS {
            return BackendCounts::default();
        }
        BackendCounts {
            packets: self.packets[i].load(Ordering::Relaxed),
            bytes: self.bytes[i].load(Ordering::Relaxed),
            sessions_created: self.created[i].load(Ordering::Relaxed),
            sessions_current: self.current[i].load(Ordering::Relaxed),
        }
    }
}
