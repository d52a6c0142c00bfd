//! Queries on `users`. Ids are UUIDv7 (time-ordered), so keyset pagination by id returns
//! users roughly in creation order and inserts land at the right edge of the index.
//!
//! Each call goes through [`Db`]: bounded in time; reads are retried once when their
//! connection was dead, writes never are (see `bounded.rs`). A call binds owned values,
//! since a read may run twice.
//!
//! Writes take an optional expected `version` (from `If-Match`): with one, the row changes
//! only if its version is still that one, in the same statement, so no other write can slip
//! in between the check and the change. The `users_versioned` trigger bumps the version.
//!
//! Spans are at debug level: at the default filter (info) the request span already names
//! the method, path and request id, and a second span per query would be formatted and
//! allocated on every request for nothing.
//!
//! With `events` (EVENTS_KAFKA_BROKERS set) a write runs `outbox`'s form of its statement,
//! which also records the event in the same statement; without, the plain one (no outbox
//! row at all). Both take the same binds.

use futures::FutureExt;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Db, outbox};
use crate::domain::{NewUser, User, UserPatch};
use crate::extract::Page;

/// The columns of `User`, as a macro so every statement stays a `&'static str`.
macro_rules! columns {
    () => {
        "id, name, email, created_at, updated_at, version"
    };
}

/// `db::inserts`' statement without events: every row of the three arrays (ids, names,
/// emails), a row whose e-mail is taken skipped rather than failing the rest.
pub const INSERT_MANY: &str = concat!(
    "INSERT INTO users (id, name, email) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
     ON CONFLICT DO NOTHING RETURNING ",
    columns!()
);

#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn insert(db: &Db, id: Uuid, user: &NewUser, events: bool) -> Result<User, sqlx::Error> {
    db.write(|conn| insert_on(conn, id, user.clone(), events).boxed())
        .await
}

/// `insert` on a connection the caller holds (inside its transaction).
pub async fn insert_on(
    conn: &mut PgConnection,
    id: Uuid,
    user: NewUser,
    events: bool,
) -> Result<User, sqlx::Error> {
    const PLAIN: &str = concat!(
        "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) RETURNING ",
        columns!()
    );
    sqlx::query_as::<_, User>(if events { outbox::INSERT } else { PLAIN })
        .bind(id)
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .fetch_one(conn)
        .await
}

#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn get(db: &Db, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    db.read(|conn| {
        sqlx::query_as::<_, User>(concat!("SELECT ", columns!(), " FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(conn)
            .boxed()
    })
    .await
}

/// The user with this e-mail address, ignoring case (the `users_email_key` index).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<User>, sqlx::Error> {
    db.read(|conn| {
        sqlx::query_as::<_, User>(concat!(
            "SELECT ",
            columns!(),
            " FROM users WHERE lower(email) = lower($1)"
        ))
        .bind(email.to_owned())
        .fetch_optional(conn)
        .boxed()
    })
    .await
}

/// The current version, to check an `If-Match` against.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn version(db: &Db, id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    db.read(|conn| {
        sqlx::query_scalar("SELECT version FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .boxed()
    })
    .await
}

/// Replaces name and email; `None` when there is no such user (at `expected`, if given).
/// The `users_changed` trigger NOTIFYs in the same transaction.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn update(
    db: &Db,
    id: Uuid,
    user: &NewUser,
    expected: Option<i64>,
    events: bool,
) -> Result<Option<User>, sqlx::Error> {
    const PLAIN: &str = concat!(
        "UPDATE users SET name = $2, email = $3, updated_at = now() \
         WHERE id = $1 AND ($4::bigint IS NULL OR version = $4) RETURNING ",
        columns!()
    );
    db.write(|conn| {
        sqlx::query_as::<_, User>(if events { outbox::UPDATE } else { PLAIN })
            .bind(id)
            .bind(user.name.as_str().to_owned())
            .bind(user.email.as_str().to_owned())
            .bind(expected)
            .fetch_optional(conn)
            .boxed()
    })
    .await
}

/// Changes the fields the patch names (it must name one); `None` as for `update`.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn patch(
    db: &Db,
    id: Uuid,
    patch: &UserPatch,
    expected: Option<i64>,
    events: bool,
) -> Result<Option<User>, sqlx::Error> {
    const PLAIN: &str = concat!(
        "UPDATE users SET name = coalesce($2, name), email = coalesce($3, email), \
         updated_at = now() \
         WHERE id = $1 AND ($4::bigint IS NULL OR version = $4) RETURNING ",
        columns!()
    );
    db.write(|conn| {
        sqlx::query_as::<_, User>(if events { outbox::PATCH } else { PLAIN })
            .bind(id)
            .bind(patch.name.as_ref().map(|n| n.as_str().to_owned()))
            .bind(patch.email.as_ref().map(|e| e.as_str().to_owned()))
            .bind(expected)
            .fetch_optional(conn)
            .boxed()
    })
    .await
}

/// Returns whether a row was deleted (at `expected`, if given). The trigger NOTIFYs in the
/// same transaction.
#[tracing::instrument(level = "debug", skip_all, fields(user_id = %id))]
pub async fn delete(
    db: &Db,
    id: Uuid,
    expected: Option<i64>,
    events: bool,
) -> Result<bool, sqlx::Error> {
    let deleted: i64 = db
        .write(|conn| {
            let plain = "WITH changed AS (DELETE FROM users WHERE id = $1 \
                 AND ($2::bigint IS NULL OR version = $2) RETURNING 1) \
                 SELECT count(*) FROM changed";
            sqlx::query_scalar(if events { outbox::DELETE } else { plain })
                .bind(id)
                .bind(expected)
                .fetch_one(conn)
                .boxed()
        })
        .await?;
    Ok(deleted > 0)
}

/// One page in id order, plus the id of its last user when there is a next page.
///
/// Asks for one row more than the limit to know whether a next page exists without a
/// COUNT. Two statements rather than `($1 IS NULL OR id > $1)` so each has a plain index plan.
#[tracing::instrument(level = "debug", skip_all, fields(limit = page.limit))]
pub async fn list(db: &Db, page: Page) -> Result<(Vec<User>, Option<Uuid>), sqlx::Error> {
    let fetch = i64::from(page.limit) + 1;
    let mut users = db
        .read(|conn| {
            let query = match page.after {
                None => sqlx::query_as::<_, User>(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM users ORDER BY id LIMIT $1"
                )),
                Some(after) => sqlx::query_as::<_, User>(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                ))
                .bind(after),
            };
            query.bind(fetch).fetch_all(conn).boxed()
        })
        .await?;
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let next = if users.len() > limit {
        users.truncate(limit);
        users.last().map(|u| u.id)
    } else {
        None
    };
    Ok((users, next))
}
