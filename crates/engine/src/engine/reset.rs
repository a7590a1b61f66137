//! Resetting the replica: rows, cursor, anchor and coverage dropped in one
//! transaction, then a new epoch under the `state` lock; queued writes stay.
//! Used after a 410, a restart noticed (which also counts a server
//! generation and forgets the boot time and the streams), or on request.

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::events::{Event, ResyncReason};

use super::{Engine, REPLACED_BY_REPLAY};

impl Engine {
    /// Drops every row and tombstone (memory and disk), cursor 0. Queued
    /// writes stay. Does not pull.
    pub async fn reset_replica(&self) -> Result<()> {
        self.check_open()?;
        self.load().await?;
        self.reset_replica_inner(None).await
    }

    /// `reason`: why, told to listeners as a `resync` event (`None`: the
    /// user asked for it).
    pub(super) async fn reset_replica_inner(&self, reason: Option<ResyncReason>) -> Result<()> {
        tracing::debug!(?reason, "reset");
        let restarted = reason == Some(ResyncReason::Server);
        if restarted {
            self.inner.watch.boot_check_due.store(true, Ordering::SeqCst);
            self.forget_streams();
        }
        let entities = self
            .with_db(move |me, db| {
                let server_gen = me.inner.state.read().server_gen + u64::from(restarted);
                db.write(|w| {
                    w.clear_rows()?;
                    w.set_cursor(0)?;
                    w.set_meta("covered", "[]")?;
                    w.set_meta(REPLACED_BY_REPLAY, "[]")?;
                    w.set_meta("anchor", "null")?;
                    w.clear_awaited()?;
                    if restarted {
                        // the boot check learns the new boot afresh
                        w.set_meta("server_boot", "")?;
                    }
                    w.set_meta("server_gen", &server_gen.to_string())
                })?;
                let mut st = me.inner.state.write();
                me.inner.epoch.fetch_add(1, Ordering::SeqCst); // see apply_session
                st.status.has_synced = false;
                let entities = st.view.replica().entities();
                st.view.clear_rows();
                st.cursor = 0;
                st.anchor = None;
                st.awaited.clear();
                st.server_gen = server_gen;
                if restarted {
                    st.server_boot = None;
                }
                st.covered.clear();
                st.replaced_by_replay.clear();
                Ok(entities)
            })
            .await?;
        if let Some(reason) = reason {
            self.emit(Event::Resync { reason });
        }
        self.emit(Event::Change { entities });
        Ok(())
    }
}
