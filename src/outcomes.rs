//! Writes' outcomes on their way to JavaScript. A promise made by napi
//! for each write comes with a threadsafe function of its own, and holds
//! the write's whole future in a box: a script making 100,000 inserts at
//! once spent 2.3–3.4 s of the JS thread making them. Writes are numbered
//! by JavaScript instead (`ticket`), their outcomes wait here, and one
//! weak threadsafe function wakes JavaScript, which takes every outcome
//! waiting at each wake-up (`sync.js` keeps the process alive while any
//! is unanswered). Owns what answers a write; the outcomes wait in a
//! [`Mailbox`].

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{failed, settle};
use crate::mailbox::Mailbox;

/// Each settled outcome with the ticket of the promise it answers.
pub type Outcomes = Mailbox<(u32, Value)>;

impl Outcomes {
    /// Runs `write` and answers `ticket` with its outcome — or, if the
    /// task ends without one (a panic, the runtime going away), with an
    /// internal error: no promise is left waiting, nor the process held.
    pub fn answer<T: serde::Serialize>(
        self: Arc<Self>,
        ticket: u32,
        write: impl Future<Output = pylon_sync_engine::Result<T>>,
    ) -> impl Future<Output = ()> {
        let mut unanswered = Unanswered(Some((self, ticket)));
        async move {
            let outcome = settle(write.await);
            if let Some((outcomes, ticket)) = unanswered.0.take() {
                outcomes.push((ticket, outcome));
            }
        }
    }

    /// Every outcome waiting, as `[ticket, outcome]` pairs, oldest first.
    pub fn take_json(&self) -> Value {
        Value::Array(self.take().into_iter().map(|(t, o)| Value::Array(vec![t.into(), o])).collect())
    }
}

/// A write's ticket until its outcome is pushed; dropped before that, it
/// answers with an internal error.
struct Unanswered(Option<(Arc<Outcomes>, u32)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((outcomes, ticket)) = self.0.take() {
            outcomes
                .push((ticket, failed("ERR_SYNC_INTERNAL", "the write's task ended without an outcome", None, None)));
        }
    }
}
