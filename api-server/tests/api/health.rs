use serde_json::Value;

use crate::helpers::{Options, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_answers() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readyz_reports_postgres_and_redis() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["postgres"], "up");
    assert_eq!(body["redis"], "up");
    assert_eq!(body["shutting_down"], false);
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_shutdown_begins_while_requests_are_still_served() {
    let app = spawn_app_with(Options {
        shutdown_delay_seconds: 5,
        ..Options::default()
    })
    .await;

    app.shutdown.cancel();

    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["shutting_down"], true);
    assert_eq!(body["postgres"], "up");
    assert_eq!(
        app.list("").await.status(),
        200,
        "traffic is still served during the delay"
    );
}

#[tokio::test]
async fn metrics_are_only_on_the_admin_port_and_the_probes_on_both() {
    let app = spawn_app().await;
    app.wait_until_ready().await;
    let public = app.get("/metrics").await;
    assert_eq!(public.status(), 404, "no metrics on the public port");
    let admin = app.get_admin("/metrics").await;
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.unwrap().contains("http_requests_total"));
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(
            app.get(probe).await.status(),
            200,
            "{probe} on the public port"
        );
        assert_eq!(
            app.get_admin(probe).await.status(),
            200,
            "{probe} on the admin port"
        );
    }
    assert_eq!(
        app.get_admin("/users").await.status(),
        404,
        "no API on the admin port"
    );
}

#[tokio::test]
async fn metrics_expose_requests_cache_and_pool() {
    let app = spawn_app().await;
    app.get("/users/not-an-id").await;
    let text = app.metrics_text().await;
    for expected in [
        r#"http_requests_total{method="GET",route="/users/{id}",status="404"} 1"#,
        "http_request_duration_seconds_bucket",
        "cache_hits_total",
        "cache_misses_total",
        "cache_errors_total",
        "cache_invalidations",
        r#"db_pool_connections{state="idle"}"#,
        r#"db_pool_connections{state="in_use"}"#,
        "cache_listener_connected 1",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

#[tokio::test]
async fn the_request_id_is_echoed_or_made() {
    let app = spawn_app().await;
    let given = app
        .client
        .get(app.url("/users"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let made = app.get("/users").await;
    assert!(!made.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn openapi_describes_every_public_route_and_what_it_answers() {
    let app = spawn_app().await;
    let doc = app.get_json("/openapi.json").await;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/users",
        "/users/{id}",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(
        !paths.contains_key("/metrics"),
        "/metrics is on the admin port"
    );
    for method in ["get", "put", "patch", "delete"] {
        assert!(
            paths["/users/{id}"][method].is_object(),
            "{method} /users/{{id}} missing"
        );
    }
    let statuses = |path: &str, method: &str| -> Vec<String> {
        paths[path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let patch = statuses("/users/{id}", "patch");
    for status in [
        "200", "400", "404", "409", "412", "413", "415", "422", "429", "503",
    ] {
        assert!(
            patch.contains(&status.to_owned()),
            "PATCH lacks {status}: {patch:?}"
        );
    }
    assert!(statuses("/users/{id}", "get").contains(&"304".to_owned()));
    // Open: no token is asked for, so none is declared.
    assert!(!patch.contains(&"401".to_owned()), "{patch:?}");
    assert!(doc["components"]["securitySchemes"].is_null());
    let read = &paths["/users/{id}"]["get"];
    assert!(read["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(read["responses"]["503"]["headers"]["Retry-After"].is_object());
    assert!(paths["/healthz"]["get"]["responses"]["200"]["headers"]["X-Request-Id"].is_object());
    let create_params = paths["/users"]["post"]["parameters"].as_array().unwrap();
    assert!(create_params.iter().any(|p| p["name"] == "Idempotency-Key"));
    assert!(doc["components"]["schemas"]["User"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn the_server_answers_on_ipv6_as_well_as_ipv4() {
    // Only where this machine has IPv6 loopback at all.
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return;
    }
    let app = spawn_app_with(Options {
        no_redis: true,
        bind_all_interfaces: true,
        ..Options::default()
    })
    .await;
    let port = app.address.rsplit(':').next().unwrap();
    let response = app
        .client
        .get(format!("http://[::1]:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_bind_address_keeps_both_ports_to_it() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return;
    }
    // The harness binds 127.0.0.1 (BIND_ADDRESS), as every server a test starts must.
    let app = spawn_app_with(Options {
        no_redis: true,
        ..Options::default()
    })
    .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    for base in [&app.address, &app.admin_address] {
        let port = base.rsplit(':').next().unwrap();
        let refused = std::net::TcpStream::connect(format!("[::1]:{port}"));
        assert!(refused.is_err(), "port {port} answers on ::1");
    }
}
