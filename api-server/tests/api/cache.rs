use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Options, eventually, spawn_app, spawn_app_with};

#[tokio::test]
async fn the_second_read_is_a_redis_hit_without_the_in_process_layer() {
    let app = spawn_app_with(Options {
        cache_local_max_bytes: Some(0),
        ..Options::default()
    })
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap();

    let first: Value = app.get_user(id).await.json().await.unwrap();
    let second: Value = app.get_user(id).await.json().await.unwrap();

    assert_eq!(first, second);
    assert_eq!(
        app.metric("db_user_reads_total").await,
        1.0,
        "one Postgres read"
    );
    assert_eq!(app.metric("cache_misses_total").await, 1.0);
    assert_eq!(app.metric("cache_hits_total").await, 1.0);
}

#[tokio::test]
async fn an_update_evicts_and_the_next_read_sees_it() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap();
    app.get_user(id).await; // cache it

    let put = app
        .put_user(id, &json!({ "name": "Ada L.", "email": "ada@example.com" }))
        .await;
    assert_eq!(put.status(), 200);

    let read: Value = app.get_user(id).await.json().await.unwrap();
    assert_eq!(read["name"], "Ada L.");
    assert_eq!(
        app.metric("db_user_reads_total").await,
        2.0,
        "the update forced a fresh read"
    );
}

#[tokio::test]
async fn a_delete_evicts() {
    let app = spawn_app().await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap();
    assert_eq!(app.get_user(id).await.status(), 200);

    assert_eq!(app.delete_user(id).await.status(), 204);

    assert_eq!(app.get_user(id).await.status(), 404);
}

#[tokio::test]
async fn without_redis_reads_come_from_postgres() {
    let app = spawn_app_with(Options {
        no_redis: true,
        ..Options::default()
    })
    .await;
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap();

    for _ in 0..3 {
        assert_eq!(app.get_user(id).await.status(), 200);
    }

    assert_eq!(app.metric("db_user_reads_total").await, 3.0);
    assert_eq!(app.metric("cache_hits_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_reads_of_a_cold_id_make_one_query() {
    // A burst of 100 requests on a debug build can take a GET over the 20 ms default; a
    // timed-out lookup after the flight landed is then a second query. This test is about
    // coalescing, so Redis gets time to answer.
    let app = Arc::new(
        spawn_app_with(Options {
            redis_timeout_ms: Some(250),
            ..Options::default()
        })
        .await,
    );
    let user = app.create_user("Ada", "ada@example.com").await;
    let id = user["id"].as_str().unwrap().to_owned();
    // Open the connections first, so the reads really arrive together.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));

    let reads: Vec<_> = (0..100)
        .map(|_| {
            let (app, id, barrier) = (app.clone(), id.clone(), barrier.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().no_proxy().build().unwrap();
                client.get(app.url("/healthz")).send().await.unwrap();
                barrier.wait().await;
                let response = client
                    .get(app.url(&format!("/users/{id}")))
                    .send()
                    .await
                    .unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    for read in reads {
        let (status, body) = read.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, user);
    }

    assert_eq!(
        app.metric("db_user_reads_total").await,
        1.0,
        "exactly one Postgres query"
    );
}

/// The fill script is cached by Redis; a Redis that lost it (restart, `SCRIPT FLUSH`) gets
/// it again from the fill that meets NOSCRIPT, and that fill still stores.
#[tokio::test]
async fn a_fill_after_redis_lost_its_scripts_still_stores() {
    // About the script fallback, not timeouts: Redis gets time to answer on a loaded machine.
    let app = spawn_app_with(Options {
        redis_timeout_ms: Some(250),
        // The second read must reach Redis to show the value was stored there.
        cache_local_max_bytes: Some(0),
        ..Options::default()
    })
    .await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    assert_eq!(app.get_user(&id).await.status(), 200); // the first fill loads the script
    let client = redis::Client::open(app.redis.as_ref().unwrap().url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let put = app
        .put_user(
            &id,
            &json!({ "name": "Ada L.", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(put.status(), 200);
    // The write's own NOTIFY evicts again; a fill racing it would rightly be refused.
    eventually(Duration::from_secs(2), "the write's NOTIFY", || async {
        app.metric("cache_invalidations_total{source=\"notify\"}")
            .await
            >= 1.0
    })
    .await;

    let read: Value = app.get_user(&id).await.json().await.unwrap(); // miss: NOSCRIPT, EVAL
    assert_eq!(read["name"], "Ada L.");
    let hits = app.metric("cache_hits_total").await;
    let again: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(again, read);
    assert_eq!(app.metric("cache_hits_total").await, hits + 1.0, "stored");
    assert_eq!(
        app.metric("cache_flushes_total").await,
        1.0,
        "only the start-up flush"
    );
}

/// Clients that disconnect while their read waits for Postgres drop the single-flight
/// leader with every follower; the ids' entries must go with them.
#[tokio::test]
async fn ten_thousand_cancelled_misses_leave_no_single_flight_entry() {
    let app = spawn_app().await;
    let redis = app.redis.as_ref().unwrap();
    let metrics = Arc::new(api_server::metrics::Metrics::new());
    let cache = api_server::cache::Cache::connect(
        &redis.url(),
        Duration::from_secs(60),
        Duration::from_millis(20),
        0,
        metrics,
    )
    .unwrap();
    // One connection, held here: every load waits for it, as behind a saturated pool.
    let pool = api_server::db::Db::from(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&app.pg.url(&app.database))
            .await
            .unwrap(),
    );
    let held = pool.acquire().await.unwrap();
    // 5,000 ids, two readers each: leaders and followers are both cancelled.
    let ids: Vec<uuid::Uuid> = (0..5_000).map(|_| uuid::Uuid::now_v7()).collect();
    let reads: Vec<_> = ids
        .iter()
        .chain(ids.iter())
        .map(|&id| {
            let (cache, pool) = (cache.clone(), pool.clone());
            tokio::spawn(async move {
                let _ = cache
                    .get_user(id, || async {
                        let user = api_server::db::users::get(&pool, id).await?;
                        Ok(user.map(|_| axum::body::Bytes::new()))
                    })
                    .await;
            })
        })
        .collect();
    eventually(
        Duration::from_secs(30),
        "every id to wait on Postgres",
        || async { cache.flights_in_progress() == ids.len() },
    )
    .await;

    for read in &reads {
        read.abort();
    }
    for read in reads {
        assert!(read.await.unwrap_err().is_cancelled());
    }

    assert_eq!(
        cache.flights_in_progress(),
        0,
        "single-flight entries leaked"
    );
    drop(held);
}

/// The fill race, forced step by step: a reader misses and reads the old row; a writer
/// updates the row and evicts; only then does the reader try to store. The old value must
/// not be stored at all, not even for the round trip until a clean-up: keyspace events show
/// every write Redis applies to the user's keys, so a transient store cannot hide.
#[tokio::test]
async fn a_fill_that_read_the_row_before_a_write_and_its_eviction_stores_nothing() {
    let app = spawn_app().await;
    let id = app.create_user_id("before", "ada@example.com").await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    let redis = app.redis.as_ref().unwrap();
    // A cache of our own on the app's Redis (its own epoch), so this test owns every fill.
    let cache = api_server::cache::Cache::connect(
        &redis.url(),
        Duration::from_secs(60),
        Duration::from_millis(250),
        0,
        Arc::new(api_server::metrics::Metrics::new()),
    )
    .unwrap();
    cache.set_trusted(true);
    let pool = sqlx::PgPool::connect(&app.pg.url(&app.database))
        .await
        .unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("CONFIG")
        .arg(&["SET", "notify-keyspace-events", "K$g"][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let mut events = client.get_async_pubsub().await.unwrap();
    events
        .psubscribe(format!("__keyspace@0__:api-server:user:*:{id}"))
        .await
        .unwrap();
    events.subscribe("__keyspace@0__:marker").await.unwrap();

    // The writer runs exactly once, between the fill's Postgres read and its store.
    let writes = write_once_before_store(&cache, &pool, id, api_server::cache::Layer::Redis);
    let db = api_server::db::Db::from(pool.clone());
    let load = || async {
        let user = api_server::db::users::get(&db, id).await?;
        Ok(user.map(|u| axum::body::Bytes::from(serde_json::to_vec(&u).unwrap())))
    };

    let raced = cache.get_user(id, load).await.unwrap().unwrap();
    // The read started before the write, so the old value is a correct answer to it.
    assert_eq!(
        serde_json::from_slice::<Value>(&raced).unwrap()["name"],
        "before"
    );
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the write ran inside the fill"
    );

    // Events arrive in the order Redis applied the writes: once the marker's event is here,
    // every write of the fill has been reported.
    redis::cmd("SET")
        .arg(&["marker", "1"][..])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let mut applied = Vec::new();
    let mut stream = events.on_message();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let message = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut stream))
            .await
            .expect("the marker's keyspace event")
            .unwrap();
        if message.get_channel_name() == "__keyspace@0__:marker" {
            break;
        }
        applied.push(message.get_payload::<String>().unwrap());
    }
    assert!(
        !applied.iter().any(|event| event == "set"),
        "the old value was stored after the eviction (Redis applied: {applied:?})"
    );

    let next = cache.get_user(id, load).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&next).unwrap()["name"],
        "after"
    );
}

#[tokio::test]
async fn the_second_read_is_an_in_process_hit_and_redis_is_not_asked() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;

    let first: Value = app.get_user(&id).await.json().await.unwrap();
    let second: Value = app.get_user(&id).await.json().await.unwrap();

    assert_eq!(first, second);
    assert_eq!(app.metric("db_user_reads_total").await, 1.0);
    assert_eq!(app.metric("cache_local_misses_total").await, 1.0);
    assert_eq!(app.metric("cache_local_hits_total").await, 1.0);
    assert_eq!(
        app.metric("cache_misses_total").await,
        1.0,
        "Redis asked once"
    );
    assert_eq!(app.metric("cache_hits_total").await, 0.0);
}

/// The in-process layer hears what Redis hears: a change made in SQL (no API write on this
/// replica) reaches it through NOTIFY, long before the TTL.
#[tokio::test]
async fn an_update_made_in_sql_evicts_the_in_process_layer_through_notify() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    app.get_user(&id).await;
    app.get_user(&id).await;
    assert_eq!(
        app.metric("cache_local_hits_total").await,
        1.0,
        "cached in process"
    );

    let pool = sqlx::PgPool::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    sqlx::query("UPDATE users SET name = 'Grace' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(2), "the SQL update served", || async {
        let read: Value = app.get_user(&id).await.json().await.unwrap();
        read["name"] == "Grace"
    })
    .await;
}

/// The fill race of the in-process layer, forced: the reader read the old row, then a
/// write commits and evicts before the reader stores. The store must be refused, or the old
/// value would be served until the TTL.
#[tokio::test]
async fn an_in_process_fill_that_read_the_row_before_a_write_and_its_eviction_stores_nothing() {
    let app = spawn_app().await;
    let id = app.create_user_id("before", "ada@example.com").await;
    let id = uuid::Uuid::parse_str(&id).unwrap();
    let metrics = Arc::new(api_server::metrics::Metrics::new());
    let cache = api_server::cache::Cache::connect(
        &app.redis.as_ref().unwrap().url(),
        Duration::from_secs(60),
        Duration::from_millis(250),
        1 << 20,
        metrics.clone(),
    )
    .unwrap();
    cache.set_trusted(true);
    let pool = sqlx::PgPool::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    let writes = write_once_before_store(&cache, &pool, id, api_server::cache::Layer::Local);
    let db = api_server::db::Db::from(pool.clone());
    let read = || async {
        let load = || async {
            let user = api_server::db::users::get(&db, id).await?;
            Ok(user.map(|u| axum::body::Bytes::from(serde_json::to_vec(&u).unwrap())))
        };
        let json = cache.get_user(id, load).await.unwrap().unwrap();
        serde_json::from_slice::<Value>(&json).unwrap()["name"].clone()
    };

    assert_eq!(read().await, "before", "the read started before the write");
    assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(read().await, "after", "the old value was stored in process");
    assert_eq!(metrics.cache_local_hits.get(), 0);
    assert_eq!(read().await, "after");
    assert_eq!(
        metrics.cache_local_hits.get(),
        1,
        "the fresh value is cached"
    );
}

#[tokio::test]
async fn the_in_process_layer_stays_within_its_bytes() {
    let app = spawn_app().await;
    const MAX: u64 = 64 * 1024;
    let cache = api_server::cache::Cache::connect(
        &app.redis.as_ref().unwrap().url(),
        Duration::from_secs(60),
        Duration::from_millis(250),
        MAX,
        Arc::new(api_server::metrics::Metrics::new()),
    )
    .unwrap();
    cache.set_trusted(true);
    let value = axum::body::Bytes::from(vec![b'x'; 300]);
    for _ in 0..2_000 {
        let value = value.clone();
        cache
            .get_user(uuid::Uuid::now_v7(), || async move { Ok(Some(value)) })
            .await
            .unwrap();
    }
    let held = cache.local_bytes();
    assert!(held > 0 && held <= MAX, "{held} bytes held, bound {MAX}");
}

/// Makes `cache` update `id` to "after" and evict it exactly once, inside the first fill of
/// `layer` (between its read and its store); returns the count of hook runs that wrote.
fn write_once_before_store(
    cache: &api_server::cache::Cache,
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
    layer: api_server::cache::Layer,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (pool, counter) = (pool.clone(), writes.clone());
    cache.set_before_store_hook(move |cache, hook_id, hook_layer| {
        let (pool, writes) = (pool.clone(), counter.clone());
        Box::pin(async move {
            if hook_id != id
                || hook_layer != layer
                || writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0
            {
                return;
            }
            sqlx::query("UPDATE users SET name = 'after' WHERE id = $1")
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
            cache.evict(id, "local").await;
        })
    });
    writes
}
