//! The request pool, and every call a request makes on it: bounded in time, a connection
//! that failed or was cut off mid-call closed rather than reused, reads retried once on
//! another connection when theirs turned out dead.
//!
//! Why each part (issue 10, items 7 and 8):
//! - `statement_timeout` is enforced by Postgres, so it cannot fire when Postgres cannot
//!   answer (a black-holed network): the client-side bound `DB_QUERY_TIMEOUT_MS` does.
//! - sqlx 0.8 pings a connection when it is given back to the pool, without a time bound,
//!   so on a silent network the connection hangs there and its pool slot with it. A
//!   connection whose call was cut off is closed instead ([`PoolConnection::close_on_drop`],
//!   which sqlx bounds to 5 s); any other is given back through the same ping, run here
//!   under the ping bound (a connection whose ping is cut off is dropped, freeing its slot).
//! - sqlx 0.8 has no TCP keepalive nor `TCP_USER_TIMEOUT` option (and no hook to set socket
//!   options), so a silent peer is only noticed by these bounds, not by the kernel.
//! - After a Postgres restart every idle connection is dead, but under load none is idle
//!   long enough to be pinged. The first connection failure a request sees is recorded;
//!   from then on the pool pings, before handing it out, any connection idle since before
//!   that failure. Reads that still meet a dead connection are retried once; writes are not
//!   (a write whose connection died may have committed), so at most the writes already
//!   running on a dead connection when the first failure is seen fail: never more than
//!   `DB_POOL_MAX`.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, TryFutureExt};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPoolOptions, Postgres};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::time::Instant;

use crate::config::{ConfigError, DatabaseConfig};

/// A database call did not complete within its bound (`DB_QUERY_TIMEOUT_MS`, or the ping's).
/// Carried as the source of an `io::ErrorKind::TimedOut` [`sqlx::Error::Io`], which the API
/// maps to 503 like any other unavailability.
#[derive(Debug, thiserror::Error)]
#[error("database call timed out after {} ms", after.as_millis())]
pub struct CallTimedOut {
    pub after: Duration,
}

/// The error of a call cut off after `after`.
pub fn timed_out(after: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        CallTimedOut { after },
    ))
}

/// One database call: given a connection, the future of its result. Boxed and `Send`, so it
/// may borrow the connection; it owns whatever else it binds, since a read may run twice.
pub trait Call<T>:
    for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send
{
}

impl<T, F> Call<T> for F where
    F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send
{
}

/// The request pool plus the bounds of its calls. Derefs to the pool for metrics and probes.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    query_timeout: Duration,
    /// Bound on the ping of a connection given back to the pool.
    ping_timeout: Duration,
    failures: Arc<FailureClock>,
}

impl Deref for Db {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

impl From<PgPool> for Db {
    /// A pool built elsewhere, with the default query timeout (unit tests).
    fn from(pool: PgPool) -> Self {
        let defaults = DatabaseConfig::from_url("postgres://localhost");
        Self {
            pool,
            query_timeout: defaults.query_timeout(),
            ping_timeout: PingPolicy::from(&defaults).timeout,
            failures: Arc::default(),
        }
    }
}

impl Db {
    /// The request pool, connecting lazily.
    pub fn connect_lazy(config: &DatabaseConfig) -> Result<Self, ConfigError> {
        let failures = Arc::new(FailureClock::default());
        let ping = PingPolicy::from(config);
        let clock = failures.clone();
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_max)
            .min_connections(config.pool_min)
            .acquire_timeout(config.acquire_timeout())
            // By default sqlx pings every connection it hands out: one more round trip to
            // Postgres per query (pings, with the one sqlx always does on release, were a
            // fifth of the server's CPU on POST /users). Under load a connection was idle for
            // microseconds; only one idle long enough to have gone stale, or idle since a
            // connection failure (say, across a Postgres restart), is checked. Measured:
            // +10-20% POST and list requests/s.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let must_ping = ping.must_ping(meta.idle_for, clock.since_last());
                Box::pin(async move {
                    if must_ping {
                        // An error or a timeout here makes sqlx drop the connection and
                        // open another, within the same acquire.
                        tokio::time::timeout(ping.timeout, conn.ping())
                            .await
                            .map_err(|_| timed_out(ping.timeout))??;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(config.request_options()?);
        Ok(Self {
            pool,
            query_timeout: config.query_timeout(),
            ping_timeout: ping.timeout,
            failures,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A call that may safely run twice: retried once, on another connection, when its
    /// connection was found dead (not on a timeout, which would only double the wait).
    pub async fn read<T>(&self, mut call: impl Call<T>) -> Result<T, sqlx::Error> {
        match self.attempt(&mut call).await {
            Err(error) if connection_lost(&error) => {
                tracing::info!(%error, "connection lost under a read; retrying on another");
                self.attempt(&mut call).await
            }
            done => done,
        }
    }

    /// A call that must not be re-sent: once its connection is lost it may have committed.
    pub async fn write<T>(&self, mut call: impl Call<T>) -> Result<T, sqlx::Error> {
        self.attempt(&mut call).await
    }

    /// `SELECT 1`, waiting for a connection included, within `within`; not retried (a
    /// health check reports what it saw).
    pub async fn probe(&self, within: Duration) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let conn = tokio::time::timeout(within, self.pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        let left = within.saturating_sub(started.elapsed());
        self.run_on(conn, left, &mut |conn| {
            sqlx::query("SELECT 1").execute(conn).map_ok(drop).boxed()
        })
        .await
    }

    async fn attempt<T>(&self, call: &mut impl Call<T>) -> Result<T, sqlx::Error> {
        // Bounded by DB_ACQUIRE_TIMEOUT_MS, pings included.
        let conn = self.pool.acquire().await?;
        self.run_on(conn, self.query_timeout, call).await
    }

    async fn run_on<T>(
        &self,
        mut conn: PoolConnection<Postgres>,
        within: Duration,
        call: &mut impl Call<T>,
    ) -> Result<T, sqlx::Error> {
        let result = tokio::time::timeout(within, call(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out(within)));
        if let Err(error) = &result
            && breaks_connection(error)
        {
            // Cut off mid-message, or dead: never reused (and not pinged on release, which
            // would wait without bound on a silent peer).
            conn.close_on_drop();
            self.failures.record();
        } else {
            self.release(conn);
        }
        result
    }

    /// Gives `conn` back to the pool through sqlx's own release (which pings it), bounded:
    /// sqlx does the same when a connection is dropped, without a bound. The method is
    /// `#[doc(hidden)]` in sqlx 0.8 but public; the version is pinned in Cargo.lock.
    fn release(&self, mut conn: PoolConnection<Postgres>) {
        let release = conn.return_to_pool();
        // Nothing left to give back; with DB_POOL_MIN > 0 it only tops the pool up.
        drop(conn);
        tokio::spawn(tokio::time::timeout(self.ping_timeout, release));
    }
}

/// The connection died under the call (closed, reset, EOF, or Postgres ending the session):
/// the statement may or may not have run, and another connection may well work.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
                | ErrorKind::NotConnected
        ),
        // 57P01 admin_shutdown (a fast or smart stop, pg_terminate_backend), 57P02
        // crash_shutdown, class 08 connection exceptions.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "57P01" || code == "57P02" || code.starts_with("08")),
        _ => false,
    }
}

/// The connection cannot be trusted with another call: it died, or the call was cut off
/// (timed out) or failed below the SQL level, leaving the protocol in an unknown state.
pub fn breaks_connection(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    ) || connection_lost(error)
}

/// When a pooled connection is pinged before a request gets it.
#[derive(Debug, Clone, Copy)]
struct PingPolicy {
    after_idle: Duration,
    timeout: Duration,
}

impl From<&DatabaseConfig> for PingPolicy {
    fn from(config: &DatabaseConfig) -> Self {
        Self {
            after_idle: config.ping_after_idle(),
            // Half the acquire budget, so a dead connection leaves time to open another.
            timeout: config.query_timeout().min(config.acquire_timeout() / 2),
        }
    }
}

impl PingPolicy {
    /// Idle long enough to have gone stale, or given back before the last connection
    /// failure (which may have been a restart that killed it too).
    fn must_ping(&self, idle_for: Duration, last_failure_ago: Option<Duration>) -> bool {
        idle_for >= self.after_idle || last_failure_ago.is_some_and(|ago| idle_for >= ago)
    }
}

/// When a request last saw a connection fail; read on every acquire, so an atomic.
#[derive(Debug)]
struct FailureClock {
    origin: Instant,
    /// Microseconds after `origin`; `NEVER` until the first failure.
    last_us: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Default for FailureClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_us: AtomicU64::new(NEVER),
        }
    }
}

impl FailureClock {
    fn record(&self) {
        let us = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(NEVER - 1);
        self.last_us.store(us, Ordering::Relaxed);
    }

    fn since_last(&self) -> Option<Duration> {
        match self.last_us.load(Ordering::Relaxed) {
            NEVER => None,
            us => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    fn io(kind: ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(Error::from(kind))
    }

    #[test]
    fn a_dead_connection_is_retryable() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(connection_lost(&io(kind)), "{kind:?}");
        }
    }

    #[test]
    fn timeouts_refusals_and_query_errors_are_not_retried() {
        assert!(!connection_lost(&timed_out(Duration::from_millis(5))));
        assert!(!connection_lost(&io(ErrorKind::ConnectionRefused)));
        assert!(!connection_lost(&sqlx::Error::PoolTimedOut));
        assert!(!connection_lost(&sqlx::Error::RowNotFound));
        assert!(!connection_lost(&sqlx::Error::Protocol("odd".into())));
    }

    #[test]
    fn a_timed_out_call_breaks_its_connection_and_is_unavailable() {
        let error = timed_out(Duration::from_millis(5));
        assert!(breaks_connection(&error));
        assert!(crate::error::is_unavailable(&error));
        assert!(breaks_connection(&sqlx::Error::Protocol("odd".into())));
        assert!(!breaks_connection(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn connections_idle_since_the_last_failure_are_pinged() {
        let policy = PingPolicy {
            after_idle: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let ms = Duration::from_millis;
        // No failure seen: only idleness counts.
        assert!(!policy.must_ping(ms(5), None));
        assert!(policy.must_ping(ms(1000), None));
        // A failure 10 ms ago: a connection given back 20 ms ago predates it, one given
        // back 5 ms ago came back after it (and passed sqlx's ping on release).
        assert!(policy.must_ping(ms(20), Some(ms(10))));
        assert!(!policy.must_ping(ms(5), Some(ms(10))));
    }

    #[test]
    fn the_failure_clock_starts_empty_and_remembers_the_last_failure() {
        let clock = FailureClock::default();
        assert_eq!(clock.since_last(), None);
        clock.record();
        assert!(clock.since_last().is_some());
    }
}
