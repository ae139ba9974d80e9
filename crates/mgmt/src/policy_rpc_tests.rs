//! In-process gRPC tests of the policy calls: GetPolicy, ApplyPolicy and the per-item changes,
//! with their validation, optimistic concurrency, dry runs and access control, over the fake
//! backend (which validates with the daemon's own config::policy code).

use std::sync::Arc;

use cgnat::v1;
use cgnat::v1::cgnat_client::CgnatClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::backend::fake::FakeBackend;
use crate::policy::{struct_from_proto, struct_to_proto};
use crate::{ServerConfig, Tokens, bind};

async fn serve(tokens: Tokens) -> (Channel, Arc<FakeBackend>, tokio::sync::oneshot::Sender<()>) {
    let backend = Arc::new(FakeBackend::new());
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tokens,
        tls: None,
    };
    let bound = bind(cfg, Arc::clone(&backend)).await.unwrap();
    let addr = bound.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (channel, backend, stop)
}

fn yaml_struct(text: &str) -> prost_types::Struct {
    let v: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    match v {
        serde_yaml::Value::Mapping(m) => struct_to_proto(&m),
        other => panic!("not a mapping: {other:?}"),
    }
}

fn put(text: &str) -> v1::PutPolicyItemRequest {
    v1::PutPolicyItemRequest {
        item: Some(yaml_struct(text)),
        ..Default::default()
    }
}

async fn policy(c: &mut CgnatClient<Channel>) -> (u64, serde_yaml::Value) {
    let p = c
        .get_policy(v1::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    (p.generation, struct_from_proto(&p.policy.unwrap()))
}

fn pool_names(doc: &serde_yaml::Value) -> Vec<String> {
    doc["pools"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

const NEW_POOL: &str = "name: extra\naddresses: [\"203.0.113.9-203.0.113.10\"]\n";

#[tokio::test]
async fn get_then_apply_with_the_generation_adds_a_pool() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    let (generation, mut doc) = policy(&mut c).await;
    assert_eq!(generation, 1);
    assert_eq!(pool_names(&doc), ["lab", "masq"]);
    let pool: serde_yaml::Value = serde_yaml::from_str(NEW_POOL).unwrap();
    doc["pools"].as_sequence_mut().unwrap().push(pool);
    let serde_yaml::Value::Mapping(m) = &doc else {
        panic!()
    };
    let r = c
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(struct_to_proto(m)),
            expected_generation: 1,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied);
    assert_eq!(r.generation, 2);
    assert!(
        r.changes
            .iter()
            .any(|ch| ch.kind == v1::ChangeKind::Added as i32 && ch.path == "pools.extra"),
        "{:?}",
        r.changes
    );
    let (generation, doc) = policy(&mut c).await;
    assert_eq!(generation, 2);
    assert_eq!(pool_names(&doc), ["lab", "masq", "extra"]);
}

#[tokio::test]
async fn dry_run_reports_the_diff_and_changes_nothing() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    let r = c
        .add_pool(v1::PutPolicyItemRequest {
            dry_run: true,
            ..put(NEW_POOL)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.applied);
    assert_eq!(r.generation, 1);
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].path, "pools.extra");
    let (generation, doc) = policy(&mut c).await;
    assert_eq!(generation, 1);
    assert_eq!(pool_names(&doc), ["lab", "masq"]);
}

#[tokio::test]
async fn a_stale_generation_is_aborted_and_changes_nothing() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    c.add_pool(put(NEW_POOL)).await.unwrap();
    let err = c
        .delete_pool(v1::DeletePolicyItemRequest {
            name: "extra".into(),
            expected_generation: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("generation 2"), "{}", err.message());
    assert_eq!(
        pool_names(&policy(&mut c).await.1),
        ["lab", "masq", "extra"]
    );
}

#[tokio::test]
async fn invalid_policies_name_the_field_and_change_nothing() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    let cases = [
        (
            "name: bad\naddresses: [\"203.0.113.300\"]\n",
            "pools[2].addresses",
        ),
        ("name: clash\naddresses: [\"203.0.113.2\"]\n", "pools["),
        (
            "name: x\naddresses: [\"203.0.113.9\"]\ncolour: red\n",
            "pools[2]",
        ),
    ];
    for (item, path) in cases {
        let err = c.add_pool(put(item)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{item}");
        assert!(err.message().starts_with(path), "{item}: {}", err.message());
    }
    // A whole document with a key outside the policy.
    let err = c
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(yaml_struct("eal: {lcores: \"0\"}\n")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("eal"), "{}", err.message());
    // A pool in service cannot change its ports.
    let err = c
        .update_pool(put(
            "name: lab\naddresses: [\"203.0.113.1-203.0.113.6\"]\nports: \"2000-3000\"\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("pools[0].ports"),
        "{}",
        err.message()
    );
    assert_eq!(policy(&mut c).await.0, 1, "nothing was applied");
}

#[tokio::test]
async fn fine_grained_changes_per_pool_and_rule() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    c.add_pool(put(NEW_POOL)).await.unwrap();
    let err = c.add_pool(put(NEW_POOL)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // Grow it in place.
    let r = c
        .update_pool(put(
            "name: extra\naddresses: [\"203.0.113.9-203.0.113.12\"]\n",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.generation, 3);
    assert_eq!(r.changes[0].kind, v1::ChangeKind::Modified as i32);
    // A SNAT rule in front of the others sends one subscriber to it.
    let r = c
        .add_snat_rule(v1::PutPolicyItemRequest {
            index: Some(0),
            ..put("match: 100.64.0.11/32\npool: extra\n")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.generation, 4);
    let doc = policy(&mut c).await.1;
    assert_eq!(doc["snat"][0]["pool"].as_str(), Some("extra"));
    assert_eq!(doc["snat"].as_sequence().unwrap().len(), 3);
    // The pool cannot go while a rule uses it.
    let err = c
        .delete_pool(v1::DeletePolicyItemRequest {
            name: "extra".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("snat[0].pool"),
        "{}",
        err.message()
    );
    c.delete_snat_rule(v1::DeletePolicyItemRequest {
        index: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete_pool(v1::DeletePolicyItemRequest {
        name: "extra".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = c
        .delete_snat_rule(v1::DeletePolicyItemRequest {
            index: Some(9),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete_pool(v1::DeletePolicyItemRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Exclusions and destination NAT rules.
    c.add_exclusion(put("destination: 198.51.100.99/32\n"))
        .await
        .unwrap();
    c.update_exclusion(v1::PutPolicyItemRequest {
        index: Some(0),
        ..put("destination: 198.51.100.98/32\n")
    })
    .await
    .unwrap();
    c.delete_exclusion(v1::DeletePolicyItemRequest {
        index: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
    let rule = "name: ssh\naddress: 203.0.113.120\nprotocol: tcp\nport: 22\nbackends: [{address: 100.64.0.21}]\n";
    c.add_dnat_rule(put(rule)).await.unwrap();
    c.update_dnat_rule(put(&rule.replace("100.64.0.21", "100.64.0.22")))
        .await
        .unwrap();
    let doc = policy(&mut c).await.1;
    let ssh = doc["nat"]["dnat"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str() == Some("ssh"))
        .unwrap();
    assert_eq!(ssh["backends"][0]["address"].as_str(), Some("100.64.0.22"));
    let r = c
        .delete_dnat_rule(v1::DeletePolicyItemRequest {
            name: "ssh".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.changes[0].kind, v1::ChangeKind::Removed as i32);
    // Items addressed the wrong way are refused before anything else.
    let err = c
        .update_snat_rule(put("match: 100.64.0.0/10\npool: lab\n"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("index"), "{}", err.message());
}

#[tokio::test]
async fn changes_need_a_read_write_token_and_are_attributed() {
    use tonic::metadata::MetadataValue;
    let tokens = Tokens {
        read_write: Some("rw-secret-0123456789".into()),
        read_only: Some("ro-secret-0123456789".into()),
    };
    let (ch, backend, _stop) = serve(tokens).await;
    let with = |token: Option<&'static str>| {
        CgnatClient::with_interceptor(ch.clone(), move |mut req: tonic::Request<()>| {
            if let Some(t) = token {
                let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
                req.metadata_mut().insert("authorization", v);
            }
            Ok(req)
        })
    };
    let err = with(None)
        .get_policy(v1::GetPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut ro = with(Some("ro-secret-0123456789"));
    assert_eq!(
        ro.get_policy(v1::GetPolicyRequest {})
            .await
            .unwrap()
            .into_inner()
            .generation,
        1
    );
    let err = ro.add_pool(put(NEW_POOL)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ro
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(yaml_struct("pools: []\n")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        backend.policy_requests.lock().unwrap().is_empty(),
        "refused callers never reach the backend"
    );
    let mut rw = with(Some("rw-secret-0123456789"));
    rw.add_pool(put(NEW_POOL)).await.unwrap();
    let requests = backend.policy_requests.lock().unwrap();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0]
            .caller
            .starts_with("AddPool by ReadWrite from 127.0.0.1:"),
        "{}",
        requests[0].caller
    );
}

#[tokio::test]
async fn sessions_can_be_selected_by_the_rule_that_translates_them() {
    let (ch, backend, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    let filter = |rule: &str| v1::SessionFilter {
        rule: rule.into(),
        ..Default::default()
    };
    let list = |f: v1::SessionFilter| v1::ListSessionsRequest {
        filter: Some(f),
        limit: 0,
    };
    // A destination NAT rule stands for its address, port and protocol.
    let mut s = c
        .list_sessions(list(filter("web")))
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}
    let q = *backend.queries.lock().unwrap().last().unwrap();
    assert_eq!(q.proto, Some(6));
    assert_eq!(
        q.outside,
        Some(("203.0.113.101".parse().unwrap(), Some(80)))
    );
    // A SNAT rule by position goes to the workers, which know the rules in force.
    let mut s = c
        .list_sessions(list(filter("snat[1]")))
        .await
        .unwrap()
        .into_inner();
    while s.message().await.unwrap().is_some() {}
    assert_eq!(
        backend.queries.lock().unwrap().last().unwrap().snat_rule,
        Some(1)
    );
    // Names that mean nothing are refused, naming the field.
    for bad in ["nope", "snat[x]"] {
        let err = c.list_sessions(list(filter(bad))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().starts_with("filter.rule: "),
            "{}",
            err.message()
        );
    }
    let err = c
        .list_sessions(list(v1::SessionFilter {
            outside: "203.0.113.1".into(),
            ..filter("web")
        }))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("filter.rule: "),
        "{}",
        err.message()
    );
    let err = c
        .watch_sessions(v1::WatchSessionsRequest {
            filter: Some(filter("snat[0]")),
            snapshot: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_listing_can_stop_after_a_limit() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    let count = |limit| {
        let mut c = c.clone();
        async move {
            let mut s = c
                .list_sessions(v1::ListSessionsRequest {
                    filter: None,
                    limit,
                })
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while s.message().await.unwrap().is_some() {
                n += 1;
            }
            n
        }
    };
    // The fake table holds three sessions.
    assert_eq!(count(0).await, 3);
    assert_eq!(count(2).await, 2);
    assert_eq!(count(9).await, 3);
    c.get_info(v1::GetInfoRequest {}).await.unwrap();
}

#[tokio::test]
async fn a_refusal_with_several_errors_still_starts_with_a_field_path() {
    let (ch, _b, _stop) = serve(Tokens::default()).await;
    let mut c = CgnatClient::new(ch);
    // A bad name and a block size missing for block allocation: two errors.
    let err = c
        .add_pool(put(
            "name: Bad\naddresses: [\"203.0.113.9\"]\nports: \"1024-1024\"\nallocation: {mode: blocks}\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("pools[2].name: "),
        "{}",
        err.message()
    );
    assert!(
        err.message().ends_with("(2 configuration errors)"),
        "{}",
        err.message()
    );
}
