//! The applied translation policy on disk (`mgmt.state_file`), so that a restart keeps what the
//! API applied.
//!
//! The file is replaced whole for every change: written to a temporary file in the same directory,
//! flushed to disk (fsync), renamed over the old one (atomic on POSIX file systems), and the
//! directory flushed too, so that the rename itself survives a power cut. A process killed at any
//! instant therefore leaves either the old file or the new one, never a mix; at worst a stale
//! temporary file, which the next write replaces.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use config::policy::PolicyDoc;

/// What the state file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub generation: u64,
    pub doc: PolicyDoc,
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Render the file: a comment, the generation and the policy document.
pub fn render(saved: &Saved) -> Result<String> {
    let mut map = serde_yaml::Mapping::new();
    map.insert("generation".into(), saved.generation.into());
    map.insert("policy".into(), saved.doc.value().clone());
    let body = serde_yaml::to_string(&serde_yaml::Value::Mapping(map))
        .context("cannot render the policy")?;
    Ok(format!(
        "# Translation policy applied through the cgnatd management API; written by cgnatd.\n\
         # Restored at start over the configuration file's own policy sections.\n{body}"
    ))
}

/// Replace the state file atomically (see the module comment).
pub fn write(path: &Path, saved: &Saved) -> Result<()> {
    let text = render(saved)?;
    let tmp = temp_path(path);
    let what = || format!("state file {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create {}", what(), dir.display()))?;
    }
    let mut f = std::fs::File::create(&tmp)
        .with_context(|| format!("{}: cannot create {}", what(), tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}: cannot write {}", what(), tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", what()))?;
    // From here the new policy is the file's: refusing the change now would leave the daemon
    // running the old policy while the next start restores the new one. A directory that cannot
    // be flushed only makes the rename less durable across a power loss; say so and go on.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(
            state_file = %path.display(),
            error = %e,
            "state file replaced, but its directory could not be flushed: the change may not survive a power loss"
        );
    }
    Ok(())
}

/// Parse a state file's text.
pub fn parse(text: &str) -> Result<Saved> {
    let v: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| anyhow!("{e}"))?;
    let map = v
        .as_mapping()
        .ok_or_else(|| anyhow!("not a mapping with `generation` and `policy`"))?;
    for k in map.keys() {
        match k.as_str() {
            Some("generation" | "policy") => {}
            other => bail!("unknown key {other:?}"),
        }
    }
    let generation = map
        .get("generation")
        .and_then(serde_yaml::Value::as_u64)
        .filter(|&g| g > 0)
        .ok_or_else(|| anyhow!("generation: missing or not a positive integer"))?;
    let policy = map
        .get("policy")
        .cloned()
        .ok_or_else(|| anyhow!("policy: missing"))?;
    let doc = PolicyDoc::from_value(policy).map_err(|e| anyhow!("policy: {e}"))?;
    Ok(Saved { generation, doc })
}

/// Read the state file; `None` when there is none yet.
pub fn read(path: &Path) -> Result<Option<Saved>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text)
            .map(Some)
            .with_context(|| format!("state file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("state file {}: cannot read: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(pools: usize) -> PolicyDoc {
        // Large enough that a write takes several system calls' worth of bytes.
        let mut text = String::from("pools:\n");
        for i in 0..pools {
            text.push_str(&format!(
                "  - name: pool{i}\n    addresses: [203.0.{}.{}]\n",
                i / 250,
                i % 250 + 1
            ));
        }
        PolicyDoc::from_yaml_str(&text).unwrap()
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cgnatd-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trips_and_reports_a_missing_file_as_none() {
        let d = dir("rt");
        let path = d.join("state.yaml");
        assert_eq!(read(&path).unwrap(), None);
        let saved = Saved {
            generation: 7,
            doc: doc(3),
        };
        write(&path, &saved).unwrap();
        assert_eq!(read(&path).unwrap(), Some(saved));
        assert!(
            !temp_path(&path).exists(),
            "no temporary file is left behind"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let d = dir("bad");
        let path = d.join("state.yaml");
        for (text, why) in [
            ("generation: 0\npolicy: {}\n", "generation"),
            ("generation: 3\n", "policy: missing"),
            ("generation: 3\npolicy:\n  eal: {}\n", "eal"),
            ("generation: 3\npolicy: {}\nextra: 1\n", "unknown key"),
            ("generation: [\n", "state file"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", read(&path).unwrap_err());
            assert!(
                e.contains(&path.display().to_string()) && e.contains(why),
                "{text:?}: {e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The writer half of the kill test: rewrite the file forever, alternating two states, with
    /// generations counting up from `CGNATD_STATE_FIRST`.
    #[test]
    #[ignore = "child process of state_survives_kill_at_any_moment"]
    fn writer_child() {
        let Some(path) = std::env::var_os("CGNATD_STATE_WRITER") else {
            return;
        };
        let first: u64 = std::env::var("CGNATD_STATE_FIRST")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let path = PathBuf::from(path);
        let (a, b) = (doc(200), doc(400));
        for generation in first.. {
            let doc = if generation.is_multiple_of(2) {
                a.clone()
            } else {
                b.clone()
            };
            write(&path, &Saved { generation, doc }).unwrap();
        }
    }

    /// A writer killed at any moment of its loop leaves the last state it renamed into place,
    /// whole: never a torn file, never a mix of two. Each round's writer starts at its own
    /// generation and is killed only once it has saved one to three states (how long a write
    /// takes depends on the disk, so a fixed delay could kill every writer before it wrote
    /// anything, or before its second write), then a little later each round, so the kill lands
    /// at different points of a write.
    #[test]
    fn state_survives_kill_at_any_moment() {
        let d = dir("kill");
        let path = d.join("state.yaml");
        let (a, b) = (doc(200), doc(400));
        let exe = std::env::current_exe().unwrap();
        for round in 0..30u64 {
            let first = (round + 1) * 1_000_000;
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "daemon::state_file::tests::writer_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env("CGNATD_STATE_WRITER", &path)
                .env("CGNATD_STATE_FIRST", first.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let saved_at_least = first + round % 3;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while read(&path)
                .ok()
                .flatten()
                .is_none_or(|s| s.generation < saved_at_least)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the writer did not save generation {saved_at_least} in 10 s"
                );
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            std::thread::sleep(std::time::Duration::from_millis((round * 7) % 23));
            child.kill().unwrap();
            child.wait().unwrap();
            let saved = read(&path)
                .unwrap_or_else(|e| panic!("round {round}: {e:#}"))
                .unwrap_or_else(|| panic!("round {round}: the state file is gone"));
            assert!(
                saved.generation >= saved_at_least,
                "round {round}: an older state"
            );
            let want = if saved.generation.is_multiple_of(2) {
                &a
            } else {
                &b
            };
            assert_eq!(
                &saved.doc, want,
                "round {round}: a torn or mixed state file"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
