//! Cross-replica invalidation: every replica LISTENs on `users_changed` over a dedicated
//! connection and evicts the ids it hears from its own Redis.
//!
//! The `users_changed` trigger (migrations/0001_users.sql) NOTIFYs inside the writing
//! transaction, so a notification exists exactly when a change committed. Notifications sent
//! while this connection is down are lost, so the cache is untrusted (bypassed) from the
//! moment the connection drops until it is subscribed again, and then flushed before it is
//! trusted again.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Cache;
use crate::metrics::Metrics;

pub const CHANNEL: &str = "users_changed";
/// Payload that asks for a whole flush (sent on TRUNCATE).
pub const FLUSH_ALL: &str = "*";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A one-connection pool so LISTEN never takes a connection from the request pool.
pub fn listener_pool(options: PgConnectOptions, acquire_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options.application_name("api-server-listener"))
}

/// Runs until `shutdown` is cancelled, reconnecting with back-off whenever the connection
/// is lost.
pub async fn run(
    pool: PgPool,
    cache: Cache,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut listener = match subscribe(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "LISTEN failed; cache bypassed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        // Anything cached before this point may have missed an invalidation.
        cache.flush("invalidation feed (re)subscribed");
        cache.set_trusted(true);
        metrics.listener_connected.set(1);
        tracing::info!(channel = CHANNEL, "listening for cache invalidations");

        let lost = loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => {
                    cache.set_trusted(false);
                    return;
                }
                message = listener.try_recv() => message,
            };
            match message {
                Ok(Some(notification)) => handle(&cache, notification.payload()).await,
                Ok(None) => break "connection closed".to_owned(),
                Err(error) => break error.to_string(),
            }
        };
        cache.set_trusted(false);
        metrics.listener_connected.set(0);
        tracing::warn!(reason = %lost, "LISTEN connection lost; cache bypassed until resubscribed");
    }
}

async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Reconnect here (and flush) rather than silently inside try_recv.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn handle(cache: &Cache, payload: &str) {
    if payload == FLUSH_ALL {
        cache.flush("users truncated");
        return;
    }
    match Uuid::try_parse(payload) {
        Ok(id) => cache.evict(id, "notify").await,
        Err(_) => tracing::warn!(payload, "ignoring an invalidation that is not a user id"),
    }
}
