//! Noticing a restarted server (see `restart`): the boot-time check from
//! `/health` (every `BOOT_CHECK_EVERY`, `POLL_BOOT_CHECK_EVERY` while
//! polling, and when a stream reconnects or a
//! round fails) and the anchor check against the log. Owns `server_boot`,
//! `boot_check_due`, `last_boot_check` and the stream floor; a restart
//! noticed resets the replica (`reset`). Runs inside a round (`sync` held).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::events::ResyncReason;
use crate::restart::Boot;

use super::{Engine, BOOT_CHECK_EVERY, POLL_BOOT_CHECK_EVERY};

/// What this part owns: when the boot time is checked next, and which
/// stream connections' events may be applied as pages.
pub(super) struct Watch {
    /// Check the server's boot time in the next round (start, errors, reconnects).
    pub(super) boot_check_due: AtomicBool,
    pub(super) last_boot_check: Mutex<Option<tokio::time::Instant>>,
    /// Stream connections are numbered as they open (`Realtime::opened`).
    /// An event is applied as a page only from a connection opened before a
    /// round's first pull last found the log still holding the replica's
    /// last events (numbers up to `stream_checked`), and not before the last
    /// restart noticed (numbers from `stream_floor`): a restarted server's
    /// events can continue our cursor's numbering, and a dead server's
    /// connection may still deliver what it had sent. Other events are hints.
    pub(super) stream_checked: AtomicU64,
    pub(super) stream_floor: AtomicU64,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            boot_check_due: AtomicBool::new(true),
            last_boot_check: Mutex::new(None),
            stream_checked: AtomicU64::new(0),
            stream_floor: AtomicU64::new(0),
        }
    }
}

impl Engine {
    /// The real server keeps its change log in memory: a restart renumbers it
    /// from 1 with one insert per row, so a cursor at or below the new head is
    /// never told to resync and would silently miss what changed meanwhile.
    /// `/health` gives the uptime, hence the boot time; a new boot means the
    /// replica is rebuilt. Checked at start, after errors and stream
    /// reconnects, every 5 s while polling, and every 30 s with a stream.
    pub(super) async fn check_server_boot(&self) -> Result<()> {
        // without a live stream nothing else would notice a restart between
        // polls (a restart drops streams, which marks a check due), so a
        // polling engine asks more often; not every round, which would spend
        // close to half the request budget of a production server on it
        let every = if self.inner.rt.streaming() { BOOT_CHECK_EVERY } else { POLL_BOOT_CHECK_EVERY };
        let due = self.inner.watch.boot_check_due.swap(false, Ordering::SeqCst)
            || self.inner.watch.last_boot_check.lock().is_none_or(|t| t.elapsed() >= every);
        if !due {
            return Ok(());
        }
        let sent = self.now_ms();
        let uptime = match self.inner.api.uptime().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(()), // a server that does not say: nothing to learn
            Err(e) => {
                self.inner.watch.boot_check_due.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        *self.inner.watch.last_boot_check.lock() = Some(tokio::time::Instant::now());
        let seen = Boot::observed(sent, self.now_ms(), uptime);
        let known = self.inner.state.read().server_boot;
        tracing::debug!(uptime, "boot check");
        let boot = match known {
            Some(k) if seen.later_than(&k) => {
                tracing::info!(uptime, "the server restarted since the replica last followed it");
                self.reset_replica_inner(Some(ResyncReason::Server)).await?;
                seen
            }
            Some(k) => k.narrowed(&seen),
            None => seen,
        };
        if known == Some(boot) {
            return Ok(());
        }
        self.with_db(move |me, db| {
            db.write(|w| w.set_meta("server_boot", &format!("{},{}", boot.earliest, boot.latest)))?;
            me.inner.state.write().server_boot = Some(boot);
            Ok(())
        })
        .await
    }

    /// A dropped stream may mean a restarted server: check before the next pull.
    pub(crate) fn server_may_have_restarted(&self) {
        self.inner.watch.boot_check_due.store(true, Ordering::SeqCst);
    }

    /// The server restarted: what its open connections still deliver belongs
    /// to the old log (one opened since may be the new server's, and is
    /// replaced so its events count again).
    pub(super) fn forget_streams(&self) {
        self.inner.watch.stream_floor.store(self.inner.rt.opened.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
        self.restart_realtime(false);
    }

    /// Asks the log for the replica's anchor again: false when the server
    /// cannot say (no anchor near the cursor), or when the log was renumbered
    /// (the replica is then reset for a rebuild).
    pub(super) async fn log_continues(&self, token: Option<&str>) -> Result<bool> {
        let (cursor, anchor) = {
            let st = self.inner.state.read();
            (st.cursor, st.anchor.clone())
        };
        let Some(a) = anchor.and_then(|a| a.near(cursor)) else {
            return Ok(false);
        };
        let page = match self.inner.api.pull_until(token, a.read_from(), cursor, Some(&a)).await {
            Ok(p) => p,
            Err(Error::Resync { .. }) => return Ok(false), // the pull that follows handles it
            Err(e) => return Err(e),
        };
        if a.check(&page.changes, a.read_from(), page.cursor.last_seq, !page.has_more, cursor).is_some() {
            return Ok(true);
        }
        if a.read_from() == 0 && self.log_moved_on(token, cursor).await?.is_some() {
            return Ok(false); // the pull that follows handles it
        }
        self.reset_replica_inner(Some(ResyncReason::Server)).await?;
        Ok(false)
    }

    /// Whether the log no longer reaches `cursor` (its oldest seq, as a 410
    /// says): then a check read from 0 met the oldest events kept, not
    /// another log.
    pub(super) async fn log_moved_on(&self, token: Option<&str>, cursor: u64) -> Result<Option<u64>> {
        match self.inner.api.pull(token, cursor.max(1)).await {
            Err(Error::Resync { oldest_seq }) => Ok(Some(oldest_seq)),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Counts a restart noticed without a reset (a 410 for a cursor past the
    /// head resnapshots instead), so inserts in doubt from before it are not
    /// looked for in the renumbered log.
    pub(super) async fn count_restart(&self) -> Result<()> {
        self.forget_streams();
        self.with_db(|me, db| {
            let server_gen = me.inner.state.read().server_gen + 1;
            db.write(|w| w.set_meta("server_gen", &server_gen.to_string()))?;
            me.inner.state.write().server_gen = server_gen;
            Ok(())
        })
        .await
    }
}
