//! The engine against the dev server over real sockets, with a real SQLite file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::{config, control, eventually, login, rest, row, server};
use pylon_sync_engine::{Config, Engine, Error, Event, MutationStatus, Row};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_gets_every_row_beyond_the_log_retention() {
    let srv = server().await;
    let seeded = control(
        &srv.url,
        "seed",
        json!({ "entity": "Todo", "count": 25_000, "data": { "title": "t{i}", "done": false } }),
    )
    .await;
    assert_eq!(seeded["head"], 25_000);
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    engine.start().await.unwrap();
    assert_eq!(engine.list("Todo").len(), 25_000, "a pull from 0 would only see the last 10,000");
    assert_eq!(engine.cursor(), 25_000);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_gets_the_server_id_and_survives_restart() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replica.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    let seen_both = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let e2 = engine.clone();
        let flag = seen_both.clone();
        engine.set_listener(Some(std::sync::Arc::new(move |ev| {
            if let Event::Change { .. } = ev {
                if e2.list("Todo").len() > 1 {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })));
    }
    engine.start().await.unwrap();
    let temp = engine.insert("Todo", row(json!({ "title": "one", "done": false }))).await.unwrap();
    assert!(temp.starts_with("_pending_"));
    assert_eq!(engine.get("Todo", &temp).unwrap()["title"], "one");
    eventually("the insert to be acknowledged", || engine.mutations().is_empty()).await;
    let rows = engine.list("Todo");
    assert_eq!(rows.len(), 1);
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 40);
    assert!(
        !seen_both.load(std::sync::atomic::Ordering::SeqCst),
        "a listener saw the temp row and the server row at once"
    );
    // an update queued while offline survives a restart and is sent afterwards
    engine.stop().await;
    engine.update("Todo", &id, row(json!({ "done": true }))).await.unwrap();
    engine.close().await;
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    assert_eq!(engine.mutations().len(), 0, "nothing is loaded before start");
    engine.start().await.unwrap();
    eventually("the queued update to reach the server", || engine.mutations().is_empty()).await;
    let server_row = rest(&srv.url, reqwest::Method::GET, &format!("/api/entities/Todo/{id}"), Value::Null).await;
    assert_eq!(server_row["done"], 1);
    assert_eq!(engine.get("Todo", &id).unwrap()["done"], true);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_manifest_rules_out_are_refused_when_made_even_offline_after_a_first_start() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    engine.start().await.unwrap();
    let refused = |e: Error| {
        assert_eq!(e.code(), "ERR_SYNC_INVALID_ARG");
        e.to_string()
    };
    let e = engine.insert("Todo", row(json!({ "title": 42, "done": false }))).await.unwrap_err();
    assert!(refused(e).contains("Todo.title must be a string, got 42"));
    let e = engine.update("Todo", "x1", row(json!({ "done": "yes" }))).await.unwrap_err();
    assert!(refused(e).contains("Todo.done must be a boolean"));
    let e = engine.delete("Todos", "x1").await.unwrap_err();
    assert!(refused(e).contains("unknown entity \"Todos\""));
    assert!(engine.mutations().is_empty(), "nothing is queued");
    engine.insert("Todo", row(json!({ "title": "fine", "done": false }))).await.unwrap();
    eventually("the good write to land", || engine.mutations().is_empty()).await;
    engine.close().await;
    let url = srv.url.clone();
    srv.stop().await;
    // the manifest is kept in the file: a start with no server checks too
    let offline = Engine::new(config(&url, Some(&db))).unwrap();
    let e = offline.insert("Todo", row(json!({ "done": false }))).await.unwrap_err();
    assert!(refused(e).contains("Todo.title is required"));
    assert!(offline.mutations().is_empty());
    offline.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_insert_is_kept_failed_and_its_effect_undone() {
    let srv = server().await;
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    engine.start().await.unwrap();
    // the label is unique: only the server can tell, and it answers 400 INSERT_FAILED
    rest(&srv.url, reqwest::Method::POST, "/api/entities/Tag", json!({ "label": "taken" })).await;
    let temp = engine.insert("Tag", row(json!({ "label": "taken" }))).await.unwrap();
    eventually("the insert to fail", || engine.mutations().first().is_some_and(|m| m.status == MutationStatus::Failed))
        .await;
    let m = engine.mutations().remove(0);
    assert_eq!(m.error.as_ref().unwrap().code, "INSERT_FAILED");
    assert!(engine.get("Tag", &temp).is_none(), "the optimistic row must be undone");
    // an update of the failed insert's row cannot be sent and fails too
    engine.update("Tag", &temp, row(json!({ "label": "x" }))).await.unwrap();
    eventually("the dependent update to fail", || {
        engine.mutations().iter().all(|m| m.status == MutationStatus::Failed)
    })
    .await;
    assert_eq!(engine.mutations()[1].error.as_ref().unwrap().code, "DEPENDENCY_FAILED");
    assert!(engine.remove_mutation(&m.id).await.unwrap());
    assert_eq!(engine.mutations().len(), 1);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_keep_writes_and_cursor() {
    let srv = server().await;
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    engine.start().await.unwrap();
    control(
        &srv.url,
        "faults",
        json!({ "rules": [
        { "path": "/api/entities", "status": 503, "count": 2 },
        { "path": "/api/sync/pull", "malformed": true, "count": 1 },
        { "path": "/api/sync/pull", "status": 429, "retryAfter": 1, "count": 1 } ] }),
    )
    .await;
    engine.insert("Todo", row(json!({ "title": "a", "done": false }))).await.unwrap();
    eventually("the insert to get through", || engine.mutations().is_empty()).await;
    eventually("the pull to catch up", || engine.cursor() == 1).await;
    assert_eq!(engine.list("Todo").len(), 1);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_server_refuses_for_now_do_not_hold_back_what_others_wrote() {
    let srv = server().await;
    // the stream carries no event (its connections shape events as they
    // open): only the rounds' pulls bring others' rows, and each round
    // first sends the write the server refuses
    let no_events = json!({ "dropEvery": 1 });
    control(&srv.url, "faults", json!({ "events": no_events })).await;
    let mut c = config(&srv.url, None);
    c.token = Some(login(&srv.url, "alice").await);
    c.transport = Some(pylon_sync_engine::Which::WebSocket);
    let engine = Engine::new(c).unwrap();
    engine.start().await.unwrap();
    eventually("the WebSocket to open", || engine.connection().state == pylon_sync_engine::ConnState::Open).await;
    let mine = engine.insert("Todo", row(json!({ "title": "mine", "done": false }))).await.unwrap();
    eventually("the insert to go through", || engine.mutations().is_empty()).await;
    let refused = json!({ "rules": [{ "path": "/api/entities", "status": 503 }], "events": no_events });
    control(&srv.url, "faults", refused).await;
    // an update first in line (an insert would be preceded by a pull of its own)
    engine.update("Todo", &mine, row(json!({ "done": true }))).await.unwrap();
    control(
        &srv.url,
        "seed",
        json!({ "entity": "Todo", "count": 2, "data": { "title": "theirs {i}", "done": false } }),
    )
    .await;
    eventually("the other client's rows, while the write is refused", || engine.list("Todo").len() == 3).await;
    assert_eq!(engine.mutations().len(), 1, "still pending");
    control(&srv.url, "faults", json!({})).await;
    eventually("the write to go through", || engine.mutations().is_empty()).await;
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_and_server_restart_rebuild_the_replica() {
    let srv = server().await;
    control(&srv.url, "seed", json!({ "entity": "Todo", "count": 3, "data": { "title": "t{i}", "done": false } }))
        .await;
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    engine.start().await.unwrap();
    assert_eq!(engine.list("Todo").len(), 3);
    // a delete, then a restart that renumbers the log to 2 events: our cursor (4) is ahead → 410
    let id = engine.list("Todo")[0]["id"].as_str().unwrap().to_string();
    rest(&srv.url, reqwest::Method::DELETE, &format!("/api/entities/Todo/{id}"), Value::Null).await;
    eventually("the delete to arrive", || engine.list("Todo").len() == 2).await;
    control(&srv.url, "restart", json!({})).await;
    rest(&srv.url, reqwest::Method::POST, "/api/entities/Todo", json!({ "title": "new", "done": true })).await;
    eventually("a rebuilt replica", || engine.list("Todo").len() == 3 && engine.cursor() == 3).await;
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_flip_resets_and_parks_the_old_identitys_writes() {
    let srv = server().await;
    let alice = rest(&srv.url, reqwest::Method::POST, "/api/auth/session", json!({ "user_id": "alice" })).await;
    let bob = rest(&srv.url, reqwest::Method::POST, "/api/auth/session", json!({ "user_id": "bob" })).await;
    for (user, body) in [("alice", "a's note"), ("bob", "b's note")] {
        let token = if user == "alice" { &alice["token"] } else { &bob["token"] };
        reqwest::Client::new()
            .post(format!("{}/api/entities/Note", srv.url))
            .bearer_auth(token.as_str().unwrap())
            .json(&json!({ "body": body, "userId": user }))
            .send()
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&srv.url, Some(&dir.path().join("r.db")));
    cfg.token = alice["token"].as_str().map(str::to_string);
    let engine = Engine::new(cfg).unwrap();
    engine.start().await.unwrap();
    let notes = engine.list("Note");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["body"], "a's note");
    // alice writes while the server refuses writes; then bob signs in
    control(
        &srv.url,
        "faults",
        json!({ "rules": [{ "path": "/api/entities/Note", "method": "POST", "status": 503 }] }),
    )
    .await;
    engine.insert("Note", row(json!({ "body": "a2", "userId": "alice" }))).await.unwrap();
    engine.set_token(bob["token"].as_str().map(str::to_string));
    // written after the token change, before its session is known: bob's write
    engine.insert("Note", row(json!({ "body": "b2", "userId": "bob" }))).await.unwrap();
    let session = engine.notify_session_changed().await.unwrap().unwrap();
    assert_eq!(session.user_id.as_deref(), Some("bob"));
    control(&srv.url, "faults", json!({})).await;
    eventually("bob's replica with bob's own write", || {
        let mut bodies: Vec<String> =
            engine.list("Note").iter().map(|n| n["body"].as_str().unwrap().to_string()).collect();
        bodies.sort();
        bodies == ["b's note", "b2"] && engine.mutations().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = reqwest::Client::new()
        .get(format!("{}/__control/state", srv.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(all["rows"]["Note"], 3, "alice's write must not be sent with bob's token");
    // alice returns: her write goes out with her token
    engine.set_token(alice["token"].as_str().map(str::to_string));
    engine.notify_session_changed().await.unwrap();
    eventually("alice's parked write to be sent", || engine.mutations().is_empty() && engine.list("Note").len() == 2)
        .await;
    let all = reqwest::Client::new()
        .get(format!("{}/__control/state", srv.url))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(all["rows"]["Note"], 4);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_engine_and_bad_input_give_typed_errors() {
    assert!(matches!(Engine::new(Config::new("ftp://x")), Err(Error::InvalidArg(_))));
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.db");
    std::fs::write(&foreign, b"this is not a database, just text that is long enough to look like a header....")
        .unwrap();
    let srv = server().await;
    let engine = Engine::new(config(&srv.url, Some(&foreign))).unwrap();
    let err = engine.start().await.unwrap_err();
    assert_eq!(err.code(), "ERR_SYNC_CORRUPT", "{err}");
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    assert_eq!(engine.insert("Bad Name", Row::new()).await.unwrap_err().code(), "ERR_SYNC_INVALID_ARG");
    engine.close().await;
    assert_eq!(engine.insert("Todo", Row::new()).await.unwrap_err().code(), "ERR_SYNC_CLOSED");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_switch_resets_the_replica() {
    let srv = server().await;
    let alice = rest(&srv.url, reqwest::Method::POST, "/api/auth/session", json!({ "user_id": "alice" })).await;
    let token = alice["token"].as_str().unwrap().to_string();
    rest(&srv.url, reqwest::Method::POST, "/api/entities/OrgMember", json!({ "userId": "alice", "orgId": "org_1" }))
        .await;
    let mut cfg = config(&srv.url, None);
    cfg.token = Some(token.clone());
    let engine = Engine::new(cfg).unwrap();
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let r2 = resets.clone();
    engine.set_listener(Some(std::sync::Arc::new(move |ev| {
        if let Event::Resync { reason: pylon_sync_engine::ResyncReason::Identity } = ev {
            r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })));
    engine.start().await.unwrap();
    assert_eq!(engine.session().unwrap().tenant_id, None);
    let selected = reqwest::Client::new()
        .post(format!("{}/api/auth/select-org", srv.url))
        .bearer_auth(&token)
        .json(&json!({ "orgId": "org_1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(selected.status(), 200);
    let session = engine.notify_session_changed().await.unwrap().unwrap();
    assert_eq!(session.tenant_id.as_deref(), Some("org_1"));
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1, "a tenant change must reset the replica");
    // same token, same tenant: no reset
    engine.notify_session_changed().await.unwrap();
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
    eventually("the replica rebuilt", || engine.list("OrgMember").len() == 1).await;
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_stay_visible_when_the_server_filters_their_events() {
    // the pull evaluates a row policy on the event's data: a patch without the
    // owner field, and any delete, never come back to the owner
    let srv = server().await;
    let alice = common::login(&srv.url, "alice").await;
    let mut c = config(&srv.url, None);
    c.token = Some(alice);
    c.transport = Some(pylon_sync_engine::Which::Poll);
    let e = Engine::new(c).unwrap();
    e.start().await.unwrap();
    let temp = e.insert("Note", row(json!({ "body": "draft", "userId": "alice" }))).await.unwrap();
    eventually("the insert acknowledged", || e.mutations().is_empty()).await;
    assert_ne!(e.get("Note", &temp).unwrap()["id"], temp.as_str(), "the row has its server id");
    let id = e.list("Note")[0]["id"].as_str().unwrap().to_string();
    e.update("Note", &id, row(json!({ "body": "final" }))).await.unwrap();
    eventually("the update acknowledged", || e.mutations().is_empty()).await;
    e.sync_once().await.unwrap();
    assert_eq!(e.get("Note", &id).unwrap()["body"], "final", "the acknowledged update was lost");
    e.delete("Note", &id).await.unwrap();
    eventually("the delete acknowledged", || e.mutations().is_empty()).await;
    e.sync_once().await.unwrap();
    assert!(e.get("Note", &id).is_none(), "the acknowledged delete came back");
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_noticed_even_when_its_new_log_is_not_behind_our_cursor() {
    let srv = server().await;
    control(&srv.url, "seed", json!({ "entity": "Todo", "count": 3, "data": { "title": "t{i}", "done": false } }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    engine.start().await.unwrap();
    assert_eq!(engine.cursor(), 3);
    let id = engine.list("Todo")[0]["id"].as_str().unwrap().to_string();
    engine.close().await;
    // while the engine is away: a change (seq 4), then a restart that renumbers
    // the log to 3 synthetic inserts — head 3, our cursor 3: no 410, nothing new
    rest(&srv.url, reqwest::Method::PATCH, &format!("/api/entities/Todo/{id}"), json!({ "title": "changed" })).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // so the new boot is told apart from the old one
    assert_eq!(control(&srv.url, "restart", json!({})).await["head"], 3);
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    engine.set_listener(Some(std::sync::Arc::new(move |ev| {
        if let Event::Resync { reason } = ev {
            sink.lock().unwrap().push(reason);
        }
    })));
    engine.start().await.unwrap();
    assert_eq!(engine.get("Todo", &id).unwrap()["title"], "changed", "the change before the restart was missed");
    assert_eq!(*events.lock().unwrap(), ["server"]);
    assert_eq!(engine.list("Todo").len(), 3);
    engine.close().await;
    srv.stop().await;
}

async fn server_titles(url: &str) -> Vec<String> {
    let rows = rest(url, reqwest::Method::GET, "/api/entities/Todo", Value::Null).await;
    let mut titles: Vec<String> =
        rows["data"].as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap().to_string()).collect();
    titles.sort();
    titles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_whose_answer_was_lost_is_found_not_sent_twice() {
    let srv = server().await;
    let mut c = config(&srv.url, None);
    c.transport = Some(pylon_sync_engine::Which::Poll);
    let e = Engine::new(c).unwrap();
    e.start().await.unwrap();
    // applied, then the answer is lost three ways: a 503, a truncated body, a 500
    for (i, fault) in
        [json!({ "status": 503 }), json!({ "malformed": true }), json!({ "status": 500 })].into_iter().enumerate()
    {
        let mut rule = fault;
        rule["path"] = json!("/api/entities/Todo");
        rule["method"] = json!("POST");
        rule["count"] = json!(1);
        rule["afterApply"] = json!(true);
        control(&srv.url, "faults", json!({ "rules": [rule] })).await;
        // the same data as an earlier row: only a row newer than the send counts
        e.insert("Todo", row(json!({ "title": "milk", "done": false }))).await.unwrap();
        eventually("the insert resolved", || e.mutations().is_empty()).await;
        assert_eq!(server_titles(&srv.url).await.len(), i + 1, "a lost answer made a duplicate");
    }
    // not applied at all (the request failed before the server handled it): sent again
    control(
        &srv.url,
        "faults",
        json!({ "rules": [{ "path": "/api/entities/Todo", "method": "POST", "count": 2, "status": 503 }] }),
    )
    .await;
    e.insert("Todo", row(json!({ "title": "bread", "done": false }))).await.unwrap();
    eventually("the insert resolved", || e.mutations().is_empty()).await;
    assert_eq!(server_titles(&srv.url).await, ["bread", "milk", "milk", "milk"]);
    e.sync_once().await.unwrap();
    let mut local: Vec<String> = e.list("Todo").iter().map(|r| r["title"].as_str().unwrap().to_string()).collect();
    local.sort();
    assert_eq!(local, ["bread", "milk", "milk", "milk"]);
    assert!(e.list("Todo").iter().all(|r| r["id"].as_str().unwrap().len() == 40));
    e.close().await;
    srv.stop().await;
}

/// A dev server with an admin token, and an engine of that admin polling it (not started).
async fn admin_engine() -> (pylon_devserver::Handle, Engine) {
    let cfg = pylon_devserver::Config { admin_token: Some("admin-secret".into()), ..Default::default() };
    let srv = pylon_devserver::spawn(cfg).await.unwrap();
    let mut c = config(&srv.url, None);
    c.token = Some("admin-secret".into());
    c.transport = Some(pylon_sync_engine::Which::Poll);
    let e = Engine::new(c).unwrap();
    (srv, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_sends_queued_writes_in_batches_with_the_same_outcomes() {
    let (srv, e) = admin_engine().await;
    let resyncs = Arc::new(Mutex::new(Vec::new()));
    let seen = resyncs.clone();
    e.set_listener(Some(Arc::new(move |ev| {
        if let Event::Resync { reason } = ev {
            seen.lock().unwrap().push(reason);
        }
    })));
    // queued before start: 2,500 inserts, one the server refuses (a label
    // already taken), one the manifest rules out once it is known (no
    // title), and writes that depend on an insert's id: in their data, one
    // in the run after that insert's (which is on the server while the
    // insert's answer is stored), one in the same run
    rest(&srv.url, reqwest::Method::POST, "/api/entities/Tag", json!({ "label": "taken" })).await;
    let mut temps = Vec::new();
    for i in 0..2500 {
        let (entity, data) = match i {
            1050 => ("Todo", json!({ "title": "child", "done": false, "userId": temps[5] })),
            1060 => ("Todo", json!({ "title": "grandchild", "done": false, "userId": temps[1055] })),
            1200 => ("Tag", json!({ "label": "taken" })),
            1300 => ("Todo", json!({ "done": false })),
            _ => ("Todo", json!({ "title": format!("r{i}"), "done": false })),
        };
        temps.push(e.insert(entity, row(data)).await.unwrap());
    }
    e.update("Todo", &temps[10], row(json!({ "title": "renamed" }))).await.unwrap();
    e.delete("Todo", &temps[11]).await.unwrap();
    e.start().await.unwrap();
    eventually("the queue to drain", || e.mutations().iter().all(|m| m.status == MutationStatus::Failed)).await;
    let failed = e.mutations();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0].row_id, temps[1200]);
    assert_eq!(failed[0].error.as_ref().unwrap().code, "INSERT_FAILED");
    assert_eq!(failed[1].row_id, temps[1300]);
    let invalid = failed[1].error.as_ref().unwrap();
    assert_eq!((invalid.code.as_str(), invalid.status), ("ERR_SYNC_INVALID_ARG", None));
    assert!(invalid.message.contains("Todo.title is required"), "{}", invalid.message);
    let state = common::get(&srv.url, "/__control/state").await;
    assert_eq!(state["rows"]["Todo"], 2497);
    let requests = &state["requests"];
    // runs end where a write needs an id not known yet, or must fail alone
    assert!(requests["POST /api/batch"].as_u64().unwrap() <= 7, "{requests}");
    assert!(requests.get("POST /api/entities/Todo").is_none(), "inserts went one by one: {requests}");
    e.sync_once().await.unwrap();
    assert_eq!(e.list("Todo").len(), 2497);
    assert!(e.list("Todo").iter().any(|r| r["title"] == "renamed"));
    assert!(!e.list("Todo").iter().any(|r| r["title"] == "r11"));
    let parent = e.get("Todo", &temps[5]).unwrap()["id"].as_str().unwrap().to_string();
    assert!(!parent.starts_with("_pending"));
    let child = e.list("Todo").into_iter().find(|r| r["title"] == "child").unwrap();
    assert_eq!(child["userId"], parent.as_str(), "sent before its parent's server id was known");
    let parent = e.get("Todo", &temps[1055]).unwrap()["id"].as_str().unwrap().to_string();
    let child = e.list("Todo").into_iter().find(|r| r["title"] == "grandchild").unwrap();
    assert_eq!(child["userId"], parent.as_str(), "sent in the run of its parent's insert");
    // a batch sends no nonces: its inserts are not awaited in the log
    assert!(resyncs.lock().unwrap().is_empty(), "resyncs: {:?}", resyncs.lock().unwrap());
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signing_in_during_an_admin_import_sends_their_writes_as_themselves() {
    let (srv, e) = admin_engine().await;
    e.start().await.unwrap();
    // every run is held on the server: the import is under way when the user signs in
    control(&srv.url, "faults", json!({ "rules": [{ "path": "/api/batch", "holdMs": 300 }] })).await;
    let writes: Vec<_> =
        (0..5000).map(|i| e.insert("Todo", row(json!({ "title": format!("r{i}"), "done": false })))).collect();
    for w in futures_util::future::join_all(writes).await {
        w.unwrap();
    }
    let batches = || async { common::get(&srv.url, "/__control/state").await["requests"]["POST /api/batch"].as_u64() };
    for _ in 0..500 {
        if batches().await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    e.set_token(Some(login(&srv.url, "alice").await));
    e.insert("Todo", row(json!({ "title": "alice's", "done": false }))).await.unwrap();
    let alice = |e: &Engine| e.session().is_some_and(|s| s.user_id.as_deref() == Some("alice"));
    eventually("alice's write acknowledged", || alice(&e) && e.mutations().is_empty()).await;
    let state = common::get(&srv.url, "/__control/state").await;
    // a batch is the admin's; alice's insert goes alone, with her token
    assert_eq!(state["requests"]["POST /api/entities/Todo"], 1, "{}", state["requests"]);
    assert!(state["requests"]["POST /api/batch"].as_u64().unwrap() < 5, "the import went on after the sign-in");
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_temporary_id_an_insert_returned_keeps_naming_its_row_after_the_ack() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let e = Engine::new(config(&srv.url, Some(&db))).unwrap();
    e.start().await.unwrap();
    let temp = e.insert("Todo", row(json!({ "title": "kept", "done": false }))).await.unwrap();
    eventually("the insert acknowledged", || e.mutations().is_empty()).await;
    let id = e.list("Todo")[0]["id"].as_str().unwrap().to_string();
    assert_eq!(e.get("Todo", &temp).unwrap()["id"], id.as_str(), "the temporary id no longer finds its row");
    // the caller still holds the temporary id: its writes reach the server row
    e.update("Todo", &temp, row(json!({ "done": true }))).await.unwrap();
    eventually("the update applied", || e.mutations().is_empty()).await;
    let server_row = rest(&srv.url, reqwest::Method::GET, &format!("/api/entities/Todo/{id}"), Value::Null).await;
    assert_eq!(server_row["done"], 1);
    e.close().await;
    // after a restart too
    let e = Engine::new(config(&srv.url, Some(&db))).unwrap();
    e.start().await.unwrap();
    e.delete("Todo", &temp).await.unwrap();
    eventually("the delete applied", || e.mutations().is_empty()).await;
    assert!(e.mutations().iter().all(|m| m.status != MutationStatus::Failed));
    let gone = reqwest::get(format!("{}/api/entities/Todo/{id}", srv.url)).await.unwrap().status();
    assert_eq!(gone, 404);
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_without_awaiting_keep_their_order_and_are_durable_when_they_resolve() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replica.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    // offline: everything stays queued, so the stored order can be read back
    let id = engine.insert("Todo", row(json!({ "title": "w-1", "done": false }))).await.unwrap();
    let writes: Vec<_> =
        (0..300).map(|n| engine.update("Todo", &id, row(json!({ "title": format!("w{n}") })))).collect();
    // futures made in this order but run concurrently, last made first
    let mut tasks = Vec::new();
    for w in writes.into_iter().rev() {
        tasks.push(tokio::spawn(w));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(engine.get("Todo", &id).unwrap()["title"], "w299");
    engine.close().await;
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    engine.start().await.unwrap();
    eventually("the queue to drain", || engine.mutations().is_empty()).await;
    let rows = engine.list("Todo");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["title"], "w299", "the last write made is the one that stays");
    let server_row = rest(
        &srv.url,
        reqwest::Method::GET,
        &format!("/api/entities/Todo/{}", rows[0]["id"].as_str().unwrap()),
        Value::Null,
    )
    .await;
    assert_eq!(server_row["title"], "w299");
    engine.close().await;
    srv.stop().await;
}

/// Polls a write's future once: `Some` when it was answered already.
fn answered<T>(write: impl std::future::Future<Output = T>) -> Option<T> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(write).poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_now_stores_the_writes_made_so_far_on_the_calling_thread() {
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replica.db");
    let engine = Engine::new(config(&srv.url, Some(&db))).unwrap();
    engine.start().await.unwrap();
    engine.stop().await; // offline: the writes stay queued, to be read back
    assert!(!engine.commit_now(), "nothing made, nothing to commit");
    let first = engine.insert("Todo", row(json!({ "title": "a", "done": false })));
    let second = engine.insert("Todo", row(json!({ "title": "b", "done": false })));
    let refused = engine.update("Todo", "x1", row(json!({ "done": "yes" })));
    assert!(engine.list("Todo").is_empty(), "not committed yet");
    // another connection writing the file: not waited for on this thread
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(!engine.commit_now());
    other.execute_batch("ROLLBACK").unwrap();
    // (work of the stopped sync loop may still hold the database a moment)
    let mut tries = 0;
    while !engine.commit_now() {
        tries += 1;
        assert!(tries < 500, "commit_now never found the database free");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // committed on this thread, in one transaction: shown, stored, answered
    assert_eq!(engine.list("Todo").len(), 2);
    assert_eq!(engine.mutations().len(), 2);
    let stored: i64 =
        rusqlite::Connection::open(&db).unwrap().query_row("SELECT count(*) FROM mutations", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 2, "durable before the futures ran");
    let first = answered(first).expect("answered at the first poll").unwrap();
    assert!(first.starts_with("_pending_"), "{first}");
    answered(second).expect("answered at the first poll").unwrap();
    let err = answered(refused).expect("refused at the first poll").unwrap_err();
    assert_eq!(err.code(), "ERR_SYNC_INVALID_ARG");
    // each write still commits through its future when it was not committed now
    let later = engine.update("Todo", &first, row(json!({ "title": "a2" })));
    assert_eq!(engine.get("Todo", &first).unwrap()["title"], "a");
    later.await.unwrap();
    assert_eq!(engine.get("Todo", &first).unwrap()["title"], "a2");
    assert!(!engine.commit_now());
    // a burst of more than 64 is left to its futures, to commit off this thread
    let burst: Vec<_> =
        (0..65).map(|i| engine.insert("Todo", row(json!({ "title": format!("burst {i}"), "done": false })))).collect();
    assert!(!engine.commit_now());
    for w in burst {
        w.await.unwrap();
    }
    assert_eq!(engine.list("Todo").len(), 67);
    engine.close().await;
    // a closed engine commits nothing, now or later
    let late = engine.insert("Todo", row(json!({ "title": "c", "done": false })));
    assert!(!engine.commit_now());
    assert_eq!(late.await.unwrap_err().code(), "ERR_SYNC_CLOSED");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_log_no_longer_reaches_swaps_in_fresh_rows_without_emptying_the_store() {
    let srv = pylon_devserver::spawn(pylon_devserver::Config { retention: 50, ..Default::default() }).await.unwrap();
    control(&srv.url, "seed", json!({ "entity": "Todo", "count": 10, "data": { "title": "t{i}", "done": false } }))
        .await;
    let mut c = config(&srv.url, None);
    c.transport = Some(pylon_sync_engine::Which::Poll);
    c.poll_interval = Duration::from_secs(3600);
    let engine = Engine::new(c).unwrap();
    engine.start().await.unwrap();
    assert_eq!(engine.count("Todo"), 10);
    // the log moves on by more than it keeps: our cursor falls out of it
    control(&srv.url, "seed", json!({ "entity": "Todo", "count": 200, "data": { "title": "n{i}", "done": false } }))
        .await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new((usize::MAX, Vec::new())));
    {
        let (e, seen) = (engine.clone(), seen.clone());
        engine.set_listener(Some(std::sync::Arc::new(move |ev| {
            let mut s = seen.lock().unwrap();
            match ev {
                Event::Change { .. } => s.0 = s.0.min(e.count("Todo")),
                Event::Resync { reason } => s.1.push(reason),
                _ => {}
            }
        })));
    }
    engine.sync_once().await.unwrap();
    assert_eq!(engine.count("Todo"), 210);
    let (fewest, resyncs) = seen.lock().unwrap().clone();
    assert_eq!(resyncs, ["resync"], "the resync is reported");
    assert!(fewest >= 10, "a reader saw {fewest} rows while the replica was rebuilt");
    assert_eq!(engine.cursor(), 210);
    engine.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_while_running_is_noticed_with_no_write_to_refuse_it() {
    // the server answers a revoked token as anonymous, and would take a write
    // to an entity no policy guards as an anonymous one
    let srv = server().await;
    let token = common::login(&srv.url, "erin").await;
    let mut c = config(&srv.url, None);
    c.token = Some(token.clone());
    c.transport = Some(pylon_sync_engine::Which::Poll);
    c.poll_interval = Duration::from_millis(200);
    let e = Engine::new(c).unwrap();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let seen = refused.clone();
    e.set_listener(Some(Arc::new(move |ev| {
        if let Event::Error { context, error } = ev {
            seen.lock().unwrap().push((context, error.code()));
        }
    })));
    e.start().await.unwrap();
    assert_eq!(e.session().unwrap().user_id.as_deref(), Some("erin"));
    let revoked = reqwest::Client::new()
        .delete(format!("{}/api/auth/session", srv.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success());
    // confirmed again within SESSION_RECHECK (10 s) of the last confirmation
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e.session().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the revoked token was never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused.lock().unwrap().contains(&(pylon_sync_engine::ErrorContext::Session, "ERR_SYNC_AUTH")));
    e.insert("Todo", row(json!({ "title": "after the revocation", "done": false }))).await.unwrap();
    assert!(matches!(e.sync_once().await, Err(Error::Auth(_))));
    let todos = rest(&srv.url, reqwest::Method::GET, "/api/entities/Todo", Value::Null).await;
    assert_eq!(todos["data"].as_array().unwrap().len(), 0, "sent as anonymous");
    assert_eq!(e.mutations().len(), 1, "held");
    e.close().await;
    srv.stop().await;
}

/// Requests the dev server was asked for, by method and path.
async fn requests(url: &str) -> Value {
    common::get(url, "/__control/state").await["requests"].clone()
}

/// A bootstrap that meets the rate limiter (the manifest, a snapshot page,
/// a page of the log replay) waits the limit out and asks for that request
/// again: nothing already read is read twice, and no error is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_met_mid_bootstrap_is_waited_out_and_the_bootstrap_goes_on() {
    // the same 5,000 rows on two servers: one answers every request, the
    // other refuses one request of each kind, part-way through
    let (clean, limited) = (server().await, server().await);
    for srv in [&clean, &limited] {
        let seed = json!({ "entity": "Todo", "count": 5_000, "data": { "title": "t{i}", "done": false } });
        control(&srv.url, "seed", seed).await;
    }
    control(
        &limited.url,
        "faults",
        json!({ "rules": [
        { "path": "/api/manifest", "status": 429, "retryAfter": 1, "count": 1 },
        { "path": "/api/query/Todo", "status": 429, "retryAfter": 1, "after": 1, "count": 1 },
        // past the snapshot's few pulls: in the replay that fills `Note`
        // (which the server will not list), 50 pages of 100 events
        { "path": "/api/sync/pull", "status": 429, "retryAfter": 1, "after": 20, "count": 1 } ] }),
    )
    .await;
    let mut seen = Vec::new();
    for srv in [&clean, &limited] {
        let engine = Engine::new(config(&srv.url, None)).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        engine.set_listener(Some(Arc::new(move |ev| sink.lock().unwrap().push(ev))));
        // one round, no loop: the two servers see the same requests but for the faults
        engine.sync_once().await.unwrap();
        assert_eq!(engine.list("Todo").len(), 5_000);
        assert_eq!(engine.cursor(), 5_000);
        assert_eq!(engine.status().rate_limited_until, None);
        engine.close().await;
        seen.push((requests(&srv.url).await, std::mem::take(&mut *events.lock().unwrap())));
    }
    let (clean_asked, limited_asked) = (&seen[0].0, &seen[1].0);
    let count = |asked: &Value, route: &str| asked[route].as_u64().unwrap_or(0);
    for route in ["GET /api/manifest", "POST /api/query/Todo", "GET /api/sync/pull"] {
        assert_eq!(
            count(limited_asked, route),
            count(clean_asked, route) + 1,
            "{route}: only the refused request is asked again ({clean_asked} without faults, {limited_asked} with)"
        );
    }
    let events = &seen[1].1;
    let held = events.iter().filter(|e| matches!(e, Event::Status(s) if s.rate_limited_until.is_some())).count();
    assert!(held >= 3, "each wait is in the status ({held} statuses say so)");
    let errors: Vec<_> = events.iter().filter(|e| matches!(e, Event::Error { .. })).collect();
    assert!(errors.is_empty(), "a limit waited out is no error: {errors:?}");
    clean.stop().await;
    limited.stop().await;
}

/// A bootstrap waiting out a rate limit (the limiter's 60 s window here)
/// gives way to `close()`: the engine does not hold the caller for the
/// window, nor send anything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_bootstrap_waiting_out_a_rate_limit() {
    let srv = server().await;
    control(&srv.url, "faults", json!({ "rules": [{ "path": "/api/manifest", "status": 429 }] })).await;
    let engine = Engine::new(config(&srv.url, None)).unwrap();
    let starting = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start().await }
    });
    eventually("the wait in the status", || engine.status().rate_limited_until.is_some()).await;
    let asked = requests(&srv.url).await["GET /api/manifest"].as_u64();
    tokio::time::timeout(Duration::from_secs(30), engine.close())
        .await
        .expect("close() waited for the limiter's window");
    let _ = tokio::time::timeout(Duration::from_secs(30), starting).await.expect("start() settles once closed");
    assert_eq!(requests(&srv.url).await["GET /api/manifest"].as_u64(), asked, "nothing asked after close()");
    srv.stop().await;
}

/// A 410 from the same server: the snapshot entities are swapped in whole,
/// and an entity only the log fills (`Note`, which the server will not list
/// under its row policy) keeps its rows until the replay from 0 replaces
/// them whole, in one transaction. It is never shown empty meanwhile, nor
/// after a restart between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_keeps_showing_what_only_the_log_fills_until_its_replay_lands() {
    let srv = server().await;
    let token = login(&srv.url, "alice").await;
    let note = |body: &'static str| {
        let (url, token) = (srv.url.clone(), token.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{url}/api/entities/Note"))
                .bearer_auth(&token)
                .json(&json!({ "body": body, "userId": "alice" }))
                .send()
                .await
                .unwrap();
        }
    };
    note("first").await;
    note("second").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let open = || {
        let mut cfg = config(&srv.url, Some(&db));
        cfg.token = Some(token.clone());
        let engine = Engine::new(cfg).unwrap();
        // the notes each change shows
        let shown = Arc::new(Mutex::new(Vec::new()));
        let (me, sink) = (engine.clone(), shown.clone());
        engine.set_listener(Some(Arc::new(move |ev| {
            if matches!(ev, Event::Change { .. }) {
                sink.lock().unwrap().push(me.list("Note").len());
            }
        })));
        (engine, shown)
    };
    let (engine, shown) = open();
    engine.sync_once().await.unwrap();
    assert_eq!(engine.list("Note").len(), 2);
    shown.lock().unwrap().clear();
    // another of alice's clients adds a note; then the log no longer
    // reaches the cursor, and every pull after the snapshot's own three
    // (where the log starts and ends, asked before and after its pages) fails
    note("third").await;
    let rules = json!({ "rules": [
        { "path": "/api/sync/pull", "status": 410, "count": 1 },
        { "path": "/api/sync/pull", "status": 503, "after": 3 } ] });
    control(&srv.url, "faults", rules).await;
    assert!(engine.sync_once().await.is_err(), "the replay's pull failed");
    assert_eq!(engine.cursor(), 0, "the snapshot is in, its replay from 0 is not");
    assert_eq!(engine.list("Note").len(), 2, "the notes are shown until the replay replaces them");
    let from_sql = engine.query("SELECT body FROM Note".into(), Value::Null).await.unwrap();
    assert_eq!(serde_json::from_str::<Vec<Value>>(&from_sql).unwrap().len(), 2, "and so is their view");
    engine.close().await;
    assert!(!shown.lock().unwrap().contains(&0), "a change showed no notes: {:?}", shown.lock().unwrap());

    // a stored note the log does not hold: the replay replaces, it does not merge
    let file = rusqlite::Connection::open(&db).unwrap();
    let ghost = r#"{"id":"ghost","body":"ghost","userId":"alice"}"#;
    file.execute("INSERT INTO rows (entity, row_id, seq, data) VALUES ('Note', 'ghost', 1, ?1)", [ghost]).unwrap();
    drop(file);
    control(&srv.url, "faults", json!({})).await;
    let (engine, shown) = open();
    engine.sync_once().await.unwrap();
    let mut bodies: Vec<String> = engine.list("Note").iter().map(|n| n["body"].as_str().unwrap().to_string()).collect();
    bodies.sort();
    assert_eq!(bodies, ["first", "second", "third"], "the replay made the notes");
    let from_sql = engine.query("SELECT count(*) AS n FROM Note".into(), Value::Null).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&from_sql).unwrap(), json!([{ "n": 3 }]));
    assert!(!shown.lock().unwrap().contains(&0), "a change showed no notes: {:?}", shown.lock().unwrap());
    engine.close().await;
    srv.stop().await;
}
