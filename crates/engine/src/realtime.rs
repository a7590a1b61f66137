//! Following the server in real time. One task per running engine picks a
//! transport (WebSocket, else SSE, else polling — or the one the user
//! pinned), keeps it alive, reconnects with full-jitter backoff, and routes
//! what arrives: change events to the replica (as hints, see
//! the engine's `apply_stream`), presence, topics, room events and CRDT frames to
//! their own APIs.
//!
//! Presence over the real server has no membership list and its disconnect
//! notices do not say who left, so engines keep it consistent among
//! themselves: every presence frame carries the engine's `clientId`; after a
//! disconnect notice (or our own reconnect) peers are asked to re-announce,
//! and those silent for `PRESENCE_GRACE` are dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::{Config, Transport};
use crate::error::Error;
use crate::events::{ConnState, Connection, ErrorInfo, Event, Peer};
use crate::io::Io;
use crate::protocol::ChangeEvent;
use crate::transport::{self, sse, ws, Inbound, Which};

/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Connections that die (or never open) this many times in a row make the
/// automatic mode step down a transport.
const STEP_DOWN_AFTER: u32 = 3;
/// Failed probes double the wait up to this.
const PROBE_MAX: Duration = Duration::from_secs(600);
/// Peers asked to re-announce their presence have this long to answer.
const PRESENCE_GRACE: Duration = Duration::from_secs(2);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Presence {
    mine: Option<Value>,
    peers: BTreeMap<String, Peer>,
}

pub(crate) struct Realtime {
    pub client_id: String,
    status: Mutex<Connection>,
    /// Frames to send on the open WebSocket.
    out: Mutex<Option<UnboundedSender<String>>>,
    presence: Mutex<Presence>,
    /// Refcounted CRDT subscriptions by (entity, row id).
    crdt: Mutex<BTreeMap<(String, String), u32>>,
    /// Reconnect now (identity flip), without counting an attempt.
    restart: Notify,
    ignored: AtomicU64,
    pub(crate) handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Streams opened so far (see `Inner::stream_checked`).
    pub(crate) opened: AtomicU64,
}

impl Realtime {
    pub fn new(client_id: String, transport: Which, now_ms: u64) -> Realtime {
        Realtime {
            client_id,
            status: Mutex::new(Connection {
                state: ConnState::Offline,
                transport,
                attempts: 0,
                last_error: None,
                since: now_ms,
                ignored: 0,
            }),
            out: Mutex::new(None),
            presence: Mutex::new(Presence::default()),
            crdt: Mutex::new(BTreeMap::new()),
            restart: Notify::new(),
            ignored: AtomicU64::new(0),
            handle: Mutex::new(None),
            opened: AtomicU64::new(0),
        }
    }

    pub fn status(&self) -> Connection {
        let mut s = self.status.lock().clone();
        s.ignored = self.ignored.load(Ordering::Relaxed);
        s
    }

    /// A live stream is delivering changes (polling can slow down).
    pub fn streaming(&self) -> bool {
        let s = self.status.lock();
        s.state == ConnState::Open && s.transport != Which::Poll
    }

    /// Sends on the open WebSocket; false when there is none.
    fn send(&self, frame: Value) -> bool {
        match &*self.out.lock() {
            Some(tx) => tx.send(frame.to_string()).is_ok(),
            None => false,
        }
    }

    fn presence_frame(&self, event: &str, data: Option<&Value>) -> Value {
        let mut f = json!({ "type": "presence", "event": event, "clientId": self.client_id });
        if let Some(d) = data {
            f["data"] = d.clone();
        }
        f
    }

    fn announce(&self) {
        let mine = self.presence.lock().mine.clone();
        if let Some(d) = mine {
            self.send(self.presence_frame("update", Some(&d)));
        }
    }

    pub fn peers(&self) -> Vec<Peer> {
        self.presence.lock().peers.values().cloned().collect()
    }
}

/// Which transport to use next, in automatic mode: step down after repeated
/// failures, probe one step up again later.
struct Ladder {
    pinned: Option<Which>,
    level: Which,
    failures: u32,
    probing: bool,
    probe_at: Instant,
    probe_every: Duration,
    probe_first: Duration,
}

fn up(w: Which) -> Which {
    match w {
        Which::Poll => Which::Sse,
        _ => Which::WebSocket,
    }
}

fn down(w: Which) -> Which {
    match w {
        Which::WebSocket => Which::Sse,
        _ => Which::Poll,
    }
}

impl Ladder {
    fn new(pinned: Option<Which>, probe_first: Duration) -> Ladder {
        Ladder {
            pinned,
            level: Which::WebSocket,
            failures: 0,
            probing: false,
            probe_at: Instant::now(),
            probe_every: probe_first,
            probe_first,
        }
    }

    /// `top`: the best transport possible now (WebSocket needs a user session).
    fn pick(&mut self, top: Which) -> Which {
        if let Some(p) = self.pinned {
            return p;
        }
        self.level = self.level.max(top);
        if self.level > top && Instant::now() >= self.probe_at {
            self.probing = true;
            return up(self.level).max(top);
        }
        self.level
    }

    /// When a connection on a step below `top` should end, to probe a
    /// higher one. A probe that succeeds below `top` keeps probing later.
    fn deadline(&self, which: Which, top: Which) -> Option<Instant> {
        if self.pinned.is_some() || which <= top {
            return None;
        }
        Some(if self.probing { Instant::now() + self.probe_first } else { self.probe_at })
    }

    fn opened(&mut self, which: Which) {
        if self.probing {
            self.probing = false;
            self.level = which;
            self.failures = 0;
            self.probe_every = self.probe_first;
            self.probe_at = Instant::now() + self.probe_every;
        }
    }

    /// Records how a connection ended; true when the next one should be
    /// tried at once (a failed probe, or a step down).
    fn ended(&mut self, opened: bool, stable: bool) -> bool {
        if self.pinned.is_some() {
            return false;
        }
        if self.probing {
            self.probing = false;
            if !opened {
                self.probe_every = (self.probe_every * 2).min(PROBE_MAX.max(self.probe_first));
                self.probe_at = Instant::now() + self.probe_every;
                return true;
            }
        }
        if stable {
            self.failures = 0;
            return false;
        }
        self.failures += 1;
        if self.failures >= STEP_DOWN_AFTER && self.level != Which::Poll {
            self.level = down(self.level);
            self.failures = 0;
            self.probe_at = Instant::now() + self.probe_every;
            return true;
        }
        false
    }
}

enum End {
    Died(Error),
    Restart,
    Probe,
}

/// Aborts the task when dropped (the applier dies with the follower).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the realtime task needs of the engine it serves: a narrow handle,
/// so that this module never reaches into the engine.
pub(crate) trait Host: Clone + Send + Sync + 'static {
    fn realtime(&self) -> &Realtime;
    fn config(&self) -> &Config;
    fn io(&self) -> &Arc<dyn Io>;
    /// The span the engine's own tasks log in.
    fn span(&self) -> tracing::Span;
    fn now_ms(&self) -> u64;
    fn emit(&self, ev: Event);
    /// Asks for a sync round now.
    fn kick(&self);
    /// A stream (re)opened: the server may have restarted meanwhile.
    fn server_may_have_restarted(&self);
    /// The token a stream authenticates with.
    fn stream_token(&self) -> Option<String>;
    /// Whether that token is a user's (a WebSocket needs one: the server
    /// accepts neither anonymous clients nor admin tokens there).
    fn stream_user(&self) -> bool;
    /// Change events as they arrived, each with its connection's number.
    fn apply_stream(&self, events: Vec<(u64, ChangeEvent)>) -> impl Future<Output = ()> + Send;
}

/// The connect–run–back off loop and everything around it, for one host.
#[derive(Clone)]
pub(crate) struct Follower<H>(pub(crate) H);

impl<H: Host> Follower<H> {
    /// Starts following the server in real time (no-op when polling is pinned).
    pub(crate) fn start(&self) {
        let rt = &self.0.realtime();
        if self.0.config().transport == Transport::Poll {
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
        let pinned = match self.0.config().transport {
            Transport::Poll => return,
            Transport::Auto => None,
            Transport::WebSocket => Some(Which::WebSocket),
            Transport::Sse => Some(Which::Sse),
        };
        let probe_first = self.0.config().probe_interval;
        let (tx, rx) = unbounded_channel::<(u64, ChangeEvent)>();
        let applier = self.clone().apply_stream_loop(rx).instrument(self.0.span());
        let _applier = AbortOnDrop(tokio::spawn(applier));
        let mut ladder = Ladder::new(pinned, probe_first);
        let mut backoff = Backoff::new(self.0.config().reconnect_delay, BACKOFF_CAP, self.0.io().clone());
        loop {
            let top = if self.0.stream_user() { Which::WebSocket } else { Which::Sse };
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
                self.0.kick(); // pull at once and poll until a stream is open again
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
                    self.0.emit(Event::Error { context: "connection", error: err.clone() })
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
        let cfg = self.0.config();
        let live = cfg.liveness;
        let token = self.0.stream_token();
        // the connection's number, known once it is open (no frame comes before)
        let connection = AtomicU64::new(0);
        let on_frame = |f: Inbound| self.on_inbound(f, changes, connection.load(Ordering::SeqCst));
        match which {
            Which::WebSocket => {
                let url = match &cfg.ws_url {
                    Some(u) => u.clone(),
                    None => match transport::derive_url(&cfg.base_url, transport::ws_scheme, 1, "/") {
                        Ok(u) => u,
                        Err(e) => return e,
                    },
                };
                let tls = match cfg.ca.as_deref().map(crate::tls::client_config).transpose() {
                    Ok(t) => t,
                    Err(e) => return e,
                };
                let socket = match ws::connect(&**self.0.io(), &url, token.as_deref(), live.ping_timeout, tls).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                *opened = Some(Instant::now());
                ladder.opened(which);
                connection.store(self.opened(which, Some(out_tx)), Ordering::SeqCst);
                ws::run(socket, live, out_rx, &on_frame).await
            }
            Which::Sse => {
                let url = match &cfg.sse_url {
                    Some(u) => u.clone(),
                    None => match transport::derive_url(&cfg.base_url, transport::http_scheme, 2, "/events") {
                        Ok(u) => u,
                        Err(e) => return e,
                    },
                };
                let stream = match self.0.io().event_stream(url, token.clone(), live.ping_timeout).await {
                    Ok(s) => s,
                    Err(e) => return e,
                };
                *opened = Some(Instant::now());
                ladder.opened(which);
                connection.store(self.opened(which, None), Ordering::SeqCst);
                sse::run(stream, live, &on_frame).await
            }
            Which::Poll => Error::InvalidArg("polling has no connection".into()),
        }
    }

    /// A stream opened: re-send what the server forgot, catch up by pulling.
    /// Returns the connection's number (see `Inner::stream_checked`).
    fn opened(&self, which: Which, out: Option<UnboundedSender<String>>) -> u64 {
        let rt = &self.0.realtime();
        *rt.out.lock() = out;
        if which == Which::WebSocket {
            let subs: Vec<(String, String)> = rt.crdt.lock().keys().cloned().collect();
            for (entity, row) in subs {
                rt.send(json!({ "type": "crdt-subscribe", "entity": entity, "rowId": row }));
            }
            rt.announce();
            rt.send(rt.presence_frame("sync", None));
            self.sweep_presence_later(self.0.now_ms());
        }
        // a dropped stream may mean a restarted server: check before the next
        // pull, and take no event of this stream as a page until then
        let connection = rt.opened.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.server_may_have_restarted();
        self.set_connection(ConnState::Open, which, rt.status().attempts, None);
        self.0.kick();
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

/// What the engine's public API offers of real time (besides `status`,
/// `peers` and `client_id`).
impl Realtime {
    /// Sets (or with `None` withdraws) this engine's presence. It is sent now
    /// when a WebSocket is open, and again after every reconnect.
    pub fn set_presence(&self, data: Option<Value>) {
        let previous = std::mem::replace(&mut self.presence.lock().mine, data.clone());
        match data {
            Some(d) => {
                self.send(self.presence_frame("update", Some(&d)));
            }
            None if previous.is_some() => {
                self.send(self.presence_frame("leave", None));
            }
            None => {}
        }
    }

    /// Publishes to a topic over the open WebSocket; false when none is open
    /// (topic messages are not queued: they are about now).
    pub fn publish_topic(&self, topic: &str, data: Value) -> bool {
        self.send(json!({ "type": "topic", "topic": topic, "data": data }))
    }

    /// Refcounted: the first subscriber sends `crdt-subscribe`, and it is
    /// re-sent after every reconnect.
    pub fn subscribe_crdt(&self, entity: &str, row_id: &str) {
        let rt = self;
        let first = {
            let mut subs = rt.crdt.lock();
            let n = subs.entry((entity.to_string(), row_id.to_string())).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            rt.send(json!({ "type": "crdt-subscribe", "entity": entity, "rowId": row_id }));
        }
    }

    /// The last unsubscriber sends `crdt-unsubscribe`; extra calls are no-ops.
    pub fn unsubscribe_crdt(&self, entity: &str, row_id: &str) {
        let rt = self;
        let last = {
            let mut subs = rt.crdt.lock();
            let key = (entity.to_string(), row_id.to_string());
            match subs.get_mut(&key) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    subs.remove(&key);
                    true
                }
                None => false,
            }
        };
        if last {
            rt.send(json!({ "type": "crdt-unsubscribe", "entity": entity, "rowId": row_id }));
        }
    }

    /// Active CRDT subscriptions with their counts.
    pub fn crdt_subscriptions(&self) -> Vec<(String, String, u32)> {
        self.crdt.lock().iter().map(|((e, r), n)| (e.clone(), r.clone(), *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn the_ladder_steps_down_after_repeated_deaths_and_probes_back_up() {
        let mut l = Ladder::new(None, MINUTE);
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        // two quick deaths stay; the third steps down, to be tried at once
        assert!(!l.ended(true, false));
        assert!(!l.ended(false, false));
        assert!(l.ended(false, false));
        assert_eq!(l.pick(Which::WebSocket), Which::Sse);
        // a connection below the top ends when it is time to probe
        assert_eq!(l.deadline(Which::Sse, Which::WebSocket), Some(Instant::now() + MINUTE));
        tokio::time::advance(MINUTE).await;
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket, "the probe");
        // a probe that fails goes back down at once, and waits twice as long
        assert!(l.ended(false, false));
        assert_eq!(l.pick(Which::WebSocket), Which::Sse);
        assert_eq!(l.deadline(Which::Sse, Which::WebSocket), Some(Instant::now() + 2 * MINUTE));
        // a probe that opens climbs back, and the wait starts over
        tokio::time::advance(2 * MINUTE).await;
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        l.opened(Which::WebSocket);
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        assert_eq!(l.deadline(Which::WebSocket, Which::WebSocket), None);
        assert_eq!(l.probe_every, MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_forgets_earlier_deaths() {
        let mut l = Ladder::new(None, MINUTE);
        l.pick(Which::WebSocket);
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, true), "stable");
        assert!(!l.ended(true, false));
        assert!(!l.ended(true, false));
        assert_eq!(l.pick(Which::WebSocket), Which::WebSocket);
        // the bottom step has nowhere to go
        let mut bottom = Ladder::new(None, MINUTE);
        bottom.level = Which::Poll;
        for _ in 0..2 * STEP_DOWN_AFTER {
            assert!(!bottom.ended(false, false));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_user_session_the_top_is_sse_and_a_pinned_transport_never_moves() {
        let mut l = Ladder::new(None, MINUTE);
        assert_eq!(l.pick(Which::Sse), Which::Sse);
        assert_eq!(l.deadline(Which::Sse, Which::Sse), None);
        let mut pinned = Ladder::new(Some(Which::WebSocket), MINUTE);
        for _ in 0..2 * STEP_DOWN_AFTER {
            assert_eq!(pinned.pick(Which::WebSocket), Which::WebSocket);
            assert!(!pinned.ended(false, false));
        }
        assert_eq!(pinned.deadline(Which::WebSocket, Which::Sse), None);
    }
}
