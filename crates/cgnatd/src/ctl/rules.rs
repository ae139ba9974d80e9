//! `cgnatctl rules`: the translation policy as tables, and the results of changing it.
//!
//! The policy is a YAML document with the configuration file's keys (docs/CONFIG.md), so the
//! tables read it generically: a key the file leaves out shows its default as `-` (or the default
//! the daemon documents), never a guess.

use cgnat::v1;
use serde::Serialize;
use serde_yaml::Value;

use super::format::{Align, Table};

/// `cgnatctl rules get -o json|yaml`: `{"generation": N, "policy": {...}}`; the `policy` part is
/// what `rules apply -f` takes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    pub generation: u64,
    pub policy: Value,
}

impl From<&v1::Policy> for PolicyView {
    fn from(p: &v1::Policy) -> Self {
        PolicyView {
            generation: p.generation,
            policy: p
                .policy
                .as_ref()
                .map(mgmt::policy_json::struct_from_proto)
                .unwrap_or(Value::Mapping(Default::default())),
        }
    }
}

/// `cgnatctl rules apply|add|update|delete -o json|yaml`:
/// `{"generation": N, "applied": bool, "dry_run": bool, "changes": [{"kind", "path", "detail"}]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyView {
    pub generation: u64,
    pub applied: bool,
    pub dry_run: bool,
    pub changes: Vec<ChangeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeView {
    /// "added", "removed" or "modified".
    pub kind: String,
    pub path: String,
    pub detail: String,
}

impl ApplyView {
    pub fn new(r: &v1::ApplyPolicyResponse, dry_run: bool) -> ApplyView {
        ApplyView {
            generation: r.generation,
            applied: r.applied,
            dry_run,
            changes: r
                .changes
                .iter()
                .map(|c| ChangeView {
                    kind: match v1::ChangeKind::try_from(c.kind) {
                        Ok(v1::ChangeKind::Added) => "added",
                        Ok(v1::ChangeKind::Removed) => "removed",
                        Ok(v1::ChangeKind::Modified) => "modified",
                        _ => "changed",
                    }
                    .to_owned(),
                    path: c.path.clone(),
                    detail: c.detail.clone(),
                })
                .collect(),
        }
    }
}

/// The changes, then one line saying what happened.
pub fn apply_table(v: &ApplyView) -> String {
    let mut out = String::new();
    if !v.changes.is_empty() {
        let mut t = Table::new([
            ("CHANGE", Align::Left),
            ("PATH", Align::Left),
            ("DETAIL", Align::Left),
        ]);
        for c in &v.changes {
            t.row(vec![c.kind.clone(), c.path.clone(), c.detail.clone()]);
        }
        out.push_str(&t.render());
    }
    let n = v.changes.len();
    let what = match (v.dry_run, v.applied) {
        (true, _) if n == 0 => "dry run: nothing would change".to_owned(),
        (true, _) => format!("dry run: {n} change(s) would be applied; nothing was changed"),
        (false, true) => format!("applied {n} change(s)"),
        (false, false) => "nothing to change: the policy is already in force".to_owned(),
    };
    out.push_str(&format!("generation {}: {what}\n", v.generation));
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Sequence(s) => s.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Mapping(_) | Value::Tagged(_) => serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

/// `cgnatctl rules get` as tables: pools, SNAT rules, exclusions, destination NAT rules and the
/// settings the policy sets.
pub fn policy_table(v: &PolicyView) -> String {
    let doc = &v.policy;
    let mut out = format!("generation {}\n\n", v.generation);
    let mut pools = Table::new([
        ("POOL", Align::Left),
        ("ADDRESSES", Align::Left),
        ("PORTS", Align::Left),
        ("ALLOCATION", Align::Left),
        ("FILTERING", Align::Left),
    ]);
    for p in items(doc, "pools") {
        let masquerade = p.get("masquerade").and_then(Value::as_bool) == Some(true);
        pools.row(vec![
            text(&p["name"]),
            if masquerade {
                "(outside address, masquerade)".to_owned()
            } else {
                text(&p["addresses"])
            },
            p.get("ports").map_or("1024-65535".to_owned(), text),
            p.get("allocation")
                .and_then(|a| a.get("mode"))
                .map_or("random".to_owned(), text),
            p.get("filtering")
                .map_or("endpoint-independent".to_owned(), text),
        ]);
    }
    out.push_str(&pools.render());
    let mut snat = Table::new([
        ("#", Align::Right),
        ("SNAT MATCH", Align::Left),
        ("DESTINATION", Align::Left),
        ("POOL", Align::Left),
    ]);
    for (i, r) in items(doc, "snat").iter().enumerate() {
        snat.row(vec![
            i.to_string(),
            text(&r["match"]),
            r.get("destination").map_or("any".to_owned(), text),
            text(&r["pool"]),
        ]);
    }
    out.push('\n');
    out.push_str(&snat.render());
    let exclusions = items(doc, "exclusions");
    if !exclusions.is_empty() {
        let mut t = Table::new([
            ("#", Align::Right),
            ("EXCLUDED DESTINATION", Align::Left),
            ("SOURCE", Align::Left),
        ]);
        for (i, e) in exclusions.iter().enumerate() {
            t.row(vec![
                i.to_string(),
                text(&e["destination"]),
                e.get("source").map_or("any".to_owned(), text),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    let nat = doc.get("nat").cloned().unwrap_or(Value::Null);
    let dnat = items(&nat, "dnat");
    if !dnat.is_empty() {
        let mut t = Table::new([
            ("DNAT RULE", Align::Left),
            ("MATCH", Align::Left),
            ("BACKENDS", Align::Left),
            ("SCHEDULER", Align::Left),
            ("SNAT", Align::Left),
        ]);
        for r in dnat {
            let port = r.get("port").map(text);
            let proto = r.get("protocol").map(text);
            let matched = match (proto, port) {
                (Some(p), Some(port)) => format!("{p} {}:{port}", text(&r["address"])),
                (Some(p), None) => format!("{p} {}", text(&r["address"])),
                (None, _) => format!("{} (all ports)", text(&r["address"])),
            };
            let backends = items(r, "backends")
                .iter()
                .map(|b| {
                    let mut s = text(&b["address"]);
                    if let Some(p) = b.get("port") {
                        s = format!("{s}:{}", text(p));
                    }
                    if let Some(w) = b.get("weight") {
                        s = format!("{s} w{}", text(w));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ");
            t.row(vec![
                text(&r["name"]),
                matched,
                backends,
                r.get("scheduler").map_or("random".to_owned(), text),
                r.get("snat").map_or("-".to_owned(), text),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    let mut settings = Vec::new();
    for section in ["timeouts", "limits"] {
        if let Some(Value::Mapping(m)) = nat.get(section) {
            for (k, v) in m {
                settings.push((format!("nat.{section}.{}", text(k)), text(v)));
            }
        }
    }
    for key in ["hold_down", "udp_inbound_refresh"] {
        if let Some(v) = nat.get(key) {
            settings.push((format!("nat.{key}"), text(v)));
        }
    }
    if !settings.is_empty() {
        let mut t = Table::new([("SETTING", Align::Left), ("VALUE", Align::Left)]);
        for (k, v) in settings {
            t.row(vec![k, v]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(yaml: &str, generation: u64) -> PolicyView {
        PolicyView {
            generation,
            policy: serde_yaml::from_str(yaml).unwrap(),
        }
    }

    #[test]
    fn the_policy_reads_as_tables_with_defaults_spelled_out() {
        let v = view(
            "pools:\n  - name: lab\n    addresses: [203.0.113.1-203.0.113.6]\n  - name: masq\n    masquerade: true\n    ports: 20000-29999\nsnat:\n  - match: 100.64.0.0/10\n    destination: 198.51.100.20/32\n    pool: masq\n  - match: 100.64.0.0/10\n    pool: lab\nnat:\n  timeouts: {udp: 120}\n  dnat:\n    - name: web\n      address: 203.0.113.100\n      protocol: tcp\n      port: 80\n      backends: [{address: 100.64.0.21, port: 8080, weight: 2}, {address: 100.64.0.22}]\n",
            4,
        );
        let t = policy_table(&v);
        assert!(t.starts_with("generation 4\n\n"), "{t}");
        assert!(
            t.contains(
                "lab   203.0.113.1-203.0.113.6        1024-65535   random      endpoint-independent"
            ),
            "{t}"
        );
        assert!(
            t.contains("masq  (outside address, masquerade)  20000-29999"),
            "{t}"
        );
        assert!(
            t.contains("0  100.64.0.0/10  198.51.100.20/32  masq"),
            "{t}"
        );
        assert!(t.contains("1  100.64.0.0/10  any               lab"), "{t}");
        assert!(
            t.contains("web        tcp 203.0.113.100:80  100.64.0.21:8080 w2, 100.64.0.22  random"),
            "{t}"
        );
        assert!(t.contains("nat.timeouts.udp  120"), "{t}");
        assert!(!t.contains("EXCLUDED"), "no exclusions, no table");
    }

    #[test]
    fn apply_results_say_what_happened() {
        let r = v1::ApplyPolicyResponse {
            generation: 3,
            applied: true,
            changes: vec![v1::PolicyChange {
                kind: v1::ChangeKind::Added as i32,
                path: "pools.extra".into(),
                detail: "addresses 203.0.113.9".into(),
            }],
        };
        let t = apply_table(&ApplyView::new(&r, false));
        assert_eq!(
            t,
            "CHANGE  PATH         DETAIL\nadded   pools.extra  addresses 203.0.113.9\ngeneration 3: applied 1 change(s)\n"
        );
        let dry = apply_table(&ApplyView::new(
            &v1::ApplyPolicyResponse {
                applied: false,
                ..r.clone()
            },
            true,
        ));
        assert!(
            dry.ends_with(
                "generation 3: dry run: 1 change(s) would be applied; nothing was changed\n"
            ),
            "{dry}"
        );
        let none = apply_table(&ApplyView::new(
            &v1::ApplyPolicyResponse {
                generation: 3,
                applied: false,
                changes: vec![],
            },
            false,
        ));
        assert_eq!(
            none,
            "generation 3: nothing to change: the policy is already in force\n"
        );
    }
}
