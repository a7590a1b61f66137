//! Session and identity: which token the engine uses, who the server says it
//! belongs to (`/api/auth/me`), and what a change of identity does — the
//! replica is cleared in the same transaction that records the new identity,
//! and the previous identity's writes are parked (kept, not sent) until it
//! returns. Owns `token`, and in `state` the session, identity, verified
//! token and queue key. Runs under `sync`; the flip takes `db`, then `state`
//! for writing, and bumps the epoch under it.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::events::Event;
use crate::protocol::Session;
use crate::queue::{Mutation, Queue};

use super::{fingerprint, in_doubt_ids, outbox, token_key, Engine};

impl Engine {
    /// The bearer token requests are sent with now.
    pub fn token(&self) -> Option<String> {
        self.current_token()
    }

    pub(super) fn current_token(&self) -> Option<String> {
        self.inner.token.read().clone()
    }

    /// The token the current session was verified with (see `State::verified_token`).
    pub(crate) fn session_token(&self) -> Option<String> {
        self.inner.state.read().verified_token.clone()
    }

    /// Sets the bearer token (sign-in, sign-out, refresh). Queued writes of
    /// one identity are never sent with another identity's token: until the
    /// new token's session is resolved nothing is sent.
    pub fn set_token(&self, token: Option<String>) {
        let token = token.filter(|t| !t.is_empty());
        let fp = fingerprint(token.as_deref());
        *self.inner.token.write() = token;
        let changed = {
            let mut st = self.inner.state.write();
            let verified = st.verified_fp.as_deref() == Some(fp.as_str());
            // writes made from now on belong to the new token until its session is known
            st.queue_key = if verified { st.identity.clone() } else { token_key(&fp) };
            !verified
        };
        if changed {
            self.kick();
        }
    }

    /// Re-reads the session from `/api/auth/me`; resets the replica when the
    /// user or tenant changed. Returns the session.
    pub async fn notify_session_changed(&self) -> Result<Option<Session>> {
        self.check_open()?;
        let _sync = self.inner.sync.lock().await;
        self.load().await?;
        self.inner.state.write().verified_fp = None;
        self.ensure_session().await?;
        if self.inner.life.running.load(Ordering::SeqCst) {
            self.kick();
        }
        Ok(self.session())
    }

    pub(super) async fn ensure_session(&self) -> Result<()> {
        let token = self.current_token();
        let fp = fingerprint(token.as_deref());
        if self.inner.state.read().verified_fp.as_deref() == Some(fp.as_str()) {
            return Ok(());
        }
        let session = self.inner.api.me(token.as_deref()).await?;
        if self.current_token().as_deref() != token.as_deref() {
            // the token changed while we asked; the next round asks again
            return Err(Error::Network("token changed while resolving the session".into()));
        }
        self.apply_session(session, token, fp).await
    }

    pub(super) async fn apply_session(&self, session: Session, token: Option<String>, fp: String) -> Result<()> {
        let identity = session.identity_key();
        let (flipped, new_token) = {
            let st = self.inner.state.read();
            let known = !st.identity.is_empty();
            (known && st.identity != identity, known && fingerprint(st.verified_token.as_deref()) != fp)
        };
        let session_for_event = session.clone();
        tracing::debug!(flipped, new_token, "session resolved");
        let entities = self
            .with_db(move |me, db| {
                let tkey = token_key(&fp);
                db.write(|w| {
                    if flipped {
                        w.clear_rows()?;
                        w.set_cursor(0)?;
                        w.set_meta("covered", "[]")?;
                        w.set_meta("anchor", "null")?;
                        w.set_meta("awaited", "{}")?;
                    }
                    w.set_meta("identity", &identity)?;
                    w.set_meta("token_fp", &fp)?;
                    if tkey != identity {
                        w.adopt_mutations(&tkey, &identity)?;
                    }
                    Ok(())
                })?;
                let stored = if !flipped && me.inner.state.read().quarantined { Some(db.load()?.rows) } else { None };
                let (mut mine, others): (Vec<Mutation>, Vec<Mutation>) =
                    db.mutations()?.into_iter().partition(|m| m.identity == identity);
                // writes parked while another identity's insert was acknowledged
                // may still name its temporary id
                let renamed: Vec<Mutation> = {
                    let st = me.inner.state.read();
                    mine.iter_mut().filter_map(|m| outbox::renamed(m, &st.aliases).then(|| m.clone())).collect()
                };
                if !renamed.is_empty() {
                    db.write(|w| renamed.iter().try_for_each(|m| w.save_mutation(m)))?;
                }
                let mut st = me.inner.state.write();
                let mut entities = st.view.replica().entities();
                if flipped {
                    // with the rows, under the state lock: work planned before
                    // the flip is refused from here on, even if the future that
                    // started this one was dropped mid-way (stop() aborts it)
                    me.inner.epoch.fetch_add(1, Ordering::SeqCst);
                    st.cursor = 0;
                    st.anchor = None;
                    st.awaited.clear();
                    st.covered.clear();
                }
                st.quarantined = false;
                st.identity = identity.clone();
                st.queue_key = identity.clone();
                st.verified_fp = Some(fp);
                st.verified_token = token;
                st.session = Some(session);
                st.parked_in_doubt = in_doubt_ids(&others);
                st.view.switch(flipped, stored, Queue::new(mine));
                for e in st.view.replica().entities() {
                    if !entities.contains(&e) {
                        entities.push(e);
                    }
                }
                Ok(entities)
            })
            .await?;
        if flipped || new_token {
            // the stream was opened with the previous token
            self.restart_realtime(flipped);
        }
        if flipped {
            self.emit(Event::Resync { reason: "identity" });
        }
        self.emit(Event::Session(Some(session_for_event)));
        self.emit(Event::Change { entities });
        Ok(())
    }
}
