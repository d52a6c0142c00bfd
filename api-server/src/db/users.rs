//! Queries on `users`. Ids are UUIDv7 (time-ordered), so keyset pagination by id returns
//! users roughly in creation order and inserts land at the right edge of the index.
//!
//! Each call goes through [`Db`]: bounded in time; reads are retried once when their
//! connection was dead, writes never are (see `bounded.rs`).

use futures::FutureExt;
use uuid::Uuid;

use super::Db;
use crate::domain::{NewUser, User};
use crate::extract::Page;

#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn insert(db: &Db, id: Uuid, user: &NewUser) -> Result<User, sqlx::Error> {
    db.write(|conn| {
        sqlx::query_as::<_, User>(
            "INSERT INTO users (id, name, email) VALUES ($1, $2, $3) \
             RETURNING id, name, email, created_at, updated_at",
        )
        .bind(id)
        .bind(user.name.as_str().to_owned())
        .bind(user.email.as_str().to_owned())
        .fetch_one(conn)
        .boxed()
    })
    .await
}

#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn get(db: &Db, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    db.read(|conn| {
        sqlx::query_as::<_, User>(
            "SELECT id, name, email, created_at, updated_at FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(conn)
        .boxed()
    })
    .await
}

/// Replaces name and email. The `users_changed` trigger NOTIFYs in the same transaction.
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn update(db: &Db, id: Uuid, user: &NewUser) -> Result<Option<User>, sqlx::Error> {
    db.write(|conn| {
        sqlx::query_as::<_, User>(
            "UPDATE users SET name = $2, email = $3, updated_at = now() WHERE id = $1 \
             RETURNING id, name, email, created_at, updated_at",
        )
        .bind(id)
        .bind(user.name.as_str().to_owned())
        .bind(user.email.as_str().to_owned())
        .fetch_optional(conn)
        .boxed()
    })
    .await
}

/// Returns whether a row was deleted. The trigger NOTIFYs in the same transaction.
#[tracing::instrument(skip_all, fields(user_id = %id))]
pub async fn delete(db: &Db, id: Uuid) -> Result<bool, sqlx::Error> {
    let result = db
        .write(|conn| {
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(conn)
                .boxed()
        })
        .await?;
    Ok(result.rows_affected() > 0)
}

/// One page in id order, plus the cursor of the next page when there is one.
///
/// Asks for one row more than the limit to know whether a next page exists without a
/// COUNT. Two statements rather than `($1 IS NULL OR id > $1)` so each has a plain index plan.
#[tracing::instrument(skip_all, fields(limit = page.limit))]
pub async fn list(db: &Db, page: Page) -> Result<(Vec<User>, Option<Uuid>), sqlx::Error> {
    let fetch = i64::from(page.limit) + 1;
    let mut users = db
        .read(|conn| {
            let query = match page.after {
                None => sqlx::query_as::<_, User>(
                    "SELECT id, name, email, created_at, updated_at FROM users \
                     ORDER BY id LIMIT $1",
                ),
                Some(after) => sqlx::query_as::<_, User>(
                    "SELECT id, name, email, created_at, updated_at FROM users \
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
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
