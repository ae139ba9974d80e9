//! The translation policy changed at run time (README "Changing the policy at run time"):
//! `cgnatctl rules` and the gRPC policy calls, under traffic.
//!
//! What an operator relies on when changing the policy of a NAT that carries traffic: a new pool
//! and rule take new flows at once while every existing flow keeps its translation and loses
//! nothing; a hundred changes in a row do not disturb forwarding; an invalid or stale change is
//! refused whole, naming the field, and changes nothing; a dry run changes nothing; what was
//! applied survives a restart (`mgmt.state_file`, which the runner sets in the config copy); and
//! the grpcurl examples in the README work as written.
//!
//! Every case leaves the policy as it found it: [`PolicyGuard`] saves `rules get -o yaml` first and
//! applies it back at the end (also when the case fails). The generation only grows, so the
//! restore passes the current generation rather than the saved one.
//!
//! The addresses the cases add come from 203.0.113.7-.49, which cgn-inet routes to cgnatd and which
//! no lab config uses (pools .1-.6, DNAT .50 and .100-.103). Each case has its own, because a
//! removed pool's address cannot join a pool again until its ports are free, hold-down included
//! (120 s unless the config sets `nat.hold_down`). The README's examples use .7 (a dry run) and
//! 203.0.113.100 tcp 2222.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Env;
use crate::cases::{R, ensure, json_lines, no_drops_for, sessions_json, udp_client};
use crate::env::*;
use crate::proc::{self, Background};

/// policy_new_pool_under_traffic: the pool added under traffic and the subscriber sent to it.
const NEW_POOL: &str = "e2e-new-pool";
const NEW_POOL_IP: &str = "203.0.113.9";
/// policy_hundred_applies_without_loss: the DNAT rule the two documents differ in.
const TOGGLE_RULE: &str = "e2e-toggle";
const TOGGLE_VIP: &str = "203.0.113.10";
/// policy_restart_keeps_applied_rules: a port forward to cgn-sub1's whoami on 100.64.0.21:8001.
const RESTART_RULE: &str = "e2e-restart";
const RESTART_VIP: &str = "203.0.113.8";
const RESTART_PORT: u16 = 8088;
const RESTART_BACKEND: &str = "100.64.0.21:8001";
/// policy_invalid_change_is_refused_whole: valid items that must never be applied, and the pool
/// of the dry run.
const NEVER_VIP: &str = "203.0.113.12";
/// The "other operator's" change that makes a saved policy file stale.
const OTHER_RULE: &str = "e2e-other-operator";
const DRY_RUN_POOL: &str = "e2e-dry-run";
const DRY_RUN_IP: &str = "203.0.113.11";

/// The log line of every applied change (crates/cgnatd/src/daemon/policy.rs).
const APPLIED_LINE: &str = "translation policy applied";

/// Drops that a flow which existed before a change, or a new flow that the policy allows, must
/// never suffer because of the change.
const EXISTING_FLOW_DROPS: &[&str] = &[
    "no_session",
    "tcp_invalid",
    "no_snat_rule",
    "out_of_ports",
    "quota_exceeded",
    "table_full",
    "filtered",
    "no_route",
    "neighbour_unresolved",
    "tx_full",
    "no_mbuf",
    "handoff_full",
    "no_backend",
    "dnat_conflict",
];

// --- cgnatctl -----------------------------------------------------------------------------------

/// `cgnatctl` against the lab daemon (with its token, if any); not checked.
fn ctl(env: &Env, args: &[&str]) -> Result<proc::Output, String> {
    proc::run(env.paths.ctl().args(args), Duration::from_secs(20))
}

/// The policy in force: `cgnatctl rules get -o json`, `{"generation", "policy"}`.
fn get_policy(env: &Env) -> Result<(u64, Value), String> {
    let out = ctl(env, &["-o", "json", "rules", "get"])?.check()?;
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| {
        format!(
            "cgnatctl rules get -o json is not JSON ({e}):\n{}",
            out.stdout
        )
    })?;
    let generation = v["generation"].as_u64().ok_or_else(|| {
        format!(
            "cgnatctl rules get -o json has no generation number:\n{}",
            out.stdout
        )
    })?;
    ensure(v["policy"].is_object(), || {
        format!(
            "cgnatctl rules get -o json has no policy mapping:\n{}",
            out.stdout
        )
    })?;
    Ok((generation, v["policy"].clone()))
}

/// A policy document with the keys that say nothing dropped (null, an empty list or mapping):
/// `dnat: []` and no `dnat` are the same policy, and the daemon keeps whichever form it last
/// stored when an apply changes nothing.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| {
                    !(v.is_null()
                        || v.as_array().is_some_and(Vec::is_empty)
                        || v.as_object().is_some_and(|o| o.is_empty()))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Whether two policy documents say the same.
fn same_policy(a: &Value, b: &Value) -> bool {
    normalized(a) == normalized(b)
}

/// A change through `cgnatctl -o json rules ARGS...` that must succeed: its
/// `{"generation", "applied", "dry_run", "changes"}`.
fn change(env: &Env, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["-o", "json", "rules"];
    all.extend_from_slice(args);
    let out = ctl(env, &all)?;
    if !out.success() {
        return Err(format!(
            "{}\n--- cgnatd log tail ---\n{}",
            out.describe(),
            proc::tail(&env.daemon.log_text(), 15)
        ));
    }
    let v: Value = serde_json::from_str(&out.stdout).map_err(|e| {
        format!(
            "`cgnatctl rules {}` printed no JSON ({e}):\n{}",
            args.join(" "),
            out.stdout
        )
    })?;
    ensure(v["generation"].is_u64() && v["changes"].is_array(), || {
        format!(
            "`cgnatctl rules {}` printed no generation and changes:\n{}",
            args.join(" "),
            out.stdout
        )
    })?;
    Ok(v)
}

/// A change that must have been applied, as generation `want`, listing a change at a path
/// containing `path`.
fn applied(env: &Env, args: &[&str], want: u64, path: &str) -> Result<Value, String> {
    let v = change(env, args)?;
    ensure(v["applied"] == true && v["generation"] == want, || {
        format!(
            "`cgnatctl rules {}` should have been applied as generation {want}: {v}",
            args.join(" ")
        )
    })?;
    ensure(
        v["changes"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["path"].as_str().is_some_and(|p| p.contains(path)))
        }),
        || {
            format!(
                "`cgnatctl rules {}` lists no change at {path:?}: {v}",
                args.join(" ")
            )
        },
    )?;
    Ok(v)
}

/// A change that must be refused: exit status 1 and exactly one line on stderr, which is returned.
fn refused(env: &Env, args: &[&str]) -> Result<String, String> {
    let out = ctl(env, args)?;
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    ensure(out.code() == Some(1) && lines.len() == 1, || {
        format!(
            "`cgnatctl {}` must be refused with exit status 1 and one line on stderr\n{}",
            args.join(" "),
            out.describe()
        )
    })?;
    Ok(lines[0].to_string())
}

/// `cgnatctl pools -o json`: the pools (with `retired`).
fn pools(env: &Env) -> Result<Vec<Value>, String> {
    let out = ctl(env, &["-o", "json", "pools"])?.check()?;
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("cgnatctl pools -o json is not JSON ({e}):\n{}", out.stdout))?;
    v["pools"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("cgnatctl pools -o json has no pools list:\n{}", out.stdout))
}

/// How many changes the daemon has logged as applied since byte `from` of its log. The log is
/// written by the daemon's own thread: give the last lines a moment to arrive when fewer than
/// `want` are there yet.
fn applied_lines_since(env: &Env, from: usize, want: usize) -> usize {
    let count = || {
        let log = env.daemon.log_text();
        log.get(from..)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(APPLIED_LINE))
            .count()
    };
    proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        (count() >= want).then_some(())
    });
    count()
}

fn log_since(env: &Env, from: usize) -> String {
    let log = env.daemon.log_text();
    proc::tail(log.get(from..).unwrap_or(&log), 30)
}

/// Saves the policy in force (`cgnatctl rules get -o yaml`, as an operator would) and puts it back
/// with `rules apply -f`: explicitly with [`PolicyGuard::restore`], which checks the result, or
/// when dropped (a failed case), best effort.
struct PolicyGuard<'a> {
    env: &'a Env,
    file: PathBuf,
    generation: u64,
    doc: Value,
    active: bool,
}

impl<'a> PolicyGuard<'a> {
    fn save(env: &'a Env, tag: &str) -> Result<PolicyGuard<'a>, String> {
        let out = ctl(env, &["-o", "yaml", "rules", "get"])?.check()?;
        let file = env.paths.work.join(format!("policy-{tag}.yaml"));
        fs::write(&file, &out.stdout).map_err(|e| format!("write {}: {e}", file.display()))?;
        let (generation, doc) = get_policy(env)?;
        Ok(PolicyGuard {
            env,
            file,
            generation,
            doc,
            active: true,
        })
    }

    fn put_back(&self) -> R {
        let (now, doc) = get_policy(self.env)?;
        if !same_policy(&doc, &self.doc) {
            // The saved file's generation is stale by now (every change counts): check against
            // the current one instead, so that nothing else slips in between.
            let file = self.file.to_string_lossy().into_owned();
            ctl(
                self.env,
                &[
                    "rules",
                    "apply",
                    "-f",
                    &file,
                    "--expect-generation",
                    &now.to_string(),
                ],
            )?
            .check()?;
        }
        let (_, after) = get_policy(self.env)?;
        ensure(same_policy(&after, &self.doc), || {
            format!(
                "restoring the saved policy ({}) left a different one in force:\nsaved: {}\nnow:   {after}",
                self.file.display(),
                self.doc
            )
        })
    }

    fn restore(mut self) -> R {
        self.active = false;
        self.put_back()
    }
}

impl Drop for PolicyGuard<'_> {
    fn drop(&mut self) {
        if self.active
            && let Err(e) = self.put_back()
        {
            eprintln!("e2e: could not restore the policy after a failed case: {e}");
        }
    }
}

// --- traffic ------------------------------------------------------------------------------------

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ip_of(sockaddr: &str) -> Result<Ipv4Addr, String> {
    parse_sockaddr(sockaddr).map(|(ip, _)| ip)
}

/// Waits (up to 10 s) until `bg`, a `paced.py` stream, reports progress at wall-clock time `t` or
/// later: the flow has carried on that long.
fn progress_past(bg: &mut Background, t: f64) -> R {
    bg.wait_line(false, Duration::from_secs(10), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "progress" && v["t"].as_f64().is_some_and(|x| x >= t))
    })
    .map(|_| ())
}

/// A paced, sequence-numbered UDP flow (`tests/tools/paced.py udp`) to a lab echo server.
struct UdpStream {
    bg: Background,
    what: String,
}

impl UdpStream {
    /// Starts the stream and returns once its first echo is back (the flow exists in the NAT).
    fn start(
        env: &Env,
        ns: &str,
        server: &str,
        bind_port: u16,
        rate: u32,
        tag: &str,
    ) -> Result<UdpStream, String> {
        let what = format!("UDP stream {ns}:{bind_port} -> {server}:{UDP_PORT} at {rate}/s");
        let mut bg = Background::spawn(
            &what,
            proc::netns(
                ns,
                &[
                    &env.paths.python,
                    &env.paths.tool("paced.py"),
                    "udp",
                    "--server",
                    server,
                    "--port",
                    &UDP_PORT.to_string(),
                    "--bind-port",
                    &bind_port.to_string(),
                    "--rate",
                    &rate.to_string(),
                    // A bound only: the case ends the stream (SIGTERM) once its changes are done.
                    "--duration",
                    "240",
                    "--drain",
                    "2",
                    "--tag",
                    tag,
                ],
            ),
        )?;
        bg.wait_line(false, Duration::from_secs(10), |l| {
            l.contains("\"started\"")
        })?;
        Ok(UdpStream { bg, what })
    }

    /// Returns once the stream has run until `t` (wall clock) and a second more: what follows a
    /// change is part of the window under test.
    fn run_past(&mut self, t: f64) -> R {
        progress_past(&mut self.bg, t + 1.0).map_err(|e| format!("{}: {e}", self.what))
    }

    /// Stops sending, waits for the last echoes and checks that every datagram was answered, all
    /// by way of one translation (the flow kept its mapping), and that the stream ran from before
    /// `from` until after `to` (wall-clock seconds): the window under test. Returns the translated
    /// source and the summary.
    ///
    /// A datagram can also be lost outside cgnatd (a full af_packet ring, a socket buffer in a
    /// namespace on a busy machine): a loss is reported with what the counters along the path
    /// (`evidence`, taken before the stream started) saw meanwhile, so the reader can tell.
    fn finish(
        mut self,
        env: &Env,
        from: f64,
        to: f64,
        evidence: &Evidence,
    ) -> Result<(String, Value), String> {
        self.bg.stop_with("TERM", Duration::from_secs(10));
        let done = json_lines(&self.bg.stdout_lines())
            .into_iter()
            .find(|v| v["event"] == "done")
            .ok_or_else(|| format!("{} printed no summary\n{}", self.what, self.bg.dump()))?;
        let sent = done["sent"].as_u64().unwrap_or(0);
        let missing = done["missing_count"].as_u64().unwrap_or(u64::MAX);
        ensure(sent > 0 && missing == 0, || {
            format!(
                "{}: {missing} of {sent} datagrams got no echo (first missing SEQs {} sent at {} s after the start; the change window was {:.2}-{:.2} s)\nmeanwhile, along the path: {}",
                self.what,
                done["missing"],
                done["missing_at"],
                from - done["t_first"].as_f64().unwrap_or(from),
                to - done["t_first"].as_f64().unwrap_or(from),
                evidence.since(env)
            )
        })?;
        let sources: Vec<&String> = done["sources"]
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        ensure(sources.len() == 1, || {
            format!(
                "{}: one flow must keep one translation, the server saw it from {:?}",
                self.what, done["sources"]
            )
        })?;
        let source = sources[0].clone();
        let (first, last) = (
            done["t_first"].as_f64().unwrap_or(f64::MAX),
            done["t_last"].as_f64().unwrap_or(0.0),
        );
        ensure(first < from && last > to, || {
            format!(
                "{}: it ran from {first:.2} to {last:.2}, which does not cover the change window {from:.2}-{to:.2}",
                self.what
            )
        })?;
        Ok((source, done))
    }
}

/// Counters along the lab's path that tell where a lost datagram went: cgnatd's NIC counters
/// (`cgnatctl ports`: a full RX ring is `rx_missed`), its drop reasons, and the kernel's UDP
/// counters (/proc/net/snmp) in the namespaces of the stream's ends.
struct Evidence {
    ports: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
    udp: BTreeMap<String, u64>,
}

impl Evidence {
    const PORT_COUNTERS: &[&str] = &["rx_missed", "rx_errors", "tx_errors", "rx_nombuf"];
    const UDP_COUNTERS: &[&str] = &["InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts"];

    fn take(env: &Env) -> Evidence {
        let mut ports = BTreeMap::new();
        if let Ok(out) = ctl(env, &["-o", "json", "ports"])
            && let Ok(v) = serde_json::from_str::<Value>(&out.stdout)
        {
            for p in v["ports"].as_array().into_iter().flatten() {
                for c in Self::PORT_COUNTERS {
                    let n = p["counters"][*c].as_u64().unwrap_or(0);
                    ports.insert(format!("port {} {c}", p["name"].as_str().unwrap_or("?")), n);
                }
            }
        }
        let drops = Stats::read(&env.paths)
            .ok()
            .and_then(|s| s.0["drops"].as_object().cloned())
            .map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let mut udp = BTreeMap::new();
        for ns in [SUB1, SUB2, INET] {
            let Ok(out) = proc::run(
                &mut proc::netns(ns, &["cat", "/proc/net/snmp"]),
                Duration::from_secs(5),
            ) else {
                continue;
            };
            // Two "Udp:" lines: the field names, then the values.
            let rows: Vec<Vec<&str>> = out
                .stdout
                .lines()
                .filter(|l| l.starts_with("Udp:"))
                .map(|l| l.split_whitespace().skip(1).collect())
                .collect();
            if let [names, values] = rows.as_slice() {
                for (k, v) in names.iter().zip(values) {
                    if Self::UDP_COUNTERS.contains(k) {
                        udp.insert(format!("{ns} Udp {k}"), v.parse().unwrap_or(0));
                    }
                }
            }
        }
        Evidence { ports, drops, udp }
    }

    /// What grew since this snapshot, or that nothing did.
    fn since(&self, env: &Env) -> String {
        let now = Evidence::take(env);
        let mut grew = Vec::new();
        for (before, after) in [
            (&self.ports, &now.ports),
            (&self.drops, &now.drops),
            (&self.udp, &now.udp),
        ] {
            for (k, v) in after {
                let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
                if d > 0 {
                    grew.push(format!("{k} +{d}"));
                }
            }
        }
        if grew.is_empty() {
            "no NIC, drop or kernel UDP error counter grew (lost without a trace: in cgnatd?)"
                .into()
        } else {
            grew.join(", ")
        }
    }
}

/// The port of the sink (`tcp_stream.py sink`) that [`TcpStream`]s upload to, on server B.
const SINK_PORT: u16 = 9100;

/// `tcp_stream.py sink` on server B: reads each connection to its end and answers with the bytes
/// and sha256 it got, and the peer it saw. Stopped when dropped.
fn sink(env: &Env) -> Result<Background, String> {
    let mut bg = Background::spawn(
        "tcp sink",
        proc::netns(
            INET,
            &[
                &env.paths.python,
                &env.paths.tool("tcp_stream.py"),
                "sink",
                "--bind",
                SERVER_B,
                "--port",
                &SINK_PORT.to_string(),
                "--lifetime",
                "300",
            ],
        ),
    )?;
    bg.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
    Ok(bg)
}

/// One TCP connection uploading at a fixed rate (`paced.py tcp`) to the [`sink`] until stopped:
/// a transfer that runs through the whole change, however long the change takes (curl's
/// --limit-rate does not hold a rate well enough for that).
struct TcpStream {
    bg: Background,
    what: String,
}

impl TcpStream {
    /// Connects (through the NAT: the session exists once this returns) and starts sending.
    fn start(env: &Env, ns: &str, bind_port: u16, rate: u32) -> Result<TcpStream, String> {
        let what = format!("TCP upload {ns}:{bind_port} -> {SERVER_B}:{SINK_PORT} at {rate} B/s");
        let mut bg = Background::spawn(
            &what,
            proc::netns(
                ns,
                &[
                    &env.paths.python,
                    &env.paths.tool("paced.py"),
                    "tcp",
                    "--server",
                    SERVER_B,
                    "--port",
                    &SINK_PORT.to_string(),
                    "--bind-port",
                    &bind_port.to_string(),
                    "--rate",
                    &rate.to_string(),
                    "--duration",
                    "240",
                    "--stall",
                    "5",
                ],
            ),
        )?;
        bg.wait_line(false, Duration::from_secs(10), |l| {
            l.contains("\"connected\"")
        })?;
        Ok(TcpStream { bg, what })
    }

    fn is_running(&mut self) -> bool {
        self.bg.is_running()
    }

    /// Like [`UdpStream::run_past`].
    fn run_past(&mut self, t: f64) -> R {
        progress_past(&mut self.bg, t + 1.0).map_err(|e| format!("{}: {e}", self.what))
    }

    /// Ends the upload (SIGTERM: half-close, await the sink's answer) and checks that it ran from
    /// before `from` until after `to`, and that the sink got every byte, intact (sha256). Returns
    /// the peer the sink saw (the translated source) and the summary (bytes `sent`, the kernel's
    /// `retransmits` of the connection).
    fn finish(mut self, from: f64, to: f64) -> Result<(String, Value), String> {
        self.bg.stop_with("TERM", Duration::from_secs(15));
        let done = json_lines(&self.bg.stdout_lines())
            .into_iter()
            .find(|v| v["event"] == "done")
            .ok_or_else(|| format!("{} printed no summary\n{}", self.what, self.bg.dump()))?;
        let sent = done["sent"].as_u64().unwrap_or(0);
        ensure(
            done["intact"] == true && done.get("error").is_none() && sent > 0,
            || {
                format!(
                    "{}: the transfer failed or arrived damaged: sent {sent} bytes (sha256 {}), the sink answered {}{}",
                    self.what,
                    done["sha256"],
                    done["reply"],
                    done.get("error")
                        .map(|e| format!("; error: {e}"))
                        .unwrap_or_default()
                )
            },
        )?;
        let (first, last) = (
            done["t_first"].as_f64().unwrap_or(f64::MAX),
            done["t_last"].as_f64().unwrap_or(0.0),
        );
        ensure(first < from && last > to, || {
            format!(
                "{}: it sent from {first:.2} to {last:.2}, which does not cover the change window {from:.2}-{to:.2}",
                self.what
            )
        })?;
        let peer = done["reply"]["peer"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok((peer, done))
    }
}

/// Every reply of a new UDP flow from `ns` (`udp_echo.py client`, `count` datagrams from
/// `bind_port`): the sources the server saw.
fn udp_sources(env: &Env, ns: &str, bind_port: u16, count: u32) -> Result<Vec<String>, String> {
    let v = udp_client(env, ns, SERVER_A, bind_port, count)?;
    let seen: Vec<String> = v["replies"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["seen"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ensure(seen.len() == count as usize, || {
        format!(
            "a new UDP flow from {ns}:{bind_port} to {SERVER_A}:{UDP_PORT}: {} of {count} echoes came back: {v}",
            seen.len()
        )
    })?;
    Ok(seen)
}

/// A new HTTP connection from `ns` (source port in `local_ports`) to server A's /whoami: the
/// client address:port the server saw.
fn whoami_from(ns: &str, local_ports: &str) -> Result<String, String> {
    let url = format!("http://{SERVER_A}:{HTTP_PORT}/whoami");
    let out = proc::run(
        &mut proc::netns(
            ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--local-port",
                local_ports,
                &url,
            ],
        ),
        Duration::from_secs(15),
    )?
    .check()?;
    Ok(out.stdout.trim().to_string())
}

/// `count` new connections from cgn-inet to a destination NAT address (`whoami.py get`), each
/// checked against what the backends logged: (backend that answered, client it saw, client).
fn dnat_get(
    env: &Env,
    to: &str,
    count: u32,
    tag: &str,
) -> Result<Vec<(String, String, String)>, String> {
    let tool = env.paths.tool("whoami.py");
    let out = proc::run(
        &mut proc::netns(
            INET,
            &[
                &env.paths.python,
                &tool,
                "get",
                "--to",
                to,
                "--count",
                &count.to_string(),
                "--tag",
                tag,
                "--timeout",
                "20",
                "--conn-timeout",
                "3",
            ],
        ),
        Duration::from_secs(30),
    )?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("whoami get output ({e}):\n{}", out.describe()))?;
    let results = v["results"].as_array().cloned().unwrap_or_default();
    ensure(results.len() == count as usize, || {
        format!(
            "cgn-inet -> {to}: {} of {count} connections completed; errors: {}",
            results.len(),
            v["errors"]
        )
    })?;
    let hits: Vec<(String, String, String)> = results
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("server"), f("client"), f("local"))
        })
        .collect();
    // The backend's own log: every request arrived there, from the client it reported.
    let prefix = format!("/{tag}/");
    let logged = || -> Vec<(String, String, String)> {
        env.servers
            .lock()
            .map(|s| s.backend_requests())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, _, p)| p.starts_with(&prefix))
            .collect()
    };
    proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        (logged().len() >= hits.len()).then_some(())
    });
    let logged = logged();
    ensure(logged.len() == hits.len(), || {
        format!(
            "the backends logged {} requests tagged {tag}, the client completed {}: {logged:?}",
            logged.len(),
            hits.len()
        )
    })?;
    for (server, client, _) in &hits {
        ensure(
            logged.iter().any(|(s, c, _)| s == server && c == client),
            || {
                format!(
                    "{server} answered a request from {client}, but the backends logged {logged:?}"
                )
            },
        )?;
    }
    Ok(hits)
}

/// Every connection to the port forward reached its backend, which saw the real client.
fn forwards_to(hits: &[(String, String, String)], backend: &str, what: &str) -> R {
    for (server, client, local) in hits {
        ensure(server == backend && client == local, || {
            format!(
                "{what}: a connection from {local} was answered by {server}, which saw the client as {client}; expected {backend} seeing {local}"
            )
        })?;
    }
    Ok(())
}

/// The address isn't in any pool (a retired one included): the case can add it.
fn address_is_free(env: &Env, ip: &str) -> R {
    let all = pools(env)?;
    let holder = all.iter().find(|p| {
        p["addresses"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|x| x.starts_with(ip)))
        })
    });
    ensure(holder.is_none(), || {
        format!(
            "{ip} already belongs to pool {} (the case was run earlier against this daemon, and the removed pool is still draining?)",
            holder.map(|p| p.to_string()).unwrap_or_default()
        )
    })
}

/// Appends a DNAT rule to a policy document (creating `nat` and `nat.dnat` when absent).
fn push_dnat(doc: &mut Value, rule: Value) -> R {
    doc.as_object_mut()
        .ok_or("the policy is not a mapping")?
        .entry("nat")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("policy nat is not a mapping")?
        .entry("dnat")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("policy nat.dnat is not a list")?
        .push(rule);
    Ok(())
}

/// Runs a case and reports how long it took (the runner prints no durations).
fn timed(name: &str, case: impl FnOnce() -> R) -> R {
    let began = Instant::now();
    let r = case();
    eprintln!(
        "e2e: {name}: {} after {:.1} s",
        if r.is_ok() { "passed" } else { "failed" },
        began.elapsed().as_secs_f64()
    );
    r
}

// --- the cases ----------------------------------------------------------------------------------

/// A pool and a SNAT rule added under traffic: cgn-sub2's new flows leave from the new pool at
/// once, while cgn-sub1's UDP stream (untouched by the rule) and cgn-sub2's own TCP upload (opened
/// before the rule moved its subscriber to the new pool) keep their translations and lose nothing.
/// Then the rule and the pool go again, still under traffic: the pool is retired and keeps
/// translating the flow that cgn-sub2 opened on it meanwhile, and cgn-sub2's new flows are back on
/// the lab pool.
pub fn policy_new_pool_under_traffic(env: &Env) -> R {
    timed("policy_new_pool_under_traffic", || {
        policy_new_pool_under_traffic_(env)
    })
}

fn policy_new_pool_under_traffic_(env: &Env) -> R {
    let guard = PolicyGuard::save(env, "new-pool")?;
    let g0 = guard.generation;
    address_is_free(env, NEW_POOL_IP)?;
    let log_from = env.daemon.log_text().len();
    let before = Stats::read(&env.paths)?;
    let evidence = Evidence::take(env);
    let _sink = sink(env)?;

    let mut stream = UdpStream::start(env, SUB1, SERVER_A, 45001, STREAM_RATE, "new-pool")?;
    let mut upload = TcpStream::start(env, SUB2, 45010, TCP_RATE)?;

    let t0 = now_unix();
    let pool = format!("{{name: {NEW_POOL}, addresses: [{NEW_POOL_IP}]}}");
    applied(env, &["add", "pool", &pool], g0 + 1, NEW_POOL)?;
    let rule = format!("{{match: {SUB2_IP}/32, pool: {NEW_POOL}}}");
    applied(env, &["add", "snat", "--index", "0", &rule], g0 + 2, "snat")?;
    let t1 = now_unix();

    // (a) New flows of cgn-sub2 leave from the new pool; cgn-sub1's new ones from the lab pool.
    let seen = udp_sources(env, SUB2, 45020, 3)?;
    ensure(
        seen.iter()
            .all(|s| ip_of(s).is_ok_and(|ip| ip.to_string() == NEW_POOL_IP)),
        || {
            format!(
                "cgn-sub2's new UDP flow after the change was seen from {seen:?}, expected {NEW_POOL_IP}"
            )
        },
    )?;
    let who = whoami_from(SUB2, "45021-45029")?;
    ensure(ip_of(&who)?.to_string() == NEW_POOL_IP, || {
        format!(
            "cgn-sub2's new TCP connection after the change was seen from {who}, expected {NEW_POOL_IP}"
        )
    })?;
    let other = udp_sources(env, SUB1, 45022, 1)?;
    ensure(other.iter().all(|s| ip_of(s).is_ok_and(in_pool)), || {
        format!("cgn-sub1 is not matched by the new rule, yet its new flow was seen from {other:?}")
    })?;
    let listed = pools(env)?;
    let new = listed.iter().find(|p| p["name"] == NEW_POOL);
    ensure(
        new.is_some_and(|p| {
            p["retired"] == false && p["by_address"][NEW_POOL_IP].as_u64().unwrap_or(0) >= 2
        }),
        || {
            format!(
                "cgnatctl pools should list {NEW_POOL} in service with cgn-sub2's 2 new flows on {NEW_POOL_IP}: {new:?}"
            )
        },
    )?;
    ensure(upload.is_running(), || {
        format!(
            "cgn-sub2's upload, opened before the change, stopped:\n{}",
            upload.bg.dump()
        )
    })?;

    // Back out, under traffic again, with a flow of cgn-sub2 on the new pool running: rule first
    // (checked to be ours), then the pool, which retires and goes on translating that flow.
    let mut on_new = UdpStream::start(env, SUB2, SERVER_A, 45030, STREAM_RATE, "new-pool-2")?;
    let (g, doc) = get_policy(env)?;
    ensure(doc["snat"][0]["pool"] == NEW_POOL, || {
        format!("SNAT rule 0 should be the one just added: {}", doc["snat"])
    })?;
    let t2 = now_unix();
    applied(
        env,
        &["delete", "snat", "0", "--expect-generation", &g.to_string()],
        g + 1,
        "snat",
    )?;
    applied(
        env,
        &[
            "delete",
            "pool",
            NEW_POOL,
            "--expect-generation",
            &(g + 1).to_string(),
        ],
        g + 2,
        NEW_POOL,
    )?;
    let t3 = now_unix();
    eprintln!(
        "e2e: policy_new_pool_under_traffic: pool and SNAT rule added in {:.3} s, deleted in {:.3} s",
        t1 - t0,
        t3 - t2
    );
    let listed = pools(env)?;
    let retired = listed.iter().find(|p| p["name"] == NEW_POOL);
    ensure(retired.is_some_and(|p| p["retired"] == true), || {
        format!(
            "after `rules delete pool {NEW_POOL}`, with a flow still on it, cgnatctl pools should list it as retired: {retired:?}"
        )
    })?;
    let back = udp_sources(env, SUB2, 45023, 1)?;
    ensure(back.iter().all(|s| ip_of(s).is_ok_and(in_pool)), || {
        format!(
            "with the rule deleted, cgn-sub2's new flow should leave from the lab pool again, was seen from {back:?}"
        )
    })?;

    // (b) The flows that existed before each change: nothing lost, on their old translations.
    stream.run_past(t3)?;
    upload.run_past(t3)?;
    on_new.run_past(t3)?;
    let (source, summary) = stream.finish(env, t0, t3, &evidence)?;
    ensure(in_pool(ip_of(&source)?), || {
        format!("cgn-sub1's stream was seen from {source}, not the lab pool")
    })?;
    let (peer, tcp) = upload.finish(t0, t3)?;
    ensure(ip_of(&peer).is_ok_and(in_pool), || {
        format!(
            "cgn-sub2's upload, opened before the change, must stay on its lab pool translation; the sink saw {peer:?}"
        )
    })?;
    let (drained, _) = on_new.finish(env, t2, t3, &evidence)?;
    ensure(ip_of(&drained)?.to_string() == NEW_POOL_IP, || {
        format!(
            "cgn-sub2's flow opened on the new pool was seen from {drained}, expected {NEW_POOL_IP}"
        )
    })?;
    eprintln!(
        "e2e: policy_new_pool_under_traffic: cgn-sub1's UDP stream: {} datagrams all answered from {source}; cgn-sub2's upload: {} bytes intact from {peer} ({} retransmits); its flow on the retired pool: all answered from {drained}",
        summary["sent"], tcp["sent"], tcp["retransmits"]
    );

    // (c) Nothing was dropped for a reason that a change could cause.
    let after = Stats::read(&env.paths)?;
    no_drops_for(
        &before,
        &after,
        EXISTING_FLOW_DROPS,
        "a pool and a rule added and deleted under traffic",
    )?;
    let logged = applied_lines_since(env, log_from, 4);
    ensure(logged == 4, || {
        format!(
            "4 changes were applied, the daemon logged `{APPLIED_LINE}` {logged} times\n--- cgnatd log since the case began ---\n{}",
            log_since(env, log_from)
        )
    })?;
    guard.restore()
}

/// The UDP streams' rate: some hundreds of datagrams per second, all of them answered.
const STREAM_RATE: u32 = 300;
/// The TCP uploads' rate in bytes per second: a steady transfer, not a load test.
const TCP_RATE: u32 = 1_000_000;

/// One hundred whole-policy applies in a row, alternating between the policy in force and the same
/// with one more DNAT rule and a different ICMP timeout, while a UDP stream and a TCP upload run
/// through all of them: every apply is a new generation (exactly +100 in the end), every datagram
/// is answered, the upload arrives intact, and the daemon logged each change.
pub fn policy_hundred_applies_without_loss(env: &Env) -> R {
    timed("policy_hundred_applies_without_loss", || {
        policy_hundred_applies_without_loss_(env)
    })
}

fn policy_hundred_applies_without_loss_(env: &Env) -> R {
    const APPLIES: u64 = 100;
    let guard = PolicyGuard::save(env, "hundred")?;
    let g0 = guard.generation;
    let doc_a = guard.doc.clone();
    let mut doc_b = doc_a.clone();
    {
        let nat = doc_b
            .as_object_mut()
            .ok_or("the policy is not a mapping")?
            .entry("nat")
            .or_insert_with(|| json!({}));
        let icmp = nat["timeouts"]["icmp"].as_u64().unwrap_or(60);
        let nat = nat.as_object_mut().ok_or("policy nat is not a mapping")?;
        let timeouts = nat.entry("timeouts").or_insert_with(|| json!({}));
        timeouts
            .as_object_mut()
            .ok_or("policy nat.timeouts is not a mapping")?
            .insert("icmp".into(), json!(icmp + 1));
    }
    push_dnat(
        &mut doc_b,
        json!({
            "name": TOGGLE_RULE,
            "address": TOGGLE_VIP,
            "protocol": "tcp",
            "port": 8010,
            "backends": [{"address": "100.64.0.22", "port": 8002}],
        }),
    )?;
    let file_a = env.paths.work.join("policy-hundred-a.json");
    let file_b = env.paths.work.join("policy-hundred-b.json");
    for (f, d) in [(&file_a, &doc_a), (&file_b, &doc_b)] {
        fs::write(f, d.to_string()).map_err(|e| format!("write {}: {e}", f.display()))?;
    }
    let (file_a, file_b) = (
        file_a.to_string_lossy().into_owned(),
        file_b.to_string_lossy().into_owned(),
    );
    let log_from = env.daemon.log_text().len();
    let before = Stats::read(&env.paths)?;
    let evidence = Evidence::take(env);
    let _sink = sink(env)?;

    let mut stream = UdpStream::start(env, SUB1, SERVER_A, 45201, STREAM_RATE, "hundred")?;
    let mut upload = TcpStream::start(env, SUB2, 45210, TCP_RATE)?;
    let t0 = now_unix();
    let started = Instant::now();
    let mut per_apply = Vec::new();
    for i in 0..APPLIES {
        // Even applies add the rule and change the timeout, odd ones take both back.
        let file = if i % 2 == 0 { &file_b } else { &file_a };
        let g = (g0 + i).to_string();
        let one = Instant::now();
        applied(
            env,
            &["apply", "-f", file, "--expect-generation", &g],
            g0 + i + 1,
            TOGGLE_RULE,
        )
        .map_err(|e| format!("apply {} of {APPLIES}: {e}", i + 1))?;
        per_apply.push(one.elapsed());
        if i == 0 {
            // The first one shows what differs: the rule and the timeout, nothing else.
            let (_, now) = get_policy(env)?;
            ensure(same_policy(&now, &doc_b), || {
                format!("after applying {file_b}, rules get shows another policy: {now}")
            })?;
        }
    }
    let took = started.elapsed();
    let t1 = now_unix();
    per_apply.sort();
    eprintln!(
        "e2e: policy_hundred_applies_without_loss: {APPLIES} applies took {:.2} s (median {:.1} ms, max {:.1} ms per `cgnatctl rules apply`)",
        took.as_secs_f64(),
        per_apply[per_apply.len() / 2].as_secs_f64() * 1000.0,
        per_apply
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    );

    stream.run_past(t1)?;
    upload.run_past(t1)?;
    let (source, summary) = stream.finish(env, t0, t1, &evidence)?;
    ensure(in_pool(ip_of(&source)?), || {
        format!("cgn-sub1's stream was seen from {source}, not the lab pool")
    })?;
    let (peer, tcp) = upload.finish(t0, t1)?;
    eprintln!(
        "e2e: policy_hundred_applies_without_loss: UDP {} datagrams all answered from {source}; TCP upload {} bytes intact from {peer} ({} retransmits)",
        summary["sent"], tcp["sent"], tcp["retransmits"]
    );

    let (g, doc) = get_policy(env)?;
    ensure(g == g0 + APPLIES && same_policy(&doc, &doc_a), || {
        format!(
            "after {APPLIES} applies from generation {g0} ending on the original policy, rules get shows generation {g} and {}",
            if same_policy(&doc, &doc_a) {
                "the original policy"
            } else {
                "another policy"
            }
        )
    })?;
    let logged = applied_lines_since(env, log_from, APPLIES as usize);
    ensure(logged == APPLIES as usize, || {
        format!(
            "{APPLIES} changes were applied, the daemon logged `{APPLIED_LINE}` {logged} times\n{}",
            log_since(env, log_from)
        )
    })?;
    let after = Stats::read(&env.paths)?;
    no_drops_for(
        &before,
        &after,
        EXISTING_FLOW_DROPS,
        "100 policy applies under traffic",
    )?;
    guard.restore()
}

/// What the API applied survives a restart (`mgmt.state_file`): a port forward added through the
/// API forwards, is in the state file with its generation, and after SIGTERM and a new start the
/// daemon reports the same generation and policy and still forwards. Then it is deleted again.
pub fn policy_restart_keeps_applied_rules(env: &Env) -> R {
    timed("policy_restart_keeps_applied_rules", || {
        policy_restart_keeps_applied_rules_(env)
    })
}

fn policy_restart_keeps_applied_rules_(env: &Env) -> R {
    let guard = PolicyGuard::save(env, "restart")?;
    let g0 = guard.generation;
    let to = format!("{RESTART_VIP}:{RESTART_PORT}");
    let rule = format!(
        "{{name: {RESTART_RULE}, address: {RESTART_VIP}, protocol: tcp, port: {RESTART_PORT}, backends: [{{address: 100.64.0.21, port: 8001}}]}}"
    );
    applied(env, &["add", "dnat", &rule], g0 + 1, RESTART_RULE)?;
    let g1 = g0 + 1;
    let hits = dnat_get(env, &to, 3, "policy-restart-before")?;
    forwards_to(
        &hits,
        RESTART_BACKEND,
        "the port forward added through the API",
    )?;
    let (_, doc1) = get_policy(env)?;

    // The state file: what a restart will restore, with its generation.
    let path = &env.daemon.state_file;
    let text = fs::read_to_string(path).map_err(|e| {
        format!(
            "read the state file {} (mgmt.state_file): {e}",
            path.display()
        )
    })?;
    let saved: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "the state file {} is not YAML ({e}):\n{text}",
            path.display()
        )
    })?;
    let saved_doc = serde_json::to_value(&saved["policy"])
        .map_err(|e| format!("the state file's policy: {e}"))?;
    ensure(
        saved["generation"].as_u64() == Some(g1) && saved_doc == doc1,
        || {
            format!(
                "the state file {} should hold generation {g1} and the policy in force ({doc1}):\n{text}",
                path.display()
            )
        },
    )?;

    let took = env.daemon.restart()?;
    eprintln!(
        "e2e: policy_restart_keeps_applied_rules: cgnatd (pid {}) forwarding again {:.1} s after SIGTERM",
        env.daemon.pid(),
        took.as_secs_f64()
    );
    let mut last = None;
    let healthy = proc::poll(Duration::from_secs(15), Duration::from_millis(200), || {
        let out = ctl(env, &["health"]).ok()?;
        let ok = out.success();
        last = Some(out);
        ok.then_some(())
    });
    ensure(healthy.is_some(), || {
        format!(
            "the restarted cgnatd's API is not SERVING within 15 s\n{}",
            last.map(|o| o.describe()).unwrap_or_default()
        )
    })?;
    let (g, doc) = get_policy(env)?;
    ensure(g == g1 && doc == doc1, || {
        format!(
            "after the restart, rules get should show generation {g1} with the rule {RESTART_RULE}; it shows generation {g}{}\n{doc}",
            if doc == doc1 {
                ""
            } else {
                " and another policy"
            }
        )
    })?;
    let hits = dnat_get(env, &to, 3, "policy-restart-after")?;
    forwards_to(&hits, RESTART_BACKEND, "the port forward after the restart")?;

    applied(
        env,
        &[
            "delete",
            "dnat",
            RESTART_RULE,
            "--expect-generation",
            &g1.to_string(),
        ],
        g1 + 1,
        RESTART_RULE,
    )?;
    let text = fs::read_to_string(path).unwrap_or_default();
    let saved: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    ensure(
        saved["generation"].as_u64() == Some(g1 + 1) && !text.contains(RESTART_RULE),
        || {
            format!(
                "after the delete, the state file should hold generation {} without {RESTART_RULE}:\n{text}",
                g1 + 1
            )
        },
    )?;
    // The operator's record that the daemon runs the API's policy, not the file's: checked last,
    // after what the traffic shows.
    let log = env.daemon.log_since_start();
    ensure(
        log.lines().any(|l| {
            l.contains("restored the applied translation policy")
                && l.contains(&format!("generation={g1}"))
        }),
        || {
            format!(
                "the restarted cgnatd did not log `restored the applied translation policy` with generation={g1}; its log begins:\n{}",
                log.lines().take(15).collect::<Vec<_>>().join("\n")
            )
        },
    )?;
    guard.restore()
}

/// Invalid changes are refused whole and change nothing: a pool with a bad address (one line on
/// stderr naming the field), a whole policy with one valid and one invalid edit (the valid one is
/// not applied either). A dry run shows its change and changes nothing. Then a file saved by
/// `rules get -o yaml` before someone else changed the policy is refused (ABORTED) and does not
/// undo that change.
pub fn policy_invalid_change_is_refused_whole(env: &Env) -> R {
    timed("policy_invalid_change_is_refused_whole", || {
        policy_invalid_change_is_refused_whole_(env)
    })
}

fn policy_invalid_change_is_refused_whole_(env: &Env) -> R {
    let guard = PolicyGuard::save(env, "invalid")?;
    let (g0, doc0) = (guard.generation, guard.doc.clone());
    let table0 = ctl(env, &["rules", "get"])?.check()?.stdout;
    let log_from = env.daemon.log_text().len();

    let line = refused(
        env,
        &[
            "rules",
            "add",
            "pool",
            "{name: bad, addresses: [203.0.113.300]}",
        ],
    )?;
    ensure(
        line.starts_with("cgnatctl: INVALID_ARGUMENT: pools[") && line.contains("addresses"),
        || format!("a bad pool address must be refused naming pools[N].addresses, got: {line}"),
    )?;

    // A whole policy with a valid new DNAT rule and an invalid pool: nothing of it applies.
    let mut mixed = doc0.clone();
    let never_rule = json!({
        "name": "e2e-never",
        "address": NEVER_VIP,
        "protocol": "tcp",
        "port": 8012,
        "backends": [{"address": "100.64.0.21", "port": 8001}],
    });
    push_dnat(&mut mixed, never_rule.clone())?;
    mixed
        .as_object_mut()
        .ok_or("the policy is not a mapping")?
        .entry("pools")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or("policy pools is not a list")?
        .push(json!({"name": "e2e-bad", "addresses": ["203.0.113.300"]}));
    let mixed_file = env.paths.work.join("policy-invalid-mixed.json");
    fs::write(&mixed_file, mixed.to_string())
        .map_err(|e| format!("write {}: {e}", mixed_file.display()))?;
    let mixed_file = mixed_file.to_string_lossy().into_owned();
    let line = refused(
        env,
        &[
            "rules",
            "apply",
            "-f",
            &mixed_file,
            "--expect-generation",
            &g0.to_string(),
        ],
    )?;
    ensure(
        line.starts_with("cgnatctl: INVALID_ARGUMENT: pools[") && line.contains("addresses"),
        || {
            format!(
                "a policy with a bad pool address must be refused naming pools[N].addresses, got: {line}"
            )
        },
    )?;

    // A dry run shows the change it would make, and makes none.
    let pool = format!("{{name: {DRY_RUN_POOL}, addresses: [{DRY_RUN_IP}]}}");
    let v = change(env, &["add", "pool", &pool, "--dry-run"])?;
    ensure(
        v["dry_run"] == true
            && v["applied"] == false
            && v["generation"] == g0
            && v["changes"].as_array().is_some_and(|c| {
                c.len() == 1
                    && c[0]["kind"] == "added"
                    && c[0]["path"]
                        .as_str()
                        .is_some_and(|p| p.contains(DRY_RUN_POOL))
            }),
        || {
            format!(
                "a dry run of adding pool {DRY_RUN_POOL} should show that one addition at generation {g0} and apply nothing: {v}"
            )
        },
    )?;
    let out = ctl(env, &["rules", "add", "pool", &pool, "--dry-run"])?.check()?;
    ensure(
        out.stdout.contains("dry run") && out.stdout.contains("nothing was changed"),
        || {
            format!(
                "the table output of a dry run should say nothing was changed:\n{}",
                out.stdout
            )
        },
    )?;

    // Nothing of the above changed anything.
    let (g, doc) = get_policy(env)?;
    ensure(g == g0 && doc == doc0, || {
        format!(
            "refused changes and a dry run moved the policy from generation {g0} to {g}:\nbefore: {doc0}\nafter:  {doc}"
        )
    })?;
    let table = ctl(env, &["rules", "get"])?.check()?.stdout;
    ensure(table == table0, || {
        format!("`cgnatctl rules get` changed:\n--- before ---\n{table0}\n--- after ---\n{table}")
    })?;
    let listed = pools(env)?;
    ensure(
        !listed
            .iter()
            .any(|p| p["name"] == DRY_RUN_POOL || p["name"] == "bad" || p["name"] == "e2e-bad"),
        || format!("cgnatctl pools lists a pool that was only refused or dry-run: {listed:?}"),
    )?;
    let logged = applied_lines_since(env, log_from, 0);
    ensure(logged == 0, || {
        format!(
            "nothing was applied, yet the daemon logged `{APPLIED_LINE}` {logged} times:\n{}",
            log_since(env, log_from)
        )
    })?;

    // Two operators: one saves the policy (`rules get -o yaml`) to edit it, another changes the
    // policy meanwhile; the first one's file is stale and must be refused (ABORTED) rather than
    // undo the other's change.
    let out = ctl(env, &["-o", "yaml", "rules", "get"])?.check()?;
    let mut saved: serde_yaml::Value = serde_yaml::from_str(&out.stdout)
        .map_err(|e| format!("rules get -o yaml is not YAML ({e}):\n{}", out.stdout))?;
    ensure(saved["generation"].as_u64() == Some(g0), || {
        format!(
            "rules get -o yaml should record generation {g0}:\n{}",
            out.stdout
        )
    })?;
    let mut edited = serde_json::to_value(&saved["policy"])
        .map_err(|e| format!("rules get -o yaml's policy: {e}"))?;
    push_dnat(&mut edited, never_rule)?;
    saved["policy"] =
        serde_yaml::to_value(&edited).map_err(|e| format!("the edited policy: {e}"))?;
    let stale_file = env.paths.work.join("policy-invalid-stale.yaml");
    let text = serde_yaml::to_string(&saved).map_err(|e| format!("the stale file: {e}"))?;
    fs::write(&stale_file, text).map_err(|e| format!("write {}: {e}", stale_file.display()))?;
    let other = format!(
        "{{name: {OTHER_RULE}, address: {NEVER_VIP}, protocol: tcp, port: 8013, backends: [{{address: 100.64.0.21, port: 8001}}]}}"
    );
    applied(env, &["add", "dnat", &other], g0 + 1, OTHER_RULE)?;
    let stale_file = stale_file.to_string_lossy().into_owned();
    let line = refused(env, &["rules", "apply", "-f", &stale_file])?;
    ensure(line.starts_with("cgnatctl: ABORTED: "), || {
        format!(
            "a file saved at generation {g0}, applied at generation {}, must be refused as ABORTED, got: {line}",
            g0 + 1
        )
    })?;
    let (g, doc) = get_policy(env)?;
    let rules: Vec<&str> = doc["nat"]["dnat"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    ensure(
        g == g0 + 1 && rules.contains(&OTHER_RULE) && !rules.contains(&"e2e-never"),
        || {
            format!(
                "after the stale file was refused, the other operator's change (generation {}, rule {OTHER_RULE}) must be in force and nothing of the file; rules get shows generation {g} and DNAT rules {rules:?}",
                g0 + 1
            )
        },
    )?;
    applied(
        env,
        &[
            "delete",
            "dnat",
            OTHER_RULE,
            "--expect-generation",
            &(g0 + 1).to_string(),
        ],
        g0 + 2,
        OTHER_RULE,
    )?;
    guard.restore()
}

/// The grpcurl lines of README.md between the `grpcurl-examples` markers.
fn readme_grpcurl_lines(env: &Env) -> Result<Vec<String>, String> {
    let path = env.paths.root.join("README.md");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let (begin, end) = (
        "<!-- grpcurl-examples: begin -->",
        "<!-- grpcurl-examples: end -->",
    );
    let block = text
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(block, _)| block)
        .ok_or_else(|| format!("README.md has no `{begin}` ... `{end}` block"))?;
    let lines: Vec<String> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("grpcurl"))
        .map(str::to_string)
        .collect();
    ensure(lines.len() >= 6, || {
        format!(
            "the README's grpcurl block has {} commands, expected at least 6:\n{block}",
            lines.len()
        )
    })?;
    Ok(lines)
}

/// grpcurl's JSON encodes uint64 as a string.
fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The README's grpcurl examples, run exactly as written against the lab daemon: each exits 0 and
/// shows what the README promises (the services, a method, the policy, a dry run that applies
/// nothing, a DNAT rule added and deleted, the ICMP sessions of a running ping, SERVING).
pub fn readme_grpcurl_examples(env: &Env) -> R {
    timed("readme_grpcurl_examples", || readme_grpcurl_examples_(env))
}

fn readme_grpcurl_examples_(env: &Env) -> R {
    plain_grpc_on_loopback(&env.paths.config())?;
    let lines = readme_grpcurl_lines(env)?;
    let guard = PolicyGuard::save(env, "readme")?;
    // An ICMP session for ListSessions to show: a ping that runs through the whole case.
    let mut ping = Background::spawn(
        "ping from cgn-sub1",
        proc::netns(SUB1, &["ping", "-n", "-i", "0.2", "-w", "60", SERVER_A]),
    )?;
    let mut icmp = Vec::new();
    proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        icmp = sessions_json(env, &["--proto", "icmp", "--inside", SUB1_IP]).ok()?;
        (!icmp.is_empty()).then_some(())
    });
    ensure(!icmp.is_empty(), || {
        "a ping from cgn-sub1 is running, but cgnatctl lists no ICMP session of it".to_string()
    })?;

    let mut checked = BTreeMap::new();
    for line in &lines {
        let (g_before, doc_before) = get_policy(env)?;
        let out = proc::run(
            Command::new("sh").args(["-c", line]),
            Duration::from_secs(30),
        )?;
        ensure(out.success(), || {
            format!(
                "README example failed{}\n{}",
                if out.code() == Some(127) {
                    " (grpcurl not installed? scripts/deps.sh installs it)"
                } else {
                    ""
                },
                out.describe()
            )
        })?;
        let shown = &out.stdout;
        let fail = |what: &str| format!("README example `{line}`: {what}; it printed:\n{shown}");
        let (g_after, doc_after) = get_policy(env)?;
        let kind = if line.ends_with(" list") {
            ensure(
                shown.contains("cgnat.v1.Cgnat") && shown.contains("grpc.health.v1.Health"),
                || fail("should list cgnat.v1.Cgnat and grpc.health.v1.Health"),
            )?;
            "list"
        } else if line.contains(" describe ") {
            ensure(shown.contains("rpc ApplyPolicy"), || {
                fail("should describe rpc ApplyPolicy")
            })?;
            "describe"
        } else if line.contains("/GetPolicy") {
            let v: Value =
                serde_json::from_str(shown).map_err(|e| fail(&format!("not JSON ({e})")))?;
            ensure(
                json_u64(&v["generation"]) == Some(g_before)
                    && v["policy"]["pools"]
                        .as_array()
                        .is_some_and(|p| !p.is_empty()),
                || {
                    fail(&format!(
                        "should show generation {g_before} and policy.pools"
                    ))
                },
            )?;
            "GetPolicy"
        } else if line.contains("/AddPool") && line.contains("dry_run") {
            ensure(
                shown.contains("CHANGE_KIND_ADDED") && !shown.contains("\"applied\": true"),
                || fail("a dry run should show CHANGE_KIND_ADDED and not \"applied\": true"),
            )?;
            ensure(g_after == g_before && doc_after == doc_before, || {
                fail(&format!(
                    "a dry run moved the policy from generation {g_before} to {g_after}"
                ))
            })?;
            "AddPool dry run"
        } else if line.contains("/AddDnatRule") {
            ensure(
                shown.contains("\"applied\": true") && g_after == g_before + 1,
                || {
                    fail(&format!(
                        "should be applied (generation {g_before} -> {g_after})"
                    ))
                },
            )?;
            "AddDnatRule"
        } else if line.contains("/DeleteDnatRule") {
            ensure(
                shown.contains("\"applied\": true")
                    && shown.contains("CHANGE_KIND_REMOVED")
                    && g_after == g_before + 1,
                || {
                    fail(&format!(
                        "should show the rule removed and applied (generation {g_before} -> {g_after})"
                    ))
                },
            )?;
            "DeleteDnatRule"
        } else if line.contains("/ListSessions") {
            let inside = format!("\"inside\": \"{SUB1_IP}:");
            ensure(
                shown.contains("\"protocol\": \"icmp\"") && shown.contains(&inside),
                || {
                    fail(&format!(
                        "should list the ICMP session of the running ping from {SUB1_IP}"
                    ))
                },
            )?;
            "ListSessions"
        } else if line.contains("Health/Check") {
            ensure(shown.contains("SERVING"), || fail("should show SERVING"))?;
            "Health"
        } else {
            "other (exit status only)"
        };
        *checked.entry(kind).or_insert(0) += 1;
    }
    ping.stop_with("INT", Duration::from_secs(2));
    eprintln!(
        "e2e: readme_grpcurl_examples: {} commands ran: {checked:?}",
        lines.len()
    );
    // AddDnatRule and DeleteDnatRule leave the policy as it was, one generation apart each.
    guard.restore()
}
