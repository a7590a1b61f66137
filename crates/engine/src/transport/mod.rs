//! Realtime transports (PROTOCOL.md §10–§11): what arrives on a stream, how
//! it is classified, and where each stream lives. The streams are hints: the
//! pull endpoint stays the source of truth (the engine decides what to do
//! with each event).
//!
//! A transport is one file (`ws`, `sse`): its name (`Which`), and a
//! [`Stream`] that connects and runs a connection. It is registered by one
//! entry in [`LADDER`], whose order is the automatic mode's preference.

pub mod sse;
pub mod ws;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::config::Config;
pub use crate::config::{Liveness, Which};
use crate::error::{Error, Result};
use crate::io::Io;
use crate::protocol::ChangeEvent;

/// Every stream, best first: the automatic mode starts at the first one the
/// session allows, steps down the list, then to polling, and probes back up.
pub(crate) static LADDER: &[&dyn Stream] = &[&ws::WebSocket, &sse::Sse];

#[allow(non_upper_case_globals)]
impl Which {
    /// Pulling every `poll_interval`, with no stream.
    pub const Poll: Which = Which::new("poll");

    /// The transport of that name: a stream of the ladder, or polling.
    pub fn named(name: &str) -> Option<Which> {
        LADDER.iter().map(|s| s.which()).chain([Which::Poll]).find(|w| w.name() == name)
    }

    /// Every name, best first, polling last.
    pub fn names() -> Vec<&'static str> {
        LADDER.iter().map(|s| s.which().name()).chain([Which::Poll.name()]).collect()
    }

    /// The ladder's top.
    pub(crate) fn best() -> Which {
        LADDER.first().map_or(Which::Poll, |s| s.which())
    }

    /// Its stream (`None` for polling).
    pub(crate) fn stream(self) -> Option<&'static dyn Stream> {
        LADDER.iter().copied().find(|s| s.which() == self)
    }

    /// Its place on the ladder (polling below every stream).
    pub(crate) fn rank(self) -> usize {
        LADDER.iter().position(|s| s.which() == self).unwrap_or(LADDER.len())
    }

    /// The transport `steps` places below (negative: above), kept on the ladder.
    pub(crate) fn step(self, steps: isize) -> Which {
        let at = (self.rank() as isize + steps).clamp(0, LADDER.len() as isize) as usize;
        LADDER.get(at).map_or(Which::Poll, |s| s.which())
    }
}

/// Better first, as the ladder has them.
impl PartialOrd for Which {
    fn partial_cmp(&self, other: &Which) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Which {
    fn cmp(&self, other: &Which) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// A realtime transport: connects, says when it is open, and runs the
/// connection until it ends.
pub(crate) trait Stream: Sync {
    fn which(&self) -> Which;

    /// Whether the server takes it only from a signed-in user.
    fn needs_user(&self) -> bool {
        false
    }

    /// Connects (within `link.cfg.liveness.ping_timeout`), calls
    /// `link.opened` once open, then hands every frame to `link.on_frame`
    /// until the connection ends. Returns why it ended.
    fn follow<'a>(&'a self, link: Link<'a>) -> BoxFuture<'a, Error>;
}

/// What a connection is given by the follower.
pub(crate) struct Link<'a> {
    pub cfg: &'a Config,
    pub io: &'a dyn Io,
    pub token: Option<String>,
    /// Text frames to send, for a stream that can send (it hands `sender`
    /// to `opened`; one that cannot hands `None`).
    pub outbound: &'a mut UnboundedReceiver<String>,
    pub sender: UnboundedSender<String>,
    pub opened: &'a mut (dyn FnMut(Option<UnboundedSender<String>>) + Send),
    pub on_frame: &'a (dyn Fn(Inbound) + Send + Sync),
}

/// A frame received on a stream, classified (§10.3).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Change(ChangeEvent),
    /// A presence relay from a WebSocket client, stamped with its user id.
    Presence {
        from: Option<String>,
        client_id: Option<String>,
        event: String,
        data: Value,
    },
    /// Some connection closed (the id is the server's connection counter).
    Disconnect {
        connection: Option<u64>,
    },
    Topic {
        topic: String,
        from: Option<String>,
        data: Value,
    },
    /// Rooms API events (join, leave, room presence, broadcast), passed on as they came.
    Room(Map<String, Value>),
    Binary(BinaryFrame),
    /// Valid JSON of a type we do not know.
    Unknown,
    /// Not JSON, not an object, or a change event that does not parse.
    Malformed,
}

/// `0x10`/`0x11` CRDT frame: entity and row id, then opaque bytes (§10.4).
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryFrame {
    /// The raw frame, as received.
    pub bytes: Vec<u8>,
    /// `None` when the header does not decode.
    pub header: Option<BinaryHeader>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BinaryHeader {
    /// 0x10 snapshot, 0x11 update.
    pub frame_type: u8,
    pub entity: String,
    pub row_id: String,
    /// Where the payload starts in `bytes`.
    pub payload_offset: usize,
}

impl BinaryFrame {
    pub fn decode(bytes: Vec<u8>) -> BinaryFrame {
        let header = decode_header(&bytes);
        BinaryFrame { bytes, header }
    }
}

fn decode_header(b: &[u8]) -> Option<BinaryHeader> {
    let frame_type = *b.first()?;
    let mut at = 1;
    let take_str = |at: &mut usize| -> Option<String> {
        let len = u16::from_be_bytes([*b.get(*at)?, *b.get(*at + 1)?]) as usize;
        let s = b.get(*at + 2..*at + 2 + len)?;
        *at += 2 + len;
        String::from_utf8(s.to_vec()).ok()
    };
    let entity = take_str(&mut at)?;
    let row_id = take_str(&mut at)?;
    Some(BinaryHeader { frame_type, entity, row_id, payload_offset: at })
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

fn str_of(m: &Map<String, Value>, key: &str) -> Option<String> {
    m.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Classifies one text frame (a WebSocket text message or an SSE `data:`).
/// Upstream's rule: an object with truthy `seq`, `entity` and `kind` is a
/// change event; otherwise its `type` decides.
pub fn classify(text: &str) -> Inbound {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return Inbound::Malformed;
    };
    if truthy(m.get("seq")) && truthy(m.get("entity")) && truthy(m.get("kind")) {
        return match serde_json::from_value(Value::Object(m)) {
            Ok(ev) => Inbound::Change(ev),
            Err(_) => Inbound::Malformed,
        };
    }
    let kind = m.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
    match kind.as_str() {
        "presence" if m.contains_key("room") => Inbound::Room(m),
        "presence" => {
            let event = str_of(&m, "event").unwrap_or_default();
            if event == "disconnect" {
                return Inbound::Disconnect { connection: m.get("clientId").and_then(Value::as_u64) };
            }
            Inbound::Presence {
                from: str_of(&m, "from"),
                client_id: str_of(&m, "clientId"),
                event,
                data: m.get("data").cloned().unwrap_or(Value::Null),
            }
        }
        "topic" => match str_of(&m, "topic") {
            Some(topic) => {
                Inbound::Topic { topic, from: str_of(&m, "from"), data: m.get("data").cloned().unwrap_or(Value::Null) }
            }
            None => Inbound::Malformed,
        },
        "join" | "leave" | "broadcast" => Inbound::Room(m),
        _ => Inbound::Unknown,
    }
}

/// The URL a stream connects to: the one configured, else derived from the
/// HTTP base URL (see `derive_url`).
fn stream_url(
    configured: Option<&str>,
    base: &str,
    scheme_for: fn(&str) -> &'static str,
    offset: u16,
    path: &str,
) -> Result<String> {
    match configured {
        Some(u) => Ok(u.to_string()),
        None => derive_url(base, scheme_for, offset, path),
    }
}

/// The stream URL for the HTTP base URL: same host, port + `offset` when the
/// base URL names a port (§10.1), else the scheme's default port.
pub fn derive_url(base: &str, scheme_for: fn(&str) -> &'static str, offset: u16, path: &str) -> Result<String> {
    let url = reqwest::Url::parse(base).map_err(|e| Error::InvalidArg(format!("baseUrl {base:?}: {e}")))?;
    let host = url.host_str().ok_or_else(|| Error::InvalidArg(format!("baseUrl {base:?} has no host")))?;
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
    let scheme = scheme_for(url.scheme());
    Ok(match url.port() {
        Some(p) => format!(
            "{scheme}://{host}:{}{path}",
            p.checked_add(offset)
                .ok_or_else(|| { Error::InvalidArg(format!("baseUrl port {p} leaves no room for the stream port")) })?
        ),
        None => format!("{scheme}://{host}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames_like_upstream() {
        let ev = classify(r#"{"seq":3,"entity":"Todo","row_id":"a","kind":"insert","data":{"t":1},"timestamp":""}"#);
        assert!(matches!(ev, Inbound::Change(ChangeEvent { seq: 3, .. })));
        // seq 0 is not a change event; neither is a bad kind
        assert_eq!(classify(r#"{"seq":0,"entity":"Todo","kind":"insert"}"#), Inbound::Unknown);
        assert_eq!(classify(r#"{"seq":1,"entity":"Todo","row_id":"a","kind":"upsert"}"#), Inbound::Malformed);
        assert_eq!(classify("not json"), Inbound::Malformed);
        assert_eq!(classify("[1,2]"), Inbound::Malformed);
        assert_eq!(classify(r#"{"type":"mystery"}"#), Inbound::Unknown);
        assert_eq!(
            classify(r#"{"type":"presence","event":"disconnect","clientId":17}"#),
            Inbound::Disconnect { connection: Some(17) }
        );
        assert!(matches!(
            classify(r#"{"type":"presence","event":"update","data":{"x":1},"from":"alice","clientId":"c1"}"#),
            Inbound::Presence { from: Some(f), client_id: Some(c), .. } if f == "alice" && c == "c1"
        ));
        assert!(matches!(
            classify(r#"{"type":"topic","topic":"chat","data":"hi","from":"bob"}"#),
            Inbound::Topic { topic, .. } if topic == "chat"
        ));
        assert!(matches!(classify(r#"{"type":"presence","room":"r","user_id":"u","data":{}}"#), Inbound::Room(_)));
        assert!(matches!(classify(r#"{"type":"join","room":"r","user_id":"u"}"#), Inbound::Room(_)));
    }

    #[test]
    fn the_ladder_names_and_orders_every_transport() {
        assert_eq!(Which::names(), ["websocket", "sse", "poll"]);
        assert_eq!(Which::named("sse"), Some(Which::Sse));
        assert_eq!(Which::named("auto"), None, "automatic is no transport");
        assert_eq!(Which::named("carrier-pigeon"), None);
        assert!(Which::WebSocket < Which::Sse && Which::Sse < Which::Poll);
        assert_eq!(Which::best(), Which::WebSocket);
        assert_eq!(
            (Which::Poll.step(-1), Which::Sse.step(-1), Which::WebSocket.step(-1)),
            (Which::Sse, Which::WebSocket, Which::WebSocket)
        );
        assert_eq!(
            (Which::WebSocket.step(1), Which::Sse.step(1), Which::Poll.step(1)),
            (Which::Sse, Which::Poll, Which::Poll)
        );
        assert!(Which::Poll.stream().is_none());
        assert!(Which::WebSocket.stream().unwrap().needs_user() && !Which::Sse.stream().unwrap().needs_user());
        assert_eq!(serde_json::to_string(&Which::WebSocket).unwrap(), "\"websocket\"");
    }

    #[test]
    fn decodes_binary_headers() {
        let mut b = vec![0x10, 0, 3];
        b.extend_from_slice(b"Doc");
        b.extend_from_slice(&[0, 2]);
        b.extend_from_slice(b"d1");
        b.extend_from_slice(&[9, 9, 9]);
        let f = BinaryFrame::decode(b.clone());
        let h = f.header.unwrap();
        assert_eq!((h.frame_type, h.entity.as_str(), h.row_id.as_str()), (0x10, "Doc", "d1"));
        assert_eq!(&b[h.payload_offset..], &[9, 9, 9]);
        for cut in 0..10 {
            assert!(BinaryFrame::decode(b[..cut].to_vec()).header.is_none(), "cut at {cut}");
        }
        assert!(BinaryFrame::decode(vec![0x10, 0, 200, b'x']).header.is_none());
    }

    #[test]
    fn derives_stream_urls() {
        let ws_scheme = |s: &str| if s == "https" { "wss" } else { "ws" };
        assert_eq!(derive_url("http://127.0.0.1:4321", ws_scheme, 1, "/").unwrap(), "ws://127.0.0.1:4322/");
        assert_eq!(derive_url("https://api.example.com/x", ws_scheme, 1, "/").unwrap(), "wss://api.example.com/");
        assert_eq!(
            derive_url("http://localhost:4321/", |s| if s == "https" { "https" } else { "http" }, 2, "/events")
                .unwrap(),
            "http://localhost:4323/events"
        );
        assert_eq!(derive_url("http://[::1]:8080", ws_scheme, 1, "/").unwrap(), "ws://[::1]:8081/");
        assert!(derive_url("http://h:65535", ws_scheme, 1, "/").is_err());
    }
}
