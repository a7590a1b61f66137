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
//! - [`Anchor`]: the last events the replica took (a run of up to 16, and
//!   the cursor they were taken up to). Every pull page reads them again; a
//!   log that no longer holds those very events at those seqs, ends before
//!   them, or shows this reader an event there it was never shown, was
//!   renumbered, whatever the clocks say.
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

/// The last events the replica took (at most [`MARKS`] of them, none more
/// than [`ANCHOR_SPAN`] behind the cursor, and after a snapshot also those
/// its rows may hold beyond it), each as much as tells it apart
/// from the event a renumbered log holds at the same seq. A run of events
/// rather than one: a single update can recur at the same seq (the same
/// patch to the same row within the same second), a run of them does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Anchor {
    /// Ascending by seq; never empty.
    marks: Vec<Mark>,
    /// The cursor the marks were taken up to: events after the newest mark
    /// up to here were not shown to this reader.
    #[serde(default)]
    at: u64,
}

/// How many of the last events an anchor keeps.
const MARKS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Mark {
    seq: u64,
    /// A digest of the entity, row id and kind.
    what: String,
    /// The log's timestamp (whole seconds); empty when the event came from a
    /// stream, which carries none.
    stamp: String,
    /// A digest of the event's data as the log holds it (pull only: streams
    /// rebuild the event). A re-seeded insert carries the row as read back.
    data: Option<String>,
}

impl Mark {
    fn of(c: &ChangeEvent) -> Mark {
        let from_log = !c.timestamp.is_empty();
        Mark { seq: c.seq, what: what(c), stamp: c.timestamp.clone(), data: from_log.then(|| digest(c)) }
    }

    /// `c`, read from the log now, is the event this mark was taken from.
    fn matches(&self, c: &ChangeEvent) -> bool {
        if c.seq != self.seq || what(c) != self.what {
            return false;
        }
        match (&self.data, c.timestamp.is_empty()) {
            (Some(data), false) => c.timestamp == self.stamp && *data == digest(c),
            // taken from a stream, which never carries a restart's re-seeded
            // inserts: they are appended at boot, before any connection
            (None, false) => !reseeded(c),
            // read from a stream: compare what a stream carries
            (_, true) => true,
        }
    }
}

impl Anchor {
    /// The anchor after the replica took `events` (ascending) on top of
    /// `before`, with its cursor now at `cursor`. `None` when no event taken
    /// lies near the cursor.
    pub(crate) fn extended(before: Option<&Anchor>, events: &[ChangeEvent], cursor: u64) -> Option<Anchor> {
        Anchor::ahead(before, events, cursor, cursor)
    }

    /// As [`extended`](Self::extended), for rows that may already hold the
    /// events after `cursor` up to `upto` (a snapshot's rows, read while the
    /// log grew): those are marked too, so a log renumbered before the
    /// replica pulls them is noticed even when it is the same up to `cursor`.
    pub(crate) fn ahead(before: Option<&Anchor>, events: &[ChangeEvent], upto: u64, cursor: u64) -> Option<Anchor> {
        let newest = before.and_then(|a| a.marks.last()).map_or(0, |m| m.seq);
        let mut marks: Vec<Mark> = before.map(|a| a.marks.clone()).unwrap_or_default();
        marks.extend(events.iter().filter(|c| c.seq > newest && c.seq <= upto).map(Mark::of));
        let near = |m: &Mark| m.seq >= 1 && (m.seq > cursor || cursor - m.seq < ANCHOR_SPAN);
        marks.retain(near);
        let skip = marks.len().saturating_sub(MARKS);
        marks.drain(..skip);
        (!marks.is_empty()).then_some(Anchor { marks, at: cursor })
    }

    /// The anchor of one event alone.
    pub(crate) fn of(c: &ChangeEvent) -> Anchor {
        Anchor { marks: vec![Mark::of(c)], at: c.seq }
    }

    /// This anchor's newest mark alone.
    pub(crate) fn newest(&self) -> Anchor {
        let m = &self.marks[self.marks.len() - 1];
        Anchor { marks: vec![m.clone()], at: m.seq }
    }

    /// The marks close enough behind `cursor` to be asked for again in the
    /// first page of a pull.
    pub(crate) fn near(&self, cursor: u64) -> Option<Anchor> {
        Anchor::extended(Some(self), &[], cursor)
    }

    /// The seq a pull starts after to read the marks again. A read from 0
    /// is answered from the oldest event kept rather than with a 410, so a
    /// check from 0 that fails may only mean the log moved on: the caller
    /// asks again from the cursor to tell.
    /// Never past the cursor: when every mark lies past it (a snapshot's
    /// rows that hold more than 16 events past their head), the events
    /// between the cursor and the marks are still to be read.
    pub(crate) fn read_from(&self) -> u64 {
        let first = self.marks[0].seq - 1;
        if self.at > 0 {
            first.min(self.at)
        } else {
            first
        }
    }

    /// Checks the log's events read now after `from` up to `to` (the head
    /// when `at_head`), for a replica whose cursor is at `cursor`. `None` when the log differs from the one the replica
    /// followed — an event this anchor marks is missing or another, or the
    /// log ends before it or before the cursor, or it holds an event the replica did not take
    /// between the oldest mark and the cursor (the same reader is shown the
    /// same events of the same log) — else the anchor as the log confirms
    /// it (marks taken from a stream gain what only the log carries).
    pub(crate) fn check(
        &self,
        events: &[ChangeEvent],
        from: u64,
        to: u64,
        at_head: bool,
        cursor: u64,
    ) -> Option<Anchor> {
        if at_head && to < cursor {
            return None; // the log ends before the cursor
        }
        let oldest = self.marks[0].seq.max(from + 1);
        let untaken = events.iter().filter(|c| c.seq >= oldest && c.seq <= cursor.min(to));
        if untaken.clone().any(|c| !self.marks.iter().any(|m| m.seq == c.seq)) {
            return None;
        }
        let mut marks = Vec::with_capacity(self.marks.len());
        for m in &self.marks {
            if m.seq <= from {
                marks.push(m.clone()); // not read again
                continue;
            }
            if m.seq > to {
                if at_head {
                    return None; // the log ends before it
                }
                marks.push(m.clone());
                continue;
            }
            let c = events.iter().find(|c| m.matches(c))?;
            marks.push(if c.timestamp.is_empty() { m.clone() } else { Mark::of(c) });
        }
        Some(Anchor { marks, at: self.at })
    }

    /// The cursor the marks were taken up to.
    pub(crate) fn at(&self) -> u64 {
        self.at.max(self.marks[self.marks.len() - 1].seq)
    }
}

/// The insert a restart appends for an existing row: its data is the row as
/// read back, id included (a client's insert never carries the id the
/// server is about to give).
fn reseeded(c: &ChangeEvent) -> bool {
    c.kind == Kind::Insert && c.data.as_ref().and_then(|d| d.get("id")).and_then(|v| v.as_str()) == Some(&c.row_id)
}

fn what(c: &ChangeEvent) -> String {
    let kind = serde_json::to_string(&c.kind).unwrap_or_default();
    short(&format!("{}\0{}\0{kind}", c.entity, c.row_id))
}

fn digest(c: &ChangeEvent) -> String {
    short(&c.data.as_ref().map(|d| serde_json::Value::Object(d.clone()).to_string()).unwrap_or_default())
}

fn short(text: &str) -> String {
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

    fn anchor_of(c: &ChangeEvent) -> Anchor {
        Anchor::extended(None, std::slice::from_ref(c), c.seq).unwrap()
    }

    fn seen(a: &Anchor, events: &[ChangeEvent]) -> bool {
        let to = events.iter().map(|c| c.seq).max().unwrap_or(0);
        a.check(events, a.read_from(), to, false, to).is_some()
    }

    #[test]
    fn a_renumbered_log_is_told_from_the_same_log() {
        let taken = event(7, "0007", json!({ "title": "a" }), "1761811234Z");
        let anchor = anchor_of(&taken);
        assert!(seen(&anchor, std::slice::from_ref(&taken)));
        // the same event read again from the stream (no timestamp) is the same event
        assert!(seen(&anchor, &[event(7, "0007", json!({ "title": "a" }), "")]));
        // a re-seeded log: another row at that seq, or the same row as read back, or a later boot
        assert!(!seen(&anchor, &[event(7, "0009", json!({ "title": "a" }), "1761811234Z")]));
        assert!(!seen(&anchor, &[event(7, "0007", json!({ "id": "0007", "title": "a" }), "1761811234Z")]));
        assert!(!seen(&anchor, &[event(7, "0007", json!({ "title": "a" }), "1761811235Z")]));
        assert!(!seen(&anchor, &[event(8, "0007", json!({ "title": "a" }), "1761811234Z")]));
        // an anchor taken from a stream compares what a stream carries, and
        // is never a restart's re-seeded insert
        let streamed = anchor_of(&event(7, "0007", json!({ "title": "a" }), ""));
        assert!(seen(&streamed, std::slice::from_ref(&taken)));
        assert!(!seen(&streamed, &[event(7, "0008", json!({ "title": "a" }), "1761811234Z")]));
        assert!(!seen(&streamed, &[event(7, "0007", json!({ "id": "0007", "title": "a" }), "1761811234Z")]));
        // confirmed by the log, it carries what the log does
        let confirmed = streamed.check(std::slice::from_ref(&taken), 6, 7, true, 7).unwrap();
        // a log that ends before the event does not hold it
        assert!(anchor.check(&[event(6, "0006", json!({}), "1761811234Z")], 5, 6, true, 7).is_none());
        assert!(anchor.check(&[event(6, "0006", json!({}), "1761811234Z")], 5, 6, false, 7).is_some());
        assert!(!seen(&confirmed, &[event(7, "0007", json!({ "title": "a" }), "1761811299Z")]));
        let text = serde_json::to_string(&anchor).unwrap();
        assert_eq!(serde_json::from_str::<Anchor>(&text).unwrap(), anchor);
    }

    #[test]
    fn one_recurring_update_does_not_pass_for_the_run_before_it() {
        let update = |seq, row: &str| ChangeEvent {
            kind: Kind::Update,
            ..event(seq, row, json!({ "done": true }), "1761811234Z")
        };
        // the replica took an insert then two identical updates of that row
        let taken = [event(3, "r1", json!({ "title": "a" }), "1761811234Z"), update(4, "r1"), update(5, "r1")];
        let anchor = Anchor::extended(None, &taken, 5).unwrap();
        assert!(seen(&anchor, &taken));
        // restarted in the same second: the row re-seeded at 3, another insert
        // at 4, and the same update again at 5
        let renumbered = [
            event(3, "r1", json!({ "id": "r1", "title": "a" }), "1761811234Z"),
            event(4, "r2", json!({}), "1761811234Z"),
            update(5, "r1"),
        ];
        assert!(!seen(&anchor, &renumbered));
    }

    #[test]
    fn an_event_shown_now_that_the_replica_never_took_means_another_log() {
        // the replica took a re-seeded note at 1; 2 and 3 were someone
        // else's (filtered out); its cursor is at 3
        let note = event(1, "n1", json!({ "id": "n1", "body": "a" }), "1761811234Z");
        let anchor = Anchor::extended(None, std::slice::from_ref(&note), 3).unwrap();
        assert!(anchor.check(std::slice::from_ref(&note), 0, 3, true, 3).is_some());
        // restarted within the second: the same re-seed at 1, and at 3 a note
        // of ours the old log never had there
        let ours = event(3, "n3", json!({ "body": "b" }), "1761811234Z");
        assert!(anchor.check(&[note.clone(), ours.clone()], 0, 3, true, 3).is_none());
        // past the cursor, it is simply new
        assert!(anchor.check(&[note, ChangeEvent { seq: 4, ..ours }], 0, 4, true, 3).is_some());
    }

    #[test]
    fn an_anchor_keeps_the_last_events_near_the_cursor() {
        let events: Vec<ChangeEvent> = (1..=40).map(|s| event(s, &format!("r{s}"), json!({}), "1Z")).collect();
        let a = Anchor::extended(None, &events, 40).unwrap();
        assert_eq!(a.marks.len(), MARKS);
        assert_eq!(a.read_from(), 40 - MARKS as u64);
        // the cursor moves on without events for us: the marks age out
        assert!(a.near(40 + ANCHOR_SPAN - 1).is_some());
        assert!(a.near(40 + ANCHOR_SPAN + MARKS as u64).is_none());
        assert!(Anchor::extended(Some(&a), &[], 200).is_none());
    }

    #[test]
    fn rows_read_past_the_head_are_checked_past_it_too() {
        let log = [
            event(1, "a", json!({ "id": "a" }), "t1"),
            event(2, "b", json!({ "id": "b" }), "t1"),
            event(3, "c", json!({ "title": "c" }), "t1"),
        ];
        // rows read at head 2 that already hold the insert at 3
        let anchor = Anchor::ahead(None, &log, 3, 2).unwrap();
        assert!(anchor.check(&log, 0, 3, true, 2).is_some());
        // a restart re-seeded the same first two events within the second
        let other = [log[0].clone(), log[1].clone(), event(3, "d", json!({ "title": "d" }), "t1")];
        assert!(anchor.check(&other, 0, 3, true, 2).is_none(), "another event past the head");
        assert!(anchor.check(&other[..2], 0, 2, true, 2).is_none(), "a log that ends at the head");
        // marks past the cursor are kept as the cursor moves up to them
        assert_eq!(anchor.near(2).unwrap().read_from(), 0);
        assert_eq!(Anchor::extended(Some(&anchor), &[], 3).unwrap().at(), 3);
        // rows that hold more events past their head than the anchor keeps:
        // the events between the head and the marks are still read
        let busy: Vec<ChangeEvent> =
            (3..=30).map(|seq| event(seq, &format!("r{seq}"), json!({ "title": "t" }), "t1")).collect();
        let anchor = Anchor::ahead(None, &busy, 30, 2).unwrap();
        assert_eq!(anchor.read_from(), 2);
    }
}
