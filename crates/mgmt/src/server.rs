//! Binding and running the gRPC server: the Cgnat service, reflection (v1 and
//! v1alpha) and health, with a shutdown that cannot hang on open streams.

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use cgnat::v1::cgnat_server::{self, CgnatServer};
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::auth::{TokenCheck, Tokens};
use crate::backend::Backend;
use crate::error::MgmtError;
use crate::service::CgnatService;
use crate::tls::TlsConfig;

/// Default management listen address: loopback only, so the API is not exposed
/// to the network unless the operator asks for it.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50051));

/// After shutdown is requested, connections get this long to finish in-flight
/// calls. Long-lived streams (a health `Watch`, an idle reflection session)
/// would otherwise hold the daemon's exit hostage.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the management server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// TCP address to listen on; port 0 picks a free port (see
    /// [`BoundServer::local_addr`]).
    pub listen: SocketAddr,
    /// Bearer tokens; none configured means no access control (loopback use).
    pub tokens: Tokens,
    /// TLS on the listener (health and reflection included); none: plaintext HTTP/2.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            tokens: Tokens::default(),
            tls: None,
        }
    }
}

/// A server whose socket is bound and whose services are built, not yet
/// accepting calls. Splitting bind from serve lets the daemon fail start-up
/// on a taken port before it launches the data plane.
pub struct BoundServer {
    local_addr: SocketAddr,
    incoming: TcpIncoming,
    router: Router,
    health: HealthReporter,
    stopping: watch::Sender<bool>,
    /// For the log: `plaintext`, `tls` or `tls with client certificates`.
    transport: &'static str,
}

impl fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.local_addr)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Binds `cfg.listen` and builds all services (with TLS when `cfg.tls` is set). Bind errors
/// name the address.
pub async fn bind<B: Backend>(
    cfg: ServerConfig,
    backend: Arc<B>,
) -> Result<BoundServer, MgmtError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| MgmtError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| MgmtError::Bind {
        addr: cfg.listen,
        source,
    })?;
    // gRPC calls are small request/response pairs; Nagle would only add latency.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status(cgnat_server::SERVICE_NAME, ServingStatus::Serving)
        .await;

    // Both reflection versions: grpcurl before 1.9 only speaks v1alpha, newer
    // tools prefer v1. The health descriptors are registered too so that
    // `grpcurl describe grpc.health.v1.Health` works.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(cgnat::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // One listener for everything: health probes and reflection are as protected as the API.
    let mut server = Server::builder();
    if let Some(tls) = &cfg.tls {
        server = server
            .tls_config(tls.server_tls_config())
            .map_err(|source| MgmtError::Tls { source })?;
    }
    let (stopping, stopping_rx) = watch::channel(false);
    let router = server
        .add_service(CgnatServer::with_interceptor(
            CgnatService::new(backend, stopping_rx),
            TokenCheck { tokens: cfg.tokens },
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let transport = match &cfg.tls {
        None => "plaintext",
        Some(tls) if tls.requires_client_cert() => "tls with client certificates",
        Some(_) => "tls",
    };
    Ok(BoundServer {
        local_addr,
        incoming,
        router,
        health,
        stopping,
        transport,
    })
}

/// Turns the server's health service NOT_SERVING, for the whole server and the cgnat service,
/// while it goes on answering (see [`BoundServer::health_switch`]).
#[derive(Clone)]
pub struct HealthSwitch {
    health: HealthReporter,
}

impl HealthSwitch {
    pub async fn set_not_serving(&self) {
        self.health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        self.health
            .set_service_status(cgnat_server::SERVICE_NAME, ServingStatus::NotServing)
            .await;
    }
}

impl fmt::Debug for HealthSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthSwitch").finish_non_exhaustive()
    }
}

impl BoundServer {
    /// The address actually bound (differs from the configured one for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that reports NOT_SERVING before shutdown: the daemon uses it when part of the
    /// data plane has stopped, so health probes and orchestrators see it while the API stays up
    /// for diagnosis.
    pub fn health_switch(&self) -> HealthSwitch {
        HealthSwitch {
            health: self.health.clone(),
        }
    }

    /// Serves until `shutdown` completes, then stops accepting, reports
    /// NOT_SERVING, ends `WatchStats` streams and waits up to
    /// [`DRAIN_TIMEOUT`] for open calls before returning.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MgmtError> {
        let BoundServer {
            local_addr,
            incoming,
            router,
            health,
            stopping,
            transport,
        } = self;
        let mut stopped = stopping.subscribe();

        let signal = async move {
            shutdown.await;
            info!(%local_addr, "gRPC server shutting down");
            HealthSwitch { health }.set_not_serving().await;
            // Ignore the error: it only means no stream is listening.
            let _ = stopping.send(true);
        };
        let drain_deadline = async move {
            if stopped.wait_for(|stop| *stop).await.is_err() {
                // The sender lives inside `signal`; it only disappears when
                // the server future is done, so never force an early return.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };

        info!(%local_addr, transport, "gRPC server listening");
        tokio::select! {
            result = router.serve_with_incoming_shutdown(incoming, signal) => {
                result.map_err(|source| MgmtError::Serve { addr: local_addr, source })
            }
            () = drain_deadline => {
                warn!(%local_addr, timeout = ?DRAIN_TIMEOUT, "gRPC calls still open after shutdown; closing them");
                Ok(())
            }
        }
    }
}

/// Binds and serves until `shutdown` completes; see [`bind`] and
/// [`BoundServer::serve`].
pub async fn serve<B: Backend>(
    cfg: ServerConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MgmtError> {
    bind(cfg, backend).await?.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendError;
    use crate::backend::fake::FakeBackend;
    use cgnat::v1;
    use cgnat::v1::cgnat_client::CgnatClient;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio_stream::StreamExt;
    use tonic::transport::Channel;

    struct Running {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), MgmtError>>,
    }

    impl Running {
        async fn start() -> Running {
            Running::with(FakeBackend::new()).await
        }

        async fn with(backend: FakeBackend) -> Running {
            Running::configured(backend, Tokens::default()).await
        }

        async fn configured(backend: FakeBackend, tokens: Tokens) -> Running {
            Running::secured(backend, tokens, None).await
        }

        async fn secured(backend: FakeBackend, tokens: Tokens, tls: Option<TlsConfig>) -> Running {
            let cfg = ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tokens,
                tls,
            };
            Running::serving(bind(cfg, Arc::new(backend)).await.unwrap())
        }

        fn serving(bound: BoundServer) -> Running {
            let addr = bound.local_addr();
            assert_ne!(addr.port(), 0, "port 0 must resolve to the real port");
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(bound.serve(async move {
                let _ = stopped.await;
            }));
            Running {
                addr,
                stop: Some(stop),
                task,
            }
        }

        async fn channel(&self) -> Channel {
            Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap()
        }

        async fn client(&self) -> CgnatClient<Channel> {
            CgnatClient::new(self.channel().await)
        }

        async fn stop(mut self) -> Result<(), MgmtError> {
            if let Some(stop) = self.stop.take() {
                stop.send(()).unwrap();
            }
            (&mut self.task).await.unwrap()
        }
    }

    #[tokio::test]
    async fn get_info_reports_backend_values() {
        let server = Running::start().await;
        let info = server
            .client()
            .await
            .get_info(v1::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.version, "9.8.7");
        assert_eq!(info.workers, 2);
        assert_eq!(info.config_generation, 42);
        assert_eq!(info.dpdk_version, "DPDK 22.11.4");
        let uptime = info.uptime.unwrap().seconds;
        assert!((3725..3725 + 60).contains(&uptime), "uptime {uptime}");
        assert!(info.started_at.is_some());
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn get_stats_returns_per_worker_and_summed_counters() {
        let server = Running::start().await;
        let stats = server
            .client()
            .await
            .get_stats(v1::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stats.totals["rx_packets"], 1500);
        assert_eq!(stats.totals["sessions_current"], 12);
        assert_eq!(stats.drops["no_session"], 10);
        assert_eq!(stats.drops["out_of_ports"], 2);
        let workers: Vec<(u32, u32)> = stats.workers.iter().map(|w| (w.worker, w.lcore)).collect();
        assert_eq!(workers, [(0, 1), (1, 3)]);
        assert_eq!(stats.workers[0].counters["tx_packets"], 990);
        assert_eq!(stats.workers[1].drops["no_session"], 6);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn list_ports_returns_every_port() {
        let server = Running::start().await;
        let ports = server
            .client()
            .await
            .list_ports(v1::ListPortsRequest {})
            .await
            .unwrap()
            .into_inner()
            .ports;
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].name, "inside");
        assert_eq!(ports[0].role(), v1::Role::Inside);
        assert_eq!(ports[0].mac, "02:00:00:00:00:0a");
        assert_eq!(ports[0].address, "100.64.0.1/24");
        assert!(ports[0].link_up);
        assert_eq!(ports[0].speed_mbps, 10_000);
        assert_eq!(ports[0].counters.unwrap().rx_missed, 15);
        assert_eq!(ports[1].port_id, 1);
        assert_eq!(ports[1].driver, "net_ixgbe");
        assert!(!ports[1].link_up);
        // Whether flows reach their owner by the NIC or by handoff, and why not by the NIC.
        let steering = |i: usize| ports[i].steering.clone().unwrap();
        assert_eq!(steering(0).mode(), v1::SteeringMode::SoftwareHandoff);
        assert_eq!(
            steering(0).reason,
            "rte_flow is not supported by net_af_packet"
        );
        assert_eq!(steering(1).mode(), v1::SteeringMode::RteFlow);
        assert_eq!(steering(1).rules, 4);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn watch_stats_streams_updates() {
        let server = Running::start().await;
        let mut stream = server
            .client()
            .await
            .watch_stats(v1::WatchStatsRequest {
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            let stats = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(stats.totals["rx_packets"], 1500);
            assert_eq!(stats.workers.len(), 2);
        }
        drop(stream);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn watch_stats_rejects_too_small_interval() {
        let server = Running::start().await;
        let status = server
            .client()
            .await
            .watch_stats(v1::WatchStatsRequest {
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 10_000_000,
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("interval"), "{status:?}");
        server.stop().await.unwrap();
    }

    /// A client watching stats must not keep the daemon from exiting.
    #[tokio::test]
    async fn shutdown_ends_open_watch_streams_promptly() {
        let server = Running::start().await;
        let mut stream = server
            .client()
            .await
            .watch_stats(v1::WatchStatsRequest { interval: None })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.next().await.unwrap().is_ok());

        let started = std::time::Instant::now();
        server.stop().await.unwrap();
        assert!(
            started.elapsed() < DRAIN_TIMEOUT,
            "shutdown waited for the drain timeout: {:?}",
            started.elapsed()
        );
        // The stream ends cleanly rather than with an error.
        let rest = tokio::time::timeout(Duration::from_secs(2), async {
            let mut n = 0;
            while let Some(item) = stream.next().await {
                item.unwrap();
                n += 1;
            }
            n
        })
        .await
        .unwrap();
        assert!(rest <= 1, "stream kept going after shutdown");
    }

    #[tokio::test]
    async fn health_reports_serving_for_server_and_service() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let server = Running::start().await;
        let mut health = HealthClient::new(server.channel().await);
        for service in ["", "cgnat.v1.Cgnat"] {
            let reply = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                reply.status(),
                tonic_health::pb::health_check_response::ServingStatus::Serving,
                "service {service:?}"
            );
        }
        server.stop().await.unwrap();
    }

    /// The daemon's switch (used when a worker stops): health turns NOT_SERVING for the server
    /// and the service, and the API goes on answering for diagnosis.
    #[tokio::test]
    async fn the_health_switch_reports_not_serving_while_the_api_answers() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus as S;
        use tonic_health::pb::health_client::HealthClient;
        let cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tokens: Tokens::default(),
            tls: None,
        };
        let bound = bind(cfg, Arc::new(FakeBackend::new())).await.unwrap();
        let switch = bound.health_switch();
        let server = Running::serving(bound);
        let health = HealthClient::new(server.channel().await);
        let status = |service: &'static str| {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status()
            }
        };
        assert_eq!(status("").await, S::Serving);
        switch.set_not_serving().await;
        assert_eq!(status("").await, S::NotServing);
        assert_eq!(status("cgnat.v1.Cgnat").await, S::NotServing);
        let info = server
            .client()
            .await
            .get_info(v1::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.workers, 2, "the API still answers");
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn reflection_v1_lists_cgnat_service() {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

        let server = Running::start().await;
        let mut client = ServerReflectionClient::new(server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply: ServerReflectionResponse = replies.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == "cgnat.v1.Cgnat"), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
        server.stop().await.unwrap();
    }

    /// grpcurl 1.8 only speaks v1alpha; it must see the service and be able to
    /// fetch its descriptor (that is what `grpcurl describe` and calls need).
    #[tokio::test]
    async fn reflection_v1alpha_lists_and_describes_cgnat_service() {
        use prost::Message;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

        let server = Running::start().await;
        let mut client = ServerReflectionClient::new(server.channel().await);
        let requests = [
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "cgnat.v1.Cgnat".into(),
                )),
            },
        ];
        let mut replies = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();

        let list = replies.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
            panic!("unexpected reflection reply {list:?}");
        };
        assert!(list.service.iter().any(|s| s.name == "cgnat.v1.Cgnat"));

        let file = replies.next().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
            panic!("unexpected reflection reply {file:?}");
        };
        let described = files
            .file_descriptor_proto
            .iter()
            .map(|raw| prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap())
            .any(|fd| fd.package() == "cgnat.v1" && fd.service.iter().any(|s| s.name() == "Cgnat"));
        assert!(described);
        server.stop().await.unwrap();
    }

    fn filter(
        protocol: &str,
        inside: &str,
        outside: &str,
        remote: &str,
        state: &str,
    ) -> v1::SessionFilter {
        v1::SessionFilter {
            protocol: protocol.into(),
            inside: inside.into(),
            outside: outside.into(),
            remote: remote.into(),
            state: state.into(),
            rule: String::new(),
        }
    }

    async fn list(
        server: &Running,
        f: Option<v1::SessionFilter>,
    ) -> Result<Vec<v1::Session>, tonic::Status> {
        let mut stream = server
            .client()
            .await
            .list_sessions(v1::ListSessionsRequest {
                filter: f,
                limit: 0,
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(s) = stream.message().await? {
            out.push(s);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn list_sessions_streams_the_matching_sessions_readably() {
        let server = Running::start().await;
        let all = list(&server, None).await.unwrap();
        assert_eq!(all.len(), 3);
        let udp = &all[0];
        assert_eq!(udp.protocol, "udp");
        assert_eq!(udp.inside, "100.64.0.11:5000");
        assert_eq!(udp.outside, "203.0.113.2:40001");
        assert_eq!(udp.remote, "198.51.100.10:53");
        assert_eq!(udp.state, v1::SessionState::Established as i32);
        assert_eq!(udp.expires_in.unwrap().seconds, 297);
        let tcp_of_11 = list(&server, Some(filter("TCP", "100.64.0.11", "", "", "")))
            .await
            .unwrap();
        assert_eq!(tcp_of_11.len(), 1);
        assert_eq!(tcp_of_11[0].tcp_state, "established");
        let by_outside = list(
            &server,
            Some(filter("", "", "203.0.113.3:50000", "", "established")),
        )
        .await
        .unwrap();
        assert_eq!(by_outside.len(), 1);
        assert_eq!(by_outside[0].remote, "198.51.100.11:443");
        assert!(
            list(&server, Some(filter("", "", "", "", "new")))
                .await
                .unwrap()
                .is_empty()
        );
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn get_session_finds_one_by_either_endpoint_or_says_not_found() {
        let server = Running::start().await;
        let mut c = server.client().await;
        let req = |inside: &str, outside: &str, remote: &str| v1::GetSessionRequest {
            protocol: "tcp".into(),
            inside: inside.into(),
            outside: outside.into(),
            remote: remote.into(),
        };
        let s = c
            .get_session(req("100.64.0.11:40000", "", "198.51.100.10:80"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.outside, "203.0.113.2:40002");
        let s = c
            .get_session(req("", "203.0.113.3:50000", "198.51.100.11:443"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.inside, "100.64.0.12:40000");
        let err = c
            .get_session(req("100.64.0.11:40001", "", "198.51.100.10:80"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        for bad in [
            req("100.64.0.11", "", "198.51.100.10:80"),
            req("100.64.0.11:40000", "203.0.113.2:40002", "198.51.100.10:80"),
            req("100.64.0.11:40000", "", "198.51.100.10"),
        ] {
            let err = c.get_session(bad).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn bad_session_filters_name_the_field_and_query_nothing() {
        let server = Running::start().await;
        for (f, field) in [
            (filter("sctp", "", "", "", ""), "filter.protocol"),
            (filter("", "100.64.0.300", "", "", ""), "filter.inside"),
            (
                filter("", "", "203.0.113.2:99999", "", ""),
                "filter.outside",
            ),
            (filter("", "", "", "example.org:80", ""), "filter.remote"),
            (filter("", "", "", "", "closing"), "filter.state"),
        ] {
            let err = list(&server, Some(f)).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message().starts_with(&format!("{field}: ")),
                "{}",
                err.message()
            );
        }
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn delete_needs_a_filter_and_flush_empties_the_table() {
        let server = Running::start().await;
        let mut client = server.client().await;
        let err = client
            .delete_sessions(v1::DeleteSessionsRequest {
                filter: Some(v1::SessionFilter::default()),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("FlushSessions"));
        assert_eq!(
            list(&server, None).await.unwrap().len(),
            3,
            "nothing deleted"
        );
        let n = client
            .delete_sessions(v1::DeleteSessionsRequest {
                filter: Some(filter("", "100.64.0.11", "", "", "")),
            })
            .await
            .unwrap()
            .into_inner()
            .deleted;
        assert_eq!(n, 2);
        assert_eq!(list(&server, None).await.unwrap().len(), 1);
        let n = client
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .deleted;
        assert_eq!(n, 1);
        assert!(list(&server, None).await.unwrap().is_empty());
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_busy_data_plane_is_resource_exhausted() {
        let mut backend = FakeBackend::new();
        backend.refuse = Some(BackendError::Busy);
        let server = Running::with(backend).await;
        let err = list(&server, None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let err = server
            .client()
            .await
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        server.stop().await.unwrap();
    }

    fn stopped_worker() -> BackendError {
        BackendError::WorkerFailed {
            worker: 1,
            lcore: 3,
            why: "panicked".into(),
        }
    }

    /// With a stopped worker, session queries say so (UNAVAILABLE, naming the worker) instead of
    /// answering for the other workers only.
    #[tokio::test]
    async fn session_queries_with_a_stopped_worker_are_unavailable() {
        let mut backend = FakeBackend::new();
        backend.refuse = Some(stopped_worker());
        let server = Running::with(backend).await;
        let err = list(&server, None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.message()
                .starts_with("worker 1 (lcore 3) has stopped (panicked)"),
            "{}",
            err.message()
        );
        let mut client = server.client().await;
        let err = client
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let err = client
            .watch_sessions(v1::WatchSessionsRequest {
                filter: None,
                snapshot: true,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        server.stop().await.unwrap();
    }

    /// A worker that stops while a query runs: the listing ends with an error after what it got,
    /// never as a clean end of stream, and the deletion reports the error, not a count.
    #[tokio::test]
    async fn a_query_cut_short_by_a_stopped_worker_ends_in_an_error() {
        let mut backend = FakeBackend::new();
        backend.interrupt = Some(stopped_worker());
        let server = Running::with(backend).await;
        let mut client = server.client().await;
        let mut stream = client
            .list_sessions(v1::ListSessionsRequest {
                filter: None,
                limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        let end = loop {
            match stream.message().await {
                Ok(Some(_)) => got += 1,
                Ok(None) => panic!("the listing ended as if complete after {got} sessions"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, 3, "the sessions before the error arrive");
        assert_eq!(end.code(), tonic::Code::Unavailable);
        let mut watch = client
            .watch_sessions(v1::WatchSessionsRequest {
                filter: None,
                snapshot: true,
            })
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            let ev = watch.message().await.unwrap().unwrap();
            assert_eq!(ev.r#type, v1::SessionEventType::Snapshot as i32);
        }
        let err = watch.message().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        let err = client
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("worker 1"), "{}", err.message());
        server.stop().await.unwrap();
    }

    /// `nat.event_ring: 0`: a watch is refused naming the field, rather than accepted and silent.
    #[tokio::test]
    async fn watch_sessions_without_an_event_ring_names_the_field() {
        let mut backend = FakeBackend::new();
        backend.events_disabled = true;
        let server = Running::with(backend).await;
        let err = server
            .client()
            .await
            .watch_sessions(v1::WatchSessionsRequest {
                filter: None,
                snapshot: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(
            err.message().starts_with("nat.event_ring: 0"),
            "{}",
            err.message()
        );
        // Listing does not need events and still works.
        assert_eq!(list(&server, None).await.unwrap().len(), 3);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn list_pools_reports_usage_per_pool_and_address() {
        let server = Running::start().await;
        let pools = server
            .client()
            .await
            .list_pools(v1::ListPoolsRequest {})
            .await
            .unwrap()
            .into_inner()
            .pools;
        assert_eq!(pools.len(), 1);
        let p = &pools[0];
        assert_eq!(p.addresses, vec!["203.0.113.1-203.0.113.2".to_string()]);
        assert_eq!(p.ports, "1024-65535");
        assert_eq!(p.ports_total, 2 * 64512);
        assert_eq!(p.ports_in_use, 15);
        assert_eq!(p.by_address[1].address, "203.0.113.2");
        assert_eq!(p.by_address[1].ports_in_use, 5);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn list_dnat_rules_returns_the_rules_with_backend_sums() {
        let server = Running::start().await;
        let reply = server
            .client()
            .await
            .list_dnat_rules(v1::ListDnatRulesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.generation, 3);
        let names: Vec<&str> = reply.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["web", "web-fullnat", "static-host"]);
        let web = &reply.rules[0];
        assert_eq!(web.address, "203.0.113.101");
        assert_eq!((web.protocol.as_str(), web.port), ("tcp", 80));
        assert_eq!(web.scheduler, "round_robin");
        assert_eq!(web.affinity_timeout.unwrap().seconds, 30);
        assert_eq!(web.snat_pool, "", "client address preserved");
        assert_eq!(web.on_backend_removal, "drain");
        assert!(!web.retired);
        // The rule's counters are the sums over its three backends, the retired one included.
        assert_eq!(web.packets, 40);
        assert_eq!(web.bytes, 4_000);
        assert_eq!(web.sessions_created, 8);
        assert_eq!(web.sessions_current, 3);
        let b: Vec<(&str, u32, u32, bool)> = web
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.port, b.weight, b.retired))
            .collect();
        assert_eq!(
            b,
            [
                ("100.64.0.21", 8001, 1, false),
                ("100.64.0.22", 8002, 2, true),
                ("100.64.0.23", 8003, 3, false)
            ]
        );
        assert_eq!(
            (
                web.backends[0].packets,
                web.backends[0].bytes,
                web.backends[0].sessions_created,
                web.backends[0].sessions_current
            ),
            (20, 2_000, 4, 2)
        );
        let fullnat = &reply.rules[1];
        assert_eq!(
            (
                fullnat.protocol.as_str(),
                fullnat.port,
                fullnat.scheduler.as_str()
            ),
            ("udp", 53, "maglev")
        );
        assert_eq!(fullnat.snat_pool, "lab");
        assert!(fullnat.retired && fullnat.backends[0].retired);
        assert_eq!(fullnat.sessions_current, 0);
        let host = &reply.rules[2];
        assert_eq!((host.protocol.as_str(), host.port), ("any", 0));
        assert_eq!(host.snat_pool, "");
        assert_eq!(host.on_backend_removal, "cut");
        assert_eq!(host.affinity_timeout.unwrap().seconds, 0);
        assert_eq!(host.sessions_current, 5);
        assert_eq!(host.backends[0].port, 0);
        server.stop().await.unwrap();
    }

    fn event(
        change: crate::backend::SessionChange,
        inside: &str,
    ) -> crate::backend::SessionEventSnapshot {
        crate::backend::SessionEventSnapshot {
            change,
            worker: 1,
            proto: 17,
            inside: inside.parse().unwrap(),
            outside: "203.0.113.2:40001".parse().unwrap(),
            remote: "198.51.100.10:53".parse().unwrap(),
            inbound: false,
        }
    }

    #[tokio::test]
    async fn watch_sessions_streams_snapshot_then_matching_events_and_reports_drops() {
        use crate::backend::SessionChange::{Created, Deleted};
        let backend = FakeBackend::new();
        let events = backend.events.clone();
        let server = Running::with(backend).await;
        let mut stream = server
            .client()
            .await
            .watch_sessions(v1::WatchSessionsRequest {
                filter: Some(filter("udp", "100.64.0.11", "", "", "")),
                snapshot: true,
            })
            .await
            .unwrap()
            .into_inner();
        // The snapshot: the one UDP session of 100.64.0.11 in the fake table.
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.r#type, v1::SessionEventType::Snapshot as i32);
        assert_eq!(first.session.unwrap().inside, "100.64.0.11:5000");
        // Live events: only the matching ones come through.
        events.send(event(Created, "100.64.0.12:1")).unwrap();
        events.send(event(Created, "100.64.0.11:6000")).unwrap();
        events.send(event(Deleted, "100.64.0.11:6000")).unwrap();
        let created = stream.message().await.unwrap().unwrap();
        assert_eq!(created.r#type, v1::SessionEventType::Created as i32);
        let s = created.session.unwrap();
        assert_eq!(
            (s.protocol.as_str(), s.inside.as_str(), s.worker),
            ("udp", "100.64.0.11:6000", 1)
        );
        let deleted = stream.message().await.unwrap().unwrap();
        assert_eq!(deleted.r#type, v1::SessionEventType::Deleted as i32);
        // More events than the queue holds while the reader is not reading: the stream says how
        // many it missed and carries on.
        for i in 0..20u16 {
            events
                .send(event(Created, &format!("100.64.0.11:{}", 7000 + i)))
                .unwrap();
        }
        let mut dropped = 0;
        let mut seen = 0;
        while seen + dropped < 20 {
            let e = stream.message().await.unwrap().unwrap();
            if e.r#type == v1::SessionEventType::Dropped as i32 {
                dropped += e.dropped;
            } else {
                seen += 1;
            }
        }
        assert!(dropped > 0, "a lagging watcher is told what it missed");
        server.stop().await.unwrap();
    }

    /// A worker that stops under an open watch: the stream delivers what came before, then ends
    /// with UNAVAILABLE naming the worker instead of going on silently without its sessions; a
    /// new watch is refused the same way.
    #[tokio::test]
    async fn an_open_watch_ends_when_a_worker_stops() {
        use crate::backend::SessionChange::Created;
        let backend = FakeBackend::new();
        let events = backend.events.clone();
        let failure = backend.failure.clone();
        let server = Running::with(backend).await;
        let mut client = server.client().await;
        let mut stream = client
            .watch_sessions(v1::WatchSessionsRequest {
                filter: None,
                snapshot: false,
            })
            .await
            .unwrap()
            .into_inner();
        events.send(event(Created, "100.64.0.11:6000")).unwrap();
        let ev = stream.message().await.unwrap().unwrap();
        assert_eq!(ev.r#type, v1::SessionEventType::Created as i32);
        failure.send_replace(Some(stopped_worker()));
        let err = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream ends at once")
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(
            err.message().contains("worker 1 (lcore 3)"),
            "{}",
            err.message()
        );
        let err = client
            .watch_sessions(v1::WatchSessionsRequest {
                filter: None,
                snapshot: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("worker 1"), "{}", err.message());
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn watch_sessions_refuses_a_state_filter() {
        let server = Running::start().await;
        let err = server
            .client()
            .await
            .watch_sessions(v1::WatchSessionsRequest {
                filter: Some(filter("", "", "", "", "new")),
                snapshot: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("filter.state: "));
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn tokens_separate_readers_from_writers() {
        use tonic::metadata::MetadataValue;
        let tokens = Tokens {
            read_write: Some("rw-secret-0123456789".into()),
            read_only: Some("ro-secret-0123456789".into()),
        };
        let server = Running::configured(FakeBackend::new(), tokens).await;
        let channel = server.channel().await;
        let with = |token: Option<&'static str>| {
            CgnatClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
                if let Some(t) = token {
                    let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
                    req.metadata_mut().insert("authorization", v);
                }
                Ok(req)
            })
        };
        // No token, or a wrong one: nothing, not even reading.
        for t in [None, Some("guess")] {
            let err = with(t).get_info(v1::GetInfoRequest {}).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            let err = with(t)
                .list_dnat_rules(v1::ListDnatRulesRequest {})
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
        // Read-only: reads work, changes are refused and change nothing.
        let mut ro = with(Some("ro-secret-0123456789"));
        ro.get_stats(v1::GetStatsRequest {}).await.unwrap();
        ro.list_pools(v1::ListPoolsRequest {}).await.unwrap();
        let rules = ro
            .list_dnat_rules(v1::ListDnatRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules;
        assert_eq!(rules.len(), 3);
        let err = ro
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = ro
            .delete_sessions(v1::DeleteSessionsRequest {
                filter: Some(filter("udp", "", "", "", "")),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        // Read-write: the flush happens.
        let mut rw = with(Some("rw-secret-0123456789"));
        let n = rw
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap()
            .into_inner()
            .deleted;
        assert_eq!(n, 3, "the read-only attempts deleted nothing");
        // Health stays open for probes.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        server.stop().await.unwrap();
    }

    // ---- TLS ----

    use crate::tls::client_tls_config;
    use crate::tls::testpki::{Ca, Pair};

    impl Running {
        /// A token-less server with TLS from [`server_tls`].
        async fn tls(ca: &Ca, client_ca: Option<&Ca>) -> Running {
            let tls = server_tls(ca, client_ca);
            Running::secured(FakeBackend::new(), Tokens::default(), Some(tls)).await
        }
    }

    /// TLS with `ca`'s server certificate; with `client_ca`, clients need a certificate from it.
    fn server_tls(ca: &Ca, client_ca: Option<&Ca>) -> TlsConfig {
        let server = ca.server();
        TlsConfig::from_pem(
            server.cert.into(),
            server.key.into(),
            client_ca.map(|c| c.cert.clone().into()),
        )
        .unwrap()
    }

    /// A TLS channel to `addr` trusting `ca`, presenting `identity`, checking the server's
    /// certificate for `name` (the address when none). A failed connection is UNAVAILABLE, as
    /// a failed call on a lazily connected channel would be, with the whole error chain in the
    /// message: the TLS alert is at its end.
    async fn tls_channel(
        addr: SocketAddr,
        ca: &Ca,
        identity: Option<&Pair>,
        name: Option<&str>,
    ) -> Result<Channel, tonic::Status> {
        let mut tls = client_tls_config(
            Some(ca.cert.as_bytes()),
            identity.map(|p| (p.cert.as_bytes(), p.key.as_bytes())),
        )
        .unwrap();
        if let Some(name) = name {
            tls = tls.domain_name(name);
        }
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(chain(&e)))
    }

    fn chain(err: &(dyn std::error::Error + 'static)) -> String {
        let mut text = err.to_string();
        let mut cause = err.source();
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }

    /// GetInfo over TLS; a failure anywhere (handshake, call) is the status the caller sees.
    async fn tls_get_info(
        addr: SocketAddr,
        ca: &Ca,
        identity: Option<&Pair>,
    ) -> Result<v1::Info, tonic::Status> {
        let channel = tls_channel(addr, ca, identity, None).await?;
        CgnatClient::new(channel)
            .get_info(v1::GetInfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(with_cause)
    }

    /// A client-side status with its transport error's chain in the message.
    fn with_cause(s: tonic::Status) -> tonic::Status {
        let detail = std::error::Error::source(&s).map(chain).unwrap_or_default();
        tonic::Status::new(s.code(), format!("{}: {detail}", s.message()))
    }

    /// The connection failed below gRPC: UNAVAILABLE when the client saw it while connecting,
    /// UNKNOWN "transport error" when the server's alert came after the client had finished its
    /// side of a TLS 1.3 handshake and sent the call. Never a status from the server itself
    /// (UNAUTHENTICATED would mean the server had read the request). `alert` is what the
    /// error chain must name.
    fn assert_refused_by_tls<T: std::fmt::Debug>(
        result: Result<T, tonic::Status>,
        why: &str,
        alert: &str,
    ) {
        let err = result.expect_err(why);
        let below_grpc = err.code() == tonic::Code::Unavailable
            || (err.code() == tonic::Code::Unknown && err.message().starts_with("transport error"));
        assert!(below_grpc, "{why}: {err:?}");
        assert!(err.message().contains(alert), "{why}: {err:?}");
    }

    #[tokio::test]
    async fn tls_serves_api_health_and_reflection_to_a_client_trusting_the_ca() {
        let ca = Ca::new("cgnat test CA");
        let server = Running::tls(&ca, None).await;
        // The certificate names 127.0.0.1, which is what the client checks by default.
        let info = tls_get_info(server.addr, &ca, None).await.unwrap();
        assert_eq!(info.version, "9.8.7");
        // Health and reflection are on the same TLS listener.
        let channel = tls_channel(server.addr, &ca, None, Some("localhost"))
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: cgnat_server::SERVICE_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
        {
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
            let mut reflection = ServerReflectionClient::new(channel);
            let request = tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let reply = reflection
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner()
                .next()
                .await
                .unwrap()
                .unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
                panic!("unexpected reflection reply {reply:?}");
            };
            assert!(list.service.iter().any(|s| s.name == "cgnat.v1.Cgnat"));
        }
        // A name the certificate does not carry is refused by the client.
        let err = tls_channel(server.addr, &ca, None, Some("nat1.example"))
            .await
            .unwrap_err();
        assert!(err.message().contains("not valid for name"), "{err:?}");
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn tls_refuses_plaintext_clients_and_clients_trusting_another_ca() {
        let ca = Ca::new("cgnat test CA");
        let server = Running::tls(&ca, None).await;
        // Plaintext HTTP/2 to a TLS listener: the server reads no TLS hello and hangs up.
        let plain = match Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => CgnatClient::new(channel)
                .get_info(v1::GetInfoRequest {})
                .await
                .map(tonic::Response::into_inner),
            Err(e) => Err(tonic::Status::unavailable(chain(&e))),
        };
        assert_refused_by_tls(plain, "a plaintext client must not get through", "");
        // The client checks the server's certificate: signed by a CA it does not trust.
        let err = tls_get_info(server.addr, &Ca::new("other CA"), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("UnknownIssuer"), "{err:?}");
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn client_ca_admits_only_certificates_it_signed() {
        let ca = Ca::new("cgnat test CA");
        let server = Running::tls(&ca, Some(&ca)).await;
        assert_refused_by_tls(
            tls_get_info(server.addr, &ca, None).await,
            "a client without a certificate must not get through",
            "CertificateRequired",
        );
        let other = Ca::new("other CA");
        assert_refused_by_tls(
            tls_get_info(server.addr, &ca, Some(&other.client("intruder"))).await,
            "a certificate from another CA must not get through",
            "UnknownCA",
        );
        let info = tls_get_info(server.addr, &ca, Some(&ca.client("operator")))
            .await
            .unwrap();
        assert_eq!(info.workers, 2);
        // Health is behind the same handshake: no certificate, no probe.
        let health = match tls_channel(server.addr, &ca, None, None).await {
            Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(drop)
                .map_err(with_cause),
            Err(e) => Err(e),
        };
        assert_refused_by_tls(
            health,
            "health without a client certificate",
            "CertificateRequired",
        );
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn tokens_still_apply_over_tls() {
        use tonic::metadata::MetadataValue;
        let ca = Ca::new("cgnat test CA");
        let tokens = Tokens {
            read_write: Some("rw-secret-0123456789".into()),
            read_only: Some("ro-secret-0123456789".into()),
        };
        let server =
            Running::secured(FakeBackend::new(), tokens, Some(server_tls(&ca, Some(&ca)))).await;
        let client = ca.client("monitor");
        let channel = tls_channel(server.addr, &ca, Some(&client), None)
            .await
            .unwrap();
        // A valid certificate is no token: the server answers, and refuses.
        let err = CgnatClient::new(channel.clone())
            .get_info(v1::GetInfoRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let mut ro = CgnatClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
            let v: MetadataValue<_> = "Bearer ro-secret-0123456789".parse().unwrap();
            req.metadata_mut().insert("authorization", v);
            Ok(req)
        });
        ro.get_info(v1::GetInfoRequest {}).await.unwrap();
        let err = ro
            .flush_sessions(v1::FlushSessionsRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        server.stop().await.unwrap();
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let server = Running::start().await;
        let err = bind(
            ServerConfig {
                listen: server.addr,
                ..ServerConfig::default()
            },
            Arc::new(FakeBackend::new()),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MgmtError::Bind { addr, .. } if addr == server.addr));
        assert!(err.to_string().contains(&server.addr.to_string()), "{err}");
        server.stop().await.unwrap();
    }

    #[test]
    fn default_listen_is_loopback_50051() {
        assert_eq!(
            ServerConfig::default().listen.to_string(),
            "127.0.0.1:50051"
        );
    }
}
