//! Checks a server the way the engine would use it (`pylon-sync doctor`):
//! its health, the TLS chain, the session a token resolves to, the
//! manifest, the change log, and each realtime stream, each through the
//! same client and transport code the engine runs. Every check that fails
//! says why and what to do about it.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::unbounded_channel;
use tokio::time::Instant;

use crate::api::Api;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::io::Io;
use crate::transport::{Link, Stream, LADDER};

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    /// Not checked: it does not apply (plain HTTP has no TLS), or an
    /// earlier failure decides it.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    /// What was found.
    pub detail: String,
    /// For a failure: the likely cause, and what to do.
    pub cause: Option<String>,
    pub fix: Option<String>,
    pub ms: u64,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>, since: Instant) -> Check {
        Check { name, outcome: Outcome::Ok, detail: detail.into(), cause: None, fix: None, ms: ms(since) }
    }

    fn skipped(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, outcome: Outcome::Skipped, detail: detail.into(), cause: None, fix: None, ms: 0 }
    }

    fn failed(name: &'static str, e: &Error, since: Instant, fix: impl Into<String>) -> Check {
        Check {
            name,
            outcome: Outcome::Failed,
            detail: format!("{} ({})", e, e.code()),
            cause: Some(cause(e)),
            fix: Some(fix.into()),
            ms: ms(since),
        }
    }
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// What an error most likely means, in a user's words.
fn cause(e: &Error) -> String {
    match e {
        Error::Network(_) => "nothing answered there: the server is down, the port is wrong, or a firewall drops it",
        Error::Tls(_) => "the server's certificate is not trusted by this machine, or does not name this host",
        Error::Http { status: 401 | 403, .. } | Error::Auth(_) => "the server refused this token",
        Error::Http { status: 404, .. } => "the server has no such route: an older server, or not a Pylon server",
        Error::Http { status: 429, .. } => "the server's rate limit refused the request",
        Error::Http { status, .. } if *status >= 500 => "the server failed while answering",
        Error::Protocol(_) => "the answer is not what a Pylon server sends: a proxy, or another program on that port",
        _ => "see the detail",
    }
    .to_string()
}

/// Runs every check against `cfg.base_url` with `cfg.token`, in order.
pub async fn check(cfg: &Config) -> Result<Vec<Check>> {
    let io = crate::net::Net::shared(cfg.ca.as_deref(), cfg.timeouts)?;
    let api = Api::new(&cfg.base_url, io.clone())?;
    let token = cfg.token.as_deref().filter(|t| !t.is_empty());
    let tls = cfg.base_url.starts_with("https://");
    let mut out = Vec::new();

    let t = Instant::now();
    let health = api.uptime().await;
    out.push(match &health {
        Ok(Some(up)) => Check::ok("health", format!("/health answers; up {up} s"), t),
        Ok(None) => Check::ok("health", "the server answers (no /health route: restarts cannot be noticed)", t),
        Err(e @ Error::Tls(_)) => Check::failed("health", e, t, "see the tls check"),
        Err(e) => Check::failed(
            "health",
            e,
            t,
            "check the URL and port, and that the server runs (`pylon dev` serves HTTP on 4321)",
        ),
    });
    out.push(match (&health, tls) {
        (_, false) => Check::skipped("tls", "plain http: nothing to verify"),
        (Err(e @ Error::Tls(_)), true) => Check::failed(
            "tls",
            e,
            t,
            "pass the server's CA certificate as the `ca` option (`--ca FILE`), or add it to NODE_EXTRA_CA_CERTS",
        ),
        (Err(_), true) => Check::skipped("tls", "not reached"),
        (Ok(_), true) => Check::ok("tls", "the certificate chain is trusted and names the host", t),
    });
    if health.is_err() {
        for name in ["session", "manifest", "log", "websocket", "sse"] {
            out.push(Check::skipped(name, "the server did not answer"));
        }
        return Ok(out);
    }

    let t = Instant::now();
    let session = api.me(token).await;
    let signed_in = matches!(&session, Ok(s) if s.user_id.is_some());
    out.push(match &session {
        Ok(s) if s.user_id.is_some() => Check::ok(
            "session",
            format!(
                "signed in{}{}",
                if s.is_admin { " as an admin" } else { "" },
                s.tenant_id.as_ref().map_or(String::new(), |t| format!(", tenant {t}"))
            ),
            t,
        ),
        Ok(_) if token.is_some() => Check::failed(
            "session",
            &Error::Auth("the server answers this token as anonymous".into()),
            t,
            "the token is unknown, expired or revoked: sign in again for a new one",
        ),
        Ok(_) => Check::ok("session", "anonymous (no token given: only public rows, no WebSocket)", t),
        Err(e) => Check::failed("session", e, t, "check the token (`--token`), and that /api/auth/me is reachable"),
    });

    let t = Instant::now();
    out.push(match api.entities(token).await {
        Ok(list) => {
            let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
            Check::ok("manifest", format!("{} entities: {}", names.len(), names.join(", ")), t)
        }
        Err(e) => Check::failed("manifest", &e, t, "the engine needs /api/manifest to know the entities to mirror"),
    });

    let t = Instant::now();
    out.push(match api.head(token).await {
        Ok(head) => Check::ok("log", format!("the change log's head is {head}"), t),
        Err(e) => Check::failed("log", &e, t, "the engine pulls /api/sync/pull: check proxies in front of the server"),
    });

    for stream in LADDER {
        let name = stream.which().name();
        if stream.needs_user() && !signed_in {
            out.push(Check::skipped(name, "the server takes it only from a signed-in user (give --token)"));
            continue;
        }
        let t = Instant::now();
        out.push(match open_stream(cfg, &*io, *stream).await {
            Ok(()) => Check::ok(name, "opens", t),
            Err(e) => {
                let fix = if name == "websocket" {
                    "the server listens for WebSockets on its port + 1 (or pass --ws-url); a proxy must pass Upgrade"
                } else {
                    "the server streams events on its port + 2 at /events (or pass --sse-url); a proxy must not buffer"
                };
                Check::failed(name, &e, t, format!("{fix}; the engine falls back to polling meanwhile"))
            }
        });
    }
    Ok(out)
}

/// Opens one stream as the engine would, and lets it go once open.
async fn open_stream(cfg: &Config, io: &dyn Io, stream: &dyn Stream) -> Result<()> {
    let (tx, mut rx) = unbounded_channel();
    // a stream that can send ends when every sender is gone: one is kept
    let _keep = tx.clone();
    let (open_tx, mut open_rx) = unbounded_channel::<()>();
    let mut on_open = move |_| {
        let _ = open_tx.send(());
    };
    let on_frame = |_| {};
    let link = Link {
        cfg,
        io,
        token: cfg.token.clone(),
        outbound: &mut rx,
        sender: tx,
        opened: &mut on_open,
        on_frame: &on_frame,
    };
    let within = cfg.liveness.ping_timeout + Duration::from_secs(1);
    tokio::select! {
        ended = stream.follow(link) => Err(ended),
        _ = open_rx.recv() => Ok(()),
        _ = tokio::time::sleep(within) => Err(Error::Network(format!("it did not open within {} s", within.as_secs()))),
    }
}
