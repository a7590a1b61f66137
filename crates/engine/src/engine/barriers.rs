//! Barriers: waiting for one write to settle (`settled`), and for the
//! replica to hold every write made before a call (`caught_up`).
//!
//! Owns the waiters: each is told the outcome of the write it waits for
//! when that write's `mutation` event is emitted (acknowledged, refused or
//! removed), and `ERR_SYNC_CLOSED` when the engine closes first.

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::events::{Event, MutationChange};
use crate::queue::{Mutation, MutationError, Status};

use super::Engine;

/// One caller waiting for the write with that mutation id.
type Waiter = (String, oneshot::Sender<Result<()>>);

/// Writes waited for; `None` once the engine closed.
pub(super) struct Waiters(Mutex<Option<Vec<Waiter>>>);

impl Default for Waiters {
    fn default() -> Self {
        Waiters(Mutex::new(Some(Vec::new())))
    }
}

impl Waiters {
    /// Tells those waiting for the write an event reports how it ended.
    pub(super) fn saw(&self, ev: &Event) {
        let Event::Mutation { status, mutation: m } = ev else { return };
        let outcome = match status {
            MutationChange::Applied => Ok(()),
            MutationChange::Failed => Err(refused(m)),
            MutationChange::Removed => Err(removed(m)),
            MutationChange::Pending => return,
        };
        self.finish(|id| id == m.id, || outcome.clone());
    }

    /// Ends every wait, and every later one at once: the engine closed.
    pub(super) fn close(&self) {
        let all = self.0.lock().take().unwrap_or_default();
        for (_, tx) in all {
            let _ = tx.send(Err(Error::Closed));
        }
    }

    /// The identity changed: writes no longer in the active queue are kept
    /// for their own identity, and whoever waits for them is told so.
    pub(super) fn parked(&self, active: impl Fn(&str) -> bool) {
        self.finish(
            |id| !active(id),
            || {
                Err(Error::Auth(
                    "the identity changed before the server took the write; it is kept for its own identity".into(),
                ))
            },
        );
    }

    fn finish(&self, which: impl Fn(&str) -> bool, outcome: impl Fn() -> Result<()>) {
        let done: Vec<_> = {
            let mut guard = self.0.lock();
            let Some(waiters) = guard.as_mut() else { return };
            let (done, left) = std::mem::take(waiters).into_iter().partition(|(id, _)| which(id));
            *waiters = left;
            done
        };
        for (_, tx) in done {
            let _ = tx.send(outcome());
        }
    }
}

/// A refused write as the error its waiter is given.
fn refused(m: &Mutation) -> Error {
    let MutationError { code, message, status } =
        m.error.clone().unwrap_or(MutationError { code: "REJECTED".into(), message: String::new(), status: None });
    Error::Refused { code, message, status }
}

fn removed(m: &Mutation) -> Error {
    Error::NotFound(format!("the write {} was removed before the server took it", m.id))
}

impl Engine {
    /// Resolves when the write `id` is acknowledged; fails with why it was
    /// refused, or removed. `id` is a mutation id, or a row id (the one an
    /// insert resolves with): then the last write to that row queued now.
    /// A write no longer queued was acknowledged already (the caller may see
    /// the queue as it was a moment ago).
    pub async fn settled(&self, id: &str) -> Result<()> {
        self.load().await?; // before a start, the queue is still on disk
        let rx = {
            // the waiter is in place before the queue is read, so an outcome
            // emitted in between is not missed; after a close, none is placed
            let mut guard = self.inner.waiters.0.lock();
            let waiters = guard.as_mut().ok_or(Error::Closed)?;
            let st = self.inner.state.read();
            let q = st.view.queue();
            let target = q.get(id).or_else(|| {
                let server = st.aliases.get(id).map(String::as_str);
                q.all().filter(|m| m.row_id == id || Some(m.row_id.as_str()) == server).max_by_key(|m| m.order)
            });
            match target {
                None => return Ok(()),
                Some(m) if m.status == Status::Failed => return Err(refused(m)),
                Some(m) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push((m.id.clone(), tx));
                    rx
                }
            }
        };
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Resolves once every write queued before the call is acknowledged and
    /// the replica has pulled past it (read-your-writes): a round runs now,
    /// sending what is queued and pulling to the head. Fails with the
    /// round's error, or the first of those writes the server refused (a
    /// write kept failed fails it until it is removed or retried: it will
    /// never be acknowledged as it is).
    pub async fn caught_up(&self) -> Result<()> {
        let before: Vec<String> = {
            let st = self.inner.state.read();
            st.view.queue().all().map(|m| m.id.clone()).collect()
        };
        for _ in 0..ROUNDS {
            self.sync().await?;
            let st = self.inner.state.read();
            let q = st.view.queue();
            let left: Vec<&Mutation> = before.iter().filter_map(|id| q.get(id)).collect();
            if let Some(m) = left.iter().find(|m| m.status == Status::Failed) {
                return Err(refused(m));
            }
            if left.is_empty() {
                return Ok(());
            }
            // a round that went through sends every write it can: one still
            // queued was in doubt, and is looked for by the next round
        }
        Err(Error::Network(format!("writes were still unacknowledged after {ROUNDS} rounds")))
    }
}

/// Rounds `caught_up` runs at most before it gives up.
const ROUNDS: usize = 5;
