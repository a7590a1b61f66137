//! How the engine notices that the server it follows restarted.
//!
//! The real server keeps its change log in memory: a restart renumbers it
//! from 1 with one insert per existing row (PROTOCOL §4.3), so a cursor at or
//! below the new head is never told to resync and would silently miss what
//! changed meanwhile. Two independent checks catch it:
//!
//! - [`Boot`]: the server's boot time from `/health` (whole seconds of
//!   uptime), which tells boots apart only when they are more than a second
//!   or so apart;
//! - [`Anchor`]: the last event the replica took. The first pull of every
//!   round asks for it again; a log that no longer holds that very event at
//!   that seq was renumbered, whatever the clocks say.
//!
//! This module owns no state: the engine keeps both values, in memory and in
//! the database's meta table.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocol::{ChangeEvent, Kind};

/// The anchor is asked for again while it is at most this many events
/// behind the cursor (a pull page holds 100).
pub(crate) const ANCHOR_SPAN: u64 = 50;

/// Client clock jitter allowed when telling boots apart (ms).
const BOOT_SLACK: u64 = 1000;

/// When the server started, as an interval of unix ms: `/health` reports
/// whole seconds of uptime, read at some moment during the request. Two
/// boots are told apart only when their intervals cannot overlap, so a slow
/// answer never looks like a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boot {
    pub(crate) earliest: u64,
    pub(crate) latest: u64,
}

impl Boot {
    pub(crate) fn observed(sent_ms: u64, received_ms: u64, uptime_s: u64) -> Boot {
        Boot {
            earliest: sent_ms.saturating_sub(uptime_s.saturating_add(1).saturating_mul(1000)),
            latest: received_ms.saturating_sub(uptime_s.saturating_mul(1000)),
        }
    }

    pub(crate) fn later_than(&self, known: &Boot) -> bool {
        self.earliest > known.latest + BOOT_SLACK
    }

    /// What both observations allow (the newer one alone if they disagree).
    pub(crate) fn narrowed(&self, newer: &Boot) -> Boot {
        let b = Boot { earliest: self.earliest.max(newer.earliest), latest: self.latest.min(newer.latest) };
        if b.earliest <= b.latest {
            b
        } else {
            *newer
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Boot> {
        let (a, b) = text.split_once(',')?;
        Some(Boot { earliest: a.parse().ok()?, latest: b.parse().ok()? })
    }
}

/// The last change event the replica took, as much of it as tells it apart
/// from the event a renumbered log holds at the same seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    pub(crate) seq: u64,
    entity: String,
    row_id: String,
    kind: Kind,
    /// The log's timestamp (whole seconds); empty when the event came from a
    /// stream, which carries none.
    stamp: String,
    /// A digest of the event's data as the log holds it (pull only: streams
    /// rebuild the event). A re-seeded insert carries the row as read back.
    data: Option<String>,
}

impl Anchor {
    pub(crate) fn of(c: &ChangeEvent) -> Anchor {
        let from_log = !c.timestamp.is_empty();
        Anchor {
            seq: c.seq,
            entity: c.entity.clone(),
            row_id: c.row_id.clone(),
            kind: c.kind,
            stamp: c.timestamp.clone(),
            data: from_log.then(|| digest(c)),
        }
    }

    /// Close enough behind `cursor` to be asked for again in the first page
    /// of a pull.
    pub(crate) fn near(&self, cursor: u64) -> bool {
        self.seq >= 1 && self.seq <= cursor && cursor - self.seq < ANCHOR_SPAN
    }

    /// `c`, read from the log now, is the event this anchor was taken from.
    pub(crate) fn matches(&self, c: &ChangeEvent) -> bool {
        let same = c.seq == self.seq && c.entity == self.entity && c.row_id == self.row_id && c.kind == self.kind;
        let both_logged = !self.stamp.is_empty() && !c.timestamp.is_empty();
        same && (!both_logged || (c.timestamp == self.stamp && self.data.as_deref() == Some(digest(c).as_str())))
    }
}

fn digest(c: &ChangeEvent) -> String {
    let text = c.data.as_ref().map(|d| serde_json::Value::Object(d.clone()).to_string()).unwrap_or_default();
    Sha256::digest(text.as_bytes())[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_slow_answer_is_not_a_restart_and_a_real_one_is() {
        // booted at 10,000 ms; checked at 20,000 (uptime 10 s) with a quick answer
        let known = Boot::observed(20_000, 20_010, 10);
        // the same boot seen through a 3 s answer (uptime read late: 13 s)
        let slow = Boot::observed(20_500, 23_600, 13);
        assert!(!slow.later_than(&known));
        assert!(known.narrowed(&slow).earliest <= 10_000 && known.narrowed(&slow).latest >= 10_000);
        // restarted at 25,000: uptime 2 s at 27,000
        let restarted = Boot::observed(27_000, 27_020, 2);
        assert!(restarted.later_than(&known));
        assert_eq!(Boot::parse("5,7"), Some(Boot { earliest: 5, latest: 7 }));
        assert_eq!(Boot::parse("123"), None);
    }

    fn event(seq: u64, row_id: &str, data: serde_json::Value, timestamp: &str) -> ChangeEvent {
        ChangeEvent {
            seq,
            entity: "Todo".into(),
            row_id: row_id.into(),
            kind: Kind::Insert,
            data: data.as_object().cloned(),
            timestamp: timestamp.into(),
        }
    }

    #[test]
    fn a_renumbered_log_is_told_from_the_same_log() {
        let taken = event(7, "0007", json!({ "title": "a" }), "1761811234Z");
        let anchor = Anchor::of(&taken);
        assert!(anchor.matches(&taken));
        // the same event read again from the stream (no timestamp) is the same event
        assert!(anchor.matches(&event(7, "0007", json!({ "title": "a" }), "")));
        // a re-seeded log: another row at that seq, or the same row as read back, or a later boot
        assert!(!anchor.matches(&event(7, "0009", json!({ "title": "a" }), "1761811234Z")));
        assert!(!anchor.matches(&event(7, "0007", json!({ "id": "0007", "title": "a" }), "1761811234Z")));
        assert!(!anchor.matches(&event(7, "0007", json!({ "title": "a" }), "1761811235Z")));
        assert!(!anchor.matches(&event(8, "0007", json!({ "title": "a" }), "1761811234Z")));
        // an anchor taken from a stream compares what a stream carries
        let streamed = Anchor::of(&event(7, "0007", json!({ "title": "a" }), ""));
        assert!(streamed.matches(&taken));
        assert!(!streamed.matches(&event(7, "0008", json!({ "title": "a" }), "1761811234Z")));
        let text = serde_json::to_string(&anchor).unwrap();
        assert_eq!(serde_json::from_str::<Anchor>(&text).unwrap(), anchor);
    }
}
