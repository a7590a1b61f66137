//! `createInfiniteQuery` pages as a JS class.

use napi_derive::napi;
use pylon_sync_engine::infinite::InfiniteQuery;

use crate::error::settle;

#[napi]
pub struct NativeInfiniteQuery {
    query: std::sync::Arc<InfiniteQuery>,
}

impl NativeInfiniteQuery {
    pub fn new(query: InfiniteQuery) -> Self {
        NativeInfiniteQuery { query: std::sync::Arc::new(query) }
    }
}

#[napi]
impl NativeInfiniteQuery {
    /// Loads the next page; resolves false when nothing was loaded.
    #[napi(ts_return_type = "Promise<{ ok: true; value: boolean } | { ok: false; error: ErrorInfo }>")]
    pub async fn load_more(&self) -> serde_json::Value {
        settle(self.query.load_more().await)
    }

    #[napi(catch_unwind)]
    pub fn data_json(&self) -> String {
        self.query.data_json().to_string()
    }

    #[napi(catch_unwind)]
    pub fn has_more(&self) -> bool {
        self.query.has_more()
    }

    #[napi(catch_unwind)]
    pub fn loading(&self) -> bool {
        self.query.loading()
    }

    #[napi(catch_unwind)]
    pub fn reset(&self) {
        self.query.reset()
    }
}
