//! JSON text the engine shares (`RowText`), handed to JavaScript as a
//! string straight from where it lies: a list the replica was loaded into
//! is not copied into a Rust `String` first.
//!
//! A large ASCII text (a whole list, tens of megabytes at 100,000 rows) is
//! not copied into V8 either: it becomes an external string over the
//! engine's own buffer, which the string keeps alive until V8 collects it.
//! Copying 25 MB into a fresh V8 string was 21–27 ms of a cold start's
//! first `store.list`. `node_api_create_external_string_latin1` is
//! looked up in the host process, so a runtime without it (or one that
//! copies anyway, as a V8 sandbox does) gets the copy as before; so does
//! Bun, which never gives an external string back.

use std::ffi::{c_char, c_void};
use std::sync::OnceLock;

use napi::bindgen_prelude::{Result, ToNapiValue};
use napi::sys;
use pylon_sync_engine::RowText;

pub struct JsonText(pub RowText);

/// Below this a copy is cheaper than tracking a finalizer.
const EXTERNAL_FROM: usize = 64 * 1024;
/// V8's longest string (`v8::String::kMaxLength` on 64-bit); past it the
/// copy fails with V8's own error instead.
const EXTERNAL_UP_TO: usize = (1 << 29) - 24;

type Finalize = unsafe extern "C" fn(sys::napi_env, *mut c_void, *mut c_void);
type CreateExternalLatin1 = unsafe extern "C" fn(
    sys::napi_env,
    *const c_char,
    isize,
    Option<Finalize>,
    *mut c_void,
    *mut sys::napi_value,
    *mut bool,
) -> sys::napi_status;

impl ToNapiValue for JsonText {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let text = val.0.as_str();
        if (EXTERNAL_FROM..=EXTERNAL_UP_TO).contains(&text.len()) && text.is_ascii() {
            if let Some(create) = unsafe { external_strings(env) } {
                if let Some(value) = unsafe { external(env, create, val.0.clone()) } {
                    return Ok(value);
                }
            }
        }
        unsafe { <&str>::to_napi_value(env, text) }
    }
}

/// An external string over `text`; `None` when the runtime refused, and
/// the caller copies instead.
unsafe fn external(env: sys::napi_env, create: CreateExternalLatin1, text: RowText) -> Option<sys::napi_value> {
    let (ptr, len) = (text.as_str().as_ptr(), text.as_str().len());
    let hint = Box::into_raw(Box::new(text));
    // V8 does not count an external string's bytes: told, it collects
    // them as it would its own copies (without, 300 lists were all held)
    unsafe { adjust_external_memory(env, len as i64) };
    let mut value = std::ptr::null_mut();
    let mut copied = false;
    let status = unsafe { create(env, ptr.cast(), len as isize, Some(release), hint.cast(), &mut value, &mut copied) };
    // On success the runtime calls `release` once: at once when it copied
    // the text, or when V8 collects the string. On failure it has not
    // (Node checks everything before it takes the text), so it is given
    // back here.
    if status != sys::Status::napi_ok {
        unsafe { release(env, std::ptr::null_mut(), hint.cast()) };
        return None;
    }
    Some(value)
}

unsafe extern "C" fn release(env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    let text = unsafe { Box::from_raw(hint.cast::<RowText>()) };
    // no env once the environment is torn down: nothing left to tell
    if !env.is_null() {
        unsafe { adjust_external_memory(env, -(text.as_str().len() as i64)) };
    }
}

unsafe fn adjust_external_memory(env: sys::napi_env, change: i64) {
    let mut now = 0;
    unsafe { sys::napi_adjust_external_memory(env, change, &mut now) };
}

/// `None` when it cannot be told (no `process.versions`): no external strings then.
unsafe fn runtime_is_bun(env: sys::napi_env) -> Option<bool> {
    unsafe fn property(env: sys::napi_env, of: sys::napi_value, name: &std::ffi::CStr) -> Option<sys::napi_value> {
        let mut out = std::ptr::null_mut();
        let status = unsafe { sys::napi_get_named_property(env, of, name.as_ptr(), &mut out) };
        (status == sys::Status::napi_ok && !out.is_null()).then_some(out)
    }
    let mut global = std::ptr::null_mut();
    if unsafe { sys::napi_get_global(env, &mut global) } != sys::Status::napi_ok {
        return None;
    }
    let versions = unsafe { property(env, property(env, global, c"process")?, c"versions")? };
    let mut bun = false;
    let status = unsafe { sys::napi_has_named_property(env, versions, c"bun".as_ptr(), &mut bun) };
    (status == sys::Status::napi_ok).then_some(bun)
}

/// The host's `node_api_create_external_string_latin1` (Node-API 10;
/// Node ≥ 20.4), where the runtime also gives an external string back
/// (calls its finalizer) once it is collected; decided once. Bun (1.4)
/// has the function but keeps every string: a list handed over 300 times
/// held 1.3 GB, where Node, told of their bytes, held 200–255 MB; so Bun
/// gets copies.
unsafe fn external_strings(env: sys::napi_env) -> Option<CreateExternalLatin1> {
    static FOUND: OnceLock<Option<CreateExternalLatin1>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        if unsafe { runtime_is_bun(env) } != Some(false) {
            return None;
        }
        let host = host_library()?;
        // SAFETY: the symbol, where present, is the Node-API function of this signature; the
        // host is the running process, which outlives every call.
        let symbol = unsafe { host.get::<CreateExternalLatin1>(b"node_api_create_external_string_latin1\0") }.ok()?;
        let create = *symbol;
        std::mem::forget(host);
        Some(create)
    })
}

#[cfg(unix)]
fn host_library() -> Option<libloading::Library> {
    Some(libloading::os::unix::Library::this().into())
}

#[cfg(windows)]
fn host_library() -> Option<libloading::Library> {
    libloading::os::windows::Library::this().ok().map(Into::into)
}
