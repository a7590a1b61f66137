//! Following the server in real time: the state shared by the follower task
//! (`follow`) and the engine's API (connection status, presence, CRDT
//! subscriptions, the open socket's sender), and [`Host`], the narrow handle
//! through which the follower reaches the engine. The transport ladder is in
//! `ladder`. Each lock here guards one field and is held only to read or
//! swap it.
//!
//! Presence over the real server has no membership list and its disconnect
//! notices do not say who left, so engines keep it consistent among
//! themselves: every presence frame carries the engine's `clientId`; after a
//! disconnect notice (or our own reconnect) peers are asked to re-announce,
//! and those silent for `PRESENCE_GRACE` are dropped.

mod follow;
mod ladder;

pub(crate) use follow::Follower;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;

use crate::config::Config;
use crate::events::{ConnState, Connection, Event, Peer};
use crate::io::Io;
use crate::protocol::ChangeEvent;
use crate::transport::Which;

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
    /// The application uses presence (it set its own, or read or listens for
    /// others'): only then are peers asked to re-announce when we connect.
    /// The real server relays each such request to every connection, and
    /// slowly (its broadcaster waits for each reader's lock in turn), so
    /// dozens of engines asking at once held change events back by 20 s.
    uses_presence: AtomicBool,
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
            uses_presence: AtomicBool::new(false),
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

    /// The application uses presence: peers are asked to re-announce now
    /// (the first time, on an open WebSocket) and after each reconnect.
    pub fn use_presence(&self) {
        if !self.uses_presence.swap(true, Ordering::SeqCst) {
            self.send(self.presence_frame("sync", None));
        }
    }

    pub fn uses_presence(&self) -> bool {
        self.uses_presence.load(Ordering::SeqCst)
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
    /// Asks for a pull now (not a whole round: no queued write waits on it).
    fn want_pull(&self);
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

/// What the engine's public API offers of real time (besides `status`,
/// `peers` and `client_id`).
impl Realtime {
    /// Sets (or with `None` withdraws) this engine's presence. It is sent now
    /// when a WebSocket is open, and again after every reconnect.
    pub fn set_presence(&self, data: Option<Value>) {
        self.use_presence();
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
