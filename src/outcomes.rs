//! Writes' outcomes on their way to JavaScript. A promise made by napi
//! for each write comes with a threadsafe function of its own, and holds
//! the write's whole future in a box: a script making 100,000 inserts at
//! once spent 2.3–3.4 s of the JS thread making them. Writes are numbered
//! by JavaScript instead (`ticket`), their outcomes wait here, and one
//! weak threadsafe function wakes JavaScript, which takes every outcome
//! waiting at each wake-up (`sync.js` keeps the process alive while any
//! is unanswered). Owns the outcomes not taken yet and the wake-up.

use std::future::Future;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;

use crate::error::{failed, settle};

type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

#[derive(Default)]
pub struct Outcomes {
    waiting: Mutex<Vec<(u32, Value)>>,
    wake: RwLock<Option<Arc<Wake>>>,
}

impl Outcomes {
    /// `callback` is called (with nothing) when outcomes wait, once until
    /// they are taken. Weak: it never keeps the process alive on its own.
    pub fn set_wake(&self, callback: Function<(), ()>) -> napi::Result<()> {
        let wake: Wake = callback.build_threadsafe_function().weak::<true>().callee_handled::<false>().build()?;
        let wake = Arc::new(wake);
        *self.wake.write() = Some(wake.clone());
        // outcomes that came before it would otherwise wait for the next one
        if !self.waiting.lock().is_empty() {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
        Ok(())
    }

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
                outcomes.push(ticket, outcome);
            }
        }
    }

    /// A write's settled outcome, for the JavaScript promise numbered `ticket`.
    pub fn push(&self, ticket: u32, outcome: Value) {
        let first = {
            let mut waiting = self.waiting.lock();
            waiting.push((ticket, outcome));
            waiting.len() == 1
        };
        if first {
            let wake = self.wake.read().clone();
            if let Some(wake) = wake {
                wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    /// Every outcome waiting, as `[ticket, outcome]` pairs, oldest first.
    pub fn take(&self) -> Value {
        let waiting = std::mem::take(&mut *self.waiting.lock());
        Value::Array(waiting.into_iter().map(|(t, o)| Value::Array(vec![t.into(), o])).collect())
    }
}

/// A write's ticket until its outcome is pushed; dropped before that, it
/// answers with an internal error.
struct Unanswered(Option<(Arc<Outcomes>, u32)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((outcomes, ticket)) = self.0.take() {
            outcomes.push(ticket, failed("ERR_SYNC_INTERNAL", "the write's task ended without an outcome", None, None));
        }
    }
}
