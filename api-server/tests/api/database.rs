//! Postgres that is slow or contended: statement, lock and idle-in-transaction timeouts.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{Options, TestApp, assert_problem, eventually, spawn_app_with};

async fn connect(app: &TestApp) -> PgConnection {
    PgConnection::connect(&app.pg.url(&app.database))
        .await
        .unwrap()
}

/// Statements the server's request connections are running now.
async fn active_statements(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'api-server'
           AND state = 'active'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_a_row_lock_is_503_within_the_lock_timeout_and_never_commits() {
    let app = spawn_app_with(Options {
        no_redis: true,
        lock_timeout_ms: Some(300),
        ..Options::default()
    })
    .await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    let mut holder = connect(&app).await;
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *lock)
        .await
        .unwrap();

    let started = Instant::now();
    let response = app
        .client
        .put(app.url(&format!("/users/{id}")))
        .json(&json!({ "name": "Grace", "email": "grace@example.com" }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        response.headers().contains_key("retry-after"),
        "no Retry-After"
    );
    assert_problem(response, 503).await;
    assert!(
        waited < Duration::from_secs(5),
        "answered after {waited:?}, not within the lock timeout"
    );

    lock.rollback().await.unwrap();
    let observer = PgPool::connect(&app.pg.url(&app.database)).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "no statement of the server still running",
        || async { active_statements(&observer).await == 0 },
    )
    .await;
    let user: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(user["name"], "Ada", "the refused write committed after all");
}
