//! Acknowledgements: a mutation the server applied leaves the queue, and an
//! insert's temporary id becomes the server's, on disk and in memory in one
//! step (rows, queued writes on that id, the alias kept for callers). An
//! insert in doubt (its answer lost) is settled exactly by its nonce in the
//! log, else by field matching (`reconcile`). Takes `db`, then `state`.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::events::{Event, MutationChange};
use crate::protocol::Kind;
use crate::queue::{Mutation, MutationError, Status};
use crate::reconcile::{self, Found};
use crate::replica::{BaseRow, Effect, RowText};
use crate::snapshot::Snapshot;
use crate::view::View;

use super::{AckedRun, Engine};

impl Engine {
    /// Whether an insert in doubt reached the server, read from the log:
    /// exact when it went out with its nonce and the log still reaches back
    /// to when it was sent, in the same server lifetime (its insert event is
    /// there, or it was never applied). `None` when the log cannot tell.
    pub(super) async fn scan_for_insert(&self, m: &Mutation, token: Option<&str>) -> Result<Option<Found>> {
        if let Some(server) = self.inner.state.read().aliases.get(&m.row_id) {
            // its event was seen while it was parked under another identity
            return Ok(Some(Found::Applied(server.clone())));
        }
        let sent = m.sent.clone().unwrap_or_default();
        if !sent.nonce {
            return Ok(None);
        }
        // finding its event is proof wherever it is found; not finding it is
        // proof only in the log the insert went into, read from where it
        // stood then (a restart not noticed yet would hide the event)
        let same_lifetime = sent.server_gen == self.inner.state.read().server_gen;
        let exact = match sent.since {
            Some(_) if same_lifetime => self.log_continues(token).await?,
            _ => false,
        };
        let mut at = if exact { sent.since.unwrap_or(0) } else { 0 };
        loop {
            let page = match self.inner.api.pull(token, at).await {
                Ok(p) => p,
                Err(Error::Resync { .. }) => return Ok(None), // the log no longer reaches back
                Err(e) => return Err(e),
            };
            if let Some(c) = page.changes.iter().find(|c| reconcile::names(c, m)) {
                tracing::debug!("scan {} found {}", m.row_id, c.row_id);
                return Ok(Some(Found::Applied(c.row_id.clone())));
            }
            if !page.has_more || page.cursor.last_seq <= at {
                tracing::debug!("scan {} not found from {at} to {} (exact: {exact})", m.row_id, page.cursor.last_seq);
                return Ok(exact.then_some(Found::NotApplied));
            }
            at = page.cursor.last_seq;
        }
    }

    /// Before a snapshot is shown, inserts of ours in doubt that it holds are
    /// acknowledged, so it never shows one next to its optimistic row.
    pub(super) async fn settle_in_doubt(&self, snap: &Snapshot, token: Option<&str>) -> Result<()> {
        let in_doubt: Vec<Mutation> = {
            let st = self.inner.state.read();
            if st.view.queue().in_doubt() == 0 {
                return Ok(());
            }
            st.view
                .queue()
                .pending()
                .filter(|m| m.kind == Kind::Insert && m.sent.is_some() && snap.rows.contains_key(&m.entity))
                .cloned()
                .collect()
        };
        let mut acks = Vec::new();
        for m in in_doubt {
            let found = match self.scan_for_insert(&m, token).await? {
                Some(found) => found,
                None => {
                    let st = self.inner.state.read();
                    reconcile::find_in_snapshot(&snap.rows[&m.entity], &st.witness, &m).into()
                }
            };
            tracing::debug!("settle {} {:?}", m.row_id, found);
            if let Found::Applied(id) = found {
                acks.push((m, Some(id)));
            }
        }
        self.applied_all(acks).await
    }

    pub(super) async fn fail(&self, m: &Mutation, error: MutationError) -> Result<()> {
        let m = self.set_mutation_status(&m.id, Status::Failed, Some(error)).await?;
        self.emit(Event::Change { entities: vec![m.entity.clone()] });
        self.emit(Event::Mutation { status: MutationChange::Failed, mutation: m });
        Ok(())
    }

    /// The server accepted `m`. For an insert, the temporary row becomes the
    /// server's row in one step: on disk, in memory and in every queued
    /// mutation that names the temporary id.
    pub(super) async fn applied(&self, m: &Mutation, server_id: Option<String>) -> Result<()> {
        self.applied_all(vec![(m.clone(), server_id)]).await
    }

    /// Several acknowledgements (a batch's), committed together: one
    /// transaction per run of acknowledgements that do not touch each other.
    pub(super) async fn applied_all(&self, acks: Vec<(Mutation, Option<String>)>) -> Result<()> {
        let mut acks = acks;
        while !acks.is_empty() {
            let run = self.with_db(move |me, db| me.applied_run(db, acks)).await?;
            acks = run.left;
            self.emit(Event::Change { entities: run.entities });
            for m in run.done {
                self.emit(Event::Mutation { status: MutationChange::Applied, mutation: m });
            }
        }
        Ok(())
    }

    /// Commits the longest leading run of `acks` whose rows and dependent
    /// mutations are disjoint (each is planned from the state before the run).
    pub(super) fn applied_run(&self, db: &mut Db, acks: Vec<(Mutation, Option<String>)>) -> Result<AckedRun> {
        let (plans, acks) = {
            let st = self.inner.state.read();
            // one acknowledged meanwhile (its insert event, by the stream): once is enough
            let acks = acks.into_iter().filter(|(m, _)| st.view.queue().get(&m.id).is_some()).collect();
            plan_run(&st.view, acks)
        };
        // inserts shown before their event was taken: the log must bring it
        let awaited: Vec<(String, String, u64)> = {
            let st = self.inner.state.read();
            plans
                .iter()
                .filter(|p| {
                    let shown_early = p.base_row.as_ref().is_some_and(|b| b.seq == 0) && p.m.kind == Kind::Insert;
                    // only an insert sent with its nonce can be told in the log
                    // (admin batches send none)
                    let nonce = p.m.sent.as_ref().is_some_and(|s| s.nonce);
                    shown_early && nonce && st.open.contains(&p.m.entity) && !st.awaited.contains_key(&p.m.row_id)
                })
                .map(|p| (p.m.row_id.clone(), p.m.entity.clone(), st.cursor))
                .collect()
        };
        // persist, then change memory
        db.write(|w| {
            for (nonce, entity, cursor) in &awaited {
                w.await_insert(nonce, entity, *cursor)?;
            }
            for p in &plans {
                w.delete_mutation(&p.m.id)?;
                if let (Some(sid), Kind::Insert) = (&p.server_id, p.m.kind) {
                    w.set_alias(&p.m.row_id, sid)?;
                }
                if let Some(row) = &p.base_row {
                    let (entity, id, seq) = (p.m.entity.clone(), p.target.clone(), row.seq);
                    w.effects(&[match &row.data {
                        Some(data) => Effect::Put { entity, id, seq, data: data.clone() },
                        None => Effect::Tombstone { entity, id, seq },
                    }])?;
                }
                for c in &p.changed {
                    w.save_mutation(c)?;
                }
            }
            Ok(())
        })?;
        let mut st = self.inner.state.write();
        self.inner.commits.fetch_add(1, Ordering::SeqCst);
        for (nonce, entity, cursor) in awaited {
            st.awaited.insert(nonce, (entity, cursor));
        }
        let mut entities: Vec<String> = Vec::new();
        let mut done = Vec::with_capacity(plans.len());
        for p in plans {
            let m = p.m;
            st.view.remove(&m.id);
            if let (Some(sid), Kind::Insert) = (&p.server_id, m.kind) {
                st.aliases.insert(m.row_id.clone(), sid.clone());
            }
            for c in &p.changed {
                st.view.replace(c.clone());
            }
            if let Some(row) = p.base_row {
                st.view.put_base(&m.entity, &p.target, row);
            }
            for e in std::iter::once(&m.entity).chain(p.changed.iter().map(|c| &c.entity)) {
                if !entities.contains(e) {
                    entities.push(e.clone());
                }
            }
            let mut m = m;
            if let Some(sid) = p.server_id {
                m.row_id = sid;
            }
            done.push(m);
        }
        Ok(AckedRun { done, left: acks, entities })
    }
}

/// An acknowledgement, planned: the row it settles (`target`, the server's
/// id for an insert), what the stored row becomes, and the queued writes
/// that follow an insert to its server id.
struct Planned {
    m: Mutation,
    server_id: Option<String>,
    target: String,
    base_row: Option<BaseRow>,
    changed: Vec<Mutation>,
}

/// Plans the longest leading run of `acks` that do not touch each other
/// (no shared row, no write that an earlier one renames), each from the
/// view as it is before the run; returns the plans and the acks left.
fn plan_run(view: &View, acks: Vec<(Mutation, Option<String>)>) -> (Vec<Planned>, Vec<(Mutation, Option<String>)>) {
    let mut plans: Vec<Planned> = Vec::with_capacity(acks.len());
    let mut acks = acks.into_iter().peekable();
    let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
    let mut dependents: BTreeSet<String> = BTreeSet::new();
    while let Some((m, server_id)) = acks.peek() {
        let target = server_id.clone().unwrap_or_else(|| m.row_id.clone());
        // the server accepted the write: the stored row becomes what we sent,
        // until the server's own event replaces it (events of a
        // policy-governed entity may never come, see docs/compat.md)
        let base = view.replica().base(&m.entity, &target);
        let base_row = match (server_id, m.kind, base) {
            (Some(sid), Kind::Insert, None) => {
                let mut row = m.data.clone().unwrap_or_default();
                row.insert("id".into(), Value::String(sid.clone()));
                Some(BaseRow { seq: 0, data: Some(RowText::new(&row)) })
            }
            (None, Kind::Update, Some(BaseRow { seq, data: Some(data) })) => {
                let mut row = data.parse();
                for (f, v) in m.data.iter().flatten().filter(|(f, _)| *f != "id") {
                    row.insert(f.clone(), v.clone());
                }
                Some(BaseRow { seq: *seq, data: Some(RowText::new(&row)) })
            }
            (None, Kind::Delete, Some(b)) => Some(BaseRow { seq: b.seq, data: None }),
            _ => None,
        };
        let changed: Vec<Mutation> = match server_id {
            Some(sid) => view.queue().remapped(&m.entity, &m.row_id, sid, Some(&m.id)),
            None => Vec::new(),
        };
        let keys = [(m.entity.clone(), m.row_id.clone()), (m.entity.clone(), target.clone())];
        let overlaps = keys.iter().any(|k| touched.contains(k))
            || changed.iter().any(|c| dependents.contains(&c.id))
            || dependents.contains(&m.id);
        if overlaps && !plans.is_empty() {
            break;
        }
        touched.extend(keys);
        dependents.extend(changed.iter().map(|c| c.id.clone()));
        let (m, server_id) = acks.next().expect("peeked");
        tracing::debug!(kind = ?m.kind, row = %target, stored = ?base_row.as_ref().map(|b| (b.seq, b.data.is_some())), "acknowledged");
        plans.push(Planned { m, server_id, target, base_row, changed });
    }
    (plans, acks.collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::queue::{sample as m, Queue};

    fn stored(seq: u64, row: Value) -> BaseRow {
        BaseRow { seq, data: Some(RowText::new(row.as_object().unwrap())) }
    }

    fn view(queue: Vec<Mutation>, rows: &[(&str, BaseRow)]) -> View {
        let mut v = View::new(None, Queue::new(queue));
        for (id, row) in rows {
            v.put_base("Todo", id, row.clone());
        }
        v
    }

    fn text(b: &Option<BaseRow>) -> Option<(u64, Option<Value>)> {
        b.as_ref().map(|b| (b.seq, b.data.as_ref().map(|d| serde_json::from_str(d.as_str()).unwrap())))
    }

    #[test]
    fn an_acknowledged_insert_stores_what_was_sent_under_the_servers_id_and_takes_its_writes_along() {
        let temp = "_pending_1_a";
        let insert = m(1, Kind::Insert, temp, Some(json!({ "title": "x" })));
        let update = m(2, Kind::Update, temp, Some(json!({ "done": true })));
        let v = view(vec![insert.clone(), update], &[]);
        let (plans, left) = plan_run(&v, vec![(insert, Some("s1".into()))]);
        assert!(left.is_empty());
        let p = &plans[0];
        assert_eq!(p.target, "s1");
        // seq 0: shown before its event is taken, which replaces it
        assert_eq!(text(&p.base_row), Some((0, Some(json!({ "id": "s1", "title": "x" })))));
        assert_eq!(p.changed.iter().map(|c| (c.id.as_str(), c.row_id.as_str())).collect::<Vec<_>>(), [("m2", "s1")]);
    }

    #[test]
    fn an_acknowledged_update_or_delete_settles_the_stored_row_at_its_own_seq() {
        let update = m(1, Kind::Update, "a", Some(json!({ "done": true, "id": "other" })));
        let delete = m(2, Kind::Delete, "b", None);
        let rows = [("a", stored(7, json!({ "id": "a", "title": "x" }))), ("b", stored(9, json!({ "id": "b" })))];
        let v = view(vec![update.clone(), delete.clone()], &rows);
        let (plans, left) = plan_run(&v, vec![(update, None), (delete, None)]);
        assert!(left.is_empty(), "two rows: one run");
        assert_eq!(text(&plans[0].base_row), Some((7, Some(json!({ "id": "a", "title": "x", "done": true })))));
        assert_eq!(text(&plans[1].base_row), Some((9, None)), "a tombstone at the row's seq");
        // a row the replica does not hold is left for the server's event
        let lone = m(3, Kind::Update, "c", Some(json!({ "done": true })));
        let (plans, _) = plan_run(&view(vec![lone.clone()], &[]), vec![(lone, None)]);
        assert!(plans[0].base_row.is_none());
    }

    #[test]
    fn acknowledgements_that_touch_each_other_go_in_separate_runs() {
        let temp = "_pending_1_a";
        let insert = m(1, Kind::Insert, temp, Some(json!({ "title": "x" })));
        let update = m(2, Kind::Update, temp, Some(json!({ "done": true })));
        let other = m(3, Kind::Delete, "b", None);
        let v = view(vec![insert.clone(), update.clone(), other.clone()], &[("b", stored(4, json!({ "id": "b" })))]);
        // the update was renamed by the insert's acknowledgement: it waits for the next run
        let mut renamed = update.clone();
        renamed.row_id = "s1".into();
        let acks = vec![(insert, Some("s1".into())), (renamed, None), (other, None)];
        let (plans, left) = plan_run(&v, acks);
        assert_eq!(plans.iter().map(|p| p.m.id.as_str()).collect::<Vec<_>>(), ["m1"]);
        assert_eq!(left.iter().map(|(m, _)| m.id.as_str()).collect::<Vec<_>>(), ["m2", "m3"]);
        // the same row twice: split too, while the first ack always goes
        let a = m(4, Kind::Update, "b", Some(json!({ "t": 1 })));
        let b = m(5, Kind::Update, "b", Some(json!({ "t": 2 })));
        let (plans, left) = plan_run(&v, vec![(a, None), (b, None)]);
        assert_eq!((plans.len(), left.len()), (1, 1));
    }
}
