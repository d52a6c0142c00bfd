//! The transactional outbox (migration 0004): the user writes that also record their event,
//! and the relay's reads and deletes.
//!
//! Each write is the statement of `db::users` wrapped in a data-modifying CTE that inserts
//! the outbox row from what the change returned: one statement, so the event commits or
//! rolls back with the change (a duplicate e-mail fails the whole statement), and a write
//! that changes nothing (no such user, `If-Match` missed) inserts nothing.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Columns of `User`, as in `db::users`.
macro_rules! columns {
    () => {
        "id, name, email, created_at, updated_at, version"
    };
}

/// Inserts the outbox row of every user the CTE `changed` returned, as `kind`.
macro_rules! record {
    ($kind:literal) => {
        concat!(
            ", event AS (INSERT INTO outbox (kind, user_id, name, email, created_at, updated_at, version) \
             SELECT '",
            $kind,
            "', id, name, email, created_at, updated_at, version FROM changed) \
             SELECT ",
            columns!(),
            " FROM changed"
        )
    };
}

/// `db::users`' insert, also recording a `created` event (same binds).
pub const INSERT: &str = concat!(
    "WITH changed AS (INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING ",
    columns!(),
    ")",
    record!("created")
);

/// `db::inserts`' statement, also recording a `created` event for each row it inserted (a
/// create skipped for its e-mail records nothing).
pub const INSERT_MANY: &str = concat!(
    "WITH changed AS (INSERT INTO users (id, name, email) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
     ON CONFLICT DO NOTHING RETURNING ",
    columns!(),
    ")",
    record!("created")
);

/// `db::users`' update, also recording an `updated` event (same binds).
pub const UPDATE: &str = concat!(
    "WITH changed AS (UPDATE users SET name = $2, email = $3, updated_at = now() \
     WHERE id = $1 AND ($4::bigint IS NULL OR version = $4) RETURNING ",
    columns!(),
    ")",
    record!("updated")
);

/// `db::users`' patch, also recording an `updated` event (same binds).
pub const PATCH: &str = concat!(
    "WITH changed AS (UPDATE users SET name = coalesce($2, name), \
     email = coalesce($3, email), updated_at = now() \
     WHERE id = $1 AND ($4::bigint IS NULL OR version = $4) RETURNING ",
    columns!(),
    ")",
    record!("updated")
);

/// `db::users`' delete, also recording a `deleted` event (`{"id": ...}` only); returns how
/// many rows it deleted.
pub const DELETE: &str = "WITH changed AS (DELETE FROM users WHERE id = $1 \
     AND ($2::bigint IS NULL OR version = $2) RETURNING id), \
     event AS (INSERT INTO outbox (kind, user_id) SELECT 'deleted', id FROM changed) \
     SELECT count(*) FROM changed";

/// One outbox row as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub event_id: Uuid,
    pub kind: String,
    pub user_id: Uuid,
    pub name: Option<String>,
    pub email: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: Option<i64>,
    pub occurred_at: DateTime<Utc>,
}

/// The oldest `limit` unpublished rows, in id order.
pub async fn oldest(conn: &mut PgConnection, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as::<_, Row>(
        "SELECT id, event_id, kind, user_id, name, email, created_at, updated_at, version, \
         occurred_at FROM outbox ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Deletes published rows by primary key: row locks only, held for one short statement.
pub async fn delete_published(conn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Rows waiting, and the age in seconds of the oldest (0 when none).
pub async fn backlog(conn: &mut PgConnection) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), coalesce(extract(epoch FROM now() - min(occurred_at))::float8, 0) \
         FROM outbox",
    )
    .fetch_one(&mut *conn)
    .await
}

/// The advisory lock whose holder is the one relay publishing (any other fixed number works,
/// as long as every replica uses the same one).
const RELAY_LOCK: i64 = 0x7573_6572_5f65_7674; // "user_evt"

/// Takes the relay lock on this session if no other session holds it. Postgres releases it
/// when the session ends, including when the replica holding it dies.
pub async fn try_lead(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RELAY_LOCK)
        .fetch_one(&mut *conn)
        .await
}
