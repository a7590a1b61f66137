//! Lifecycle: `start`, `stop`, `close`, `abandon`, and the sync loop (one
//! round: session check → boot check → send queued writes → pull to the
//! head, then wait for a wake, a poll tick or the safety pull). Owns the
//! loop task (`loop_handle`), the `running`/`closed` flags and what the
//! loop was woken for (`Wake`). A round holds the `sync` lock; `stop()`
//! aborts the loop between awaits, which is why work planned in a round
//! re-checks the epoch before it commits.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::config::Which;
use crate::error::{Error, Result};
use crate::events::{ErrorContext, Event, Phase};

use super::outbox::Settled;
use super::{Engine, BACKOFF_CAP, RATE_WINDOW, SAFETY_PULL};

/// Why the loop is asked for a round now. A local write or a new token
/// needs the whole round, as its writes go out; a stream's hint (an event
/// it may not apply itself, a connection opened or lost) needs only the
/// pull, so it does not wait behind a flush of every queued write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    Write,
    Session,
    Pull,
}

impl Wake {
    const fn bit(self) -> u8 {
        match self {
            Wake::Write => 1,
            Wake::Session => 2,
            Wake::Pull => 4,
        }
    }
}

/// What this part owns: whether the engine runs or is closed, the loop
/// task, and the signals the loop waits on.
#[derive(Default)]
pub(super) struct Life {
    pub(super) running: AtomicBool,
    pub(super) closed: AtomicBool,
    /// Something asks for a round now; `wants` says what for (`Wake` bits).
    pub(super) wake: Notify,
    wants: AtomicU8,
    pub(super) stop: Notify,
    /// A wait inside a round (a bootstrap waiting out a rate limit) ends
    /// now: the engine stops, or the token changed.
    pub(super) interrupt: Notify,
    /// A `sync()` went through: a wait for backoff or a rate limit is over.
    resume: Notify,
    pub(super) loop_handle: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Engine {
    /// The spec's `start()`: load the replica and the queue from disk, resolve
    /// the session, catch up with the server, then follow it. Resolves after the
    /// first sync attempt; when the server is unreachable it resolves anyway
    /// (offline), reports the error as an event and keeps retrying.
    pub async fn start(&self) -> Result<()> {
        self.check_open()?;
        if self.inner.life.running.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        tracing::info!(transport = self.inner.cfg.transport.map_or("auto", Which::name), "starting");
        self.set_phase(Phase::Starting, None, 0);
        if let Err(e) = self.load().await {
            tracing::warn!(error = %e, "the replica could not be loaded");
            self.inner.life.running.store(false, Ordering::SeqCst);
            self.set_phase(Phase::Stopped, Some(&e), 0);
            return Err(e);
        }
        tracing::debug!(cursor = self.cursor(), "replica loaded");
        let first = self.sync_once().await;
        match &first {
            Ok(()) => tracing::info!(cursor = self.cursor(), "started: caught up"),
            Err(e) => tracing::info!(error = %e, "started: the first round failed; retrying in the background"),
        }
        let mut backoff = Backoff::new(self.inner.cfg.reconnect_delay, BACKOFF_CAP, self.inner.io.clone());
        let first_delay = self.after_sync(&first, &mut backoff);
        if !self.inner.life.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        let me = self.clone();
        let span = me.inner.span.clone();
        let handle = tokio::spawn(async move { me.run(backoff, first_delay).await }.instrument(span));
        *self.inner.life.loop_handle.lock() = Some(handle);
        self.start_realtime();
        match first {
            Err(e) if !e.is_transient() && !matches!(e, Error::Resync { .. } | Error::Http { .. } | Error::Auth(_)) => {
                // no retry mends it (an untrusted certificate, a damaged
                // file): a start that rejects leaves nothing running, and
                // nothing holding the process
                tracing::warn!(error = %e, "start failed; the engine is stopped");
                self.stop().await;
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// Stops following the server; local reads and writes keep working.
    pub async fn stop(&self) {
        self.inner.life.running.store(false, Ordering::SeqCst);
        self.inner.life.stop.notify_waiters();
        self.inner.life.interrupt.notify_waiters();
        let handle = self.inner.life.loop_handle.lock().take();
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
        self.stop_realtime().await;
        tracing::info!("stopped");
        if !self.inner.life.closed.load(Ordering::SeqCst) {
            self.set_phase(Phase::Stopped, None, 0);
        }
    }

    /// Sends what is queued, for at most `limit`, before a `close()`. A
    /// round that does not finish in time is dropped where it waits, as
    /// `stop()` drops one; whatever it did not send stays queued on disk for
    /// the next start. Resolves whether nothing is left to send. Only a
    /// started engine sends: one never started goes to no server.
    pub async fn flush_within(&self, limit: Duration) -> bool {
        let left = || self.inner.state.read().view.queue().pending_count();
        if !self.inner.life.running.load(Ordering::SeqCst) || self.check_open().is_err() || left() == 0 {
            return left() == 0;
        }
        match tokio::time::timeout(limit, self.sync_once()).await {
            Ok(Ok(())) => left() == 0,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the writes queued at close were not all sent");
                false
            }
            Err(_) => {
                tracing::debug!(?limit, "the writes queued at close were not sent in time");
                false
            }
        }
    }

    /// Stops and releases the database; every later call fails with `ERR_SYNC_CLOSED`.
    pub async fn close(&self) {
        self.stop().await;
        let _sync = self.inner.sync.lock().await;
        self.inner.life.closed.store(true, Ordering::SeqCst);
        self.interrupt_queries();
        let me = self.clone();
        let release = move || {
            drop(me.inner.reader.lock().take());
            if let Some(db) = me.inner.db.lock().take() {
                // what SQLite suggests before a connection closes: the
                // planner's statistics, where the rows changed since
                if let Err(e) = db.optimize() {
                    tracing::debug!(error = %e, "optimize at close failed");
                }
            }
        };
        if self.inner.io.inline_db() {
            release();
        } else {
            let _ = tokio::task::spawn_blocking(release).await;
        }
        self.set_phase(Phase::Closed, None, 0);
        self.inner.waiters.close();
        tracing::info!("closed");
        self.set_listener(None);
    }

    /// Ends the engine the way a killed process ends: its tasks are dropped
    /// wherever they wait, nothing is sent or finished, and the database is
    /// let go. A simulation's crash (`tests/sim.rs`); applications use
    /// `close()`.
    #[doc(hidden)]
    pub fn abandon(&self) {
        self.inner.life.running.store(false, Ordering::SeqCst);
        self.inner.life.closed.store(true, Ordering::SeqCst);
        let handles = [self.inner.life.loop_handle.lock().take(), self.inner.rt.handle.lock().take()];
        for h in handles.into_iter().flatten() {
            h.abort();
        }
        self.interrupt_queries();
        drop(self.inner.db.lock().take());
        self.set_listener(None);
    }

    pub(super) async fn run(self, mut backoff: Backoff, delay: Duration) {
        let mut next = tokio::time::Instant::now() + delay;
        loop {
            // a wake runs a round early, except while backing off
            let woken = tokio::select! {
                biased; // one order, so a simulation replays
                _ = self.inner.life.stop.notified() => return,
                _ = tokio::time::sleep_until(next) => false,
                _ = self.inner.life.wake.notified(), if backoff.attempts() == 0 => true,
                _ = self.inner.life.resume.notified() => {
                    next = tokio::time::Instant::now() + self.after_sync(&Ok(()), &mut backoff);
                    continue;
                }
            };
            if !self.inner.life.running.load(Ordering::SeqCst) {
                return;
            }
            let wants = self.inner.life.wants.swap(0, Ordering::SeqCst);
            let res = if !woken || wants & (Wake::Write.bit() | Wake::Session.bit()) != 0 {
                self.sync_once().await
            } else if wants & Wake::Pull.bit() != 0 {
                self.round(false).await
            } else {
                continue; // what woke it was met by the last round's pull
            };
            next = tokio::time::Instant::now() + self.after_sync(&res, &mut backoff);
        }
    }

    /// Decides how long to wait after a sync attempt, and reports it.
    pub(super) fn after_sync(&self, res: &Result<()>, backoff: &mut Backoff) -> Duration {
        match res {
            Ok(()) => {
                backoff.reset();
                self.set_phase(Phase::Idle, None, 0);
                self.polled(None, 0);
                if self.inner.rt.streaming() {
                    // the stream brings changes; an occasional pull catches what it missed
                    self.inner.cfg.poll_interval.max(SAFETY_PULL)
                } else {
                    self.inner.cfg.poll_interval
                }
            }
            Err(e) => {
                self.inner.watch.boot_check_due.store(true, Ordering::SeqCst);
                let context = match e {
                    Error::Resync { .. } => ErrorContext::Pull,
                    Error::Auth(_) => ErrorContext::Session,
                    _ => ErrorContext::Sync,
                };
                self.emit(Event::Error { context, error: e.clone() });
                let delay = match e {
                    Error::Resync { .. } => {
                        // the breaker: 2, 4, 8, 16, 30 s between repeated resyncs
                        // (the first 410 of a series was retried at once)
                        let n =
                            self.inner.catchup.resyncs_in_a_row.load(Ordering::SeqCst).saturating_sub(1).clamp(1, 5);
                        BACKOFF_CAP.min(Duration::from_secs(1 << n))
                    }
                    Error::Http { status: 429, retry_after, .. } => {
                        backoff.penalize(2);
                        let jitter = backoff.next_delay();
                        let wait = retry_after.unwrap_or(RATE_WINDOW);
                        wait.max(jitter.min(wait + self.inner.cfg.reconnect_delay))
                    }
                    _ => backoff.next_delay(),
                };
                let limited = matches!(e, Error::Http { status: 429, .. });
                let until = limited.then(|| self.now_ms() + delay.as_millis() as u64);
                self.inner.state.write().status.rate_limited_until = until;
                tracing::info!(error = %e, delay_ms = delay.as_millis() as u64, "round failed; next attempt after the delay");
                let phase = if matches!(e, Error::Network(_)) { Phase::Offline } else { Phase::Backoff };
                self.set_phase(phase, Some(e), backoff.attempts());
                self.polled(Some(e), backoff.attempts());
                delay
            }
        }
    }

    /// The spec's `sync()`: a round now. When it succeeds, a running
    /// engine's status shows the recovery at once (idle, no last error),
    /// and the loop leaves any backoff or rate-limit wait it was in.
    pub async fn sync(&self) -> Result<()> {
        self.sync_once().await?;
        if self.inner.life.running.load(Ordering::SeqCst) {
            self.set_phase(Phase::Idle, None, 0);
            self.polled(None, 0);
            self.inner.life.resume.notify_one();
        }
        Ok(())
    }

    /// One round: make sure the session is known, send queued writes, pull.
    pub async fn sync_once(&self) -> Result<()> {
        self.round(true).await
    }

    /// A round, with or without sending what is queued. Every hint given
    /// before its pull starts is met by that pull.
    async fn round(&self, send: bool) -> Result<()> {
        self.check_open()?;
        let _sync = self.inner.sync.lock().await;
        let _settled = Settled(&self.inner.outbox.settling);
        self.load().await?;
        self.ensure_session().await?;
        self.check_server_boot().await?;
        let sent = if send { self.flush().await } else { Ok(()) };
        // a server that refuses writes for now (5xx) may still serve reads:
        // what others wrote is not held back behind our writes
        if sent.as_ref().is_err_and(|e| !matches!(e, Error::Http { status: 500.., .. })) {
            return sent;
        }
        self.inner.life.wants.fetch_and(!Wake::Pull.bit(), Ordering::SeqCst);
        let pulled = self.pull_to_head().await;
        if pulled.is_ok() {
            self.reached_head();
        }
        sent.and(pulled)
    }

    /// A round's pull reached the head of the log: the replica is as new as
    /// the server (`lastSyncedAt`), and has synced (`hasSynced`) — whether
    /// the loop or a `sync()` of a stopped engine ran it.
    fn reached_head(&self) {
        let first = {
            let mut st = self.inner.state.write();
            st.status.last_synced_at = Some(self.now_ms());
            let first = !st.status.has_synced;
            st.status.has_synced = true;
            first.then(|| st.status())
        };
        if let Some(status) = first {
            self.emit(Event::Status(status));
        }
    }

    /// Asks the loop for a round now, saying why.
    pub(crate) fn wake(&self, why: Wake) {
        self.inner.life.wants.fetch_or(why.bit(), Ordering::SeqCst);
        self.inner.life.wake.notify_one();
    }
}
