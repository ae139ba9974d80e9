//! The translation policy: the part of a configuration the management API may replace while
//! cgnatd runs.
//!
//! The policy is these sections of a config document: `pools`, `snat`, `exclusions`, and under
//! `nat`: `timeouts`, `limits`, `hold_down`, `udp_inbound_refresh` and `dnat`. Everything else
//! (EAL, workers, ports, table sizes, fragments, neighbour, mgmt, logging, stats interval,
//! dataplane) sizes or wires up the process and is fixed at start.
//!
//! A [`PolicyDoc`] holds the policy as a YAML value with exactly the config file's keys, not as
//! validated types, for two reasons: the gRPC API and `cgnatctl rules apply -f` carry it as a
//! document (so an operator writes the same text as in the config file), and a policy is only
//! meaningful against the rest of a configuration (pool addresses are checked against the ports,
//! DNAT backends against the inside routes). So a document is checked only for being policy
//! ([`PolicyDoc::from_value`]), and [`PolicyDoc::apply_to`] validates it as part of a whole
//! configuration, with the same rules and error paths as the config file.
//!
//! [`diff`] says what a new policy changes (dry runs, logs); [`check_live`] refuses what the
//! running data plane cannot take over (a pool's ports, filtering or allocation, for example).
//!
//! # Paths
//! Validation errors ([`ConfigError`], [`check_live`]) use the config file's field paths
//! (`pools[1].addresses[0]`, `nat.dnat[0].snat`), positions counted in the document.
//!
//! [`diff`] and [`EditError`] name an entry by its key, the way an operator addresses it:
//! pools and DNAT rules by name (`pools.pub`, `nat.dnat.web`), SNAT rules and exclusions by
//! position (`snat[1]`, `exclusions[0]`). A field of a named entry follows its name
//! (`pools.pub.name`); a problem with a section as a whole (a position past its end, a new entry
//! without a name) is reported at the section (`pools`, `nat.dnat`). DNAT names may contain dots,
//! so `nat.dnat.<name>` is for reading, not for splitting.
//!
//! Limitation: numbers are taken as they are, so a JSON document whose integers arrive as floats
//! (google.protobuf.Struct) must be converted to integers by the caller; `300.0` is rejected as
//! it would be in the config file.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use serde_yaml::{Mapping, Sequence, Value};

use crate::{
    Allocation, Config, ConfigError, Exclusion, FieldError, Filtering, Limits, Pool, SnatRule,
    Timeouts,
};

/// The policy's sections, as config paths, in file order.
pub const SECTIONS: [&str; 8] = [
    "pools",
    "snat",
    "exclusions",
    "nat.timeouts",
    "nat.limits",
    "nat.hold_down",
    "nat.udp_inbound_refresh",
    "nat.dnat",
];

/// Top-level policy keys.
const TOP_KEYS: [&str; 3] = ["pools", "snat", "exclusions"];
/// Policy keys under `nat`.
const NAT_KEYS: [&str; 5] = [
    "timeouts",
    "limits",
    "hold_down",
    "udp_inbound_refresh",
    "dnat",
];
/// Config keys outside the policy. Listed so that one of them in a policy document gets "change
/// it in the configuration file" rather than "unknown key", which would send the operator
/// looking for a typo.
const FIXED_TOP_KEYS: [&str; 8] = [
    "eal",
    "workers",
    "ports",
    "neighbour",
    "mgmt",
    "logging",
    "stats_interval",
    "dataplane",
];
const FIXED_NAT_KEYS: [&str; 5] = [
    "max_sessions",
    "max_mappings",
    "max_subscribers",
    "event_ring",
    "fragments",
];

/// `pools, snat, …, nat.dnat`, for messages.
pub(crate) fn sections_list() -> String {
    SECTIONS.join(", ")
}

/// The translation policy of a configuration, as a document: a YAML mapping holding only
/// policy keys (see the module documentation), in the config file's syntax.
///
/// Invariant, kept by every constructor: the value is a mapping whose keys are policy keys, its
/// `nat` (if any) is a mapping of policy keys, and it can be written as YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDoc(Value);

impl PolicyDoc {
    /// The policy sections of a whole config file's text; keys not present stay absent, so
    /// [`apply_to`](Self::apply_to) with the same text as base gives the same configuration.
    ///
    /// Only the YAML is read here; whether the file is a valid configuration is
    /// [`Config::from_yaml_str`]'s business.
    pub fn from_config_text(text: &str) -> Result<PolicyDoc, ConfigError> {
        let v: Value = serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
        let Value::Mapping(config) = v else {
            return Err(not_a_mapping(
                &v,
                "a cgnatd config mapping (eal, ports, pools, ...)",
            ));
        };
        let mut out = Mapping::new();
        // Walk the file's own order so that the document reads like the file.
        for (k, val) in &config {
            match k.as_str() {
                Some(key) if TOP_KEYS.contains(&key) => {
                    out.insert(k.clone(), val.clone());
                }
                // A `nat` that is not a mapping holds no policy; the config's own validation
                // reports it.
                Some("nat") => {
                    if let Value::Mapping(nat) = val {
                        let policy: Mapping = nat
                            .iter()
                            .filter(|(nk, _)| nk.as_str().is_some_and(|s| NAT_KEYS.contains(&s)))
                            .map(|(nk, nv)| (nk.clone(), nv.clone()))
                            .collect();
                        if !policy.is_empty() {
                            out.insert(k.clone(), Value::Mapping(policy));
                        }
                    }
                }
                _ => {}
            }
        }
        PolicyDoc::from_value(Value::Mapping(out))
    }

    /// A policy-only document (YAML text), as `cgnatctl rules apply -f` reads it.
    ///
    /// A key outside the policy is an error naming it (`eal`, `nat.max_sessions`): silently
    /// ignoring it would let an operator believe a restart-only setting had been applied. A
    /// document that is not a mapping (an empty file included) is an error at `(top level)`,
    /// since taking it as an empty policy would remove every pool and rule.
    pub fn from_yaml_str(text: &str) -> Result<PolicyDoc, ConfigError> {
        let v: Value = serde_yaml::from_str(text).map_err(ConfigError::from_yaml)?;
        PolicyDoc::from_value(v)
    }

    /// [`from_yaml_str`](Self::from_yaml_str)'s checks on an already-parsed value (the daemon
    /// converts the gRPC JSON object to a YAML value). The sections' contents are not looked at:
    /// [`apply_to`](Self::apply_to) validates them with the paths of the config file.
    pub fn from_value(v: Value) -> Result<PolicyDoc, ConfigError> {
        let Value::Mapping(m) = v else {
            return Err(not_a_mapping(
                &v,
                &format!("a mapping of the translation policy ({})", sections_list()),
            ));
        };
        let mut errors = Vec::new();
        for (k, val) in &m {
            match k.as_str() {
                Some(key) if TOP_KEYS.contains(&key) => {}
                Some("nat") => match val {
                    Value::Mapping(nat) => {
                        for nk in nat.keys() {
                            match nk.as_str() {
                                Some(s) if NAT_KEYS.contains(&s) => {}
                                Some(s) if FIXED_NAT_KEYS.contains(&s) => {
                                    errors.push(fixed_key(format!("nat.{s}")));
                                }
                                _ => errors.push(unknown_key(format!("nat.{}", key_text(nk)))),
                            }
                        }
                    }
                    other => errors.push(FieldError {
                        path: "nat".to_owned(),
                        message: format!(
                            "expected a mapping ({}), found {}",
                            NAT_KEYS.join(", "),
                            kind(other)
                        ),
                    }),
                },
                Some(key) if FIXED_TOP_KEYS.contains(&key) => {
                    errors.push(fixed_key(key.to_owned()))
                }
                _ => errors.push(unknown_key(key_text(k))),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid { errors });
        }
        let v = Value::Mapping(m);
        // Checked here once so that to_yaml_string and apply_to never meet a value they cannot
        // write (a tag on a tag, for instance).
        if let Err(e) = serde_yaml::to_string(&v) {
            return Err(ConfigError::Yaml {
                field: "(top level)".to_owned(),
                message: format!("cannot be written as YAML: {e}"),
                location: None,
            });
        }
        Ok(PolicyDoc(v))
    }

    /// The document.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// The document as YAML text, in the config file's syntax.
    pub fn to_yaml_string(&self) -> String {
        match serde_yaml::to_string(&self.0) {
            Ok(s) => s,
            // from_value checked that the value can be written, and a PolicyDoc is never built
            // otherwise; say so in the text rather than panic in a daemon.
            Err(e) => format!("# the translation policy cannot be written as YAML: {e}\n"),
        }
    }

    /// The configuration `base_config_text` (a whole config file) would be with its policy
    /// replaced by this document's.
    ///
    /// A policy key absent from the document is removed from the base, so it takes its default:
    /// Apply replaces the whole policy, and a section left out of it must not silently keep the
    /// running value. The result is parsed and validated as a whole, exactly as
    /// [`Config::from_yaml_str`] does, so errors carry the same paths (`pools[1].addresses[0]`,
    /// `snat[0].pool`). YAML line and column locations are dropped from errors in the merged
    /// document: they would point into a text the caller never saw.
    pub fn apply_to(&self, base_config_text: &str) -> Result<Config, ConfigError> {
        let base: Value = serde_yaml::from_str(base_config_text).map_err(ConfigError::from_yaml)?;
        let Value::Mapping(mut base) = base else {
            return Err(not_a_mapping(
                &base,
                "a cgnatd config mapping (eal, ports, pools, ...)",
            ));
        };
        // Always a mapping (see the type's invariant).
        let empty = Mapping::new();
        let doc = self.0.as_mapping().unwrap_or(&empty);
        replace_keys(&mut base, doc, &TOP_KEYS);
        let doc_nat = doc.get("nat").and_then(Value::as_mapping);
        match base.get_mut("nat") {
            Some(Value::Mapping(nat)) => {
                replace_keys(nat, doc_nat.unwrap_or(&empty), &NAT_KEYS);
            }
            // No nat section (or an empty `nat:`) in the base: the document's nat is all of it.
            Some(slot @ Value::Null) => {
                if let Some(n) = doc_nat {
                    *slot = Value::Mapping(n.clone());
                }
            }
            None => {
                if let Some(n) = doc_nat {
                    base.insert("nat".into(), Value::Mapping(n.clone()));
                }
            }
            // Not a mapping: validation of the merged text reports it at `nat`, as it would for
            // the base file itself.
            Some(_) => {}
        }
        let text = serde_yaml::to_string(&Value::Mapping(base)).map_err(|e| ConfigError::Yaml {
            field: "(top level)".to_owned(),
            message: format!("the merged configuration cannot be written as YAML: {e}"),
            location: None,
        })?;
        Config::from_yaml_str(&text).map_err(|e| match e {
            ConfigError::Yaml { field, message, .. } => ConfigError::Yaml {
                field,
                message,
                location: None,
            },
            other => other,
        })
    }

    /// A copy with one change made, for the fine-grained API calls (add a pool, delete a DNAT
    /// rule) that would otherwise make every client fetch, edit and re-send the whole policy.
    ///
    /// Only the shape needed to make the change is checked (the section is a list, the item a
    /// mapping, a named item has a string `name`, the key exists or is free); whether the result
    /// is a valid policy is [`apply_to`](Self::apply_to)'s to say, with full paths.
    pub fn edit(&self, edit: &Edit) -> Result<PolicyDoc, EditError> {
        let mut root = self.0.as_mapping().cloned().unwrap_or_default();
        let section = match edit {
            Edit::Add { section, .. }
            | Edit::Update { section, .. }
            | Edit::Delete { section, .. } => *section,
        };
        match edit {
            Edit::Add { item, position, .. } => {
                let seq = section_seq(&mut root, section, true)?
                    .ok_or_else(|| invalid(section, "is missing"))?;
                add(seq, section, item, *position)?;
            }
            Edit::Update { key, item, .. } => {
                section.check_key(key)?;
                let seq = section_seq(&mut root, section, false)?
                    .ok_or_else(|| not_found(section, key))?;
                update(seq, section, key, item)?;
            }
            Edit::Delete { key, .. } => {
                section.check_key(key)?;
                let seq = section_seq(&mut root, section, false)?
                    .ok_or_else(|| not_found(section, key))?;
                let i = find(seq, key).ok_or_else(|| not_found(section, key))?;
                seq.remove(i);
            }
        }
        PolicyDoc::from_value(Value::Mapping(root)).map_err(|e| EditError::Invalid {
            path: section.path().to_owned(),
            message: e.to_string(),
        })
    }
}

/// Replaces (in place, keeping the base's order) or removes each of `keys` in `target` as
/// `src` has it.
fn replace_keys(target: &mut Mapping, src: &Mapping, keys: &[&str]) {
    for &k in keys {
        match src.get(k) {
            // IndexMap semantics: an existing key keeps its position.
            Some(v) => {
                target.insert(k.into(), v.clone());
            }
            None => {
                target.shift_remove(k);
            }
        }
    }
}

fn not_a_mapping(v: &Value, expected: &str) -> ConfigError {
    ConfigError::Yaml {
        field: "(top level)".to_owned(),
        message: format!("expected {expected}, found {}", kind(v)),
        location: None,
    }
}

fn fixed_key(path: String) -> FieldError {
    FieldError {
        path,
        message: format!(
            "not part of the translation policy ({}); change it in the configuration file and \
             restart",
            sections_list()
        ),
    }
}

fn unknown_key(path: String) -> FieldError {
    FieldError {
        path,
        message: format!(
            "unknown key; the translation policy has {}",
            sections_list()
        ),
    }
}

/// A mapping key as an operator would write it.
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".to_owned(),
        other => format!("({})", kind(other)),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null or an empty document)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A list section of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Section {
    /// `pools`, entries keyed by name.
    Pools,
    /// `snat`, entries keyed by position: first match wins, so the position is the rule.
    Snat,
    /// `exclusions`, keyed by position like `snat`.
    Exclusions,
    /// `nat.dnat`, entries keyed by name.
    Dnat,
}

impl Section {
    /// The section's config path.
    pub fn path(self) -> &'static str {
        match self {
            Section::Pools => "pools",
            Section::Snat => "snat",
            Section::Exclusions => "exclusions",
            Section::Dnat => "nat.dnat",
        }
    }

    /// Whether entries are addressed by `name` ([`Key::Name`]) rather than by position.
    pub fn is_named(self) -> bool {
        matches!(self, Section::Pools | Section::Dnat)
    }

    fn noun(self) -> &'static str {
        match self {
            Section::Pools => "pool",
            Section::Snat => "snat rule",
            Section::Exclusions => "exclusion",
            Section::Dnat => "dnat rule",
        }
    }

    fn check_key(self, key: &Key) -> Result<(), EditError> {
        match (self.is_named(), key) {
            (true, Key::Name(_)) | (false, Key::Index(_)) => Ok(()),
            (true, Key::Index(i)) => Err(invalid(
                self,
                &format!(
                    "{}s are addressed by name, not by position ({i})",
                    self.noun()
                ),
            )),
            (false, Key::Name(n)) => Err(invalid(
                self,
                &format!(
                    "{}s are addressed by position ({}[0], ...), not by name (\"{n}\"): their order is what they mean",
                    self.noun(),
                    self.path()
                ),
            )),
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// A section name that [`Section::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy section `{0}`; expected pools, snat, exclusions or dnat")]
pub struct UnknownSection(pub String);

impl FromStr for Section {
    type Err = UnknownSection;

    /// The section paths, and the singular and short forms a command line invites
    /// (`pool`, `exclusion`, `dnat`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pools" | "pool" => Ok(Section::Pools),
            "snat" => Ok(Section::Snat),
            "exclusions" | "exclusion" => Ok(Section::Exclusions),
            "dnat" | "nat.dnat" => Ok(Section::Dnat),
            other => Err(UnknownSection(other.to_owned())),
        }
    }
}

/// Which entry of a section: by `name` for pools and DNAT rules, by position (0-based) for SNAT
/// rules and exclusions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Name(String),
    Index(usize),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Name(n) => f.write_str(n),
            Key::Index(i) => write!(f, "{i}"),
        }
    }
}

/// One change to a policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Inserts `item` (a mapping in the config file's syntax) before `position`, at the end when
    /// `None`. A named item (pools, DNAT rules) must have a string `name` not already taken.
    /// The section is created when the document has none.
    Add {
        section: Section,
        item: Value,
        position: Option<usize>,
    },
    /// Replaces the entry `key` with `item`. A named item's `name` must equal the key, or be left
    /// out (it is then set to the key): renaming is delete and add, because references
    /// (`snat[].pool`, `nat.dnat[].snat`) follow names.
    Update {
        section: Section,
        key: Key,
        item: Value,
    },
    /// Removes the entry `key`.
    Delete { section: Section, key: Key },
}

/// Why [`PolicyDoc::edit`] refused; paths as in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{path}: not in the policy")]
    NotFound { path: String },
    #[error("{path}: already in the policy; update it, or delete it first")]
    AlreadyExists { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl EditError {
    /// The path the error is about.
    pub fn path(&self) -> &str {
        match self {
            EditError::NotFound { path }
            | EditError::AlreadyExists { path }
            | EditError::Invalid { path, .. } => path,
        }
    }
}

/// `pools.pub`, `nat.dnat.web`, `snat[1]`.
fn entry_path(section: Section, key: &Key) -> String {
    match key {
        Key::Name(n) => format!("{}.{n}", section.path()),
        Key::Index(i) => format!("{}[{i}]", section.path()),
    }
}

fn invalid(section: Section, message: &str) -> EditError {
    EditError::Invalid {
        path: section.path().to_owned(),
        message: message.to_owned(),
    }
}

fn not_found(section: Section, key: &Key) -> EditError {
    EditError::NotFound {
        path: entry_path(section, key),
    }
}

/// The section's list in `root`; with `create`, a missing (or empty `key:`) section becomes an
/// empty list. `None`: the section is absent and was not created.
fn section_seq(
    root: &mut Mapping,
    section: Section,
    create: bool,
) -> Result<Option<&mut Sequence>, EditError> {
    let (parent, key) = match section {
        Section::Pools => (root, "pools"),
        Section::Snat => (root, "snat"),
        Section::Exclusions => (root, "exclusions"),
        Section::Dnat => {
            if !root.contains_key("nat") {
                if !create {
                    return Ok(None);
                }
                root.insert("nat".into(), Value::Mapping(Mapping::new()));
            }
            match root.get_mut("nat") {
                Some(Value::Mapping(nat)) => (nat, "dnat"),
                // from_value keeps `nat` a mapping; should that ever not hold, refuse.
                _ => return Err(invalid(section, "nat is not a mapping")),
            }
        }
    };
    let absent = matches!(parent.get(key), None | Some(Value::Null));
    if absent {
        if !create {
            return Ok(None);
        }
        parent.insert(key.into(), Value::Sequence(Sequence::new()));
    }
    match parent.get_mut(key) {
        Some(Value::Sequence(seq)) => Ok(Some(seq)),
        Some(other) => Err(invalid(
            section,
            &format!(
                "is {}, not a list; fix the section before editing one of its entries",
                kind(other)
            ),
        )),
        None => Ok(None),
    }
}

fn entry_name(v: &Value) -> Option<&str> {
    v.get("name").and_then(Value::as_str)
}

fn find(seq: &Sequence, key: &Key) -> Option<usize> {
    match key {
        Key::Name(n) => seq.iter().position(|e| entry_name(e) == Some(n.as_str())),
        Key::Index(i) => (*i < seq.len()).then_some(*i),
    }
}

fn check_mapping(section: Section, path: String, item: &Value) -> Result<(), EditError> {
    if item.is_mapping() {
        Ok(())
    } else {
        Err(EditError::Invalid {
            path,
            message: format!(
                "a {} must be a mapping, found {}",
                section.noun(),
                kind(item)
            ),
        })
    }
}

fn add(
    seq: &mut Sequence,
    section: Section,
    item: &Value,
    position: Option<usize>,
) -> Result<(), EditError> {
    check_mapping(section, section.path().to_owned(), item)?;
    if section.is_named() {
        let Some(name) = entry_name(item) else {
            return Err(invalid(
                section,
                &format!("a new {} needs a `name` (a string)", section.noun()),
            ));
        };
        let key = Key::Name(name.to_owned());
        if find(seq, &key).is_some() {
            return Err(EditError::AlreadyExists {
                path: entry_path(section, &key),
            });
        }
    }
    let len = seq.len();
    let at = position.unwrap_or(len);
    if at > len {
        return Err(invalid(
            section,
            &format!(
                "position {at} is past the end: there are {len} {}s, so 0..={len} ({len} appends)",
                section.noun()
            ),
        ));
    }
    seq.insert(at, item.clone());
    Ok(())
}

fn update(seq: &mut Sequence, section: Section, key: &Key, item: &Value) -> Result<(), EditError> {
    let path = entry_path(section, key);
    check_mapping(section, path.clone(), item)?;
    let i = find(seq, key).ok_or_else(|| not_found(section, key))?;
    let mut item = item.clone();
    if let (Key::Name(n), Value::Mapping(m)) = (key, &mut item) {
        match m.get("name") {
            None => {
                m.insert("name".into(), Value::String(n.clone()));
            }
            Some(Value::String(s)) if s == n => {}
            Some(other) => {
                return Err(EditError::Invalid {
                    path: format!("{path}.name"),
                    message: format!(
                        "is {}, but the update is for {} \"{n}\"; to rename, delete it and add it \
                         under the new name",
                        match other {
                            Value::String(s) => format!("\"{s}\""),
                            v => kind(v).to_owned(),
                        },
                        section.noun()
                    ),
                });
            }
        }
    }
    seq[i] = item;
    Ok(())
}

/// What a change does to an entry or setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Modified,
}

/// One difference between two policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    /// `pools.pub`, `snat[1]`, `exclusions[0]`, `nat.timeouts.udp`, `nat.dnat.web`.
    pub path: String,
    /// For an added or removed entry, the entry; for a modified one, what changed, old → new.
    pub detail: String,
}

/// What applying `new` over `old` changes in the policy, for dry runs and logs.
///
/// Pools are matched by name (`pools.<name>`, each changed field `name old → new`), SNAT rules
/// and exclusions by position (`snat[1]`), DNAT rules by name (`nat.dnat.<name>`), and each
/// setting of `nat.timeouts`, `nat.limits`, `nat.hold_down` and `nat.udp_inbound_refresh` on its
/// own (`nat.timeouts.udp: 300s → 120s`). References are compared by pool name, so moving a pool
/// within the list changes nothing (no rule means anything different). Order: pools, snat,
/// exclusions, nat settings, dnat; within a section `new`'s order, removed entries after.
/// Empty when the policies are equal.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff_named(
        &mut out,
        "pools",
        (old, &old.pools),
        (new, &new.pools),
        |p| p.name.as_str(),
        |_, p| pool_fields(p),
        |_, p| pool_summary(p),
    );
    diff_positional(
        &mut out,
        "snat",
        &old.snat
            .iter()
            .map(|r| snat_text(old, r))
            .collect::<Vec<_>>(),
        &new.snat
            .iter()
            .map(|r| snat_text(new, r))
            .collect::<Vec<_>>(),
    );
    diff_positional(
        &mut out,
        "exclusions",
        &old.exclusions
            .iter()
            .map(exclusion_text)
            .collect::<Vec<_>>(),
        &new.exclusions
            .iter()
            .map(exclusion_text)
            .collect::<Vec<_>>(),
    );
    for ((path, o), (_, n)) in nat_settings(old).into_iter().zip(nat_settings(new)) {
        if o != n {
            out.push(Change {
                kind: ChangeKind::Modified,
                path: path.to_owned(),
                detail: format!("{o} → {n}"),
            });
        }
    }
    diff_named(
        &mut out,
        "nat.dnat",
        (old, &old.dnat),
        (new, &new.dnat),
        |r| r.name.as_str(),
        dnat_fields,
        dnat_summary,
    );
    out
}

/// Entries matched by name: modified ones list their changed fields, added and removed ones
/// their summary. Each side comes with its config, which references (pool indices) resolve in.
fn diff_named<T>(
    out: &mut Vec<Change>,
    section: &str,
    (old_cfg, old): (&Config, &[T]),
    (new_cfg, new): (&Config, &[T]),
    name: impl Fn(&T) -> &str,
    fields: impl Fn(&Config, &T) -> Vec<(&'static str, String)>,
    summary: impl Fn(&Config, &T) -> String,
) {
    for n in new {
        let path = format!("{section}.{}", name(n));
        match old.iter().find(|o| name(o) == name(n)) {
            None => out.push(Change {
                kind: ChangeKind::Added,
                path,
                detail: summary(new_cfg, n),
            }),
            Some(o) => {
                let changed: Vec<String> = fields(old_cfg, o)
                    .into_iter()
                    .zip(fields(new_cfg, n))
                    .filter(|((_, a), (_, b))| a != b)
                    .map(|((f, a), (_, b))| format!("{f} {a} → {b}"))
                    .collect();
                if !changed.is_empty() {
                    out.push(Change {
                        kind: ChangeKind::Modified,
                        path,
                        detail: changed.join("; "),
                    });
                }
            }
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            out.push(Change {
                kind: ChangeKind::Removed,
                path: format!("{section}.{}", name(o)),
                detail: summary(old_cfg, o),
            });
        }
    }
}

/// Entries matched by position, rendered as text.
/// Ordered entries: aligned on their longest common subsequence, so inserting a rule in front
/// reports one added rule, not every later rule as modified. Within a gap between unchanged
/// entries, old and new entries pair up as modified; the rest are added (path: the new position)
/// or removed (path: the old position).
fn diff_positional(out: &mut Vec<Change>, section: &str, old: &[String], new: &[String]) {
    let (n, m) = (old.len(), new.len());
    // lcs[i][j]: length of the longest common subsequence of old[i..] and new[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut gap_old: Vec<usize> = Vec::new();
    let mut gap_new: Vec<usize> = Vec::new();
    let flush = |out: &mut Vec<Change>, go: &mut Vec<usize>, gn: &mut Vec<usize>| {
        let pairs = go.len().min(gn.len());
        for k in 0..pairs {
            out.push(Change {
                kind: ChangeKind::Modified,
                path: format!("{section}[{}]", gn[k]),
                detail: format!("was {}; now {}", old[go[k]], new[gn[k]]),
            });
        }
        for &j in &gn[pairs..] {
            out.push(Change {
                kind: ChangeKind::Added,
                path: format!("{section}[{j}]"),
                detail: new[j].clone(),
            });
        }
        for &i in &go[pairs..] {
            out.push(Change {
                kind: ChangeKind::Removed,
                path: format!("{section}[{i}]"),
                detail: old[i].clone(),
            });
        }
        go.clear();
        gn.clear();
    };
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            flush(out, &mut gap_old, &mut gap_new);
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            gap_new.push(j);
            j += 1;
        } else {
            gap_old.push(i);
            i += 1;
        }
    }
    flush(out, &mut gap_old, &mut gap_new);
}

/// `addresses 203.0.113.1-203.0.113.8; ports 1024-65535; ...`, masquerade only when set.
fn pool_summary(p: &Pool) -> String {
    pool_fields(p)
        .into_iter()
        .filter(|(f, v)| !(*f == "masquerade" && v == "false"))
        .map(|(f, v)| format!("{f} {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A pool's settings as the operator wrote them (field names of the config file).
fn pool_fields(p: &Pool) -> Vec<(&'static str, String)> {
    // Taken apart so that a field added to Pool has to be rendered here too.
    let Pool {
        name: _,
        ranges,
        port_lo,
        port_hi,
        filtering,
        allocation,
        masquerade,
    } = p;
    vec![
        ("addresses", ranges_text(ranges)),
        ("ports", format!("{port_lo}-{port_hi}")),
        ("filtering", filtering_text(*filtering).to_owned()),
        ("allocation", allocation_text(allocation)),
        ("masquerade", masquerade.to_string()),
    ]
}

fn ranges_text(ranges: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    if ranges.is_empty() {
        return "none".to_owned();
    }
    ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn filtering_text(f: Filtering) -> &'static str {
    match f {
        Filtering::EndpointIndependent => "endpoint-independent",
        Filtering::AddressDependent => "address-dependent",
        Filtering::AddressAndPortDependent => "address-and-port-dependent",
    }
}

fn allocation_text(a: &Allocation) -> String {
    match a {
        Allocation::Random => "random".to_owned(),
        Allocation::Preserve => "preserve".to_owned(),
        Allocation::Parity => "parity".to_owned(),
        Allocation::Blocks {
            block_size,
            max_blocks,
        } => format!("blocks (block_size {block_size}, max_blocks {max_blocks})"),
        Allocation::Deterministic {
            inside,
            ports_per_subscriber,
        } => {
            format!("deterministic (inside {inside}, ports_per_subscriber {ports_per_subscriber})")
        }
    }
}

/// `pools[i]`'s name, or the index itself should `i` be out of range (a Config edited by hand).
fn pool_name(c: &Config, i: usize) -> String {
    match c.pools.get(i) {
        Some(p) => p.name.clone(),
        None => format!("pools[{i}]"),
    }
}

/// `100.64.0.0/10 → pub`, `100.64.0.0/10 to 198.51.100.0/24 → pub2`.
fn snat_text(c: &Config, r: &SnatRule) -> String {
    let SnatRule {
        prefix,
        destination,
        pool,
    } = r;
    match destination {
        Some(d) => format!("{prefix} to {d} → {}", pool_name(c, *pool)),
        None => format!("{prefix} → {}", pool_name(c, *pool)),
    }
}

/// `198.51.100.0/24`, `198.51.100.0/24 from 100.64.0.0/16`.
fn exclusion_text(e: &Exclusion) -> String {
    let Exclusion {
        destination,
        source,
    } = e;
    match source {
        Some(s) => format!("{destination} from {s}"),
        None => destination.to_string(),
    }
}

fn secs_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{d:?}")
    }
}

fn limit_text(v: u32) -> String {
    if v == 0 {
        "0 (unlimited)".to_owned()
    } else {
        v.to_string()
    }
}

/// Every scalar policy setting under `nat`, with its config path, in file order.
fn nat_settings(c: &Config) -> Vec<(&'static str, String)> {
    let Timeouts {
        tcp_established,
        tcp_transitory,
        udp,
        icmp,
        rfc_minimums,
    } = c.nat.timeouts;
    let Limits {
        max_sessions_per_subscriber,
        max_ports_per_subscriber,
        icmp_unreachable,
    } = c.nat.limits;
    vec![
        ("nat.timeouts.tcp_established", secs_text(tcp_established)),
        ("nat.timeouts.tcp_transitory", secs_text(tcp_transitory)),
        ("nat.timeouts.udp", secs_text(udp)),
        ("nat.timeouts.icmp", secs_text(icmp)),
        (
            "nat.timeouts.enforce_rfc_minimums",
            rfc_minimums.to_string(),
        ),
        (
            "nat.limits.max_sessions_per_subscriber",
            limit_text(max_sessions_per_subscriber),
        ),
        (
            "nat.limits.max_ports_per_subscriber",
            limit_text(max_ports_per_subscriber),
        ),
        ("nat.limits.icmp_unreachable", icmp_unreachable.to_string()),
        ("nat.hold_down", secs_text(c.nat.hold_down)),
        (
            "nat.udp_inbound_refresh",
            c.nat.udp_inbound_refresh.to_string(),
        ),
    ]
}

fn proto_text(p: Option<u8>) -> String {
    match p {
        None => "any (address-only)".to_owned(),
        Some(wire::ip_proto::TCP) => "tcp".to_owned(),
        Some(wire::ip_proto::UDP) => "udp".to_owned(),
        Some(n) => format!("protocol {n}"),
    }
}

fn backends_text(r: &nat::DnatRule) -> String {
    r.backends
        .iter()
        .map(|b| {
            let addr = Ipv4Addr::from(b.addr);
            let at = if b.port == 0 {
                addr.to_string()
            } else {
                format!("{addr}:{}", b.port)
            };
            if b.weight == crate::defaults::DNAT_WEIGHT {
                at
            } else {
                format!("{at} weight {}", b.weight)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn scheduler_text(s: nat::Scheduler) -> &'static str {
    match s {
        nat::Scheduler::WeightedRandom => "random",
        nat::Scheduler::RoundRobin => "round_robin",
        nat::Scheduler::Maglev => "maglev",
    }
}

fn on_removal_text(o: nat::OnRemoval) -> &'static str {
    match o {
        nat::OnRemoval::Drain => "drain",
        nat::OnRemoval::Cut => "cut",
    }
}

fn affinity_text(s: u32) -> String {
    if s == 0 {
        "off".to_owned()
    } else {
        format!("{s}s")
    }
}

fn dnat_snat_text(c: &Config, p: Option<usize>) -> String {
    match p {
        Some(i) => pool_name(c, i),
        None => "none (backends see the client address)".to_owned(),
    }
}

/// A DNAT rule's settings under the config file's field names.
fn dnat_fields(c: &Config, r: &nat::DnatRule) -> Vec<(&'static str, String)> {
    let nat::DnatRule {
        name: _,
        addr,
        proto,
        port,
        backends: _,
        scheduler,
        affinity_s,
        snat_pool,
        on_removal,
    } = r;
    vec![
        ("address", Ipv4Addr::from(*addr).to_string()),
        ("protocol", proto_text(*proto)),
        (
            "port",
            if *port == 0 {
                "any".to_owned()
            } else {
                port.to_string()
            },
        ),
        ("backends", backends_text(r)),
        ("scheduler", scheduler_text(*scheduler).to_owned()),
        ("affinity_timeout", affinity_text(*affinity_s)),
        ("snat", dnat_snat_text(c, *snat_pool)),
        (
            "on_backend_removal",
            on_removal_text(*on_removal).to_owned(),
        ),
    ]
}

/// `tcp 203.0.113.100:8080 → 100.64.0.11:8000`, then the settings that are not the defaults.
fn dnat_summary(c: &Config, r: &nat::DnatRule) -> String {
    let addr = Ipv4Addr::from(r.addr);
    let front = match r.proto {
        None => format!("{addr} (every protocol and port)"),
        Some(p) => format!("{} {addr}:{}", proto_text(Some(p)), r.port),
    };
    let mut s = format!("{front} → {}", backends_text(r));
    if r.scheduler != nat::Scheduler::default() {
        s.push_str(&format!("; scheduler {}", scheduler_text(r.scheduler)));
    }
    if r.affinity_s != 0 {
        s.push_str(&format!(
            "; affinity_timeout {}",
            affinity_text(r.affinity_s)
        ));
    }
    if let Some(p) = r.snat_pool {
        s.push_str(&format!("; snat {}", pool_name(c, p)));
    }
    if r.on_removal != nat::OnRemoval::default() {
        s.push_str(&format!(
            "; on_backend_removal {}",
            on_removal_text(r.on_removal)
        ));
    }
    s
}

/// Changes in `new` the running data plane cannot take over from `old`, as errors with paths
/// into `new` (`pools[1].ports`). Empty: the change can be applied live.
///
/// A pool kept under the same name keeps its live state: mappings hold ports from its port
/// range, subscribers own port blocks cut by its allocation, mappings filter inbound packets by
/// its filtering, and a deterministic pool computes each subscriber's address and ports from its
/// address list. Changing any of these under existing mappings would leave them breaking the
/// pool's new rules (or colliding with new mappings), so a pool may only gain addresses, which
/// new mappings can use while the old ones keep theirs. Anything else is a new pool: the
/// messages say how to do that without an outage.
pub fn check_live(old: &Config, new: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (i, n) in new.pools.iter().enumerate() {
        let Some(o) = old.pools.iter().find(|o| o.name == n.name) else {
            continue;
        };
        let name = &n.name;
        let remedy = format!(
            "add a pool with another name and these settings, point the snat rules at it, then \
             delete \"{name}\""
        );
        let in_service = format!("cannot change while pool \"{name}\" is in service; {remedy}");
        let mut refuse = |field: &str, message: &str| {
            errors.push(FieldError {
                path: format!("pools[{i}].{field}"),
                message: message.to_owned(),
            });
        };
        if (o.port_lo, o.port_hi) != (n.port_lo, n.port_hi) {
            refuse("ports", &in_service);
        }
        if o.filtering != n.filtering {
            refuse("filtering", &in_service);
        }
        for field in allocation_changes(&o.allocation, &n.allocation) {
            refuse(&format!("allocation.{field}"), &in_service);
        }
        if o.masquerade != n.masquerade {
            refuse("masquerade", &in_service);
        }
        let deterministic = matches!(o.allocation, Allocation::Deterministic { .. });
        if deterministic && o.ranges != n.ranges {
            refuse(
                "addresses",
                &format!(
                    "cannot change while deterministic pool \"{name}\" is in service (each \
                     subscriber's address and ports are computed from the address list); {remedy}"
                ),
            );
        } else {
            let gone = subtract(&o.ranges, &n.ranges);
            if !gone.is_empty() {
                refuse(
                    "addresses",
                    &format!(
                        "{} cannot leave pool \"{name}\" while it is in service; {remedy}",
                        ranges_text(&gone)
                    ),
                );
            }
        }
    }
    errors
}

/// The allocation fields (`mode`, or the parameters of an unchanged mode) that differ.
fn allocation_changes(o: &Allocation, n: &Allocation) -> Vec<&'static str> {
    match (o, n) {
        (
            Allocation::Blocks {
                block_size: ob,
                max_blocks: om,
            },
            Allocation::Blocks {
                block_size: nb,
                max_blocks: nm,
            },
        ) => [("block_size", ob != nb), ("max_blocks", om != nm)]
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(f, _)| f)
            .collect(),
        (
            Allocation::Deterministic {
                inside: oi,
                ports_per_subscriber: op,
            },
            Allocation::Deterministic {
                inside: ni,
                ports_per_subscriber: np,
            },
        ) => [("inside", oi != ni), ("ports_per_subscriber", op != np)]
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(f, _)| f)
            .collect(),
        _ if std::mem::discriminant(o) != std::mem::discriminant(n) => vec!["mode"],
        _ => Vec::new(),
    }
}

/// The addresses of `a` not in `b`, as inclusive ranges; both sorted and non-overlapping, as
/// [`Pool::ranges`] are.
fn subtract(a: &[(Ipv4Addr, Ipv4Addr)], b: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    let mut out = Vec::new();
    for &(lo, hi) in a {
        // u64 so that "one past" 255.255.255.255 does not overflow.
        let (mut cur, hi) = (u64::from(u32::from(lo)), u64::from(u32::from(hi)));
        for &(blo, bhi) in b {
            let (blo, bhi) = (u64::from(u32::from(blo)), u64::from(u32::from(bhi)));
            if bhi < cur || blo > hi {
                continue;
            }
            if blo > cur {
                out.push((cur, blo - 1));
            }
            cur = cur.max(bhi + 1);
        }
        if cur <= hi {
            out.push((cur, hi));
        }
    }
    out.into_iter()
        .filter_map(|(lo, hi)| {
            Some((
                Ipv4Addr::from(u32::try_from(lo).ok()?),
                Ipv4Addr::from(u32::try_from(hi).ok()?),
            ))
        })
        .collect()
}
