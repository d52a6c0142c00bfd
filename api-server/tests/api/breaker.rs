//! The Redis circuit breaker against a real Redis slowed down by our proxy.

use std::time::{Duration, Instant};

use crate::helpers::{Options, TestApp, eventually, spawn_app_with};
use crate::proxy::Mode;

async fn app_behind_proxy(redis_timeout_ms: Option<u64>) -> (TestApp, String) {
    let app = spawn_app_with(Options {
        redis_proxy: true,
        redis_timeout_ms,
        // Every read must reach Redis: these tests are about its calls.
        cache_local_max_bytes: Some(0),
        ..Options::default()
    })
    .await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    // The first calls also connect, which may take longer than a call's budget.
    eventually(Duration::from_secs(10), "a warm cache", || async {
        app.get_user(&id).await;
        app.metric("cache_hits_total").await > 0.0
    })
    .await;
    assert_eq!(app.metric("cache_breaker_open").await, 0.0);
    (app, id)
}

/// Reads `id` `n` times; returns the slowest read.
async fn read_n(app: &TestApp, id: &str, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(app.get_user(id).await.status(), 200);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test]
async fn a_redis_answering_in_200_ms_is_cut_off_by_the_timeout_and_the_breaker_opens() {
    let (app, id) = app_behind_proxy(None).await;
    let proxy = app.redis_proxy.as_ref().unwrap();

    // 100 ms each way: a 200 ms round trip, under the old 250 ms timeout.
    proxy.set(Mode::Delay(Duration::from_millis(100)));
    let slowest = read_n(&app, &id, 20).await;
    let open = app.metric("cache_breaker_open").await;
    let bypassed = app.metric("cache_bypassed_total").await;

    assert!(
        slowest < Duration::from_millis(150),
        "slowest read took {slowest:?}"
    );
    assert_eq!(open, 1.0, "the breaker is open");
    assert!(bypassed >= 10.0, "only {bypassed} reads skipped Redis");

    // Redis healthy again: a probe closes the breaker and reads hit the cache again.
    proxy.set(Mode::Pass);
    eventually(Duration::from_secs(10), "the breaker to close", || async {
        app.get_user(&id).await;
        app.metric("cache_breaker_open").await == 0.0
    })
    .await;
    let hits = app.metric("cache_hits_total").await;
    read_n(&app, &id, 3).await;
    assert!(app.metric("cache_hits_total").await >= hits + 3.0);
}

#[tokio::test]
async fn a_redis_slow_but_within_the_timeout_opens_the_breaker_on_latency() {
    // Timeout 300 ms, slow over 150 ms; a 200 ms round trip never times out.
    let (app, id) = app_behind_proxy(Some(300)).await;
    let errors = app.metric("cache_errors_total").await;
    app.redis_proxy
        .as_ref()
        .unwrap()
        .set(Mode::Delay(Duration::from_millis(100)));

    read_n(&app, &id, 15).await;

    assert_eq!(
        app.metric("cache_errors_total").await,
        errors,
        "no call failed"
    );
    assert_eq!(
        app.metric("cache_breaker_open").await,
        1.0,
        "open on latency"
    );
}

#[tokio::test]
async fn a_black_holed_redis_costs_each_read_at_most_a_timeout_until_the_breaker_opens() {
    let (app, id) = app_behind_proxy(None).await;
    app.redis_proxy.as_ref().unwrap().set(Mode::BlackHole);

    let slowest = read_n(&app, &id, 20).await;

    assert!(
        slowest < Duration::from_millis(150),
        "slowest read took {slowest:?}"
    );
    assert_eq!(app.metric("cache_breaker_open").await, 1.0);
}
