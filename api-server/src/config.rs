//! Settings, read only from the environment (every field also has a `--flag`).
//!
//! `api-server --help` lists every variable with its default; docs/configuration.md
//! explains them.

use std::fmt;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::client_address::{ClientAddress, Source};

/// Everything the server needs to start.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "api-server",
    version,
    about = "The bundled user API: axum on Postgres with a Redis cache invalidated by Postgres NOTIFY",
    after_help = "Logging: RUST_LOG sets the filter (default: info,sqlx=warn,tower_http=info)."
)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseConfig,
    #[command(flatten)]
    pub cache: CacheConfig,
    #[command(flatten)]
    pub rate_limit: RateLimitConfig,
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub events: EventsConfig,
}

/// User events on Kafka through the transactional outbox (docs/configuration.md, "Events").
#[derive(Debug, Clone, Args)]
pub struct EventsConfig {
    /// Kafka bootstrap brokers, comma-separated host:port; setting it turns user events on.
    /// Unset: no outbox rows are written and nothing is published.
    #[arg(long = "events-kafka-brokers", env = "EVENTS_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The topic user events are published to (keyed by user id).
    #[arg(long = "events-topic", env = "EVENTS_TOPIC", default_value = DEFAULT_EVENTS_TOPIC)]
    pub topic: String,
    /// The CloudEvents `source` of every event (and the producer's client.id).
    #[arg(long = "events-source", env = "EVENTS_SOURCE", default_value = DEFAULT_EVENTS_SOURCE)]
    pub source: String,
    /// How the relay talks to the brokers.
    #[arg(long = "events-kafka-security-protocol", env = "EVENTS_KAFKA_SECURITY_PROTOCOL", value_enum, default_value_t = SecurityProtocol::Plaintext)]
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CA certificates that sign the brokers' (ssl, sasl_ssl); default:
    /// the system's.
    #[arg(
        long = "events-kafka-ssl-ca-location",
        env = "EVENTS_KAFKA_SSL_CA_LOCATION"
    )]
    pub ssl_ca_location: Option<PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by TLS (mTLS).
    #[arg(
        long = "events-kafka-ssl-certificate-location",
        env = "EVENTS_KAFKA_SSL_CERTIFICATE_LOCATION",
        requires = "ssl_key_location"
    )]
    pub ssl_certificate_location: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(
        long = "events-kafka-ssl-key-location",
        env = "EVENTS_KAFKA_SSL_KEY_LOCATION",
        requires = "ssl_certificate_location"
    )]
    pub ssl_key_location: Option<PathBuf>,
    /// SASL mechanism (sasl_plaintext, sasl_ssl).
    #[arg(long = "events-kafka-sasl-mechanism", env = "EVENTS_KAFKA_SASL_MECHANISM", value_enum, default_value_t = SaslMechanism::ScramSha512)]
    pub sasl_mechanism: SaslMechanism,
    #[arg(
        long = "events-kafka-sasl-username",
        env = "EVENTS_KAFKA_SASL_USERNAME"
    )]
    pub sasl_username: Option<String>,
    #[arg(
        long = "events-kafka-sasl-password",
        env = "EVENTS_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,
}

pub const DEFAULT_EVENTS_TOPIC: &str = "users.events";
/// The service's name: what the operator's Service and Deployment are called by default.
pub const DEFAULT_EVENTS_SOURCE: &str = "api-server";

impl Default for EventsConfig {
    /// Events off.
    fn default() -> Self {
        Self {
            kafka_brokers: None,
            topic: DEFAULT_EVENTS_TOPIC.to_owned(),
            source: DEFAULT_EVENTS_SOURCE.to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

impl EventsConfig {
    /// The brokers, when events are on (set and not blank).
    pub fn brokers(&self) -> Option<&str> {
        self.kafka_brokers
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
    }
}

/// Spelled as librdkafka's `security.protocol` (and docs/configuration.md) spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    #[value(name = "sasl_plaintext", alias = "sasl-plaintext")]
    SaslPlaintext,
    #[value(name = "sasl_ssl", alias = "sasl-ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// OAuth 2.0 bearer JWTs on /users (docs/configuration.md, "Authentication").
#[derive(Debug, Clone, Default, Args)]
pub struct AuthConfig {
    /// A JWKS file (RS256, ES256 or EdDSA keys); setting it turns authentication on, and
    /// the file is re-read when it changes. Unset: /users is open to anyone.
    #[arg(
        long = "auth-jwks-path",
        env = "AUTH_JWKS_PATH",
        requires_all = ["jwt_issuer", "jwt_audience"]
    )]
    pub jwks_path: Option<PathBuf>,
    /// The `iss` every token must carry. Needs AUTH_JWKS_PATH.
    #[arg(
        long = "auth-jwt-issuer",
        env = "AUTH_JWT_ISSUER",
        requires = "jwks_path"
    )]
    pub jwt_issuer: Option<String>,
    /// A value the token's `aud` must contain. Needs AUTH_JWKS_PATH.
    #[arg(
        long = "auth-jwt-audience",
        env = "AUTH_JWT_AUDIENCE",
        requires = "jwks_path"
    )]
    pub jwt_audience: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// Full Postgres URL; when set it wins over every PG* variable.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// Postgres host name, IP address or Unix-socket directory.
    #[arg(long, env = "PGHOST", default_value = "localhost")]
    pub pg_host: String,
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    pub pg_port: u16,
    /// Database name.
    #[arg(long, env = "PGDATABASE", default_value = "postgres")]
    pub pg_database: String,
    #[arg(long, env = "PGUSER", default_value = "postgres")]
    pub pg_user: String,
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    pub pg_password: Option<Secret>,
    /// disable, allow, prefer, require, verify-ca or verify-full (as in libpq).
    #[arg(long, env = "PGSSLMODE", default_value = "prefer", value_parser = parse_ssl_mode)]
    pub pg_ssl_mode: PgSslMode,
    /// Most connections the pool opens.
    #[arg(long = "db-pool-max", env = "DB_POOL_MAX", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_max: u32,
    /// Connections the pool keeps open when idle.
    #[arg(long = "db-pool-min", env = "DB_POOL_MIN", default_value_t = 1)]
    pub pool_min: u32,
    /// How long a request waits for a connection before it gets 503.
    #[arg(long = "db-acquire-timeout-ms", env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub acquire_timeout_ms: u64,
    /// Postgres `statement_timeout` for request queries: a statement running longer is
    /// cancelled by Postgres (the request gets 503). 0 disables it.
    #[arg(
        long = "db-statement-timeout-ms",
        env = "DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub statement_timeout_ms: u64,
    /// Postgres `lock_timeout` for request queries: a statement waiting longer for a row or
    /// table lock fails (the request gets 503). 0 disables it.
    #[arg(
        long = "db-lock-timeout-ms",
        env = "DB_LOCK_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub lock_timeout_ms: u64,
    /// Postgres `idle_in_transaction_session_timeout` for request connections: a session
    /// idle inside a transaction this long is ended by Postgres, releasing its locks.
    /// 0 disables it.
    #[arg(
        long = "db-idle-in-transaction-timeout-ms",
        env = "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub idle_in_transaction_timeout_ms: u64,
    /// Client-side bound on one database call of a request (a query, or the ping of a pooled
    /// connection): past it the call is abandoned, its connection closed (never reused) and
    /// the request gets 503. Unlike `statement_timeout` it also holds when Postgres cannot
    /// answer at all (a black-holed network). Must be larger than DB_STATEMENT_TIMEOUT_MS,
    /// so a slow statement is cancelled by Postgres first.
    #[arg(long = "db-query-timeout-ms", env = "DB_QUERY_TIMEOUT_MS", default_value_t = 6000, value_parser = clap::value_parser!(u64).range(1..))]
    pub query_timeout_ms: u64,
    /// A pooled connection idle at least this long is pinged before a request gets it
    /// (0: every time). Connections idle since the last connection failure are pinged anyway.
    #[arg(
        long = "db-ping-after-idle-ms",
        env = "DB_PING_AFTER_IDLE_MS",
        default_value_t = 1000
    )]
    pub ping_after_idle_ms: u64,
    /// Most creates (`POST /users` without an `Idempotency-Key`) written by one statement:
    /// creates that arrive while the previous ones are being written are inserted together
    /// (one round trip, one commit). 1 writes each create on its own. Up to half the pool
    /// (DB_POOL_MAX / 2, rounded up) such statements run at once.
    #[arg(long = "db-insert-batch-max", env = "DB_INSERT_BATCH_MAX", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub insert_batch_max: u16,
    /// `true`: apply the embedded migrations at start-up (after the port is bound; /readyz is
    /// 503 until they are done). `false`: apply none, and be unready until another step (a Job
    /// running `MIGRATE=only`) has applied them all. `only`: apply them and exit.
    #[arg(long, env = "MIGRATE", value_enum, default_value_t = MigrateMode::True)]
    pub migrate: MigrateMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateMode {
    #[value(name = "true")]
    True,
    #[value(name = "false")]
    False,
    #[value(name = "only")]
    Only,
}

#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Redis for the per-user cache, e.g. redis://127.0.0.1:6379. Unset: no cache.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// How long a cached user lives in Redis.
    #[arg(long = "cache-ttl-seconds", env = "CACHE_TTL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl_seconds: u64,
    /// Bound on each Redis command (and on connecting); a call over half of it counts as
    /// slow for the circuit breaker.
    #[arg(long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    pub redis_timeout_ms: u64,
    /// Bytes of users the in-process layer in front of Redis may hold (0: none, every read
    /// asks Redis). It is invalidated exactly as Redis is; only with REDIS_URL.
    #[arg(long = "cache-local-max-bytes", env = "CACHE_LOCAL_MAX_BYTES", default_value_t = DEFAULT_CACHE_LOCAL_MAX_BYTES)]
    pub local_max_bytes: u64,
}

/// 16 MiB: about 50,000 users of the usual size, next to the pod's 256 MiB default limit.
pub const DEFAULT_CACHE_LOCAL_MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct RateLimitConfig {
    /// Requests per second allowed per client IP on /users. Unset: no rate limit.
    #[arg(long = "rate-limit-rps", env = "RATE_LIMIT_RPS")]
    pub rps: Option<NonZeroU32>,
    /// Burst size per client IP (default: RATE_LIMIT_RPS). Needs RATE_LIMIT_RPS.
    #[arg(long = "rate-limit-burst", env = "RATE_LIMIT_BURST", requires = "rps")]
    pub burst: Option<NonZeroU32>,
    /// Where the client IP comes from: the TCP peer, or a header the proxy in front sets.
    /// Trust a header only when every request passes through that proxy, or any client can
    /// pick its own address.
    #[arg(
        long = "rate-limit-client-address",
        env = "RATE_LIMIT_CLIENT_ADDRESS",
        value_enum,
        default_value_t = Source::Peer
    )]
    pub client_address: Source,
    /// Proxies in front that append to X-Forwarded-For or Forwarded: the client is that
    /// many entries from the right (fewer entries: the peer). Ignored by peer and x-real-ip.
    #[arg(long = "rate-limit-trusted-hops", env = "RATE_LIMIT_TRUSTED_HOPS", default_value_t = NonZeroU8::MIN, value_parser = parse_trusted_hops)]
    pub trusted_hops: NonZeroU8,
    /// Most clients with a bucket (40 to 80 bytes each); at the cap, clients without one
    /// share a single bucket until idle buckets are dropped (every minute).
    #[arg(long = "rate-limit-max-clients", env = "RATE_LIMIT_MAX_CLIENTS", default_value_t = DEFAULT_RATE_LIMIT_MAX_CLIENTS)]
    pub max_clients: NonZeroUsize,
}

/// Default of `RATE_LIMIT_MAX_CLIENTS`: a few MiB of buckets at most.
pub const DEFAULT_RATE_LIMIT_MAX_CLIENTS: NonZeroUsize =
    NonZeroUsize::new(100_000).expect("non-zero");
/// Largest `RATE_LIMIT_TRUSTED_HOPS`: a longer chain of proxies is a misconfiguration.
pub const MAX_TRUSTED_HOPS: u8 = 16;

fn parse_trusted_hops(s: &str) -> Result<NonZeroU8, String> {
    s.trim()
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=MAX_TRUSTED_HOPS).contains(n))
        .and_then(NonZeroU8::new)
        .ok_or_else(|| format!("`{s}` is not a number of proxies from 1 to {MAX_TRUSTED_HOPS}"))
}

impl Default for RateLimitConfig {
    /// No rate limit; the peer is the client.
    fn default() -> Self {
        Self {
            rps: None,
            burst: None,
            client_address: Source::Peer,
            trusted_hops: NonZeroU8::MIN,
            max_clients: DEFAULT_RATE_LIMIT_MAX_CLIENTS,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// The address both ports bind. Unset: all interfaces (`[::]`, which takes IPv4 clients
    /// too; `0.0.0.0` where IPv6 is unavailable). Set `127.0.0.1` to serve this host only.
    #[arg(long = "bind-address", env = "BIND_ADDRESS")]
    pub bind_address: Option<std::net::IpAddr>,
    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// TCP port of `/metrics`, `/healthz` and `/readyz` for the kubelet and Prometheus (all
    /// interfaces; `/metrics` is not on PORT); 0 picks a free one.
    #[arg(long = "admin-port", env = "ADMIN_PORT", default_value_t = 9090)]
    pub admin_port: u16,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// After SIGTERM, how long in-flight requests may take before they are cut off.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20)]
    pub shutdown_timeout_seconds: u64,
    /// After SIGTERM, how long to keep accepting requests (while /readyz is already 503) so
    /// load balancers can stop routing here first. 0 stops accepting at once.
    #[arg(long, env = "SHUTDOWN_DELAY_SECONDS", default_value_t = 0)]
    pub shutdown_delay_seconds: u64,
    #[command(flatten)]
    pub http: HttpLimits,
}

/// What one client connection may take. A connection over a limit is closed, or answered
/// 431 (headers too large) or 503 (too many connections).
#[derive(Debug, Clone, Args)]
pub struct HttpLimits {
    /// How long a client may take to send a request's line and headers, counted from the
    /// connection's start for its first request and from the first byte for later ones.
    #[arg(long = "http-header-read-timeout-ms", env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,
    /// How long a keep-alive connection may sit idle between requests (and a response may
    /// wait for the client to read it) before it is closed. Keep it above the idle timeout
    /// of any proxy in front (ingress-nginx: 60 s), or the proxy may reuse a closing connection.
    #[arg(long = "http-idle-timeout-ms", env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Largest request line plus headers, in bytes; larger ones get 431.
    #[arg(long = "http-max-header-bytes", env = "HTTP_MAX_HEADER_BYTES", default_value_t = 16_384, value_parser = clap::value_parser!(u64).range(1024..=1_048_576))]
    pub max_header_bytes: u64,
    /// Most client connections served at once; beyond it a connection gets one 503
    /// problem+json and is closed.
    #[arg(long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 75_000,
            max_header_bytes: 16_384,
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn max_header_bytes(&self) -> usize {
        usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX)
    }

    pub fn max_connections(&self) -> usize {
        usize::try_from(self.max_connections).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// A string that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

fn parse_ssl_mode(s: &str) -> Result<PgSslMode, String> {
    s.parse::<PgSslMode>().map_err(|_| {
        format!("`{s}` is not one of disable, allow, prefer, require, verify-ca, verify-full")
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    DatabaseUrl(#[source] sqlx::Error),
    #[error("DB_POOL_MIN ({min}) is larger than DB_POOL_MAX ({max})")]
    PoolBounds { min: u32, max: u32 },
    #[error(
        "DB_QUERY_TIMEOUT_MS ({query}) must be larger than DB_STATEMENT_TIMEOUT_MS ({statement})"
    )]
    QueryTimeout { query: u64, statement: u64 },
}

impl DatabaseConfig {
    /// A config for `url` with the defaults for everything else (used by tests and tools).
    pub fn from_url(url: &str) -> Self {
        Self {
            database_url: Some(Secret::new(url)),
            pg_host: "localhost".into(),
            pg_port: 5432,
            pg_database: "postgres".into(),
            pg_user: "postgres".into(),
            pg_password: None,
            pg_ssl_mode: PgSslMode::Prefer,
            pool_max: 10,
            pool_min: 1,
            acquire_timeout_ms: 2000,
            statement_timeout_ms: 5000,
            lock_timeout_ms: 2000,
            idle_in_transaction_timeout_ms: 10_000,
            query_timeout_ms: 6000,
            ping_after_idle_ms: 1000,
            insert_batch_max: 64,
            migrate: MigrateMode::True,
        }
    }

    /// [`Self::connect_options`] plus the statement, lock and idle-in-transaction timeouts,
    /// for the request pool. Migrations and the LISTEN connection go without them (a
    /// migration may rightly run long and wait for the advisory lock).
    pub fn request_options(&self) -> Result<PgConnectOptions, ConfigError> {
        if self.statement_timeout_ms != 0 && self.query_timeout_ms <= self.statement_timeout_ms {
            return Err(ConfigError::QueryTimeout {
                query: self.query_timeout_ms,
                statement: self.statement_timeout_ms,
            });
        }
        Ok(self.connect_options()?.options([
            ("statement_timeout", self.statement_timeout_ms.to_string()),
            ("lock_timeout", self.lock_timeout_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout_ms.to_string(),
            ),
        ]))
    }

    /// Connection options: from `DATABASE_URL` when set, else from the PG* fields.
    ///
    /// With a URL the semantics are libpq's, through sqlx: what the URL states wins, what it
    /// leaves out is read from the PG* environment variables (not these fields, nor their
    /// `--pg-*` flags or defaults: a missing user is the OS user, not `postgres`), and a URL
    /// without a password, with `PGPASSWORD` unset, takes one from `PGPASSFILE` or
    /// `~/.pgpass`. docs/configuration.md spells this out.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        if self.pool_min > self.pool_max {
            return Err(ConfigError::PoolBounds {
                min: self.pool_min,
                max: self.pool_max,
            });
        }
        let options = match &self.database_url {
            Some(url) => {
                PgConnectOptions::from_str(url.expose()).map_err(ConfigError::DatabaseUrl)?
            }
            None => {
                // `new_without_pgpass` reads no pgpass file but still reads PG* from the
                // environment; host, port, database, user, SSL mode and (when given) the
                // password are set explicitly below, so only the TLS file variables and
                // PGOPTIONS still come from there.
                let options = PgConnectOptions::new_without_pgpass()
                    .host(&self.pg_host)
                    .port(self.pg_port)
                    .database(&self.pg_database)
                    .username(&self.pg_user)
                    .ssl_mode(self.pg_ssl_mode);
                match &self.pg_password {
                    Some(password) => options.password(password.expose()),
                    None => options,
                }
            }
        };
        Ok(options.application_name("api-server"))
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.acquire_timeout_ms)
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    pub fn ping_after_idle(&self) -> Duration {
        Duration::from_millis(self.ping_after_idle_ms)
    }
}

impl CacheConfig {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_seconds)
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

impl RateLimitConfig {
    /// `(rps, burst)` when rate limiting is on.
    pub fn quota(&self) -> Option<(NonZeroU32, NonZeroU32)> {
        self.rps.map(|rps| (rps, self.burst.unwrap_or(rps)))
    }

    pub fn client_address(&self) -> ClientAddress {
        ClientAddress {
            source: self.client_address,
            trusted_hops: self.trusted_hops,
        }
    }
}

impl ServerConfig {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }

    pub fn shutdown_delay(&self) -> Duration {
        Duration::from_secs(self.shutdown_delay_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags override the environment, so these tests do not depend on the caller's env.
    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let base = [
            "api-server",
            "--pg-host",
            "db.example",
            "--pg-port",
            "6543",
            "--port",
            "9000",
        ];
        Config::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn kafka_security_protocols_are_spelled_as_librdkafka_spells_them() {
        for (given, expected) in [
            ("plaintext", SecurityProtocol::Plaintext),
            ("ssl", SecurityProtocol::Ssl),
            ("sasl_plaintext", SecurityProtocol::SaslPlaintext),
            ("sasl_ssl", SecurityProtocol::SaslSsl),
            ("sasl-ssl", SecurityProtocol::SaslSsl),
        ] {
            let config = parse(&["--events-kafka-security-protocol", given]).unwrap();
            assert_eq!(config.events.security_protocol, expected, "{given}");
            assert_eq!(
                SecurityProtocol::from_str(expected.as_librdkafka(), false),
                Ok(expected)
            );
        }
    }

    #[test]
    fn pg_fields_build_the_connection_options() {
        let config = parse(&["--pg-database", "users", "--pg-user", "app"]).unwrap();
        let options = config.database.connect_options().unwrap();
        assert_eq!(options.get_host(), "db.example");
        assert_eq!(options.get_port(), 6543);
        assert_eq!(options.get_database(), Some("users"));
        assert_eq!(options.get_username(), "app");
    }

    #[test]
    fn database_url_wins_over_pg_fields() {
        let config = parse(&["--database-url", "postgres://u:p@other:7000/x"]).unwrap();
        let options = config.database.connect_options().unwrap();
        assert_eq!(options.get_host(), "other");
        assert_eq!(options.get_port(), 7000);
        assert_eq!(options.get_database(), Some("x"));
    }

    #[test]
    fn request_connections_carry_the_three_timeouts() {
        let config = parse(&["--db-lock-timeout-ms", "300"]).unwrap();
        let options = config.database.request_options().unwrap();
        let startup = options.get_options().unwrap_or_default();
        assert!(startup.contains("-c statement_timeout=5000"), "{startup}");
        assert!(startup.contains("-c lock_timeout=300"), "{startup}");
        assert!(
            startup.contains("-c idle_in_transaction_session_timeout=10000"),
            "{startup}"
        );
    }

    #[test]
    fn the_query_timeout_must_exceed_the_statement_timeout() {
        let config = parse(&["--db-query-timeout-ms", "5000"]).unwrap();
        assert!(matches!(
            config.database.request_options(),
            Err(ConfigError::QueryTimeout {
                query: 5000,
                statement: 5000
            })
        ));
        let unbounded_statements = parse(&[
            "--db-query-timeout-ms",
            "100",
            "--db-statement-timeout-ms",
            "0",
        ])
        .unwrap();
        assert!(unbounded_statements.database.request_options().is_ok());
    }

    #[test]
    fn migration_connections_carry_no_timeouts() {
        let config = parse(&[]).unwrap();
        let options = config.database.connect_options().unwrap();
        assert!(
            !options
                .get_options()
                .unwrap_or_default()
                .contains("lock_timeout")
        );
    }

    #[test]
    fn an_invalid_database_url_is_rejected() {
        let config = parse(&["--database-url", "postgres://u@host:notaport/db"]).unwrap();
        assert!(config.database.connect_options().is_err());
    }

    #[test]
    fn an_unknown_ssl_mode_is_rejected() {
        assert!(parse(&["--pg-ssl-mode", "sometimes"]).is_err());
    }

    #[test]
    fn pool_min_above_max_is_rejected() {
        let config = parse(&["--db-pool-max", "2", "--db-pool-min", "3"]).unwrap();
        assert!(matches!(
            config.database.connect_options(),
            Err(ConfigError::PoolBounds { min: 3, max: 2 })
        ));
    }

    #[test]
    fn a_zero_pool_max_is_rejected() {
        assert!(parse(&["--db-pool-max", "0"]).is_err());
    }

    #[test]
    fn burst_defaults_to_rps() {
        let config = parse(&["--rate-limit-rps", "100"]).unwrap();
        let (rps, burst) = config.rate_limit.quota().unwrap();
        assert_eq!((rps.get(), burst.get()), (100, 100));
    }

    #[test]
    fn burst_without_rps_is_rejected() {
        assert!(parse(&["--rate-limit-burst", "10"]).is_err());
    }

    #[test]
    fn a_zero_rps_is_rejected() {
        assert!(parse(&["--rate-limit-rps", "0"]).is_err());
    }

    #[test]
    fn the_client_address_defaults_to_the_peer_with_one_hop() {
        let config = parse(&["--rate-limit-rps", "10"]).unwrap().rate_limit;
        assert_eq!(config.client_address(), ClientAddress::default());
        assert_eq!(config.max_clients, DEFAULT_RATE_LIMIT_MAX_CLIENTS);
        let default = RateLimitConfig::default();
        assert_eq!(default.client_address(), config.client_address());
        assert_eq!(default.max_clients, config.max_clients);
    }

    #[test]
    fn every_client_address_source_is_accepted_by_its_name() {
        for (name, source) in [
            ("peer", Source::Peer),
            ("x-forwarded-for", Source::XForwardedFor),
            ("x-real-ip", Source::XRealIp),
            ("forwarded", Source::Forwarded),
        ] {
            let config = parse(&["--rate-limit-client-address", name]).unwrap();
            assert_eq!(config.rate_limit.client_address, source, "{name}");
        }
    }

    #[test]
    fn an_unknown_client_address_source_names_the_valid_ones() {
        let error = parse(&["--rate-limit-client-address", "xff"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("x-forwarded-for"), "{error}");
    }

    #[test]
    fn trusted_hops_are_1_to_16() {
        let hops = |n: &str| parse(&["--rate-limit-trusted-hops", n]);
        assert_eq!(hops("2").unwrap().rate_limit.trusted_hops.get(), 2);
        assert_eq!(hops("16").unwrap().rate_limit.trusted_hops.get(), 16);
        for bad in ["0", "17", "-1", "two", ""] {
            assert!(hops(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_zero_max_clients_is_rejected() {
        assert!(parse(&["--rate-limit-max-clients", "0"]).is_err());
        let config = parse(&["--rate-limit-max-clients", "5"]).unwrap();
        assert_eq!(config.rate_limit.max_clients.get(), 5);
    }

    #[test]
    fn log_format_accepts_json_and_text_only() {
        assert_eq!(
            parse(&["--log-format", "text"]).unwrap().server.log_format,
            LogFormat::Text
        );
        assert!(parse(&["--log-format", "xml"]).is_err());
    }

    #[test]
    fn http_limit_defaults_match_the_documented_ones() {
        let parsed = parse(&[]).unwrap().server.http;
        let default = HttpLimits::default();
        assert_eq!(
            parsed.header_read_timeout_ms,
            default.header_read_timeout_ms
        );
        assert_eq!(parsed.idle_timeout_ms, default.idle_timeout_ms);
        assert_eq!(parsed.max_header_bytes, default.max_header_bytes);
        assert_eq!(parsed.max_connections, default.max_connections);
    }

    #[test]
    fn zero_connections_or_tiny_header_limits_are_rejected() {
        assert!(parse(&["--http-max-connections", "0"]).is_err());
        assert!(parse(&["--http-max-header-bytes", "100"]).is_err());
        assert!(parse(&["--http-idle-timeout-ms", "0"]).is_err());
    }

    #[test]
    fn migrate_is_true_false_or_only() {
        assert_eq!(parse(&[]).unwrap().database.migrate, MigrateMode::True);
        assert_eq!(
            parse(&["--migrate", "false"]).unwrap().database.migrate,
            MigrateMode::False
        );
        assert_eq!(
            parse(&["--migrate", "only"]).unwrap().database.migrate,
            MigrateMode::Only
        );
        assert!(parse(&["--migrate", "maybe"]).is_err());
    }

    #[test]
    fn auth_is_off_by_default() {
        assert!(parse(&[]).unwrap().auth.jwks_path.is_none());
    }

    #[test]
    fn a_jwks_path_needs_an_issuer_and_an_audience() {
        let jwks = ["--auth-jwks-path", "/keys/jwks.json"];
        assert!(parse(&jwks).is_err());
        assert!(parse(&[&jwks[..], &["--auth-jwt-issuer", "https://idp"]].concat()).is_err());
        let config = parse(
            &[
                &jwks[..],
                &[
                    "--auth-jwt-issuer",
                    "https://idp",
                    "--auth-jwt-audience",
                    "users",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(config.auth.jwt_audience.as_deref(), Some("users"));
    }

    #[test]
    fn an_issuer_without_a_jwks_path_is_rejected() {
        assert!(parse(&["--auth-jwt-issuer", "https://idp"]).is_err());
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let config = parse(&["--pg-password", "hunter2"]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn help_lists_every_environment_variable() {
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for var in [
            "DATABASE_URL",
            "PGHOST",
            "PGPORT",
            "PGDATABASE",
            "PGUSER",
            "PGPASSWORD",
            "PGSSLMODE",
            "DB_POOL_MAX",
            "DB_POOL_MIN",
            "DB_ACQUIRE_TIMEOUT_MS",
            "DB_STATEMENT_TIMEOUT_MS",
            "DB_LOCK_TIMEOUT_MS",
            "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "DB_QUERY_TIMEOUT_MS",
            "DB_PING_AFTER_IDLE_MS",
            "DB_INSERT_BATCH_MAX",
            "MIGRATE",
            "REDIS_URL",
            "CACHE_TTL_SECONDS",
            "REDIS_TIMEOUT_MS",
            "RATE_LIMIT_RPS",
            "RATE_LIMIT_BURST",
            "RATE_LIMIT_CLIENT_ADDRESS",
            "RATE_LIMIT_TRUSTED_HOPS",
            "RATE_LIMIT_MAX_CLIENTS",
            "PORT",
            "ADMIN_PORT",
            "LOG_FORMAT",
            "SHUTDOWN_TIMEOUT_SECONDS",
            "SHUTDOWN_DELAY_SECONDS",
            "HTTP_HEADER_READ_TIMEOUT_MS",
            "HTTP_IDLE_TIMEOUT_MS",
            "HTTP_MAX_HEADER_BYTES",
            "HTTP_MAX_CONNECTIONS",
            "AUTH_JWKS_PATH",
            "AUTH_JWT_ISSUER",
            "AUTH_JWT_AUDIENCE",
            "RUST_LOG",
        ] {
            assert!(help.contains(var), "--help does not mention {var}");
        }
    }
}
