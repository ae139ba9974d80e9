//! NAT events: session events to the API's watchers, the others written to the log, one line
//! each, under the `cgnat::event` target.
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

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dataplane::Control;
use mgmt::{SessionChange, SessionEventSnapshot};
use nat::{Event, EventKind, Limit, MappingInfo, PortSet, SessionInfo};
use tokio::sync::broadcast;
use tracing::info;

/// Where each event goes: session events to the API's watchers (`WatchSessions`), the rest to the
/// log when `logging.nat_events` is on. It also tells the workers whether anyone watches, so that
/// they record session events (one per flow: heavy) only then.
pub struct EventRouter {
    pub log: bool,
    pub watchers: broadcast::Sender<SessionEventSnapshot>,
    pub controls: Vec<Arc<Control>>,
}

fn session_event(worker: usize, change: SessionChange, s: &SessionInfo) -> SessionEventSnapshot {
    let ep = |a: u32, p: u16| SocketAddrV4::new(Ipv4Addr::from(a), p);
    let m = &s.mapping;
    SessionEventSnapshot {
        change,
        worker: worker as u32,
        proto: m.proto,
        inside: ep(m.in_addr, m.in_port),
        outside: ep(m.out_addr, m.out_port),
        remote: ep(s.rem_addr, s.rem_port),
        inbound: s.inbound,
    }
}

impl EventRouter {
    pub fn route(&self, worker: usize, e: &Event) {
        match &e.kind {
            EventKind::SessionCreated(s) => {
                // No receiver: nobody watches any more; the workers stop at the next update.
                let _ = self
                    .watchers
                    .send(session_event(worker, SessionChange::Created, s));
            }
            EventKind::SessionDeleted(s) => {
                let _ = self
                    .watchers
                    .send(session_event(worker, SessionChange::Deleted, s));
            }
            _ if self.log => log(worker, e),
            _ => {}
        }
    }

    /// Workers record session events while at least one watcher is connected.
    pub fn update_watching(&self) -> bool {
        let on = self.watchers.receiver_count() > 0;
        for c in &self.controls {
            c.session_events.store(on, Ordering::Relaxed);
        }
        on
    }
}

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
    fn session_events_reach_watchers_and_workers_record_them_only_while_watched() {
        let controls = vec![Arc::new(Control::new(1, 2)), Arc::new(Control::new(1, 2))];
        let router = EventRouter {
            log: false,
            watchers: broadcast::channel(16).0,
            controls: controls.clone(),
        };
        assert!(!router.update_watching());
        let mut rx = router.watchers.subscribe();
        assert!(router.update_watching());
        assert!(
            controls
                .iter()
                .all(|c| c.session_events.load(Ordering::Relaxed))
        );
        let s = SessionInfo {
            mapping: MappingInfo {
                proto: 6,
                in_addr: 0x6440_000b,
                in_port: 40000,
                out_addr: 0xcb00_7102,
                out_port: 50000,
            },
            rem_addr: 0xc633_640a,
            rem_port: 80,
            inbound: false,
        };
        router.route(
            1,
            &Event {
                time: 5,
                kind: EventKind::SessionCreated(s),
            },
        );
        router.route(
            1,
            &Event {
                time: 5,
                kind: EventKind::MappingCreated(s.mapping),
            },
        );
        router.route(
            0,
            &Event {
                time: 9,
                kind: EventKind::SessionDeleted(s),
            },
        );
        let a = rx.try_recv().unwrap();
        assert_eq!(a.change, SessionChange::Created);
        assert_eq!(
            (a.worker, a.inside.to_string(), a.remote.to_string()),
            (1, "100.64.0.11:40000".into(), "198.51.100.10:80".into())
        );
        assert_eq!(
            rx.try_recv().unwrap().change,
            SessionChange::Deleted,
            "mapping events are not session events"
        );
        drop(rx);
        assert!(!router.update_watching());
        assert!(
            controls
                .iter()
                .all(|c| !c.session_events.load(Ordering::Relaxed))
        );
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
