//! The ScalableApi operator: CRD types, pure desired-state builders and the reconcile loop.

pub mod cli;
pub mod crd;
mod crd_funcs;
pub mod desired;
pub mod render;
pub mod validate;

#[cfg(test)]
pub mod fixtures;
