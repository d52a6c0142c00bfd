//! Prometheus metrics, served as OpenMetrics text on `/metrics`.
//!
//! Label values are `&'static str` or integers picked from fixed sets, so recording a
//! request allocates nothing and the number of series is bounded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Routes as registered; anything else is recorded as `unmatched`.
const ROUTES: [&str; 6] = [
    "/users",
    "/users/{id}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// Latency buckets from 250 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

type HistogramFamily = Family<HttpLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily,
    pub cache_hits: Counter,
    pub cache_local_hits: Counter,
    pub cache_local_misses: Counter,
    pub cache_misses: Counter,
    pub cache_errors: Counter,
    pub cache_bypassed: Counter,
    pub cache_breaker_open: Gauge,
    pub cache_invalidations: Family<SourceLabel, Counter>,
    pub cache_flushes: Counter,
    pub db_user_reads: Counter,
    pub db_pool_connections: Family<StateLabel, Gauge>,
    pub db_inserts_queued: Gauge,
    pub db_insert_batch_rows: Histogram,
    pub rate_limited: Counter,
    pub rate_limit_clients: Gauge,
    pub listener_connected: Gauge,
    pub listener_lost: Counter,
    pub http_connections: Gauge,
    pub http_connections_shed: Counter,
    pub events_backlog: Gauge,
    pub events_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub events_published: Counter,
    pub events_failed: Counter,
    pub events_relay_leader: Gauge,
    pub events_publish_lag: Histogram,
}

/// Rows per batched INSERT, 1 to the most DB_INSERT_BATCH_MAX allows.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0,
];

/// Publish lag buckets (commit to broker acknowledgement), 1 ms to 60 s.
const LAG_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method, route and status",
            http_duration.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "User reads answered from Redis",
            cache_hits.clone(),
        );
        let cache_local_hits = Counter::default();
        registry.register(
            "cache_local_hits",
            "User reads answered from the in-process cache, before Redis",
            cache_local_hits.clone(),
        );
        let cache_local_misses = Counter::default();
        registry.register(
            "cache_local_misses",
            "User reads not found in the in-process cache (then asked of Redis)",
            cache_local_misses.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "User reads not found in Redis",
            cache_misses.clone(),
        );
        let cache_errors = Counter::default();
        registry.register(
            "cache_errors",
            "Failed or timed-out Redis operations",
            cache_errors.clone(),
        );
        let cache_bypassed = Counter::default();
        registry.register(
            "cache_bypassed",
            "User reads that skipped Redis (breaker open or invalidation feed down)",
            cache_bypassed.clone(),
        );
        let cache_breaker_open = Gauge::default();
        registry.register(
            "cache_breaker_open",
            "1 while the Redis circuit breaker is open (or probing) and reads skip Redis",
            cache_breaker_open.clone(),
        );
        let cache_invalidations = Family::<SourceLabel, Counter>::default();
        registry.register(
            "cache_invalidations",
            "Cache evictions by source (local write or NOTIFY from any replica)",
            cache_invalidations.clone(),
        );
        // Present from the start (at 0), so dashboards and alerts see the series.
        for source in ["local", "notify"] {
            cache_invalidations
                .get_or_create(&SourceLabel { source })
                .inc_by(0);
        }
        let cache_flushes = Counter::default();
        registry.register(
            "cache_flushes",
            "Whole-cache flushes (start-up, LISTEN reconnect, failed eviction)",
            cache_flushes.clone(),
        );
        let db_user_reads = Counter::default();
        registry.register(
            "db_user_reads",
            "Single-user reads sent to Postgres",
            db_user_reads.clone(),
        );
        let db_pool_connections = Family::<StateLabel, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Postgres pool connections by state (in_use, idle)",
            db_pool_connections.clone(),
        );
        let db_inserts_queued = Gauge::default();
        registry.register(
            "db_inserts_queued",
            "Creates waiting for a lane to write them (db/inserts.rs)",
            db_inserts_queued.clone(),
        );
        let db_insert_batch_rows = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "db_insert_batch_rows",
            "Creates written by one INSERT statement",
            db_insert_batch_rows.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429",
            rate_limited.clone(),
        );
        let rate_limit_clients = Gauge::default();
        registry.register(
            "rate_limit_clients",
            "Clients with a rate-limit bucket of their own (at most RATE_LIMIT_MAX_CLIENTS)",
            rate_limit_clients.clone(),
        );
        let listener_connected = Gauge::default();
        registry.register(
            "cache_listener_connected",
            "1 while the LISTEN connection for invalidations is subscribed",
            listener_connected.clone(),
        );
        let listener_lost = Counter::default();
        registry.register(
            "cache_listener_lost",
            "LISTEN connections lost or stalled (heartbeat late); each bypasses, then flushes, the cache",
            listener_lost.clone(),
        );
        let http_connections = Gauge::default();
        registry.register(
            "http_connections",
            "Client connections being served (at most HTTP_MAX_CONNECTIONS)",
            http_connections.clone(),
        );
        let http_connections_shed = Counter::default();
        registry.register(
            "http_connections_shed",
            "Connections over HTTP_MAX_CONNECTIONS, answered 503 or closed",
            http_connections_shed.clone(),
        );
        // User events (issue 13). The backlog gauges are set by the replica that leads the
        // relay; the others report 0, so take the max over replicas.
        let events_backlog = Gauge::default();
        registry.register(
            "events_outbox_backlog",
            "Outbox rows not yet published to Kafka (sampled every second by the leading relay)",
            events_backlog.clone(),
        );
        let events_oldest_age_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "events_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none; set by the leading relay)",
            events_oldest_age_seconds.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "User events the broker acknowledged",
            events_published.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "events_failed",
            "User event sends that failed (the row stays and is sent again)",
            events_failed.clone(),
        );
        let events_relay_leader = Gauge::default();
        registry.register(
            "events_relay_leader",
            "1 while this replica holds the relay lock and publishes",
            events_relay_leader.clone(),
        );
        let events_publish_lag = Histogram::new(LAG_BUCKETS);
        registry.register(
            "events_publish_lag_seconds",
            "From the writing transaction to the broker's acknowledgement",
            events_publish_lag.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            cache_hits,
            cache_local_hits,
            cache_local_misses,
            cache_misses,
            cache_errors,
            cache_bypassed,
            cache_breaker_open,
            cache_invalidations,
            cache_flushes,
            db_user_reads,
            db_pool_connections,
            db_inserts_queued,
            db_insert_batch_rows,
            rate_limited,
            rate_limit_clients,
            listener_connected,
            listener_lost,
            http_connections,
            http_connections_shed,
            events_backlog,
            events_oldest_age_seconds,
            events_published,
            events_failed,
            events_relay_leader,
            events_publish_lag,
        }
    }

    pub fn observe_request(&self, labels: HttpLabels, seconds: f64) {
        self.http_duration.get_or_create(&labels).observe(seconds);
        self.http_requests.get_or_create(&labels).inc();
    }

    /// `ids` evictions from one source (a NOTIFY carries a batch).
    pub fn invalidated(&self, source: &'static str, ids: u64) {
        self.cache_invalidations
            .get_or_create(&SourceLabel { source })
            .inc_by(ids);
    }

    pub fn set_pool(&self, in_use: i64, idle: i64) {
        self.db_pool_connections
            .get_or_create(&StateLabel { state: "in_use" })
            .set(in_use);
        self.db_pool_connections
            .get_or_create(&StateLabel { state: "idle" })
            .set(idle);
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The registered route for a matched path, as a static label value.
pub fn route_label(matched: Option<&str>) -> &'static str {
    matched
        .and_then(|path| ROUTES.iter().find(|r| **r == path).copied())
        .unwrap_or("unmatched")
}

pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_routes_keep_their_template() {
        assert_eq!(route_label(Some("/users/{id}")), "/users/{id}");
    }

    #[test]
    fn unknown_paths_collapse_into_one_label() {
        assert_eq!(route_label(Some("/admin")), "unmatched");
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn encoded_output_names_requests_by_route_and_status() {
        let metrics = Metrics::new();
        metrics.observe_request(
            HttpLabels {
                method: "GET",
                route: "/users/{id}",
                status: 200,
            },
            0.001,
        );
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"http_requests_total{method="GET",route="/users/{id}",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("http_request_duration_seconds_bucket"));
    }
}
