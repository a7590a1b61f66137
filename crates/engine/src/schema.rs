//! What the manifest says each field of an entity holds, and server rows
//! read back into those types. The real server reads rows back through
//! SQLite: a `bool` comes back as 0/1 from a snapshot or a GET while change
//! events carry `true`, and a number written to a `string` field is stored
//! as its text. Every row the server gives us passes through `normalize`,
//! so one list never mixes the two forms. Pure; owns nothing.

use serde_json::{Number, Value};

use crate::protocol::Row;

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

/// The typed fields of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, FieldType)>);

impl Fields {
    /// From one entity of `/api/manifest` (`{name, fields: [{name, type}]}`).
    pub fn from_manifest(entity: &Value) -> Fields {
        let fields = entity.get("fields").and_then(Value::as_array).into_iter().flatten();
        Fields(
            fields
                .filter_map(|f| Some((f.get("name")?.as_str()?.to_string(), FieldType::of(f.get("type")?.as_str()?))))
                .collect(),
        )
    }

    /// Brings the fields `row` holds (a whole row or a patch) to their
    /// types: 0/1 for a bool becomes `false`/`true`, a number's text a
    /// number, a number in a text field its text. Anything else that does
    /// not fit is left as the server gave it.
    pub fn normalize(&self, row: &mut Row) {
        for (name, kind) in &self.0 {
            let Some(v) = row.get_mut(name) else { continue };
            let typed = match (kind, &*v) {
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
}
