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

mod acks;
mod barriers;
mod boot;
mod bootstrap;
mod catchup;
mod lifecycle;
mod live;
mod outbox;
mod query;
mod reads;
mod reset;
mod session;
mod stream;

pub use bootstrap::get_server_data;
use lifecycle::Wake;
pub(crate) use session::fingerprint;
use session::{split_queue, token_key};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::api::Api;
use crate::config::{Config, Which};
use crate::db::{Db, ListParts, Stored};
use crate::error::{Error, Result};
use crate::events::{ErrorInfo, Event, Listener, Phase, SyncStatus};
use crate::io::{random_suffix, Io};
use crate::net::Net;
use crate::protocol::{ChangeEvent, Hydration, Session};
use crate::queue::{Mutation, MutationError, Queue};
use crate::realtime::Realtime;
use crate::reconcile;
use crate::restart::{Anchor, Boot};
use crate::schema::Schema;
use crate::view::View;

/// Why the server refused a write, as kept on the failed mutation.
fn refusal(e: &Error) -> MutationError {
    MutationError { code: e.server_code().unwrap_or(e.code()).to_string(), message: e.to_string(), status: e.status() }
}

/// Tombstones are pruned each time the cursor has moved this many events.
const PRUNE_EVERY: u64 = 1000;

/// Writes per `/api/batch` request, and its body size (the server takes 10 MiB).
const BATCH_MAX: usize = 1000;
const BATCH_BYTES: usize = 4 << 20;

const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A 429 without `Retry-After` (the real server's plugin limiter) waits for
/// the limiter's window to pass: 60 s (PROTOCOL §2.5), not a blind backoff
/// that would spend more of the budget being refused.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// How often the server's boot time is checked (also after errors and reconnects).
const BOOT_CHECK_EVERY: Duration = Duration::from_secs(30);
/// The same while polling, with no stream whose drop would tell of a
/// restart. A poll every second plus this stays within a production
/// server's 100 requests a minute per user (PROTOCOL §2.5).
const POLL_BOOT_CHECK_EVERY: Duration = Duration::from_secs(5);
/// With a live stream, pull at least this often anyway: streams are hints
/// and may silently miss events (§10.6).
const SAFETY_PULL: Duration = Duration::from_secs(30);

/// How often, at most, a round confirms its verified session again: the
/// server answers a revoked or expired token as anonymous, and would take
/// writes to entities no policy guards as anonymous ones. A refused write
/// confirms it at once.
const SESSION_RECHECK: Duration = Duration::from_secs(10);

struct State {
    /// The rows and the queue of local writes shown on top of them.
    view: View,
    cursor: u64,
    /// Entities whose full snapshot is in the replica (the rest need
    /// bootstrapping), each with the log head its snapshot was read after:
    /// the snapshot already holds every change up to there, so replaying the
    /// log (a replica that also follows log-only entities starts from 0)
    /// skips them. 0 for an entity only the log fills.
    covered: BTreeMap<String, u64>,
    /// Entities only the log fills whose rows the next replay from 0
    /// replaces whole, in the transaction that applies it (kept in the file
    /// as `REPLACED_BY_REPLAY`): until then they show what they held.
    replaced_by_replay: BTreeSet<String>,
    /// Entities no policy governs: everyone may read every row, so their
    /// stream events can be applied as they arrive (the rest are confirmed by
    /// a pull, which the server filters).
    open: BTreeSet<String>,
    /// Each entity's fields, from the manifest (kept in the file): writes are
    /// checked against them and rows from the server read back into their
    /// types. `None` until a manifest was first read.
    schema: Option<Schema>,
    session: Option<Session>,
    /// Identity the stored rows belong to.
    identity: String,
    /// Fingerprint of the token that `session` was resolved with.
    verified_fp: Option<String>,
    /// That token. Every request that reads into the replica or sends a
    /// queued write uses it, never a newer unverified one, so a token
    /// change mid-round cannot mix identities.
    verified_token: Option<String>,
    /// When (engine clock, ms) the server last confirmed `session` for that
    /// token: a token revoked meanwhile resolves as anonymous, which is
    /// looked for at least every `SESSION_RECHECK`.
    session_checked_at: u64,
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
    /// Our inserts acknowledged before their event was taken, by nonce →
    /// (entity, the cursor then): the log must bring each after that cursor
    /// (see `catchup`). Only for entities no policy governs, whose events
    /// every reader is shown.
    awaited: BTreeMap<String, (String, u64)>,
    /// Restarts of the server noticed so far: an insert sent in an earlier
    /// lifetime cannot be looked for in today's log.
    server_gen: u64,
    loaded: bool,
    /// Entities whose rows the load handed to [`ListParts`], each with its
    /// version while its visible list was still those rows.
    preloaded: BTreeMap<String, u64>,
    pending_hydration: Option<Hydration>,
    status: SyncStatus,
}

impl State {
    /// The status as it stands: the loop's phase with the queue's counts
    /// and the cursor now.
    fn status(&self) -> SyncStatus {
        let (pending, failed) = self.view.counts();
        SyncStatus { pending, failed, cursor: self.cursor, ..self.status.clone() }
    }
}

/// The engine's state. What every part shares is here (configuration,
/// the database, the in-memory `state`, the locks and the epoch); what one
/// part owns is in that part's own struct (`life`, `watch`, `outbox`,
/// `catchup`), defined in its file.
struct Inner {
    cfg: Config,
    rt: Realtime,
    io: Arc<dyn Io>,
    /// Every record the engine's own tasks log is inside it: several engines
    /// in one process are told apart by their replica file's name, and a
    /// logger finds its engine's records by `log_id`, a field of the span.
    span: tracing::Span,
    log_id: u64,
    api: Api,
    db: Mutex<Option<Db>>,
    /// The read-only connection queries run on (`query`), and what
    /// interrupts the one running.
    reader: Mutex<Option<crate::sql::Reader>>,
    interrupt: Arc<Mutex<Option<rusqlite::InterruptHandle>>>,
    state: RwLock<State>,
    token: RwLock<Option<String>>,
    listener: RwLock<Option<Listener>>,
    /// One round at a time (session, boot check, sending, pulling). The
    /// stream applier does not take it: it commits only where nothing was
    /// committed since it planned (`Expect`).
    sync: tokio::sync::Mutex<()>,
    /// Bumped by every reset, so work started before it is discarded.
    epoch: AtomicU64,
    /// Bumped by every commit of server state (changes, acknowledgements,
    /// snapshots): some move neither the cursor nor the epoch (an
    /// acknowledgement, a page that only confirms the anchor), so stream
    /// events planned before one are planned again.
    commits: AtomicU64,
    life: lifecycle::Life,
    watch: boot::Watch,
    outbox: outbox::Outbox,
    catchup: catchup::CatchUp,
    /// Callers waiting for a write to settle.
    waiters: barriers::Waiters,
    /// What `diagnostics()` reports (monotonic counters).
    counters: crate::diagnostics::Counters,
    /// The epoch in which every manifest entity was found covered: the
    /// manifest is read once per replica generation, not on every poll.
    complete_in_epoch: AtomicU64,
    /// Where the first load hands the rows as it reads them (see `reads`).
    list_parts: Mutex<Option<ListParts>>,
}

/// `meta` key of `State::replaced_by_replay` (a JSON array).
const REPLACED_BY_REPLAY: &str = "replaced_by_replay";

/// Where the cursor goes when a snapshot is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Keep following the log from our cursor (from the head for a fresh replica).
    Follow,
    /// From the head the snapshot was read after.
    Head,
    /// From 0: entities only the log fills are emptied and replayed.
    Replay,
    /// A hydration: from its head for a fresh replica; else the replica
    /// keeps its cursor (the entities not hydrated are only as new as it),
    /// and one that moved past the head meanwhile refuses it.
    Hydrate,
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
    /// Events read so far, by entity (for progress).
    counts: BTreeMap<String, usize>,
    /// The last seq read.
    at: u64,
    /// The replica generation it was started in.
    epoch: u64,
    /// The event the snapshot's rows were read after: the replay must hold
    /// it, or the log was renumbered since the rows were read.
    expect: Option<Anchor>,
}

/// A sync engine for one server and one local database.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// The stored `covered` map; a list (schema v1/v2 before snapshot heads)
/// means heads unknown, which replays everything as before.
pub(crate) fn parse_covered(text: &str) -> Result<BTreeMap<String, u64>> {
    match serde_json::from_str::<Value>(text)? {
        Value::Array(names) => Ok(names.iter().filter_map(Value::as_str).map(|n| (n.to_string(), 0)).collect()),
        other => Ok(serde_json::from_value(other)?),
    }
}

impl Engine {
    pub fn new(cfg: Config) -> Result<Engine> {
        let io = match &cfg.io {
            Some(io) => io.clone(),
            None => Net::shared(cfg.ca.as_deref(), cfg.timeouts)?,
        };
        let api = Api::new(&cfg.base_url, io.clone())?;
        if let Some(ca) = &cfg.ca {
            crate::tls::check_ca(ca)?;
        }
        if cfg.app_name.is_empty() {
            return Err(Error::InvalidArg("appName must not be empty".into()));
        }
        let token = cfg.token.clone().filter(|t| !t.is_empty());
        let fp = fingerprint(token.as_deref());
        let status = SyncStatus {
            phase: Phase::Stopped,
            transport: cfg.transport.map_or("auto", Which::name),
            cursor: 0,
            pending: 0,
            failed: 0,
            attempts: 0,
            last_error: None,
            last_synced_at: None,
            has_synced: false,
            rate_limited_until: None,
        };
        let state = State {
            view: View::default(),
            cursor: 0,
            covered: BTreeMap::new(),
            replaced_by_replay: BTreeSet::new(),
            open: BTreeSet::new(),
            schema: None,
            session: None,
            identity: String::new(),
            verified_fp: None,
            verified_token: None,
            session_checked_at: 0,
            queue_key: token_key(&fp),
            quarantined: false,
            server_boot: None,
            anchor: None,
            awaited: BTreeMap::new(),
            server_gen: 0,
            aliases: Default::default(),
            parked_in_doubt: Default::default(),
            witness: Default::default(),
            loaded: false,
            preloaded: BTreeMap::new(),
            pending_hydration: None,
            status,
        };
        let first = cfg.transport.unwrap_or_else(Which::best);
        let replica = cfg.db_path.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        // `id` routes the records to this engine's `logger` (see the binding)
        static IDS: AtomicU64 = AtomicU64::new(1);
        let id = IDS.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("engine", id, replica = replica.as_deref().unwrap_or(":memory:"));
        Ok(Engine {
            inner: Arc::new(Inner {
                span,
                log_id: id,
                rt: Realtime::new(format!("c_{}_{}", io.now_ms(), random_suffix(&*io)), first, io.now_ms()),
                cfg,
                io,
                api,
                db: Mutex::new(None),
                reader: Mutex::new(None),
                interrupt: Default::default(),
                state: RwLock::new(state),
                token: RwLock::new(token),
                listener: RwLock::new(None),
                sync: tokio::sync::Mutex::new(()),
                epoch: AtomicU64::new(0),
                commits: AtomicU64::new(0),
                life: Default::default(),
                watch: Default::default(),
                outbox: Default::default(),
                catchup: Default::default(),
                counters: Default::default(),
                waiters: Default::default(),
                complete_in_epoch: AtomicU64::new(u64::MAX),
                list_parts: Mutex::new(None),
            }),
        })
    }

    /// The span every record of this engine is logged in; a caller that
    /// drives the engine from its own tasks runs them inside it.
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// The `id` field of [`Engine::span`], unique in the process.
    pub fn log_id(&self) -> u64 {
        self.inner.log_id
    }

    /// Logs `message` at `warn` as this engine's (the binding's notice of
    /// an `error` event nobody listens for).
    pub fn warn(&self, message: &str) {
        self.inner.span.in_scope(|| tracing::warn!("{message}"));
    }

    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    pub fn set_listener(&self, listener: Option<Listener>) {
        *self.inner.listener.write() = listener;
    }

    /// Tells the listener, and counts and logs what the event reports.
    pub(crate) fn emit(&self, ev: Event) {
        self.inner.counters.saw(&ev, self.now_ms());
        self.inner.waiters.saw(&ev);
        crate::diagnostics::log(&ev);
        let l = self.inner.listener.read().clone();
        if let Some(l) = l {
            l(ev);
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.life.closed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The wall clock, as the engine's [`Io`] tells it.
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.io.now_ms()
    }

    /// Runs `f` with the open database on a blocking thread.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine, &mut Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(move |me| me.with_db_here(f)).await
    }

    /// Runs `f` on a blocking thread (on this one where the engine's `Io` says
    /// so: a simulation), inside the engine's span: the blocking pool's
    /// threads are outside it, and its records are told apart by it.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> Result<T> + Send + 'static) -> Result<T> {
        self.check_open()?;
        let me = self.clone();
        let span = self.inner.span.clone();
        let work = move || span.in_scope(|| f(&me));
        if self.inner.io.inline_db() {
            return work();
        }
        tokio::task::spawn_blocking(work).await.map_err(|e| Error::Storage(format!("database task failed: {e}")))?
    }

    /// Runs `f` with the open database on the calling thread: only for a
    /// short read that a synchronous call needs (`hydrate`).
    fn with_db_here<T>(&self, f: impl FnOnce(&Engine, &mut Db) -> Result<T>) -> Result<T> {
        self.in_transaction(self.inner.db.lock(), f)
    }

    /// Runs `f` in one transaction on the database `guard` holds (opened
    /// first if it is not).
    fn in_transaction<T>(
        &self,
        mut guard: parking_lot::MutexGuard<'_, Option<Db>>,
        f: impl FnOnce(&Engine, &mut Db) -> Result<T>,
    ) -> Result<T> {
        // work queued before a close began (a stream's, a write's) must
        // not open the file again once it is let go
        self.check_open()?;
        if guard.is_none() {
            *guard = Some(Db::open(self.inner.cfg.db_path.as_deref())?);
        }
        let db = guard.as_mut().expect("opened above");
        // one transaction, which also stores the overlay entries the work
        // changed: a reader of the file (a query, the entity views) sees
        // the rows and the pending writes shown on them in step
        let outcome = db.batch(
            |db| f(self, db),
            |db| {
                let changes = {
                    let mut st = self.inner.state.write();
                    // before the file is loaded memory's overlay is not the file's
                    if !st.loaded {
                        return Ok(());
                    }
                    st.view.take_overlay_changes()
                };
                if changes.is_empty() {
                    return Ok(());
                }
                db.write(|w| w.overlay(&changes))
            },
        );
        outcome.unwrap_or_else(|e| {
            // memory may show what the file does not hold: read it again,
            // and store the whole overlay with the next transaction
            tracing::error!(error = %e, "a transaction failed to commit; the replica is read again from the file");
            self.inner.state.write().view.overlay_all_changed();
            match self.read_stored(db, true) {
                Ok(()) => self.emit(Event::Change { entities: self.entities() }),
                Err(again) => tracing::error!(error = %again, "the replica file cannot be read again"),
            }
            Err(e)
        })
    }

    /// Opens the database and loads it into memory, once; then stores a
    /// hydration made before (see `hydrate`).
    async fn load(&self) -> Result<()> {
        if !self.inner.state.read().loaded {
            self.load_stored(false).await?;
        }
        self.store_hydration().await
    }

    /// Reads the file into memory, once (`again`: once more, to show what
    /// it holds after a refused hydration).
    async fn load_stored(&self, again: bool) -> Result<()> {
        self.with_db(move |me, db| me.read_stored(db, again)).await?;
        let entities = self.entities();
        if !entities.is_empty() {
            self.emit(Event::Change { entities });
        }
        Ok(())
    }

    /// The body of [`Engine::load_stored`], with the database held.
    fn read_stored(&self, db: &mut Db, again: bool) -> Result<()> {
        if self.inner.state.read().loaded && !again {
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
        let replaced_by_replay: BTreeSet<String> =
            db.meta(REPLACED_BY_REPLAY)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let fp = fingerprint(self.inner.token.read().as_deref());
        // rows go to a reader as they are read only on the first load, and
        // only when they are this token's to show
        let parts =
            if again || stored_fp.as_deref() != Some(fp.as_str()) { None } else { self.inner.list_parts.lock().take() };
        let Stored { rows, mutations } = db.load(parts.as_ref())?;
        let handed: Vec<String> =
            parts.map_or_else(Vec::new, |p| rows.rows.keys().filter(|e| p.wants(e)).cloned().collect());
        let server_boot = db.meta("server_boot")?.as_deref().and_then(Boot::parse);
        let anchor = db.meta("anchor")?.and_then(|t| serde_json::from_str::<Option<Anchor>>(&t).ok()).flatten();
        let awaited = db.awaited()?;
        let server_gen = db.meta("server_gen")?.and_then(|t| t.parse().ok()).unwrap_or(0);
        let schema: Option<Schema> = db.meta("schema")?.and_then(|t| serde_json::from_str(&t).ok());
        if let Some(schema) = &schema {
            // the views of this manifest, with the indexes asked for now
            crate::sql::define(db, schema, &self.inner.cfg.indexes)?;
        }
        let aliases = db.aliases(self.now_ms())?.into_iter().collect();
        let cursor = db.cursor()?;
        // Rows stored under another token stay hidden until /api/auth/me
        // says the new token is the same identity.
        let same_token = stored_fp.as_deref() == Some(fp.as_str()) || (rows.rows.is_empty() && cursor == 0);
        let queue_key = if same_token && !identity.is_empty() { identity.clone() } else { token_key(&fp) };
        let (mine, parked_in_doubt) = split_queue(mutations, &queue_key);
        let mut view = View::new(same_token.then_some(rows), Queue::new(mine));
        let mut st = self.inner.state.write();
        if let Some(h) = &st.pending_hydration {
            // shown since hydrate(), and stored next: never hidden meanwhile
            view.show(bootstrap::hydrated_tables(h));
        }
        st.identity = identity;
        st.server_boot = server_boot;
        st.anchor = anchor;
        st.awaited = awaited;
        st.server_gen = server_gen;
        st.schema = schema;
        st.aliases = aliases;
        st.parked_in_doubt = parked_in_doubt;
        st.cursor = cursor;
        st.covered = covered;
        st.replaced_by_replay = replaced_by_replay;
        st.queue_key = queue_key;
        st.quarantined = !same_token;
        st.view.take_over(view);
        st.preloaded =
            handed.into_iter().filter_map(|e| st.view.replica().loaded_version(&e).map(|v| (e, v))).collect();
        st.loaded = true;
        drop(st);
        // the entity views show no rows held back (see `sql`)
        db.write(|w| w.set_meta(crate::sql::ROWS_HIDDEN, if same_token { "0" } else { "1" }))?;
        Ok(())
    }

    /// Says until when (Unix ms) the server's rate limit holds the engine
    /// back (`None`: it does not).
    fn set_limited(&self, until: Option<u64>) {
        let status = {
            let mut st = self.inner.state.write();
            if st.status.rate_limited_until == until {
                return;
            }
            st.status.rate_limited_until = until;
            st.status()
        };
        self.emit(Event::Status(status));
    }

    fn set_phase(&self, phase: Phase, error: Option<&Error>, attempts: u32) {
        let status = {
            let mut st = self.inner.state.write();
            let changed = st.status.phase != phase
                || st.status.attempts != attempts
                || error.map(ErrorInfo::from) != st.status.last_error && error.is_some();
            st.status.phase = phase;
            st.status.attempts = attempts;
            if let Some(e) = error {
                st.status.last_error = Some(e.into());
            }
            let recovered = phase == Phase::Idle && st.status.last_error.is_some();
            if phase == Phase::Idle {
                // a round went through (it set `last_synced_at`): what failed before is over
                st.status.last_error = None;
                st.status.rate_limited_until = None;
            }
            let changed = changed || recovered;
            if !changed {
                return;
            }
            st.status()
        };
        self.emit(Event::Status(status));
    }
}
