//! Text helpers for cgnatctl's human output: durations, grouped numbers,
//! link speeds and column-aligned tables. Pure functions, so the exact look
//! of the output is unit-tested.

use std::fmt::Write as _;
use std::time::Duration;

/// Formats a duration for humans, largest unit first, zero parts left out:
/// `3h 2m 5s`, `1d 4h`, `0s`. Sub-second parts are dropped because uptimes
/// and intervals shown to operators never need them.
pub fn human_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = secs / size;
        secs %= size;
        if n > 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            // Writing to a String cannot fail.
            let _ = write!(out, "{n}{unit}");
        }
    }
    out
}

/// Parses a duration given on the command line: a number followed by `ms`,
/// `s`, `m` or `h` (`500ms`, `1.5s`, `2m`); a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 1s, 2m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3_600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Groups digits by thousands (`1234567` → `1,234,567`), as counters with many
/// digits are otherwise misread by an order of magnitude.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Formats a signed per-second rate with thousands grouping: `+1,250/s`,
/// `-3/s`, `0/s`.
pub fn rate(per_sec: f64) -> String {
    let rounded = per_sec.round();
    if rounded == 0.0 {
        return "0/s".to_owned();
    }
    let sign = if rounded < 0.0 { '-' } else { '+' };
    // Float to int casts saturate; a rate beyond u64 is not physical anyway.
    format!("{sign}{}/s", group_thousands(rounded.abs() as u64))
}

/// Formats a link speed in Mbit/s the way NIC tools do: `10G`, `2.5G`,
/// `100M`, and `-` when unknown (0).
pub fn link_speed(mbps: u32) -> String {
    match mbps {
        0 => "-".to_owned(),
        m if m >= 1_000 && m.is_multiple_of(1_000) => format!("{}G", m / 1_000),
        m if m >= 1_000 => format!("{}G", f64::from(m) / 1_000.0),
        m => format!("{m}M"),
    }
}

/// Column alignment in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns (names).
    Left,
    /// Number columns, so digits of equal weight line up.
    Right,
}

/// A simple column-aligned text table: two spaces between columns, no
/// trailing spaces, header row first.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with the given headers and alignments.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, Align)>) -> Self {
        Table {
            columns: columns.into_iter().map(|(h, a)| (h.into(), a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are left empty and extra cells ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no rows were added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders the table, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.columns[i].0.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();

        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (_, align)) in self.columns.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let text = cell(row, i);
                let pad = widths[i].saturating_sub(text.chars().count());
                match align {
                    Align::Left => {
                        line.push_str(&text);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(&text);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The canonical upper-case name of a gRPC status code, as in the gRPC spec
/// and grpcurl output (`INVALID_ARGUMENT`), rather than tonic's prose.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// One-line description of a failed call, `CODE: message` (or just `CODE`
/// when the server gave no message), for cgnatctl's stderr.
pub fn status_line(status: &tonic::Status) -> String {
    let code = grpc_code_name(status.code());
    if status.message().is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(human_duration(Duration::from_secs(10_925)), "3h 2m 5s");
        assert_eq!(human_duration(Duration::from_secs(0)), "0s");
        assert_eq!(human_duration(Duration::from_millis(999)), "0s");
        assert_eq!(
            human_duration(Duration::from_secs(86_400 + 4 * 3_600)),
            "1d 4h"
        );
        assert_eq!(human_duration(Duration::from_secs(61)), "1m 1s");
    }

    #[test]
    fn command_line_durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 fortnights").unwrap_err().contains("unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn thousands_grouping() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1_000), "1,000");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn rates_are_signed_and_grouped() {
        assert_eq!(rate(1250.4), "+1,250/s");
        assert_eq!(rate(-3.0), "-3/s");
        assert_eq!(rate(0.2), "0/s");
    }

    #[test]
    fn link_speeds() {
        assert_eq!(link_speed(0), "-");
        assert_eq!(link_speed(100), "100M");
        assert_eq!(link_speed(10_000), "10G");
        assert_eq!(link_speed(2_500), "2.5G");
    }

    #[test]
    fn table_aligns_names_left_and_numbers_right() {
        let mut t = Table::new([("COUNTER", Align::Left), ("PACKETS", Align::Right)]);
        t.row(vec!["rx_packets".into(), "1,500".into()]);
        t.row(vec!["no_session".into(), "10".into()]);
        t.row(vec!["x".into()]);
        assert_eq!(
            t.render(),
            "COUNTER     PACKETS\n\
             rx_packets    1,500\n\
             no_session       10\n\
             x\n"
        );
    }

    #[test]
    fn grpc_codes_use_spec_names() {
        assert_eq!(
            grpc_code_name(tonic::Code::InvalidArgument),
            "INVALID_ARGUMENT"
        );
        assert_eq!(grpc_code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn status_lines() {
        let s = tonic::Status::invalid_argument("interval 50ms is below the minimum of 100ms");
        assert_eq!(
            status_line(&s),
            "INVALID_ARGUMENT: interval 50ms is below the minimum of 100ms"
        );
        assert_eq!(status_line(&tonic::Status::internal("")), "INTERNAL");
    }
}
