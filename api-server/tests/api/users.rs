use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::helpers::{assert_problem, page_ids, spawn_app};

#[tokio::test]
async fn create_returns_201_with_the_user_and_a_location() {
    let app = spawn_app().await;

    let response = app
        .post_user(&json!({ "name": "  Ada Lovelace ", "email": "ada@example.com" }))
        .await;

    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let user: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/users/{}", user["id"].as_str().unwrap()));
    assert_eq!(user["name"], "Ada Lovelace", "names are trimmed");
    assert_eq!(user["email"], "ada@example.com");
    assert!(user["created_at"].is_string() && user["updated_at"].is_string());
}

#[tokio::test]
async fn a_created_user_can_be_read_back() {
    let app = spawn_app().await;
    let created = app.create_user("Grace", "grace@example.com").await;

    let response = app.get_user(created["id"].as_str().unwrap()).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.json::<Value>().await.unwrap(), created);
}

#[tokio::test]
async fn update_replaces_name_and_email() {
    let app = spawn_app().await;
    let created = app.create_user("Grace", "grace@example.com").await;
    let id = created["id"].as_str().unwrap();

    let response = app
        .put_user(
            id,
            &json!({ "name": "Grace Hopper", "email": "hopper@navy.mil" }),
        )
        .await;

    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "Grace Hopper");
    assert_eq!(updated["email"], "hopper@navy.mil");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_ne!(updated["updated_at"], created["updated_at"]);
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap(),
        updated
    );
}

#[tokio::test]
async fn updating_to_the_same_email_in_another_case_is_allowed() {
    let app = spawn_app().await;
    let created = app.create_user("Grace", "grace@example.com").await;

    let response = app
        .put_user(
            created["id"].as_str().unwrap(),
            &json!({ "name": "Grace", "email": "GRACE@example.com" }),
        )
        .await;

    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn delete_returns_204_then_the_user_is_gone() {
    let app = spawn_app().await;
    let created = app.create_user("Alan", "alan@example.com").await;
    let id = created["id"].as_str().unwrap();

    assert_eq!(app.delete_user(id).await.status(), 204);

    assert_problem(app.get_user(id).await, 404).await;
    assert_problem(app.delete_user(id).await, 404).await;
}

#[tokio::test]
async fn unknown_ids_are_404_for_every_method() {
    let app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    let body = json!({ "name": "X", "email": "x@example.com" });

    assert_problem(app.get_user(&id).await, 404).await;
    assert_problem(app.put_user(&id, &body).await, 404).await;
    assert_problem(app.delete_user(&id).await, 404).await;
}

#[tokio::test]
async fn sql_looking_and_unicode_strings_are_stored_verbatim() {
    let app = spawn_app().await;
    let cases = [
        ("Robert'); DROP TABLE users;--", "bobby@example.com"),
        (
            "1 OR 1=1; SELECT * FROM pg_user",
            "o'reilly+tag@example.com",
        ),
        ("Zoë Ångström 🦀 数据库", "zoë@exämple.de"),
        ("\\x00 %s %n {{name}}", "percent@example.com"),
    ];
    for (name, email) in cases {
        let created = app.create_user(name, email).await;
        let read: Value = app
            .get_user(created["id"].as_str().unwrap())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (
                read["name"].as_str().unwrap(),
                read["email"].as_str().unwrap()
            ),
            (name, email)
        );
    }
    // The table is still there.
    let page: Value = app.list("?limit=10").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), cases.len());
}

#[tokio::test]
async fn a_100_character_name_is_accepted() {
    let app = spawn_app().await;
    let name = "🦀".repeat(100);
    let created = app.create_user(&name, "crab@example.com").await;
    assert_eq!(created["name"], name);
}

#[tokio::test]
async fn pages_walk_every_user_once_in_id_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            app.create_user_id(&format!("u{i}"), &format!("u{i}@example.com"))
                .await,
        );
    }

    let pages = app.list_pages(3).await;
    let seen = page_ids(&pages);

    assert_eq!(pages.len(), 3);
    assert_eq!(seen, ids, "UUIDv7 ids are listed in creation order");
}

#[tokio::test]
async fn the_default_page_is_50_and_an_empty_table_has_no_next() {
    let app = spawn_app().await;
    let empty: Value = app.list("").await.json().await.unwrap();
    assert_eq!(empty, json!({ "items": [], "next": null }));

    for i in 0..51 {
        app.create_user("n", &format!("p{i}@example.com")).await;
    }
    let page: Value = app.list("").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert!(page["next"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_during_concurrent_inserts_has_no_duplicates_and_no_gaps() {
    let app = Arc::new(spawn_app().await);
    let mut before = HashSet::new();
    for i in 0..120 {
        before.insert(
            app.create_user_id("seed", &format!("seed{i}@example.com"))
                .await,
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (app, stop) = (app.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    app.create_user("new", &format!("w{w}-{n}@example.com"))
                        .await;
                    n += 1;
                }
                n
            })
        })
        .collect();

    let seen = page_ids(&app.list_pages(25).await);
    stop.store(true, Ordering::Relaxed);
    let mut inserted = 0;
    for writer in writers {
        inserted += writer.await.unwrap();
    }

    assert!(inserted > 0, "inserts ran during the walk");
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no user appears twice");
    assert!(
        before.is_subset(&unique),
        "every user that existed before the walk was listed"
    );
    let mut sorted = seen.clone();
    sorted.sort_by_key(|id| uuid::Uuid::parse_str(id).unwrap());
    assert_eq!(sorted, seen, "ids ascend across pages");
}
