//! Conditional requests (RFC 9110 section 13): a user's `ETag` is its version, quoted;
//! `If-None-Match` turns a GET into a 304; `If-Match` guards PUT, PATCH and DELETE.
//!
//! The comparisons are the `headers` crate's (strong for `If-Match`, weak for
//! `If-None-Match`); this module only decides what a write must find.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use headers::{ETag, HeaderMapExt, IfMatch, IfNoneMatch};

use crate::error::ApiError;

/// The strong entity tag of a user at `version`: the number, quoted.
fn quoted(version: i64) -> String {
    format!("\"{version}\"")
}

/// `quoted` as a header value (digits and quotes are always a valid one).
pub fn etag_value(version: i64) -> HeaderValue {
    HeaderValue::try_from(quoted(version)).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn etag(version: i64) -> Option<ETag> {
    quoted(version).parse().ok()
}

/// The `If-None-Match` of a GET; a malformed one is a 400 like a malformed `If-Match`.
pub fn if_none_match(headers: &HeaderMap) -> Result<Option<IfNoneMatch>, ApiError> {
    check_syntax(headers, &header::IF_NONE_MATCH)?;
    Ok(headers.typed_get::<IfNoneMatch>())
}

/// Whether the user at `version` is one the client already holds (weak comparison).
pub fn not_modified(if_none_match: &IfNoneMatch, version: i64) -> bool {
    etag(version).is_some_and(|etag| !if_none_match.precondition_passes(&etag))
}

/// 304 Not Modified: no body, the validator repeated.
pub fn not_modified_response(version: i64) -> Response {
    (
        StatusCode::NOT_MODIFIED,
        [(header::ETAG, etag_value(version))],
    )
        .into_response()
}

/// The `If-Match` of a write. A malformed one is refused: writing without the condition the
/// client asked for could lose an update.
pub fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    check_syntax(headers, &header::IF_MATCH)?;
    headers
        .typed_try_get::<IfMatch>()
        .map_err(|_| malformed(&header::IF_MATCH))
}

fn malformed(name: &header::HeaderName) -> ApiError {
    ApiError::BadRequest(format!("{name} must be * or a list of quoted entity tags"))
}

/// The `headers` crate skips entity tags it cannot parse; a client that sent one meant
/// something, so it hears that its header was not understood.
fn check_syntax(headers: &HeaderMap, name: &header::HeaderName) -> Result<(), ApiError> {
    let valid = headers
        .get_all(name)
        .iter()
        .all(|value| is_entity_tags(value.as_bytes()));
    if valid { Ok(()) } else { Err(malformed(name)) }
}

/// `*` or `1#entity-tag` (RFC 9110 8.8.3), with visible ASCII only inside the quotes.
fn is_entity_tags(value: &[u8]) -> bool {
    let ows = |rest: &[u8]| -> usize {
        rest.iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count()
    };
    if value.trim_ascii() == b"*" {
        return true;
    }
    let mut rest = &value[ows(value)..];
    loop {
        rest = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(quoted) = rest.strip_prefix(b"\"") else {
            return false;
        };
        let opaque = quoted
            .iter()
            .take_while(|&&b| b == 0x21 || (0x23..=0x7E).contains(&b))
            .count();
        let Some(after) = quoted[opaque..].strip_prefix(b"\"") else {
            return false;
        };
        rest = &after[ows(after)..];
        match rest.split_first() {
            None => return true,
            Some((b',', more)) => rest = &more[ows(more)..],
            Some(_) => return false,
        }
    }
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

    fn parsed_if_none_match(value: &'static str) -> IfNoneMatch {
        if_none_match(&headers(header::IF_NONE_MATCH, value))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn if_none_match_with_the_current_tag_is_not_modified_also_weakly() {
        for value in ["\"3\"", "W/\"3\"", "\"1\", \"3\"", "*"] {
            assert!(not_modified(&parsed_if_none_match(value), 3), "{value}");
        }
        assert!(!not_modified(&parsed_if_none_match("\"2\""), 3));
        assert!(if_none_match(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn entity_tag_lists_follow_rfc_9110() {
        for valid in [
            "*",
            " * ",
            "\"a\"",
            "W/\"a\"",
            "\"\"",
            "\"a,b\"",
            "\"1\" ,\t\"2\"",
            "W/\"1\", \"2\" ",
        ] {
            assert!(is_entity_tags(valid.as_bytes()), "{valid:?}");
        }
        for invalid in [
            "",
            "3",
            "\"3",
            "3\"",
            "\"a\" \"b\"",
            "\"a\",",
            "w/\"a\"",
            "\"a b\"",
            "*, \"a\"",
            "null",
            "_n",
        ] {
            assert!(!is_entity_tags(invalid.as_bytes()), "{invalid:?}");
        }
    }

    #[test]
    fn malformed_conditional_headers_are_bad_requests() {
        for name in [header::IF_MATCH, header::IF_NONE_MATCH] {
            let headers = headers(name.clone(), "3");
            let result = if name == header::IF_MATCH {
                if_match(&headers).map(|_| ())
            } else {
                if_none_match(&headers).map(|_| ())
            };
            assert!(matches!(result, Err(ApiError::BadRequest(_))), "{name}");
        }
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
