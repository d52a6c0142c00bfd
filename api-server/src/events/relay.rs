//! The relay: publishes outbox rows to Kafka, one replica at a time.
//!
//! Every replica runs it. Each holds a connection of its own and asks every second for the
//! relay's advisory lock (`db::outbox::try_lead`); the one that gets it leads: it reads the
//! oldest rows, sends them, and deletes those the broker acknowledged, on that same
//! connection, so a replica that lost its session (and with it the lock) cannot delete
//! anything. When the leader dies Postgres ends its session and frees the lock; another
//! replica takes it at its next try, within about a second (plus, for a leader cut off
//! rather than dead, TCP keepalive's 11 s).
//!
//! Order: a batch is a run of rows in id order holding at most one event per user (see
//! `batch_len`), so an event is sent only after every earlier event of its user was
//! acknowledged and deleted; a failure never lets a later event of the same user overtake.
//! Delivery is at least once: a leader that dies after the broker acknowledged but before
//! it deleted leaves rows that the next leader sends again, with the same CloudEvents `id`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Events;
use super::cloudevent::{self, CONTENT_TYPE};
use crate::db::outbox::{self, Row};
use crate::metrics::Metrics;

/// Rows read per batch (a batch may use fewer: see `batch_len`).
const BATCH: i64 = 500;
/// How often an idle leader looks for rows written by other replicas.
const IDLE_POLL: Duration = Duration::from_millis(20);
/// How often a replica that does not lead asks for the lock.
const ELECTION_INTERVAL: Duration = Duration::from_secs(1);
/// How often the leader counts the backlog for `/metrics` (a count over the whole table).
const BACKLOG_SAMPLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox database")]
    Database(#[from] sqlx::Error),
    #[error("Kafka producer")]
    Kafka(#[from] KafkaError),
}

/// How many of `rows` (in id order) to send at once: the longest run in which no user
/// appears twice. A user's next event waits for the acknowledgement of the one before.
pub fn batch_len(rows: &[Row]) -> usize {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    rows.iter()
        .position(|row| !seen.insert(row.user_id))
        .unwrap_or(rows.len())
}

/// Wait before sending again after `failures` failed batches in a row: 100 ms doubling,
/// at most 5 s.
pub fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}

pub struct Relay {
    pub connect: PgConnectOptions,
    pub producer: ClientConfig,
    pub topic: String,
    pub source: String,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
}

/// What became of one batch.
struct Outcome {
    published: Vec<i64>,
    lags: Vec<f64>,
    failed: u64,
}

impl Relay {
    /// Runs until `shutdown`; leaves the lock (by closing its session) on the way out.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut session: Option<PgConnection> = None;
        while !shutdown.is_cancelled() {
            match self.round(&mut session, &shutdown).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "events relay: retrying");
                    session = None;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(ELECTION_INTERVAL) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// One try for the lock; with it, leads until an error or shutdown. True if it led.
    // Boxed: a `Send` future with one concrete lifetime, which the compiler cannot prove
    // of the nested sqlx futures unboxed ("Send is not general enough").
    fn round<'a>(
        &'a self,
        session: &'a mut Option<PgConnection>,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<bool, RelayError>> {
        Box::pin(async move {
            let conn = match session {
                Some(conn) => conn,
                None => session.insert(self.connect().await?),
            };
            if !outbox::try_lead(conn).await? {
                return Ok(false);
            }
            tracing::info!("events relay: leading");
            self.metrics.events_relay_leader.set(1);
            let result = self.lead(conn, shutdown).await;
            self.metrics.events_relay_leader.set(0);
            // Closing the session is what frees the lock for the others.
            *session = None;
            result.map(|()| true)
        })
    }

    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        // A leader cut off without a FIN keeps the lock until Postgres notices: keepalive
        // probes end its session after 5 + 3 × 2 s.
        self.connect
            .clone()
            .application_name("api-server events relay")
            .options([
                ("tcp_keepalives_idle", "5"),
                ("tcp_keepalives_interval", "2"),
                ("tcp_keepalives_count", "3"),
                ("statement_timeout", "30s"),
            ])
            .connect()
            .await
    }

    fn lead<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        shutdown: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<(), RelayError>> {
        Box::pin(async move {
            let mut failures = 0u32;
            let mut sampled: Option<Instant> = None;
            let mut producer: Option<FutureProducer> = None;
            while !shutdown.is_cancelled() {
                if sampled.is_none_or(|at| at.elapsed() >= BACKLOG_SAMPLE) {
                    self.sample_backlog(conn).await?;
                    sampled = Some(Instant::now());
                }
                let rows = outbox::oldest(conn, BATCH).await?;
                if rows.is_empty() {
                    tokio::select! {
                        () = self.events.written.notified() => {}
                        () = tokio::time::sleep(IDLE_POLL) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
                let batch = &rows[..batch_len(&rows)];
                let sender = match &producer {
                    Some(producer) => producer,
                    None => producer.insert(self.producer.create()?),
                };
                let outcome = {
                    let publishing = self.publish(sender, batch);
                    tokio::pin!(publishing);
                    loop {
                        tokio::select! {
                            outcome = &mut publishing => break outcome,
                            // While a broker is away a batch waits up to the message timeout; the
                            // backlog in /metrics keeps moving meanwhile.
                            () = tokio::time::sleep(BACKLOG_SAMPLE) => {
                                self.sample_backlog(conn).await?;
                                sampled = Some(Instant::now());
                            }
                            // Unacknowledged rows stay; the next leader sends them.
                            () = shutdown.cancelled() => return Ok(()),
                        }
                    }
                };
                if !outcome.published.is_empty() {
                    outbox::delete_published(conn, &outcome.published).await?;
                    self.metrics
                        .events_published
                        .inc_by(outcome.published.len() as u64);
                    for lag in outcome.lags {
                        self.metrics.events_publish_lag.observe(lag);
                    }
                }
                if outcome.failed == 0 {
                    failures = 0;
                    continue;
                }
                self.metrics.events_failed.inc_by(outcome.failed);
                failures = failures.saturating_add(1);
                // A fresh producer after a failure: an idempotent producer may be left in a
                // fatal state that fails every later message.
                producer = None;
                tokio::select! {
                    () = tokio::time::sleep(backoff(failures)) => {}
                    () = shutdown.cancelled() => {}
                }
            }
            Ok(())
        })
    }

    async fn sample_backlog(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let (rows, age) = outbox::backlog(conn).await?;
        self.metrics.events_backlog.set(rows);
        self.metrics.events_oldest_age_seconds.set(age);
        Ok(())
    }

    /// Sends `batch` (enqueued in order), waits for every acknowledgement.
    async fn publish(&self, producer: &FutureProducer, batch: &[Row]) -> Outcome {
        let mut pending = Vec::with_capacity(batch.len());
        let mut failed = 0u64;
        for row in batch {
            let (key, value) = match cloudevent::encode(row, &self.source) {
                Ok(encoded) => encoded,
                Err(error) => {
                    // Cannot happen with rows the API wrote; kept (and counted) rather than lost.
                    tracing::error!(error = %error_chain(&error), "events relay: unpublishable row");
                    failed += 1;
                    continue;
                }
            };
            let headers = OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(CONTENT_TYPE),
            });
            let record = FutureRecord::to(&self.topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => pending.push((row.id, row.event_id, row.occurred_at, delivery)),
                Err((error, _)) => {
                    tracing::warn!(%error, "events relay: cannot enqueue");
                    failed += 1;
                }
            }
        }
        let mut outcome = Outcome {
            published: Vec::with_capacity(pending.len()),
            lags: Vec::with_capacity(pending.len()),
            failed,
        };
        for (id, event_id, occurred_at, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {
                    outcome.published.push(id);
                    let lag = (Utc::now() - occurred_at).num_microseconds().unwrap_or(0);
                    outcome.lags.push(lag.max(0) as f64 / 1e6);
                }
                Ok(Err((error, _))) => {
                    log_failure(event_id, &error);
                    outcome.failed += 1;
                }
                Err(_) => outcome.failed += 1,
            }
        }
        outcome
    }
}

fn log_failure(event_id: Uuid, error: &KafkaError) {
    tracing::warn!(%event_id, %error, "events relay: not delivered; will retry");
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, user: Uuid) -> Row {
        Row {
            id,
            event_id: Uuid::now_v7(),
            kind: "updated".into(),
            user_id: user,
            name: None,
            email: None,
            created_at: None,
            updated_at: None,
            version: None,
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn a_batch_stops_before_a_users_second_event() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let rows = [row(1, a), row(2, b), row(3, a), row(4, c)];
        assert_eq!(batch_len(&rows), 2);
        assert_eq!(batch_len(&rows[2..]), 2);
        assert_eq!(batch_len(&[row(1, a), row(2, a)]), 1);
        assert_eq!(batch_len(&[]), 0);
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(7), Duration::from_millis(5_000));
        assert_eq!(backoff(u32::MAX), Duration::from_millis(5_000));
    }
}
