//! ConfigMap `<name>-config`: every non-secret setting of the api-server, as env variables.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use kube::ResourceExt;

use super::{child_meta, kafka};
use crate::crd::{ClientAddressSource, ScalableApi};
use crate::crd_funcs::DatabaseAuth;

/// The api-server's HTTP port (container port `http`).
pub const HTTP_PORT: i32 = 8080;
/// Where the JWKS Secret key is mounted in the `api` container (`spec.auth.jwt`).
pub const JWKS_DIR: &str = "/etc/scalable-api/jwks";
pub const JWKS_FILE: &str = "jwks.json";

/// The api-server's admin port: `/metrics`, `/healthz`, `/readyz`; probed, never in the Service.
pub const ADMIN_PORT: i32 = 9090;
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
        // Only when given, so adding the fields to the CRD rolls no existing pods.
        if let Some(client) = &rl.client_address {
            set(
                "RATE_LIMIT_CLIENT_ADDRESS",
                client_address_value(client.source).to_owned(),
            );
            if let Some(hops) = client.trusted_hops {
                set("RATE_LIMIT_TRUSTED_HOPS", hops.to_string());
            }
        }
        if let Some(max) = rl.max_clients {
            set("RATE_LIMIT_MAX_CLIENTS", max.to_string());
        }
    }
    set("PORT", HTTP_PORT.to_string());
    set("ADMIN_PORT", ADMIN_PORT.to_string());
    set("LOG_FORMAT", "json".to_owned());
    if let Some(auth) = &spec.auth {
        set("AUTH_JWKS_PATH", format!("{JWKS_DIR}/{JWKS_FILE}"));
        set("AUTH_JWT_ISSUER", auth.jwt.issuer.clone());
        set("AUTH_JWT_AUDIENCE", auth.jwt.audience.clone());
    }
    if let Some(events) = &spec.events {
        for (k, v) in kafka::settings(&events.kafka, &sapi.name_any()) {
            set(k, v);
        }
    }
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

/// The api-server's `RATE_LIMIT_CLIENT_ADDRESS` value for a source.
fn client_address_value(source: ClientAddressSource) -> &'static str {
    match source {
        ClientAddressSource::Peer => "peer",
        ClientAddressSource::XForwardedFor => "x-forwarded-for",
        ClientAddressSource::XRealIp => "x-real-ip",
        ClientAddressSource::Forwarded => "forwarded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ClientAddress;

    fn data(sapi: &ScalableApi) -> BTreeMap<String, String> {
        config_map(sapi).data.unwrap_or_default()
    }

    fn keys(sapi: &ScalableApi) -> Vec<String> {
        data(sapi).into_keys().collect()
    }

    #[test]
    fn is_named_after_the_scalable_api() {
        let cm = config_map(&ScalableApi::test());
        assert_eq!(cm.metadata.name.as_deref(), Some("users-config"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn password_form_holds_the_libpq_settings() {
        let d = data(&ScalableApi::test());
        let get = |k: &str| d.get(k).map(String::as_str);
        assert_eq!(get("PGHOST"), Some("postgres.shop.svc"));
        assert_eq!(get("PGPORT"), Some("5432"));
        assert_eq!(get("PGDATABASE"), Some("users"));
        assert_eq!(get("PGUSER"), Some("app"));
        assert_eq!(get("PGSSLMODE"), Some("prefer"));
        assert_eq!(get("DB_POOL_MAX"), Some("10"));
        assert_eq!(get("DB_POOL_MIN"), Some("1"));
        assert_eq!(get("DB_ACQUIRE_TIMEOUT_MS"), Some("2000"));
        assert_eq!(get("PORT"), Some("8080"));
        assert_eq!(get("LOG_FORMAT"), Some("json"));
        assert_eq!(get("SHUTDOWN_TIMEOUT_SECONDS"), Some("20"));
        assert_eq!(get("CACHE_TTL_SECONDS"), Some("300"));
    }

    #[test]
    fn holds_exactly_the_api_server_interface() {
        let all = ScalableApi::test().with_rate_limit(100, Some(300));
        assert_eq!(
            keys(&all),
            [
                "ADMIN_PORT",
                "CACHE_TTL_SECONDS",
                "DB_ACQUIRE_TIMEOUT_MS",
                "DB_POOL_MAX",
                "DB_POOL_MIN",
                "LOG_FORMAT",
                "PGDATABASE",
                "PGHOST",
                "PGPORT",
                "PGSSLMODE",
                "PGUSER",
                "PORT",
                "RATE_LIMIT_BURST",
                "RATE_LIMIT_RPS",
                "REDIS_URL",
                "SHUTDOWN_TIMEOUT_SECONDS",
            ]
        );
    }

    #[test]
    fn never_holds_a_secret() {
        let d = data(&ScalableApi::test().with_uri_secret("pg-app", "uri"));
        assert!(!d.contains_key("PGPASSWORD") && !d.contains_key("DATABASE_URL"));
    }

    #[test]
    fn uri_form_leaves_connection_details_to_the_uri() {
        let k = keys(&ScalableApi::test().with_uri_secret("pg-app", "uri"));
        for absent in ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER"] {
            assert!(!k.iter().any(|x| x == absent), "{absent}");
        }
        assert!(k.iter().any(|x| x == "DB_POOL_MAX"));
    }

    #[test]
    fn redis_url_only_with_the_cache() {
        let on = data(&ScalableApi::test());
        assert_eq!(on.get("REDIS_URL").map(String::as_str), Some(REDIS_URL));
        assert!(!data(&ScalableApi::test().without_cache()).contains_key("REDIS_URL"));
    }

    #[test]
    fn rate_limit_only_when_set_and_burst_defaults_to_rps() {
        assert!(!data(&ScalableApi::test()).contains_key("RATE_LIMIT_RPS"));
        let d = data(&ScalableApi::test().with_rate_limit(50, None));
        assert_eq!(d.get("RATE_LIMIT_RPS").map(String::as_str), Some("50"));
        assert_eq!(d.get("RATE_LIMIT_BURST").map(String::as_str), Some("50"));
        let d = data(&ScalableApi::test().with_rate_limit(50, Some(80)));
        assert_eq!(d.get("RATE_LIMIT_BURST").map(String::as_str), Some("80"));
    }

    fn with_client_address(
        source: ClientAddressSource,
        trusted_hops: Option<i32>,
        max_clients: Option<i32>,
    ) -> ScalableApi {
        let mut sapi = ScalableApi::test().with_rate_limit(50, None);
        if let Some(rl) = sapi.spec.rate_limit.as_mut() {
            rl.client_address = Some(ClientAddress {
                source,
                trusted_hops,
            });
            rl.max_clients = max_clients;
        }
        sapi
    }

    #[test]
    fn the_client_address_and_cap_are_left_to_the_api_server_unless_given() {
        let d = data(&ScalableApi::test().with_rate_limit(50, None));
        for absent in [
            "RATE_LIMIT_CLIENT_ADDRESS",
            "RATE_LIMIT_TRUSTED_HOPS",
            "RATE_LIMIT_MAX_CLIENTS",
        ] {
            assert!(!d.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn each_client_address_source_becomes_the_api_servers_value() {
        for (source, value) in [
            (ClientAddressSource::Peer, "peer"),
            (ClientAddressSource::XForwardedFor, "x-forwarded-for"),
            (ClientAddressSource::XRealIp, "x-real-ip"),
            (ClientAddressSource::Forwarded, "forwarded"),
        ] {
            let d = data(&with_client_address(source, None, None));
            let get = |k: &str| d.get(k).map(String::as_str);
            assert_eq!(get("RATE_LIMIT_CLIENT_ADDRESS"), Some(value), "{source:?}");
            assert_eq!(get("RATE_LIMIT_TRUSTED_HOPS"), None, "{source:?}");
        }
    }

    #[test]
    fn trusted_hops_and_max_clients_are_passed_on_when_given() {
        let d = data(&with_client_address(
            ClientAddressSource::XForwardedFor,
            Some(2),
            Some(5000),
        ));
        let get = |k: &str| d.get(k).map(String::as_str);
        assert_eq!(get("RATE_LIMIT_CLIENT_ADDRESS"), Some("x-forwarded-for"));
        assert_eq!(get("RATE_LIMIT_TRUSTED_HOPS"), Some("2"));
        assert_eq!(get("RATE_LIMIT_MAX_CLIENTS"), Some("5000"));
    }

    #[test]
    fn no_client_address_without_a_rate_limit() {
        let d = data(&ScalableApi::test());
        assert!(!d.keys().any(|k| k.starts_with("RATE_LIMIT_")));
    }
}
