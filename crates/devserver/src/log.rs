//! The change log: one global seq, bounded retention, pull paging (§4, §5).

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::clock::Clock;

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub entity: String,
    pub row_id: String,
    pub kind: &'static str,
    pub data: Option<Map<String, Value>>,
    pub timestamp: String,
}

impl Event {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "seq": self.seq, "entity": self.entity, "row_id": self.row_id,
            "kind": self.kind, "timestamp": self.timestamp,
        });
        if let Some(d) = &self.data {
            v["data"] = Value::Object(d.clone());
        }
        v
    }
}

pub struct ChangeLog {
    events: VecDeque<Event>,
    head: u64,
    pub retention: usize,
    clock: Arc<Clock>,
}

/// What a pull asks of the log, before read filtering.
pub enum Pull<'a> {
    Page {
        events: Vec<&'a Event>,
        cursor: u64,
        has_more: bool,
    },
    /// 410 with `oldest_seq`.
    Gone {
        oldest_seq: u64,
    },
}

impl ChangeLog {
    pub fn new(retention: usize, clock: Arc<Clock>) -> ChangeLog {
        ChangeLog { events: VecDeque::new(), head: 0, retention, clock }
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn append(
        &mut self,
        entity: &str,
        row_id: &str,
        kind: &'static str,
        data: Option<Map<String, Value>>,
    ) -> Event {
        self.head += 1;
        let secs = self.clock.now_nanos() / 1_000_000_000;
        let ev = Event {
            seq: self.head,
            entity: entity.to_string(),
            row_id: row_id.to_string(),
            kind,
            data,
            timestamp: format!("{secs}Z"),
        };
        self.events.push_back(ev.clone());
        while self.events.len() > self.retention {
            self.events.pop_front();
        }
        ev
    }

    /// Forgets everything (a server restart); seq starts again at 1.
    /// Every event kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    pub fn clear(&mut self) {
        self.events.clear();
        self.head = 0;
    }

    pub fn pull(&self, since: u64, page_size: usize) -> Pull<'_> {
        if since > self.head {
            return Pull::Gone { oldest_seq: self.head + 1 };
        }
        let oldest = self.events.front().map_or(self.head + 1, |e| e.seq);
        if since > 0 && since + 1 < oldest {
            return Pull::Gone { oldest_seq: oldest };
        }
        let start = self.events.partition_point(|e| e.seq <= since);
        let events: Vec<&Event> = self.events.range(start..).take(page_size).collect();
        let cursor = events.last().map_or(since, |e| e.seq);
        let has_more = self.events.back().is_some_and(|e| e.seq > cursor);
        Pull::Page { events, cursor, has_more }
    }
}
