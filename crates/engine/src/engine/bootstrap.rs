//! Bootstrap: a snapshot of every readable entity, read after learning the
//! log head, installed wholesale with the cursor in one transaction (and a
//! new epoch when the cursor moves); hydration from `get_server_data` goes
//! the same way. Owns `complete_in_epoch` (the manifest is read once per
//! replica generation). Runs inside a round (`sync` held), except hydration,
//! which is kept until the replica is loaded.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;

use crate::api::{check_entity, Api, EntityInfo};
use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::events::{Event, Phase, ResyncReason};
use crate::net::Net;
use crate::protocol::{Cursor, Hydration, Row};
use crate::replica::{BaseRow, Effect, Replacement, RowText, Tables};
use crate::schema::Schema;
use crate::snapshot::{self, Snapshot};

use super::{Engine, Resume};

impl Engine {
    /// The log no longer reaches our cursor (410), on the same server and
    /// for the same identity: the rows are stale, not wrong. Every covered
    /// entity is read again and swapped in whole, so readers keep seeing the
    /// old rows until the new ones are in. Entities only the log fills are
    /// emptied and replayed from 0, all in the same transaction. False when
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
            me.emit(Event::Progress { entity: entity.to_string(), rows, done })
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
            me.emit(Event::Progress { entity: entity.to_string(), rows, done })
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
        let mut entities: Vec<String> = snap.rows.keys().cloned().collect();
        if resume == Resume::Replay {
            entities.extend(snap.log_only.iter().cloned());
        }
        let changed = entities.clone();
        tracing::debug!(?entities, head = snap.head, log_only = ?snap.log_only, ?resume, "install snapshot");
        let snap_anchor = snap.anchor.clone();
        let installed = self
            .with_db(move |me, db| {
                if me.inner.epoch.load(Ordering::SeqCst) != epoch {
                    tracing::debug!("snapshot dropped: the replica was reset meanwhile");
                    return Ok(None);
                }
                let (cursor, mut covered, moved) = {
                    let st = me.inner.state.read();
                    let cursor = match resume {
                        Resume::Head => snap.head,
                        Resume::Replay => 0,
                        // a replica that follows the log keeps its cursor; so does a fresh
                        // one with an entity only the log can fill (it replays from 0)
                        Resume::Follow if st.cursor == 0 && snap.log_only.is_empty() => snap.head,
                        Resume::Follow => st.cursor,
                    };
                    (cursor, st.covered.clone(), cursor != st.cursor)
                };
                covered.extend(snap.rows.keys().map(|e| (e.clone(), snap.head)));
                covered.extend(snap.log_only.iter().map(|e| (e.clone(), 0)));
                let mut tables: Tables = snap
                    .rows
                    .into_iter()
                    .map(|(entity, rows)| {
                        let rows =
                            rows.into_iter().map(|(id, r)| (id, BaseRow { seq: 0, data: Some(RowText::new(&r)) }));
                        (entity, rows.collect())
                    })
                    .collect();
                if resume == Resume::Replay {
                    // refilled by the replay from 0
                    tables.extend(snap.log_only.iter().map(|e| (e.clone(), BTreeMap::new())));
                }
                db.write(|w| {
                    for (entity, rows) in &tables {
                        w.clear_entity(entity)?;
                        let effects: Vec<Effect> = rows
                            .iter()
                            .filter_map(|(id, b)| {
                                let data = b.data.clone()?;
                                Some(Effect::Put { entity: entity.clone(), id: id.clone(), seq: 0, data })
                            })
                            .collect();
                        w.effects(&effects)?;
                    }
                    w.set_cursor(cursor)?;
                    w.set_meta("covered", &serde_json::to_string(&covered)?)?;
                    if moved || cursor == 0 {
                        // the rows' own event: the next pull (or the replay from
                        // 0) must find it, or the log was renumbered meanwhile
                        w.set_meta("anchor", &serde_json::to_string(&snap_anchor)?)?;
                        // the rows are read after them (the anchor marks what
                        // they may hold beyond the head)
                        w.set_meta("awaited", "{}")?;
                    }
                    Ok(())
                })?;
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

    /// Seeds rows and the cursor (from `get_server_data`). Before `start()` the
    /// data is applied when the database is loaded; the hydrated entities are
    /// then not bootstrapped again.
    pub async fn hydrate(&self, h: Hydration) -> Result<()> {
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
        if !self.inner.state.read().loaded {
            self.inner.state.write().pending_hydration = Some(h);
            return Ok(());
        }
        self.apply_hydration(h).await
    }

    pub(super) async fn apply_hydration(&self, h: Hydration) -> Result<()> {
        let epoch = self.inner.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rows: BTreeMap<String, BTreeMap<String, Arc<Row>>> = BTreeMap::new();
        for (entity, list) in h.entities {
            let table = rows.entry(entity).or_default();
            for r in list {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                table.insert(id, Arc::new(r));
            }
        }
        // the hydration's cursor replaces ours; replaying from it is harmless
        let head = h.cursor.last_seq;
        let snap = Snapshot { head, rows, log_only: Vec::new(), anchor: None };
        self.install_snapshot(snap, epoch, Resume::Head).await.map(drop)
    }
}

/// Rows of `entities` and a cursor they are consistent with: the log head is
/// read first, the rows after it, so pulling from the cursor replays whatever
/// changed while the rows were read.
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
    let snap = snapshot::take(&api, token, &infos, false, &|_, _, _| {}).await?;
    Ok(Hydration {
        entities: snap
            .rows
            .into_iter()
            .map(|(e, rows)| (e, rows.into_values().map(|r| (*r).clone()).collect()))
            .collect(),
        cursor: Cursor { last_seq: snap.head },
    })
}
