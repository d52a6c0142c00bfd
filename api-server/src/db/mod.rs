//! All SQL lives here.

pub mod idempotency;
pub mod outbox;
pub mod users;
