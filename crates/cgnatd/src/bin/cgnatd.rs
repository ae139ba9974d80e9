//! cgnatd: the carrier-grade NAT daemon.
//!
//! A thin binary: parse the command line, then hand over to [`daemon::run`], which loads the config,
//! starts DPDK, launches one worker per configured lcore and serves the management API until SIGINT or
//! SIGTERM. The translation policy changes live (management API, or SIGHUP for the file's); the rest
//! of the configuration needs a restart. Limitations: one inside and one outside port.
#![forbid(unsafe_code)]

#[path = "../daemon/mod.rs"]
mod daemon;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

/// Carrier-grade NAT on DPDK: NAPT for TCP, UDP and ICMP from inside subscribers to outside pools.
///
/// The YAML config (see docs/CONFIG.md) names the DPDK ports by PCI address (`pci: 0000:03:00.0`, for
/// NICs bound to vfio-pci) or by vdev string (`vdev: net_af_packet0,iface=eth1`), their inside/outside
/// roles, interface addresses, gateways and static routes, the address pools and SNAT rules, session
/// limits and timeouts, and the EAL options: lcores (`eal.lcores: "0-1"`, the first one runs the
/// control plane, the others run workers), memory (`eal.memory.hugepages: true`, or `false` for
/// `--no-huge -m size_mb`), `eal.file_prefix`, and `eal.extra_args` passed to DPDK verbatim.
#[derive(Debug, Parser)]
#[command(name = "cgnatd", version, about, long_about)]
struct Cli {
    /// YAML configuration file to run with.
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present = "check_config"
    )]
    config: Option<PathBuf>,

    /// Validate FILE (syntax, types, every rule) without starting DPDK, print a summary and exit:
    /// 0 when valid, 2 with the offending field named when not.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,

    /// Log format; overrides `logging.format` of the config.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,

    /// Log filter (e.g. `info`, `debug,mgmt=trace`); overrides `logging.level` of the config.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// DPDK runtime file prefix; overrides `eal.file_prefix` (run several instances side by side).
    #[arg(long, value_name = "PREFIX")]
    file_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        return daemon::check_config(&path);
    }
    let Some(path) = cli.config else {
        eprintln!("cgnatd: --config FILE is required");
        return ExitCode::from(2);
    };
    let overrides = daemon::Overrides {
        log_json: cli.log_format.map(|f| matches!(f, LogFormatArg::Json)),
        log_level: cli.log_level,
        file_prefix: cli.file_prefix,
    };
    match daemon::run(&path, overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The subscriber may not be up yet (config errors), so always say it on stderr too.
            eprintln!("cgnatd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
