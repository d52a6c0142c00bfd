//! Create, update, drift and deletion of children.

use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::*;

fn image(d: &Value) -> Option<&str> {
    d.pointer("/spec/template/spec/containers/0/image")
        .and_then(Value::as_str)
}

#[tokio::test]
async fn create_makes_every_child_with_a_controller_owner_reference() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    let sapi = scalable_api("users").create(&h).await;
    let uid = sapi.metadata.uid.clone().expect("uid");

    for (resource, name) in [
        (CONFIGMAPS, "users-config"),
        (DEPLOYMENTS, "users"),
        (SERVICES, "users"),
        (PDBS, "users"),
    ] {
        let child = h
            .wait_for(resource, name, &format!("{resource}/{name}"), |_| true)
            .await;
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], json!(uid), "{resource} owner uid");
        assert_eq!(
            owner["controller"],
            json!(true),
            "{resource} controller ref"
        );
        assert_eq!(owner["kind"], json!("ScalableApi"));
        assert_eq!(
            child["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            json!("scalable-api-operator")
        );
    }
    let d = h.object(DEPLOYMENTS, "users").expect("deployment");
    assert_eq!(d["spec"]["replicas"], json!(2));
    assert_eq!(image(&d), Some(DEFAULT_TEST_IMAGE));
    assert!(
        h.object(HPAS, "users").is_none(),
        "no HPA without autoscaling"
    );

    let status = h.wait_for_status("users").await;
    assert_eq!(
        status["status"]["selector"],
        json!("app.kubernetes.io/instance=users,app.kubernetes.io/name=api-server")
    );
    assert_eq!(status["status"]["url"], json!("http://users.shop.svc:80"));
    assert_eq!(status["status"]["desiredReplicas"], json!(2));
    let with_status = h
        .fake
        .count_matching(SAPIS, |o| o.pointer("/status/conditions").is_some());
    assert_eq!(with_status, 1);
}

#[tokio::test]
async fn every_apply_uses_the_one_field_manager_with_force() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    h.wait_for_status("users").await;
    let applies: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.content_type.starts_with("application/apply-patch"))
        .collect();
    assert!(applies.len() >= 5, "children and status are applied");
    for r in applies {
        assert_eq!(
            r.field_manager(),
            Some("scalable-api-operator"),
            "{}",
            r.path
        );
        assert_eq!(r.param("force"), Some("true"), "{}", r.path);
    }
}

#[tokio::test]
async fn a_spec_change_updates_the_children_and_observed_generation() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    h.wait_for(DEPLOYMENTS, "users", "deployment", |_| true)
        .await;

    patch_spec(&h, "users", json!({"image": "registry.test/api-server:2.0.0", "replicas": 4, "cache": {"ttlSeconds": 60}})).await;
    h.wait_for(DEPLOYMENTS, "users", "new image and replicas", |d| {
        image(d) == Some("registry.test/api-server:2.0.0") && d["spec"]["replicas"] == json!(4)
    })
    .await;
    h.wait_for(CONFIGMAPS, "users-config", "new cache TTL", |c| {
        c.to_string().contains("\"60\"")
    })
    .await;
    h.wait_for(SAPIS, "users", "observedGeneration 2", |o| {
        o["status"]["observedGeneration"] == json!(2)
    })
    .await;
}

#[tokio::test]
async fn drift_in_an_owned_field_is_corrected() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    let before = h
        .wait_for(DEPLOYMENTS, "users", "deployment", |_| true)
        .await;

    // Someone runs `kubectl edit` and changes the image and the replica count.
    let mut drifted = before["spec"]["template"]["spec"]["containers"].clone();
    drifted[0]["image"] = json!("evil.example/miner:latest");
    let kubectl = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    h.api::<k8s_openapi::api::apps::v1::Deployment>()
        .patch(
            "users",
            &kubectl,
            &Patch::Merge(
                json!({"spec": {"replicas": 9, "template": {"spec": {"containers": drifted}}}}),
            ),
        )
        .await
        .expect("drift");

    h.wait_for(DEPLOYMENTS, "users", "drift to be corrected", |d| {
        image(d) == Some(DEFAULT_TEST_IMAGE) && d["spec"]["replicas"] == json!(2)
    })
    .await;
}

#[tokio::test]
async fn a_deleted_child_is_recreated() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    let old = h.wait_for(SERVICES, "users", "service", |_| true).await;
    h.wait_for(CONFIGMAPS, "users-config", "configmap", |_| true)
        .await;

    let services = h.api::<k8s_openapi::api::core::v1::Service>();
    services
        .delete("users", &DeleteParams::default())
        .await
        .expect("delete service");
    let configmaps = h.api::<k8s_openapi::api::core::v1::ConfigMap>();
    configmaps
        .delete("users-config", &DeleteParams::default())
        .await
        .expect("delete configmap");

    let new = h
        .wait_for(SERVICES, "users", "service to come back", |s| {
            s["metadata"]["uid"] != old["metadata"]["uid"]
        })
        .await;
    assert_eq!(new["spec"]["ports"][0]["port"], json!(80));
    h.wait_for(CONFIGMAPS, "users-config", "configmap to come back", |_| {
        true
    })
    .await;
}

#[tokio::test]
async fn deleting_the_scalable_api_removes_its_children() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    h.wait_for(PDBS, "users", "pdb", |_| true).await;
    h.api::<operator::crd::ScalableApi>()
        .delete("users", &DeleteParams::default())
        .await
        .expect("delete");
    for (resource, name) in [
        (CONFIGMAPS, "users-config"),
        (DEPLOYMENTS, "users"),
        (SERVICES, "users"),
        (PDBS, "users"),
    ] {
        h.wait_gone(resource, name).await;
    }
}

#[tokio::test]
async fn namespace_flag_restricts_the_watch() {
    let h = Harness::start_in(Some(NS)).await;
    create_db_secret(&h, "users").await;
    scalable_api("users").create(&h).await;
    scalable_api("elsewhere")
        .in_namespace("other")
        .create(&h)
        .await;
    h.wait_for(
        DEPLOYMENTS,
        "users",
        "deployment in the watched namespace",
        |_| true,
    )
    .await;
    h.settle().await;
    assert!(h.fake.object(DEPLOYMENTS, "other", "elsewhere").is_none());
    // Only the test's own create ever touched the other namespace.
    let foreign: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/namespaces/other/"))
        .collect();
    assert!(foreign.iter().all(|r| r.method == "POST"), "{foreign:?}");
}

#[tokio::test]
async fn a_pdb_is_deleted_when_only_one_replica_remains() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").replicas(3).create(&h).await;
    h.wait_for(PDBS, "users", "pdb", |_| true).await;
    patch_spec(&h, "users", json!({"replicas": 1})).await;
    h.wait_gone(PDBS, "users").await;
}
