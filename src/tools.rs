//! What the `pylon-sync` CLI needs from native code, as public functions
//! of the package: reading a replica file without changing it, and
//! checking a server the way the engine uses it (the manifest is a direct
//! call, `direct_fetch_manifest`).

use napi_derive::napi;
use serde_json::Value;

use crate::convert;
use crate::error::settle;
use crate::types;

/// What a replica file holds (`pylon-sync inspect`); the file is opened read-only.
#[napi(ts_return_type = "Promise<{ ok: true; value: ReplicaInfo } | { ok: false; error: ErrorInfo }>")]
pub async fn inspect_replica(path: String) -> Value {
    let read = tokio::task::spawn_blocking(move || pylon_sync_engine::inspect::inspect(std::path::Path::new(&path)))
        .await
        .map_err(|e| pylon_sync_engine::Error::Storage(format!("reading the replica failed: {e}")));
    settle(read.and_then(|r| r).map(types::ReplicaInfo::from))
}

/// One read-only SQL statement on a replica file (`pylon-sync sql`); its
/// rows as JSON text. The file is opened read-only and never changed.
#[napi(ts_return_type = "Promise<{ ok: true; value: string } | { ok: false; error: ErrorInfo }>")]
pub async fn query_replica(path: String, sql: String, #[napi(ts_arg_type = "unknown")] params: Option<Value>) -> Value {
    let params = params.unwrap_or(Value::Null);
    let read = tokio::task::spawn_blocking(move || {
        pylon_sync_engine::sql::query_file(std::path::Path::new(&path), &sql, &params)
    })
    .await
    .map_err(|e| pylon_sync_engine::Error::Storage(format!("reading the replica failed: {e}")));
    settle(read.and_then(|r| r))
}

/// Each check of a server as the engine would use it (`pylon-sync doctor`).
/// `options` as the engine's (`token`, `ca`, `wsUrl`, `sseUrl`, `timeout`, `pingTimeout`).
#[napi(ts_return_type = "Promise<{ ok: true; value: ServerCheck[] } | { ok: false; error: ErrorInfo }>")]
pub async fn check_server(
    base_url: String,
    #[napi(ts_arg_type = "EngineOptions | null")] options: Option<Value>,
) -> Value {
    crate::log::init();
    let mut options = match options {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(o) => o,
    };
    if let Value::Object(o) = &mut options {
        o.insert("persist".into(), Value::Bool(false));
    }
    let checks = async {
        let cfg = convert::config(&base_url, options)?;
        pylon_sync_engine::doctor::check(&cfg).await
    };
    settle(checks.await.map(|c| c.into_iter().map(types::ServerCheck::from).collect::<Vec<_>>()))
}
