//! The real world behind [`Io`]: reqwest for HTTP and event streams, TCP
//! for WebSockets, the system clock, the thread's random generator, and a
//! blocking thread for database work.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::timeout;

use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::io::{BoxFuture, Chunks, Conn, Io, Request, Response};
use crate::transport::sse;

/// The real world: reqwest over TCP (and TLS), the system clock, the thread RNG.
pub struct Net {
    ca: Option<String>,
    timeouts: Timeouts,
    /// Made on first use, or by the thread `shared` starts: reading the
    /// system's trust store costs a fresh process milliseconds, which the
    /// caller of `Engine::new` (the JS thread) does not wait for.
    client: OnceLock<std::result::Result<Client, Error>>,
}

/// The HTTP client, and whom TLS trusts (see `tls`), for event streams and
/// WebSockets too.
struct Client {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl Net {
    /// A bad `ca` is refused here; the client is made later (`client`).
    pub fn new(ca: Option<&str>, timeouts: Timeouts) -> Result<Net> {
        if let Some(ca) = ca {
            crate::tls::check_ca(ca)?;
        }
        Ok(Net { ca: ca.map(str::to_string), timeouts, client: OnceLock::new() })
    }

    /// A `Net` whose client is made at once on a thread of its own, while
    /// the caller goes on (an engine loads its replica meanwhile).
    pub fn shared(ca: Option<&str>, timeouts: Timeouts) -> Result<Arc<dyn Io>> {
        let net = Arc::new(Net::new(ca, timeouts)?);
        let early = net.clone();
        let made = std::thread::Builder::new().name("pylon-sync-tls".into()).spawn(move || drop(early.client()));
        if made.is_err() {
            tracing::debug!("no thread to make the HTTP client early; it is made on first use");
        }
        Ok(net)
    }

    fn client(&self) -> Result<&Client> {
        let made = self.client.get_or_init(|| {
            let tls = crate::tls::client_config(self.ca.as_deref())?;
            let http = reqwest::Client::builder()
                .connect_timeout(self.timeouts.connect)
                .timeout(self.timeouts.request)
                .tcp_nodelay(true)
                .use_preconfigured_tls((*tls).clone())
                .build()
                .map_err(|e| Error::Network(e.to_string()))?;
            Ok(Client { http, tls })
        });
        made.as_ref().map_err(Clone::clone)
    }
}

impl Io for Net {
    fn send(&self, req: Request) -> BoxFuture<Result<Response>> {
        let http = match self.client() {
            Ok(c) => &c.http,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let mut builder = http.request(req.method, &req.url);
        if req.close {
            builder = builder.header(reqwest::header::CONNECTION, "close");
        }
        if let Some(t) = req.token.filter(|t| !t.is_empty()) {
            builder = builder.bearer_auth(t);
        }
        if let Some(body) = req.json {
            builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let (url, timeouts) = (req.url.clone(), self.timeouts);
        let failed = move |e: reqwest::Error| explained(network(&e), &e, &url, timeouts);
        Box::pin(async move {
            let resp = builder.send().await.map_err(&failed)?;
            let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
            let server = header(reqwest::header::SERVER);
            let retry_after = header(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(&failed)?;
            Ok(Response { status, retry_after, server, body })
        })
    }

    fn event_stream(&self, url: String, token: Option<String>, within: Duration) -> BoxFuture<Result<Chunks>> {
        let tls = self.client().map(|c| (*c.tls).clone());
        Box::pin(async move {
            let tls = tls?;
            let http = reqwest::Client::builder()
                .connect_timeout(within)
                .tcp_nodelay(true)
                .use_preconfigured_tls(tls)
                .build()
                .map_err(sse::network)?;
            let mut req = http.get(&url).header("accept", "text/event-stream").header("cache-control", "no-cache");
            if let Some(t) = token.filter(|t| !t.is_empty()) {
                req = req.bearer_auth(t); // ignored by the server today; harmless
            }
            let resp = match timeout(within, req.send()).await {
                Err(_) => return Err(sse::network("no answer in time")),
                Ok(Err(e)) => return Err(crate::tls::failure(&e).unwrap_or_else(|| sse::network(e.without_url()))),
                Ok(Ok(r)) => r,
            };
            let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_string);
            sse::check_head(resp.status().as_u16(), content_type.as_deref())?;
            let chunks = futures_util::stream::unfold(Some(resp), |resp| async move {
                let mut resp = resp?;
                match resp.chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(resp))),
                    Ok(None) => None,
                    Err(e) => Some((Err(sse::network(e.without_url())), None)),
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

    fn tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.client().ok().map(|c| c.tls.clone())
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn random(&self, max: u64) -> u64 {
        use rand::Rng;
        rand::rng().random_range(0..=max)
    }
}

/// A failed HTTP exchange, as an error that names no token (reqwest's
/// `Display` names the URL, never headers).
fn network(e: &reqwest::Error) -> Error {
    if let Some(tls) = crate::tls::failure(e) {
        return tls;
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_decode() {
        Error::Protocol(msg)
    } else {
        Error::Network(msg)
    }
}

/// A failed request's error with what most likely caused it: no answer in
/// time names the limit; an `https://` URL whose handshake failed or went
/// unanswered may point at a server that speaks plain HTTP.
fn explained(error: Error, e: &reqwest::Error, url: &str, timeouts: Timeouts) -> Error {
    let secs = |d: Duration| format!("{} s", d.as_secs_f64());
    let error = if e.is_timeout() {
        let limit = if e.is_connect() { timeouts.connect } else { timeouts.request };
        let what = match error {
            Error::Network(m) => m,
            other => other.to_string(),
        };
        Error::Network(format!("no answer within {} (the `timeout` option): {what}", secs(limit)))
    } else {
        error
    };
    let handshake = e.is_timeout() || matches!(error, Error::Tls(_)) || e.is_connect();
    if !(url.starts_with("https://") && handshake) {
        return error;
    }
    let hint = "; the URL says https:// — if the server speaks plain HTTP, use http://";
    match error {
        Error::Tls(m) if !m.contains("certificate") => Error::Network(format!("TLS handshake failed: {m}{hint}")),
        Error::Network(m) => Error::Network(format!("{m}{hint}")),
        other => other,
    }
}
