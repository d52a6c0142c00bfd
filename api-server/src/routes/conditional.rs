//! Conditional requests (RFC 9110 section 13): a user's `ETag` is its version, quoted;
//! `If-None-Match` turns a GET into a 304; `If-Match` guards PUT, PATCH and DELETE.
//!
//! The comparisons are the `headers` crate's (strong for `If-Match`, weak for
//! `If-None-Match`); this module only decides what a write must find.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfMatch, IfNoneMatch};

use crate::error::ApiError;

/// The strong entity tag of a user at `version`.
pub fn etag_value(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn etag(version: i64) -> Option<ETag> {
    format!("\"{version}\"").parse().ok()
}

/// Whether a GET with these headers gets a 304 for the user at `version`. A malformed
/// `If-None-Match` is ignored (the full response is always a correct answer to a GET).
pub fn not_modified(headers: &HeaderMap, version: i64) -> bool {
    match (headers.typed_get::<IfNoneMatch>(), etag(version)) {
        (Some(if_none_match), Some(etag)) => !if_none_match.precondition_passes(&etag),
        _ => false,
    }
}

/// 304 Not Modified: no body, the validator repeated.
pub fn not_modified_response(version: i64) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::ETAG, etag_value(version))],
    )
        .into_response()
}

/// The `If-Match` of a write. One that cannot be read is refused, and tags that cannot be
/// parsed match nothing: writing without the condition the client asked for could lose an
/// update.
pub fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    headers
        .typed_try_get::<IfMatch>()
        .map_err(|_| ApiError::BadRequest("If-Match is not a list of entity tags or *".into()))
}

/// What a conditional write must find, once `If-Match` was compared with the stored version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No `If-Match`: write whatever is there; a missing user is a 404.
    None,
    /// `If-Match: *`: any version, but the user must exist (else 412).
    Exists,
    /// The stored version matched: write only if it still is this one (else 412).
    Version(i64),
}

impl Guard {
    /// The version the statement must find, if any.
    pub fn expected(self) -> Option<i64> {
        match self {
            Self::Version(version) => Some(version),
            Self::None | Self::Exists => None,
        }
    }

    /// The error when the write found nothing to change.
    pub fn missed(self, not_found: ApiError) -> ApiError {
        match self {
            Self::None => not_found,
            Self::Exists | Self::Version(_) => ApiError::PreconditionFailed,
        }
    }
}

/// Compares `If-Match` with the stored version (`None`: no such user). A user that does not
/// exist matches no `If-Match`, not even `*` (RFC 9110 13.1.1).
pub fn evaluate(if_match: &IfMatch, current: Option<i64>) -> Result<Guard, ApiError> {
    let Some(version) = current else {
        return Err(ApiError::PreconditionFailed);
    };
    if if_match.is_any() {
        return Ok(Guard::Exists);
    }
    match etag(version) {
        Some(etag) if if_match.precondition_passes(&etag) => Ok(Guard::Version(version)),
        _ => Err(ApiError::PreconditionFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_static(value));
        headers
    }

    fn parsed_if_match(value: &'static str) -> IfMatch {
        if_match(&headers(header::IF_MATCH, value))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn an_etag_is_the_quoted_version() {
        assert_eq!(etag_value(7), "\"7\"");
    }

    #[test]
    fn if_none_match_with_the_current_tag_is_not_modified_also_weakly() {
        for value in ["\"3\"", "W/\"3\"", "\"1\", \"3\"", "*"] {
            assert!(
                not_modified(&headers(header::IF_NONE_MATCH, value), 3),
                "{value}"
            );
        }
        assert!(!not_modified(&headers(header::IF_NONE_MATCH, "\"2\""), 3));
        assert!(!not_modified(&HeaderMap::new(), 3));
    }

    #[test]
    fn a_malformed_if_none_match_is_ignored() {
        assert!(!not_modified(&headers(header::IF_NONE_MATCH, "3"), 3));
    }

    #[test]
    fn if_match_with_the_current_tag_guards_that_version() {
        assert_eq!(
            evaluate(&parsed_if_match("\"2\", \"3\""), Some(3)).unwrap(),
            Guard::Version(3)
        );
    }

    #[test]
    fn if_match_with_a_stale_or_weak_tag_fails() {
        for value in ["\"2\"", "W/\"3\""] {
            let error = evaluate(&parsed_if_match(value), Some(3)).unwrap_err();
            assert!(matches!(error, ApiError::PreconditionFailed), "{value}");
        }
    }

    #[test]
    fn if_match_star_needs_only_existence() {
        let any = parsed_if_match("*");
        assert_eq!(evaluate(&any, Some(9)).unwrap(), Guard::Exists);
        assert!(matches!(
            evaluate(&any, None),
            Err(ApiError::PreconditionFailed)
        ));
    }

    #[test]
    fn a_missing_user_fails_any_if_match() {
        assert!(matches!(
            evaluate(&parsed_if_match("\"1\""), None),
            Err(ApiError::PreconditionFailed)
        ));
    }

    #[test]
    fn an_if_match_without_a_valid_tag_matches_nothing() {
        // The crate drops tags it cannot parse: an unquoted one can never match, so the
        // write is refused rather than done unconditionally.
        let error = evaluate(&parsed_if_match("3"), Some(3)).unwrap_err();
        assert!(matches!(error, ApiError::PreconditionFailed));
    }

    #[test]
    fn a_write_that_found_nothing_is_404_without_a_guard_else_412() {
        let not_found = || ApiError::NotFound("no user with this id");
        assert!(matches!(
            Guard::None.missed(not_found()),
            ApiError::NotFound(_)
        ));
        for guard in [Guard::Exists, Guard::Version(1)] {
            assert!(matches!(
                guard.missed(not_found()),
                ApiError::PreconditionFailed
            ));
        }
    }
}
