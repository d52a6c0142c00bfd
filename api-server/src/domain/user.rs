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
}

/// The body of `POST /users` and `PUT /users/{id}`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UserBody {
    #[schema(example = "Ada Lovelace")]
    pub name: String,
    #[schema(example = "ada@example.com")]
    pub email: String,
}

/// A validated user body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub name: UserName,
    pub email: Email,
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
    fn both_invalid_fields_are_reported() {
        let errors = NewUser::try_from(body("", "nope")).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "email"]);
    }
}
