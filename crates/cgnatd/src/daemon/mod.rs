//! Start-up, run and shutdown of the daemon.

mod backend;
mod events;
mod policy;
mod sessions;
mod setup;
mod state_file;
mod workers;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow};
use config::{Config, LogFormat};
use tracing::{error, info, warn};

use backend::DaemonBackend;

/// Command-line overrides of config values.
pub struct Overrides {
    pub log_json: Option<bool>,
    pub log_level: Option<String>,
    pub file_prefix: Option<String>,
}

/// `cgnatd --check-config FILE`: what a start with FILE would run, the translation policy saved
/// in `mgmt.state_file` (if there is one) included, since a start restores it over the file's.
pub fn check_config(path: &Path) -> ExitCode {
    let mut restored = None;
    // Read once, as a start does: the text is also the base the saved policy applies to.
    match std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))
        .and_then(|text| {
            let file_cfg =
                Config::from_yaml_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let initial = policy::initial(&text, &file_cfg)
                .map_err(|e| format!("{}: {e:#}", path.display()))?;
            if let Some(state) = &initial.restored_from {
                restored = Some((state.clone(), initial.generation));
            }
            Ok(initial.config)
        })
        .and_then(|cfg| {
            // The NAT core's own checks (deterministic pools, port blocks), for the real worker count.
            let rules = setup::nat_rules(&cfg).map_err(|e| format!("{}: {e:#}", path.display()))?;
            let workers = u16::try_from(cfg.worker_count()).unwrap_or(u16::MAX);
            // Table sizes do not matter to these checks: keep the trial shard small.
            let trial = nat::ShardConfig {
                max_sessions: 1024,
                max_mappings: 0,
                max_subscribers: 0,
                ..setup::shard_config(&cfg, 0, workers.max(1), 0)
            };
            nat::Shard::new(
                trial,
                std::sync::Arc::new(rules),
                std::sync::Arc::new(nat::Counters::default()),
                0,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(cfg)
        }) {
        Ok(cfg) => {
            let addrs: u64 = cfg.pools.iter().map(|p| p.len()).sum();
            println!(
                "config OK: {} ({} ports, {} pools with {} addresses, {} snat rules, {} workers on lcores {:?})",
                path.display(),
                cfg.ports.len(),
                cfg.pools.len(),
                addrs,
                cfg.snat.len(),
                cfg.worker_count(),
                cfg.worker_lcores()
            );
            if let Some((state, generation)) = restored {
                println!(
                    "with the translation policy a start restores from state file {} (generation {generation})",
                    state.display()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cgnatd: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(cfg: &Config, o: &Overrides) -> Result<()> {
    let level = o
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.logging.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|e| anyhow!("bad log level {level:?}: {e}"))?;
    let json = o.log_json.unwrap_or(cfg.logging.format == LogFormat::Json);
    // Colours only for a person at a terminal; log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let res = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| anyhow!("cannot install the log subscriber: {e}"))
}

/// Shortest token accepted: a guessable token protects nothing.
const TOKEN_MIN_LEN: usize = 16;

/// Read the management tokens named in the config (each file holds one token; surrounding
/// whitespace is ignored). Errors name the field and the file.
fn load_tokens(cfg: &Config) -> Result<mgmt::Tokens> {
    let read = |field: &str, path: &Option<std::path::PathBuf>| -> Result<Option<String>> {
        let Some(path) = path else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("{field}: cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < TOKEN_MIN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(anyhow!(
                "{field}: {} must hold one token of at least {TOKEN_MIN_LEN} printable characters",
                path.display()
            ));
        }
        warn_if_shared(field, path, "token file");
        Ok(Some(token.to_owned()))
    };
    let tokens = mgmt::Tokens {
        read_write: read("mgmt.tokens.read_write", &cfg.mgmt.read_write_token)?,
        read_only: read("mgmt.tokens.read_only", &cfg.mgmt.read_only_token)?,
    };
    if tokens.read_write.is_some() && tokens.read_write == tokens.read_only {
        return Err(anyhow!(
            "mgmt.tokens: read_write and read_only hold the same token, so read-only callers could write"
        ));
    }
    Ok(tokens)
}

/// A secret that other users can read is no secret; the daemon still starts (the operator may
/// have reasons), but says so.
fn warn_if_shared(field: &str, path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(file = %path.display(), "{field}: the {what} is readable by other users; chmod 600 it");
    }
}

/// Read and check the PEM files of `mgmt.tls`. Errors name the field and the file, and say
/// what is wrong with it.
fn load_tls(cfg: &Config) -> Result<Option<mgmt::TlsConfig>> {
    let Some(tls) = &cfg.mgmt.tls else {
        return Ok(None);
    };
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| anyhow!("{field}: cannot read {}: {e}", path.display()))
    };
    let cert = read("mgmt.tls.cert", &tls.cert)?;
    let key = read("mgmt.tls.key", &tls.key)?;
    warn_if_shared("mgmt.tls.key", &tls.key, "private key file");
    let client_ca = match &tls.client_ca {
        Some(path) => Some(read("mgmt.tls.client_ca", path)?),
        None => None,
    };
    let (cert_file, key_file) = (tls.cert.display(), tls.key.display());
    mgmt::TlsConfig::from_pem(cert, key, client_ca)
        .map(Some)
        .map_err(|e| match &e {
            mgmt::TlsError::CertChain(_) => anyhow!("mgmt.tls.cert: {cert_file} {e}"),
            mgmt::TlsError::Key(_) => anyhow!("mgmt.tls.key: {key_file} {e}"),
            mgmt::TlsError::KeyMismatch(_) => {
                anyhow!("mgmt.tls.key: {key_file} {e} (mgmt.tls.cert: {cert_file})")
            }
            mgmt::TlsError::Ca(_) => {
                let ca_file = tls.client_ca.as_deref().unwrap_or(Path::new("")).display();
                anyhow!("mgmt.tls.client_ca: {ca_file} {e}")
            }
        })
}

/// Everything the management server needs from the config, files read and checked.
fn mgmt_config(cfg: &Config) -> Result<mgmt::ServerConfig> {
    let server = mgmt::ServerConfig {
        listen: cfg.mgmt.listen,
        tokens: load_tokens(cfg)?,
        tls: load_tls(cfg)?,
    };
    if !server.listen.ip().is_loopback() {
        let client_certs = server
            .tls
            .as_ref()
            .is_some_and(mgmt::TlsConfig::requires_client_cert);
        if server.tls.is_none() {
            warn!(listen = %server.listen, "the management API listens beyond loopback without TLS: calls, replies and tokens can be read and changed on the way (set mgmt.tls)");
        }
        if !server.tokens.is_enabled() && !client_certs {
            warn!(listen = %server.listen, "the management API listens beyond loopback without tokens or client certificates: anyone who reaches it can flush the session table");
        }
    }
    Ok(server)
}

/// SIGTERM, SIGINT and SIGHUP, caught from the first instruction of [`run`]: start-up (EAL,
/// hugepages, tables of millions of sessions) takes seconds, and a signal's default action in
/// that time would kill the process (a `systemctl reload` right after start included) and leave
/// DPDK's runtime directory behind.
struct Signals {
    /// A termination signal came: stop (at the next step of start-up, or the running daemon).
    stop: Arc<AtomicBool>,
    /// A SIGHUP came; it is applied once the daemon serves (see [`policy::reload_on_hangup`]).
    hangup: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let stop = Arc::new(AtomicBool::new(false));
        let hangup = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            // Registered before the flag: a second termination signal, while a shutdown is
            // under way (and perhaps stuck), ends the process at once with status 1.
            signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
                .context("cannot catch termination signals")?;
            signal_hook::flag::register(sig, stop.clone())
                .context("cannot catch termination signals")?;
        }
        signal_hook::flag::register(SIGHUP, hangup.clone()).context("cannot catch SIGHUP")?;
        Ok(Signals { stop, hangup })
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Panics (a worker's included: the lcore launcher catches them, so the process goes on) reach
/// the log as well as stderr, with the thread they happened on.
fn log_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // DPDK starts its lcore threads itself, so they have no Rust name: name the lcore.
        let thread = std::thread::current();
        match dpdk::lcore::current() {
            Some(lcore) => error!(lcore = lcore.0, "{info}"),
            None => error!(thread = thread.name().unwrap_or("unnamed"), "{info}"),
        }
        default_hook(info);
    }));
}

/// Run until SIGINT/SIGTERM.
pub fn run(path: &Path, o: Overrides) -> Result<()> {
    let signals = Signals::install()?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read config file {}: {e}", path.display()))?;
    let file_cfg = Config::from_yaml_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    // The policy applied through the API last time (mgmt.state_file), else the file's own.
    let initial = policy::initial(&text, &file_cfg)?;
    let mut cfg = initial.config.clone();
    if let Some(p) = &o.file_prefix {
        cfg.with_file_prefix(p)
            .map_err(|e| anyhow!("--file-prefix: {e}"))?;
    }
    init_logging(&cfg, &o)?;
    log_panics();
    info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "cgnatd starting");
    if let Some(state) = &initial.restored_from {
        info!(state_file = %state.display(), generation = initial.generation, "restored the applied translation policy");
    }
    // Before DPDK: a token or TLS file that cannot be read is a configuration error, found at once.
    let mgmt_cfg = mgmt_config(&cfg)?;

    let started_at = SystemTime::now();
    if signals.stopping() {
        info!("termination signal received during start-up, not starting");
        return Ok(());
    }
    let eal_args = cfg.eal_args("cgnatd");
    info!(args = ?eal_args, "initialising DPDK EAL");
    let eal = dpdk::Eal::init(&eal_args).context("DPDK EAL initialisation failed")?;

    let stop = Arc::new(AtomicBool::new(false));
    let outcome = setup::start(&cfg, initial.generation, stop.clone()).and_then(|mut dp| {
        if signals.stopping() {
            info!("termination signal received during start-up, stopping");
            stop.store(true, Ordering::Relaxed);
            let summary = dp.shutdown();
            info!(%summary, "data plane stopped");
            return Ok(());
        }
        let table = dp
            .dnat
            .take()
            .ok_or_else(|| anyhow!("the data plane has no destination NAT table"))?;
        let outside = cfg.outside_port();
        let wiring = policy::Wiring {
            controls: dp.controls.clone(),
            dnat_counters: dp.dnat_counters.clone(),
            counters: dp.counters(),
            outside_addr: outside.address,
            outside_net: outside.prefix,
            workers: u16::try_from(dp.controls.len()).unwrap_or(u16::MAX),
            block_capacity: dp.block_capacity,
            status: dp.status.clone(),
        };
        let plane = Arc::new(policy::PolicyPlane::new(
            initial,
            dp.rules.clone(),
            table,
            text,
            wiring,
        ));
        let backend = Arc::new(DaemonBackend::new(&dp, started_at, plane.clone()));
        let reload = Reload {
            path: path.to_path_buf(),
            plane,
        };
        let served = serve(&cfg, backend, &dp, mgmt_cfg, reload, &signals, &stop);
        // Whatever happened to the control plane, the workers stop and the ports go down cleanly.
        stop.store(true, Ordering::Relaxed);
        let status = dp.status.clone();
        let summary = dp.shutdown();
        info!(%summary, "data plane stopped");
        // A daemon that lost a worker (while running, or on its way out: shutdown records that
        // too) did not run as configured: say so in the exit status.
        match (served, status.first_stopped()) {
            (Ok(()), Some(stopped)) => Err(anyhow!("{stopped}: the data plane did not run whole")),
            (served, _) => served,
        }
    });
    if let Err(e) = eal.try_cleanup() {
        warn!(error = %e, "EAL cleanup failed");
    }
    if outcome.is_ok() {
        info!("cgnatd stopped");
    }
    outcome
}

/// Serve the management API and log periodic stats until a termination signal arrives.
/// What SIGHUP reloads.
struct Reload {
    path: std::path::PathBuf,
    plane: Arc<policy::PolicyPlane>,
}

fn serve(
    cfg: &Config,
    backend: Arc<DaemonBackend>,
    dp: &setup::DataPlane,
    mgmt_cfg: mgmt::ServerConfig,
    reload: Reload,
    signals: &Signals,
    workers_stop: &AtomicBool,
) -> Result<()> {
    // The control plane gets a small runtime on the main lcore's CPU.
    // EAL has pinned this (main lcore) thread; pin the runtime's threads to the same CPUs
    // explicitly, so no control-plane work ever lands on a worker core whatever the scheduler does.
    let control_cpus = core_affinity::get_core_ids().unwrap_or_default();
    info!(cpus = ?control_cpus.iter().map(|c| c.id).collect::<Vec<_>>(), "control plane CPUs");
    let pin_to = control_cpus.first().copied();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cgnat-ctl")
        .on_thread_start(move || {
            if let Some(core) = pin_to {
                core_affinity::set_for_current(core);
            }
        })
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    let listen = mgmt_cfg.listen;
    let interval = cfg.stats_interval;
    let counters = dp.counters();
    let broker = backend.sessions.clone();
    let queues = dp.events.clone();
    let last_queues = dp.events.clone();
    let router = Arc::new(events::EventRouter {
        log: cfg.logging.nat_events,
        watchers: backend.session_events.clone(),
        controls: dp.controls.clone(),
    });
    let last_router = router.clone();
    rt.block_on(async move {
        let bound = mgmt::bind(mgmt_cfg, backend)
            .await
            .with_context(|| format!("management API cannot listen on {listen}"))?;
        info!(listen = %bound.local_addr(), "management API listening");
        let health = bound.health_switch();
        info!("cgnatd forwarding");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let stats = tokio::spawn(async move {
            if interval.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
            tick.tick().await;
            loop {
                tick.tick().await;
                info!(target: "cgnatd::stats", "{}", backend::summary_line(&counters));
            }
        });
        let drained = {
            let (plane, broker) = (reload.plane.clone(), broker.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(policy::DRAIN_CHECK);
                loop {
                    tick.tick().await;
                    plane.free_drained_pools(&broker).await;
                }
            })
        };
        let reloader = tokio::spawn(policy::reload_on_hangup(
            reload.path,
            reload.plane,
            broker.clone(),
            signals.hangup.clone(),
        ));
        let dispatcher = tokio::spawn(broker.run());
        let event_log = tokio::spawn(async move {
            if queues.is_empty() {
                return;
            }
            loop {
                // Often enough that a full default queue (4096) takes well over a second of new
                // mappings to fill, rarely enough to cost nothing when idle; faster while someone
                // watches sessions, which come one per flow.
                let watching = router.update_watching();
                tokio::time::sleep(Duration::from_millis(if watching { 10 } else { 100 })).await;
                for (worker, q) in &queues {
                    // What is there now, not what keeps arriving: a logger slower than the event
                    // rate must not starve the gRPC server on this runtime (the rest waits, and
                    // the workers' rings count what they cannot keep).
                    for _ in 0..q.len() {
                        if let Some(e) = q.pop() {
                            router.route(*worker, &e);
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        });
        // Until a termination signal: look at the workers meanwhile (see `workers`).
        let mut tick = tokio::time::interval(SIGNAL_POLL);
        while !signals.stopping() {
            tick.tick().await;
            // Only the workers' own stop flag: a signal does not stop them, so a worker found
            // stopped in the tick a signal arrives has failed all the same.
            let stopping = || workers_stop.load(Ordering::Acquire);
            for (w, why) in workers::look(&dp.status, stopping, |w| dp.worker_ended(w)) {
                error!(
                    worker = w,
                    lcore = dp.workers[w].0.0,
                    reason = %why,
                    "worker stopped: the traffic it owns is dropped and its sessions cannot be \
                     listed; health is NOT_SERVING; restart cgnatd"
                );
                health.set_not_serving().await;
            }
        }
        info!("termination signal received, shutting down");
        stats.abort();
        event_log.abort();
        dispatcher.abort();
        reloader.abort();
        drained.abort();
        // Stop the workers first: they translate new flows until they stop, and the mapping and
        // port block events of those flows (the record of who held an outside address and port
        // when) must reach the log too. Each exports its last events as it stops.
        workers_stop.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + WORKER_STOP_WAIT;
        while dp.workers_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for (worker, q) in &last_queues {
            for _ in 0..q.len() {
                if let Some(e) = q.pop() {
                    last_router.route(*worker, &e);
                }
            }
        }
        let _ = tx.send(());
        match server.await {
            Ok(r) => r.context("management API failed"),
            Err(e) => Err(anyhow!("management API task failed: {e}")),
        }
    })
}

/// How long the control plane waits for the workers to leave their loops at shutdown (they
/// do within one iteration) before it drains their event queues anyway.
const WORKER_STOP_WAIT: Duration = Duration::from_secs(2);

/// How often the control plane looks at the signal flags (polled, so that a signal that came
/// during start-up counts too) and at the workers.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(rw: Option<&std::path::Path>, ro: Option<&std::path::Path>) -> Config {
        let mut cfg = Config::from_yaml_str(include_str!("../../../../config/lab.yaml")).unwrap();
        cfg.mgmt.read_write_token = rw.map(|p| p.to_path_buf());
        cfg.mgmt.read_only_token = ro.map(|p| p.to_path_buf());
        cfg
    }

    #[test]
    fn token_files_are_read_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("cgnatd-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (rw, ro, short) = (dir.join("rw"), dir.join("ro"), dir.join("short"));
        std::fs::write(&rw, "rw-token-0123456789abcdef\n").unwrap();
        std::fs::write(&ro, "  ro-token-0123456789abcdef  \n").unwrap();
        std::fs::write(&short, "abc\n").unwrap();
        let t = load_tokens(&cfg_with(Some(&rw), Some(&ro))).unwrap();
        assert_eq!(t.read_write.as_deref(), Some("rw-token-0123456789abcdef"));
        assert_eq!(t.read_only.as_deref(), Some("ro-token-0123456789abcdef"));
        assert!(!load_tokens(&cfg_with(None, None)).unwrap().is_enabled());
        let e = load_tokens(&cfg_with(Some(&short), None))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("mgmt.tokens.read_write: ") && e.contains("at least 16"),
            "{e}"
        );
        let e = load_tokens(&cfg_with(None, Some(&dir.join("missing"))))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mgmt.tokens.read_only: cannot read"), "{e}");
        let e = load_tokens(&cfg_with(Some(&rw), Some(&rw)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("same token"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_files_are_read_and_a_bad_one_is_named() {
        let dir = std::env::temp_dir().join(format!("cgnatd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = file("ca.crt", &ca_params.self_signed(&ca_key).unwrap().pem());
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["nat1.example".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let cert = file("mgmt.crt", &leaf.pem());
        let key = file("mgmt.key", &key.serialize_pem());
        let other_key = file(
            "other.key",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let with = |cert: &Path, key: &Path, client_ca: Option<&Path>| {
            let mut cfg = cfg_with(None, None);
            cfg.mgmt.tls = Some(config::MgmtTls {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: client_ca.map(Path::to_path_buf),
            });
            load_tls(&cfg)
        };
        assert!(load_tls(&cfg_with(None, None)).unwrap().is_none());
        let tls = with(&cert, &key, Some(&ca)).unwrap().unwrap();
        assert!(tls.requires_client_cert());
        assert!(
            !with(&cert, &key, None)
                .unwrap()
                .unwrap()
                .requires_client_cert()
        );
        let e = with(&dir.join("missing.crt"), &key, None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("mgmt.tls.cert: cannot read "), "{e}");
        // Certificate and key swapped.
        let e = with(&key, &cert, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "mgmt.tls.cert: {} holds no certificate (no `-----BEGIN CERTIFICATE-----` block)",
                key.display()
            )
        );
        let e = with(&cert, &other_key, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "mgmt.tls.key: {} is not the key",
                other_key.display()
            )) && e.ends_with(&format!("(mgmt.tls.cert: {})", cert.display())),
            "{e}"
        );
        let e = with(&cert, &key, Some(&key)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "mgmt.tls.client_ca: {} holds no certificate",
                key.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The child half of the signal test: catch signals as the daemon does, then take two
    /// SIGTERMs.
    #[test]
    #[ignore = "child process of a_second_termination_signal_ends_the_process_at_once"]
    fn signals_child() {
        if std::env::var_os("CGNATD_SIGNALS_CHILD").is_none() {
            return;
        }
        let signals = Signals::install().unwrap();
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
        assert!(signals.stopping(), "the first SIGTERM asks for a stop");
        println!("first SIGTERM caught, still running");
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        println!("survived the second SIGTERM");
    }

    /// A shutdown that hangs (a stuck worker, a port that will not close) can still be cut short:
    /// the first SIGTERM or SIGINT asks for a clean stop, the second ends the process at once
    /// with status 1.
    #[test]
    fn a_second_termination_signal_ends_the_process_at_once() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "daemon::tests::signals_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CGNATD_SIGNALS_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("first SIGTERM caught, still running"),
            "{stdout}"
        );
        assert!(!stdout.contains("survived"), "{stdout}");
        assert_eq!(out.status.code(), Some(1), "{stdout}");
    }

    /// `--check-config` checks what a start would run: a saved policy (mgmt.state_file) that no
    /// longer fits the file fails the check, as it would fail the start.
    #[test]
    fn check_config_checks_the_saved_policy_a_start_restores() {
        let dir = std::env::temp_dir().join(format!("cgnatd-check-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.yaml");
        let text = include_str!("../../../../config/lab.yaml").replace(
            "mgmt:\n",
            &format!("mgmt:\n  state_file: {}\n", state.display()),
        );
        let file = dir.join("cfg.yaml");
        std::fs::write(&file, &text).unwrap();
        // No state file yet: the file's own policy.
        assert_eq!(check_config(&file), ExitCode::SUCCESS);
        // A saved policy whose rule names a pool the file does not have.
        std::fs::write(
            &state,
            "generation: 3\npolicy:\n  pools:\n    - name: a\n      addresses: [203.0.113.1]\n  snat:\n    - match: 100.64.0.0/10\n      pool: nosuch\n",
        )
        .unwrap();
        let file_cfg = Config::from_yaml_str(&text).unwrap();
        assert!(
            policy::initial(&text, &file_cfg).is_err(),
            "a start refuses it"
        );
        let check = check_config(&file);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(check, ExitCode::from(2), "and so does --check-config");
    }
}
