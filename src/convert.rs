//! Checked conversions of the JS-facing arguments. Everything arrives as a
//! JSON value so that a wrong type becomes `ERR_SYNC_INVALID_ARG` with a
//! message naming the option, never a generic napi error.

use std::path::PathBuf;
use std::time::Duration;

use pylon_sync_engine::{Config, Hydration, Row, Transport};
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
        Value::Null => Ok(Row::new()),
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

fn millis(opts: &Row, key: &str, default: u64, min: u64) -> Result<Duration> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(Duration::from_millis(default)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= min as f64 && f <= 86_400_000.0 => Ok(Duration::from_millis(f as u64)),
            _ => Err(invalid(format!("{key} must be a number of milliseconds between {min} and 86400000, got {n}"))),
        },
        Some(other) => Err(invalid(format!("{key} must be a number, got {}", type_name(other)))),
    }
}

fn string<'a>(opts: &'a Row, key: &str) -> Result<Option<&'a str>> {
    match opts.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("{key} must be a string, got {}", type_name(other)))),
    }
}

const KNOWN: &[&str] = &[
    "transport",
    "wsUrl",
    "sseUrl",
    "pollInterval",
    "reconnectDelay",
    "pingInterval",
    "pingTimeout",
    "probeInterval",
    "ca",
    "token",
    "persist",
    "appName",
    "storage",
    "dbPath",
];

/// `createSyncEngine(baseUrl, options)` → engine config. `persist` defaults to
/// true and then uses `default_db_path`.
pub fn config(base_url: &str, opts: Value) -> Result<Config> {
    let opts = object(opts, "options")?;
    if let Some(k) = opts.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(format!("unknown option {k:?}")));
    }
    let mut cfg = Config::new(base_url);
    cfg.transport = match string(&opts, "transport")? {
        None | Some("auto") => Transport::Auto,
        Some("websocket") => Transport::WebSocket,
        Some("sse") => Transport::Sse,
        Some("poll") => Transport::Poll,
        Some(t) => {
            return Err(invalid(format!("transport must be \"auto\", \"websocket\", \"sse\" or \"poll\", got {t:?}")))
        }
    };
    cfg.ws_url = stream_url(&opts, "wsUrl", &["ws", "wss"])?;
    cfg.sse_url = stream_url(&opts, "sseUrl", &["http", "https"])?;
    cfg.liveness.ping_interval = millis(&opts, "pingInterval", 15_000, 10)?;
    cfg.liveness.ping_timeout = millis(&opts, "pingTimeout", 10_000, 10)?;
    cfg.probe_interval = millis(&opts, "probeInterval", 60_000, 10)?;
    cfg.ca = ca(&opts)?;
    cfg.poll_interval = millis(&opts, "pollInterval", 1000, 10)?;
    cfg.reconnect_delay = millis(&opts, "reconnectDelay", 1000, 1)?;
    cfg.token = string(&opts, "token")?.map(str::to_string);
    if let Some(name) = string(&opts, "appName")? {
        cfg.app_name = name.to_string();
    }
    let persist = match opts.get("persist") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(invalid(format!("persist must be a boolean, got {}", type_name(other)))),
    };
    let db_path = string(&opts, "dbPath")?;
    cfg.db_path = match (persist, db_path) {
        (false, _) => None,
        (true, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        (true, _) => Some(default_db_path(&cfg.app_name, base_url)?),
    };
    Ok(cfg)
}

fn stream_url(opts: &Row, key: &str, schemes: &[&str]) -> Result<Option<String>> {
    let Some(url) = string(opts, key)? else { return Ok(None) };
    let ok = url.split_once("://").is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
    if !ok {
        let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(invalid(format!("{key} must be a {} URL, got {url:?}", schemes.join(" or "))));
    }
    Ok(Some(url.to_string()))
}

/// `$XDG_DATA_HOME/pylon-sync/<app>/<host>_<port>.db` (else
/// `~/.local/share/…`; `%LOCALAPPDATA%` on Windows,
/// `~/Library/Application Support` on macOS): one file per app and server,
/// so replicas of different servers never mix.
pub fn default_db_path(app: &str, base_url: &str) -> Result<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let root = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support"))
    } else {
        std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).or(home.map(|h| h.join(".local/share")))
    }
    .ok_or_else(|| invalid("no home directory to keep the replica in; pass dbPath or persist: false"))?;
    let server: String = base_url
        .split("://")
        .nth(1)
        .unwrap_or(base_url)
        .trim_end_matches('/')
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

/// `ca`: PEM text of certificate authorities to trust (checked when the client is built).
pub fn ca(opts: &Row) -> Result<Option<String>> {
    Ok(string(opts, "ca")?.filter(|s| !s.is_empty()).map(str::to_string))
}

pub fn token(v: Option<Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(format!("token must be a string or null, got {}", type_name(&other)))),
    }
}
