//! cgnatctl: command-line client for a running cgnatd's gRPC management API.
//!
//! `cgnatctl info | stats [--watch] | ports | pools | health | sessions list|get|delete|flush|watch
//! | dnat | rules get|apply|add|update|delete`, printed as aligned tables for people or as
//! JSON/YAML (`-o json`) for scripts. Errors are one line on stderr,
//! `cgnatctl: <GRPC_CODE>: <message>`, with a non-zero exit. `--token-file` sends a bearer
//! token; `--tls` (or an `https://` server) speaks TLS, with `--ca` for the server's CA and
//! `--cert` and `--key` for a client certificate.
#![forbid(unsafe_code)]

#[path = "../ctl/mod.rs"]
mod ctl;

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use cgnat::v1;
use cgnat::v1::cgnat_client::CgnatClient;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use ctl::format::{human_duration, parse_duration, status_line};
use ctl::view::{
    DnatView, HealthView, InfoView, PoolsView, PortsView, Rates, SessionEventView, SessionView,
    StatsTableOptions, StatsView, dnat_table, health_line, info_table, pools_table, ports_table,
    session_event_line, sessions_table, stats_table,
};

/// Query a running cgnatd over its gRPC management API.
#[derive(Debug, Parser)]
#[command(name = "cgnatctl", version)]
struct Cli {
    /// Management API address of cgnatd (host:port, http://host:port or https://host:port;
    /// without a scheme, https with --tls and http otherwise).
    #[arg(
        long,
        global = true,
        env = "CGNAT_SERVER",
        default_value = "127.0.0.1:50051"
    )]
    server: String,

    /// Speak TLS (https), for a cgnatd with mgmt.tls. An https:// --server implies it.
    #[arg(long, global = true)]
    tls: bool,

    /// PEM file with the CA certificate(s) that cgnatd's certificate must chain to [default:
    /// the system's trust store].
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<std::path::PathBuf>,

    /// PEM file with this client's certificate chain, for a cgnatd with mgmt.tls.client_ca.
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    cert: Option<std::path::PathBuf>,

    /// PEM file with the private key of --cert.
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    key: Option<std::path::PathBuf>,

    /// Name that cgnatd's certificate must carry (also sent as SNI) [default: the host of
    /// --server].
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Give up connecting, or waiting for a reply, after this long (e.g. 500ms, 5s).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,

    /// File holding the bearer token, when cgnatd requires one (mgmt.tokens).
    #[arg(long, global = true, env = "CGNAT_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON; with --watch, one object per line.
    Json,
    /// YAML; with --watch, one document per update.
    Yaml,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Daemon version, uptime, workers, config generation, DPDK version.
    Info,
    /// Data-plane counters and drops, summed over workers.
    Stats(StatsArgs),
    /// DPDK ports: role, driver, MAC, address, link and NIC counters.
    Ports,
    /// Address pools: addresses, port range, modes, and ports in use.
    Pools {
        /// Also list every address with its ports in use.
        #[arg(long)]
        addresses: bool,
    },
    /// gRPC health of the server (exit status 1 unless SERVING).
    Health {
        /// Service to check; empty checks the server as a whole.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// The session table, like conntrack: list, delete, flush.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Destination NAT rules and their backends, with packets, bytes and sessions; the rule
    /// set's generation.
    Dnat,
    /// The translation policy (pools, SNAT rules, exclusions, timeouts, limits, DNAT rules):
    /// get it, replace it, or add, update and delete single pools and rules.
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Show the policy in force. `-o yaml` prints `generation` and `policy`, a file that
    /// `rules apply -f` takes back (checking that nobody changed the policy in between).
    Get,
    /// Replace the whole policy with a YAML or JSON file's (the config file's translation keys:
    /// pools, snat, exclusions, nat.timeouts, nat.limits, nat.hold_down,
    /// nat.udp_inbound_refresh, nat.dnat). A file from `rules get -o yaml` is applied only if
    /// the policy is still at the generation it records.
    Apply {
        /// The policy file; `-` reads standard input.
        #[arg(short = 'f', long)]
        file: std::path::PathBuf,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Add one item: `rules add pool '{name: extra, addresses: [203.0.113.9]}'`, or `-f FILE`.
    Add(ItemArgs),
    /// Replace one item: a pool or DNAT rule by its `name`, a SNAT rule or exclusion by --index.
    Update(ItemArgs),
    /// Delete one item: `rules delete pool NAME`, `rules delete snat INDEX`.
    Delete {
        kind: ItemKind,
        /// The pool or DNAT rule's name; the SNAT rule or exclusion's position (from 0).
        #[arg(value_name = "NAME|INDEX")]
        target: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ItemKind {
    Pool,
    Snat,
    Exclusion,
    Dnat,
}

#[derive(Debug, Args)]
struct ItemArgs {
    kind: ItemKind,
    /// The item as inline YAML or JSON (a mapping with the config file's keys).
    item: Option<String>,
    /// Read the item from this file instead (`-`: standard input).
    #[arg(short = 'f', long, conflicts_with = "item")]
    file: Option<std::path::PathBuf>,
    /// SNAT rules and exclusions: the position to add at (default: the end) or to update.
    #[arg(long)]
    index: Option<u32>,
    #[command(flatten)]
    change: ChangeArgs,
}

#[derive(Debug, Args)]
struct ChangeArgs {
    /// Validate and show what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Refuse unless the policy is at this generation (0: no check).
    #[arg(long)]
    expect_generation: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List the sessions matching the filters (conntrack -L).
    List {
        #[command(flatten)]
        filter: SessionFilterArgs,
        /// Show at most this many (which ones come first is not defined).
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Show one session (conntrack -G): -p PROTO -d REMOTE:PORT and -s INSIDE:PORT or -n OUTSIDE:PORT.
    Get(SessionFilterArgs),
    /// Delete the sessions matching the filters (conntrack -D); needs at least one filter.
    Delete(SessionFilterArgs),
    /// Delete every session (conntrack -F).
    Flush,
    /// Print session events as they happen (conntrack -E) until interrupted.
    Watch {
        #[command(flatten)]
        filter: SessionFilterArgs,
        /// Start with the matching sessions that exist now.
        #[arg(long)]
        snapshot: bool,
    },
}

/// Session filters; each one given must match. Endpoints are `a.b.c.d` or `a.b.c.d:port`.
#[derive(Debug, Args)]
struct SessionFilterArgs {
    /// tcp, udp or icmp.
    #[arg(short = 'p', long = "proto")]
    protocol: Option<String>,
    /// The subscriber's endpoint.
    #[arg(short = 's', long)]
    inside: Option<String>,
    /// The translated (outside) endpoint.
    #[arg(short = 'n', long)]
    outside: Option<String>,
    /// The far end.
    #[arg(short = 'd', long)]
    remote: Option<String>,
    /// new or established.
    #[arg(long)]
    state: Option<String>,
    /// The rule that translates them: a DNAT rule's name, or snat[N] (see `cgnatctl rules get`).
    #[arg(long)]
    rule: Option<String>,
}

impl SessionFilterArgs {
    fn filter(&self) -> v1::SessionFilter {
        let f = |o: &Option<String>| o.clone().unwrap_or_default();
        v1::SessionFilter {
            protocol: f(&self.protocol),
            inside: f(&self.inside),
            outside: f(&self.outside),
            remote: f(&self.remote),
            state: f(&self.state),
            rule: f(&self.rule),
        }
    }
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Keep printing updates until interrupted; tables show per-second rates.
    #[arg(short, long)]
    watch: bool,
    /// Time between updates with --watch (minimum 100ms) [default: 1s].
    #[arg(long, value_parser = parse_duration, requires = "watch")]
    interval: Option<Duration>,
    /// Add a column per worker to the table.
    #[arg(long)]
    per_worker: bool,
    /// Show drop reasons with a zero count too.
    #[arg(long)]
    all: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // `cgnatctl ... | head` closing the pipe is not a failure.
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            match err.downcast_ref::<Status>() {
                Some(status) => eprintln!("cgnatctl: {}", status_line(status)),
                None => eprintln!("cgnatctl: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = CgnatClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

fn bearer(path: &Option<std::path::PathBuf>) -> Result<Bearer> {
    let Some(path) = path else {
        return Ok(Bearer(None));
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| anyhow!("--token-file {}: not a valid token", path.display()))?;
    Ok(Bearer(Some(value)))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let tls = tls_wanted(&cli)?;
    let server = server_uri(&cli.server, tls)?;
    let auth = bearer(&cli.token_file)?;
    let tls_config = if tls { Some(client_tls(&cli)?) } else { None };
    let channel = connect(&server, tls_config, cli.timeout).await?;
    let client =
        |channel: Channel| -> Client { CgnatClient::with_interceptor(channel, auth.clone()) };
    let ctx = Ctx {
        server,
        timeout: cli.timeout,
        output: cli.output,
        tls,
        client_cert: cli.cert.is_some(),
    };
    match cli.command {
        Command::Info => {
            let mut client = client(channel);
            let info = ctx.call(client.get_info(v1::GetInfoRequest {})).await?;
            emit(&ctx.render(&InfoView::from(&info), info_table, false)?)?;
        }
        Command::Stats(args) => stats(&ctx, client(channel), &args).await?,
        Command::Ports => {
            let mut client = client(channel);
            let ports = ctx.call(client.list_ports(v1::ListPortsRequest {})).await?;
            emit(&ctx.render(&PortsView::from(&ports), ports_table, false)?)?;
        }
        Command::Health { service } => {
            let mut client = HealthClient::new(channel);
            let reply = ctx
                .call(client.check(HealthCheckRequest {
                    service: service.clone(),
                }))
                .await?;
            let status = reply.status();
            let view = HealthView {
                service,
                status: status.as_str_name().to_owned(),
            };
            emit(&ctx.render(&view, health_line, false)?)?;
            if status != ServingStatus::Serving {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Sessions(cmd) => sessions(&ctx, client(channel), cmd).await?,
        Command::Pools { addresses } => {
            let mut client = client(channel);
            let pools = ctx.call(client.list_pools(v1::ListPoolsRequest {})).await?;
            let view = PoolsView::from(&pools);
            emit(&ctx.render(&view, |v| pools_table(v, addresses), false)?)?;
        }
        Command::Dnat => {
            let mut client = client(channel);
            let rules = ctx
                .call(client.list_dnat_rules(v1::ListDnatRulesRequest {}))
                .await?;
            emit(&ctx.render(&DnatView::from(&rules), dnat_table, false)?)?;
        }
        Command::Rules(cmd) => rules(&ctx, client(channel), cmd).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Read a file, or standard input for `-`.
fn read_input(path: &std::path::Path) -> Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// YAML (JSON is YAML) text that must be a mapping, as a protobuf Struct.
fn mapping(text: &str, what: &str) -> Result<(serde_yaml::Mapping, prost_types::Struct)> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| anyhow!("{what}: not YAML or JSON: {e}"))?;
    match v {
        serde_yaml::Value::Mapping(m) => {
            let s = mgmt::policy_json::struct_to_proto(&m);
            Ok((m, s))
        }
        _ => Err(anyhow!("{what}: must be a mapping of keys to values")),
    }
}

async fn rules(ctx: &Ctx, mut client: Client, cmd: RulesCommand) -> Result<()> {
    use ctl::rules::{ApplyView, PolicyView, apply_table, policy_table};
    let (reply, dry_run) = match cmd {
        RulesCommand::Get => {
            let p = ctx.call(client.get_policy(v1::GetPolicyRequest {})).await?;
            emit(&ctx.render(&PolicyView::from(&p), policy_table, false)?)?;
            return Ok(());
        }
        RulesCommand::Apply { file, change } => {
            let (mut m, _) = mapping(&read_input(&file)?, &file.display().to_string())?;
            // A file saved by `rules get -o yaml` carries the generation it was read at.
            let saved = m.contains_key("policy") && m.contains_key("generation");
            let mut expected = 0;
            if saved {
                expected = m
                    .get("generation")
                    .and_then(serde_yaml::Value::as_u64)
                    .ok_or_else(|| anyhow!("{}: generation: not a number", file.display()))?;
                m = match m.remove("policy") {
                    Some(serde_yaml::Value::Mapping(p)) => p,
                    _ => return Err(anyhow!("{}: policy: must be a mapping", file.display())),
                };
            }
            let expected_generation = change.expect_generation.unwrap_or(expected);
            let r = ctx
                .call(client.apply_policy(v1::ApplyPolicyRequest {
                    policy: Some(mgmt::policy_json::struct_to_proto(&m)),
                    expected_generation,
                    dry_run: change.dry_run,
                }))
                .await?;
            (r, change.dry_run)
        }
        RulesCommand::Add(args) | RulesCommand::Update(args)
            if args.item.is_none() && args.file.is_none() =>
        {
            return Err(anyhow!(
                "give the {} as inline YAML or with -f FILE",
                kind_name(args.kind)
            ));
        }
        RulesCommand::Add(args) => {
            let req = put_request(&args)?;
            let r = match args.kind {
                ItemKind::Pool => ctx.call(client.add_pool(req)).await?,
                ItemKind::Snat => ctx.call(client.add_snat_rule(req)).await?,
                ItemKind::Exclusion => ctx.call(client.add_exclusion(req)).await?,
                ItemKind::Dnat => ctx.call(client.add_dnat_rule(req)).await?,
            };
            (r, args.change.dry_run)
        }
        RulesCommand::Update(args) => {
            let req = put_request(&args)?;
            let r = match args.kind {
                ItemKind::Pool => ctx.call(client.update_pool(req)).await?,
                ItemKind::Snat => ctx.call(client.update_snat_rule(req)).await?,
                ItemKind::Exclusion => ctx.call(client.update_exclusion(req)).await?,
                ItemKind::Dnat => ctx.call(client.update_dnat_rule(req)).await?,
            };
            (r, args.change.dry_run)
        }
        RulesCommand::Delete {
            kind,
            target: key,
            change,
        } => {
            let mut req = v1::DeletePolicyItemRequest {
                expected_generation: change.expect_generation.unwrap_or(0),
                dry_run: change.dry_run,
                ..Default::default()
            };
            match kind {
                ItemKind::Pool | ItemKind::Dnat => req.name = key,
                ItemKind::Snat | ItemKind::Exclusion => {
                    req.index = Some(key.parse().map_err(|_| {
                        anyhow!(
                            "{} are addressed by position (0, 1, ...), not {key:?}; see `cgnatctl rules get`",
                            kind_name(kind)
                        )
                    })?)
                }
            }
            let r = match kind {
                ItemKind::Pool => ctx.call(client.delete_pool(req)).await?,
                ItemKind::Snat => ctx.call(client.delete_snat_rule(req)).await?,
                ItemKind::Exclusion => ctx.call(client.delete_exclusion(req)).await?,
                ItemKind::Dnat => ctx.call(client.delete_dnat_rule(req)).await?,
            };
            (r, change.dry_run)
        }
    };
    emit(&ctx.render(&ApplyView::new(&reply, dry_run), apply_table, false)?)
}

fn kind_name(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Pool => "pools",
        ItemKind::Snat => "snat rules",
        ItemKind::Exclusion => "exclusions",
        ItemKind::Dnat => "dnat rules",
    }
}

fn put_request(args: &ItemArgs) -> Result<v1::PutPolicyItemRequest> {
    let (text, what) = match (&args.item, &args.file) {
        (Some(t), _) => (t.clone(), "the item".to_owned()),
        (None, Some(f)) => (read_input(f)?, f.display().to_string()),
        (None, None) => return Err(anyhow!("give the item as inline YAML or with -f FILE")),
    };
    let (_, item) = mapping(&text, &what)?;
    Ok(v1::PutPolicyItemRequest {
        item: Some(item),
        index: args.index,
        expected_generation: args.change.expect_generation.unwrap_or(0),
        dry_run: args.change.dry_run,
    })
}

/// TLS with `--tls` or an `https://` server. The TLS options without it would be ignored, and
/// whoever gave them meant the connection to be protected: refuse rather than go plaintext.
fn tls_wanted(cli: &Cli) -> Result<bool> {
    let tls = cli.tls || cli.server.starts_with("https://");
    if !tls && (cli.ca.is_some() || cli.cert.is_some() || cli.tls_server_name.is_some()) {
        return Err(anyhow!(
            "--ca, --cert, --key and --tls-server-name need --tls (or an https:// --server)"
        ));
    }
    Ok(tls)
}

/// Accepts `host:port` as well as a full URI, since operators type the former.
/// tonic speaks plaintext to an `http://` URI even with TLS configured, so the
/// scheme must agree with `tls`.
fn server_uri(server: &str, tls: bool) -> Result<String> {
    if server.contains("://") {
        if tls && !server.starts_with("https://") {
            return Err(anyhow!(
                "--tls needs an https:// --server or one without a scheme, not {server}"
            ));
        }
        Ok(server.to_owned())
    } else if tls {
        Ok(format!("https://{server}"))
    } else {
        Ok(format!("http://{server}"))
    }
}

/// The TLS settings from --ca, --cert, --key and --tls-server-name, files read and checked
/// here so that a bad one is named before anything is sent.
fn client_tls(cli: &Cli) -> Result<tonic::transport::ClientTlsConfig> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let ca = cli.ca.as_deref().map(|p| read("--ca", p)).transpose()?;
    let identity = match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => Some((read("--cert", cert)?, read("--key", key)?)),
        // clap makes each require the other.
        _ => None,
    };
    let shown = |p: &Option<std::path::PathBuf>| {
        p.as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let mut tls = mgmt::client_tls_config(
        ca.as_deref(),
        identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .map_err(|e| match &e {
        mgmt::TlsError::Ca(_) => anyhow!("--ca {} {e}", shown(&cli.ca)),
        mgmt::TlsError::CertChain(_) => anyhow!("--cert {} {e}", shown(&cli.cert)),
        mgmt::TlsError::Key(_) => anyhow!("--key {} {e}", shown(&cli.key)),
        mgmt::TlsError::KeyMismatch(_) => {
            anyhow!(
                "--key {} {e} (--cert {})",
                shown(&cli.key),
                shown(&cli.cert)
            )
        }
    })?;
    if ca.is_none() {
        tls = tls.with_native_roots();
    }
    if let Some(name) = &cli.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// Connects eagerly so that an unreachable daemon is reported as such, naming
/// the server, instead of as an obscure error from the first call.
async fn connect(
    server: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
    timeout: Duration,
) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| anyhow!("invalid --server {server:?}: {e}"))?
        .connect_timeout(timeout);
    let tls_on = tls.is_some();
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("cannot set up TLS for {server}: {}", root_cause(&e)))?;
    }
    match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(err)) => {
            let cause = root_cause(&err);
            // What rustls says when the server answers a TLS hello in plaintext HTTP/2.
            let hint = if tls_on && cause.contains("InvalidContentType") {
                "; cgnatd may have no mgmt.tls: try without --tls"
            } else {
                ""
            };
            Err(anyhow!("cannot connect to {server}: {cause}{hint}"))
        }
        Err(_) => Err(anyhow!(
            "cannot connect to {server}: no answer within {}",
            human_timeout(timeout)
        )),
    }
}

/// The innermost error, e.g. "Connection refused (os error 111)"; tonic's own
/// top-level text is just "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn human_timeout(timeout: Duration) -> String {
    if timeout < Duration::from_secs(1) {
        format!("{}ms", timeout.as_millis())
    } else {
        human_duration(timeout)
    }
}

struct Ctx {
    server: String,
    timeout: Duration,
    output: Output,
    tls: bool,
    client_cert: bool,
}

impl Ctx {
    /// Awaits one call under `--timeout`, turning expiry into the gRPC code
    /// a deadline would have produced.
    async fn call<T>(&self, call: impl Future<Output = Result<Response<T>, Status>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.explain(status).into()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no reply from {} within {}",
                self.server,
                human_timeout(self.timeout)
            ))
            .into()),
        }
    }

    /// A status made on this side from a broken connection says only "transport error"; the
    /// cause (a TLS alert, a reset) is what the operator needs, and a hint where the cause
    /// points at a missing option. A refusal at the TLS handshake arrives here rather than at
    /// connect when the server checks the client's certificate after the client has finished
    /// its side of a TLS 1.3 handshake.
    fn explain(&self, status: Status) -> Status {
        let Some(source) = std::error::Error::source(&status) else {
            return status;
        };
        let cause = root_cause(source);
        let hint = if self.tls && !self.client_cert && cause.contains("CertificateRequired") {
            "; cgnatd wants a client certificate: add --cert and --key"
        } else if !self.tls && status.message() == "transport error" {
            "; if cgnatd has mgmt.tls, add --tls"
        } else {
            ""
        };
        Status::new(
            status.code(),
            format!("{}: {cause}{hint}", status.message()),
        )
    }

    /// Renders a view in the chosen format. `stream` selects the streaming
    /// forms: compact one-line JSON and `---`-separated YAML documents.
    fn render<T: Serialize>(
        &self,
        view: &T,
        table: impl FnOnce(&T) -> String,
        stream: bool,
    ) -> Result<String> {
        Ok(match self.output {
            Output::Table => table(view),
            Output::Json if stream => serde_json::to_string(view)? + "\n",
            Output::Json => serde_json::to_string_pretty(view)? + "\n",
            Output::Yaml if stream => format!("---\n{}", serde_yaml::to_string(view)?),
            Output::Yaml => serde_yaml::to_string(view)?,
        })
    }
}

async fn sessions(ctx: &Ctx, mut client: Client, cmd: SessionsCommand) -> Result<()> {
    match cmd {
        SessionsCommand::List { filter, limit } => {
            let filter = Some(filter.filter());
            let mut stream = ctx
                .call(client.list_sessions(v1::ListSessionsRequest {
                    filter,
                    limit: limit.unwrap_or(0),
                }))
                .await?;
            // A large table takes as long as it takes: only opening the stream is bounded.
            let mut views = Vec::new();
            while let Some(s) = stream.message().await? {
                views.push(SessionView::from(&s));
            }
            views.sort_by(|a, b| {
                (&a.protocol, &a.inside, &a.remote).cmp(&(&b.protocol, &b.inside, &b.remote))
            });
            emit(&ctx.render(&views, sessions_table, false)?)?;
            if ctx.output == Output::Table {
                eprintln!("{} session(s)", views.len());
            }
        }
        SessionsCommand::Get(args) => {
            let f = args.filter();
            let s = ctx
                .call(client.get_session(v1::GetSessionRequest {
                    protocol: f.protocol,
                    remote: f.remote,
                    inside: f.inside,
                    outside: f.outside,
                }))
                .await?;
            let views = vec![SessionView::from(&s)];
            match ctx.output {
                Output::Table => emit(&sessions_table(&views))?,
                _ => emit(&ctx.render(&views[0], |_| String::new(), false)?)?,
            }
        }
        SessionsCommand::Delete(args) => {
            let filter = Some(args.filter());
            let reply = ctx
                .call(client.delete_sessions(v1::DeleteSessionsRequest { filter }))
                .await?;
            deleted(ctx, reply.deleted)?;
        }
        SessionsCommand::Watch { filter, snapshot } => {
            let mut stream = ctx
                .call(client.watch_sessions(v1::WatchSessionsRequest {
                    filter: Some(filter.filter()),
                    snapshot,
                }))
                .await?;
            while let Some(e) = stream.message().await? {
                let view = SessionEventView::from(&e);
                emit(&ctx.render(&view, session_event_line, true)?)?;
            }
            // The server ends a watch only when it shuts down (or, with an error the `?` above
            // reports, when a worker stops): a failure for a pipeline that restarts the watch,
            // as for `stats --watch`.
            return Err(Status::unavailable(format!(
                "{} ended the session event stream (daemon shutting down?)",
                ctx.server
            ))
            .into());
        }
        SessionsCommand::Flush => {
            let reply = ctx
                .call(client.flush_sessions(v1::FlushSessionsRequest {}))
                .await?;
            deleted(ctx, reply.deleted)?;
        }
    }
    Ok(())
}

/// How many sessions a delete or flush removed: a line for people, the bare number for scripts.
fn deleted(ctx: &Ctx, n: u64) -> Result<()> {
    emit(&ctx.render(&n, |n| format!("{n} session(s) deleted\n"), false)?)
}

async fn stats(ctx: &Ctx, mut client: Client, args: &StatsArgs) -> Result<()> {
    let opts = StatsTableOptions {
        per_worker: args.per_worker,
        all_drops: args.all,
    };
    if !args.watch {
        let stats = ctx.call(client.get_stats(v1::GetStatsRequest {})).await?;
        let view = StatsView::from(&stats);
        return emit(&ctx.render(&view, |v| stats_table(v, opts, None), false)?);
    }

    let interval = args
        .interval
        .map(prost_types::Duration::try_from)
        .transpose()?;
    // Only opening the stream is bounded by --timeout; updates then arrive
    // for as long as the user watches.
    let mut updates = ctx
        .call(client.watch_stats(v1::WatchStatsRequest { interval }))
        .await?;
    // Redraw in place like watch(1) on a terminal; append when piped so the
    // output stays a log.
    let redraw = ctx.output == Output::Table && std::io::stdout().is_terminal();
    let mut previous: Option<(StatsView, Instant)> = None;
    while let Some(stats) = updates.message().await? {
        let now = Instant::now();
        let view = StatsView::from(&stats);
        let rates = previous
            .as_ref()
            .map(|(prev, at)| Rates::between(prev, &view, now.duration_since(*at)));
        let mut text = ctx.render(&view, |v| stats_table(v, opts, rates.as_ref()), true)?;
        if ctx.output == Output::Table {
            text = if redraw {
                format!("\x1b[H\x1b[2J{text}")
            } else if previous.is_some() {
                format!("\n{text}")
            } else {
                text
            };
        }
        emit(&text)?;
        previous = Some((view, now));
    }
    Err(Status::unavailable(format!(
        "{} ended the stats stream (daemon shutting down?)",
        ctx.server
    ))
    .into())
}

fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_daemon() {
        let cli = Cli::try_parse_from(["cgnatctl", "stats"]).unwrap();
        // The env var could be set in the test environment; only check the
        // default when it is not.
        if std::env::var_os("CGNAT_SERVER").is_none() {
            assert_eq!(cli.server, "127.0.0.1:50051");
            assert_eq!(
                server_uri(&cli.server, false).unwrap(),
                "http://127.0.0.1:50051"
            );
        }
        assert_eq!(cli.output, Output::Table);
        assert_eq!(cli.timeout, Duration::from_secs(5));
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "cgnatctl",
            "stats",
            "--watch",
            "--interval",
            "250ms",
            "--per-worker",
            "-o",
            "json",
            "--server",
            "10.0.0.1:9",
            "--timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.server, "10.0.0.1:9");
        assert_eq!(cli.timeout, Duration::from_secs(2));
        let Command::Stats(args) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert!(args.watch && args.per_worker && !args.all);
        assert_eq!(args.interval, Some(Duration::from_millis(250)));
    }

    #[test]
    fn dnat_takes_the_global_output_flag() {
        let cli = Cli::try_parse_from(["cgnatctl", "dnat", "-o", "yaml"]).unwrap();
        assert!(matches!(cli.command, Command::Dnat));
        assert_eq!(cli.output, Output::Yaml);
    }

    #[test]
    fn interval_needs_watch() {
        assert!(Cli::try_parse_from(["cgnatctl", "stats", "--interval", "2s"]).is_err());
    }

    #[test]
    fn server_may_omit_the_scheme() {
        assert_eq!(
            server_uri("127.0.0.1:50051", false).unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            server_uri("127.0.0.1:50051", true).unwrap(),
            "https://127.0.0.1:50051"
        );
        assert_eq!(
            server_uri("https://nat1:443", true).unwrap(),
            "https://nat1:443"
        );
        let e = server_uri("http://nat1:50051", true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls needs an https://"), "{e}");
    }

    #[test]
    fn tls_options_need_tls_and_a_cert_needs_its_key() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(["cgnatctl"].iter().chain(args).chain(&["info"]));
        let cli = parse(&["--ca", "/ca.pem"]).unwrap();
        let e = tls_wanted(&cli).unwrap_err().to_string();
        assert!(e.contains("need --tls"), "{e}");
        let cli = parse(&["--server", "https://nat1:50051", "--ca", "/ca.pem"]).unwrap();
        assert!(tls_wanted(&cli).unwrap(), "https:// implies TLS");
        assert!(
            parse(&["--tls", "--cert", "/c.pem"]).is_err(),
            "--cert without --key"
        );
        assert!(
            parse(&["--tls", "--key", "/k.pem"]).is_err(),
            "--key without --cert"
        );
        let cli = parse(&[
            "--tls",
            "--cert",
            "/c.pem",
            "--key",
            "/k.pem",
            "--tls-server-name",
            "nat1.example",
        ])
        .unwrap();
        assert!(tls_wanted(&cli).unwrap());
        assert_eq!(cli.tls_server_name.as_deref(), Some("nat1.example"));
        // The files are read before connecting, and a missing one is named.
        let e = format!("{:#}", client_tls(&cli).unwrap_err());
        assert!(e.starts_with("--cert /c.pem: "), "{e}");
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate from it, as PEM files
    /// in a fresh directory.
    struct Pki {
        dir: std::path::PathBuf,
    }

    impl Pki {
        fn new(tag: &str) -> Pki {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let dir = std::env::temp_dir().join(format!("cgnatctl-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
            let issuer = Issuer::new(ca, ca_key);
            for (name, san) in [("server", "127.0.0.1"), ("client", "operator")] {
                let key = KeyPair::generate().unwrap();
                let cert = CertificateParams::new(vec![san.to_owned()])
                    .unwrap()
                    .signed_by(&key, &issuer)
                    .unwrap();
                std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
                std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            }
            Pki { dir }
        }

        fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.join(name)).unwrap()
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// `cgnatctl health` against a health server on TLS that requires a client certificate
    /// from the same CA: the whole client path, options to printed error.
    #[tokio::test]
    async fn health_over_tls_with_a_client_certificate() {
        let pki = Pki::new("tls");
        // The files pass the checks cgnatd runs on mgmt.tls.
        let tls = mgmt::TlsConfig::from_pem(
            pki.read("server.pem"),
            pki.read("server.key"),
            Some(pki.read("ca.pem")),
        )
        .unwrap();
        assert!(tls.requires_client_cert());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(
                    tonic::transport::ServerTlsConfig::new()
                        .identity(tonic::transport::Identity::from_pem(
                            pki.read("server.pem"),
                            pki.read("server.key"),
                        ))
                        .client_ca_root(tonic::transport::Certificate::from_pem(
                            pki.read("ca.pem"),
                        )),
                )
                .unwrap()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let server_arg = addr.to_string();
        let (ca, cert, key) = (
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key"),
        );
        let run_with = |extra: &[&str]| {
            let mut args = vec!["cgnatctl", "--server", &server_arg, "--timeout", "2s"];
            args.extend_from_slice(extra);
            args.push("health");
            run(Cli::try_parse_from(args).unwrap())
        };
        let code = run_with(&["--tls", "--ca", &ca, "--cert", &cert, "--key", &key])
            .await
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        // Without a certificate: the server's alert, and what to do about it.
        let err = run_with(&["--tls", "--ca", &ca]).await.unwrap_err();
        let status = err.downcast_ref::<Status>().expect("a gRPC status");
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable
            ),
            "{status:?}"
        );
        assert!(
            status.message().contains("CertificateRequired")
                && status.message().contains("add --cert and --key"),
            "{status:?}"
        );
        // The certificate names 127.0.0.1, not this.
        let err = run_with(&["--tls", "--ca", &ca, "--tls-server-name", "nat1.example"])
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("cannot connect to https://{addr}: "))
                && text.contains("not valid for name"),
            "{text}"
        );
        // Plaintext to a TLS server: the hint points at --tls.
        let err = run_with(&[]).await.unwrap_err();
        let text = match err.downcast_ref::<Status>() {
            Some(status) => status.message().to_owned(),
            None => format!("{err:#}"),
        };
        assert!(text.contains("add --tls"), "{text}");
        server.abort();
        // TLS to a plaintext server.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = listener.local_addr().unwrap().to_string();
        let (_, health) = tonic_health::server::health_reporter();
        let plain = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let cli = Cli::try_parse_from([
            "cgnatctl",
            "--server",
            &plain_addr,
            "--tls",
            "--ca",
            &ca,
            "health",
        ])
        .unwrap();
        let text = format!("{:#}", run(cli).await.unwrap_err());
        assert!(text.contains("try without --tls"), "{text}");
        plain.abort();
    }

    /// Nothing listens on a port we just released, so this exercises the
    /// real connection-refused path and its message.
    #[tokio::test]
    async fn unreachable_server_is_named_in_the_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let server = format!("http://{addr}");
        let err = connect(&server, None, Duration::from_secs(2))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("cannot connect to {server}: ")),
            "{text}"
        );
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
