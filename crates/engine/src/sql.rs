//! SQL over the replica: one view per entity of the manifest, with a typed
//! column per field read from the stored JSON, expression indexes the
//! views' columns use, and read-only queries that say which entities they
//! read. A view shows what `store.list` shows: the stored rows without
//! those pending writes change (`overlay`), then the overlay's rows, and no
//! stored row while the engine holds them back for another token's check
//! (`meta.rows_hidden`). Owns no state: the definitions live in the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, InterruptHandle, OpenFlags};
use serde_json::Value;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::schema::{FieldType, Schema};

/// `meta` key: "1" while the stored rows are held back (another token's
/// rows until its session is checked); the views then show none of them.
pub const ROWS_HIDDEN: &str = "rows_hidden";
/// `meta` keys: the statements that made the views and indexes, and the
/// objects they made (to drop when the manifest or the indexes change).
const DEFINED: &str = "sql_defined";
const OBJECTS: &str = "sql_objects";
/// The replica's own tables; an entity of one of these names gets its view as `entity_<name>`.
const OWN_TABLES: [&str; 4] = ["rows", "meta", "mutations", "overlay"];

/// Expression indexes to create, by entity: each entry is the fields of one
/// index, in order (`{ Todo: [["done"], ["done", "updatedAt"]] }`).
pub type Indexes = BTreeMap<String, Vec<Vec<String>>>;

/// An SQL identifier, quoted.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The view's name for `entity`.
pub fn view_name(entity: &str) -> String {
    if OWN_TABLES.iter().any(|t| t.eq_ignore_ascii_case(entity)) || entity.to_ascii_lowercase().starts_with("sqlite_") {
        format!("entity_{entity}")
    } else {
        entity.to_string()
    }
}

/// The expression a view's column is, and its indexes are on: the field
/// read from the row's JSON, cast to the type the manifest gives it.
fn column(entity_fields: &crate::schema::Fields, field: &str) -> Option<String> {
    let ty = entity_fields.iter().find(|f| f.name == field)?;
    let path = literal(&format!("$.\"{field}\""));
    let read = format!("json_extract(data, {path})");
    Some(match (FieldType::of(&ty.ty), ty.ty.as_str()) {
        (FieldType::Bool, _) | (FieldType::Number, "int") => format!("CAST({read} AS INTEGER)"),
        (FieldType::Number, _) => format!("CAST({read} AS REAL)"),
        (FieldType::Text, _) => format!("CAST({read} AS TEXT)"),
        (FieldType::Other, _) => read,
    })
}

/// Fields a view can carry: a JSON path cannot name a field with a quote.
fn usable(field: &str) -> bool {
    field != "id" && !field.contains('"') && !field.is_empty()
}

/// One view or index: its kind, its name and the statement that makes it.
type Object = (&'static str, String, String);

/// The views and indexes of a manifest and an `indexes` option.
fn definition(schema: &Schema, indexes: &Indexes) -> Vec<Object> {
    let mut objects = Vec::new();
    for (entity, fields) in schema.entities() {
        let view = view_name(entity);
        let cols: Vec<(String, String)> = fields
            .iter()
            .filter(|f| usable(&f.name))
            .map(|f| (column(fields, &f.name).expect("a field of the entity"), ident(&f.name)))
            .collect();
        let select = |from: &str, named: bool| {
            let mut s = format!("SELECT row_id{}", if named { " AS id" } else { "" });
            for (expr, name) in &cols {
                let _ = write!(s, ", {expr}");
                if named {
                    let _ = write!(s, " AS {name}");
                }
            }
            let _ = write!(s, " FROM {from} WHERE entity = {} AND data IS NOT NULL", literal(entity));
            s
        };
        let ddl = format!(
            "CREATE VIEW {} AS {} AND NOT EXISTS (SELECT 1 FROM overlay o WHERE o.entity = rows.entity AND o.row_id = rows.row_id) \
             AND NOT EXISTS (SELECT 1 FROM meta WHERE key = {} AND value = '1') UNION ALL {};",
            ident(&view),
            select("rows", true),
            literal(ROWS_HIDDEN),
            select("overlay", false),
        );
        objects.push(("VIEW", view, ddl));
    }
    for (entity, list) in indexes {
        let Some(fields) = schema.fields(entity) else {
            tracing::warn!(entity, "indexes: not an entity of the server's manifest; no index made");
            continue;
        };
        for index in list {
            let exprs: Option<Vec<String>> =
                index.iter().map(|field| column(fields, field).filter(|_| usable(field))).collect();
            let Some(exprs) = exprs.filter(|e| !e.is_empty()) else {
                tracing::warn!(entity, fields = ?index, "indexes: not fields of the server's manifest; no index made");
                continue;
            };
            let name = format!("pylon_idx_{entity}_{}", index.join("_"));
            let ddl = format!(
                "CREATE INDEX {} ON rows ({}) WHERE entity = {};",
                ident(&name),
                exprs.join(", "),
                literal(entity)
            );
            objects.push(("INDEX", name, ddl));
        }
    }
    objects
}

/// Makes the views (and indexes) of `schema` in the file, replacing those
/// of an earlier manifest; nothing is done when they are as defined. One
/// SQLite refuses (two entities whose names differ only in case, an index
/// name two entities share) is left out with a warning: the others, and
/// the engine, go on.
pub fn define(db: &mut Db, schema: &Schema, indexes: &Indexes) -> Result<()> {
    let objects = definition(schema, indexes);
    let ddl: String = objects.iter().map(|(_, _, ddl)| format!("{ddl}\n")).collect();
    if db.meta(DEFINED)?.as_deref() == Some(ddl.as_str()) {
        return Ok(());
    }
    let old: Vec<(String, String)> = db.meta(OBJECTS)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    db.write(|w| old.iter().try_for_each(|(kind, name)| w.run(&format!("DROP {kind} IF EXISTS {};", ident(name)))))?;
    let mut made: Vec<(&str, &str)> = Vec::new();
    for (kind, name, statement) in &objects {
        match db.write(|w| w.run(statement)) {
            Ok(()) => made.push((kind, name)),
            Err(e) => tracing::warn!(kind, name = name.as_str(), error = %e, "not made in the replica file"),
        }
    }
    db.write(|w| {
        w.set_meta(DEFINED, &ddl)?;
        w.set_meta(OBJECTS, &serde_json::to_string(&made)?)
    })?;
    tracing::debug!(objects = made.len(), "entity views defined");
    // new indexes over rows already stored: the planner learns what they hold
    db.analyze_rows()?;
    Ok(())
}

/// A connection for queries: the file opened read-only, on the calling
/// thread, interruptible from any other.
pub struct Reader {
    conn: Connection,
    interrupt: Arc<Mutex<Option<InterruptHandle>>>,
}

impl Reader {
    pub fn open(path: &Path, interrupt: Arc<Mutex<Option<InterruptHandle>>>) -> Result<Reader> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        *interrupt.lock() = Some(conn.get_interrupt_handle());
        Ok(Reader { conn, interrupt })
    }

    /// Starts a read transaction: what it reads is the file as of now.
    pub fn begin(&self) -> Result<()> {
        self.end();
        self.conn.execute_batch("BEGIN")?;
        // a read transaction takes its snapshot at its first read
        let first = self.conn.query_row("SELECT count(*) FROM meta WHERE key = 'cursor'", [], |_| Ok(()));
        if let Err(e) = first {
            self.end();
            return Err(e.into());
        }
        Ok(())
    }

    pub fn end(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.interrupt.lock().take();
    }
}

/// What a statement may do: read. Transactions, attachments and pragmas
/// that set something are refused before it runs; whatever else it does
/// besides reading, `sqlite3_stmt_readonly` tells.
fn guard(tables: Arc<Mutex<Vec<Read>>>) -> impl FnMut(AuthContext<'_>) -> Authorization + Send + 'static {
    move |ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Read { table_name, .. } => {
            tables.lock().push((table_name.to_string(), ctx.accessor.map(str::to_string)));
            Authorization::Allow
        }
        AuthAction::Transaction { .. }
        | AuthAction::Savepoint { .. }
        | AuthAction::Attach { .. }
        | AuthAction::Detach { .. }
        | AuthAction::Pragma { pragma_value: Some(_), .. } => Authorization::Deny,
        _ => Authorization::Allow,
    }
}

/// A table a statement reads, with the view that reads it, if one does.
type Read = (String, Option<String>);

/// Prepares `sql` as one read-only statement; returns it with the tables it reads.
fn prepare<'c>(conn: &'c Connection, sql: &str) -> Result<(rusqlite::Statement<'c>, Vec<Read>)> {
    let tables = Arc::new(Mutex::new(Vec::new()));
    conn.authorizer(Some(guard(tables.clone())));
    let prepared = conn.prepare(sql);
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    let stmt = prepared.map_err(refusal)?;
    if !stmt.readonly() {
        return Err(Error::InvalidArg("queries are read-only: the statement would change the replica".into()));
    }
    let tables = std::mem::take(&mut *tables.lock());
    Ok((stmt, tables))
}

/// SQLite's word on a statement, as the caller's error.
fn refusal(e: rusqlite::Error) -> Error {
    use rusqlite::ffi::ErrorCode;
    match &e {
        rusqlite::Error::MultipleStatement => Error::InvalidArg("one statement at a time".into()),
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::AuthorizationForStatementDenied => {
            Error::InvalidArg("queries are read-only: transactions, ATTACH and setting pragmas are refused".into())
        }
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted => Error::Closed,
        rusqlite::Error::SqliteFailure(_, Some(msg)) => Error::Query(msg.clone()),
        _ => Error::Query(e.to_string()),
    }
}

/// The entities `sql` reads, by the views it reads (`None`: it reads the
/// replica's own tables, so any change may change its result).
pub fn entities_read(conn: &Connection, schema: Option<&Schema>, sql: &str) -> Result<Option<Vec<String>>> {
    let (_, tables) = prepare(conn, sql)?;
    let views: BTreeMap<String, &str> = schema
        .map(|s| s.entities().map(|(e, _)| (view_name(e).to_ascii_lowercase(), e.as_str())).collect())
        .unwrap_or_default();
    let mut read = BTreeSet::new();
    for (table, by) in &tables {
        if let Some(entity) = views.get(&table.to_ascii_lowercase()) {
            read.insert(entity.to_string());
        } else if by.is_none() && OWN_TABLES.iter().any(|t| t.eq_ignore_ascii_case(table)) {
            return Ok(None);
        }
    }
    Ok(Some(read.into_iter().collect()))
}

/// Runs one read-only statement on a replica file as of its last commit,
/// without an engine (`pylon-sync sql`); the file is never changed.
pub fn query_file(path: &Path, sql: &str, params: &Value) -> Result<String> {
    let db = Db::open_read_only(path)?;
    run(db.conn(), sql, params)
}

/// Runs `sql` with `params` (an array binds by position, an object by
/// name; `null` binds nothing) and returns its rows as a JSON array of
/// objects keyed by column name.
pub fn run(conn: &Connection, sql: &str, params: &Value) -> Result<String> {
    let (mut stmt, _) = prepare(conn, sql)?;
    bind(&mut stmt, params)?;
    let names: Vec<String> =
        stmt.column_names().into_iter().map(serde_json::to_string).collect::<std::result::Result<_, _>>()?;
    let mut rows = stmt.raw_query();
    let mut out = String::from("[");
    let mut first = true;
    while let Some(row) = rows.next().map_err(refusal)? {
        out.push_str(if first { "{" } else { ",{" });
        first = false;
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(name);
            out.push(':');
            match row.get_ref(i).map_err(refusal)? {
                ValueRef::Null => out.push_str("null"),
                ValueRef::Integer(n) => {
                    let _ = write!(out, "{n}");
                }
                ValueRef::Real(f) if f.is_finite() => out.push_str(&serde_json::to_string(&f)?),
                ValueRef::Real(_) => out.push_str("null"),
                ValueRef::Text(t) => out.push_str(&serde_json::to_string(&String::from_utf8_lossy(t))?),
                ValueRef::Blob(b) => {
                    out.push('"');
                    b.iter().for_each(|byte| {
                        let _ = write!(out, "{byte:02x}");
                    });
                    out.push('"');
                }
            }
        }
        out.push('}');
    }
    out.push(']');
    Ok(out)
}

fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Value) -> Result<()> {
    let count = stmt.parameter_count();
    let value = |v: &Value| -> rusqlite::types::Value {
        use rusqlite::types::Value as Sql;
        match v {
            Value::Null => Sql::Null,
            Value::Bool(b) => Sql::Integer(*b as i64),
            Value::Number(n) => {
                n.as_i64().map(Sql::Integer).unwrap_or_else(|| Sql::Real(n.as_f64().unwrap_or(f64::NAN)))
            }
            Value::String(s) => Sql::Text(s.clone()),
            // arrays and objects as JSON, for json_each(?) and the like
            other => Sql::Text(other.to_string()),
        }
    };
    match params {
        Value::Null => {
            if count > 0 {
                return Err(Error::InvalidArg(format!("the statement has {count} parameter(s) and none were given")));
            }
        }
        Value::Array(list) => {
            if list.len() != count {
                return Err(Error::InvalidArg(format!(
                    "the statement has {count} parameter(s) and {} were given",
                    list.len()
                )));
            }
            for (i, v) in list.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, value(v)).map_err(refusal)?;
            }
        }
        Value::Object(map) => {
            for i in 1..=count {
                let Some(name) = stmt.parameter_name(i) else {
                    return Err(Error::InvalidArg("positional parameters take an array of values".into()));
                };
                let key = name.trim_start_matches([':', '@', '$']);
                let Some(v) = map.get(key) else {
                    return Err(Error::InvalidArg(format!("no value given for parameter {name}")));
                };
                stmt.raw_bind_parameter(i, value(v)).map_err(refusal)?;
            }
        }
        _ => return Err(Error::InvalidArg("params must be an array or an object".into())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::Fields;

    fn schema(entities: serde_json::Value) -> Schema {
        Schema::new(
            entities
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e["name"].as_str().unwrap().to_string(), Fields::from_manifest(e))),
        )
    }

    fn objects(db: &Db) -> Vec<(String, String)> {
        let mut stmt = db
            .conn()
            .prepare("SELECT type, name FROM sqlite_master WHERE type IN ('view', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn views_follow_the_manifest_with_names_quoted_and_typed_columns() {
        let mut db = Db::open(None).unwrap();
        let first = schema(json!([
            { "name": "Todo", "fields": [
                { "name": "title", "type": "string" }, { "name": "done", "type": "bool" },
                { "name": "n", "type": "int" }, { "name": "x", "type": "float" }, { "name": "meta", "type": "json" },
                { "name": "at", "type": "datetime" }, { "name": "odd \"name\"", "type": "string" } ] },
            { "name": "rows", "fields": [{ "name": "a b'c", "type": "string" }] },
            { "name": "Gone", "fields": [] },
            { "name": "sqlite_x", "fields": [] },
            { "name": "todo", "fields": [] }
        ]));
        let indexes: Indexes = [("Todo".to_string(), vec![vec!["done".to_string()], vec!["nope".into()]])].into();
        define(&mut db, &first, &indexes).unwrap();
        let row = json!({ "id": "r1", "title": 7, "done": true, "n": 2.0, "x": 1, "meta": { "k": [1] }, "at": "2026-01-02T03:04:05Z" });
        db.conn()
            .execute(
                "INSERT INTO rows VALUES ('Todo', 'r1', 1, ?1), ('rows', 'r2', 2, '{\"a b''c\":\"v\"}')",
                [row.to_string()],
            )
            .unwrap();
        let got = run(db.conn(), "SELECT * FROM Todo", &Value::Null).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&got).unwrap(),
            json!([{ "id": "r1", "title": "7", "done": 1, "n": 2, "x": 1.0, "meta": "{\"k\":[1]}", "at": "2026-01-02T03:04:05Z" }]),
            "a field whose name a JSON path cannot hold has no column"
        );
        // an entity named like one of the replica's tables gets its view as entity_<name>
        assert_eq!(run(db.conn(), "SELECT * FROM entity_rows", &Value::Null).unwrap(), r#"[{"id":"r2","a b'c":"v"}]"#);
        assert_eq!(
            objects(&db),
            [
                ("view", "Gone"),
                ("view", "Todo"),
                ("view", "entity_rows"),
                ("view", "entity_sqlite_x"),
                ("index", "pylon_idx_Todo_done")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // the same definition again: nothing is made twice
        define(&mut db, &first, &indexes).unwrap();
        // a new manifest: views replaced, those of entities gone dropped, indexes as asked now
        let second = schema(
            json!([{ "name": "Todo", "fields": [{ "name": "title", "type": "string" }, { "name": "due", "type": "datetime" }] }]),
        );
        define(&mut db, &second, &Indexes::new()).unwrap();
        assert_eq!(objects(&db), [("view".to_string(), "Todo".to_string())]);
        assert_eq!(
            run(db.conn(), "SELECT * FROM Todo", &Value::Null).unwrap(),
            r#"[{"id":"r1","title":"7","due":null}]"#
        );
    }
}
