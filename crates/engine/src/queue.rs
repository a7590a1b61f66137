//! The mutation queue: local writes waiting for the server, in the order they
//! were made. Failed mutations stay (without effect) until removed or retried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::protocol::{Kind, Row, TEMP_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Failed => "failed",
        }
    }
}

/// Why the server refused a mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationError {
    pub code: String,
    pub message: String,
    pub status: Option<u16>,
}

/// One local write.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub id: String,
    /// Position in the queue (SQLite rowid): later writes have larger orders.
    pub order: i64,
    /// The identity the write was made under; it is only ever sent with that identity's token.
    pub identity: String,
    pub entity: String,
    pub row_id: String,
    pub kind: Kind,
    pub data: Option<Row>,
    pub status: Status,
    pub error: Option<MutationError>,
    pub attempts: u32,
    pub created_at: u64,
    /// Set before an insert is first sent. Inserts carry no idempotency key,
    /// so once sent, an insert whose answer was lost is looked for on the
    /// server before it is sent again.
    pub sent: Option<Sent>,
}

/// What the server could already hold when an insert was first sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sent {
    /// The greatest server id the engine held in that entity when it sent
    /// (acknowledged inserts included): server ids grow with time, so the
    /// insert, if applied, created a row with a greater id.
    pub after: Option<String>,
    /// The temporary row id went out as the body's `id`: the server ignores
    /// it for the row but keeps it in the insert event's `data`, so the
    /// event names its writer exactly (PROTOCOL §3.2).
    #[serde(default)]
    pub nonce: bool,
    /// The cursor when the insert was sent: its event, if any, comes later
    /// in the log.
    #[serde(default)]
    pub since: Option<u64>,
    /// The server lifetime (see `Engine`'s restart count) the insert was
    /// sent in: a log renumbered since then no longer holds its event.
    #[serde(default)]
    pub server_gen: u64,
}

type RowKey = (String, String);

/// The active identity's mutations.
#[derive(Debug, Default)]
pub struct Queue {
    items: BTreeMap<i64, Mutation>,
    by_id: HashMap<String, i64>,
    pending_by_row: HashMap<RowKey, BTreeSet<i64>>,
    /// Temporary ids → mutations naming them (as the row or in the data), so
    /// an acknowledged insert rewrites only those.
    refs: HashMap<String, BTreeSet<i64>>,
    pending: usize,
    /// Pending inserts that were sent without a definite answer.
    in_doubt: usize,
}

pub(crate) fn is_in_doubt(m: &Mutation) -> bool {
    m.status == Status::Pending && m.kind == Kind::Insert && m.sent.is_some()
}

/// The temporary ids a mutation names.
pub(crate) fn temp_refs(m: &Mutation) -> impl Iterator<Item = &str> {
    let in_data = m.data.iter().flat_map(|d| d.values().filter_map(Value::as_str));
    std::iter::once(m.row_id.as_str()).chain(in_data).filter(|s| s.starts_with(TEMP_PREFIX))
}

impl Queue {
    pub fn new(mutations: impl IntoIterator<Item = Mutation>) -> Queue {
        let mut q = Queue::default();
        for m in mutations {
            q.push(m);
        }
        q
    }

    pub fn push(&mut self, m: Mutation) {
        self.by_id.insert(m.id.clone(), m.order);
        if m.status == Status::Pending {
            self.pending_by_row.entry(key(&m)).or_default().insert(m.order);
            self.pending += 1;
        }
        for r in temp_refs(&m) {
            self.refs.entry(r.to_string()).or_default().insert(m.order);
        }
        self.in_doubt += usize::from(is_in_doubt(&m));
        self.items.insert(m.order, m);
    }

    pub fn remove(&mut self, id: &str) -> Option<Mutation> {
        let order = self.by_id.remove(id)?;
        let m = self.items.remove(&order)?;
        self.unindex(&m);
        Some(m)
    }

    fn unindex(&mut self, m: &Mutation) {
        self.in_doubt -= usize::from(is_in_doubt(m));
        let k = key(m);
        if let Some(set) = self.pending_by_row.get_mut(&k) {
            if set.remove(&m.order) {
                self.pending -= 1;
            }
            if set.is_empty() {
                self.pending_by_row.remove(&k);
            }
        }
        for r in temp_refs(m) {
            if let Some(set) = self.refs.get_mut(r) {
                set.remove(&m.order);
                if set.is_empty() {
                    self.refs.remove(r);
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Mutation> {
        self.by_id.get(id).and_then(|o| self.items.get(o))
    }

    pub fn all(&self) -> impl Iterator<Item = &Mutation> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// Inserts that may or may not have been applied (see `reconcile`).
    pub fn in_doubt(&self) -> usize {
        self.in_doubt
    }

    /// The oldest pending mutation: the next one to send.
    pub fn next_pending(&self) -> Option<&Mutation> {
        self.items.values().find(|m| m.status == Status::Pending)
    }

    /// Pending mutations in queue order.
    pub fn pending(&self) -> impl Iterator<Item = &Mutation> {
        self.items.values().filter(|m| m.status == Status::Pending)
    }

    /// Pending mutations of one row, oldest first.
    pub fn pending_for<'a>(&'a self, entity: &str, row_id: &str) -> impl Iterator<Item = &'a Mutation> + 'a {
        self.pending_by_row
            .get(&(entity.to_string(), row_id.to_string()))
            .into_iter()
            .flat_map(move |set| set.iter().filter_map(|o| self.items.get(o)))
    }

    pub fn has_pending_for(&self, entity: &str, row_id: &str) -> bool {
        self.pending_by_row.contains_key(&(entity.to_string(), row_id.to_string()))
    }

    /// Puts a changed copy of a queued mutation in its place (same id, same
    /// order); indexed again only when what the indexes key on changed.
    pub fn replace(&mut self, m: Mutation) {
        let Some(old) = self.by_id.get(&m.id).and_then(|o| self.items.get_mut(o)) else { return };
        let same_keys = old.entity == m.entity
            && old.row_id == m.row_id
            && old.status == m.status
            && old.order == m.order
            && temp_refs(old).eq(temp_refs(&m));
        if same_keys {
            self.in_doubt = self.in_doubt - usize::from(is_in_doubt(old)) + usize::from(is_in_doubt(&m));
            *old = m;
        } else if self.remove(&m.id).is_some() {
            self.push(m);
        }
    }

    /// The mutations that name a temporary id, rewritten to the server's id:
    /// as the target row and wherever it appears as a value in the data.
    /// Pure: the caller persists them, then `replace`s them in. `except`:
    /// a mutation left out (the acknowledged insert itself).
    pub fn remapped(&self, entity: &str, temp: &str, server: &str, except: Option<&str>) -> Vec<Mutation> {
        let mut changed = Vec::new();
        let naming = self.refs.get(temp).into_iter().flatten().filter_map(|o| self.items.get(o));
        let naming = naming.filter(|m| except != Some(m.id.as_str()));
        for before in naming {
            let mut m = before.clone();
            if m.entity == entity && m.row_id == temp {
                m.row_id = server.to_string();
            }
            if let Some(data) = m.data.as_mut() {
                for v in data.values_mut() {
                    if v.as_str() == Some(temp) {
                        *v = Value::String(server.to_string());
                    }
                }
            }
            if &m != before {
                changed.push(m);
            }
        }
        changed
    }
}

fn key(m: &Mutation) -> RowKey {
    (m.entity.clone(), m.row_id.clone())
}

/// The row as the user should see it: the server's row with the pending
/// mutations applied in order. `None` means the row does not exist.
pub fn project<'a>(base: Option<&Row>, row_id: &str, pending: impl Iterator<Item = &'a Mutation>) -> Option<Row> {
    let mut row = base.cloned();
    for m in pending {
        match m.kind {
            Kind::Insert => {
                let mut r = m.data.clone().unwrap_or_default();
                r.insert("id".into(), Value::String(row_id.to_string()));
                row = Some(r);
            }
            Kind::Update => {
                if let (Some(r), Some(patch)) = (row.as_mut(), m.data.as_ref()) {
                    for (k, v) in patch {
                        if k != "id" {
                            r.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Kind::Delete => row = None,
        }
    }
    row
}

/// A pending write of a `Todo` for tests, with id `m<order>`.
#[cfg(test)]
pub(crate) fn sample(order: i64, kind: Kind, row_id: &str, data: Option<Value>) -> Mutation {
    Mutation {
        id: format!("m{order}"),
        order,
        identity: String::new(),
        entity: "Todo".into(),
        row_id: row_id.into(),
        kind,
        data: data.map(|d| d.as_object().expect("an object").clone()),
        status: Status::Pending,
        error: None,
        attempts: 0,
        created_at: 0,
        sent: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    use super::sample as m;

    #[test]
    fn the_queue_keeps_order_counts_and_per_row_indexes_in_step() {
        let temp = "_pending_1_a";
        let mut failed = m(3, Kind::Update, "b", Some(json!({ "done": true })));
        failed.status = Status::Failed;
        let mut q = Queue::new([
            m(2, Kind::Update, temp, Some(json!({ "done": true }))),
            m(1, Kind::Insert, temp, Some(json!({ "title": "x" }))),
            failed,
        ]);
        assert_eq!((q.len(), q.pending_count(), q.in_doubt()), (3, 2, 0));
        assert_eq!(q.next_pending().unwrap().id, "m1", "oldest first, whatever the order given");
        assert_eq!(q.pending_for("Todo", temp).map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
        assert!(!q.has_pending_for("Todo", "b"), "a failed write is not pending");
        // an insert sent without an answer is in doubt
        let mut sent = q.get("m1").unwrap().clone();
        sent.sent = Some(Sent::default());
        q.replace(sent);
        assert_eq!(q.in_doubt(), 1);
        q.remove("m1");
        assert_eq!((q.len(), q.pending_count(), q.in_doubt()), (2, 1, 0));
        assert!(q.remove("m1").is_none());
    }

    #[test]
    fn an_acknowledged_insert_rewrites_only_the_writes_that_name_it() {
        let temp = "_pending_1_a";
        let q = Queue::new([
            m(1, Kind::Insert, temp, Some(json!({ "title": "x" }))),
            m(2, Kind::Update, temp, Some(json!({ "done": true }))),
            m(3, Kind::Insert, "_pending_2_b", Some(json!({ "parent": temp }))),
            m(4, Kind::Update, "c", Some(json!({ "note": "_pending_9_z" }))),
        ]);
        let changed = q.remapped("Todo", temp, "srv1", None);
        let ids: Vec<&str> = changed.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);
        assert_eq!(changed[1].row_id, "srv1");
        assert_eq!(changed[2].data.as_ref().unwrap()["parent"], "srv1");
        assert_eq!(q.get("m2").unwrap().row_id, temp, "remapped() only plans");
    }

    #[test]
    fn pending_writes_project_onto_the_server_row_in_order() {
        let base = json!({ "id": "a", "title": "x", "done": false }).as_object().unwrap().clone();
        let update = m(1, Kind::Update, "a", Some(json!({ "done": true, "id": "other" })));
        let row = project(Some(&base), "a", [&update].into_iter()).unwrap();
        assert_eq!(Value::Object(row), json!({ "id": "a", "title": "x", "done": true }));
        let delete = m(2, Kind::Delete, "a", None);
        assert_eq!(project(Some(&base), "a", [&update, &delete].into_iter()), None);
        let insert = m(3, Kind::Insert, "t", Some(json!({ "title": "y" })));
        let row = project(None, "t", [&insert, &update].into_iter()).unwrap();
        assert_eq!(Value::Object(row), json!({ "id": "t", "title": "y", "done": true }));
        assert_eq!(project(None, "t", [&update].into_iter()), None, "an update of no row makes none");
    }
}
