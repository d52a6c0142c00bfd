//! What `/readyz` answers from: state the server keeps, never a query per probe.
//!
//! Readiness policy: ready once the schema is in place (migrated, or found migrated with
//! `MIGRATE=false`) and until shutdown begins. Postgres being down does not make a pod
//! unready: every replica shares the same Postgres, so taking them all out of rotation only
//! swaps our 503 problem+json (with `Retry-After`) for the ingress's bare 502, and a pool
//! saturated by slow queries would cascade into every pod leaving. Postgres's state is
//! still reported, from a background check every [`CHECK_EVERY`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the background check asks Postgres `SELECT 1`.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one check may take before Postgres counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
pub struct Health {
    started: Instant,
    schema_ready: AtomicBool,
    postgres_up: AtomicBool,
    /// Milliseconds after `started` of the last successful check, or [`NEVER`].
    last_ok_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            schema_ready: AtomicBool::new(false),
            postgres_up: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(NEVER),
        }
    }
}

impl Health {
    pub fn schema_ready(&self) -> bool {
        self.schema_ready.load(Ordering::Acquire)
    }

    pub fn set_schema_ready(&self) {
        self.schema_ready.store(true, Ordering::Release);
    }

    pub fn postgres_up(&self) -> bool {
        self.postgres_up.load(Ordering::Relaxed)
    }

    /// How long ago Postgres last answered, if it ever did.
    pub fn postgres_last_ok_ago(&self) -> Option<Duration> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            NEVER => None,
            ms => Some(
                self.started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    pub fn record(&self, ok: bool) {
        if ok {
            let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(NEVER - 1);
            self.last_ok_ms.store(ms, Ordering::Relaxed);
        }
        self.postgres_up.store(ok, Ordering::Relaxed);
    }
}

/// Checks Postgres every [`CHECK_EVERY`] until `shutdown`, recording the outcome.
pub async fn watch_postgres(
    db: crate::db::Db,
    health: std::sync::Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                // Through `Db` so a check cut off by the timeout closes its connection.
                let ok = db.probe(CHECK_TIMEOUT).await.is_ok();
                health.record(ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_server_has_no_schema_and_has_never_seen_postgres() {
        let health = Health::default();
        assert!(!health.schema_ready());
        assert!(!health.postgres_up());
        assert_eq!(health.postgres_last_ok_ago(), None);
    }

    #[test]
    fn a_failed_check_keeps_the_time_of_the_last_good_one() {
        let health = Health::default();
        health.record(true);
        health.record(false);
        assert!(!health.postgres_up());
        assert!(health.postgres_last_ok_ago().is_some());
    }
}
