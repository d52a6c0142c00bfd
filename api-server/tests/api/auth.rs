//! Bearer-JWT authentication and scopes on /users, against the real app (Postgres behind).

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, assert_problem, eventually, spawn_app, spawn_app_with};
use crate::tokens::{ALG_NONE_HEADER, AUDIENCE, ISSUER, JwksFile, TestKey, claims, now};

const READ: &str = "users:read";
const WRITE: &str = "users:write";
const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;

/// An app whose JWKS file holds `keys`; the file lives as long as the app.
async fn spawn_app_trusting(keys: &[&TestKey]) -> (TestApp, JwksFile) {
    let jwks = JwksFile::new(keys);
    let app = spawn_app_with(Options {
        no_redis: true,
        auth: jwks.auth_config(),
        ..Options::default()
    })
    .await;
    (app, jwks)
}

async fn get_users(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .get(app.url("/users"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `POST /users` of one valid user with `token`.
async fn post_ada(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/users"))
        .bearer_auth(token)
        .json(&json!({ "name": "Ada", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap()
}

fn www_authenticate(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("www-authenticate")
        .expect("a WWW-Authenticate header")
        .to_str()
        .unwrap()
}

/// Asserts a 401 problem with `error="invalid_token"`.
async fn assert_invalid_token(response: reqwest::Response) {
    assert_eq!(www_authenticate(&response), INVALID_TOKEN);
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn tokens_signed_with_rs256_es256_and_eddsa_are_accepted() {
    let keys = [TestKey::rs256(), TestKey::es256(), TestKey::eddsa()];
    let (app, _jwks) = spawn_app_trusting(&keys.iter().collect::<Vec<_>>()).await;

    for key in &keys {
        let response = get_users(&app, &key.token(READ)).await;

        assert_eq!(response.status(), 200, "{:?}", key.alg);
    }
}

#[tokio::test]
async fn a_token_without_a_kid_is_matched_by_its_algorithm() {
    let (rsa, eddsa) = (TestKey::rs256(), TestKey::eddsa());
    let (app, _jwks) = spawn_app_trusting(&[&rsa, &eddsa]).await;

    let response = get_users(&app, &eddsa.sign_as(None, &claims(READ))).await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_write_scope_token_creates_updates_and_deletes() {
    let key = TestKey::es256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let token = key.token(&format!("{READ} {WRITE}"));

    let created = post_ada(&app, &token).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = app.url(&format!("/users/{id}"));
    let updated = app
        .client
        .put(&url)
        .bearer_auth(&token)
        .json(&json!({ "name": "Ada L", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    let deleted = app.client.delete(&url).bearer_auth(&token).send().await;
    assert_eq!(deleted.unwrap().status(), 204);
}

#[tokio::test]
async fn no_token_is_401_with_a_bearer_challenge() {
    let (app, _jwks) = spawn_app_trusting(&[&TestKey::eddsa()]).await;

    for path in ["/users", "/users/0190b9a4-1d3c-7000-8000-000000000000"] {
        let response = app.get(path).await;

        assert_eq!(www_authenticate(&response), "Bearer", "{path}");
        assert_problem(response, 401).await;
    }
}

#[tokio::test]
async fn another_authorization_scheme_is_401_like_no_token() {
    let (app, _jwks) = spawn_app_trusting(&[&TestKey::eddsa()]).await;

    let response = app
        .client
        .get(app.url("/users"))
        .basic_auth("user", Some("password"))
        .send()
        .await
        .unwrap();

    assert_eq!(www_authenticate(&response), "Bearer");
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn a_token_that_is_not_a_jwt_is_401_invalid_token() {
    let (app, _jwks) = spawn_app_trusting(&[&TestKey::eddsa()]).await;

    for garbage in ["not-a-jwt", "a.b.c", "...."] {
        assert_invalid_token(get_users(&app, garbage).await).await;
    }
}

#[tokio::test]
async fn a_signature_by_another_key_under_a_trusted_kid_is_401() {
    let trusted = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&trusted]).await;

    let forged = TestKey::eddsa_rotated().sign_as(Some(trusted.kid), &claims(READ));

    assert_invalid_token(get_users(&app, &forged).await).await;
}

#[tokio::test]
async fn a_token_with_an_unknown_kid_is_401() {
    let (app, _jwks) = spawn_app_trusting(&[&TestKey::eddsa()]).await;

    let token = TestKey::eddsa_rotated().token(READ);

    assert_invalid_token(get_users(&app, &token).await).await;
}

#[tokio::test]
async fn a_token_changed_after_signing_is_401() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let token = key.token(READ);
    let other = key.token(&format!("{READ} {WRITE}"));
    // The header and signature of one token around the claims of another.
    let parts: Vec<&str> = token.split('.').collect();
    let payload = other.split('.').nth(1).unwrap();

    let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);

    assert_invalid_token(get_users(&app, &tampered).await).await;
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_or_audience_is_401() {
    let key = TestKey::rs256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let cases = [
        ("iss", json!("https://evil.example.test/"), "another issuer"),
        // The issuer is compared exactly: without its trailing slash it is another one.
        (
            "iss",
            json!(ISSUER.trim_end_matches('/')),
            "a near-miss issuer",
        ),
        ("iss", Value::Null, "no issuer"),
        ("aud", json!("another-api"), "another audience"),
        ("aud", json!(["a", "b"]), "audiences without ours"),
        ("aud", Value::Null, "no audience"),
    ];

    for (claim, value, case) in cases {
        let response = get_users(&app, &key.token_with(claim, value)).await;

        assert_eq!(response.status(), 401, "{case}");
        assert_invalid_token(response).await;
    }
}

#[tokio::test]
async fn an_audience_given_as_a_string_is_accepted() {
    let key = TestKey::es256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let token = key.token_with("aud", json!(AUDIENCE));

    assert_eq!(get_users(&app, &token).await.status(), 200);
}

#[tokio::test]
async fn expiry_is_allowed_60_seconds_of_leeway_and_no_more() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let lately = key.token_with("exp", json!(now() - 30));
    let long_ago = key.token_with("exp", json!(now() - 120));

    assert_eq!(get_users(&app, &lately).await.status(), 200);
    assert_invalid_token(get_users(&app, &long_ago).await).await;
}

#[tokio::test]
async fn a_token_without_exp_is_401() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let token = key.token_with("exp", Value::Null);

    assert_invalid_token(get_users(&app, &token).await).await;
}

#[tokio::test]
async fn not_before_is_allowed_60_seconds_of_leeway_and_no_more() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let soon = key.token_with("nbf", json!(now() + 30));
    let later = key.token_with("nbf", json!(now() + 120));

    assert_eq!(get_users(&app, &soon).await.status(), 200);
    assert_invalid_token(get_users(&app, &later).await).await;
}

#[tokio::test]
async fn a_non_numeric_nbf_is_401() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let token = key.token_with("nbf", json!("2999-01-01"));

    assert_invalid_token(get_users(&app, &token).await).await;
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_401() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let payload = key.token(READ).split('.').nth(1).unwrap().to_owned();

    for token in [
        format!("{ALG_NONE_HEADER}.{payload}."),
        format!("{ALG_NONE_HEADER}.{payload}"),
    ] {
        assert_invalid_token(get_users(&app, &token).await).await;
    }
}

#[tokio::test]
async fn an_hs256_token_is_401_even_under_a_trusted_kid() {
    let key = TestKey::rs256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    // The classic confusion: an HMAC "signed" with what the server knows of the key.
    let secret = key.jwk()["n"].as_str().unwrap().to_owned();
    let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.kid.to_owned());
    let encoding = EncodingKey::from_secret(secret.as_bytes()).unwrap();

    let token = jsonwebtoken::encode(&header, &claims(READ), &encoding).unwrap();

    assert_invalid_token(get_users(&app, &token).await).await;
}

#[tokio::test]
async fn a_read_only_token_cannot_write_403() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let token = key.token(READ);

    let response = post_ada(&app, &token).await;

    assert_eq!(
        www_authenticate(&response),
        r#"Bearer error="insufficient_scope", scope="users:write""#
    );
    assert_problem(response, 403).await;
    let id = "0190b9a4-1d3c-7000-8000-000000000000";
    let url = app.url(&format!("/users/{id}"));
    let put = app.client.put(&url).bearer_auth(&token).json(&json!({}));
    assert_problem(put.send().await.unwrap(), 403).await;
    let delete = app.client.delete(&url).bearer_auth(&token);
    assert_problem(delete.send().await.unwrap(), 403).await;
    let list: Value = get_users(&app, &token).await.json().await.unwrap();
    assert_eq!(list["items"], json!([]), "nothing was created");
}

#[tokio::test]
async fn a_write_only_token_cannot_read_403() {
    let key = TestKey::eddsa();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    for token in [
        key.token(WRITE),
        key.token(""),
        key.token("users:readwrite"),
    ] {
        let response = get_users(&app, &token).await;

        assert_problem(response, 403).await;
    }
}

#[tokio::test]
async fn probes_metrics_and_the_openapi_document_need_no_token() {
    let (app, _jwks) = spawn_app_trusting(&[&TestKey::eddsa()]).await;

    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get_admin(path).await.status(), 200, "admin {path}");
    }
}

#[tokio::test]
async fn a_rotated_key_is_accepted_without_a_restart_and_the_old_one_refused() {
    let (old, new) = (TestKey::eddsa(), TestKey::eddsa_rotated());
    let (app, jwks) = spawn_app_trusting(&[&old]).await;
    assert_invalid_token(get_users(&app, &new.token(READ)).await).await;

    jwks.replace(&[&new]);

    let token = new.token(READ);
    eventually(
        Duration::from_secs(10),
        "the rotated key to be accepted",
        || async { get_users(&app, &token).await.status() == 200 },
    )
    .await;
    assert_invalid_token(get_users(&app, &old.token(READ)).await).await;
}

#[tokio::test]
async fn without_a_jwks_path_the_api_is_open() {
    let app = spawn_app().await;

    assert_eq!(app.list("").await.status(), 200);
    app.create_user("Ada", "ada@example.com").await;
}

#[tokio::test]
async fn a_missing_jwks_file_stops_the_start() {
    let jwks = JwksFile::new(&[&TestKey::eddsa()]);
    let mut auth = jwks.auth_config();
    auth.jwks_path = Some(jwks.path.with_file_name("absent.json"));
    let config = crate::helpers::config(
        "postgres://postgres@127.0.0.1:1/none",
        None,
        &Options {
            auth,
            ..Options::default()
        },
    );

    let built = api_server::startup::Application::build(config).await;

    assert!(built.is_err());
}

#[tokio::test]
async fn with_authentication_openapi_declares_the_bearer_scheme_and_its_refusals() {
    let key = TestKey::es256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;

    let doc = app.get_json("/openapi.json").await;

    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let read = &doc["paths"]["/users/{id}"]["get"];
    assert_eq!(read["security"], json!([{ "bearer": [READ] }]));
    assert_eq!(
        doc["paths"]["/users/{id}"]["delete"]["security"],
        json!([{ "bearer": [WRITE] }])
    );
    assert!(read["responses"]["401"].is_object() && read["responses"]["403"].is_object());
    assert!(
        doc["paths"]["/healthz"]["get"]["security"].is_null(),
        "probes stay open"
    );
}

#[tokio::test]
async fn one_idempotency_key_from_two_clients_is_two_requests() {
    let key = TestKey::es256();
    let (app, _jwks) = spawn_app_trusting(&[&key]).await;
    let token_of = |sub: &str| {
        let mut claims = claims(WRITE);
        claims["sub"] = json!(sub);
        key.sign(&claims)
    };
    let post = |token: String, email: &'static str| {
        app.client
            .post(app.url("/users"))
            .bearer_auth(token)
            .header("idempotency-key", "shared-key")
            .json(&json!({ "name": "Ada", "email": email }))
            .send()
    };

    let alice = post(token_of("alice"), "alice@example.com").await.unwrap();
    let bob = post(token_of("bob"), "bob@example.com").await.unwrap();

    // Bob's body differs from Alice's: within one client that would be a 422 reuse.
    assert_eq!((alice.status().as_u16(), bob.status().as_u16()), (201, 201));
    assert!(bob.headers().get("idempotent-replayed").is_none());
    let bob: Value = bob.json().await.unwrap();
    assert_eq!(bob["email"], "bob@example.com");
}
