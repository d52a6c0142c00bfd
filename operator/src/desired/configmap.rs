//! ConfigMap `<name>-config`: every non-secret setting of the api-server, as env variables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::child_meta;
use crate::crd::ScalableApi;
use crate::crd_funcs::DatabaseAuth;

/// The api-server's HTTP port (container port `http`).
pub const HTTP_PORT: i32 = 8080;
/// Redis sidecar address, reachable only inside the pod.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long the api-server drains in-flight requests after SIGTERM.
pub const SHUTDOWN_TIMEOUT_SECONDS: i64 = 20;

pub fn config_map(sapi: &ScalableApi) -> ConfigMap {
    let spec = &sapi.spec;
    let db = &spec.database;
    let mut data = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        data.insert(k.to_owned(), v);
    };
    // With uriSecretRef the URI carries host, port, name and user; PGSSLMODE stays as the
    // default for a URI without `sslmode`.
    if let Some(DatabaseAuth::Password(_)) = db.auth() {
        set("PGHOST", db.host.clone().unwrap_or_default());
        set("PGPORT", db.port.to_string());
        set("PGDATABASE", db.name.clone().unwrap_or_default());
        set("PGUSER", db.user.clone().unwrap_or_default());
    }
    set("PGSSLMODE", db.ssl_mode.as_str().to_owned());
    set("DB_POOL_MAX", db.pool.max_connections.to_string());
    set("DB_POOL_MIN", db.pool.min_connections.to_string());
    set(
        "DB_ACQUIRE_TIMEOUT_MS",
        db.pool.acquire_timeout_ms.to_string(),
    );
    if spec.cache.enabled {
        set("REDIS_URL", REDIS_URL.to_owned());
    }
    set("CACHE_TTL_SECONDS", spec.cache.ttl_seconds.to_string());
    if let Some(rl) = &spec.rate_limit {
        set("RATE_LIMIT_RPS", rl.requests_per_second.to_string());
        let burst = rl.burst.unwrap_or(rl.requests_per_second);
        set("RATE_LIMIT_BURST", burst.to_string());
    }
    set("PORT", HTTP_PORT.to_string());
    set("LOG_FORMAT", "json".to_owned());
    set(
        "SHUTDOWN_TIMEOUT_SECONDS",
        SHUTDOWN_TIMEOUT_SECONDS.to_string(),
    );
    ConfigMap {
        metadata: child_meta(sapi, sapi.config_map_name()),
        data: Some(data),
        ..ConfigMap::default()
    }
}
