//! The translation policy: extracting it from a config, applying it back, editing it entry by
//! entry, describing a change and refusing what a running data plane cannot take.

use serde_yaml::Value;

use super::policy::{ChangeKind, Edit, EditError, Key, Section, check_live, diff};
use super::*;

const LAB: &str = include_str!("../../../config/lab.yaml");
const NIC: &str = include_str!("../../../config/example-nic.yaml");

/// A config with every policy section set away from its defaults, three kinds of pool and
/// settings outside the policy (`nat.max_sessions`, `logging`) that a policy must not touch.
const BASE: &str = r#"
eal:
  lcores: "0-1"
ports:
  - name: inside
    role: inside
    device: { vdev: "net_af_packet0,iface=cgn-in" }
    address: 100.64.0.1/24
    routes:
      - { prefix: 10.20.0.0/16, via: 100.64.0.254 }
  - name: outside
    role: outside
    device: { vdev: "net_af_packet1,iface=cgn-out" }
    address: 192.0.2.1/24
    gateway: 192.0.2.2
pools:
  - name: pub
    addresses: [203.0.113.1-203.0.113.8]
  - name: blk
    addresses: [198.51.100.0/28]
    allocation: { mode: blocks, block_size: 512, max_blocks: 4 }
  - name: det
    addresses: [198.51.100.64/28]
    allocation: { mode: deterministic, inside: 100.64.0.0/24 }
snat:
  - match: 100.64.0.0/24
    pool: det
  - match: 100.64.0.0/10
    destination: 198.18.0.0/15
    pool: blk
  - match: 100.64.0.0/10
    pool: pub
exclusions:
  - destination: 10.0.0.0/8
  - { destination: 172.16.0.0/12, source: 100.64.1.0/24 }
nat:
  max_sessions: 65536
  timeouts: { udp: 600, icmp: 120 }
  limits: { max_ports_per_subscriber: 2048 }
  hold_down: 60
  udp_inbound_refresh: true
  dnat:
    - name: web
      address: 203.0.113.100
      protocol: tcp
      port: 80
      backends:
        - { address: 100.64.0.21, port: 8080 }
        - { address: 100.64.0.22, port: 8080, weight: 2 }
      snat: pub
    - name: mail
      address: 203.0.113.101
      backends: [{ address: 100.64.0.25 }]
logging:
  level: debug
"#;

fn yaml(text: &str) -> Value {
    match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("test bug: bad YAML: {e}\n{text}"),
    }
}

fn config(text: &str) -> Config {
    match Config::from_yaml_str(text) {
        Ok(c) => c,
        Err(e) => panic!("rejected: {e}\n{text}"),
    }
}

fn base_doc() -> PolicyDoc {
    PolicyDoc::from_config_text(BASE).unwrap()
}

/// `doc` applied to BASE, which must validate.
fn applied(doc: &PolicyDoc) -> Config {
    match doc.apply_to(BASE) {
        Ok(c) => c,
        Err(e) => panic!("rejected: {e}\n{}", doc.to_yaml_string()),
    }
}

/// BASE's policy with one edit made, which must succeed.
fn edited(edit: Edit) -> PolicyDoc {
    match base_doc().edit(&edit) {
        Ok(d) => d,
        Err(e) => panic!("edit refused: {e}: {edit:?}"),
    }
}

fn update_pool(name: &str, item: &str) -> Config {
    applied(&edited(Edit::Update {
        section: Section::Pools,
        key: Key::Name(name.into()),
        item: yaml(item),
    }))
}

fn kinds_and_paths(changes: &[policy::Change]) -> Vec<(ChangeKind, &str)> {
    changes.iter().map(|c| (c.kind, c.path.as_str())).collect()
}

fn keys(v: &Value) -> Vec<&str> {
    match v.as_mapping() {
        Some(m) => m.keys().filter_map(Value::as_str).collect(),
        None => panic!("not a mapping: {v:?}"),
    }
}

#[test]
fn a_configs_own_policy_applied_to_it_changes_nothing() {
    for text in [LAB, NIC, BASE] {
        let doc = PolicyDoc::from_config_text(text).unwrap();
        let original = config(text);
        let again = doc.apply_to(text).unwrap();
        assert_eq!(again, original);
        assert_eq!(diff(&original, &again), vec![]);
        assert_eq!(check_live(&original, &again), vec![]);
        // What `cgnatctl rules get` prints is what `cgnatctl rules apply -f` takes back.
        assert_eq!(
            PolicyDoc::from_yaml_str(&doc.to_yaml_string()).unwrap(),
            doc
        );
        assert_eq!(PolicyDoc::from_value(doc.value().clone()).unwrap(), doc);
    }
}

#[test]
fn only_the_policy_sections_are_extracted() {
    let lab = PolicyDoc::from_config_text(LAB).unwrap();
    assert_eq!(keys(lab.value()), ["pools", "snat", "nat"]);
    // lab.yaml sets nat.max_sessions too: fixed at start, so not part of the document.
    assert_eq!(keys(&lab.value()["nat"]), ["timeouts", "dnat"]);

    let base = base_doc();
    assert_eq!(keys(base.value()), ["pools", "snat", "exclusions", "nat"]);
    assert_eq!(
        keys(&base.value()["nat"]),
        [
            "timeouts",
            "limits",
            "hold_down",
            "udp_inbound_refresh",
            "dnat"
        ]
    );
    assert_eq!(base.value()["pools"], yaml(BASE)["pools"]);

    // A config whose nat holds only fixed settings has no nat in its policy.
    let fixed_nat = BASE
        .split("\nnat:\n")
        .next()
        .map(|head| format!("{head}\nnat:\n  max_sessions: 65536\n"))
        .unwrap();
    let doc = PolicyDoc::from_config_text(&fixed_nat).unwrap();
    assert_eq!(keys(doc.value()), ["pools", "snat", "exclusions"]);
}

#[test]
fn settings_fixed_at_start_are_refused_by_name() {
    // A whole config offered as a policy: every section outside it is named, none is taken
    // for a typo.
    let err = PolicyDoc::from_value(yaml(LAB)).unwrap_err();
    assert_eq!(
        err.fields(),
        [
            "eal",
            "workers",
            "ports",
            "nat.max_sessions",
            "neighbour",
            "mgmt",
            "logging",
            "stats_interval",
            "dataplane"
        ]
    );
    let msg = err.to_string();
    assert!(
        msg.contains(
            "eal: not part of the translation policy (pools, snat, exclusions, nat.timeouts, \
             nat.limits, nat.hold_down, nat.udp_inbound_refresh, nat.dnat); change it in the \
             configuration file and restart"
        ),
        "{msg}"
    );
    assert!(!msg.contains("unknown key"), "{msg}");

    let err = PolicyDoc::from_yaml_str(
        "pools: []\nnat:\n  fragments: { max_held: 4 }\n  event_ring: 0\n  dnat: []\n",
    )
    .unwrap_err();
    assert_eq!(err.fields(), ["nat.fragments", "nat.event_ring"]);
}

#[test]
fn misspelt_keys_and_wrong_shapes_are_refused() {
    let err = PolicyDoc::from_yaml_str("pool:\n  - name: pub\n").unwrap_err();
    assert_eq!(err.fields(), ["pool"]);
    assert!(
        err.to_string()
            .starts_with("pool: unknown key; the translation policy has pools, snat"),
        "{err}"
    );
    let err = PolicyDoc::from_yaml_str("nat: { timeout: { udp: 300 } }").unwrap_err();
    assert_eq!(err.fields(), ["nat.timeout"]);
    let err = PolicyDoc::from_yaml_str("nat: 5").unwrap_err();
    assert_eq!(err.fields(), ["nat"]);

    // Not a mapping, including an empty file, which must not read as "delete everything".
    for text in ["- pools\n", "", "pools"] {
        let err = PolicyDoc::from_yaml_str(text).unwrap_err();
        assert_eq!(err.fields(), ["(top level)"], "{text:?}: {err}");
        assert!(err.to_string().contains("expected a mapping"), "{err}");
    }
    let err = PolicyDoc::from_yaml_str("pools: [").unwrap_err();
    assert_eq!(err.fields(), ["(yaml syntax)"]);
}

#[test]
fn adding_a_pool_is_reported_as_added() {
    let doc = edited(Edit::Add {
        section: Section::Pools,
        item: yaml("{ name: extra, addresses: [203.0.113.16/29], filtering: address-dependent }"),
        position: None,
    });
    let old = config(BASE);
    let new = applied(&doc);
    assert_eq!(new.pools.len(), 4);
    assert_eq!(
        diff(&old, &new),
        vec![policy::Change {
            kind: ChangeKind::Added,
            path: "pools.extra".into(),
            detail: "addresses 203.0.113.16-203.0.113.23; ports 1024-65535; filtering \
                     address-dependent; allocation random"
                .into(),
        }]
    );
    // A new pool has no live state to protect.
    assert_eq!(check_live(&old, &new), vec![]);
}

#[test]
fn a_section_left_out_takes_its_default() {
    // Apply replaces the whole policy: without `nat`, its policy settings go back to their
    // defaults and the DNAT rules are gone, while nat.max_sessions (fixed) stays.
    let mut v = base_doc().value().clone();
    v.as_mapping_mut().unwrap().remove("nat");
    let new = applied(&PolicyDoc::from_value(v).unwrap());
    let old = config(BASE);
    assert_eq!(new.nat.timeouts, Timeouts::default());
    assert_eq!(new.nat.limits, Limits::default());
    assert_eq!(new.nat.hold_down, NatCfg::default().hold_down);
    assert!(!new.nat.udp_inbound_refresh);
    assert_eq!(new.dnat, vec![]);
    assert_eq!(new.nat.max_sessions, 65536);
    assert_eq!(new.logging.level, "debug");

    let changes = diff(&old, &new);
    assert_eq!(
        kinds_and_paths(&changes),
        [
            (ChangeKind::Modified, "nat.timeouts.udp"),
            (ChangeKind::Modified, "nat.timeouts.icmp"),
            (ChangeKind::Modified, "nat.limits.max_ports_per_subscriber"),
            (ChangeKind::Modified, "nat.hold_down"),
            (ChangeKind::Modified, "nat.udp_inbound_refresh"),
            (ChangeKind::Removed, "nat.dnat.web"),
            (ChangeKind::Removed, "nat.dnat.mail"),
        ]
    );
    assert_eq!(changes[0].detail, "600s → 300s");
    assert_eq!(changes[2].detail, "2048 → 4096");
    assert_eq!(changes[4].detail, "true → false");
    assert_eq!(
        changes[5].detail,
        "tcp 203.0.113.100:80 → 100.64.0.21:8080, 100.64.0.22:8080 weight 2; snat pub"
    );
    assert_eq!(
        changes[6].detail,
        "203.0.113.101 (every protocol and port) → 100.64.0.25"
    );

    // The same for a list section.
    let mut v = base_doc().value().clone();
    v.as_mapping_mut().unwrap().remove("exclusions");
    let changes = diff(&old, &applied(&PolicyDoc::from_value(v).unwrap()));
    assert_eq!(
        kinds_and_paths(&changes),
        [
            (ChangeKind::Removed, "exclusions[0]"),
            (ChangeKind::Removed, "exclusions[1]"),
        ]
    );
    assert_eq!(changes[1].detail, "172.16.0.0/12 from 100.64.1.0/24");
}

#[test]
fn invalid_policies_are_reported_with_config_paths() {
    let apply = |text: &str| -> ConfigError {
        let doc = PolicyDoc::from_yaml_str(text).unwrap();
        match doc.apply_to(BASE) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    };
    // Malformed value: a schema error, without a location in a document nobody wrote.
    let err = apply(
        "pools:\n  - { name: a, addresses: [203.0.113.1] }\n  - { name: b, addresses: [203.0.113.300] }\nsnat: [{ match: 100.64.0.0/10, pool: a }]\n",
    );
    assert_eq!(err.fields(), ["pools[1].addresses[0]"]);
    assert!(
        matches!(err, ConfigError::Yaml { location: None, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("pools[1].addresses[0]: ") && !err.to_string().contains("line"),
        "{err}"
    );
    // Rules between sections, and against the fixed part (the ports).
    let err = apply(
        "pools:\n  - { name: a, addresses: [203.0.113.1] }\n  - { name: b, addresses: [192.0.2.2] }\nsnat: [{ match: 100.64.0.0/10, pool: c }]\n",
    );
    assert_eq!(err.fields(), ["pools[1].addresses[0]", "snat[0].pool"]);
    assert!(
        err.to_string()
            .contains("pools[1].addresses[0]: 192.0.2.2 contains 192.0.2.2, the gateway"),
        "{err}"
    );
    let err = apply(
        "pools: [{ name: a, addresses: [203.0.113.1] }]\nnat:\n  dnat: [{ name: w, address: 203.0.113.100, protocol: tcp, port: 80, backends: [{ address: 100.64.0.9 }], snat: nope }]\n",
    );
    assert_eq!(err.fields(), ["nat.dnat[0].snat"], "{err}");
    // No pools at all.
    let err = apply("snat: []\n");
    assert_eq!(err.fields(), ["pools"]);
}

#[test]
fn inserting_a_rule_in_front_is_one_change() {
    let old = config(LAB);
    let doc = PolicyDoc::from_config_text(LAB).unwrap();
    let edit = |d: &PolicyDoc, e: Edit| d.edit(&e).unwrap();
    let item = |t: &str| serde_yaml::from_str::<Value>(t).unwrap();
    let front = edit(
        &doc,
        Edit::Add {
            section: Section::Snat,
            item: item("{match: 100.64.0.12/32, pool: lab}"),
            position: Some(0),
        },
    );
    let changes = diff(&old, &front.apply_to(LAB).unwrap());
    assert_eq!(kinds_and_paths(&changes), [(ChangeKind::Added, "snat[0]")]);
    assert_eq!(changes[0].detail, "100.64.0.12/32 → lab");
    let back = edit(
        &front,
        Edit::Delete {
            section: Section::Snat,
            key: Key::Index(0),
        },
    );
    let changes = diff(&front.apply_to(LAB).unwrap(), &back.apply_to(LAB).unwrap());
    assert_eq!(
        kinds_and_paths(&changes),
        [(ChangeKind::Removed, "snat[0]")]
    );
    assert!(diff(&old, &back.apply_to(LAB).unwrap()).is_empty());
}

#[test]
fn diff_describes_each_change_in_order() {
    let old = config(BASE);
    let text = BASE
        .replace("[203.0.113.1-203.0.113.8]", "[203.0.113.1-203.0.113.16]")
        .replace("destination: 198.18.0.0/15\n    pool: blk", "destination: 198.18.0.0/16\n    pool: pub")
        .replace("timeouts: { udp: 600, icmp: 120 }", "timeouts: { udp: 120, icmp: 120 }")
        .replace("weight: 2", "weight: 3")
        .replace(
            "    - name: mail\n      address: 203.0.113.101\n      backends: [{ address: 100.64.0.25 }]\n",
            "    - { name: ssh, address: 203.0.113.100, protocol: tcp, port: 22, scheduler: maglev, backends: [{ address: 10.20.0.22 }] }\n",
        )
        .replace("  - destination: 10.0.0.0/8\n", "");
    let new = match PolicyDoc::from_config_text(&text).unwrap().apply_to(BASE) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let changes = diff(&old, &new);
    assert_eq!(
        kinds_and_paths(&changes),
        [
            (ChangeKind::Modified, "pools.pub"),
            (ChangeKind::Modified, "snat[1]"),
            // The first exclusion went; the second, unchanged, is not reported as modified.
            (ChangeKind::Removed, "exclusions[0]"),
            (ChangeKind::Modified, "nat.timeouts.udp"),
            (ChangeKind::Modified, "nat.dnat.web"),
            (ChangeKind::Added, "nat.dnat.ssh"),
            (ChangeKind::Removed, "nat.dnat.mail"),
        ]
    );
    let detail: Vec<&str> = changes.iter().map(|c| c.detail.as_str()).collect();
    assert_eq!(
        detail,
        [
            "addresses 203.0.113.1-203.0.113.8 → 203.0.113.1-203.0.113.16",
            "was 100.64.0.0/10 to 198.18.0.0/15 → blk; now 100.64.0.0/10 to 198.18.0.0/16 → pub",
            "10.0.0.0/8",
            "600s → 120s",
            "backends 100.64.0.21:8080, 100.64.0.22:8080 weight 2 → 100.64.0.21:8080, 100.64.0.22:8080 weight 3",
            "tcp 203.0.113.100:22 → 10.20.0.22:22; scheduler maglev",
            "203.0.113.101 (every protocol and port) → 100.64.0.25",
        ]
    );
}

#[test]
fn diff_follows_pools_by_name_not_position() {
    // Moving a pool within the list changes no rule: the rules name their pool.
    let mut v = base_doc().value().clone();
    let pools = v["pools"].as_sequence_mut().unwrap();
    pools.swap(0, 2);
    let new = applied(&PolicyDoc::from_value(v).unwrap());
    let old = config(BASE);
    assert_ne!(new.pools, old.pools);
    assert_eq!(diff(&old, &new), vec![]);
    assert_eq!(check_live(&old, &new), vec![]);

    // A pool a dnat rule translates clients to, renamed: the rule's snat shows the new name.
    let text = BASE
        .replace("name: pub", "name: pub2")
        .replace("pool: pub", "pool: pub2")
        .replace("snat: pub", "snat: pub2");
    let new = PolicyDoc::from_config_text(&text)
        .unwrap()
        .apply_to(BASE)
        .unwrap();
    let changes = diff(&old, &new);
    assert_eq!(
        kinds_and_paths(&changes),
        [
            (ChangeKind::Added, "pools.pub2"),
            (ChangeKind::Removed, "pools.pub"),
            (ChangeKind::Modified, "snat[2]"),
            (ChangeKind::Modified, "nat.dnat.web"),
        ]
    );
    assert_eq!(changes[3].detail, "snat pub → pub2");
}

#[test]
fn pools_are_edited_by_name() {
    let add = |item: &str| Edit::Add {
        section: Section::Pools,
        item: yaml(item),
        position: None,
    };
    let doc = base_doc();
    // Taken name.
    assert_eq!(
        doc.edit(&add("{ name: blk, addresses: [203.0.113.64/29] }")),
        Err(EditError::AlreadyExists {
            path: "pools.blk".into()
        })
    );
    let err = doc
        .edit(&add("{ addresses: [203.0.113.64/29] }"))
        .unwrap_err();
    assert_eq!(err.path(), "pools");
    assert!(err.to_string().contains("needs a `name`"), "{err}");
    let err = doc.edit(&add("[203.0.113.64/29]")).unwrap_err();
    assert!(
        matches!(&err, EditError::Invalid { path, message } if path == "pools" && message.contains("must be a mapping")),
        "{err}"
    );

    // Update: the name may be left out; a different one is a rename, which is refused.
    let c = update_pool(
        "blk",
        "{ addresses: [198.51.100.0/27], allocation: { mode: blocks, block_size: 512, max_blocks: 4 } }",
    );
    assert_eq!(c.pools[1].name, "blk");
    assert_eq!(c.pools[1].len(), 32);
    let update = |key: Key, item: &str| Edit::Update {
        section: Section::Pools,
        key,
        item: yaml(item),
    };
    let err = doc
        .edit(&update(
            Key::Name("blk".into()),
            "{ name: blk2, addresses: [198.51.100.0/27] }",
        ))
        .unwrap_err();
    assert_eq!(err.path(), "pools.blk.name");
    assert!(
        err.to_string().contains("to rename, delete it and add it"),
        "{err}"
    );
    assert_eq!(
        doc.edit(&update(
            Key::Name("nope".into()),
            "{ addresses: [198.51.100.0/27] }"
        )),
        Err(EditError::NotFound {
            path: "pools.nope".into()
        })
    );
    // Pools have no meaningful position, so none is accepted as a key.
    let err = doc
        .edit(&update(
            Key::Index(1),
            "{ name: blk, addresses: [198.51.100.0/27] }",
        ))
        .unwrap_err();
    assert!(
        matches!(&err, EditError::Invalid { path, .. } if path == "pools"),
        "{err}"
    );

    // Delete: the document no longer has it; the snat rule still naming it is apply_to's to
    // report, at its path.
    let del = Edit::Delete {
        section: Section::Pools,
        key: Key::Name("blk".into()),
    };
    let doc2 = doc.edit(&del).unwrap();
    let names: Vec<&str> = doc2.value()["pools"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["pub", "det"]);
    assert_eq!(doc2.apply_to(BASE).unwrap_err().fields(), ["snat[1].pool"]);
    assert_eq!(
        doc2.edit(&del),
        Err(EditError::NotFound {
            path: "pools.blk".into()
        })
    );
}

#[test]
fn snat_rules_are_edited_by_position() {
    let doc = base_doc();
    let rule = yaml("{ match: 100.64.2.0/24, pool: blk }");
    let add = |position: Option<usize>| Edit::Add {
        section: Section::Snat,
        item: rule.clone(),
        position,
    };
    // First match wins, so a rule can be put in front of the others.
    let c = applied(&doc.edit(&add(Some(0))).unwrap());
    assert_eq!(c.snat.len(), 4);
    assert_eq!(
        (c.snat[0].prefix.to_string(), c.snat[0].pool),
        ("100.64.2.0/24".into(), 1)
    );
    assert_eq!(c.snat[1..], config(BASE).snat[..]);
    // By default at the end, where this one is shadowed by the catch-all before it.
    let err = doc.edit(&add(None)).unwrap().apply_to(BASE).unwrap_err();
    assert_eq!(err.fields(), ["snat[3].match"]);
    assert!(doc.edit(&add(Some(3))).is_ok());
    let err = doc.edit(&add(Some(4))).unwrap_err();
    assert!(
        matches!(&err, EditError::Invalid { path, message } if path == "snat" && message.contains("position 4 is past the end")),
        "{err}"
    );

    let update = Edit::Update {
        section: Section::Snat,
        key: Key::Index(2),
        item: yaml("{ match: 100.64.0.0/10, pool: blk }"),
    };
    let c = applied(&doc.edit(&update).unwrap());
    assert_eq!(c.snat[2].pool, 1);
    let delete = |i: usize| Edit::Delete {
        section: Section::Snat,
        key: Key::Index(i),
    };
    let c = applied(&doc.edit(&delete(0)).unwrap());
    assert_eq!(c.snat[..], config(BASE).snat[1..]);
    assert_eq!(
        doc.edit(&delete(3)),
        Err(EditError::NotFound {
            path: "snat[3]".into()
        })
    );
    let err = doc
        .edit(&Edit::Delete {
            section: Section::Snat,
            key: Key::Name("pub".into()),
        })
        .unwrap_err();
    assert!(
        matches!(&err, EditError::Invalid { path, message } if path == "snat" && message.contains("by position")),
        "{err}"
    );
}

#[test]
fn exclusions_are_edited_by_position() {
    // lab.yaml has no exclusions: the first one creates the section.
    let lab = PolicyDoc::from_config_text(LAB).unwrap();
    let add = Edit::Add {
        section: Section::Exclusions,
        item: yaml("{ destination: 198.51.100.0/24 }"),
        position: None,
    };
    let with = lab.edit(&add).unwrap();
    let c = with.apply_to(LAB).unwrap();
    assert_eq!(c.exclusions.len(), 1);
    assert_eq!(
        diff(&config(LAB), &c),
        vec![policy::Change {
            kind: ChangeKind::Added,
            path: "exclusions[0]".into(),
            detail: "198.51.100.0/24".into(),
        }]
    );
    let delete = Edit::Delete {
        section: Section::Exclusions,
        key: Key::Index(0),
    };
    assert_eq!(
        with.edit(&delete).unwrap().apply_to(LAB).unwrap(),
        config(LAB)
    );
    assert_eq!(
        lab.edit(&delete),
        Err(EditError::NotFound {
            path: "exclusions[0]".into()
        })
    );
    let update = Edit::Update {
        section: Section::Exclusions,
        key: Key::Index(1),
        item: yaml("{ destination: 172.16.0.0/12 }"),
    };
    let c = applied(&base_doc().edit(&update).unwrap());
    assert_eq!(c.exclusions[1].source, None);
}

#[test]
fn dnat_rules_are_edited_by_name() {
    let rule = "{ name: ssh, address: 203.0.113.100, protocol: tcp, port: 22, backends: [{ address: 100.64.0.22 }] }";
    let add = |item: &str| Edit::Add {
        section: Section::Dnat,
        item: yaml(item),
        position: None,
    };
    let c = applied(&edited(add(rule)));
    assert_eq!(c.dnat.len(), 3);
    assert_eq!(c.dnat[2].name, "ssh");
    assert_eq!(
        base_doc().edit(&add(&rule.replace("ssh", "web"))),
        Err(EditError::AlreadyExists {
            path: "nat.dnat.web".into()
        })
    );
    // A document without nat gets nat.dnat.
    let bare = PolicyDoc::from_yaml_str(
        "pools: [{ name: p, addresses: [203.0.113.1] }]\nsnat: [{ match: 100.64.0.0/10, pool: p }]\n",
    )
    .unwrap();
    let with = bare.edit(&add(rule)).unwrap();
    assert_eq!(keys(&with.value()["nat"]), ["dnat"]);
    assert_eq!(with.apply_to(BASE).unwrap().dnat[0].name, "ssh");

    let update = Edit::Update {
        section: Section::Dnat,
        key: Key::Name("mail".into()),
        item: yaml("{ address: 203.0.113.101, backends: [{ address: 100.64.0.26 }] }"),
    };
    let c = applied(&edited(update));
    assert_eq!(c.dnat[1].name, "mail");
    assert_eq!(
        c.dnat[1].backends[0].addr,
        u32::from(std::net::Ipv4Addr::new(100, 64, 0, 26))
    );

    let delete = |name: &str| Edit::Delete {
        section: Section::Dnat,
        key: Key::Name(name.into()),
    };
    let c = applied(&edited(delete("web")));
    let names: Vec<&str> = c.dnat.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["mail"]);
    assert_eq!(
        base_doc().edit(&delete("x")),
        Err(EditError::NotFound {
            path: "nat.dnat.x".into()
        })
    );
    assert_eq!(
        bare.edit(&delete("web")),
        Err(EditError::NotFound {
            path: "nat.dnat.web".into()
        })
    );
}

#[test]
fn a_section_that_is_not_a_list_cannot_be_edited() {
    let doc = PolicyDoc::from_yaml_str("pools: {}\n").unwrap();
    let err = doc
        .edit(&Edit::Add {
            section: Section::Pools,
            item: yaml("{ name: p }"),
            position: None,
        })
        .unwrap_err();
    assert!(
        matches!(&err, EditError::Invalid { path, message } if path == "pools" && message.contains("not a list")),
        "{err}"
    );
}

#[test]
fn live_pools_may_gain_addresses() {
    let old = config(BASE);
    // Grown in place and by a separate range.
    let new = update_pool(
        "pub",
        "{ addresses: [203.0.113.1-203.0.113.12, 203.0.113.64/30] }",
    );
    assert_eq!(check_live(&old, &new), vec![]);
    // Rules, timeouts and other pools may change freely; pools may go away.
    let text = BASE
        .replace("udp: 600", "udp: 900")
        .replace("pool: det", "pool: pub")
        .replace(
            "  - name: det\n    addresses: [198.51.100.64/28]\n    allocation: { mode: deterministic, inside: 100.64.0.0/24 }\n",
            "",
        );
    let new = PolicyDoc::from_config_text(&text)
        .unwrap()
        .apply_to(BASE)
        .unwrap();
    assert_eq!(new.pools.len(), 2);
    assert_eq!(check_live(&old, &new), vec![]);
}

#[test]
fn live_pools_keep_their_ports_filtering_and_allocation() {
    let old = config(BASE);
    let refused = |new: &Config| -> Vec<String> {
        check_live(&old, new).into_iter().map(|e| e.path).collect()
    };
    let new = update_pool(
        "pub",
        "{ addresses: [203.0.113.1-203.0.113.8], ports: 2048-65535 }",
    );
    let errs = check_live(&old, &new);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "pools[0].ports");
    assert_eq!(
        errs[0].message,
        "cannot change while pool \"pub\" is in service; add a pool with another name and these \
         settings, point the snat rules at it, then delete \"pub\""
    );
    let new = update_pool(
        "pub",
        "{ addresses: [203.0.113.1-203.0.113.8], filtering: address-and-port-dependent }",
    );
    assert_eq!(refused(&new), ["pools[0].filtering"]);
    let new = update_pool(
        "blk",
        "{ addresses: [198.51.100.0/28], allocation: { mode: blocks, block_size: 1024, max_blocks: 4 } }",
    );
    assert_eq!(refused(&new), ["pools[1].allocation.block_size"]);
    let new = update_pool(
        "blk",
        "{ addresses: [198.51.100.0/28], allocation: { mode: random } }",
    );
    assert_eq!(refused(&new), ["pools[1].allocation.mode"]);

    // The path is the pool's position in the new policy.
    let mut v = base_doc().value().clone();
    v["pools"].as_sequence_mut().unwrap().swap(0, 1);
    v["pools"][1]["ports"] = yaml("1024-60000");
    let new = applied(&PolicyDoc::from_value(v).unwrap());
    assert_eq!(refused(&new), ["pools[1].ports"]);
}

#[test]
fn live_pools_keep_every_address() {
    let old = config(BASE);
    let new = update_pool(
        "pub",
        "{ addresses: [203.0.113.1-203.0.113.4, 203.0.113.6, 203.0.113.9] }",
    );
    let errs = check_live(&old, &new);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "pools[0].addresses");
    assert_eq!(
        errs[0].message,
        "203.0.113.5, 203.0.113.7-203.0.113.8 cannot leave pool \"pub\" while it is in service; \
         add a pool with another name and these settings, point the snat rules at it, then delete \
         \"pub\""
    );
}

#[test]
fn live_deterministic_pools_keep_their_addresses_exactly() {
    let old = config(BASE);
    let det = |addresses: &str| {
        update_pool(
            "det",
            &format!(
                "{{ addresses: {addresses}, allocation: {{ mode: deterministic, inside: 100.64.0.0/24 }} }}"
            ),
        )
    };
    // Even growing moves subscribers: their address and ports are computed from the list.
    for grown in ["[198.51.100.64/27]", "[198.51.100.64/28, 203.0.113.64/28]"] {
        let errs = check_live(&old, &det(grown));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "pools[2].addresses");
        assert!(
            errs[0]
                .message
                .starts_with("cannot change while deterministic pool \"det\" is in service"),
            "{}",
            errs[0].message
        );
    }
    assert_eq!(check_live(&old, &det("[198.51.100.64/28]")), vec![]);
    let new = update_pool(
        "det",
        "{ addresses: [198.51.100.64/28], allocation: { mode: deterministic, inside: 100.64.0.0/23 } }",
    );
    let errs = check_live(&old, &new);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "pools[2].allocation.inside");
}

#[test]
fn a_renamed_pool_is_a_new_pool() {
    // The documented way out of check_live: the old pool goes, so nothing live is changed.
    let text = BASE
        .replace("name: pub", "name: pub2")
        .replace("pool: pub", "pool: pub2")
        .replace("snat: pub", "snat: pub2")
        .replace(
            "[203.0.113.1-203.0.113.8]",
            "[203.0.113.1-203.0.113.4]\n    ports: 4096-65535",
        );
    let new = PolicyDoc::from_config_text(&text)
        .unwrap()
        .apply_to(BASE)
        .unwrap();
    assert_eq!(check_live(&config(BASE), &new), vec![]);
}

#[test]
fn section_names() {
    for (s, section) in [
        ("pools", Section::Pools),
        ("pool", Section::Pools),
        ("snat", Section::Snat),
        ("exclusions", Section::Exclusions),
        ("exclusion", Section::Exclusions),
        ("dnat", Section::Dnat),
        ("nat.dnat", Section::Dnat),
    ] {
        assert_eq!(s.parse::<Section>(), Ok(section));
    }
    let shown: Vec<String> = [
        Section::Pools,
        Section::Snat,
        Section::Exclusions,
        Section::Dnat,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(shown, ["pools", "snat", "exclusions", "nat.dnat"]);
    let err = "rules".parse::<Section>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown policy section `rules`; expected pools, snat, exclusions or dnat"
    );
}
