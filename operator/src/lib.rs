//! The ScalableApi operator: CRD types, pure desired-state builders and the reconcile loop.
//!
//! Public: what the binary, the tests, the examples and the benches use. The rest is
//! internal to the reconcile loop.

pub mod apply;
pub mod cli;
pub mod controller;
pub mod crd;
mod crd_funcs;
pub mod desired;
mod discovery;
pub mod error;
mod events;
#[cfg(test)]
mod fixtures;
pub mod gateway_api;
pub mod hash_key;
mod http;
pub mod leader;
pub mod metrics;
mod multi_namespace;
pub mod prometheus_operator;
pub mod render;
mod retry;
mod status;
mod supervisor;
pub mod telemetry;
mod validate;

pub use error::{Error, Result};
