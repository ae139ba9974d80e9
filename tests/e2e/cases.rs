//! The end-to-end test cases. Each one drives real traffic through cgnatd in the lab and
//! checks what the far side saw (addresses, ports, bytes, counters), not just exit codes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::process::Command;
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::Env;
use crate::env::*;
use crate::proc::{self, Background};

pub(crate) type R = Result<(), String>;

pub(crate) fn ensure(cond: bool, msg: impl FnOnce() -> String) -> R {
    if cond { Ok(()) } else { Err(msg()) }
}

/// tcpdump in a namespace, started and confirmed listening before traffic is sent.
struct Capture(Background);

impl Capture {
    fn start(ns: &str, iface: &str, filter: &str) -> Result<Capture, String> {
        let mut bg = Background::spawn(
            &format!("tcpdump {ns}/{iface}"),
            proc::netns(
                ns,
                &[
                    "tcpdump", "-n", "-l", "-v", "-c", "2000", "-i", iface, filter,
                ],
            ),
        )?;
        bg.wait_line(true, Duration::from_secs(10), |l| {
            l.contains("listening on")
        })?;
        Ok(Capture(bg))
    }

    /// Stops the capture (SIGINT flushes tcpdump) and returns its lines.
    fn finish(mut self) -> Vec<String> {
        thread::sleep(Duration::from_millis(300));
        self.0.stop_with("INT", Duration::from_secs(3));
        self.0.stdout_lines()
    }
}

fn ping(ns: &str, dst: &str, count: u32) -> Result<proc::Output, String> {
    proc::run(
        &mut proc::netns(
            ns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                "-t",
                "64",
                dst,
            ],
        ),
        Duration::from_secs(u64::from(count) + 10),
    )
}

pub(crate) fn ping_all_received(ns: &str, dst: &str, count: u32) -> R {
    let out = ping(ns, dst, count)?;
    let want = format!("{count} packets transmitted, {count} received");
    ensure(out.success() && out.stdout.contains(&want), || {
        format!(
            "ping {ns} -> {dst}: expected `{want}` (0% loss)\n{}",
            out.describe()
        )
    })
}

/// An HTTP request from `ns` to server A's `/whoami`: the (address, port) the server saw.
fn http_whoami(ns: &str) -> Result<(Ipv4Addr, u16), String> {
    let url = format!("http://{SERVER_A}:{HTTP_PORT}/whoami");
    let out = proc::run(
        &mut proc::netns(ns, &["curl", "-sS", "--max-time", "10", &url]),
        Duration::from_secs(15),
    )?
    .check()?;
    parse_sockaddr(&out.stdout)
}

fn stats(env: &Env) -> Result<Stats, String> {
    Stats::read(&env.paths)
}

pub(crate) fn udp_client(
    env: &Env,
    ns: &str,
    server: &str,
    bind_port: u16,
    count: u32,
) -> Result<Value, String> {
    let out = proc::run(
        &mut proc::netns(
            ns,
            &[
                &env.paths.python,
                &env.paths.tool("udp_echo.py"),
                "client",
                "--server",
                server,
                "--port",
                &UDP_PORT.to_string(),
                "--bind-port",
                &bind_port.to_string(),
                "--count",
                &count.to_string(),
                "--timeout",
                "2",
                "--message",
                ns,
            ],
        ),
        Duration::from_secs(u64::from(count) * 2 + 10),
    )?;
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("udp client output ({e}):\n{}", out.describe()))
}

/// The one (address, port) the server saw for a UDP flow, checked to be a pool address and
/// stable over every reply of the flow.
fn udp_mapping(
    env: &Env,
    ns: &str,
    server: &str,
    bind_port: u16,
    count: u32,
) -> Result<(Ipv4Addr, u16), String> {
    let v = udp_client(env, ns, server, bind_port, count)?;
    let inside = if ns == SUB1 { SUB1_IP } else { SUB2_IP };
    ensure(
        v["local"].as_str() == Some(&format!("{inside}:{bind_port}")),
        || {
            format!(
                "{ns}: UDP client bound to {}, expected {inside}:{bind_port}",
                v["local"]
            )
        },
    )?;
    let replies = v["replies"].as_array().cloned().unwrap_or_default();
    ensure(replies.len() == count as usize, || {
        format!(
            "{ns} -> {server}:{UDP_PORT}: {} of {count} UDP replies arrived: {v}",
            replies.len()
        )
    })?;
    let seen: BTreeSet<(Ipv4Addr, u16)> = replies
        .iter()
        .map(|r| parse_sockaddr(r["seen"].as_str().unwrap_or("")))
        .collect::<Result<_, _>>()?;
    ensure(seen.len() == 1, || {
        format!("{ns}: one UDP flow was seen from several sources: {seen:?}")
    })?;
    let (ip, port) = *seen.iter().next().ok_or("no mapping")?;
    ensure(in_pool(ip), || {
        format!("{ns}: server saw {ip}:{port}, not a pool address (203.0.113.1-6)")
    })?;
    Ok((ip, port))
}

pub fn mgmt_health(env: &Env) -> R {
    let out = proc::run(env.paths.ctl().arg("health"), Duration::from_secs(10))?;
    ensure(out.success(), || {
        format!("cgnatctl health failed\n{}", out.describe())
    })?;
    let s = stats(env)?;
    ensure(
        s.0["workers"].as_array().is_some_and(|w| !w.is_empty()),
        || format!("stats report no workers: {}", s.0),
    )
}

pub fn check_config_accepts_lab(env: &Env) -> R {
    let out = proc::run(
        Command::new(env.paths.cgnatd())
            .arg("--check-config")
            .arg(env.paths.config()),
        Duration::from_secs(10),
    )?;
    ensure(out.success() && out.stdout.contains("config OK"), || {
        format!(
            "--check-config config/lab.yaml should print `config OK` and exit 0\n{}",
            out.describe()
        )
    })
}

pub fn check_config_rejects_unknown_field(env: &Env) -> R {
    let lab =
        fs::read_to_string(env.paths.config()).map_err(|e| format!("read config/lab.yaml: {e}"))?;
    let broken = env.paths.work.join("broken.yaml");
    fs::write(&broken, format!("{lab}\nbogus_e2e_field: 1\n")).map_err(|e| e.to_string())?;
    let out = proc::run(
        Command::new(env.paths.cgnatd())
            .arg("--check-config")
            .arg(&broken),
        Duration::from_secs(10),
    )?;
    ensure(!out.timed_out && out.code().is_some_and(|c| c != 0), || {
        format!(
            "--check-config must reject an unknown field with a non-zero exit\n{}",
            out.describe()
        )
    })?;
    ensure(
        format!("{}{}", out.stdout, out.stderr).contains("bogus_e2e_field"),
        || {
            format!(
                "the error must name the unknown field `bogus_e2e_field`\n{}",
                out.describe()
            )
        },
    )
}

pub fn ping_nat_inside_address(_env: &Env) -> R {
    ping_all_received(SUB1, NAT_INSIDE_IP, 5)?;
    ping_all_received(SUB2, NAT_INSIDE_IP, 5)
}

/// A router must not forward a packet whose TTL runs out on it: it answers ICMP time exceeded
/// from its own address on the arrival side (what traceroute shows as the hop), and counts it.
pub fn ttl_expiry_answered_with_time_exceeded(env: &Env) -> R {
    let before = stats(env)?;
    let mut replies = 0;
    for (ns, dst) in [(SUB1, SERVER_A), (SUB2, SERVER_B)] {
        let out = proc::run(
            &mut proc::netns(
                ns,
                &[
                    "ping", "-n", "-c", "2", "-i", "0.3", "-W", "2", "-t", "1", dst,
                ],
            ),
            Duration::from_secs(15),
        )?;
        let text = format!("{}{}", out.stdout, out.stderr);
        let hits = text
            .lines()
            .filter(|l| {
                l.contains(&format!("From {NAT_INSIDE_IP}")) && l.contains("Time to live exceeded")
            })
            .count();
        ensure(hits >= 1, || {
            format!("ping -t 1 from {ns} to {dst}: no time-exceeded from {NAT_INSIDE_IP}:\n{text}")
        })?;
        replies += hits as u64;
    }
    let after = stats(env)?;
    let grew = |k: &str| after.total(k).saturating_sub(before.total(k));
    ensure(grew("icmp_errors_sent") >= replies, || {
        format!(
            "{replies} time-exceeded seen, icmp_errors_sent grew by {}",
            grew("icmp_errors_sent")
        )
    })?;
    ensure(
        after.drop_count("ttl_exceeded") > before.drop_count("ttl_exceeded"),
        || "ttl_exceeded drops did not grow".to_string(),
    )
}

/// Echo requests as the server side saw them: (source, destination, ttl).
fn parse_echo_requests(lines: &[String]) -> Vec<(String, String, u8)> {
    // tcpdump -v prints "IP (tos 0x0, ttl 63, id ..." then "    SRC > DST: ICMP echo request, ...".
    let mut out = Vec::new();
    let mut ttl: Option<u8> = None;
    for l in lines {
        if let Some(i) = l.find("ttl ") {
            ttl = l[i + 4..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|t| t.parse().ok());
        } else if l.contains("ICMP echo request") {
            let mut parts = l.split_whitespace();
            let src = parts.next().unwrap_or("").to_string();
            let _gt = parts.next();
            let dst = parts.next().unwrap_or("").trim_end_matches(':').to_string();
            out.push((src, dst, ttl.take().unwrap_or(0)));
        }
    }
    out
}

pub fn ping_servers_through_nat(_env: &Env) -> R {
    let pairs = [
        (SUB1, SERVER_A),
        (SUB1, SERVER_B),
        (SUB2, SERVER_A),
        (SUB2, SERVER_B),
    ];
    // Warm-up: ARP on both sides and session creation may cost the first echo.
    for (ns, dst) in pairs {
        let _ = ping(ns, dst, 2)?;
    }
    let cap = Capture::start(INET, "eth0", "icmp[icmptype] == icmp-echo")?;
    let mut failures = Vec::new();
    for (ns, dst) in pairs {
        if let Err(e) = ping_all_received(ns, dst, 5) {
            failures.push(e);
        }
    }
    let lines = cap.finish();
    ensure(failures.is_empty(), || failures.join("\n"))?;
    let seen = parse_echo_requests(&lines);
    ensure(seen.len() >= 20, || {
        format!(
            "cgn-inet saw {} echo requests, expected 20:\n{}",
            seen.len(),
            lines.join("\n")
        )
    })?;
    for (src, dst, ttl) in &seen {
        let ip: Ipv4Addr = src
            .parse()
            .map_err(|e| format!("capture source {src:?}: {e}"))?;
        ensure(in_pool(ip), || {
            format!("echo request to {dst} arrived from {src}, not from the pool")
        })?;
        ensure(*ttl == 63, || {
            format!(
                "echo request {src} > {dst} arrived with TTL {ttl}; sent with 64, a NAT hop must decrement it"
            )
        })?;
    }
    let dsts: BTreeSet<&str> = seen.iter().map(|(_, d, _)| d.as_str()).collect();
    ensure(dsts.contains(SERVER_A) && dsts.contains(SERVER_B), || {
        format!("echo requests reached only {dsts:?}")
    })
}

pub fn udp_request_response(env: &Env) -> R {
    let before = stats(env)?;
    // The same inside source port on both subscribers: the NAT must still keep them apart.
    let a1 = udp_mapping(env, SUB1, SERVER_A, 40000, 3)?;
    let a2 = udp_mapping(env, SUB2, SERVER_A, 40000, 3)?;
    let b1 = udp_mapping(env, SUB1, SERVER_B, 40001, 3)?;
    let b2 = udp_mapping(env, SUB2, SERVER_B, 40001, 3)?;
    ensure(a1 != a2, || {
        format!("sub1 and sub2 flows to {SERVER_A} collide on {a1:?}")
    })?;
    ensure(b1 != b2, || {
        format!("sub1 and sub2 flows to {SERVER_B} collide on {b1:?}")
    })?;
    // The server's own log must show the same translated sources.
    let logged: BTreeSet<String> = env
        .servers
        .lock()
        .map_err(|_| "servers lock")?
        .udp_a
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["seen"].as_str().map(str::to_string))
        .collect();
    for (ip, port) in [a1, a2] {
        ensure(logged.contains(&format!("{ip}:{port}")), || {
            format!("UDP server log lacks {ip}:{port}: {logged:?}")
        })?;
    }
    let after = stats(env)?;
    let grew = |k: &str| after.total(k).saturating_sub(before.total(k));
    ensure(
        grew("in2out_packets") >= 12 && grew("out2in_packets") >= 12,
        || {
            format!(
                "12 datagrams each way crossed the NAT, counters grew in2out {} out2in {}",
                grew("in2out_packets"),
                grew("out2in_packets")
            )
        },
    )?;
    ensure(grew("sessions_created") >= 4, || {
        format!(
            "4 new UDP flows, sessions_created grew by {}",
            grew("sessions_created")
        )
    })
}

fn sha256_file(path: &std::path::Path) -> Result<String, String> {
    let out = proc::run(Command::new("sha256sum").arg(path), Duration::from_secs(30))?.check()?;
    out.stdout
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".into())
}

pub fn tcp_download_sha256(env: &Env) -> R {
    let (served, want, log_before) = {
        let s = env.servers.lock().map_err(|_| "servers lock")?;
        (
            s.file.clone(),
            s.file_sha256.clone(),
            s.http_requests().len(),
        )
    };
    ensure(sha256_file(&served)? == want, || {
        "served file changed on disk".into()
    })?;
    for (ns, server) in [(SUB1, SERVER_A), (SUB2, SERVER_B)] {
        let dest = env.paths.work.join(format!("download-{ns}.bin"));
        let _ = fs::remove_file(&dest);
        let url = format!("http://{server}:{HTTP_PORT}/file");
        let out = proc::run(
            &mut proc::netns(
                ns,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "90",
                    "-o",
                    &dest.to_string_lossy(),
                    "-w",
                    "%{http_code} %{size_download}",
                    &url,
                ],
            ),
            Duration::from_secs(100),
        )?
        .check()?;
        ensure(out.stdout.trim() == format!("200 {FILE_SIZE}"), || {
            format!(
                "{ns}: curl {url} reported `{}`, expected `200 {FILE_SIZE}`",
                out.stdout.trim()
            )
        })?;
        let got = sha256_file(&dest)?;
        ensure(got == want, || {
            format!("{ns}: downloaded sha256 {got} differs from the server's {want}")
        })?;
        let _ = fs::remove_file(&dest);
    }
    let reqs = env
        .servers
        .lock()
        .map_err(|_| "servers lock")?
        .http_requests();
    let downloads: Vec<_> = reqs[log_before.min(reqs.len())..]
        .iter()
        .filter(|(_, p, _)| p == "/file")
        .collect();
    ensure(downloads.len() == 2, || {
        format!(
            "HTTP log shows {} downloads, expected 2: {downloads:?}",
            downloads.len()
        )
    })?;
    for (client, _, bytes) in downloads {
        let (ip, _) = parse_sockaddr(client)?;
        ensure(in_pool(ip), || {
            format!("HTTP server saw the download from {client}, not a pool address")
        })?;
        ensure(*bytes == FILE_SIZE as u64, || {
            format!("HTTP server sent {bytes} bytes")
        })?;
    }
    Ok(())
}

pub fn concurrent_tcp_connections(env: &Env) -> R {
    const PER_SUB: usize = 30;
    let spawn = |ns: &str, server: &str| {
        Background::spawn(
            &format!("tcp_clients {ns}"),
            proc::netns(
                ns,
                &[
                    &env.paths.python,
                    &env.paths.tool("tcp_clients.py"),
                    "--server",
                    server,
                    "--port",
                    &HTTP_PORT.to_string(),
                    "--count",
                    &PER_SUB.to_string(),
                    "--timeout",
                    "30",
                ],
            ),
        )
    };
    // Both subscribers at once, so all 60 sessions exist together.
    let mut c1 = spawn(SUB1, SERVER_A)?;
    let mut c2 = spawn(SUB2, SERVER_A)?;
    let r1 = c1.wait_line(false, Duration::from_secs(40), |l| l.starts_with('{'))?;
    let r2 = c2.wait_line(false, Duration::from_secs(40), |l| l.starts_with('{'))?;
    let mut all: BTreeMap<(Ipv4Addr, u16), String> = BTreeMap::new();
    for (ns, line) in [(SUB1, r1), (SUB2, r2)] {
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("{ns} tcp_clients output ({e}): {line}"))?;
        let ok = v["ok"].as_u64().unwrap_or(0) as usize;
        ensure(ok == PER_SUB, || {
            format!(
                "{ns}: {ok} of {PER_SUB} concurrent connections completed; errors: {}",
                v["errors"]
            )
        })?;
        for r in v["results"].as_array().cloned().unwrap_or_default() {
            let seen = parse_sockaddr(r["seen"].as_str().unwrap_or(""))?;
            let local = r["local"].as_str().unwrap_or("").to_string();
            ensure(in_pool(seen.0), || {
                format!("{ns} connection {local} was seen as {seen:?}, not from the pool")
            })?;
            if let Some(prev) = all.insert(seen, local.clone()) {
                return Err(format!(
                    "two concurrent connections ({prev} and {local}) were both seen as {}:{}",
                    seen.0, seen.1
                ));
            }
        }
    }
    ensure(all.len() == 2 * PER_SUB, || {
        format!(
            "{} distinct translated (address, port) pairs, expected {}",
            all.len(),
            2 * PER_SUB
        )
    })?;
    // Cross-check with the server's own log of whom it served.
    let logged: BTreeSet<String> = env
        .servers
        .lock()
        .map_err(|_| "servers lock")?
        .http_requests()
        .into_iter()
        .filter(|(_, p, _)| p == "/whoami")
        .map(|(c, _, _)| c)
        .collect();
    for (ip, port) in all.keys() {
        ensure(logged.contains(&format!("{ip}:{port}")), || {
            format!("HTTP server log lacks {ip}:{port}")
        })?;
    }
    Ok(())
}

fn nat_inside_mac(ns: &str) -> Result<String, String> {
    neighbour_mac(ns, NAT_INSIDE_IP)
}

/// The MAC `ns` has resolved for `ip` (one of cgnatd's addresses), after a ping makes sure of it.
fn neighbour_mac(ns: &str, ip: &str) -> Result<String, String> {
    ping_all_received(ns, ip, 1)?;
    let out = proc::run(
        &mut proc::netns(ns, &["ip", "neigh", "show", ip]),
        Duration::from_secs(5),
    )?
    .check()?;
    let mut words = out.stdout.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words
                .next()
                .map(str::to_string)
                .ok_or_else(|| format!("no MAC after lladdr: {}", out.stdout));
        }
    }
    Err(format!(
        "{ns} has no neighbour entry for {ip}: {}",
        out.stdout
    ))
}

pub fn malformed_frames_are_dropped_and_counted(env: &Env) -> R {
    const N: u64 = 5;
    let mac = nat_inside_mac(SUB1)?;
    let before = stats(env)?;
    let kinds = [
        "short",
        "ipv4_truncated",
        "ipv4_bad_version",
        "ipv4_bad_ihl",
        "ipv4_bad_total_length",
        "ipv4_bad_checksum",
        "udp_zero_length",
        "ipv6",
        "lldp",
    ];
    let mut args = vec![
        env.paths.python.clone(),
        env.paths.tool("inject.py"),
        "--iface".into(),
        "eth0".into(),
        "--dst-mac".into(),
        mac.clone(),
        "--src-ip".into(),
        SUB1_IP.into(),
        "--dst-ip".into(),
        SERVER_A.into(),
        "--count".into(),
        N.to_string(),
    ];
    args.extend(kinds.iter().map(|k| k.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = proc::run(&mut proc::netns(SUB1, &argv), Duration::from_secs(60))?.check()?;
    let sent: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("inject.py output ({e}): {}", out.stdout))?;
    for k in kinds {
        ensure(sent["sent"][k].as_u64() == Some(N), || {
            format!("inject.py did not send {N} {k} frames: {sent}")
        })?;
    }

    // (reason, at least this much growth). A frame under 14 bytes cannot leave a Linux
    // packet socket: the kernel pads it to a 60-byte 802.3 runt (type/length 0), which a
    // NAT may count as truncated or as an unsupported ethertype; both are checked together.
    let expect: &[(&[&str], u64)] = &[
        (&["ipv4_truncated"], N),
        (&["ipv4_bad_version"], N),
        (&["ipv4_bad_ihl"], N),
        (&["ipv4_bad_total_length"], N),
        (&["ipv4_bad_checksum"], N),
        (&["udp_bad_length"], N),
        (&["unsupported_ethertype"], 2 * N),
        (&["unsupported_ethertype", "frame_truncated"], 3 * N),
    ];
    let shortfalls = |after: &Stats| -> Vec<String> {
        expect
            .iter()
            .filter_map(|(reasons, want)| {
                let got: u64 = reasons
                    .iter()
                    .map(|r| after.drop_count(r).saturating_sub(before.drop_count(r)))
                    .sum();
                (got < *want)
                    .then(|| format!("{} grew by {got}, expected >= {want}", reasons.join("+")))
            })
            .collect()
    };
    let mut last = Vec::new();
    let settled = proc::poll(Duration::from_secs(5), Duration::from_millis(250), || {
        let after = stats(env).ok()?;
        last = shortfalls(&after);
        last.is_empty().then_some(after)
    });
    if settled.is_none() {
        let after = stats(env)?;
        return Err(format!(
            "drop counters did not account for the injected frames:\n  {}\nbefore: {}\nafter:  {}",
            last.join("\n  "),
            before.drops_json(),
            after.drops_json()
        ));
    }
    env.daemon.ensure_alive()?;
    // The data path must be unharmed: ping, UDP and TCP right after.
    ping_all_received(SUB1, SERVER_A, 3)?;
    udp_mapping(env, SUB1, SERVER_A, 40100, 2)?;
    let (ip, _) = http_whoami(SUB1)?;
    ensure(in_pool(ip), || {
        format!(
            "/whoami after the malformed frames saw {}",
            out.stdout.trim()
        )
    })
}

pub fn unsolicited_inbound_is_dropped(env: &Env) -> R {
    let targets: Vec<String> = (1..=6)
        .flat_map(|h| (100..105).map(move |p| format!("203.0.113.{h}:{p}")))
        .collect();
    let before = stats(env)?;
    let cap1 = Capture::start(SUB1, "eth0", "udp port 6666")?;
    let cap2 = Capture::start(SUB2, "eth0", "udp port 6666")?;
    let mut args = vec![
        env.paths.python.clone(),
        env.paths.tool("udp_echo.py"),
        "send".into(),
        "--bind".into(),
        SERVER_A.into(),
        "--bind-port".into(),
        "6666".into(),
        "--to".into(),
    ];
    args.extend(targets.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = proc::run(&mut proc::netns(INET, &argv), Duration::from_secs(30))?.check()?;
    ensure(
        out.stdout.contains(&format!("\"sent\": {}", targets.len())),
        || format!("sender: {}", out.stdout),
    )?;
    let want = targets.len() as u64;
    let grew = proc::poll(Duration::from_secs(5), Duration::from_millis(250), || {
        let after = stats(env).ok()?;
        let g = after
            .drop_count("no_session")
            .saturating_sub(before.drop_count("no_session"));
        (g >= want).then_some(g)
    });
    thread::sleep(Duration::from_millis(500));
    let seen1 = cap1.finish();
    let seen2 = cap2.finish();
    let leaked: Vec<&String> = seen1
        .iter()
        .chain(seen2.iter())
        .filter(|l| l.contains(".6666 >"))
        .collect();
    ensure(leaked.is_empty(), || {
        format!(
            "unsolicited datagrams reached a subscriber:\n{}",
            proc::tail(
                &leaked
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                10
            )
        )
    })?;
    if grew.is_none() {
        let after = stats(env)?;
        return Err(format!(
            "no_session grew by {} after {want} unsolicited datagrams\nbefore: {}\nafter:  {}",
            after
                .drop_count("no_session")
                .saturating_sub(before.drop_count("no_session")),
            before.drops_json(),
            after.drops_json()
        ));
    }
    Ok(())
}

/// After the traffic cases: with several workers, each subscriber's flows are owned by one worker,
/// frames that arrived on another worker's queue were handed over (and none were lost to a full
/// ring); with one worker nothing is handed off. `cgnatctl ports` says which it is: one worker,
/// or (af_packet takes no rte_flow rules) software handoff with the device's reason.
pub fn workers_share_the_load(env: &Env) -> R {
    let s = stats(env)?;
    let workers = s.0["workers"]
        .as_array()
        .ok_or_else(|| format!("no workers in stats: {}", s.0))?;
    let out = cgnatctl(env, &["-o", "json", "ports"])?;
    let ports: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("cgnatctl ports -o json is not JSON ({e}):\n{}", out.stdout))?;
    let want = if workers.len() == 1 {
        "single_worker"
    } else {
        "software_handoff"
    };
    let ports = ports["ports"]
        .as_array()
        .filter(|p| p.len() == 2)
        .ok_or_else(|| format!("cgnatctl ports lists no inside and outside port: {ports}"))?;
    for p in ports {
        let st = &p["steering"];
        ensure(
            st["mode"] == want
                && (want == "single_worker") == st["reason"].as_str().is_none_or(str::is_empty),
            || {
                format!(
                    "{} workers on af_packet: port {} should report steering {want} (with a reason \
                     when handed off), it reports {st}",
                    workers.len(),
                    p["name"]
                )
            },
        )?;
    }
    let per = |w: &Value, k: &str| w["counters"][k].as_u64().unwrap_or(0);
    let handoff_in: u64 = workers.iter().map(|w| per(w, "handoff_in")).sum();
    let handoff_out: u64 = workers.iter().map(|w| per(w, "handoff_out")).sum();
    ensure(s.drop_count("handoff_full") == 0, || {
        format!("frames lost on full handoff rings: {}", s.drops_json())
    })?;
    if workers.len() == 1 {
        return ensure(handoff_in == 0 && handoff_out == 0, || {
            format!("one worker handed off {handoff_out} frames")
        });
    }
    for w in workers {
        ensure(per(w, "sessions_created") > 0, || {
            format!(
                "worker {} owns no session: subscribers are not spread over workers: {}",
                w["worker"], s.0
            )
        })?;
    }
    ensure(handoff_out > 0 && handoff_in > 0, || {
        format!(
            "{} workers on single-hash af_packet queues, yet no frame was handed off (out {handoff_out}, in {handoff_in})",
            workers.len()
        )
    })?;
    // Rings are drained every iteration; at rest everything sent has been received.
    ensure(handoff_in == handoff_out, || {
        format!("handoff out {handoff_out} != in {handoff_in}")
    })
}

pub fn daemon_survives_and_stops_cleanly(env: &Env) -> R {
    env.daemon.ensure_alive()?;
    let (status, killed) = env.daemon.stop(Duration::from_secs(15));
    let log = env.daemon.log_text();
    ensure(!killed, || {
        format!(
            "cgnatd ignored SIGTERM for 15 s and was killed\n{}",
            proc::tail(&log, 40)
        )
    })?;
    ensure(status.is_some_and(|s| s.success()), || {
        format!(
            "cgnatd exited with {status:?} on SIGTERM, expected 0\n{}",
            proc::tail(&log, 40)
        )
    })?;
    ensure(!log.contains("panicked"), || {
        format!("cgnatd log shows a panic:\n{}", proc::tail(&log, 40))
    })
}

/// The inbound filtering mode of the lab pool, read from the config under test (the suite runs
/// against several lab configs).
fn pool_filtering(env: &Env) -> Result<&'static str, String> {
    let text = fs::read_to_string(env.paths.config()).map_err(|e| format!("read config: {e}"))?;
    Ok(if text.contains("filtering: address-and-port-dependent") {
        "address-and-port-dependent"
    } else if text.contains("filtering: address-dependent") {
        "address-dependent"
    } else {
        "endpoint-independent"
    })
}

fn behaviour_tool(ns: &str, env: &Env, args: &[&str]) -> Command {
    let tool = env.paths.tool("nat_behaviour.py");
    let mut argv = vec![env.paths.python.as_str(), tool.as_str()];
    argv.extend_from_slice(args);
    proc::netns(ns, &argv)
}

/// RFC 4787 filtering, as the subscriber sees it: after sending to A:7100, replies come back from
/// A:7100, A:7101 (same host, other port) and B:7100 (other host). Endpoint-independent filtering
/// lets all three through; address-dependent only the first two; address-and-port-dependent only
/// the exact endpoint. Whatever is refused is counted as `filtered`.
pub fn inbound_filtering_follows_the_pool_mode(env: &Env) -> R {
    let mode = pool_filtering(env)?;
    let mut responder = proc::Background::spawn(
        "filtering responder",
        behaviour_tool(
            INET,
            env,
            &[
                "responder",
                "--addr",
                SERVER_A,
                "--other-addr",
                SERVER_B,
                "--port",
                "7100",
                "--lifetime",
                "30",
            ],
        ),
    )?;
    responder.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
    let before = stats(env)?;
    let out = proc::run(
        &mut behaviour_tool(
            SUB1,
            env,
            &[
                "probe", "--server", SERVER_A, "--port", "7100", "--wait", "2",
            ],
        ),
        Duration::from_secs(15),
    )?
    .check()?;
    let _ = responder.stop_with("TERM", Duration::from_secs(2));
    let v: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("probe output ({e}): {}", out.stdout))?;
    let got = |k: &str| v["received"].get(k).is_some();
    let expect = match mode {
        "endpoint-independent" => (true, true, true),
        "address-dependent" => (true, true, false),
        _ => (true, false, false),
    };
    let seen = (got("same"), got("other_port"), got("other_addr"));
    ensure(seen == expect, || {
        format!(
            "{mode} filtering: (same, other port, other address) arrived {seen:?}, expected {expect:?}: {v}"
        )
    })?;
    let refused = [expect.1, expect.2].iter().filter(|x| !**x).count() as u64;
    let after = stats(env)?;
    let filtered = after
        .drop_count("filtered")
        .saturating_sub(before.drop_count("filtered"));
    ensure(filtered >= refused, || {
        format!(
            "{refused} replies should have been refused and counted as `filtered`, counter grew by {filtered}"
        )
    })
}

/// RFC 4787 REQ-9 hairpinning: cgn-sub1 sends to cgn-sub2's outside mapping (a pool address and
/// port) and cgn-sub2 receives it from cgn-sub1's outside mapping, never from a 100.64 address.
/// Under endpoint-independent filtering it must arrive; under the stricter modes cgn-sub2's mapping
/// has never talked to cgn-sub1's outside address, so it must not.
pub fn hairpin_between_subscribers(env: &Env) -> R {
    let mode = pool_filtering(env)?;
    let mut listener = proc::Background::spawn(
        "hairpin listener",
        behaviour_tool(
            SUB2,
            env,
            &[
                "listen",
                "--server",
                SERVER_A,
                "--port",
                &UDP_PORT.to_string(),
                "--wait",
                "6",
            ],
        ),
    )?;
    let line = listener.wait_line(false, Duration::from_secs(10), |l| {
        l.contains("\"mapping\"")
    })?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("listener output ({e}): {line}"))?;
    let mapping = v["mapping"]
        .as_str()
        .ok_or_else(|| format!("no mapping in {line}"))?
        .to_string();
    let (ip, _) = parse_sockaddr(&mapping)?;
    ensure(in_pool(ip), || {
        format!("cgn-sub2's mapping {mapping} is not a pool address")
    })?;
    proc::run(
        &mut behaviour_tool(SUB1, env, &["send", "--to", &mapping, "--count", "3"]),
        Duration::from_secs(10),
    )?
    .check()?;
    let done = listener.wait_line(false, Duration::from_secs(15), |l| {
        l.contains("\"received\"")
    })?;
    let r: Value =
        serde_json::from_str(&done).map_err(|e| format!("listener output ({e}): {done}"))?;
    let received = r["received"].as_array().cloned().unwrap_or_default();
    if mode != "endpoint-independent" {
        return ensure(received.is_empty(), || {
            format!(
                "{mode} filtering let a hairpinned datagram from another subscriber through: {done}"
            )
        });
    }
    ensure(!received.is_empty(), || {
        format!("no hairpinned datagram reached cgn-sub2 at {mapping}: {done}")
    })?;
    for d in &received {
        let from = d["from"].as_str().unwrap_or_default();
        let (src, _) = parse_sockaddr(from)?;
        ensure(in_pool(src), || {
            format!(
                "cgn-sub2 saw the hairpinned datagram from {from}: it must see cgn-sub1's outside mapping, not its inside address"
            )
        })?;
    }
    Ok(())
}

// --- Two routed hops away: traceroute and path MTU discovery (RFC 5508 ICMP errors) ---------

/// How much a drop reason grew between two snapshots.
fn drop_growth(before: &Stats, after: &Stats, reason: &str) -> u64 {
    after
        .drop_count(reason)
        .saturating_sub(before.drop_count(reason))
}

/// Well-formed, expected traffic must not be dropped for any of these reasons. The counters are
/// the daemon's, not the flows': a failure also lists the lab's TCP sockets that are
/// retransmitting, since a connection an earlier case cut (the NAT forgot it, the host did not)
/// sends segments now and then that count as tcp_invalid or no_session.
pub(crate) fn no_drops_for(before: &Stats, after: &Stats, reasons: &[&str], what: &str) -> R {
    let grew: Vec<String> = reasons
        .iter()
        .filter_map(|r| {
            let g = drop_growth(before, after, r);
            (g > 0).then(|| format!("{r} +{g}"))
        })
        .collect();
    ensure(grew.is_empty(), || {
        format!(
            "{what}: drop counters grew: {}\nbefore: {}\nafter:  {}\nTCP sockets retransmitting in the lab now: {}",
            grew.join(", "),
            before.drops_json(),
            after.drops_json(),
            retransmitting_sockets()
        )
    })
}

/// The TCP sockets of the lab's namespaces that have retransmitted and still are (ss: a
/// retransmission timer with a non-zero count), or "none".
fn retransmitting_sockets() -> String {
    let mut found = Vec::new();
    for ns in [INET, SUB1, SUB2, FAR] {
        let Ok(out) = proc::run(
            &mut proc::netns(ns, &["ss", "-tnoH"]),
            Duration::from_secs(5),
        ) else {
            continue;
        };
        for line in out.stdout.lines() {
            let retrying = line
                .split("timer:(on,")
                .nth(1)
                .and_then(|t| t.split(')').next())
                .and_then(|t| t.rsplit(',').next())
                .is_some_and(|n| n.trim() != "0");
            if retrying {
                let line: Vec<&str> = line.split_whitespace().collect();
                found.push(format!("{ns}: {}", line.join(" ")));
            }
        }
    }
    if found.is_empty() {
        "none".into()
    } else {
        found.join("; ")
    }
}

/// A translation counter that grows by at least `at_least`; checked only when cgnatd exports it.
fn counter_grew_if_exported(
    before: &Stats,
    after: &Stats,
    name: &str,
    at_least: u64,
    what: &str,
) -> R {
    if after.0["totals"].get(name).is_none() {
        return Ok(());
    }
    let grew = after.total(name).saturating_sub(before.total(name));
    ensure(grew >= at_least, || {
        format!("{what}: {name} grew by {grew}, expected at least {at_least}")
    })
}

/// The hops `traceroute -n -q 1` printed: (hop number, address or "*").
fn traceroute_hops(stdout: &str) -> Vec<(u32, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let hop = w.next()?.parse().ok()?;
            Some((hop, w.next()?.to_string()))
        })
        .collect()
}

/// Hop 1 is cgnatd itself (time exceeded from its inside address); hop 2 is cgn-inet, whose
/// time exceeded goes to the pool address and must be translated back to the subscriber with
/// the quoted probe restored; hop 3 is cgn-far, answering the UDP probe with port unreachable
/// (translated the same way) and the ICMP probe with an echo reply.
pub fn traceroute_shows_every_hop(env: &Env) -> R {
    let want: Vec<(u32, String)> = [NAT_INSIDE_IP, INET_IP, FAR_IP]
        .iter()
        .zip(1..)
        .map(|(a, hop)| (hop, a.to_string()))
        .collect();
    let before = stats(env)?;
    for (method, extra) in [("UDP", None), ("ICMP", Some("-I"))] {
        let mut args = vec![
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "1",
            "-N",
            "1",
            "-m",
            "6",
        ];
        args.extend(extra);
        args.push(FAR_IP);
        let mut tries = Vec::new();
        // Up to 3 runs: the first probes may be lost to ARP resolution along the path.
        for _ in 0..3 {
            let out = proc::run(&mut proc::netns(SUB1, &args), Duration::from_secs(20))?;
            if out.success() && traceroute_hops(&out.stdout) == want {
                break;
            }
            tries.push(out.describe());
            thread::sleep(Duration::from_millis(500));
        }
        ensure(tries.len() < 3, || {
            format!(
                "traceroute ({method}) from cgn-sub1 to {FAR_IP} must list hops 1-3 as {NAT_INSIDE_IP}, {INET_IP}, {FAR_IP} and stop there; 3 runs:\n{}",
                tries.join("\n")
            )
        })?;
    }
    let after = stats(env)?;
    no_drops_for(&before, &after, &["icmp_error_unmatched"], "traceroute")?;
    // At least: hop 2 for each method, and the port unreachable ending the UDP run.
    counter_grew_if_exported(&before, &after, "icmp_errors_translated", 3, "traceroute")
}

/// The path MTU cgn-sub1 has cached towards `dst`, and what `ip route get` printed.
fn route_mtu(ns: &str, dst: &str) -> Result<(Option<u32>, String), String> {
    let out = proc::run(
        &mut proc::netns(ns, &["ip", "route", "get", dst]),
        Duration::from_secs(5),
    )?
    .check()?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    let mtu = words
        .windows(2)
        .find(|w| w[0] == "mtu")
        .and_then(|w| w[1].parse().ok());
    Ok((mtu, out.stdout))
}

fn flush_route_cache(ns: &str) -> R {
    proc::run(
        &mut proc::netns(ns, &["ip", "route", "flush", "cache"]),
        Duration::from_secs(5),
    )?
    .check()
    .map(|_| ())
}

/// A 1500-byte packet with DF from a subscriber cannot cross cgn-inet's 1400-byte link to
/// cgn-far: cgn-inet answers ICMP frag-needed (mtu 1400) to the pool address, cgnatd translates
/// it back (outer and quoted headers), and the subscriber's kernel lowers its path MTU. A TCP
/// upload then only completes if that works for TCP too (without it the path is a black hole).
pub fn pmtu_discovery_through_nat(env: &Env) -> R {
    // A path MTU learned earlier (another case, another run) must neither help nor leak.
    flush_route_cache(SUB1)?;
    let result = pmtu_ping_and_upload(env);
    let flushed = flush_route_cache(SUB1);
    result.and(flushed)
}

fn pmtu_ping_and_upload(env: &Env) -> R {
    const UPLOAD: u64 = 4 * 1024 * 1024;
    let before = stats(env)?;
    let (mtu, route) = route_mtu(SUB1, FAR_IP)?;
    ensure(mtu.is_none(), || {
        format!("cgn-sub1 still has a path MTU for {FAR_IP} after a route cache flush:\n{route}")
    })?;

    // 1472 bytes of ICMP payload: exactly 1500 bytes of IP, sent with DF.
    let want = format!("Frag needed and DF set (mtu = {FAR_LINK_MTU})");
    let mut tries = Vec::new();
    let mut line = None;
    for _ in 0..3 {
        let out = proc::run(
            &mut proc::netns(
                SUB1,
                &[
                    "ping", "-n", "-M", "do", "-s", "1472", "-c", "3", "-i", "0.3", "-W", "1",
                    FAR_IP,
                ],
            ),
            Duration::from_secs(15),
        )?;
        let text = format!("{}{}", out.stdout, out.stderr);
        if let Some(l) = text.lines().find(|l| l.contains(&want)) {
            line = Some(l.to_string());
            break;
        }
        tries.push(text);
    }
    let line = line.ok_or_else(|| {
        format!(
            "ping -M do -s 1472 from cgn-sub1 to {FAR_IP} never reported `{want}`: the frag-needed cgn-inet sends to the pool address did not reach the subscriber translated\n{}",
            tries.join("\n---\n")
        )
    })?;
    ensure(line.contains(&format!("From {INET_IP} ")), || {
        format!(
            "the frag-needed must come from {INET_IP}, the router with the 1400-byte link: {line}"
        )
    })?;
    let (mtu, route) = route_mtu(SUB1, FAR_IP)?;
    ensure(mtu == Some(FAR_LINK_MTU), || {
        format!(
            "after the frag-needed, `ip route get {FAR_IP}` in cgn-sub1 must show mtu {FAR_LINK_MTU}:\n{route}"
        )
    })?;

    // TCP discovers the path MTU by itself: start from a clean cache, full-sized segments.
    flush_route_cache(SUB1)?;
    let tool = env.paths.tool("tcp_stream.py");
    let mut sink = Background::spawn(
        "tcp sink in cgn-far",
        proc::netns(
            FAR,
            &[
                &env.paths.python,
                &tool,
                "sink",
                "--bind",
                FAR_IP,
                "--port",
                "9000",
                "--lifetime",
                "120",
            ],
        ),
    )?;
    sink.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
    let out = proc::run(
        &mut proc::netns(
            SUB1,
            &[
                &env.paths.python,
                &tool,
                "upload",
                "--server",
                FAR_IP,
                "--port",
                "9000",
                "--size",
                &UPLOAD.to_string(),
                "--timeout",
                "60",
            ],
        ),
        Duration::from_secs(75),
    )?;
    let client: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("upload output ({e}):\n{}", out.describe()))?;
    ensure(
        out.success() && client["sent"].as_u64() == Some(UPLOAD),
        || {
            format!(
                "TCP upload of {UPLOAD} bytes from cgn-sub1 to {FAR_IP} did not complete (a path MTU black hole if frag-needed is not translated): {client}\n{}",
                sink.dump()
            )
        },
    )?;
    let done = sink.wait_line(false, Duration::from_secs(10), |l| l.contains("\"upload\""))?;
    let server: Value =
        serde_json::from_str(&done).map_err(|e| format!("sink output ({e}): {done}"))?;
    ensure(
        server["bytes"].as_u64() == Some(UPLOAD) && server["sha256"] == client["sha256"],
        || format!("cgn-far received {server}, cgn-sub1 sent {client}"),
    )?;
    let (peer, _) = parse_sockaddr(server["peer"].as_str().unwrap_or(""))?;
    ensure(in_pool(peer), || {
        format!(
            "cgn-far saw the upload from {}, not from the pool",
            server["peer"]
        )
    })?;
    let (mtu, route) = route_mtu(SUB1, FAR_IP)?;
    ensure(mtu == Some(FAR_LINK_MTU), || {
        format!(
            "after the upload, cgn-sub1 must have learned mtu {FAR_LINK_MTU} from TCP's own frag-needed:\n{route}"
        )
    })?;
    let after = stats(env)?;
    no_drops_for(
        &before,
        &after,
        &["icmp_error_unmatched"],
        "path MTU discovery",
    )?;
    counter_grew_if_exported(
        &before,
        &after,
        "icmp_errors_translated",
        2,
        "path MTU discovery",
    )
}

// --- Fragments ------------------------------------------------------------------------------

const FRAG_ECHO_PORT: u16 = 7001;
const FRAGMENT_DROPS: &[&str] = &[
    "fragment_timeout",
    "fragment_hold_full",
    "fragment_table_full",
    "fragment_malformed",
];

/// A UDP datagram larger than the MTU crosses the NAT as IPv4 fragments, both ways: cgn-sub1's
/// kernel fragments 10000 bytes (7 fragments at MTU 1500), the server in cgn-inet must
/// reassemble it whole from a pool address, and its echo (fragmented by cgn-inet) must reach
/// the subscriber whole. Then fragments arriving in reverse order (scapy in cgn-inet, to the
/// subscriber's current mapping) must be held until the first one, with the ports, arrives.
pub fn fragmented_udp_datagram(env: &Env) -> R {
    const SIZE: u64 = 10000;
    const INJECTED: u64 = 4000;
    ports_pass_fragments(&env.paths.config())?;
    let tool = env.paths.tool("udp_frag.py");
    let port = FRAG_ECHO_PORT.to_string();
    let before = stats(env)?;
    let mut echo = Background::spawn(
        "udp_frag echo",
        proc::netns(
            INET,
            &[
                &env.paths.python,
                &tool,
                "echo",
                "--bind",
                SERVER_A,
                "--port",
                &port,
                "--lifetime",
                "120",
            ],
        ),
    )?;
    echo.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;

    let out = proc::run(
        &mut proc::netns(
            SUB1,
            &[
                &env.paths.python,
                &tool,
                "client",
                "--server",
                SERVER_A,
                "--port",
                &port,
                "--size",
                &SIZE.to_string(),
                "--timeout",
                "3",
            ],
        ),
        Duration::from_secs(20),
    )?;
    let c: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("udp_frag client output ({e}):\n{}", out.describe()))?;
    let sha = c["sha256"].as_str().unwrap_or_default().to_string();
    let saw = echo
        .wait_line(false, Duration::from_secs(3), |l| l.contains(&sha))
        .map_err(|_| {
            format!(
                "the server in cgn-inet never received the {SIZE}-byte datagram whole: {c}\n{}",
                echo.dump()
            )
        })?;
    let saw: Value = serde_json::from_str(&saw).map_err(|e| format!("echo log ({e}): {saw}"))?;
    let (src, _) = parse_sockaddr(saw["seen"].as_str().unwrap_or(""))?;
    ensure(saw["len"].as_u64() == Some(SIZE) && in_pool(src), || {
        format!("the server received {saw}; expected {SIZE} bytes from a pool address")
    })?;
    ensure(
        c["received"].as_u64() == Some(SIZE)
            && c["received_sha256"] == c["sha256"]
            && c["from"].as_str() == Some(&format!("{SERVER_A}:{FRAG_ECHO_PORT}")),
        || format!("cgn-sub1 did not get its {SIZE}-byte datagram back whole: {c}"),
    )?;

    // Out of order: the listener keeps its mapping alive (short lab timeouts) while scapy loads.
    let mac = neighbour_mac(INET, NAT_OUTSIDE_IP)?;
    let mut listener = Background::spawn(
        "udp_frag listen",
        proc::netns(
            SUB1,
            &[
                &env.paths.python,
                &tool,
                "listen",
                "--server",
                SERVER_A,
                "--port",
                &port,
                "--wait",
                "20",
                "--count",
                "1",
                "--keepalive",
                "1",
            ],
        ),
    )?;
    let line = listener.wait_line(false, Duration::from_secs(10), |l| {
        l.contains("\"mapping\"")
    })?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("listener ({e}): {line}"))?;
    let mapping = v["mapping"].as_str().unwrap_or_default().to_string();
    let (ip, mport) = parse_sockaddr(&mapping)?;
    ensure(in_pool(ip), || {
        format!("cgn-sub1's mapping {mapping} is not in the pool")
    })?;
    let held_before = stats(env)?;
    let out = proc::run(
        &mut proc::netns(
            INET,
            &[
                &env.paths.python,
                &tool,
                "inject",
                "--src",
                SERVER_A,
                "--sport",
                &port,
                "--dst",
                &ip.to_string(),
                "--dport",
                &mport.to_string(),
                "--dst-mac",
                &mac,
                "--iface",
                "eth0",
                "--size",
                &INJECTED.to_string(),
                "--order",
                "reverse",
            ],
        ),
        Duration::from_secs(30),
    )?
    .check()?;
    let inj: Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("inject output ({e}): {}", out.stdout))?;
    ensure(inj["fragments"].as_u64() == Some(3), || {
        format!("expected 3 fragments for {INJECTED} bytes: {inj}")
    })?;
    let done = listener.wait_line(false, Duration::from_secs(25), |l| {
        l.contains("\"received\"")
    })?;
    let r: Value = serde_json::from_str(&done).map_err(|e| format!("listener ({e}): {done}"))?;
    let got = r["received"].as_array().cloned().unwrap_or_default();
    ensure(
        got.len() == 1
            && got[0]["len"].as_u64() == Some(INJECTED)
            && got[0]["sha256"] == inj["sha256"]
            && got[0]["from"].as_str() == Some(&format!("{SERVER_A}:{FRAG_ECHO_PORT}")),
        || {
            format!(
                "cgn-sub1 at {mapping} must receive the {INJECTED}-byte datagram sent as 3 fragments in reverse order ({inj}); it got {r}"
            )
        },
    )?;
    let after = stats(env)?;
    no_drops_for(&before, &after, FRAGMENT_DROPS, "fragmented UDP")?;
    // The two later fragments arrived before the first and had to wait for it.
    counter_grew_if_exported(&held_before, &after, "fragments_held", 2, "reverse order")?;
    // 7 fragments each way for the echo, 3 injected.
    counter_grew_if_exported(
        &before,
        &after,
        "fragments_translated",
        17,
        "fragmented UDP",
    )
}

// --- Limits and expiry (config/lab-short.yaml only) ------------------------------------------

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// `udp_echo.py flows` from `ns`: one datagram from each of `count` consecutive source ports.
fn udp_flows(env: &Env, ns: &str, base: u16, count: u64, tag: &str) -> Result<Value, String> {
    let out = proc::run(
        &mut proc::netns(
            ns,
            &[
                &env.paths.python,
                &env.paths.tool("udp_echo.py"),
                "flows",
                "--server",
                SERVER_A,
                "--port",
                &UDP_PORT.to_string(),
                "--base-port",
                &base.to_string(),
                "--count",
                &count.to_string(),
                "--wait",
                "1",
                "--tag",
                tag,
            ],
        ),
        Duration::from_secs(30),
    )?
    .check()?;
    serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("flows output ({e}): {}", out.stdout))
}

/// RFC 6888 REQ-4: a subscriber at its port limit gets no new mappings (counted as
/// `quota_exceeded`, never reaching the server), nothing existing is evicted, so an established
/// TCP connection keeps transferring data, and other subscribers are not affected. Afterwards
/// everything expires (short timeouts) and the subscriber can open flows again.
pub fn quota_exhaustion_keeps_existing_flows(env: &Env) -> R {
    short_timeouts(&env.paths.config())?;
    let tuning = NatTuning::read(&env.paths.config())?;
    let limit = tuning.max_ports_per_subscriber;
    let (mut echo, mut chat) = tcp_chat(env, SUB2, 7200, "0.3", "120", "5")?;

    // More new flows than the limit, in one burst well inside the UDP timeout.
    let before = stats(env)?;
    let count = limit + 20;
    let icmp = if tuning.icmp_unreachable {
        Some(Capture::start(SUB2, "eth0", "icmp")?)
    } else {
        None
    };
    let flows = udp_flows(env, SUB2, 42000, count, "quota")?;
    if let Some(cap) = icmp {
        // nat.limits.icmp_unreachable: the refusals are announced, from the NAT's inside address.
        let lines = cap.finish();
        ensure(
            lines.iter().any(|l| {
                l.contains(&format!("{NAT_INSIDE_IP} > {SUB2_IP}"))
                    && l.contains("admin prohibited")
            }),
            || {
                format!(
                    "icmp_unreachable is on, but cgn-sub2 saw no ICMP administratively prohibited from {NAT_INSIDE_IP}:\n{}",
                    lines.join("\n")
                )
            },
        )?;
    }
    // Another subscriber is not limited by cgn-sub2's quota.
    udp_mapping(env, SUB1, SERVER_A, 40300, 1)?;
    let after = stats(env)?;
    let replied = flows["replied"].as_array().cloned().unwrap_or_default();
    let silent: Vec<u64> = flows["silent"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    // The chat connection holds one port of the limit.
    ensure(
        !replied.is_empty()
            && (replied.len() as u64) < limit
            && silent.len() as u64 > count - limit,
        || {
            format!(
                "cgn-sub2 opened {count} UDP flows with max_ports_per_subscriber {limit} and one TCP connection: {} got replies, {} none",
                replied.len(),
                silent.len()
            )
        },
    )?;
    let refused = drop_growth(&before, &after, "quota_exceeded");
    ensure(refused >= silent.len() as u64, || {
        format!(
            "{} flows got no reply, but quota_exceeded grew by {refused}\nbefore: {}\nafter:  {}",
            silent.len(),
            before.drops_json(),
            after.drops_json()
        )
    })?;
    // What the server saw: exactly the flows that got replies, all from cgn-sub2's paired address.
    let logged: BTreeMap<String, String> = json_lines(
        &env.servers
            .lock()
            .map_err(|_| "servers lock")?
            .udp_a
            .stdout_lines(),
    )
    .into_iter()
    .filter_map(|v| {
        Some((
            v["data"].as_str()?.to_string(),
            v["seen"].as_str()?.to_string(),
        ))
    })
    .filter(|(d, _)| d.starts_with("flow quota "))
    .collect();
    let leaked: Vec<&u64> = silent
        .iter()
        .filter(|p| logged.contains_key(&format!("flow quota {p}")))
        .collect();
    ensure(leaked.is_empty(), || {
        format!("flows refused at the limit still reached the server, from ports {leaked:?}")
    })?;
    let mut outside = BTreeSet::new();
    for r in &replied {
        let p = r["port"].as_u64().unwrap_or(0);
        let seen = logged.get(&format!("flow quota {p}")).ok_or_else(|| {
            format!("flow from port {p} got a reply, but the server log lacks it")
        })?;
        let (ip, _) = parse_sockaddr(seen)?;
        ensure(in_pool(ip), || {
            format!("flow {p} seen as {seen}, not from the pool")
        })?;
        outside.insert(ip);
    }
    ensure(outside.len() == 1, || {
        format!("cgn-sub2's flows used several outside addresses (paired pooling): {outside:?}")
    })?;

    // The burst's mappings live at least `udp` seconds after its last datagram, so cgn-sub2 stays
    // at its limit until then: the TCP connection must keep exchanging data in that window.
    let t_last = flows["t_last"].as_f64().unwrap_or(0.0);
    let window_end = t_last + tuning.udp as f64 - 1.0;
    let wait = (window_end - now_unix()).max(0.0);
    thread::sleep(Duration::from_secs_f64(wait.min(tuning.udp as f64)));
    let events = json_lines(&chat.stdout_lines());
    if let Some(e) = events.iter().find(|e| e["event"] == "error") {
        return Err(format!(
            "the established TCP connection failed after the limit was hit: {e}"
        ));
    }
    let during = events
        .iter()
        .filter(|e| e["event"] == "echo")
        .filter_map(|e| e["t"].as_f64())
        .filter(|t| *t > t_last && *t < window_end)
        .count();
    ensure(during >= 3, || {
        format!(
            "only {during} TCP round trips in the {:.1} s after the limit was hit, expected >= 3\n{}",
            window_end - t_last,
            chat.dump()
        )
    })?;
    chat.stop_with("TERM", Duration::from_secs(3));
    ensure(
        chat.stdout_lines().iter().any(|l| l.contains("\"done\"")),
        || format!("the chat client did not finish cleanly\n{}", chat.dump()),
    )?;
    echo.stop_with("TERM", Duration::from_secs(2));

    // Let every mapping expire and leave hold-down, so later cases start from a clean table.
    let bound = tuning.udp + tuning.tcp_transitory + tuning.hold_down + 15;
    let mut last = String::new();
    let clean = proc::poll(Duration::from_secs(bound), Duration::from_secs(1), || {
        let s = stats(env).ok()?;
        let (m, h) = (s.total("mappings_current"), s.total("ports_held"));
        last = format!("mappings_current {m}, ports_held {h}");
        (m == 0 && h == 0).then_some(())
    });
    ensure(clean.is_some(), || {
        format!("mappings did not expire within {bound} s: {last}")
    })?;
    let again = udp_flows(env, SUB2, 42000 + count as u16 + 1, 1, "quota-after")?;
    ensure(
        again["replied"].as_array().is_some_and(|a| a.len() == 1),
        || format!("after its mappings expired, cgn-sub2 still cannot open a flow: {again}"),
    )
}

/// Table gauges that must all be 0 once everything has expired and left hold-down.
const GAUGES: &[&str] = &[
    "sessions_current",
    "mappings_current",
    "ports_in_use",
    "ports_held",
    "subscribers_current",
    "blocks_in_use",
];

/// Every non-zero gauge, per worker ("worker 0: sessions_current = 3").
fn nonzero_gauges(s: &Stats) -> Result<Vec<String>, String> {
    let workers = s.0["workers"]
        .as_array()
        .ok_or_else(|| format!("no workers in stats: {}", s.0))?;
    let mut out = Vec::new();
    for w in workers {
        for g in GAUGES {
            match w["counters"].get(*g).and_then(Value::as_u64) {
                Some(0) => {}
                Some(v) => out.push(format!("worker {}: {g} = {v}", w["worker"])),
                None if ["sessions_current", "mappings_current", "ports_in_use"].contains(g) => {
                    return Err(format!("worker {} does not report {g}", w["worker"]));
                }
                None => {}
            }
        }
    }
    Ok(out)
}

/// Once traffic stops, every session, mapping, port and subscriber record expires: the gauges of
/// every worker return to exactly 0 within the longest timeout plus the hold-down, and every
/// created session and mapping has been deleted.
pub fn drain_to_zero_after_timeouts(env: &Env) -> R {
    short_timeouts(&env.paths.config())?;
    let tuning = NatTuning::read(&env.paths.config())?;
    // Something of every kind to drain: ICMP, UDP and TCP from both subscribers.
    ping_all_received(SUB1, SERVER_A, 2)?;
    ping_all_received(SUB2, SERVER_B, 2)?;
    udp_mapping(env, SUB1, SERVER_A, 40400, 1)?;
    udp_mapping(env, SUB2, SERVER_B, 40400, 1)?;
    http_whoami(SUB2)?;
    let busy = stats(env)?;
    ensure(
        busy.total("sessions_current") >= 5 && busy.total("mappings_current") >= 5,
        || {
            format!(
                "5 flows were just opened, but sessions_current is {} and mappings_current {}",
                busy.total("sessions_current"),
                busy.total("mappings_current")
            )
        },
    )?;
    let bound = tuning.longest_timeout() + tuning.hold_down + 15;
    let mut last = Vec::new();
    let mut error = None;
    let drained = proc::poll(Duration::from_secs(bound), Duration::from_secs(1), || {
        let s = stats(env).ok()?;
        match nonzero_gauges(&s) {
            Ok(v) if v.is_empty() => Some(s),
            Ok(v) => {
                last = v;
                None
            }
            Err(e) => {
                error = Some(e);
                Some(s)
            }
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    let s = drained.ok_or_else(|| {
        format!(
            "{} s after the traffic stopped ({}), the tables are not empty:\n  {}",
            bound,
            tuning.describe(),
            last.join("\n  ")
        )
    })?;
    for (created, deleted) in [
        ("sessions_created", "sessions_deleted"),
        ("tcp_sessions_created", "tcp_sessions_deleted"),
        ("udp_sessions_created", "udp_sessions_deleted"),
        ("icmp_sessions_created", "icmp_sessions_deleted"),
        ("mappings_created", "mappings_deleted"),
    ] {
        ensure(s.total(created) == s.total(deleted), || {
            format!(
                "with empty tables, {created} ({}) must equal {deleted} ({})",
                s.total(created),
                s.total(deleted)
            )
        })?;
    }
    Ok(())
}

/// MASQUERADE (config: the `masq` pool and the SNAT rule for 198.51.100.20/32): subscribers reach
/// that server under cgnatd's own outside address, replies come back to them, the address still
/// answers ping itself, and unsolicited packets to it count as `no_session` rather than being
/// taken for the appliance. Also checks that the mappings were logged as NAT events.
pub fn masquerade_uses_the_interface_address(env: &Env) -> R {
    let mut server = Background::spawn(
        "udp echo masquerade",
        proc::netns(
            INET,
            &[
                &env.paths.python,
                &env.paths.tool("udp_echo.py"),
                "server",
                "--bind",
                MASQ_SERVER,
                "--port",
                &UDP_PORT.to_string(),
                "--lifetime",
                "60",
            ],
        ),
    )?;
    server.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
    let before = stats(env)?;
    for (ns, bind) in [(SUB1, 47001u16), (SUB2, 47002)] {
        let v = udp_client(env, ns, MASQ_SERVER, bind, 3)?;
        let replies = v["replies"].as_array().cloned().unwrap_or_default();
        ensure(replies.len() == 3, || {
            format!("{ns} -> {MASQ_SERVER}: {} of 3 replies: {v}", replies.len())
        })?;
        for r in &replies {
            let (ip, _) = parse_sockaddr(r["seen"].as_str().unwrap_or(""))?;
            ensure(ip.to_string() == NAT_OUTSIDE_IP, || {
                format!(
                    "{ns}: {MASQ_SERVER} saw {ip}, expected the interface address {NAT_OUTSIDE_IP}"
                )
            })?;
        }
    }
    // ICMP echo under MASQUERADE: the server's capture shows the interface address.
    let cap = Capture::start(INET, "eth0", &format!("icmp and host {MASQ_SERVER}"))?;
    ping_all_received(SUB1, MASQ_SERVER, 3)?;
    thread::sleep(Duration::from_millis(300));
    let lines = cap.finish();
    let from_nat = lines
        .iter()
        .filter(|l| {
            l.contains(&format!(
                "{NAT_OUTSIDE_IP} > {MASQ_SERVER}: ICMP echo request"
            ))
        })
        .count();
    ensure(from_nat >= 3, || {
        format!(
            "expected 3 echo requests from {NAT_OUTSIDE_IP} at {MASQ_SERVER}:\n{}",
            lines.join("\n")
        )
    })?;
    // The appliance still answers for its own address.
    ping_all_received(INET, NAT_OUTSIDE_IP, 3)?;
    // Unsolicited UDP to the interface address is the translator's to refuse.
    let targets: Vec<String> = (100..105)
        .map(|p| format!("{NAT_OUTSIDE_IP}:{p}"))
        .collect();
    let mut args: Vec<String> = vec![
        env.paths.python.clone(),
        env.paths.tool("udp_echo.py"),
        "send".into(),
        "--bind".into(),
        INET_IP.into(),
        "--bind-port".into(),
        "6667".into(),
        "--to".into(),
    ];
    args.extend(targets.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    proc::run(&mut proc::netns(INET, &argv), Duration::from_secs(30))?.check()?;
    let grew = proc::poll(Duration::from_secs(5), Duration::from_millis(200), || {
        let after = stats(env).ok()?;
        (drop_growth(&before, &after, "no_session") >= targets.len() as u64).then_some(after)
    });
    let after = grew.ok_or_else(|| {
        format!(
            "no_session did not grow by {} for unsolicited datagrams to {NAT_OUTSIDE_IP}",
            targets.len()
        )
    })?;
    ensure(drop_growth(&before, &after, "local_unhandled") == 0, || {
        "datagrams to the masquerade address were taken as addressed to cgnatd".to_string()
    })?;
    // `cgnatctl pools` accounts the masquerade pool's ports to the interface address.
    let out = cgnatctl(env, &["-o", "json", "pools", "--addresses"])?;
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("pools JSON ({e}): {}", out.stdout))?;
    let masq = v["pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["masquerade"] == true).cloned())
        .ok_or_else(|| format!("no masquerade pool listed: {v}"))?;
    ensure(
        masq["addresses"] == serde_json::json!([NAT_OUTSIDE_IP])
            && masq["by_address"][NAT_OUTSIDE_IP].as_u64().unwrap_or(0) >= 2,
        || format!("the masquerade pool should show its UDP mappings on {NAT_OUTSIDE_IP}: {masq}"),
    )?;
    // NAT event log: the mappings were recorded with both endpoints.
    let logged = proc::poll(Duration::from_secs(3), Duration::from_millis(200), || {
        let log = env.daemon.log_text();
        (log.contains("mapping_created")
            && log.contains(&format!("udp {SUB1_IP}:47001 -> {NAT_OUTSIDE_IP}:")))
        .then_some(())
    });
    ensure(logged.is_some(), || {
        format!(
            "no mapping_created event for {SUB1_IP}:47001 in the cgnatd log:\n{}",
            env.daemon.log_tail()
        )
    })
}

/// A TCP echo server on SERVER_B:`port` in cgn-inet and, from `ns`, one long-lived connection to
/// it exchanging data every `interval` seconds for `duration` (each echo awaited `reply_timeout`).
/// Returns both once two round trips have been made; dropping them stops them.
fn tcp_chat(
    env: &Env,
    ns: &str,
    port: u16,
    interval: &str,
    duration: &str,
    reply_timeout: &str,
) -> Result<(Background, Background), String> {
    let tool = env.paths.tool("tcp_stream.py");
    let port = port.to_string();
    let mut echo = Background::spawn(
        "tcp echo",
        proc::netns(
            INET,
            &[
                &env.paths.python,
                &tool,
                "echo",
                "--bind",
                SERVER_B,
                "--port",
                &port,
                "--lifetime",
                "180",
            ],
        ),
    )?;
    echo.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
    let mut chat = Background::spawn(
        &format!("tcp chat from {ns}"),
        proc::netns(
            ns,
            &[
                &env.paths.python,
                &tool,
                "chat",
                "--server",
                SERVER_B,
                "--port",
                &port,
                "--interval",
                interval,
                "--duration",
                duration,
                "--reply-timeout",
                reply_timeout,
            ],
        ),
    )?;
    chat.wait_line(false, Duration::from_secs(10), |l| {
        l.contains("\"echo\"") && l.contains("\"seq\": 2,")
    })?;
    Ok((echo, chat))
}

/// `cgnatctl` with the lab daemon's address; the output must be a success.
pub(crate) fn cgnatctl(env: &Env, args: &[&str]) -> Result<proc::Output, String> {
    let mut cmd = env.paths.ctl();
    cmd.args(args);
    proc::run(&mut cmd, Duration::from_secs(20))?.check()
}

pub(crate) fn sessions_json(env: &Env, filters: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["-o", "json", "sessions", "list"];
    args.extend_from_slice(filters);
    let out = cgnatctl(env, &args)?;
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("cgnatctl sessions list -o json ({e}):\n{}", out.stdout))?;
    v.as_array()
        .cloned()
        .ok_or_else(|| format!("not a JSON array:\n{}", out.stdout))
}

/// The session table through the API (`conntrack -L`/`-D`/`-F` for cgnat): a live TCP connection
/// is listed with its translation and state, deleting its session cuts it, a flush empties the
/// table, and traffic afterwards simply opens new sessions.
pub fn sessions_are_listed_and_deleted(env: &Env) -> R {
    let (_echo, mut chat) = tcp_chat(env, SUB1, 7300, "0.2", "40", "3")?;
    let connected = chat
        .stdout_lines()
        .iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["event"] == "connected").then(|| v["local"].as_str().map(str::to_owned))?
        })
        .ok_or("chat printed no connected line")?;
    let remote = format!("{SERVER_B}:7300");

    // Listed: exactly this connection, established, from the pool, with a long timeout ahead.
    let listed = sessions_json(
        env,
        &[
            "--proto", "tcp", "--inside", &connected, "--remote", &remote,
        ],
    )?;
    ensure(listed.len() == 1, || {
        format!("expected one session for {connected} -> {remote}, got {listed:?}")
    })?;
    let s = &listed[0];
    ensure(
        s["state"] == "established" && s["tcp_state"] == "established",
        || format!("the live connection is not established: {s}"),
    )?;
    let (out_ip, _) = parse_sockaddr(s["outside"].as_str().unwrap_or(""))?;
    ensure(in_pool(out_ip), || {
        format!("outside endpoint not in the pool: {s}")
    })?;
    // It is chatting: nearly the whole established timeout is ahead of it.
    let established = NatTuning::read(&env.paths.config())?.tcp_established;
    let left = s["expires_in_seconds"].as_u64().unwrap_or(0);
    ensure(left + 5 >= established && left <= established, || {
        format!("an established TCP session should expire in about {established} s: {s}")
    })?;
    // The same session by its outside endpoint, as an operator tracing an abuse report would.
    let by_outside = sessions_json(env, &["--outside", s["outside"].as_str().unwrap_or("")])?;
    ensure(
        by_outside.iter().any(|o| o["inside"] == connected.as_str()),
        || {
            format!(
                "lookup by outside endpoint {} missed it: {by_outside:?}",
                s["outside"]
            )
        },
    )?;
    // Got by its exact tuple (conntrack -G).
    let out = cgnatctl(
        env,
        &[
            "-o", "json", "sessions", "get", "-p", "tcp", "-s", &connected, "-d", &remote,
        ],
    )?;
    let got: Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("get ({e}): {}", out.stdout))?;
    ensure(got["outside"] == s["outside"], || {
        format!("get returned {got}, list said {s}")
    })?;
    // A filter the API cannot parse is refused, naming the field.
    let mut bad = env.paths.ctl();
    bad.args(["sessions", "list", "--inside", "100.64.0.300"]);
    let out = proc::run(&mut bad, Duration::from_secs(10))?;
    ensure(
        out.status.is_some_and(|s| !s.success()) && out.stderr.contains("filter.inside"),
        || {
            format!(
                "a bad filter must fail naming filter.inside:\n{}",
                out.describe()
            )
        },
    )?;

    // Deleting the session cuts the connection: the next round trip gets nowhere.
    let before = stats(env)?;
    let out = cgnatctl(
        env,
        &[
            "sessions", "delete", "--inside", &connected, "--remote", &remote,
        ],
    )?;
    ensure(out.stdout.trim() == "1 session(s) deleted", || {
        format!("delete answered: {}", out.stdout)
    })?;
    chat.wait_line(false, Duration::from_secs(10), |l| l.contains("\"error\""))
        .map_err(|e| format!("the chat kept working after its session was deleted: {e}"))?;
    let after = stats(env)?;
    let refused =
        drop_growth(&before, &after, "tcp_invalid") + drop_growth(&before, &after, "no_session");
    ensure(refused > 0, || {
        "segments of the deleted session were not counted as tcp_invalid/no_session".to_string()
    })?;
    ensure(
        sessions_json(env, &["--inside", &connected, "--remote", &remote])?.is_empty(),
        || "the deleted session is still listed".to_string(),
    )?;

    // Flush: the table is empty afterwards, and new traffic opens new sessions.
    udp_mapping(env, SUB2, SERVER_A, 40400, 1)?;
    let out = cgnatctl(env, &["-o", "json", "sessions", "flush"])?;
    let n: u64 = out
        .stdout
        .trim()
        .parse()
        .map_err(|_| format!("flush: {}", out.stdout))?;
    ensure(n >= 1, || {
        format!("flush deleted {n} sessions, the UDP flow was live")
    })?;
    let left = sessions_json(env, &[])?;
    ensure(left.is_empty(), || {
        format!("sessions left after a flush: {left:?}")
    })?;
    udp_mapping(env, SUB2, SERVER_A, 40401, 1)?;
    let now = sessions_json(env, &["--inside", &format!("{SUB2_IP}:40401")])?;
    ensure(now.len() == 1, || {
        format!("a new flow after the flush is not listed: {now:?}")
    })
}

/// `cgnatctl sessions watch` (conntrack -E): a new flow appears as `created`, and as `deleted` when
/// it expires (short-timeout configs) or is deleted through the API; `--snapshot` starts with the
/// sessions that already exist.
pub fn sessions_are_watched(env: &Env) -> R {
    let watch = |extra: &[&str]| -> Result<Background, String> {
        let mut cmd = env.paths.ctl();
        cmd.args(["-o", "json", "sessions", "watch", "--inside", SUB1_IP]);
        cmd.args(extra);
        Background::spawn("cgnatctl sessions watch", cmd)
    };
    let mut w = watch(&[])?;
    // Workers start recording session events once the router sees the watcher (≤ 100 ms).
    thread::sleep(Duration::from_millis(500));
    udp_mapping(env, SUB1, SERVER_A, 47100, 1)?;
    let me = format!("\"inside\":\"{SUB1_IP}:47100\"");
    w.wait_line(false, Duration::from_secs(5), |l| {
        l.contains("\"created\"") && l.contains(&me)
    })
    .map_err(|e| format!("the watcher did not see the new flow: {e}"))?;

    // A second watcher with --snapshot sees the flow that already exists first.
    let mut snap = watch(&["--snapshot"])?;
    snap.wait_line(false, Duration::from_secs(5), |l| {
        l.contains("\"snapshot\"") && l.contains(&me)
    })
    .map_err(|e| format!("--snapshot did not list the live flow: {e}"))?;

    let short = short_timeouts(&env.paths.config()).is_ok();
    if !short {
        let out = cgnatctl(
            env,
            &[
                "sessions",
                "delete",
                "--inside",
                &format!("{SUB1_IP}:47100"),
            ],
        )?;
        ensure(out.stdout.starts_with("1 "), || {
            format!("delete: {}", out.stdout)
        })?;
    }
    // Expiry (5 s UDP timeout) or the deletion shows up as `deleted`.
    w.wait_line(false, Duration::from_secs(15), |l| {
        l.contains("\"deleted\"") && l.contains(&me)
    })
    .map_err(|e| {
        format!(
            "the watcher did not see the flow {}: {e}",
            if short { "expire" } else { "deleted" }
        )
    })?;
    Ok(())
}

/// With `mgmt.tokens` (lab-short.yaml): no token gets nothing, the read-only token reads but
/// cannot change state, the read-write one can, and health stays open for probes.
pub fn management_api_requires_tokens(env: &Env) -> R {
    has_tokens(&env.paths.config())?;
    let tokens = env.paths.tokens().ok_or("no token files")?;
    let bare = |args: &[&str]| -> Result<proc::Output, String> {
        let mut cmd = Command::new(env.paths.cgnatctl());
        cmd.args(["--server", &env.paths.mgmt]).args(args);
        proc::run(&mut cmd, Duration::from_secs(10))
    };
    let out = bare(&["stats"])?;
    ensure(
        out.status.is_some_and(|s| !s.success()) && out.stderr.contains("UNAUTHENTICATED"),
        || {
            format!(
                "stats without a token must be UNAUTHENTICATED:\n{}",
                out.describe()
            )
        },
    )?;
    let ro = tokens.read_only.to_string_lossy().into_owned();
    bare(&["--token-file", &ro, "stats"])?.check()?;
    bare(&["--token-file", &ro, "sessions", "list"])?.check()?;
    let out = bare(&["--token-file", &ro, "sessions", "flush"])?;
    ensure(
        out.status.is_some_and(|s| !s.success()) && out.stderr.contains("PERMISSION_DENIED"),
        || {
            format!(
                "a flush with the read-only token must be PERMISSION_DENIED:\n{}",
                out.describe()
            )
        },
    )?;
    let out = cgnatctl(env, &["sessions", "delete", "--inside", "100.64.0.99"])?;
    ensure(out.stdout.trim() == "0 session(s) deleted", || {
        format!("the read-write token may delete: {}", out.stdout)
    })?;
    bare(&["health"])?.check().map(|_| ())
}
