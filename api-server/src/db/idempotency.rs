//! `Idempotency-Key` records (migrations/0002): claim a key, record the response it got,
//! find the response of an earlier request with it, and remove expired ones.
//!
//! A claim and the write it guards share one transaction: the key's row lock makes a second
//! request with the key wait for the first to commit (then replay it) or roll back (then
//! claim the key itself), so two racing requests never both create.

use std::time::Duration;

use futures::FutureExt;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::Db;
use crate::domain::{NewUser, User};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// What an earlier request with the key got.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Recorded {
    /// The validated body it sent, to tell a repeat from another request with the key.
    pub request: serde_json::Value,
    /// `None` only if a writer committed a claim without its response, which ours never do.
    pub status: Option<i16>,
    pub location: Option<String>,
    pub response: Option<Vec<u8>>,
}

/// The outcome of claiming a key.
#[derive(Debug)]
pub enum Claim {
    /// The key is ours: do the work, `record` the response, commit.
    Claimed,
    /// An earlier request (within `RETENTION`) holds the key.
    Taken(Recorded),
}

/// What to record for a create: the response the client gets.
pub struct Recording {
    pub status: u16,
    pub location: String,
    pub body: Vec<u8>,
}

/// The outcome of `create_once`.
#[derive(Debug)]
pub enum Created {
    /// This request created the user (and recorded its response).
    New(User),
    /// An earlier request holds the key: what it got, to replay or refuse.
    Taken(Recorded),
}

/// Creates `user` once per `key` in `scope`: claims the key, inserts, records what `record`
/// makes of the new user, commits; or returns what holds the key. One transaction, bounded
/// as one database write. A failed insert (a duplicate e-mail) rolls the claim back with it.
pub async fn create_once(
    db: &Db,
    scope: &str,
    key: &str,
    id: Uuid,
    user: &NewUser,
    events: bool,
    record: fn(&User) -> Result<Recording, sqlx::Error>,
) -> Result<Created, sqlx::Error> {
    let request = request_of(user);
    db.write(|conn| {
        let (scope, key, request, user) = (
            scope.to_owned(),
            key.to_owned(),
            request.clone(),
            user.clone(),
        );
        async move {
            let mut tx = conn.begin().await?;
            if let Claim::Taken(recorded) = claim(&mut tx, &scope, &key, &request).await? {
                return Ok(Created::Taken(recorded));
            }
            let created = super::users::insert_on(&mut tx, id, user, events).await?;
            let recording = record(&created)?;
            let Recording {
                status,
                location,
                body,
            } = &recording;
            record_response(&mut tx, &scope, &key, *status, Some(location), body).await?;
            tx.commit().await?;
            Ok(Created::New(created))
        }
        .boxed()
    })
    .await
}

/// The validated body a key was claimed for, as `create_once` stores it.
pub fn request_of(user: &NewUser) -> serde_json::Value {
    serde_json::json!({ "name": user.name.as_str(), "email": user.email.as_str() })
}

/// Claims `key` in `scope` for `request`, or returns what holds it. An expired record is
/// taken over as if it were absent, whether or not the clean-up has removed it yet.
async fn claim(
    tx: &mut PgConnection,
    scope: &str,
    key: &str,
    request: &serde_json::Value,
) -> Result<Claim, sqlx::Error> {
    let claimed = sqlx::query_scalar::<_, i32>(
        "INSERT INTO idempotency_keys (scope, key, request) VALUES ($1, $2, $3) \
         ON CONFLICT (scope, key) DO UPDATE \
         SET request = EXCLUDED.request, status = NULL, location = NULL, response = NULL, \
             created_at = now() \
         WHERE idempotency_keys.created_at < now() - make_interval(secs => $4) \
         RETURNING 1",
    )
    .bind(scope)
    .bind(key)
    .bind(request)
    .bind(RETENTION.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if claimed.is_some() {
        return Ok(Claim::Claimed);
    }
    let recorded = sqlx::query_as::<_, Recorded>(
        "SELECT request, status, location, response FROM idempotency_keys \
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Claim::Taken(recorded))
}

/// Stores the response of the request that claimed `key`, before its transaction commits.
async fn record_response(
    tx: &mut PgConnection,
    scope: &str,
    key: &str,
    status: u16,
    location: Option<&str>,
    response: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, location = $4, response = $5 \
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(i16::MAX))
    .bind(location)
    .bind(response)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes up to `batch` expired records, oldest first, and returns how many. Rows another
/// replica is deleting (or a request is taking over) are skipped, so no one waits on a lock
/// and each statement holds its locks only for one small batch.
pub async fn delete_expired(pool: &PgPool, batch: i64) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM idempotency_keys \
             WHERE created_at < now() - make_interval(secs => $1) \
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED))",
    )
    .bind(RETENTION.as_secs_f64())
    .bind(batch)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// How often each replica removes expired keys.
const EXPIRE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Rows per DELETE, and DELETEs per round: small statements, bounded work per round.
const EXPIRE_BATCH: i64 = 1_000;
const EXPIRE_BATCHES_PER_ROUND: usize = 100;

/// Removes expired keys every `EXPIRE_EVERY` until shutdown. Every replica runs it; SKIP
/// LOCKED keeps them out of each other's way. A failure waits for the next round (a key
/// past its time is ignored by `claim` anyway, so late removal costs only space).
pub async fn expire(pool: PgPool, shutdown: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(EXPIRE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        for _ in 0..EXPIRE_BATCHES_PER_ROUND {
            match delete_expired(&pool, EXPIRE_BATCH).await {
                Ok(deleted) if deleted < EXPIRE_BATCH.unsigned_abs() => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "expired idempotency keys not removed this round");
                    break;
                }
            }
        }
    }
}
