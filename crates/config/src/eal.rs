//! The DPDK EAL part of the config: lcore list parsing and the EAL argument vector.

use std::fmt;

use serde::Deserialize;

/// DPDK's `RTE_MAX_LCORE` in Debian's 22.11 build (`rte_build_config.h`). An lcore id at or
/// above it makes `rte_eal_init` fail, so it is rejected while the config is read.
pub const MAX_LCORE: u32 = 128;

/// How DPDK starts, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eal {
    /// The lcore list as written in `eal.lcores`; `None` when it was given in `extra_args`
    /// (then cgnatd must not pass it a second time).
    pub lcores: Option<String>,
    /// Every lcore id DPDK will create, in the order listed, without duplicates.
    pub lcore_ids: Vec<u32>,
    /// The lcore that runs the control plane (`--main-lcore`).
    pub main_lcore: u32,
    pub memory: Memory,
    pub file_prefix: String,
    pub log_level: EalLogLevel,
    pub extra_args: Vec<String>,
}

/// Where DPDK takes its memory from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// Hugepages with `--huge-unlink`; `-m size_mb` only when the operator set a size.
    Hugepages { size_mb: Option<u32> },
    /// Plain anonymous memory (`--no-huge -m size_mb`); DPDK requires a size in that mode.
    NoHuge { size_mb: u32 },
}

/// DPDK log priorities, as accepted by `--log-level` (lib/eal `eal_parse_log_priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EalLogLevel {
    Emergency,
    Alert,
    Critical,
    Error,
    #[default]
    Warning,
    Notice,
    Info,
    Debug,
}

impl EalLogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EalLogLevel::Emergency => "emergency",
            EalLogLevel::Alert => "alert",
            EalLogLevel::Critical => "critical",
            EalLogLevel::Error => "error",
            EalLogLevel::Warning => "warning",
            EalLogLevel::Notice => "notice",
            EalLogLevel::Info => "info",
            EalLogLevel::Debug => "debug",
        }
    }
}

impl fmt::Display for EalLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True when the string uses the `--lcores` mapping syntax (`lcore@cpu`, groups in
/// parentheses). DPDK 22.11's `-l` accepts only a plain core list, so such a string has to
/// be passed as `--lcores` instead.
pub(crate) fn is_lcore_map(s: &str) -> bool {
    s.contains('@') || s.contains('(')
}

/// Parses a DPDK core list (`0-3`, `0,2,4`) or lcore map (`1@(0-1)`, `(0-1)@2,3`) and returns
/// the lcore ids in listing order. For `a@b` elements the lcore ids are the left side: the
/// right side only says which physical CPUs those lcore threads may run on.
pub(crate) fn parse_lcores(s: &str) -> Result<Vec<u32>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty lcore list".into());
    }
    let mut ids = Vec::new();
    for elem in split_top_level(s)? {
        let (lcores, cpus) = match elem.split_once('@') {
            Some((l, c)) => (l, Some(c)),
            None => (elem, None),
        };
        if let Some(c) = cpus {
            // The CPU set is validated for syntax only: which CPUs exist is a property of the
            // machine, and reading it would give loading a dependency on the host.
            parse_set(c, crate::limits::CPU_ID_MAX)
                .map_err(|e| format!("in cpu set `{c}`: {e}"))?;
        }
        for id in parse_set(lcores, MAX_LCORE - 1)? {
            if ids.contains(&id) {
                return Err(format!("lcore {id} is listed twice"));
            }
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                if depth > 0 {
                    return Err("nested parentheses".into());
                }
                depth += 1;
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "unbalanced `)`".to_string())?;
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

/// A number, a range `a-b`, or a parenthesised group of those.
fn parse_set(s: &str, max: u32) -> Result<Vec<u32>, String> {
    let s = s.trim();
    let inner = match s.strip_prefix('(') {
        Some(rest) => rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{s}` has text after the closing parenthesis"))?,
        None => s,
    };
    let mut ids = Vec::new();
    for part in inner.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a, max)?, num(b, max)?),
            None => {
                let n = num(part, max)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!("range `{part}` runs backwards"));
        }
        ids.extend(lo..=hi);
    }
    Ok(ids)
}

fn num(s: &str, max: u32) -> Result<u32, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{s}` is not a number"));
    }
    let n: u32 = s.parse().map_err(|_| format!("`{s}` is too large"))?;
    if n > max {
        return Err(format!(
            "lcore {n} is out of range: DPDK is built with RTE_MAX_LCORE={}",
            max + 1
        ));
    }
    Ok(n)
}

/// The lcore option found in `extra_args`, if any: `-l X`, `-lX`, `--lcores X` or
/// `--lcores=X`. Returns the option's index and, when present, the index of the argument
/// holding the value (the same one for the `=`/attached forms) with the value itself.
pub(crate) fn lcores_in_args(args: &[String]) -> Option<(usize, Option<(usize, &str)>)> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == "-l" || a == "--lcores" {
            Some((i, args.get(i + 1).map(|v| (i + 1, v.as_str()))))
        } else if let Some(v) = a.strip_prefix("--lcores=") {
            Some((i, Some((i, v))))
        } else if let Some(v) = a.strip_prefix("-l").filter(|v| !v.is_empty()) {
            Some((i, Some((i, v))))
        } else {
            None
        }
    })
}

/// Whether `args` contains the option `name` (as `name`, `name=...`, or for short options
/// `-xVALUE`).
pub(crate) fn has_option(args: &[String], name: &str) -> Option<usize> {
    args.iter().position(|a| {
        a == name
            || (name.starts_with("--") && a.starts_with(name) && a[name.len()..].starts_with('='))
            || (!name.starts_with("--") && name.len() == 2 && a.starts_with(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_lcores("0-1").unwrap(), vec![0, 1]);
        assert_eq!(parse_lcores("0,2,4").unwrap(), vec![0, 2, 4]);
        assert_eq!(parse_lcores("3,0-2").unwrap(), vec![3, 0, 1, 2]);
        assert_eq!(parse_lcores("7").unwrap(), vec![7]);
    }

    #[test]
    fn lcore_maps_count_the_lcore_side() {
        // One lcore (1) allowed to float over CPUs 0-1.
        assert_eq!(parse_lcores("1@(0-1)").unwrap(), vec![1]);
        // Two lcores sharing CPU 2, then lcore 3 on CPU 3.
        assert_eq!(parse_lcores("(0-1)@2,3").unwrap(), vec![0, 1, 3]);
        assert_eq!(parse_lcores("(0,5)@(0-3),2@7").unwrap(), vec![0, 5, 2]);
        assert!(is_lcore_map("1@(0-1)"));
        assert!(!is_lcore_map("0-3"));
    }

    #[test]
    fn bad_lcore_lists() {
        for bad in [
            "", "a", "1-", "3-1", "0,,1", "(0-1", "0-1)", "((0))@1", "0@", "0-1,1", "128",
        ] {
            assert!(parse_lcores(bad).is_err(), "`{bad}` accepted");
        }
        assert!(parse_lcores("0-1,1").unwrap_err().contains("listed twice"));
        assert!(
            parse_lcores("200")
                .unwrap_err()
                .contains("RTE_MAX_LCORE=128")
        );
    }

    #[test]
    fn finds_lcore_options_in_extra_args() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            lcores_in_args(&v(&["-l", "0-3"])),
            Some((0, Some((1, "0-3"))))
        );
        assert_eq!(
            lcores_in_args(&v(&["--x", "-l2-3"])),
            Some((1, Some((1, "2-3"))))
        );
        assert_eq!(
            lcores_in_args(&v(&["--lcores=1@2"])),
            Some((0, Some((0, "1@2"))))
        );
        assert_eq!(lcores_in_args(&v(&["--lcores"])), Some((0, None)));
        assert_eq!(lcores_in_args(&v(&["--log-level=x"])), None);
        assert_eq!(
            has_option(&v(&["--file-prefix=a"]), "--file-prefix"),
            Some(0)
        );
        assert_eq!(has_option(&v(&["--file-prefixes"]), "--file-prefix"), None);
        assert_eq!(has_option(&v(&["-m512"]), "-m"), Some(0));
    }

    #[test]
    fn a_cpu_set_beyond_the_cpu_id_limit_is_refused_without_building_it() {
        // Before the limit this built a list of four billion ids (16 GiB) to check the syntax.
        let err = parse_lcores("0@(0-4294967295)").unwrap_err();
        assert!(err.contains("cpu set"), "{err}");
        assert!(parse_lcores("0@(0-1023)").is_ok());
        assert!(parse_lcores("0@(1024)").is_err());
    }
}
