//! The shared test environment: the namespace lab (scripts/lab.sh), the cgnatd under
//! test, the servers in cgn-inet and the destination NAT backends in cgn-sub1/cgn-sub2, and
//! typed access to `cgnatctl stats -o json` and `cgnatctl dnat -o json`.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proc::{self, Background};

pub const SUB1: &str = "cgn-sub1";
pub const SUB2: &str = "cgn-sub2";
pub const INET: &str = "cgn-inet";
/// Two routed hops beyond cgnatd, behind cgn-inet (scripts/lab.sh).
pub const FAR: &str = "cgn-far";
pub const SUB1_IP: &str = "100.64.0.11";
pub const SUB2_IP: &str = "100.64.0.12";
pub const NAT_INSIDE_IP: &str = "100.64.0.1";
pub const SERVER_A: &str = "198.51.100.10";
pub const SERVER_B: &str = "198.51.100.11";
/// cgnatd's outside address; cgn-inet's next hop for the pool, and the MASQUERADE pool.
pub const NAT_OUTSIDE_IP: &str = "192.0.2.1";
/// A server in cgn-inet that the lab configs' SNAT rules reach under MASQUERADE.
pub const MASQ_SERVER: &str = "198.51.100.20";
/// cgn-inet on the link to cgnatd: the second hop from a subscriber.
pub const INET_IP: &str = "192.0.2.2";
/// cgn-far: the third hop, behind cgn-inet's far0 (MTU 1400).
pub const FAR_IP: &str = "198.18.0.2";
/// The MTU of cgn-inet's end of the link to cgn-far: the bottleneck on the path.
pub const FAR_LINK_MTU: u32 = 1400;
pub const UDP_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 8080;
pub const FILE_SIZE: usize = 8 * 1024 * 1024;

// Destination NAT (the `nat.dnat` rules of config/lab.yaml and lab-2workers.yaml). The
// addresses are in 203.0.113.0/24, which cgn-inet routes to cgnatd, but not in the pool.
/// Port forwarding: tcp :8080 → 100.64.0.11:8000 (forward-web), udp :5353 → 100.64.0.11:5353.
pub const VIP_FORWARD: &str = "203.0.113.100";
/// The services web (:80, random), web-rr (:81, round robin) and web-maglev (:82).
pub const VIP_SERVICE: &str = "203.0.113.101";
/// web-fullnat: tcp :80 → 100.64.0.23:8003 with the client translated to pool `lab`.
pub const VIP_FULLNAT: &str = "203.0.113.102";
/// web-sticky: tcp :80, random, client-IP affinity (30 s).
pub const VIP_STICKY: &str = "203.0.113.103";
/// static-host: 203.0.113.50 is 100.64.0.24, one to one, every protocol and port.
pub const STATIC_OUTSIDE_IP: &str = "203.0.113.50";
pub const STATIC_INSIDE_IP: &str = "100.64.0.24";
/// forward-web's backend, on cgn-sub1's own (primary) address.
pub const FORWARD_BACKEND: &str = "100.64.0.11:8000";
pub const FORWARD_PORT: u16 = 8080;
/// forward-dns's backend (a UDP echo), and the port on both sides.
pub const DNS_BACKEND_IP: &str = "100.64.0.11";
pub const DNS_PORT: u16 = 5353;
/// The backends of web, web-rr and web-sticky with their weights (web-maglev: weight 1 each).
pub const SERVICE_BACKENDS: [(&str, u64); 3] = [
    ("100.64.0.21:8001", 1),
    ("100.64.0.22:8002", 2),
    ("100.64.0.23:8003", 3),
];
/// web-fullnat's one backend.
pub const FULLNAT_BACKEND: &str = "100.64.0.23:8003";
/// The whoami backend on the 1:1 host.
pub const STATIC_BACKEND: &str = "100.64.0.24:8004";
/// The whoami servers (tests/tools/whoami.py) of each subscriber namespace (scripts/lab.sh
/// gives cgn-sub1 100.64.0.21/.22 and cgn-sub2 100.64.0.23/.24 as secondary addresses).
pub const SUB1_BACKENDS: [&str; 3] = ["100.64.0.11:8000", "100.64.0.21:8001", "100.64.0.22:8002"];
pub const SUB2_BACKENDS: [&str; 2] = ["100.64.0.23:8003", "100.64.0.24:8004"];

/// The lab's pool, 203.0.113.1-203.0.113.6 (config/lab.yaml).
pub fn in_pool(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 203 && o[1] == 0 && o[2] == 113 && (1..=6).contains(&o[3])
}

/// The NAT timeouts, hold-down and per-subscriber port limit of the config under test, read
/// from its YAML (absent fields take the defaults of crates/config/src/defaults.rs).
#[derive(Clone, Copy, Debug)]
pub struct NatTuning {
    pub udp: u64,
    pub icmp: u64,
    pub tcp_transitory: u64,
    pub tcp_established: u64,
    pub hold_down: u64,
    pub max_ports_per_subscriber: u64,
    /// `nat.limits.icmp_unreachable`: refused flows get ICMP type 3 code 13.
    pub icmp_unreachable: bool,
}

impl NatTuning {
    /// The longest idle timeout cases may wait for (everything expires within it).
    pub const SHORT_SECS: u64 = 60;
    /// A hold-down the drain case may wait for.
    pub const SHORT_HOLD_DOWN_SECS: u64 = 10;
    /// A per-subscriber port limit the quota case can fill in a burst.
    pub const SMALL_PORT_LIMIT: u64 = 1024;

    pub fn read(config: &Path) -> Result<NatTuning, String> {
        let text =
            fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
        let v: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("{} is not YAML: {e}", config.display()))?;
        let nat = &v["nat"];
        let get = |field: &serde_yaml::Value, name: &str, default: u64| match field {
            serde_yaml::Value::Null => Ok(default),
            f => f
                .as_u64()
                .ok_or_else(|| format!("{}: nat.{name} is not an integer", config.display())),
        };
        let t = &nat["timeouts"];
        Ok(NatTuning {
            udp: get(&t["udp"], "timeouts.udp", 300)?,
            icmp: get(&t["icmp"], "timeouts.icmp", 60)?,
            tcp_transitory: get(&t["tcp_transitory"], "timeouts.tcp_transitory", 240)?,
            tcp_established: get(&t["tcp_established"], "timeouts.tcp_established", 7440)?,
            hold_down: get(&nat["hold_down"], "hold_down", 120)?,
            max_ports_per_subscriber: get(
                &nat["limits"]["max_ports_per_subscriber"],
                "limits.max_ports_per_subscriber",
                4096,
            )?,
            icmp_unreachable: nat["limits"]["icmp_unreachable"].as_bool().unwrap_or(false),
        })
    }

    pub fn longest_timeout(&self) -> u64 {
        self.udp
            .max(self.icmp)
            .max(self.tcp_transitory)
            .max(self.tcp_established)
    }

    /// Whether the cases that wait for state to expire, or fill a subscriber's quota, can run
    /// under this config (config/lab-short.yaml); otherwise why not.
    pub fn allows_expiry_cases(&self) -> Result<(), String> {
        if self.longest_timeout() <= Self::SHORT_SECS
            && self.hold_down <= Self::SHORT_HOLD_DOWN_SECS
            && (1..=Self::SMALL_PORT_LIMIT).contains(&self.max_ports_per_subscriber)
        {
            return Ok(());
        }
        Err(format!(
            "needs NAT timeouts <= {} s, hold_down <= {} s and max_ports_per_subscriber in 1..={} \
             (config/lab-short.yaml); the config under test has {}",
            Self::SHORT_SECS,
            Self::SHORT_HOLD_DOWN_SECS,
            Self::SMALL_PORT_LIMIT,
            self.describe()
        ))
    }

    pub fn describe(&self) -> String {
        format!(
            "timeouts udp {} s, icmp {} s, tcp_transitory {} s, tcp_established {} s; hold_down {} s; max_ports_per_subscriber {}",
            self.udp,
            self.icmp,
            self.tcp_transitory,
            self.tcp_established,
            self.hold_down,
            self.max_ports_per_subscriber
        )
    }
}

/// The config under test requires management tokens (config/lab-short.yaml).
pub fn has_tokens(config: &Path) -> Result<(), String> {
    let text = fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not YAML: {e}", config.display()))?;
    if v["mgmt"]["tokens"]["read_write"].is_string() && v["mgmt"]["tokens"]["read_only"].is_string()
    {
        Ok(())
    } else {
        Err(format!(
            "needs mgmt.tokens.read_write and read_only (config/lab-short.yaml); {} has none",
            config.display()
        ))
    }
}

/// The README's grpcurl examples can run against the config under test exactly as written:
/// plaintext to 127.0.0.1:50051 without a token, so the API must listen there, without TLS and
/// without `mgmt.tokens` (config/lab-short.yaml requires tokens).
pub fn plain_grpc_on_loopback(config: &Path) -> Result<(), String> {
    let text = fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not YAML: {e}", config.display()))?;
    let mgmt = &v["mgmt"];
    let listen = mgmt["listen"].as_str().unwrap_or("127.0.0.1:50051");
    let mut why = Vec::new();
    if listen != "127.0.0.1:50051" {
        why.push(format!("mgmt.listen is {listen}"));
    }
    if !mgmt["tokens"].is_null() {
        why.push("mgmt.tokens requires a bearer token".to_string());
    }
    if !mgmt["tls"].is_null() {
        why.push("mgmt.tls requires TLS".to_string());
    }
    if why.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the README's grpcurl examples speak plaintext to 127.0.0.1:50051 without a token; in {}: {}",
        config.display(),
        why.join(", ")
    ))
}

/// The config under test has destination NAT rules (`nat.dnat`, config/lab.yaml and
/// lab-2workers.yaml). The cases assume those exact rules (the lab VIPs and backends above).
pub fn has_dnat(config: &Path) -> Result<(), String> {
    let text = fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not YAML: {e}", config.display()))?;
    if v["nat"]["dnat"]
        .as_sequence()
        .is_some_and(|r| !r.is_empty())
    {
        Ok(())
    } else {
        Err(format!(
            "needs destination NAT rules (nat.dnat, as in config/lab.yaml); {} has none",
            config.display()
        ))
    }
}

/// The config under test has short timeouts and a small port limit (config/lab-short.yaml).
pub fn short_timeouts(config: &Path) -> Result<(), String> {
    NatTuning::read(config)?.allows_expiry_cases()
}

/// The config's ports hand IPv4 fragments to cgnatd as they were sent. DPDK's net_af_packet
/// (22.11) does not: it joins its sockets to a PACKET_FANOUT_FLAG_DEFRAG group, so the root
/// kernel reassembles fragments first and the PMD passes on the datagram cut to its frame size.
pub fn ports_pass_fragments(config: &Path) -> Result<(), String> {
    let text = fs::read_to_string(config).map_err(|e| format!("read {}: {e}", config.display()))?;
    let v: serde_yaml::Value = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not YAML: {e}", config.display()))?;
    let defrag: Vec<&str> = v["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p["device"]["vdev"].as_str())
                .filter(|vdev| vdev.starts_with("net_af_packet"))
                .collect()
        })
        .unwrap_or_default();
    if defrag.is_empty() {
        return Ok(());
    }
    Err(format!(
        "needs ports that pass IPv4 fragments unchanged (config/lab-pcap.yaml); {} uses net_af_packet ({}), whose PACKET_FANOUT_FLAG_DEFRAG makes the kernel reassemble fragments before cgnatd sees them",
        config.display(),
        defrag.join(", ")
    ))
}

/// Parses "a.b.c.d:port".
pub fn parse_sockaddr(s: &str) -> Result<(Ipv4Addr, u16), String> {
    let (ip, port) = s
        .trim()
        .rsplit_once(':')
        .ok_or_else(|| format!("not ip:port: {s:?}"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|e| format!("bad address in {s:?}: {e}"))?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("bad port in {s:?}: {e}"))?;
    Ok((ip, port))
}

/// The management tokens of a config that requires them.
#[derive(Debug, Clone)]
pub struct TokenFiles {
    pub read_write: PathBuf,
    pub read_only: PathBuf,
}

impl TokenFiles {
    /// Write fresh random tokens (owner-only), before cgnatd starts.
    pub fn create(&self) -> Result<(), String> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        for path in [&self.read_write, &self.read_only] {
            let mut raw = [0u8; 16];
            File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(|e| format!("/dev/urandom: {e}"))?;
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            }
            fs::write(path, format!("{token}\n"))
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

pub struct Paths {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub work: PathBuf,
    pub python: String,
    pub mgmt: String,
}

impl Paths {
    pub fn discover() -> Paths {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin_dir = match std::env::var_os("CGNAT_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("CARGO_TARGET_DIR") {
                Some(t) => PathBuf::from(t).join("release"),
                None => root.join("target/release"),
            },
        };
        Paths {
            work: root.join(".lab/e2e"),
            bin_dir,
            // Debian's python carries scapy; a python3 earlier in PATH (pyenv) may not.
            python: std::env::var("CGNAT_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into()),
            mgmt: std::env::var("CGNAT_MGMT").unwrap_or_else(|_| "http://127.0.0.1:50051".into()),
            root,
        }
    }

    pub fn cgnatd(&self) -> PathBuf {
        self.bin_dir.join("cgnatd")
    }

    pub fn cgnatctl(&self) -> PathBuf {
        self.bin_dir.join("cgnatctl")
    }

    /// `cgnatctl --server <lab daemon>`, with the read-write token when the config asks for
    /// tokens (the runner writes the token files before starting cgnatd).
    pub fn ctl(&self) -> Command {
        let mut cmd = Command::new(self.cgnatctl());
        cmd.args(["--server", &self.mgmt]);
        if let Some(t) = self.tokens().map(|t| t.read_write) {
            cmd.arg("--token-file").arg(t);
        }
        cmd
    }

    /// The token files the config under test names (`mgmt.tokens`), if any.
    pub fn tokens(&self) -> Option<TokenFiles> {
        let text = fs::read_to_string(self.config()).ok()?;
        let v: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
        let t = &v["mgmt"]["tokens"];
        Some(TokenFiles {
            read_write: PathBuf::from(t["read_write"].as_str()?),
            read_only: PathBuf::from(t["read_only"].as_str()?),
        })
    }

    /// The daemon config: `CGNAT_CONFIG` (relative to the repository root), default
    /// config/lab.yaml. `make e2e` runs the suite once per lab config (one and two workers).
    pub fn config(&self) -> PathBuf {
        let rel = std::env::var("CGNAT_CONFIG").unwrap_or_else(|_| "config/lab.yaml".into());
        self.root.join(rel)
    }

    pub fn tool(&self, name: &str) -> String {
        self.root
            .join("tests/tools")
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    pub fn lab_sh(&self, verb: &str, timeout: Duration) -> Result<(), String> {
        let script = self.root.join("scripts/lab.sh");
        proc::run(Command::new("bash").arg(script).arg(verb), timeout)?
            .check()
            .map(|_| ())
    }
}

/// The cgnatd under test. Its output goes to a log file so a crash leaves evidence.
///
/// [`Env`](crate::Env) holds it by shared reference, and [`Daemon::restart`] replaces the
/// process, so the process (child, PID, exit status) lives in interior mutability.
pub struct Daemon {
    child: Mutex<Option<Child>>,
    /// The running process's PID; [`Daemon::restart`] changes it.
    pid: AtomicU32,
    bin: PathBuf,
    pub log: PathBuf,
    /// Where in [`Daemon::log`] the current process's output begins (0, or where the log was
    /// when [`Daemon::restart`] started the new process).
    log_start: AtomicUsize,
    pub prefix: String,
    /// The config file cgnatd runs from: a copy of the config under test in the run's work
    /// directory, so a case may edit it and send SIGHUP ([`Daemon::reload`]), and must put the
    /// original back afterwards. Paths inside the config (tokens) are absolute, so the copy
    /// works from anywhere. The copy also sets `mgmt.state_file` to [`Daemon::state_file`].
    pub config: PathBuf,
    /// `mgmt.state_file` of the copy: where cgnatd writes the policy applied through the API, and
    /// restores it from at start ([`Daemon::restart`] keeps it; [`Daemon::start`] removes it).
    pub state_file: PathBuf,
    exit: Mutex<Option<ExitStatus>>,
}

impl Daemon {
    pub fn start(paths: &Paths, prefix: &str) -> Result<Daemon, String> {
        let log = paths.work.join("cgnatd.log");
        let config = paths.work.join("cgnatd.yaml");
        let state_file = paths.work.join("policy-state.yaml");
        // A state file left by an earlier run would be restored over the config's policy: every
        // run starts from the file's.
        for stale in [state_file.clone(), state_file.with_extension("yaml.tmp")] {
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("remove the stale {}: {e}", stale.display()));
                }
                _ => {}
            }
        }
        let text = fs::read_to_string(paths.config())
            .map_err(|e| format!("read {}: {e}", paths.config().display()))?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| format!("{} is not YAML: {e}", paths.config().display()))?;
        let mgmt = v
            .as_mapping_mut()
            .ok_or_else(|| format!("{} is not a mapping", paths.config().display()))?
            .entry("mgmt".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
        mgmt.as_mapping_mut()
            .ok_or_else(|| format!("{}: mgmt is not a mapping", paths.config().display()))?
            .insert(
                "state_file".into(),
                state_file.to_string_lossy().into_owned().into(),
            );
        let copy = serde_yaml::to_string(&v).map_err(|e| format!("serialize the config: {e}"))?;
        fs::write(&config, copy).map_err(|e| format!("write {}: {e}", config.display()))?;
        let out = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = Self::spawn(&paths.cgnatd(), &config, prefix, out)?;
        let pid = child.id();
        proc::register(pid);
        Ok(Daemon {
            child: Mutex::new(Some(child)),
            pid: AtomicU32::new(pid),
            bin: paths.cgnatd(),
            log,
            log_start: AtomicUsize::new(0),
            prefix: prefix.to_string(),
            config,
            state_file,
            exit: Mutex::new(None),
        })
    }

    fn spawn(bin: &Path, config: &Path, prefix: &str, out: File) -> Result<Child, String> {
        let err = out.try_clone().map_err(|e| e.to_string())?;
        Command::new(bin)
            .arg("--config")
            .arg(config)
            .args([
                "--file-prefix",
                prefix,
                "--log-format",
                "text",
                "--log-level",
                "info",
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))
    }

    /// Stops cgnatd (SIGTERM; it must exit 0 within 15 s), removes its DPDK runtime files, and
    /// starts it again from the same config copy, state file and file prefix, its output appended
    /// to the same log. Returns once it forwards again: it has logged `cgnatd forwarding` and
    /// cgn-sub1 gets a ping through (which also needs ARP both ways).
    pub fn restart(&self) -> Result<Duration, String> {
        self.ensure_alive()?;
        let began = Instant::now();
        let (status, killed) = self.stop(Duration::from_secs(15));
        if killed || !status.is_some_and(|s| s.success()) {
            return Err(format!(
                "restart: cgnatd did not exit cleanly on SIGTERM ({status:?}, killed: {killed})\n--- cgnatd log tail ---\n{}",
                self.log_tail()
            ));
        }
        self.remove_runtime_files();
        let out = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0) as usize;
        {
            let mut guard = self
                .child
                .lock()
                .map_err(|_| "poisoned daemon lock".to_string())?;
            let child = Self::spawn(&self.bin, &self.config, &self.prefix, out)?;
            let pid = child.id();
            // Registered before anyone can see the new PID, so a Ctrl-C from now on stops it.
            proc::register(pid);
            self.pid.store(pid, Ordering::SeqCst);
            self.log_start.store(offset, Ordering::SeqCst);
            *guard = Some(child);
            if let Ok(mut e) = self.exit.lock() {
                *e = None;
            }
        }
        self.wait_forwarding(Duration::from_secs(30))?;
        let reached = proc::poll(Duration::from_secs(30), Duration::from_millis(300), || {
            let out = proc::run(
                &mut proc::netns(SUB1, &["ping", "-n", "-q", "-c", "1", "-W", "1", SERVER_A]),
                Duration::from_secs(5),
            )
            .ok()?;
            (out.success() || self.exit_status().is_some()).then_some(())
        });
        self.ensure_alive()?;
        reached.ok_or_else(|| {
            format!(
                "restart: cgn-sub1 cannot ping {SERVER_A} through the restarted cgnatd within 30 s\n--- cgnatd log tail ---\n{}",
                self.log_tail()
            )
        })?;
        Ok(began.elapsed())
    }

    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// SIGHUP: cgnatd re-reads [`Daemon::config`] and applies its translation policy (the
    /// generation in `cgnatctl dnat` and `cgnatctl rules get` grows when it changed anything).
    pub fn reload(&self) -> Result<(), String> {
        self.ensure_alive()?;
        proc::send_signal(self.pid(), "HUP");
        Ok(())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the current process has logged (since the last [`Daemon::restart`]).
    pub fn log_since_start(&self) -> String {
        let log = self.log_text();
        let start = self.log_start.load(Ordering::SeqCst);
        log.get(start..).unwrap_or(&log).to_string()
    }

    pub fn log_tail(&self) -> String {
        proc::tail(&self.log_text(), 40)
    }

    /// None while running; the exit status once it has exited (reaped once, then cached).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        if let Some(s) = *self.exit.lock().ok()? {
            return Some(s);
        }
        let mut guard = self.child.lock().ok()?;
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(s)) => {
                proc::unregister(child.id());
                if let Ok(mut e) = self.exit.lock() {
                    *e = Some(s);
                }
                Some(s)
            }
            _ => None,
        }
    }

    /// Ok while the daemon runs; otherwise how it died and its log.
    pub fn ensure_alive(&self) -> Result<(), String> {
        match self.exit_status() {
            None => Ok(()),
            Some(s) => Err(format!(
                "cgnatd (pid {}) is not running: {s}\n--- cgnatd log tail ---\n{}",
                self.pid(),
                self.log_tail()
            )),
        }
    }

    /// Waits until the current process logs `cgnatd forwarding` (a restarted one: after its
    /// start, not the earlier process's line).
    pub fn wait_forwarding(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        proc::poll(timeout, Duration::from_millis(100), || {
            if self.exit_status().is_some() || self.log_since_start().contains("cgnatd forwarding")
            {
                Some(())
            } else {
                None
            }
        })
        .ok_or_else(|| {
            format!(
                "cgnatd did not log `cgnatd forwarding` within {timeout:?}\n--- log ---\n{}",
                self.log_tail()
            )
        })?;
        self.ensure_alive()?;
        Ok(start.elapsed())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status and whether it
    /// needed the SIGKILL. Idempotent: a daemon already gone reports its recorded status.
    pub fn stop(&self, grace: Duration) -> (Option<ExitStatus>, bool) {
        if let Some(s) = self.exit_status() {
            return (Some(s), false);
        }
        proc::send_signal(self.pid(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exit_status() {
                return (Some(s), false);
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Ok(mut guard) = self.child.lock()
            && let Some(child) = guard.as_mut()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        proc::unregister(self.pid());
        (self.exit_status(), true)
    }

    pub fn remove_runtime_files(&self) {
        let _ = fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
        if let Ok(dir) = fs::read_dir("/dev/hugepages") {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}map_", self.prefix))
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for Daemon {
    /// A setup that fails halfway, or a panic, must not leave the daemon behind.
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
        self.remove_runtime_files();
    }
}

/// A snapshot of `cgnatctl stats -o json`.
pub struct Stats(pub Value);

impl Stats {
    pub fn read(paths: &Paths) -> Result<Stats, String> {
        let out = proc::run(
            paths.ctl().args(["stats", "-o", "json"]),
            Duration::from_secs(10),
        )?
        .check()?;
        let v: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cgnatctl stats -o json is not JSON ({e}):\n{}", out.stdout))?;
        if !v.get("totals").is_some_and(Value::is_object) {
            return Err(format!(
                "stats JSON has no \"totals\" object:\n{}",
                out.stdout
            ));
        }
        Ok(Stats(v))
    }

    pub fn total(&self, name: &str) -> u64 {
        self.0["totals"][name].as_u64().unwrap_or(0)
    }

    /// A drop reason's counter; an absent reason means 0.
    pub fn drop_count(&self, reason: &str) -> u64 {
        self.0["drops"][reason].as_u64().unwrap_or(0)
    }

    pub fn drops_json(&self) -> String {
        self.0
            .get("drops")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".into())
    }
}

/// A snapshot of `cgnatctl dnat -o json`: `{"generation", "rules": [{"name", "address",
/// "protocol", "port", "scheduler", "snat", "affinity_timeout_s", "packets", "bytes",
/// "sessions_created", "sessions_current", "backends": [{"address", "port", "weight", "packets",
/// "bytes", "sessions_created", "sessions_current"}]}]}`.
pub struct DnatStatus(pub Value);

impl DnatStatus {
    pub fn read(paths: &Paths) -> Result<DnatStatus, String> {
        let out = proc::run(
            paths.ctl().args(["dnat", "-o", "json"]),
            Duration::from_secs(10),
        )?
        .check()?;
        let v: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("cgnatctl dnat -o json is not JSON ({e}):\n{}", out.stdout))?;
        if v["generation"].as_u64().is_none() || !v["rules"].is_array() {
            return Err(format!(
                "cgnatctl dnat -o json has no \"generation\" number or \"rules\" array:\n{}",
                out.stdout
            ));
        }
        Ok(DnatStatus(v))
    }

    pub fn generation(&self) -> u64 {
        self.0["generation"].as_u64().unwrap_or(0)
    }

    pub fn rule(&self, name: &str) -> Option<&Value> {
        self.0["rules"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name)
    }

    /// Backend `addr` ("ip:port") of rule `name`, if the rule lists it.
    pub fn backend(&self, name: &str, addr: &str) -> Option<&Value> {
        self.rule(name)?["backends"].as_array()?.iter().find(|b| {
            let ip = b["address"].as_str().unwrap_or_default();
            match b["port"].as_u64() {
                Some(p) if p != 0 => format!("{ip}:{p}") == addr,
                _ => ip == addr,
            }
        })
    }

    /// A counter of a backend of a rule; a backend the rule no longer lists counts 0.
    pub fn backend_count(&self, name: &str, addr: &str, counter: &str) -> u64 {
        self.backend(name, addr)
            .and_then(|b| b[counter].as_u64())
            .unwrap_or(0)
    }

    /// A counter of a rule (the sum over its backends); an absent rule counts 0.
    pub fn rule_count(&self, name: &str, counter: &str) -> u64 {
        self.rule(name)
            .and_then(|r| r[counter].as_u64())
            .unwrap_or(0)
    }
}

/// Servers shared by all tests: in cgn-inet UDP echo on both server addresses, and one
/// HTTP server (/file, /whoami) on both; in the subscriber namespaces the destination NAT
/// backends (whoami servers that report which backend answered and the client it saw, and a
/// UDP echo). The backends run under every lab config; only the DNAT configs reach them.
pub struct Servers {
    pub udp_a: Background,
    pub udp_b: Background,
    pub http: Background,
    pub http_log: PathBuf,
    pub file: PathBuf,
    pub file_sha256: String,
    /// whoami on [`SUB1_BACKENDS`] (cgn-sub1).
    pub backends_sub1: Background,
    /// whoami on [`SUB2_BACKENDS`] (cgn-sub2).
    pub backends_sub2: Background,
    /// UDP echo on 100.64.0.11:5353 (cgn-sub1), forward-dns's backend.
    pub dns_backend: Background,
}

impl Servers {
    pub fn start(paths: &Paths) -> Result<Servers, String> {
        let udp = |ns: &str, ip: &str, port: u16| -> Result<Background, String> {
            let mut bg = Background::spawn(
                &format!("udp echo {ip}:{port}"),
                proc::netns(
                    ns,
                    &[
                        &paths.python,
                        &paths.tool("udp_echo.py"),
                        "server",
                        "--bind",
                        ip,
                        "--port",
                        &port.to_string(),
                        "--lifetime",
                        "1200",
                    ],
                ),
            )?;
            bg.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
            Ok(bg)
        };
        let udp_a = udp(INET, SERVER_A, UDP_PORT)?;
        let udp_b = udp(INET, SERVER_B, UDP_PORT)?;
        let whoami = |ns: &str, listen: &[&str]| -> Result<Background, String> {
            let tool = paths.tool("whoami.py");
            let mut argv = vec![paths.python.as_str(), tool.as_str(), "server"];
            for l in listen {
                argv.extend(["--listen", l]);
            }
            argv.extend(["--lifetime", "1200"]);
            let mut bg = Background::spawn(&format!("whoami {ns}"), proc::netns(ns, &argv))?;
            bg.wait_line(false, Duration::from_secs(10), |l| l.contains("\"ready\""))?;
            Ok(bg)
        };
        let backends_sub1 = whoami(SUB1, &SUB1_BACKENDS)?;
        let backends_sub2 = whoami(SUB2, &SUB2_BACKENDS)?;
        let dns_backend = udp(SUB1, DNS_BACKEND_IP, DNS_PORT)?;
        let file = paths.work.join("served.bin");
        let http_log = paths.work.join("http.log");
        let mut http = Background::spawn(
            "http server",
            proc::netns(
                INET,
                &[
                    &paths.python,
                    &paths.tool("http_server.py"),
                    "--bind",
                    "0.0.0.0",
                    "--port",
                    &HTTP_PORT.to_string(),
                    "--file",
                    &file.to_string_lossy(),
                    "--size",
                    &FILE_SIZE.to_string(),
                    "--log",
                    &http_log.to_string_lossy(),
                    "--lifetime",
                    "1200",
                ],
            ),
        )?;
        let ready = http.wait_line(false, Duration::from_secs(20), |l| l.contains("\"ready\""))?;
        let v: Value =
            serde_json::from_str(&ready).map_err(|e| format!("http ready line {ready:?}: {e}"))?;
        let file_sha256 = v["sha256"]
            .as_str()
            .ok_or("http ready line has no sha256")?
            .to_string();
        Ok(Servers {
            udp_a,
            udp_b,
            http,
            http_log,
            file,
            file_sha256,
            backends_sub1,
            backends_sub2,
            dns_backend,
        })
    }

    /// Every GET the whoami backends logged: (backend ip:port, client ip:port, path).
    pub fn backend_requests(&self) -> Vec<(String, String, String)> {
        self.backends_sub1
            .stdout_lines()
            .into_iter()
            .chain(self.backends_sub2.stdout_lines())
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v["event"] == "request")
            .map(|v| {
                let f = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                (f("server"), f("client"), f("path"))
            })
            .collect()
    }

    /// Stops every server (teardown).
    pub fn stop_all(&mut self) {
        for bg in [
            &mut self.udp_a,
            &mut self.udp_b,
            &mut self.http,
            &mut self.backends_sub1,
            &mut self.backends_sub2,
            &mut self.dns_backend,
        ] {
            bg.stop_with("TERM", Duration::from_secs(2));
        }
    }

    /// Requests the HTTP server has logged: (client ip:port, path, bytes).
    pub fn http_requests(&self) -> Vec<(String, String, u64)> {
        let text = fs::read_to_string(&self.http_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["client"].as_str().unwrap_or_default().to_string(),
                    v["path"].as_str().unwrap_or_default().to_string(),
                    v["bytes"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    pub fn ensure_alive(&mut self) -> Result<(), String> {
        for (name, bg) in [
            ("udp echo A", &mut self.udp_a),
            ("udp echo B", &mut self.udp_b),
            ("http", &mut self.http),
            ("whoami cgn-sub1", &mut self.backends_sub1),
            ("whoami cgn-sub2", &mut self.backends_sub2),
            ("udp echo 100.64.0.11:5353", &mut self.dns_backend),
        ] {
            if !bg.is_running() {
                return Err(format!(
                    "lab server {name} is no longer running\n{}",
                    bg.dump()
                ));
            }
        }
        Ok(())
    }
}
