//! Acknowledgements: a mutation the server applied leaves the queue, and an
//! insert's temporary id becomes the server's, on disk and in memory in one
//! step (rows, queued writes on that id, the alias kept for callers). An
//! insert in doubt (its answer lost) is settled exactly by its nonce in the
//! log, else by field matching (`reconcile`). Takes `db`, then `state`.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::protocol::Kind;
use crate::queue::{Mutation, MutationError, Status};
use crate::reconcile::{self, Found};
use crate::replica::{BaseRow, Effect, RowText};
use crate::snapshot::Snapshot;

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
        self.emit(Event::Mutation { status: "failed", mutation: m });
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
                self.emit(Event::Mutation { status: "applied", mutation: m });
            }
        }
        Ok(())
    }

    /// Commits the longest leading run of `acks` whose rows and dependent
    /// mutations are disjoint (each is planned from the state before the run).
    pub(super) fn applied_run(&self, db: &mut Db, acks: Vec<(Mutation, Option<String>)>) -> Result<AckedRun> {
        struct Planned {
            m: Mutation,
            server_id: Option<String>,
            target: String,
            base_row: Option<BaseRow>,
            changed: Vec<Mutation>,
        }
        let mut plans: Vec<Planned> = Vec::new();
        let mut acks = acks.into_iter().peekable();
        {
            let st = self.inner.state.read();
            let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
            let mut dependents: BTreeSet<String> = BTreeSet::new();
            while let Some((m, server_id)) = acks.peek() {
                let target = server_id.clone().unwrap_or_else(|| m.row_id.clone());
                // the server accepted the write: the stored row becomes what we sent,
                // until the server's own event replaces it (events of a
                // policy-governed entity may never come, see docs/compat.md)
                let base = st.view.replica().base(&m.entity, &target);
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
                    Some(sid) => st
                        .view
                        .queue()
                        .remapped(&m.entity, &m.row_id, sid)
                        .into_iter()
                        .filter(|c| c.id != m.id)
                        .collect(),
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
                let (m, server_id) = acks.next().unwrap();
                tracing::debug!(kind = ?m.kind, row = %target, stored = ?base_row.as_ref().map(|b| (b.seq, b.data.is_some())), "acknowledged");
                plans.push(Planned { m, server_id, target, base_row, changed });
            }
        }
        // inserts shown before their event was taken: the log must bring it
        let awaited = {
            let st = self.inner.state.read();
            let mut awaited = st.awaited.clone();
            for p in &plans {
                let shown_early = p.base_row.as_ref().is_some_and(|b| b.seq == 0) && p.m.kind == Kind::Insert;
                // only an insert sent with its nonce can be told in the log
                // (admin batches send none)
                let nonce = p.m.sent.as_ref().is_some_and(|s| s.nonce);
                if shown_early && nonce && st.open.contains(&p.m.entity) {
                    awaited.insert(p.m.row_id.clone(), (p.m.entity.clone(), st.cursor));
                }
            }
            (awaited != st.awaited).then_some(awaited)
        };
        // persist, then change memory
        db.write(|w| {
            if let Some(a) = &awaited {
                w.set_meta("awaited", &serde_json::to_string(a)?)?;
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
        if let Some(a) = awaited {
            st.awaited = a;
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
        Ok(AckedRun { done, left: acks.collect(), entities })
    }
}
