//! Hostile and careless clients: oversized bodies sent blind, slow and idle connections,
//! too many connections, bad request ids.

use crate::helpers::{Options, spawn_app_with};
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
