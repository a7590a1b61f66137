//! JSON text the engine shares (`RowText`), handed to JavaScript as a
//! string straight from where it lies: a list the replica was loaded into
//! is not copied into a Rust `String` first.

use napi::bindgen_prelude::{Result, ToNapiValue};
use napi::sys;
use pylon_sync_engine::RowText;

pub struct JsonText(pub RowText);

impl ToNapiValue for JsonText {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        unsafe { <&str>::to_napi_value(env, val.0.as_str()) }
    }
}
