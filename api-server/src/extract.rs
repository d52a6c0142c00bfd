//! Extractors whose rejections are problem+json like every other error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use crate::domain::FieldError;
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
                Self::BadRequest("expected `Content-Type: application/json`".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            _ => Self::BadRequest("the request body could not be read".into()),
        }
    }
}

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

/// `?limit=&after=` as sent; strings so that a bad value is a 422 naming the field.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    pub limit: Option<String>,
    /// The `next` cursor of the previous page.
    #[param(value_type = Option<String>)]
    pub after: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<Uuid>,
}

impl TryFrom<PageQuery> for Page {
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
            Some(raw) => parse_canonical_uuid(raw).map(Some),
        };
        if after.is_none() {
            errors.push(FieldError {
                field: "after",
                message: "is not a cursor this API returned",
            });
        }
        match (limit, after) {
            (Some(limit), Some(after)) => Ok(Self { limit, after }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: Option<&str>, after: Option<&str>) -> Result<Page, ApiError> {
        Page::try_from(PageQuery {
            limit: limit.map(Into::into),
            after: after.map(Into::into),
        })
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
    fn a_cursor_is_an_id() {
        let id = Uuid::now_v7();
        assert_eq!(page(None, Some(&id.to_string())).unwrap().after, Some(id));
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
