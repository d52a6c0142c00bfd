//! All SQL lives here.

pub mod idempotency;
pub mod users;
