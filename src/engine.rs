//! `NativeEngine`: the engine as a JS class. Reads are synchronous and only
//! touch memory; everything that waits on disk or network returns a Promise.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use parking_lot::RwLock;
use pylon_sync_engine::infinite::{Direction, InfiniteQuery};
use pylon_sync_engine::{Engine, Event, Mutation};
use serde_json::{json, Value};

use crate::convert;
use crate::error::{promise, settle, to_js, Result};
use crate::query::NativeInfiniteQuery;

/// `(bytes, header JSON or null)` for `onBinaryFrame` handlers.
type BinarySink =
    ThreadsafeFunction<FnArgs<(Buffer, Option<String>)>, (), FnArgs<(Buffer, Option<String>)>, Status, false, true>;

#[napi]
pub struct NativeEngine {
    engine: Engine,
    binary: Arc<RwLock<Option<Arc<BinarySink>>>>,
}

/// The JS shape of a queued mutation (`{ id, status, change, error? }`, as upstream).
pub fn mutation_json(m: &Mutation) -> Value {
    let mut v = json!({
        "id": m.id,
        "status": m.status.as_str(),
        "change": { "entity": m.entity, "row_id": m.row_id, "kind": m.kind.as_str(), "data": m.data },
        "attempts": m.attempts,
        "createdAt": m.created_at,
    });
    if let Some(e) = &m.error {
        v["error"] = json!(e.message);
        v["errorCode"] = json!(e.code);
        v["httpStatus"] = json!(e.status);
    }
    v
}

fn event_json(ev: &Event) -> String {
    let v = match ev {
        Event::Change { entities } => json!({ "type": "change", "entities": entities }),
        Event::Mutation { status, mutation } => {
            let mut m = mutation_json(mutation);
            m["status"] = json!(status);
            json!({ "type": "mutation", "mutation": m })
        }
        Event::Status(s) => json!({ "type": "status", "status": s }),
        Event::Error { context, error } => json!({ "type": "error", "context": context,
            "error": { "code": error.code(), "message": error.to_string(), "status": error.status(),
                       "serverCode": error.server_code() } }),
        Event::Session(s) => json!({ "type": "session", "session": s }),
        Event::Resync { reason } => json!({ "type": "resync", "reason": reason }),
        Event::Progress { entity, rows, done } => {
            json!({ "type": "progress", "entity": entity, "rows": rows, "done": done })
        }
        Event::Connection(c) => json!({ "type": "connection", "connection": c }),
        Event::Presence(peers) => json!({ "type": "presence", "peers": peers }),
        Event::Topic { topic, from, data } => json!({ "type": "topic", "topic": topic, "from": from, "data": data }),
        Event::Room(m) => json!({ "type": "room", "event": m }),
        Event::Binary(_) => unreachable!("binary frames go to their own sink"),
    };
    v.to_string()
}

#[napi]
impl NativeEngine {
    #[napi(constructor, catch_unwind)]
    pub fn new(base_url: String, options: Option<Value>) -> Result<Self> {
        let cfg = convert::config(&base_url, options.unwrap_or(Value::Null)).map_err(to_js)?;
        Ok(NativeEngine { engine: Engine::new(cfg).map_err(to_js)?, binary: Arc::new(RwLock::new(None)) })
    }

    /// Registers the one event sink (JSON strings). The function is weak: it
    /// never keeps the process alive on its own.
    #[napi(catch_unwind)]
    pub fn on_event(&self, callback: Function<String, ()>) -> Result<()> {
        let tsfn: ThreadsafeFunction<String, (), String, Status, false, true> = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()
            .map_err(|e| to_js(pylon_sync_engine::Error::InvalidArg(e.to_string())))?;
        let tsfn = Arc::new(tsfn);
        let binary = self.binary.clone();
        self.engine.set_listener(Some(Arc::new(move |ev: Event| match ev {
            Event::Binary(frame) => {
                let sink = binary.read().clone();
                if let Some(sink) = sink {
                    let header = frame.header.as_ref().map(|h| serde_json::to_string(h).expect("header serializes"));
                    sink.call(
                        FnArgs::from((Buffer::from(frame.bytes), header)),
                        ThreadsafeFunctionCallMode::NonBlocking,
                    );
                }
            }
            ev => {
                tsfn.call(event_json(&ev), ThreadsafeFunctionCallMode::NonBlocking);
            }
        })));
        Ok(())
    }

    /// Registers the sink of binary (CRDT) frames: `(bytes, headerJson | null)`. Weak, like `onEvent`.
    #[napi(catch_unwind)]
    pub fn on_binary(&self, callback: Function<FnArgs<(Buffer, Option<String>)>, ()>) -> Result<()> {
        let tsfn: BinarySink = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()
            .map_err(|e| to_js(pylon_sync_engine::Error::InvalidArg(e.to_string())))?;
        *self.binary.write() = Some(Arc::new(tsfn));
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn connection_json(&self) -> String {
        serde_json::to_string(&self.engine.connection()).expect("connection serializes")
    }

    #[napi(catch_unwind)]
    pub fn presence_json(&self) -> String {
        serde_json::to_string(&self.engine.presence()).expect("presence serializes")
    }

    #[napi(catch_unwind)]
    pub fn client_id(&self) -> String {
        self.engine.client_id().to_string()
    }

    /// `data`: any JSON value; null withdraws this engine's presence.
    #[napi(catch_unwind)]
    pub fn set_presence(&self, data: Option<Value>) {
        self.engine.set_presence(data.filter(|d| !d.is_null()));
    }

    #[napi(catch_unwind)]
    pub fn publish_topic(&self, topic: String, data: Option<Value>) -> Result<bool> {
        if topic.is_empty() {
            return Err(to_js(pylon_sync_engine::Error::InvalidArg("topic must be a non-empty string".into())));
        }
        Ok(self.engine.publish_topic(&topic, data.unwrap_or(Value::Null)))
    }

    #[napi(catch_unwind)]
    pub fn subscribe_crdt(&self, entity: String, row_id: String) -> Result<()> {
        convert::entity_and_id(&entity, &row_id).map_err(to_js)?;
        self.engine.subscribe_crdt(&entity, &row_id);
        Ok(())
    }

    #[napi(catch_unwind)]
    pub fn unsubscribe_crdt(&self, entity: String, row_id: String) -> Result<()> {
        convert::entity_and_id(&entity, &row_id).map_err(to_js)?;
        self.engine.unsubscribe_crdt(&entity, &row_id);
        Ok(())
    }

    #[napi]
    pub async fn start(&self) -> Value {
        settle(self.engine.start().await)
    }

    #[napi]
    pub async fn stop(&self) -> Value {
        self.engine.stop().await;
        settle(Ok(()))
    }

    #[napi]
    pub async fn close(&self) -> Value {
        self.engine.close().await;
        settle(Ok(()))
    }

    /// Runs one sync round now (session, writes, pull); rejects on failure.
    #[napi]
    pub async fn sync(&self) -> Value {
        settle(self.engine.sync_once().await)
    }

    #[napi(catch_unwind)]
    pub fn list_json(&self, entity: String) -> String {
        self.engine.list_json(&entity)
    }

    /// `{version, rows, gone}` since `version`, or null: read the whole list.
    #[napi(catch_unwind)]
    pub fn changes_json(&self, entity: String, version: f64) -> Option<String> {
        self.engine.changes_json(&entity, version as u64)
    }

    #[napi(catch_unwind)]
    pub fn get_json(&self, entity: String, id: String) -> Option<String> {
        self.engine.get_json(&entity, &id).map(|r| r.as_str().to_string())
    }

    /// Changes whenever the visible rows of `entity` change.
    #[napi(catch_unwind)]
    pub fn version(&self, entity: String) -> f64 {
        self.engine.entity_version(&entity) as f64
    }

    #[napi(catch_unwind)]
    pub fn entities(&self) -> Vec<String> {
        self.engine.entities()
    }

    #[napi(catch_unwind)]
    pub fn cursor(&self) -> f64 {
        self.engine.cursor() as f64
    }

    #[napi(catch_unwind)]
    pub fn status_json(&self) -> String {
        serde_json::to_string(&self.engine.status()).expect("status serializes")
    }

    #[napi(catch_unwind)]
    pub fn session_json(&self) -> String {
        serde_json::to_string(&self.engine.session()).expect("session serializes")
    }

    #[napi(catch_unwind)]
    pub fn mutations_json(&self) -> String {
        Value::Array(self.engine.mutations().iter().map(mutation_json).collect()).to_string()
    }

    #[napi(catch_unwind)]
    pub fn set_token(&self, token: Option<Value>) -> Result<()> {
        self.engine.set_token(convert::token(token).map_err(to_js)?);
        Ok(())
    }

    // Writes are synchronous calls that return a promise: the engine puts
    // the write in line during the call, so writes keep the order of the calls.

    #[napi(catch_unwind, ts_return_type = "Promise<any>")]
    pub fn insert<'e>(&self, env: &'e Env, entity: String, data: Value) -> Result<PromiseRaw<'e, Value>> {
        let write = convert::object(data, "data").map(|data| self.engine.insert(&entity, data));
        promise(env, async move { write?.await })
    }

    #[napi(catch_unwind, ts_return_type = "Promise<any>")]
    pub fn update<'e>(&self, env: &'e Env, entity: String, id: String, patch: Value) -> Result<PromiseRaw<'e, Value>> {
        let write = convert::object(patch, "patch").map(|patch| self.engine.update(&entity, &id, patch));
        promise(env, async move { write?.await })
    }

    #[napi(catch_unwind, ts_return_type = "Promise<any>")]
    pub fn delete<'e>(&self, env: &'e Env, entity: String, id: String) -> Result<PromiseRaw<'e, Value>> {
        promise(env, self.engine.delete(&entity, &id))
    }

    #[napi]
    pub async fn remove_mutation(&self, id: String) -> Value {
        settle(self.engine.remove_mutation(&id).await)
    }

    #[napi]
    pub async fn retry_mutation(&self, id: String) -> Value {
        settle(self.engine.retry_mutation(&id).await)
    }

    #[napi]
    pub async fn notify_session_changed(&self) -> Value {
        settle(self.engine.notify_session_changed().await)
    }

    #[napi]
    pub async fn reset_replica(&self) -> Value {
        settle(self.engine.reset_replica().await)
    }

    #[napi]
    pub async fn hydrate(&self, data: Value) -> Value {
        match convert::hydration(data) {
            Ok(h) => settle(self.engine.hydrate(h).await),
            Err(e) => settle::<()>(Err(e)),
        }
    }

    #[napi(catch_unwind)]
    pub fn create_infinite_query(
        &self,
        entity: String,
        page_size: Option<f64>,
        order_field: Option<String>,
        descending: Option<bool>,
    ) -> Result<NativeInfiniteQuery> {
        let size = page_size.unwrap_or(20.0);
        if !size.is_finite() || size.fract() != 0.0 || size < 1.0 {
            return Err(to_js(pylon_sync_engine::Error::InvalidArg(format!(
                "pageSize must be a positive integer, got {size}"
            ))));
        }
        let dir = if descending.unwrap_or(false) { Direction::Desc } else { Direction::Asc };
        let q = InfiniteQuery::new(self.engine.clone(), &entity, size as usize, order_field.map(|f| (f, dir)))
            .map_err(to_js)?;
        Ok(NativeInfiniteQuery::new(q))
    }
}
