//! Complete bootstrap. The server keeps only its last 10,000 change-log
//! events, so a replica built by pulling from 0 misses older rows. Instead we
//! read the log head, then every row of each entity; pulling from that head
//! afterwards replays whatever changed while the rows were read, and replaying
//! a change onto a row that already has it is harmless.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::api::{Api, EntityInfo};
use crate::error::{Error, Result};
use crate::protocol::Row;
use crate::restart::{Anchor, ANCHOR_SPAN};

/// Rows per request for entities without read policies.
const PAGE: usize = 2000;

pub struct Snapshot {
    /// The log head read before any row.
    pub head: u64,
    pub rows: BTreeMap<String, BTreeMap<String, Arc<Row>>>,
    /// Entities the server will not list for this caller (the real server
    /// answers 403 to every row route of an entity under a row-level read
    /// policy): only the change log can fill them.
    pub log_only: Vec<String>,
    /// The last event we may read at or before `head`, read before any row:
    /// it ties the rows to the server lifetime the head counts in (see
    /// `restart`). `None` when no such event is readable.
    pub(crate) anchor: Option<Anchor>,
}

/// The last events readable up to `head`, which the rows read next follow.
/// A log renumbered meanwhile (a restart between two pages, or one that now
/// ends before `head`) makes the caller start over, as a 410 would: rows read
/// from a restarted server under the old log's head would take its events up
/// to that seq as already in them.
async fn anchor_at(api: &Api, token: Option<&str>, head: u64) -> Result<Option<Anchor>> {
    let mut from = head.saturating_sub(ANCHOR_SPAN);
    loop {
        match api.pull_until(token, from, head, None).await {
            Ok(page) if !page.has_more && page.cursor.last_seq < head => {
                return Err(Error::Resync { oldest_seq: page.cursor.last_seq + 1 })
            }
            Ok(page) => return Ok(Anchor::extended(None, &page.changes, head)),
            // the log keeps less than the span: read what it keeps
            Err(Error::Resync { oldest_seq }) if oldest_seq > from + 1 && oldest_seq <= head => {
                from = oldest_seq - 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The anchor for rows read after `before` was taken at `head`: the log is
/// read again from `before` to its head now, so the anchor also marks the
/// events the rows may already hold. A log renumbered since `before` was read
/// (the rows may come from the restarted server) makes the caller start over;
/// one renumbered later differs from these marks, even if its first `head`
/// events are the same (a restart re-seeds the same rows within a second).
async fn anchor_after_rows(
    api: &Api,
    token: Option<&str>,
    before: Option<Anchor>,
    head: u64,
) -> Result<Option<Anchor>> {
    let now = api.head(token).await?;
    if now < head {
        return Err(Error::Resync { oldest_seq: now + 1 });
    }
    if now == head {
        return Ok(before);
    }
    let from = before.as_ref().map_or(head, Anchor::read_from);
    let page = api.pull_until(token, from, now - 1, before.as_ref()).await?;
    if let Some(a) = &before {
        if a.check(&page.changes, from, page.cursor.last_seq, !page.has_more, head).is_none() {
            return Err(Error::Resync { oldest_seq: 0 });
        }
    }
    Ok(Anchor::ahead(before.as_ref(), &page.changes, page.cursor.last_seq, head))
}

/// `progress(entity, rows_so_far, done)` is called after every page.
/// `anchored`: also read the snapshot's anchor (a replica that will follow
/// the log needs it; a one-off read for hydration does not).
pub async fn take(
    api: &Api,
    token: Option<&str>,
    entities: &[EntityInfo],
    anchored: bool,
    progress: &(dyn Fn(&str, usize, bool) + Send + Sync),
) -> Result<Snapshot> {
    let head = api.head(token).await?;
    let anchor = if anchored { anchor_at(api, token, head).await? } else { None };
    let mut out = BTreeMap::new();
    let mut log_only = Vec::new();
    'entities: for info in entities {
        let mut rows = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            // With a read policy the server filters rows after applying the
            // limit, so a short page would not prove the end: read it whole.
            let limit = (!info.has_policy).then_some(PAGE);
            let page = match api.rows_after(token, &info.name, after.as_deref(), limit).await {
                Ok(page) => page,
                Err(Error::Http { status: 403, .. }) => {
                    log_only.push(info.name.clone());
                    continue 'entities;
                }
                Err(e) => return Err(e),
            };
            let n = page.len();
            for row in page {
                let id = match row.get("id") {
                    Some(Value::String(id)) => id.clone(),
                    _ => return Err(Error::Protocol(format!("a {} row has no string id", info.name))),
                };
                after = Some(id.clone());
                rows.insert(id, Arc::new(row));
            }
            let done = limit.is_none_or(|l| n < l);
            progress(&info.name, rows.len(), done);
            if done {
                break;
            }
        }
        out.insert(info.name.clone(), rows);
    }
    let anchor = if anchored { anchor_after_rows(api, token, anchor, head).await? } else { None };
    Ok(Snapshot { head, rows: out, log_only, anchor })
}
