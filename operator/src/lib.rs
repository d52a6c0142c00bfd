//! The ScalableApi operator: CRD types, pure desired-state builders and the reconcile loop.

pub mod cli;
pub mod crd;
mod crd_funcs;
pub mod desired;
pub mod render;
pub mod validate;

#[cfg(test)]
pub mod fixtures;

pub mod apply;
pub mod controller;
pub mod error;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod retry;
pub mod status;
mod supervisor;
pub mod telemetry;

pub use error::{Error, Result};
