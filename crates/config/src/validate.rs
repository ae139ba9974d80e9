//! From the raw YAML structs to the domain types. Every rule that relates fields to each
//! other lives here. Problems are collected rather than returned one at a time, so an
//! operator fixing a config sees all of them in one run; a section that fails its own checks
//! is left out of the cross-section checks that would only repeat the same mistake.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::eal::{self, Eal, Memory};
use crate::error::{ConfigError, FieldError};
use crate::limits as lim;
use crate::net::{AddressRange, Ipv4Net};
use crate::raw::{
    DnatOnRemoval, DnatProtocol, DnatScheduler, RawConfig, RawDnat, RawEal, RawMgmt, RawPool,
    RawPort, RawSnat, RawWorkers,
};
use crate::types::{
    Allocation, AllocationMode, DataplaneCfg, Device, Exclusion, FragmentsCfg, Limits, LoggingCfg,
    MgmtCfg, MgmtTls, NatCfg, NeighbourCfg, Pool, PortCfg, Role, Route, SnatRule, StaticNeighbour,
    Timeouts, Workers, secs,
};
use crate::{Config, defaults as d};

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

pub(crate) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut errs = Errors::default();

    let eal = check_eal(&mut errs, raw.eal);
    let workers = check_workers(&mut errs, raw.workers, eal.as_ref());
    let ports = check_ports(&mut errs, &raw.ports);
    if let (Some(eal), Some(ports)) = (&eal, &ports) {
        check_eal_against_ports(&mut errs, eal, ports);
    }
    if let (Some(workers), Some(ports)) = (&workers, &ports) {
        check_queues(&mut errs, workers, ports);
    }
    let pools = check_pools(&mut errs, &raw.pools, ports.as_deref());
    let snat = check_snat(&mut errs, &raw.snat, &raw.pools);
    let exclusions = check_exclusions(&mut errs, &raw.exclusions);
    let nat = check_nat(&mut errs, &raw.nat);
    let dnat = check_dnat(
        &mut errs,
        &raw.nat.dnat,
        &raw.pools,
        ports.as_deref(),
        pools.as_deref(),
    );
    let neighbour = check_neighbour(&mut errs, &raw.neighbour);
    let logging = check_logging(&mut errs, raw.logging);
    let dataplane = check_dataplane(&mut errs, &raw.dataplane, workers.as_ref());
    let mgmt = check_mgmt(&mut errs, &raw.mgmt);
    if raw.stats_interval > lim::STATS_INTERVAL_MAX_SECS {
        errs.push(
            "stats_interval",
            format!(
                "{} s is more than a day ({} s); use 0 to disable periodic counter logs",
                raw.stats_interval,
                lim::STATS_INTERVAL_MAX_SECS
            ),
        );
    }

    match (eal, workers, ports, pools, snat, dnat) {
        (Some(eal), Some(workers), Some(ports), Some(pools), Some(snat), Some(dnat))
            if errs.0.is_empty() =>
        {
            Ok(Config {
                eal,
                workers,
                ports,
                pools,
                snat,
                dnat,
                exclusions,
                nat,
                neighbour,
                mgmt,
                logging,
                stats_interval: secs(raw.stats_interval),
                dataplane,
            })
        }
        _ => {
            // A section can only come back empty-handed after pushing an error, but keep the
            // invariant explicit instead of trusting it.
            if errs.0.is_empty() {
                errs.push("(top level)", "configuration is incomplete");
            }
            Err(ConfigError::Invalid { errors: errs.0 })
        }
    }
}

/// Token and TLS files are named by absolute path; cgnatd reads and checks their contents at
/// start, where a missing or malformed file can be reported with what the OS or the parser said.
fn check_mgmt(errs: &mut Errors, raw: &RawMgmt) -> MgmtCfg {
    let absolute = |errs: &mut Errors, field: &str, path: &Option<PathBuf>| {
        if path.as_ref().is_some_and(|p| !p.is_absolute()) {
            errs.push(
                field,
                "must be an absolute path (cgnatd may run from any directory)",
            );
        }
    };
    absolute(errs, "mgmt.tokens.read_write", &raw.tokens.read_write);
    absolute(errs, "mgmt.tokens.read_only", &raw.tokens.read_only);
    absolute(errs, "mgmt.state_file", &raw.state_file);
    let tls = raw.tls.as_ref().and_then(|tls| {
        absolute(errs, "mgmt.tls.cert", &tls.cert);
        absolute(errs, "mgmt.tls.key", &tls.key);
        absolute(errs, "mgmt.tls.client_ca", &tls.client_ca);
        if tls.cert.is_none() {
            errs.push(
                "mgmt.tls.cert",
                "is required with mgmt.tls: the PEM file with the server's certificate chain",
            );
        }
        if tls.key.is_none() {
            errs.push(
                "mgmt.tls.key",
                "is required with mgmt.tls: the PEM file with the private key of mgmt.tls.cert",
            );
        }
        Some(MgmtTls {
            cert: tls.cert.clone()?,
            key: tls.key.clone()?,
            client_ca: tls.client_ca.clone(),
        })
    });
    MgmtCfg {
        listen: raw.listen,
        read_write_token: raw.tokens.read_write.clone(),
        read_only_token: raw.tokens.read_only.clone(),
        state_file: raw.state_file.clone(),
        tls,
    }
}

pub(crate) fn check_file_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if prefix.len() > lim::FILE_PREFIX_MAX_LEN {
        return Err(format!(
            "is {} characters long; at most {} fit in DPDK's runtime socket paths",
            prefix.len(),
            lim::FILE_PREFIX_MAX_LEN
        ));
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "`{prefix}` may contain only A-Z, a-z, 0-9, `_` and `-` (it becomes part of file names under /var/run/dpdk and /dev/hugepages)"
        ));
    }
    Ok(())
}

/// Options cgnatd itself derives from the config; giving them again in `extra_args` would
/// either be rejected by DPDK or silently override the structured field.
const OWNED_OPTIONS: &[(&str, &str)] = &[
    ("--file-prefix", "eal.file_prefix"),
    ("--main-lcore", "eal.main_lcore"),
    ("--master-lcore", "eal.main_lcore"),
    ("--no-huge", "eal.memory.hugepages"),
    ("--huge-unlink", "eal.memory.hugepages"),
    ("-c", "eal.lcores"),
    ("--coremask", "eal.lcores"),
];

fn check_eal(errs: &mut Errors, raw: RawEal) -> Option<Eal> {
    let before = errs.0.len();
    if let Err(e) = check_file_prefix(&raw.file_prefix) {
        errs.push("eal.file_prefix", e);
    }

    for (i, arg) in raw.extra_args.iter().enumerate() {
        let path = format!("eal.extra_args[{i}]");
        if arg.is_empty() {
            errs.push(path, "empty argument");
        } else if arg == "--" {
            errs.push(
                path,
                "`--` would end the EAL options and turn the rest into application arguments",
            );
        }
    }
    for (opt, field) in OWNED_OPTIONS {
        if let Some(i) = eal::has_option(&raw.extra_args, opt) {
            errs.push(
                format!("eal.extra_args[{i}]"),
                format!("`{opt}` is derived from {field}; set it there instead"),
            );
        }
    }

    // The lcore list comes from exactly one place.
    let in_args = eal::lcores_in_args(&raw.extra_args);
    let (lcore_str, lcore_path) = match (&raw.lcores, in_args) {
        (Some(s), None) => (Some(s.as_str()), "eal.lcores".to_owned()),
        (Some(_), Some((i, _))) => {
            errs.push(
                format!("eal.extra_args[{i}]"),
                "sets the lcore list, which eal.lcores already does; keep only one",
            );
            (None, String::new())
        }
        (None, Some((_, Some((vi, v))))) => (Some(v), format!("eal.extra_args[{vi}]")),
        (None, Some((i, None))) => {
            errs.push(
                format!("eal.extra_args[{i}]"),
                "lcore option without a value",
            );
            (None, String::new())
        }
        (None, None) => {
            errs.push(
                "eal.lcores",
                "required: the lcores DPDK may use, e.g. \"0-1\" (or pass -l/--lcores in eal.extra_args)",
            );
            (None, String::new())
        }
    };
    let lcore_ids = match lcore_str.map(eal::parse_lcores) {
        Some(Ok(ids)) => Some(ids),
        Some(Err(e)) => {
            errs.push(lcore_path.as_str(), format!("invalid lcore list: {e}"));
            None
        }
        None => None,
    };

    let main_lcore = match (&lcore_ids, raw.main_lcore) {
        (Some(ids), Some(m)) if !ids.contains(&m) => {
            errs.push(
                "eal.main_lcore",
                format!("lcore {m} is not in the lcore list {ids:?}"),
            );
            None
        }
        (Some(_), Some(m)) => Some(m),
        (Some(ids), None) => ids.first().copied(),
        (None, _) => None,
    };

    let memory = match (raw.memory.hugepages, raw.memory.size_mb) {
        (_, Some(mb)) if mb < lim::MEMORY_MIN_MB => {
            errs.push(
                "eal.memory.size_mb",
                format!(
                    "{mb} MB is too small; at least {} MB are needed for mbuf pools and port rings",
                    lim::MEMORY_MIN_MB
                ),
            );
            None
        }
        (true, size_mb) => Some(Memory::Hugepages { size_mb }),
        (false, size_mb) => Some(Memory::NoHuge {
            size_mb: size_mb.unwrap_or(d::NOHUGE_SIZE_MB),
        }),
    };
    if memory.is_some_and(|m| matches!(m, Memory::NoHuge { .. })) {
        if let Some(i) = eal::has_option(&raw.extra_args, "-m") {
            errs.push(
                format!("eal.extra_args[{i}]"),
                "`-m` is derived from eal.memory.size_mb when hugepages are off; set it there",
            );
        }
    } else if let (Some(Memory::Hugepages { size_mb: Some(_) }), Some(i)) =
        (memory, eal::has_option(&raw.extra_args, "-m"))
    {
        errs.push(
            format!("eal.extra_args[{i}]"),
            "`-m` is derived from eal.memory.size_mb; set it there",
        );
    }

    if errs.0.len() != before {
        return None;
    }
    Some(Eal {
        // DPDK's list parser is not consistent about blanks; pass the list without them.
        lcores: raw
            .lcores
            .map(|s| s.chars().filter(|c| !c.is_whitespace()).collect()),
        lcore_ids: lcore_ids?,
        main_lcore: main_lcore?,
        memory: memory?,
        file_prefix: raw.file_prefix,
        log_level: raw.log_level,
        extra_args: raw.extra_args,
    })
}

fn check_workers(errs: &mut Errors, raw: Option<RawWorkers>, eal: Option<&Eal>) -> Option<Workers> {
    let raw = raw.unwrap_or(RawWorkers::Count(d::WORKERS));
    let before = errs.0.len();
    match &raw {
        RawWorkers::Count(0) => errs.push("workers", "must be at least 1"),
        RawWorkers::Lcores(ids) if ids.is_empty() => {
            errs.push("workers", "the list of worker lcores is empty")
        }
        _ => {}
    }
    let eal = eal?;
    match &raw {
        RawWorkers::Count(n) => {
            let available = eal.lcore_ids.len().saturating_sub(1);
            if usize::from(*n) > available {
                errs.push(
                    "workers",
                    format!(
                        "{n} workers need {} lcores (one per worker plus main lcore {} for the control plane) but the lcore list has {}",
                        usize::from(*n) + 1,
                        eal.main_lcore,
                        eal.lcore_ids.len()
                    ),
                );
            }
        }
        RawWorkers::Lcores(ids) => {
            for (i, id) in ids.iter().enumerate() {
                let path = format!("workers[{i}]");
                if *id == eal.main_lcore {
                    errs.push(
                        path,
                        format!("lcore {id} is the main lcore, which runs the control plane"),
                    );
                } else if !eal.lcore_ids.contains(id) {
                    errs.push(
                        path,
                        format!("lcore {id} is not in the lcore list {:?}", eal.lcore_ids),
                    );
                } else if ids[..i].contains(id) {
                    errs.push(path, format!("lcore {id} is listed twice"));
                }
            }
        }
    }
    (errs.0.len() == before).then_some(match raw {
        RawWorkers::Count(n) => Workers::Count(n),
        RawWorkers::Lcores(ids) => Workers::Lcores(ids),
    })
}

fn check_name(errs: &mut Errors, path: String, name: &str) {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        errs.push(
            path,
            format!("`{name}` must be non-empty and use only a-z, 0-9, `_` and `-`"),
        );
    }
}

/// Addresses that can never be a host: "this network" 0/8 and loopback 127/8 (RFC 1122
/// section 3.2.1.3), multicast 224/4 (RFC 5771) and reserved 240/4 including the limited
/// broadcast address (RFC 6890).
fn non_unicast_block(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets()[0];
    match o {
        0 => Some("\"this network\" (0.0.0.0/8)"),
        127 => Some("loopback (127.0.0.0/8)"),
        224..=239 => Some("multicast (224.0.0.0/4)"),
        240..=255 => Some("reserved (240.0.0.0/4)"),
        _ => None,
    }
}

fn check_device(errs: &mut Errors, path: &str, raw: &crate::raw::RawDevice) -> Option<Device> {
    match (&raw.vdev, &raw.pci) {
        (Some(_), Some(_)) | (None, None) => {
            errs.push(
                path,
                "give exactly one of `vdev` (a DPDK virtual device) or `pci` (a PCI address)",
            );
            None
        }
        (Some(spec), None) => {
            let name = spec.split(',').next().unwrap_or_default();
            if spec.chars().any(char::is_whitespace) {
                errs.push(format!("{path}.vdev"), "must not contain whitespace");
                None
            } else if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
            {
                errs.push(
                    format!("{path}.vdev"),
                    format!(
                        "`{spec}` must start with a device name such as net_af_packet0, followed by ,key=value options"
                    ),
                );
                None
            } else {
                Some(Device::Vdev { spec: spec.clone() })
            }
        }
        (None, Some(addr)) => match parse_pci(addr) {
            Ok(addr) => Some(Device::Pci { addr }),
            Err(e) => {
                errs.push(format!("{path}.pci"), e);
                None
            }
        },
    }
}

/// Checks `DDDD:BB:DD.F` (domain, bus, device, function in hex) and returns it in lower
/// case, the form DPDK prints and names the ethdev after.
fn parse_pci(s: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "`{s}` is not a PCI address of the form DDDD:BB:DD.F (hex domain, bus, device, function), e.g. 0000:03:00.0"
        )
    };
    let (head, func) = s.split_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = head.split(':').collect();
    let [domain, bus, dev] = parts.as_slice() else {
        return Err(bad());
    };
    let hex = |t: &str, width: usize| -> Result<u32, String> {
        if t.len() != width || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u32::from_str_radix(t, 16).map_err(|_| bad())
    };
    hex(domain, 4)?;
    hex(bus, 2)?;
    let dev = hex(dev, 2)?;
    let func = hex(func, 1)?;
    if dev > 0x1f {
        return Err(format!("`{s}`: PCI device number {dev:#x} is above 0x1f"));
    }
    if func > 7 {
        return Err(format!("`{s}`: PCI function {func} is above 7"));
    }
    Ok(s.to_ascii_lowercase())
}

fn check_port(errs: &mut Errors, i: usize, raw: &RawPort) -> Option<PortCfg> {
    let before = errs.0.len();
    let p = |f: &str| format!("ports[{i}].{f}");
    check_name(errs, p("name"), &raw.name);
    let device = check_device(errs, &p("device"), &raw.device);

    let net = raw.address;
    let addr = net.addr;
    let subnet = net.trunc();
    if net.len == 0 {
        errs.push(p("address"), "a /0 subnet would make every address on-link");
    } else if let Some(block) = non_unicast_block(addr) {
        errs.push(
            p("address"),
            format!("{addr} is {block}, not a unicast host address"),
        );
    } else if net.len <= 30 && (addr == net.network() || addr == net.broadcast()) {
        errs.push(
            p("address"),
            format!(
                "{net}: host part must not be all zeros or all ones (that is the network or broadcast address of {subnet})"
            ),
        );
    }

    if !(lim::MTU_MIN..=lim::MTU_MAX).contains(&raw.mtu) {
        errs.push(
            p("mtu"),
            format!("{} is outside {}..={}", raw.mtu, lim::MTU_MIN, lim::MTU_MAX),
        );
    }
    for (f, v) in [("rx_desc", raw.rx_desc), ("tx_desc", raw.tx_desc)] {
        if !v.is_power_of_two() || !(lim::DESC_MIN..=lim::DESC_MAX).contains(&v) {
            errs.push(
                p(f),
                format!(
                    "{v} must be a power of two in {}..={}",
                    lim::DESC_MIN,
                    lim::DESC_MAX
                ),
            );
        }
    }

    // A next hop must be a neighbour on the link: another host in the connected subnet.
    let next_hop_problem = |hop: Ipv4Addr| -> Option<String> {
        if !subnet.contains(hop) {
            Some(format!("{hop} is not inside the port's subnet {subnet}"))
        } else if hop == addr {
            Some(format!("{hop} is this port's own address"))
        } else if subnet.len <= 30 && (hop == subnet.network() || hop == subnet.broadcast()) {
            Some(format!(
                "{hop} is the network or broadcast address of {subnet}"
            ))
        } else {
            None
        }
    };
    if let Some(gw) = raw.gateway
        && let Some(e) = next_hop_problem(gw)
    {
        errs.push(p("gateway"), e);
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (j, r) in raw.routes.iter().enumerate() {
        let rp = format!("ports[{i}].routes[{j}]");
        if !r.prefix.is_network() {
            errs.push(
                format!("{rp}.prefix"),
                format!(
                    "{} has host bits set; did you mean {}?",
                    r.prefix,
                    r.prefix.trunc()
                ),
            );
        } else if r.prefix == subnet {
            errs.push(
                format!("{rp}.prefix"),
                format!("{subnet} is the port's connected subnet and needs no route"),
            );
        } else if raw.routes[..j].iter().any(|o| o.prefix == r.prefix) {
            errs.push(
                format!("{rp}.prefix"),
                format!("{} is listed twice", r.prefix),
            );
        }
        if let Some(e) = next_hop_problem(r.via) {
            errs.push(format!("{rp}.via"), e);
        }
        routes.push(Route {
            prefix: r.prefix,
            via: r.via,
        });
    }

    let mut neighbours = Vec::with_capacity(raw.neighbours.len());
    for (j, n) in raw.neighbours.iter().enumerate() {
        let np = format!("ports[{i}].neighbours[{j}]");
        if let Some(e) = next_hop_problem(n.ip) {
            errs.push(format!("{np}.ip"), e);
        } else if raw.neighbours[..j].iter().any(|o| o.ip == n.ip) {
            errs.push(format!("{np}.ip"), format!("{} is listed twice", n.ip));
        }
        // Frames to the next hop are unicast; a group address would flood the segment (or be
        // dropped by every station), and no NIC owns the all-zero address.
        if !n.mac.is_unicast() {
            errs.push(
                format!("{np}.mac"),
                format!(
                    "{} is a group (multicast or broadcast) address; a neighbour MAC must be unicast (low bit of the first octet clear)",
                    n.mac
                ),
            );
        } else if n.mac.is_zero() {
            errs.push(
                format!("{np}.mac"),
                "the all-zero MAC is not a station address",
            );
        }
        neighbours.push(StaticNeighbour {
            ip: n.ip,
            mac: n.mac.0,
        });
    }

    if errs.0.len() != before {
        return None;
    }
    Some(PortCfg {
        name: raw.name.clone(),
        role: raw.role,
        device: device?,
        address: addr,
        prefix: subnet,
        mtu: raw.mtu,
        promiscuous: raw.promiscuous,
        rx_desc: raw.rx_desc,
        tx_desc: raw.tx_desc,
        gateway: raw.gateway,
        routes,
        neighbours,
    })
}

fn check_dataplane(
    errs: &mut Errors,
    raw: &crate::raw::RawDataplane,
    workers: Option<&Workers>,
) -> DataplaneCfg {
    if raw.idle_sleep_us > lim::IDLE_SLEEP_US_MAX {
        errs.push(
            "dataplane.idle_sleep_us",
            format!(
                "{} us is more than {} us; a worker would sit out whole bursts",
                raw.idle_sleep_us,
                lim::IDLE_SLEEP_US_MAX
            ),
        );
    }
    if !(1..=lim::IDLE_POLLS_MAX).contains(&raw.idle_polls) {
        errs.push(
            "dataplane.idle_polls",
            format!("{} is outside 1..={}", raw.idle_polls, lim::IDLE_POLLS_MAX),
        );
    }
    if !raw.handoff_ring.is_power_of_two()
        || !(lim::HANDOFF_RING_MIN..=lim::HANDOFF_RING_MAX).contains(&raw.handoff_ring)
    {
        errs.push(
            "dataplane.handoff_ring",
            format!(
                "{} must be a power of two in {}..={}",
                raw.handoff_ring,
                lim::HANDOFF_RING_MIN,
                lim::HANDOFF_RING_MAX
            ),
        );
    }
    let inject_panic = raw.inject_panic.as_ref().and_then(|p| {
        let n_workers = workers.map(Workers::len);
        match n_workers {
            Some(n) if p.worker as usize >= n => {
                errs.push(
                    "dataplane.inject_panic.worker",
                    format!("{} is not a worker (workers are numbered 0..{n})", p.worker),
                );
                None
            }
            // An invalid `workers` is reported on its own.
            None => None,
            Some(_) => Some(crate::types::InjectPanic {
                worker: p.worker as u16,
                after: std::time::Duration::from_millis(u64::from(p.after_ms)),
            }),
        }
    });
    DataplaneCfg {
        idle_sleep: std::time::Duration::from_micros(u64::from(raw.idle_sleep_us)),
        idle_polls: raw.idle_polls,
        handoff_ring: raw.handoff_ring,
        inject_panic,
    }
}

fn check_ports(errs: &mut Errors, raw: &[RawPort]) -> Option<Vec<PortCfg>> {
    let before = errs.0.len();
    let ports: Vec<Option<PortCfg>> = raw
        .iter()
        .enumerate()
        .map(|(i, p)| check_port(errs, i, p))
        .collect();

    // Cross-port rules use the raw values, so they are reported even when a port has an
    // unrelated problem of its own.
    const ONE_EACH: &str = "this release supports exactly one inside and one outside port";
    for role in [Role::Inside, Role::Outside] {
        let with_role: Vec<usize> = (0..raw.len()).filter(|&i| raw[i].role == role).collect();
        match with_role.as_slice() {
            [] => errs.push("ports", format!("no {role} port; {ONE_EACH}")),
            [_] => {}
            [first, rest @ ..] => {
                for &i in rest {
                    errs.push(
                        format!("ports[{i}].role"),
                        format!("a second {role} port (ports[{first}] is {role}); {ONE_EACH}"),
                    );
                }
            }
        }
    }
    for j in 0..raw.len() {
        let a = &raw[j];
        for (i, b) in raw[..j].iter().enumerate() {
            if a.name == b.name {
                errs.push(
                    format!("ports[{j}].name"),
                    format!("`{}` is already used by ports[{i}]", a.name),
                );
            }
            let (an, bn) = (a.address.trunc(), b.address.trunc());
            if an.overlaps(&bn) {
                errs.push(
                    format!("ports[{j}].address"),
                    format!(
                        "subnet {an} overlaps {bn} of ports[{i}] (`{}`); the NAT could not tell which port a neighbour is on",
                        b.name
                    ),
                );
            }
            if a.gateway.is_some() && b.gateway.is_some() {
                errs.push(
                    format!("ports[{j}].gateway"),
                    format!(
                        "ports[{i}] (`{}`) already has a gateway; two default routes would be ambiguous",
                        b.name
                    ),
                );
            }
        }
    }
    // Routes are one table across ports; the same prefix twice, or a 0.0.0.0/0 route next to
    // a gateway, would leave the choice of port to chance.
    let mut seen: HashMap<Ipv4Net, usize> = HashMap::new();
    for (i, p) in raw.iter().enumerate() {
        for (j, r) in p.routes.iter().enumerate() {
            if let Some(&k) = seen.get(&r.prefix).filter(|&&k| k != i) {
                errs.push(
                    format!("ports[{i}].routes[{j}].prefix"),
                    format!("{} is also routed out of ports[{k}]", r.prefix),
                );
            }
            seen.entry(r.prefix).or_insert(i);
            if r.prefix.len == 0
                && let Some(k) = raw.iter().position(|q| q.gateway.is_some())
            {
                errs.push(
                    format!("ports[{i}].routes[{j}].prefix"),
                    format!("a default route conflicts with ports[{k}].gateway, which is one too"),
                );
            }
        }
    }

    if errs.0.len() != before {
        return None;
    }
    ports.into_iter().collect()
}

fn check_eal_against_ports(errs: &mut Errors, eal: &Eal, ports: &[PortCfg]) {
    let pci = ports
        .iter()
        .position(|p| matches!(p.device, Device::Pci { .. }));
    if let (Some(k), Some(i)) = (pci, eal::has_option(&eal.extra_args, "--no-pci")) {
        errs.push(
            format!("eal.extra_args[{i}]"),
            format!("`--no-pci` would hide the PCI device of ports[{k}]"),
        );
    }
    for j in 0..ports.len() {
        for i in 0..j {
            if ports[i].device.port_name() == ports[j].device.port_name() {
                errs.push(
                    format!("ports[{j}].device"),
                    format!(
                        "DPDK device `{}` is already used by ports[{i}]",
                        ports[j].device.port_name()
                    ),
                );
            }
        }
    }
}

/// Every worker polls its own RX queue and owns a TX queue on every port (queues are not
/// thread-safe), so a vdev that opens fewer queue pairs than there are workers cannot work.
/// Only net_af_packet is checked: it is the one vdev whose queue option we know (`qpairs`,
/// default 1).
fn check_queues(errs: &mut Errors, workers: &Workers, ports: &[PortCfg]) {
    let n_workers = workers.len();
    for (i, p) in ports.iter().enumerate() {
        let Device::Vdev { spec } = &p.device else {
            continue;
        };
        if !spec.starts_with("net_af_packet") {
            continue;
        }
        let qpairs = spec
            .split(',')
            .skip(1)
            .find_map(|kv| kv.strip_prefix("qpairs="));
        let n = match qpairs.map(str::parse::<usize>) {
            None => 1,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                errs.push(
                    format!("ports[{i}].device.vdev"),
                    "qpairs= must be a number",
                );
                continue;
            }
        };
        if n < n_workers {
            errs.push(
                format!("ports[{i}].device.vdev"),
                format!(
                    "net_af_packet opens {n} queue pair(s) but {n_workers} workers each need their own; set qpairs={n_workers}"
                ),
            );
        }
    }
}

fn check_pools(errs: &mut Errors, raw: &[RawPool], ports: Option<&[PortCfg]>) -> Option<Vec<Pool>> {
    let before = errs.0.len();
    if raw.is_empty() {
        errs.push("pools", "at least one pool is required");
    }
    for (i, pool) in raw.iter().enumerate() {
        check_name(errs, format!("pools[{i}].name"), &pool.name);
        if let Some(k) = raw[..i].iter().position(|o| o.name == pool.name) {
            errs.push(
                format!("pools[{i}].name"),
                format!("`{}` is already used by pools[{k}]", pool.name),
            );
        }
        if pool.masquerade {
            if !pool.addresses.is_empty() {
                errs.push(
                    format!("pools[{i}].addresses"),
                    "must be empty with masquerade: true (the outside port's address is the pool)",
                );
            }
            if let Some(ports) = ports
                && ports.iter().filter(|p| p.role == Role::Outside).count() != 1
            {
                errs.push(
                    format!("pools[{i}].masquerade"),
                    "needs exactly one outside port, whose address becomes the pool",
                );
            }
            if let Some(k) = raw[..i].iter().position(|o| o.masquerade) {
                errs.push(
                    format!("pools[{i}].masquerade"),
                    format!("pools[{k}] already masquerades as the outside port's address"),
                );
            }
        } else if pool.addresses.is_empty() {
            errs.push(
                format!("pools[{i}].addresses"),
                "must list at least one address (or set masquerade: true)",
            );
        }
        for (j, r) in pool.addresses.iter().enumerate() {
            let path = format!("pools[{i}].addresses[{j}]");
            if let Some(p) = r.prefix.filter(|p| !p.is_network()) {
                errs.push(
                    path.as_str(),
                    format!("{p} has host bits set; did you mean {}?", p.trunc()),
                );
            }
            for (lo, hi, what) in [
                (0, 0x00ff_ffff, "\"this network\" (0.0.0.0/8)"),
                (0x7f00_0000, 0x7fff_ffff, "loopback (127.0.0.0/8)"),
                (
                    0xe000_0000,
                    u32::MAX,
                    "multicast and reserved space (224.0.0.0/3)",
                ),
            ] {
                let block = AddressRange {
                    first: Ipv4Addr::from(lo),
                    last: Ipv4Addr::from(hi),
                    prefix: None,
                };
                if r.overlaps(&block) {
                    errs.push(
                        path.as_str(),
                        format!("{r} reaches into {what}; pool addresses must be unicast"),
                    );
                }
            }
            if let Some(ports) = ports {
                check_pool_range_against_ports(errs, &path, r, ports);
            }
        }
        check_allocation(errs, i, pool);
    }
    check_pool_sizes(errs, raw);
    check_pool_overlaps(errs, raw);

    if errs.0.len() != before {
        return None;
    }
    let outside = ports
        .and_then(|ps| ps.iter().find(|p| p.role == Role::Outside))
        .map(|p| p.address);
    Some(
        raw.iter()
            .map(|p| Pool {
                name: p.name.clone(),
                ranges: match (p.masquerade, outside) {
                    (true, Some(a)) => vec![(a, a)],
                    _ => merge(&p.addresses),
                },
                masquerade: p.masquerade,
                port_lo: p.ports.lo,
                port_hi: p.ports.hi,
                filtering: p.filtering,
                allocation: allocation(&p.allocation),
            })
            .collect(),
    )
}

fn check_pool_range_against_ports(
    errs: &mut Errors,
    path: &str,
    r: &AddressRange,
    ports: &[PortCfg],
) {
    for (k, port) in ports.iter().enumerate() {
        let subnet = port.prefix;
        if port.role == Role::Inside && r.overlaps_net(&subnet) {
            errs.push(
                path,
                format!(
                    "{r} overlaps {subnet}, the subnet of inside port ports[{k}] (`{}`)",
                    port.name
                ),
            );
            continue;
        }
        // Nor may it be reached through the inside: an address routed there is a subscriber's.
        if port.role == Role::Inside
            && let Some((j, rt)) = port
                .routes
                .iter()
                .enumerate()
                .find(|(_, rt)| r.overlaps_net(&rt.prefix))
        {
            errs.push(
                path,
                format!(
                    "{r} overlaps {}, routed on the inside by ports[{k}].routes[{j}]",
                    rt.prefix
                ),
            );
            continue;
        }
        // Pool addresses may sit in the outside subnet (we then answer ARP for them), but
        // none may be an address some neighbour or we ourselves already use.
        let mut used = vec![(port.address, "address".to_owned())];
        used.extend(port.gateway.map(|g| (g, "gateway".to_owned())));
        used.extend(
            port.routes
                .iter()
                .enumerate()
                .map(|(j, rt)| (rt.via, format!("routes[{j}].via"))),
        );
        used.extend(
            port.neighbours
                .iter()
                .enumerate()
                .map(|(j, n)| (n.ip, format!("neighbours[{j}].ip"))),
        );
        if subnet.len <= 30 && r.overlaps_net(&subnet) {
            used.push((subnet.network(), "network address".to_owned()));
            used.push((subnet.broadcast(), "broadcast address".to_owned()));
        }
        for (ip, what) in used {
            if r.contains(ip) {
                errs.push(
                    path,
                    format!(
                        "{r} contains {ip}, the {what} of ports[{k}] (`{}`)",
                        port.name
                    ),
                );
            }
        }
    }
}

/// The pools' addresses together stay within [`lim::POOL_ADDRESSES_MAX`]: reported at the entry
/// that goes over, before anything builds per-address state.
fn check_pool_sizes(errs: &mut Errors, raw: &[RawPool]) {
    let mut total: u64 = 0;
    for (i, pool) in raw.iter().enumerate() {
        for (j, r) in pool.addresses.iter().enumerate() {
            let n = r.len();
            total += n;
            if total > lim::POOL_ADDRESSES_MAX {
                errs.push(
                    format!("pools[{i}].addresses[{j}]"),
                    format!(
                        "{r} ({n} addresses) brings the pools to {total} addresses; at most {} are \
                         supported in all (each takes 24 KiB of port bitmaps per worker)",
                        lim::POOL_ADDRESSES_MAX
                    ),
                );
                return;
            }
        }
    }
}

fn check_pool_overlaps(errs: &mut Errors, raw: &[RawPool]) {
    // Sort every entry by its first address; an entry overlaps an earlier one exactly when it
    // starts at or before the furthest end seen so far.
    let mut all: Vec<(AddressRange, usize, usize)> = raw
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.addresses.iter().enumerate().map(move |(j, r)| (*r, i, j)))
        .collect();
    all.sort_by_key(|(r, i, j)| (r.first, *i, *j));
    let mut reach: Option<(AddressRange, usize, usize)> = None;
    for &(r, i, j) in &all {
        if let Some((m, mi, mj)) = reach {
            if r.first <= m.last {
                // Report at whichever entry comes later in the file.
                let ((ri, rj), (oi, oj), other) = if (i, j) > (mi, mj) {
                    ((i, j), (mi, mj), m)
                } else {
                    ((mi, mj), (i, j), r)
                };
                let whose = if ri == oi {
                    "in the same pool".to_owned()
                } else {
                    format!("of pool `{}`", raw[oi].name)
                };
                let this = raw[ri].addresses[rj];
                errs.push(
                    format!("pools[{ri}].addresses[{rj}]"),
                    format!("{this} overlaps pools[{oi}].addresses[{oj}] ({other}) {whose}"),
                );
            }
            if r.last > m.last {
                reach = Some((r, i, j));
            }
        } else {
            reach = Some((r, i, j));
        }
    }
}

/// Sorted, merged inclusive ranges. Overlaps were rejected before this runs, so merging only
/// joins ranges that touch.
fn merge(entries: &[AddressRange]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut v: Vec<(u32, u32)> = entries
        .iter()
        .map(|r| (u32::from(r.first), u32::from(r.last)))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.into_iter()
        .map(|(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi)))
        .collect()
}

/// Port blocks are multiples of the data plane's 64-port ownership blocks.
const PORT_BLOCK: u16 = 64;

fn check_allocation(errs: &mut Errors, i: usize, pool: &RawPool) {
    let a = &pool.allocation;
    let p = |f: &str| format!("pools[{i}].allocation.{f}");
    let unused = |errs: &mut Errors, f: &str, present: bool, mode: &str| {
        if present {
            errs.push(p(f), format!("does not apply to mode `{mode}`"));
        }
    };
    match a.mode {
        AllocationMode::Random | AllocationMode::Preserve | AllocationMode::Parity => {
            let mode = format!("{:?}", a.mode).to_lowercase();
            unused(errs, "block_size", a.block_size.is_some(), &mode);
            unused(errs, "max_blocks", a.max_blocks.is_some(), &mode);
            unused(errs, "inside", a.inside.is_some(), &mode);
            unused(
                errs,
                "ports_per_subscriber",
                a.ports_per_subscriber.is_some(),
                &mode,
            );
        }
        AllocationMode::Blocks => {
            unused(errs, "inside", a.inside.is_some(), "blocks");
            unused(
                errs,
                "ports_per_subscriber",
                a.ports_per_subscriber.is_some(),
                "blocks",
            );
            match a.block_size {
                None => errs.push(p("block_size"), "mode `blocks` needs a block_size"),
                Some(b) if b == 0 || b % PORT_BLOCK != 0 => errs.push(
                    p("block_size"),
                    format!("{b} must be a positive multiple of {PORT_BLOCK}"),
                ),
                Some(b)
                    if u32::from(b) > u32::from(pool.ports.hi) - u32::from(pool.ports.lo) + 1 =>
                {
                    errs.push(
                        p("block_size"),
                        format!(
                            "{b} is larger than the pool's port range {}-{}",
                            pool.ports.lo, pool.ports.hi
                        ),
                    )
                }
                Some(_) => {}
            }
            if a.max_blocks == Some(0) {
                errs.push(p("max_blocks"), "must be at least 1");
            }
        }
        AllocationMode::Deterministic => {
            unused(errs, "block_size", a.block_size.is_some(), "deterministic");
            unused(errs, "max_blocks", a.max_blocks.is_some(), "deterministic");
            match a.inside {
                None => errs.push(
                    p("inside"),
                    "mode `deterministic` needs the inside prefix it maps",
                ),
                Some(net) if !net.is_network() => errs.push(
                    p("inside"),
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                ),
                Some(_) => {}
            }
            if let Some(n) = a.ports_per_subscriber
                && n % PORT_BLOCK != 0
            {
                errs.push(
                    p("ports_per_subscriber"),
                    format!("{n} must be a multiple of {PORT_BLOCK} (0 = as many as fit)"),
                );
            }
        }
    }
}

fn allocation(a: &crate::raw::RawAllocation) -> Allocation {
    match a.mode {
        AllocationMode::Random => Allocation::Random,
        AllocationMode::Preserve => Allocation::Preserve,
        AllocationMode::Parity => Allocation::Parity,
        AllocationMode::Blocks => Allocation::Blocks {
            block_size: a.block_size.unwrap_or(PORT_BLOCK),
            max_blocks: a.max_blocks.unwrap_or(1),
        },
        AllocationMode::Deterministic => Allocation::Deterministic {
            inside: a.inside.unwrap_or(Ipv4Net {
                addr: Ipv4Addr::UNSPECIFIED,
                len: 32,
            }),
            ports_per_subscriber: a.ports_per_subscriber.unwrap_or(0),
        },
    }
}

fn check_exclusions(errs: &mut Errors, raw: &[crate::raw::RawExclusion]) -> Vec<Exclusion> {
    if raw.len() > lim::EXCLUSIONS_MAX {
        errs.push(
            "exclusions",
            format!(
                "{} exclusions, at most {} are supported",
                raw.len(),
                lim::EXCLUSIONS_MAX
            ),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, e) in raw.iter().enumerate() {
        for (f, net) in [("destination", Some(e.destination)), ("source", e.source)] {
            if let Some(net) = net
                && !net.is_network()
            {
                errs.push(
                    format!("exclusions[{i}].{f}"),
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                );
            }
        }
        out.push(Exclusion {
            destination: e.destination,
            source: e.source,
        });
    }
    out
}

fn check_snat(errs: &mut Errors, raw: &[RawSnat], pools: &[RawPool]) -> Option<Vec<SnatRule>> {
    let before = errs.0.len();
    if raw.len() > lim::SNAT_RULES_MAX {
        errs.push(
            "snat",
            format!(
                "{} rules, at most {} are supported",
                raw.len(),
                lim::SNAT_RULES_MAX
            ),
        );
        return None;
    }
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        if !r.prefix.is_network() {
            errs.push(
                format!("snat[{i}].match"),
                format!(
                    "{} has host bits set; did you mean {}?",
                    r.prefix,
                    r.prefix.trunc()
                ),
            );
        } else if let Some(k) = raw[..i].iter().position(|o| {
            // An earlier rule takes every packet of this one if it matches all its sources and
            // all its destinations.
            o.prefix.covers(&r.prefix)
                && match (o.destination, r.destination) {
                    (None, _) => true,
                    (Some(od), Some(rd)) => od.covers(&rd),
                    (Some(_), None) => false,
                }
        }) {
            errs.push(
                format!("snat[{i}].match"),
                format!(
                    "never matches: snat[{k}] ({}) comes first and covers {}",
                    raw[k].prefix, r.prefix
                ),
            );
        }
        if let Some(d) = r.destination
            && !d.is_network()
        {
            errs.push(
                format!("snat[{i}].destination"),
                format!("{d} has host bits set; did you mean {}?", d.trunc()),
            );
        }
        match pools.iter().position(|p| p.name == r.pool) {
            Some(pool) => {
                // Deterministic ranges exist only for the pool's inside prefix: a source outside
                // it would have no ports.
                if let (AllocationMode::Deterministic, Some(inside)) =
                    (pools[pool].allocation.mode, pools[pool].allocation.inside)
                    && !inside.covers(&r.prefix)
                {
                    errs.push(
                        format!("snat[{i}].match"),
                        format!(
                            "{} is not inside {inside}, the inside prefix of deterministic pool `{}`",
                            r.prefix, r.pool
                        ),
                    );
                }
                rules.push(SnatRule {
                    prefix: r.prefix,
                    destination: r.destination,
                    pool,
                });
            }
            None => {
                let names: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                errs.push(
                    format!("snat[{i}].pool"),
                    format!(
                        "no pool named `{}` (pools: {})",
                        r.pool,
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
            }
        }
    }
    (errs.0.len() == before).then_some(rules)
}

/// What a destination NAT rule matches, once `protocol` and `port` agree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DnatKind {
    /// Port forwarding or a service: one protocol and port of the address.
    Port(DnatProtocol, u16),
    /// 1:1 static NAT or identity: every protocol and port of the address.
    AddressOnly,
}

/// The longest connected subnet or static route of any port that contains `ip`: the port it is
/// reached through, and a description of what covers it. Gateways are left out: a default route
/// says where unknown addresses go, not which side an address belongs to.
fn covering_route(ports: &[PortCfg], ip: Ipv4Addr) -> Option<(usize, String)> {
    let mut best: Option<(u8, usize, String)> = None;
    for (k, port) in ports.iter().enumerate() {
        let mut candidates = vec![(
            port.prefix,
            format!(
                "the subnet {} of {} port ports[{k}] (`{}`)",
                port.prefix, port.role, port.name
            ),
        )];
        candidates.extend(port.routes.iter().enumerate().map(|(j, r)| {
            (
                r.prefix,
                format!(
                    "ports[{k}].routes[{j}] ({}, out of {} port `{}`)",
                    r.prefix, port.role, port.name
                ),
            )
        }));
        for (net, what) in candidates {
            if net.contains(ip) && best.as_ref().is_none_or(|(len, ..)| net.len > *len) {
                best = Some((net.len, k, what));
            }
        }
    }
    best.map(|(_, k, what)| (k, what))
}

/// Why `ip` cannot be a backend, which must be reached through the inside port: covered by the
/// inside port's subnet or one of its routes, or by nothing more specific than an inside gateway.
fn not_on_the_inside(ports: &[PortCfg], ip: Ipv4Addr) -> Option<String> {
    let (ki, inside) = ports
        .iter()
        .enumerate()
        .find(|(_, p)| p.role == Role::Inside)?;
    match covering_route(ports, ip) {
        Some((k, _)) if k == ki => None,
        Some((_, what)) => Some(format!("{ip} is not on the inside: it is in {what}")),
        None if inside.gateway.is_some() => None,
        None => {
            let mut nets = vec![inside.prefix.to_string()];
            nets.extend(inside.routes.iter().map(|r| r.prefix.to_string()));
            Some(format!(
                "{ip} is not on the inside: neither the subnet nor a route of inside port ports[{ki}] (`{}`) covers it ({}); add a route for it there",
                inside.name,
                nets.join(", ")
            ))
        }
    }
}

fn check_dnat_name(name: &str) -> bool {
    (1..=lim::DNAT_NAME_MAX_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn port_number(v: u32) -> Option<u16> {
    u16::try_from(v).ok().filter(|&p| p != 0)
}

/// `nat.dnat`: each rule on its own, then the rules against each other. Checks against ports and
/// pools are skipped when those sections failed their own checks.
fn check_dnat(
    errs: &mut Errors,
    raw: &[RawDnat],
    raw_pools: &[RawPool],
    ports: Option<&[PortCfg]>,
    pools: Option<&[Pool]>,
) -> Option<Vec<nat::DnatRule>> {
    let before = errs.0.len();
    if raw.len() > lim::DNAT_RULES_MAX {
        errs.push(
            "nat.dnat",
            format!(
                "{} rules, at most {} are supported",
                raw.len(),
                lim::DNAT_RULES_MAX
            ),
        );
    }
    let total: usize = raw.iter().map(|r| r.backends.len()).sum();
    if total > lim::DNAT_BACKENDS_TOTAL_MAX {
        errs.push(
            "nat.dnat",
            format!(
                "{total} backends over all rules, at most {} are supported",
                lim::DNAT_BACKENDS_TOTAL_MAX
            ),
        );
    }
    // Over a limit, the rule-against-rule checks below (quadratic) would only take time.
    if errs.0.len() != before {
        return None;
    }
    let mut kinds: Vec<Option<DnatKind>> = Vec::with_capacity(raw.len());
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let (kind, rule) = check_dnat_rule(errs, i, r, raw, raw_pools, ports, pools);
        kinds.push(kind);
        rules.extend(rule);
    }

    // Against each other: one rule per (address, protocol, port); an address-only rule owns its
    // address; and a host is the 1:1 backend of one address only (its own traffic leaves under it).
    for j in 0..raw.len() {
        let Some(kj) = kinds[j] else { continue };
        let b = &raw[j];
        let p = |f: &str| format!("nat.dnat[{j}].{f}");
        let who = format!("rule `{}`", b.name);
        for k in 0..j {
            let Some(kk) = kinds[k] else { continue };
            let a = &raw[k];
            // Formatted only for an error: this runs for every pair of rules.
            let other = || format!("nat.dnat[{k}] (`{}`)", a.name);
            if a.address == b.address {
                match (kk, kj) {
                    (DnatKind::Port(pa, qa), DnatKind::Port(pb, qb)) if (pa, qa) == (pb, qb) => {
                        errs.push(
                            p("port"),
                            format!(
                                "{who}: {} {}:{qb} is already forwarded by {}",
                                pb.name(),
                                b.address,
                                other()
                            ),
                        );
                        break;
                    }
                    (DnatKind::Port(..), DnatKind::Port(..)) => {}
                    (_, DnatKind::AddressOnly) => {
                        errs.push(
                            p("address"),
                            format!(
                                "{who}: an address-only rule takes every protocol and port of {}, which {} also uses",
                                b.address,
                                other()
                            ),
                        );
                        break;
                    }
                    (DnatKind::AddressOnly, _) => {
                        errs.push(
                            p("address"),
                            format!(
                                "{who}: {} belongs to address-only rule {}, which takes every protocol and port of it",
                                b.address,
                                other()
                            ),
                        );
                        break;
                    }
                }
            }
            if (kk, kj) == (DnatKind::AddressOnly, DnatKind::AddressOnly)
                && let (Some(ba), Some(bb)) = (a.backends.first(), b.backends.first())
                && ba.address == bb.address
            {
                errs.push(
                    p("backends[0].address"),
                    format!(
                        "{who}: {} is already the backend of address-only rule {}; its own traffic can leave under only one address",
                        bb.address,
                        other()
                    ),
                );
                break;
            }
        }
    }

    if errs.0.len() != before {
        return None;
    }
    Some(rules)
}

/// One rule on its own (and its name against the earlier ones). Returns what it matches (when
/// `protocol` and `port` agree, for the checks between rules) and the rule when it has no problem.
fn check_dnat_rule(
    errs: &mut Errors,
    i: usize,
    r: &RawDnat,
    all: &[RawDnat],
    raw_pools: &[RawPool],
    ports: Option<&[PortCfg]>,
    pools: Option<&[Pool]>,
) -> (Option<DnatKind>, Option<nat::DnatRule>) {
    let before = errs.0.len();
    let p = |f: &str| format!("nat.dnat[{i}].{f}");
    let who = format!("rule `{}`", r.name);

    if !check_dnat_name(&r.name) {
        errs.push(
            p("name"),
            format!(
                "`{}` must be 1 to {} characters of A-Z, a-z, 0-9, `_`, `.` and `-`",
                r.name,
                lim::DNAT_NAME_MAX_LEN
            ),
        );
    } else if let Some(k) = all[..i].iter().position(|o| o.name == r.name) {
        errs.push(
            p("name"),
            format!("`{}` is already used by nat.dnat[{k}]", r.name),
        );
    }

    let kind = match (r.protocol, r.port) {
        (Some(proto), Some(port)) => match port_number(port) {
            Some(port) => Some(DnatKind::Port(proto, port)),
            None => {
                errs.push(p("port"), format!("{who}: {port} is outside 1..=65535"));
                None
            }
        },
        (Some(_), None) => {
            errs.push(
                p("port"),
                format!("{who}: required with `protocol` (an address-only rule has neither)"),
            );
            None
        }
        (None, Some(_)) => {
            errs.push(
                p("protocol"),
                format!(
                    "{who}: required with `port`: tcp or udp (an address-only rule has neither)"
                ),
            );
            None
        }
        (None, None) => Some(DnatKind::AddressOnly),
    };
    let address_only = kind == Some(DnatKind::AddressOnly);
    let identity = address_only && r.backends.len() == 1 && r.backends[0].address == r.address;

    // The address clients connect to.
    if let Some(block) = non_unicast_block(r.address) {
        errs.push(
            p("address"),
            format!("{who}: {} is {block}, not a unicast address", r.address),
        );
    } else if let Some(ports) = ports {
        // An identity rule's address is its backend, an inside host with an address of its own;
        // it is checked as a backend below.
        if !identity
            && let Some((k, what)) = covering_route(ports, r.address)
            && ports[k].role == Role::Inside
        {
            errs.push(
                p("address"),
                format!(
                    "{who}: {} is on the inside ({what}); clients connect to an outside or routed address, the backends are on the inside",
                    r.address
                ),
            );
        }
        for (k, port) in ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.role == Role::Outside)
        {
            let mut taken: Vec<(Ipv4Addr, String)> = Vec::new();
            taken.extend(port.gateway.map(|g| (g, "gateway".to_owned())));
            taken.extend(
                port.routes
                    .iter()
                    .enumerate()
                    .map(|(j, rt)| (rt.via, format!("routes[{j}].via"))),
            );
            taken.extend(
                port.neighbours
                    .iter()
                    .enumerate()
                    .map(|(j, n)| (n.ip, format!("neighbours[{j}].ip"))),
            );
            if port.prefix.len <= 30 {
                taken.push((port.prefix.network(), "network address".to_owned()));
                taken.push((port.prefix.broadcast(), "broadcast address".to_owned()));
            }
            if let Some((ip, what)) = taken.into_iter().find(|(ip, _)| *ip == r.address) {
                errs.push(
                    p("address"),
                    format!(
                        "{who}: {ip} is the {what} of ports[{k}] (`{}`), not an address of ours",
                        port.name
                    ),
                );
            }
        }
        if let Some(pools) = pools {
            match pools
                .iter()
                .enumerate()
                .find(|(_, pool)| pool.contains(r.address))
            {
                Some((k, pool)) => {
                    let whose = if pool.masquerade {
                        format!(
                            "masquerade pool `{}` (pools[{k}], the outside port's own address)",
                            pool.name
                        )
                    } else {
                        format!("pool `{}` (pools[{k}])", pool.name)
                    };
                    match kind {
                        Some(DnatKind::AddressOnly) => errs.push(
                            p("address"),
                            format!(
                                "{who}: {} is an address of {whose}; an address-only rule takes every port of it, and source NAT hands those out too",
                                r.address
                            ),
                        ),
                        Some(DnatKind::Port(_, port))
                            if (pool.port_lo..=pool.port_hi).contains(&port) =>
                        {
                            errs.push(
                                p("port"),
                                format!(
                                    "{who}: {port} is in the port range {}-{} that {whose} hands out on {}; use a port outside it or narrow the pool's ports",
                                    pool.port_lo, pool.port_hi, r.address
                                ),
                            )
                        }
                        _ => {}
                    }
                }
                None => {
                    let outside = ports.iter().find(|p| p.role == Role::Outside);
                    if address_only && outside.is_some_and(|o| o.address == r.address) {
                        errs.push(
                            p("address"),
                            format!(
                                "{who}: {} is the outside port's own address (cgnatd answers ARP and ping on it); an address-only rule would take every protocol and port of it",
                                r.address
                            ),
                        );
                    }
                }
            }
        }
    }

    // Backends.
    let n = r.backends.len();
    if n == 0 {
        errs.push(
            p("backends"),
            format!("{who}: at least one backend is required"),
        );
    } else if n > lim::DNAT_BACKENDS_MAX {
        errs.push(
            p("backends"),
            format!(
                "{who}: {n} backends, at most {} are supported",
                lim::DNAT_BACKENDS_MAX
            ),
        );
    } else if address_only && n != 1 {
        errs.push(
            p("backends"),
            format!(
                "{who}: an address-only rule (no protocol and port) maps to exactly one backend, not {n}"
            ),
        );
    } else if r.backends.iter().all(|b| b.weight == 0) {
        errs.push(
            p("backends"),
            format!(
                "{who}: zero total weight: every backend has weight 0, so no new flow could be forwarded (weight 0 drains a backend; keep one above 0)"
            ),
        );
    }
    let rule_port = match kind {
        Some(DnatKind::Port(_, port)) => port,
        _ => 0,
    };
    let mut backends = Vec::with_capacity(n);
    for (j, b) in r.backends.iter().enumerate() {
        let bp = |f: &str| p(&format!("backends[{j}].{f}"));
        if let Some(block) = non_unicast_block(b.address) {
            errs.push(
                bp("address"),
                format!("{who}: {} is {block}, not a unicast address", b.address),
            );
        } else if let Some(ports) = ports {
            if let Some((k, port)) = ports
                .iter()
                .enumerate()
                .find(|(_, port)| port.address == b.address)
            {
                errs.push(
                    bp("address"),
                    format!(
                        "{who}: {} is the address of ports[{k}] (`{}`), cgnatd itself",
                        b.address, port.name
                    ),
                );
            } else if let Some((k, pool)) = pools.and_then(|pools| {
                pools
                    .iter()
                    .enumerate()
                    .find(|(_, pool)| pool.contains(b.address))
            }) {
                errs.push(
                    bp("address"),
                    format!(
                        "{who}: {} is an address of pool `{}` (pools[{k}]), not an inside host",
                        b.address, pool.name
                    ),
                );
            } else if let Some(e) = not_on_the_inside(ports, b.address) {
                errs.push(bp("address"), format!("{who}: {e}"));
            } else if let Some((k, port)) = ports.iter().enumerate().find(|(_, port)| {
                port.role == Role::Inside
                    && port.prefix.len <= 30
                    && (b.address == port.prefix.network() || b.address == port.prefix.broadcast())
            }) {
                errs.push(
                    bp("address"),
                    format!(
                        "{who}: {} is the network or broadcast address of {}, the subnet of ports[{k}] (`{}`)",
                        b.address, port.prefix, port.name
                    ),
                );
            }
        }
        let port = match b.port {
            Some(_) if address_only => {
                errs.push(
                    bp("port"),
                    format!(
                        "{who}: an address-only rule keeps every port as it is; a backend port needs `protocol` and `port` on the rule"
                    ),
                );
                0
            }
            Some(v) => port_number(v).unwrap_or_else(|| {
                errs.push(bp("port"), format!("{who}: {v} is outside 1..=65535"));
                0
            }),
            None => rule_port,
        };
        if b.weight > lim::DNAT_WEIGHT_MAX {
            errs.push(
                bp("weight"),
                format!(
                    "{who}: {} is more than {} (weights are relative)",
                    b.weight,
                    lim::DNAT_WEIGHT_MAX
                ),
            );
        }
        if let Some(k) = backends
            .iter()
            .position(|o: &nat::Backend| o.addr == u32::from(b.address) && o.port == port)
        {
            let at = if address_only {
                b.address.to_string()
            } else {
                format!("{}:{port}", b.address)
            };
            errs.push(
                p(&format!("backends[{j}]")),
                format!("{who}: {at} is already backends[{k}]"),
            );
        }
        backends.push(nat::Backend {
            addr: u32::from(b.address),
            port,
            weight: b.weight,
        });
    }

    // Options that only services have.
    if address_only {
        for (f, given) in [
            ("scheduler", r.scheduler.is_some()),
            ("affinity_timeout", r.affinity_timeout.is_some()),
            ("snat", r.snat.is_some()),
        ] {
            if given {
                errs.push(
                    p(f),
                    format!(
                        "{who}: does not apply to an address-only rule (1:1 NAT has one backend and keeps every port)"
                    ),
                );
            }
        }
    }
    if let Some(t) = r.affinity_timeout
        && !(1..=lim::DNAT_AFFINITY_MAX_SECS).contains(&t)
    {
        errs.push(
            p("affinity_timeout"),
            format!(
                "{who}: {t} s is outside 1..={} seconds (leave it out for no client-IP affinity)",
                lim::DNAT_AFFINITY_MAX_SECS
            ),
        );
    }
    let snat_pool = match &r.snat {
        None => None,
        Some(name) => match raw_pools.iter().position(|pool| pool.name == *name) {
            None => {
                let names: Vec<&str> = raw_pools.iter().map(|p| p.name.as_str()).collect();
                errs.push(
                    p("snat"),
                    format!(
                        "{who}: no pool named `{name}` (pools: {})",
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
                None
            }
            Some(k) if raw_pools[k].allocation.mode == AllocationMode::Deterministic => {
                errs.push(
                    p("snat"),
                    format!(
                        "{who}: pool `{name}` (pools[{k}]) is deterministic: its ports are fixed in advance for the subscribers of its inside prefix, and the clients of a DNAT rule are outside hosts with no range of their own; use a pool with another allocation mode"
                    ),
                );
                None
            }
            Some(k) => Some(k),
        },
    };

    let Some(kind) = kind.filter(|_| errs.0.len() == before) else {
        return (kind, None);
    };
    let proto = match kind {
        DnatKind::Port(DnatProtocol::Tcp, _) => Some(wire::ip_proto::TCP),
        DnatKind::Port(DnatProtocol::Udp, _) => Some(wire::ip_proto::UDP),
        DnatKind::AddressOnly => None,
    };
    let rule = nat::DnatRule {
        name: r.name.clone(),
        addr: u32::from(r.address),
        proto,
        port: rule_port,
        backends,
        scheduler: match r.scheduler {
            None | Some(DnatScheduler::Random) => nat::Scheduler::WeightedRandom,
            Some(DnatScheduler::RoundRobin) => nat::Scheduler::RoundRobin,
            Some(DnatScheduler::Maglev) => nat::Scheduler::Maglev,
        },
        affinity_s: r.affinity_timeout.unwrap_or(0),
        snat_pool,
        on_removal: match r.on_backend_removal {
            None | Some(DnatOnRemoval::Drain) => nat::OnRemoval::Drain,
            Some(DnatOnRemoval::Cut) => nat::OnRemoval::Cut,
        },
    };
    (Some(kind), Some(rule))
}

fn check_nat(errs: &mut Errors, raw: &crate::raw::RawNat) -> NatCfg {
    if !(lim::MAX_SESSIONS_MIN..=lim::MAX_SESSIONS_MAX).contains(&raw.max_sessions) {
        errs.push(
            "nat.max_sessions",
            format!(
                "{} is outside {}..={}",
                raw.max_sessions,
                lim::MAX_SESSIONS_MIN,
                lim::MAX_SESSIONS_MAX
            ),
        );
    }
    let t = &raw.timeouts;
    for (name, v) in [
        ("tcp_established", t.tcp_established),
        ("tcp_transitory", t.tcp_transitory),
        ("udp", t.udp),
        ("icmp", t.icmp),
    ] {
        if v == 0 || v > lim::TIMEOUT_MAX_SECS {
            errs.push(
                format!("nat.timeouts.{name}"),
                format!(
                    "{v} s is outside 1..={} seconds (timeouts are whole seconds)",
                    lim::TIMEOUT_MAX_SECS
                ),
            );
        }
    }
    if t.enforce_rfc_minimums {
        for (name, v, min, why) in [
            (
                "udp",
                t.udp,
                lim::UDP_TIMEOUT_MIN_SECS,
                "RFC 4787 REQ-5 forbids UDP mappings expiring in under two minutes",
            ),
            (
                "tcp_established",
                t.tcp_established,
                lim::TCP_ESTABLISHED_MIN_SECS,
                "RFC 5382 REQ-5 forbids established connections expiring in under 2 h 4 min",
            ),
            (
                "icmp",
                t.icmp,
                lim::ICMP_TIMEOUT_MIN_SECS,
                "RFC 5508 REQ-1 forbids ICMP query mappings expiring in under 60 s",
            ),
        ] {
            if v > 0 && v < min {
                errs.push(
                    format!("nat.timeouts.{name}"),
                    format!(
                        "{v} s is below {min} s; {why} (set nat.timeouts.enforce_rfc_minimums: false \
                         to allow it in a lab)"
                    ),
                );
            }
        }
    }
    if t.tcp_established < t.tcp_transitory {
        errs.push(
            "nat.timeouts.tcp_established",
            format!(
                "{} s is shorter than tcp_transitory ({} s); an established connection would be dropped sooner than a closing one",
                t.tcp_established, t.tcp_transitory
            ),
        );
    }
    for (name, v) in [
        ("max_mappings", raw.max_mappings),
        ("max_subscribers", raw.max_subscribers),
    ] {
        if v != 0 && !(lim::MAX_SESSIONS_MIN..=lim::MAX_SESSIONS_MAX).contains(&v) {
            errs.push(
                format!("nat.{name}"),
                format!(
                    "{v} is outside {}..={} (0 = max_sessions)",
                    lim::MAX_SESSIONS_MIN,
                    lim::MAX_SESSIONS_MAX
                ),
            );
        }
    }
    if raw.hold_down > lim::TIMEOUT_MAX_SECS {
        errs.push(
            "nat.hold_down",
            format!(
                "{} s is more than {} s",
                raw.hold_down,
                lim::TIMEOUT_MAX_SECS
            ),
        );
    }
    if raw.event_ring > lim::MAX_SESSIONS_MAX {
        errs.push(
            "nat.event_ring",
            format!("{} is more than {}", raw.event_ring, lim::MAX_SESSIONS_MAX),
        );
    }
    let f = &raw.fragments;
    for (name, v, max) in [
        ("max_datagrams", f.max_datagrams, lim::FRAG_TABLE_MAX),
        ("max_held", f.max_held, lim::FRAG_HELD_MAX),
    ] {
        if v == 0 || v > max {
            errs.push(
                format!("nat.fragments.{name}"),
                format!("{v} is outside 1..={max}"),
            );
        }
    }
    if !(lim::FRAG_TIMEOUT_MIN_MS..=lim::FRAG_TIMEOUT_MAX_MS).contains(&f.timeout_ms) {
        errs.push(
            "nat.fragments.timeout_ms",
            format!(
                "{} ms is outside {}..={} ms",
                f.timeout_ms,
                lim::FRAG_TIMEOUT_MIN_MS,
                lim::FRAG_TIMEOUT_MAX_MS
            ),
        );
    }
    NatCfg {
        max_sessions: raw.max_sessions,
        max_mappings: raw.max_mappings,
        max_subscribers: raw.max_subscribers,
        limits: Limits {
            max_sessions_per_subscriber: raw.limits.max_sessions_per_subscriber,
            max_ports_per_subscriber: raw.limits.max_ports_per_subscriber,
            icmp_unreachable: raw.limits.icmp_unreachable,
        },
        hold_down: secs(raw.hold_down),
        udp_inbound_refresh: raw.udp_inbound_refresh,
        event_ring: raw.event_ring,
        fragments: FragmentsCfg {
            max_datagrams: f.max_datagrams,
            max_held: f.max_held,
            timeout: Duration::from_millis(u64::from(f.timeout_ms)),
        },
        timeouts: Timeouts {
            tcp_established: secs(t.tcp_established),
            tcp_transitory: secs(t.tcp_transitory),
            udp: secs(t.udp),
            icmp: secs(t.icmp),
            rfc_minimums: t.enforce_rfc_minimums,
        },
    }
}

fn check_neighbour(errs: &mut Errors, raw: &crate::raw::RawNeighbour) -> NeighbourCfg {
    if raw.reachable_time == 0 || raw.reachable_time > lim::REACHABLE_TIME_MAX_SECS {
        errs.push(
            "neighbour.reachable_time",
            format!(
                "{} s is outside 1..={} seconds",
                raw.reachable_time,
                lim::REACHABLE_TIME_MAX_SECS
            ),
        );
    }
    if !(lim::RETRANSMIT_MIN_MS..=lim::RETRANSMIT_MAX_MS).contains(&raw.retransmit_ms) {
        errs.push(
            "neighbour.retransmit_ms",
            format!(
                "{} ms is outside {}..={} ms",
                raw.retransmit_ms,
                lim::RETRANSMIT_MIN_MS,
                lim::RETRANSMIT_MAX_MS
            ),
        );
    }
    NeighbourCfg {
        reachable_time: secs(raw.reachable_time),
        retransmit: Duration::from_millis(u64::from(raw.retransmit_ms)),
    }
}

fn check_logging(errs: &mut Errors, raw: crate::raw::RawLogging) -> LoggingCfg {
    // The full filter grammar belongs to tracing-subscriber, which cgnatd applies at start-up;
    // here only what can never be a filter is caught, so a typo fails at load time.
    if raw.level.trim().is_empty() {
        errs.push("logging.level", "must not be empty (e.g. `info`)");
    } else if raw.level.chars().any(char::is_whitespace) {
        errs.push(
            "logging.level",
            format!(
                "`{}` contains whitespace; directives are comma-separated, e.g. `info,dataplane=debug`",
                raw.level
            ),
        );
    }
    LoggingCfg {
        level: raw.level,
        format: raw.format,
        nat_events: raw.nat_events,
    }
}
