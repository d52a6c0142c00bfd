//! The user API's contract beyond CRUD: ETags and conditional requests, merge-patch,
//! idempotent creates, lookup by e-mail, opaque cursors and stable problem types.

use std::collections::HashSet;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{TestApp, assert_problem, page_ids, spawn_app};

const MERGE_PATCH: &str = "application/merge-patch+json";
const PROBLEMS: &str =
    "https://github.com/scalable-dev/scalable-api-operator/blob/main/docs/problems.md";

fn etag(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

impl TestApp {
    async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        request.send().await.unwrap()
    }

    fn user_url(&self, id: &str) -> String {
        self.url(&format!("/users/{id}"))
    }

    async fn get_if_none_match(&self, id: &str, tag: &str) -> reqwest::Response {
        let request = self
            .client
            .get(self.user_url(id))
            .header("if-none-match", tag);
        self.send(request).await
    }

    async fn put_if_match(&self, id: &str, tag: &str, body: &Value) -> reqwest::Response {
        let request = self
            .client
            .put(self.user_url(id))
            .header("if-match", tag)
            .json(body);
        self.send(request).await
    }

    async fn patch_user(
        &self,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .patch(self.user_url(id))
            .header("content-type", MERGE_PATCH)
            .body(body.to_string());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        self.send(request).await
    }

    async fn post_with_key(&self, key: &str, body: &Value) -> reqwest::Response {
        let request = self
            .client
            .post(self.url("/users"))
            .header("idempotency-key", key)
            .json(body);
        self.send(request).await
    }

    async fn sql(&self) -> PgPool {
        PgPool::connect(&self.pg.url(&self.database)).await.unwrap()
    }
}

/// A user named "Ada 2" whose ETag is "2".
async fn user_at_version_2(app: &TestApp) -> String {
    let id = app.create_user_id("Ada", "ada@example.com").await;
    let updated = app
        .put_user(&id, &json!({ "name": "Ada 2", "email": "ada@example.com" }))
        .await;
    assert_eq!(etag(&updated), "\"2\"");
    id
}

#[tokio::test]
async fn every_user_response_carries_its_version_as_a_strong_etag() {
    let app = spawn_app().await;
    let created = app
        .post_user(&json!({ "name": "Ada", "email": "ada@example.com" }))
        .await;
    assert_eq!(etag(&created), "\"1\"");
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["version"], 1);
    let id = user["id"].as_str().unwrap();

    let read = app.get_user(id).await;
    assert_eq!(etag(&read), "\"1\"");
    let updated = app
        .put_user(id, &json!({ "name": "Ada L", "email": "ada@example.com" }))
        .await;
    assert_eq!(etag(&updated), "\"2\"");
    assert_eq!(updated.json::<Value>().await.unwrap()["version"], 2);
    assert_eq!(etag(&app.get_user(id).await), "\"2\"");
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_is_304_also_from_the_cache() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;

    // The first read fills the cache; the second is a hit. Both must honour the validator.
    for round in ["from Postgres", "from the cache"] {
        let response = app.get_if_none_match(&id, "\"1\"").await;
        assert_eq!(response.status(), 304, "{round}");
        assert_eq!(etag(&response), "\"1\"");
        assert!(response.bytes().await.unwrap().is_empty(), "{round}");
    }
    assert!(app.cached_reads().await >= 1.0);

    app.put_user(&id, &json!({ "name": "Ada L", "email": "ada@example.com" }))
        .await;
    let stale = app.get_if_none_match(&id, "\"1\"").await;
    assert_eq!(stale.status(), 200);
    assert_eq!(etag(&stale), "\"2\"");
}

#[tokio::test]
async fn a_put_with_a_stale_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let id = user_at_version_2(&app).await;

    let stale = app
        .put_if_match(
            &id,
            "\"1\"",
            &json!({ "name": "Lost", "email": "ada@example.com" }),
        )
        .await;
    let problem = assert_problem(stale, 412).await;
    assert_eq!(problem["type"], format!("{PROBLEMS}#precondition-failed"));
    let user: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(
        (user["name"].as_str(), user["version"].as_i64()),
        (Some("Ada 2"), Some(2))
    );

    let current = app
        .put_if_match(
            &id,
            "\"2\"",
            &json!({ "name": "Ada 3", "email": "ada@example.com" }),
        )
        .await;
    assert_eq!(current.status(), 200);
    assert_eq!(etag(&current), "\"3\"");
}

#[tokio::test]
async fn two_writers_with_one_etag_cannot_both_win() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;

    let bodies: Vec<Value> = (0..8)
        .map(|i| json!({ "name": format!("W{i}"), "email": "ada@example.com" }))
        .collect();
    let writers = bodies
        .iter()
        .map(|body| app.put_if_match(&id, "\"1\"", body));
    let statuses: Vec<u16> = futures::future::join_all(writers)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();

    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        7,
        "{statuses:?}"
    );
    let user: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(user["version"], 2);
}

#[tokio::test]
async fn if_match_star_needs_the_user_to_exist() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    let body = json!({ "name": "Ada", "email": "ada@example.com" });
    assert_eq!(app.put_if_match(&id, "*", &body).await.status(), 200);

    let missing = uuid::Uuid::now_v7().to_string();
    assert_problem(app.put_if_match(&missing, "*", &body).await, 412).await;
    assert_problem(app.put_user(&missing, &body).await, 404).await;
}

#[tokio::test]
async fn a_delete_with_a_stale_if_match_keeps_the_user() {
    let app = spawn_app().await;
    let id = user_at_version_2(&app).await;

    let stale = app
        .send(
            app.client
                .delete(app.user_url(&id))
                .header("if-match", "\"1\""),
        )
        .await;
    assert_problem(stale, 412).await;
    assert_eq!(app.get_user(&id).await.status(), 200);

    let current = app
        .send(
            app.client
                .delete(app.user_url(&id))
                .header("if-match", "\"2\""),
        )
        .await;
    assert_eq!(current.status(), 204);
    assert_eq!(app.get_user(&id).await.status(), 404);
}

#[tokio::test]
async fn a_write_by_sql_changes_the_etag_too() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    let db = app.sql().await;

    sqlx::query("UPDATE users SET name = 'By DBA' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();

    let version: i64 = sqlx::query_scalar("SELECT version FROM users WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(version, 2);
    let stale = app
        .put_if_match(
            &id,
            "\"1\"",
            &json!({ "name": "Lost", "email": "ada@example.com" }),
        )
        .await;
    assert_problem(stale, 412).await;
}

#[tokio::test]
async fn a_merge_patch_changes_only_the_fields_it_names() {
    let app = spawn_app().await;
    let created = app.create_user("Ada", "ada@example.com").await;
    let id = created["id"].as_str().unwrap();

    let response = app
        .patch_user(id, &json!({ "name": "Ada King" }), None)
        .await;

    assert_eq!(response.status(), 200);
    assert_eq!(etag(&response), "\"2\"");
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["name"], "Ada King");
    assert_eq!(patched["email"], "ada@example.com");
    assert_eq!(patched["created_at"], created["created_at"]);
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap(),
        patched
    );
}

#[tokio::test]
async fn an_empty_merge_patch_changes_nothing_not_even_the_version() {
    let app = spawn_app().await;
    let created = app.create_user("Ada", "ada@example.com").await;
    let id = created["id"].as_str().unwrap();

    let response = app.patch_user(id, &json!({}), Some("\"1\"")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), created);
    assert_problem(app.patch_user(id, &json!({}), Some("\"7\"")).await, 412).await;
}

#[tokio::test]
async fn a_merge_patch_is_validated_like_a_put() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;
    app.create_user("Grace", "grace@example.com").await;

    let removed = assert_problem(
        app.patch_user(&id, &json!({ "name": null }), None).await,
        422,
    )
    .await;
    assert_eq!(removed["errors"][0]["field"], "name");
    let invalid = assert_problem(
        app.patch_user(&id, &json!({ "email": "nope" }), None).await,
        422,
    )
    .await;
    assert_eq!(invalid["errors"][0]["field"], "email");
    let duplicate = app
        .patch_user(&id, &json!({ "email": "GRACE@example.com" }), None)
        .await;
    let problem = assert_problem(duplicate, 409).await;
    assert_eq!(problem["type"], format!("{PROBLEMS}#duplicate-email"));
    assert_problem(
        app.patch_user(&id, &json!({ "name": "x" }), Some("\"9\""))
            .await,
        412,
    )
    .await;
    let missing = uuid::Uuid::now_v7().to_string();
    assert_problem(
        app.patch_user(&missing, &json!({ "name": "x" }), None)
            .await,
        404,
    )
    .await;

    let user: Value = app.get_user(&id).await.json().await.unwrap();
    assert_eq!(
        (user["name"].as_str(), user["version"].as_i64()),
        (Some("Ada"), Some(1))
    );
}

#[tokio::test]
async fn a_patch_in_another_media_type_is_415() {
    let app = spawn_app().await;
    let id = app.create_user_id("Ada", "ada@example.com").await;

    let as_json = app
        .send(
            app.client
                .patch(app.user_url(&id))
                .json(&json!({ "name": "x" })),
        )
        .await;

    let problem = assert_problem(as_json, 415).await;
    assert_eq!(
        problem["type"],
        format!("{PROBLEMS}#unsupported-media-type")
    );
}

#[tokio::test]
async fn a_repeated_create_with_one_key_replays_the_first_response() {
    let app = spawn_app().await;
    let body = json!({ "name": "Ada", "email": "ada@example.com" });

    let first = app.post_with_key("order-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();

    // On another replica, as a load balancer would send the retry.
    let sibling = app.sibling().await;
    for replica in [&app, &sibling] {
        let again = replica.post_with_key("order-1", &body).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(again.headers()["location"], location);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    let listed: Value = app.list("").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_422() {
    let app = spawn_app().await;
    let first = app
        .post_with_key("k", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .await;
    assert_eq!(first.status(), 201);

    let other = app
        .post_with_key(
            "k",
            &json!({ "name": "Grace", "email": "grace@example.com" }),
        )
        .await;

    let problem = assert_problem(other, 422).await;
    assert_eq!(
        problem["type"],
        format!("{PROBLEMS}#idempotency-key-reused")
    );
    let listed: Value = app.list("").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn identical_creates_racing_with_one_key_create_one_user() {
    let app = spawn_app().await;
    let body = json!({ "name": "Ada", "email": "ada@example.com" });

    let racers = (0..16).map(|_| app.post_with_key("race", &body));
    let responses = futures::future::join_all(racers).await;

    let mut ids = HashSet::new();
    for response in responses {
        assert_eq!(response.status(), 201);
        ids.insert(response.json::<Value>().await.unwrap()["id"].clone());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn a_failed_create_does_not_hold_its_key() {
    let app = spawn_app().await;
    app.create_user("Ada", "ada@example.com").await;

    let duplicate = app
        .post_with_key("k", &json!({ "name": "Ada", "email": "ADA@example.com" }))
        .await;
    assert_problem(duplicate, 409).await;
    // The same key with a body that can succeed is a new request, not a "reuse".
    let fixed = app
        .post_with_key("k", &json!({ "name": "Ada", "email": "ada2@example.com" }))
        .await;
    assert_eq!(fixed.status(), 201);
}

#[tokio::test]
async fn an_expired_key_is_removed_and_then_free() {
    let app = spawn_app().await;
    let db = app.sql().await;
    let first = app
        .post_with_key("old", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .await;
    assert_eq!(first.status(), 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&db)
        .await
        .unwrap();

    // An expired key is free even before the clean-up ran...
    let reused = app
        .post_with_key(
            "old",
            &json!({ "name": "Grace", "email": "grace@example.com" }),
        )
        .await;
    assert_eq!(reused.status(), 201);
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&db)
        .await
        .unwrap();
    // ...and the clean-up removes it.
    assert_eq!(
        api_server::db::idempotency::delete_expired(&db, 100)
            .await
            .unwrap(),
        1
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400() {
    let app = spawn_app().await;
    let body = json!({ "name": "Ada", "email": "ada@example.com" });
    let too_long = "k".repeat(256);

    for key in ["", too_long.as_str()] {
        let problem = assert_problem(app.post_with_key(key, &body).await, 400).await;
        assert_eq!(problem["type"], format!("{PROBLEMS}#bad-request"));
    }
    let listed: Value = app.list("").await.json().await.unwrap();
    assert!(listed["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_user_is_found_by_email_ignoring_case() {
    let app = spawn_app().await;
    let ada = app.create_user("Ada", "Ada@Example.com").await;
    app.create_user("Grace", "grace@example.com").await;

    let found: Value = app
        .list("?email=ada%40EXAMPLE.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found, json!({ "items": [ada], "next": null }));

    let none: Value = app
        .list("?email=nobody%40example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!({ "items": [], "next": null }));
    let invalid = assert_problem(app.list("?email=nope").await, 422).await;
    assert_eq!(invalid["errors"][0]["field"], "email");
}

#[tokio::test]
async fn cursors_are_opaque_and_raw_id_cursors_still_work() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_user_id("U", &format!("u{i}@example.com")).await);
    }

    let pages = app.list_pages(2).await;
    assert_eq!(page_ids(&pages), ids);
    let cursor = pages[0]["next"].as_str().unwrap();
    assert!(!ids.iter().any(|id| id == cursor), "{cursor} is an id");
    assert!(uuid::Uuid::try_parse(cursor).is_err(), "{cursor}");

    // An earlier release's cursor: the raw last id.
    let legacy: Value = app
        .list(&format!("?limit=2&after={}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page_ids(&[legacy]), ids[2..4]);
}
