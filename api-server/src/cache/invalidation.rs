//! Cross-replica invalidation: every replica LISTENs on `users_changed` over a dedicated
//! connection and evicts the ids it hears from its own Redis.
//!
//! The `users_changed` and `users_deleted` triggers (migrations/0003_bulk_invalidation.sql)
//! NOTIFY inside the writing transaction, so a notification exists exactly when a change
//! committed. A payload is a comma-separated batch of ids (one id is a batch of one), evicted
//! with one pipelined Redis call, or `*` (flush) for a TRUNCATE or a statement that changed
//! more rows than evicting them is worth. Notifications sent
//! while this connection is down are lost, so the cache is untrusted (bypassed) from the
//! moment the connection drops until it is subscribed again, and then flushed before it is
//! trusted again.
//!
//! A connection can also stall without failing (a frozen backend, a half-open socket): it
//! then reports nothing, and the cache would be trusted with nobody evicting it. So the
//! listener sends itself a heartbeat, `pg_notify('users_changed', 'hb:<nonce>:<n>')`, every
//! `HEARTBEAT_EVERY` on its own connection; when that notification has not come back
//! within `HEARTBEAT_TIMEOUT` the connection counts as lost, like a failed one.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Cache;
use crate::metrics::Metrics;

pub const CHANNEL: &str = "users_changed";
/// Payload that asks for a whole flush (sent on TRUNCATE and bulk writes).
pub const FLUSH_ALL: &str = "*";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the listener checks its own connection with a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat may take to come back on the listener before the connection is
/// considered stalled (dropped, reconnected and the cache flushed).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// Payload prefix of heartbeats; other replicas hear ours on the channel and ignore them.
const HEARTBEAT_PREFIX: &str = "hb:";

/// A small pool of its own so LISTEN never takes a connection from the request pool. One
/// connection is in use at a time; the second lets a stalled one be replaced at once (a
/// dropped `PgListener` sends `UNLISTEN` before it gives its connection back, and on a
/// stalled backend that waits until the backend answers or the socket dies).
pub fn listener_pool(options: PgConnectOptions, acquire_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
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

        let mut heartbeat = Heartbeat::new();
        let lost = loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => {
                    cache.set_trusted(false);
                    return;
                }
                message = listener.try_recv() => Event::Message(message),
                () = tokio::time::sleep_until(heartbeat.due()) => Event::Heartbeat,
            };
            match event {
                Event::Message(Ok(Some(notification))) => {
                    let payload = notification.payload();
                    if payload.starts_with(HEARTBEAT_PREFIX) {
                        heartbeat.received(payload);
                    } else {
                        handle(&cache, payload).await;
                    }
                }
                Event::Message(Ok(None)) => break "connection closed".to_owned(),
                Event::Message(Err(error)) => break error.to_string(),
                Event::Heartbeat => {
                    if heartbeat.is_overdue() {
                        break format!(
                            "no heartbeat back within {} ms; connection stalled",
                            HEARTBEAT_TIMEOUT.as_millis()
                        );
                    }
                    if let Err(reason) = heartbeat.send(&mut listener).await {
                        break reason;
                    }
                }
            }
        };
        // Untrusted before the (possibly stalled) connection is dropped and replaced.
        cache.set_trusted(false);
        metrics.listener_connected.set(0);
        metrics.listener_lost.inc();
        tracing::warn!(reason = %lost, "LISTEN connection lost; cache bypassed until resubscribed");
    }
}

enum Event {
    Message(Result<Option<sqlx::postgres::PgNotification>, sqlx::Error>),
    Heartbeat,
}

/// The heartbeat of one subscription: at most one outstanding at a time.
struct Heartbeat {
    /// Random per subscription, so another replica's heartbeats never count as ours.
    nonce: u64,
    sequence: u64,
    /// The payload we wait for and the instant by which it must be back.
    pending: Option<(String, Instant)>,
    next_send: Instant,
}

impl Heartbeat {
    fn new() -> Self {
        Self {
            nonce: rand::random(),
            sequence: 0,
            pending: None,
            next_send: Instant::now() + HEARTBEAT_EVERY,
        }
    }

    /// When the loop must wake up: to send the next heartbeat or to give up on this one.
    fn due(&self) -> Instant {
        match &self.pending {
            Some((_, deadline)) => *deadline,
            None => self.next_send,
        }
    }

    fn is_overdue(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|(_, deadline)| Instant::now() >= *deadline)
    }

    fn received(&mut self, payload: &str) {
        if self
            .pending
            .as_ref()
            .is_some_and(|(expected, _)| expected == payload)
        {
            self.pending = None;
            self.next_send = Instant::now() + HEARTBEAT_EVERY;
        }
    }

    /// NOTIFYs the heartbeat on the listener's own connection; it comes back as a
    /// notification like any invalidation. The query itself is bounded by the same timeout.
    async fn send(&mut self, listener: &mut PgListener) -> Result<(), String> {
        self.sequence += 1;
        let payload = format!("{HEARTBEAT_PREFIX}{:016x}:{}", self.nonce, self.sequence);
        let deadline = Instant::now() + HEARTBEAT_TIMEOUT;
        let notify = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&mut *listener);
        match tokio::time::timeout_at(deadline, notify).await {
            Ok(Ok(_)) => {
                self.pending = Some((payload, deadline));
                Ok(())
            }
            Ok(Err(error)) => Err(format!("heartbeat failed: {error}")),
            Err(_) => Err(format!(
                "heartbeat not answered within {} ms; connection stalled",
                HEARTBEAT_TIMEOUT.as_millis()
            )),
        }
    }
}

/// Bounded like a heartbeat: on a silent network LISTEN would wait for the kernel (minutes).
async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let subscribe = async {
        let mut listener = PgListener::connect_with(pool).await?;
        // Reconnect here (and flush) rather than silently inside try_recv.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        Ok(listener)
    };
    tokio::time::timeout(HEARTBEAT_TIMEOUT, subscribe)
        .await
        .map_err(|_| crate::db::timed_out(HEARTBEAT_TIMEOUT))?
}

async fn handle(cache: &Cache, payload: &str) {
    if payload == FLUSH_ALL {
        cache.flush("users truncated or changed in bulk");
        return;
    }
    let mut ids = Vec::new();
    for part in payload.split(',') {
        match Uuid::try_parse(part) {
            Ok(id) => ids.push(id),
            Err(_) => tracing::warn!(part, "ignoring an invalidation that is not a user id"),
        }
    }
    cache.evict_many(&ids, "notify").await;
}
