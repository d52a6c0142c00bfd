//! Black-box API tests against real PostgreSQL and Redis started by `services`.
// Test helpers panic on purpose: a failed set-up step is a failed test.
#![allow(clippy::unwrap_used)]

mod auth;
mod breaker;
mod cache;
mod clients;
mod coherence;
mod contract;
mod database;
mod db_faults;
mod errors;
mod events;
mod faults;
mod health;
mod helpers;
mod inserts;
mod proxy;
mod rate_limit;
mod raw;
mod services;
mod shutdown;
mod startup;
mod tokens;
mod users;
