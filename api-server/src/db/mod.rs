//! All SQL lives here.

mod bounded;
pub mod idempotency;
pub mod inserts;
pub mod outbox;
pub mod users;

pub use bounded::{CallTimedOut, Db, breaks_connection, connection_lost, timed_out};
