//! The local view: the server's rows as the replica holds them, and the
//! queue of local writes shown on top of them. It owns both, so that the
//! overlay (each row with its pending writes applied) never falls out of
//! step with the queue: every change to the queue refreshes the rows it
//! touches, and every change to the rows is committed against the queue.
//! It holds no lock; the engine keeps it in its `state`.

use std::collections::{BTreeMap, BTreeSet};

use crate::queue::{Mutation, Queue};
use crate::replica::{BaseRow, Effect, Loaded, OverlayChanges, Replacement, Replica, Tables};

#[derive(Default)]
pub(crate) struct View {
    replica: Replica,
    queue: Queue,
}

impl View {
    /// Stored rows with a queue on top (built without holding a lock).
    pub fn new(rows: Option<Loaded>, queue: Queue) -> View {
        let mut replica = Replica::new();
        if let Some(rows) = rows {
            replica.load(rows);
        }
        replica.rebuild_overlay(&queue);
        View { replica, queue }
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Becomes `other`; entity versions keep growing past both, so caches of
    /// either are invalidated.
    pub fn take_over(&mut self, other: View) {
        self.replica.take_over(other.replica);
        self.queue = other.queue;
    }

    /// A new local write, shown at once.
    pub fn push(&mut self, m: Mutation) {
        let (entity, row) = (m.entity.clone(), m.row_id.clone());
        self.queue.push(m);
        self.replica.refresh(&entity, &row, &self.queue);
    }

    /// A write leaves the queue (acknowledged or removed); its row shows
    /// without it.
    pub fn remove(&mut self, id: &str) -> Option<Mutation> {
        let m = self.queue.remove(id)?;
        self.replica.refresh(&m.entity, &m.row_id, &self.queue);
        Some(m)
    }

    /// A changed copy of a queued write (its status, or the row it names
    /// after an acknowledgement): the rows it named and names are refreshed,
    /// unless nothing shown changed (a count of attempts, a send noted).
    pub fn replace(&mut self, m: Mutation) {
        let before = self.queue.get(&m.id).map(|old| {
            let shown_same = old.entity == m.entity
                && old.row_id == m.row_id
                && old.kind == m.kind
                && old.data == m.data
                && old.status == m.status;
            (old.entity.clone(), old.row_id.clone(), shown_same)
        });
        let (entity, row) = (m.entity.clone(), m.row_id.clone());
        self.queue.replace(m);
        match before {
            Some((_, _, true)) => {}
            Some((e, r, false)) => {
                if e != entity || r != row {
                    self.replica.refresh(&e, &r, &self.queue);
                }
                self.replica.refresh(&entity, &row, &self.queue);
            }
            None => self.replica.refresh(&entity, &row, &self.queue),
        }
    }

    /// The server's row as an acknowledgement tells it.
    pub fn put_base(&mut self, entity: &str, id: &str, row: BaseRow) {
        self.replica.put_base(entity, id, row);
        self.replica.refresh(entity, id, &self.queue);
    }

    /// Server changes, durable already. Returns the entities whose visible
    /// rows changed.
    pub fn commit(&mut self, effects: &[Effect]) -> Vec<String> {
        self.replica.commit(effects, &self.queue)
    }

    /// Server changes, durable already, where `entities` are made from
    /// them alone (a replay from 0 replacing what they held). Returns the
    /// entities whose visible rows changed.
    pub fn commit_replacing(&mut self, effects: Vec<Effect>, entities: &BTreeSet<String>) -> Vec<String> {
        if entities.is_empty() {
            return self.commit(&effects);
        }
        let (whole, rest): (Vec<Effect>, Vec<Effect>) =
            effects.into_iter().partition(|e| entities.contains(e.entity()));
        let mut tables: Tables = entities.iter().map(|e| (e.clone(), BTreeMap::new())).collect();
        for e in &whole {
            tables.entry(e.entity().to_string()).or_default().insert(e.id().to_string(), e.row());
        }
        let mut touched = self.commit(&rest);
        for entity in self.show(tables) {
            if !touched.contains(&entity) {
                touched.push(entity);
            }
        }
        touched
    }

    /// Whole entities, shown at once (a hydration before it is stored, or
    /// what a replay from 0 made of them). Returns those whose rows changed.
    pub fn show(&mut self, tables: Tables) -> Vec<String> {
        let prepared: BTreeMap<String, Replacement> =
            tables.into_iter().map(|(e, rows)| (e.clone(), self.replica.prepare(&e, rows))).collect();
        let changed = prepared.iter().filter(|(_, r)| r.changes_rows()).map(|(e, _)| e.clone()).collect();
        self.replace_entities(prepared);
        changed
    }

    /// Snapshot entities, replaced wholesale; returns the rows they held.
    pub fn replace_entities(&mut self, prepared: BTreeMap<String, Replacement>) -> Vec<BTreeMap<String, BaseRow>> {
        self.replica.replace_entities(prepared, &self.queue)
    }

    /// Tombstones the cursor has passed go; returns them, for the database.
    pub fn prune_tombstones(&mut self, upto: u64) -> Vec<(String, String)> {
        self.replica.prune_tombstones(upto)
    }

    /// Every server row goes (a reset or a flip); queued writes stay shown.
    pub fn clear_rows(&mut self) {
        self.replica.clear();
        self.replica.rebuild_overlay(&self.queue);
    }

    /// A session resolved: the rows dropped (`clear`, another identity),
    /// stored rows shown again (`rows`, kept under a token now confirmed the
    /// same identity), and that identity's queue on top, in one rebuild.
    pub fn switch(&mut self, clear: bool, rows: Option<Loaded>, queue: Queue) {
        if clear {
            self.replica.clear();
        }
        if let Some(rows) = rows {
            self.replica.load(rows);
        }
        self.queue = queue;
        self.replica.rebuild_overlay(&self.queue);
    }

    /// The overlay entries changed since the last call, for the database.
    pub fn take_overlay_changes(&mut self) -> OverlayChanges {
        self.replica.take_overlay_changes()
    }

    /// The stored overlay is to be replaced whole by the next transaction.
    pub fn overlay_all_changed(&mut self) {
        self.replica.overlay_all_changed();
    }

    /// Queued writes: `(pending, failed)`.
    pub fn counts(&self) -> (usize, usize) {
        let pending = self.queue.pending_count();
        (pending, self.queue.len() - pending)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::Kind;
    use crate::queue::Status;
    use crate::replica::RowText;

    fn m(id: &str, kind: Kind, row_id: &str, data: Option<Value>) -> Mutation {
        crate::queue::sample(id[1..].parse().unwrap(), kind, row_id, data)
    }

    fn shown(v: &View, id: &str) -> Option<Value> {
        v.replica().get("Todo", id).map(|r| serde_json::from_str(r.as_str()).unwrap())
    }

    #[test]
    fn every_change_to_the_queue_shows_at_once_and_counts_follow() {
        let mut v = View::default();
        let temp = "_pending_1_a";
        v.push(m("m1", Kind::Insert, temp, Some(json!({ "title": "x" }))));
        v.push(m("m2", Kind::Update, temp, Some(json!({ "done": true }))));
        assert_eq!(shown(&v, temp), Some(json!({ "id": temp, "title": "x", "done": true })));
        assert_eq!(v.counts(), (2, 0));
        // acknowledged: the row moves to the server's id, the update with it
        v.remove("m1");
        let mut moved = v.queue().get("m2").unwrap().clone();
        moved.row_id = "s1".into();
        v.replace(moved);
        let row = json!({ "id": "s1", "title": "x" });
        v.put_base("Todo", "s1", BaseRow { seq: 0, data: Some(RowText::new(row.as_object().unwrap())) });
        assert_eq!(shown(&v, temp), None);
        assert_eq!(shown(&v, "s1"), Some(json!({ "id": "s1", "title": "x", "done": true })));
        // refused: a failed write no longer shows
        let mut failed = v.queue().get("m2").unwrap().clone();
        failed.status = Status::Failed;
        v.replace(failed);
        assert_eq!(shown(&v, "s1"), Some(row));
        assert_eq!(v.counts(), (0, 1));
        // a reset drops the rows, and another identity's queue shows alone
        v.clear_rows();
        assert_eq!(shown(&v, "s1"), None);
        v.switch(true, None, Queue::new([m("m3", Kind::Insert, "_pending_2_b", Some(json!({ "title": "y" })))]));
        assert_eq!(shown(&v, "_pending_2_b"), Some(json!({ "id": "_pending_2_b", "title": "y" })));
        assert_eq!(v.counts(), (1, 0));
    }
}
