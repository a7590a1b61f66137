//! What an engine is opened with.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::io::Io;

/// A realtime transport, by the name it has in options, status and events:
/// each stream's file names its own (`Which::WebSocket` in `transport::ws`)
/// and registers it on the ladder (`transport::LADDER`), which also orders
/// them, better first; polling is the ladder's floor.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Which(&'static str);

impl Which {
    pub(crate) const fn new(name: &'static str) -> Which {
        Which(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

impl fmt::Debug for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl Serialize for Which {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// How often a live connection is checked, and how long an answer may take.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// A WebSocket ping is sent after this long without one.
    pub ping_interval: Duration,
    /// No frame at all this long after a ping (or, for the handshake, after
    /// connecting) means the connection is dead.
    pub ping_timeout: Duration,
}

impl Liveness {
    /// SSE cannot ping; the server sends a comment every 30 s. A stream silent
    /// for two ping intervals plus the timeout is dead.
    pub fn sse_idle(&self) -> Duration {
        self.ping_interval * 2 + self.ping_timeout
    }
}

/// How long an HTTP request may take: a server that accepts connections
/// but never answers must not hold `start()`, a round or a direct call for
/// long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open the connection (TCP and TLS).
    pub connect: Duration,
    /// For the whole exchange, answer included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { connect: Duration::from_secs(10), request: Duration::from_secs(30) }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub base_url: String,
    /// Only this transport (polling: no stream); `None`: automatic, the
    /// best stream first (WebSocket; SSE when it cannot connect or keeps
    /// dying; polling after that), better ones probed again later.
    pub transport: Option<Which>,
    pub poll_interval: Duration,
    /// Base of the reconnect/retry backoff.
    pub reconnect_delay: Duration,
    pub token: Option<String>,
    /// Overrides the WebSocket URL derived from `base_url` (port + 1).
    pub ws_url: Option<String>,
    /// Overrides the SSE URL derived from `base_url` (port + 2, `/events`).
    pub sse_url: Option<String>,
    pub liveness: Liveness,
    /// PEM of certificate authorities to trust for https/wss besides the web roots.
    pub ca: Option<String>,
    pub timeouts: Timeouts,
    /// After falling back to a lesser transport, try a better one again this
    /// long later (doubling while it keeps failing, up to 10 min).
    pub probe_interval: Duration,
    /// `None`: keep everything in memory.
    pub db_path: Option<PathBuf>,
    pub app_name: String,
    /// Expression indexes on the entity views' columns (`sql`).
    pub indexes: crate::sql::Indexes,
    /// Where requests, streams, the clock and chance come from (`None`: the
    /// network and the system; a simulation brings its own).
    pub io: Option<Arc<dyn Io>>,
}

impl Config {
    pub fn new(base_url: &str) -> Config {
        Config {
            base_url: base_url.to_string(),
            transport: None,
            poll_interval: Duration::from_millis(1000),
            reconnect_delay: Duration::from_millis(1000),
            token: None,
            ws_url: None,
            sse_url: None,
            liveness: Liveness { ping_interval: Duration::from_secs(15), ping_timeout: Duration::from_secs(10) },
            probe_interval: Duration::from_secs(60),
            ca: None,
            timeouts: Timeouts::default(),
            db_path: None,
            app_name: "default".into(),
            indexes: Default::default(),
            io: None,
        }
    }
}
