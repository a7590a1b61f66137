//! The engine's observable state and events as typed JS objects, so the
//! generated `index.d.ts` states their exact shape and nothing crosses as
//! JSON text to be parsed again. Conversions only: every value here is a
//! copy of what the engine reports.

use napi_derive::napi;
use pylon_sync_engine::{
    Connection as EngineConnection, ErrorInfo as EngineErrorInfo, Event as EngineEvent, Mutation, Peer as EnginePeer,
    Session as EngineSession, SyncStatus as EngineStatus,
};
use serde::Serialize;
use serde_json::{Map, Value};

/// The lowercase name serde gives a unit enum value (`Phase::Idle` → "idle").
fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        other => unreachable!("a unit enum serializes as a string, got {other:?}"),
    }
}

/// Unix ms and counters cross as numbers (exact up to 2^53).
fn number(n: u64) -> f64 {
    n as f64
}

/// What went wrong, as `error` events, `status.lastError` and rejections carry it.
#[napi(object)]
pub struct ErrorInfo {
    #[napi(
        ts_type = "'ERR_SYNC_NETWORK' | 'ERR_SYNC_AUTH' | 'ERR_SYNC_NOT_FOUND' | 'ERR_SYNC_RATE_LIMITED' | 'ERR_SYNC_SERVER' | 'ERR_SYNC_REJECTED' | 'ERR_SYNC_RESYNC' | 'ERR_SYNC_TLS' | 'ERR_SYNC_PROTOCOL' | 'ERR_SYNC_STORAGE' | 'ERR_SYNC_CORRUPT' | 'ERR_SYNC_CLOSED' | 'ERR_SYNC_INVALID_ARG' | 'ERR_SYNC_QUERY' | 'ERR_SYNC_INTERNAL'"
    )]
    pub code: String,
    pub message: String,
    /// HTTP status, for errors the server answered.
    pub status: Option<u32>,
    /// The server's own code (`POLICY_DENIED`, `INSERT_FAILED`, …).
    pub server_code: Option<String>,
}

impl From<&EngineErrorInfo> for ErrorInfo {
    fn from(e: &EngineErrorInfo) -> Self {
        ErrorInfo {
            code: e.code.clone(),
            message: e.message.clone(),
            status: e.status.map(u32::from),
            server_code: e.server_code.clone(),
        }
    }
}

impl From<&pylon_sync_engine::Error> for ErrorInfo {
    fn from(e: &pylon_sync_engine::Error) -> Self {
        ErrorInfo::from(&EngineErrorInfo::from(e))
    }
}

#[napi(object, use_nullable = true)]
pub struct SyncStatus {
    #[napi(ts_type = "'stopped' | 'starting' | 'bootstrapping' | 'idle' | 'backoff' | 'offline' | 'closed'")]
    pub phase: String,
    /// The configured transport; `connection.transport` is the one in use.
    #[napi(ts_type = "'auto' | 'websocket' | 'sse' | 'poll'")]
    pub transport: String,
    pub cursor: f64,
    /// Queued writes not yet acknowledged.
    pub pending: u32,
    /// Writes the server refused, kept until removed or retried.
    pub failed: u32,
    /// Consecutive failed rounds (drives the backoff).
    pub attempts: u32,
    pub last_error: Option<ErrorInfo>,
    /// Unix ms of the last pull that reached the head of the log.
    pub last_synced_at: Option<f64>,
    /// A round has reached the head of the server's log since the engine started, and the
    /// replica was not dropped since (an identity flip, a reset). `waitForFirstSync()` waits for it.
    pub has_synced: bool,
    /// Unix ms until which the server's rate limit holds the engine back
    /// (a 429: its `Retry-After`, else the limiter's 60 s window); null when not limited.
    pub rate_limited_until: Option<f64>,
}

impl From<&EngineStatus> for SyncStatus {
    fn from(s: &EngineStatus) -> Self {
        SyncStatus {
            phase: name_of(&s.phase),
            transport: s.transport.to_string(),
            cursor: number(s.cursor),
            pending: s.pending as u32,
            failed: s.failed as u32,
            attempts: s.attempts,
            last_error: s.last_error.as_ref().map(ErrorInfo::from),
            last_synced_at: s.last_synced_at.map(number),
            has_synced: s.has_synced,
            rate_limited_until: s.rate_limited_until.map(number),
        }
    }
}

/// The realtime connection.
#[napi(object, use_nullable = true)]
pub struct Connection {
    /// `offline`: not following (stopped); `open` with transport "poll": polling.
    #[napi(ts_type = "'offline' | 'connecting' | 'open' | 'backoff'")]
    pub state: String,
    #[napi(ts_type = "'websocket' | 'sse' | 'poll'")]
    pub transport: String,
    /// Failed attempts since the last connection that stayed up 5 s.
    pub attempts: u32,
    pub last_error: Option<ErrorInfo>,
    /// Unix ms of the last state change.
    pub since: f64,
    /// Frames ignored so far: malformed, or of an unknown type.
    pub ignored: f64,
}

impl From<&EngineConnection> for Connection {
    fn from(c: &EngineConnection) -> Self {
        Connection {
            state: name_of(&c.state),
            transport: name_of(&c.transport),
            attempts: c.attempts,
            last_error: c.last_error.as_ref().map(ErrorInfo::from),
            since: number(c.since),
            ignored: number(c.ignored),
        }
    }
}

/// Another engine's presence.
#[napi(object, use_nullable = true)]
pub struct Peer {
    /// User id of the sender, stamped by the server.
    pub from: Option<String>,
    pub client_id: Option<String>,
    #[napi(ts_type = "unknown")]
    pub data: Value,
}

impl From<&EnginePeer> for Peer {
    fn from(p: &EnginePeer) -> Self {
        Peer { from: p.from.clone(), client_id: p.client_id.clone(), data: p.data.clone() }
    }
}

#[napi(object, use_nullable = true)]
pub struct Session {
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub is_admin: bool,
    pub roles: Vec<String>,
}

impl From<&EngineSession> for Session {
    fn from(s: &EngineSession) -> Self {
        Session {
            user_id: s.user_id.clone(),
            tenant_id: s.tenant_id.clone(),
            is_admin: s.is_admin,
            roles: s.roles.clone(),
        }
    }
}

/// Some of an entity's stored rows as a JSON list, handed out while the
/// replica loads (`preload`).
#[napi(object, object_from_js = false)]
pub struct ListPart {
    pub entity: String,
    #[napi(ts_type = "string")]
    pub json: crate::text::JsonText,
}

/// An entity whose rows were handed out as [`ListPart`]s, with the version
/// at which its visible list was those rows.
#[napi(object)]
pub struct Preloaded {
    pub entity: String,
    pub version: f64,
}

/// A queued write as the server will receive it.
#[napi(object)]
pub struct Change {
    pub entity: String,
    #[napi(js_name = "row_id")]
    pub row_id: String,
    #[napi(ts_type = "'insert' | 'update' | 'delete'")]
    pub kind: String,
    #[napi(ts_type = "Record<string, unknown> | null")]
    pub data: Value,
}

/// A queued write (`mutations.list()`), or a transition of one (the
/// `mutation` event, whose status may also be `applied` or `removed`).
#[napi(object)]
pub struct MutationInfo {
    pub id: String,
    #[napi(ts_type = "'pending' | 'applied' | 'failed' | 'removed'")]
    pub status: String,
    pub change: Change,
    /// Why the server refused it (failed mutations).
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub http_status: Option<u32>,
    pub attempts: u32,
    pub created_at: f64,
}

impl MutationInfo {
    pub fn new(m: &Mutation, status: &str) -> Self {
        MutationInfo {
            id: m.id.clone(),
            status: status.to_string(),
            change: Change {
                entity: m.entity.clone(),
                row_id: m.row_id.clone(),
                kind: m.kind.as_str().to_string(),
                data: m.data.clone().map_or(Value::Null, Value::Object),
            },
            error: m.error.as_ref().map(|e| e.message.clone()),
            error_code: m.error.as_ref().map(|e| e.code.clone()),
            http_status: m.error.as_ref().and_then(|e| e.status).map(u32::from),
            attempts: m.attempts,
            created_at: number(m.created_at),
        }
    }
}

impl From<&Mutation> for MutationInfo {
    fn from(m: &Mutation) -> Self {
        MutationInfo::new(m, m.status.as_str())
    }
}

/// What the engine tells `onEvent`, one variant per `type`.
#[napi(discriminant = "type", discriminant_case = "lowercase", use_nullable = true)]
pub enum Event {
    /// Visible rows of these entities changed.
    Change {
        entities: Vec<String>,
    },
    Mutation {
        mutation: MutationInfo,
    },
    Status {
        status: SyncStatus,
    },
    /// A background failure; `context` says where ("sync", "pull", "session").
    Error {
        context: String,
        error: ErrorInfo,
    },
    /// The session changed (null: unknown).
    Session {
        session: Option<Session>,
    },
    /// The replica is being rebuilt.
    Resync {
        #[napi(ts_type = "'resync' | 'identity' | 'server'")]
        reason: String,
    },
    /// Bootstrap progress: rows fetched so far for `entity` (for an entity only the log fills,
    /// its events read so far); `total` and `fraction` where the server lets the engine know.
    Progress {
        entity: String,
        rows: u32,
        total: Option<u32>,
        /// 0..1.
        fraction: Option<f64>,
        done: bool,
    },
    Connection {
        connection: Connection,
    },
    /// Other engines' presence: the whole current list.
    Presence {
        peers: Vec<Peer>,
    },
    Topic {
        topic: String,
        from: Option<String>,
        #[napi(ts_type = "unknown")]
        data: Value,
    },
    /// A rooms API event, as the server sent it.
    Room {
        #[napi(ts_type = "Record<string, unknown>")]
        event: Map<String, Value>,
    },
}

impl Event {
    /// `None` for binary frames, which go to their own sink.
    pub fn of(ev: &EngineEvent) -> Option<Event> {
        Some(match ev {
            EngineEvent::Change { entities } => Event::Change { entities: entities.clone() },
            EngineEvent::Mutation { status, mutation } => {
                Event::Mutation { mutation: MutationInfo::new(mutation, status.as_str()) }
            }
            EngineEvent::Status(s) => Event::Status { status: s.into() },
            EngineEvent::Error { context, error } => {
                Event::Error { context: context.as_str().into(), error: error.into() }
            }
            EngineEvent::Session(s) => Event::Session { session: s.as_ref().map(Session::from) },
            EngineEvent::Resync { reason } => Event::Resync { reason: reason.as_str().into() },
            EngineEvent::Progress(p) => Event::Progress {
                entity: p.entity.clone(),
                rows: p.rows as u32,
                total: p.total.map(|t| t as u32),
                fraction: p.fraction,
                done: p.done,
            },
            EngineEvent::Connection(c) => Event::Connection { connection: c.into() },
            EngineEvent::Presence(peers) => Event::Presence { peers: peers.iter().map(Peer::from).collect() },
            EngineEvent::Topic { topic, from, data } => {
                Event::Topic { topic: topic.clone(), from: from.clone(), data: data.clone() }
            }
            EngineEvent::Room(m) => Event::Room { event: m.clone() },
            EngineEvent::Binary(_) => return None,
        })
    }
}

/// An error as `diagnostics().lastErrors` keeps it.
#[napi(object)]
pub struct LastError {
    /// Unix ms.
    pub at: f64,
    /// Where it happened, as the `error` event's `context`.
    #[napi(ts_type = "'sync' | 'pull' | 'session' | 'connection'")]
    pub context: String,
    pub error: ErrorInfo,
}

/// What `engine.diagnostics()` reports. Every count only grows, so two
/// readings can be subtracted; `pending`, `failed`, `oldestPendingAt` and
/// `cursor` are the state now.
#[napi(object, use_nullable = true)]
pub struct Diagnostics {
    /// HTTP requests made, and those that got no answer (a transport failure).
    pub requests: f64,
    pub request_failures: f64,
    /// Request and response bodies, in bytes (realtime streams not included).
    pub bytes_sent: f64,
    pub bytes_received: f64,
    /// Milliseconds spent waiting for the server's HTTP answers.
    pub server_wait_ms: f64,
    /// Realtime connections opened, by transport.
    #[napi(ts_type = "Partial<Record<'websocket' | 'sse' | 'poll', number>>")]
    pub connects: Value,
    /// The same, less the first connection: the reconnects.
    #[napi(ts_type = "Partial<Record<'websocket' | 'sse' | 'poll', number>>")]
    pub reconnects: Value,
    /// Server change events applied to the replica.
    pub events_applied: f64,
    /// Times the replica was dropped and rebuilt.
    pub resyncs: f64,
    /// Writes sent (each attempt), and of those, attempts after the first.
    pub writes_sent: f64,
    pub writes_retried: f64,
    pub writes_acknowledged: f64,
    /// Writes the server (or the manifest) refused.
    pub writes_failed: f64,
    /// Writes queued and not yet acknowledged: the queue's depth.
    pub pending: u32,
    /// Refused writes kept until removed or retried.
    pub failed: u32,
    /// Unix ms when the oldest pending write was made; null when none is pending.
    pub oldest_pending_at: Option<f64>,
    pub cursor: f64,
    /// The last errors (up to 10), oldest first.
    pub last_errors: Vec<LastError>,
}

impl From<&pylon_sync_engine::Diagnostics> for Diagnostics {
    fn from(d: &pylon_sync_engine::Diagnostics) -> Self {
        let c = &d.counted;
        let by_transport = |m: &std::collections::BTreeMap<String, u64>| {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect())
        };
        Diagnostics {
            requests: number(d.requests),
            request_failures: number(d.request_failures),
            bytes_sent: number(d.bytes_sent),
            bytes_received: number(d.bytes_received),
            server_wait_ms: d.server_wait.as_secs_f64() * 1000.0,
            connects: by_transport(&c.connects),
            reconnects: by_transport(&c.reconnects),
            events_applied: number(c.events_applied),
            resyncs: number(c.resyncs),
            writes_sent: number(c.writes_sent),
            writes_retried: number(c.writes_retried),
            writes_acknowledged: number(c.writes_acknowledged),
            writes_failed: number(c.writes_failed),
            pending: d.pending as u32,
            failed: d.failed as u32,
            oldest_pending_at: d.oldest_pending_at.map(number),
            cursor: number(d.cursor),
            last_errors: c
                .last_errors
                .iter()
                .map(|e| LastError { at: number(e.at), context: e.context.to_string(), error: (&e.error).into() })
                .collect(),
        }
    }
}

/// One entity of a replica file.
#[napi(object)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaEntity {
    pub name: String,
    pub rows: f64,
    /// Deleted rows kept until the cursor has passed them.
    pub tombstones: f64,
    /// Its full snapshot is in (else only the log fills it, or it is not bootstrapped yet).
    pub covered: bool,
}

/// A write the server refused, kept in the file.
#[napi(object)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedWrite {
    pub id: String,
    pub entity: String,
    #[napi(ts_type = "'insert' | 'update' | 'delete'")]
    pub kind: String,
    pub code: String,
    pub message: String,
}

/// What a replica file holds (`inspectReplica`).
#[napi(object, use_nullable = true)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaInfo {
    pub cursor: f64,
    /// A fingerprint of the identity the rows belong to (never the identity itself); null before
    /// a session was known.
    pub identity: Option<String>,
    pub entities: Vec<ReplicaEntity>,
    pub pending: u32,
    pub failed: Vec<FailedWrite>,
    /// Writes kept for other identities (sent when their identity signs in again).
    pub parked: u32,
    /// Unix ms when the oldest pending write was made.
    pub oldest_pending_at: Option<f64>,
    /// Unix ms the server the replica follows started (null: never checked).
    pub server_boot: Option<f64>,
    /// Entities whose manifest fields are kept in the file.
    pub schema: Vec<String>,
    /// The file's size.
    pub bytes: f64,
}

impl From<pylon_sync_engine::inspect::Inspection> for ReplicaInfo {
    fn from(i: pylon_sync_engine::inspect::Inspection) -> Self {
        ReplicaInfo {
            cursor: number(i.cursor),
            identity: i.identity,
            entities: i
                .entities
                .into_iter()
                .map(|e| ReplicaEntity {
                    name: e.name,
                    rows: number(e.rows),
                    tombstones: number(e.tombstones),
                    covered: e.covered,
                })
                .collect(),
            pending: i.pending as u32,
            failed: i
                .failed
                .into_iter()
                .map(|f| FailedWrite {
                    id: f.id,
                    entity: f.entity,
                    kind: f.kind.into(),
                    code: f.code,
                    message: f.message,
                })
                .collect(),
            parked: i.parked as u32,
            oldest_pending_at: i.oldest_pending_at.map(number),
            server_boot: i.server_boot.map(number),
            schema: i.schema,
            bytes: number(i.bytes),
        }
    }
}

/// One check of `checkServer`.
#[napi(object, use_nullable = true)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCheck {
    #[napi(ts_type = "'health' | 'tls' | 'session' | 'manifest' | 'log' | 'websocket' | 'sse'")]
    pub name: String,
    #[napi(ts_type = "'ok' | 'failed' | 'skipped'")]
    pub outcome: String,
    /// What was found.
    pub detail: String,
    /// For a failure: the likely cause, and what to do.
    pub cause: Option<String>,
    pub fix: Option<String>,
    pub ms: f64,
}

impl From<pylon_sync_engine::doctor::Check> for ServerCheck {
    fn from(c: pylon_sync_engine::doctor::Check) -> Self {
        ServerCheck {
            name: c.name.into(),
            outcome: name_of(&c.outcome),
            detail: c.detail,
            cause: c.cause,
            fix: c.fix,
            ms: number(c.ms),
        }
    }
}
