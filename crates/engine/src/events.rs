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
    /// A round has reached the head of the server's log since the engine
    /// started, and the replica was not dropped since (a flip of identity,
    /// a reset, a resync that rebuilds it).
    pub has_synced: bool,
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
    /// A mutation changed state.
    Mutation {
        status: MutationChange,
        mutation: Mutation,
    },
    Status(SyncStatus),
    /// Something failed where `context` says.
    Error {
        context: ErrorContext,
        error: Error,
    },
    /// The session changed (`None`: unknown).
    Session(Option<Session>),
    /// The replica was dropped and is being rebuilt, for `reason`.
    Resync {
        reason: ResyncReason,
    },
    /// Bootstrap progress: rows fetched so far for `entity` (for an entity
    /// only the log fills, its events read so far).
    Progress(Progress),
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

/// How far a bootstrap has come for one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub entity: String,
    pub rows: usize,
    /// How many rows there are, where the server lets us know: the server
    /// pages snapshots without a count, so it is known once the last page is
    /// read.
    pub total: Option<usize>,
    /// The share done, 0..=1: a snapshot's once its total is known; a log
    /// replay's as the log read so far over the head it replays to.
    pub fraction: Option<f64>,
    pub done: bool,
}

impl Progress {
    /// A snapshot's progress: `rows` read so far, all of them once `done`.
    pub(crate) fn snapshot(entity: &str, rows: usize, done: bool) -> Progress {
        Progress { entity: entity.to_string(), rows, total: done.then_some(rows), fraction: done.then_some(1.0), done }
    }
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

/// Declares a vocabulary enum with the names JS sees (`as_str`), and lets a
/// test compare it with such a name.
macro_rules! named {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

named!(
    /// What happened to a mutation (the `mutation` event's `status`).
    MutationChange {
        /// Queued (or changed while queued).
        Pending = "pending",
        /// The server applied it; it left the queue.
        Applied = "applied",
        /// The server refused it; kept until removed.
        Failed = "failed",
        /// Removed by the user.
        Removed = "removed",
    }
);

named!(
    /// Where a failure reported as an `error` event happened.
    ErrorContext {
        /// A sync round (sending, pulling, the boot check).
        Sync = "sync",
        /// A resync that failed again right after one.
        Pull = "pull",
        /// The session (`/api/auth/me`): an unknown or revoked token.
        Session = "session",
        /// The realtime connection (refused by the server).
        Connection = "connection",
    }
);

named!(
    /// Why the replica is rebuilt (the `resync` event's `reason`).
    ResyncReason {
        /// The log no longer reaches the cursor (410).
        Resync = "resync",
        /// The user or tenant changed.
        Identity = "identity",
        /// The server restarted (its log was renumbered).
        Server = "server",
    }
);
