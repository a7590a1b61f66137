//! Session and identity: which token the engine uses, who the server says it
//! belongs to (`/api/auth/me`), and what a change of identity does — the
//! replica is cleared in the same transaction that records the new identity,
//! and the previous identity's writes are parked (kept, not sent) until it
//! returns. Owns `token`, and in `state` the session, identity, verified
//! token and queue key. Runs under `sync`; the flip takes `db`, then `state`
//! for writing, and bumps the epoch under it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::events::{Event, ResyncReason};
use crate::protocol::Session;
use crate::queue::{Mutation, Queue};

use super::{outbox, Engine, Wake, REPLACED_BY_REPLAY, SESSION_RECHECK};

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
            // a round waiting for the old token's rate limit gives way
            self.inner.life.interrupt.notify_waiters();
            self.wake(Wake::Session);
        }
    }

    /// Re-reads the session from `/api/auth/me`; resets the replica when the
    /// user or tenant changed. Returns the session.
    pub async fn notify_session_changed(&self) -> Result<Option<Session>> {
        self.check_open()?;
        self.inner.life.interrupt.notify_waiters();
        let _sync = self.inner.sync.lock().await;
        self.load().await?;
        self.inner.state.write().verified_fp = None;
        self.ensure_session().await?;
        if self.inner.life.running.load(Ordering::SeqCst) {
            self.wake(Wake::Session);
        }
        Ok(self.session())
    }

    /// Makes sure the session of the current token is known, asking
    /// `/api/auth/me` when the token is new, or when the session was last
    /// confirmed more than `SESSION_RECHECK` ago. A token the server answers
    /// as anonymous is refused (`Error::Auth`): its writes are held, never
    /// sent as anonymous.
    pub(super) async fn ensure_session(&self) -> Result<()> {
        let token = self.current_token();
        let fp = fingerprint(token.as_deref());
        let now = self.now_ms();
        {
            let st = self.inner.state.read();
            let verified = st.verified_fp.as_deref() == Some(fp.as_str());
            let fresh = now.saturating_sub(st.session_checked_at) < SESSION_RECHECK.as_millis() as u64;
            if verified && (token.is_none() || fresh) {
                return Ok(());
            }
        }
        let session = self.inner.api.me(token.as_deref()).await?;
        if self.current_token().as_deref() != token.as_deref() {
            // the token changed while we asked; the next round asks again
            return Err(Error::Network("token changed while resolving the session".into()));
        }
        if token.is_some() && session.user_id.is_none() && !session.is_admin {
            return Err(self.token_not_recognised(&fp));
        }
        let confirmed = {
            let mut st = self.inner.state.write();
            let same = st.verified_fp.as_deref() == Some(fp.as_str()) && st.identity == session.identity_key();
            if same {
                st.session_checked_at = now;
                let changed = st.session.as_ref() != Some(&session);
                st.session = Some(session.clone());
                Some(changed)
            } else {
                None
            }
        };
        match confirmed {
            Some(changed) => {
                if changed {
                    self.emit(Event::Session(Some(session)));
                }
                Ok(())
            }
            None => self.apply_session(session, token, fp).await,
        }
    }

    /// The server answered the token as anonymous. If it was this engine's
    /// verified session, it was revoked or expired: the session is dropped,
    /// and the user's writes (queued before and after) wait for a token the
    /// server recognises as the same user. A token never recognised keeps
    /// its writes under its own key, as any token not yet verified does.
    fn token_not_recognised(&self, fp: &str) -> Error {
        let revoked = {
            let mut st = self.inner.state.write();
            let was = st.verified_fp.as_deref() == Some(fp);
            if was {
                st.verified_fp = None;
                st.session = None;
            }
            was
        };
        tracing::warn!(revoked, "the server answered the token as anonymous");
        if revoked {
            self.emit(Event::Session(None));
        }
        Error::Auth(
            "the server does not recognise the token (unknown, expired or revoked: it answers it as anonymous); \
             writes are held until the engine is given a token it recognises"
                .into(),
        )
    }

    pub(super) async fn apply_session(&self, session: Session, token: Option<String>, fp: String) -> Result<()> {
        let identity = session.identity_key();
        let change = {
            let st = self.inner.state.read();
            transition(&st.identity, &fingerprint(st.verified_token.as_deref()), &identity, &fp)
        };
        let flipped = change == Transition::Flip;
        let session_for_event = session.clone();
        tracing::debug!(?change, "session resolved");
        let entities = self
            .with_db(move |me, db| {
                let tkey = token_key(&fp);
                db.write(|w| {
                    if flipped {
                        w.clear_rows()?;
                        w.set_cursor(0)?;
                        w.set_meta("covered", "[]")?;
                        w.set_meta(REPLACED_BY_REPLAY, "[]")?;
                        w.set_meta("anchor", "null")?;
                        w.clear_awaited()?;
                    }
                    w.set_meta("identity", &identity)?;
                    w.set_meta("token_fp", &fp)?;
                    // rows held back for this check show again (or are gone)
                    w.set_meta(crate::sql::ROWS_HIDDEN, "0")?;
                    if tkey != identity {
                        w.adopt_mutations(&tkey, &identity)?;
                    }
                    Ok(())
                })?;
                let stored =
                    if !flipped && me.inner.state.read().quarantined { Some(db.load(None)?.rows) } else { None };
                let (mut mine, parked_in_doubt) = split_queue(db.mutations()?, &identity);
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
                    st.status.has_synced = false;
                    st.cursor = 0;
                    st.anchor = None;
                    st.awaited.clear();
                    st.covered.clear();
                    st.replaced_by_replay.clear();
                }
                st.quarantined = false;
                st.identity = identity.clone();
                st.queue_key = identity.clone();
                st.verified_fp = Some(fp);
                st.verified_token = token;
                st.session_checked_at = me.now_ms();
                st.session = Some(session);
                st.parked_in_doubt = parked_in_doubt;
                st.view.switch(flipped, stored, Queue::new(mine));
                for e in st.view.replica().entities() {
                    if !entities.contains(&e) {
                        entities.push(e);
                    }
                }
                Ok(entities)
            })
            .await?;
        if change != Transition::Same {
            // the stream was opened with the previous token
            self.restart_realtime(flipped);
        }
        if flipped {
            self.emit(Event::Resync { reason: ResyncReason::Identity });
        }
        if change == Transition::Flip {
            let st = self.inner.state.read();
            self.inner.waiters.parked(|id| st.view.queue().get(id).is_some());
        }
        self.emit(Event::Session(Some(session_for_event)));
        self.emit(Event::Change { entities });
        Ok(())
    }
}

/// What a resolved session changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transition {
    /// The first session this replica knows, or the same identity by the same token.
    Same,
    /// The same identity by another token: the stream reopens with it.
    NewToken,
    /// Another user or tenant (signing in or out included): the replica is
    /// rebuilt for it and the previous identity's writes are parked.
    Flip,
}

/// The change from the identity the replica holds (`known`, empty when it
/// holds none yet), last verified with the token fingerprinted `known_fp`,
/// to `identity` resolved for the token fingerprinted `fp`.
pub(super) fn transition(known: &str, known_fp: &str, identity: &str, fp: &str) -> Transition {
    if known.is_empty() {
        Transition::Same
    } else if known != identity {
        Transition::Flip
    } else if known_fp != fp {
        Transition::NewToken
    } else {
        Transition::Same
    }
}

/// A stored queue split for the identity keyed `key`: its own writes, and
/// the temporary ids of other identities' inserts in doubt (parked: their
/// events, if the log shows them, are theirs and not new rows of ours).
pub(super) fn split_queue(all: Vec<Mutation>, key: &str) -> (Vec<Mutation>, HashSet<String>) {
    let (mine, others): (Vec<Mutation>, Vec<Mutation>) = all.into_iter().partition(|m| m.identity == key);
    let parked = others.iter().filter(|m| crate::queue::is_in_doubt(m)).map(|m| m.row_id.clone()).collect();
    (mine, parked)
}

/// A stable, non-reversible name for a token, so we can tell tokens apart
/// without ever storing one.
pub(crate) fn fingerprint(token: Option<&str>) -> String {
    match token {
        None => "anonymous".into(),
        Some(t) => {
            let digest = Sha256::digest(t.as_bytes());
            digest[..12].iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

const ANONYMOUS: &str = "user:|tenant:";

/// The queue key of writes made with a token whose session is not known yet.
pub(super) fn token_key(fp: &str) -> String {
    if fp == "anonymous" {
        ANONYMOUS.into()
    } else {
        format!("token:{fp}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::Kind;
    use crate::queue::{sample, Sent};

    const ALICE: &str = "user:alice|tenant:";
    const BOB: &str = "user:bob|tenant:";

    #[test]
    fn a_resolved_session_flips_only_when_the_user_or_tenant_changes() {
        let (a, b) = (fingerprint(Some("token-a")), fingerprint(Some("token-b")));
        assert_eq!(transition("", "anonymous", ALICE, &a), Transition::Same, "the first session");
        assert_eq!(transition(ALICE, &a, ALICE, &a), Transition::Same);
        assert_eq!(transition(ALICE, &a, ALICE, &b), Transition::NewToken, "a refreshed token");
        assert_eq!(transition(ALICE, &a, BOB, &b), Transition::Flip);
        assert_eq!(transition(ALICE, &a, BOB, &a), Transition::Flip, "the same token, now another user's");
        assert_eq!(transition(ALICE, &a, ANONYMOUS, "anonymous"), Transition::Flip, "signing out");
        assert_eq!(transition(ANONYMOUS, "anonymous", "user:alice|tenant:t1", &a), Transition::Flip, "signing in");
        assert_eq!(transition(ALICE, &a, "user:alice|tenant:t2", &a), Transition::Flip, "another tenant");
    }

    #[test]
    fn a_queue_splits_into_ours_and_the_parked_inserts_in_doubt_of_others() {
        let with = |order, identity: &str, kind, row: &str, sent: bool| {
            let mut m = sample(order, kind, row, (kind != Kind::Delete).then(|| json!({ "t": order })));
            m.identity = identity.into();
            m.sent = sent.then(Sent::default);
            m
        };
        let all = vec![
            with(1, ALICE, Kind::Insert, "_pending_1_a", true),
            with(2, BOB, Kind::Insert, "_pending_2_b", true),
            with(3, BOB, Kind::Insert, "_pending_3_b", false),
            with(4, BOB, Kind::Update, "s9", true),
            with(5, &token_key(&fingerprint(Some("t"))), Kind::Insert, "_pending_5_c", true),
        ];
        let (mine, parked) = split_queue(all, ALICE);
        assert_eq!(mine.iter().map(|m| m.order).collect::<Vec<_>>(), [1]);
        // only inserts sent without an answer: the others cannot show up in the log as rows of theirs
        assert_eq!(parked, HashSet::from(["_pending_2_b".to_string(), "_pending_5_c".to_string()]));
    }

    #[test]
    fn a_token_is_named_by_a_fingerprint_that_never_holds_it() {
        let fp = fingerprint(Some("secret-token"));
        assert_eq!(fp.len(), 24);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()) && !fp.contains("secret"));
        assert_eq!(fp, fingerprint(Some("secret-token")));
        assert_ne!(fp, fingerprint(Some("secret-tokem")));
        assert_eq!(token_key(&fingerprint(None)), ANONYMOUS);
        assert_eq!(token_key(&fp), format!("token:{fp}"));
    }
}
