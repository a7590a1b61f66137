//! Queries over the replica (`query`, and what `watch` runs again): read
//! only, on a connection of their own on a blocking thread, so they never
//! wait for the engine's writes nor hold them up. Each reads the file as
//! memory shows it when it starts. Owns `reader` and `interrupt`.

use rusqlite::Connection;
use serde_json::Value;

use super::Engine;
use crate::error::Result;
use crate::sql::{self, Reader};

impl Engine {
    /// Runs one read-only statement over the replica (the entity views,
    /// pending writes shown) and returns its rows as a JSON array.
    pub async fn query(&self, sql: String, params: Value) -> Result<String> {
        self.load().await?;
        self.on_reader(move |conn| sql::run(conn, &sql, &params)).await
    }

    /// The entities `sql` reads (`None`: any change may change its rows).
    pub async fn entities_read(&self, sql: String) -> Result<Option<Vec<String>>> {
        self.load().await?;
        let schema = self.inner.state.read().schema.clone();
        self.on_reader(move |conn| sql::entities_read(conn, schema.as_ref(), &sql)).await
    }

    async fn on_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(move |me| me.on_reader_here(f)).await
    }

    fn on_reader_here<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let Some(path) = self.inner.cfg.db_path.clone() else {
            // a replica kept in memory has one connection: queries take turns
            // with writes, and close() interrupts the one running on it
            return self.with_db_here(|me, db| {
                *me.inner.interrupt.lock() = Some(db.conn().get_interrupt_handle());
                let out = f(db.conn());
                me.inner.interrupt.lock().take();
                out
            });
        };
        let mut reader = self.inner.reader.lock();
        self.check_open()?;
        if reader.is_none() {
            *reader = Some(Reader::open(&path, self.inner.interrupt.clone())?);
        }
        let r = reader.as_ref().expect("opened above");
        {
            // nothing is half-done while the database is held: the snapshot
            // the read transaction takes is what memory shows
            let _db = self.inner.db.lock();
            r.begin()?;
        }
        let out = f(r.conn());
        r.end();
        out
    }

    /// Stops the query running, if one is (`close`): it rejects as closed.
    pub(super) fn interrupt_queries(&self) {
        if let Some(h) = self.inner.interrupt.lock().as_ref() {
            h.interrupt();
        }
    }
}
