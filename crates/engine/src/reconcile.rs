//! Finding out whether an insert whose answer was lost was applied.
//!
//! REST inserts carry no idempotency key (PROTOCOL §7): an insert re-sent
//! after a timeout, a reset connection or a crash creates a second row when
//! the first one had been applied. The server offers one exact witness: an
//! `id` sent in the insert body is ignored for the row but kept in the insert
//! event's `data` (PROTOCOL §3.2). The engine sends each insert's temporary
//! id that way (the nonce), so:
//!
//! - the moment an insert event naming one of our inserts arrives, by stream
//!   or pull, it acknowledges that insert ([`own_insert`]);
//! - before re-sending, the engine reads the log from where it stood when it
//!   sent, looking for the event ([`names`]): found, or absent to the head,
//!   is an exact answer.
//!
//! When the log no longer reaches back that far, or a restart renumbered it
//! since, the fallback matches fields: a row created after the insert was
//! sent (server ids grow with time, so its id is greater than any id the
//! engine knew then) whose fields are the ones we sent. The row may have been
//! changed by someone else before we look, so while an insert is in doubt
//! the engine also keeps the insert events it applies (`Witness`): the row as
//! it was created. What remains ambiguous there: another client inserting
//! identical data in the same window, or a row the user cannot read back;
//! docs/compat.md says so.

use std::collections::{BTreeMap, VecDeque};

use serde_json::Value;

use crate::protocol::{ChangeEvent, Kind, Row, TEMP_PREFIX};
use crate::queue::{Mutation, Queue, Status};
use crate::replica::{Replica, RowText};

/// Insert events applied while some insert was in doubt, newest last.
#[derive(Debug, Default)]
pub struct Witness {
    inserts: VecDeque<(String, String, Row)>,
}

impl Witness {
    const CAP: usize = 20_000;

    pub fn record(&mut self, changes: &[ChangeEvent]) {
        for c in changes.iter().filter(|c| c.kind == Kind::Insert) {
            if let Some(data) = &c.data {
                self.inserts.push_back((c.entity.clone(), c.row_id.clone(), data.clone()));
            }
        }
        while self.inserts.len() > Self::CAP {
            self.inserts.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.inserts.clear();
    }
}

/// What looking for an insert in doubt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// It created the row with this server id.
    Applied(String),
    /// It was not applied (or, by field matching, no row shows it was).
    NotApplied,
}

impl From<Option<String>> for Found {
    /// What field matching found (see [`find_applied`]).
    fn from(server_id: Option<String>) -> Found {
        server_id.map_or(Found::NotApplied, Found::Applied)
    }
}

/// The nonce an insert event carries, if a writer of ours could have sent it.
pub fn nonce(c: &ChangeEvent) -> Option<&str> {
    if c.kind != Kind::Insert {
        return None;
    }
    c.data.as_ref()?.get("id")?.as_str().filter(|n| n.starts_with(TEMP_PREFIX) && *n != c.row_id)
}

/// `c` is the insert event of `m`, sent with its nonce.
pub fn names(c: &ChangeEvent, m: &Mutation) -> bool {
    m.kind == Kind::Insert && c.entity == m.entity && nonce(c) == Some(m.row_id.as_str())
}

/// The queued insert, sent with its nonce and not yet acknowledged, that
/// this event reports applied.
pub fn own_insert<'a>(queue: &'a Queue, c: &ChangeEvent) -> Option<&'a Mutation> {
    let temp = nonce(c)?;
    queue
        .pending_for(&c.entity, temp)
        .find(|m| m.kind == Kind::Insert && m.status == Status::Pending && m.sent.as_ref().is_some_and(|s| s.nonce))
}

/// The server id of the row this in-doubt insert created, if the witness or
/// the replica holds it (by fields: see the module's header).
pub fn find_applied(replica: &Replica, witness: &Witness, m: &Mutation) -> Option<String> {
    let after = m.sent.as_ref()?.after.as_deref();
    let stored = replica.base_after(&m.entity, after).filter_map(|(id, row)| Some((id, row.data.as_ref()?.parse())));
    find_by_fields(witness, m, stored)
}

/// The same, among the rows of a snapshot about to be installed, so that a
/// snapshot never shows an insert of ours next to its optimistic row.
pub fn find_in_snapshot(rows: &BTreeMap<String, RowText>, witness: &Witness, m: &Mutation) -> Option<String> {
    use std::ops::Bound::{Excluded, Unbounded};
    let after = m.sent.as_ref()?.after.clone();
    let lower = after.map_or(Unbounded, Excluded);
    find_by_fields(witness, m, rows.range::<String, _>((lower, Unbounded)).map(|(id, r)| (id, r.parse())))
}

fn find_by_fields<'a>(
    witness: &Witness,
    m: &Mutation,
    mut stored: impl Iterator<Item = (&'a String, Row)>,
) -> Option<String> {
    if m.kind != Kind::Insert {
        return None;
    }
    let sent = m.sent.as_ref()?;
    let empty = Row::new();
    let data = m.data.as_ref().unwrap_or(&empty);
    let after = sent.after.as_deref();
    let seen = witness
        .inserts
        .iter()
        .find(|(e, id, created)| *e == m.entity && after.is_none_or(|a| id.as_str() > a) && same_row(data, created))
        .map(|(_, id, _)| id.clone());
    seen.or_else(|| stored.find(|(_, row)| same_row(data, row)).map(|(id, _)| id.clone()))
}

/// Every field we sent is stored with that value. The server stores bools as
/// 0/1 and objects as JSON text when rows are read back (§3.1), while change
/// events keep what the client sent, so both forms count as equal.
pub fn same_row(sent: &Row, stored: &Row) -> bool {
    sent.iter().filter(|(k, _)| *k != "id").all(|(k, v)| stored.get(k).map_or(v.is_null(), |s| same_value(v, s)))
}

fn same_value(sent: &Value, stored: &Value) -> bool {
    match (sent, stored) {
        (Value::Bool(b), Value::Number(n)) => n.as_i64() == Some(i64::from(*b)),
        (Value::Number(a), Value::Number(b)) => a == b || a.as_f64() == b.as_f64(),
        (Value::Object(_) | Value::Array(_), Value::String(text)) => {
            serde_json::from_str::<Value>(text).is_ok_and(|v| v == *sent)
        }
        _ => sent == stored,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::{Queue, Sent, Status};
    use crate::replica::{Effect, RowText};

    fn row(v: Value) -> Row {
        v.as_object().unwrap().clone()
    }

    /// A pending insert of `{title: "milk"}` under `row_id`, sent once.
    fn sent_insert(row_id: &str, sent: Sent) -> Mutation {
        Mutation {
            id: "m".into(),
            order: 1,
            identity: String::new(),
            entity: "Todo".into(),
            row_id: row_id.into(),
            kind: Kind::Insert,
            data: Some(row(json!({ "title": "milk" }))),
            status: Status::Pending,
            error: None,
            attempts: 1,
            created_at: 0,
            sent: Some(sent),
        }
    }

    #[test]
    fn stored_forms_of_the_sent_values_match() {
        let sent = row(json!({ "title": "a", "done": true, "tags": ["x"], "n": 1, "gone": null }));
        assert!(same_row(&sent, &row(json!({ "id": "i", "title": "a", "done": 1, "tags": "[\"x\"]", "n": 1.0 }))));
        assert!(same_row(&sent, &row(json!({ "title": "a", "done": true, "tags": ["x"], "n": 1, "gone": null }))));
        assert!(!same_row(&sent, &row(json!({ "title": "b", "done": 1, "tags": "[\"x\"]", "n": 1 }))));
        assert!(!same_row(&sent, &row(json!({ "title": "a", "done": 0, "tags": "[\"x\"]", "n": 1 }))));
    }

    #[test]
    fn only_rows_newer_than_what_we_knew_at_send_time_are_candidates() {
        let mut replica = Replica::new();
        let put = |id: &str, title: &str| Effect::Put {
            entity: "Todo".into(),
            id: id.into(),
            seq: 1,
            data: RowText::new(&row(json!({ "id": id, "title": title }))),
        };
        // "milk" existed before we sent (id 0001); ours would be newer
        replica.commit(&[put("0001", "milk"), put("0002", "bread")], &Queue::default());
        let after = replica.max_base_id("Todo").map(str::to_string);
        let mut m = sent_insert("_pending_1", Sent { after, ..Default::default() });
        assert_eq!(find_applied(&replica, &Witness::default(), &m), None, "an older identical row is not ours");
        replica.commit(&[put("0003", "eggs"), put("0004", "milk")], &Queue::default());
        assert_eq!(find_applied(&replica, &Witness::default(), &m).as_deref(), Some("0004"));
        m.sent = None;
        assert_eq!(find_applied(&replica, &Witness::default(), &m), None, "an insert never sent was not applied");
        // changed by someone else since: the insert event still tells
        m.sent = Some(Sent { after: Some("0004".into()), ..Default::default() });
        replica.commit(&[put("0005", "milk, changed")], &Queue::default());
        assert_eq!(find_applied(&replica, &Witness::default(), &m), None);
        let mut witness = Witness::default();
        witness.record(&[crate::protocol::ChangeEvent {
            seq: 9,
            entity: "Todo".into(),
            row_id: "0005".into(),
            kind: Kind::Insert,
            data: Some(row(json!({ "title": "milk" }))),
            timestamp: String::new(),
        }]);
        assert_eq!(find_applied(&replica, &witness, &m).as_deref(), Some("0005"));
    }

    #[test]
    fn an_insert_event_names_its_writer_by_the_nonce_alone() {
        let m = sent_insert("_pending_1_abc", Sent { nonce: true, ..Default::default() });
        let event = |entity: &str, kind: Kind, data: Value| crate::protocol::ChangeEvent {
            seq: 3,
            entity: entity.into(),
            row_id: "0009".into(),
            kind,
            data: data.as_object().cloned(),
            timestamp: String::new(),
        };
        // identical fields from another writer are not ours; other fields with our nonce are
        assert!(!names(&event("Todo", Kind::Insert, json!({ "title": "milk" })), &m));
        assert!(!names(&event("Todo", Kind::Insert, json!({ "id": "_pending_1_xyz", "title": "milk" })), &m));
        assert!(names(&event("Todo", Kind::Insert, json!({ "id": "_pending_1_abc", "title": "changed" })), &m));
        assert!(!names(&event("Note", Kind::Insert, json!({ "id": "_pending_1_abc" })), &m));
        assert!(!names(&event("Todo", Kind::Update, json!({ "id": "_pending_1_abc" })), &m));
        let mut q = Queue::new([m.clone()]);
        let ours = event("Todo", Kind::Insert, json!({ "id": "_pending_1_abc", "title": "milk" }));
        assert_eq!(own_insert(&q, &ours).map(|m| m.id.as_str()), Some("m"));
        // an insert that went out without its nonce (an admin batch) is not claimed this way
        let mut batch = m.clone();
        batch.sent = Some(Sent::default());
        q.replace(batch);
        assert!(own_insert(&q, &ours).is_none());
    }
}
