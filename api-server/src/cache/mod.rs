//! Cache-aside for single users in the pod's own Redis.
//!
//! - Values are the user's JSON exactly as served, so a hit is returned without decoding.
//! - Misses for one id are coalesced (single-flight): N concurrent readers, one query.
//! - Keys carry an epoch. A flush bumps the epoch, which makes every older key unreachable
//!   at once, even while Redis is down; old keys expire by TTL (and Redis's LRU).
//! - Cached reads are trusted only while the LISTEN connection is subscribed (see
//!   `invalidation`); otherwise reads go to Postgres.
//! - Redis is an optimisation: every operation has a short timeout (`REDIS_TIMEOUT_MS`),
//!   failures go to Postgres, and a circuit breaker (`breaker`) stops trying for a moment
//!   when too many calls in a window fail or are slow. An eviction that cannot be confirmed
//!   flushes, so nothing stale survives a Redis outage.

mod breaker;
pub mod invalidation;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::metrics::Metrics;
pub use breaker::Breaker;
use breaker::{Outcome, Transition, Trip};

/// Default bound on one Redis operation (and on connecting): Redis is a sidecar on loopback
/// whose p99 is under 1 ms, and a slow Redis must not make the API slower than Postgres
/// alone would be.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);

/// Bound on the PING behind `/readyz`'s `redis` field.
const STATUS_TIMEOUT: Duration = Duration::from_millis(250);

/// Invalidation counters, striped by id so that a write only disturbs fills of ids that
/// share its stripe.
const STRIPES: usize = 256;

const KEY_PREFIX: &str = "api-server:user";

type Flight = Arc<OnceCell<Result<Option<Bytes>, Arc<sqlx::Error>>>>;

/// Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Cache(Arc<Inner>);

struct Inner {
    redis: Option<ConnectionManager>,
    ttl_secs: u64,
    /// Bound on each Redis command.
    timeout: Duration,
    breaker: Breaker,
    epoch: AtomicU64,
    /// True while invalidations are being received, so cached values can be believed.
    trusted: AtomicBool,
    invalidations: [AtomicU64; STRIPES],
    in_flight: Mutex<HashMap<Uuid, Flight>>,
    metrics: Arc<Metrics>,
}

/// What `/readyz` reports about the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Disabled,
    Up,
    Down,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl Cache {
    /// No Redis: every read goes to Postgres (still single-flighted).
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self::new(None, 1, DEFAULT_REDIS_TIMEOUT, metrics)
    }

    /// Prepares a Redis connection; it is made lazily, so a Redis that is down at start-up
    /// does not stop the server. Fails only on an invalid URL.
    pub fn connect(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            // Connecting goes on in the background after a request's call gave up; give it
            // longer than one call, or a loaded pod might never finish a handshake.
            .set_connection_timeout(Some(timeout.max(STATUS_TIMEOUT)))
            // `call` bounds every command (connecting included); a second timer inside the
            // client would only cost time on the hot path.
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self::new(
            Some(manager),
            ttl.as_secs().max(1),
            timeout,
            metrics,
        ))
    }

    fn new(
        redis: Option<ConnectionManager>,
        ttl_secs: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.cache_breaker_open.set(0);
        Self(Arc::new(Inner {
            redis,
            ttl_secs,
            timeout,
            // A call taking half its budget is slow: well above a healthy sidecar's latency,
            // and early enough to stop before most calls hit the timeout.
            breaker: Breaker::new(timeout / 2),
            // A fresh process must not believe entries an earlier process left in Redis:
            // it did not hear the invalidations sent while it was away.
            epoch: AtomicU64::new(rand::random()),
            trusted: AtomicBool::new(false),
            invalidations: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    pub fn is_enabled(&self) -> bool {
        self.0.redis.is_some()
    }

    /// One user's cached value: from Redis when possible, else from `load` (once per id at a
    /// time). The value is opaque here (the route decides what it holds).
    ///
    /// Cancel-safe: if every caller waiting on a load is dropped (clients gone), the load is
    /// dropped with them and the id's single-flight entry removed; a later caller starts anew.
    pub async fn get_user<F, Fut>(
        &self,
        id: Uuid,
        load: F,
    ) -> Result<Option<Bytes>, Arc<sqlx::Error>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Bytes>, sqlx::Error>>,
    {
        if let Some(json) = self.lookup(id, true).await {
            return Ok(Some(json));
        }
        let flight = Joined::new(self, id);
        flight
            .cell()
            .get_or_init(|| async {
                // A flight that just landed may have filled the key after our lookup.
                if let Some(json) = self.lookup(id, false).await {
                    return Ok(Some(json));
                }
                let epoch = self.0.epoch.load(Ordering::Acquire);
                let seen = self.stripe(id).load(Ordering::Acquire);
                self.0.metrics.db_user_reads.inc();
                let Some(json) = load().await.map_err(Arc::new)? else {
                    return Ok(None);
                };
                self.fill(id, epoch, seen, json.clone()).await;
                Ok(Some(json))
            })
            .await
            .clone()
    }

    /// Ids with a load in progress (single-flight entries).
    pub fn flights_in_progress(&self) -> usize {
        self.flights().len()
    }

    /// Forgets one user. Called after a local write commits and for every NOTIFY.
    pub async fn evict(&self, id: Uuid, source: &'static str) {
        // Order matters: bump the counter before deleting, so a fill that races with this
        // eviction sees the bump after its SET and deletes its own (possibly stale) value.
        self.stripe(id).fetch_add(1, Ordering::AcqRel);
        self.flights().remove(&id);
        self.0.metrics.invalidated(source);
        if self.0.redis.is_none() {
            return;
        }
        let key = self.key(self.0.epoch.load(Ordering::Acquire), id);
        if !self.delete(&key).await {
            self.flush("an eviction could not be confirmed");
        }
    }

    /// Makes every cached entry unreachable (new epoch).
    pub fn flush(&self, reason: &'static str) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        self.0.metrics.cache_flushes.inc();
        // Debug: during a Redis outage every write flushes; the metric counts them.
        tracing::debug!(reason, "cache flushed");
    }

    /// Trust cached values only while the invalidation feed is live.
    pub fn set_trusted(&self, trusted: bool) {
        self.0.trusted.store(trusted, Ordering::Release);
    }

    pub fn is_trusted(&self) -> bool {
        self.0.trusted.load(Ordering::Acquire)
    }

    pub async fn status(&self) -> CacheStatus {
        if self.0.redis.is_none() {
            return CacheStatus::Disabled;
        }
        if !self.0.breaker.allow() {
            return CacheStatus::Down;
        }
        // The probe is off the request path, and may be the call that connects: it gets a
        // wider budget than requests, so "up" means reachable, not "answers within 20 ms".
        let ping = redis::cmd("PING");
        let budget = self.0.timeout.max(STATUS_TIMEOUT);
        match self.call_within::<String>("PING", ping, budget).await {
            Some(_) => CacheStatus::Up,
            None => CacheStatus::Down,
        }
    }

    /// A cached value, or None on miss, error, open breaker or untrusted cache.
    async fn lookup(&self, id: Uuid, count: bool) -> Option<Bytes> {
        self.0.redis.as_ref()?;
        if !self.is_trusted() || !self.0.breaker.allow() {
            if count {
                self.0.metrics.cache_bypassed.inc();
            }
            return None;
        }
        let mut get = redis::cmd("GET");
        get.arg(self.key(self.0.epoch.load(Ordering::Acquire), id));
        match self.call::<Option<Vec<u8>>>("GET", get).await? {
            Some(json) => {
                self.0.metrics.cache_hits.inc();
                Some(Bytes::from(json))
            }
            None => {
                if count {
                    self.0.metrics.cache_misses.inc();
                }
                None
            }
        }
    }

    /// Stores a value read from Postgres, unless the id was invalidated meanwhile.
    async fn fill(&self, id: Uuid, epoch: u64, seen: u64, json: Bytes) {
        let stripe = self.stripe(id);
        if self.0.redis.is_none()
            || !self.is_trusted()
            || stripe.load(Ordering::Acquire) != seen
            || !self.0.breaker.allow()
        {
            return;
        }
        // The epoch is the one read before the query: if a flush happened since, this value
        // lands in the old, unreachable namespace instead of poisoning the new one.
        let key = self.key(epoch, id);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(json.as_ref())
            .arg("EX")
            .arg(self.0.ttl_secs);
        if self.call::<()>("SET", set).await.is_none() {
            // A timed-out SET may still land, possibly after a racing writer's DEL, and we
            // cannot delete it reliably: forget the whole generation instead.
            if stripe.load(Ordering::Acquire) != seen {
                self.flush("a raced fill could not be confirmed");
            }
            return;
        }
        // Not a closed race: a writer that bumped the stripe between the check above and
        // this SET reaching Redis may have had its DEL land first. Its old value is then
        // readable until the DEL below lands (one Redis round trip). Closing that would mean
        // the stripe counter in the key, i.e. a miss for every id of the stripe per write.
        if stripe.load(Ordering::Acquire) != seen && !self.delete(&key).await {
            self.flush("a raced fill could not be removed");
        }
    }

    /// DEL with the usual timeout and breaker; true when Redis confirmed it.
    async fn delete(&self, key: &str) -> bool {
        if self.0.redis.is_none() {
            return true;
        }
        if !self.0.breaker.allow() {
            return false;
        }
        let mut del = redis::cmd("DEL");
        del.arg(key);
        self.call::<i64>("DEL", del).await.is_some()
    }

    /// One Redis command with the timeout; every outcome feeds the breaker. None on any
    /// failure.
    async fn call<T: redis::FromRedisValue>(&self, op: &'static str, cmd: redis::Cmd) -> Option<T> {
        self.call_within(op, cmd, self.0.timeout).await
    }

    async fn call_within<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
        budget: Duration,
    ) -> Option<T> {
        let mut conn = self.0.redis.as_ref()?.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(budget, cmd.query_async::<T>(&mut conn)).await;
        let outcome = match &result {
            Ok(Ok(_)) => Outcome::Ok(started.elapsed()),
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "redis operation failed");
                Outcome::Failed
            }
            Err(_) => {
                tracing::debug!(op, "redis operation timed out");
                Outcome::Failed
            }
        };
        if outcome == Outcome::Failed {
            self.0.metrics.cache_errors.inc();
        }
        if let Some(transition) = self.0.breaker.record(outcome) {
            self.breaker_moved(transition);
        }
        result.ok()?.ok()
    }

    /// Logs and exports a breaker transition (only transitions: a request never logs).
    fn breaker_moved(&self, transition: Transition) {
        match transition {
            Transition::Opened(trip) => {
                self.0.metrics.cache_breaker_open.set(1);
                let open_for_ms = breaker::OPEN_FOR.as_millis();
                match trip {
                    Trip::ErrorRate { calls, rate } => tracing::warn!(
                        calls,
                        error_rate = rate,
                        open_for_ms,
                        "cache breaker opened: too many Redis calls failed; reading from Postgres"
                    ),
                    Trip::SlowRate { calls, rate } => tracing::warn!(
                        calls,
                        slow_rate = rate,
                        open_for_ms,
                        slow_ms = (self.0.timeout / 2).as_millis(),
                        "cache breaker opened: too many Redis calls were slow; reading from Postgres"
                    ),
                    Trip::ProbeFailed => tracing::warn!(
                        open_for_ms,
                        "cache breaker reopened: the probe call failed or was slow"
                    ),
                }
            }
            Transition::Closed => {
                self.0.metrics.cache_breaker_open.set(0);
                tracing::warn!("cache breaker closed: Redis answered the probe in time");
            }
        }
    }

    fn key(&self, epoch: u64, id: Uuid) -> String {
        format!("{KEY_PREFIX}:{epoch:016x}:{id}")
    }

    fn stripe(&self, id: Uuid) -> &AtomicU64 {
        // UUIDv7's random tail spreads ids evenly over the stripes.
        let index = usize::from(id.as_bytes()[15]) % STRIPES;
        &self.0.invalidations[index]
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Flight>> {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One caller's share of an id's single flight. Dropping it, on completion or on
/// cancellation, removes the entry once the flight has landed or its last caller is gone,
/// so entries never outlive their callers.
struct Joined<'a> {
    cache: &'a Cache,
    id: Uuid,
    flight: Option<Flight>,
}

impl<'a> Joined<'a> {
    fn new(cache: &'a Cache, id: Uuid) -> Self {
        let flight = cache.flights().entry(id).or_default().clone();
        Self {
            cache,
            id,
            flight: Some(flight),
        }
    }

    fn cell(&self) -> &OnceCell<Result<Option<Bytes>, Arc<sqlx::Error>>> {
        self.flight
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only on drop"))
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        let mut flights = self.cache.flights();
        let Some(flight) = self.flight.take() else {
            return;
        };
        // Every clone and drop of a flight happens under this lock, so the count is exact:
        // 2 means the map's and ours, i.e. nobody else waits.
        let ours = flights
            .get(&self.id)
            .is_some_and(|current| Arc::ptr_eq(current, &flight));
        if ours && (flight.initialized() || Arc::strong_count(&flight) == 2) {
            flights.remove(&self.id);
        }
        drop(flight);
    }
}
