//! Where the engine's `tracing` records go: to stderr, filtered by
//! `PYLON_SYNC_LOG` (EnvFilter syntax, default `warn`), and to each
//! engine's `logger` option.
//!
//! Owns the process's one subscriber, installed before the first engine is
//! made (a span made before it would never be recorded), and the loggers by
//! engine (`Engine::log_id`, a field of the engine's span). A logger is a
//! weak threadsafe function with a bounded queue called without blocking:
//! logging never waits for JavaScript, never keeps the process alive, and
//! drops records when JavaScript falls behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Once};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use parking_lot::RwLock;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt};
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Records a logger may have waiting for the JS thread; more are dropped.
pub const QUEUE: usize = 1024;

/// `(level, message, fields)`.
pub type LogFn = ThreadsafeFunction<
    FnArgs<(String, String, Value)>,
    (),
    FnArgs<(String, String, Value)>,
    Status,
    false,
    true,
    QUEUE,
>;

struct Logger {
    call: Arc<LogFn>,
    level: Level,
}

static LOGGERS: LazyLock<RwLock<HashMap<u64, Logger>>> = LazyLock::new(Default::default);

/// The most verbose level any logger takes (0: none), so records no logger
/// wants cost one load.
static MOST: AtomicU8 = AtomicU8::new(0);

fn rank(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The level a `logLevel` option names.
pub fn level(name: &str) -> Option<Level> {
    match name {
        "error" => Some(Level::ERROR),
        "warn" => Some(Level::WARN),
        "info" => Some(Level::INFO),
        "debug" => Some(Level::DEBUG),
        "trace" => Some(Level::TRACE),
        _ => None,
    }
}

/// Installs the subscriber, once per process. A `PYLON_SYNC_LOG` that does
/// not parse is said once on stderr, and `warn` is used.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let env = match std::env::var("PYLON_SYNC_LOG") {
            Ok(text) => EnvFilter::builder().parse(&text).unwrap_or_else(|e| {
                eprintln!("pylon-sync: PYLON_SYNC_LOG={text:?} is not a filter ({e}); logging warnings only");
                EnvFilter::new("warn")
            }),
            Err(_) => EnvFilter::new("warn"),
        };
        // the engine's span is kept even where its level is filtered out, so
        // every line says which engine (replica) it is from
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(env.or(filter_fn(|m| m.is_span() && m.name() == "engine")));
        // another subscriber installed first (an embedding application's) wins
        let _ = tracing_subscriber::registry().with(stderr).with(ToLoggers.with_filter(ForLoggers)).try_init();
    });
}

/// Sends `engine`'s records at `level` and above to `call`.
pub fn register(engine: u64, call: LogFn, level: Level) {
    let mut loggers = LOGGERS.write();
    loggers.insert(engine, Logger { call: Arc::new(call), level });
    refresh(&loggers);
}

pub fn unregister(engine: u64) {
    let mut loggers = LOGGERS.write();
    if loggers.remove(&engine).is_some() {
        refresh(&loggers);
    }
}

fn refresh(loggers: &HashMap<u64, Logger>) {
    MOST.store(loggers.values().map(|l| rank(l.level)).max().unwrap_or(0), Ordering::Relaxed);
}

/// Lets through the engines' spans, and records some logger takes.
struct ForLoggers;

impl<S> Filter<S> for ForLoggers {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if meta.is_span() {
            meta.name() == "engine"
        } else {
            rank(*meta.level()) <= MOST.load(Ordering::Relaxed)
        }
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // loggers come and go: ask each time
        tracing::subscriber::Interest::sometimes()
    }
}

/// The `id` of an engine's span, kept with the span.
struct EngineId(u64);

/// Hands records to the logger of the engine they are from.
struct ToLoggers;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ToLoggers {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let (Some(Value::Number(n)), Some(span)) = (fields.map.get("id"), ctx.span(id)) {
            if let Some(n) = n.as_u64() {
                span.extensions_mut().insert(EngineId(n));
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let Some(engine) = ctx
            .event_scope(event)
            .and_then(|mut scope| scope.find_map(|span| span.extensions().get::<EngineId>().map(|e| e.0)))
        else {
            return;
        };
        let meta = event.metadata();
        let call = match LOGGERS.read().get(&engine) {
            Some(l) if meta.level() <= &l.level => l.call.clone(),
            _ => return,
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.map.insert("target".into(), Value::String(meta.target().to_string()));
        let level = meta.level().as_str().to_ascii_lowercase();
        let args = FnArgs::from((level, fields.message, Value::Object(fields.map)));
        // a full queue drops the record: logging never waits
        call.call(args, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

/// A record's message and fields as JSON.
#[derive(Default)]
struct Fields {
    message: String,
    map: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.map.insert(field.name().to_string(), value);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}
