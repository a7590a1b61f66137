//! HTTP routing (axum) for the API of PROTOCOL.md §5–§9 and the control routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::control::{FailRule, Faults};
use crate::log::{ChangeLog, Pull};
use crate::query::Query;
use crate::store::{default_manifest, Auth, Session, Store};
use crate::stream::{crdt_frame, serve_sse, serve_ws, sse_connection, ws_connection, Hub, Outbound};

pub struct Config {
    /// 0 picks a free port.
    pub port: u16,
    pub manifest: Option<Value>,
    pub admin_token: Option<String>,
    /// Change-log events kept (the real server keeps 10,000).
    pub retention: usize,
    /// For a simulation: the wall time at start (ms since the epoch), after
    /// which the clock follows tokio's time (`None`: the system clock).
    pub epoch_ms: Option<u64>,
    /// For a simulation: the seed of every token (`None`: the OS's entropy).
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config { port: 0, manifest: None, admin_token: None, retention: 10_000, epoch_ms: None, seed: None }
    }
}

pub(crate) struct World {
    pub(crate) store: Store,
    log: ChangeLog,
    pub(crate) faults: Faults,
    hub: Arc<Hub>,
}

impl World {
    /// Appends a write to the log and broadcasts it on the streams (with a
    /// CRDT frame for subscribers of a CRDT-mode row).
    fn record(&mut self, entity: &str, row_id: &str, kind: &'static str, data: Option<Map<String, Value>>) {
        let mut ev = self.log.append(entity, row_id, kind, data);
        ev.timestamp = String::new(); // streams carry an empty timestamp (§10.3)
        self.hub.send(Outbound::Event(ev.to_json().to_string().into()));
        let Some(e) = self.store.entity(entity).filter(|e| e.crdt && kind != "delete") else {
            return;
        };
        if let Some(row) = self.store.rows.get(entity).and_then(|m| m.get(row_id)) {
            let payload = Value::Object(e.read_back(row)).to_string();
            let frame = crdt_frame(entity, row_id, payload.as_bytes());
            self.hub.send(Outbound::Crdt { entity: entity.into(), row_id: row_id.into(), frame });
        }
    }
}

/// A write the store refuses, as the REST route answers it.
struct Refused {
    status: u16,
    code: &'static str,
    message: String,
}

impl Refused {
    fn response(&self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

impl World {
    fn entity(&self, e: &str) -> Result<crate::store::Entity, Refused> {
        self.store.entity(e).cloned().ok_or_else(|| Refused {
            status: 400,
            code: "ENTITY_NOT_FOUND",
            message: format!("Unknown entity: {e:?}"),
        })
    }

    fn check_columns(entity: &crate::store::Entity, data: &Map<String, Value>) -> Result<(), Refused> {
        match data.keys().find(|k| !entity.has_field(k)) {
            Some(f) => {
                let valid: Vec<&str> =
                    std::iter::once("id").chain(entity.fields.iter().map(|f| f.name.as_str())).collect();
                Err(Refused {
                    status: 400,
                    code: "INVALID_COLUMN",
                    message: format!("Unknown column {f:?} -- valid columns: {}", valid.join(", ")),
                })
            }
            None => Ok(()),
        }
    }

    fn insert(&mut self, e: &str, mut data: Map<String, Value>) -> Result<String, Refused> {
        let entity = self.entity(e)?;
        // the server names rows; an `id` sent anyway reaches the event's
        // data but not the row (PROTOCOL §3.2)
        let sent_id = data.remove("id");
        Self::check_columns(&entity, &data)?;
        if let Some(f) = entity.fields.iter().find(|f| !f.optional && data.get(&f.name).is_none_or(Value::is_null)) {
            return Err(Refused {
                status: 400,
                code: "INSERT_FAILED",
                message: format!("Insert into {e} failed: NOT NULL constraint failed: {e}.{}", f.name),
            });
        }
        if let Some(f) = self.taken(&entity, &data, None) {
            return Err(Refused {
                status: 400,
                code: "INSERT_FAILED",
                message: format!("Insert into {e} failed: UNIQUE constraint failed: {e}.{f}"),
            });
        }
        let id = self.store.new_id();
        let mut event_data = data.clone();
        if let Some(sent) = sent_id {
            event_data.insert("id".into(), sent);
        }
        data.insert("id".into(), json!(id));
        self.store.rows.entry(e.to_string()).or_default().insert(id.clone(), data);
        self.record(e, &id, "insert", Some(event_data));
        Ok(id)
    }

    /// A unique field `data` would give a value another row (not `own`) holds.
    fn taken(&self, entity: &crate::store::Entity, data: &Map<String, Value>, own: Option<&str>) -> Option<String> {
        let rows = self.store.rows.get(&entity.name)?;
        entity.fields.iter().filter(|f| f.unique).find_map(|f| {
            let v = data.get(&f.name).filter(|v| !v.is_null())?;
            rows.iter().any(|(id, row)| Some(id.as_str()) != own && row.get(&f.name) == Some(v)).then(|| f.name.clone())
        })
    }

    /// `Ok(false)`: no such row, or nothing to change.
    fn update(&mut self, e: &str, id: &str, patch: Map<String, Value>) -> Result<bool, Refused> {
        let entity = self.entity(e)?;
        Self::check_columns(&entity, &patch)?;
        if let Some(f) = self.taken(&entity, &patch, Some(id)) {
            return Err(Refused {
                status: 400,
                code: "UPDATE_FAILED",
                message: format!("Update {e}/{id} failed: UNIQUE constraint failed: {e}.{f}"),
            });
        }
        let Some(row) = self.store.rows.get_mut(e).and_then(|m| m.get_mut(id)).filter(|_| !patch.is_empty()) else {
            return Ok(false);
        };
        for (k, v) in &patch {
            if k != "id" {
                row.insert(k.clone(), v.clone());
            }
        }
        self.record(e, id, "update", Some(patch));
        Ok(true)
    }

    /// `Ok(false)`: no such row.
    fn delete(&mut self, e: &str, id: &str) -> Result<bool, Refused> {
        self.entity(e)?;
        if self.store.rows.get_mut(e).and_then(|m| m.remove(id)).is_none() {
            return Ok(false);
        }
        self.record(e, id, "delete", None);
        Ok(true)
    }

    /// `POST /api/batch` (admin): each write on its own, in order; outcomes
    /// by position with the error as a bare message, as the real server does.
    /// Updates and deletes of missing rows count as done (and log nothing).
    fn batch(&mut self, body: &Bytes) -> Response {
        let ops = match parse_object(body) {
            Ok(b) => match b.get("operations") {
                Some(Value::Array(ops)) => ops.clone(),
                _ => return error(400, "MISSING_OPERATIONS", "Request body must contain an \"operations\" array"),
            },
            Err(r) => return r,
        };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let kind = op["op"].as_str().unwrap_or_default().to_string();
            let entity = op["entity"].as_str().unwrap_or_default().to_string();
            let id = op["id"].as_str().unwrap_or_default().to_string();
            let data = op["data"].as_object().cloned();
            let outcome = match (kind.as_str(), data) {
                ("insert", Some(d)) => self.insert(&entity, d).map(Some),
                ("insert", None) => {
                    Err(Refused { status: 400, code: "", message: "Insert data must be a JSON object".into() })
                }
                ("update", Some(d)) => self.update(&entity, &id, d).map(|_| Some(id.clone())),
                ("update", None) => {
                    Err(Refused { status: 400, code: "", message: "Update data must be a JSON object".into() })
                }
                ("delete", _) => self.delete(&entity, &id).map(|_| Some(id.clone())),
                _ => Err(Refused { status: 400, code: "", message: "unknown operation".into() }),
            };
            results.push(match outcome {
                Ok(id) => json!({ "op": kind, "id": id, "ok": true }),
                Err(r) => json!({ "op": kind, "ok": false, "error": r.message }),
            });
        }
        let succeeded = results.iter().filter(|r| r["ok"] == true).count();
        let failed = results.len() - succeeded;
        json_response(200, json!({ "results": results, "succeeded": succeeded, "failed": failed }))
    }
}

pub(crate) struct App {
    pub(crate) world: Mutex<World>,
    pub(crate) hub: Arc<Hub>,
    /// Reset by `/__control/restart`, like a real restart resets `/health`'s uptime.
    started: Mutex<Instant>,
    /// Requests served, by "METHOD /path" (tests count round trips).
    requests: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// A running server: HTTP on `port`, WebSocket on `port + 1`, SSE on `port + 2`.
pub struct Handle {
    pub port: u16,
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    hub: Arc<Hub>,
}

impl Handle {
    /// Stops listening and drops every connection.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.hub.drop_all();
        for t in &mut self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Three consecutive ports starting at `port` (0: any free ones).
async fn bind_ports(port: u16) -> Result<[tokio::net::TcpListener; 3], String> {
    use rand::Rng;
    use tokio::net::TcpListener;
    for _ in 0..100 {
        // bind(0) may hand out the same port again, so pick candidates ourselves
        let p = if port == 0 { rand::rng().random_range(20_000..60_000) } else { port };
        let bind = |n: u16| TcpListener::bind(("127.0.0.1", p.saturating_add(n)));
        match (bind(0).await, bind(1).await, bind(2).await) {
            (Ok(http), Ok(ws), Ok(sse)) => return Ok([http, ws, sse]),
            _ if port != 0 => return Err(format!("ports {p}, {} and {} must be free", p + 1, p + 2)),
            _ => continue,
        }
    }
    Err("no three consecutive free ports".into())
}

fn app(cfg: Config) -> Result<Arc<App>, String> {
    let clock = Arc::new(Clock::new(cfg.epoch_ms, cfg.seed));
    let store = Store::new(cfg.manifest.unwrap_or_else(default_manifest), cfg.admin_token, clock.clone())?;
    let hub = Arc::new(Hub::default());
    let log = ChangeLog::new(cfg.retention.max(1), clock);
    Ok(Arc::new(App {
        world: Mutex::new(World { store, log, faults: Faults::default(), hub: hub.clone() }),
        hub,
        started: Mutex::new(Instant::now()),
        requests: Mutex::new(Default::default()),
    }))
}

/// The server without sockets, for a simulation: requests are answered in
/// memory, and stream connections run over any byte stream (an in-memory
/// pipe). Everything else — the log, faults, restarts — is the same server.
#[derive(Clone)]
pub struct Local {
    app: Arc<App>,
}

impl Local {
    pub fn new(cfg: Config) -> Result<Local, String> {
        Ok(Local { app: app(cfg)? })
    }

    /// One HTTP request (API or `/__control/…`), answered: the status, the
    /// `Retry-After` seconds and the body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Option<u64>, Bytes) {
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let Ok(req) = req.header(header::CONTENT_TYPE, "application/json").body(axum::body::Body::from(body)) else {
            return (
                400,
                None,
                Bytes::from_static(b"{\"error\":{\"code\":\"BAD_REQUEST\",\"message\":\"bad request\"}}"),
            );
        };
        let resp = handle(State(self.app.clone()), req).await;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.trim().parse().ok());
        (status, retry_after, to_bytes(resp.into_body(), usize::MAX).await.unwrap_or_default())
    }

    /// Serves a WebSocket connection (the port + 1 listener's side).
    pub async fn websocket(&self, conn: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) {
        self.app.hub.ws_accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ws_connection(self.app.clone(), conn).await
    }

    /// Serves an event-stream connection (the port + 2 listener's side).
    pub async fn event_stream(&self, conn: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) {
        self.app.hub.sse_accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        sse_connection(self.app.clone(), conn).await
    }
}

/// Starts the server on 127.0.0.1.
pub async fn spawn(cfg: Config) -> Result<Handle, String> {
    let port = cfg.port;
    let app = app(cfg)?;
    let hub = app.hub.clone();
    let [listener, ws, sse] = bind_ports(port).await?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let router = Router::new().fallback(handle).with_state(app.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    let tasks = vec![http, tokio::spawn(serve_ws(app.clone(), ws)), tokio::spawn(serve_sse(app, sse))];
    Ok(Handle { port, url: format!("http://127.0.0.1:{port}"), shutdown: Some(tx), tasks, hub })
}

fn error(status: u16, code: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, ok_json(&json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// The real server adds a hint to policy refusals.
fn policy_denied() -> Response {
    let body = json!({ "error": { "code": "POLICY_DENIED", "message": "Access denied by policy",
        "hint": "Check your auth token or the policy rules in your schema" } });
    json_response(403, body)
}

fn ok_json(v: &Value) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string())
}

fn json_response(status: u16, v: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), ok_json(&v)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string)
}

/// The server's naive query parsing: text after `name=` up to the next `&`.
fn query_param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let start = uri.find(&key)? + key.len();
    Some(uri[start..].split('&').next().unwrap_or(""))
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let body = match to_bytes(req.into_body(), 10 << 20).await {
        Ok(b) => b,
        Err(_) => return error(413, "PAYLOAD_TOO_LARGE", "request body too large"),
    };
    if let Some(rest) = path.strip_prefix("/__control/") {
        return control(&app, &method, rest, &body);
    }
    *app.requests.lock().entry(format!("{method} {path}")).or_default() += 1;
    let (mut rule, delay) = {
        let mut w = app.world.lock();
        (w.faults.take(method.as_str(), &path), w.faults.delay_ms)
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(ms) = rule.as_ref().and_then(|r| r.hold_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        rule = None;
    }
    if let Some(rule) = &rule {
        if !rule.after_apply {
            return failure(&app, rule);
        }
    }
    let resp = route(&app, &method, &uri, &path, &headers, &body);
    match rule {
        Some(rule) => failure(&app, &rule),
        None => resp,
    }
}

fn failure(app: &App, rule: &FailRule) -> Response {
    if rule.malformed {
        return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"changes\":[{\"seq\":")
            .into_response();
    }
    match rule.status {
        410 => {
            let head = app.world.lock().log.head();
            json_response(
                410,
                json!({ "error": { "code": "RESYNC_REQUIRED",
                "message": "cursor is older than the oldest retained seq; client must re-sync",
                "oldest_seq": head + 1 } }),
            )
        }
        429 => {
            let mut r = error(429, "RATE_LIMITED", "Too many requests.");
            if let Some(s) = rule.retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            r
        }
        s => error(s, if s >= 500 { "INTERNAL_ERROR" } else { "INJECTED_FAULT" }, "injected fault"),
    }
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    let text = if body.is_empty() { &b"{}"[..] } else { &body[..] };
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(400, "INVALID_DATA", "body must be a JSON object")),
        Err(e) => Err(error(400, "INVALID_JSON", &format!("invalid JSON: {e}"))),
    }
}

fn route(app: &App, method: &Method, uri: &str, path: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let mut guard = app.world.lock();
    let w = &mut *guard;
    let token = bearer(headers);
    let auth = w.store.auth(token.as_deref());
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    match (method.as_str(), segs.as_slice()) {
        ("GET", ["health"]) => json_response(
            200,
            json!({ "status": "ok", "version": "0.1.0", "uptime_secs": app.started.lock().elapsed().as_secs() }),
        ),
        ("GET", ["api", "manifest"]) => json_response(200, w.store.public_manifest()),
        ("GET", ["api", "auth", "me"]) => json_response(200, auth.to_json()),
        ("POST", ["api", "auth", "guest"]) => {
            let t = w.store.new_token();
            let user = format!("guest_{}", &w.store.new_id()[8..40]);
            w.store.sessions.insert(t.clone(), Session { user_id: user.clone(), tenant_id: None });
            json_response(201, json!({ "guest": true, "token": t, "user_id": user }))
        }
        ("POST", ["api", "auth", "session"]) => {
            let b = match parse_object(body) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(user) = b.get("user_id").and_then(Value::as_str) else {
                return error(400, "MISSING_USER_ID", "user_id is required");
            };
            let t = w.store.new_token();
            w.store.sessions.insert(t.clone(), Session { user_id: user.to_string(), tenant_id: None });
            json_response(201, json!({ "token": t, "user_id": user }))
        }
        ("DELETE", ["api", "auth", "session"]) => {
            // PROTOCOL §9: revokes the caller's token; it answers as anonymous from now on
            let revoked = token.is_some_and(|t| w.store.sessions.remove(&t).is_some());
            json_response(200, json!({ "revoked": revoked }))
        }
        ("POST", ["api", "auth", "select-org"]) => select_org(w, token.as_deref(), &auth, body),
        ("GET", ["api", "sync", "pull"]) => pull(w, uri, &auth),
        ("POST", ["api", "sync", "push"] | ["api", "batch"]) if !auth.is_admin => {
            error(403, "FORBIDDEN", "this endpoint requires admin auth (PYLON_ADMIN_TOKEN)")
        }
        ("POST", ["api", "batch"]) => w.batch(body),
        (_, ["api", "entities", e, rest @ ..]) => entities(w, method, uri, e, rest, &auth, body),
        ("POST", ["api", "query", e]) => query(w, e, &auth, body),
        ("POST", ["api", "fn", name]) => match *name {
            "echo" => match parse_object(body) {
                Ok(b) => json_response(200, Value::Object(b)),
                Err(r) => r,
            },
            "fail" => error(400, "FN_FAILED", "the function threw"),
            _ => error(404, "FN_NOT_FOUND", &format!("function {name:?} not found")),
        },
        _ => error(404, "NOT_FOUND", &format!("no route for {method} {path}")),
    }
}

fn select_org(w: &mut World, token: Option<&str>, auth: &Auth, body: &Bytes) -> Response {
    let (Some(token), Some(user)) = (token, auth.user_id.clone()) else {
        return error(401, "UNAUTHENTICATED", "missing bearer token");
    };
    let b = match parse_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let org = match b.get("orgId") {
        None => return error(400, "MISSING_ORG_ID", "orgId is required"),
        Some(Value::Null) => None,
        Some(v) => Some(v.as_str().unwrap_or_default().to_string()),
    };
    if let Some(org) = &org {
        let member = w.store.rows.get("OrgMember").is_some_and(|rows| {
            rows.values().any(|r| {
                r.get("userId").and_then(Value::as_str) == Some(user.as_str())
                    && r.get("orgId").and_then(Value::as_str) == Some(org.as_str())
            })
        });
        if !member {
            return error(403, "NOT_A_MEMBER", "not a member of that organization");
        }
    }
    if let Some(s) = w.store.sessions.get_mut(token) {
        s.tenant_id = org.clone();
    }
    json_response(200, json!({ "tenantId": org }))
}

fn pull(w: &mut World, uri: &str, auth: &Auth) -> Response {
    let since = query_param(uri, "since").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let page_size = w.faults.page_size.unwrap_or(100).clamp(1, 100);
    match w.log.pull(since, page_size) {
        Pull::Gone { oldest_seq } => json_response(
            410,
            json!({ "error": { "code": "RESYNC_REQUIRED",
                "message": format!("cursor last_seq={since} is older than the oldest retained seq={oldest_seq}; client must re-sync"),
                "oldest_seq": oldest_seq } }),
        ),
        Pull::Page { events, cursor, has_more } => {
            // cursor and has_more are computed before filtering, as on the real server
            let changes: Vec<Value> = events
                .into_iter()
                .filter(|e| w.store.can_read(&e.entity, auth, e.data.as_ref()))
                .map(|e| e.to_json())
                .collect();
            json_response(200, json!({ "changes": changes, "cursor": { "last_seq": cursor }, "has_more": has_more }))
        }
    }
}

fn entities(w: &mut World, method: &Method, uri: &str, e: &str, rest: &[&str], auth: &Auth, body: &Bytes) -> Response {
    let Some(entity) = w.store.entity(e).cloned() else {
        return error(400, "ENTITY_NOT_FOUND", &format!("unknown entity {e:?}"));
    };
    let row_policy = matches!(entity.read, Some(crate::policy::ReadRule::OwnerField(_))) && !auth.is_admin;
    let writes = matches!(method.as_str(), "POST" | "PATCH" | "DELETE");
    if writes && !entity.write.as_ref().is_none_or(|r| r.allows(auth.user_id.as_deref(), auth.is_admin)) {
        return policy_denied();
    }
    match (method.as_str(), rest) {
        ("GET", []) => {
            if row_policy {
                return policy_denied();
            }
            let rows: Vec<Value> = w
                .store
                .rows
                .get(e)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|r| Value::Object(entity.read_back(r)))
                .collect();
            let n = rows.len();
            json_response(200, json!({ "data": rows, "count": n, "offset": 0, "limit": null }))
        }
        ("GET", ["cursor"]) => {
            if row_policy {
                return policy_denied();
            }
            let limit = query_param(uri, "limit").and_then(|s| s.parse::<usize>().ok()).unwrap_or(20).clamp(1, 100);
            let after = query_param(uri, "after").unwrap_or("").to_string();
            let page: Vec<Map<String, Value>> = w
                .store
                .rows
                .get(e)
                .into_iter()
                .flat_map(|m| {
                    m.range::<String, _>((std::ops::Bound::Excluded(after.clone()), std::ops::Bound::Unbounded))
                })
                .take(limit + 1)
                .filter(|(_, r)| w.store.can_read(e, auth, Some(r)))
                .map(|(_, r)| entity.read_back(r))
                .collect();
            let has_more = page.len() > limit;
            let page: Vec<_> = page.into_iter().take(limit).collect();
            let next = page.last().and_then(|r| r.get("id").cloned()).unwrap_or(Value::Null);
            json_response(200, json!({ "data": page, "next_cursor": next, "has_more": has_more }))
        }
        ("POST", []) => match parse_object(body).map(|data| w.insert(e, data)) {
            Err(r) => r,
            Ok(Ok(id)) => json_response(201, json!({ "id": id })),
            Ok(Err(refused)) => refused.response(),
        },
        ("GET", [id]) => match w.store.rows.get(e).and_then(|m| m.get(*id)) {
            Some(r) if w.store.can_read(e, auth, Some(r)) => json_response(200, Value::Object(entity.read_back(r))),
            Some(_) => policy_denied(),
            None => error(404, "NOT_FOUND", &format!("{e} with id \"{id}\" not found")),
        },
        ("PATCH", [id]) => match parse_object(body).map(|patch| w.update(e, id, patch)) {
            Err(r) => r,
            Ok(Ok(true)) => json_response(200, json!({ "updated": true })),
            Ok(Ok(false)) => error(404, "NOT_FOUND", &format!("{e}/{id} not found")),
            Ok(Err(refused)) => refused.response(),
        },
        ("DELETE", [id]) => match w.delete(e, id) {
            Ok(true) => json_response(200, json!({ "deleted": true })),
            Ok(false) => error(404, "NOT_FOUND", &format!("{e}/{id} not found")),
            Err(refused) => refused.response(),
        },
        _ => error(405, "METHOD_NOT_ALLOWED", "method not allowed"),
    }
}

fn query(w: &mut World, e: &str, auth: &Auth, body: &Bytes) -> Response {
    let Some(entity) = w.store.entity(e).cloned() else {
        return error(400, "ENTITY_NOT_FOUND", &format!("unknown entity {e:?}"));
    };
    // like the real server: an entity under a row-level read policy is
    // checked without a row first, which denies every non-admin
    if matches!(entity.read, Some(crate::policy::ReadRule::OwnerField(_))) && !auth.is_admin {
        return policy_denied();
    }
    let filter = match parse_object(body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let q = match Query::parse(&filter, &|f| entity.has_field(f)) {
        Ok(q) => q,
        Err(f) => return error(400, "INVALID_COLUMN", &format!("unknown column {f:?} on {e}")),
    };
    use std::ops::Bound::{Excluded, Unbounded};
    let table = w.store.rows.get(e);
    let readable = |r: &&Map<String, Value>| w.store.can_read(e, auth, Some(r));
    let (offset, limit) = (q.offset, q.limit.unwrap_or(usize::MAX));
    let rows: Vec<Value> = if q.in_id_order() {
        // rows are kept by id: read them in order from the keyset bound and
        // stop at the page's end, as an index on id lets SQLite do
        let from = q.id_after().map_or(Unbounded, |a| Excluded(a.to_string()));
        table
            .into_iter()
            .flat_map(|m| m.range::<String, _>((from.clone(), Unbounded)).map(|(_, r)| r))
            .filter(readable)
            .map(|r| entity.read_back(r))
            .filter(|r| q.matches(r))
            .skip(offset)
            .take(limit)
            .map(Value::Object)
            .collect()
    } else {
        let mut rows: Vec<Map<String, Value>> = table
            .into_iter()
            .flat_map(|m| m.values())
            .filter(readable)
            .map(|r| entity.read_back(r))
            .filter(|r| q.matches(r))
            .collect();
        q.sort(&mut rows);
        rows.into_iter().skip(offset).take(limit).map(Value::Object).collect()
    };
    json_response(200, Value::Array(rows))
}

/// `/__control/…`: faults, restart, bulk seeding, state.
fn control(app: &App, method: &Method, what: &str, body: &Bytes) -> Response {
    let mut w = app.world.lock();
    let parsed: Value = serde_json::from_slice(if body.is_empty() { b"{}" } else { body }).unwrap_or(Value::Null);
    match (method.as_str(), what) {
        ("POST", "faults") => match serde_json::from_value::<Faults>(parsed) {
            Ok(f) => {
                w.faults = f;
                json_response(200, json!({ "ok": true }))
            }
            Err(e) => error(400, "INVALID_FAULTS", &e.to_string()),
        },
        ("POST", "restart") => {
            // PROTOCOL §4.3: a restarted server renumbers its log from 1 with
            // one insert per existing row, in entity order then id order.
            let World { store, log, hub, .. } = &mut *w;
            hub.drop_all(); // a restarted server drops its sockets without a close frame
            *app.started.lock() = Instant::now();
            log.clear();
            for entity in &store.entities {
                for (id, row) in store.rows.get(&entity.name).into_iter().flatten() {
                    log.append(&entity.name, id, "insert", Some(entity.read_back(row)));
                }
            }
            json_response(200, json!({ "head": log.head() }))
        }
        ("POST", "seed") => {
            let entity = parsed["entity"].as_str().unwrap_or_default().to_string();
            if w.store.entity(&entity).is_none() {
                return error(400, "ENTITY_NOT_FOUND", "unknown entity");
            }
            let count = parsed["count"].as_u64().unwrap_or(0);
            let template = parsed["data"].as_object().cloned().unwrap_or_default();
            for i in 0..count {
                let id = w.store.new_id();
                let mut data = template.clone();
                for v in data.values_mut() {
                    if let Value::String(s) = v {
                        *s = s.replace("{i}", &i.to_string());
                    }
                }
                let event_data = data.clone();
                data.insert("id".into(), json!(id));
                w.store.rows.entry(entity.clone()).or_default().insert(id.clone(), data);
                w.record(&entity, &id, "insert", Some(event_data));
            }
            json_response(200, json!({ "head": w.log.head() }))
        }
        ("GET", "state") => {
            let counts: Map<String, Value> = w
                .store
                .entities
                .iter()
                .map(|e| (e.name.clone(), json!(w.store.rows.get(&e.name).map_or(0, |m| m.len()))))
                .collect();
            let hub = &app.hub;
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::SeqCst);
            json_response(
                200,
                json!({ "head": w.log.head(), "rows": counts,
                "ws": { "accepted": n(&hub.ws_accepted), "open": n(&hub.ws_open) },
                "sse": { "accepted": n(&hub.sse_accepted), "open": n(&hub.sse_open) },
                "requests": *app.requests.lock() }),
            )
        }
        ("GET", "frames") => {
            let frames: Vec<Value> = app
                .hub
                .received
                .lock()
                .iter()
                .map(|r| json!({ "connection": r.connection, "user": r.user, "frame": r.frame }))
                .collect();
            json_response(200, Value::Array(frames))
        }
        // every row of an entity, past faults and policies (test oracles)
        ("GET", what) if what.starts_with("rows/") => {
            let name = &what["rows/".len()..];
            let Some(entity) = w.store.entity(name) else { return error(400, "ENTITY_NOT_FOUND", "unknown entity") };
            let rows: Vec<Value> =
                w.store.rows.get(name).into_iter().flatten().map(|(_, r)| Value::Object(entity.read_back(r))).collect();
            json_response(200, Value::Array(rows))
        }
        // every event the log keeps, unfiltered and past faults (test oracles)
        ("GET", "log") => json_response(200, Value::Array(w.log.events().map(|e| e.to_json()).collect())),
        ("POST", "drop") => {
            app.hub.drop_all();
            json_response(200, json!({ "ok": true }))
        }
        // raw frames to every stream: {"text": "..."} or {"binary": [bytes]}
        ("POST", "emit") => {
            if let Some(t) = parsed["text"].as_str() {
                app.hub.send(Outbound::Raw(t.into()));
            }
            if let Some(b) = parsed["binary"].as_array() {
                let bytes: Vec<u8> = b.iter().map(|x| x.as_u64().unwrap_or(0) as u8).collect();
                app.hub.send(Outbound::RawBinary(bytes.into()));
            }
            json_response(200, json!({ "ok": true }))
        }
        _ => error(404, "NOT_FOUND", "unknown control route"),
    }
}
