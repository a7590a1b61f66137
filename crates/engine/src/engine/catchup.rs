//! Catching up: pulling the log page by page to the head (every page checked
//! against the anchor, see `restart`), replaying it from 0 for entities only
//! the log fills (staged, shown once at the head), and committing server
//! changes (`apply_changes`, for pulls and for the stream applier in
//! `stream`). Every change is committed to SQLite with the cursor and the
//! anchor, then applied to the replica under `state`.
//! Pulls run inside a round (`sync` held). The stream applier does not wait
//! for a round: both commit only where the cursor (and, for the stream, the
//! acknowledgements) are as they planned from (`Expect`), and the stream
//! leaves rows with writes of ours queued to the round's pull.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api::Api;
use crate::error::{Error, Result};
use crate::events::{Event, Phase, Progress, ResyncReason};
use crate::protocol::{ChangeEvent, Kind, PullPage, Row};
use crate::queue::Mutation;
use crate::reconcile;
use crate::replica::{Effect, Replica, RowText};
use crate::restart::{Anchor, ANCHOR_SPAN};

use super::{Engine, Replay, PRUNE_EVERY, RATE_WINDOW, REPLACED_BY_REPLAY};

/// The longest `Retry-After` a bootstrap waits out inside a round.
const LIMIT_WAIT_MAX: Duration = Duration::from_secs(300);

/// What this part owns besides the replica it feeds: the run of resyncs
/// (for the breaker) and where tombstones were last pruned.
#[derive(Default)]
pub(super) struct CatchUp {
    pub(super) resyncs_in_a_row: AtomicU32,
    /// The cursor at the last tombstone pruning.
    pub(super) pruned_at: AtomicU64,
}

impl Engine {
    /// Rows (or patches) from the server, read back into their entities'
    /// field types (`schema`).
    fn normalize<'a>(&self, rows: impl Iterator<Item = (&'a str, &'a mut Row)>) {
        let st = self.inner.state.read();
        for (entity, row) in rows {
            if let Some(fields) = st.schema.as_ref().and_then(|s| s.fields(entity)) {
                fields.normalize(row);
            }
        }
    }

    /// Pulls until the server says there is no more, bootstrapping first when
    /// some readable entity has no snapshot in the replica yet.
    pub(super) async fn pull_to_head(&self) -> Result<()> {
        loop {
            match self.pull_pages().await {
                Err(Error::Resync { oldest_seq }) => {
                    if oldest_seq <= self.cursor() {
                        // the log ends before our cursor: it was renumbered
                        self.count_restart().await?;
                    }
                    let n = self.inner.catchup.resyncs_in_a_row.fetch_add(1, Ordering::SeqCst);
                    if n == 0 && self.resnapshot().await? {
                        continue;
                    }
                    self.reset_replica_inner(Some(ResyncReason::Resync)).await?;
                    if n >= 1 {
                        return Err(Error::Resync { oldest_seq });
                    }
                }
                other => return other,
            }
        }
    }

    /// Pulls pages until the head. Every page starts a little before the
    /// cursor, at the last events the replica took (its anchor): a log that
    /// no longer holds them was renumbered by a restart — between rounds or
    /// between two pages — and the replica is rebuilt before anything is
    /// applied.
    ///
    /// A pull from 0 replays the whole log (entities only the log fills):
    /// its pages are gathered and applied at once, when the head is reached,
    /// so a row that a later page deletes is never shown meanwhile.
    pub(super) async fn pull_pages(&self) -> Result<()> {
        let mut first = true;
        let mut staged: Option<Replay> = None;
        loop {
            self.bootstrap_if_needed().await?;
            // the epoch is read with the cursor: both change together
            let (since, kept, epoch) = {
                let st = self.inner.state.read();
                (st.cursor, st.anchor.clone(), self.inner.epoch.load(Ordering::SeqCst))
            };
            if let Some(at) = staged.as_ref().map(|r| r.at) {
                // up to 100 pages can cross a production server's limit;
                // starting over after the wait would meet it again every
                // time: a refused page is asked again after the wait
                let page = self.patient_api().pull(self.session_token().as_deref(), at).await?;
                match self.stage(&mut staged, page).await {
                    None | Some(Ok(false)) => continue,
                    Some(done) => return done.map(drop),
                }
            }
            let token = self.session_token();
            // an anchor a page away is asked for again; without one (or too
            // far back) the last events we may read before the cursor are
            // learned as the next anchor
            // (a replay from 0 checks it once at the head instead)
            let anchor = kept.as_ref().filter(|_| since > 0).and_then(|a| a.near(since));
            let from = match &anchor {
                Some(a) => a.read_from(),
                None if first => since.saturating_sub(ANCHOR_SPAN),
                None => since,
            };
            let checking = std::mem::take(&mut first) || anchor.is_some();
            // streams opened before this request are vouched for by its answer
            let opened = self.inner.rt.opened.load(Ordering::SeqCst);
            tracing::debug!(since, from, checked = anchor.is_some(), "pull");
            // a 410 here is taken as for the cursor itself: at worst (the log
            // keeps the cursor but not the anchor, some 10,000 events behind
            // the head) one resnapshot too many
            let page = self.inner.api.pull_until(token.as_deref(), from, since, anchor.as_ref()).await?;
            if !page.has_more && page.cursor.last_seq < since {
                // the log ends before our cursor: it was renumbered (a 410
                // says the same for a cursor past the head + 1)
                self.reset_replica_inner(Some(ResyncReason::Server)).await?;
                continue;
            }
            // what the new events extend: the anchor as the log confirms it
            let mut base = kept.clone();
            if let Some(a) = &anchor {
                match a.check(&page.changes, from, page.cursor.last_seq, !page.has_more, since) {
                    Some(confirmed) => base = Some(confirmed),
                    None => {
                        if from == 0 {
                            if let Some(oldest_seq) = self.log_moved_on(token.as_deref(), since).await? {
                                return Err(Error::Resync { oldest_seq });
                            }
                        }
                        self.reset_replica_inner(Some(ResyncReason::Server)).await?;
                        continue;
                    }
                }
            }
            if checking {
                self.inner.watch.stream_checked.fetch_max(opened, Ordering::SeqCst);
            }
            self.inner.catchup.resyncs_in_a_row.store(0, Ordering::SeqCst);
            let more = page.has_more;
            if since == 0 {
                staged = Some(Replay { events: Vec::new(), counts: BTreeMap::new(), at: 0, epoch, expect: kept });
                match self.stage(&mut staged, page).await {
                    None | Some(Ok(false)) => continue,
                    Some(done) => return done.map(drop),
                }
            }
            let last = page.cursor.last_seq;
            if self.apply_page(page, since, epoch, base).await? == Applied::Moved {
                // the stream went on meanwhile: read on from where it is,
                // unless it already took all the page held
                if more || self.cursor() < last {
                    continue;
                }
            }
            if !more {
                if self.awaited_missing() {
                    self.reset_replica_inner(Some(ResyncReason::Server)).await?;
                    continue;
                }
                return Ok(());
            }
        }
    }

    /// The server's client, made to wait out a 429 and ask again (see
    /// `wait_out_limit`): for the pages of a bootstrap and of a replay from
    /// 0, whose progress a failed round would throw away. Holding `sync`
    /// meanwhile keeps little from the user: stream events cannot continue
    /// a cursor that a bootstrap is still setting (only a replica that
    /// follows the log and meets a new entity in the manifest has them wait
    /// for that entity's pages).
    pub(super) fn patient_api(&self) -> Api {
        let me = self.clone();
        self.inner.api.patient(Arc::new(move |e: &Error| {
            let (me, e) = (me.clone(), e.clone());
            Box::pin(async move { me.wait_out_limit(e).await })
        }))
    }

    /// Holds a bootstrap back for the limiter's window (its `Retry-After`,
    /// at most `LIMIT_WAIT_MAX`, or `RATE_WINDOW`), saying so in the status.
    /// `stop()`, `close()` and a new token end the wait early, with the 429.
    async fn wait_out_limit(&self, e: Error) -> Result<()> {
        let wait = match &e {
            Error::Http { retry_after: Some(after), .. } => (*after).min(LIMIT_WAIT_MAX),
            _ => RATE_WINDOW,
        };
        let interrupted = self.inner.life.interrupt.notified();
        tokio::pin!(interrupted);
        interrupted.as_mut().enable();
        self.check_open()?;
        tracing::debug!(?wait, "bootstrap held back by the server's rate limit");
        self.set_phase(Phase::Bootstrapping, Some(&e), 0);
        self.set_limited(Some(self.now_ms() + wait.as_millis() as u64));
        let waited = tokio::select! {
            biased; // one order, so a simulation replays
            _ = &mut interrupted => Err(e),
            _ = tokio::time::sleep(wait) => Ok(()),
        };
        self.set_limited(None);
        waited
    }

    /// Whether the log, read to its head, lacks the insert event of one of
    /// ours acknowledged after the cursor was where it points: then the log
    /// that acknowledged it was renumbered since, even if the new one is the
    /// same up to that cursor (a restart re-seeds the same rows within the
    /// same second), and the row shown from the acknowledgement, or anything
    /// else that changed meanwhile, may no longer be so.
    fn awaited_missing(&self) -> bool {
        let st = self.inner.state.read();
        let missing = st.awaited.values().any(|(_, after)| *after < st.cursor);
        if missing {
            tracing::debug!(awaited = ?st.awaited, cursor = st.cursor, "an acknowledged insert never came");
        }
        missing
    }

    /// Adds a page to a replay from 0; at the head, applies the whole replay
    /// in one transaction and returns its outcome: false when the log turned
    /// out renumbered since the snapshot (the replica is reset to start over).
    pub(super) async fn stage(&self, staged: &mut Option<Replay>, page: PullPage) -> Option<Result<bool>> {
        let replay = staged.as_mut()?;
        let (from, to) = (replay.at, page.cursor.last_seq);
        if to < from {
            return Some(Err(Error::Protocol(format!(
                "server moved the cursor backwards during a replay ({from} → {to})"
            ))));
        }
        for c in page.changes.into_iter().filter(|c| c.seq > from && c.seq <= to) {
            *replay.counts.entry(c.entity.clone()).or_default() += 1;
            replay.events.push(c);
        }
        replay.at = to;
        if page.has_more {
            self.replay_progress(&replay.counts, replay.at, replay.expect.as_ref(), false);
            return None;
        }
        let Replay { events, counts, at, epoch, expect } = staged.take()?;
        tracing::debug!(events = events.len(), at, epoch, "replay from 0 reached the head");
        // a replay from 0 reads the log from its start: it must hold the
        // events the snapshot's rows were read after
        if expect.is_some_and(|a| a.check(&events, 0, at, true, a.at()).is_none()) {
            return Some(self.reset_replica_inner(Some(ResyncReason::Server)).await.map(|()| false));
        }
        let anchor = Anchor::extended(None, &events, at);
        // the stream may have gone on from 0 meanwhile (a log that was
        // empty): then the pulls go on from where it is
        let expect = Expect { cursor: Some(0), ..Expect::epoch(epoch) };
        let applied = self.apply_changes(events, Some((at, anchor)), expect).await;
        if matches!(applied, Ok(Applied::Done)) {
            self.replay_progress(&counts, at, None, true);
        }
        Some(applied.map(|a| a != Applied::Moved))
    }

    /// Tells how far a replay from 0 has read, for each entity only the log
    /// fills: its events so far, and the share of the log read up to the
    /// head the snapshot was read at (the anchor it must reach), if known.
    fn replay_progress(&self, counts: &BTreeMap<String, usize>, at: u64, expect: Option<&Anchor>, done: bool) {
        let log_only: Vec<String> = {
            let st = self.inner.state.read();
            st.covered.iter().filter(|(_, head)| **head == 0).map(|(e, _)| e.clone()).collect()
        };
        let head = expect.map(Anchor::at).filter(|h| *h > 0);
        let fraction = if done { Some(1.0) } else { head.map(|h| (at as f64 / h as f64).min(1.0)) };
        for entity in log_only {
            let rows = counts.get(&entity).copied().unwrap_or(0);
            let total = done.then_some(rows);
            self.emit(Event::Progress(Progress { entity, rows, total, fraction, done }));
        }
    }

    /// Applies one page of changes and moves the cursor, in one transaction.
    /// `base`: the anchor the page's new events extend (`None`: one is
    /// learned from the whole page).
    /// `Applied::Moved`: the stream moved the cursor while the page was
    /// read; nothing was applied.
    pub(super) async fn apply_page(
        &self,
        page: PullPage,
        since: u64,
        epoch: u64,
        base: Option<Anchor>,
    ) -> Result<Applied> {
        let PullPage { mut changes, cursor, .. } = page;
        if cursor.last_seq < since {
            return Err(Error::Protocol(format!("server moved the cursor backwards ({since} → {})", cursor.last_seq)));
        }
        // the page may start before the cursor (the anchor check)
        let anchor = Anchor::extended(base.as_ref(), &changes, cursor.last_seq);
        changes.retain(|c| c.seq > since && c.seq <= cursor.last_seq);
        let expect = Expect { cursor: Some(since), ..Expect::epoch(epoch) };
        self.apply_changes(changes, Some((cursor.last_seq, anchor)), expect).await
    }

    /// Merges server changes (and the new cursor with the event it was
    /// reached by, if any) durably, then in memory. An insert event that
    /// names one of our own inserts in doubt (by the nonce sent as its `id`)
    /// acknowledges that insert first, so its row is never shown twice.
    pub(crate) async fn apply_changes(
        &self,
        changes: Vec<ChangeEvent>,
        cursor: Option<(u64, Option<Anchor>)>,
        expect: Expect,
    ) -> Result<Applied> {
        let mut changes = changes;
        self.normalize(changes.iter_mut().filter_map(|c| Some((c.entity.as_str(), c.data.as_mut()?))));
        // our inserts in doubt this batch reports applied (acknowledged
        // first), and those parked under another identity (temp → server id)
        let mut own: Vec<(Mutation, Option<String>)> = Vec::new();
        let mut parked: Vec<(String, String, String)> = Vec::new();
        {
            let st = self.inner.state.read();
            for c in &changes {
                if let Some(m) = reconcile::own_insert(st.view.queue(), c) {
                    own.push((m.clone(), Some(c.row_id.clone())));
                } else if let Some(temp) = reconcile::nonce(c).filter(|t| st.parked_in_doubt.contains(*t)) {
                    parked.push((c.entity.clone(), temp.to_string(), c.row_id.clone()));
                }
            }
        }
        if !own.is_empty() {
            tracing::debug!("adopt {:?}", own.iter().map(|(m, s)| (m.row_id.clone(), s.clone())).collect::<Vec<_>>());
            self.applied_all(own).await?;
        }
        let (mut effects, missing, replacing) = {
            let st = self.inner.state.read();
            // events that continue cursor 0 replay the log from its start:
            // entities waiting for such a replay are made from them alone
            let replacing = if expect.cursor == Some(0) { st.replaced_by_replay.clone() } else { BTreeSet::new() };
            // an insert or update of a row the snapshot holds, from before the
            // snapshot's head: superseded. Anything else is applied as it
            // comes: a row deleted before the snapshot must end as a tombstone,
            // so that an in-doubt insert found in the log is not stored again.
            let snapshot_holds = |c: &ChangeEvent| {
                c.kind != Kind::Delete
                    && st.covered.get(&c.entity).is_some_and(|head| c.seq <= *head)
                    && st.view.replica().base(&c.entity, &c.row_id).is_some()
            };
            let planned_apart = |c: &ChangeEvent| replacing.contains(&c.entity) || snapshot_holds(c);
            let (mut effects, mut missing) = if changes.iter().any(planned_apart) {
                let fresh: Vec<ChangeEvent> = changes.iter().filter(|c| !planned_apart(c)).cloned().collect();
                st.view.replica().plan(&fresh)
            } else {
                st.view.replica().plan(&changes)
            };
            if !replacing.is_empty() {
                let whole: Vec<ChangeEvent> =
                    changes.iter().filter(|c| replacing.contains(&c.entity)).cloned().collect();
                let (e, m) = Replica::default().plan(&whole);
                effects.extend(e);
                missing.extend(m);
            }
            (effects, missing, replacing)
        };
        if !missing.is_empty() {
            let token = self.session_token();
            for m in missing {
                if let Some(mut row) = self.inner.api.get(token.as_deref(), &m.entity, &m.id).await? {
                    row.insert("id".into(), Value::String(m.id.clone()));
                    self.normalize(std::iter::once((m.entity.as_str(), &mut row)));
                    effects.push(Effect::Put { entity: m.entity, id: m.id, seq: m.seq, data: RowText::new(&row) });
                }
            }
        }
        tracing::debug!(changes = changes.len(), effects = effects.len(), ?replacing, cursor = ?cursor.as_ref().map(|c| c.0), "apply");
        let (applied, entities) = self
            .with_db(move |me, db| {
                if me.inner.epoch.load(Ordering::SeqCst) != expect.epoch {
                    tracing::debug!("changes dropped: the replica was reset meanwhile");
                    return Ok((Applied::Dropped, Vec::new())); // they belong to the old replica
                }
                let moved = expect.cursor.is_some_and(|c| c != me.inner.state.read().cursor)
                    || expect.commits.is_some_and(|a| a != me.inner.commits.load(Ordering::SeqCst))
                    || (!replacing.is_empty() && replacing != me.inner.state.read().replaced_by_replay);
                if moved {
                    tracing::debug!("changes not applied: the cursor or the stored rows moved since they were planned");
                    return Ok((Applied::Moved, Vec::new()));
                }
                let (cursor, anchor) = match cursor {
                    Some((c, a)) => (Some(c), a),
                    None => (None, None),
                };
                // our inserts' own events, taken at last
                let taken: Vec<String> = {
                    let st = me.inner.state.read();
                    let nonces = changes.iter().filter_map(reconcile::nonce);
                    nonces.filter(|n| st.awaited.contains_key(*n)).map(str::to_string).collect()
                };
                // our writes that name another identity's insert now named by
                // the server (parked inserts are that identity's)
                let renamed: Vec<Mutation> = {
                    let st = me.inner.state.read();
                    let q = st.view.queue();
                    parked.iter().flat_map(|(entity, temp, server)| q.remapped(entity, temp, server, None)).collect()
                };
                db.write(|w| {
                    for entity in &replacing {
                        w.clear_entity(entity)?;
                    }
                    if !replacing.is_empty() {
                        w.set_meta(REPLACED_BY_REPLAY, "[]")?;
                    }
                    w.effects(&effects)?;
                    for nonce in &taken {
                        w.forget_awaited(nonce)?;
                    }
                    for (_, temp, server) in &parked {
                        w.set_alias(temp, server)?;
                    }
                    for m in &renamed {
                        w.save_mutation(m)?;
                    }
                    if let Some(c) = cursor {
                        w.set_cursor(c)?;
                    }
                    if let Some(a) = &anchor {
                        w.set_meta("anchor", &serde_json::to_string(a)?)?;
                    }
                    Ok(())
                })?;
                let mut st = me.inner.state.write();
                me.inner.commits.fetch_add(1, Ordering::SeqCst);
                if let Some(c) = cursor {
                    st.cursor = c;
                }
                if anchor.is_some() {
                    st.anchor = anchor;
                }
                for nonce in &taken {
                    st.awaited.remove(nonce);
                }
                for (_, temp, server) in parked {
                    st.parked_in_doubt.remove(&temp);
                    st.aliases.insert(temp, server);
                }
                for m in renamed {
                    st.view.replace(m);
                }
                let touched = st.view.commit_replacing(effects, &replacing);
                if !replacing.is_empty() {
                    st.replaced_by_replay.clear();
                }
                if st.view.queue().in_doubt() > 0 {
                    st.witness.record(&changes);
                } else {
                    st.witness.clear();
                }
                // every thousand events, tombstones the cursor has passed go
                let pruned = me.inner.catchup.pruned_at.load(Ordering::SeqCst);
                let gone = match cursor {
                    Some(c) if c.abs_diff(pruned) >= PRUNE_EVERY => {
                        me.inner.catchup.pruned_at.store(c, Ordering::SeqCst);
                        st.view.prune_tombstones(c)
                    }
                    _ => Vec::new(),
                };
                drop(st);
                if !gone.is_empty() {
                    db.write(|w| gone.iter().try_for_each(|(e, id)| w.delete_row(e, id)))?;
                }
                me.inner.counters.applied(changes.len());
                Ok((Applied::Done, touched))
            })
            .await?;
        if !entities.is_empty() {
            self.emit(Event::Change { entities });
        }
        Ok(applied)
    }
}

/// What must still hold when server changes are committed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    /// The replica generation they were read for; else they are dropped.
    pub(crate) epoch: u64,
    /// The cursor they continue; else they are planned again.
    pub(crate) cursor: Option<u64>,
    /// The commits of server state made when they were planned
    /// (`Inner::commits`); else they are planned again.
    pub(crate) commits: Option<u64>,
}

impl Expect {
    /// For work in a round that read the replica in generation `epoch`.
    pub(crate) fn epoch(epoch: u64) -> Expect {
        Expect { epoch, cursor: None, commits: None }
    }
}

/// How a commit of server changes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    Done,
    /// The replica was reset meanwhile: nothing to do with them.
    Dropped,
    /// The cursor or the stored rows moved since they were planned: nothing
    /// was applied; plan again from where things are now.
    Moved,
}
