//! Errors of the management server.

use std::net::SocketAddr;

/// Why the management server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// The listen socket could not be bound (address in use, no permission,
    /// address not local).
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind {
        /// The configured listen address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service rejected the embedded descriptor sets; this is a
    /// build defect, not an operator error.
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// tonic refused the TLS settings. [`crate::TlsConfig::from_pem`] runs the same checks first,
    /// so this is not expected once that has passed.
    #[error("cannot set up TLS for the gRPC server: {source}")]
    Tls {
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server failed while running.
    #[error("gRPC server on {addr} failed: {source}")]
    Serve {
        /// The bound address.
        addr: SocketAddr,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}
