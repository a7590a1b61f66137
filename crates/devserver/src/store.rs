//! Entities, rows and sessions of the dev server.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::clock::Clock;
use crate::policy::{ReadRule, WriteRule};

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub optional: bool,
    /// A `UNIQUE` column: no two rows hold the same non-null value.
    pub unique: bool,
}

#[derive(Debug, Clone)]
pub struct Entity {
    pub name: String,
    pub fields: Vec<Field>,
    /// `None`: no policy, everyone may read.
    pub read: Option<ReadRule>,
    /// `None`: no write policy, everyone may write.
    pub write: Option<WriteRule>,
    /// CRDT mode (the real server's default unless the manifest says
    /// `crdt: false`): subscribed WebSocket clients get binary frames.
    pub crdt: bool,
}

impl Entity {
    pub fn has_field(&self, f: &str) -> bool {
        f == "id" || self.fields.iter().any(|x| x.name == f)
    }

    /// The real server reads rows back through SQLite: bools become 0/1 and
    /// objects/arrays become their JSON text (PROTOCOL §3.1).
    pub fn read_back(&self, row: &Map<String, Value>) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("id".into(), row.get("id").cloned().unwrap_or(Value::Null));
        for f in &self.fields {
            let v = match row.get(&f.name) {
                None | Some(Value::Null) => Value::Null,
                Some(Value::Bool(b)) => json!(*b as i64),
                Some(v @ (Value::Object(_) | Value::Array(_))) => Value::String(v.to_string()),
                Some(v) => v.clone(),
            };
            out.insert(f.name.clone(), v);
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub tenant_id: Option<String>,
}

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    pub is_admin: bool,
}

impl Auth {
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "user_id": self.user_id, "is_admin": self.is_admin,
                            "roles": if self.is_admin { vec!["admin"] } else { vec![] } });
        if let Some(t) = &self.tenant_id {
            v["tenant_id"] = json!(t);
        }
        v
    }
}

pub struct Store {
    pub entities: Vec<Entity>,
    pub rows: HashMap<String, BTreeMap<String, Map<String, Value>>>,
    pub sessions: HashMap<String, Session>,
    pub admin_token: Option<String>,
    pub manifest: Value,
    counter: AtomicU64,
    pub clock: Arc<Clock>,
}

impl Store {
    pub fn new(manifest: Value, admin_token: Option<String>, clock: Arc<Clock>) -> Result<Store, String> {
        let mut entities = Vec::new();
        let policies = manifest["policies"].as_array().cloned().unwrap_or_default();
        for e in manifest["entities"].as_array().ok_or("manifest has no entities")? {
            let name = e["name"].as_str().ok_or("entity without name")?.to_string();
            let fields = e["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| Field {
                    name: f["name"].as_str().unwrap_or_default().to_string(),
                    optional: f["optional"].as_bool().unwrap_or(false),
                    unique: f["unique"].as_bool().unwrap_or(false),
                })
                .collect();
            let read = policies
                .iter()
                .filter(|p| p["entity"].as_str() == Some(name.as_str()))
                .find_map(|p| p["allowRead"].as_str().or(p["allow"].as_str()).map(ReadRule::parse))
                .or_else(|| {
                    policies.iter().any(|p| p["entity"].as_str() == Some(name.as_str())).then_some(ReadRule::Anyone)
                });
            let write = policies
                .iter()
                .filter(|p| p["entity"].as_str() == Some(name.as_str()))
                .find_map(|p| p["allowWrite"].as_str().or(p["allow"].as_str()).map(WriteRule::parse));
            let crdt = e["crdt"].as_bool() != Some(false);
            entities.push(Entity { name, fields, read, write, crdt });
        }
        if entities.is_empty() {
            return Err("manifest needs at least one entity".into());
        }
        Ok(Store {
            entities,
            rows: HashMap::new(),
            sessions: HashMap::new(),
            admin_token,
            manifest,
            counter: AtomicU64::new(0),
            clock,
        })
    }

    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    /// 32 hex digits of nanoseconds + 8 of a counter: time-ordered, like the real server.
    pub fn new_id(&self) -> String {
        let nanos = self.clock.now_nanos();
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        format!("{nanos:032x}{:08x}", n as u32)
    }

    pub fn new_token(&self) -> String {
        let hex: String = (0..64).map(|_| char::from_digit(self.clock.random(16), 16).unwrap()).collect();
        format!("pylon_{hex}")
    }

    pub fn auth(&self, token: Option<&str>) -> Auth {
        match token {
            Some(t) if self.admin_token.as_deref() == Some(t) => {
                Auth { user_id: Some("__admin__".into()), tenant_id: None, is_admin: true }
            }
            Some(t) => match self.sessions.get(t) {
                Some(s) => Auth { user_id: Some(s.user_id.clone()), tenant_id: s.tenant_id.clone(), is_admin: false },
                None => Auth::default(),
            },
            None => Auth::default(),
        }
    }

    /// Auth of a WebSocket connection (sessions only).
    pub fn auth_user(&self, user: &str) -> Auth {
        let tenant_id = self.sessions.values().find(|s| s.user_id == user).and_then(|s| s.tenant_id.clone());
        Auth { user_id: Some(user.to_string()), tenant_id, is_admin: false }
    }

    pub fn can_read(&self, entity: &str, auth: &Auth, data: Option<&Map<String, Value>>) -> bool {
        match self.entity(entity).and_then(|e| e.read.as_ref()) {
            None => true,
            Some(rule) => rule.allows(auth.user_id.as_deref(), auth.is_admin, data),
        }
    }

    /// The public manifest: read expressions blanked (PROTOCOL §10.3).
    pub fn public_manifest(&self) -> Value {
        let mut m = self.manifest.clone();
        if let Some(ps) = m["policies"].as_array_mut() {
            for p in ps {
                if let Some(o) = p.as_object_mut() {
                    o.remove("allowRead");
                    o.remove("allow");
                }
            }
        }
        m
    }
}

/// The manifest used when none is given: the test app of PROTOCOL §16.3,
/// plus a `Note` entity under a row-level read policy, a CRDT-mode `Doc`,
/// and a `Tag` whose label is unique (a write only the server can refuse).
pub fn default_manifest() -> Value {
    json!({
        "manifest_version": 1, "name": "synctest", "version": "0.1.0",
        "entities": [
            { "name": "Todo", "fields": [
                { "name": "title", "type": "string", "optional": false, "unique": false },
                { "name": "done", "type": "bool", "optional": false, "unique": false },
                { "name": "userId", "type": "string", "optional": true, "unique": false } ], "indexes": [], "crdt": false },
            { "name": "OrgMember", "fields": [
                { "name": "userId", "type": "string", "optional": false, "unique": false },
                { "name": "orgId", "type": "string", "optional": false, "unique": false } ], "indexes": [], "crdt": false },
            { "name": "Note", "fields": [
                { "name": "body", "type": "string", "optional": false, "unique": false },
                { "name": "userId", "type": "string", "optional": true, "unique": false } ], "indexes": [], "crdt": false },
            { "name": "Doc", "fields": [
                { "name": "title", "type": "string", "optional": false, "unique": false } ], "indexes": [] },
            { "name": "Tag", "fields": [
                { "name": "label", "type": "string", "optional": false, "unique": true } ], "indexes": [], "crdt": false }
        ],
        "routes": [], "queries": [], "actions": [],
        "policies": [
            { "name": "note_owner", "entity": "Note", "allowRead": "auth.userId == data.userId",
              "allowWrite": "auth.userId != null" }
        ]
    })
}
