//! A Pylon-protocol development server (PROTOCOL.md §14) with fault
//! injection, for tests, benchmarks and the demo. It keeps everything in
//! memory and answers like the real server where clients can tell:
//! change-log retention, pull paging and filtering, 410 bodies, entity
//! routes, auth routes and error envelopes; WebSocket (port + 1) and SSE
//! (port + 2) streams with the same frames as the real server.
//!
//! Faults are switched at run time through `POST /__control/faults`.

mod clock;
mod control;
mod log;
mod policy;
mod query;
mod server;
mod store;
mod stream;

pub use server::{spawn, Config, Handle, Local};
