//! The direct calls (`fetchList`, `fetchById`, `insert`, `update`, `remove`,
//! `callFn`) and `getServerData`: one request each, no engine, no store.
//! Each resolves to an outcome object (see `error::settle`).

use napi_derive::napi;
use pylon_sync_engine::api::Api;
use pylon_sync_engine::Result;
use serde_json::{json, Value};

use crate::convert;
use crate::error::settle;

fn token_of(opts: Option<Value>) -> Result<Option<String>> {
    let opts = convert::object(opts.unwrap_or(Value::Null), "options")?;
    convert::token(opts.get("token").cloned())
}

/// Every row of `entity` the caller may read.
#[napi]
pub async fn direct_fetch_list(base_url: String, entity: String, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            let rows = Api::new(&base_url)?.query(token.as_deref(), &entity, &json!({})).await?;
            Ok(Value::Array(rows.into_iter().map(Value::Object).collect()))
        }
        .await,
    )
}

/// One row, or null when it does not exist.
#[napi]
pub async fn direct_fetch_by_id(base_url: String, entity: String, id: String, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            Ok(Api::new(&base_url)?.get(token.as_deref(), &entity, &id).await?)
        }
        .await,
    )
}

/// Creates a row; resolves `{ id }`.
#[napi]
pub async fn direct_insert(base_url: String, entity: String, data: Value, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            let data = convert::object(data, "data")?;
            let id = Api::new(&base_url)?.insert(token.as_deref(), &entity, &data).await?;
            Ok(json!({ "id": id }))
        }
        .await,
    )
}

#[napi]
pub async fn direct_update(base_url: String, entity: String, id: String, patch: Value, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            let patch = convert::object(patch, "patch")?;
            Api::new(&base_url)?.update(token.as_deref(), &entity, &id, &patch).await
        }
        .await,
    )
}

#[napi]
pub async fn direct_remove(base_url: String, entity: String, id: String, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            Api::new(&base_url)?.delete(token.as_deref(), &entity, &id).await
        }
        .await,
    )
}

#[napi]
pub async fn direct_call_fn(base_url: String, name: String, args: Option<Value>, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            let args = Value::Object(convert::object(args.unwrap_or(Value::Null), "args")?);
            Api::new(&base_url)?.call_fn(token.as_deref(), &name, &args).await
        }
        .await,
    )
}

/// Rows of `entities` and a cursor consistent with them, for `engine.hydrate`.
#[napi]
pub async fn get_server_data(base_url: String, entities: Vec<String>, opts: Option<Value>) -> Value {
    settle(
        async {
            let token = token_of(opts)?;
            pylon_sync_engine::get_server_data(&base_url, &entities, token.as_deref()).await
        }
        .await,
    )
}
