//! The schema: embedded migrations, applied at start-up (`MIGRATE=true`), by a separate step
//! (`MIGRATE=only`), or waited for (`MIGRATE=false`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::config::MigrateMode;
use crate::error::is_unavailable;
use crate::probe::Health;

/// The schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long start-up keeps retrying while Postgres is unreachable before giving up.
const MIGRATE_RETRY_FOR: Duration = Duration::from_secs(60);
const MIGRATE_MAX_BACKOFF: Duration = Duration::from_secs(5);
/// With `MIGRATE=false`, how often the applied migrations are checked.
const CHECK_APPLIED_EVERY: Duration = Duration::from_secs(1);
/// With `MIGRATE=false`, how often waiting is logged.
const LOG_WAITING_EVERY: Duration = Duration::from_secs(30);

/// One connection for migrations, without the request pool's statement and lock timeouts:
/// a migration may rightly run long, and replicas wait for each other's advisory lock.
pub fn pool(options: PgConnectOptions, acquire_timeout: Duration) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options.application_name("api-server-migrate"))
}

/// Puts the schema in place as `mode` says, then marks it ready in `health`. Returns early,
/// with `Ok`, when `shutdown` is cancelled while waiting.
pub async fn prepare(
    mode: MigrateMode,
    db: PgPool,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), MigrateError> {
    let prepared = match mode {
        MigrateMode::True | MigrateMode::Only => migrate(&db).await.map(|()| true),
        MigrateMode::False => Ok(wait_until_migrated(&db, &shutdown).await),
    };
    db.close().await;
    if prepared? {
        health.record(true); // Postgres just answered
        health.set_schema_ready();
        tracing::info!(?mode, "schema ready");
    }
    Ok(())
}

/// Runs the embedded migrations. sqlx takes a Postgres advisory lock around them, so
/// replicas starting together apply each migration once and the others wait, then see it
/// applied. Retries while Postgres is still coming up.
pub async fn migrate(db: &PgPool) -> Result<(), MigrateError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        match MIGRATOR.run(db).await {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(error))
                if is_unavailable(&error) && started.elapsed() < MIGRATE_RETRY_FOR =>
            {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis(), "Postgres not reachable yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MIGRATE_MAX_BACKOFF);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Waits until every embedded migration is recorded as applied; false if shut down first.
async fn wait_until_migrated(db: &PgPool, shutdown: &CancellationToken) -> bool {
    let wanted: HashSet<i64> = MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    let mut logged: Option<Instant> = None;
    loop {
        // Before the first migration there is no table: an error here means "not yet".
        let applied: Result<Vec<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(db)
                .await;
        let missing = match &applied {
            Ok(applied) => wanted.iter().filter(|v| !applied.contains(v)).count(),
            Err(_) => wanted.len(),
        };
        if missing == 0 {
            return true;
        }
        if logged.is_none_or(|at| at.elapsed() >= LOG_WAITING_EVERY) {
            tracing::warn!(
                missing,
                error = applied.err().map(|e| e.to_string()),
                "MIGRATE=false: waiting for the migrations to be applied (MIGRATE=only)"
            );
            logged = Some(Instant::now());
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(CHECK_APPLIED_EVERY) => {}
        }
    }
}
