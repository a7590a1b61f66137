//! What the model-based tests share: the faults they switch on in the dev
//! server, and how they compare and judge what a store shows.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use pylon_sync_engine::{Engine, Kind, MutationStatus};
use serde_json::{json, Map, Value};

/// A fault of the dev server's HTTP side.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    Unavailable,
    RateLimited,
    Malformed,
    /// The insert is applied, its answer lost.
    LostInsertAnswer,
    Resync,
    /// Every answer takes 400 ms.
    Stall,
}

impl Fault {
    /// Any fault; `stall`: a stall too (cheap only where time is not real).
    /// Written out as `prop_oneof!` so the kept seeds keep their cases.
    pub fn any(stall: bool) -> BoxedStrategy<Fault> {
        use Fault::*;
        if stall {
            prop_oneof![
                Just(Unavailable),
                Just(RateLimited),
                Just(Malformed),
                Just(LostInsertAnswer),
                Just(Resync),
                Just(Stall)
            ]
            .boxed()
        } else {
            prop_oneof![Just(Unavailable), Just(RateLimited), Just(Malformed), Just(LostInsertAnswer), Just(Resync)]
                .boxed()
        }
    }

    /// The `/__control/faults` body that switches it on.
    pub fn body(self) -> Value {
        let rule = match self {
            Fault::Unavailable => json!({ "path": "/api/", "count": 3, "status": 503 }),
            Fault::RateLimited => json!({ "path": "/api/", "count": 2, "status": 429, "retryAfter": 0 }),
            Fault::Malformed => json!({ "path": "/api/sync/pull", "count": 2, "malformed": true }),
            Fault::LostInsertAnswer => {
                json!({ "path": "/api/entities/Todo", "method": "POST", "count": 1, "status": 503, "afterApply": true })
            }
            Fault::Resync => json!({ "path": "/api/sync/pull", "count": 1, "status": 410 }),
            Fault::Stall => return json!({ "delayMs": 400, "sseKeepaliveMs": 100 }),
        };
        json!({ "rules": [rule], "sseKeepaliveMs": 100 })
    }
}

fn normalize(v: &Value) -> Value {
    match v {
        Value::Bool(b) => json!(*b as i64),
        other => other.clone(),
    }
}

/// A row as compared: its fields, normalized, nulls dropped.
pub fn comparable(r: &Map<String, Value>) -> String {
    let m: BTreeMap<&String, Value> = r.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, normalize(v))).collect();
    serde_json::to_string(&m).unwrap()
}

pub fn title_of(r: &Map<String, Value>) -> String {
    r.get("title").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// What no notification may show: an insert twice, or a row whose delete
/// resolved. Titles are never reused; `ambiguous` ones are left out.
pub fn impossible(
    rows: &[Map<String, Value>],
    deleted: &BTreeSet<String>,
    ambiguous: &BTreeSet<String>,
) -> Option<String> {
    let mut seen = BTreeSet::new();
    for r in rows {
        let title = title_of(r);
        if title.is_empty() || ambiguous.contains(&title) {
            continue;
        }
        if deleted.contains(&title) {
            return Some(format!("{title} shown after its delete resolved"));
        }
        if !seen.insert(title.clone()) {
            return Some(format!("{title} shown twice"));
        }
    }
    None
}

/// Rows as compared, in a stable order.
pub fn sorted(rows: &[Map<String, Value>]) -> Vec<String> {
    let mut out: Vec<String> = rows.iter().map(comparable).collect();
    out.sort();
    out
}

/// What `user` may read of the server's `rows` of `entity`: every Todo,
/// their own Notes.
pub fn readable(rows: &[Map<String, Value>], entity: &str, user: &str) -> Vec<String> {
    let mine: Vec<Map<String, Value>> =
        rows.iter().filter(|r| entity == "Todo" || r["userId"] == json!(user)).cloned().collect();
    sorted(&mine)
}

/// Titles whose delete resolved, each with the id of its mutation (`None`
/// once it left the queue).
pub type Deletes = BTreeMap<String, Option<String>>;

/// Records the delete of `row_id` (titled `title`) that just resolved on `engine`.
pub fn record_delete(deletes: &mut Deletes, engine: &Engine, row_id: &str, title: String) {
    let m = engine.mutations().into_iter().rev().find(|m| m.kind == Kind::Delete && m.row_id == row_id);
    deletes.insert(title, m.map(|m| m.id));
}

/// The titles of `deletes` still deleted: a delete the server refused since
/// gives its row back (e.g. one made across an identity flip, of a row the
/// new identity never had).
pub fn still_deleted(deletes: &Deletes, engine: &Engine) -> BTreeSet<String> {
    let refused: BTreeSet<String> =
        engine.mutations().into_iter().filter(|m| m.status == MutationStatus::Failed).map(|m| m.id).collect();
    deletes.iter().filter(|(_, m)| m.as_ref().is_none_or(|m| !refused.contains(m))).map(|(t, _)| t.clone()).collect()
}
