//! Hostile and careless clients: oversized bodies sent blind, slow and idle connections,
//! too many connections, bad request ids.

use std::time::Duration;

use api_server::config::HttpLimits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::{Options, eventually, spawn_app_with};
use crate::raw;

fn no_redis() -> Options {
    Options {
        no_redis: true,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_sent_without_expect_always_gets_the_413() {
    let app = spawn_app_with(no_redis()).await;
    for size in [1usize << 20, 8 << 20] {
        let body = vec![b'a'; size];
        let head = format!(
            "POST /users HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {size}\r\n"
        );
        for attempt in 1..=20 {
            // A new connection each time, as a client that gave up on the last one would.
            let mut stream = raw::connect(app.port()).await;
            let response = raw::send(&mut stream, &head, &body)
                .await
                .unwrap_or_else(|e| panic!("{size}-byte body, attempt {attempt}: {e}"));
            assert_eq!(response.status, 413, "{size}-byte body, attempt {attempt}");
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(response.json()["status"], 413);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_body_sent_without_expect_gets_the_413() {
    let app = spawn_app_with(no_redis()).await;
    let size = 8usize << 20;
    let mut body = format!("{size:x}\r\n").into_bytes();
    body.extend(std::iter::repeat_n(b'a', size));
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = "POST /users HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\n";
    for attempt in 1..=5 {
        let mut stream = raw::connect(app.port()).await;
        let response = raw::send(&mut stream, head, &body)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_eq!(response.status, 413, "attempt {attempt}");
        assert_eq!(response.json()["status"], 413);
    }
}

fn with_limits(limits: HttpLimits) -> Options {
    Options {
        no_redis: true,
        http: Some(limits),
        ..Options::default()
    }
}

/// Sends one keep-alive `GET path` on `stream` and reads the answer.
async fn get_on(stream: &mut TcpStream, path: &str) -> raw::RawResponse {
    let head = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n");
    raw::send(stream, &head, b"").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_stop_half_way_through_the_request_line_are_closed() {
    let app = spawn_app_with(with_limits(HttpLimits {
        header_read_timeout_ms: 500,
        ..HttpLimits::default()
    }))
    .await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut stream = raw::connect(app.port()).await;
        stream.write_all(b"GET /users HT").await.unwrap();
        slow.push(stream);
    }
    // A client trickling its head byte by byte gains nothing either.
    let mut trickle = raw::connect(app.port()).await;
    let trickling = async {
        for byte in b"GET /users HTTP/1.1\r\nhost: x\r\n" {
            if trickle.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickling)
        .await
        .unwrap();

    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(
            raw::closed_within(stream, Duration::from_secs(5)).await,
            "slow connection {i} still open"
        );
    }
    assert!(raw::closed_within(&mut trickle, Duration::from_secs(5)).await);
    // And a client that sends its request at once is served.
    let mut prompt = raw::connect(app.port()).await;
    assert_eq!(get_on(&mut prompt, "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_only() {
    let app = spawn_app_with(with_limits(HttpLimits {
        idle_timeout_ms: 1000,
        header_read_timeout_ms: 60_000,
        ..HttpLimits::default()
    }))
    .await;
    let mut stream = raw::connect(app.port()).await;
    // Requests closer together than the timeout keep the connection.
    for _ in 0..5 {
        assert_eq!(get_on(&mut stream, "/healthz").await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle_since = std::time::Instant::now();
    assert!(
        raw::closed_within(&mut stream, Duration::from_secs(10)).await,
        "an idle connection is still open"
    );
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(700),
        "closed after {idle_for:?} idle, before the idle timeout"
    );
}

#[tokio::test]
async fn request_heads_over_the_header_limit_are_431() {
    let app = spawn_app_with(with_limits(HttpLimits {
        max_header_bytes: 4096,
        ..HttpLimits::default()
    }))
    .await;
    let within = format!(
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-pad: {}\r\n",
        "a".repeat(2048)
    );
    let over = format!(
        "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-pad: {}\r\n",
        "a".repeat(8192)
    );

    let mut stream = raw::connect(app.port()).await;
    assert_eq!(
        raw::send(&mut stream, &within, b"").await.unwrap().status,
        200
    );
    let mut stream = raw::connect(app.port()).await;
    assert_eq!(
        raw::send(&mut stream, &over, b"").await.unwrap().status,
        431
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_a_503_problem_and_the_cap_frees_up() {
    let app = spawn_app_with(with_limits(HttpLimits {
        max_connections: 4,
        ..HttpLimits::default()
    }))
    .await;
    // The readiness poll's pooled connection may hold a slot: fill the rest with ours, each
    // proven to be served.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = raw::connect(app.port()).await;
        let response = get_on(&mut stream, "/healthz").await;
        if response.status == 503 {
            break;
        }
        assert_eq!(response.status, 200);
        held.push(stream);
    }
    assert!(held.len() >= 3, "only {} connections served", held.len());
    // Whoever holds the rest, the cap is reached now.
    while held.len() < 4 {
        let mut stream = raw::connect(app.port()).await;
        if get_on(&mut stream, "/healthz").await.status != 200 {
            break;
        }
        held.push(stream);
    }

    let mut over = raw::connect(app.port()).await;
    let shed = get_on(&mut over, "/users").await;
    assert_eq!(shed.status, 503);
    assert_eq!(
        shed.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.json()["status"], 503);
    assert!(raw::closed_within(&mut over, Duration::from_secs(5)).await);

    drop(held.pop());
    eventually(
        Duration::from_secs(5),
        "a freed slot to be used",
        || async {
            let mut stream = raw::connect(app.port()).await;
            get_on(&mut stream, "/healthz").await.status == 200
        },
    )
    .await;
}

#[tokio::test]
async fn a_request_id_is_echoed_only_when_short_and_plain() {
    let app = spawn_app_with(no_redis()).await;
    let longest = "a".repeat(128);
    for good in ["abc-123", "A.b_C-9", longest.as_str()] {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", good)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], good);
    }
    let too_long = "a".repeat(129);
    for bad in [
        too_long.as_str(),
        "has space",
        "quote\"d",
        "path/like",
        "semi;colon",
        "<script>",
        "",
    ] {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, bad, "{bad:?} was echoed");
        assert!(
            !echoed.is_empty() && echoed.len() <= 128,
            "{bad:?} gave {echoed:?}"
        );
    }
    // Non-ASCII bytes too (reqwest refuses to send them, so by hand).
    let mut stream = raw::connect(app.port()).await;
    let head = "GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-request-id: caf\u{e9}\r\n";
    let response = raw::send(&mut stream, head, b"").await.unwrap();
    let echoed = response.header("x-request-id").unwrap();
    assert!(
        echoed.is_ascii() && !echoed.starts_with("caf"),
        "{echoed:?}"
    );
}
