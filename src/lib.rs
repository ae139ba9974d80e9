//! gRPC API types for cgnat, generated at build time from `proto/` (see
//! `build.rs`): the messages, the `Cgnat` client used by `cgnatctl` and the
//! tests, and the server trait implemented by the `mgmt` crate.
//!
//! This crate contains no logic. The `.proto` files are the source of truth
//! and their comments are the API documentation; the encoded descriptor set
//! is exported for gRPC server reflection. The package's `tests/` directory
//! holds the end-to-end tests that drive a real lab.
#![forbid(unsafe_code)]

/// `cgnat.v1`: the first (and current) version of the management API.
pub mod v1 {
    // Generated code does not carry docs for every item and uses names we do
    // not choose; lints on it would only be noise.
    #![allow(missing_docs, clippy::all, clippy::pedantic)]

    tonic::include_proto!("cgnat.v1");

    /// Encoded `google.protobuf.FileDescriptorSet` of `proto/` including its
    /// imports, for registering with gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/cgnat_descriptor.bin"));
}

#[cfg(test)]
mod tests {
    use super::v1;
    use prost::Message;

    /// Reflection serves this set; it must decode and describe the service
    /// under its wire name, or grpcurl cannot find it.
    #[test]
    fn descriptor_set_describes_cgnat_service() {
        let fds = prost_types::FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.name() == "cgnat/v1/cgnat.proto")
            .unwrap();
        assert_eq!(file.package(), "cgnat.v1");
        let service = file.service.iter().find(|s| s.name() == "Cgnat").unwrap();
        let methods: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        assert_eq!(
            methods,
            [
                "GetInfo",
                "GetStats",
                "WatchStats",
                "ListPorts",
                "ListPools",
                "ListSessions",
                "GetSession",
                "DeleteSessions",
                "FlushSessions",
                "WatchSessions",
                "ListDnatRules",
                "GetPolicy",
                "ApplyPolicy",
                "AddPool",
                "UpdatePool",
                "DeletePool",
                "AddSnatRule",
                "UpdateSnatRule",
                "DeleteSnatRule",
                "AddExclusion",
                "UpdateExclusion",
                "DeleteExclusion",
                "AddDnatRule",
                "UpdateDnatRule",
                "DeleteDnatRule",
            ]
        );
        // Streaming calls are declared as such, so grpcurl prints every message.
        let streams: Vec<&str> = service
            .method
            .iter()
            .filter(|m| m.server_streaming())
            .map(|m| m.name())
            .collect();
        assert_eq!(streams, ["WatchStats", "ListSessions", "WatchSessions"]);
        // ListDnatRules is a unary call: its reply is one consistent rule set with one generation.
        let dnat = service
            .method
            .iter()
            .find(|m| m.name() == "ListDnatRules")
            .unwrap();
        assert_eq!(dnat.input_type(), ".cgnat.v1.ListDnatRulesRequest");
        assert_eq!(dnat.output_type(), ".cgnat.v1.ListDnatRulesResponse");
        // Imports are included so reflection clients can resolve Duration/Timestamp.
        assert!(
            fds.file
                .iter()
                .any(|f| f.name() == "google/protobuf/duration.proto")
        );
    }

    /// Role names are part of the contract clients display; check they map
    /// to the proto names (prost strips the enum prefix in Rust only).
    /// Session states and event types read well in grpcurl's JSON.
    #[test]
    fn session_enums_use_proto_names() {
        assert_eq!(
            v1::SessionState::Established.as_str_name(),
            "SESSION_STATE_ESTABLISHED"
        );
        assert_eq!(
            v1::SessionEventType::Dropped.as_str_name(),
            "SESSION_EVENT_TYPE_DROPPED"
        );
    }

    #[test]
    fn role_enum_uses_proto_names() {
        assert_eq!(v1::Role::Inside.as_str_name(), "ROLE_INSIDE");
        assert_eq!(v1::Role::Outside.as_str_name(), "ROLE_OUTSIDE");
        assert_eq!(v1::Role::try_from(2), Ok(v1::Role::Outside));
    }

    /// Health checks and `grpcurl` address the service by this name; it must
    /// stay the package-qualified proto name.
    #[test]
    fn service_name_is_package_qualified() {
        assert_eq!(v1::cgnat_server::SERVICE_NAME, "cgnat.v1.Cgnat");
    }
}
