//! The HTTP side of the protocol: one typed method per route the engine uses
//! (PROTOCOL.md §5, §7, §8, §9). No retry policy lives here; callers decide,
//! and a caller that would lose work by failing on a rate limit asks for a
//! patient client (`patient`), which waits a 429 out as the caller says.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::{Io, Request};
use crate::protocol::{Envelope, MeBody, PullPage, Row, Session};
use crate::restart::Anchor;
use crate::schema::Fields;

/// A `since` far above any real head: the server answers it with 410 and
/// `oldest_seq = head + 1`, which tells us the head in one request.
const HEAD_PROBE: u64 = 1 << 62;

/// A client for one Pylon server.
#[derive(Clone)]
pub struct Api {
    io: Arc<dyn Io>,
    /// Ask for a new connection per request: the server stalls on reused
    /// ones (see [`stalls_on_reuse`]).
    no_reuse: Arc<AtomicBool>,
    /// What went over the wire, shared by every clone of this client.
    traffic: Arc<Traffic>,
    base: String,
    /// What to do with a 429 before asking again; `None`: fail with it.
    patience: Option<Patience>,
}

/// Waits out a rate limit (the 429 given), saying so; the request is then
/// asked again as it was. An error ends the wait and is the request's.
pub type Patience = Arc<dyn Fn(&Error) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// A patient client waits this many times for one request, then fails with
/// the 429: a server that keeps refusing is left to the caller's backoff.
const PATIENT_WAITS: u32 = 2;

/// The real Pylon server answers through tiny-http, which writes a response
/// over 1 KiB as headers and body in two writes with Nagle's algorithm on.
/// On a reused connection the client has switched to delayed ACKs, so the
/// body waits about 40 ms for the header's ACK — every pull page. A new
/// connection per request (`Connection: close`, about 0.3 ms on loopback)
/// avoids it; the client cannot re-arm `TCP_QUICKACK` through reqwest. See
/// docs/compat.md.
fn stalls_on_reuse(server: Option<&str>) -> bool {
    server.is_some_and(|s| s.starts_with("tiny-http"))
}

/// One entity of the public manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityInfo {
    pub name: String,
    /// Some policy governs it, so reads may be filtered per row.
    pub has_policy: bool,
    /// Its fields' types, to read rows back into.
    pub fields: Fields,
}

impl Api {
    /// Requests go out through `io` (the network, unless simulated).
    pub fn new(base_url: &str, io: Arc<dyn Io>) -> Result<Api> {
        let base = normalize_base(base_url)?;
        Ok(Api { io, no_reuse: Arc::new(AtomicBool::new(false)), traffic: Arc::default(), base, patience: None })
    }

    /// The same client, but a request refused with 429 is asked again after
    /// `patience` waited: for reads whose progress a failure would throw
    /// away (the pages of a bootstrap), where starting over would meet the
    /// limit again. Only for requests safe to repeat: a 429 is a refusal,
    /// nothing was done.
    pub fn patient(&self, patience: Patience) -> Api {
        Api { patience: Some(patience), ..self.clone() }
    }

    /// What this client (and its clones) sent and received so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> Request {
        Request {
            method,
            url: format!("{}{}", self.base, path),
            token: token.filter(|t| !t.is_empty()).map(str::to_string),
            json: None,
            close: self.no_reuse.load(Ordering::Relaxed),
        }
    }

    /// One page of the change log after `since`.
    pub async fn pull(&self, token: Option<&str>, since: u64) -> Result<PullPage> {
        let req = self.request(Method::GET, &format!("/api/sync/pull?since={since}"), token);
        send_json(req, self).await
    }

    /// The log after `since`, read on page after page until it passes
    /// `until` (or reaches the head), as one page: a read that starts before
    /// a cursor must reach it and bring something new, and pages may be
    /// short. Each page after the first reads again the newest event this
    /// reader was shown before it (from the pages so far, else `known`'s
    /// newest): a different one there means the log was renumbered between
    /// the two requests, answered as a 410 at 0 (a restart). A page that
    /// shows the reader nothing (a row policy hides it) is no exception.
    pub(crate) async fn pull_until(
        &self,
        token: Option<&str>,
        since: u64,
        until: u64,
        known: Option<&Anchor>,
    ) -> Result<PullPage> {
        let mut page = self.pull(token, since).await?;
        let mut newest = known.map(Anchor::newest);
        while page.has_more && page.cursor.last_seq <= until {
            let at = page.cursor.last_seq;
            if let Some(last) = page.changes.last() {
                newest = Some(Anchor::of(last));
            }
            // an event past this page cannot overlap it
            let check = newest.as_ref().filter(|n| n.at() <= at);
            let from = check.map_or(at, |n| n.read_from());
            let mut next = self.pull(token, from).await?;
            let confirmed = match check {
                Some(n) if from < at && next.cursor.last_seq <= at => {
                    // too short to hold the event again and something new:
                    // read on from the cursor, then ask for the event alone
                    next = self.pull(token, at).await?;
                    confirms(n, &self.pull(token, from).await?, from)
                }
                Some(n) => confirms(n, &next, from),
                None => true,
            };
            if !confirmed {
                return Err(Error::Resync { oldest_seq: 0 });
            }
            page.changes.extend(next.changes.into_iter().filter(|c| c.seq > at));
            page.cursor = next.cursor;
            page.has_more = next.has_more;
        }
        Ok(page)
    }

    /// The newest seq in the server's change log.
    pub async fn head(&self, token: Option<&str>) -> Result<u64> {
        match self.pull(token, HEAD_PROBE).await {
            Err(Error::Resync { oldest_seq }) => Ok(oldest_seq.saturating_sub(1)),
            Ok(page) => Err(Error::Protocol(format!(
                "server accepted cursor {HEAD_PROBE} (answered {}); cannot learn the log head",
                page.cursor.last_seq
            ))),
            Err(e) => Err(e),
        }
    }

    /// Entities the caller can see in the public manifest.
    /// The app's manifest (`/api/manifest`) as the server sends it.
    pub async fn manifest(&self, token: Option<&str>) -> Result<Value> {
        send_json(self.request(Method::GET, "/api/manifest", token), self).await
    }

    pub async fn entities(&self, token: Option<&str>) -> Result<Vec<EntityInfo>> {
        let manifest = self.manifest(token).await?;
        let names = manifest
            .get("entities")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Protocol("manifest has no entities array".into()))?;
        let policied: Vec<&str> = manifest
            .get("policies")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p.get("entity")?.as_str()).collect())
            .unwrap_or_default();
        names
            .iter()
            .map(|e| {
                let name = e
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Protocol("manifest entity without a name".into()))?;
                Ok(EntityInfo {
                    name: name.to_string(),
                    has_policy: policied.contains(&name),
                    fields: Fields::from_manifest(e),
                })
            })
            .collect()
    }

    /// Rows of `entity` with `id > after`, ascending by id, at most `limit`
    /// (`None`: all of them). Read policies are applied per row by the server.
    pub async fn rows_after(
        &self,
        token: Option<&str>,
        entity: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Row>> {
        let mut filter = json!({ "$order": { "id": "asc" } });
        if let Some(after) = after {
            filter["id"] = json!({ "$gt": after });
        }
        if let Some(limit) = limit {
            filter["$limit"] = json!(limit);
        }
        self.query(token, entity, &filter).await
    }

    /// `POST /api/query/<E>` with a filter object; returns the rows.
    pub async fn query(&self, token: Option<&str>, entity: &str, filter: &Value) -> Result<Vec<Row>> {
        check_entity(entity)?;
        let req = with_json(self.request(Method::POST, &format!("/api/query/{entity}"), token), filter);
        send_json(req, self).await
    }

    pub async fn get(&self, token: Option<&str>, entity: &str, id: &str) -> Result<Option<Row>> {
        check_entity(entity)?;
        check_id(id)?;
        let req = self.request(Method::GET, &format!("/api/entities/{entity}/{id}"), token);
        match send_json(req, self).await {
            Ok(row) => Ok(Some(row)),
            Err(Error::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a row; returns the server's id. A `nonce` goes out as the body's
    /// `id`: the server ignores it for the row but keeps it in the insert
    /// event's `data`, where the writer can recognise its own insert.
    pub async fn insert(&self, token: Option<&str>, entity: &str, data: &Row, nonce: Option<&str>) -> Result<String> {
        check_entity(entity)?;
        #[derive(serde::Deserialize)]
        struct Created {
            id: String,
        }
        let req = self.request(Method::POST, &format!("/api/entities/{entity}"), token);
        let req = match nonce {
            Some(n) => {
                let mut body = data.clone();
                body.insert("id".into(), Value::String(n.to_string()));
                with_json(req, &body)
            }
            None => with_json(req, data),
        };
        let created: Created = send_json(req, self).await?;
        Ok(created.id)
    }

    pub async fn update(&self, token: Option<&str>, entity: &str, id: &str, patch: &Row) -> Result<()> {
        check_entity(entity)?;
        check_id(id)?;
        let req = with_json(self.request(Method::PATCH, &format!("/api/entities/{entity}/{id}"), token), patch);
        send_json::<Value>(req, self).await.map(drop)
    }

    pub async fn delete(&self, token: Option<&str>, entity: &str, id: &str) -> Result<()> {
        check_entity(entity)?;
        check_id(id)?;
        let req = self.request(Method::DELETE, &format!("/api/entities/{entity}/{id}"), token);
        send_json::<Value>(req, self).await.map(drop)
    }

    /// `POST /api/batch` (admin only): the writes in order, each applied on
    /// its own (not a transaction). One outcome per write, by position: the
    /// id for an insert, or the error the REST route would have given (the
    /// batch answers only a message, so its code is inferred from it).
    pub async fn batch(&self, token: Option<&str>, writes: &[BatchWrite<'_>]) -> Result<Vec<Result<Option<String>>>> {
        #[derive(serde::Deserialize)]
        struct Outcome {
            ok: bool,
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            error: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            results: Vec<Outcome>,
        }
        let ops: Vec<Value> = writes
            .iter()
            .map(|w| match w {
                BatchWrite::Insert { entity, data } => json!({ "op": "insert", "entity": entity, "data": data }),
                BatchWrite::Update { entity, id, patch } => {
                    json!({ "op": "update", "entity": entity, "id": id, "data": patch })
                }
                BatchWrite::Delete { entity, id } => json!({ "op": "delete", "entity": entity, "id": id }),
            })
            .collect();
        let req = with_json(self.request(Method::POST, "/api/batch", token), &json!({ "operations": ops }));
        let answer: Answer = send_json(req, self).await?;
        if answer.results.len() != writes.len() {
            return Err(Error::Protocol(format!(
                "batch of {} writes answered {} results",
                writes.len(),
                answer.results.len()
            )));
        }
        Ok(answer
            .results
            .into_iter()
            .zip(writes)
            .map(|(o, w)| match (o.ok, w) {
                (true, BatchWrite::Insert { .. }) => match o.id {
                    Some(id) if !id.is_empty() => Ok(Some(id)),
                    _ => Err(Error::Protocol("batch insert answered without an id".into())),
                },
                (true, _) => Ok(None),
                (false, _) => {
                    let message = o.error.unwrap_or_else(|| "batch write failed".into());
                    Err(Error::Http {
                        status: 400,
                        code: batch_error_code(&message).into(),
                        message,
                        retry_after: None,
                    })
                }
            })
            .collect())
    }

    /// `POST /api/fn/<name>`: the function's JSON result, as returned.
    pub async fn call_fn(&self, token: Option<&str>, name: &str, args: &Value) -> Result<Value> {
        if name.is_empty() || name.contains(['/', '?', '#', ' ']) {
            return Err(Error::InvalidArg(format!("invalid function name {name:?}")));
        }
        let req = with_json(self.request(Method::POST, &format!("/api/fn/{name}"), token), args);
        send_json(req, self).await
    }

    /// Seconds since the server started (`/health`), when it says.
    pub async fn uptime(&self) -> Result<Option<u64>> {
        match send_json::<Value>(self.request(Method::GET, "/health", None), self).await {
            Ok(v) => Ok(v.get("uptime_secs").and_then(Value::as_u64)),
            Err(Error::Http { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Who the token belongs to. An unknown token resolves as anonymous.
    pub async fn me(&self, token: Option<&str>) -> Result<Session> {
        let body: MeBody = send_json(self.request(Method::GET, "/api/auth/me", token), self).await?;
        Ok(body.into())
    }
}

/// `page`, read after `from`, still holds the event `mark` was taken from.
fn confirms(mark: &Anchor, page: &PullPage, from: u64) -> bool {
    mark.check(&page.changes, from, page.cursor.last_seq, !page.has_more, mark.at()).is_some()
}

/// One write of a `batch`.
#[derive(Debug, Clone, Copy)]
pub enum BatchWrite<'a> {
    Insert { entity: &'a str, data: &'a Row },
    Update { entity: &'a str, id: &'a str, patch: &'a Row },
    Delete { entity: &'a str, id: &'a str },
}

/// The code the REST route gives for the failure a batch describes in words.
fn batch_error_code(message: &str) -> &'static str {
    if message.starts_with("Unknown column") {
        "INVALID_COLUMN"
    } else if message.starts_with("Unknown entity") {
        "ENTITY_NOT_FOUND"
    } else if message.starts_with("Insert into") {
        "INSERT_FAILED"
    } else if message.starts_with("Update ") {
        "UPDATE_FAILED"
    } else if message.starts_with("Delete ") {
        "DELETE_FAILED"
    } else {
        "BATCH_WRITE_FAILED"
    }
}

/// A server's base URL, parsed: http(s) with a host. The error never
/// repeats the text, which may hold credentials (`user:pass@`).
pub fn parse_base(url: &str) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::InvalidArg(format!("baseUrl must be an http:// or https:// URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
        return Err(Error::InvalidArg(format!(
            "baseUrl must be an http:// or https:// URL with a host, got a {}: URL",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

/// Strips a trailing slash and rejects anything that is not an http(s) URL.
fn normalize_base(url: &str) -> Result<String> {
    parse_base(url)?;
    Ok(url.trim_end_matches('/').to_string())
}

/// Entity names go into URL paths verbatim (the server does not decode them).
pub fn check_entity(entity: &str) -> Result<()> {
    if entity.is_empty() || !entity.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::InvalidArg(format!("entity name must be letters, digits or _, got {entity:?}")));
    }
    Ok(())
}

/// Row ids go into URL paths verbatim.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 512 || id.chars().any(|c| "/?#%".contains(c) || c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArg(format!("invalid row id {id:?}")));
    }
    Ok(())
}

/// Counters of one client's HTTP exchanges; monotonic.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: AtomicU64,
    /// Requests that got no answer (a transport failure; any status is an answer).
    failures: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    /// Nanoseconds spent waiting for answers, request sent to body read.
    waited: AtomicU64,
}

impl Traffic {
    fn count(&self, sent: usize, received: Option<usize>, waited: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(sent as u64, Ordering::Relaxed);
        match received {
            Some(n) => self.bytes_received.fetch_add(n as u64, Ordering::Relaxed),
            None => self.failures.fetch_add(1, Ordering::Relaxed),
        };
        self.waited.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Request and response bodies, in bytes.
    pub fn bytes(&self) -> (u64, u64) {
        (self.bytes_sent.load(Ordering::Relaxed), self.bytes_received.load(Ordering::Relaxed))
    }

    /// Time spent waiting for the server's answers (streams not included).
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited.load(Ordering::Relaxed))
    }
}

/// A URL's path and query, for logs (the host is the engine's, and a
/// token is never in a URL).
fn path_of(url: &str) -> &str {
    url.find("://").and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..])).unwrap_or(url)
}

fn with_json(mut req: Request, body: &impl serde::Serialize) -> Request {
    req.json = serde_json::to_vec(body).ok();
    req
}

async fn send_json<T: DeserializeOwned>(mut req: Request, api: &Api) -> Result<T> {
    let mut waits = 0;
    loop {
        // kept to be asked again, by a patient client only
        let again = api.patience.is_some().then(|| req.clone());
        let sent = tokio::time::Instant::now();
        let out = req.json.as_ref().map_or(0, Vec::len);
        let (method, path) = (req.method.clone(), path_of(&req.url).to_string());
        let answer = api.io.send(req).await;
        let elapsed = sent.elapsed();
        api.traffic.count(out, answer.as_ref().ok().map(|r| r.body.len()), elapsed);
        let resp = match answer {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(%method, path, error = %e, "request failed");
                return Err(e);
            }
        };
        tracing::debug!(%method, path, status = resp.status, ms = elapsed.as_millis() as u64, bytes = resp.body.len(), "request");
        if stalls_on_reuse(resp.server.as_deref()) {
            api.no_reuse.store(true, Ordering::Relaxed);
        }
        let status = StatusCode::from_u16(resp.status).map_err(|e| Error::Protocol(format!("bad status: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&resp.body)
                .map_err(|e| Error::Protocol(format!("unreadable {} response: {e}", status.as_u16())));
        }
        let error = http_error(status, resp.retry_after, &resp.body);
        match (&api.patience, again) {
            (Some(wait), Some(again)) if status == StatusCode::TOO_MANY_REQUESTS && waits < PATIENT_WAITS => {
                waits += 1;
                wait(&error).await?;
                req = again;
            }
            _ => return Err(error),
        }
    }
}

fn http_error(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Error {
    let envelope = serde_json::from_slice::<Envelope>(body).ok();
    if status == StatusCode::GONE {
        let oldest_seq = envelope.as_ref().and_then(|e| e.error.oldest_seq).unwrap_or(0);
        return Error::Resync { oldest_seq };
    }
    let (code, message, retry_secs) = match envelope {
        Some(e) => (e.error.code, e.error.message, e.error.retry_after_secs),
        None => (
            status.canonical_reason().unwrap_or("HTTP_ERROR").to_uppercase().replace(' ', "_"),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            None,
        ),
    };
    Error::Http {
        status: status.as_u16(),
        code,
        message,
        retry_after: retry_after.or(retry_secs.map(Duration::from_secs)),
    }
}
