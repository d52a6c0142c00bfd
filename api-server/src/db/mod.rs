//! All SQL lives here.

pub mod users;
