//! The referenced Secret: missing, created later, rotated; and Pod Security at admission.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::*;

#[tokio::test]
async fn a_missing_secret_is_a_condition_and_an_event_until_it_appears_then_ready() {
    let c = Cluster::with_operator("nosecret").await;
    scalable_api("users").create(&c).await;

    let sapi = c
        .wait_for_condition("users", "DatabaseConfigured", "False", "SecretNotFound")
        .await;
    assert_eq!(
        condition(&sapi, "Ready"),
        Some(("False".into(), "SecretNotFound".into()))
    );
    let event = c.wait_for_event("users", "SecretNotFound").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .note
            .as_deref()
            .is_some_and(|n| n.contains("users-db")),
        "the Event names the Secret: {:?}",
        event.note
    );
    assert!(
        c.get::<Deployment>("users").await.is_none(),
        "nothing rolls out against a missing Secret"
    );

    // The Secret watch maps the new Secret to its ScalableApi; the pods then run for real.
    create_db_secret(&c, "users").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let sapi = c
        .wait_for_condition("users", "DatabaseConfigured", "True", "SecretFound")
        .await;
    assert_eq!(sapi.status.as_ref().and_then(|s| s.ready_replicas), Some(2));
    assert_eq!(
        c.events("users", "SecretNotFound").await.len(),
        1,
        "one Event per transition"
    );
}

#[tokio::test]
async fn a_secret_without_the_key_is_key_not_found() {
    let c = Cluster::with_operator("nokey").await;
    c.api::<Secret>()
        .create(
            &PostParams::default(),
            &secret_in(&c.ns, "users-db", "not-password", "x"),
        )
        .await
        .expect("create the Secret");
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "DatabaseConfigured", "False", "KeyNotFound")
        .await;
    let event = c.wait_for_event("users", "KeyNotFound").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(c.get::<Deployment>("users").await.is_none());
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("scalable.dev/config-hash")
        .cloned()
}

#[tokio::test]
async fn a_new_secret_value_rolls_the_pods_through_a_new_replica_set() {
    let c = Cluster::with_operator("rotate").await;
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let before = c.get::<Deployment>("users").await.expect("Deployment");
    let old_pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;

    c.api::<Secret>()
        .patch(
            "users-db",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "rotated"}})),
        )
        .await
        .expect("rotate the password");
    c.wait_for::<Deployment>("users", "a new config hash", |d| {
        config_hash(d) != config_hash(&before)
    })
    .await;
    // The rolling update ends with every pod from the new ReplicaSet.
    let done = c
        .wait_for::<Deployment>("users", "the rollout to finish", |d| {
            let s = d.status.as_ref();
            s.and_then(|s| s.observed_generation) == d.metadata.generation
                && s.and_then(|s| s.updated_replicas) == Some(2)
                && s.and_then(|s| s.available_replicas) == Some(2)
                && s.and_then(|s| s.replicas) == Some(2)
        })
        .await;
    let sets = c
        .api::<ReplicaSet>()
        .list(&ListParams::default())
        .await
        .expect("rs")
        .items;
    assert_eq!(
        sets.len(),
        2,
        "the old and the new ReplicaSet: {:?}",
        names(&sets)
    );
    let new_pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;
    for old in &old_pods {
        assert!(
            new_pods.iter().all(|p| p.uid() != old.uid()),
            "pod {} survived the rollout",
            old.name_any()
        );
    }
    assert!(done.metadata.generation > before.metadata.generation);
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
}

#[tokio::test]
async fn a_restricted_namespace_admits_the_pods_and_refuses_a_privileged_one() {
    let mut c = Cluster::with_namespace_labels(
        "restricted",
        &[
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await;
    c.start_operator();
    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    let pods = c
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items;
    assert_eq!(pods.len(), 2, "{:?}", names(&pods));

    // Enforcement is on: a pod that breaks the restricted profile is refused.
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "c", "image": "registry.test/x:1",
            "securityContext": {"privileged": true},
        }]},
    }))
    .expect("pod");
    let err = c
        .api::<Pod>()
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod must be refused");
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted:latest\""),
        "{err}"
    );
}
