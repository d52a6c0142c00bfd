//! Start-up and readiness: the port first, the schema after; readiness from kept state.

use std::process::Command;
use std::time::{Duration, Instant};

use api_server::config::MigrateMode;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{Options, TestApp, assert_problem, build_app, eventually, spawn_app_with};
use crate::services::PgServer;

/// A fresh database on the shared server, dropped by the caller.
async fn fresh_database() -> (std::sync::Arc<PgServer>, String) {
    let pg = tokio::task::spawn_blocking(PgServer::shared).await.unwrap();
    let database = pg.create_database();
    (pg, database)
}

async fn build_within(options: Options) -> TestApp {
    tokio::time::timeout(Duration::from_secs(10), build_app(options))
        .await
        .expect("the app binds without waiting for the schema")
}

/// `/healthz` answers 200: the process is up, whatever the schema's state.
async fn wait_for_healthz(app: &TestApp) {
    eventually(Duration::from_secs(5), "/healthz", || async {
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_answers_while_a_migration_waits_and_readyz_is_503_until_it_is_done() {
    let (pg, database) = fresh_database().await;
    let url = pg.url(&database);
    let mut blocker = PgConnection::connect(&url).await.unwrap();
    api_server::startup::MIGRATOR
        .run(&mut blocker)
        .await
        .unwrap();
    // A migration that cannot finish yet: its bookkeeping table is locked.
    let mut lock = blocker.begin().await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let app = build_within(Options {
        database: Some((pg.clone(), database.clone())),
        no_redis: true,
        ..Options::default()
    })
    .await;
    wait_for_healthz(&app).await;
    let readiness = app.get("/readyz").await;
    assert_eq!(readiness.status(), 503);
    let readiness: serde_json::Value = readiness.json().await.unwrap();
    assert_eq!(readiness["schema_ready"], false);
    let refused = app
        .post_user(&json!({ "name": "Ada", "email": "ada@example.com" }))
        .await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 503).await;

    lock.commit().await.unwrap();
    app.wait_until_ready().await;
    app.create_user("Ada", "ada@example.com").await;
    drop(app);
    pg.drop_database(&database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_migrate_false_the_server_waits_for_a_separate_migrate_only_step() {
    let (pg, database) = fresh_database().await;
    let app = build_within(Options {
        database: Some((pg.clone(), database.clone())),
        no_redis: true,
        migrate: Some(MigrateMode::False),
        ..Options::default()
    })
    .await;
    wait_for_healthz(&app).await;
    // Whatever time passes, it never migrates by itself.
    let readiness: serde_json::Value = app.get_json("/readyz").await;
    assert_eq!(readiness["schema_ready"], false, "{readiness}");
    assert_eq!(app.get("/readyz").await.status(), 503);

    let url = pg.url(&database);
    let migrated = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_api-server"))
            .env("DATABASE_URL", url)
            .env("MIGRATE", "only")
            .env("LOG_FORMAT", "text")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(migrated.status.success(), "MIGRATE=only: {migrated:?}");

    app.wait_until_ready().await;
    app.create_user("Ada", "ada@example.com").await;
    drop(app);
    pg.drop_database(&database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_leaves_the_pod_ready() {
    let app = spawn_app_with(Options {
        no_redis: true,
        pool_max: Some(2),
        lock_timeout_ms: Some(0),
        ..Options::default()
    })
    .await;
    let ids = [
        app.create_user_id("A", "a@example.com").await,
        app.create_user_id("B", "b@example.com").await,
    ];
    let url = app.pg.url(&app.database);
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = ANY($1::uuid[]) FOR UPDATE")
        .bind(ids.to_vec())
        .execute(&mut *lock)
        .await
        .unwrap();
    // Two writes wait behind the locks, holding both pool connections.
    let app = std::sync::Arc::new(app);
    let writes: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (app, id) = (app.clone(), id.clone());
            tokio::spawn(async move {
                let body = json!({ "name": "W", "email": format!("w{i}@example.com") });
                app.put_user(&id, &body).await.status()
            })
        })
        .collect();
    let observer = PgPool::connect(&url).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "both pool connections waiting on the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'api-server'
                   AND wait_event_type = 'Lock'",
            )
            .fetch_one(&observer)
            .await
            .unwrap();
            waiting == 2
        },
    )
    .await;

    for _ in 0..5 {
        let started = Instant::now();
        let response = app.get("/readyz").await;
        assert_eq!(response.status(), 200, "a busy pool made the pod unready");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    lock.rollback().await.unwrap();
    for write in writes {
        assert_eq!(write.await.unwrap(), 200);
    }
}
