//! Config errors. Every message starts with the path of the field it is about
//! (`ports[1].address`), so an operator can find the line to fix without reading code.

use std::fmt;
use std::path::PathBuf;

/// A position in the YAML text, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// One validation problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `pools[0].addresses[2]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read. The I/O error is part of the message (not a
    /// `source`) so that a plain `{}` shows why.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Anything wrong with the contents of a file, tagged with the file's path.
    #[error("{}: {error}", path.display())]
    File {
        path: PathBuf,
        error: Box<ConfigError>,
    },
    /// The text is not valid YAML, or does not fit the schema (unknown field, wrong type,
    /// missing field, unknown enum value, malformed address). `field` is the path of the
    /// field concerned, `(top level)` for schema problems with the document as a whole, or
    /// `(yaml syntax)` when the text is not YAML at all.
    #[error("{field}: {message}{}", at(location))]
    Yaml {
        field: String,
        message: String,
        location: Option<Location>,
    },
    /// The YAML parsed but breaks one or more validation rules; all of them are listed.
    #[error("{}", list(errors))]
    Invalid { errors: Vec<FieldError> },
}

fn at(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(" ({l})"),
        None => String::new(),
    }
}

fn list(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        // The first error's path leads, as for a single error, so that the message starts with
        // the field it is about; the count follows at the end.
        many => {
            let items: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("{} ({} configuration errors)", items.join("; "), many.len())
        }
    }
}

impl ConfigError {
    /// Paths of all fields this error is about, outermost wrapper removed.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            ConfigError::Read { .. } => Vec::new(),
            ConfigError::File { error, .. } => error.fields(),
            ConfigError::Yaml { field, .. } => vec![field.as_str()],
            ConfigError::Invalid { errors } => errors.iter().map(|e| e.path.as_str()).collect(),
        }
    }

    /// Turns a YAML error into one that leads with the field path and ends with the location.
    ///
    /// yaml_serde renders schema errors as `path: message at line L column C` and keeps the
    /// path private, so the path is recovered from the rendered text. A prefix counts as a
    /// path only if it is made of characters a path can contain (no spaces), which no serde or
    /// libyaml message starts with.
    pub(crate) fn from_yaml(err: serde_yaml::Error) -> ConfigError {
        let location = err.location().map(|l| Location {
            line: l.line(),
            column: l.column(),
        });
        let mut text = err.to_string();
        if let Some(l) = &location {
            let suffix = format!(" at line {} column {}", l.line, l.column);
            if let Some(pos) = text.find(&suffix) {
                text.replace_range(pos..pos + suffix.len(), "");
            }
        }
        let (path, message) = match text.split_once(": ") {
            Some((p, m)) if is_path(p) => (Some(p.to_owned()), m.to_owned()),
            _ => (None, text),
        };
        // For unknown, missing and duplicate keys serde reports the enclosing mapping; name
        // the key itself so the path points at the line to change.
        let key = ["unknown field `", "missing field `", "duplicate field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next())
            .filter(|k| !k.is_empty());
        let field = match (path, key) {
            (Some(p), Some(k)) => format!("{p}.{k}"),
            (None, Some(k)) => k.to_owned(),
            (Some(p), None) => p,
            (None, None) if SCHEMA_PREFIXES.iter().any(|p| message.starts_with(p)) => {
                "(top level)".to_owned()
            }
            // Not a serde schema message and no path: the parser itself gave up.
            (None, None) => "(yaml syntax)".to_owned(),
        };
        ConfigError::Yaml {
            field,
            message,
            location,
        }
    }
}

/// How serde's own schema errors begin (`serde::de::Error` default messages).
const SCHEMA_PREFIXES: &[&str] = &[
    "invalid type",
    "invalid value",
    "invalid length",
    "unknown variant",
    "unknown field",
    "missing field",
    "duplicate field",
];

fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.[]?".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_field() {
        let one = ConfigError::Invalid {
            errors: vec![FieldError {
                path: "ports[1].mtu".into(),
                message: "must be 68..=9000".into(),
            }],
        };
        assert_eq!(one.to_string(), "ports[1].mtu: must be 68..=9000");
        let two = ConfigError::Invalid {
            errors: vec![
                FieldError {
                    path: "a".into(),
                    message: "x".into(),
                },
                FieldError {
                    path: "b[0]".into(),
                    message: "y".into(),
                },
            ],
        };
        assert_eq!(two.to_string(), "a: x; b[0]: y (2 configuration errors)");
        assert_eq!(two.fields(), vec!["a", "b[0]"]);
    }

    #[test]
    fn path_detection_ignores_serde_prose() {
        assert!(is_path("ports[0].device"));
        assert!(!is_path("invalid type"));
        assert!(!is_path(""));
    }
}
