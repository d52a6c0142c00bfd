//! Creates written together (`db/inserts.rs`): one statement for the creates that queued
//! behind a running one, and each create still answered as if it had been written alone.
//!
//! To make a batch form for certain, a test holds a `SHARE` lock on `users` (which every
//! INSERT waits for), sends its creates, waits until all but the first are queued (the
//! `db_inserts_queued` gauge), then releases the lock.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Options, TestApp, eventually, spawn_app_with};

/// One lane (a pool of 2), and a lock wait longer than the test needs.
async fn one_lane() -> TestApp {
    spawn_app_with(Options {
        pool_max: Some(2),
        lock_timeout_ms: Some(30_000),
        ..Options::default()
    })
    .await
}

/// Sends `bodies[0]` while `users` is locked, and once its INSERT waits for the lock, the
/// rest at once; releases the lock when they are all queued behind it. Returns (status,
/// body) of each, in order.
async fn send_while_locked(app: &TestApp, bodies: &[Value]) -> Vec<(u16, Value)> {
    let url = app.pg.url(&app.database);
    let mut lock = PgConnection::connect(&url).await.unwrap();
    // Not the locking session: its view of pg_stat_activity is fixed for its transaction.
    let mut watch = PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut lock).await.unwrap();
    sqlx::query("LOCK TABLE users IN SHARE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    let post = |body: &Value| {
        let body = body.clone();
        async move {
            let response = app.post_user(&body).await;
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let first = post(&bodies[0]);
    let rest_then_release = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO users%'",
            )
            .fetch_one(&mut watch)
            .await
            .unwrap();
            if waiting == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first create never waited for the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let rest = join_all(bodies[1..].iter().map(post));
        let release = async {
            let behind = (bodies.len() - 1) as f64;
            eventually(
                Duration::from_secs(10),
                "every create but the first queued",
                || async { app.metric("db_inserts_queued").await >= behind },
            )
            .await;
            sqlx::query("COMMIT").execute(&mut lock).await.unwrap();
        };
        tokio::join!(rest, release).0
    };
    let (first, rest) = tokio::join!(first, rest_then_release);
    std::iter::once(first).chain(rest).collect()
}

#[tokio::test]
async fn creates_queued_together_are_one_statement_and_each_gets_its_own_answer() {
    let app = one_lane().await;
    app.create_user("Taken", "taken@example.com").await;
    // The lone first create; then 20 new e-mails, each sent twice (the second time in other
    // case), and one already taken.
    let mut bodies = vec![json!({"name": "Alone", "email": "alone@example.com"})];
    bodies.extend((0..20).flat_map(|i| {
        [
            json!({"name": format!("first {i}"), "email": format!("user{i}@example.com")}),
            json!({"name": format!("second {i}"), "email": format!("USER{i}@Example.com")}),
        ]
    }));
    bodies.push(json!({"name": "Late", "email": "TAKEN@example.com"}));
    let statements_before = app.metric("db_insert_batch_rows_count").await;
    let rows_before = app.metric("db_insert_batch_rows_sum").await;

    let answers = send_while_locked(&app, &bodies).await;

    // Exactly one create per e-mail won; the other got the same 409 as a lone duplicate.
    for i in 0..20 {
        let pair = [&answers[1 + 2 * i], &answers[2 + 2 * i]];
        let created: Vec<_> = pair.iter().filter(|(s, _)| *s == 201).collect();
        let conflicts: Vec<_> = pair.iter().filter(|(s, _)| *s == 409).collect();
        assert_eq!(
            (created.len(), conflicts.len()),
            (1, 1),
            "user{i}: {pair:?}"
        );
        assert_eq!(
            conflicts[0].1["type"]
                .as_str()
                .map(|t| t.ends_with("#duplicate-email")),
            Some(true),
            "{pair:?}"
        );
        // The winner's body is its own row, and reads back the same.
        let body = &created[0].1;
        assert!(
            body["email"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(&format!("user{i}@example.com")),
            "{body}"
        );
        let read: Value = app
            .get_user(body["id"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(&read, body);
    }
    assert_eq!(answers[0].0, 201, "{:?}", answers[0]);
    assert_eq!(answers[41].0, 409, "{:?}", answers[41]);

    // The first create ran alone (it found the lane free); the other 41 queued behind it
    // and were written by one statement.
    let statements = app.metric("db_insert_batch_rows_count").await - statements_before;
    let rows = app.metric("db_insert_batch_rows_sum").await - rows_before;
    assert_eq!(
        (statements, rows),
        (2.0, 42.0),
        "statements and rows for 42 creates"
    );
    let listed: Value = app.list("?limit=100").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 22, "{listed}");
}

#[tokio::test]
async fn a_batch_postgres_refuses_is_written_create_by_create() {
    let app = one_lane().await;
    // A rule our validation does not know: Postgres refuses one e-mail, as a check or
    // trigger added by a DBA would.
    let mut admin = PgConnection::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.email = 'refused@example.com' THEN \
         RAISE EXCEPTION 'refused by a trigger'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_one BEFORE INSERT ON users \
         FOR EACH ROW EXECUTE FUNCTION refuse_one();",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let bodies: Vec<Value> = (0..8)
        .map(|i| {
            let email = if i == 4 {
                "refused@example.com".to_owned()
            } else {
                format!("fine{i}@example.com")
            };
            json!({"name": format!("user {i}"), "email": email})
        })
        .collect();

    let answers = send_while_locked(&app, &bodies).await;

    for (i, (status, body)) in answers.iter().enumerate() {
        if i == 4 {
            // An error of the database that is not the client's fault: 500, as alone.
            assert_eq!(*status, 500, "{body}");
        } else {
            assert_eq!(*status, 201, "create {i}: {body}");
        }
    }
    let listed: Value = app.list("?limit=100").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 7, "{listed}");
}
