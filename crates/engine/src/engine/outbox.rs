//! The outbox: `insert/update/delete` queue a mutation, durable before the
//! call resolves (writes made together commit in one transaction, in the
//! order they were made), and a round sends what is queued — one by one over
//! REST, or in `/api/batch` runs for admin tokens — in order, without ever
//! sending an insert twice (an insert whose answer was lost is looked for
//! first; see `acks`). Owns `submitted` and `no_batch`; changes the queue in
//! `state` only after the database committed (`db`, then `state`).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::Value;

use crate::api::{check_entity, check_id, BatchWrite};
use crate::db::Writer;
use crate::error::{Error, Result};
use crate::events::{Event, MutationChange};
use crate::io::random_suffix;
use crate::protocol::{Kind, Row, TEMP_PREFIX};
use crate::queue::{temp_refs, Mutation, MutationError, Sent, Status};
use crate::reconcile::{self, Found};
use crate::schema::Schema;

use super::{refusal, Engine, Wake, BATCH_BYTES, BATCH_MAX};

/// How long `commit_now` waits for the database, on the caller's thread.
const NOW_WAITS: std::time::Duration = std::time::Duration::from_micros(300);
/// The most writes `commit_now` commits on the caller's thread.
const NOW_MOST: usize = 64;

/// What this part owns: writes made but not yet committed, and whether
/// the server takes `/api/batch`.
#[derive(Default)]
pub(super) struct Outbox {
    /// Writes made but not yet committed, in the order they were made.
    pub(super) submitted: Mutex<Vec<Submitted>>,
    /// The server refused `/api/batch`: admin writes go one by one.
    pub(super) no_batch: AtomicBool,
    /// Entities the round in progress sends writes of. The stream leaves
    /// their events to the round's pull, which comes after the writes'
    /// answers (see `catchup::apply_stream`); emptied when the round ends.
    pub(super) settling: Mutex<BTreeSet<String>>,
}

/// Empties `Outbox::settling` when the round that filled it ends, however
/// it ends (a round dropped by `stop()` included).
pub(super) struct Settled<'a>(pub(super) &'a Mutex<BTreeSet<String>>);

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.0.lock().clear();
    }
}

/// A write waiting for its transaction, and who to tell when it is durable.
pub(super) struct Submitted {
    pub(super) m: Mutation,
    pub(super) done: tokio::sync::oneshot::Sender<Result<Mutation>>,
}

impl Engine {
    //
    // Writes take their place in the queue when they are called, not when
    // their future first runs: calls made one after another without awaiting
    // are sent in that order. The future resolves once the write is in SQLite.

    /// Optimistic insert under a temporary id (returned once the write is
    /// durable), replaced by the server's id once acknowledged.
    pub fn insert(&self, entity: &str, data: Row) -> impl Future<Output = Result<String>> + Send + 'static {
        let temp = format!("{TEMP_PREFIX}{}_{}", self.now_ms(), random_suffix(&*self.inner.io));
        let mut data = data;
        data.remove("id");
        let queued = check_entity(entity).and_then(|()| self.submit(entity, &temp, Kind::Insert, Some(data)));
        async move { queued?.await.map(|()| temp) }
    }

    pub fn update(&self, entity: &str, id: &str, patch: Row) -> impl Future<Output = Result<()>> + Send + 'static {
        let mut patch = patch;
        patch.remove("id");
        let queued = check_entity(entity).and_then(|()| check_id(id)).and_then(|()| {
            if patch.is_empty() {
                return Err(Error::InvalidArg("update needs at least one field to change".into()));
            }
            self.submit(entity, id, Kind::Update, Some(patch))
        });
        async move { queued?.await }
    }

    pub fn delete(&self, entity: &str, id: &str) -> impl Future<Output = Result<()>> + Send + 'static {
        let queued =
            check_entity(entity).and_then(|()| check_id(id)).and_then(|()| self.submit(entity, id, Kind::Delete, None));
        async move { queued?.await }
    }

    /// Puts a write in line now; the returned future commits it (with any
    /// others waiting: one transaction for a burst) and waits until it is durable.
    pub(super) fn submit(
        &self,
        entity: &str,
        row_id: &str,
        kind: Kind,
        data: Option<Row>,
    ) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
        self.check_open()?;
        let m = Mutation {
            id: format!("mut_{}_{}", self.now_ms(), random_suffix(&*self.inner.io)),
            order: 0,
            identity: String::new(),
            entity: entity.to_string(),
            row_id: row_id.to_string(),
            kind,
            data,
            status: Status::Pending,
            error: None,
            attempts: 0,
            created_at: self.now_ms(),
            sent: None,
        };
        let id = m.id.clone();
        let (done, mut answer) = tokio::sync::oneshot::channel();
        self.inner.outbox.submitted.lock().push(Submitted { m, done });
        let me = self.clone();
        Ok(async move {
            // committed already, on the caller's thread (`commit_now`)
            if let Ok(answered) = answer.try_recv() {
                return answered.map(|_| ());
            }
            // the rare paths are boxed: a burst holds one of these futures
            // per write, and with them inline each was 3.5 KB (100,000
            // writes made at once spent a third of their time in page faults)
            let loaded = if me.loaded() { Ok(()) } else { Box::pin(me.load()).await };
            let committed = match loaded {
                // taken by a transaction already (a burst's first write
                // takes them all): its answer comes, with no empty
                // transaction of our own on a blocking thread first
                Ok(()) if me.inner.outbox.submitted.lock().is_empty() => Ok(()),
                Ok(()) => Box::pin(me.commit_submitted()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                // nobody committed it: take it back, so it can never be written after this error
                let mut waiting = me.inner.outbox.submitted.lock();
                if let Some(i) = waiting.iter().position(|s| s.m.id == id) {
                    waiting.remove(i);
                    return Err(e);
                }
            }
            answer.await.map_err(|_| Error::Closed)?.map(|_| ())
        })
    }

    /// Commits the writes made so far on the calling thread, when that
    /// costs one short transaction: the replica is loaded, at most 64
    /// writes wait, the database is free within 0.3 ms and no other
    /// connection is writing the file. Their futures are then ready at
    /// their first poll, with no hop to a blocking thread and back. The
    /// binding asks for it on the first write of a turn of the JS event loop
    /// (a burst made in one turn still commits together, off that thread).
    /// Returns whether it answered the writes it found; false leaves them
    /// to their futures.
    pub fn commit_now(&self) -> bool {
        if !self.loaded() {
            return false;
        }
        let waiting = self.inner.outbox.submitted.lock().len();
        // a burst left to the writes' futures commits off this thread
        if waiting == 0 || waiting > NOW_MOST {
            return false;
        }
        // the sync loop's transactions (an acknowledgement, a page of
        // changes) last about 0.1 ms: one is waited out, a longer one is not
        let Some(guard) = self.inner.db.try_lock_for(NOW_WAITS) else { return false };
        // nor is another connection's write (a second engine on the file)
        if !guard.as_ref().is_some_and(|db| db.free_to_write()) {
            return false;
        }
        let taken = Mutex::new(Vec::new());
        let outcome = self.in_transaction(guard, |me, db| me.store_submitted(db, &taken));
        let batch = taken.into_inner();
        // taken and refused, or stored, or stored and not committed: all answered below
        let answered = matches!(outcome, Ok(true)) || !batch.is_empty();
        let _ = self.answer_submitted(batch, outcome.map(drop));
        answered
    }

    /// The replica is in memory and no hydration waits to be stored: what
    /// `load` would do is done.
    fn loaded(&self) -> bool {
        let st = self.inner.state.read();
        st.loaded && st.pending_hydration.is_none()
    }

    /// Commits every submitted write in one transaction, then makes them visible.
    pub(super) async fn commit_submitted(&self) -> Result<()> {
        // what the transaction took, kept out here: if it fails to commit,
        // each write it took is answered with that error (it is not stored)
        let taken: Arc<Mutex<Vec<Submitted>>> = Arc::default();
        let holder = taken.clone();
        let outcome = self.with_db(move |me, db| me.store_submitted(db, &holder).map(drop)).await;
        let batch = std::mem::take(&mut *taken.lock());
        self.answer_submitted(batch, outcome)
    }

    /// Takes the writes made so far and stores them (their transaction is
    /// the caller's); those stored go to `holder`, to be answered once it
    /// commits. Writes refused here are answered at once. Whether it took any.
    fn store_submitted(&self, db: &mut crate::db::Db, holder: &Mutex<Vec<Submitted>>) -> Result<bool> {
        let mut batch = std::mem::take(&mut *self.inner.outbox.submitted.lock());
        if batch.is_empty() {
            return Ok(false);
        }
        {
            // a write the manifest rules out is refused before it is
            // queued (the schema is loaded by now); a temporary id the
            // server has since named (the caller kept what insert()
            // returned) means that row, checked under the database
            // lock, so an acknowledgement cannot slip in between
            let st = self.inner.state.read();
            let mut fit = Vec::with_capacity(batch.len());
            for s in batch {
                match unfit(st.schema.as_ref(), &s.m) {
                    None => fit.push(s),
                    Some(e) => {
                        let _ = s.done.send(Err(e));
                    }
                }
            }
            batch = fit;
            for Submitted { m, .. } in &mut batch {
                m.identity = st.queue_key.clone();
                renamed(m, &st.aliases);
            }
        }
        if batch.is_empty() {
            return Ok(true);
        }
        if let Err(e) = db.write(|w| batch.iter_mut().try_for_each(|s| w.add_mutation(&mut s.m))) {
            for s in batch {
                let _ = s.done.send(Err(e.clone()));
            }
            return Ok(true);
        }
        let mut st = self.inner.state.write();
        for Submitted { m, .. } in &batch {
            if m.identity == st.queue_key {
                st.view.push(m.clone());
            }
        }
        *holder.lock() = batch;
        Ok(true)
    }

    /// Tells the writes of a committed transaction (or of one that failed
    /// to commit: its error), their listeners and the sync loop.
    fn answer_submitted(&self, batch: Vec<Submitted>, outcome: Result<()>) -> Result<()> {
        if let Err(e) = outcome {
            for s in batch {
                let _ = s.done.send(Err(e.clone()));
            }
            return Err(e);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut entities: Vec<String> = batch.iter().map(|s| s.m.entity.clone()).collect();
        entities.sort();
        entities.dedup();
        self.emit(Event::Change { entities });
        for s in &batch {
            self.emit(Event::Mutation { status: MutationChange::Pending, mutation: s.m.clone() });
        }
        self.wake(Wake::Write);
        for s in batch {
            let _ = s.done.send(Ok(s.m));
        }
        Ok(())
    }

    /// Removes a mutation (typically a failed one) and its optimistic effect.
    pub async fn remove_mutation(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        let removed = self
            .with_db(move |me, db| {
                if me.inner.state.read().view.queue().get(&id).is_none() {
                    return Ok(None);
                }
                db.write(|w| w.delete_mutation(&id))?;
                Ok(me.inner.state.write().view.remove(&id))
            })
            .await?;
        match removed {
            Some(m) => {
                self.emit(Event::Change { entities: vec![m.entity.clone()] });
                self.emit(Event::Mutation { status: MutationChange::Removed, mutation: m });
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Puts a failed mutation back in the queue.
    pub async fn retry_mutation(&self, id: &str) -> Result<()> {
        let m = self.set_mutation_status(id, Status::Pending, None).await?;
        self.emit(Event::Change { entities: vec![m.entity.clone()] });
        self.emit(Event::Mutation { status: MutationChange::Pending, mutation: m });
        self.wake(Wake::Write);
        Ok(())
    }

    pub(super) async fn set_mutation_status(
        &self,
        id: &str,
        status: Status,
        error: Option<MutationError>,
    ) -> Result<Mutation> {
        let id = id.to_string();
        self.with_db(move |me, db| {
            let mut m = me
                .inner
                .state
                .read()
                .view
                .queue()
                .get(&id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("no mutation {id:?}")))?;
            m.status = status;
            m.error = error.clone();
            if status == Status::Pending {
                m.attempts = 0;
            }
            db.write(|w| w.save_mutation(&m))?;
            me.inner.state.write().view.replace(m.clone());
            Ok(m)
        })
        .await
    }

    /// Sends queued writes, oldest first, through the REST entity routes.
    pub(super) async fn flush(&self) -> Result<()> {
        let mut checked = false;
        loop {
            let (next, token, admin) = {
                let st = self.inner.state.read();
                if st.queue_key != st.identity {
                    return Ok(()); // identity not verified for this token yet
                }
                let admin = st.session.as_ref().is_some_and(|s| s.is_admin);
                (st.view.queue().next_pending().cloned(), st.verified_token.clone(), admin)
            };
            let Some(m) = next else { return Ok(()) };
            self.inner.outbox.settling.lock().insert(m.entity.clone());
            if m.kind == Kind::Insert && m.sent.is_none() && !checked {
                // an insert is looked for in the log it went into, counted in
                // the server lifetime it was sent in: make sure that lifetime
                // is today's (the pull checks the log still holds our anchor)
                checked = true;
                self.pull_to_head().await?;
                continue;
            }
            if m.row_id.starts_with(TEMP_PREFIX) && m.kind != Kind::Insert {
                let err = MutationError {
                    code: "DEPENDENCY_FAILED".into(),
                    message: format!("the insert that created {} failed or was removed", m.row_id),
                    status: None,
                };
                self.fail(&m, err).await?;
                continue;
            }
            let unfit = unfit(self.inner.state.read().schema.as_ref(), &m);
            if let Some(e) = unfit {
                // queued before the manifest was known: it fails as the
                // server would refuse it, before it goes anywhere
                self.fail(&m, refusal(&e)).await?;
                continue;
            }
            if admin && !self.inner.outbox.no_batch.load(Ordering::SeqCst) && self.flush_batch(token.as_deref()).await?
            {
                continue;
            }
            let m = match (m.kind, &m.sent) {
                (Kind::Insert, Some(_)) => {
                    // an earlier attempt may have been applied: pull (which
                    // adopts it if its event comes along, and notices a
                    // restart), then look for its event in the log; when the
                    // log cannot tell, match fields
                    self.pull_to_head().await?;
                    let still = self.inner.state.read().view.queue().get(&m.id).cloned();
                    let Some(m) = still.filter(|m| m.status == Status::Pending) else { continue };
                    let found = match self.scan_for_insert(&m, token.as_deref()).await? {
                        Some(found) => found,
                        None => {
                            let st = self.inner.state.read();
                            reconcile::find_applied(st.view.replica(), &st.witness, &m).into()
                        }
                    };
                    match found {
                        Found::Applied(server_id) => {
                            self.applied(&m, Some(server_id)).await?;
                            continue;
                        }
                        Found::NotApplied => m,
                    }
                }
                (Kind::Insert, None) => self.mark_sent(vec![m], true, &[]).await?.remove(0),
                _ => m,
            };
            let api = &self.inner.api;
            let t = token.as_deref();
            tracing::debug!(id = m.id, entity = m.entity, kind = m.kind.as_str(), attempts = m.attempts, "send");
            self.inner.counters.sent(1, usize::from(m.attempts > 0));
            let sent = match m.kind {
                Kind::Insert => {
                    let nonce = m.sent.as_ref().is_some_and(|s| s.nonce).then_some(m.row_id.as_str());
                    api.insert(t, &m.entity, m.data.as_ref().unwrap_or(&Row::new()), nonce).await.map(Some)
                }
                Kind::Update => {
                    api.update(t, &m.entity, &m.row_id, m.data.as_ref().unwrap_or(&Row::new())).await.map(|_| None)
                }
                Kind::Delete => match api.delete(t, &m.entity, &m.row_id).await {
                    // already gone: the delete's goal holds
                    Err(Error::Http { status: 404, .. }) => Ok(None),
                    other => other.map(|_| None),
                },
            };
            match sent {
                Ok(server_id) => self.applied(&m, server_id).await?,
                Err(e) if e.is_transient() && m.kind == Kind::Insert => {
                    // its answer was lost: look in the log at once, while it
                    // can still tell (a restart would renumber it). Only a
                    // found insert is taken: one not found yet may still be
                    // under way, and is looked for again before any re-send.
                    if let Ok(Some(Found::Applied(server_id))) = self.scan_for_insert(&m, token.as_deref()).await {
                        self.applied(&m, Some(server_id)).await?;
                        continue;
                    }
                    return self.retry_later(m, e).await;
                }
                Err(e) if e.is_transient() => return self.retry_later(m, e).await,
                Err(e) if matches!(e.status(), Some(401 | 403)) => {
                    // refused as someone else? a revoked token answers as
                    // anonymous: confirm the session before blaming the write
                    self.inner.state.write().session_checked_at = 0;
                    self.ensure_session().await?;
                    if self.inner.state.read().view.queue().get(&m.id).is_some() {
                        self.fail(&m, refusal(&e)).await?;
                    } // else the identity changed and the write is parked with its own
                }
                Err(e) => self.fail(&m, refusal(&e)).await?,
            }
        }
    }

    /// Sends the queue head and the writes after it as `/api/batch` runs
    /// (admin sessions: a script importing 100,000 rows should not make
    /// 100,000 requests). Per-write outcomes are handled exactly as on the
    /// REST path. While one run's answers are stored, the next run is
    /// already on the server: storing them took as long as the server took
    /// to apply them (a bulk import's profile), and neither needs the other.
    /// Returns false when the head must go alone, or the server has no
    /// batch route.
    pub(super) async fn flush_batch(&self, token: Option<&str>) -> Result<bool> {
        let run = self.next_batch(&[], token);
        if run.is_empty() {
            return Ok(false);
        }
        let mut run = self.mark_sent(run, false, &[]).await?;
        let mut answer = self.send_batch(token, &run).await;
        let mut first = true;
        loop {
            let outcomes = match answer {
                Ok(outcomes) => outcomes,
                Err(e) if e.is_transient() => return self.retry_later(run[0].clone(), e).await.map(|_| true),
                Err(Error::Http { status: 403..=405, .. }) => {
                    // no batch route for us after all: the REST path does the same job
                    self.inner.outbox.no_batch.store(true, Ordering::SeqCst);
                    return Ok(!first);
                }
                Err(e) => return Err(e),
            };
            first = false;
            let next = self.next_batch(&run, token);
            if next.is_empty() {
                self.settle_batch(run, outcomes).await?;
                return Ok(true);
            }
            // the inserts just answered are rows the server holds, though
            // not stored here yet: the next run's inserts are newer
            let answered: Vec<(&str, &str)> = run
                .iter()
                .zip(&outcomes)
                .filter_map(|(m, o)| Some((m.entity.as_str(), o.as_ref().ok()?.as_deref()?)))
                .collect();
            let next = match self.mark_sent(next, false, &answered).await {
                Ok(next) => next,
                Err(e) => {
                    // the answers came: they are stored whatever happens to the next run
                    self.settle_batch(run, outcomes).await?;
                    return Err(e);
                }
            };
            let (settled, next_answer) = tokio::join!(self.settle_batch(run, outcomes), self.send_batch(token, &next));
            // a failed store leaves the next run's answer unread: its inserts
            // are in doubt, looked for before they are sent again
            settled?;
            (run, answer) = (next, next_answer);
        }
    }

    /// The next `/api/batch` run: the pending writes from the queue head,
    /// after those of `in_flight` (a run answered, its answers not stored
    /// yet), up to the first that must wait or go alone. None while the
    /// token the round sends with is no longer the session's (a token set
    /// during a long import: its writes wait for the next round).
    fn next_batch(&self, in_flight: &[Mutation], token: Option<&str>) -> Vec<Mutation> {
        let st = self.inner.state.read();
        if st.queue_key != st.identity || st.verified_token.as_deref() != token {
            return Vec::new();
        }
        let ids: BTreeSet<&str> = in_flight.iter().map(|m| m.id.as_str()).collect();
        // rows without a server id yet: a write naming one waits for its
        // insert's answer (of the run in flight, or of this run)
        let mut temps: BTreeSet<&str> =
            in_flight.iter().filter(|m| m.kind == Kind::Insert).map(|m| m.row_id.as_str()).collect();
        let (mut run, mut bytes) = (Vec::new(), 0);
        for m in st.view.queue().pending().filter(|m| !ids.contains(m.id.as_str())) {
            let in_doubt = m.kind == Kind::Insert && m.sent.is_some(); // reconciled alone
            let names_temp = (m.kind != Kind::Insert && m.row_id.starts_with(TEMP_PREFIX))
                || temp_refs(m).any(|t| temps.contains(t));
            bytes += 64 + m.data.as_ref().map_or(0, |d| serde_json::to_string(d).map_or(0, |t| t.len()));
            if in_doubt || names_temp || unfit(st.schema.as_ref(), m).is_some() || bytes > BATCH_BYTES {
                break;
            }
            if m.kind == Kind::Insert {
                temps.insert(m.row_id.as_str());
            }
            run.push(m.clone());
            if run.len() == BATCH_MAX {
                break;
            }
        }
        run
    }

    /// Sends one run; the writes are counted once it went out (a server
    /// without the route has them sent again by REST).
    async fn send_batch(&self, token: Option<&str>, run: &[Mutation]) -> Result<Vec<Result<Option<String>>>> {
        self.inner.outbox.settling.lock().extend(run.iter().map(|m| m.entity.clone()));
        tracing::debug!(writes = run.len(), "send a batch");
        let empty = Row::new();
        let writes: Vec<BatchWrite> = run
            .iter()
            .map(|m| {
                let (entity, id, data) = (m.entity.as_str(), m.row_id.as_str(), m.data.as_ref().unwrap_or(&empty));
                match m.kind {
                    Kind::Insert => BatchWrite::Insert { entity, data },
                    Kind::Update => BatchWrite::Update { entity, id, patch: data },
                    Kind::Delete => BatchWrite::Delete { entity, id },
                }
            })
            .collect();
        let answer = self.inner.api.batch(token, &writes).await;
        if !matches!(answer, Err(Error::Http { status: 403..=405, .. })) {
            self.inner.counters.sent(run.len(), run.iter().filter(|m| m.attempts > 0).count());
        }
        answer
    }

    /// Stores a run's answers: accepted writes together, refused ones in their place.
    async fn settle_batch(&self, run: Vec<Mutation>, outcomes: Vec<Result<Option<String>>>) -> Result<()> {
        let mut accepted = Vec::new();
        for (m, outcome) in run.into_iter().zip(outcomes) {
            match outcome {
                Ok(server_id) => accepted.push((m, server_id)),
                Err(e) => {
                    self.applied_all(std::mem::take(&mut accepted)).await?;
                    self.fail(&m, refusal(&e)).await?;
                }
            }
        }
        self.applied_all(accepted).await
    }

    /// Counts a failed attempt and gives up this round (backoff follows).
    pub(super) async fn retry_later(&self, mut m: Mutation, e: Error) -> Result<()> {
        m.attempts += 1;
        tracing::info!(id = m.id, entity = m.entity, attempts = m.attempts, error = %e, "write not sent; it will be retried");
        self.save_mutations(vec![m], |w, m| w.save_mutation(m)).await?;
        Err(e)
    }

    /// Persists changed bookkeeping of queued mutations with `save` (nothing
    /// visible changes), then puts them in place in memory.
    pub(super) async fn save_mutations(
        &self,
        changed: Vec<Mutation>,
        save: fn(&Writer<'_>, &Mutation) -> Result<()>,
    ) -> Result<()> {
        self.with_db(move |me, db| {
            db.write(|w| changed.iter().try_for_each(|m| save(w, m)))?;
            let mut st = me.inner.state.write();
            for m in changed {
                st.view.replace(m);
            }
            Ok(())
        })
        .await
    }

    /// Records, before inserts go out, that they may reach the server, and
    /// how to find them there (`nonce`: the temporary id goes out as `id`).
    /// `answered`: rows the server created for us, not stored yet
    /// (entity, server id), which count as held.
    pub(super) async fn mark_sent(
        &self,
        mut run: Vec<Mutation>,
        nonce: bool,
        answered: &[(&str, &str)],
    ) -> Result<Vec<Mutation>> {
        let mut newest: HashMap<&str, &str> = HashMap::new();
        for &(entity, id) in answered {
            let at = newest.entry(entity).or_default();
            *at = id.max(*at);
        }
        let mut changed = Vec::new();
        {
            let st = self.inner.state.read();
            for m in run.iter_mut().filter(|m| m.kind == Kind::Insert && m.sent.is_none()) {
                let held = st.view.replica().max_base_id(&m.entity);
                let after = held.max(newest.get(m.entity.as_str()).copied()).map(str::to_string);
                m.sent = Some(Sent { after, nonce, since: Some(st.cursor), server_gen: st.server_gen });
                changed.push(m.clone());
            }
        }
        if !changed.is_empty() {
            self.save_mutations(changed, |w, m| w.set_sent(m)).await?;
        }
        Ok(run)
    }
}

/// Rewrites the temporary ids `m` names that the server has since named
/// (`aliases`), as its row and in its data; true when it changed. An
/// insert keeps its own temporary id: it is its nonce, by which it is
/// acknowledged (through the alias) rather than sent again.
pub(super) fn renamed(m: &mut Mutation, aliases: &HashMap<String, String>) -> bool {
    let mut changed = false;
    if let Some(server) = aliases.get(&m.row_id).filter(|_| m.kind != Kind::Insert) {
        m.row_id = server.clone();
        changed = true;
    }
    for v in m.data.iter_mut().flat_map(|d| d.values_mut()) {
        if let Some(server) = v.as_str().and_then(|s| aliases.get(s)) {
            *v = Value::String(server.clone());
            changed = true;
        }
    }
    changed
}

/// Why `schema` rules out a write never sent, if it does: checked as a write
/// is queued, and before one queued while the manifest was not known yet is
/// sent. One already tried is left to the server (it may be applied).
fn unfit(schema: Option<&Schema>, m: &Mutation) -> Option<Error> {
    if m.sent.is_some() || m.attempts > 0 {
        return None;
    }
    schema?.check(&m.entity, m.kind, m.data.as_ref()).err()
}
