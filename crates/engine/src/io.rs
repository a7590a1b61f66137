//! The engine's ways out to the world, behind one trait: HTTP exchanges,
//! event-stream bodies, connections for WebSockets, the wall clock, chance,
//! and where database work runs. `net::Net` is the real one and the default; a
//! simulation stands in for all of them at once (`tests/sim.rs`), which is
//! what makes a run replayable from its seed. Timers are not here: tokio's
//! clock already pauses and advances virtually under a simulation.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::Result;

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

    /// Whom a WebSocket's TLS trusts (`None`: the web roots).
    fn tls(&self) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        None
    }

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

impl std::fmt::Debug for dyn Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}
