//! The rate limit's client: the TCP peer by default, a trusted proxy's header when opted
//! into, IPv6 by /64, and a bounded number of buckets. Every request here comes from the same
//! TCP peer (127.0.0.1), as it would through an Ingress.

use std::num::{NonZeroU8, NonZeroUsize};

use api_server::client_address::Source;
use api_server::config::RateLimitConfig;

use crate::helpers::{Options, TestApp, assert_problem, spawn_app_with};

/// A token a second, so an exhausted bucket stays empty for the rest of a test step.
const RPS: u32 = 1;
const BURST: u32 = 3;

async fn app(source: Source, hops: u8, max_clients: usize) -> TestApp {
    spawn_app_with(Options {
        no_redis: true,
        rate_limit: Some((RPS, BURST)),
        rate_limit_keys: RateLimitConfig {
            client_address: source,
            trusted_hops: NonZeroU8::new(hops).unwrap(),
            max_clients: NonZeroUsize::new(max_clients).unwrap(),
            ..RateLimitConfig::default()
        },
        ..Options::default()
    })
    .await
}

async fn list(app: &TestApp, header: (&str, &str)) -> reqwest::Response {
    app.client
        .get(app.url("/users"))
        .header(header.0, header.1)
        .send()
        .await
        .unwrap()
}

/// Spends the bucket `header` falls in: 200s up to the burst, then a 429 problem+json.
async fn exhaust(app: &TestApp, header: (&str, &str)) {
    for _ in 0..BURST {
        let status = list(app, header).await.status();
        // A token may have come back meanwhile; the 429 below is what counts.
        assert!(status == 200 || status == 429, "{status} for {header:?}");
    }
    assert_problem(list(app, header).await, 429).await;
}

/// Whether `header` falls in a spent bucket: of two requests at least one is refused (a
/// fresh bucket would take both; a spent one gets at most one token back in the meantime).
async fn is_limited(app: &TestApp, header: (&str, &str)) -> bool {
    let mut refused = 0;
    for _ in 0..2 {
        let response = list(app, header).await;
        if response.status() == 429 {
            assert_problem(response, 429).await;
            refused += 1;
        } else {
            assert_eq!(response.status(), 200, "{header:?}");
        }
    }
    refused > 0
}

/// Spends the bucket of `spent`; then `same` is limited with it and `other` is not.
async fn assert_buckets(
    app: &TestApp,
    spent: (&str, &str),
    same: (&str, &str),
    other: (&str, &str),
) {
    exhaust(app, spent).await;
    assert!(
        is_limited(app, same).await,
        "{same:?} is not counted with {spent:?}"
    );
    assert_eq!(
        list(app, other).await.status(),
        200,
        "{other:?} is counted with {spent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_x_forwarded_for_trusted_each_forwarded_client_has_its_own_bucket() {
    let app = app(Source::XForwardedFor, 1, 1000).await;
    assert_buckets(
        &app,
        ("x-forwarded-for", "203.0.113.1"),
        // What the client wrote left of the proxy's entry is not who it is.
        ("x-forwarded-for", "198.51.100.7, 203.0.113.1"),
        ("x-forwarded-for", "203.0.113.2"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_forged_x_forwarded_for_gets_no_fresh_bucket() {
    let app = app(Source::Peer, 1, 1000).await;
    exhaust(&app, ("x-forwarded-for", "203.0.113.1")).await;
    assert!(is_limited(&app, ("x-forwarded-for", "203.0.113.2")).await);
    assert!(is_limited(&app, ("x-real-ip", "203.0.113.3")).await);
    assert!(is_limited(&app, ("forwarded", "for=203.0.113.4")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_with_two_trusted_hops_keys_on_the_second_for_from_the_right() {
    let app = app(Source::Forwarded, 2, 1000).await;
    assert_buckets(
        &app,
        ("forwarded", "for=203.0.113.1;proto=https, for=10.1.0.1"),
        (
            "forwarded",
            "for=198.51.100.7, for=203.0.113.1, for=10.1.0.2",
        ),
        ("forwarded", "for=\"[2001:db8::1]:4711\", for=10.1.0.1"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_real_ip_trusted_gives_each_client_its_own_bucket() {
    let app = app(Source::XRealIp, 1, 1000).await;
    assert_buckets(
        &app,
        ("x-real-ip", "203.0.113.1"),
        ("x-real-ip", "203.0.113.1"),
        ("x-real-ip", "203.0.113.2"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let app = app(Source::XForwardedFor, 1, 1000).await;
    assert_buckets(
        &app,
        ("x-forwarded-for", "2001:db8:1:2::1"),
        // A new address in the same /64 is the same client, the next /64 another one.
        ("x-forwarded-for", "2001:db8:1:2:ffff:ffff:ffff:ffff"),
        ("x-forwarded-for", "2001:db8:1:3::1"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_clients_have_a_bucket_and_the_rest_share_one() {
    let app = app(Source::XForwardedFor, 1, 2).await;
    assert_eq!(app.metric("rate_limit_clients").await, 0.0);
    let client = |n: u8| format!("203.0.113.{n}");
    for n in 1..=2 {
        assert_eq!(
            list(&app, ("x-forwarded-for", &client(n))).await.status(),
            200
        );
    }
    assert_eq!(app.metric("rate_limit_clients").await, 2.0);

    // Past the cap, new clients are counted together: spending the shared bucket with one
    // limits the others, but not the clients that have a bucket of their own.
    exhaust(&app, ("x-forwarded-for", &client(3))).await;
    for n in 4..=20 {
        assert!(
            is_limited(&app, ("x-forwarded-for", &client(n))).await,
            "{n}"
        );
        assert!(app.metric("rate_limit_clients").await <= 2.0);
    }
    assert_eq!(
        list(&app, ("x-forwarded-for", &client(1))).await.status(),
        200
    );
    assert_eq!(app.metric("rate_limit_clients").await, 2.0);
}
