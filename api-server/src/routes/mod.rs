//! Router assembly: every route is merged here, in one place.

pub mod health;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::HeaderName;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::{ApiError, Problem};
use crate::extract::MAX_BODY_BYTES;
use crate::middleware::{self, RequestIds};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "api-server",
        description = "The bundled user API of scalable-api-operator"
    ),
    paths(
        users::create,
        users::read,
        users::list,
        users::update,
        users::remove,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi
    ),
    components(schemas(
        crate::domain::User,
        crate::domain::UserBody,
        crate::domain::FieldError,
        users::UserPage,
        Problem,
        health::Readiness
    ))
)]
pub struct ApiDoc;

pub fn openapi_json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_json()
}

pub fn router(state: AppState) -> Router {
    let mut users = users::router();
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
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            middleware::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::default()))
        .with_state(state)
}
