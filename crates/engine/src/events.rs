//! What the engine tells its listener, and the observable state it reports.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;
use crate::protocol::Session;
use crate::queue::Mutation;
use crate::transport::{BinaryFrame, Which};

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
    /// Unix ms until which the server's rate limit holds the engine back
    /// (a 429: its `Retry-After`, else the limiter's window).
    pub rate_limited_until: Option<u64>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnState {
    /// Not following the server (engine stopped).
    Offline,
    Connecting,
    Open,
    /// Waiting before the next attempt.
    Backoff,
}

/// What `engine.connection` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub state: ConnState,
    pub transport: Which,
    /// Failed attempts since the last stable connection.
    pub attempts: u32,
    pub last_error: Option<ErrorInfo>,
    /// Unix ms of the last state change.
    pub since: u64,
    /// Frames received and ignored: malformed, or of a type we do not know.
    pub ignored: u64,
}

/// Another engine's presence.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// The sender's user id, stamped by the server.
    pub from: Option<String>,
    pub client_id: Option<String>,
    pub data: Value,
    /// When it was last heard from (unix ms).
    #[serde(skip)]
    pub(crate) seen: u64,
}
