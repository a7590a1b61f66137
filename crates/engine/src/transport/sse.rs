//! SSE transport (§11): a close-delimited `text/event-stream` body with one
//! `data:` line per event and `:` comment keepalives. The server sends no
//! ids, so a reconnect catches up by pulling, not by `Last-Event-ID`.

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::time::timeout;

use super::{classify, stream_url, Inbound, Link, Liveness, Stream, Which};
use crate::error::{Error, Result};
use crate::io::Chunks;

#[allow(non_upper_case_globals)]
impl Which {
    pub const Sse: Which = Which::new("sse");
}

/// The event stream, at port + 2 (`/events`) unless `sse_url` says
/// otherwise: one way, and open to anonymous readers too.
pub(crate) struct Sse;

impl Stream for Sse {
    fn which(&self) -> Which {
        Which::Sse
    }

    fn follow<'a>(&'a self, link: Link<'a>) -> BoxFuture<'a, Error> {
        let Link { cfg, io, token, opened, on_frame, .. } = link;
        Box::pin(async move {
            let url = match stream_url(cfg.sse_url.as_deref(), &cfg.base_url, http_scheme, 2, "/events") {
                Ok(u) => u,
                Err(e) => return e,
            };
            let stream = match io.event_stream(url, token, cfg.liveness.ping_timeout).await {
                Ok(s) => s,
                Err(e) => return e,
            };
            opened(None);
            run(stream, cfg.liveness, on_frame).await
        })
    }
}

fn http_scheme(http: &str) -> &'static str {
    if http == "https" {
        "https"
    } else {
        "http"
    }
}

/// The largest event we accept (the server's WebSocket frame limit).
const MAX_EVENT: usize = 16 << 20;

pub(crate) fn network(e: impl std::fmt::Display) -> Error {
    Error::Network(format!("sse: {e}"))
}

/// Incremental `text/event-stream` parser: bytes in any split, events out.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    /// `data:` lines of the event being read.
    data: Option<String>,
}

impl Parser {
    /// Feeds bytes; returns the data of every event they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(nl) = self.buf[from..].iter().position(|&b| b == b'\n') {
            let nl = from + nl - start;
            let end = start + nl;
            let line = &self.buf[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            take_line(&mut self.data, line, &mut events);
            start = end + 1;
            from = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        let pending = self.buf.len() + self.data.as_ref().map_or(0, String::len);
        if pending > MAX_EVENT {
            return Err(Error::Protocol(format!("sse event larger than {MAX_EVENT} bytes")));
        }
        Ok(events)
    }
}

/// One line of the stream; a blank line completes the event in `data`.
fn take_line(data: &mut Option<String>, line: &[u8], events: &mut Vec<String>) {
    if line.is_empty() {
        if let Some(d) = data.take() {
            events.push(d);
        }
        return;
    }
    if line[0] == b':' {
        return; // comment (": connected", ": keepalive")
    }
    let (field, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    if field == b"data" {
        let value = String::from_utf8_lossy(value);
        match data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => *data = Some(value.into_owned()),
        }
    }
    // event:, id:, retry: are never sent by the server; ignored
}

/// Checks an event stream's response head.
pub fn check_head(status: u16, content_type: Option<&str>) -> Result<()> {
    if status != 200 {
        return Err(Error::Http {
            status,
            code: "SSE_REJECTED".into(),
            message: format!("event stream answered {status}"),
            retry_after: None,
        });
    }
    if !content_type.is_some_and(|v| v.starts_with("text/event-stream")) {
        return Err(Error::Protocol("event stream answered without text/event-stream".into()));
    }
    Ok(())
}

/// Reads the stream until it ends or stays silent longer than the liveness
/// allows. Returns why it ended.
pub async fn run(mut chunks: Chunks, live: Liveness, on_frame: &(dyn Fn(Inbound) + Send + Sync)) -> Error {
    let mut parser = Parser::default();
    loop {
        match timeout(live.sse_idle(), chunks.next()).await {
            Err(_) => return network(format!("silent for {} ms", live.sse_idle().as_millis())),
            Ok(Some(Err(e))) => return e,
            Ok(None) => return network("stream ended"),
            Ok(Some(Ok(bytes))) => match parser.feed(&bytes) {
                Ok(events) => events.iter().for_each(|d| on_frame(classify(d))),
                Err(e) => return e,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let text = ": connected\n\ndata: {\"a\":1}\n\n: keepalive\n\ndata: x\r\ndata: y\r\n\r\nid: 3\ndata:z\n\n";
        let want = vec!["{\"a\":1}".to_string(), "x\ny".to_string(), "z".to_string()];
        for chunk in 1..text.len() {
            let mut p = Parser::default();
            let mut got = Vec::new();
            for part in text.as_bytes().chunks(chunk) {
                got.extend(p.feed(part).unwrap());
            }
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn refuses_an_endless_event() {
        let mut p = Parser::default();
        let line = vec![b'x'; 1 << 20];
        p.feed(b"data: ").unwrap();
        let mut failed = false;
        for _ in 0..20 {
            if p.feed(&line).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
