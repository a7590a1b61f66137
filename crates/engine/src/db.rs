//! SQLite persistence: the one durable truth. Server rows (with tombstones),
//! the cursor, queued mutations, the visible state of the rows those
//! mutations touch (`overlay`) and key-value storage live in one file, and
//! every change the engine acknowledges is one committed transaction. The
//! entity views over `rows` and `overlay` are `sql`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::checkpoint::Checkpointer;
use crate::error::{Error, Result};
use crate::protocol::Kind;
use crate::queue::{Mutation, MutationError, Status};
use crate::replica::{BaseRow, Effect, Loaded, OverlayChanges, RowText, TextAt, Texts};

/// Marks a file as ours (`PRAGMA application_id`, "PYSN").
const APPLICATION_ID: i32 = 0x5059_534E;
const SCHEMA_VERSION: i32 = 5;
/// `meta` keys of the inserts awaited in the log: this, then the nonce.
const AWAITED: &str = "awaited:";
/// How long a write waits for another connection's to end.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

const PUT_ROW: &str = "INSERT OR REPLACE INTO rows (entity, row_id, seq, data) VALUES (?1, ?2, ?3, ?4)";

const SCHEMA: &str = "
CREATE TABLE rows (
  entity TEXT NOT NULL,
  row_id TEXT NOT NULL,
  seq    INTEGER NOT NULL,
  data   TEXT,              -- NULL: tombstone
  PRIMARY KEY (entity, row_id)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE mutations (
  ord        INTEGER PRIMARY KEY AUTOINCREMENT,
  id         TEXT NOT NULL UNIQUE,
  identity   TEXT NOT NULL,
  entity     TEXT NOT NULL,
  row_id     TEXT NOT NULL,
  kind       TEXT NOT NULL,
  data       TEXT,
  status     TEXT NOT NULL,
  error      TEXT,
  attempts   INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  sent       TEXT             -- JSON {after}: an insert that may have reached the server
);
CREATE TABLE overlay (
  entity TEXT NOT NULL,
  row_id TEXT NOT NULL,
  data   TEXT,              -- NULL: deleted by a pending write
  PRIMARY KEY (entity, row_id)
) WITHOUT ROWID;
";

/// Upgrades from each older schema version, in order.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, "ALTER TABLE mutations ADD COLUMN sent TEXT;"),
    // a key-value table nothing ever read
    (2, "DROP TABLE IF EXISTS kv;"),
    // the rows pending writes show differently, for the entity views; filled when the engine loads
    (
        3,
        "CREATE TABLE IF NOT EXISTS overlay (entity TEXT NOT NULL, row_id TEXT NOT NULL, data TEXT, PRIMARY KEY (entity, row_id)) WITHOUT ROWID;",
    ),
    // inserts awaited in the log: one key each, not one JSON object written
    // whole on every acknowledgement (it grew with every insert in flight)
    (
        4,
        "INSERT OR REPLACE INTO meta (key, value)
           SELECT 'awaited:' || j.key, j.value
           FROM meta, json_each(CASE WHEN json_valid(meta.value) THEN meta.value ELSE '{}' END) AS j
           WHERE meta.key = 'awaited' AND j.key IS NOT NULL AND j.value IS NOT NULL;
         DELETE FROM meta WHERE key = 'awaited';",
    ),
];

pub struct Db {
    conn: Connection,
    /// A file's checkpoints, off the writer's commits; declared after
    /// `conn`, which must close first.
    checkpoints: Option<Checkpointer>,
    /// Inside [`Db::batch`]: a write that finds no transaction open means
    /// SQLite rolled the batch back (a full disk), and is refused.
    in_batch: bool,
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(c) = &mut self.checkpoints {
            c.uninstall(&self.conn);
        }
    }
}

/// A row as `load` reads it: id, seq, and where its text went (`None`: a tombstone).
type StoredRow = (String, u64, Option<TextAt>);

/// Where `load` hands the rows of the entities asked for, in JSON lists of
/// about [`PART_BYTES`], while it reads the rest: a reader that will parse
/// them (JavaScript's store, whose first list of 100,000 rows is a 60 ms
/// `JSON.parse`) does so beside the load, on the core the load leaves idle.
pub struct ListParts {
    /// `None`: every entity.
    pub entities: Option<BTreeSet<String>>,
    pub sink: Box<PartSink>,
}

/// Takes an entity's name and a JSON list of some of its rows.
pub type PartSink = dyn Fn(&str, RowText) + Send + Sync;

impl ListParts {
    pub fn wants(&self, entity: &str) -> bool {
        self.entities.as_ref().is_none_or(|e| e.contains(entity))
    }
}

/// How much of a list [`ListParts`] gets at a time: a few milliseconds of
/// parsing, so the reader starts soon after the load does. The entity's
/// rows are read into buffers of this size, so a part is not a copy.
pub const PART_BYTES: usize = 1 << 20;

/// Everything `start()` needs from disk.
pub struct Stored {
    pub rows: Loaded,
    pub mutations: Vec<Mutation>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<Db> {
        let conn = match path {
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Storage(format!("cannot create directory {}: {e}", dir.display())))?;
                }
                create_private(p)?;
                Connection::open(p)?
            }
            None => Connection::open_in_memory()?,
        };
        let mut db = Db { conn, checkpoints: None, in_batch: false };
        db.prepare()?;
        if let Some(p) = path {
            db.checkpoints = Some(Checkpointer::install(&db.conn, p)?);
        }
        Ok(db)
    }

    /// Opens an existing replica file to read, never to change it: no
    /// creation, no migration, no checkpoint (`pylon-sync inspect`). A
    /// file that is not one of ours, or of a newer schema, is refused.
    pub fn open_read_only(path: &Path) -> Result<Db> {
        use rusqlite::OpenFlags;
        if !path.is_file() {
            return Err(Error::NotFound(format!("no replica file at {}", path.display())));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if app_id != APPLICATION_ID {
            return Err(Error::Corrupt(format!("{} is not a pylon-sync replica", path.display())));
        }
        if version != SCHEMA_VERSION {
            // an older file is upgraded by the engine when it opens it, never by a reader
            return Err(Error::Corrupt(format!(
                "schema version {version}, this version reads {SCHEMA_VERSION}: open it with the engine once to upgrade it"
            )));
        }
        Ok(Db { conn, checkpoints: None, in_batch: false })
    }

    /// Each entity's stored rows and tombstones, by name.
    pub fn row_counts(&self) -> Result<Vec<(String, u64, u64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT entity, sum(data IS NOT NULL), sum(data IS NULL) FROM rows GROUP BY entity ORDER BY entity",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn prepare(&mut self) -> Result<()> {
        let c = &self.conn;
        c.busy_timeout(BUSY_WAIT)?;
        // Reading the header is the first thing that fails on a foreign or damaged file.
        let app_id: i32 = c.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let tables: i64 = c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let version: i32 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        // NORMAL in WAL mode: a commit survives a crash of the process (kill -9);
        // only an OS crash or power loss can lose the last commits.
        c.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")?;
        if app_id == 0 && tables == 0 {
            let tx = self.conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(&format!(
                "PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={SCHEMA_VERSION};"
            ))?;
            tx.commit()?;
            return Ok(());
        }
        if app_id != APPLICATION_ID {
            return Err(Error::Corrupt(
                "the file is an SQLite database of another program; choose another dbPath".into(),
            ));
        }
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(Error::Corrupt(format!(
                "schema version {version} is not supported by this version (expects {SCHEMA_VERSION} or older)"
            )));
        }
        if version < SCHEMA_VERSION {
            let tx = self.conn.transaction()?;
            for (from, sql) in MIGRATIONS.iter().filter(|(from, _)| *from >= version) {
                tx.execute_batch(sql)?;
                tx.execute_batch(&format!("PRAGMA user_version={};", from + 1))?;
            }
            tx.commit()?;
        }
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Our inserts acknowledged before their event was taken, by nonce →
    /// (entity, the cursor then).
    pub fn awaited(&self) -> Result<BTreeMap<String, (String, u64)>> {
        let mut stmt = self.conn.prepare("SELECT key, value FROM meta WHERE key GLOB ?1")?;
        let rows = stmt.query_map([format!("{AWAITED}*")], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (key, value) = row?;
            let nonce = key[AWAITED.len()..].to_string();
            // one that cannot be read is not awaited: its event, if it comes, is applied as any other
            match serde_json::from_str(&value) {
                Ok(entry) => {
                    out.insert(nonce, entry);
                }
                Err(e) => tracing::warn!(error = %e, "an awaited insert's entry cannot be read; left out"),
            }
        }
        Ok(out)
    }

    /// Temporary ids of acknowledged inserts and the server ids they became.
    /// Those more than a week older than `now_ms` are forgotten on the way.
    pub fn aliases(&self, now_ms: u64) -> Result<Vec<(String, String)>> {
        let cutoff = now_ms.saturating_sub(7 * 24 * 3600 * 1000);
        // temporary ids start with their creation time in ms (13 digits), so they sort by age
        self.conn.execute(
            "DELETE FROM meta WHERE key >= 'alias:' AND key < ?1",
            [format!("alias:{}{cutoff:013}", crate::protocol::TEMP_PREFIX)],
        )?;
        let mut stmt = self.conn.prepare("SELECT key, value FROM meta WHERE key >= 'alias:' AND key < 'alias;'")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        rows.map(|r| {
            let (k, v) = r?;
            Ok((k["alias:".len()..].to_string(), v))
        })
        .collect()
    }

    pub fn cursor(&self) -> Result<u64> {
        Ok(self.meta("cursor")?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Every stored row and mutation; the rows of the entities `parts`
    /// asks for also go to it as they are read.
    pub fn load(&self, parts: Option<&ListParts>) -> Result<Stored> {
        // in key order (BINARY collation sorts as Rust strings do): each
        // entity's map is built from sorted input in one pass, and its
        // texts are read into its list in order
        let mut stmt = self.conn.prepare("SELECT entity, row_id, seq, data FROM rows ORDER BY entity, row_id")?;
        let mut query = stmt.query([])?;
        let mut texts = Texts::default();
        let mut runs: Vec<(String, Vec<StoredRow>)> = Vec::new();
        // the list being read is laid out in parts for `parts`, and each
        // part goes to it as it closes
        let mut wanted: Option<&ListParts> = None;
        let hand_out = |texts: &mut Texts, to: Option<&ListParts>, entity: &str| {
            for part in texts.closed() {
                if let Some(to) = to {
                    (to.sink)(entity, part);
                }
            }
        };
        while let Some(r) = query.next()? {
            let entity = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
            if runs.last().is_none_or(|(e, _)| e != entity) {
                texts.end_list();
                if let Some((last, _)) = runs.last() {
                    hand_out(&mut texts, wanted, last);
                }
                runs.push((entity.to_string(), Vec::new()));
                wanted = parts.filter(|p| p.wants(entity));
                texts.begin_list(wanted.map(|_| PART_BYTES));
            }
            let data = r.get_ref(3)?.as_str_or_null().map_err(rusqlite::Error::from)?;
            let row = (r.get(1)?, r.get::<_, i64>(2)? as u64, data.map(|d| texts.push(d)));
            let run = runs.last_mut().expect("a run is open");
            run.1.push(row);
            if wanted.is_some() {
                hand_out(&mut texts, wanted, &run.0);
            }
        }
        texts.end_list();
        if let Some((last, _)) = runs.last() {
            hand_out(&mut texts, wanted, last);
        }
        let lists = texts.finish();
        let mut loaded = Loaded::default();
        for (i, (entity, run)) in runs.into_iter().enumerate() {
            let rows = run.into_iter().map(|(id, seq, at)| (id, BaseRow { seq, data: at.map(|at| lists.text(at)) }));
            loaded.rows.insert(entity.clone(), rows.collect());
            if let Some(list) = lists.list(i) {
                loaded.lists.insert(entity, list);
            }
        }
        Ok(Stored { rows: loaded, mutations: self.mutations()? })
    }

    /// Every stored mutation, of every identity, in queue order.
    pub fn mutations(&self) -> Result<Vec<Mutation>> {
        let mut stmt = self.conn.prepare(
            "SELECT ord, id, identity, entity, row_id, kind, data, status, error, attempts, created_at, sent
             FROM mutations ORDER BY ord",
        )?;
        let out = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, i64>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<String>>(11)?,
                ))
            })?
            .map(|r| {
                let (order, id, identity, entity, row_id, kind, data, status, error, attempts, created_at, sent) = r?;
                Ok(Mutation {
                    id,
                    order,
                    identity,
                    entity,
                    row_id,
                    kind: Kind::parse(&kind)
                        .ok_or_else(|| Error::Corrupt(format!("unknown mutation kind {kind:?}")))?,
                    data: data.map(|d| serde_json::from_str(&d)).transpose()?,
                    status: if status == "failed" { Status::Failed } else { Status::Pending },
                    error: error.map(|e| parse_error(&e)),
                    attempts: attempts as u32,
                    created_at: created_at as u64,
                    sent: sent.map(|s| serde_json::from_str(&s)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(out)
    }

    /// Whether a write transaction can begin now, without waiting for
    /// another connection's to end.
    pub fn free_to_write(&self) -> bool {
        if self.conn.busy_timeout(std::time::Duration::ZERO).is_err() {
            return false;
        }
        let free = self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;").is_ok();
        let _ = self.conn.busy_timeout(BUSY_WAIT);
        free
    }

    /// Runs `f` in one transaction; nothing of it is kept unless it returns
    /// Ok. Inside [`Db::batch`] it is a savepoint of the batch's transaction.
    pub fn write<T>(&mut self, f: impl FnOnce(&Writer<'_>) -> Result<T>) -> Result<T> {
        if self.in_batch && self.conn.is_autocommit() {
            return Err(Error::Storage("SQLite rolled the transaction back (disk full or I/O error)".into()));
        }
        if self.conn.is_autocommit() {
            let tx = self.conn.transaction()?;
            let out = f(&Writer { tx: &tx })?;
            tx.commit()?;
            Ok(out)
        } else {
            let sp = self.conn.savepoint()?;
            let out = f(&Writer { tx: &sp })?;
            sp.commit()?;
            Ok(out)
        }
    }

    /// Runs `f` as one transaction: what its writes change becomes visible
    /// to readers of the file at once, with whatever `f` returns, when
    /// `finish` has written its last part and the whole commits. The
    /// transaction commits whatever `f` returns (its writes that went
    /// through are kept, as they would be on their own); if committing
    /// fails nothing of it is kept, and the error is returned.
    pub fn batch<T>(
        &mut self,
        f: impl FnOnce(&mut Db) -> Result<T>,
        finish: impl FnOnce(&mut Db) -> Result<()>,
    ) -> std::result::Result<Result<T>, Error> {
        if !self.conn.is_autocommit() {
            // left open by work that panicked: nothing of it was committed
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.conn.execute_batch("BEGIN")?;
        self.in_batch = true;
        let out = f(self);
        let committed = finish(self).and_then(|()| Ok(self.conn.execute_batch("COMMIT")?));
        self.in_batch = false;
        if let Err(e) = committed {
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(e);
        }
        Ok(out)
    }

    /// Lets SQLite's planner learn the rows' shape where it changed enough
    /// to matter (`PRAGMA optimize`: an `ANALYZE` of the tables that need
    /// one). Without it an expression index of the entity views is passed
    /// over for a scan where it would serve (`sql`). Whole, not sampled: a
    /// sample of a table that holds mostly one entity misleads the planner,
    /// and the whole costs about 40 ms per 100,000 rows.
    pub fn optimize(&self) -> Result<()> {
        self.conn.execute_batch("PRAGMA optimize = 0x10002;")?;
        Ok(())
    }

    /// The planner's statistics of the rows, made again now: new indexes
    /// have none, and `optimize` looks only at how much a table grew.
    pub fn analyze_rows(&self) -> Result<()> {
        self.conn.execute_batch("ANALYZE rows;")?;
        Ok(())
    }

    /// The connection, for `sql`'s views and queries.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// Write operations, only available inside [`Db::write`].
pub struct Writer<'a> {
    tx: &'a Connection,
}

impl Writer<'_> {
    pub fn effects(&self, effects: &[Effect]) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(PUT_ROW)?;
        for e in effects {
            match e {
                Effect::Put { entity, id, seq, data } => {
                    stmt.execute(params![entity, id, *seq as i64, data.as_str()])?
                }
                Effect::Tombstone { entity, id, seq } => {
                    stmt.execute(params![entity, id, *seq as i64, Option::<String>::None])?
                }
            };
        }
        Ok(())
    }

    /// An entity's rows as a snapshot gives them, whole, without an
    /// `Effect` made for each (an install stores tens of thousands).
    pub fn put_rows(&self, entity: &str, rows: &BTreeMap<String, BaseRow>) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(PUT_ROW)?;
        for (id, row) in rows {
            stmt.execute(params![entity, id, row.seq as i64, row.data.as_ref().map(RowText::as_str)])?;
        }
        Ok(())
    }

    pub fn delete_row(&self, entity: &str, id: &str) -> Result<()> {
        self.tx.prepare_cached("DELETE FROM rows WHERE entity = ?1 AND row_id = ?2")?.execute([entity, id])?;
        Ok(())
    }

    pub fn clear_entity(&self, entity: &str) -> Result<()> {
        self.tx.prepare_cached("DELETE FROM rows WHERE entity = ?1")?.execute([entity])?;
        Ok(())
    }

    pub fn clear_rows(&self) -> Result<()> {
        self.tx.execute("DELETE FROM rows", [])?;
        Ok(())
    }

    /// Brings the stored overlay in step with the view's (see `OverlayChanges`).
    pub fn overlay(&self, changes: &OverlayChanges) -> Result<()> {
        if changes.all {
            self.tx.execute("DELETE FROM overlay", [])?;
        }
        let mut put =
            self.tx.prepare_cached("INSERT OR REPLACE INTO overlay (entity, row_id, data) VALUES (?1, ?2, ?3)")?;
        let mut drop = self.tx.prepare_cached("DELETE FROM overlay WHERE entity = ?1 AND row_id = ?2")?;
        for (entity, id, shown) in &changes.rows {
            match shown {
                Some(data) => put.execute(params![entity, id, data.as_ref().map(RowText::as_str)])?,
                None => drop.execute([entity, id])?,
            };
        }
        Ok(())
    }

    /// Runs statements `sql` made (the entity views and their indexes).
    pub(crate) fn run(&self, sql: &str) -> Result<()> {
        Ok(self.tx.execute_batch(sql)?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?.execute([key, value])?;
        Ok(())
    }

    /// An insert acknowledged before its event was taken: the log must bring
    /// its event after `cursor`.
    pub fn await_insert(&self, nonce: &str, entity: &str, cursor: u64) -> Result<()> {
        self.set_meta(&format!("{AWAITED}{nonce}"), &serde_json::to_string(&(entity, cursor))?)
    }

    /// The event of an awaited insert was taken.
    pub fn forget_awaited(&self, nonce: &str) -> Result<()> {
        self.tx.prepare_cached("DELETE FROM meta WHERE key = ?1")?.execute([format!("{AWAITED}{nonce}")])?;
        Ok(())
    }

    /// No insert is awaited any more (the replica starts over).
    pub fn clear_awaited(&self) -> Result<()> {
        self.tx.execute("DELETE FROM meta WHERE key GLOB ?1", [format!("{AWAITED}*")])?;
        Ok(())
    }

    /// Records the server id an acknowledged insert's temporary id became.
    pub fn set_alias(&self, temp: &str, server: &str) -> Result<()> {
        self.set_meta(&format!("alias:{temp}"), server)
    }

    pub fn set_cursor(&self, seq: u64) -> Result<()> {
        self.set_meta("cursor", &seq.to_string())
    }

    /// Stores a new mutation and gives it its queue position.
    pub fn add_mutation(&self, m: &mut Mutation) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO mutations (id, identity, entity, row_id, kind, data, status, error, attempts, created_at, sent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                m.id,
                m.identity,
                m.entity,
                m.row_id,
                m.kind.as_str(),
                m.data.as_ref().map(serde_json::to_string).transpose()?,
                m.status.as_str(),
                m.error.as_ref().map(format_error),
                m.attempts,
                m.created_at as i64,
                m.sent.as_ref().map(serde_json::to_string).transpose()?,
            ])?;
        m.order = self.tx.last_insert_rowid();
        Ok(())
    }

    /// Saves what may change on a queued mutation.
    pub fn save_mutation(&self, m: &Mutation) -> Result<()> {
        self.tx
            .prepare_cached(
                "UPDATE mutations SET identity = ?2, row_id = ?3, data = ?4, status = ?5, error = ?6, attempts = ?7,
                 sent = ?8 WHERE id = ?1",
            )?
            .execute(params![
                m.id,
                m.identity,
                m.row_id,
                m.data.as_ref().map(serde_json::to_string).transpose()?,
                m.status.as_str(),
                m.error.as_ref().map(format_error),
                m.attempts,
                m.sent.as_ref().map(serde_json::to_string).transpose()?,
            ])?;
        Ok(())
    }

    /// Records that an insert may reach the server (see `queue::Sent`).
    pub fn set_sent(&self, m: &Mutation) -> Result<()> {
        self.tx
            .prepare_cached("UPDATE mutations SET sent = ?2 WHERE id = ?1")?
            .execute(params![m.id, m.sent.as_ref().map(serde_json::to_string).transpose()?])?;
        Ok(())
    }

    pub fn delete_mutation(&self, id: &str) -> Result<()> {
        self.tx.prepare_cached("DELETE FROM mutations WHERE id = ?1")?.execute([id])?;
        Ok(())
    }

    /// Moves every mutation of one identity to another (a token's writes
    /// made before its session was known, once it is).
    pub fn adopt_mutations(&self, from: &str, to: &str) -> Result<usize> {
        Ok(self.tx.execute("UPDATE mutations SET identity = ?2 WHERE identity = ?1", [from, to])?)
    }
}

fn format_error(e: &MutationError) -> String {
    serde_json::json!({ "code": e.code, "message": e.message, "status": e.status }).to_string()
}

fn parse_error(text: &str) -> MutationError {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    MutationError {
        code: v["code"].as_str().unwrap_or("UNKNOWN").to_string(),
        message: v["message"].as_str().unwrap_or(text).to_string(),
        status: v["status"].as_u64().map(|s| s as u16),
    }
}

/// Creates the file with owner-only permissions before SQLite opens it, so
/// rows and queued writes are never readable by other users. SQLite gives
/// the `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map(drop).map_err(|e| Error::Storage(format!("cannot open {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_log_is_checkpointed_off_the_commits_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut db = Db::open(Some(&path)).unwrap();
        // the writer never checkpoints in a commit
        let auto: i64 = db.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, 0);
        let file = || std::fs::metadata(&path).unwrap().len();
        let before = file();
        // about 3,000 pages of log, in commits of one row each
        let big = "x".repeat(4000);
        for i in 0..3000 {
            db.write(|w| w.set_meta(&format!("k{i}"), &big)).unwrap();
        }
        // the checkpoints copied the log into the file meanwhile, on their own thread
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while file() < before + 4000 * 1000 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint: the file is still {} bytes", file());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(db);
        // closed: no checkpoint left running, every commit in the file
        assert!(!dir.path().join("r.db-wal").exists(), "the last close takes the log away");
        let db = Db::open(Some(&path)).unwrap();
        assert_eq!(db.meta("k2999").unwrap().as_deref(), Some(big.as_str()));
        let n: i64 = db.conn.query_row("SELECT count(*) FROM meta WHERE key LIKE 'k%'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3000);
    }

    #[test]
    fn a_log_that_never_pauses_is_checkpointed_by_the_commit_that_takes_it_to_10000_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let mut db = Db::open(Some(&path)).unwrap();
        // about four pages a commit, each different
        let big = |i: usize| format!("{i:08}").repeat(2000);
        for i in 0..3000 {
            db.write(|w| w.set_meta(&format!("k{}", i % 50), &big(i))).unwrap();
        }
        // no quiet moment came, yet the file holds what the log held at 10,000 pages
        let file = std::fs::metadata(&path).unwrap().len();
        assert!(file > 40 * 16_000, "the file is {file} bytes: nothing was checkpointed");
        drop(db);
        let db = Db::open(Some(&path)).unwrap();
        assert_eq!(db.meta("k49").unwrap(), Some(big(2999)));
    }

    #[test]
    fn a_reader_opens_only_current_replicas_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("current.db");
        drop(Db::open(Some(&current)).unwrap());
        let before = std::fs::read(&current).unwrap();
        let db = Db::open_read_only(&current).unwrap();
        assert_eq!(db.cursor().unwrap(), 0);
        assert!(db.row_counts().unwrap().is_empty());
        // a write through the reader is refused by SQLite itself
        assert!(db.conn.execute_batch("CREATE TABLE t (x)").is_err());
        drop(db);
        assert_eq!(std::fs::read(&current).unwrap(), before);
        // an older schema would need the engine's upgrade: refused, not misread
        let old = dir.path().join("old.db");
        drop(Db::open(Some(&old)).unwrap());
        rusqlite::Connection::open(&old).unwrap().execute_batch("PRAGMA user_version=2;").unwrap();
        let err = Db::open_read_only(&old).err().unwrap();
        assert_eq!(err.code(), "ERR_SYNC_CORRUPT");
        assert!(err.to_string().contains("open it with the engine once"), "{err}");
        let foreign = dir.path().join("foreign.db");
        rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        assert_eq!(Db::open_read_only(&foreign).err().unwrap().code(), "ERR_SYNC_CORRUPT");
        assert_eq!(Db::open_read_only(&dir.path().join("none.db")).err().unwrap().code(), "ERR_SYNC_NOT_FOUND");
    }

    #[test]
    fn rows_tombstones_cursor_and_mutations_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("r.db");
        let mut m = Mutation {
            id: "m1".into(),
            order: 0,
            identity: "user:a|tenant:".into(),
            entity: "Todo".into(),
            row_id: "_pending_1".into(),
            kind: Kind::Insert,
            data: Some(json!({ "title": "x" }).as_object().unwrap().clone()),
            status: Status::Pending,
            error: None,
            attempts: 0,
            created_at: 5,
            sent: Some(crate::queue::Sent { after: Some("000a".into()), ..Default::default() }),
        };
        {
            let mut db = Db::open(Some(&path)).unwrap();
            db.write(|w| {
                w.effects(&[
                    Effect::Put {
                        entity: "Todo".into(),
                        id: "a".into(),
                        seq: 3,
                        data: RowText::new(json!({ "id": "a" }).as_object().unwrap()),
                    },
                    Effect::Tombstone { entity: "Todo".into(), id: "b".into(), seq: 4 },
                ])?;
                w.set_cursor(4)?;
                w.add_mutation(&mut m)
            })
            .unwrap();
            m.status = Status::Failed;
            m.error = Some(MutationError { code: "INSERT_FAILED".into(), message: "no".into(), status: Some(400) });
            db.write(|w| w.save_mutation(&m)).unwrap();
            // a failing transaction leaves nothing behind
            let err = db.write(|w| {
                w.set_cursor(99)?;
                Err::<(), _>(Error::Storage("boom".into()))
            });
            assert!(err.is_err());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let db = Db::open(Some(&path)).unwrap();
        assert_eq!(db.cursor().unwrap(), 4);
        let stored = db.load(None).unwrap();
        let rows: Vec<&BaseRow> = stored.rows.rows["Todo"].values().collect();
        assert_eq!(rows[0].seq, 3);
        assert_eq!(rows[0].data.as_ref().unwrap().as_str(), r#"{"id":"a"}"#);
        assert!(rows[1].data.is_none(), "tombstones persist");
        // the rows' texts were read into the entity's list, tombstones left out
        assert_eq!(stored.rows.lists["Todo"].as_str(), r#"[{"id":"a"}]"#);
        assert_eq!(stored.mutations, vec![m]);
    }

    #[test]
    fn load_hands_the_entities_asked_for_to_list_parts_as_it_reads() {
        let mut db = Db::open(None).unwrap();
        let pad = "x".repeat(500);
        let put = |entity: &str, i: usize| Effect::Put {
            entity: entity.into(),
            id: format!("{i:05}"),
            seq: 1,
            data: RowText::new(json!({ "id": format!("{i:05}"), "pad": pad }).as_object().unwrap()),
        };
        let mut effects: Vec<Effect> = (0..3000).map(|i| put("Todo", i)).collect();
        effects.extend((0..10).map(|i| put("Note", i)));
        effects.extend((0..10).map(|i| put("User", i)));
        effects.push(Effect::Tombstone { entity: "Todo".into(), id: "00005".into(), seq: 2 });
        db.write(|w| w.effects(&effects)).unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, RowText)>::new()));
        let sink = got.clone();
        let parts = ListParts {
            entities: Some(["Todo".to_string(), "User".to_string()].into()),
            sink: Box::new(move |entity, json| sink.lock().unwrap().push((entity.to_string(), json))),
        };
        let stored = db.load(Some(&parts)).unwrap();
        let got = got.lock().unwrap();
        assert!(got.iter().all(|(e, _)| e != "Note"), "only the entities asked for");
        assert!(stored.rows.lists.contains_key("Note"), "an entity not asked for is read as one list");
        assert!(!stored.rows.lists.contains_key("Todo"), "one asked for is read in parts");
        for entity in ["Todo", "User"] {
            let mut rows: Vec<serde_json::Value> = Vec::new();
            let mut count = 0;
            for (_, json) in got.iter().filter(|(e, _)| e == entity) {
                count += 1;
                rows.extend(serde_json::from_str::<Vec<serde_json::Value>>(json.as_str()).unwrap());
            }
            let stored_rows = stored.rows.rows[entity].values().filter_map(|r| r.data.as_ref());
            let whole: Vec<serde_json::Value> =
                stored_rows.map(|t| serde_json::from_str(t.as_str()).unwrap()).collect();
            assert_eq!(rows, whole, "the parts of {entity} make its list");
            if entity == "Todo" {
                assert_eq!(whole.len(), 2999, "tombstones left out");
                assert!(count > 1, "1.5 MB in parts of about {PART_BYTES} bytes, got {count}");
            }
        }
    }

    #[test]
    fn foreign_and_garbage_files_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign.db");
        rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(Db::open(Some(&foreign)), Err(Error::Corrupt(_))));
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
        assert!(matches!(Db::open(Some(&garbage)), Err(Error::Corrupt(_))));
    }

    #[test]
    fn a_file_of_an_older_schema_is_upgraded_loses_its_unused_table_and_gains_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        drop(Db::open(Some(&path)).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL); DROP TABLE overlay; PRAGMA user_version=2;",
        )
        .unwrap();
        drop(c);
        let db = Db::open(Some(&path)).unwrap();
        let version: i32 = db.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let kv: i64 =
            db.conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'kv'", [], |r| r.get(0)).unwrap();
        assert_eq!(kv, 0);
        let overlay: i64 =
            db.conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'overlay'", [], |r| r.get(0)).unwrap();
        assert_eq!(overlay, 1, "the pending writes' table of version 4 is made");
    }

    #[test]
    fn awaited_inserts_of_version_4_become_one_key_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replica.db");
        drop(Db::open(Some(&path)).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            r#"INSERT INTO meta VALUES ('awaited', '{"_pending_1_a":["Todo",7],"_pending_2_b":["Note",9]}');
               PRAGMA user_version=4;"#,
        )
        .unwrap();
        drop(c);
        let mut db = Db::open(Some(&path)).unwrap();
        let want = |pairs: &[(&str, &str, u64)]| -> BTreeMap<String, (String, u64)> {
            pairs.iter().map(|(n, e, c)| (n.to_string(), (e.to_string(), *c))).collect()
        };
        assert_eq!(db.awaited().unwrap(), want(&[("_pending_1_a", "Todo", 7), ("_pending_2_b", "Note", 9)]));
        assert_eq!(db.meta("awaited").unwrap(), None);
        db.write(|w| {
            w.forget_awaited("_pending_1_a")?;
            w.await_insert("_pending_3_c", "Todo", 11)
        })
        .unwrap();
        assert_eq!(db.awaited().unwrap(), want(&[("_pending_2_b", "Note", 9), ("_pending_3_c", "Todo", 11)]));
        db.write(|w| w.clear_awaited()).unwrap();
        assert!(db.awaited().unwrap().is_empty());
        drop(db);
        // a damaged entry never keeps the file from opening: it is not awaited
        for damaged in ["{\"_pending_4_d\": null}", "not json", "null", "7"] {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute("INSERT OR REPLACE INTO meta VALUES ('awaited', ?1)", [damaged]).unwrap();
            c.execute_batch("PRAGMA user_version=4;").unwrap();
            drop(c);
            let db = Db::open(Some(&path)).unwrap();
            assert!(db.awaited().unwrap().is_empty(), "{damaged}");
            assert_eq!(db.meta("awaited").unwrap(), None);
        }
    }
}
