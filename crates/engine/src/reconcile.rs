//! Finding out whether an insert whose answer was lost was applied.
//!
//! REST inserts carry no idempotency key (PROTOCOL §7): an insert re-sent
//! after a timeout, a reset connection or a crash creates a second row when
//! the first one had been applied. So before re-sending, the engine pulls to
//! the head and looks in the replica for the row: a row created after the
//! insert was sent (server ids grow with time, so its id is greater than any
//! id the engine knew then) whose fields are the ones we sent.
//!
//! The row may have been changed by someone else before we look, so while an
//! insert is in doubt the engine also keeps the insert events it applies
//! (`Witness`): the row as it was created.
//!
//! What remains ambiguous: another client inserting identical data in the
//! same window, or a row the user cannot read back; docs/compat.md says so.

use std::collections::VecDeque;

use serde_json::Value;

use crate::protocol::{ChangeEvent, Kind, Row};
use crate::queue::Mutation;
use crate::replica::Replica;

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

/// The server id of the row this in-doubt insert created, if the witness or
/// the replica holds it.
pub fn find_applied(replica: &Replica, witness: &Witness, m: &Mutation) -> Option<String> {
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
    seen.or_else(|| {
        replica
            .base_after(&m.entity, after)
            .find(|(_, row)| row.data.as_ref().is_some_and(|stored| same_row(data, &stored.parse())))
            .map(|(id, _)| id.clone())
    })
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
        let mut m = Mutation {
            id: "m".into(),
            order: 1,
            identity: String::new(),
            entity: "Todo".into(),
            row_id: "_pending_1".into(),
            kind: Kind::Insert,
            data: Some(row(json!({ "title": "milk" }))),
            status: Status::Pending,
            error: None,
            attempts: 1,
            created_at: 0,
            sent: Some(Sent { after: replica.max_base_id("Todo").map(str::to_string) }),
        };
        assert_eq!(find_applied(&replica, &Witness::default(), &m), None, "an older identical row is not ours");
        replica.commit(&[put("0003", "eggs"), put("0004", "milk")], &Queue::default());
        assert_eq!(find_applied(&replica, &Witness::default(), &m).as_deref(), Some("0004"));
        m.sent = None;
        assert_eq!(find_applied(&replica, &Witness::default(), &m), None, "an insert never sent was not applied");
        // changed by someone else since: the insert event still tells
        m.sent = Some(Sent { after: Some("0004".into()) });
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
}
