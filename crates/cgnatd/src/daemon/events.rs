//! NAT events written to the log, one line each, under the `cgnat::event` target.
//!
//! Mapping and port-block events are what lets an operator answer "which subscriber had outside address
//! A, port P at time T" (the reason CGNAT logging exists). Workers hand events over bounded queues
//! (`dataplane::EventQueue`); this side drains them a few times a second. Nothing here can slow a
//! worker down: when the logger falls behind, events wait in the queue and the shard's ring, and beyond
//! those they are dropped and counted (`events_dropped`). Session events are logged too when the shard
//! records them (heavy: one per flow).
//!
//! The line carries the shard's clock (`t`, seconds since the worker started) besides the log
//! timestamp, so events that waited in a queue keep their order and time.

use std::net::Ipv4Addr;

use nat::{Event, EventKind, Limit, MappingInfo, PortSet};
use tracing::info;

fn proto(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{port}", Ipv4Addr::from(addr))
}

fn mapping(m: &MappingInfo) -> String {
    format!(
        "{} {} -> {}",
        proto(m.proto),
        endpoint(m.in_addr, m.in_port),
        endpoint(m.out_addr, m.out_port)
    )
}

fn block(b: &PortSet) -> String {
    let last = b.ports().last().unwrap_or(b.first_port);
    if b.stride <= 1 {
        format!("{} ports {}-{last}", Ipv4Addr::from(b.addr), b.first_port)
    } else {
        format!(
            "{} ports {}-{last} ({} runs of 64, stride {})",
            Ipv4Addr::from(b.addr),
            b.first_port,
            b.runs,
            b.stride
        )
    }
}

/// The event's name and its details as text.
pub fn describe(kind: &EventKind) -> (&'static str, String) {
    match kind {
        EventKind::MappingCreated(m) => ("mapping_created", mapping(m)),
        EventKind::MappingDeleted(m) => ("mapping_deleted", mapping(m)),
        EventKind::SessionCreated(s) | EventKind::SessionDeleted(s) => (
            if matches!(kind, EventKind::SessionCreated(_)) {
                "session_created"
            } else {
                "session_deleted"
            },
            format!(
                "{} remote {}{}",
                mapping(&s.mapping),
                endpoint(s.rem_addr, s.rem_port),
                if s.inbound { " inbound" } else { "" }
            ),
        ),
        EventKind::BlockAllocated {
            subscriber,
            block: b,
        } => (
            "block_allocated",
            format!("{} -> {}", Ipv4Addr::from(*subscriber), block(b)),
        ),
        EventKind::BlockReleased {
            subscriber,
            block: b,
        } => (
            "block_released",
            format!("{} -> {}", Ipv4Addr::from(*subscriber), block(b)),
        ),
        EventKind::QuotaExceeded { subscriber, limit } => (
            "quota_exceeded",
            format!(
                "{} limit {}",
                Ipv4Addr::from(*subscriber),
                match limit {
                    Limit::Sessions => "sessions",
                    Limit::Ports => "ports",
                    Limit::Blocks => "blocks",
                    Limit::DeterministicRange => "deterministic_range",
                }
            ),
        ),
        EventKind::PortsExhausted {
            subscriber,
            out_addr,
            proto: p,
        } => (
            "ports_exhausted",
            format!(
                "{} {} on {}",
                Ipv4Addr::from(*subscriber),
                proto(*p),
                Ipv4Addr::from(*out_addr)
            ),
        ),
    }
}

/// Log one event of `worker`.
pub fn log(worker: usize, e: &Event) {
    let (event, detail) = describe(&e.kind);
    info!(target: "cgnat::event", worker, t = e.time, event, "{detail}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_events_name_both_endpoints() {
        let m = MappingInfo {
            proto: 17,
            in_addr: 0x6440_000b,
            in_port: 5000,
            out_addr: 0xcb00_7102,
            out_port: 40001,
        };
        assert_eq!(
            describe(&EventKind::MappingCreated(m)),
            (
                "mapping_created",
                "udp 100.64.0.11:5000 -> 203.0.113.2:40001".to_owned()
            )
        );
        assert_eq!(describe(&EventKind::MappingDeleted(m)).0, "mapping_deleted");
    }

    #[test]
    fn block_and_limit_events_say_who_and_what() {
        let b = PortSet {
            addr: 0xcb00_7101,
            first_port: 1024,
            runs: 4,
            stride: 1,
        };
        assert_eq!(
            describe(&EventKind::BlockAllocated {
                subscriber: 0x6440_000c,
                block: b
            })
            .1,
            "100.64.0.12 -> 203.0.113.1 ports 1024-1279"
        );
        assert_eq!(
            describe(&EventKind::QuotaExceeded {
                subscriber: 0x6440_000c,
                limit: Limit::Ports
            }),
            ("quota_exceeded", "100.64.0.12 limit ports".to_owned())
        );
    }
}
