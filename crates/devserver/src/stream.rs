//! The realtime side (PROTOCOL §10–§11): WebSocket on port + 1, SSE on
//! port + 2, both fed from one broadcast hub, with the stream fault knobs of
//! §14 (refuse, stall, close early or with a code, drop without a close
//! frame, duplicate / reorder / drop events, split SSE writes).
//!
//! CRDT frames carry the row's JSON as their payload: a stand-in for the real
//! server's Loro snapshot, which the sync engine treats as opaque bytes.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::server::App;

/// Knobs for one kind of stream connection.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamFaults {
    /// Close the TCP connection before any handshake.
    #[serde(default)]
    pub refuse: bool,
    /// Complete the handshake, then never send or read anything.
    #[serde(default)]
    pub stall: bool,
    /// End every connection this long after it opens.
    #[serde(default)]
    pub close_after_ms: Option<u64>,
    /// WebSocket close code to end with (`None`: drop without a close frame).
    #[serde(default)]
    pub close_code: Option<u16>,
}

/// What happens to change events on their way to each connection.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFaults {
    /// Send every event twice.
    #[serde(default)]
    pub duplicate: bool,
    /// Swap every pair of events.
    #[serde(default)]
    pub reorder: bool,
    /// Leave out every n-th event (a gap).
    #[serde(default)]
    pub drop_every: Option<u32>,
    /// Write every SSE event in two pieces, with a pause between.
    #[serde(default)]
    pub split_sse: bool,
}

#[derive(Clone, Debug)]
pub enum Outbound {
    /// A change event or server event: WebSocket and SSE.
    Event(Arc<str>),
    /// A client relay or disconnect notice: WebSocket only.
    Relay(Arc<str>),
    /// Raw text for every stream, sent as is (tests of malformed input).
    Raw(Arc<str>),
    /// Raw binary frame for every WebSocket.
    RawBinary(Arc<[u8]>),
    /// A CRDT frame for connections subscribed to the row.
    Crdt { entity: String, row_id: String, frame: Arc<[u8]> },
}

/// One client frame as received (tests assert formats and re-subscription).
#[derive(Debug, Clone)]
pub struct Received {
    pub connection: u64,
    pub user: String,
    pub frame: Value,
}

pub struct Hub {
    tx: broadcast::Sender<Outbound>,
    /// Bumped to drop every stream connection (restart, `/__control/drop`).
    generation: watch::Sender<u64>,
    next_id: AtomicU64,
    pub ws_accepted: AtomicU64,
    pub sse_accepted: AtomicU64,
    pub ws_open: AtomicU64,
    pub sse_open: AtomicU64,
    pub received: Mutex<Vec<Received>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(4096).0,
            generation: watch::channel(0).0,
            next_id: AtomicU64::new(1),
            ws_accepted: AtomicU64::new(0),
            sse_accepted: AtomicU64::new(0),
            ws_open: AtomicU64::new(0),
            sse_open: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        }
    }
}

impl Hub {
    pub fn send(&self, msg: Outbound) {
        let _ = self.tx.send(msg); // no receivers is fine
    }

    /// Drops every stream connection without a close frame, like a restart.
    pub fn drop_all(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// The §10.4 frame layout.
pub fn crdt_frame(entity: &str, row_id: &str, payload: &[u8]) -> Arc<[u8]> {
    let mut f = Vec::with_capacity(5 + entity.len() + row_id.len() + payload.len());
    f.push(0x10);
    f.extend_from_slice(&(entity.len() as u16).to_be_bytes());
    f.extend_from_slice(entity.as_bytes());
    f.extend_from_slice(&(row_id.len() as u16).to_be_bytes());
    f.extend_from_slice(row_id.as_bytes());
    f.extend_from_slice(payload);
    f.into()
}

/// Applies the event faults per connection.
struct Shaper {
    faults: EventFaults,
    held: Option<Arc<str>>,
    count: u32,
}

impl Shaper {
    fn new(faults: EventFaults) -> Shaper {
        Shaper { faults, held: None, count: 0 }
    }

    fn shape(&mut self, text: Arc<str>) -> Vec<Arc<str>> {
        self.count += 1;
        if self.faults.drop_every.is_some_and(|n| n > 0 && self.count.is_multiple_of(n)) {
            return Vec::new();
        }
        let mut out = if self.faults.reorder {
            match self.held.take() {
                None => {
                    self.held = Some(text);
                    return Vec::new();
                }
                Some(first) => vec![text, first],
            }
        } else {
            vec![text]
        };
        if self.faults.duplicate {
            out = out.into_iter().flat_map(|t| [t.clone(), t]).collect();
        }
        out
    }
}

pub async fn serve_ws(app: Arc<App>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        app.hub.ws_accepted.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move { ws_connection(app, tcp).await });
    }
}

pub async fn serve_sse(app: Arc<App>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        app.hub.sse_accepted.fetch_add(1, Ordering::SeqCst);
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move { sse_connection(app, tcp).await });
    }
}

/// Strict `%XX` decoding (and `+` → space); `None` for a malformed escape (§10.2).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The token of an upgrade request: `Authorization: Bearer`, else the first
/// well-formed `bearer.` subprotocol, which is echoed back.
fn token_of(req: &Request) -> (Option<String>, Option<String>) {
    if let Some(t) =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return (Some(t.to_string()), None);
    }
    let protocols = req.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).unwrap_or("");
    for p in protocols.split(',').map(str::trim) {
        if let Some(t) = p.strip_prefix("bearer.").and_then(percent_decode) {
            return (Some(t), Some(p.to_string()));
        }
    }
    (None, None)
}

/// One WebSocket client, over any byte connection.
pub(crate) async fn ws_connection(app: Arc<App>, tcp: impl AsyncRead + AsyncWrite + Unpin + Send) {
    let (faults, events) = {
        let w = app.world.lock();
        (w.faults.ws.clone(), w.faults.events.clone())
    };
    if faults.refuse {
        return;
    }
    let mut token = None;
    let callback = |req: &Request, mut resp: Response| {
        let (t, echo) = token_of(req);
        token = t;
        if let Some(p) = echo.and_then(|p| HeaderValue::from_str(&p).ok()) {
            resp.headers_mut().insert("sec-websocket-protocol", p);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
        return;
    };
    // the session store only: admin tokens and API keys are not accepted here
    let user = token.and_then(|t| app.world.lock().store.sessions.get(&t).map(|s| s.user_id.clone()));
    let Some(user) = user else {
        let frame = CloseFrame { code: CloseCode::Policy, reason: "unauthorized: bearer token required".into() };
        let _ = ws.send(Message::Close(Some(frame))).await;
        return;
    };
    let mut generation = app.hub.generation.subscribe();
    if faults.stall {
        let _ = generation.changed().await;
        return;
    }
    let id = app.hub.next_id.fetch_add(1, Ordering::SeqCst);
    app.hub.ws_open.fetch_add(1, Ordering::SeqCst);
    let mut rx = app.hub.tx.subscribe();
    let mut shaper = Shaper::new(events);
    let close_at = faults.close_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut subs: BTreeSet<(String, String)> = BTreeSet::new();
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            biased; // one order, so a simulation replays
            _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                if let Some(code) = faults.close_code {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: "closed by fault".into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                }
                break;
            }
            _ = generation.changed() => break,
            msg = rx.recv() => {
                let out: Vec<Message> = match msg {
                    Err(broadcast::error::RecvError::Lagged(_)) => continue, // missed, like a full shard queue
                    Err(broadcast::error::RecvError::Closed) => break,
                    Ok(Outbound::Event(t)) => shaper.shape(t).into_iter().map(|t| Message::text(&*t)).collect(),
                    Ok(Outbound::Relay(t) | Outbound::Raw(t)) => vec![Message::text(&*t)],
                    Ok(Outbound::RawBinary(b)) => vec![Message::binary(b.to_vec())],
                    Ok(Outbound::Crdt { entity, row_id, frame }) => {
                        if !subs.contains(&(entity, row_id)) {
                            continue;
                        }
                        vec![Message::binary(frame.to_vec())]
                    }
                };
                let mut failed = false;
                for m in out {
                    // the real server gives up on a client after 200 ms
                    if !matches!(tokio::time::timeout(Duration::from_millis(200), sink.send(m)).await, Ok(Ok(()))) {
                        failed = true;
                        break;
                    }
                }
                if failed {
                    break;
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(reply) = client_frame(&app, id, &user, t.as_str(), &mut subs) {
                        if sink.send(Message::binary(reply.to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Ping(p))) => {
                    if sink.send(Message::Pong(p)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break, // a client close is not answered (§10.6)
                Some(Ok(_)) => {}
            }
        }
    }
    app.hub.ws_open.fetch_sub(1, Ordering::SeqCst);
    let notice = json!({ "type": "presence", "event": "disconnect", "clientId": id }).to_string();
    app.hub.send(Outbound::Relay(notice.into()));
}

/// Handles one client text frame; returns a CRDT snapshot frame to send back.
fn client_frame(
    app: &App,
    id: u64,
    user: &str,
    text: &str,
    subs: &mut BTreeSet<(String, String)>,
) -> Option<Arc<[u8]>> {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    app.hub.received.lock().push(Received { connection: id, user: user.to_string(), frame: Value::Object(m.clone()) });
    let kind = m.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    let row_of = |m: &serde_json::Map<String, Value>| -> Option<(String, String)> {
        let e = m.get("entity")?.as_str()?.to_string();
        let r = m.get("rowId").or_else(|| m.get("row_id"))?.as_str()?.to_string();
        Some((e, r))
    };
    match kind.as_str() {
        "presence" | "topic" => {
            m.insert("from".into(), json!(user));
            app.hub.send(Outbound::Relay(Value::Object(m).to_string().into()));
            None
        }
        "crdt-subscribe" => {
            let (entity, row_id) = row_of(&m)?;
            let w = app.world.lock();
            let e = w.store.entity(&entity).filter(|e| e.crdt)?;
            let row = w.store.rows.get(&entity)?.get(&row_id)?;
            let auth = w.store.auth_user(user);
            if !w.store.can_read(&entity, &auth, Some(row)) {
                return None; // silently nothing, as the real server
            }
            let payload = Value::Object(e.read_back(row)).to_string();
            subs.insert((entity.clone(), row_id.clone()));
            Some(crdt_frame(&entity, &row_id, payload.as_bytes()))
        }
        "crdt-unsubscribe" => {
            let key = row_of(&m)?;
            subs.remove(&key);
            None
        }
        _ => None,
    }
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
Connection: keep-alive\r\nAccess-Control-Allow-Origin: *\r\nX-Content-Type-Options: nosniff\r\n\r\n: connected\n\n";

/// One event-stream client, over any byte connection.
pub(crate) async fn sse_connection(app: Arc<App>, mut tcp: impl AsyncRead + AsyncWrite + Unpin + Send) {
    let (faults, events, keepalive) = {
        let w = app.world.lock();
        (w.faults.sse.clone(), w.faults.events.clone(), w.faults.sse_keepalive_ms.unwrap_or(30_000))
    };
    if faults.refuse {
        return;
    }
    // the server reads once and ignores what it got
    let mut buf = [0u8; 8192];
    if !matches!(tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await, Ok(Ok(n)) if n > 0) {
        return;
    }
    let mut generation = app.hub.generation.subscribe();
    let mut rx = app.hub.tx.subscribe();
    if tcp.write_all(SSE_HEAD.as_bytes()).await.is_err() {
        return;
    }
    if faults.stall {
        let _ = generation.changed().await;
        return;
    }
    app.hub.sse_open.fetch_add(1, Ordering::SeqCst);
    let mut shaper = Shaper::new(events.clone());
    let close_at = faults.close_after_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut tick = tokio::time::interval(Duration::from_millis(keepalive.max(10)));
    tick.tick().await;
    loop {
        let texts: Vec<Arc<str>> = tokio::select! {
            biased; // one order, so a simulation replays
            _ = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => break,
            _ = generation.changed() => break,
            _ = tick.tick() => {
                if tcp.write_all(b": keepalive\n\n").await.is_err() {
                    break;
                }
                continue;
            }
            msg = rx.recv() => match msg {
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
                Ok(Outbound::Event(t)) => shaper.shape(t),
                Ok(Outbound::Raw(t)) => vec![t],
                Ok(_) => continue, // relays and binary frames are WebSocket-only
            }
        };
        let mut ok = true;
        for t in texts {
            let frame = format!("data: {t}\n\n");
            ok = if events.split_sse {
                let (a, b) = frame.as_bytes().split_at(frame.len() / 2);
                let first = tcp.write_all(a).await.is_ok() && tcp.flush().await.is_ok();
                sleep(Duration::from_millis(5)).await;
                first && tcp.write_all(b).await.is_ok()
            } else {
                tcp.write_all(frame.as_bytes()).await.is_ok()
            };
            if !ok {
                break;
            }
        }
        if !ok {
            break;
        }
    }
    app.hub.sse_open.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaper_duplicates_reorders_and_drops() {
        let t = |s: &str| -> Arc<str> { s.into() };
        let mut s = Shaper::new(EventFaults { duplicate: true, ..Default::default() });
        assert_eq!(s.shape(t("a")), vec![t("a"), t("a")]);
        let mut s = Shaper::new(EventFaults { reorder: true, ..Default::default() });
        assert!(s.shape(t("a")).is_empty());
        assert_eq!(s.shape(t("b")), vec![t("b"), t("a")]);
        let mut s = Shaper::new(EventFaults { drop_every: Some(2), ..Default::default() });
        let kept: Vec<_> = ["1", "2", "3", "4"].iter().flat_map(|x| s.shape(t(x))).collect();
        assert_eq!(kept, vec![t("1"), t("3")]);
    }

    #[test]
    fn decodes_bearer_protocols_strictly() {
        assert_eq!(percent_decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
