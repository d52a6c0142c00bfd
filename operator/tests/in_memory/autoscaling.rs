//! Autoscaling on and off, the replica hand-over to the HPA, and suspend.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Patch;
use serde_json::{Value, json};

use crate::support::*;

const MANAGER: &str = "scalable-api-operator";
const HANDOVER: &str = "scalable-api-operator-handover";

fn replicas(d: &Value) -> Option<i64> {
    d["spec"]["replicas"].as_i64()
}

/// Managers owning `spec.replicas` of the stored Deployment.
fn replica_owners(d: &Value) -> Vec<String> {
    d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.pointer("/fieldsV1/f:spec/f:replicas").is_some())
        .filter_map(|e| e["manager"].as_str().map(str::to_owned))
        .collect()
}

/// Acts as the HPA: scales the Deployment through an imperative update.
async fn hpa_scales_to(h: &Harness, n: i32) {
    h.api::<Deployment>()
        .patch(
            "users",
            &as_kcm(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .expect("scale");
}

#[tokio::test]
async fn fake_reproduces_the_drop_to_one_replica_without_a_hand_over() {
    // Guard for the test below: the fake models the API server behaviour the hand-over avoids.
    let h = Harness::start().await;
    let body = |r: Option<i32>| {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "plain"}, "spec": {"paused": false}});
        if let Some(r) = r {
            d["spec"]["replicas"] = json!(r);
        }
        d
    };
    let api = h.api::<Deployment>();
    let pp = kube::api::PatchParams::apply(MANAGER).force();
    api.patch("plain", &pp, &Patch::Apply(body(Some(5))))
        .await
        .expect("apply 5");
    let after = api
        .patch("plain", &pp, &Patch::Apply(body(None)))
        .await
        .expect("apply without replicas");
    assert_eq!(after.spec.and_then(|s| s.replicas), Some(1));
}

#[tokio::test]
async fn turning_autoscaling_on_hands_replicas_over_without_dropping_pods() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").replicas(3).create(&h).await;
    let d = h
        .wait_for(DEPLOYMENTS, "users", "3 replicas", |d| {
            replicas(d) == Some(3)
        })
        .await;
    assert_eq!(replica_owners(&d), vec![MANAGER]);
    h.settle().await;
    h.fake.clear_requests();

    patch_spec(
        &h,
        "users",
        json!({"replicas": null, "autoscaling": {"minReplicas": 2, "maxReplicas": 10}}),
    )
    .await;
    let hpa = h.wait_for(HPAS, "users", "the HPA", |_| true).await;
    assert_eq!(hpa["spec"]["minReplicas"], json!(2));
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], json!("users"));
    h.settle().await;

    // The count never dropped: every stored version kept 3 replicas.
    let history = h.fake.history(DEPLOYMENTS, NS, "users");
    assert!(
        history.iter().all(|d| replicas(d) == Some(3)),
        "{:?}",
        history.iter().map(replicas).collect::<Vec<_>>()
    );
    let d = h.object(DEPLOYMENTS, "users").expect("deployment");
    assert_eq!(replicas(&d), Some(3));
    assert_eq!(
        replica_owners(&d),
        vec![HANDOVER],
        "our manager let go, the hand-over manager holds the value"
    );

    // Request order: pin the live value under the hand-over manager, then the body without replicas.
    let deployment_applies: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/users"))
        .collect();
    let first = &deployment_applies[0];
    assert_eq!(first.field_manager(), Some(HANDOVER));
    assert_eq!(
        first.body.as_ref().map(|b| b["spec"].clone()),
        Some(json!({"replicas": 3}))
    );
    let second = &deployment_applies[1];
    assert_eq!(second.field_manager(), Some(MANAGER));
    assert!(
        second
            .body
            .as_ref()
            .is_some_and(|b| b["spec"].get("replicas").is_none())
    );
    assert_eq!(
        deployment_applies
            .iter()
            .filter(|r| r.field_manager() == Some(HANDOVER))
            .count(),
        1,
        "the hand-over happens once"
    );
    eventually("desiredReplicas from the Deployment", || {
        (h.object(SAPIS, "users")?["status"]["desiredReplicas"] == json!(3)).then_some(())
    })
    .await;

    // The HPA scales; later reconciles never touch the count again.
    hpa_scales_to(&h, 7).await;
    patch_spec(&h, "users", json!({"cache": {"ttlSeconds": 30}})).await;
    h.wait_for(CONFIGMAPS, "users-config", "new TTL", |c| {
        c.to_string().contains("\"30\"")
    })
    .await;
    h.settle().await;
    assert_eq!(
        replicas(&h.object(DEPLOYMENTS, "users").expect("deployment")),
        Some(7)
    );
    let handovers = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.field_manager() == Some(HANDOVER))
        .count();
    assert_eq!(
        handovers, 1,
        "no second hand-over while autoscaling stays on"
    );

    // Autoscaling off: our manager takes the count back and the HPA goes.
    patch_spec(&h, "users", json!({"autoscaling": null, "replicas": 4})).await;
    h.wait_gone(HPAS, "users").await;
    let d = h
        .wait_for(DEPLOYMENTS, "users", "4 replicas", |d| {
            replicas(d) == Some(4)
        })
        .await;
    assert!(replica_owners(&d).contains(&MANAGER.to_owned()));
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_hpa_before_taking_replicas_back() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").autoscaling(2, 10).create(&h).await;
    h.wait_for(HPAS, "users", "the HPA", |_| true).await;
    h.wait_for(DEPLOYMENTS, "users", "deployment", |_| true)
        .await;
    hpa_scales_to(&h, 7).await;
    h.settle().await;
    h.fake.clear_requests();

    // The first DELETE of the HPA fails: the Deployment must keep the HPA's count meanwhile.
    h.fake
        .inject_fault("DELETE", "/horizontalpodautoscalers/users", 500, 1);
    patch_spec(&h, "users", json!({"autoscaling": null, "replicas": 4})).await;
    eventually("the failed DELETE to be counted", || {
        (h.metric("reconcile_errors_total", "delete_hpa") == 1).then_some(())
    })
    .await;
    let deployment_patches = |h: &Harness| {
        h.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/users"))
            .count()
    };
    assert_eq!(
        deployment_patches(&h),
        0,
        "no Deployment apply before the HPA is gone"
    );
    assert_eq!(
        replicas(&h.object(DEPLOYMENTS, "users").expect("deployment")),
        Some(7)
    );

    // The retry deletes the HPA, then takes the count back.
    h.wait_gone(HPAS, "users").await;
    h.wait_for(DEPLOYMENTS, "users", "4 replicas", |d| {
        replicas(d) == Some(4)
    })
    .await;
    let requests = h.fake.requests();
    let position = |method: &str, suffix: &str| {
        requests
            .iter()
            .position(|r| r.method == method && r.path.ends_with(suffix))
    };
    let deleted = requests
        .iter()
        .rposition(|r| r.method == "DELETE" && r.path.ends_with("/horizontalpodautoscalers/users"))
        .expect("HPA DELETE");
    let applied = position("PATCH", "/deployments/users").expect("Deployment apply");
    assert!(
        deleted < applied,
        "the HPA goes before the Deployment apply"
    );
}

#[tokio::test]
async fn a_new_object_with_autoscaling_starts_at_min_replicas_and_hands_them_over() {
    let h = Harness::start().await;
    create_db_secret(&h, "users").await;
    scalable_api("users").autoscaling(3, 6).create(&h).await;
    h.wait_for(HPAS, "users", "the HPA", |_| true).await;
    h.settle().await;
    let d = h.object(DEPLOYMENTS, "users").expect("deployment");
    assert_eq!(replicas(&d), Some(3), "created at minReplicas, not at 1");
    assert_eq!(
        replica_owners(&d),
        vec![HANDOVER.to_owned()],
        "our own manager let go of spec.replicas in the same pass"
    );
}
