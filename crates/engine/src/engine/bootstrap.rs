//! Bootstrap: a snapshot of every readable entity, read after learning the
//! log head, installed wholesale with the cursor in one transaction (and a
//! new epoch when the cursor moves); hydration from `get_server_data` goes
//! the same way. Owns `complete_in_epoch` (the manifest is read once per
//! replica generation). Runs inside a round (`sync` held), except hydration,
//! which is kept until the replica is loaded.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::api::{check_entity, Api, EntityInfo};
use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::events::{Event, Phase, Progress, ResyncReason};
use crate::net::Net;
use crate::protocol::{ChangeEvent, Cursor, Hydration, Identity, Row, LOG_CAPACITY};
use crate::queue::Queue;
use crate::replica::{BaseRow, Replacement, Replica, RowText, Tables};
use crate::schema::Schema;
use crate::snapshot::{self, Snapshot};

use super::{Engine, Resume, REPLACED_BY_REPLAY};

impl Engine {
    /// The log no longer reaches our cursor (410), on the same server and
    /// for the same identity: the rows are stale, not wrong. Every covered
    /// entity is read again and swapped in whole, so readers keep seeing the
    /// old rows until the new ones are in. Entities only the log fills are
    /// replayed from 0 and keep their old rows until the replay replaces
    /// them, in the transaction that applies it. False when
    /// there is nothing to refresh (the caller starts over).
    pub(super) async fn resnapshot(&self) -> Result<bool> {
        let (epoch, covered) = {
            let st = self.inner.state.read();
            (self.inner.epoch.load(Ordering::SeqCst), st.covered.clone())
        };
        if covered.values().all(|head| *head == 0) {
            return Ok(false);
        }
        let token = self.session_token();
        // a 429 is waited out page by page, not met again by starting over
        let api = self.patient_api();
        let infos = api.entities(token.as_deref()).await?;
        let wanted: Vec<_> = infos.into_iter().filter(|i| covered.get(&i.name).is_some_and(|head| *head > 0)).collect();
        self.set_phase(Phase::Bootstrapping, None, 0);
        let me = self.clone();
        let mut snap = snapshot::take(&api, token.as_deref(), &wanted, true, &move |entity, rows, done| {
            me.emit(Event::Progress(Progress::snapshot(entity, rows, done)))
        })
        .await?;
        snap.log_only.extend(covered.into_iter().filter(|(_, head)| *head == 0).map(|(e, _)| e));
        self.settle_in_doubt(&snap, token.as_deref()).await?;
        let resume = if snap.log_only.is_empty() { Resume::Head } else { Resume::Replay };
        self.install_snapshot(snap, epoch, resume).await?;
        self.emit(Event::Resync { reason: ResyncReason::Resync });
        Ok(true)
    }

    pub(super) async fn bootstrap_if_needed(&self) -> Result<()> {
        let (epoch, covered) = {
            let st = self.inner.state.read();
            (self.inner.epoch.load(Ordering::SeqCst), st.covered.clone())
        };
        if self.inner.complete_in_epoch.load(Ordering::SeqCst) == epoch {
            return Ok(());
        }
        let token = self.session_token();
        // a 429 is waited out page by page, not met again by starting over
        let api = self.patient_api();
        let infos = match api.entities(token.as_deref()).await {
            Ok(i) => i,
            // a server without a manifest route: replaying the log is all we can do
            Err(Error::Http { status: 404, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        self.inner.state.write().open = infos.iter().filter(|i| !i.has_policy).map(|i| i.name.clone()).collect();
        if !infos.is_empty() {
            self.learn_schema(Schema::new(infos.iter().map(|i| (i.name.clone(), i.fields.clone())))).await?;
        }
        let wanted: Vec<_> = infos.into_iter().filter(|i| !covered.contains_key(&i.name)).collect();
        if wanted.is_empty() {
            self.inner.complete_in_epoch.store(epoch, Ordering::SeqCst);
            return Ok(());
        }
        self.set_phase(Phase::Bootstrapping, None, 0);
        let me = self.clone();
        let snap = snapshot::take(&api, token.as_deref(), &wanted, true, &move |entity, rows, done| {
            me.emit(Event::Progress(Progress::snapshot(entity, rows, done)))
        })
        .await?;
        self.settle_in_doubt(&snap, token.as_deref()).await?;
        if let Some(now) = self.install_snapshot(snap, epoch, Resume::Follow).await? {
            self.inner.complete_in_epoch.store(now, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Takes the manifest's fields as the schema, kept in the file when they
    /// changed. Writes queued before it was known (a first start offline)
    /// are checked as they are sent (`outbox`).
    async fn learn_schema(&self, schema: Schema) -> Result<()> {
        if self.inner.state.read().schema.as_ref() == Some(&schema) {
            return Ok(());
        }
        self.with_db(move |me, db| {
            db.write(|w| w.set_meta("schema", &serde_json::to_string(&schema)?))?;
            crate::sql::define(db, &schema, &me.inner.cfg.indexes)?;
            me.inner.state.write().schema = Some(schema);
            Ok(())
        })
        .await
    }

    /// Replaces the snapshot's entities wholesale, in one transaction with
    /// the cursor, which goes where `resume` says. Returns the replica
    /// generation it leaves (`None`: dropped, the replica was reset first).
    /// A cursor that moves starts a new generation, so that work planned
    /// from the old cursor is refused even if its future was dropped
    /// mid-way and the lock it held released early (stop() aborts the loop).
    pub(super) async fn install_snapshot(&self, snap: Snapshot, epoch: u64, resume: Resume) -> Result<Option<u64>> {
        let changed: Vec<String> = snap.rows.keys().cloned().collect();
        tracing::debug!(entities = ?changed, head = snap.head, log_only = ?snap.log_only, ?resume, "install snapshot");
        let snap_anchor = snap.anchor.clone();
        let installed = self
            .with_db(move |me, db| {
                if me.inner.epoch.load(Ordering::SeqCst) != epoch {
                    tracing::debug!("snapshot dropped: the replica was reset meanwhile");
                    return Ok(None);
                }
                let (cursor, mut covered, moved, mut replaced_by_replay) = {
                    let st = me.inner.state.read();
                    if resume == Resume::Hydrate {
                        if let Some(e) = older(snap.head, st.cursor) {
                            return Err(e);
                        }
                    }
                    let cursor = match resume {
                        Resume::Head => snap.head,
                        Resume::Replay => 0,
                        // a replica that follows the log keeps its cursor; so does a fresh
                        // one with an entity only the log can fill (it replays from 0)
                        Resume::Follow if st.cursor == 0 && snap.log_only.is_empty() => snap.head,
                        Resume::Follow => st.cursor,
                        Resume::Hydrate if st.covered.is_empty() => snap.head,
                        Resume::Hydrate => st.cursor,
                    };
                    (cursor, st.covered.clone(), cursor != st.cursor, st.replaced_by_replay.clone())
                };
                covered.extend(snap.rows.keys().map(|e| (e.clone(), snap.head)));
                covered.extend(snap.log_only.iter().map(|e| (e.clone(), 0)));
                let mut tables: Tables = snap
                    .rows
                    .into_iter()
                    .map(|(entity, rows)| {
                        let rows = rows.into_iter().map(|(id, r)| (id, BaseRow { seq: 0, data: Some(r) }));
                        (entity, rows.collect())
                    })
                    .collect();
                if resume == Resume::Replay {
                    // entities only the log fills keep their rows until the
                    // replay from 0 replaces them, in the transaction that
                    // applies it: readers never see them emptied meanwhile
                    replaced_by_replay = snap.log_only.iter().filter(|e| !tables.contains_key(*e)).cloned().collect();
                } else {
                    replaced_by_replay.retain(|e| !tables.contains_key(e));
                    if cursor != 0 {
                        // no replay from 0 follows: emptied now, as the log fills them from here
                        tables
                            .extend(std::mem::take(&mut replaced_by_replay).into_iter().map(|e| (e, BTreeMap::new())));
                    }
                }
                db.write(|w| {
                    w.set_meta(REPLACED_BY_REPLAY, &serde_json::to_string(&replaced_by_replay)?)?;
                    for (entity, rows) in &tables {
                        w.clear_entity(entity)?;
                        w.put_rows(entity, rows)?;
                    }
                    w.set_cursor(cursor)?;
                    w.set_meta("covered", &serde_json::to_string(&covered)?)?;
                    if moved || cursor == 0 {
                        // the rows' own event: the next pull (or the replay from
                        // 0) must find it, or the log was renumbered meanwhile
                        w.set_meta("anchor", &serde_json::to_string(&snap_anchor)?)?;
                        // the rows are read after them (the anchor marks what
                        // they may hold beyond the head)
                        w.clear_awaited()?;
                    }
                    Ok(())
                })?;
                // the planner learns the new rows' shape, for the views'
                // indexes; with none, the key is its only choice and the
                // statistics would be 13 % of the install for nothing
                if !me.inner.cfg.indexes.is_empty() {
                    db.optimize()?;
                }
                let prepared: BTreeMap<String, Replacement> = {
                    let st = me.inner.state.read();
                    tables.into_iter().map(|(e, rows)| (e.clone(), st.view.replica().prepare(&e, rows))).collect()
                };
                let (replaced, now) = {
                    let mut st = me.inner.state.write();
                    me.inner.commits.fetch_add(1, Ordering::SeqCst);
                    let now = if moved { me.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1 } else { epoch };
                    st.cursor = cursor;
                    st.covered = covered;
                    st.replaced_by_replay = replaced_by_replay;
                    if moved || cursor == 0 {
                        st.anchor = snap_anchor;
                        st.awaited.clear();
                    }
                    (st.view.replace_entities(prepared), now)
                };
                drop(replaced);
                Ok(Some(now))
            })
            .await?;
        if installed.is_some() {
            self.emit(Event::Change { entities: changed });
        }
        Ok(installed)
    }

    /// Seeds rows and the cursor (from `get_server_data`) before `start()`:
    /// the rows show at once, in memory, and are stored with the cursor in
    /// one transaction when the replica is loaded (by `start()`, or by a
    /// first write), so `start()` does not read them again. Refused, with
    /// nothing shown, when the replica is already past the hydration's
    /// cursor or holds another identity's rows. Returns the entities shown
    /// (the caller tells its listeners; no event is sent).
    pub fn hydrate(&self, h: Hydration) -> Result<Vec<String>> {
        self.check_open()?;
        for (entity, rows) in &h.entities {
            check_entity(entity)?;
            for r in rows {
                match r.get("id") {
                    Some(Value::String(id)) if !id.is_empty() => {}
                    _ => return Err(Error::InvalidArg(format!("hydration row of {entity} has no string id"))),
                }
            }
        }
        if self.inner.life.running.load(Ordering::SeqCst) {
            return Err(Error::InvalidArg(
                "hydrate() seeds an engine before start(); this one is started (stop() it first)".into(),
            ));
        }
        let loaded = self.inner.state.read().loaded;
        let (cursor, identity) = if loaded {
            let st = self.inner.state.read();
            (st.cursor, st.identity.clone())
        } else {
            // a short read of the file, on this thread: the answer is needed now
            self.with_db_here(|_, db| Ok((db.cursor()?, db.meta("identity")?.unwrap_or_default())))?
        };
        if let Some(e) = refusal(&h, cursor, &identity) {
            return Err(e);
        }
        let tables = hydrated_tables(&h);
        let entities: Vec<String> = tables.keys().cloned().collect();
        let mut st = self.inner.state.write();
        st.view.show(tables);
        st.pending_hydration = Some(h);
        Ok(entities)
    }

    /// Stores a hydration shown before the replica was loaded. One refused
    /// now (the file changed since `hydrate()` looked, or the replica moved
    /// past it while it was stored) is dropped and the replica shown as
    /// stored; one that fails to store stays pending, so the next `start()`
    /// tries again.
    pub(super) async fn store_hydration(&self) -> Result<()> {
        let Some(h) = self.inner.state.write().pending_hydration.take() else { return Ok(()) };
        let refused = {
            let st = self.inner.state.read();
            refusal(&h, st.cursor, &st.identity)
        };
        let stored = match refused {
            Some(e) => Err(e),
            None => self.apply_hydration(h.clone()).await,
        };
        match stored {
            Ok(()) => Ok(()),
            Err(e @ Error::InvalidArg(_)) => {
                self.load_stored(true).await?;
                Err(e)
            }
            Err(e) => {
                self.inner.state.write().pending_hydration.get_or_insert(h);
                Err(e)
            }
        }
    }

    async fn apply_hydration(&self, h: Hydration) -> Result<()> {
        if let Some(key) = h.identity.as_ref().map(Identity::key) {
            // whose rows they are: a token of another identity flips the
            // replica (and clears them) as soon as its session is known
            if self.inner.state.read().identity.is_empty() {
                self.with_db(move |me, db| {
                    db.write(|w| w.set_meta("identity", &key))?;
                    me.inner.state.write().identity = key;
                    Ok(())
                })
                .await?;
            }
        }
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rows: BTreeMap<String, BTreeMap<String, RowText>> = BTreeMap::new();
        for (entity, list) in h.entities {
            let table = rows.entry(entity).or_default();
            for r in list {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                table.insert(id, RowText::new(&r));
            }
        }
        let snap = Snapshot { head: h.cursor.last_seq, rows, log_only: Vec::new(), anchor: None };
        self.install_snapshot(snap, epoch, Resume::Hydrate).await.map(drop)
    }
}

/// Why a hydration may not go over a replica at `cursor` holding
/// `identity`'s rows (empty: nobody's yet). Never merged: the replica
/// catches up on its own once started.
fn refusal(h: &Hydration, cursor: u64, identity: &str) -> Option<Error> {
    if let Some(theirs) = h.identity.as_ref().map(Identity::key) {
        if !identity.is_empty() && identity != theirs {
            return Some(Error::InvalidArg(format!(
                "this hydration holds the rows of {theirs}, and the replica those of {identity}: \
                 it is not merged (hydrate an engine of that identity, or reset the replica first)"
            )));
        }
    }
    older(h.cursor.last_seq, cursor)
}

/// A hydration read at `head` is older than a replica at `cursor`.
fn older(head: u64, cursor: u64) -> Option<Error> {
    (cursor > head).then(|| {
        Error::InvalidArg(format!(
            "this hydration (cursor {head}) is older than the replica (cursor {cursor}): it is not merged; \
             start() brings the replica up to date"
        ))
    })
}

/// A hydration's rows as the replica keeps them.
pub(super) fn hydrated_tables(h: &Hydration) -> Tables {
    h.entities
        .iter()
        .map(|(entity, rows)| {
            let rows = rows.iter().map(|r| {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                (id, BaseRow { seq: 0, data: Some(RowText::new(r)) })
            });
            (entity.clone(), rows.collect())
        })
        .collect()
}

/// Rows of `entities` and a cursor they are consistent with: the log head is
/// read first, the rows after it, so pulling from the cursor replays whatever
/// changed while the rows were read. An entity the server will not list to
/// this caller (a row-level read policy) is read from the change log up to
/// the same head, as the engine fills it. The identity is that of the token.
pub async fn get_server_data(
    base_url: &str,
    entities: &[String],
    token: Option<&str>,
    ca: Option<&str>,
    timeouts: Timeouts,
) -> Result<Hydration> {
    let api = Api::new(base_url, Net::shared(ca, timeouts)?)?;
    for e in entities {
        check_entity(e)?;
    }
    // the manifest gives each entity's field types; read whole, as if a
    // policy filtered it (no short page is taken for the end)
    let manifest = match api.entities(token).await {
        Ok(infos) => infos,
        Err(Error::Http { status: 404, .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    let fields = |name: &str| manifest.iter().find(|i| i.name == name).map(|i| i.fields.clone()).unwrap_or_default();
    let infos: Vec<EntityInfo> =
        entities.iter().map(|name| EntityInfo { name: name.clone(), has_policy: true, fields: fields(name) }).collect();
    let identity = match api.me(token).await {
        Ok(session) => Some(session.identity()),
        Err(Error::Http { status: 404, .. }) => None,
        Err(e) => return Err(e),
    };
    let snap = snapshot::take(&api, token, &infos, false, &|_, _, _| {}).await?;
    let mut out: BTreeMap<String, Vec<Row>> =
        snap.rows.into_iter().map(|(e, rows)| (e, rows.into_values().map(|r| r.parse()).collect())).collect();
    if !snap.log_only.is_empty() {
        out.extend(from_log(&api, token, &snap.log_only, snap.head).await?);
        // in the manifest's types, as the snapshot's rows are
        for info in infos.iter().filter(|i| snap.log_only.contains(&i.name)) {
            for row in out.get_mut(&info.name).into_iter().flatten() {
                info.fields.normalize(row);
            }
        }
    }
    Ok(Hydration { entities: out, cursor: Cursor { last_seq: snap.head }, identity })
}

/// The rows of `entities` the change log shows this caller, up to `head`,
/// by the replica's own merge rules. The log must reach back to its first
/// event: the server keeps only its last 10,000, and a row made before
/// them cannot be known, which is an error naming the entities.
async fn from_log(
    api: &Api,
    token: Option<&str>,
    entities: &[String],
    head: u64,
) -> Result<BTreeMap<String, Vec<Row>>> {
    let unreachable = |oldest_seq: u64| Error::Http {
        status: 403,
        code: "POLICY_DENIED".into(),
        message: format!(
            "{} cannot be read whole: the server lists it to no one but admins (a row-level read policy), \
             and its change log, which would fill it, no longer reaches back to its first event \
             (it keeps events from {oldest_seq} on)",
            entities.join(", ")
        ),
        retry_after: None,
    };
    // a pull from 0 is never refused, even when the front of the log is gone
    if head > LOG_CAPACITY {
        return Err(unreachable(head - LOG_CAPACITY + 1));
    }
    let mut replica = Replica::new();
    let mut since = 0;
    while since < head {
        let page = match api.pull_until(token, since, head, None).await {
            Err(Error::Resync { oldest_seq }) => return Err(unreachable(oldest_seq)),
            page => page?,
        };
        let changes: Vec<ChangeEvent> =
            page.changes.into_iter().filter(|c| c.seq <= head && entities.contains(&c.entity)).collect();
        let (effects, missing) = replica.plan(&changes);
        replica.commit(&effects, &Queue::default());
        // an update of a row whose insert the log did not show: read the row
        for m in missing {
            if let Some(row) = api.get(token, &m.entity, &m.id).await? {
                replica.put_base(&m.entity, &m.id, BaseRow { seq: m.seq, data: Some(RowText::new(&row)) });
            }
        }
        if page.cursor.last_seq <= since || !page.has_more && page.cursor.last_seq < head {
            break; // the head is reached: nothing newer than it was asked for
        }
        since = page.cursor.last_seq;
    }
    Ok(entities.iter().map(|e| (e.clone(), replica.list(e).iter().map(RowText::parse).collect())).collect())
}
