//! The kind end-to-end suite: one binary, so `--test-threads` runs the scenarios in parallel.
//! Each scenario skips (printing why) unless E2E_KUBECONFIG is set; `make e2e` sets it.

mod autoscaling;
mod failure;
mod lifecycle;
mod operator_restart;
mod secret_rotation;
mod sidecar_order;
mod validation;
