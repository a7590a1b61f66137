//! The engine's ways out to the world, behind one trait: HTTP exchanges,
//! event-stream bodies, connections for WebSockets, the wall clock, chance,
//! and where database work runs. [`Net`] is the real one and the default; a
//! simulation stands in for all of them at once (`tests/sim.rs`), which is
//! what makes a run replayable from its seed. Timers are not here: tokio's
//! clock already pauses and advances virtually under a simulation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

use crate::error::{Error, Result};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A response body's bytes as they arrive; the stream ends with the body.
pub type Chunks = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes>> + Send>>;

/// A byte connection a WebSocket runs over.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// One HTTP request as the engine makes it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    /// Sent as `Authorization: Bearer`; never logged.
    pub token: Option<String>,
    /// A JSON body.
    pub json: Option<Vec<u8>>,
    /// Ask for a new connection (`Connection: close`).
    pub close: bool,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<Duration>,
    /// The `Server` header.
    pub server: Option<String>,
    pub body: Bytes,
}

pub trait Io: Send + Sync + 'static {
    /// One request, answered in full. A transport failure is `Err`; any
    /// status is `Ok`.
    fn send(&self, req: Request) -> BoxFuture<Result<Response>>;

    /// Opens an event stream (`GET`, `Accept: text/event-stream`); the
    /// response head must arrive within `within`, with status 200 and that
    /// content type.
    fn event_stream(&self, url: String, token: Option<String>, within: Duration) -> BoxFuture<Result<Chunks>>;

    /// A connection to `host:port` for a WebSocket handshake.
    fn dial(&self, host: String, port: u16) -> BoxFuture<Result<Box<dyn Conn>>>;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// A number in `0..=max`.
    fn random(&self, max: u64) -> u64;

    /// Database work runs on the calling task instead of tokio's blocking
    /// pool (a simulation runs everything on one thread, in one order).
    fn inline_db(&self) -> bool {
        false
    }
}

/// Ten base-36 characters of chance, for ids.
pub fn random_suffix(io: &dyn Io) -> String {
    (0..10).map(|_| char::from_digit(io.random(35) as u32, 36).unwrap_or('0')).collect()
}

/// The real world: reqwest over TCP (and TLS), the system clock, the thread RNG.
pub struct Net {
    http: reqwest::Client,
    /// Certificate authorities to trust besides the web roots (PEM).
    ca: Option<String>,
}

impl Net {
    pub fn new(ca: Option<&str>) -> Result<Net> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        let http = crate::tls::trust_http(builder, ca)?.build().map_err(|e| Error::Network(e.to_string()))?;
        Ok(Net { http, ca: ca.map(str::to_string) })
    }

    pub fn shared(ca: Option<&str>) -> Result<Arc<dyn Io>> {
        Ok(Arc::new(Net::new(ca)?))
    }
}

impl Io for Net {
    fn send(&self, req: Request) -> BoxFuture<Result<Response>> {
        let mut builder = self.http.request(req.method, &req.url);
        if req.close {
            builder = builder.header(reqwest::header::CONNECTION, "close");
        }
        if let Some(t) = req.token.filter(|t| !t.is_empty()) {
            builder = builder.bearer_auth(t);
        }
        if let Some(body) = req.json {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        Box::pin(async move {
            let resp = builder.send().await.map_err(crate::api::network)?;
            let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let server = header(reqwest::header::SERVER);
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(crate::api::network)?;
            Ok(Response { status, retry_after, server, body })
        })
    }

    fn event_stream(&self, url: String, token: Option<String>, within: Duration) -> BoxFuture<Result<Chunks>> {
        let ca = self.ca.clone();
        Box::pin(async move {
            use crate::transport::sse::network;
            let builder = reqwest::Client::builder().connect_timeout(within).tcp_nodelay(true);
            let http = crate::tls::trust_http(builder, ca.as_deref())?.build().map_err(network)?;
            let mut req = http.get(&url).header("accept", "text/event-stream").header("cache-control", "no-cache");
            if let Some(t) = token.filter(|t| !t.is_empty()) {
                req = req.bearer_auth(t); // ignored by the server today; harmless
            }
            let resp = match timeout(within, req.send()).await {
                Err(_) => return Err(network("no answer in time")),
                Ok(Err(e)) => return Err(crate::tls::failure(&e).unwrap_or_else(|| network(e.without_url()))),
                Ok(Ok(r)) => r,
            };
            let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            crate::transport::sse::check_head(resp.status().as_u16(), content_type.as_deref())?;
            let chunks = futures_util::stream::unfold(Some(resp), |resp| async move {
                let mut resp = resp?;
                match resp.chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(resp))),
                    Ok(None) => None,
                    Err(e) => Some((Err(network(e.without_url())), None)),
                }
            });
            Ok(Box::pin(chunks) as Chunks)
        })
    }

    fn dial(&self, host: String, port: u16) -> BoxFuture<Result<Box<dyn Conn>>> {
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| Error::Network(format!("websocket: connect to {host}:{port}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(tcp) as Box<dyn Conn>)
        })
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn random(&self, max: u64) -> u64 {
        use rand::Rng;
        rand::rng().random_range(0..=max)
    }
}

impl std::fmt::Debug for dyn Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}
