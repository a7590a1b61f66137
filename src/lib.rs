//! Node/Bun binding of the pylon-sync engine. Only conversions live here:
//! JS values in, engine calls, JS values and typed errors out. The
//! JavaScript API of the spec is assembled in `sync.js` on top of these classes.

#![deny(clippy::all)]

mod convert;
mod direct;
mod engine;
mod error;
mod query;
