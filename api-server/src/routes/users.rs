//! `/users` handlers: extract -> domain -> database/cache -> response.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::conditional::{self, Guard};
use crate::auth::Principal;
use crate::db;
use crate::db::idempotency::{Created, Recorded, Recording};
use crate::db::inserts::Inserted;
use crate::domain::{NewUser, User, UserBody, UserPatch};
use crate::error::{ApiError, Problem, ResultExt};
use crate::extract::{
    AppJson, AppPath, AppQuery, Cursor, Id, ListQuery, MergePatch, PageQuery, idempotency_key,
};
use crate::state::AppState;

/// The unique index on `lower(email)` (migrations/0001_users.sql).
const EMAIL_UNIQUE: &str = "users_email_key";
const NO_SUCH_USER: &str = "no user with this id";
/// A typical user's JSON size, for sizing buffers.
const USER_JSON_BYTES: usize = 192;
/// Set on a response that repeats an earlier one for the same `Idempotency-Key`.
static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub fn router() -> Router<AppState> {
    Router::new().route("/users", get(list).post(create)).route(
        "/users/{id}",
        get(read).put(update).patch(patch).delete(remove),
    )
}

/// A page of users in id order.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    /// Pass as `after` to get the next page (an opaque cursor); null on the last page.
    pub next: Option<String>,
}

/// Create a user. With an `Idempotency-Key`, a repeat of the request within 24 hours gets
/// the first one's response (`Idempotent-Replayed: true`) and creates nothing.
#[utoipa::path(post, path = "/users", request_body = UserBody, tag = "users",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII characters; makes a retried create safe")),
    responses(
    (status = 201, description = "Created (or, with a repeated Idempotency-Key, the first request's response)", body = User, headers(
        ("Location" = String, description = "/users/{id}"),
        ("ETag" = String, description = "The user's version, quoted"),
        ("Idempotent-Replayed" = Option<String>, description = "`true` on a repeat of an earlier request"),
    )),
    (status = 400, description = "Malformed JSON or Idempotency-Key", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Duplicate email (case-insensitive)", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid fields, or the Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    AppJson(body): AppJson<UserBody>,
) -> Result<Response, ApiError> {
    let user = NewUser::try_from(body).map_err(ApiError::Validation)?;
    let events = state.events.is_some();
    let Some(key) = idempotency_key(&headers)? else {
        let created = match state.inserts.insert(Uuid::now_v7(), user).await {
            Ok(Inserted::Created(created)) => created,
            Ok(Inserted::EmailTaken) => return Err(ApiError::DuplicateEmail),
            Err(error) => return Err(ApiError::from_db(error)),
        };
        state.wrote();
        return created_response(&created);
    };
    let scope = principal.as_ref().map_or("", |p| p.scope());
    let created = db::idempotency::create_once(
        &state.db,
        scope,
        key,
        Uuid::now_v7(),
        &user,
        events,
        recording,
    )
    .await
    .on_constraint(EMAIL_UNIQUE, |_| ApiError::DuplicateEmail)?;
    match created {
        Created::New(created) => {
            state.wrote();
            created_response(&created)
        }
        Created::Taken(recorded) => replay(recorded, &db::idempotency::request_of(&user)),
    }
}

/// What an idempotent create records: the 201 it answers, so a repeat gets the same.
fn recording(user: &User) -> Result<Recording, sqlx::Error> {
    Ok(Recording {
        status: StatusCode::CREATED.as_u16(),
        location: location(user.id),
        body: serde_json::to_vec(user).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

/// The response recorded for an `Idempotency-Key`, if `request` is the one it was for.
fn replay(recorded: Recorded, request: &serde_json::Value) -> Result<Response, ApiError> {
    if recorded.request != *request {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let (Some(status), Some(body)) = (recorded.status, recorded.response) else {
        return Err(ApiError::IdempotencyKeyInUse);
    };
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or(ApiError::IdempotencyKeyInUse)?;
    let mut response = (status, super::json_body(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(&IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if let Some(location) = recorded
        .location
        .and_then(|l| HeaderValue::try_from(l).ok())
    {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

fn location(id: Uuid) -> String {
    format!("/users/{id}")
}

fn to_json(user: &User) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::with_capacity(USER_JSON_BYTES);
    serde_json::to_writer(&mut body, user).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(body)
}

fn created_response(user: &User) -> Result<Response, ApiError> {
    let location =
        HeaderValue::try_from(location(user.id)).map_err(|e| ApiError::Internal(e.into()))?;
    let mut response = user_response(user)?;
    *response.status_mut() = StatusCode::CREATED;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// A 200 with the user and its ETag.
fn user_response(user: &User) -> Result<Response, ApiError> {
    with_etag(super::json_body(to_json(user)?), user.version)
}

fn with_etag(mut response: Response, version: i64) -> Result<Response, ApiError> {
    response
        .headers_mut()
        .insert(header::ETAG, conditional::etag_value(version));
    Ok(response)
}

/// What the cache holds for one user: its version (8 bytes, big-endian) and then its JSON
/// exactly as served, so a hit answers (or 304s) without decoding anything.
mod cached {
    use super::*;

    pub fn encode(user: &User) -> Result<Bytes, sqlx::Error> {
        let mut value = Vec::with_capacity(8 + USER_JSON_BYTES);
        value.extend_from_slice(&user.version.to_be_bytes());
        serde_json::to_writer(&mut value, user).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        Ok(value.into())
    }

    pub fn decode(mut value: Bytes) -> Option<(i64, Bytes)> {
        let version = value.get(..8)?.try_into().ok().map(i64::from_be_bytes)?;
        Some((version, value.split_off(8)))
    }
}

/// Read one user (served from the cache when possible).
#[utoipa::path(get, path = "/users/{id}", tag = "users", params(
        ("id" = Uuid, Path),
        ("If-None-Match" = Option<String>, Header, description = "ETags the client holds: 304 if one is current"),
    ), responses(
    (status = 200, description = "The user", body = User, headers(("ETag" = String, description = "The user's version, quoted"))),
    (status = 304, description = "Not modified: the ETag in If-None-Match is current", headers(("ETag" = String))),
    (status = 400, description = "Malformed If-None-Match", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
))]
pub async fn read(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let if_none_match = conditional::if_none_match(&headers)?;
    let db = &state.db;
    let load = || async move {
        match db::users::get(db, id).await? {
            Some(user) => cached::encode(&user).map(Some),
            None => Ok(None),
        }
    };
    let cached = state.cache.get_user(id, load).await;
    let Some(value) = cached.map_err(ApiError::from_db)? else {
        return Err(ApiError::NotFound(NO_SUCH_USER));
    };
    let (version, json) = cached::decode(value)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a cached user is truncated")))?;
    if if_none_match.is_some_and(|tags| conditional::not_modified(&tags, version)) {
        return Ok(conditional::not_modified_response(version));
    }
    with_etag(super::json_body(json), version)
}

/// List users, keyset-paginated; or look one up by e-mail address.
#[utoipa::path(get, path = "/users", tag = "users", params(PageQuery), responses(
    (status = 200, description = "A page of users (with `email`: zero or one)", body = UserPage),
    (status = 400, description = "A malformed query string (e.g. a parameter twice)", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid limit, cursor or email", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<Response, ApiError> {
    let (items, next) = match ListQuery::try_from(query)? {
        ListQuery::Page(page) => db::users::list(&state.db, page).await?,
        ListQuery::Email(email) => {
            let found = db::users::find_by_email(&state.db, email.as_str()).await?;
            (found.into_iter().collect(), None)
        }
    };
    // Sized up front: a page is tens of KiB, and growing a small buffer showed in profiles.
    let mut body = Vec::with_capacity(64 + items.len() * USER_JSON_BYTES);
    let page = UserPage {
        items,
        next: next.map(Cursor::encode),
    };
    serde_json::to_writer(&mut body, &page).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(super::json_body(body))
}

/// What a write with these headers must find (`If-Match` against the stored version).
async fn guard(state: &AppState, id: Uuid, headers: &HeaderMap) -> Result<Guard, ApiError> {
    match conditional::if_match(headers)? {
        None => Ok(Guard::None),
        // Needs no read: the write itself finds out whether the user exists.
        Some(if_match) if if_match.is_any() => Ok(Guard::Exists),
        Some(if_match) => {
            conditional::evaluate(&if_match, db::users::version(&state.db, id).await?)
        }
    }
}

/// After a committed change of `id`: this replica forgets it at once (not only on its own
/// NOTIFY, so it reads its own write) and its event relay is woken.
async fn changed(state: &AppState, id: Uuid) {
    state.cache.evict(id, "local").await;
    state.wrote();
}

/// Replace a user's name and email.
#[utoipa::path(put, path = "/users/{id}", request_body = UserBody, tag = "users", params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, description = "Change only if the user is at one of these ETags (or exists, for *)"),
    ), responses(
    (status = 200, description = "The updated user", body = User, headers(("ETag" = String, description = "The new version, quoted"))),
    (status = 400, description = "Malformed JSON or If-Match", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Duplicate email (case-insensitive)", body = Problem, content_type = "application/problem+json"),
    (status = 412, description = "If-Match did not match: nothing changed", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "Not application/json", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
    headers: HeaderMap,
    AppJson(body): AppJson<UserBody>,
) -> Result<Response, ApiError> {
    let user = NewUser::try_from(body).map_err(ApiError::Validation)?;
    let guard = guard(&state, id, &headers).await?;
    let events = state.events.is_some();
    let updated = db::users::update(&state.db, id, &user, guard.expected(), events)
        .await
        .on_constraint(EMAIL_UNIQUE, |_| ApiError::DuplicateEmail)?
        .ok_or_else(|| guard.missed(ApiError::NotFound(NO_SUCH_USER)))?;
    changed(&state, id).await;
    user_response(&updated)
}

/// Change some of a user's fields (JSON merge patch, RFC 7396).
#[utoipa::path(patch, path = "/users/{id}", tag = "users",
    request_body(content = UserPatchBody, content_type = "application/merge-patch+json"),
    params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, description = "Change only if the user is at one of these ETags (or exists, for *)"),
    ), responses(
    (status = 200, description = "The user after the patch", body = User, headers(("ETag" = String, description = "The new version, quoted"))),
    (status = 400, description = "Malformed JSON or If-Match", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 409, description = "Duplicate email (case-insensitive)", body = Problem, content_type = "application/problem+json"),
    (status = 412, description = "If-Match did not match: nothing changed", body = Problem, content_type = "application/problem+json"),
    (status = 415, description = "Not application/merge-patch+json", body = Problem, content_type = "application/problem+json"),
    (status = 422, description = "Invalid fields, null for a field, or not an object", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn patch(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
    headers: HeaderMap,
    MergePatch(body): MergePatch,
) -> Result<Response, ApiError> {
    let patch = UserPatch::parse(&body).map_err(ApiError::Validation)?;
    let guard = guard(&state, id, &headers).await?;
    let not_found = || guard.missed(ApiError::NotFound(NO_SUCH_USER));
    if patch.is_empty() {
        // Nothing to change: no write, no new version; the user as it is.
        let user = db::users::get(&state.db, id).await?.ok_or_else(not_found)?;
        if guard.expected().is_some_and(|v| v != user.version) {
            return Err(ApiError::PreconditionFailed);
        }
        return user_response(&user);
    }
    let events = state.events.is_some();
    let patched = db::users::patch(&state.db, id, &patch, guard.expected(), events)
        .await
        .on_constraint(EMAIL_UNIQUE, |_| ApiError::DuplicateEmail)?
        .ok_or_else(not_found)?;
    changed(&state, id).await;
    user_response(&patched)
}

/// The body of `PATCH /users/{id}`: any subset of the fields (none may be null: every
/// field of a user is required). For the OpenAPI document only; `UserPatch` parses.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPatchBody {
    #[schema(
        required = false,
        example = "Ada King",
        pattern = r"^[^\S\x1c-\x1f]*[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?[^\S\x1c-\x1f]*$"
    )]
    pub name: String,
    #[schema(required = false, example = "ada@example.org", format = "email")]
    pub email: String,
}

/// Delete a user.
#[utoipa::path(delete, path = "/users/{id}", tag = "users", params(
        ("id" = Uuid, Path),
        ("If-Match" = Option<String>, Header, description = "Delete only if the user is at one of these ETags (or exists, for *)"),
    ), responses(
    (status = 204, description = "Deleted"),
    (status = 400, description = "Malformed If-Match", body = Problem, content_type = "application/problem+json"),
    (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    (status = 412, description = "If-Match did not match: nothing deleted", body = Problem, content_type = "application/problem+json"),
))]
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn remove(
    State(state): State<AppState>,
    AppPath(Id(id)): AppPath<Id>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let guard = guard(&state, id, &headers).await?;
    let events = state.events.is_some();
    if !db::users::delete(&state.db, id, guard.expected(), events).await? {
        return Err(guard.missed(ApiError::NotFound(NO_SUCH_USER)));
    }
    changed(&state, id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_value_is_the_version_then_the_json_as_served() {
        let user = User {
            id: Uuid::now_v7(),
            name: "Ada".into(),
            email: "ada@example.com".into(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            version: 42,
        };
        let (version, json) = cached::decode(cached::encode(&user).unwrap()).unwrap();
        assert_eq!(version, 42);
        assert_eq!(json, to_json(&user).unwrap());
        assert_eq!(cached::decode(Bytes::from_static(b"short")), None);
    }

    #[test]
    fn the_problem_of_a_replay_for_another_body_is_idempotency_key_reused() {
        let recorded = Recorded {
            request: serde_json::json!({ "name": "a", "email": "a@example.com" }),
            status: Some(201),
            location: None,
            response: Some(b"{}".to_vec()),
        };
        let other = serde_json::json!({ "name": "b", "email": "a@example.com" });
        let error = replay(recorded, &other).unwrap_err();
        assert_eq!(
            error.kind(),
            crate::error::ProblemType::IdempotencyKeyReused
        );
    }
}
