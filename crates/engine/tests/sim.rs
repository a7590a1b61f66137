//! Deterministic simulation. Three engines of two users run against the dev
//! server's in-memory twin (`pylon_devserver::Local`: the same change log,
//! 410 rules, restarts that renumber the log, row policies and faults), on
//! tokio's paused clock and one thread. Every choice is drawn from the case:
//! the operations, the network's latency and losses, the faults, the crash
//! points, and the engines' own chance (ids, backoff jitter). SQLite stays a
//! real file per engine; a crash drops an engine wherever it waits and
//! reopens it from that file.
//!
//! Checked at every store notification: no insert shown twice, no row whose
//! delete resolved shown again. At every quiet point: each replica equals
//! what its identity may read, with its cursor at the head, and listeners
//! heard of every change. At the end: every resolved write is on the server
//! exactly once, no write twice, a refused write never; no panic.
//!
//! A failing case replays bit for bit; proptest shrinks it and keeps its
//! seed in `sim.proptest-regressions`, which every run replays first. The
//! shrunk case itself goes in [`kept`] (a seed draws another case once the
//! strategy changes).
//! `SIM_CASES` cases (default 2000) drawn from `SIM_SEED` (default fixed,
//! so CI runs the same cases every time); `SIM_DEBUG=1` prints each step;
//! the long run: `SIM_CASES=100000 cargo test --release -p pylon-sync-engine --test sim`.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::checks::{impossible, readable, record_delete, sorted, still_deleted, title_of, Deletes, Fault};
use proptest::prelude::*;
use pylon_devserver::{Config as ServerConfig, Local};
use pylon_sync_engine::io::{BoxFuture, Chunks, Conn, Io, Request, Response};
use pylon_sync_engine::transport::sse::check_head;
use pylon_sync_engine::{Config, Engine, Error, Event, MutationStatus, Which};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

mod common;

const BASE: &str = "http://sim.invalid:4321";
const USERS: [&str; 2] = ["alice", "bob"];
/// The wall clock's reading when a run starts (2026-01-01).
const EPOCH_MS: u64 = 1_767_225_600_000;

// ------------------------------------------------------------------ network

/// Faults injected, by kind, over a whole run of cases.
#[derive(Default)]
struct Tally {
    lost_requests: AtomicU32,
    lost_answers: AtomicU32,
    server_faults: AtomicU32,
    stream_faults: AtomicU32,
    restarts: AtomicU32,
    crashes: AtomicU32,
}

static TALLY: Tally = Tally {
    lost_requests: AtomicU32::new(0),
    lost_answers: AtomicU32::new(0),
    server_faults: AtomicU32::new(0),
    stream_faults: AtomicU32::new(0),
    restarts: AtomicU32::new(0),
    crashes: AtomicU32::new(0),
};

/// The engines' world: every request reaches the in-memory server after a
/// drawn latency, and while the weather is bad some are lost on the way
/// there or back. Streams run over in-memory pipes into the server's own
/// connection handlers.
#[derive(Clone)]
struct SimNet(Arc<Wire>);

struct Wire {
    server: Local,
    chance: Mutex<StdRng>,
    origin: Instant,
    /// Per mille of requests lost (half before the server sees them, half after).
    loss: AtomicU32,
    /// Every exchange, in order: the replay test compares them.
    trace: Mutex<Vec<String>>,
}

impl Wire {
    fn roll(&self, max: u64) -> u64 {
        let v = self.chance.lock().unwrap().random_range(0..=max);
        if std::env::var("SIM_DRAWS").is_ok() {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            let who: Vec<&str> = bt
                .lines()
                .filter(|l| l.contains("pylon_sync_engine::") || l.contains("sim::"))
                .map(|l| l.trim().trim_start_matches(|c: char| c.is_ascii_digit() || c == ':').trim())
                .take(6)
                .collect();
            self.trace.lock().unwrap().push(format!(
                "draw {} {max} {v} {}",
                self.origin.elapsed().as_micros(),
                who.join(" < ")
            ));
        }
        v
    }

    fn lost(&self) -> bool {
        let loss = self.loss.load(Ordering::SeqCst) as u64;
        loss > 0 && self.roll(999) < loss
    }

    /// The way to the server: a latency, and while the weather is bad,
    /// sometimes no way at all.
    async fn reach(&self) -> pylon_sync_engine::Result<()> {
        self.latency().await;
        if self.lost() {
            TALLY.lost_requests.fetch_add(1, Ordering::Relaxed);
            return Err(network("connection refused"));
        }
        Ok(())
    }

    /// Whole milliseconds: tokio's timers fire on a millisecond grid that
    /// the paused clock starts a random fraction of a millisecond off, so a
    /// finer delay would round into one tick or the next by chance.
    async fn latency(&self) {
        sleep(Duration::from_millis(self.roll(4))).await;
    }
}

fn network(what: &str) -> Error {
    Error::Network(format!("simulated: {what}"))
}

impl Io for SimNet {
    fn send(&self, req: Request) -> BoxFuture<pylon_sync_engine::Result<Response>> {
        let me = self.0.clone();
        Box::pin(async move {
            let path = req.url.strip_prefix(BASE).unwrap_or(&req.url).to_string();
            me.reach().await?;
            let (status, retry, body) =
                me.server.call(req.method.as_str(), &path, req.token.as_deref(), req.json.unwrap_or_default()).await;
            let at = me.origin.elapsed().as_micros();
            me.trace.lock().unwrap().push(format!("{at} {} {path} {status} {}", req.method, body.len()));
            me.latency().await;
            if me.lost() {
                TALLY.lost_answers.fetch_add(1, Ordering::Relaxed);
                return Err(network("connection reset after the request was sent"));
            }
            Ok(Response { status, retry_after: retry.map(Duration::from_secs), server: None, body })
        })
    }

    fn event_stream(
        &self,
        _url: String,
        _token: Option<String>,
        within: Duration,
    ) -> BoxFuture<pylon_sync_engine::Result<Chunks>> {
        let me = self.0.clone();
        Box::pin(async move {
            me.reach().await?;
            let (mut client, server_end) = tokio::io::duplex(1 << 16);
            let server = me.server.clone();
            tokio::spawn(async move { server.event_stream(server_end).await });
            client
                .write_all(b"GET /events HTTP/1.1\r\naccept: text/event-stream\r\n\r\n")
                .await
                .map_err(|e| network(&e.to_string()))?;
            let mut buf = Vec::new();
            let head = timeout(within, async {
                loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        return Ok(i);
                    }
                    let mut chunk = [0u8; 4096];
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => return Err(network("stream closed before its head")),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await
            .map_err(|_| network("no answer in time"))??;
            let text = String::from_utf8_lossy(&buf[..head]).to_string();
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let content_type = text
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_string()));
            check_head(status, content_type.as_deref())?;
            let rest = Bytes::copy_from_slice(&buf[head + 4..]);
            let body = futures_util::stream::unfold(client, |mut c| async move {
                let mut chunk = vec![0u8; 4096];
                match c.read(&mut chunk).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        chunk.truncate(n);
                        Some((Ok(Bytes::from(chunk)), c))
                    }
                }
            });
            let first = futures_util::stream::iter((!rest.is_empty()).then_some(Ok(rest)));
            Ok(Box::pin(futures_util::StreamExt::chain(first, body)) as Chunks)
        })
    }

    fn dial(&self, _host: String, _port: u16) -> BoxFuture<pylon_sync_engine::Result<Box<dyn Conn>>> {
        let me = self.0.clone();
        Box::pin(async move {
            me.reach().await?;
            let (client, server_end) = tokio::io::duplex(1 << 16);
            let server = me.server.clone();
            tokio::spawn(async move { server.websocket(server_end).await });
            Ok(Box::new(client) as Box<dyn Conn>)
        })
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.0.origin.elapsed().as_millis() as u64
    }

    fn random(&self, max: u64) -> u64 {
        self.0.roll(max)
    }

    fn inline_db(&self) -> bool {
        true
    }
}

thread_local! {
    /// A panic anywhere on this thread (inside engine tasks too).
    static PANICKED: Cell<bool> = const { Cell::new(false) };
}

// ---------------------------------------------------------------- the model

/// The label of the one tag: the server refuses a second (`unique`).
const TAKEN: &str = "taken";

#[derive(Debug, Clone)]
enum Op {
    LocalInsert(usize),
    LocalUpdate(usize, usize),
    LocalDelete(usize, usize),
    /// A write only the server can refuse (a unique label already taken).
    LocalInvalid(usize),
    RemoteInsert,
    RemoteUpdate(usize),
    RemoteDelete(usize),
    /// A user adds a note elsewhere (notes are filled from the log only).
    RemoteNote(usize),
    /// A user edits one of their notes elsewhere.
    RemoteNoteEdit(usize, usize),
    /// The next few requests of a kind fail at the server.
    ServerFault(Fault),
    /// Pull pages of this many events (the real server's are 100), until the
    /// next fault: a replay from 0 then takes many pages.
    SmallPages(usize),
    /// Per mille of requests lost on the way, from now on.
    Weather(u32),
    /// Stream faults for new connections, then every connection dropped.
    StreamFault {
        duplicate: bool,
        reorder: bool,
        drop_every: Option<u32>,
    },
    /// The server restarts: its log is renumbered (sockets drop), at any
    /// distance from the previous boot.
    ServerRestart,
    /// The engine's token switches to the other user.
    Flip(usize),
    /// The engine's process dies where it stands and starts again on its file.
    Crash(usize),
    /// The engine is closed (`close()`, its calls still waiting) and opened
    /// again on its file.
    Reopen(usize),
    /// Time passes.
    Wait(u64),
    Quiet,
}

const PROCS: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PROCS;
    prop_oneof![
        8 => p.clone().prop_map(Op::LocalInsert),
        3 => (p.clone(), 0usize..50).prop_map(|(p, i)| Op::LocalUpdate(p, i)),
        3 => (p.clone(), 0usize..50).prop_map(|(p, i)| Op::LocalDelete(p, i)),
        1 => p.clone().prop_map(Op::LocalInvalid),
        3 => Just(Op::RemoteInsert),
        2 => (0usize..50).prop_map(Op::RemoteUpdate),
        2 => (0usize..50).prop_map(Op::RemoteDelete),
        2 => (0..USERS.len()).prop_map(Op::RemoteNote),
        1 => (0..USERS.len(), 0usize..50).prop_map(|(u, i)| Op::RemoteNoteEdit(u, i)),
        3 => Fault::any(true).prop_map(Op::ServerFault),
        2 => prop_oneof![Just(0u32), Just(50), Just(300)].prop_map(Op::Weather),
        1 => (1usize..4).prop_map(Op::SmallPages),
        1 => (any::<bool>(), any::<bool>(), prop::option::of(2u32..5))
            .prop_map(|(duplicate, reorder, drop_every)| Op::StreamFault { duplicate, reorder, drop_every }),
        2 => Just(Op::ServerRestart),
        2 => p.clone().prop_map(Op::Flip),
        3 => p.clone().prop_map(Op::Crash),
        2 => p.prop_map(Op::Reopen),
        4 => prop_oneof![Just(1u64), Just(5), Just(30), Just(200), Just(2000)].prop_map(Op::Wait),
        2 => Just(Op::Quiet),
    ]
}

/// Titles whose local delete resolved, by engine and the user who deleted
/// them: until it is sent, other engines and users may still see the row.
type Deleted = Arc<Mutex<BTreeMap<(usize, String), Deletes>>>;

/// What every engine's checks share.
#[derive(Default)]
struct Book {
    /// Titles of resolved local inserts not deleted since, by anyone.
    expected: BTreeSet<String>,
    /// Titles of local inserts on the server when it restarted: once the
    /// restart re-seeded the log, only fields can match a lost answer, and
    /// they no longer match once the row changed (docs/compat.md).
    ambiguous: BTreeSet<String>,
    /// Every state each user's notes were in on the server, in order (id →
    /// body): a store shows one of them or none, never a mix.
    notes: BTreeMap<String, Vec<BTreeMap<String, String>>>,
    /// The first impossible state a notification showed.
    violation: Option<String>,
}

/// Notes as compared: id → body.
fn note_state<'a>(rows: impl IntoIterator<Item = &'a Map<String, Value>>) -> BTreeMap<String, String> {
    rows.into_iter()
        .map(|r| (r["id"].as_str().unwrap_or_default().to_string(), r["body"].as_str().unwrap_or_default().to_string()))
        .collect()
}

type Shared = Arc<Mutex<Book>>;

/// One engine's process.
struct Proc {
    db: std::path::PathBuf,
    user: usize,
    /// `user`, for calls that run after the op that made them.
    token_user: Arc<AtomicUsize>,
    transport: Option<Which>,
    engine: Engine,
    /// Its callers' pending calls: they die with it.
    calls: JoinSet<()>,
    changed: Arc<Mutex<BTreeSet<String>>>,
    last_seen: BTreeMap<String, Vec<String>>,
    /// Inserts asked of it, in all its lives.
    inserts: usize,
}

fn debug() -> bool {
    std::env::var("SIM_DEBUG").is_ok()
}

struct Sim {
    server: Local,
    net: SimNet,
    dir: tempfile::TempDir,
    tokens: [String; 2],
    procs: Vec<Proc>,
    book: Shared,
    deleted: Deleted,
    n: usize,
}

impl Sim {
    async fn new(seed: u64) -> Sim {
        let server =
            Local::new(ServerConfig { epoch_ms: Some(EPOCH_MS), seed: Some(seed), ..Default::default() }).unwrap();
        let net = SimNet(Arc::new(Wire {
            server: server.clone(),
            chance: Mutex::new(StdRng::seed_from_u64(seed)),
            origin: Instant::now(),
            loss: AtomicU32::new(0),
            trace: Mutex::new(Vec::new()),
        }));
        let dir = tempfile::tempdir().unwrap();
        call(&server, "POST", "/api/entities/Tag", None, json!({ "label": TAKEN })).await;
        let mut tokens = [String::new(), String::new()];
        for (i, u) in USERS.iter().enumerate() {
            let v = call(&server, "POST", "/api/auth/session", None, json!({ "user_id": u })).await;
            tokens[i] = v["token"].as_str().unwrap().to_string();
            call(
                &server,
                "POST",
                "/api/entities/Note",
                Some(&tokens[i]),
                json!({ "body": format!("{u}'s note"), "userId": u }),
            )
            .await;
        }
        let sim_notes = note_history(&server).await;
        let mut sim = Sim {
            server,
            net,
            dir,
            tokens,
            procs: Vec::new(),
            book: Arc::new(Mutex::new(Book { notes: sim_notes, ..Default::default() })),
            deleted: Default::default(),
            n: 0,
        };
        let transports = [None, Some(Which::WebSocket), Some(Which::Sse), Some(Which::Poll)];
        for p in 0..PROCS {
            let transport = transports[sim.net.0.roll(3) as usize];
            let db = sim.dir.path().join(format!("replica{p}.db"));
            let user = p % 2;
            let token_user = Arc::new(AtomicUsize::new(user));
            let (engine, changed) = sim.open(p, &db, token_user.clone(), transport);
            let mut calls = JoinSet::new();
            let e = engine.clone();
            calls.spawn(async move {
                let _ = e.start().await;
            });
            sim.procs.push(Proc {
                db,
                user,
                token_user,
                transport,
                engine,
                calls,
                changed,
                last_seen: BTreeMap::new(),
                inserts: 0,
            });
        }
        sim
    }

    fn open(
        &self,
        p: usize,
        db: &std::path::Path,
        token_user: Arc<AtomicUsize>,
        transport: Option<Which>,
    ) -> (Engine, Arc<Mutex<BTreeSet<String>>>) {
        let user = token_user.load(Ordering::SeqCst);
        let mut c = Config::new(BASE);
        c.db_path = Some(db.to_path_buf());
        c.token = Some(self.tokens[user].clone());
        c.transport = transport;
        c.poll_interval = Duration::from_millis(30);
        c.reconnect_delay = Duration::from_millis(10);
        c.liveness.ping_interval = Duration::from_millis(300);
        c.liveness.ping_timeout = Duration::from_millis(300);
        c.probe_interval = Duration::from_millis(500);
        c.io = Some(Arc::new(self.net.clone()));
        let e = Engine::new(c).unwrap();
        let changed = Arc::new(Mutex::new(BTreeSet::new()));
        let sink = changed.clone();
        let me = e.clone(); // the cycle is broken by abandon() or close(), which drop the listener
        let (book, deleted) = (self.book.clone(), self.deleted.clone());
        e.set_listener(Some(Arc::new(move |ev| {
            if debug() && matches!(ev, Event::Error { .. }) {
                eprintln!("  event {ev:?}");
            }
            let Event::Change { entities } = ev else { return };
            if debug() {
                let todo: Vec<String> = me
                    .list("Todo")
                    .iter()
                    .map(|r| {
                        format!(
                            "{}{}",
                            title_of(r),
                            if r["id"].as_str().unwrap_or_default().starts_with('_') { "*" } else { "" }
                        )
                    })
                    .collect();
                eprintln!(
                    "  engine {p} change {entities:?} cursor {} todo {todo:?} queue {:?}",
                    me.cursor(),
                    me.mutations()
                        .iter()
                        .map(|m| format!("{:?} {}", m.kind, m.row_id.chars().rev().take(4).collect::<String>()))
                        .collect::<Vec<_>>()
                );
            }
            if entities.iter().any(|e| e == "Todo") {
                let mut book = book.lock().unwrap();
                // what was deleted is read before the rows: a delete that
                // resolves after the rows were read may still show in them
                let user = me.session().and_then(|s| s.user_id).unwrap_or_default();
                let deleted =
                    still_deleted(&deleted.lock().unwrap().get(&(p, user.clone())).cloned().unwrap_or_default(), &me);
                let rows = me.list("Todo");
                // rows read across a flip belong to no one user
                let same_user = me.session().and_then(|s| s.user_id).unwrap_or_default() == user;
                if let Some(v) = impossible(&rows, &deleted, &book.ambiguous).filter(|_| same_user) {
                    if debug() {
                        eprintln!("  VIOLATION {v}: {rows:?} queue {:?}", me.mutations());
                    }
                    book.violation.get_or_insert(v);
                }
            }
            if entities.iter().any(|e| e == "Note") {
                // notes are readable by their owner only: the session's user,
                // or before the session is known (rows stored under the same
                // token are shown at once), the token's
                let owner = || {
                    let token_user = USERS[token_user.load(Ordering::SeqCst)].to_string();
                    me.session().map_or(Some(token_user), |s| s.user_id).unwrap_or_default()
                };
                let user = owner();
                let notes = me.list("Note");
                let same_user = owner() == user;
                let mut book = book.lock().unwrap();
                let states = book.notes.get(&user).cloned().unwrap_or_default();
                let v = if let Some(n) = notes.iter().find(|n| n.get("userId") != Some(&json!(user))) {
                    Some(format!("{n:?} shown to {user}"))
                } else if !notes.is_empty() && !states.contains(&note_state(&notes)) {
                    Some(format!("{user}'s notes shown as they never were: {notes:?}, states {states:?}"))
                } else {
                    None
                };
                if let Some(v) = v.filter(|_| same_user) {
                    if debug() {
                        eprintln!("  VIOLATION {v}");
                    }
                    book.violation.get_or_insert(v);
                }
            }
            sink.lock().unwrap().extend(entities);
        })));
        (e, changed)
    }

    async fn server_rows(&self, entity: &str) -> Vec<Map<String, Value>> {
        let v = call(&self.server, "GET", &format!("/__control/rows/{entity}"), None, Value::Null).await;
        v.as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect()
    }

    /// The titles of every Todo inserted in the log as it stands.
    async fn inserted_titles(&self) -> Vec<String> {
        let log = call(&self.server, "GET", "/__control/log", None, Value::Null).await;
        let inserts = log.as_array().unwrap().iter().filter(|c| c["entity"] == "Todo" && c["kind"] == "insert");
        inserts.map(|c| c["data"]["title"].as_str().unwrap_or_default().to_string()).collect()
    }

    async fn control(&self, what: &str, body: Value) {
        call(&self.server, "POST", &format!("/__control/{what}"), None, body).await;
    }

    fn title(&mut self, who: &str) -> String {
        self.n += 1;
        format!("{who}{}", self.n)
    }

    async fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::LocalInsert(p) => {
                let t = self.title("l");
                let data = json!({ "title": t, "done": false });
                let (e, book) = (self.procs[p].engine.clone(), self.book.clone());
                self.procs[p].inserts += 1;
                self.procs[p].calls.spawn(async move {
                    if e.insert("Todo", data.as_object().unwrap().clone()).await.is_ok() {
                        book.lock().unwrap().expected.insert(t);
                    }
                });
            }
            Op::LocalInvalid(p) => {
                let e = self.procs[p].engine.clone();
                self.procs[p].inserts += 1;
                self.procs[p].calls.spawn(async move {
                    let _ = e.insert("Tag", json!({ "label": TAKEN }).as_object().unwrap().clone()).await;
                });
            }
            Op::LocalUpdate(p, i) | Op::LocalDelete(p, i) => {
                let e = self.procs[p].engine.clone();
                let rows = e.list("Todo");
                if rows.is_empty() {
                    return Ok(());
                }
                let r = &rows[i % rows.len()];
                let id = r["id"].as_str().unwrap_or_default().to_string();
                let title = title_of(r);
                let token_user = self.procs[p].token_user.clone();
                let (book, deleted) = (self.book.clone(), self.deleted.clone());
                let update = matches!(op, Op::LocalUpdate(..));
                self.procs[p].calls.spawn(async move {
                    // whose token the write goes out with: a flip may come
                    // between the op and the call
                    let user = USERS[token_user.load(Ordering::SeqCst)].to_string();
                    if update {
                        let _ = e.update("Todo", &id, json!({ "done": true }).as_object().unwrap().clone()).await;
                        return;
                    }
                    if e.delete("Todo", &id).await.is_ok() {
                        book.lock().unwrap().expected.remove(&title);
                        // right after a flip the store may still show the
                        // previous identity's rows; a delete of one fails later
                        if e.session().and_then(|s| s.user_id).as_ref() == Some(&user) {
                            record_delete(deleted.lock().unwrap().entry((p, user)).or_default(), &e, &id, title);
                        }
                    }
                });
            }
            Op::RemoteInsert => {
                let t = self.title("r");
                call(&self.server, "POST", "/api/entities/Todo", None, json!({ "title": t, "done": false })).await;
            }
            Op::RemoteUpdate(i) | Op::RemoteDelete(i) => {
                let rows = self.server_rows("Todo").await;
                if rows.is_empty() {
                    return Ok(());
                }
                let r = &rows[i % rows.len()];
                let path = format!("/api/entities/Todo/{}", r["id"].as_str().unwrap());
                if let Op::RemoteUpdate(_) = op {
                    call(&self.server, "PATCH", &path, None, json!({ "done": true })).await;
                } else {
                    call(&self.server, "DELETE", &path, None, Value::Null).await;
                    self.book.lock().unwrap().expected.remove(&title_of(r));
                }
            }
            Op::RemoteNote(u) | Op::RemoteNoteEdit(u, _) => {
                let user = USERS[u];
                if let Op::RemoteNoteEdit(_, i) = *op {
                    let mine: Vec<Map<String, Value>> =
                        self.server_rows("Note").await.into_iter().filter(|r| r["userId"] == json!(user)).collect();
                    let Some(r) = mine.get(i % mine.len().max(1)) else { return Ok(()) };
                    let path = format!("/api/entities/Note/{}", r["id"].as_str().unwrap());
                    let t = self.title("n");
                    // the patch names the owner: a filtered pull drops a patch without it (docs/compat.md)
                    call(&self.server, "PATCH", &path, Some(&self.tokens[u]), json!({ "body": t, "userId": user }))
                        .await;
                } else {
                    let t = self.title("n");
                    let body = json!({ "body": t, "userId": user });
                    call(&self.server, "POST", "/api/entities/Note", Some(&self.tokens[u]), body).await;
                }
                let now = note_history(&self.server).await;
                let mut book = self.book.lock().unwrap();
                for (user, state) in now {
                    let states = book.notes.entry(user).or_default();
                    if states.last() != state.last() {
                        states.extend(state);
                    }
                }
            }
            Op::ServerFault(f) => {
                TALLY.server_faults.fetch_add(1, Ordering::Relaxed);
                self.control("faults", f.body()).await;
            }
            Op::SmallPages(n) => self.control("faults", json!({ "pageSize": n, "sseKeepaliveMs": 100 })).await,
            Op::Weather(loss) => self.net.0.loss.store(loss, Ordering::SeqCst),
            Op::StreamFault { duplicate, reorder, drop_every } => {
                TALLY.stream_faults.fetch_add(1, Ordering::Relaxed);
                let events = json!({ "duplicate": duplicate, "reorder": reorder, "dropEvery": drop_every });
                self.control("faults", json!({ "events": events, "sseKeepaliveMs": 100 })).await;
                self.control("drop", json!({})).await;
            }
            Op::ServerRestart => {
                TALLY.restarts.fetch_add(1, Ordering::Relaxed);
                // every insert of this server lifetime, deleted since or not:
                // the restart takes its nonce with the log (docs/compat.md)
                let titles = self.inserted_titles().await;
                self.control("restart", json!({})).await;
                // local inserts are titled l1, l2, …
                self.book.lock().unwrap().ambiguous.extend(titles.into_iter().filter(|t| t.starts_with('l')));
            }
            Op::Flip(p) => {
                let proc = &mut self.procs[p];
                proc.user = 1 - proc.user;
                proc.token_user.store(proc.user, Ordering::SeqCst);
                proc.engine.set_token(Some(self.tokens[proc.user].clone()));
            }
            Op::Crash(p) | Op::Reopen(p) => {
                let (db, token_user, transport) = {
                    let proc = &mut self.procs[p];
                    (proc.db.clone(), proc.token_user.clone(), proc.transport)
                };
                if let Op::Crash(_) = op {
                    TALLY.crashes.fetch_add(1, Ordering::Relaxed);
                    self.procs[p].calls.abort_all();
                    self.procs[p].engine.abandon();
                } else {
                    // calls still waiting end with ERR_SYNC_CLOSED or resolve
                    self.procs[p].engine.close().await;
                }
                while self.procs[p].calls.join_next().await.is_some() {}
                let (engine, changed) = self.open(p, &db, token_user, transport);
                let proc = &mut self.procs[p];
                proc.engine = engine.clone();
                proc.changed = changed;
                proc.last_seen.clear();
                proc.calls.spawn(async move {
                    let _ = engine.start().await;
                });
            }
            Op::Wait(ms) => sleep(Duration::from_millis(ms)).await,
            Op::Quiet => self.quiet().await?,
        }
        Ok(())
    }

    /// Faults off, every engine synced until its queue is settled, then each
    /// compared with what its identity may read.
    async fn quiet(&mut self) -> Result<(), TestCaseError> {
        let shown = self.book.lock().unwrap().violation.clone();
        prop_assert!(shown.is_none(), "a notification showed a state that never existed: {:?}", shown);
        self.control("faults", json!({ "sseKeepaliveMs": 100 })).await;
        self.net.0.loss.store(0, Ordering::SeqCst);
        for p in 0..PROCS {
            while self.procs[p].calls.join_next().await.is_some() {}
            let e = self.procs[p].engine.clone();
            let mut last = None;
            for _ in 0..100 {
                match e.sync_once().await {
                    Ok(()) if e.mutations().iter().all(|m| m.status == MutationStatus::Failed) => {
                        last = None;
                        break;
                    }
                    Ok(()) => last = Some("mutations still pending".to_string()),
                    Err(err) => last = Some(err.to_string()),
                }
                sleep(Duration::from_millis(20)).await;
            }
            prop_assert!(last.is_none(), "engine {} reached no quiet point: {:?}", p, last);
        }
        // the first engines' rounds may have been overtaken by later writes
        for p in 0..PROCS {
            self.procs[p].engine.sync_once().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let head = call(&self.server, "GET", "/__control/state", None, Value::Null).await["head"].as_u64().unwrap();
        for p in 0..PROCS {
            let e = self.procs[p].engine.clone();
            prop_assert_eq!(e.cursor(), head, "engine {} cursor not at the head", p);
            let user = USERS[self.procs[p].user];
            for entity in ["Todo", "Note"] {
                let want = readable(&self.server_rows(entity).await, entity, user);
                let got = sorted(&e.list(entity));
                prop_assert_eq!(&got, &want, "engine {}: {} differs from the server for {}", p, entity, user);
                let proc = &mut self.procs[p];
                if let Some(before) = proc.last_seen.get(entity) {
                    if *before != got {
                        prop_assert!(
                            proc.changed.lock().unwrap().contains(entity),
                            "engine {}: no change event for {}",
                            p,
                            entity
                        );
                    }
                }
                proc.last_seen.insert(entity.to_string(), got);
            }
            self.procs[p].changed.lock().unwrap().clear();
        }
        let log = call(&self.server, "GET", "/__control/log", None, Value::Null).await;
        let deletes: BTreeSet<(String, String)> = log
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "delete")
            .map(|c| (c["entity"].as_str().unwrap().to_string(), c["row_id"].as_str().unwrap().to_string()))
            .collect();
        for (p, proc) in self.procs.iter().enumerate() {
            bounded(p, proc, &deletes)?;
        }
        Ok(())
    }

    /// Every identity's parked writes are sent, then each resolved write is
    /// on the server exactly once and each refused one not at all.
    async fn finish(&mut self) -> Result<(), TestCaseError> {
        self.quiet().await?;
        for p in 0..PROCS {
            for _ in 0..2 {
                self.apply(&Op::Flip(p)).await?;
                self.quiet().await?;
            }
        }
        let rows = self.server_rows("Todo").await;
        let tags = self.server_rows("Tag").await;
        let titles: Vec<String> = rows.iter().map(title_of).collect();
        let book = self.book.lock().unwrap();
        for t in &book.expected {
            let n = titles.iter().filter(|x| *x == t).count();
            if book.ambiguous.contains(t) && n == 2 {
                continue; // docs/compat.md: a restart hid the first copy
            }
            prop_assert_eq!(n, 1, "resolved write {} is on the server {} times", t, n);
        }
        let dup: Vec<&String> = titles
            .iter()
            .filter(|t| !book.ambiguous.contains(*t) && titles.iter().filter(|x| x == t).count() > 1)
            .collect();
        prop_assert!(dup.is_empty(), "applied twice: {:?}", dup);
        prop_assert_eq!(tags.len(), 1, "a refused write is on the server: {:?}", tags);
        Ok(())
    }

    async fn close(mut self) {
        for p in &mut self.procs {
            p.calls.abort_all();
            p.engine.close().await;
        }
    }
}

/// What an engine's file keeps besides its rows stays bounded, read from the
/// file itself at a quiet point: a tombstone only for a delete the log holds
/// now (a rebuilt replica drops the others; pruning, every thousand events,
/// is `replica.rs`'s test), a write of its identity only while the engine
/// still lists it (the refused ones), an alias only for an insert it was
/// asked for.
fn bounded(p: usize, proc: &Proc, deletes: &BTreeSet<(String, String)>) -> Result<(), TestCaseError> {
    let db = rusqlite::Connection::open_with_flags(&proc.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let tombstones: Vec<(String, String)> = db
        .prepare("SELECT entity, row_id FROM rows WHERE data IS NULL")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let stray: Vec<&(String, String)> = tombstones.iter().filter(|t| !deletes.contains(*t)).collect();
    prop_assert!(stray.is_empty(), "engine {}: tombstones of no delete in the log: {:?}", p, stray);
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, usize>(0)).unwrap();
    // another identity's writes are parked, and listed once it is back
    let identity = proc.engine.session().map(|s| s.identity_key()).unwrap_or_default();
    let writes: usize =
        db.query_row("SELECT count(*) FROM mutations WHERE identity = ?1", [&identity], |r| r.get(0)).unwrap();
    let listed = proc.engine.mutations().len();
    prop_assert!(writes <= listed, "engine {}: {} writes kept, {} listed", p, writes, listed);
    let aliases = count("SELECT count(*) FROM meta WHERE key >= 'alias:' AND key < 'alias;'");
    prop_assert!(aliases <= proc.inserts, "engine {}: {} aliases for {} inserts", p, aliases, proc.inserts);
    Ok(())
}

/// Each user's notes on the server now, as a one-state history.
async fn note_history(server: &Local) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let rows = call(server, "GET", "/__control/rows/Note", None, Value::Null).await;
    let rows: Vec<Map<String, Value>> =
        rows.as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect();
    USERS.iter().map(|u| (u.to_string(), vec![note_state(rows.iter().filter(|r| r["userId"] == json!(u)))])).collect()
}

async fn call(server: &Local, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    let (_, _, bytes) = server.call(method, path, token, body).await;
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Runs one case on a fresh single-threaded runtime with a paused clock;
/// returns the outcome and the trace of every exchange.
fn run(seed: u64, ops: &[Op]) -> (Result<(), TestCaseError>, Vec<String>) {
    // a long run says how far it got
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static BEGAN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let began = *BEGAN.get_or_init(std::time::Instant::now);
    let n = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    if cases() >= 10_000 && n.is_multiple_of(10_000) {
        eprintln!("{n} cases run in {:.1} min", began.elapsed().as_secs_f64() / 60.0);
    }
    // a case that never ends spins without moving the virtual clock: give it
    // a minute of real time, then stop the whole run with the case in hand
    let (tx, rx) = std::sync::mpsc::channel();
    let case = ops.to_vec();
    std::thread::spawn(move || {
        let _ = tx.send(run_here(seed, &case));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(outcome) => outcome,
        Err(_) => {
            eprintln!("a case did not finish in 60 s of real time (a livelock): seed {seed}, ops {ops:?}");
            std::process::exit(101);
        }
    }
}

/// Runs one case on this thread.
fn run_here(seed: u64, ops: &[Op]) -> (Result<(), TestCaseError>, Vec<String>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            default(info);
        }));
    });
    PANICKED.with(|p| p.set(false));
    if debug() {
        // the engines' own account of each step, interleaved with the ops
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let mut sim = Sim::new(seed).await;
        let mut outcome = Ok(());
        for op in ops {
            if debug() {
                let e = &sim.procs[0].engine;
                eprintln!(
                    "op {op:?} t {:?} cursor0 {} todo0 {}",
                    sim.net.0.origin.elapsed(),
                    e.cursor(),
                    e.list("Todo").len()
                );
            }
            if let Err(e) = sim.apply(op).await {
                outcome = Err(e);
                break;
            }
        }
        if outcome.is_ok() {
            outcome = sim.finish().await;
        }
        if outcome.is_ok() && PANICKED.with(|p| p.get()) {
            outcome = Err(TestCaseError::fail("a task panicked"));
        }
        let trace = std::mem::take(&mut *sim.net.0.trace.lock().unwrap());
        sim.close().await;
        (outcome, trace)
    })
}

fn cases() -> u32 {
    std::env::var("SIM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// The cases, with the failures of earlier runs first; the figures of the
/// run (cases per minute, faults by kind) go to stderr.
#[test]
fn every_resolved_write_lands_once_and_no_store_shows_what_never_was() {
    use proptest::test_runner::{Config as RunnerConfig, FileFailurePersistence, TestRunner};
    let config = RunnerConfig {
        cases: cases(),
        max_shrink_iters: 500,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..RunnerConfig::default()
    };
    let began = std::time::Instant::now();
    // CI runs the same cases every time (`SIM_SEED` picks another set; a
    // long run should): a run that fails names a case, not bad luck
    let seed: u64 = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_201);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let outcome = runner.run(&(any::<u64>(), prop::collection::vec(op(), 1..40)), |(seed, ops)| run(seed, &ops).0);
    let t = &TALLY;
    let minutes = began.elapsed().as_secs_f64() / 60.0;
    eprintln!(
        "{} cases in {:.1} min ({:.0}/min); injected: {} lost requests, {} lost answers, {} server faults, \
         {} stream faults, {} restarts, {} crashes",
        cases(),
        minutes,
        cases() as f64 / minutes,
        t.lost_requests.load(Ordering::Relaxed),
        t.lost_answers.load(Ordering::Relaxed),
        t.server_faults.load(Ordering::Relaxed),
        t.stream_faults.load(Ordering::Relaxed),
        t.restarts.load(Ordering::Relaxed),
        t.crashes.load(Ordering::Relaxed)
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

#[test]
fn a_case_replays_bit_for_bit() {
    let ops = vec![
        Op::LocalInsert(0),
        Op::Weather(300),
        Op::LocalInsert(1),
        Op::ServerFault(Fault::LostInsertAnswer),
        Op::LocalInsert(2),
        Op::Crash(0),
        Op::Wait(30),
        Op::ServerRestart,
        Op::Flip(2),
        Op::LocalDelete(1, 0),
        Op::Quiet,
    ];
    let (first, trace) = run(7, &ops);
    first.unwrap();
    let (second, again) = run(7, &ops);
    second.unwrap();
    assert!(trace.len() > 20, "the case made requests");
    assert_eq!(trace, again, "the same case took another path");
}

/// Every case a run ever found, shrunk, as it was found: the regression
/// file keeps proptest's seeds, which draw other cases once the strategy
/// changes; these do not.
fn kept() -> Vec<(u64, Vec<Op>)> {
    use Op::*;
    vec![
        (
            13622151183365003692,
            vec![
                LocalInsert(0),
                Reopen(1),
                Crash(0),
                LocalInsert(2),
                LocalInsert(2),
                LocalInsert(1),
                Crash(0),
                ServerFault(Fault::RateLimited),
                Wait(30),
                RemoteNote(0),
                Wait(30),
                Flip(2),
                Crash(2),
            ],
        ),
        (
            14762,
            vec![
                Wait(1),
                LocalInsert(1),
                Flip(1),
                Wait(1),
                LocalInsert(1),
                LocalDelete(1, 0),
                LocalInsert(0),
                Flip(1),
                Crash(0),
                Flip(1),
            ],
        ),
        (
            0,
            vec![
                LocalInsert(2),
                Crash(0),
                LocalInsert(0),
                RemoteInsert,
                LocalInsert(0),
                LocalInsert(0),
                Quiet,
                LocalInsert(0),
                LocalInsert(0),
                Flip(0),
                LocalInsert(0),
                RemoteNote(1),
                Wait(1),
                LocalInsert(0),
                LocalInsert(0),
                LocalInsert(0),
                RemoteNoteEdit(1, 29),
                RemoteInsert,
                LocalInsert(0),
                LocalInsert(0),
            ],
        ),
        (
            15740755236896010541,
            vec![
                LocalInsert(1),
                Reopen(2),
                LocalDelete(1, 0),
                LocalInsert(2),
                ServerRestart,
                LocalInvalid(0),
                Wait(30),
                RemoteDelete(0),
                ServerRestart,
            ],
        ),
        (
            5687367820799469729,
            vec![
                RemoteInsert,
                LocalInsert(1),
                RemoteUpdate(0),
                Quiet,
                LocalInsert(0),
                RemoteInsert,
                LocalUpdate(2, 0),
                LocalInsert(0),
                LocalInsert(0),
                RemoteUpdate(0),
                LocalInsert(1),
                LocalInsert(0),
                LocalInsert(0),
                LocalInsert(0),
                ServerRestart,
                LocalUpdate(0, 0),
                LocalUpdate(0, 0),
                Weather(300),
                LocalUpdate(0, 0),
                Wait(200),
            ],
        ),
        (
            0,
            vec![RemoteInsert, RemoteUpdate(0), RemoteUpdate(0), Quiet, ServerRestart, RemoteInsert, LocalUpdate(0, 0)],
        ),
        (0, vec![ServerRestart, RemoteInsert, Wait(30), RemoteDelete(0), ServerRestart]),
        (0, vec![Wait(200), Crash(0)]),
        (
            1365414933121646085,
            vec![
                LocalInsert(0),
                LocalInsert(0),
                Quiet,
                ServerFault(Fault::Stall),
                LocalDelete(0, 0),
                Wait(2000),
                RemoteUpdate(0),
                LocalDelete(0, 0),
                Wait(5),
                LocalInsert(0),
                RemoteInsert,
                LocalUpdate(0, 0),
                RemoteUpdate(0),
                LocalInsert(0),
                ServerRestart,
                LocalDelete(0, 20),
            ],
        ),
        (
            519734991101172909,
            vec![
                Crash(0),
                LocalInvalid(0),
                LocalInsert(0),
                RemoteNote(0),
                LocalInsert(0),
                Wait(30),
                RemoteUpdate(0),
                LocalInsert(0),
                Flip(2),
                RemoteInsert,
                SmallPages(1),
                RemoteUpdate(0),
                Wait(200),
                Crash(1),
                ServerRestart,
                RemoteUpdate(9),
            ],
        ),
        (
            0,
            vec![
                ServerRestart,
                RemoteUpdate(0),
                RemoteNoteEdit(1, 0),
                Quiet,
                ServerRestart,
                LocalInsert(0),
                RemoteNote(0),
            ],
        ),
        (
            11481725012020434,
            vec![
                LocalInsert(0),
                Quiet,
                Quiet,
                LocalInsert(1),
                Flip(2),
                RemoteInsert,
                Flip(2),
                RemoteUpdate(0),
                LocalDelete(0, 0),
                Quiet,
                LocalInsert(1),
                LocalInsert(1),
                Wait(1),
                RemoteUpdate(0),
                LocalInsert(1),
                Crash(0),
                Wait(5),
                ServerFault(Fault::Resync),
                Wait(5),
                ServerRestart,
                LocalInsert(0),
                Wait(30),
                RemoteUpdate(6),
            ],
        ),
        (3762026299716635376, vec![SmallPages(1), RemoteInsert, Wait(30), RemoteUpdate(0), ServerRestart]),
        (0, vec![Quiet, RemoteNoteEdit(0, 0), RemoteUpdate(0), ServerRestart]),
        (
            5541246626157139058,
            vec![
                Wait(1),
                Wait(5),
                RemoteInsert,
                ServerRestart,
                RemoteNoteEdit(0, 0),
                Crash(1),
                Reopen(2),
                ServerRestart,
                LocalInsert(0),
                RemoteUpdate(0),
            ],
        ),
        (
            16531765230743496636,
            vec![
                LocalInsert(1),
                Quiet,
                Flip(0),
                LocalInsert(0),
                Crash(1),
                LocalInsert(0),
                LocalInsert(0),
                Wait(30),
                ServerFault(Fault::Malformed),
                Weather(50),
                RemoteNote(0),
                RemoteDelete(0),
                Wait(30),
                RemoteDelete(0),
                LocalDelete(1, 0),
                ServerRestart,
            ],
        ),
        (
            828106651138703817,
            vec![
                RemoteInsert,
                Crash(0),
                Quiet,
                LocalDelete(2, 0),
                RemoteNote(0),
                Crash(1),
                SmallPages(3),
                Wait(5),
                ServerRestart,
                RemoteNote(0),
            ],
        ),
        (
            11074600686936744086,
            vec![
                LocalInsert(0),
                LocalInsert(0),
                Crash(1),
                LocalInsert(2),
                ServerFault(Fault::Unavailable),
                Flip(0),
                LocalInsert(0),
                Flip(1),
                Quiet,
                LocalInsert(1),
                RemoteNoteEdit(0, 0),
                Crash(0),
                SmallPages(1),
                RemoteNote(0),
                Wait(30),
                ServerRestart,
                LocalInsert(0),
            ],
        ),
        (
            4144510932345572593,
            vec![
                LocalInsert(0),
                LocalInsert(0),
                LocalInsert(0),
                Quiet,
                RemoteNoteEdit(0, 0),
                Flip(1),
                SmallPages(1),
                Wait(30),
                ServerRestart,
                LocalUpdate(0, 0),
                ServerFault(Fault::Unavailable),
            ],
        ),
        (
            787022544663658924,
            vec![
                Crash(0),
                Flip(2),
                LocalInsert(0),
                ServerRestart,
                Wait(30),
                RemoteInsert,
                Weather(50),
                LocalInvalid(0),
                StreamFault { duplicate: false, reorder: false, drop_every: None },
                LocalInsert(0),
                LocalInsert(0),
                Reopen(0),
                RemoteDelete(0),
                ServerRestart,
                Reopen(0),
            ],
        ),
    ]
}

#[test]
fn every_case_that_once_failed_passes() {
    for (seed, ops) in kept() {
        if let (Err(e), _) = run(seed, &ops) {
            panic!("({seed}, {ops:?}): {e}");
        }
    }
}
