//! Reads: what the store shows now. Every read takes the `state` read lock
//! briefly and nothing else — never the database or the network — so the
//! JS thread is never blocked by disk or server. Also the rows the first
//! load hands a reader as it reads them (`preload_lists`), and the versions
//! they stand for (`take_preloaded`, the one read that takes the lock to
//! write, once).

use std::time::Duration;

use crate::db::ListParts;
use crate::events::SyncStatus;
use crate::protocol::{Row, Session};
use crate::queue::Mutation;
use crate::replica::RowText;

use super::Engine;

impl Engine {
    /// Hands the rows of `parts`' entities to it as the first `start()` (or
    /// the first read of the file) reads them; see [`Engine::take_preloaded`].
    pub fn preload_lists(&self, parts: ListParts) {
        *self.inner.list_parts.lock() = Some(parts);
    }

    /// The entities whose rows went to [`ListParts`], each with the version
    /// at which its visible list was those parts' rows, in order: a reader
    /// holding them holds that version's list (changes since then come
    /// from [`Engine::changes_json`]). `None` until the first load is over;
    /// then once (an entity whose rows showed differently from those loaded
    /// is left out). Every part was handed out before this answers.
    pub fn take_preloaded(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        // asked at every list until then: readers are not held up meanwhile
        if !self.inner.state.read().loaded {
            return None;
        }
        Some(std::mem::take(&mut self.inner.state.write().preloaded))
    }

    /// No rows are handed to [`ListParts`] from now on.
    pub fn end_preload(&self) {
        self.inner.list_parts.lock().take();
    }

    /// The visible rows of `entity` as one JSON array, in id order.
    pub fn list_json(&self, entity: &str) -> RowText {
        self.inner.state.read().view.replica().list_json(entity)
    }

    /// What changed in `entity` since `version` (see [`Replica::changes_since`]),
    /// as JSON `{"version", "rows": [changed rows], "gone": [ids]}`; `None` when
    /// only the whole list can tell.
    pub fn changes_json(&self, entity: &str, version: u64) -> Option<String> {
        let changes = self.inner.state.read().view.replica().changes_since(entity, version)?;
        let (now, mut rows, mut gone) = (changes.version, String::from("["), Vec::new());
        for (id, row) in changes.rows {
            match row {
                Some(r) => {
                    if rows.len() > 1 {
                        rows.push(',');
                    }
                    rows.push_str(r.as_str());
                }
                None => gone.push(id),
            }
        }
        rows.push(']');
        Some(format!(r#"{{"version":{now},"rows":{rows},"gone":{}}}"#, serde_json::to_string(&gone).ok()?))
    }

    /// The visible rows of `entity`, in id order, parsed.
    pub fn list(&self, entity: &str) -> Vec<Row> {
        let rows = self.inner.state.read().view.replica().list(entity);
        rows.iter().map(RowText::parse).collect()
    }

    /// Time this engine has spent waiting for the server's HTTP answers
    /// (diagnostics: compare with wall time to see who is slow).
    pub fn server_wait(&self) -> Duration {
        self.inner.api.traffic().waited()
    }

    /// The engine's counters and its queue as they stand.
    pub fn diagnostics(&self) -> crate::diagnostics::Diagnostics {
        let mut d = crate::diagnostics::Diagnostics::new(&self.inner.counters, self.inner.api.traffic());
        let st = self.inner.state.read();
        (d.pending, d.failed) = st.view.counts();
        d.oldest_pending_at = st.view.queue().pending().map(|m| m.created_at).min();
        d.cursor = st.cursor;
        d
    }

    /// How many rows of `entity` are visible.
    pub fn count(&self, entity: &str) -> usize {
        self.inner.state.read().view.replica().count(entity)
    }

    /// A visible row as JSON text. A temporary id the server has since named still finds its row.
    pub fn get_json(&self, entity: &str, id: &str) -> Option<RowText> {
        let st = self.inner.state.read();
        let id = st.aliases.get(id).map_or(id, String::as_str);
        st.view.replica().get(entity, id)
    }

    /// A visible row, parsed (see [`Engine::get_json`]).
    pub fn get(&self, entity: &str, id: &str) -> Option<Row> {
        self.get_json(entity, id).map(|r| r.parse())
    }

    /// Changes whenever the visible rows of `entity` change.
    pub fn entity_version(&self, entity: &str) -> u64 {
        self.inner.state.read().view.replica().entity_version(entity)
    }

    pub fn entities(&self) -> Vec<String> {
        self.inner.state.read().view.replica().entities()
    }

    pub fn cursor(&self) -> u64 {
        self.inner.state.read().cursor
    }

    pub fn status(&self) -> SyncStatus {
        self.inner.state.read().status()
    }

    pub fn session(&self) -> Option<Session> {
        self.inner.state.read().session.clone()
    }

    pub fn mutations(&self) -> Vec<Mutation> {
        self.inner.state.read().view.queue().all().cloned().collect()
    }
}
