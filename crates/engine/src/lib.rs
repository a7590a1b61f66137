//! pylon-sync engine: a durable local replica of a Pylon app, kept in sync
//! over the Pylon protocol. Pure Rust; the Node binding lives elsewhere.

pub mod api;
mod backoff;
mod checkpoint;
mod config;
mod db;
mod diagnostics;
pub mod doctor;
mod engine;
pub mod error;
mod events;
pub mod infinite;
pub mod inspect;
pub mod io;
pub mod net;
pub mod protocol;
mod queue;
mod realtime;
mod reconcile;
mod replica;
mod restart;
mod schema;
mod snapshot;
pub mod sql;
mod task;
mod tls;
pub mod transport;
mod view;

pub use config::{Config, Liveness, Timeouts, Which};
pub use db::ListParts;
pub use diagnostics::{Counted, Diagnostics, LastError};
pub use engine::{get_server_data, Engine};
pub use error::{Error, Result};
pub use events::{
    ConnState, Connection, ErrorContext, ErrorInfo, Event, Listener, MutationChange, Peer, Phase, Progress,
    ResyncReason, SyncStatus,
};
pub use protocol::{ChangeEvent, Cursor, Hydration, Identity, Kind, Row, Session};
pub use queue::{Mutation, MutationError, Status as MutationStatus};
pub use replica::RowText;
pub use transport::{BinaryFrame, BinaryHeader};
