//! `NativeEngine`: the engine as a JS class. Reads are synchronous and only
//! touch memory; everything that waits on disk or network returns a Promise.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use parking_lot::RwLock;
use pylon_sync_engine::infinite::{Direction, InfiniteQuery};
use pylon_sync_engine::{Engine, Event};
use serde_json::Value;
use tracing::Instrument;

use crate::convert;
use crate::error::{settle, to_js, Result};
use crate::mailbox::Mailbox;
use crate::outcomes::Outcomes;
use crate::query::NativeInfiniteQuery;
use crate::text::JsonText;
use crate::types;

/// `(bytes, header JSON or null)` for `onBinaryFrame` handlers.
type BinarySink =
    ThreadsafeFunction<FnArgs<(Buffer, Option<String>)>, (), FnArgs<(Buffer, Option<String>)>, Status, false, true>;

#[napi]
pub struct NativeEngine {
    engine: Engine,
    binary: Arc<RwLock<Option<Arc<BinarySink>>>>,
    outcomes: Arc<Outcomes>,
    list_parts: Arc<Mailbox<types::ListPart>>,
}

impl NativeEngine {
    /// The engine's span: work driven from JavaScript logs inside it, as
    /// the engine's own tasks do.
    fn span(&self) -> tracing::Span {
        self.engine.span().clone()
    }

    /// A write's outcome: at once when `now` and the engine committed it on
    /// this thread, else null, and later among the outcomes (`ticket`).
    fn written<T: serde::Serialize + Send + 'static>(
        &self,
        now: Option<bool>,
        ticket: u32,
        write: impl std::future::Future<Output = pylon_sync_engine::Result<T>> + Send + 'static,
    ) -> Value {
        let mut write = Box::pin(write.instrument(self.span()));
        if now == Some(true) && self.engine.commit_now() {
            // answered: ready at its first poll (the runtime entered all the same)
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(out) =
                within_runtime_if_available(|| std::future::Future::poll(write.as_mut(), &mut cx))
            {
                return settle(out);
            }
        }
        napi::bindgen_prelude::spawn(self.outcomes.clone().answer(ticket, write));
        Value::Null
    }
}

impl Drop for NativeEngine {
    fn drop(&mut self) {
        crate::log::unregister(self.engine.log_id());
    }
}

#[napi]
impl NativeEngine {
    #[napi(constructor, catch_unwind)]
    pub fn new(base_url: String, #[napi(ts_arg_type = "EngineOptions | null")] options: Option<Value>) -> Result<Self> {
        crate::log::init();
        let cfg = convert::config(&base_url, options.unwrap_or(Value::Null)).map_err(to_js)?;
        Ok(NativeEngine {
            engine: Engine::new(cfg).map_err(to_js)?,
            binary: Arc::new(RwLock::new(None)),
            outcomes: Arc::default(),
            list_parts: Arc::default(),
        })
    }

    /// Registers the one event sink. The function is weak: it never keeps
    /// the process alive on its own.
    #[napi(catch_unwind)]
    pub fn on_event(&self, callback: Function<types::Event, ()>) -> Result<()> {
        let tsfn: ThreadsafeFunction<types::Event, (), types::Event, Status, false, true> = callback
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
                if let Some(ev) = types::Event::of(&ev) {
                    tsfn.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
                }
            }
        })));
        Ok(())
    }

    /// Sends this engine's log records at `level` and above to `callback(level, message, fields)`.
    /// Weak, and bounded: records JavaScript has not taken yet are dropped, never waited for.
    #[napi(
        catch_unwind,
        ts_args_type = "callback: (level: 'error' | 'warn' | 'info' | 'debug' | 'trace', message: string, fields: Record<string, unknown>) => void, level: 'error' | 'warn' | 'info' | 'debug' | 'trace'"
    )]
    pub fn set_logger(&self, callback: Function<FnArgs<(String, String, Value)>, ()>, level: String) -> Result<()> {
        let level = crate::log::level(&level).ok_or_else(|| {
            to_js(pylon_sync_engine::Error::InvalidArg(format!(
                "logLevel must be 'error', 'warn', 'info', 'debug' or 'trace', got {level:?}"
            )))
        })?;
        let tsfn: crate::log::LogFn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .max_queue_size::<{ crate::log::QUEUE }>()
            .build()
            .map_err(|e| to_js(pylon_sync_engine::Error::InvalidArg(e.to_string())))?;
        crate::log::register(self.engine.log_id(), tsfn, level);
        Ok(())
    }

    /// Logs `message` at `warn` as this engine's (an `error` event nobody listens for).
    #[napi(catch_unwind)]
    pub fn warn(&self, message: String) {
        self.engine.warn(&message);
    }

    /// The engine's counters (monotonic) and its queue as they stand.
    #[napi(catch_unwind)]
    pub fn diagnostics(&self) -> types::Diagnostics {
        (&self.engine.diagnostics()).into()
    }

    /// Registers the sink of binary (CRDT) frames: `(bytes, headerJson | null)`. Weak, like `onEvent`.
    #[napi(catch_unwind, ts_args_type = "callback: (bytes: Uint8Array, header: string | null) => void")]
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
    pub fn connection(&self) -> types::Connection {
        (&self.engine.connection()).into()
    }

    #[napi(catch_unwind)]
    pub fn presence(&self) -> Vec<types::Peer> {
        self.engine.presence().iter().map(types::Peer::from).collect()
    }

    /// The application listens for presence: peers are asked to re-announce.
    #[napi(catch_unwind)]
    pub fn use_presence(&self) {
        self.engine.use_presence()
    }

    #[napi(catch_unwind)]
    pub fn client_id(&self) -> String {
        self.engine.client_id().to_string()
    }

    /// `data`: any JSON value; null withdraws this engine's presence.
    #[napi(catch_unwind)]
    pub fn set_presence(&self, #[napi(ts_arg_type = "unknown")] data: Option<Value>) {
        self.engine.set_presence(data.filter(|d| !d.is_null()));
    }

    #[napi(catch_unwind)]
    pub fn publish_topic(&self, topic: String, #[napi(ts_arg_type = "unknown")] data: Option<Value>) -> Result<bool> {
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

    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn start(&self) -> Value {
        settle(self.engine.start().instrument(self.span()).await)
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn stop(&self) -> Value {
        self.engine.stop().instrument(self.span()).await;
        settle(Ok(()))
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    /// `flushMs`: first send what is queued, for at most this long.
    pub async fn close(&self, flush_ms: Option<f64>) -> Value {
        let close = async {
            if let Some(ms) = flush_ms {
                self.engine.flush_within(Duration::from_millis(ms.max(0.0) as u64)).await;
            }
            self.engine.close().await;
        };
        close.instrument(self.span()).await;
        crate::log::unregister(self.engine.log_id());
        settle(Ok(()))
    }

    /// Runs one sync round now (session, writes, pull); rejects on failure.
    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn sync(&self) -> Value {
        settle(self.engine.sync().instrument(self.span()).await)
    }

    /// Runs one read-only SQL statement over the replica; its rows as JSON text.
    #[napi(ts_return_type = "Promise<{ ok: true; value: string } | { ok: false; error: ErrorInfo }>")]
    pub async fn query_json(&self, sql: String, #[napi(ts_arg_type = "unknown")] params: Option<Value>) -> Value {
        settle(self.engine.query(sql, params.unwrap_or(Value::Null)).instrument(self.span()).await)
    }

    /// The entities a statement reads (null: any change may change its rows).
    #[napi(ts_return_type = "Promise<{ ok: true; value: string[] | null } | { ok: false; error: ErrorInfo }>")]
    pub async fn entities_read(&self, sql: String) -> Value {
        settle(self.engine.entities_read(sql).instrument(self.span()).await)
    }

    #[napi(catch_unwind, ts_return_type = "string")]
    pub fn list_json(&self, entity: String) -> JsonText {
        JsonText(self.engine.list_json(&entity))
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
    pub fn status(&self) -> types::SyncStatus {
        (&self.engine.status()).into()
    }

    /// Null before the session is known.
    #[napi(catch_unwind)]
    pub fn session(&self) -> Option<types::Session> {
        self.engine.session().as_ref().map(types::Session::from)
    }

    /// Queued writes (pending and failed), oldest first.
    #[napi(catch_unwind)]
    pub fn mutations(&self) -> Vec<types::MutationInfo> {
        self.engine.mutations().iter().map(types::MutationInfo::from).collect()
    }

    #[napi(catch_unwind)]
    pub fn set_token(&self, #[napi(ts_arg_type = "unknown")] token: Option<Value>) -> Result<()> {
        let token = convert::token(token).map_err(to_js)?;
        self.span().in_scope(|| self.engine.set_token(token));
        Ok(())
    }

    // Writes are synchronous calls that return a promise: the engine puts
    // the write in line during the call, so writes keep the order of the calls.
    // `now` (the first write of a turn of the event loop) lets it commit on
    // this thread when the database is free: the outcome comes back at once,
    // with no hop to a blocking thread and back (see `Engine::commit_now`).

    #[napi(catch_unwind, ts_return_type = "{ ok: true; value: string } | { ok: false; error: ErrorInfo } | null")]
    pub fn insert(
        &self,
        entity: String,
        #[napi(ts_arg_type = "unknown")] data: Value,
        now: Option<bool>,
        ticket: u32,
    ) -> Value {
        let write = convert::object(data, "data").map(|data| self.engine.insert(&entity, data));
        self.written(now, ticket, async move { write?.await })
    }

    #[napi(catch_unwind, ts_return_type = "{ ok: true; value: null } | { ok: false; error: ErrorInfo } | null")]
    pub fn update(
        &self,
        entity: String,
        id: String,
        #[napi(ts_arg_type = "unknown")] patch: Value,
        now: Option<bool>,
        ticket: u32,
    ) -> Value {
        let write = convert::object(patch, "patch").map(|patch| self.engine.update(&entity, &id, patch));
        self.written(now, ticket, async move { write?.await })
    }

    #[napi(catch_unwind, ts_return_type = "{ ok: true; value: null } | { ok: false; error: ErrorInfo } | null")]
    pub fn delete(&self, entity: String, id: String, now: Option<bool>, ticket: u32) -> Value {
        self.written(now, ticket, self.engine.delete(&entity, &id))
    }

    /// Registers the wake-up for writes' outcomes: `callback()` when some
    /// wait to be taken (`takeOutcomes`). Weak, like `onEvent`.
    #[napi(catch_unwind)]
    pub fn on_outcomes(&self, callback: Function<(), ()>) -> Result<()> {
        self.outcomes.set_wake(callback).map_err(|e| to_js(pylon_sync_engine::Error::InvalidArg(e.to_string())))
    }

    /// The outcomes of writes answered since the last call, as `[ticket, outcome]`.
    #[napi(ts_return_type = "Array<[number, { ok: true; value: string | null } | { ok: false; error: ErrorInfo }]>")]
    pub fn take_outcomes(&self) -> Value {
        self.outcomes.take_json()
    }

    /// Hands the stored rows of `entities` (every entity when null) to
    /// JavaScript as the first load reads them, so they are parsed while
    /// the rest loads: `callback()` when parts wait to be taken
    /// (`takeListParts`). Weak, like `onEvent`.
    #[napi(catch_unwind)]
    pub fn preload(&self, entities: Option<Vec<String>>, callback: Function<(), ()>) -> Result<()> {
        self.list_parts.set_wake(callback).map_err(|e| to_js(pylon_sync_engine::Error::InvalidArg(e.to_string())))?;
        let parts = self.list_parts.clone();
        self.engine.preload_lists(pylon_sync_engine::ListParts {
            entities: entities.map(|e| e.into_iter().collect()),
            sink: Box::new(move |entity, json| {
                parts.push(types::ListPart { entity: entity.to_string(), json: JsonText(json) })
            }),
        });
        Ok(())
    }

    /// The parts handed out since the last call, in the order they were read.
    #[napi(catch_unwind)]
    pub fn take_list_parts(&self) -> Vec<types::ListPart> {
        self.list_parts.take()
    }

    /// The entities whose parts make their list at the version given, once
    /// the first load is over (null before: the preload goes on). Every
    /// part was handed out before this answers.
    #[napi(catch_unwind)]
    pub fn take_preloaded(&self) -> Option<Vec<types::Preloaded>> {
        let preloaded = self.engine.take_preloaded()?;
        Some(
            preloaded
                .into_iter()
                .map(|(entity, version)| types::Preloaded { entity, version: version as f64 })
                .collect(),
        )
    }

    /// Ends the preload: nothing more is handed out, what waits is dropped,
    /// and the wake-up is let go.
    #[napi(catch_unwind)]
    pub fn end_preload(&self) {
        self.engine.end_preload();
        self.list_parts.close();
    }

    /// Resolves when the write (a mutation id, or a row id: its last write) is acknowledged.
    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn settled(&self, id: String) -> Value {
        settle(self.engine.settled(&id).instrument(self.span()).await)
    }

    /// Resolves once every write queued before the call is acknowledged and pulled past.
    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn caught_up(&self) -> Value {
        settle(self.engine.caught_up().instrument(self.span()).await)
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: boolean } | { ok: false; error: ErrorInfo }>")]
    pub async fn remove_mutation(&self, id: String) -> Value {
        settle(self.engine.remove_mutation(&id).instrument(self.span()).await)
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn retry_mutation(&self, id: String) -> Value {
        settle(self.engine.retry_mutation(&id).instrument(self.span()).await)
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: Session | null } | { ok: false; error: ErrorInfo }>")]
    pub async fn notify_session_changed(&self) -> Value {
        settle(self.engine.notify_session_changed().instrument(self.span()).await)
    }

    #[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
    pub async fn reset_replica(&self) -> Value {
        settle(self.engine.reset_replica().instrument(self.span()).await)
    }

    /// Shows the rows at once; returns the entities shown (stored at `start()`).
    #[napi(catch_unwind)]
    pub fn hydrate(&self, #[napi(ts_arg_type = "unknown")] data: Value) -> Result<Vec<String>> {
        let h = convert::hydration(data).map_err(to_js)?;
        self.span().in_scope(|| self.engine.hydrate(h)).map_err(to_js)
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
