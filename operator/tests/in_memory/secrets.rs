//! The referenced Secret: missing, missing key, created later, rotated.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

fn config_hash(d: &Value) -> Option<String> {
    d.pointer("/spec/template/metadata/annotations/scalable.dev~1config-hash")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[tokio::test]
async fn missing_secret_is_a_condition_and_an_event_then_the_secret_unblocks_readiness() {
    let h = Harness::start().await;
    scalable_api("users").create(&h).await;

    wait_for_condition(&h, "users", "DatabaseConfigured", "False", "SecretNotFound").await;
    let event = wait_for_event(&h, "a SecretNotFound Event", "users", "SecretNotFound").await;
    assert_eq!(event["type"], json!("Warning"));
    assert_eq!(event["reportingController"], json!("scalable-api-operator"));
    assert_eq!(
        condition(&h, "users", "Ready"),
        Some(("False".into(), "SecretNotFound".into()))
    );
    // Nothing is rolled out against a Secret that does not exist.
    assert!(h.object(DEPLOYMENTS, "users").is_none());

    // The Secret watch maps the new Secret to its ScalableApi.
    create_db_secret(&h, "users").await;
    h.wait_for(
        DEPLOYMENTS,
        "users",
        "deployment after the Secret appeared",
        |_| true,
    )
    .await;
    eventually("DatabaseConfigured=True", || {
        (condition(&h, "users", "DatabaseConfigured")?.0 == "True").then_some(())
    })
    .await;
    assert_eq!(
        condition(&h, "users", "Ready"),
        Some(("False".into(), "ReplicasNotReady".into()))
    );

    set_deployment_status(&h, "users", 2).await;
    wait_for_condition(&h, "users", "Ready", "True", "Available").await;
    wait_for_event(&h, "an Available Event", "users", "Available").await;
    let sapi = h.object(SAPIS, "users").expect("sapi");
    assert_eq!(sapi["status"]["readyReplicas"], json!(2));
    assert_eq!(
        condition(&h, "users", "Progressing"),
        Some(("False".into(), "RolloutComplete".into()))
    );
    // Transitions only: one Event each, however many reconciles ran.
    h.settle().await;
    assert_eq!(events_with_reason(&h, "users", "SecretNotFound"), 1);
    assert_eq!(events_with_reason(&h, "users", "Available"), 1);
}

#[tokio::test]
async fn a_secret_without_the_key_is_key_not_found() {
    let h = Harness::start().await;
    h.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret("users-db", "not-password", "x"),
        )
        .await
        .expect("secret");
    scalable_api("users").create(&h).await;
    eventually("KeyNotFound", || {
        (condition(&h, "users", "DatabaseConfigured")?.1 == "KeyNotFound").then_some(())
    })
    .await;
    wait_for_event(&h, "a KeyNotFound Event", "users", "KeyNotFound").await;
}

#[tokio::test]
async fn rotating_the_secret_rolls_the_pods() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    let before = h
        .wait_for(DEPLOYMENTS, "users", "deployment", |d| {
            config_hash(d).is_some()
        })
        .await;
    let old_hash = config_hash(&before);

    let rotated = json!({"data": {"password": "bmV3LXBhc3N3b3Jk"}});
    h.api::<Secret>()
        .patch("users-db", &PatchParams::default(), &Patch::Merge(rotated))
        .await
        .expect("rotate");
    h.wait_for(DEPLOYMENTS, "users", "a new config hash", |d| {
        config_hash(d) != old_hash
    })
    .await;
}
