//! The one mapping from failures to `application/problem+json` responses (RFC 9457).
//!
//! Server-side failures are logged here with their full cause; the client only sees a
//! generic detail, never a driver message or a SQL fragment.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::domain::FieldError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Seconds a client should wait after a 503 before retrying.
const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 1;

/// Every way a request can fail, one variant per HTTP outcome.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("invalid fields")]
    Validation(Vec<FieldError>),
    /// A well-formed body whose shape does not fit (wrong types, missing fields).
    #[error("unprocessable body: {0}")]
    Unprocessable(String),
    #[error("not found: {0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Another user has this e-mail address (ignoring case).
    #[error("duplicate email")]
    DuplicateEmail,
    /// `If-Match` named a version the user no longer has (or the user is gone).
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("unsupported media type: expected {0}")]
    UnsupportedMediaType(&'static str),
    /// The same `Idempotency-Key` came with a different body.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// A request with the `Idempotency-Key` committed without its response (never ours).
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// Shared because one failed query can answer many coalesced requests (single-flight).
    #[error("the database is unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    #[error("the request took too long")]
    Timeout,
    /// The connection was over `HTTP_MAX_CONNECTIONS`: shed instead of queued.
    #[error("too many connections")]
    Overloaded,
    /// The schema is not in place yet (migrating, or waiting for `MIGRATE=only`).
    #[error("starting")]
    Starting,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// 401 without a valid bearer token, 403 without the scope the method needs.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Where the problem types are documented; each type URI is this plus `#` and its slug.
pub const PROBLEM_TYPES_DOC: &str =
    "https://github.com/scalable-dev/scalable-api-operator/blob/main/docs/problems.md";

/// Declares `ProblemType` from (variant, slug) pairs, so each slug is written once and each
/// URI is a compile-time constant (a response allocates nothing for its type).
macro_rules! problem_types {
    ($($variant:ident => $slug:literal),* $(,)?) => {
        /// Every problem `type` this API sends. The URIs are stable: clients may match on them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ProblemType {
            $($variant),*
        }

        impl ProblemType {
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// The anchor in docs/problems.md.
            pub fn slug(self) -> &'static str {
                match self {
                    $(Self::$variant => $slug),*
                }
            }

            /// `PROBLEM_TYPES_DOC#slug`.
            pub fn uri(self) -> &'static str {
                match self {
                    $(Self::$variant => concat!(
                        "https://github.com/scalable-dev/scalable-api-operator/blob/main/docs/problems.md#",
                        $slug
                    )),*
                }
            }
        }
    };
}

problem_types!(
    BadRequest => "bad-request",
    Validation => "validation",
    NotFound => "not-found",
    MethodNotAllowed => "method-not-allowed",
    DuplicateEmail => "duplicate-email",
    PreconditionFailed => "precondition-failed",
    UnsupportedMediaType => "unsupported-media-type",
    IdempotencyKeyReused => "idempotency-key-reused",
    IdempotencyKeyInUse => "idempotency-key-in-use",
    PayloadTooLarge => "payload-too-large",
    RateLimited => "rate-limited",
    Unauthenticated => "unauthenticated",
    Forbidden => "forbidden",
    Unavailable => "unavailable",
    Internal => "internal",
);

/// The problem document. Extension member `errors` lists invalid fields on a 422.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(
        example = "https://github.com/scalable-dev/scalable-api-operator/blob/main/docs/problems.md#validation"
    )]
    pub kind: &'static str,
    #[schema(example = "Unprocessable Entity")]
    pub title: &'static str,
    #[schema(example = 422)]
    pub status: u16,
    #[schema(example = "email: must contain an @")]
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::DuplicateEmail | Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Timeout | Self::Overloaded | Self::Starting => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Auth(AuthError::MissingToken | AuthError::InvalidToken(_)) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Auth(AuthError::InsufficientScope(_)) => StatusCode::FORBIDDEN,
        }
    }

    /// What the client is told. Never includes the source of a server-side error.
    fn detail(&self) -> String {
        match self {
            Self::BadRequest(detail) | Self::Unprocessable(detail) => detail.clone(),
            Self::Validation(errors) => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            Self::NotFound(what) => (*what).to_owned(),
            Self::DuplicateEmail => "a user with this email already exists".into(),
            Self::MethodNotAllowed => "this method is not allowed on this resource".into(),
            Self::PreconditionFailed => {
                "the user has changed (or is gone) since the ETag in If-Match".into()
            }
            Self::UnsupportedMediaType(expected) => format!("expected `Content-Type: {expected}`"),
            Self::IdempotencyKeyReused => {
                "this Idempotency-Key was used with a different request body".into()
            }
            Self::IdempotencyKeyInUse => {
                "another request holds this Idempotency-Key; retry later".into()
            }
            Self::PayloadTooLarge => "the request body is larger than 16 KiB".into(),
            Self::RateLimited { .. } => "too many requests from this client; retry later".into(),
            Self::Unavailable(_) => "the database is unavailable; retry later".into(),
            Self::Timeout => "the request took too long; retry later".into(),
            Self::Overloaded => "the server has too many connections; retry later".into(),
            Self::Starting => "the server is starting (schema not ready); retry later".into(),
            Self::Internal(_) => "an unexpected error occurred".into(),
            Self::Auth(error) => error.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable(_) | Self::Timeout | Self::Overloaded | Self::Starting => {
                Some(RETRY_AFTER_UNAVAILABLE_SECS)
            }
            _ => None,
        }
    }

    /// The RFC 6750 challenge of a 401 or 403.
    fn www_authenticate(&self) -> Option<String> {
        match self {
            Self::Auth(AuthError::MissingToken) => Some("Bearer".into()),
            Self::Auth(AuthError::InvalidToken(_)) => {
                Some(r#"Bearer error="invalid_token""#.into())
            }
            Self::Auth(AuthError::InsufficientScope(scope)) => Some(format!(
                r#"Bearer error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        }
    }

    /// The stable `type` of this kind of problem (docs/problems.md lists them).
    pub fn kind(&self) -> ProblemType {
        match self {
            Self::BadRequest(_) => ProblemType::BadRequest,
            Self::Validation(_) | Self::Unprocessable(_) => ProblemType::Validation,
            Self::NotFound(_) => ProblemType::NotFound,
            Self::MethodNotAllowed => ProblemType::MethodNotAllowed,
            Self::DuplicateEmail => ProblemType::DuplicateEmail,
            Self::PreconditionFailed => ProblemType::PreconditionFailed,
            Self::UnsupportedMediaType(_) => ProblemType::UnsupportedMediaType,
            Self::IdempotencyKeyReused => ProblemType::IdempotencyKeyReused,
            Self::IdempotencyKeyInUse => ProblemType::IdempotencyKeyInUse,
            Self::PayloadTooLarge => ProblemType::PayloadTooLarge,
            Self::RateLimited { .. } => ProblemType::RateLimited,
            Self::Unavailable(_) | Self::Timeout | Self::Overloaded | Self::Starting => {
                ProblemType::Unavailable
            }
            Self::Internal(_) => ProblemType::Internal,
            Self::Auth(AuthError::MissingToken | AuthError::InvalidToken(_)) => {
                ProblemType::Unauthenticated
            }
            Self::Auth(AuthError::InsufficientScope(_)) => ProblemType::Forbidden,
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: self.kind().uri(),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail(),
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(source) => tracing::warn!(error = %source, "database unavailable"),
            Self::Internal(source) => tracing::error!(error = ?source, "internal error"),
            _ => {}
        }
        let problem = self.problem();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate()
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    /// Connection-level failures are 503 (retryable); anything else is a bug, so 500.
    fn from(error: sqlx::Error) -> Self {
        Self::from_db(Arc::new(error))
    }
}

impl ApiError {
    pub fn from_db(error: Arc<sqlx::Error>) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Internal(error.into())
        }
    }
}

pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception, 53: insufficient resources, 57P: operator
            // intervention (shutdown, cannot connect now), 40001/40P01: retryable conflicts.
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "57014" // query_canceled (statement_timeout)
                || code == "55P03" // lock_not_available (lock_timeout)
                || code == "25P03" // idle_in_transaction_session_timeout
                // read_only_sql_transaction: a standby after a failover, or
                // default_transaction_read_only; writes work again once the primary is back.
                || code == "25006"
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

/// Maps a violation of one named constraint to a chosen error; other errors convert as usual.
pub trait ResultExt<T> {
    fn on_constraint(
        self,
        name: &str,
        map: impl FnOnce(Box<dyn sqlx::error::DatabaseError>) -> ApiError,
    ) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_constraint(
        self,
        name: &str,
        map: impl FnOnce(Box<dyn sqlx::error::DatabaseError>) -> ApiError,
    ) -> Result<T, ApiError> {
        self.map_err(|error| match error {
            sqlx::Error::Database(db) if db.constraint() == Some(name) => map(db),
            other => ApiError::from(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_errors_are_422_and_name_each_field() {
        let error = ApiError::Validation(vec![
            FieldError {
                field: "name",
                message: "must not be empty",
            },
            FieldError {
                field: "email",
                message: "must contain an @",
            },
        ]);
        let problem = error.problem();
        assert_eq!(problem.status, 422);
        assert_eq!(
            problem.detail,
            "name: must not be empty; email: must contain an @"
        );
        assert_eq!(problem.errors.len(), 2);
    }

    #[test]
    fn pool_timeouts_are_503() {
        assert_eq!(
            ApiError::from(sqlx::Error::PoolTimedOut).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn io_errors_are_503() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            ApiError::from(sqlx::Error::Io(io)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn decode_errors_are_500_without_detail() {
        let error = ApiError::from(sqlx::Error::ColumnNotFound("secret_column".into()));
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!error.problem().detail.contains("secret_column"));
    }

    #[test]
    fn unavailable_detail_hides_the_driver_message() {
        let io = std::io::Error::other("10.0.0.7:5432 refused");
        let problem = ApiError::from(sqlx::Error::Io(io)).problem();
        assert!(!problem.detail.contains("10.0.0.7"));
    }

    #[test]
    fn responses_are_problem_json_with_retry_after_when_retryable() {
        let response = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn client_errors_have_no_retry_after() {
        let response = ApiError::NotFound("no user with this id").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_missing_token_is_401_with_a_bare_bearer_challenge() {
        let response = ApiError::from(AuthError::MissingToken).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }

    #[test]
    fn a_bad_token_is_401_invalid_token() {
        let error = AuthError::InvalidToken(crate::auth::TokenError::Expired);
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
    }

    #[test]
    fn a_missing_scope_is_403_naming_the_scope() {
        let response = ApiError::from(AuthError::InsufficientScope("users:write")).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer error="insufficient_scope", scope="users:write""#
        );
    }

    #[test]
    fn every_problem_type_is_a_distinct_anchor_of_the_problems_doc() {
        let uris: std::collections::HashSet<_> = ProblemType::ALL.iter().map(|t| t.uri()).collect();
        assert_eq!(uris.len(), ProblemType::ALL.len());
        for kind in ProblemType::ALL {
            assert_eq!(kind.uri(), format!("{PROBLEM_TYPES_DOC}#{}", kind.slug()));
        }
    }

    #[test]
    fn the_problems_doc_has_a_section_for_every_type() {
        let doc = include_str!("../../docs/problems.md");
        for kind in ProblemType::ALL {
            assert!(
                doc.contains(&format!("\n### `{}`\n", kind.slug())),
                "docs/problems.md has no section for {kind:?}"
            );
        }
    }

    #[test]
    fn on_constraint_leaves_other_errors_alone() {
        let result: Result<(), sqlx::Error> = Err(sqlx::Error::PoolTimedOut);
        let error = result
            .on_constraint("users_email_key", |_| ApiError::DuplicateEmail)
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
