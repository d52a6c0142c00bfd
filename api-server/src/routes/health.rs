//! Probes and metrics. The public port serves the probes and the OpenAPI document; the admin
//! port (`ADMIN_PORT`) serves the probes and `/metrics`, so metrics never face clients.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// Routes of the public port, attached outside the request-tracing layer.
pub fn router() -> Router<AppState> {
    probes().route("/openapi.json", get(openapi))
}

/// The admin port: probes and metrics, for the kubelet and Prometheus only.
pub fn admin_router() -> Router<AppState> {
    probes().route("/metrics", get(metrics))
}

fn probes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, description = "Alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    pub status: &'static str,
    pub shutting_down: bool,
    /// Whether the schema is in place (migrated by this process or, with `MIGRATE=false`,
    /// found complete).
    pub schema_ready: bool,
    /// `up` or `down`, from the last background check. Never affects readiness.
    pub postgres: &'static str,
    /// Seconds since Postgres last answered; null if it never has.
    pub postgres_last_ok_seconds_ago: Option<f64>,
    /// `up`, `down` or `disabled`. Never affects readiness.
    pub redis: &'static str,
    /// Whether cached reads are trusted (the LISTEN connection is subscribed).
    pub cache_trusted: bool,
}

/// Readiness, from state the server keeps (no query per probe): 200 once the schema is in
/// place and until shutdown begins. Postgres and Redis are reported but do not count
/// (docs/configuration.md, "Start-up and probes"; `probe.rs`).
#[utoipa::path(get, path = "/readyz", tag = "probes", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let shutting_down = state.shutdown.is_cancelled();
    let schema_ready = state.health.schema_ready();
    let ready = schema_ready && !shutting_down;
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        shutting_down,
        schema_ready,
        postgres: if state.health.postgres_up() {
            "up"
        } else {
            "down"
        },
        postgres_last_ok_seconds_ago: state
            .health
            .postgres_last_ok_ago()
            .map(|ago| ago.as_secs_f64()),
        redis: state.cache.status().await.as_str(),
        cache_trusted: state.cache.is_trusted(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// Prometheus metrics (OpenMetrics text).
/// Served on the admin port only.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let idle = i64::try_from(state.db.num_idle()).unwrap_or(i64::MAX);
    let size = i64::from(state.db.size());
    state.metrics.set_pool(size - idle, idle);
    match state.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(error) => crate::error::ApiError::Internal(error.into()).into_response(),
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/openapi.json", tag = "probes", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi(State(state): State<AppState>) -> Response {
    super::json_body(state.openapi.clone())
}
