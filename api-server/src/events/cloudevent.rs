//! CloudEvents 1.0 in structured mode: the whole event is one JSON document, the Kafka
//! message's value, with `content-type: application/cloudevents+json`.

use chrono::SecondsFormat;
use serde::Serialize;
use uuid::Uuid;

use crate::db::outbox::Row;
use crate::domain::User;

pub const CONTENT_TYPE: &str = "application/cloudevents+json";

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("outbox row {id}: unknown kind `{kind}`")]
    UnknownKind { id: i64, kind: String },
    #[error("outbox row {id}: a {kind} event without the user's columns")]
    MissingUser { id: i64, kind: &'static str },
    #[error("cannot serialise the event of outbox row {id}")]
    Json {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created,
    Updated,
    Deleted,
}

impl Kind {
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Created => "dev.scalable.user.created",
            Self::Updated => "dev.scalable.user.updated",
            Self::Deleted => "dev.scalable.user.deleted",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    User(User),
    Deleted { id: Uuid },
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: Uuid,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    subject: String,
    time: String,
    datacontenttype: &'static str,
    data: Data,
}

/// The Kafka key (the user id, so one user's events land on one partition, in order) and
/// the JSON value of the event of `row`.
pub fn encode(row: &Row, source: &str) -> Result<(String, Vec<u8>), EventError> {
    let kind = match row.kind.as_str() {
        "created" => Kind::Created,
        "updated" => Kind::Updated,
        "deleted" => Kind::Deleted,
        other => {
            return Err(EventError::UnknownKind {
                id: row.id,
                kind: other.to_owned(),
            });
        }
    };
    let data = match kind {
        Kind::Deleted => Data::Deleted { id: row.user_id },
        Kind::Created | Kind::Updated => Data::User(user(row).ok_or(EventError::MissingUser {
            id: row.id,
            kind: kind.name(),
        })?),
    };
    let event = CloudEvent {
        specversion: "1.0",
        id: row.event_id,
        source,
        event_type: kind.event_type(),
        subject: row.user_id.to_string(),
        time: row.occurred_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        datacontenttype: "application/json",
        data,
    };
    let json =
        serde_json::to_vec(&event).map_err(|source| EventError::Json { id: row.id, source })?;
    Ok((row.user_id.to_string(), json))
}

/// The user as the API returns it (the same `Serialize`), from the row's columns.
fn user(row: &Row) -> Option<User> {
    Some(User {
        id: row.user_id,
        name: row.name.clone()?,
        email: row.email.clone()?,
        created_at: row.created_at?,
        updated_at: row.updated_at?,
        version: row.version?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn row(kind: &str) -> Row {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        Row {
            id: 7,
            event_id: Uuid::now_v7(),
            kind: kind.into(),
            user_id: Uuid::now_v7(),
            name: Some("Ada".into()),
            email: Some("ada@example.com".into()),
            created_at: Some(at),
            updated_at: Some(at),
            version: Some(2),
            occurred_at: at,
        }
    }

    fn decode(row: &Row) -> (String, serde_json::Value) {
        let (key, value) = encode(row, "users-api").unwrap();
        (key, serde_json::from_slice(&value).unwrap())
    }

    #[test]
    fn an_update_is_a_cloudevent_with_the_user_as_the_api_returns_it() {
        let row = row("updated");
        let (key, event) = decode(&row);
        assert_eq!(key, row.user_id.to_string());
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], row.event_id.to_string());
        assert_eq!(event["source"], "users-api");
        assert_eq!(event["type"], "dev.scalable.user.updated");
        assert_eq!(event["subject"], row.user_id.to_string());
        assert_eq!(event["time"], "2026-01-02T03:04:05Z");
        let api = serde_json::to_value(user(&row).unwrap()).unwrap();
        assert_eq!(event["data"], api);
        assert_eq!(event["data"]["version"], 2);
    }

    #[test]
    fn a_deletion_carries_only_the_id() {
        let mut row = row("deleted");
        row.name = None;
        let (_, event) = decode(&row);
        assert_eq!(event["type"], "dev.scalable.user.deleted");
        assert_eq!(event["data"], serde_json::json!({ "id": row.user_id }));
    }

    #[test]
    fn a_row_that_cannot_be_an_event_is_an_error() {
        assert!(matches!(
            encode(&row("renamed"), "s"),
            Err(EventError::UnknownKind { .. })
        ));
        let mut created = row("created");
        created.email = None;
        assert!(matches!(
            encode(&created, "s"),
            Err(EventError::MissingUser { .. })
        ));
    }
}
