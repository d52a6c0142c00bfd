//! The bundled user API: axum on Postgres with a Redis cache invalidated by Postgres NOTIFY.
//!
//! `main.rs` only reads the config, sets up logging and runs [`startup::Application`].

pub mod auth;
pub mod cache;
pub mod client_address;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod probe;
pub mod routes;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod telemetry;
