//! SQL over the replica: the entity views show what `list` shows (pending
//! writes included, another identity's rows never), in the engine and to
//! any other reader of the file; queries are read-only, bound, typed in
//! their errors, interruptible; `entities_read` names what a query reads.

mod common;

use std::time::Duration;

use common::{config, control, eventually, login, row, server};
use pylon_sync_engine::{Engine, Error};
use serde_json::{json, Value};

const TODOS: &str = "SELECT id, title, done, userId FROM Todo ORDER BY id";

/// `list("Todo")` as the view shows it: booleans are 0/1 in SQL.
fn listed(engine: &Engine) -> Vec<Value> {
    let mut rows: Vec<Value> = engine
        .list("Todo")
        .into_iter()
        .map(|r| {
            json!({ "id": r["id"], "title": r["title"], "done": r["done"].as_bool().map(i64::from),
                    "userId": r.get("userId").cloned().unwrap_or(Value::Null) })
        })
        .collect();
    rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    rows
}

async fn queried(engine: &Engine, sql: &str) -> Vec<Value> {
    serde_json::from_str(&engine.query(sql.into(), Value::Null).await.unwrap()).unwrap()
}

/// The same query through a connection of another program.
fn read_file(path: &std::path::Path, sql: &str) -> Vec<Value> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let rows = stmt
        .query_map([], |r| {
            let mut o = serde_json::Map::new();
            for (i, n) in names.iter().enumerate() {
                let v = match r.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(n) => json!(n),
                    rusqlite::types::ValueRef::Real(f) => json!(f),
                    rusqlite::types::ValueRef::Text(t) => json!(String::from_utf8_lossy(t)),
                    rusqlite::types::ValueRef::Blob(_) => unreachable!(),
                };
                o.insert(n.clone(), v);
            }
            Ok(Value::Object(o))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[tokio::test]
async fn the_views_show_what_the_store_shows_pending_writes_included() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut cfg = config(&srv.url, Some(&path));
    // signed in, so the WebSocket carries other clients' rows while the writes are refused
    cfg.token = Some(login(&srv.url, "alice").await);
    cfg.transport = Some(pylon_sync_engine::Which::WebSocket);
    let engine = Engine::new(cfg).unwrap();
    engine.start().await.unwrap();
    eventually("the WebSocket to open", || engine.connection().state == pylon_sync_engine::ConnState::Open).await;
    let mut ids = Vec::new();
    for (title, done) in [("milk", false), ("bread", true), ("eggs", false)] {
        ids.push(engine.insert("Todo", row(json!({ "title": title, "done": done }))).await.unwrap());
    }
    eventually("the inserts to be acknowledged", || engine.mutations().is_empty()).await;
    engine.sync().await.unwrap();
    assert_eq!(queried(&engine, TODOS).await, listed(&engine));
    assert_eq!(listed(&engine).len(), 3);

    // writes the server refuses for now stay pending, and show
    control(&srv.url, "faults", json!({ "rules": [{ "path": "/api/entities", "status": 503 }] })).await;
    let server_ids: Vec<String> = listed(&engine).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    engine.update("Todo", &server_ids[0], row(json!({ "done": true }))).await.unwrap();
    engine.delete("Todo", &server_ids[1]).await.unwrap();
    let temp = engine.insert("Todo", row(json!({ "title": "it's \"quoted\"", "done": false }))).await.unwrap();
    assert_eq!(engine.mutations().len(), 3);
    let shown = listed(&engine);
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert_eq!(queried(&engine, TODOS).await, shown);
    // another program reading the file sees the same, as of the last commit
    assert_eq!(read_file(&path, TODOS), shown);
    let pending: Vec<Value> =
        queried(&engine, &format!("SELECT title FROM Todo WHERE id = '{temp}' AND done = 0")).await;
    assert_eq!(pending, vec![json!({ "title": "it's \"quoted\"" })]);

    // another client's rows arrive while the writes wait
    control(
        &srv.url,
        "seed",
        json!({ "entity": "Todo", "count": 2, "data": { "title": "seeded {i}", "done": false } }),
    )
    .await;
    eventually("the other client's rows", || engine.list("Todo").len() == 5).await;
    assert_eq!(queried(&engine, TODOS).await, listed(&engine));

    // acknowledged: the overlay empties and the views show the server's rows
    control(&srv.url, "faults", json!({})).await;
    eventually("the writes to go through", || engine.mutations().is_empty()).await;
    engine.sync().await.unwrap();
    assert_eq!(queried(&engine, TODOS).await, listed(&engine));
    assert_eq!(read_file(&path, TODOS), listed(&engine));
    assert_eq!(read_file(&path, "SELECT count(*) AS n FROM overlay"), vec![json!({ "n": 0 })]);
    // an aggregate and a join over two views
    let agg = queried(&engine, "SELECT done, count(*) AS n FROM Todo GROUP BY done ORDER BY done").await;
    assert_eq!(agg, vec![json!({ "done": 0, "n": 4 }), json!({ "done": 1, "n": 1 })]);
    engine.close().await;
    // after the engine is gone, the file still answers
    assert_eq!(read_file(&path, "SELECT count(*) AS n FROM Todo"), vec![json!({ "n": 5 })]);
    srv.stop().await;
}

#[tokio::test]
async fn another_identitys_rows_never_show_in_a_query() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let (alice, bob) = (login(&srv.url, "alice").await, login(&srv.url, "bob").await);
    let mut cfg = config(&srv.url, Some(&path));
    cfg.token = Some(bob.clone());
    let as_bob = Engine::new(cfg).unwrap();
    as_bob.start().await.unwrap();
    as_bob.insert("Note", row(json!({ "body": "bob's", "userId": "bob" }))).await.unwrap();
    eventually("bob's note to be acknowledged", || as_bob.mutations().is_empty()).await;
    as_bob.close().await;

    let notes = "SELECT body FROM Note ORDER BY body";
    let mut cfg = config(&srv.url, Some(&path));
    cfg.token = Some(alice.clone());
    let engine = Engine::new(cfg).unwrap();
    // before the server says whose token it is, bob's rows are held back
    assert_eq!(queried(&engine, notes).await, Vec::<Value>::new());
    assert!(read_file(&path, notes).is_empty(), "another program sees them held back too");
    engine.start().await.unwrap();
    control(
        &srv.url,
        "faults",
        json!({ "rules": [{ "path": "/api/entities/Note", "method": "POST", "status": 503 }] }),
    )
    .await;
    engine.insert("Note", row(json!({ "body": "alice's pending", "userId": "alice" }))).await.unwrap();
    assert_eq!(queried(&engine, notes).await, vec![json!({ "body": "alice's pending" })]);
    // bob again: alice's pending note is parked, not shown
    engine.set_token(Some(bob));
    engine.notify_session_changed().await.unwrap();
    engine.sync().await.unwrap();
    assert_eq!(queried(&engine, notes).await, vec![json!({ "body": "bob's" })]);
    assert_eq!(read_file(&path, notes), vec![json!({ "body": "bob's" })]);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test]
async fn queries_are_read_only_bound_and_say_what_failed() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(config(&srv.url, Some(&dir.path().join("replica.db")))).unwrap();
    engine.start().await.unwrap();
    engine.insert("Todo", row(json!({ "title": "milk", "done": false }))).await.unwrap();
    let q = |sql: &str, params: Value| engine.query(sql.to_string(), params);
    for write in [
        "DELETE FROM rows",
        "INSERT INTO meta VALUES ('a', 'b')",
        "UPDATE mutations SET status = 'failed'",
        "CREATE TABLE t (x)",
        "DROP VIEW Todo",
        "BEGIN",
        "COMMIT",
        "PRAGMA journal_mode = DELETE",
        "ATTACH 'other.db' AS other",
        "SELECT 1; DELETE FROM rows",
    ] {
        let err = q(write, Value::Null).await.expect_err(write);
        assert_eq!(err.code(), "ERR_SYNC_INVALID_ARG", "{write}: {err}");
    }
    assert_eq!(engine.list("Todo").len(), 1, "nothing was changed");
    let err = q("SELEC * FROM Todo", Value::Null).await.unwrap_err();
    assert_eq!(err.code(), "ERR_SYNC_QUERY");
    assert!(err.to_string().contains("syntax error"), "{err}");
    let err = q("SELECT * FROM Nope", Value::Null).await.unwrap_err();
    assert!(err.to_string().contains("no such table: Nope"), "{err}");
    let err = q("SELECT json_extract('not json', '$')", Value::Null).await.unwrap_err();
    assert_eq!(err.code(), "ERR_SYNC_QUERY", "a runtime error: {err}");

    // parameters are bound, never spliced
    let by_title = "SELECT title FROM Todo WHERE title = ?";
    assert_eq!(q(by_title, json!(["milk"])).await.unwrap(), r#"[{"title":"milk"}]"#);
    assert_eq!(q(by_title, json!(["x' OR '1'='1"])).await.unwrap(), "[]");
    assert_eq!(
        q("SELECT :a + @b AS n, $c AS c", json!({ "a": 1, "b": 2.5, "c": null })).await.unwrap(),
        r#"[{"n":3.5,"c":null}]"#
    );
    assert_eq!(
        q("SELECT sum(value) AS s FROM json_each(?)", json!([[1, 2, 3]])).await.unwrap(),
        r#"[{"s":6}]"#,
        "arrays bind as JSON"
    );
    assert_eq!(q("SELECT ? AS t", json!([true])).await.unwrap(), r#"[{"t":1}]"#);
    for (sql, params) in [
        (by_title, Value::Null),
        (by_title, json!([])),
        (by_title, json!(["a", "b"])),
        ("SELECT :a", json!({})),
        (by_title, json!("milk")),
    ] {
        let err = q(sql, params.clone()).await.unwrap_err();
        assert_eq!(err.code(), "ERR_SYNC_INVALID_ARG", "{sql} {params}: {err}");
    }

    // what a query reads, from the prepared statement
    let read = |sql: &str| engine.entities_read(sql.to_string());
    assert_eq!(read("SELECT * FROM Todo").await.unwrap(), Some(vec!["Todo".to_string()]));
    assert_eq!(
        read("SELECT n.body FROM Note n JOIN Todo t ON t.userId = n.userId").await.unwrap(),
        Some(vec!["Note".to_string(), "Todo".to_string()])
    );
    assert_eq!(
        read("WITH x AS (SELECT count(*) FROM \"Todo\") SELECT * FROM x").await.unwrap(),
        Some(vec!["Todo".into()])
    );
    assert_eq!(read("SELECT 1").await.unwrap(), Some(vec![]));
    assert_eq!(read("SELECT count(*) FROM rows").await.unwrap(), None, "the replica's own tables: anything");
    assert_eq!(read("DELETE FROM rows").await.unwrap_err().code(), "ERR_SYNC_INVALID_ARG");

    // close() interrupts a query still running
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let running = tokio::spawn({
        let engine = engine.clone();
        async move { engine.query(endless.into(), Value::Null).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    engine.close().await;
    let err = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    assert!(matches!(engine.query("SELECT 1".into(), Value::Null).await, Err(Error::Closed)));
    srv.stop().await;
}

#[tokio::test]
async fn indexes_serve_the_views_columns_and_a_memory_replica_queries_too() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let mut cfg = config(&srv.url, Some(&path));
    cfg.indexes = [("Todo".to_string(), vec![vec!["done".to_string()], vec!["userId".into(), "title".into()]])].into();
    let engine = Engine::new(cfg).unwrap();
    engine.start().await.unwrap();
    let plan = |sql: &str| read_file(&path, &format!("EXPLAIN QUERY PLAN {sql}"));
    let uses = |sql: &str, index: &str| plan(sql).iter().any(|r| r["detail"].as_str().unwrap().contains(index));
    assert!(
        uses("SELECT * FROM Todo WHERE done = 1", "pylon_idx_Todo_done"),
        "{:?}",
        plan("SELECT * FROM Todo WHERE done = 1")
    );
    assert!(uses("SELECT * FROM Todo WHERE userId = 'a' AND title > 'm'", "pylon_idx_Todo_userId_title"));
    engine.close().await;
    // asked for no more: the indexes go
    let engine = Engine::new(config(&srv.url, Some(&path))).unwrap();
    engine.start().await.unwrap();
    assert!(!uses("SELECT * FROM Todo WHERE done = 1", "pylon_idx_Todo_done"));
    engine.close().await;

    // without a file, queries share the engine's connection
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    engine.start().await.unwrap();
    engine.insert("Todo", row(json!({ "title": "in memory", "done": false }))).await.unwrap();
    assert_eq!(queried(&engine, "SELECT title FROM Todo").await, vec![json!({ "title": "in memory" })]);
    assert_eq!(engine.query("DELETE FROM rows".into(), Value::Null).await.unwrap_err().code(), "ERR_SYNC_INVALID_ARG");
    // close() interrupts a query on that one connection too
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let running = tokio::spawn({
        let engine = engine.clone();
        async move { engine.query(endless.into(), Value::Null).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(10), engine.close()).await.expect("close() does not wait for the query");
    let err = running.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    srv.stop().await;
}
