//! End-to-end tests: real traffic through `cgnatd` in the namespace lab (scripts/lab.sh).
//!
//! One test binary with its own small runner (libtest-mimic), because the lab exists once
//! per machine: it is set up once, the tests run serially against one cgnatd, and teardown
//! (servers, cgnatd, lab) always runs, also on a failed test, a panic or Ctrl-C.
//!
//! Needs root and the release binaries (`cargo build --release --workspace`). Without root,
//! or with CGNAT_E2E=0, it fails, unless CGNAT_E2E_SKIP_OK=1 allows skipping; then every
//! test is reported as ignored.
//!
//! Environment: CGNAT_BIN_DIR (default target/release), CGNAT_PYTHON (default
//! /usr/bin/python3, which has scapy), CGNAT_MGMT (default http://127.0.0.1:50051, as in
//! config/lab.yaml), CGNAT_CONFIG (default config/lab.yaml; config/lab-2workers.yaml runs the
//! same suite on two workers), CGNAT_E2E_LOCK_WAIT (seconds to wait for another run to
//! release the machine-wide lab lock, default 900).
//!
//! cgnatd runs from a copy of the config under test (.lab/e2e/cgnatd.yaml): the destination NAT
//! cases that reload rules edit that copy, send SIGHUP, and put the original back. The copy sets
//! `mgmt.state_file` to .lab/e2e/policy-state.yaml (removed at start, so every run begins with the
//! file's policy), which the policy restart case relies on.
//!
//! The cases in `CONDITIONAL` need something only some lab configs have: short NAT timeouts
//! and a small port limit (config/lab-short.yaml), ports that pass IPv4 fragments to
//! cgnatd unchanged (config/lab-pcap.yaml), destination NAT rules (config/lab.yaml and
//! lab-2workers.yaml), or an API that the README's grpcurl examples reach as written (plaintext
//! on 127.0.0.1:50051 without a token, so not lab-short.yaml). Under any other config they are
//! reported as ignored, with the reason, never as passed; `--include-ignored` runs them anyway,
//! and then they fail naming what is missing.
#![forbid(unsafe_code)]

mod cases;
mod dnat;
mod env;
mod lock;
mod policy;
mod proc;

use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

use env::{Daemon, Paths, Servers};

/// What every test case gets: paths, the running daemon, the servers in cgn-inet.
pub struct Env {
    pub paths: Paths,
    pub daemon: Daemon,
    pub servers: Mutex<Servers>,
}

type Case = fn(&Env) -> Result<(), String>;

/// In run order. Cases that only read state come first; the one that stops cgnatd is last.
const CASES: &[(&str, Case)] = &[
    (
        "check_config_accepts_lab_yaml",
        cases::check_config_accepts_lab,
    ),
    (
        "check_config_rejects_unknown_field",
        cases::check_config_rejects_unknown_field,
    ),
    ("mgmt_health_and_stats", cases::mgmt_health),
    ("ping_nat_inside_address", cases::ping_nat_inside_address),
    ("ping_servers_through_nat", cases::ping_servers_through_nat),
    (
        "ttl_expiry_answered_with_time_exceeded",
        cases::ttl_expiry_answered_with_time_exceeded,
    ),
    (
        "traceroute_shows_every_hop",
        cases::traceroute_shows_every_hop,
    ),
    (
        "pmtu_discovery_through_nat",
        cases::pmtu_discovery_through_nat,
    ),
    ("udp_request_response", cases::udp_request_response),
    ("fragmented_udp_datagram", cases::fragmented_udp_datagram),
    ("tcp_download_8mib_sha256", cases::tcp_download_sha256),
    (
        "concurrent_tcp_connections",
        cases::concurrent_tcp_connections,
    ),
    (
        "malformed_frames_are_dropped_and_counted",
        cases::malformed_frames_are_dropped_and_counted,
    ),
    (
        "unsolicited_inbound_is_dropped",
        cases::unsolicited_inbound_is_dropped,
    ),
    (
        "inbound_filtering_follows_the_pool_mode",
        cases::inbound_filtering_follows_the_pool_mode,
    ),
    (
        "hairpin_between_subscribers",
        cases::hairpin_between_subscribers,
    ),
    (
        "masquerade_uses_the_interface_address",
        cases::masquerade_uses_the_interface_address,
    ),
    // The translation policy changed at run time (tests/e2e/policy.rs). Before the cases that cut
    // connections (dnat_backend_cut_mid_run, sessions_are_listed_and_deleted): the hosts keep
    // retransmitting into the NAT for minutes, which these cases' drop-counter checks would count.
    // Each case puts the policy back as it found it, so the SIGHUP reloads of the destination NAT
    // cases (which apply the file's whole policy) find the file's policy in force.
    (
        "policy_invalid_change_is_refused_whole",
        policy::policy_invalid_change_is_refused_whole,
    ),
    (
        "policy_new_pool_under_traffic",
        policy::policy_new_pool_under_traffic,
    ),
    (
        "policy_hundred_applies_without_loss",
        policy::policy_hundred_applies_without_loss,
    ),
    ("readme_grpcurl_examples", policy::readme_grpcurl_examples),
    // Destination NAT (tests/e2e/dnat.rs). The two that reload the config come last.
    ("dnat_port_forwarding", dnat::port_forwarding),
    (
        "dnat_service_spreads_by_weight",
        dnat::service_spreads_by_weight,
    ),
    ("dnat_round_robin_exact", dnat::round_robin_exact),
    ("dnat_maglev_spreads", dnat::maglev_spreads),
    ("dnat_affinity", dnat::affinity),
    ("dnat_full_nat", dnat::full_nat),
    ("dnat_hairpin", dnat::hairpin),
    ("dnat_static_one_to_one", dnat::static_one_to_one),
    (
        "dnat_backend_removed_mid_run",
        dnat::backend_removed_mid_run,
    ),
    ("dnat_backend_cut_mid_run", dnat::backend_cut_mid_run),
    (
        "sessions_are_listed_and_deleted",
        cases::sessions_are_listed_and_deleted,
    ),
    ("sessions_are_watched", cases::sessions_are_watched),
    (
        "management_api_requires_tokens",
        cases::management_api_requires_tokens,
    ),
    (
        "quota_exhaustion_keeps_existing_flows",
        cases::quota_exhaustion_keeps_existing_flows,
    ),
    (
        "drain_to_zero_after_timeouts",
        cases::drain_to_zero_after_timeouts,
    ),
    ("workers_share_the_load", cases::workers_share_the_load),
    // Restarts cgnatd, which empties its tables and counters: after every case that reads
    // counters accumulated over the run (workers_share_the_load) or waits for state to drain.
    (
        "policy_restart_keeps_applied_rules",
        policy::policy_restart_keeps_applied_rules,
    ),
    (
        "daemon_survives_and_stops_cleanly",
        cases::daemon_survives_and_stops_cleanly,
    ),
];

/// A check of the config under test: Err says why a case cannot run under it.
type Requirement = fn(&Path) -> Result<(), String>;

/// Cases that only some lab configs can run, with the check that tells.
const CONDITIONAL: &[(&str, Requirement)] = &[
    ("fragmented_udp_datagram", env::ports_pass_fragments),
    ("quota_exhaustion_keeps_existing_flows", env::short_timeouts),
    ("drain_to_zero_after_timeouts", env::short_timeouts),
    ("management_api_requires_tokens", env::has_tokens),
    ("dnat_port_forwarding", env::has_dnat),
    ("dnat_service_spreads_by_weight", env::has_dnat),
    ("dnat_round_robin_exact", env::has_dnat),
    ("dnat_maglev_spreads", env::has_dnat),
    ("dnat_affinity", env::has_dnat),
    ("dnat_full_nat", env::has_dnat),
    ("dnat_hairpin", env::has_dnat),
    ("dnat_static_one_to_one", env::has_dnat),
    ("dnat_backend_removed_mid_run", env::has_dnat),
    ("dnat_backend_cut_mid_run", env::has_dnat),
    ("readme_grpcurl_examples", env::plain_grpc_on_loopback),
];

/// Why the config under test cannot run case `name`, if it cannot.
fn unmet_requirement(name: &str) -> Option<String> {
    let (_, check) = CONDITIONAL.iter().find(|(n, _)| *n == name)?;
    check(&Paths::discover().config()).err()
}

fn is_root() -> bool {
    // The effective uid is the second field of "Uid:" in /proc/self/status.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

fn skip_reason() -> Option<String> {
    if std::env::var("CGNAT_E2E").is_ok_and(|v| v == "0") {
        return Some("CGNAT_E2E=0".into());
    }
    if !is_root() {
        return Some("not running as root (the lab needs network namespaces and DPDK)".into());
    }
    None
}

fn trials(env: Option<Arc<Env>>) -> Vec<Trial> {
    CASES
        .iter()
        .map(|&(name, case)| {
            let env = env.clone();
            let ignored = env.is_none() || unmet_requirement(name).is_some();
            Trial::test(name, move || {
                let env = env
                    .as_ref()
                    .ok_or_else(|| Failed::from("no lab environment"))?;
                // A daemon that died in an earlier case fails every later one with its log.
                if name != "daemon_survives_and_stops_cleanly" {
                    env.daemon
                        .ensure_alive()
                        .map_err(|e| Failed::from(format!("before the test: {e}")))?;
                }
                let result = case(env);
                if name != "daemon_survives_and_stops_cleanly"
                    && let Err(died) = env.daemon.ensure_alive()
                {
                    return Err(Failed::from(format!(
                        "cgnatd died during this test{}\n{died}",
                        result
                            .err()
                            .map(|e| format!(" (test error: {e})"))
                            .unwrap_or_default()
                    )));
                }
                result.map_err(Failed::from)
            })
            .with_ignored_flag(ignored)
        })
        .collect()
}

fn setup(paths: Paths) -> Result<Env, String> {
    for bin in [paths.cgnatd(), paths.cgnatctl()] {
        if !bin.is_file() {
            return Err(format!(
                "{} not found: run `cargo build --release --workspace` first",
                bin.display()
            ));
        }
    }
    let _ = fs::remove_dir_all(&paths.work);
    fs::create_dir_all(&paths.work).map_err(|e| format!("create {}: {e}", paths.work.display()))?;
    // A lab daemon left by `make lab-up` would hold the ports and the gRPC address.
    paths.lab_sh("stop", Duration::from_secs(30))?;
    paths.lab_sh("up", Duration::from_secs(60))?;
    eprintln!("e2e: lab up");
    if let Some(tokens) = paths.tokens() {
        tokens.create()?;
        eprintln!(
            "e2e: management tokens written to {}",
            tokens.read_write.display()
        );
    }
    let prefix = format!("cgnat-e2e-{}", std::process::id());
    let daemon = Daemon::start(&paths, &prefix)?;
    let took = daemon.wait_forwarding(Duration::from_secs(30))?;
    eprintln!(
        "e2e: cgnatd (pid {}) forwarding after {:.1}s",
        daemon.pid(),
        took.as_secs_f64()
    );
    // Forwarding also needs ARP both ways; wait until a subscriber really gets through.
    let reached = proc::poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let out = proc::run(
            &mut proc::netns(
                env::SUB1,
                &["ping", "-n", "-q", "-c", "1", "-W", "1", env::SERVER_A],
            ),
            Duration::from_secs(5),
        )
        .ok()?;
        (out.success() || daemon.exit_status().is_some()).then_some(())
    });
    daemon.ensure_alive()?;
    if reached.is_none() {
        return Err(format!(
            "cgn-sub1 cannot ping {} through cgnatd within 30 s\n--- cgnatd log ---\n{}",
            env::SERVER_A,
            daemon.log_tail()
        ));
    }
    let servers = match Servers::start(&paths) {
        Ok(s) => s,
        Err(e) => {
            daemon.stop(Duration::from_secs(10));
            daemon.remove_runtime_files();
            return Err(e);
        }
    };
    Ok(Env {
        paths,
        daemon,
        servers: Mutex::new(servers),
    })
}

/// Stops everything we started, in reverse order. Returns problems worth failing the run for.
fn teardown(env: Option<Arc<Env>>, paths: &Paths) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(env) = env {
        if let Ok(mut s) = env.servers.lock() {
            s.stop_all();
        }
        // Normally the last case already stopped it; a filtered run still checks here.
        let already = env.daemon.exit_status();
        let (status, killed) = env.daemon.stop(Duration::from_secs(15));
        if already.is_none() && (killed || !status.is_some_and(|s| s.success())) {
            problems.push(format!(
                "cgnatd did not exit cleanly on SIGTERM ({status:?}, killed: {killed})\n{}",
                env.daemon.log_tail()
            ));
        }
        env.daemon.remove_runtime_files();
    }
    if let Err(e) = paths.lab_sh("down", Duration::from_secs(60)) {
        problems.push(format!("lab teardown failed: {e}"));
    }
    if let Some(t) = paths.tokens() {
        // Secrets of this run only.
        let _ = fs::remove_file(&t.read_write);
        let _ = fs::remove_file(&t.read_only);
        // And the directories made for them, when nothing else is in them.
        for p in [&t.read_write, &t.read_only] {
            let mut dir = p.parent();
            while let Some(d) = dir.filter(|d| *d != std::path::Path::new("/run")) {
                if fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
    }
    problems
}

/// Ctrl-C or SIGTERM during the run: stop our children by PID, take the lab down, exit.
fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("e2e: signal {sig}, cleaning up");
            proc::signal_all("TERM");
            std::thread::sleep(Duration::from_secs(2));
            proc::signal_all("KILL");
            let _ = fs::remove_dir_all(format!("/var/run/dpdk/cgnat-e2e-{}", std::process::id()));
            let _ = Paths::discover().lab_sh("down", Duration::from_secs(60));
            lock::LabLock::release_if_mine();
            std::process::exit(130);
        }
    });
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    // One lab per machine: never run cases in parallel.
    args.test_threads = Some(1);
    if args.list {
        let _ = libtest_mimic::run(&args, trials(None));
        return ExitCode::SUCCESS;
    }
    if let Some(reason) = skip_reason() {
        if std::env::var("CGNAT_E2E_SKIP_OK").is_ok_and(|v| v == "1") {
            eprintln!("e2e: skipped: {reason} (allowed by CGNAT_E2E_SKIP_OK=1)");
            args.ignored = false;
            args.include_ignored = false;
            return libtest_mimic::run(&args, trials(None)).exit_code();
        }
        eprintln!(
            "e2e: cannot run: {reason}. Run as root, or set CGNAT_E2E_SKIP_OK=1 to allow skipping."
        );
        return ExitCode::FAILURE;
    }

    install_signal_cleanup();
    // Held until main returns, i.e. after teardown.
    let wait = std::env::var("CGNAT_E2E_LOCK_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    let _lock = match lock::LabLock::acquire(Duration::from_secs(wait)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("e2e: {e}");
            return ExitCode::FAILURE;
        }
    };
    let paths = Paths::discover();
    let env = match setup(Paths::discover()) {
        Ok(env) => Arc::new(env),
        Err(e) => {
            eprintln!("e2e: setup failed: {e}");
            proc::signal_all("TERM");
            let _ = paths.lab_sh("down", Duration::from_secs(60));
            return ExitCode::FAILURE;
        }
    };
    for (name, _) in CONDITIONAL {
        if let Some(why) = unmet_requirement(name) {
            eprintln!("e2e: {name} reported as ignored: {why}");
        }
    }
    let conclusion = libtest_mimic::run(&args, trials(Some(env.clone())));
    let problems = teardown(Some(env), &paths);
    for p in &problems {
        eprintln!("e2e: teardown: {p}");
    }
    if problems.is_empty() {
        conclusion.exit_code()
    } else {
        ExitCode::FAILURE
    }
}
