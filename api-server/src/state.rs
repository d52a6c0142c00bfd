//! Shared state handed to every handler.

use std::ops::Deref;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::FromRef;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::cache::Cache;
use crate::db::Db;
use crate::db::inserts::Inserts;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::middleware::RateLimiter;
use crate::probe::Health;

/// A cheap handle: axum clones the state for every request that extracts it, so it is one
/// `Arc` (one atomic increment) rather than a struct of six reference-counted fields.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub db: Db,
    /// Creates without an `Idempotency-Key`, grouped into shared statements.
    pub inserts: Inserts,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins; `/readyz` turns 503 at once.
    pub shutdown: CancellationToken,
    /// Schema and Postgres state, for `/readyz`.
    pub health: Arc<Health>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// The OpenAPI document, rendered once at start-up.
    pub openapi: Bytes,
    /// Bearer-token checks on /users; `None` when AUTH_JWKS_PATH is unset.
    pub auth: Option<Arc<Authenticator>>,
    /// User events (an outbox row per write); `None` when EVENTS_KAFKA_BROKERS is unset.
    pub events: Option<Arc<Events>>,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// After a committed write: wakes this replica's relay (a no-op without events).
    pub fn wrote(&self) {
        if let Some(events) = &self.events {
            events.written.notify_one();
        }
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.db.pool().clone()
    }
}

impl FromRef<AppState> for Cache {
    fn from_ref(state: &AppState) -> Self {
        state.cache.clone()
    }
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}
