//! What the `pylon-sync` CLI needs from native code, as public functions
//! of the package: reading a replica file without changing it, checking a
//! server the way the engine uses it, and reading an app's manifest.

use napi_derive::napi;
use serde_json::Value;

use crate::convert::{self, DirectOptions};
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

/// The app's manifest (`/api/manifest`), as the server sends it.
#[napi(ts_return_type = "Promise<{ ok: true; value: Record<string, unknown> } | { ok: false; error: ErrorInfo }>")]
pub async fn fetch_manifest(
    base_url: String,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            crate::log::init();
            let (opts, timeouts) = DirectOptions::read(opts)?;
            let io = pylon_sync_engine::net::Net::shared(opts.ca.as_deref(), timeouts)?;
            let api = pylon_sync_engine::api::Api::new(&base_url, io)?;
            api.manifest(opts.token.as_deref()).await
        }
        .await,
    )
}
