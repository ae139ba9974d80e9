//! The cgnatd configuration: the YAML schema and its validation into domain types.
//!
//! A config file describes one cgnatd instance: how DPDK starts (`eal`), which lcores run
//! workers, the two ports, the public address pools, the source-NAT rules, NAT table size
//! and timeouts, the destination NAT rules, ARP behaviour, the management listener and
//! logging. docs/CONFIG.md is the field-by-field reference.
//!
//! Destination NAT rules (`nat.dnat`) are validated straight into the NAT core's
//! [`nat::DnatRule`]. The translation policy (pools, snat, exclusions, nat timeouts, limits,
//! hold-down, inbound refresh and dnat) is the part of a running configuration that can be
//! replaced, through the management API or a reload: [`policy`] holds it as a document and
//! merges it into a whole configuration, and [`reload_policy`] checks a whole new file and hands
//! back its policy only when nothing else in it changed.
//!
//! Loading is two steps. The YAML is deserialized into private "raw" structs that mirror the
//! file and reject unknown keys; syntax, type and unknown-key errors carry the field path and
//! line:column. The raw structs are then validated as a whole into the public types below;
//! every rule violation is reported with the path of the field concerned
//! (`ports[1].gateway`), all of them at once. Loading reads the file and nothing else.
//!
//! Limitations:
//! - IPv4 only, and exactly one inside and one outside port.
//! - Times are whole seconds (integers); strings such as `2h` are rejected.
//! - Validation does not look at the host: whether the lcores, PCI devices, interfaces or
//!   hugepages exist is found out when DPDK starts.
//! - `logging.level` is only checked for obvious mistakes; its full grammar
//!   (tracing-subscriber's `EnvFilter`) is checked when cgnatd installs the subscriber.
#![forbid(unsafe_code)]

pub mod defaults;
mod eal;
mod error;
pub mod limits;
mod net;
pub mod policy;
mod raw;
mod types;
mod validate;

use std::path::Path;
use std::time::Duration;

pub use eal::{Eal, EalLogLevel, MAX_LCORE, Memory};
pub use error::{ConfigError, FieldError, Location};
pub use net::{AddressRange, Ipv4Net, MacAddr, ParseError, PortRange};
pub use policy::PolicyDoc;
pub use types::{
    Allocation, AllocationMode, DataplaneCfg, Device, Exclusion, Filtering, FragmentsCfg,
    InjectPanic, Limits, LogFormat, LoggingCfg, MgmtCfg, MgmtTls, NatCfg, NeighbourCfg, Pool,
    PortCfg, Role, Route, SnatRule, StaticNeighbour, Timeouts, Workers,
};

/// A validated cgnatd configuration.
///
/// The fields are public for reading and for targeted overrides (tests, command-line flags),
/// but the invariants established by validation (one inside and one outside port, pool
/// indices in `snat` in range) are the caller's to keep when editing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub eal: Eal,
    pub workers: Workers,
    pub ports: Vec<PortCfg>,
    pub pools: Vec<Pool>,
    pub snat: Vec<SnatRule>,
    /// Destination NAT rules (`nat.dnat`), in file order, names unique. `snat_pool` indexes
    /// `pools`, as `SnatRule::pool` does; a port-less backend of a port rule already carries the
    /// rule's port.
    pub dnat: Vec<nat::DnatRule>,
    /// Destinations forwarded untranslated (RFC 6888 REQ-6).
    pub exclusions: Vec<Exclusion>,
    pub nat: NatCfg,
    pub neighbour: NeighbourCfg,
    pub mgmt: MgmtCfg,
    pub logging: LoggingCfg,
    /// Period of the counter summary log line; zero disables it.
    pub stats_interval: Duration,
    pub dataplane: DataplaneCfg,
}

impl Config {
    /// Parses and validates a config held in memory.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
        validate::validate(raw)
    }

    /// Reads, parses and validates a config file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Config::from_yaml_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            error: Box::new(e),
        })
    }

    /// The complete EAL argument vector, `program` first, for `rte_eal_init`.
    ///
    /// Order: lcores (`-l`, or `--lcores` for the `lcore@cpu` syntax that DPDK 22.11's `-l`
    /// does not accept), `--main-lcore`, memory flags, `--file-prefix`, `--log-level`, one
    /// `--vdev` or `-a` per port in config order, `--no-pci` when no port is a PCI device,
    /// then `eal.extra_args` verbatim.
    ///
    /// `--main-lcore` is always passed: DPDK would otherwise pick the lowest lcore id, which
    /// differs from the first listed one for lists such as "2,0,1", and `worker_lcores`
    /// must agree with DPDK about which lcore is free for workers.
    ///
    /// `--no-pci` keeps DPDK from probing (and possibly grabbing) NICs nobody configured;
    /// it is left out when `extra_args` allow-lists a PCI device (`-a`/`--allow`) itself.
    pub fn eal_args(&self, program: &str) -> Vec<String> {
        let eal = &self.eal;
        let mut args = vec![program.to_owned()];
        if let Some(lcores) = &eal.lcores {
            let flag = if eal::is_lcore_map(lcores) {
                "--lcores"
            } else {
                "-l"
            };
            args.push(flag.to_owned());
            args.push(lcores.clone());
        }
        args.push("--main-lcore".to_owned());
        args.push(eal.main_lcore.to_string());
        match eal.memory {
            Memory::NoHuge { size_mb } => {
                args.push("--no-huge".to_owned());
                args.push("-m".to_owned());
                args.push(size_mb.to_string());
            }
            Memory::Hugepages { size_mb } => {
                // Unlinking the hugepage files as soon as they are mapped means a crashed
                // cgnatd leaves nothing behind in /dev/hugepages for the next start to trip on.
                args.push("--huge-unlink".to_owned());
                if let Some(mb) = size_mb {
                    args.push("-m".to_owned());
                    args.push(mb.to_string());
                }
            }
        }
        args.push("--file-prefix".to_owned());
        args.push(eal.file_prefix.clone());
        args.push(format!("--log-level=*:{}", eal.log_level));
        let mut any_pci = false;
        for port in &self.ports {
            match &port.device {
                Device::Vdev { spec } => {
                    args.push("--vdev".to_owned());
                    args.push(spec.clone());
                }
                Device::Pci { addr } => {
                    any_pci = true;
                    args.push("-a".to_owned());
                    args.push(addr.clone());
                }
            }
        }
        let extra_allows = eal::has_option(&eal.extra_args, "-a").is_some()
            || eal::has_option(&eal.extra_args, "--allow").is_some();
        if !any_pci && !extra_allows && eal::has_option(&eal.extra_args, "--no-pci").is_none() {
            args.push("--no-pci".to_owned());
        }
        args.extend(eal.extra_args.iter().cloned());
        args
    }

    /// The inside (subscriber-facing) port.
    ///
    /// # Panics
    /// If `ports` was edited after validation so that no inside port is left.
    pub fn inside_port(&self) -> &PortCfg {
        self.port_with_role(Role::Inside)
    }

    /// The outside (public) port.
    ///
    /// # Panics
    /// If `ports` was edited after validation so that no outside port is left.
    pub fn outside_port(&self) -> &PortCfg {
        self.port_with_role(Role::Outside)
    }

    fn port_with_role(&self, role: Role) -> &PortCfg {
        match self.ports.iter().find(|p| p.role == role) {
            Some(p) => p,
            None => panic!("validated Config lost its {role} port"),
        }
    }

    /// The port with the given config name.
    pub fn port(&self, name: &str) -> Option<&PortCfg> {
        self.ports.iter().find(|p| p.name == name)
    }

    /// Index into `pools` of the pool with the given name.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    /// The lcore ids that run workers, in worker order. For `workers: n` these are the first
    /// n lcores of the list other than the main lcore.
    pub fn worker_lcores(&self) -> Vec<u32> {
        match &self.workers {
            Workers::Count(n) => self
                .eal
                .lcore_ids
                .iter()
                .copied()
                .filter(|&id| id != self.eal.main_lcore)
                .take(usize::from(*n))
                .collect(),
            Workers::Lcores(ids) => ids.clone(),
        }
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Replaces `eal.file_prefix`, with the same validation as the file. Tests and parallel
    /// runs use this to keep DPDK instances from sharing runtime files.
    pub fn with_file_prefix(&mut self, prefix: &str) -> Result<&mut Self, ConfigError> {
        validate::check_file_prefix(prefix).map_err(|message| ConfigError::Invalid {
            errors: vec![FieldError {
                path: "eal.file_prefix".to_owned(),
                message,
            }],
        })?;
        self.eal.file_prefix = prefix.to_owned();
        Ok(self)
    }
}

/// Parses and validates a whole new config file and returns its translation policy, for a
/// reload (SIGHUP) of a running daemon whose configuration is `old`.
///
/// Only the policy ([`policy::SECTIONS`]) may change: every other section (or `nat` field) that
/// differs from `old` is reported, in file order, with the message that a restart is needed. A
/// new file that does not validate is reported exactly as [`Config::from_yaml_str`] reports it.
/// Whether the running data plane can take the new policy is [`policy::check_live`]'s question,
/// left to the caller so that a reload and an API Apply go through the same path.
///
/// `old` is compared as it is, so it should be the configuration as loaded from the file:
/// an override applied after loading (such as [`Config::with_file_prefix`] for `--file-prefix`)
/// makes its section (`eal`) differ, so keep a copy from before the overrides for this call.
pub fn reload_policy(old: &Config, new_text: &str) -> Result<PolicyDoc, ConfigError> {
    let new = Config::from_yaml_str(new_text)?;
    let message = format!(
        "differs from the running configuration; only the translation policy ({}) can be \
         reloaded, restart cgnatd to apply this change",
        policy::sections_list()
    );
    let errors: Vec<FieldError> = changed_fixed_sections(old, &new)
        .into_iter()
        .map(|path| FieldError {
            path: path.to_owned(),
            message: message.clone(),
        })
        .collect();
    if !errors.is_empty() {
        return Err(ConfigError::Invalid { errors });
    }
    PolicyDoc::from_config_text(new_text)
}

/// [`reload_policy`] for a file; errors name the file, as [`Config::load`]'s do.
pub fn reload_policy_file(old: &Config, path: &Path) -> Result<PolicyDoc, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    reload_policy(old, &text).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        error: Box::new(e),
    })
}

/// The paths of the sections (and `nat` fields) outside the translation policy in which `new`
/// differs from `old`, in file order. Both structs are taken apart field by field, so a field
/// added later has to be put on one side or the other here.
fn changed_fixed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let Config {
        eal,
        workers,
        ports,
        // The translation policy.
        pools: _,
        snat: _,
        dnat: _,
        exclusions: _,
        nat,
        neighbour,
        mgmt,
        logging,
        stats_interval,
        dataplane,
    } = new;
    let NatCfg {
        max_sessions,
        max_mappings,
        max_subscribers,
        // The translation policy.
        timeouts: _,
        limits: _,
        hold_down: _,
        udp_inbound_refresh: _,
        event_ring,
        fragments,
    } = nat;
    let o = &old.nat;
    [
        ("eal", *eal == old.eal),
        ("workers", *workers == old.workers),
        ("ports", *ports == old.ports),
        ("nat.max_sessions", *max_sessions == o.max_sessions),
        ("nat.max_mappings", *max_mappings == o.max_mappings),
        ("nat.max_subscribers", *max_subscribers == o.max_subscribers),
        ("nat.event_ring", *event_ring == o.event_ring),
        ("nat.fragments", *fragments == o.fragments),
        ("neighbour", *neighbour == old.neighbour),
        ("mgmt", *mgmt == old.mgmt),
        ("logging", *logging == old.logging),
        ("stats_interval", *stats_interval == old.stats_interval),
        ("dataplane", *dataplane == old.dataplane),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(path, _)| path)
    .collect()
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;
