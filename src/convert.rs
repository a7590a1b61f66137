//! Checked conversions of the JS-facing arguments. Everything arrives as a
//! JSON value so that a wrong type becomes `ERR_SYNC_INVALID_ARG` with a
//! message naming the option, never a generic napi error.

use std::path::PathBuf;
use std::time::Duration;

use napi_derive::napi;
use pylon_sync_engine::{Config, Hydration, Row, Timeouts, Which};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use pylon_sync_engine::{Error, Result};

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArg(msg.into())
}

pub fn object(v: Value, what: &str) -> Result<Row> {
    match v {
        Value::Object(m) => {
            if m.keys().any(|k| k == "__proto__" || k == "constructor" || k == "prototype") {
                return Err(invalid(format!("{what} must not have a __proto__, constructor or prototype key")));
            }
            Ok(m)
        }
        other => Err(invalid(format!("{what} must be an object, got {}", type_name(&other)))),
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `createSyncEngine`'s options, all but `storage` (which JavaScript keeps):
/// their names, types and documentation are defined here once, checked in
/// [`config`], and generated into `index.d.ts`.
#[napi(object)]
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineOptions {
    /// "auto" (default): WebSocket, falling back to SSE and then polling when
    /// a transport cannot connect or keeps dying, and probing back up later.
    /// Any other value pins that transport.
    #[napi(ts_type = "'auto' | 'websocket' | 'sse' | 'poll'")]
    pub transport: Option<String>,
    /// WebSocket URL (default: the base URL's host, port + 1).
    pub ws_url: Option<String>,
    /// SSE URL (default: the base URL's host, port + 2, path /events).
    pub sse_url: Option<String>,
    /// ms between WebSocket pings (default 15000); SSE counts as dead after
    /// 2 × this + pingTimeout of silence.
    pub ping_interval: Option<f64>,
    /// ms a ping may go unanswered before the connection is replaced (default 10000).
    pub ping_timeout: Option<f64>,
    /// ms before a better transport is tried again after falling back
    /// (default 60000, doubling up to 10 min).
    pub probe_interval: Option<f64>,
    /// ms between polls (default 1000).
    pub poll_interval: Option<f64>,
    /// Base of the full-jitter retry backoff, ms (default 1000).
    pub reconnect_delay: Option<f64>,
    /// PEM of certificate authorities to trust for https:// and wss://
    /// besides the web roots (a private or self-signed server).
    pub ca: Option<String>,
    /// ms an HTTP request may take, answer included (default 30000), or
    /// `{ connect, request }` (connect default 10000). A server that accepts
    /// connections but never answers fails the round, which is retried.
    #[napi(ts_type = "number | TimeoutOptions")]
    pub timeout: Option<Value>,
    /// Bearer token; overrides storage.
    pub token: Option<String>,
    /// Keep the replica and queued writes in SQLite (default true).
    pub persist: Option<bool>,
    /// SQLite file; default `$XDG_DATA_HOME/pylon-sync/<appName>/<host_port>.db`.
    pub db_path: Option<String>,
    pub app_name: Option<String>,
    /// Expression indexes on the entity views' columns, by entity: each
    /// entry is a field, or the fields of one index in order
    /// (`{ Todo: ['done', ['userId', 'updatedAt']] }`). Queries that filter
    /// or sort on them read only the rows they need.
    #[napi(ts_type = "Record<string, Array<string | string[]>>")]
    pub indexes: Option<Value>,
}

fn millis(key: &str, value: Option<f64>, default: u64, min: u64) -> Result<Duration> {
    match value {
        None => Ok(Duration::from_millis(default)),
        Some(f) if f.is_finite() && f >= min as f64 && f <= 86_400_000.0 => Ok(Duration::from_millis(f as u64)),
        Some(f) => Err(invalid(format!("{key} must be a number of milliseconds between {min} and 86400000, got {f}"))),
    }
}

/// `timeout` given as its two parts, in ms.
#[napi(object)]
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOptions {
    /// To open the connection, TLS included (default 10000).
    pub connect: Option<f64>,
    /// For the whole exchange, answer included (default 30000).
    pub request: Option<f64>,
}

/// A `timeout` option: ms for each request, or `{ connect, request }`.
fn timeouts(value: Option<Value>) -> Result<Timeouts> {
    let d = Timeouts::default();
    let ms = |key, v: Option<f64>, default: Duration| millis(key, v, default.as_millis() as u64, 1);
    match value {
        None | Some(Value::Null) => Ok(d),
        Some(Value::Number(n)) => Ok(Timeouts { request: ms("timeout", n.as_f64(), d.request)?, ..d }),
        Some(v @ Value::Object(_)) => {
            let t: TimeoutOptions = serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                invalid(format!("timeout.{path}: {}", e.into_inner().to_string().replace("f64", "a number")))
            })?;
            Ok(Timeouts {
                connect: ms("timeout.connect", t.connect, d.connect)?,
                request: ms("timeout.request", t.request, d.request)?,
            })
        }
        Some(other) => Err(invalid(format!(
            "timeout must be a number of milliseconds or {{ connect, request }}, got {}",
            type_name(&other)
        ))),
    }
}

/// The options of one direct call (`fetchList`, `insert`, … `getServerData`).
#[napi(object)]
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectOptions {
    /// Bearer token.
    pub token: Option<String>,
    /// PEM of extra certificate authorities to trust.
    pub ca: Option<String>,
    /// As the engine's `timeout`: ms for the request, or `{ connect, request }`.
    #[napi(ts_type = "number | TimeoutOptions")]
    pub timeout: Option<Value>,
}

impl DirectOptions {
    /// The options of one call, read, with their certificate authorities
    /// and timeouts checked.
    pub fn read(opts: Option<Value>) -> Result<(DirectOptions, Timeouts)> {
        let mut opts: DirectOptions = options(opts.unwrap_or(Value::Null))?;
        opts.ca = opts.ca.filter(|s| !s.is_empty());
        let t = timeouts(opts.timeout.take())?;
        Ok((opts, t))
    }
}

/// An options object read into its typed struct: a wrong type names the
/// option, an unknown one is refused.
pub fn options<T: DeserializeOwned>(opts: Value) -> Result<T> {
    let opts = match opts {
        Value::Null => Value::Object(Row::new()),
        opts => Value::Object(object(opts, "options")?),
    };
    serde_path_to_error::deserialize(opts).map_err(|e| {
        let (path, inner) = (e.path().to_string(), e.into_inner().to_string());
        match inner.strip_prefix("unknown field") {
            Some(rest) => invalid(format!("unknown option{rest}")),
            None => invalid(format!("{path}: {}", inner.replace("expected f64", "expected a number"))),
        }
    })
}

/// `createSyncEngine(baseUrl, options)` → engine config. `persist` defaults to
/// true and then uses `default_db_path`.
pub fn config(base_url: &str, opts: Value) -> Result<Config> {
    let opts: EngineOptions = options(opts)?;
    let mut cfg = Config::new(base_url);
    cfg.transport = match opts.transport.as_deref() {
        None | Some("auto") => None,
        Some(t) => Some(Which::named(t).ok_or_else(|| {
            let names: Vec<String> = ["auto"].into_iter().chain(Which::names()).map(|n| format!("{n:?}")).collect();
            let (last, rest) = names.split_last().expect("auto is there");
            invalid(format!("transport must be {} or {last}, got {t:?}", rest.join(", ")))
        })?),
    };
    cfg.ws_url = stream_url("wsUrl", opts.ws_url, &["ws", "wss"])?;
    cfg.sse_url = stream_url("sseUrl", opts.sse_url, &["http", "https"])?;
    cfg.liveness.ping_interval = millis("pingInterval", opts.ping_interval, 15_000, 10)?;
    cfg.liveness.ping_timeout = millis("pingTimeout", opts.ping_timeout, 10_000, 10)?;
    cfg.probe_interval = millis("probeInterval", opts.probe_interval, 60_000, 10)?;
    cfg.ca = opts.ca.filter(|s| !s.is_empty());
    cfg.timeouts = timeouts(opts.timeout)?;
    cfg.poll_interval = millis("pollInterval", opts.poll_interval, 1000, 10)?;
    cfg.reconnect_delay = millis("reconnectDelay", opts.reconnect_delay, 1000, 1)?;
    cfg.token = opts.token;
    if let Some(name) = opts.app_name {
        cfg.app_name = name;
    }
    cfg.indexes = indexes(opts.indexes)?;
    cfg.db_path = match (opts.persist.unwrap_or(true), opts.db_path) {
        (false, _) => None,
        (true, Some(p)) if p.is_empty() => return Err(invalid("dbPath must be a path, got an empty string")),
        (true, Some(p)) => Some(PathBuf::from(p)),
        (true, None) => Some(default_db_path(&cfg.app_name, base_url)?),
    };
    Ok(cfg)
}

/// The `indexes` option: `{ Entity: [field | [field, …], …] }`.
fn indexes(value: Option<Value>) -> Result<pylon_sync_engine::sql::Indexes> {
    let shape =
        || invalid("indexes must be an object of arrays of field names, e.g. { Todo: ['done', ['userId', 'title']] }");
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(Default::default()) };
    let Value::Object(by_entity) = value else { return Err(shape()) };
    let name = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    by_entity
        .into_iter()
        .map(|(entity, list)| {
            let Value::Array(list) = list else { return Err(shape()) };
            let list = list
                .iter()
                .map(|index| match index {
                    Value::Array(fields) if !fields.is_empty() => fields.iter().map(name).collect::<Option<Vec<_>>>(),
                    one => name(one).map(|f| vec![f]),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(shape)?;
            Ok((entity, list))
        })
        .collect()
}

fn stream_url(key: &str, url: Option<String>, schemes: &[&str]) -> Result<Option<String>> {
    let Some(url) = url else { return Ok(None) };
    let ok = url.split_once("://").is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if !ok {
        let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(invalid(format!("{key} must be a {} URL, got {url:?}", schemes.join(" or "))));
    }
    Ok(Some(url))
}

/// `$XDG_DATA_HOME/pylon-sync/<app>/<host>_<port>[_<path>].db` (else
/// `~/.local/share/…`; `%LOCALAPPDATA%` on Windows,
/// `~/Library/Application Support` on macOS): one file per app and server,
/// so replicas of different servers never mix.
pub fn default_db_path(app: &str, base_url: &str) -> Result<PathBuf> {
    let root = dirs::data_local_dir()
        .ok_or_else(|| invalid("no home directory to keep the replica in; pass dbPath or persist: false"))?;
    // from the parsed URL, so credentials in it (`user:pass@`) never reach the file name
    let url = pylon_sync_engine::api::parse_base(base_url)?;
    let host = url.host_str().expect("parse_base requires a host");
    let port = url.port_or_known_default().map(|p| format!("_{p}")).unwrap_or_default();
    let path = url.path().trim_matches('/').replace('/', "_");
    let path = if path.is_empty() { path } else { format!("_{path}") };
    let server: String = format!("{host}{port}{path}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    let app: String = app.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    Ok(root.join("pylon-sync").join(app).join(format!("{server}.db")))
}

/// `{ entities: { E: [rows] }, cursor: { last_seq } }`
pub fn hydration(v: Value) -> Result<Hydration> {
    serde_json::from_value(v).map_err(|e| {
        invalid(format!("hydrate expects {{ entities: {{ Entity: [rows] }}, cursor: {{ last_seq }} }}: {e}"))
    })
}

/// An entity name and row id as the server's paths and frames accept them.
pub fn entity_and_id(entity: &str, id: &str) -> Result<()> {
    pylon_sync_engine::api::check_entity(entity)?;
    pylon_sync_engine::api::check_id(id)
}

pub fn token(v: Option<Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("token must be a string or null, got {}", type_name(&other)))),
    }
}
