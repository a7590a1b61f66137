//! Wire types of the Pylon sync protocol (see PROTOCOL.md §3, §5, §9).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Prefix of ids given to rows inserted locally until the server names them
/// (the upstream clients' convention; sent as the insert's nonce).
pub const TEMP_PREFIX: &str = "_pending_";

/// A row: a JSON object. The row id lives in `"id"`.
pub type Row = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Insert,
    Update,
    Delete,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "insert" => Some(Kind::Insert),
            "update" => Some(Kind::Update),
            "delete" => Some(Kind::Delete),
            _ => None,
        }
    }
}

/// One entry of the server's change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub seq: u64,
    pub entity: String,
    pub row_id: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Row>,
    #[serde(default)]
    pub timestamp: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub last_seq: u64,
}

/// `GET /api/sync/pull` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct PullPage {
    pub changes: Vec<ChangeEvent>,
    pub cursor: Cursor,
    #[serde(default)]
    pub has_more: bool,
}

/// What `/api/auth/me` says about the caller, in the spec's shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub is_admin: bool,
    pub roles: Vec<String>,
}

impl Session {
    pub fn identity(&self) -> Identity {
        Identity { user_id: self.user_id.clone(), tenant_id: self.tenant_id.clone() }
    }

    /// See [`Identity::key`].
    pub fn identity_key(&self) -> String {
        self.identity().key()
    }
}

/// The raw `/api/auth/me` body (snake_case, optional members).
#[derive(Debug, Deserialize)]
pub(crate) struct MeBody {
    pub user_id: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub is_admin: bool,
    #[serde(default)]
    pub roles: Vec<String>,
}

impl From<MeBody> for Session {
    fn from(b: MeBody) -> Self {
        Session { user_id: b.user_id, tenant_id: b.tenant_id, is_admin: b.is_admin, roles: b.roles }
    }
}

/// Events the server keeps: its log holds the last 10,000, numbered from 1
/// since it started; a pull from 0 past that is not refused, it just
/// starts later (PROTOCOL §4.3, §5.3).
pub const LOG_CAPACITY: u64 = 10_000;

/// Data for `hydrate`: rows per entity, the cursor they are consistent
/// with, and whose rows they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hydration {
    pub entities: std::collections::BTreeMap<String, Vec<Row>>,
    pub cursor: Cursor,
    /// The session of the token the rows were read with (`None`: not said,
    /// as in data made by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

/// The part of a session that decides which rows are visible. Rows and
/// queued writes are kept per identity key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
}

impl Identity {
    pub fn key(&self) -> String {
        format!("user:{}|tenant:{}", self.user_id.as_deref().unwrap_or(""), self.tenant_id.as_deref().unwrap_or(""))
    }
}

/// The JSON error envelope `{"error":{"code","message","oldest_seq"?}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub error: EnvelopeError,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EnvelopeError {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub oldest_seq: Option<u64>,
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}
