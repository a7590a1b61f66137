//! WebSocket transport (§10): bearer subprotocol auth, our own pings (the
//! server never sends any), and a session loop that ends with the reason the
//! connection died.

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{classify, stream_url, BinaryFrame, Inbound, Link, Liveness, Stream, Which};
use crate::error::{Error, Result};
use crate::io::{Conn, Io};

pub type Socket = WebSocketStream<MaybeTlsStream<Box<dyn Conn>>>;

#[allow(non_upper_case_globals)]
impl Which {
    pub const WebSocket: Which = Which::new("websocket");
}

/// The WebSocket stream, at port + 1 unless `ws_url` says otherwise. It
/// carries frames both ways (presence, topics, CRDT subscriptions), and the
/// server takes it only from a signed-in user.
pub(crate) struct WebSocket;

impl Stream for WebSocket {
    fn which(&self) -> Which {
        Which::WebSocket
    }

    fn needs_user(&self) -> bool {
        true
    }

    fn follow<'a>(&'a self, link: Link<'a>) -> BoxFuture<'a, Error> {
        let Link { cfg, io, token, outbound, sender, opened, on_frame } = link;
        Box::pin(async move {
            let url = match stream_url(cfg.ws_url.as_deref(), &cfg.base_url, ws_scheme, 1, "/") {
                Ok(u) => u,
                Err(e) => return e,
            };
            let socket = match connect(io, &url, token.as_deref(), cfg.liveness.ping_timeout, io.tls()).await {
                Ok(s) => s,
                Err(e) => return e,
            };
            opened(Some(sender));
            run(socket, cfg.liveness, outbound, on_frame).await
        })
    }
}

fn ws_scheme(http: &str) -> &'static str {
    if http == "https" {
        "wss"
    } else {
        "ws"
    }
}

/// The server's frame limit (§10.2).
const MAX_MESSAGE: usize = 16 << 20;

/// `bearer.<token>` with every byte outside `[A-Za-z0-9-._~]` percent-encoded,
/// as `encodeURIComponent` would (the server decodes strictly).
pub fn bearer_protocol(token: &str) -> String {
    let mut s = String::from("bearer.");
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn network(e: impl std::fmt::Display) -> Error {
    Error::Network(format!("websocket: {e}"))
}

fn from_ws(e: WsError) -> Error {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .map(std::time::Duration::from_secs);
            Error::Http {
                status,
                code: "WS_HANDSHAKE_REJECTED".into(),
                message: format!("websocket handshake answered {status}"),
                retry_after,
            }
        }
        WsError::Tls(e) => Error::Tls(e.to_string()),
        other => crate::tls::failure(&other).unwrap_or_else(|| network(other)),
    }
}

/// Opens the socket over a connection from `io`; the connection and the
/// handshake must finish within `within`. `tls`: whom to trust (else the
/// web roots).
pub async fn connect(
    io: &dyn Io,
    url: &str,
    token: Option<&str>,
    within: std::time::Duration,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Socket> {
    let mut req = url.into_client_request().map_err(|e| Error::InvalidArg(format!("wsUrl {url:?}: {e}")))?;
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        let proto = HeaderValue::from_str(&bearer_protocol(t)).map_err(network)?;
        req.headers_mut().insert("sec-websocket-protocol", proto);
    }
    let cfg = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let uri = req.uri();
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let conn = io.dial(host, port);
    let fut = async move {
        let conn = conn.await?;
        tokio_tungstenite::client_async_tls_with_config(req, conn, Some(cfg), connector).await.map_err(from_ws)
    };
    match timeout(within, fut).await {
        Err(_) => Err(network("handshake timed out")),
        Ok(Err(e)) => Err(e),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// Runs an open socket until it dies: frames go to `on_frame`, text from
/// `outbound` is sent, and a ping that gets no frame back within
/// `ping_timeout` ends the session. Returns why it ended.
pub async fn run(
    mut socket: Socket,
    live: Liveness,
    outbound: &mut UnboundedReceiver<String>,
    on_frame: &(dyn Fn(Inbound) + Send + Sync),
) -> Error {
    let mut next_ping = Instant::now() + live.ping_interval;
    // set while a ping is unanswered: the moment the connection is declared dead
    let mut dead_at: Option<Instant> = None;
    loop {
        let wake = dead_at.unwrap_or(next_ping);
        tokio::select! {
            biased; // one order, so a simulation replays
            msg = socket.next() => {
                dead_at = None;
                match msg {
                    None => return network("connection closed"),
                    Some(Err(e)) => return network(e),
                    Some(Ok(Message::Text(t))) => on_frame(classify(t.as_str())),
                    Some(Ok(Message::Binary(b))) => on_frame(Inbound::Binary(BinaryFrame::decode(b.to_vec()))),
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) if f.code == CloseCode::Policy => Error::Http {
                                status: 401,
                                code: "WS_UNAUTHORIZED".into(),
                                message: format!("websocket closed with 1008: {}", f.reason),
                                retry_after: None,
                            },
                            Some(f) => network(format!("closed by the server ({} {})", u16::from(f.code), f.reason)),
                            None => network("closed by the server"),
                        };
                    }
                    Some(Ok(_)) => {} // ping (answered by the library), pong
                }
            }
            out = outbound.recv() => {
                let Some(text) = out else { return network("engine stopped") };
                if let Err(e) = send(&mut socket, Message::text(text), live).await {
                    return e;
                }
            }
            _ = sleep_until(wake) => {
                if dead_at.is_some() {
                    return network(format!("no answer to a ping within {} ms", live.ping_timeout.as_millis()));
                }
                if let Err(e) = send(&mut socket, Message::Ping(Default::default()), live).await {
                    return e;
                }
                dead_at = Some(Instant::now() + live.ping_timeout);
                next_ping = Instant::now() + live.ping_interval;
            }
        }
    }
}

/// A send that cannot hang on a peer that stopped reading.
async fn send(socket: &mut Socket, msg: Message, live: Liveness) -> Result<()> {
    match timeout(live.ping_timeout, socket.send(msg)).await {
        Err(_) => Err(network("send timed out")),
        Ok(Err(e)) => Err(network(e)),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_protocol_percent_encodes_like_encode_uri_component() {
        assert_eq!(bearer_protocol("pylon_abc123"), "bearer.pylon_abc123");
        assert_eq!(bearer_protocol("a b/c=é"), "bearer.a%20b%2Fc%3D%C3%A9");
    }
}
