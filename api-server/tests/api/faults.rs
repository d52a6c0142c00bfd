use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Options, assert_problem, build_app, eventually, page_ids, spawn_app, spawn_app_with,
};
use crate::services::PgServer;

/// Redis is frozen (SIGSTOP), not killed: a killed Redis comes back empty, which would hide
/// a missed eviction. Rows change by SQL while it is frozen, so only NOTIFYs (which cannot
/// reach the frozen Redis) evict; when it thaws it still holds every old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_stream_every_request_succeeds_and_no_old_value_survives() {
    let app = Arc::new(spawn_app().await);
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(
            app.create_user_id("before", &format!("r{i}@example.com"))
                .await,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (app, ids, stop) = (app.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, Vec::new());
                let mut n = r;
                while !stop.load(Ordering::Relaxed) {
                    let status = app.get_user(&ids[n % ids.len()]).await.status();
                    if status.is_success() {
                        ok += 1
                    } else {
                        failed.push(status.as_u16())
                    }
                    n += 4;
                }
                (ok, failed)
            })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "every user cached and served from the cache",
        || async { app.cached_reads().await > 100.0 },
    )
    .await;

    let redis = app.redis.clone().unwrap();
    let notified = app
        .metric("cache_invalidations_total{source=\"notify\"}")
        .await;
    redis.pause();
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    let updated = sqlx::query("UPDATE users SET name = 'after'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 20);
    eventually(
        Duration::from_secs(10),
        "the 20 NOTIFYs to be handled",
        || async {
            app.metric("cache_invalidations_total{source=\"notify\"}")
                .await
                >= notified + 20.0
        },
    )
    .await;
    redis.resume();
    let hits = app.cached_reads().await;
    eventually(Duration::from_secs(10), "cache hits to resume", || async {
        app.cached_reads().await > hits + 20.0
    })
    .await;

    // Redis still holds "before" for every id: none of it may be served.
    for id in &ids {
        let read: Value = app.get_user(id).await.json().await.unwrap();
        assert_eq!(
            read["name"], "after",
            "an old value survived the freeze: {read}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for reader in readers {
        let (o, f) = reader.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!("{ok} requests succeeded across the Redis freeze");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// Postgres crashes (immediate stop, fsync on): every write acknowledged before the crash
/// must be there after crash recovery.
async fn postgres_crashing_is_503_and_recovers_without_losing_acknowledged_writes() {
    let app = Arc::new(
        spawn_app_with(Options {
            own_postgres: true,
            acquire_timeout_ms: Some(300),
            ..Options::default()
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (app, stop) = (app.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acknowledged, mut other) = (Vec::new(), HashSet::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = app
                    .post_user(&json!({ "name": "w", "email": format!("w{n}@example.com") }))
                    .await;
                match response.status().as_u16() {
                    201 => acknowledged.push(
                        response.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    ),
                    status => {
                        other.insert(status);
                    }
                }
                n += 1;
            }
            (acknowledged, other)
        })
    };
    eventually(
        Duration::from_secs(5),
        "some acknowledged writes",
        || async {
            let page: Value = app.list("?limit=20").await.json().await.unwrap();
            page["items"].as_array().unwrap().len() >= 20
        },
    )
    .await;

    let pg = app.pg.clone();
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.crash()
    })
    .await
    .unwrap();

    // Every replica shares this Postgres: they stay ready and answer 503 problems
    // themselves rather than all leaving the Service (and clients seeing a bare 502).
    eventually(
        Duration::from_secs(10),
        "/readyz to report Postgres down",
        || async { app.get_json("/readyz").await["postgres"] == "down" },
    )
    .await;
    assert_eq!(app.get("/readyz").await.status(), 200);
    let problem = assert_problem(
        app.post_user(&json!({ "name": "x", "email": "down@example.com" }))
            .await,
        503,
    )
    .await;
    assert!(!problem["detail"].as_str().unwrap().contains("127.0.0.1"));
    assert_problem(app.list("").await, 503).await;

    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "/readyz to report Postgres up",
        || async { app.get_json("/readyz").await["postgres"] == "up" },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "writes to succeed again",
        || async {
            app.post_user(
                &json!({ "name": "x", "email": format!("{}@example.com", uuid::Uuid::new_v4()) }),
            )
            .await
            .status()
                == 201
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "the invalidation feed to resubscribe",
        || async { app.get_json("/readyz").await["cache_trusted"] == true },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, other) = writer.await.unwrap();

    assert!(!acknowledged.is_empty());
    assert!(
        other.iter().all(|s| *s == 503),
        "only 503s while down, got {other:?}"
    );
    let listed: HashSet<String> = page_ids(&app.list_pages(500).await).into_iter().collect();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !listed.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_replicas_starting_at_once_migrate_a_fresh_database_safely() {
    let pg = tokio::task::spawn_blocking(PgServer::shared).await.unwrap();
    let database = pg.create_database();

    let apps = futures::future::join_all((0..8).map(|_| {
        build_app(Options {
            database: Some((pg.clone(), database.clone())),
            no_redis: true,
            ..Options::default()
        })
    }))
    .await;

    for app in &apps {
        app.wait_until_ready().await;
        assert_eq!(
            app.create_user("x", &format!("{}@example.com", uuid::Uuid::new_v4()))
                .await["name"],
            "x"
        );
    }
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&pg.url(&database)).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(applied, api_server::startup::MIGRATOR.iter().count() as i64);
    drop(apps);
    pg.drop_database(&database);
}

#[tokio::test]
async fn a_dead_redis_fails_neither_requests_nor_readiness() {
    let app = spawn_app().await;
    app.redis.as_ref().unwrap().kill();
    let user = app.create_user("Ada", "ada@example.com").await;
    for _ in 0..5 {
        assert_eq!(
            app.get_user(user["id"].as_str().unwrap()).await.status(),
            200
        );
    }
    let readiness = app.get_json("/readyz").await;
    assert_eq!(readiness["status"], "ready", "Redis never fails readiness");
    assert_eq!(readiness["redis"], "down");
}

#[tokio::test]
async fn a_redis_that_stops_answering_costs_little_and_is_skipped_after_a_few_timeouts() {
    // Every read must reach Redis: the test is about its calls.
    let app = spawn_app_with(Options {
        cache_local_max_bytes: Some(0),
        ..Options::default()
    })
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap();
    app.get_user(id).await;
    let redis = app.redis.clone().unwrap();

    redis.pause();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(app.get_user(id).await.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    let errors = app.metric("cache_errors_total").await;
    let bypassed = app.metric("cache_bypassed_total").await;
    redis.resume();

    // Each Redis call gives up after 20 ms; once a window of calls has failed, the breaker
    // skips Redis entirely.
    assert!(
        slowest < Duration::from_millis(500),
        "slowest read took {slowest:?}"
    );
    assert!(
        (1.0..=12.0).contains(&errors),
        "{errors} Redis timeouts before the breaker opened"
    );
    assert!(bypassed >= 15.0, "only {bypassed} reads skipped Redis");
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_up_does_not_stop_the_server() {
    let redis = Arc::new(
        tokio::task::spawn_blocking(crate::services::RedisServer::start)
            .await
            .unwrap(),
    );
    redis.kill();

    let app = build_app(Options {
        redis: Some(redis.clone()),
        // "The cache is used once Redis is up" must mean Redis, not the in-process layer.
        cache_local_max_bytes: Some(0),
        ..Options::default()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "readiness without Redis",
        || async {
            app.client
                .get(app.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    assert_eq!(
        app.get_user(user["id"].as_str().unwrap()).await.status(),
        200
    );

    // When Redis comes up, the cache is used without a restart.
    tokio::task::spawn_blocking({
        let redis = redis.clone();
        move || redis.restart()
    })
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "cache hits once Redis is up",
        || async {
            app.get_user(user["id"].as_str().unwrap()).await;
            app.metric("cache_hits_total").await > 0.0
        },
    )
    .await;
}

/// SIGCONTs a frozen process when dropped, so a failing test does not leave it stopped.
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Self {
        signal("-STOP", pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(signal: &str, pid: i32) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_listen_connection_is_noticed_and_no_stale_value_is_served() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    app.get_user(&id).await;
    let hits = app.cached_reads().await;
    let cached: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(cached["name"], "Ada");
    assert!(app.cached_reads().await > hits, "served from the cache");

    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'api-server-listener'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(pids.len(), 1, "one listener backend: {pids:?}");
    // The backend keeps its socket open but answers nothing, and never reads the NOTIFY.
    let frozen = Frozen::stop(pids[0]);

    let updated = sqlx::query("UPDATE users SET name = 'Grace' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "the update made in SQL to be served",
        || async {
            let read: Value = app.get_user(&id).await.json().await.unwrap();
            read["name"] == "Grace"
        },
    )
    .await;
    let lag = started.elapsed();
    // Once fresh, never stale again; and the cache is back in use on a new connection while
    // the old backend is still frozen.
    eventually(
        Duration::from_secs(10),
        "the cache to be trusted again",
        || async { app.get_json("/readyz").await["cache_trusted"] == true },
    )
    .await;
    let hits = app.cached_reads().await;
    for _ in 0..50 {
        let read: Value = app.get_user(&id).await.json().await.unwrap();
        assert_eq!(read["name"], "Grace", "stale read after {lag:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(app.cached_reads().await > hits, "cache in use again");
    println!("fresh value served {lag:?} after the UPDATE, listener backend frozen");
    drop(frozen);
}
