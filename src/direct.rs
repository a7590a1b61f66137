//! The direct calls (`fetchList`, `fetchById`, `insert`, `update`, `remove`,
//! `callFn`) and `getServerData`: one request each, no engine, no store.
//! Each resolves to an outcome object (see `error::settle`).

use napi_derive::napi;
use pylon_sync_engine::api::Api;
use pylon_sync_engine::Result;
use serde_json::{json, Value};

use crate::convert::{self, DirectOptions};
use crate::error::settle;

/// `{ token?, ca?, timeout? }`: the client for one call, and its bearer token.
fn client(base_url: &str, opts: Option<Value>) -> Result<(Api, Option<String>)> {
    crate::log::init();
    let (opts, timeouts) = DirectOptions::read(opts)?;
    Ok((Api::new(base_url, pylon_sync_engine::net::Net::shared(opts.ca.as_deref(), timeouts)?)?, opts.token))
}

/// Every row of `entity` the caller may read.
#[napi(
    ts_return_type = "Promise<{ ok: true; value: Array<{ id: string; [field: string]: unknown }> } | { ok: false; error: ErrorInfo }>"
)]
pub async fn direct_fetch_list(
    base_url: String,
    entity: String,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            let rows = api.query(token.as_deref(), &entity, &json!({})).await?;
            Ok(Value::Array(rows.into_iter().map(Value::Object).collect()))
        }
        .await,
    )
}

/// One row, or null when it does not exist.
#[napi(
    ts_return_type = "Promise<{ ok: true; value: { id: string; [field: string]: unknown } | null } | { ok: false; error: ErrorInfo }>"
)]
pub async fn direct_fetch_by_id(
    base_url: String,
    entity: String,
    id: String,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            api.get(token.as_deref(), &entity, &id).await
        }
        .await,
    )
}

/// Creates a row; resolves `{ id }`.
#[napi(ts_return_type = "Promise<{ ok: true; value: { id: string } } | { ok: false; error: ErrorInfo }>")]
pub async fn direct_insert(
    base_url: String,
    entity: String,
    #[napi(ts_arg_type = "unknown")] data: Value,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            let data = convert::object(data, "data")?;
            let id = api.insert(token.as_deref(), &entity, &data, None).await?;
            Ok(json!({ "id": id }))
        }
        .await,
    )
}

#[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
pub async fn direct_update(
    base_url: String,
    entity: String,
    id: String,
    #[napi(ts_arg_type = "unknown")] patch: Value,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            let patch = convert::object(patch, "patch")?;
            api.update(token.as_deref(), &entity, &id, &patch).await
        }
        .await,
    )
}

#[napi(ts_return_type = "Promise<{ ok: true; value: null } | { ok: false; error: ErrorInfo }>")]
pub async fn direct_remove(
    base_url: String,
    entity: String,
    id: String,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            api.delete(token.as_deref(), &entity, &id).await
        }
        .await,
    )
}

#[napi(ts_return_type = "Promise<{ ok: true; value: unknown } | { ok: false; error: ErrorInfo }>")]
pub async fn direct_call_fn(
    base_url: String,
    name: String,
    #[napi(ts_arg_type = "unknown")] args: Option<Value>,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            let args = match args {
                None | Some(Value::Null) => Value::Object(Default::default()),
                Some(args) => Value::Object(convert::object(args, "args")?),
            };
            api.call_fn(token.as_deref(), &name, &args).await
        }
        .await,
    )
}

/// The app's manifest (`/api/manifest`), as the server sends it (`pylon-sync types`).
#[napi(ts_return_type = "Promise<{ ok: true; value: Record<string, unknown> } | { ok: false; error: ErrorInfo }>")]
pub async fn direct_fetch_manifest(
    base_url: String,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            let (api, token) = client(&base_url, opts)?;
            api.manifest(token.as_deref()).await
        }
        .await,
    )
}

/// Rows of `entities` and a cursor consistent with them, for `engine.hydrate`.
#[napi(
    ts_return_type = "Promise<{ ok: true; value: { entities: Record<string, Array<{ id: string; [field: string]: unknown }>>; cursor: { last_seq: number }; identity?: { user_id: string | null; tenant_id: string | null } } } | { ok: false; error: ErrorInfo }>"
)]
pub async fn get_server_data(
    base_url: String,
    entities: Vec<String>,
    #[napi(ts_arg_type = "DirectOptions | null")] opts: Option<Value>,
) -> Value {
    settle(
        async {
            crate::log::init();
            let (opts, timeouts) = DirectOptions::read(opts)?;
            let (token, ca) = (opts.token.as_deref(), opts.ca.as_deref());
            pylon_sync_engine::get_server_data(&base_url, &entities, token, ca, timeouts).await
        }
        .await,
    )
}
