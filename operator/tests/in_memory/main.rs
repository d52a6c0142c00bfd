//! Controller scenarios that need the in-memory API server: injected faults, exact request
//! sequences, and self-checks of the fake itself. Everything a real API server can show runs
//! on the real control plane instead (tests/controller/). The fake does not model admission,
//! defaulting, CEL, the garbage collector's timing, the scale subresource or any controller
//! of kube-controller-manager; see tests/support/fake/mod.rs.

#[path = "../support/mod.rs"]
mod support;

mod autoscaling;
mod fake_server;
mod lifecycle;
mod status;
