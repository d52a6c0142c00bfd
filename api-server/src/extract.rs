//! Extractors whose rejections are problem+json like every other error.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use serde::Deserialize;
use uuid::Uuid;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::{Email, FieldError};
use crate::error::ApiError;

/// Largest accepted request body; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 500;

/// `axum::Json` with problem+json rejections.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::Unprocessable(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("application/json")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            _ => Self::BadRequest("the request body could not be read".into()),
        }
    }
}

pub const MERGE_PATCH_JSON: &str = "application/merge-patch+json";

/// A JSON merge patch body (RFC 7396): `Content-Type: application/merge-patch+json` (else
/// 415), then any JSON value (a syntax error is a 400); what it may change is the domain's
/// business (`UserPatch`).
pub struct MergePatch(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for MergePatch {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_merge_patch = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(MERGE_PATCH_JSON));
        if !is_merge_patch {
            return Err(ApiError::UnsupportedMediaType(MERGE_PATCH_JSON));
        }
        let body =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                    _ => ApiError::BadRequest("the request body could not be read".into()),
                })?;
        serde_json::from_slice(&body)
            .map(Self)
            .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))
    }
}

/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): 1 to 255 visible ASCII
/// characters. Quotes of the draft's sf-string form are kept as part of the key.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let valid = values.next().is_none()
        && (1..=255).contains(&value.len())
        && value.as_bytes().iter().all(|b| b.is_ascii_graphic());
    match value.to_str() {
        Ok(key) if valid => Ok(Some(key)),
        _ => Err(ApiError::BadRequest(
            "Idempotency-Key must be one header of 1 to 255 visible ASCII characters".into(),
        )),
    }
}

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// `axum::extract::Path` where a malformed id is simply a resource that does not exist.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::NotFound("no user with this id")
    }
}

/// A resource id in the path: only the canonical form this API emits (36 characters,
/// lower-case, hyphenated). `urn:uuid:`, braced, simple and upper-case spellings of the same
/// UUID are not ids of ours, so they are 404 like any other unknown id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub Uuid);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = std::borrow::Cow::<str>::deserialize(deserializer)?;
        parse_canonical_uuid(&raw)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("not a canonical id"))
    }
}

/// Parses only the lower-case hyphenated form, e.g. `0190a5c4-7b1e-7d3a-9f00-0123456789ab`.
pub fn parse_canonical_uuid(raw: &str) -> Option<Uuid> {
    let bytes = raw.as_bytes();
    let canonical = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        });
    if canonical {
        Uuid::try_parse(raw).ok()
    } else {
        None
    }
}

/// `axum::extract::Query` with problem+json rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

/// `?limit=&after=&email=` as sent; strings so that a bad value is a 422 naming the field.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next` cursor of the previous page (opaque; the raw ids of earlier releases are
    /// still accepted).
    #[param(value_type = Option<String>, pattern = r"^(|A[Q-Za-f][A-Za-z0-9_-]{20}[AEIMQUYcgkosw048]|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")]
    pub after: Option<String>,
    /// Only the user with this address (case-insensitive): zero or one item. Not with `after`.
    #[param(value_type = Option<String>, format = "email")]
    pub email: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<Uuid>,
}

/// What `GET /users` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListQuery {
    Page(Page),
    /// `?email=`: a lookup, answered in the list shape.
    Email(Email),
}

impl TryFrom<PageQuery> for ListQuery {
    type Error = ApiError;

    fn try_from(query: PageQuery) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let limit = match query.limit.as_deref() {
            None => Some(DEFAULT_PAGE_LIMIT),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l)),
        };
        if limit.is_none() {
            errors.push(FieldError {
                field: "limit",
                message: "must be an integer from 1 to 500",
            });
        }
        let after = match query.after.as_deref() {
            None | Some("") => Some(None),
            Some(raw) => Cursor::decode(raw).map(Some),
        };
        if after.is_none() {
            errors.push(FieldError {
                field: "after",
                message: "is not a cursor this API returned",
            });
        }
        let email = match query.email.as_deref().map(Email::parse) {
            None => None,
            Some(Ok(email)) => Some(email),
            Some(Err(message)) => {
                errors.push(FieldError {
                    field: "email",
                    message,
                });
                None
            }
        };
        if email.is_some() && after.is_some_and(|a| a.is_some()) {
            errors.push(FieldError {
                field: "after",
                message: "cannot be combined with email",
            });
        }
        match (email, limit, after) {
            _ if !errors.is_empty() => Err(ApiError::Validation(errors)),
            (Some(email), _, _) => Ok(Self::Email(email)),
            (None, Some(limit), Some(after)) => Ok(Self::Page(Page { limit, after })),
            // A missing limit or cursor pushed an error above.
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

/// A page cursor: opaque to clients, so the order or filters behind it can change without
/// breaking them. Version 1 is the last id of the page, URL-safe base64 behind a version
/// byte. The raw ids that earlier releases returned are still accepted in this release.
pub struct Cursor;

impl Cursor {
    const V1: u8 = 1;

    pub fn encode(last: Uuid) -> String {
        let mut raw = [0u8; 17];
        raw[0] = Self::V1;
        raw[1..].copy_from_slice(last.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(cursor: &str) -> Option<Uuid> {
        if let Ok(raw) = URL_SAFE_NO_PAD.decode(cursor)
            && let [Self::V1, id @ ..] = raw.as_slice()
        {
            return Uuid::from_slice(id).ok();
        }
        // Deprecated: the raw-id cursors of earlier releases (one release of grace).
        parse_canonical_uuid(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(
        limit: Option<&str>,
        after: Option<&str>,
        email: Option<&str>,
    ) -> Result<ListQuery, ApiError> {
        ListQuery::try_from(PageQuery {
            limit: limit.map(Into::into),
            after: after.map(Into::into),
            email: email.map(Into::into),
        })
    }

    fn page(limit: Option<&str>, after: Option<&str>) -> Result<Page, ApiError> {
        match query(limit, after, None)? {
            ListQuery::Page(page) => Ok(page),
            other => panic!("not a page: {other:?}"),
        }
    }

    #[test]
    fn the_default_limit_is_50() {
        assert_eq!(
            page(None, None).unwrap(),
            Page {
                limit: 50,
                after: None
            }
        );
    }

    #[test]
    fn limits_from_1_to_500_are_accepted() {
        assert_eq!(page(Some("1"), None).unwrap().limit, 1);
        assert_eq!(page(Some("500"), None).unwrap().limit, 500);
    }

    #[test]
    fn limits_outside_1_to_500_are_rejected() {
        for bad in ["0", "501", "-1", "abc", "1.5", ""] {
            assert!(
                matches!(page(Some(bad), None), Err(ApiError::Validation(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_cursor_is_opaque_and_decodes_to_the_id_it_was_made_from() {
        let id = Uuid::now_v7();
        let cursor = Cursor::encode(id);
        assert!(!cursor.contains(&id.simple().to_string()[..8]), "{cursor}");
        assert!(
            cursor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(page(None, Some(&cursor)).unwrap().after, Some(id));
    }

    #[test]
    fn a_raw_id_cursor_of_an_earlier_release_still_works() {
        let id = Uuid::now_v7();
        assert_eq!(page(None, Some(&id.to_string())).unwrap().after, Some(id));
    }

    #[test]
    fn a_cursor_of_an_unknown_version_is_rejected() {
        let mut raw = [0u8; 17];
        raw[0] = 2;
        let Err(ApiError::Validation(errors)) = page(None, Some(&URL_SAFE_NO_PAD.encode(raw)))
        else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "after");
    }

    fn key_headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                &IDEMPOTENCY_KEY,
                axum::http::HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn an_idempotency_key_is_1_to_255_visible_ascii_characters() {
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            idempotency_key(&key_headers(&["\"8e03978e-40d5\""])).unwrap(),
            Some("\"8e03978e-40d5\"")
        );
        let longest: &'static str = "k".repeat(255).leak();
        assert_eq!(
            idempotency_key(&key_headers(&[longest])).unwrap(),
            Some(longest)
        );
    }

    #[test]
    fn other_idempotency_keys_are_bad_requests() {
        let too_long: &'static str = "k".repeat(256).leak();
        for values in [&["a b"][..], &[""], &[too_long], &["a", "b"]] {
            assert!(
                matches!(
                    idempotency_key(&key_headers(values)),
                    Err(ApiError::BadRequest(_))
                ),
                "{values:?}"
            );
        }
    }

    #[test]
    fn an_email_query_is_a_lookup() {
        let Ok(ListQuery::Email(email)) = query(None, None, Some(" Ada@Example.com ")) else {
            panic!("expected a lookup");
        };
        assert_eq!(email.as_str(), "Ada@Example.com");
    }

    #[test]
    fn an_invalid_email_query_is_rejected_naming_the_field() {
        let Err(ApiError::Validation(errors)) = query(None, None, Some("nope")) else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "email");
    }

    #[test]
    fn an_email_query_with_a_cursor_is_rejected() {
        let cursor = Cursor::encode(Uuid::now_v7());
        let Err(ApiError::Validation(errors)) = query(None, Some(&cursor), Some("ada@example.com"))
        else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "after");
    }

    /// The same UUID in every spelling `Uuid::try_parse` accepts besides the canonical one.
    fn non_canonical_spellings(id: Uuid) -> Vec<String> {
        vec![
            id.urn().to_string(),
            id.braced().to_string(),
            id.simple().to_string(),
            id.hyphenated().to_string().to_uppercase(),
            id.urn().to_string().to_uppercase(),
        ]
    }

    #[test]
    fn only_the_canonical_uuid_form_is_an_id() {
        let id = Uuid::now_v7();
        assert_eq!(parse_canonical_uuid(&id.to_string()), Some(id));
        for raw in non_canonical_spellings(id) {
            assert_eq!(
                Uuid::try_parse(&raw).ok(),
                Some(id),
                "{raw} is the same UUID"
            );
            assert_eq!(parse_canonical_uuid(&raw), None, "{raw}");
        }
        for raw in [
            "",
            "-",
            &"0".repeat(36),
            "0190a5c4-7b1e-7d3a-9f00-0123456789ag",
        ] {
            assert_eq!(parse_canonical_uuid(raw), None, "{raw}");
        }
    }

    #[test]
    fn a_path_id_deserializes_only_from_the_canonical_form() {
        let id = Uuid::now_v7();
        let parse = |raw: &str| serde_json::from_value::<Id>(serde_json::Value::from(raw));
        assert_eq!(parse(&id.to_string()).unwrap(), Id(id));
        for raw in non_canonical_spellings(id) {
            assert!(parse(&raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn a_non_canonical_cursor_is_rejected_naming_the_field() {
        for raw in non_canonical_spellings(Uuid::now_v7()) {
            let Err(ApiError::Validation(errors)) = page(None, Some(&raw)) else {
                panic!("expected a validation error for {raw}");
            };
            assert_eq!(errors[0].field, "after");
        }
    }

    #[test]
    fn a_garbage_cursor_is_rejected_naming_the_field() {
        let Err(ApiError::Validation(errors)) = page(None, Some("' OR 1=1 --")) else {
            panic!("expected a validation error");
        };
        assert_eq!(errors[0].field, "after");
    }
}
