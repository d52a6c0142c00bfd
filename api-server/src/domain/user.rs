use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Email, UserName};

/// A stored user, as every endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct User {
    pub id: Uuid,
    #[schema(min_length = 1, max_length = 100, example = "Ada Lovelace")]
    pub name: String,
    #[schema(max_length = 254, example = "ada@example.com")]
    pub email: String,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "super::timestamp::serialize")]
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and grows by one on every change; the `ETag` is this number, quoted.
    #[schema(minimum = 1, example = 1)]
    pub version: i64,
}

// The name's pattern is what `UserName::parse` accepts: something other than white space,
// no control characters inside, white space around it trimmed. (Python's and ECMAScript's
// `\s` also match U+001C..U+001F, which Rust's trim keeps: hence `[^\S\x1c-\x1f]` for the
// trimmed ends.) No length bounds in the schema: they apply after trimming.
/// The body of `POST /users` and `PUT /users/{id}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UserBody {
    /// 1 to 100 characters once white space around it is trimmed; no control characters.
    #[schema(
        example = "Ada Lovelace",
        pattern = r"^[^\S\x1c-\x1f]*[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?[^\S\x1c-\x1f]*$"
    )]
    pub name: String,
    /// `local@domain`, at most 254 characters once trimmed; unique ignoring case.
    #[schema(example = "ada@example.com", format = "email")]
    pub email: String,
}

/// A validated user body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
}

/// A validated JSON merge patch (RFC 7396) of a user: the fields to change, others kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub name: Option<UserName>,
    pub email: Option<Email>,
}

impl UserPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none()
    }

    /// Checks every member it knows, like `NewUser`. Members it does not know (including
    /// the read-only `id`, timestamps and `version`) are ignored, as `PUT` ignores them.
    pub fn parse(patch: &serde_json::Value) -> Result<Self, Vec<FieldError>> {
        let Some(members) = patch.as_object() else {
            return Err(vec![FieldError {
                field: "body",
                message: "a merge patch of a user must be a JSON object",
            }]);
        };
        let mut errors = Vec::new();
        let name = member(members, "name", UserName::parse, &mut errors);
        let email = member(members, "email", Email::parse, &mut errors);
        if errors.is_empty() {
            Ok(Self { name, email })
        } else {
            Err(errors)
        }
    }
}

/// One member of a merge patch: absent is "keep", a string is parsed, null ("remove") and
/// other types are errors since every field of a user is required.
fn member<T>(
    members: &serde_json::Map<String, serde_json::Value>,
    field: &'static str,
    parse: fn(&str) -> Result<T, &'static str>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    let parsed = match members.get(field)? {
        serde_json::Value::String(raw) => parse(raw),
        serde_json::Value::Null => Err("is required and cannot be removed"),
        _ => Err("must be a string"),
    };
    parsed
        .map_err(|message| errors.push(FieldError { field, message }))
        .ok()
}

/// One invalid field, reported in a 422 problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: &'static str,
    pub message: &'static str,
}

impl TryFrom<UserBody> for NewUser {
    type Error = Vec<FieldError>;

    /// Checks every field, so the client hears about all its mistakes at once.
    fn try_from(body: UserBody) -> Result<Self, Self::Error> {
        let name = UserName::parse(&body.name);
        let email = Email::parse(&body.email);
        match (name, email) {
            (Ok(name), Ok(email)) => Ok(Self { name, email }),
            (name, email) => {
                let mut errors = Vec::with_capacity(2);
                if let Err(message) = name {
                    errors.push(FieldError {
                        field: "name",
                        message,
                    });
                }
                if let Err(message) = email {
                    errors.push(FieldError {
                        field: "email",
                        message,
                    });
                }
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, email: &str) -> UserBody {
        UserBody {
            name: name.into(),
            email: email.into(),
        }
    }

    #[test]
    fn a_valid_body_becomes_a_new_user() {
        let user = NewUser::try_from(body(" Ada ", "ada@example.com")).unwrap();
        assert_eq!(user.name.as_str(), "Ada");
        assert_eq!(user.email.as_str(), "ada@example.com");
    }

    #[test]
    fn an_invalid_name_is_reported_by_field() {
        let errors = NewUser::try_from(body("", "ada@example.com")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "name");
    }

    #[test]
    fn a_patch_keeps_absent_fields_and_validates_present_ones() {
        let patch = UserPatch::parse(&serde_json::json!({ "name": " Ada " })).unwrap();
        assert_eq!(patch.name.unwrap().as_str(), "Ada");
        assert!(patch.email.is_none());
        assert!(UserPatch::parse(&serde_json::json!({})).unwrap().is_empty());
    }

    #[test]
    fn a_patch_ignores_members_it_does_not_know() {
        let patch = UserPatch::parse(&serde_json::json!({ "id": "x", "version": 9 })).unwrap();
        assert!(patch.is_empty());
    }

    #[test]
    fn a_patch_cannot_remove_or_mistype_a_field() {
        let errors =
            UserPatch::parse(&serde_json::json!({ "name": null, "email": 3 })).unwrap_err();
        let found: Vec<_> = errors.iter().map(|e| (e.field, e.message)).collect();
        assert_eq!(
            found,
            [
                ("name", "is required and cannot be removed"),
                ("email", "must be a string")
            ]
        );
    }

    #[test]
    fn a_patch_that_is_not_an_object_is_refused() {
        for patch in [
            serde_json::json!([]),
            serde_json::json!("x"),
            serde_json::json!(null),
        ] {
            let errors = UserPatch::parse(&patch).unwrap_err();
            assert_eq!(errors[0].field, "body", "{patch}");
        }
    }

    #[test]
    fn both_invalid_fields_are_reported() {
        let errors = NewUser::try_from(body("", "nope")).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "email"]);
    }
}
