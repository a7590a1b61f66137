//! Items on their way from the engine's threads to JavaScript, and the one
//! weak threadsafe function that wakes JavaScript to take them all at once
//! (a function per item was most of the cost where items are many: see
//! `outcomes`). Owns the items not taken yet and the wake-up.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use parking_lot::{Mutex, RwLock};

type Wake = ThreadsafeFunction<(), (), (), Status, false, true>;

pub struct Mailbox<T> {
    /// `None` once closed: nothing more is kept.
    waiting: Mutex<Option<Vec<T>>>,
    wake: RwLock<Option<Arc<Wake>>>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox { waiting: Mutex::new(Some(Vec::new())), wake: RwLock::new(None) }
    }
}

impl<T> Mailbox<T> {
    /// `callback` is called (with nothing) when items wait, once until
    /// they are taken. Weak: it never keeps the process alive on its own.
    pub fn set_wake(&self, callback: Function<(), ()>) -> napi::Result<()> {
        let wake: Wake = callback.build_threadsafe_function().weak::<true>().callee_handled::<false>().build()?;
        let wake = Arc::new(wake);
        *self.wake.write() = Some(wake.clone());
        // items that came before it would otherwise wait for the next one
        if self.waiting.lock().as_ref().is_some_and(|w| !w.is_empty()) {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
        Ok(())
    }

    /// Drops what waits and whatever comes later, and lets the wake-up's
    /// function go.
    pub fn close(&self) {
        *self.wake.write() = None;
        self.waiting.lock().take();
    }

    pub fn push(&self, item: T) {
        let first = {
            let mut waiting = self.waiting.lock();
            let Some(waiting) = waiting.as_mut() else { return };
            waiting.push(item);
            waiting.len() == 1
        };
        if first {
            let wake = self.wake.read().clone();
            if let Some(wake) = wake {
                wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
            }
        }
    }

    /// Every item waiting, oldest first.
    pub fn take(&self) -> Vec<T> {
        self.waiting.lock().as_mut().map(std::mem::take).unwrap_or_default()
    }
}
