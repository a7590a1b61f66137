//! What the manifest says each field of an entity holds, and server rows
//! read back into those types. The real server reads rows back through
//! SQLite: a `bool` comes back as 0/1 from a snapshot or a GET while change
//! events carry `true`, and a number written to a `string` field is stored
//! as its text. Every row the server gives us passes through `normalize`,
//! so one list never mixes the two forms. Writes are checked against the
//! same fields (`Schema::check`) before they are queued, so the server never
//! turns `42` into `"42"` behind the user's back. Pure; owns nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::protocol::{Kind, Row};

/// A field's kind, as far as reading it back is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Bool,
    /// `int` and `float`.
    Number,
    /// `string`, `datetime`, `richtext` and `id(<Entity>)`: stored as text.
    Text,
    /// Anything else is left as it comes.
    Other,
}

impl FieldType {
    /// From the manifest's type name (PROTOCOL §16.3).
    pub fn of(name: &str) -> FieldType {
        match name {
            "bool" => FieldType::Bool,
            "int" | "float" => FieldType::Number,
            "string" | "datetime" | "richtext" => FieldType::Text,
            t if t.starts_with("id(") => FieldType::Text,
            _ => FieldType::Other,
        }
    }
}

/// One field of an entity, as the manifest declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub name: String,
    /// The manifest's type name (`string`, `int`, `id(User)`, …).
    #[serde(rename = "type")]
    pub ty: String,
    pub optional: bool,
}

impl Field {
    fn kind(&self) -> FieldType {
        FieldType::of(&self.ty)
    }

    /// Why `v` cannot be written to this field, if it cannot.
    fn refuses(&self, v: &Value) -> Option<String> {
        let fits = match (self.kind(), v) {
            (_, Value::Null) => return (!self.optional).then(|| "is required and cannot be null".to_string()),
            (FieldType::Bool, Value::Bool(_)) => true,
            (FieldType::Number, Value::Number(n)) => self.ty != "int" || n.is_i64() || n.is_u64() || is_whole(n),
            (FieldType::Text, Value::String(s)) => self.ty != "datetime" || is_datetime(s),
            (FieldType::Other, _) => true,
            _ => false,
        };
        if fits {
            return None;
        }
        let wanted = match self.ty.as_str() {
            "bool" => "a boolean".to_string(),
            "int" => "an integer".to_string(),
            "float" => "a number".to_string(),
            "datetime" => "an ISO-8601 date-time string (or a Date)".to_string(),
            "string" | "richtext" => "a string".to_string(),
            t => format!("a string ({t})"),
        };
        Some(format!("must be {wanted}, got {}", shown(v)))
    }
}

/// The fields of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fields(Vec<Field>);

impl Fields {
    /// From one entity of `/api/manifest` (`{name, fields: [{name, type, optional}]}`).
    pub fn from_manifest(entity: &Value) -> Fields {
        let fields = entity.get("fields").and_then(Value::as_array).into_iter().flatten();
        Fields(
            fields
                .filter_map(|f| {
                    Some(Field {
                        name: f.get("name")?.as_str()?.to_string(),
                        ty: f.get("type")?.as_str()?.to_string(),
                        optional: f.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    })
                })
                .collect(),
        )
    }

    pub fn iter(&self) -> impl Iterator<Item = &Field> {
        self.0.iter()
    }

    /// Brings the fields `row` holds (a whole row or a patch) to their
    /// types: 0/1 for a bool becomes `false`/`true`, a number's text a
    /// number, a number in a text field its text. Anything else that does
    /// not fit is left as the server gave it.
    pub fn normalize(&self, row: &mut Row) {
        for field in &self.0 {
            let Some(v) = row.get_mut(&field.name) else { continue };
            let typed = match (field.kind(), &*v) {
                (FieldType::Bool, Value::Number(n)) if n.as_u64() == Some(0) => Some(Value::Bool(false)),
                (FieldType::Bool, Value::Number(n)) if n.as_u64() == Some(1) => Some(Value::Bool(true)),
                (FieldType::Number, Value::String(s)) => number(s).map(Value::Number),
                (FieldType::Text, Value::Number(n)) => Some(Value::String(n.to_string())),
                _ => None,
            };
            if let Some(t) = typed {
                *v = t;
            }
        }
    }

    /// Why a write of `kind` with `data` cannot go to this entity, naming
    /// the field: a field it does not have, a value of the wrong type, or
    /// (an insert) a required field left out. Said after the entity's name
    /// (`.title must be a string…`, ` has no field…`).
    pub fn refuses(&self, kind: Kind, data: Option<&Row>) -> Option<String> {
        let data = data.into_iter().flatten();
        for (name, v) in data.clone() {
            match self.0.iter().find(|f| &f.name == name) {
                None => {
                    let known: Vec<&str> = self.0.iter().map(|f| f.name.as_str()).collect();
                    return Some(format!(" has no field {name:?} (its fields: {})", known.join(", ")));
                }
                Some(f) => {
                    if let Some(why) = f.refuses(v) {
                        return Some(format!(".{name} {why}"));
                    }
                }
            }
        }
        if kind == Kind::Insert {
            let given = |f: &Field| data.clone().any(|(n, v)| *n == f.name && !v.is_null());
            if let Some(f) = self.0.iter().find(|f| !f.optional && !given(f)) {
                return Some(format!(".{} is required", f.name));
            }
        }
        None
    }
}

/// Every entity's fields, from the manifest: writes are checked against it
/// and rows read back into it. Kept in the replica file, so a start without
/// the server still checks writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Schema(BTreeMap<String, Fields>);

impl Schema {
    pub fn new(entities: impl IntoIterator<Item = (String, Fields)>) -> Schema {
        Schema(entities.into_iter().collect())
    }

    pub fn fields(&self, entity: &str) -> Option<&Fields> {
        self.0.get(entity)
    }

    /// Every entity with its fields, by name.
    pub fn entities(&self) -> impl Iterator<Item = (&String, &Fields)> {
        self.0.iter()
    }

    /// A write the manifest rules out, as `ERR_SYNC_INVALID_ARG` naming the
    /// entity and the field.
    pub fn check(&self, entity: &str, kind: Kind, data: Option<&Row>) -> Result<()> {
        let Some(fields) = self.0.get(entity) else {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            return Err(Error::InvalidArg(format!(
                "unknown entity {entity:?}: the server's manifest has {}",
                known.join(", ")
            )));
        };
        match fields.refuses(kind, data) {
            Some(why) => Err(Error::InvalidArg(format!("{entity}{why}"))),
            None => Ok(()),
        }
    }
}

/// A whole number held as a float (`5.0`), which JSON cannot tell from `5`.
fn is_whole(n: &Number) -> bool {
    n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15)
}

/// ISO-8601 as `Date.prototype.toISOString` and RFC 3339 write it: a date
/// (`2026-01-02`), optionally a time (`T03:04`, seconds and a fraction
/// optional) and a zone (`Z` or `±hh:mm`).
fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let two = |at: usize, max: u32| digits(at..at + 2) && s[at..at + 2].parse::<u32>().is_ok_and(|v| v <= max);
    let date = digits(0..4) && b.get(4) == Some(&b'-') && two(5, 12) && b.get(7) == Some(&b'-') && two(8, 31);
    if !date || &s[5..7] == "00" || &s[8..10] == "00" {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if !matches!(b[10], b'T' | b't' | b' ') || !two(11, 23) || b.get(13) != Some(&b':') || !two(14, 59) {
        return false;
    }
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        if !two(i + 1, 60) {
            return false;
        }
        i += 3;
        if b.get(i) == Some(&b'.') {
            let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            i += 1 + n;
        }
    }
    match &b[i..] {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', ..] => b.len() == i + 6 && two(i + 1, 23) && b[i + 3] == b':' && two(i + 4, 59),
        _ => false,
    }
}

/// A value as an error message shows it: short, and never a whole document.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn number(text: &str) -> Option<Number> {
    match text.trim().parse::<i64>() {
        Ok(i) => Some(i.into()),
        Err(_) => text.trim().parse::<f64>().ok().and_then(Number::from_f64),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rows_read_back_through_sqlite_get_the_manifests_types() {
        let entity = json!({ "name": "Todo", "fields": [
            { "name": "title", "type": "string" }, { "name": "done", "type": "bool" },
            { "name": "count", "type": "int" }, { "name": "ratio", "type": "float" },
            { "name": "at", "type": "datetime" }, { "name": "owner", "type": "id(User)" },
            { "name": "blob", "type": "json" } ] });
        let fields = Fields::from_manifest(&entity);
        let mut row =
            json!({ "id": "a", "title": 42, "done": 1, "count": "7", "ratio": "0.5", "at": "2026-01-01T00:00:00Z",
            "owner": 9, "blob": 1, "extra": 1 })
            .as_object()
            .unwrap()
            .clone();
        fields.normalize(&mut row);
        assert_eq!(
            Value::Object(row),
            json!({ "id": "a", "title": "42", "done": true, "count": 7, "ratio": 0.5, "at": "2026-01-01T00:00:00Z",
                "owner": "9", "blob": 1, "extra": 1 })
        );
        // a patch: only what it holds; what does not fit stays as given
        let mut patch = json!({ "done": 0 }).as_object().unwrap().clone();
        fields.normalize(&mut patch);
        assert_eq!(Value::Object(patch), json!({ "done": false }));
        let mut odd = json!({ "done": 2, "count": "many", "title": null }).as_object().unwrap().clone();
        fields.normalize(&mut odd);
        assert_eq!(Value::Object(odd), json!({ "done": 2, "count": "many", "title": null }));
    }

    fn todo() -> Schema {
        let entity = json!({ "name": "Todo", "fields": [
            { "name": "title", "type": "string", "optional": false }, { "name": "done", "type": "bool", "optional": false },
            { "name": "count", "type": "int", "optional": true }, { "name": "ratio", "type": "float", "optional": true },
            { "name": "due", "type": "datetime", "optional": true }, { "name": "owner", "type": "id(User)", "optional": true } ] });
        Schema::new([("Todo".to_string(), Fields::from_manifest(&entity))])
    }

    fn check(kind: Kind, data: Value) -> std::result::Result<(), String> {
        todo().check("Todo", kind, data.as_object()).map_err(|e| {
            assert_eq!(e.code(), "ERR_SYNC_INVALID_ARG");
            e.to_string()
        })
    }

    #[test]
    fn writes_are_checked_against_the_manifest_naming_the_entity_and_field() {
        assert_eq!(check(Kind::Insert, json!({ "title": "a", "done": false })), Ok(()));
        let full = json!({ "title": "a", "done": true, "count": 5.0, "ratio": 0.5, "due": "2026-01-02T03:04:05.678Z",
            "owner": "u1" });
        assert_eq!(check(Kind::Insert, full), Ok(()));
        let refused = [
            (Kind::Insert, json!({ "title": 42, "done": false }), "Todo.title must be a string, got 42"),
            (Kind::Insert, json!({ "title": "a" }), "Todo.done is required"),
            (Kind::Insert, json!({ "title": "a", "done": 1 }), "Todo.done must be a boolean, got 1"),
            (Kind::Update, json!({ "count": 1.5 }), "Todo.count must be an integer, got 1.5"),
            (Kind::Update, json!({ "ratio": "0.5" }), "Todo.ratio must be a number"),
            (Kind::Update, json!({ "title": null }), "Todo.title is required and cannot be null"),
            (Kind::Update, json!({ "due": "yesterday" }), "Todo.due must be an ISO-8601 date-time"),
            (Kind::Update, json!({ "due": 1767225600000u64 }), "Todo.due must be an ISO-8601"),
            (Kind::Update, json!({ "owner": { "id": 1 } }), "Todo.owner must be a string (id(User))"),
            (Kind::Update, json!({ "nope": 1 }), "Todo has no field \"nope\" (its fields: title, done,"),
        ];
        for (kind, data, why) in refused {
            let e = check(kind, data.clone()).expect_err(&data.to_string());
            assert!(e.contains(why), "{data}: {e}");
        }
        // an update names only what it changes; optional fields take null
        assert_eq!(check(Kind::Update, json!({ "count": null, "due": null })), Ok(()));
        let e = todo().check("Todos", Kind::Delete, None).unwrap_err().to_string();
        assert!(e.contains("unknown entity \"Todos\"") && e.contains("Todo"), "{e}");
        // a long value is cut short in the message
        let e = check(Kind::Update, json!({ "done": "x".repeat(1000) })).unwrap_err();
        assert!(e.len() < 120, "{e}");
    }

    #[test]
    fn datetimes_are_iso_8601() {
        for ok in [
            "2026-01-02",
            "2026-01-02T03:04",
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.678Z",
            "2026-01-02 03:04:05",
            "2026-12-31T23:59:60+05:30",
            "2026-01-02T03:04:05.1-08:00",
        ] {
            assert!(is_datetime(ok), "{ok}");
        }
        for bad in [
            "",
            "2026",
            "2026-1-2",
            "2026-13-01",
            "2026-00-10",
            "2026-01-32",
            "2026-01-02T24:00",
            "2026-01-02T03",
            "2026-01-02T03:04:05.",
            "2026-01-02T03:04:05+0530",
            "2026-01-02T03:04Zx",
            "2026-01-02X03:04",
            "tomorrow",
            "2026-01-02T03:04:05+05:3",
        ] {
            assert!(!is_datetime(bad), "{bad}");
        }
    }

    #[test]
    fn a_schema_round_trips_through_its_stored_form() {
        let s = todo();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schema>(&text).unwrap(), s);
    }
}
