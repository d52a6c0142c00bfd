//! Cache-aside for single users in the pod's own Redis, with an in-process layer in front.
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
//!
//! **The fill race is closed in Redis.** A reader that read Postgres before a write
//! committed must not store its old value after the writer's eviction. Each id belongs to
//! one of `STRIPES` generation counters kept *in Redis* (`api-server:gen:<stripe>`). The
//! lookup reads the value and its stripe's generation in one `MGET` (a hit stays one round
//! trip); an eviction `INCR`s the generation and `UNLINK`s the key in one pipeline; a fill
//! is one `EVALSHA` of a script that stores only if the generation still equals the one
//! read before the Postgres query. Redis runs the script atomically, so either the eviction
//! ran first (the generation moved: nothing is stored) or the fill did (the eviction deletes
//! it). A fill that times out may still run later, and is still refused. Chosen over a
//! tombstone with `SET NX` because a tombstone closes the race only while it lives (its TTL
//! must outlast the slowest fill) and keeps fresh fills out until it expires; 256 counters
//! cost nothing, never expire, and refuse only fills that were in flight during a write to
//! the same stripe. The in-process stripe counters stay as a free pre-check: they save the
//! round trip of a fill that would be refused, and they still refuse one whose Redis
//! restarted empty after the eviction (its generation then reads absent, as it may have
//! before the eviction).
//!
//! **The in-process layer** (`CACHE_LOCAL_MAX_BYTES`, moka, bounded by bytes, same TTL)
//! answers a hit with no round trip at all. It promises what Redis promises because every
//! path that forgets a user in Redis forgets it here too, and the same epoch and stripe
//! counters guard its fills: an entry records the epoch it was read under (a flush makes it
//! unreachable, and clears the layer), and a fill stores only if its id's stripe counter is
//! unchanged since before the read, checked and stored under that stripe's lock, the lock
//! an eviction bumps the counter under. An eviction bumps and clears twice: before Redis is
//! told (so a fill from Postgres that started earlier is refused), and again after Redis
//! confirmed (so a Redis hit read just before the `UNLINK` landed is refused, or removed).

mod breaker;
pub mod invalidation;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::future::BoxFuture;
use moka::sync::Cache as LocalCache;
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

/// Invalidation counters (in process and in Redis), striped by id so that a write only
/// disturbs fills of ids that share its stripe.
const STRIPES: usize = 256;

const KEY_PREFIX: &str = "api-server:user";
/// The stripes' generations in Redis. Not under the epoch: a flush must not reset them.
const GENERATION_PREFIX: &str = "api-server:gen";

/// Stores the value (KEYS[1], ARGV[2], TTL ARGV[3] in ms) only if the generation (KEYS[2]) is
/// still the one the reader saw before its Postgres query (ARGV[1]; "" when it was absent).
const FILL_SCRIPT: &str = r"
if (redis.call('GET', KEYS[2]) or '') == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    return 1
end
return 0
";

/// A stripe's generation as read by a lookup ("" when absent), to be checked by the fill.
type Generation = String;

/// Test seam: runs after a fill decided to store and before it stores.
type StoreHook = Arc<dyn Fn(Cache, Uuid, Layer) -> BoxFuture<'static, ()> + Send + Sync>;

/// The cache's two layers, as the store hook names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// In process, in front of Redis.
    Local,
    Redis,
}

type Flight = Arc<OnceCell<Result<Option<Bytes>, Arc<sqlx::Error>>>>;

/// An in-process entry: the value and the epoch it was read under.
#[derive(Clone)]
struct Local {
    epoch: u64,
    json: Bytes,
}

/// How long the entry of `id` lives, in both layers: `ttl` less up to a tenth of it, the
/// share fixed by the id's random bits. Entries filled together (a new pod, a cache flush,
/// a warm-up) then expire over a tenth of the TTL instead of in the same instant, which sent
/// every read of that instant to Postgres at once: an open-loop GET run whose fill expired
/// mid-run had a p99 of 1.1 s, against 9 ms without the expiry (docs/benchmarks.md). Never
/// longer than `ttl`, so CACHE_TTL_SECONDS still bounds an entry's age.
pub fn entry_ttl(ttl: Duration, id: Uuid) -> Duration {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let spread = ttl_ms / 10;
    let (_, random_bits) = id.as_u64_pair();
    Duration::from_millis(ttl_ms - random_bits % (spread + 1))
}

/// moka's per-entry expiry: [`entry_ttl`] from the moment of the fill.
struct Jittered(Duration);

impl moka::Expiry<Uuid, Local> for Jittered {
    fn expire_after_create(&self, id: &Uuid, _: &Local, _: std::time::Instant) -> Option<Duration> {
        Some(entry_ttl(self.0, *id))
    }

    /// A store over a live entry counts from the store, as a first fill does.
    fn expire_after_update(
        &self,
        id: &Uuid,
        _: &Local,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry_ttl(self.0, *id))
    }
}

/// Bytes an entry costs beyond its value: the key, the epoch and moka's bookkeeping.
const LOCAL_ENTRY_OVERHEAD: usize = 96;

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
    /// Held while a stripe's counter moves and while a fill of the in-process layer checks
    /// it and stores, so no eviction falls between the check and the store.
    stripe_locks: [Mutex<()>; STRIPES],
    /// The in-process layer; `None` without Redis or with `CACHE_LOCAL_MAX_BYTES=0`.
    local: Option<LocalCache<Uuid, Local>>,
    in_flight: Mutex<HashMap<Uuid, Flight>>,
    /// SHA1 of `FILL_SCRIPT` as Redis reported it (no SHA1 code of our own needed).
    fill_sha: std::sync::OnceLock<String>,
    before_store: Mutex<Option<StoreHook>>,
    metrics: Arc<Metrics>,
}

/// What a lookup found.
enum Lookup {
    Hit(Bytes),
    /// Not cached; a fill may store if the stripe is still at this generation.
    Miss(Generation),
    /// Redis not asked or not answering: no value, and no generation to fill against.
    Unavailable,
}

/// Why a Redis call gave no result.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("Redis does not have the script (restarted or SCRIPT FLUSH)")]
    NoScript,
    #[error("the Redis call failed or timed out")]
    Failed,
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
        Self::new(None, 1, DEFAULT_REDIS_TIMEOUT, 0, metrics)
    }

    /// Prepares a Redis connection; it is made lazily, so a Redis that is down at start-up
    /// does not stop the server. Fails only on an invalid URL. `local_max_bytes` bounds the
    /// in-process layer (0: none).
    pub fn connect(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        local_max_bytes: u64,
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
            local_max_bytes,
            metrics,
        ))
    }

    fn new(
        redis: Option<ConnectionManager>,
        ttl_secs: u64,
        timeout: Duration,
        local_max_bytes: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.cache_breaker_open.set(0);
        let local = (redis.is_some() && local_max_bytes > 0).then(|| {
            LocalCache::builder()
                .max_capacity(local_max_bytes)
                .weigher(|_: &Uuid, v: &Local| {
                    u32::try_from(v.json.len() + LOCAL_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .expire_after(Jittered(Duration::from_secs(ttl_secs)))
                .build()
        });
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
            stripe_locks: std::array::from_fn(|_| Mutex::new(())),
            local,
            in_flight: Mutex::new(HashMap::new()),
            fill_sha: std::sync::OnceLock::new(),
            before_store: Mutex::new(None),
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
        if let Some(json) = self.local_get(id) {
            return Ok(Some(json));
        }
        // Read before Redis is asked: a Redis hit may go into the in-process layer only if
        // no eviction of the id began since.
        let epoch = self.0.epoch.load(Ordering::Acquire);
        let seen = self.stripe(id).load(Ordering::Acquire);
        if let Lookup::Hit(json) = self.lookup(id, true).await {
            self.local_fill(id, epoch, seen, &json).await;
            return Ok(Some(json));
        }
        let flight = Joined::new(self, id);
        flight
            .cell()
            .get_or_init(|| async {
                // A flight that just landed may have filled the key after our lookup. This
                // lookup's generation is the one read last before the query.
                let generation = match self.lookup(id, false).await {
                    Lookup::Hit(json) => return Ok(Some(json)),
                    Lookup::Miss(generation) => Some(generation),
                    Lookup::Unavailable => None,
                };
                let epoch = self.0.epoch.load(Ordering::Acquire);
                let seen = self.stripe(id).load(Ordering::Acquire);
                self.0.metrics.db_user_reads.inc();
                let Some(json) = load().await.map_err(Arc::new)? else {
                    return Ok(None);
                };
                self.local_fill(id, epoch, seen, &json).await;
                if let Some(generation) = generation {
                    self.fill(id, epoch, seen, generation, json.clone()).await;
                }
                Ok(Some(json))
            })
            .await
            .clone()
    }

    /// Bytes the in-process layer holds by its weigher (0 without it), after moka applied
    /// its pending evictions.
    pub fn local_bytes(&self) -> u64 {
        self.0.local.as_ref().map_or(0, |local| {
            local.run_pending_tasks();
            local.weighted_size()
        })
    }

    /// Ids with a load in progress (single-flight entries).
    pub fn flights_in_progress(&self) -> usize {
        self.flights().len()
    }

    /// Forgets one user. Called after a local write commits.
    pub async fn evict(&self, id: Uuid, source: &'static str) {
        self.evict_many(&[id], source).await;
    }

    /// Forgets these users with one pipelined Redis call (a NOTIFY carries up to 200 ids).
    pub async fn evict_many(&self, ids: &[Uuid], source: &'static str) {
        if ids.is_empty() {
            return;
        }
        self.forget_locally(ids);
        {
            let mut flights = self.flights();
            for id in ids {
                flights.remove(id);
            }
        }
        self.0.metrics.invalidated(source, ids.len() as u64);
        if self.0.redis.is_none() {
            return;
        }
        if !self.0.breaker.allow() {
            self.flush("an eviction could not be confirmed");
            return;
        }
        let _again = ForgetAgain { cache: self, ids };
        // Generations first: a fill's script that runs between the two sees the new one and
        // stores nothing; one that ran before has its value unlinked.
        let mut stripes: Vec<usize> = ids.iter().map(|&id| stripe_index(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut pipe = redis::pipe();
        for stripe in stripes {
            pipe.cmd("INCR").arg(generation_key(stripe)).ignore();
        }
        let epoch = self.0.epoch.load(Ordering::Acquire);
        let keys: Vec<String> = ids.iter().map(|&id| self.key(epoch, id)).collect();
        pipe.cmd("UNLINK").arg(keys).ignore();
        let evicted = self
            .run::<(), _>("EVICT", self.0.timeout, |mut conn| async move {
                pipe.query_async(&mut conn).await
            })
            .await;
        if evicted.is_err() {
            self.flush("an eviction could not be confirmed");
        }
    }

    /// Test seam: `hook` runs in every fill of a layer after it decided to store and before
    /// it stores (the in-process layer: before its check under the stripe lock; Redis: before
    /// the script is sent), the window in which a racing write used to slip a stale value
    /// in. It gets this cache (a hook that captured it would keep it alive).
    #[doc(hidden)]
    pub fn set_before_store_hook(
        &self,
        hook: impl Fn(Cache, Uuid, Layer) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) {
        *self
            .0
            .before_store
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(hook));
    }

    /// Makes every cached entry unreachable (new epoch), and empties the in-process layer.
    pub fn flush(&self, reason: &'static str) {
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(local) = &self.0.local {
            local.invalidate_all();
        }
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
            Ok(_) => CacheStatus::Up,
            Err(_) => CacheStatus::Down,
        }
    }

    async fn before_store(&self, id: Uuid, layer: Layer) {
        let hook = self
            .0
            .before_store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(hook) = hook {
            hook(self.clone(), id, layer).await;
        }
    }

    /// The in-process layer's value, if it has one of the current epoch and the cache is
    /// trusted.
    fn local_get(&self, id: Uuid) -> Option<Bytes> {
        let local = self.0.local.as_ref()?;
        if !self.is_trusted() {
            return None;
        }
        match local.get(&id) {
            Some(entry) if entry.epoch == self.0.epoch.load(Ordering::Acquire) => {
                self.0.metrics.cache_local_hits.inc();
                Some(entry.json)
            }
            _ => {
                self.0.metrics.cache_local_misses.inc();
                None
            }
        }
    }

    /// Stores a value read (from Redis or Postgres) after `epoch` and `seen` were read,
    /// unless a flush or an eviction of its stripe happened since. Checked and stored under
    /// the stripe's lock, which every eviction takes to move the counter.
    async fn local_fill(&self, id: Uuid, epoch: u64, seen: u64, json: &Bytes) {
        let Some(local) = &self.0.local else {
            return;
        };
        self.before_store(id, Layer::Local).await;
        let _stripe = self.0.stripe_locks[stripe_index(id)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.is_trusted()
            && self.stripe(id).load(Ordering::Acquire) == seen
            && self.0.epoch.load(Ordering::Acquire) == epoch
        {
            local.insert(
                id,
                Local {
                    epoch,
                    json: json.clone(),
                },
            );
        }
    }

    /// Moves the stripe counters of `ids` (refusing fills that read before now) and removes
    /// them from the in-process layer.
    fn forget_locally(&self, ids: &[Uuid]) {
        for &id in ids {
            let _stripe = self.0.stripe_locks[stripe_index(id)]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.stripe(id).fetch_add(1, Ordering::AcqRel);
        }
        if let Some(local) = &self.0.local {
            for id in ids {
                local.invalidate(id);
            }
        }
    }

    /// A cached value, or a miss with the stripe's generation, in one round trip (`MGET`).
    async fn lookup(&self, id: Uuid, count: bool) -> Lookup {
        if self.0.redis.is_none() {
            return Lookup::Unavailable;
        }
        if !self.is_trusted() || !self.0.breaker.allow() {
            if count {
                self.0.metrics.cache_bypassed.inc();
            }
            return Lookup::Unavailable;
        }
        let mut get = redis::cmd("MGET");
        get.arg(self.key(self.0.epoch.load(Ordering::Acquire), id))
            .arg(generation_key(stripe_index(id)));
        match self
            .call::<(Option<Vec<u8>>, Option<String>)>("MGET", get)
            .await
        {
            Ok((Some(json), _)) => {
                self.0.metrics.cache_hits.inc();
                Lookup::Hit(Bytes::from(json))
            }
            Ok((None, generation)) => {
                if count {
                    self.0.metrics.cache_misses.inc();
                }
                Lookup::Miss(generation.unwrap_or_default())
            }
            Err(_) => Lookup::Unavailable,
        }
    }

    /// Stores a value read from Postgres, unless the id was invalidated since `generation`
    /// (checked by Redis, atomically with the store).
    async fn fill(&self, id: Uuid, epoch: u64, seen: u64, generation: Generation, json: Bytes) {
        // Free pre-checks: no round trip when we already know the fill would be refused.
        if self.0.redis.is_none()
            || !self.is_trusted()
            || self.stripe(id).load(Ordering::Acquire) != seen
            || !self.0.breaker.allow()
        {
            return;
        }
        self.before_store(id, Layer::Redis).await;
        // The epoch is the one read before the query: if a flush happened since, this value
        // lands in the old, unreachable namespace instead of poisoning the new one.
        let keys = [self.key(epoch, id), generation_key(stripe_index(id))];
        let ttl = entry_ttl(Duration::from_secs(self.0.ttl_secs), id).as_millis();
        let run = |script: Option<String>| {
            let mut cmd = match &script {
                Some(sha) => redis::cmd("EVALSHA").arg(sha).clone(),
                None => redis::cmd("EVAL").arg(FILL_SCRIPT).clone(),
            };
            cmd.arg(2)
                .arg(&keys)
                .arg(&generation)
                .arg(json.as_ref())
                .arg(ttl);
            cmd
        };
        let sha = self.0.fill_sha.get().cloned();
        let stored = match sha {
            Some(sha) => match self.call::<i64>("EVALSHA", run(Some(sha))).await {
                // Redis lost its script cache: EVAL runs the script and caches it again.
                Err(CallError::NoScript) => self.call::<i64>("EVAL", run(None)).await,
                other => other,
            },
            None => {
                // The first fill of this process learns the script's SHA1 in the same round
                // trip as it runs the script.
                let mut pipe = redis::pipe();
                pipe.cmd("SCRIPT").arg("LOAD").arg(FILL_SCRIPT);
                pipe.add_command(run(None));
                let loaded = self
                    .run::<(String, i64), _>("EVAL", self.0.timeout, |mut conn| async move {
                        pipe.query_async(&mut conn).await
                    })
                    .await;
                loaded.map(|(sha, stored)| {
                    let _ = self.0.fill_sha.set(sha);
                    stored
                })
            }
        };
        // A timed-out script may still run later; it is still refused if an eviction ran
        // first, so there is nothing to clean up.
        if matches!(stored, Ok(0)) {
            tracing::debug!(%id, "fill refused: the id was invalidated during the read");
        }
    }

    /// One Redis command with the timeout; every outcome feeds the breaker.
    async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, CallError> {
        self.call_within(op, cmd, self.0.timeout).await
    }

    async fn call_within<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: redis::Cmd,
        budget: Duration,
    ) -> Result<T, CallError> {
        self.run(op, budget, |mut conn| async move {
            cmd.query_async::<T>(&mut conn).await
        })
        .await
    }

    /// Runs `request` (a command or a pipeline) on the shared connection within `budget`.
    /// An answer, even NOSCRIPT, counts as a success for the breaker.
    async fn run<T, Fut>(
        &self,
        op: &'static str,
        budget: Duration,
        request: impl FnOnce(ConnectionManager) -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.0.redis.as_ref().ok_or(CallError::Failed)?.clone();
        let started = Instant::now();
        let result = tokio::time::timeout(budget, request(conn)).await;
        let (outcome, result) = match result {
            Ok(Ok(value)) => (Outcome::Ok(started.elapsed()), Ok(value)),
            Ok(Err(error))
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                (Outcome::Ok(started.elapsed()), Err(CallError::NoScript))
            }
            Ok(Err(error)) => {
                tracing::debug!(op, %error, "redis operation failed");
                (Outcome::Failed, Err(CallError::Failed))
            }
            Err(_) => {
                tracing::debug!(op, "redis operation timed out");
                (Outcome::Failed, Err(CallError::Failed))
            }
        };
        if outcome == Outcome::Failed {
            self.0.metrics.cache_errors.inc();
        }
        if let Some(transition) = self.0.breaker.record(outcome) {
            self.breaker_moved(transition);
        }
        result
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
        &self.0.invalidations[stripe_index(id)]
    }

    fn flights(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Flight>> {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn stripe_index(id: Uuid) -> usize {
    // UUIDv7's random tail spreads ids evenly over the stripes.
    usize::from(id.as_bytes()[15]) % STRIPES
}

fn generation_key(stripe: usize) -> String {
    format!("{GENERATION_PREFIX}:{stripe}")
}

/// Forgets the ids in process once more when the Redis eviction is over, whatever its
/// outcome (a failure flushes as well): a Redis hit read before the `UNLINK` landed may have
/// been stored in the in-process layer after the first pass.
struct ForgetAgain<'a> {
    cache: &'a Cache,
    ids: &'a [Uuid],
}

impl Drop for ForgetAgain<'_> {
    fn drop(&mut self) {
        self.cache.forget_locally(self.ids);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ttls_spread_over_the_last_tenth_of_the_ttl_and_never_exceed_it() {
        let ttl = Duration::from_secs(300);
        let ttls: Vec<Duration> = (0..2000).map(|_| entry_ttl(ttl, Uuid::now_v7())).collect();
        let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
        assert!(*min >= Duration::from_secs(270), "{min:?}");
        assert!(*max <= ttl, "{max:?}");
        // Ids made in the same millisecond (a burst of creates) still spread over the tenth.
        assert!(*max - *min > Duration::from_secs(25), "{min:?}..{max:?}");
        // The same id always gets the same TTL, in both layers.
        let id = Uuid::now_v7();
        assert_eq!(entry_ttl(ttl, id), entry_ttl(ttl, id));
    }

    #[test]
    fn a_one_second_ttl_keeps_at_least_nine_tenths_of_it() {
        let ttl = Duration::from_secs(1);
        for _ in 0..200 {
            let d = entry_ttl(ttl, Uuid::now_v7());
            assert!(d >= Duration::from_millis(900) && d <= ttl, "{d:?}");
        }
    }
}
