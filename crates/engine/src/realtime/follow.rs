//! The follower: one task per running engine picks a transport (through the
//! ladder), keeps it alive, reconnects with full-jitter backoff, and routes
//! what arrives — change events to the host's stream applier, presence,
//! topics, room events and CRDT frames to listeners. It owns the task and
//! the realtime state's connection fields; it reaches the engine only
//! through [`Host`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::events::{ConnState, Connection, ErrorContext, ErrorInfo, Event, Peer};
use crate::protocol::ChangeEvent;
use crate::task::AbortOnDrop;
use crate::transport::{Inbound, Link, Which, LADDER};

use super::ladder::Ladder;
use super::Host;

/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Peers asked to re-announce their presence have this long to answer.
const PRESENCE_GRACE: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

enum End {
    Died(Error),
    Restart,
    Probe,
}

/// The connect–run–back off loop and everything around it, for one host.
#[derive(Clone)]
pub(crate) struct Follower<H>(pub(crate) H);

impl<H: Host> Follower<H> {
    /// Starts following the server in real time (no-op when polling is pinned).
    pub(crate) fn start(&self) {
        let rt = &self.0.realtime();
        if self.0.config().transport == Some(Which::Poll) {
            self.set_connection(ConnState::Open, Which::Poll, 0, None);
            return;
        }
        let me = self.clone();
        let span = me.0.span();
        let task = tokio::spawn(async move { me.follow().await }.instrument(span));
        if let Some(old) = rt.handle.lock().replace(task) {
            old.abort();
        }
    }

    pub(crate) async fn stop(&self) {
        let rt = &self.0.realtime();
        let task = rt.handle.lock().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        *rt.out.lock() = None;
        let transport = rt.status().transport;
        self.set_connection(ConnState::Offline, transport, 0, None);
    }

    /// Reconnects at once with the current token. After an identity flip,
    /// presence is forgotten: it belonged to the previous identity.
    pub(crate) fn restart(&self, flipped: bool) {
        let rt = &self.0.realtime();
        if flipped {
            let had_peers = {
                let mut p = rt.presence.lock();
                p.mine = None;
                !std::mem::take(&mut p.peers).is_empty()
            };
            if had_peers {
                self.0.emit(Event::Presence(Vec::new()));
            }
        }
        if rt.handle.lock().as_ref().is_some_and(|h| !h.is_finished()) {
            rt.restart.notify_one();
        }
    }

    /// A sync round's outcome while polling is the transport: the
    /// connection is as reachable as the last round found the server.
    pub(crate) fn polled(&self, error: Option<&Error>, attempts: u32) {
        let s = self.0.realtime().status();
        if s.transport != Which::Poll || !matches!(s.state, ConnState::Open | ConnState::Backoff) {
            return;
        }
        match error {
            None => self.set_connection(ConnState::Open, Which::Poll, 0, None),
            Some(e) => self.set_connection(ConnState::Backoff, Which::Poll, attempts, Some(e)),
        }
    }

    fn set_connection(&self, state: ConnState, transport: Which, attempts: u32, error: Option<&Error>) {
        let rt = &self.0.realtime();
        let status = {
            let mut s = rt.status.lock();
            let last_error = match error {
                Some(e) => Some(ErrorInfo::from(e)),
                None if state == ConnState::Open => None,
                None => s.last_error.clone(),
            };
            if s.state == state && s.transport == transport && s.attempts == attempts && s.last_error == last_error {
                return;
            }
            *s = Connection { state, transport, attempts, last_error, since: self.0.now_ms(), ignored: 0 };
            drop(s);
            rt.status()
        };
        self.0.emit(Event::Connection(status));
    }

    /// The connect–run–back off loop.
    async fn follow(self) {
        let rt = &self.0.realtime();
        let pinned = self.0.config().transport;
        if pinned == Some(Which::Poll) {
            return;
        }
        let probe_first = self.0.config().probe_interval;
        let (tx, rx) = unbounded_channel::<(u64, ChangeEvent)>();
        let applier = self.clone().apply_stream_loop(rx).instrument(self.0.span());
        // the applier dies with the follower
        let _applier = AbortOnDrop::spawn(applier);
        let mut ladder = Ladder::new(pinned, probe_first);
        let mut backoff = Backoff::new(self.0.config().reconnect_delay, BACKOFF_CAP, self.0.io().clone());
        loop {
            // the best stream this session may use
            let user = self.0.stream_user();
            let top = LADDER.iter().find(|s| user || !s.needs_user()).map_or(Which::Poll, |s| s.which());
            let which = ladder.pick(top);
            if which == Which::Poll {
                self.set_connection(ConnState::Open, Which::Poll, backoff.attempts(), None);
                tokio::select! {
                biased; // one order, so a simulation replays
                    _ = sleep_until(ladder.probe_at) => {}
                    _ = rt.restart.notified() => ladder = Ladder::new(pinned, probe_first),
                }
                continue;
            }
            self.set_connection(ConnState::Connecting, which, backoff.attempts(), None);
            let (out_tx, mut out_rx) = unbounded_channel();
            let mut opened: Option<Instant> = None;
            let probe = ladder.deadline(which, top);
            let end = tokio::select! {
                biased; // one order, so a simulation replays
                e = self.connect_and_run(which, &tx, out_tx, &mut out_rx, &mut opened, &mut ladder) => End::Died(e),
                _ = rt.restart.notified() => End::Restart,
                _ = sleep_until(probe.unwrap_or_else(Instant::now)), if probe.is_some() => End::Probe,
            };
            *rt.out.lock() = None;
            if opened.is_some() {
                self.0.want_pull(); // pull at once and poll until a stream is open again
            }
            let err = match end {
                End::Restart => {
                    ladder = Ladder::new(pinned, probe_first);
                    continue;
                }
                End::Probe => continue,
                End::Died(e) => e,
            };
            let stable = opened.is_some_and(|t| t.elapsed() >= STABLE);
            if stable {
                backoff.reset();
            }
            match &err {
                Error::Http { status: 429, .. } => backoff.penalize(3),
                Error::Http { status: 401, .. } => {
                    self.0.emit(Event::Error { context: ErrorContext::Connection, error: err.clone() })
                }
                _ => {}
            }
            let at_once = ladder.ended(opened.is_some(), stable);
            let delay = if at_once { Duration::ZERO } else { backoff.next_delay() };
            self.set_connection(ConnState::Backoff, which, backoff.attempts(), Some(&err));
            tokio::select! {
                biased; // one order, so a simulation replays
                _ = sleep(delay) => {}
                _ = rt.restart.notified() => ladder = Ladder::new(pinned, probe_first),
            }
        }
    }

    async fn connect_and_run(
        &self,
        which: Which,
        changes: &UnboundedSender<(u64, ChangeEvent)>,
        out_tx: UnboundedSender<String>,
        out_rx: &mut UnboundedReceiver<String>,
        opened: &mut Option<Instant>,
        ladder: &mut Ladder,
    ) -> Error {
        let Some(stream) = which.stream() else {
            return Error::InvalidArg("polling has no connection".into());
        };
        // the connection's number, known once it is open (no frame comes before)
        let connection = AtomicU64::new(0);
        let on_frame = |f: Inbound| self.on_inbound(f, changes, connection.load(Ordering::SeqCst));
        let mut on_open = |out: Option<UnboundedSender<String>>| {
            *opened = Some(Instant::now());
            ladder.opened(which);
            connection.store(self.opened(which, out), Ordering::SeqCst);
        };
        let link = Link {
            cfg: self.0.config(),
            io: &**self.0.io(),
            token: self.0.stream_token(),
            outbound: out_rx,
            sender: out_tx,
            opened: &mut on_open,
            on_frame: &on_frame,
        };
        stream.follow(link).await
    }

    /// A stream opened: re-send what the server forgot, catch up by pulling.
    /// Returns the connection's number (see `Inner::stream_checked`).
    fn opened(&self, which: Which, out: Option<UnboundedSender<String>>) -> u64 {
        let rt = &self.0.realtime();
        // a stream that can send is told what the server forgot
        let duplex = out.is_some();
        *rt.out.lock() = out;
        if duplex {
            let subs: Vec<(String, String)> = rt.crdt.lock().keys().cloned().collect();
            for (entity, row) in subs {
                rt.send(json!({ "type": "crdt-subscribe", "entity": entity, "rowId": row }));
            }
            if rt.uses_presence() {
                rt.announce();
                rt.send(rt.presence_frame("sync", None));
                self.sweep_presence_later(self.0.now_ms());
            }
        }
        // a dropped stream may mean a restarted server: check before the next
        // pull, and take no event of this stream as a page until then
        let connection = rt.opened.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.server_may_have_restarted();
        self.set_connection(ConnState::Open, which, rt.status().attempts, None);
        self.0.want_pull();
        connection
    }

    fn on_inbound(&self, frame: Inbound, changes: &UnboundedSender<(u64, ChangeEvent)>, connection: u64) {
        let rt = &self.0.realtime();
        match frame {
            Inbound::Change(ev) => {
                let _ = changes.send((connection, ev));
            }
            Inbound::Presence { client_id, .. } if client_id.as_deref() == Some(rt.client_id.as_str()) => {}
            Inbound::Presence { event, .. } if event == "sync" => rt.announce(),
            Inbound::Presence { from, client_id, event, data } => {
                let key = client_id.clone().unwrap_or_else(|| format!("user:{}", from.as_deref().unwrap_or("")));
                let changed = {
                    let mut p = rt.presence.lock();
                    if event == "leave" {
                        p.peers.remove(&key).is_some()
                    } else {
                        let peer = Peer { from, client_id, data, seen: self.0.now_ms() };
                        let same = p.peers.get(&key).is_some_and(|old| old.data == peer.data && old.from == peer.from);
                        p.peers.insert(key, peer);
                        !same
                    }
                };
                if changed {
                    self.0.emit(Event::Presence(rt.peers()));
                }
            }
            Inbound::Disconnect { .. } => {
                // someone left, we cannot tell who: those still here re-announce
                rt.announce();
                self.sweep_presence_later(self.0.now_ms());
            }
            Inbound::Topic { topic, from, data } => self.0.emit(Event::Topic { topic, from, data }),
            Inbound::Room(m) => self.0.emit(Event::Room(m)),
            Inbound::Binary(f) => self.0.emit(Event::Binary(f)),
            Inbound::Unknown | Inbound::Malformed => {
                rt.ignored.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops, after the grace period, peers not heard from since `asked_at`.
    fn sweep_presence_later(&self, asked_at: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            sleep(PRESENCE_GRACE).await;
            let rt = &me.0.realtime();
            let removed = {
                let mut p = rt.presence.lock();
                let before = p.peers.len();
                // peers without a client id (other client libraries) cannot answer; keep them
                p.peers.retain(|_, peer| peer.client_id.is_none() || peer.seen >= asked_at);
                before != p.peers.len()
            };
            if removed {
                me.0.emit(Event::Presence(rt.peers()));
            }
        });
    }

    async fn apply_stream_loop(self, mut rx: UnboundedReceiver<(u64, ChangeEvent)>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 1024).await > 0 {
            self.0.apply_stream(std::mem::take(&mut batch)).await;
        }
    }
}
