//! `spawn_app()`: the real application on port 0, against a fresh database on a real
//! PostgreSQL and (by default) its own real Redis.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use api_server::config::{
    AuthConfig, CacheConfig, Config, DatabaseConfig, EventsConfig, HttpLimits, LogFormat,
    MigrateMode, RateLimitConfig, Secret, ServerConfig,
};
use api_server::startup::Application;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::proxy::Proxy;
use crate::services::{PgServer, RedisServer};

/// Logs go nowhere unless `TEST_LOG` is set.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    let subscriber = if std::env::var_os("TEST_LOG").is_some() {
        api_server::telemetry::subscriber(LogFormat::Text, std::io::stdout)
    } else {
        api_server::telemetry::subscriber(LogFormat::Text, std::io::sink)
    };
    let _ = api_server::telemetry::init(subscriber);
});

pub struct TestApp {
    pub address: String,
    /// The admin port's base URL (`/metrics`, `/healthz`, `/readyz`).
    pub admin_address: String,
    pub client: reqwest::Client,
    pub pg: Arc<PgServer>,
    pub database: String,
    pub redis: Option<Arc<RedisServer>>,
    /// Between the app and Redis, when `Options::redis_proxy`.
    pub redis_proxy: Option<Proxy>,
    /// Between the app's pools and Postgres, when `Options::pg_proxy`.
    #[allow(dead_code)]
    pub pg_proxy: Option<Proxy>,
    pub shutdown: CancellationToken,
    /// Only the app that created the database drops it.
    owns_database: bool,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
pub struct Options {
    /// Serve without Redis.
    pub no_redis: bool,
    /// Use this Redis instead of starting one.
    pub redis: Option<Arc<RedisServer>>,
    /// Use this server and database instead of a fresh database on the shared server.
    pub database: Option<(Arc<PgServer>, String)>,
    /// A PostgreSQL server of our own (for tests that stop it).
    pub own_postgres: bool,
    pub rate_limit: Option<(u32, u32)>,
    /// The rate limit's client address source, hops and cap (`rps`/`burst` come from
    /// `rate_limit`).
    pub rate_limit_keys: RateLimitConfig,
    pub acquire_timeout_ms: Option<u64>,
    /// Postgres `lock_timeout` of the request pool.
    pub lock_timeout_ms: Option<u64>,
    pub pool_max: Option<u32>,
    /// `DB_QUERY_TIMEOUT_MS`; must exceed the statement timeout.
    pub query_timeout_ms: Option<u64>,
    pub statement_timeout_ms: Option<u64>,
    /// `DB_PING_AFTER_IDLE_MS`.
    pub ping_after_idle_ms: Option<u64>,
    pub migrate: Option<MigrateMode>,
    pub shutdown_delay_seconds: u64,
    pub http: Option<HttpLimits>,
    /// Reach Redis through a fault-injecting proxy (`TestApp::redis_proxy`).
    pub redis_proxy: bool,
    /// Reach Postgres through a fault-injecting proxy (`TestApp::pg_proxy`).
    pub pg_proxy: bool,
    pub redis_timeout_ms: Option<u64>,
    /// `CACHE_LOCAL_MAX_BYTES` (0: no in-process layer, every read asks Redis).
    pub cache_local_max_bytes: Option<u64>,
    /// Bind `[::]` (the production default) instead of 127.0.0.1.
    pub bind_all_interfaces: bool,
    /// Bearer-token authentication (off by default, as in production).
    pub auth: AuthConfig,
    /// User events (off by default, as in production).
    pub events: Option<EventsConfig>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let app = build_app(options).await;
    app.wait_until_ready().await;
    app
}

pub fn config(url: &str, redis_url: Option<String>, options: &Options) -> Config {
    let mut database = DatabaseConfig::from_url(url);
    database.pool_max = options.pool_max.unwrap_or(10);
    database.migrate = options.migrate.unwrap_or(MigrateMode::True);
    database.pool_min = 0;
    database.acquire_timeout_ms = options.acquire_timeout_ms.unwrap_or(2000);
    if let Some(ms) = options.lock_timeout_ms {
        database.lock_timeout_ms = ms;
    }
    if let Some(ms) = options.query_timeout_ms {
        database.query_timeout_ms = ms;
    }
    if let Some(ms) = options.statement_timeout_ms {
        database.statement_timeout_ms = ms;
    }
    if let Some(ms) = options.ping_after_idle_ms {
        database.ping_after_idle_ms = ms;
    }
    Config {
        database,
        cache: CacheConfig {
            redis_url: redis_url.map(Secret::new),
            ttl_seconds: 300,
            redis_timeout_ms: options.redis_timeout_ms.unwrap_or(20),
            local_max_bytes: options
                .cache_local_max_bytes
                .unwrap_or(api_server::config::DEFAULT_CACHE_LOCAL_MAX_BYTES),
        },
        rate_limit: RateLimitConfig {
            rps: options.rate_limit.and_then(|(rps, _)| rps.try_into().ok()),
            burst: options
                .rate_limit
                .and_then(|(_, burst)| burst.try_into().ok()),
            ..options.rate_limit_keys.clone()
        },
        server: ServerConfig {
            // This host only, as every server a test starts; all interfaces only when asked.
            bind_address: (!options.bind_all_interfaces)
                .then_some(std::net::Ipv4Addr::LOCALHOST.into()),
            port: 0,
            admin_port: 0,
            log_format: LogFormat::Text,
            shutdown_timeout_seconds: 5,
            shutdown_delay_seconds: options.shutdown_delay_seconds,
            http: options.http.clone().unwrap_or_default(),
        },
        auth: options.auth.clone(),
        events: options.events.clone().unwrap_or_default(),
    }
}

/// Builds and starts the app without waiting for readiness.
pub async fn build_app(options: Options) -> TestApp {
    LazyLock::force(&TRACING);
    let (pg, database, owns_database) = match options.database.clone() {
        Some((pg, database)) => (pg, database, false),
        None => {
            let pg = if options.own_postgres {
                Arc::new(tokio::task::spawn_blocking(PgServer::start).await.unwrap())
            } else {
                tokio::task::spawn_blocking(PgServer::shared).await.unwrap()
            };
            let database = pg.create_database();
            (pg, database, true)
        }
    };
    let redis = match (&options.redis, options.no_redis) {
        (_, true) => None,
        (Some(redis), false) => Some(redis.clone()),
        (None, false) => Some(Arc::new(
            tokio::task::spawn_blocking(RedisServer::start)
                .await
                .unwrap(),
        )),
    };
    let redis_proxy = match (&redis, options.redis_proxy) {
        (Some(redis), true) => Some(Proxy::start(redis.port()).await),
        _ => None,
    };
    let redis_url = match (&redis_proxy, &redis) {
        (Some(proxy), _) => Some(format!("redis://127.0.0.1:{}", proxy.port())),
        (None, redis) => redis.as_ref().map(|r| r.url()),
    };
    let pg_proxy = match options.pg_proxy {
        true => Some(Proxy::start(pg.port()).await),
        false => None,
    };
    let pg_url = match &pg_proxy {
        Some(proxy) => pg.url_via(proxy.port(), &database),
        None => pg.url(&database),
    };
    let config = config(&pg_url, redis_url, &options);
    let app = Application::build(config).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    TestApp {
        address,
        admin_address,
        client,
        pg,
        database,
        redis,
        redis_proxy,
        pg_proxy,
        shutdown,
        owns_database,
        server,
    }
}

/// Polls `check` until it returns true, panicking after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl TestApp {
    /// Ready, and with Redis: the invalidation feed subscribed so the cache is in use.
    pub async fn wait_until_ready(&self) {
        let want_cache = self.redis.is_some();
        eventually(Duration::from_secs(15), "the app to be ready", || async {
            match self.client.get(self.url("/readyz")).send().await {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    !want_cache || body["cache_trusted"] == true
                }
                _ => false,
            }
        })
        .await;
    }

    /// The port the app listens on (127.0.0.1), for raw-socket clients.
    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `GET path`, panicking only if no response arrives.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The JSON body of `GET path`, whatever its status.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    /// `GET path` on the admin port.
    pub async fn get_admin(&self, path: &str) -> reqwest::Response {
        let url = format!("{}{path}", self.admin_address);
        self.client.get(url).send().await.unwrap()
    }

    /// The admin port's `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.get_admin("/metrics").await.text().await.unwrap()
    }

    pub async fn post_user(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/users"))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user and returns its JSON, asserting 201.
    pub async fn create_user(&self, name: &str, email: &str) -> Value {
        let response = self
            .post_user(&json!({ "name": name, "email": email }))
            .await;
        assert_eq!(response.status(), 201, "creating {email}");
        response.json().await.unwrap()
    }

    /// Creates a user, asserting 201, and returns its id.
    pub async fn create_user_id(&self, name: &str, email: &str) -> String {
        let user = self.create_user(name, email).await;
        user["id"].as_str().unwrap().to_owned()
    }

    pub async fn get_user(&self, id: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/users/{id}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn put_user(&self, id: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/users/{id}")))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete_user(&self, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/users/{id}")))
            .send()
            .await
            .unwrap()
    }

    pub async fn list(&self, query: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/users{query}")))
            .send()
            .await
            .unwrap()
    }

    /// Walks `GET /users` from the start, `limit` users a page, following `next`
    /// until a page has none; returns every page in order.
    pub async fn list_pages(&self, limit: usize) -> Vec<Value> {
        let mut pages = Vec::new();
        let mut query = format!("?limit={limit}");
        loop {
            let page: Value = self.list(&query).await.json().await.unwrap();
            let next = page["next"].as_str().map(str::to_owned);
            pages.push(page);
            match next {
                Some(next) => query = format!("?limit={limit}&after={next}"),
                None => return pages,
            }
        }
    }

    /// The value of one unlabelled metric sample, e.g. `cache_hits_total`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Reads answered from either cache layer (in process or Redis).
    pub async fn cached_reads(&self) -> f64 {
        self.metric("cache_hits_total").await + self.metric("cache_local_hits_total").await
    }

    /// A second app on the same database, with its own Redis.
    pub async fn sibling(&self) -> TestApp {
        spawn_app_with(Options {
            database: Some((self.pg.clone(), self.database.clone())),
            ..Options::default()
        })
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.server.abort();
        if self.owns_database {
            self.pg.drop_database(&self.database);
        }
    }
}

/// The ids of the users on `pages`, in order.
pub fn page_ids(pages: &[Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|page| page["items"].as_array().unwrap())
        .map(|user| user["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts a problem+json response with `status` and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["title"].is_string() && body["type"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    body
}
