//! Realtime transports against the dev server: propagation, the stream as a
//! hint (duplicates, gaps, reordering, protected entities), liveness,
//! reconnect backoff, the fallback ladder, presence, topics and CRDT frames.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, control, eventually, get, login, rest, row, server};
use pylon_sync_engine::{ConnState, Engine, Event, Which};
use reqwest::Method;
use serde_json::{json, Value};

/// An engine that can only learn about remote changes from its stream.
fn streaming(url: &str, token: Option<&str>, transport: Option<Which>) -> Engine {
    let mut c = config(url, None);
    c.poll_interval = Duration::from_secs(3600);
    c.transport = transport;
    c.token = token.map(str::to_string);
    c.liveness.ping_interval = Duration::from_millis(300);
    c.liveness.ping_timeout = Duration::from_millis(300);
    Engine::new(c).unwrap()
}

/// Every event the engine emits, for later inspection.
fn record(engine: &Engine) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    engine.set_listener(Some(Arc::new(move |ev| sink.lock().unwrap().push(ev))));
    events
}

async fn open_on(engine: &Engine, which: Which) {
    eventually(&format!("a {which:?} connection"), || {
        let c = engine.connection();
        c.state == ConnState::Open && c.transport == which
    })
    .await;
}

/// Alice and Bob, each following over a WebSocket; Bob's events are recorded.
async fn alice_and_bob(url: &str) -> (Engine, Engine, Arc<Mutex<Vec<Event>>>) {
    let (alice, bob) = (login(url, "alice").await, login(url, "bob").await);
    let a = streaming(url, Some(&alice), Some(Which::WebSocket));
    let b = streaming(url, Some(&bob), Some(Which::WebSocket));
    let b_events = record(&b);
    a.start().await.unwrap();
    b.start().await.unwrap();
    open_on(&a, Which::WebSocket).await;
    open_on(&b, Which::WebSocket).await;
    (a, b, b_events)
}

/// An engine pinned to WebSocket with the default liveness settings.
fn pinned_websocket(url: &str, token: String, reconnect_delay: Duration) -> Engine {
    let mut c = config(url, None);
    c.transport = Some(Which::WebSocket);
    c.token = Some(token);
    c.reconnect_delay = reconnect_delay;
    Engine::new(c).unwrap()
}

/// Alice, following over a WebSocket whose events a pull has vouched for
/// (a pull after the stream opened), so they are applied as they come.
async fn alice_on_a_checked_websocket(url: &str) -> Engine {
    let e = streaming(url, Some(&login(url, "alice").await), Some(Which::WebSocket));
    e.start().await.unwrap();
    open_on(&e, Which::WebSocket).await;
    e.sync().await.unwrap();
    e
}

async fn insert_remote(url: &str, title: &str) -> String {
    let v = rest(url, Method::POST, "/api/entities/Todo", json!({ "title": title, "done": false })).await;
    v["id"].as_str().unwrap().to_string()
}

async fn head(url: &str) -> u64 {
    get(url, "/__control/state").await["head"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carries_changes_between_engines() {
    let srv = server().await;
    let (a, b, _) = alice_and_bob(&srv.url).await;
    a.insert("Todo", row(json!({ "title": "from a", "done": false }))).await.unwrap();
    eventually("b to see a's insert", || b.list("Todo").iter().any(|r| r["title"] == "from a")).await;
    let id = b.list("Todo")[0]["id"].as_str().unwrap().to_string();
    rest(&srv.url, Method::PATCH, &format!("/api/entities/Todo/{id}"), json!({ "done": true })).await;
    eventually("both to see the update", || {
        [&a, &b].iter().all(|e| e.get("Todo", &id).is_some_and(|r| r["done"] == true))
    })
    .await;
    assert_eq!(b.cursor(), head(&srv.url).await);
    a.close().await;
    b.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_carries_changes_even_when_events_are_split_across_writes() {
    let srv = server().await;
    control(&srv.url, "faults", json!({ "events": { "splitSse": true }, "sseKeepaliveMs": 100 })).await;
    let e = streaming(&srv.url, None, Some(Which::Sse));
    e.start().await.unwrap();
    open_on(&e, Which::Sse).await;
    for i in 0..5 {
        insert_remote(&srv.url, &format!("r{i}")).await;
    }
    eventually("five rows over SSE", || e.list("Todo").len() == 5).await;
    assert_eq!(e.cursor(), 5);
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_and_missing_events_converge_to_the_server() {
    let srv = server().await;
    control(&srv.url, "faults", json!({ "events": { "duplicate": true, "reorder": true, "dropEvery": 5 } })).await;
    let token = login(&srv.url, "carol").await;
    let e = streaming(&srv.url, Some(&token), Some(Which::WebSocket));
    let events = record(&e);
    e.start().await.unwrap();
    open_on(&e, Which::WebSocket).await;
    // with these faults the last of 22 events arrives (swapped with the 21st);
    // events 5, 10, 15 and 20 never do: each gap is noticed and pulled
    for i in 0..22 {
        insert_remote(&srv.url, &format!("r{i}")).await;
    }
    eventually("all 22 rows", || e.list("Todo").len() == 22).await;
    eventually("the cursor at the head", || e.cursor() == 22).await;
    // events at or below the cursor, malformed frames and unknown types change nothing
    let stale = json!({ "seq": 1, "entity": "Todo", "row_id": "ghost", "kind": "insert", "data": { "title": "ghost", "done": false } });
    control(&srv.url, "emit", json!({ "text": stale.to_string() })).await;
    control(&srv.url, "emit", json!({ "text": "{not json" })).await;
    control(&srv.url, "emit", json!({ "text": "{\"type\":\"mystery\"}" })).await;
    // an event far beyond the cursor is a gap: the pull that follows does not know it
    let future = json!({ "seq": 500, "entity": "Todo", "row_id": "ghost2", "kind": "insert", "data": { "title": "x", "done": false } });
    control(&srv.url, "emit", json!({ "text": future.to_string() })).await;
    // room events pass through to their own listeners
    control(&srv.url, "emit", json!({ "text": "{\"type\":\"join\",\"room\":\"lobby\",\"user_id\":\"u1\"}" })).await;
    eventually("the frames to be counted", || e.connection().ignored >= 2).await;
    eventually("the room event", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|ev| matches!(ev, Event::Room(m) if m["room"] == "lobby" && m["type"] == "join"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(e.get("Todo", "ghost").is_none() && e.get("Todo", "ghost2").is_none());
    assert_eq!(e.list("Todo").len(), 22);
    assert_eq!(e.cursor(), 22);
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_entity_is_confirmed_by_pull_not_taken_from_the_stream() {
    let srv = server().await;
    let (a, b, b_events) = alice_and_bob(&srv.url).await;
    a.insert("Note", row(json!({ "body": "alice's secret", "userId": "alice" }))).await.unwrap();
    eventually("alice's note acknowledged", || a.mutations().is_empty()).await;
    b.insert("Todo", row(json!({ "title": "after", "done": false }))).await.unwrap();
    eventually("a to see b's todo", || a.list("Todo").len() == 1).await;
    eventually("b's cursor past alice's note", || b.cursor() >= 2).await;
    assert_eq!(a.list("Note").len(), 1);
    assert!(b.list("Note").is_empty(), "bob saw a note the server would not give him");
    let saw_note = b_events
        .lock()
        .unwrap()
        .iter()
        .any(|ev| matches!(ev, Event::Change { entities } if entities.iter().any(|x| x == "Note")));
    assert!(!saw_note, "bob's listeners heard of alice's note");
    a.close().await;
    b.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_noticed_and_replaced() {
    let srv = server().await;
    let token = login(&srv.url, "dave").await;
    control(&srv.url, "faults", json!({ "ws": { "stall": true } })).await;
    let e = streaming(&srv.url, Some(&token), Some(Which::WebSocket));
    e.start().await.unwrap();
    // the stalled socket opens, answers no ping, and is given up
    eventually("a dead connection to be detected", || {
        e.connection().last_error.is_some_and(|err| err.message.contains("ping"))
    })
    .await;
    control(&srv.url, "faults", json!({})).await;
    control(&srv.url, "drop", json!({})).await;
    open_on(&e, Which::WebSocket).await;
    insert_remote(&srv.url, "after the stall").await;
    eventually("the change over the new socket", || e.list("Todo").len() == 1).await;
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_every_connection_is_retried_within_the_backoff_envelope() {
    let srv = server().await;
    let token = login(&srv.url, "erin").await;
    control(&srv.url, "faults", json!({ "ws": { "closeAfterMs": 0 } })).await;
    let e = pinned_websocket(&srv.url, token, Duration::from_millis(100));
    e.start().await.unwrap();
    let before = get(&srv.url, "/__control/state").await["ws"]["accepted"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = get(&srv.url, "/__control/state").await["ws"]["accepted"].as_u64().unwrap() - before;
    // windows 100, 200, 400, 800, 1600, 3200 ms…: about 7 attempts in 3 s are
    // expected; 20 would need a dozen near-zero draws from windows of seconds
    assert!(attempts >= 2, "it should keep trying, made {attempts} attempts");
    assert!(attempts <= 20, "tight reconnect loop: {attempts} attempts in 3 s");
    assert!(e.connection().attempts >= 2);
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_mode_falls_back_to_sse_then_polling_and_probes_back_up() {
    let srv = server().await;
    let token = login(&srv.url, "frank").await;
    control(&srv.url, "faults", json!({ "ws": { "refuse": true }, "sseKeepaliveMs": 100 })).await;
    let mut c = config(&srv.url, None);
    c.token = Some(token);
    c.reconnect_delay = Duration::from_millis(10);
    c.poll_interval = Duration::from_millis(100);
    c.probe_interval = Duration::from_millis(1500);
    let e = Engine::new(c).unwrap();
    let events = record(&e);
    e.start().await.unwrap();
    open_on(&e, Which::Sse).await;
    insert_remote(&srv.url, "over sse").await;
    eventually("the change over SSE", || e.list("Todo").len() == 1).await;
    // SSE breaks too: polling keeps the replica fresh
    control(&srv.url, "faults", json!({ "ws": { "refuse": true }, "sse": { "refuse": true } })).await;
    control(&srv.url, "drop", json!({})).await;
    open_on(&e, Which::Poll).await;
    insert_remote(&srv.url, "while polling").await;
    eventually("the change by polling", || e.list("Todo").len() == 2).await;
    // everything is back: the probe climbs to SSE, then to WebSocket
    control(&srv.url, "faults", json!({ "sseKeepaliveMs": 100 })).await;
    open_on(&e, Which::WebSocket).await;
    let transports: Vec<Which> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|ev| match ev {
            Event::Connection(c) if c.state == ConnState::Open => Some(c.transport),
            _ => None,
        })
        .collect();
    assert!(transports.starts_with(&[Which::Sse, Which::Poll]), "{transports:?}");
    assert_eq!(transports.last(), Some(&Which::WebSocket));
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_is_refused_with_1008_and_reported_as_an_auth_error() {
    let srv = server().await;
    let e = streaming(&srv.url, Some("pylon_not_a_session"), Some(Which::WebSocket));
    let events = record(&e);
    e.start().await.unwrap();
    eventually("an auth error on the connection", || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|ev| matches!(ev, Event::Error { context: pylon_sync_engine::ErrorContext::Connection, error } if error.code() == "ERR_SYNC_AUTH"))
    })
    .await;
    let c = e.connection();
    assert_eq!(c.last_error.unwrap().code, "ERR_SYNC_AUTH");
    let text = format!("{:?}", events.lock().unwrap());
    assert!(!text.contains("pylon_not_a_session"), "the token leaked into an event");
    e.close().await;
    srv.stop().await;
}

fn topics(events: &Arc<Mutex<Vec<Event>>>) -> Vec<(String, Option<String>, Value)> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|ev| match ev {
            Event::Topic { topic, from, data } => Some((topic.clone(), from.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_topics_travel_between_engines() {
    let srv = server().await;
    let (a, b, b_events) = alice_and_bob(&srv.url).await;
    a.set_presence(Some(json!({ "x": 1 })));
    eventually("b to see a's presence", || b.presence().iter().any(|p| p.data == json!({ "x": 1 }))).await;
    let p = b.presence();
    assert_eq!(p.len(), 1, "b sees only others: {p:?}");
    assert_eq!(p[0].from.as_deref(), Some("alice"));
    assert_eq!(p[0].client_id.as_deref(), Some(a.client_id()));
    assert!(a.presence().is_empty(), "an engine does not list itself");

    assert!(a.publish_topic("chat:1", json!({ "text": "hi" })));
    eventually("b to get the topic message", || !topics(&b_events).is_empty()).await;
    assert_eq!(topics(&b_events)[0], ("chat:1".to_string(), Some("alice".to_string()), json!({ "text": "hi" })));

    // presence is re-sent after a reconnect
    control(&srv.url, "drop", json!({})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    open_on(&a, Which::WebSocket).await;
    let mut resent = false;
    for _ in 0..100 {
        let frames = get(&srv.url, "/__control/frames").await;
        let updates = frames
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["user"] == "alice" && f["frame"]["event"] == "update")
            .count();
        if updates >= 2 {
            resent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(resent, "presence was not re-sent after the reconnect");
    eventually("b still to see a", || b.presence().len() == 1).await;

    // a leaves: b hears a disconnect notice, asks around, and drops a
    a.close().await;
    eventually("a's presence to go away", || b.presence().is_empty()).await;
    b.close().await;
    srv.stop().await;
}

/// An engine that never uses presence sends no presence frame: the real
/// server relays each to every connection, slowly, and 64 engines asking
/// their peers to re-announce as they connected held the first change
/// event back by 20 s (BENCHMARKS.md). One that listens asks, now and after
/// each reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_engine_that_uses_presence_asks_its_peers_to_reannounce() {
    let srv = server().await;
    let (a, b, _) = alice_and_bob(&srv.url).await;
    let presence_frames = |user: &'static str| {
        let url = srv.url.clone();
        async move {
            let frames = get(&url, "/__control/frames").await;
            frames.as_array().unwrap().iter().filter(|f| f["user"] == user && f["frame"]["type"] == "presence").count()
        }
    };
    // both connected and following; a change still arrives over the stream
    a.insert("Todo", row(json!({ "title": "seen", "done": false }))).await.unwrap();
    eventually("b to get a's row", || b.list("Todo").len() == 1).await;
    assert_eq!(presence_frames("alice").await, 0);
    assert_eq!(presence_frames("bob").await, 0);
    b.use_presence();
    for _ in 0..100 {
        if presence_frames("bob").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(presence_frames("bob").await, 1, "bob asks once he listens");
    control(&srv.url, "drop", json!({})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    open_on(&a, Which::WebSocket).await;
    open_on(&b, Which::WebSocket).await;
    for _ in 0..100 {
        if presence_frames("bob").await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(presence_frames("bob").await, 2, "and again after a reconnect");
    assert_eq!(presence_frames("alice").await, 0, "alice never used presence");
    a.close().await;
    b.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crdt_subscriptions_are_refcounted_and_survive_reconnects() {
    let srv = server().await;
    let token = login(&srv.url, "gina").await;
    let doc = rest(&srv.url, Method::POST, "/api/entities/Doc", json!({ "title": "v1" })).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let e = streaming(&srv.url, Some(&token), Some(Which::WebSocket));
    let events = record(&e);
    e.start().await.unwrap();
    open_on(&e, Which::WebSocket).await;
    e.subscribe_crdt("Doc", &doc);
    e.subscribe_crdt("Doc", &doc);
    let binaries = |events: &Arc<Mutex<Vec<Event>>>| -> Vec<String> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|ev| match ev {
                Event::Binary(f) => {
                    let h = f.header.as_ref().unwrap();
                    assert_eq!((h.frame_type, h.entity.as_str(), h.row_id.as_str()), (0x10, "Doc", doc.as_str()));
                    Some(String::from_utf8(f.bytes[h.payload_offset..].to_vec()).unwrap())
                }
                _ => None,
            })
            .collect()
    };
    eventually("the catch-up snapshot", || binaries(&events).len() == 1).await;
    e.unsubscribe_crdt("Doc", &doc); // one subscriber left
    control(&srv.url, "drop", json!({})).await;
    eventually("a snapshot on the new socket", || binaries(&events).len() == 2).await;
    rest(&srv.url, Method::PATCH, &format!("/api/entities/Doc/{doc}"), json!({ "title": "v2" })).await;
    eventually("a frame for the update", || binaries(&events).iter().any(|p| p.contains("v2"))).await;
    e.unsubscribe_crdt("Doc", &doc);
    e.unsubscribe_crdt("Doc", &doc); // extra: a no-op
    assert!(e.crdt_subscriptions().is_empty());
    let mut kinds = Vec::new();
    for _ in 0..100 {
        let frames = get(&srv.url, "/__control/frames").await;
        kinds = frames
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["frame"]["type"].as_str().filter(|t| t.starts_with("crdt")).map(str::to_string))
            .collect();
        if kinds.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(kinds, ["crdt-subscribe", "crdt-subscribe", "crdt-unsubscribe"]);
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_flip_reopens_the_socket_with_the_new_token_and_forgets_presence() {
    let srv = server().await;
    let (alice, bob, carol) =
        (login(&srv.url, "alice").await, login(&srv.url, "bob").await, login(&srv.url, "carol").await);
    let e = streaming(&srv.url, Some(&alice), Some(Which::WebSocket));
    let other = streaming(&srv.url, Some(&carol), Some(Which::WebSocket));
    let events = record(&e);
    e.start().await.unwrap();
    other.start().await.unwrap();
    open_on(&e, Which::WebSocket).await;
    open_on(&other, Which::WebSocket).await;
    other.set_presence(Some(json!({ "here": true })));
    e.set_presence(Some(json!({ "who": "alice" })));
    eventually("alice to see carol", || e.presence().len() == 1).await;
    e.set_token(Some(bob.clone()));
    e.sync_once().await.unwrap();
    assert_eq!(e.session().unwrap().user_id.as_deref(), Some("bob"));
    let cleared = events.lock().unwrap().iter().any(|ev| matches!(ev, Event::Presence(p) if p.is_empty()));
    assert!(cleared, "the previous identity's view of presence was not dropped");
    open_on(&e, Which::WebSocket).await;
    e.publish_topic("t", json!("from the new socket"));
    let mut user = None;
    for _ in 0..100 {
        let frames = get(&srv.url, "/__control/frames").await;
        user =
            frames.as_array().unwrap().iter().rev().find(|f| f["frame"]["type"] == "topic").map(|f| f["user"].clone());
        if user.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(user, Some(json!("bob")));
    // alice's presence was not carried over to bob
    let frames = get(&srv.url, "/__control/frames").await;
    assert!(!frames.as_array().unwrap().iter().any(|f| f["user"] == "bob" && f["frame"]["data"]["who"] == "alice"));
    e.close().await;
    other.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_connection_that_stayed_up_five_seconds_resets_the_backoff() {
    let srv = server().await;
    let token = login(&srv.url, "hana").await;
    control(&srv.url, "faults", json!({ "ws": { "closeAfterMs": 5300 } })).await;
    let e = pinned_websocket(&srv.url, token, Duration::from_millis(50));
    let events = record(&e);
    e.start().await.unwrap();
    let backoffs = |events: &Arc<Mutex<Vec<Event>>>| -> Vec<u32> {
        events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|ev| match ev {
                Event::Connection(c) if c.state == ConnState::Backoff => Some(c.attempts),
                _ => None,
            })
            .collect()
    };
    for _ in 0..600 {
        if backoffs(&events).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(backoffs(&events)[..2], [1, 1], "each stable connection starts the backoff over");
    // now every connection dies at once: the window keeps growing
    control(&srv.url, "faults", json!({ "ws": { "closeAfterMs": 10 } })).await;
    control(&srv.url, "drop", json!({})).await;
    let before = backoffs(&events).len();
    eventually("three short-lived connections", || backoffs(&events).len() >= before + 4).await;
    let short = backoffs(&events)[before + 1..before + 4].to_vec();
    assert!(short.windows(2).all(|w| w[1] == w[0] + 1), "attempts must grow: {short:?}");
    e.close().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_event_stream_is_replaced() {
    let srv = server().await;
    // the stream sends its head, then nothing at all (not even keepalives)
    control(&srv.url, "faults", json!({ "sse": { "stall": true } })).await;
    let e = streaming(&srv.url, None, Some(Which::Sse));
    e.start().await.unwrap();
    eventually("the silence to be noticed", || {
        e.connection().last_error.is_some_and(|err| err.message.contains("silent"))
    })
    .await;
    control(&srv.url, "faults", json!({ "sseKeepaliveMs": 100 })).await;
    control(&srv.url, "drop", json!({})).await;
    open_on(&e, Which::Sse).await;
    insert_remote(&srv.url, "after the silence").await;
    eventually("the change over the new stream", || e.list("Todo").len() == 1).await;
    // a stream that keeps sending keepalives stays up well past the idle limit
    let accepted = || async { get(&srv.url, "/__control/state").await["sse"]["accepted"].as_u64().unwrap() };
    let before = accepted().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(accepted().await, before, "a live stream was replaced");
    assert_eq!(e.connection().state, ConnState::Open);
    e.close().await;
    srv.stop().await;
}

/// A pull the rate limiter refuses ends its round, and the engine waits out
/// the limit holding nothing: stream events that continue the cursor are
/// applied meanwhile, as the limit has nothing to do with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_keep_arriving_while_pulls_are_rate_limited() {
    let srv = server().await;
    let e = alice_on_a_checked_websocket(&srv.url).await;
    // every pull refused, with no Retry-After: the limiter's 60 s window
    control(&srv.url, "faults", json!({ "rules": [{ "path": "/api/sync/pull", "status": 429 }] })).await;
    // a write wakes a round, whose pull is refused (the write may or may not
    // have gone out before it; either way its round ends)
    e.insert("Todo", row(json!({ "title": "mine", "done": false }))).await.unwrap();
    eventually("the round's pull to be refused", || e.status().rate_limited_until.is_some()).await;
    let id = insert_remote(&srv.url, "theirs").await;
    eventually("their write, by the stream", || e.get("Todo", &id).is_some()).await;
    assert!(e.status().rate_limited_until.is_some(), "the engine is still held back from pulling");
    e.close().await;
    srv.stop().await;
}

/// A round waiting on the server does not hold the stream back: an event
/// that continues the cursor is applied while the round's pull is still
/// unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_do_not_wait_for_a_round_waiting_on_the_server() {
    let srv = server().await;
    let e = alice_on_a_checked_websocket(&srv.url).await;
    let pulls = || async { get(&srv.url, "/__control/state").await["requests"]["GET /api/sync/pull"].as_u64() };
    let before = pulls().await;
    // the next pull goes unanswered for a minute
    control(&srv.url, "faults", json!({ "rules": [{ "path": "/api/sync/pull", "holdMs": 60_000, "count": 1 }] })).await;
    let round = tokio::spawn({
        let e = e.clone();
        async move { e.sync().await }
    });
    for _ in 0..200 {
        if pulls().await != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_ne!(pulls().await, before, "the round's pull reached the server");
    let id = insert_remote(&srv.url, "theirs").await;
    eventually("their write, by the stream", || e.get("Todo", &id).is_some()).await;
    assert!(!round.is_finished(), "the round is still waiting for its pull");
    round.abort();
    e.close().await;
    srv.stop().await;
}
