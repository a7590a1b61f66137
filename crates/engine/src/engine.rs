//! The engine: owns the replica, the database and the queue, and runs the
//! sync loop (session check → send queued writes → pull) on tokio.
//!
//! Locking: `db` serialises every durable change (held across the SQLite
//! transaction); `state` guards the in-memory view and is only held briefly,
//! so readers on the JS thread are never blocked by disk or network. Every
//! change is written to SQLite first and applied to memory after the commit.
//! `sync` serialises the network-facing work (session flips, sending writes,
//! pulling), so a write's answer is always handled before later server
//! changes are applied. The epoch (the replica generation) moves under the
//! `state` lock together with the rows and cursor it invalidates (flip,
//! reset, a snapshot that moves the cursor), and work reads it with the
//! cursor it planned from: `stop()` may drop a round mid-way and release
//! `sync` while its database work still runs, and the epoch is what refuses
//! that work's stale plan.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::api::{check_entity, check_id, Api, BatchWrite};
use crate::backoff::Backoff;
use crate::db::{Db, Stored, Writer};
use crate::error::{Error, Result};
use crate::io::{random_suffix, Io, Net};
use crate::protocol::{ChangeEvent, Cursor, Hydration, Kind, PullPage, Row, Session};
use crate::queue::{Mutation, MutationError, Queue, Sent, Status};
use crate::realtime::{Connection, Peer, Realtime};
use crate::reconcile::{self, Found};
use crate::replica::{BaseRow, Effect, Replacement, Replica, RowText, Tables};
use crate::restart::{Anchor, Boot, ANCHOR_SPAN};
use crate::snapshot::{self, Snapshot};
use crate::transport::{BinaryFrame, Liveness, Which};

/// Why the server refused a write, as kept on the failed mutation.
fn refusal(e: &Error) -> MutationError {
    MutationError { code: e.server_code().unwrap_or(e.code()).to_string(), message: e.to_string(), status: e.status() }
}

/// Tombstones are pruned each time the cursor has moved this many events.
const PRUNE_EVERY: u64 = 1000;

/// Writes per `/api/batch` request, and its body size (the server takes 10 MiB).
const BATCH_MAX: usize = 1000;
const BATCH_BYTES: usize = 4 << 20;

/// Prefix of ids given to rows inserted locally until the server names them.
pub const TEMP_PREFIX: &str = "_pending_";
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How often the server's boot time is checked (also after errors and reconnects).
const BOOT_CHECK_EVERY: Duration = Duration::from_secs(30);
/// With a live stream, pull at least this often anyway: streams are hints
/// and may silently miss events (§10.6).
const SAFETY_PULL: Duration = Duration::from_secs(30);

/// How the engine follows the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket; SSE when it cannot connect or keeps dying; polling after
    /// that; better transports are probed again later.
    Auto,
    WebSocket,
    Sse,
    /// Pull every `poll_interval`, no stream.
    Poll,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub base_url: String,
    pub transport: Transport,
    pub poll_interval: Duration,
    /// Base of the reconnect/retry backoff.
    pub reconnect_delay: Duration,
    pub token: Option<String>,
    /// Overrides the WebSocket URL derived from `base_url` (port + 1).
    pub ws_url: Option<String>,
    /// Overrides the SSE URL derived from `base_url` (port + 2, `/events`).
    pub sse_url: Option<String>,
    pub liveness: Liveness,
    /// PEM of certificate authorities to trust for https/wss besides the web roots.
    pub ca: Option<String>,
    /// After falling back to a lesser transport, try a better one again this
    /// long later (doubling while it keeps failing, up to 10 min).
    pub probe_interval: Duration,
    /// `None`: keep everything in memory.
    pub db_path: Option<PathBuf>,
    pub app_name: String,
    /// Where requests, streams, the clock and chance come from (`None`: the
    /// network and the system; a simulation brings its own).
    pub io: Option<Arc<dyn Io>>,
}

impl Config {
    pub fn new(base_url: &str) -> Config {
        Config {
            base_url: base_url.to_string(),
            transport: Transport::Auto,
            poll_interval: Duration::from_millis(1000),
            reconnect_delay: Duration::from_millis(1000),
            token: None,
            ws_url: None,
            sse_url: None,
            liveness: Liveness { ping_interval: Duration::from_secs(15), ping_timeout: Duration::from_secs(10) },
            probe_interval: Duration::from_secs(60),
            ca: None,
            db_path: None,
            app_name: "default".into(),
            io: None,
        }
    }
}

/// Where the sync loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Stopped,
    Starting,
    Bootstrapping,
    Idle,
    Backoff,
    Offline,
    Closed,
}

/// Observable sync state.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub phase: Phase,
    pub transport: &'static str,
    pub cursor: u64,
    pub pending: usize,
    pub failed: usize,
    /// Consecutive failed attempts (drives the backoff).
    pub attempts: u32,
    pub last_error: Option<ErrorInfo>,
    /// Unix ms of the last pull that reached the head of the log.
    pub last_synced_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(rename = "serverCode", skip_serializing_if = "Option::is_none")]
    pub server_code: Option<String>,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo {
            code: e.code().into(),
            message: e.to_string(),
            status: e.status(),
            server_code: e.server_code().map(str::to_string),
        }
    }
}

/// What listeners are told. Store changes are coalesced: one event per applied batch.
#[derive(Debug, Clone)]
pub enum Event {
    /// Visible rows of these entities changed.
    Change {
        entities: Vec<String>,
    },
    /// A mutation changed state: `pending` (queued), `applied`, `failed`, `removed`.
    Mutation {
        status: &'static str,
        mutation: Mutation,
    },
    Status(SyncStatus),
    /// A sync round failed (`context`: "pull" for a repeated resync, else "sync").
    Error {
        context: &'static str,
        error: Error,
    },
    /// The session changed (`None`: unknown).
    Session(Option<Session>),
    /// The replica was dropped and is being rebuilt (`reason`: "resync" after a 410, "identity" after a flip).
    Resync {
        reason: &'static str,
    },
    /// Bootstrap progress: rows fetched so far for `entity`.
    Progress {
        entity: String,
        rows: usize,
        done: bool,
    },
    /// The realtime connection changed state or transport.
    Connection(Connection),
    /// Other engines' presence changed; the full current list.
    Presence(Vec<Peer>),
    /// A message published on a topic by another engine.
    Topic {
        topic: String,
        from: Option<String>,
        data: Value,
    },
    /// A rooms API event (join, leave, room presence, broadcast), as sent.
    Room(Map<String, Value>),
    /// A binary (CRDT) frame.
    Binary(BinaryFrame),
}

pub type Listener = Arc<dyn Fn(Event) + Send + Sync>;

struct State {
    replica: Replica,
    queue: Queue,
    cursor: u64,
    /// Entities whose full snapshot is in the replica (the rest need
    /// bootstrapping), each with the log head its snapshot was read after:
    /// the snapshot already holds every change up to there, so replaying the
    /// log (a replica that also follows log-only entities starts from 0)
    /// skips them. 0 for an entity only the log fills.
    covered: BTreeMap<String, u64>,
    /// Entities no policy governs: everyone may read every row, so their
    /// stream events can be applied as they arrive (the rest are confirmed by
    /// a pull, which the server filters).
    open: BTreeSet<String>,
    session: Option<Session>,
    /// Identity the stored rows belong to.
    identity: String,
    /// Fingerprint of the token that `session` was resolved with.
    verified_fp: Option<String>,
    /// That token. Every request that reads into the replica or sends a
    /// queued write uses it, never a newer unverified one, so a token
    /// change mid-round cannot mix identities.
    verified_token: Option<String>,
    /// Key of the queue in memory (the identity when verified, else the token's key).
    queue_key: String,
    /// Stored rows not yet shown because the token changed since they were stored.
    quarantined: bool,
    /// Insert events seen while an insert is in doubt (see `reconcile`).
    witness: reconcile::Witness,
    /// Temporary ids of acknowledged inserts → the server's ids.
    aliases: std::collections::HashMap<String, String>,
    /// Temporary ids of other identities' inserts in doubt, parked in the
    /// database: an insert event naming one is recorded as its alias, so the
    /// insert is known applied when its identity returns (even if a restart
    /// has renumbered the log by then).
    parked_in_doubt: std::collections::HashSet<String>,
    /// When the server the replica follows started, from `/health`.
    server_boot: Option<Boot>,
    /// The last event the replica took (see `restart`); `None` after a
    /// snapshot until the next pull learns one.
    anchor: Option<Anchor>,
    /// Restarts of the server noticed so far: an insert sent in an earlier
    /// lifetime cannot be looked for in today's log.
    server_gen: u64,
    loaded: bool,
    pending_hydration: Option<Hydration>,
    status: SyncStatus,
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) rt: Realtime,
    pub(crate) io: Arc<dyn Io>,
    /// Every record the engine's own tasks log is inside it: several engines
    /// in one process are told apart by their replica file's name.
    pub(crate) span: tracing::Span,
    api: Api,
    db: Mutex<Option<Db>>,
    state: RwLock<State>,
    token: RwLock<Option<String>>,
    listener: RwLock<Option<Listener>>,
    sync: tokio::sync::Mutex<()>,
    wake: Notify,
    stop: Notify,
    /// Bumped by every reset, so work started before it is discarded.
    epoch: AtomicU64,
    running: AtomicBool,
    closed: AtomicBool,
    resyncs_in_a_row: AtomicU32,
    /// The cursor at the last tombstone pruning.
    pruned_at: AtomicU64,
    /// The server refused `/api/batch`: admin writes go one by one.
    no_batch: AtomicBool,
    /// Check the server's boot time in the next round (start, errors, reconnects).
    boot_check_due: AtomicBool,
    last_boot_check: Mutex<Option<tokio::time::Instant>>,
    /// Stream connections are numbered as they open ([`Realtime::opened`]).
    /// An event is applied as a page only from a connection opened before a
    /// round's first pull last found the log still holding the replica's
    /// last events (numbers up to `stream_checked`), and not before the last
    /// restart noticed (numbers from `stream_floor`): a restarted server's
    /// events can continue our cursor's numbering, and a dead server's
    /// connection may still deliver what it had sent. Other events are hints.
    stream_checked: AtomicU64,
    stream_floor: AtomicU64,
    /// The epoch in which every manifest entity was found covered: the
    /// manifest is read once per replica generation, not on every poll.
    complete_in_epoch: AtomicU64,
    loop_handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Writes made but not yet committed, in the order they were made.
    submitted: Mutex<Vec<Submitted>>,
}

/// Where the cursor goes when a snapshot is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Keep following the log from our cursor (from the head for a fresh replica).
    Follow,
    /// From the head the snapshot was read after.
    Head,
    /// From 0: entities only the log fills are emptied and replayed.
    Replay,
}

/// What [`Engine::applied_run`] committed: the acknowledged mutations (under
/// their server ids), the acknowledgements left for the next run, and the
/// entities that changed.
struct AckedRun {
    done: Vec<Mutation>,
    left: Vec<(Mutation, Option<String>)>,
    entities: Vec<String>,
}

/// A replay of the log from 0, gathered until it reaches the head.
struct Replay {
    events: Vec<ChangeEvent>,
    /// The last seq read.
    at: u64,
    /// The replica generation it was started in.
    epoch: u64,
    /// The event the snapshot's rows were read after: the replay must hold
    /// it, or the log was renumbered since the rows were read.
    expect: Option<Anchor>,
}

/// A write waiting for its transaction, and who to tell when it is durable.
struct Submitted {
    m: Mutation,
    done: tokio::sync::oneshot::Sender<Result<Mutation>>,
}

/// A sync engine for one server and one local database.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The stored `covered` map; a list (schema v1/v2 before snapshot heads)
/// means heads unknown, which replays everything as before.
fn parse_covered(text: &str) -> Result<BTreeMap<String, u64>> {
    match serde_json::from_str::<Value>(text)? {
        Value::Array(names) => Ok(names.iter().filter_map(Value::as_str).map(|n| (n.to_string(), 0)).collect()),
        other => Ok(serde_json::from_value(other)?),
    }
}

/// Temporary ids of the inserts in doubt among `mutations`.
fn in_doubt_ids(mutations: &[Mutation]) -> std::collections::HashSet<String> {
    mutations.iter().filter(|m| crate::queue::is_in_doubt(m)).map(|m| m.row_id.clone()).collect()
}

/// A stable, non-reversible name for a token, so we can tell tokens apart
/// without ever storing one.
fn fingerprint(token: Option<&str>) -> String {
    match token {
        None => "anonymous".into(),
        Some(t) => {
            let digest = Sha256::digest(t.as_bytes());
            digest[..12].iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

const ANONYMOUS: &str = "user:|tenant:";

fn token_key(fp: &str) -> String {
    if fp == "anonymous" {
        ANONYMOUS.into()
    } else {
        format!("token:{fp}")
    }
}

impl Engine {
    pub fn new(cfg: Config) -> Result<Engine> {
        let io = match &cfg.io {
            Some(io) => io.clone(),
            None => Net::shared(cfg.ca.as_deref())?,
        };
        let api = Api::new(&cfg.base_url, io.clone())?;
        if let Some(ca) = &cfg.ca {
            crate::tls::client_config(ca)?; // a bad CA is a bad argument now, not a failed connection later
        }
        if cfg.app_name.is_empty() {
            return Err(Error::InvalidArg("appName must not be empty".into()));
        }
        let token = cfg.token.clone().filter(|t| !t.is_empty());
        let fp = fingerprint(token.as_deref());
        let status = SyncStatus {
            phase: Phase::Stopped,
            transport: match cfg.transport {
                Transport::Auto => "auto",
                Transport::WebSocket => "websocket",
                Transport::Sse => "sse",
                Transport::Poll => "poll",
            },
            cursor: 0,
            pending: 0,
            failed: 0,
            attempts: 0,
            last_error: None,
            last_synced_at: None,
        };
        let state = State {
            replica: Replica::new(),
            queue: Queue::default(),
            cursor: 0,
            covered: BTreeMap::new(),
            open: BTreeSet::new(),
            session: None,
            identity: String::new(),
            verified_fp: None,
            verified_token: None,
            queue_key: token_key(&fp),
            quarantined: false,
            server_boot: None,
            anchor: None,
            server_gen: 0,
            aliases: Default::default(),
            parked_in_doubt: Default::default(),
            witness: Default::default(),
            loaded: false,
            pending_hydration: None,
            status,
        };
        let first = match cfg.transport {
            Transport::Sse => Which::Sse,
            Transport::Poll => Which::Poll,
            Transport::Auto | Transport::WebSocket => Which::WebSocket,
        };
        let replica = cfg.db_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        let span = tracing::debug_span!("engine", replica = replica.as_deref().unwrap_or(":memory:"));
        Ok(Engine {
            inner: Arc::new(Inner {
                span,
                rt: Realtime::new(format!("c_{}_{}", io.now_ms(), random_suffix(&*io)), first, io.now_ms()),
                cfg,
                io,
                api,
                db: Mutex::new(None),
                state: RwLock::new(state),
                token: RwLock::new(token),
                listener: RwLock::new(None),
                sync: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
                stop: Notify::new(),
                epoch: AtomicU64::new(0),
                running: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                resyncs_in_a_row: AtomicU32::new(0),
                no_batch: AtomicBool::new(false),
                pruned_at: AtomicU64::new(0),
                boot_check_due: AtomicBool::new(true),
                last_boot_check: Mutex::new(None),
                stream_checked: AtomicU64::new(0),
                stream_floor: AtomicU64::new(0),
                complete_in_epoch: AtomicU64::new(u64::MAX),
                loop_handle: Mutex::new(None),
                submitted: Mutex::new(Vec::new()),
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    pub fn set_listener(&self, listener: Option<Listener>) {
        *self.inner.listener.write().unwrap() = listener;
    }

    pub(crate) fn emit(&self, ev: Event) {
        let l = self.inner.listener.read().unwrap().clone();
        if let Some(l) = l {
            l(ev);
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    // ---------------------------------------------------------------- reads

    /// The visible rows of `entity` as one JSON array, in id order.
    pub fn list_json(&self, entity: &str) -> String {
        self.inner.state.read().unwrap().replica.list_json(entity)
    }

    /// What changed in `entity` since `version` (see [`Replica::changes_since`]),
    /// as JSON `{"version", "rows": [changed rows], "gone": [ids]}`; `None` when
    /// only the whole list can tell.
    pub fn changes_json(&self, entity: &str, version: u64) -> Option<String> {
        let changes = self.inner.state.read().unwrap().replica.changes_since(entity, version)?;
        let (now, mut rows, mut gone) = (changes.version, String::from("["), Vec::new());
        for (id, row) in changes.rows {
            match row {
                Some(r) => {
                    if rows.len() > 1 {
                        rows.push(',');
                    }
                    rows.push_str(r.as_str());
                }
                None => gone.push(id),
            }
        }
        rows.push(']');
        Some(format!(r#"{{"version":{now},"rows":{rows},"gone":{}}}"#, serde_json::to_string(&gone).ok()?))
    }

    /// The visible rows of `entity`, in id order, parsed.
    pub fn list(&self, entity: &str) -> Vec<Row> {
        let rows = self.inner.state.read().unwrap().replica.list(entity);
        rows.iter().map(RowText::parse).collect()
    }

    /// Time this engine has spent waiting for the server's HTTP answers
    /// (diagnostics: compare with wall time to see who is slow).
    pub fn server_wait(&self) -> Duration {
        self.inner.api.waited()
    }

    /// How many rows of `entity` are visible.
    pub fn count(&self, entity: &str) -> usize {
        self.inner.state.read().unwrap().replica.count(entity)
    }

    /// A visible row as JSON text. A temporary id the server has since named still finds its row.
    pub fn get_json(&self, entity: &str, id: &str) -> Option<RowText> {
        let st = self.inner.state.read().unwrap();
        let id = st.aliases.get(id).map_or(id, String::as_str);
        st.replica.get(entity, id)
    }

    /// A visible row, parsed (see [`Engine::get_json`]).
    pub fn get(&self, entity: &str, id: &str) -> Option<Row> {
        self.get_json(entity, id).map(|r| r.parse())
    }

    /// Changes whenever the visible rows of `entity` change.
    pub fn entity_version(&self, entity: &str) -> u64 {
        self.inner.state.read().unwrap().replica.entity_version(entity)
    }

    pub fn entities(&self) -> Vec<String> {
        self.inner.state.read().unwrap().replica.entities()
    }

    pub fn cursor(&self) -> u64 {
        self.inner.state.read().unwrap().cursor
    }

    /// The wall clock, as the engine's [`Io`] tells it.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.io.now_ms()
    }

    pub fn status(&self) -> SyncStatus {
        self.inner.state.read().unwrap().status.clone()
    }

    pub fn session(&self) -> Option<Session> {
        self.inner.state.read().unwrap().session.clone()
    }

    pub fn mutations(&self) -> Vec<Mutation> {
        self.inner.state.read().unwrap().queue.all().cloned().collect()
    }

    // ------------------------------------------------------------- database

    /// Runs `f` with the open database on a blocking thread.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine, &mut Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        let me = self.clone();
        let work = move || {
            let mut guard = me.inner.db.lock().unwrap();
            if guard.is_none() {
                *guard = Some(Db::open(me.inner.cfg.db_path.as_deref())?);
            }
            f(&me, guard.as_mut().unwrap())
        };
        if self.inner.io.inline_db() {
            return work();
        }
        tokio::task::spawn_blocking(work).await.map_err(|e| Error::Storage(format!("database task failed: {e}")))?
    }

    /// Opens the database and loads it into memory, once.
    async fn load(&self) -> Result<()> {
        if self.inner.state.read().unwrap().loaded {
            return Ok(());
        }
        self.with_db(|me, db| {
            if me.inner.state.read().unwrap().loaded {
                return Ok(());
            }
            // read and index everything before taking the state lock, so
            // readers on the JS thread never wait for the disk
            let stored_fp = db.meta("token_fp")?;
            let identity = db.meta("identity")?.unwrap_or_default();
            let covered = match db.meta("covered")? {
                Some(text) => parse_covered(&text)?,
                None => BTreeMap::new(),
            };
            let fp = fingerprint(me.inner.token.read().unwrap().as_deref());
            let Stored { rows, mutations } = db.load()?;
            let server_boot = db.meta("server_boot")?.as_deref().and_then(Boot::parse);
            let anchor = db.meta("anchor")?.and_then(|t| serde_json::from_str::<Option<Anchor>>(&t).ok()).flatten();
            let server_gen = db.meta("server_gen")?.and_then(|t| t.parse().ok()).unwrap_or(0);
            let aliases = db.aliases(me.now_ms())?.into_iter().collect();
            let cursor = db.cursor()?;
            // Rows stored under another token stay hidden until /api/auth/me
            // says the new token is the same identity.
            let same_token = stored_fp.as_deref() == Some(fp.as_str()) || (rows.is_empty() && cursor == 0);
            let queue_key = if same_token && !identity.is_empty() { identity.clone() } else { token_key(&fp) };
            let (mine, others): (Vec<Mutation>, Vec<Mutation>) =
                mutations.into_iter().partition(|m| m.identity == queue_key);
            let parked_in_doubt = in_doubt_ids(&others);
            let queue = Queue::new(mine);
            let mut replica = Replica::new();
            if same_token {
                replica.load(rows);
            }
            replica.rebuild_overlay(&queue);
            let mut st = me.inner.state.write().unwrap();
            st.identity = identity;
            st.server_boot = server_boot;
            st.anchor = anchor;
            st.server_gen = server_gen;
            st.aliases = aliases;
            st.parked_in_doubt = parked_in_doubt;
            st.cursor = cursor;
            st.covered = covered;
            st.queue_key = queue_key;
            st.quarantined = !same_token;
            st.queue = queue;
            st.replica.take_over(replica);
            st.loaded = true;
            me.refresh_counts(&mut st);
            Ok(())
        })
        .await?;
        let hydration = self.inner.state.write().unwrap().pending_hydration.take();
        if let Some(h) = hydration {
            self.apply_hydration(h).await?;
        }
        let entities = self.entities();
        if !entities.is_empty() {
            self.emit(Event::Change { entities });
        }
        Ok(())
    }

    fn refresh_counts(&self, st: &mut State) {
        st.status.pending = st.queue.pending_count();
        st.status.failed = st.queue.len() - st.status.pending;
        st.status.cursor = st.cursor;
    }

    fn set_phase(&self, phase: Phase, error: Option<&Error>, attempts: u32) {
        let status = {
            let mut st = self.inner.state.write().unwrap();
            let changed = st.status.phase != phase
                || st.status.attempts != attempts
                || error.map(ErrorInfo::from) != st.status.last_error && error.is_some();
            st.status.phase = phase;
            st.status.attempts = attempts;
            if let Some(e) = error {
                st.status.last_error = Some(e.into());
            }
            if phase == Phase::Idle {
                st.status.last_synced_at = Some(self.now_ms());
            }
            self.refresh_counts(&mut st);
            if !changed {
                return;
            }
            st.status.clone()
        };
        self.emit(Event::Status(status));
    }

    // ------------------------------------------------------------- lifecycle

    /// The spec's `start()`: load the replica and the queue from disk, resolve
    /// the session, catch up with the server, then follow it. Resolves after the
    /// first sync attempt; when the server is unreachable it resolves anyway
    /// (offline), reports the error as an event and keeps retrying.
    pub async fn start(&self) -> Result<()> {
        self.check_open()?;
        if self.inner.running.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.set_phase(Phase::Starting, None, 0);
        if let Err(e) = self.load().await {
            self.inner.running.store(false, Ordering::SeqCst);
            self.set_phase(Phase::Stopped, Some(&e), 0);
            return Err(e);
        }
        let first = self.sync_once().await;
        let mut backoff = Backoff::new(self.inner.cfg.reconnect_delay, BACKOFF_CAP, self.inner.io.clone());
        let first_delay = self.after_sync(&first, &mut backoff);
        if !self.inner.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        let me = self.clone();
        let span = me.inner.span.clone();
        let handle = tokio::spawn(async move { me.run(backoff, first_delay).await }.instrument(span));
        *self.inner.loop_handle.lock().unwrap() = Some(handle);
        self.start_realtime();
        match first {
            Err(e) if !e.is_transient() && !matches!(e, Error::Resync { .. } | Error::Http { .. }) => Err(e),
            _ => Ok(()),
        }
    }

    /// Stops following the server; local reads and writes keep working.
    pub async fn stop(&self) {
        self.inner.running.store(false, Ordering::SeqCst);
        self.inner.stop.notify_waiters();
        let handle = self.inner.loop_handle.lock().unwrap().take();
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
        self.stop_realtime().await;
        if !self.inner.closed.load(Ordering::SeqCst) {
            self.set_phase(Phase::Stopped, None, 0);
        }
    }

    /// Stops and releases the database; every later call fails with `ERR_SYNC_CLOSED`.
    pub async fn close(&self) {
        self.stop().await;
        let _sync = self.inner.sync.lock().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        let me = self.clone();
        let release = move || drop(me.inner.db.lock().unwrap().take());
        if self.inner.io.inline_db() {
            release();
        } else {
            let _ = tokio::task::spawn_blocking(release).await;
        }
        self.set_phase(Phase::Closed, None, 0);
        self.set_listener(None);
    }

    /// Ends the engine the way a killed process ends: its tasks are dropped
    /// wherever they wait, nothing is sent or finished, and the database is
    /// let go. A simulation's crash (`tests/sim.rs`); applications use
    /// `close()`.
    #[doc(hidden)]
    pub fn abandon(&self) {
        self.inner.running.store(false, Ordering::SeqCst);
        self.inner.closed.store(true, Ordering::SeqCst);
        let handles = [self.inner.loop_handle.lock().unwrap().take(), self.inner.rt.handle.lock().unwrap().take()];
        for h in handles.into_iter().flatten() {
            h.abort();
        }
        drop(self.inner.db.lock().unwrap().take());
        self.set_listener(None);
    }

    async fn run(self, mut backoff: Backoff, mut delay: Duration) {
        loop {
            // a local write wakes the loop early, except while backing off
            tokio::select! {
                biased; // one order, so a simulation replays
                _ = self.inner.stop.notified() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.wake.notified(), if backoff.attempts() == 0 => {}
            }
            if !self.inner.running.load(Ordering::SeqCst) {
                return;
            }
            let res = self.sync_once().await;
            delay = self.after_sync(&res, &mut backoff);
        }
    }

    /// Decides how long to wait after a sync attempt, and reports it.
    fn after_sync(&self, res: &Result<()>, backoff: &mut Backoff) -> Duration {
        match res {
            Ok(()) => {
                backoff.reset();
                self.set_phase(Phase::Idle, None, 0);
                if self.inner.rt.streaming() {
                    // the stream brings changes; an occasional pull catches what it missed
                    self.inner.cfg.poll_interval.max(SAFETY_PULL)
                } else {
                    self.inner.cfg.poll_interval
                }
            }
            Err(e) => {
                self.inner.boot_check_due.store(true, Ordering::SeqCst);
                let context = match e {
                    Error::Resync { .. } => "pull",
                    _ => "sync",
                };
                self.emit(Event::Error { context, error: e.clone() });
                let delay = match e {
                    Error::Resync { .. } => {
                        // the breaker: 2, 4, 8, 16, 30 s between repeated resyncs
                        // (the first 410 of a series was retried at once)
                        let n = self.inner.resyncs_in_a_row.load(Ordering::SeqCst).saturating_sub(1).clamp(1, 5);
                        BACKOFF_CAP.min(Duration::from_secs(1 << n))
                    }
                    Error::Http { status: 429, retry_after, .. } => {
                        backoff.penalize(2);
                        let jitter = backoff.next_delay();
                        retry_after.map_or(jitter, |r| r.max(jitter.min(r + self.inner.cfg.reconnect_delay)))
                    }
                    _ => backoff.next_delay(),
                };
                let phase = if matches!(e, Error::Network(_)) { Phase::Offline } else { Phase::Backoff };
                self.set_phase(phase, Some(e), backoff.attempts());
                delay
            }
        }
    }

    /// One round: make sure the session is known, send queued writes, pull.
    pub async fn sync_once(&self) -> Result<()> {
        self.check_open()?;
        let _sync = self.inner.sync.lock().await;
        self.load().await?;
        self.ensure_session().await?;
        self.check_server_boot().await?;
        self.flush().await?;
        self.pull_to_head().await
    }

    /// The real server keeps its change log in memory: a restart renumbers it
    /// from 1 with one insert per row, so a cursor at or below the new head is
    /// never told to resync and would silently miss what changed meanwhile.
    /// `/health` gives the uptime, hence the boot time; a new boot means the
    /// replica is rebuilt. Checked at start, after errors and stream
    /// reconnects, every round while polling, and every 30 s.
    async fn check_server_boot(&self) -> Result<()> {
        // without a live stream nothing else would notice a restart between
        // polls (a restart drops streams, which marks a check due), so a
        // polling engine asks every round: one small request beside the pull
        let due = self.inner.boot_check_due.swap(false, Ordering::SeqCst)
            || !self.inner.rt.streaming()
            || self.inner.last_boot_check.lock().unwrap().is_none_or(|t| t.elapsed() >= BOOT_CHECK_EVERY);
        if !due {
            return Ok(());
        }
        let sent = self.now_ms();
        let uptime = match self.inner.api.uptime().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(()), // a server that does not say: nothing to learn
            Err(e) => {
                self.inner.boot_check_due.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        *self.inner.last_boot_check.lock().unwrap() = Some(tokio::time::Instant::now());
        let seen = Boot::observed(sent, self.now_ms(), uptime);
        let known = self.inner.state.read().unwrap().server_boot;
        let boot = match known {
            Some(k) if seen.later_than(&k) => {
                self.reset_replica_inner("server").await?;
                seen
            }
            Some(k) => k.narrowed(&seen),
            None => seen,
        };
        if known == Some(boot) {
            return Ok(());
        }
        self.with_db(move |me, db| {
            db.write(|w| w.set_meta("server_boot", &format!("{},{}", boot.earliest, boot.latest)))?;
            me.inner.state.write().unwrap().server_boot = Some(boot);
            Ok(())
        })
        .await
    }

    /// A dropped stream may mean a restarted server: check before the next pull.
    pub(crate) fn server_may_have_restarted(&self) {
        self.inner.boot_check_due.store(true, Ordering::SeqCst);
    }

    /// The server restarted: what its open connections still deliver belongs
    /// to the old log (one opened since may be the new server's, and is
    /// replaced so its events count again).
    fn forget_streams(&self) {
        self.inner.stream_floor.store(self.inner.rt.opened.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        self.restart_realtime(false);
    }

    /// Asks the loop to sync now (after a local write).
    pub(crate) fn kick(&self) {
        self.inner.wake.notify_one();
    }

    // --------------------------------------------------------------- session

    /// The bearer token requests are sent with now.
    pub fn token(&self) -> Option<String> {
        self.current_token()
    }

    fn current_token(&self) -> Option<String> {
        self.inner.token.read().unwrap().clone()
    }

    /// The token the current session was verified with (see `State::verified_token`).
    pub(crate) fn session_token(&self) -> Option<String> {
        self.inner.state.read().unwrap().verified_token.clone()
    }

    /// Sets the bearer token (sign-in, sign-out, refresh). Queued writes of
    /// one identity are never sent with another identity's token: until the
    /// new token's session is resolved nothing is sent.
    pub fn set_token(&self, token: Option<String>) {
        let token = token.filter(|t| !t.is_empty());
        let fp = fingerprint(token.as_deref());
        *self.inner.token.write().unwrap() = token;
        let changed = {
            let mut st = self.inner.state.write().unwrap();
            let verified = st.verified_fp.as_deref() == Some(fp.as_str());
            // writes made from now on belong to the new token until its session is known
            st.queue_key = if verified { st.identity.clone() } else { token_key(&fp) };
            !verified
        };
        if changed {
            self.kick();
        }
    }

    /// Re-reads the session from `/api/auth/me`; resets the replica when the
    /// user or tenant changed. Returns the session.
    pub async fn notify_session_changed(&self) -> Result<Option<Session>> {
        self.check_open()?;
        let _sync = self.inner.sync.lock().await;
        self.load().await?;
        self.inner.state.write().unwrap().verified_fp = None;
        self.ensure_session().await?;
        if self.inner.running.load(Ordering::SeqCst) {
            self.kick();
        }
        Ok(self.session())
    }

    async fn ensure_session(&self) -> Result<()> {
        let token = self.current_token();
        let fp = fingerprint(token.as_deref());
        if self.inner.state.read().unwrap().verified_fp.as_deref() == Some(fp.as_str()) {
            return Ok(());
        }
        let session = self.inner.api.me(token.as_deref()).await?;
        if self.current_token().as_deref() != token.as_deref() {
            // the token changed while we asked; the next round asks again
            return Err(Error::Network("token changed while resolving the session".into()));
        }
        self.apply_session(session, token, fp).await
    }

    async fn apply_session(&self, session: Session, token: Option<String>, fp: String) -> Result<()> {
        let identity = session.identity_key();
        let (flipped, new_token) = {
            let st = self.inner.state.read().unwrap();
            let known = !st.identity.is_empty();
            (known && st.identity != identity, known && fingerprint(st.verified_token.as_deref()) != fp)
        };
        let session_for_event = session.clone();
        tracing::debug!(flipped, new_token, "session resolved");
        let entities = self
            .with_db(move |me, db| {
                let tkey = token_key(&fp);
                db.write(|w| {
                    if flipped {
                        w.clear_rows()?;
                        w.set_cursor(0)?;
                        w.set_meta("covered", "[]")?;
                        w.set_meta("anchor", "null")?;
                    }
                    w.set_meta("identity", &identity)?;
                    w.set_meta("token_fp", &fp)?;
                    if tkey != identity {
                        w.adopt_mutations(&tkey, &identity)?;
                    }
                    Ok(())
                })?;
                let stored =
                    if !flipped && me.inner.state.read().unwrap().quarantined { Some(db.load()?.rows) } else { None };
                let mutations = db.mutations()?;
                let mut st = me.inner.state.write().unwrap();
                let mut entities = st.replica.entities();
                if flipped {
                    // with the rows, under the state lock: work planned before
                    // the flip is refused from here on, even if the future that
                    // started this one was dropped mid-way (stop() aborts it)
                    me.inner.epoch.fetch_add(1, Ordering::SeqCst);
                    st.replica.clear();
                    st.cursor = 0;
                    st.anchor = None;
                    st.covered.clear();
                }
                if let Some(rows) = stored {
                    st.replica.load(rows);
                }
                st.quarantined = false;
                st.identity = identity.clone();
                st.queue_key = identity.clone();
                st.verified_fp = Some(fp);
                st.verified_token = token;
                st.session = Some(session);
                let (mine, others): (Vec<Mutation>, Vec<Mutation>) =
                    mutations.into_iter().partition(|m| m.identity == identity);
                st.parked_in_doubt = in_doubt_ids(&others);
                st.queue = Queue::new(mine);
                let State { replica, queue, .. } = &mut *st;
                replica.rebuild_overlay(queue);
                for e in st.replica.entities() {
                    if !entities.contains(&e) {
                        entities.push(e);
                    }
                }
                me.refresh_counts(&mut st);
                Ok(entities)
            })
            .await?;
        if flipped || new_token {
            // the stream was opened with the previous token
            self.restart_realtime(flipped);
        }
        if flipped {
            self.emit(Event::Resync { reason: "identity" });
        }
        self.emit(Event::Session(Some(session_for_event)));
        self.emit(Event::Change { entities });
        Ok(())
    }

    // ---------------------------------------------------------------- writes
    //
    // Writes take their place in the queue when they are called, not when
    // their future first runs: calls made one after another without awaiting
    // are sent in that order. The future resolves once the write is in SQLite.

    /// Optimistic insert under a temporary id (returned once the write is
    /// durable), replaced by the server's id once acknowledged.
    pub fn insert(&self, entity: &str, data: Row) -> impl Future<Output = Result<String>> + Send + 'static {
        let temp = format!("{TEMP_PREFIX}{}_{}", self.now_ms(), random_suffix(&*self.inner.io));
        let mut data = data;
        data.remove("id");
        let queued = check_entity(entity).and_then(|()| self.submit(entity, &temp, Kind::Insert, Some(data)));
        async move { queued?.await.map(|()| temp) }
    }

    pub fn update(&self, entity: &str, id: &str, patch: Row) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut patch = patch;
        patch.remove("id");
        let queued = check_entity(entity).and_then(|()| check_id(id)).and_then(|()| {
            if patch.is_empty() {
                return Err(Error::InvalidArg("update needs at least one field to change".into()));
            }
            self.submit(entity, id, Kind::Update, Some(patch))
        });
        async move { queued?.await }
    }

    pub fn delete(&self, entity: &str, id: &str) -> impl Future<Output = Result<()>> + Send + 'static {
        let queued =
            check_entity(entity).and_then(|()| check_id(id)).and_then(|()| self.submit(entity, id, Kind::Delete, None));
        async move { queued?.await }
    }

    /// Puts a write in line now; the returned future commits it (with any
    /// others waiting: one transaction for a burst) and waits until it is durable.
    fn submit(
        &self,
        entity: &str,
        row_id: &str,
        kind: Kind,
        data: Option<Row>,
    ) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        self.check_open()?;
        let m = Mutation {
            id: format!("mut_{}_{}", self.now_ms(), random_suffix(&*self.inner.io)),
            order: 0,
            identity: String::new(),
            entity: entity.to_string(),
            row_id: row_id.to_string(),
            kind,
            data,
            status: Status::Pending,
            error: None,
            attempts: 0,
            created_at: self.now_ms(),
            sent: None,
        };
        let id = m.id.clone();
        let (done, answer) = tokio::sync::oneshot::channel();
        self.inner.submitted.lock().unwrap().push(Submitted { m, done });
        let me = self.clone();
        Ok(async move {
            let committed = match me.load().await {
                Ok(()) => me.commit_submitted().await,
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                // nobody committed it: take it back, so it can never be written after this error
                let mut waiting = me.inner.submitted.lock().unwrap();
                if let Some(i) = waiting.iter().position(|s| s.m.id == id) {
                    waiting.remove(i);
                    return Err(e);
                }
            }
            answer.await.map_err(|_| Error::Closed)?.map(|_| ())
        })
    }

    /// Commits every submitted write in one transaction, then makes them visible.
    async fn commit_submitted(&self) -> Result<()> {
        let batch = self
            .with_db(|me, db| {
                let mut batch = std::mem::take(&mut *me.inner.submitted.lock().unwrap());
                if batch.is_empty() {
                    return Ok(Vec::new());
                }
                {
                    // a temporary id the server has since named (the caller kept
                    // what insert() returned) means that row; checked under the
                    // database lock, so an acknowledgement cannot slip in between
                    let st = me.inner.state.read().unwrap();
                    for Submitted { m, .. } in &mut batch {
                        m.identity = st.queue_key.clone();
                        if let Some(server) = st.aliases.get(&m.row_id) {
                            m.row_id = server.clone();
                        }
                        for v in m.data.iter_mut().flat_map(|d| d.values_mut()) {
                            if let Some(server) = v.as_str().and_then(|s| st.aliases.get(s)) {
                                *v = Value::String(server.clone());
                            }
                        }
                    }
                }
                if let Err(e) = db.write(|w| batch.iter_mut().try_for_each(|s| w.add_mutation(&mut s.m))) {
                    for s in batch {
                        let _ = s.done.send(Err(e.clone()));
                    }
                    return Ok(Vec::new());
                }
                let mut st = me.inner.state.write().unwrap();
                for Submitted { m, .. } in &batch {
                    if m.identity == st.queue_key {
                        st.queue.push(m.clone());
                        let State { replica, queue, .. } = &mut *st;
                        replica.refresh(&m.entity, &m.row_id, queue);
                    }
                }
                me.refresh_counts(&mut st);
                Ok(batch)
            })
            .await?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut entities: Vec<String> = batch.iter().map(|s| s.m.entity.clone()).collect();
        entities.sort();
        entities.dedup();
        self.emit(Event::Change { entities });
        for s in &batch {
            self.emit(Event::Mutation { status: "pending", mutation: s.m.clone() });
        }
        self.kick();
        for s in batch {
            let _ = s.done.send(Ok(s.m));
        }
        Ok(())
    }

    /// Removes a mutation (typically a failed one) and its optimistic effect.
    pub async fn remove_mutation(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        let removed = self
            .with_db(move |me, db| {
                if me.inner.state.read().unwrap().queue.get(&id).is_none() {
                    return Ok(None);
                }
                db.write(|w| w.delete_mutation(&id))?;
                let mut st = me.inner.state.write().unwrap();
                let m = st.queue.remove(&id);
                if let Some(m) = &m {
                    let State { replica, queue, .. } = &mut *st;
                    replica.refresh(&m.entity, &m.row_id, queue);
                }
                me.refresh_counts(&mut st);
                Ok(m)
            })
            .await?;
        match removed {
            Some(m) => {
                self.emit(Event::Change { entities: vec![m.entity.clone()] });
                self.emit(Event::Mutation { status: "removed", mutation: m });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Puts a failed mutation back in the queue.
    pub async fn retry_mutation(&self, id: &str) -> Result<()> {
        let m = self.set_mutation_status(id, Status::Pending, None).await?;
        self.emit(Event::Change { entities: vec![m.entity.clone()] });
        self.emit(Event::Mutation { status: "pending", mutation: m });
        self.kick();
        Ok(())
    }

    async fn set_mutation_status(&self, id: &str, status: Status, error: Option<MutationError>) -> Result<Mutation> {
        let id = id.to_string();
        self.with_db(move |me, db| {
            let mut m = me
                .inner
                .state
                .read()
                .unwrap()
                .queue
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("no mutation {id:?}")))?;
            m.status = status;
            m.error = error.clone();
            if status == Status::Pending {
                m.attempts = 0;
            }
            db.write(|w| w.save_mutation(&m))?;
            let mut st = me.inner.state.write().unwrap();
            st.queue.replace(m.clone());
            let State { replica, queue, .. } = &mut *st;
            replica.refresh(&m.entity, &m.row_id, queue);
            me.refresh_counts(&mut st);
            Ok(m)
        })
        .await
    }

    /// Sends queued writes, oldest first, through the REST entity routes.
    async fn flush(&self) -> Result<()> {
        let mut checked = false;
        loop {
            let (next, token, admin) = {
                let st = self.inner.state.read().unwrap();
                if st.queue_key != st.identity {
                    return Ok(()); // identity not verified for this token yet
                }
                let admin = st.session.as_ref().is_some_and(|s| s.is_admin);
                (st.queue.next_pending().cloned(), st.verified_token.clone(), admin)
            };
            let Some(m) = next else { return Ok(()) };
            if m.kind == Kind::Insert && m.sent.is_none() && !checked {
                // an insert is looked for in the log it went into, counted in
                // the server lifetime it was sent in: make sure that lifetime
                // is today's (the pull checks the log still holds our anchor)
                checked = true;
                self.pull_to_head().await?;
                continue;
            }
            if m.row_id.starts_with(TEMP_PREFIX) && m.kind != Kind::Insert {
                let err = MutationError {
                    code: "DEPENDENCY_FAILED".into(),
                    message: format!("the insert that created {} failed or was removed", m.row_id),
                    status: None,
                };
                self.fail(&m, err).await?;
                continue;
            }
            if admin && !self.inner.no_batch.load(Ordering::SeqCst) && self.flush_batch(token.as_deref()).await? {
                continue;
            }
            let m = match (m.kind, &m.sent) {
                (Kind::Insert, Some(_)) => {
                    // an earlier attempt may have been applied: pull (which
                    // adopts it if its event comes along, and notices a
                    // restart), then look for its event in the log; when the
                    // log cannot tell, match fields
                    self.pull_to_head().await?;
                    let still = self.inner.state.read().unwrap().queue.get(&m.id).cloned();
                    let Some(m) = still.filter(|m| m.status == Status::Pending) else { continue };
                    let found = match self.scan_for_insert(&m, token.as_deref()).await? {
                        Some(found) => found,
                        None => {
                            let st = self.inner.state.read().unwrap();
                            reconcile::find_applied(&st.replica, &st.witness, &m).into()
                        }
                    };
                    match found {
                        Found::Applied(server_id) => {
                            self.applied(&m, Some(server_id)).await?;
                            continue;
                        }
                        Found::NotApplied => m,
                    }
                }
                (Kind::Insert, None) => {
                    let m = self.mark_sent(vec![m], true).await?.remove(0);
                    tracing::debug!("send {} {:?}", m.row_id, m.sent);
                    m
                }
                _ => m,
            };
            let api = &self.inner.api;
            let t = token.as_deref();
            let sent = match m.kind {
                Kind::Insert => {
                    let nonce = m.sent.as_ref().is_some_and(|s| s.nonce).then_some(m.row_id.as_str());
                    api.insert(t, &m.entity, m.data.as_ref().unwrap_or(&Row::new()), nonce).await.map(Some)
                }
                Kind::Update => {
                    api.update(t, &m.entity, &m.row_id, m.data.as_ref().unwrap_or(&Row::new())).await.map(|_| None)
                }
                Kind::Delete => match api.delete(t, &m.entity, &m.row_id).await {
                    // already gone: the delete's goal holds
                    Err(Error::Http { status: 404, .. }) => Ok(None),
                    other => other.map(|_| None),
                },
            };
            match sent {
                Ok(server_id) => self.applied(&m, server_id).await?,
                Err(e) if e.is_transient() && m.kind == Kind::Insert => {
                    // its answer was lost: look in the log at once, while it
                    // can still tell (a restart would renumber it). Only a
                    // found insert is taken: one not found yet may still be
                    // under way, and is looked for again before any re-send.
                    if let Ok(Some(Found::Applied(server_id))) = self.scan_for_insert(&m, token.as_deref()).await {
                        self.applied(&m, Some(server_id)).await?;
                        continue;
                    }
                    return self.retry_later(m, e).await;
                }
                Err(e) if e.is_transient() => return self.retry_later(m, e).await,
                Err(e) => self.fail(&m, refusal(&e)).await?,
            }
        }
    }

    /// Sends the queue head and the writes after it as one `/api/batch`
    /// (admin sessions: a script importing 100,000 rows should not make
    /// 100,000 requests). Per-write outcomes are handled exactly as on the
    /// REST path. Returns false when the head must go alone, or the server
    /// has no batch route.
    async fn flush_batch(&self, token: Option<&str>) -> Result<bool> {
        let run: Vec<Mutation> = {
            let st = self.inner.state.read().unwrap();
            let mut bytes = 0;
            st.queue
                .pending()
                // an insert in doubt is reconciled alone; a write to a row whose
                // insert is in this batch needs that insert's id first
                .take_while(|m| !(m.kind == Kind::Insert && m.sent.is_some()))
                .take_while(|m| m.kind == Kind::Insert || !m.row_id.starts_with(TEMP_PREFIX))
                .take_while(|m| {
                    bytes += 64 + m.data.as_ref().map_or(0, |d| serde_json::to_string(d).map_or(0, |t| t.len()));
                    bytes <= BATCH_BYTES
                })
                .take(BATCH_MAX)
                .cloned()
                .collect()
        };
        if run.is_empty() {
            return Ok(false);
        }
        let run = self.mark_sent(run, false).await?;
        let empty = Row::new();
        let writes: Vec<BatchWrite> = run
            .iter()
            .map(|m| {
                let (entity, id, data) = (m.entity.as_str(), m.row_id.as_str(), m.data.as_ref().unwrap_or(&empty));
                match m.kind {
                    Kind::Insert => BatchWrite::Insert { entity, data },
                    Kind::Update => BatchWrite::Update { entity, id, patch: data },
                    Kind::Delete => BatchWrite::Delete { entity, id },
                }
            })
            .collect();
        match self.inner.api.batch(token, &writes).await {
            Ok(outcomes) => {
                // accepted writes are recorded together, refused ones in their place
                let mut accepted = Vec::new();
                for (m, outcome) in run.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(server_id) => accepted.push((m, server_id)),
                        Err(e) => {
                            self.applied_all(std::mem::take(&mut accepted)).await?;
                            self.fail(&m, refusal(&e)).await?;
                        }
                    }
                }
                self.applied_all(accepted).await?;
                Ok(true)
            }
            Err(e) if e.is_transient() => self.retry_later(run[0].clone(), e).await.map(|_| true),
            Err(Error::Http { status: 403..=405, .. }) => {
                // no batch route for us after all: the REST path does the same job
                self.inner.no_batch.store(true, Ordering::SeqCst);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Counts a failed attempt and gives up this round (backoff follows).
    async fn retry_later(&self, mut m: Mutation, e: Error) -> Result<()> {
        m.attempts += 1;
        self.save_mutations(vec![m], |w, m| w.save_mutation(m)).await?;
        Err(e)
    }

    /// Persists changed bookkeeping of queued mutations with `save` (nothing
    /// visible changes), then puts them in place in memory.
    async fn save_mutations(
        &self,
        changed: Vec<Mutation>,
        save: fn(&Writer<'_>, &Mutation) -> Result<()>,
    ) -> Result<()> {
        self.with_db(move |me, db| {
            db.write(|w| changed.iter().try_for_each(|m| save(w, m)))?;
            let mut st = me.inner.state.write().unwrap();
            for m in changed {
                st.queue.replace(m);
            }
            Ok(())
        })
        .await
    }

    /// Records, before inserts go out, that they may reach the server, and
    /// how to find them there (`nonce`: the temporary id goes out as `id`).
    async fn mark_sent(&self, mut run: Vec<Mutation>, nonce: bool) -> Result<Vec<Mutation>> {
        let mut changed = Vec::new();
        {
            let st = self.inner.state.read().unwrap();
            for m in run.iter_mut().filter(|m| m.kind == Kind::Insert && m.sent.is_none()) {
                let after = st.replica.max_base_id(&m.entity).map(str::to_string);
                m.sent = Some(Sent { after, nonce, since: Some(st.cursor), server_gen: st.server_gen });
                changed.push(m.clone());
            }
        }
        if !changed.is_empty() {
            self.save_mutations(changed, |w, m| w.set_sent(m)).await?;
        }
        Ok(run)
    }

    /// Whether an insert in doubt reached the server, read from the log:
    /// exact when it went out with its nonce and the log still reaches back
    /// to when it was sent, in the same server lifetime (its insert event is
    /// there, or it was never applied). `None` when the log cannot tell.
    async fn scan_for_insert(&self, m: &Mutation, token: Option<&str>) -> Result<Option<Found>> {
        if let Some(server) = self.inner.state.read().unwrap().aliases.get(&m.row_id) {
            // its event was seen while it was parked under another identity
            return Ok(Some(Found::Applied(server.clone())));
        }
        let sent = m.sent.clone().unwrap_or_default();
        if !sent.nonce {
            return Ok(None);
        }
        // finding its event is proof wherever it is found; not finding it is
        // proof only in the log the insert went into, read from where it
        // stood then (a restart not noticed yet would hide the event)
        let same_lifetime = sent.server_gen == self.inner.state.read().unwrap().server_gen;
        let exact = match sent.since {
            Some(_) if same_lifetime => self.log_continues(token).await?,
            _ => false,
        };
        let mut at = if exact { sent.since.unwrap_or(0) } else { 0 };
        loop {
            let page = match self.inner.api.pull(token, at).await {
                Ok(p) => p,
                Err(Error::Resync { .. }) => return Ok(None), // the log no longer reaches back
                Err(e) => return Err(e),
            };
            if let Some(c) = page.changes.iter().find(|c| reconcile::names(c, m)) {
                tracing::debug!("scan {} found {}", m.row_id, c.row_id);
                return Ok(Some(Found::Applied(c.row_id.clone())));
            }
            if !page.has_more || page.cursor.last_seq <= at {
                tracing::debug!("scan {} not found from {at} to {} (exact: {exact})", m.row_id, page.cursor.last_seq);
                return Ok(exact.then_some(Found::NotApplied));
            }
            at = page.cursor.last_seq;
        }
    }

    /// Asks the log for the replica's anchor again: false when the server
    /// cannot say (no anchor near the cursor), or when the log was renumbered
    /// (the replica is then reset for a rebuild).
    async fn log_continues(&self, token: Option<&str>) -> Result<bool> {
        let (cursor, anchor) = {
            let st = self.inner.state.read().unwrap();
            (st.cursor, st.anchor.clone())
        };
        let Some(a) = anchor.and_then(|a| a.near(cursor)) else {
            return Ok(false);
        };
        let page = match self.inner.api.pull_until(token, a.read_from(), cursor, Some(&a)).await {
            Ok(p) => p,
            Err(Error::Resync { .. }) => return Ok(false), // the pull that follows handles it
            Err(e) => return Err(e),
        };
        if a.check(&page.changes, a.read_from(), page.cursor.last_seq, !page.has_more, cursor).is_some() {
            return Ok(true);
        }
        if a.read_from() == 0 && self.log_moved_on(token, cursor).await?.is_some() {
            return Ok(false); // the pull that follows handles it
        }
        self.reset_replica_inner("server").await?;
        Ok(false)
    }

    /// Whether the log no longer reaches `cursor` (its oldest seq, as a 410
    /// says): then a check read from 0 met the oldest events kept, not
    /// another log.
    async fn log_moved_on(&self, token: Option<&str>, cursor: u64) -> Result<Option<u64>> {
        match self.inner.api.pull(token, cursor.max(1)).await {
            Err(Error::Resync { oldest_seq }) => Ok(Some(oldest_seq)),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Before a snapshot is shown, inserts of ours in doubt that it holds are
    /// acknowledged, so it never shows one next to its optimistic row.
    async fn settle_in_doubt(&self, snap: &Snapshot, token: Option<&str>) -> Result<()> {
        let in_doubt: Vec<Mutation> = {
            let st = self.inner.state.read().unwrap();
            if st.queue.in_doubt() == 0 {
                return Ok(());
            }
            st.queue
                .pending()
                .filter(|m| m.kind == Kind::Insert && m.sent.is_some() && snap.rows.contains_key(&m.entity))
                .cloned()
                .collect()
        };
        let mut acks = Vec::new();
        for m in in_doubt {
            let found = match self.scan_for_insert(&m, token).await? {
                Some(found) => found,
                None => {
                    let st = self.inner.state.read().unwrap();
                    reconcile::find_in_snapshot(&snap.rows[&m.entity], &st.witness, &m).into()
                }
            };
            tracing::debug!("settle {} {:?}", m.row_id, found);
            if let Found::Applied(id) = found {
                acks.push((m, Some(id)));
            }
        }
        self.applied_all(acks).await
    }

    async fn fail(&self, m: &Mutation, error: MutationError) -> Result<()> {
        let m = self.set_mutation_status(&m.id, Status::Failed, Some(error)).await?;
        self.emit(Event::Change { entities: vec![m.entity.clone()] });
        self.emit(Event::Mutation { status: "failed", mutation: m });
        Ok(())
    }

    /// The server accepted `m`. For an insert, the temporary row becomes the
    /// server's row in one step: on disk, in memory and in every queued
    /// mutation that names the temporary id.
    async fn applied(&self, m: &Mutation, server_id: Option<String>) -> Result<()> {
        self.applied_all(vec![(m.clone(), server_id)]).await
    }

    /// Several acknowledgements (a batch's), committed together: one
    /// transaction per run of acknowledgements that do not touch each other.
    async fn applied_all(&self, acks: Vec<(Mutation, Option<String>)>) -> Result<()> {
        let mut acks = acks;
        while !acks.is_empty() {
            let run = self.with_db(move |me, db| me.applied_run(db, acks)).await?;
            acks = run.left;
            self.emit(Event::Change { entities: run.entities });
            for m in run.done {
                self.emit(Event::Mutation { status: "applied", mutation: m });
            }
        }
        Ok(())
    }

    /// Commits the longest leading run of `acks` whose rows and dependent
    /// mutations are disjoint (each is planned from the state before the run).
    fn applied_run(&self, db: &mut Db, acks: Vec<(Mutation, Option<String>)>) -> Result<AckedRun> {
        struct Planned {
            m: Mutation,
            server_id: Option<String>,
            target: String,
            base_row: Option<BaseRow>,
            changed: Vec<Mutation>,
        }
        let mut plans: Vec<Planned> = Vec::new();
        let mut acks = acks.into_iter().peekable();
        {
            let st = self.inner.state.read().unwrap();
            let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
            let mut dependents: BTreeSet<String> = BTreeSet::new();
            while let Some((m, server_id)) = acks.peek() {
                let target = server_id.clone().unwrap_or_else(|| m.row_id.clone());
                // the server accepted the write: the stored row becomes what we sent,
                // until the server's own event replaces it (events of a
                // policy-governed entity may never come, see docs/compat.md)
                let base = st.replica.base(&m.entity, &target);
                let base_row = match (server_id, m.kind, base) {
                    (Some(sid), Kind::Insert, None) => {
                        let mut row = m.data.clone().unwrap_or_default();
                        row.insert("id".into(), Value::String(sid.clone()));
                        Some(BaseRow { seq: 0, data: Some(RowText::new(&row)) })
                    }
                    (None, Kind::Update, Some(BaseRow { seq, data: Some(data) })) => {
                        let mut row = data.parse();
                        for (f, v) in m.data.iter().flatten().filter(|(f, _)| *f != "id") {
                            row.insert(f.clone(), v.clone());
                        }
                        Some(BaseRow { seq: *seq, data: Some(RowText::new(&row)) })
                    }
                    (None, Kind::Delete, Some(b)) => Some(BaseRow { seq: b.seq, data: None }),
                    _ => None,
                };
                let changed: Vec<Mutation> = match server_id {
                    Some(sid) => {
                        st.queue.remapped(&m.entity, &m.row_id, sid).into_iter().filter(|c| c.id != m.id).collect()
                    }
                    None => Vec::new(),
                };
                let keys = [(m.entity.clone(), m.row_id.clone()), (m.entity.clone(), target.clone())];
                let overlaps = keys.iter().any(|k| touched.contains(k))
                    || changed.iter().any(|c| dependents.contains(&c.id))
                    || dependents.contains(&m.id);
                if overlaps && !plans.is_empty() {
                    break;
                }
                touched.extend(keys);
                dependents.extend(changed.iter().map(|c| c.id.clone()));
                let (m, server_id) = acks.next().unwrap();
                tracing::debug!(kind = ?m.kind, row = %target, stored = ?base_row.as_ref().map(|b| (b.seq, b.data.is_some())), "acknowledged");
                plans.push(Planned { m, server_id, target, base_row, changed });
            }
        }
        // persist, then change memory
        db.write(|w| {
            for p in &plans {
                w.delete_mutation(&p.m.id)?;
                if let (Some(sid), Kind::Insert) = (&p.server_id, p.m.kind) {
                    w.set_alias(&p.m.row_id, sid)?;
                }
                if let Some(row) = &p.base_row {
                    let (entity, id, seq) = (p.m.entity.clone(), p.target.clone(), row.seq);
                    w.effects(&[match &row.data {
                        Some(data) => Effect::Put { entity, id, seq, data: data.clone() },
                        None => Effect::Tombstone { entity, id, seq },
                    }])?;
                }
                for c in &p.changed {
                    w.save_mutation(c)?;
                }
            }
            Ok(())
        })?;
        let mut st = self.inner.state.write().unwrap();
        let mut entities: Vec<String> = Vec::new();
        let mut done = Vec::with_capacity(plans.len());
        for p in plans {
            let m = p.m;
            st.queue.remove(&m.id);
            if let (Some(sid), Kind::Insert) = (&p.server_id, m.kind) {
                st.aliases.insert(m.row_id.clone(), sid.clone());
            }
            for c in &p.changed {
                st.queue.replace(c.clone());
            }
            if let Some(row) = p.base_row {
                st.replica.put_base(&m.entity, &p.target, row);
            }
            let State { replica, queue, .. } = &mut *st;
            replica.refresh(&m.entity, &m.row_id, queue);
            if let Some(sid) = &p.server_id {
                replica.refresh(&m.entity, sid, queue);
            }
            for e in std::iter::once(&m.entity).chain(p.changed.iter().map(|c| &c.entity)) {
                if !entities.contains(e) {
                    entities.push(e.clone());
                }
            }
            for c in &p.changed {
                replica.refresh(&c.entity, &c.row_id, queue);
            }
            let mut m = m;
            if let Some(sid) = p.server_id {
                m.row_id = sid;
            }
            done.push(m);
        }
        self.refresh_counts(&mut st);
        Ok(AckedRun { done, left: acks.collect(), entities })
    }

    // ------------------------------------------------------------------ pull

    /// Pulls until the server says there is no more, bootstrapping first when
    /// some readable entity has no snapshot in the replica yet.
    async fn pull_to_head(&self) -> Result<()> {
        loop {
            match self.pull_pages().await {
                Err(Error::Resync { oldest_seq }) => {
                    if oldest_seq <= self.cursor() {
                        // the log ends before our cursor: it was renumbered
                        self.count_restart().await?;
                    }
                    let n = self.inner.resyncs_in_a_row.fetch_add(1, Ordering::SeqCst);
                    if n == 0 && self.resnapshot().await? {
                        continue;
                    }
                    self.reset_replica_inner("resync").await?;
                    if n >= 1 {
                        return Err(Error::Resync { oldest_seq });
                    }
                }
                other => return other,
            }
        }
    }

    /// The log no longer reaches our cursor (410), on the same server and
    /// for the same identity: the rows are stale, not wrong. Every covered
    /// entity is read again and swapped in whole, so readers keep seeing the
    /// old rows until the new ones are in. Entities only the log fills are
    /// emptied and replayed from 0, all in the same transaction. False when
    /// there is nothing to refresh (the caller starts over).
    async fn resnapshot(&self) -> Result<bool> {
        let (epoch, covered) = {
            let st = self.inner.state.read().unwrap();
            (self.inner.epoch.load(Ordering::SeqCst), st.covered.clone())
        };
        if covered.values().all(|head| *head == 0) {
            return Ok(false);
        }
        let token = self.session_token();
        let infos = self.inner.api.entities(token.as_deref()).await?;
        let wanted: Vec<_> = infos.into_iter().filter(|i| covered.get(&i.name).is_some_and(|head| *head > 0)).collect();
        self.set_phase(Phase::Bootstrapping, None, 0);
        let me = self.clone();
        let mut snap = snapshot::take(&self.inner.api, token.as_deref(), &wanted, true, &move |entity, rows, done| {
            me.emit(Event::Progress { entity: entity.to_string(), rows, done })
        })
        .await?;
        snap.log_only.extend(covered.into_iter().filter(|(_, head)| *head == 0).map(|(e, _)| e));
        self.settle_in_doubt(&snap, token.as_deref()).await?;
        let resume = if snap.log_only.is_empty() { Resume::Head } else { Resume::Replay };
        self.install_snapshot(snap, epoch, resume).await?;
        self.emit(Event::Resync { reason: "resync" });
        Ok(true)
    }

    /// Pulls pages until the head. Every page starts a little before the
    /// cursor, at the last events the replica took (its anchor): a log that
    /// no longer holds them was renumbered by a restart — between rounds or
    /// between two pages — and the replica is rebuilt before anything is
    /// applied.
    ///
    /// A pull from 0 replays the whole log (entities only the log fills):
    /// its pages are gathered and applied at once, when the head is reached,
    /// so a row that a later page deletes is never shown meanwhile.
    async fn pull_pages(&self) -> Result<()> {
        let mut first = true;
        let mut staged: Option<Replay> = None;
        loop {
            self.bootstrap_if_needed().await?;
            // the epoch is read with the cursor: both change together
            let (since, kept, epoch) = {
                let st = self.inner.state.read().unwrap();
                (st.cursor, st.anchor.clone(), self.inner.epoch.load(Ordering::SeqCst))
            };
            if let Some(at) = staged.as_ref().map(|r| r.at) {
                let page = self.inner.api.pull(self.session_token().as_deref(), at).await?;
                match self.stage(&mut staged, page).await {
                    None | Some(Ok(false)) => continue,
                    Some(done) => return done.map(drop),
                }
            }
            let token = self.session_token();
            // an anchor a page away is asked for again; without one (or too
            // far back) the last events we may read before the cursor are
            // learned as the next anchor
            let anchor = kept.as_ref().and_then(|a| a.near(since));
            let from = match &anchor {
                Some(a) => a.read_from(),
                None if first => since.saturating_sub(ANCHOR_SPAN),
                None => since,
            };
            let checking = std::mem::take(&mut first) || anchor.is_some();
            // streams opened before this request are vouched for by its answer
            let opened = self.inner.rt.opened.load(Ordering::SeqCst);
            tracing::debug!(since, from, checked = anchor.is_some(), "pull");
            // a 410 here is taken as for the cursor itself: at worst (the log
            // keeps the cursor but not the anchor, some 10,000 events behind
            // the head) one resnapshot too many
            let page = self.inner.api.pull_until(token.as_deref(), from, since, anchor.as_ref()).await?;
            if !page.has_more && page.cursor.last_seq < since {
                // the log ends before our cursor: it was renumbered (a 410
                // says the same for a cursor past the head + 1)
                self.reset_replica_inner("server").await?;
                continue;
            }
            // what the new events extend: the anchor as the log confirms it
            let mut base = kept.clone();
            if let Some(a) = &anchor {
                match a.check(&page.changes, from, page.cursor.last_seq, !page.has_more, since) {
                    Some(confirmed) => base = Some(confirmed),
                    None => {
                        if from == 0 {
                            if let Some(oldest_seq) = self.log_moved_on(token.as_deref(), since).await? {
                                return Err(Error::Resync { oldest_seq });
                            }
                        }
                        self.reset_replica_inner("server").await?;
                        continue;
                    }
                }
            }
            if checking {
                self.inner.stream_checked.fetch_max(opened, Ordering::SeqCst);
            }
            self.inner.resyncs_in_a_row.store(0, Ordering::SeqCst);
            let more = page.has_more;
            if since == 0 {
                staged = Some(Replay { events: Vec::new(), at: 0, epoch, expect: kept });
                match self.stage(&mut staged, page).await {
                    None | Some(Ok(false)) => continue,
                    Some(done) => return done.map(drop),
                }
            }
            self.apply_page(page, since, epoch, base).await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Adds a page to a replay from 0; at the head, applies the whole replay
    /// in one transaction and returns its outcome: false when the log turned
    /// out renumbered since the snapshot (the replica is reset to start over).
    async fn stage(&self, staged: &mut Option<Replay>, page: PullPage) -> Option<Result<bool>> {
        let replay = staged.as_mut()?;
        let (from, to) = (replay.at, page.cursor.last_seq);
        if to < from {
            return Some(Err(Error::Protocol(format!(
                "server moved the cursor backwards during a replay ({from} → {to})"
            ))));
        }
        replay.events.extend(page.changes.into_iter().filter(|c| c.seq > from && c.seq <= to));
        replay.at = to;
        if page.has_more {
            return None;
        }
        let Replay { events, at, epoch, expect } = staged.take()?;
        tracing::debug!(events = events.len(), at, epoch, "replay from 0 reached the head");
        // a replay from 0 reads the log from its start: it must hold the
        // events the snapshot's rows were read after
        if expect.is_some_and(|a| a.check(&events, 0, at, true, a.at()).is_none()) {
            return Some(self.reset_replica_inner("server").await.map(|()| false));
        }
        let anchor = Anchor::extended(None, &events, at);
        Some(self.apply_changes(events, Some((at, anchor)), epoch).await.map(|()| true))
    }

    /// Applies one page of changes and moves the cursor, in one transaction.
    /// `base`: the anchor the page's new events extend (`None`: one is
    /// learned from the whole page).
    async fn apply_page(&self, page: PullPage, since: u64, epoch: u64, base: Option<Anchor>) -> Result<()> {
        let PullPage { mut changes, cursor, .. } = page;
        if cursor.last_seq < since {
            return Err(Error::Protocol(format!("server moved the cursor backwards ({since} → {})", cursor.last_seq)));
        }
        // the page may start before the cursor (the anchor check)
        let anchor = Anchor::extended(base.as_ref(), &changes, cursor.last_seq);
        changes.retain(|c| c.seq > since && c.seq <= cursor.last_seq);
        self.apply_changes(changes, Some((cursor.last_seq, anchor)), epoch).await
    }

    /// Change events from a stream. The stream is a hint (not gap-free, not
    /// policy-filtered): a run of events that continues the cursor exactly
    /// and touches only entities everyone may read is applied as a pull page
    /// would be; anything else (a gap, a protected entity, an entity not
    /// bootstrapped yet) asks for a pull instead. Events at or below the
    /// cursor are duplicates.
    pub(crate) async fn apply_stream(&self, events: Vec<(u64, ChangeEvent)>) {
        let _sync = self.inner.sync.lock().await;
        let (floor, checked) =
            (self.inner.stream_floor.load(Ordering::SeqCst), self.inner.stream_checked.load(Ordering::SeqCst));
        let trusted = events.iter().all(|(connection, _)| (floor..=checked).contains(connection));
        let mut events: Vec<ChangeEvent> = events.into_iter().map(|(_, e)| e).collect();
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        let (run, pull, epoch, kept) = {
            let st = self.inner.state.read().unwrap();
            let usable = trusted && st.loaded && !st.quarantined && st.session.is_some();
            let mut next = st.cursor + 1;
            let mut run = Vec::new();
            let mut pull = false;
            for e in events {
                if e.seq < next {
                    continue;
                }
                if usable && e.seq == next && st.open.contains(&e.entity) && st.covered.contains_key(&e.entity) {
                    next += 1;
                    run.push(e);
                } else {
                    pull = true;
                    break;
                }
            }
            (run, pull, self.inner.epoch.load(Ordering::SeqCst), st.anchor.clone())
        };
        let mut pull = pull;
        tracing::debug!(run = run.len(), pull, "stream events");
        if let Some(last) = run.last() {
            let at = Some((last.seq, Anchor::extended(kept.as_ref(), &run, last.seq)));
            if self.apply_changes(run, at, epoch).await.is_err() {
                pull = true; // the pull reports the failure, with backoff
            }
        }
        if pull {
            self.kick();
        }
    }

    /// Merges server changes (and the new cursor with the event it was
    /// reached by, if any) durably, then in memory. An insert event that
    /// names one of our own inserts in doubt (by the nonce sent as its `id`)
    /// acknowledges that insert first, so its row is never shown twice.
    pub(crate) async fn apply_changes(
        &self,
        changes: Vec<ChangeEvent>,
        cursor: Option<(u64, Option<Anchor>)>,
        epoch: u64,
    ) -> Result<()> {
        // our inserts in doubt this batch reports applied (acknowledged
        // first), and those parked under another identity (temp → server id)
        let mut own: Vec<(Mutation, Option<String>)> = Vec::new();
        let mut parked: Vec<(String, String)> = Vec::new();
        {
            let st = self.inner.state.read().unwrap();
            for c in &changes {
                if let Some(m) = reconcile::own_insert(&st.queue, c) {
                    own.push((m.clone(), Some(c.row_id.clone())));
                } else if let Some(temp) = reconcile::nonce(c).filter(|t| st.parked_in_doubt.contains(*t)) {
                    parked.push((temp.to_string(), c.row_id.clone()));
                }
            }
        }
        if !own.is_empty() {
            tracing::debug!("adopt {:?}", own.iter().map(|(m, s)| (m.row_id.clone(), s.clone())).collect::<Vec<_>>());
            self.applied_all(own).await?;
        }
        let (mut effects, missing) = {
            let st = self.inner.state.read().unwrap();
            // an insert or update of a row the snapshot holds, from before the
            // snapshot's head: superseded. Anything else is applied as it
            // comes: a row deleted before the snapshot must end as a tombstone,
            // so that an in-doubt insert found in the log is not stored again.
            let snapshot_holds = |c: &ChangeEvent| {
                c.kind != Kind::Delete
                    && st.covered.get(&c.entity).is_some_and(|head| c.seq <= *head)
                    && st.replica.base(&c.entity, &c.row_id).is_some()
            };
            if changes.iter().any(snapshot_holds) {
                let fresh: Vec<ChangeEvent> = changes.iter().filter(|c| !snapshot_holds(c)).cloned().collect();
                st.replica.plan(&fresh)
            } else {
                st.replica.plan(&changes)
            }
        };
        if !missing.is_empty() {
            let token = self.session_token();
            for m in missing {
                if let Some(mut row) = self.inner.api.get(token.as_deref(), &m.entity, &m.id).await? {
                    row.insert("id".into(), Value::String(m.id.clone()));
                    effects.push(Effect::Put { entity: m.entity, id: m.id, seq: m.seq, data: RowText::new(&row) });
                }
            }
        }
        tracing::debug!(changes = changes.len(), effects = effects.len(), cursor = ?cursor.as_ref().map(|c| c.0), "apply");
        let entities = self
            .with_db(move |me, db| {
                if me.inner.epoch.load(Ordering::SeqCst) != epoch {
                    tracing::debug!("changes dropped: the replica was reset meanwhile");
                    return Ok(Vec::new()); // reset meanwhile: these changes belong to the old replica
                }
                let (cursor, anchor) = match cursor {
                    Some((c, a)) => (Some(c), a),
                    None => (None, None),
                };
                db.write(|w| {
                    w.effects(&effects)?;
                    for (temp, server) in &parked {
                        w.set_alias(temp, server)?;
                    }
                    if let Some(c) = cursor {
                        w.set_cursor(c)?;
                    }
                    if let Some(a) = &anchor {
                        w.set_meta("anchor", &serde_json::to_string(a)?)?;
                    }
                    Ok(())
                })?;
                let mut st = me.inner.state.write().unwrap();
                if let Some(c) = cursor {
                    st.cursor = c;
                }
                if anchor.is_some() {
                    st.anchor = anchor;
                }
                for (temp, server) in parked {
                    st.parked_in_doubt.remove(&temp);
                    st.aliases.insert(temp, server);
                }
                let State { replica, queue, witness, .. } = &mut *st;
                let touched = replica.commit(&effects, queue);
                if queue.in_doubt() > 0 {
                    witness.record(&changes);
                } else {
                    witness.clear();
                }
                // every thousand events, tombstones the cursor has passed go
                let pruned = me.inner.pruned_at.load(Ordering::SeqCst);
                let gone = match cursor {
                    Some(c) if c.abs_diff(pruned) >= PRUNE_EVERY => {
                        me.inner.pruned_at.store(c, Ordering::SeqCst);
                        replica.prune_tombstones(c)
                    }
                    _ => Vec::new(),
                };
                me.refresh_counts(&mut st);
                drop(st);
                if !gone.is_empty() {
                    db.write(|w| gone.iter().try_for_each(|(e, id)| w.delete_row(e, id)))?;
                }
                Ok(touched)
            })
            .await?;
        if !entities.is_empty() {
            self.emit(Event::Change { entities });
        }
        Ok(())
    }

    async fn bootstrap_if_needed(&self) -> Result<()> {
        let (epoch, covered) = {
            let st = self.inner.state.read().unwrap();
            (self.inner.epoch.load(Ordering::SeqCst), st.covered.clone())
        };
        if self.inner.complete_in_epoch.load(Ordering::SeqCst) == epoch {
            return Ok(());
        }
        let token = self.session_token();
        let infos = match self.inner.api.entities(token.as_deref()).await {
            Ok(i) => i,
            // a server without a manifest route: replaying the log is all we can do
            Err(Error::Http { status: 404, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        self.inner.state.write().unwrap().open =
            infos.iter().filter(|i| !i.has_policy).map(|i| i.name.clone()).collect();
        let wanted: Vec<_> = infos.into_iter().filter(|i| !covered.contains_key(&i.name)).collect();
        if wanted.is_empty() {
            self.inner.complete_in_epoch.store(epoch, Ordering::SeqCst);
            return Ok(());
        }
        self.set_phase(Phase::Bootstrapping, None, 0);
        let me = self.clone();
        let snap = snapshot::take(&self.inner.api, token.as_deref(), &wanted, true, &move |entity, rows, done| {
            me.emit(Event::Progress { entity: entity.to_string(), rows, done })
        })
        .await?;
        self.settle_in_doubt(&snap, token.as_deref()).await?;
        if let Some(now) = self.install_snapshot(snap, epoch, Resume::Follow).await? {
            self.inner.complete_in_epoch.store(now, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Replaces the snapshot's entities wholesale, in one transaction with
    /// the cursor, which goes where `resume` says. Returns the replica
    /// generation it leaves (`None`: dropped, the replica was reset first).
    /// A cursor that moves starts a new generation, so that work planned
    /// from the old cursor is refused even if its future was dropped
    /// mid-way and the lock it held released early (stop() aborts the loop).
    async fn install_snapshot(&self, snap: Snapshot, epoch: u64, resume: Resume) -> Result<Option<u64>> {
        let mut entities: Vec<String> = snap.rows.keys().cloned().collect();
        if resume == Resume::Replay {
            entities.extend(snap.log_only.iter().cloned());
        }
        let changed = entities.clone();
        tracing::debug!(?entities, head = snap.head, log_only = ?snap.log_only, ?resume, "install snapshot");
        let snap_anchor = snap.anchor.clone();
        let installed = self
            .with_db(move |me, db| {
                if me.inner.epoch.load(Ordering::SeqCst) != epoch {
                    tracing::debug!("snapshot dropped: the replica was reset meanwhile");
                    return Ok(None);
                }
                let (cursor, mut covered, moved) = {
                    let st = me.inner.state.read().unwrap();
                    let cursor = match resume {
                        Resume::Head => snap.head,
                        Resume::Replay => 0,
                        // a replica that follows the log keeps its cursor; so does a fresh
                        // one with an entity only the log can fill (it replays from 0)
                        Resume::Follow if st.cursor == 0 && snap.log_only.is_empty() => snap.head,
                        Resume::Follow => st.cursor,
                    };
                    (cursor, st.covered.clone(), cursor != st.cursor)
                };
                covered.extend(snap.rows.keys().map(|e| (e.clone(), snap.head)));
                covered.extend(snap.log_only.iter().map(|e| (e.clone(), 0)));
                let mut tables: Tables = snap
                    .rows
                    .into_iter()
                    .map(|(entity, rows)| {
                        let rows =
                            rows.into_iter().map(|(id, r)| (id, BaseRow { seq: 0, data: Some(RowText::new(&r)) }));
                        (entity, rows.collect())
                    })
                    .collect();
                if resume == Resume::Replay {
                    // refilled by the replay from 0
                    tables.extend(snap.log_only.iter().map(|e| (e.clone(), BTreeMap::new())));
                }
                db.write(|w| {
                    for (entity, rows) in &tables {
                        w.clear_entity(entity)?;
                        let effects: Vec<Effect> = rows
                            .iter()
                            .filter_map(|(id, b)| {
                                let data = b.data.clone()?;
                                Some(Effect::Put { entity: entity.clone(), id: id.clone(), seq: 0, data })
                            })
                            .collect();
                        w.effects(&effects)?;
                    }
                    w.set_cursor(cursor)?;
                    w.set_meta("covered", &serde_json::to_string(&covered)?)?;
                    if moved || cursor == 0 {
                        // the rows' own event: the next pull (or the replay from
                        // 0) must find it, or the log was renumbered meanwhile
                        w.set_meta("anchor", &serde_json::to_string(&snap_anchor)?)?;
                    }
                    Ok(())
                })?;
                let prepared: BTreeMap<String, Replacement> = {
                    let st = me.inner.state.read().unwrap();
                    tables.into_iter().map(|(e, rows)| (e.clone(), st.replica.prepare(&e, rows))).collect()
                };
                let (replaced, now) = {
                    let mut st = me.inner.state.write().unwrap();
                    let now = if moved { me.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1 } else { epoch };
                    st.cursor = cursor;
                    st.covered = covered;
                    if moved || cursor == 0 {
                        st.anchor = snap_anchor;
                    }
                    let State { replica, queue, .. } = &mut *st;
                    let replaced = replica.replace_entities(prepared, queue);
                    me.refresh_counts(&mut st);
                    (replaced, now)
                };
                drop(replaced);
                Ok(Some(now))
            })
            .await?;
        if installed.is_some() {
            self.emit(Event::Change { entities: changed });
        }
        Ok(installed)
    }

    // ----------------------------------------------------------------- reset

    /// Drops every row and tombstone (memory and disk), cursor 0. Queued
    /// writes stay. Does not pull.
    pub async fn reset_replica(&self) -> Result<()> {
        self.check_open()?;
        self.load().await?;
        self.reset_replica_inner("reset").await
    }

    async fn reset_replica_inner(&self, reason: &'static str) -> Result<()> {
        tracing::debug!("reset {reason}");
        let restarted = reason == "server";
        if restarted {
            self.inner.boot_check_due.store(true, Ordering::SeqCst);
            self.forget_streams();
        }
        let entities = self
            .with_db(move |me, db| {
                let server_gen = me.inner.state.read().unwrap().server_gen + u64::from(restarted);
                db.write(|w| {
                    w.clear_rows()?;
                    w.set_cursor(0)?;
                    w.set_meta("covered", "[]")?;
                    w.set_meta("anchor", "null")?;
                    if restarted {
                        // the boot check learns the new boot afresh
                        w.set_meta("server_boot", "")?;
                    }
                    w.set_meta("server_gen", &server_gen.to_string())
                })?;
                let mut st = me.inner.state.write().unwrap();
                me.inner.epoch.fetch_add(1, Ordering::SeqCst); // see apply_session
                let entities = st.replica.entities();
                st.replica.clear();
                st.cursor = 0;
                st.anchor = None;
                st.server_gen = server_gen;
                if restarted {
                    st.server_boot = None;
                }
                st.covered.clear();
                let State { replica, queue, .. } = &mut *st;
                replica.rebuild_overlay(queue);
                me.refresh_counts(&mut st);
                Ok(entities)
            })
            .await?;
        if reason != "reset" {
            self.emit(Event::Resync { reason });
        }
        self.emit(Event::Change { entities });
        Ok(())
    }

    /// Counts a restart noticed without a reset (a 410 for a cursor past the
    /// head resnapshots instead), so inserts in doubt from before it are not
    /// looked for in the renumbered log.
    async fn count_restart(&self) -> Result<()> {
        self.forget_streams();
        self.with_db(|me, db| {
            let server_gen = me.inner.state.read().unwrap().server_gen + 1;
            db.write(|w| w.set_meta("server_gen", &server_gen.to_string()))?;
            me.inner.state.write().unwrap().server_gen = server_gen;
            Ok(())
        })
        .await
    }

    // ------------------------------------------------------------- hydration

    /// Seeds rows and the cursor (from `get_server_data`). Before `start()` the
    /// data is applied when the database is loaded; the hydrated entities are
    /// then not bootstrapped again.
    pub async fn hydrate(&self, h: Hydration) -> Result<()> {
        self.check_open()?;
        for (entity, rows) in &h.entities {
            check_entity(entity)?;
            for r in rows {
                match r.get("id") {
                    Some(Value::String(id)) if !id.is_empty() => {}
                    _ => return Err(Error::InvalidArg(format!("hydration row of {entity} has no string id"))),
                }
            }
        }
        if !self.inner.state.read().unwrap().loaded {
            self.inner.state.write().unwrap().pending_hydration = Some(h);
            return Ok(());
        }
        self.apply_hydration(h).await
    }

    async fn apply_hydration(&self, h: Hydration) -> Result<()> {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rows: BTreeMap<String, BTreeMap<String, Arc<Row>>> = BTreeMap::new();
        for (entity, list) in h.entities {
            let table = rows.entry(entity).or_default();
            for r in list {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                table.insert(id, Arc::new(r));
            }
        }
        // the hydration's cursor replaces ours; replaying from it is harmless
        let head = h.cursor.last_seq;
        let snap = Snapshot { head, rows, log_only: Vec::new(), anchor: None };
        self.install_snapshot(snap, epoch, Resume::Head).await.map(drop)
    }
}

/// Rows of `entities` and a cursor they are consistent with: the log head is
/// read first, the rows after it, so pulling from the cursor replays whatever
/// changed while the rows were read.
pub async fn get_server_data(
    base_url: &str,
    entities: &[String],
    token: Option<&str>,
    ca: Option<&str>,
) -> Result<Hydration> {
    let api = Api::new(base_url, Net::shared(ca)?)?;
    for e in entities {
        check_entity(e)?;
    }
    let infos: Vec<crate::api::EntityInfo> =
        entities.iter().map(|name| crate::api::EntityInfo { name: name.clone(), has_policy: true }).collect();
    let snap = snapshot::take(&api, token, &infos, false, &|_, _, _| {}).await?;
    Ok(Hydration {
        entities: snap
            .rows
            .into_iter()
            .map(|(e, rows)| (e, rows.into_values().map(|r| (*r).clone()).collect()))
            .collect(),
        cursor: Cursor { last_seq: snap.head },
    })
}
