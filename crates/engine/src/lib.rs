//! pylon-sync engine: a durable local replica of a Pylon app, kept in sync
//! over the Pylon protocol. Pure Rust; the Node binding lives elsewhere.

pub mod api;
pub mod backoff;
pub mod db;
pub mod engine;
pub mod error;
pub mod infinite;
pub mod io;
pub mod protocol;
pub mod queue;
pub mod realtime;
pub mod reconcile;
pub mod replica;
mod restart;
pub mod snapshot;
pub mod tls;
pub mod transport;

pub use engine::{get_server_data, Config, Engine, Event, Listener, Phase, SyncStatus, Transport};
pub use error::{Error, Result};
pub use protocol::{ChangeEvent, Cursor, Hydration, Kind, Row, Session};
pub use queue::{Mutation, MutationError, Status as MutationStatus};
pub use realtime::{ConnState, Connection, Peer};
pub use replica::RowText;
pub use transport::{BinaryFrame, BinaryHeader, Liveness, Which};
