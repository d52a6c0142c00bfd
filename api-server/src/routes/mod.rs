//! Router assembly: every route is merged here, in one place.

mod conditional;
pub mod health;
mod openapi;

use openapi::UsersContract;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, Problem};
use crate::extract::MAX_BODY_BYTES;
use crate::middleware::{self, REQUEST_ID, RequestIds};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "api-server",
        description = "The bundled user API of scalable-api-operator. This is the public port; \
                       the admin port (ADMIN_PORT) serves /healthz, /readyz and /metrics."
    ),
    paths(
        users::create,
        users::read,
        users::list,
        users::update,
        users::patch,
        users::remove,
        health::healthz,
        health::readyz,
        health::openapi
    ),
    components(schemas(
        crate::domain::User,
        crate::domain::UserBody,
        crate::domain::FieldError,
        users::UserPage,
        users::UserPatchBody,
        Problem,
        health::Readiness
    ))
)]
pub struct ApiDoc;

/// A 200 with a body that is already JSON (cached, pre-rendered or serialised by hand).
fn json_body(body: impl IntoResponse) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The document `/openapi.json` serves: it declares the bearer scheme, 401 and 403 only
/// when authentication is on, so it describes the server that serves it.
pub fn openapi_json(authentication: bool) -> Result<String, serde_json::Error> {
    let mut doc = ApiDoc::openapi();
    UsersContract { authentication }.modify(&mut doc);
    doc.to_json()
}

/// The admin port's router: probes and `/metrics`, nothing a client may reach.
pub fn admin_router(state: AppState) -> Router {
    health::admin_router()
        .fallback(|| async { ApiError::NotFound("no such route on the admin port") })
        .with_state(state)
}

pub fn router(state: AppState) -> Router {
    let mut users = users::router().route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::require_schema,
    ));
    // Outside the schema check: an anonymous client learns nothing, not even "starting".
    if let Some(auth) = state.auth.clone() {
        users = users.route_layer(axum::middleware::from_fn_with_state(
            auth,
            crate::auth::require,
        ));
    }
    // Only when configured: the hot path pays nothing for a limiter that is off.
    if state.rate_limiter.is_some() {
        users = users.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit,
        ));
    }
    let api = users.layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request| {
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id,
                )
            })
            // ApiError logs server-side failures with their cause; no second log line.
            .on_failure(()),
    );
    Router::new()
        .merge(api)
        .merge(health::router())
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Inside `track`, so these 413s are counted like any other response.
        .layer(axum::middleware::from_fn_with_state(
            MAX_BODY_BYTES,
            middleware::reject_declared_oversize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            middleware::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::default()))
        .layer(axum::middleware::map_request(
            middleware::drop_unacceptable_request_id,
        ))
        // Outermost: whatever answered without reading the whole body, its rest is drained.
        .layer(axum::middleware::from_fn(middleware::drain_unread_body))
        .with_state(state)
}

/// Handler tests without a socket or a database: the pool points at a closed port, so
/// anything that reaches Postgres sees it down.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::{Request, StatusCode, header};
    use sqlx::postgres::PgPoolOptions;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::*;
    use crate::cache::Cache;
    use crate::metrics::Metrics;
    use crate::state::Shared;

    fn app() -> Router {
        let db = PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://postgres@127.0.0.1:1/none")
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        let db = crate::db::Db::from(db);
        let batching = crate::db::inserts::Batching {
            lanes: 1,
            max_rows: 1,
        };
        router(AppState::new(Shared {
            inserts: crate::db::inserts::Inserts::start(db.clone(), false, batching, &metrics),
            db,
            cache: Cache::disabled(metrics.clone()),
            metrics,
            shutdown: CancellationToken::new(),
            health: {
                let health = crate::probe::Health::default();
                health.set_schema_ready();
                Arc::new(health)
            },
            rate_limiter: None,
            openapi: openapi_json(false).unwrap().into(),
            auth: None,
            events: None,
        }))
    }

    async fn send(request: Request<Body>) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (
            status,
            content_type,
            serde_json::from_slice(&body).unwrap_or_default(),
        )
    }

    fn post(content_type: &str, body: &str) -> Request<Body> {
        Request::post("/users")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn unknown_routes_are_problem_404s() {
        let (status, content_type, body) =
            send(Request::get("/nope").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type.as_deref(), Some(crate::error::PROBLEM_JSON));
        assert_eq!(body["status"], 404);
    }

    #[tokio::test]
    async fn wrong_methods_are_problem_405s() {
        let (status, _, body) = send(Request::patch("/users").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["status"], 405);
    }

    #[tokio::test]
    async fn a_wrong_content_type_is_415_before_any_database_work() {
        let (status, _, _) = send(post(
            "text/plain",
            r#"{"name":"a","email":"a@example.com"}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn invalid_fields_are_422_before_any_database_work() {
        let (status, _, body) = send(post(
            "application/json",
            r#"{"name":"","email":"a@example.com"}"#,
        ))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["errors"][0]["field"], "name");
    }

    #[tokio::test]
    async fn a_database_that_is_down_is_503_with_retry_after() {
        let id = uuid::Uuid::now_v7();
        let response = app()
            .oneshot(
                Request::get(format!("/users/{id}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("127.0.0.1"), "{text}");
    }

    #[tokio::test]
    async fn readyz_reports_the_database_down_without_going_unready() {
        let (status, _, body) = send(Request::get("/readyz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["postgres"], "down");
        assert_eq!(body["redis"], "disabled");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_a_problem_413_without_reading_the_body() {
        // The body never ends: only the header can have produced the answer.
        let body = Body::from_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>());
        let request = Request::post("/users")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "999999")
            .body(body)
            .unwrap();
        let (status, content_type, problem) =
            tokio::time::timeout(Duration::from_secs(5), send(request))
                .await
                .unwrap();
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(content_type.as_deref(), Some(crate::error::PROBLEM_JSON));
        assert_eq!(problem["status"], 413);
    }

    #[tokio::test]
    async fn a_declared_length_at_the_limit_is_read() {
        let body = format!(
            r#"{{"name":"","email":"{}"}}"#,
            "a".repeat(MAX_BODY_BYTES - 22)
        );
        assert_eq!(body.len(), MAX_BODY_BYTES);
        let request = Request::post("/users")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, MAX_BODY_BYTES.to_string())
            .body(Body::from(body))
            .unwrap();
        let (status, _, _) = send(request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[tokio::test]
    async fn healthz_needs_no_database() {
        let (status, _, _) = send(Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
}
