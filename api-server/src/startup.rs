//! Building and running the server: `Application::build` / `port()` / `run_until_stopped()`.

use std::future::IntoFuture;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use sqlx::PgPool;
use sqlx::migrate::MigrateError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthSetupError, Authenticator};
use crate::cache::{Cache, invalidation};
use crate::config::{Config, ConfigError, DatabaseConfig, HttpLimits, MigrateMode};
use crate::db::Db;
use crate::db::inserts::{Batching, Inserts};
use crate::events::{self, Events, relay::Relay};
use crate::metrics::Metrics;
use crate::middleware::RateLimiter;
use crate::probe::{self, Health};
use crate::routes;
use crate::schema;
use crate::server;
use crate::state::{AppState, Shared};

pub use crate::schema::MIGRATOR;

/// How often idle per-IP rate-limit buckets are dropped.
const RATE_LIMIT_GC_EVERY: Duration = Duration::from_secs(60);
/// Bound on closing the pool after the server stopped.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot migrate the database")]
    Migrate(#[source] MigrateError),
    #[error("REDIS_URL is invalid")]
    Redis(#[source] redis::RedisError),
    #[error("cannot listen on port {port}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot render the OpenAPI document")]
    OpenApi(#[source] serde_json::Error),
    #[error("cannot set up authentication")]
    Auth(#[from] AuthSetupError),
}

pub struct Application {
    port: u16,
    listener: TcpListener,
    admin_port: u16,
    admin_listener: TcpListener,
    state: AppState,
    listener_pool: PgPool,
    shutdown_delay: Duration,
    shutdown_timeout: Duration,
    http_limits: HttpLimits,
    migrations: PgPool,
    migrate: MigrateMode,
    /// The outbox relay, when events are on.
    relay: Option<Relay>,
}

/// Linux's `EAFNOSUPPORT`: a kernel built or booted without IPv6.
const EAFNOSUPPORT: i32 = 97;

/// Binds `address:port` when an address is given. Else `[::]:port`, which on Linux
/// (`net.ipv6.bindv6only = 0`, the default) accepts IPv4 clients too, as IPv4-mapped
/// addresses; where IPv6 is unavailable, `0.0.0.0:port`.
async fn bind(address: Option<IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    if let Some(address) = address {
        tracing::info!(%address, "bound to one address");
        return TcpListener::bind((address, port)).await;
    }
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(listener) => {
            tracing::info!(address = "[::]", "bound to all interfaces, IPv6 and IPv4");
            Ok(listener)
        }
        Err(error) if ipv6_unavailable(&error) => {
            tracing::info!(
                address = "0.0.0.0",
                %error,
                "IPv6 is unavailable; bound to all IPv4 interfaces only"
            );
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await
        }
        Err(error) => Err(error),
    }
}

fn ipv6_unavailable(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::AddrNotAvailable
        || error.raw_os_error() == Some(EAFNOSUPPORT)
}

impl Application {
    /// Prepares the pools (connecting lazily) and binds. Nothing is served, and the schema is
    /// not touched, until `run_until_stopped`: binding first lets `/healthz` answer while a
    /// long migration runs, instead of a startup probe killing the pod mid-migration.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let options = config.database.connect_options()?;
        // Bounded calls, pings and the read-retry policy: db/bounded.rs.
        let db = Db::connect_lazy(&config.database)?;
        let migrations = schema::pool(options.clone(), config.database.acquire_timeout());

        let metrics = Arc::new(Metrics::new());
        let cache = match &config.cache.redis_url {
            Some(url) => Cache::connect(
                url.expose(),
                config.cache.ttl(),
                config.cache.redis_timeout(),
                config.cache.local_max_bytes,
                metrics.clone(),
            )
            .map_err(StartupError::Redis)?,
            None => Cache::disabled(metrics.clone()),
        };
        let rate_limiter: Option<Arc<RateLimiter>> = config.rate_limit.quota().map(|quota| {
            Arc::new(RateLimiter::new(
                quota,
                config.rate_limit.client_address(),
                config.rate_limit.max_clients,
                metrics.rate_limit_clients.clone(),
            ))
        });
        let auth = Authenticator::from_config(&config.auth)
            .await?
            .map(Arc::new);
        let openapi =
            Bytes::from(routes::openapi_json(auth.is_some()).map_err(StartupError::OpenApi)?);

        let port = config.server.port;
        let address = config.server.bind_address;
        let listener = bind(address, port)
            .await
            .map_err(|source| StartupError::Bind { port, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { port, source })?
            .port();
        let admin_port = config.server.admin_port;
        let admin_listener =
            bind(address, admin_port)
                .await
                .map_err(|source| StartupError::Bind {
                    port: admin_port,
                    source,
                })?;
        let admin_port = admin_listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                port: admin_port,
                source,
            })?
            .port();

        let events = config.events.brokers().map(|_| Events::new());
        let inserts = Inserts::start(
            db.clone(),
            events.is_some(),
            Batching::from(&config.database),
            &metrics,
        );
        let state = AppState::new(Shared {
            db,
            inserts,
            cache,
            metrics,
            shutdown: CancellationToken::new(),
            health: Arc::new(Health::default()),
            rate_limiter,
            openapi,
            auth,
            events,
        });
        let relay = match (config.events.brokers(), &state.events) {
            (Some(brokers), Some(events)) => {
                let mut producer = rdkafka::ClientConfig::new();
                for (name, value) in events::producer_settings(&config.events, brokers) {
                    producer.set(name, value);
                }
                Some(Relay {
                    connect: options.clone(),
                    producer,
                    topic: config.events.topic.clone(),
                    source: config.events.source.clone(),
                    metrics: state.metrics.clone(),
                    events: events.clone(),
                })
            }
            _ => None,
        };
        Ok(Self {
            port,
            listener,
            admin_port,
            admin_listener,
            state,
            listener_pool: invalidation::listener_pool(options, config.database.acquire_timeout()),
            shutdown_delay: config.server.shutdown_delay(),
            shutdown_timeout: config.server.shutdown_timeout(),
            http_limits: config.server.http,
            migrations,
            migrate: config.database.migrate,
            relay,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of `/metrics`, `/healthz` and `/readyz` for the kubelet and Prometheus.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Cancel it to begin a graceful shutdown (main does so on SIGTERM/SIGINT).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until shutdown: `/readyz` turns 503 at once, requests keep being served for
    /// the shutdown delay, then in-flight requests get up to the shutdown timeout.
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        let Self {
            port,
            listener,
            admin_port,
            admin_listener,
            state,
            listener_pool,
            shutdown_delay,
            shutdown_timeout,
            http_limits,
            migrations,
            migrate,
            relay,
        } = self;
        let shutdown = state.shutdown.clone();
        let db = state.db.clone();

        let invalidations = state.cache.is_enabled().then(|| {
            tokio::spawn(invalidation::run(
                listener_pool.clone(),
                state.cache.clone(),
                state.metrics.clone(),
                shutdown.clone(),
            ))
        });
        tokio::spawn(probe::watch_postgres(
            db.clone(),
            state.health.clone(),
            shutdown.clone(),
        ));
        // Resolves only if the schema cannot be put in place; then the process must exit.
        let schema = {
            let (health, shutdown) = (state.health.clone(), shutdown.clone());
            async move {
                match schema::prepare(migrate, migrations, health, shutdown).await {
                    Ok(()) => std::future::pending().await,
                    Err(error) => error,
                }
            }
        };
        if let Some(auth) = state.auth.clone() {
            tokio::spawn(auth.watch(shutdown.clone()));
        }
        tokio::spawn(crate::db::idempotency::expire(
            db.pool().clone(),
            shutdown.clone(),
        ));
        // Not part of readiness: a broker outage only grows the outbox.
        if let Some(relay) = relay {
            tokio::spawn(relay.run(shutdown.clone()));
        }
        if let Some(limiter) = state.rate_limiter.clone() {
            tokio::spawn(forget_idle_clients(limiter, shutdown.clone()));
        }

        let app = routes::router(state.clone());
        let stop_accepting = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!(
                    delay_s = shutdown_delay.as_secs(),
                    "shutdown started; /readyz is 503"
                );
                tokio::time::sleep(shutdown_delay).await;
                tracing::info!("no longer accepting connections; draining");
            }
        };
        let server = server::serve(
            listener,
            app,
            &http_limits,
            state.metrics.clone(),
            stop_accepting,
        );
        let deadline = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(shutdown_delay + shutdown_timeout).await;
            }
        };
        // The admin port answers until the process ends, so probes see the drain (/readyz 503)
        // and Prometheus the last counts.
        let admin = tokio::spawn(
            axum::serve(admin_listener, routes::admin_router(state.clone())).into_future(),
        );
        tracing::info!(port, admin_port, "listening");

        // Without a cache there is no listener: a task that never ends.
        let invalidations = async move {
            match invalidations {
                Some(task) => task.await,
                None => std::future::pending().await,
            }
        };

        tokio::pin!(server, deadline);
        let mut failed = None;
        tokio::select! {
            () = &mut server => {},
            error = schema => {
                tracing::error!("the schema cannot be put in place; stopping");
                failed = Some(StartupError::Migrate(error));
                shutdown.cancel();
                tokio::select! {
                    () = &mut server => {},
                    () = &mut deadline => {},
                }
            }
            ended = invalidations => {
                // It returns by itself on shutdown; otherwise it is a bug. Keep serving, from
                // Postgres only, rather than serve a cache nobody invalidates.
                state.cache.set_trusted(false);
                if !shutdown.is_cancelled() {
                    tracing::error!(?ended, "the invalidation listener stopped; cache disabled");
                }
                tokio::select! {
                    () = &mut server => {},
                    () = &mut deadline => {},
                }
            }
            () = &mut deadline => {
                tracing::warn!("in-flight requests outlived SHUTDOWN_TIMEOUT_SECONDS; exiting");
            }
        }
        shutdown.cancel();
        admin.abort();
        let _ = tokio::time::timeout(POOL_CLOSE_TIMEOUT, async {
            tokio::join!(db.close(), listener_pool.close())
        })
        .await;
        tracing::info!("stopped");
        failed.map_or(Ok(()), Err)
    }
}

/// `MIGRATE=only`: applies the migrations and returns, serving nothing (a Job or an init
/// container, with a role that may change the schema).
pub async fn migrate_only(database: &DatabaseConfig) -> Result<(), StartupError> {
    let db = schema::pool(database.connect_options()?, database.acquire_timeout());
    let migrated = schema::migrate(&db).await;
    db.close().await;
    migrated.map_err(StartupError::Migrate)
}

async fn forget_idle_clients(limiter: Arc<RateLimiter>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(RATE_LIMIT_GC_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_ipv6_means_falling_back_to_ipv4() {
        let no_family = std::io::Error::from_raw_os_error(EAFNOSUPPORT);
        assert!(ipv6_unavailable(&no_family));
        let no_address = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        assert!(ipv6_unavailable(&no_address));
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        assert!(!ipv6_unavailable(&in_use));
    }

    #[tokio::test]
    async fn the_listener_accepts_ipv4_clients() {
        let listener = bind(None, 0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        accepted.await.unwrap().unwrap();
    }
}
