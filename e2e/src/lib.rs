//! Helpers shared by the kind end-to-end tests.
