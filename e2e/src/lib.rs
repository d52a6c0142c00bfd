//! Helpers shared by the kind end-to-end tests (`e2e/tests/*.rs`).
//!
//! Every test starts with [`TestEnv::setup`], which returns `None` (after printing
//! `skipped: E2E_KUBECONFIG not set`) when no cluster is configured, so `make test` compiles
//! and runs the tests without a cluster and never reports a silent pass. With a cluster
//! (`make e2e`), each test gets its own namespace (deleted when the test passes, kept for the
//! log export when it fails) and its own Postgres role and database.
//!
//! Waiting is always on a condition with a deadline ([`wait::until`], built on
//! `kube::runtime::wait::await_condition`), never on a sleep.

pub mod children;
pub mod env;
pub mod http;
pub mod objects;
pub mod postgres;
pub mod wait;

pub use env::TestEnv;
