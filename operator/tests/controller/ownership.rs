//! Objects with a child's name that the ScalableApi does not control are never modified or
//! deleted: the object reports ChildConflict until they are gone.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use crate::cluster::*;

#[tokio::test]
async fn objects_that_are_not_ours_are_left_alone_and_reported_until_they_go() {
    let c = Cluster::with_operator("conflict").await;
    // Someone's own ConfigMap of the child's name, and a Deployment another controller owns.
    let theirs: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "users-config"},
        "data": {"keep": "me"},
    }))
    .expect("cm");
    let owner = c
        .api::<ConfigMap>()
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the foreign ConfigMap");
    let controlled: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "users", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "users-config",
            "uid": owner.uid(), "controller": true,
        }]},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "theirs"}},
            "template": {"metadata": {"labels": {"app": "theirs"}},
                "spec": {"containers": [{"name": "c", "image": "registry.test/theirs:1"}]}},
        },
    }))
    .expect("deployment");
    c.api::<Deployment>()
        .create(&PostParams::default(), &controlled)
        .await
        .expect("create the foreign Deployment");
    let before = c.get::<Deployment>("users").await.expect("Deployment");

    create_db_secret(&c, "users").await;
    scalable_api("users").create(&c).await;
    let reported = c
        .wait_for_condition("users", "Ready", "False", "ChildConflict")
        .await;
    assert_eq!(
        condition(&reported, "Stalled"),
        Some(("True".into(), "ChildConflict".into()))
    );
    let message = condition_message(&reported, "Ready");
    assert!(
        message.contains("ConfigMap \"users-config\"")
            && message.contains("controlled by ConfigMap \"users-config\""),
        "both objects and the Deployment's controller are named: {message}"
    );
    let warning = c.wait_for_event("users", "ChildConflict").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));

    let cm = c.get::<ConfigMap>("users-config").await.expect("ConfigMap");
    assert_eq!(
        cm.data
            .as_ref()
            .and_then(|d| d.get("keep"))
            .map(String::as_str),
        Some("me")
    );
    assert!(cm.owner_references().is_empty() && cm.labels().is_empty());
    // The Deployment controller writes its status; nobody else may write it at all.
    let after = c.get::<Deployment>("users").await.expect("Deployment");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(after.owner_references(), before.owner_references());
    let writers: Vec<_> = after
        .managed_fields()
        .iter()
        .filter_map(|e| e.manager.as_deref())
        .filter(|m| m.starts_with("scalable-api-operator"))
        .collect();
    assert!(writers.is_empty(), "the operator wrote it: {writers:?}");
    assert!(
        c.get::<k8s_openapi::api::core::v1::Service>("users")
            .await
            .is_none(),
        "no child is made while one conflicts"
    );

    // Both go (the Deployment with its owner): the operator proceeds on its own.
    c.api::<ConfigMap>()
        .delete("users-config", &DeleteParams::foreground())
        .await
        .expect("delete the foreign ConfigMap");
    c.wait_gone::<Deployment>("users").await;
    c.wait_for_condition("users", "Ready", "True", "Available")
        .await;
    assert_eq!(c.events("users", "ChildConflict").await.len(), 1);
}
