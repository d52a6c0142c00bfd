//! `POST /users` without an `Idempotency-Key`: creates that arrive together are written
//! together, as one `INSERT … SELECT FROM unnest(…)` (group commit, done by the application).
//!
//! Why: what a create costs Postgres is mostly per statement and per transaction (parse and
//! bind, executor start-up, the commit and its WAL flush), hardly per row, and each statement
//! is also a round trip and a pool checkout for us. Measured in docs/benchmarks.md (issue 12).
//!
//! How: `lanes` tasks take creates from one queue. A lane waits for the first create, takes
//! every create already queued behind it (up to `max_rows`), and runs them as one statement
//! on one pooled connection, bounded like any write ([`Db::write`]). A create that finds a
//! lane free runs alone at once: batches form only while every lane is busy, so batching
//! adds no wait to a lone request.
//!
//! What each create still gets is what its own `INSERT` would give it:
//! - its own id, and its own row back (`RETURNING`, matched by id);
//! - [`Inserted::EmailTaken`] when its e-mail is already used, by the table or by a create
//!   ahead of it in the same batch (`ON CONFLICT DO NOTHING`: its row is simply not
//!   returned), and no other create of the batch is affected;
//! - with events, its outbox row in the same statement (`outbox::INSERT_MANY`);
//! - on failure, the batch's error. A statement Postgres refused (a [`sqlx::Error::Database`]
//!   error that did not end the connection) committed nothing, so it is run again create by
//!   create and each gets its own outcome; any other failure (connection lost, timed out, no
//!   connection) may have committed, so, like any write, it is not retried and every create of
//!   the batch gets it.
//!
//! A create whose caller has gone (the request was dropped) before its batch formed is left
//! out.

use std::sync::Arc;

use futures::FutureExt;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{Db, connection_lost, outbox, users};
use crate::config::DatabaseConfig;
use crate::domain::{NewUser, User};
use crate::metrics::Metrics;

/// What a create came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    Created(User),
    /// Another user has this e-mail (ignoring case).
    EmailTaken,
}

/// The outcome of one create: a batch's error is shared by every create it failed.
pub type Outcome = Result<Inserted, Arc<sqlx::Error>>;

/// How creates are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Statements in flight at once (each holds one pooled connection while it runs).
    pub lanes: usize,
    /// Most creates in one statement; 1 writes every create on its own.
    pub max_rows: usize,
}

impl From<&DatabaseConfig> for Batching {
    /// Half the pool (rounded up) may be writing creates, so reads and other writes always
    /// find connections too.
    fn from(config: &DatabaseConfig) -> Self {
        Self {
            lanes: usize::try_from(config.pool_max.div_ceil(2)).unwrap_or(1),
            max_rows: usize::from(config.insert_batch_max),
        }
    }
}

struct Pending {
    id: Uuid,
    user: NewUser,
    reply: oneshot::Sender<Outcome>,
}

/// The queue of creates; cloning shares it. The lanes stop when the last clone is dropped.
#[derive(Clone)]
pub struct Inserts {
    queue: mpsc::Sender<Pending>,
    queued: Gauge,
}

impl Inserts {
    /// Starts `batching.lanes` lanes on the current runtime.
    pub fn start(db: Db, events: bool, batching: Batching, metrics: &Metrics) -> Self {
        let max_rows = batching.max_rows.max(1);
        let lanes = batching.lanes.max(1);
        // Room for a full batch per lane behind the ones running; a request beyond that
        // waits to enqueue, which bounds the memory held by a burst.
        let (queue, receiver) = mpsc::channel(lanes * max_rows);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..lanes {
            let lane = Lane {
                db: db.clone(),
                events,
                max_rows,
                receiver: receiver.clone(),
                queued: metrics.db_inserts_queued.clone(),
                rows: metrics.db_insert_batch_rows.clone(),
            };
            tokio::spawn(lane.run());
        }
        Self {
            queue,
            queued: metrics.db_inserts_queued.clone(),
        }
    }

    /// Creates the user `id`; answers once the statement holding it has committed.
    pub async fn insert(&self, id: Uuid, user: NewUser) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        self.queued.inc();
        self.queue
            .send(Pending { id, user, reply })
            .await
            .map_err(|_| {
                self.queued.dec();
                Arc::new(sqlx::Error::WorkerCrashed)
            })?;
        // A lane that panicked drops the reply: unavailable (503), not a lost answer.
        outcome
            .await
            .unwrap_or_else(|_| Err(Arc::new(sqlx::Error::WorkerCrashed)))
    }
}

struct Lane {
    db: Db,
    events: bool,
    max_rows: usize,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    queued: Gauge,
    rows: Histogram,
}

impl Lane {
    async fn run(self) {
        loop {
            let mut batch = Vec::with_capacity(self.max_rows);
            {
                // One lane at a time waits on the queue; the others are running statements.
                let mut receiver = self.receiver.lock().await;
                let taken = receiver.recv_many(&mut batch, self.max_rows).await;
                if taken == 0 {
                    return;
                }
                self.queued.dec_by(i64::try_from(taken).unwrap_or(i64::MAX));
            }
            batch.retain(|p| !p.reply.is_closed());
            if !batch.is_empty() {
                self.rows.observe(batch.len() as f64);
                self.write(batch).await;
            }
        }
    }

    async fn write(&self, batch: Vec<Pending>) {
        match self.statement(&batch).await {
            Ok(rows) => answer(batch, rows),
            Err(error) if refused(&error) && batch.len() > 1 => {
                tracing::debug!(%error, rows = batch.len(), "a batched create was refused; writing each alone");
                for pending in batch {
                    let alone = self.statement(std::slice::from_ref(&pending)).await;
                    match alone {
                        Ok(rows) => answer(vec![pending], rows),
                        Err(error) => fail(vec![pending], error),
                    }
                }
            }
            Err(error) => fail(batch, error),
        }
    }

    async fn statement(&self, batch: &[Pending]) -> Result<Vec<User>, sqlx::Error> {
        let ids: Vec<Uuid> = batch.iter().map(|p| p.id).collect();
        let names: Vec<String> = batch
            .iter()
            .map(|p| p.user.name.as_str().to_owned())
            .collect();
        let emails: Vec<String> = batch
            .iter()
            .map(|p| p.user.email.as_str().to_owned())
            .collect();
        let sql = if self.events {
            outbox::INSERT_MANY
        } else {
            users::INSERT_MANY
        };
        self.db
            .write(|conn| {
                sqlx::query_as::<_, User>(sql)
                    .bind(ids.clone())
                    .bind(names.clone())
                    .bind(emails.clone())
                    .fetch_all(conn)
                    .boxed()
            })
            .await
    }
}

/// Refused by Postgres as a statement, with the connection still good: nothing committed.
fn refused(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_)) && !connection_lost(error)
}

/// Each create gets its returned row, or `EmailTaken` when the statement skipped it.
fn answer(batch: Vec<Pending>, mut rows: Vec<User>) {
    for pending in batch {
        let outcome = match rows.iter().position(|u| u.id == pending.id) {
            Some(at) => Inserted::Created(rows.swap_remove(at)),
            None => Inserted::EmailTaken,
        };
        // The caller may have gone meanwhile; the user exists all the same.
        let _ = pending.reply.send(Ok(outcome));
    }
}

fn fail(batch: Vec<Pending>, error: sqlx::Error) {
    let error = Arc::new(error);
    for pending in batch {
        let _ = pending.reply.send(Err(error.clone()));
    }
}
