//! The policy calls (`GetPolicy`, `ApplyPolicy` and the per-item ones): JSON (protobuf `Struct`)
//! to and from the YAML document the config crate validates, and policy errors to gRPC statuses.

use cgnat::v1;
use config::policy::{ChangeKind, Edit, Key, Section};
use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::auth::require_write;
use crate::backend::{Backend, PolicyChange, PolicyError, PolicyOutcome, PolicyRequest};

/// Protobuf JSON value → YAML value. Numbers arrive as doubles (JSON has no integers); whole ones
/// become integers again, since every number in the policy is a count, a port or seconds.
pub fn from_proto(v: &prost_types::Value) -> serde_yaml::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_yaml::Value::Null,
        Some(Kind::BoolValue(b)) => serde_yaml::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && *n >= 0.0 && *n <= u64::MAX as f64 {
                serde_yaml::Value::Number((*n as u64).into())
            } else if n.fract() == 0.0 && *n < 0.0 && *n >= i64::MIN as f64 {
                serde_yaml::Value::Number((*n as i64).into())
            } else {
                serde_yaml::Value::Number((*n).into())
            }
        }
        Some(Kind::StringValue(s)) => serde_yaml::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_yaml::Value::Sequence(l.values.iter().map(from_proto).collect())
        }
        Some(Kind::StructValue(s)) => struct_from_proto(s),
    }
}

pub fn struct_from_proto(s: &prost_types::Struct) -> serde_yaml::Value {
    // BTreeMap order: protobuf maps are unordered, so sort for a stable document.
    let sorted: std::collections::BTreeMap<&String, &prost_types::Value> =
        s.fields.iter().collect();
    serde_yaml::Value::Mapping(
        sorted
            .into_iter()
            .map(|(k, v)| (serde_yaml::Value::String(k.clone()), from_proto(v)))
            .collect(),
    )
}

/// YAML value → protobuf JSON value. Tags (which the policy never uses) are dropped; non-string
/// keys are written as their YAML text.
pub fn to_proto(v: &serde_yaml::Value) -> prost_types::Value {
    let kind = match v {
        serde_yaml::Value::Null => Kind::NullValue(0),
        serde_yaml::Value::Bool(b) => Kind::BoolValue(*b),
        serde_yaml::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_yaml::Value::String(s) => Kind::StringValue(s.clone()),
        serde_yaml::Value::Sequence(seq) => Kind::ListValue(prost_types::ListValue {
            values: seq.iter().map(to_proto).collect(),
        }),
        serde_yaml::Value::Mapping(m) => Kind::StructValue(struct_to_proto(m)),
        serde_yaml::Value::Tagged(t) => return to_proto(&t.value),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn struct_to_proto(m: &serde_yaml::Mapping) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                (key, to_proto(v))
            })
            .collect(),
    }
}

pub(crate) fn policy_status(e: PolicyError) -> Status {
    match e {
        PolicyError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        PolicyError::Conflict { .. } => Status::aborted(e.to_string()),
        PolicyError::NotFound(_) => Status::not_found(e.to_string()),
        PolicyError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        PolicyError::Precondition { .. } => Status::failed_precondition(e.to_string()),
        PolicyError::Failed(_) => Status::unavailable(e.to_string()),
        PolicyError::Incomplete(_) => Status::internal(e.to_string()),
    }
}

pub(crate) fn outcome_to_proto(o: &PolicyOutcome) -> v1::ApplyPolicyResponse {
    v1::ApplyPolicyResponse {
        generation: o.generation,
        applied: o.applied,
        changes: o
            .changes
            .iter()
            .map(|c| v1::PolicyChange {
                kind: match c.kind {
                    ChangeKind::Added => v1::ChangeKind::Added,
                    ChangeKind::Removed => v1::ChangeKind::Removed,
                    ChangeKind::Modified => v1::ChangeKind::Modified,
                } as i32,
                path: c.path.clone(),
                detail: c.detail.clone(),
            })
            .collect(),
    }
}

/// Who is calling, for the log of changes.
fn caller<T>(req: &Request<T>, access: crate::Access) -> String {
    let peer = req
        .remote_addr()
        .map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
    format!("{access:?} from {peer}")
}

fn expected(generation: u64) -> Option<u64> {
    (generation != 0).then_some(generation)
}

/// Run one change through the backend.
pub(crate) async fn change<B: Backend, T>(
    backend: &B,
    req: &Request<T>,
    rpc: &str,
    change: PolicyChange,
    expected_generation: u64,
    dry_run: bool,
) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
    let access = require_write(req, rpc)?;
    let request = PolicyRequest {
        change,
        expected_generation: expected(expected_generation),
        dry_run,
        caller: format!("{rpc} by {}", caller(req, access)),
    };
    match backend.change_policy(request).await {
        Ok(o) => Ok(Response::new(outcome_to_proto(&o))),
        Err(e @ PolicyError::Incomplete(_)) => {
            warn!(rpc, peer = ?req.remote_addr(), error = %e, "policy change incomplete");
            Err(policy_status(e))
        }
        Err(e) => {
            warn!(rpc, peer = ?req.remote_addr(), error = %e, "policy change refused, nothing changed");
            Err(policy_status(e))
        }
    }
}

/// The item of a put request as YAML; a missing item is INVALID_ARGUMENT.
pub(crate) fn item(r: &v1::PutPolicyItemRequest) -> Result<serde_yaml::Value, Status> {
    r.item
        .as_ref()
        .map(struct_from_proto)
        .ok_or_else(|| Status::invalid_argument("item: missing"))
}

/// The key a put (update) or delete addresses in `section`.
pub(crate) fn key(section: Section, name: Option<&str>, index: Option<u32>) -> Result<Key, Status> {
    match section {
        Section::Pools | Section::Dnat => match name {
            Some(n) if !n.is_empty() => Ok(Key::Name(n.to_owned())),
            _ => Err(Status::invalid_argument(format!(
                "name: {section} are addressed by name, and none was given"
            ))),
        },
        Section::Snat | Section::Exclusions => {
            index.map(|i| Key::Index(i as usize)).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "index: {section} are addressed by position, and none was given"
                ))
            })
        }
    }
}

/// An add of `item` to `section`.
pub(crate) fn add(section: Section, r: &v1::PutPolicyItemRequest) -> Result<Edit, Status> {
    Ok(Edit::Add {
        section,
        item: item(r)?,
        position: match section {
            Section::Snat | Section::Exclusions => r.index.map(|i| i as usize),
            Section::Pools | Section::Dnat => None,
        },
    })
}

/// An update of one element of `section` to `item`.
pub(crate) fn update(section: Section, r: &v1::PutPolicyItemRequest) -> Result<Edit, Status> {
    let item = item(r)?;
    let name = item.get("name").and_then(serde_yaml::Value::as_str);
    Ok(Edit::Update {
        section,
        key: key(section, name, r.index)?,
        item,
    })
}

/// A delete of one element of `section`.
pub(crate) fn delete(section: Section, r: &v1::DeletePolicyItemRequest) -> Result<Edit, Status> {
    Ok(Edit::Delete {
        section,
        key: key(section, Some(&r.name), r.index)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_come_back_as_integers_and_documents_round_trip() {
        let doc: serde_yaml::Value = serde_yaml::from_str(
            "pools:\n  - name: pub\n    addresses: [203.0.113.1-203.0.113.8]\n    ports: 1024-65535\nnat:\n  timeouts: {udp: 300}\n  udp_inbound_refresh: true\n",
        )
        .unwrap();
        let serde_yaml::Value::Mapping(m) = &doc else {
            panic!("not a mapping")
        };
        let back = struct_from_proto(&struct_to_proto(m));
        assert_eq!(back, doc);
        assert_eq!(back["nat"]["timeouts"]["udp"].as_u64(), Some(300));
    }

    #[test]
    fn each_policy_error_gets_its_own_status() {
        let codes = [
            (
                PolicyError::Invalid {
                    field: "pools[0].addresses".into(),
                    message: "pools[0].addresses: bad".into(),
                },
                tonic::Code::InvalidArgument,
            ),
            (
                PolicyError::Conflict {
                    expected: 3,
                    current: 4,
                },
                tonic::Code::Aborted,
            ),
            (PolicyError::NotFound("x".into()), tonic::Code::NotFound),
            (
                PolicyError::AlreadyExists("x".into()),
                tonic::Code::AlreadyExists,
            ),
            (PolicyError::Failed("disk".into()), tonic::Code::Unavailable),
            (
                PolicyError::Precondition {
                    field: "pools[0].addresses".into(),
                    message: "draining".into(),
                },
                tonic::Code::FailedPrecondition,
            ),
            (
                PolicyError::Incomplete("worker 1".into()),
                tonic::Code::Internal,
            ),
        ];
        for (e, code) in codes {
            assert_eq!(policy_status(e).code(), code);
        }
    }
}
