//! What an engine counts about itself, for `Engine::diagnostics`: whoever
//! debugs can ask "is it connected, is it caught up, what is pending, why
//! did it fail" without writing a listener first.
//!
//! Owns the counters (atomics, only ever increased, so two readings can be
//! subtracted) and the last few errors. Every part that does the counted
//! thing counts it here; the HTTP counters are the API client's own
//! (`api::Traffic`), read at the moment of the snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::events::{ConnState, ErrorInfo, Event, MutationChange};
use parking_lot::Mutex;

/// How many recent errors are kept.
const LAST_ERRORS: usize = 10;

/// The engine's counters.
#[derive(Default)]
pub(crate) struct Counters {
    events_applied: AtomicU64,
    resyncs: AtomicU64,
    writes_sent: AtomicU64,
    writes_retried: AtomicU64,
    writes_acknowledged: AtomicU64,
    writes_failed: AtomicU64,
    /// Connections opened, by transport name, and the transport of the
    /// first one (every later open is a reconnect).
    opened: Mutex<(BTreeMap<&'static str, u64>, Option<&'static str>)>,
    last_errors: Mutex<VecDeque<LastError>>,
}

/// One error as `diagnostics().lastErrors` keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastError {
    /// Unix ms.
    pub at: u64,
    /// Where it happened (the `error` event's `context`).
    pub context: &'static str,
    pub error: ErrorInfo,
}

impl Counters {
    /// Counts what an event tells of: each is emitted exactly once for the
    /// thing it reports.
    pub(crate) fn saw(&self, ev: &Event, now_ms: u64) {
        match ev {
            Event::Resync { .. } => add(&self.resyncs, 1),
            Event::Mutation { status: MutationChange::Applied, .. } => add(&self.writes_acknowledged, 1),
            Event::Mutation { status: MutationChange::Failed, .. } => add(&self.writes_failed, 1),
            Event::Connection(c) if c.state == ConnState::Open => {
                let mut opened = self.opened.lock();
                *opened.0.entry(c.transport.name()).or_default() += 1;
                opened.1.get_or_insert(c.transport.name());
            }
            Event::Error { context, error } => {
                let mut last = self.last_errors.lock();
                if last.len() == LAST_ERRORS {
                    last.pop_front();
                }
                last.push_back(LastError { at: now_ms, context: context.as_str(), error: error.into() });
            }
            _ => {}
        }
    }

    pub(crate) fn applied(&self, events: usize) {
        add(&self.events_applied, events as u64);
    }

    /// Writes that went out (`retried`: each had gone out before).
    pub(crate) fn sent(&self, writes: usize, retried: usize) {
        add(&self.writes_sent, writes as u64);
        add(&self.writes_retried, retried as u64);
    }

    fn snapshot(&self) -> Counted {
        let (opened, first) = self.opened.lock().clone();
        let connects: BTreeMap<String, u64> = opened.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let reconnects = opened.iter().map(|(k, v)| (k.to_string(), v - u64::from(Some(*k) == first))).collect();
        Counted {
            events_applied: load(&self.events_applied),
            resyncs: load(&self.resyncs),
            writes_sent: load(&self.writes_sent),
            writes_retried: load(&self.writes_retried),
            writes_acknowledged: load(&self.writes_acknowledged),
            writes_failed: load(&self.writes_failed),
            connects,
            reconnects,
            last_errors: self.last_errors.lock().iter().cloned().collect(),
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The engine's own counters at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub events_applied: u64,
    pub resyncs: u64,
    pub writes_sent: u64,
    pub writes_retried: u64,
    pub writes_acknowledged: u64,
    pub writes_failed: u64,
    pub connects: BTreeMap<String, u64>,
    pub reconnects: BTreeMap<String, u64>,
    pub last_errors: Vec<LastError>,
}

/// What `Engine::diagnostics` reports: the counters (monotonic) and the
/// queue as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostics {
    /// HTTP requests made, and those that got no answer.
    pub requests: u64,
    pub request_failures: u64,
    /// Request and response bodies, in bytes (streams not included).
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Time spent waiting for the server's HTTP answers.
    pub server_wait: std::time::Duration,
    pub counted: Counted,
    /// Writes queued and not yet acknowledged, and writes refused.
    pub pending: usize,
    pub failed: usize,
    /// When (Unix ms) the oldest pending write was made.
    pub oldest_pending_at: Option<u64>,
    pub cursor: u64,
}

impl Diagnostics {
    pub(crate) fn new(counters: &Counters, traffic: &crate::api::Traffic) -> Diagnostics {
        let (bytes_sent, bytes_received) = traffic.bytes();
        Diagnostics {
            requests: traffic.requests(),
            request_failures: traffic.failures(),
            bytes_sent,
            bytes_received,
            server_wait: traffic.waited(),
            counted: counters.snapshot(),
            pending: 0,
            failed: 0,
            oldest_pending_at: None,
            cursor: 0,
        }
    }
}

/// Logs what an event reports, at the level it deserves: failures the
/// engine recovers from on its own at `info` (the `error` event tells the
/// application; one nobody listens for is logged at `warn` by the binding),
/// what changes the engine's course at `info`, the rest at `debug`/`trace`.
/// Nothing logged here carries a token: errors never hold one, and a
/// session is logged without its user's id below `debug`.
pub(crate) fn log(ev: &Event) {
    match ev {
        Event::Error { context, error } => {
            tracing::info!(context = context.as_str(), code = error.code(), error = %error, "failed");
        }
        Event::Resync { reason } => tracing::info!(reason = reason.as_str(), "resync: the replica is rebuilt"),
        Event::Session(Some(s)) => {
            tracing::info!(signed_in = s.user_id.is_some(), admin = s.is_admin, "session resolved");
            tracing::debug!(user = ?s.user_id, tenant = ?s.tenant_id, roles = ?s.roles, "session");
        }
        Event::Session(None) => tracing::info!("session unknown"),
        Event::Mutation { status, mutation: m } => {
            let (id, entity, kind) = (m.id.as_str(), m.entity.as_str(), m.kind.as_str());
            match status {
                MutationChange::Applied => tracing::debug!(id, entity, kind, "write acknowledged"),
                MutationChange::Failed => {
                    let e = m.error.as_ref();
                    let code = e.map_or("", |e| e.code.as_str());
                    let message = e.map_or("", |e| e.message.as_str());
                    tracing::info!(id, entity, kind, code, message, "write refused");
                }
                MutationChange::Removed => tracing::debug!(id, entity, kind, "write removed"),
                MutationChange::Pending => tracing::trace!(id, entity, kind, attempts = m.attempts, "write queued"),
            }
        }
        Event::Connection(c) => tracing::info!(
            state = format!("{:?}", c.state).to_lowercase(),
            transport = c.transport.name(),
            attempts = c.attempts,
            error = c.last_error.as_ref().map(|e| e.message.as_str()),
            "connection"
        ),
        Event::Status(s) => tracing::debug!(
            phase = format!("{:?}", s.phase).to_lowercase(),
            attempts = s.attempts,
            pending = s.pending,
            "status"
        ),
        Event::Progress(p) => {
            tracing::debug!(entity = p.entity, rows = p.rows, total = p.total, done = p.done, "bootstrap progress")
        }
        Event::Change { entities } => tracing::trace!(?entities, "change"),
        Event::Presence(_) | Event::Topic { .. } | Event::Room(_) | Event::Binary(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Connection;
    use crate::transport::Which;

    fn open(transport: Which) -> Event {
        Event::Connection(Connection {
            state: ConnState::Open,
            transport,
            attempts: 0,
            last_error: None,
            since: 0,
            ignored: 0,
        })
    }

    #[test]
    fn every_open_after_the_first_is_a_reconnect_on_its_own_transport() {
        let c = Counters::default();
        let ws = Which::named("websocket").unwrap();
        let sse = Which::named("sse").unwrap();
        for ev in [open(ws), open(ws), open(sse), open(ws)] {
            c.saw(&ev, 0);
        }
        let n = c.snapshot();
        assert_eq!(n.connects, [("sse".to_string(), 1), ("websocket".to_string(), 3)].into_iter().collect());
        assert_eq!(n.reconnects, [("sse".to_string(), 1), ("websocket".to_string(), 2)].into_iter().collect());
    }

    #[test]
    fn the_last_ten_errors_are_kept_oldest_first() {
        let c = Counters::default();
        for i in 0..12 {
            c.saw(
                &Event::Error {
                    context: crate::events::ErrorContext::Sync,
                    error: crate::Error::Network(format!("{i}")),
                },
                i,
            );
        }
        let last = c.snapshot().last_errors;
        assert_eq!(last.len(), 10);
        assert_eq!((last[0].at, last[9].at), (2, 11));
        assert_eq!(last[9].error.message, "network error: 11");
    }
}
