//! Read policies, in the two forms tests need: `"true"` and
//! `"auth.userId == data.<field>"`; write policies as `"true"` and
//! `"auth.userId != null"` (PROTOCOL §16.3).

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub enum ReadRule {
    Anyone,
    OwnerField(String),
    Nobody,
}

impl ReadRule {
    pub fn parse(expr: &str) -> ReadRule {
        let e = expr.trim();
        if e == "true" {
            return ReadRule::Anyone;
        }
        if let Some(field) = e.strip_prefix("auth.userId == data.") {
            return ReadRule::OwnerField(field.trim().to_string());
        }
        ReadRule::Nobody
    }

    /// `data` is what the server has at hand: the row, or an event's data.
    pub fn allows(&self, user_id: Option<&str>, is_admin: bool, data: Option<&Map<String, Value>>) -> bool {
        if is_admin {
            return true;
        }
        match self {
            ReadRule::Anyone => true,
            ReadRule::Nobody => false,
            ReadRule::OwnerField(f) => match (user_id, data.and_then(|d| d.get(f)).and_then(Value::as_str)) {
                (Some(u), Some(owner)) => u == owner,
                _ => false,
            },
        }
    }
}

/// Who may insert, update or delete rows of an entity (`allowWrite`).
#[derive(Debug, Clone)]
pub enum WriteRule {
    Anyone,
    SignedIn,
    Nobody,
}

impl WriteRule {
    pub fn parse(expr: &str) -> WriteRule {
        match expr.trim() {
            "true" => WriteRule::Anyone,
            "auth.userId != null" => WriteRule::SignedIn,
            _ => WriteRule::Nobody,
        }
    }

    pub fn allows(&self, user_id: Option<&str>, is_admin: bool) -> bool {
        is_admin
            || match self {
                WriteRule::Anyone => true,
                WriteRule::SignedIn => user_id.is_some(),
                WriteRule::Nobody => false,
            }
    }
}
