//! Destination NAT end to end: port forwarding with the client address preserved, load-balanced
//! services (weighted random, round robin, Maglev), client-IP affinity, full NAT, hairpinning to a
//! forwarded port, 1:1 static NAT both ways, and a backend removed by a SIGHUP reload while a
//! connection to it is open (drain and cut).
//!
//! The rules are the `nat.dnat` block of config/lab.yaml and lab-2workers.yaml (the constants in
//! env.rs name them); the backends are tests/tools/whoami.py servers on the subscribers'
//! addresses (env::Servers), which report which backend answered and the client they saw, and log
//! every request so the cases compare what the clients got with what the far side saw.
//!
//! Every client here runs in cgn-inet (192.0.2.2) unless the case says otherwise, so under two
//! workers all of a case's flows belong to the one worker that owns that client.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::Env;
use crate::cases::{R, ensure, ping_all_received, sessions_json};
use crate::env::*;
use crate::proc::{self, Background};

/// How far (in standard deviations of the binomial) a backend's share of randomly scheduled
/// connections may be from its weight's. Two-sided, the chance that one backend falls outside
/// ±4σ is about 6e-5, so a case checking three backends fails by chance about once in 5000 runs.
const SIGMAS: f64 = 4.0;

/// One completed request of `whoami.py get`: the client's address, the backend that answered
/// and the client address that backend saw.
#[derive(Debug, Clone)]
struct Hit {
    i: u64,
    local: String,
    server: String,
    client: String,
}

fn whoami(env: &Env, ns: &str, args: &[&str]) -> Command {
    let tool = env.paths.tool("whoami.py");
    let mut argv = vec![env.paths.python.as_str(), tool.as_str()];
    argv.extend_from_slice(args);
    proc::netns(ns, &argv)
}

/// `count` new TCP connections from `ns` to `to`, at most `parallel` at a time, each one GET
/// /`tag`/i. Every one must complete.
fn get(
    env: &Env,
    ns: &str,
    to: &str,
    count: u32,
    parallel: u32,
    tag: &str,
) -> Result<Vec<Hit>, String> {
    let budget = 30 + u64::from(count.div_ceil(parallel.max(1))) * 2;
    let out = proc::run(
        &mut whoami(
            env,
            ns,
            &[
                "get",
                "--to",
                to,
                "--count",
                &count.to_string(),
                "--parallel",
                &parallel.to_string(),
                "--tag",
                tag,
                "--timeout",
                &budget.to_string(),
            ],
        ),
        Duration::from_secs(budget + 15),
    )?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("whoami get output ({e}):\n{}", out.describe()))?;
    let results = v["results"].as_array().cloned().unwrap_or_default();
    if results.len() != count as usize || !out.success() {
        let errors: Vec<String> = v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(10)
                    .map(|e| e.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        return Err(format!(
            "{ns} -> {to}: {} of {count} connections completed; first errors:\n  {}",
            results.len(),
            errors.join("\n  ")
        ));
    }
    results
        .iter()
        .map(|r| {
            let f = |k: &str| {
                r[k].as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("whoami get result without {k}: {r}"))
            };
            Ok(Hit {
                i: r["i"].as_u64().ok_or_else(|| format!("no i in {r}"))?,
                local: f("local")?,
                server: f("server")?,
                client: f("client")?,
            })
        })
        .collect()
}

fn ip_of(sockaddr: &str) -> Result<Ipv4Addr, String> {
    parse_sockaddr(sockaddr).map(|(ip, _)| ip)
}

/// What the backends logged for `tag`, checked against what the clients got: every request
/// reached the backend that answered it, from the client address that backend reported, and no
/// other request with this tag arrived anywhere. Returns the requests per backend.
fn far_side(env: &Env, tag: &str, hits: &[Hit]) -> Result<BTreeMap<String, u64>, String> {
    let prefix = format!("/{tag}/");
    let logged = || -> Result<BTreeMap<String, (String, String)>, String> {
        let servers = env.servers.lock().map_err(|_| "servers lock")?;
        let mut by_path = BTreeMap::new();
        for (server, client, path) in servers.backend_requests() {
            if path.starts_with(&prefix)
                && let Some(old) = by_path.insert(path.clone(), (server.clone(), client.clone()))
            {
                return Err(format!(
                    "request {path} arrived twice: at {} from {} and at {server} from {client}",
                    old.0, old.1
                ));
            }
        }
        Ok(by_path)
    };
    // The backends' output is read by background threads: give the last lines a moment.
    let mut seen = logged()?;
    if seen.len() < hits.len() {
        proc::poll(
            Duration::from_secs(5),
            Duration::from_millis(100),
            || match logged() {
                Ok(s) if s.len() >= hits.len() => {
                    seen = s;
                    Some(())
                }
                _ => None,
            },
        );
    }
    for h in hits {
        let path = format!("/{tag}/{}", h.i);
        let want = (h.server.clone(), h.client.clone());
        ensure(seen.get(&path) == Some(&want), || {
            format!(
                "request {path} was answered by {} (client {}), but the backends logged {:?}",
                h.server,
                h.client,
                seen.get(&path)
            )
        })?;
    }
    ensure(seen.len() == hits.len(), || {
        format!(
            "the backends logged {} requests tagged {tag}, the clients completed {}",
            seen.len(),
            hits.len()
        )
    })?;
    let mut per = BTreeMap::new();
    for (server, _) in seen.values() {
        *per.entry(server.clone()).or_insert(0) += 1;
    }
    Ok(per)
}

/// `k` successes of `n` trials with probability `p` lie within ±[`SIGMAS`] standard deviations.
fn within_binomial(what: &str, k: u64, n: u64, p: f64) -> R {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let (lo, hi) = (mean - SIGMAS * sd, mean + SIGMAS * sd);
    ensure((lo..=hi).contains(&(k as f64)), || {
        format!(
            "{what}: {k} of {n} connections, expected {mean:.1} ± {SIGMAS}σ = [{lo:.1}, {hi:.1}] (σ = {sd:.2}, p = {p:.3})"
        )
    })
}

/// Every backend of `backends` not in `per` counts 0.
fn with_zeros(per: &BTreeMap<String, u64>, backends: &[&str]) -> BTreeMap<String, u64> {
    backends
        .iter()
        .map(|b| (b.to_string(), per.get(*b).copied().unwrap_or(0)))
        .collect()
}

/// Waits (up to 15 s: the API may publish worker counters with a delay) until the
/// `sessions_created` of every backend of `rule` has grown since `before` by exactly the number
/// of flows the far side saw at it.
fn created_matches(
    env: &Env,
    rule: &str,
    before: &DnatStatus,
    far: &BTreeMap<String, u64>,
    backends: &[&str],
) -> R {
    let want = with_zeros(far, backends);
    let mut last = BTreeMap::new();
    let mut error = None;
    let ok = proc::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let now = match DnatStatus::read(&env.paths) {
            Ok(s) => s,
            Err(e) => {
                error = Some(e);
                return None;
            }
        };
        if now.rule(rule).is_none() {
            error = Some(format!("cgnatctl dnat lists no rule {rule:?}: {}", now.0));
            return None;
        }
        last = backends
            .iter()
            .map(|b| {
                let grew = now
                    .backend_count(rule, b, "sessions_created")
                    .saturating_sub(before.backend_count(rule, b, "sessions_created"));
                (b.to_string(), grew)
            })
            .collect();
        (last == want).then_some(())
    });
    if ok.is_some() {
        return Ok(());
    }
    Err(format!(
        "rule {rule}: sessions_created grew by {last:?} (sum {}), the backends saw {want:?} (sum {}){}",
        last.values().sum::<u64>(),
        want.values().sum::<u64>(),
        error
            .map(|e| format!("\nlast error: {e}"))
            .unwrap_or_default()
    ))
}

/// Every connection kept the client's address (no client translation).
fn client_preserved(hits: &[Hit], what: &str) -> R {
    for h in hits {
        ensure(h.client == h.local, || {
            format!(
                "{what}: the backend {} saw the client as {}, but the client is {} (destination NAT must keep the client address)",
                h.server, h.client, h.local
            )
        })?;
    }
    Ok(())
}

fn all_at(hits: &[Hit], backend: &str, what: &str) -> R {
    for h in hits {
        ensure(h.server == backend, || {
            format!(
                "{what}: request {} from {} was answered by {}, expected {backend}",
                h.i, h.local, h.server
            )
        })?;
    }
    Ok(())
}

// --- reloads ---------------------------------------------------------------------------------

/// Writes the daemon's config copy (whole, then renamed into place).
fn write_config(env: &Env, text: &str) -> R {
    let path = &env.daemon.config;
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))
}

/// SIGHUP, then wait (up to 15 s) until `cgnatctl dnat` reports a new generation.
fn reload_and_wait(env: &Env, what: &str) -> Result<u64, String> {
    let before = DnatStatus::read(&env.paths)?.generation();
    let log_len = env.daemon.log_text().len();
    env.daemon.reload()?;
    let generation = proc::poll(Duration::from_secs(15), Duration::from_millis(200), || {
        DnatStatus::read(&env.paths)
            .ok()
            .map(|s| s.generation())
            .filter(|g| *g > before)
    });
    env.daemon.ensure_alive()?;
    generation.ok_or_else(|| {
        let log = env.daemon.log_text();
        format!(
            "{what}: after SIGHUP the destination NAT generation stayed {before} for 15 s\n--- cgnatd log since the signal ---\n{}",
            proc::tail(log.get(log_len..).unwrap_or(&log), 30)
        )
    })
}

/// An edit of `nat.dnat` in the daemon's config copy, applied with SIGHUP. `restore` puts the
/// original file back and reloads again; dropping an edit that was not restored does the same
/// (best effort), so a failing case leaves the rules as it found them.
struct DnatEdit<'a> {
    env: &'a Env,
    original: String,
    active: bool,
}

impl<'a> DnatEdit<'a> {
    fn apply(
        env: &'a Env,
        what: &str,
        edit: impl FnOnce(&mut Vec<serde_yaml::Value>) -> R,
    ) -> Result<DnatEdit<'a>, String> {
        let path = &env.daemon.config;
        let original =
            fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&original)
            .map_err(|e| format!("{} is not YAML: {e}", path.display()))?;
        let rules = v
            .get_mut("nat")
            .and_then(|n| n.get_mut("dnat"))
            .and_then(serde_yaml::Value::as_sequence_mut)
            .ok_or_else(|| format!("{} has no nat.dnat list", path.display()))?;
        edit(rules)?;
        let text = serde_yaml::to_string(&v).map_err(|e| format!("serialize the config: {e}"))?;
        // From here on the guard puts the original back, whatever fails.
        let guard = DnatEdit {
            env,
            original,
            active: true,
        };
        write_config(env, &text)?;
        reload_and_wait(env, what)?;
        Ok(guard)
    }

    fn restore(mut self) -> R {
        self.active = false;
        write_config(self.env, &self.original)?;
        reload_and_wait(self.env, "restoring the original config").map(|_| ())
    }
}

impl Drop for DnatEdit<'_> {
    fn drop(&mut self) {
        if self.active {
            let _ = write_config(self.env, &self.original);
            let _ = reload_and_wait(self.env, "restoring the original config");
        }
    }
}

fn rule_mut<'v>(
    rules: &'v mut [serde_yaml::Value],
    name: &str,
) -> Result<&'v mut serde_yaml::Value, String> {
    rules
        .iter_mut()
        .find(|r| r["name"].as_str() == Some(name))
        .ok_or_else(|| format!("the config has no dnat rule {name:?}"))
}

/// Removes backend `backend` ("ip:port") from rule `name`.
fn remove_backend(rules: &mut [serde_yaml::Value], name: &str, backend: &str) -> R {
    let (ip, port) = parse_sockaddr(backend)?;
    let rule = rule_mut(rules, name)?;
    let list = rule
        .get_mut("backends")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .ok_or_else(|| format!("rule {name:?} has no backends list"))?;
    let before = list.len();
    list.retain(|b| {
        !(b["address"].as_str() == Some(&ip.to_string())
            && b["port"].as_u64() == Some(u64::from(port)))
    });
    ensure(list.len() + 1 == before, || {
        format!("rule {name:?} does not list backend {backend} once")
    })
}

fn set_field(rules: &mut [serde_yaml::Value], name: &str, key: &str, value: &str) -> R {
    rule_mut(rules, name)?
        .as_mapping_mut()
        .ok_or_else(|| format!("rule {name:?} is not a mapping"))?
        .insert(key.into(), value.into());
    Ok(())
}

// --- a long connection ----------------------------------------------------------------------

/// A `whoami.py hold` connection from cgn-inet: a line every 200 ms, each answer awaited 3 s.
struct Held {
    bg: Background,
    /// The client's ip:port (the session's remote end).
    local: String,
    /// The backend that answers.
    server: String,
}

fn hold(env: &Env, to: &str) -> Result<Held, String> {
    let mut bg = Background::spawn(
        &format!("whoami hold {to}"),
        whoami(
            env,
            INET,
            &[
                "hold",
                "--to",
                to,
                "--interval",
                "0.2",
                "--duration",
                "150",
                "--reply-timeout",
                "3",
            ],
        ),
    )?;
    let line = bg.wait_line(false, Duration::from_secs(10), |l| {
        l.contains("\"connected\"")
    })?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("hold output ({e}): {line}"))?;
    let f = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("hold output without {k}: {line}"))
    };
    let (local, server) = (f("local")?, f("server")?);
    ensure(v["client"].as_str() == Some(local.as_str()), || {
        format!(
            "the held connection's backend saw {}, the client is {local}",
            v["client"]
        )
    })?;
    Ok(Held { bg, local, server })
}

fn json_events(bg: &Background) -> Vec<Value> {
    crate::cases::json_lines(&bg.stdout_lines())
}

impl Held {
    fn last_seq(&self) -> u64 {
        json_events(&self.bg)
            .iter()
            .filter(|v| v["event"] == "echo")
            .filter_map(|v| v["seq"].as_u64())
            .max()
            .unwrap_or(0)
    }

    fn error(&self) -> Option<String> {
        json_events(&self.bg)
            .into_iter()
            .find(|v| v["event"] == "error")
            .map(|v| v.to_string())
    }

    /// The connection makes `more` further round trips (within 10 s) and has not failed.
    fn keeps_working(&mut self, more: u64, what: &str) -> R {
        let target = self.last_seq() + more;
        let got = self.bg.wait_line(false, Duration::from_secs(10), |l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .is_some_and(|v| v["event"] == "echo" && v["seq"].as_u64() >= Some(target))
        });
        if let Some(e) = self.error() {
            return Err(format!("{what}: the held connection failed: {e}"));
        }
        got.map(|_| ())
            .map_err(|e| format!("{what}: the held connection stalled: {e}"))
    }

    /// The session list entry of this connection (inside = the backend, remote = the client).
    fn sessions(&self, env: &Env) -> Result<Vec<Value>, String> {
        sessions_json(
            env,
            &[
                "--proto",
                "tcp",
                "--inside",
                &self.server,
                "--remote",
                &self.local,
            ],
        )
    }
}

// --- the cases ------------------------------------------------------------------------------

/// Port forwarding (forward-web, forward-dns): TCP from cgn-inet to 203.0.113.100:8080 reaches
/// 100.64.0.11:8000, which sees the real client address and port (192.0.2.2, no client
/// translation), and the answers come back; UDP to 203.0.113.100:5353 round-trips to the echo on
/// 100.64.0.11:5353, which also sees 192.0.2.2. The rule counters count the flows, and the UDP
/// flow is listed as a session with inside = backend, outside = the VIP, remote = the client.
pub fn port_forwarding(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let before = DnatStatus::read(&env.paths)?;
    let to = format!("{VIP_FORWARD}:{FORWARD_PORT}");
    let hits = get(env, INET, &to, 3, 1, "forward")?;
    all_at(&hits, FORWARD_BACKEND, "forward-web")?;
    client_preserved(&hits, "forward-web")?;
    for h in &hits {
        ensure(ip_of(&h.local)?.to_string() == INET_IP, || {
            format!("the client in cgn-inet connected from {}", h.local)
        })?;
    }
    let far = far_side(env, "forward", &hits)?;
    created_matches(env, "forward-web", &before, &far, &[FORWARD_BACKEND])?;

    // UDP: three datagrams of one flow, each answered by the backend's echo.
    let port = 45353u16;
    let out = proc::run(
        &mut proc::netns(
            INET,
            &[
                &env.paths.python,
                &env.paths.tool("udp_echo.py"),
                "client",
                "--server",
                VIP_FORWARD,
                "--port",
                &DNS_PORT.to_string(),
                "--bind-port",
                &port.to_string(),
                "--count",
                "3",
                "--timeout",
                "2",
                "--message",
                "dnat-forward",
            ],
        ),
        Duration::from_secs(20),
    )?;
    let v: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("udp client output ({e}):\n{}", out.describe()))?;
    let client = format!("{INET_IP}:{port}");
    let replies = v["replies"].as_array().cloned().unwrap_or_default();
    ensure(replies.len() == 3, || {
        format!(
            "{VIP_FORWARD}:{DNS_PORT}: {} of 3 UDP replies came back: {v}",
            replies.len()
        )
    })?;
    for r in &replies {
        ensure(r["seen"].as_str() == Some(client.as_str()), || {
            format!(
                "the UDP backend saw the client as {}, expected {client}",
                r["seen"]
            )
        })?;
    }
    // The echo logs a datagram after answering it: give the last line a moment.
    let seen_as = format!("\"seen\": \"{client}\"");
    let count_logged = || -> usize {
        env.servers
            .lock()
            .map(|s| {
                s.dns_backend
                    .stdout_lines()
                    .iter()
                    .filter(|l| l.contains("dnat-forward") && l.contains(&seen_as))
                    .count()
            })
            .unwrap_or(0)
    };
    let mut logged = 0;
    proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        logged = count_logged();
        (logged >= 3).then_some(())
    });
    ensure(logged >= 3, || {
        format!("the UDP backend logged {logged} of the 3 datagrams from {client}")
    })?;
    let dns_backend = format!("{DNS_BACKEND_IP}:{DNS_PORT}");
    let listed = sessions_json(
        env,
        &[
            "--proto",
            "udp",
            "--inside",
            &dns_backend,
            "--remote",
            &client,
        ],
    )?;
    ensure(listed.len() == 1, || {
        format!("expected one session inside {dns_backend}, remote {client}: {listed:?}")
    })?;
    ensure(
        listed[0]["outside"].as_str() == Some(&format!("{VIP_FORWARD}:{DNS_PORT}")),
        || {
            format!(
                "the forwarded UDP session's outside end must be {VIP_FORWARD}:{DNS_PORT}: {}",
                listed[0]
            )
        },
    )?;
    let mut one = BTreeMap::new();
    one.insert(dns_backend.clone(), 1);
    created_matches(env, "forward-dns", &before, &one, &[&dns_backend])
}

/// A weighted random service (rule web, weights 1:2:3): 300 new connections from cgn-inet to
/// 203.0.113.101:80 all complete, each at the backend the client was told, with the client address
/// kept. Each backend's count is within ±4 standard deviations of its binomial expectation
/// (50 ± 25.8, 100 ± 32.7, 150 ± 34.6; about 2e-4 chance of a false failure per run, see
/// [`SIGMAS`]), and the per-backend `sessions_created` in `cgnatctl dnat` grew by exactly what each
/// backend saw (so by 300 in all), as did the rule's own `sessions_created` (the sum over its
/// backends).
pub fn service_spreads_by_weight(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let n = 300u32;
    let before = DnatStatus::read(&env.paths)?;
    let hits = get(env, INET, &format!("{VIP_SERVICE}:80"), n, 8, "spread")?;
    client_preserved(&hits, "web")?;
    let far = far_side(env, "spread", &hits)?;
    let names: Vec<&str> = SERVICE_BACKENDS.iter().map(|(b, _)| *b).collect();
    for b in far.keys() {
        ensure(names.contains(&b.as_str()), || {
            format!("rule web sent connections to {b}, which is not one of its backends {names:?}")
        })?;
    }
    let total: u64 = SERVICE_BACKENDS.iter().map(|(_, w)| w).sum();
    for (b, w) in SERVICE_BACKENDS {
        let k = far.get(b).copied().unwrap_or(0);
        within_binomial(
            &format!("web backend {b} (weight {w} of {total}); all: {far:?}"),
            k,
            u64::from(n),
            w as f64 / total as f64,
        )?;
    }
    created_matches(env, "web", &before, &far, &names)?;
    let now = DnatStatus::read(&env.paths)?;
    let sum: u64 = names
        .iter()
        .map(|b| {
            now.backend_count("web", b, "sessions_created")
                .saturating_sub(before.backend_count("web", b, "sessions_created"))
        })
        .sum();
    ensure(sum >= u64::from(n), || {
        format!("rule web's backends created {sum} sessions for {n} connections")
    })?;
    let rule_grew = now
        .rule_count("web", "sessions_created")
        .saturating_sub(before.rule_count("web", "sessions_created"));
    ensure(rule_grew >= u64::from(n), || {
        format!("rule web's own sessions_created grew by {rule_grew} for {n} connections")
    })
}

/// Weighted round robin (rule web-rr, weights 1:2:3): 60 connections to 203.0.113.101:81 land
/// exactly 10/20/30. Exact, not statistical: over every 6 new flows of a worker each backend gets
/// exactly its weight, and all 60 come from one client, whose flows one worker owns (also with two
/// workers). The counters agree.
pub fn round_robin_exact(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let before = DnatStatus::read(&env.paths)?;
    let hits = get(env, INET, &format!("{VIP_SERVICE}:81"), 60, 4, "rr")?;
    client_preserved(&hits, "web-rr")?;
    let far = far_side(env, "rr", &hits)?;
    let names: Vec<&str> = SERVICE_BACKENDS.iter().map(|(b, _)| *b).collect();
    let want: BTreeMap<String, u64> = SERVICE_BACKENDS
        .iter()
        .map(|(b, w)| (b.to_string(), 10 * w))
        .collect();
    ensure(with_zeros(&far, &names) == want && far.len() == 3, || {
        format!("round robin 1:2:3 over 60 connections: got {far:?}, expected exactly {want:?}")
    })?;
    created_matches(env, "web-rr", &before, &far, &names)
}

/// Maglev (rule web-maglev, weight 1 each): 60 connections to 203.0.113.101:82, hashed by their
/// 5-tuples (distinct source ports), all complete and spread over the three backends within ±4σ of
/// 20 each ([5.4, 34.6]); the counters agree.
pub fn maglev_spreads(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let n = 60u32;
    let before = DnatStatus::read(&env.paths)?;
    let hits = get(env, INET, &format!("{VIP_SERVICE}:82"), n, 4, "maglev")?;
    client_preserved(&hits, "web-maglev")?;
    let far = far_side(env, "maglev", &hits)?;
    let names: Vec<&str> = SERVICE_BACKENDS.iter().map(|(b, _)| *b).collect();
    for b in far.keys() {
        ensure(names.contains(&b.as_str()), || {
            format!("rule web-maglev sent connections to {b}, not one of {names:?}")
        })?;
    }
    for b in &names {
        within_binomial(
            &format!("web-maglev backend {b}; all: {far:?}"),
            far.get(*b).copied().unwrap_or(0),
            u64::from(n),
            1.0 / 3.0,
        )?;
    }
    created_matches(env, "web-maglev", &before, &far, &names)
}

/// Client-IP affinity (rule web-sticky: random 1:2:3, affinity_timeout 30 s): 20 connections from
/// one client to 203.0.113.103:80, one after another, all reach the same backend. Without affinity
/// that would happen with probability about 1e-6 (the weighted random spread is checked above).
pub fn affinity(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let status = DnatStatus::read(&env.paths)?;
    let rule = status
        .rule("web-sticky")
        .ok_or_else(|| format!("cgnatctl dnat lists no rule web-sticky: {}", status.0))?;
    ensure(rule["affinity_timeout_s"].as_u64() == Some(30), || {
        format!("web-sticky must report affinity_timeout_s 30: {rule}")
    })?;
    let hits = get(env, INET, &format!("{VIP_STICKY}:80"), 20, 1, "sticky")?;
    client_preserved(&hits, "web-sticky")?;
    let far = far_side(env, "sticky", &hits)?;
    ensure(far.len() == 1, || {
        format!(
            "with client-IP affinity one client's 20 connections went to several backends: {far:?}"
        )
    })
}

/// Full NAT (rule web-fullnat, snat: lab): from cgn-inet to 203.0.113.102:80, the backend
/// 100.64.0.23:8003 sees the client as an address of the pool (203.0.113.1-6), not as 192.0.2.2,
/// and the answers come back to the real client.
pub fn full_nat(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let hits = get(env, INET, &format!("{VIP_FULLNAT}:80"), 3, 1, "fullnat")?;
    all_at(&hits, FULLNAT_BACKEND, "web-fullnat")?;
    for h in &hits {
        let seen = ip_of(&h.client)?;
        ensure(in_pool(seen), || {
            format!(
                "full NAT: the backend saw the client {} as {}, expected a pool address (203.0.113.1-6)",
                h.local, h.client
            )
        })?;
    }
    far_side(env, "fullnat", &hits).map(|_| ())
}

/// Hairpinning to a forwarded port: cgn-sub2 (100.64.0.12) connects to 203.0.113.100:8080; the
/// NAT sends it back inside to 100.64.0.11:8000 and translates the client to a pool address (else
/// the backend would answer 100.64.0.12 directly and the client would drop the answer). cgn-sub1,
/// the backend's own host, reaching its own service through the VIP works the same way.
pub fn hairpin(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let to = format!("{VIP_FORWARD}:{FORWARD_PORT}");
    for (ns, ip, tag) in [
        (SUB2, SUB2_IP, "hairpin-sub2"),
        (SUB1, SUB1_IP, "hairpin-sub1"),
    ] {
        let hits = get(env, ns, &to, 3, 1, tag)?;
        all_at(&hits, FORWARD_BACKEND, &format!("hairpin from {ns}"))?;
        for h in &hits {
            ensure(ip_of(&h.local)?.to_string() == ip, || {
                format!("{ns} connected from {}, expected {ip}", h.local)
            })?;
            ensure(in_pool(ip_of(&h.client)?), || {
                format!(
                    "hairpin from {ns}: the backend saw the client {} as {}, expected a pool address",
                    h.local, h.client
                )
            })?;
        }
        far_side(env, tag, &hits)?;
    }
    Ok(())
}

/// 1:1 static NAT (rule static-host, 203.0.113.50 ⇄ 100.64.0.24): from cgn-inet, ping to
/// 203.0.113.50 is answered (by 100.64.0.24), and TCP to 203.0.113.50:8004 (no port rule) reaches
/// 100.64.0.24:8004 with the real client address; from cgn-sub2 with source 100.64.0.24, the HTTP
/// server in cgn-inet sees the connection coming from 203.0.113.50 (not from the SNAT pool).
pub fn static_one_to_one(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    ping_all_received(INET, STATIC_OUTSIDE_IP, 3)?;
    let port = parse_sockaddr(STATIC_BACKEND)?.1;
    let hits = get(
        env,
        INET,
        &format!("{STATIC_OUTSIDE_IP}:{port}"),
        3,
        1,
        "static",
    )?;
    all_at(&hits, STATIC_BACKEND, "static-host inbound")?;
    client_preserved(&hits, "static-host inbound")?;
    far_side(env, "static", &hits)?;

    let url = format!("http://{SERVER_A}:{HTTP_PORT}/whoami");
    let out = proc::run(
        &mut proc::netns(
            SUB2,
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                "--interface",
                STATIC_INSIDE_IP,
                &url,
            ],
        ),
        Duration::from_secs(15),
    )?
    .check()?;
    let (seen, _) = parse_sockaddr(&out.stdout)?;
    ensure(seen.to_string() == STATIC_OUTSIDE_IP, || {
        format!(
            "outbound from the 1:1 host {STATIC_INSIDE_IP}: {SERVER_A} saw {}, expected {STATIC_OUTSIDE_IP}",
            out.stdout.trim()
        )
    })?;
    let logged = env
        .servers
        .lock()
        .map_err(|_| "servers lock")?
        .http_requests()
        .iter()
        .any(|(client, path, _)| path == "/whoami" && client == out.stdout.trim());
    ensure(logged, || {
        format!(
            "the HTTP server did not log the request from {}",
            out.stdout.trim()
        )
    })
}

/// Removing a backend with `on_backend_removal: drain` (the default) while a connection to it is
/// open: a connection to 203.0.113.101:80 (rule web) is held open (a round trip every 200 ms);
/// its backend is removed from the config copy and cgnatd reloaded (SIGHUP, new generation). The
/// held connection keeps working and keeps its session, and 60 new connections never reach the
/// removed backend. Then the original config is restored (and reloaded) and the held connection
/// still works.
pub fn backend_removed_mid_run(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let mut held = hold(env, &format!("{VIP_SERVICE}:80"))?;
    let gone = held.server.clone();
    let listed = held.sessions(env)?;
    ensure(
        listed.len() == 1 && listed[0]["outside"].as_str() == Some(&format!("{VIP_SERVICE}:80")),
        || {
            format!(
                "the held connection {} -> {gone} should be one session with outside {VIP_SERVICE}:80: {listed:?}",
                held.local
            )
        },
    )?;
    let edit = DnatEdit::apply(env, &format!("remove {gone} from rule web"), |rules| {
        remove_backend(rules, "web", &gone)
    })?;
    held.keeps_working(10, &format!("after {gone} was removed (drain)"))?;
    let hits = get(env, INET, &format!("{VIP_SERVICE}:80"), 60, 4, "drain")?;
    let far = far_side(env, "drain", &hits)?;
    ensure(!far.contains_key(&gone), || {
        format!("after {gone} was removed from rule web, new connections still reached it: {far:?}")
    })?;
    let listed = held.sessions(env)?;
    ensure(listed.len() == 1, || {
        format!("draining: the held connection's session is gone: {listed:?}")
    })?;
    held.keeps_working(5, "after the new connections")?;
    edit.restore()?;
    held.keeps_working(5, "after the original config was restored")?;
    let _ = held.bg.stop_with("TERM", Duration::from_secs(3));
    Ok(())
}

/// Removing a backend with `on_backend_removal: cut`: as above, but the reload also sets rule web
/// to cut. The held connection's session is deleted: the connection stops getting answers (or is
/// reset), the session list has no session of it any more, the backend's `sessions_current` in
/// `cgnatctl dnat` is 0 (or the backend is no longer listed), and 30 new connections never reach
/// it. The original config is restored afterwards.
pub fn backend_cut_mid_run(env: &Env) -> R {
    has_dnat(&env.paths.config())?;
    let mut held = hold(env, &format!("{VIP_SERVICE}:80"))?;
    let gone = held.server.clone();
    held.keeps_working(2, "before the reload")?;
    let live = proc::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let s = DnatStatus::read(&env.paths).ok()?;
        (s.backend_count("web", &gone, "sessions_current") >= 1).then_some(())
    });
    ensure(live.is_some(), || {
        format!(
            "the held connection is open, yet rule web's backend {gone} reports no current session"
        )
    })?;
    let edit = DnatEdit::apply(
        env,
        &format!("remove {gone} from rule web, with on_backend_removal: cut"),
        |rules| {
            remove_backend(rules, "web", &gone)?;
            set_field(rules, "web", "on_backend_removal", "cut")
        },
    )?;
    // Answers awaited 3 s: a cut connection reports an error within that (or at once on a reset).
    held.bg
        .wait_line(false, Duration::from_secs(15), |l| l.contains("\"error\""))
        .map_err(|e| format!("the connection to {gone} kept working after the cut: {e}"))?;
    let cut = proc::poll(Duration::from_secs(5), Duration::from_millis(250), || {
        held.sessions(env).ok().filter(|s| s.is_empty())
    });
    ensure(cut.is_some(), || {
        format!(
            "after the cut, a session inside {gone} remote {} is still listed: {:?}",
            held.local,
            held.sessions(env)
        )
    })?;
    let mut current = u64::MAX;
    let zero = proc::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let s = DnatStatus::read(&env.paths).ok()?;
        current = s.backend_count("web", &gone, "sessions_current");
        (current == 0).then_some(())
    });
    ensure(zero.is_some(), || {
        format!("after the cut, rule web's backend {gone} still reports sessions_current {current}")
    })?;
    let hits = get(env, INET, &format!("{VIP_SERVICE}:80"), 30, 4, "cut")?;
    let far = far_side(env, "cut", &hits)?;
    ensure(!far.contains_key(&gone), || {
        format!("after {gone} was cut from rule web, new connections still reached it: {far:?}")
    })?;
    let _ = held.bg.stop_with("TERM", Duration::from_secs(3));
    edit.restore()
}
