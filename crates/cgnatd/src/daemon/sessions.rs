//! Session queries from the management API to the workers, and their answers back.
//!
//! Each worker has a command queue and a reply queue (`dataplane::Control`). A query gets an id, is
//! put on every worker's command queue, and a dispatcher task on the control plane drains the reply
//! queues, routing each record to its query's stream and counting the workers that are done. The
//! dispatcher drains even the replies of queries whose client went away, so a worker never waits on a
//! reader that is gone; a slow reader holds up the dispatcher, and through it only the listing work of
//! the workers (they pause their walk while their reply queue is full), never their forwarding.
//!
//! A worker that has stopped (see [`super::workers`]) answers nothing more: a query started then
//! is refused, and one under way ends with the error once the worker's last replies are routed,
//! so no client waits forever or takes a partial listing for a whole one.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::{Command, Control, Reply};
use mgmt::{BackendError, SessionQuery, SessionSnapshot, SessionState};
use nat::{CtState, SessionFilter, SessionRecord, tcp_state};
use tokio::sync::{mpsc, oneshot};

use super::workers::WorkerStatus;

/// Commands queued per worker; a query takes one slot on each worker.
pub const COMMAND_QUEUE: usize = 16;
/// Records a worker may have waiting for the dispatcher.
pub const REPLY_QUEUE: usize = 4096;
/// Records buffered towards one listing's gRPC stream.
const STREAM_BUFFER: usize = 1024;

type ListSender = mpsc::Sender<Result<SessionSnapshot, BackendError>>;

enum Waiting {
    List(Option<ListSender>),
    Delete(Option<oneshot::Sender<Result<u64, BackendError>>>),
}

struct Pending {
    /// Per worker: it has not sent `Done` yet.
    waiting_on: Vec<bool>,
    /// Workers that have not sent `Done` yet.
    remaining: usize,
    count: u64,
    waiting: Waiting,
}

pub struct SessionBroker {
    controls: Vec<Arc<Control>>,
    status: Arc<WorkerStatus>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
}

fn filter_of(q: &SessionQuery) -> SessionFilter {
    let addr = |e: Option<mgmt::EndpointFilter>| e.map(|(ip, _)| u32::from(ip));
    let port = |e: Option<mgmt::EndpointFilter>| e.and_then(|(_, p)| p);
    SessionFilter {
        proto: q.proto,
        inside_addr: addr(q.inside),
        inside_port: port(q.inside),
        outside_addr: addr(q.outside),
        outside_port: port(q.outside),
        remote_addr: addr(q.remote),
        remote_port: port(q.remote),
        state: q.state.map(|s| match s {
            SessionState::New => CtState::New,
            SessionState::Established => CtState::Established,
        }),
        snat_rule: q.snat_rule,
    }
}

/// The TCP state as `conntrack` users expect to read it.
fn tcp_state_name(state: u8) -> &'static str {
    use tcp_state::*;
    if state & RST != 0 {
        return "reset";
    }
    let fins = state & (FIN_IN | FIN_OUT);
    if fins == FIN_IN | FIN_OUT {
        return "closing";
    }
    if fins != 0 {
        return "fin_wait";
    }
    match state & PHASE_MASK {
        SYN_SENT => "syn_sent",
        SYN_RCVD => "syn_received",
        _ => "established",
    }
}

pub fn snapshot(worker: usize, r: &SessionRecord) -> SessionSnapshot {
    let s = &r.session;
    let ep = |a: u32, p: u16| SocketAddrV4::new(Ipv4Addr::from(a), p);
    SessionSnapshot {
        worker: worker as u32,
        proto: s.proto,
        inside: ep(s.in_addr, s.in_port),
        outside: ep(s.out_addr, s.out_port),
        remote: ep(s.rem_addr, s.rem_port),
        state: match s.ct_state() {
            CtState::New => SessionState::New,
            CtState::Established => SessionState::Established,
        },
        tcp_state: if s.proto == 6 {
            tcp_state_name(s.state)
        } else {
            ""
        },
        inbound: s.is_inbound(),
        hairpin: s.is_hairpin(),
        idle: Duration::from_secs(u64::from(r.idle)),
        expires_in: Duration::from_secs(u64::from(r.timeout.saturating_sub(r.idle))),
    }
}

impl SessionBroker {
    pub fn new(controls: Vec<Arc<Control>>, status: Arc<WorkerStatus>) -> SessionBroker {
        SessionBroker {
            controls,
            status,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    fn start(
        &self,
        make: impl FnOnce(u64) -> Command,
        waiting: Waiting,
    ) -> Result<(), BackendError> {
        // A stopped worker would never answer.
        if let Some(e) = self.status.first_error() {
            return Err(e);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cmd = make(id);
        // Room on every worker first, so a query is never half-started.
        if self.controls.iter().any(|c| c.commands.is_full()) {
            return Err(BackendError::Busy);
        }
        if let Ok(mut p) = self.pending.lock() {
            p.insert(
                id,
                Pending {
                    waiting_on: vec![true; self.controls.len()],
                    remaining: self.controls.len(),
                    count: 0,
                    waiting,
                },
            );
        }
        for c in &self.controls {
            // Only this thread pushes, and every queue had room.
            let _ = c.commands.push(cmd);
        }
        Ok(())
    }

    pub fn list(&self, q: &SessionQuery) -> Result<mgmt::SessionListing, BackendError> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let filter = filter_of(q);
        self.start(|id| Command::List { id, filter }, Waiting::List(Some(tx)))?;
        Ok(rx)
    }

    pub fn delete(&self, q: &SessionQuery) -> Result<mgmt::SessionDeletion, BackendError> {
        self.delete_matching(filter_of(q))
    }

    /// Delete the sessions matching `filter` on every worker (the daemon's own cuts).
    pub fn delete_matching(
        &self,
        filter: nat::SessionFilter,
    ) -> Result<mgmt::SessionDeletion, BackendError> {
        let (tx, rx) = oneshot::channel();
        self.start(
            |id| Command::Delete { id, filter },
            Waiting::Delete(Some(tx)),
        )?;
        Ok(rx)
    }

    fn sender_for(&self, id: u64) -> Option<ListSender> {
        let p = self.pending.lock().ok()?;
        match &p.get(&id)?.waiting {
            Waiting::List(tx) => tx.clone(),
            Waiting::Delete(_) => None,
        }
    }

    fn done(&self, worker: usize, id: u64, count: u64) {
        let Ok(mut map) = self.pending.lock() else {
            return;
        };
        let Some(p) = map.get_mut(&id) else {
            return;
        };
        if let Some(w) = p.waiting_on.get_mut(worker)
            && *w
        {
            *w = false;
            p.remaining = p.remaining.saturating_sub(1);
        }
        p.count += count;
        if p.remaining == 0
            && let Some(mut p) = map.remove(&id)
            && let Waiting::Delete(tx) = &mut p.waiting
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(Ok(p.count));
        }
        // A finished listing drops its sender here, which ends the client's stream.
    }

    /// End every query still waiting for a worker that has stopped, with the error naming it (a
    /// deletion also says how many sessions the other workers deleted). Called once the replies
    /// that worker sent before it stopped have been routed.
    async fn fail_stopped(&self, stopped: &[usize]) {
        let failed: Vec<(Pending, BackendError)> = {
            let Ok(mut map) = self.pending.lock() else {
                return;
            };
            let cut: Vec<(u64, BackendError)> = map
                .iter()
                .filter_map(|(id, p)| {
                    let w = *stopped
                        .iter()
                        .find(|&&w| p.waiting_on.get(w).copied().unwrap_or(false))?;
                    Some((*id, self.status.error(w)?))
                })
                .collect();
            cut.into_iter()
                .filter_map(|(id, e)| Some((map.remove(&id)?, e)))
                .collect()
        };
        for (p, e) in failed {
            match p.waiting {
                Waiting::List(Some(tx)) => {
                    let _ = tx.send(Err(e)).await;
                }
                Waiting::Delete(Some(tx)) => {
                    let e = match e {
                        BackendError::WorkerFailed { worker, lcore, why } => {
                            BackendError::DeletionCut {
                                deleted: p.count,
                                worker,
                                lcore,
                                why,
                            }
                        }
                        other => other,
                    };
                    let _ = tx.send(Err(e));
                }
                Waiting::List(None) | Waiting::Delete(None) => {}
            }
        }
    }

    fn client_gone(&self, id: u64) {
        if let Ok(mut map) = self.pending.lock()
            && let Some(p) = map.get_mut(&id)
        {
            p.waiting = Waiting::List(None);
        }
    }

    /// Drain the reply queues forever (the control plane's task).
    pub async fn run(self: Arc<Self>) {
        loop {
            let busy = self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false);
            // Quick while queries run, lazy when idle.
            tokio::time::sleep(Duration::from_millis(if busy { 1 } else { 20 })).await;
            // Read before the replies are drained: a worker seen stopped here sent its last
            // reply before, so once they are routed nothing more will come from it.
            let stopped: Vec<usize> = (0..self.controls.len())
                .filter(|&w| self.status.is_failed(w))
                .collect();
            for (w, ctl) in self.controls.iter().enumerate() {
                while let Some(r) = ctl.replies.pop() {
                    match r {
                        Reply::Session { id, record } => {
                            if let Some(tx) = self.sender_for(id)
                                && tx.send(Ok(snapshot(w, &record))).await.is_err()
                            {
                                self.client_gone(id);
                            }
                        }
                        Reply::Done { id, count } => self.done(w, id, count),
                    }
                }
            }
            if busy && !stopped.is_empty() {
                self.fail_stopped(&stopped).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_read_like_conntrack() {
        use tcp_state::*;
        assert_eq!(tcp_state_name(SYN_SENT), "syn_sent");
        assert_eq!(tcp_state_name(SYN_RCVD), "syn_received");
        assert_eq!(tcp_state_name(ESTABLISHED), "established");
        assert_eq!(tcp_state_name(ESTABLISHED | FIN_IN), "fin_wait");
        assert_eq!(tcp_state_name(ESTABLISHED | FIN_IN | FIN_OUT), "closing");
        assert_eq!(tcp_state_name(ESTABLISHED | RST), "reset");
        assert_eq!(tcp_state_name(ESTABLISHED | nat::INBOUND), "established");
    }

    #[test]
    fn queries_become_worker_filters() {
        let q = SessionQuery {
            proto: Some(17),
            inside: Some((Ipv4Addr::new(100, 64, 0, 11), Some(5000))),
            outside: Some((Ipv4Addr::new(203, 0, 113, 2), None)),
            remote: None,
            state: Some(SessionState::Established),
            snat_rule: Some(2),
        };
        let f = filter_of(&q);
        assert_eq!(f.snat_rule, Some(2));
        assert_eq!(f.proto, Some(17));
        assert_eq!(
            (f.inside_addr, f.inside_port),
            (Some(0x6440_000b), Some(5000))
        );
        assert_eq!((f.outside_addr, f.outside_port), (Some(0xcb00_7102), None));
        assert_eq!((f.remote_addr, f.remote_port), (None, None));
        assert_eq!(f.state, Some(CtState::Established));
    }

    #[tokio::test]
    async fn a_query_goes_to_every_worker_and_ends_when_all_are_done() {
        let controls: Vec<_> = (0..2)
            .map(|_| Arc::new(Control::new(COMMAND_QUEUE, REPLY_QUEUE)))
            .collect();
        let broker = Arc::new(SessionBroker::new(controls.clone(), running(2)));
        let mut rx = broker.list(&SessionQuery::default()).unwrap();
        let deleting = broker
            .delete(&SessionQuery {
                proto: Some(6),
                ..Default::default()
            })
            .unwrap();
        tokio::spawn(broker.clone().run());
        // Play both workers: each answers the listing with one session, the deletion with a count.
        for (w, c) in controls.iter().enumerate() {
            let Some(Command::List { id, .. }) = c.commands.pop() else {
                panic!("listing not queued on worker {w}");
            };
            let session = nat::Session {
                proto: 17,
                in_addr: 0x6440_000b,
                in_port: 5000 + w as u16,
                ..Default::default()
            };
            let record = SessionRecord {
                session,
                idle: 2,
                timeout: 300,
            };
            c.replies.push(Reply::Session { id, record }).unwrap();
            c.replies.push(Reply::Done { id, count: 1 }).unwrap();
            let Some(Command::Delete { id, filter }) = c.commands.pop() else {
                panic!("deletion not queued on worker {w}");
            };
            assert_eq!(filter.proto, Some(6));
            c.replies.push(Reply::Done { id, count: 3 }).unwrap();
        }
        let mut got = Vec::new();
        while let Some(s) = rx.recv().await {
            got.push(s.unwrap());
        }
        got.sort_by_key(|s| s.worker);
        assert_eq!(got.len(), 2, "the stream ends once both workers are done");
        assert_eq!(got[1].inside.to_string(), "100.64.0.11:5001");
        assert_eq!(got[0].expires_in, Duration::from_secs(298));
        assert_eq!(deleting.await.unwrap(), Ok(6));
    }

    fn running(n: u32) -> Arc<WorkerStatus> {
        Arc::new(WorkerStatus::new(1..=n))
    }

    fn one_session(id: u64, port: u16) -> Reply {
        let session = nat::Session {
            proto: 17,
            in_port: port,
            ..Default::default()
        };
        Reply::Session {
            id,
            record: SessionRecord {
                session,
                idle: 0,
                timeout: 30,
            },
        }
    }

    fn done(id: u64, count: u64) -> Reply {
        Reply::Done { id, count }
    }

    /// Worker 1 stops (panics) in the middle of a listing and of a deletion: what it sent before
    /// still arrives, then both end with the error naming it instead of waiting forever; new
    /// queries are refused at once.
    #[tokio::test]
    async fn a_worker_that_stops_ends_its_queries_with_the_reason() {
        let controls: Vec<_> = (0..2)
            .map(|_| Arc::new(Control::new(COMMAND_QUEUE, REPLY_QUEUE)))
            .collect();
        let status = running(2);
        let broker = Arc::new(SessionBroker::new(controls.clone(), status.clone()));
        let mut rx = broker.list(&SessionQuery::default()).unwrap();
        let deleting = broker.delete(&SessionQuery::default()).unwrap();
        let mut finished = broker.list(&SessionQuery::default()).unwrap();
        tokio::spawn(broker.clone().run());
        let ids: Vec<u64> = (0..3)
            .map(|_| match controls[0].commands.pop() {
                Some(Command::List { id, .. } | Command::Delete { id, .. }) => id,
                _ => panic!("query not queued"),
            })
            .collect();
        // The third query worker 1 answered in full before it stopped; worker 0 answers later.
        controls[1].replies.push(one_session(ids[2], 7)).unwrap();
        controls[1].replies.push(done(ids[2], 1)).unwrap();
        // Worker 0 finishes both; worker 1 sends one session of the listing, then stops.
        controls[0].replies.push(one_session(ids[0], 1)).unwrap();
        controls[0].replies.push(done(ids[0], 1)).unwrap();
        controls[0].replies.push(done(ids[1], 4)).unwrap();
        controls[1].replies.push(one_session(ids[0], 2)).unwrap();
        assert!(status.mark_failed(1, "panicked".into()));
        let mut got = Vec::new();
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Ok(s))) => got.push(s.inside.port()),
                Ok(Some(Err(e))) => break e,
                Ok(None) => panic!("the listing ended as if complete: {got:?}"),
                Err(_) => panic!("the listing still waits for the stopped worker"),
            }
        };
        got.sort();
        assert_eq!(got, vec![1, 2], "every session sent before the stop");
        let stopped = BackendError::WorkerFailed {
            worker: 1,
            lcore: 2,
            why: "panicked".into(),
        };
        assert_eq!(end, stopped);
        assert!(rx.recv().await.is_none(), "nothing after the error");
        assert_eq!(
            deleting.await.unwrap(),
            Err(BackendError::DeletionCut {
                deleted: 4,
                worker: 1,
                lcore: 2,
                why: "panicked".into()
            }),
            "what worker 0 deleted is reported"
        );
        // The query the stopped worker had finished is not failed: it ends normally once
        // worker 0 is done too.
        assert_eq!(
            finished.recv().await.unwrap().unwrap().inside.port(),
            7,
            "what worker 1 sent before it stopped"
        );
        controls[0].replies.push(done(ids[2], 0)).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), finished.recv())
                .await
                .expect("the finished query completes")
                .is_none(),
            "and ends cleanly"
        );
        assert_eq!(broker.list(&SessionQuery::default()).unwrap_err(), stopped);
        assert!(
            controls[0].commands.is_empty(),
            "a refused query is not queued on the running worker either"
        );
    }

    #[test]
    fn a_full_worker_queue_refuses_the_whole_query() {
        let controls = vec![
            Arc::new(Control::new(1, REPLY_QUEUE)),
            Arc::new(Control::new(1, REPLY_QUEUE)),
        ];
        let broker = SessionBroker::new(controls.clone(), running(2));
        broker.list(&SessionQuery::default()).unwrap();
        assert_eq!(
            broker.list(&SessionQuery::default()).unwrap_err(),
            BackendError::Busy
        );
        assert!(
            controls.iter().all(|c| c.commands.len() == 1),
            "nothing half-queued"
        );
    }
}
