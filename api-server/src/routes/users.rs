//! `/users` handlers: extract -> domain -> database/cache -> response.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db;
use crate::domain::{NewUser, User, UserBody};
use crate::error::{ApiError, Problem, ResultExt};
use crate::extract::{AppJson, AppPath, AppQuery, Id, Page, PageQuery};
use crate::state::AppState;

/// The unique index on `lower(email)` (migrations/0001_users.sql).
const EMAIL_UNIQUE: &str = "users_email_key";
const DUPLICATE_EMAIL: &str = "a user with this email already exists";
const NO_SUCH_USER: &str = "no user with this id";
/// A typical user's JSON size, for sizing list buffers.
const USER_JSON_BYTES: usize = 192;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(create))
        .route("/users/{id}", get(read).put(update).delete(remove))
}

/// A page of users in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `after` to get the next page; null on the last page.
    pub next: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/users", request_body = UserBody, tag = "users", responses(
    (status = 201, description = "Created", body = User, headers(("Location" = String))),
    (status = 400, description = "Malformed JSON or wrong content type", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Duplicate email (case-insensitive)", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Postgres unavailable", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(skip_all)]
pub async fn create(
    State(state): State<AppState>,
    AppJson(body): AppJson<UserBody>,
) -> Result<Response, ApiError> {
    let user = NewUser::try_from(body).map_err(ApiError::Validation)?;
    let created = db::users::insert(&state.db, Uuid::now_v7(), &user)
        .await
        .on_constraint(EMAIL_UNIQUE, |_| ApiError::Conflict(DUPLICATE_EMAIL))?;
    let location = HeaderValue::from_str(&format!("/users/{}", created.id))
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(created),
    )
        .into_response())
}

/// Read one user (served from the cache when possible).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path)), responses(
    (status = 200, description = "The user", body = User),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Postgres unavailable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn read(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
) -> Result<Response, ApiError> {
    let db = &state.db;
    let cached = state.cache.get_user(id, || db::users::get(db, id)).await;
    match cached.map_err(ApiError::from_db)? {
        Some(json) => Ok(super::json_body(json)),
        None => Err(ApiError::NotFound(NO_SUCH_USER)),
    }
}

/// List users, keyset-paginated.
#[utoipa::path(get, path = "/users", tag = "users", params(PageQuery), responses(
    (status = 200, description = "A page of users", body = UserPage),
    (status = 422, description = "Invalid limit or cursor", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Postgres unavailable", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(skip_all)]
pub async fn list(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::try_from(query)?;
    let (items, next) = db::users::list(&state.db, page).await?;
    // Sized up front: a page is tens of KiB, and growing a small buffer showed in profiles.
    let mut body = Vec::with_capacity(64 + items.len() * USER_JSON_BYTES);
    let page = UserPage {
        items,
        next: next.map(|id| id.to_string()),
    };
    serde_json::to_writer(&mut body, &page).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(super::json_body(body))
}

/// Replace a user's name and email.
#[utoipa::path(put, path = "/users/{id}", request_body = UserBody, tag = "users", params(("id" = Uuid, Path)), responses(
    (status = 200, description = "The updated user", body = User),
    (status = 400, description = "Malformed JSON or wrong content type", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Duplicate email (case-insensitive)", body = Problem, content_type = "application/problem+json"),
    (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Postgres unavailable", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
    AppJson(body): AppJson<UserBody>,
) -> Result<axum::Json<User>, ApiError> {
    let user = NewUser::try_from(body).map_err(ApiError::Validation)?;
    let updated = db::users::update(&state.db, id, &user)
        .await
        .on_constraint(EMAIL_UNIQUE, |_| ApiError::Conflict(DUPLICATE_EMAIL))?
        .ok_or(ApiError::NotFound(NO_SUCH_USER))?;
    // Evict here too (not only on our own NOTIFY) so this replica reads its own write at once.
    state.cache.evict(id, "local").await;
    Ok(axum::Json(updated))
}

/// Delete a user.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(("id" = Uuid, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 503, description = "Postgres unavailable", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn remove(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
) -> Result<StatusCode, ApiError> {
    if !db::users::delete(&state.db, id).await? {
        return Err(ApiError::NotFound(NO_SUCH_USER));
    }
    state.cache.evict(id, "local").await;
    Ok(StatusCode::NO_CONTENT)
}
