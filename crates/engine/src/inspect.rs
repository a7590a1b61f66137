//! Reads a replica file without changing it (`pylon-sync inspect`): where
//! it follows the log, whose rows it holds (as a fingerprint, never the
//! identity itself), how many rows of each entity, the writes waiting, and
//! the server lifetime it was taken from.

use std::path::Path;

use crate::db::Db;
use crate::error::Result;
use crate::queue::Status;
use crate::restart::Boot;

/// What a replica file holds.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub cursor: u64,
    /// A fingerprint of the identity the rows belong to; `None` before a
    /// session was ever known.
    pub identity: Option<String>,
    pub entities: Vec<EntityRows>,
    pub pending: usize,
    pub failed: Vec<FailedWrite>,
    /// Writes kept for other identities than the rows' (they are sent when
    /// their identity signs in again).
    pub parked: usize,
    /// Unix ms when the oldest pending write was made.
    pub oldest_pending_at: Option<u64>,
    /// Unix ms the server the replica follows started, as narrowed so far
    /// (`None`: never checked).
    pub server_boot: Option<u64>,
    /// Entities whose manifest fields are kept in the file.
    pub schema: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct EntityRows {
    pub name: String,
    pub rows: u64,
    /// Deleted rows kept until the cursor has passed them.
    pub tombstones: u64,
    /// Its full snapshot is in (else only the log fills it, or it is not bootstrapped yet).
    pub covered: bool,
}

#[derive(Debug, Clone)]
pub struct FailedWrite {
    pub id: String,
    pub entity: String,
    pub kind: &'static str,
    pub code: String,
    pub message: String,
}

/// Reads the replica at `path`, read-only.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let db = Db::open_read_only(path)?;
    let identity = db.meta("identity")?.filter(|i| !i.is_empty());
    let covered: Vec<String> = match db.meta("covered")? {
        Some(text) => crate::engine::parse_covered(&text)?.into_keys().collect(),
        None => Vec::new(),
    };
    let mut entities: Vec<EntityRows> = db
        .row_counts()?
        .into_iter()
        .map(|(name, rows, tombstones)| EntityRows { covered: covered.contains(&name), name, rows, tombstones })
        .collect();
    let empty: Vec<EntityRows> = covered
        .iter()
        .filter(|c| !entities.iter().any(|e| &e.name == *c))
        .map(|name| EntityRows { name: name.clone(), rows: 0, tombstones: 0, covered: true })
        .collect();
    entities.extend(empty);
    entities.sort_by(|a, b| a.name.cmp(&b.name));
    let mutations = db.mutations()?;
    let (mine, parked): (Vec<_>, Vec<_>) =
        mutations.into_iter().partition(|m| identity.as_deref().is_none_or(|i| i == m.identity));
    let schema: Option<serde_json::Map<String, serde_json::Value>> =
        db.meta("schema")?.and_then(|t| serde_json::from_str(&t).ok());
    Ok(Inspection {
        cursor: db.cursor()?,
        identity: identity.as_deref().map(|i| crate::engine::fingerprint(Some(i))),
        entities,
        pending: mine.iter().filter(|m| m.status == Status::Pending).count(),
        failed: mine
            .iter()
            .filter(|m| m.status == Status::Failed)
            .map(|m| FailedWrite {
                id: m.id.clone(),
                entity: m.entity.clone(),
                kind: m.kind.as_str(),
                code: m.error.as_ref().map_or_else(String::new, |e| e.code.clone()),
                message: m.error.as_ref().map_or_else(String::new, |e| e.message.clone()),
            })
            .collect(),
        parked: parked.len(),
        oldest_pending_at: mine.iter().filter(|m| m.status == Status::Pending).map(|m| m.created_at).min(),
        server_boot: db.meta("server_boot")?.as_deref().and_then(Boot::parse).map(|b| b.earliest),
        schema: schema.map(|s| s.keys().cloned().collect()).unwrap_or_default(),
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}
