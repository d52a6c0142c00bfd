//! Controller scenarios: the real kube-runtime Controller against the in-memory API server.

#[path = "../support/mod.rs"]
mod support;

mod autoscaling;
mod fake_server;
mod leader;
mod lifecycle;
mod secrets;
mod status;
mod supervisor;
