//! Typed errors with stable codes. Messages never contain a token: requests carry
//! tokens only in headers, and no header ever reaches an error.

use std::time::Duration;

/// Every failure the engine reports. `code()` is stable and is what JavaScript sees
/// as `error.code`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or the connection broke.
    #[error("network error: {0}")]
    Network(String),
    /// The server answered with an HTTP error (envelope `{"error":{code,message}}`).
    #[error("server answered {status} {code}: {message}")]
    Http { status: u16, code: String, message: String, retry_after: Option<Duration> },
    /// The change log no longer covers our cursor (410).
    #[error("server requires a resync (oldest retained seq {oldest_seq})")]
    Resync { oldest_seq: u64 },
    /// The server's certificate could not be verified (pass its CA as `ca`).
    #[error("TLS certificate verification failed: {0}")]
    Tls(String),
    /// The server sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// SQLite failed (disk full, read-only file, I/O error).
    #[error("storage error: {0}")]
    Storage(String),
    /// The database file is damaged or belongs to another program.
    #[error("database file is corrupt or not a pylon-sync database: {0}")]
    Corrupt(String),
    /// The engine was closed; nothing else can be done with it.
    #[error("the sync engine is closed")]
    Closed,
    /// A caller passed something the engine cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArg(String),
    /// The token is not one the server recognises (unknown, expired or
    /// revoked: it answers such a token as anonymous).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A queued write the server (or the manifest) refused, as kept on it:
    /// `code` is the server's own, or the engine's for a refusal it made.
    #[error("{message}")]
    Refused { code: String, message: String, status: Option<u16> },
    /// A mutation or row that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// SQLite refused or failed a query (`engine.query`): its own message.
    #[error("query failed: {0}")]
    Query(String),
}

impl Error {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Network(_) => "ERR_SYNC_NETWORK",
            Error::Http { status: 401, .. } | Error::Auth(_) => "ERR_SYNC_AUTH",
            Error::Http { status: 404, .. } => "ERR_SYNC_NOT_FOUND",
            Error::Http { status: 429, .. } => "ERR_SYNC_RATE_LIMITED",
            Error::Http { status, .. } if *status >= 500 => "ERR_SYNC_SERVER",
            Error::Http { .. } => "ERR_SYNC_REJECTED",
            Error::Refused { status: Some(401), .. } => "ERR_SYNC_AUTH",
            Error::Refused { status: None, code, .. } if code == "ERR_SYNC_INVALID_ARG" => "ERR_SYNC_INVALID_ARG",
            Error::Refused { .. } => "ERR_SYNC_REJECTED",
            Error::Resync { .. } => "ERR_SYNC_RESYNC",
            Error::Tls(_) => "ERR_SYNC_TLS",
            Error::Protocol(_) => "ERR_SYNC_PROTOCOL",
            Error::Storage(_) => "ERR_SYNC_STORAGE",
            Error::Corrupt(_) => "ERR_SYNC_CORRUPT",
            Error::Closed => "ERR_SYNC_CLOSED",
            Error::InvalidArg(_) => "ERR_SYNC_INVALID_ARG",
            Error::NotFound(_) => "ERR_SYNC_NOT_FOUND",
            Error::Query(_) => "ERR_SYNC_QUERY",
        }
    }

    /// Worth retrying later without user action: network trouble, 5xx, 429, 408.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network(_) | Error::Protocol(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }

    /// The server's own error code (`POLICY_DENIED`, …) for HTTP errors.
    pub fn server_code(&self) -> Option<&str> {
        match self {
            Error::Http { code, .. } => Some(code),
            Error::Refused { code, status: Some(_), .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            Error::Refused { status, .. } => *status,
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
            {
                Error::Corrupt(e.to_string())
            }
            _ => Error::Storage(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Storage(format!("stored JSON is unreadable: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
