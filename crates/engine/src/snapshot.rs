//! Complete bootstrap. The server keeps only its last 10,000 change-log
//! events, so a replica built by pulling from 0 misses older rows. Instead we
//! read the log head, then every row of each entity; pulling from that head
//! afterwards replays whatever changed while the rows were read, and replaying
//! a change onto a row that already has it is harmless.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use serde_json::Value;
use tracing::Instrument;

use crate::api::{Api, EntityInfo};
use crate::error::{Error, Result};
use crate::protocol::{ChangeEvent, Kind, Row};
use crate::replica::RowText;
use crate::restart::{Anchor, ANCHOR_SPAN};
use crate::task::AbortOnDrop;

/// Rows per request for entities without read policies.
const PAGE: usize = 2000;

pub struct Snapshot {
    /// The log head read before any row.
    pub head: u64,
    /// Each row as the replica keeps it: in the manifest's types, as text.
    pub rows: BTreeMap<String, BTreeMap<String, RowText>>,
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
async fn events_at(api: &Api, token: Option<&str>, head: u64) -> Result<Vec<ChangeEvent>> {
    let mut from = head.saturating_sub(ANCHOR_SPAN);
    loop {
        match api.pull_until(token, from, head, None).await {
            Ok(page) if !page.has_more && page.cursor.last_seq < head => {
                return Err(Error::Resync { oldest_seq: page.cursor.last_seq + 1 })
            }
            Ok(page) => return Ok(page.changes),
            // the log keeps less than the span: read what it keeps
            Err(Error::Resync { oldest_seq }) if oldest_seq > from + 1 && oldest_seq <= head => {
                from = oldest_seq - 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A bound above which the server's ids were made after the head was read.
/// They begin with the time they were made, in nanoseconds (PROTOCOL §3.1):
/// a row whose id sorts after every insert read up to the head, or after
/// the second of the newest event there, was made after that event, so its
/// own insert lies past the head (for an entity whose events every reader
/// is shown). `None` when the events tell nothing (none readable, though the
/// log holds some).
fn made_after(head: u64, events: &[ChangeEvent]) -> Option<String> {
    if head == 0 {
        return Some(String::new()); // an empty log: every row is newer
    }
    let newest_insert =
        events.iter().filter(|c| c.kind == Kind::Insert && server_made(&c.row_id)).map(|c| &c.row_id).max();
    let second = events
        .last()
        .and_then(|c| c.timestamp.strip_suffix('Z')?.parse::<u64>().ok())
        .map(|s| format!("{:032x}ffffffff", (s + 1).saturating_mul(1_000_000_000) - 1));
    match (newest_insert, second) {
        (Some(id), Some(second)) => Some(id.clone().min(second)),
        (id, second) => id.cloned().or(second),
    }
}

/// An id of the server's own making: 32 hex digits of time, 8 of a counter.
fn server_made(id: &str) -> bool {
    id.len() == 40 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Rows made after the head was read hold events past it, which a restart
/// within the same second may have taken away: it re-seeds the same log up
/// to the head, and a row inserted and deleted before it has no event left
/// to remove it. So those rows are read again, after the log was (by
/// `anchor_after_rows`), and one gone meanwhile is left out: deleted since,
/// its delete lies past the head and is pulled anyway; gone with a restart,
/// nothing else would remove it.
async fn forget_vanished(
    api: &Api,
    token: Option<&str>,
    entities: &[EntityInfo],
    rows: &mut BTreeMap<String, BTreeMap<String, RowText>>,
    bound: &str,
) -> Result<()> {
    for info in entities.iter().filter(|e| !e.has_policy) {
        let Some(rows) = rows.get_mut(&info.name) else { continue };
        let newer: Vec<String> = rows
            .range::<str, _>((Excluded(bound), Unbounded))
            .map(|(id, _)| id)
            .filter(|id| server_made(id))
            .cloned()
            .collect();
        if newer.is_empty() {
            continue;
        }
        let now: BTreeSet<String> = api
            .rows_after(token, &info.name, Some(bound), None)
            .await?
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        for id in newer.iter().filter(|id| !now.contains(*id)) {
            rows.remove(id);
        }
    }
    Ok(())
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
    let (anchor, bound) = if anchored {
        let events = events_at(api, token, head).await?;
        (Anchor::extended(None, &events, head), made_after(head, &events))
    } else {
        (None, None)
    };
    let mut out = BTreeMap::new();
    let mut log_only = Vec::new();
    'entities: for info in entities {
        let mut rows = BTreeMap::new();
        // With a read policy the server filters rows after applying the
        // limit, so a short page would not prove the end: read it whole.
        let limit = (!info.has_policy).then_some(PAGE);
        let mut next = Some(ask(api, token, &info.name, None, limit));
        while let Some(asked) = next.take() {
            let mut page = match asked.await {
                Ok(page) => page,
                Err(Error::Http { status: 403, .. }) => {
                    log_only.push(info.name.clone());
                    continue 'entities;
                }
                Err(e) => return Err(e),
            };
            let mut ids = Vec::with_capacity(page.len());
            for row in &mut page {
                info.fields.normalize(row);
                match row.get("id") {
                    Some(Value::String(id)) => ids.push(id.clone()),
                    _ => return Err(Error::Protocol(format!("a {} row has no string id", info.name))),
                }
            }
            let done = limit.is_none_or(|l| page.len() < l);
            if !done {
                // the next page is asked for while this one is made into
                // the replica's texts: the server's time and ours overlap
                next = Some(ask(api, token, &info.name, ids.last().cloned(), limit));
            }
            for (id, row) in ids.into_iter().zip(&page) {
                rows.insert(id, RowText::new(row));
            }
            progress(&info.name, rows.len(), done);
        }
        out.insert(info.name.clone(), rows);
    }
    let anchor = if anchored { anchor_after_rows(api, token, anchor, head).await? } else { None };
    if let Some(bound) = &bound {
        forget_vanished(api, token, entities, &mut out, bound).await?;
    }
    Ok(Snapshot { head, rows: out, log_only, anchor })
}

/// The page of `entity`'s rows after `after`, asked for on a task of its
/// own, so that it is on its way while the caller works.
fn ask(
    api: &Api,
    token: Option<&str>,
    entity: &str,
    after: Option<String>,
    limit: Option<usize>,
) -> AbortOnDrop<Result<Vec<Row>>> {
    let (api, token, entity) = (api.clone(), token.map(str::to_string), entity.to_string());
    let page = async move { api.rows_after(token.as_deref(), &entity, after.as_deref(), limit).await };
    AbortOnDrop::spawn(page.instrument(tracing::Span::current()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(seq: u64, row_id: &str, timestamp: &str) -> ChangeEvent {
        ChangeEvent {
            seq,
            entity: "Todo".into(),
            row_id: row_id.into(),
            kind: Kind::Insert,
            data: None,
            timestamp: timestamp.into(),
        }
    }

    fn id(nanos: u128, n: u32) -> String {
        format!("{nanos:032x}{n:08x}")
    }

    #[test]
    fn rows_made_after_the_head_are_told_by_their_ids() {
        let second = 1_761_811_234u128;
        let at = |ms: u128| second * 1_000_000_000 + ms * 1_000_000;
        // the newest insert up to the head was made 200 ms into its second
        let events = [insert(1, &id(at(100), 0), "1761811234Z"), insert(2, &id(at(200), 1), "1761811234Z")];
        let bound = made_after(2, &events).unwrap();
        assert!(id(at(300), 2) > bound, "made later within the same second");
        assert!(id(at(200), 1) <= bound && id(at(100), 0) <= bound);
        // with no insert there, the end of the newest event's second bounds it
        let update = ChangeEvent { kind: Kind::Update, ..insert(3, &id(at(100), 0), "1761811234Z") };
        let bound = made_after(3, std::slice::from_ref(&update)).unwrap();
        assert!(id(at(999), 9) <= bound && id(at(1000), 0) > bound);
        // ids not of the server's making (an admin push) bound nothing
        assert_eq!(made_after(1, &[insert(1, "todo-1", "")]), None);
        assert!(!server_made("todo-1") && !server_made(&id(at(0), 0).to_uppercase()) && server_made(&id(at(0), 0)));
        // an empty log: every row is newer
        assert_eq!(made_after(0, &[]).as_deref(), Some(""));
        assert_eq!(made_after(5, &[]), None);
    }
}
