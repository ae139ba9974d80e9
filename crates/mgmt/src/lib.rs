//! The cgnat management plane: a tonic gRPC server for the `cgnat.v1.Cgnat`
//! API (see `proto/cgnat/v1/cgnat.proto`), plus gRPC reflection (v1 and
//! v1alpha, so grpcurl 1.8.x works) and the standard `grpc.health.v1` service.
//!
//! The server never touches data-plane state. The daemon implements
//! [`Backend`], which hands out plain snapshots (counters read with relaxed
//! loads, port state), and this crate turns them into protobuf. Per-worker
//! counters are summed here, so totals are only as consistent as the
//! individual relaxed reads: close to, but not exactly, one instant.
//!
//! Usage from the daemon, inside a tokio runtime on the control thread:
//!
//! ```text
//! let tls = mgmt::TlsConfig::from_pem(cert_pem, key_pem, Some(client_ca_pem))?; // or None: plaintext
//! let cfg = mgmt::ServerConfig { listen, tokens, tls: Some(tls) };
//! let server = mgmt::bind(cfg, backend).await?; // fails fast on a taken port
//! server.serve(async { shutdown_rx.await.ok(); }).await?;
//! ```
//!
//! Security: optional bearer tokens (read-only, read-write; [`Tokens`]) and optional TLS
//! (rustls with ring; [`TlsConfig`]), with client certificates when a client CA is set. TLS
//! covers the whole listener, health and reflection too. A client refused at the handshake sees
//! a transport error (UNAVAILABLE or UNKNOWN "transport error"), not a gRPC status; a missing
//! token is UNAUTHENTICATED. Without TLS everything, tokens included, travels in clear, which is
//! why the default listen address is loopback.
#![forbid(unsafe_code)]

mod auth;
mod backend;
mod error;
mod policy;
/// JSON (`google.protobuf.Struct`) to and from the YAML policy document, for clients too.
pub mod policy_json {
    pub use crate::policy::{from_proto, struct_from_proto, struct_to_proto, to_proto};
}
#[cfg(test)]
mod policy_rpc_tests;
mod server;
mod service;
mod tls;

pub use auth::{Access, Tokens};
pub use backend::{
    Backend, BackendError, DnatBackendSnapshot, DnatRuleSnapshot, DnatSnapshot, EndpointFilter,
    InfoSnapshot, PolicyChange, PolicyError, PolicyFuture, PolicyOutcome, PolicyRequest,
    PolicySnapshot, PoolSnapshot, PortCountersSnapshot, PortRole, PortSnapshot, SessionChange,
    SessionDeletion, SessionEventSnapshot, SessionListing, SessionQuery, SessionSnapshot,
    SessionState, SessionWatch, SnatRuleStatsSnapshot, StatsSnapshot, SteeringSnapshot,
    WorkerStatsSnapshot,
};
pub use error::MgmtError;
pub use server::{
    BoundServer, DEFAULT_LISTEN, DRAIN_TIMEOUT, HealthSwitch, ServerConfig, bind, serve,
};
pub use service::{DEFAULT_WATCH_INTERVAL, MIN_WATCH_INTERVAL};
pub use tls::{HANDSHAKE_TIMEOUT, TlsConfig, TlsError, client_tls_config};
