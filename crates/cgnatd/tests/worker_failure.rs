//! A worker that panics, in the real daemon: cgnatd on two workers over net_null ports, with
//! `dataplane.inject_panic` making worker 1 panic shortly after start. What an operator relies on
//! is checked through cgnatctl, as they would see it: health turns NOT_SERVING, the stats name the
//! worker, session queries and policy changes fail with the reason instead of hanging or answering
//! for half the workers, the log says what happened, and a SIGTERM still stops the daemon cleanly
//! (with a failure exit status, and no DPDK runtime files left).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CGNATD: &str = env!("CARGO_BIN_EXE_cgnatd");
const CGNATCTL: &str = env!("CARGO_BIN_EXE_cgnatctl");

struct Daemon {
    child: Child,
    server: String,
    dir: PathBuf,
    prefix: String,
}

impl Daemon {
    fn start(inject: &str) -> Daemon {
        let dir =
            std::env::temp_dir().join(format!("cgnatd-worker-failure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A free loopback port for the API (bound and released: the daemon binds it next).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let prefix = format!("cgnat-wf-{}", std::process::id());
        let config = format!(
            r#"
eal:
  # Main lcore and both workers share CPU 0 (CI machines may have two CPUs in all).
  lcores: "0@0,1@0,2@0"
  memory:
    hugepages: false
    size_mb: 256
  file_prefix: {prefix}
  log_level: warning
workers: 2
ports:
  - name: inside
    role: inside
    device:
      vdev: "net_null0,no-rx=1"
    address: 100.64.0.1/10
  - name: outside
    role: outside
    device:
      vdev: "net_null1,no-rx=1"
    address: 192.0.2.1/24
    gateway: 192.0.2.2
    neighbours:
      - {{ ip: 192.0.2.2, mac: "02:00:00:00:0b:02" }}
pools:
  - name: p
    addresses: ["203.0.113.0/30"]
snat:
  - match: 100.64.0.0/10
    pool: p
nat:
  max_sessions: 4096
dataplane:
  idle_sleep_us: 200
{inject}
mgmt:
  listen: 127.0.0.1:{port}
stats_interval: 0
"#
        );
        let path = dir.join("cgnatd.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("cgnatd.log")).unwrap();
        let child = Command::new(CGNATD)
            .arg("--config")
            .arg(&path)
            .env("RUST_BACKTRACE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon {
            child,
            server: format!("127.0.0.1:{port}"),
            dir,
            prefix,
        }
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CGNATCTL)
            .args(["--server", &self.server, "--timeout", "3s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// cgnatctl in the background (for a stream), its output captured.
    fn spawn_ctl(&self, args: &[&str]) -> Child {
        Command::new(CGNATCTL)
            .args(["--server", &self.server, "--timeout", "3s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cgnatd.log")).unwrap_or_default()
    }

    /// Poll `cgnatctl health` until it prints `want`.
    fn wait_health(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.ctl(&["health"]);
            if String::from_utf8_lossy(&out.stdout).trim() == want {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "cgnatd exited ({status}) before health was {want}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "health not {want} within {within:?}; last: {:?} {:?}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then wait for the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "cgnatd did not stop within 15 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(runtime_dir(&self.prefix));
    }
}

fn runtime_dir(prefix: &str) -> PathBuf {
    Path::new("/var/run/dpdk").join(prefix)
}

/// Seconds since midnight of a log line's leading RFC 3339 timestamp
/// (`2026-12-04T22:02:02.499267Z ...`).
fn seconds_of_day(line: &str) -> Option<f64> {
    let time = line.get(11..26)?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The child's output if it exits within `within`; otherwise it is killed and `None`.
fn exit_within(mut child: Child, within: Duration) -> Option<Output> {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().ok()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_panicking_worker_is_reported_at_once_and_nothing_waits_for_it() {
    // Long enough after start for SERVING to be seen first even on a loaded machine.
    let mut d = Daemon::start("  inject_panic: { worker: 1, after_ms: 5000 }");
    d.wait_health("SERVING", Duration::from_secs(30));
    // A session watch open before the panic: it must end with the reason, not go on silently
    // with the other worker's events only.
    let mut watch = d.spawn_ctl(&["sessions", "watch"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "the watch was refused before the panic"
    );
    assert_eq!(
        text(&d.ctl(&["health"]).stdout).trim(),
        "SERVING",
        "the worker panicked before the watch was open: too slow a machine for this test"
    );
    d.wait_health("NOT_SERVING", Duration::from_secs(20));
    // Noticed at once: the watchdog looks every 50 ms. Measured in the daemon's own log, from
    // the panic to the watchdog's report.
    let log = d.log();
    let at = |needle: &str| {
        let line = log
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{log}"));
        seconds_of_day(line).unwrap_or_else(|| panic!("no timestamp: {line}"))
    };
    let noticed = at("worker stopped") - at("ERROR cgnatd::daemon: panicked at");
    assert!(
        (0.0..1.0).contains(&noticed),
        "the stopped worker was reported {noticed:.3} s after its panic"
    );
    // The hook's record: message (which spans lines) and then its fields.
    let record = log
        .split_once("ERROR cgnatd::daemon: panicked at")
        .map(|(_, rest)| rest.split("\n\n").next().unwrap_or(rest))
        .unwrap_or_else(|| panic!("the panic is not in the log:\n{log}"));
    assert!(
        record.contains("worker 1 panics as dataplane.inject_panic asks")
            && record.contains("lcore=2"),
        "the panic's log record names the lcore: {record}"
    );
    let health = d.ctl(&["health"]);
    assert_eq!(health.status.code(), Some(1), "cgnatctl health fails");

    // The stats name the stopped worker, in JSON and first thing in the table.
    let json = d.ctl(&["-o", "json", "stats"]);
    assert!(json.status.success(), "{}", text(&json.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(stats["workers"][1]["failed"], true, "{stats}");
    assert_eq!(stats["workers"][1]["failure"], "panicked", "{stats}");
    assert!(stats["workers"][0].get("failed").is_none(), "{stats}");
    let table = text(&d.ctl(&["stats"]).stdout);
    assert!(
        table.starts_with("WORKER 1 (lcore 2) HAS STOPPED (panicked)"),
        "{table}"
    );

    // Session queries fail with the reason, promptly (not at the client's timeout).
    for args in [
        &["sessions", "list"][..],
        &["sessions", "flush"][..],
        &[
            "sessions",
            "get",
            "-p",
            "udp",
            "-s",
            "100.64.0.9:5000",
            "-d",
            "198.51.100.1:53",
        ][..],
    ] {
        let t = Instant::now();
        let out = d.ctl(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("UNAVAILABLE")
                && err.contains("worker 1 (lcore 2) has stopped (panicked)"),
            "{args:?}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }

    // The watch ended at once (the watchdog tells open streams), and a new one is refused.
    let ended = exit_within(watch, Duration::from_secs(2))
        .expect("the session watch went on after the worker stopped");
    assert!(!ended.status.success());
    let err = text(&ended.stderr);
    assert!(
        err.contains("UNAVAILABLE") && err.contains("worker 1 (lcore 2) has stopped (panicked)"),
        "{err}"
    );
    let again = exit_within(d.spawn_ctl(&["sessions", "watch"]), Duration::from_secs(5))
        .expect("a new session watch was accepted with a worker stopped");
    let err = text(&again.stderr);
    assert!(
        !again.status.success() && err.contains("worker 1 (lcore 2) has stopped"),
        "{err}"
    );

    // A policy change is refused and nothing changes; a dry run is still answered.
    let before = text(&d.ctl(&["-o", "json", "rules", "get"]).stdout);
    let pool = "{name: extra, addresses: [198.51.100.9]}";
    let dry = d.ctl(&["rules", "add", "pool", pool, "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let add = d.ctl(&["rules", "add", "pool", pool]);
    let err = text(&add.stderr);
    assert!(!add.status.success());
    assert!(
        err.contains("worker 1 (lcore 2) has stopped") && err.contains("nothing was applied"),
        "{err}"
    );
    assert_eq!(text(&d.ctl(&["-o", "json", "rules", "get"]).stdout), before);

    // The log says what to do.
    assert!(
        log.contains("worker stopped") && log.contains("restart cgnatd"),
        "{log}"
    );

    // It still stops cleanly, but says in its exit status that it lost a worker.
    let status = d.terminate();
    assert_eq!(status.code(), Some(1), "{}", d.log());
    assert!(
        d.log().contains(
            "worker 1 (lcore 2) has stopped (panicked): the data plane did not run whole"
        ),
        "{}",
        d.log()
    );
    assert!(
        !runtime_dir(&d.prefix).exists(),
        "DPDK runtime files left behind"
    );
}
