//! Engine errors become JS `Error`s whose `code` is the engine's stable code.

use napi::bindgen_prelude::Error;

/// The error status napi puts into `error.code`.
pub struct Code(pub String);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<napi::Status> for Code {
    fn from(s: napi::Status) -> Self {
        Code(s.to_string())
    }
}

pub type Result<T> = napi::Result<T, Code>;

pub fn to_js(e: pylon_sync_engine::Error) -> Error<Code> {
    Error::new(Code(e.code().to_string()), e.to_string())
}

/// Async results cross as `{ ok: true, value }` or `{ ok: false, error: { code,
/// message, status?, serverCode? } }`: napi rejects async calls only with its
/// own status codes, so `sync.js` turns a failed outcome into an `Error` whose
/// `code` is ours (with a stack that points at the caller).
pub fn settle<T: serde::Serialize>(r: pylon_sync_engine::Result<T>) -> serde_json::Value {
    match r {
        Ok(v) => serde_json::json!({ "ok": true, "value": v }),
        Err(e) => failed(e.code(), &e.to_string(), e.status(), e.server_code()),
    }
}

/// A failed outcome, as [`settle`] makes them.
pub fn failed(code: &str, message: &str, status: Option<u16>, server_code: Option<&str>) -> serde_json::Value {
    serde_json::json!({ "ok": false, "error": {
        "code": code, "message": message, "status": status, "serverCode": server_code } })
}
