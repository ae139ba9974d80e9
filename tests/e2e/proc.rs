//! Process helpers for the end-to-end runner: commands bounded in time, background
//! processes that are always killed by PID, and a registry of every PID we started so
//! a Ctrl-C can clean up too.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// PIDs of every child still running; the signal handler terminates these.
static CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

pub fn register(pid: u32) {
    if let Ok(mut set) = CHILDREN.lock() {
        set.insert(pid);
    }
}

pub fn unregister(pid: u32) {
    if let Ok(mut set) = CHILDREN.lock() {
        set.remove(&pid);
    }
}

/// Sends `signal` (e.g. "TERM") to every registered child. Used from the signal handler.
pub fn signal_all(signal: &str) {
    let pids: Vec<u32> = CHILDREN
        .lock()
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    for pid in pids {
        send_signal(pid, signal);
    }
}

/// `kill -SIG pid` through procps: the tests stay free of `unsafe` FFI.
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A command run to completion (or killed at its deadline).
#[derive(Debug)]
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub what: String,
}

impl Output {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Fails with everything a reader needs to see why the command failed.
    pub fn check(self) -> Result<Output, String> {
        if self.success() {
            Ok(self)
        } else {
            Err(self.describe())
        }
    }

    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            "timed out".to_string()
        } else {
            match self.status {
                Some(s) => format!("exited with {s}"),
                None => "did not finish".to_string(),
            }
        };
        format!(
            "`{}` {how}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

fn describe_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Runs `cmd` with stdin closed, capturing output; kills it (by PID) at `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let what = describe_cmd(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{what}`: {e}"))?;
    register(child.id());
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut status = None;
    let mut timed_out = false;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                status = child.wait().ok();
                break;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break,
        }
    }
    unregister(child.id());
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
        timed_out,
        what,
    })
}

/// `ip netns exec NS args...`
pub fn netns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    c
}

/// Lines a background process printed, shared with the threads that read them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A process running in the background while tests run. Dropping it terminates it by PID
/// (SIGTERM, then SIGKILL after a grace period) and reaps it.
pub struct Background {
    name: String,
    child: Child,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

fn line_reader<R: Read + Send + 'static>(r: Option<R>, sink: Arc<Lines>) -> JoinHandle<()> {
    thread::spawn(move || {
        let Some(r) = r else { return };
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut v) = sink.lines.lock() {
                v.push(line);
            }
            sink.grew.notify_all();
        }
    })
}

impl Background {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Background, String> {
        let what = describe_cmd(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {name} (`{what}`): {e}"))?;
        register(child.id());
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        let readers = vec![
            line_reader(child.stdout.take(), stdout.clone()),
            line_reader(child.stderr.take(), stderr.clone()),
        ];
        Ok(Background {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            readers,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lines
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr
            .lines
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Waits (bounded) for a line on stdout (or stderr, `on_stderr`) matching `pred`.
    pub fn wait_line(
        &mut self,
        on_stderr: bool,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let sink = if on_stderr {
            self.stderr.clone()
        } else {
            self.stdout.clone()
        };
        loop {
            {
                let guard = sink
                    .lines
                    .lock()
                    .map_err(|_| "poisoned output buffer".to_string())?;
                if let Some(l) = guard.iter().find(|l| pred(l)) {
                    return Ok(l.clone());
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let wait = (deadline - now).min(Duration::from_millis(100));
                let _ = sink.grew.wait_timeout(guard, wait);
            }
            if !self.is_running() {
                // One last look: the line may have arrived together with the exit.
                let guard = sink
                    .lines
                    .lock()
                    .map_err(|_| "poisoned output buffer".to_string())?;
                if let Some(l) = guard.iter().find(|l| pred(l)) {
                    return Ok(l.clone());
                }
                return Err(format!(
                    "{} exited before the expected output\n{}",
                    self.name,
                    self.dump()
                ));
            }
        }
        Err(format!(
            "{}: expected output not seen within {timeout:?}\n{}",
            self.name,
            self.dump()
        ))
    }

    pub fn dump(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(&self.stdout_lines().join("\n"), 30),
            self.name,
            tail(&self.stderr_lines().join("\n"), 30)
        )
    }

    /// Terminates the process (SIGTERM, or SIGINT for tools that flush on it), waits up to
    /// `grace`, then SIGKILLs. Returns the exit status and the process's full output.
    pub fn stop_with(&mut self, signal: &str, grace: Duration) -> Option<ExitStatus> {
        let pid = self.child.id();
        if self.is_running() {
            send_signal(pid, signal);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.is_running() {
                thread::sleep(Duration::from_millis(20));
            }
            if self.is_running() {
                let _ = self.child.kill();
            }
        }
        let status = self.child.wait().ok();
        unregister(pid);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop_with("TERM", Duration::from_secs(2));
    }
}

/// Polls `f` until it returns `Some`, at most `timeout`.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(every);
    }
}
