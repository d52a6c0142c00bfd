//! Every error status, from a table of bad inputs. No input may produce a 500.

use serde_json::{Value, json};

use crate::helpers::{Options, assert_problem, spawn_app, spawn_app_with};

/// (what, content type, raw body, expected status)
fn bad_bodies() -> Vec<(&'static str, &'static str, String, u16)> {
    let json = "application/json";
    vec![
        (
            "malformed JSON",
            json,
            r#"{"name": "x", "email": "#.into(),
            400,
        ),
        ("not JSON at all", json, "name=x&email=y".into(), 400),
        ("empty body", json, String::new(), 400),
        (
            "wrong content type",
            "text/plain",
            r#"{"name":"x","email":"x@example.com"}"#.into(),
            415,
        ),
        (
            "form content type",
            "application/x-www-form-urlencoded",
            "name=x&email=x@example.com".into(),
            415,
        ),
        ("missing email", json, r#"{"name":"x"}"#.into(), 422),
        (
            "missing name",
            json,
            r#"{"email":"x@example.com"}"#.into(),
            422,
        ),
        (
            "name is a number",
            json,
            r#"{"name":5,"email":"x@example.com"}"#.into(),
            422,
        ),
        (
            "email is null",
            json,
            r#"{"name":"x","email":null}"#.into(),
            422,
        ),
        (
            "body is an array",
            json,
            r#"[{"name":"x","email":"x@example.com"}]"#.into(),
            422,
        ),
        (
            "empty name",
            json,
            r#"{"name":"","email":"x@example.com"}"#.into(),
            422,
        ),
        (
            "whitespace name",
            json,
            r#"{"name":"   ","email":"x@example.com"}"#.into(),
            422,
        ),
        (
            "name with NUL",
            json,
            r#"{"name":"a\u0000b","email":"x@example.com"}"#.into(),
            422,
        ),
        (
            "101-character name",
            json,
            format!(
                r#"{{"name":"{}","email":"x@example.com"}}"#,
                "a".repeat(101)
            ),
            422,
        ),
        (
            "10 KiB name",
            json,
            format!(
                r#"{{"name":"{}","email":"x@example.com"}}"#,
                "é".repeat(5000)
            ),
            422,
        ),
        (
            "email without @",
            json,
            r#"{"name":"x","email":"example.com"}"#.into(),
            422,
        ),
        (
            "SQL as email",
            json,
            r#"{"name":"x","email":"'; DROP TABLE users;--"}"#.into(),
            422,
        ),
        (
            "255-character email",
            json,
            format!(
                r#"{{"name":"x","email":"{}@example.com"}}"#,
                "a".repeat(243)
            ),
            422,
        ),
        (
            "body over 16 KiB",
            json,
            format!(
                r#"{{"name":"{}","email":"x@example.com"}}"#,
                "a".repeat(17 * 1024)
            ),
            413,
        ),
        (
            "1 MiB body",
            json,
            format!(
                r#"{{"name":"{}","email":"x@example.com"}}"#,
                "a".repeat(1 << 20)
            ),
            413,
        ),
    ]
}

#[tokio::test]
async fn bad_bodies_get_the_right_problem_on_create_and_update() {
    let app = spawn_app().await;
    let existing = app.create_user("Ada", "ada@example.com").await;
    let id = existing["id"].as_str().unwrap();

    for (what, content_type, body, status) in bad_bodies() {
        for request in [
            app.client.post(app.url("/users")),
            app.client.put(app.url(&format!("/users/{id}"))),
        ] {
            let response = request
                .header("content-type", content_type)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{what}");
            assert_problem(response, status).await;
        }
    }
    // None of it changed the stored user.
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap(),
        existing
    );
}

#[tokio::test]
async fn a_422_names_every_invalid_field() {
    let app = spawn_app().await;

    let body = assert_problem(
        app.post_user(&json!({ "name": "", "email": "nope" })).await,
        422,
    )
    .await;

    let fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].clone())
        .collect();
    assert_eq!(fields, [json!("name"), json!("email")]);
    assert!(body["detail"].as_str().unwrap().contains("email"));
}

#[tokio::test]
async fn a_wrong_type_422_says_which_field() {
    let app = spawn_app().await;
    let body = assert_problem(
        app.post_user(&json!({ "name": 42, "email": "x@example.com" }))
            .await,
        422,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("name"), "{body}");
}

#[tokio::test]
async fn a_duplicate_email_differing_only_in_case_is_409() {
    let app = spawn_app().await;
    app.create_user("Ada", "ada@example.com").await;
    let other = app.create_user("Bob", "bob@example.com").await;

    assert_problem(
        app.post_user(&json!({ "name": "Ada 2", "email": "ADA@Example.com" }))
            .await,
        409,
    )
    .await;
    let id = other["id"].as_str().unwrap();
    assert_problem(
        app.put_user(id, &json!({ "name": "Bob", "email": "Ada@EXAMPLE.com" }))
            .await,
        409,
    )
    .await;
}

#[tokio::test]
async fn malformed_ids_are_404() {
    let app = spawn_app().await;
    for id in ["not-a-uuid", "1", "'%20OR%201=1--", &"f".repeat(300)] {
        assert_problem(app.get_user(id).await, 404).await;
        assert_problem(app.delete_user(id).await, 404).await;
    }
}

#[tokio::test]
async fn bad_page_parameters_are_422_naming_the_field() {
    let app = spawn_app().await;
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=501", "limit"),
        ("?limit=-5", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=99999999999999999999", "limit"),
        ("?after=garbage", "after"),
        ("?after=1%27%20OR%201%3D1", "after"),
    ] {
        let body = assert_problem(app.list(query).await, 422).await;
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let app = spawn_app().await;
    assert_problem(app.client.get(app.url("/nope")).send().await.unwrap(), 404).await;
    assert_problem(
        app.client.get(app.url("/users/a/b")).send().await.unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.client.patch(app.url("/users")).send().await.unwrap(),
        405,
    )
    .await;
    assert_problem(
        app.client.delete(app.url("/users")).send().await.unwrap(),
        405,
    )
    .await;
    let id = uuid::Uuid::now_v7();
    assert_problem(
        app.client
            .post(app.url(&format!("/users/{id}")))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
}

#[tokio::test]
async fn over_the_rate_limit_is_429_with_retry_after() {
    let app = spawn_app_with(Options {
        rate_limit: Some((1, 3)),
        ..Options::default()
    })
    .await;

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.list("").await);
    }

    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(&codes[..3], [200, 200, 200], "the burst is allowed");
    let limited = statuses.pop().unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_problem(limited, 429).await;
    // Probes are never rate limited.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn server_errors_never_leak_internal_details() {
    let app = spawn_app().await;
    for (what, content_type, body, _) in bad_bodies() {
        let response = app
            .client
            .post(app.url("/users"))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(response.status().as_u16() < 500, "{what}");
        let text = response.text().await.unwrap();
        for secret in ["sqlx", "postgres", "SELECT", "users_email_key", "panicked"] {
            assert!(!text.contains(secret), "{what}: {text}");
        }
    }
}

/// A crude fuzzer: random bytes, random JSON shapes and random Unicode in both fields.
/// Seeded: the seed is printed, and `FUZZ_SEED=<seed>` replays a failing run.
#[tokio::test]
async fn random_inputs_never_produce_a_server_error() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("FUZZ_SEED={seed}");
    let app = spawn_app().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pieces = [
        "\\u0000", "\\ud800", "\\uffff", "'", "\"", "\\\\", "%", "@", ".", " ", "é", "🦀", "\\n",
        "--", ";", "{", "]",
    ];
    for round in 0..300 {
        let body: Vec<u8> = match round % 3 {
            0 => (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
            1 => {
                let field = |rng: &mut rand::rngs::StdRng| -> String {
                    (0..rng.random_range(0..12))
                        .map(|_| pieces[rng.random_range(0..pieces.len())])
                        .collect()
                };
                let (name, email) = (field(&mut rng), field(&mut rng));
                format!(r#"{{"name":"{name}","email":"{email}@example.com"}}"#).into_bytes()
            }
            _ => {
                let values = [
                    "1",
                    "-1e999",
                    "null",
                    "true",
                    "[]",
                    "{}",
                    "\"x\"",
                    "18446744073709551616",
                ];
                let v = |rng: &mut rand::rngs::StdRng| values[rng.random_range(0..values.len())];
                format!(r#"{{"name":{},"email":{}}}"#, v(&mut rng), v(&mut rng)).into_bytes()
            }
        };
        let response = app
            .client
            .post(app.url("/users"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            status < 500,
            "{status} for {:?} (FUZZ_SEED={seed}, round {round})",
            String::from_utf8_lossy(&body)
        );
    }
}

#[tokio::test]
async fn writes_to_a_read_only_database_are_503_not_500() {
    let app = spawn_app_with(Options {
        no_redis: true,
        ..Options::default()
    })
    .await;
    let mut admin: sqlx::PgConnection = sqlx::Connection::connect(&app.pg.url(&app.database))
        .await
        .unwrap();
    // As after a failover to a standby: every new session is read-only.
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        app.database
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    // More requests than the pool has connections, so most reach a fresh, read-only session.
    for i in 0..15 {
        let response = app
            .post_user(&json!({ "name": "ro", "email": format!("ro{i}@example.com") }))
            .await;
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("1"),
            "request {i}"
        );
        assert_problem(response, 503).await;
    }
}

#[tokio::test]
async fn only_the_canonical_form_of_an_id_is_accepted() {
    let app = spawn_app_with(Options {
        no_redis: true,
        ..Options::default()
    })
    .await;
    let id = app.create_user_id("Canon", "canon@example.com").await;
    assert_eq!(app.get_user(&id).await.status(), 200);
    let simple = id.replace('-', "");
    for other in [
        format!("urn:uuid:{id}"),
        format!("%7B{id}%7D"),
        simple.clone(),
        id.to_uppercase(),
    ] {
        assert_problem(app.get_user(&other).await, 404).await;
        let body = json!({ "name": "Other", "email": "other@example.com" });
        assert_problem(app.put_user(&other, &body).await, 404).await;
        assert_problem(app.delete_user(&other).await, 404).await;
        let body = assert_problem(app.list(&format!("?after={other}")).await, 422).await;
        assert_eq!(body["errors"][0]["field"], "after", "{other}");
    }
    // None of those touched the user.
    assert_eq!(app.get_user(&id).await.status(), 200);
}

#[tokio::test]
async fn a_huge_declared_content_length_is_413_from_the_header_alone() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app_with(Options {
        no_redis: true,
        ..Options::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    // The body is never sent: the client waits to be told to (100-continue).
    stream
        .write_all(
            b"POST /users HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
              content-length: 999999\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("an answer without the body being sent")
    .unwrap();
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 413"), "{response}");
    assert!(!response.contains("100 continue"), "{response}");
    assert!(
        response.contains("content-type: application/problem+json"),
        "{response}"
    );
    assert!(response.contains(r#""status":413"#), "{response}");
}
