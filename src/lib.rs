//! Node/Bun binding of the pylon-sync engine. Only conversions live here:
//! JS values in, engine calls, JS values and typed errors out. The
//! JavaScript API of the spec is assembled in `sync.js` on top of these classes.

#![deny(clippy::all)]

mod convert;
mod direct;
mod engine;
mod error;
mod log;
mod mailbox;
mod outcomes;
mod query;
mod text;
mod tools;
mod types;

/// Diagnostics: panics on purpose, so a test can show that a Rust panic
/// reaches JavaScript as an exception instead of ending the process.
#[napi_derive::napi(catch_unwind)]
pub fn panic_for_tests() {
    panic!("deliberate panic for tests");
}

/// Diagnostics: tasks alive on the engine runtime (a leak check for soak tests).
#[napi_derive::napi]
pub async fn runtime_tasks() -> u32 {
    tokio::runtime::Handle::current().metrics().num_alive_tasks() as u32
}
