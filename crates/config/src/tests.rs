//! Whole-config tests: the shipped example files, defaults, each validation rule, error
//! messages and the EAL argument vector.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;

const LAB: &str = include_str!("../../../config/lab.yaml");
const NIC: &str = include_str!("../../../config/example-nic.yaml");
const LAB2: &str = include_str!("../../../config/lab-2workers.yaml");
const BENCH_MEMIF: &str = include_str!("../../../perf/configs/memif.yaml");
const CONFIG_MD: &str = include_str!("../../../docs/CONFIG.md");

/// Smallest valid config; every optional field left out.
const MINIMAL: &str = r#"
eal:
  lcores: "0-1"
ports:
  - name: inside
    role: inside
    device: { vdev: "net_af_packet0,iface=cgn-in" }
    address: 100.64.0.1/24
  - name: outside
    role: outside
    device: { vdev: "net_af_packet1,iface=cgn-out" }
    address: 192.0.2.1/24
    gateway: 192.0.2.2
pools:
  - name: public
    addresses: ["203.0.113.0/29"]
snat:
  - match: 100.64.0.0/10
    pool: public
"#;

/// `MINIMAL` with one piece of text replaced (which must be present, so a test cannot pass
/// by editing nothing).
fn edit(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "test bug: `{from}` not in MINIMAL");
    MINIMAL.replacen(from, to, 1)
}

/// Parses `yaml`, expects failure, and checks that the message names `field` and contains
/// `needle`.
fn rejects(yaml: &str, field: &str, needle: &str) -> ConfigError {
    let err = match Config::from_yaml_str(yaml) {
        Ok(_) => panic!("accepted, expected an error about {field}:\n{yaml}"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        err.fields().contains(&field),
        "error does not name `{field}`: {msg}"
    );
    assert!(
        msg.contains(&format!("{field}: ")),
        "message does not lead with `{field}`: {msg}"
    );
    assert!(msg.contains(needle), "`{needle}` missing from: {msg}");
    err
}

/// Gives both af_packet ports enough queue pairs for up to four workers.
fn qpairs4(yaml: &str) -> String {
    let out = yaml
        .replace("iface=cgn-in\"", "iface=cgn-in,qpairs=4\"")
        .replace("iface=cgn-out\"", "iface=cgn-out,qpairs=4\"");
    assert_ne!(out, yaml, "test bug: no af_packet port to widen");
    out
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `make bench` feeds this config from two generators; if it stopped matching their frames the
/// system benchmark would measure drops, not translation.
#[test]
fn bench_config_translates_both_generators_traffic() {
    let c = Config::from_yaml_str(BENCH_MEMIF).unwrap();
    let Device::Vdev { spec } = &c.inside_port().device else {
        panic!("the bench's inside port is a memif vdev");
    };
    // testpmd 22.11's flowgen sends to this MAC whatever the port; mkpcap.py is told the same.
    assert!(spec.contains("mac=00:01:02:03:04:01"), "{spec}");
    // The pcap's subscribers and flowgen's one source each match a rule.
    // mkpcap.py's subscribers are 100.64.0.1 to 100.64.16.0.
    for src in ["100.64.0.1", "100.64.16.0", "10.254.0.0"] {
        assert!(
            c.snat.iter().any(|r| r.prefix.contains(ip(src))),
            "{src} matches no SNAT rule"
        );
    }
    // flowgen's 65536 flows all belong to that one subscriber.
    let limit = c.nat.limits.max_sessions_per_subscriber;
    assert!(limit == 0 || limit >= 65536, "{limit}");
    assert!(c.nat.max_sessions >= 65536);
}

#[test]
fn lab_config_describes_the_standard_lab() {
    let c = Config::from_yaml_str(LAB).unwrap();
    let inside = c.inside_port();
    assert_eq!(inside.name, "inside");
    assert_eq!(inside.device.port_name(), "net_af_packet0");
    assert_eq!(inside.address, ip("100.64.0.1"));
    assert_eq!(inside.prefix, "100.64.0.0/24".parse().unwrap());
    assert!(inside.promiscuous);
    assert_eq!(inside.gateway, None);
    let outside = c.outside_port();
    assert_eq!(outside.device.port_name(), "net_af_packet1");
    assert_eq!(outside.address, ip("192.0.2.1"));
    assert_eq!(outside.gateway, Some(ip("192.0.2.2")));
    assert!(outside.promiscuous);

    assert_eq!(c.pools.len(), 2);
    // The second pool masquerades: the outside port's address, for the lab's MASQUERADE server.
    assert!(c.pools[1].masquerade);
    assert_eq!(c.pools[1].ranges, vec![(ip("192.0.2.1"), ip("192.0.2.1"))]);
    let pool = &c.pools[0];
    assert_eq!(pool.name, "lab");
    assert_eq!(pool.ranges, vec![(ip("203.0.113.1"), ip("203.0.113.6"))]);
    assert_eq!(pool.len(), 6);
    assert_eq!((pool.port_lo, pool.port_hi), (1024, 65535));
    // The pool must be inside what cgn-inet routes to us.
    let routed: Ipv4Net = "203.0.113.0/24".parse().unwrap();
    assert!(pool.addresses().all(|a| routed.contains(a)));

    assert_eq!(
        c.snat,
        vec![
            SnatRule {
                prefix: "100.64.0.0/10".parse().unwrap(),
                destination: Some("198.51.100.20/32".parse().unwrap()),
                pool: 1
            },
            SnatRule {
                prefix: "100.64.0.0/10".parse().unwrap(),
                destination: None,
                pool: 0
            }
        ]
    );
    assert_eq!(c.workers, Workers::Count(1));
    assert_eq!(c.worker_lcores(), vec![1]);
    assert_eq!(c.eal.main_lcore, 0);
    assert_eq!(c.eal.memory, Memory::NoHuge { size_mb: 512 });
    assert_eq!(c.eal.file_prefix, "cgnat-lab");
    assert_eq!(c.nat.max_sessions, 65536);
    // The lab shares its two CPUs with the test traffic: workers nap when idle.
    assert_eq!(
        c.dataplane,
        DataplaneCfg {
            idle_sleep: Duration::from_micros(50),
            idle_polls: 1024,
            handoff_ring: 1024,
            inject_panic: None,
        }
    );
    assert!(inside.neighbours.is_empty() && outside.neighbours.is_empty());
}

#[test]
fn lab_eal_args_exact() {
    let c = Config::from_yaml_str(LAB).unwrap();
    assert_eq!(
        c.eal_args("cgnatd"),
        vec![
            "cgnatd",
            "-l",
            "0-1",
            "--main-lcore",
            "0",
            "--no-huge",
            "-m",
            "512",
            "--file-prefix",
            "cgnat-lab",
            "--log-level=*:warning",
            "--vdev",
            "net_af_packet0,iface=cgn-in,blocksz=4096,framesz=2048,framecnt=512,qpairs=1",
            "--vdev",
            "net_af_packet1,iface=cgn-out,blocksz=4096,framesz=2048,framecnt=512,qpairs=1",
            "--no-pci",
        ]
    );
}

#[test]
fn nic_example_parses_with_pci_and_hugepages() {
    let c = Config::from_yaml_str(NIC).unwrap();
    assert_eq!(c.worker_lcores(), vec![3, 4]);
    assert_eq!(c.eal.memory, Memory::Hugepages { size_mb: None });
    assert_eq!(c.inside_port().device.port_name(), "0000:3b:00.0");
    assert_eq!(c.pools[0].len(), 64);
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.stats_interval, Duration::from_secs(60));
    let names: Vec<&str> = c.dnat.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["sub-100.64.17.11-https", "portal", "portal-dns", "mail"]
    );
    // The forward on a pool address uses a port below the pool's range.
    assert_eq!((c.dnat[0].port, c.dnat[0].backends[0].port), (443, 443));
    let portal = &c.dnat[1];
    assert_eq!(portal.snat_pool, c.pool_index("public"));
    assert_eq!(portal.scheduler, nat::Scheduler::Maglev);
    assert_eq!(portal.backends[2].weight, 0);
    assert_eq!(c.dnat[2].on_removal, nat::OnRemoval::Cut);
    assert!(c.dnat[3].is_address_only() && !c.dnat[3].is_identity());
    let args = c.eal_args("cgnatd");
    assert_eq!(
        args,
        vec![
            "cgnatd",
            "-l",
            "2-4",
            "--main-lcore",
            "2",
            "--huge-unlink",
            "--file-prefix",
            "cgnat",
            "--log-level=*:notice",
            "-a",
            "0000:3b:00.0",
            "-a",
            "0000:3b:00.1",
            "--iova-mode=va",
        ]
    );
}

#[test]
fn defaults_are_applied() {
    let c = Config::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(c.workers, Workers::Count(1));
    assert_eq!(c.eal.file_prefix, "cgnat");
    assert_eq!(c.eal.log_level, EalLogLevel::Warning);
    assert_eq!(c.eal.memory, Memory::Hugepages { size_mb: None });
    assert!(c.eal.extra_args.is_empty());
    let p = c.inside_port();
    assert_eq!((p.mtu, p.rx_desc, p.tx_desc), (1500, 1024, 1024));
    assert!(!p.promiscuous);
    assert!(p.routes.is_empty());
    assert_eq!((c.pools[0].port_lo, c.pools[0].port_hi), (1024, 65535));
    assert_eq!(c.nat.max_sessions, 1 << 20);
    let t = c.nat.timeouts;
    assert_eq!(t.tcp_established, Duration::from_secs(7440));
    assert_eq!(t.tcp_transitory, Duration::from_secs(240));
    assert_eq!(t.udp, Duration::from_secs(300));
    assert_eq!(t.icmp, Duration::from_secs(60));
    assert_eq!(c.nat, NatCfg::default());
    assert_eq!(c.neighbour.reachable_time, Duration::from_secs(300));
    assert_eq!(c.neighbour.retransmit, Duration::from_millis(1000));
    assert_eq!(c.mgmt.listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(c.logging.level, "info");
    assert_eq!(c.logging.format, LogFormat::Text);
    assert_eq!(c.stats_interval, Duration::from_secs(10));
    assert!(c.ports.iter().all(|p| p.neighbours.is_empty()));
    assert_eq!(c.dataplane, DataplaneCfg::default());
    assert_eq!(
        c.dataplane,
        DataplaneCfg {
            idle_sleep: Duration::ZERO,
            idle_polls: 1024,
            handoff_ring: 1024,
            inject_panic: None,
        },
        "default: pure busy polling"
    );
}

#[test]
fn nohuge_without_size_gets_512_mb() {
    let c = Config::from_yaml_str(&edit(
        "  lcores: \"0-1\"\n",
        "  lcores: \"0-1\"\n  memory: { hugepages: false }\n",
    ))
    .unwrap();
    assert_eq!(c.eal.memory, Memory::NoHuge { size_mb: 512 });
}

#[test]
fn hugepages_with_size_passes_m() {
    let c = Config::from_yaml_str(&edit(
        "  lcores: \"0-1\"\n",
        "  lcores: \"0-1\"\n  memory: { size_mb: 2048 }\n",
    ))
    .unwrap();
    let args = c.eal_args("x");
    let pos = args.iter().position(|a| a == "--huge-unlink").unwrap();
    assert_eq!(args[pos + 1..pos + 3], ["-m", "2048"]);
}

#[test]
fn lcore_map_syntax_uses_lcores_option_and_counts_lcore_ids() {
    let c = Config::from_yaml_str(&qpairs4(&edit(
        "lcores: \"0-1\"",
        "lcores: \"0@0,(1-2)@(1-3)\"\nworkers: 2",
    )))
    .unwrap();
    assert_eq!(c.worker_lcores(), vec![1, 2]);
    assert_eq!(c.eal_args("x")[1..3], ["--lcores", "0@0,(1-2)@(1-3)"]);
}

#[test]
fn main_lcore_is_first_listed_unless_given() {
    let c = Config::from_yaml_str(&edit("\"0-1\"", "\"3,0-2\"")).unwrap();
    assert_eq!(c.eal.main_lcore, 3);
    assert_eq!(c.worker_lcores(), vec![0]);
    let args = c.eal_args("x");
    assert_eq!(args[3..5], ["--main-lcore", "3"]);

    let c = Config::from_yaml_str(&qpairs4(&edit(
        "lcores: \"0-1\"",
        "lcores: \"0-3\"\n  main_lcore: 2\nworkers: 3",
    )))
    .unwrap();
    assert_eq!(c.worker_lcores(), vec![0, 1, 3]);
}

#[test]
fn explicit_worker_lcores() {
    let c = Config::from_yaml_str(&qpairs4(&edit(
        "lcores: \"0-1\"",
        "lcores: \"0-3\"\nworkers: [3, 1]",
    )))
    .unwrap();
    assert_eq!(c.workers, Workers::Lcores(vec![3, 1]));
    assert_eq!(c.worker_lcores(), vec![3, 1]);
    assert_eq!(c.worker_count(), 2);
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-3\"\nworkers: [0]"),
        "workers[0]",
        "main lcore",
    );
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-3\"\nworkers: [1, 7]"),
        "workers[1]",
        "not in the lcore list",
    );
}

#[test]
fn lcores_may_come_from_extra_args() {
    let c = Config::from_yaml_str(&edit(
        "lcores: \"0-1\"",
        "extra_args: [\"-l\", \"4-5\", \"--iova-mode=va\"]",
    ))
    .unwrap();
    assert_eq!(c.eal.lcores, None);
    assert_eq!(c.worker_lcores(), vec![5]);
    let args = c.eal_args("x");
    // Passed once, via extra_args, at the end.
    assert_eq!(args.iter().filter(|a| *a == "-l").count(), 1);
    assert_eq!(args[args.len() - 3..], ["-l", "4-5", "--iova-mode=va"]);
    assert_eq!(args[1..3], ["--main-lcore", "4"]);
}

#[test]
fn bad_lcore_list_in_extra_args_names_the_value() {
    rejects(
        &edit(
            "lcores: \"0-1\"",
            "extra_args: [\"--iova-mode=va\", \"-l\", \"0-x\"]",
        ),
        "eal.extra_args[2]",
        "not a number",
    );
    rejects(
        &edit("lcores: \"0-1\"", "extra_args: [\"--lcores=(0-1\"]"),
        "eal.extra_args[0]",
        "unbalanced",
    );
}

#[test]
fn lcores_required() {
    rejects(
        &edit("  lcores: \"0-1\"\n", "  log_level: info\n"),
        "eal.lcores",
        "required",
    );
}

#[test]
fn lcores_given_twice() {
    rejects(
        &edit(
            "lcores: \"0-1\"",
            "lcores: \"0-1\"\n  extra_args: [\"--lcores=0-1\"]",
        ),
        "eal.extra_args[0]",
        "already",
    );
}

#[test]
fn bad_lcore_list() {
    rejects(&edit("\"0-1\"", "\"1-0\""), "eal.lcores", "backwards");
    rejects(&edit("\"0-1\"", "\"0-200\""), "eal.lcores", "RTE_MAX_LCORE");
}

#[test]
fn workers_more_than_available_lcores() {
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-1\"\nworkers: 2"),
        "workers",
        "2 workers need 3 lcores",
    );
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-1\"\nworkers: 0"),
        "workers",
        "at least 1",
    );
}

#[test]
fn af_packet_needs_a_queue_pair_per_worker() {
    let yaml = edit("lcores: \"0-1\"", "lcores: \"0-2\"\nworkers: 2");
    let err = rejects(&yaml, "ports[0].device.vdev", "qpairs=2");
    assert!(err.fields().contains(&"ports[1].device.vdev"));
    let yaml = yaml
        .replace("iface=cgn-in\"", "iface=cgn-in,qpairs=2\"")
        .replace("iface=cgn-out\"", "iface=cgn-out,qpairs=2\"");
    assert_eq!(Config::from_yaml_str(&yaml).unwrap().worker_count(), 2);
}

#[test]
fn main_lcore_must_be_listed() {
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-1\"\n  main_lcore: 5"),
        "eal.main_lcore",
        "not in the lcore list",
    );
}

#[test]
fn file_prefix_charset_and_override() {
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-1\"\n  file_prefix: \"a/b\""),
        "eal.file_prefix",
        "may contain only",
    );
    let mut c = Config::from_yaml_str(MINIMAL).unwrap();
    c.with_file_prefix("cgnat-test-42").unwrap();
    assert!(
        c.eal_args("x")
            .windows(2)
            .any(|w| w == ["--file-prefix", "cgnat-test-42"])
    );
    let err = c.with_file_prefix("bad prefix").unwrap_err();
    assert!(err.to_string().starts_with("eal.file_prefix: "), "{err}");
    assert_eq!(
        c.eal.file_prefix, "cgnat-test-42",
        "a rejected prefix must not be applied"
    );
}

#[test]
fn extra_args_may_not_repeat_derived_options() {
    rejects(
        &edit(
            "lcores: \"0-1\"",
            "lcores: \"0-1\"\n  extra_args: [\"--file-prefix=x\"]",
        ),
        "eal.extra_args[0]",
        "eal.file_prefix",
    );
    rejects(
        &edit(
            "lcores: \"0-1\"",
            "lcores: \"0-1\"\n  memory: { hugepages: false }\n  extra_args: [\"--iova-mode=va\", \"-m\", \"64\"]",
        ),
        "eal.extra_args[1]",
        "size_mb",
    );
}

#[test]
fn duplicate_port_names() {
    rejects(
        &edit("name: outside", "name: inside"),
        "ports[1].name",
        "already used by ports[0]",
    );
}

#[test]
fn two_inside_ports() {
    let err = rejects(
        &edit("role: outside", "role: inside"),
        "ports[1].role",
        "exactly one inside and one outside port",
    );
    // ...which also leaves no outside port.
    assert!(err.fields().contains(&"ports"), "{err}");
}

#[test]
fn bad_prefix() {
    let err = rejects(
        &edit("100.64.0.1/24", "100.64.0.1/33"),
        "ports[0].address",
        "prefix length",
    );
    assert!(matches!(
        err,
        ConfigError::Yaml {
            location: Some(_),
            ..
        }
    ));
    rejects(
        &edit("100.64.0.1/24", "100.64.0.1"),
        "ports[0].address",
        "a.b.c.d/len",
    );
    rejects(
        &edit("100.64.0.1/24", "100.64.0.0/24"),
        "ports[0].address",
        "all zeros",
    );
    rejects(
        &edit("100.64.0.1/24", "100.64.0.255/24"),
        "ports[0].address",
        "all ones",
    );
    rejects(
        &edit("100.64.0.1/24", "127.0.0.1/8"),
        "ports[0].address",
        "loopback",
    );
    rejects(
        &edit("match: 100.64.0.0/10", "match: 100.64.0.1/10"),
        "snat[0].match",
        "did you mean 100.64.0.0/10",
    );
}

#[test]
fn point_to_point_subnets_allow_every_address() {
    // RFC 3021: both addresses of a /31 are hosts.
    let c = Config::from_yaml_str(
        &edit("192.0.2.1/24", "192.0.2.0/31").replace("gateway: 192.0.2.2", "gateway: 192.0.2.1"),
    )
    .unwrap();
    assert_eq!(c.outside_port().address, ip("192.0.2.0"));
}

#[test]
fn gateway_outside_subnet() {
    rejects(
        &edit("gateway: 192.0.2.2", "gateway: 192.0.3.2"),
        "ports[1].gateway",
        "not inside the port's subnet 192.0.2.0/24",
    );
    rejects(
        &edit("gateway: 192.0.2.2", "gateway: 192.0.2.1"),
        "ports[1].gateway",
        "own address",
    );
}

#[test]
fn routes_need_an_on_link_next_hop() {
    let ok = edit(
        "    address: 100.64.0.1/24\n",
        "    address: 100.64.0.1/24\n    routes:\n      - { prefix: 10.0.0.0/8, via: 100.64.0.254 }\n",
    );
    let c = Config::from_yaml_str(&ok).unwrap();
    assert_eq!(
        c.inside_port().routes,
        vec![Route {
            prefix: "10.0.0.0/8".parse().unwrap(),
            via: ip("100.64.0.254")
        }]
    );
    rejects(
        &ok.replace("via: 100.64.0.254", "via: 10.1.1.1"),
        "ports[0].routes[0].via",
        "not inside",
    );
    rejects(
        &ok.replace("prefix: 10.0.0.0/8", "prefix: 0.0.0.0/0"),
        "ports[0].routes[0].prefix",
        "conflicts with ports[1].gateway",
    );
}

#[test]
fn two_gateways() {
    rejects(
        &edit(
            "    address: 100.64.0.1/24\n",
            "    address: 100.64.0.1/24\n    gateway: 100.64.0.2\n",
        ),
        "ports[1].gateway",
        "already has a gateway",
    );
}

#[test]
fn overlapping_port_subnets() {
    rejects(
        &edit("192.0.2.1/24", "100.64.0.200/16").replace("192.0.2.2", "100.64.1.1"),
        "ports[1].address",
        "overlaps 100.64.0.0/24",
    );
}

#[test]
fn mtu_and_descriptor_bounds() {
    rejects(
        &edit(
            "    address: 192.0.2.1/24\n",
            "    address: 192.0.2.1/24\n    mtu: 9001\n",
        ),
        "ports[1].mtu",
        "68..=9000",
    );
    rejects(
        &edit(
            "    address: 192.0.2.1/24\n",
            "    address: 192.0.2.1/24\n    rx_desc: 1000\n",
        ),
        "ports[1].rx_desc",
        "power of two",
    );
}

#[test]
fn device_must_be_exactly_one_kind() {
    rejects(
        &edit(
            "{ vdev: \"net_af_packet0,iface=cgn-in\" }",
            "{ vdev: \"net_tap0\", pci: \"0000:03:00.0\" }",
        ),
        "ports[0].device",
        "exactly one",
    );
    rejects(
        &edit(
            "{ vdev: \"net_af_packet1,iface=cgn-out\" }",
            "{ vdev: \"net_af_packet0\" }",
        ),
        "ports[1].device",
        "already used by ports[0]",
    );
}

#[test]
fn bad_pci_address() {
    for bad in [
        "03:00.0",
        "0000:03:00",
        "0000:03:00.8",
        "0000:03:20.0",
        "000g:03:00.0",
    ] {
        rejects(
            &edit(
                "{ vdev: \"net_af_packet0,iface=cgn-in\" }",
                &format!("{{ pci: \"{bad}\" }}"),
            ),
            "ports[0].device.pci",
            bad,
        );
    }
    let c = Config::from_yaml_str(&edit(
        "{ vdev: \"net_af_packet0,iface=cgn-in\" }",
        "{ pci: \"0000:3B:00.0\" }",
    ))
    .unwrap();
    assert_eq!(c.inside_port().device.port_name(), "0000:3b:00.0");
    let args = c.eal_args("x");
    assert!(args.windows(2).any(|w| w == ["-a", "0000:3b:00.0"]));
    assert!(!args.contains(&"--no-pci".to_owned()), "{args:?}");
}

#[test]
fn pool_overlap_across_pools() {
    let yaml = edit(
        "    addresses: [\"203.0.113.0/29\"]\n",
        "    addresses: [\"203.0.113.0/29\"]\n  - name: second\n    addresses: [\"203.0.113.4-203.0.113.9\"]\n",
    );
    rejects(
        &yaml,
        "pools[1].addresses[0]",
        "overlaps pools[0].addresses[0] (203.0.113.0/29) of pool `public`",
    );
}

#[test]
fn pool_overlap_within_a_pool() {
    rejects(
        &edit(
            "[\"203.0.113.0/29\"]",
            "[\"203.0.113.0/29\", \"198.18.0.1\", \"203.0.113.7\"]",
        ),
        "pools[0].addresses[2]",
        "in the same pool",
    );
}

#[test]
fn pool_ranges_are_sorted_and_merged() {
    let c = Config::from_yaml_str(&edit(
        "[\"203.0.113.0/29\"]",
        "[\"203.0.113.8-203.0.113.9\", \"198.18.0.10-198.18.0.20\", \"203.0.113.0/29\"]\n    ports: \"2000-2999\"",
    ))
    .unwrap();
    let p = &c.pools[0];
    assert_eq!(
        p.ranges,
        vec![
            (ip("198.18.0.10"), ip("198.18.0.20")),
            (ip("203.0.113.0"), ip("203.0.113.9")),
        ]
    );
    assert_eq!(p.len(), 21);
    assert_eq!((p.port_lo, p.port_hi), (2000, 2999));
}

#[test]
fn pool_containing_an_interface_address() {
    rejects(
        &edit("[\"203.0.113.0/29\"]", "[\"192.0.2.1-192.0.2.1\"]"),
        "pools[0].addresses[0]",
        "the address of ports[1] (`outside`)",
    );
    rejects(
        &edit("[\"203.0.113.0/29\"]", "[\"192.0.2.2\"]"),
        "pools[0].addresses[0]",
        "the gateway of ports[1]",
    );
    rejects(
        &edit("[\"203.0.113.0/29\"]", "[\"100.64.0.128/25\"]"),
        "pools[0].addresses[0]",
        "inside port",
    );
    // Elsewhere in the outside subnet is fine.
    let c = Config::from_yaml_str(&edit("[\"203.0.113.0/29\"]", "[\"192.0.2.10-192.0.2.20\"]"))
        .unwrap();
    assert_eq!(c.pools[0].len(), 11);
}

#[test]
fn pool_must_be_unicast() {
    rejects(
        &edit("[\"203.0.113.0/29\"]", "[\"224.0.0.1\"]"),
        "pools[0].addresses[0]",
        "unicast",
    );
}

#[test]
fn pool_port_range() {
    rejects(
        &edit(
            "[\"203.0.113.0/29\"]",
            "[\"203.0.113.0/29\"]\n    ports: \"0-100\"",
        ),
        "pools[0].ports",
        "1 <= low",
    );
}

#[test]
fn unknown_pool_in_snat() {
    rejects(
        &edit("pool: public", "pool: publc"),
        "snat[0].pool",
        "no pool named `publc` (pools: public)",
    );
}

#[test]
fn shadowed_snat_rule() {
    rejects(
        &edit(
            "    pool: public\n",
            "    pool: public\n  - match: 100.64.1.0/24\n    pool: public\n",
        ),
        "snat[1].match",
        "never matches",
    );
}

#[test]
fn udp_timeout_below_rfc_4787_minimum() {
    rejects(
        &format!("{MINIMAL}nat:\n  timeouts:\n    udp: 119\n"),
        "nat.timeouts.udp",
        "RFC 4787",
    );
    let c = Config::from_yaml_str(&format!("{MINIMAL}nat:\n  timeouts:\n    udp: 120\n")).unwrap();
    assert_eq!(c.nat.timeouts.udp, Duration::from_secs(120));
    assert_eq!(
        c.nat.timeouts.icmp,
        Duration::from_secs(60),
        "siblings keep defaults"
    );
}

#[test]
fn every_rfc_timeout_floor_is_enforced_unless_a_lab_opts_out() {
    for (field, below, rfc) in [
        ("tcp_established", 7439, "RFC 5382"),
        ("icmp", 59, "RFC 5508"),
    ] {
        rejects(
            &format!("{MINIMAL}nat:\n  timeouts:\n    {field}: {below}\n"),
            &format!("nat.timeouts.{field}"),
            rfc,
        );
    }
    // RFC 7857 section 2 lets the transitory timeout be shortened as local policy.
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}nat:\n  timeouts:\n    tcp_transitory: 60\n"
    ))
    .unwrap();
    assert_eq!(c.nat.timeouts.tcp_transitory, Duration::from_secs(60));
    // A lab or a test may go below them, and says so explicitly.
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}nat:\n  timeouts:\n    udp: 5\n    icmp: 5\n    tcp_transitory: 5\n    tcp_established: 30\n    enforce_rfc_minimums: false\n"
    ))
    .unwrap();
    let t = c.nat.timeouts;
    assert_eq!(
        (t.udp, t.icmp, t.tcp_transitory, t.tcp_established),
        (
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(5),
            Duration::from_secs(30)
        )
    );
    assert!(!t.rfc_minimums);
    assert!(
        Config::from_yaml_str(MINIMAL)
            .unwrap()
            .nat
            .timeouts
            .rfc_minimums
    );
    // Zero stays an error either way.
    rejects(
        &format!("{MINIMAL}nat:\n  timeouts:\n    udp: 0\n    enforce_rfc_minimums: false\n"),
        "nat.timeouts.udp",
        "outside 1..=",
    );
}

#[test]
fn fragment_limits_have_defaults_and_bounds() {
    let c = Config::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(c.nat.fragments.max_datagrams, 4096);
    assert_eq!(c.nat.fragments.max_held, 256);
    assert_eq!(c.nat.fragments.timeout, Duration::from_millis(2000));
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}nat:\n  fragments:\n    max_datagrams: 100\n    max_held: 8\n    timeout_ms: 500\n"
    ))
    .unwrap();
    assert_eq!(
        (c.nat.fragments.max_datagrams, c.nat.fragments.max_held),
        (100, 8)
    );
    rejects(
        &format!("{MINIMAL}nat:\n  fragments:\n    max_held: 0\n"),
        "nat.fragments.max_held",
        "outside 1..=",
    );
    rejects(
        &format!("{MINIMAL}nat:\n  fragments:\n    max_held: 4097\n"),
        "nat.fragments.max_held",
        "outside 1..=4096",
    );
    rejects(
        &format!("{MINIMAL}nat:\n  fragments:\n    timeout_ms: 5\n"),
        "nat.fragments.timeout_ms",
        "10..=60000",
    );
    rejects(
        &format!("{MINIMAL}nat:\n  fragments:\n    max_datagram: 5\n"),
        "nat.fragments.max_datagram",
        "expected one of `max_datagrams`",
    );
}

#[test]
fn timeouts_are_integer_seconds() {
    rejects(
        &format!("{MINIMAL}nat:\n  timeouts:\n    udp: 5m\n"),
        "nat.timeouts.udp",
        "(line 22, column 10)",
    );
    rejects(
        &format!("{MINIMAL}nat:\n  max_sessions: 100\n"),
        "nat.max_sessions",
        "1024..=67108864",
    );
}

#[test]
fn unknown_field_names_field_and_position() {
    let err = rejects(
        &edit(
            "    gateway: 192.0.2.2\n",
            "    gateway: 192.0.2.2\n    promiscous: true\n",
        ),
        "ports[1].promiscous",
        "unknown field `promiscous`",
    );
    let msg = err.to_string();
    assert!(msg.contains("(line 14, column 5)"), "{msg}");
    // The valid keys are listed, so the operator sees the intended spelling.
    assert!(
        msg.contains("`gateway`, `routes`, `neighbours` (line 14"),
        "{msg}"
    );
    assert!(
        matches!(
            err,
            ConfigError::Yaml {
                location: Some(Location {
                    line: 14,
                    column: 5
                }),
                ..
            }
        ),
        "{err:?}"
    );

    let err = rejects(
        &format!("{MINIMAL}bogus: 1\n"),
        "bogus",
        "unknown field `bogus`",
    );
    assert!(err.to_string().contains("(line 20, column 1)"), "{err}");
}

#[test]
fn wrong_type_names_field_and_position() {
    let err = rejects(
        &edit(
            "    address: 192.0.2.1/24\n",
            "    address: 192.0.2.1/24\n    mtu: big\n",
        ),
        "ports[1].mtu",
        "invalid type: string \"big\", expected u16",
    );
    assert!(err.to_string().ends_with("(line 13, column 10)"), "{err}");
    rejects(
        &edit("role: outside", "role: sideways"),
        "ports[1].role",
        "unknown variant `sideways`",
    );
    rejects(
        &format!("{MINIMAL}workers: \"two\"\n"),
        "workers",
        "worker count",
    );
    rejects(
        &edit("lcores: \"0-1\"", "lcores: \"0-1\"\nworkers: -1"),
        "workers",
        "negative",
    );
}

#[test]
fn missing_field_is_named() {
    rejects(
        &edit("    role: inside\n", ""),
        "ports[0].role",
        "missing field `role`",
    );
}

#[test]
fn yaml_syntax_error_has_position() {
    let err = Config::from_yaml_str("eal:\n  lcores: \"0-1\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("(yaml syntax): "), "{msg}");
    assert!(msg.ends_with("(line 3, column 1)"), "{msg}");
    let err = Config::from_yaml_str("- 1\n").unwrap_err();
    assert!(
        err.to_string().starts_with("(top level): invalid type"),
        "{err}"
    );
    // A type error at the top names the section.
    let err = Config::from_yaml_str("eal: [1]\n").unwrap_err();
    assert!(
        err.to_string().starts_with("eal: invalid type: sequence"),
        "{err}"
    );
}

#[test]
fn several_errors_are_reported_together() {
    let yaml = edit("gateway: 192.0.2.2", "gateway: 10.0.0.1").replace("pool: public", "pool: x");
    let err = Config::from_yaml_str(&yaml).unwrap_err();
    assert_eq!(err.fields(), vec!["ports[1].gateway", "snat[0].pool"]);
    assert!(
        err.to_string().starts_with("ports[1].gateway: ")
            && err.to_string().ends_with(" (2 configuration errors)"),
        "{err}"
    );
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("cgnat-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, edit("pool: public", "pool: nope")).unwrap();
    let err = Config::load(&path).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}: snat[0].pool: ", path.display())),
        "{msg}"
    );

    let good = dir.join("lab.yaml");
    std::fs::write(&good, LAB).unwrap();
    assert_eq!(
        Config::load(&good).unwrap(),
        Config::from_yaml_str(LAB).unwrap()
    );

    let missing = dir.join("missing.yaml");
    let msg = Config::load(&missing).unwrap_err().to_string();
    assert!(
        msg.contains("cannot read config file") && msg.contains("missing.yaml"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pool_lookup_and_ports_by_name() {
    let c = Config::from_yaml_str(LAB).unwrap();
    assert_eq!(c.pool_index("lab"), Some(0));
    assert_eq!(c.pool_index("nope"), None);
    assert_eq!(c.port("outside").map(|p| p.role), Some(Role::Outside));
}

#[test]
fn two_worker_lab_eal_args_exact() {
    let c = Config::from_yaml_str(LAB2).unwrap();
    assert_eq!(c.workers, Workers::Count(2));
    assert_eq!(c.worker_lcores(), vec![1, 2]);
    assert_eq!(c.worker_count(), 2);
    assert_eq!(c.eal.lcore_ids, vec![0, 1, 2]);
    assert_eq!(c.eal.main_lcore, 0);
    assert_eq!(
        c.eal_args("cgnatd"),
        vec![
            "cgnatd",
            "--lcores",
            "0@0,1@1,2@0",
            "--main-lcore",
            "0",
            "--no-huge",
            "-m",
            "512",
            "--file-prefix",
            "cgnat-lab2",
            "--log-level=*:warning",
            "--vdev",
            "net_af_packet0,iface=cgn-in,blocksz=4096,framesz=2048,framecnt=512,qpairs=2",
            "--vdev",
            "net_af_packet1,iface=cgn-out,blocksz=4096,framesz=2048,framecnt=512,qpairs=2",
            "--no-pci",
        ]
    );
}

#[test]
fn two_worker_lab_differs_from_lab_only_in_cores_queues_and_prefix() {
    let one = Config::from_yaml_str(LAB).unwrap();
    let mut two = Config::from_yaml_str(LAB2).unwrap();
    // Undo the documented differences; everything else must then be equal, so the two labs
    // cannot drift apart (addresses, pools, timeouts, idle settings).
    two.eal.lcores = one.eal.lcores.clone();
    two.eal.lcore_ids = one.eal.lcore_ids.clone();
    two.eal.file_prefix = one.eal.file_prefix.clone();
    two.workers = one.workers.clone();
    for p in &mut two.ports {
        let Device::Vdev { spec } = &mut p.device else {
            panic!("lab ports are vdevs");
        };
        assert!(spec.ends_with(",qpairs=2"), "{spec}");
        *spec = spec.replace(",qpairs=2", ",qpairs=1");
    }
    assert_eq!(one, two);
}

#[test]
fn dataplane_values_and_limits() {
    let dp = |body: &str| format!("{MINIMAL}dataplane: {{ {body} }}\n");
    let c = Config::from_yaml_str(&dp(
        "idle_sleep_us: 10000, idle_polls: 1000000, handoff_ring: 65536",
    ))
    .unwrap();
    assert_eq!(
        c.dataplane,
        DataplaneCfg {
            idle_sleep: Duration::from_millis(10),
            idle_polls: 1_000_000,
            handoff_ring: 65536,
            inject_panic: None,
        }
    );
    let c = Config::from_yaml_str(&dp("idle_polls: 1, handoff_ring: 64")).unwrap();
    assert_eq!((c.dataplane.idle_polls, c.dataplane.handoff_ring), (1, 64));
    assert_eq!(
        c.dataplane.idle_sleep,
        Duration::ZERO,
        "sibling keeps its default"
    );

    rejects(
        &dp("idle_sleep_us: 10001"),
        "dataplane.idle_sleep_us",
        "10001 us is more than 10000 us",
    );
    rejects(
        &dp("idle_polls: 0"),
        "dataplane.idle_polls",
        "0 is outside 1..=1000000",
    );
    rejects(
        &dp("idle_polls: 1000001"),
        "dataplane.idle_polls",
        "outside 1..=1000000",
    );
    for bad in ["0", "32", "1000", "131072"] {
        rejects(
            &dp(&format!("handoff_ring: {bad}")),
            "dataplane.handoff_ring",
            &format!("{bad} must be a power of two in 64..=65536"),
        );
    }
    rejects(
        &dp("idle_sleep_us: -1"),
        "dataplane.idle_sleep_us",
        "invalid type: integer `-1`, expected u32",
    );
    rejects(
        &dp("idle_sleep: 50"),
        "dataplane.idle_sleep",
        "unknown field `idle_sleep`",
    );
}

/// The testing aid that makes a worker panic names a worker that exists, and both its fields.
#[test]
fn inject_panic_names_an_existing_worker() {
    let dp = |body: &str| format!("{MINIMAL}dataplane: {{ inject_panic: {{ {body} }} }}\n");
    let c = Config::from_yaml_str(&dp("worker: 0, after_ms: 1500")).unwrap();
    assert_eq!(
        c.dataplane.inject_panic,
        Some(InjectPanic {
            worker: 0,
            after: Duration::from_millis(1500)
        })
    );
    assert_eq!(
        Config::from_yaml_str(MINIMAL)
            .unwrap()
            .dataplane
            .inject_panic,
        None,
        "off unless asked for"
    );
    // MINIMAL runs one worker.
    rejects(
        &dp("worker: 1, after_ms: 10"),
        "dataplane.inject_panic.worker",
        "1 is not a worker (workers are numbered 0..1)",
    );
    rejects(
        &dp("worker: 0"),
        "dataplane.inject_panic.after_ms",
        "missing field `after_ms`",
    );
}

/// `MINIMAL` with `entries` as the outside port's `neighbours` list.
fn with_neighbours(entries: &str) -> String {
    edit(
        "    gateway: 192.0.2.2\n",
        &format!("    gateway: 192.0.2.2\n    neighbours:\n{entries}"),
    )
}

#[test]
fn static_neighbours_parse() {
    let cfg = Config::from_yaml_str(&with_neighbours(
        "      - { ip: 192.0.2.2, mac: \"02:AA:bb:cc:dd:01\" }\n      - { ip: 192.0.2.3, mac: \"02-00-00-00-00-02\" }\n",
    ))
    .unwrap();
    let n = &cfg.outside_port().neighbours;
    assert_eq!(
        *n,
        vec![
            // The gateway itself may be pinned: that is the upstream-router use.
            StaticNeighbour {
                ip: ip("192.0.2.2"),
                mac: [2, 0xaa, 0xbb, 0xcc, 0xdd, 1]
            },
            StaticNeighbour {
                ip: ip("192.0.2.3"),
                mac: [2, 0, 0, 0, 0, 2]
            },
        ]
    );
    assert!(cfg.inside_port().neighbours.is_empty());
    // Universally administered unicast MACs (first octet even) are fine too.
    let c = Config::from_yaml_str(&with_neighbours(
        "      - { ip: 192.0.2.9, mac: \"00:1b:21:3a:4f:60\" }\n",
    ))
    .unwrap();
    assert_eq!(
        c.outside_port().neighbours[0].mac,
        [0, 0x1b, 0x21, 0x3a, 0x4f, 0x60]
    );
}

#[test]
fn static_neighbour_ip_must_be_a_host_on_the_link() {
    let one = |ip: &str| {
        with_neighbours(&format!(
            "      - {{ ip: {ip}, mac: \"02:00:00:00:00:01\" }}\n"
        ))
    };
    rejects(
        &one("10.0.0.1"),
        "ports[1].neighbours[0].ip",
        "10.0.0.1 is not inside the port's subnet 192.0.2.0/24",
    );
    rejects(
        &one("192.0.2.1"),
        "ports[1].neighbours[0].ip",
        "own address",
    );
    rejects(
        &one("192.0.2.0"),
        "ports[1].neighbours[0].ip",
        "network or broadcast address of 192.0.2.0/24",
    );
    rejects(
        &one("192.0.2.255"),
        "ports[1].neighbours[0].ip",
        "network or broadcast address",
    );
    rejects(
        &one("192.0.2.300"),
        "ports[1].neighbours[0].ip",
        "invalid IPv4 address `192.0.2.300`",
    );
    rejects(
        &with_neighbours(
            "      - { ip: 192.0.2.9, mac: \"02:00:00:00:00:01\" }\n      - { ip: 192.0.2.9, mac: \"02:00:00:00:00:02\" }\n",
        ),
        "ports[1].neighbours[1].ip",
        "192.0.2.9 is listed twice",
    );
    // The same neighbour on both ports is impossible anyway (subnets do not overlap), and the
    // inside port is checked the same way.
    rejects(
        &edit(
            "    address: 100.64.0.1/24\n",
            "    address: 100.64.0.1/24\n    neighbours: [{ ip: 192.0.2.9, mac: \"02:00:00:00:00:01\" }]\n",
        ),
        "ports[0].neighbours[0].ip",
        "not inside the port's subnet 100.64.0.0/24",
    );
}

#[test]
fn static_neighbours_on_point_to_point_links() {
    // RFC 3021: on a /31 the peer is the other address, including the "network" one.
    let yaml = edit("192.0.2.1/24", "192.0.2.1/31")
        .replace("gateway: 192.0.2.2", "gateway: 192.0.2.0")
        .replace(
            "    gateway: 192.0.2.0\n",
            "    gateway: 192.0.2.0\n    neighbours: [{ ip: 192.0.2.0, mac: \"02:00:00:00:00:01\" }]\n",
        );
    let c = Config::from_yaml_str(&yaml).unwrap();
    assert_eq!(c.outside_port().neighbours[0].ip, ip("192.0.2.0"));
}

#[test]
fn static_neighbour_mac_rules() {
    let one =
        |mac: &str| with_neighbours(&format!("      - {{ ip: 192.0.2.9, mac: \"{mac}\" }}\n"));
    rejects(
        &one("01:00:5e:00:00:01"),
        "ports[1].neighbours[0].mac",
        "01:00:5e:00:00:01 is a group (multicast or broadcast) address",
    );
    rejects(
        &one("FF-FF-FF-FF-FF-FF"),
        "ports[1].neighbours[0].mac",
        "unicast",
    );
    rejects(
        &one("00:00:00:00:00:00"),
        "ports[1].neighbours[0].mac",
        "all-zero",
    );
    for bad in [
        "02:00:00:00:01",
        "02:00:00:00:00:01:02",
        "02:00-00:00:00:01",
        "02:00:00:00:00:0x",
        "+2:00:00:00:00:01",
    ] {
        let err = rejects(
            &one(bad),
            "ports[1].neighbours[0].mac",
            &format!("invalid MAC address `{bad}`; expected six hex octets"),
        );
        assert!(
            matches!(
                err,
                ConfigError::Yaml {
                    location: Some(_),
                    ..
                }
            ),
            "a malformed MAC is a parse error with a position: {err:?}"
        );
    }
    rejects(
        &with_neighbours("      - { ip: 192.0.2.9 }\n"),
        "ports[1].neighbours[0].mac",
        "missing field `mac`",
    );
    rejects(
        &with_neighbours("      - { ip: 192.0.2.9, mac: \"02:00:00:00:00:01\", static: true }\n"),
        "ports[1].neighbours[0].static",
        "unknown field `static`",
    );
}

#[test]
fn pool_may_not_contain_a_static_neighbour() {
    let yaml = with_neighbours("      - { ip: 192.0.2.15, mac: \"02:00:00:00:00:01\" }\n")
        .replace("[\"203.0.113.0/29\"]", "[\"192.0.2.10-192.0.2.20\"]");
    rejects(
        &yaml,
        "pools[0].addresses[0]",
        "contains 192.0.2.15, the neighbours[0].ip of ports[1]",
    );
}

#[test]
fn config_md_dnat_example_is_the_tested_one() {
    // The rule in the destination NAT section is `DNAT_EXAMPLE`, which the tests parse.
    let section = CONFIG_MD
        .split("\n## Destination NAT")
        .nth(1)
        .expect("docs/CONFIG.md has a `## Destination NAT` section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section holds a ```yaml block");
    let rules: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("- name:"))
        .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l).trim_end()))
        .collect();
    assert_eq!(rules.trim(), DNAT_EXAMPLE.trim());
}

#[test]
fn config_md_example_is_valid() {
    // The example in the reference must keep up with the schema.
    let section = CONFIG_MD
        .split("\n## Complete example\n")
        .nth(1)
        .expect("docs/CONFIG.md has a `## Complete example` section");
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the section holds a ```yaml block");
    let c = Config::from_yaml_str(yaml).unwrap();
    assert!(!c.outside_port().neighbours.is_empty());
    assert!(!c.dnat.is_empty());
    assert_ne!(c.dataplane, DataplaneCfg::default());
}

#[test]
fn carrier_grade_nat_options_parse_with_careful_defaults() {
    let cfg = Config::from_yaml_str(MINIMAL).unwrap();
    assert_eq!(cfg.pools[0].filtering, Filtering::EndpointIndependent);
    assert_eq!(cfg.pools[0].allocation, Allocation::Random);
    assert_eq!(cfg.nat.hold_down, Duration::from_secs(120));
    assert!(!cfg.nat.udp_inbound_refresh);
    assert_eq!(cfg.nat.limits, Limits::default());
    assert!(cfg.exclusions.is_empty());

    let y = edit(
        "    addresses: [\"203.0.113.0/29\"]\n",
        "    addresses: [\"203.0.113.0/29\"]\n    filtering: address-and-port-dependent\n    allocation: { mode: blocks, block_size: 256, max_blocks: 4 }\n",
    );
    let y = format!(
        "{y}exclusions:\n  - {{ destination: 198.18.0.0/15 }}\n  - {{ destination: 10.0.0.0/8, source: 100.64.1.0/24 }}\nnat:\n  hold_down: 0\n  udp_inbound_refresh: true\n  limits: {{ max_sessions_per_subscriber: 100, max_ports_per_subscriber: 0 }}\n"
    );
    let cfg = Config::from_yaml_str(&y).unwrap();
    assert_eq!(cfg.pools[0].filtering, Filtering::AddressAndPortDependent);
    assert_eq!(
        cfg.pools[0].allocation,
        Allocation::Blocks {
            block_size: 256,
            max_blocks: 4
        }
    );
    assert_eq!(cfg.exclusions.len(), 2);
    assert_eq!(
        cfg.exclusions[1].source,
        Some("100.64.1.0/24".parse().unwrap())
    );
    assert_eq!(cfg.nat.hold_down, Duration::ZERO);
    assert!(cfg.nat.udp_inbound_refresh);
    assert_eq!(cfg.nat.limits.max_sessions_per_subscriber, 100);
}

#[test]
fn carrier_grade_nat_options_are_validated_by_field() {
    let pool_with = |extra: &str| {
        edit(
            "    addresses: [\"203.0.113.0/29\"]\n",
            &format!("    addresses: [\"203.0.113.0/29\"]\n{extra}"),
        )
    };
    rejects(
        &pool_with("    allocation: { mode: blocks, block_size: 100 }\n"),
        "pools[0].allocation.block_size",
        "multiple of 64",
    );
    rejects(
        &pool_with("    allocation: { mode: blocks }\n"),
        "pools[0].allocation.block_size",
        "needs a block_size",
    );
    rejects(
        &pool_with("    allocation: { mode: blocks, block_size: 64, max_blocks: 0 }\n"),
        "pools[0].allocation.max_blocks",
        "at least 1",
    );
    rejects(
        &pool_with("    allocation: { mode: random, block_size: 64 }\n"),
        "pools[0].allocation.block_size",
        "does not apply",
    );
    rejects(
        &pool_with("    allocation: { mode: deterministic }\n"),
        "pools[0].allocation.inside",
        "needs the inside prefix",
    );
    rejects(
        &pool_with(
            "    allocation: { mode: deterministic, inside: 100.64.0.0/24, ports_per_subscriber: 100 }\n",
        ),
        "pools[0].allocation.ports_per_subscriber",
        "multiple of 64",
    );
    // The SNAT rule to a deterministic pool must lie within its inside prefix.
    let cfg = Config::from_yaml_str(
        &pool_with("    allocation: { mode: deterministic, inside: 100.64.0.0/24, ports_per_subscriber: 256 }\n")
            .replace("  - match: 100.64.0.0/10\n", "  - match: 100.64.0.0/24\n"),
    )
    .unwrap();
    assert_eq!(
        cfg.pools[0].allocation,
        Allocation::Deterministic {
            inside: "100.64.0.0/24".parse().unwrap(),
            ports_per_subscriber: 256
        }
    );
    assert!(Config::from_yaml_str(&pool_with("    filtering: sometimes\n")).is_err());
    rejects(
        &format!("{MINIMAL}exclusions:\n  - {{ destination: 10.0.0.1/8 }}\n"),
        "exclusions[0].destination",
        "host bits",
    );
    rejects(
        &format!("{MINIMAL}nat: {{ max_mappings: 5 }}\n"),
        "nat.max_mappings",
        "outside",
    );
}

const LAB_APDF: &str = include_str!("../../../config/lab-apdf.yaml");

#[test]
fn apdf_lab_differs_from_the_lab_only_in_filtering() {
    let mut apdf = Config::from_yaml_str(LAB_APDF).unwrap();
    let lab = Config::from_yaml_str(LAB).unwrap();
    assert_eq!(apdf.pools[0].filtering, Filtering::AddressAndPortDependent);
    apdf.pools[0].filtering = Filtering::EndpointIndependent;
    apdf.eal.file_prefix = lab.eal.file_prefix.clone();
    // The destination NAT rules are the standard lab's (its end-to-end cases); the filtering lab
    // may leave them out.
    apdf.dnat = lab.dnat.clone();
    assert_eq!(apdf, lab);
}

#[test]
fn masquerade_pools_use_the_outside_address() {
    let c = Config::from_yaml_str(&edit(
        r#"addresses: ["203.0.113.0/29"]"#,
        "masquerade: true",
    ))
    .unwrap();
    let p = &c.pools[0];
    assert!(p.masquerade);
    assert_eq!(
        p.ranges,
        vec![(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 1))]
    );
    // Both at once is ambiguous.
    rejects(
        &edit(
            r#"addresses: ["203.0.113.0/29"]"#,
            "masquerade: true\n    addresses: [\"203.0.113.0/29\"]",
        ),
        "pools[0].addresses",
        "must be empty with masquerade",
    );
    // Neither says nothing.
    rejects(
        &edit(r#"addresses: ["203.0.113.0/29"]"#, "ports: \"1024-65535\""),
        "pools[0].addresses",
        "or set masquerade: true",
    );
    // One outside address, one masquerade pool.
    rejects(
        &edit(
            "snat:",
            "  - name: again\n    masquerade: true\n  - name: third\n    masquerade: true\nsnat:",
        ),
        "pools[2].masquerade",
        "pools[1] already masquerades",
    );
}

#[test]
fn refused_flows_are_silent_unless_icmp_is_asked_for() {
    assert!(
        !Config::from_yaml_str(MINIMAL)
            .unwrap()
            .nat
            .limits
            .icmp_unreachable
    );
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}nat:\n  limits:\n    icmp_unreachable: true\n    max_ports_per_subscriber: 100\n"
    ))
    .unwrap();
    assert!(c.nat.limits.icmp_unreachable);
    assert_eq!(c.nat.limits.max_ports_per_subscriber, 100);
}

#[test]
fn management_tokens_are_absolute_paths() {
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}mgmt:\n  tokens:\n    read_write: /etc/cgnat/admin.token\n"
    ))
    .unwrap();
    assert_eq!(
        c.mgmt.read_write_token.as_deref(),
        Some(std::path::Path::new("/etc/cgnat/admin.token"))
    );
    assert_eq!(c.mgmt.read_only_token, None);
    rejects(
        &format!("{MINIMAL}mgmt:\n  tokens:\n    read_only: monitor.token\n"),
        "mgmt.tokens.read_only",
        "absolute path",
    );
    assert_eq!(
        Config::from_yaml_str(MINIMAL)
            .unwrap()
            .mgmt
            .read_write_token,
        None
    );
}

#[test]
fn management_tls_takes_a_cert_and_key_and_optionally_a_client_ca() {
    assert_eq!(Config::from_yaml_str(MINIMAL).unwrap().mgmt.tls, None);
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}mgmt:\n  tls:\n    cert: /etc/cgnat/mgmt.crt\n    key: /etc/cgnat/mgmt.key\n"
    ))
    .unwrap();
    assert_eq!(
        c.mgmt.tls,
        Some(MgmtTls {
            cert: "/etc/cgnat/mgmt.crt".into(),
            key: "/etc/cgnat/mgmt.key".into(),
            client_ca: None,
        })
    );
    let c = Config::from_yaml_str(&format!(
        "{MINIMAL}mgmt:\n  tls:\n    cert: /etc/cgnat/mgmt.pem\n    key: /etc/cgnat/mgmt.pem\n    client_ca: /etc/cgnat/operators-ca.crt\n"
    ))
    .unwrap();
    let tls = c.mgmt.tls.unwrap();
    assert_eq!(tls.cert, tls.key, "one file may hold both");
    assert_eq!(
        tls.client_ca.as_deref(),
        Some(std::path::Path::new("/etc/cgnat/operators-ca.crt"))
    );
}

#[test]
fn management_tls_names_the_missing_or_relative_field() {
    rejects(
        &format!("{MINIMAL}mgmt:\n  tls:\n    cert: /etc/cgnat/mgmt.crt\n"),
        "mgmt.tls.key",
        "is required",
    );
    let err = rejects(
        &format!("{MINIMAL}mgmt:\n  tls: {{}}\n"),
        "mgmt.tls.cert",
        "is required",
    );
    assert!(err.fields().contains(&"mgmt.tls.key"), "{err}");
    rejects(
        &format!("{MINIMAL}mgmt:\n  tls:\n    cert: mgmt.crt\n    key: /etc/cgnat/mgmt.key\n"),
        "mgmt.tls.cert",
        "absolute path",
    );
    rejects(
        &format!(
            "{MINIMAL}mgmt:\n  tls:\n    cert: /etc/cgnat/mgmt.crt\n    key: /etc/cgnat/mgmt.key\n    client_ca: ca.crt\n"
        ),
        "mgmt.tls.client_ca",
        "absolute path",
    );
    // A misspelt key is not silently ignored (client_ca left out would mean no client check).
    let err = Config::from_yaml_str(&format!(
        "{MINIMAL}mgmt:\n  tls:\n    cert: /a.crt\n    key: /a.key\n    client_cert: /ca.crt\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("client_cert") && err.contains("client_ca"),
        "{err}"
    );
}

// ---- Destination NAT (nat.dnat) ----

/// A config for destination NAT tests: an inside subnet with two routes behind it (one of them a
/// public block, for identity rules), two SNAT-capable pools and a deterministic one. Rules are
/// appended under `nat.dnat`, indented by four spaces.
const DNAT_BASE: &str = r#"
eal:
  lcores: "0-1"
ports:
  - name: inside
    role: inside
    device: { vdev: "net_af_packet0,iface=cgn-in" }
    address: 100.64.0.1/24
    routes:
      - { prefix: 10.10.0.0/16, via: 100.64.0.254 }
      - { prefix: 198.18.0.0/24, via: 100.64.0.254 }
  - name: outside
    role: outside
    device: { vdev: "net_af_packet1,iface=cgn-out" }
    address: 192.0.2.1/24
    gateway: 192.0.2.2
pools:
  - name: public
    addresses: ["203.0.113.0/29"]
  - name: lab
    addresses: ["198.51.100.0/28"]
    ports: "2000-65535"
  - name: det
    addresses: ["198.51.100.64/28"]
    allocation: { mode: deterministic, inside: 100.64.0.0/24 }
snat:
  - match: 100.64.0.0/10
    pool: public
nat:
  dnat:
"#;

/// The example rule of docs/CONFIG.md, every field given.
const DNAT_EXAMPLE: &str = r#"
    - name: forward-web
      address: 203.0.113.100
      protocol: tcp
      port: 8080
      backends:
        - address: 100.64.0.11
          port: 8000
          weight: 1
      scheduler: random
      affinity_timeout: 10800
      snat: lab
      on_backend_removal: drain
"#;

fn with_dnat(rules: &str) -> String {
    format!("{DNAT_BASE}{}", rules.trim_start_matches('\n'))
}

fn dnat_rules(rules: &str) -> Vec<nat::DnatRule> {
    match Config::from_yaml_str(&with_dnat(rules)) {
        Ok(c) => c.dnat,
        Err(e) => panic!("rejected: {e}\n{rules}"),
    }
}

fn u(s: &str) -> u32 {
    u32::from(ip(s))
}

/// A one-line port forward `name` of tcp `address`:`port` to 100.64.0.11.
fn forward(name: &str, address: &str, port: u16) -> String {
    format!(
        "    - {{ name: {name}, address: {address}, protocol: tcp, port: {port}, backends: [{{ address: 100.64.0.11 }}] }}\n"
    )
}

#[test]
fn dnat_example_parses_into_rules() {
    let rules = dnat_rules(DNAT_EXAMPLE);
    assert_eq!(
        rules,
        vec![nat::DnatRule {
            name: "forward-web".into(),
            addr: u("203.0.113.100"),
            proto: Some(wire::ip_proto::TCP),
            port: 8080,
            backends: vec![nat::Backend {
                addr: u("100.64.0.11"),
                port: 8000,
                weight: 1,
            }],
            scheduler: nat::Scheduler::WeightedRandom,
            affinity_s: 10800,
            snat_pool: Some(1),
            on_removal: nat::OnRemoval::Drain,
        }]
    );
    assert!(Config::from_yaml_str(MINIMAL).unwrap().dnat.is_empty());
}

#[test]
fn dnat_kinds_and_defaults() {
    let rules = dnat_rules(
        r#"
    # A service: defaults everywhere, backends behind a route, one draining.
    - name: svc.web_1
      address: 203.0.113.100
      protocol: tcp
      port: 443
      backends:
        - { address: 10.10.0.5 }
        - { address: 10.10.0.6, weight: 3 }
        - { address: 10.10.0.7, weight: 0 }
    # The same address and port over UDP is another rule.
    - name: QUIC
      address: 203.0.113.100
      protocol: udp
      port: 443
      backends: [{ address: 100.64.0.12, port: 8443 }]
      scheduler: maglev
      on_backend_removal: cut
    # Port forwarding on the outside interface address (no masquerade pool here).
    - name: ssh
      address: 192.0.2.1
      protocol: tcp
      port: 22
      backends: [{ address: 100.64.0.10 }]
      scheduler: round_robin
    # On a pool address, below the pool's port range.
    - name: pool-http
      address: 203.0.113.1
      protocol: tcp
      port: 80
      backends: [{ address: 100.64.0.10 }]
    # 1:1 and identity.
    - name: one-to-one
      address: 203.0.113.200
      backends: [{ address: 100.64.0.20 }]
    - name: identity
      address: 198.18.0.5
      backends: [{ address: 198.18.0.5 }]
      on_backend_removal: cut
"#,
    );
    assert_eq!(rules.len(), 6);
    let svc = &rules[0];
    assert_eq!(svc.name, "svc.web_1");
    // A backend without a port gets the rule's; weights default to 1.
    assert_eq!(
        svc.backends,
        vec![
            nat::Backend {
                addr: u("10.10.0.5"),
                port: 443,
                weight: 1
            },
            nat::Backend {
                addr: u("10.10.0.6"),
                port: 443,
                weight: 3
            },
            nat::Backend {
                addr: u("10.10.0.7"),
                port: 443,
                weight: 0
            },
        ]
    );
    assert_eq!(svc.total_weight(), 4);
    assert_eq!(
        (svc.scheduler, svc.affinity_s, svc.snat_pool, svc.on_removal),
        (
            nat::Scheduler::WeightedRandom,
            0,
            None,
            nat::OnRemoval::Drain
        )
    );
    assert_eq!(rules[1].proto, Some(wire::ip_proto::UDP));
    assert_eq!(rules[1].backends[0].port, 8443);
    assert_eq!(rules[1].scheduler, nat::Scheduler::Maglev);
    assert_eq!(rules[1].on_removal, nat::OnRemoval::Cut);
    assert_eq!(rules[2].scheduler, nat::Scheduler::RoundRobin);
    assert_eq!(rules[2].addr, u("192.0.2.1"));
    assert_eq!(rules[3].port, 80);
    let one = &rules[4];
    assert!(one.is_address_only() && !one.is_identity());
    assert_eq!((one.proto, one.port), (None, 0));
    assert_eq!(
        one.backends,
        vec![nat::Backend {
            addr: u("100.64.0.20"),
            port: 0,
            weight: 1
        }]
    );
    assert!(rules[5].is_identity());
    assert_eq!(rules[5].on_removal, nat::OnRemoval::Cut);
}

#[test]
fn dnat_rules_against_each_other() {
    // Names are unique.
    rejects(
        &with_dnat(&format!(
            "{}{}",
            forward("a", "203.0.113.100", 80),
            forward("a", "203.0.113.100", 81)
        )),
        "nat.dnat[1].name",
        "`a` is already used by nat.dnat[0]",
    );
    // One rule per address, protocol and port.
    rejects(
        &with_dnat(&format!(
            "{}{}",
            forward("a", "203.0.113.100", 80),
            forward("b", "203.0.113.100", 80)
        )),
        "nat.dnat[1].port",
        "rule `b`: tcp 203.0.113.100:80 is already forwarded by nat.dnat[0] (`a`)",
    );
    // An address-only rule takes every port of its address, whichever comes first.
    let one_to_one =
        "    - { name: static, address: 203.0.113.100, backends: [{ address: 100.64.0.20 }] }\n";
    rejects(
        &with_dnat(&format!(
            "{}{one_to_one}",
            forward("a", "203.0.113.100", 80)
        )),
        "nat.dnat[1].address",
        "rule `static`: an address-only rule takes every protocol and port of 203.0.113.100, which nat.dnat[0] (`a`) also uses",
    );
    rejects(
        &with_dnat(&format!(
            "{one_to_one}{}",
            forward("a", "203.0.113.100", 80)
        )),
        "nat.dnat[1].address",
        "rule `a`: 203.0.113.100 belongs to address-only rule nat.dnat[0] (`static`)",
    );
    // A host is the 1:1 backend of one address: its own traffic leaves under it.
    rejects(
        &with_dnat(&format!(
            "{one_to_one}    - {{ name: again, address: 203.0.113.101, backends: [{{ address: 100.64.0.20 }}] }}\n"
        )),
        "nat.dnat[1].backends[0].address",
        "rule `again`: 100.64.0.20 is already the backend of address-only rule nat.dnat[0] (`static`)",
    );
}

#[test]
fn dnat_addresses() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "100.64.0.50",
            "nat.dnat[0].address",
            "rule `r`: 100.64.0.50 is on the inside (the subnet 100.64.0.0/24 of inside port ports[0] (`inside`))",
        ),
        (
            "10.10.1.1",
            "nat.dnat[0].address",
            "rule `r`: 10.10.1.1 is on the inside (ports[0].routes[0] (10.10.0.0/16, out of inside port `inside`))",
        ),
        (
            "192.0.2.2",
            "nat.dnat[0].address",
            "rule `r`: 192.0.2.2 is the gateway of ports[1] (`outside`), not an address of ours",
        ),
        (
            "224.0.0.1",
            "nat.dnat[0].address",
            "rule `r`: 224.0.0.1 is multicast",
        ),
        (
            "203.0.113.1",
            "nat.dnat[0].port",
            "rule `r`: 8080 is in the port range 1024-65535 that pool `public` (pools[0]) hands out on 203.0.113.1",
        ),
    ];
    for (address, field, needle) in cases {
        rejects(&with_dnat(&forward("r", address, 8080)), field, needle);
    }
    // The second pool's range starts at 2000: port 1999 is free there, 2000 is not.
    dnat_rules(&forward("r", "198.51.100.3", 1999));
    rejects(
        &with_dnat(&forward("r", "198.51.100.3", 2000)),
        "nat.dnat[0].port",
        "2000 is in the port range 2000-65535 that pool `lab`",
    );
    // Address-only rules may use no pool address at all, nor the outside interface address.
    rejects(
        &with_dnat(
            "    - { name: r, address: 203.0.113.3, backends: [{ address: 100.64.0.20 }] }\n",
        ),
        "nat.dnat[0].address",
        "rule `r`: 203.0.113.3 is an address of pool `public` (pools[0]); an address-only rule takes every port",
    );
    rejects(
        &with_dnat("    - { name: r, address: 192.0.2.1, backends: [{ address: 100.64.0.20 }] }\n"),
        "nat.dnat[0].address",
        "rule `r`: 192.0.2.1 is the outside port's own address",
    );
    // With a masquerade pool the interface address is a pool address: ports outside its range only.
    let masq = with_dnat(&forward("r", "192.0.2.1", 8080)).replace(
        "snat:\n",
        "  - name: masq\n    masquerade: true\n    ports: \"1024-65535\"\nsnat:\n",
    );
    rejects(
        &masq,
        "nat.dnat[0].port",
        "rule `r`: 8080 is in the port range 1024-65535 that masquerade pool `masq` (pools[3], the outside port's own address) hands out on 192.0.2.1",
    );
    Config::from_yaml_str(&masq.replace("port: 8080", "port: 22")).unwrap();
}

#[test]
fn dnat_protocol_and_port() {
    let base =
        "    - { name: r, address: 203.0.113.100, PP backends: [{ address: 100.64.0.11 }] }\n";
    for (pp, field, needle) in [
        (
            "protocol: tcp,",
            "nat.dnat[0].port",
            "rule `r`: required with `protocol`",
        ),
        (
            "port: 80,",
            "nat.dnat[0].protocol",
            "rule `r`: required with `port`: tcp or udp",
        ),
        (
            "protocol: udp, port: 0,",
            "nat.dnat[0].port",
            "rule `r`: 0 is outside 1..=65535",
        ),
        (
            "protocol: udp, port: 70000,",
            "nat.dnat[0].port",
            "rule `r`: 70000 is outside 1..=65535",
        ),
        (
            "protocol: icmp, port: 1,",
            "nat.dnat[0].protocol",
            "unknown variant `icmp`",
        ),
        (
            "protocol: tcp, port: 80, scheduler: wrr,",
            "nat.dnat[0].scheduler",
            "unknown variant `wrr`",
        ),
        (
            "protocol: tcp, port: 80, ports: 80,",
            "nat.dnat[0].ports",
            "unknown field `ports`",
        ),
    ] {
        rejects(&with_dnat(&base.replace("PP", pp)), field, needle);
    }
}

#[test]
fn dnat_names() {
    for bad in ["\"web server\"", "\"\"", "web/1", &"x".repeat(65)] {
        rejects(
            &with_dnat(&forward(bad, "203.0.113.100", 80)),
            "nat.dnat[0].name",
            "must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`",
        );
    }
    dnat_rules(&forward(&"x".repeat(64), "203.0.113.100", 80));
}

#[test]
fn dnat_backends() {
    let rule = |backends: &str, extra: &str| {
        with_dnat(&format!(
            "    - {{ name: web, address: 203.0.113.100, protocol: tcp, port: 80, backends: [{backends}]{extra} }}\n"
        ))
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            "nat.dnat[0].backends",
            "rule `web`: at least one backend is required",
        ),
        (
            "{ address: 192.0.2.50 }",
            "nat.dnat[0].backends[0].address",
            "rule `web`: 192.0.2.50 is not on the inside: it is in the subnet 192.0.2.0/24 of outside port ports[1] (`outside`)",
        ),
        (
            "{ address: 100.64.0.11 }, { address: 172.16.0.1 }",
            "nat.dnat[0].backends[1].address",
            "rule `web`: 172.16.0.1 is not on the inside: neither the subnet nor a route of inside port ports[0] (`inside`) covers it (100.64.0.0/24, 10.10.0.0/16, 198.18.0.0/24)",
        ),
        (
            "{ address: 203.0.113.2 }",
            "nat.dnat[0].backends[0].address",
            "rule `web`: 203.0.113.2 is an address of pool `public` (pools[0])",
        ),
        (
            "{ address: 100.64.0.1 }",
            "nat.dnat[0].backends[0].address",
            "rule `web`: 100.64.0.1 is the address of ports[0] (`inside`)",
        ),
        (
            "{ address: 100.64.0.255 }",
            "nat.dnat[0].backends[0].address",
            "rule `web`: 100.64.0.255 is the network or broadcast address of 100.64.0.0/24",
        ),
        (
            "{ address: 127.0.0.1 }",
            "nat.dnat[0].backends[0].address",
            "rule `web`: 127.0.0.1 is loopback",
        ),
        (
            "{ address: 100.64.0.11 }, { address: 100.64.0.11, port: 80 }",
            "nat.dnat[0].backends[1]",
            "rule `web`: 100.64.0.11:80 is already backends[0]",
        ),
        (
            "{ address: 100.64.0.11, weight: 0 }, { address: 100.64.0.12, weight: 0 }",
            "nat.dnat[0].backends",
            "rule `web`: zero total weight",
        ),
        (
            "{ address: 100.64.0.11, weight: 1000001 }",
            "nat.dnat[0].backends[0].weight",
            "rule `web`: 1000001 is more than 1000000",
        ),
        (
            "{ address: 100.64.0.11, port: 0 }",
            "nat.dnat[0].backends[0].port",
            "rule `web`: 0 is outside 1..=65535",
        ),
    ];
    for (backends, field, needle) in cases {
        rejects(&rule(backends, ""), field, needle);
    }
    // Same address, other port: two backends.
    Config::from_yaml_str(&rule(
        "{ address: 100.64.0.11 }, { address: 100.64.0.11, port: 81, weight: 1000000 }",
        "",
    ))
    .unwrap();

    let many = |n: usize| -> String {
        (0..n)
            .map(|k| format!("{{ address: 10.10.{}.{} }}", k / 256, k % 256))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Config::from_yaml_str(&rule(&many(1024), "")).unwrap();
    rejects(
        &rule(&many(1025), ""),
        "nat.dnat[0].backends",
        "rule `web`: 1025 backends, at most 1024 are supported",
    );

    // Pools for full NAT.
    rejects(
        &rule("{ address: 100.64.0.11 }", ", snat: nope"),
        "nat.dnat[0].snat",
        "rule `web`: no pool named `nope` (pools: public, lab, det)",
    );
    rejects(
        &rule("{ address: 100.64.0.11 }", ", snat: det"),
        "nat.dnat[0].snat",
        "rule `web`: pool `det` (pools[2]) is deterministic",
    );
    for (t, ok) in [(0, false), (1, true), (86400, true), (86401, false)] {
        let yaml = rule(
            "{ address: 100.64.0.11 }",
            &format!(", affinity_timeout: {t}"),
        );
        if ok {
            assert_eq!(dnat_rules_of(&yaml)[0].affinity_s, t);
        } else {
            rejects(
                &yaml,
                "nat.dnat[0].affinity_timeout",
                &format!("rule `web`: {t} s is outside 1..=86400 seconds"),
            );
        }
    }
}

fn dnat_rules_of(yaml: &str) -> Vec<nat::DnatRule> {
    Config::from_yaml_str(yaml).unwrap().dnat
}

#[test]
fn dnat_address_only_rules() {
    let rule = |rest: &str| {
        with_dnat(&format!(
            "    - {{ name: static, address: 203.0.113.200, {rest} }}\n"
        ))
    };
    let one = "backends: [{ address: 100.64.0.20 }]";
    rejects(
        &rule("backends: [{ address: 100.64.0.20 }, { address: 100.64.0.21 }]"),
        "nat.dnat[0].backends",
        "rule `static`: an address-only rule (no protocol and port) maps to exactly one backend, not 2",
    );
    rejects(
        &rule("backends: [{ address: 100.64.0.20, port: 80 }]"),
        "nat.dnat[0].backends[0].port",
        "rule `static`: an address-only rule keeps every port",
    );
    for (field, value) in [
        ("scheduler", "maglev"),
        ("affinity_timeout", "60"),
        ("snat", "lab"),
    ] {
        rejects(
            &rule(&format!("{one}, {field}: {value}")),
            &format!("nat.dnat[0].{field}"),
            "rule `static`: does not apply to an address-only rule",
        );
    }
    rejects(
        &rule("backends: [{ address: 100.64.0.20, weight: 0 }]"),
        "nat.dnat[0].backends",
        "zero total weight",
    );
    // An identity rule's address is an inside host's own: it must be on the inside, as a backend.
    rejects(
        &with_dnat(
            "    - { name: id, address: 203.0.113.200, backends: [{ address: 203.0.113.200 }] }\n",
        ),
        "nat.dnat[0].backends[0].address",
        "rule `id`: 203.0.113.200 is not on the inside",
    );
}

#[test]
fn dnat_rule_count_limits() {
    let rules: String = (1..=4097)
        .map(|p| forward(&format!("r{p}"), "203.0.113.100", p))
        .collect();
    let err = rejects(&with_dnat(&rules), "nat.dnat", "4097 rules, at most 4096");
    assert_eq!(err.fields(), vec!["nat.dnat"]);
    let backends: String = (0..1024)
        .map(|k| format!("{{ address: 10.10.{}.{} }}", k / 256, k % 256))
        .collect::<Vec<_>>()
        .join(", ");
    let rules: String = (1..=17)
        .map(|p| {
            format!(
                "    - {{ name: r{p}, address: 203.0.113.100, protocol: tcp, port: {p}, backends: [{backends}] }}\n"
            )
        })
        .collect();
    rejects(
        &with_dnat(&rules),
        "nat.dnat",
        "17408 backends over all rules, at most 16384",
    );
}

#[test]
fn dnat_errors_are_reported_together() {
    let yaml = with_dnat(&format!(
        "{}{}",
        forward("a", "100.64.0.50", 80),
        "    - { name: b, address: 203.0.113.100, protocol: tcp, port: 80, backends: [{ address: 192.0.2.9 }], snat: det }\n"
    ));
    let err = Config::from_yaml_str(&yaml).unwrap_err();
    assert_eq!(
        err.fields(),
        vec![
            "nat.dnat[0].address",
            "nat.dnat[1].backends[0].address",
            "nat.dnat[1].snat"
        ]
    );
    let msg = err.to_string();
    assert!(
        msg.contains("nat.dnat[1].backends[0].address: rule `b`: 192.0.2.9 is not on the inside"),
        "{msg}"
    );
}

#[test]
fn reload_policy_takes_only_the_translation_policy() {
    let old_text = with_dnat(DNAT_EXAMPLE);
    let old = Config::from_yaml_str(&old_text).unwrap();
    // The reloaded policy, as the running configuration would be with it.
    let reloaded = |text: &str| -> Result<Config, ConfigError> {
        reload_policy(&old, text)?.apply_to(&old_text)
    };
    // Rules added, changed and removed.
    let text = with_dnat(&format!(
        "{}{}",
        DNAT_EXAMPLE.replace("weight: 1", "weight: 5"),
        forward("ssh", "203.0.113.100", 22)
    ));
    let rules = reloaded(&text).unwrap().dnat;
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].backends[0].weight, 5);
    assert_eq!(rules[1].name, "ssh");
    assert_eq!(rules, Config::from_yaml_str(&text).unwrap().dnat);
    // MINIMAL has other ports (no routes): not reloadable.
    assert_eq!(
        reload_policy(&old, MINIMAL).unwrap_err().fields(),
        vec!["ports"]
    );
    let none = DNAT_BASE.replace("nat:\n  dnat:\n", "");
    assert_eq!(reloaded(&none).unwrap().dnat, vec![]);

    // The rest of the policy reloads too: a pool grows.
    let pool = text.replace("198.51.100.0/28", "198.51.100.0/27");
    let grown = reloaded(&pool).unwrap();
    assert_eq!(grown, Config::from_yaml_str(&pool).unwrap());
    assert_eq!(grown.pools[1].len(), 32);

    // Anything else: refused, naming each section that differs.
    let route = text.replace("10.10.0.0/16", "10.11.0.0/16");
    let err = reload_policy(&old, &route).unwrap_err();
    assert_eq!(err.fields(), vec!["ports"]);
    assert!(
        err.to_string().starts_with(
            "ports: differs from the running configuration; only the translation policy (pools, \
             snat, exclusions, nat.timeouts, nat.limits, nat.hold_down, nat.udp_inbound_refresh, \
             nat.dnat) can be reloaded, restart cgnatd"
        ),
        "{err}"
    );
    let two = route.replace("nat:\n  dnat:\n", "nat:\n  max_sessions: 4096\n  dnat:\n");
    assert_eq!(
        reload_policy(&old, &two).unwrap_err().fields(),
        vec!["ports", "nat.max_sessions"]
    );
    // A new file that does not validate is reported as such.
    let bad = text.replace("snat: lab", "snat: det");
    let err = reload_policy(&old, &bad).unwrap_err();
    assert_eq!(err.fields(), vec!["nat.dnat[0].snat"]);

    let dir = std::env::temp_dir().join(format!("cgnat-reload-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cgnat.yaml");
    std::fs::write(&path, &route).unwrap();
    let msg = reload_policy_file(&old, &path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}: ports: ", path.display())),
        "{msg}"
    );
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        reload_policy_file(&old, &path).unwrap(),
        reload_policy(&old, &text).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pool_beyond_the_address_limit_is_refused_before_anything_is_built() {
    // A typing error (/2 for /22) would mean 2^30 addresses and terabytes of port bitmaps.
    let err = rejects(
        &edit(
            "addresses: [\"203.0.113.0/29\"]",
            "addresses: [\"128.0.0.0/2\"]",
        ),
        "pools[0].addresses[0]",
        "at most 65536",
    );
    assert_eq!(err.fields(), vec!["pools[0].addresses[0]"]);
    // A /16 is still fine.
    Config::from_yaml_str(&edit(
        "addresses: [\"203.0.113.0/29\"]",
        "addresses: [\"198.18.0.0/16\"]",
    ))
    .expect("a /16 pool");
}

#[test]
fn rule_and_exclusion_lists_have_a_size_limit() {
    let mut many = MINIMAL.to_owned();
    many.push_str("exclusions:\n");
    for i in 0..1025u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        many.push_str(&format!("  - destination: {a}/32\n"));
    }
    rejects(&many, "exclusions", "at most 1024");
    let rules: String = (0..1025u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x6440_0000 + i);
            format!("  - match: {a}/32\n    pool: public\n")
        })
        .collect();
    rejects(
        &edit(
            "snat:\n  - match: 100.64.0.0/10\n    pool: public\n",
            &format!("snat:\n{rules}"),
        ),
        "snat",
        "at most 1024",
    );
}

#[test]
fn a_rule_shadowed_by_an_earlier_one_with_a_wider_destination_is_refused() {
    let rule =
        |dst: &str| format!("  - match: 100.64.0.0/10\n    destination: {dst}\n    pool: public\n");
    let snat = |a: &str, b: &str| {
        edit(
            "snat:\n  - match: 100.64.0.0/10\n    pool: public\n",
            &format!("snat:\n{}{}", rule(a), rule(b)),
        )
    };
    rejects(
        &snat("198.51.100.0/24", "198.51.100.0/24"),
        "snat[1].match",
        "never matches",
    );
    rejects(
        &snat("198.51.0.0/16", "198.51.100.0/24"),
        "snat[1].match",
        "never matches",
    );
    // Narrower first, or disjoint: both can match.
    Config::from_yaml_str(&snat("198.51.100.0/24", "198.51.0.0/16")).expect("narrower first");
    Config::from_yaml_str(&snat("198.51.100.0/24", "203.0.113.0/24")).expect("disjoint");
}

#[test]
fn a_rule_to_a_deterministic_pool_must_stay_inside_its_prefix() {
    let yaml = edit(
        "addresses: [\"203.0.113.0/29\"]\n",
        "addresses: [\"203.0.113.0/29\"]\n    allocation: { mode: deterministic, inside: 100.64.1.0/24 }\n",
    );
    rejects(&yaml, "snat[0].match", "deterministic pool `public`");
    let inside = yaml.replace("  - match: 100.64.0.0/10\n", "  - match: 100.64.1.0/24\n");
    Config::from_yaml_str(&inside).expect("a rule within the prefix");
}

#[test]
fn a_pool_routed_on_the_inside_is_refused() {
    let yaml = edit(
        "    address: 100.64.0.1/24\n",
        "    address: 100.64.0.1/24\n    routes: [{prefix: 100.64.1.0/24, via: 100.64.0.254}]\n",
    )
    .replace(
        "addresses: [\"203.0.113.0/29\"]",
        "addresses: [\"100.64.1.0/29\"]",
    );
    rejects(&yaml, "pools[0].addresses[0]", "routed on the inside");
}
